//! Image stores written by the real tools on a loop-mounted btrfs (run as
//! root): Podman with the btrfs driver, containerd with the btrfs
//! snapshotter (images imported with `ctr images import`). No network: the
//! images are made from a local busybox tar with `podman import`/`build`.

// Tests stop at the first failure: unwrap, expect and panic are how they say so.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fs;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use common::{run, Containerd, LoopBtrfs, TempDir};
use dockroot::reference::{parse, DEFAULT_DOMAIN};
use dockroot::store::bbolt::{Db, MAX_ENTRIES};
use dockroot::store::{
    big_data_file_name, chain_ids, resolve_image, Platform, Resolved, Root, StoreKind, StoreOptions,
};

const PODMAN_PATH: &str = "var/lib/containers/storage";
/// A second Podman graph root that the default detection does not look at.
const PODMAN_ASIDE: &str = "podman-aside";

fn podman(graph: &Path, runroot: &Path, args: &[&str]) -> String {
    let mut all: Vec<&str> = vec![
        "--storage-driver",
        "btrfs",
        "--root",
        graph.to_str().unwrap(),
        "--runroot",
        runroot.to_str().unwrap(),
        "--cgroup-manager",
        "cgroupfs",
        "--events-backend",
        "none",
    ];
    all.extend_from_slice(args);
    run("podman", &all)
}

/// The images every test starts from, made by Podman in `graph`:
/// `localhost/base:1` (one layer: busybox and /etc/hello, imported),
/// `localhost/mytest:v2` (two layers: built FROM base with a RUN adding
/// /etc/two). Returns mytest's image ID (hex) and diff IDs.
fn make_podman_images(graph: &Path, tmp: &Path) -> (String, Vec<String>) {
    let runroot = tmp.join("run");
    let root = tmp.join("rootfs");
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox-static is installed");
    fs::write(root.join("etc/hello"), "hello\n").unwrap();
    let tar = tmp.join("base.tar");
    run("tar", &["-C", root.to_str().unwrap(), "-cf", tar.to_str().unwrap(), "."]);
    podman(graph, &runroot, &["import", tar.to_str().unwrap(), "localhost/base:1"]);
    let ctx = tmp.join("ctx");
    fs::create_dir_all(&ctx).unwrap();
    fs::write(
        ctx.join("Containerfile"),
        "FROM localhost/base:1\nRUN [\"/bin/busybox\", \"sh\", \"-c\", \"echo two > /etc/two\"]\n",
    )
    .unwrap();
    podman(
        graph,
        &runroot,
        &[
            "build",
            "--network",
            "none",
            "--pull=never",
            "-t",
            "mytest:v2",
            "-f",
            ctx.join("Containerfile").to_str().unwrap(),
            ctx.to_str().unwrap(),
        ],
    );
    let id = podman(graph, &runroot, &["image", "inspect", "--format", "{{.Id}}", "localhost/mytest:v2"]);
    let layers =
        podman(graph, &runroot, &["image", "inspect", "--format", "{{json .RootFS.Layers}}", "localhost/mytest:v2"]);
    let diff_ids: Vec<String> = serde_json::from_str(layers.trim()).unwrap();
    assert_eq!(diff_ids.len(), 2, "{layers}");
    (id.trim().to_string(), diff_ids)
}

/// The subvolume a resolved image boots, checked to be a btrfs subvolume
/// holding the built image's files.
fn check_root(top: &Path, r: &Resolved) -> PathBuf {
    let Root::Subvolume(rel) = &r.root else { panic!("expected a subvolume: {r:?}") };
    assert!(rel.is_relative(), "{rel:?}");
    let abs = top.join(rel);
    let dir = LoopBtrfs::dir(&abs);
    assert!(dockroot::btrfs::is_subvolume(dir.as_fd()).unwrap(), "{} is not a subvolume", abs.display());
    assert_eq!(fs::read_to_string(abs.join("etc/two")).unwrap(), "two\n");
    assert_eq!(fs::read_to_string(abs.join("etc/hello")).unwrap(), "hello\n");
    abs
}

fn opts() -> StoreOptions {
    StoreOptions::new(&["var".to_string(), "lib".to_string(), "docker".to_string()])
}

fn resolve(top: &Path, o: &StoreOptions, s: &str) -> dockroot::Result<Resolved> {
    resolve_image(top, o, &parse(s).unwrap())
}

/// Replace a file's content for the duration of `f`, then put it back.
fn with_changed(path: &Path, change: impl FnOnce(&mut Vec<u8>), f: impl FnOnce()) {
    let old = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut new = old.clone();
    change(&mut new);
    fs::write(path, &new).unwrap();
    f();
    fs::write(path, &old).unwrap();
}

#[test]
fn podman_btrfs_store_written_by_podman() {
    let fs_ = LoopBtrfs::new();
    let top = fs_.mnt.clone();
    let tmp = TempDir::new("podman");
    let graph = top.join(PODMAN_PATH);
    let (id, diff_ids) = make_podman_images(&graph, &tmp.path);
    podman(
        &graph,
        &tmp.path.join("run"),
        &["tag", "localhost/base:1", &format!("{DEFAULT_DOMAIN}/library/busy:latest")],
    );
    let digest =
        podman(&graph, &tmp.path.join("run"), &["image", "inspect", "--format", "{{.Digest}}", "localhost/mytest:v2"]);
    let digest = digest.trim().to_string();
    let o = opts();

    // Short and full names, ID, short ID, digest reference.
    let r = resolve(&top, &o, "mytest:v2").unwrap();
    assert_eq!(r.store, StoreKind::Podman);
    assert_eq!(r.store_path, PathBuf::from(PODMAN_PATH));
    assert_eq!(r.reference, "localhost/mytest:v2");
    assert_eq!(r.image_id, format!("sha256:{id}"));
    assert_eq!(r.diff_ids, diff_ids);
    assert_eq!(r.chain_ids, chain_ids(&diff_ids));
    assert!(r.verified && r.warnings.is_empty(), "{r:?}");
    let sub = check_root(&top, &r);
    assert_eq!(sub, graph.join("btrfs/subvolumes").join(&r.layer));
    for s in ["localhost/mytest:v2", &format!("sha256:{id}"), &id[..12], &format!("mytest@{digest}")] {
        let again = resolve(&top, &o, s).unwrap_or_else(|e| panic!("{s}: {e}"));
        assert_eq!((again.image_id.as_str(), &again.root), (r.image_id.as_str(), &r.root), "{s}");
    }
    assert_eq!(
        resolve(&top, &o, &format!("mytest@{digest}")).unwrap().manifest_digest.as_deref(),
        Some(digest.as_str())
    );
    // The default-domain name Podman stores fully qualified, found from the short form.
    let busy = resolve(&top, &o, "busy").unwrap();
    assert_eq!(busy.reference, format!("{DEFAULT_DOMAIN}/library/busy:latest"));
    assert_eq!(busy.diff_ids, diff_ids[..1]);

    // Not found: the message names the store and what it holds.
    let e = resolve(&top, &o, "nope:1").unwrap_err().to_string();
    assert!(e.contains("Podman (btrfs) at /var/lib/containers/storage") && e.contains("localhost/mytest:v2"), "{e}");
    // Pinned to a store that is not there.
    let pinned = StoreOptions { pin: Some(StoreKind::Docker), ..o.clone() };
    let e = resolve(&top, &pinned, "mytest:v2").unwrap_err().to_string();
    assert!(e.contains("no image store found (dockroot.store=docker)"), "{e}");

    // Tampered config: refused, naming the file and the image; boots with verify off.
    let config = graph.join("btrfs-images").join(&id).join(big_data_file_name(&format!("sha256:{id}")));
    with_changed(
        &config,
        |b| b.push(b' '),
        || {
            let e = resolve(&top, &o, "mytest:v2").unwrap_err().to_string();
            assert!(
                e.contains("verification failed")
                    && e.contains(&config.display().to_string())
                    && e.contains("localhost/mytest:v2"),
                "{e}"
            );
            let off = StoreOptions { verify: false, ..o.clone() };
            let r = resolve(&top, &off, "mytest:v2").unwrap();
            assert!(!r.verified && r.warnings.len() == 1 && r.warnings[0].contains("does not match its ID"), "{r:?}");
        },
    );
    // A swapped layer: layers.json records another diff for the top layer.
    let layers = graph.join("btrfs-layers/layers.json");
    with_changed(
        &layers,
        |b| {
            let s = String::from_utf8(b.clone()).unwrap().replace(&diff_ids[1], &diff_ids[0]);
            *b = s.into_bytes();
        },
        || {
            let e = resolve(&top, &o, "mytest:v2").unwrap_err().to_string();
            assert!(e.contains("verification failed") && e.contains("layers.json") && e.contains(&diff_ids[1]), "{e}");
        },
    );
    // A manifest that no longer matches the digest asked for.
    let manifest = graph.join("btrfs-images").join(&id).join(big_data_file_name(&format!("manifest-{digest}")));
    with_changed(
        &manifest,
        |b| b.push(b'\n'),
        || {
            let e = resolve(&top, &o, &format!("mytest@{digest}")).unwrap_err().to_string();
            assert!(e.contains("verification failed") && e.contains(&manifest.display().to_string()), "{e}");
            // The name alone does not involve the manifest.
            resolve(&top, &o, "mytest:v2").unwrap();
        },
    );
}

#[test]
fn containerd_btrfs_snapshotter_written_by_containerd() {
    let fs_ = LoopBtrfs::new();
    let top = fs_.mnt.clone();
    let tmp = TempDir::new("containerd");
    let aside = top.join(PODMAN_ASIDE);
    let runroot = tmp.path.join("run");
    let (id, diff_ids) = make_podman_images(&aside, &tmp.path);
    // A docker-archive of mytest, and a two-platform OCI index (arm64 + amd64).
    let docker_tar = tmp.path.join("docker.tar");
    podman(
        &aside,
        &runroot,
        &["save", "--format", "docker-archive", "-o", docker_tar.to_str().unwrap(), "localhost/mytest:v2"],
    );
    let arm = tmp.path.join("armroot");
    fs::create_dir_all(arm.join("etc")).unwrap();
    fs::write(arm.join("etc/arch"), "arm64\n").unwrap();
    let arm_tar = tmp.path.join("arm.tar");
    run("tar", &["-C", arm.to_str().unwrap(), "-cf", arm_tar.to_str().unwrap(), "."]);
    podman(
        &aside,
        &runroot,
        &["import", "--arch", "arm64", "--variant", "v8", arm_tar.to_str().unwrap(), "localhost/base-arm:1"],
    );
    podman(&aside, &runroot, &["manifest", "create", "localhost/multi:1"]);
    podman(&aside, &runroot, &["manifest", "add", "localhost/multi:1", "containers-storage:localhost/base-arm:1"]);
    podman(&aside, &runroot, &["manifest", "add", "localhost/multi:1", "containers-storage:localhost/mytest:v2"]);
    let multi_tar = tmp.path.join("multi.tar");
    podman(
        &aside,
        &runroot,
        &["manifest", "push", "--all", "localhost/multi:1", &format!("oci-archive:{}", multi_tar.display())],
    );

    let croot = top.join("var/lib/containerd");
    let multi = "registry.example:5000/team/multi:1";
    let (mytest_digest, snapshots) = {
        let c = Containerd::start(&croot, &tmp.path);
        c.ctr(&["images", "import", "--snapshotter", "btrfs", docker_tar.to_str().unwrap()]);
        c.ctr(&[
            "images",
            "import",
            "--snapshotter",
            "btrfs",
            "--all-platforms",
            "--index-name",
            multi,
            multi_tar.to_str().unwrap(),
        ]);
        let list = c.ctr(&["images", "ls"]);
        let line = list.lines().find(|l| l.starts_with("localhost/mytest:v2 ")).unwrap_or_else(|| panic!("{list}"));
        let digest = line.split_whitespace().find(|w| w.starts_with("sha256:")).unwrap().to_string();
        let snaps = c.ctr(&["snapshots", "--snapshotter", "btrfs", "ls"]);
        (digest, snaps)
        // containerd stops here: the disk is read as at boot.
    };
    let chains = chain_ids(&diff_ids);
    assert!(snapshots.contains(&chains[1]), "{snapshots}");

    // The bbolt reader against the files containerd wrote.
    let db = Db::open(&croot.join("io.containerd.metadata.v1.bolt/meta.db")).unwrap();
    let images = db.bucket_path(&[b"v1", b"moby", b"images"]).unwrap().unwrap();
    let names: Vec<String> =
        images.buckets(MAX_ENTRIES).unwrap().into_iter().map(|(k, _)| String::from_utf8(k).unwrap()).collect();
    assert_eq!(names, vec!["localhost/mytest:v2".to_string(), multi.to_string()]);
    let target = images.bucket(b"localhost/mytest:v2").unwrap().unwrap().bucket(b"target").unwrap().unwrap();
    assert_eq!(target.get(b"digest").unwrap().unwrap(), mytest_digest.as_bytes());
    let snaps = db.bucket_path(&[b"v1", b"moby", b"snapshots", b"btrfs"]).unwrap().unwrap();
    let keys: Vec<Vec<u8>> = snaps.buckets(MAX_ENTRIES).unwrap().into_iter().map(|(k, _)| k).collect();
    // bbolt keeps keys in byte order; chain IDs are hashes, so their order differs from run to run.
    let mut want = vec![chains[0].as_bytes().to_vec(), chains[1].as_bytes().to_vec()];
    want.sort();
    assert_eq!(keys, want);
    assert_eq!(
        snaps.bucket(chains[1].as_bytes()).unwrap().unwrap().get(b"parent").unwrap().unwrap(),
        chains[0].as_bytes()
    );

    let o = opts();
    let r = resolve(&top, &o, "localhost/mytest:v2").unwrap();
    assert_eq!(r.store, StoreKind::Containerd);
    assert_eq!(r.store_path, PathBuf::from("var/lib/containerd"));
    assert_eq!(r.image_id, format!("sha256:{id}"));
    assert_eq!(r.manifest_digest.as_deref(), Some(mytest_digest.as_str()));
    assert_eq!((r.diff_ids.clone(), r.chain_ids.clone()), (diff_ids.clone(), chains.clone()));
    let sub = check_root(&top, &r);
    assert_eq!(run("btrfs", &["property", "get", "-ts", sub.to_str().unwrap(), "ro"]).trim(), "ro=true");
    // Short name (filed as localhost/...), digest reference, nested index picked for amd64.
    assert_eq!(resolve(&top, &o, "mytest:v2").unwrap().root, r.root);
    assert_eq!(resolve(&top, &o, &format!("localhost/mytest@{mytest_digest}")).unwrap().root, r.root);
    assert_eq!(resolve(&top, &o, &mytest_digest["sha256:".len()..][..12]).unwrap().root, r.root);
    let m = resolve(&top, &o, multi).unwrap();
    assert_eq!((m.image_id.as_str(), &m.root), (r.image_id.as_str(), &r.root));
    assert_ne!(m.manifest_digest, r.manifest_digest, "the index, not the manifest");

    // arm64: in the index, its blobs imported, but not unpacked.
    let arm64 = StoreOptions {
        platform: Platform { os: "linux".into(), architecture: "arm64".into(), variant: None },
        ..o.clone()
    };
    let e = resolve(&top, &arm64, multi).unwrap_err().to_string();
    assert!(e.contains("not unpacked") && e.contains(multi), "{e}");
    let s390 = StoreOptions {
        platform: Platform { os: "linux".into(), architecture: "s390x".into(), variant: None },
        ..o.clone()
    };
    let e = resolve(&top, &s390, multi).unwrap_err().to_string();
    assert!(e.contains("no manifest for linux/s390x") && e.contains("linux/arm64/v8"), "{e}");
    // Another namespace.
    let e =
        resolve(&top, &StoreOptions { namespace: "default".into(), ..o.clone() }, "mytest:v2").unwrap_err().to_string();
    assert!(e.contains("no images in namespace default (namespaces: moby)"), "{e}");

    // The same image in Podman too: ambiguous, unless pinned.
    let both = StoreOptions { podman_path: vec![PODMAN_ASIDE.to_string()], ..o.clone() };
    let e = resolve(&top, &both, "mytest:v2").unwrap_err().to_string();
    assert!(
        e.contains("ambiguous")
            && e.contains("Podman (btrfs) at /podman-aside")
            && e.contains("containerd (btrfs) at /var/lib/containerd")
            && e.contains(&id),
        "{e}"
    );
    let pinned =
        resolve(&top, &StoreOptions { pin: Some(StoreKind::Containerd), ..both.clone() }, "mytest:v2").unwrap();
    assert_eq!(pinned.root, r.root);
    assert_eq!(
        resolve(&top, &StoreOptions { pin: Some(StoreKind::Podman), ..both }, "mytest:v2").unwrap().store,
        StoreKind::Podman
    );

    // Tampered config blob: refused, naming the blob; boots with verify off.
    let blob = croot.join("io.containerd.content.v1.content/blobs/sha256").join(&id);
    with_changed(
        &blob,
        |b| b.push(b' '),
        || {
            let e = resolve(&top, &o, "mytest:v2").unwrap_err().to_string();
            assert!(e.contains("verification failed") && e.contains(&blob.display().to_string()), "{e}");
            let r = resolve(&top, &StoreOptions { verify: false, ..o.clone() }, "mytest:v2").unwrap();
            assert_eq!(r.warnings.len(), 1, "{r:?}");
        },
    );

    // Damaged meta.db copies: errors naming the file, never a panic.
    let meta = fs::read(croot.join("io.containerd.metadata.v1.bolt/meta.db")).unwrap();
    let copy = tmp.path.join("meta-copy.db");
    let mut errors = 0;
    // Every page's header and first elements, and a sample of the rest.
    let positions = (0..meta.len())
        .step_by(4096)
        .flat_map(|p| (p..p + 48).step_by(3))
        .chain((0..meta.len()).step_by(97).filter(|p| meta[*p] != 0));
    for pos in positions {
        let mut b = meta.clone();
        b[pos] ^= 0x5a;
        fs::write(&copy, &b).unwrap();
        let r = (|| -> dockroot::Result<usize> {
            let db = Db::open(&copy)?;
            let Some(images) = db.bucket_path(&[b"v1", b"moby", b"images"])? else { return Ok(0) };
            let mut n = 0;
            for (_, img) in images.buckets(MAX_ENTRIES)? {
                n += img.entries(MAX_ENTRIES)?.len();
            }
            Ok(n)
        })();
        if let Err(e) = r {
            errors += 1;
            assert!(e.to_string().contains(&copy.display().to_string()), "{e}");
        }
    }
    assert!(errors > 0, "no flip was noticed at all");
}
