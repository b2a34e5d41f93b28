//! The sysfs scan: list `/sys/class/block`, read each device's MAJ:MIN, size
//! and partition number, and probe its contents with [`crate::probe`]
//! (filesystem; for a partition, its entry in the parent disk's table).
//!
//! Thin: sysfs reads, device node creation (`mknod` when /dev lacks one) and
//! opening devices; the parsing of what is read lives in [`crate::probe`].

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::{Context, Error, Result};
use crate::probe::{self, FsInfo, Partition, PartitionTable};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::fixtures::{build_fake, found, Scratch};
    use crate::devices::{describe, find, DeviceSpec};
    use crate::probe::FsType;

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
}
