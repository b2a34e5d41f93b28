//! Power cuts (the crash tests): where to cut ([`CutAt`], timed from a reference
//! boot's serial log: pure), which points a run takes (`DOCKROOT_CRASH_POINTS`), the
//! roots found on the disk after a cut ([`roots`]) and the engine that cuts, boots
//! again and checks the recovery ([`engine`]).

use std::time::Duration;

use crate::qemu::console::RUN_INIT_LINE;
use crate::{printk_time, BootOutput, KillAfter, LINE_READY, LINE_ROOT_DEVICE};

pub mod engine;
pub mod roots;

/// Where to cut the power during a boot (the crash tests), timed from the serial log
/// of a normal boot of the same disk (the reference). Every point cuts no later than
/// dockroot's [`LINE_READY`] (the deadline of its [`KillAfter`]), so a cut always comes
/// while the init is at work, whatever the machine's speed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum CutAt {
    /// A fraction of the way from the kernel starting /init to dockroot's "ready" line.
    Window(f64),
    /// A fraction of the way from dockroot finding the root device to its "ready" line.
    Work(f64),
    /// This many milliseconds after a line containing the needle; the reference boot
    /// must have printed it (a point whose line the scenario never prints cannot cut).
    Line(&'static str, u64),
}

impl CutAt {
    /// The kill for this point, timed from `reference` (a normal boot's serial log).
    /// Panics if the reference lacks a line the point is timed from.
    pub fn kill(&self, reference: &BootOutput) -> KillAfter {
        let t = |needle: &str| {
            printk_time(&reference.serial, needle).unwrap_or_else(|| {
                panic!("cut point {self:?}: no {needle:?} line in the reference boot {}", reference.log_path.display())
            })
        };
        let secs = |s: f64| Duration::from_secs_f64(s.max(0.0));
        let (needle, delay) = match *self {
            CutAt::Window(f) => (RUN_INIT_LINE, secs(f * (t(LINE_READY) - t(RUN_INIT_LINE)))),
            CutAt::Work(f) => (LINE_ROOT_DEVICE, secs(f * (t(LINE_READY) - t(LINE_ROOT_DEVICE)))),
            CutAt::Line(needle, ms) => {
                t(needle);
                (needle, Duration::from_millis(ms))
            }
        };
        KillAfter { needle: needle.into(), delay, deadline: Some(LINE_READY.into()) }
    }
}

/// The first `DOCKROOT_CRASH_POINTS` of `all` (a number, or `all`, the default).
/// Panics if two points are the same.
pub fn cut_points(all: &[CutAt]) -> Vec<CutAt> {
    for (i, a) in all.iter().enumerate() {
        assert!(!all[..i].contains(a), "cut point {a:?} is listed twice");
    }
    let n = match std::env::var("DOCKROOT_CRASH_POINTS") {
        Err(_) => all.len(),
        Ok(v) if v == "all" => all.len(),
        Ok(v) => v.parse().unwrap_or_else(|_| panic!("DOCKROOT_CRASH_POINTS={v}: a number or 'all'")),
    };
    all.iter().copied().take(n.max(1)).collect()
}

/// Whether `DOCKROOT_CRASH_POINTS` asks for every point (`all`, or unset).
pub fn all_cut_points() -> bool {
    std::env::var("DOCKROOT_CRASH_POINTS").map_or(true, |v| v == "all")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{PowerCut, TESTINIT_MARKER};
    use std::path::PathBuf;

    fn output(serial: &str, cut: Option<PowerCut>) -> BootOutput {
        BootOutput {
            serial: serial.into(),
            status: None,
            timed_out: false,
            elapsed: Duration::ZERO,
            log_path: PathBuf::new(),
            hotplugged: Vec::new(),
            cut,
        }
    }

    const INIT_LOG: &str = "[    1.000000] Run /init as init process\n[    2.000000] dockroot: found LABEL=x\n\
        [    2.250000] dockroot: image x is sha256:0\n[    3.000000] dockroot: ready: 2000ms in all\n";

    #[test]
    fn cut_points_are_timed_from_the_reference_and_end_at_ready() {
        let reference = output(INIT_LOG, None);
        let k = CutAt::Window(0.5).kill(&reference);
        assert_eq!((k.needle.as_str(), k.delay), (RUN_INIT_LINE, Duration::from_secs(1)));
        assert_eq!(k.deadline.as_deref(), Some(LINE_READY));
        let k = CutAt::Work(0.5).kill(&reference);
        assert_eq!((k.needle.as_str(), k.delay), (LINE_ROOT_DEVICE, Duration::from_millis(500)));
        let k = CutAt::Line("dockroot: image ", 7).kill(&reference);
        assert_eq!((k.needle.as_str(), k.delay), ("dockroot: image ", Duration::from_millis(7)));
        assert_eq!(k.deadline.as_deref(), Some(LINE_READY));
        // A line the scenario never prints cannot cut: refused up front.
        let never = std::panic::catch_unwind(|| CutAt::Line("dockroot: never printed", 0).kill(&reference));
        assert!(never.is_err());
    }

    #[test]
    fn a_cut_counts_only_before_the_handover() {
        let cut = PowerCut { at: Duration::from_secs(3), after_needle: Some(Duration::from_millis(2)) };
        let during = output(INIT_LOG, Some(cut.clone()));
        assert_eq!(during.expect_cut_during_init().at, Duration::from_secs(3));
        let kill = KillAfter { needle: "dockroot: image ".into(), delay: Duration::ZERO, deadline: None };
        let t = during.cut_guest_time(&kill).expect("a guest time");
        assert!((t - 2.252).abs() < 1e-9, "{t}");
        for late in [format!("{INIT_LOG}dockroot: starting /sbin/init\n"), format!("{INIT_LOG}{TESTINIT_MARKER}{{}}\n")]
        {
            let after = output(&late, Some(cut.clone()));
            assert!(std::panic::catch_unwind(|| after.expect_cut_during_init().at).is_err(), "{late}");
        }
        let never = output(INIT_LOG, None);
        assert!(std::panic::catch_unwind(|| never.expect_cut_during_init().at).is_err());
    }

    #[test]
    fn cut_points_refuse_duplicates() {
        let points = [CutAt::Work(0.5), CutAt::Line("x", 1), CutAt::Work(0.5)];
        assert!(std::panic::catch_unwind(|| cut_points(&points)).is_err());
    }
}
