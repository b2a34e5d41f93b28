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
    let tmp = std::env::temp_dir().join(format!("dockroot-cli-tmp-{}-{}", std::process::id(), args.len()));
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
