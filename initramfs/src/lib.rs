//! dockroot-mkinitramfs: builds the initramfs that runs dockroot as `/init`.
//!
//! - [`cpio`]: the newc archive writer (and a reader: `--list`, tests);
//! - [`elf`]: `.modinfo` of kernel modules, and the static-init check (through `object`);
//! - [`compress`]: zstd/gzip output, `.ko.xz`/`.ko.zst`/`.ko.gz` input;
//! - [`kmod`]: which modules, in which order (modules.dep, softdeps, aliases, built-ins);
//! - [`build`]: the image itself; [`args`]: the command line;
//! - [`update`]: `--update`/`--remove`, for the kernel hooks of the distribution packages;
//! - [`list`]: `--list`, what an image holds.
//!
//! The module index format lives in `dockroot::modules`, next to the loader that reads it.

pub mod args;
pub mod build;
pub mod compress;
pub mod cpio;
pub mod elf;
pub mod kmod;
pub mod list;
pub mod update;
