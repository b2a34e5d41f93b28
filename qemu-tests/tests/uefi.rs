//! A whole machine under UEFI (issue 11): Debian's OVMF, systemd-boot on the ESP, a
//! Debian 12 image with systemd built by a real dockerd, its kernel and the dockroot
//! initramfs built inside it copied to the ESP with a loader entry
//! (`qemu-tests/fixtures/make-uefi-disk`). The image's test service reports what the
//! booted system sees on the console, runs the test's per-boot script from the top
//! layer and powers off.
//!
//! - The ESP's kernel matches the image: no kexec, modules match (Debian 12, 6.1).
//! - The tag names the image rebuilt with Debian 13's kernel while the ESP keeps
//!   6.1: that boot kexecs into the image's kernel; `dockroot boot-files` in it puts
//!   the new kernel and entry on the ESP and removes the old files; the next boot
//!   runs 6.12 directly.
//! - Power cuts while `boot-files` writes: the machine still boots, and a rerun of
//!   `boot-files` completes.
//!
//! Each boot is a real Debian under TCG (a minute or more): boots are shared between
//! assertions.

use qemu_tests::{BootOutput, KillAfter, UefiMachine, UefiReport};
use serde_json::Value;
use std::time::Duration;

/// The test script's lines that run boot-files and print its exit status, with the
/// guest's uptime before and after (how long it took).
const BOOT_FILES: &str = "echo \"DOCKROOT-UEFI boot-files begin $(cut -d' ' -f1 /proc/uptime)\"\n\
    /run/dockroot/dockroot boot-files --json\n\
    rc=$?\n\
    echo \"DOCKROOT-UEFI boot-files end $(cut -d' ' -f1 /proc/uptime)\"\n\
    echo \"DOCKROOT-UEFI boot-files exit $rc\"\n";

fn kernel(r: &UefiReport) -> &Value {
    &r.boot_json.as_ref().unwrap()["kernel"]
}

fn kexec_line(m: &UefiMachine) -> String {
    let rel = m.get("release_v2");
    format!("booting /boot/vmlinuz-{rel} with /boot/initrd.img-{rel} by kexec")
}

/// The exit status `boot-files` reported in this boot (None: it did not finish).
fn boot_files_exit(r: &UefiReport) -> Option<i32> {
    r.run_output
        .iter()
        .find_map(|l| l.split("DOCKROOT-UEFI boot-files exit ").nth(1).and_then(|v| v.trim().parse().ok()))
}

/// The loader entry on the ESP and the files it names: (linux, initrd, options).
fn esp_entry(m: &UefiMachine) -> (String, String, String) {
    let entry = m.esp_read("/loader/entries/dockroot.conf").expect("no /loader/entries/dockroot.conf on the ESP");
    let key = |k: &str| {
        entry
            .lines()
            .find_map(|l| l.trim().strip_prefix(k).filter(|v| v.starts_with([' ', '\t'])).map(|v| v.trim().to_string()))
            .unwrap_or_else(|| panic!("no {k} line in the entry:\n{entry}"))
    };
    (key("linux"), key("initrd"), key("options"))
}

/// The ESP holds an entry naming files that are there and hold the image's kernel
/// `release` (its `linux` has the release string in it); returns the entry's linux path.
fn assert_esp_boots(m: &UefiMachine, release: &str, what: &str) -> String {
    let (linux, initrd, options) = esp_entry(m);
    let kernel = m.esp_read_bytes(&linux).unwrap_or_else(|| panic!("{what}: the entry's {linux} is not on the ESP"));
    assert!(
        kernel.windows(release.len()).any(|w| w == release.as_bytes()),
        "{what}: {linux} is not the {release} kernel"
    );
    assert!(m.esp_size(&initrd).unwrap_or(0) > 0, "{what}: the entry's {initrd} is not on the ESP or empty");
    assert!(options.contains(&format!("root=PARTUUID={}", m.get("root_partuuid"))), "{what}: options {options}");
    assert!(!options.contains("dockroot.kexec_from"), "{what}: a per-boot marker in the entry: {options}");
    // systemd-boot adds initrd=\PATH to the kernel's command line: an entry carrying it
    // on would name the old initramfs.
    assert!(!options.contains("initrd="), "{what}: the loader's initrd= in the entry: {options}");
    linux
}

fn summary(name: &str, out: &BootOutput) {
    eprintln!("uefi: boot {name} took {:.1} s wall", out.elapsed.as_secs_f64());
}

/// a) v1 boots through OVMF and systemd-boot with no kexec; b) the tag then names v2
/// (Debian 13's kernel): the boot kexecs into it, boot-files moves the ESP to it, and
/// the next boot needs no kexec.
#[test]
fn uefi_machine_follows_its_image_kernel() {
    let m = UefiMachine::from_env();
    let rel1 = m.get("release_v1");
    let rel2 = m.get("release_v2");
    assert!(rel1.starts_with("6.1."), "{rel1}");
    assert!(rel2.starts_with("6.12."), "{rel2}");

    // a) The ESP's kernel is the image's: it boots directly.
    let (r, out) = m.boot("uefi_v1");
    summary("uefi_v1", &out);
    assert_eq!(r.uname.as_deref(), Some(rel1.as_str()), "{}", out.tail(40));
    let k = kernel(&r);
    assert_eq!(k["running"], rel1.as_str(), "{k}");
    assert_eq!(k["modules_match"], true, "{k}");
    assert_eq!(k["kexec_from"], Value::Null, "{k}");
    assert!(!out.contains("by kexec"), "{}", out.tail(40));
    let b = r.boot_json.as_ref().unwrap();
    assert!(b.to_string().contains(&m.get("v1_id")), "boot.json does not name v1's ID: {b}");
    let status = r.status.as_ref().unwrap_or_else(|| panic!("status --json printed no JSON: {}", out.tail(40)));
    assert!(status.is_object(), "{status}");

    // b) The tag now names v2 (what `docker build -t` of the new version does); the
    // ESP still has 6.1. This boot kexecs into the image's 6.12, then boot-files.
    m.retag(&m.get("v2_id"));
    m.set_run_script(BOOT_FILES);
    let (r, out) = m.boot("uefi_v2_kexec");
    summary("uefi_v2_kexec", &out);
    assert!(out.contains(&kexec_line(&m)), "no kexec on the console: {}", out.tail(60));
    assert_eq!(r.uname.as_deref(), Some(rel2.as_str()));
    let k = kernel(&r);
    assert_eq!(k["running"], rel2.as_str(), "{k}");
    assert_eq!(k["kexec_from"], rel1.as_str(), "{k}");
    assert_eq!(k["modules_match"], true, "{k}");
    let b = r.boot_json.as_ref().unwrap();
    assert!(b.to_string().contains(&m.get("v2_id")), "boot.json does not name v2's ID: {b}");

    // boot-files (the r-bootfiles interface) in that boot: exit 0, then the ESP holds
    // 6.12 under /dockroot/dockroot/ and the entry names it; v1's files are gone.
    assert_eq!(boot_files_exit(&r), Some(0), "boot-files failed: {:?}", r.run_output);
    let linux = assert_esp_boots(&m, &rel2, "after boot-files");
    assert!(linux.starts_with(&format!("/dockroot/dockroot/{rel2}-")), "{linux}");
    let dirs = m.esp_list("/dockroot/dockroot").expect("no /dockroot/dockroot on the ESP");
    assert_eq!(dirs.len(), 1, "old or partial files left on the ESP: {dirs:?}");
    assert!(m.esp_read_bytes(&format!("{}/linux", m.get("esp_dir_v1"))).is_none(), "v1's kernel is still on the ESP");
    let entries = m.esp_list("/loader/entries").unwrap();
    assert_eq!(entries, vec!["dockroot.conf".to_string()], "{entries:?}");

    // The following boot runs 6.12 from the ESP directly.
    m.set_run_script("");
    let (r, out) = m.boot("uefi_v2_direct");
    summary("uefi_v2_direct", &out);
    assert!(!out.contains("by kexec"), "{}", out.tail(40));
    let k = kernel(&r);
    assert_eq!(k["running"], rel2.as_str(), "{k}");
    assert_eq!(k["kexec_from"], Value::Null, "{k}");
    assert_eq!(k["modules_match"], true, "{k}");
}

/// Power cuts while boot-files writes the ESP: each boot switches the machine to the
/// other image (v1: 6.1, v2: 6.12) and runs boot-files, and QEMU is killed some time
/// after boot-files starts; the next boot must still come up (whichever kernel the ESP
/// has, kexecing if it is not the image's) and its boot-files run after a cut may be
/// cut again; the last one runs to the end, and the ESP is then consistent.
#[test]
fn uefi_power_cut_during_boot_files() {
    let m = UefiMachine::from_env();
    let (v1, v2) = (m.get("v1_id"), m.get("v2_id"));
    let rel = |id: &str| if id == v1 { m.get("release_v1") } else { m.get("release_v2") };
    // (image the boot switches to, ms after "boot-files begin" to cut; None: no cut)
    let steps: [(&str, Option<u64>); 4] = [(&v2, Some(300)), (&v1, Some(1500)), (&v2, Some(4000)), (&v1, None)];
    for (i, (image, cut)) in steps.iter().enumerate() {
        m.set_run_script(&format!("/run/dockroot/dockroot switch {image}\n{BOOT_FILES}"));
        let name = format!("uefi_cut_{i}");
        let mut spec = m.spec(&name);
        spec.kill_after = cut.map(|ms| KillAfter {
            needle: "DOCKROOT-UEFI boot-files begin".into(),
            delay: Duration::from_millis(ms),
            deadline: Some("DOCKROOT-UEFI boot-files exit".into()),
        });
        let out = qemu_tests::boot(&spec);
        summary(&name, &out);
        let r = qemu_tests::parse_uefi_report(&out.serial);
        // Whatever the previous cut left on the ESP, this boot came up.
        let running = r.uname.clone().unwrap_or_else(|| panic!("{name}: the machine did not boot: {}", out.tail(60)));
        assert!(r.boot_json.is_some(), "{name}: no boot.json: {}", out.tail(40));
        assert_eq!(kernel(&r)["modules_match"], true, "{name}: {}", kernel(&r));
        eprintln!(
            "uefi: {name}: ran {running}, cut {:?}, ESP /dockroot/dockroot: {:?}",
            out.cut.as_ref().map(|c| c.after_needle),
            m.esp_list("/dockroot/dockroot")
        );
        match cut {
            Some(_) => assert!(out.cut.is_some(), "{name}: never cut: {}", out.tail(40)),
            None => {
                // The rerun completes: the ESP boots the image switched to, with nothing left over.
                assert_eq!(boot_files_exit(&r), Some(0), "{name}: boot-files failed: {:?}", r.run_output);
                assert_esp_boots(&m, &rel(image), &name);
                let dirs = m.esp_list("/dockroot/dockroot").unwrap();
                assert_eq!(dirs.len(), 1, "{name}: old or partial files on the ESP: {dirs:?}");
            }
        }
    }
    // And that ESP boots that image's kernel directly.
    m.set_run_script("");
    let (r, out) = m.boot("uefi_cut_after");
    summary("uefi_cut_after", &out);
    assert_eq!(kernel(&r)["running"], rel(&v1).as_str(), "{}", kernel(&r));
    assert_eq!(kernel(&r)["kexec_from"], Value::Null, "{}", kernel(&r));
}
