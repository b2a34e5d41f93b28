//! Disk images on the host: private copies of fixture disks, loop mounts of an image's
//! top level (`with_mounted`, `with_disk_mounted_ro`), disks made for the full-disk
//! tests, and `sh`, the shell helper every test uses. All of it runs host commands
//! (cp, losetup, mount, mkfs); nothing here boots a VM.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::fixtures::work_dir;

/// A writable, sparse copy of a disk image in a temporary directory, removed on drop.
#[derive(Debug)]
pub struct Disk {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Disk {
    /// Copies `path` (sparsely; reflinked where the filesystem can).
    pub fn copy_of(path: &Path) -> Disk {
        let dir = tempfile::Builder::new()
            .prefix("disk-")
            .tempdir_in(work_dir("disks"))
            .unwrap_or_else(|e| panic!("creating a temp dir for a copy of {}: {e}", path.display()));
        let copy = dir.path().join(path.file_name().unwrap_or_else(|| "disk.img".as_ref()));
        let status = Command::new("cp")
            .args(["--sparse=always", "--reflink=auto"])
            .arg(path)
            .arg(&copy)
            .status()
            .unwrap_or_else(|e| panic!("running cp: {e}"));
        assert!(status.success(), "cp {} {} failed: {status}", path.display(), copy.display());
        Disk { path: copy, _dir: dir }
    }

    /// The copy's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The filesystem type on a disk image (`blkid`): btrfs, ext4, xfs, ...
pub fn disk_fstype(disk: &Path) -> String {
    let out = Command::new("blkid")
        .args(["-p", "-o", "value", "-s", "TYPE"])
        .arg(disk)
        .output()
        .unwrap_or_else(|e| panic!("running blkid: {e}"));
    let t = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(!t.is_empty(), "blkid finds no filesystem on {}: {}", disk.display(), String::from_utf8_lossy(&out.stderr));
    t
}

/// Mounts the disk image `disk` (a whole-disk btrfs, ext4 or xfs filesystem)
/// read-only, runs `f` on its top level, and unmounts. btrfs: no log replay (the host
/// never writes to it; a sync commits everything but fsync logs). ext4 and xfs: the
/// journal is replayed, which writes to the image: after testinit's sync and power-off
/// their metadata may still be only in the journal.
pub fn with_disk_mounted_ro<T>(disk: &Path, f: impl FnOnce(&Path) -> T) -> T {
    let fstype = disk_fstype(disk);
    let options = match fstype.as_str() {
        "btrfs" => "ro,rescue=nologreplay",
        _ => "ro",
    };
    with_disk_mounted(disk, &fstype, options, f)
}

/// Mounts the disk image `disk` (a whole-disk btrfs, ext4 or xfs filesystem)
/// read-write, runs `f` on its top level, and unmounts.
pub fn with_mounted<T>(disk: &Path, f: impl FnOnce(&Path) -> T) -> T {
    with_disk_mounted(disk, &disk_fstype(disk), "rw", f)
}

/// Mounts `disk` (on a writable loop device) with `options` on a temporary directory,
/// runs `f` on it, and unmounts (lazily if it is still busy).
pub(crate) fn with_disk_mounted<T>(disk: &Path, fstype: &str, options: &str, f: impl FnOnce(&Path) -> T) -> T {
    mount_loop(disk, "", fstype, options, f)
}

/// Mounts the btrfs filesystem of the partition at byte `offset` (`size` bytes) of the
/// disk image `disk` with `options`, runs `f` on its top level, and unmounts. A loop
/// device at the offset: this host's kernel makes no partition nodes for loop devices.
pub fn with_partition_mounted<T>(disk: &Path, offset: u64, size: u64, options: &str, f: impl FnOnce(&Path) -> T) -> T {
    mount_loop(disk, &format!("--offset {offset} --sizelimit {size}"), "btrfs", options, f)
}

fn mount_loop<T>(disk: &Path, losetup_args: &str, fstype: &str, options: &str, f: impl FnOnce(&Path) -> T) -> T {
    let mnt = tempfile::Builder::new()
        .prefix("dockroot-inspect-")
        .tempdir()
        .unwrap_or_else(|e| panic!("creating a mount point: {e}"));
    let dev = sh(&format!("losetup --find --show {losetup_args} '{}'", disk.display())).trim().to_string();
    let out = Command::new("mount")
        .args(["-t", fstype, "-o", options])
        .arg(&dev)
        .arg(mnt.path())
        .output()
        .unwrap_or_else(|e| panic!("running mount: {e}"));
    if !out.status.success() {
        let _ = Command::new("losetup").arg("-d").arg(&dev).status();
        panic!("mounting {} ({dev}, {fstype}, {options}): {}", disk.display(), String::from_utf8_lossy(&out.stderr));
    }
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(mnt.path())));
    let um = Command::new("sh").arg("-c").arg(format!("sync && umount '{}'", mnt.path().display())).output();
    if !matches!(&um, Ok(o) if o.status.success()) {
        let _ = Command::new("umount").arg("-l").arg(mnt.path()).status();
    }
    let _ = Command::new("losetup").arg("-d").arg(&dev).status();
    r.unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// Fill the filesystem mounted at `top` with the file `filler`, leaving about
/// 24 MiB for metadata (the full-disk tests).
pub fn fill_disk(top: &Path) {
    let filler = top.join("filler");
    sh(&format!("dd if=/dev/zero of='{}' bs=1M status=none 2>/dev/null || true", filler.display()));
    sh(&format!("sync && truncate -s -24M '{}' && sync", filler.display()));
}

/// An ext4 disk image labelled `machine` in `dir` holding a top layer
/// `machine/` with 64 MiB of data, more than a filled disk takes.
pub fn oversized_toplayer_disk(dir: &Path) -> PathBuf {
    let src = dir.join("src/machine");
    std::fs::create_dir_all(src.join("etc")).unwrap();
    std::fs::write(src.join("etc/hostname"), b"never-applied\n").unwrap();
    sh(&format!("dd if=/dev/urandom of='{}' bs=1M count=64 status=none", src.join("big").display()));
    let ext4 = dir.join("machine.img");
    sh(&format!("mkfs.ext4 -q -L machine -d '{}' '{}' 128M", dir.join("src").display(), ext4.display()));
    ext4
}

/// Runs `cmd` with `sh -c`; panics with its output unless it succeeds. Its stdout.
pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap_or_else(|e| panic!("running sh: {e}"));
    assert!(
        out.status.success(),
        "{cmd}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
