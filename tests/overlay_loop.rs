//! Overlay image stores written by the real tools on loop-mounted ext4 and
//! xfs (run as root): Docker's overlay2 graph driver (Debian's dockerd with
//! `--storage-driver overlay2`) and containerd's overlayfs snapshotter
//! (`ctr images import --snapshotter overlayfs` into namespace moby). No
//! registry: the image is `docker import` of a local busybox tar and a
//! `docker build` on top, with a file deleted in an upper layer.
//!
//! For each store the resolved lowerdirs are compared with what the tool
//! itself says the layers are, then mounted with overlayfs (from the driver
//! directory, as the init does) to check the merged view.

// Tests stop at the first failure: unwrap, expect and panic are how they say so.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::{require_tools, run, Containerd, LoopFs, TempDir};
use dockroot::reference::parse;
use dockroot::store::bbolt::Db;
use dockroot::store::{chain_ids, resolve_image, Driver, Resolved, Root, StoreKind, StoreOptions};

const IMAGE: &str = "ovt/multi:1";
const DOCKER_PATH: &str = "var/lib/docker";
const CONTAINERD_PATH: &str = "var/lib/containerd";

/// A private dockerd with its data root on the test filesystem; stopped on
/// drop (or by [`Dockerd::stop`]).
struct Dockerd {
    child: Option<Child>,
    tmp: PathBuf,
    host: String,
}

impl Dockerd {
    fn start(data_root: &Path, tmp: &Path) -> Dockerd {
        fs::create_dir_all(data_root).unwrap();
        let config = tmp.join("daemon.json");
        fs::write(&config, "{}").unwrap();
        let log = fs::File::create(tmp.join("dockerd.log")).unwrap();
        let host = format!("unix://{}", tmp.join("docker.sock").display());
        let child = Command::new("dockerd")
            .arg("--config-file")
            .arg(&config)
            .arg("--data-root")
            .arg(data_root)
            .args(["--storage-driver", "overlay2", "-H", &host])
            .arg("--exec-root")
            .arg(tmp.join("exec"))
            .arg("--pidfile")
            .arg(tmp.join("docker.pid"))
            .args(["--iptables=false", "--ip-masq=false", "--bridge=none"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("dockerd is installed (run scripts/setup)");
        let mut d = Dockerd { child: Some(child), tmp: tmp.to_path_buf(), host };
        for _ in 0..120 {
            if d.try_docker(&["info", "--format", "{{.Driver}}"]).is_some_and(|s| s.trim() == "overlay2") {
                return d;
            }
            if let Some(Ok(Some(status))) = d.child.as_mut().map(|c| c.try_wait()) {
                panic!("dockerd exited ({status}): {}", d.log());
            }
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
        panic!("dockerd not ready with overlay2 after 30 s: {}", d.log());
    }

    fn log(&self) -> String {
        fs::read_to_string(self.tmp.join("dockerd.log")).unwrap_or_default()
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("docker");
        c.args(["-H", &self.host]).args(args);
        c.env("DOCKER_CONFIG", self.tmp.join("client")).env("DOCKER_BUILDKIT", "0");
        c
    }

    fn try_docker(&self, args: &[&str]) -> Option<String> {
        let out = self.command(args).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn docker(&self, args: &[&str]) -> String {
        let out = self.command(args).output().expect("docker is installed (run scripts/setup)");
        assert!(
            out.status.success(),
            "docker {args:?} failed ({}): {}{}\ndockerd log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// SIGTERM, wait (the disk is then read as at boot), and unmount
    /// anything the engine left below its exec root.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let pid = rustix::process::Pid::from_child(&child);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        for _ in 0..150 {
            if child.try_wait().is_ok_and(|s| s.is_some()) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        if child.try_wait().is_ok_and(|s| s.is_none()) {
            let _ = child.kill();
        }
        let _ = child.wait();
        let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let exec = self.tmp.join("exec");
        let mut left: Vec<&str> =
            mounts.lines().filter_map(|l| l.split(' ').nth(1)).filter(|m| Path::new(m).starts_with(&exec)).collect();
        left.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in left {
            let _ = Command::new("umount").args(["-l", m]).status();
        }
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What dockerd built: the image's ID and diff IDs, and its layers' `diff`
/// directories top first, as `docker image inspect` names them.
struct Built {
    id: String,
    diff_ids: Vec<String>,
    diffs: Vec<PathBuf>,
}

/// `ovt/base:1` imported from a tar of busybox, /etc/hello and /etc/gone,
/// and `ovt/multi:1` built on it: /etc/two, /etc/gone deleted, /etc/three
/// (four layers, the third a whiteout).
fn build_image(d: &Dockerd, tmp: &Path) -> Built {
    let root = tmp.join("rootfs");
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox-static is installed (run scripts/setup)");
    fs::write(root.join("etc/hello"), "hello\n").unwrap();
    fs::write(root.join("etc/gone"), "gone\n").unwrap();
    let tar = tmp.join("base.tar");
    run("tar", &["--numeric-owner", "-C", root.to_str().unwrap(), "-cf", tar.to_str().unwrap(), "."]);
    d.docker(&["import", tar.to_str().unwrap(), "ovt/base:1"]);
    let ctx = tmp.join("ctx");
    fs::create_dir_all(&ctx).unwrap();
    fs::write(
        ctx.join("Dockerfile"),
        "FROM ovt/base:1\n\
         RUN [\"/bin/busybox\", \"sh\", \"-c\", \"echo two > /etc/two\"]\n\
         RUN [\"/bin/busybox\", \"rm\", \"/etc/gone\"]\n\
         RUN [\"/bin/busybox\", \"sh\", \"-c\", \"echo three > /etc/three\"]\n",
    )
    .unwrap();
    d.docker(&["build", "-q", "--network=none", "-t", IMAGE, ctx.to_str().unwrap()]);
    let inspect = |f: &str| d.docker(&["image", "inspect", "--format", f, IMAGE]).trim().to_string();
    let id = inspect("{{.Id}}");
    let diff_ids: Vec<String> = serde_json::from_str(&inspect("{{json .RootFS.Layers}}")).unwrap();
    assert_eq!(diff_ids.len(), 4, "{diff_ids:?}");
    let data: serde_json::Value = serde_json::from_str(&inspect("{{json .GraphDriver.Data}}")).unwrap();
    let mut diffs = vec![PathBuf::from(data["UpperDir"].as_str().unwrap())];
    diffs.extend(data["LowerDir"].as_str().unwrap().split(':').map(PathBuf::from));
    Built { id, diff_ids, diffs }
}

fn opts() -> StoreOptions {
    StoreOptions::new(&DOCKER_PATH.split('/').map(str::to_string).collect::<Vec<_>>())
}

fn resolve(top: &Path, o: &StoreOptions, s: &str) -> dockroot::Result<Resolved> {
    resolve_image(top, o, &parse(s).unwrap())
}

fn pinned(kind: StoreKind, driver: Driver) -> StoreOptions {
    StoreOptions { pin: Some(kind), driver: Some(driver), ..opts() }
}

/// The overlay's base and lowerdirs, each checked to be the directory
/// `want` names (top first), whatever short form the store chose.
fn check_lowerdirs(top: &Path, r: &Resolved, want_base: &str, want: &[PathBuf]) -> (PathBuf, Vec<PathBuf>) {
    let Root::Overlay { base, lowerdirs } = &r.root else { panic!("expected an overlay: {r:?}") };
    eprintln!("{} boots {} from {}: {lowerdirs:?}", r.reference, r.whence(), base.display());
    assert_eq!(base, Path::new(want_base));
    assert_eq!(lowerdirs.len(), want.len(), "{lowerdirs:?}");
    for (l, w) in lowerdirs.iter().zip(want) {
        assert!(l.is_relative() && !l.starts_with(".."), "{l:?}");
        let got = fs::canonicalize(top.join(base).join(l)).unwrap();
        assert_eq!(got, fs::canonicalize(w).unwrap(), "lowerdir {l:?}");
    }
    (top.join(base), lowerdirs.clone())
}

/// Mount the overlay as the init would (lowerdirs relative to the base
/// directory as the working directory, upper and work on the same
/// filesystem) and check the merged view.
fn check_merged(fs_top: &Path, base: &Path, lowerdirs: &[PathBuf], tag: &str) {
    let scratch = fs_top.join(format!("overlay-check-{tag}"));
    let (upper, work, merged) = (scratch.join("upper"), scratch.join("work"), scratch.join("merged"));
    for d in [&upper, &work, &merged] {
        fs::create_dir_all(d).unwrap();
    }
    let lower: Vec<String> = lowerdirs.iter().map(|l| l.display().to_string()).collect();
    let options = format!("lowerdir={},upperdir={},workdir={}", lower.join(":"), upper.display(), work.display());
    let out = Command::new("mount")
        .current_dir(base)
        .args(["-t", "overlay", "overlay", "-o", &options])
        .arg(&merged)
        .output()
        .unwrap();
    assert!(out.status.success(), "mount -o {options}: {}", String::from_utf8_lossy(&out.stderr));
    let read = |p: &str| fs::read_to_string(merged.join(p));
    let result = std::panic::catch_unwind(|| {
        assert_eq!(read("etc/three").unwrap(), "three\n");
        assert_eq!(read("etc/two").unwrap(), "two\n");
        assert_eq!(read("etc/hello").unwrap(), "hello\n");
        assert!(merged.join("bin/busybox").is_file());
        assert!(!merged.join("etc/gone").exists(), "the whiteout of /etc/gone is not honoured");
        let mut names: Vec<String> =
            fs::read_dir(merged.join("etc")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        assert_eq!(names, ["hello", "three", "two"]);
        // Writes land in the upper directory only.
        fs::write(merged.join("etc/hello"), "changed\n").unwrap();
        assert_eq!(fs::read_to_string(upper.join("etc/hello")).unwrap(), "changed\n");
    });
    run("umount", &[merged.to_str().unwrap()]);
    // The image layers are untouched.
    for l in lowerdirs {
        if let Ok(s) = fs::read_to_string(base.join(l).join("etc/hello")) {
            assert_eq!(s, "hello\n", "{l:?}");
        }
    }
    fs::remove_dir_all(&scratch).unwrap();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

/// Replace a file's content for the duration of `f`, then put it back.
fn with_changed(path: &Path, new: &[u8], f: impl FnOnce()) {
    let old = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    fs::write(path, new).unwrap();
    f();
    fs::write(path, &old).unwrap();
}

/// The Docker overlay2 checks on a filesystem where dockerd built the image.
fn check_docker(top: &Path, b: &Built) -> Resolved {
    let o = opts();
    let r = resolve(top, &o, IMAGE).unwrap();
    assert_eq!((r.store, r.driver), (StoreKind::Docker, Driver::Overlay2));
    assert_eq!(r.whence(), format!("Docker (overlay2) at /{DOCKER_PATH}"));
    assert_eq!(r.image_id, b.id);
    assert_eq!((&r.diff_ids, &r.chain_ids), (&b.diff_ids, &chain_ids(&b.diff_ids)));
    assert!(r.verified && r.warnings.is_empty(), "{r:?}");
    let (base, lowerdirs) = check_lowerdirs(top, &r, &format!("{DOCKER_PATH}/overlay2"), &b.diffs);
    // The short links are used: the mount options stay short.
    assert!(lowerdirs.iter().all(|l| l.starts_with("l") && l.as_os_str().len() == 28), "{lowerdirs:?}");
    check_merged(top, &base, &lowerdirs, "docker");
    // The top layer is its cache ID, the diff directory's parent.
    assert_eq!(b.diffs[0].parent().unwrap().file_name().unwrap().to_str().unwrap(), r.layer);
    assert_eq!(resolve(top, &o, &b.id).unwrap().root, r.root);

    // Tampered config: refused naming the file; booted with verify off.
    let config = top.join(DOCKER_PATH).join("image/overlay2/imagedb/content/sha256").join(&b.id["sha256:".len()..]);
    let mut edited = fs::read(&config).unwrap();
    edited.push(b' ');
    with_changed(&config, &edited, || {
        let e = resolve(top, &o, IMAGE).unwrap_err().to_string();
        assert!(e.contains("verification failed") && e.contains(&config.display().to_string()), "{e}");
        let r = resolve(top, &StoreOptions { verify: false, ..opts() }, IMAGE).unwrap();
        assert!(!r.verified && r.warnings.len() == 1, "{r:?}");
    });
    // A swapped layer: the layer store records another diff for layer 3.
    let chains = chain_ids(&b.diff_ids);
    let layerdb = top.join(DOCKER_PATH).join("image/overlay2/layerdb/sha256");
    let diff3 = layerdb.join(&chains[2]["sha256:".len()..]).join("diff");
    with_changed(&diff3, b.diff_ids[1].as_bytes(), || {
        let e = resolve(top, &o, IMAGE).unwrap_err().to_string();
        assert!(e.contains("verification failed") && e.contains(&diff3.display().to_string()), "{e}");
    });
    // Swapped cache IDs of layers 2 and 3: Docker's own lower record disagrees.
    let cache = |i: usize| layerdb.join(&chains[i]["sha256:".len()..]).join("cache-id");
    let (c2, c3) = (fs::read(cache(1)).unwrap(), fs::read(cache(2)).unwrap());
    with_changed(&cache(1), &c3, || {
        with_changed(&cache(2), &c2, || {
            let e = resolve(top, &o, IMAGE).unwrap_err().to_string();
            assert!(e.contains("verification failed") && e.contains("/lower"), "{e}");
        })
    });
    resolve(top, &o, IMAGE).unwrap();
    r
}

#[test]
fn docker_overlay2_on_ext4_and_containerd_overlayfs_snapshotter() {
    require_tools(&["dockerd", "docker", "containerd", "ctr", "mkfs.ext4"]);
    let lfs = LoopFs::with_mkfs("ext4", &["mkfs.ext4", "-q", "-F"]);
    let top = lfs.mnt.clone();
    let tmp = TempDir::new("ovl-ext4");
    let archive = tmp.path.join("multi.tar");
    let built = {
        let mut d = Dockerd::start(&top.join(DOCKER_PATH), &tmp.path);
        let b = build_image(&d, &tmp.path);
        d.docker(&["save", "-o", archive.to_str().unwrap(), IMAGE]);
        d.stop();
        b
    };
    let docker = check_docker(&top, &built);

    // The dry run on an ext4 root partition.
    let cmdline = format!("root=LABEL=disk rootfstype=ext4 dockroot.rw=rw dockroot.image={IMAGE}");
    let plan = dockroot::plan::describe(&dockroot::plan::PlanInput {
        top: &top,
        cmdline: &cmdline,
        config: None,
        toplayer_dir: None,
        device: None,
        toplayer_device: None,
    })
    .unwrap();
    let text = plan.to_string();
    assert_eq!(plan.resolved.as_ref().map(|r| &r.root), Some(&docker.root), "{text}");
    assert!(
        text.contains("root partition: LABEL=disk (ext4)")
            && text.contains(&format!(
                "boots an overlay of 4 layer directories in /{DOCKER_PATH}/overlay2 (top first): l/"
            ))
            && text.contains("a fresh /rw is created: the upper and work directories of the overlay"),
        "{text}"
    );

    // containerd with the overlayfs snapshotter, on the same filesystem.
    let croot = top.join(CONTAINERD_PATH);
    let chains = chain_ids(&built.diff_ids);
    let (snapshot_dirs, manifest) = {
        let c = Containerd::start(&croot, &tmp.path);
        c.ctr(&["images", "import", "--snapshotter", "overlayfs", archive.to_str().unwrap()]);
        let list = c.ctr(&["images", "ls"]);
        let line = list.lines().find(|l| l.contains(IMAGE)).unwrap_or_else(|| panic!("{list}"));
        let manifest = line.split_whitespace().find(|w| w.starts_with("sha256:")).unwrap().to_string();
        // containerd's own view of the layers: the lowerdirs of a snapshot on top.
        c.ctr(&["snapshots", "--snapshotter", "overlayfs", "prepare", "ovt-probe", chains.last().unwrap()]);
        let mounts = c.ctr(&["snapshots", "--snapshotter", "overlayfs", "mounts", "/x", "ovt-probe"]);
        c.ctr(&["snapshots", "--snapshotter", "overlayfs", "rm", "ovt-probe"]);
        let lower = mounts
            .split([',', ' ', '\n'])
            .find_map(|w| w.strip_prefix("lowerdir="))
            .unwrap_or_else(|| panic!("{mounts}"));
        (lower.split(':').map(PathBuf::from).collect::<Vec<_>>(), manifest)
    };
    assert_eq!(snapshot_dirs.len(), 4, "{snapshot_dirs:?}");

    // Found in both stores: ambiguous unless pinned.
    let e = resolve(&top, &opts(), IMAGE).unwrap_err().to_string();
    assert!(
        e.contains("ambiguous")
            && e.contains(&format!("Docker (overlay2) at /{DOCKER_PATH}"))
            && e.contains(&format!("containerd (overlayfs) at /{CONTAINERD_PATH}"))
            && e.contains("docker:overlay2, containerd:overlayfs"),
        "{e}"
    );
    assert_eq!(resolve(&top, &pinned(StoreKind::Docker, Driver::Overlay2), IMAGE).unwrap().root, docker.root);
    let o = pinned(StoreKind::Containerd, Driver::Overlayfs);
    let r = resolve(&top, &o, IMAGE).unwrap();
    assert_eq!((r.store, r.driver), (StoreKind::Containerd, Driver::Overlayfs));
    assert_eq!(r.image_id, built.id);
    assert_eq!(r.manifest_digest.as_deref(), Some(manifest.as_str()));
    assert_eq!(r.chain_ids, chains);
    let snap_base = format!("{CONTAINERD_PATH}/io.containerd.snapshotter.v1.overlayfs");
    let (base, lowerdirs) = check_lowerdirs(&top, &r, &snap_base, &snapshot_dirs);
    assert!(lowerdirs.iter().all(|l| l.starts_with("snapshots") && l.ends_with("fs")), "{lowerdirs:?}");
    check_merged(&top, &base, &lowerdirs, "containerd");
    // By manifest digest, and by the plain store name (only overlayfs has it).
    assert_eq!(resolve(&top, &o, &format!("ovt/multi@{manifest}")).unwrap().root, r.root);
    let plain = StoreOptions { pin: Some(StoreKind::Containerd), ..opts() };
    assert_eq!(resolve(&top, &plain, IMAGE).unwrap().root, r.root);
    // Not with the btrfs snapshotter: it says where the layers are.
    let e = resolve(&top, &pinned(StoreKind::Containerd, Driver::Btrfs), IMAGE).unwrap_err().to_string();
    assert!(e.contains("unpacked with the overlayfs snapshotter, not btrfs"), "{e}");

    // Tampered config blob: refused, naming the blob; booted with verify off.
    let blob = croot.join("io.containerd.content.v1.content/blobs/sha256").join(&built.id["sha256:".len()..]);
    let mut edited = fs::read(&blob).unwrap();
    edited.push(b' ');
    with_changed(&blob, &edited, || {
        let e = resolve(&top, &o, IMAGE).unwrap_err().to_string();
        assert!(e.contains("verification failed") && e.contains(&blob.display().to_string()), "{e}");
        let r = resolve(&top, &StoreOptions { verify: false, ..o.clone() }, IMAGE).unwrap();
        assert!(!r.verified && r.warnings.len() == 1, "{r:?}");
    });
    // A swapped layer: meta.db files layer 3 under the snapshot of layer 2;
    // the snapshotter's parent chain then disagrees.
    let meta = croot.join("io.containerd.metadata.v1.bolt/meta.db");
    let bytes = fs::read(&meta).unwrap();
    let swapped = {
        let db = Db::open(&meta).unwrap();
        let name = |c: &str| {
            let b = db.bucket_path(&[b"v1", b"moby", b"snapshots", b"overlayfs", c.as_bytes()]).unwrap().unwrap();
            b.get(b"name").unwrap().unwrap()
        };
        let (n2, n3) = (name(&chains[1]), name(&chains[2]));
        assert_eq!(n2.len(), n3.len(), "{n2:?} {n3:?}");
        replace_once(&bytes, &n3, &n2)
    };
    with_changed(&meta, &swapped, || {
        let e = resolve(&top, &o, IMAGE).unwrap_err().to_string();
        assert!(e.contains("verification failed") && e.contains("metadata.db") && e.contains("has parent"), "{e}");
    });
    assert_eq!(resolve(&top, &o, IMAGE).unwrap().root, r.root);
}

/// `data` with the one occurrence of `from` replaced by `to` (same length).
fn replace_once(data: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let hits: Vec<usize> = data.windows(from.len()).enumerate().filter(|(_, w)| *w == from).map(|(i, _)| i).collect();
    assert_eq!(hits.len(), 1, "{:?} occurs {} times", String::from_utf8_lossy(from), hits.len());
    let mut out = data.to_vec();
    out[hits[0]..hits[0] + to.len()].copy_from_slice(to);
    out
}

#[test]
fn docker_overlay2_on_xfs() {
    require_tools(&["dockerd", "docker", "mkfs.xfs"]);
    let lfs = LoopFs::with_mkfs("xfs", &["mkfs.xfs", "-q", "-f"]);
    let top = lfs.mnt.clone();
    let tmp = TempDir::new("ovl-xfs");
    let built = {
        let mut d = Dockerd::start(&top.join(DOCKER_PATH), &tmp.path);
        let b = build_image(&d, &tmp.path);
        d.stop();
        b
    };
    check_docker(&top, &built);
}
