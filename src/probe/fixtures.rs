//! Test fixtures shared by the probe's unit tests (and the devices module's):
//! a scratch directory, running mkfs-style tools, and comparing with blkid.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{probe_filesystem, FsInfo};
use crate::error::Result;

/// A scratch directory removed on drop.
pub(crate) struct Scratch(pub PathBuf);
impl Scratch {
    pub(crate) fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("dockroot-probe-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
    pub(crate) fn file(&self, name: &str, size: u64) -> PathBuf {
        let p = self.0.join(name);
        let f = File::create(&p).unwrap();
        f.set_len(size).unwrap();
        p
    }
}
impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Run a tool; a missing tool or a failure fails the test.
pub(crate) fn run(prog: &str, args: &[&str]) -> String {
    let out =
        Command::new(prog).args(args).output().unwrap_or_else(|e| panic!("cannot run {prog} (is it installed?): {e}"));
    assert!(out.status.success(), "{prog} {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One tag as `blkid -p` reports it (raw value), None if absent.
pub(crate) fn blkid(path: &Path, tag: &str, offset: Option<u64>) -> Option<String> {
    let mut cmd = Command::new("blkid");
    cmd.args(["-p", "-s", tag, "-o", "value"]);
    if let Some(o) = offset {
        cmd.arg(format!("--offset={o}"));
    }
    let out = cmd.arg(path).output().expect("cannot run blkid");
    let s = String::from_utf8(out.stdout).unwrap();
    let s = s.strip_suffix('\n').unwrap_or(&s);
    (!s.is_empty()).then(|| s.to_string())
}

pub(crate) fn probe_path(path: &Path) -> Result<Option<FsInfo>> {
    probe_filesystem(&File::open(path).unwrap())
}

/// Assert the probe says exactly what blkid says.
pub(crate) fn assert_like_blkid(path: &Path, info: &FsInfo) {
    assert_eq!(blkid(path, "TYPE", None).as_deref(), Some(info.fstype.name()), "{path:?}");
    assert_eq!(blkid(path, "LABEL", None), info.label, "{path:?}");
    assert_eq!(blkid(path, "UUID", None), info.uuid, "{path:?}");
    if let Some(m) = &info.btrfs {
        assert_eq!(blkid(path, "UUID_SUB", None).as_deref(), Some(m.dev_uuid.as_str()));
    }
}

pub(crate) fn flip(path: &Path, offset: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, offset).unwrap();
    b[0] ^= 0x01;
    f.write_all_at(&b, offset).unwrap();
}

pub(crate) fn head(path: &Path, len: usize) -> Vec<u8> {
    let mut v = std::fs::read(path).unwrap();
    v.truncate(len);
    v
}
