//! Device discovery against the real kernel (run as root): uevents from loop
//! devices, the event-driven wait, and multi-device btrfs registration.

// Tests stop at the first failure: unwrap, expect and panic are how they say so.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{require_root, run, TempDir};
use dockroot::uevent::{Action, Listener, Received};

/// A loop device backed by a sparse file; detached on drop.
struct Loop {
    dev: PathBuf,
}

impl Loop {
    fn attach(image: &Path) -> Loop {
        let out = run("losetup", &["-f", "--show", image.to_str().unwrap()]);
        Loop { dev: PathBuf::from(out.trim()) }
    }

    fn name(&self) -> String {
        self.dev.file_name().unwrap().to_str().unwrap().to_string()
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

fn sparse(dir: &Path, name: &str, size: u64) -> PathBuf {
    let p = dir.join(name);
    std::fs::File::create(&p).unwrap().set_len(size).unwrap();
    p
}

#[test]
fn listener_sees_a_loop_device_appear() {
    require_root();
    let tmp = TempDir::new("uevent");
    let img = sparse(&tmp.path, "a.img", 8 << 20);
    let listener = Listener::open().unwrap();
    let started = Instant::now();
    let lo = Loop::attach(&img);
    let name = lo.name();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    let ev = loop {
        match listener.recv(deadline).unwrap() {
            Some(Received::Event(ev)) if ev.devname.as_deref() == Some(name.as_str()) => break ev,
            Some(Received::Event(ev)) => seen.push(format!("{} {}", ev.action.name(), ev.devpath)),
            Some(Received::Overflow) => panic!("overflow on a quiet system"),
            None => panic!("no uevent for {name} within 10 s; saw {seen:?}"),
        }
    };
    assert!(ev.is_block(), "{ev:?}");
    assert!(matches!(ev.action, Action::Add | Action::Change), "{ev:?}");
    assert!(ev.devpath.ends_with(&format!("/block/{name}")), "{ev:?}");
    let meta = std::fs::metadata(&lo.dev).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!((ev.major, ev.minor), (Some(rustix::fs::major(meta.rdev())), Some(rustix::fs::minor(meta.rdev()))));
    assert!(started.elapsed() < Duration::from_secs(5));
    // Nothing else pending for long: a past deadline returns at once.
    let t = Instant::now();
    while listener.recv(Instant::now()).unwrap().is_some() {}
    assert!(t.elapsed() < Duration::from_secs(1));
}

use dockroot::devices::{self, DeviceSpec, NoHooks, WaitPolicy, Waiter};
use dockroot::{btrfs, probe};

/// The waits register every btrfs device they see with the kernel, and the
/// raid1 tests make the kernel forget members: one at a time.
static KERNEL_BTRFS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    KERNEL_BTRFS.lock().unwrap_or_else(|e| e.into_inner())
}

fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{tag}{}x{}", std::process::id(), nanos % 100_000)
}

#[test]
fn wait_is_woken_by_the_uevent_of_a_new_device() {
    let _serial = serial();
    require_root();
    let tmp = TempDir::new("waitev");
    let img = sparse(&tmp.path, "e.img", 16 << 20);
    let label = unique("ev");
    run("mkfs.ext4", &["-q", "-F", "-L", &label, img.to_str().unwrap()]);
    let spec = DeviceSpec::parse(&format!("LABEL={label}")).unwrap();
    let waiting = std::thread::spawn({
        let spec = spec.clone();
        move || {
            let mut w = Waiter::new();
            let policy = WaitPolicy { timeout: Duration::from_secs(20), delay: Duration::ZERO };
            let t = Instant::now();
            let r = w.wait_for(&spec, &policy, false, &mut NoHooks);
            (r, t.elapsed(), w.stats())
        }
    });
    // Longer than any polling interval would be: the wait must sleep, then wake for the event.
    std::thread::sleep(Duration::from_millis(1500));
    let lo = Loop::attach(&img);
    let (r, took, stats) = waiting.join().unwrap();
    let d = r.unwrap();
    assert_eq!(d.devnode, lo.dev);
    assert!(took >= Duration::from_millis(1500) && took < Duration::from_secs(10), "{took:?}");
    assert!(stats.block_uevents >= 1, "{stats:?}");
    // One scan at the start, then one per batch of block events: no polling.
    assert!(stats.scans <= 1 + stats.block_uevents, "{stats:?}");
}

#[test]
fn timeout_without_events_scans_once_and_lists_devices() {
    let _serial = serial();
    require_root();
    let mut w = Waiter::new();
    let policy = WaitPolicy { timeout: Duration::from_millis(1500), delay: Duration::ZERO };
    let label = unique("absent");
    let t = Instant::now();
    let e = w.wait_for(&DeviceSpec::Label(label.clone()), &policy, false, &mut NoHooks).unwrap_err().to_string();
    assert!(t.elapsed() >= Duration::from_millis(1500));
    assert!(
        e.starts_with(&format!("no block device matching LABEL={label} appeared within 1.5s; block devices seen:\n")),
        "{e}"
    );
    let stats = w.stats();
    assert!(stats.scans <= 1 + stats.block_uevents, "{stats:?}");
}

/// Two loop devices holding a btrfs raid1; members forgotten by the kernel and
/// detached on drop.
struct Raid1 {
    _tmp: TempDir,
    a: Option<Loop>,
    b: Option<Loop>,
    label: String,
    uuid: String,
}

impl Raid1 {
    fn new() -> Raid1 {
        require_root();
        let tmp = TempDir::new("raid1");
        let a = Loop::attach(&sparse(&tmp.path, "a.img", 200 << 20));
        let b = Loop::attach(&sparse(&tmp.path, "b.img", 200 << 20));
        let label = unique("r1");
        run(
            "mkfs.btrfs",
            &["-q", "-f", "-L", &label, "-d", "raid1", "-m", "raid1", a.dev.to_str().unwrap(), b.dev.to_str().unwrap()],
        );
        let uuid = run("blkid", &["-o", "value", "-s", "UUID", a.dev.to_str().unwrap()]).trim().to_string();
        Raid1 { _tmp: tmp, a: Some(a), b: Some(b), label, uuid }
    }

    fn forget(dev: &Path) {
        run("btrfs", &["device", "scan", "--forget", dev.to_str().unwrap()]);
    }
}

impl Drop for Raid1 {
    fn drop(&mut self) {
        for l in [self.a.take(), self.b.take()].into_iter().flatten() {
            let _ = std::process::Command::new("btrfs").args(["device", "scan", "--forget"]).arg(&l.dev).status();
        }
    }
}

#[test]
fn raid1_members_registered_and_ready() {
    let _serial = serial();
    let r = Raid1::new();
    let (a, b) = (r.a.as_ref().unwrap().dev.clone(), r.b.as_ref().unwrap().dev.clone());
    let devs = devices::scan(Path::new("/sys/class/block"), Path::new("/dev"));
    let members: Vec<&devices::BlockDevice> = devs
        .iter()
        .filter(|d| {
            d.fs.as_ref().is_some_and(|f| f.fstype == probe::FsType::Btrfs && f.uuid.as_deref() == Some(&r.uuid))
        })
        .collect();
    assert_eq!(members.len(), 2, "{}", devices::describe(&devs));
    let mut ids: Vec<(u64, u64)> = members
        .iter()
        .map(|d| d.fs.as_ref().unwrap().btrfs.as_ref().map(|b| (b.devid, b.num_devices)).unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, [(1, 2), (2, 2)]);
    assert!(members.iter().all(|d| d.fs.as_ref().unwrap().label.as_deref() == Some(r.label.as_str())));

    btrfs::scan_device(&a).unwrap();
    btrfs::scan_device(&b).unwrap();
    assert!(btrfs::devices_ready(&a).unwrap());
    // The kernel forgets member b: a alone is not a complete filesystem.
    Raid1::forget(&b);
    assert!(!btrfs::devices_ready(&a).unwrap());
    btrfs::scan_device(&b).unwrap();
    assert!(btrfs::devices_ready(&b).unwrap());
    // Not btrfs, not a device: clear errors.
    let e = btrfs::scan_device(Path::new("/nonexistent/dev")).unwrap_err().to_string();
    assert!(e.contains("/nonexistent/dev") && e.contains("SCAN_DEV"), "{e}");

    // The waiter registers both itself and finds the filesystem complete.
    Raid1::forget(&a);
    Raid1::forget(&b);
    let mut w = Waiter::new();
    let policy = WaitPolicy { timeout: Duration::from_secs(5), delay: Duration::ZERO };
    let d = w.wait_for(&DeviceSpec::Uuid(r.uuid.clone()), &policy, false, &mut NoHooks).unwrap();
    assert!(d.devnode == a || d.devnode == b, "{}", d.devnode.display());
    assert!(btrfs::devices_ready(&a).unwrap());
}

#[test]
fn raid1_member_missing_is_an_error_or_mounts_degraded() {
    let _serial = serial();
    let mut r = Raid1::new();
    let a = r.a.as_ref().unwrap().dev.clone();
    let b = r.b.take().unwrap();
    let b_dev = b.dev.clone();
    drop(b); // detached: the member is gone (and no scan can register it again)
    Raid1::forget(&b_dev);
    let spec = DeviceSpec::Label(r.label.clone());
    let policy = WaitPolicy { timeout: Duration::from_millis(1500), delay: Duration::ZERO };
    let mut w = Waiter::new();
    let e = w.wait_for(&spec, &policy, false, &mut NoHooks).unwrap_err().to_string();
    let want = format!(
        "LABEL={}: btrfs filesystem LABEL={} UUID={} has 2 devices; found 1: devid 1 ({}); missing 1, likely devid 2; \
         waited 1.5s; the mount option 'degraded' (rootflags=degraded for root) mounts it without them; \
         block devices seen:\n",
        r.label,
        r.label,
        r.uuid,
        a.display()
    );
    assert!(e.starts_with(&want), "{e}\nwanted: {want}");
    // degraded: returned after the (here shorter) timeout, and it really mounts.
    let t = Instant::now();
    let d = w.wait_for(&spec, &policy, true, &mut NoHooks).unwrap();
    assert!(t.elapsed() >= Duration::from_millis(1500), "{:?}", t.elapsed());
    assert_eq!(d.devnode, a);
    let mnt = TempDir::new("degraded");
    run("mount", &["-o", "degraded,ro", a.to_str().unwrap(), mnt.path.to_str().unwrap()]);
    run("umount", &[mnt.path.to_str().unwrap()]);
}
