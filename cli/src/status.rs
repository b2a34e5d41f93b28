//! `dockroot status`: what runs (the boot record the init left), what the next
//! boot will do (the plan: the same facts and rule as the boot), the kept
//! roots and the kernel, for a person or (`--json`) a script.
//!
//! The JSON (schema version 1, `"dockroot_status": 1`; fields are only ever
//! added within a version):
//!
//! ```text
//! { "dockroot_status": 1,
//!   "booted": null | { "dockroot", "booted", "image": null | { "reference", "id", "store", "driver" },
//!                      "image_source", "rw_layer", "rw_layer_kind", "fallback": null | { "reason", "booted" },
//!                      "warnings": [..],
//!                      "trial": null | { "image", "state": "off" | "blessed" | "on trial" | "refused",
//!                                        "tries_left": null | n, "refused": [ids], "blessed": [ids],
//!                                        "last_blessed": null | { "image", "kept": null | name } } },
//!   "kernel": null | { "release", "modules": bool },
//!   "rw_layer": "/rwlayer", "rw_layer_exists": bool,
//!   "kept": [ { "name", "path", "created", "image", "has_init": bool, "why_not": null | str } ],
//!   "next_boot": { "image", "image_source", "image_id": null | str, "image_error": null | str,
//!                  "action": "fresh" | "current" | "copy" | "fail", "copy_of": null | str,
//!                  "fallback": null | str, "fail": null | str, "update_pending": null | bool,
//!                  "switch": null | { "image", "set", "kept" }, "once": null | { "image", "set", "kept" },
//!                  "trial": null | { as booted.trial, as the next boot would find it },
//!                  "outcome": "as-asked" | "fallback" | "fail" } }
//! ```

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::args::{self, Own};
use crate::partition::{self, Where};
use dockroot::config::{self, Embedded, Params};
use dockroot::nextboot::Selection;
use dockroot::plan::{self, Outcome, Plan};
use dockroot::policy::{Bootable, Decision};
use dockroot::record::{BOOT_RECORD, CONFIG};
use dockroot::{Context, Result};

/// The schema version of `--json`.
pub const SCHEMA: u64 = 1;

const USAGE: &str = "usage: dockroot status [--json] [OPTIONS]

What runs and what the next boot will do: the image that booted (from the boot record
the init left, /run/dockroot/boot.json), the kernel and whether the image has its
modules, the rw layer and the kept roots (each looked into for an init), and the next
boot as the init would decide it now: the same image, an update (the reference now
names another image), a dockroot switch choice, a fallback or a failure. It only reads;
a device is mounted read-only for the run.

  --json           the same as JSON (schema version 1, documented in the README)
  --config FILE    the initramfs's embedded config (default: /run/dockroot/config.json,
                   which the init leaves)
  --record FILE    the boot record (default: /run/dockroot/boot.json)
PARTITION_OPTIONS
  --help           this text

exit status:
  0  shown (whatever the next boot will do: see next_boot.outcome)
  1  it could not look (the partition, the command line, the embedded config)
  2  usage error";

fn usage() -> String {
    USAGE.replace("PARTITION_OPTIONS", partition::OPTIONS_HELP)
}

#[derive(Debug, Default)]
struct Args {
    json: bool,
    config: Option<PathBuf>,
    record: Option<PathBuf>,
    at: Where,
    cmdline: Option<String>,
}

fn parse(argv: Vec<OsString>) -> std::result::Result<Option<Args>, String> {
    let mut a = Args::default();
    let run = args::parse(argv, &mut a.at, &mut a.cmdline, |arg, p| {
        let path = |p: &mut lexopt::Parser| p.value().map(PathBuf::from).map_err(|e| e.to_string());
        match arg {
            Own::Long(n) if n == "json" => a.json = true,
            Own::Long(n) if n == "config" => a.config = Some(path(p)?),
            Own::Long(n) if n == "record" => a.record = Some(path(p)?),
            other => return Err(other.unexpected()),
        }
        Ok(())
    })?;
    Ok(run.then_some(a))
}

/// `dockroot status`: returns the exit status.
pub fn run(argv: Vec<OsString>) -> u8 {
    let a = match args::arguments("status", &usage(), parse(argv)) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let shown = status(&a).map(|v| if a.json { format!("{v:#}") } else { human(&v).trim_end().to_string() });
    args::finish("status", shown)
}

fn status(a: &Args) -> Result<Value> {
    let cmdline = partition::cmdline(&a.cmdline)?;
    let root = Params::from_cmdline(&cmdline)?.root.unwrap_or_default();
    let config = read_config(a.config.as_deref())?;
    let record_path = a.record.clone().unwrap_or_else(|| PathBuf::from(BOOT_RECORD));
    let record = read_record(&record_path)?;
    let planned = partition::with_top(&a.at, &root, false, |top, device| {
        let input =
            plan::PlanInput { top, cmdline: &cmdline, config, toplayer_dir: None, device, toplayer_device: None };
        plan::describe(&input)
    })?;
    // The running kernel matters only for the machine that runs this.
    let kernel = match (&a.at, &a.cmdline) {
        (Where::FromCmdline, None) => Some(kernel()),
        _ => None,
    };
    Ok(to_json(record.as_ref(), kernel, &planned))
}

/// The embedded config: `--config`, else the copy the init left, else none.
fn read_config(given: Option<&Path>) -> Result<Option<Embedded>> {
    match given {
        Some(f) => Ok(Some(config::read_embedded(f)?.context(|| format!("--config {}: no such file", f.display()))?)),
        None => config::read_embedded(Path::new(CONFIG)),
    }
}

/// The boot record, if there is one (a host has none).
fn read_record(path: &Path) -> Result<Option<Value>> {
    match std::fs::read(path) {
        Ok(bytes) if bytes.len() <= 1 << 20 => {
            let v =
                serde_json::from_slice(&bytes).map_err(|e| dockroot::Error::msg(format!("{}: {e}", path.display())))?;
            Ok(Some(v))
        }
        Ok(_) => Err(dockroot::Error::msg(format!("{}: larger than 1 MiB", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(dockroot::Error::with(format!("reading {}", path.display()), e)),
    }
}

/// The running kernel's release and whether the booted system has its modules.
fn kernel() -> Value {
    let uname = rustix::system::uname();
    let release = uname.release().to_string_lossy().into_owned();
    let modules = ["/usr/lib/modules", "/lib/modules"].iter().any(|d| Path::new(d).join(&release).is_dir());
    json!({ "release": release, "modules": modules })
}

fn selection(s: &Option<Selection>) -> Value {
    s.as_ref().map_or(Value::Null, |s| json!({ "image": s.image, "set": s.set, "kept": s.kept }))
}

/// The status as JSON (the schema in the module's doc).
fn to_json(record: Option<&Value>, kernel: Option<Value>, p: &Plan) -> Value {
    let booted = record.map(|r| {
        let image = match &r["image"] {
            Value::Object(i) => json!({
                "reference": i.get("reference"), "id": i.get("id"), "store": i.get("store"), "driver": i.get("driver"),
            }),
            _ => Value::Null,
        };
        json!({
            "dockroot": r["dockroot"], "booted": r["booted"], "image": image, "image_source": r["image_source"],
            "rw_layer": r["rw_layer"], "rw_layer_kind": r["rw_layer_kind"], "fallback": r["fallback"],
            "warnings": r["warnings"], "trial": r["trial"],
        })
    });
    let booted_id = record.and_then(|r| r["image"]["id"].as_str());
    let next_id = p.resolved.as_ref().map(|r| r.image_id.as_str());
    let (action, copy_of, fallback, fail) = match &p.decision {
        Decision::Fresh { .. } => ("fresh", None, None, None),
        Decision::Current { fallback } => ("current", None, fallback.clone(), None),
        Decision::CopyKept { shown, fallback, .. } => ("copy", Some(shown.clone()), fallback.clone(), None),
        Decision::Fail(why) => ("fail", None, None, Some(why.clone())),
        Decision::Check(_) => ("fail", None, None, Some("the policy did not decide (a bug in dockroot)".into())),
    };
    // An update is pending when a fresh root would be made of another image than the one that runs.
    let update_pending = match (action, booted_id, next_id) {
        ("fresh", Some(b), Some(n)) => Some(b != n),
        _ => None,
    };
    let kept: Vec<Value> = p
        .kept
        .iter()
        .map(|k| {
            let (created, image) = k.name.split_once('-').unwrap_or((&k.name, ""));
            let why_not = match &k.bootable {
                Bootable::No(why) => Some(why.clone()),
                _ => None,
            };
            json!({
                "name": k.name, "path": k.shown, "created": created, "image": image,
                "has_init": k.bootable == Bootable::Yes, "why_not": why_not,
            })
        })
        .collect();
    let outcome = match p.outcome() {
        Outcome::AsAsked => "as-asked",
        Outcome::Fallback => "fallback",
        Outcome::Fail => "fail",
    };
    json!({
        "dockroot_status": SCHEMA,
        "booted": booted,
        "kernel": kernel,
        "rw_layer": p.rw_shown,
        "rw_layer_exists": p.rw_exists,
        "kept": kept,
        "next_boot": {
            "image": p.image.to_string(),
            "image_source": p.image_source.name(),
            "image_id": next_id,
            "image_error": p.refusal,
            "action": action,
            "copy_of": copy_of,
            "fallback": fallback.or(p.trial_fallback.clone()),
            "fail": fail,
            "trial": p.trial,
            "update_pending": update_pending,
            "switch": selection(&p.next.as_ref().and_then(|n| n.switch.clone())),
            "once": selection(&p.next.as_ref().and_then(|n| n.once.clone())),
            "outcome": outcome,
        },
    })
}

/// The status for a person, from the JSON (so both say the same).
fn human(v: &Value) -> String {
    let s = |v: &Value| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
    let short = |id: &Value| s(id).trim_start_matches("sha256:").chars().take(12).collect::<String>();
    let mut out = Vec::new();
    let b = &v["booted"];
    if b.is_null() {
        out.push(
            "booted: no boot record here (not a machine dockroot booted, or /run/dockroot/boot.json is gone)".into(),
        );
    } else {
        let image = match &b["image"] {
            Value::Null => "no image recorded (a root of an earlier boot)".to_string(),
            i => format!("{} ({}) from {}", s(&i["reference"]), short(&i["id"]), s(&i["store"])),
        };
        let (booted, rw, kind) = (s(&b["booted"]), s(&b["rw_layer"]), s(&b["rw_layer_kind"]));
        out.push(match booted.as_str() {
            "fresh" | "persist" => format!("booted: {image}; {booted} root {rw} ({kind})"),
            _ => format!("booted: {image}; root {rw} ({kind}): {booted}"),
        });
        if !b["image_source"].is_null() {
            out.push(format!("  image chosen by {}", s(&b["image_source"])));
        }
        if let Some(reason) = b["fallback"]["reason"].as_str() {
            out.push(format!("  FALLBACK at this boot: {reason}"));
        }
        trial_lines(&b["trial"], "this boot", &mut out);
        out.push(format!("  by dockroot {}", s(&b["dockroot"])));
    }
    if let Value::Object(k) = &v["kernel"] {
        let release = k.get("release").map(s).unwrap_or_default();
        out.push(match k.get("modules") {
            Some(Value::Bool(true)) => format!("kernel: {release}, its modules are in the booted image"),
            _ => format!("kernel: {release}: WARNING: the booted image has no /lib/modules/{release}"),
        });
    }
    let n = &v["next_boot"];
    let image = format!("{} (from {})", s(&n["image"]), s(&n["image_source"]));
    out.push(match (s(&n["action"]).as_str(), &n["update_pending"]) {
        ("fresh", Value::Bool(true)) => format!(
            "next boot: update pending: {image} now resolves to {}, not the booted {}; a fresh root of it",
            short(&n["image_id"]),
            short(&b["image"]["id"])
        ),
        ("fresh", Value::Bool(false)) => format!("next boot: the same image again, fresh: {image}"),
        ("fresh", _) => format!("next boot: a fresh root of {image} ({})", short(&n["image_id"])),
        ("current", _) => format!("next boot: {} as it is", s(&v["rw_layer"])),
        ("copy", _) => format!("next boot: a writable copy of {}", s(&n["copy_of"])),
        _ => format!("next boot: FAILS: {}", s(&n["fail"])),
    });
    if let Some(f) = n["fallback"].as_str() {
        out.push(format!("  FALLBACK: {f}"));
    }
    // The reason for a fallback is most often why the image cannot boot: said once.
    if let Some(e) = n["image_error"].as_str().filter(|e| n["fallback"].as_str() != Some(e)) {
        out.push(format!("  the image cannot boot: {e}"));
    }
    for key in ["once", "switch"] {
        if let Value::Object(c) = &n[key] {
            let how = match (key, c.get("kept").and_then(Value::as_str)) {
                ("once", _) => "dockroot switch --once".to_string(),
                (_, Some(k)) => format!("dockroot rollback (else a copy of kept root {k})"),
                _ => "dockroot switch".to_string(),
            };
            let image = c.get("image").map(s).unwrap_or_default();
            let set = c.get("set").map(s).unwrap_or_default();
            out.push(format!("  chosen with {how}: {image} (at {set})"));
        }
    }
    trial_lines(&n["trial"], "the next boot", &mut out);
    let kept = v["kept"].as_array().cloned().unwrap_or_default();
    out.push(format!("kept roots: {}", if kept.is_empty() { "none".to_string() } else { kept.len().to_string() }));
    for k in &kept {
        let init = match &k["why_not"] {
            Value::Null => "has an init".to_string(),
            why => format!("cannot boot: {}", s(why)),
        };
        out.push(format!("  {} (image {}, created {}): {init}", s(&k["path"]), s(&k["image"]), s(&k["created"])));
    }
    out.join("\n") + "\n"
}

/// Boot counting as boot.json's (or the plan's) `"trial"` says it, at `when`.
fn trial_lines(t: &Value, when: &str, out: &mut Vec<String>) {
    let Some(state) = t["state"].as_str() else { return };
    let left = t["tries_left"].as_u64().map(|n| format!(", {n} tries left")).unwrap_or_default();
    out.push(format!("  boot counting at {when}: {state}{left}"));
    if state == "off" {
        return;
    }
    let ids = |k: &str| {
        let a = t[k].as_array().map(Vec::as_slice).unwrap_or_default();
        a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", ")
    };
    let refused = ids("refused");
    if !refused.is_empty() {
        out.push(format!("  refused images: {refused}"));
    }
    let last = &t["last_blessed"];
    out.push(match (last["image"].as_str(), last["kept"].as_str()) {
        (None, _) => "  last blessed root: none (nothing to go back to)".to_string(),
        (Some(i), None) => format!("  last blessed root: image {i}, fresh from the store"),
        (Some(i), Some(k)) => {
            format!("  last blessed root: image {i}, fresh from the store, else a copy of kept root {k}")
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<OsString> {
        s.split_whitespace().map(OsString::from).collect()
    }

    #[test]
    fn parses_its_options() {
        let a = parse(args("--json --device /dev/vda2 --config c.json --record r.json")).unwrap().unwrap();
        assert!(a.json);
        assert_eq!(a.at, Where::Device(PathBuf::from("/dev/vda2")));
        assert_eq!((a.config.unwrap(), a.record.unwrap()), (PathBuf::from("c.json"), PathBuf::from("r.json")));
        assert!(matches!(parse(args("--help")), Ok(None)));
        assert!(parse(args("--frob")).err().unwrap_or_default().contains("--frob"));
        assert!(parse(args("extra")).err().unwrap_or_default().contains("extra"));
    }

    #[test]
    fn says_an_update_is_pending_and_what_was_chosen() {
        let v = json!({
            "booted": {"dockroot": "0.1.0", "booted": "fresh", "rw_layer": "/rw", "rw_layer_kind": "subvolume",
                "image": {"reference": "os:1", "id": "sha256:aaaaaaaaaaaa1111", "store": "Docker (btrfs) at /d", "driver": "btrfs"},
                "image_source": "the embedded config", "fallback": null},
            "kernel": {"release": "6.1.0", "modules": false},
            "rw_layer": "/rw",
            "kept": [{"name": "20261204T053000Z-aaaaaaaaaaaa", "path": "/rw.kept/20261204T053000Z-aaaaaaaaaaaa",
                "created": "20261204T053000Z", "image": "aaaaaaaaaaaa", "has_init": false, "why_not": "no init"}],
            "next_boot": {"image": "os:1", "image_source": "dockroot switch", "image_id": "sha256:bbbbbbbbbbbb2222",
                "action": "fresh", "update_pending": true, "fallback": null, "image_error": null,
                "switch": {"image": "os:1", "set": "20261204T060000Z"}, "once": null},
        });
        let h = human(&v);
        assert!(h.contains("booted: os:1 (aaaaaaaaaaaa) from Docker (btrfs) at /d; fresh root /rw (subvolume)"), "{h}");
        assert!(h.contains("kernel: 6.1.0: WARNING: the booted image has no /lib/modules/6.1.0"), "{h}");
        let pending = "next boot: update pending: os:1 (from dockroot switch) now resolves to bbbbbbbbbbbb, \
                       not the booted aaaaaaaaaaaa; a fresh root of it";
        assert!(h.contains(pending), "{h}");
        assert!(h.contains("  chosen with dockroot switch: os:1 (at 20261204T060000Z)"), "{h}");
        assert!(h.contains("/rw.kept/20261204T053000Z-aaaaaaaaaaaa (image aaaaaaaaaaaa, created 20261204T053000Z): cannot boot: no init"), "{h}");
        let fallback = human(&json!({
            "booted": {"dockroot": "0.1.0", "booted": "fallback: /rw as it was", "rw_layer": "/rw",
                "rw_layer_kind": "subvolume", "image": null, "image_source": "the embedded config",
                "fallback": {"reason": "no image os:2", "booted": "/rw as it was"}},
            "rw_layer": "/rw",
            "next_boot": {"image": "os:2", "image_source": "the embedded config", "image_id": null,
                "action": "current", "fallback": "no image os:2", "image_error": "no image os:2"},
        }));
        let said =
            "booted: no image recorded (a root of an earlier boot); root /rw (subvolume): fallback: /rw as it was\n\
                    \x20 image chosen by the embedded config\n  FALLBACK at this boot: no image os:2\n";
        assert!(fallback.starts_with(said), "{fallback}");
        assert!(
            fallback.contains("next boot: /rw as it is\n  FALLBACK: no image os:2\nkept roots: none"),
            "{fallback}"
        );
        let none = human(&json!({"booted": null, "next_boot": {"action": "fail", "fail": "no root"}}));
        assert!(none.starts_with("booted: no boot record here"), "{none}");
        assert!(none.contains("next boot: FAILS: no root"), "{none}");
    }

    #[test]
    fn says_the_trial_refusals_and_the_last_blessed_root() {
        let v = json!({
            "booted": {"booted": "fresh", "rw_layer": "/rw", "rw_layer_kind": "subvolume", "image": null,
                "trial": {"image": "sha256:bb", "state": "on trial", "tries_left": 1, "refused": [], "blessed": ["sha256:aa"],
                    "last_blessed": {"image": "sha256:aa", "kept": null}}},
            "next_boot": {"image": "os:2", "image_source": "x", "action": "fresh",
                "trial": {"image": "sha256:bb", "state": "refused", "tries_left": null, "refused": ["sha256:bb", "sha256:cc"],
                    "blessed": ["sha256:aa"], "last_blessed": {"image": "sha256:aa", "kept": "20261204T053000Z-aaaaaaaaaaaa"}}},
        });
        let h = human(&v);
        let booted = "  boot counting at this boot: on trial, 1 tries left
  last blessed root: image sha256:aa, fresh from the store
";
        assert!(h.contains(booted), "{h}");
        let next = "  boot counting at the next boot: refused
  refused images: sha256:bb, sha256:cc
  \
                    last blessed root: image sha256:aa, fresh from the store, else a copy of kept root 20261204T053000Z-aaaaaaaaaaaa
";
        assert!(h.contains(next), "{h}");
        let mut lines = Vec::new();
        trial_lines(&json!({"state": "on trial", "tries_left": 3, "last_blessed": null}), "this boot", &mut lines);
        assert_eq!(
            lines,
            [
                "  boot counting at this boot: on trial, 3 tries left",
                "  last blessed root: none (nothing to go back to)"
            ]
        );
        lines.clear();
        trial_lines(&json!({"state": "off"}), "this boot", &mut lines);
        assert_eq!(lines, ["  boot counting at this boot: off"]);
        trial_lines(&Value::Null, "this boot", &mut lines);
        assert_eq!(lines.len(), 1, "no trial: nothing said");
    }
}
