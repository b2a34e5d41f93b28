//! The watchers of a running boot: each is a small state machine that looks at the
//! clock and the serial console so far and says whether to end the VM now or how soon
//! to look again ([`Watcher`]). [`watch`] is the short loop that runs them until QEMU
//! exits or one of them ends it. The timeout ([`Timeout`]), the power cut at a console
//! line ([`CutWatch`]) and the hotplug of disks at console lines ([`HotplugWatch`]) are
//! pure but for the QMP socket the hotplugs talk to.

use std::path::PathBuf;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use super::console::Live;
use super::qmp::Qmp;
use crate::{Hotplug, HotplugDone, KillAfter, PowerCut};

/// How often the loop looks when no watcher is in a hurry.
const TICK: Duration = Duration::from_millis(50);
/// How often a pending power cut looks: the interesting moments are milliseconds apart.
const CUT_TICK: Duration = Duration::from_millis(1);

/// What a watcher wants, after one look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Look again within this long.
    Wait(Duration),
    /// End the VM now (SIGKILL QEMU).
    Kill,
}

/// One thing to watch during a boot.
pub(crate) trait Watcher {
    /// Looks once at the console so far (`started`: QEMU's start).
    fn check(&mut self, console: &Live, started: Instant) -> Verdict;
}

/// Runs the watchers until QEMU exits (its status) or one of them says
/// [`Verdict::Kill`] (QEMU is killed and reaped; None if it could not be).
pub(crate) fn watch(
    child: &mut Child,
    console: &Live,
    started: Instant,
    watchers: &mut [&mut dyn Watcher],
) -> Option<ExitStatus> {
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Some(s),
            Err(_) => return None,
            Ok(None) => {}
        }
        let mut sleep = TICK;
        for w in watchers.iter_mut() {
            match w.check(console, started) {
                Verdict::Kill => {
                    let _ = child.kill();
                    return child.wait().ok();
                }
                Verdict::Wait(d) => sleep = sleep.min(d),
            }
        }
        std::thread::sleep(sleep);
    }
}

/// Ends the VM once it has run for `limit`.
pub(crate) struct Timeout {
    pub limit: Duration,
    /// It ended the VM.
    pub fired: bool,
}

impl Watcher for Timeout {
    fn check(&mut self, _: &Live, started: Instant) -> Verdict {
        if started.elapsed() >= self.limit {
            self.fired = true;
            Verdict::Kill
        } else {
            Verdict::Wait(TICK)
        }
    }
}

/// Cuts the power for a [`KillAfter`]: `delay` after its needle first shows on the
/// console, or at once when its deadline line shows first.
pub(crate) struct CutWatch {
    kill: KillAfter,
    /// How far the needle and the deadline searches got.
    needle_scan: usize,
    deadline_scan: usize,
    /// When the harness saw the needle.
    seen: Option<Instant>,
    /// The cut, once made.
    pub cut: Option<PowerCut>,
}

impl CutWatch {
    pub(crate) fn new(kill: KillAfter) -> CutWatch {
        CutWatch { kill, needle_scan: 0, deadline_scan: 0, seen: None, cut: None }
    }
}

impl Watcher for CutWatch {
    fn check(&mut self, console: &Live, started: Instant) -> Verdict {
        if self.cut.is_some() {
            return Verdict::Wait(TICK);
        }
        let k = &self.kill;
        if self.seen.is_none() && console.find_from(k.needle.as_bytes(), &mut self.needle_scan) {
            self.seen = Some(Instant::now());
        }
        let by_deadline = self.seen.is_none_or(|t| t.elapsed() < k.delay)
            && k.deadline.as_ref().is_some_and(|d| console.find_from(d.as_bytes(), &mut self.deadline_scan));
        if by_deadline || self.seen.is_some_and(|t| t.elapsed() >= k.delay) {
            let after_needle = if by_deadline { None } else { self.seen.map(|t| t.elapsed()) };
            self.cut = Some(PowerCut { at: started.elapsed(), after_needle });
            Verdict::Kill
        } else {
            Verdict::Wait(CUT_TICK)
        }
    }
}

/// Plugs disks in through QMP, each `delay` after its line shows on the console.
pub(crate) struct HotplugWatch {
    qmp_path: PathBuf,
    qmp: Option<Qmp>,
    /// Not plugged in yet: (index in the spec, the hotplug, when its clock started).
    pub pending: Vec<(usize, Hotplug, Option<Instant>)>,
    pub done: Vec<HotplugDone>,
    /// When to look next (it looks at most every [`TICK`]).
    next: Option<Instant>,
}

impl HotplugWatch {
    pub(crate) fn new(hotplugs: &[Hotplug], qmp_path: PathBuf) -> HotplugWatch {
        HotplugWatch {
            qmp_path,
            qmp: None,
            pending: hotplugs.iter().cloned().enumerate().map(|(i, h)| (i, h, None)).collect(),
            done: Vec::new(),
            next: None,
        }
    }

    /// Closes the QMP connection.
    pub(crate) fn close(&mut self) {
        drop(self.qmp.take());
    }

    /// Does what is due, given the serial output so far. Panics if QEMU refuses.
    fn step(&mut self, serial: &[u8], started: Instant) {
        let now = Instant::now();
        let mut due = Vec::new();
        for (idx, (i, h, clock)) in self.pending.iter_mut().enumerate() {
            if clock.is_none() {
                let seen = match &h.after {
                    None => true,
                    Some(needle) => !needle.is_empty() && serial.windows(needle.len()).any(|w| w == needle.as_bytes()),
                };
                if seen {
                    *clock = Some(now);
                }
            }
            if clock.is_some_and(|c| now.duration_since(c) >= h.delay) {
                due.push((idx, *i));
            }
        }
        for (idx, i) in due.iter().rev() {
            let (_, h, _) = self.pending.remove(*idx);
            if self.qmp.is_none() {
                self.qmp = Some(Qmp::connect(&self.qmp_path).unwrap_or_else(|e| panic!("QMP: {e}")));
            }
            let id = format!("hotplug{i}");
            if let Some(q) = self.qmp.as_mut() {
                q.hotplug(&id, &h.disk).unwrap_or_else(|e| panic!("hotplugging {}: {e}", h.disk.path.display()));
            }
            self.done.push(HotplugDone { id, at: started.elapsed() });
        }
    }
}

impl Watcher for HotplugWatch {
    fn check(&mut self, console: &Live, started: Instant) -> Verdict {
        let now = Instant::now();
        if self.pending.is_empty() {
            return Verdict::Wait(TICK);
        }
        if let Some(next) = self.next.filter(|n| *n > now) {
            return Verdict::Wait(next - now);
        }
        self.next = Some(now + TICK);
        self.step(&console.snapshot(), started);
        Verdict::Wait(TICK)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(text: &str) -> Live {
        let l = Live::default();
        l.push(text.as_bytes());
        l
    }

    fn kill(needle: &str, delay_ms: u64, deadline: Option<&str>) -> KillAfter {
        KillAfter { needle: needle.into(), delay: Duration::from_millis(delay_ms), deadline: deadline.map(Into::into) }
    }

    #[test]
    fn the_timeout_fires_at_its_limit_only() {
        let started = Instant::now();
        let mut t = Timeout { limit: Duration::from_secs(3600), fired: false };
        assert_eq!(t.check(&Live::default(), started), Verdict::Wait(TICK));
        assert!(!t.fired);
        let mut t = Timeout { limit: Duration::ZERO, fired: false };
        assert_eq!(t.check(&Live::default(), started), Verdict::Kill);
        assert!(t.fired);
    }

    #[test]
    fn a_cut_waits_for_its_needle_then_its_delay() {
        let started = Instant::now();
        let console = live("booting\n");
        let mut w = CutWatch::new(kill("dockroot: image ", 0, Some("dockroot: ready:")));
        assert_eq!(w.check(&console, started), Verdict::Wait(CUT_TICK));
        assert!(w.cut.is_none());
        console.push(b"dockroot: ima");
        assert_eq!(w.check(&console, started), Verdict::Wait(CUT_TICK), "half a needle");
        console.push(b"ge x is sha256:0\n");
        assert_eq!(w.check(&console, started), Verdict::Kill, "the needle split across two reads");
        assert!(w.cut.as_ref().is_some_and(|c| c.after_needle.is_some()));
        // Cut once: afterwards it only waits.
        assert_eq!(w.check(&console, started), Verdict::Wait(TICK));

        let mut w = CutWatch::new(kill("dockroot: image ", 3_600_000, None));
        assert_eq!(w.check(&console, started), Verdict::Wait(CUT_TICK), "seen, the delay runs");
        assert!(w.seen.is_some());
    }

    #[test]
    fn the_deadline_cuts_before_the_delay_runs_out() {
        let started = Instant::now();
        let console = live("dockroot: image x\ndockroot: ready: 10 ms\n");
        let mut w = CutWatch::new(kill("dockroot: image ", 3_600_000, Some("dockroot: ready:")));
        assert_eq!(w.check(&console, started), Verdict::Kill);
        assert!(w.cut.as_ref().is_some_and(|c| c.after_needle.is_none()), "cut by the deadline");
        // A deadline alone (the needle never shows) cuts too.
        let console = live("dockroot: ready: 10 ms\n");
        let mut w = CutWatch::new(kill("never printed", 0, Some("dockroot: ready:")));
        assert_eq!(w.check(&console, started), Verdict::Kill);
    }

    #[test]
    fn hotplugs_without_a_line_or_pending_do_nothing_but_wait() {
        let mut w = HotplugWatch::new(&[], PathBuf::from("/nonexistent"));
        assert_eq!(w.check(&Live::default(), Instant::now()), Verdict::Wait(TICK));
        assert!(w.done.is_empty());
    }
}
