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
    let spec = DeviceSpec::parse(root).map_err(|e| e.context(format!("root={root}")))?;
    if matches!(spec, DeviceSpec::Path(_) | DeviceSpec::MajMin(..)) {
        return Ok(None);
    }
    let st = rustix::fs::stat(dev).map_err(|e| Error::with(format!("--device {}", dev.display()), e))?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::BlockDevice {
        return Err(Error::msg(format!("--device {} is not a block device", dev.display())));
    }
    let (major, minor) = (rustix::fs::major(st.st_rdev), rustix::fs::minor(st.st_rdev));
    let devs = devices::scan(Path::new("/sys/class/block"), Path::new("/dev"));
    let Some(found) = devs.iter().find(|d| (d.major, d.minor) == (major, minor)) else {
        return Err(Error::msg(format!("--device {}: not in /sys/class/block", dev.display())));
    };
    match devices::find(&spec, std::slice::from_ref(found))? {
        Some(_) => Ok(None),
        None => Ok(Some(format!(
            "--device {} is not the device root={root} names, so the boot would not use it; it is:\n{}",
            dev.display(),
            devices::describe(std::slice::from_ref(found)).trim_end()
        ))),
    }
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
    let (fstype, options) = device_mount(dev, writable)?;
    // On a machine dockroot booted, beside what the init left (a tmpfs that always
    // exists); elsewhere in the temporary directory.
    let run = Path::new("/run/dockroot");
    let base = if run.is_dir() { run.to_path_buf() } else { std::env::temp_dir() };
    let dir = base.join(format!("mnt-{}", std::process::id()));
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
    fn finds_the_device_root_names_as_the_init_does() {
        let e = |s: &str| device_of(s).unwrap_err().to_string();
        assert!(e("LABEL=no-such-label-here").contains("no block device here matches it"), "{}", e("LABEL=x"));
        assert!(e("ZFS=pool").starts_with("root=ZFS=pool: "), "{}", e("ZFS=pool"));
    }
}
