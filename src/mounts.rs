//! The initramfs's mounts: the API filesystems (stage 1), the root
//! partition's top level (stage 5), the new root (stage 9), and overlay roots
//! (read-only to look inside, or writable to boot).

use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{Mode, OFlags};
use rustix::mount::MountFlags;

use crate::config::RootPlan;
use crate::devices::BlockDevice;
use crate::error::{Context, Error, Result};
use crate::overlay;
use crate::rwlayer::{self, At, Existing, RwStore};

/// Where the root partition's top level (subvolid=5) is mounted while we work.
pub const STAGING_TOP: &str = "/.dockroot/top";
/// Where a top layer on another device is mounted.
pub const STAGING_TOPLAYER: &str = "/.dockroot/toplayer";
/// Where the rw layer is mounted as the new root.
pub const NEW_ROOT: &str = "/sysroot";

pub fn mkdir_p(path: &str) -> Result<()> {
    std::fs::create_dir_all(path).context(|| format!("creating {path}"))
}

/// The API filesystems; /run as systemd wants it handed over from an initramfs
/// (its INITRD_INTERFACE: tmpfs, mode=0755,nodev,nosuid,strictatime).
pub fn mount_api_filesystems() -> Result<()> {
    let nosuid = MountFlags::NOSUID;
    let table: [(&str, &str, &str, MountFlags, &str); 4] = [
        ("devtmpfs", "/dev", "devtmpfs", nosuid, "mode=0755"),
        ("proc", "/proc", "proc", nosuid | MountFlags::NODEV | MountFlags::NOEXEC, ""),
        ("sysfs", "/sys", "sysfs", nosuid | MountFlags::NODEV | MountFlags::NOEXEC, ""),
        ("tmpfs", "/run", "tmpfs", nosuid | MountFlags::NODEV | MountFlags::STRICTATIME, "mode=0755"),
    ];
    for (src, target, fstype, flags, data) in table {
        mkdir_p(target)?;
        match mount(src, target, fstype, flags, data) {
            Ok(()) => {}
            // Already mounted (a kernel with devtmpfs.mount=1, say): fine.
            Err(e) if e.errno() == Some(rustix::io::Errno::BUSY) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

pub fn mount(src: &str, target: &str, fstype: &str, flags: MountFlags, data: &str) -> Result<()> {
    let data_c = std::ffi::CString::new(data).context(|| format!("mount options for {target} contain a NUL byte"))?;
    rustix::mount::mount(src, target, fstype, flags, data_c.as_c_str())
        .context(|| format!("mounting {src} ({fstype}, options {data:?}) on {target}"))
}

pub fn join_options(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_string(),
        (_, true) => a.to_string(),
        _ => format!("{a},{b}"),
    }
}

/// The root partition's filesystem type: `rootfstype=`, else what the probe found.
pub fn root_fstype(dev: &BlockDevice, plan: &RootPlan) -> Result<String> {
    match (&plan.fstype, &dev.fs) {
        (Some(t), _) => Ok(t.clone()),
        // The ext4 driver mounts ext2 and ext3 too (and kernels may lack the others).
        (None, Some(fs)) if fs.fstype.is_ext() => Ok("ext4".to_string()),
        (None, Some(fs)) => Ok(fs.fstype.name().to_string()),
        (None, None) => Err(Error::msg(format!(
            "root={} ({}): no filesystem recognised; set rootfstype=",
            plan.root,
            dev.devnode.display()
        ))),
    }
}

pub fn mount_top_level(dev: &BlockDevice, plan: &RootPlan, fstype: &str) -> Result<OwnedFd> {
    mkdir_p(STAGING_TOP)?;
    let devnode = dev.devnode.to_string_lossy();
    // btrfs: the top level (subvolid=5), whatever the default subvolume is.
    let opts =
        if fstype == "btrfs" { join_options(&plan.staging_flags, "subvolid=5") } else { plan.staging_flags.clone() };
    mount(&devnode, STAGING_TOP, fstype, MountFlags::empty(), &opts)
        .map_err(|e| e.context(format!("mounting the top level of the root partition {devnode}")))?;
    rustix::fs::open(STAGING_TOP, OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
        .context(|| format!("opening {STAGING_TOP}"))
}

/// Mount the rw layer on [`NEW_ROOT`]: its subvolume, or the overlay of
/// its upper directory on its layers.
pub fn mount_new_root(
    dev: &BlockDevice,
    plan: &RootPlan,
    fstype: &str,
    store: &RwStore,
    read_only: bool,
) -> Result<OwnedFd> {
    mkdir_p(NEW_ROOT)?;
    match store.kind(&At::Current)? {
        Existing::Overlay => {
            mount_overlay_root(store, &At::Current, NEW_ROOT, read_only)?;
        }
        _ => {
            let devnode = dev.devnode.to_string_lossy();
            let flags = if read_only { MountFlags::RDONLY } else { MountFlags::empty() };
            let opts = join_options(&plan.staging_flags, &format!("subvol=/{}", plan.rw_subvol.join("/")));
            mount(&devnode, NEW_ROOT, fstype, flags, &opts)
                .map_err(|e| e.context(format!("mounting the rw layer as the new root from {devnode}")))?;
        }
    }
    open_dir_path(NEW_ROOT)
}

pub fn open_dir_path(path: &str) -> Result<OwnedFd> {
    rustix::fs::open(path, OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
        .context(|| format!("opening {path}"))
}

/// Where an overlay root is mounted read-only to look for its init.
pub const CHECK_MOUNT: &str = "/.dockroot/check";

/// Mount the overlay root `at` on `target`: writable with its upper and work
/// directories, or (`read_only`, for a look inside) its upper directory as
/// the topmost lower layer.
pub fn mount_overlay_root(store: &RwStore, at: &At, target: &str, read_only: bool) -> Result<overlay::Method> {
    let (ov, layers) = overlay_of(store, at, true, Path::new(STAGING_TOP))?;
    let method = overlay::mount(&ov, Path::new(target), read_only)
        .map_err(|e| e.context(format!("mounting the overlay root {}", store.shown_at(at))))?;
    log::info!("mounted {} ({layers} layers) on {target} with {}", store.shown_at(at), method.describe());
    Ok(method)
}

/// The overlay of root `at` (below the top level mounted at `top`) and its
/// image's layer count: writable with its upper and work directories, or
/// read-only with the upper directory as the topmost lower layer.
pub fn overlay_of(store: &RwStore, at: &At, writable: bool, top: &Path) -> Result<(overlay::Overlay, usize)> {
    let spec = store.overlay_spec(at)?;
    let root = top.join(store.path(at));
    let layers = spec.lowerdirs.len();
    let (lowerdirs, upper) = if writable {
        (spec.lowerdirs, Some((root.join(rwlayer::UPPER), root.join(rwlayer::WORK))))
    } else {
        (std::iter::once(root.join(rwlayer::UPPER)).chain(spec.lowerdirs).collect(), None)
    };
    Ok((overlay::Overlay { base: top.join(&spec.base), lowerdirs, upper }, layers))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options() {
        assert_eq!(join_options("", "subvolid=5"), "subvolid=5");
        assert_eq!(join_options("degraded", "subvolid=5"), "degraded,subvolid=5");
    }
}
