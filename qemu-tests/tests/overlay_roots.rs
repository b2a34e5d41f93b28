//! Overlay roots (an image stored as layer directories boots as an overlayfs with
//! the rw layer's upper and work directories) keep every promise btrfs roots keep,
//! on the Docker overlay2-on-ext4 disk of make-store-disks (`DOCKROOT_STORE_OVERLAY2_EXT4`):
//! - retired roots are kept (`dockroot.keep=`), pruned ones go into
//!   `rwlayer.dockroot-trash/` and a background process of the init empties it;
//! - `dockroot.boot=persist` boots the rw layer as it is, `dockroot.boot=previous`
//!   a copy of the newest kept root (which stays as it was);
//! - an unbootable fresh root (an unknown image, a full disk during the top layer)
//!   falls back to the current root as it was;
//! - a power cut at any moment of an overlay boot loses nothing: the next boot
//!   recovers, and no root but the new one changed; so does a second cut during that
//!   recovery boot, and a cut while `dockroot.boot=previous` copies a kept root (the
//!   harness's power-cut engine, `qemu_tests::CutEngine`, shared with crash.rs).
//!
//! Each test checks what the booted system saw (testinit's report and
//! /run/dockroot/boot.json) and what is on the disk afterwards (a host loop mount).
//! On Linux 6.1 the overlays are mounted with mount(2) and relative lowerdirs, on
//! 6.8+ with fsconfig lowerdir+ (checked from the init's log). The number of power
//! cuts follows `DOCKROOT_CRASH_POINTS` (a number, or `all`, the default).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use qemu_tests::{
    assert_same_digest, boot, cut_points, field, fill_disk, names_in, oversized_toplayer_disk, sh, target_dir,
    tree_digest, Artifacts, BootOutput, BootSpec, CutAt as At, CutDone, CutEngine, DiskState, Left, Machine, Mode,
    Root, RootKind, StoreDisk, LINE_READY, LINE_ROOT_DEVICE,
};
use serde_json::Value;

const MODULES: &[&str] = &["virtio_blk", "virtio_pci", "ext4", "overlay"];
const CONFIG: &str = r#"{"docker_image":"dockroot-test/stores","docker_tag":"latest"}"#;
const APPEND: &str = "root=LABEL=storedisk dockroot.rw=rwlayer rw toplayer=LABEL=storedisk toplayer_path=toplayer";
/// A file in the image's testinit path list; written into upper directories by the host.
const MARKER: &str = "var/tmp/from-previous-boot";
const TRASH: &str = "rwlayer.dockroot-trash";

fn store() -> StoreDisk {
    StoreDisk::from_env("OVERLAY2_EXT4")
}

/// A machine on a copy of the overlay2-on-ext4 disk; `extra` follows [`APPEND`] on every boot.
fn machine(s: &StoreDisk, extra: &str) -> Machine {
    Machine::with(Artifacts::from_env(), &s.disk, MODULES, CONFIG, &format!("{APPEND} {extra}"))
}

/// The marker's content as the booted system saw it (None: absent).
fn marker(r: &Value) -> Option<String> {
    let p = field(r, &["paths", &format!("/{MARKER}")]);
    match p["exists"].as_bool() {
        Some(true) => Some(p["content"].as_str().unwrap_or_else(|| panic!("marker without content: {p}")).into()),
        Some(false) => None,
        None => panic!("the report does not say whether /{MARKER} exists: {p}"),
    }
}

/// Writes the marker into the current rw layer's upper directory.
fn put_marker(top: &Path, text: &str) {
    let p = top.join("rwlayer/upper").join(MARKER);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, format!("{text}\n")).unwrap();
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    // SAFETY: NUL-terminated path and name, a value buffer of the given length.
    let rc = unsafe { libc::lsetxattr(c.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    assert_eq!(rc, 0, "setting {name} on {}: {}", path.display(), std::io::Error::last_os_error());
}

/// The disk mounted at `top`, its roots overlay roots.
fn state(top: &Path) -> DiskState {
    DiskState::read(RootKind::Overlay, top)
}

/// The overlay root at `path`, if there is one.
fn root(path: &Path) -> Option<Root> {
    Root::read(RootKind::Overlay, path)
}

/// The checks every fresh overlay boot passes: the image's files and the top
/// layer's, an overlay as `/`, mounted the way this kernel supports.
fn check_fresh(s: &StoreDisk, r: &Value, out: &BootOutput) {
    let rec = &r["boot_record"];
    assert_eq!(rec["booted"], "fresh", "{rec}");
    assert_eq!(rec["image"]["id"], s.get("image_id").as_str(), "{rec}");
    assert_eq!(rec["rw_layer"], "/rwlayer", "{rec}");
    assert_eq!(rec["rw_layer_kind"], "overlay", "{rec}");
    check_overlay_root(r, out);
    assert_eq!(field(r, &["paths", "/etc/hostname", "content"]), "storedisk-machine\n", "{r}");
    assert_eq!(field(r, &["paths", "/layer2.txt", "content"]), "layer2\n", "{r}");
    assert_eq!(field(r, &["paths", "/olddir/new.txt", "content"]), "new\n", "{r}");
}

/// `/` is an overlay of the image's layers, mounted with the method of this kernel.
fn check_overlay_root(r: &Value, out: &BootOutput) {
    assert_eq!(r["root_mount"]["fstype"], "overlay", "{}", r["root_mount"]);
    for (path, content) in [("/layer1.txt", "layer1\n"), ("/layer3.txt", "layer3\n")] {
        assert_eq!(field(r, &["paths", path, "content"]), content, "{path}: {}", field(r, &["paths", path]));
    }
    for path in ["/doomed.txt", "/olddir/old.txt"] {
        assert_eq!(field(r, &["paths", path, "exists"]), false, "{path} deleted in an upper layer is back");
    }
    let line = out
        .serial
        .lines()
        .find(|l| l.contains("dockroot: mounted /rwlayer ") && l.contains(" on /sysroot with "))
        .unwrap_or_else(|| panic!("no line about mounting /rwlayer on /sysroot:\n{}", out.tail(30)));
    let release = out
        .serial
        .lines()
        .find_map(|l| l.split_once("Linux version ").map(|(_, v)| v.split(' ').next().unwrap_or("").to_string()))
        .unwrap_or_else(|| panic!("no Linux version line in {}", out.log_path.display()));
    let legacy = line.ends_with("with mount(2) with relative lowerdirs");
    let plus = line.ends_with("with fsconfig lowerdir+");
    assert!(legacy || plus, "{line}");
    // lowerdir+ exists from Linux 6.8: 6.1 must use mount(2), 6.12 fsconfig.
    let major_minor: Vec<u32> = release.split(['.', '-', '+']).take(2).filter_map(|p| p.parse().ok()).collect();
    let [maj, min] = major_minor[..] else { panic!("kernel release {release:?}") };
    assert_eq!(plus, (maj, min) >= (6, 8), "kernel {release}: {line}");
}

/// A boot that must reach testinit without errors, with a boot record.
fn report(m: &Machine, name: &str, extra: &str) -> (Value, BootOutput) {
    m.report_and_output(name, extra)
}

/// keep/prune: with dockroot.keep=1 each boot retires the current root and prunes
/// the older kept one into the trash; the init's background process empties the
/// trash (persist boots, which prune nothing, finish what a boot that powered off
/// quickly did not).
#[test]
fn overlay_roots_are_kept_pruned_into_the_trash_and_the_trash_is_emptied() {
    let s = store();
    let m = machine(&s, "dockroot.keep=1");
    let store_before = m.inspect(|top| tree_digest(&top.join(s.get("store_path")), &[]));

    let (r1, out1) = report(&m, "ovl_keep_1", "");
    check_fresh(&s, &r1, &out1);
    let rec = &r1["boot_record"];
    assert_eq!(rec["retired"], Value::Null, "{rec}");
    assert_eq!(rec["kept"], serde_json::json!([]), "{rec}");
    assert_eq!(rec["deleting_in_background"], false, "{rec}");
    assert_eq!(marker(&r1), None);
    // Root 1 gets a marker and many files, so that deleting it takes a while.
    const BULK: usize = 1000;
    let root1 = m.modify(|top| {
        put_marker(top, "root 1");
        let bulk = top.join("rwlayer/upper/var/tmp/bulk");
        for d in 0..10 {
            let dir = bulk.join(format!("d{d}"));
            std::fs::create_dir_all(&dir).unwrap();
            for f in 0..BULK / 10 {
                std::fs::write(dir.join(format!("f{f}")), format!("{d}/{f}\n")).unwrap();
            }
        }
        state(top)
    });
    let root1 = root1.current.expect("no rw layer after the first boot");
    assert!(root1.is_overlay_root(), "{:?}", root1.digest.keys().take(10).collect::<Vec<_>>());

    let (r2, out2) = report(&m, "ovl_keep_2", "");
    check_fresh(&s, &r2, &out2);
    let rec = &r2["boot_record"];
    assert_eq!(marker(&r2), None, "the rw layer was not replaced");
    let kept1 = rec["retired"].as_str().unwrap_or_else(|| panic!("root 1 was not retired: {rec}")).to_string();
    let hex12 = &s.get("image_id")["sha256:".len()..][..12];
    assert!(kept1.starts_with(&format!("/rwlayer.kept/{}-", root1.created())) && kept1.ends_with(hex12), "{kept1}");
    assert_eq!(rec["kept"], serde_json::json!([kept1]), "{rec}");
    assert_eq!(rec["pruned"], serde_json::json!([]), "{rec}");
    let root2 = m.modify(|top| {
        let st = state(top);
        let k = st.kept.get(kept1.trim_start_matches("/rwlayer.kept/")).expect("the kept root is not on the disk");
        assert_same_digest("root 1, retired", &root1.digest, &k.digest);
        assert!(st.leftovers().is_empty(), "{:?}", st.leftovers());
        put_marker(top, "root 2");
        root(&top.join("rwlayer")).unwrap()
    });

    let (r3, out3) = report(&m, "ovl_keep_3", "");
    check_fresh(&s, &r3, &out3);
    let rec = &r3["boot_record"];
    let kept2 = rec["retired"].as_str().unwrap_or_else(|| panic!("root 2 was not retired: {rec}")).to_string();
    assert!(kept2.starts_with(&format!("/rwlayer.kept/{}-", root2.created())), "{kept2}");
    assert_eq!(rec["kept"], serde_json::json!([kept2]), "{rec}");
    assert_eq!(rec["pruned"], serde_json::json!([kept1]), "{rec}");
    assert_eq!(rec["deleting_in_background"], true, "{rec}");
    assert!(
        out3.contains(
            "dockroot: deleting the old overlay roots in /rwlayer.dockroot-trash in the background (process "
        ),
        "{}",
        out3.tail(30)
    );
    // Root 1 went into the trash: it is still there (under a name that ends with its
    // kept name), or the background process emptied the trash (and, if its closing
    // line made it out before the power went off, of at least root 1's entries).
    let kept1_name = kept1.trim_start_matches("/rwlayer.kept/").to_string();
    let emptied = emptied_entries(&out3);
    let after3 = m.inspect(|top| {
        let st = state(top);
        assert_eq!(st.kept.keys().collect::<Vec<_>>(), vec![kept2.trim_start_matches("/rwlayer.kept/")]);
        assert_same_digest("root 2, retired", &root2.digest, &st.kept.values().next().unwrap().digest);
        assert!(st.leftovers().is_empty(), "{:?}", st.leftovers());
        st
    });
    match (&after3.trash[..], emptied) {
        ([entry], None) => {
            assert!(entry.ends_with(&format!("-{kept1_name}.1")), "the trash holds {entry}, not root 1 ({kept1_name})")
        }
        ([], Some(n)) => assert!(n > BULK as u64, "the trash was emptied of only {n} entries, root 1 has {BULK} files"),
        // Emptied, and the power went off before the deleter's closing line reached
        // the console (testinit powers off at once).
        ([], None) => {}
        (t, e) => panic!("trash {t:?} after a boot whose background deletion reported {e:?}"),
    }
    eprintln!("overlay keep: after the pruning boot the trash holds {:?} (emptied: {emptied:?})", after3.trash);

    // Persist boots prune nothing: the trash empties within a few of them.
    let mut boots = 0;
    let mut trash = after3.trash.clone();
    while !trash.is_empty() {
        boots += 1;
        assert!(boots <= 4, "the trash is not empty after {} persist boots: {trash:?}", boots - 1);
        let (r, out) = report(&m, &format!("ovl_keep_persist_{boots}"), "dockroot.boot=persist");
        assert_eq!(r["boot_record"]["booted"], "persist", "{}", r["boot_record"]);
        assert_eq!(r["boot_record"]["deleting_in_background"], true, "{}", r["boot_record"]);
        check_overlay_root(&r, &out);
        trash = m.inspect(|top| names_in(&top.join(TRASH)));
        eprintln!("overlay keep: after persist boot {boots} the trash holds {trash:?}");
    }
    let end = m.inspect(|top| {
        assert_same_digest("the store", &store_before, &tree_digest(&top.join(s.get("store_path")), &[]));
        state(top)
    });
    assert_eq!(end.kept.len(), 1);
    assert_same_digest("root 2, kept", &root2.digest, &end.kept.values().next().unwrap().digest);
}

/// How many entries the background deletion said it deleted ("emptied ... (N entries)").
fn emptied_entries(out: &BootOutput) -> Option<u64> {
    let line = out.serial.lines().find(|l| l.contains("dockroot: emptied /rwlayer.dockroot-trash ("))?;
    let rest = line.split_once("dockroot-trash (")?.1;
    rest.split(' ').next()?.parse().ok()
}

/// persist boots the rw layer as it is (a marker the host put into its upper
/// directory survives); previous boots a copy of the newest kept root (its marker
/// is there) and leaves the kept root as it was.
#[test]
fn overlay_persist_keeps_changes_and_previous_boots_a_copy_of_the_kept_root() {
    let s = store();
    let m = machine(&s, "dockroot.keep=2");
    let (r1, out1) = report(&m, "ovl_modes_1", "");
    check_fresh(&s, &r1, &out1);
    // Root 1's changes: a marker, a deleted file (a whiteout) and a replaced
    // directory (opaque), as overlayfs writes them into the upper directory.
    let root1 = m.modify(|top| {
        put_marker(top, "root 1");
        let upper = top.join("rwlayer/upper");
        sh(&format!(
            "mknod '{0}/layer2.txt' c 0 0 && mkdir '{0}/olddir' && echo mine > '{0}/olddir/mine.txt'",
            upper.display()
        ));
        set_xattr(&upper.join("olddir"), "trusted.overlay.opaque", b"y");
        root(&top.join("rwlayer")).unwrap()
    });
    let changes = |r: &Value, what: &str| {
        assert_eq!(marker(r).as_deref(), Some("root 1\n"), "{what} lost the marker");
        assert_eq!(field(r, &["paths", "/layer2.txt", "exists"]), false, "{what}: a deleted file is back");
        assert_eq!(field(r, &["paths", "/olddir/new.txt", "exists"]), false, "{what}: a replaced dir is merged");
        assert_eq!(field(r, &["paths", "/olddir/mine.txt", "content"]), "mine\n", "{what}");
    };
    const STAT: &str = "-- --stat /olddir/mine.txt";

    let (r2, out2) = report(&m, "ovl_modes_2_persist", &format!("dockroot.boot=persist {STAT}"));
    let rec = &r2["boot_record"];
    assert_eq!(rec["booted"], "persist", "{rec}");
    assert_eq!(rec["rw_layer_kind"], "overlay", "{rec}");
    assert_eq!(rec["retired"], Value::Null, "{rec}");
    check_overlay_root(&r2, &out2);
    changes(&r2, "persist");
    m.inspect(|top| {
        let st = state(top);
        let cur = st.current.as_ref().unwrap();
        assert_eq!(cur.created(), root1.created(), "persist made a new root");
        assert!(cur.digest.contains_key(&format!("upper/{MARKER}")));
        assert!(st.kept.is_empty() && st.leftovers().is_empty(), "{st:?}");
    });

    // A fresh boot retires it; previous boots a copy of it.
    let (r3, out3) = report(&m, "ovl_modes_3_fresh", STAT);
    check_fresh(&s, &r3, &out3);
    assert_eq!(marker(&r3), None);
    let kept1 = r3["boot_record"]["retired"].as_str().expect("root 1 retired").to_string();
    let kept1_name = kept1.trim_start_matches("/rwlayer.kept/").to_string();
    let (kept_before, root3) = m.inspect(|top| {
        let st = state(top);
        (st.kept.get(&kept1_name).cloned().expect("the kept root is on the disk"), st.current.unwrap())
    });

    let (r4, out4) = report(&m, "ovl_modes_4_previous", &format!("dockroot.boot=previous {STAT}"));
    let rec = &r4["boot_record"];
    assert_eq!(rec["booted"], format!("previous: {kept1}").as_str(), "{rec}");
    assert_eq!(rec["rw_layer_kind"], "overlay", "{rec}");
    check_overlay_root(&r4, &out4);
    changes(&r4, "previous (a copy of the kept root)");
    assert_eq!(field(&r4, &["paths", "/etc/hostname", "content"]), "storedisk-machine\n");
    let kept3 = rec["retired"].as_str().expect("the fresh root of boot 3 retired").to_string();
    assert!(kept3.starts_with(&format!("/rwlayer.kept/{}-", root3.created())), "{kept3}");
    m.inspect(|top| {
        let st = state(top);
        let k = st.kept.get(&kept1_name).expect("previous deleted the kept root it copied");
        assert_same_digest("the kept root booted by previous", &kept_before.digest, &k.digest);
        // Booted with persist since: overlayfs marked the directories the host made.
        assert_same_digest("root 1 (now kept)", &root1.files(), &k.files());
        let cur = st.current.as_ref().unwrap();
        assert!(cur.is_overlay_root());
        assert_ne!(cur.created(), root1.created(), "previous must boot a copy, not the kept root");
        assert_eq!(
            std::fs::read_to_string(top.join("rwlayer/upper").join(MARKER)).unwrap(),
            "root 1\n",
            "the copy's upper directory lacks the marker"
        );
        assert_eq!(cur.digest.get(". xattr user.dockroot.image"), root1.digest.get(". xattr user.dockroot.image"));
        assert!(st.leftovers().is_empty(), "{:?}", st.leftovers());
    });
}

/// A fresh root of an unknown image cannot be made: the current overlay root boots
/// as it was, FALLBACK in the boot record, and nothing on the disk changed.
#[test]
fn overlay_unknown_image_falls_back_to_the_current_root_as_it_was() {
    let s = store();
    let m = machine(&s, "");
    let (r1, out1) = report(&m, "ovl_fallback_1", "");
    check_fresh(&s, &r1, &out1);
    let before = m.modify(|top| {
        put_marker(top, "root 1");
        state(top)
    });
    let out = m.boot("ovl_fallback_2", "dockroot.image=no/such:image");
    let r = out.expect_testinit();
    assert_eq!(r["errors"], serde_json::json!([]), "{r}");
    let rec = &r["boot_record"];
    assert!(rec["booted"].as_str().unwrap_or_default().starts_with("fallback: /rwlayer as it was"), "{rec}");
    assert!(rec["fallback"]["reason"].as_str().unwrap_or_default().contains("no/such:image"), "{rec}");
    assert!(rec["warnings"].to_string().contains("FALLBACK"), "{rec}");
    assert_eq!(rec["rw_layer_kind"], "overlay", "{rec}");
    check_overlay_root(&r, &out);
    assert_eq!(marker(&r).as_deref(), Some("root 1\n"), "the fallback must boot the last root as it was");
    assert!(
        out.contains("dockroot: WARNING: FALLBACK: booting the previous root /rwlayer as it was"),
        "{}",
        out.tail(30)
    );
    let after = m.inspect(state);
    assert_same_digest("the disk outside the rw layer", &before.outside, &after.outside);
    assert_same_digest("the rw layer", &before.current.unwrap().files(), &after.current.as_ref().unwrap().files());
    assert!(after.kept.is_empty() && after.leftovers().is_empty() && after.trash.is_empty(), "{after:?}");
}

/// The disk fills up while the top layer is copied into the new root's upper
/// directory: the current overlay root boots as it was; once there is room again,
/// the next boot is a normal fresh one and the half-built root is gone.
#[test]
fn overlay_full_disk_during_the_top_layer_falls_back_and_loses_nothing() {
    let s = store();
    let m = machine(&s, "");
    let (r1, out1) = report(&m, "ovl_enospc_1", "");
    check_fresh(&s, &r1, &out1);
    m.modify(|top| put_marker(top, "root 1"));
    // Booted once with the marker, so that overlayfs has marked the directories the
    // host made (on a full disk, setting those xattrs at lookup fails with ENOSPC).
    let (r2, _) = report(&m, "ovl_enospc_2_persist", "dockroot.boot=persist");
    assert_eq!(marker(&r2).as_deref(), Some("root 1\n"));
    let before = m.modify(|top| {
        fill_disk(top);
        state(top)
    });
    // A top layer on a second disk with more data than fits.
    let work = tempfile::tempdir().expect("temp dir");
    let ext4 = oversized_toplayer_disk(work.path());
    let append = "root=LABEL=storedisk dockroot.rw=rwlayer rw toplayer=LABEL=machine toplayer_path=machine";
    let spec = BootSpec {
        name: Some("ovl_enospc_3_full".into()),
        ..BootSpec::new(m.artifacts.kernel(), m.initrd.clone(), &[m.disk.path(), &ext4], append)
    };
    let out = boot(&spec);
    let r = out.expect_testinit();
    assert_eq!(r["errors"], serde_json::json!([]), "{r}");
    let rec = &r["boot_record"];
    assert!(rec["booted"].as_str().unwrap_or_default().starts_with("fallback: /rwlayer as it was"), "{rec}");
    let reason = rec["fallback"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("No space left on device") && reason.contains("top layer"), "{rec}");
    check_overlay_root(&r, &out);
    assert_eq!(marker(&r).as_deref(), Some("root 1\n"), "the previous root must boot intact");
    assert_eq!(field(&r, &["paths", "/etc/hostname", "content"]), "storedisk-machine\n");
    // Still full: the next boot falls back again, to the same root.
    let spec = BootSpec { name: Some("ovl_enospc_3_still_full".into()), ..spec };
    let again = boot(&spec);
    let r = again.expect_testinit();
    assert_eq!(r["errors"], serde_json::json!([]), "{r}");
    let rec = &r["boot_record"];
    assert!(rec["booted"].as_str().unwrap_or_default().starts_with("fallback: /rwlayer as it was"), "{rec}");
    assert_eq!(marker(&r).as_deref(), Some("root 1\n"), "the previous root must boot intact");
    let full = m.modify(|top| {
        let st = state(top);
        sh(&format!("rm -f '{}'", top.join("filler").display()));
        st
    });
    eprintln!("overlay enospc: after the fallback: leftovers {:?}, trash {:?}", full.leftovers(), full.trash);
    assert_same_digest("the disk outside the rw layer", &before.outside, &full.outside);
    assert_same_digest(
        "the rw layer",
        &before.current.as_ref().unwrap().digest,
        &full.current.as_ref().unwrap().digest,
    );
    // The half-built root is discarded into the trash even on the full disk (the
    // trash directory is made before the top layer writes anything), so the
    // fallback system gets the space back as the trash is emptied.
    let tmp_left = full.tmp;
    assert!(!tmp_left && !full.skel && full.ready.is_none(), "{:?}", full.leftovers());
    assert!(
        !(out.serial.clone() + &again.serial).contains("could not delete the unfinished"),
        "the half-built root was not discarded:\n{}",
        out.tail(30)
    );
    for t in &full.trash {
        assert!(t.ends_with("-rwlayer.dockroot-tmp.1"), "unexpected trash entry {t}");
    }

    // Room again: a normal fresh boot; the half-built root is deleted at last.
    let (r4, out4) = report(&m, "ovl_enospc_4", "");
    check_fresh(&s, &r4, &out4);
    let rec = &r4["boot_record"];
    assert_eq!(rec["warnings"], serde_json::json!([]), "{rec}");
    assert_eq!(
        rec["recovered"].to_string().contains("deleted the half-built /rwlayer.dockroot-tmp"),
        tmp_left,
        "{rec}"
    );
    let kept = rec["retired"].as_str().expect("root 1 retired").to_string();
    let mut trash = m.inspect(|top| {
        let st = state(top);
        let k = st.kept.get(kept.trim_start_matches("/rwlayer.kept/")).expect("root 1 kept");
        assert_same_digest("root 1, retired", &before.current.as_ref().unwrap().digest, &k.digest);
        assert!(st.leftovers().is_empty(), "{:?}", st.leftovers());
        st.trash
    });
    let mut boots = 0;
    while !trash.is_empty() {
        boots += 1;
        assert!(boots <= 3, "the trash is not empty after {} more boots: {trash:?}", boots - 1);
        let (r, _) = report(&m, &format!("ovl_enospc_persist_{boots}"), "dockroot.boot=persist");
        assert_eq!(r["boot_record"]["booted"], "persist");
        trash = m.inspect(|top| names_in(&top.join(TRASH)));
    }
}

/// The leftovers power cuts rarely leave on ext4 (its journal commits dockroot's
/// renames together at each sync), made on the host: an overlay skeleton, a complete
/// NAME.dockroot-ready beside an intact NAME; then a ready root whose predecessor
/// was already retired, with a half-built tmp. Each boot recovers without loss.
#[test]
fn overlay_crafted_leftovers_are_recovered_without_loss() {
    let s = store();
    let m = machine(&s, "dockroot.keep=2");
    report(&m, "ovl_crafted_1", "");
    m.modify(|top| put_marker(top, "root 1"));
    report(&m, "ovl_crafted_2", "");
    let before = m.modify(|top| {
        put_marker(top, "root 2");
        let t = top.display();
        // A skeleton as begin_overlay makes it, and a copy of the current root, ready.
        sh(&format!(
            "mkdir -m 0755 '{t}/rwlayer.dockroot-skel' '{t}/rwlayer.dockroot-skel/upper' && \
             mkdir -m 0700 '{t}/rwlayer.dockroot-skel/work' && \
             cp '{t}/rwlayer/dockroot-overlay.json' '{t}/rwlayer.dockroot-skel/' && \
             cp -a '{t}/rwlayer' '{t}/rwlayer.dockroot-ready' && \
             echo never > '{t}/rwlayer.dockroot-ready/upper/never-installed'"
        ));
        state(top)
    });
    assert!(before.skel && before.ready.is_some() && before.kept.len() == 1, "{:?}", before.leftovers());
    let old = before.current.clone().unwrap();

    let (r, out) = report(&m, "ovl_crafted_3", "--stat /never-installed");
    check_fresh(&s, &r, &out);
    let rec = &r["boot_record"];
    let recovered = rec["recovered"].to_string();
    assert!(recovered.contains("deleted the overlay skeleton /rwlayer.dockroot-skel of an interrupted boot"), "{rec}");
    assert!(recovered.contains("deleted the uninstalled /rwlayer.dockroot-ready"), "{rec}");
    assert_eq!(rec["warnings"], serde_json::json!([]), "{rec}");
    assert_eq!(field(&r, &["paths", "/never-installed", "exists"]), false, "the ready root was installed");
    assert_eq!(marker(&r), None);
    let retired = rec["retired"].as_str().expect("root 2 retired").trim_start_matches("/rwlayer.kept/").to_string();
    let (after, root3) = m.modify(|top| {
        let st = state(top);
        put_marker(top, "root 3");
        let root3 = root(&top.join("rwlayer")).unwrap();
        // As if the power was cut after the current root was retired, before the
        // ready one was installed, with a half-built tmp too.
        let t = top.display();
        sh(&format!(
            "mv '{t}/rwlayer' '{t}/rwlayer.dockroot-ready' && cp -a '{t}/rwlayer.dockroot-ready' '{t}/rwlayer.dockroot-tmp'"
        ));
        (st, root3)
    });
    assert!(after.leftovers().is_empty(), "{:?}", after.leftovers());
    assert_same_digest("the disk outside the rw layer", &before.outside, &after.outside);
    assert_eq!(after.kept.len(), 2, "{:?}", after.kept.keys());
    for (name, k) in &before.kept {
        assert_same_digest(&format!("kept root {name}"), &k.digest, &after.kept[name].digest);
    }
    assert!(retired.starts_with(&format!("{}-", old.created())), "{retired}");
    assert_same_digest("root 2, retired", &old.digest, &after.kept[&retired].digest);
    for t in &after.trash {
        assert!(t.ends_with("-rwlayer.dockroot-ready.1"), "unexpected trash entry {t}");
    }

    let (r, out) = report(&m, "ovl_crafted_4", "dockroot.boot=persist");
    let rec = &r["boot_record"];
    let recovered = rec["recovered"].to_string();
    assert!(recovered.contains("deleted the half-built /rwlayer.dockroot-tmp"), "{rec}");
    assert!(recovered.contains("installed /rwlayer.dockroot-ready"), "{rec}");
    assert_eq!(rec["booted"], "persist", "{rec}");
    assert_eq!(rec["warnings"], serde_json::json!([]), "{rec}");
    check_overlay_root(&r, &out);
    assert_eq!(marker(&r).as_deref(), Some("root 3\n"), "the ready root was not the one installed");
    let end = m.inspect(state);
    assert!(end.leftovers().is_empty(), "{:?}", end.leftovers());
    // Booted since (persist): compared without the xattrs overlayfs sets.
    assert_same_digest("the installed root", &root3.files(), &end.current.as_ref().unwrap().files());
    assert_eq!(end.kept.keys().collect::<Vec<_>>(), after.kept.keys().collect::<Vec<_>>());
    for (name, k) in &after.kept {
        assert_same_digest(&format!("kept root {name}"), &k.digest, &end.kept[name].digest);
    }
    assert_same_digest("the disk outside the rw layer", &before.outside, &end.outside);
}

// ---------------------------------------------------------------------------------
// Power cuts.

const IMAGE: &str = "dockroot: image ";
const MOUNTED_TMP: &str = "dockroot: mounted /rwlayer.dockroot-tmp";
const TOP_LAYER: &str = "dockroot: top layer ";
const RETIRED: &str = "the previous root is kept as";
const PRUNED: &str = "deleted the old kept root";
const FRESH: &str = "is a fresh overlay of";
const MOUNTED_ROOT: &str = "dockroot: mounted /rwlayer ";
const DELETING: &str = "dockroot: deleting the old overlay roots";

/// Every kill point, most telling first (a sample takes a prefix).
const POINTS: &[At] = &[
    At::Line(RETIRED, 0),
    At::Line(FRESH, 0),
    At::Line(IMAGE, 0),
    At::Line(PRUNED, 0),
    At::Line(DELETING, 0),
    At::Work(0.5),
    At::Line(TOP_LAYER, 0),
    At::Line(MOUNTED_TMP, 0),
    At::Window(0.5),
    At::Line(RETIRED, 3),
    At::Line(FRESH, 5),
    At::Work(0.25),
    At::Work(0.75),
    At::Line(IMAGE, 10),
    At::Line(TOP_LAYER, 10),
    At::Line(MOUNTED_ROOT, 0),
    At::Line(LINE_READY, 0),
    At::Work(0.1),
    At::Work(0.9),
    At::Window(0.8),
    At::Line(LINE_ROOT_DEVICE, 0),
];

/// The table of what each cut left, printed and saved to target/qemu-logs/<file>.
struct Table(Vec<String>, &'static str);

impl Table {
    fn add(&mut self, line: String) {
        let _ = writeln!(std::io::stderr(), "overlay crash: {line}");
        self.0.push(line);
        let path = target_dir().join("qemu-logs").join(self.1);
        let _ = std::fs::write(&path, self.0.join("\n") + "\n");
    }
}

const KEEP: usize = 2;

/// Two normal boots (a kept root with a marker, a current one with another): the
/// engine that cuts on them, the second boot its reference.
fn setup<'a>(m: &'a Machine, name: &str) -> CutEngine<'a> {
    let (_, out) = report(m, &format!("{name}_setup_1"), "");
    assert!(out.contains(FRESH), "{}", out.tail(20));
    m.modify(|top| put_marker(top, "setup 1"));
    let (_, reference) = report(m, &format!("{name}_setup_2"), "");
    // The pristine fresh root: every complete new root has its content.
    let fresh = m.inspect(|top| root(&top.join("rwlayer")).expect("no rw layer").content());
    assert!(!fresh.contains_key(&format!("upper/{MARKER}")), "a fresh root has the marker");
    let mut e = CutEngine::new(RootKind::Overlay, m, KEEP, fresh, reference);
    e.modify(|top| put_marker(top, "setup 2"));
    assert_eq!(e.state.kept.len(), 1, "{:?}", e.state.kept.keys());
    e
}

/// The fresh boot after cuts, checked by the engine and as every fresh overlay boot
/// ([`check_fresh`]: no old marker either); the host then marks its root with `mark`.
fn recover(s: &StoreDisk, e: &mut CutEngine, name: &str, mark: &str) -> Value {
    let r = e.recover(name, "");
    check_fresh(s, &r.report, &r.out);
    assert_eq!(marker(&r.report), None, "{name}: the recovery boot's root has an old marker");
    e.modify(|top| put_marker(top, mark));
    r.report["boot_record"]["recovered"].clone()
}

/// A table column: the point, and when it cut.
fn cut_column(c: &CutDone) -> String {
    format!(
        "{:<44} killed {:<8}",
        format!(
            "{:?} (+{} ms after {:?})",
            c.at,
            c.kill.delay.as_millis(),
            c.kill.needle.chars().take(24).collect::<String>()
        ),
        format!(
            "{:.2}s{}",
            c.power_cut.at.as_secs_f64(),
            if c.power_cut.after_needle.is_none() { " (deadline)" } else { "" }
        ),
    )
}

/// What the cuts and pruning put into the trash is deleted within a few more boots.
fn empty_the_trash(m: &Machine, e: &CutEngine, name: &str) {
    let mut trash = e.state.trash.clone();
    let mut boots = 0;
    while !trash.is_empty() {
        boots += 1;
        assert!(boots <= 3, "the trash is not empty after {} persist boots: {trash:?}", boots - 1);
        let (r, _) = report(m, &format!("{name}_persist_{boots}"), "dockroot.boot=persist");
        assert_eq!(r["boot_record"]["booted"], "persist");
        trash = m.inspect(|top| names_in(&top.join(TRASH)));
    }
}

/// For every kill point: cut the power there, check what is on the disk, boot again
/// and check the recovery (the engine); the host marks every new current root with
/// its own marker.
#[test]
fn overlay_power_cuts_during_the_boot_lose_nothing() {
    let s = store();
    let m = machine(&s, &format!("dockroot.keep={KEEP}"));
    let mut e = setup(&m, "ovl_crash");
    let mut table = Table(Vec::new(), "overlay-crash-table.txt");
    let mut seen: BTreeMap<Left, usize> = BTreeMap::new();

    for (i, at) in cut_points(POINTS).into_iter().enumerate() {
        let c = e.cut(&format!("ovl_crash_kill_{i:02}"), at);
        *seen.entry(c.left).or_default() += 1;
        let recovered = recover(&s, &mut e, &format!("ovl_crash_recover_{i:02}"), &format!("recovery {i}"));
        table.add(format!(
            "{i:2} {} left {:<20} recovered {recovered} trash {:?}",
            cut_column(&c),
            format!("{:?}", c.left),
            e.state.trash,
        ));
    }
    table.add(format!("states reached: {seen:?}"));
    // Before the new root exists, and the new root installed: the sample's image and
    // fresh-overlay points reach them. (A half-built root is durable on ext4 only from
    // the sync before the renames to the renames' commit, a few ms: only the point just
    // after the retirement line lands there, and not every time.)
    for w in [Left::Nothing, Left::Installed] {
        assert!(seen.contains_key(&w), "no cut left {w:?}: {seen:?}");
    }
    empty_the_trash(&m, &e, "ovl_crash");
}

/// Pairs of kill points: the first cuts a boot, the second the boot after it (which
/// starts by recovering what the first left), most telling first.
const DOUBLE: &[(At, At)] = &[
    (At::Line(RETIRED, 0), At::Line(LINE_ROOT_DEVICE, 0)),
    (At::Line(FRESH, 0), At::Line(RETIRED, 0)),
    (At::Line(RETIRED, 3), At::Line(IMAGE, 0)),
    (At::Work(0.5), At::Line(MOUNTED_TMP, 0)),
];

/// A second power cut during the boot after a cut (while it recovers, or builds its
/// own root on top of what it recovered): each cut is checked against the disk its
/// boot started from, and the next boot recovers, boots a fresh overlay and keeps the
/// newest roots of the whole chain, nothing lost.
#[test]
fn overlay_a_second_cut_during_the_recovery_boot_loses_nothing() {
    let s = store();
    let m = machine(&s, &format!("dockroot.keep={KEEP}"));
    let mut e = setup(&m, "ovl_double");
    let mut table = Table(Vec::new(), "overlay-double-cut-table.txt");
    let firsts: Vec<At> = DOUBLE.iter().map(|d| d.0).collect();
    for (i, first) in cut_points(&firsts).into_iter().enumerate() {
        let a = e.cut(&format!("ovl_double_kill_{i:02}_a"), first);
        let b = e.cut(&format!("ovl_double_kill_{i:02}_b"), DOUBLE[i].1);
        let recovered = recover(&s, &mut e, &format!("ovl_double_recover_{i:02}"), &format!("recovery {i}"));
        table.add(format!(
            "double {i:2} {} left {:<20} then {} left {:<20} recovered {recovered}",
            cut_column(&a),
            format!("{:?}", a.left),
            cut_column(&b),
            format!("{:?}", b.left)
        ));
    }
    empty_the_trash(&m, &e, "ovl_double");
}

/// dockroot's line when a previous boot starts copying the kept root.
const COPY: &str = "dockroot.boot=previous: booting a copy of";

/// Kill points of previous boots, most telling first.
const PREVIOUS_POINTS: &[At] = &[
    At::Line(RETIRED, 0),
    At::Line(COPY, 0),
    At::Work(0.5),
    At::Line(MOUNTED_ROOT, 0),
    At::Line(RETIRED, 3),
    At::Line(COPY, 20),
    At::Work(0.8),
    At::Work(0.25),
    At::Line(LINE_READY, 0),
];

/// A previous boot run to the end, checked by the engine (it booted a copy of the
/// newest kept root, whose files the copy holds) and here: the booted system saw the
/// copy's marker; the host then marks the new root with `mark`.
fn recover_previous(e: &mut CutEngine, name: &str, mark: &str) -> Value {
    let r = e.recover(name, "");
    let rec = &r.report["boot_record"];
    assert_eq!(rec["rw_layer_kind"], "overlay", "{rec}");
    check_overlay_root(&r.report, &r.out);
    let copied = e.modify(|top| {
        let copied = std::fs::read_to_string(top.join("rwlayer/upper").join(MARKER)).ok();
        put_marker(top, mark);
        copied
    });
    assert!(copied.is_some(), "{name}: the copy has no marker");
    assert_eq!(marker(&r.report), copied, "{name}: the booted system did not see the copy");
    rec["recovered"].clone()
}

/// Power cuts while `dockroot.boot=previous` copies a kept overlay root: each cut
/// leaves the old root or a complete copy, and the next previous boot recovers and
/// boots a copy of the newest kept root (its marker), keeping the newest roots;
/// nothing else changes.
#[test]
fn overlay_power_cuts_during_a_previous_copy_lose_nothing() {
    let s = store();
    let m = machine(&s, &format!("dockroot.keep={KEEP}"));
    let mut e = setup(&m, "ovl_prev");
    e.mode = Mode::Previous;
    // A previous boot to the end: the reference of the first cut.
    recover_previous(&mut e, "ovl_prev_setup_3", "setup 3");
    let mut table = Table(Vec::new(), "overlay-previous-cut-table.txt");
    let mut seen: BTreeMap<Left, usize> = BTreeMap::new();
    for (i, at) in cut_points(PREVIOUS_POINTS).into_iter().enumerate() {
        let c = e.cut(&format!("ovl_prev_kill_{i:02}"), at);
        *seen.entry(c.left).or_default() += 1;
        let recovered = recover_previous(&mut e, &format!("ovl_prev_recover_{i:02}"), &format!("recovery {i}"));
        table.add(format!(
            "previous {i:2} {} left {:<20} recovered {recovered} trash {:?}",
            cut_column(&c),
            format!("{:?}", c.left),
            e.state.trash,
        ));
    }
    table.add(format!("previous: states reached: {seen:?}"));
    empty_the_trash(&m, &e, "ovl_prev");
}
