//! dockroot-hostbench: the scaling part of scripts/bench, on the host (no QEMU).
//!
//! On a loop-mounted btrfs (and an ext4 for the cross-filesystem case), with real
//! data (files written in full, no sparse files), it times dockroot's own code:
//! - rw layer creation (`RwStore::begin`: the snapshot of the image's subvolume and
//!   its xattrs; then `RwStore::commit`: syncs, renames, retiring the previous root,
//!   keep=3) for images of 100 MB, 1 GB and `--max-gb` GB;
//! - the top layer apply (`toplayer::apply`) of 1 MB, 100 MB and 1 GB of files from
//!   a directory on the same btrfs (FICLONE) and from ext4 (copied), then the sync
//!   that makes it durable. Source pages are evicted before each run
//!   (POSIX_FADV_DONTNEED), as a top layer is cold at boot.
//!
//! Prints markdown tables; writes every measurement to `--tsv`. Everything it creates
//! lives in `--dir` and is removed at the end (also on failure).
//!
//!   dockroot-hostbench --dir DIR [--max-gb N] [--runs N] [--tsv FILE]

use std::fmt::Write as _;
use std::fs;
use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use dockroot::rwlayer::{RootInfo, RwStore};
use dockroot::{btrfs, toplayer};

const MB: u64 = 1_000_000;
const KIB: u64 = 1024;
const MIB: u64 = 1 << 20;

fn main() {
    let mut dir = None;
    let mut max_gb = 5u64;
    let mut runs = 5usize;
    let mut tsv = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| fail(&format!("{a} needs a value")));
        match a.as_str() {
            "--dir" => dir = Some(PathBuf::from(val())),
            "--max-gb" => max_gb = val().parse().unwrap_or_else(|_| fail("--max-gb takes a number")),
            "--runs" => runs = val().parse().unwrap_or_else(|_| fail("--runs takes a number")),
            "--tsv" => tsv = Some(PathBuf::from(val())),
            _ => fail(&format!("unknown argument {a}")),
        }
    }
    let dir = dir.unwrap_or_else(|| fail("--dir is required"));
    if runs == 0 || max_gb == 0 {
        fail("--runs and --max-gb must be at least 1");
    }
    let mut bench = Bench { runs, rows: Vec::new() };
    let tables = bench.run(&dir, max_gb);
    print!("{tables}");
    if let Some(t) = tsv {
        let mut s = String::from("what\tsize\trun\tseconds\n");
        for (what, size, run, secs) in &bench.rows {
            let _ = writeln!(s, "{what}\t{size}\t{run}\t{secs:.6}");
        }
        fs::write(&t, s).unwrap_or_else(|e| fail(&format!("writing {}: {e}", t.display())));
    }
}

/// A progress line on stderr, with the seconds since the start.
fn progress(msg: &str) {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let t = START.get_or_init(Instant::now).elapsed().as_secs_f64();
    eprintln!("dockroot-hostbench: [{t:7.1} s] {msg}");
}

fn fail(msg: &str) -> ! {
    eprintln!("dockroot-hostbench: {msg}");
    std::process::exit(2)
}

fn sh(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("running {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A loop-mounted filesystem image, unmounted, detached and deleted on drop. The loop
/// device uses direct I/O, so that what the filesystem writes goes to the disk at once
/// rather than into the host's page cache to be written back during later measurements.
struct Loop {
    image: PathBuf,
    mnt: PathBuf,
    dev: String,
}

impl Loop {
    fn new(dir: &Path, name: &str, fstype: &str, size: u64) -> Loop {
        let image = dir.join(format!("{name}.img"));
        let mnt = dir.join(name);
        let _ = fs::remove_file(&image);
        fs::File::create(&image).and_then(|f| f.set_len(size)).unwrap_or_else(|e| panic!("{}: {e}", image.display()));
        fs::create_dir_all(&mnt).unwrap_or_else(|e| panic!("{}: {e}", mnt.display()));
        let img = image.to_str().expect("utf-8 path");
        match fstype {
            "btrfs" => sh("mkfs.btrfs", &["-q", "-f", img]),
            _ => sh("mkfs.ext4", &["-q", "-F", img]),
        };
        let dev = sh("losetup", &["--find", "--show", "--direct-io=on", img]).trim().to_string();
        let loop_ = Loop { image, mnt, dev };
        sh("mount", &[&loop_.dev, loop_.mnt.to_str().expect("utf-8 path")]);
        loop_
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let m = self.mnt.to_string_lossy().into_owned();
        if !Command::new("umount").arg(&m).status().map(|s| s.success()).unwrap_or(false) {
            let _ = Command::new("umount").args(["-l", &m]).status();
        }
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
        let _ = fs::remove_file(&self.image);
        let _ = fs::remove_dir(&self.mnt);
    }
}

/// Write `total` bytes of pseudo-random data as files of `file_size` bytes, 100 per
/// directory, under `root`. Returns the number of files.
fn write_tree(root: &Path, total: u64, file_size: u64, seed: u64) -> u64 {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut buf = vec![0u8; file_size.min(4 * MIB) as usize];
    let mut left = total;
    let mut n = 0u64;
    while left > 0 {
        let d = root.join(format!("d{:03}", n / 100));
        fs::create_dir_all(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display()));
        let path = d.join(format!("f{:05}", n));
        let mut f = fs::File::create(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut this = left.min(file_size);
        left -= this;
        while this > 0 {
            for chunk in buf.chunks_mut(8) {
                // xorshift64: incompressible, different in every file.
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let b = state.to_le_bytes();
                chunk.copy_from_slice(&b[..chunk.len()]);
            }
            let len = this.min(buf.len() as u64) as usize;
            f.write_all(&buf[..len]).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
            this -= len as u64;
        }
        n += 1;
    }
    n
}

/// Drop the page cache of every file under `root` (clean pages only: sync first).
fn evict(root: &Path) {
    for e in fs::read_dir(root).unwrap_or_else(|e| panic!("{}: {e}", root.display())) {
        let e = e.expect("readdir");
        let ft = e.file_type().expect("file type");
        if ft.is_dir() {
            evict(&e.path());
        } else if ft.is_file() {
            let f = fs::File::open(e.path()).expect("open");
            let _ = rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed);
        }
    }
}

fn syncfs(p: &Path) {
    let f = fs::File::open(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    rustix::fs::syncfs(&f).unwrap_or_else(|e| panic!("syncfs {}: {e}", p.display()));
}

fn dir_fd(p: &Path) -> fs::File {
    fs::File::open(p).unwrap_or_else(|e| panic!("opening {}: {e}", p.display()))
}

/// Delete subvolume `name` under `parent` (with nested ones). The cleaner frees its
/// extents in the background (at the next periodic commit); measurements are kept
/// away from it by deleting only between sizes.
fn delete(parent: &Path, name: &str) {
    let p = dir_fd(parent);
    btrfs::delete_subvolume(p.as_fd(), name).unwrap_or_else(|e| panic!("{e}"));
}

/// Wait until the cleaner has freed every deleted subvolume, so that the next
/// measurements do not share the disk with it: commit every second meanwhile (the
/// cleaner runs after periodic commits), then back to the default 30 s.
fn settle(mnt: &Path) {
    let m = mnt.to_str().expect("utf-8 path");
    sh("mount", &["-o", "remount,commit=1", m]);
    sh("btrfs", &["subvolume", "sync", m]);
    sh("mount", &["-o", "remount,commit=30", m]);
    syncfs(mnt);
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn show(v: &[f64]) -> String {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let ms = |s: f64| if s < 0.01 { format!("{:.2}", s * 1000.0) } else { format!("{:.0}", s * 1000.0) };
    format!("{} ms ({}–{})", ms(median(v)), ms(lo), ms(hi))
}

fn human(bytes: u64) -> String {
    if bytes >= 1_000_000_000 {
        format!("{} GB", bytes / 1_000_000_000)
    } else {
        format!("{} MB", bytes / MB)
    }
}

struct Bench {
    runs: usize,
    rows: Vec<(String, String, usize, f64)>,
}

impl Bench {
    fn record(&mut self, what: &str, size: &str, run: usize, d: Duration) -> f64 {
        let s = d.as_secs_f64();
        self.rows.push((what.to_string(), size.to_string(), run, s));
        s
    }

    fn run(&mut self, dir: &Path, max_gb: u64) -> String {
        fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let host_fs = sh("findmnt", &["-n", "-o", "FSTYPE,SOURCE", "-T", dir.to_str().expect("utf-8 path")]);
        let max = max_gb * 1_000_000_000;
        // The largest image, the 1 GB top layer and its clones' metadata, with room to spare.
        progress("making the loop filesystems");
        let bt = Loop::new(dir, "btrfs", "btrfs", max + 4 * 1_000_000_000);
        let ext = Loop::new(dir, "ext4", "ext4", 1_600_000_000);
        let mut out = String::new();
        let _ = writeln!(out, "## Scaling (host, no QEMU)\n");
        let _ = writeln!(
            out,
            "dockroot's own code (the library) on loop-mounted filesystems in image files on the host's {} \
             ({} runs each; median, min–max). Real data: every file written in full.\n",
            host_fs.split_whitespace().collect::<Vec<_>>().join(" on "),
            self.runs
        );
        out.push_str(&self.toplayer(&bt, &ext));
        out.push_str(&self.rwlayer(&bt, max));
        out
    }

    fn toplayer(&mut self, bt: &Loop, ext: &Loop) -> String {
        let mut out = String::from(
            "### Top layer apply (`toplayer::apply`)\n\n\
             From a directory at the btrfs top level into a fresh subvolume (the rw layer) of the same \
             filesystem: file data is cloned (FICLONE). From ext4: copied (copy_file_range, then \
             read/write). \"+ sync\" adds the syncfs that makes it durable (dockroot syncs before \
             installing the new root). Source pages evicted before each run.\n\n\
             | top layer | files | same btrfs: apply | + sync | ext4 → btrfs: apply | + sync |\n\
             |---|---:|---:|---:|---:|---:|\n",
        );
        let sizes = [(MB, 16 * KIB), (100 * MB, MIB), (1000 * MB, 4 * MIB)];
        for (i, (total, file_size)) in sizes.into_iter().enumerate() {
            let label = human(total);
            let src_b = bt.mnt.join(format!("top-{i}"));
            let src_e = ext.mnt.join(format!("top-{i}"));
            progress(&format!("writing a {label} top layer on btrfs and on ext4"));
            let files = write_tree(&src_b, total, file_size, 10 + i as u64);
            write_tree(&src_e, total, file_size, 10 + i as u64);
            syncfs(&bt.mnt);
            syncfs(&ext.mnt);
            progress(&format!("applying the {label} top layer, {} runs", self.runs));
            let mut res: [Vec<f64>; 4] = Default::default();
            for run in 0..self.runs {
                for (k, (src, what)) in [(&src_b, "same btrfs"), (&src_e, "ext4 to btrfs")].into_iter().enumerate() {
                    evict(src);
                    let top = dir_fd(&bt.mnt);
                    let rw = format!("rw-{run}-{k}");
                    btrfs::create_subvolume(top.as_fd(), &rw).unwrap_or_else(|e| panic!("{e}"));
                    syncfs(&bt.mnt);
                    let dest = dir_fd(&bt.mnt.join(&rw));
                    let t = Instant::now();
                    let stats = toplayer::apply(src, dest.as_fd()).unwrap_or_else(|e| panic!("{e}"));
                    let applied = t.elapsed();
                    rustix::fs::syncfs(&dest).unwrap_or_else(|e| panic!("syncfs: {e}"));
                    let synced = t.elapsed();
                    assert_eq!(stats.files, files, "{stats:?}");
                    assert_eq!(stats.bytes, total, "{stats:?}");
                    let want_cloned = if k == 0 { files } else { 0 };
                    assert_eq!(stats.cloned, want_cloned, "{what}: {stats:?}");
                    res[2 * k].push(self.record(&format!("toplayer apply, {what}"), &label, run, applied));
                    res[2 * k + 1].push(self.record(&format!("toplayer apply+sync, {what}"), &label, run, synced));
                }
            }
            let _ = writeln!(
                out,
                "| {label} | {files} | {} | {} | {} | {} |",
                show(&res[0]),
                show(&res[1]),
                show(&res[2]),
                show(&res[3])
            );
            for run in 0..self.runs {
                for k in 0..2 {
                    delete(&bt.mnt, &format!("rw-{run}-{k}"));
                }
            }
            fs::remove_dir_all(&src_b).unwrap_or_else(|e| panic!("{e}"));
            fs::remove_dir_all(&src_e).unwrap_or_else(|e| panic!("{e}"));
            settle(&bt.mnt);
        }
        syncfs(&bt.mnt);
        out.push('\n');
        out
    }

    fn rwlayer(&mut self, bt: &Loop, max: u64) -> String {
        let mut out = String::from(
            "### rw layer creation (`RwStore::begin` + `commit`)\n\n\
             An image subvolume of real data in 4 MiB files (written, then synced), snapshotted as the \
             new root: `begin` is the writable snapshot and its xattrs, `commit` the syncs and renames \
             that install it and retire the previous root (keep=3, so later runs also delete one).\n\n\
             | image | files | snapshot (`begin`) | install (`commit`) |\n\
             |---|---:|---:|---:|\n",
        );
        let mut sizes = vec![100 * MB, 1000 * MB];
        if max > 1000 * MB {
            sizes.push(max);
        }
        let docker = bt.mnt.join("docker");
        fs::create_dir_all(&docker).unwrap_or_else(|e| panic!("{e}"));
        for (i, total) in sizes.into_iter().enumerate() {
            let label = human(total);
            let name = format!("image-{i}");
            progress(&format!("writing a {label} image"));
            btrfs::create_subvolume(dir_fd(&docker).as_fd(), &name).unwrap_or_else(|e| panic!("{e}"));
            let files = write_tree(&docker.join(&name), total, 4 * MIB, 100 + i as u64);
            syncfs(&bt.mnt);
            progress(&format!("snapshotting the {label} image, {} runs", self.runs));
            let image = dir_fd(&docker.join(&name));
            let top = dir_fd(&bt.mnt);
            let store = RwStore::open(top.as_fd(), &["rwlayer".to_string()]).unwrap_or_else(|e| panic!("{e}"));
            let (mut snap, mut commit) = (Vec::new(), Vec::new());
            for run in 0..self.runs {
                syncfs(&bt.mnt);
                let info = RootInfo { created: format!("20250101T00000{run}Z"), image: format!("sha256:{i}") };
                let t = Instant::now();
                let fd = store.begin(image.as_fd(), &info).unwrap_or_else(|e| panic!("{e}"));
                snap.push(self.record("rwlayer snapshot", &label, run, t.elapsed()));
                drop(fd);
                let t = Instant::now();
                store.commit(3).unwrap_or_else(|e| panic!("{e}"));
                commit.push(self.record("rwlayer commit", &label, run, t.elapsed()));
            }
            let _ = writeln!(out, "| {label} | {files} | {} | {} |", show(&snap), show(&commit));
            drop(store);
            drop(image);
            // Leave nothing behind for the next size: the rw layer, the kept roots, the image.
            delete(&bt.mnt, "rwlayer");
            let kept = bt.mnt.join("rwlayer.kept");
            if kept.is_dir() {
                for e in fs::read_dir(&kept).unwrap_or_else(|e| panic!("{e}")) {
                    let n = e.expect("readdir").file_name().to_string_lossy().into_owned();
                    btrfs::set_readonly(dir_fd(&kept.join(&n)).as_fd(), false).unwrap_or_else(|e| panic!("{e}"));
                    delete(&kept, &n);
                }
                fs::remove_dir(&kept).unwrap_or_else(|e| panic!("{e}"));
            }
            delete(&docker, &name);
            settle(&bt.mnt);
            progress(&format!("the {label} image is deleted"));
        }
        out.push('\n');
        out
    }
}
