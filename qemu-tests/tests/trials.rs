//! Boot counting (README, "A bad image rolls itself back"): a fresh root of an image
//! not yet blessed on this machine is on trial; each boot uses a try before
//! switch_root; an image that used its tries unblessed is refused and the boot goes
//! back to the newest blessed image, saying why; `dockroot bless --reset` and
//! `dockroot.trial=retry` give it new tries, `dockroot bless bad` refuses it at once,
//! `dockroot.tries=0` counts nothing. A power cut after the try was used still
//! counts it, exactly once.
//!
//! The image's init here is testinit, which blesses a boot on trial itself (as an
//! image without systemd does) unless given `--no-bless`: the "bad" image is the
//! variant booted with `--no-bless`.

use std::path::Path;
use std::time::Duration;

use qemu_tests::{boot, field, BootSpec, KillAfter, Machine, OS_CONFIG};
use serde_json::Value;

const VARIANT: &str = "localhost:5000/team/os:v1";

/// Which fixture image booted: the variant has /variant.txt, the os image /layer2.txt.
fn booted_image(r: &Value) -> &'static str {
    match (field(r, &["paths", "/variant.txt", "exists"]), field(r, &["paths", "/layer2.txt", "exists"])) {
        (Value::Bool(true), Value::Bool(false)) => "variant",
        (Value::Bool(false), Value::Bool(true)) => "os",
        _ => panic!("neither fixture image booted: {r}"),
    }
}

fn fixture_id(m: &Machine, image: &str) -> String {
    m.artifacts.fixture()["images"][image]["id"].as_str().expect("the fixture's image ID").to_string()
}

/// The trials directory's file names, sorted.
fn trial_files(top: &Path) -> Vec<String> {
    let mut names: Vec<String> = match std::fs::read_dir(top.join("rwlayer.dockroot-trials")) {
        Ok(d) => d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

/// The variant, counted with `tries`, not blessing itself; `more` kernel parameters
/// and testinit arguments after.
fn variant_args(tries: u8, params: &str, testinit: &str) -> String {
    format!("dockroot.tries={tries} dockroot.image={VARIANT} {params} -- --no-bless {testinit}")
}

#[test]
fn a_bad_image_is_refused_after_its_tries_and_the_blessed_one_boots() {
    let m = Machine::new(OS_CONFIG);
    let (os, variant) = (fixture_id(&m, "os"), fixture_id(&m, "variant"));

    // The os image's first boot is on trial; the booted system blesses it.
    let r = m.report("trial_os_1", "dockroot.tries=2");
    assert_eq!(booted_image(&r), "os");
    let trial = &r["boot_record"]["trial"];
    assert_eq!(trial["state"], "on trial", "{trial}");
    assert_eq!(trial["tries_left"], 1, "{trial}");
    assert_eq!(r["bless"]["code"], 0, "{}", r["bless"]);
    let hex = |id: &str| id.trim_start_matches("sha256:").to_string();
    assert_eq!(m.inspect(trial_files), [format!("{}.good", hex(&os))]);
    // Blessed: not counted again.
    let r = m.report("trial_os_2", "dockroot.tries=2");
    assert_eq!(r["boot_record"]["trial"]["state"], "blessed", "{}", r["boot_record"]["trial"]);
    assert_eq!(r.get("bless"), None, "a blessed boot is not blessed again");

    // The variant never blesses itself: two tries, then it is refused.
    for (n, left) in [(1, 1), (2, 0)] {
        let r = m.report(&format!("trial_variant_{n}"), &variant_args(2, "", ""));
        assert_eq!(booted_image(&r), "variant", "try {n}");
        assert_eq!(r["boot_record"]["trial"]["tries_left"], left, "{}", r["boot_record"]["trial"]);
        assert_eq!(r["boot_record"]["fallback"], Value::Null);
    }
    assert!(m.inspect(trial_files).contains(&format!("{}+0-2", hex(&variant))));
    for n in [1, 2] {
        let status = r#"--run "/run/dockroot/dockroot status --json" --run "/run/dockroot/dockroot plan""#;
        let (r, out) = m.report_and_output(&format!("trial_refused_{n}"), &variant_args(2, "", status));
        assert_eq!(booted_image(&r), "os", "boot {n} after the tries: the blessed image");
        let rec = &r["boot_record"];
        let reason = rec["fallback"]["reason"].as_str().unwrap_or_default();
        assert_eq!(reason, format!("image {variant} is refused: failed 2 boots without being blessed"), "{rec}");
        assert_eq!(rec["fallback"]["booted"], os.as_str(), "{rec}");
        assert_eq!(rec["image"]["id"], os.as_str(), "{rec}");
        assert_eq!(rec["trial"]["state"], "refused", "{rec}");
        assert_eq!(rec["trial"]["refused"], serde_json::json!([variant]), "{rec}");
        assert!(out.contains("FALLBACK: image") && out.contains("failed 2 boots"), "{}", out.tail(30));
        // `dockroot status` in the booted system says so too.
        assert_eq!(r["runs"][0]["code"], 0, "{}", r["runs"][0]);
        let st: Value = serde_json::from_str(r["runs"][0]["stdout"].as_str().unwrap()).expect("status --json");
        assert_eq!(st["booted"]["trial"]["state"], "refused", "{st:#}");
        assert_eq!(st["booted"]["trial"]["refused"], serde_json::json!([variant]), "{st:#}");
        assert_eq!(st["booted"]["fallback"]["reason"], reason, "{st:#}");
        // And that the next boot will do the same: the one rule, read-only.
        let next = &st["next_boot"];
        assert_eq!(next["outcome"], "fallback", "{st:#}");
        assert_eq!(next["image_id"], os.as_str(), "{st:#}");
        assert_eq!(next["fallback"], reason, "{st:#}");
        assert_eq!(next["trial"]["state"], "refused", "{st:#}");
        let plan = &r["runs"][1];
        assert_eq!(plan["code"], 3, "plan exits 3 (a fallback): {plan}");
        assert!(plan["stdout"].as_str().unwrap().contains("FALLBACK: image"), "{plan}");
    }

    // dockroot.trial=retry: new tries, and the variant boots again.
    let r = m.report("trial_retry", &variant_args(2, "dockroot.trial=retry", ""));
    assert_eq!(booted_image(&r), "variant");
    assert_eq!(r["boot_record"]["trial"]["tries_left"], 1, "{}", r["boot_record"]["trial"]);
    let r = m.report("trial_retry_2", &variant_args(2, "", ""));
    assert_eq!(r["boot_record"]["trial"]["tries_left"], 0);
    // Refused again; from inside, `dockroot bless --reset` forgets the refusal.
    let r = m.report("trial_reset", &variant_args(2, "", r#"--run "/run/dockroot/dockroot bless --reset""#));
    assert_eq!(booted_image(&r), "os");
    assert_eq!(r["runs"][0]["code"], 0, "{}", r["runs"][0]);
    assert!(r["runs"][0]["stdout"].as_str().unwrap().contains("forgot the refusal of"), "{}", r["runs"][0]);
    // Counting off: nothing counted, nothing refused.
    let r = m.report("trial_off", &variant_args(0, "", ""));
    assert_eq!(booted_image(&r), "variant");
    assert_eq!(r["boot_record"]["trial"]["state"], "off", "{}", r["boot_record"]["trial"]);
    assert_eq!(m.inspect(trial_files), [format!("{}.good", hex(&os))], "the reset removed the variant's file");

    // A new trial, given up at once from inside with `dockroot bless bad`.
    let r = m.report("trial_bad", &variant_args(3, "", r#"--run "/run/dockroot/dockroot bless bad""#));
    assert_eq!(booted_image(&r), "variant");
    assert_eq!(r["runs"][0]["code"], 0, "{}", r["runs"][0]);
    let r = m.report("trial_after_bad", &variant_args(3, "", ""));
    assert_eq!(booted_image(&r), "os");
    let reason = r["boot_record"]["fallback"]["reason"].as_str().unwrap_or_default().to_string();
    assert!(reason.ends_with("is refused: dockroot bless bad"), "{reason}");
    // Another image asked for gets a trial of its own.
    let r = m.report("trial_other", "dockroot.tries=3 dockroot.image=dockroot-test/base:latest -- --no-bless");
    let rec = &r["boot_record"];
    assert_eq!(rec["image"]["id"], fixture_id(&m, "base").as_str(), "{rec}");
    assert_eq!(rec["trial"]["state"], "on trial", "{rec}");
    assert_eq!(rec["trial"]["tries_left"], 2, "{rec}");
    assert_eq!(rec["fallback"], Value::Null, "{rec}");
}

#[test]
fn a_power_cut_after_the_try_counts_it_once() {
    let m = Machine::new(OS_CONFIG);
    let variant = fixture_id(&m, "variant");
    let hex = variant.trim_start_matches("sha256:");
    // Cut right after the try was used (the line says so), a little later, and at
    // the end of the init's stage.
    for (n, ms, ready) in [(1u8, 0u64, false), (2, 100, false), (3, 0, true)] {
        let needle = match ready {
            false => format!("image {variant} is on trial: this boot is try {n} of 5"),
            true => "dockroot: ready:".to_string(),
        };
        let kill = KillAfter { needle, delay: Duration::from_millis(ms), deadline: None };
        let name = format!("trial_cut_{n}");
        let spec = BootSpec { kill_after: Some(kill), ..m.spec(&name, &variant_args(5, "", "")) };
        let out = boot(&spec);
        assert!(out.cut.is_some(), "{name}: the power was never cut:\n{}", out.tail(30));
        let left = 5 - n;
        // Mounted read-write: the filesystem's log is replayed, as the next boot does.
        assert_eq!(m.modify(trial_files), [format!("{hex}+{left}-{n}")], "{name}: counted once, never lost");
    }
    // The next boot goes on counting from there and boots.
    let r = m.report("trial_after_cuts", &variant_args(5, "", ""));
    assert_eq!(booted_image(&r), "variant");
    assert_eq!(r["boot_record"]["trial"]["tries_left"], 1, "{}", r["boot_record"]["trial"]);
}
