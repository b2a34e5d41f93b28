//! The autoloader: loads the modules of an index as the boot needs them (the
//! `always` ones, the drivers of the devices present and of those that appear
//! later), and says what it did for a device timeout's diagnostic. It drives
//! the pure schedule with an executor ([`ForkExecutor`] at boot) and is the
//! boot's [`crate::devices::WaitHooks`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::schedule::{drive, record, Done, Graph, Schedule, Until};
#[cfg(feature = "decompress-modules")]
use super::DECOMPRESS_MARKER;
use super::{
    check_kernel_release, collect_modaliases, decompression_summary, filesystem_alias, not_for_cpu,
    sysfs::read_modalias, usable_cpus, workers_for, AliasTable, Executor, ForkExecutor, KernelLoader, Load, LoadReport,
    Loader, ModuleIndex, Sequential,
};
use crate::error::Result;

/// The longest diagnostic line made of modalias strings (one longer modalias gets a line of its own).
pub const DIAGNOSTIC_LINE_BYTES: usize = 400;

/// Modalias buses left out of [`Autoloader::unmatched`]: their modules pick
/// optional CPU-accelerated code, DMI quirks and input handlers, never a
/// disk's driver.
pub const NOT_DISK_BUSES: &[&str] = &["cpu:", "dmi:", "input:"];

/// What the autoloader knows of one modalias it was told about.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    /// The modules of the initramfs it matched.
    modules: Vec<String>,
    /// The device directory, if known (to tell later whether a driver bound anyway).
    device: Option<PathBuf>,
}

/// Loads the modules of an index as the boot needs them: the `always` ones,
/// and the drivers of the devices present or appearing (see the module docs).
pub struct Autoloader<X: Executor = ForkExecutor> {
    index: ModuleIndex,
    graph: Graph,
    aliases: AliasTable,
    /// By position: is it a filesystem module (named by an `fs-TYPE` alias)?
    /// Their own pre-softdeps wait for [`Autoloader::load_filesystem`].
    filesystems: Vec<bool>,
    /// By position: made for CPU features this CPU lacks ([`not_for_cpu`]): never asked for.
    unfit: Vec<bool>,
    pub(super) exec: X,
    workers: usize,
    schedule: Schedule,
    /// By position: in the report already.
    recorded: Vec<bool>,
    /// What the boot needs first (the `always` modules, the expected
    /// filesystems): started before the rest.
    first: BTreeSet<usize>,
    report: LoadReport,
    /// Modalias strings seen, with what they matched.
    seen: BTreeMap<String, Seen>,
    /// Sysfs walks done by coldplug.
    walks: usize,
    /// The sysfs root coldplug walked, walked again if uevents were lost.
    devices: Option<PathBuf>,
    /// The format the kernel decompresses itself (`/sys/module/compression`), for
    /// [`Autoloader::decompression_line`]: a loaded module in another format was
    /// decompressed by this init.
    kernel_compression: Option<String>,
}

impl Autoloader<ForkExecutor> {
    /// An autoloader for the running kernel, loading files under `root` (`/` at
    /// boot). Errors if the index is for another kernel.
    pub fn new(index: ModuleIndex, root: &Path) -> Result<Self> {
        let uname = rustix::system::uname();
        let running = uname.release().to_string_lossy();
        check_kernel_release(&index, &running)?;
        let loader = KernelLoader::new(root);
        if let Some(k) = &loader.kernel_compression {
            log::debug!("the kernel decompresses {k} modules itself");
        }
        #[cfg(feature = "decompress-modules")]
        log::debug!("{DECOMPRESS_MARKER}");
        let kernel_compression = loader.kernel_compression.clone();
        let cpus = usable_cpus();
        let exec = if cpus <= 1 { ForkExecutor::one_cpu(loader) } else { ForkExecutor::new(loader) };
        let mut auto = Autoloader::with_executor(index, exec, workers_for(cpus));
        auto.kernel_compression = kernel_compression;
        Ok(auto)
    }
}

impl<L: Loader> Autoloader<Sequential<L>> {
    /// An autoloader that loads one module at a time with `loader` (tests use fakes).
    pub fn with_loader(index: ModuleIndex, loader: L) -> Self {
        Autoloader::with_executor(index, Sequential::new(loader), 1)
    }
}

impl<X: Executor> Autoloader<X> {
    /// An autoloader running `workers` attempts at once with `exec`.
    pub fn with_executor(index: ModuleIndex, exec: X, workers: usize) -> Self {
        let graph = Graph::new(&index);
        let aliases = AliasTable::of_index(&index);
        let schedule = Schedule::new(index.modules.len());
        let schedule_len = index.modules.len();
        let mut filesystems = vec![false; index.modules.len()];
        for a in index.aliases.iter().filter(|a| a.pattern.starts_with("fs-")) {
            if let Some(f) = graph.pos.get(&a.module).and_then(|&i| filesystems.get_mut(i)) {
                *f = true;
            }
        }
        Autoloader {
            index,
            graph,
            aliases,
            filesystems,
            unfit: vec![false; schedule_len],
            exec,
            workers: workers.max(1),
            recorded: vec![false; schedule_len],
            schedule,
            first: BTreeSet::new(),
            report: LoadReport::default(),
            seen: BTreeMap::new(),
            walks: 0,
            devices: None,
            kernel_compression: None,
        }
    }

    /// Load `roots` and what they bring along (each module at most once
    /// over the autoloader's life), waiting for them. Returns how many
    /// modules were tried.
    fn load_positions(&mut self, roots: Vec<usize>) -> usize {
        self.queue_and_drive(roots, Until::Urgent)
    }

    /// Queue `roots` and what they bring along, then [`Autoloader::drive`].
    fn queue_and_drive(&mut self, roots: Vec<usize>, until: Until) -> usize {
        let set = self.graph.closure(roots, &self.filesystems, &self.unfit);
        let queued = self.schedule.queue(&set);
        if queued == 0 && until == Until::Urgent && set.iter().all(|&i| self.schedule.done(i).is_some()) {
            return 0;
        }
        let urgent = if until == Until::Urgent { set } else { self.first.clone() };
        self.drive(&urgent, until)
    }

    /// Load what is queued `until`, `urgent` first, and report what finished.
    /// Returns how many modules finished (loaded, failed or skipped).
    fn drive(&mut self, urgent: &BTreeSet<usize>, until: Until) -> usize {
        let start = Instant::now();
        let _ = drive(&mut self.schedule, &self.graph, &self.index, &mut self.exec, self.workers, urgent, until);
        self.report.total = self.report.total.saturating_add(start.elapsed());
        let newly: Vec<usize> = (0..self.index.modules.len())
            .filter(|&i| self.schedule.done(i).is_some() && !self.recorded.get(i).copied().unwrap_or(true))
            .collect();
        for &i in &newly {
            if let Some(r) = self.recorded.get_mut(i) {
                *r = true;
            }
        }
        let n = newly.len();
        record(&mut self.report, &self.schedule, &self.index, newly);
        n
    }

    /// Loads still running or waiting (started by [`Autoloader::start`] or a device)?
    pub fn pending(&self) -> bool {
        self.schedule.pending()
    }

    /// Take the loads that have finished and start those that may start now,
    /// without waiting. With `walk`, walk the devices again when something
    /// finished (no uevents tell of the devices new drivers create), 3 walks
    /// in all at most. True if something finished.
    pub fn pump(&mut self, walk: bool) -> bool {
        let first = self.first.clone();
        let n = self.drive(&first, Until::NoWait);
        if walk && n > 0 && self.walks < 3 {
            if let Some(devices) = self.devices.clone() {
                if let Err(e) = self.walk(&devices, Vec::new(), Until::NoWait) {
                    log::warn!("walking {} again: {e}", devices.display());
                }
            }
        }
        n > 0
    }

    /// Before the switch to the new root: wait for what the boot needed first
    /// and for the drivers being loaded; drivers asked for but not started
    /// are left to the booted system (its udev loads them from its own
    /// modules): the boot does not wait for devices it did not need.
    pub fn finish(&mut self) {
        if self.pending() {
            let first = self.first.clone();
            self.drive(&first, Until::Urgent);
            let left = self.schedule.drop_waiting();
            let n = self.drive(&first, Until::Idle);
            log::info!("kernel modules: {n} more loaded while the boot went on: {}", self.report.counts());
            if !left.is_empty() {
                let names: Vec<&str> =
                    left.iter().filter_map(|&i| self.index.modules.get(i)).map(|m| m.name.as_str()).collect();
                log::info!("kernel modules: not loaded, as the boot did not need them: {}", names.join(" "));
            }
        }
        if let Some(line) = self.decompression_line() {
            log::info!("{line}");
        }
    }

    fn always_positions(&self) -> Vec<usize> {
        self.index.modules.iter().enumerate().filter(|(_, m)| m.load == Load::Always).map(|(i, _)| i).collect()
    }

    /// Load every module marked `always`. Returns how many were tried.
    pub fn load_unconditional(&mut self) -> usize {
        let n = self.load_positions(self.always_positions());
        log::info!("kernel modules: loaded the unconditional ones: {}", self.report.counts());
        n
    }

    /// What the boot does first: load the `always` modules, the filesystem
    /// modules of `expected` filesystem types (without waiting for their
    /// superblock: see [`Autoloader::load_filesystem`]) and the drivers of the
    /// devices under `devices` (the sysfs root, `/sys`) together, in parallel, then
    /// walk again as [`Autoloader::coldplug`] does. Returns how many modules were tried.
    pub fn start(&mut self, devices: &Path, expected: &[&str]) -> Result<usize> {
        self.set_devices(devices);
        let mut roots = self.always_positions();
        for fstype in expected {
            roots.extend(self.filesystem_positions(fstype));
        }
        self.first = self.graph.closure(roots.clone(), &self.filesystems, &self.unfit);
        let started = Instant::now();
        let n = self.walk(devices, roots, Until::NoWait)?;
        log::info!(
            "kernel modules: coldplug of {} in {} ms: {} modalias strings, {} modules asked for, loading",
            devices.display(),
            started.elapsed().as_millis(),
            self.seen.len(),
            self.schedule.asked()
        );
        Ok(n)
    }

    /// Note the sysfs root the walks use; the first time, also rule out the
    /// modules made for CPU features the CPU lacks, as the CPU's modalias
    /// under it says ([`not_for_cpu`]).
    fn set_devices(&mut self, sys: &Path) {
        if self.devices.replace(sys.to_owned()).is_some() {
            return;
        }
        let Some(cpu) = read_modalias(&sys.join("devices/system/cpu/modalias")) else { return };
        let unfit = not_for_cpu(&self.index, &self.aliases, &cpu);
        for name in &unfit {
            if let Some(u) = self.graph.pos.get(name).and_then(|&i| self.unfit.get_mut(i)) {
                *u = true;
            }
        }
        if !unfit.is_empty() {
            log::info!("kernel modules: not for this CPU (it lacks the features they are for): {}", unfit.join(" "));
        }
    }

    /// Walk `devices` once for modalias strings not seen before, queue their
    /// modules with `extra` and drive the loads `until`. Returns how many finished.
    fn walk(&mut self, devices: &Path, extra: Vec<usize>, until: Until) -> Result<usize> {
        // What the boot needs first starts before the walk.
        let n = if extra.is_empty() { 0 } else { self.queue_and_drive(extra, Until::NoWait) };
        let found = collect_modaliases(devices)?;
        self.walks = self.walks.saturating_add(1);
        let mut roots = Vec::new();
        for (modalias, dir) in found {
            if self.seen.contains_key(&modalias) {
                continue;
            }
            let modules = self.aliases.lookup(&modalias);
            roots.extend(modules.iter().filter_map(|m| self.graph.pos.get(m).copied()));
            self.seen.insert(modalias, Seen { modules, device: Some(dir) });
        }
        Ok(n.saturating_add(self.queue_and_drive(roots, until)))
    }

    /// The modules the index's `fs-TYPE` alias names.
    fn filesystem_positions(&self, fstype: &str) -> Vec<usize> {
        let modules = self.aliases.lookup(&filesystem_alias(fstype));
        modules.iter().filter_map(|m| self.graph.pos.get(m).copied()).collect()
    }

    /// Load what mounting a filesystem of type `fstype` needs: the modules
    /// `fs-TYPE` names with what they need, and then those of their own
    /// pre-softdeps whose name starts with `checksum` (btrfs's checksum
    /// drivers: the superblock says which one it uses; all of them when
    /// `None`). A type without an `fs-` alias (built in, or an initramfs of
    /// format 2) loads nothing. Returns how many modules were tried.
    pub fn load_filesystem(&mut self, fstype: &str, checksum: Option<&str>) -> usize {
        let roots = self.filesystem_positions(fstype);
        let n = self.load_positions(roots.clone());
        let wanted: Vec<usize> = roots
            .iter()
            .flat_map(|&i| self.graph.pre(i).to_vec())
            .filter(|&p| checksum.is_none_or(|c| self.index.modules.get(p).is_some_and(|m| m.name.starts_with(c))))
            .collect();
        n.saturating_add(self.load_positions(wanted))
    }

    /// Load every module of the index, whatever its `load` word.
    pub fn load_everything(&mut self) -> usize {
        self.load_positions((0..self.index.modules.len()).collect())
    }

    /// Note `modalias` (of the device directory `device`, if known) and load the
    /// modules it matches. Returns how many modules were tried.
    fn note_modalias(&mut self, modalias: &str, device: Option<PathBuf>) -> usize {
        if self.seen.contains_key(modalias) {
            return 0;
        }
        let modules = self.aliases.lookup(modalias);
        let roots: Vec<usize> = modules.iter().filter_map(|m| self.graph.pos.get(m).copied()).collect();
        if !modules.is_empty() {
            log::debug!("modalias {modalias}: {}", modules.join(" "));
        }
        self.seen.insert(modalias.to_owned(), Seen { modules, device });
        self.queue_and_drive(roots, Until::NoWait)
    }

    /// Load the modules a device's modalias asks for (from a uevent's
    /// `MODALIAS=`). A modalias seen before does nothing. Returns how many
    /// modules were tried.
    pub fn on_modalias(&mut self, modalias: &str) -> usize {
        self.note_modalias(modalias, None)
    }

    /// Like [`Autoloader::on_modalias`], with the device's sysfs directory
    /// (`/sys` + a uevent's `DEVPATH=`), so [`Autoloader::unmatched`] can leave
    /// out devices that got a driver anyway (a built-in one).
    pub fn on_device(&mut self, modalias: &str, device: &Path) -> usize {
        self.note_modalias(modalias, Some(device.to_owned()))
    }

    /// Walk the devices of `devices` (the sysfs root, `/sys`: see
    /// [`collect_modaliases`]) for `modalias` files and load the modules
    /// they match, in parallel. Drivers bound while loading create devices of
    /// their own (virtio_pci → virtio devices): the walk is repeated while the
    /// previous one loaded something, 3 walks at most; later devices come
    /// through [`Autoloader::on_modalias`]. Returns how many modules were tried.
    pub fn coldplug(&mut self, devices: &Path) -> Result<usize> {
        let start = Instant::now();
        self.set_devices(devices);
        let mut tried = 0usize;
        for _ in 0..3 {
            let n = self.walk(devices, Vec::new(), Until::Idle)?;
            tried = tried.saturating_add(n);
            if n == 0 {
                break;
            }
        }
        log::info!(
            "kernel modules: coldplug of {} in {} ms: {} modalias strings, {} modules tried",
            devices.display(),
            start.elapsed().as_millis(),
            self.seen.len(),
            tried
        );
        if let Some(line) = self.decompression_line() {
            log::info!("{line}");
        }
        Ok(tried)
    }

    /// The modalias strings seen that matched no module of the initramfs, sorted,
    /// each once, leaving out [`NOT_DISK_BUSES`] and devices that have a driver
    /// by now (`DEVICE/driver` exists: a built-in one).
    pub fn unmatched(&self) -> Vec<String> {
        self.unmatched_with(|dir| std::fs::symlink_metadata(dir.join("driver")).is_ok())
    }

    /// [`Autoloader::unmatched`] with the "has a driver" test given.
    pub fn unmatched_with(&self, has_driver: impl Fn(&Path) -> bool) -> Vec<String> {
        self.seen
            .iter()
            .filter(|(alias, seen)| {
                seen.modules.is_empty()
                    && !NOT_DISK_BUSES.iter().any(|bus| alias.starts_with(bus))
                    && !seen.device.as_deref().is_some_and(&has_driver)
            })
            .map(|(alias, _)| alias.clone())
            .collect()
    }

    /// The modules loaded (now or before we tried), in index order.
    pub fn loaded(&self) -> Vec<String> {
        let mut out: Vec<(usize, String)> = Vec::new();
        for (i, m) in self.index.modules.iter().enumerate() {
            if self.schedule.done(i).is_some_and(Done::ok) {
                out.push((i, m.name.clone()));
            }
        }
        out.into_iter().map(|(_, n)| n).collect()
    }

    /// Who decompressed the compressed modules loaded so far (see
    /// [`decompression_summary`]); `None` if none was compressed.
    pub fn decompression_line(&self) -> Option<String> {
        let loaded = self
            .index
            .modules
            .iter()
            .enumerate()
            .filter(|(i, _)| matches!(self.schedule.done(*i), Some(Done::Loaded(_))))
            .map(|(_, m)| m.path.as_str());
        decompression_summary(loaded, self.kernel_compression.as_deref())
    }

    /// Everything tried so far.
    pub fn report(&self) -> &LoadReport {
        &self.report
    }

    /// The index this autoloader works from.
    pub fn index(&self) -> &ModuleIndex {
        &self.index
    }
}

impl<X: Executor> Autoloader<X> {
    /// How many modules marked `modalias` were tried (loaded for devices).
    fn tried_for_devices(&self) -> usize {
        self.index
            .modules
            .iter()
            .enumerate()
            .filter(|(i, m)| m.load == Load::Modalias && self.schedule.done(*i).is_some())
            .count()
    }

    /// Lines for the "timeout waiting for root" message: what loaded, what
    /// failed, and the devices no module of the initramfs matched.
    pub fn diagnostic_lines(&self) -> Vec<String> {
        let mut lines = vec![self.summary_line()];
        for f in &self.report.failed {
            lines.push(format!("module failed: {f}"));
        }
        for s in &self.report.skipped {
            lines.push(format!("module skipped: {} (needs {}, which did not load)", s.name, s.because_of));
        }
        let loaded = self.loaded();
        lines.push(format!("modules loaded: {}", if loaded.is_empty() { "none".to_owned() } else { loaded.join(" ") }));
        let unmatched = self.unmatched();
        if unmatched.is_empty() {
            lines.push(
                "every device's modalias matched a module of the initramfs, or the device has a driver".to_owned(),
            );
            return lines;
        }
        lines.push(format!(
            "{} modalias strings no module of the initramfs matches (devices without a driver):",
            unmatched.len()
        ));
        // Short lines: a kernel log record holds about 1 KiB.
        let mut line = String::new();
        for alias in unmatched {
            if !line.is_empty() && line.len().saturating_add(alias.len()) > DIAGNOSTIC_LINE_BYTES {
                lines.push(std::mem::take(&mut line));
            }
            line.push_str("  ");
            line.push_str(&alias);
        }
        lines.push(line);
        lines
    }

    fn summary_line(&self) -> String {
        let r = &self.report;
        let tried = r
            .loaded
            .len()
            .saturating_add(r.already_present.len())
            .saturating_add(r.failed.len())
            .saturating_add(r.skipped.len());
        format!(
            "kernel modules: {} ({} of them for devices); {tried} of {} in the initramfs tried; \
             {} modalias strings seen, {} matched no module",
            r.counts(),
            self.tried_for_devices(),
            self.index.modules.len(),
            self.seen.len(),
            self.unmatched().len()
        )
    }
}

impl<X: Executor> fmt::Display for Autoloader<X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.summary_line())?;
        self.report.details(f)
    }
}

/// The boot's device waiter drives the autoloader: every `add` uevent with a
/// MODALIAS loads what it matches (as udev's `kmod load` rule does), a lost
/// batch of uevents walks the devices again, and a timeout shows
/// [`Autoloader::diagnostic_lines`].
impl<X: Executor> crate::devices::WaitHooks for Autoloader<X> {
    fn on_uevent(&mut self, ev: &crate::uevent::Uevent) {
        if ev.action != crate::uevent::Action::Add {
            return;
        }
        if let Some(modalias) = ev.modalias.as_deref().filter(|m| !m.is_empty()) {
            let dir = Path::new("/sys").join(ev.devpath.trim_start_matches('/'));
            self.on_device(modalias, &dir);
        }
    }

    fn on_overflow(&mut self) {
        let devices = self.devices.clone().unwrap_or_else(|| PathBuf::from("/sys"));
        if let Err(e) = self.coldplug(&devices) {
            log::warn!("uevents were lost and walking {} again failed: {e}", devices.display());
        }
    }

    fn diagnostics(&self) -> Vec<String> {
        self.diagnostic_lines()
    }

    fn before_mount(&mut self, fstype: &str, fs: Option<&crate::probe::FsInfo>) {
        self.load_filesystem(fstype, fs.and_then(|f| f.btrfs.as_ref()).map(|b| b.checksum));
    }

    fn pending(&self) -> bool {
        Autoloader::pending(self)
    }

    fn pump(&mut self, no_uevents: bool) -> bool {
        Autoloader::pump(self, no_uevents)
    }

    fn finish(&mut self) {
        Autoloader::finish(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modules::fixtures::*;
    use crate::modules::*;
    use rustix::io::Errno;
    use std::sync::Mutex;

    type Calls = Mutex<Vec<String>>;

    fn recording(calls: &Calls) -> impl Fn(&IndexEntry) -> Attempt + Sync + '_ {
        move |e: &IndexEntry| {
            calls.lock().unwrap().push(e.name.clone());
            if e.name == "nvme_core" {
                Attempt::Failed(Errno::NOMEM)
            } else {
                Attempt::Loaded
            }
        }
    }

    fn sorted(v: &[String]) -> Vec<String> {
        let mut v = v.to_vec();
        v.sort();
        v
    }

    /// An executor whose attempts finish only when waited for, oldest first.
    #[derive(Default)]
    struct Lazy {
        running: std::collections::VecDeque<usize>,
        started: Vec<(String, bool)>,
    }

    impl Executor for Lazy {
        fn start(&mut self, i: usize, entry: &IndexEntry, awaited: bool) {
            self.started.push((entry.name.clone(), awaited));
            self.running.push_back(i);
        }
        fn wait(&mut self) -> Option<(usize, Attempt, std::time::Duration)> {
            self.running.pop_front().map(|i| (i, Attempt::Loaded, std::time::Duration::ZERO))
        }
        fn poll(&mut self) -> Option<(usize, Attempt, std::time::Duration)> {
            None
        }
    }

    #[test]
    fn the_boot_goes_on_while_drivers_load_and_waits_only_for_what_it_needs() {
        let root = fake_sysfs("background");
        let mut auto = Autoloader::with_executor(filesystems(), Lazy::default(), 2);
        // start returns at once: what the boot needs first (btrfs's chain) is
        // started first, two at a time, none of it waited for yet.
        assert_eq!(auto.start(&root, &["btrfs"]).unwrap(), 0);
        assert!(auto.pending());
        let started: Vec<(String, bool)> = auto.exec.started.clone();
        assert_eq!(started, [("crc32c_generic".to_string(), false), ("raid6_pq".to_string(), false)]);
        // Nothing finished: pumping starts nothing more.
        assert!(!auto.pump(false));
        assert_eq!(auto.exec.started.len(), 2);
        // Before the mount: wait for btrfs and what it needs, loading those
        // that have not started yet as awaited; the driver may still wait.
        auto.load_filesystem("btrfs", Some("crc32c"));
        let done = |auto: &Autoloader<Lazy>, n: &str| auto.loaded().contains(&n.to_string());
        assert!(["crc32c_generic", "libcrc32c", "raid6_pq", "btrfs"].iter().all(|m| done(&auto, m)));
        let awaited: Vec<&str> = auto.exec.started.iter().filter(|(_, a)| *a).map(|(n, _)| n.as_str()).collect();
        assert_eq!(awaited, ["libcrc32c", "btrfs"]);
        // A device that appears now: its driver's dependency starts, the driver waits for it.
        auto.exec.started.clear();
        auto.on_modalias("pci:v00008086d00007010sv00001AF4sd00001100bc01sc01i80");
        assert_eq!(auto.exec.started, [("libata".to_string(), false)]);
        // At the switch to the new root: what started ends, what did not is
        // left to the booted system.
        auto.finish();
        assert!(!auto.pending());
        assert!(done(&auto, "virtio_blk") && done(&auto, "libata"), "{:?}", auto.loaded());
        assert!(!done(&auto, "ata_piix"), "{:?}", auto.loaded());
        assert!(!done(&auto, "xxhash_generic"), "not asked for by a crc32c superblock");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn filesystems_load_before_their_mount_with_the_checksum_the_superblock_wants() {
        let calls = Calls::default();
        let taken = |calls: &Calls| sorted(&std::mem::take(&mut *calls.lock().unwrap()));
        let root = fake_sysfs("fs-on-demand");
        // btrfs expected from the command line: its chain starts with the drivers,
        // but not its own checksum softdeps (the superblock says which it needs).
        let mut auto = Autoloader::with_loader(filesystems(), recording(&calls));
        assert_eq!(auto.start(&root, &["btrfs"]).unwrap(), 5);
        assert_eq!(taken(&calls), ["btrfs", "crc32c_generic", "libcrc32c", "raid6_pq", "virtio_blk"]);
        // A crc32c filesystem: libcrc32c brought crc32c already; nothing more.
        assert_eq!(auto.load_filesystem("btrfs", Some("crc32c")), 0);
        // An xxhash one: that driver only.
        assert_eq!(auto.load_filesystem("btrfs", Some("xxhash")), 1);
        assert_eq!(taken(&calls), ["xxhash_generic"]);
        // Unknown checksum (not probed): every pre-softdep left.
        assert_eq!(auto.load_filesystem("btrfs", None), 1);
        assert_eq!(taken(&calls), ["blake2b_generic"]);
        assert_eq!(auto.load_filesystem("btrfs", None), 0, "nothing twice");

        // Nothing expected: no filesystem at the start, each on demand.
        let mut auto = Autoloader::with_loader(filesystems(), recording(&calls));
        assert_eq!(auto.start(&root, &[]).unwrap(), 1);
        assert_eq!(taken(&calls), ["virtio_blk"]);
        // ext2 mounts with ext4 (its fs-ext2 alias), and ext4's pre-softdep comes along.
        assert_eq!(auto.load_filesystem("ext2", None), 3);
        assert_eq!(taken(&calls), ["crc32c_generic", "ext4", "jbd2"]);
        assert_eq!(auto.load_filesystem("vfat", None), 2);
        assert_eq!(taken(&calls), ["nls_cp437", "vfat"]);
        // Built in, or not in this initramfs: nothing to load, the mount says the rest.
        assert_eq!(auto.load_filesystem("xfs", None), 0);
        // The device timeout's diagnostic lists no filesystem as a device without a driver.
        assert!(!auto.unmatched().is_empty());
        assert!(!auto.unmatched().iter().any(|a| a.starts_with("fs-")), "{:?}", auto.unmatched());
        let loaded = auto.loaded();
        assert!(loaded.contains(&"ext4".to_string()) && !loaded.contains(&"btrfs".to_string()), "{loaded:?}");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn autoloader_loads_always_then_what_devices_ask_for_each_once() {
        let calls = Calls::default();
        let mut auto = Autoloader::with_loader(machine(), recording(&calls));
        assert_eq!(auto.load_unconditional(), 3);
        assert_eq!(sorted(&calls.lock().unwrap()), ["btrfs", "crc32c_generic", "libcrc32c"]);
        assert_eq!(auto.load_unconditional(), 0, "nothing twice");

        calls.lock().unwrap().clear();
        assert_eq!(auto.on_modalias("virtio:d00000002v00001AF4"), 4);
        assert_eq!(sorted(&calls.lock().unwrap()), ["blk_helper", "virtio", "virtio_blk", "virtio_ring"]);
        calls.lock().unwrap().clear();
        assert_eq!(auto.on_modalias("virtio:d00000002v00001AF4"), 0, "a modalias seen before does nothing");
        assert_eq!(auto.on_modalias("pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00"), 1);
        assert_eq!(*calls.lock().unwrap(), ["virtio_pci"], "its deps are loaded already");

        // A failed hard dependency skips the driver; the report says so.
        assert_eq!(auto.on_modalias("pci:v00001B36d00000010sv00001AF4sd00001100bc01sc08i02"), 2);
        let report = auto.report();
        assert_eq!(report.failed.len(), 1);
        assert_eq!(report.skipped, [Skipped { name: "nvme".into(), because_of: "nvme_core".into() }]);

        // Unmatched: deduplicated, sorted, no CPU aliases, no devices with a driver.
        auto.on_modalias("acpi:PNP0303:");
        auto.on_modalias("acpi:PNP0303:");
        auto.on_modalias("cpu:type:x86,ven0002fam001Amod0002:feature:,0000");
        auto.on_device("pci:v00008086d00001237sv00001AF4sd00001100bc06sc00i00", Path::new("/fake/bridge"));
        auto.on_device("platform:pcspkr", Path::new("/fake/pcspkr"));
        assert_eq!(
            auto.unmatched_with(|d| d == Path::new("/fake/pcspkr")),
            ["acpi:PNP0303:", "pci:v00008086d00001237sv00001AF4sd00001100bc06sc00i00"]
        );
        assert_eq!(auto.seen.len(), 7);
        let loaded = auto.loaded();
        assert_eq!(
            loaded,
            ["crc32c_generic", "libcrc32c", "btrfs", "virtio_ring", "virtio", "virtio_pci", "virtio_blk", "blk_helper"]
        );
        let text = auto.to_string();
        assert!(text.starts_with("kernel modules: 8 loaded, 0 already present, 1 failed, 1 skipped ("), "{text}");
        assert!(
            text.contains("(7 of them for devices); 10 of 13 in the initramfs tried; 7 modalias strings seen"),
            "{text}"
        );
        assert!(text.contains("\n  failed: nvme_core (/lib/modules/6.1.0-56-amd64/kernel/nvme_core.ko): "), "{text}");
        assert!(text.contains("\n  skipped: nvme (needs nvme_core, which did not load)"), "{text}");
    }

    #[test]
    fn modalias_of_an_always_module_before_it_loaded_loads_it_once() {
        let calls = Calls::default();
        let mut index = machine();
        index.aliases.push(alias("fs:btrfs*", "btrfs"));
        let mut auto = Autoloader::with_loader(index, recording(&calls));
        assert_eq!(auto.on_modalias("fs:btrfs"), 3);
        assert_eq!(auto.load_unconditional(), 0);
        assert_eq!(auto.load_everything(), 10);
        assert_eq!(calls.lock().unwrap().len(), 12, "all but nvme, skipped after nvme_core failed");
    }

    #[test]
    fn coldplug_loads_the_drivers_of_a_fake_machine() {
        let root = fake_sysfs("coldplug");
        let calls = Calls::default();
        let mut auto = Autoloader::with_loader(machine(), recording(&calls));
        auto.load_unconditional();
        let tried = auto.coldplug(&root).unwrap();
        assert_eq!(tried, 8, "virtio_pci, virtio_blk and sd_mod with their deps and softdeps");
        let c = sorted(&calls.lock().unwrap());
        for m in ["virtio_pci", "virtio_blk", "blk_helper", "sd_mod", "scsi_mod"] {
            assert!(c.contains(&m.to_string()), "{m} not loaded: {c:?}");
        }
        assert!(!c.contains(&"nvme".to_string()));
        assert_eq!(c.len(), 11, "each module once: {c:?}");
        // The second walk found nothing new.
        assert_eq!(auto.walks, 2);
        let unmatched = auto.unmatched();
        assert_eq!(unmatched, ["pci:v00008086d00001237sv00001AF4sd00001100bc06sc00i00"], "pcspkr has a driver link");
        assert_eq!(auto.coldplug(&root).unwrap(), 0);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn start_loads_always_and_coldplug_in_one_round_and_hooks_follow_uevents() {
        use crate::devices::WaitHooks;
        use crate::uevent::{Action, Uevent};
        let root = fake_sysfs("hooks");
        let calls = Calls::default();
        let mut auto = Autoloader::with_loader(machine(), recording(&calls));
        assert_eq!(auto.start(&root, &[]).unwrap(), 11, "3 always + 8 for the devices");
        assert_eq!(auto.report().loaded.len(), 11);
        calls.lock().unwrap().clear();

        let event = |action: Action, modalias: Option<&str>| Uevent {
            action,
            devpath: "/devices/dockroot-test/no-such-device".into(),
            subsystem: Some("pci".into()),
            devname: None,
            devtype: None,
            modalias: modalias.map(str::to_owned),
            driver: None,
            major: None,
            minor: None,
            partn: None,
            seqnum: Some(1),
        };
        let nvme = "pci:v00001B36d00000010sv00001AF4sd00001100bc01sc08i02";
        auto.on_uevent(&event(Action::Change, Some(nvme)));
        auto.on_uevent(&event(Action::Add, None));
        assert!(calls.lock().unwrap().is_empty(), "only add events with a MODALIAS load modules");
        auto.on_uevent(&event(Action::Add, Some(nvme)));
        assert_eq!(sorted(&calls.lock().unwrap()), ["nvme_core"], "nvme is skipped after nvme_core failed");
        auto.on_uevent(&event(Action::Add, Some("pci:v0000DEADd0000BEEFsv00000000sd00000000bc01sc00i00")));

        // A lost batch of events: walk again, find the new device.
        let dir = root.join("devices/pci0000:00/0000:00:06.0/host0/target0:0:0/0:0:0:1");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("modalias"), "scsi:t-0x0e\n").unwrap();
        std::os::unix::fs::symlink(&dir, root.join("bus/scsi/devices/0:0:0:1")).unwrap();
        auto.on_overflow();
        assert!(auto.seen.contains_key("scsi:t-0x0e"), "walked again");

        let lines = auto.diagnostics();
        assert!(lines[0].starts_with("kernel modules: 11 loaded, 0 already present, 1 failed, 1 skipped"), "{lines:?}");
        assert!(lines.contains(&"module skipped: nvme (needs nvme_core, which did not load)".to_string()), "{lines:?}");
        assert!(lines.iter().any(|l| l.starts_with("module failed: nvme_core (/lib/modules/")), "{lines:?}");
        assert!(
            lines.iter().any(|l| l.starts_with("modules loaded: crc32c_generic libcrc32c btrfs scsi_mod")),
            "{lines:?}"
        );
        let n = lines.len();
        assert_eq!(lines[n - 2], "2 modalias strings no module of the initramfs matches (devices without a driver):");
        assert_eq!(
            lines[n - 1],
            "  pci:v00008086d00001237sv00001AF4sd00001100bc06sc00i00  pci:v0000DEADd0000BEEFsv00000000sd00000000bc01sc00i00"
        );
        // Many: lines of DIAGNOSTIC_LINE_BYTES at most, every alias whole.
        for i in 0..40 {
            auto.on_modalias(&format!("acpi:TEST{i:04}:"));
        }
        auto.on_modalias("input:b0011v0001p0001eAB41-e0,1,4,11,14");
        auto.on_modalias("dmi:bvnSeaBIOS:bvr1.16.2");
        let lines = auto.diagnostic_lines();
        let start = lines.iter().position(|l| l.starts_with("42 modalias strings")).unwrap();
        let listed: Vec<&str> = lines[start + 1..].iter().flat_map(|l| l.split_whitespace()).collect();
        assert_eq!(listed.len(), 42);
        assert!(
            listed.contains(&"acpi:TEST0039:")
                && !listed.iter().any(|l| l.starts_with("input:") || l.starts_with("dmi:"))
        );
        assert!(lines[start + 1..].iter().all(|l| l.len() <= DIAGNOSTIC_LINE_BYTES + 2 + 20), "{lines:?}");
        assert!(lines.len() > start + 2);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn modules_for_features_the_cpu_lacks_are_not_tried() {
        let root = fake_sysfs("cpu");
        let mut index = sample();
        index.aliases.push(alias("cpu:type:x86,ven*fam*mod*:feature:*0094*", "crc32c_intel"));
        index.modules.push(always("needs_intel", &["crc32c_intel"], &[]));
        let calls = Calls::default();
        let mut auto = Autoloader::with_loader(index.clone(), recording(&calls));
        auto.start(&root, &[]).unwrap();
        // The fake CPU has feature 0000 only: crc32c_intel is not tried, what
        // needs it is skipped, and btrfs, whose soft dependency it is, loads.
        assert_eq!(sorted(&calls.lock().unwrap()), ["btrfs", "crc32c_generic", "libcrc32c", "xor"]);
        assert_eq!(auto.report().skipped, [Skipped { name: "needs_intel".into(), because_of: "crc32c_intel".into() }]);
        // A CPU with the feature gets it.
        std::fs::write(
            root.join("devices/system/cpu/modalias"),
            "cpu:type:x86,ven0000fam0006mod0006:feature:,0000,0094\n",
        )
        .unwrap();
        let calls = Calls::default();
        let mut auto = Autoloader::with_loader(index, recording(&calls));
        auto.start(&root, &[]).unwrap();
        assert!(calls.lock().unwrap().contains(&"crc32c_intel".to_string()));
        assert!(auto.report().skipped.is_empty());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn autoloader_counts_only_modules_it_loaded_for_the_decompression_line() {
        let mut index = sample();
        for m in &mut index.modules {
            m.path = format!("{}.ko.zst", m.name);
        }
        let names: Vec<String> = index.modules.iter().map(|m| m.name.clone()).collect();
        let present = names.first().cloned().unwrap();
        let mut auto =
            Autoloader::with_loader(
                index,
                move |e: &IndexEntry| {
                    if e.name == present {
                        Attempt::AlreadyPresent
                    } else {
                        Attempt::Loaded
                    }
                },
            );
        assert_eq!(auto.decompression_line(), None, "nothing loaded yet");
        auto.load_everything();
        let loaded = auto.report().loaded.len();
        assert!(loaded > 0 && loaded < names.len(), "{:?}", auto.report());
        auto.kernel_compression = Some("zstd".into());
        assert_eq!(
            auto.decompression_line().unwrap(),
            format!("compressed kernel modules loaded: decompressed by the kernel (MODULE_INIT_COMPRESSED_FILE): {loaded} zstd")
        );
    }

    #[test]
    fn autoloader_refuses_another_kernel() {
        let index = ModuleIndex {
            kernel: "0.0.0-not-this-kernel".into(),
            modules: vec![always("a", &[], &[])],
            aliases: vec![],
        };
        let e = Autoloader::new(index, Path::new("/nonexistent")).err().unwrap().to_string();
        assert!(e.contains("carries modules for 0.0.0-not-this-kernel but the running kernel is"), "{e}");
    }
}
