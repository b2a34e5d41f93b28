//! The rw layer's roots as found on a disk mounted on the host ([`DiskState`]): the
//! current root, the temporary, ready and skeleton names a boot leaves while it works,
//! the kept roots and the trash, each root as a [`tree_digest`]. For both kinds of root
//! ([`RootKind`]): btrfs subvolumes and overlay root directories. Reading walks the
//! mounted disk (and asks `btrfs property` for read-only flags); the rest is pure.

use std::collections::BTreeMap;
use std::path::Path;

use crate::{digest_created, sh, tree_digest, DIGEST_CREATED};

/// A [`tree_digest`].
pub type Digest = BTreeMap<String, String>;

/// What the rw layer's roots are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RootKind {
    /// btrfs subvolumes (`rootflags=subvol=rwlayer`); kept roots are read-only snapshots.
    Btrfs,
    /// Overlay root directories (`dockroot.rw=rwlayer`: `upper/`, `work/`,
    /// `dockroot-overlay.json`); pruned roots go into the trash.
    Overlay,
}

/// The rw layer's name on the disks of the tests.
pub const RW: &str = "rwlayer";
/// Where pruned overlay roots wait for the background deleter.
pub const TRASH: &str = "rwlayer.dockroot-trash";

impl RootKind {
    /// Every name dockroot gives the rw layer's roots (the rest of the disk must never change).
    pub fn rw_names(self) -> &'static [&'static str] {
        match self {
            RootKind::Btrfs => &["rwlayer", "rwlayer.kept", "rwlayer.dockroot-tmp", "rwlayer.dockroot-ready"],
            RootKind::Overlay => &[
                "rwlayer",
                "rwlayer.kept",
                "rwlayer.dockroot-tmp",
                "rwlayer.dockroot-ready",
                "rwlayer.dockroot-skel",
                TRASH,
            ],
        }
    }
}

/// One root (the rw layer, the ready one, or a kept one) as found on the disk.
#[derive(Clone, Debug)]
pub struct Root {
    /// Everything in it (an overlay root's work directory left out).
    pub digest: Digest,
    /// A btrfs root's read-only flag (None: an overlay root has none).
    pub readonly: Option<bool>,
}

impl Root {
    /// The root at `path`, if there is one.
    pub fn read(kind: RootKind, path: &Path) -> Option<Root> {
        path.symlink_metadata().ok()?;
        Some(match kind {
            RootKind::Btrfs => {
                let ro = sh(&format!("btrfs property get -ts '{}' ro", path.display()));
                Root { digest: tree_digest(path, &[]), readonly: Some(ro.trim() == "ro=true") }
            }
            RootKind::Overlay => Root { digest: tree_digest(path, &["work"]), readonly: None },
        })
    }

    /// When dockroot made it (its `user.dockroot.created` xattr).
    pub fn created(&self) -> String {
        digest_created(&self.digest)
    }

    /// Without the creation stamp and an overlay's own uuid: equal for every complete
    /// fresh root of the image.
    pub fn content(&self) -> Digest {
        self.digest
            .iter()
            .filter(|(k, _)| k.as_str() != DIGEST_CREATED && !k.ends_with(" xattr trusted.overlay.uuid"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Without the xattrs overlayfs itself sets in an upper directory when the root
    /// is mounted (`trusted.overlay.origin`, `.impure`, ...: on directories the host
    /// made in it): what a root that booted since must still have.
    pub fn files(&self) -> Digest {
        self.digest
            .iter()
            .filter(|(k, _)| !k.contains(" xattr trusted.overlay."))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// What a copy of this root (`dockroot.boot=previous`) must hold: its files,
    /// without its creation stamp.
    pub fn copied(&self) -> Digest {
        let mut d = self.files();
        d.remove(DIGEST_CREATED);
        d
    }

    /// Whether it is an overlay root (a description and an upper directory).
    pub fn is_overlay_root(&self) -> bool {
        self.digest.contains_key("dockroot-overlay.json")
            && self.digest.get("upper").is_some_and(|v| v.starts_with("dir"))
    }
}

/// The names in `dir`, sorted (none if it does not exist).
pub fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| {
                e.unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

/// The rw layer's names and the rest of the disk.
#[derive(Clone, Debug)]
pub struct DiskState {
    pub kind: RootKind,
    /// The disk outside the rw layer's names.
    pub outside: Digest,
    pub current: Option<Root>,
    pub tmp: bool,
    /// An overlay skeleton (`NAME.dockroot-skel`; never on btrfs).
    pub skel: bool,
    pub ready: Option<Root>,
    pub kept: BTreeMap<String, Root>,
    /// The trash's entries (overlay roots; never on btrfs).
    pub trash: Vec<String>,
}

impl DiskState {
    /// Reads the disk mounted at `top`.
    pub fn read(kind: RootKind, top: &Path) -> DiskState {
        let kept = names_in(&top.join("rwlayer.kept"))
            .into_iter()
            .map(|n| {
                let r = Root::read(kind, &top.join("rwlayer.kept").join(&n)).expect("a kept root vanished");
                (n, r)
            })
            .collect();
        let exists = |n: &str| top.join(n).symlink_metadata().is_ok();
        let mut outside = tree_digest(top, kind.rw_names());
        let overlay = kind == RootKind::Overlay;
        if overlay {
            // The top level's link count changes with the number of directories in it
            // (the trash directory appears): its other attributes are still compared.
            if let Some(v) = outside.get_mut(".") {
                *v = v.split(" links ").next().unwrap_or_default().to_string();
            }
        }
        DiskState {
            kind,
            outside,
            current: Root::read(kind, &top.join(RW)),
            tmp: exists("rwlayer.dockroot-tmp"),
            skel: overlay && exists("rwlayer.dockroot-skel"),
            ready: Root::read(kind, &top.join("rwlayer.dockroot-ready")),
            kept,
            trash: if overlay { names_in(&top.join(TRASH)) } else { Vec::new() },
        }
    }

    /// The names a finished boot must not leave.
    pub fn leftovers(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.tmp {
            v.push("rwlayer.dockroot-tmp");
        }
        if self.skel {
            v.push("rwlayer.dockroot-skel");
        }
        if self.ready.is_some() {
            v.push("rwlayer.dockroot-ready");
        }
        v
    }

    /// The root the next boot starts from: the current one, or the ready one it
    /// installs first when a cut left no current root.
    pub fn effective_current(&self) -> Option<&Root> {
        self.current.as_ref().or(self.ready.as_ref())
    }

    /// The newest kept root's name (kept names start with the creation stamp).
    pub fn newest_kept(&self) -> Option<(&String, &Root)> {
        self.kept.iter().next_back()
    }
}
