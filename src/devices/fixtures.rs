//! Test fixtures shared by the unit tests of the module's files: sample
//! devices, and a fake sysfs tree with image files as device nodes.

use std::fs::File;
use std::path::{Path, PathBuf};

use super::{find, BlockDevice, DeviceSpec};
pub(super) use crate::probe::fixtures::{run, Scratch};
use crate::probe::{BtrfsMember, FsInfo, FsType, Partition};

pub(super) fn parse(s: &str) -> DeviceSpec {
    DeviceSpec::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

pub(super) fn dev(name: &str, minor: u32) -> BlockDevice {
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

pub(super) fn with_fs(mut d: BlockDevice, t: FsType, label: Option<&str>, uuid: &str) -> BlockDevice {
    d.fs = Some(FsInfo { fstype: t, label: label.map(Into::into), uuid: Some(uuid.into()), btrfs: None });
    d
}

pub(super) fn with_part(mut d: BlockDevice, n: u32, partuuid: &str, label: Option<&str>) -> BlockDevice {
    d.partition = Some(Partition {
        number: n,
        start_lba: 2048,
        sectors: 4096,
        partuuid: partuuid.into(),
        partlabel: label.map(Into::into),
    });
    d
}

pub(super) fn sample() -> Vec<BlockDevice> {
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

pub(super) fn found(spec: &str, devs: &[BlockDevice]) -> Option<String> {
    find(&parse(spec), devs).unwrap().map(|d| d.name.clone())
}

pub(super) fn member(name: &str, minor: u32, uuid: &str, devid: u64, n: u64) -> BlockDevice {
    let mut d = with_fs(dev(name, minor), FsType::Btrfs, Some("raid"), uuid);
    if let Some(fs) = d.fs.as_mut() {
        fs.btrfs = Some(BtrfsMember { num_devices: n, devid, dev_uuid: format!("{devid}"), checksum: "crc32c" });
    }
    d
}

// --- a fake sysfs tree, with image files as device nodes ---------------

pub(super) struct FakeSys {
    pub(super) sys: PathBuf,
    pub(super) dev: PathBuf,
    pub(super) root: PathBuf,
}

impl FakeSys {
    pub(super) fn new(s: &Scratch) -> FakeSys {
        let f = FakeSys { sys: s.0.join("sys/class/block"), dev: s.0.join("dev"), root: s.0.join("sys") };
        std::fs::create_dir_all(&f.sys).unwrap();
        std::fs::create_dir_all(&f.dev).unwrap();
        f
    }

    /// A sysfs device dir at `rel` (under sys/devices), linked from class/block.
    pub(super) fn add(&self, rel: &str, dev: &str, sectors: u64, part: Option<(u32, u64)>) {
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

    pub(super) fn node(&self, name: &str, size: u64) -> PathBuf {
        let p = self.dev.join(name);
        File::create(&p).unwrap().set_len(size).unwrap();
        p
    }
}

pub(super) fn build_fake(s: &Scratch) -> FakeSys {
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
