//! Stage 10: hand the machine to the image's init.
//!
//! The order is the one systemd and util-linux's switch_root use: check that
//! we are PID 1 on an initramfs and the new root is a different mount; find
//! the init inside the new root (symlinks resolved relative to it); sync; make
//! mount propagation private; move /dev /proc /sys /run into the new root;
//! move the new root onto / and chroot into it; free the initramfs's memory
//! without crossing into other filesystems; exec the init as PID 1.
//!
//! When the init is systemd ([`is_systemd`]) it is told it comes from an
//! initramfs the way systemd's own initrd tells it: `--switched-root --system
//! --deserialize FD`, FD a memfd (inherited, not close-on-exec) holding one line
//! of systemd's state serialisation, `initrd-timestamp=REALTIME MONOTONIC` (in
//! microseconds, when dockroot started). systemd then reports the initramfs
//! stage (`systemd-analyze`: "(initrd)", `InitRDTimestampMonotonic`). Pure: the
//! argv ([`init_argv`]), the text ([`Started::serialized`]), the systemd rule;
//! thin: the clocks, the memfd, the exec.

use std::convert::Infallible;
use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, ResolveFlags};

use crate::error::{Context, Error, Result};

/// Where the kernel looks for init when `init=` is not given, in its order.
pub const DEFAULT_INITS: [&str; 4] = ["/sbin/init", "/etc/init", "/bin/init", "/bin/sh"];
/// The API filesystems that move with us into the new root.
pub const API_MOUNTS: [&str; 4] = ["/dev", "/proc", "/sys", "/run"];
const RAMFS_MAGIC: i64 = 0x8584_58f6;
const TMPFS_MAGIC: i64 = 0x0102_1994;
/// Deeper than any sane initramfs: a bound for the recursive cleanup.
const MAX_DEPTH: usize = 64;

/// Which inits to try: `init=` alone if given (the kernel does not fall back
/// from an explicit init= either), else the kernel's defaults.
pub fn init_candidates(init: Option<&str>) -> Vec<String> {
    match init {
        Some(i) => vec![i.to_string()],
        None => DEFAULT_INITS.iter().map(|s| s.to_string()).collect(),
    }
}

/// What to do with one API mount at switch time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoveAction {
    /// Not mounted in the initramfs: nothing to do.
    Skip,
    /// MS_MOVE it to the same path in the new root.
    Move,
    /// The new root has no directory for it: detach it instead.
    Detach,
}

/// Decide what happens to an API mount (pure).
pub fn move_action(is_mounted: bool, target_is_dir: bool) -> MoveAction {
    match (is_mounted, target_is_dir) {
        (false, _) => MoveAction::Skip,
        (true, true) => MoveAction::Move,
        (true, false) => MoveAction::Detach,
    }
}

/// When dockroot started, on the two clocks systemd records (microseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Started {
    pub realtime_us: u64,
    pub monotonic_us: u64,
}

impl Started {
    /// Read both clocks (first thing at boot).
    pub fn now() -> Self {
        Started { realtime_us: clock_us(libc::CLOCK_REALTIME), monotonic_us: clock_us(libc::CLOCK_MONOTONIC) }
    }

    /// The line systemd's manager deserialisation reads as its initrd timestamp:
    /// `<name>-timestamp=` then the realtime and monotonic values in decimal.
    pub fn serialized(&self) -> String {
        format!("initrd-timestamp={} {}\n", self.realtime_us, self.monotonic_us)
    }
}

/// Microseconds on `clock` (0 if it cannot be read). glibc's clock_gettime,
/// which std's clocks already link, rather than a second vDSO lookup.
pub fn clock_us(clock: libc::clockid_t) -> u64 {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec to the valid one we pass.
    if unsafe { libc::clock_gettime(clock, &mut t) } != 0 {
        return 0;
    }
    let s = u64::try_from(t.tv_sec).unwrap_or(0);
    s.saturating_mul(1_000_000).saturating_add(u64::try_from(t.tv_nsec).unwrap_or(0) / 1000)
}

/// Whether the init, as resolved inside the new root (every symlink followed
/// there), is systemd: its binary is `lib/systemd/systemd` below `/` or `/usr`
/// (or any prefix, as on NixOS: `/nix/store/...-systemd/lib/systemd/systemd`).
/// How it was chosen (`init=` or the defaults) does not matter.
pub fn is_systemd(resolved: &str) -> bool {
    resolved.starts_with('/') && resolved.ends_with("/lib/systemd/systemd")
}

/// The init's arguments after argv[0]: for systemd, the hand-over flags with
/// the serialisation's fd, then what the kernel passed us (systemd as PID 1
/// reads its own words from /proc/cmdline, as in a boot without initramfs);
/// any other init gets the kernel's arguments as they are.
pub fn init_argv(kernel_args: &[OsString], deserialize_fd: Option<i32>) -> Vec<OsString> {
    let mut out = Vec::new();
    if let Some(fd) = deserialize_fd {
        out.extend(["--switched-root", "--system", "--deserialize"].map(OsString::from));
        out.push(fd.to_string().into());
    }
    out.extend(kernel_args.iter().cloned());
    out
}

/// The path `full` (as /proc/self/fd shows it) relative to `root` (likewise),
/// as an absolute path inside the root; `None` when it is not below it.
pub fn path_in_root(root: &str, full: &str) -> Option<String> {
    if root == "/" {
        return full.starts_with('/').then(|| full.to_string());
    }
    let rest = full.strip_prefix(root.trim_end_matches('/'))?;
    match rest {
        "" => Some("/".to_string()),
        r if r.starts_with('/') => Some(r.to_string()),
        _ => None,
    }
}

/// Where `path` leads inside `new_root`, every symlink resolved there (for
/// [`is_systemd`]); `None` when that cannot be told.
pub fn resolve_in_root(new_root: BorrowedFd<'_>, path: &str) -> Option<String> {
    let fd = rustix::fs::openat2(
        new_root,
        path,
        OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    )
    .ok()?;
    let show = |fd: BorrowedFd<'_>| {
        let link = rustix::fs::readlink(format!("/proc/self/fd/{}", fd.as_raw_fd()), Vec::new()).ok()?;
        link.into_string().ok()
    };
    path_in_root(&show(new_root)?, &show(fd.as_fd())?)
}

/// A memfd with systemd's serialisation of `started`, at offset 0 and
/// inherited by the next program (no MFD_CLOEXEC).
fn serialization_fd(started: &Started) -> Result<OwnedFd> {
    let fd = rustix::fs::memfd_create("dockroot-state", rustix::fs::MemfdFlags::empty())
        .context(|| "memfd_create for systemd's --deserialize")?;
    let text = started.serialized();
    let n = rustix::io::write(&fd, text.as_bytes()).context(|| "writing the initrd timestamp to the memfd")?;
    if n != text.len() {
        return Err(Error::msg(format!("wrote {n} of {} bytes to the memfd", text.len())));
    }
    rustix::fs::seek(&fd, rustix::fs::SeekFrom::Start(0)).context(|| "rewinding the memfd")?;
    Ok(fd)
}

/// Find the first candidate that is an executable regular file inside
/// `new_root`, resolving every symlink relative to the new root (an absolute
/// link such as /sbin/init -> /lib/systemd/systemd means the image's file, not
/// the initramfs's). Returns the path to exec after the chroot.
pub fn find_init(new_root: BorrowedFd<'_>, candidates: &[String]) -> Result<String> {
    let mut tried = Vec::new();
    for c in candidates {
        match check_executable(new_root, c) {
            Ok(()) => return Ok(c.clone()),
            Err(e) => tried.push(format!("{c}: {e}")),
        }
    }
    Err(Error::msg(format!("no init found in the new root; tried: {}", tried.join("; "))))
}

fn check_executable(root: BorrowedFd<'_>, path: &str) -> Result<()> {
    if !path.starts_with('/') {
        return Err(Error::msg("not an absolute path"));
    }
    let fd = rustix::fs::openat2(
        root,
        path,
        OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    )
    .context(|| "cannot open it inside the new root")?;
    let st = rustix::fs::fstat(&fd).context(|| "cannot stat it")?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(Error::msg("not a regular file"));
    }
    if st.st_mode & 0o111 == 0 {
        return Err(Error::msg(format!("not executable (mode {:o})", st.st_mode & 0o7777)));
    }
    Ok(())
}

/// Everything that must be true before anything destructive happens.
fn preflight(new_root: &Path) -> Result<()> {
    if rustix::process::getpid().as_raw_nonzero().get() != 1 {
        return Err(Error::msg("switch_root must run as PID 1"));
    }
    let fs = rustix::fs::statfs("/").context(|| "statfs /")?;
    let magic = fs.f_type as i64;
    if magic != RAMFS_MAGIC && magic != TMPFS_MAGIC {
        return Err(Error::msg(format!(
            "/ is not an initramfs (filesystem magic {magic:#x}): refusing to switch root"
        )));
    }
    let root_dev = rustix::fs::stat("/").context(|| "stat /")?.st_dev;
    let new_dev = rustix::fs::stat(new_root).context(|| format!("stat {}", new_root.display()))?.st_dev;
    if root_dev == new_dev {
        return Err(Error::msg(format!("{} is not mounted: refusing to switch root", new_root.display())));
    }
    Ok(())
}

/// Switch to `new_root` (a mount point) and exec `init` there with `args` and
/// exactly the environment `env`; with `systemd`, as systemd after an
/// initramfs ([`init_argv`]), telling it when dockroot started. Just before the
/// exec, dockroot's log is kept at `keep_log` (the moved /run). Returns only on
/// failure; failures before the root has moved leave the initramfs intact.
pub fn switch_root(
    new_root: &Path,
    init: &str,
    args: &[OsString],
    env: &[(String, String)],
    systemd: Option<&Started>,
    keep_log: &str,
) -> Result<Infallible> {
    preflight(new_root)?;
    rustix::fs::sync();
    rustix::mount::mount_change(
        "/",
        rustix::mount::MountPropagationFlags::PRIVATE | rustix::mount::MountPropagationFlags::REC,
    )
    .context(|| "making mount propagation private (mount --make-rprivate /)")?;

    let root_dev = rustix::fs::stat("/").context(|| "stat /")?.st_dev;
    for dir in API_MOUNTS {
        let mounted = rustix::fs::stat(dir).map(|st| st.st_dev != root_dev).unwrap_or(false);
        let target = new_root.join(dir.trim_start_matches('/'));
        let target_is_dir = std::fs::symlink_metadata(&target).map(|m| m.is_dir()).unwrap_or(false);
        match move_action(mounted, target_is_dir) {
            MoveAction::Skip => {}
            MoveAction::Move => {
                rustix::mount::mount_move(dir, &target).context(|| format!("moving {dir} to {}", target.display()))?
            }
            MoveAction::Detach => {
                log::warn!("the new root has no {dir} directory: detaching {dir} instead of moving it");
                rustix::mount::unmount(dir, rustix::mount::UnmountFlags::DETACH)
                    .context(|| format!("detaching {dir}"))?;
            }
        }
    }

    let old_root = rustix::fs::open("/", OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
        .context(|| "opening the initramfs root")?;
    rustix::process::chdir(new_root).context(|| format!("chdir {}", new_root.display()))?;
    rustix::mount::mount_move(".", "/").context(|| format!("moving {} onto /", new_root.display()))?;
    rustix::process::chroot(".").context(|| "chroot into the new root")?;
    rustix::process::chdir("/").context(|| "chdir / in the new root")?;

    // From here on the new root is in place; freeing the initramfs is best effort.
    if let Err(e) = free_initramfs(old_root) {
        log::warn!("could not free the initramfs memory: {e}");
    }
    reopen_console();

    // Kept open (inherited) until the exec; closed if the exec fails.
    let state = systemd.and_then(|started| match serialization_fd(started) {
        Ok(fd) => Some(fd),
        Err(e) => {
            log::warn!("{init} is systemd but will not know when the initramfs started: {e}");
            None
        }
    });
    let argv = init_argv(args, state.as_ref().map(|fd| fd.as_raw_fd()));
    log::info!("starting {init}{}", if state.is_some() { " (systemd: --switched-root --deserialize)" } else { "" });
    crate::logging::keep(keep_log);
    let err = std::process::Command::new(init).args(&argv).env_clear().envs(env.iter().cloned()).exec();
    drop(state);
    Err(Error::with(format!("exec {init} in the new root"), err))
}

/// Delete the initramfs's files through an fd to its old root, never crossing
/// into another filesystem (st_dev check), after re-checking it is a ramfs/tmpfs.
fn free_initramfs(old_root: OwnedFd) -> Result<()> {
    let fs = rustix::fs::fstatfs(&old_root).context(|| "fstatfs old root")?;
    let magic = fs.f_type as i64;
    if magic != RAMFS_MAGIC && magic != TMPFS_MAGIC {
        return Err(Error::msg(format!("old root is not a ramfs/tmpfs (magic {magic:#x}): not deleting anything")));
    }
    let dev = rustix::fs::fstat(&old_root).context(|| "fstat old root")?.st_dev;
    remove_contents(old_root.as_fd(), dev, 0)
}

fn remove_contents(dir: BorrowedFd<'_>, dev: u64, depth: usize) -> Result<()> {
    if depth > MAX_DEPTH {
        return Err(Error::msg(format!("initramfs deeper than {MAX_DEPTH} levels")));
    }
    let mut entries = Dir::read_from(dir).context(|| "reading an initramfs directory")?;
    let mut names = Vec::new();
    while let Some(entry) = entries.read() {
        let entry = entry.context(|| "reading an initramfs directory entry")?;
        let name = entry.file_name().to_owned();
        if name.as_bytes() != b"." && name.as_bytes() != b".." {
            names.push(name);
        }
    }
    for name in names {
        let Ok(st) = rustix::fs::statat(dir, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW) else { continue };
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            if st.st_dev != dev {
                continue; // a mount point: never descend into another filesystem
            }
            if let Ok(sub) = rustix::fs::openat(
                dir,
                name.as_c_str(),
                OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC,
                Mode::empty(),
            ) {
                remove_contents(sub.as_fd(), dev, depth + 1)?;
            }
            let _ = rustix::fs::unlinkat(dir, name.as_c_str(), AtFlags::REMOVEDIR);
        } else {
            let _ = rustix::fs::unlinkat(dir, name.as_c_str(), AtFlags::empty());
        }
    }
    Ok(())
}

/// Make fds 0-2 /dev/console (of the new root's /dev) for the next init.
pub fn reopen_console() {
    if let Ok(fd) = rustix::fs::open("/dev/console", OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC, Mode::empty()) {
        let _ = rustix::stdio::dup2_stdin(&fd);
        let _ = rustix::stdio::dup2_stdout(&fd);
        let _ = rustix::stdio::dup2_stderr(&fd);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    #[test]
    fn candidates() {
        assert_eq!(init_candidates(None), DEFAULT_INITS.to_vec());
        assert_eq!(init_candidates(Some("/usr/lib/systemd/systemd")), vec!["/usr/lib/systemd/systemd"]);
    }

    #[test]
    fn systemd_is_told_it_comes_from_an_initramfs() {
        let s = Started { realtime_us: 1_733_300_000_123_456, monotonic_us: 1_234_567 };
        assert_eq!(s.serialized(), "initrd-timestamp=1733300000123456 1234567\n");
        let kernel: Vec<OsString> = ["single", "--", "two words"].map(OsString::from).to_vec();
        let argv = init_argv(&kernel, Some(3));
        assert_eq!(
            argv,
            ["--switched-root", "--system", "--deserialize", "3", "single", "--", "two words"].map(OsString::from)
        );
        // Any other init: the kernel's arguments, nothing more.
        assert_eq!(init_argv(&kernel, None), kernel);
        assert!(init_argv(&[], None).is_empty());
    }

    #[test]
    fn which_inits_are_systemd() {
        for p in ["/usr/lib/systemd/systemd", "/lib/systemd/systemd", "/nix/store/abc-systemd-256/lib/systemd/systemd"]
        {
            assert!(is_systemd(p), "{p}");
        }
        for p in [
            "/sbin/init",
            "/usr/lib/systemd/systemd-udevd",
            "/usr/lib/systemd/systemd.real",
            "lib/systemd/systemd",
            "/systemd",
        ] {
            assert!(!is_systemd(p), "{p}");
        }
        assert_eq!(
            path_in_root("/sysroot", "/sysroot/usr/lib/systemd/systemd").as_deref(),
            Some("/usr/lib/systemd/systemd")
        );
        assert_eq!(path_in_root("/sysroot", "/sysroot").as_deref(), Some("/"));
        assert_eq!(path_in_root("/sysroot", "/sysrootx/init"), None);
        assert_eq!(path_in_root("/", "/sbin/init").as_deref(), Some("/sbin/init"));
    }

    #[test]
    fn started_is_now() {
        let s = Started::now();
        let real = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as u64;
        assert!(s.realtime_us <= real && real - s.realtime_us < 10_000_000, "{s:?} vs {real}");
        assert!(s.monotonic_us > 0 && s.monotonic_us <= Started::now().monotonic_us);
        let fd = serialization_fd(&s).unwrap();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::fs::File::from(fd), &mut text).unwrap();
        assert_eq!(text, s.serialized());
    }

    #[test]
    fn move_actions() {
        assert_eq!(move_action(false, true), MoveAction::Skip);
        assert_eq!(move_action(false, false), MoveAction::Skip);
        assert_eq!(move_action(true, true), MoveAction::Move);
        assert_eq!(move_action(true, false), MoveAction::Detach);
    }

    fn tempdir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("dockroot-sr-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn find_init_resolves_symlinks_inside_the_new_root() {
        let root = tempdir("init");
        std::fs::create_dir_all(root.join("sbin")).unwrap();
        std::fs::create_dir_all(root.join("lib/systemd")).unwrap();
        let sd = root.join("lib/systemd/systemd");
        std::fs::write(&sd, b"#!").unwrap();
        std::fs::set_permissions(&sd, std::fs::Permissions::from_mode(0o755)).unwrap();
        // Absolute link: must resolve to <root>/lib/systemd/systemd, not the host's.
        symlink("/lib/systemd/systemd", root.join("sbin/init")).unwrap();
        // A link escaping with .. stays inside the root too.
        symlink("../../../../lib/systemd/systemd", root.join("sbin/up")).unwrap();
        std::fs::write(root.join("sbin/noexec"), b"x").unwrap();
        std::fs::set_permissions(root.join("sbin/noexec"), std::fs::Permissions::from_mode(0o644)).unwrap();
        let fd = rustix::fs::open(&root, OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()).unwrap();

        assert_eq!(find_init(fd.as_fd(), &init_candidates(None)).unwrap(), "/sbin/init");
        // Both links lead to the root's systemd.
        for link in ["/sbin/init", "/sbin/up", "/lib/systemd/systemd"] {
            assert_eq!(resolve_in_root(fd.as_fd(), link).as_deref(), Some("/lib/systemd/systemd"), "{link}");
        }
        assert_eq!(resolve_in_root(fd.as_fd(), "/sbin/noexec").as_deref(), Some("/sbin/noexec"));
        assert_eq!(resolve_in_root(fd.as_fd(), "/nope"), None);
        assert_eq!(find_init(fd.as_fd(), &["/sbin/up".to_string()]).unwrap(), "/sbin/up");
        let e = find_init(fd.as_fd(), &["/sbin/noexec".into(), "/nope".into(), "rel".into()]).unwrap_err();
        let s = e.to_string();
        assert!(s.contains("/sbin/noexec: not executable (mode 644)"), "{s}");
        assert!(s.contains("/nope: cannot open it inside the new root"), "{s}");
        assert!(s.contains("rel: not an absolute path"), "{s}");
        // A link to a host path that exists on the host but not in the root is not found.
        symlink("/bin/true", root.join("sbin/hostlink")).unwrap();
        assert!(find_init(fd.as_fd(), &["/sbin/hostlink".into()]).is_err());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn remove_contents_stays_on_one_filesystem() {
        let root = tempdir("rm");
        std::fs::create_dir_all(root.join("a/b/c")).unwrap();
        std::fs::write(root.join("a/b/c/f"), b"x").unwrap();
        std::fs::write(root.join("top"), b"x").unwrap();
        symlink("/etc", root.join("link")).unwrap();
        let fd = rustix::fs::open(&root, OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()).unwrap();
        let dev = rustix::fs::fstat(&fd).unwrap().st_dev;
        remove_contents(fd.as_fd(), dev, 0).unwrap();
        assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0);
        assert!(Path::new("/etc").exists(), "a symlink must be removed, not followed");
        // With a different device number nothing is descended into.
        std::fs::create_dir_all(root.join("x/y")).unwrap();
        remove_contents(fd.as_fd(), dev.wrapping_add(1), 0).unwrap();
        assert!(root.join("x/y").exists());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
