//! Stage 1b: logging. Every message goes through the `log` facade to two places:
//! `/dev/kmsg`, so the booted system's dmesg and journal have the whole story,
//! and the console (stderr = /dev/console), as short human-readable lines.
//! Each line is also kept in memory (the first [`KEPT_MAX`] bytes, with the
//! time since boot) and [`keep`] writes them to a file just before the next
//! init starts (`/run/dockroot/boot.log`): the whole boot, even when the kernel
//! log has wrapped or the console was quiet. Pure: the lines, the buffer; thin:
//! the writes.

use std::fs::File;
use std::io::Write;
use std::sync::Mutex;

use log::{Level, LevelFilter, Log, Metadata, Record};

/// Prefix of every line dockroot prints.
pub const TAG: &str = "dockroot";
/// The kernel keeps a /dev/kmsg record to about 1 KiB; longer lines are split.
const KMSG_CHUNK: usize = 900;
const DEVKMSG_SYSCTL: &str = "/proc/sys/kernel/printk_devkmsg";
/// How much of the boot's log is kept for [`keep`].
pub const KEPT_MAX: usize = 256 << 10;

struct Logger {
    kmsg: Mutex<Option<Kmsg>>,
    console: Mutex<LevelFilter>,
    kept: Mutex<Kept>,
}

/// The boot's log lines, at most `max` bytes of them; the rest is counted.
pub struct Kept {
    text: String,
    max: usize,
    left_out: usize,
}

impl Kept {
    pub const fn new(max: usize) -> Self {
        Kept { text: String::new(), max, left_out: 0 }
    }

    /// Add one message (`uptime_us` since boot), one line per line of it.
    pub fn push(&mut self, uptime_us: u64, level: Level, msg: &str) {
        let line = format!("[{:5}.{:06}] {}", uptime_us / 1_000_000, uptime_us % 1_000_000, console_line(level, msg));
        if self.left_out == 0 && self.text.len().saturating_add(line.len()) <= self.max {
            self.text.push_str(&line);
        } else {
            self.left_out = self.left_out.saturating_add(1);
        }
    }

    /// The file's content: the lines, and what was left out if anything.
    pub fn contents(&self) -> String {
        let mut out = self.text.clone();
        if self.left_out > 0 {
            out.push_str(&format!(
                "[dockroot: {} more messages are not in this file: it keeps the first {} KiB of the log]\n",
                self.left_out,
                self.max >> 10
            ));
        }
        out
    }
}

/// Write the kept log to `path` (a temporary file, then renamed), creating its
/// directory. Failures are said on the console and the kernel log only.
pub fn keep(path: &str) {
    let text = LOGGER.kept.lock().map(|k| k.contents()).unwrap_or_default();
    let p = std::path::Path::new(path);
    let tmp = format!("{path}.tmp");
    let write = || -> std::io::Result<()> {
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&tmp, text.as_bytes())?;
        std::fs::rename(&tmp, p)
    };
    if let Err(e) = write() {
        log::warn!("could not keep the boot's log in {path}: {e}");
    }
}

/// /dev/kmsg and the kernel's console log level when it was opened: the
/// kernel itself echoes a record to the console when its level is below that.
struct Kmsg {
    file: File,
    console_loglevel: u8,
    /// Every record reaches the log (no rate limit), so the kernel's console
    /// echo can be relied on.
    echoed: bool,
}

static LOGGER: Logger =
    Logger { kmsg: Mutex::new(None), console: Mutex::new(LevelFilter::Info), kept: Mutex::new(Kept::new(KEPT_MAX)) };

/// Install the logger. Until [`attach_kmsg`] is called, messages go to the console only.
pub fn init() {
    // set_logger fails only if a logger is already installed: then ours is.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(LevelFilter::Debug);
}

/// Show debug messages on the console too (`dockroot.debug`).
pub fn set_console_debug(on: bool) {
    if let Ok(mut l) = LOGGER.console.lock() {
        *l = if on { LevelFilter::Debug } else { LevelFilter::Info };
    }
}

/// Start writing to /dev/kmsg (needs devtmpfs on /dev and proc on /proc).
/// Also lifts the kernel's rate limit on /dev/kmsg writes (10 lines per 5 s by
/// default) so no line is dropped; returns the setting to restore before
/// switch_root. If the limit cannot be lifted (`printk.devkmsg=` given on the
/// command line locks it), every line is also written to the console directly.
pub fn attach_kmsg() -> Option<String> {
    let old = std::fs::read_to_string(DEVKMSG_SYSCTL).ok().map(|s| s.trim().to_string());
    // The kernel wants the trailing newline, or it refuses the value.
    let lifted = match old.as_deref() {
        Some("on") => true,
        Some(_) => std::fs::write(DEVKMSG_SYSCTL, "on\n").is_ok(),
        None => false,
    };
    match std::fs::OpenOptions::new().write(true).open("/dev/kmsg") {
        Ok(file) => {
            let console_loglevel = std::fs::read_to_string("/proc/sys/kernel/printk")
                .ok()
                .and_then(|s| parse_console_loglevel(&s))
                .unwrap_or(0);
            if let Ok(mut k) = LOGGER.kmsg.lock() {
                *k = Some(Kmsg { file, console_loglevel, echoed: lifted });
            }
        }
        Err(e) => log::warn!("cannot open /dev/kmsg, logging to the console only: {e}"),
    }
    if !lifted {
        log::warn!("cannot lift the /dev/kmsg rate limit: the kernel log may miss lines; the console has them all");
    }
    old.filter(|o| lifted && o != "on")
}

/// Restore the /dev/kmsg rate limit setting saved by [`attach_kmsg`] and stop
/// writing to /dev/kmsg (its fd must not leak into the next init).
pub fn detach_kmsg(saved: Option<String>) {
    if let Some(old) = saved {
        if let Err(e) = std::fs::write(DEVKMSG_SYSCTL, format!("{old}\n")) {
            log::debug!("could not restore {DEVKMSG_SYSCTL} to {old}: {e}");
        }
    }
    if let Ok(mut k) = LOGGER.kmsg.lock() {
        *k = None;
    }
}

/// The first field of /proc/sys/kernel/printk: the console log level.
pub fn parse_console_loglevel(printk: &str) -> Option<u8> {
    printk.split_whitespace().next()?.parse().ok()
}

fn syslog_level(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

/// The text of a message with the level spelled out for warnings and errors.
fn text(level: Level, msg: &str) -> String {
    match level {
        Level::Error => format!("ERROR: {msg}"),
        Level::Warn => format!("WARNING: {msg}"),
        _ => msg.to_string(),
    }
}

/// The console form of a message: "dockroot: text".
pub fn console_line(level: Level, msg: &str) -> String {
    format!("{TAG}: {}\n", text(level, msg))
}

/// Whether to write a record to the console ourselves. Once /dev/kmsg is open
/// the kernel echoes records below its console log level (so `quiet` hides
/// progress lines as users expect); errors and warnings are written directly
/// when the kernel would not show them.
pub fn direct_to_console(level: Level, wanted: LevelFilter, kmsg_console_loglevel: Option<u8>) -> bool {
    if level > wanted {
        return false;
    }
    match kmsg_console_loglevel {
        None => true,
        Some(cl) => syslog_level(level) >= cl && (level <= Level::Warn || wanted >= LevelFilter::Debug),
    }
}

/// The /dev/kmsg records for a message: one per line of it, each at most
/// [`KMSG_CHUNK`] bytes, with the syslog priority prefix.
pub fn kmsg_records(level: Level, msg: &str) -> Vec<String> {
    let pri = syslog_level(level);
    let msg = text(level, msg);
    let mut out = Vec::new();
    for line in msg.lines().filter(|l| !l.trim().is_empty()) {
        let mut rest = line;
        while !rest.is_empty() {
            let mut cut = rest.len().min(KMSG_CHUNK);
            while !rest.is_char_boundary(cut) {
                cut -= 1;
            }
            let (head, tail) = rest.split_at(cut);
            out.push(format!("<{pri}>{TAG}: {head}\n"));
            rest = tail;
        }
    }
    out
}

/// Write `msg` as an error to /dev/kmsg and the console without the logger
/// (for the panic hook: the panic may have happened while the logger held its
/// locks). Each file is opened afresh; failures are ignored, there is nowhere
/// else to say anything.
pub fn emergency(msg: &str) {
    if let Ok(mut kmsg) = std::fs::OpenOptions::new().write(true).open("/dev/kmsg") {
        for rec in kmsg_records(Level::Error, msg) {
            let _ = kmsg.write_all(rec.as_bytes());
        }
    }
    let _ = std::io::stderr().write_all(console_line(Level::Error, msg).as_bytes());
}

impl Log for Logger {
    fn enabled(&self, _: &Metadata) -> bool {
        true
    }

    fn log(&self, record: &Record) {
        let msg = record.args().to_string();
        if let Ok(mut kept) = self.kept.lock() {
            kept.push(crate::switch_root::clock_us(libc::CLOCK_MONOTONIC), record.level(), &msg);
        }
        let wanted = self.console.lock().map(|l| *l).unwrap_or(LevelFilter::Info);
        let mut kmsg_level = None;
        if let Ok(mut guard) = self.kmsg.lock() {
            if let Some(kmsg) = guard.as_mut() {
                kmsg_level = kmsg.echoed.then_some(kmsg.console_loglevel);
                for rec in kmsg_records(record.level(), &msg) {
                    // A failed kmsg write loses nothing the console does not show.
                    let _ = kmsg.file.write_all(rec.as_bytes());
                }
            }
        }
        if direct_to_console(record.level(), wanted, kmsg_level) {
            // Nothing sensible to do if the console write fails.
            let _ = std::io::stderr().write_all(console_line(record.level(), &msg).as_bytes());
        }
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_lines() {
        assert_eq!(console_line(Level::Info, "found /dev/vda"), "dockroot: found /dev/vda\n");
        assert_eq!(console_line(Level::Error, "x"), "dockroot: ERROR: x\n");
        assert_eq!(console_line(Level::Warn, "y"), "dockroot: WARNING: y\n");
    }

    #[test]
    fn the_kept_log_is_bounded_and_says_so() {
        let mut k = Kept::new(90);
        k.push(1_234_567, Level::Info, "found /dev/vda");
        k.push(12_000_001, Level::Warn, "careful");
        assert_eq!(
            k.contents(),
            "[    1.234567] dockroot: found /dev/vda\n[   12.000001] dockroot: WARNING: careful\n"
        );
        k.push(13_000_000, Level::Info, "this line no longer fits in 90 bytes");
        k.push(14_000_000, Level::Info, "x"); // would fit, but the log stays a prefix
        let c = k.contents();
        assert!(
            c.starts_with("[    1.234567] dockroot: found /dev/vda\n[   12.000001] dockroot: WARNING: careful\n"),
            "{c}"
        );
        assert!(
            c.ends_with("[dockroot: 2 more messages are not in this file: it keeps the first 0 KiB of the log]\n"),
            "{c}"
        );
    }

    #[test]
    fn console_echo_rules() {
        assert_eq!(parse_console_loglevel("7\t4\t1\t7\n"), Some(7));
        assert_eq!(parse_console_loglevel(""), None);
        // Before /dev/kmsg is open, everything wanted goes to the console.
        assert!(direct_to_console(Level::Info, LevelFilter::Info, None));
        assert!(!direct_to_console(Level::Debug, LevelFilter::Info, None));
        // The kernel echoes levels below its console log level itself.
        assert!(!direct_to_console(Level::Info, LevelFilter::Info, Some(7)));
        assert!(!direct_to_console(Level::Error, LevelFilter::Info, Some(7)));
        // quiet (console log level 4): progress hidden, warnings and errors still shown.
        assert!(!direct_to_console(Level::Info, LevelFilter::Info, Some(4)));
        assert!(direct_to_console(Level::Warn, LevelFilter::Info, Some(4)));
        assert!(direct_to_console(Level::Error, LevelFilter::Info, Some(1)));
        // dockroot.debug: what the kernel would not echo is written directly.
        assert!(direct_to_console(Level::Debug, LevelFilter::Debug, Some(7)));
        assert!(!direct_to_console(Level::Info, LevelFilter::Debug, Some(7)));
    }

    #[test]
    fn kmsg_split_lines_and_long_records() {
        let recs = kmsg_records(Level::Error, "first\n\nsecond");
        assert_eq!(recs, vec!["<3>dockroot: ERROR: first\n", "<3>dockroot: second\n"]);
        let long = "é".repeat(1000); // 2000 bytes, multibyte boundaries
        let recs = kmsg_records(Level::Info, &long);
        assert_eq!(recs.len(), 3);
        assert!(recs.iter().all(|r| r.len() <= KMSG_CHUNK + 20 && r.starts_with("<6>dockroot: ")));
        let joined: String = recs.iter().map(|r| r.trim_start_matches("<6>dockroot: ").trim_end()).collect();
        assert_eq!(joined, long);
    }
}
