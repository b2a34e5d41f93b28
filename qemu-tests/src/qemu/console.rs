//! The serial console of a boot: the threads that capture QEMU's output (into the
//! log file, and into a live buffer the watchers search), and what a finished boot
//! printed ([`BootOutput`]: pure parsing of printk times and testinit's report).

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::Value;

use crate::{HotplugDone, KillAfter, PowerCut};

/// The marker `testinit` puts before its JSON report.
pub const TESTINIT_MARKER: &str = "DOCKROOT-TESTINIT ";

/// The kernel's line when it starts the initramfs' init.
pub(crate) const RUN_INIT_LINE: &str = "Run /init as init process";

/// dockroot's line when it has found the root device.
pub const LINE_ROOT_DEVICE: &str = "dockroot: found ";
/// dockroot's last line before switching root.
pub const LINE_READY: &str = "dockroot: ready:";
/// dockroot's line when it hands over to the image's init (after switching root).
pub const LINE_HANDOVER: &str = "dockroot: starting /";

/// The serial output so far, for the watchers (filled only when a boot has watchers
/// that read it).
#[derive(Clone, Default)]
pub(crate) struct Live(Arc<Mutex<Vec<u8>>>);

impl Live {
    /// Everything so far.
    pub(crate) fn snapshot(&self) -> Vec<u8> {
        self.0.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// Appends what the console printed.
    pub(crate) fn push(&self, chunk: &[u8]) {
        if let Ok(mut v) = self.0.lock() {
            v.extend_from_slice(chunk);
        }
    }

    /// Whether `needle` is in the output from `*scan` on (moving `*scan` past what was
    /// searched, keeping a needle's length for a split line).
    pub(crate) fn find_from(&self, needle: &[u8], scan: &mut usize) -> bool {
        let serial = self.0.lock().map(|v| v.get(*scan..).unwrap_or_default().to_vec()).unwrap_or_default();
        let found = !needle.is_empty() && serial.windows(needle.len()).any(|w| w == needle);
        if !found {
            *scan += serial.len().saturating_sub(needle.len());
        }
        found
    }
}

/// QEMU's stdout (the serial console) and stderr, each copied by a thread of its own
/// into the log file; stdout also into the [`Live`] buffer.
pub(crate) struct Capture {
    log: Arc<Mutex<fs::File>>,
    stdout: JoinHandle<Vec<u8>>,
    stderr: JoinHandle<Vec<u8>>,
    pub live: Live,
}

impl Capture {
    /// Creates the log at `log_path` with `header` as its first line and starts
    /// copying; `live`: also into the live buffer.
    pub(crate) fn start(child: &mut Child, log_path: &Path, header: &str, live: bool) -> Capture {
        let log = Arc::new(Mutex::new(
            fs::File::create(log_path).unwrap_or_else(|e| panic!("creating {}: {e}", log_path.display())),
        ));
        if let Ok(mut l) = log.lock() {
            let _ = writeln!(l, "{header}");
        }
        let buffer = Live::default();
        let out: Box<dyn Read + Send> = Box::new(child.stdout.take().expect("piped stdout"));
        let err: Box<dyn Read + Send> = Box::new(child.stderr.take().expect("piped stderr"));
        let stdout = copier(out, log.clone(), live.then(|| buffer.clone()));
        let stderr = copier(err, log.clone(), None);
        Capture { log, stdout, stderr, live: buffer }
    }

    /// Appends `line` to the log file.
    pub(crate) fn log(&self, line: &str) {
        if let Ok(mut l) = self.log.lock() {
            let _ = l.write_all(line.as_bytes());
        }
    }

    /// Waits for QEMU's pipes to close: the serial output, then QEMU's stderr after
    /// a `# qemu stderr:` line, without carriage returns.
    pub(crate) fn finish(&mut self) -> String {
        let take = |h: &mut JoinHandle<Vec<u8>>| std::mem::replace(h, std::thread::spawn(Vec::new));
        let out = take(&mut self.stdout).join().unwrap_or_default();
        let err = take(&mut self.stderr).join().unwrap_or_default();
        let mut serial = String::from_utf8_lossy(&out).into_owned();
        if !err.is_empty() {
            serial.push_str("\n# qemu stderr:\n");
            serial.push_str(&String::from_utf8_lossy(&err));
        }
        serial.replace('\r', "")
    }
}

/// A thread copying `pipe` into the log (and `live`) until it closes; it returns all it read.
fn copier(mut pipe: Box<dyn Read + Send>, log: Arc<Mutex<fs::File>>, live: Option<Live>) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let chunk = &buf[..n];
                    all.extend_from_slice(chunk);
                    if let Ok(mut l) = log.lock() {
                        let _ = l.write_all(chunk);
                    }
                    if let Some(l) = live.as_ref() {
                        l.push(chunk);
                    }
                }
            }
        }
        all
    })
}

/// What a boot printed and how it ended.
#[derive(Debug, Clone)]
pub struct BootOutput {
    /// Everything on the serial console (QEMU's stdout), then QEMU's stderr.
    pub serial: String,
    /// QEMU's exit status (None if it had to be killed and could not be reaped).
    pub status: Option<ExitStatus>,
    /// The VM was killed at the timeout.
    pub timed_out: bool,
    /// Wall time from QEMU's start to its exit.
    pub elapsed: Duration,
    /// Where the serial log was saved.
    pub log_path: PathBuf,
    /// The hotplugs done, in order (see [`BootSpec::hotplug`]).
    pub hotplugged: Vec<HotplugDone>,
    /// When and how the harness SIGKILLed QEMU for [`BootSpec::kill_after`] (None:
    /// not killed that way: the needle and the deadline never showed).
    pub cut: Option<PowerCut>,
}

/// The timestamp of the first printk line containing `needle`, in seconds.
pub fn printk_time(serial: &str, needle: &str) -> Option<f64> {
    serial.lines().find(|l| l.contains(needle)).and_then(|l| {
        let start = l.find('[')?;
        let rest = l.get(start + 1..)?;
        let end = rest.find(']')?;
        rest.get(..end)?.trim().parse().ok()
    })
}

/// The first `DOCKROOT-TESTINIT {json}` report in `serial` that parses.
pub fn parse_testinit(serial: &str) -> Option<Value> {
    serial.lines().find_map(|line| {
        let at = line.find(TESTINIT_MARKER)?;
        let json = line.get(at + TESTINIT_MARKER.len()..)?.trim_end_matches(['\r', '\n']);
        serde_json::from_str(json).ok()
    })
}

impl BootOutput {
    /// testinit's report, if the boot reached it.
    pub fn testinit(&self) -> Option<Value> {
        parse_testinit(&self.serial)
    }

    /// testinit's report; panics with the end of the serial log if there is none.
    pub fn expect_testinit(&self) -> Value {
        self.testinit().unwrap_or_else(|| {
            panic!(
                "the boot did not reach testinit (timed out: {}, status: {:?}); log {}; last serial lines:\n{}",
                self.timed_out,
                self.status,
                self.log_path.display(),
                self.tail(60)
            )
        })
    }

    /// The last `n` lines of the serial output.
    pub fn tail(&self, n: usize) -> String {
        let lines: Vec<&str> = self.serial.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Seconds since boot when the kernel started the initramfs' `/init`.
    pub fn kernel_to_init(&self) -> Option<f64> {
        printk_time(&self.serial, RUN_INIT_LINE)
    }

    /// Seconds from the kernel starting `/init` to testinit running (the time dockroot
    /// took), from the printk timestamp and testinit's own boot-clock reading.
    pub fn time_to_init(&self) -> Option<f64> {
        let start = self.kernel_to_init()?;
        let end = self.testinit()?.get("uptime_s")?.as_f64()?;
        Some(end - start)
    }

    /// Whether the serial output contains `needle`.
    pub fn contains(&self, needle: &str) -> bool {
        self.serial.contains(needle)
    }

    /// The power cut of [`BootSpec::kill_after`]; panics unless it came while the init
    /// was still at work: QEMU killed by the harness, and neither the init's handover
    /// line ([`LINE_HANDOVER`]) nor testinit's report on the console. Everything the
    /// guest printed before the kill is in the log, so the check errs on the safe side.
    pub fn expect_cut_during_init(&self) -> &PowerCut {
        let cut = self.cut.as_ref().unwrap_or_else(|| {
            panic!(
                "the power was never cut: the kill line never showed (timed out: {}); log {}; last serial lines:\n{}",
                self.timed_out,
                self.log_path.display(),
                self.tail(30)
            )
        });
        assert!(
            !self.contains(LINE_HANDOVER) && !self.contains(TESTINIT_MARKER),
            "the power was cut at {:.3} s wall, after the init handed over to the image's init; log {}; last serial lines:\n{}",
            cut.at.as_secs_f64(),
            self.log_path.display(),
            self.tail(30)
        );
        cut
    }

    /// The guest's clock (printk time, s) when the power was cut, estimated from the
    /// kill line's printk time and how long after seeing it the harness killed QEMU.
    pub fn cut_guest_time(&self, kill: &KillAfter) -> Option<f64> {
        let cut = self.cut.as_ref()?;
        match cut.after_needle {
            Some(d) => Some(printk_time(&self.serial, &kill.needle)? + d.as_secs_f64()),
            None => printk_time(&self.serial, kill.deadline.as_deref()?),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERIAL: &str = "[    0.000000] Linux version 6.1.0\r\n[    1.626165] Run /init as init process\r\n\
        junk DOCKROOT-TESTINIT {\"pid\":1,\"uptime_s\":2.5}\r\n[    2.6] reboot: Power down\r\n";

    #[test]
    fn parses_printk_times_and_the_report() {
        let s = SERIAL.replace('\r', "");
        assert_eq!(printk_time(&s, RUN_INIT_LINE), Some(1.626165));
        assert_eq!(printk_time(&s, "nothing like this"), None);
        let r = parse_testinit(&s).expect("report");
        assert_eq!(r["pid"], 1);
        let out = BootOutput {
            serial: s,
            status: None,
            timed_out: false,
            elapsed: Duration::ZERO,
            log_path: PathBuf::new(),
            hotplugged: Vec::new(),
            cut: None,
        };
        let t = out.time_to_init().expect("time to init");
        assert!((t - 0.873835).abs() < 1e-9, "{t}");
    }

    #[test]
    fn skips_a_truncated_report_and_takes_the_next() {
        let s = "DOCKROOT-TESTINIT {\"pid\":1,\"ar\nDOCKROOT-TESTINIT {\"pid\":7}\n";
        assert_eq!(parse_testinit(s).expect("report")["pid"], 7);
        assert!(parse_testinit("DOCKROOT-TESTINIT {broken\n").is_none());
    }
}
