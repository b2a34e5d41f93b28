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
use std::time::Duration;

use qemu_tests::{boot, field, sh, Artifacts, BootSpec, KillAfter, Machine, OS_CONFIG, TESTINIT_MARKER};
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

/// `dockroot status --json` as a testinit `--run` command.
const STATUS_JSON: &str = "/run/dockroot/dockroot status --json";

/// testinit's arguments that run `commands` in the booted system, in order.
fn runs_arg(commands: &[&str]) -> String {
    let runs: Vec<String> = commands.iter().map(|c| format!("--run \"{c}\"")).collect();
    format!("-- {}", runs.join(" "))
}

/// The fixture image's ID (`os` or `variant`).
fn fixture_id(m: &Machine, image: &str) -> String {
    m.artifacts.fixture()["images"][image]["id"].as_str().expect("the fixture's image ID").to_string()
}

/// Scripts in the top layer (so in every fresh root) that the booted system runs:
/// /retag.sh points the variant's reference at the os image in the store's
/// repositories.json (as `docker build -t` of the same tag does), /untag.sh undoes it.
fn write_retag_scripts(m: &Machine, top: &Path) {
    let (variant_id, os_id) = (fixture_id(m, "variant"), fixture_id(m, "os"));
    let mount = "b=/bin/busybox; $b mkdir -p /mnt; $b mount -t btrfs -o subvolid=5 /dev/vda /mnt\n\
        r=/mnt/var/lib/docker/image/btrfs/repositories.json\n";
    let end = "$b sync; $b umount /mnt\n";
    let retag = format!("set -e; {mount}$b cp $r $r.orig; $b sed -i 's/{variant_id}/{os_id}/g' $r\n{end}");
    std::fs::write(top.join("toplayer/retag.sh"), retag).unwrap();
    std::fs::write(top.join("toplayer/untag.sh"), format!("set -e; {mount}$b mv $r.orig $r\n{end}")).unwrap();
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

    // Once: the os image for one boot, then the variant again. The top layer brings the
    // scripts that retag the variant's reference from inside the booted system (below).
    let said = m.modify(|top| {
        write_retag_scripts(&m, top);
        switch(&m, top, &["--once", OS])
    });
    assert!(said.contains(&format!("then {VARIANT} (dockroot switch) again")), "{said}");
    let r = m.report("switch_once", "");
    assert_eq!(booted_image(&r), "os", "{}", r["boot_record"]);
    assert_eq!(r["boot_record"]["image_source"], "dockroot switch --once");
    // `dockroot status --json`, run by the booted system: what runs and what boots next.
    let runs = [STATUS_JSON, "/bin/sh /retag.sh", STATUS_JSON, "/run/dockroot/dockroot status", "/bin/sh /untag.sh"];
    let r = m.report("switch_after_once", &runs_arg(&runs));
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

    // An update is pending: the reference the boot uses now names another image (as
    // `docker build -t` the same tag does), retagged from the booted system.
    let (variant_id, os_id) = (fixture_id(&m, "variant"), fixture_id(&m, "os"));
    assert_eq!(booted["image"]["id"], variant_id.as_str(), "{st:#}");
    for (i, ran) in r["runs"].as_array().unwrap().iter().enumerate().skip(1) {
        assert_eq!(ran["code"], 0, "run {i}: {ran}");
    }
    let st: Value = serde_json::from_str(r["runs"][2]["stdout"].as_str().unwrap()).expect("status --json is JSON");
    assert_eq!(st["booted"]["image"]["id"], variant_id.as_str(), "{st:#}");
    let next = &st["next_boot"];
    assert_eq!(next["image"], VARIANT, "{st:#}");
    assert_eq!(next["image_source"], "dockroot switch", "{st:#}");
    assert_eq!(next["image_id"], os_id.as_str(), "{st:#}");
    assert_eq!(next["image_error"], Value::Null, "{st:#}");
    assert_eq!(next["action"], "fresh", "{st:#}");
    assert_eq!(next["update_pending"], true, "{st:#}");
    assert_eq!((&next["fallback"], &next["fail"]), (&Value::Null, &Value::Null), "{st:#}");
    assert_eq!(next["switch"]["image"], VARIANT, "{st:#}");
    assert_eq!(next["once"], Value::Null, "{st:#}");
    assert_eq!(next["outcome"], "as-asked", "{st:#}");
    let human = r["runs"][3]["stdout"].as_str().unwrap();
    let pending = format!(
        "next boot: update pending: {VARIANT} (from dockroot switch) now resolves to {}, not the booted {}",
        &os_id[7..19],
        &variant_id[7..19]
    );
    assert!(human.contains(&pending), "{human}");
    assert!(human.contains(&format!("  chosen with dockroot switch: {VARIANT} (at ")), "{human}");

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
    assert!(!out.contains("WARNING: WARNING:"), "said twice on the console: {}", out.tail(20));
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
    let said = m.modify(|top| {
        let t = top.to_string_lossy();
        let (code, out, err) = dockroot(&["rollback", "--top", &t, "--cmdline", &m.append]);
        assert_eq!(code, 0, "{out}{err}");
        out
    });
    assert!(said.contains(&format!("the previous image {os_id} (of /rwlayer.kept/")), "{said}");
    assert!(said.contains("fresh from Docker (btrfs)"), "{said}");
    let once = format!("/run/dockroot/dockroot switch --once {VARIANT}");
    let r = m.report("rollback", &runs_arg(&[STATUS_JSON, &once, STATUS_JSON]));
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
    assert_eq!(next["outcome"], "as-asked", "{st:#}");
    // A one-shot choice made from the booted system: it boots next, the rollback after it.
    assert_eq!(r["runs"][1]["code"], 0, "{}", r["runs"][1]);
    let st: Value = serde_json::from_str(r["runs"][2]["stdout"].as_str().unwrap()).expect("status --json");
    let next = &st["next_boot"];
    assert_eq!(next["image"], VARIANT, "{st:#}");
    assert_eq!(next["image_source"], "dockroot switch --once", "{st:#}");
    assert_eq!(next["image_id"], variant_id.as_str(), "{st:#}");
    assert_eq!(next["once"]["image"], VARIANT, "{st:#}");
    assert!(next["once"]["set"].as_str().is_some_and(|t| t.len() == 16 && t.ends_with('Z')), "{st:#}");
    assert_eq!(next["once"]["kept"], Value::Null, "{st:#}");
    assert_eq!(next["switch"]["image"], os_id.as_str(), "{st:#}");
    assert_eq!((&next["action"], &next["update_pending"]), (&Value::from("fresh"), &Value::from(true)), "{st:#}");
    assert_eq!(next["outcome"], "as-asked", "{st:#}");

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

/// The booted system's loop of `dockroot switch` commands (in the top layer, so in
/// every fresh root): each round goes through every kind of file the command writes
/// (from now on, another from now on, a one-shot beside it, removed), with a line on
/// the console before each command for the power cut to time from, and one for a failure.
const SWITCH_LOOP: &str = "i=0
while [ $i -lt 30 ]; do
  i=$((i+1))
  for a in dockroot-test/os:latest localhost:5000/team/os:v1 '--once dockroot-test/os:latest' --reset; do
    echo \"dockroot-test: round $i: switch $a\" > /dev/kmsg
    /run/dockroot/dockroot switch $a > /dev/null 2>/tmp/err || echo \"dockroot-test: FAILED: switch $a: $(/bin/busybox cat /tmp/err)\" > /dev/kmsg
  done
done
";

/// The choices the file on the host's view of the disk holds: (switch, once) images,
/// `None` for no file; panics unless it is a complete file `dockroot switch` writes.
fn choices_on_disk(top: &Path) -> Option<(Option<String>, Option<String>)> {
    let bytes = match std::fs::read(top.join("rwlayer.dockroot-next")) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => panic!("reading /rwlayer.dockroot-next: {e}"),
    };
    let text = String::from_utf8_lossy(&bytes);
    let v: Value = serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("a torn file: {e}: {text:?}"));
    assert_eq!(v["dockroot_next_boot"], 1, "{text}");
    let image = |key: &str| {
        let s = &v[key];
        if s.is_null() {
            return None;
        }
        assert!(s["set"].as_str().is_some_and(|t| t.len() == 16), "{text}");
        Some(s["image"].as_str().unwrap_or_else(|| panic!("{key} has no image: {text}")).to_string())
    };
    let (switch, once) = (image("switch"), image("once"));
    let valid = [(Some(OS), None), (Some(VARIANT), None), (Some(VARIANT), Some(OS))];
    assert!(valid.contains(&(switch.as_deref(), once.as_deref())), "not a state the loop writes: {text}");
    Some((switch, once))
}

/// The image a boot boots for these choices, as the init names it in its log, and the
/// fixture image it is.
fn expected_boot(choices: &Option<(Option<String>, Option<String>)>) -> (&'static str, &'static str) {
    let image = match choices {
        Some((_, Some(once))) => once.as_str(),
        Some((Some(switch), None)) => switch.as_str(),
        _ => OS,
    };
    if image == VARIANT {
        (VARIANT, "variant")
    } else {
        ("docker.io/dockroot-test/os:latest", "os")
    }
}

/// A power cut while the booted system runs `dockroot switch` over and over, at several
/// points: the disk then holds a complete file of one of the states the loop writes
/// (or none), never a torn one, and the next boot boots what it says, without a warning
/// about the file.
#[test]
fn a_power_cut_during_switch_leaves_the_old_or_the_new_choice() {
    let m = Machine::new(OS_CONFIG);
    m.modify(|top| std::fs::write(top.join("toplayer/switch-loop.sh"), SWITCH_LOOP).unwrap());
    // (the command's line, ms after it): during each kind of write, early and later in it.
    let all = [
        ("round 1: switch dockroot-test/os:latest", 0),
        ("round 2: switch --once", 20),
        ("round 2: switch localhost:5000/team/os:v1", 60),
        ("round 3: switch --reset", 10),
        ("round 4: switch --once", 60),
        ("round 5: switch dockroot-test/os:latest", 120),
        ("round 6: switch --once", 0),
        ("round 7: switch --reset", 100),
    ];
    let n = std::env::var("DOCKROOT_CRASH_POINTS").ok().and_then(|v| v.parse().ok()).unwrap_or(all.len());
    let mut choices = None;
    let mut seen = Vec::new();
    for (i, &(line, ms)) in all.iter().take(n.max(1)).enumerate() {
        let name = format!("switch_cut_{i}");
        let kill =
            KillAfter { needle: format!("dockroot-test: {line}"), delay: Duration::from_millis(ms), deadline: None };
        let spec = BootSpec { kill_after: Some(kill), ..m.spec(&name, r#"-- --run "/bin/sh /switch-loop.sh""#) };
        let out = boot(&spec);
        assert!(out.cut.is_some(), "{name}: the power was never cut; last serial lines:\n{}", out.tail(30));
        assert!(!out.contains(TESTINIT_MARKER), "{name}: the loop ended before the cut:\n{}", out.tail(30));
        // It booted (the loop ran in the booted system), what the file said, without a warning.
        let (logged, _) = expected_boot(&choices);
        assert!(out.contains(&format!("dockroot: image {logged} is sha256:")), "{name}: {}", out.tail(40));
        assert!(!out.contains("dockroot-next:"), "{name}: a warning about the file: {}", out.tail(40));
        assert!(!out.contains("dockroot-test: FAILED"), "{name}: {}", out.tail(40));
        // Mounted read-write on the host, which replays the filesystem's log as the next boot would.
        choices = m.modify(choices_on_disk);
        seen.push(choices.clone());
    }
    eprintln!("the choices after the cuts: {seen:?}");
    let r = m.report("switch_cut_after", "");
    let (_, image) = expected_boot(&choices);
    assert_eq!(booted_image(&r), image, "{choices:?}: {}", r["boot_record"]);
    assert!(!r["boot_record"]["warnings"].to_string().contains("dockroot-next"), "{}", r["boot_record"]);
    let source = match &choices {
        Some((_, Some(_))) => "dockroot switch --once",
        Some((Some(_), None)) => "dockroot switch",
        _ => "the embedded config",
    };
    assert_eq!(r["boot_record"]["image_source"], source, "{}", r["boot_record"]);
}
