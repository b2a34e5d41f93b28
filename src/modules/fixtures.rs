//! Test fixtures shared by the unit tests of the module's files: index entries,
//! two sample indexes and a fake sysfs.

use std::path::PathBuf;

use super::{Alias, IndexEntry, Load, ModuleIndex};

pub(super) fn entry(name: &str, load: Load, deps: &[&str], pre: &[&str], post: &[&str]) -> IndexEntry {
    let list = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    IndexEntry {
        name: name.into(),
        path: format!("lib/modules/6.1.0-56-amd64/kernel/{name}.ko"),
        load,
        deps: list(deps),
        pre: list(pre),
        post: list(post),
    }
}

pub(super) fn always(name: &str, deps: &[&str], pre: &[&str]) -> IndexEntry {
    entry(name, Load::Always, deps, pre, &[])
}

pub(super) fn alias(pattern: &str, module: &str) -> Alias {
    Alias { pattern: pattern.into(), module: module.into() }
}

pub(super) fn sample() -> ModuleIndex {
    ModuleIndex {
        kernel: "6.1.0-56-amd64".into(),
        modules: vec![
            always("crc32c_generic", &[], &[]),
            always("crc32c_intel", &[], &[]),
            always("libcrc32c", &[], &[]),
            always("xor", &[], &[]),
            always("btrfs", &["libcrc32c", "xor"], &["crc32c_generic", "crc32c_intel"]),
        ],
        aliases: vec![],
    }
}

/// An index as format 2 wrote the generic image: filesystems always, drivers by modalias.
pub(super) fn machine() -> ModuleIndex {
    ModuleIndex {
        kernel: "6.1.0-56-amd64".into(),
        modules: vec![
            always("crc32c_generic", &[], &[]),
            always("libcrc32c", &[], &[]),
            always("btrfs", &["libcrc32c"], &["crc32c_generic"]),
            entry("scsi_mod", Load::Modalias, &[], &[], &[]),
            entry("scsi_common", Load::Modalias, &[], &[], &[]),
            entry("sd_mod", Load::Modalias, &["scsi_common", "scsi_mod"], &[], &[]),
            entry("virtio_ring", Load::Modalias, &[], &[], &[]),
            entry("virtio", Load::Modalias, &["virtio_ring"], &[], &[]),
            entry("virtio_pci", Load::Modalias, &["virtio", "virtio_ring"], &[], &[]),
            entry("virtio_blk", Load::Modalias, &["virtio", "virtio_ring"], &[], &["blk_helper"]),
            entry("blk_helper", Load::Modalias, &[], &[], &[]),
            entry("nvme_core", Load::Modalias, &[], &[], &[]),
            entry("nvme", Load::Modalias, &["nvme_core"], &[], &[]),
        ],
        aliases: vec![
            alias("pci:v00001AF4d*sv*sd*bc*sc*i*", "virtio_pci"),
            alias("virtio:d00000002v*", "virtio_blk"),
            alias("pci:v*d*sv*sd*bc01sc08i02*", "nvme"),
            alias("scsi:t-0x00*", "sd_mod"),
            alias("scsi:t-0x0e*", "sd_mod"),
        ],
    }
}

/// A generic index as the builder writes it now: filesystems by `fs-TYPE`
/// alias, btrfs with its checksum drivers as pre-softdeps, vfat with its code
/// pages, ext4 mounting ext2 too; a driver by modalias.
pub(super) fn filesystems() -> ModuleIndex {
    let on_demand = |name: &str, deps: &[&str], pre: &[&str]| entry(name, Load::Modalias, deps, pre, &[]);
    ModuleIndex {
        kernel: "6.1.0-56-amd64".into(),
        modules: vec![
            on_demand("blake2b_generic", &[], &[]),
            on_demand("crc32c_generic", &[], &[]),
            on_demand("xxhash_generic", &[], &[]),
            on_demand("libcrc32c", &[], &["crc32c_generic"]),
            on_demand("raid6_pq", &[], &[]),
            on_demand("btrfs", &["libcrc32c", "raid6_pq"], &["blake2b_generic", "crc32c_generic", "xxhash_generic"]),
            on_demand("jbd2", &[], &[]),
            on_demand("ext4", &["jbd2"], &["crc32c_generic"]),
            on_demand("vfat", &[], &[]),
            on_demand("nls_cp437", &[], &[]),
            on_demand("virtio_blk", &[], &[]),
            on_demand("libata", &[], &[]),
            on_demand("ata_piix", &["libata"], &[]),
        ],
        aliases: vec![
            alias("fs-btrfs", "btrfs"),
            alias("fs-ext2", "ext4"),
            alias("fs-ext4", "ext4"),
            alias("fs-vfat", "nls_cp437"),
            alias("fs-vfat", "vfat"),
            alias("virtio:d00000002v*", "virtio_blk"),
            alias("pci:v00008086d00007010sv*sd*bc*sc*i*", "ata_piix"),
        ],
    }
}

/// A fake sysfs: devices under `devices/`, linked from `bus/*/devices/` and
/// `class/*/` as the kernel links them.
pub(super) fn fake_sysfs(tag: &str) -> PathBuf {
    let root = std::env::temp_dir().join(format!("dockroot-sysfs-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let write = |rel: &str, text: &str| {
        let p = root.join("devices").join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    let link = |group: &str, name: &str, device: &str| {
        let dir = root.join(group);
        std::fs::create_dir_all(&dir).unwrap();
        let up = "../".repeat(group.matches('/').count() + 1);
        std::os::unix::fs::symlink(format!("{up}devices/{device}"), dir.join(name)).unwrap();
    };
    write("pci0000:00/0000:00:02.0/modalias", "pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00\n");
    write("pci0000:00/0000:00:02.0/virtio1/modalias", "virtio:d00000002v00001AF4\n");
    write("pci0000:00/0000:00:03.0/modalias", "pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00\n");
    write("pci0000:00/0000:00:00.0/modalias", "pci:v00008086d00001237sv00001AF4sd00001100bc06sc00i00\n");
    write("pci0000:00/0000:00:00.0/vendor", "0x8086\n");
    write("platform/pcspkr/modalias", "platform:pcspkr\n");
    write("platform/empty/modalias", "\n");
    write("system/cpu/modalias", "cpu:type:x86,ven0002fam001Amod0002:feature:,0000\n");
    write("system/cpu/cpu0/online", "1\n");
    write("pci0000:00/0000:00:04.0/host0/target0:0:0/0:0:0:0/modalias", "scsi:t-0x00\n");
    write("platform/i8042/serio0/input/input1/modalias", "input:b0011v0001p0001eAB41-e0,1,4,11,14,k71,\n");
    write("virtual/dmi/id/modalias", "dmi:bvnSeaBIOS:pnStandardPC\n");
    write("virtual/tty/tty0/dev", "4:0\n");
    // Not reachable from a bus or a class: not read.
    write("a/b/c/deep/modalias", "usb:v1D6Bp0002d0601dc09dsc00dp00ic09isc00ip00in00\n");
    for (name, device) in
        [("0000:00:00.0", "0000:00:00.0"), ("0000:00:02.0", "0000:00:02.0"), ("0000:00:03.0", "0000:00:03.0")]
    {
        link("bus/pci/devices", name, &format!("pci0000:00/{device}"));
    }
    link("bus/virtio/devices", "virtio1", "pci0000:00/0000:00:02.0/virtio1");
    link("bus/platform/devices", "pcspkr", "platform/pcspkr");
    link("bus/platform/devices", "empty", "platform/empty");
    link("bus/cpu/devices", "cpu0", "system/cpu/cpu0");
    link("bus/scsi/devices", "0:0:0:0", "pci0000:00/0000:00:04.0/host0/target0:0:0/0:0:0:0");
    link("class/input", "input1", "platform/i8042/serio0/input/input1");
    link("class/dmi", "id", "virtual/dmi/id");
    link("class/tty", "tty0", "virtual/tty/tty0");
    std::fs::create_dir_all(root.join("bus/usb/devices")).unwrap();
    // A bound driver, seen through the bus's link.
    std::os::unix::fs::symlink(root.join("devices/platform/pcspkr"), root.join("devices/platform/pcspkr/driver"))
        .unwrap();
    root
}
