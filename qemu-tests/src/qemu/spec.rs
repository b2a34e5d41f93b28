//! What to boot ([`BootSpec`]): kernel, initrd, command line, disks and how they are
//! attached, disks to hotplug and a power cut to make while it runs; or, for a UEFI
//! boot, the firmware that boots the first disk. Plain data.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// How a disk is attached to the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskInterface {
    /// virtio-blk (`/dev/vdX`; modules virtio_blk, virtio_pci).
    Virtio,
    /// virtio-scsi (`/dev/sdX`; modules virtio_scsi, sd_mod, virtio_pci).
    VirtioScsi,
    /// NVMe (`/dev/nvme0n1`; module nvme).
    Nvme,
    /// IDE on the PC's built-in controller (`/dev/sdX`; modules ata_piix, sd_mod).
    Ide,
    /// SATA on an AHCI controller (`ich9-ahci` + `ide-hd`; `/dev/sdX`; modules ahci, sd_mod).
    Ahci,
    /// USB mass storage on an xHCI controller (`qemu-xhci` + `usb-storage`; `/dev/sdX`;
    /// modules xhci_pci, usb_storage, sd_mod).
    Usb,
}

impl DiskInterface {
    /// A short name, for log lines.
    pub fn name(&self) -> &'static str {
        match self {
            DiskInterface::Virtio => "virtio-blk",
            DiskInterface::VirtioScsi => "virtio-scsi",
            DiskInterface::Nvme => "nvme",
            DiskInterface::Ide => "ide",
            DiskInterface::Ahci => "ahci",
            DiskInterface::Usb => "usb-storage",
        }
    }
}

/// One disk of a boot.
#[derive(Debug, Clone)]
pub struct DiskSpec {
    pub path: PathBuf,
    pub interface: DiskInterface,
}

impl DiskSpec {
    /// A virtio-blk disk.
    pub fn virtio(path: &Path) -> DiskSpec {
        DiskSpec { path: path.to_path_buf(), interface: DiskInterface::Virtio }
    }

    /// A disk on `interface`.
    pub fn new(path: &Path, interface: DiskInterface) -> DiskSpec {
        DiskSpec { path: path.to_path_buf(), interface }
    }
}

/// A disk plugged into the running VM through QEMU's QMP monitor.
#[derive(Debug, Clone)]
pub struct Hotplug {
    /// The disk; its interface must be [`DiskInterface::Virtio`] (PCI hotplug through
    /// ACPI on the `pc` machine) or [`DiskInterface::Usb`] (on an xHCI controller the
    /// harness adds at start for it).
    pub disk: DiskSpec,
    /// Start the clock when the serial output first contains this (e.g. the kernel's
    /// "Run /init as init process"); None: when QEMU starts.
    pub after: Option<String>,
    /// How long after that to plug the disk in.
    pub delay: Duration,
}

/// When a [`Hotplug`] happened.
#[derive(Debug, Clone)]
pub struct HotplugDone {
    /// QEMU's device id (`hotplug0`, ...).
    pub id: String,
    /// Wall time from QEMU's start to the `device_add` reply.
    pub at: Duration,
}

/// What to boot.
#[derive(Debug, Clone)]
pub struct BootSpec {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub disks: Vec<DiskSpec>,
    /// Kernel parameters after the harness' `console=ttyS0 panic=-1`.
    pub append: String,
    /// Bytes after `append` (after a space), for command lines that are not UTF-8.
    pub append_raw: Vec<u8>,
    /// The VM is killed after this long (then `timed_out` is set).
    pub timeout: Duration,
    pub memory_mb: u32,
    /// Names the log file (target/qemu-logs/<name>.log); defaults to the test's name.
    pub name: Option<String>,
    /// Disks to plug in while the VM runs (through a QMP socket).
    pub hotplug: Vec<Hotplug>,
    /// Cut the power: SIGKILL QEMU this long after the serial output first contains
    /// the needle (see [`KillAfter`]).
    pub kill_after: Option<KillAfter>,
    /// UEFI: boot the first disk through this firmware image (`-bios`, e.g. Debian's
    /// OVMF.fd, whose variables then live only as long as the VM), with no `-kernel`,
    /// `-initrd` or `-append`: the boot loader on the disk's ESP picks them.
    /// `kernel`, `initrd`, `append` and `append_raw` are then unused.
    pub firmware: Option<PathBuf>,
}

/// A power cut at a chosen moment: QEMU is SIGKILLed `delay` after `needle` first
/// appears on the serial console, or as soon as `deadline` appears if that comes
/// first. What the guest had written to its virtual disk survives (QEMU's default
/// cache mode, writeback, has passed it to the host's page cache); what was still in
/// the guest's page cache is lost, as in a power cut.
#[derive(Debug, Clone)]
pub struct KillAfter {
    /// E.g. the kernel's "Run /init as init process" or one of dockroot's log lines.
    pub needle: String,
    pub delay: Duration,
    /// A line that cuts the power at once if the needle's delay has not run out by
    /// then (e.g. [`LINE_READY`], so that a cut always comes during the init's work).
    pub deadline: Option<String>,
}

/// How a [`KillAfter`] cut the power.
#[derive(Debug, Clone)]
pub struct PowerCut {
    /// Wall time from QEMU's start to the kill.
    pub at: Duration,
    /// Wall time from the harness seeing the needle to the kill; None when the
    /// deadline line came first and cut the power.
    pub after_needle: Option<Duration>,
}

impl BootSpec {
    /// A spec with the defaults: 1024 MiB, 180 s timeout, one virtio disk per path.
    pub fn new(kernel: PathBuf, initrd: PathBuf, disks: &[&Path], append: &str) -> BootSpec {
        BootSpec {
            kernel,
            initrd,
            disks: disks.iter().map(|d| DiskSpec::virtio(d)).collect(),
            append: append.to_string(),
            append_raw: Vec::new(),
            timeout: Duration::from_secs(180),
            memory_mb: 1024,
            name: None,
            hotplug: Vec::new(),
            kill_after: None,
            firmware: None,
        }
    }

    /// A UEFI boot of `disks` (the first holds the ESP) through `firmware`, logged
    /// as `name`; the defaults of [`BootSpec::new`] otherwise.
    pub fn uefi(firmware: &Path, disks: &[&Path], name: &str) -> BootSpec {
        BootSpec {
            firmware: Some(firmware.to_path_buf()),
            name: Some(name.into()),
            ..BootSpec::new(PathBuf::new(), PathBuf::new(), disks, "")
        }
    }
}
