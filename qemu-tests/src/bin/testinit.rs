//! `testinit`: the booted image's `/sbin/init` in dockroot's boot tests.
//!
//! As PID 1 of the switched-to root it collects what the test needs to see (argv,
//! environment, the mount of `/`, the mounts of /dev /proc /sys /run, a list of paths
//! with their metadata and content, whether `/` is a btrfs subvolume, /proc/cmdline),
//! prints it as ONE line `DOCKROOT-TESTINIT {json}` to /dev/console and stdout, syncs
//! and powers off. It never panics: every failure becomes an entry of `"errors"`.
//!
//! The btrfs checks here are implemented independently of `dockroot::btrfs` on
//! purpose: the test oracle should not share code with what it checks.
//!
//! When started as systemd after an initramfs (`--switched-root --system --deserialize
//! FD`), it reports FD under `"deserialize"`: whether it is open, its content (read from
//! offset 0 as found), and both clocks now, so a test can check the initrd timestamp.
//! dockroot's kept log, /run/dockroot/boot.log, is reported whole under `"boot_log"`.
//!
//! Arguments (from the kernel command line after `--`):
//! - `--make-nested`: first write /var/tmp/from-previous-boot and create a nested btrfs
//!   subvolume at /var/lib/machines (the next boot must replace the rw layer and
//!   delete nested subvolumes).
//! - `--stat PATH`: also report PATH (in addition to /etc/testinit-paths).
//! - `--run "PROGRAM ARGS..."`: run PROGRAM with ARGS (split at spaces) after the rest
//!   is collected and report its exit status, stdout and stderr under `"runs"` (at most
//!   60 s; e.g. the `dockroot` commands the init left in /run/dockroot/).
//! - `--no-bless`: an image without systemd blesses its boot itself (README, boot
//!   counting), and so does this one when boot.json says the boot is on trial: it
//!   runs `/run/dockroot/dockroot bless` (reported under `"bless"`) before the
//!   `--run` commands, unless given this.

use std::ffi::OsString;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};

use serde_json::{json, Map, Value};

/// The marker every report line starts with.
const MARKER: &str = "DOCKROOT-TESTINIT";
const BTRFS_SUPER_MAGIC: i64 = 0x9123_683e;
/// The inode number of every btrfs subvolume's root directory.
const BTRFS_FIRST_FREE_OBJECTID: u64 = 256;
/// _IOW(0x94, 14, struct btrfs_ioctl_vol_args), 4096 bytes.
const BTRFS_IOC_SUBVOL_CREATE: libc::c_ulong = 0x5000_940e;
/// _IOWR(0x94, 18, struct btrfs_ioctl_ino_lookup_args), 4096 bytes.
const BTRFS_IOC_INO_LOOKUP: libc::c_ulong = 0xd000_9412;
/// How many bytes of a regular file's content the report carries.
const CONTENT_BYTES: u64 = 200;
/// Cap on the files this program reads whole (mountinfo, cmdline, the path list).
const READ_CAP: u64 = 1 << 20;

#[repr(C)]
struct BtrfsVolArgs {
    fd: i64,
    name: [u8; 4088],
}

#[repr(C)]
struct BtrfsInoLookupArgs {
    treeid: u64,
    objectid: u64,
    name: [u8; 4080],
}

struct Report {
    errors: Vec<String>,
}

impl Report {
    fn err(&mut self, what: impl Into<String>) {
        self.errors.push(what.into());
    }
}

fn lossy(s: &std::ffi::OsStr) -> String {
    String::from_utf8_lossy(s.as_bytes()).into_owned()
}

/// Reads at most `READ_CAP` bytes of a file as (lossy) text.
fn read_capped(path: &str) -> std::io::Result<String> {
    let mut buf = Vec::new();
    fs::File::open(path)?.take(READ_CAP).read_to_end(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// Decodes the octal escapes (`\040`) the kernel uses in /proc/self/mountinfo.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes.get(i).copied().unwrap_or(0);
        if b == b'\\' {
            if let Some(oct) = bytes.get(i + 1..i + 4) {
                if oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                    let v = oct.iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                    if let Ok(v) = u8::try_from(v) {
                        out.push(v);
                        i += 4;
                        continue;
                    }
                }
            }
        }
        out.push(b);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One parsed line of /proc/self/mountinfo, as JSON.
fn parse_mountinfo_line(line: &str) -> Option<Value> {
    let (left, right) = line.split_once(" - ")?;
    let l: Vec<&str> = left.split(' ').collect();
    let r: Vec<&str> = right.split(' ').collect();
    Some(json!({
        "mount_id": l.first()?.parse::<u64>().ok()?,
        "parent_id": l.get(1)?.parse::<u64>().ok()?,
        "major_minor": l.get(2)?,
        "root": unescape_mountinfo(l.get(3)?),
        "mount_point": unescape_mountinfo(l.get(4)?),
        "mount_options": l.get(5)?.split(',').collect::<Vec<_>>(),
        "optional_fields": l.get(6..).unwrap_or(&[]),
        "fstype": r.first()?,
        "source": unescape_mountinfo(r.get(1)?),
        "super_options": r.get(2).map(|s| s.split(',').collect::<Vec<_>>()).unwrap_or_default(),
    }))
}

fn read_mountinfo(rep: &mut Report, out: &mut Map<String, Value>) -> Vec<Value> {
    match read_capped("/proc/self/mountinfo") {
        Ok(text) => {
            out.insert("proc_was_mounted".into(), json!(true));
            return parse_all(rep, &text);
        }
        Err(e) => {
            out.insert("proc_error".into(), json!(format!("reading /proc/self/mountinfo: {e}")));
        }
    }
    // /proc is not mounted: record that, then mount it ourselves to see the rest
    // (our own mount is left out of "special_mounts").
    out.insert("proc_was_mounted".into(), json!(false));
    if let Err(e) = fs::create_dir_all("/proc") {
        rep.err(format!("creating /proc: {e}"));
    }
    if let Err(e) = rustix::mount::mount("proc", "/proc", "proc", rustix::mount::MountFlags::empty(), None) {
        rep.err(format!("mounting proc on /proc: {e}"));
        return Vec::new();
    }
    match read_capped("/proc/self/mountinfo") {
        Ok(text) => parse_all(rep, &text),
        Err(e) => {
            rep.err(format!("reading /proc/self/mountinfo after mounting proc: {e}"));
            Vec::new()
        }
    }
}

fn parse_all(rep: &mut Report, text: &str) -> Vec<Value> {
    let mut mounts = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        match parse_mountinfo_line(line) {
            Some(v) => mounts.push(v),
            None => rep.err(format!("unparsable mountinfo line: {line}")),
        }
    }
    mounts
}

fn file_type_name(ft: fs::FileType) -> &'static str {
    if ft.is_symlink() {
        "symlink"
    } else if ft.is_dir() {
        "dir"
    } else if ft.is_file() {
        "file"
    } else if ft.is_block_device() {
        "block"
    } else if ft.is_char_device() {
        "char"
    } else if ft.is_fifo() {
        "fifo"
    } else if ft.is_socket() {
        "socket"
    } else {
        "unknown"
    }
}

/// The btrfs subvolume id of the directory at `path` (BTRFS_IOC_INO_LOOKUP of the
/// subvolume root with treeid 0 returns the tree the fd lives in).
fn btrfs_subvolume_id(path: &str) -> Result<u64, String> {
    let dir = fs::File::open(path).map_err(|e| format!("opening {path}: {e}"))?;
    let mut args = BtrfsInoLookupArgs { treeid: 0, objectid: BTRFS_FIRST_FREE_OBJECTID, name: [0; 4080] };
    // SAFETY: `dir` is an open fd; `args` is a correctly sized, initialised
    // btrfs_ioctl_ino_lookup_args that lives for the whole call.
    let rc = unsafe {
        libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&dir), BTRFS_IOC_INO_LOOKUP, &mut args as *mut BtrfsInoLookupArgs)
    };
    if rc < 0 {
        return Err(format!("BTRFS_IOC_INO_LOOKUP on {path}: {}", std::io::Error::last_os_error()));
    }
    Ok(args.treeid)
}

/// statfs magic of the filesystem holding `path`.
fn fs_magic(path: &str) -> Result<i64, String> {
    rustix::fs::statfs(path).map(|s| s.f_type).map_err(|e| format!("statfs {path}: {e}"))
}

/// Whether `path` is the root of a btrfs subvolume, and its id.
fn subvolume_info(path: &str, ino: u64, is_dir: bool) -> Value {
    let magic = match fs_magic(path) {
        Ok(m) => m,
        Err(e) => return json!({ "error": e }),
    };
    let is_btrfs = magic == BTRFS_SUPER_MAGIC;
    let is_subvolume = is_btrfs && is_dir && ino == BTRFS_FIRST_FREE_OBJECTID;
    let mut v = json!({
        "fs_magic": format!("0x{magic:x}"),
        "is_btrfs": is_btrfs,
        "is_subvolume": is_subvolume,
    });
    if is_subvolume {
        match btrfs_subvolume_id(path) {
            Ok(id) => v["subvolume_id"] = json!(id),
            Err(e) => v["subvolume_id_error"] = json!(e),
        }
    }
    v
}

/// Metadata (and a prefix of the content) of one path, without following a final symlink.
fn stat_path(path: &str) -> Value {
    let md = match fs::symlink_metadata(path) {
        Ok(md) => md,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return json!({ "exists": false }),
        Err(e) => return json!({ "exists": false, "error": format!("lstat {path}: {e}") }),
    };
    let ft = md.file_type();
    let mut v = json!({
        "exists": true,
        "type": file_type_name(ft),
        "mode": format!("{:04o}", md.mode() & 0o7777),
        "uid": md.uid(),
        "gid": md.gid(),
        "ino": md.ino(),
        "nlink": md.nlink(),
        "size": md.size(),
        "dev": md.dev(),
    });
    if ft.is_symlink() {
        match fs::read_link(path) {
            Ok(t) => v["symlink_target"] = json!(lossy(t.as_os_str())),
            Err(e) => v["error"] = json!(format!("readlink {path}: {e}")),
        }
    } else if ft.is_file() {
        let mut buf = Vec::new();
        match fs::File::open(path).and_then(|f| f.take(CONTENT_BYTES).read_to_end(&mut buf)) {
            Ok(_) => v["content"] = json!(String::from_utf8_lossy(&buf)),
            Err(e) => v["error"] = json!(format!("reading {path}: {e}")),
        }
    } else if ft.is_dir() {
        v["btrfs"] = subvolume_info(path, md.ino(), true);
    }
    v
}

/// `--make-nested`: leave state behind for the next boot to clean up.
fn make_nested(rep: &mut Report) -> Value {
    let mut done = Map::new();
    let marker = "/var/tmp/from-previous-boot";
    let boot_id = read_capped("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_string()).unwrap_or_default();
    match fs::create_dir_all("/var/tmp")
        .and_then(|_| fs::write(marker, format!("written by testinit --make-nested, boot {boot_id}\n")))
    {
        Ok(()) => {
            done.insert("marker".into(), json!(marker));
        }
        Err(e) => rep.err(format!("writing {marker}: {e}")),
    }
    done.insert("boot_id".into(), json!(boot_id));
    let parent = "/var/lib";
    let name = b"machines";
    let created = fs::create_dir_all(parent).map_err(|e| format!("creating {parent}: {e}")).and_then(|_| {
        let dir = fs::File::open(parent).map_err(|e| format!("opening {parent}: {e}"))?;
        let mut args = BtrfsVolArgs { fd: 0, name: [0; 4088] };
        if let Some(dst) = args.name.get_mut(..name.len()) {
            dst.copy_from_slice(name);
        }
        // SAFETY: `dir` is an open directory fd; `args` is a correctly sized,
        // NUL-terminated btrfs_ioctl_vol_args that lives for the whole call.
        let rc = unsafe {
            libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&dir), BTRFS_IOC_SUBVOL_CREATE, &args as *const BtrfsVolArgs)
        };
        if rc < 0 {
            return Err(format!("BTRFS_IOC_SUBVOL_CREATE {parent}/machines: {}", std::io::Error::last_os_error()));
        }
        Ok(())
    });
    match created {
        Ok(()) => {
            done.insert("subvolume".into(), json!("/var/lib/machines"));
            match btrfs_subvolume_id("/var/lib/machines") {
                Ok(id) => {
                    done.insert("subvolume_id".into(), json!(id));
                }
                Err(e) => rep.err(e),
            }
            let inside = "/var/lib/machines/inside.txt";
            match fs::write(inside, "inside the nested subvolume\n") {
                Ok(()) => {
                    done.insert("file_in_subvolume".into(), json!(inside));
                }
                Err(e) => rep.err(format!("writing {inside}: {e}")),
            }
        }
        Err(e) => rep.err(e),
    }
    rustix::fs::sync();
    Value::Object(done)
}

/// Seconds since boot (CLOCK_BOOTTIME, the clock of the kernel's printk timestamps).
fn uptime() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec for the call to fill in.
    if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) } != 0 {
        return -1.0;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

fn collect(rep: &mut Report) -> Value {
    let mut out = Map::new();
    out.insert("uptime_s".into(), json!(uptime()));
    let pid = rustix::process::getpid().as_raw_nonzero().get();
    out.insert("pid".into(), json!(pid));
    let argv: Vec<OsString> = std::env::args_os().collect();
    out.insert("argv".into(), json!(argv.iter().map(|a| lossy(a)).collect::<Vec<_>>()));
    let env: Map<String, Value> = std::env::vars_os().map(|(k, v)| (lossy(&k), json!(lossy(&v)))).collect();
    out.insert("env".into(), Value::Object(env));

    let mut extra_paths = Vec::new();
    let mut runs = Vec::new();
    let mut make_nested_requested = false;
    let mut bless = true;
    let mut args = argv.iter().skip(1);
    while let Some(a) = args.next() {
        match a.as_bytes() {
            b"--make-nested" => make_nested_requested = true,
            b"--no-bless" => bless = false,
            b"--stat" => match args.next() {
                Some(p) => extra_paths.push(lossy(p)),
                None => rep.err("--stat needs a path"),
            },
            b"--run" => match args.next() {
                Some(c) => runs.push(lossy(c)),
                None => rep.err("--run needs a command"),
            },
            b"--deserialize" => {
                let fd = args.next().map(|a| lossy(a));
                out.insert("deserialize".into(), deserialize(fd.as_deref()));
            }
            _ => {}
        }
    }

    let mounts = read_mountinfo(rep, &mut out);
    if make_nested_requested {
        let done = make_nested(rep);
        out.insert("make_nested".into(), done);
    }

    let roots: Vec<&Value> = mounts.iter().filter(|m| m["mount_point"] == "/").collect();
    out.insert("root_mount_count".into(), json!(roots.len()));
    out.insert("root_mount".into(), roots.last().map(|m| (*m).clone()).unwrap_or(Value::Null));
    let mut special = Map::new();
    let proc_was_mounted = out.get("proc_was_mounted") == Some(&json!(true));
    for p in ["/dev", "/proc", "/sys", "/run"] {
        let mut m = mounts.iter().rev().find(|m| m["mount_point"] == p).cloned().unwrap_or(Value::Null);
        if p == "/proc" && !proc_was_mounted {
            m = Value::Null;
        }
        special.insert(p.into(), m);
    }
    out.insert("special_mounts".into(), Value::Object(special));
    out.insert("mounts".into(), json!(mounts));

    let root = match fs::metadata("/") {
        Ok(md) => subvolume_info("/", md.ino(), true),
        Err(e) => json!({ "error": format!("stat /: {e}") }),
    };
    out.insert("root_btrfs".into(), root);

    let mut paths: Vec<String> = Vec::new();
    match read_capped("/etc/testinit-paths") {
        Ok(text) => {
            paths.extend(text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(String::from))
        }
        Err(e) => rep.err(format!("reading /etc/testinit-paths: {e}")),
    }
    paths.extend(extra_paths);
    let mut stats = Map::new();
    for p in &paths {
        stats.insert(p.clone(), stat_path(p));
    }
    out.insert("paths".into(), Value::Object(stats));

    match read_capped("/proc/cmdline") {
        Ok(c) => {
            out.insert("cmdline".into(), json!(c.trim_end()));
        }
        Err(e) => rep.err(format!("reading /proc/cmdline: {e}")),
    }
    out.insert("kmsg_dockroot".into(), json!(read_kmsg_dockroot(rep)));
    // dockroot's boot record, as the booted system sees it.
    let record = match read_capped("/run/dockroot/boot.json") {
        Ok(text) => serde_json::from_str(&text).unwrap_or_else(|e| json!({ "parse_error": e.to_string() })),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Value::Null,
        Err(e) => json!({ "read_error": e.to_string() }),
    };
    if bless && record.pointer("/trial/state") == Some(&json!("on trial")) {
        out.insert("bless".into(), run("/run/dockroot/dockroot bless"));
    }
    out.insert("boot_record".into(), record);
    let log = match read_capped("/run/dockroot/boot.log") {
        Ok(text) => json!(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Value::Null,
        Err(e) => json!({ "read_error": e.to_string() }),
    };
    out.insert("boot_log".into(), log);
    out.insert("runs".into(), json!(runs.iter().map(|c| run(c)).collect::<Vec<_>>()));
    Value::Object(out)
}

/// Microseconds on `clock` now.
fn clock_us(clock: libc::clockid_t) -> Option<u64> {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into the one we pass.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return None;
    }
    Some(u64::try_from(ts.tv_sec).ok()? * 1_000_000 + u64::try_from(ts.tv_nsec).ok()? / 1000)
}

/// What `--deserialize FD` refers to: the fd, whether it is open, where it points,
/// its content from its current offset (at most 4 KiB), and the clocks now.
fn deserialize(fd: Option<&str>) -> Value {
    let mut v = Map::new();
    v.insert("now_realtime_us".into(), json!(clock_us(libc::CLOCK_REALTIME)));
    v.insert("now_monotonic_us".into(), json!(clock_us(libc::CLOCK_MONOTONIC)));
    let Some(n) = fd.and_then(|f| f.parse::<i32>().ok()) else {
        v.insert("error".into(), json!(format!("not an fd number: {fd:?}")));
        return Value::Object(v);
    };
    v.insert("fd".into(), json!(n));
    v.insert("target".into(), json!(fs::read_link(format!("/proc/self/fd/{n}")).ok().map(|p| lossy(p.as_os_str()))));
    // SAFETY: F_GETFD only asks about the fd number.
    let flags = unsafe { libc::fcntl(n, libc::F_GETFD) };
    v.insert("open".into(), json!(flags >= 0));
    v.insert("cloexec".into(), json!(flags >= 0 && flags & libc::FD_CLOEXEC != 0));
    if flags >= 0 {
        let mut buf = vec![0u8; 4096];
        // SAFETY: reads at most buf.len() bytes into buf from an open fd.
        let got = unsafe { libc::read(n, buf.as_mut_ptr().cast(), buf.len()) };
        match usize::try_from(got) {
            Ok(len) => {
                buf.truncate(len);
                v.insert("content".into(), json!(String::from_utf8_lossy(&buf)));
            }
            Err(_) => {
                v.insert("error".into(), json!(format!("read: {}", std::io::Error::last_os_error())));
            }
        }
    }
    Value::Object(v)
}

/// Run `command` (split at spaces), at most 60 s: its argv, exit status, stdout, stderr.
fn run(command: &str) -> Value {
    let argv: Vec<&str> = command.split(' ').filter(|a| !a.is_empty()).collect();
    let Some((program, args)) = argv.split_first() else { return json!({ "error": "empty command" }) };
    let child = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return json!({ "argv": argv, "error": format!("cannot run {program}: {e}") }),
    };
    let start = std::time::Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if start.elapsed() < std::time::Duration::from_secs(60) => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            Ok(None) => {
                let _ = child.kill();
                break;
            }
            Err(e) => return json!({ "argv": argv, "error": format!("waiting for {program}: {e}") }),
        }
    }
    match child.wait_with_output() {
        Ok(o) => json!({
            "argv": argv,
            "code": o.status.code(),
            "stdout": String::from_utf8_lossy(&o.stdout),
            "stderr": String::from_utf8_lossy(&o.stderr),
        }),
        Err(e) => json!({ "argv": argv, "error": format!("collecting {program}'s output: {e}") }),
    }
}

/// The kernel log's records written by dockroot ("dockroot: ..."), read from
/// /dev/kmsg without blocking; shows that the booted system's dmesg has them.
fn read_kmsg_dockroot(rep: &mut Report) -> Vec<String> {
    use rustix::fs::{Mode, OFlags};
    let fd = match rustix::fs::open("/dev/kmsg", OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC, Mode::empty()) {
        Ok(fd) => fd,
        // No /dev at all (testinit run straight as the initramfs's /init): nothing to read.
        Err(rustix::io::Errno::NOENT) => return Vec::new(),
        Err(e) => {
            rep.err(format!("opening /dev/kmsg: {e}"));
            return Vec::new();
        }
    };
    let mut lines = Vec::new();
    let mut buf = vec![0u8; 8192];
    // Each read returns one record; the log holds a bounded number of them.
    for _ in 0..100_000 {
        match rustix::io::read(&fd, &mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let rec = String::from_utf8_lossy(&buf[..n]);
                // "PRI,SEQ,TIME,FLAGS;message\n"
                if let Some((_, msg)) = rec.split_once(';') {
                    let msg = msg.lines().next().unwrap_or("");
                    if msg.starts_with("dockroot: ") {
                        lines.push(msg.to_string());
                    }
                }
            }
            Err(rustix::io::Errno::PIPE) => continue, // records overwritten while reading
            Err(rustix::io::Errno::AGAIN) => break,
            Err(e) => {
                rep.err(format!("reading /dev/kmsg: {e}"));
                break;
            }
        }
    }
    lines
}

fn main() {
    let mut rep = Report { errors: Vec::new() };
    let mut report = collect(&mut rep);
    report["errors"] = json!(rep.errors);
    let line = format!("\n{MARKER} {report}\n");

    // Keep kernel messages from interleaving with the line on the console.
    if rustix::process::getpid().is_init() {
        // SAFETY: klogctl(SYSLOG_ACTION_CONSOLE_LEVEL) takes no buffer.
        unsafe { libc::klogctl(8, std::ptr::null_mut(), 1) };
    }
    match fs::OpenOptions::new().write(true).custom_flags(libc::O_NOCTTY).open("/dev/console") {
        Ok(mut c) => {
            let _ = c.write_all(line.as_bytes());
        }
        Err(e) => {
            // Say so on stdout, the only channel left.
            let _ = writeln!(std::io::stdout(), "testinit: opening /dev/console: {e}");
        }
    }
    let mut stdout = std::io::stdout();
    let _ = stdout.write_all(line.as_bytes());
    let _ = stdout.flush();

    rustix::fs::sync();
    if rustix::process::getpid().is_init() {
        if let Err(e) = rustix::system::reboot(rustix::system::RebootCommand::PowerOff) {
            let _ = writeln!(std::io::stdout(), "testinit: power off: {e}");
        }
        // PID 1 must not exit (the kernel would panic): wait to be killed.
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
}
