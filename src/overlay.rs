//! Overlay roots: an image stored as layer directories (Docker's overlay2,
//! containerd's overlayfs snapshotter) boots as an overlayfs of its layers
//! with an upper/work directory pair of the rw layer's.
//!
//! Two ways to mount, tried in this order:
//! - the new mount API (`fsopen`/`fsconfig`/`fsmount`), one `lowerdir+` per
//!   layer by absolute path (Linux 6.8 and later): no limit on the layer count
//!   but the kernel's own;
//! - `mount(2)` with the layers relative to the store's driver directory as
//!   the working directory (what dockerd and containerd do): short names such
//!   as `l/<26 chars>` keep about 140 layers under the one-page option limit.
//!
//! The pure part builds the option string (escaping `\`, `,` and `:`) and
//! checks its length; the thin part makes the calls.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::mount::{FsMountFlags, FsOpenFlags, MountAttrFlags, MountFlags, MoveMountFlags};

use crate::error::{Context, Error, Result};

/// The kernel copies mount(2) options into one page, NUL included.
pub const LEGACY_OPTIONS_MAX: usize = 4095;
/// `fsconfig(FSCONFIG_SET_STRING)` takes values of at most 255 bytes.
pub const FSCONFIG_VALUE_MAX: usize = 255;

/// Set once the kernel has refused `lowerdir+`.
static NO_LOWERDIR_PLUS: AtomicBool = AtomicBool::new(false);

/// An overlay to mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlay {
    /// The directory the lowerdirs are relative to (absolute).
    pub base: PathBuf,
    /// Lower layers relative to `base` (or absolute), topmost first.
    pub lowerdirs: Vec<PathBuf>,
    /// Absolute upper and work directories; without them the overlay is
    /// read-only.
    pub upper: Option<(PathBuf, PathBuf)>,
}

/// How an overlay was mounted, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `fsconfig` with `lowerdir+`, one layer at a time.
    LowerdirPlus,
    /// `mount(2)` with relative lowerdirs.
    Legacy,
}

impl Method {
    pub fn describe(self) -> &'static str {
        match self {
            Method::LowerdirPlus => "fsconfig lowerdir+",
            Method::Legacy => "mount(2) with relative lowerdirs",
        }
    }
}

/// Escape a path for overlayfs's option parser: `\`, `,` and `:` get a
/// backslash (pure).
pub fn escape(path: &Path) -> Result<String> {
    let s = path.to_str().context(|| format!("overlay path {} is not UTF-8", path.display()))?;
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '\\' | ',' | ':') {
            out.push('\\');
        }
        out.push(c);
    }
    Ok(out)
}

/// The mount(2) option string: lowerdirs relative (the caller chdirs to
/// `base`), upper and work absolute. Refused if it does not fit in a page (pure).
pub fn legacy_options(o: &Overlay) -> Result<String> {
    if o.lowerdirs.is_empty() {
        return Err(Error::msg(format!("no layers to mount as an overlay from {}", o.base.display())));
    }
    let lowers: Vec<String> = o.lowerdirs.iter().map(|l| escape(l)).collect::<Result<_>>()?;
    let mut opts = format!("lowerdir={}", lowers.join(":"));
    if let Some((upper, work)) = &o.upper {
        opts.push_str(&format!(",upperdir={},workdir={}", escape(upper)?, escape(work)?));
    }
    if opts.len() > LEGACY_OPTIONS_MAX {
        return Err(Error::msg(format!(
            "the overlay of {} layers needs {} bytes of mount options, over the kernel's {} for mount(2), \
             and this kernel has no fsconfig lowerdir+ (Linux 6.8 and later)",
            o.lowerdirs.len(),
            opts.len(),
            LEGACY_OPTIONS_MAX
        )));
    }
    Ok(opts)
}

/// The `fsconfig` key/value pairs, or None if a value is too long for
/// `fsconfig` (pure).
pub fn fsconfig_params(o: &Overlay) -> Option<Vec<(&'static str, String)>> {
    let mut params = Vec::new();
    for l in &o.lowerdirs {
        params.push(("lowerdir+", o.base.join(l).to_str()?.to_string()));
    }
    if let Some((upper, work)) = &o.upper {
        params.push(("upperdir", upper.to_str()?.to_string()));
        params.push(("workdir", work.to_str()?.to_string()));
    }
    params.iter().all(|(_, v)| v.len() <= FSCONFIG_VALUE_MAX && !v.is_empty()).then_some(params)
}

/// Mount `o` on `target` one way only (for tests of each).
pub fn mount_with(method: Method, o: &Overlay, target: &Path, read_only: bool) -> Result<()> {
    match method {
        Method::LowerdirPlus => {
            let params = fsconfig_params(o).context(|| "a layer path is too long for fsconfig")?;
            mount_new_api(&params, target, read_only).context(|| {
                format!("mounting an overlay of {} layers on {} with fsconfig", o.lowerdirs.len(), target.display())
            })
        }
        Method::Legacy => mount_legacy(o, target, read_only),
    }
}

/// Mount `o` on `target`: with `lowerdir+` if the kernel has it, else with
/// mount(2) and relative lowerdirs.
pub fn mount(o: &Overlay, target: &Path, read_only: bool) -> Result<Method> {
    let params = fsconfig_params(o).filter(|_| !NO_LOWERDIR_PLUS.load(Ordering::Relaxed));
    let new_api = match params {
        Some(params) => match mount_new_api(&params, target, read_only) {
            Ok(()) => return Ok(Method::LowerdirPlus),
            Err(e) => {
                // Kernels before 6.8 reject the key (and say so in the kernel
                // log): no need to ask again in this boot.
                if e == rustix::io::Errno::INVAL {
                    NO_LOWERDIR_PLUS.store(true, Ordering::Relaxed);
                }
                Some(e)
            }
        },
        None => None,
    };
    mount_legacy(o, target, read_only).map(|()| Method::Legacy).map_err(|e| match new_api {
        Some(first) => e.context(format!("fsconfig with lowerdir+ failed too ({first})")),
        None => e,
    })
}

fn mount_new_api(params: &[(&'static str, String)], target: &Path, read_only: bool) -> rustix::io::Result<()> {
    let fs = rustix::mount::fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)?;
    for (k, v) in params {
        rustix::mount::fsconfig_set_string(&fs, *k, v.as_str())?;
    }
    rustix::mount::fsconfig_create(&fs)?;
    let attrs = if read_only { MountAttrFlags::MOUNT_ATTR_RDONLY } else { MountAttrFlags::empty() };
    let mnt = rustix::mount::fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, attrs)?;
    rustix::mount::move_mount(&mnt, "", rustix::fs::CWD, target, MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH)
}

fn mount_legacy(o: &Overlay, target: &Path, read_only: bool) -> Result<()> {
    let opts = legacy_options(o)?;
    let data = std::ffi::CString::new(opts.as_str()).context(|| "overlay options contain a NUL byte")?;
    rustix::process::chdir(&o.base).context(|| format!("entering {}", o.base.display()))?;
    let flags = if read_only { MountFlags::RDONLY } else { MountFlags::empty() };
    let r = rustix::mount::mount("overlay", target, "overlay", flags, data.as_c_str());
    let back = rustix::process::chdir("/");
    r.context(|| {
        format!("mounting an overlay of {} layers in {} on {}", o.lowerdirs.len(), o.base.display(), target.display())
    })?;
    back.context(|| "returning to /")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ov(n: usize, upper: bool) -> Overlay {
        Overlay {
            base: PathBuf::from("/.dockroot/top/var/lib/docker/overlay2"),
            lowerdirs: (0..n).map(|i| PathBuf::from(format!("l/{:026}", i))).collect(),
            upper: upper.then(|| {
                (
                    PathBuf::from("/.dockroot/top/rw.dockroot-tmp/upper"),
                    PathBuf::from("/.dockroot/top/rw.dockroot-tmp/work"),
                )
            }),
        }
    }

    #[test]
    fn options_are_escaped_and_relative() {
        assert_eq!(escape(Path::new("a,b:c\\d")).unwrap(), "a\\,b\\:c\\\\d");
        let o = ov(2, true);
        assert_eq!(
            legacy_options(&o).unwrap(),
            format!(
                "lowerdir=l/{:026}:l/{:026},upperdir=/.dockroot/top/rw.dockroot-tmp/upper,workdir=/.dockroot/top/rw.dockroot-tmp/work",
                0, 1
            )
        );
        assert_eq!(legacy_options(&ov(2, false)).unwrap(), format!("lowerdir=l/{:026}:l/{:026}", 0, 1));
        assert!(legacy_options(&ov(0, true)).unwrap_err().to_string().contains("no layers"));
    }

    #[test]
    fn option_page_limit() {
        // Docker allows 127 layers: they fit with short links.
        assert!(legacy_options(&ov(127, true)).is_ok());
        let e = legacy_options(&ov(200, true)).unwrap_err().to_string();
        assert!(e.contains("200 layers") && e.contains("lowerdir+"), "{e}");
    }

    #[test]
    fn fsconfig_values() {
        let p = fsconfig_params(&ov(2, true)).unwrap();
        assert_eq!(p.len(), 4);
        assert_eq!(p[0], ("lowerdir+", format!("/.dockroot/top/var/lib/docker/overlay2/l/{:026}", 0)));
        assert_eq!(p[3].0, "workdir");
        let mut long = ov(1, false);
        long.base = PathBuf::from(format!("/{}", "x".repeat(300)));
        assert_eq!(fsconfig_params(&long), None, "values over 255 bytes go the mount(2) way");
    }
}
