//! Stage 7: the rw layer, a writable btrfs snapshot of the image's root.
//!
//! The rw layer is the subvolume named by `rootflags=subvol=NAME`, relative
//! to the partition's top level. A previous boot's rw layer (with any
//! subvolumes the booted system nested in it) is deleted, then the image
//! subvolume is snapshotted to that name. Anything at that name that is not a
//! subvolume is user data: dockroot refuses to touch it.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};

use crate::btrfs;
use crate::error::{Context, Error, Result};

/// What is at the rw layer's name before we start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    Absent,
    Subvolume,
    /// A directory that is not a subvolume root, or any other file type.
    Other(&'static str),
}

/// One action on the rw layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Delete the previous rw layer, nested subvolumes first.
    DeletePrevious,
    /// Snapshot the image subvolume (writable) to the rw layer's name.
    Snapshot,
}

/// Plan the replacement of the rw layer (pure).
pub fn plan(existing: Existing, rw_name: &str) -> Result<Vec<Step>> {
    match existing {
        Existing::Absent => Ok(vec![Step::Snapshot]),
        Existing::Subvolume => Ok(vec![Step::DeletePrevious, Step::Snapshot]),
        Existing::Other(kind) => Err(Error::msg(format!(
            "the rw layer {rw_name:?} (rootflags=subvol=) exists but is a {kind}, not a btrfs subvolume: \
             refusing to delete it; move it away or choose another subvol= name"
        ))),
    }
}

/// Open the directory `components` below `top`, following no symlinks and
/// never leaving `top`.
pub fn open_beneath(top: BorrowedFd<'_>, components: &[String]) -> Result<OwnedFd> {
    let path = if components.is_empty() { ".".to_string() } else { components.join("/") };
    rustix::fs::openat2(
        top,
        path.as_str(),
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS | ResolveFlags::NO_XDEV,
    )
    .context(|| format!("opening /{path} on the root partition"))
}

fn existing(parent: BorrowedFd<'_>, name: &str) -> Result<Existing> {
    let st = match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(rustix::io::Errno::NOENT) => return Ok(Existing::Absent),
        Err(e) => return Err(Error::with(format!("stat of the rw layer {name}"), e)),
    };
    Ok(match FileType::from_raw_mode(st.st_mode) {
        FileType::Directory => {
            let fd =
                rustix::fs::openat(parent, name, OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
                    .context(|| format!("opening the rw layer {name}"))?;
            if btrfs::is_subvolume(fd.as_fd())? {
                Existing::Subvolume
            } else {
                Existing::Other("plain directory")
            }
        }
        FileType::Symlink => Existing::Other("symbolic link"),
        FileType::RegularFile => Existing::Other("regular file"),
        _ => Existing::Other("special file"),
    })
}

/// Replace the rw layer at `rw` (components below `top`, the top-level
/// subvolume) with a fresh writable snapshot of `image`. Returns an fd of the
/// new rw layer's root directory.
pub fn replace(top: BorrowedFd<'_>, rw: &[String], image: BorrowedFd<'_>) -> Result<OwnedFd> {
    let (name, parent_components) = rw
        .split_last()
        .context(|| "rootflags=subvol= names the top level itself; it must name the rw layer's subvolume")?;
    let display = rw.join("/");
    let parent =
        open_beneath(top, parent_components).context(|| format!("the parent directory of the rw layer {display}"))?;
    for step in plan(existing(parent.as_fd(), name)?, &display)? {
        match step {
            Step::DeletePrevious => {
                log::info!("deleting the previous rw layer /{display}");
                btrfs::delete_subvolume(parent.as_fd(), name)
                    .map_err(|e| e.context(format!("deleting the previous rw layer /{display}")))?;
            }
            Step::Snapshot => {
                btrfs::snapshot(image, parent.as_fd(), name, false)
                    .map_err(|e| e.context(format!("snapshotting the image to the rw layer /{display}")))?;
            }
        }
    }
    rustix::fs::openat(
        parent.as_fd(),
        name.as_str(),
        OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .context(|| format!("opening the new rw layer /{display}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans() {
        assert_eq!(plan(Existing::Absent, "rw").unwrap(), vec![Step::Snapshot]);
        assert_eq!(plan(Existing::Subvolume, "rw").unwrap(), vec![Step::DeletePrevious, Step::Snapshot]);
        let e = plan(Existing::Other("plain directory"), "roots/rw").unwrap_err().to_string();
        assert!(e.contains("\"roots/rw\"") && e.contains("plain directory") && e.contains("refusing"), "{e}");
    }
}
