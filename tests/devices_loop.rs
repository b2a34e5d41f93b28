//! Device discovery against the real kernel (run as root): uevents from loop
//! devices, the event-driven wait, and multi-device btrfs registration.

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
    while let Some(_) = listener.recv(Instant::now()).unwrap() {}
    assert!(t.elapsed() < Duration::from_secs(1));
}
