//! Boot tests for what happens across boots: atomic replacement of the rw
//! layer, kept previous roots, dockroot.boot=previous|persist, the boot record
//! and the failure policy (fall back to the last root that booted).

use std::path::Path;

use qemu_tests::{
    assert_same_digest, boot, field, fill_disk, oversized_toplayer_disk, sh, tree_digest, Artifacts, BootSpec, Machine,
    OS_CONFIG, STANDARD_APPEND,
};
use serde_json::Value;

fn kept_dirs(top: &Path) -> Vec<String> {
    let mut v: Vec<String> = match std::fs::read_dir(top.join("rwlayer.kept")) {
        Ok(rd) => rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

fn marker(r: &Value) -> &Value {
    field(r, &["paths", "/var/tmp/from-previous-boot", "exists"])
}

#[test]
fn boots_keep_previous_roots_read_only_and_prune_the_oldest() {
    let m = Machine::new(OS_CONFIG);
    let os_id = m.artifacts.fixture()["images"]["os"]["id"].as_str().unwrap().to_string();
    let first = m.report("keep_1", "dockroot.keep=2 -- --make-nested");
    let rec = &first["boot_record"];
    assert_eq!(rec["booted"], "fresh", "{rec}");
    assert_eq!(rec["image"]["id"], os_id.as_str(), "{rec}");
    assert_eq!(rec["rw_layer"], "/rwlayer");
    assert_eq!(rec["retired"], Value::Null, "nothing to retire on the first boot: {rec}");
    assert!(rec["stages_ms"]["snapshot"].is_number(), "{rec}");

    let second = m.report("keep_2", "dockroot.keep=2");
    assert_eq!(marker(&second), false, "the rw layer was not replaced");
    let retired = second["boot_record"]["retired"].as_str().expect("the first root was retired").to_string();
    assert!(
        retired.starts_with("/rwlayer.kept/") && retired.ends_with(&os_id["sha256:".len().."sha256:".len() + 12]),
        "{retired}"
    );
    m.report("keep_3", "dockroot.keep=2");
    let fourth = m.report("keep_4", "dockroot.keep=2");
    assert_eq!(fourth["boot_record"]["kept"].as_array().unwrap().len(), 2, "{}", fourth["boot_record"]);
    assert_eq!(fourth["boot_record"]["pruned"].as_array().unwrap().len(), 1, "{}", fourth["boot_record"]);

    m.modify(|top| {
        let kept = kept_dirs(top);
        assert_eq!(kept.len(), 2, "{kept:?}");
        // The first root (with the nested subvolume) was the oldest: pruned, nested and all.
        assert!(!kept.iter().any(|k| retired.ends_with(k.as_str())), "the oldest root was not pruned: {kept:?}");
        for k in &kept {
            let path = top.join("rwlayer.kept").join(k);
            let ro = sh(&format!("btrfs property get -ts '{}' ro", path.display()));
            assert_eq!(ro.trim(), "ro=true", "{k} is writable");
            assert!(path.join("layer3.txt").exists(), "{k} is not a whole root");
        }
        assert!(!top.join("rwlayer.dockroot-tmp").exists() && !top.join("rwlayer.dockroot-ready").exists());
        let list = sh(&format!("btrfs subvolume list -o '{}'", top.display()));
        assert!(!list.contains("var/lib/machines"), "a pruned root's nested subvolume survived:\n{list}");
    });
}

#[test]
fn persist_keeps_this_boots_changes_and_previous_boots_the_kept_root() {
    let m = Machine::new(OS_CONFIG);
    let first = m.report("modes_1", "-- --make-nested");
    assert_eq!(marker(&first), true);
    // persist: the same root, changes and all.
    let second = m.report("modes_2", "dockroot.boot=persist");
    assert_eq!(second["boot_record"]["booted"], "persist");
    assert_eq!(marker(&second), true, "persist lost the changes");
    assert_eq!(
        field(&second, &["root_btrfs", "subvolume_id"]),
        field(&first, &["root_btrfs", "subvolume_id"]),
        "persist must boot the very same subvolume"
    );
    // A fresh boot retires it; previous brings a copy of it back.
    let third = m.report("modes_3", "");
    assert_eq!(marker(&third), false);
    let fourth = m.report("modes_4", "dockroot.boot=previous");
    let booted = fourth["boot_record"]["booted"].as_str().unwrap();
    assert!(booted.starts_with("previous: /rwlayer.kept/"), "{booted}");
    assert_eq!(marker(&fourth), true, "previous did not boot the root with the first boot's changes");
    // A btrfs snapshot does not descend into nested subvolumes: the copy has an empty directory there.
    assert_eq!(field(&fourth, &["paths", "/var/lib/machines", "btrfs", "is_subvolume"]), false, "{fourth}");
}

#[test]
fn an_unbootable_image_falls_back_to_the_last_root_that_booted() {
    let m = Machine::new(OS_CONFIG);
    let first = m.report("fallback_1", "-- --make-nested");
    assert_eq!(marker(&first), true);
    let runs = r#"-- --run "/run/dockroot/dockroot status --json" --run "/run/dockroot/dockroot status""#;
    let out = m.boot("fallback_2", &format!("dockroot.image=no/such:image {runs}"));
    let r = out.expect_testinit();
    let rec = &r["boot_record"];
    assert!(rec["booted"].as_str().unwrap().starts_with("fallback: /rwlayer as it was"), "{rec}");
    assert!(rec["fallback"]["reason"].as_str().unwrap().contains("no/such:image"), "{rec}");
    assert!(rec["warnings"].to_string().contains("FALLBACK"), "{rec}");
    assert_eq!(marker(&r), true, "the fallback must boot the last root as it was");
    // `dockroot status --json` after the fallback: why and what booted, and the next boot
    // (the same command line) falls back again.
    let ran = &r["runs"][0];
    assert_eq!(ran["code"], 0, "{ran}");
    let st: Value = serde_json::from_str(ran["stdout"].as_str().unwrap()).expect("status --json is JSON");
    let booted = &st["booted"];
    assert_eq!(booted["booted"], rec["booted"], "{st:#}");
    assert_eq!(booted["fallback"]["reason"], rec["fallback"]["reason"], "{st:#}");
    assert_eq!(booted["fallback"]["booted"], rec["fallback"]["booted"], "{st:#}");
    assert!(booted["fallback"]["booted"].as_str().is_some_and(|b| b.contains("/rwlayer")), "{st:#}");
    assert_eq!(booted["image_source"], "dockroot.image= on the kernel command line", "{st:#}");
    let next = &st["next_boot"];
    assert_eq!(next["image"], "docker.io/no/such:image", "{st:#}");
    // Paths are named on the partition, not under the command's temporary mount.
    assert!(!ran["stdout"].as_str().unwrap().contains("/mnt-"), "{st:#}");
    assert_eq!(next["image_id"], Value::Null, "{st:#}");
    assert!(next["image_error"].as_str().is_some_and(|e| e.contains("no/such:image")), "{st:#}");
    assert_eq!(next["action"], "current", "{st:#}");
    assert!(next["fallback"].as_str().is_some(), "{st:#}");
    assert_eq!((&next["fail"], &next["update_pending"]), (&Value::Null, &Value::Null), "{st:#}");
    assert_eq!((&next["switch"], &next["once"]), (&Value::Null, &Value::Null), "{st:#}");
    assert_eq!(next["outcome"], "fallback", "{st:#}");
    let human = r["runs"][1]["stdout"].as_str().unwrap_or_default();
    let said = "booted: no image recorded (a root of an earlier boot); root /rwlayer (subvolume): fallback: /rwlayer as it was";
    assert!(human.starts_with(said), "{human}");
    assert!(human.contains("  FALLBACK at this boot: "), "{human}");
    assert!(!human.contains("the image cannot boot"), "the reason is said once: {human}");
    assert!(human.contains("next boot: /rwlayer as it is\n  FALLBACK: "), "{human}");
    assert!(out.contains("dockroot: ERROR: cannot prepare a fresh root:"), "{}", out.tail(30));
    assert!(
        out.contains("dockroot: WARNING: FALLBACK: booting the previous root /rwlayer as it was"),
        "{}",
        out.tail(30)
    );
}

#[test]
fn a_full_disk_during_the_top_layer_falls_back_and_loses_nothing() {
    let a = Artifacts::from_env();
    let disk = a.disk.clone();
    let m = Machine::with(a, &disk, &["virtio_blk", "virtio_pci", "btrfs", "ext4"], OS_CONFIG, STANDARD_APPEND);
    let first = m.report("enospc_1", "-- --make-nested");
    assert_eq!(marker(&first), true);
    // Fill the btrfs partition, leaving a little room for metadata.
    // The whole partition (image store, rw layer, everything) before the failing boot.
    let before = m.modify(|top| {
        fill_disk(top);
        tree_digest(top, &[])
    });
    // A top layer on a second disk (ext4) with more data than fits: copying it
    // into the new root (same filesystem as the full one) must fail with ENOSPC.
    let work = tempfile::tempdir().expect("temp dir");
    let ext4 = oversized_toplayer_disk(work.path());
    let append = "root=LABEL=dockroot-test rootflags=subvol=rwlayer rw toplayer=LABEL=machine toplayer_path=machine";
    let spec = BootSpec {
        name: Some("enospc_2".into()),
        ..BootSpec::new(m.artifacts.kernel(), m.initrd.clone(), &[m.disk.path(), &ext4], append)
    };
    let out = boot(&spec);
    let r = out.expect_testinit();
    let rec = &r["boot_record"];
    assert!(rec["booted"].as_str().unwrap().starts_with("fallback: /rwlayer as it was"), "{rec}");
    assert!(rec["fallback"]["reason"].as_str().unwrap().contains("No space left on device"), "{rec}");
    assert!(rec["fallback"]["reason"].as_str().unwrap().contains("top layer"), "{rec}");
    assert_eq!(marker(&r), true, "the previous root must boot intact");
    assert_eq!(field(&r, &["paths", "/etc/hostname", "content"]), "dockroot-test-machine\n");
    m.modify(|top| {
        assert!(!top.join("rwlayer.dockroot-tmp").exists(), "the half-built root was left behind");
        assert!(top.join("rwlayer/var/tmp/from-previous-boot").exists());
        // Byte for byte what it was: the fallback boot and its ENOSPC changed nothing.
        assert_same_digest("the partition after the failed boot", &before, &tree_digest(top, &[]));
    });
}

#[test]
fn leftovers_of_an_interrupted_boot_are_finished_or_cleaned() {
    let m = Machine::new(OS_CONFIG);
    m.report("leftover_1", "-- --make-nested");
    // As if power was cut after the previous root was retired but before the new
    // one was renamed into place: only NAME.dockroot-ready exists, plus a half-built tmp.
    m.modify(|top| {
        sh(&format!("mv '{0}/rwlayer' '{0}/rwlayer.dockroot-ready'", top.display()));
        sh(&format!(
            "btrfs subvolume snapshot '{0}/rwlayer.dockroot-ready' '{0}/rwlayer.dockroot-tmp' >/dev/null",
            top.display()
        ));
    });
    let r = m.report("leftover_2", "dockroot.boot=persist");
    let rec = &r["boot_record"];
    let recovered = rec["recovered"].to_string();
    assert!(recovered.contains("deleted the half-built /rwlayer.dockroot-tmp"), "{rec}");
    assert!(recovered.contains("installed /rwlayer.dockroot-ready"), "{rec}");
    assert_eq!(rec["booted"], "persist", "{rec}");
    assert_eq!(marker(&r), true, "the ready root was not the one installed");
    m.modify(|top| {
        assert!(!top.join("rwlayer.dockroot-tmp").exists() && !top.join("rwlayer.dockroot-ready").exists());
    });
}

/// The failure policy step by step on one machine (each step's root is the next
/// step's previous root):
/// 1. an install that fails (the kept directory's name holds a regular file, so
///    the current root cannot be retired) puts everything back and boots the
///    current root as it was, instead of rebooting into the same failure;
/// 2. an image without an init falls back to the current root;
/// 3. with the current root unbootable too (its init removed), a copy of the
///    newest kept root boots; each time with the FALLBACK warning on the console,
///    in kmsg as the booted system reads it, and in boot.json.
#[test]
fn failures_fall_back_to_the_current_root_then_to_the_newest_kept_one() {
    let m = Machine::new(OS_CONFIG);
    let fx = m.artifacts.fixture();
    let top_cache = fx["images"]["os"]["top_cache_id"].as_str().expect("top_cache_id in fixture.json").to_string();
    let first = m.report("failpolicy_1", "-- --make-nested");
    assert_eq!(marker(&first), true);
    let first_root = field(&first, &["root_btrfs", "subvolume_id"]).clone();
    let no_leftovers = |top: &Path, step: &str| {
        for n in ["rwlayer.dockroot-tmp", "rwlayer.dockroot-ready"] {
            assert!(!top.join(n).exists(), "{step}: {n} was left behind");
        }
    };
    let fallback_warned = |r: &Value, out: &qemu_tests::BootOutput, step: &str, from: &str| {
        let warning = format!("FALLBACK: booting {from}");
        assert!(out.contains(&format!("dockroot: WARNING: {warning}")), "{step}: console:\n{}", out.tail(30));
        let kmsg: Vec<&str> = r["kmsg_dockroot"].as_array().unwrap().iter().filter_map(|l| l.as_str()).collect();
        assert!(kmsg.iter().any(|l| l.contains(&warning)), "{step}: kmsg lacks {warning:?}: {kmsg:#?}");
        assert!(r["boot_record"]["warnings"].to_string().contains(&warning), "{step}: {}", r["boot_record"]);
    };

    // 1. A regular file where the kept directory goes: the install fails.
    let before = m.modify(|top| {
        std::fs::write(top.join("rwlayer.kept"), b"not a directory\n").unwrap();
        tree_digest(&top.join("rwlayer"), &[])
    });
    let out = m.boot("failpolicy_2_install", "");
    let r = out.expect_testinit();
    assert_eq!(r["errors"], serde_json::json!([]), "{r}");
    let rec = &r["boot_record"];
    assert_eq!(rec["booted"], "fallback: /rwlayer as it was", "{rec}");
    let reason = rec["fallback"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("installing the new root") && reason.contains("/rwlayer.kept"), "{reason}");
    assert!(out.contains(&format!("dockroot: ERROR: cannot prepare a fresh root: {reason}")), "{}", out.tail(30));
    fallback_warned(&r, &out, "install", "the previous root /rwlayer as it was");
    assert_eq!(marker(&r), true, "not the previous root with its changes");
    assert_eq!(field(&r, &["root_btrfs", "subvolume_id"]), &first_root, "not the very same root");
    m.inspect(|top| {
        no_leftovers(top, "install");
        assert_same_digest("the current root", &before, &tree_digest(&top.join("rwlayer"), &[]));
        assert_eq!(std::fs::read(top.join("rwlayer.kept")).unwrap(), b"not a directory\n");
    });

    // A fresh boot with the way clear retires the first root into the kept directory.
    m.modify(|top| std::fs::remove_file(top.join("rwlayer.kept")).unwrap());
    let third = m.report("failpolicy_3", "");
    assert_eq!(third["boot_record"]["booted"], "fresh");
    assert_eq!(marker(&third), false);
    let kept = third["boot_record"]["retired"].as_str().expect("the first root was kept").to_string();

    // 2. The image loses its init (and /bin/sh, the kernel's last resort).
    m.modify(|top| {
        let layer = top.join("var/lib/docker/btrfs/subvolumes").join(&top_cache);
        sh(&format!("btrfs property set -ts '{0}' ro false && rm '{0}/sbin/init' '{0}/bin/sh'", layer.display()));
    });
    let out = m.boot("failpolicy_4_no_init", "");
    let r = out.expect_testinit();
    let rec = &r["boot_record"];
    assert_eq!(rec["booted"], "fallback: /rwlayer as it was", "{rec}");
    let reason = rec["fallback"]["reason"].as_str().unwrap_or_default();
    for want in ["no init found in the new root", "/sbin/init", "/bin/sh", "dockroot-test/os"] {
        assert!(reason.contains(want), "the reason does not name {want:?}: {reason}");
    }
    fallback_warned(&r, &out, "no init", "the previous root /rwlayer as it was");
    assert_eq!(field(&r, &["root_btrfs", "subvolume_id"]), field(&third, &["root_btrfs", "subvolume_id"]));
    m.inspect(|top| no_leftovers(top, "no init"));

    // 3. The current root cannot boot either: a copy of the newest kept root.
    m.modify(|top| sh(&format!("rm '{0}/rwlayer/sbin/init' '{0}/rwlayer/bin/sh'", top.display())));
    let out = m.boot("failpolicy_5_kept", "dockroot.image=no/such:image");
    let r = out.expect_testinit();
    assert_eq!(r["errors"], serde_json::json!([]), "{r}");
    let rec = &r["boot_record"];
    let from = format!("a copy of {kept}");
    assert_eq!(rec["booted"], format!("fallback: {from}").as_str(), "{rec}");
    assert!(rec["fallback"]["reason"].as_str().unwrap_or_default().contains("no/such:image"), "{rec}");
    assert!(out.contains("dockroot: WARNING: /rwlayer cannot boot: no init found"), "{}", out.tail(30));
    fallback_warned(&r, &out, "kept", &from);
    assert_eq!(marker(&r), true, "not a copy of the first root");
    m.inspect(|top| {
        no_leftovers(top, "kept");
        assert!(top.join(kept.trim_start_matches('/')).join("sbin/init").is_file(), "the kept root was changed");
    });
}
