//! `dockroot switch`, `rollback` and `status` across boots: the choice written beside the rw layer is
//! what the init boots, in the documented precedence (kernel command line >
//! one-shot > from now on > embedded config); a one-shot choice boots once; a
//! corrupt file is a warning, never a failed boot; `--reset` gives the say back
//! to the embedded config; a rollback boots the previous image, or a copy of its
//! kept root when the image is gone. `dockroot plan` reads the same file the same
//! way. The booted system finds the commands at /run/dockroot/dockroot, and its
//! `status --json` says what runs and what boots next.

use std::path::Path;
use std::process::Command;

use qemu_tests::{field, sh, Artifacts, Machine, OS_CONFIG};
use serde_json::Value;

const VARIANT: &str = "localhost:5000/team/os:v1";
const OS: &str = "dockroot-test/os:latest";

/// Runs the `dockroot` command with `args`; its status and output.
fn dockroot(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(Artifacts::cli()).args(args).output().expect("running dockroot");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

/// `dockroot switch ARGS --top TOP --cmdline <the machine's>`, which must succeed.
fn switch(m: &Machine, top: &Path, args: &[&str]) -> String {
    let top = top.to_string_lossy();
    let mut all = vec!["switch"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--top", &top, "--cmdline", &m.append]);
    let (code, out, err) = dockroot(&all);
    assert_eq!(code, 0, "dockroot {all:?}: {out}{err}");
    out
}

/// Which fixture image the booted system is: the variant has /variant.txt, the
/// os image /layer2.txt.
fn booted_image(r: &Value) -> &'static str {
    match (field(r, &["paths", "/variant.txt", "exists"]), field(r, &["paths", "/layer2.txt", "exists"])) {
        (Value::Bool(true), Value::Bool(false)) => "variant",
        (Value::Bool(false), Value::Bool(true)) => "os",
        _ => panic!("neither fixture image booted: {r}"),
    }
}

#[test]
fn switch_once_reset_rollback_and_status_across_boots() {
    let m = Machine::new(OS_CONFIG);
    let next_file = |top: &Path| top.join("rwlayer.dockroot-next");

    // From now on: the variant image, written through --device (mounted by the command).
    let dev = sh(&format!("losetup --find --show '{}'", m.disk.path().display())).trim().to_string();
    let (code, out, err) = dockroot(&["switch", VARIANT, "--device", &dev, "--cmdline", &m.append]);
    sh(&format!("losetup -d {dev}"));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("the next boots boot {VARIANT} (sha256:")), "{out}");
    // The booted system runs the commands the init left it, the version that booted it.
    let r = m.report("switch_1", r#"-- --run "/run/dockroot/dockroot --version""#);
    assert_eq!(booted_image(&r), "variant", "{}", r["boot_record"]);
    assert_eq!(r["boot_record"]["image_source"], "dockroot switch", "{}", r["boot_record"]);
    assert_eq!(r["boot_record"]["commands"], "/run/dockroot/dockroot", "{}", r["boot_record"]);
    // The test image ships no kernel modules: nothing to compare, no warning.
    assert_eq!(r["boot_record"]["kernel"]["modules_match"], Value::Null, "{}", r["boot_record"]);
    let ran = &r["runs"][0];
    assert_eq!(ran["code"], 0, "{ran}");
    assert_eq!(ran["stdout"], format!("dockroot {}\n", env!("CARGO_PKG_VERSION")), "{ran}");

    // Once: the os image for one boot, then the variant again.
    let said = m.modify(|top| switch(&m, top, &["--once", OS]));
    assert!(said.contains(&format!("then {VARIANT} (dockroot switch) again")), "{said}");
    let r = m.report("switch_once", "");
    assert_eq!(booted_image(&r), "os", "{}", r["boot_record"]);
    assert_eq!(r["boot_record"]["image_source"], "dockroot switch --once");
    // `dockroot status --json`, run by the booted system: what runs and what boots next.
    let r = m.report("switch_after_once", r#"-- --run "/run/dockroot/dockroot status --json""#);
    assert_eq!(booted_image(&r), "variant", "the one-shot choice booted twice: {}", r["boot_record"]);
    let ran = &r["runs"][0];
    assert_eq!(ran["code"], 0, "{ran}");
    let st: Value = serde_json::from_str(ran["stdout"].as_str().unwrap()).expect("status --json is JSON");
    assert_eq!(st["dockroot_status"], 1, "{st:#}");
    let booted = &st["booted"];
    assert_eq!(booted["booted"], "fresh", "{st:#}");
    assert_eq!(booted["image"]["reference"], VARIANT, "{st:#}");
    assert_eq!(booted["image"]["id"], r["boot_record"]["image"]["id"], "{st:#}");
    assert_eq!(booted["image_source"], "dockroot switch", "{st:#}");
    assert_eq!(booted["rw_layer"], "/rwlayer", "{st:#}");
    assert_eq!(booted["fallback"], Value::Null, "{st:#}");
    // The test image ships no kernel modules: status says the kernel's are missing.
    let release = st["kernel"]["release"].as_str().unwrap_or_default();
    assert!(release.contains("-amd64"), "a Debian kernel's release: {st:#}");
    assert_eq!(st["kernel"]["modules"], false, "{st:#}");
    assert_eq!(st["rw_layer"], "/rwlayer");
    assert_eq!(st["rw_layer_exists"], true);
    let kept = st["kept"].as_array().expect("kept roots");
    assert!(!kept.is_empty(), "{st:#}");
    for k in kept {
        assert_eq!(k["has_init"], true, "{k}");
        assert!(k["path"].as_str().unwrap().starts_with("/rwlayer.kept/"), "{k}");
    }
    let next = &st["next_boot"];
    assert_eq!(next["image"], VARIANT, "{st:#}");
    assert_eq!(next["image_source"], "dockroot switch", "{st:#}");
    assert_eq!(next["image_id"], booted["image"]["id"], "{st:#}");
    assert_eq!(next["action"], "fresh", "{st:#}");
    assert_eq!(next["update_pending"], false, "{st:#}");
    assert_eq!(next["switch"]["image"], VARIANT, "{st:#}");
    assert_eq!(next["once"], Value::Null, "{st:#}");
    assert_eq!(next["outcome"], "as-asked", "{st:#}");

    // The kernel command line wins, and leaves the choice in place.
    let r = m.report("switch_cmdline", &format!("dockroot.image={OS}"));
    assert_eq!(booted_image(&r), "os");
    assert_eq!(r["boot_record"]["image_source"], "dockroot.image= on the kernel command line");
    m.inspect(|top| assert!(std::fs::read_to_string(next_file(top)).unwrap().contains(VARIANT)));

    // A corrupt file: a warning, and the embedded config's image. And from now on the
    // image has modules, but for another kernel (its top layer brings them): a WARNING
    // naming both releases, on the console, in kmsg and in boot.json.
    m.modify(|top| {
        std::fs::write(next_file(top), b"{\"dockroot_next_boot\": 1, \"switch\": {\"image\": ").unwrap();
        std::fs::create_dir_all(top.join("toplayer/lib/modules/0.0.0-other")).unwrap();
    });
    let (r, out) = m.report_and_output("switch_corrupt", "");
    let kernel = &r["boot_record"]["kernel"];
    let running = kernel["running"].as_str().expect("the running release").to_string();
    assert_eq!(kernel["modules_match"], false, "{kernel}");
    assert_eq!(kernel["image_modules"], serde_json::json!(["0.0.0-other"]), "{kernel}");
    let warning = format!("WARNING: the running kernel is {running} but the image has modules only for 0.0.0-other");
    assert!(out.contains(&warning), "not on the console: {}", out.tail(20));
    assert!(r["kmsg_dockroot"].to_string().contains(&warning), "not in kmsg: {}", r["kmsg_dockroot"]);
    assert!(r["boot_record"]["warnings"].to_string().contains(&warning), "{}", r["boot_record"]);
    assert_eq!(booted_image(&r), "os", "{}", r["boot_record"]);
    assert_eq!(r["boot_record"]["image_source"], "the embedded config");
    let warnings = r["boot_record"]["warnings"].to_string();
    assert!(warnings.contains("ignoring /rwlayer.dockroot-next: not JSON"), "{warnings}");

    // Reset: the file goes, and the plan (the same rule, read-only) says the embedded config decides.
    m.modify(|top| {
        switch(&m, top, &[VARIANT]);
        let said = switch(&m, top, &["--reset"]);
        assert!(said.contains("removed the choices in /rwlayer.dockroot-next"), "{said}");
        assert!(!next_file(top).exists());
        switch(&m, top, &["--once", VARIANT]);
        let config = top.join("plan-config.json");
        std::fs::write(&config, OS_CONFIG).unwrap();
        let (t, c) = (top.to_string_lossy(), config.to_string_lossy());
        let (code, out, err) = dockroot(&["plan", "--top", &t, "--cmdline", &m.append, "--config", &c]);
        std::fs::remove_file(&config).unwrap();
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains(&format!("image {VARIANT} (from dockroot switch --once)")), "{out}");
        assert!(out.contains("the boot removes it from /rwlayer.dockroot-next before it uses it"), "{out}");
        assert!(next_file(top).exists(), "the plan changed the file");
    });

    // Rollback: the one-shot choice boots the variant; the previous image is then the
    // os image (the newest kept root of another image), fresh from the store.
    let r = m.report("before_rollback", "");
    assert_eq!(booted_image(&r), "variant", "{}", r["boot_record"]);
    let os_id = m.artifacts.fixture()["images"]["os"]["id"].as_str().unwrap().to_string();
    let said = m.modify(|top| {
        let t = top.to_string_lossy();
        let (code, out, err) = dockroot(&["rollback", "--top", &t, "--cmdline", &m.append]);
        assert_eq!(code, 0, "{out}{err}");
        out
    });
    assert!(said.contains(&format!("the previous image {os_id} (of /rwlayer.kept/")), "{said}");
    assert!(said.contains("fresh from Docker (btrfs)"), "{said}");
    let r = m.report("rollback", r#"-- --run "/run/dockroot/dockroot status --json""#);
    assert_eq!(booted_image(&r), "os", "{}", r["boot_record"]);
    assert_eq!(r["boot_record"]["booted"], "fresh");
    assert_eq!(r["boot_record"]["image"]["id"], os_id.as_str());
    assert_eq!(r["boot_record"]["image_source"], "dockroot rollback");
    // status after a rollback: it boots again, by the image's ID, with its kept root as the way back.
    let st: Value = serde_json::from_str(r["runs"][0]["stdout"].as_str().unwrap()).expect("status --json");
    let next = &st["next_boot"];
    assert_eq!(st["booted"]["image_source"], "dockroot rollback", "{st:#}");
    assert_eq!(next["image_source"], "dockroot rollback", "{st:#}");
    assert_eq!(next["image"], os_id.as_str(), "{st:#}");
    assert_eq!(next["switch"]["image"], os_id.as_str(), "{st:#}");
    assert!(next["switch"]["kept"].as_str().is_some_and(|k| k.ends_with(&os_id[7..19])), "{st:#}");
    assert_eq!(next["once"], Value::Null, "{st:#}");
    assert_eq!((&next["action"], &next["update_pending"]), (&Value::from("fresh"), &Value::from(false)), "{st:#}");
    assert_eq!(st["kernel"]["modules"], false, "the image's modules are for 0.0.0-other: {st:#}");

    // A rollback whose image left the stores boots a copy of its kept root (the
    // newest: the variant root the rollback retired), saying why; not a fallback.
    let kept = m.modify(|top| {
        let mut kept: Vec<String> = std::fs::read_dir(top.join("rwlayer.kept"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        kept.sort();
        let newest = kept.pop().expect("kept roots");
        let gone = format!("sha256:{}", "f".repeat(64));
        let file = serde_json::json!({"dockroot_next_boot": 1,
            "switch": {"image": gone, "set": "20261204T000000Z", "kept": newest}});
        std::fs::write(next_file(top), file.to_string()).unwrap();
        newest
    });
    let r = m.report("rollback_gone", "");
    assert_eq!(booted_image(&r), "variant", "{}", r["boot_record"]);
    assert_eq!(r["boot_record"]["booted"], format!("previous: /rwlayer.kept/{kept}"), "{}", r["boot_record"]);
    assert_eq!(r["boot_record"]["fallback"], Value::Null, "{}", r["boot_record"]);
    assert_eq!(r["boot_record"]["image_source"], "dockroot rollback");
    let warnings = r["boot_record"]["warnings"].to_string();
    assert!(warnings.contains("dockroot rollback: the image cannot be made fresh"), "{warnings}");
    assert!(warnings.contains(&format!("booting a copy of its kept root /rwlayer.kept/{kept}")), "{warnings}");
}
