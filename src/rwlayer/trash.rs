//! The trash: overlay roots are not deleted in the boot's path but renamed
//! into `NAME.dockroot-trash/` (atomic, instant), and a child process
//! empties it while the system boots ([`RwStore::start_emptying_trash`]);
//! subvolumes are deleted at once (btrfs frees their space in the
//! background). All of it is thin: renames, `unlinkat`, one fork.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

use super::{existing, now_stamp, open_dir, Existing, RwStore};
use crate::btrfs;
use crate::error::{Context, Error, Result};

/// Deepest directory nesting [`remove_contents`] descends into.
const REMOVE_MAX_DEPTH: usize = 1024;

/// Delete everything below `dir`, following no symlinks and never leaving
/// the filesystem. Returns how many entries were deleted.
fn remove_contents(dir: BorrowedFd<'_>, depth: usize) -> Result<u64> {
    if depth > REMOVE_MAX_DEPTH {
        return Err(Error::msg(format!("directories nested deeper than {REMOVE_MAX_DEPTH}: not deleted")));
    }
    let mut names = Vec::new();
    let mut entries = rustix::fs::Dir::read_from(dir).context(|| format!("reading {}", btrfs::describe_fd(dir)))?;
    while let Some(entry) = entries.read() {
        let entry = entry.context(|| format!("reading {}", btrfs::describe_fd(dir)))?;
        let name = entry.file_name().to_owned();
        if !matches!(name.to_bytes(), b"." | b"..") {
            names.push((name, entry.file_type()));
        }
    }
    drop(entries);
    let mut n = 0u64;
    for (name, ft) in names {
        let ft = match ft {
            FileType::Unknown => rustix::fs::statat(dir, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW)
                .map(|st| FileType::from_raw_mode(st.st_mode))
                .unwrap_or(FileType::Unknown),
            ft => ft,
        };
        if ft == FileType::Directory {
            let sub = rustix::fs::openat(
                dir,
                name.as_c_str(),
                OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .context(|| format!("opening {name:?} in {}", btrfs::describe_fd(dir)))?;
            n = n.saturating_add(remove_contents(sub.as_fd(), depth.saturating_add(1))?);
            rustix::fs::unlinkat(dir, name.as_c_str(), AtFlags::REMOVEDIR)
                .context(|| format!("deleting directory {name:?} in {}", btrfs::describe_fd(dir)))?;
        } else {
            rustix::fs::unlinkat(dir, name.as_c_str(), AtFlags::empty())
                .context(|| format!("deleting {name:?} in {}", btrfs::describe_fd(dir)))?;
        }
        n = n.saturating_add(1);
    }
    Ok(n)
}

impl RwStore {
    /// Get rid of a root: a subvolume is deleted (btrfs frees its space in
    /// the background), an overlay root is renamed into the trash directory,
    /// which [`start_emptying_trash`](Self::start_emptying_trash) empties.
    pub(super) fn discard(&self, dir: BorrowedFd<'_>, name: &str, shown: &str) -> Result<()> {
        match existing(dir, name)? {
            Existing::Subvolume => btrfs::delete_subvolume(dir, name),
            Existing::Overlay => match self.move_to_trash(dir, name, shown) {
                Ok(()) => Ok(()),
                Err(e) => {
                    // A full disk may refuse even the trash directory: delete
                    // now, which frees the space (slow, but rare).
                    log::warn!("{e}: deleting {shown} now instead");
                    let fd = open_dir(dir, name).context(|| format!("opening {shown}"))?;
                    remove_contents(fd.as_fd(), 0).map_err(|e| e.context(format!("deleting {shown}")))?;
                    drop(fd);
                    rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR).context(|| format!("deleting {shown}"))
                }
            },
            Existing::Absent => Ok(()),
            Existing::Other(kind) => {
                Err(Error::msg(format!("{shown} is a {kind}, not a root dockroot made: not deleted")))
            }
        }
    }

    /// Create the trash directory if there is none.
    pub(super) fn ensure_trash(&self) -> Result<OwnedFd> {
        let trash = self.trash_name();
        match rustix::fs::mkdirat(&self.parent, trash.as_str(), Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(Error::with(format!("creating {}", self.shown(&trash)), e)),
        }
        open_dir(self.parent.as_fd(), &trash).context(|| format!("opening {}", self.shown(&trash)))
    }

    /// Rename `name` in `dir` into the trash directory, under a unique name.
    fn move_to_trash(&self, dir: BorrowedFd<'_>, name: &str, shown: &str) -> Result<()> {
        let tdir = self.ensure_trash()?;
        let unique = format!("{}-{}-{name}", now_stamp(), rustix::process::getpid().as_raw_pid());
        let target = (1..).map(|n| format!("{unique}.{n}")).find(|t| {
            matches!(rustix::fs::statat(&tdir, t.as_str(), AtFlags::SYMLINK_NOFOLLOW), Err(rustix::io::Errno::NOENT))
        });
        let target = target.unwrap_or(unique);
        rustix::fs::renameat(dir, name, &tdir, target.as_str())
            .context(|| format!("moving {shown} into {}", self.shown(&self.trash_name())))
    }

    /// Delete what is in the trash directory in a child process, so that the
    /// boot does not wait for it. Returns whether a child was started.
    pub fn start_emptying_trash(&self) -> bool {
        let trash = self.trash_name();
        let Ok(dir) = open_dir(self.parent.as_fd(), &trash) else { return false };
        let Ok(mut entries) = rustix::fs::Dir::read_from(&dir) else { return false };
        let any =
            std::iter::from_fn(|| entries.read()).flatten().any(|e| !matches!(e.file_name().to_bytes(), b"." | b".."));
        if !any {
            return false;
        }
        let shown = self.shown(&trash);
        let pid = match crate::fork::fork_single_threaded(&format!("emptying {shown}")) {
            Ok(crate::fork::Forked::Parent(pid)) => pid.as_raw_nonzero(),
            Ok(crate::fork::Forked::Child) => {
                let t = std::time::Instant::now();
                let code = match remove_contents(dir.as_fd(), 0) {
                    Ok(n) => {
                        log::info!(
                            "emptied {shown} ({n} entries) in {} ms, in the background",
                            t.elapsed().as_millis()
                        );
                        0
                    }
                    Err(e) => {
                        log::warn!("could not empty {shown} (the next boot tries again): {e}");
                        1
                    }
                };
                crate::fork::exit_child(code)
            }
            Err(e) => {
                log::warn!("could not start deleting {shown} ({e}): the next boot tries again");
                return false;
            }
        };
        log::info!("deleting the old overlay roots in {shown} in the background (process {pid})");
        true
    }
}
