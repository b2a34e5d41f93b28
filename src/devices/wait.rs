//! The bounded wait for a device to appear: a [`Waiter`] scans once, then
//! rescans only when kernel uevents say block devices changed, registers btrfs
//! members with the kernel, and gives up at the deadline with a table of what
//! it saw.
//!
//! The decision after each scan is pure ([`super::assess`]) and so is the
//! deadline arithmetic ([`later`]); the thin part is the uevent socket (or a
//! fallback sleep), the rescans and the btrfs ioctls.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::find::{assess, duplicates, Assessment};
use super::scan::{scan, BlockDevice};
use super::spec::DeviceSpec;
use super::table::{describe, fmt_duration};
use crate::btrfs;
use crate::error::{Error, Result};
use crate::uevent::{Listener, Received, Uevent};

/// How long to wait for a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitPolicy {
    /// Give up after this long (counted after `delay`).
    pub timeout: Duration,
    /// `rootdelay=`: sleep this long before the first look.
    pub delay: Duration,
}

/// How often to say that we are still waiting.
const REPORT_EVERY: Duration = Duration::from_secs(5);
/// With `degraded`, how long to keep waiting for missing members of a
/// multi-device btrfs once one member is there (never beyond the timeout):
/// disks of one machine appear within a second or two of each other, so 10 s
/// covers a slow controller without delaying a degraded boot much.
pub const DEGRADED_WAIT: Duration = Duration::from_secs(10);
/// Without a uevent socket (a kernel without CONFIG_NET): rescan this often.
const FALLBACK_RESCAN: Duration = Duration::from_secs(1);
/// While the hooks have background work (modules loading): give it a chance
/// to move on this often (a finished module may let another start).
const PUMP_EVERY: Duration = Duration::from_millis(10);

/// What the boot does while devices are awaited.
pub trait WaitHooks {
    /// Called for every kernel uevent received while waiting, before the
    /// block device table is updated (the boot loads drivers for MODALIAS).
    fn on_uevent(&mut self, ev: &Uevent);
    /// The uevent queue overflowed: events were lost (rescan what you track).
    fn on_overflow(&mut self) {}
    /// Lines appended to the timeout message (modules loaded, modaliases no
    /// module matched, ...).
    fn diagnostics(&self) -> Vec<String>;
    /// A filesystem of type `fstype` is about to be mounted, or its driver
    /// asked about its member devices (`fs`: what its superblock said, if it
    /// was read): load what that needs, and return when it is loaded.
    fn before_mount(&mut self, _fstype: &str, _fs: Option<&crate::probe::FsInfo>) {}
    /// Is work going on in the background (modules loading) that
    /// [`WaitHooks::pump`] should be given a chance to move on soon?
    fn pending(&self) -> bool {
        false
    }
    /// Move the background work on without waiting; `no_uevents`: devices
    /// are not announced by uevents (look again). True if something finished.
    fn pump(&mut self, _no_uevents: bool) -> bool {
        false
    }
    /// Wait for the background work to end.
    fn finish(&mut self) {}
}

/// Hooks that do nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoHooks;

impl WaitHooks for NoHooks {
    fn on_uevent(&mut self, _: &Uevent) {}
    fn diagnostics(&self) -> Vec<String> {
        Vec::new()
    }
}

/// What a wait cost, for the log (and to show it is event-driven).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WaitStats {
    /// Full scans of /sys/class/block.
    pub scans: u32,
    /// Uevents received.
    pub uevents: u32,
    /// Of those, block device events (each batch of them causes one rescan).
    pub block_uevents: u32,
}

/// Waits for block devices, woken by kernel uevents (no polling).
///
/// Create it early: the uevent socket queues every event from then on, so
/// nothing that appears between its creation and a wait is missed, and the
/// hooks see those events during the next wait. Each wait scans once, then
/// sleeps until uevents arrive; a batch containing a block device event (or a
/// queue overflow) causes one rescan of all block devices — a rescan reads a
/// few sysfs attributes and superblocks per device (from the page cache after
/// the first time), which is cheaper and simpler than keeping an index by
/// devpath consistent with partition table changes. Every btrfs member device
/// found that belongs to a multi-device filesystem is registered with the
/// kernel (BTRFS_IOC_SCAN_DEV) once, after the hooks loaded the btrfs driver.
pub struct Waiter {
    listener: Option<Listener>,
    sys: PathBuf,
    dev: PathBuf,
    /// Whether to register btrfs devices with the kernel (off for fake sysfs trees).
    btrfs_ioctls: bool,
    fallback_rescan: Duration,
    /// Devices registered with btrfs: MAJ:MIN -> (fs UUID, devid).
    registered: HashMap<(u32, u32), (String, u64)>,
    /// btrfs ioctl failures per device, shown in the table.
    btrfs_errors: HashMap<(u32, u32), String>,
    stats: WaitStats,
}

impl Waiter {
    /// A waiter on /sys/class/block and /dev. If the uevent socket cannot be
    /// opened (a kernel without networking), it warns and rescans every
    /// second instead.
    pub fn new() -> Waiter {
        let listener = match Listener::open() {
            Ok(l) => Some(l),
            Err(e) => {
                log::warn!("{e}; without uevents, block devices are rescanned every {}", fmt_duration(FALLBACK_RESCAN));
                None
            }
        };
        Waiter::with(listener, Path::new("/sys/class/block"), Path::new("/dev"), true)
    }

    fn with(listener: Option<Listener>, sys: &Path, dev: &Path, btrfs_ioctls: bool) -> Waiter {
        Waiter {
            listener,
            sys: sys.to_path_buf(),
            dev: dev.to_path_buf(),
            btrfs_ioctls,
            fallback_rescan: FALLBACK_RESCAN,
            registered: HashMap::new(),
            btrfs_errors: HashMap::new(),
            stats: WaitStats::default(),
        }
    }

    /// Counters over this waiter's life.
    pub fn stats(&self) -> WaitStats {
        self.stats
    }

    /// Wait until the device `spec` names is there, `policy.timeout` at most
    /// (after `policy.delay`, during which events already reach the hooks).
    ///
    /// If it is a member of a multi-device btrfs, also wait until the kernel
    /// has all its members. With `degraded` (the `degraded` mount option is
    /// set), wait for missing members [`DEGRADED_WAIT`] at most, then return
    /// the device with a loud warning: the caller mounts it degraded.
    ///
    /// On timeout the error says what was awaited, for how long, the missing
    /// btrfs members if that is what is missing, the table of block devices
    /// seen ([`describe`]) and the hooks' diagnostics. An ambiguous
    /// `LABEL=`/`PARTLABEL=` fails at once.
    pub fn wait_for(
        &mut self,
        spec: &DeviceSpec,
        policy: &WaitPolicy,
        degraded: bool,
        hooks: &mut dyn WaitHooks,
    ) -> Result<BlockDevice> {
        let begin = self.stats;
        if !policy.delay.is_zero() {
            log::info!("waiting {} (rootdelay) before looking for {spec}", fmt_duration(policy.delay));
            let until = later(Instant::now(), policy.delay);
            while Instant::now() < until {
                let soon = hooks.pending().then(|| later(Instant::now(), PUMP_EVERY));
                self.pump(soon.map_or(until, |s| s.min(until)), hooks)?;
                hooks.pump(self.listener.is_none());
            }
        }
        let start = Instant::now();
        let deadline = later(start, policy.timeout);
        let mut next_report = later(start, REPORT_EVERY);
        let mut grace_end: Option<Instant> = None;
        let mut devs = self.rescan(hooks);
        loop {
            let step = assess(spec, &devs, |d| self.kernel_ready(d))?;
            let now = Instant::now();
            let incomplete = match &step {
                Assessment::Incomplete(_, members) => format!("; {}", members.summary()),
                _ => String::new(),
            };
            match step {
                Assessment::Ready(d) => {
                    let copies: Vec<String> =
                        duplicates(spec, &devs, &d).iter().map(|c| c.devnode.display().to_string()).collect();
                    if !copies.is_empty() {
                        log::warn!(
                            "{spec} also matches {} (a copy?); using {}, the first by device number",
                            copies.join(", "),
                            d.devnode.display()
                        );
                    }
                    let s = self.stats;
                    log::info!(
                        "found {spec}: {} ({}) after {} ms, {} scans, {} uevents",
                        d.devnode.display(),
                        d.fs.as_ref().map_or("no known filesystem", |f| f.fstype.name()),
                        start.elapsed().as_millis(),
                        s.scans.saturating_sub(begin.scans),
                        s.uevents.saturating_sub(begin.uevents)
                    );
                    return Ok(d);
                }
                Assessment::Incomplete(d, members) if degraded => {
                    let end = *grace_end.get_or_insert_with(|| later(now, DEGRADED_WAIT).min(deadline));
                    if now >= end {
                        log::warn!(
                            "MOUNTING DEGRADED: {}; mounting {} with 'degraded' as asked, without redundancy \
                             for what the missing devices held: bring them back or replace them (btrfs replace) soon",
                            members.summary(),
                            d.devnode.display()
                        );
                        return Ok(d);
                    }
                }
                Assessment::Incomplete(_, members) if now >= deadline => {
                    return Err(self.timeout_error(
                        format!(
                            "{spec}: {}; waited {}; the mount option 'degraded' (rootflags=degraded for root) \
                             mounts it without them",
                            members.summary(),
                            fmt_duration(policy.timeout)
                        ),
                        &devs,
                        hooks,
                    ));
                }
                Assessment::Absent if now >= deadline => {
                    return Err(self.timeout_error(
                        format!("no block device matching {spec} appeared within {}", fmt_duration(policy.timeout)),
                        &devs,
                        hooks,
                    ));
                }
                Assessment::Incomplete(..) | Assessment::Absent => {}
            }
            if now >= next_report {
                log::info!(
                    "still waiting for {spec} ({} of {}; {} block devices seen{incomplete})",
                    fmt_duration(now.saturating_duration_since(start)),
                    fmt_duration(policy.timeout),
                    devs.len()
                );
                next_report = later(next_report, REPORT_EVERY);
            }
            let soon = hooks.pending().then(|| later(Instant::now(), PUMP_EVERY));
            let wake =
                [Some(deadline), Some(next_report), grace_end, soon].into_iter().flatten().min().unwrap_or(deadline);
            let events = self.pump(wake, hooks)?;
            // A driver that finished loading may have made the device: its
            // uevent says so, or without uevents, look.
            let no_uevents = self.listener.is_none();
            if hooks.pump(no_uevents) && no_uevents || events {
                devs = self.rescan(hooks);
            }
        }
    }

    fn timeout_error(&self, what: String, devs: &[BlockDevice], hooks: &mut dyn WaitHooks) -> Error {
        // What every module attempt ended in, for the diagnostics.
        hooks.finish();
        let mut msg = format!("{what}; block devices seen:\n{}", describe(devs));
        for line in hooks.diagnostics() {
            msg.push_str(&line);
            msg.push('\n');
        }
        Error::msg(msg.trim_end().to_string())
    }

    /// Wait for uevents until `wake` at most, give each to the hooks, and
    /// drain what else is queued. True if block devices may have changed.
    fn pump(&mut self, wake: Instant, hooks: &mut dyn WaitHooks) -> Result<bool> {
        let Some(listener) = &self.listener else {
            let now = Instant::now();
            std::thread::sleep(wake.saturating_duration_since(now).min(self.fallback_rescan));
            return Ok(true);
        };
        let mut dirty = false;
        let mut until = wake;
        while let Some(got) = listener.recv(until)? {
            match got {
                Received::Event(ev) => {
                    self.stats.uevents = self.stats.uevents.saturating_add(1);
                    if ev.is_block() {
                        self.stats.block_uevents = self.stats.block_uevents.saturating_add(1);
                        log::debug!(
                            "uevent: {} {} ({})",
                            ev.action.name(),
                            ev.devname.as_deref().unwrap_or("?"),
                            ev.devpath
                        );
                        dirty = true;
                    }
                    hooks.on_uevent(&ev);
                }
                Received::Overflow => {
                    log::warn!("the uevent queue overflowed; rescanning all block devices");
                    hooks.on_overflow();
                    dirty = true;
                }
            }
            // Something arrived: take what else is queued now, then act.
            until = Instant::now();
        }
        Ok(dirty)
    }

    /// Scan all block devices and register new members of multi-device btrfs
    /// filesystems with the kernel, loading the btrfs driver first through
    /// the hooks (filesystem drivers load on demand). A single-device btrfs
    /// needs no registration: mounting it scans the device it is given.
    fn rescan(&mut self, hooks: &mut dyn WaitHooks) -> Vec<BlockDevice> {
        self.stats.scans = self.stats.scans.saturating_add(1);
        let mut devs = scan(&self.sys, &self.dev);
        if self.btrfs_ioctls {
            for d in &devs {
                let Some((uuid, b)) =
                    d.fs.as_ref()
                        .and_then(|f| Some((f.uuid.clone()?, f.btrfs.as_ref()?)))
                        .filter(|(_, b)| b.num_devices > 1)
                else {
                    continue;
                };
                let key = (d.major, d.minor);
                let id = (uuid, b.devid);
                if self.registered.get(&key) == Some(&id) {
                    continue;
                }
                hooks.before_mount("btrfs", d.fs.as_ref());
                match btrfs::scan_device(&d.devnode) {
                    Ok(()) => {
                        log::debug!("registered btrfs device {} (UUID={} devid {})", d.devnode.display(), id.0, id.1);
                        self.registered.insert(key, id);
                        self.btrfs_errors.remove(&key);
                    }
                    Err(e) => {
                        self.btrfs_errors.insert(key, e.to_string());
                    }
                }
            }
        }
        for d in &mut devs {
            if let Some(e) = self.btrfs_errors.get(&(d.major, d.minor)) {
                d.probe_error = Some(match d.probe_error.take() {
                    Some(p) => format!("{p}; {e}"),
                    None => e.clone(),
                });
            }
        }
        devs
    }

    /// The kernel's view of whether `d`'s multi-device btrfs is complete; None
    /// if it cannot be asked (the error is kept for the table).
    fn kernel_ready(&mut self, d: &BlockDevice) -> Option<bool> {
        if !self.btrfs_ioctls {
            return None;
        }
        match btrfs::devices_ready(&d.devnode) {
            Ok(ready) => Some(ready),
            Err(e) => {
                log::warn!("{e}; judging from the superblocks found instead");
                self.btrfs_errors.insert((d.major, d.minor), e.to_string());
                None
            }
        }
    }
}

/// `t + d`, or a year after `t` if that cannot be represented.
fn later(t: Instant, d: Duration) -> Instant {
    t.checked_add(d).or_else(|| t.checked_add(Duration::from_secs(365 * 86400))).unwrap_or(t)
}

impl Default for Waiter {
    fn default() -> Self {
        Waiter::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::fixtures::{build_fake, parse, run, FakeSys, Scratch};

    /// A waiter on a fake tree: no uevents (rescans every 20 ms), no btrfs ioctls.
    fn fake_waiter(f: &FakeSys) -> Waiter {
        let mut w = Waiter::with(None, &f.sys, &f.dev, false);
        w.fallback_rescan = Duration::from_millis(20);
        w
    }

    struct Diag(Vec<String>);

    impl WaitHooks for Diag {
        fn on_uevent(&mut self, _: &Uevent) {}
        fn diagnostics(&self) -> Vec<String> {
            self.0.clone()
        }
    }

    #[test]
    fn wait_for_finds_or_times_out_with_a_table() {
        let s = Scratch::new("wait");
        let f = build_fake(&s);
        let quick = WaitPolicy { timeout: Duration::from_millis(300), delay: Duration::from_millis(10) };
        let mut w = fake_waiter(&f);
        let d = w.wait_for(&parse("LABEL=data"), &quick, false, &mut NoHooks).unwrap();
        assert_eq!(d.name, "vdb5");
        assert_eq!(w.stats().scans, 1, "found by the first scan");
        let started = Instant::now();
        let mut diag = Diag(vec!["modules loaded: virtio_blk".into(), "no module for: pci:v1234".into()]);
        let e = w.wait_for(&parse("LABEL=nope"), &quick, false, &mut diag).unwrap_err().to_string();
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert!(
            e.starts_with("no block device matching LABEL=nope appeared within 0.3s; block devices seen:\n"),
            "{e}"
        );
        assert!(
            e.contains("vda1") && e.contains("dock") && e.contains("0badcafe-05") && e.contains("PARTLABEL"),
            "{e}"
        );
        assert!(e.ends_with("\nmodules loaded: virtio_blk\nno module for: pci:v1234"), "{e}");
        // A device appearing while we wait is found.
        let late = std::thread::spawn({
            let mut w = fake_waiter(&f);
            move || {
                let slow = WaitPolicy { timeout: Duration::from_secs(5), delay: Duration::ZERO };
                w.wait_for(&DeviceSpec::MajMin(254, 33), &slow, false, &mut NoHooks)
            }
        });
        std::thread::sleep(Duration::from_millis(250));
        f.node("vdc", 1 << 20);
        f.add("virtual/block/vdc", "254:33", 2048, None);
        assert_eq!(late.join().unwrap().unwrap().name, "vdc");
        // Ambiguous: fails at once, not at the timeout.
        let copy = f.node("sr1", 4 << 20);
        std::fs::copy(f.dev.join("sr0"), &copy).unwrap();
        f.add("virtual/block/sr1", "11:1", 8192, None);
        let started = Instant::now();
        let e = w.wait_for(&parse("LABEL=CIDATA"), &quick, false, &mut NoHooks).unwrap_err().to_string();
        assert!(started.elapsed() < Duration::from_millis(250), "{e}");
        assert!(e.contains("LABEL=CIDATA is ambiguous") && e.contains("sr0") && e.contains("sr1"), "{e}");
        // By UUID, the copy is no obstacle.
        assert!(w.wait_for(&parse("UUID=0BAD-F00D"), &quick, false, &mut NoHooks).is_ok());
    }

    #[test]
    fn rootdelay_is_waited_even_when_the_device_is_there_at_once() {
        let s = Scratch::new("rootdelay");
        let f = build_fake(&s);
        let delay = Duration::from_millis(400);
        let policy = WaitPolicy { timeout: Duration::from_secs(5), delay };
        let mut w = fake_waiter(&f);
        let started = Instant::now();
        let d = w.wait_for(&parse("LABEL=data"), &policy, false, &mut NoHooks).unwrap();
        assert_eq!(d.name, "vdb5");
        assert!(started.elapsed() >= delay, "returned after {:?}, before rootdelay {delay:?}", started.elapsed());
        assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
        // The devices are first looked at after the delay: one scan, which finds it.
        assert_eq!(w.stats().scans, 1);

        // A device that appears during the delay is found by that first look.
        let late = std::thread::spawn({
            let mut w = fake_waiter(&f);
            move || {
                let started = Instant::now();
                let r = w.wait_for(&DeviceSpec::MajMin(254, 40), &policy, false, &mut NoHooks);
                (r, started.elapsed(), w.stats().scans)
            }
        });
        std::thread::sleep(Duration::from_millis(100));
        f.node("vde", 1 << 20);
        f.add("virtual/block/vde", "254:40", 2048, None);
        let (r, took, scans) = late.join().unwrap();
        assert_eq!(r.unwrap().name, "vde");
        assert!(took >= delay, "returned after {took:?}, before rootdelay {delay:?}");
        assert_eq!(scans, 1, "the device was there when the delay ended");

        // The timeout is counted after the delay.
        let policy = WaitPolicy { timeout: Duration::from_millis(300), delay: Duration::from_millis(300) };
        let started = Instant::now();
        let e = w.wait_for(&parse("LABEL=nope"), &policy, false, &mut NoHooks).unwrap_err().to_string();
        assert!(started.elapsed() >= Duration::from_millis(600), "gave up after {:?}", started.elapsed());
        assert!(e.starts_with("no block device matching LABEL=nope appeared within 0.3s"), "{e}");
    }

    /// A two-device btrfs raid1 on image files, as fake vdx and vdy.
    fn fake_raid1(f: &FakeSys, both: bool) {
        let a = f.node("vdx", 160 << 20);
        let b = f.node("vdy", 160 << 20);
        run(
            "mkfs.btrfs",
            &[
                "-q",
                "-f",
                "-L",
                "pair",
                "-U",
                "5eed5eed-0000-4000-8000-000000000002",
                "-d",
                "raid1",
                "-m",
                "raid1",
                a.to_str().unwrap(),
                b.to_str().unwrap(),
            ],
        );
        f.add("virtual/block/vdx", "254:64", 160 << 11, None);
        if both {
            f.add("virtual/block/vdy", "254:80", 160 << 11, None);
        }
    }

    #[test]
    fn multi_device_btrfs_waits_for_every_member() {
        let s = Scratch::new("raid1");
        let f = FakeSys::new(&s);
        fake_raid1(&f, true);
        let quick = WaitPolicy { timeout: Duration::from_millis(300), delay: Duration::ZERO };
        let devs = scan(&f.sys, &f.dev);
        let ids: Vec<(u64, u64)> = devs
            .iter()
            .map(|d| d.fs.as_ref().and_then(|f| f.btrfs.as_ref()).map(|b| (b.devid, b.num_devices)).unwrap())
            .collect();
        assert_eq!(ids, [(1, 2), (2, 2)], "{}", describe(&devs));
        let d = fake_waiter(&f).wait_for(&parse("LABEL=pair"), &quick, false, &mut NoHooks).unwrap();
        assert_eq!(d.name, "vdx");
        assert!(describe(&devs).contains(" 2/2 "), "{}", describe(&devs));

        let s = Scratch::new("raid1half");
        let f = FakeSys::new(&s);
        fake_raid1(&f, false);
        let started = Instant::now();
        let e = fake_waiter(&f).wait_for(&parse("LABEL=pair"), &quick, false, &mut NoHooks).unwrap_err().to_string();
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert!(
            e.starts_with(
                "LABEL=pair: btrfs filesystem LABEL=pair UUID=5eed5eed-0000-4000-8000-000000000002 has 2 devices; \
                 found 1: devid 1 ("
            ),
            "{e}"
        );
        assert!(e.contains("vdx); missing 1, likely devid 2; waited 0.3s; the mount option 'degraded'"), "{e}");
        assert!(e.contains("block devices seen:\n") && e.contains(" 1/2 "), "{e}");
        // degraded: mounted after waiting DEGRADED_WAIT, capped by the timeout.
        let started = Instant::now();
        let d = fake_waiter(&f).wait_for(&parse("LABEL=pair"), &quick, true, &mut NoHooks).unwrap();
        assert_eq!(d.name, "vdx");
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(3), "{took:?}");
        // The missing member turning up during the degraded wait ends it early.
        let late = std::thread::spawn({
            let mut w = fake_waiter(&f);
            move || {
                let slow = WaitPolicy { timeout: Duration::from_secs(30), delay: Duration::ZERO };
                let t = Instant::now();
                (w.wait_for(&parse("LABEL=pair"), &slow, true, &mut NoHooks), t.elapsed())
            }
        });
        std::thread::sleep(Duration::from_millis(300));
        f.add("virtual/block/vdy", "254:80", 160 << 11, None);
        let (r, took) = late.join().unwrap();
        assert_eq!(r.unwrap().name, "vdx");
        assert!(took < DEGRADED_WAIT, "{took:?}");
    }
}
