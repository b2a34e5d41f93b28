//! btrfs subvolumes through raw ioctls (no btrfs-progs, no libbtrfsutil).
//!
//! Everything is fd-based: a subvolume is named by a directory fd and, where it
//! is created or deleted, by its parent directory fd and a single path component.
//! The ioctl argument structs are declared here from the kernel ABI
//! (`include/uapi/linux/btrfs.h`), with compile-time size checks.
//!
//! Pure parts (name validation, decoding of ioctl outputs) are unit-tested on the
//! host; tests/btrfs_loop.rs runs the ioctls on a loop-mounted btrfs.

use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use rustix::ioctl::{opcode, Getter, Opcode, Setter, Updater};

use crate::error::{Context, Error, Result};

/// `f_type` of a btrfs filesystem in `statfs`.
pub const BTRFS_SUPER_MAGIC: u64 = 0x9123_683E;

/// Inode number of the root directory of every subvolume.
const FIRST_FREE_OBJECTID: u64 = 256;
/// Longest name of a subvolume (and of any directory entry).
const VOL_NAME_MAX: usize = 255;
const PATH_NAME_MAX: usize = 4087;
const SUBVOL_NAME_MAX: usize = 4039;
const INO_LOOKUP_PATH_MAX: usize = 4080;
const INO_LOOKUP_USER_PATH_MAX: usize = 4080 - VOL_NAME_MAX - 1;
const MAX_ROOTREF_BUFFER_NUM: usize = 255;

/// `BTRFS_SUBVOL_RDONLY`: snapshot flag and subvolume flag for read-only.
const SUBVOL_RDONLY: u64 = 1 << 1;

/// How deep nested subvolumes may go before delete_subvolume gives up.
const MAX_NESTING: usize = 256;

const IOCTL_MAGIC: u8 = 0x94;

/// `struct btrfs_ioctl_vol_args`.
#[repr(C)]
struct VolArgs {
    fd: i64,
    name: [u8; PATH_NAME_MAX + 1],
}

/// `struct btrfs_ioctl_vol_args_v2`. The trailing union (name / devid /
/// subvolid) is kept as bytes; `subvolid` is its first 8 bytes.
#[repr(C)]
struct VolArgsV2 {
    fd: i64,
    transid: u64,
    flags: u64,
    /// Union of `{ size, qgroup_inherit }` and `unused[4]`.
    unused: [u64; 4],
    name: [u8; SUBVOL_NAME_MAX + 1],
}

/// `struct btrfs_ioctl_ino_lookup_args`.
#[repr(C)]
struct InoLookupArgs {
    treeid: u64,
    objectid: u64,
    name: [u8; INO_LOOKUP_PATH_MAX],
}

/// One entry of `btrfs_ioctl_get_subvol_rootref_args.rootref`.
#[repr(C)]
#[derive(Clone, Copy)]
struct RootRef {
    treeid: u64,
    dirid: u64,
}

/// `struct btrfs_ioctl_get_subvol_rootref_args`.
#[repr(C)]
struct GetSubvolRootrefArgs {
    min_treeid: u64,
    rootref: [RootRef; MAX_ROOTREF_BUFFER_NUM],
    num_items: u8,
    align: [u8; 7],
}

/// `struct btrfs_ioctl_ino_lookup_user_args`.
#[repr(C)]
struct InoLookupUserArgs {
    dirid: u64,
    treeid: u64,
    name: [u8; VOL_NAME_MAX + 1],
    path: [u8; INO_LOOKUP_USER_PATH_MAX],
}

const _: () = assert!(size_of::<VolArgs>() == 4096);
const _: () = assert!(size_of::<VolArgsV2>() == 4096);
const _: () = assert!(size_of::<InoLookupArgs>() == 4096);
const _: () = assert!(size_of::<GetSubvolRootrefArgs>() == 4096);
const _: () = assert!(size_of::<InoLookupUserArgs>() == 4096);
const _: () = assert!(std::mem::offset_of!(VolArgsV2, name) == 56);
const _: () = assert!(std::mem::offset_of!(GetSubvolRootrefArgs, num_items) == 4088);
const _: () = assert!(std::mem::offset_of!(InoLookupUserArgs, path) == 272);

const IOC_SUBVOL_CREATE: Opcode = opcode::write::<VolArgs>(IOCTL_MAGIC, 14);
const IOC_SNAP_DESTROY: Opcode = opcode::write::<VolArgs>(IOCTL_MAGIC, 15);
const IOC_INO_LOOKUP: Opcode = opcode::read_write::<InoLookupArgs>(IOCTL_MAGIC, 18);
const IOC_SNAP_CREATE_V2: Opcode = opcode::write::<VolArgsV2>(IOCTL_MAGIC, 23);
const IOC_SUBVOL_GETFLAGS: Opcode = opcode::read::<u64>(IOCTL_MAGIC, 25);
const IOC_SUBVOL_SETFLAGS: Opcode = opcode::write::<u64>(IOCTL_MAGIC, 26);
const IOC_GET_SUBVOL_ROOTREF: Opcode = opcode::read_write::<GetSubvolRootrefArgs>(IOCTL_MAGIC, 61);
const IOC_INO_LOOKUP_USER: Opcode = opcode::read_write::<InoLookupUserArgs>(IOCTL_MAGIC, 62);
const IOC_SNAP_DESTROY_V2: Opcode = opcode::write::<VolArgsV2>(IOCTL_MAGIC, 63);

impl VolArgs {
    fn new() -> Self {
        VolArgs { fd: 0, name: [0; PATH_NAME_MAX + 1] }
    }
}

impl VolArgsV2 {
    fn new() -> Self {
        VolArgsV2 { fd: 0, transid: 0, flags: 0, unused: [0; 4], name: [0; SUBVOL_NAME_MAX + 1] }
    }
}

impl InoLookupUserArgs {
    fn new(dirid: u64, treeid: u64) -> Self {
        InoLookupUserArgs { dirid, treeid, name: [0; VOL_NAME_MAX + 1], path: [0; INO_LOOKUP_USER_PATH_MAX] }
    }
}

/// A subvolume nested directly in another one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildSubvolume {
    /// The child's subvolume (tree) id.
    pub id: u64,
    /// Its path relative to the root of the parent subvolume, e.g. `var/lib/machines`.
    pub path: String,
}

// ---------------------------------------------------------------------------
// Pure part
// ---------------------------------------------------------------------------

/// Check that `name` is a single path component the kernel accepts as a
/// subvolume name: non-empty, no '/', no NUL, not "." or "..", < 256 bytes.
pub fn validate_name(name: &str) -> Result<()> {
    validate_name_bytes(name.as_bytes())
}

fn validate_name_bytes(name: &[u8]) -> Result<()> {
    let shown = || String::from_utf8_lossy(name).into_owned();
    if name.is_empty() {
        return Err(Error::msg("subvolume name is empty"));
    }
    if name == b"." || name == b".." {
        return Err(Error::msg(format!("subvolume name {:?} is not allowed", shown())));
    }
    if name.contains(&b'/') {
        return Err(Error::msg(format!(
            "subvolume name {:?} contains '/': it must be a single path component",
            shown()
        )));
    }
    if name.contains(&0) {
        return Err(Error::msg(format!("subvolume name {:?} contains a NUL byte", shown())));
    }
    if name.len() > VOL_NAME_MAX {
        return Err(Error::msg(format!(
            "subvolume name {:?} is {} bytes long, the limit is {VOL_NAME_MAX}",
            shown(),
            name.len()
        )));
    }
    Ok(())
}

/// Copy a validated name into a zeroed, fixed-size ioctl name field, keeping a
/// terminating NUL.
fn fill_name(field: &mut [u8], name: &[u8]) -> Result<()> {
    validate_name_bytes(name)?;
    let room = field.len();
    let dest = field
        .get_mut(..name.len())
        .filter(|_| name.len() < room)
        .context(|| format!("subvolume name {:?} does not fit the ioctl argument", String::from_utf8_lossy(name)))?;
    dest.copy_from_slice(name);
    Ok(())
}

/// The bytes of a NUL-terminated C string in a fixed-size field (all of it if
/// there is no NUL).
fn c_field(field: &[u8]) -> &[u8] {
    match field.iter().position(|&b| b == 0) {
        Some(end) => field.get(..end).unwrap_or(field),
        None => field,
    }
}

/// Turn an INO_LOOKUP_USER result (`path`: the directory path from the ioctl's
/// fd to the child's parent directory, each component followed by '/', or
/// empty; `name`: the child's name) into the child's relative path.
/// Rejects anything that is not a plain relative path of normal components.
fn lookup_user_path(path_field: &[u8], name_field: &[u8]) -> Result<Vec<u8>> {
    let dir = c_field(path_field);
    let name = c_field(name_field);
    validate_name_bytes(name).map_err(|e| e.context("INO_LOOKUP_USER returned a bad subvolume name"))?;
    let mut out = Vec::with_capacity(dir.len() + name.len());
    for component in dir.split(|&b| b == b'/') {
        if component.is_empty() {
            continue;
        }
        if component == b"." || component == b".." {
            return Err(Error::msg(format!(
                "INO_LOOKUP_USER returned a path with a {:?} component: {:?}",
                String::from_utf8_lossy(component),
                String::from_utf8_lossy(dir)
            )));
        }
        out.extend_from_slice(component);
        out.push(b'/');
    }
    if dir.first() == Some(&b'/') {
        return Err(Error::msg(format!(
            "INO_LOOKUP_USER returned an absolute path {:?}",
            String::from_utf8_lossy(dir)
        )));
    }
    out.extend_from_slice(name);
    Ok(out)
}

/// Split a relative path into (parent directory, last component); the parent is
/// empty for a single component.
fn split_parent(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (path.get(..i).unwrap_or_default(), path.get(i + 1..).unwrap_or_default()),
        None => (&[], path),
    }
}

/// The entries a GET_SUBVOL_ROOTREF call returned, as (treeid, dirid) pairs,
/// bounded by the array size whatever `num_items` says.
fn rootref_items(args: &GetSubvolRootrefArgs) -> impl Iterator<Item = (u64, u64)> + '_ {
    let n = usize::from(args.num_items).min(MAX_ROOTREF_BUFFER_NUM);
    args.rootref.iter().take(n).map(|r| (r.treeid, r.dirid))
}

/// Set or clear the read-only bit in a subvolume flags word.
fn with_readonly(flags: u64, readonly: bool) -> u64 {
    if readonly {
        flags | SUBVOL_RDONLY
    } else {
        flags & !SUBVOL_RDONLY
    }
}

// ---------------------------------------------------------------------------
// System calls
// ---------------------------------------------------------------------------

/// A best-effort description of what `fd` refers to, for error messages: its
/// path from /proc/self/fd, or "fd N" when /proc is not there.
pub fn describe_fd(fd: BorrowedFd<'_>) -> String {
    let raw = fd.as_raw_fd();
    match rustix::fs::readlinkat(rustix::fs::CWD, format!("/proc/self/fd/{raw}"), Vec::new()) {
        Ok(p) => String::from_utf8_lossy(p.as_bytes()).into_owned(),
        Err(_) => format!("fd {raw}"),
    }
}

fn show(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

/// Whether `fd` is on a btrfs filesystem.
pub fn is_btrfs(fd: BorrowedFd<'_>) -> Result<bool> {
    let st = rustix::fs::fstatfs(fd).context(|| format!("statfs on {}", describe_fd(fd)))?;
    #[allow(clippy::useless_conversion)]
    let f_type = u64::try_from(st.f_type).ok();
    Ok(f_type == Some(BTRFS_SUPER_MAGIC))
}

/// Whether the directory `dir` is the root of a btrfs subvolume.
pub fn is_subvolume(dir: BorrowedFd<'_>) -> Result<bool> {
    if !is_btrfs(dir)? {
        return Ok(false);
    }
    let st = rustix::fs::fstat(dir).context(|| format!("stat on {}", describe_fd(dir)))?;
    #[allow(clippy::useless_conversion)]
    let ino = u64::from(st.st_ino);
    let is_dir = rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory;
    Ok(is_dir && ino == FIRST_FREE_OBJECTID)
}

fn require_subvolume(dir: BorrowedFd<'_>, what: impl FnOnce() -> String) -> Result<()> {
    if is_subvolume(dir)? {
        Ok(())
    } else {
        Err(Error::msg(format!("{}: {} is not the root of a btrfs subvolume", what(), describe_fd(dir))))
    }
}

/// Create an empty subvolume `name` in directory `parent`.
pub fn create_subvolume(parent: BorrowedFd<'_>, name: &str) -> Result<()> {
    let mut args = VolArgs::new();
    fill_name(&mut args.name, name.as_bytes())?;
    // SAFETY: IOC_SUBVOL_CREATE takes a `struct btrfs_ioctl_vol_args`, which
    // VolArgs mirrors (size checked at compile time); the name is NUL-terminated.
    unsafe { rustix::ioctl::ioctl(parent, Setter::<IOC_SUBVOL_CREATE, VolArgs>::new(args)) }
        .context(|| format!("creating btrfs subvolume {}/{name}", describe_fd(parent)))
}

/// Snapshot the subvolume whose root is `source` as `name` in `dest_parent`,
/// read-only if `readonly`.
pub fn snapshot(source: BorrowedFd<'_>, dest_parent: BorrowedFd<'_>, name: &str, readonly: bool) -> Result<()> {
    validate_name(name)?;
    require_subvolume(source, || format!("snapshotting to {}/{name}", describe_fd(dest_parent)))?;
    let mut args = VolArgsV2::new();
    args.fd = i64::from(source.as_raw_fd());
    args.flags = if readonly { SUBVOL_RDONLY } else { 0 };
    fill_name(&mut args.name, name.as_bytes())?;
    // SAFETY: IOC_SNAP_CREATE_V2 takes a `struct btrfs_ioctl_vol_args_v2`, which
    // VolArgsV2 mirrors; `fd` is an open fd borrowed for the call's duration.
    unsafe { rustix::ioctl::ioctl(dest_parent, Setter::<IOC_SNAP_CREATE_V2, VolArgsV2>::new(args)) }.context(|| {
        format!(
            "snapshotting {} to {}/{name}{}",
            describe_fd(source),
            describe_fd(dest_parent),
            if readonly { " (read-only)" } else { "" }
        )
    })
}

/// The id of the subvolume that contains `dir`.
pub fn subvolume_id(dir: BorrowedFd<'_>) -> Result<u64> {
    let mut args = InoLookupArgs { treeid: 0, objectid: FIRST_FREE_OBJECTID, name: [0; INO_LOOKUP_PATH_MAX] };
    // SAFETY: IOC_INO_LOOKUP reads and writes a `struct btrfs_ioctl_ino_lookup_args`,
    // which InoLookupArgs mirrors; `args` outlives the call.
    unsafe { rustix::ioctl::ioctl(dir, Updater::<IOC_INO_LOOKUP, InoLookupArgs>::new(&mut args)) }
        .context(|| format!("looking up the btrfs subvolume id of {}", describe_fd(dir)))?;
    Ok(args.treeid)
}

/// The subvolumes nested directly in the subvolume whose root is `dir`, with
/// their paths relative to `dir`. Paths that are not UTF-8 are an error here
/// (delete_subvolume handles any bytes).
pub fn child_subvolumes(dir: BorrowedFd<'_>) -> Result<Vec<ChildSubvolume>> {
    child_subvolumes_raw(dir)?
        .into_iter()
        .map(|(id, path)| match String::from_utf8(path) {
            Ok(path) => Ok(ChildSubvolume { id, path }),
            Err(e) => Err(Error::msg(format!(
                "subvolume {id} in {} has a path that is not UTF-8: {:?}",
                describe_fd(dir),
                String::from_utf8_lossy(e.as_bytes())
            ))),
        })
        .collect()
}

fn child_subvolumes_raw(dir: BorrowedFd<'_>) -> Result<Vec<(u64, Vec<u8>)>> {
    require_subvolume(dir, || "listing nested subvolumes".to_string())?;
    let mut refs: Vec<(u64, u64)> = Vec::new();
    let mut min_treeid = 0u64;
    loop {
        let mut args = GetSubvolRootrefArgs {
            min_treeid,
            rootref: [RootRef { treeid: 0, dirid: 0 }; MAX_ROOTREF_BUFFER_NUM],
            num_items: 0,
            align: [0; 7],
        };
        // SAFETY: IOC_GET_SUBVOL_ROOTREF reads and writes a
        // `struct btrfs_ioctl_get_subvol_rootref_args`, which GetSubvolRootrefArgs
        // mirrors; `args` outlives the call.
        let r = unsafe {
            rustix::ioctl::ioctl(dir, Updater::<IOC_GET_SUBVOL_ROOTREF, GetSubvolRootrefArgs>::new(&mut args))
        };
        let more = match r {
            Ok(()) => false,
            Err(Errno::OVERFLOW) => true,
            Err(e) => {
                return Err(Error::with(format!("listing subvolumes nested in {}", describe_fd(dir)), e));
            }
        };
        refs.extend(rootref_items(&args));
        // The kernel advances min_treeid past the last entry; stop if it did not
        // (no entries, or a wrapped id) rather than loop forever.
        if !more || args.num_items == 0 || args.min_treeid <= min_treeid {
            break;
        }
        min_treeid = args.min_treeid;
    }
    let mut out = Vec::with_capacity(refs.len());
    for (treeid, dirid) in refs {
        let mut args = InoLookupUserArgs::new(dirid, treeid);
        // SAFETY: IOC_INO_LOOKUP_USER reads and writes a
        // `struct btrfs_ioctl_ino_lookup_user_args`, which InoLookupUserArgs
        // mirrors; `args` outlives the call.
        unsafe { rustix::ioctl::ioctl(dir, Updater::<IOC_INO_LOOKUP_USER, InoLookupUserArgs>::new(&mut args)) }
            .context(|| {
                format!("finding the path of subvolume {treeid} (directory {dirid}) in {}", describe_fd(dir))
            })?;
        let path = lookup_user_path(&args.path, &args.name)
            .map_err(|e| e.context(format!("subvolume {treeid} in {}", describe_fd(dir))))?;
        out.push((treeid, path));
    }
    Ok(out)
}

/// Destroy the (childless) subvolume `name` in `parent`: SNAP_DESTROY_V2 by
/// name, falling back to SNAP_DESTROY on kernels without it.
fn destroy(parent: BorrowedFd<'_>, name: &[u8]) -> rustix::io::Result<()> {
    let mut v2 = VolArgsV2::new();
    let mut v1 = VolArgs::new();
    if fill_name(&mut v2.name, name).is_err() || fill_name(&mut v1.name, name).is_err() {
        return Err(Errno::INVAL);
    }
    // SAFETY: IOC_SNAP_DESTROY_V2 takes a `struct btrfs_ioctl_vol_args_v2`, which
    // VolArgsV2 mirrors; flags 0 means the subvolume is named by `name`.
    match unsafe { rustix::ioctl::ioctl(parent, Setter::<IOC_SNAP_DESTROY_V2, VolArgsV2>::new(v2)) } {
        Err(Errno::NOTTY) | Err(Errno::INVAL) => {
            // SAFETY: IOC_SNAP_DESTROY takes a `struct btrfs_ioctl_vol_args`,
            // which VolArgs mirrors; the name is NUL-terminated.
            unsafe { rustix::ioctl::ioctl(parent, Setter::<IOC_SNAP_DESTROY, VolArgs>::new(v1)) }
        }
        r => r,
    }
}

fn open_dir_nofollow(parent: BorrowedFd<'_>, name: &[u8]) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(
        parent,
        OsStr::from_bytes(name),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Delete subvolume `name` in `parent` and every subvolume nested in it,
/// deepest first. Refuses if `name` is not a subvolume.
pub fn delete_subvolume(parent: BorrowedFd<'_>, name: &str) -> Result<()> {
    validate_name(name)?;
    let shown = format!("{}/{name}", describe_fd(parent));
    let dir =
        open_dir_nofollow(parent, name.as_bytes()).context(|| format!("opening subvolume {shown} to delete it"))?;
    if !is_subvolume(dir.as_fd())? {
        return Err(Error::msg(format!("refusing to delete {shown}: it is not a btrfs subvolume")));
    }
    delete_nested(dir.as_fd(), &shown, 0)?;
    drop(dir);
    destroy(parent, name.as_bytes()).context(|| format!("deleting btrfs subvolume {shown}"))
}

/// Delete every subvolume nested in the subvolume whose root is `subvol`
/// (shown as `shown` in errors), deepest first.
fn delete_nested(subvol: BorrowedFd<'_>, shown: &str, depth: usize) -> Result<()> {
    if depth >= MAX_NESTING {
        return Err(Error::msg(format!("subvolumes nest deeper than {MAX_NESTING} levels at {shown}; not deleting")));
    }
    let children = child_subvolumes_raw(subvol)?;
    // Unlinking a nested subvolume changes its parent directory: a read-only
    // parent (a kept root, say) must become writable first. It is deleted next.
    if !children.is_empty() && is_readonly(subvol)? {
        set_readonly(subvol, false)
            .map_err(|e| e.context(format!("making {shown} writable to delete the subvolumes nested in it")))?;
    }
    for (id, path) in children {
        let child_shown = format!("{shown}/{}", show(&path));
        let (parent_rel, name) = split_parent(&path);
        let parent_dir = if parent_rel.is_empty() {
            rustix::io::fcntl_dupfd_cloexec(subvol, 0)
        } else {
            // The path is built by the kernel from directory entries, so it has
            // no symlinks; refuse any anyway and stay beneath the subvolume.
            rustix::fs::openat2(
                subvol,
                OsStr::from_bytes(parent_rel),
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
                ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
            )
        }
        .context(|| format!("opening the parent directory of subvolume {child_shown} to delete it"))?;
        let child = open_dir_nofollow(parent_dir.as_fd(), name)
            .context(|| format!("opening subvolume {child_shown} to delete it"))?;
        let child_id = subvolume_id(child.as_fd())?;
        if child_id != id || !is_subvolume(child.as_fd())? {
            return Err(Error::msg(format!(
                "{child_shown} is not subvolume {id} as the kernel reported (found tree {child_id}); not deleting"
            )));
        }
        delete_nested(child.as_fd(), &child_shown, depth + 1)?;
        drop(child);
        destroy(parent_dir.as_fd(), name)
            .context(|| format!("deleting nested btrfs subvolume {child_shown} (id {id})"))?;
    }
    Ok(())
}

/// Make the subvolume whose root is `dir` read-only (or writable again).
pub fn set_readonly(dir: BorrowedFd<'_>, readonly: bool) -> Result<()> {
    require_subvolume(dir, || "changing the read-only flag".to_string())?;
    // SAFETY: IOC_SUBVOL_GETFLAGS writes one u64 of subvolume flags.
    let flags = unsafe { rustix::ioctl::ioctl(dir, Getter::<IOC_SUBVOL_GETFLAGS, u64>::new()) }
        .context(|| format!("reading the flags of btrfs subvolume {}", describe_fd(dir)))?;
    let new = with_readonly(flags, readonly);
    if new == flags {
        return Ok(());
    }
    // SAFETY: IOC_SUBVOL_SETFLAGS reads one u64 of subvolume flags.
    unsafe { rustix::ioctl::ioctl(dir, Setter::<IOC_SUBVOL_SETFLAGS, u64>::new(new)) }.context(|| {
        format!("making btrfs subvolume {} {}", describe_fd(dir), if readonly { "read-only" } else { "writable" })
    })
}

/// Whether the subvolume whose root is `dir` is read-only.
pub fn is_readonly(dir: BorrowedFd<'_>) -> Result<bool> {
    // SAFETY: IOC_SUBVOL_GETFLAGS writes one u64 of subvolume flags.
    let flags = unsafe { rustix::ioctl::ioctl(dir, Getter::<IOC_SUBVOL_GETFLAGS, u64>::new()) }
        .context(|| format!("reading the flags of btrfs subvolume {}", describe_fd(dir)))?;
    Ok(flags & SUBVOL_RDONLY != 0)
}

/// Flush the filesystem that holds `fd` to disk (syncfs).
pub fn sync(fd: BorrowedFd<'_>) -> Result<()> {
    rustix::fs::syncfs(fd).context(|| format!("syncing the filesystem of {}", describe_fd(fd)))
}

// ---------------------------------------------------------------------------
// Multi-device filesystems: registering member devices with the kernel
// ---------------------------------------------------------------------------

/// The btrfs control device (misc major 10, minor 234).
pub const CONTROL_PATH: &str = "/dev/btrfs-control";
const CONTROL_MAJOR: u32 = 10;
const CONTROL_MINOR: u32 = 234;

const IOC_SCAN_DEV: Opcode = opcode::write::<VolArgs>(IOCTL_MAGIC, 4);
const IOC_DEVICES_READY: Opcode = opcode::read::<VolArgs>(IOCTL_MAGIC, 39);

/// An ioctl on the control device that takes a `struct btrfs_ioctl_vol_args`
/// naming a device path and returns a plain int.
struct DevicePathIoctl<const OPCODE: Opcode> {
    args: VolArgs,
}

// SAFETY: SCAN_DEV and DEVICES_READY take a pointer to a
// `struct btrfs_ioctl_vol_args` (which VolArgs mirrors, size checked at compile
// time) and only read it; the result is the ioctl's return value.
unsafe impl<const OPCODE: Opcode> rustix::ioctl::Ioctl for DevicePathIoctl<OPCODE> {
    type Output = rustix::ioctl::IoctlOutput;
    const IS_MUTATING: bool = true;

    fn opcode(&self) -> Opcode {
        OPCODE
    }

    fn as_ptr(&mut self) -> *mut std::ffi::c_void {
        std::ptr::addr_of_mut!(self.args).cast()
    }

    unsafe fn output_from_ptr(
        out: rustix::ioctl::IoctlOutput,
        _: *mut std::ffi::c_void,
    ) -> rustix::io::Result<Self::Output> {
        Ok(out)
    }
}

/// The vol_args for a device path: NUL-terminated, at most 4087 bytes.
fn device_args(devnode: &std::path::Path) -> Result<VolArgs> {
    let bytes = devnode.as_os_str().as_bytes();
    let mut args = VolArgs::new();
    let room = args.name.len();
    let dest = args
        .name
        .get_mut(..bytes.len())
        .filter(|_| bytes.len() < room && !bytes.contains(&0) && !bytes.is_empty())
        .context(|| format!("device path {:?} does not fit a btrfs ioctl argument", devnode.display()))?;
    dest.copy_from_slice(bytes);
    Ok(args)
}

/// Open /dev/btrfs-control, creating the node first if /dev lacks it.
fn open_control() -> Result<OwnedFd> {
    let open = || rustix::fs::open(CONTROL_PATH, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty());
    let fd = match open() {
        Err(Errno::NOENT) => {
            let dev = rustix::fs::makedev(CONTROL_MAJOR, CONTROL_MINOR);
            match rustix::fs::mknodat(
                rustix::fs::CWD,
                CONTROL_PATH,
                rustix::fs::FileType::CharacterDevice,
                Mode::from_raw_mode(0o600),
                dev,
            ) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(Error::with(format!("creating {CONTROL_PATH} (10:234)"), e)),
            }
            open()
        }
        r => r,
    };
    fd.context(|| format!("opening {CONTROL_PATH} (is the btrfs driver loaded?)"))
}

/// Register `devnode` with the kernel as a btrfs member device
/// (BTRFS_IOC_SCAN_DEV), so a multi-device filesystem can be mounted once all
/// its members are registered. Harmless for a device already registered.
pub fn scan_device(devnode: &std::path::Path) -> Result<()> {
    let args = device_args(devnode)?;
    let control = open_control()?;
    // SAFETY: see DevicePathIoctl; `args.name` is a NUL-terminated path.
    unsafe { rustix::ioctl::ioctl(&control, DevicePathIoctl::<IOC_SCAN_DEV> { args }) }
        .context(|| format!("registering {} with btrfs (BTRFS_IOC_SCAN_DEV)", devnode.display()))?;
    Ok(())
}

/// Whether every member device of the btrfs filesystem on `devnode` is
/// registered with the kernel (BTRFS_IOC_DEVICES_READY, which also registers
/// `devnode` itself). A single-device filesystem is always ready.
pub fn devices_ready(devnode: &std::path::Path) -> Result<bool> {
    let args = device_args(devnode)?;
    let control = open_control()?;
    // SAFETY: see DevicePathIoctl; `args.name` is a NUL-terminated path.
    let r = unsafe { rustix::ioctl::ioctl(&control, DevicePathIoctl::<IOC_DEVICES_READY> { args }) }
        .context(|| format!("asking btrfs whether {} is complete (BTRFS_IOC_DEVICES_READY)", devnode.display()))?;
    match r {
        0 => Ok(true),
        1 => Ok(false),
        other => Err(Error::msg(format!(
            "BTRFS_IOC_DEVICES_READY on {} returned {other}, expected 0 or 1",
            devnode.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_single_components() {
        assert!(validate_name("rw").is_ok());
        assert!(validate_name(".hidden").is_ok());
        assert!(validate_name("...").is_ok());
        assert!(validate_name(&"x".repeat(255)).is_ok());
        for bad in ["", ".", "..", "a/b", "/", "a/", "x\0y"] {
            let e = validate_name(bad).unwrap_err().to_string();
            assert!(e.contains("subvolume name"), "{bad:?}: {e}");
        }
        let e = validate_name(&"x".repeat(256)).unwrap_err().to_string();
        assert!(e.contains("256 bytes"), "{e}");
    }

    #[test]
    fn device_ioctls_match_the_kernel_and_check_paths() {
        // _IOW(0x94, 4, 4096) and _IOR(0x94, 39, 4096) from linux/btrfs.h.
        assert_eq!(IOC_SCAN_DEV as u64, 0x5000_9404);
        assert_eq!(IOC_DEVICES_READY as u64, 0x9000_9427);
        let args = device_args(std::path::Path::new("/dev/vdb1")).unwrap();
        assert_eq!(&args.name[..10], b"/dev/vdb1\0");
        assert!(args.name[9..].iter().all(|&b| b == 0));
        let long = format!("/dev/{}", "x".repeat(4082));
        assert!(device_args(std::path::Path::new(&long)).is_ok());
        let e = device_args(std::path::Path::new(&format!("{long}y"))).err().unwrap().to_string();
        assert!(e.contains("does not fit"), "{e}");
        assert!(device_args(std::path::Path::new("")).is_err());
    }

    #[test]
    fn struct_sizes_and_offsets_match_the_kernel() {
        assert_eq!(size_of::<VolArgs>(), 4096);
        assert_eq!(size_of::<VolArgsV2>(), 4096);
        assert_eq!(size_of::<InoLookupArgs>(), 4096);
        assert_eq!(size_of::<GetSubvolRootrefArgs>(), 4096);
        assert_eq!(size_of::<InoLookupUserArgs>(), 4096);
        assert_eq!(std::mem::offset_of!(InoLookupUserArgs, name), 16);
        assert_eq!(std::mem::offset_of!(GetSubvolRootrefArgs, rootref), 8);
    }

    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    #[test]
    fn opcodes_match_the_kernel_headers() {
        // Values as computed by _IOW/_IOR/_IOWR in C on x86_64 and aarch64.
        assert_eq!(IOC_SUBVOL_CREATE as u64, 0x5000_940e);
        assert_eq!(IOC_SNAP_DESTROY as u64, 0x5000_940f);
        assert_eq!(IOC_INO_LOOKUP as u64, 0xd000_9412);
        assert_eq!(IOC_SNAP_CREATE_V2 as u64, 0x5000_9417);
        assert_eq!(IOC_SUBVOL_GETFLAGS as u64, 0x8008_9419);
        assert_eq!(IOC_SUBVOL_SETFLAGS as u64, 0x4008_941a);
        assert_eq!(IOC_GET_SUBVOL_ROOTREF as u64, 0xd000_943d);
        assert_eq!(IOC_INO_LOOKUP_USER as u64, 0xd000_943e);
        assert_eq!(IOC_SNAP_DESTROY_V2 as u64, 0x5000_943f);
    }

    #[test]
    fn fill_name_keeps_a_nul() {
        let mut f = [0u8; 8];
        fill_name(&mut f, b"abc").unwrap();
        assert_eq!(&f, b"abc\0\0\0\0\0");
        let mut small = [0u8; 3];
        assert!(fill_name(&mut small, b"abc").is_err());
        assert!(fill_name(&mut f, b"a/b").is_err());
    }

    fn field<const N: usize>(s: &[u8]) -> [u8; N] {
        let mut f = [0u8; N];
        f[..s.len()].copy_from_slice(s);
        f
    }

    #[test]
    fn lookup_user_results_become_paths() {
        let name: [u8; 256] = field(b"machines");
        let path: [u8; INO_LOOKUP_USER_PATH_MAX] = field(b"var/lib/");
        assert_eq!(lookup_user_path(&path, &name).unwrap(), b"var/lib/machines");
        let empty: [u8; INO_LOOKUP_USER_PATH_MAX] = field(b"");
        assert_eq!(lookup_user_path(&empty, &name).unwrap(), b"machines");
        // Path without the trailing slash, or with doubled slashes, still joins right.
        let noslash: [u8; 16] = field(b"a//b");
        assert_eq!(lookup_user_path(&noslash, &name).unwrap(), b"a/b/machines");
        // Garbage after the NUL is ignored.
        let mut junk: [u8; 16] = field(b"d/");
        junk[5] = b'x';
        assert_eq!(lookup_user_path(&junk, &name).unwrap(), b"d/machines");
    }

    #[test]
    fn lookup_user_rejects_bad_output() {
        let name: [u8; 256] = field(b"x");
        for bad in [&b"../"[..], b"a/../", b"./", b"/abs/"] {
            let path: [u8; 32] = field(bad);
            assert!(lookup_user_path(&path, &name).is_err(), "{bad:?}");
        }
        let path: [u8; 32] = field(b"a/");
        for badname in [&b""[..], b".", b"..", b"a/b"] {
            let n: [u8; 256] = field(badname);
            assert!(lookup_user_path(&path, &n).is_err(), "{badname:?}");
        }
        // A name field with no NUL at all is 256 bytes: too long.
        let full = [b'n'; 256];
        assert!(lookup_user_path(&path, &full).is_err());
    }

    #[test]
    fn split_parent_splits_last_component() {
        assert_eq!(split_parent(b"a/b/c"), (&b"a/b"[..], &b"c"[..]));
        assert_eq!(split_parent(b"c"), (&b""[..], &b"c"[..]));
    }

    #[test]
    fn rootref_items_are_bounded() {
        let mut args = GetSubvolRootrefArgs {
            min_treeid: 0,
            rootref: [RootRef { treeid: 0, dirid: 0 }; MAX_ROOTREF_BUFFER_NUM],
            num_items: 2,
            align: [0; 7],
        };
        args.rootref[0] = RootRef { treeid: 257, dirid: 256 };
        args.rootref[1] = RootRef { treeid: 300, dirid: 260 };
        assert_eq!(rootref_items(&args).collect::<Vec<_>>(), vec![(257, 256), (300, 260)]);
        args.num_items = 255;
        assert_eq!(rootref_items(&args).count(), 255);
        args.num_items = 0;
        assert_eq!(rootref_items(&args).count(), 0);
    }

    #[test]
    fn readonly_bit() {
        assert_eq!(with_readonly(0, true), SUBVOL_RDONLY);
        assert_eq!(with_readonly(SUBVOL_RDONLY | 1, false), 1);
        assert_eq!(with_readonly(SUBVOL_RDONLY, true), SUBVOL_RDONLY);
    }

    #[test]
    fn not_btrfs_is_not_a_subvolume() {
        let dir = std::fs::File::open("/proc").unwrap();
        assert!(!is_btrfs(dir.as_fd()).unwrap());
        assert!(!is_subvolume(dir.as_fd()).unwrap());
        assert!(child_subvolumes(dir.as_fd()).unwrap_err().to_string().contains("not the root of a btrfs subvolume"));
    }
}
