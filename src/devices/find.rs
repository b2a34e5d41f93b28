//! Which scanned device a spec names: [`find`] (with ambiguity rules),
//! [`duplicates`], the members of a multi-device btrfs ([`BtrfsMembers`]) and
//! [`assess`], the decision a wait takes after each scan.
//!
//! Pure: works on the [`BlockDevice`] list a scan returned; the kernel's view
//! of a btrfs is passed in as a closure.

use std::path::{Path, PathBuf};

use super::scan::BlockDevice;
use super::spec::DeviceSpec;
use super::table::cell;
use crate::error::{Error, Result};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::fixtures::{dev, found, member, parse, sample, with_fs, with_part};
    use crate::probe::{BtrfsMember, FsType};

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
                fs.btrfs =
                    Some(BtrfsMember { num_devices: 2, devid, dev_uuid: format!("{devid}"), checksum: "crc32c" });
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
}
