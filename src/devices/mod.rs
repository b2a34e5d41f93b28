//! Find the block device a boot parameter names, without udev.
//!
//! Pure part: [`DeviceSpec::parse`] (what the kernel's `root=` and the usual
//! initramfs conventions accept, in `spec.rs`), [`find`], [`assess`] (found,
//! absent, or a multi-device btrfs still missing members, in `find.rs`) and
//! [`describe`] (`table.rs`). Thin part: [`scan`] (`scan.rs`) lists
//! `/sys/class/block` and probes each device with [`crate::probe`]; a
//! [`Waiter`] (`wait.rs`) scans once, then rescans only when kernel uevents
//! say block devices changed, registers btrfs members with the kernel, and
//! gives up at the deadline with a table of what it saw.

mod find;
#[cfg(test)]
mod fixtures;
mod scan;
mod spec;
mod table;
mod wait;

pub use find::{assess, duplicates, find, Assessment, BtrfsMembers};
pub use scan::{scan, BlockDevice};
pub use spec::DeviceSpec;
pub use table::describe;
pub use wait::{NoHooks, WaitHooks, WaitPolicy, WaitStats, Waiter, DEGRADED_WAIT};
