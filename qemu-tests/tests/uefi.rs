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
use std::sync::Mutex;
use std::time::Duration;

/// One UEFI machine at a time (scripts/test runs tests two at a time): two Debian
/// boots under TCG on a small host slow each other down, and the power-cut test times
/// its cuts from a reference run.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The test script's lines that run boot-files and print its exit status, with the
/// guest's uptime before and after (how long it took) and when a content directory
/// being written (`*.dockroot-tmp`) first shows on the ESP (mounted at /boot/efi by the
/// top layer's fstab; polled every 50 ms).
const BOOT_FILES: &str = "echo \"DOCKROOT-UEFI boot-files begin $(cut -d' ' -f1 /proc/uptime)\"\n\
    ( while sleep 0.05; do for d in /boot/efi/dockroot/dockroot/*.dockroot-tmp; do \
    if [ -e \"$d\" ]; then echo \"DOCKROOT-UEFI boot-files writing $(cut -d' ' -f1 /proc/uptime)\"; exit 0; fi; \
    done; done ) &\n\
    poller=$!\n\
    /run/dockroot/dockroot boot-files --json\n\
    rc=$?\n\
    kill $poller 2>/dev/null\n\
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

/// The unit of the boot-files run at boot, triggered by the path unit and at shutdown.
const BOOT_FILES_UNIT: &str = "dockroot-boot-files.service";
/// The runtime unit the init leaves on a boot on trial.
const BLESS_UNIT: &str = "dockroot-bless.service";
/// The bad image's failing health check.
const CHECK_UNIT: &str = "dockroot-test-check.service";

/// The per-boot script that points the tag at `image_id` in the running system's Docker
/// store, as `docker pull` does (a new repositories.json renamed over the old), then waits
/// (bounded) for the boot-files unit the path unit starts, and reports how it ended.
fn retag_in_guest(m: &UefiMachine, image_id: &str) -> String {
    let key = format!("{}:{}", m.get("image"), m.get("tag"));
    format!(
        "f=/{docker}/image/btrfs/repositories.json\n\
         before=$(systemctl show -P InvocationID {BOOT_FILES_UNIT})\n\
         sed 's|\"{key}\":\"[^\"]*\"|\"{key}\":\"{image_id}\"|' \"$f\" >\"$f.new\" && mv \"$f.new\" \"$f\" || exit 8\n\
         grep -q '\"{key}\":\"{image_id}\"' \"$f\" || exit 7\n\
         i=0\n\
         while [ $i -lt 600 ]; do\n\
             id=$(systemctl show -P InvocationID {BOOT_FILES_UNIT}); state=$(systemctl show -P ActiveState {BOOT_FILES_UNIT})\n\
             [ \"$id\" != \"$before\" ] && [ \"$state\" != activating ] && [ \"$state\" != active ] && break\n\
             sleep 0.5; i=$((i + 1))\n\
         done\n\
         [ \"$id\" != \"$before\" ] && echo \"DOCKROOT-UEFI path-run $(systemctl show -p ActiveState -p Result -p ExecMainStatus {BOOT_FILES_UNIT} | tr '\\n' ' ')\"\n",
        docker = m.get("docker_path"),
    )
}

/// What the boot-files unit the path unit started reported (None: it did not run).
fn path_run(r: &UefiReport) -> Option<String> {
    r.run_output.iter().find_map(|l| l.split("DOCKROOT-UEFI path-run ").nth(1).map(|v| v.trim().to_string()))
}

/// boot.json's `"trial"`.
fn trial(r: &UefiReport) -> &Value {
    &r.boot_json.as_ref().unwrap()["trial"]
}

/// systemd saw dockroot's stage: `InitRDTimestampMonotonic` set and `systemd-analyze`
/// counting an "(initrd)" term.
fn assert_systemd_saw_the_initramfs(r: &UefiReport, out: &BootOutput, name: &str) {
    assert!(r.initrd_timestamp.unwrap_or(0) > 0, "{name}: InitRDTimestampMonotonic {:?}", r.initrd_timestamp);
    let analyze = r.analyze.as_deref().unwrap_or("");
    assert!(analyze.contains("(initrd)"), "{name}: systemd-analyze time: {analyze:?}; {}", out.tail(20));
}

/// The boot-time run of boot-files (its unit, enabled in the image) ended well.
fn assert_boot_files_unit_ran(r: &UefiReport, name: &str) {
    let props = r.units.get(BOOT_FILES_UNIT);
    assert_eq!(r.unit(BOOT_FILES_UNIT, "Result"), "success", "{name}: {props:?}");
    assert_eq!(r.unit(BOOT_FILES_UNIT, "ExecMainStatus"), "0", "{name}: {props:?}");
    assert_eq!(r.unit("dockroot-boot-files.path", "ActiveState"), "active", "{name}: {:?}", r.units);
}

/// The machine's life through its image (issues 11 and 12), one boot after another:
/// 1. v1 boots through OVMF and systemd-boot with no kexec; it is on trial and the
///    init's runtime unit blesses it at boot-complete.target; systemd sees the
///    initramfs stage; the boot-files unit at boot rewrites the fixture's ESP files
///    under boot-files' own names.
/// 2. The tag names v2 (Debian 13's kernel): the boot kexecs into it, and the
///    boot-files unit at boot puts 6.12 on the ESP.
/// 3. The next boot runs 6.12 directly; v2 is blessed (not counted). In it, the tag is
///    moved to the bad image in the running system's store: the path unit runs
///    boot-files, which puts the bad image's kernel (6.1) on the ESP.
/// 4. and 5. The bad image boots twice (dockroot.tries=2), its health check fails,
///    nothing blesses it.
/// 6. The init refuses it and boots the last blessed image, v2, with FALLBACK and the
///    reason; no kexec: boot-files in the last try (the same rule as the boot) had
///    already put v2's 6.12 on the ESP.
/// 7. The bad image stays refused. `dockroot switch` to v1 in that boot, and a clean
///    power-off: the shutdown unit's boot-files puts v1's kernel on the ESP.
#[test]
fn uefi_machine_follows_its_image() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let m = UefiMachine::from_env();
    let rel1 = m.get("release_v1");
    let rel2 = m.get("release_v2");
    let (v1_id, v2_id, bad_id) = (m.get("v1_id"), m.get("v2_id"), m.get("bad_id"));
    assert!(rel1.starts_with("6.1."), "{rel1}");
    assert!(rel2.starts_with("6.12."), "{rel2}");
    assert_eq!(m.info["tries"], 2, "the fixture's entry sets dockroot.tries=2");

    // 1. The ESP's kernel is the image's: it boots directly.
    let (r, out) = m.boot("uefi_v1");
    summary("uefi_v1", &out);
    assert_eq!(r.uname.as_deref(), Some(rel1.as_str()), "{}", out.tail(40));
    let k = kernel(&r);
    assert_eq!(k["running"], rel1.as_str(), "{k}");
    assert_eq!(k["modules_match"], true, "{k}");
    assert_eq!(k["kexec_from"], Value::Null, "{k}");
    assert!(!out.contains("by kexec"), "{}", out.tail(40));
    let b = r.boot_json.as_ref().unwrap();
    assert!(b.to_string().contains(&v1_id), "boot.json does not name v1's ID: {b}");
    // The top layer's fstab mounts the ESP at /boot/efi, as on any Debian machine.
    assert_eq!(r.esp_mount.as_deref(), Some("/dev/vda1 vfat"), "{}", out.tail(40));
    // A new image on trial: this boot used one of its two tries, the runtime unit
    // blessed it at boot-complete.target, and the next boot will not count.
    assert_eq!(trial(&r)["state"], "on trial", "{}", trial(&r));
    assert_eq!(trial(&r)["tries_left"], 1, "{}", trial(&r));
    assert!(out.contains(&format!("image {v1_id} is on trial: this boot is try 1 of 2")), "{}", out.tail(40));
    assert_eq!(r.unit(BLESS_UNIT, "ActiveState"), "active", "{:?}", r.units);
    assert_eq!(r.unit(BLESS_UNIT, "Result"), "success", "{:?}", r.units);
    assert_eq!(r.unit(CHECK_UNIT, "LoadState"), "not-found", "v1 has no health check: {:?}", r.units);
    let status = r.status.as_ref().unwrap_or_else(|| panic!("status --json printed no JSON: {}", out.tail(40)));
    assert_eq!(status["next_boot"]["trial"]["state"], "blessed", "{status}");
    assert_eq!(status["next_boot"]["trial"]["blessed"], serde_json::json!([v1_id]), "{status}");
    assert_systemd_saw_the_initramfs(&r, &out, "uefi_v1");
    // The boot-files unit at boot: the fixture's files are now under boot-files' names.
    assert_boot_files_unit_ran(&r, "uefi_v1");
    let linux = assert_esp_boots(&m, &rel1, "after the boot-time boot-files");
    assert!(linux.starts_with(&format!("/dockroot/dockroot/{rel1}-")), "{linux}");
    assert!(
        m.esp_read_bytes(&format!("{}/linux", m.get("esp_dir_v1"))).is_none(),
        "the fixture's kernel is still on the ESP"
    );

    // 2. The tag now names v2 (what `docker build -t` of the new version does); the
    // ESP still has 6.1. This boot kexecs into the image's 6.12; the boot-files unit
    // at boot writes it to the ESP, nobody calls the command.
    m.retag(&v2_id);
    let (r, out) = m.boot("uefi_v2_kexec");
    summary("uefi_v2_kexec", &out);
    assert!(out.contains(&kexec_line(&m)), "no kexec on the console: {}", out.tail(60));
    assert_eq!(r.uname.as_deref(), Some(rel2.as_str()));
    let k = kernel(&r);
    assert_eq!(k["running"], rel2.as_str(), "{k}");
    assert_eq!(k["kexec_from"], rel1.as_str(), "{k}");
    assert_eq!(k["modules_match"], true, "{k}");
    let b = r.boot_json.as_ref().unwrap();
    assert!(b.to_string().contains(&v2_id), "boot.json does not name v2's ID: {b}");
    assert_eq!(trial(&r)["state"], "on trial", "{}", trial(&r));
    assert_eq!(r.unit(BLESS_UNIT, "Result"), "success", "{:?}", r.units);
    assert_systemd_saw_the_initramfs(&r, &out, "uefi_v2_kexec");
    // The ESP holds 6.12 under /dockroot/dockroot/ and the entry names it; v1's files
    // are gone.
    assert_boot_files_unit_ran(&r, "uefi_v2_kexec");
    let linux = assert_esp_boots(&m, &rel2, "after boot-files at boot");
    assert!(linux.starts_with(&format!("/dockroot/dockroot/{rel2}-")), "{linux}");
    let dirs = m.esp_list("/dockroot/dockroot").expect("no /dockroot/dockroot on the ESP");
    assert_eq!(dirs.len(), 1, "old or partial files left on the ESP: {dirs:?}");
    let entries = m.esp_list("/loader/entries").unwrap();
    assert_eq!(entries, vec!["dockroot.conf".to_string()], "{entries:?}");

    // 3. The following boot runs 6.12 from the ESP directly; v2 is blessed, not
    // counted. A pull in the running system moves the tag to the bad image: the path
    // unit runs boot-files, which writes the bad image's kernel (Debian 12's).
    m.set_run_script(&retag_in_guest(&m, &bad_id));
    let (r, out) = m.boot("uefi_v2_direct");
    summary("uefi_v2_direct", &out);
    assert!(!out.contains("by kexec"), "{}", out.tail(40));
    let k = kernel(&r);
    assert_eq!(k["running"], rel2.as_str(), "{k}");
    assert_eq!(k["kexec_from"], Value::Null, "{k}");
    assert_eq!(k["modules_match"], true, "{k}");
    assert_eq!(trial(&r)["state"], "blessed", "{}", trial(&r));
    assert!(!out.contains("is on trial"), "a blessed image's boot is not counted: {}", out.tail(40));
    assert_eq!(r.unit(BLESS_UNIT, "LoadState"), "not-found", "no bless unit when not on trial: {:?}", r.units);
    assert_eq!(r.run_exit, Some(0), "{:?}", r.run_output);
    let run = path_run(&r).unwrap_or_else(|| panic!("the path unit did not start boot-files: {:?}", r.run_output));
    assert!(run.contains("Result=success") && run.contains("ExecMainStatus=0"), "{run}");
    assert_esp_boots(&m, &rel1, "after the path unit's boot-files");
    assert_eq!(m.esp_list("/dockroot/dockroot").unwrap().len(), 1);

    // 4, 5. The bad image: on trial, its check fails, nothing blesses it.
    m.set_run_script("");
    for try_ in 1..=2 {
        let name = format!("uefi_bad_{try_}");
        let (r, out) = m.boot(&name);
        summary(&name, &out);
        let b = r.boot_json.as_ref().unwrap();
        assert!(b.to_string().contains(&bad_id), "{name}: boot.json does not name the bad image: {b}");
        assert_eq!(b["fallback"], Value::Null, "{name}: {b}");
        assert_eq!(trial(&r)["state"], "on trial", "{name}: {}", trial(&r));
        assert_eq!(trial(&r)["tries_left"], 2 - try_, "{name}: {}", trial(&r));
        assert!(out.contains(&format!("is on trial: this boot is try {try_} of 2")), "{name}: {}", out.tail(40));
        assert_eq!(r.unit(CHECK_UNIT, "Result"), "exit-code", "{name}: {:?}", r.units);
        assert_ne!(r.unit(BLESS_UNIT, "ActiveState"), "active", "{name}: blessed despite the check: {:?}", r.units);
        let status = r.status.as_ref().unwrap();
        let next = &status["next_boot"];
        assert_eq!(next["trial"]["last_blessed"]["image"], v2_id.as_str(), "{name}: {status}");
        if try_ == 2 {
            assert_eq!(next["outcome"], "fallback", "{name}: {status}");
            assert_eq!(next["trial"]["state"], "refused", "{name}: {status}");
            // boot-files at boot follows the same rule: the ESP already has the
            // kernel of the image the refusal goes back to (v2's 6.12).
            assert_esp_boots(&m, &rel2, &format!("{name}: boot-files for the fallback"));
        }
    }

    // 6, 7. Refused: the boot goes back to v2, the last blessed, and keeps refusing
    // while the tag names the bad image. In the second, a switch to v1 and a clean
    // power-off.
    let reason = format!("image {bad_id} is refused: failed 2 boots without being blessed");
    for (i, name) in ["uefi_refused", "uefi_still_refused"].into_iter().enumerate() {
        if i == 1 {
            m.set_run_script(&format!(
                "/run/dockroot/dockroot switch {}:v1 || exit 9\nmkdir -p /run/dockroot-test && touch /run/dockroot-test/clean-poweroff\n",
                m.get("image")
            ));
        }
        let (r, out) = m.boot(name);
        summary(name, &out);
        assert!(out.contains(&format!("FALLBACK: {reason}")), "{name}: no FALLBACK on the console: {}", out.tail(60));
        let b = r.boot_json.as_ref().unwrap();
        assert_eq!(b["fallback"]["reason"], reason.as_str(), "{name}: {b}");
        assert_eq!(b["fallback"]["booted"], v2_id.as_str(), "{name}: {b}");
        assert_eq!(b["image"]["id"], v2_id.as_str(), "{name}: {b}");
        assert_eq!(trial(&r)["state"], "refused", "{name}: {}", trial(&r));
        assert_eq!(trial(&r)["refused"], serde_json::json!([bad_id]), "{name}: {}", trial(&r));
        assert_eq!(r.uname.as_deref(), Some(rel2.as_str()), "{name}");
        assert_eq!(kernel(&r)["kexec_from"], Value::Null, "{name}: the ESP had the fallback's kernel");
        assert_boot_files_unit_ran(&r, name);
        if i == 0 {
            assert_esp_boots(&m, &rel2, &format!("{name}: after boot-files at boot"));
        }
    }
    // The shutdown unit ran boot-files after the switch: the ESP boots v1's kernel.
    assert_esp_boots(&m, &rel1, "after the shutdown unit's boot-files");
    assert_eq!(m.esp_list("/dockroot/dockroot").unwrap().len(), 1);
}

/// The console lines the cuts are timed from.
const BEGIN: &str = "DOCKROOT-UEFI boot-files begin ";
const WRITING: &str = "DOCKROOT-UEFI boot-files writing ";
const END: &str = "DOCKROOT-UEFI boot-files end ";

/// Where the cuts come: after which line, at which fraction of the time from that line
/// to boot-files' end in the reference run. Early (reading and hashing the image's
/// files), just after a content directory shows on the ESP, and late in the writing.
const CUTS: [(&str, f64); 3] = [(BEGIN, 0.15), (WRITING, 0.1), (WRITING, 0.6)];

/// The guest uptime a boot-files line printed.
fn uptime_at(r: &UefiReport, line: &str) -> Option<f64> {
    // The number only: a kernel message may follow on the same console line.
    let number = |v: &str| v.split(|c: char| !(c.is_ascii_digit() || c == '.')).next()?.parse::<f64>().ok();
    r.run_output.iter().find_map(|l| l.split(line).nth(1).and_then(number))
}

/// Power cuts while boot-files writes the ESP. Every boot switches the machine to the
/// image whose kernel the ESP does not have (v1: Debian 12's 6.1, v2: Debian 13's
/// 6.12: `dockroot switch`) and runs boot-files, so each run has a kernel and an
/// initramfs to write and old files to remove. The first run goes to the end and is timed; the next three are cut (QEMU
/// killed) at the points of [`CUTS`]. Each boot after a cut must come up (on whichever
/// kernel the ESP then names, kexecing into the image's if it is not that one), and
/// the last run, after the last cut, completes: the ESP then names the switched-to
/// image's kernel, with nothing left over. A cut whose moment comes after boot-files
/// ended (timing differs from run to run) is reported; at least two must hit.
#[test]
fn uefi_power_cut_during_boot_files() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let m = UefiMachine::from_env();
    let image = m.get("image");
    let v1 = (format!("{image}:v1"), m.get("release_v1"));
    let v2 = (m.get("v2_reference"), m.get("release_v2"));
    // From the reference run: seconds from each line to the end.
    let mut spans: Vec<(String, f64)> = Vec::new();
    let mut hits = 0;
    // The cut of each boot (None: none), in boot order.
    let cuts: Vec<Option<(&str, f64)>> =
        std::iter::once(None).chain(CUTS.iter().map(|c| Some(*c))).chain([None]).collect();
    for (i, cut) in cuts.iter().enumerate() {
        // The image whose kernel the ESP does not have: boot-files has files to write.
        let names_v2 = m.esp_read("/loader/entries/dockroot.conf").is_some_and(|e| e.contains(&v2.1));
        let (reference, release) = if names_v2 { &v1 } else { &v2 };
        m.set_run_script(&format!("/run/dockroot/dockroot switch {reference} || exit 9\n{BOOT_FILES}"));
        let name = format!("uefi_cut_{i}");
        let mut spec = m.spec(&name);
        spec.kill_after = cut.map(|(line, fraction)| {
            // Without a writing line in the reference run, time from the beginning.
            let (line, from) = match spans.iter().find(|(l, _)| l == line) {
                Some((l, s)) => (l.clone(), *s),
                None => (BEGIN.to_string(), spans.iter().find(|(l, _)| l == BEGIN).map(|(_, s)| *s).unwrap_or(3.0)),
            };
            KillAfter {
                needle: line.trim_end().into(),
                delay: Duration::from_secs_f64(fraction * from),
                // A cut that would come after boot-files ended comes at once (counted below).
                deadline: Some(END.trim_end().into()),
            }
        });
        let out = qemu_tests::boot(&spec);
        summary(&name, &out);
        let r = qemu_tests::parse_uefi_report(&out.serial);
        // Whatever the previous cut left on the ESP, this boot came up, with its modules.
        let running = r.uname.clone().unwrap_or_else(|| panic!("{name}: the machine did not boot: {}", out.tail(60)));
        assert!(r.boot_json.is_some(), "{name}: no boot.json: {}", out.tail(40));
        assert_eq!(kernel(&r)["modules_match"], true, "{name}: {}", kernel(&r));
        let during = out.cut.as_ref().is_some_and(|c| c.after_needle.is_some());
        eprintln!(
            "uefi: {name}: ran {running}{}, boot-files to {release}: cut {:?} ({}), begin/writing/end at {:?}/{:?}/{:?} s; ESP /dockroot/dockroot now {:?}, entry {:?}",
            if out.contains("by kexec") { " (kexec)" } else { "" },
            spec.kill_after.as_ref().map(|k| (k.needle.clone(), k.delay)),
            match (&out.cut, during) {
                (None, _) => "no cut",
                (Some(_), true) => "cut during boot-files",
                (Some(_), false) => "boot-files ended first",
            },
            uptime_at(&r, BEGIN),
            uptime_at(&r, WRITING),
            uptime_at(&r, END),
            m.esp_list("/dockroot/dockroot"),
            m.esp_read("/loader/entries/dockroot.conf").and_then(|e| e.lines().find(|l| l.starts_with("linux")).map(str::to_string)),
        );
        if cut.is_some() {
            // What the cut left, for the record: /loader/entries and the ESP itself.
            eprintln!("uefi: {name}: /loader/entries after the cut: {:?}", m.esp_list("/loader/entries"));
            let esp = out.log_path.with_extension("esp.img");
            qemu_tests::sh(&format!(
                "dd if='{}' of='{}' bs=1M skip={} count={} conv=sparse status=none",
                m.disk.path().display(),
                esp.display(),
                m.info["esp_offset"].as_u64().unwrap() >> 20,
                m.info["esp_size"].as_u64().unwrap() >> 20
            ));
            hits += usize::from(during);
            continue;
        }
        // This run completes: the ESP boots the image switched to, nothing left over.
        assert_eq!(boot_files_exit(&r), Some(0), "{name}: boot-files failed: {:?}", r.run_output);
        assert_esp_boots(&m, release, &name);
        let dirs = m.esp_list("/dockroot/dockroot").unwrap();
        assert_eq!(dirs, vec![dirs[0].clone()], "{name}: old or partial files on the ESP");
        assert!(dirs[0].starts_with(&format!("{release}-")), "{name}: {dirs:?}");
        if spans.is_empty() {
            let end = uptime_at(&r, END).expect("the reference run's end");
            for line in [BEGIN, WRITING] {
                if let Some(at) = uptime_at(&r, line) {
                    spans.push((line.to_string(), end - at));
                }
            }
        }
    }
    assert!(hits >= 2, "only {hits} of {} cuts came while boot-files ran", CUTS.len());
}
