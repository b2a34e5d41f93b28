//! dockroot: an initramfs `/init` that boots a machine straight into a Docker image.
//!
//! The modules follow the boot, in order. Each has a pure part (parse, plan,
//! resolve) that unit tests run on the host and a thin part that makes the
//! system calls.

pub mod error;
pub mod logging;
pub mod cmdline;
pub mod modules;
pub mod uevent;
pub mod probe;
pub mod devices;
pub mod btrfs;
pub mod reference;
pub mod store;
pub mod rwlayer;
pub mod overlay;
pub mod toplayer;
pub mod switch_root;
pub mod boot;
pub mod plan;

pub use error::{Context, Error, Result};
