//! What the rule needs to know about the roots on the partition, looked at
//! the same way by the init and by `dockroot plan` (read-only).

use std::os::fd::AsFd;
use std::path::Path;

use crate::config::BootMode;
use crate::error::{Error, Result};
use crate::mounts::{mkdir_p, open_dir_path, overlay_of};
use crate::policy::{Bootable, Facts, RootFacts, Which};
use crate::rwlayer::{At, Existing, RwStore};
use crate::{overlay, switch_root};

/// The roots at the rw layer's name and in the kept directory, nothing
/// looked inside yet (see [`check`]).
pub fn gather(store: &RwStore, mode: BootMode) -> Facts {
    let mut f = Facts::new(mode, store.rw_shown());
    if store.kind(&At::Current).is_ok_and(Existing::is_root) {
        f.current = Some(RootFacts { name: String::new(), shown: store.rw_shown(), bootable: Bootable::Unchecked });
    }
    match store.kept() {
        Ok(names) => {
            f.kept = names
                .into_iter()
                .map(|n| RootFacts { shown: store.kept_shown(&n), name: n, bootable: Bootable::Unchecked })
                .collect()
        }
        Err(e) => f.kept_error = Some(format!("the kept roots cannot be listed: {e}")),
    }
    f
}

/// Where to look inside roots: the top level's mount and an empty directory
/// to mount an overlay root on.
pub struct Lookout<'a> {
    pub top: &'a Path,
    pub check_mount: &'a Path,
    /// The init's candidates (`init=` or the defaults).
    pub candidates: &'a [String],
}

/// Whether root `which` can boot: it is a root and has an init.
pub fn check(store: &RwStore, which: &Which, look: &Lookout<'_>) -> Bootable {
    let at = match which {
        Which::Current => At::Current,
        Which::Kept(name) => At::Kept(name.clone()),
    };
    match has_init(store, &at, look) {
        Ok(()) => Bootable::Yes,
        Err(e) => {
            log::warn!("{} cannot boot: {e}", store.shown_at(&at));
            Bootable::No(e.to_string())
        }
    }
}

/// Whether the root `at` has an init: looked up in the subvolume, or in a
/// read-only overlay of the overlay root's upper directory over its layers.
fn has_init(store: &RwStore, at: &At, look: &Lookout<'_>) -> Result<()> {
    match store.kind(at)? {
        Existing::Subvolume => switch_root::find_init(store.open_root(at)?.as_fd(), look.candidates).map(drop),
        Existing::Overlay => {
            let (ov, _) = overlay_of(store, at, false, look.top)?;
            let mnt = look.check_mount;
            mkdir_p(&mnt.to_string_lossy())?;
            overlay::mount(&ov, mnt, true)
                .map_err(|e| e.context(format!("mounting {} read-only to look for its init", store.shown_at(at))))?;
            let found = open_dir_path(&mnt.to_string_lossy())
                .and_then(|fd| switch_root::find_init(fd.as_fd(), look.candidates));
            if let Err(e) = rustix::mount::unmount(mnt, rustix::mount::UnmountFlags::DETACH) {
                log::warn!("could not unmount {}: {e}", mnt.display());
            }
            found.map(drop)
        }
        Existing::Absent => Err(Error::msg(format!("there is no {}", store.shown_at(at)))),
        Existing::Other(kind) => Err(Error::msg(format!("{} is a {kind}, not a root", store.shown_at(at)))),
    }
}
