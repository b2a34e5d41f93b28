//! Kernel modules in the initramfs: the index the builder writes, the alias
//! matching that picks drivers for the hardware present, and the parallel
//! loader PID 1 runs at boot.
//!
//! # The index
//!
//! The builder (`dockroot-mkinitramfs`) resolves dependencies on the host and
//! writes [`INDEX_PATH`], a small text file:
//!
//! ```text
//! dockroot-modules 3
//! kernel 6.1.0-56-amd64
//! module libcrc32c lib/modules/6.1.0-56-amd64/kernel/lib/libcrc32c.ko always deps= pre= post=
//! module btrfs lib/modules/6.1.0-56-amd64/kernel/fs/btrfs/btrfs.ko always deps=libcrc32c,xor pre=crc32c_generic post=
//! module virtio_blk lib/modules/6.1.0-56-amd64/kernel/drivers/block/virtio_blk.ko modalias deps=virtio_ring pre= post=
//! alias virtio:d00000002v* virtio_blk
//! alias fs-btrfs btrfs
//! ```
//!
//! The first line names the format and its version, the second the kernel
//! release the modules were built for. Each `module` line gives the module's
//! name (with `_`, as the kernel names it), its path inside the initramfs
//! (relative, no `..`; a `.ko.xz`/`.ko.zst`/`.ko.gz` file is loaded as such),
//! when to load it (`always`, or `modalias`: only when a device asks for it),
//! the modules it needs (`deps=`: hard dependencies, from modules.dep), the ones
//! to load before it if they can be (`pre=`: pre-softdeps) and the ones to load
//! after it (`post=`: post-softdeps). Every name in `deps=`/`pre=` is listed on
//! an earlier line and every name in `post=` on a later one, so line order is a
//! load order. An `alias` line gives a device alias pattern of a listed module,
//! as in the kernel's modules.alias (glob patterns: `*`, `?`, `[...]`), or
//! `fs-TYPE`: a module a mount of filesystem TYPE needs (the kernel's own
//! name, `MODULE_ALIAS_FS`; the builder adds vfat's code pages to `fs-vfat`).
//! Format 2 (still read) had no `fs-` aliases.
//!
//! # At boot
//!
//! An [`Autoloader`] checks the release against the running kernel. At the
//! start of the boot ([`Autoloader::start`]) it starts the `always` modules and
//! the filesystems the command line names (`rootfstype=`, `rootflags=subvol=`),
//! reads the `modalias` of every device of every bus and class in `/sys`,
//! starts the modules whose patterns match (matching as modprobe does), and returns without waiting: the boot waits for
//! its root device meanwhile, passing the autoloader the MODALIAS of every
//! uevent ([`Autoloader::on_modalias`]) so a device that appears gets its
//! driver too, and letting it move on ([`Autoloader::pump`]). Filesystems load
//! on demand ([`Autoloader::load_filesystem`], which waits): what `fs-TYPE`
//! names, once the boot knows the type; a filesystem module's own pre-softdeps
//! (btrfs's checksum drivers) wait for the superblock, which says which one it
//! uses. Before the switch to the new root, [`Autoloader::finish`] waits for
//! what is loading and leaves the drivers that had not started to the booted
//! system. Each request loads the modules with their dependencies and
//! softdeps, each module at most once, several at once where the dependencies
//! allow, each in a forked child process (on one CPU, what the boot waits for
//! loads in PID 1 itself).
//!
//! A module that is already loaded is fine; one that fails is reported and the
//! boot goes on (the missing driver shows up later as a missing device, with
//! this report on the console); the modules that need a failed one are skipped.
//! A failed *soft* dependency (say `crc32c_intel` on a CPU without SSE 4.2) does
//! not stop the modules waiting for it.
//!
//! # The files
//!
//! - `index.rs`: the index format, the builder's contract (pure).
//! - `alias.rs`: alias matching as modprobe does it (pure).
//! - `report.rs`: the outcome of each attempt and the report (pure).
//! - `schedule.rs`: which module may start, given what has finished (pure).
//! - `loader.rs`: `finit_module` and the forked children (system calls).
//! - `decompress.rs`: compressed modules (pure; decompression with a feature).
//! - `sysfs.rs`: the walk of `/sys/bus` and `/sys/class` for modalias files.
//! - `autoload.rs`: the autoloader the boot drives.

mod alias;
mod autoload;
mod decompress;
#[cfg(test)]
mod fixtures;
mod index;
mod loader;
mod report;
mod schedule;
mod sysfs;

pub use alias::{glob_match, normalize_alias, not_for_cpu, AliasTable};
pub use autoload::{Autoloader, DIAGNOSTIC_LINE_BYTES, NOT_DISK_BUSES};
#[cfg(feature = "decompress-modules")]
pub use decompress::{decompress, DECOMPRESSED_MAX_BYTES};
pub use decompress::{decompression_summary, gzip_body, module_compression, DECOMPRESS_MARKER};
pub use index::{
    check_kernel_release, check_pattern, filesystem_alias, normalize_name, parse_index, read_index, write_index, Alias,
    IndexEntry, Load, ModuleIndex, INDEX_HEADER, INDEX_MAX_BYTES, INDEX_PATH,
};
pub use loader::{ForkExecutor, KernelLoader, MODULE_INIT_COMPRESSED_FILE};
pub use report::{errno_hint, Attempt, Cause, Failure, LoadReport, Skipped};
pub use schedule::{default_workers, usable_cpus, workers_for, Executor, Loader, Sequential, MAX_WORKERS};
pub use sysfs::{collect_modaliases, MODALIAS_MAX_BYTES, SYSFS_MAX_ENTRIES};
