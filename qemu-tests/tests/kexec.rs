//! The image's own kernel: an image (here its top layer) that has modules only
//! for another kernel release, and that kernel with a dockroot initramfs for it
//! in /boot, boots that kernel at once by kexec; the kexeced boot does not kexec
//! again; `dockroot.kexec=off` boots on with the WARNING naming both releases.

use qemu_tests::{build_initramfs, Machine, OS_CONFIG, STANDARD_MODULES};
use serde_json::Value;

#[test]
fn the_image_kernel_boots_by_kexec_once_or_a_warning_says_why_not() {
    let m = Machine::new(OS_CONFIG);
    let running = m.artifacts.kernel_release();
    let other = m.artifacts.with_other_kernel();
    let release = other.kernel_release();
    let initrd = build_initramfs(&other, STANDARD_MODULES, OS_CONFIG);
    m.modify(|top| {
        let t = top.join("toplayer");
        std::fs::create_dir_all(t.join(format!("lib/modules/{release}"))).unwrap();
        std::fs::create_dir_all(t.join("boot")).unwrap();
        std::fs::copy(other.kernel(), t.join(format!("boot/vmlinuz-{release}"))).unwrap();
        std::fs::copy(&initrd, t.join(format!("boot/initramfs-dockroot-{release}.img"))).unwrap();
    });

    // kexec off: the running kernel boots on, and says why with both releases.
    let (r, out) = m.report_and_output("kexec_off", "dockroot.kexec=off");
    let k = &r["boot_record"]["kernel"];
    assert_eq!(k["running"], running.as_str(), "{k}");
    assert_eq!(k["modules_match"], false, "{k}");
    assert_eq!(k["no_kexec"], "dockroot.kexec=off", "{k}");
    let warning = format!("WARNING: the running kernel is {running} but the image has modules only for {release}");
    assert!(out.contains(&warning), "{}", out.tail(20));

    // On (the default): the first kernel kexecs into the image's, whose boot does not kexec again.
    let (r, out) = m.report_and_output("kexec", "");
    let k = &r["boot_record"]["kernel"];
    assert_eq!(k["running"], release.as_str(), "not the image's kernel: {k}");
    assert_eq!(k["modules_match"], true, "{k}");
    assert_eq!(k["kexec_from"], running.as_str(), "{k}");
    assert_eq!(k["no_kexec"], Value::Null, "{k}");
    assert!(r["cmdline"].as_str().unwrap().ends_with(&format!("dockroot.kexec_from={running}")), "{}", r["cmdline"]);
    assert!(
        out.contains(&format!("booting /boot/vmlinuz-{release} with /boot/initramfs-dockroot-{release}.img by kexec"))
    );
    assert!(!r["boot_record"]["warnings"].to_string().contains("WARNING: the running kernel"), "{}", r["boot_record"]);
}
