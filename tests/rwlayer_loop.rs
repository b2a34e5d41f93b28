//! The rw layer's install protocol on a loop-mounted btrfs: a normal
//! install retires the previous root read-only, and an install that fails
//! leaves the previous root in place and nothing half-done behind.

// Tests stop at the first failure: unwrap, expect and panic are how they say so.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fs;
use std::os::fd::AsFd;

use common::LoopBtrfs;
use dockroot::btrfs;
use dockroot::rwlayer::{At, Existing, RootInfo, RwStore};

fn info(image: char) -> RootInfo {
    RootInfo { created: dockroot::rwlayer::now_stamp(), image: format!("sha256:{}", image.to_string().repeat(64)) }
}

/// An "image" subvolume with an init and a marker file.
fn image(fs_: &LoopBtrfs, name: &str, marker: &str) {
    let top = LoopBtrfs::dir(&fs_.mnt);
    btrfs::create_subvolume(top.as_fd(), name).unwrap();
    fs::create_dir_all(fs_.mnt.join(name).join("sbin")).unwrap();
    fs::write(fs_.mnt.join(name).join("sbin/init"), "#!/bin/sh\n").unwrap();
    fs::write(fs_.mnt.join(name).join("marker"), marker).unwrap();
}

fn store(fs_: &LoopBtrfs) -> RwStore {
    let top = LoopBtrfs::dir(&fs_.mnt);
    RwStore::open(top.as_fd(), &["rw".to_string()]).unwrap()
}

/// Build a new root from `source` and install it.
fn install(fs_: &LoopBtrfs, source: &str, image: char) -> dockroot::Result<dockroot::rwlayer::Commit> {
    let store = store(fs_);
    let src = LoopBtrfs::dir(&fs_.mnt.join(source));
    store.begin(src.as_fd(), &info(image)).unwrap();
    store.commit(3)
}

fn names(fs_: &LoopBtrfs) -> Vec<String> {
    let mut n: Vec<String> =
        fs::read_dir(&fs_.mnt).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    n.sort();
    n
}

#[test]
fn install_retires_the_previous_root_read_only() {
    let fs_ = LoopBtrfs::new();
    image(&fs_, "img-a", "a");
    image(&fs_, "img-b", "b");
    let first = install(&fs_, "img-a", 'a').unwrap();
    assert_eq!(first.retired, None);
    let second = install(&fs_, "img-b", 'b').unwrap();
    let retired = second.retired.expect("the first root is retired");
    assert_eq!(fs::read_to_string(fs_.mnt.join("rw/marker")).unwrap(), "b");
    let store = store(&fs_);
    let kept = store.kept().unwrap();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(retired.ends_with(&kept[0]), "{retired} vs {kept:?}");
    let kept_dir = LoopBtrfs::dir(&fs_.mnt.join(store.path(&At::Kept(kept[0].clone()))));
    assert!(btrfs::is_readonly(kept_dir.as_fd()).unwrap(), "kept roots are read-only");
    assert_eq!(names(&fs_), ["img-a", "img-b", "rw", "rw.kept"]);
}

#[test]
fn a_failed_install_leaves_the_previous_root_in_place() {
    let fs_ = LoopBtrfs::new();
    image(&fs_, "img-a", "a");
    image(&fs_, "img-b", "b");
    install(&fs_, "img-a", 'a').unwrap();
    fs::write(fs_.mnt.join("rw/changed-by-the-user"), "keep me").unwrap();
    // Something that is not a directory where the kept roots go: retiring fails.
    fs::write(fs_.mnt.join("rw.kept"), "not a directory").unwrap();

    let err = install(&fs_, "img-b", 'b').unwrap_err().to_string();
    assert!(err.contains("rw.kept") && err.contains("the previous root stays in place"), "{err}");
    // The previous root is where it was, writable, with the user's change;
    // the new root is gone (neither temporary nor ready name is left).
    assert_eq!(fs::read_to_string(fs_.mnt.join("rw/marker")).unwrap(), "a");
    assert_eq!(fs::read_to_string(fs_.mnt.join("rw/changed-by-the-user")).unwrap(), "keep me");
    let store = store(&fs_);
    assert_eq!(store.kind(&At::Current).unwrap(), Existing::Subvolume);
    assert!(!btrfs::is_readonly(LoopBtrfs::dir(&fs_.mnt.join("rw")).as_fd()).unwrap());
    assert_eq!(names(&fs_), ["img-a", "img-b", "rw", "rw.kept"]);
    assert_eq!(fs::read_to_string(fs_.mnt.join("rw.kept")).unwrap(), "not a directory", "not ours: untouched");
    // Nothing is left for the next boot's recovery but the stranger at rw.kept,
    // which it reports (the boot warns) and leaves alone.
    assert_eq!(store.kind(&At::Tmp).unwrap(), Existing::Absent);
    let e = store.recover().unwrap_err().to_string();
    assert!(e.contains("rw.kept"), "{e}");
    assert_eq!(names(&fs_), ["img-a", "img-b", "rw", "rw.kept"]);
}
