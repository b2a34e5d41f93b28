//! Stage 7: which root boots, put at the rw layer's name. The rule is
//! [`policy::decide`]; this module gathers its facts ([`facts`]), carries its
//! decision out ([`make`]) and, when that fails, adds the failure to the facts
//! and asks again, until a root is in place or nothing can boot.

pub mod counting;
pub mod facts;
mod make;

use std::os::fd::BorrowedFd;
use std::path::Path;

use crate::config::BootConfig;
use crate::devices::{self, BlockDevice, WaitHooks, WaitPolicy};
use crate::error::{Error, Result};
use crate::mounts::{CHECK_MOUNT, STAGING_TOP};
use crate::policy::{self, Decision};
use crate::record::{Booted, Record, Timings};
use crate::rwlayer::RwStore;
use crate::store;

/// What the boot needs to know at every step of choosing the root.
pub struct Ctx<'a> {
    pub cfg: &'a BootConfig,
    pub root_dev: &'a BlockDevice,
    pub policy: &'a WaitPolicy,
    /// The init's candidates (`init=` or the defaults).
    pub candidates: &'a [String],
    /// `dockroot rollback`'s kept root, copied when its image cannot be made fresh.
    pub rollback_kept: Option<String>,
    /// The image to name on the command line of a kernel this boot kexecs into,
    /// when the choice would otherwise be lost (a one-shot choice).
    pub carry_image: Option<String>,
}

/// The device waiter and the module hooks, kept for later waits (the top layer's device).
pub struct Devices {
    pub waiter: devices::Waiter,
    pub hooks: Box<dyn WaitHooks>,
}

/// Decide which root to boot and put it at the rw layer's name.
pub fn choose_root(
    ctx: &Ctx,
    t: &mut Timings,
    store: &RwStore,
    top: BorrowedFd<'_>,
    devs: &mut Devices,
    record: &mut Record,
) -> Result<Booted> {
    let keep = ctx.cfg.params.keep;
    let mut facts = facts::gather(store, ctx.cfg.params.mode);
    facts.rollback_kept = ctx.rollback_kept.clone();
    let look =
        facts::Lookout { top: Path::new(STAGING_TOP), check_mount: Path::new(CHECK_MOUNT), candidates: ctx.candidates };
    // Every failed attempt adds a fact (the fresh root once, each kept root once).
    for _ in 0..facts.kept.len().saturating_add(3) {
        match policy::decide_with(&mut facts, |w| facts::check(store, w, &look)) {
            Decision::Fresh { note } => {
                if let Some(n) = note {
                    record.warn(n);
                }
                match fresh(ctx, t, store, top, devs, record) {
                    Ok(resolved) => return Ok(Booted::Fresh(resolved)),
                    Err(e) => {
                        if let Some(w) = store.abort() {
                            record.warn(w);
                        }
                        log::error!("cannot prepare a fresh root: {e}");
                        facts.fresh_failed = Some(e.to_string());
                    }
                }
            }
            Decision::Current { fallback: None } => {
                log::info!("dockroot.boot=persist: booting the current rw layer {} as it is", store.rw_shown());
                return Ok(Booted::Persisted);
            }
            Decision::Current { fallback: Some(reason) } => {
                let from = format!("{} as it was", store.rw_shown());
                record.warn(format!("FALLBACK: booting the previous root {from}; fix the problem above and reboot"));
                return Ok(Booted::Fallback { reason, from });
            }
            Decision::CopyKept { name, shown, fallback, note } => {
                match t.run("rw layer", || make::copy_kept(store, &name, keep, record)) {
                    Ok(()) => match fallback {
                        None => {
                            match note {
                                Some(n) => record.warn(n),
                                None => log::info!("dockroot.boot=previous: booting a copy of {shown}"),
                            }
                            return Ok(Booted::Previous(shown));
                        }
                        Some(reason) => {
                            let from = format!("a copy of {shown}");
                            record.warn(format!("FALLBACK: booting {from}; fix the problem above and reboot"));
                            return Ok(Booted::Fallback { reason, from });
                        }
                    },
                    Err(e) => {
                        match (fallback, note) {
                            (None, None) => record.warn(format!("dockroot.boot=previous: {e}")),
                            (None, Some(_)) => record.warn(format!("dockroot rollback: {e}")),
                            (Some(_), _) => log::error!("{e}"),
                        }
                        facts.copy_failed.push((name, e.to_string()));
                    }
                }
            }
            Decision::Fail(reason) => return Err(Error::msg(reason)),
            // decide_with answers every check itself.
            Decision::Check(w) => return Err(Error::msg(format!("the boot policy left {w:?} unchecked (a bug)"))),
        }
    }
    Err(Error::msg("the boot policy did not settle on a root (a bug in dockroot)"))
}

/// The fresh root from the image, installed at the rw layer's name.
fn fresh(
    ctx: &Ctx,
    t: &mut Timings,
    store: &RwStore,
    top: BorrowedFd<'_>,
    devs: &mut Devices,
    record: &mut Record,
) -> Result<store::Resolved> {
    let resolved = make::build_fresh(ctx, t, store, top, devs)?;
    // A failed install leaves the previous root in place (see RwStore::commit).
    let commit = t
        .run("install", || store.commit(ctx.cfg.params.keep))
        .map_err(|e| e.context(format!("installing the new root of image {}", resolved.reference)))?;
    // Logged when found; recorded for the booted system too.
    record.warnings.extend(resolved.warnings.iter().cloned());
    record.retired = commit.retired;
    record.pruned = commit.pruned;
    match &resolved.root {
        store::Root::Subvolume(_) => {
            log::info!("rw layer {} is a fresh snapshot of {}", store.rw_shown(), resolved.reference)
        }
        store::Root::Overlay { lowerdirs, .. } => log::info!(
            "rw layer {} is a fresh overlay of {} ({} layers)",
            store.rw_shown(),
            resolved.reference,
            lowerdirs.len()
        ),
    }
    Ok(resolved)
}
