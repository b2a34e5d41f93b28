//! Boot tests for every image store (issue 6): one disk per layout written by the real
//! tool (qemu-tests/fixtures/make-store-disks: Podman with the btrfs driver, containerd
//! with the btrfs and the overlayfs snapshotter, dockerd overlay2 on ext4 and on xfs),
//! each booted twice into the image `dockroot-test/stores:latest` with `dockroot plan`
//! run on the host in between and checked against what the second boot did; and
//! verification: a tampered Docker image (edited config, swapped layer) is refused with
//! a message naming it and the mismatch, and boots with `dockroot.verify=off` with a
//! warning in the boot record.

use std::path::Path;

use qemu_tests::{
    assert_same_digest, field, sh, tree_digest, Artifacts, BootOutput, Machine, StoreDisk, OS_CONFIG, STANDARD_MODULES,
};
use serde_json::Value;

/// The embedded config of every store boot.
const STORES_CONFIG: &str = r#"{"docker_image":"dockroot-test/stores","docker_tag":"latest"}"#;
/// The command line on btrfs disks: the rw layer is the subvolume `rwlayer`.
const APPEND_BTRFS: &str =
    "root=LABEL=storedisk rootflags=subvol=rwlayer rw toplayer=LABEL=storedisk toplayer_path=toplayer";
/// The command line on ext4 and xfs disks: the rw layer is the directory `rwlayer`
/// (upper/ and work/ of the overlay).
const APPEND_DIR: &str = "root=LABEL=storedisk dockroot.rw=rwlayer rw toplayer=LABEL=storedisk toplayer_path=toplayer";
/// Where testinit's marker goes (it is in the image's /etc/testinit-paths).
const MARKER: &str = "var/tmp/from-previous-boot";

/// One layout of make-store-disks and how to boot it.
struct Layout {
    /// `DOCKROOT_STORE_<key>`.
    key: &'static str,
    modules: &'static [&'static str],
    append: &'static str,
    /// The booted root is an overlay (the store keeps layers as directories).
    overlay: bool,
}

const PODMAN: Layout = Layout { key: "PODMAN", modules: STANDARD_MODULES, append: APPEND_BTRFS, overlay: false };
const CONTAINERD: Layout =
    Layout { key: "CONTAINERD", modules: STANDARD_MODULES, append: APPEND_BTRFS, overlay: false };
const CONTAINERD_OVERLAYFS: Layout = Layout {
    key: "CONTAINERD_OVERLAYFS",
    modules: &["virtio_blk", "virtio_pci", "btrfs", "overlay"],
    append: APPEND_BTRFS,
    overlay: true,
};
/// The generic image (no `--module`): ext4 and overlay load when the init mounts them.
const OVERLAY2_EXT4: Layout = Layout { key: "OVERLAY2_EXT4", modules: &[], append: APPEND_DIR, overlay: true };
const OVERLAY2_XFS: Layout = Layout {
    key: "OVERLAY2_XFS",
    modules: &["virtio_blk", "virtio_pci", "xfs", "overlay"],
    append: APPEND_DIR,
    overlay: true,
};

#[test]
fn podman_btrfs_driver_boots_and_matches_the_plan() {
    boot_layout(&PODMAN);
}

#[test]
fn containerd_btrfs_snapshotter_boots_and_matches_the_plan() {
    boot_layout(&CONTAINERD);
}

#[test]
fn containerd_overlayfs_snapshotter_boots_and_matches_the_plan() {
    boot_layout(&CONTAINERD_OVERLAYFS);
}

#[test]
fn docker_overlay2_on_ext4_boots_and_matches_the_plan() {
    boot_layout(&OVERLAY2_EXT4);
}

#[test]
fn docker_overlay2_on_xfs_boots_and_matches_the_plan() {
    boot_layout(&OVERLAY2_XFS);
}

/// What `dockroot plan` said, picked from its lines.
#[derive(Debug, Default)]
struct Planned {
    text: String,
    image_id: Option<String>,
    /// `/<path>` of the layer subvolume a snapshot is taken of.
    subvolume: Option<String>,
    /// The overlay's lowerdirs, top first, each `/<path>`.
    lowerdirs: Option<Vec<String>>,
    /// `/rwlayer.kept/<name>` the current rw layer is retired to.
    retired: Option<String>,
    fresh: bool,
    /// Why no fresh root can be made.
    refusal: Option<String>,
    fallback: bool,
    /// Top layer entries (`/etc/`, `/etc/hostname`, ...) it would write.
    top_entries: Vec<String>,
    /// The exit status: 0 as asked, 3 a fallback (README).
    code: Option<i32>,
}

impl Planned {
    fn parse(text: &str) -> Planned {
        let mut p = Planned { text: text.to_string(), ..Planned::default() };
        let mut in_top = false;
        for line in text.lines() {
            if in_top {
                if let Some(e) = line.strip_prefix("  /") {
                    p.top_entries.push(format!("/{e}"));
                    continue;
                }
                in_top = false;
            }
            if let Some(id) = line.strip_prefix("  image ID ") {
                p.image_id = Some(id.to_string());
            } else if let Some(s) = line.strip_prefix("  boots a writable snapshot of the subvolume ") {
                p.subvolume = Some(s.to_string());
            } else if let Some(l) = line.strip_prefix("  boots an overlay of ") {
                // "N layer directories in /BASE (top first): A:B:C", each relative to BASE.
                let (head, list) = l.split_once(" (top first): ").unwrap_or_else(|| panic!("{line}"));
                let (_, base) = head.split_once(" in ").unwrap_or_else(|| panic!("{line}"));
                p.lowerdirs = Some(list.split(':').map(|d| format!("{}/{d}", base.trim_end_matches('/'))).collect());
            } else if let Some(r) = line.strip_prefix("the current /rwlayer is retired read-only to ") {
                p.retired = Some(r.to_string());
            } else if line.starts_with("a fresh /rwlayer is created") {
                p.fresh = true;
            } else if let Some(r) = line.strip_prefix("image: cannot make a fresh root: ") {
                p.refusal = Some(r.to_string());
            } else if line.starts_with("FALLBACK: ") {
                p.fallback = true;
            } else if line.starts_with("top layer: ") && line.contains(" would write ") {
                in_top = true;
            }
        }
        p
    }
}

/// Runs `dockroot plan --device <loop device of the machine's disk> --cmdline ...
/// --config <the initramfs's config>` on the host (the disk read-only).
fn plan(m: &Machine, config: &str, extra: &str) -> Planned {
    let dir = tempfile::tempdir().expect("temp dir");
    let config_path = dir.path().join("config.json");
    std::fs::write(&config_path, config).expect("writing the plan's config");
    let dev = sh(&format!("losetup --find --show --read-only '{}'", m.disk.path().display())).trim().to_string();
    let out = std::process::Command::new(Artifacts::cli())
        .arg("plan")
        .arg("--device")
        .arg(&dev)
        .arg("--cmdline")
        .arg(format!("{} {extra}", m.append))
        .arg("--config")
        .arg(&config_path)
        .output()
        .expect("running dockroot plan");
    sh(&format!("losetup -d {dev}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        matches!(out.status.code(), Some(0 | 3)),
        "dockroot plan failed ({}):\n{text}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("dockroot plan:\n{text}");
    Planned { code: out.status.code(), ..Planned::parse(&text) }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect()).unwrap_or_default()
}

/// Which layer of the fixture a lowerdir (`/<path>`, as plan or the boot record show
/// it) is: its `layer_dirs` entry, or for overlay2 the `l/<link>` short link to it.
fn layer_index(s: &StoreDisk, lowerdir: &str) -> Option<usize> {
    let rel = lowerdir.trim_start_matches('/');
    let dirs = s.list("layer_dirs");
    if let Some(i) = dirs.iter().position(|d| d == rel) {
        return Some(i);
    }
    if s.fixture["overlay2_links"].is_array() {
        let links = s.list("overlay2_links");
        let store = s.get("store_path");
        return links.iter().position(|l| format!("{store}/overlay2/l/{l}") == rel);
    }
    None
}

/// The top-first layer indices of lowerdirs; panics on one that is no layer of the image.
fn layer_indices(s: &StoreDisk, lowerdirs: &[String]) -> Vec<usize> {
    lowerdirs
        .iter()
        .map(|l| {
            layer_index(s, l)
                .unwrap_or_else(|| panic!("lowerdir {l} is no layer of the image: {:?}", s.list("layer_dirs")))
        })
        .collect()
}

/// The checks of one boot's report that hold for every fresh boot of a layout.
fn check_fresh_boot(layout: &Layout, s: &StoreDisk, r: &Value) {
    let rec = &r["boot_record"];
    assert_eq!(rec["booted"], "fresh", "{rec}");
    assert_eq!(rec["rw_layer"], "/rwlayer", "{rec}");
    let image = &rec["image"];
    // What the tool wrote is what the boot recorded, verified.
    assert_eq!(image["id"], s.get("image_id").as_str(), "{image}");
    // "<store> (<driver>) at /<path>"
    let whence = image["store"].as_str().unwrap_or_default().to_lowercase();
    let driver = s.fixture["storage_driver"].as_str().or(s.fixture["snapshotter"].as_str()).expect("driver");
    assert!(
        whence.starts_with(&s.get("store"))
            && whence.contains(&format!("({driver})"))
            && whence.ends_with(&format!(" at /{}", s.get("store_path"))),
        "{image}"
    );
    assert_eq!(image["store_kind"], s.get("store").as_str(), "{image}");
    assert_eq!(image["driver"], driver, "{image}");
    assert_eq!(strings(&image["diff_ids"]), s.list("diff_ids"), "{image}");
    assert_eq!(strings(&image["chain_ids"]), s.list("chain_ids"), "{image}");
    assert_eq!(image["verified"], true, "{image}");
    assert_eq!(image["manifest_digest"], s.fixture["manifest_digest"], "{image}");
    let layers = s.list("layer_ids");
    assert_eq!(image["layer"], layers.last().unwrap().as_str(), "the store's top layer ID: {image}");
    assert!(image["reference"].as_str().unwrap_or_default().ends_with("dockroot-test/stores:latest"), "{image}");
    assert!(rec["warnings"].as_array().is_some_and(|w| w.is_empty()), "{rec}");

    let root = &r["root_mount"];
    if layout.overlay {
        assert_eq!(root["fstype"], "overlay", "the root is not an overlay: {root}");
        if let Some(l) = image["lowerdirs"].as_array() {
            let l: Vec<String> = l.iter().filter_map(|v| v.as_str().map(str::to_string)).collect();
            assert_eq!(layer_indices(s, &l), vec![2, 1, 0], "{image}");
        }
    } else {
        assert_eq!(root["fstype"], "btrfs", "{root}");
        assert!(root["super_options"].to_string().contains("subvol=/rwlayer"), "root not the rw layer: {root}");
        assert_eq!(field(r, &["root_btrfs", "is_subvolume"]), true, "{r}");
        let top_dir = format!("/{}", s.list("layer_dirs").last().unwrap());
        assert_eq!(image["layer_subvolume"], top_dir.as_str(), "{image}");
    }

    // The image's files, whiteouts honoured, and the top layer's.
    for (path, content) in s.fixture["present"].as_object().expect("present in fixture.json") {
        assert_eq!(field(r, &["paths", path, "content"]), content, "{path}: {}", field(r, &["paths", path]));
    }
    assert_eq!(field(r, &["paths", "/olddir", "type"]), "dir", "{}", field(r, &["paths", "/olddir"]));
    for path in strings(&s.fixture["absent"]) {
        assert_eq!(field(r, &["paths", &path, "exists"]), false, "{path} deleted in an upper layer is back");
    }
    for (path, want) in s.fixture["toplayer"].as_object().expect("toplayer in fixture.json") {
        let got = field(r, &["paths", path]);
        for (k, v) in want.as_object().expect("toplayer entry") {
            assert_eq!(&got[k], v, "top layer {path}: {k}: {got}");
        }
    }
}

/// The top layer's paths, as testinit arguments (they are not all in the image's list).
fn stat_args(s: &StoreDisk) -> String {
    let paths = s.fixture["toplayer"].as_object().expect("toplayer in fixture.json");
    paths.keys().map(|p| format!(" --stat {p}")).collect()
}

/// The rw layer's root directory, relative to the top level: the subvolume itself, or
/// the overlay's upper directory.
fn rw_root(layout: &Layout, rw: &str) -> String {
    if layout.overlay {
        format!("{rw}/upper")
    } else {
        rw.to_string()
    }
}

/// Two boots of a layout with `dockroot plan` before the second; see the module doc.
fn boot_layout(layout: &Layout) {
    let s = StoreDisk::from_env(layout.key);
    let m = Machine::with(Artifacts::from_env(), &s.disk, layout.modules, STORES_CONFIG, layout.append);
    let store_path = s.get("store_path");
    let store_digest = || m.inspect(|top| tree_digest(&top.join(&store_path), &[]));
    let store_before = store_digest();
    let stats = stat_args(&s);
    let name = layout.key.to_lowercase();

    let first = m.report(&format!("store_{name}_1"), &format!("--{stats}"));
    check_fresh_boot(layout, &s, &first);
    assert_eq!(first["boot_record"]["retired"], Value::Null, "{}", first["boot_record"]);

    // On the host: the top layer went into the rw layer; leave a marker there.
    m.modify(|top| {
        let root = top.join(rw_root(layout, "rwlayer"));
        assert_eq!(std::fs::read_to_string(root.join("etc/hostname")).unwrap(), "storedisk-machine\n");
        if layout.overlay {
            assert!(top.join("rwlayer/work").is_dir(), "no rwlayer/work next to rwlayer/upper");
            assert!(!root.join("layer1.txt").exists(), "the image's files were copied into the upper directory");
        }
        std::fs::create_dir_all(root.join(MARKER).parent().unwrap()).unwrap();
        std::fs::write(root.join(MARKER), "left by the host between the boots\n").unwrap();
    });

    let planned = plan(&m, STORES_CONFIG, "");
    assert!(planned.refusal.is_none() && planned.fresh, "{}", planned.text);
    assert_eq!(planned.code, Some(0), "{}", planned.text);
    assert_eq!(planned.image_id.as_deref(), Some(s.get("image_id").as_str()), "{}", planned.text);
    let retired = planned.retired.clone().unwrap_or_else(|| panic!("the plan retires nothing:\n{}", planned.text));
    for want in s.fixture["toplayer"].as_object().unwrap().keys() {
        assert!(planned.top_entries.contains(want), "the plan does not write {want}:\n{}", planned.text);
    }
    let planned_files: Vec<&String> = planned.top_entries.iter().filter(|e| !e.ends_with('/')).collect();
    let known = s.fixture["toplayer"].as_object().unwrap();
    let plan_stats: String =
        planned_files.iter().filter(|p| !known.contains_key(p.as_str())).map(|p| format!(" --stat {p}")).collect();

    let second = m.report(&format!("store_{name}_2"), &format!("--{stats}{plan_stats}"));
    check_fresh_boot(layout, &s, &second);
    let rec = &second["boot_record"];
    assert_eq!(field(&second, &["paths", "/var/tmp/from-previous-boot", "exists"]), false, "rw layer not replaced");
    // What the plan said is what the boot did.
    assert_eq!(rec["image"]["id"].as_str(), planned.image_id.as_deref(), "{rec}\n{}", planned.text);
    assert_eq!(rec["retired"].as_str(), Some(retired.as_str()), "{rec}\n{}", planned.text);
    assert!(strings(&rec["kept"]).contains(&retired), "{rec}");
    if layout.overlay {
        let lower =
            planned.lowerdirs.clone().unwrap_or_else(|| panic!("the plan names no lowerdirs:\n{}", planned.text));
        assert_eq!(layer_indices(&s, &lower), vec![2, 1, 0], "{}", planned.text);
        if let Some(l) = rec["image"]["lowerdirs"].as_array() {
            assert_eq!(strings(&Value::Array(l.clone())), lower, "{rec}\n{}", planned.text);
        }
    } else {
        assert_eq!(rec["image"]["layer_subvolume"].as_str(), planned.subvolume.as_deref(), "{}", planned.text);
    }
    for p in planned_files {
        assert_eq!(field(&second, &["paths", p, "exists"]), true, "{p}: planned, not in the booted system");
    }

    // The previous root is kept, marker and all; the store is as the tool left it.
    m.inspect(|top| {
        let kept = top.join(rw_root(layout, retired.trim_start_matches('/')));
        assert!(kept.join(MARKER).is_file(), "the retired root {} lost the marker", kept.display());
        assert!(!top.join(rw_root(layout, "rwlayer")).join(MARKER).exists(), "the new rw layer has the marker");
    });
    assert_same_digest("the store", &store_before, &store_digest());
}

/// A fallback boot after a refusal: the previous root as it was, the reason on the
/// console and in the boot record; returns the reason.
fn check_refused(out: &BootOutput, r: &Value, previous_root: &Value, names: &[&str]) -> String {
    assert_eq!(r["errors"], serde_json::json!([]), "{r}");
    let rec = &r["boot_record"];
    assert!(rec["booted"].as_str().unwrap_or_default().starts_with("fallback: /rwlayer as it was"), "{rec}");
    let reason = rec["fallback"]["reason"].as_str().unwrap_or_default().to_string();
    assert!(reason.contains("verification failed"), "{reason}");
    for n in names {
        assert!(reason.contains(n), "the reason does not name {n:?}: {reason}");
    }
    assert_eq!(field(r, &["root_btrfs", "subvolume_id"]), previous_root, "not the previous root: {r}");
    assert!(
        out.contains(&format!("dockroot: ERROR: cannot prepare a fresh root: {reason}")),
        "the console does not show the reason:\n{}",
        out.tail(30)
    );
    assert!(out.contains("dockroot: WARNING: FALLBACK: booting the previous root"), "{}", out.tail(30));
    reason
}

/// `s` with the directory the partition was mounted on cut from the paths in it (the
/// init and `dockroot plan` mount it in different places): `(/x/y/var/lib/docker/...`
/// becomes `(var/lib/docker/...`.
fn without_mount_points(s: &str) -> String {
    const STORE: &str = "var/lib/docker/";
    let mut out = String::new();
    let mut rest = s;
    while let Some(at) = rest.find(STORE) {
        let (head, tail) = rest.split_at(at);
        let start = head.rfind([' ', '(']).map_or(0, |i| i + 1);
        out.push_str(&head[..start]);
        out.push_str(STORE);
        rest = &tail[STORE.len()..];
    }
    out.push_str(rest);
    out
}

/// With `dockroot.verify=off` the tampered image boots, the mismatch a warning on the
/// console and in the boot record (its `warnings`, or the image's own).
fn check_unverified(out: &BootOutput, r: &Value, id: &str, names: &[&str]) {
    assert_eq!(r["errors"], serde_json::json!([]), "{r}");
    let rec = &r["boot_record"];
    assert_eq!(rec["booted"], "fresh", "{rec}");
    assert_eq!(rec["image"]["id"], id, "{rec}");
    assert_eq!(rec["image"]["verified"], false, "{rec}");
    assert_eq!(field(r, &["paths", "/layer3.txt", "content"]), "layer3\n");
    let console = out
        .serial
        .lines()
        .find_map(|l| l.split_once("dockroot: WARNING: dockroot.verify=off: ").map(|(_, w)| w.to_string()))
        .unwrap_or_else(|| panic!("no verify=off warning on the console:\n{}", out.tail(30)));
    let mut warnings = strings(&rec["warnings"]);
    warnings.extend(strings(&rec["image"]["warnings"]));
    let w = warnings
        .iter()
        .find(|w| w.starts_with("dockroot.verify=off: "))
        .unwrap_or_else(|| panic!("the boot record has no verify=off warning (the console has: {console}): {rec}"));
    for n in names {
        assert!(w.contains(n), "the warning does not name {n:?}: {w}");
    }
}

/// Tampered images on the Docker btrfs fixture: an edited image config and a swapped
/// layer (its layerdb `diff` names another layer) are refused (the previous root boots,
/// the plan says the same), and boot with dockroot.verify=off with a warning.
#[test]
fn tampered_docker_images_are_refused_unless_verification_is_off() {
    let m = Machine::new(OS_CONFIG);
    let fx = m.artifacts.fixture();
    let os = &fx["images"]["os"];
    let id = os["id"].as_str().unwrap().to_string();
    let hex = id.strip_prefix("sha256:").unwrap().to_string();
    let store = "var/lib/docker/image/btrfs";
    let config_rel = format!("{store}/imagedb/content/sha256/{hex}");
    let chain1 = strings(&os["chain_ids"])[1].strip_prefix("sha256:").unwrap().to_string();
    let diff_rel = format!("{store}/layerdb/sha256/{chain1}/diff");
    let real_diff = strings(&os["diff_ids"])[1].clone();
    let other_diff = strings(&fx["images"]["variant"]["diff_ids"])[1].clone();
    assert_ne!(real_diff, other_diff);

    let first = m.report("tamper_clean", "");
    assert_eq!(first["boot_record"]["image"]["verified"], true, "{}", first["boot_record"]);
    let mut good_root = field(&first, &["root_btrfs", "subvolume_id"]).clone();

    // (name, the change, what the refusal must name)
    type Change = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, Change, Vec<String>)> = vec![
        (
            "config",
            Box::new({
                let rel = config_rel.clone();
                move |top: &Path| {
                    let p = top.join(&rel);
                    let mut v: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
                    v["author"] = Value::from("someone else");
                    std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
                }
            }),
            vec!["dockroot-test/os".into(), id.clone(), "does not match its ID".into(), config_rel.clone()],
        ),
        (
            "layer",
            Box::new({
                let (rel, other) = (diff_rel.clone(), other_diff.clone());
                move |top: &Path| std::fs::write(top.join(&rel), &other).unwrap()
            }),
            vec!["dockroot-test/os".into(), diff_rel.clone(), other_diff.clone(), real_diff.clone()],
        ),
    ];
    for (name, change, names) in &cases {
        let saved = m.inspect(|top| {
            (std::fs::read(top.join(&config_rel)).unwrap(), std::fs::read(top.join(&diff_rel)).unwrap())
        });
        m.modify(|top| change(top));
        let names: Vec<&str> = names.iter().map(String::as_str).collect();

        let planned = plan(&m, OS_CONFIG, "");
        let refusal =
            planned.refusal.clone().unwrap_or_else(|| panic!("{name}: the plan does not refuse:\n{}", planned.text));
        assert!(planned.fallback && !planned.fresh, "{name}:\n{}", planned.text);
        assert_eq!(planned.code, Some(3), "{name}: a fallback exits 3:\n{}", planned.text);

        let out = m.boot(&format!("tamper_{name}_refused"), "");
        let r = out.expect_testinit();
        let reason = check_refused(&out, &r, &good_root, &names);
        assert_eq!(
            without_mount_points(&reason),
            without_mount_points(&refusal),
            "{name}: the plan's reason is not the boot's"
        );

        let out = m.boot(&format!("tamper_{name}_verify_off"), "dockroot.verify=off");
        let r = out.expect_testinit();
        check_unverified(&out, &r, &id, &names);
        good_root = field(&r, &["root_btrfs", "subvolume_id"]).clone();

        m.modify(|top| {
            std::fs::write(top.join(&config_rel), &saved.0).unwrap();
            std::fs::write(top.join(&diff_rel), &saved.1).unwrap();
        });
    }
    // Restored: verified again.
    let r = m.report("tamper_restored", "");
    assert_eq!(r["boot_record"]["booted"], "fresh");
    assert_eq!(r["boot_record"]["image"]["verified"], true);
}
