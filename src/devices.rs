//! Find the block device a boot parameter names, without udev.
//!
//! Pure part: [`DeviceSpec::parse`] (what the kernel's `root=` and the usual
//! initramfs conventions accept), [`find`], [`assess`] (found, absent, or a
//! multi-device btrfs still missing members) and [`describe`]. Thin part:
//! [`scan`] lists `/sys/class/block` and probes each device with
//! [`crate::probe`]; a [`Waiter`] scans once, then rescans only when kernel
//! uevents say block devices changed, registers btrfs members with the
//! kernel, and gives up at the deadline with a table of what it saw.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::btrfs;
use crate::error::{Context, Error, Result};
use crate::probe::{self, FsInfo, Partition, PartitionTable};
use crate::uevent::{Listener, Received, Uevent};

/// How a boot parameter names a block device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceSpec {
    /// `/dev/NAME` (also `/dev/cciss/c0d0`-style names with a slash).
    Path(String),
    /// `LABEL=` (or `/dev/disk/by-label/`): the filesystem label, exact match.
    Label(String),
    /// `UUID=` (or `/dev/disk/by-uuid/`): the filesystem UUID, case-insensitive.
    Uuid(String),
    /// `PARTUUID=` (or `/dev/disk/by-partuuid/`): GPT partition GUID or MBR
    /// "ssssssss-pp", case-insensitive like the kernel.
    PartUuid(String),
    /// `PARTLABEL=` (or `/dev/disk/by-partlabel/`): the GPT partition name, exact.
    PartLabel(String),
    /// `MAJ:MIN` in decimal, or a hexadecimal device number like the kernel's `0801`.
    MajMin(u32, u32),
}

const SPEC_FORMS: &str = "expected /dev/NAME, LABEL=, UUID=, PARTUUID=, PARTLABEL=, MAJ:MIN or /dev/disk/by-{label,uuid,partuuid,partlabel}/";

impl DeviceSpec {
    /// Parse a device name as given to `root=`.
    pub fn parse(s: &str) -> Result<DeviceSpec> {
        let nonempty = |kind: &str, v: &str| -> Result<String> {
            if v.is_empty() {
                Err(Error::msg(format!("empty {kind} in device name {s:?}")))
            } else {
                Ok(v.to_string())
            }
        };
        if let Some(v) = s.strip_prefix("LABEL=") {
            return Ok(DeviceSpec::Label(nonempty("LABEL=", v)?));
        }
        if let Some(v) = s.strip_prefix("UUID=") {
            return Ok(DeviceSpec::Uuid(nonempty("UUID=", v)?));
        }
        if let Some(v) = s.strip_prefix("PARTUUID=") {
            if let Some((_, off)) = v.split_once('/') {
                return Err(Error::msg(format!(
                    "device name {s:?}: \"{off}\" (PARTNROFF=, a partition relative to another) is not supported; \
                     name the partition itself with PARTUUID= or PARTLABEL="
                )));
            }
            return Ok(DeviceSpec::PartUuid(nonempty("PARTUUID=", v)?));
        }
        if let Some(v) = s.strip_prefix("PARTLABEL=") {
            return Ok(DeviceSpec::PartLabel(nonempty("PARTLABEL=", v)?));
        }
        if let Some(rest) = s.strip_prefix("/dev/disk/") {
            let (kind, escaped) = rest.split_once('/').unwrap_or((rest, ""));
            let v = udev_unescape(escaped).context(|| format!("device name {s:?}"))?;
            let v = nonempty("name", &v)?;
            return match kind {
                "by-label" => Ok(DeviceSpec::Label(v)),
                "by-uuid" => Ok(DeviceSpec::Uuid(v)),
                "by-partuuid" => Ok(DeviceSpec::PartUuid(v)),
                "by-partlabel" => Ok(DeviceSpec::PartLabel(v)),
                _ => Err(Error::msg(format!(
                    "device name {s:?}: /dev/disk/{kind}/ links come from udev, which this initramfs does not run; \
                     use LABEL=, UUID=, PARTUUID= or PARTLABEL="
                ))),
            };
        }
        if let Some(name) = s.strip_prefix("/dev/") {
            let bad = name.is_empty()
                || name.ends_with('/')
                || name.split('/').any(|c| c.is_empty() || c == "." || c == "..");
            if bad {
                return Err(Error::msg(format!("device name {s:?}: not a device path; {SPEC_FORMS}")));
            }
            return Ok(DeviceSpec::Path(s.to_string()));
        }
        if let Some((maj, min)) = s.split_once(':') {
            let num = |x: &str| {
                (!x.is_empty() && x.bytes().all(|b| b.is_ascii_digit())).then(|| x.parse::<u32>().ok()).flatten()
            };
            return match (num(maj), num(min)) {
                (Some(a), Some(b)) => Ok(DeviceSpec::MajMin(a, b)),
                _ => Err(Error::msg(format!("device name {s:?}: bad MAJ:MIN; {SPEC_FORMS}"))),
            };
        }
        if !s.is_empty() && s.len() <= 8 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            // The kernel's hexadecimal dev_t (new_decode_dev): 0801 is 8:1.
            let dev = u32::from_str_radix(s, 16).map_err(|e| Error::with(format!("device name {s:?}"), e))?;
            return Ok(DeviceSpec::MajMin((dev & 0xfff00) >> 8, (dev & 0xff) | ((dev >> 12) & 0xfff00)));
        }
        Err(Error::msg(format!("unrecognised device name {s:?}: {SPEC_FORMS}")))
    }
}

impl std::str::FromStr for DeviceSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<DeviceSpec> {
        DeviceSpec::parse(s)
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Path(p) => write!(f, "{p}"),
            DeviceSpec::Label(v) => write!(f, "LABEL={v}"),
            DeviceSpec::Uuid(v) => write!(f, "UUID={v}"),
            DeviceSpec::PartUuid(v) => write!(f, "PARTUUID={v}"),
            DeviceSpec::PartLabel(v) => write!(f, "PARTLABEL={v}"),
            DeviceSpec::MajMin(a, b) => write!(f, "{a}:{b}"),
        }
    }
}

/// Undo udev's escaping of /dev/disk/by-* link names (`\x2f` for '/', `\x20`
/// for ' ', ...). The result must be UTF-8.
fn udev_unescape(s: &str) -> Result<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut rest = s.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'\\' {
            if let Some([b'x', h, l, after @ ..]) = Some(tail) {
                let hex = [*h, *l];
                // Two hex digits exactly (from_str_radix alone would take "+f").
                let digits = h.is_ascii_hexdigit() && l.is_ascii_hexdigit();
                if let Some(v) =
                    std::str::from_utf8(&hex).ok().filter(|_| digits).and_then(|x| u8::from_str_radix(x, 16).ok())
                {
                    out.push(v);
                    rest = after;
                    continue;
                }
            }
        }
        out.push(b);
        rest = tail;
    }
    String::from_utf8(out).map_err(|e| Error::with(format!("{s:?} does not decode to UTF-8"), e))
}

/// One block device as seen in sysfs, with what its contents say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockDevice {
    /// Kernel name ("sda1"; '!' stands for '/' as in sysfs).
    pub name: String,
    /// Its device node (`<dev_dir>/<name>`).
    pub devnode: PathBuf,
    pub major: u32,
    pub minor: u32,
    pub size_bytes: u64,
    /// The filesystem found on it. Not probed on a whole disk that has
    /// partitions: a stale whole-disk superblock may survive partitioning.
    pub fs: Option<FsInfo>,
    /// Its entry in the parent disk's partition table, for partitions.
    pub partition: Option<Partition>,
    /// What went wrong reading sysfs, opening or probing it, if anything.
    pub probe_error: Option<String>,
}

/// Read a small sysfs attribute (capped at 4 KiB), trimmed.
fn read_attr(path: &Path) -> Result<String> {
    let f = File::open(path).context(|| format!("opening {}", path.display()))?;
    let mut s = String::new();
    f.take(4096).read_to_string(&mut s).context(|| format!("reading {}", path.display()))?;
    Ok(s.trim().to_string())
}

fn read_num<T: std::str::FromStr>(path: &Path) -> Result<T>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    let s = read_attr(path)?;
    s.parse().map_err(|e| Error::with(format!("{}: bad number {s:?}", path.display()), e))
}

fn read_majmin(sysdir: &Path) -> Result<(u32, u32)> {
    let path = sysdir.join("dev");
    let s = read_attr(&path)?;
    let (a, b) = s.split_once(':').context(|| format!("{}: expected MAJ:MIN, found {s:?}", path.display()))?;
    let parse =
        |x: &str| x.parse::<u32>().map_err(|e| Error::with(format!("{}: bad MAJ:MIN {s:?}", path.display()), e));
    Ok((parse(a)?, parse(b)?))
}

/// What sysfs says about one entry of /sys/class/block.
struct SysEntry {
    name: String,
    major: u32,
    minor: u32,
    size_bytes: u64,
    /// For a partition: its number, its parent disk's name and sysfs dir, and
    /// its start in 512-byte sectors.
    part: Option<(u32, String, PathBuf, Option<u64>)>,
}

fn read_sys_entry(class_dir: &Path, name: &str) -> Result<SysEntry> {
    let link = class_dir.join(name);
    let sysdir = std::fs::canonicalize(&link).context(|| format!("resolving {}", link.display()))?;
    let (major, minor) = read_majmin(&sysdir)?;
    let sectors: u64 = read_num(&sysdir.join("size"))?;
    let size_bytes = sectors.checked_mul(512).context(|| format!("{}: size {sectors} overflows", sysdir.display()))?;
    let part = if sysdir.join("partition").exists() {
        let number: u32 = read_num(&sysdir.join("partition"))?;
        let parent = sysdir.parent().context(|| format!("{}: partition without a parent disk", sysdir.display()))?;
        let parent_name = parent
            .file_name()
            .and_then(|n| n.to_str())
            .context(|| format!("{}: parent disk has no usable name", sysdir.display()))?;
        let start = read_num::<u64>(&sysdir.join("start")).ok();
        Some((number, parent_name.to_string(), parent.to_path_buf(), start))
    } else {
        None
    };
    Ok(SysEntry { name: name.to_string(), major, minor, size_bytes, part })
}

/// Devices never worth probing: RAM disks and compressed swap.
fn ignored_name(name: &str) -> bool {
    name.starts_with("ram") || name.starts_with("zram")
}

/// List the block devices in `sys_class_block` (normally /sys/class/block) and
/// probe each through its node in `dev_dir` (normally /dev): filesystem, and
/// for partitions the matching entry of the parent disk's partition table
/// (read once per disk). Empty devices (size 0: unbound loop devices, empty
/// drives), ram and zram are skipped. One device failing never fails the scan:
/// the error is kept in its `probe_error`. Sorted by MAJ:MIN.
pub fn scan(sys_class_block: &Path, dev_dir: &Path) -> Vec<BlockDevice> {
    let names: Vec<String> = match std::fs::read_dir(sys_class_block) {
        Ok(rd) => rd.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect(),
        Err(e) => {
            log::warn!("cannot list {}: {e}", sys_class_block.display());
            return Vec::new();
        }
    };
    let mut entries = Vec::new();
    let mut devs = Vec::new();
    for name in names.into_iter().filter(|n| !ignored_name(n)) {
        match read_sys_entry(sys_class_block, &name) {
            Ok(e) if e.size_bytes == 0 => {}
            Ok(e) => entries.push(e),
            Err(e) => devs.push(BlockDevice {
                devnode: devnode_path(dev_dir, &name),
                name,
                major: 0,
                minor: 0,
                size_bytes: 0,
                fs: None,
                partition: None,
                probe_error: Some(e.to_string()),
            }),
        }
    }
    let partitioned: std::collections::HashSet<&str> =
        entries.iter().filter_map(|e| e.part.as_ref().map(|p| p.1.as_str())).collect();
    let mut tables: HashMap<String, std::result::Result<Option<(PartitionTable, u64)>, String>> = HashMap::new();
    for e in &entries {
        let devnode = devnode_path(dev_dir, &e.name);
        let mut dev = BlockDevice {
            name: e.name.clone(),
            devnode: devnode.clone(),
            major: e.major,
            minor: e.minor,
            size_bytes: e.size_bytes,
            fs: None,
            partition: None,
            probe_error: None,
        };
        let mut errors = Vec::new();
        if let Some((number, parent, parent_dir, start)) = &e.part {
            let table = tables.entry(parent.clone()).or_insert_with(|| read_disk_table(dev_dir, parent, parent_dir));
            match table {
                Ok(Some((t, ss))) => match attach_partition(t, *ss, *number, *start) {
                    Ok(p) => dev.partition = Some(p),
                    Err(why) => errors.push(format!("partition {number} of {parent}: {why}")),
                },
                Ok(None) => errors.push(format!("no partition table found on {parent}")),
                Err(why) => errors.push(why.clone()),
            }
        }
        if !partitioned.contains(e.name.as_str()) {
            match open_device(&devnode, e.major, e.minor) {
                Ok(file) => match probe::probe_filesystem(&file) {
                    Ok(fs) => dev.fs = fs,
                    Err(err) => errors.push(format!("{}: {err}", devnode.display())),
                },
                Err(err) => errors.push(err.to_string()),
            }
        }
        if !errors.is_empty() {
            dev.probe_error = Some(errors.join("; "));
        }
        devs.push(dev);
    }
    devs.sort_by(|a, b| (a.major, a.minor, &a.name).cmp(&(b.major, b.minor, &b.name)));
    devs
}

fn devnode_path(dev_dir: &Path, name: &str) -> PathBuf {
    dev_dir.join(name.replace('!', "/"))
}

/// Read a disk's partition table with its logical sector size.
fn read_disk_table(
    dev_dir: &Path,
    disk: &str,
    disk_dir: &Path,
) -> std::result::Result<Option<(PartitionTable, u64)>, String> {
    let ss = read_num::<u64>(&disk_dir.join("queue/logical_block_size")).unwrap_or(512);
    let (major, minor) = read_majmin(disk_dir).map_err(|e| e.to_string())?;
    let devnode = devnode_path(dev_dir, disk);
    let file = open_device(&devnode, major, minor).map_err(|e| e.to_string())?;
    match probe::read_partition_table(&file, ss) {
        Ok(t) => Ok(t.map(|t| (t, ss))),
        Err(e) => Err(format!("partition table of {}: {e}", devnode.display())),
    }
}

/// The table entry for partition `number`, checked against the kernel's start
/// sector (512-byte units) so a table we read differently is never attached.
fn attach_partition(
    t: &PartitionTable,
    ss: u64,
    number: u32,
    kernel_start: Option<u64>,
) -> std::result::Result<Partition, String> {
    let p = t
        .partitions
        .iter()
        .find(|p| p.number == number)
        .ok_or_else(|| "not in the disk's partition table".to_string())?;
    if let Some(kstart) = kernel_start {
        let ours = p.start_lba.checked_mul(ss / 512);
        if ours != Some(kstart) {
            return Err(format!(
                "the table says it starts at sector {} ({ss}-byte sectors), the kernel says 512-byte sector {kstart}",
                p.start_lba
            ));
        }
    }
    Ok(p.clone())
}

/// Open a device node read-only (std opens with O_CLOEXEC), creating it first
/// if missing. A node that is a block device must carry the expected MAJ:MIN.
fn open_device(devnode: &Path, major: u32, minor: u32) -> Result<File> {
    ensure_devnode(devnode, major, minor)?;
    let file = File::open(devnode).context(|| format!("opening {}", devnode.display()))?;
    let st = rustix::fs::fstat(&file).context(|| format!("stat {}", devnode.display()))?;
    let is_block = rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::BlockDevice;
    if is_block {
        let rdev = st.st_rdev;
        let (a, b) = (rustix::fs::major(rdev), rustix::fs::minor(rdev));
        if (a, b) != (major, minor) {
            return Err(Error::msg(format!("{} is device {a}:{b}, but sysfs says {major}:{minor}", devnode.display())));
        }
    }
    Ok(file)
}

/// Create the block device node `path` (mode 0600) if it does not exist.
/// devtmpfs normally creates it; this covers a /dev without devtmpfs.
fn ensure_devnode(path: &Path, major: u32, minor: u32) -> Result<()> {
    if std::fs::symlink_metadata(path).is_ok() {
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).context(|| format!("creating {}", parent.display()))?;
    }
    let mode = rustix::fs::Mode::from_raw_mode(0o600);
    let dev = rustix::fs::makedev(major, minor);
    match rustix::fs::mknodat(rustix::fs::CWD, path, rustix::fs::FileType::BlockDevice, mode, dev) {
        Ok(()) | Err(rustix::io::Errno::EXIST) => Ok(()),
        Err(e) => Err(Error::with(format!("creating block device node {} ({major}:{minor})", path.display()), e)),
    }
}

/// The device `spec` names among `devs`.
///
/// - `LABEL=`/`PARTLABEL=` on two different filesystems/partitions is an error
///   naming them all (booting either could be wrong). The members of one
///   multi-device btrfs share their label and UUID: that is one filesystem.
/// - `UUID=` returns the first match: the members of a multi-device btrfs all
///   carry the filesystem's UUID, and any member will do to mount it.
/// - `UUID=` and `PARTUUID=` compare case-insensitively; labels exactly.
pub fn find<'a>(spec: &DeviceSpec, devs: &'a [BlockDevice]) -> Result<Option<&'a BlockDevice>> {
    let fs = |d: &'a BlockDevice| d.fs.as_ref();
    let part = |d: &'a BlockDevice| d.partition.as_ref();
    match spec {
        DeviceSpec::Path(p) => Ok(devs
            .iter()
            .find(|d| d.devnode == Path::new(p) || p.strip_prefix("/dev/") == Some(d.name.replace('!', "/").as_str()))),
        DeviceSpec::MajMin(a, b) => Ok(devs.iter().find(|d| (d.major, d.minor) == (*a, *b))),
        DeviceSpec::Uuid(u) => {
            Ok(devs.iter().find(|d| fs(d).and_then(|f| f.uuid.as_deref()).is_some_and(|x| x.eq_ignore_ascii_case(u))))
        }
        DeviceSpec::PartUuid(u) => {
            Ok(devs.iter().find(|d| part(d).is_some_and(|p| p.partuuid.eq_ignore_ascii_case(u))))
        }
        DeviceSpec::Label(l) => {
            let hits: Vec<&BlockDevice> =
                devs.iter().filter(|d| fs(d).and_then(|f| f.label.as_deref()) == Some(l.as_str())).collect();
            let one_fs = members_of_one_btrfs(&hits);
            unique(spec, hits, one_fs)
        }
        DeviceSpec::PartLabel(l) => {
            let hits: Vec<&BlockDevice> =
                devs.iter().filter(|d| part(d).and_then(|p| p.partlabel.as_deref()) == Some(l.as_str())).collect();
            unique(spec, hits, false)
        }
    }
}

/// Whether `devs` are distinct members of one multi-device btrfs: same UUID,
/// each a different devid. Two devices with the same UUID and devid are copies
/// (a `dd` of the disk on a USB stick, say), not members.
fn members_of_one_btrfs(devs: &[&BlockDevice]) -> bool {
    let mut ids = Vec::with_capacity(devs.len());
    let mut uuid = None;
    for d in devs {
        let Some((u, b)) = d.fs.as_ref().and_then(|f| Some((f.uuid.as_deref()?, f.btrfs.as_ref()?))) else {
            return false;
        };
        if *uuid.get_or_insert(u) != u {
            return false;
        }
        ids.push(b.devid);
    }
    ids.sort_unstable();
    ids.dedup();
    ids.len() == devs.len()
}

/// Other devices `spec` (a `UUID=` or `PARTUUID=`) matches besides `found`,
/// leaving out the other members of `found`'s multi-device btrfs: copies of
/// the same filesystem or partition, worth a warning since any could be used.
pub fn duplicates<'a>(spec: &DeviceSpec, devs: &'a [BlockDevice], found: &BlockDevice) -> Vec<&'a BlockDevice> {
    let same = |d: &BlockDevice| match spec {
        DeviceSpec::Uuid(u) => d.fs.as_ref().and_then(|f| f.uuid.as_deref()).is_some_and(|x| x.eq_ignore_ascii_case(u)),
        DeviceSpec::PartUuid(u) => d.partition.as_ref().is_some_and(|p| p.partuuid.eq_ignore_ascii_case(u)),
        _ => false,
    };
    devs.iter()
        .filter(|d| (d.major, d.minor) != (found.major, found.minor) && same(d))
        .filter(|d| !members_of_one_btrfs(&[found, d]))
        .collect()
}

fn unique<'a>(spec: &DeviceSpec, hits: Vec<&'a BlockDevice>, same_fs: bool) -> Result<Option<&'a BlockDevice>> {
    if hits.len() > 1 && !same_fs {
        let names: Vec<String> = hits
            .iter()
            .map(|d| {
                let uuid = d.fs.as_ref().and_then(|f| f.uuid.as_deref()).map(|u| format!(" UUID={u}"));
                let puuid = d.partition.as_ref().map(|p| format!(" PARTUUID={}", p.partuuid));
                format!("{} ({}{})", d.devnode.display(), uuid.unwrap_or_default(), puuid.unwrap_or_default())
            })
            .collect();
        return Err(Error::msg(format!(
            "{spec} is ambiguous: it matches {}; name the device by UUID= or PARTUUID= instead",
            names.join(" and ")
        )));
    }
    Ok(hits.into_iter().next())
}

/// How long to wait for a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitPolicy {
    /// Give up after this long (counted after `delay`).
    pub timeout: Duration,
    /// `rootdelay=`: sleep this long before the first look.
    pub delay: Duration,
}

/// How often to say that we are still waiting.
const REPORT_EVERY: Duration = Duration::from_secs(5);
/// With `degraded`, how long to keep waiting for missing members of a
/// multi-device btrfs once one member is there (never beyond the timeout):
/// disks of one machine appear within a second or two of each other, so 10 s
/// covers a slow controller without delaying a degraded boot much.
pub const DEGRADED_WAIT: Duration = Duration::from_secs(10);
/// Without a uevent socket (a kernel without CONFIG_NET): rescan this often.
const FALLBACK_RESCAN: Duration = Duration::from_secs(1);

/// What the boot does while devices are awaited.
pub trait WaitHooks {
    /// Called for every kernel uevent received while waiting, before the
    /// block device table is updated (the boot loads drivers for MODALIAS).
    fn on_uevent(&mut self, ev: &Uevent);
    /// The uevent queue overflowed: events were lost (rescan what you track).
    fn on_overflow(&mut self) {}
    /// Lines appended to the timeout message (modules loaded, modaliases no
    /// module matched, ...).
    fn diagnostics(&self) -> Vec<String>;
}

/// Hooks that do nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoHooks;

impl WaitHooks for NoHooks {
    fn on_uevent(&mut self, _: &Uevent) {}
    fn diagnostics(&self) -> Vec<String> {
        Vec::new()
    }
}

/// The members of one multi-device btrfs found among the block devices,
/// from their superblocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BtrfsMembers {
    pub uuid: String,
    pub label: Option<String>,
    /// Devices the filesystem has (its superblock's num_devices).
    pub num_devices: u64,
    /// (devid, device node) of each member found, by devid.
    pub found: Vec<(u64, PathBuf)>,
}

impl BtrfsMembers {
    /// The members of the btrfs with filesystem UUID `uuid` in `devs`.
    pub fn collect(devs: &[BlockDevice], uuid: &str) -> BtrfsMembers {
        let mut m = BtrfsMembers { uuid: uuid.to_string(), label: None, num_devices: 0, found: Vec::new() };
        for d in devs {
            let Some(fs) = d.fs.as_ref().filter(|f| f.uuid.as_deref() == Some(uuid)) else {
                continue;
            };
            let Some(b) = fs.btrfs.as_ref() else {
                continue;
            };
            m.label = m.label.or_else(|| fs.label.clone());
            m.num_devices = m.num_devices.max(b.num_devices);
            m.found.push((b.devid, d.devnode.clone()));
        }
        m.found.sort();
        m
    }

    /// Distinct devids found.
    fn distinct(&self) -> usize {
        let mut ids: Vec<u64> = self.found.iter().map(|(id, _)| *id).collect();
        ids.dedup();
        ids.len()
    }

    /// Whether the superblocks found cover all num_devices devices.
    pub fn complete(&self) -> bool {
        u64::try_from(self.distinct()).is_ok_and(|n| n >= self.num_devices)
    }

    /// Devids in 1..=num_devices not found. Devids are 1..N unless devices
    /// were removed or added later, so this is the likely list, not a certain one.
    pub fn missing_devids(&self) -> Vec<u64> {
        (1..=self.num_devices.min(4096)).filter(|id| !self.found.iter().any(|(f, _)| f == id)).collect()
    }

    /// "btrfs LABEL=x UUID=y has 2 devices; found devid 1 (/dev/vdb); missing 1 (devid 2?)".
    pub fn summary(&self) -> String {
        let found: Vec<String> = self.found.iter().map(|(id, p)| format!("devid {id} ({})", p.display())).collect();
        let missing = u64::try_from(self.distinct()).map_or(0, |n| self.num_devices.saturating_sub(n));
        let ids: Vec<String> = self.missing_devids().iter().map(|i| i.to_string()).collect();
        let likely = if ids.is_empty() { String::new() } else { format!(", likely devid {}", ids.join(", ")) };
        format!(
            "btrfs filesystem {}UUID={} has {} devices; found {}: {}; missing {missing}{likely}",
            self.label.as_deref().map(|l| format!("LABEL={} ", cell(Some(l)))).unwrap_or_default(),
            self.uuid,
            self.num_devices,
            self.found.len(),
            if found.is_empty() { "none".to_string() } else { found.join(", ") },
        )
    }
}

/// Where a wait stands, given the devices seen (the pure decision).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Assessment {
    /// The device is there (and complete, if it is part of a multi-device btrfs).
    Ready(BlockDevice),
    /// No device matches yet.
    Absent,
    /// A member of a multi-device btrfs matches, but members are missing.
    Incomplete(BlockDevice, BtrfsMembers),
}

/// Decide whether the device `spec` names is ready among `devs`.
/// `kernel_ready` is asked only for a member of a multi-device btrfs: the
/// kernel's view (BTRFS_IOC_DEVICES_READY) when it has one (`Some`), else the
/// superblocks found decide. An ambiguous `LABEL=`/`PARTLABEL=` is an error.
pub fn assess(
    spec: &DeviceSpec,
    devs: &[BlockDevice],
    kernel_ready: impl FnOnce(&BlockDevice) -> Option<bool>,
) -> Result<Assessment> {
    let Some(dev) = find(spec, devs)? else {
        return Ok(Assessment::Absent);
    };
    let multi = dev.fs.as_ref().and_then(|f| Some((f.uuid.as_deref()?, f.btrfs.as_ref()?.num_devices)));
    let Some((uuid, _)) = multi.filter(|(_, n)| *n > 1) else {
        return Ok(Assessment::Ready(dev.clone()));
    };
    let members = BtrfsMembers::collect(devs, uuid);
    let complete = kernel_ready(dev).unwrap_or_else(|| members.complete());
    Ok(if complete { Assessment::Ready(dev.clone()) } else { Assessment::Incomplete(dev.clone(), members) })
}

/// What a wait cost, for the log (and to show it is event-driven).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WaitStats {
    /// Full scans of /sys/class/block.
    pub scans: u32,
    /// Uevents received.
    pub uevents: u32,
    /// Of those, block device events (each batch of them causes one rescan).
    pub block_uevents: u32,
}

/// Waits for block devices, woken by kernel uevents (no polling).
///
/// Create it early: the uevent socket queues every event from then on, so
/// nothing that appears between its creation and a wait is missed, and the
/// hooks see those events during the next wait. Each wait scans once, then
/// sleeps until uevents arrive; a batch containing a block device event (or a
/// queue overflow) causes one rescan of all block devices — a rescan reads a
/// few sysfs attributes and superblocks per device (from the page cache after
/// the first time), which is cheaper and simpler than keeping an index by
/// devpath consistent with partition table changes. Every btrfs member device
/// found is registered with the kernel (BTRFS_IOC_SCAN_DEV) once.
pub struct Waiter {
    listener: Option<Listener>,
    sys: PathBuf,
    dev: PathBuf,
    /// Whether to register btrfs devices with the kernel (off for fake sysfs trees).
    btrfs_ioctls: bool,
    fallback_rescan: Duration,
    /// Devices registered with btrfs: MAJ:MIN -> (fs UUID, devid).
    registered: HashMap<(u32, u32), (String, u64)>,
    /// btrfs ioctl failures per device, shown in the table.
    btrfs_errors: HashMap<(u32, u32), String>,
    stats: WaitStats,
}

impl Waiter {
    /// A waiter on /sys/class/block and /dev. If the uevent socket cannot be
    /// opened (a kernel without networking), it warns and rescans every
    /// second instead.
    pub fn new() -> Waiter {
        let listener = match Listener::open() {
            Ok(l) => Some(l),
            Err(e) => {
                log::warn!("{e}; without uevents, block devices are rescanned every {}", fmt_duration(FALLBACK_RESCAN));
                None
            }
        };
        Waiter::with(listener, Path::new("/sys/class/block"), Path::new("/dev"), true)
    }

    fn with(listener: Option<Listener>, sys: &Path, dev: &Path, btrfs_ioctls: bool) -> Waiter {
        Waiter {
            listener,
            sys: sys.to_path_buf(),
            dev: dev.to_path_buf(),
            btrfs_ioctls,
            fallback_rescan: FALLBACK_RESCAN,
            registered: HashMap::new(),
            btrfs_errors: HashMap::new(),
            stats: WaitStats::default(),
        }
    }

    /// Counters over this waiter's life.
    pub fn stats(&self) -> WaitStats {
        self.stats
    }

    /// Wait until the device `spec` names is there, `policy.timeout` at most
    /// (after `policy.delay`, during which events already reach the hooks).
    ///
    /// If it is a member of a multi-device btrfs, also wait until the kernel
    /// has all its members. With `degraded` (the `degraded` mount option is
    /// set), wait for missing members [`DEGRADED_WAIT`] at most, then return
    /// the device with a loud warning: the caller mounts it degraded.
    ///
    /// On timeout the error says what was awaited, for how long, the missing
    /// btrfs members if that is what is missing, the table of block devices
    /// seen ([`describe`]) and the hooks' diagnostics. An ambiguous
    /// `LABEL=`/`PARTLABEL=` fails at once.
    pub fn wait_for(
        &mut self,
        spec: &DeviceSpec,
        policy: &WaitPolicy,
        degraded: bool,
        hooks: &mut dyn WaitHooks,
    ) -> Result<BlockDevice> {
        let begin = self.stats;
        if !policy.delay.is_zero() {
            log::info!("waiting {} (rootdelay) before looking for {spec}", fmt_duration(policy.delay));
            let until = later(Instant::now(), policy.delay);
            while Instant::now() < until {
                self.pump(until, hooks)?;
            }
        }
        let start = Instant::now();
        let deadline = later(start, policy.timeout);
        let mut next_report = later(start, REPORT_EVERY);
        let mut grace_end: Option<Instant> = None;
        let mut devs = self.rescan();
        loop {
            let step = assess(spec, &devs, |d| self.kernel_ready(d))?;
            let now = Instant::now();
            let incomplete = match &step {
                Assessment::Incomplete(_, members) => format!("; {}", members.summary()),
                _ => String::new(),
            };
            match step {
                Assessment::Ready(d) => {
                    let copies: Vec<String> =
                        duplicates(spec, &devs, &d).iter().map(|c| c.devnode.display().to_string()).collect();
                    if !copies.is_empty() {
                        log::warn!(
                            "{spec} also matches {} (a copy?); using {}, the first by device number",
                            copies.join(", "),
                            d.devnode.display()
                        );
                    }
                    let s = self.stats;
                    log::info!(
                        "found {spec}: {} ({}) after {} ms, {} scans, {} uevents",
                        d.devnode.display(),
                        d.fs.as_ref().map_or("no known filesystem", |f| f.fstype.name()),
                        start.elapsed().as_millis(),
                        s.scans.saturating_sub(begin.scans),
                        s.uevents.saturating_sub(begin.uevents)
                    );
                    return Ok(d);
                }
                Assessment::Incomplete(d, members) if degraded => {
                    let end = *grace_end.get_or_insert_with(|| later(now, DEGRADED_WAIT).min(deadline));
                    if now >= end {
                        log::warn!(
                            "MOUNTING DEGRADED: {}; mounting {} with 'degraded' as asked, without redundancy \
                             for what the missing devices held: bring them back or replace them (btrfs replace) soon",
                            members.summary(),
                            d.devnode.display()
                        );
                        return Ok(d);
                    }
                }
                Assessment::Incomplete(_, members) if now >= deadline => {
                    return Err(self.timeout_error(
                        format!(
                            "{spec}: {}; waited {}; the mount option 'degraded' (rootflags=degraded for root) \
                             mounts it without them",
                            members.summary(),
                            fmt_duration(policy.timeout)
                        ),
                        &devs,
                        hooks,
                    ));
                }
                Assessment::Absent if now >= deadline => {
                    return Err(self.timeout_error(
                        format!("no block device matching {spec} appeared within {}", fmt_duration(policy.timeout)),
                        &devs,
                        hooks,
                    ));
                }
                Assessment::Incomplete(..) | Assessment::Absent => {}
            }
            if now >= next_report {
                log::info!(
                    "still waiting for {spec} ({} of {}; {} block devices seen{incomplete})",
                    fmt_duration(now.saturating_duration_since(start)),
                    fmt_duration(policy.timeout),
                    devs.len()
                );
                next_report = later(next_report, REPORT_EVERY);
            }
            let wake = [Some(deadline), Some(next_report), grace_end].into_iter().flatten().min().unwrap_or(deadline);
            if self.pump(wake, hooks)? {
                devs = self.rescan();
            }
        }
    }

    fn timeout_error(&self, what: String, devs: &[BlockDevice], hooks: &dyn WaitHooks) -> Error {
        let mut msg = format!("{what}; block devices seen:\n{}", describe(devs));
        for line in hooks.diagnostics() {
            msg.push_str(&line);
            msg.push('\n');
        }
        Error::msg(msg.trim_end().to_string())
    }

    /// Wait for uevents until `wake` at most, give each to the hooks, and
    /// drain what else is queued. True if block devices may have changed.
    fn pump(&mut self, wake: Instant, hooks: &mut dyn WaitHooks) -> Result<bool> {
        let Some(listener) = &self.listener else {
            let now = Instant::now();
            std::thread::sleep(wake.saturating_duration_since(now).min(self.fallback_rescan));
            return Ok(true);
        };
        let mut dirty = false;
        let mut until = wake;
        while let Some(got) = listener.recv(until)? {
            match got {
                Received::Event(ev) => {
                    self.stats.uevents = self.stats.uevents.saturating_add(1);
                    if ev.is_block() {
                        self.stats.block_uevents = self.stats.block_uevents.saturating_add(1);
                        log::debug!(
                            "uevent: {} {} ({})",
                            ev.action.name(),
                            ev.devname.as_deref().unwrap_or("?"),
                            ev.devpath
                        );
                        dirty = true;
                    }
                    hooks.on_uevent(&ev);
                }
                Received::Overflow => {
                    log::warn!("the uevent queue overflowed; rescanning all block devices");
                    hooks.on_overflow();
                    dirty = true;
                }
            }
            // Something arrived: take what else is queued now, then act.
            until = Instant::now();
        }
        Ok(dirty)
    }

    /// Scan all block devices and register new btrfs members with the kernel.
    fn rescan(&mut self) -> Vec<BlockDevice> {
        self.stats.scans = self.stats.scans.saturating_add(1);
        let mut devs = scan(&self.sys, &self.dev);
        if self.btrfs_ioctls {
            for d in &devs {
                let Some((uuid, b)) = d.fs.as_ref().and_then(|f| Some((f.uuid.clone()?, f.btrfs.as_ref()?))) else {
                    continue;
                };
                let key = (d.major, d.minor);
                let id = (uuid, b.devid);
                if self.registered.get(&key) == Some(&id) {
                    continue;
                }
                match btrfs::scan_device(&d.devnode) {
                    Ok(()) => {
                        log::debug!("registered btrfs device {} (UUID={} devid {})", d.devnode.display(), id.0, id.1);
                        self.registered.insert(key, id);
                        self.btrfs_errors.remove(&key);
                    }
                    Err(e) => {
                        self.btrfs_errors.insert(key, e.to_string());
                    }
                }
            }
        }
        for d in &mut devs {
            if let Some(e) = self.btrfs_errors.get(&(d.major, d.minor)) {
                d.probe_error = Some(match d.probe_error.take() {
                    Some(p) => format!("{p}; {e}"),
                    None => e.clone(),
                });
            }
        }
        devs
    }

    /// The kernel's view of whether `d`'s multi-device btrfs is complete; None
    /// if it cannot be asked (the error is kept for the table).
    fn kernel_ready(&mut self, d: &BlockDevice) -> Option<bool> {
        if !self.btrfs_ioctls {
            return None;
        }
        match btrfs::devices_ready(&d.devnode) {
            Ok(ready) => Some(ready),
            Err(e) => {
                log::warn!("{e}; judging from the superblocks found instead");
                self.btrfs_errors.insert((d.major, d.minor), e.to_string());
                None
            }
        }
    }
}

/// `t + d`, or a year after `t` if that cannot be represented.
fn later(t: Instant, d: Duration) -> Instant {
    t.checked_add(d).or_else(|| t.checked_add(Duration::from_secs(365 * 86400))).unwrap_or(t)
}

impl Default for Waiter {
    fn default() -> Self {
        Waiter::new()
    }
}

/// Wait for one device with no hooks and without `degraded`: a [`Waiter`]
/// used once (see [`Waiter::wait_for`]).
pub fn wait_for(spec: &DeviceSpec, policy: &WaitPolicy) -> Result<BlockDevice> {
    Waiter::new().wait_for(spec, policy, false, &mut NoHooks)
}

fn fmt_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// A size as lsblk shows it: 512, 1K, 1.5M, 20G.
fn fmt_size(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "K", "M", "G", "T", "P", "E"];
    let mut unit = 0;
    let mut v = bytes as f64;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    let u = UNITS.get(unit).copied().unwrap_or("?");
    if unit == 0 {
        format!("{bytes}")
    } else if v < 10.0 && v.fract() != 0.0 {
        format!("{v:.1}{u}")
    } else {
        format!("{v:.0}{u}")
    }
}

/// A value for the table: "-" if absent; quoted and escaped (Rust string
/// syntax) if it has spaces, quotes or control characters, so a label read
/// from disk cannot garble the console.
fn cell(v: Option<&str>) -> String {
    match v {
        None => "-".to_string(),
        Some(s) if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control() || c == '"') => {
            format!("{s:?}")
        }
        Some(s) => s.to_string(),
    }
}

/// A table of block devices (name, MAJ:MIN, size in lsblk's units, filesystem
/// type, LABEL, UUID, btrfs devid/num_devices for multi-device btrfs members,
/// PARTUUID, PARTLABEL and probe errors), for "device not found" messages.
pub fn describe(devs: &[BlockDevice]) -> String {
    if devs.is_empty() {
        return "(no block devices found)\n".to_string();
    }
    let header = ["NAME", "MAJ:MIN", "SIZE", "FSTYPE", "LABEL", "UUID", "DEVID", "PARTUUID", "PARTLABEL", "ERROR"];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for d in devs {
        let fs = d.fs.as_ref();
        let p = d.partition.as_ref();
        rows.push(vec![
            cell(Some(&d.name)),
            format!("{}:{}", d.major, d.minor),
            fmt_size(d.size_bytes),
            cell(fs.map(|f| f.fstype.name())),
            cell(fs.and_then(|f| f.label.as_deref())),
            cell(fs.and_then(|f| f.uuid.as_deref())),
            fs.and_then(|f| f.btrfs.as_ref())
                .filter(|b| b.num_devices > 1)
                .map_or_else(|| "-".to_string(), |b| format!("{}/{}", b.devid, b.num_devices)),
            cell(p.map(|p| p.partuuid.as_str())),
            cell(p.and_then(|p| p.partlabel.as_deref())),
            d.probe_error.as_deref().map(|e| cell(Some(e)).trim_matches('"').to_string()).unwrap_or_else(|| "-".into()),
        ]);
    }
    let mut widths = vec![0usize; header.len()];
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, (c, w)) in row.iter().zip(&widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(c);
            } else {
                line.push_str(c);
                line.push_str(&" ".repeat(w.saturating_sub(c.chars().count()) + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::{BtrfsMember, FsType};

    fn parse(s: &str) -> DeviceSpec {
        DeviceSpec::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parse_all_forms() {
        assert_eq!(parse("/dev/vda2"), DeviceSpec::Path("/dev/vda2".into()));
        assert_eq!(parse("/dev/cciss/c0d0p1"), DeviceSpec::Path("/dev/cciss/c0d0p1".into()));
        assert_eq!(parse("LABEL=root fs"), DeviceSpec::Label("root fs".into()));
        assert_eq!(parse("LABEL=a=b"), DeviceSpec::Label("a=b".into()));
        assert_eq!(
            parse("UUID=0A1B2C3D-4e5f-4061-8293-a4b5c6d7e8f9"),
            DeviceSpec::Uuid("0A1B2C3D-4e5f-4061-8293-a4b5c6d7e8f9".into())
        );
        assert_eq!(parse("UUID=1234-ABCD"), DeviceSpec::Uuid("1234-ABCD".into()));
        assert_eq!(parse("PARTUUID=deadbeef-05"), DeviceSpec::PartUuid("deadbeef-05".into()));
        assert_eq!(parse("PARTLABEL=dockroot"), DeviceSpec::PartLabel("dockroot".into()));
        assert_eq!(parse("8:17"), DeviceSpec::MajMin(8, 17));
        assert_eq!(parse("259:0"), DeviceSpec::MajMin(259, 0));
        assert_eq!(parse("0801"), DeviceSpec::MajMin(8, 1));
        assert_eq!(parse("fe00"), DeviceSpec::MajMin(254, 0));
        assert_eq!(parse("10300"), DeviceSpec::MajMin(259, 0));
        assert_eq!(parse("/dev/disk/by-label/my\\x2flabel\\x20x"), DeviceSpec::Label("my/label x".into()));
        assert_eq!(parse("/dev/disk/by-label/\\xc3\\xbcber"), DeviceSpec::Label("über".into()));
        assert_eq!(parse("/dev/disk/by-uuid/1234-ABCD"), DeviceSpec::Uuid("1234-ABCD".into()));
        assert_eq!(parse("/dev/disk/by-partuuid/deadbeef-01"), DeviceSpec::PartUuid("deadbeef-01".into()));
        assert_eq!(parse("/dev/disk/by-partlabel/EFI\\x20system"), DeviceSpec::PartLabel("EFI system".into()));
        // A backslash that is not an escape stays.
        assert_eq!(parse("/dev/disk/by-label/a\\b\\x4"), DeviceSpec::Label("a\\b\\x4".into()));
        assert_eq!(parse("/dev/disk/by-label/a\\x+fb"), DeviceSpec::Label("a\\x+fb".into()), "not two hex digits");
    }

    #[test]
    fn display_round_trips() {
        for s in ["/dev/sda1", "LABEL=x y", "UUID=abc", "PARTUUID=deadbeef-01", "PARTLABEL=p", "8:1"] {
            assert_eq!(parse(s).to_string(), s);
            assert_eq!(parse(&parse(s).to_string()), parse(s));
        }
        assert_eq!(parse("/dev/disk/by-label/a\\x2fb").to_string(), "LABEL=a/b");
    }

    #[test]
    fn parse_rejects_bad_input() {
        for (s, needle) in [
            ("", "unrecognised"),
            ("sda1", "unrecognised"),
            ("LABEL=", "empty LABEL="),
            ("UUID=", "empty UUID="),
            ("PARTUUID=", "empty PARTUUID="),
            ("PARTLABEL=", "empty PARTLABEL="),
            ("PARTUUID=00112233-01/PARTNROFF=1", "PARTNROFF"),
            ("/dev/", "not a device path"),
            ("/dev/../etc/passwd", "not a device path"),
            ("/dev/sda/", "not a device path"),
            ("/dev/disk/by-id/ata-FOO", "udev"),
            ("/dev/disk/by-path/pci-0000", "udev"),
            ("/dev/disk/by-label/", "empty name"),
            ("/dev/disk/by-label/\\xff", "UTF-8"),
            ("8:", "bad MAJ:MIN"),
            (":1", "bad MAJ:MIN"),
            ("8:x", "bad MAJ:MIN"),
            ("8:-1", "bad MAJ:MIN"),
            ("99999999999:1", "bad MAJ:MIN"),
            ("123456789", "unrecognised"),
            ("label=x", "unrecognised"),
        ] {
            let e = DeviceSpec::parse(s).expect_err(s).to_string();
            assert!(e.contains(needle), "{s:?}: {e}");
        }
    }

    fn dev(name: &str, minor: u32) -> BlockDevice {
        BlockDevice {
            name: name.into(),
            devnode: PathBuf::from(format!("/dev/{name}")),
            major: 8,
            minor,
            size_bytes: 1 << 30,
            fs: None,
            partition: None,
            probe_error: None,
        }
    }

    fn with_fs(mut d: BlockDevice, t: FsType, label: Option<&str>, uuid: &str) -> BlockDevice {
        d.fs = Some(FsInfo { fstype: t, label: label.map(Into::into), uuid: Some(uuid.into()), btrfs: None });
        d
    }

    fn with_part(mut d: BlockDevice, n: u32, partuuid: &str, label: Option<&str>) -> BlockDevice {
        d.partition = Some(Partition {
            number: n,
            start_lba: 2048,
            sectors: 4096,
            partuuid: partuuid.into(),
            partlabel: label.map(Into::into),
        });
        d
    }

    fn sample() -> Vec<BlockDevice> {
        vec![
            dev("sda", 0),
            with_part(
                with_fs(dev("sda1", 1), FsType::Vfat, Some("EFI"), "ABCD-1234"),
                1,
                "0a0b0c0d-aaaa-bbbb-cccc-000000000001",
                Some("esp"),
            ),
            with_part(
                with_fs(dev("sda2", 2), FsType::Btrfs, Some("dock"), "0a1b2c3d-4e5f-4061-8293-a4b5c6d7e8f9"),
                2,
                "0a0b0c0d-aaaa-bbbb-cccc-000000000002",
                Some("root"),
            ),
            with_part(
                with_fs(dev("sdb5", 21), FsType::Ext4, Some("data"), "11111111-2222-3333-4444-555555555555"),
                5,
                "deadbeef-05",
                None,
            ),
        ]
    }

    fn found(spec: &str, devs: &[BlockDevice]) -> Option<String> {
        find(&parse(spec), devs).unwrap().map(|d| d.name.clone())
    }

    #[test]
    fn find_by_each_kind() {
        let devs = sample();
        assert_eq!(found("/dev/sda2", &devs).as_deref(), Some("sda2"));
        assert_eq!(found("8:21", &devs).as_deref(), Some("sdb5"));
        assert_eq!(found("LABEL=dock", &devs).as_deref(), Some("sda2"));
        assert_eq!(found("LABEL=Dock", &devs), None);
        assert_eq!(found("UUID=0A1B2C3D-4E5F-4061-8293-A4B5C6D7E8F9", &devs).as_deref(), Some("sda2"));
        assert_eq!(found("UUID=abcd-1234", &devs).as_deref(), Some("sda1"));
        assert_eq!(found("PARTUUID=DEADBEEF-05", &devs).as_deref(), Some("sdb5"));
        assert_eq!(found("PARTUUID=0a0b0c0d-aaaa-bbbb-cccc-000000000001", &devs).as_deref(), Some("sda1"));
        assert_eq!(found("PARTLABEL=root", &devs).as_deref(), Some("sda2"));
        assert_eq!(found("PARTLABEL=nothing", &devs), None);
        assert_eq!(found("/dev/sdc", &devs), None);
        let mut cciss = dev("cciss!c0d0p1", 3);
        cciss.devnode = PathBuf::from("/dev/cciss/c0d0p1");
        assert_eq!(found("/dev/cciss/c0d0p1", &[cciss]).as_deref(), Some("cciss!c0d0p1"));
    }

    #[test]
    fn duplicate_labels_are_an_error_naming_both() {
        let mut devs = sample();
        devs.push(with_fs(dev("sdc1", 33), FsType::Ext4, Some("dock"), "99999999-2222-3333-4444-555555555555"));
        let e = find(&parse("LABEL=dock"), &devs).unwrap_err().to_string();
        assert!(e.contains("LABEL=dock is ambiguous"), "{e}");
        assert!(e.contains("/dev/sda2") && e.contains("/dev/sdc1"), "{e}");
        devs.push(with_part(dev("sdc2", 34), 2, "x-02", Some("root")));
        let e = find(&parse("PARTLABEL=root"), &devs).unwrap_err().to_string();
        assert!(e.contains("/dev/sda2") && e.contains("/dev/sdc2"), "{e}");
        // Other lookups are unaffected.
        assert_eq!(found("UUID=99999999-2222-3333-4444-555555555555", &devs).as_deref(), Some("sdc1"));
    }

    #[test]
    fn btrfs_members_share_label_and_uuid() {
        let uuid = "0a1b2c3d-4e5f-4061-8293-a4b5c6d7e8f9";
        let member = |name: &str, minor: u32, devid: u64| {
            let mut d = with_fs(dev(name, minor), FsType::Btrfs, Some("raid"), uuid);
            if let Some(fs) = d.fs.as_mut() {
                fs.btrfs = Some(BtrfsMember { num_devices: 2, devid, dev_uuid: format!("{devid}") });
            }
            d
        };
        let devs = vec![member("vdb", 16, 1), member("vdc", 32, 2)];
        assert_eq!(found("LABEL=raid", &devs).as_deref(), Some("vdb"));
        assert_eq!(found(&format!("UUID={uuid}"), &devs).as_deref(), Some("vdb"));
        // A copy of a member (same UUID and devid, a dd to a USB stick): ambiguous by label,
        // the first by UUID, with the copy reported.
        let devs = vec![member("vdb", 16, 1), member("vdc", 32, 2), member("sda", 48, 1)];
        let e = find(&parse("LABEL=raid"), &devs).unwrap_err().to_string();
        assert!(e.contains("LABEL=raid is ambiguous") && e.contains("/dev/sda") && e.contains("/dev/vdb"), "{e}");
        let by_uuid = find(&parse(&format!("UUID={uuid}")), &devs).unwrap().unwrap();
        assert_eq!(by_uuid.name, "vdb");
        let copies: Vec<&str> =
            duplicates(&parse(&format!("UUID={uuid}")), &devs, by_uuid).iter().map(|d| d.name.as_str()).collect();
        assert_eq!(copies, ["sda"]);
        assert!(duplicates(&parse("LABEL=raid"), &devs, by_uuid).is_empty());
        let single =
            vec![with_fs(dev("sda1", 1), FsType::Ext4, None, uuid), with_fs(dev("sdb1", 17), FsType::Ext4, None, uuid)];
        let copies: Vec<&str> =
            duplicates(&parse(&format!("UUID={uuid}")), &single, &single[0]).iter().map(|d| d.name.as_str()).collect();
        assert_eq!(copies, ["sdb1"]);
        // Same label, different btrfs filesystems: ambiguous.
        let mut other = member("vdd", 48, 1);
        if let Some(fs) = other.fs.as_mut() {
            fs.uuid = Some("ffffffff-4e5f-4061-8293-a4b5c6d7e8f9".into());
        }
        let devs = vec![member("vdb", 16, 1), other];
        assert!(find(&parse("LABEL=raid"), &devs).is_err());
    }

    #[test]
    fn describe_lists_everything() {
        let mut devs = sample();
        let mut bad = dev("sdd", 48);
        bad.probe_error = Some("opening /dev/sdd: Input/output error".into());
        bad.size_bytes = 1536 * 1024;
        devs.push(bad);
        let mut spacey =
            with_fs(dev("sde", 64), FsType::Xfs, Some("my\tlabel"), "22222222-2222-3333-4444-555555555555");
        spacey.size_bytes = 512;
        devs.push(spacey);
        if let Some(fs) = devs[2].fs.as_mut() {
            fs.btrfs = Some(BtrfsMember { num_devices: 2, devid: 1, dev_uuid: "x".into() });
        }
        let t = describe(&devs);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 7, "{t}");
        let cols: Vec<&str> = lines[0].split_whitespace().collect();
        assert_eq!(
            cols,
            ["NAME", "MAJ:MIN", "SIZE", "FSTYPE", "LABEL", "UUID", "DEVID", "PARTUUID", "PARTLABEL", "ERROR"]
        );
        let sda2: Vec<&str> = lines[3].split_whitespace().collect();
        assert_eq!(
            sda2,
            [
                "sda2",
                "8:2",
                "1G",
                "btrfs",
                "dock",
                "0a1b2c3d-4e5f-4061-8293-a4b5c6d7e8f9",
                "1/2",
                "0a0b0c0d-aaaa-bbbb-cccc-000000000002",
                "root",
                "-"
            ]
        );
        let sdb5: Vec<&str> = lines[4].split_whitespace().collect();
        assert_eq!(sdb5[6..9], ["-", "deadbeef-05", "-"]);
        assert!(
            lines[5].starts_with("sdd ")
                && lines[5].contains("1.5M")
                && lines[5].ends_with("opening /dev/sdd: Input/output error"),
            "{t}"
        );
        assert!(lines[6].contains("\"my\\tlabel\"") && lines[6].contains(" 512 "), "{t}");
        // Columns line up: every row has the UUID column at the same place.
        let at = lines[0].find("UUID").unwrap();
        assert_eq!(&lines[3][at..at + 8], "0a1b2c3d");
        assert_eq!(describe(&[]), "(no block devices found)\n");
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(fmt_size(0), "0");
        assert_eq!(fmt_size(1024), "1K");
        assert_eq!(fmt_size(1536), "1.5K");
        assert_eq!(fmt_size(64 << 20), "64M");
        assert_eq!(fmt_size(u64::MAX), "16E");
        assert_eq!(fmt_duration(Duration::from_secs(30)), "30s");
        assert_eq!(fmt_duration(Duration::from_millis(1500)), "1.5s");
    }

    // --- scan on a fake sysfs tree, with image files as device nodes -------

    use crate::probe::tests::{run, Scratch};

    struct FakeSys {
        sys: PathBuf,
        dev: PathBuf,
        root: PathBuf,
    }

    impl FakeSys {
        fn new(s: &Scratch) -> FakeSys {
            let f = FakeSys { sys: s.0.join("sys/class/block"), dev: s.0.join("dev"), root: s.0.join("sys") };
            std::fs::create_dir_all(&f.sys).unwrap();
            std::fs::create_dir_all(&f.dev).unwrap();
            f
        }

        /// A sysfs device dir at `rel` (under sys/devices), linked from class/block.
        fn add(&self, rel: &str, dev: &str, sectors: u64, part: Option<(u32, u64)>) {
            let dir = self.root.join("devices").join(rel);
            std::fs::create_dir_all(dir.join("queue")).unwrap();
            std::fs::write(dir.join("dev"), format!("{dev}\n")).unwrap();
            std::fs::write(dir.join("size"), format!("{sectors}\n")).unwrap();
            if let Some((n, start)) = part {
                std::fs::write(dir.join("partition"), format!("{n}\n")).unwrap();
                std::fs::write(dir.join("start"), format!("{start}\n")).unwrap();
            } else {
                std::fs::write(dir.join("queue/logical_block_size"), "512\n").unwrap();
            }
            let name = Path::new(rel).file_name().unwrap();
            let depth = 2; // class/block -> sys
            let target = format!("{}devices/{rel}", "../".repeat(depth));
            std::os::unix::fs::symlink(target, self.sys.join(name)).unwrap();
        }

        fn node(&self, name: &str, size: u64) -> PathBuf {
            let p = self.dev.join(name);
            File::create(&p).unwrap().set_len(size).unwrap();
            p
        }
    }

    fn build_fake(s: &Scratch) -> FakeSys {
        let f = FakeSys::new(s);
        // vda: GPT disk with two partitions; vda1 holds btrfs, vda2 nothing known.
        let vda = f.node("vda", 64 << 20);
        run(
            "sgdisk",
            &[
                "-o",
                "-n",
                "1:2048:+40M",
                "-c",
                "1:dockroot",
                "-u",
                "1:AAAAAAAA-0000-4000-8000-000000000001",
                "-n",
                "2:0:+8M",
                vda.to_str().unwrap(),
            ],
        );
        f.add("pci0/virtio1/block/vda", "254:0", 131072, None);
        f.add("pci0/virtio1/block/vda/vda1", "254:1", 81920, Some((1, 2048)));
        f.add("pci0/virtio1/block/vda/vda2", "254:2", 16384, Some((2, 83968)));
        let vda1 = f.node("vda1", 128 << 20);
        run(
            "mkfs.btrfs",
            &["-q", "-f", "-L", "dock", "-U", "0a1b2c3d-4e5f-4061-8293-a4b5c6d7e8f9", vda1.to_str().unwrap()],
        );
        f.node("vda2", 8 << 20);
        // vdb: MBR disk with a logical partition holding ext4.
        let vdb = f.node("vdb", 32 << 20);
        let mut child = std::process::Command::new("sfdisk")
            .args(["-q", vdb.to_str().unwrap()])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("cannot run sfdisk");
        std::io::Write::write_all(
            &mut child.stdin.take().unwrap(),
            b"label: dos\nlabel-id: 0x0badcafe\nstart=2048, size=30000, type=5\nstart=4096, size=20000, type=83\n",
        )
        .unwrap();
        assert!(child.wait().unwrap().success());
        f.add("pci0/virtio2/block/vdb", "254:16", 65536, None);
        f.add("pci0/virtio2/block/vdb/vdb1", "254:17", 2, Some((1, 2048)));
        f.add("pci0/virtio2/block/vdb/vdb5", "254:21", 20000, Some((5, 4096)));
        let vdb5 = f.node("vdb5", 16 << 20);
        run("mkfs.ext4", &["-q", "-F", "-L", "data", vdb5.to_str().unwrap()]);
        f.node("vdb1", 1024);
        // Skipped: an unbound loop device, a ram disk.
        f.add("virtual/block/loop0", "7:0", 0, None);
        f.add("virtual/block/ram0", "1:0", 8192, None);
        // A whole-disk vfat (no partitions).
        f.add("virtual/block/sr0", "11:0", 8192, None);
        let sr0 = f.node("sr0", 4 << 20);
        run("mkfs.vfat", &["-n", "CIDATA", "-i", "0badf00d", sr0.to_str().unwrap()]);
        f
    }

    #[test]
    fn scan_fake_sysfs() {
        let s = Scratch::new("scan");
        let f = build_fake(&s);
        let devs = scan(&f.sys, &f.dev);
        let names: Vec<&str> = devs.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["sr0", "vda", "vda1", "vda2", "vdb", "vdb1", "vdb5"], "{}", describe(&devs));
        for d in &devs {
            assert_eq!(d.probe_error, None, "{}", describe(&devs));
        }
        let by = |n: &str| devs.iter().find(|d| d.name == n).unwrap();
        let vda1 = by("vda1");
        assert_eq!((vda1.major, vda1.minor, vda1.size_bytes), (254, 1, 40 << 20));
        assert_eq!(vda1.devnode, f.dev.join("vda1"));
        let fs = vda1.fs.as_ref().unwrap();
        assert_eq!((fs.fstype, fs.label.as_deref()), (FsType::Btrfs, Some("dock")));
        let p = vda1.partition.as_ref().unwrap();
        assert_eq!(
            (p.number, p.partuuid.as_str(), p.partlabel.as_deref()),
            (1, "aaaaaaaa-0000-4000-8000-000000000001", Some("dockroot"))
        );
        assert_eq!(by("vda").fs, None, "whole disks with partitions are not probed");
        assert_eq!(by("vda").partition, None);
        assert_eq!(by("vda2").fs, None);
        assert_eq!(by("vda2").partition.as_ref().unwrap().number, 2);
        let vdb5 = by("vdb5");
        assert_eq!(vdb5.partition.as_ref().unwrap().partuuid, "0badcafe-05");
        assert_eq!(vdb5.fs.as_ref().unwrap().fstype, FsType::Ext4);
        assert_eq!(by("vdb1").partition.as_ref().unwrap().partuuid, "0badcafe-01");
        assert_eq!(by("sr0").fs.as_ref().unwrap().uuid.as_deref(), Some("0BAD-F00D"));

        assert_eq!(found("LABEL=dock", &devs).as_deref(), Some("vda1"));
        assert_eq!(found("PARTLABEL=dockroot", &devs).as_deref(), Some("vda1"));
        assert_eq!(found("PARTUUID=0BADCAFE-05", &devs).as_deref(), Some("vdb5"));
        assert_eq!(found("UUID=0bad-f00d", &devs).as_deref(), Some("sr0"));
        let by_node = DeviceSpec::Path(f.dev.join("vdb5").to_str().unwrap().to_string());
        assert_eq!(find(&by_node, &devs).unwrap().map(|d| d.name.as_str()), Some("vdb5"));
        assert_eq!(found("/dev/vdb5", &devs).as_deref(), Some("vdb5"));
    }

    #[test]
    fn scan_records_errors_per_device() {
        let s = Scratch::new("scanerr");
        let f = build_fake(&s);
        // The kernel disagrees with the table about where vda2 starts.
        std::fs::write(f.root.join("devices/pci0/virtio1/block/vda/vda2/start"), "99999\n").unwrap();
        // A partition number the table does not have.
        f.add("pci0/virtio1/block/vda/vda9", "254:9", 100, Some((9, 1)));
        f.node("vda9", 51200);
        // Garbage in sysfs.
        f.add("virtual/block/bad0", "x:y", 100, None);
        // No node for it: scan creates one (MAJ:MIN of no driver), then cannot open it.
        f.add("virtual/block/ghost0", "4095:250", 100, None);
        let devs = scan(&f.sys, &f.dev);
        let by =
            |n: &str| devs.iter().find(|d| d.name == n).unwrap_or_else(|| panic!("{n} missing: {}", describe(&devs)));
        let err = |n: &str| by(n).probe_error.clone().unwrap_or_default();
        assert!(err("vda2").contains("the kernel says 512-byte sector 99999"), "{}", err("vda2"));
        assert_eq!(by("vda2").partition, None);
        assert!(err("vda9").contains("partition 9 of vda: not in the disk's partition table"), "{}", err("vda9"));
        assert!(err("bad0").contains("bad MAJ:MIN"), "{}", err("bad0"));
        assert!(err("ghost0").contains("opening"), "{}", err("ghost0"));
        let meta = std::fs::symlink_metadata(f.dev.join("ghost0")).unwrap();
        use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
        assert!(meta.file_type().is_block_device());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!((rustix::fs::major(meta.rdev()), rustix::fs::minor(meta.rdev())), (4095, 250));
        // The other devices are still all there and fine.
        assert_eq!(by("vda1").probe_error, None);
        assert_eq!(found("LABEL=dock", &devs).as_deref(), Some("vda1"));
        let table = describe(&devs);
        assert!(table.contains("ghost0") && table.contains("4095:250"), "{table}");
    }

    /// A waiter on a fake tree: no uevents (rescans every 20 ms), no btrfs ioctls.
    fn fake_waiter(f: &FakeSys) -> Waiter {
        let mut w = Waiter::with(None, &f.sys, &f.dev, false);
        w.fallback_rescan = Duration::from_millis(20);
        w
    }

    struct Diag(Vec<String>);

    impl WaitHooks for Diag {
        fn on_uevent(&mut self, _: &Uevent) {}
        fn diagnostics(&self) -> Vec<String> {
            self.0.clone()
        }
    }

    #[test]
    fn wait_for_finds_or_times_out_with_a_table() {
        let s = Scratch::new("wait");
        let f = build_fake(&s);
        let quick = WaitPolicy { timeout: Duration::from_millis(300), delay: Duration::from_millis(10) };
        let mut w = fake_waiter(&f);
        let d = w.wait_for(&parse("LABEL=data"), &quick, false, &mut NoHooks).unwrap();
        assert_eq!(d.name, "vdb5");
        assert_eq!(w.stats().scans, 1, "found by the first scan");
        let started = Instant::now();
        let mut diag = Diag(vec!["modules loaded: virtio_blk".into(), "no module for: pci:v1234".into()]);
        let e = w.wait_for(&parse("LABEL=nope"), &quick, false, &mut diag).unwrap_err().to_string();
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert!(
            e.starts_with("no block device matching LABEL=nope appeared within 0.3s; block devices seen:\n"),
            "{e}"
        );
        assert!(
            e.contains("vda1") && e.contains("dock") && e.contains("0badcafe-05") && e.contains("PARTLABEL"),
            "{e}"
        );
        assert!(e.ends_with("\nmodules loaded: virtio_blk\nno module for: pci:v1234"), "{e}");
        // A device appearing while we wait is found.
        let late = std::thread::spawn({
            let mut w = fake_waiter(&f);
            move || {
                let slow = WaitPolicy { timeout: Duration::from_secs(5), delay: Duration::ZERO };
                w.wait_for(&DeviceSpec::MajMin(254, 33), &slow, false, &mut NoHooks)
            }
        });
        std::thread::sleep(Duration::from_millis(250));
        f.node("vdc", 1 << 20);
        f.add("virtual/block/vdc", "254:33", 2048, None);
        assert_eq!(late.join().unwrap().unwrap().name, "vdc");
        // Ambiguous: fails at once, not at the timeout.
        let copy = f.node("sr1", 4 << 20);
        std::fs::copy(f.dev.join("sr0"), &copy).unwrap();
        f.add("virtual/block/sr1", "11:1", 8192, None);
        let started = Instant::now();
        let e = w.wait_for(&parse("LABEL=CIDATA"), &quick, false, &mut NoHooks).unwrap_err().to_string();
        assert!(started.elapsed() < Duration::from_millis(250), "{e}");
        assert!(e.contains("LABEL=CIDATA is ambiguous") && e.contains("sr0") && e.contains("sr1"), "{e}");
        // By UUID, the copy is no obstacle.
        assert!(w.wait_for(&parse("UUID=0BAD-F00D"), &quick, false, &mut NoHooks).is_ok());
    }

    #[test]
    fn rootdelay_is_waited_even_when_the_device_is_there_at_once() {
        let s = Scratch::new("rootdelay");
        let f = build_fake(&s);
        let delay = Duration::from_millis(400);
        let policy = WaitPolicy { timeout: Duration::from_secs(5), delay };
        let mut w = fake_waiter(&f);
        let started = Instant::now();
        let d = w.wait_for(&parse("LABEL=data"), &policy, false, &mut NoHooks).unwrap();
        assert_eq!(d.name, "vdb5");
        assert!(started.elapsed() >= delay, "returned after {:?}, before rootdelay {delay:?}", started.elapsed());
        assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
        // The devices are first looked at after the delay: one scan, which finds it.
        assert_eq!(w.stats().scans, 1);

        // A device that appears during the delay is found by that first look.
        let late = std::thread::spawn({
            let mut w = fake_waiter(&f);
            move || {
                let started = Instant::now();
                let r = w.wait_for(&DeviceSpec::MajMin(254, 40), &policy, false, &mut NoHooks);
                (r, started.elapsed(), w.stats().scans)
            }
        });
        std::thread::sleep(Duration::from_millis(100));
        f.node("vde", 1 << 20);
        f.add("virtual/block/vde", "254:40", 2048, None);
        let (r, took, scans) = late.join().unwrap();
        assert_eq!(r.unwrap().name, "vde");
        assert!(took >= delay, "returned after {took:?}, before rootdelay {delay:?}");
        assert_eq!(scans, 1, "the device was there when the delay ended");

        // The timeout is counted after the delay.
        let policy = WaitPolicy { timeout: Duration::from_millis(300), delay: Duration::from_millis(300) };
        let started = Instant::now();
        let e = w.wait_for(&parse("LABEL=nope"), &policy, false, &mut NoHooks).unwrap_err().to_string();
        assert!(started.elapsed() >= Duration::from_millis(600), "gave up after {:?}", started.elapsed());
        assert!(e.starts_with("no block device matching LABEL=nope appeared within 0.3s"), "{e}");
    }

    fn member(name: &str, minor: u32, uuid: &str, devid: u64, n: u64) -> BlockDevice {
        let mut d = with_fs(dev(name, minor), FsType::Btrfs, Some("raid"), uuid);
        if let Some(fs) = d.fs.as_mut() {
            fs.btrfs = Some(BtrfsMember { num_devices: n, devid, dev_uuid: format!("{devid}") });
        }
        d
    }

    #[test]
    fn assess_decides_found_absent_incomplete() {
        let uuid = "0a1b2c3d-4e5f-4061-8293-a4b5c6d7e8f9";
        let never = |_: &BlockDevice| -> Option<bool> { panic!("kernel asked for a single-device filesystem") };
        let name = |a: Assessment| match a {
            Assessment::Ready(d) => format!("ready {}", d.name),
            Assessment::Absent => "absent".into(),
            Assessment::Incomplete(d, m) => format!("incomplete {} {:?}", d.name, m.missing_devids()),
        };
        let devs = sample();
        assert_eq!(name(assess(&parse("LABEL=dock"), &devs, never).unwrap()), "ready sda2");
        assert_eq!(name(assess(&parse("LABEL=none"), &devs, never).unwrap()), "absent");
        let mut dup = devs.clone();
        dup.push(with_fs(dev("sdc1", 33), FsType::Ext4, Some("dock"), "99999999-2222-3333-4444-555555555555"));
        assert!(assess(&parse("LABEL=dock"), &dup, never).is_err());

        // Two of three members: incomplete by the superblocks, unless the kernel says otherwise.
        let devs = vec![member("vdb", 16, uuid, 1, 3), member("vdd", 48, uuid, 3, 3), dev("vdc", 32)];
        assert_eq!(name(assess(&parse("LABEL=raid"), &devs, |_| None).unwrap()), "incomplete vdb [2]");
        assert_eq!(name(assess(&parse("LABEL=raid"), &devs, |_| Some(true)).unwrap()), "ready vdb");
        let mut asked = None;
        let a = assess(&parse("/dev/vdd"), &devs, |d| {
            asked = Some(d.name.clone());
            Some(false)
        });
        assert_eq!(name(a.unwrap()), "incomplete vdd [2]");
        assert_eq!(asked.as_deref(), Some("vdd"));
        // All three: complete by superblocks, but the kernel's word counts.
        let mut all = devs.clone();
        all.push(member("vde", 64, uuid, 2, 3));
        assert_eq!(name(assess(&parse(&format!("UUID={uuid}")), &all, |_| None).unwrap()), "ready vdb");
        assert_eq!(name(assess(&parse("LABEL=raid"), &all, |_| Some(false)).unwrap()), "incomplete vdb []");

        let m = BtrfsMembers::collect(&devs, uuid);
        assert_eq!(m.num_devices, 3);
        assert_eq!(m.found, vec![(1, PathBuf::from("/dev/vdb")), (3, PathBuf::from("/dev/vdd"))]);
        assert!(!m.complete());
        assert_eq!(
            m.summary(),
            format!(
                "btrfs filesystem LABEL=raid UUID={uuid} has 3 devices; found 2: devid 1 (/dev/vdb), \
                 devid 3 (/dev/vdd); missing 1, likely devid 2"
            )
        );
        let none = BtrfsMembers::collect(&[], uuid);
        assert_eq!(none.summary(), format!("btrfs filesystem UUID={uuid} has 0 devices; found 0: none; missing 0"));
    }

    /// A two-device btrfs raid1 on image files, as fake vdx and vdy.
    fn fake_raid1(f: &FakeSys, both: bool) {
        let a = f.node("vdx", 160 << 20);
        let b = f.node("vdy", 160 << 20);
        run(
            "mkfs.btrfs",
            &[
                "-q",
                "-f",
                "-L",
                "pair",
                "-U",
                "5eed5eed-0000-4000-8000-000000000002",
                "-d",
                "raid1",
                "-m",
                "raid1",
                a.to_str().unwrap(),
                b.to_str().unwrap(),
            ],
        );
        f.add("virtual/block/vdx", "254:64", 160 << 11, None);
        if both {
            f.add("virtual/block/vdy", "254:80", 160 << 11, None);
        }
    }

    #[test]
    fn multi_device_btrfs_waits_for_every_member() {
        let s = Scratch::new("raid1");
        let f = FakeSys::new(&s);
        fake_raid1(&f, true);
        let quick = WaitPolicy { timeout: Duration::from_millis(300), delay: Duration::ZERO };
        let devs = scan(&f.sys, &f.dev);
        let ids: Vec<(u64, u64)> = devs
            .iter()
            .map(|d| d.fs.as_ref().and_then(|f| f.btrfs.as_ref()).map(|b| (b.devid, b.num_devices)).unwrap())
            .collect();
        assert_eq!(ids, [(1, 2), (2, 2)], "{}", describe(&devs));
        let d = fake_waiter(&f).wait_for(&parse("LABEL=pair"), &quick, false, &mut NoHooks).unwrap();
        assert_eq!(d.name, "vdx");
        assert!(describe(&devs).contains(" 2/2 "), "{}", describe(&devs));

        let s = Scratch::new("raid1half");
        let f = FakeSys::new(&s);
        fake_raid1(&f, false);
        let started = Instant::now();
        let e = fake_waiter(&f).wait_for(&parse("LABEL=pair"), &quick, false, &mut NoHooks).unwrap_err().to_string();
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert!(
            e.starts_with(
                "LABEL=pair: btrfs filesystem LABEL=pair UUID=5eed5eed-0000-4000-8000-000000000002 has 2 devices; \
                 found 1: devid 1 ("
            ),
            "{e}"
        );
        assert!(e.contains("vdx); missing 1, likely devid 2; waited 0.3s; the mount option 'degraded'"), "{e}");
        assert!(e.contains("block devices seen:\n") && e.contains(" 1/2 "), "{e}");
        // degraded: mounted after waiting DEGRADED_WAIT, capped by the timeout.
        let started = Instant::now();
        let d = fake_waiter(&f).wait_for(&parse("LABEL=pair"), &quick, true, &mut NoHooks).unwrap();
        assert_eq!(d.name, "vdx");
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(3), "{took:?}");
        // The missing member turning up during the degraded wait ends it early.
        let late = std::thread::spawn({
            let mut w = fake_waiter(&f);
            move || {
                let slow = WaitPolicy { timeout: Duration::from_secs(30), delay: Duration::ZERO };
                let t = Instant::now();
                (w.wait_for(&parse("LABEL=pair"), &slow, true, &mut NoHooks), t.elapsed())
            }
        });
        std::thread::sleep(Duration::from_millis(300));
        f.add("virtual/block/vdy", "254:80", 160 << 11, None);
        let (r, took) = late.join().unwrap();
        assert_eq!(r.unwrap().name, "vdx");
        assert!(took < DEGRADED_WAIT, "{took:?}");
    }
}
