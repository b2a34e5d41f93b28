//! Stage 7: the rw layer, a writable btrfs snapshot of the image's root (or
//! the upper and work directories of an overlay of the image's layers), and
//! the previous roots kept beside it.
//!
//! The rw layer is named by `rootflags=subvol=NAME` (or `dockroot.rw=NAME`).
//! It is one of two kinds:
//! - a btrfs subvolume, a writable snapshot of the image's subvolume;
//! - an overlay root: a directory holding `upper/`, `work/` and
//!   `dockroot-overlay.json` (which layers, relative to the top level, lie
//!   under the upper directory); the init mounts it as an overlayfs.
//!
//! Either way it is never
//! rebuilt in place: a new root is built under a temporary name, synced, marked
//! ready by a rename, and only then is the previous root retired (renamed into
//! the kept directory and made read-only) and the new one renamed into place.
//! Each rename is atomic, so a power cut at any moment leaves either the old
//! root or a complete new one (never a half-applied top layer at NAME), and
//! [`RwStore::recover`] finishes or undoes an interrupted boot:
//!
//! | on disk after a crash            | recovery                                   |
//! |----------------------------------|--------------------------------------------|
//! | `NAME.dockroot-tmp`              | half built: deleted                        |
//! | entries in `NAME.dockroot-trash` | deleted in the background                  |
//! | `NAME.dockroot-skel`             | an overlay root's skeleton: deleted        |
//! | `NAME.dockroot-ready`, NAME      | complete but not installed: deleted        |
//! | `NAME.dockroot-ready`, no NAME   | the old root was retired: ready installed  |
//! | a writable root in `NAME.kept/`  | made read-only                             |
//!
//! Kept roots live in `NAME.kept/<created>-<image id, 12 hex>`, where
//! `created` is the UTC time the root was made; the newest are kept
//! (`dockroot.keep=`), older ones are deleted with their nested subvolumes.
//! Overlay roots are not deleted in the boot's path: they are renamed into
//! `NAME.dockroot-trash/` (atomic, instant) and a child process deletes them
//! while the system boots (a later boot finishes what it did not). Kept
//! subvolumes are made read-only; kept overlay roots cannot be, but nothing
//! mounts them writable: booting one copies it.
//! Anything at NAME that is neither is user data and is refused.
//!
//! The pure planning lives beside the thin syscall code that carries it
//! out: `recover` (what an interrupted boot left and how to finish it),
//! `kept` (kept roots: their names, the time stamps, retiring and pruning),
//! `trash` (overlay roots deleted in a child process). This file holds the
//! types, the overlay spec (pure) and the install itself: open, begin,
//! commit, abort (thin: `openat2`, `renameat`, snapshots, xattrs).

mod kept;
mod recover;
mod trash;

pub use kept::{is_kept_name, kept_name, now_stamp, prune_plan, utc_stamp};
pub use recover::{check_current, recovery_plan, Recovery};

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};

use crate::btrfs;
use crate::error::{Context, Error, Result};

const TMP_SUFFIX: &str = ".dockroot-tmp";
const READY_SUFFIX: &str = ".dockroot-ready";
const KEPT_SUFFIX: &str = ".kept";
/// Test builds only: where `dockroot.fault=pause:STEP` stops the install (see `RwStore::fault_point`).
#[cfg(feature = "fault-injection")]
pub static PAUSE_AT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
const TRASH_SUFFIX: &str = ".dockroot-trash";
const SKEL_SUFFIX: &str = ".dockroot-skel";
/// The file naming an overlay root's layers.
pub const OVERLAY_SPEC: &str = "dockroot-overlay.json";
/// An overlay root's upper and work directories.
pub const UPPER: &str = "upper";
pub const WORK: &str = "work";
/// Cap for reading an overlay spec.
const OVERLAY_SPEC_CAP: u64 = 1 << 20;
const XATTR_CREATED: &str = "user.dockroot.created";
const XATTR_IMAGE: &str = "user.dockroot.image";

/// What is at one of the rw layer's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    Absent,
    Subvolume,
    /// A directory holding an overlay root made by dockroot.
    Overlay,
    /// A directory that is not a subvolume root, or any other file type.
    Other(&'static str),
}

impl Existing {
    /// A root dockroot made (either kind).
    pub fn is_root(self) -> bool {
        matches!(self, Existing::Subvolume | Existing::Overlay)
    }
}

/// Where a root came from, stored as xattrs on its top directory so that a
/// retired root can be named after its own boot, not the retirement's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootInfo {
    /// UTC time the root was created, as [`utc_stamp`] writes it.
    pub created: String,
    /// The image ID ("sha256:...") or a word for what it was made from.
    pub image: String,
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

fn open_dir(parent: BorrowedFd<'_>, name: &str) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(
        parent,
        name,
        OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

fn existing(parent: BorrowedFd<'_>, name: &str) -> Result<Existing> {
    let st = match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(rustix::io::Errno::NOENT) => return Ok(Existing::Absent),
        Err(e) => return Err(Error::with(format!("stat of {name}"), e)),
    };
    Ok(match FileType::from_raw_mode(st.st_mode) {
        FileType::Directory => {
            let fd = open_dir(parent, name).context(|| format!("opening {name}"))?;
            if btrfs::is_subvolume(fd.as_fd())? {
                Existing::Subvolume
            } else if is_overlay_root(fd.as_fd()) {
                Existing::Overlay
            } else {
                Existing::Other("plain directory")
            }
        }
        FileType::Symlink => Existing::Other("symbolic link"),
        FileType::RegularFile => Existing::Other("regular file"),
        _ => Existing::Other("special file"),
    })
}

/// Whether `dir` is an overlay root: it holds a regular [`OVERLAY_SPEC`]
/// file and an [`UPPER`] directory.
fn is_overlay_root(dir: BorrowedFd<'_>) -> bool {
    let is = |name: &str, want: FileType| {
        rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
            .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == want)
    };
    is(OVERLAY_SPEC, FileType::RegularFile) && is(UPPER, FileType::Directory)
}

/// Which layers lie under an overlay root's upper directory: the store's
/// driver directory and the layers relative to it, topmost first. Written
/// into every overlay root, so that booting it later needs no store lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlaySpec {
    /// Relative to the top level of the root partition.
    pub base: PathBuf,
    /// Relative to `base`, topmost first.
    pub lowerdirs: Vec<PathBuf>,
}

/// A path inside the root partition: relative, no `..`, not empty (pure).
fn inside(path: &Path) -> bool {
    path.components().next().is_some() && path.components().all(|c| matches!(c, Component::Normal(_)))
}

impl OverlaySpec {
    /// The JSON stored as [`OVERLAY_SPEC`] (pure).
    pub fn to_json(&self) -> Result<String> {
        let lowers: Vec<&str> = self
            .lowerdirs
            .iter()
            .map(|l| l.to_str().context(|| format!("layer path {} is not UTF-8", l.display())))
            .collect::<Result<_>>()?;
        let base = self.base.to_str().context(|| format!("{} is not UTF-8", self.base.display()))?;
        Ok(format!("{:#}\n", serde_json::json!({ "base": base, "lowerdirs": lowers })))
    }

    /// Parse and check an [`OVERLAY_SPEC`]: every path stays inside the root
    /// partition (pure).
    pub fn from_json(bytes: &[u8]) -> Result<OverlaySpec> {
        let v: serde_json::Value = serde_json::from_slice(bytes).context(|| format!("{OVERLAY_SPEC} is not JSON"))?;
        let base = v.get("base").and_then(|b| b.as_str()).context(|| format!("{OVERLAY_SPEC} has no \"base\""))?;
        let lowers = v
            .get("lowerdirs")
            .and_then(|l| l.as_array())
            .context(|| format!("{OVERLAY_SPEC} has no \"lowerdirs\" list"))?;
        let mut spec = OverlaySpec { base: PathBuf::from(base), lowerdirs: Vec::new() };
        for l in lowers {
            let l = l.as_str().context(|| format!("{OVERLAY_SPEC}: a layer is not a string"))?;
            spec.lowerdirs.push(PathBuf::from(l));
        }
        if !inside(&spec.base) {
            return Err(Error::msg(format!("{OVERLAY_SPEC}: base {base:?} is not a path inside the root partition")));
        }
        if let Some(bad) = spec.lowerdirs.iter().find(|l| !inside(l)) {
            return Err(Error::msg(format!("{OVERLAY_SPEC}: layer {} is not a path below {base}", bad.display())));
        }
        if spec.lowerdirs.is_empty() {
            return Err(Error::msg(format!("{OVERLAY_SPEC}: no layers")));
        }
        Ok(spec)
    }
}

/// Read a root's [`RootInfo`] from its xattrs (None if it has none: made by
/// another tool, or by hand).
pub fn read_info(root: BorrowedFd<'_>) -> Option<RootInfo> {
    let get = |name: &str| -> Option<String> {
        let mut buf = [0u8; 128];
        let n = rustix::fs::fgetxattr(root, name, &mut buf).ok()?;
        String::from_utf8(buf.get(..n)?.to_vec()).ok()
    };
    Some(RootInfo { created: get(XATTR_CREATED)?, image: get(XATTR_IMAGE)? })
}

fn write_info(root: BorrowedFd<'_>, info: &RootInfo) -> Result<()> {
    for (name, value) in [(XATTR_CREATED, &info.created), (XATTR_IMAGE, &info.image)] {
        rustix::fs::fsetxattr(root, name, value.as_bytes(), rustix::fs::XattrFlags::empty())
            .context(|| format!("recording {name}={value} on the new rw layer"))?;
    }
    Ok(())
}

/// What [`RwStore::commit`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Commit {
    /// Where the previous root went, relative to the parent directory.
    pub retired: Option<String>,
    /// Kept roots deleted to respect `dockroot.keep=`.
    pub pruned: Vec<String>,
}

/// One of the names a root can have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum At {
    /// NAME, the rw layer.
    Current,
    /// NAME.dockroot-tmp, a root being built.
    Tmp,
    /// NAME.kept/<name>.
    Kept(String),
}

/// The rw layer's directory on the root partition, and the operations on it.
pub struct RwStore {
    parent: OwnedFd,
    /// The parent directory relative to the top level.
    parent_path: PathBuf,
    /// "/a/b" of the parent directory, for messages.
    parent_shown: String,
    name: String,
}

impl RwStore {
    /// Open the parent directory of the rw layer `rw` (components below the
    /// top level `top`) and refuse at once if NAME holds anything but a subvolume.
    pub fn open(top: BorrowedFd<'_>, rw: &[String]) -> Result<RwStore> {
        let (name, parent) = rw.split_last().context(|| "rootflags=subvol= names the top level, not a subvolume")?;
        btrfs::validate_name(&format!("{name}{READY_SUFFIX}"))?;
        let parent_fd =
            open_beneath(top, parent).context(|| format!("the parent directory of the rw layer /{}", rw.join("/")))?;
        let store = RwStore {
            parent: parent_fd,
            parent_path: parent.iter().collect(),
            parent_shown: parent.iter().map(|c| format!("/{c}")).collect(),
            name: name.clone(),
        };
        check_current(existing(store.parent.as_fd(), &store.name)?, &rw.join("/"))?;
        Ok(store)
    }

    fn shown(&self, name: &str) -> String {
        format!("{}/{name}", self.parent_shown)
    }

    /// The rw layer's path from the top level, e.g. "/rwlayer".
    pub fn rw_shown(&self) -> String {
        self.shown(&self.name)
    }

    /// The boot counters beside the rw layer ([`crate::trial`]); with `create`,
    /// made when missing, else None when missing.
    pub fn trials(&self, create: bool) -> Result<Option<crate::trial::Trials>> {
        crate::trial::Trials::open(self.parent.as_fd(), &self.parent_shown, &self.name, create)
    }

    /// The current root's image ID, as recorded when it was made.
    pub fn current_image(&self) -> Option<String> {
        read_info(self.open_root(&At::Current).ok()?.as_fd()).map(|i| i.image)
    }

    fn tmp(&self) -> String {
        format!("{}{TMP_SUFFIX}", self.name)
    }

    fn ready(&self) -> String {
        format!("{}{READY_SUFFIX}", self.name)
    }

    fn kept_dir_name(&self) -> String {
        format!("{}{KEPT_SUFFIX}", self.name)
    }

    fn trash_name(&self) -> String {
        format!("{}{TRASH_SUFFIX}", self.name)
    }

    /// The path of a root relative to the top level.
    pub fn path(&self, at: &At) -> PathBuf {
        match at {
            At::Current => self.parent_path.join(&self.name),
            At::Tmp => self.parent_path.join(self.tmp()),
            At::Kept(k) => self.parent_path.join(self.kept_dir_name()).join(k),
        }
    }

    /// A root's path from the top level, for messages.
    pub fn shown_at(&self, at: &At) -> String {
        format!("/{}", self.path(at).display())
    }

    /// The directory holding a root and the root's name in it.
    fn locate(&self, at: &At) -> Result<(OwnedFd, String)> {
        let dup = |fd: &OwnedFd| fd.try_clone().context(|| format!("duplicating the fd of {}", self.parent_shown));
        match at {
            At::Current => Ok((dup(&self.parent)?, self.name.clone())),
            At::Tmp => Ok((dup(&self.parent)?, self.tmp())),
            At::Kept(k) => {
                let dir = self.kept_dir()?.context(|| format!("no {} directory", self.shown(&self.kept_dir_name())))?;
                Ok((dir, k.clone()))
            }
        }
    }

    /// What is at one of the names.
    pub fn kind(&self, at: &At) -> Result<Existing> {
        let (dir, name) = self.locate(at)?;
        existing(dir.as_fd(), &name)
    }

    /// Open a root's top directory.
    pub fn open_root(&self, at: &At) -> Result<OwnedFd> {
        let (dir, name) = self.locate(at)?;
        open_dir(dir.as_fd(), &name).context(|| format!("opening {}", self.shown_at(at)))
    }

    /// Read an overlay root's layers.
    pub fn overlay_spec(&self, at: &At) -> Result<OverlaySpec> {
        let root = self.open_root(at)?;
        let read = || -> std::io::Result<Vec<u8>> {
            use std::io::Read;
            let fd = rustix::fs::openat(
                root.as_fd(),
                OVERLAY_SPEC,
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            let mut buf = Vec::new();
            std::fs::File::from(fd).take(OVERLAY_SPEC_CAP).read_to_end(&mut buf)?;
            Ok(buf)
        };
        let bytes = read().context(|| format!("reading {}/{OVERLAY_SPEC}", self.shown_at(at)))?;
        OverlaySpec::from_json(&bytes).map_err(|e| e.context(format!("in {}", self.shown_at(at))))
    }

    /// Start a new overlay root at the temporary name: empty upper and work
    /// directories over the layers of `spec`, labelled with `info`. Returns
    /// its top directory.
    ///
    /// The skeleton is made under `NAME.dockroot-skel` and renamed to the
    /// temporary name when complete, so that a crash or an error half way
    /// leaves only a skeleton, which [`recover`](Self::recover) and the next
    /// call remove (and nothing that looks like user data at our names).
    pub fn begin_overlay(&self, spec: &OverlaySpec, info: &RootInfo) -> Result<OwnedFd> {
        let p = self.parent.as_fd();
        let skel = self.skel();
        let json = spec.to_json()?;
        self.remove_skeleton()?;
        // Made now, while there is space: discarding this root later (a full
        // disk during the top layer, say) is then a rename.
        self.ensure_trash()?;
        let made = (|| -> Result<()> {
            rustix::fs::mkdirat(p, skel.as_str(), Mode::from_raw_mode(0o755))
                .context(|| format!("creating {}", self.shown(&skel)))?;
            let fd = open_dir(p, &skel).context(|| format!("opening {}", self.shown(&skel)))?;
            for (dir, mode) in [(UPPER, 0o755), (WORK, 0o700)] {
                rustix::fs::mkdirat(&fd, dir, Mode::from_raw_mode(mode))
                    .context(|| format!("creating {}/{dir}", self.shown(&skel)))?;
            }
            let file = rustix::fs::openat(
                &fd,
                OVERLAY_SPEC,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o644),
            )
            .context(|| format!("creating {}/{OVERLAY_SPEC}", self.shown(&skel)))?;
            use std::io::Write;
            std::fs::File::from(file)
                .write_all(json.as_bytes())
                .context(|| format!("writing {}/{OVERLAY_SPEC}", self.shown(&skel)))?;
            write_info(fd.as_fd(), info)?;
            rustix::fs::renameat(p, skel.as_str(), p, self.tmp().as_str())
                .context(|| format!("renaming {} to {}", self.shown(&skel), self.shown(&self.tmp())))
        })();
        if let Err(e) = made {
            if let Err(e2) = self.remove_skeleton() {
                log::warn!("{e2}");
            }
            return Err(e);
        }
        open_dir(p, &self.tmp()).context(|| format!("opening {}", self.shown(&self.tmp())))
    }

    fn skel(&self) -> String {
        format!("{}{SKEL_SUFFIX}", self.name)
    }

    /// The current rw layer's root and its kind, if there is one.
    pub fn current(&self) -> Result<Option<(OwnedFd, Existing)>> {
        match existing(self.parent.as_fd(), &self.name)? {
            e if e.is_root() => Ok(Some((
                open_dir(self.parent.as_fd(), &self.name).context(|| format!("opening {}", self.rw_shown()))?,
                e,
            ))),
            _ => Ok(None),
        }
    }

    /// Start a new root: a writable snapshot of `source` at the temporary
    /// name, labelled with `info`. Returns its root directory.
    pub fn begin(&self, source: BorrowedFd<'_>, info: &RootInfo) -> Result<OwnedFd> {
        let p = self.parent.as_fd();
        btrfs::snapshot(source, p, &self.tmp(), false)?;
        let fd = open_dir(p, &self.tmp()).context(|| format!("opening {}", self.shown(&self.tmp())))?;
        write_info(fd.as_fd(), info)?;
        Ok(fd)
    }

    /// Throw away a new root that could not be completed.
    /// Returns a warning if it could not (the next boot tries again).
    pub fn abort(&self) -> Option<String> {
        if existing(self.parent.as_fd(), &self.tmp()).is_ok_and(Existing::is_root) {
            if let Err(e) = self.discard(self.parent.as_fd(), &self.tmp(), &self.shown(&self.tmp())) {
                return Some(format!(
                    "could not delete the unfinished {} (the next boot will): {e}",
                    self.shown(&self.tmp())
                ));
            }
        }
        None
    }

    /// Install the new root built since [`begin`](Self::begin): sync it, mark
    /// it ready, retire the current root into the kept directory (read-only),
    /// rename the new one into place, sync, then delete kept roots beyond `keep`.
    ///
    /// One sync before the first rename makes the new root's data durable;
    /// the renames need none between them: btrfs commits metadata in
    /// transactions and ext4/xfs journal it in order, so after a crash the
    /// disk shows a prefix of the renames, which [`recover`](Self::recover)
    /// completes.
    ///
    /// On an error the previous root is left (or put back) in place at the
    /// rw layer's name and the new one is discarded as far as possible, so
    /// the caller can boot the previous root instead of rebooting into the
    /// same failure: a failed install never leaves the machine without the
    /// root it booted last.
    pub fn commit(&self, keep: usize) -> Result<Commit> {
        let p = self.parent.as_fd();
        btrfs::sync(p)?;
        rustix::fs::renameat(p, self.tmp(), p, self.ready())
            .context(|| format!("renaming {} to {}", self.shown(&self.tmp()), self.shown(&self.ready())))?;
        self.fault_point("ready");
        let mut commit = Commit::default();
        let mut retired_as = None;
        if let Some((current, kind)) = self.current()? {
            match self.retire(current, kind) {
                Ok((shown, name)) => {
                    commit.retired = Some(shown);
                    retired_as = Some((name, kind));
                }
                Err(e) => return Err(self.drop_ready(e.context("the previous root stays in place"))),
            }
        }
        if let Err(e) = rustix::fs::renameat(p, self.ready(), p, self.name.as_str()) {
            let e = Error::with(format!("renaming {} to {}", self.shown(&self.ready()), self.rw_shown()), e);
            return Err(match retired_as {
                Some((name, kind)) => match self.unretire(&name, kind) {
                    Ok(()) => self.drop_ready(e.context("the previous root was put back")),
                    // Left for the next boot's recovery, which installs the ready root.
                    Err(back) => e.context(format!("and putting the previous root back failed too: {back}")),
                },
                None => self.drop_ready(e),
            });
        }
        // From here on the new root is installed: what fails costs durability
        // or space, not the boot.
        if let Err(e) = btrfs::sync(p) {
            log::warn!("could not sync after installing {}: {e}", self.rw_shown());
        }
        commit.pruned = self.prune(keep);
        if !commit.pruned.is_empty() {
            // Persist the deletions now rather than at the next transaction commit.
            if let Err(e) = btrfs::sync(p) {
                log::warn!("could not sync after deleting old kept roots: {e}");
            }
        }
        Ok(commit)
    }

    /// Test builds only (`--features fault-injection`, `dockroot.fault=pause:STEP`):
    /// at `step`, commit what is done so far (as the kernel's periodic commit
    /// could have at that moment), say so, and stop, so that a test can cut the
    /// power in a state timing alone rarely reaches. A no-op otherwise.
    fn fault_point(&self, step: &str) {
        #[cfg(feature = "fault-injection")]
        if PAUSE_AT.get().is_some_and(|s| s == step) {
            if let Err(e) = btrfs::sync(self.parent.as_fd()) {
                log::warn!("fault: sync at {step}: {e}");
            }
            log::warn!("fault: paused at {step} (dockroot.fault=pause:{step})");
            loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
        }
        let _ = step;
    }

    /// Discard the ready root of a failed install; `err` gains a note if that fails too.
    fn drop_ready(&self, err: Error) -> Error {
        match self.discard(self.parent.as_fd(), &self.ready(), &self.shown(&self.ready())) {
            Ok(()) => err,
            Err(e) => err.context(format!("(the next boot deletes {}: {e})", self.shown(&self.ready()))),
        }
    }
}
