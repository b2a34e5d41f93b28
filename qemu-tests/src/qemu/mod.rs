//! One boot in QEMU: the command line ([`BootSpec`] to `qemu-system-x86_64`), the
//! process, its console ([`console`]) and the watchers that end it or act on it while
//! it runs ([`watch`]). The command line is built purely; spawning, the console threads
//! and QMP are the thin process part.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::{target_dir, BootOutput, BootSpec, DiskInterface, DiskSpec};

pub mod console;
mod qmp;
pub mod spec;
mod watch;

use console::Capture;
use qmp::HOTPLUG_XHCI;
use watch::{CutWatch, HotplugWatch, Timeout, Watcher};

/// Boots `spec` in QEMU and returns the serial output once the VM powers off, reboots
/// (`-no-reboot` makes that an exit), or is killed at the timeout.
pub fn boot(spec: &BootSpec) -> BootOutput {
    let name = spec.name.clone().unwrap_or_else(test_name);
    let log_dir = target_dir().join("qemu-logs");
    fs::create_dir_all(&log_dir).unwrap_or_else(|e| panic!("creating {}: {e}", log_dir.display()));
    let log_path = log_dir.join(format!("{name}.log"));
    let qmp_dir = tempfile::Builder::new()
        .prefix("dockroot-qmp-")
        .tempdir()
        .unwrap_or_else(|e| panic!("creating a directory for the QMP socket: {e}"));
    let qmp_path = qmp_dir.path().join("qmp.sock");
    let mut cmd = qemu_command(spec, &qmp_path);

    let started = Instant::now();
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("starting qemu-system-x86_64: {e} ({cmd:?})"));
    let watch_console = !spec.hotplug.is_empty() || spec.kill_after.is_some();
    let mut console = Capture::start(&mut child, &log_path, &format!("# {cmd:?}"), watch_console);

    let mut timeout = Timeout { limit: spec.timeout, fired: false };
    let mut hotplug = HotplugWatch::new(&spec.hotplug, qmp_path);
    let mut cut = spec.kill_after.clone().map(CutWatch::new);
    let mut watchers: Vec<&mut dyn Watcher> = vec![&mut timeout];
    if let Some(c) = cut.as_mut() {
        watchers.push(c);
    }
    if !spec.hotplug.is_empty() {
        watchers.push(&mut hotplug);
    }
    let status = watch::watch(&mut child, &console.live, started, &mut watchers);
    drop(watchers);
    hotplug.close();
    let elapsed = started.elapsed();
    let mut serial = console.finish();

    for h in &hotplug.pending {
        serial.push_str(&format!("\n# harness: hotplug of {} never happened\n", h.1.disk.path.display()));
    }
    for h in &hotplug.done {
        console.log(&format!("# harness: {} plugged in at {:.2} s wall\n", h.id, h.at.as_secs_f64()));
    }
    let cut = cut.and_then(|c| c.cut);
    if let Some(c) = &cut {
        let how = match c.after_needle {
            Some(d) => format!("{} ms after the kill line", d.as_millis()),
            None => "at the deadline line".to_string(),
        };
        let line = format!("# harness: QEMU killed (power cut) at {:.3} s wall, {how}\n", c.at.as_secs_f64());
        serial.push_str(&line);
        console.log(&line);
    }
    let output =
        BootOutput { serial, status, timed_out: timeout.fired, elapsed, log_path, hotplugged: hotplug.done, cut };

    // Always visible (not captured by the test harness): how long the boot took.
    let fmt = |t: Option<f64>| t.map(|t| format!("{t:.2} s")).unwrap_or_else(|| "-".into());
    let _ = writeln!(
        std::io::stderr(),
        "boot {name}: {:.1} s wall{}, kernel ran /init at {}, /init to testinit {} (log {})",
        output.elapsed.as_secs_f64(),
        if output.timed_out { " (TIMED OUT)" } else { "" },
        fmt(output.kernel_to_init()),
        fmt(output.time_to_init()),
        output.log_path.display()
    );
    output
}

/// The QEMU command for `spec` (pure): serial console on stdout, no reboot, the
/// kernel, initrd, command line (or the UEFI firmware) and disks; a QMP socket at
/// `qmp_path` if it hotplugs.
fn qemu_command(spec: &BootSpec, qmp_path: &Path) -> Command {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio"]);
    cmd.arg("-m").arg(spec.memory_mb.to_string());
    if std::env::var("DOCKROOT_QEMU_KVM").as_deref() == Ok("1") {
        cmd.args(["-accel", "kvm", "-cpu", "host"]);
    } else {
        cmd.args(["-accel", "tcg"]);
    }
    if let Some(firmware) = &spec.firmware {
        // UEFI: the firmware boots the first disk's ESP; the loader there picks the
        // kernel, initramfs and command line.
        cmd.arg("-bios").arg(firmware);
    } else {
        cmd.arg("-kernel").arg(&spec.kernel).arg("-initrd").arg(&spec.initrd);
        // no_timer_check: under TCG on a busy host, the kernel's IO-APIC timer check can
        // miss its ticks and panic ("IO-APIC + timer doesn't work!") before any init runs.
        let mut append =
            std::ffi::OsString::from(format!("console=ttyS0 panic=-1 printk.time=1 no_timer_check {}", spec.append));
        if !spec.append_raw.is_empty() {
            append.push(" ");
            append.push(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&spec.append_raw));
        }
        cmd.arg("-append").arg(append);
    }
    for (i, d) in spec.disks.iter().enumerate() {
        cmd.args(qemu_drive_args(i, d));
    }
    if !spec.hotplug.is_empty() {
        cmd.arg("-qmp").arg(format!("unix:{},server=on,wait=off", qmp_path.display()));
        if spec.hotplug.iter().any(|h| h.disk.interface == DiskInterface::Usb) {
            cmd.arg("-device").arg(format!("qemu-xhci,id={HOTPLUG_XHCI}"));
        }
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd
}

fn test_name() -> String {
    let t = std::thread::current();
    let name = t.name().filter(|n| *n != "main").unwrap_or("boot");
    name.replace("::", "__").replace(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'), "_")
}

fn qemu_drive_args(i: usize, d: &DiskSpec) -> Vec<String> {
    let file = d.path.display().to_string().replace(',', ",,");
    match d.interface {
        DiskInterface::Virtio => vec!["-drive".into(), format!("file={file},format=raw,if=virtio")],
        DiskInterface::Ide => vec!["-drive".into(), format!("file={file},format=raw,if=ide,index={i}")],
        DiskInterface::Nvme => vec![
            "-drive".into(),
            format!("file={file},format=raw,if=none,id=nvme{i}"),
            "-device".into(),
            format!("nvme,drive=nvme{i},serial=dockroot{i}"),
        ],
        DiskInterface::VirtioScsi => vec![
            "-device".into(),
            format!("virtio-scsi-pci,id=scsi{i}"),
            "-drive".into(),
            format!("file={file},format=raw,if=none,id=scsid{i}"),
            "-device".into(),
            format!("scsi-hd,drive=scsid{i},bus=scsi{i}.0"),
        ],
        DiskInterface::Ahci => vec![
            "-device".into(),
            format!("ich9-ahci,id=ahci{i}"),
            "-drive".into(),
            format!("file={file},format=raw,if=none,id=ahcid{i}"),
            "-device".into(),
            format!("ide-hd,drive=ahcid{i},bus=ahci{i}.0"),
        ],
        DiskInterface::Usb => vec![
            "-device".into(),
            format!("qemu-xhci,id=xhci{i}"),
            "-drive".into(),
            format!("file={file},format=raw,if=none,id=usbd{i}"),
            "-device".into(),
            format!("usb-storage,drive=usbd{i},bus=xhci{i}.0,serial=dockroot{i}"),
        ],
    }
}
