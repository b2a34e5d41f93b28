//! Boot tests: the dockroot initramfs boots the fixture disk (Docker data written by a
//! real dockerd) into the image `dockroot-test/os:latest`, whose /sbin/init is testinit.

use std::time::Duration;

use qemu_tests::{boot, build_initramfs, field, sh, with_mounted, Artifacts, BootSpec, Disk};

const MODULES: &[&str] = &["virtio_blk", "virtio_pci", "btrfs"];
const OS_CONFIG: &str = r#"{"docker_image":"dockroot-test/os","docker_tag":"latest"}"#;
const STANDARD_APPEND: &str =
    "root=LABEL=dockroot-test rootflags=subvol=rwlayer rw toplayer=LABEL=dockroot-test toplayer_path=toplayer";

#[test]
fn fresh_boot_reaches_the_image_init_with_the_top_layer() {
    let a = Artifacts::from_env();
    let initrd = build_initramfs(&a, MODULES, OS_CONFIG);
    let disk = Disk::copy_of(&a.disk);
    let mut spec = BootSpec::new(a.kernel(), initrd, &[disk.path()], STANDARD_APPEND);
    spec.timeout = Duration::from_secs(180);
    let out = boot(&spec);
    let r = out.expect_testinit();

    assert_eq!(r["pid"], 1, "{r}");
    assert_eq!(r["argv"][0], "/sbin/init", "{r}");
    let root = &r["root_mount"];
    assert_eq!(root["fstype"], "btrfs", "{root}");
    let super_opts: Vec<&str> = root["super_options"].as_array().unwrap().iter().filter_map(|v| v.as_str()).collect();
    assert!(super_opts.contains(&"subvol=/rwlayer"), "root not the rw layer: {root}");
    let mount_opts: Vec<&str> = root["mount_options"].as_array().unwrap().iter().filter_map(|v| v.as_str()).collect();
    assert!(mount_opts.contains(&"rw"), "root not mounted rw: {root}");
    assert_eq!(field(&r, &["root_btrfs", "is_subvolume"]), true, "{r}");

    for (path, content) in [("/layer1.txt", "layer1\n"), ("/layer2.txt", "layer2\n"), ("/layer3.txt", "layer3\n")] {
        assert_eq!(field(&r, &["paths", path, "content"]), content, "{path}: {}", field(&r, &["paths", path]));
    }
    assert_eq!(field(&r, &["paths", "/variant.txt", "exists"]), false, "the variant image's layer leaked in");
    assert_eq!(field(&r, &["paths", "/etc/hostname", "content"]), "dockroot-test-machine\n", "top layer not applied");
    assert_eq!(r["errors"], serde_json::json!([]), "{r}");
}

#[test]
fn second_boot_replaces_the_rw_layer_and_its_nested_subvolume() {
    let a = Artifacts::from_env();
    let initrd = build_initramfs(&a, MODULES, OS_CONFIG);
    let disk = Disk::copy_of(&a.disk);

    // First boot: testinit leaves a marker file and a nested subvolume in the rw layer.
    let mut spec =
        BootSpec::new(a.kernel(), initrd.clone(), &[disk.path()], &format!("{STANDARD_APPEND} -- --make-nested"));
    spec.name = Some("second_boot_first".into());
    let first = boot(&spec).expect_testinit();
    assert_eq!(first["errors"], serde_json::json!([]), "{first}");
    assert_eq!(field(&first, &["make_nested", "subvolume"]), "/var/lib/machines", "{first}");
    assert_eq!(field(&first, &["paths", "/var/tmp/from-previous-boot", "exists"]), true);
    assert_eq!(field(&first, &["paths", "/var/lib/machines", "btrfs", "is_subvolume"]), true, "{first}");
    let first_root_id = field(&first, &["root_btrfs", "subvolume_id"]).as_u64().expect("rw layer subvolume id");

    // Second boot from the same disk: a fresh rw layer, without the leftovers.
    let spec = BootSpec {
        name: Some("second_boot_second".into()),
        ..BootSpec::new(a.kernel(), initrd, &[disk.path()], STANDARD_APPEND)
    };
    let second = boot(&spec).expect_testinit();
    assert_eq!(second["errors"], serde_json::json!([]), "{second}");
    assert_eq!(field(&second, &["paths", "/var/tmp/from-previous-boot", "exists"]), false, "rw layer not replaced");
    assert_eq!(field(&second, &["paths", "/var/lib/machines", "exists"]), false, "nested subvolume survived");
    assert_eq!(field(&second, &["paths", "/layer3.txt", "content"]), "layer3\n");
    assert_eq!(field(&second, &["paths", "/etc/hostname", "content"]), "dockroot-test-machine\n");
    let second_root_id = field(&second, &["root_btrfs", "subvolume_id"]).as_u64().expect("rw layer subvolume id");
    assert_ne!(first_root_id, second_root_id, "the rw layer must be a new snapshot");
}

// ---------------------------------------------------------------------------
// Helpers for the scenarios below.
// ---------------------------------------------------------------------------

/// Boot a fresh copy of the fixture with `append`; returns the output.
fn boot_fixture(name: &str, append: &str) -> qemu_tests::BootOutput {
    let a = Artifacts::from_env();
    let initrd = build_initramfs(&a, MODULES, OS_CONFIG);
    let disk = Disk::copy_of(&a.disk);
    boot_disk(name, &a, initrd, &disk, append)
}

fn boot_disk(
    name: &str,
    a: &Artifacts,
    initrd: std::path::PathBuf,
    disk: &Disk,
    append: &str,
) -> qemu_tests::BootOutput {
    let spec = BootSpec { name: Some(name.into()), ..BootSpec::new(a.kernel(), initrd, &[disk.path()], append) };
    boot(&spec)
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect()).unwrap_or_default()
}

/// A failed boot must end in dockroot's message and a reboot ([`assert_fatal_boot`]),
/// with each of `wants` in the output; returns the "cannot boot" line.
fn assert_fatal(out: &qemu_tests::BootOutput, wants: &[&str]) -> String {
    let fatal = qemu_tests::assert_fatal_boot(out);
    for w in wants {
        assert!(out.serial.contains(w), "missing {w:?} in the failure output:\n{}", out.tail(60));
    }
    fatal.lines().next().unwrap_or_default().to_string()
}

// ---------------------------------------------------------------------------
// Scenarios.
// ---------------------------------------------------------------------------

#[test]
fn the_booted_system_sees_a_clean_handover_and_dockroots_log() {
    let out = boot_fixture("handover", STANDARD_APPEND);
    let r = out.expect_testinit();
    // A clean environment: only what the kernel gives an init.
    assert_eq!(r["env"], serde_json::json!({"HOME": "/", "TERM": "linux"}), "{r}");
    // The API filesystems moved into the new root.
    let mounts = r["mounts"].as_array().expect("mounts");
    for (point, fstype) in [("/dev", "devtmpfs"), ("/proc", "proc"), ("/sys", "sysfs"), ("/run", "tmpfs")] {
        assert!(
            mounts.iter().any(|m| m["mount_point"] == point && m["fstype"] == fstype),
            "{point} ({fstype}) not mounted in the new root: {}",
            r["mounts"]
        );
    }
    // No staging mount of dockroot's survived the switch.
    assert!(!mounts.iter().any(|m| m["mount_point"].as_str().unwrap_or("").contains(".dockroot")), "{}", r["mounts"]);
    // The booted system's kernel log has dockroot's whole story.
    let kmsg = strings(&r["kmsg_dockroot"]);
    for want in [
        "dockroot: found LABEL=dockroot-test: /dev/vda",
        "dockroot: rw layer /rwlayer is a fresh snapshot",
        // toplayer= is the root partition: read through the top-level mount, no second mount.
        "dockroot: toplayer=LABEL=dockroot-test is the root partition: reading /toplayer through its top-level mount",
        "dockroot: top layer /.dockroot/top/toplayer applied",
        "dockroot: ready: ",
    ] {
        assert!(kmsg.iter().any(|l| l.starts_with(want)), "kmsg lacks {want:?}: {kmsg:#?}");
    }
    assert!(!out.contains("/.dockroot/toplayer"), "the root partition was mounted again for the top layer");
    // Not systemd: the kernel's plain argv, no hand-over flags.
    assert_eq!(strings(&r["argv"]), vec!["/sbin/init"], "{r}");
    assert!(r.get("deserialize").is_none(), "{r}");
    // /run as systemd wants it from an initramfs: mode=0755,nodev,nosuid,strictatime.
    let run = &r["special_mounts"]["/run"];
    let opts = strings(&run["mount_options"]);
    for want in ["nosuid", "nodev"] {
        assert!(opts.iter().any(|o| o == want), "/run lacks {want}: {run}");
    }
    assert!(!opts.iter().any(|o| o == "relatime" || o == "noatime"), "/run is not strictatime: {run}");
    assert!(strings(&run["super_options"]).iter().any(|o| o == "mode=755"), "{run}");
    // The boot's whole log beside boot.json, up to the init's start.
    let log = r["boot_log"].as_str().unwrap_or_else(|| panic!("no /run/dockroot/boot.log: {}", r["boot_log"]));
    let lines: Vec<&str> = log.lines().collect();
    assert!(lines.first().is_some_and(|l| l.contains("] dockroot: dockroot ") && l.ends_with(" starting")), "{log}");
    for want in
        ["] dockroot: found LABEL=dockroot-test: /dev/vda", "] dockroot: ready: ", "] dockroot: starting /sbin/init"]
    {
        assert!(lines.iter().any(|l| l.contains(want)), "boot.log lacks {want:?}:\n{log}");
    }
    assert!(lines.iter().all(|l| l.starts_with('[')), "{log}");
    assert!(!log.contains("more messages are not in this file"), "{log}");
}

#[test]
fn systemd_is_handed_the_initramfs_timestamp() {
    // The image's /sbin/init is a symlink to /usr/lib/systemd/systemd (testinit there).
    let append = format!("{STANDARD_APPEND} dockroot.image=dockroot-test/systemd-ish -- single");
    let out = boot_fixture("systemd_handover", &append);
    let r = out.expect_testinit();
    assert_eq!(r["pid"], 1, "{r}");
    let argv = strings(&r["argv"]);
    let fd = field(&r, &["deserialize", "fd"]).as_i64().unwrap_or_else(|| panic!("no --deserialize fd: {r}"));
    assert_eq!(argv, ["/sbin/init", "--switched-root", "--system", "--deserialize", &fd.to_string(), "single"], "{r}");
    let d = &r["deserialize"];
    assert_eq!(d["open"], true, "{d}");
    assert_eq!(d["cloexec"], false, "{d}");
    assert!(d["target"].as_str().is_some_and(|t| t.starts_with("/memfd:")), "{d}");
    let content = d["content"].as_str().unwrap_or_default();
    let values = content.strip_prefix("initrd-timestamp=").and_then(|v| v.strip_suffix('\n'));
    let nums: Vec<u64> = values.unwrap_or_default().split(' ').filter_map(|n| n.parse().ok()).collect();
    let [realtime, monotonic] = nums[..] else { panic!("not one line `initrd-timestamp=A B`: {content:?}") };
    let now_rt = d["now_realtime_us"].as_u64().expect("realtime now");
    let now_mono = d["now_monotonic_us"].as_u64().expect("monotonic now");
    assert!(monotonic > 0 && monotonic < now_mono, "{monotonic} vs now {now_mono}");
    // dockroot started after the kernel and before this init, and its realtime matches.
    let since = now_mono - monotonic;
    assert!(
        realtime <= now_rt && now_rt - realtime < since + 2_000_000,
        "{realtime} vs now {now_rt}, {since} us since"
    );
    let host_now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as u64;
    assert!(host_now.abs_diff(realtime) < 3_600_000_000, "realtime {realtime} far from the host's {host_now}");
    assert!(out.contains("dockroot: starting /sbin/init (systemd: --switched-root --deserialize)"), "{}", out.tail(30));
    assert_eq!(r["errors"], serde_json::json!([]), "{r}");
}

#[test]
fn top_layer_keeps_dotfiles_modes_owners_symlinks_and_hard_links() {
    let out = boot_fixture("toplayer", STANDARD_APPEND);
    let r = out.expect_testinit();
    let p = |path: &str, key: &str| field(&r, &["paths", path, key]).clone();
    assert_eq!(p("/root/.dotfile", "content"), "dotfile from the top layer\n");
    assert_eq!(p("/etc/secret", "mode"), "0600");
    assert_eq!(p("/etc/secret", "uid"), 1000);
    assert_eq!(p("/etc/secret", "gid"), 1000);
    assert_eq!(p("/etc/secret", "content"), "top secret\n");
    assert_eq!(p("/etc/motd-link", "type"), "symlink");
    assert_eq!(p("/etc/motd-link", "symlink_target"), "hostname");
    assert_eq!(p("/etc/hard-a", "ino"), p("/etc/hard-b", "ino"), "hard link not kept");
    assert_eq!(p("/etc/hard-a", "nlink"), 2);
    // The image's own /etc/hostname was replaced by the top layer's.
    assert_eq!(p("/etc/hostname", "content"), "dockroot-test-machine\n");
}

#[test]
fn root_by_uuid_is_read_only_by_default() {
    let uuid = "5c0a6d1e-2b7f-4f3e-9a8d-d0c4e700f1c5";
    // An upper-case UUID and a docker_path with a leading slash mean the same thing.
    let append = format!(
        "root=UUID={} rootflags=subvol=/rwlayer docker_path=/var/lib/docker toplayer=UUID={uuid} toplayer_path=/toplayer",
        uuid.to_uppercase()
    );
    let r = boot_fixture("root_by_uuid", &append).expect_testinit();
    let opts = strings(&r["root_mount"]["mount_options"]);
    assert!(opts.contains(&"ro".to_string()), "root must be read-only without rw: {opts:?}");
    assert!(strings(&r["root_mount"]["super_options"]).contains(&"subvol=/rwlayer".to_string()), "{r}");
    assert_eq!(field(&r, &["paths", "/layer3.txt", "content"]), "layer3\n");
    assert_eq!(field(&r, &["paths", "/etc/hostname", "content"]), "dockroot-test-machine\n");
}

#[test]
fn image_chosen_on_the_command_line_by_registry_port_path_tag() {
    let append = format!("{STANDARD_APPEND} dockroot.image=localhost:5000/team/os:v1");
    let out = boot_fixture("image_by_name", &append);
    let r = out.expect_testinit();
    assert_eq!(field(&r, &["paths", "/variant.txt", "content"]), "variant\n", "not the variant image");
    assert_eq!(field(&r, &["paths", "/layer2.txt", "exists"]), false, "the embedded config's image was booted");
    assert_eq!(field(&r, &["paths", "/layer1.txt", "content"]), "layer1\n");
    assert_eq!(field(&r, &["paths", "/etc/hostname", "content"]), "dockroot-test-machine\n");
    assert!(out.contains("image localhost:5000/team/os:v1 is sha256:"), "{}", out.tail(30));
}

#[test]
fn image_chosen_by_a_short_image_id() {
    let a = Artifacts::from_env();
    let id = a.fixture()["images"]["variant"]["id"].as_str().expect("variant id in fixture.json").to_string();
    let short = &id["sha256:".len().."sha256:".len() + 12];
    let r = boot_fixture("image_by_id", &format!("{STANDARD_APPEND} dockroot.image={short}")).expect_testinit();
    assert_eq!(field(&r, &["paths", "/variant.txt", "content"]), "variant\n", "image ID {short} not booted");
}

#[test]
fn init_with_arguments() {
    // `single` is not a kernel parameter, so the kernel hands it to init; so is
    // everything after `--`, quoting and all.
    let append = format!(r#"{STANDARD_APPEND} init=/sbin/init single -- alpha "beta gamma""#);
    let r = boot_fixture("init_args", &append).expect_testinit();
    assert_eq!(strings(&r["argv"]), vec!["/sbin/init", "single", "alpha", "beta gamma"], "{r}");
    assert_eq!(r["pid"], 1);
}

#[test]
fn missing_init_is_a_clear_error_and_a_reboot() {
    let out = boot_fixture("missing_init", &format!("{STANDARD_APPEND} init=/sbin/nope dockroot.reboot_delay=1"));
    assert_fatal(&out, &["no init found in the new root", "/sbin/nope"]);
}

#[test]
fn unknown_image_is_a_clear_error_and_a_reboot() {
    let out = boot_fixture(
        "unknown_image",
        &format!("{STANDARD_APPEND} dockroot.image=no/such:image dockroot.reboot_delay=1"),
    );
    let line = assert_fatal(&out, &["dockroot-test/os:latest", "localhost:5000/team/os:v1"]);
    assert!(line.contains("no/such:image"), "the message must name the image: {line}");
}

#[test]
fn missing_root_device_lists_what_was_seen() {
    let append = "root=LABEL=no-such-disk rootflags=subvol=rwlayer dockroot.timeout=3 dockroot.reboot_delay=1";
    let out = boot_fixture("missing_root", append);
    let line = assert_fatal(&out, &["vda", "btrfs", "dockroot-test", "5c0a6d1e-2b7f-4f3e-9a8d-d0c4e700f1c5"]);
    assert!(line.contains("root=LABEL=no-such-disk") && line.contains("LABEL=no-such-disk"), "{line}");
}

#[test]
fn a_plain_directory_at_the_rw_layer_name_is_refused_and_kept() {
    let a = Artifacts::from_env();
    let initrd = build_initramfs(&a, MODULES, OS_CONFIG);
    let disk = Disk::copy_of(&a.disk);
    with_mounted(disk.path(), |m| {
        std::fs::create_dir(m.join("precious")).unwrap();
        std::fs::write(m.join("precious/thesis.txt"), b"years of work\n").unwrap();
    });
    let append = "root=LABEL=dockroot-test rootflags=subvol=precious rw dockroot.reboot_delay=1";
    let out = boot_disk("plain_dir_rw", &a, initrd, &disk, append);
    assert_fatal(&out, &["\"precious\"", "plain directory", "refusing to delete it"]);
    with_mounted(disk.path(), |m| {
        assert_eq!(std::fs::read_to_string(m.join("precious/thesis.txt")).unwrap(), "years of work\n");
    });
}

/// The top layer on a second disk (ext4), with the prior art's parameters for
/// its type and mount options, the root's type, a rootdelay, and an init at a
/// non-default path (a symlink the top layer adds) with arguments.
#[test]
fn top_layer_on_a_separate_ext4_disk() {
    let a = Artifacts::from_env();
    let initrd = build_initramfs(&a, &["virtio_blk", "virtio_pci", "btrfs", "ext4"], OS_CONFIG);
    let disk = Disk::copy_of(&a.disk);
    // A second disk: ext4 labelled "machine", made from a directory on the host.
    let work = tempfile::tempdir().expect("temp dir");
    let top = work.path().join("top");
    std::fs::create_dir_all(top.join("machine/etc")).unwrap();
    std::fs::create_dir_all(top.join("machine/usr/local/sbin")).unwrap();
    std::fs::write(top.join("machine/etc/hostname"), b"from-the-ext4-disk\n").unwrap();
    std::fs::write(top.join("machine/etc/only-here"), b"ext4\n").unwrap();
    // An absolute symlink: resolved inside the new root, to the image's testinit.
    std::os::unix::fs::symlink("/sbin/init", top.join("machine/usr/local/sbin/alt-init")).unwrap();
    let ext4 = work.path().join("machine.img");
    sh(&format!("mkfs.ext4 -q -L machine -d '{}' '{}' 16M", top.display(), ext4.display()));

    let append = "root=LABEL=dockroot-test rootfstype=btrfs rootflags=subvol=rwlayer rw rootdelay=2 \
                  toplayer=LABEL=machine toplayerfstype=ext4 toplayerflags=ro,noload toplayer_path=machine \
                  init=/usr/local/sbin/alt-init -- --stat /etc/only-here \"two words\"";
    let spec = BootSpec {
        name: Some("toplayer_ext4".into()),
        ..BootSpec::new(a.kernel(), initrd, &[disk.path(), &ext4], append)
    };
    let out = boot(&spec);
    let r = out.expect_testinit();
    assert_eq!(r["errors"], serde_json::json!([]), "{r}");
    assert_eq!(field(&r, &["paths", "/etc/hostname", "content"]), "from-the-ext4-disk\n", "{}", out.tail(30));
    assert_eq!(field(&r, &["paths", "/etc/only-here", "content"]), "ext4\n");
    // The btrfs partition's own toplayer/ directory was not used.
    assert_eq!(field(&r, &["paths", "/root/.dotfile", "exists"]), false);
    assert!(out.contains("dockroot: top layer /.dockroot/toplayer/machine applied"), "{}", out.tail(30));
    // Nothing of the top layer's device stays mounted in the booted system.
    assert!(!r["mounts"].as_array().unwrap().iter().any(|m| m["fstype"] == "ext4"), "{}", r["mounts"]);

    // init= at a non-default path, exec'd by that path, with the arguments after --.
    assert_eq!(r["pid"], 1);
    assert_eq!(strings(&r["argv"]), vec!["/usr/local/sbin/alt-init", "--stat", "/etc/only-here", "two words"], "{r}");
    assert!(out.contains("dockroot: starting /usr/local/sbin/alt-init"), "{}", out.tail(30));

    // rootfstype=btrfs: the root is the rw layer, a btrfs subvolume; and a private mount.
    let root = &r["root_mount"];
    assert_eq!(root["fstype"], "btrfs", "{root}");
    assert!(strings(&root["super_options"]).contains(&"subvol=/rwlayer".to_string()), "{root}");
    let optional = strings(&root["optional_fields"]);
    assert!(!optional.iter().any(|f| f.starts_with("shared:")), "/ is a shared mount: {root}");

    // rootdelay=2: waited before looking for the root device, and timed.
    let kmsg = strings(&r["kmsg_dockroot"]);
    let delay_line = "dockroot: waiting 2s (rootdelay) before looking for LABEL=dockroot-test";
    assert!(kmsg.iter().any(|l| l == delay_line), "kmsg lacks {delay_line:?}: {kmsg:#?}");
    let stages = &r["boot_record"]["stages_ms"];
    let waited = stages["root device"].as_f64().unwrap_or_else(|| panic!("no root device stage: {stages}"));
    assert!(waited >= 2000.0, "the root device stage took {waited} ms, less than rootdelay=2: {stages}");
    // The kernel's rootdelay is for the root device: the top layer's device is not delayed again.
    let toplayer_delays = kmsg.iter().filter(|l| l.contains("(rootdelay) before looking for LABEL=machine")).count();
    assert_eq!(toplayer_delays, 0, "rootdelay was waited again for toplayer=: {kmsg:#?}");
}

#[test]
fn an_initramfs_for_another_kernel_is_refused_with_both_releases() {
    let a = Artifacts::from_env();
    let other = a.with_other_kernel();
    // Modules of this kernel, booted by the other one.
    let initrd = build_initramfs(&a, MODULES, OS_CONFIG);
    let disk = Disk::copy_of(&a.disk);
    let spec = BootSpec {
        name: Some("other_kernel".into()),
        ..BootSpec::new(other.kernel(), initrd, &[disk.path()], &format!("{STANDARD_APPEND} dockroot.reboot_delay=1"))
    };
    let out = boot(&spec);
    let line = assert_fatal(&out, &["rebuild the initramfs"]);
    assert!(line.contains(&a.kernel_release()) && line.contains(&other.kernel_release()), "{line}");
}
