//! Reaching the root partition's top level from a host or the running system:
//! `--top DIR` (already mounted), `--device DEV`, or by default the device the
//! kernel command line's `root=` names (found as the init finds it), mounted at
//! a temporary directory for the command and unmounted after it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use dockroot::devices::{self, DeviceSpec};
use dockroot::{Context, Error, Result};

/// Where the top level is.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub enum Where {
    /// `--top DIR`: mounted already.
    Top(PathBuf),
    /// `--device DEV`.
    Device(PathBuf),
    /// Neither: the device `root=` names.
    #[default]
    FromCmdline,
}

/// The long options every command that looks at the partition takes
/// (`--top`, `--device`, `--cmdline`): [`take_option`] reads them.
pub const OPTIONS: [&str; 3] = ["top", "device", "cmdline"];

/// Read the option `--name` (one of [`OPTIONS`]) and its value from `p`.
pub fn take_option(
    name: &str,
    p: &mut lexopt::Parser,
    at: &mut Where,
    cmdline: &mut Option<String>,
) -> std::result::Result<(), String> {
    let value = |p: &mut lexopt::Parser| p.value().map_err(|e| e.to_string());
    let set = |at: &mut Where, w: Where| match at {
        Where::FromCmdline => {
            *at = w;
            Ok(())
        }
        _ => Err("give at most one of --top and --device".to_string()),
    };
    match name {
        "top" => set(at, Where::Top(value(p)?.into())),
        "device" => set(at, Where::Device(value(p)?.into())),
        "cmdline" => {
            let v: OsString = value(p)?;
            *cmdline = Some(v.into_string().map_err(|v| format!("--cmdline {v:?} is not valid UTF-8"))?);
            Ok(())
        }
        other => Err(format!("--{other} is not a partition option (a bug)")),
    }
}

/// The help lines for [`take_option`]'s options.
pub const OPTIONS_HELP: &str = "  --top DIR        the root partition's top level (subvolid=5), already mounted
  --device DEV     the root partition (default: the device root= names on the command line)
  --cmdline STRING the kernel command line (default: this machine's /proc/cmdline)";

/// The command line: `--cmdline` or this machine's.
pub fn cmdline(given: &Option<String>) -> Result<String> {
    match given {
        Some(c) => Ok(c.clone()),
        None => std::fs::read_to_string("/proc/cmdline").context(|| "reading /proc/cmdline"),
    }
}

/// The device a `root=` value names, found as the init finds it: the block
/// devices in `/sys/class/block`, probed, matched by [`DeviceSpec`] (no udev needed).
pub fn device_of(root: &str) -> Result<PathBuf> {
    let spec = DeviceSpec::parse(root).map_err(|e| e.context(format!("root={root}")))?;
    let devs = devices::scan(Path::new("/sys/class/block"), Path::new("/dev"));
    match devices::find(&spec, &devs).map_err(|e| e.context(format!("root={root}")))? {
        Some(d) => Ok(d.devnode.clone()),
        None => Err(Error::msg(format!("root={root}: no block device here matches it; give --device or --top"))),
    }
}

/// Is `dev` the device `root=` names? Checked by what the spec matches on
/// (label, UUID, PARTUUID, PARTLABEL), as the init would match it; a `/dev/NAME`
/// or `MAJ:MIN` spec names a device of the machine that boots, so it is not
/// checked against a device of this one. `Ok(Some(why))` when it is not the
/// device; an error when it cannot be looked at.
pub fn check_device(dev: &Path, root: &str) -> Result<Option<String>> {
    check_named(dev, "--device", "root", root)
}

/// Is `dev` (given as `option`) the device the kernel parameter `param=spec`
/// names? As [`check_device`] for any parameter (`root`, `toplayer`).
pub fn check_named(dev: &Path, option: &str, param: &str, spec: &str) -> Result<Option<String>> {
    let parsed = DeviceSpec::parse(spec).map_err(|e| e.context(format!("{param}={spec}")))?;
    if matches!(parsed, DeviceSpec::Path(_) | DeviceSpec::MajMin(..)) {
        return Ok(None);
    }
    let st = rustix::fs::stat(dev).map_err(|e| Error::with(format!("{option} {}", dev.display()), e))?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::BlockDevice {
        return Err(Error::msg(format!("{option} {} is not a block device", dev.display())));
    }
    let (major, minor) = (rustix::fs::major(st.st_rdev), rustix::fs::minor(st.st_rdev));
    let devs = devices::scan(Path::new("/sys/class/block"), Path::new("/dev"));
    let Some(found) = devs.iter().find(|d| (d.major, d.minor) == (major, minor)) else {
        return Err(Error::msg(format!("{option} {}: not in /sys/class/block", dev.display())));
    };
    match devices::find(&parsed, std::slice::from_ref(found))? {
        Some(_) => Ok(None),
        None => Ok(Some(format!(
            "{option} {} is not the device {param}={spec} names, so the boot would not use it; it is:\n{}",
            dev.display(),
            devices::describe(std::slice::from_ref(found)).trim_end()
        ))),
    }
}

/// The block device the filesystem holding `dir` was mounted from, as
/// `/proc/self/mountinfo` says (the last mount of the longest mount point above
/// `dir`); `None` when that is not a block device (a tmpfs, an overlay).
pub fn device_of_dir(dir: &Path) -> Result<Option<PathBuf>> {
    let real = std::fs::canonicalize(dir).context(|| format!("--toplayer-dir {}", dir.display()))?;
    let info = std::fs::read_to_string("/proc/self/mountinfo").context(|| "reading /proc/self/mountinfo")?;
    Ok(mount_source(&info, &real).map(PathBuf::from).filter(|src| {
        rustix::fs::stat(src).is_ok_and(|st| rustix::fs::FileType::from_raw_mode(st.st_mode).is_block_device())
    }))
}

/// The source of the mount `path` is under in the mountinfo text `info`: the
/// last entry of the longest mount point that is `path` or above it. Pure.
fn mount_source(info: &str, path: &Path) -> Option<String> {
    let mut best: Option<(usize, String)> = None;
    for line in info.lines() {
        let Some((mine, theirs)) = line.split_once(" - ") else { continue };
        let (Some(point), Some(source)) = (mine.split(' ').nth(4), theirs.split(' ').nth(1)) else { continue };
        let point = unescape(point);
        let depth = Path::new(&point).components().count();
        if path.starts_with(&point) && best.as_ref().is_none_or(|(d, _)| depth >= *d) {
            best = Some((depth, unescape(source)));
        }
    }
    best.map(|(_, s)| s)
}

/// A mountinfo field with its octal escapes (`\040` for a space) undone.
fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let code = b.get(i + 1..i + 4).and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok());
        match (b.get(i).copied().unwrap_or_default(), code) {
            (b'\\', Some(c)) => {
                out.push(c);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Run `f` on the top level: `at`, with `root` the command line's `root=`;
/// `f` also gets the device mounted for it, if one was. A device is mounted
/// (read-only unless `writable`) at a temporary directory that is removed
/// afterwards whatever happens; `--device` must be the one `root=` names.
pub fn with_top<T>(
    at: &Where,
    root: &str,
    writable: bool,
    f: impl FnOnce(&Path, Option<&Path>) -> Result<T>,
) -> Result<T> {
    match at {
        Where::Top(dir) => f(dir, None),
        Where::Device(dev) => {
            if let Some(why) = check_device(dev, root)? {
                return Err(Error::msg(why));
            }
            with_device_mounted(dev, writable, |top| f(top, Some(dev)))
        }
        Where::FromCmdline => {
            let dev = device_of(root)?;
            with_device_mounted(&dev, writable, |top| f(top, Some(&dev)))
        }
    }
}

fn with_device_mounted<T>(dev: &Path, writable: bool, f: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
    with_mounted_as("mnt", dev, writable, f)
}

/// Run `f` on the top level of `dev` (the top layer's device, `dockroot plan
/// --toplayer-device`), mounted read-only at a temporary directory as [`with_top`] does.
pub fn with_toplayer_device<T>(dev: &Path, f: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
    with_mounted_as("toplayer", dev, false, f)
}

fn with_mounted_as<T>(tag: &str, dev: &Path, writable: bool, f: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
    let (fstype, options) = device_mount(dev, writable)?;
    // On a machine dockroot booted, beside what the init left (a tmpfs that always
    // exists); elsewhere in the temporary directory.
    let run = Path::new("/run/dockroot");
    let base = if run.is_dir() { run.to_path_buf() } else { std::env::temp_dir() };
    let dir = base.join(format!("{tag}-{}", std::process::id()));
    std::fs::create_dir(&dir).context(|| format!("creating {}", dir.display()))?;
    let flags = if writable { rustix::mount::MountFlags::empty() } else { rustix::mount::MountFlags::RDONLY };
    let how = if writable { "" } else { " read-only" };
    let mounted = rustix::mount::mount(dev, &dir, fstype.as_str(), flags, options)
        .context(|| format!("mounting {} ({fstype}){how}", dev.display()));
    let r = mounted.and_then(|()| {
        let r = f(&dir);
        if let Err(e) = rustix::mount::unmount(&dir, rustix::mount::UnmountFlags::empty()) {
            eprintln!("dockroot: could not unmount {} from {}: {e}", dev.display(), dir.display());
        }
        r
    });
    let _ = std::fs::remove_dir(&dir);
    r
}

/// How a device is mounted: its filesystem as probed, btrfs at its top level;
/// read-only ones without replaying a journal, so that a look writes nothing.
fn device_mount(dev: &Path, writable: bool) -> Result<(String, &'static std::ffi::CStr)> {
    let file = std::fs::File::open(dev).context(|| format!("opening {}", dev.display()))?;
    let fs = dockroot::probe::probe_filesystem(&file)?
        .ok_or_else(|| Error::msg(format!("{}: no filesystem recognised", dev.display())))?;
    let name = fs.fstype.name().to_string();
    let options = match (name.as_str(), writable) {
        ("btrfs", _) => c"subvolid=5",
        ("ext4" | "ext3" | "ext2", false) => c"noload",
        ("xfs", false) => c"norecovery",
        _ => c"",
    };
    let name = if fs.fstype.is_ext() { "ext4".to_string() } else { name };
    Ok((name, options))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_mount_a_directory_is_on() {
        let info = "22 1 8:2 / / rw - ext4 /dev/sda2 rw
30 22 0:25 / /boot/efi rw - vfat /dev/sda1 rw
31 22 0:26 / /mnt/my\\040disk rw - btrfs /dev/sdb2 rw,subvolid=5
32 30 0:27 / /boot/efi rw - tmpfs tmpfs rw
";
        let src = |p: &str| mount_source(info, Path::new(p));
        assert_eq!(src("/etc").as_deref(), Some("/dev/sda2"));
        assert_eq!(src("/boot/efix").as_deref(), Some("/dev/sda2"));
        assert_eq!(src("/boot/efi/EFI").as_deref(), Some("tmpfs"), "the last mount there wins");
        assert_eq!(src("/mnt/my disk/machine").as_deref(), Some("/dev/sdb2"));
        assert_eq!(src("/mnt/my").as_deref(), Some("/dev/sda2"));
        assert_eq!(unescape("a\\134b\\0"), "a\\b\\0");
    }

    #[test]
    fn finds_the_device_root_names_as_the_init_does() {
        let e = |s: &str| device_of(s).unwrap_err().to_string();
        assert!(e("LABEL=no-such-label-here").contains("no block device here matches it"), "{}", e("LABEL=x"));
        assert!(e("ZFS=pool").starts_with("root=ZFS=pool: "), "{}", e("ZFS=pool"));
    }
}
