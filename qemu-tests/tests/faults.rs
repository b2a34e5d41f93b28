//! A bug in the init must not take the machine down with a kernel panic: a
//! panic in PID 1 ends in a message that says where, on the console and in
//! the kernel log, and the usual reboot. The test build of the init
//! (`DOCKROOT_INIT_VARIANT`, built by scripts/build with the
//! `fault-injection` feature) panics on `dockroot.fault=panic` after the root
//! partition is mounted and recovered.

use qemu_tests::{assert_fatal_boot, init_variant, Artifacts, Machine, OS_CONFIG, STANDARD_APPEND, STANDARD_MODULES};

#[test]
fn a_panic_in_pid1_is_reported_and_ends_in_a_reboot_not_a_kernel_panic() {
    let a = Artifacts { init: init_variant(), ..Artifacts::from_env() };
    let disk = a.disk.clone();
    let m = Machine::with(a, &disk, STANDARD_MODULES, OS_CONFIG, STANDARD_APPEND);

    let out = m.boot("panic_in_pid1", "dockroot.fault=panic dockroot.reboot_delay=1");
    assert!(!out.contains("Attempted to kill init"), "the panic killed PID 1:\n{}", out.tail(40));
    // The usual end of a failed boot (message, reboot notice, restart) ...
    let fatal = assert_fatal_boot(&out);
    assert!(fatal.contains("hit a bug (a panic at src/boot.rs:"), "{fatal}");
    // ... written to the console directly (the logger may hold its lock) ...
    let console = out
        .serial
        .lines()
        .find(|l| l.starts_with("dockroot: ERROR: cannot boot: dockroot ") && l.contains("hit a bug (a panic at"))
        .unwrap_or_else(|| panic!("no panic report on the console:\n{}", out.tail(40)));
    assert!(console.contains("dockroot.fault=panic: a panic injected by a test build; please report it"), "{console}");
    // ... and to the kernel log (the kernel echoes its records with a timestamp).
    assert!(
        out.serial.lines().any(|l| l.starts_with('[') && l.contains("] dockroot: ERROR: cannot boot: dockroot ")),
        "the panic report did not reach /dev/kmsg:\n{}",
        out.tail(40)
    );

    // Nothing was lost: the same machine boots normally next time.
    let r = m.report("after_panic", "");
    assert_eq!(r["pid"], 1, "{r}");
}
