//! dockroot: an initramfs `/init` that boots a machine straight into a Docker image.
//!
//! The modules follow the boot, in order. Each has a pure part (parse, plan,
//! resolve) that unit tests run on the host and a thin part that makes the
//! system calls.

pub mod boot;
pub mod btrfs;
pub mod bytes;
pub mod choose;
pub mod config;
pub mod devices;
pub mod error;
pub mod fork;
pub mod heap;
pub mod kernel;
pub mod logging;
pub mod modules;
pub mod mounts;
pub mod nextboot;
pub mod overlay;
pub mod plan;
pub mod policy;
pub mod probe;
pub mod record;
pub mod reference;
pub mod rwlayer;
pub mod store;
pub mod switch_root;
pub mod toplayer;
pub mod trial;
pub mod uevent;

pub use error::{Context, Error, Result};
