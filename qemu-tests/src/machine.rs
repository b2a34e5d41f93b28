//! One machine booted as often as a test likes ([`Machine`]): an initramfs, a private
//! copy of a disk and a command line, with the standard boots of the fixture disk.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::disk::{disk_fstype, with_disk_mounted, with_disk_mounted_ro};
use crate::{boot, build_initramfs, Artifacts, BootOutput, BootSpec, Disk};

/// The kernel modules of the standard boots: a virtio disk with btrfs on it.
pub const STANDARD_MODULES: &[&str] = &["virtio_blk", "virtio_pci", "btrfs"];
/// The embedded config naming the fixture disk's main image.
pub const OS_CONFIG: &str = r#"{"docker_image":"dockroot-test/os","docker_tag":"latest"}"#;
/// The standard kernel command line for the fixture disk: its rw layer `rwlayer`,
/// its top layer `toplayer/`.
pub const STANDARD_APPEND: &str =
    "root=LABEL=dockroot-test rootflags=subvol=rwlayer rw toplayer=LABEL=dockroot-test toplayer_path=toplayer";

/// One machine booted as often as a test likes: an initramfs and a private copy of
/// a disk, with a command line every boot starts with.
#[derive(Debug)]
pub struct Machine {
    pub artifacts: Artifacts,
    pub initrd: PathBuf,
    /// The machine's own copy of the disk.
    pub disk: Disk,
    /// The start of every boot's kernel command line.
    pub append: String,
}

impl Machine {
    /// A copy of the fixture disk, the standard modules and command line, and `config`
    /// as the initramfs's embedded config.
    pub fn new(config: &str) -> Machine {
        let a = Artifacts::from_env();
        let disk = a.disk.clone();
        Machine::with(a, &disk, STANDARD_MODULES, config, STANDARD_APPEND)
    }

    /// A copy of `disk` with an initramfs of `modules` and `config`; every boot's
    /// command line starts with `append`.
    pub fn with(artifacts: Artifacts, disk: &Path, modules: &[&str], config: &str, append: &str) -> Machine {
        let initrd = build_initramfs(&artifacts, modules, config);
        Machine { initrd, disk: Disk::copy_of(disk), append: append.to_string(), artifacts }
    }

    /// The boot of the machine's disk, logged as `name`, with `extra` after the
    /// machine's command line.
    pub fn spec(&self, name: &str, extra: &str) -> BootSpec {
        self.spec_cmdline(name, &format!("{} {extra}", self.append))
    }

    /// Like [`Machine::spec`] with a whole other command line.
    pub fn spec_cmdline(&self, name: &str, append: &str) -> BootSpec {
        BootSpec {
            name: Some(name.into()),
            ..BootSpec::new(self.artifacts.kernel(), self.initrd.clone(), &[self.disk.path()], append)
        }
    }

    /// Boots with `extra` after the machine's command line.
    pub fn boot(&self, name: &str, extra: &str) -> BootOutput {
        boot(&self.spec(name, extra))
    }

    /// Boots with a whole other command line.
    pub fn boot_cmdline(&self, name: &str, append: &str) -> BootOutput {
        boot(&self.spec_cmdline(name, append))
    }

    /// Boots and returns testinit's report, which must have no errors and a boot
    /// record, and the output.
    pub fn report_and_output(&self, name: &str, extra: &str) -> (Value, BootOutput) {
        let out = self.boot(name, extra);
        let r = out.expect_testinit();
        assert_eq!(r["errors"], serde_json::json!([]), "{name}: {r}");
        assert!(r["boot_record"].is_object(), "{name}: no /run/dockroot/boot.json in the booted system: {r}");
        (r, out)
    }

    /// Like [`Machine::report_and_output`], the report only.
    pub fn report(&self, name: &str, extra: &str) -> Value {
        self.report_and_output(name, extra).0
    }

    /// Runs `f` with the disk's top level mounted read-write on the host.
    pub fn modify<T>(&self, f: impl FnOnce(&Path) -> T) -> T {
        with_disk_mounted(self.disk.path(), &disk_fstype(self.disk.path()), "rw", f)
    }

    /// Runs `f` with the disk's top level mounted read-only on the host
    /// ([`with_disk_mounted_ro`]).
    pub fn inspect<T>(&self, f: impl FnOnce(&Path) -> T) -> T {
        with_disk_mounted_ro(self.disk.path(), f)
    }
}
