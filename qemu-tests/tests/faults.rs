//! A bug in the init must not take the machine down with a kernel panic: a
//! panic in PID 1 ends in a message that says where, on the console and in
//! the kernel log, and the usual reboot. The test build of the init
//! (`DOCKROOT_INIT_VARIANT`, built by scripts/build with the
//! `fault-injection` feature) panics on `dockroot.fault=panic` after the root
//! partition is mounted and recovered.

use std::path::PathBuf;

use qemu_tests::{Artifacts, Machine, OS_CONFIG, STANDARD_APPEND, STANDARD_MODULES};

fn variant() -> PathBuf {
    let path = PathBuf::from(std::env::var_os("DOCKROOT_INIT_VARIANT").unwrap_or_else(|| {
        panic!("DOCKROOT_INIT_VARIANT is not set: it must name the test build of the init (scripts/build makes it)")
    }));
    assert!(path.exists(), "DOCKROOT_INIT_VARIANT={} does not exist: run scripts/build", path.display());
    path
}

#[test]
fn a_panic_in_pid1_is_reported_and_ends_in_a_reboot_not_a_kernel_panic() {
    let a = Artifacts { init: variant(), ..Artifacts::from_env() };
    let disk = a.disk.clone();
    let m = Machine::with(a, &disk, STANDARD_MODULES, OS_CONFIG, STANDARD_APPEND);

    let out = m.boot("panic_in_pid1", "dockroot.fault=panic dockroot.reboot_delay=1");
    assert!(!out.timed_out, "the init hung instead of rebooting:\n{}", out.tail(40));
    assert!(out.testinit().is_none(), "the image's init ran after a panic");
    assert!(
        !out.contains("Kernel panic") && !out.contains("Attempted to kill init"),
        "the panic killed PID 1:\n{}",
        out.tail(40)
    );
    // On the console (written directly) ...
    let console = out
        .serial
        .lines()
        .find(|l| l.starts_with("dockroot: ERROR: cannot boot: dockroot ") && l.contains("hit a bug (a panic at src/boot.rs:"))
        .unwrap_or_else(|| panic!("no panic report on the console:\n{}", out.tail(40)));
    assert!(console.contains("dockroot.fault=panic: a panic injected by a test build; please report it"), "{console}");
    // ... and in the kernel log (the kernel echoes its records with a timestamp).
    assert!(
        out.serial.lines().any(|l| l.starts_with('[') && l.contains("] dockroot: ERROR: cannot boot: dockroot ")),
        "the panic report did not reach /dev/kmsg:\n{}",
        out.tail(40)
    );
    assert!(out.contains("dockroot: ERROR: rebooting in 1 s"), "no reboot notice:\n{}", out.tail(20));
    assert!(out.contains("reboot: Restarting system"), "the kernel did not restart:\n{}", out.tail(20));

    // Nothing was lost: the same machine boots normally next time.
    let r = m.report("after_panic", "");
    assert_eq!(r["pid"], 1, "{r}");
}
