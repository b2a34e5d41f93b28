//! `--update` and `--remove` end to end on a directory tree standing for a system
//! (`--root`): what the packages' kernel hooks run.

mod common;

use std::path::Path;

use common::*;

/// A system under `root`: one kernel with a btrfs module (and one without an image in
/// /boot), the packaged init (busybox-static standing in), and the settings given.
fn system(root: &Path, settings: Option<&str>) {
    let t = Tree::new(&root.join("usr"), RELEASE);
    t.module("kernel/fs/btrfs/btrfs.ko", "btrfs", RELEASE, &["depends="]);
    t.module("kernel/drivers/md/dm-crypt.ko", "dm_crypt", RELEASE, &["depends="]);
    t.file("modules.dep", "kernel/fs/btrfs/btrfs.ko:\nkernel/drivers/md/dm-crypt.ko:\n");
    std::fs::create_dir_all(root.join("usr/lib/modules/6.0-no-image")).unwrap();
    std::fs::create_dir_all(root.join("boot")).unwrap();
    std::fs::write(root.join(format!("boot/vmlinuz-{RELEASE}")), b"kernel").unwrap();
    std::fs::create_dir_all(root.join("usr/lib/dockroot")).unwrap();
    std::fs::copy(static_init(), root.join("usr/lib/dockroot/dockroot-init")).unwrap();
    if let Some(s) = settings {
        std::fs::create_dir_all(root.join("etc/dockroot")).unwrap();
        std::fs::write(root.join("etc/dockroot/mkinitramfs.conf"), s).unwrap();
    }
}

#[test]
fn update_all_writes_each_installed_kernels_image_and_remove_removes_it() {
    let dir = temp_dir("update");
    let root = dir.join("root");
    system(&root, Some("MODULES=dm_crypt\nIMAGE=myname/desktop:v2\n"));
    let root_arg = root.display().to_string();
    let out = run(&["--update", "--all", "--root", &root_arg], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(out.stdout.is_empty(), "nothing on stdout: {:?}", String::from_utf8_lossy(&out.stdout));
    let image = root.join(format!("boot/initrd.img-{RELEASE}"));
    assert!(stderr(&out).contains(&format!("wrote {} for kernel {RELEASE}", image.display())), "{}", stderr(&out));
    assert!(!root.join("boot/initrd.img-6.0-no-image").exists());
    let e = entries(&image);
    assert_eq!(find(&e, "init").data, std::fs::read(static_init()).unwrap());
    let config = String::from_utf8(find(&e, "etc/docker-btrfs.json").data.clone()).unwrap();
    assert!(config.contains("myname/desktop:v2"), "{config}");
    // The generic set and MODULES= (the generic set's names this kernel lacks are skipped).
    let idx = index(&e);
    // What loads at every boot comes first in the load order; filesystems load on demand.
    assert_eq!(names(&idx), ["dm_crypt", "btrfs"]);
    // No commands in this tree: left out.
    assert!(!e.iter().any(|x| x.name.ends_with("dockroot/dockroot")));

    // /etc/docker-btrfs.json wins over IMAGE=.
    std::fs::write(root.join("etc/docker-btrfs.json"), r#"{"docker_image": "os", "docker_tag": "7"}"#).unwrap();
    let out = run(&["--update", RELEASE, "--root", &root_arg], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(find(&entries(&image), "etc/docker-btrfs.json").data, br#"{"docker_image": "os", "docker_tag": "7"}"#);

    let out = run(&["--remove", RELEASE, "--root", &root_arg], &[]);
    assert!(out.status.success() && out.stdout.is_empty(), "{}", stderr(&out));
    assert!(!image.exists());
    // Again: nothing to remove is no error.
    let out = run(&["--remove", RELEASE, "--root", &root_arg], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn update_fails_clearly_without_an_image_or_with_bad_settings() {
    let dir = temp_dir("update-fail");
    let root = dir.join("root");
    system(&root, None);
    let root_arg = root.display().to_string();
    let out = run(&["--update", RELEASE, "--root", &root_arg], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no image to boot"), "{}", stderr(&out));
    assert!(!root.join(format!("boot/initrd.img-{RELEASE}")).exists());

    std::fs::create_dir_all(root.join("etc/dockroot")).unwrap();
    std::fs::write(root.join("etc/dockroot/mkinitramfs.conf"), "IMAGE=os\nMODE=tiny\n").unwrap();
    let out = run(&["--update", "--all", "--root", &root_arg], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("mkinitramfs.conf, line 2: MODE=\"tiny\""), "{}", stderr(&out));

    // A module the settings name that this kernel lacks is an error, as --module is.
    std::fs::write(root.join("etc/dockroot/mkinitramfs.conf"), "IMAGE=os\nMODULES=nosuch\n").unwrap();
    let out = run(&["--update", RELEASE, "--root", &root_arg], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("nosuch"), "{}", stderr(&out));

    let out = run(&["--update", "6.9-not-installed", "--root", &root_arg], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("kernel 6.9-not-installed has no modules directory"), "{}", stderr(&out));
    assert_eq!(run(&["--update"], &[]).status.code(), Some(2));
    let _ = std::fs::remove_dir_all(&dir);
}
