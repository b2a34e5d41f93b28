//! Boot tests: the dockroot initramfs boots the fixture disk (Docker data written by a
//! real dockerd) into the image `dockroot-test/os:latest`, whose /sbin/init is testinit.

use std::time::Duration;

use qemu_tests::{boot, build_initramfs, field, Artifacts, BootSpec, Disk};

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
