//! The UEFI machine ([`UefiMachine`]): a private copy of `make-uefi-disk`'s GPT disk,
//! booted through OVMF and the systemd-boot on its ESP into a real Debian image with
//! systemd, whose test service reports on the console ([`UefiReport`]). On the host
//! the ESP is read with mtools at its offset (this host's kernel has no vfat), the
//! btrfs partition is mounted through a loop device at its offset. Parsing the
//! report is pure; the rest runs host commands.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::disk::with_partition_mounted;
use crate::fixtures::required_env;
use crate::{boot, BootOutput, BootSpec, Disk};

/// Debian's OVMF build (package ovmf), the firmware of every UEFI boot.
pub const OVMF: &str = "/usr/share/ovmf/OVMF.fd";
/// How each line of the image's test service starts (`dockroot-test-report`).
pub const REPORT_MARKER: &str = "DOCKROOT-UEFI ";
/// A UEFI boot of Debian under TCG: firmware, systemd-boot, the kernel, dockroot,
/// systemd, maybe a kexec and a second kernel. Generous, but bounded.
pub const UEFI_BOOT_TIMEOUT: Duration = Duration::from_secs(900);
/// The test's per-boot script in the top layer (run by the test service).
pub const RUN_SCRIPT: &str = "toplayer/etc/dockroot-test/run";

/// What the booted system's test service printed.
#[derive(Debug, Clone, Default)]
pub struct UefiReport {
    /// `uname -r`.
    pub uname: Option<String>,
    /// What is mounted at /boot/efi (`findmnt`: source and type, or nothing).
    pub esp_mount: Option<String>,
    /// `/run/dockroot/boot.json`.
    pub boot_json: Option<Value>,
    /// `/run/dockroot/dockroot status --json` (None if it did not print JSON).
    pub status: Option<Value>,
    /// The per-boot script's exit status, if it ran to the end.
    pub run_exit: Option<i32>,
    /// The script's output (lines between its begin and exit markers).
    pub run_output: Vec<String>,
    /// dockroot's units (and the bad image's check): `systemctl show` properties
    /// (`LoadState`, `ActiveState`, `Result`, `ExecMainStatus`) by unit name.
    pub units: BTreeMap<String, BTreeMap<String, String>>,
    /// systemd's `InitRDTimestampMonotonic` (µs; 0 when it saw no initramfs stage).
    pub initrd_timestamp: Option<u64>,
    /// `systemd-analyze time` (its lines joined), once the boot finished.
    pub analyze: Option<String>,
    /// The service reached its power-off.
    pub powered_off: bool,
    /// The power-off was a clean one (`systemctl poweroff`: shutdown units ran).
    pub clean_poweroff: bool,
}

impl UefiReport {
    /// A property of a unit the report showed ("" when not shown).
    pub fn unit(&self, unit: &str, property: &str) -> &str {
        self.units.get(unit).and_then(|p| p.get(property)).map_or("", String::as_str)
    }
}

/// Parses the test service's lines out of a serial log.
pub fn parse_uefi_report(serial: &str) -> UefiReport {
    let mut r = UefiReport::default();
    let mut in_run = false;
    for line in serial.lines() {
        let line = line.trim_end_matches('\r');
        let Some(at) = line.find(REPORT_MARKER) else {
            if in_run {
                r.run_output.push(line.to_string());
            }
            continue;
        };
        let rest = line.get(at + REPORT_MARKER.len()..).unwrap_or("");
        let (key, value) = rest.split_once(' ').unwrap_or((rest, ""));
        match key {
            "uname" => r.uname = Some(value.trim().to_string()),
            "esp" => r.esp_mount = Some(value.trim().to_string()),
            "boot.json" => r.boot_json = serde_json::from_str(value).ok(),
            "status" => r.status = serde_json::from_str(value).ok(),
            "unit" => {
                let mut words = value.split_whitespace();
                if let Some(name) = words.next() {
                    let props = words.filter_map(|w| w.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string()));
                    r.units.insert(name.to_string(), props.collect());
                }
            }
            "initrd-timestamp" => r.initrd_timestamp = value.trim().parse().ok(),
            "analyze" => r.analyze = Some(value.trim().to_string()),
            "run" if value == "begin" => in_run = true,
            "run" => {
                in_run = false;
                r.run_exit = value.strip_prefix("exit ").and_then(|v| v.trim().parse().ok());
            }
            "poweroff" => {
                r.powered_off = true;
                r.clean_poweroff = value.trim() == "clean";
            }
            _ if in_run => r.run_output.push(line.to_string()),
            _ => {}
        }
    }
    r
}

/// One UEFI machine: a private copy of the UEFI fixture disk and what the fixture
/// says about it (`uefi.json`).
#[derive(Debug)]
pub struct UefiMachine {
    pub disk: Disk,
    /// The fixture's `uefi.json`: image IDs, releases, offsets, PARTUUIDs.
    pub info: Value,
}

impl UefiMachine {
    /// A copy of the disk `DOCKROOT_UEFI_DISK` names (from make-uefi-disk; the test
    /// fails when it is not set or missing).
    pub fn from_env() -> UefiMachine {
        let fixture = required_env("DOCKROOT_UEFI_DISK", "the disk from qemu-tests/fixtures/make-uefi-disk");
        let info_path = fixture.with_file_name("uefi.json");
        let text = std::fs::read_to_string(&info_path)
            .unwrap_or_else(|e| panic!("reading {} (written by make-uefi-disk): {e}", info_path.display()));
        let info = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", info_path.display()));
        assert!(Path::new(OVMF).is_file(), "{OVMF} not found: install ovmf (scripts/setup)");
        UefiMachine { disk: Disk::copy_of(&fixture), info }
    }

    /// A string field of `uefi.json`.
    pub fn get(&self, key: &str) -> String {
        self.info[key].as_str().unwrap_or_else(|| panic!("uefi.json has no string {key:?}: {}", self.info)).to_string()
    }

    fn number(&self, key: &str) -> u64 {
        self.info[key].as_u64().unwrap_or_else(|| panic!("uefi.json has no number {key:?}: {}", self.info))
    }

    /// The boot of the disk through OVMF, logged as `name`.
    pub fn spec(&self, name: &str) -> BootSpec {
        BootSpec { timeout: UEFI_BOOT_TIMEOUT, ..BootSpec::uefi(Path::new(OVMF), &[self.disk.path()], name) }
    }

    /// Boots and returns the report and the output; panics (with the log's end)
    /// unless the test service reported and powered off.
    pub fn boot(&self, name: &str) -> (UefiReport, BootOutput) {
        let out = boot(&self.spec(name));
        let r = parse_uefi_report(&out.serial);
        assert!(
            r.powered_off && r.boot_json.is_some() && r.uname.is_some(),
            "{name}: the booted system did not report and power off (timed out: {}); log {}; last lines:\n{}",
            out.timed_out,
            out.log_path.display(),
            out.tail(60)
        );
        (r, out)
    }

    /// Runs `f` on the btrfs partition's top level, mounted read-write on the host.
    pub fn modify_root<T>(&self, f: impl FnOnce(&Path) -> T) -> T {
        with_partition_mounted(self.disk.path(), self.number("root_offset"), self.number("root_size"), "rw", f)
    }

    /// Writes the per-boot script the test service runs (`sh SCRIPT`); an empty
    /// script removes it.
    pub fn set_run_script(&self, script: &str) {
        self.modify_root(|top| {
            let path = top.join(RUN_SCRIPT);
            if script.is_empty() {
                let _ = std::fs::remove_file(&path);
            } else {
                std::fs::write(&path, script).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
            }
        });
    }

    /// Points `image:tag` at `image_id` in the engine's repositories.json on the disk,
    /// which is what `docker build -t` or `docker pull` of a new version changes.
    pub fn retag(&self, image_id: &str) {
        let reference = format!("{}:{}", self.get("image"), self.get("tag"));
        let image = self.get("image");
        let docker_path = self.get("docker_path");
        self.modify_root(|top| {
            let path = top.join(&docker_path).join("image/btrfs/repositories.json");
            let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let mut repos: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            repos["Repositories"][&image][&reference] = Value::String(image_id.to_string());
            let tmp = path.with_extension("json.tmp");
            std::fs::write(&tmp, repos.to_string()).unwrap_or_else(|e| panic!("{}: {e}", tmp.display()));
            std::fs::rename(&tmp, &path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        });
    }

    /// `IMG@@OFFSET`, the ESP for mtools' `-i`.
    fn esp_image(&self) -> String {
        format!("{}@@{}", self.disk.path().display(), self.number("esp_offset"))
    }

    fn mtools(&self, tool: &str, args: &[&str]) -> Option<String> {
        let out = Command::new(tool)
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(self.esp_image())
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running {tool}: {e} (install mtools)"));
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A file on the ESP (`/loader/entries/dockroot.conf`), None if it is not there.
    pub fn esp_read(&self, path: &str) -> Option<String> {
        self.mtools("mtype", &[&format!("::{path}")])
    }

    /// The names in a directory of the ESP, sorted (None if it is not there).
    pub fn esp_list(&self, dir: &str) -> Option<Vec<String>> {
        let out = self.mtools("mdir", &["-b", &format!("::{dir}")])?;
        let mut names: Vec<String> = out
            .lines()
            .map(|l| l.trim().trim_end_matches('/'))
            .filter(|l| !l.is_empty())
            .map(|l| l.rsplit('/').next().unwrap_or(l).to_string())
            .filter(|n| n != "." && n != "..")
            .collect();
        names.sort();
        Some(names)
    }

    /// The size of a file on the ESP.
    pub fn esp_size(&self, path: &str) -> Option<u64> {
        self.esp_read_bytes(path).map(|b| b.len() as u64)
    }

    /// A file on the ESP as bytes.
    pub fn esp_read_bytes(&self, path: &str) -> Option<Vec<u8>> {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let dest: PathBuf = dir.path().join("file");
        self.mtools("mcopy", &["-n", &format!("::{path}"), &dest.display().to_string()])?;
        std::fs::read(&dest).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_test_services_report() {
        let serial = "[  OK  ] junk\r\nDOCKROOT-UEFI uname 6.12.1\r\nDOCKROOT-UEFI esp /dev/vda1 vfat\r\nDOCKROOT-UEFI boot.json {\"kernel\":{\"running\":\"6.12.1\"}}\r\n\
            DOCKROOT-UEFI status not json\r\nDOCKROOT-UEFI run begin\r\nhello\r\nDOCKROOT-UEFI marker x\r\n\
            DOCKROOT-UEFI run exit 3\r\nafter\r\nDOCKROOT-UEFI unit dockroot-bless.service LoadState=loaded ActiveState=active Result=success \r\n\
            DOCKROOT-UEFI initrd-timestamp 1234567\r\nDOCKROOT-UEFI analyze Startup finished in 1s (kernel) + 2s (initrd) \r\n\
            DOCKROOT-UEFI poweroff\r\n";
        let r = parse_uefi_report(serial);
        assert_eq!(r.uname.as_deref(), Some("6.12.1"));
        assert_eq!(r.esp_mount.as_deref(), Some("/dev/vda1 vfat"));
        assert_eq!(r.boot_json.as_ref().map(|b| b["kernel"]["running"].clone()), Some("6.12.1".into()));
        assert!(r.status.is_none());
        assert_eq!(r.run_exit, Some(3));
        assert_eq!(r.run_output, vec!["hello".to_string(), "DOCKROOT-UEFI marker x".to_string()]);
        assert!(r.powered_off && !r.clean_poweroff);
        assert_eq!(r.unit("dockroot-bless.service", "ActiveState"), "active");
        assert_eq!(r.unit("dockroot-bless.service", "ExecMainStatus"), "");
        assert_eq!(r.unit("other.service", "Result"), "");
        assert_eq!(r.initrd_timestamp, Some(1234567));
        assert_eq!(r.analyze.as_deref(), Some("Startup finished in 1s (kernel) + 2s (initrd)"));
        assert!(!parse_uefi_report("DOCKROOT-UEFI run begin\n").powered_off);
        assert!(parse_uefi_report("DOCKROOT-UEFI poweroff clean\n").clean_poweroff);
    }
}
