//! Tests of the harness itself, independent of dockroot: the fetched kernel boots an
//! initramfs whose /init is testinit, and the harness reads its report back.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use qemu_tests::{boot, field, Artifacts, BootSpec};

/// A newc cpio with testinit as /init, /dev/console and a path list, made with GNU cpio.
fn testinit_initramfs(dir: &Path) -> std::path::PathBuf {
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("dev")).unwrap();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::copy(Artifacts::testinit(), root.join("init")).unwrap();
    std::fs::write(root.join("etc/testinit-paths"), "/init\n/dev/console\n/etc/missing\n").unwrap();
    let st = Command::new("mknod").arg(root.join("dev/console")).args(["c", "5", "1"]).status().unwrap();
    assert!(st.success(), "mknod /dev/console (the boot tests run as root)");
    let out = dir.join("initrd.cpio");
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd '{}' && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet > '{}'",
            root.display(),
            out.display()
        ))
        .status()
        .unwrap();
    assert!(st.success(), "cpio failed");
    out
}

#[test]
fn kernel_boots_testinit_and_the_harness_reads_its_report() {
    let a = Artifacts::from_env();
    let tmp = tempfile::tempdir().unwrap();
    let initrd = testinit_initramfs(tmp.path());
    let mut spec = BootSpec::new(a.kernel(), initrd, &[], "rdinit=/init -- --stat /proc/cmdline");
    spec.timeout = Duration::from_secs(120);
    let out = boot(&spec);
    assert!(!out.timed_out, "boot timed out:\n{}", out.tail(40));
    let r = out.expect_testinit();
    assert_eq!(r["pid"], 1, "{r}");
    assert_eq!(r["argv"], serde_json::json!(["/init", "--stat", "/proc/cmdline"]));
    assert_eq!(r["errors"], serde_json::json!([]), "{r}");
    assert_eq!(field(&r, &["root_mount", "fstype"]), "rootfs");
    assert_eq!(r["proc_was_mounted"], false);
    assert!(field(&r, &["special_mounts", "/proc"]).is_null(), "testinit's own /proc mount must not be reported");
    assert_eq!(field(&r, &["paths", "/init", "type"]), "file");
    assert_eq!(field(&r, &["paths", "/dev/console", "type"]), "char");
    assert_eq!(field(&r, &["paths", "/etc/missing", "exists"]), false);
    let cmdline = r["cmdline"].as_str().unwrap();
    assert!(cmdline.contains("rdinit=/init") && cmdline.contains("console=ttyS0"), "{cmdline}");
    assert_eq!(field(&r, &["paths", "/proc/cmdline", "content"]).as_str().unwrap().trim_end(), cmdline);
    assert!(out.kernel_to_init().is_some(), "no 'Run /init' line:\n{}", out.tail(40));
    let t = out.time_to_init().expect("time to init");
    // printk stamps come from the scheduler clock, testinit's uptime from the boot
    // clock: with no dockroot in between the two readings can cross by a few ms.
    assert!((-0.05..30.0).contains(&t), "time to init {t}");
    assert!(out.contains("reboot: Power down"), "testinit did not power off:\n{}", out.tail(20));
    assert!(out.status.map(|s| s.success()).unwrap_or(false), "qemu exit: {:?}", out.status);
}
