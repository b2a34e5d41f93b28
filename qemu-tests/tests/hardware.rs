//! Hardware tests (issue 3): ONE generic initramfs per kernel (the builder without any
//! `--module`) finds the root disk on NVMe, AHCI, virtio-scsi and USB storage, on GPT
//! and MBR partitions, on a btrfs RAID1 over two disks (and says exactly what is missing
//! when a member is absent), a disk plugged in after boot started, and explains a
//! missing driver. The disks come from `qemu-tests/fixtures/make-layouts` (derived from
//! the Docker-written fixture disk); assertions are on what the booted system saw
//! (testinit's report), plus dockroot's messages in the failure cases.

use std::path::PathBuf;
use std::time::Duration;

use qemu_tests::{
    assert_fatal_boot, boot, build_initramfs, field, printk_time, Artifacts, BootOutput, BootSpec, Disk, DiskInterface,
    DiskSpec, Hotplug, Layouts,
};
use serde_json::Value;

const OS_CONFIG: &str = r#"{"docker_image":"dockroot-test/os","docker_tag":"latest"}"#;
const FS_UUID: &str = "5c0a6d1e-2b7f-4f3e-9a8d-d0c4e700f1c5";
/// Root and top layer on the fixture's btrfs, found by label.
const STANDARD_APPEND: &str =
    "root=LABEL=dockroot-test rootflags=subvol=rwlayer rw toplayer=LABEL=dockroot-test toplayer_path=toplayer";
/// The fixture's own top layer (on the btrfs).
const FIXTURE_HOSTNAME: &str = "dockroot-test-machine\n";

/// The generic initramfs: no `--module`, so the builder's default set for real machines.
fn generic(a: &Artifacts) -> PathBuf {
    build_initramfs(a, &[], OS_CONFIG)
}

/// Boots `disks` (already copies) with `initrd`. A failure reboots after 1 s.
fn boot_with(name: &str, a: &Artifacts, initrd: PathBuf, disks: Vec<DiskSpec>, append: &str) -> BootOutput {
    let mut spec = BootSpec::new(a.kernel(), initrd, &[], &with_reboot_delay(append));
    spec.name = Some(format!("hw_{name}"));
    spec.disks = disks;
    spec.timeout = Duration::from_secs(180);
    boot(&spec)
}

/// `append` with `dockroot.reboot_delay=1` before any `--` (init arguments).
fn with_reboot_delay(append: &str) -> String {
    if append.contains("dockroot.reboot_delay=") {
        return append.to_string();
    }
    match append.split_once(" -- ") {
        Some((kernel, init)) => format!("{kernel} dockroot.reboot_delay=1 -- {init}"),
        None => format!("{append} dockroot.reboot_delay=1"),
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect()).unwrap_or_default()
}

/// What every successful boot of the fixture's image must show: testinit as PID 1 on
/// the rw layer snapshot (btrfs, subvol=/rwlayer, rw) from `source`, the image's
/// three layers, no errors. Returns the report.
fn assert_booted(out: &BootOutput, source: &str) -> Value {
    let r = out.expect_testinit();
    assert_eq!(r["pid"], 1, "{r}");
    assert_eq!(r["errors"], serde_json::json!([]), "{r}");
    let root = &r["root_mount"];
    assert_eq!(root["fstype"], "btrfs", "{root}");
    assert_eq!(root["source"], source, "root mounted from the wrong device: {root}\n{}", out.tail(40));
    assert!(strings(&root["super_options"]).iter().any(|o| o == "subvol=/rwlayer"), "root not the rw layer: {root}");
    assert!(strings(&root["mount_options"]).iter().any(|o| o == "rw"), "root not mounted rw: {root}");
    assert_eq!(field(&r, &["root_btrfs", "is_subvolume"]), true, "{r}");
    for (path, content) in [("/layer1.txt", "layer1\n"), ("/layer2.txt", "layer2\n"), ("/layer3.txt", "layer3\n")] {
        assert_eq!(field(&r, &["paths", path, "content"]), content, "{path}: {}", field(&r, &["paths", path]));
    }
    // btrfs brings libcrc32c, whose soft dependency crc32c_intel needs SSE4.2: never
    // tried where the CPU lacks it (no ENODEV line), and TCG's default CPU lacks it.
    assert!(!out.serial.contains("module crc32c_intel ("), "crc32c_intel was tried:\n{}", out.tail(60));
    if std::env::var("DOCKROOT_QEMU_KVM").as_deref() != Ok("1") {
        let line = out.serial.lines().find(|l| l.contains("kernel modules: not for this CPU"));
        assert!(line.is_some_and(|l| l.contains("crc32c_intel")), "{line:?}\n{}", out.tail(60));
    }
    r
}

fn hostname(r: &Value) -> &Value {
    field(r, &["paths", "/etc/hostname", "content"])
}

/// The words after `prefix` on the first line of `text` holding it (the prefix at a
/// word boundary, after dockroot's tag).
fn words_after<'a>(text: &'a str, prefix: &str) -> Option<Vec<&'a str>> {
    text.lines().find_map(|l| l.split_once(prefix).map(|(_, rest)| rest.split_whitespace().collect()))
}

/// The row of the block device table (dockroot's "block devices seen:" message) for
/// `name`, as column → value.
fn device_row(text: &str, name: &str) -> Option<std::collections::BTreeMap<String, String>> {
    let cols = |l: &str| -> Vec<String> {
        l.split_once("dockroot: ").map_or(l, |(_, r)| r).split_whitespace().map(String::from).collect()
    };
    let header =
        text.lines().map(cols).find(|c| c.first().is_some_and(|h| h == "NAME") && c.contains(&"UUID".into()))?;
    let row = text.lines().map(cols).find(|c| c.first().is_some_and(|n| n == name))?;
    (row.len() == header.len()).then(|| header.into_iter().zip(row).collect())
}

/// A size as dockroot's device table (and lsblk) shows it: 512M, 1.5G, ...
fn table_size(bytes: u64) -> String {
    let units = ["B", "K", "M", "G", "T"];
    let (mut v, mut unit) = (bytes as f64, 0);
    while v >= 1024.0 && unit + 1 < units.len() {
        v /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => bytes.to_string(),
        _ if v < 10.0 && v.fract() != 0.0 => format!("{v:.1}{}", units[unit]),
        _ => format!("{v:.0}{}", units[unit]),
    }
}

fn assert_mentions(text: &str, wants: &[&str]) {
    for w in wants {
        assert!(text.contains(w), "missing {w:?} in:\n{text}");
    }
}

// ---------------------------------------------------------------------------
// Disk interfaces: the whole fixture disk as root, generic initramfs.
// ---------------------------------------------------------------------------

fn root_on(interface: DiskInterface, source: &str) {
    let a = Artifacts::from_env();
    let disk = Disk::copy_of(&a.disk);
    let out = boot_with(
        &format!("root_on_{}", interface.name()),
        &a,
        generic(&a),
        vec![DiskSpec::new(disk.path(), interface)],
        STANDARD_APPEND,
    );
    let r = assert_booted(&out, source);
    assert_eq!(hostname(&r), FIXTURE_HOSTNAME, "top layer not applied");
}

#[test]
fn root_on_nvme() {
    root_on(DiskInterface::Nvme, "/dev/nvme0n1");
}

#[test]
fn root_on_ahci_sata() {
    root_on(DiskInterface::Ahci, "/dev/sda");
}

#[test]
fn root_on_virtio_scsi() {
    root_on(DiskInterface::VirtioScsi, "/dev/sda");
}

#[test]
fn root_on_usb_storage() {
    root_on(DiskInterface::Usb, "/dev/sda");
}

// ---------------------------------------------------------------------------
// Partition tables.
// ---------------------------------------------------------------------------

/// GPT on virtio: root by PARTUUID (the GPT unique GUID), the top layer on the ESP
/// (vfat) by its filesystem label.
#[test]
fn gpt_root_by_partuuid_with_the_top_layer_on_the_esp_by_label() {
    let a = Artifacts::from_env();
    let l = Layouts::from_env();
    let disk = Disk::copy_of(&l.gpt);
    let append = format!(
        "root=PARTUUID={} rootflags=subvol=rwlayer rw toplayer=LABEL={} toplayer_path={} -- --stat /etc/esp-only",
        l.get(&["gpt", "root", "partuuid"]),
        l.get(&["gpt", "esp", "label"]),
        l.get(&["gpt", "esp", "toplayer_path"]),
    );
    let out = boot_with("gpt_partuuid", &a, generic(&a), vec![DiskSpec::virtio(disk.path())], &append);
    let r = assert_booted(&out, "/dev/vda2");
    assert_eq!(hostname(&r), "from-the-esp\n", "top layer not taken from the ESP:\n{}", out.tail(30));
    assert_eq!(field(&r, &["paths", "/etc/esp-only", "content"]), "on the ESP\n", "{r}");
    // The btrfs partition's own toplayer/ was not used.
    assert_eq!(field(&r, &["paths", "/root/.dotfile", "exists"]), false);
    // Nothing of the ESP stays mounted in the booted system.
    assert!(!r["mounts"].as_array().is_some_and(|m| m.iter().any(|m| m["fstype"] == "vfat")), "{}", r["mounts"]);
}

/// GPT on NVMe (partition nodes nvme0n1pN): root by PARTLABEL, the top layer on the
/// ESP by a udev-style /dev/disk/by-partuuid/ path (resolved without udev).
#[test]
fn gpt_root_by_partlabel_on_nvme_with_the_esp_by_partuuid_path() {
    let a = Artifacts::from_env();
    let l = Layouts::from_env();
    let disk = Disk::copy_of(&l.gpt);
    let append = format!(
        "root=PARTLABEL={} rootflags=subvol=rwlayer rw toplayer=/dev/disk/by-partuuid/{} toplayer_path={}",
        l.get(&["gpt", "root", "partlabel"]),
        l.get(&["gpt", "esp", "partuuid"]),
        l.get(&["gpt", "esp", "toplayer_path"]),
    );
    let out = boot_with(
        "gpt_partlabel_nvme",
        &a,
        generic(&a),
        vec![DiskSpec::new(disk.path(), DiskInterface::Nvme)],
        &append,
    );
    let r = assert_booted(&out, "/dev/nvme0n1p2");
    assert_eq!(hostname(&r), "from-the-esp\n", "top layer not taken from the ESP:\n{}", out.tail(30));
}

/// MBR: root by PARTUUID=SSSSSSSS-01, the top layer on a logical partition (ext4) by
/// PARTUUID=SSSSSSSS-05.
#[test]
fn mbr_root_by_partuuid_with_the_top_layer_on_a_logical_partition() {
    let a = Artifacts::from_env();
    let l = Layouts::from_env();
    let disk = Disk::copy_of(&l.mbr);
    let append = format!(
        "root=PARTUUID={} rootflags=subvol=rwlayer rw toplayer=PARTUUID={} toplayer_path={}",
        l.get(&["mbr", "root", "partuuid"]),
        l.get(&["mbr", "logical", "partuuid"]).to_uppercase(),
        l.get(&["mbr", "logical", "toplayer_path"]),
    );
    let out = boot_with("mbr_partuuid", &a, generic(&a), vec![DiskSpec::virtio(disk.path())], &append);
    let r = assert_booted(&out, "/dev/vda1");
    assert_eq!(hostname(&r), "from-the-logical-partition\n", "top layer not from vda5:\n{}", out.tail(30));
}

// ---------------------------------------------------------------------------
// btrfs RAID1 over two disks.
// ---------------------------------------------------------------------------

/// `--stat` arguments for testinit: the member links in /sys/fs/btrfs/<uuid>/devices/.
fn stat_members(names: &[&str]) -> String {
    names.iter().map(|n| format!(" --stat /sys/fs/btrfs/{FS_UUID}/devices/{n}")).collect()
}

fn member(r: &Value, name: &str) -> bool {
    field(r, &["paths", &format!("/sys/fs/btrfs/{FS_UUID}/devices/{name}"), "exists"]) == true
}

#[test]
fn raid1_with_both_members_boots_with_both() {
    let a = Artifacts::from_env();
    let l = Layouts::from_env();
    let (da, db) = (Disk::copy_of(&l.raid1a), Disk::copy_of(&l.raid1b));
    // LABEL= matches both members: one filesystem, not an ambiguity.
    let append = format!("{STANDARD_APPEND} dockroot.timeout=30 --{}", stat_members(&["vda", "vdb"]));
    let out = boot_with(
        "raid1_both",
        &a,
        generic(&a),
        vec![DiskSpec::virtio(da.path()), DiskSpec::virtio(db.path())],
        &append,
    );
    let r = out.expect_testinit();
    let source = r["root_mount"]["source"].as_str().unwrap_or_default().to_string();
    assert!(source == "/dev/vda" || source == "/dev/vdb", "root from {source}: {}", r["root_mount"]);
    assert_booted(&out, &source);
    assert_eq!(hostname(&r), FIXTURE_HOSTNAME);
    assert!(member(&r, "vda") && member(&r, "vdb"), "the mounted filesystem lacks a member: {}", r["paths"]);
    assert!(!strings(&r["root_mount"]["super_options"]).iter().any(|o| o == "degraded"), "{}", r["root_mount"]);
}

#[test]
fn raid1_with_a_member_missing_is_a_clear_error_and_a_reboot() {
    let a = Artifacts::from_env();
    let l = Layouts::from_env();
    let da = Disk::copy_of(&l.raid1a);
    let append = format!("{STANDARD_APPEND} dockroot.timeout=4 dockroot.reboot_delay=1");
    let out = boot_with("raid1_missing", &a, generic(&a), vec![DiskSpec::virtio(da.path())], &append);
    let msg = assert_fatal_boot(&out);
    // The filesystem (label, UUID), how many devices it has, which were found.
    assert_mentions(&msg, &["root=LABEL=dockroot-test", FS_UUID, "dockroot-test", "2 devices", "devid 1 (/dev/vda)"]);
    assert_mentions(&msg, &["degraded"]);
    // The device table lists the member present: its type, label, UUID, size and devid.
    let row = device_row(&msg, "vda").unwrap_or_else(|| panic!("no table row for vda:\n{msg}"));
    let size = std::fs::metadata(da.path()).expect("stat the RAID1 member").len();
    for (col, want) in [
        ("FSTYPE", "btrfs".to_string()),
        ("LABEL", "dockroot-test".to_string()),
        ("UUID", FS_UUID.to_string()),
        ("SIZE", table_size(size)),
        ("DEVID", "1/2".to_string()),
        // The btrfs driver was loaded before the kernel was asked about the member.
        ("ERROR", "-".to_string()),
    ] {
        assert_eq!(row.get(col), Some(&want), "column {col} of vda's row {row:?}:\n{msg}");
    }
}

#[test]
fn raid1_with_a_member_missing_boots_degraded_when_asked() {
    let a = Artifacts::from_env();
    let l = Layouts::from_env();
    // Only the second member (devid 2), as /dev/vda.
    let db = Disk::copy_of(&l.raid1b);
    let append = format!(
        "root=UUID={FS_UUID} rootflags=subvol=rwlayer,degraded rw toplayer=UUID={FS_UUID} toplayer_path=toplayer \
         dockroot.timeout=4 --{}",
        stat_members(&["vda", "vdb"])
    );
    let out = boot_with("raid1_degraded", &a, generic(&a), vec![DiskSpec::virtio(db.path())], &append);
    let r = assert_booted(&out, "/dev/vda");
    assert_eq!(hostname(&r), FIXTURE_HOSTNAME);
    assert!(strings(&r["root_mount"]["super_options"]).iter().any(|o| o == "degraded"), "{}", r["root_mount"]);
    assert!(member(&r, "vda") && !member(&r, "vdb"), "{}", r["paths"]);
    // dockroot said loudly that it mounts without a member (not just the kernel).
    let warned = out.serial.lines().any(|l| {
        l.contains("dockroot: ")
            && l.to_lowercase().contains("degraded")
            && l.contains(FS_UUID)
            && l.contains("2 devices")
    });
    assert!(warned, "no dockroot warning about the degraded mount naming the filesystem:\n{}", out.tail(40));
}

// ---------------------------------------------------------------------------
// A disk plugged in while the init waits.
// ---------------------------------------------------------------------------

/// Dockroot's "found SPEC: DEV (FS) after N ms, N scans, N uevents" line: the line,
/// the wait in seconds, the scans and the uevents counted.
fn found_line(serial: &str, spec: &str) -> Option<(String, f64, u64, u64)> {
    let line = serial.lines().find(|l| l.contains(&format!("dockroot: found {spec}: ")))?.to_string();
    let after = line.rsplit(" after ").next()?;
    let mut it = after.split(", ");
    let waited = it.next()?;
    let waited = match waited.strip_suffix(" ms") {
        Some(ms) => ms.trim().parse::<f64>().ok()? / 1000.0,
        None => waited.trim().trim_end_matches('s').parse().ok()?,
    };
    let scans = it.next()?.strip_suffix(" scans")?.parse().ok()?;
    let uevents = it.next()?.trim().strip_suffix(" uevents")?.parse().ok()?;
    Some((line, waited, scans, uevents))
}

#[test]
fn a_disk_plugged_in_after_boot_started_is_found_at_once_without_polling() {
    let a = Artifacts::from_env();
    let disk = Disk::copy_of(&a.disk);
    let append = with_reboot_delay(&format!("{STANDARD_APPEND} dockroot.timeout=90"));
    let mut spec = BootSpec::new(a.kernel(), generic(&a), &[], &append);
    spec.name = Some("hw_hotplug".into());
    // No disk at start; the fixture disk arrives (PCI hotplug through ACPI) 4 s after
    // dockroot has loaded its modules, so the init is waiting for it.
    spec.hotplug = vec![Hotplug {
        disk: DiskSpec::virtio(disk.path()),
        after: Some("dockroot: kernel modules:".into()),
        delay: Duration::from_secs(4),
    }];
    let out = boot(&spec);
    assert_eq!(out.hotplugged.len(), 1, "the harness did not plug the disk in");
    let r = assert_booted(&out, "/dev/vda");
    assert_eq!(hostname(&r), FIXTURE_HOSTNAME);

    // The kernel's view: the disk appeared after the init started, while it waited.
    let run_init = out.kernel_to_init().expect("no 'Run /init' line");
    let appeared =
        printk_time(&out.serial, "[vda]").unwrap_or_else(|| panic!("no kernel line for vda:\n{}", out.tail(60)));
    assert!(appeared > run_init + 2.0, "vda appeared at {appeared} s, too soon after /init ({run_init} s)");
    // dockroot saw it right away (woken by the uevent) ...
    let spec_text = "LABEL=dockroot-test";
    let found_at = printk_time(&out.serial, &format!("dockroot: found {spec_text}: "))
        .unwrap_or_else(|| panic!("no 'found {spec_text}' line:\n{}", out.tail(60)));
    let latency = found_at - appeared;
    eprintln!("hotplug: vda appeared at {appeared:.3} s, dockroot found it at {found_at:.3} s ({latency:.3} s later)");
    assert!((0.0..1.0).contains(&latency), "dockroot found vda {latency:.3} s after it appeared:\n{}", out.tail(60));
    // ... after waiting seconds with a handful of scans (one per batch of block uevents),
    // where polling would have rescanned every few hundred ms.
    let (line, waited, scans, uevents) = found_line(&out.serial, spec_text)
        .unwrap_or_else(|| panic!("cannot parse the 'found' line:\n{}", out.tail(60)));
    assert!(waited >= 1.5, "the wait was too short to tell polling apart: {line}");
    assert!(scans <= 4, "{scans} scans in {waited} s: that is polling: {line}");
    assert!(uevents >= 1, "no uevent counted: {line}");
    assert!(!out.contains("rescanned every"), "the init fell back to polling:\n{}", out.tail(60));
}

// ---------------------------------------------------------------------------
// A missing driver.
// ---------------------------------------------------------------------------

#[test]
fn a_missing_disk_driver_gets_the_full_diagnostic_and_a_reboot() {
    let a = Artifacts::from_env();
    // btrfs and the virtio PCI transport (built into Debian 13's kernel), but no
    // virtio_blk: the virtio block device appears on the virtio bus, with no driver.
    let initrd = build_initramfs(&a, &["btrfs", "virtio_pci"], OS_CONFIG);
    let disk = Disk::copy_of(&a.disk);
    let append = format!("{STANDARD_APPEND} dockroot.timeout=4 dockroot.reboot_delay=1");
    let out = boot_with("missing_driver", &a, initrd, vec![DiskSpec::virtio(disk.path())], &append);
    let msg = assert_fatal_boot(&out);
    // The parameter that could not be satisfied, and the wait.
    assert_mentions(&msg, &["root=LABEL=dockroot-test", "no block device matching LABEL=dockroot-test", "4s"]);
    // The block devices seen: none.
    assert_mentions(&msg, &["(no block devices found)"]);
    // The modules loaded (btrfs among them) and the hardware no module in the initramfs matches.
    let loaded = words_after(&msg, "dockroot: modules loaded: ")
        .unwrap_or_else(|| panic!("no 'modules loaded:' line in the diagnostic:\n{msg}"));
    assert!(loaded.contains(&"btrfs"), "btrfs not among the modules loaded {loaded:?}:\n{msg}");
    assert!(!loaded.contains(&"virtio_blk"), "virtio_blk loaded although the initramfs lacks it: {loaded:?}");
    assert_mentions(&msg, &["virtio:d00000002v00001AF4"]);
    assert!(!out.contains("[vda]"), "a disk driver bound the virtio disk after all:\n{}", out.tail(40));
}

#[test]
fn diagnostic_helpers_read_dockroot_tables() {
    let msg = "[ 8.7] dockroot: NAME  MAJ:MIN  SIZE  FSTYPE  LABEL          UUID  DEVID  PARTUUID  PARTLABEL  ERROR\n\
               [ 8.7] dockroot: vda   254:0    512M  btrfs   dockroot-test  u-1   1/2    -         -          -\n\
               [ 8.7] dockroot: modules loaded: xor btrfs_extra libcrc32c\n";
    let row = device_row(msg, "vda").expect("row");
    assert_eq!(row["SIZE"], "512M");
    assert_eq!(row["LABEL"], "dockroot-test");
    assert!(device_row(msg, "vdb").is_none());
    let loaded = words_after(msg, "dockroot: modules loaded: ").expect("line");
    assert_eq!(loaded, ["xor", "btrfs_extra", "libcrc32c"]);
    assert!(!loaded.contains(&"btrfs"), "a word, not a substring");
    assert_eq!(table_size(536870912), "512M");
    assert_eq!(table_size(1536 * 1024), "1.5M");
    assert_eq!(table_size(512), "512");
}

#[test]
fn found_line_is_parsed() {
    let serial = "[   12.3] dockroot: found LABEL=dockroot-test: /dev/vda (btrfs) after 4213 ms, 2 scans, 9 uevents\n";
    let (_, waited, scans, uevents) = found_line(serial, "LABEL=dockroot-test").expect("parsed");
    assert!((waited - 4.213).abs() < 1e-9, "{waited}");
    assert_eq!((scans, uevents), (2, 9));
    assert!(found_line(serial, "LABEL=other").is_none());
}
