//! The boot, stage by stage, as the README's "What happens at boot" tells it.
//! Each stage lives in its own module; this one only strings them together,
//! times them, and turns any error into a clear message and a reboot (there is
//! no shell to drop into, and PID 1 must not exit or panic).

use std::convert::Infallible;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::choose::{self, Ctx, Devices};
use crate::config::{self, BootConfig, Params};
use crate::devices::{self, DeviceSpec, WaitHooks, WaitPolicy};
use crate::error::{Context, Error, Result};
use crate::mounts::{self, NEW_ROOT, STAGING_TOP};
use crate::nextboot::{self, ImageSource};
use crate::record::{self, Booted, Record, Timings};
use crate::rwlayer::{At, Existing, RwStore};
use crate::{kernel, logging, modules, switch_root};

/// The reboot delay in effect (the default until the command line is read);
/// the panic hook reads it.
static REBOOT_DELAY_MS: AtomicU64 = AtomicU64::new(config::DEFAULT_REBOOT_DELAY.as_millis() as u64);

/// PID 1's entry point: boot, or explain why not and reboot.
pub fn run() -> ! {
    // When the initramfs stage began, for systemd (see `switch_root`).
    let started = switch_root::Started::now();
    logging::init();
    std::panic::set_hook(Box::new(on_panic));
    let mut reboot_delay = config::DEFAULT_REBOOT_DELAY;
    let err = match boot(&mut reboot_delay, &started) {
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

fn boot(reboot_delay: &mut Duration, started: &switch_root::Started) -> Result<Infallible> {
    // 1. API filesystems, console, logging.
    let mut t = Timings::new();
    t.run("early", mounts::mount_api_filesystems)?;
    switch_root::reopen_console();
    let kmsg_saved = logging::attach_kmsg();
    log::info!("dockroot {} starting", env!("CARGO_PKG_VERSION"));

    // 2. The command line and the embedded config.
    let cmdline = read_cmdline()?;
    let params = Params::from_cmdline(&cmdline)?;
    *reboot_delay = params.reboot_delay;
    REBOOT_DELAY_MS.store(u64::try_from(params.reboot_delay.as_millis()).unwrap_or(u64::MAX), Ordering::Relaxed);
    logging::set_console_debug(params.debug);
    for w in &params.warnings {
        log::warn!("{w}");
    }
    let mut cfg = BootConfig::new(params, &cmdline, || config::read_embedded(Path::new(config::CONFIG_PATH)))?;
    let (params, root) = (&cfg.params, &cfg.root);

    // 3. Modules: listen for uevents before loading drivers, so no device
    // that appears from now on is missed.
    let mut waiter = devices::Waiter::new();
    let expected = config::RootPlan::expected_filesystems(params);
    let mut hooks = t.run("modules", || start_modules(&expected))?;

    // 4. The root device.
    let root_spec = DeviceSpec::parse(&root.root).context(|| format!("root={}", root.root))?;
    let policy = WaitPolicy { timeout: params.device_timeout, delay: params.rootdelay };
    let degraded = root.staging_flags.split(',').any(|o| o == "degraded");
    let root_dev = t.run("root device", || {
        waiter
            .wait_for(&root_spec, &policy, degraded, hooks.as_mut())
            .map_err(|e| e.context(format!("root={}", root.root)))
    })?;

    // 5. The partition's top level; an interrupted boot's leftovers.
    let fstype = mounts::root_fstype(&root_dev, root)?;
    t.run("filesystem modules", || {
        hooks.before_mount(&fstype, root_dev.fs.as_ref());
        Ok(())
    })?;
    let top = t.run("mount top level", || mounts::mount_top_level(&root_dev, root, &fstype))?;
    let mut record = Record::default();
    let store = RwStore::open(top.as_fd(), &root.rw_subvol)?;
    match store.recover() {
        Ok(done) => record.recovered = done,
        Err(e) => record.warn(format!("could not clean up after an interrupted boot: {e}")),
    }
    inject_fault(params);
    // A fallback or a rollback may mount an overlay root (Docker's overlay2,
    // podman, containerd): its filesystem, loaded now (a fresh overlay root
    // loads it when it is made).
    if store.has_overlay_roots() {
        hooks.before_mount("overlay", None);
    }
    // What `dockroot switch` chose for this boot, under the kernel command line's say.
    let mut image = cfg.image.clone();
    let next = nextboot::apply(top.as_fd(), &root.rw_subvol, &mut image, params.image.is_some(), true);
    for w in next.warnings {
        record.warn(w);
    }
    let mut rollback_kept = next.rollback_kept;
    let carry_image = (next.source == ImageSource::Once).then(|| image.to_string());
    if matches!(next.source, ImageSource::Once | ImageSource::Switch | ImageSource::Rollback) {
        log::info!("booting image {} as chosen with {} ({})", image, next.source.name(), next.shown);
    }
    record.image_source = next.source.name();
    // Boot counting: an image that used its tries unblessed is refused, and
    // the boot goes back to the newest blessed one.
    let count =
        choose::counting::prepare(Path::new(STAGING_TOP), &cfg, &store, &mut image, &mut rollback_kept, &mut record);
    cfg.image = image;

    // 6-8. The image, the rw layer, the top layer: the root the policy chooses.
    let candidates = switch_root::init_candidates(params.init.as_deref());
    let ctx =
        Ctx { cfg: &cfg, root_dev: &root_dev, policy: &policy, candidates: &candidates, rollback_kept, carry_image };
    let mut devs = Devices { waiter, hooks };
    let booted = choose::choose_root(&ctx, &mut t, &store, top.as_fd(), &mut devs, &mut record)?;
    // A fresh root of the image on trial uses its try now, before switch_root:
    // a hang, a crash or a power cut from here on counts.
    if let (Some(c), Booted::Fresh(r)) = (&count, &booted) {
        if r.image_id == c.image {
            choose::counting::use_try(&store, c, &mut record);
        }
    }
    record.kept = store.kept().map(|k| k.iter().map(|n| store.kept_shown(n)).collect()).unwrap_or_default();
    record.rw_layer = store.rw_shown();

    // 9. The new root. Mounted while the top level still is: btrfs reuses the
    // mounted filesystem instead of reading it again.
    let new_root =
        t.run("mount root", || mounts::mount_new_root(&root_dev, root, &fstype, &store, params.read_only))?;
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
    let resolved = switch_root::resolve_in_root(new_root.as_fd(), &init);
    let systemd = resolved.as_deref().is_some_and(switch_root::is_systemd);
    log::debug!("init {init} is {} in the new root", resolved.as_deref().unwrap_or("(cannot tell)"));
    // The image's modules for the running kernel (after an update they may be for another).
    let kernel = kernel::assess(&kernel::running_release(), kernel::image_releases(new_root.as_fd()));
    if let Some(w) = kernel.warning(kernel::no_kexec_reason()) {
        record.warn(w);
    }
    record.kernel = kernel.to_json(params.kexec_from.as_deref(), kernel::no_kexec_reason());
    drop(new_root);

    // Drivers of devices the boot did not need may still be loading.
    t.run("modules left", || {
        devs.hooks.finish();
        Ok(())
    })?;

    // 10. The commands and the embedded config for the booted system, the record, and the switch.
    match record::leave(record::COMMANDS_IN_INITRAMFS, record::COMMANDS, 0o755) {
        Ok(at) => record.commands = at,
        Err(e) => record.warn(format!("the dockroot commands are not in the booted system: {e}")),
    }
    match record::leave(config::CONFIG_PATH, record::CONFIG, 0o644) {
        Ok(at) => record.config = at,
        Err(e) => record.warn(format!("the embedded config is not in the booted system: {e}")),
    }
    record.write(params, &root_dev, &booted, &t);
    log::info!("ready: {}", t.summary());
    logging::detach_kmsg(kmsg_saved);
    // The init's arguments are ours: the kernel passed us what it did not
    // understand and everything after "--".
    let init_args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let term = std::env::var("TERM").unwrap_or_else(|_| "linux".to_string());
    let env = [("HOME".to_string(), "/".to_string()), ("TERM".to_string(), term)];
    let systemd = systemd.then_some(started);
    switch_root::switch_root(Path::new(NEW_ROOT), &init, &init_args, &env, systemd, record::BOOT_LOG)
}

/// Load the modules every boot needs, those of the `expected` filesystems and
/// the drivers of the devices present (in parallel); the returned hooks load
/// drivers for devices that appear later and filesystems before their mount,
/// and explain a device timeout.
fn start_modules(expected: &[&str]) -> Result<Box<dyn WaitHooks>> {
    let Some(index) = modules::read_index(Path::new("/"))? else {
        log::info!("no kernel modules in this initramfs");
        return Ok(Box::new(devices::NoHooks));
    };
    let mut auto = modules::Autoloader::new(index, Path::new("/"))?;
    auto.start(Path::new("/sys"), expected)?;
    Ok(Box::new(auto))
}

/// Test builds only (`--features fault-injection`): `dockroot.fault=panic`
/// panics here; `pause:STEP` stops the install at STEP (see `rwlayer`).
fn inject_fault(params: &Params) {
    #[cfg(feature = "fault-injection")]
    match params.fault.as_deref() {
        None => {}
        Some("panic") => injected_panic(),
        Some(v) if v.starts_with("pause:") => {
            let _ = crate::rwlayer::PAUSE_AT.set(v.trim_start_matches("pause:").to_string());
        }
        Some(v) => log::warn!("dockroot.fault={v:?} is not a fault this build injects"),
    }
    let _ = params;
}

/// `dockroot.fault=panic`: the one panic on purpose, in test builds only.
#[cfg(feature = "fault-injection")]
#[allow(clippy::panic, reason = "the boot tests check that a panic in PID 1 ends in a message and a reboot")]
fn injected_panic() -> ! {
    panic!("dockroot.fault=panic: a panic injected by a test build")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panic_reports_say_what_where_and_what_next() {
        let r = panic_report(Some("index out of bounds"), Some(("src/probe.rs", 42)));
        assert!(r.starts_with("cannot boot: dockroot "), "{r}");
        assert!(r.ends_with("a bug (a panic at src/probe.rs:42): index out of bounds; please report it"), "{r}");
        let r = panic_report(None, None);
        assert!(r.ends_with("hit a bug (a panic): (no message); please report it"), "{r}");
    }
}
