//! The boot, stage by stage. Each stage lives in its own module; this one
//! only strings them together, times them, and turns any error into a clear
//! message and a reboot (there is no shell to drop into, and PID 1 must not
//! exit or panic).

use std::convert::Infallible;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustix::fs::{Mode, OFlags};
use rustix::mount::MountFlags;

use crate::cmdline::BootMode;
use crate::cmdline::{self, Params};
use crate::devices::{self, BlockDevice, DeviceSpec, WaitHooks, WaitPolicy};
use crate::error::{Context, Error, Result};
use crate::reference::{self, ImageSpec};
use crate::rwlayer::{At, Existing, RootInfo, RwStore};
use crate::store::Resolved as ResolvedImage;
use crate::{btrfs, logging, modules, overlay, rwlayer, store, switch_root, toplayer};

/// Where the root partition's top level (subvolid=5) is mounted while we work.
pub const STAGING_TOP: &str = "/.dockroot/top";
/// Where a top layer on another device is mounted.
pub const STAGING_TOPLAYER: &str = "/.dockroot/toplayer";
/// Where the rw layer is mounted as the new root.
pub const NEW_ROOT: &str = "/sysroot";

/// Stage timings, for the closing log line (and later the boot record).
#[derive(Default)]
struct Timings {
    start: Option<Instant>,
    stages: Vec<(&'static str, Duration)>,
}

impl Timings {
    fn new() -> Self {
        Timings { start: Some(Instant::now()), stages: Vec::new() }
    }

    fn run<T>(&mut self, name: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let t = Instant::now();
        let r = f();
        self.stages.push((name, t.elapsed()));
        r
    }

    fn summary(&self) -> String {
        let total = self.start.map(|s| s.elapsed()).unwrap_or_default();
        let parts: Vec<String> = self.stages.iter().map(|(n, d)| format!("{n} {}ms", d.as_millis())).collect();
        format!("{}ms in all ({})", total.as_millis(), parts.join(", "))
    }
}

/// The reboot delay in effect (the default until the command line is read);
/// the panic hook reads it.
static REBOOT_DELAY_MS: AtomicU64 = AtomicU64::new(cmdline::DEFAULT_REBOOT_DELAY.as_millis() as u64);

/// PID 1's entry point: boot, or explain why not and reboot.
pub fn run() -> ! {
    logging::init();
    std::panic::set_hook(Box::new(on_panic));
    let mut reboot_delay = cmdline::DEFAULT_REBOOT_DELAY;
    let err = match boot(&mut reboot_delay) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    fail(&err, reboot_delay)
}

/// Print the error where a person and the logs will see it, wait, reboot.
fn fail(err: &Error, delay: Duration) -> ! {
    log::error!("cannot boot: {err}");
    log::error!("rebooting in {} s (set dockroot.reboot_delay= to change this)", delay.as_secs());
    reboot_after(delay)
}

fn reboot_after(delay: Duration) -> ! {
    std::thread::sleep(delay);
    rustix::fs::sync();
    loop {
        if let Err(e) = rustix::system::reboot(rustix::system::RebootCommand::Restart) {
            logging::emergency(&format!("reboot failed ({e}); trying to power off"));
            let _ = rustix::system::reboot(rustix::system::RebootCommand::PowerOff);
        }
        // Only reached if the kernel refused both: keep saying so, never exit.
        std::thread::sleep(Duration::from_secs(60));
    }
}

/// The panic hook. A panic is a bug in dockroot; in PID 1 it would end in
/// abort() and a kernel panic ("Attempted to kill init!") that says nothing
/// useful. So PID 1 says what happened, where, and reboots like any other
/// failure. (A forked helper only reports; its abort ends just that child.)
/// The logger is not used: the panic may have happened while it held a lock.
fn on_panic(info: &std::panic::PanicHookInfo<'_>) {
    let payload = info
        .payload()
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str));
    let location = info.location().map(|l| (l.file(), l.line()));
    let pid1 = rustix::process::getpid().is_init();
    let delay = Duration::from_millis(REBOOT_DELAY_MS.load(Ordering::Relaxed));
    logging::emergency(&panic_report(payload, location));
    if pid1 {
        logging::emergency(&format!("rebooting in {} s (set dockroot.reboot_delay= to change this)", delay.as_secs()));
        reboot_after(delay);
    }
}

/// What the panic hook prints: the bug and where it is.
fn panic_report(payload: Option<&str>, location: Option<(&str, u32)>) -> String {
    let at = location.map(|(f, l)| format!(" at {f}:{l}")).unwrap_or_default();
    let what = payload.unwrap_or("(no message)");
    format!("cannot boot: dockroot {} hit a bug (a panic{at}): {what}; please report it", env!("CARGO_PKG_VERSION"))
}

fn boot(reboot_delay: &mut Duration) -> Result<Infallible> {
    let mut t = Timings::new();
    t.run("early", mount_api_filesystems)?;
    switch_root::reopen_console();
    let kmsg_saved = logging::attach_kmsg();
    log::info!("dockroot {} starting", env!("CARGO_PKG_VERSION"));

    let cmdline = read_cmdline()?;
    let (args, _) = cmdline::split(&cmdline);
    let params = Params::parse(&args).context(|| "in the kernel command line")?;
    *reboot_delay = params.reboot_delay;
    REBOOT_DELAY_MS.store(u64::try_from(params.reboot_delay.as_millis()).unwrap_or(u64::MAX), Ordering::Relaxed);
    logging::set_console_debug(params.debug);
    for w in &params.warnings {
        log::warn!("{w}");
    }
    let image = image_spec(&params)?;
    let plan = RootPlan::from_params(&params)?;
    let store_opts = store::options_from_args(&args, &plan.docker_path).context(|| "in the kernel command line")?;

    // Listen for uevents before loading drivers, so no device that appears
    // from now on is missed.
    let mut waiter = devices::Waiter::new();
    let mut hooks = t.run("modules", start_modules)?;

    let root_spec = DeviceSpec::parse(&plan.root).context(|| format!("root={}", plan.root))?;
    let policy = WaitPolicy { timeout: params.device_timeout, delay: params.rootdelay };
    let degraded = plan.staging_flags.split(',').any(|o| o == "degraded");
    let root_dev = t.run("root device", || {
        waiter
            .wait_for(&root_spec, &policy, degraded, hooks.as_mut())
            .map_err(|e| e.context(format!("root={}", plan.root)))
    })?;

    let fstype = root_fstype(&root_dev, &plan)?;
    let top = t.run("mount top level", || mount_top_level(&root_dev, &plan, &fstype))?;
    let mut record = Record::default();
    let candidates = switch_root::init_candidates(params.init.as_deref());
    let mut devs = Devices { waiter, hooks };
    let ctx = Ctx {
        store_opts: &store_opts,
        params: &params,
        plan: &plan,
        image: &image,
        root_dev: &root_dev,
        policy: &policy,
        candidates: &candidates,
    };
    let store = RwStore::open(top.as_fd(), &plan.rw_subvol)?;
    match store.recover() {
        Ok(done) => record.recovered = done,
        Err(e) => record.warn(format!("could not clean up after an interrupted boot: {e}")),
    }
    #[cfg(feature = "fault-injection")]
    for a in args.iter().filter(|a| a.key == "dockroot.fault") {
        match a.value.as_deref() {
            Some("panic") => panic!("dockroot.fault=panic: a panic injected by a test build"),
            Some(v) if v.starts_with("pause:") => {
                let _ = rwlayer::PAUSE_AT.set(v.trim_start_matches("pause:").to_string());
            }
            _ => log::warn!("dockroot.fault={:?} is not a fault this build injects", a.value),
        }
    }
    let booted = choose_root(&ctx, &mut t, &store, top.as_fd(), &mut devs, &mut record)?;
    record.kept = store.kept().map(|k| k.iter().map(|n| store.kept_shown(n)).collect()).unwrap_or_default();
    record.rw_layer = store.rw_shown();
    // Mounted while the top level still is: btrfs reuses the mounted
    // filesystem instead of reading it again.
    let new_root = t.run("mount root", || mount_new_root(&root_dev, &plan, &fstype, &store, params.read_only))?;
    record.rw_kind =
        store.kind(&At::Current).map(|k| if k == Existing::Overlay { "overlay" } else { "subvolume" }).unwrap_or("?");
    record.trash_deleter = store.start_emptying_trash();
    drop(store);
    drop(top);
    // Detached: a background deletion of old overlay roots may still hold it.
    t.run("unmount staging", || {
        rustix::mount::unmount(STAGING_TOP, rustix::mount::UnmountFlags::DETACH)
            .context(|| format!("unmounting {STAGING_TOP}"))
    })?;
    let init = switch_root::find_init(new_root.as_fd(), &candidates)?;
    drop(new_root);

    record.write(&params, &root_dev, &booted, &t);
    log::info!("ready: {}", t.summary());
    logging::detach_kmsg(kmsg_saved);
    // The init's arguments are ours: the kernel passed us what it did not
    // understand and everything after "--".
    let init_args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let term = std::env::var("TERM").unwrap_or_else(|_| "linux".to_string());
    let env = [("HOME".to_string(), "/".to_string()), ("TERM".to_string(), term)];
    switch_root::switch_root(Path::new(NEW_ROOT), &init, &init_args, &env)
}

/// The kernel command line. Bytes that are not UTF-8 (the kernel passes any)
/// become U+FFFD in what dockroot parses instead of making the machine
/// unbootable; the init's own arguments keep their bytes (args_os).
fn read_cmdline() -> Result<String> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open("/proc/cmdline")
        .and_then(|f| f.take(CMDLINE_MAX_BYTES).read_to_end(&mut bytes))
        .context(|| "reading /proc/cmdline")?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// More than any architecture's COMMAND_LINE_SIZE.
const CMDLINE_MAX_BYTES: u64 = 64 << 10;

/// Where the boot record is written (the initramfs's /run moves into the new root).
pub const BOOT_RECORD: &str = "/run/dockroot/boot.json";

/// What the boot needs to know at every step of choosing the root.
struct Ctx<'a> {
    store_opts: &'a store::StoreOptions,
    params: &'a Params,
    plan: &'a RootPlan,
    image: &'a ImageSpec,
    root_dev: &'a BlockDevice,
    policy: &'a WaitPolicy,
    candidates: &'a [String],
}

/// Which root this boot ended up with, and why.
enum Booted {
    /// A fresh snapshot of the image with the top layer.
    Fresh(ResolvedImage),
    /// The current rw layer as it was (`dockroot.boot=persist`).
    Persisted,
    /// A writable copy of a kept root (`dockroot.boot=previous`).
    Previous(String),
    /// The fresh root could not be made: an older root instead.
    Fallback { reason: String, from: String },
}

/// The facts for /run/dockroot/boot.json, gathered along the way.
#[derive(Default)]
struct Record {
    warnings: Vec<String>,
    recovered: Vec<String>,
    retired: Option<String>,
    pruned: Vec<String>,
    kept: Vec<String>,
    rw_layer: String,
    /// "subvolume" or "overlay".
    rw_kind: &'static str,
    /// Whether old overlay roots are being deleted in the background.
    trash_deleter: bool,
}

impl Record {
    fn warn(&mut self, w: String) {
        log::warn!("{w}");
        self.warnings.push(w);
    }

    fn write(&self, params: &Params, root_dev: &BlockDevice, booted: &Booted, t: &Timings) {
        let (booted_name, image, fallback) = match booted {
            Booted::Fresh(r) => (
                "fresh".to_string(),
                serde_json::json!({
                    "reference": r.reference, "id": r.image_id, "diff_ids": r.diff_ids,
                    "chain_ids": r.chain_ids, "store": r.whence(), "store_kind": r.store.name(),
                    "driver": r.driver.name(), "layer": r.layer,
                    "layer_subvolume": match &r.root {
                        store::Root::Subvolume(p) => serde_json::json!(format!("/{}", p.display())),
                        store::Root::Overlay { .. } => serde_json::Value::Null,
                    },
                    "lowerdirs": match &r.root {
                        store::Root::Subvolume(_) => serde_json::Value::Null,
                        store::Root::Overlay { base, lowerdirs } => serde_json::json!(lowerdirs
                            .iter()
                            .map(|l| format!("/{}", base.join(l).display()))
                            .collect::<Vec<_>>()),
                    },
                    "manifest_digest": r.manifest_digest, "verified": r.verified,
                }),
                serde_json::Value::Null,
            ),
            Booted::Persisted => ("persist".to_string(), serde_json::Value::Null, serde_json::Value::Null),
            Booted::Previous(k) => (format!("previous: {k}"), serde_json::Value::Null, serde_json::Value::Null),
            Booted::Fallback { reason, from } => (
                format!("fallback: {from}"),
                serde_json::Value::Null,
                serde_json::json!({"reason": reason, "booted": from}),
            ),
        };
        let stages: serde_json::Map<String, serde_json::Value> =
            t.stages.iter().map(|(n, d)| (n.to_string(), serde_json::json!(d.as_secs_f64() * 1000.0))).collect();
        let fs = root_dev.fs.as_ref();
        let json = serde_json::json!({
            "dockroot": env!("CARGO_PKG_VERSION"),
            "requested": params.mode.name(),
            "booted": booted_name,
            "image": image,
            "fallback": fallback,
            "rw_layer": self.rw_layer,
            "rw_layer_kind": self.rw_kind,
            "deleting_in_background": self.trash_deleter,
            "root_device": {
                "devnode": root_dev.devnode.to_string_lossy(),
                "label": fs.and_then(|f| f.label.clone()),
                "uuid": fs.and_then(|f| f.uuid.clone()),
            },
            "retired": self.retired,
            "pruned": self.pruned,
            "kept": self.kept,
            "keep": params.keep,
            "recovered": self.recovered,
            "warnings": self.warnings,
            "stages_ms": stages,
            "total_ms": t.start.map(|s| s.elapsed().as_secs_f64() * 1000.0),
        });
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all("/run/dockroot")?;
            std::fs::write(BOOT_RECORD, format!("{json:#}\n"))
        };
        if let Err(e) = write() {
            log::warn!("could not write {BOOT_RECORD}: {e}");
        }
    }
}

/// Decide which root to boot and put it at the rw layer's name.
fn choose_root(
    ctx: &Ctx,
    t: &mut Timings,
    store: &RwStore,
    top: BorrowedFd<'_>,
    devs: &mut Devices,
    record: &mut Record,
) -> Result<Booted> {
    match ctx.params.mode {
        BootMode::Fresh => {}
        BootMode::Persist => match usable(store, &At::Current, ctx) {
            true => {
                log::info!("dockroot.boot=persist: booting the current rw layer {} as it is", store.rw_shown());
                return Ok(Booted::Persisted);
            }
            false => record.warn(format!(
                "dockroot.boot=persist, but there is no bootable rw layer at {}: booting a fresh one",
                store.rw_shown()
            )),
        },
        BootMode::Previous => {
            for name in usable_kept(store, ctx)? {
                match t.run("rw layer", || copy_kept(store, &name, ctx.params.keep, record)) {
                    Ok(()) => {
                        log::info!("dockroot.boot=previous: booting a copy of {}", store.kept_shown(&name));
                        return Ok(Booted::Previous(store.kept_shown(&name)));
                    }
                    Err(e) => record.warn(format!("dockroot.boot=previous: {e}")),
                }
            }
            record.warn("dockroot.boot=previous, but no kept root could be booted: booting a fresh one".into())
        }
    }
    let fresh = build_fresh(ctx, t, store, top, devs).and_then(|resolved| {
        // A failed install leaves the previous root in place (see RwStore::commit).
        let commit = t
            .run("install", || store.commit(ctx.params.keep))
            .map_err(|e| e.context(format!("installing the new root of image {}", resolved.reference)))?;
        Ok((resolved, commit))
    });
    match fresh {
        Ok((resolved, commit)) => {
            // Logged when found; recorded for the booted system too.
            record.warnings.extend(resolved.warnings.iter().cloned());
            record.retired = commit.retired;
            record.pruned = commit.pruned;
            match &resolved.root {
                store::Root::Subvolume(_) => {
                    log::info!("rw layer {} is a fresh snapshot of {}", store.rw_shown(), resolved.reference)
                }
                store::Root::Overlay { lowerdirs, .. } => log::info!(
                    "rw layer {} is a fresh overlay of {} ({} layers)",
                    store.rw_shown(),
                    resolved.reference,
                    lowerdirs.len()
                ),
            }
            Ok(Booted::Fresh(resolved))
        }
        Err(e) => {
            if let Some(w) = store.abort() {
                record.warn(w);
            }
            fall_back(e, ctx, store, record)
        }
    }
}

/// The fresh root, built under the temporary name: resolve the image,
/// snapshot it, apply the top layer, check the init.
fn build_fresh(
    ctx: &Ctx,
    t: &mut Timings,
    store: &RwStore,
    top: BorrowedFd<'_>,
    devs: &mut Devices,
) -> Result<ResolvedImage> {
    let resolved =
        t.run("resolve image", || store::resolve_image(Path::new(STAGING_TOP), ctx.store_opts, ctx.image))?;
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
    t.run("top layer", || apply_top_layer(ctx.params, ctx.plan, ctx.root_dev, ctx.policy, devs, new.as_fd()))?;
    switch_root::find_init(new.as_fd(), ctx.candidates)
        .map_err(|e| e.context(format!("in image {}", resolved.reference)))?;
    Ok(resolved)
}

/// An overlay root at the temporary name, mounted on [`NEW_ROOT`] for the
/// top layer and the init check, then unmounted (the final mount is made
/// after the renames).
fn build_in_overlay(ctx: &Ctx, t: &mut Timings, store: &RwStore, devs: &mut Devices) -> Result<()> {
    mkdir_p(NEW_ROOT)?;
    t.run("mount overlay", || mount_overlay_root(store, &At::Tmp, NEW_ROOT, false))?;
    let r = open_dir_path(NEW_ROOT).and_then(|new| {
        t.run("top layer", || apply_top_layer(ctx.params, ctx.plan, ctx.root_dev, ctx.policy, devs, new.as_fd()))?;
        switch_root::find_init(new.as_fd(), ctx.candidates).map(drop)
    });
    let unmounted = rustix::mount::unmount(NEW_ROOT, rustix::mount::UnmountFlags::empty())
        .context(|| format!("unmounting the new overlay root from {NEW_ROOT}"));
    r.and(unmounted)
}

/// Whether the root `at` exists and has an init.
fn usable(store: &RwStore, at: &At, ctx: &Ctx) -> bool {
    match store.kind(at) {
        Ok(k) if k.is_root() => match has_init(store, at, ctx) {
            Ok(()) => true,
            Err(e) => {
                log::warn!("{} cannot boot: {e}", store.shown_at(at));
                false
            }
        },
        _ => false,
    }
}

/// The kept roots that have an init, newest first.
fn usable_kept(store: &RwStore, ctx: &Ctx) -> Result<Vec<String>> {
    let mut usable_ones = Vec::new();
    for name in store.kept()?.into_iter().rev() {
        if usable(store, &At::Kept(name.clone()), ctx) {
            usable_ones.push(name);
        } else {
            log::warn!("kept root {} skipped", store.kept_shown(&name));
        }
    }
    Ok(usable_ones)
}

/// Make a writable copy of kept root `name` the rw layer: a snapshot of a
/// subvolume, or a new overlay root with a copy of the upper directory.
fn copy_kept(store: &RwStore, name: &str, keep: usize, record: &mut Record) -> Result<()> {
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

/// The failure policy: a fresh root could not be made, so boot the last root
/// that booted (the current rw layer, as it is), or failing that a copy of the
/// newest kept root with an init; loudly. Only if there is none is it fatal.
fn fall_back(err: Error, ctx: &Ctx, store: &RwStore, record: &mut Record) -> Result<Booted> {
    let reason = err.to_string();
    log::error!("cannot prepare a fresh root: {reason}");
    if usable(store, &At::Current, ctx) {
        let from = format!("{} as it was", store.rw_shown());
        record.warn(format!("FALLBACK: booting the previous root {from}; fix the problem above and reboot"));
        return Ok(Booted::Fallback { reason, from });
    }
    let mut tried = Vec::new();
    for name in usable_kept(store, ctx).unwrap_or_else(|e| {
        tried.push(format!("the kept roots cannot be listed: {e}"));
        Vec::new()
    }) {
        match copy_kept(store, &name, ctx.params.keep, record) {
            Ok(()) => {
                let from = format!("a copy of {}", store.kept_shown(&name));
                record.warn(format!("FALLBACK: booting {from}; fix the problem above and reboot"));
                return Ok(Booted::Fallback { reason, from });
            }
            Err(e) => {
                log::error!("{e}");
                tried.push(e.to_string());
            }
        }
    }
    match tried.is_empty() {
        true => Err(Error::msg(format!("{reason}; and there is no previous root to fall back to"))),
        false => Err(Error::msg(format!("{reason}; and no previous root could be booted: {}", tried.join("; ")))),
    }
}

/// The image to boot: `dockroot.image=` if given, else the embedded config.
fn image_spec(params: &Params) -> Result<ImageSpec> {
    if let Some(img) = &params.image {
        return reference::parse(img).context(|| format!("dockroot.image={img}"));
    }
    let bytes = match std::fs::read(cmdline::CONFIG_PATH) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::msg(format!(
                "no image to boot: {} is missing from the initramfs and dockroot.image= is not set",
                cmdline::CONFIG_PATH
            )))
        }
        Err(e) => return Err(Error::with(format!("reading {}", cmdline::CONFIG_PATH), e)),
    };
    reference::from_prior_art_config(&bytes).context(|| format!("in {}", cmdline::CONFIG_PATH))
}

/// The checked, pure part of the plan: which device, which paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootPlan {
    pub root: String,
    /// `rootfstype=`, if given; else the filesystem found on the device.
    pub fstype: Option<String>,
    pub rw_subvol: Vec<String>,
    pub docker_path: Vec<String>,
    /// rootflags without subvol=/subvolid=, for the staging mount.
    pub staging_flags: String,
    /// toplayer_path below the toplayer filesystem's root, if any.
    pub toplayer_path: Option<Vec<String>>,
}

impl RootPlan {
    /// The top layer directory below the root partition's top level, when
    /// `toplayer=` is the root partition: `toplayerflags=subvol=` then
    /// `toplayer_path=` (None without `toplayer_path=`).
    pub fn toplayer_on_root(&self, p: &Params) -> Result<Option<Vec<String>>> {
        let Some(path) = &self.toplayer_path else { return Ok(None) };
        let mut parts = p
            .toplayerflags
            .as_deref()
            .and_then(|f| cmdline::mount_option(f, "subvol"))
            .map(|s| cmdline::relative_path("toplayerflags=subvol", s))
            .transpose()?
            .unwrap_or_default();
        parts.extend(path.iter().cloned());
        Ok(Some(parts))
    }

    pub fn from_params(p: &Params) -> Result<RootPlan> {
        let root = p.root.clone().context(|| "root= is not set: it must name the partition with the Docker data")?;
        let fstype = p.rootfstype.clone();
        let subvol = p.rw_subvol()?.context(|| {
            "rootflags=subvol=NAME is not set (nor dockroot.rw=NAME): it names the rw layer \
             (a root dockroot creates at every boot)"
        })?;
        let rw_subvol = cmdline::relative_path("rootflags=subvol", subvol)?;
        if rw_subvol.is_empty() {
            return Err(Error::msg(
                "the rw layer's name (rootflags=subvol= or dockroot.rw=) is the top level; it must name the rw layer",
            ));
        }
        let docker_path = cmdline::relative_path("docker_path", &p.docker_path)?;
        if docker_path.starts_with(&rw_subvol) || rw_subvol.starts_with(&docker_path) {
            return Err(Error::msg(format!(
                "docker_path={} and the rw layer {} overlap: the rw layer would replace Docker's data",
                p.docker_path, subvol
            )));
        }
        let flags = p.rootflags.clone().unwrap_or_default();
        let staging_flags = cmdline::without_option(&cmdline::without_option(&flags, "subvol"), "subvolid");
        let toplayer_path =
            p.toplayer_path.as_deref().map(|t| cmdline::relative_path("toplayer_path", t)).transpose()?;
        Ok(RootPlan { root, fstype, rw_subvol, docker_path, staging_flags, toplayer_path })
    }
}

fn mkdir_p(path: &str) -> Result<()> {
    std::fs::create_dir_all(path).context(|| format!("creating {path}"))
}

fn mount_api_filesystems() -> Result<()> {
    let nosuid = MountFlags::NOSUID;
    let table: [(&str, &str, &str, MountFlags, &str); 4] = [
        ("devtmpfs", "/dev", "devtmpfs", nosuid, "mode=0755"),
        ("proc", "/proc", "proc", nosuid | MountFlags::NODEV | MountFlags::NOEXEC, ""),
        ("sysfs", "/sys", "sysfs", nosuid | MountFlags::NODEV | MountFlags::NOEXEC, ""),
        ("tmpfs", "/run", "tmpfs", nosuid | MountFlags::NODEV, "mode=0755"),
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

fn mount(src: &str, target: &str, fstype: &str, flags: MountFlags, data: &str) -> Result<()> {
    let data_c = std::ffi::CString::new(data).context(|| format!("mount options for {target} contain a NUL byte"))?;
    rustix::mount::mount(src, target, fstype, flags, data_c.as_c_str())
        .context(|| format!("mounting {src} ({fstype}, options {data:?}) on {target}"))
}

/// Load the modules every boot needs and the drivers of the devices present
/// (in parallel); the returned hooks load drivers for devices that appear
/// later and explain a device timeout.
fn start_modules() -> Result<Box<dyn WaitHooks>> {
    let Some(index) = modules::read_index(Path::new("/"))? else {
        log::info!("no kernel modules in this initramfs");
        return Ok(Box::new(devices::NoHooks));
    };
    let mut auto = modules::Autoloader::new(index, Path::new("/"))?;
    auto.start(Path::new("/sys/devices"))?;
    Ok(Box::new(auto))
}

/// The device waiter and the module hooks, kept for later waits (the top layer's device).
struct Devices {
    waiter: devices::Waiter,
    hooks: Box<dyn WaitHooks>,
}

fn join_options(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_string(),
        (_, true) => a.to_string(),
        _ => format!("{a},{b}"),
    }
}

/// The root partition's filesystem type: `rootfstype=`, else what the probe found.
fn root_fstype(dev: &BlockDevice, plan: &RootPlan) -> Result<String> {
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

fn mount_top_level(dev: &BlockDevice, plan: &RootPlan, fstype: &str) -> Result<OwnedFd> {
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

/// Mount the rw layer on [`NEW_ROOT`]: its subvolume, or the overlay of
/// its upper directory on its layers.
fn mount_new_root(
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

fn open_dir_path(path: &str) -> Result<OwnedFd> {
    rustix::fs::open(path, OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
        .context(|| format!("opening {path}"))
}

/// Where an overlay root is mounted read-only to look for its init.
const CHECK_MOUNT: &str = "/.dockroot/check";

/// Mount the overlay root `at` on `target`: writable with its upper and work
/// directories, or (`read_only`, for a look inside) its upper directory as
/// the topmost lower layer.
fn mount_overlay_root(store: &RwStore, at: &At, target: &str, read_only: bool) -> Result<overlay::Method> {
    let (ov, layers) = overlay_of(store, at, true)?;
    let method = overlay::mount(&ov, Path::new(target), read_only)
        .map_err(|e| e.context(format!("mounting the overlay root {}", store.shown_at(at))))?;
    log::info!("mounted {} ({layers} layers) on {target} with {}", store.shown_at(at), method.describe());
    Ok(method)
}

/// The overlay of root `at` (below the staging mount) and its image's layer
/// count: writable with its upper and work directories, or read-only with the
/// upper directory as the topmost lower layer.
fn overlay_of(store: &RwStore, at: &At, writable: bool) -> Result<(overlay::Overlay, usize)> {
    let spec = store.overlay_spec(at)?;
    let top = Path::new(STAGING_TOP);
    let root = top.join(store.path(at));
    let layers = spec.lowerdirs.len();
    let (lowerdirs, upper) = if writable {
        (spec.lowerdirs, Some((root.join(rwlayer::UPPER), root.join(rwlayer::WORK))))
    } else {
        (std::iter::once(root.join(rwlayer::UPPER)).chain(spec.lowerdirs).collect(), None)
    };
    Ok((overlay::Overlay { base: top.join(&spec.base), lowerdirs, upper }, layers))
}

/// Whether the root `at` has an init: looked up in the subvolume, or in a
/// read-only overlay of the overlay root's upper directory over its layers.
fn has_init(store: &RwStore, at: &At, ctx: &Ctx) -> Result<()> {
    match store.kind(at)? {
        Existing::Subvolume => switch_root::find_init(store.open_root(at)?.as_fd(), ctx.candidates).map(drop),
        Existing::Overlay => {
            let (ov, _) = overlay_of(store, at, false)?;
            mkdir_p(CHECK_MOUNT)?;
            overlay::mount(&ov, Path::new(CHECK_MOUNT), true)
                .map_err(|e| e.context(format!("mounting {} read-only to look for its init", store.shown_at(at))))?;
            let found = open_dir_path(CHECK_MOUNT).and_then(|fd| switch_root::find_init(fd.as_fd(), ctx.candidates));
            if let Err(e) = rustix::mount::unmount(CHECK_MOUNT, rustix::mount::UnmountFlags::DETACH) {
                log::warn!("could not unmount {CHECK_MOUNT}: {e}");
            }
            found.map(drop)
        }
        Existing::Absent => Err(Error::msg(format!("there is no {}", store.shown_at(at)))),
        Existing::Other(kind) => Err(Error::msg(format!("{} is a {kind}, not a root", store.shown_at(at)))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(cmd: &str) -> Result<RootPlan> {
        RootPlan::from_params(&Params::parse(&cmdline::split(cmd).0).unwrap())
    }

    #[test]
    fn panic_reports_say_what_where_and_what_next() {
        let r = panic_report(Some("index out of bounds"), Some(("src/probe.rs", 42)));
        assert!(r.starts_with("cannot boot: dockroot "), "{r}");
        assert!(r.ends_with("a bug (a panic at src/probe.rs:42): index out of bounds; please report it"), "{r}");
        let r = panic_report(None, None);
        assert!(r.ends_with("hit a bug (a panic): (no message); please report it"), "{r}");
    }

    #[test]
    fn plan_from_prior_art_cmdline() {
        let p = plan("root=LABEL=linux rootflags=subvol=docker_rwlayer,compress=zstd docker_path=docker toplayer_path=/boot_docker").unwrap();
        assert_eq!(p.rw_subvol, vec!["docker_rwlayer"]);
        assert_eq!(p.docker_path, vec!["docker"]);
        assert_eq!(p.staging_flags, "compress=zstd");
        assert_eq!(p.fstype, None);
        assert_eq!(p.toplayer_path, Some(vec!["boot_docker".to_string()]));
    }

    #[test]
    fn plan_errors_name_the_parameter() {
        let cases = [
            ("rootflags=subvol=rw", "root= is not set"),
            ("root=/dev/vda", "rootflags=subvol=NAME is not set (nor dockroot.rw=NAME)"),
            ("root=/dev/vda rootflags=subvol=/", "is the top level"),
            ("root=/dev/vda rootflags=subvol=../x", "'..' is not allowed"),
            ("root=/dev/vda dockroot.rw=a rootflags=subvol=b", "name different rw layers"),
            ("root=/dev/vda rootflags=subvol=rw docker_path=/var/../../x", "'..' is not allowed"),
            ("root=/dev/vda rootflags=subvol=var docker_path=var/lib/docker", "overlap"),
            ("root=/dev/vda rootflags=subvol=rw toplayer_path=a/../..", "'..' is not allowed"),
        ];
        for (cmd, want) in cases {
            let e = plan(cmd).unwrap_err().to_string();
            assert!(e.contains(want), "{cmd}: {e}");
        }
    }

    #[test]
    fn options() {
        assert_eq!(join_options("", "subvolid=5"), "subvolid=5");
        assert_eq!(join_options("degraded", "subvolid=5"), "degraded,subvolid=5");
        assert!(only_subvol("subvol=a"));
        assert!(only_subvol(""));
        assert!(!only_subvol("subvol=a,ro"));
    }
}
