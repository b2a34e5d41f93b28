//! Scheduling: which module may start, given what has finished. [`Graph`] is
//! the dependency graph of an index, [`Schedule`] the state of every module
//! across load rounds, [`drive`] runs what is queued with an [`Executor`]
//! at most `workers` at once (blocking, or not), and [`record`] adds the outcomes to a report.
//! All pure: the system calls are the executor's ([`super::ForkExecutor`] at
//! boot; [`Sequential`] with a fake [`Loader`] in tests).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use rustix::io::Errno;

use super::{Attempt, Cause, Failure, IndexEntry, LoadReport, ModuleIndex, Skipped};

/// The most modules loading at the same time.
pub const MAX_WORKERS: usize = 4;

/// How often [`drive`] looks whether a running module's symbols became
/// visible to a module that waits for it ([`Executor::visible`]), and for how
/// many looks at most before it waits for the module to finish instead.
const EARLY_LOOK_EVERY: Duration = Duration::from_millis(1);
const EARLY_LOOKS_MAX: u32 = 2000;

/// Where one module of the index stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Status {
    /// Not asked for (yet).
    Idle,
    /// Asked for, waiting for what it waits for.
    Waiting,
    /// Being loaded.
    Running,
    /// Loaded, present, failed or skipped.
    Done(Done),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Done {
    Loaded(Duration),
    AlreadyPresent,
    Failed(Cause),
    Skipped(String),
}

impl Done {
    pub(super) fn ok(&self) -> bool {
        matches!(self, Done::Loaded(_) | Done::AlreadyPresent)
    }
}

/// The dependency graph of an index, by position.
#[derive(Debug, Clone, Default)]
pub(super) struct Graph {
    pub(super) pos: BTreeMap<String, usize>,
    /// Hard dependencies.
    hard: Vec<Vec<usize>>,
    /// Everything a module waits for: hard deps, pre-softdeps, and the modules naming it as post-softdep.
    waits: Vec<Vec<usize>>,
    /// What asking for a module brings along: deps, pre- and post-softdeps.
    wants: Vec<Vec<usize>>,
    /// Pre-softdeps.
    pre: Vec<Vec<usize>>,
}

impl Graph {
    pub(super) fn new(index: &ModuleIndex) -> Graph {
        let pos: BTreeMap<String, usize> = index.modules.iter().enumerate().map(|(i, m)| (m.name.clone(), i)).collect();
        let find = |names: &[String]| -> Vec<usize> { names.iter().filter_map(|n| pos.get(n).copied()).collect() };
        let hard: Vec<Vec<usize>> = index.modules.iter().map(|m| find(&m.deps)).collect();
        let pre: Vec<Vec<usize>> = index.modules.iter().map(|m| find(&m.pre)).collect();
        let mut waits: Vec<Vec<usize>> = index
            .modules
            .iter()
            .zip(&pre)
            .map(|(m, p)| find(&m.deps).into_iter().chain(p.iter().copied()).collect())
            .collect();
        let mut wants = waits.clone();
        for (i, m) in index.modules.iter().enumerate() {
            for p in find(&m.post) {
                if let Some(w) = waits.get_mut(p) {
                    w.push(i);
                }
                if let Some(w) = wants.get_mut(i) {
                    w.push(p);
                }
            }
        }
        Graph { pos, hard, waits, wants, pre }
    }

    /// `roots` and everything they bring along, but for the pre-softdeps of
    /// the modules in `deferred` (filesystems: their superblock says which
    /// they need) and the modules in `unfit` (not for this CPU: a module
    /// needing one is skipped, as it would be after its failure).
    pub(super) fn closure(&self, roots: Vec<usize>, deferred: &[bool], unfit: &[bool]) -> BTreeSet<usize> {
        let mut out = BTreeSet::new();
        let mut stack = roots;
        while let Some(i) = stack.pop() {
            if !unfit.get(i).copied().unwrap_or(false) && out.insert(i) {
                let skip = if deferred.get(i).copied().unwrap_or(false) { self.pre(i) } else { &[] };
                stack.extend(self.wants.get(i).into_iter().flatten().filter(|w| !skip.contains(w)).copied());
            }
        }
        out
    }

    /// The pre-softdeps of module `i`.
    pub(super) fn pre(&self, i: usize) -> &[usize] {
        self.pre.get(i).map_or(&[], Vec::as_slice)
    }
}

/// What a worker should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    Start(usize),
    /// Nothing can start until a running module finishes.
    Wait,
    /// A module may start once a running one it needs is visible ([`Executor::visible`]).
    Soon,
    /// Nothing waits or runs.
    Finished,
}

/// The state of all modules across load rounds (pure: no system calls).
#[derive(Debug, Clone)]
pub(super) struct Schedule {
    status: Vec<Status>,
}

impl Schedule {
    pub(super) fn new(len: usize) -> Schedule {
        Schedule { status: vec![Status::Idle; len] }
    }

    /// Ask for these modules (and what they bring along: pass a closure).
    /// Returns how many were newly queued.
    pub(super) fn queue(&mut self, set: &BTreeSet<usize>) -> usize {
        let mut n = 0usize;
        for &i in set {
            if let Some(s @ Status::Idle) = self.status.get_mut(i) {
                *s = Status::Waiting;
                n = n.saturating_add(1);
            }
        }
        n
    }

    pub(super) fn done(&self, i: usize) -> Option<&Done> {
        match self.status.get(i) {
            Some(Status::Done(d)) => Some(d),
            _ => None,
        }
    }

    /// How many modules are being loaded.
    pub(super) fn running(&self) -> usize {
        self.status.iter().filter(|s| **s == Status::Running).count()
    }

    /// How many modules were asked for so far.
    pub(super) fn asked(&self) -> usize {
        self.status.iter().filter(|s| **s != Status::Idle).count()
    }

    /// Forget what was asked for and has not started; returns those positions.
    pub(super) fn drop_waiting(&mut self) -> Vec<usize> {
        let mut out = Vec::new();
        for (i, s) in self.status.iter_mut().enumerate() {
            if *s == Status::Waiting {
                *s = Status::Idle;
                out.push(i);
            }
        }
        out
    }

    /// Is anything asked for and not finished?
    pub(super) fn pending(&self) -> bool {
        self.status.iter().any(|s| matches!(s, Status::Waiting | Status::Running))
    }

    /// The next module that may start, one of `urgent` first; modules whose
    /// hard dependency did not load are marked skipped on the way (`names`
    /// for the message). Where loads overlap (`visible` given), a module may
    /// start while a hard dependency (whose symbols it uses) is still running
    /// once `visible` says the kernel lists that one: its load then waits in
    /// the kernel for the dependency's init and meanwhile checks its
    /// signature and lays itself out (btrfs.ko while raid6_pq benchmarks).
    /// Soft dependencies must have finished.
    fn next(
        &mut self,
        graph: &Graph,
        names: &[&str],
        urgent: &BTreeSet<usize>,
        visible: Option<&dyn Fn(usize) -> bool>,
    ) -> Next {
        let mut running = false;
        let mut waiting = None;
        let mut later = None;
        let mut soon = false;
        for i in 0..self.status.len() {
            match self.status.get(i) {
                Some(Status::Running) => running = true,
                Some(Status::Waiting) => {
                    let hard = graph.hard.get(i).map_or(&[][..], Vec::as_slice);
                    // Ready: all it waits for finished, or is a hard dependency
                    // running and visible; early: it would be, once visible.
                    let (mut ready, mut early) = (true, true);
                    // Waits on modules nobody asked for (post-softdep relations) do not count.
                    for &w in graph.waits.get(i).into_iter().flatten() {
                        match self.status.get(w) {
                            Some(Status::Done(_) | Status::Idle) | None => {}
                            Some(Status::Running) if hard.contains(&w) => {
                                ready &= visible.is_some_and(|v| v(w));
                                early &= visible.is_some();
                            }
                            _ => (ready, early) = (false, false),
                        }
                    }
                    if !ready {
                        soon |= early;
                        waiting.get_or_insert(i);
                        continue;
                    }
                    let missing = hard.iter().find(|&&d| {
                        !self.done(d).is_some_and(Done::ok) && self.status.get(d) != Some(&Status::Running)
                    });
                    if let Some(&dep) = missing {
                        let dep_name = names.get(dep).copied().unwrap_or("?").to_owned();
                        let name = names.get(i).copied().unwrap_or("?");
                        log::warn!("skipping module {name}: it needs {dep_name}, which did not load");
                        if let Some(s) = self.status.get_mut(i) {
                            *s = Status::Done(Done::Skipped(dep_name));
                        }
                        continue;
                    }
                    if !urgent.is_empty() && !urgent.contains(&i) {
                        later.get_or_insert(i);
                        continue;
                    }
                    if let Some(s) = self.status.get_mut(i) {
                        *s = Status::Running;
                    }
                    return Next::Start(i);
                }
                _ => {}
            }
        }
        if let Some(i) = later {
            if let Some(s) = self.status.get_mut(i) {
                *s = Status::Running;
            }
            return Next::Start(i);
        }
        if running {
            return if soon { Next::Soon } else { Next::Wait };
        }
        if let Some(stuck) = waiting {
            // Cannot happen with an index that parsed (waits point to earlier
            // lines), but never hang: give up on what is left.
            let name = names.get(stuck).copied().unwrap_or("?");
            log::warn!("module {name} waits for modules that never load; skipping it");
            if let Some(s) = self.status.get_mut(stuck) {
                *s = Status::Done(Done::Skipped("(a dependency cycle)".to_owned()));
            }
            return self.next(graph, names, urgent, visible);
        }
        Next::Finished
    }

    /// Mark every running module failed for `why`; returns their positions.
    fn abandon(&mut self, why: &str) -> Vec<usize> {
        let mut out = Vec::new();
        for (i, s) in self.status.iter_mut().enumerate() {
            if *s == Status::Running {
                *s = Status::Done(Done::Failed(Cause::Unsupported(why.to_owned())));
                out.push(i);
            }
        }
        out
    }

    fn finish(&mut self, i: usize, attempt: Attempt, took: Duration) {
        self.finish_after(i, attempt, took, &[], &[]);
    }

    /// [`Schedule::finish`], for a module that may have started before its
    /// hard dependencies (`hard`, with `names`) finished: if one of them
    /// failed, this one is skipped for it, as it would have been had it
    /// waited (the kernel refused it for the missing symbols).
    fn finish_after(&mut self, i: usize, attempt: Attempt, took: Duration, hard: &[usize], names: &[&str]) {
        let failed_dep = hard.iter().find(|&&d| self.done(d).is_some_and(|d| !d.ok()));
        let done = match attempt {
            Attempt::Loaded => Done::Loaded(took),
            Attempt::AlreadyPresent => Done::AlreadyPresent,
            _ if failed_dep.is_some() => {
                Done::Skipped(failed_dep.and_then(|&d| names.get(d)).copied().unwrap_or("?").to_owned())
            }
            Attempt::Failed(e) => Done::Failed(Cause::Errno(e)),
            Attempt::Unsupported(why) => Done::Failed(Cause::Unsupported(why)),
        };
        if let Some(s) = self.status.get_mut(i) {
            *s = Status::Done(done);
        }
    }
}

/// Something that loads one module, synchronously: [`KernelLoader`](super::KernelLoader), or a fake in tests.
pub trait Loader {
    fn load(&self, entry: &IndexEntry) -> Attempt;
}

impl<F: Fn(&IndexEntry) -> Attempt> Loader for F {
    fn load(&self, entry: &IndexEntry) -> Attempt {
        self(entry)
    }
}

/// Runs load attempts, possibly several at once: [`ForkExecutor`](super::ForkExecutor) at boot,
/// [`Sequential`] for a plain [`Loader`], a simulation in tests.
pub trait Executor {
    /// Start loading `entry`, the module at index position `i`; `awaited`:
    /// the caller waits for it now (an executor may then load it in place).
    fn start(&mut self, i: usize, entry: &IndexEntry, awaited: bool);
    /// Block until a started attempt finishes: its position, outcome and how
    /// long it took. `None` if nothing runs (or it can no longer be waited for).
    fn wait(&mut self) -> Option<(usize, Attempt, Duration)>;
    /// A started attempt that has finished, without waiting; `None` if none has.
    fn poll(&mut self) -> Option<(usize, Attempt, Duration)>;
    /// Like [`Executor::poll`], waiting up to `limit` for one to finish.
    fn poll_for(&mut self, _limit: Duration) -> Option<(usize, Attempt, Duration)> {
        self.poll()
    }
    /// May a module start while one whose symbols it uses still loads
    /// ([`Executor::visible`])? Not where loads take turns.
    fn overlaps(&self) -> bool {
        false
    }
    /// May a module that uses the symbols of running module `entry` start
    /// now? True once the kernel lists `entry` (its init may still run: the
    /// new load then waits for it in the kernel).
    fn visible(&self, _entry: &IndexEntry) -> bool {
        false
    }
}

/// Runs each attempt at once, in the calling thread, with a [`Loader`].
pub struct Sequential<L> {
    loader: L,
    done: VecDeque<(usize, Attempt, Duration)>,
}

impl<L: Loader> Sequential<L> {
    pub fn new(loader: L) -> Self {
        Sequential { loader, done: VecDeque::new() }
    }
}

impl<L: Loader> Executor for Sequential<L> {
    fn start(&mut self, i: usize, entry: &IndexEntry, _: bool) {
        let t = Instant::now();
        let attempt = self.loader.load(entry);
        self.done.push_back((i, attempt, t.elapsed()));
    }

    fn wait(&mut self) -> Option<(usize, Attempt, Duration)> {
        self.done.pop_front()
    }

    fn poll(&mut self) -> Option<(usize, Attempt, Duration)> {
        self.done.pop_front()
    }
}

/// The default number of modules loading at once: min(4, 2 × CPUs this
/// process may use). (With one CPU, what the boot waits for loads in its own
/// process: see [`super::ForkExecutor::one_cpu`].)
pub fn default_workers() -> usize {
    workers_for(usable_cpus())
}

/// How many CPUs this process may use.
pub fn usable_cpus() -> usize {
    rustix::thread::sched_getaffinity(None).map(|set| set.count() as usize).unwrap_or(1)
}

/// [`default_workers`] for `cpus` CPUs: two per CPU (a driver sleeping in
/// its probe leaves the CPU to another), at most [`MAX_WORKERS`].
pub fn workers_for(cpus: usize) -> usize {
    cpus.saturating_mul(2).clamp(2, MAX_WORKERS)
}

/// How long [`drive`] goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Until {
    /// Until every urgent module has finished (others may still be loading).
    Urgent,
    /// Until nothing waits or loads.
    Idle,
    /// Never wait: start what may start, take what has finished, return.
    NoWait,
}

/// Run the queued modules of `schedule` with `exec`, at most `workers` at
/// once, the `urgent` ones first. A module starts once all it waits for has
/// finished. Returns the positions that finished, in that order.
pub(super) fn drive<X: Executor + ?Sized>(
    schedule: &mut Schedule,
    graph: &Graph,
    index: &ModuleIndex,
    exec: &mut X,
    workers: usize,
    urgent: &BTreeSet<usize>,
    until: Until,
) -> Vec<usize> {
    let names: Vec<&str> = index.modules.iter().map(|m| m.name.as_str()).collect();
    let mut order = Vec::new();
    let mut looks = 0u32;
    loop {
        let mut soon = false;
        while schedule.running() < workers.max(1) {
            let visible = |w: usize| index.modules.get(w).is_some_and(|e| exec.visible(e));
            let overlap: Option<&dyn Fn(usize) -> bool> = if exec.overlaps() { Some(&visible) } else { None };
            match schedule.next(graph, &names, urgent, overlap) {
                Next::Start(i) => match index.modules.get(i) {
                    Some(entry) => exec.start(i, entry, until != Until::NoWait && urgent.contains(&i)),
                    None => schedule.finish(i, Attempt::Unsupported("not in the index".into()), Duration::ZERO),
                },
                Next::Soon => {
                    soon = looks < EARLY_LOOKS_MAX;
                    break;
                }
                Next::Wait | Next::Finished => break,
            }
        }
        let met = until == Until::Urgent && urgent.iter().all(|&i| schedule.done(i).is_some());
        // Nothing loads: all is done, or nothing more can start.
        if met || schedule.running() == 0 {
            return order;
        }
        let got = match until {
            Until::NoWait => exec.poll(),
            _ if soon => {
                looks = looks.saturating_add(1);
                exec.poll_for(EARLY_LOOK_EVERY)
            }
            _ => exec.wait(),
        };
        match got {
            Some((i, attempt, took)) => {
                let hard = graph.hard.get(i).map_or(&[][..], Vec::as_slice);
                schedule.finish_after(i, attempt, took, hard, &names);
                order.push(i);
            }
            None if until == Until::NoWait => return order,
            // Not visible yet: look again.
            None if soon => {}
            // The executor lost what it ran: never wait for it forever.
            None => order.extend(schedule.abandon("its loader was lost (no exit status)")),
        }
    }
}

/// Add the outcomes of `positions` to `report` (in index order) and log each.
pub(super) fn record(report: &mut LoadReport, schedule: &Schedule, index: &ModuleIndex, mut positions: Vec<usize>) {
    positions.sort_unstable();
    for i in positions {
        let (Some(entry), Some(done)) = (index.modules.get(i), schedule.done(i)) else { continue };
        match done {
            Done::Loaded(took) => {
                log::debug!("loaded module {} in {} us", entry.name, took.as_micros());
                report.loaded.push((entry.name.clone(), *took));
            }
            Done::AlreadyPresent => {
                log::debug!("module {} was already loaded", entry.name);
                report.already_present.push(entry.name.clone());
            }
            Done::Failed(cause) => {
                let failure = Failure { name: entry.name.clone(), path: entry.path.clone(), cause: cause.clone() };
                if failure.errno() == Some(Errno::NODEV) {
                    // Accelerated variants (crc32c_intel on a CPU without SSE4.2) and
                    // drivers of absent hardware: expected, not worth a warning.
                    log::info!("module {failure}");
                } else {
                    log::warn!("cannot load module {failure}");
                }
                report.failed.push(failure);
            }
            Done::Skipped(because_of) => {
                report.skipped.push(Skipped { name: entry.name.clone(), because_of: because_of.clone() })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modules::fixtures::*;
    use crate::modules::*;
    use std::sync::Mutex;

    // --- scheduling ---

    #[test]
    fn loads_in_order_and_skips_dependents_of_failures() {
        let mut index = sample();
        index.modules.push(always("raid1", &["btrfs"], &[]));
        index.modules.push(always("vfat", &[], &[]));
        let order = Mutex::new(Vec::new());
        let mut auto = Autoloader::with_loader(index, |e: &IndexEntry| {
            order.lock().unwrap().push(e.name.clone());
            match e.name.as_str() {
                "crc32c_intel" => Attempt::Failed(Errno::NODEV),
                "xor" => Attempt::Failed(Errno::NOEXEC),
                "libcrc32c" => Attempt::AlreadyPresent,
                _ => Attempt::Loaded,
            }
        });
        auto.load_everything();
        let report = auto.report();
        // btrfs needs xor (failed): skipped, and so is raid1 which needs btrfs.
        // The failed soft dependency crc32c_intel stops nothing.
        assert_eq!(*order.lock().unwrap(), ["crc32c_generic", "crc32c_intel", "libcrc32c", "xor", "vfat"]);
        let loaded: Vec<&str> = report.loaded.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(loaded, ["crc32c_generic", "vfat"]);
        assert_eq!(report.already_present, ["libcrc32c"]);
        assert_eq!(report.failed.len(), 2);
        assert_eq!(report.failed[1].name, "xor");
        assert_eq!(report.failed[1].errno(), Some(Errno::NOEXEC));
        assert_eq!(
            report.skipped,
            [
                Skipped { name: "btrfs".into(), because_of: "xor".into() },
                Skipped { name: "raid1".into(), because_of: "btrfs".into() },
            ]
        );
        assert!(!report.all_loaded());
        let text = report.to_string();
        assert!(text.starts_with("kernel modules: 2 loaded, 1 already present, 2 failed, 2 skipped ("), "{text}");
        assert!(
            text.contains("\n  failed: xor (/lib/modules/6.1.0-56-amd64/kernel/xor.ko): ")
                && text.contains("(os error 8): built for another kernel?"),
            "{text}"
        );
        assert!(text.contains("\n  skipped: raid1 (needs btrfs, which did not load)"), "{text}");
    }

    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    /// A pseudo-random index: module i depends on some earlier ones, pre-softdeps
    /// and post-softdeps included.
    fn random_index(seed: u64, n: usize) -> ModuleIndex {
        let mut rng = XorShift(seed | 1);
        let mut modules: Vec<IndexEntry> = Vec::new();
        for i in 0..n {
            let mut e = always(&format!("m{i}"), &[], &[]);
            for j in 0..i {
                match rng.next() % 12 {
                    0 => e.deps.push(format!("m{j}")),
                    1 => e.pre.push(format!("m{j}")),
                    _ => {}
                }
            }
            modules.push(e);
        }
        // A few post-softdeps: module i names a later module.
        for i in 0..n.saturating_sub(1) {
            if rng.next().is_multiple_of(5) {
                let later = format!("m{}", i + 1 + (rng.next() as usize % (n - i - 1)));
                let m = modules.get_mut(i).unwrap();
                if !m.post.contains(&later) {
                    m.post.push(later);
                }
            }
        }
        let index = ModuleIndex { kernel: "6.1.0".into(), modules, aliases: vec![] };
        parse_index(&write_index(&index).unwrap()).unwrap()
    }

    /// What a module must wait for: deps, pre-softdeps and modules naming it as post-softdep.
    fn waits_of(index: &ModuleIndex, name: &str) -> BTreeSet<String> {
        let e = index.modules.iter().find(|m| m.name == name).unwrap();
        let mut w: BTreeSet<String> = e.deps.iter().chain(&e.pre).cloned().collect();
        w.extend(index.modules.iter().filter(|m| m.post.iter().any(|p| p == name)).map(|m| m.name.clone()));
        w
    }

    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Event {
        Start(String),
        Finish(String),
    }

    /// An executor that finishes a random running attempt on each wait, and
    /// records what started and finished when. With `overlap`, a running
    /// module is visible to its dependents at once, and, as in the kernel, a
    /// load cannot finish while a hard dependency of it still runs, and fails
    /// if one failed.
    struct Simulated {
        rng: XorShift,
        running: Vec<(usize, String)>,
        events: Vec<Event>,
        max_running: usize,
        fail: BTreeSet<String>,
        overlap: bool,
        hard: BTreeMap<String, Vec<String>>,
        failed: BTreeSet<String>,
    }

    impl Simulated {
        fn new(seed: u64, fail: &[&str]) -> Self {
            Simulated {
                rng: XorShift(seed | 1),
                running: Vec::new(),
                events: Vec::new(),
                max_running: 0,
                fail: fail.iter().map(|s| s.to_string()).collect(),
                overlap: false,
                hard: BTreeMap::new(),
                failed: BTreeSet::new(),
            }
        }

        fn overlapping(seed: u64, fail: &[&str], index: &ModuleIndex) -> Self {
            let hard = index.modules.iter().map(|m| (m.name.clone(), m.deps.clone())).collect();
            Simulated { overlap: true, hard, ..Simulated::new(seed, fail) }
        }
    }

    impl Executor for Simulated {
        fn start(&mut self, i: usize, entry: &IndexEntry, _: bool) {
            self.events.push(Event::Start(entry.name.clone()));
            self.running.push((i, entry.name.clone()));
            self.max_running = self.max_running.max(self.running.len());
        }

        fn wait(&mut self) -> Option<(usize, Attempt, Duration)> {
            let deps_running = |name: &String| {
                self.hard.get(name).into_iter().flatten().any(|d| self.running.iter().any(|(_, r)| r == d))
            };
            let can: Vec<usize> = (0..self.running.len()).filter(|&k| !deps_running(&self.running[k].1)).collect();
            if can.is_empty() {
                return None;
            }
            let k = can[self.rng.next() as usize % can.len()];
            let (i, name) = self.running.swap_remove(k);
            self.events.push(Event::Finish(name.clone()));
            let dep_failed = self.hard.get(&name).into_iter().flatten().any(|d| self.failed.contains(d));
            let attempt = if self.fail.contains(&name) {
                Attempt::Failed(Errno::INVAL)
            } else if dep_failed {
                Attempt::Failed(Errno::NOENT)
            } else {
                Attempt::Loaded
            };
            if attempt != Attempt::Loaded {
                self.failed.insert(name);
            }
            Some((i, attempt, Duration::from_micros(10)))
        }

        fn overlaps(&self) -> bool {
            self.overlap
        }

        fn visible(&self, entry: &IndexEntry) -> bool {
            self.running.iter().any(|(_, r)| *r == entry.name)
        }

        /// Half the time, one has finished.
        fn poll(&mut self) -> Option<(usize, Attempt, Duration)> {
            if self.rng.next().is_multiple_of(2) {
                self.wait()
            } else {
                None
            }
        }
    }

    /// Also with overlapping loads: a module may then start while a hard
    /// dependency runs (never while a soft one does), and a dependent of a
    /// failure is reported skipped whether it waited or not.
    #[test]
    fn parallel_loading_never_starts_a_module_before_what_it_waits_for() {
        let mut overlapped = 0;
        for seed in 1..=400u64 {
            let index = random_index(seed.wrapping_mul(0x2545_f491_4f6c_dd1d), 40);
            let fail = format!("m{}", seed % 7);
            let overlap = seed % 2 == 0;
            let sim =
                if overlap { Simulated::overlapping(seed, &[&fail], &index) } else { Simulated::new(seed, &[&fail]) };
            let mut auto = Autoloader::with_executor(index.clone(), sim, 4);
            assert_eq!(auto.load_everything(), 40);
            let (sim, report) = (&auto.exec, auto.report());
            let skipped: BTreeSet<&str> = report.skipped.iter().map(|s| s.name.as_str()).collect();
            let mut finished = BTreeSet::new();
            let mut started = BTreeSet::new();
            let mut early = 0;
            for ev in &sim.events {
                match ev {
                    Event::Start(n) => {
                        assert!(started.insert(n.clone()), "seed {seed}: {n} started twice");
                        let hard = &index.modules.iter().find(|m| &m.name == n).unwrap().deps;
                        for w in waits_of(&index, n) {
                            let running = started.contains(&w) && !finished.contains(&w);
                            if overlap && running && hard.contains(&w) {
                                early += 1;
                                continue;
                            }
                            // A skipped module never starts: waiting for it is over at once.
                            assert!(
                                finished.contains(&w) || skipped.contains(w.as_str()),
                                "seed {seed}: {n} started before {w} finished"
                            );
                        }
                    }
                    Event::Finish(n) => {
                        finished.insert(n.clone());
                    }
                }
            }
            assert!(overlap || early == 0);
            overlapped += early;
            assert!(sim.max_running <= 4, "seed {seed}");
            // Every module is accounted for once; exactly the dependents of the failure are skipped.
            let total = report.loaded.len() + report.failed.len() + report.skipped.len();
            assert_eq!(total, index.modules.len(), "seed {seed}");
            for m in &index.modules {
                let bad_dep = m.deps.iter().any(|d| *d == fail || skipped.contains(d.as_str()));
                assert_eq!(bad_dep, skipped.contains(m.name.as_str()), "seed {seed}: {}", m.name);
                // Only an overlapping load may have started what ends skipped.
                let skip = skipped.contains(m.name.as_str());
                assert!(started.contains(&m.name) || skip, "seed {seed}: {}", m.name);
                assert!(overlap || !(skip && started.contains(&m.name)), "seed {seed}: {}", m.name);
            }
            // The report is in index order whatever the completion order.
            let loaded: Vec<&String> = report.loaded.iter().map(|(n, _)| n).collect();
            let mut sorted = loaded.clone();
            sorted.sort_by_key(|n| index.modules.iter().position(|m| &m.name == *n));
            assert_eq!(loaded, sorted);
        }
        assert!(overlapped > 100, "modules started while hard dependencies ran: {overlapped}");
    }

    #[test]
    fn independent_modules_run_concurrently_up_to_the_pool_size() {
        let modules = (0..8).map(|i| always(&format!("m{i}"), &[], &[])).collect();
        let index = ModuleIndex { kernel: "6.1.0".into(), modules, aliases: vec![] };
        let mut auto = Autoloader::with_executor(index, Simulated::new(7, &[]), 3);
        auto.load_everything();
        assert_eq!(auto.report().loaded.len(), 8);
        assert_eq!(auto.exec.max_running, 3);
        // A chain never runs two at once.
        let chain = (0..5).map(|i| {
            if i == 0 {
                always("c0", &[], &[])
            } else {
                always(&format!("c{i}"), &[&format!("c{}", i - 1)], &[])
            }
        });
        let index = ModuleIndex { kernel: "6.1.0".into(), modules: chain.collect(), aliases: vec![] };
        let mut auto = Autoloader::with_executor(index, Simulated::new(7, &[]), 4);
        auto.load_everything();
        assert_eq!(auto.exec.max_running, 1);
        assert!((1..=MAX_WORKERS).contains(&default_workers()));
        // Two per CPU, at most 4.
        assert_eq!([0, 1, 2, 3, 8].map(workers_for), [2, 2, 4, 4, 4]);
    }

    #[test]
    fn schedule_is_pure_and_cascades_skips() {
        let index = machine();
        let graph = Graph::new(&index);
        let names: Vec<&str> = index.modules.iter().map(|m| m.name.as_str()).collect();
        let pos = |n: &str| graph.pos[n];
        let mut s = Schedule::new(index.modules.len());
        // Asking for sd_mod brings scsi_mod and scsi_common, nothing else.
        let set = graph.closure(vec![pos("sd_mod")], &[], &[]);
        assert_eq!(set, [pos("scsi_mod"), pos("scsi_common"), pos("sd_mod")].into_iter().collect());
        assert_eq!(s.queue(&set), 3);
        assert_eq!(s.queue(&set), 0, "queued once");
        assert_eq!(s.next(&graph, &names, &BTreeSet::new(), None), Next::Start(pos("scsi_mod")));
        assert_eq!(s.next(&graph, &names, &BTreeSet::new(), None), Next::Start(pos("scsi_common")));
        assert_eq!(s.next(&graph, &names, &BTreeSet::new(), None), Next::Wait, "sd_mod waits for both");
        s.finish(pos("scsi_mod"), Attempt::Failed(Errno::INVAL), Duration::ZERO);
        assert_eq!(s.next(&graph, &names, &BTreeSet::new(), None), Next::Wait);
        s.finish(pos("scsi_common"), Attempt::Loaded, Duration::ZERO);
        assert_eq!(s.next(&graph, &names, &BTreeSet::new(), None), Next::Finished);
        assert_eq!(s.done(pos("sd_mod")), Some(&Done::Skipped("scsi_mod".into())));
        // virtio_blk brings its post-softdep, which waits for it.
        let set = graph.closure(vec![pos("virtio_blk")], &[], &[]);
        assert!(set.contains(&pos("blk_helper")) && set.contains(&pos("virtio_ring")));
        s.queue(&set);
        assert_eq!(s.next(&graph, &names, &BTreeSet::new(), None), Next::Start(pos("virtio_ring")));
        assert_eq!(s.next(&graph, &names, &BTreeSet::new(), None), Next::Wait);
        s.finish(pos("virtio_ring"), Attempt::Loaded, Duration::ZERO);
        assert_eq!(s.next(&graph, &names, &BTreeSet::new(), None), Next::Start(pos("virtio")));
        s.finish(pos("virtio"), Attempt::Loaded, Duration::ZERO);
        assert_eq!(s.next(&graph, &names, &BTreeSet::new(), None), Next::Start(pos("virtio_blk")));
        assert_eq!(s.next(&graph, &names, &BTreeSet::new(), None), Next::Wait, "blk_helper waits for virtio_blk");
        s.finish(pos("virtio_blk"), Attempt::Loaded, Duration::ZERO);
        assert_eq!(s.next(&graph, &names, &BTreeSet::new(), None), Next::Start(pos("blk_helper")));

        // Overlapping loads: a module may start while its hard dependencies
        // run, once they are visible; never while a soft one runs.
        let none = BTreeSet::new();
        let mut s = Schedule::new(index.modules.len());
        s.queue(&graph.closure(vec![pos("virtio_pci"), pos("btrfs")], &[], &[]));
        assert_eq!(s.next(&graph, &names, &none, Some(&|_| false)), Next::Start(pos("crc32c_generic")));
        assert_eq!(s.next(&graph, &names, &none, Some(&|_| false)), Next::Start(pos("libcrc32c")));
        assert_eq!(s.next(&graph, &names, &none, Some(&|_| true)), Next::Start(pos("virtio_ring")));
        assert_eq!(
            s.next(&graph, &names, &none, Some(&|_| false)),
            Next::Soon,
            "virtio: virtio_ring runs, not visible"
        );
        let ring = pos("virtio_ring");
        assert_eq!(s.next(&graph, &names, &none, Some(&|w| w == ring)), Next::Start(pos("virtio")));
        assert_eq!(s.next(&graph, &names, &none, Some(&|w| w == ring)), Next::Soon, "virtio_pci: virtio not visible");
        assert_eq!(s.next(&graph, &names, &none, Some(&|_| true)), Next::Start(pos("virtio_pci")));
        // btrfs needs libcrc32c (hard, visible) and crc32c_generic (soft): it waits.
        assert_eq!(s.next(&graph, &names, &none, Some(&|_| true)), Next::Wait);
        s.finish(pos("crc32c_generic"), Attempt::Loaded, Duration::ZERO);
        assert_eq!(s.next(&graph, &names, &none, Some(&|_| true)), Next::Start(pos("btrfs")));
        // virtio_ring fails: what started on it is skipped for it, not failed.
        s.finish(ring, Attempt::Failed(Errno::INVAL), Duration::ZERO);
        let hard = |m: &str| graph.hard[pos(m)].clone();
        s.finish_after(pos("virtio"), Attempt::Failed(Errno::NOENT), Duration::ZERO, &hard("virtio"), &names);
        assert_eq!(s.done(pos("virtio")), Some(&Done::Skipped("virtio_ring".into())));
        s.finish_after(pos("virtio_pci"), Attempt::Failed(Errno::NOENT), Duration::ZERO, &hard("virtio_pci"), &names);
        assert!(matches!(s.done(pos("virtio_pci")), Some(Done::Skipped(_))));
        s.finish_after(pos("libcrc32c"), Attempt::Loaded, Duration::ZERO, &hard("libcrc32c"), &names);
        s.finish_after(pos("btrfs"), Attempt::Loaded, Duration::ZERO, &hard("btrfs"), &names);
        assert_eq!(s.done(pos("btrfs")), Some(&Done::Loaded(Duration::ZERO)));
        assert_eq!(s.next(&graph, &names, &none, Some(&|_| true)), Next::Finished);
    }
}
