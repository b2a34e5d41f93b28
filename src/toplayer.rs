//! Copy the machine's top layer into the rw layer with `cp -a src/. dest/`
//! semantics, without ever leaving the rw layer.
//!
//! The rw layer is a snapshot of an untrusted image: any directory in it may be
//! a symlink to "/" or "../../..". So every destination directory is reached
//! either with `openat(parent, name, O_NOFOLLOW)` from a directory already
//! resolved, or, where the image has a symlink in its place, with
//! `openat2(dest_root, relpath, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`, which
//! resolves symlinks as if dest_root were "/". The final component is never
//! followed: existing non-directories are unlinked and recreated with
//! O_EXCL|O_NOFOLLOW. The source (the machine's own files) is walked with
//! directory fds and never followed either.
//!
//! Pure part: [`decide`], what to do with one entry given what the source and
//! the destination hold. Thin part: [`apply`].

use std::collections::HashMap;
use std::ffi::{CStr, CString, OsStr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{
    AtFlags, Dir, FileType, Gid, Mode, OFlags, ResolveFlags, Stat, Timespec, Timestamps, Uid, XattrFlags, CWD,
};
use rustix::io::Errno;

use crate::error::{Error, Result};

/// How many directory levels below the top layer's root are copied before
/// [`apply`] gives up.
pub const MAX_DEPTH: usize = 256;

/// Linux's limits on an xattr name list and on one xattr value.
const XATTR_LIST_MAX: usize = 65536;
const XATTR_SIZE_MAX: usize = 65536;

/// Buffer for the read/write fallback of the data copy.
const COPY_BUF: usize = 128 * 1024;

/// What [`apply`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ApplyStats {
    /// Directories below the root created or merged into.
    pub dirs: u64,
    /// Regular files copied (data written).
    pub files: u64,
    /// Symlinks created.
    pub symlinks: u64,
    /// Extra names of a regular file made as hard links to its first copy.
    pub hardlinks: u64,
    /// Device nodes, fifos and sockets created.
    pub specials: u64,
    /// Bytes of file data copied or cloned.
    pub bytes: u64,
    /// Regular files whose data was cloned (FICLONE: the rw layer shares the
    /// top layer's extents, no data is copied), counted in `files` too.
    pub cloned: u64,
}

// ---------------------------------------------------------------------------
// Pure part
// ---------------------------------------------------------------------------

/// What the top layer has at a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SrcKind {
    Dir,
    /// A regular file (or the first name of a multiply-linked one).
    File,
    /// Another name of a regular file already copied.
    HardLink,
    Symlink,
    /// Block or character device, fifo or socket.
    Special,
}

/// What the rw layer has at the same path, not following the last component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DestKind {
    Absent,
    Dir,
    /// A symlink; `resolves_to_dir` says whether it leads (resolved inside the
    /// rw layer) to a directory. Only looked at when the source is a directory.
    Symlink {
        resolves_to_dir: bool,
    },
    /// A regular file, device, fifo or socket.
    Other,
}

/// What to do with one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    /// mkdir, then copy the directory's contents into it.
    MakeDir,
    /// Copy the directory's contents into the existing directory.
    MergeDir,
    /// Copy the directory's contents into the directory the image's symlink
    /// leads to, resolved inside the rw layer (merged-/usr: lib -> usr/lib).
    MergeThroughSymlink,
    /// Create the non-directory (nothing is there).
    Create,
    /// Unlink what is there, then create the non-directory.
    Replace,
}

/// Why an entry cannot be copied (the same cases `cp` refuses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Conflict {
    /// A directory over a file, special or a symlink that leads to no directory.
    DirOverNonDir,
    /// A non-directory over a directory.
    NonDirOverDir,
}

impl Conflict {
    fn describe(self) -> &'static str {
        match self {
            Conflict::DirOverNonDir => "cannot overwrite non-directory with directory",
            Conflict::NonDirOverDir => "cannot overwrite directory with non-directory",
        }
    }
}

/// Decide what to do with an entry of kind `src` when the rw layer holds `dest`.
fn decide(src: SrcKind, dest: DestKind) -> std::result::Result<Action, Conflict> {
    match (src, dest) {
        (SrcKind::Dir, DestKind::Absent) => Ok(Action::MakeDir),
        (SrcKind::Dir, DestKind::Dir) => Ok(Action::MergeDir),
        (SrcKind::Dir, DestKind::Symlink { resolves_to_dir: true }) => Ok(Action::MergeThroughSymlink),
        (SrcKind::Dir, DestKind::Symlink { resolves_to_dir: false } | DestKind::Other) => Err(Conflict::DirOverNonDir),
        (_, DestKind::Absent) => Ok(Action::Create),
        (_, DestKind::Dir) => Err(Conflict::NonDirOverDir),
        (_, DestKind::Symlink { .. } | DestKind::Other) => Ok(Action::Replace),
    }
}

/// The kind of a source entry from its file type; `seen` says whether a file
/// with more than one link was already copied under another name.
fn src_kind(ft: FileType, multiply_linked: bool, seen: bool) -> Option<SrcKind> {
    match ft {
        FileType::Directory => Some(SrcKind::Dir),
        FileType::RegularFile if multiply_linked && seen => Some(SrcKind::HardLink),
        FileType::RegularFile => Some(SrcKind::File),
        FileType::Symlink => Some(SrcKind::Symlink),
        FileType::Fifo | FileType::Socket | FileType::CharacterDevice | FileType::BlockDevice => Some(SrcKind::Special),
        _ => None,
    }
}

/// The kind of a destination entry from its file type (None: absent).
fn dest_kind(ft: Option<FileType>, symlink_resolves_to_dir: bool) -> DestKind {
    match ft {
        None => DestKind::Absent,
        Some(FileType::Directory) => DestKind::Dir,
        Some(FileType::Symlink) => DestKind::Symlink { resolves_to_dir: symlink_resolves_to_dir },
        Some(_) => DestKind::Other,
    }
}

/// Split a list of xattr names as the kernel returns it (each NUL-terminated).
fn xattr_names(list: &[u8]) -> impl Iterator<Item = &[u8]> {
    list.split(|&b| b == 0).filter(|n| !n.is_empty())
}

// ---------------------------------------------------------------------------
// System calls
// ---------------------------------------------------------------------------

/// Where the first copy of a multiply-linked file went.
struct FirstLink {
    rel: PathBuf,
    dev: u64,
    ino: u64,
}

/// An object whose xattrs are read or written: an open fd, or a path not
/// followed in its last component (symlinks and specials, through /proc).
#[derive(Clone, Copy)]
enum XTarget<'a> {
    Fd(BorrowedFd<'a>),
    Path(&'a CStr),
}

impl XTarget<'_> {
    fn list(self, buf: &mut [u8]) -> rustix::io::Result<usize> {
        match self {
            XTarget::Fd(fd) => rustix::fs::flistxattr(fd, buf),
            XTarget::Path(p) => rustix::fs::llistxattr(p, buf),
        }
    }
    fn list_size(self) -> rustix::io::Result<usize> {
        match self {
            XTarget::Fd(fd) => rustix::fs::flistxattr_query(fd),
            XTarget::Path(p) => rustix::fs::llistxattr_query(p),
        }
    }
    fn get(self, name: &CStr, buf: &mut [u8]) -> rustix::io::Result<usize> {
        match self {
            XTarget::Fd(fd) => rustix::fs::fgetxattr(fd, name, buf),
            XTarget::Path(p) => rustix::fs::lgetxattr(p, name, buf),
        }
    }
    fn get_size(self, name: &CStr) -> rustix::io::Result<usize> {
        match self {
            XTarget::Fd(fd) => rustix::fs::fgetxattr_query(fd, name),
            XTarget::Path(p) => rustix::fs::lgetxattr_query(p, name),
        }
    }
    fn set(self, name: &CStr, value: &[u8]) -> rustix::io::Result<()> {
        match self {
            XTarget::Fd(fd) => rustix::fs::fsetxattr(fd, name, value, XattrFlags::empty()),
            XTarget::Path(p) => rustix::fs::lsetxattr(p, name, value, XattrFlags::empty()),
        }
    }
}

#[allow(clippy::unnecessary_cast)]
fn ident(st: &Stat) -> (u64, u64) {
    (st.st_dev as u64, st.st_ino as u64)
}

#[allow(clippy::unnecessary_cast)]
fn times_of(st: &Stat) -> Timestamps {
    Timestamps {
        last_access: Timespec { tv_sec: st.st_atime as i64, tv_nsec: st.st_atime_nsec as _ },
        last_modification: Timespec { tv_sec: st.st_mtime as i64, tv_nsec: st.st_mtime_nsec as _ },
    }
}

fn owner(st: &Stat) -> (Option<Uid>, Option<Gid>) {
    // (uid_t)-1 means "leave unchanged" to chown; it is no real owner.
    let uid = (st.st_uid != !0).then(|| Uid::from_raw(st.st_uid));
    let gid = (st.st_gid != !0).then(|| Gid::from_raw(st.st_gid));
    (uid, gid)
}

fn perm_bits(st: &Stat) -> Mode {
    Mode::from_raw_mode(st.st_mode & 0o7777)
}

struct Copier<'a> {
    src_root: &'a Path,
    dest_root: BorrowedFd<'a>,
    stats: ApplyStats,
    links: HashMap<(u64, u64), FirstLink>,
    buf: Vec<u8>,
    /// Whether /proc/self/fd is there, for xattrs of symlinks and specials.
    proc_fd: bool,
    /// Whether FICLONE may work between the top layer and the rw layer (until
    /// the kernel says they are different filesystems or it cannot clone).
    try_clone: bool,
}

/// Copy the contents of directory `src` (the top layer) into the directory
/// `dest_root` (the rw layer's root), like `cp -a src/. dest/`: owners, modes,
/// times (ns), xattrs, symlinks, devices, fifos, sockets and hard links are
/// kept; existing non-directories are replaced, existing directories merged
/// into, and the root's own owner/mode/times/xattrs are applied to `dest_root`.
/// Nothing outside `dest_root` is ever written, whatever symlinks it holds.
/// File data is cloned (FICLONE) when both sides are on the same btrfs (any
/// subvolumes), else copied with copy_file_range, else read/write.
pub fn apply(src: &Path, dest_root: BorrowedFd<'_>) -> Result<ApplyStats> {
    let src_fd = rustix::fs::openat(
        CWD,
        src,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::with(format!("opening top layer directory {}", src.display()), e))?;
    let st = rustix::fs::fstat(&src_fd)
        .map_err(|e| Error::with(format!("stat on top layer directory {}", src.display()), e))?;
    let dest_st = rustix::fs::fstat(dest_root)
        .map_err(|e| Error::with("stat on the rw layer's root directory".to_string(), e))?;
    if FileType::from_raw_mode(dest_st.st_mode) != FileType::Directory {
        return Err(Error::msg(format!(
            "applying top layer {}: the rw layer's root is not a directory",
            src.display()
        )));
    }
    let mut cx = Copier {
        src_root: src,
        dest_root,
        stats: ApplyStats::default(),
        links: HashMap::new(),
        buf: Vec::new(),
        proc_fd: rustix::fs::statat(CWD, "/proc/self/fd", AtFlags::empty()).is_ok(),
        try_clone: true,
    };
    cx.copy_dir(src_fd, &st, dest_root, Path::new(""), 0)?;
    Ok(cx.stats)
}

impl Copier<'_> {
    fn err(&self, rel: &Path, what: &str, e: Errno) -> Error {
        Error::with(
            format!(
                "copying top layer entry {}/{} to /{} in the rw layer: {what}",
                self.src_root.display(),
                rel.display(),
                rel.display()
            ),
            e,
        )
    }

    fn msg(&self, rel: &Path, what: &str) -> Error {
        Error::msg(format!(
            "copying top layer entry {}/{} to /{} in the rw layer: {what}",
            self.src_root.display(),
            rel.display(),
            rel.display()
        ))
    }

    /// Open the directory at `rel` in the rw layer, resolving symlinks as if
    /// the rw layer's root were "/".
    fn open_in_root(&self, rel: &Path) -> rustix::io::Result<OwnedFd> {
        let path = if rel.as_os_str().is_empty() { Path::new(".") } else { rel };
        let mut tries = 0;
        loop {
            match rustix::fs::openat2(
                self.dest_root,
                path,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
                ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
            ) {
                // openat2 asks to retry when a concurrent rename raced the lookup.
                Err(Errno::AGAIN) if tries < 16 => tries += 1,
                r => return r,
            }
        }
    }

    /// Copy the entries of source directory `src` into `dest`, then give
    /// `dest` the source directory's owner, xattrs, mode and times.
    fn copy_dir(&mut self, src: OwnedFd, src_st: &Stat, dest: BorrowedFd<'_>, rel: &Path, depth: usize) -> Result<()> {
        let mut dir = Dir::new(src).map_err(|e| self.err(rel, "reading directory", e))?;
        while let Some(entry) = dir.read() {
            let entry = entry.map_err(|e| self.err(rel, "reading directory", e))?;
            let name = entry.file_name();
            if name == c"." || name == c".." {
                continue;
            }
            let src_dir = dir.fd().map_err(|e| self.err(rel, "reading directory", e))?;
            self.copy_entry(src_dir, dest, rel, name, depth)?;
        }
        let src_dir = dir.fd().map_err(|e| self.err(rel, "reading directory", e))?;
        self.finish_fd(src_dir, dest, src_st, rel)
    }

    /// Owner, xattrs, mode (after chown, which clears setuid bits), then times
    /// (last, as everything before changes ctime and a dir's mtime).
    fn finish_fd(&mut self, src: BorrowedFd<'_>, dest: BorrowedFd<'_>, st: &Stat, rel: &Path) -> Result<()> {
        let (uid, gid) = owner(st);
        rustix::fs::fchown(dest, uid, gid).map_err(|e| self.err(rel, "setting owner", e))?;
        self.copy_xattrs(XTarget::Fd(src), XTarget::Fd(dest), false, rel)?;
        rustix::fs::fchmod(dest, perm_bits(st)).map_err(|e| self.err(rel, "setting mode", e))?;
        rustix::fs::futimens(dest, &times_of(st)).map_err(|e| self.err(rel, "setting times", e))
    }

    fn copy_entry(
        &mut self,
        src_dir: BorrowedFd<'_>,
        dest_dir: BorrowedFd<'_>,
        parent_rel: &Path,
        name: &CStr,
        depth: usize,
    ) -> Result<()> {
        let rel = parent_rel.join(OsStr::from_bytes(name.to_bytes()));
        let st = rustix::fs::statat(src_dir, name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| self.err(&rel, "stat on the source", e))?;
        let ft = FileType::from_raw_mode(st.st_mode);
        let key = ident(&st);
        let kind = src_kind(ft, st.st_nlink > 1, self.links.contains_key(&key))
            .ok_or_else(|| self.msg(&rel, &format!("unsupported file type (mode {:o})", st.st_mode)))?;

        let dest_ft = match rustix::fs::statat(dest_dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(d) => Some(FileType::from_raw_mode(d.st_mode)),
            Err(Errno::NOENT) => None,
            Err(e) => return Err(self.err(&rel, "stat on the destination", e)),
        };
        // A directory over an image symlink: follow it, inside the rw layer only.
        let mut through_symlink = None;
        if kind == SrcKind::Dir && dest_ft == Some(FileType::Symlink) {
            match self.open_in_root(&rel) {
                Ok(fd) => through_symlink = Some(fd),
                Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => {}
                Err(e) => return Err(self.err(&rel, "resolving the destination symlink inside the rw layer", e)),
            }
        }
        let action =
            decide(kind, dest_kind(dest_ft, through_symlink.is_some())).map_err(|c| self.msg(&rel, c.describe()))?;

        if kind == SrcKind::Dir {
            if depth.saturating_add(1) >= MAX_DEPTH {
                return Err(self.msg(&rel, &format!("directories nest deeper than {MAX_DEPTH} levels")));
            }
            let src_child = rustix::fs::openat(
                src_dir,
                name,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| self.err(&rel, "opening the source directory", e))?;
            let dest_child = match (action, through_symlink) {
                (Action::MergeThroughSymlink, Some(fd)) => fd,
                (Action::MakeDir | Action::MergeDir, _) => {
                    if action == Action::MakeDir {
                        rustix::fs::mkdirat(dest_dir, name, Mode::from_raw_mode(0o700))
                            .map_err(|e| self.err(&rel, "creating directory", e))?;
                    }
                    rustix::fs::openat(
                        dest_dir,
                        name,
                        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::empty(),
                    )
                    .map_err(|e| self.err(&rel, "opening the destination directory", e))?
                }
                _ => return Err(self.msg(&rel, "internal error: no destination directory")),
            };
            self.copy_dir(src_child, &st, dest_child.as_fd(), &rel, depth + 1)?;
            self.stats.dirs += 1;
            return Ok(());
        }

        if action == Action::Replace {
            rustix::fs::unlinkat(dest_dir, name, AtFlags::empty())
                .map_err(|e| self.err(&rel, "removing the existing destination", e))?;
        }
        match kind {
            SrcKind::HardLink => self.link_or_copy(src_dir, dest_dir, name, &st, &rel),
            SrcKind::File => self.copy_file(src_dir, dest_dir, name, &st, &rel),
            SrcKind::Symlink => self.copy_symlink(src_dir, dest_dir, name, &st, &rel),
            SrcKind::Special => self.copy_special(src_dir, dest_dir, name, &st, &rel),
            SrcKind::Dir => Ok(()),
        }
    }

    fn copy_file(
        &mut self,
        src_dir: BorrowedFd<'_>,
        dest_dir: BorrowedFd<'_>,
        name: &CStr,
        st: &Stat,
        rel: &Path,
    ) -> Result<()> {
        let src = rustix::fs::openat(
            src_dir,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| self.err(rel, "opening the source file", e))?;
        let now = rustix::fs::fstat(&src).map_err(|e| self.err(rel, "stat on the source file", e))?;
        if ident(&now) != ident(st) {
            return Err(self.msg(rel, "the source file changed while being copied"));
        }
        let dest = rustix::fs::openat(
            dest_dir,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| self.err(rel, "creating the destination file", e))?;
        let size = u64::try_from(now.st_size).unwrap_or(0);
        let cloned = size > 0
            && self
                .clone_data(src.as_fd(), dest.as_fd())
                .map_err(|e| self.err(rel, "emptying after a failed clone", e))?;
        let n = if cloned {
            self.stats.cloned += 1;
            size
        } else {
            self.copy_data(src.as_fd(), dest.as_fd(), size).map_err(|e| self.err(rel, "copying data", e))?
        };
        self.finish_fd(src.as_fd(), dest.as_fd(), st, rel)?;
        self.stats.files += 1;
        self.stats.bytes = self.stats.bytes.saturating_add(n);
        if st.st_nlink > 1 {
            let d = rustix::fs::fstat(&dest).map_err(|e| self.err(rel, "stat on the destination file", e))?;
            let (dev, ino) = ident(&d);
            self.links.insert(ident(st), FirstLink { rel: rel.to_path_buf(), dev, ino });
        }
        Ok(())
    }

    /// Make `name` another link to the copy of the same source inode; copy the
    /// data again if the two names are on different filesystems.
    fn link_or_copy(
        &mut self,
        src_dir: BorrowedFd<'_>,
        dest_dir: BorrowedFd<'_>,
        name: &CStr,
        st: &Stat,
        rel: &Path,
    ) -> Result<()> {
        let Some(first) = self.links.get(&ident(st)) else {
            return self.copy_file(src_dir, dest_dir, name, st, rel);
        };
        let (first_rel, want) = (first.rel.clone(), (first.dev, first.ino));
        let first_parent = first_rel.parent().unwrap_or(Path::new(""));
        let Some(first_name) = first_rel.file_name() else {
            return Err(self.msg(rel, "internal error: hard link source has no name"));
        };
        let linked = self
            .open_in_root(first_parent)
            .and_then(|parent| rustix::fs::linkat(parent.as_fd(), first_name, dest_dir, name, AtFlags::empty()));
        match linked {
            Ok(()) => {}
            Err(Errno::XDEV | Errno::MLINK | Errno::NAMETOOLONG) => {
                return self.copy_file(src_dir, dest_dir, name, st, rel);
            }
            Err(e) => {
                return Err(self.err(rel, &format!("hard-linking to /{} in the rw layer", first_rel.display()), e));
            }
        }
        let d = rustix::fs::statat(dest_dir, name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| self.err(rel, "stat on the new hard link", e))?;
        if ident(&d) != want {
            return Err(self.msg(rel, &format!("hard link does not lead to the copy at /{}", first_rel.display())));
        }
        self.stats.hardlinks += 1;
        Ok(())
    }

    fn copy_symlink(
        &mut self,
        src_dir: BorrowedFd<'_>,
        dest_dir: BorrowedFd<'_>,
        name: &CStr,
        st: &Stat,
        rel: &Path,
    ) -> Result<()> {
        let target = rustix::fs::readlinkat(src_dir, name, Vec::new())
            .map_err(|e| self.err(rel, "reading the source symlink", e))?;
        rustix::fs::symlinkat(target.as_c_str(), dest_dir, name)
            .map_err(|e| self.err(rel, "creating the symlink", e))?;
        self.finish_at(src_dir, dest_dir, name, st, rel, None)?;
        self.stats.symlinks += 1;
        Ok(())
    }

    fn copy_special(
        &mut self,
        src_dir: BorrowedFd<'_>,
        dest_dir: BorrowedFd<'_>,
        name: &CStr,
        st: &Stat,
        rel: &Path,
    ) -> Result<()> {
        let ft = FileType::from_raw_mode(st.st_mode);
        #[allow(clippy::unnecessary_cast)]
        let rdev = st.st_rdev as u64;
        rustix::fs::mknodat(dest_dir, name, ft, perm_bits(st), rdev)
            .map_err(|e| self.err(rel, "creating the special file", e))?;
        self.finish_at(src_dir, dest_dir, name, st, rel, Some(ft))?;
        self.stats.specials += 1;
        Ok(())
    }

    /// Owner, xattrs, mode (not for symlinks) and times of an entry that is not
    /// opened (symlink or special), addressed by its parent fd and name.
    fn finish_at(
        &mut self,
        src_dir: BorrowedFd<'_>,
        dest_dir: BorrowedFd<'_>,
        name: &CStr,
        st: &Stat,
        rel: &Path,
        chmod_type: Option<FileType>,
    ) -> Result<()> {
        let (uid, gid) = owner(st);
        rustix::fs::chownat(dest_dir, name, uid, gid, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| self.err(rel, "setting owner", e))?;
        if self.proc_fd {
            let src_path = proc_path(src_dir, name);
            let dest_path = proc_path(dest_dir, name);
            self.copy_xattrs(XTarget::Path(&src_path), XTarget::Path(&dest_path), true, rel)?;
        }
        if let Some(ft) = chmod_type {
            // fchmodat follows symlinks; make sure the name is still the node
            // just created (nothing else writes the rw layer during boot).
            let now = rustix::fs::statat(dest_dir, name, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| self.err(rel, "stat on the destination", e))?;
            if FileType::from_raw_mode(now.st_mode) != ft {
                return Err(self.msg(rel, "the destination changed while being created"));
            }
            rustix::fs::chmodat(dest_dir, name, perm_bits(st), AtFlags::empty())
                .map_err(|e| self.err(rel, "setting mode", e))?;
        }
        rustix::fs::utimensat(dest_dir, name, &times_of(st), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| self.err(rel, "setting times", e))
    }

    /// Copy every xattr the source has that the destination filesystem takes.
    /// `unopened`: a symlink or special, where the kernel refuses user.* (EPERM).
    fn copy_xattrs(&mut self, src: XTarget<'_>, dest: XTarget<'_>, unopened: bool, rel: &Path) -> Result<()> {
        let size = match src.list_size() {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(Errno::OPNOTSUPP) => return Ok(()),
            Err(e) => return Err(self.err(rel, "listing xattrs", e)),
        };
        let mut list = vec![0u8; size.min(XATTR_LIST_MAX)];
        let len = match src.list(&mut list) {
            Ok(n) => n,
            // Grew since the size query: take the kernel's maximum.
            Err(Errno::RANGE) => {
                list.resize(XATTR_LIST_MAX, 0);
                src.list(&mut list).map_err(|e| self.err(rel, "listing xattrs", e))?
            }
            Err(e) => return Err(self.err(rel, "listing xattrs", e)),
        };
        let mut value = Vec::new();
        for raw in xattr_names(list.get(..len).unwrap_or_default()) {
            let Ok(attr) = CString::new(raw) else { continue };
            let shown = String::from_utf8_lossy(raw);
            let vsize = match src.get_size(&attr) {
                Ok(n) => n,
                // Removed since the list was read.
                Err(Errno::NODATA) => continue,
                Err(e) => return Err(self.err(rel, &format!("reading xattr {shown}"), e)),
            };
            if vsize > XATTR_SIZE_MAX {
                return Err(self.msg(rel, &format!("xattr {shown} is {vsize} bytes, over the kernel's limit")));
            }
            value.clear();
            value.resize(vsize, 0);
            let n = match src.get(&attr, &mut value) {
                Ok(n) => n,
                Err(Errno::NODATA) => continue,
                Err(e) => return Err(self.err(rel, &format!("reading xattr {shown}"), e)),
            };
            match dest.set(&attr, value.get(..n).unwrap_or_default()) {
                Ok(()) => {}
                // The rw layer's filesystem has no such namespace.
                Err(Errno::OPNOTSUPP) => {}
                Err(Errno::PERM) if unopened => {}
                Err(e) => return Err(self.err(rel, &format!("setting xattr {shown}"), e)),
            }
        }
        Ok(())
    }

    /// Make `dst` (new and empty) share all of `src`'s data extents (FICLONE,
    /// a reflink: no data is read or written). Ok(false) if the kernel cannot
    /// clone between these two files: `dst` is then empty and the caller
    /// copies. After EXDEV (different filesystems: also the top layer on
    /// another partition) or "not supported" no further clone is tried; other
    /// errors (EINVAL for a nodatasum file against a checksummed one, ENOSPC
    /// for metadata) only affect this file.
    fn clone_data(&mut self, src: BorrowedFd<'_>, dst: BorrowedFd<'_>) -> rustix::io::Result<bool> {
        if !self.try_clone {
            return Ok(false);
        }
        match rustix::fs::ioctl_ficlone(dst, src) {
            Ok(()) => Ok(true),
            Err(Errno::XDEV | Errno::OPNOTSUPP | Errno::NOTTY | Errno::NOSYS) => {
                self.try_clone = false;
                Ok(false)
            }
            Err(_) => {
                // A clone that failed part-way may have shared some extents:
                // start the copy from an empty file.
                rustix::fs::ftruncate(dst, 0)?;
                Ok(false)
            }
        }
    }

    /// Copy all data from `src` to `dst` (both at offset 0): copy_file_range,
    /// or read/write where the kernel cannot do that between these files.
    fn copy_data(&mut self, src: BorrowedFd<'_>, dst: BorrowedFd<'_>, size: u64) -> rustix::io::Result<u64> {
        let mut total: u64 = 0;
        let mut kernel_copy = true;
        loop {
            if kernel_copy {
                match rustix::fs::copy_file_range(src, None, dst, None, 1 << 30) {
                    // Some filesystems report 0 for files they cannot copy.
                    Ok(0) if total == 0 && size > 0 => kernel_copy = false,
                    Ok(0) => return Ok(total),
                    Ok(n) => total = total.saturating_add(n as u64),
                    Err(Errno::XDEV | Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => kernel_copy = false,
                    Err(Errno::INTR) => {}
                    Err(e) => return Err(e),
                }
                continue;
            }
            if self.buf.len() != COPY_BUF {
                self.buf = vec![0; COPY_BUF];
            }
            let n = match rustix::io::read(src, &mut self.buf[..]) {
                Ok(0) => return Ok(total),
                Ok(n) => n,
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e),
            };
            let mut chunk = self.buf.get(..n).unwrap_or_default();
            while !chunk.is_empty() {
                match rustix::io::write(dst, chunk) {
                    Ok(0) => return Err(Errno::IO),
                    Ok(w) => chunk = chunk.get(w..).unwrap_or_default(),
                    Err(Errno::INTR) => {}
                    Err(e) => return Err(e),
                }
            }
            total = total.saturating_add(n as u64);
        }
    }
}

/// "/proc/self/fd/<dirfd>/<name>": a path to `name` in `dir` whose last
/// component the l*xattr calls do not follow.
fn proc_path(dir: BorrowedFd<'_>, name: &CStr) -> CString {
    let mut p = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    p.extend_from_slice(name.to_bytes());
    // A CStr's bytes and a formatted number hold no NUL.
    CString::new(p).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: [SrcKind; 5] = [SrcKind::Dir, SrcKind::File, SrcKind::HardLink, SrcKind::Symlink, SrcKind::Special];
    const DEST: [DestKind; 5] = [
        DestKind::Absent,
        DestKind::Dir,
        DestKind::Symlink { resolves_to_dir: true },
        DestKind::Symlink { resolves_to_dir: false },
        DestKind::Other,
    ];

    #[test]
    fn decide_every_pair() {
        use Action::*;
        use Conflict::*;
        for src in SRC {
            for dest in DEST {
                let got = decide(src, dest);
                let want = match (src, dest) {
                    (SrcKind::Dir, DestKind::Absent) => Ok(MakeDir),
                    (SrcKind::Dir, DestKind::Dir) => Ok(MergeDir),
                    (SrcKind::Dir, DestKind::Symlink { resolves_to_dir: true }) => Ok(MergeThroughSymlink),
                    (SrcKind::Dir, _) => Err(DirOverNonDir),
                    (_, DestKind::Absent) => Ok(Create),
                    (_, DestKind::Dir) => Err(NonDirOverDir),
                    (_, _) => Ok(Replace),
                };
                assert_eq!(got, want, "{src:?} over {dest:?}");
            }
        }
    }

    #[test]
    fn non_directories_never_merge_or_follow() {
        for src in SRC.into_iter().filter(|s| *s != SrcKind::Dir) {
            for dest in DEST {
                let a = decide(src, dest);
                assert!(
                    !matches!(a, Ok(Action::MakeDir | Action::MergeDir | Action::MergeThroughSymlink)),
                    "{src:?} over {dest:?}: {a:?}"
                );
            }
            // A symlink in the image is replaced, never written through.
            assert_eq!(decide(src, DestKind::Symlink { resolves_to_dir: true }), Ok(Action::Replace));
        }
    }

    #[test]
    fn src_kinds() {
        assert_eq!(src_kind(FileType::Directory, true, true), Some(SrcKind::Dir));
        assert_eq!(src_kind(FileType::RegularFile, false, false), Some(SrcKind::File));
        assert_eq!(src_kind(FileType::RegularFile, true, false), Some(SrcKind::File));
        assert_eq!(src_kind(FileType::RegularFile, true, true), Some(SrcKind::HardLink));
        assert_eq!(src_kind(FileType::RegularFile, false, true), Some(SrcKind::File));
        assert_eq!(src_kind(FileType::Symlink, true, true), Some(SrcKind::Symlink));
        for ft in [FileType::Fifo, FileType::Socket, FileType::CharacterDevice, FileType::BlockDevice] {
            assert_eq!(src_kind(ft, false, false), Some(SrcKind::Special));
        }
        assert_eq!(src_kind(FileType::Unknown, false, false), None);
    }

    #[test]
    fn dest_kinds() {
        assert_eq!(dest_kind(None, true), DestKind::Absent);
        assert_eq!(dest_kind(Some(FileType::Directory), false), DestKind::Dir);
        assert_eq!(dest_kind(Some(FileType::Symlink), true), DestKind::Symlink { resolves_to_dir: true });
        assert_eq!(dest_kind(Some(FileType::Symlink), false), DestKind::Symlink { resolves_to_dir: false });
        for ft in [FileType::RegularFile, FileType::Fifo, FileType::CharacterDevice, FileType::Socket] {
            assert_eq!(dest_kind(Some(ft), true), DestKind::Other);
        }
    }

    #[test]
    fn xattr_name_lists() {
        let names: Vec<&[u8]> = xattr_names(b"user.a\0security.selinux\0\0trusted.x\0").collect();
        assert_eq!(names, [&b"user.a"[..], b"security.selinux", b"trusted.x"]);
        assert_eq!(xattr_names(b"").count(), 0);
        // A list cut short without its final NUL still yields the name.
        assert_eq!(xattr_names(b"user.a").collect::<Vec<_>>(), [&b"user.a"[..]]);
    }

    #[test]
    fn proc_paths() {
        let f = std::fs::File::open("/").unwrap();
        let p = proc_path(f.as_fd(), c"x y");
        assert_eq!(p.to_str().unwrap(), format!("/proc/self/fd/{}/x y", f.as_raw_fd()));
    }

    #[test]
    fn conflicts_read_like_cp() {
        assert!(Conflict::NonDirOverDir.describe().contains("cannot overwrite directory"));
        assert!(Conflict::DirOverNonDir.describe().contains("cannot overwrite non-directory"));
    }
}
