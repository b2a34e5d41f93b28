//! The boot-test harness: builds initramfs images with the real builder, boots a real
//! Debian kernel in QEMU against copies of a disk written by a real Docker engine, and
//! reads back the one-line report of `testinit` (the booted image's `/sbin/init`).
//!
//! Everything it boots comes from `scripts/test`, which sets:
//! - `DOCKROOT_INIT`: the static dockroot init binary (`dockroot-init`)
//! - `DOCKROOT_CLI`: the `dockroot` commands binary
//! - `DOCKROOT_MKINITRAMFS`: the builder binary
//! - `DOCKROOT_KERNEL_DIR`: a directory from `scripts/fetch-kernel` (vmlinuz + lib/modules/<release>)
//! - `DOCKROOT_DISK`: the fixture disk from `qemu-tests/fixtures/make-docker-disk`
//! - `DOCKROOT_TESTINIT` (optional): the static testinit binary, for harness self-tests
//! - `DOCKROOT_QEMU_KVM=1` (optional): use KVM instead of TCG
//! - `DOCKROOT_LAYOUT_GPT`, `DOCKROOT_LAYOUT_MBR`, `DOCKROOT_LAYOUT_RAID1A`,
//!   `DOCKROOT_LAYOUT_RAID1B`, `DOCKROOT_LAYOUT_INFO` (for the hardware tests): the disk
//!   layouts from `qemu-tests/fixtures/make-layouts` (see [`Layouts`])
//! - `DOCKROOT_STORE_PODMAN`, `DOCKROOT_STORE_CONTAINERD`, `DOCKROOT_STORE_CONTAINERD_OVERLAYFS`,
//!   `DOCKROOT_STORE_OVERLAY2_EXT4`, `DOCKROOT_STORE_OVERLAY2_XFS` (for the store tests):
//!   the disks from `qemu-tests/fixtures/make-store-disks` (see [`StoreDisk`])
//!
//! - `DOCKROOT_UEFI_DISK` (for the UEFI tests): the GPT disk from
//!   `qemu-tests/fixtures/make-uefi-disk`, `uefi.json` next to it (see [`UefiMachine`])
//!
//! Tests fail, never skip, when an artifact is missing.
//!
//! The harness by job:
//! - [`fixtures`]: the artifacts and fixture disks from the environment, initramfs builds;
//! - [`disk`]: copies of disk images, loop mounts on the host, `sh`;
//! - [`qemu`]: one boot in QEMU ([`boot`]): the process, its serial console, and the
//!   watchers that time it out, cut its power or plug disks in at console lines;
//! - [`machine`]: a machine booted many times ([`Machine`]);
//! - [`uefi`]: a whole machine booted through OVMF and systemd-boot ([`UefiMachine`]);
//! - [`power`]: power cuts: where to cut, the roots on the disk, and the engine that
//!   cuts, boots again and checks the recovery;
//! - [`digest`], [`assertions`]: what the booted system and the disk must show.

pub mod assertions;
pub mod digest;
pub mod disk;
pub mod fixtures;
pub mod machine;
pub mod power;
pub mod qemu;
pub mod uefi;

pub use assertions::{assert_fatal_boot, assert_kept_after_recovery, assert_recovery_steps, assert_same_digest, field};
pub use digest::{digest_created, digest_diff, tree_digest, DIGEST_CREATED};
pub use disk::{
    disk_fstype, fill_disk, oversized_toplayer_disk, sh, with_disk_mounted_ro, with_mounted, with_partition_mounted,
    Disk,
};
pub use fixtures::{
    build_initramfs, build_initramfs_with_init, init_variant, target_dir, Artifacts, Layouts, StoreDisk,
};
pub use machine::{Machine, OS_CONFIG, STANDARD_APPEND, STANDARD_MODULES};
pub use power::engine::{CutDone, CutEngine, Left, Mode, Recovered};
pub use power::roots::{names_in, Digest, DiskState, Root, RootKind};
pub use power::{all_cut_points, cut_points, CutAt};
pub use qemu::boot;
pub use qemu::console::{
    parse_testinit, printk_time, BootOutput, LINE_HANDOVER, LINE_READY, LINE_ROOT_DEVICE, TESTINIT_MARKER,
};
pub use qemu::spec::{BootSpec, DiskInterface, DiskSpec, Hotplug, HotplugDone, KillAfter, PowerCut};
pub use uefi::{parse_uefi_report, UefiMachine, UefiReport, OVMF, REPORT_MARKER};
