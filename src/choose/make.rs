//! Making the root the rule chose, under the temporary name: a fresh one
//! from the image with the top layer (stage 7-8), or a writable copy of a
//! kept root; [`RwStore::commit`] then installs it.

use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::mount::MountFlags;

use super::{Ctx, Devices};
use crate::config::{Params, RootPlan};
use crate::devices::{self, BlockDevice, DeviceSpec, WaitPolicy};
use crate::error::{Context, Error, Result};
use crate::mounts::{mkdir_p, mount, mount_overlay_root, open_dir_path, NEW_ROOT, STAGING_TOP, STAGING_TOPLAYER};
use crate::record::{Record, Timings};
use crate::rwlayer::{self, At, Existing, RootInfo, RwStore};
use crate::store::{self, Resolved};
use crate::{btrfs, kernel, switch_root, toplayer};

/// The fresh root, built under the temporary name: resolve the image,
/// snapshot it, apply the top layer, check the init.
pub fn build_fresh(
    ctx: &Ctx,
    t: &mut Timings,
    store: &RwStore,
    top: BorrowedFd<'_>,
    devs: &mut Devices,
) -> Result<Resolved> {
    let resolved =
        t.run("resolve image", || store::resolve_image(Path::new(STAGING_TOP), &ctx.cfg.store, &ctx.cfg.image))?;
    for w in &resolved.warnings {
        log::warn!("{w}");
    }
    let info = RootInfo { created: rwlayer::now_stamp(), image: resolved.image_id.clone() };
    let subvolume = match &resolved.root {
        store::Root::Subvolume(p) => p.clone(),
        store::Root::Overlay { base, lowerdirs } => {
            log::info!(
                "image {} is {} in {} ({} layer directories in /{})",
                resolved.reference,
                resolved.image_id,
                resolved.whence(),
                lowerdirs.len(),
                base.display()
            );
            let spec = rwlayer::OverlaySpec { base: base.clone(), lowerdirs: lowerdirs.clone() };
            t.run("rw layer", || {
                store
                    .begin_overlay(&spec, &info)
                    .map_err(|e| e.context(format!("preparing an overlay of image {}", resolved.reference)))
            })?;
            build_in_overlay(ctx, t, store, devs).map_err(|e| e.context(format!("in image {}", resolved.reference)))?;
            return Ok(resolved);
        }
    };
    log::info!(
        "image {} is {} in {} (layer subvolume /{})",
        resolved.reference,
        resolved.image_id,
        resolved.whence(),
        subvolume.display()
    );
    let new = t.run("snapshot", || {
        let image_dir: Vec<String> = subvolume.iter().map(|c| c.to_string_lossy().into_owned()).collect();
        let image_fd = rwlayer::open_beneath(top, &image_dir)
            .context(|| format!("the layer subvolume of image {}", resolved.reference))?;
        if !btrfs::is_subvolume(image_fd.as_fd())? {
            return Err(Error::msg(format!(
                "/{} (top layer of image {}) is not a btrfs subvolume: is dockerd using the btrfs storage driver?",
                image_dir.join("/"),
                resolved.reference
            )));
        }
        store
            .begin(image_fd.as_fd(), &info)
            .map_err(|e| e.context(format!("snapshotting image {}", resolved.reference)))
    })?;
    t.run("top layer", || {
        apply_top_layer(&ctx.cfg.params, &ctx.cfg.root, ctx.root_dev, ctx.policy, devs, new.as_fd())
    })?;
    switch_root::find_init(new.as_fd(), ctx.candidates)
        .map_err(|e| e.context(format!("in image {}", resolved.reference)))?;
    image_kernel(ctx, new.as_fd());
    Ok(resolved)
}

/// Boot the finished root's own kernel instead of this one when it has no
/// modules for this one ([`kernel::try_kexec`]; returns when it does not).
fn image_kernel(ctx: &Ctx, new: BorrowedFd<'_>) {
    let p = &ctx.cfg.params;
    kernel::try_kexec(new, &ctx.cfg.cmdline, p.kexec, p.kexec_from.as_deref(), ctx.carry_image.as_deref());
}

/// An overlay root at the temporary name, mounted on [`NEW_ROOT`] for the
/// top layer and the init check, then unmounted (the final mount is made
/// after the renames).
fn build_in_overlay(ctx: &Ctx, t: &mut Timings, store: &RwStore, devs: &mut Devices) -> Result<()> {
    mkdir_p(NEW_ROOT)?;
    t.run("mount overlay", || {
        devs.hooks.before_mount("overlay", None);
        mount_overlay_root(store, &At::Tmp, NEW_ROOT, false)
    })?;
    let r = open_dir_path(NEW_ROOT).and_then(|new| {
        t.run("top layer", || {
            apply_top_layer(&ctx.cfg.params, &ctx.cfg.root, ctx.root_dev, ctx.policy, devs, new.as_fd())
        })?;
        switch_root::find_init(new.as_fd(), ctx.candidates)?;
        image_kernel(ctx, new.as_fd());
        Ok(())
    });
    let unmounted = rustix::mount::unmount(NEW_ROOT, rustix::mount::UnmountFlags::empty())
        .context(|| format!("unmounting the new overlay root from {NEW_ROOT}"));
    r.and(unmounted)
}

/// Make a writable copy of kept root `name` the rw layer: a snapshot of a
/// subvolume, or a new overlay root with a copy of the upper directory.
pub fn copy_kept(store: &RwStore, name: &str, keep: usize, record: &mut Record) -> Result<()> {
    let at = At::Kept(name.to_string());
    let fd = store.open_root(&at)?;
    let image = rwlayer::read_info(fd.as_fd()).map(|i| i.image).unwrap_or_else(|| "unknown".into());
    let info = RootInfo { created: rwlayer::now_stamp(), image };
    let copied = match store.kind(&at)? {
        Existing::Overlay => store.overlay_spec(&at).and_then(|spec| {
            let tmp = store.begin_overlay(&spec, &info)?;
            let upper = rwlayer::open_beneath(tmp.as_fd(), &[rwlayer::UPPER.to_string()])?;
            let src = Path::new(STAGING_TOP).join(store.path(&at)).join(rwlayer::UPPER);
            toplayer::apply(&src, upper.as_fd()).map(drop)
        }),
        _ => store.begin(fd.as_fd(), &info).map(drop),
    };
    if let Err(e) = copied {
        if let Some(w) = store.abort() {
            record.warn(w);
        }
        return Err(e.context(format!("copying {}", store.kept_shown(name))));
    }
    let commit =
        store.commit(keep).map_err(|e| e.context(format!("installing a copy of {}", store.kept_shown(name))))?;
    record.retired = commit.retired;
    record.pruned = commit.pruned;
    Ok(())
}

/// Apply the top layer (`toplayer=`) to the new root `rw`.
fn apply_top_layer(
    params: &Params,
    plan: &RootPlan,
    root_dev: &BlockDevice,
    policy: &WaitPolicy,
    devs: &mut Devices,
    rw: std::os::fd::BorrowedFd<'_>,
) -> Result<()> {
    let Some(toplayer) = &params.toplayer else {
        log::info!("no toplayer= given: the image boots without machine-specific files");
        return Ok(());
    };
    let spec = DeviceSpec::parse(toplayer).context(|| format!("toplayer={toplayer}"))?;
    let subpath = plan.toplayer_path.clone().unwrap_or_default();
    let same_device = matches!(devices::find(&spec, std::slice::from_ref(root_dev)), Ok(Some(_)));
    let (src, mounted): (PathBuf, bool) = if same_device && params.toplayerflags.as_deref().is_none_or(only_subvol) {
        // Same partition as root: reuse the top-level mount, no second mount.
        let parts = plan.toplayer_on_root(params)?.context(|| {
            "toplayer= is the root partition but toplayer_path= is not set: \
             it must name the top layer directory on that partition"
        })?;
        log::info!(
            "toplayer={toplayer} is the root partition: reading /{} through its top-level mount",
            parts.join("/")
        );
        (Path::new(STAGING_TOP).join(parts.join("/")), false)
    } else {
        let degraded = params.toplayerflags.as_deref().unwrap_or("").split(',').any(|o| o == "degraded");
        // rootdelay= was waited for the root device; not again for this one.
        let policy = WaitPolicy { delay: Duration::ZERO, ..policy.clone() };
        let dev = devs
            .waiter
            .wait_for(&spec, &policy, degraded, devs.hooks.as_mut())
            .map_err(|e| e.context(format!("toplayer={toplayer}")))?;
        let fstype = match (&params.toplayerfstype, &dev.fs) {
            (Some(t), _) => t.clone(),
            (None, Some(fs)) => fs.fstype.name().to_string(),
            (None, None) => {
                return Err(Error::msg(format!(
                    "toplayer={toplayer} ({}): no filesystem recognised; set toplayerfstype=",
                    dev.devnode.display()
                )))
            }
        };
        devs.hooks.before_mount(&fstype, dev.fs.as_ref());
        mkdir_p(STAGING_TOPLAYER)?;
        let devnode = dev.devnode.to_string_lossy().into_owned();
        let flags = params.toplayerflags.clone().unwrap_or_default();
        let mut mounted = mount(&devnode, STAGING_TOPLAYER, &fstype, MountFlags::RDONLY, &flags);
        if matches!(&mounted, Err(e) if e.errno() == Some(rustix::io::Errno::NODEV))
            && dev.fs.as_ref().is_some_and(|fs| fs.fstype.is_ext())
            && params.toplayerfstype.is_none()
        {
            // Kernels without ext2/ext3 drivers mount those with the ext4 driver.
            mounted = mount(&devnode, STAGING_TOPLAYER, "ext4", MountFlags::RDONLY, &flags);
        }
        mounted.map_err(|e| e.context(format!("mounting the top layer device toplayer={toplayer}")))?;
        (Path::new(STAGING_TOPLAYER).join(subpath.join("/")), true)
    };
    let result = toplayer::apply(&src, rw);
    if mounted {
        if let Err(e) = rustix::mount::unmount(STAGING_TOPLAYER, rustix::mount::UnmountFlags::empty()) {
            log::warn!("could not unmount {STAGING_TOPLAYER}: {e}");
        }
    }
    let stats = result.map_err(|e| e.context(format!("applying the top layer {}", src.display())))?;
    log::info!(
        "top layer {} applied: {} files ({} bytes), {} dirs, {} symlinks, {} hard links, {} special files",
        src.display(),
        stats.files,
        stats.bytes,
        stats.dirs,
        stats.symlinks,
        stats.hardlinks,
        stats.specials
    );
    Ok(())
}

/// True if the mount options name only a subvolume (so a mount we already
/// have of the same device can serve).
fn only_subvol(flags: &str) -> bool {
    flags.split(',').filter(|o| !o.is_empty()).all(|o| o.starts_with("subvol="))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_subvol_options() {
        assert!(only_subvol("subvol=a"));
        assert!(only_subvol(""));
        assert!(!only_subvol("subvol=a,ro"));
    }
}
