//! `dockroot plan --device` on loop devices (needs root, losetup, mkfs.btrfs):
//! the device must be the one `root=` names (exit 5 otherwise), messages name
//! paths on the partition rather than under the temporary mount, and no
//! temporary directory is left behind whatever happens.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().expect("running sh");
    assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A loop device with a btrfs labelled `label` (and a top layer directory), detached on drop.
struct Loop {
    dev: String,
    _dir: PathBuf,
}

impl Loop {
    fn btrfs(tag: &str, label: &str) -> Loop {
        let dir = std::env::temp_dir().join(format!("dockroot-cli-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let img = dir.join("disk.img");
        sh(&format!("truncate -s 128M '{}' && mkfs.btrfs -q -L '{label}' '{}'", img.display(), img.display()));
        let mnt = dir.join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        sh(&format!("mount -o loop '{}' '{}'", img.display(), mnt.display()));
        std::fs::create_dir_all(mnt.join("machine/etc")).unwrap();
        std::fs::write(mnt.join("machine/etc/hostname"), "m\n").unwrap();
        sh(&format!("umount '{}'", mnt.display()));
        let dev = sh(&format!("losetup --find --show '{}'", img.display())).trim().to_string();
        Loop { dev, _dir: dir }
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

/// `dockroot plan ARGS` with TMPDIR set to a fresh directory: status, stdout,
/// stderr, and what the command left in its temporary directory.
fn plan(args: &[&str]) -> (i32, String, String, Vec<PathBuf>) {
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = std::env::temp_dir().join(format!("dockroot-cli-tmp-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_dockroot"))
        .arg("plan")
        .args(args)
        .env("TMPDIR", &tmp)
        .output()
        .expect("running dockroot plan");
    let left: Vec<PathBuf> = std::fs::read_dir(&tmp).unwrap().map(|e| e.unwrap().path()).collect();
    std::fs::remove_dir_all(&tmp).unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr), left)
}

const CMDLINE: &str =
    "root=LABEL=dockroot-cli rootflags=subvol=rw toplayer=LABEL=dockroot-cli toplayer_path=machine dockroot.image=os:1";

#[test]
fn plan_checks_the_device_names_partition_paths_and_leaves_nothing() {
    let Some(_) = Path::new("/dev/loop-control").exists().then_some(()) else { panic!("no loop devices") };
    let right = Loop::btrfs("right", "dockroot-cli");
    let wrong = Loop::btrfs("wrong", "another-label");

    // Not the device root= names: exit 5, saying what it is instead.
    let (code, out, err, left) = plan(&["--device", &wrong.dev, "--cmdline", CMDLINE]);
    assert_eq!(code, 5, "{out}{err}");
    assert!(err.contains(&format!("--device {} is not the device root=LABEL=dockroot-cli names", wrong.dev)), "{err}");
    assert!(err.contains("another-label"), "{err}");
    assert!(left.is_empty(), "left behind: {left:?}");

    // The right one: the boot would fail (no image anywhere, no root to fall back to), and
    // every path is named on the partition, not under the temporary mount.
    let (code, out, err, left) = plan(&["--device", &right.dev, "--cmdline", CMDLINE]);
    assert_eq!(code, 4, "{out}{err}");
    let mounted = format!("): {}, mounted read-only for the run", right.dev);
    assert!(out.starts_with("root partition: LABEL=dockroot-cli (") && out.contains(&mounted), "{out}{err}");
    assert!(
        out.contains(&format!("top layer: /machine on {} (not applied in this mode)", right.dev))
            || out.contains(&format!("top layer: /machine on {}", right.dev)),
        "{out}"
    );
    assert!(!out.contains("dockroot-plan") && !out.contains("/mnt-") && !out.contains("/tmp/"), "{out}");
    assert!(left.is_empty(), "left behind: {left:?}");

    // An error after mounting (a kernel command line without rootflags=subvol=) leaves nothing either.
    let (code, out, err, left) =
        plan(&["--device", &right.dev, "--cmdline", "root=LABEL=dockroot-cli dockroot.image=os"]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(left.is_empty(), "left behind: {left:?}");
    // A device that is not there: it could not look (1), not "another device" (5).
    let (code, out, err, left) = plan(&["--device", "/nonexistent/dev", "--cmdline", CMDLINE]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("/nonexistent/dev"), "{err}");
    assert!(left.is_empty(), "left behind: {left:?}");
    // Neither does a device that cannot be mounted.
    let (code, out, err, left) =
        plan(&["--device", "/dev/null", "--cmdline", "root=/dev/null rootflags=subvol=rw dockroot.image=os"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// `plan --toplayer-device` on loop devices: the top layer's partition is mounted and
/// listed, named as on that device; another partition than the one toplayer= names is
/// refused with exit 6 (not read), and so is a `--toplayer-dir` mounted from one.
#[test]
fn plan_checks_the_toplayer_device_and_reads_only_the_right_one() {
    let Some(_) = Path::new("/dev/loop-control").exists().then_some(()) else { panic!("no loop devices") };
    let root = Loop::btrfs("tl-root", "dockroot-tlroot");
    let esp = Loop::btrfs("tl-esp", "dockroot-tlesp");
    let other = Loop::btrfs("tl-other", "dockroot-tlother");
    let cmdline = "root=LABEL=dockroot-tlroot rootflags=subvol=rw toplayer=LABEL=dockroot-tlesp \
                   toplayer_path=machine dockroot.image=os:1";

    // Without the top layer's device: it says how to give it, and reads nothing else.
    let (code, out, err, left) = plan(&["--device", &root.dev, "--cmdline", cmdline]);
    assert_eq!(code, 4, "{out}{err}");
    assert!(
        out.contains("top layer: toplayer=LABEL=dockroot-tlesp toplayer_path=/machine: give --toplayer-device"),
        "{out}"
    );
    assert!(left.is_empty(), "left behind: {left:?}");

    // The right one: listed, named on that device.
    let (code, out, err, left) = plan(&["--device", &root.dev, "--toplayer-device", &esp.dev, "--cmdline", cmdline]);
    assert_eq!(code, 4, "{out}{err}");
    assert!(
        out.contains(&format!("top layer: /machine on {} (not applied in this mode)", esp.dev))
            || out.contains(&format!("top layer: /machine on {} would write", esp.dev)),
        "{out}"
    );
    assert!(out.contains("  /etc/hostname"), "{out}");
    assert!(!out.contains("/toplayer-") && !out.contains("/tmp/"), "{out}");
    assert!(left.is_empty(), "left behind: {left:?}");

    // Another partition: exit 6, saying what it is; nothing mounted or left.
    let (code, out, err, left) = plan(&["--device", &root.dev, "--toplayer-device", &other.dev, "--cmdline", cmdline]);
    assert_eq!(code, 6, "{out}{err}");
    let says = format!("--toplayer-device {} is not the device toplayer=LABEL=dockroot-tlesp names", other.dev);
    assert!(err.contains(&says) && err.contains("dockroot-tlother"), "{err}");
    assert!(out.is_empty(), "{out}");
    assert!(left.is_empty(), "left behind: {left:?}");

    // A --toplayer-dir on another partition: exit 6 too.
    let mnt = std::env::temp_dir().join(format!("dockroot-cli-tl-mnt-{}", std::process::id()));
    std::fs::create_dir_all(&mnt).unwrap();
    sh(&format!("mount -o ro '{}' '{}'", other.dev, mnt.display()));
    let dir = mnt.join("machine");
    let (code, out, err, _) =
        plan(&["--device", &root.dev, "--toplayer-dir", dir.to_str().unwrap(), "--cmdline", cmdline]);
    let (code2, out2, err2, _) = plan(&["--device", &root.dev, "--toplayer-dir", "/", "--toplayer-device", &esp.dev]);
    sh(&format!("umount '{}'", mnt.display()));
    std::fs::remove_dir(&mnt).unwrap();
    assert_eq!(code, 6, "{out}{err}");
    assert!(
        err.contains(&format!(
            "--toplayer-dir {}: its device {} is not the device toplayer=",
            dir.display(),
            other.dev
        )),
        "{err}"
    );
    assert_eq!(code2, 2, "{out2}{err2}");
    assert!(err2.contains("give at most one of --toplayer-dir and --toplayer-device"), "{err2}");

    // A top layer named by other words than root= that is the root partition (as the
    // init decides, by the device) is read there.
    let uuid = sh(&format!("blkid -s UUID -o value {}", esp.dev)).trim().to_string();
    let by_uuid = format!(
        "root=LABEL=dockroot-tlesp rootflags=subvol=rw toplayer=UUID={uuid} toplayer_path=machine dockroot.image=os:1"
    );
    let (code, out, err, _) = plan(&["--device", &esp.dev, "--cmdline", &by_uuid]);
    assert_eq!(code, 4, "{out}{err}");
    assert!(out.contains(&format!("top layer: /machine on {}", esp.dev)), "{out}");
    assert!(out.contains("  /etc/hostname"), "{out}");
}
