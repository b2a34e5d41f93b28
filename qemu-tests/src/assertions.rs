//! Assertions on what a boot printed and what the booted system reported (testinit's
//! report, `/run/dockroot/boot.json`), and on the roots found on the disk afterwards.
//! All pure: they look at strings, JSON and digests, never at a VM or a disk.

use serde_json::Value;

use crate::{digest_created, digest_diff, BootOutput};

/// Looks up a report field by a path of keys, e.g. `field(&r, &["paths", "/etc/hostname", "content"])`.
pub fn field<'a>(report: &'a Value, keys: &[&str]) -> &'a Value {
    keys.iter().fold(report, |v, k| v.get(*k).unwrap_or(&Value::Null))
}

/// A recovery boot's record (`recovered` in boot.json) must say each text whose
/// condition holds and none of the others; `what` starts every message.
pub fn assert_recovery_steps(what: &str, rec: &Value, steps: &[(bool, String)]) {
    let recovered = rec["recovered"].to_string();
    for (cond, text) in steps {
        assert_eq!(
            recovered.contains(text.as_str()),
            *cond,
            "{what}: recovered should {}say {text:?}: {rec}",
            if *cond { "" } else { "not " }
        );
    }
}

/// After power cuts and the recovery boot, the kept roots must be the newest `keep`
/// of: the roots kept before the cut boots (`kept_before`, those the policy was not
/// midway deleting), the root that was current before them (`previous`), and the cut
/// boots' own roots that were complete at a final name (`cut_roots`: made before the
/// cut retired their predecessor); each named by its creation stamp and byte-identical.
/// `now` maps the kept roots' names to their digests. `what` starts every message.
pub fn assert_kept_after_recovery(
    what: &str,
    now: &std::collections::BTreeMap<String, &std::collections::BTreeMap<String, String>>,
    kept_before: &[&std::collections::BTreeMap<String, String>],
    previous: &std::collections::BTreeMap<String, String>,
    cut_roots: &[&std::collections::BTreeMap<String, String>],
    keep: usize,
) {
    let mut candidates: Vec<(String, &std::collections::BTreeMap<String, String>, &str)> =
        kept_before.iter().map(|d| (format!("{}-", digest_created(d)), *d, "kept")).collect();
    candidates.push((format!("{}-", digest_created(previous)), previous, "previous rw layer"));
    for r in cut_roots {
        candidates.push((format!("{}-", digest_created(r)), *r, "a cut boot's root"));
    }
    candidates.sort_by(|a, b| a.0.cmp(&b.0));
    let expected = &candidates[candidates.len().saturating_sub(keep)..];
    let names: Vec<&String> = now.keys().collect();
    assert_eq!(now.len(), expected.len(), "{what}: kept {names:?}");
    for ((name, root), (prefix, want, which)) in now.iter().zip(expected) {
        assert!(name.starts_with(prefix.as_str()), "{what}: kept {names:?}, expected {which} {prefix}*");
        assert_same_digest(&format!("{what}: kept root {name} ({which})"), want, root);
    }
}

/// Panics, listing the differences, unless two [`tree_digest`]s are equal.
pub fn assert_same_digest(
    what: &str,
    before: &std::collections::BTreeMap<String, String>,
    after: &std::collections::BTreeMap<String, String>,
) {
    let diff = digest_diff(before, after, 40);
    assert!(diff.is_empty(), "{what} changed:\n{}", diff.join("\n"));
}

/// The fatal part of a failed boot, booted with `dockroot.reboot_delay=1`: from
/// dockroot's "cannot boot" line to its reboot notice. Asserts the boot ended in that
/// message and a reboot (QEMU exits because of -no-reboot), never a hang, a kernel
/// panic or the image's init.
pub fn assert_fatal_boot(out: &BootOutput) -> String {
    assert!(!out.timed_out, "the init hung instead of rebooting:\n{}", out.tail(40));
    assert!(out.testinit().is_none(), "the image's init ran although dockroot should have refused");
    assert!(!out.contains("Kernel panic"), "kernel panic instead of a clean reboot:\n{}", out.tail(40));
    let lines: Vec<&str> = out.serial.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.contains("dockroot: ERROR: cannot boot: "))
        .unwrap_or_else(|| panic!("no 'cannot boot' message:\n{}", out.tail(40)));
    let end = lines
        .iter()
        .skip(start)
        .position(|l| l.contains("dockroot: ERROR: rebooting in 1 s"))
        .map(|n| start + n)
        .unwrap_or_else(|| panic!("no reboot notice after the error:\n{}", out.tail(40)));
    assert!(out.contains("reboot: Restarting system"), "the kernel did not restart:\n{}", out.tail(20));
    lines.get(start..end).unwrap_or_default().join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_walks_nested_keys() {
        let v: Value = serde_json::json!({"paths": {"/a": {"mode": "0600"}}});
        assert_eq!(field(&v, &["paths", "/a", "mode"]), "0600");
        assert!(field(&v, &["paths", "/b", "mode"]).is_null());
    }
}
