//! Stage 7's rule: which root boots (pure). The one place that says it: the init
//! carries the [`Decision`] out, `dockroot plan` prints it, and both gather the
//! [`Facts`] the same way (see `choose.rs` and `plan.rs`).
//!
//! The rule (README, "Previous roots, and what happens when something fails"):
//! - `dockroot.boot=fresh` (the default) builds a fresh root from the image;
//! - `persist` boots the current rw layer as it is when it has an init, else a fresh root;
//! - `previous` boots a writable copy of the newest kept root with an init, else a fresh root;
//! - when the fresh root cannot be made (the image does not resolve, the snapshot, the
//!   top layer, the init check or the install fails), the boot falls back to the current
//!   rw layer as it is, else to a copy of the newest kept root with an init; only when
//!   there is none is the boot a failure;
//! - except after `dockroot rollback`: its image's kept root ([`Facts::rollback_kept`])
//!   is copied instead when that image cannot be made fresh (it left the store, say),
//!   before any fallback: the current root is what was rolled back from.
//!
//! Whether a root has an init is looked up only when the rule needs to know
//! ([`Decision::Check`]): a normal boot never looks at the kept roots.

use std::collections::BTreeMap;

use crate::config::BootMode;
use crate::trial;

/// Whether a root can boot (it exists and has an init).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bootable {
    /// Not looked at yet.
    Unchecked,
    Yes,
    /// Why not.
    No(String),
}

/// A root: which, and whether it can boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootFacts {
    /// The directory name (a kept root's name in the kept directory).
    pub name: String,
    /// As shown to the user (`/rw.kept/NAME`).
    pub shown: String,
    pub bootable: Bootable,
}

/// Which root a [`Decision::Check`] asks about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Which {
    Current,
    /// A kept root, by name.
    Kept(String),
}

/// What the boot knows when it decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    /// `dockroot.boot=`.
    pub mode: BootMode,
    /// The rw layer's name as shown (`/rw`).
    pub rw_shown: String,
    /// The root at the rw layer's name, if there is one.
    pub current: Option<RootFacts>,
    /// The kept roots, oldest first (their names sort by creation time).
    pub kept: Vec<RootFacts>,
    /// Why the kept roots could not be listed, if they could not.
    pub kept_error: Option<String>,
    /// Why a fresh root cannot be made (the image did not resolve) or could
    /// not be made this boot; `None` while it is not known to fail.
    pub fresh_failed: Option<String>,
    /// Copies of kept roots that failed this boot: (name, why).
    pub copy_failed: Vec<(String, String)>,
    /// `dockroot rollback`'s kept root: copied when its image cannot be made fresh.
    pub rollback_kept: Option<String>,
}

impl Facts {
    /// Facts before anything was looked at or tried.
    pub fn new(mode: BootMode, rw_shown: String) -> Facts {
        Facts {
            mode,
            rw_shown,
            current: None,
            kept: Vec::new(),
            kept_error: None,
            fresh_failed: None,
            copy_failed: Vec::new(),
            rollback_kept: None,
        }
    }

    /// Record what a [`Decision::Check`] found.
    pub fn set_bootable(&mut self, which: &Which, bootable: Bootable) {
        let root = match which {
            Which::Current => self.current.as_mut(),
            Which::Kept(name) => self.kept.iter_mut().find(|k| &k.name == name),
        };
        if let Some(r) = root {
            r.bootable = bootable;
        }
    }
}

/// What boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Look whether this root can boot, record it ([`Facts::set_bootable`]) and decide again.
    Check(Which),
    /// Build a fresh root from the image (with the top layer), retire the
    /// current root into the kept directory and prune it to `dockroot.keep=`.
    /// `note`: why this is not what `dockroot.boot=` asked for.
    Fresh { note: Option<String> },
    /// Boot the current rw layer as it is; `fallback`: why (the fresh root's failure).
    Current { fallback: Option<String> },
    /// Boot a writable copy of kept root `name` (retiring and pruning as for a
    /// fresh root); `fallback`: why, when it is not what was asked for; `note`:
    /// why, when it is what `dockroot rollback` asked for.
    CopyKept { name: String, shown: String, fallback: Option<String>, note: Option<String> },
    /// Nothing can boot.
    Fail(String),
}

impl Decision {
    /// The fallback reason, when the boot falls back.
    pub fn fallback(&self) -> Option<&str> {
        match self {
            Decision::Current { fallback } | Decision::CopyKept { fallback, .. } => fallback.as_deref(),
            _ => None,
        }
    }
}

/// The newest kept root that may boot: one to check, or one known to boot.
enum Candidate {
    Check(String),
    Boots(String, String),
}

fn newest_kept(f: &Facts) -> Option<Candidate> {
    let failed = |name: &str| f.copy_failed.iter().any(|(n, _)| n == name);
    f.kept.iter().rev().filter(|k| !failed(&k.name)).find_map(|k| match &k.bootable {
        Bootable::Unchecked => Some(Candidate::Check(k.name.clone())),
        Bootable::Yes => Some(Candidate::Boots(k.name.clone(), k.shown.clone())),
        Bootable::No(_) => None,
    })
}

/// The decision (see the module's doc).
pub fn decide(f: &Facts) -> Decision {
    match f.mode {
        BootMode::Fresh => fresh_or_fallback(f, None),
        BootMode::Persist => match f.current.as_ref().map(|c| &c.bootable) {
            Some(Bootable::Unchecked) => Decision::Check(Which::Current),
            Some(Bootable::Yes) => Decision::Current { fallback: None },
            _ => fresh_or_fallback(
                f,
                Some(format!(
                    "dockroot.boot=persist, but there is no bootable rw layer at {}: booting a fresh one",
                    f.rw_shown
                )),
            ),
        },
        BootMode::Previous => match newest_kept(f) {
            Some(Candidate::Check(name)) => Decision::Check(Which::Kept(name)),
            Some(Candidate::Boots(name, shown)) => Decision::CopyKept { name, shown, fallback: None, note: None },
            None => fresh_or_fallback(
                f,
                Some("dockroot.boot=previous, but no kept root could be booted: booting a fresh one".into()),
            ),
        },
    }
}

/// A fresh root unless it is known to fail; then the current root as it is,
/// else a copy of the newest kept root that can boot, else nothing.
fn fresh_or_fallback(f: &Facts, note: Option<String>) -> Decision {
    let Some(reason) = &f.fresh_failed else { return Decision::Fresh { note } };
    let failed = |name: &str| f.copy_failed.iter().any(|(n, _)| n == name);
    if let Some(k) = f.rollback_kept.as_ref().and_then(|k| f.kept.iter().find(|r| &r.name == k && !failed(k))) {
        match &k.bootable {
            Bootable::Unchecked => return Decision::Check(Which::Kept(k.name.clone())),
            Bootable::Yes => {
                return Decision::CopyKept {
                    name: k.name.clone(),
                    shown: k.shown.clone(),
                    fallback: None,
                    note: Some(format!(
                    "dockroot rollback: the image cannot be made fresh ({reason}): booting a copy of its kept root {}",
                    k.shown
                )),
                }
            }
            Bootable::No(_) => {}
        }
    }
    match f.current.as_ref().map(|c| &c.bootable) {
        Some(Bootable::Unchecked) => return Decision::Check(Which::Current),
        Some(Bootable::Yes) => return Decision::Current { fallback: Some(reason.clone()) },
        _ => {}
    }
    match newest_kept(f) {
        Some(Candidate::Check(name)) => Decision::Check(Which::Kept(name)),
        Some(Candidate::Boots(name, shown)) => {
            Decision::CopyKept { name, shown, fallback: Some(reason.clone()), note: None }
        }
        None => {
            let tried: Vec<String> =
                f.kept_error.iter().cloned().chain(f.copy_failed.iter().map(|(_, why)| why.clone())).collect();
            Decision::Fail(match tried.is_empty() {
                true => format!("{reason}; and there is no previous root to fall back to"),
                false => format!("{reason}; and no previous root could be booted: {}", tried.join("; ")),
            })
        }
    }
}

/// Decide, answering every [`Decision::Check`] with `check` (which says whether
/// a root can boot); the boot and the plan both decide through this.
pub fn decide_with(f: &mut Facts, mut check: impl FnMut(&Which) -> Bootable) -> Decision {
    // Each round answers one Unchecked root, so this ends within 1 + roots rounds.
    for _ in 0..=f.kept.len().saturating_add(1) {
        match decide(f) {
            Decision::Check(which) => {
                let b = match check(&which) {
                    // A check that cannot say counts as "cannot boot".
                    Bootable::Unchecked => Bootable::No("could not be checked".into()),
                    b => b,
                };
                f.set_bootable(&which, b);
            }
            d => return d,
        }
    }
    Decision::Fail("the boot policy did not reach a decision (a bug in dockroot)".into())
}

/// Boot counting's part of the rule (`src/trial.rs`): what this boot does about
/// the trial of the image it is asked to boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrialPlan {
    /// `dockroot.tries=0`: nothing is counted or refused.
    Off,
    /// The image is blessed: nothing to count.
    Blessed,
    /// The image is on trial: this boot uses a try, moving its state to `to`
    /// (from `from`: new tries after `dockroot.trial=retry`).
    Count { from: trial::State, to: trial::State },
    /// The image is refused (`reason`): boot `back` instead, the newest root
    /// whose image was blessed, or the refused image anyway when there is none.
    Refused { reason: String, back: Option<Back> },
}

/// Where a refused image's boot goes back to: the blessed image, fresh from
/// the store, else a copy of its kept root (`kept`; None: the current root is
/// that image's, and the usual fallback to it as it is applies).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Back {
    /// `sha256:<hex>`.
    pub image: String,
    pub kept: Option<String>,
}

/// The trial rule (pure): `target` the image ID the boot asks for, `states`
/// the trials directory's states, `tries` and `retry` the kernel parameters,
/// `current` the current root's image ID, `kept` the kept roots' names
/// (oldest first; each ends in 12 hex digits of its image ID).
pub fn trial_plan(
    target: &str,
    states: &BTreeMap<String, (trial::State, Vec<String>)>,
    tries: u8,
    retry: bool,
    current: Option<&str>,
    kept: &[String],
) -> TrialPlan {
    use trial::{State, Step};
    let Some(hex) = trial::id_hex(target) else { return TrialPlan::Off };
    if tries == 0 {
        return TrialPlan::Off;
    }
    let mut state = states.get(hex).map_or(State::New, |e| e.0);
    if retry && state.refused() {
        state = State::New;
    }
    match trial::on_boot(state, tries) {
        Step::Nothing => TrialPlan::Blessed,
        Step::Use(to) => TrialPlan::Count { from: state, to },
        Step::Refused => TrialPlan::Refused {
            reason: format!("image sha256:{hex} is {}", state.describe()),
            back: last_blessed(hex, states, current, kept),
        },
    }
}

/// The newest root whose image was blessed, other than image `hex`'s: the
/// current root's image, else the newest kept root's (`kept` oldest first).
/// Where a refusal of `hex` goes back to; boot.json and status show it.
pub fn last_blessed(
    hex: &str,
    states: &BTreeMap<String, (trial::State, Vec<String>)>,
    current: Option<&str>,
    kept: &[String],
) -> Option<Back> {
    let good = |h: &str| h != hex && states.get(h).is_some_and(|e| e.0 == trial::State::Good);
    match current.and_then(trial::id_hex).filter(|h| good(h)) {
        Some(h) => Some(Back { image: format!("sha256:{h}"), kept: None }),
        None => kept.iter().rev().find_map(|name| {
            let short = kept_image_short(name)?;
            let full = states.keys().find(|h| h.starts_with(short) && good(h))?;
            Some(Back { image: format!("sha256:{full}"), kept: Some(name.clone()) })
        }),
    }
}

/// The 12 hex digits of the image ID in a kept root's name (`<created>-<hex>[.N]`).
fn kept_image_short(name: &str) -> Option<&str> {
    let rest = name.split_once('-')?.1;
    let short = rest.split('.').next()?;
    (short.len() == 12 && short.bytes().all(|b| b.is_ascii_hexdigit())).then_some(short)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Bootable::{No, Unchecked, Yes};

    fn root(name: &str, b: Bootable) -> RootFacts {
        RootFacts { name: name.into(), shown: format!("/rw.kept/{name}"), bootable: b }
    }

    fn facts(mode: BootMode, current: Option<Bootable>, kept: Vec<Bootable>) -> Facts {
        let mut f = Facts::new(mode, "/rw".into());
        f.current = current.map(|b| RootFacts { name: "rw".into(), shown: "/rw".into(), bootable: b });
        f.kept = kept.into_iter().enumerate().map(|(i, b)| root(&format!("k{i}"), b)).collect();
        f
    }

    fn copy(name: &str, fallback: Option<&str>) -> Decision {
        Decision::CopyKept {
            name: name.into(),
            shown: format!("/rw.kept/{name}"),
            fallback: fallback.map(Into::into),
            note: None,
        }
    }

    /// `dockroot rollback`: its kept root is copied when its image cannot be made
    /// fresh, before the usual fallbacks (the current root is what was rolled back from).
    #[test]
    fn a_rollback_copies_its_kept_root_when_its_image_is_gone() {
        let mut f = facts(BootMode::Fresh, Some(Yes), vec![Yes, Yes]);
        f.rollback_kept = Some("k0".into());
        assert_eq!(decide(&f), Decision::Fresh { note: None }, "the image is there: fresh");
        f.fresh_failed = Some("image sha256:aa not found".into());
        let d = decide(&f);
        let Decision::CopyKept { name, fallback: None, note: Some(note), .. } = &d else { panic!("{d:?}") };
        assert_eq!(name, "k0");
        assert!(note.starts_with("dockroot rollback: the image cannot be made fresh (image sha256:aa not found)"));
        assert!(note.ends_with("booting a copy of its kept root /rw.kept/k0"), "{note}");
        // Not looked into yet: look; cannot boot or its copy failed: the usual fallback.
        f.kept[0].bootable = Unchecked;
        assert_eq!(decide(&f), Decision::Check(Which::Kept("k0".into())));
        f.kept[0].bootable = No("no init".into());
        assert_eq!(decide(&f), Decision::Current { fallback: f.fresh_failed.clone() });
        f.kept[0].bootable = Yes;
        f.copy_failed.push(("k0".into(), "disk full".into()));
        assert_eq!(decide(&f), Decision::Current { fallback: f.fresh_failed.clone() });
        // A kept root that is not there (pruned since): the usual fallback.
        let mut f = facts(BootMode::Fresh, None, vec![Yes]);
        f.rollback_kept = Some("gone".into());
        f.fresh_failed = Some("x".into());
        assert_eq!(decide(&f), copy("k0", Some("x")));
    }

    /// The README's failure policy as a table: (mode, current, kept oldest first,
    /// fresh failure, failed copies) -> decision, with every root already checked.
    #[test]
    fn the_failure_policy() {
        use BootMode::{Fresh, Persist, Previous};
        let r = Some("image x not found");
        let no = || No("no init".into());
        let fresh = Decision::Fresh { note: None };
        let persist_note = Decision::Fresh {
            note: Some("dockroot.boot=persist, but there is no bootable rw layer at /rw: booting a fresh one".into()),
        };
        let previous_note = Decision::Fresh {
            note: Some("dockroot.boot=previous, but no kept root could be booted: booting a fresh one".into()),
        };
        let fail_none = Decision::Fail("image x not found; and there is no previous root to fall back to".into());
        #[allow(clippy::type_complexity)]
        let cases: Vec<(BootMode, Option<Bootable>, Vec<Bootable>, Option<&str>, &[&str], Decision)> = vec![
            // Fresh: the image, whatever is there.
            (Fresh, None, vec![], None, &[], fresh.clone()),
            (Fresh, Some(Yes), vec![Yes], None, &[], fresh.clone()),
            // Fresh fails: the current root as it is...
            (Fresh, Some(Yes), vec![Yes], r, &[], Decision::Current { fallback: r.map(Into::into) }),
            // ...else the newest kept root with an init...
            (Fresh, Some(no()), vec![Yes, Yes], r, &[], copy("k1", r)),
            (Fresh, None, vec![Yes, no()], r, &[], copy("k0", r)),
            // ...skipping one whose copy failed...
            (Fresh, None, vec![Yes, Yes], r, &["k1"], copy("k0", r)),
            // ...else nothing boots.
            (Fresh, None, vec![], r, &[], fail_none.clone()),
            (Fresh, Some(no()), vec![no(), no()], r, &[], fail_none.clone()),
            (
                Fresh,
                None,
                vec![Yes],
                r,
                &["k0"],
                Decision::Fail("image x not found; and no previous root could be booted: copy k0 failed".into()),
            ),
            // Persist: the current root when it boots, else a fresh one (and its fallbacks).
            (Persist, Some(Yes), vec![], None, &[], Decision::Current { fallback: None }),
            (Persist, Some(no()), vec![Yes], None, &[], persist_note.clone()),
            (Persist, None, vec![], None, &[], persist_note),
            (Persist, Some(no()), vec![Yes], r, &[], copy("k0", r)),
            // Previous: the newest kept root with an init, else a fresh one.
            (Previous, Some(Yes), vec![Yes, Yes], None, &[], copy("k1", None)),
            (Previous, Some(Yes), vec![Yes, no()], None, &[], copy("k0", None)),
            (Previous, Some(Yes), vec![Yes], None, &["k0"], previous_note.clone()),
            (Previous, None, vec![], None, &[], previous_note),
            (Previous, Some(Yes), vec![Yes], r, &["k0"], Decision::Current { fallback: r.map(Into::into) }),
            // What was asked for boots even when the image would not resolve.
            (Persist, Some(Yes), vec![Yes], r, &[], Decision::Current { fallback: None }),
            (Previous, Some(Yes), vec![Yes, no()], r, &[], copy("k0", None)),
        ];
        for (i, (mode, current, kept, failed, copies, want)) in cases.into_iter().enumerate() {
            let mut f = facts(mode, current, kept);
            f.fresh_failed = failed.map(Into::into);
            f.copy_failed = copies.iter().map(|n| (n.to_string(), format!("copy {n} failed"))).collect();
            assert_eq!(decide(&f), want, "case {i}: {f:?}");
        }
    }

    /// Roots are looked at only when the rule needs them, newest kept root first.
    #[test]
    fn checks_only_what_it_needs() {
        let f = facts(BootMode::Fresh, Some(Unchecked), vec![Unchecked]);
        assert_eq!(decide(&f), Decision::Fresh { note: None });
        let mut f = facts(BootMode::Fresh, Some(Unchecked), vec![Unchecked, Unchecked]);
        f.fresh_failed = Some("x".into());
        assert_eq!(decide(&f), Decision::Check(Which::Current));
        f.set_bootable(&Which::Current, No("no init".into()));
        assert_eq!(decide(&f), Decision::Check(Which::Kept("k1".into())));
        let mut asked = Vec::new();
        let d = decide_with(&mut f, |w| {
            asked.push(w.clone());
            match w {
                Which::Kept(n) if n == "k0" => Yes,
                _ => No("no init".into()),
            }
        });
        assert_eq!(asked, vec![Which::Kept("k1".into()), Which::Kept("k0".into())]);
        assert_eq!(d, copy("k0", Some("x")));
        assert_eq!(d.fallback(), Some("x"));
    }

    /// A kept root without an init is never promised (the plan's old mistake).
    #[test]
    fn a_kept_root_without_an_init_is_never_chosen() {
        let mut f = facts(BootMode::Fresh, None, vec![Unchecked]);
        f.fresh_failed = Some("image x not found".into());
        let d = decide_with(&mut f, |_| No("no init found in the new root".into()));
        assert_eq!(d, Decision::Fail("image x not found; and there is no previous root to fall back to".into()));
        let mut f = facts(BootMode::Previous, None, vec![Unchecked]);
        assert_eq!(
            decide_with(&mut f, |_| Unchecked),
            Decision::Fresh {
                note: Some("dockroot.boot=previous, but no kept root could be booted: booting a fresh one".into())
            }
        );
    }

    #[test]
    fn a_listing_error_is_part_of_the_failure() {
        let mut f = facts(BootMode::Fresh, None, vec![]);
        f.fresh_failed = Some("r".into());
        f.kept_error = Some("the kept roots cannot be listed: EIO".into());
        assert_eq!(
            decide(&f),
            Decision::Fail("r; and no previous root could be booted: the kept roots cannot be listed: EIO".into())
        );
    }

    fn states(entries: &[(&str, trial::State)]) -> BTreeMap<String, (trial::State, Vec<String>)> {
        entries.iter().map(|(h, s)| (h.to_string(), (*s, vec![trial::name(h, *s).unwrap()]))).collect()
    }

    #[test]
    fn a_refused_image_goes_back_to_the_newest_blessed_root() {
        use trial::State;
        let x = "a".repeat(64);
        let y = "b".repeat(64);
        let z = "c".repeat(64);
        let idx = format!("sha256:{x}");
        let kept = vec![
            format!("20261201T000000Z-{}", &z[..12]),
            format!("20261202T000000Z-{}", &y[..12]),
            format!("20261203T000000Z-{}", &x[..12]),
        ];
        // New, then on trial, then refused.
        let none = states(&[]);
        assert_eq!(
            trial_plan(&idx, &none, 3, false, None, &kept),
            TrialPlan::Count { from: State::New, to: State::Trial { left: 2, done: 1 } }
        );
        assert_eq!(trial_plan(&idx, &none, 0, false, None, &kept), TrialPlan::Off);
        let used = states(&[(&x, State::Trial { left: 0, done: 3 }), (&y, State::Good), (&z, State::Good)]);
        let TrialPlan::Refused { reason, back } = trial_plan(&idx, &used, 3, false, Some(&idx), &kept) else {
            panic!()
        };
        assert_eq!(reason, format!("image sha256:{x} is refused: failed 3 boots without being blessed"));
        assert_eq!(
            back,
            Some(Back { image: format!("sha256:{y}"), kept: Some(kept[1].clone()) }),
            "the newest blessed"
        );
        // The current root's image, when blessed, is newer than any kept root.
        let ids = format!("sha256:{z}");
        let TrialPlan::Refused { back, .. } = trial_plan(&idx, &used, 3, false, Some(&ids), &kept) else { panic!() };
        assert_eq!(back, Some(Back { image: ids.clone(), kept: None }));
        // No blessed root: the refused image boots anyway (said by the caller).
        let alone = states(&[(&x, State::Bad)]);
        assert_eq!(
            trial_plan(&idx, &alone, 3, false, None, &kept),
            TrialPlan::Refused { reason: format!("image sha256:{x} is refused: dockroot bless bad"), back: None }
        );
        // dockroot.trial=retry gives new tries; a blessed image is not counted.
        assert_eq!(
            trial_plan(&idx, &used, 2, true, None, &kept),
            TrialPlan::Count { from: State::New, to: State::Trial { left: 1, done: 1 } }
        );
        assert_eq!(trial_plan(&format!("sha256:{y}"), &used, 3, false, None, &kept), TrialPlan::Blessed);
        assert_eq!(trial_plan("not-an-id", &used, 3, false, None, &kept), TrialPlan::Off);
        // The last blessed root, as boot.json and status show it: never the image itself.
        assert_eq!(
            last_blessed(&z, &used, Some(&ids), &kept),
            Some(Back { image: format!("sha256:{y}"), kept: Some(kept[1].clone()) })
        );
        assert_eq!(last_blessed(&x, &used, Some(&ids), &kept), Some(Back { image: ids.clone(), kept: None }));
        assert_eq!(last_blessed(&x, &alone, None, &kept), None);
        assert_eq!(kept_image_short("20261203T000000Z-0123456789ab.2"), Some("0123456789ab"));
        assert_eq!(kept_image_short("20261203T000000Z-unknown"), None);
    }
}
