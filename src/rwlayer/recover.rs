//! Recovery from an interrupted boot: what was left at the rw layer's
//! names and what to do about it ([`recovery_plan`], [`check_current`]:
//! pure), and [`RwStore::recover`], which carries the plan out (thin:
//! deletes, renames, syncs).

use std::os::fd::AsFd;

use rustix::fs::AtFlags;

use super::{existing, open_dir, Existing, RwStore, OVERLAY_SPEC, UPPER, WORK};
use crate::btrfs;
use crate::error::{Context, Error, Result};

/// One step of recovering from an interrupted boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// Delete the half-built `NAME.dockroot-tmp`.
    DeleteTmp,
    /// Rename `NAME.dockroot-ready` to NAME (the old root was already retired).
    InstallReady,
    /// Delete `NAME.dockroot-ready` (NAME is still the old, intact root).
    DeleteReady,
}

/// Decide how to recover from an interrupted boot (pure).
pub fn recovery_plan(current: Existing, tmp: Existing, ready: Existing) -> Result<Vec<Recovery>> {
    let mut steps = Vec::new();
    for (what, e) in [("temporary", tmp), ("ready", ready)] {
        if let Existing::Other(kind) = e {
            return Err(Error::msg(format!(
                "dockroot's {what} rw layer name is taken by a {kind}, not a root dockroot made: refusing to touch it"
            )));
        }
    }
    if tmp.is_root() {
        steps.push(Recovery::DeleteTmp);
    }
    if ready.is_root() {
        steps.push(if current == Existing::Absent { Recovery::InstallReady } else { Recovery::DeleteReady });
    }
    Ok(steps)
}

/// Check that NAME holds nothing dockroot may not replace (pure).
pub fn check_current(existing: Existing, shown: &str) -> Result<()> {
    match existing {
        Existing::Other(kind) => Err(Error::msg(format!(
            "the rw layer {shown:?} (rootflags=subvol= or dockroot.rw=) exists but is a {kind}, \
             not a btrfs subvolume or an overlay root made by dockroot: \
             refusing to delete it; move it away or choose another name"
        ))),
        _ => Ok(()),
    }
}

impl RwStore {
    /// Remove a leftover overlay skeleton: only `upper/` and `work/` (both
    /// empty) and the spec file may be in it; anything else is refused.
    /// Returns whether there was one.
    pub(super) fn remove_skeleton(&self) -> Result<bool> {
        let skel = self.skel();
        let shown = self.shown(&skel);
        let dir = match open_dir(self.parent.as_fd(), &skel) {
            Ok(d) => d,
            Err(rustix::io::Errno::NOENT) => return Ok(false),
            Err(e) => return Err(Error::with(format!("opening {shown}"), e)),
        };
        let mut entries = rustix::fs::Dir::read_from(&dir).context(|| format!("reading {shown}"))?;
        let mut names = Vec::new();
        while let Some(entry) = entries.read() {
            let entry = entry.context(|| format!("reading {shown}"))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name != "." && name != ".." {
                names.push(name);
            }
        }
        for name in &names {
            let r = match name.as_str() {
                UPPER | WORK => rustix::fs::unlinkat(&dir, name.as_str(), AtFlags::REMOVEDIR),
                OVERLAY_SPEC => rustix::fs::unlinkat(&dir, name.as_str(), AtFlags::empty()),
                _ => {
                    return Err(Error::msg(format!(
                        "{shown} holds {name:?}, which dockroot never puts there: refusing to delete it"
                    )))
                }
            };
            r.context(|| format!("deleting {shown}/{name} (left by an interrupted boot)"))?;
        }
        rustix::fs::unlinkat(self.parent.as_fd(), skel.as_str(), AtFlags::REMOVEDIR)
            .context(|| format!("deleting {shown} (left by an interrupted boot)"))?;
        Ok(true)
    }

    /// Finish or undo whatever an interrupted boot left, and make sure every
    /// kept root is read-only. Returns what was done, for the boot record.
    pub fn recover(&self) -> Result<Vec<String>> {
        let p = self.parent.as_fd();
        let plan = recovery_plan(existing(p, &self.name)?, existing(p, &self.tmp())?, existing(p, &self.ready())?)?;
        let mut done = Vec::new();
        if self.remove_skeleton()? {
            done.push(format!("deleted the overlay skeleton {} of an interrupted boot", self.shown(&self.skel())));
        }
        for step in plan {
            match step {
                Recovery::DeleteTmp => {
                    log::warn!("deleting {}, left half-built by an interrupted boot", self.shown(&self.tmp()));
                    self.discard(p, &self.tmp(), &self.shown(&self.tmp()))?;
                    done.push(format!("deleted the half-built {}", self.shown(&self.tmp())));
                }
                Recovery::DeleteReady => {
                    log::warn!(
                        "deleting {}, complete but never installed by an interrupted boot",
                        self.shown(&self.ready())
                    );
                    self.discard(p, &self.ready(), &self.shown(&self.ready()))?;
                    done.push(format!("deleted the uninstalled {}", self.shown(&self.ready())));
                }
                Recovery::InstallReady => {
                    log::warn!(
                        "an interrupted boot retired the previous root: installing {}",
                        self.shown(&self.ready())
                    );
                    rustix::fs::renameat(p, self.ready(), p, self.name.as_str())
                        .context(|| format!("renaming {} to {}", self.shown(&self.ready()), self.rw_shown()))?;
                    btrfs::sync(p)?;
                    done.push(format!("installed {} left by an interrupted boot", self.shown(&self.ready())));
                }
            }
        }
        if let Some(dir) = self.kept_dir()? {
            for name in self.kept()? {
                let fd = open_dir(dir.as_fd(), &name).context(|| format!("opening kept root {name}"))?;
                if btrfs::is_subvolume(fd.as_fd())? && !btrfs::is_readonly(fd.as_fd())? {
                    btrfs::set_readonly(fd.as_fd(), true)?;
                    done.push(format!("made kept root {name} read-only"));
                }
            }
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Existing::*;

    #[test]
    fn recovery_after_every_crash_point() {
        // Nothing left over.
        assert_eq!(recovery_plan(Subvolume, Absent, Absent).unwrap(), vec![]);
        assert_eq!(recovery_plan(Absent, Absent, Absent).unwrap(), vec![]);
        // Crash while building: the half-built root goes, the old one stays.
        assert_eq!(recovery_plan(Subvolume, Subvolume, Absent).unwrap(), vec![Recovery::DeleteTmp]);
        assert_eq!(recovery_plan(Absent, Subvolume, Absent).unwrap(), vec![Recovery::DeleteTmp]);
        // Crash after "ready", before retiring: the old root is intact at NAME.
        assert_eq!(recovery_plan(Subvolume, Absent, Subvolume).unwrap(), vec![Recovery::DeleteReady]);
        // Crash after retiring, before installing: finish the install.
        assert_eq!(recovery_plan(Absent, Absent, Subvolume).unwrap(), vec![Recovery::InstallReady]);
        assert_eq!(
            recovery_plan(Absent, Subvolume, Subvolume).unwrap(),
            vec![Recovery::DeleteTmp, Recovery::InstallReady]
        );
        // Someone else's files at our names are never touched.
        let e = recovery_plan(Subvolume, Other("plain directory"), Absent).unwrap_err().to_string();
        assert!(e.contains("temporary") && e.contains("plain directory") && e.contains("refusing"), "{e}");
    }

    #[test]
    fn current_must_be_a_subvolume_or_absent() {
        assert!(check_current(Absent, "rw").is_ok());
        assert!(check_current(Subvolume, "rw").is_ok());
        let e = check_current(Other("plain directory"), "roots/rw").unwrap_err().to_string();
        assert!(e.contains("\"roots/rw\"") && e.contains("plain directory") && e.contains("refusing"), "{e}");
    }
}
