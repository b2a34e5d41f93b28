//! The artifacts the boot tests run against (all pure file and environment lookups):
//! the binaries, kernels and fixture disks `scripts/test` names in the environment,
//! the work and log directories, and initramfs images built (once per test process)
//! with the real builder.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::fs;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use serde_json::Value;

use crate::field;

/// The build outputs and downloads the boot tests run against.
#[derive(Debug, Clone)]
pub struct Artifacts {
    /// The static dockroot init (`/init` of the initramfs).
    pub init: PathBuf,
    /// The `dockroot-mkinitramfs` binary.
    pub mkinitramfs: PathBuf,
    /// The kernel directory from `scripts/fetch-kernel`.
    pub kernel_dir: PathBuf,
    /// The pristine fixture disk (boot a [`Disk::copy_of`] it, never the original).
    pub disk: PathBuf,
}

pub(crate) fn required_env(name: &str, what: &str) -> PathBuf {
    let value = std::env::var_os(name).unwrap_or_else(|| {
        panic!("{name} is not set: it must name {what}. Run the boot tests through scripts/test, which builds and sets everything.")
    });
    // Relative paths are taken from the workspace root (cargo runs tests in the package dir).
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(PathBuf::from(value));
    assert!(
        path.exists(),
        "{name}={} does not exist (it must name {what}); run scripts/test to build it",
        path.display()
    );
    path
}

impl Artifacts {
    /// Reads the artifacts from the environment `scripts/test` sets; panics with a
    /// message naming scripts/test if any is missing.
    pub fn from_env() -> Artifacts {
        Artifacts {
            init: required_env("DOCKROOT_INIT", "the static dockroot init binary"),
            mkinitramfs: required_env("DOCKROOT_MKINITRAMFS", "the dockroot-mkinitramfs binary"),
            kernel_dir: required_env("DOCKROOT_KERNEL_DIR", "a kernel directory from scripts/fetch-kernel"),
            disk: required_env("DOCKROOT_DISK", "the disk from qemu-tests/fixtures/make-docker-disk"),
        }
    }

    /// The `dockroot` commands binary (`DOCKROOT_CLI`), for `dockroot plan` and the like.
    pub fn cli() -> PathBuf {
        required_env("DOCKROOT_CLI", "the dockroot commands binary")
    }

    /// The static testinit binary (`DOCKROOT_TESTINIT`), for tests of the harness itself.
    pub fn testinit() -> PathBuf {
        required_env("DOCKROOT_TESTINIT", "the static testinit binary")
    }

    /// The same artifacts with the other kernel scripts/test fetched
    /// (`DOCKROOT_OTHER_KERNEL_DIR`: Debian 13 when the suite runs on Debian 12 and
    /// the other way round), for tests that need two kernel releases at once.
    pub fn with_other_kernel(&self) -> Artifacts {
        Artifacts {
            kernel_dir: required_env(
                "DOCKROOT_OTHER_KERNEL_DIR",
                "a second kernel directory from scripts/fetch-kernel",
            ),
            ..self.clone()
        }
    }

    /// The kernel image.
    pub fn kernel(&self) -> PathBuf {
        self.kernel_dir.join("vmlinuz")
    }

    /// The kernel release (the one directory under lib/modules).
    pub fn kernel_release(&self) -> String {
        let dir = self.kernel_dir.join("lib/modules");
        let mut releases: Vec<String> = fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(releases.len(), 1, "expected exactly one kernel release in {}, found {releases:?}", dir.display());
        releases.remove(0)
    }

    /// The kernel's module directory (`lib/modules/<release>`).
    pub fn modules_dir(&self) -> PathBuf {
        self.kernel_dir.join("lib/modules").join(self.kernel_release())
    }

    /// The fixture description `make-docker-disk` wrote next to the disk
    /// (label, UUID, image references, image IDs, layer cache IDs).
    pub fn fixture(&self) -> Value {
        let path = self.disk.with_file_name("fixture.json");
        let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
    }
}

/// The partitioned and multi-device disks `qemu-tests/fixtures/make-layouts` derives
/// from the fixture disk (boot [`Disk::copy_of`] them, never the originals).
#[derive(Debug, Clone)]
pub struct Layouts {
    /// GPT: partition 1 an ESP (vfat, label `ESP`, `toplayer/etc/hostname`),
    /// partition 2 (`dockroot-root`) the btrfs fixture.
    pub gpt: PathBuf,
    /// MBR (disk id 1234abcd): partition 1 the btrfs fixture, logical partition 5 an
    /// ext4 filesystem (label `mbr-logical`, `toplayer/etc/hostname`).
    pub mbr: PathBuf,
    /// btrfs RAID1 member devid 1 (the fixture's filesystem, same UUID).
    pub raid1a: PathBuf,
    /// btrfs RAID1 member devid 2.
    pub raid1b: PathBuf,
    /// `layouts.json`: the GUIDs, labels, devids of the layouts above.
    pub info: Value,
}

impl Layouts {
    /// Reads the `DOCKROOT_LAYOUT_*` variables `scripts/test` sets; panics naming the
    /// missing one and scripts/test if any is unset.
    pub fn from_env() -> Layouts {
        let what = "a disk layout from qemu-tests/fixtures/make-layouts";
        let info_path = required_env("DOCKROOT_LAYOUT_INFO", "layouts.json from qemu-tests/fixtures/make-layouts");
        let text = fs::read_to_string(&info_path).unwrap_or_else(|e| panic!("reading {}: {e}", info_path.display()));
        Layouts {
            gpt: required_env("DOCKROOT_LAYOUT_GPT", what),
            mbr: required_env("DOCKROOT_LAYOUT_MBR", what),
            raid1a: required_env("DOCKROOT_LAYOUT_RAID1A", what),
            raid1b: required_env("DOCKROOT_LAYOUT_RAID1B", what),
            info: serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", info_path.display())),
        }
    }

    /// A string field of `layouts.json` by a path of keys; panics if absent.
    pub fn get(&self, keys: &[&str]) -> String {
        match field(&self.info, keys) {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            other => panic!("layouts.json has no {keys:?} (found {other}); rebuild with make-layouts"),
        }
    }
}

impl Artifacts {
    /// The disk layouts for the hardware tests ([`Layouts::from_env`]).
    pub fn layouts(&self) -> Layouts {
        Layouts::from_env()
    }
}

/// One disk of `qemu-tests/fixtures/make-store-disks` (`DOCKROOT_STORE_<KEY>`, set by
/// scripts/test; boot a [`Disk::copy_of`] it) and the `fixture.json` next to it: what
/// the tool wrote (store, image ID, manifest digest, diff and chain IDs, the store's
/// layer IDs and directories), the top layer, the files the image must and must not show.
#[derive(Debug, Clone)]
pub struct StoreDisk {
    pub disk: PathBuf,
    pub fixture: Value,
}

impl StoreDisk {
    /// The disk `DOCKROOT_STORE_<key>` names; panics naming scripts/test if unset.
    pub fn from_env(key: &str) -> StoreDisk {
        let disk = required_env(&format!("DOCKROOT_STORE_{key}"), "a disk from qemu-tests/fixtures/make-store-disks");
        let path = disk.with_file_name("fixture.json");
        let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let fixture = serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()));
        StoreDisk { disk, fixture }
    }

    /// A string field of fixture.json; panics if absent.
    pub fn get(&self, key: &str) -> String {
        match &self.fixture[key] {
            Value::String(s) => s.clone(),
            other => panic!("fixture.json of {} has no string {key:?} (found {other})", self.disk.display()),
        }
    }

    /// A list of strings of fixture.json; panics if absent.
    pub fn list(&self, key: &str) -> Vec<String> {
        let items = self.fixture[key]
            .as_array()
            .unwrap_or_else(|| panic!("fixture.json of {} has no list {key:?}", self.disk.display()));
        items.iter().map(|v| v.as_str().unwrap_or_else(|| panic!("{key}: {v} is not a string")).to_string()).collect()
    }
}

/// Cargo's target directory (the nearest ancestor of the test binary holding
/// CACHEDIR.TAG), for logs and work files; the system temp dir otherwise.
pub fn target_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(d) = std::env::var_os("DOCKROOT_QEMU_WORK") {
            return PathBuf::from(d);
        }
        std::env::current_exe()
            .ok()
            .and_then(|exe| exe.ancestors().find(|a| a.join("CACHEDIR.TAG").is_file()).map(Path::to_path_buf))
            .unwrap_or_else(std::env::temp_dir)
    })
    .clone()
}

pub(crate) fn work_dir(sub: &str) -> PathBuf {
    let dir = target_dir().join("qemu-work").join(sub);
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    dir
}

fn hash_of(parts: &[&[u8]]) -> String {
    let mut h = DefaultHasher::new();
    for p in parts {
        p.hash(&mut h);
    }
    format!("{:016x}", h.finish())
}

fn stamp(path: &Path) -> Vec<u8> {
    let md = fs::metadata(path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display()));
    let mtime = md.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).unwrap_or_default();
    format!("{}:{}:{}", path.display(), md.len(), mtime.as_nanos()).into_bytes()
}

/// Builds (once per test process and inputs) an initramfs with the real builder:
/// `/init` = the dockroot init, the given kernel modules, and `config_json` as the
/// embedded config. Returns its path.
pub fn build_initramfs(artifacts: &Artifacts, modules: &[&str], config_json: &str) -> PathBuf {
    build_initramfs_with_init(artifacts, &artifacts.init, modules, config_json)
}

/// Like [`build_initramfs`] with another binary as `/init`.
pub fn build_initramfs_with_init(artifacts: &Artifacts, init: &Path, modules: &[&str], config_json: &str) -> PathBuf {
    static CACHE: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let modules_dir = artifacts.modules_dir();
    let joined = modules.join("\0");
    let key = hash_of(&[
        joined.as_bytes(),
        config_json.as_bytes(),
        &stamp(init),
        &stamp(&artifacts.mkinitramfs),
        modules_dir.as_os_str().as_encoded_bytes(),
    ]);
    // Hold the lock while building: tests asking for the same image wait for one build.
    let mut map = cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = map.get(&key) {
        return p.clone();
    }
    let dir = work_dir("initramfs");
    let config = dir.join(format!("{key}.json"));
    fs::write(&config, config_json).unwrap_or_else(|e| panic!("writing {}: {e}", config.display()));
    let output = dir.join(format!("{key}.img"));
    let partial = dir.join(format!("{key}.img.{}", std::process::id()));
    let mut cmd = Command::new(&artifacts.mkinitramfs);
    cmd.arg("--kernel-modules").arg(&modules_dir);
    for m in modules {
        cmd.arg("--module").arg(m);
    }
    cmd.arg("--config").arg(&config).arg("--output").arg(&partial).arg("--init").arg(init);
    let out = cmd.output().unwrap_or_else(|e| panic!("running {}: {e}", artifacts.mkinitramfs.display()));
    assert!(
        out.status.success(),
        "{:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        cmd,
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    fs::rename(&partial, &output)
        .unwrap_or_else(|e| panic!("renaming {} to {}: {e}", partial.display(), output.display()));
    map.insert(key, output.clone());
    output
}

/// The init built with the `decompress-modules` and `fault-injection` features
/// (`DOCKROOT_INIT_VARIANT`, made by scripts/build as `dockroot-test-variant`).
pub fn init_variant() -> PathBuf {
    required_env(
        "DOCKROOT_INIT_VARIANT",
        "the test variant of the init (scripts/build's dockroot-test-variant: decompress-modules, fault-injection)",
    )
}
