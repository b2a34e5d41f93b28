//! The power-cut engine of the crash tests, for both kinds of root ([`RootKind`]):
//! cut the power during a boot ([`CutEngine::cut`]), check what the cut left on the
//! disk, cut again during the next boot if a test likes (each cut is checked against
//! the disk the boot it cut started from), then boot to the end
//! ([`CutEngine::recover`]) and check the recovery against the disk before the first
//! cut: the boot record says what was recovered, the booted root is the right one,
//! the disk outside the rw layer is byte-identical, no leftovers, and the kept roots
//! are exactly the newest `dockroot.keep=` of every complete root the chain of boots
//! made or found, byte-identical.
//!
//! Boots come in two modes ([`Mode`]): fresh roots of the image, or
//! `dockroot.boot=previous` copies of the newest kept root. The checks are pure
//! comparisons of [`DiskState`]s; booting and reading the disk go through [`Machine`].

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use super::roots::{Digest, DiskState, Root, RootKind};
use crate::{
    assert_kept_after_recovery, assert_recovery_steps, assert_same_digest, boot, BootOutput, BootSpec, CutAt,
    KillAfter, Machine, PowerCut,
};

/// What every boot of the engine makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// A fresh root of the image (the default boot).
    Fresh,
    /// `dockroot.boot=previous`: a copy of the newest kept root.
    Previous,
}

/// What a power cut left behind (the layout of the rw layer's names), relative to the
/// disk the cut boot started from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Left {
    /// The old root at its name, nothing else.
    Nothing,
    /// The old root and an overlay skeleton (NAME.dockroot-skel).
    Skeleton,
    /// The old root and a half-built NAME.dockroot-tmp.
    TmpOnly,
    /// The old root and a complete NAME.dockroot-ready.
    ReadyAndCurrent,
    /// No root at NAME, a complete one at NAME.dockroot-ready (the new root, the old
    /// one retired; or the old one still waiting to be installed after an earlier cut).
    ReadyWithoutCurrent,
    /// The new root installed at NAME.
    Installed,
}

/// One cut and what it left.
#[derive(Debug)]
pub struct CutDone {
    pub at: CutAt,
    pub kill: KillAfter,
    pub out: BootOutput,
    pub power_cut: PowerCut,
    pub left: Left,
    /// Kept roots the cut boot was midway deleting (btrfs: a pruned root with nested
    /// subvolumes goes in several commits).
    pub half_pruned: Vec<String>,
    /// Kept roots left writable (btrfs: pruning makes one writable to delete its
    /// nested subvolumes).
    pub writable: Vec<String>,
    /// The disk after the cut.
    pub state: DiskState,
}

/// The boot that ran to the end after cuts.
#[derive(Debug)]
pub struct Recovered {
    /// testinit's report.
    pub report: Value,
    pub out: BootOutput,
    /// What the last cut left (Nothing if there was no cut).
    pub from: Left,
}

/// Cuts and recoveries on one machine (see the module doc).
#[derive(Debug)]
pub struct CutEngine<'a> {
    pub kind: RootKind,
    pub machine: &'a Machine,
    /// `dockroot.keep=` on the machine's command line.
    pub keep: usize,
    pub mode: Mode,
    /// The content of every complete fresh root of the image ([`Root::content`]).
    pub fresh: Digest,
    /// The disk before the next boot.
    pub state: DiskState,
    /// The last boot that ran to the end: the next cut is timed from it.
    pub reference: BootOutput,
    /// The disk after that boot.
    clean: DiskState,
    /// Every complete root the boots since then made or found, by creation stamp.
    candidates: BTreeMap<String, Digest>,
    /// Kept roots the cuts since then left half-deleted.
    half_pruned: Vec<String>,
    /// What the last cut left.
    last: Left,
}

impl<'a> CutEngine<'a> {
    /// An engine on `machine`, whose disk must have a current root; cuts are timed from
    /// `reference`, the last boot of the machine.
    pub fn new(kind: RootKind, machine: &'a Machine, keep: usize, fresh: Digest, reference: BootOutput) -> Self {
        let state = machine.inspect(|top| DiskState::read(kind, top));
        assert!(state.current.is_some(), "no current root to cut the power over");
        let mut e = CutEngine {
            kind,
            machine,
            keep,
            mode: Mode::Fresh,
            fresh,
            clean: state.clone(),
            state,
            reference,
            candidates: BTreeMap::new(),
            half_pruned: Vec::new(),
            last: Left::Nothing,
        };
        e.settle_on(e.state.clone());
        e
    }

    /// Reads the disk.
    pub fn read(&self) -> DiskState {
        self.machine.inspect(|top| DiskState::read(self.kind, top))
    }

    /// Runs `f` with the disk mounted read-write (to mark the current root, say), then
    /// takes the disk as it is as the start of the next cut.
    pub fn modify<T>(&mut self, f: impl FnOnce(&Path) -> T) -> T {
        let kind = self.kind;
        let (r, state) = self.machine.modify(|top| {
            let r = f(top);
            (r, DiskState::read(kind, top))
        });
        self.settle_on(state);
        r
    }

    fn settle_on(&mut self, state: DiskState) {
        self.candidates =
            state.kept.values().chain(state.current.as_ref()).map(|r| (r.created(), r.digest.clone())).collect();
        self.half_pruned.clear();
        self.last = Left::Nothing;
        self.clean = state.clone();
        self.state = state;
    }

    /// The command line of the engine's boots after the machine's.
    fn args(&self, extra: &str) -> String {
        match self.mode {
            Mode::Fresh => extra.to_string(),
            Mode::Previous => format!("dockroot.boot=previous {extra}").trim_end().to_string(),
        }
    }

    /// What a complete new root made from `from` must hold, and how a root is compared
    /// with it: a fresh root's content, or the files of the kept root a previous boot copies.
    fn expected_new(&self, from: &DiskState) -> (Digest, fn(&Root) -> Digest) {
        match self.mode {
            Mode::Fresh => (self.fresh.clone(), Root::content),
            Mode::Previous => {
                let (_, src) = from.newest_kept().expect("dockroot.boot=previous with no kept root");
                (src.copied(), Root::copied)
            }
        }
    }

    /// Boots with the power cut at `at` (timed from [`CutEngine::reference`]), named
    /// `name`, and checks what the cut left: the disk outside the rw layer unchanged,
    /// never a root-less disk nor a half-built root at a final name, the root the boot
    /// started from intact at its name (or retired into the kept roots), the kept roots
    /// intact but for the oldest the policy was entitled to delete, nothing in the
    /// trash but roots the boot could discard.
    pub fn cut(&mut self, name: &str, at: CutAt) -> CutDone {
        let kill = at.kill(&self.reference);
        let out = boot(&BootSpec { kill_after: Some(kill.clone()), ..self.machine.spec(name, &self.args("")) });
        // Every point cuts the power while the init is at work (before it hands over).
        let power_cut = out.expect_cut_during_init().clone();
        let cut = self.read();
        let prev = &self.state;
        let old = prev.effective_current().expect("a current root before every cut");
        let (expected, shape) = self.expected_new(prev);

        assert_same_digest(&format!("{name}: the disk outside the rw layer"), &prev.outside, &cut.outside);
        let current_is_old = cut.current.as_ref().is_some_and(|c| c.created() == old.created());
        let ready_is_old = cut.current.is_none() && cut.ready.as_ref().is_some_and(|r| r.created() == old.created());
        let left = match (&cut.current, current_is_old, cut.tmp, &cut.ready) {
            (Some(_), true, false, None) if cut.skel => Left::Skeleton,
            (Some(_), true, false, None) => Left::Nothing,
            (Some(_), true, true, None) => Left::TmpOnly,
            (Some(_), true, _, Some(_)) => Left::ReadyAndCurrent,
            (None, _, _, Some(_)) => Left::ReadyWithoutCurrent,
            (Some(_), false, false, None) => Left::Installed,
            _ => panic!(
                "{name} ({at:?}): unexpected state: current {:?} (old: {current_is_old}), tmp {}, ready {}, skel {}",
                cut.current.as_ref().map(Root::created),
                cut.tmp,
                cut.ready.is_some(),
                cut.skel
            ),
        };
        if let Some(c) = &cut.current {
            if current_is_old {
                assert_same_digest(&format!("{name}: the old rw layer"), &old.digest, &c.digest);
            } else {
                assert_same_digest(&format!("{name}: the new rw layer (half-built?)"), &expected, &shape(c));
            }
        }
        if let Some(r) = &cut.ready {
            if ready_is_old {
                assert_same_digest(&format!("{name}: the old root, still ready"), &old.digest, &r.digest);
            } else {
                assert_same_digest(&format!("{name}: the ready root (half-built?)"), &expected, &shape(r));
            }
        }
        // The old root is at its name (or still ready to be installed) or kept, intact.
        let old_kept = cut.kept.values().filter(|k| k.digest == old.digest).count();
        assert!(current_is_old || ready_is_old || old_kept == 1, "{name}: the previous root is lost ({left:?})");
        // Kept roots are intact, except the oldest ones the policy was deleting.
        let mut before: Vec<String> = prev.kept.keys().cloned().chain([format!("{}-", old.created())]).collect();
        before.sort();
        let due = before.len().saturating_sub(self.keep);
        let mut half_pruned = Vec::new();
        for (idx, (kept, r)) in prev.kept.iter().enumerate() {
            match cut.kept.get(kept) {
                // btrfs deletes a root with nested subvolumes in several commits.
                Some(k) if self.kind == RootKind::Btrfs && idx < due && k.digest != r.digest => {
                    half_pruned.push(kept.clone())
                }
                Some(k) => assert_same_digest(&format!("{name}: kept root {kept}"), &r.digest, &k.digest),
                None => assert!(idx < due, "{name}: kept root {kept} vanished but was not due for pruning"),
            }
        }
        for t in &cut.trash {
            assert!(
                prev.trash.contains(t) || trash_entry_of(t, prev),
                "{name}: the trash holds {t}, which is no root the cut boot could discard"
            );
        }
        let writable: Vec<String> =
            cut.kept.iter().filter(|(_, k)| k.readonly == Some(false)).map(|(n, _)| n.clone()).collect();

        if let Some(r) = cut.effective_current() {
            self.candidates.entry(r.created()).or_insert_with(|| r.digest.clone());
        }
        self.half_pruned.extend(half_pruned.iter().cloned());
        self.last = left;
        self.state = cut.clone();
        CutDone { at, kill, out, power_cut, left, half_pruned, writable, state: cut }
    }

    /// Boots to the end (named `name`, `extra` after the engine's arguments) and checks
    /// the recovery from what the last cut left: booted the right root (fresh, or a copy
    /// of the newest kept root), no warnings, exactly the recovery steps the leftovers
    /// call for, the disk outside the rw layer unchanged since the last boot that ran to
    /// the end, no leftovers, the kept roots the newest `keep` of every complete root
    /// since, all read-only (btrfs), and the root the boot started from retired. With
    /// no `extra`, the new root must also be complete (the image's content, or the copied
    /// root's files). Becomes the reference of the next cut.
    pub fn recover(&mut self, name: &str, extra: &str) -> Recovered {
        let prev = self.state.clone();
        let from = self.last;
        let (report, out) = self.machine.report_and_output(name, &self.args(extra));
        let rec = &report["boot_record"];
        let source = match self.mode {
            Mode::Fresh => {
                assert_eq!(rec["booted"], "fresh", "{name}: {rec}");
                None
            }
            Mode::Previous => {
                let (src, root) = prev.newest_kept().expect("dockroot.boot=previous with no kept root");
                assert_eq!(rec["booted"], format!("previous: /rwlayer.kept/{src}").as_str(), "{name}: {rec}");
                Some(root.clone())
            }
        };
        assert_eq!(rec["warnings"], serde_json::json!([]), "{name}: {rec}");
        let mut steps = vec![
            (from == Left::Skeleton, "deleted the overlay skeleton /rwlayer.dockroot-skel".to_string()),
            (from == Left::TmpOnly, "deleted the half-built /rwlayer.dockroot-tmp".to_string()),
            (from == Left::ReadyAndCurrent, "deleted the uninstalled /rwlayer.dockroot-ready".to_string()),
            (from == Left::ReadyWithoutCurrent, "installed /rwlayer.dockroot-ready".to_string()),
        ];
        let writable = prev.kept.iter().filter(|(_, k)| k.readonly == Some(false));
        steps.extend(writable.map(|(w, _)| (true, format!("made kept root {w} read-only"))));
        assert_recovery_steps(&format!("{name} (after {from:?})"), rec, &steps);

        let now = self.read();
        assert_same_digest(&format!("{name}: the disk outside the rw layer"), &self.clean.outside, &now.outside);
        assert!(now.leftovers().is_empty(), "{name}: leftovers after a successful boot: {:?}", now.leftovers());
        let cur = now.current.as_ref().unwrap_or_else(|| panic!("{name}: no rw layer after the boot"));
        if extra.is_empty() {
            match &source {
                None => assert_same_digest(&format!("{name}: the new root"), &self.fresh, &cur.content()),
                Some(src) => {
                    assert_same_digest(&format!("{name}: the copy of the kept root"), &src.copied(), &cur.copied())
                }
            }
        }
        // Kept: the newest `keep` of every complete root since (but those left half-deleted).
        let old = prev.effective_current().expect("a root before the boot");
        let clean_old = self.clean.current.as_ref().expect("a current root after a clean boot");
        let half = &self.half_pruned;
        let is_half = |d: &Digest| half.iter().any(|h| h.starts_with(&format!("{}-", crate::digest_created(d))));
        let kept_before: Vec<&Digest> = self.clean.kept.values().map(|r| &r.digest).filter(|d| !is_half(d)).collect();
        let made: Vec<&Digest> = self
            .candidates
            .iter()
            .filter(|(c, _)| **c != clean_old.created() && !self.clean.kept.values().any(|k| k.created() == **c))
            .map(|(_, d)| d)
            .filter(|d| !is_half(d))
            .collect();
        let kept_now: BTreeMap<String, &Digest> = now.kept.iter().map(|(n, r)| (n.clone(), &r.digest)).collect();
        assert_kept_after_recovery(name, &kept_now, &kept_before, &clean_old.digest, &made, self.keep);
        for (k, root) in &now.kept {
            assert!(root.readonly != Some(false), "{name}: kept root {k} is writable");
        }
        let retired = rec["retired"].as_str().unwrap_or_default();
        assert!(
            retired.starts_with(&format!("/rwlayer.kept/{}-", old.created())),
            "{name}: the boot retired {retired}, expected the root made at {}",
            old.created()
        );
        self.settle_on(now);
        self.reference = out.clone();
        Recovered { report, out, from }
    }
}

/// Whether a trash entry is a root the boot after `prev` could discard: a kept root
/// it pruned, or its own tmp/ready root (names are `<stamp>-<pid>-<name>.<n>`).
fn trash_entry_of(entry: &str, prev: &DiskState) -> bool {
    let Some((stem, _)) = entry.rsplit_once('.') else { return false };
    ["rwlayer.dockroot-tmp", "rwlayer.dockroot-ready"].iter().any(|n| stem.ends_with(&format!("-{n}")))
        || prev.kept.keys().any(|k| stem.ends_with(&format!("-{k}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(created: &str) -> Root {
        Root { digest: [(crate::DIGEST_CREATED.to_string(), created.to_string())].into(), readonly: None }
    }

    fn disk(current: Option<&str>, ready: Option<&str>, kept: &[&str]) -> DiskState {
        DiskState {
            kind: RootKind::Overlay,
            outside: Digest::new(),
            current: current.map(root),
            tmp: false,
            skel: false,
            ready: ready.map(root),
            kept: kept.iter().map(|k| (format!("{k}-img"), root(k))).collect(),
            trash: Vec::new(),
        }
    }

    #[test]
    fn the_trash_may_hold_only_what_the_boot_could_discard() {
        let prev = disk(Some("3"), None, &["1", "2"]);
        assert!(trash_entry_of("20260101-77-rwlayer.dockroot-tmp.1", &prev));
        assert!(trash_entry_of("20260101-77-rwlayer.dockroot-ready.2", &prev));
        assert!(trash_entry_of("20260101-77-1-img.1", &prev));
        assert!(!trash_entry_of("20260101-77-9-img.1", &prev), "no such kept root");
        assert!(!trash_entry_of("20260101-77-rwlayer.1", &prev), "the current root is never discarded");
        assert!(!trash_entry_of("no-dot", &prev));
    }

    #[test]
    fn the_next_boot_starts_from_the_current_or_the_ready_root() {
        let d = disk(Some("3"), Some("4"), &["1", "2"]);
        assert_eq!(d.effective_current().map(Root::created).as_deref(), Some("3"));
        let d = disk(None, Some("4"), &["1", "2"]);
        assert_eq!(d.effective_current().map(Root::created).as_deref(), Some("4"));
        assert_eq!(d.newest_kept().map(|(n, _)| n.as_str()), Some("2-img"));
        assert_eq!(d.leftovers(), vec!["rwlayer.dockroot-ready"]);
    }
}
