//! Overlay roots (the rw layer of images stored as layer directories) on a
//! loop-mounted ext4: built, mounted both ways (fsconfig lowerdir+ and
//! mount(2) with relative lowerdirs), installed, retired, pruned into the
//! trash and emptied in the background, recovered after an interrupted boot.

// Tests stop at the first failure: unwrap, expect and panic are how they say so.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fs;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::{require_root, run, TempDir};
use dockroot::overlay::{self, Method, Overlay};
use dockroot::rwlayer::{At, Existing, OverlaySpec, RootInfo, RwStore, OVERLAY_SPEC, UPPER, WORK};

/// A 256 MiB ext4 image loop-mounted at `<tmp>/mnt`.
struct LoopExt4 {
    _tmp: TempDir,
    mnt: PathBuf,
    target: PathBuf,
}

impl LoopExt4 {
    fn new() -> LoopExt4 {
        require_root();
        let tmp = TempDir::new("ovl-ext4");
        let image = tmp.path.join("fs.img");
        let mnt = tmp.path.join("mnt");
        let target = tmp.path.join("merged");
        fs::File::create(&image).unwrap().set_len(256 << 20).unwrap();
        fs::create_dir(&mnt).unwrap();
        fs::create_dir(&target).unwrap();
        run("mkfs.ext4", &["-q", "-F", image.to_str().unwrap()]);
        run("mount", &["-o", "loop", image.to_str().unwrap(), mnt.to_str().unwrap()]);
        LoopExt4 { _tmp: tmp, mnt, target }
    }
}

impl Drop for LoopExt4 {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.target).status();
        let _ = Command::new("umount").arg(&self.mnt).status();
    }
}

/// Two layers in `store/overlay2`: `a` (the base) and `b`, which changes
/// etc/os and deletes etc/gone with a whiteout.
fn layers(top: &Path) -> OverlaySpec {
    let base = top.join("store/overlay2");
    fs::create_dir_all(base.join("a/diff/etc")).unwrap();
    fs::create_dir_all(base.join("a/diff/sbin")).unwrap();
    fs::write(base.join("a/diff/etc/os"), "1\n").unwrap();
    fs::write(base.join("a/diff/etc/gone"), "deleted in b\n").unwrap();
    fs::write(base.join("a/diff/sbin/init"), "#!/bin/sh\n").unwrap();
    fs::create_dir_all(base.join("b/diff/etc")).unwrap();
    fs::write(base.join("b/diff/etc/os"), "2\n").unwrap();
    run("mknod", &[base.join("b/diff/etc/gone").to_str().unwrap(), "c", "0", "0"]);
    OverlaySpec { base: "store/overlay2".into(), lowerdirs: vec!["b/diff".into(), "a/diff".into()] }
}

fn info(image: &str) -> RootInfo {
    RootInfo { created: dockroot::rwlayer::now_stamp(), image: format!("sha256:{}", image.repeat(64)) }
}

fn overlay_of(fs_: &LoopExt4, store: &RwStore, spec: &OverlaySpec, at: &At) -> Overlay {
    let root = fs_.mnt.join(store.path(at));
    Overlay {
        base: fs_.mnt.join(&spec.base),
        lowerdirs: spec.lowerdirs.clone(),
        upper: Some((root.join(UPPER), root.join(WORK))),
    }
}

/// The tests of this file run one at a time: one forks the test process (a
/// copy of every thread's state, taken while another thread may be half-way
/// through spawning `umount`), and a run on CI once saw that spawn fail with
/// ECHILD. Serialised, no fork ever overlaps a spawn.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn open(store_top: &Path) -> RwStore {
    let top = fs::File::open(store_top).unwrap();
    RwStore::open(top.as_fd(), &["roots".to_string(), "rw".to_string()]).unwrap()
}

#[test]
fn overlay_roots_build_mount_install_retire_and_prune() {
    let _serial = serial();
    let fs_ = LoopExt4::new();
    let spec = layers(&fs_.mnt);
    fs::create_dir(fs_.mnt.join("roots")).unwrap();
    let store = open(&fs_.mnt);

    // Three boots: each builds at the temporary name, mounts (both ways),
    // writes through the overlay like the top layer does, then commits.
    for (round, method) in [Method::Legacy, Method::LowerdirPlus, Method::Legacy].into_iter().enumerate() {
        let tmp_fd = store.begin_overlay(&spec, &info(&format!("{round}"))).unwrap();
        drop(tmp_fd);
        assert_eq!(store.kind(&At::Tmp).unwrap(), Existing::Overlay);
        let ov = overlay_of(&fs_, &store, &spec, &At::Tmp);
        overlay::mount_with(method, &ov, &fs_.target, false).unwrap_or_else(|e| panic!("{method:?}: {e}"));
        assert_eq!(fs::read_to_string(fs_.target.join("etc/os")).unwrap(), "2\n", "{method:?}: upper layer wins");
        assert!(!fs_.target.join("etc/gone").exists(), "{method:?}: the whiteout hides etc/gone");
        assert!(fs_.target.join("sbin/init").exists());
        fs::write(fs_.target.join("etc/machine"), format!("round {round}\n")).unwrap();
        run("umount", &[fs_.target.to_str().unwrap()]);
        let commit = store.commit(1).unwrap();
        assert_eq!(commit.retired.is_some(), round > 0, "round {round}: {commit:?}");
        assert_eq!(commit.pruned.len(), usize::from(round == 2), "round {round}: {commit:?}");
    }
    // The rw layer is the last round's, with its written file in upper/.
    assert_eq!(store.kind(&At::Current).unwrap(), Existing::Overlay);
    let rw = fs_.mnt.join("roots/rw");
    assert_eq!(fs::read_to_string(rw.join("upper/etc/machine")).unwrap(), "round 2\n");
    assert_eq!(store.overlay_spec(&At::Current).unwrap(), spec);
    // The image layers are untouched.
    assert_eq!(fs::read_to_string(fs_.mnt.join("store/overlay2/a/diff/etc/os")).unwrap(), "1\n");
    assert!(!fs_.mnt.join("store/overlay2/a/diff/etc/machine").exists());

    // keep=1: one kept root (round 1's), round 0's went to the trash.
    let kept = store.kept().unwrap();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(store.kind(&At::Kept(kept[0].clone())).unwrap(), Existing::Overlay);
    assert_eq!(
        fs::read_to_string(rw.with_file_name("rw.kept").join(&kept[0]).join("upper/etc/machine")).unwrap(),
        "round 1\n"
    );
    let trash = fs_.mnt.join("roots/rw.dockroot-trash");
    let trashed: Vec<_> = fs::read_dir(&trash).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(trashed.len(), 1, "{trashed:?}");
    assert_eq!(fs::read_to_string(trashed[0].join("upper/etc/machine")).unwrap(), "round 0\n");

    // This test process runs threads (the test harness's): it must not fork.
    assert!(!store.start_emptying_trash(), "forked with threads running");
    assert_eq!(fs::read_dir(&trash).unwrap().count(), 1);
    // Emptied by a child process of a single-threaded caller (as PID 1 is), not by the caller.
    assert!(in_single_threaded_child(|| store.start_emptying_trash()));
    let t = Instant::now();
    while fs::read_dir(&trash).unwrap().next().is_some() {
        assert!(t.elapsed() < Duration::from_secs(20), "the trash was not emptied");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!in_single_threaded_child(|| store.start_emptying_trash()), "nothing left to delete: no child");
}

/// `f`'s answer, computed in a forked child of this test process: the child
/// runs one thread, as PID 1 does. The child's own children (the trash
/// deleter) are left to the init process of the machine.
fn in_single_threaded_child(f: impl FnOnce() -> bool) -> bool {
    // SAFETY: test only. The child calls `f` (allocation, which glibc's fork
    // keeps usable in the child, and system calls) and ends with _exit, never
    // returning into the test harness.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let code = i32::from(!f());
        // SAFETY: ends the child without running the test harness's exit handlers.
        unsafe { libc::_exit(code) }
    }
    let pid = rustix::process::Pid::from_raw(pid).expect("fork failed");
    let (_, status) = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty()).unwrap().unwrap();
    status.exit_status() == Some(0)
}

#[test]
fn overlay_recovery_and_refusals() {
    let _serial = serial();
    let fs_ = LoopExt4::new();
    let spec = layers(&fs_.mnt);
    fs::create_dir(fs_.mnt.join("roots")).unwrap();
    let store = open(&fs_.mnt);
    store.begin_overlay(&spec, &info("a")).unwrap();
    store.commit(3).unwrap();

    // An interrupted boot left a half-built overlay root: recovery trashes it.
    store.begin_overlay(&spec, &info("b")).unwrap();
    fs::write(fs_.mnt.join("roots/rw.dockroot-tmp/upper/half"), "x").unwrap();
    let store = open(&fs_.mnt);
    let done = store.recover().unwrap();
    assert!(done.iter().any(|d| d.contains("half-built")), "{done:?}");
    assert_eq!(store.kind(&At::Tmp).unwrap(), Existing::Absent);
    assert_eq!(store.kind(&At::Current).unwrap(), Existing::Overlay, "the installed root is untouched");
    let trash = fs_.mnt.join("roots/rw.dockroot-trash");
    assert_eq!(fs::read_dir(&trash).unwrap().count(), 1);

    // An interrupted boot after "ready" with the old root retired: installed.
    store.begin_overlay(&spec, &info("c")).unwrap();
    fs::rename(fs_.mnt.join("roots/rw.dockroot-tmp"), fs_.mnt.join("roots/rw.dockroot-ready")).unwrap();
    fs::create_dir(fs_.mnt.join("roots/rw.kept")).unwrap();
    fs::rename(fs_.mnt.join("roots/rw"), fs_.mnt.join("roots/rw.kept/20260101T000000Z-aaaaaaaaaaaa")).unwrap();
    let done = open(&fs_.mnt).recover().unwrap();
    assert!(done.iter().any(|d| d.contains("installed")), "{done:?}");
    assert_eq!(store.kind(&At::Current).unwrap(), Existing::Overlay);

    // A power cut while the skeleton was being made: it goes, nothing else.
    let skel = fs_.mnt.join("roots/rw.dockroot-skel");
    fs::create_dir_all(skel.join("upper")).unwrap();
    fs::write(skel.join(OVERLAY_SPEC), "{").unwrap();
    let done = open(&fs_.mnt).recover().unwrap();
    assert!(done.iter().any(|d| d.contains("skeleton")), "{done:?}");
    assert!(!skel.exists());
    // ... but a skeleton holding anything else is not dockroot's: refused, kept.
    fs::create_dir_all(skel.join("upper")).unwrap();
    fs::write(skel.join("notes.txt"), "mine").unwrap();
    let e = open(&fs_.mnt).recover().unwrap_err().to_string();
    assert!(e.contains("notes.txt") && e.contains("refusing"), "{e}");
    assert!(skel.join("notes.txt").exists());
    fs::remove_dir_all(&skel).unwrap();

    // If the trash cannot take a discarded root, it is deleted at once instead.
    store.begin_overlay(&spec, &info("d")).unwrap();
    fs::write(fs_.mnt.join("roots/rw.dockroot-tmp/upper/big"), vec![7u8; 1 << 20]).unwrap();
    let trash = fs_.mnt.join("roots/rw.dockroot-trash");
    fs::remove_dir_all(&trash).unwrap();
    fs::write(&trash, "not a directory").unwrap();
    assert_eq!(store.abort(), None);
    assert!(!fs_.mnt.join("roots/rw.dockroot-tmp").exists(), "deleted in the foreground");
    fs::remove_file(&trash).unwrap();

    // A spec that leaves the partition is refused with the root's name.
    let bad = fs_.mnt.join("roots/rw").join(OVERLAY_SPEC);
    fs::write(&bad, r#"{"base": "../etc", "lowerdirs": ["a"]}"#).unwrap();
    let e = store.overlay_spec(&At::Current).unwrap_err().to_string();
    assert!(e.contains("not a path inside") && e.contains("/roots/rw"), "{e}");

    // A plain directory at the rw layer's name is the user's: refused.
    fs::create_dir(fs_.mnt.join("mine")).unwrap();
    let top = fs::File::open(&fs_.mnt).unwrap();
    let e = RwStore::open(top.as_fd(), &["mine".to_string()]).err().unwrap().to_string();
    assert!(e.contains("plain directory") && e.contains("refusing"), "{e}");

    // Whiteouts survive in the layers (the boot never writes into them).
    let wh = fs::symlink_metadata(fs_.mnt.join("store/overlay2/b/diff/etc/gone")).unwrap();
    assert!(wh.file_type().is_char_device() && wh.rdev() == 0);
    let _ = rustix::process::wait(rustix::process::WaitOptions::NOHANG);
}
