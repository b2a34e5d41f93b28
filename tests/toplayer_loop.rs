//! toplayer::apply onto a loop-mounted btrfs, from a top layer on tmpfs (run as root).

// Tests stop at the first failure: unwrap, expect and panic are how they say so.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::fd::AsFd;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::{run, LoopBtrfs, Tmpfs};
use dockroot::toplayer;
use rustix::fs::{AtFlags, FileType, Mode, Timespec, Timestamps, CWD};

fn set_times(p: &Path, sec: i64, nsec: i64) {
    let t = Timestamps {
        last_access: Timespec { tv_sec: sec - 1000, tv_nsec: nsec / 2 },
        last_modification: Timespec { tv_sec: sec, tv_nsec: nsec },
    };
    rustix::fs::utimensat(CWD, p, &t, AtFlags::SYMLINK_NOFOLLOW).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
}

fn set_xattr(p: &Path, name: &str, value: &[u8]) -> bool {
    rustix::fs::lsetxattr(p, name, value, rustix::fs::XattrFlags::empty()).is_ok()
}

fn xattrs(p: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut list = vec![0u8; 65536];
    let n = rustix::fs::llistxattr(p, &mut list[..]).unwrap_or(0);
    for name in list[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let name = String::from_utf8(name.to_vec()).unwrap();
        let mut v = vec![0u8; 65536];
        let len = rustix::fs::lgetxattr(p, name.as_str(), &mut v[..]).unwrap();
        v.truncate(len);
        out.insert(name, v);
    }
    out
}

/// What `cp -a` is expected to keep, for one entry.
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, i64),
    atime: (i64, i64),
    nlink: u64,
    rdev: u64,
    content: Option<Vec<u8>>,
    target: Option<PathBuf>,
    xattrs: BTreeMap<String, Vec<u8>>,
}

fn kind_of(m: &fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = m.file_type();
    if t.is_dir() {
        "dir"
    } else if t.is_symlink() {
        "symlink"
    } else if t.is_file() {
        "file"
    } else if t.is_char_device() {
        "chr"
    } else if t.is_block_device() {
        "blk"
    } else if t.is_fifo() {
        "fifo"
    } else {
        "socket"
    }
}

/// Every entry under `root` (and root itself as ""), keyed by relative path.
fn snapshot_tree(root: &Path) -> BTreeMap<PathBuf, Entry> {
    let mut out = BTreeMap::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        let p = root.join(&rel);
        let m = fs::symlink_metadata(&p).unwrap();
        let kind = kind_of(&m);
        if kind == "dir" {
            for e in fs::read_dir(&p).unwrap() {
                todo.push(rel.join(e.unwrap().file_name()));
            }
        }
        let entry = Entry {
            kind,
            mode: m.mode(),
            uid: m.uid(),
            gid: m.gid(),
            mtime: (m.mtime(), m.mtime_nsec()),
            // Directories' atimes change when they are read (listing the tree).
            atime: if kind == "dir" { (0, 0) } else { (m.atime(), m.atime_nsec()) },
            nlink: if kind == "dir" { 0 } else { m.nlink() },
            rdev: m.rdev(),
            // Read below, after all metadata: reading changes atimes.
            content: None,
            target: (kind == "symlink").then(|| fs::read_link(&p).unwrap()),
            xattrs: xattrs(&p),
        };
        out.insert(rel, entry);
    }
    for (rel, entry) in out.iter_mut() {
        if entry.kind == "file" {
            entry.content = Some(fs::read(root.join(rel)).unwrap());
        }
    }
    out
}

/// Build a top layer exercising every kind of entry. Returns whether a
/// security.* xattr could be set on this kernel.
fn build_top_layer(src: &Path) -> bool {
    fs::write(src.join(".dotfile"), b"dot\n").unwrap();
    fs::create_dir_all(src.join("etc/ssh")).unwrap();
    fs::write(src.join("etc/hostname"), b"machine\n").unwrap();
    fs::write(src.join("etc/ssh/key"), b"secret").unwrap();
    fs::set_permissions(src.join("etc/ssh/key"), fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::lchown(src.join("etc/ssh/key"), Some(1234), Some(5678)).unwrap();
    fs::create_dir(src.join("bin")).unwrap();
    fs::write(src.join("bin/suid"), b"#!/bin/true\n").unwrap();
    std::os::unix::fs::lchown(src.join("bin/suid"), Some(0), Some(7)).unwrap();
    fs::set_permissions(src.join("bin/suid"), fs::Permissions::from_mode(0o6755)).unwrap();
    fs::create_dir(src.join("tmp")).unwrap();
    fs::set_permissions(src.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    // A file larger than one copy chunk of the fallback path, odd-sized.
    let big: Vec<u8> = (0..(1usize << 20) + 12345).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(src.join("bin/big"), &big).unwrap();

    symlink("etc/hostname", src.join("rel-link")).unwrap();
    symlink("/etc/hostname", src.join("abs-link")).unwrap();
    symlink("/nonexistent/dangling", src.join("dangling")).unwrap();
    symlink("etc", src.join("dir-link")).unwrap();
    std::os::unix::fs::lchown(src.join("rel-link"), Some(42), Some(43)).unwrap();

    fs::write(src.join("hl1"), b"linked").unwrap();
    fs::create_dir(src.join("sub")).unwrap();
    fs::hard_link(src.join("hl1"), src.join("sub/hl2")).unwrap();

    fs::create_dir(src.join("dev")).unwrap();
    rustix::fs::mknodat(
        CWD,
        src.join("dev/null"),
        FileType::CharacterDevice,
        Mode::from_raw_mode(0o666),
        rustix::fs::makedev(1, 3),
    )
    .unwrap();
    rustix::fs::mknodat(CWD, src.join("dev/fifo"), FileType::Fifo, Mode::from_raw_mode(0o640), 0).unwrap();
    rustix::fs::mknodat(CWD, src.join("dev/sock"), FileType::Socket, Mode::from_raw_mode(0o755), 0).unwrap();
    std::os::unix::fs::lchown(src.join("dev/fifo"), Some(5), Some(6)).unwrap();

    assert!(set_xattr(&src.join("etc/hostname"), "user.origin", b"top"), "user.* xattrs on tmpfs");
    assert!(set_xattr(&src.join("etc"), "user.dir", b"d"));
    assert!(set_xattr(&src.join("etc/hostname"), "trusted.t", b"tv"));
    let security = set_xattr(&src.join("bin/suid"), "security.test", b"sec");

    // Times last, children before parents, with nanoseconds everywhere.
    let mut ns = 123_456_789;
    for rel in [
        ".dotfile",
        "etc/hostname",
        "etc/ssh/key",
        "etc/ssh",
        "etc",
        "bin/suid",
        "bin/big",
        "bin",
        "tmp",
        "rel-link",
        "abs-link",
        "dangling",
        "dir-link",
        "hl1",
        "sub",
        "dev/null",
        "dev/fifo",
        "dev/sock",
        "dev",
        "",
    ] {
        ns += 1111;
        set_times(&src.join(rel), 1_600_000_000 + ns % 1000, ns);
    }
    security
}

#[test]
fn copies_like_cp_a() {
    let top = Tmpfs::new();
    let security = build_top_layer(&top.path);
    let fs = LoopBtrfs::new();
    let ours = fs.mnt.join("ours");
    let theirs = fs.mnt.join("theirs");
    fs::create_dir(&ours).unwrap();
    fs::create_dir(&theirs).unwrap();

    let dest = LoopBtrfs::dir(&ours);
    let stats = toplayer::apply(&top.path, dest.as_fd()).unwrap();
    run("cp", &["-a", &format!("{}/.", top.path.display()), theirs.to_str().unwrap()]);

    let a = snapshot_tree(&ours);
    let b = snapshot_tree(&theirs);
    let src = snapshot_tree(&top.path);
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (rel, entry) in &a {
        assert_eq!(entry, &b[rel], "{} differs from cp -a", rel.display());
        // And from the source itself (cp may drop what it cannot keep).
        assert_eq!(entry, &src[rel], "{} differs from the source", rel.display());
    }

    // Spot checks that do not rely on cp.
    let m = fs::symlink_metadata(ours.join("etc/ssh/key")).unwrap();
    assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o600, 1234, 5678));
    let m = fs::symlink_metadata(ours.join("bin/suid")).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o6755);
    assert_eq!(fs::symlink_metadata(ours.join("tmp")).unwrap().mode() & 0o7777, 0o1777);
    let (h1, h2) = (fs::metadata(ours.join("hl1")).unwrap(), fs::metadata(ours.join("sub/hl2")).unwrap());
    assert_eq!((h1.ino(), h1.nlink()), (h2.ino(), 2));
    let n = fs::symlink_metadata(ours.join("dev/null")).unwrap();
    assert_eq!((kind_of(&n), n.rdev()), ("chr", rustix::fs::makedev(1, 3)));
    assert_eq!(kind_of(&fs::symlink_metadata(ours.join("dev/fifo")).unwrap()), "fifo");
    assert_eq!(kind_of(&fs::symlink_metadata(ours.join("dev/sock")).unwrap()), "socket");
    assert_eq!(fs::read_link(ours.join("dir-link")).unwrap(), Path::new("etc"));
    assert_eq!(fs::read_link(ours.join("dangling")).unwrap(), Path::new("/nonexistent/dangling"));
    assert_eq!(fs::read_link(ours.join("abs-link")).unwrap(), Path::new("/etc/hostname"));
    assert_eq!(fs::symlink_metadata(ours.join("rel-link")).unwrap().uid(), 42);
    let e = fs::symlink_metadata(ours.join("etc")).unwrap();
    assert_eq!(e.mtime_nsec() % 1000, src[Path::new("etc")].mtime.1 % 1000);
    assert_ne!(e.mtime_nsec(), 0);
    assert_eq!(xattrs(&ours.join("etc/hostname"))["user.origin"], b"top");
    assert_eq!(xattrs(&ours.join("etc/hostname"))["trusted.t"], b"tv");
    assert_eq!(xattrs(&ours.join("etc"))["user.dir"], b"d");
    if security {
        assert_eq!(xattrs(&ours.join("bin/suid"))["security.test"], b"sec");
    }
    assert_eq!(fs::read(ours.join(".dotfile")).unwrap(), b"dot\n");

    assert_eq!(
        stats,
        toplayer::ApplyStats {
            dirs: 6,
            files: 6,
            symlinks: 4,
            hardlinks: 1,
            specials: 3,
            bytes: 4 + 8 + 6 + 12 + (1 << 20) + 12345 + 6,
            // From tmpfs to btrfs: FICLONE says EXDEV, the data is copied.
            cloned: 0,
        }
    );
}

#[test]
fn replaces_non_directories_and_merges_directories() {
    let top = Tmpfs::new();
    let src = &top.path;
    fs::create_dir(src.join("etc")).unwrap();
    fs::write(src.join("etc/hostname"), b"new\n").unwrap();
    fs::write(src.join("etc/linked"), b"new linked\n").unwrap();
    fs::write(src.join("was-symlink"), b"file now").unwrap();
    symlink("new-target", src.join("was-file")).unwrap();

    let fs = LoopBtrfs::new();
    let rw = fs.mnt.join("rw");
    fs::create_dir_all(rw.join("etc")).unwrap();
    fs::write(rw.join("etc/hostname"), b"old\n").unwrap();
    std::os::unix::fs::lchown(rw.join("etc/hostname"), Some(99), Some(99)).unwrap();
    fs::write(rw.join("etc/keep"), b"untouched").unwrap();
    fs::write(rw.join("etc/linked"), b"old linked\n").unwrap();
    fs::hard_link(rw.join("etc/linked"), rw.join("other-name")).unwrap();
    symlink("etc/keep", rw.join("was-symlink")).unwrap();
    fs::write(rw.join("was-file"), b"old").unwrap();

    let dest = LoopBtrfs::dir(&rw);
    toplayer::apply(src, dest.as_fd()).unwrap();
    assert_eq!(fs::read(rw.join("etc/hostname")).unwrap(), b"new\n");
    assert_eq!(fs::symlink_metadata(rw.join("etc/hostname")).unwrap().uid(), 0);
    assert_eq!(fs::read(rw.join("etc/keep")).unwrap(), b"untouched");
    assert_eq!(fs::read(rw.join("etc/linked")).unwrap(), b"new linked\n");
    // The image's other hard link is not written through.
    assert_eq!(fs::read(rw.join("other-name")).unwrap(), b"old linked\n");
    assert!(fs::symlink_metadata(rw.join("was-symlink")).unwrap().is_file());
    assert_eq!(fs::read(rw.join("was-symlink")).unwrap(), b"file now");
    assert_eq!(fs::read(rw.join("etc/keep")).unwrap(), b"untouched");
    assert_eq!(fs::read_link(rw.join("was-file")).unwrap(), Path::new("new-target"));
}

#[test]
fn file_over_directory_is_an_error_naming_the_path() {
    let top = Tmpfs::new();
    fs::write(top.path.join("var"), b"file").unwrap();
    let fs = LoopBtrfs::new();
    let rw = fs.mnt.join("rw");
    fs::create_dir_all(rw.join("var/lib")).unwrap();
    let dest = LoopBtrfs::dir(&rw);
    let e = toplayer::apply(&top.path, dest.as_fd()).unwrap_err().to_string();
    assert!(e.contains("var") && e.contains("cannot overwrite directory with non-directory"), "{e}");
    assert!(rw.join("var/lib").is_dir());

    // And a directory over a file.
    let top2 = Tmpfs::new();
    fs::create_dir(top2.path.join("f")).unwrap();
    fs::write(rw.join("f"), b"x").unwrap();
    let e = toplayer::apply(&top2.path, dest.as_fd()).unwrap_err().to_string();
    assert!(e.contains("/f") && e.contains("cannot overwrite non-directory with directory"), "{e}");
}

/// Everything outside the rw layer a hostile image could aim at.
#[derive(Debug, PartialEq)]
struct Outside {
    parent_listing: Vec<String>,
    sentinel: (Vec<u8>, i64, i64),
    root_listing: Vec<String>,
    host_hostname: Option<(Vec<u8>, i64, i64)>,
    root_hostname: Option<Vec<u8>>,
    tmp_hostname: bool,
}

fn outside(fs: &LoopBtrfs) -> Outside {
    let listing = |p: &Path| {
        let mut v: Vec<String> =
            fs::read_dir(p).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    };
    let sentinel = fs.tmp.path.join("sentinel");
    let m = fs::metadata(&sentinel).unwrap();
    Outside {
        parent_listing: listing(&fs.tmp.path),
        sentinel: (fs::read(&sentinel).unwrap(), m.mtime(), m.mtime_nsec()),
        root_listing: listing(Path::new("/")),
        host_hostname: fs::metadata("/etc/hostname")
            .ok()
            .map(|m| (fs::read("/etc/hostname").unwrap(), m.mtime(), m.mtime_nsec())),
        root_hostname: fs::read("/hostname").ok(),
        tmp_hostname: Path::new("/tmp/hostname").exists(),
    }
}

fn hostile_case(link_target: &str) {
    let top = Tmpfs::new();
    fs::create_dir_all(top.path.join("etc")).unwrap();
    fs::write(top.path.join("etc/hostname"), b"from-top-layer\n").unwrap();
    fs::create_dir_all(top.path.join("a/b")).unwrap();
    fs::write(top.path.join("a/b/c"), b"deep\n").unwrap();

    let fs = LoopBtrfs::new();
    fs::write(fs.tmp.path.join("sentinel"), b"do not touch").unwrap();
    let rw = fs.mnt.join("rw");
    fs::create_dir(&rw).unwrap();
    symlink(link_target, rw.join("etc")).unwrap();
    symlink("../../../../../../..", rw.join("a")).unwrap();
    let before = outside(&fs);

    let dest = LoopBtrfs::dir(&rw);
    toplayer::apply(&top.path, dest.as_fd()).unwrap();

    assert_eq!(outside(&fs), before, "something outside the rw layer changed (etc -> {link_target})");
    // Resolved inside the rw layer: etc -> "/" is the rw root.
    assert_eq!(fs::read(rw.join("hostname")).unwrap(), b"from-top-layer\n");
    assert_eq!(fs::read(rw.join("b/c")).unwrap(), b"deep\n");
    assert_eq!(fs::read_link(rw.join("etc")).unwrap(), Path::new(link_target));
    // Nothing next to the mount point either.
    assert!(!fs.tmp.path.join("hostname").exists());
    assert!(!fs.mnt.join("hostname").exists());
}

#[test]
fn hostile_etc_symlink_to_root_stays_inside() {
    hostile_case("/");
}

#[test]
fn hostile_etc_symlink_upwards_stays_inside() {
    hostile_case("../../..");
}

#[test]
fn hostile_file_symlink_is_replaced_not_followed() {
    let top = Tmpfs::new();
    fs::create_dir(top.path.join("etc")).unwrap();
    fs::write(top.path.join("etc/hostname"), b"from-top-layer\n").unwrap();
    fs::create_dir(top.path.join("x")).unwrap();
    fs::write(top.path.join("x/f"), b"x\n").unwrap();

    let fs = LoopBtrfs::new();
    fs::write(fs.tmp.path.join("sentinel"), b"do not touch").unwrap();
    let outside_file = fs.tmp.path.join("outside-file");
    fs::write(&outside_file, b"outside").unwrap();
    let rw = fs.mnt.join("rw");
    fs::create_dir_all(rw.join("etc")).unwrap();
    symlink(&outside_file, rw.join("etc/hostname")).unwrap();
    // A directory symlink that leads to a file outside: refused, not followed.
    symlink(&outside_file, rw.join("x")).unwrap();
    let before = outside(&fs);

    let dest = LoopBtrfs::dir(&rw);
    let e = toplayer::apply(&top.path, dest.as_fd()).unwrap_err().to_string();
    assert!(e.contains("/x") && e.contains("cannot overwrite non-directory with directory"), "{e}");
    // etc was copied before the error (readdir order aside, etc/hostname is
    // checked only if it was reached); run again without x to be sure.
    fs::remove_file(rw.join("x")).unwrap();
    toplayer::apply(&top.path, dest.as_fd()).unwrap();

    assert_eq!(outside(&fs), before);
    assert_eq!(fs::read(&outside_file).unwrap(), b"outside");
    let m = fs::symlink_metadata(rw.join("etc/hostname")).unwrap();
    assert!(m.is_file());
    assert_eq!(fs::read(rw.join("etc/hostname")).unwrap(), b"from-top-layer\n");
    assert_eq!(fs::read(rw.join("x/f")).unwrap(), b"x\n");
}

#[test]
fn depth_is_bounded() {
    let top = Tmpfs::new();
    let mut p = top.path.clone();
    for _ in 0..255 {
        p.push("d");
    }
    fs::create_dir_all(&p).unwrap();
    fs::write(p.join("leaf"), b"ok").unwrap();
    let fs = LoopBtrfs::new();
    let rw = fs.mnt.join("rw");
    fs::create_dir(&rw).unwrap();
    let dest = LoopBtrfs::dir(&rw);
    let stats = toplayer::apply(&top.path, dest.as_fd()).unwrap();
    assert_eq!(stats.dirs, 255);

    // One level more is refused.
    fs::create_dir(p.join("d")).unwrap();
    let e = toplayer::apply(&top.path, dest.as_fd()).unwrap_err().to_string();
    assert!(e.contains("deeper than 256"), "{e}");
}

#[test]
fn source_must_be_a_real_directory() {
    let top = Tmpfs::new();
    fs::create_dir(top.path.join("real")).unwrap();
    symlink("real", top.path.join("link")).unwrap();
    let fs = LoopBtrfs::new();
    let dest = LoopBtrfs::dir(&fs.mnt);
    let e = toplayer::apply(&top.path.join("link"), dest.as_fd()).unwrap_err();
    assert!(e.to_string().contains("link"), "{e}");
    assert!(toplayer::apply(&top.path.join("missing"), dest.as_fd()).is_err());
}

/// A btrfs big enough for 1 GiB of real data and its clones (sparse image),
/// loop-mounted; unmounted and removed on drop.
struct BigBtrfs {
    tmp: common::TempDir,
    mnt: PathBuf,
}

impl BigBtrfs {
    fn new(size: u64) -> BigBtrfs {
        common::require_root();
        let tmp = common::TempDir::new("bigbtrfs");
        let image = tmp.path.join("fs.img");
        let mnt = tmp.path.join("mnt");
        fs::File::create(&image).unwrap().set_len(size).unwrap();
        fs::create_dir(&mnt).unwrap();
        run("mkfs.btrfs", &["-q", "-f", image.to_str().unwrap()]);
        run("mount", &["-o", "loop", image.to_str().unwrap(), mnt.to_str().unwrap()]);
        BigBtrfs { tmp, mnt }
    }
}

impl Drop for BigBtrfs {
    fn drop(&mut self) {
        let mnt = self.mnt.to_str().unwrap_or_default().to_string();
        let ok = std::process::Command::new("umount").arg(&mnt).status().map(|s| s.success()).unwrap_or(false);
        if !ok {
            let _ = std::process::Command::new("umount").args(["-l", &mnt]).status();
        }
        let _ = fs::remove_file(self.tmp.path.join("fs.img"));
    }
}

/// Write `size` bytes of real (non-zero, non-repeating per MiB) data to `path`.
fn write_data(path: &Path, size: u64, seed: u64) {
    use std::io::Write;
    let mut f = std::io::BufWriter::with_capacity(1 << 20, fs::File::create(path).unwrap());
    let mut chunk: Vec<u8> = (0..1u64 << 20).map(|i| (i.wrapping_mul(31).wrapping_add(seed) % 251) as u8 + 1).collect();
    let mut left = size;
    let mut n = 0u64;
    while left > 0 {
        chunk[..8].copy_from_slice(&(seed << 32 | n).to_le_bytes());
        let len = left.min(chunk.len() as u64) as usize;
        f.write_all(&chunk[..len]).unwrap();
        left -= len as u64;
        n += 1;
    }
    f.flush().unwrap();
}

fn same_contents(a: &Path, b: &Path) -> bool {
    use std::io::Read;
    let (mut fa, mut fb) = (fs::File::open(a).unwrap(), fs::File::open(b).unwrap());
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let na = fa.read(&mut ba).unwrap();
        let mut nb = 0;
        while nb < na {
            let r = fb.read(&mut bb[nb..na]).unwrap();
            if r == 0 {
                return false;
            }
            nb += r;
        }
        if ba[..na] != bb[..na] {
            return false;
        }
        if na == 0 {
            return fb.read(&mut bb).unwrap() == 0;
        }
    }
}

/// `btrfs filesystem du --raw -s PATH`: (total, exclusive, set shared) bytes.
fn btrfs_du(path: &Path) -> (u64, u64, u64) {
    let out = run("btrfs", &["filesystem", "du", "--raw", "-s", path.to_str().unwrap()]);
    let line = out.lines().last().unwrap_or_default();
    let v: Vec<u64> = line.split_whitespace().take(3).map(|x| x.parse().unwrap_or(u64::MAX)).collect();
    assert_eq!(v.len(), 3, "unexpected btrfs filesystem du output: {out}");
    (v[0], v[1], v[2])
}

#[test]
fn same_btrfs_clones_1_gib_in_well_under_a_second() {
    const MIB: u64 = 1 << 20;
    let fs = BigBtrfs::new(4 << 30);
    // The top layer in one subvolume, the rw layer in another: different
    // st_dev, same filesystem, so FICLONE works.
    run("btrfs", &["subvolume", "create", fs.mnt.join("toplayer-vol").to_str().unwrap()]);
    run("btrfs", &["subvolume", "create", fs.mnt.join("rw").to_str().unwrap()]);
    let src = fs.mnt.join("toplayer-vol/machine");
    fs::create_dir_all(src.join("var/big")).unwrap();
    fs::create_dir_all(src.join("etc")).unwrap();
    fs::write(src.join("etc/hostname"), b"cloned\n").unwrap();
    // 1 GiB in 16 files of 64 MiB, plus an odd-sized one with a partial last block.
    for i in 0..16 {
        write_data(&src.join(format!("var/big/f{i:02}")), 64 * MIB, i);
    }
    write_data(&src.join("var/odd"), 3 * MIB + 777, 99);
    run("sync", &[]);
    let (src_dev, rw_dev) = (fs::metadata(&src).unwrap().dev(), fs::metadata(fs.mnt.join("rw")).unwrap().dev());
    assert_ne!(src_dev, rw_dev, "subvolumes should have their own st_dev");
    let free_before = rustix::fs::statvfs(&fs.mnt).unwrap();

    let rw = fs.mnt.join("rw");
    let dest = LoopBtrfs::dir(&rw);
    let t = std::time::Instant::now();
    let stats = toplayer::apply(&src, dest.as_fd()).unwrap();
    let took = t.elapsed();
    run("sync", &[]);

    let total = 16 * 64 * MIB + 3 * MIB + 777 + 7;
    assert_eq!((stats.files, stats.cloned, stats.bytes), (18, 18, total), "{stats:?}");
    assert!(took < std::time::Duration::from_millis(500), "1 GiB on the same btrfs took {took:?}");
    // Shared, not copied: the rw layer's copies have no exclusive extents,
    // and the filesystem did not use another GiB.
    let (du_total, exclusive, shared) = btrfs_du(&rw.join("var"));
    // (du counts whole 4 KiB blocks.)
    assert_eq!(du_total, 16 * 64 * MIB + (3 * MIB + 777).div_ceil(4096) * 4096, "btrfs filesystem du total");
    assert_eq!(exclusive, 0, "btrfs filesystem du: the clones should share every extent");
    assert!(shared >= 16 * 64 * MIB, "btrfs filesystem du: set shared {shared}");
    let free_after = rustix::fs::statvfs(&fs.mnt).unwrap();
    let used = (free_before.f_bfree - free_after.f_bfree) * free_after.f_frsize;
    assert!(used < 64 * MIB, "the clone used {used} bytes of data space");
    for name in ["var/big/f00", "var/big/f15", "var/odd", "etc/hostname"] {
        assert!(same_contents(&src.join(name), &rw.join(name)), "{name} differs");
    }
    // Writing to a clone leaves the top layer as it was (copy on write).
    fs::write(rw.join("var/odd"), b"changed").unwrap();
    assert_eq!(fs::metadata(src.join("var/odd")).unwrap().len(), 3 * MIB + 777);
}
