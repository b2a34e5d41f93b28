//! btrfs ioctls on a loop-mounted btrfs (run as root).

// Tests stop at the first failure: unwrap, expect and panic are how they say so.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fs;
use std::os::fd::AsFd;

use common::{LoopBtrfs, TempDir};
use dockroot::btrfs;

#[test]
fn create_and_detect_subvolumes() {
    let fs = LoopBtrfs::new();
    let top = LoopBtrfs::dir(&fs.mnt);
    assert!(btrfs::is_btrfs(top.as_fd()).unwrap());
    assert!(btrfs::is_subvolume(top.as_fd()).unwrap(), "the top level is a subvolume");
    assert_eq!(btrfs::subvolume_id(top.as_fd()).unwrap(), 5);

    btrfs::create_subvolume(top.as_fd(), "sv").unwrap();
    fs::create_dir(fs.mnt.join("plain")).unwrap();
    let sv = LoopBtrfs::dir(&fs.mnt.join("sv"));
    let plain = LoopBtrfs::dir(&fs.mnt.join("plain"));
    assert!(btrfs::is_subvolume(sv.as_fd()).unwrap());
    assert!(!btrfs::is_subvolume(plain.as_fd()).unwrap());
    let id = btrfs::subvolume_id(sv.as_fd()).unwrap();
    assert!(id >= 256, "{id}");
    // A plain directory reports the subvolume that contains it.
    assert_eq!(btrfs::subvolume_id(plain.as_fd()).unwrap(), 5);
    assert_eq!(fs.subvolume_list(), vec!["sv".to_string()]);

    // Existing name, bad names.
    let e = btrfs::create_subvolume(top.as_fd(), "sv").unwrap_err();
    assert_eq!(e.errno(), Some(rustix::io::Errno::EXIST), "{e}");
    assert!(e.to_string().contains("/sv"), "{e}");
    assert!(btrfs::create_subvolume(top.as_fd(), "a/b").is_err());
    assert!(btrfs::create_subvolume(top.as_fd(), "..").is_err());

    // Not on btrfs at all.
    let t = TempDir::new("notbtrfs");
    let d = LoopBtrfs::dir(&t.path);
    assert!(!btrfs::is_btrfs(d.as_fd()).unwrap());
    assert!(!btrfs::is_subvolume(d.as_fd()).unwrap());
}

#[test]
fn snapshots_writable_and_readonly() {
    let fs = LoopBtrfs::new();
    let top = LoopBtrfs::dir(&fs.mnt);
    btrfs::create_subvolume(top.as_fd(), "base").unwrap();
    fs::write(fs.mnt.join("base/file"), b"hello").unwrap();
    let base = LoopBtrfs::dir(&fs.mnt.join("base"));

    btrfs::snapshot(base.as_fd(), top.as_fd(), "rw", false).unwrap();
    btrfs::snapshot(base.as_fd(), top.as_fd(), "ro", true).unwrap();
    assert_eq!(fs::read(fs.mnt.join("rw/file")).unwrap(), b"hello");
    assert_eq!(fs::read(fs.mnt.join("ro/file")).unwrap(), b"hello");

    fs::write(fs.mnt.join("rw/new"), b"x").unwrap();
    assert!(!fs.mnt.join("base/new").exists(), "snapshot writes must not reach the source");
    let e = fs::write(fs.mnt.join("ro/new"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");

    let rw = LoopBtrfs::dir(&fs.mnt.join("rw"));
    let ro = LoopBtrfs::dir(&fs.mnt.join("ro"));
    assert!(btrfs::is_subvolume(rw.as_fd()).unwrap());
    assert!(!btrfs::is_readonly(rw.as_fd()).unwrap());
    assert!(btrfs::is_readonly(ro.as_fd()).unwrap());
    let ids = [&base, &rw, &ro].map(|f| btrfs::subvolume_id(f.as_fd()).unwrap());
    assert!(ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2], "{ids:?}");

    // The source must be a subvolume root.
    fs::create_dir(fs.mnt.join("base/sub")).unwrap();
    let sub = LoopBtrfs::dir(&fs.mnt.join("base/sub"));
    let e = btrfs::snapshot(sub.as_fd(), top.as_fd(), "bad", false).unwrap_err().to_string();
    assert!(e.contains("not the root of a btrfs subvolume"), "{e}");
    assert!(!fs.mnt.join("bad").exists());
}

#[test]
fn set_readonly_toggles() {
    let fs = LoopBtrfs::new();
    let top = LoopBtrfs::dir(&fs.mnt);
    btrfs::create_subvolume(top.as_fd(), "k").unwrap();
    let k = LoopBtrfs::dir(&fs.mnt.join("k"));
    btrfs::set_readonly(k.as_fd(), true).unwrap();
    assert!(btrfs::is_readonly(k.as_fd()).unwrap());
    let e = fs::write(fs.mnt.join("k/f"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS));
    btrfs::set_readonly(k.as_fd(), true).unwrap(); // idempotent
    btrfs::set_readonly(k.as_fd(), false).unwrap();
    assert!(!btrfs::is_readonly(k.as_fd()).unwrap());
    fs::write(fs.mnt.join("k/f"), b"x").unwrap();
    btrfs::sync(k.as_fd()).unwrap();

    fs::create_dir(fs.mnt.join("k/d")).unwrap();
    let d = LoopBtrfs::dir(&fs.mnt.join("k/d"));
    let e = btrfs::set_readonly(d.as_fd(), true).unwrap_err().to_string();
    assert!(e.contains("not the root of a btrfs subvolume"), "{e}");
}

/// base/{a, x/y/b (with b/c/d inside), var/lib/machines}
fn nested_tree(fs: &LoopBtrfs) {
    let top = LoopBtrfs::dir(&fs.mnt);
    btrfs::create_subvolume(top.as_fd(), "base").unwrap();
    let base = LoopBtrfs::dir(&fs.mnt.join("base"));
    btrfs::create_subvolume(base.as_fd(), "a").unwrap();
    fs::create_dir_all(fs.mnt.join("base/x/y")).unwrap();
    fs::create_dir_all(fs.mnt.join("base/var/lib")).unwrap();
    let xy = LoopBtrfs::dir(&fs.mnt.join("base/x/y"));
    btrfs::create_subvolume(xy.as_fd(), "b").unwrap();
    let varlib = LoopBtrfs::dir(&fs.mnt.join("base/var/lib"));
    btrfs::create_subvolume(varlib.as_fd(), "machines").unwrap();
    // Two more levels below x/y/b, in subdirectories.
    fs::create_dir_all(fs.mnt.join("base/x/y/b/deep/er")).unwrap();
    let b_sub = LoopBtrfs::dir(&fs.mnt.join("base/x/y/b/deep/er"));
    btrfs::create_subvolume(b_sub.as_fd(), "c").unwrap();
    fs::create_dir_all(fs.mnt.join("base/x/y/b/deep/er/c/in")).unwrap();
    let c_sub = LoopBtrfs::dir(&fs.mnt.join("base/x/y/b/deep/er/c/in"));
    btrfs::create_subvolume(c_sub.as_fd(), "d").unwrap();
    fs::write(fs.mnt.join("base/x/y/b/deep/er/c/in/d/file"), b"data").unwrap();
    fs::write(fs.mnt.join("base/var/lib/machines/file"), b"data").unwrap();
}

#[test]
fn child_subvolumes_lists_direct_children_with_paths() {
    let fs = LoopBtrfs::new();
    nested_tree(&fs);
    let base = LoopBtrfs::dir(&fs.mnt.join("base"));
    let mut kids = btrfs::child_subvolumes(base.as_fd()).unwrap();
    kids.sort_by(|a, b| a.path.cmp(&b.path));
    let paths: Vec<&str> = kids.iter().map(|k| k.path.as_str()).collect();
    assert_eq!(paths, ["a", "var/lib/machines", "x/y/b"]);
    for k in &kids {
        let d = LoopBtrfs::dir(&fs.mnt.join("base").join(&k.path));
        assert_eq!(btrfs::subvolume_id(d.as_fd()).unwrap(), k.id, "{}", k.path);
    }

    let b = LoopBtrfs::dir(&fs.mnt.join("base/x/y/b"));
    let kids = btrfs::child_subvolumes(b.as_fd()).unwrap();
    assert_eq!(kids.len(), 1);
    assert_eq!(kids[0].path, "deep/er/c");
    let c = LoopBtrfs::dir(&fs.mnt.join("base/x/y/b/deep/er/c"));
    let kids = btrfs::child_subvolumes(c.as_fd()).unwrap();
    assert_eq!(kids.iter().map(|k| k.path.as_str()).collect::<Vec<_>>(), ["in/d"]);
    let d = LoopBtrfs::dir(&fs.mnt.join("base/x/y/b/deep/er/c/in/d"));
    assert!(btrfs::child_subvolumes(d.as_fd()).unwrap().is_empty());

    let top = LoopBtrfs::dir(&fs.mnt);
    let kids = btrfs::child_subvolumes(top.as_fd()).unwrap();
    assert_eq!(kids.iter().map(|k| k.path.as_str()).collect::<Vec<_>>(), ["base"]);
}

#[test]
fn child_subvolumes_pages_past_255() {
    let fs = LoopBtrfs::new();
    let top = LoopBtrfs::dir(&fs.mnt);
    btrfs::create_subvolume(top.as_fd(), "many").unwrap();
    let many = LoopBtrfs::dir(&fs.mnt.join("many"));
    for i in 0..300 {
        btrfs::create_subvolume(many.as_fd(), &format!("s{i:03}")).unwrap();
    }
    let kids = btrfs::child_subvolumes(many.as_fd()).unwrap();
    assert_eq!(kids.len(), 300);
    let mut names: Vec<String> = kids.into_iter().map(|k| k.path).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 300);
    assert_eq!(names[0], "s000");
    assert_eq!(names[299], "s299");
    btrfs::delete_subvolume(top.as_fd(), "many").unwrap();
    assert!(fs.subvolume_list().is_empty());
}

#[test]
fn delete_subvolume_removes_nested_ones_deepest_first() {
    let fs = LoopBtrfs::new();
    nested_tree(&fs);
    let top = LoopBtrfs::dir(&fs.mnt);
    btrfs::create_subvolume(top.as_fd(), "keep").unwrap();
    assert_eq!(fs.subvolume_list().len(), 7);
    btrfs::delete_subvolume(top.as_fd(), "base").unwrap();
    assert!(!fs.mnt.join("base").exists());
    assert_eq!(fs.subvolume_list(), vec!["keep".to_string()]);
}

#[test]
fn delete_works_through_read_only_subvolumes() {
    let fs = LoopBtrfs::new();
    nested_tree(&fs);
    let top = LoopBtrfs::dir(&fs.mnt);
    // A read-only root (a kept one) with read-only subvolumes nested in it.
    for p in ["base/x/y/b/deep/er/c", "base/x/y/b", "base"] {
        let d = LoopBtrfs::dir(&fs.mnt.join(p));
        btrfs::set_readonly(d.as_fd(), true).unwrap();
    }
    btrfs::delete_subvolume(top.as_fd(), "base").unwrap();
    assert!(fs.subvolume_list().is_empty());
    assert!(!fs.mnt.join("base").exists());
}

#[test]
fn delete_refuses_non_subvolumes() {
    let fs = LoopBtrfs::new();
    let top = LoopBtrfs::dir(&fs.mnt);
    fs::create_dir(fs.mnt.join("plain")).unwrap();
    fs::write(fs.mnt.join("plain/f"), b"x").unwrap();
    let e = btrfs::delete_subvolume(top.as_fd(), "plain").unwrap_err().to_string();
    assert!(e.contains("not a btrfs subvolume") && e.contains("/plain"), "{e}");
    assert!(fs.mnt.join("plain/f").exists());

    // A symlink to a subvolume is not followed.
    btrfs::create_subvolume(top.as_fd(), "sv").unwrap();
    std::os::unix::fs::symlink("sv", fs.mnt.join("link")).unwrap();
    assert!(btrfs::delete_subvolume(top.as_fd(), "link").is_err());
    assert!(fs.mnt.join("sv").exists());
    let e = btrfs::delete_subvolume(top.as_fd(), "missing").unwrap_err();
    assert_eq!(e.errno(), Some(rustix::io::Errno::NOENT), "{e}");
    assert!(btrfs::delete_subvolume(top.as_fd(), "../x").is_err());
}
