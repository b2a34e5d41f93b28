//! Kept roots: each previous root is retired to `NAME.kept/<created>-<image
//! id, 12 hex>` and the newest `dockroot.keep=` of them stay. Their names,
//! the UTC time stamps in them and which to prune are pure
//! ([`kept_name`], [`utc_stamp`], [`prune_plan`]); listing, retiring,
//! putting back and pruning on disk are thin (`openat`, `renameat`,
//! read-only flags).

use std::os::fd::{AsFd, OwnedFd};

use rustix::fs::Mode;

use super::{open_dir, read_info, At, Existing, RootInfo, RwStore};
use crate::btrfs;
use crate::error::{Context, Error, Result};

/// Which kept roots to delete so that `keep` remain: the oldest (names sort
/// by creation time). Names that are not dockroot's are left alone (pure).
pub fn prune_plan(kept: &[String], keep: usize) -> Vec<String> {
    let mut ours: Vec<&String> = kept.iter().filter(|n| is_kept_name(n)).collect();
    ours.sort();
    let excess = ours.len().saturating_sub(keep);
    ours.into_iter().take(excess).cloned().collect()
}

/// A kept root's directory name: `<created>-<12 hex of the image id>`, made
/// unique among `existing` with a `.N` suffix (pure).
pub fn kept_name(info: &RootInfo, existing: &[String]) -> String {
    let hex = info.image.strip_prefix("sha256:").unwrap_or(&info.image);
    let short: String = hex.chars().filter(|c| c.is_ascii_alphanumeric()).take(12).collect();
    let short = if short.is_empty() { "unknown".to_string() } else { short };
    let base = format!("{}-{short}", info.created);
    if !existing.contains(&base) {
        return base;
    }
    (2..).map(|n| format!("{base}.{n}")).find(|c| !existing.contains(c)).unwrap_or(base)
}

/// Whether a directory entry in the kept directory is one of ours
/// (`YYYYMMDDTHHMMSSZ-...`).
pub fn is_kept_name(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() > 17
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'T'
        && b[9..15].iter().all(u8::is_ascii_digit)
        && b[15] == b'Z'
        && b[16] == b'-'
}

/// Seconds since the epoch as `YYYYMMDDTHHMMSSZ` (UTC; pure).
pub fn utc_stamp(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Howard Hinnant's algorithm, shifted so that eras start on 0000-03-01.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// The current time as a [`utc_stamp`].
pub fn now_stamp() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    utc_stamp(secs)
}

impl RwStore {
    pub(super) fn kept_dir(&self) -> Result<Option<OwnedFd>> {
        match open_dir(self.parent.as_fd(), &self.kept_dir_name()) {
            Ok(fd) => Ok(Some(fd)),
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(e) => Err(Error::with(format!("opening {}", self.shown(&self.kept_dir_name())), e)),
        }
    }

    /// The kept roots' names, oldest first.
    pub fn kept(&self) -> Result<Vec<String>> {
        let Some(dir) = self.kept_dir()? else { return Ok(Vec::new()) };
        let mut names = Vec::new();
        let mut entries =
            rustix::fs::Dir::read_from(&dir).context(|| format!("reading {}", self.shown(&self.kept_dir_name())))?;
        while let Some(entry) = entries.read() {
            let entry = entry.context(|| format!("reading {}", self.shown(&self.kept_dir_name())))?;
            if let Ok(name) = entry.file_name().to_str() {
                if is_kept_name(name) {
                    names.push(name.to_string());
                }
            }
        }
        names.sort();
        Ok(names)
    }

    /// Whether the current root or a kept one is an overlay root (a fallback
    /// or a rollback may mount it: the overlay filesystem must be there).
    pub fn has_overlay_roots(&self) -> bool {
        let kept = self.kept().unwrap_or_default().into_iter().map(At::Kept);
        std::iter::once(At::Current).chain(kept).any(|at| self.kind(&at).is_ok_and(|k| k == Existing::Overlay))
    }

    /// A kept root's path from the top level, for messages and the boot record.
    pub fn kept_shown(&self, name: &str) -> String {
        self.shown(&format!("{}/{name}", self.kept_dir_name()))
    }

    /// Undo [`retire`](Self::retire): the kept root `name` back at the rw layer's name, writable.
    pub(super) fn unretire(&self, name: &str, kind: Existing) -> Result<()> {
        let p = self.parent.as_fd();
        let dir = self.kept_dir()?.context(|| format!("{} vanished", self.shown(&self.kept_dir_name())))?;
        if kind == Existing::Subvolume {
            let kept = open_dir(dir.as_fd(), name).context(|| format!("opening {}", self.kept_shown(name)))?;
            btrfs::set_readonly(kept.as_fd(), false)?;
        }
        rustix::fs::renameat(&dir, name, p, self.name.as_str())
            .context(|| format!("renaming {} back to {}", self.kept_shown(name), self.rw_shown()))?;
        log::warn!("the previous root is back at {}", self.rw_shown());
        Ok(())
    }

    /// Rename the current root into the kept directory and make it read-only.
    /// Returns where it went: (shown path, name in the kept directory). Once
    /// renamed it is kept even if it cannot be made read-only (a warning).
    pub(super) fn retire(&self, current: OwnedFd, kind: Existing) -> Result<(String, String)> {
        let p = self.parent.as_fd();
        let info =
            read_info(current.as_fd()).unwrap_or_else(|| RootInfo { created: now_stamp(), image: "unknown".into() });
        drop(current);
        let dir_name = self.kept_dir_name();
        match rustix::fs::mkdirat(p, dir_name.as_str(), Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(Error::with(format!("creating {}", self.shown(&dir_name)), e)),
        }
        let dir = self.kept_dir()?.context(|| format!("{} vanished", self.shown(&dir_name)))?;
        let name = kept_name(&info, &self.kept()?);
        rustix::fs::renameat(p, self.name.as_str(), &dir, name.as_str())
            .context(|| format!("retiring {} to {}", self.rw_shown(), self.kept_shown(&name)))?;
        if kind == Existing::Subvolume {
            let ro = open_dir(dir.as_fd(), &name)
                .context(|| format!("opening {}", self.kept_shown(&name)))
                .and_then(|kept| btrfs::set_readonly(kept.as_fd(), true));
            match ro {
                Ok(()) => log::info!("the previous root is kept read-only as {}", self.kept_shown(&name)),
                Err(e) => log::warn!("the previous root is kept as {}, but writable: {e}", self.kept_shown(&name)),
            }
        } else {
            log::info!("the previous root is kept as {}", self.kept_shown(&name));
        }
        Ok((self.kept_shown(&name), name))
    }

    /// Delete kept roots beyond `keep`, oldest first. Failures are warnings:
    /// an extra kept root costs space, not the boot.
    pub(super) fn prune(&self, keep: usize) -> Vec<String> {
        let (Ok(Some(dir)), Ok(kept)) = (self.kept_dir(), self.kept()) else { return Vec::new() };
        let mut pruned = Vec::new();
        for name in prune_plan(&kept, keep) {
            match self.discard(dir.as_fd(), &name, &self.kept_shown(&name)) {
                Ok(()) => {
                    log::info!("deleted the old kept root {} (dockroot.keep={keep})", self.kept_shown(&name));
                    pruned.push(self.kept_shown(&name));
                }
                Err(e) => log::warn!("could not delete the old kept root {}: {e}", self.kept_shown(&name)),
            }
        }
        pruned
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps() {
        assert_eq!(utc_stamp(0), "19700101T000000Z");
        assert_eq!(utc_stamp(951_782_400), "20000229T000000Z"); // leap day of a century leap year
        assert_eq!(utc_stamp(1_795_851_296), "20261128T073456Z");
        assert_eq!(utc_stamp(4_102_444_799), "20991231T235959Z");
        assert_eq!(utc_stamp(4_107_542_399), "21000228T235959Z"); // 2100 is not a leap year
        assert!(is_kept_name(&format!("{}-0123456789ab", utc_stamp(1_795_851_296))));
    }

    #[test]
    fn kept_names_and_pruning() {
        let info = RootInfo { created: "20261128T073456Z".into(), image: format!("sha256:{}", "ab".repeat(32)) };
        assert_eq!(kept_name(&info, &[]), "20261128T073456Z-abababababab");
        let taken = vec!["20261128T073456Z-abababababab".to_string(), "20261128T073456Z-abababababab.2".to_string()];
        assert_eq!(kept_name(&info, &taken), "20261128T073456Z-abababababab.3");
        let odd = RootInfo { created: "20261128T073456Z".into(), image: "../..".into() };
        assert_eq!(kept_name(&odd, &[]), "20261128T073456Z-unknown");
        assert!(!is_kept_name("notes.txt") && !is_kept_name("20261128T073456Z") && !is_kept_name("2026112xT073456Z-a"));

        let kept: Vec<String> = ["20261103T000000Z-a", "20261101T000000Z-b", "mine", "20261102T000000Z-c"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(prune_plan(&kept, 3), Vec::<String>::new());
        assert_eq!(prune_plan(&kept, 1), vec!["20261101T000000Z-b", "20261102T000000Z-c"]);
        assert_eq!(prune_plan(&kept, 0).len(), 3, "never the user's own 'mine'");
    }
}
