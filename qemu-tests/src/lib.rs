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
//! Tests fail, never skip, when an artifact is missing.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::fs;
use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The marker `testinit` puts before its JSON report.
pub const TESTINIT_MARKER: &str = "DOCKROOT-TESTINIT ";

/// The kernel's line when it starts the initramfs' init.
const RUN_INIT_LINE: &str = "Run /init as init process";

/// The build outputs and downloads the boot tests run against.
#[derive(Debug, Clone)]
pub struct Artifacts {
    /// The static dockroot init (`/init` of the initramfs).
    pub init: PathBuf,
    /// The `dockroot-mkinitramfs` binary.
    pub mkinitramfs: PathBuf,
    /// The kernel directory from `scripts/fetch-kernel`.
    pub kernel_dir: PathBuf,
    /// The pristine fixture disk (boot a [`Disk::copy_of`] it, never the original).
    pub disk: PathBuf,
}

fn required_env(name: &str, what: &str) -> PathBuf {
    let value = std::env::var_os(name).unwrap_or_else(|| {
        panic!("{name} is not set: it must name {what}. Run the boot tests through scripts/test, which builds and sets everything.")
    });
    // Relative paths are taken from the workspace root (cargo runs tests in the package dir).
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(PathBuf::from(value));
    assert!(
        path.exists(),
        "{name}={} does not exist (it must name {what}); run scripts/test to build it",
        path.display()
    );
    path
}

impl Artifacts {
    /// Reads the artifacts from the environment `scripts/test` sets; panics with a
    /// message naming scripts/test if any is missing.
    pub fn from_env() -> Artifacts {
        Artifacts {
            init: required_env("DOCKROOT_INIT", "the static dockroot init binary"),
            mkinitramfs: required_env("DOCKROOT_MKINITRAMFS", "the dockroot-mkinitramfs binary"),
            kernel_dir: required_env("DOCKROOT_KERNEL_DIR", "a kernel directory from scripts/fetch-kernel"),
            disk: required_env("DOCKROOT_DISK", "the disk from qemu-tests/fixtures/make-docker-disk"),
        }
    }

    /// The `dockroot` commands binary (`DOCKROOT_CLI`), for `dockroot plan` and the like.
    pub fn cli() -> PathBuf {
        required_env("DOCKROOT_CLI", "the dockroot commands binary")
    }

    /// The static testinit binary (`DOCKROOT_TESTINIT`), for tests of the harness itself.
    pub fn testinit() -> PathBuf {
        required_env("DOCKROOT_TESTINIT", "the static testinit binary")
    }

    /// The same artifacts with the other kernel scripts/test fetched
    /// (`DOCKROOT_OTHER_KERNEL_DIR`: Debian 13 when the suite runs on Debian 12 and
    /// the other way round), for tests that need two kernel releases at once.
    pub fn with_other_kernel(&self) -> Artifacts {
        Artifacts {
            kernel_dir: required_env(
                "DOCKROOT_OTHER_KERNEL_DIR",
                "a second kernel directory from scripts/fetch-kernel",
            ),
            ..self.clone()
        }
    }

    /// The kernel image.
    pub fn kernel(&self) -> PathBuf {
        self.kernel_dir.join("vmlinuz")
    }

    /// The kernel release (the one directory under lib/modules).
    pub fn kernel_release(&self) -> String {
        let dir = self.kernel_dir.join("lib/modules");
        let mut releases: Vec<String> = fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(releases.len(), 1, "expected exactly one kernel release in {}, found {releases:?}", dir.display());
        releases.remove(0)
    }

    /// The kernel's module directory (`lib/modules/<release>`).
    pub fn modules_dir(&self) -> PathBuf {
        self.kernel_dir.join("lib/modules").join(self.kernel_release())
    }

    /// The fixture description `make-docker-disk` wrote next to the disk
    /// (label, UUID, image references, image IDs, layer cache IDs).
    pub fn fixture(&self) -> Value {
        let path = self.disk.with_file_name("fixture.json");
        let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
    }
}

/// The partitioned and multi-device disks `qemu-tests/fixtures/make-layouts` derives
/// from the fixture disk (boot [`Disk::copy_of`] them, never the originals).
#[derive(Debug, Clone)]
pub struct Layouts {
    /// GPT: partition 1 an ESP (vfat, label `ESP`, `toplayer/etc/hostname`),
    /// partition 2 (`dockroot-root`) the btrfs fixture.
    pub gpt: PathBuf,
    /// MBR (disk id 1234abcd): partition 1 the btrfs fixture, logical partition 5 an
    /// ext4 filesystem (label `mbr-logical`, `toplayer/etc/hostname`).
    pub mbr: PathBuf,
    /// btrfs RAID1 member devid 1 (the fixture's filesystem, same UUID).
    pub raid1a: PathBuf,
    /// btrfs RAID1 member devid 2.
    pub raid1b: PathBuf,
    /// `layouts.json`: the GUIDs, labels, devids of the layouts above.
    pub info: Value,
}

impl Layouts {
    /// Reads the `DOCKROOT_LAYOUT_*` variables `scripts/test` sets; panics naming the
    /// missing one and scripts/test if any is unset.
    pub fn from_env() -> Layouts {
        let what = "a disk layout from qemu-tests/fixtures/make-layouts";
        let info_path = required_env("DOCKROOT_LAYOUT_INFO", "layouts.json from qemu-tests/fixtures/make-layouts");
        let text = fs::read_to_string(&info_path).unwrap_or_else(|e| panic!("reading {}: {e}", info_path.display()));
        Layouts {
            gpt: required_env("DOCKROOT_LAYOUT_GPT", what),
            mbr: required_env("DOCKROOT_LAYOUT_MBR", what),
            raid1a: required_env("DOCKROOT_LAYOUT_RAID1A", what),
            raid1b: required_env("DOCKROOT_LAYOUT_RAID1B", what),
            info: serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", info_path.display())),
        }
    }

    /// A string field of `layouts.json` by a path of keys; panics if absent.
    pub fn get(&self, keys: &[&str]) -> String {
        match field(&self.info, keys) {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            other => panic!("layouts.json has no {keys:?} (found {other}); rebuild with make-layouts"),
        }
    }
}

impl Artifacts {
    /// The disk layouts for the hardware tests ([`Layouts::from_env`]).
    pub fn layouts(&self) -> Layouts {
        Layouts::from_env()
    }
}

/// One disk of `qemu-tests/fixtures/make-store-disks` (`DOCKROOT_STORE_<KEY>`, set by
/// scripts/test; boot a [`Disk::copy_of`] it) and the `fixture.json` next to it: what
/// the tool wrote (store, image ID, manifest digest, diff and chain IDs, the store's
/// layer IDs and directories), the top layer, the files the image must and must not show.
#[derive(Debug, Clone)]
pub struct StoreDisk {
    pub disk: PathBuf,
    pub fixture: Value,
}

impl StoreDisk {
    /// The disk `DOCKROOT_STORE_<key>` names; panics naming scripts/test if unset.
    pub fn from_env(key: &str) -> StoreDisk {
        let disk = required_env(&format!("DOCKROOT_STORE_{key}"), "a disk from qemu-tests/fixtures/make-store-disks");
        let path = disk.with_file_name("fixture.json");
        let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let fixture = serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()));
        StoreDisk { disk, fixture }
    }

    /// A string field of fixture.json; panics if absent.
    pub fn get(&self, key: &str) -> String {
        match &self.fixture[key] {
            Value::String(s) => s.clone(),
            other => panic!("fixture.json of {} has no string {key:?} (found {other})", self.disk.display()),
        }
    }

    /// A list of strings of fixture.json; panics if absent.
    pub fn list(&self, key: &str) -> Vec<String> {
        let items = self.fixture[key]
            .as_array()
            .unwrap_or_else(|| panic!("fixture.json of {} has no list {key:?}", self.disk.display()));
        items.iter().map(|v| v.as_str().unwrap_or_else(|| panic!("{key}: {v} is not a string")).to_string()).collect()
    }
}

/// Cargo's target directory (the nearest ancestor of the test binary holding
/// CACHEDIR.TAG), for logs and work files; the system temp dir otherwise.
pub fn target_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(d) = std::env::var_os("DOCKROOT_QEMU_WORK") {
            return PathBuf::from(d);
        }
        std::env::current_exe()
            .ok()
            .and_then(|exe| exe.ancestors().find(|a| a.join("CACHEDIR.TAG").is_file()).map(Path::to_path_buf))
            .unwrap_or_else(std::env::temp_dir)
    })
    .clone()
}

fn work_dir(sub: &str) -> PathBuf {
    let dir = target_dir().join("qemu-work").join(sub);
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    dir
}

fn hash_of(parts: &[&[u8]]) -> String {
    let mut h = DefaultHasher::new();
    for p in parts {
        p.hash(&mut h);
    }
    format!("{:016x}", h.finish())
}

fn stamp(path: &Path) -> Vec<u8> {
    let md = fs::metadata(path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display()));
    let mtime = md.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).unwrap_or_default();
    format!("{}:{}:{}", path.display(), md.len(), mtime.as_nanos()).into_bytes()
}

/// Builds (once per test process and inputs) an initramfs with the real builder:
/// `/init` = the dockroot init, the given kernel modules, and `config_json` as the
/// embedded config. Returns its path.
pub fn build_initramfs(artifacts: &Artifacts, modules: &[&str], config_json: &str) -> PathBuf {
    build_initramfs_with_init(artifacts, &artifacts.init, modules, config_json)
}

/// Like [`build_initramfs`] with another binary as `/init`.
pub fn build_initramfs_with_init(artifacts: &Artifacts, init: &Path, modules: &[&str], config_json: &str) -> PathBuf {
    static CACHE: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let modules_dir = artifacts.modules_dir();
    let joined = modules.join("\0");
    let key = hash_of(&[
        joined.as_bytes(),
        config_json.as_bytes(),
        &stamp(init),
        &stamp(&artifacts.mkinitramfs),
        modules_dir.as_os_str().as_encoded_bytes(),
    ]);
    // Hold the lock while building: tests asking for the same image wait for one build.
    let mut map = cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = map.get(&key) {
        return p.clone();
    }
    let dir = work_dir("initramfs");
    let config = dir.join(format!("{key}.json"));
    fs::write(&config, config_json).unwrap_or_else(|e| panic!("writing {}: {e}", config.display()));
    let output = dir.join(format!("{key}.img"));
    let partial = dir.join(format!("{key}.img.{}", std::process::id()));
    let mut cmd = Command::new(&artifacts.mkinitramfs);
    cmd.arg("--kernel-modules").arg(&modules_dir);
    for m in modules {
        cmd.arg("--module").arg(m);
    }
    cmd.arg("--config").arg(&config).arg("--output").arg(&partial).arg("--init").arg(init);
    let out = cmd.output().unwrap_or_else(|e| panic!("running {}: {e}", artifacts.mkinitramfs.display()));
    assert!(
        out.status.success(),
        "{:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        cmd,
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    fs::rename(&partial, &output)
        .unwrap_or_else(|e| panic!("renaming {} to {}: {e}", partial.display(), output.display()));
    map.insert(key, output.clone());
    output
}

/// A writable, sparse copy of a disk image in a temporary directory, removed on drop.
#[derive(Debug)]
pub struct Disk {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Disk {
    /// Copies `path` (sparsely; reflinked where the filesystem can).
    pub fn copy_of(path: &Path) -> Disk {
        let dir = tempfile::Builder::new()
            .prefix("disk-")
            .tempdir_in(work_dir("disks"))
            .unwrap_or_else(|e| panic!("creating a temp dir for a copy of {}: {e}", path.display()));
        let copy = dir.path().join(path.file_name().unwrap_or_else(|| "disk.img".as_ref()));
        let status = Command::new("cp")
            .args(["--sparse=always", "--reflink=auto"])
            .arg(path)
            .arg(&copy)
            .status()
            .unwrap_or_else(|e| panic!("running cp: {e}"));
        assert!(status.success(), "cp {} {} failed: {status}", path.display(), copy.display());
        Disk { path: copy, _dir: dir }
    }

    /// The copy's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

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
        }
    }
}

/// What a boot printed and how it ended.
#[derive(Debug)]
pub struct BootOutput {
    /// Everything on the serial console (QEMU's stdout), then QEMU's stderr.
    pub serial: String,
    /// QEMU's exit status (None if it had to be killed and could not be reaped).
    pub status: Option<ExitStatus>,
    /// The VM was killed at the timeout.
    pub timed_out: bool,
    /// Wall time from QEMU's start to its exit.
    pub elapsed: Duration,
    /// Where the serial log was saved.
    pub log_path: PathBuf,
    /// The hotplugs done, in order (see [`BootSpec::hotplug`]).
    pub hotplugged: Vec<HotplugDone>,
    /// When and how the harness SIGKILLed QEMU for [`BootSpec::kill_after`] (None:
    /// not killed that way: the needle and the deadline never showed).
    pub cut: Option<PowerCut>,
}

/// The timestamp of the first printk line containing `needle`, in seconds.
pub fn printk_time(serial: &str, needle: &str) -> Option<f64> {
    serial.lines().find(|l| l.contains(needle)).and_then(|l| {
        let start = l.find('[')?;
        let rest = l.get(start + 1..)?;
        let end = rest.find(']')?;
        rest.get(..end)?.trim().parse().ok()
    })
}

/// The first `DOCKROOT-TESTINIT {json}` report in `serial` that parses.
pub fn parse_testinit(serial: &str) -> Option<Value> {
    serial.lines().find_map(|line| {
        let at = line.find(TESTINIT_MARKER)?;
        let json = line.get(at + TESTINIT_MARKER.len()..)?.trim_end_matches(['\r', '\n']);
        serde_json::from_str(json).ok()
    })
}

impl BootOutput {
    /// testinit's report, if the boot reached it.
    pub fn testinit(&self) -> Option<Value> {
        parse_testinit(&self.serial)
    }

    /// testinit's report; panics with the end of the serial log if there is none.
    pub fn expect_testinit(&self) -> Value {
        self.testinit().unwrap_or_else(|| {
            panic!(
                "the boot did not reach testinit (timed out: {}, status: {:?}); log {}; last serial lines:\n{}",
                self.timed_out,
                self.status,
                self.log_path.display(),
                self.tail(60)
            )
        })
    }

    /// The last `n` lines of the serial output.
    pub fn tail(&self, n: usize) -> String {
        let lines: Vec<&str> = self.serial.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Seconds since boot when the kernel started the initramfs' `/init`.
    pub fn kernel_to_init(&self) -> Option<f64> {
        printk_time(&self.serial, RUN_INIT_LINE)
    }

    /// Seconds from the kernel starting `/init` to testinit running (the time dockroot
    /// took), from the printk timestamp and testinit's own boot-clock reading.
    pub fn time_to_init(&self) -> Option<f64> {
        let start = self.kernel_to_init()?;
        let end = self.testinit()?.get("uptime_s")?.as_f64()?;
        Some(end - start)
    }

    /// Whether the serial output contains `needle`.
    pub fn contains(&self, needle: &str) -> bool {
        self.serial.contains(needle)
    }

    /// The power cut of [`BootSpec::kill_after`]; panics unless it came while the init
    /// was still at work: QEMU killed by the harness, and neither the init's handover
    /// line ([`LINE_HANDOVER`]) nor testinit's report on the console. Everything the
    /// guest printed before the kill is in the log, so the check errs on the safe side.
    pub fn expect_cut_during_init(&self) -> &PowerCut {
        let cut = self.cut.as_ref().unwrap_or_else(|| {
            panic!(
                "the power was never cut: the kill line never showed (timed out: {}); log {}; last serial lines:\n{}",
                self.timed_out,
                self.log_path.display(),
                self.tail(30)
            )
        });
        assert!(
            !self.contains(LINE_HANDOVER) && !self.contains(TESTINIT_MARKER),
            "the power was cut at {:.3} s wall, after the init handed over to the image's init; log {}; last serial lines:\n{}",
            cut.at.as_secs_f64(),
            self.log_path.display(),
            self.tail(30)
        );
        cut
    }

    /// The guest's clock (printk time, s) when the power was cut, estimated from the
    /// kill line's printk time and how long after seeing it the harness killed QEMU.
    pub fn cut_guest_time(&self, kill: &KillAfter) -> Option<f64> {
        let cut = self.cut.as_ref()?;
        match cut.after_needle {
            Some(d) => Some(printk_time(&self.serial, &kill.needle)? + d.as_secs_f64()),
            None => printk_time(&self.serial, kill.deadline.as_deref()?),
        }
    }
}

fn test_name() -> String {
    let t = std::thread::current();
    let name = t.name().filter(|n| *n != "main").unwrap_or("boot");
    name.replace("::", "__").replace(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'), "_")
}

fn qemu_drive_args(i: usize, d: &DiskSpec) -> Vec<String> {
    let file = d.path.display().to_string().replace(',', ",,");
    match d.interface {
        DiskInterface::Virtio => vec!["-drive".into(), format!("file={file},format=raw,if=virtio")],
        DiskInterface::Ide => vec!["-drive".into(), format!("file={file},format=raw,if=ide,index={i}")],
        DiskInterface::Nvme => vec![
            "-drive".into(),
            format!("file={file},format=raw,if=none,id=nvme{i}"),
            "-device".into(),
            format!("nvme,drive=nvme{i},serial=dockroot{i}"),
        ],
        DiskInterface::VirtioScsi => vec![
            "-device".into(),
            format!("virtio-scsi-pci,id=scsi{i}"),
            "-drive".into(),
            format!("file={file},format=raw,if=none,id=scsid{i}"),
            "-device".into(),
            format!("scsi-hd,drive=scsid{i},bus=scsi{i}.0"),
        ],
        DiskInterface::Ahci => vec![
            "-device".into(),
            format!("ich9-ahci,id=ahci{i}"),
            "-drive".into(),
            format!("file={file},format=raw,if=none,id=ahcid{i}"),
            "-device".into(),
            format!("ide-hd,drive=ahcid{i},bus=ahci{i}.0"),
        ],
        DiskInterface::Usb => vec![
            "-device".into(),
            format!("qemu-xhci,id=xhci{i}"),
            "-drive".into(),
            format!("file={file},format=raw,if=none,id=usbd{i}"),
            "-device".into(),
            format!("usb-storage,drive=usbd{i},bus=xhci{i}.0,serial=dockroot{i}"),
        ],
    }
}

/// The xHCI controller hot-plugged USB disks go on.
const HOTPLUG_XHCI: &str = "hotplug-xhci";

/// A QMP connection (QEMU's JSON monitor) on a unix socket.
struct Qmp {
    reader: std::io::BufReader<std::os::unix::net::UnixStream>,
    writer: std::os::unix::net::UnixStream,
}

impl Qmp {
    /// Connects (retrying while QEMU creates the socket) and leaves capabilities negotiation.
    fn connect(path: &Path) -> Result<Qmp, String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let stream = loop {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => return Err(format!("connecting to {}: {e}", path.display())),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        stream.set_read_timeout(Some(Duration::from_secs(30))).map_err(|e| format!("QMP socket: {e}"))?;
        let writer = stream.try_clone().map_err(|e| format!("QMP socket: {e}"))?;
        let mut q = Qmp { reader: std::io::BufReader::new(stream), writer };
        let greeting = q.read()?;
        if greeting.get("QMP").is_none() {
            return Err(format!("unexpected QMP greeting {greeting}"));
        }
        q.execute("qmp_capabilities", serde_json::json!({}))?;
        Ok(q)
    }

    fn read(&mut self) -> Result<Value, String> {
        use std::io::BufRead;
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).map_err(|e| format!("reading from QMP: {e}"))?;
        if n == 0 {
            return Err("QMP connection closed".into());
        }
        serde_json::from_str(&line).map_err(|e| format!("QMP sent {line:?}: {e}"))
    }

    /// Runs a command; its `return` value, or the error QEMU gave.
    fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, String> {
        let msg = serde_json::json!({"execute": command, "arguments": arguments});
        writeln!(self.writer, "{msg}").map_err(|e| format!("writing to QMP: {e}"))?;
        loop {
            let v = self.read()?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                return Err(format!("QMP {msg}: {e}"));
            }
            // Anything else is an asynchronous event: skip it.
        }
    }

    /// Plugs `disk` in as device `id`.
    fn hotplug(&mut self, id: &str, disk: &DiskSpec) -> Result<(), String> {
        let node = format!("{id}-node");
        self.execute(
            "blockdev-add",
            serde_json::json!({
                "driver": "raw",
                "node-name": node,
                "file": {"driver": "file", "filename": disk.path.display().to_string()},
            }),
        )?;
        let device = match disk.interface {
            DiskInterface::Virtio => serde_json::json!({"driver": "virtio-blk-pci", "id": id, "drive": node}),
            DiskInterface::Usb => serde_json::json!({
                "driver": "usb-storage", "id": id, "drive": node, "bus": format!("{HOTPLUG_XHCI}.0"), "serial": id,
            }),
            other => return Err(format!("hotplug of a {} disk is not supported by the harness", other.name())),
        };
        self.execute("device_add", device)?;
        Ok(())
    }
}

/// The hotplugs of one boot, driven from the wait loop.
struct HotplugState {
    qmp_path: PathBuf,
    qmp: Option<Qmp>,
    pending: Vec<(usize, Hotplug, Option<Instant>)>,
    done: Vec<HotplugDone>,
}

impl HotplugState {
    /// Does what is due, given the serial output so far. Panics if QEMU refuses.
    fn step(&mut self, serial: &[u8], started: Instant) {
        let now = Instant::now();
        let mut due = Vec::new();
        for (idx, (i, h, clock)) in self.pending.iter_mut().enumerate() {
            if clock.is_none() {
                let seen = match &h.after {
                    None => true,
                    Some(needle) => !needle.is_empty() && serial.windows(needle.len()).any(|w| w == needle.as_bytes()),
                };
                if seen {
                    *clock = Some(now);
                }
            }
            if clock.is_some_and(|c| now.duration_since(c) >= h.delay) {
                due.push((idx, *i));
            }
        }
        for (idx, i) in due.iter().rev() {
            let (_, h, _) = self.pending.remove(*idx);
            if self.qmp.is_none() {
                self.qmp = Some(Qmp::connect(&self.qmp_path).unwrap_or_else(|e| panic!("QMP: {e}")));
            }
            let id = format!("hotplug{i}");
            if let Some(q) = self.qmp.as_mut() {
                q.hotplug(&id, &h.disk).unwrap_or_else(|e| panic!("hotplugging {}: {e}", h.disk.path.display()));
            }
            self.done.push(HotplugDone { id, at: started.elapsed() });
        }
    }
}

/// Boots `spec` in QEMU and returns the serial output once the VM powers off, reboots
/// (`-no-reboot` makes that an exit), or is killed at the timeout.
pub fn boot(spec: &BootSpec) -> BootOutput {
    let name = spec.name.clone().unwrap_or_else(test_name);
    let log_dir = target_dir().join("qemu-logs");
    fs::create_dir_all(&log_dir).unwrap_or_else(|e| panic!("creating {}: {e}", log_dir.display()));
    let log_path = log_dir.join(format!("{name}.log"));

    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio"]);
    cmd.arg("-m").arg(spec.memory_mb.to_string());
    if std::env::var("DOCKROOT_QEMU_KVM").as_deref() == Ok("1") {
        cmd.args(["-accel", "kvm", "-cpu", "host"]);
    } else {
        cmd.args(["-accel", "tcg"]);
    }
    cmd.arg("-kernel").arg(&spec.kernel).arg("-initrd").arg(&spec.initrd);
    // no_timer_check: under TCG on a busy host, the kernel's IO-APIC timer check can
    // miss its ticks and panic ("IO-APIC + timer doesn't work!") before any init runs.
    let mut append =
        std::ffi::OsString::from(format!("console=ttyS0 panic=-1 printk.time=1 no_timer_check {}", spec.append));
    if !spec.append_raw.is_empty() {
        append.push(" ");
        append.push(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&spec.append_raw));
    }
    cmd.arg("-append").arg(append);
    for (i, d) in spec.disks.iter().enumerate() {
        cmd.args(qemu_drive_args(i, d));
    }
    let qmp_dir = tempfile::Builder::new()
        .prefix("dockroot-qmp-")
        .tempdir()
        .unwrap_or_else(|e| panic!("creating a directory for the QMP socket: {e}"));
    let mut hotplug = HotplugState {
        qmp_path: qmp_dir.path().join("qmp.sock"),
        qmp: None,
        pending: spec.hotplug.iter().cloned().enumerate().map(|(i, h)| (i, h, None)).collect(),
        done: Vec::new(),
    };
    if !spec.hotplug.is_empty() {
        cmd.arg("-qmp").arg(format!("unix:{},server=on,wait=off", hotplug.qmp_path.display()));
        if spec.hotplug.iter().any(|h| h.disk.interface == DiskInterface::Usb) {
            cmd.arg("-device").arg(format!("qemu-xhci,id={HOTPLUG_XHCI}"));
        }
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());

    let started = Instant::now();
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("starting qemu-system-x86_64: {e} ({cmd:?})"));
    let log = Arc::new(Mutex::new(
        fs::File::create(&log_path).unwrap_or_else(|e| panic!("creating {}: {e}", log_path.display())),
    ));
    if let Ok(mut l) = log.lock() {
        let _ = writeln!(l, "# {cmd:?}");
    }
    // The serial output so far, for hotplugs waiting on a line.
    let live: Arc<Mutex<Vec<u8>>> = Arc::default();
    let reader = |mut pipe: Box<dyn Read + Send>, log: Arc<Mutex<fs::File>>, live: Option<Arc<Mutex<Vec<u8>>>>| {
        std::thread::spawn(move || {
            let mut all = Vec::new();
            let mut buf = [0u8; 8192];
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let chunk = &buf[..n];
                        all.extend_from_slice(chunk);
                        if let Ok(mut l) = log.lock() {
                            let _ = l.write_all(chunk);
                        }
                        if let Some(Ok(mut v)) = live.as_ref().map(|l| l.lock()) {
                            v.extend_from_slice(chunk);
                        }
                    }
                }
            }
            all
        })
    };
    let live_serial = (!spec.hotplug.is_empty() || spec.kill_after.is_some()).then(|| live.clone());
    let stdout = reader(Box::new(child.stdout.take().expect("piped stdout")), log.clone(), live_serial);
    let stderr = reader(Box::new(child.stderr.take().expect("piped stderr")), log.clone(), None);

    let mut timed_out = false;
    // kill_after: how far the needle and deadline searches got, when the needle was seen, the cut.
    let (mut kill_scan, mut deadline_scan, mut kill_seen, mut cut) =
        (0usize, 0usize, None::<Instant>, None::<PowerCut>);
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if started.elapsed() >= spec.timeout => {
                timed_out = true;
                let _ = child.kill();
                break child.wait().ok();
            }
            Ok(None) if spec.kill_after.is_some() && cut.is_none() => {
                let k = spec.kill_after.as_ref().expect("checked");
                // Whether `needle` is in the serial output from `*scan` on (moving `*scan`
                // past what was searched, keeping a needle's length for a split line).
                let find = |needle: &[u8], scan: &mut usize| {
                    let serial = live.lock().map(|v| v.get(*scan..).unwrap_or_default().to_vec()).unwrap_or_default();
                    let found = !needle.is_empty() && serial.windows(needle.len()).any(|w| w == needle);
                    if !found {
                        *scan += serial.len().saturating_sub(needle.len());
                    }
                    found
                };
                if kill_seen.is_none() && find(k.needle.as_bytes(), &mut kill_scan) {
                    kill_seen = Some(Instant::now());
                }
                let by_deadline = kill_seen.is_none_or(|t| t.elapsed() < k.delay)
                    && k.deadline.as_ref().is_some_and(|d| find(d.as_bytes(), &mut deadline_scan));
                if by_deadline || kill_seen.is_some_and(|t| t.elapsed() >= k.delay) {
                    let _ = child.kill();
                    let after_needle = if by_deadline { None } else { kill_seen.map(|t| t.elapsed()) };
                    cut = Some(PowerCut { at: started.elapsed(), after_needle });
                } else {
                    // Fine-grained: the interesting moments are milliseconds apart.
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            Ok(None) => {
                if !hotplug.pending.is_empty() {
                    let serial = live.lock().map(|v| v.clone()).unwrap_or_default();
                    hotplug.step(&serial, started);
                }
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(_) => break None,
        }
    };
    drop(hotplug.qmp.take());
    let elapsed = started.elapsed();
    let out = stdout.join().unwrap_or_default();
    let err = stderr.join().unwrap_or_default();
    let mut serial = String::from_utf8_lossy(&out).into_owned();
    if !err.is_empty() {
        serial.push_str("\n# qemu stderr:\n");
        serial.push_str(&String::from_utf8_lossy(&err));
    }
    let mut serial = serial.replace('\r', "");
    for h in &hotplug.pending {
        serial.push_str(&format!("\n# harness: hotplug of {} never happened\n", h.1.disk.path.display()));
    }
    for h in &hotplug.done {
        let line = format!("# harness: {} plugged in at {:.2} s wall\n", h.id, h.at.as_secs_f64());
        if let Ok(mut l) = log.lock() {
            let _ = l.write_all(line.as_bytes());
        }
    }
    if let Some(c) = &cut {
        let how = match c.after_needle {
            Some(d) => format!("{} ms after the kill line", d.as_millis()),
            None => "at the deadline line".to_string(),
        };
        let line = format!("# harness: QEMU killed (power cut) at {:.3} s wall, {how}\n", c.at.as_secs_f64());
        serial.push_str(&line);
        if let Ok(mut l) = log.lock() {
            let _ = l.write_all(line.as_bytes());
        }
    }
    let output = BootOutput { serial, status, timed_out, elapsed, log_path, hotplugged: hotplug.done, cut };

    // Always visible (not captured by the test harness): how long the boot took.
    let fmt = |t: Option<f64>| t.map(|t| format!("{t:.2} s")).unwrap_or_else(|| "-".into());
    let _ = writeln!(
        std::io::stderr(),
        "boot {name}: {:.1} s wall{}, kernel ran /init at {}, /init to testinit {} (log {})",
        output.elapsed.as_secs_f64(),
        if output.timed_out { " (TIMED OUT)" } else { "" },
        fmt(output.kernel_to_init()),
        fmt(output.time_to_init()),
        output.log_path.display()
    );
    output
}

/// A digest of everything below `root`, by path relative to it ("." is `root` itself;
/// a name that is not UTF-8 is written with `\xNN` escapes): file type, mode, owner,
/// link count, size, and the SHA-256 of the content, of the symlink target or the
/// device number; a btrfs subvolume's root directory says so. Each extended attribute
/// is an entry of its own, `"{path} xattr {name}"`: its value as text if it is short
/// UTF-8, else its length and SHA-256. Symlinks are never followed; nested btrfs
/// subvolumes are walked like directories. Top-level names in `skip` are left out.
/// Times and inode numbers are not part of it: the digest says whether two trees hold
/// byte-identical files with the same metadata and extended attributes.
pub fn tree_digest(root: &Path, skip: &[&str]) -> std::collections::BTreeMap<String, String> {
    use sha2::{Digest, Sha256};
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![(root.to_path_buf(), ".".to_string())];
    let mut buf = vec![0u8; 1 << 16];
    while let Some((path, rel)) = stack.pop() {
        let md = fs::symlink_metadata(&path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display()));
        let ft = md.file_type();
        let what = if ft.is_file() {
            let mut f = fs::File::open(&path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
            let mut h = Sha256::new();
            loop {
                match f.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => h.update(&buf[..n]),
                    Err(e) => panic!("reading {}: {e}", path.display()),
                }
            }
            format!("file sha256 {}", hex(&h.finalize()))
        } else if ft.is_symlink() {
            let t = fs::read_link(&path).unwrap_or_else(|e| panic!("readlink {}: {e}", path.display()));
            format!("symlink -> {}", name_text(t.as_os_str()))
        } else if ft.is_dir() {
            let mut names: Vec<(std::ffi::OsString, String)> = fs::read_dir(&path)
                .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
                .map(|e| e.unwrap_or_else(|e| panic!("reading {}: {e}", path.display())).file_name())
                .map(|n| {
                    let t = name_text(&n);
                    (n, t)
                })
                .filter(|(_, t)| rel != "." || !skip.contains(&t.as_str()))
                .collect();
            names.sort_by(|a, b| a.1.cmp(&b.1));
            for (n, t) in names.iter().rev() {
                let child = if rel == "." { t.clone() } else { format!("{rel}/{t}") };
                stack.push((path.join(n), child));
            }
            if md.ino() == BTRFS_SUBVOL_INO && is_btrfs(&path) {
                "dir (btrfs subvolume)".to_string()
            } else {
                "dir".to_string()
            }
        } else if ft.is_block_device() || ft.is_char_device() {
            format!("{} device {:x}", if ft.is_block_device() { "block" } else { "char" }, md.rdev())
        } else if ft.is_fifo() {
            "fifo".to_string()
        } else if ft.is_socket() {
            "socket".to_string()
        } else {
            "special".to_string()
        };
        let size = if ft.is_dir() { 0 } else { md.len() };
        let entry =
            format!("{what} mode {:o} owner {}:{} links {} size {size}", md.mode(), md.uid(), md.gid(), md.nlink());
        for (name, value) in xattrs(&path) {
            let shown = match String::from_utf8(value) {
                Ok(text) if text.len() <= 256 => text,
                Ok(text) => format!("{} bytes sha256 {}", text.len(), hex(&Sha256::digest(text.as_bytes()))),
                Err(e) => {
                    let v = e.into_bytes();
                    format!("{} bytes sha256 {}", v.len(), hex(&Sha256::digest(&v)))
                }
            };
            out.insert(format!("{rel} xattr {name}"), shown);
        }
        out.insert(rel, entry);
    }
    out
}

/// The inode number of a btrfs subvolume's root directory.
const BTRFS_SUBVOL_INO: u64 = 256;

fn is_btrfs(path: &Path) -> bool {
    const BTRFS_SUPER_MAGIC: i64 = 0x9123_683e;
    rustix::fs::statfs(path).map(|s| s.f_type == BTRFS_SUPER_MAGIC).unwrap_or(false)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A file name as text: itself if it is UTF-8 (and has no backslash), else with every
/// byte outside printable ASCII and every backslash written `\xNN`, so that two
/// different names never give the same text.
fn name_text(name: &std::ffi::OsStr) -> String {
    let b = name.as_encoded_bytes();
    match std::str::from_utf8(b) {
        Ok(s) if !s.contains('\\') => s.to_string(),
        _ => {
            b.iter()
                .map(|&c| {
                    if (0x20..0x7f).contains(&c) && c != b'\\' {
                        (c as char).to_string()
                    } else {
                        format!("\\x{c:02x}")
                    }
                })
                .collect()
        }
    }
}

/// The extended attributes of `path` (not following a symlink), by name. Panics if
/// they cannot be read (a filesystem without xattrs has none).
fn xattrs(path: &Path) -> Vec<(String, Vec<u8>)> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut names = vec![0u8; 65536];
    // SAFETY: `c` is a NUL-terminated path, `names` a writable buffer of the given size.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    let n = match usize::try_from(n) {
        Ok(n) => n,
        Err(_) => {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOTSUP) {
                return Vec::new();
            }
            panic!("listing the extended attributes of {}: {e}", path.display());
        }
    };
    let mut out = Vec::new();
    for name in names[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let cname = std::ffi::CString::new(name).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut value = vec![0u8; 65536];
        // SAFETY: both strings are NUL-terminated, `value` is a writable buffer of the given size.
        let len = unsafe { libc::lgetxattr(c.as_ptr(), cname.as_ptr(), value.as_mut_ptr().cast(), value.len()) };
        let len = usize::try_from(len).unwrap_or_else(|_| {
            panic!(
                "reading extended attribute {} of {}: {}",
                String::from_utf8_lossy(name),
                path.display(),
                std::io::Error::last_os_error()
            )
        });
        value.truncate(len);
        out.push((String::from_utf8_lossy(name).into_owned(), value));
    }
    out
}

/// How two [`tree_digest`]s differ, one line per path (at most `max` lines), for messages.
pub fn digest_diff(
    before: &std::collections::BTreeMap<String, String>,
    after: &std::collections::BTreeMap<String, String>,
    max: usize,
) -> Vec<String> {
    let mut lines = Vec::new();
    for (k, v) in before {
        match after.get(k) {
            None => lines.push(format!("gone: {k} ({v})")),
            Some(w) if w != v => lines.push(format!("changed: {k}: {v} => {w}")),
            Some(_) => {}
        }
    }
    lines.extend(after.iter().filter(|(k, _)| !before.contains_key(*k)).map(|(k, v)| format!("new: {k} ({v})")));
    lines.truncate(max);
    lines
}

/// The filesystem type on a disk image (`blkid`): btrfs, ext4, xfs, ...
pub fn disk_fstype(disk: &Path) -> String {
    let out = Command::new("blkid")
        .args(["-p", "-o", "value", "-s", "TYPE"])
        .arg(disk)
        .output()
        .unwrap_or_else(|e| panic!("running blkid: {e}"));
    let t = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(!t.is_empty(), "blkid finds no filesystem on {}: {}", disk.display(), String::from_utf8_lossy(&out.stderr));
    t
}

/// A recovery boot's record (`recovered` in boot.json) must say each text whose
/// condition holds and none of the others; `what` starts every message.
pub fn assert_recovery_steps(what: &str, rec: &Value, steps: &[(bool, String)]) {
    let recovered = rec["recovered"].to_string();
    for (cond, text) in steps {
        assert_eq!(
            recovered.contains(text.as_str()),
            *cond,
            "{what}: recovered should {}say {text:?}: {rec}",
            if *cond { "" } else { "not " }
        );
    }
}

/// In a root's [`tree_digest`]: when dockroot made it (the `user.dockroot.created`
/// xattr of its root directory), which starts the names of kept roots.
pub const DIGEST_CREATED: &str = ". xattr user.dockroot.created";

/// A root's creation stamp from its [`tree_digest`].
pub fn digest_created(digest: &std::collections::BTreeMap<String, String>) -> String {
    digest.get(DIGEST_CREATED).cloned().unwrap_or_else(|| "(none)".into())
}

/// After a power cut and the recovery boot, the kept roots must be the newest `keep`
/// of: the roots kept before the cut boot (`kept_before`, those the policy was not
/// midway deleting), the root that was current before it (`previous`), and the cut
/// boot's own root if the cut came after it retired `previous` (`cut_root`); each
/// named by its creation stamp and byte-identical. `now` maps the kept roots' names to
/// their digests. `what` starts every message.
pub fn assert_kept_after_recovery(
    what: &str,
    now: &std::collections::BTreeMap<String, &std::collections::BTreeMap<String, String>>,
    kept_before: &[&std::collections::BTreeMap<String, String>],
    previous: &std::collections::BTreeMap<String, String>,
    cut_root: Option<&std::collections::BTreeMap<String, String>>,
    keep: usize,
) {
    let mut candidates: Vec<(String, &std::collections::BTreeMap<String, String>, &str)> =
        kept_before.iter().map(|d| (format!("{}-", digest_created(d)), *d, "kept")).collect();
    candidates.push((format!("{}-", digest_created(previous)), previous, "previous rw layer"));
    if let Some(r) = cut_root {
        candidates.push((format!("{}-", digest_created(r)), r, "the cut boot's root"));
    }
    candidates.sort_by(|a, b| a.0.cmp(&b.0));
    let expected = &candidates[candidates.len().saturating_sub(keep)..];
    let names: Vec<&String> = now.keys().collect();
    assert_eq!(now.len(), expected.len(), "{what}: kept {names:?}");
    for ((name, root), (prefix, want, which)) in now.iter().zip(expected) {
        assert!(name.starts_with(prefix.as_str()), "{what}: kept {names:?}, expected {which} {prefix}*");
        assert_same_digest(&format!("{what}: kept root {name} ({which})"), want, root);
    }
}

/// Panics, listing the differences, unless two [`tree_digest`]s are equal.
pub fn assert_same_digest(
    what: &str,
    before: &std::collections::BTreeMap<String, String>,
    after: &std::collections::BTreeMap<String, String>,
) {
    let diff = digest_diff(before, after, 40);
    assert!(diff.is_empty(), "{what} changed:\n{}", diff.join("\n"));
}

/// Mounts the disk image `disk` (a whole-disk btrfs, ext4 or xfs filesystem)
/// read-only, runs `f` on its top level, and unmounts. btrfs: no log replay (the host
/// never writes to it; a sync commits everything but fsync logs). ext4 and xfs: the
/// journal is replayed, which writes to the image: after testinit's sync and power-off
/// their metadata may still be only in the journal.
pub fn with_disk_mounted_ro<T>(disk: &Path, f: impl FnOnce(&Path) -> T) -> T {
    let fstype = disk_fstype(disk);
    let options = match fstype.as_str() {
        "btrfs" => "ro,rescue=nologreplay",
        _ => "ro",
    };
    with_disk_mounted(disk, &fstype, options, f)
}

/// Mounts `disk` (on a writable loop device) with `options` on a temporary directory,
/// runs `f` on it, and unmounts (lazily if it is still busy).
fn with_disk_mounted<T>(disk: &Path, fstype: &str, options: &str, f: impl FnOnce(&Path) -> T) -> T {
    let mnt = tempfile::Builder::new()
        .prefix("dockroot-inspect-")
        .tempdir()
        .unwrap_or_else(|e| panic!("creating a mount point: {e}"));
    let dev = sh(&format!("losetup --find --show '{}'", disk.display())).trim().to_string();
    let out = Command::new("mount")
        .args(["-t", fstype, "-o", options])
        .arg(&dev)
        .arg(mnt.path())
        .output()
        .unwrap_or_else(|e| panic!("running mount: {e}"));
    if !out.status.success() {
        let _ = Command::new("losetup").arg("-d").arg(&dev).status();
        panic!("mounting {} ({dev}, {fstype}, {options}): {}", disk.display(), String::from_utf8_lossy(&out.stderr));
    }
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(mnt.path())));
    let um = Command::new("sh").arg("-c").arg(format!("sync && umount '{}'", mnt.path().display())).output();
    if !matches!(&um, Ok(o) if o.status.success()) {
        let _ = Command::new("umount").arg("-l").arg(mnt.path()).status();
    }
    let _ = Command::new("losetup").arg("-d").arg(&dev).status();
    r.unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// Fill the filesystem mounted at `top` with the file `filler`, leaving about
/// 24 MiB for metadata (the full-disk tests).
pub fn fill_disk(top: &Path) {
    let filler = top.join("filler");
    sh(&format!("dd if=/dev/zero of='{}' bs=1M status=none 2>/dev/null || true", filler.display()));
    sh(&format!("sync && truncate -s -24M '{}' && sync", filler.display()));
}

/// An ext4 disk image labelled `machine` in `dir` holding a top layer
/// `machine/` with 64 MiB of data, more than a filled disk takes.
pub fn oversized_toplayer_disk(dir: &Path) -> PathBuf {
    let src = dir.join("src/machine");
    std::fs::create_dir_all(src.join("etc")).unwrap();
    std::fs::write(src.join("etc/hostname"), b"never-applied\n").unwrap();
    sh(&format!("dd if=/dev/urandom of='{}' bs=1M count=64 status=none", src.join("big").display()));
    let ext4 = dir.join("machine.img");
    sh(&format!("mkfs.ext4 -q -L machine -d '{}' '{}' 128M", dir.join("src").display(), ext4.display()));
    ext4
}

/// Runs `cmd` with `sh -c`; panics with its output unless it succeeds. Its stdout.
pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap_or_else(|e| panic!("running sh: {e}"));
    assert!(
        out.status.success(),
        "{cmd}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The kernel modules of the standard boots: a virtio disk with btrfs on it.
pub const STANDARD_MODULES: &[&str] = &["virtio_blk", "virtio_pci", "btrfs"];
/// The embedded config naming the fixture disk's main image.
pub const OS_CONFIG: &str = r#"{"docker_image":"dockroot-test/os","docker_tag":"latest"}"#;
/// The standard kernel command line for the fixture disk: its rw layer `rwlayer`,
/// its top layer `toplayer/`.
pub const STANDARD_APPEND: &str =
    "root=LABEL=dockroot-test rootflags=subvol=rwlayer rw toplayer=LABEL=dockroot-test toplayer_path=toplayer";

/// One machine booted as often as a test likes: an initramfs and a private copy of
/// a disk, with a command line every boot starts with.
#[derive(Debug)]
pub struct Machine {
    pub artifacts: Artifacts,
    pub initrd: PathBuf,
    /// The machine's own copy of the disk.
    pub disk: Disk,
    /// The start of every boot's kernel command line.
    pub append: String,
}

impl Machine {
    /// A copy of the fixture disk, the standard modules and command line, and `config`
    /// as the initramfs's embedded config.
    pub fn new(config: &str) -> Machine {
        let a = Artifacts::from_env();
        let disk = a.disk.clone();
        Machine::with(a, &disk, STANDARD_MODULES, config, STANDARD_APPEND)
    }

    /// A copy of `disk` with an initramfs of `modules` and `config`; every boot's
    /// command line starts with `append`.
    pub fn with(artifacts: Artifacts, disk: &Path, modules: &[&str], config: &str, append: &str) -> Machine {
        let initrd = build_initramfs(&artifacts, modules, config);
        Machine { initrd, disk: Disk::copy_of(disk), append: append.to_string(), artifacts }
    }

    /// The boot of the machine's disk, logged as `name`, with `extra` after the
    /// machine's command line.
    pub fn spec(&self, name: &str, extra: &str) -> BootSpec {
        self.spec_cmdline(name, &format!("{} {extra}", self.append))
    }

    /// Like [`Machine::spec`] with a whole other command line.
    pub fn spec_cmdline(&self, name: &str, append: &str) -> BootSpec {
        BootSpec {
            name: Some(name.into()),
            ..BootSpec::new(self.artifacts.kernel(), self.initrd.clone(), &[self.disk.path()], append)
        }
    }

    /// Boots with `extra` after the machine's command line.
    pub fn boot(&self, name: &str, extra: &str) -> BootOutput {
        boot(&self.spec(name, extra))
    }

    /// Boots with a whole other command line.
    pub fn boot_cmdline(&self, name: &str, append: &str) -> BootOutput {
        boot(&self.spec_cmdline(name, append))
    }

    /// Boots and returns testinit's report, which must have no errors and a boot
    /// record, and the output.
    pub fn report_and_output(&self, name: &str, extra: &str) -> (Value, BootOutput) {
        let out = self.boot(name, extra);
        let r = out.expect_testinit();
        assert_eq!(r["errors"], serde_json::json!([]), "{name}: {r}");
        assert!(r["boot_record"].is_object(), "{name}: no /run/dockroot/boot.json in the booted system: {r}");
        (r, out)
    }

    /// Like [`Machine::report_and_output`], the report only.
    pub fn report(&self, name: &str, extra: &str) -> Value {
        self.report_and_output(name, extra).0
    }

    /// Runs `f` with the disk's top level mounted read-write on the host.
    pub fn modify<T>(&self, f: impl FnOnce(&Path) -> T) -> T {
        with_disk_mounted(self.disk.path(), &disk_fstype(self.disk.path()), "rw", f)
    }

    /// Runs `f` with the disk's top level mounted read-only on the host
    /// ([`with_disk_mounted_ro`]).
    pub fn inspect<T>(&self, f: impl FnOnce(&Path) -> T) -> T {
        with_disk_mounted_ro(self.disk.path(), f)
    }
}

/// Looks up a report field by a path of keys, e.g. `field(&r, &["paths", "/etc/hostname", "content"])`.
pub fn field<'a>(report: &'a Value, keys: &[&str]) -> &'a Value {
    keys.iter().fold(report, |v, k| v.get(*k).unwrap_or(&Value::Null))
}

/// Where to cut the power during a boot (the crash tests), timed from the serial log
/// of a normal boot of the same disk (the reference). Every point cuts no later than
/// dockroot's [`LINE_READY`] (the deadline of its [`KillAfter`]), so a cut always comes
/// while the init is at work, whatever the machine's speed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum CutAt {
    /// A fraction of the way from the kernel starting /init to dockroot's "ready" line.
    Window(f64),
    /// A fraction of the way from dockroot finding the root device to its "ready" line.
    Work(f64),
    /// This many milliseconds after a line containing the needle; the reference boot
    /// must have printed it (a point whose line the scenario never prints cannot cut).
    Line(&'static str, u64),
}

/// dockroot's line when it has found the root device.
pub const LINE_ROOT_DEVICE: &str = "dockroot: found ";
/// dockroot's last line before switching root.
pub const LINE_READY: &str = "dockroot: ready:";
/// dockroot's line when it hands over to the image's init (after switching root).
pub const LINE_HANDOVER: &str = "dockroot: starting /";

impl CutAt {
    /// The kill for this point, timed from `reference` (a normal boot's serial log).
    /// Panics if the reference lacks a line the point is timed from.
    pub fn kill(&self, reference: &BootOutput) -> KillAfter {
        let t = |needle: &str| {
            printk_time(&reference.serial, needle).unwrap_or_else(|| {
                panic!("cut point {self:?}: no {needle:?} line in the reference boot {}", reference.log_path.display())
            })
        };
        let secs = |s: f64| Duration::from_secs_f64(s.max(0.0));
        let (needle, delay) = match *self {
            CutAt::Window(f) => (RUN_INIT_LINE, secs(f * (t(LINE_READY) - t(RUN_INIT_LINE)))),
            CutAt::Work(f) => (LINE_ROOT_DEVICE, secs(f * (t(LINE_READY) - t(LINE_ROOT_DEVICE)))),
            CutAt::Line(needle, ms) => {
                t(needle);
                (needle, Duration::from_millis(ms))
            }
        };
        KillAfter { needle: needle.into(), delay, deadline: Some(LINE_READY.into()) }
    }
}

/// The first `DOCKROOT_CRASH_POINTS` of `all` (a number, or `all`, the default).
/// Panics if two points are the same.
pub fn cut_points(all: &[CutAt]) -> Vec<CutAt> {
    for (i, a) in all.iter().enumerate() {
        assert!(!all[..i].contains(a), "cut point {a:?} is listed twice");
    }
    let n = match std::env::var("DOCKROOT_CRASH_POINTS") {
        Err(_) => all.len(),
        Ok(v) if v == "all" => all.len(),
        Ok(v) => v.parse().unwrap_or_else(|_| panic!("DOCKROOT_CRASH_POINTS={v}: a number or 'all'")),
    };
    all.iter().copied().take(n.max(1)).collect()
}

/// Whether `DOCKROOT_CRASH_POINTS` asks for every point (`all`, or unset).
pub fn all_cut_points() -> bool {
    std::env::var("DOCKROOT_CRASH_POINTS").map_or(true, |v| v == "all")
}

/// The init built with the `decompress-modules` and `fault-injection` features
/// (`DOCKROOT_INIT_VARIANT`, made by scripts/build as `dockroot-test-variant`).
pub fn init_variant() -> PathBuf {
    required_env(
        "DOCKROOT_INIT_VARIANT",
        "the test variant of the init (scripts/build's dockroot-test-variant: decompress-modules, fault-injection)",
    )
}

/// The fatal part of a failed boot, booted with `dockroot.reboot_delay=1`: from
/// dockroot's "cannot boot" line to its reboot notice. Asserts the boot ended in that
/// message and a reboot (QEMU exits because of -no-reboot), never a hang, a kernel
/// panic or the image's init.
pub fn assert_fatal_boot(out: &BootOutput) -> String {
    assert!(!out.timed_out, "the init hung instead of rebooting:\n{}", out.tail(40));
    assert!(out.testinit().is_none(), "the image's init ran although dockroot should have refused");
    assert!(!out.contains("Kernel panic"), "kernel panic instead of a clean reboot:\n{}", out.tail(40));
    let lines: Vec<&str> = out.serial.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.contains("dockroot: ERROR: cannot boot: "))
        .unwrap_or_else(|| panic!("no 'cannot boot' message:\n{}", out.tail(40)));
    let end = lines
        .iter()
        .skip(start)
        .position(|l| l.contains("dockroot: ERROR: rebooting in 1 s"))
        .map(|n| start + n)
        .unwrap_or_else(|| panic!("no reboot notice after the error:\n{}", out.tail(40)));
    assert!(out.contains("reboot: Restarting system"), "the kernel did not restart:\n{}", out.tail(20));
    lines.get(start..end).unwrap_or_default().join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERIAL: &str = "[    0.000000] Linux version 6.1.0\r\n[    1.626165] Run /init as init process\r\n\
        junk DOCKROOT-TESTINIT {\"pid\":1,\"uptime_s\":2.5}\r\n[    2.6] reboot: Power down\r\n";

    #[test]
    fn parses_printk_times_and_the_report() {
        let s = SERIAL.replace('\r', "");
        assert_eq!(printk_time(&s, RUN_INIT_LINE), Some(1.626165));
        assert_eq!(printk_time(&s, "nothing like this"), None);
        let r = parse_testinit(&s).expect("report");
        assert_eq!(r["pid"], 1);
        let out = BootOutput {
            serial: s,
            status: None,
            timed_out: false,
            elapsed: Duration::ZERO,
            log_path: PathBuf::new(),
            hotplugged: Vec::new(),
            cut: None,
        };
        let t = out.time_to_init().expect("time to init");
        assert!((t - 0.873835).abs() < 1e-9, "{t}");
    }

    #[test]
    fn skips_a_truncated_report_and_takes_the_next() {
        let s = "DOCKROOT-TESTINIT {\"pid\":1,\"ar\nDOCKROOT-TESTINIT {\"pid\":7}\n";
        assert_eq!(parse_testinit(s).expect("report")["pid"], 7);
        assert!(parse_testinit("DOCKROOT-TESTINIT {broken\n").is_none());
    }

    #[test]
    fn field_walks_nested_keys() {
        let v: Value = serde_json::json!({"paths": {"/a": {"mode": "0600"}}});
        assert_eq!(field(&v, &["paths", "/a", "mode"]), "0600");
        assert!(field(&v, &["paths", "/b", "mode"]).is_null());
    }

    fn output(serial: &str, cut: Option<PowerCut>) -> BootOutput {
        BootOutput {
            serial: serial.into(),
            status: None,
            timed_out: false,
            elapsed: Duration::ZERO,
            log_path: PathBuf::new(),
            hotplugged: Vec::new(),
            cut,
        }
    }

    const INIT_LOG: &str = "[    1.000000] Run /init as init process\n[    2.000000] dockroot: found LABEL=x\n\
        [    2.250000] dockroot: image x is sha256:0\n[    3.000000] dockroot: ready: 2000ms in all\n";

    #[test]
    fn cut_points_are_timed_from_the_reference_and_end_at_ready() {
        let reference = output(INIT_LOG, None);
        let k = CutAt::Window(0.5).kill(&reference);
        assert_eq!((k.needle.as_str(), k.delay), (RUN_INIT_LINE, Duration::from_secs(1)));
        assert_eq!(k.deadline.as_deref(), Some(LINE_READY));
        let k = CutAt::Work(0.5).kill(&reference);
        assert_eq!((k.needle.as_str(), k.delay), (LINE_ROOT_DEVICE, Duration::from_millis(500)));
        let k = CutAt::Line("dockroot: image ", 7).kill(&reference);
        assert_eq!((k.needle.as_str(), k.delay), ("dockroot: image ", Duration::from_millis(7)));
        assert_eq!(k.deadline.as_deref(), Some(LINE_READY));
        // A line the scenario never prints cannot cut: refused up front.
        let never = std::panic::catch_unwind(|| CutAt::Line("dockroot: never printed", 0).kill(&reference));
        assert!(never.is_err());
    }

    #[test]
    fn a_cut_counts_only_before_the_handover() {
        let cut = PowerCut { at: Duration::from_secs(3), after_needle: Some(Duration::from_millis(2)) };
        let during = output(INIT_LOG, Some(cut.clone()));
        assert_eq!(during.expect_cut_during_init().at, Duration::from_secs(3));
        let kill = KillAfter { needle: "dockroot: image ".into(), delay: Duration::ZERO, deadline: None };
        let t = during.cut_guest_time(&kill).expect("a guest time");
        assert!((t - 2.252).abs() < 1e-9, "{t}");
        for late in [format!("{INIT_LOG}dockroot: starting /sbin/init\n"), format!("{INIT_LOG}{TESTINIT_MARKER}{{}}\n")]
        {
            let after = output(&late, Some(cut.clone()));
            assert!(std::panic::catch_unwind(|| after.expect_cut_during_init().at).is_err(), "{late}");
        }
        let never = output(INIT_LOG, None);
        assert!(std::panic::catch_unwind(|| never.expect_cut_during_init().at).is_err());
    }

    #[test]
    fn cut_points_refuse_duplicates() {
        let points = [CutAt::Work(0.5), CutAt::Line("x", 1), CutAt::Work(0.5)];
        assert!(std::panic::catch_unwind(|| cut_points(&points)).is_err());
    }
}
