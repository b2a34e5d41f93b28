//! Putting the initramfs together: the init, the config, the device node the
//! kernel needs for stdio, the modules and their index, as one compressed cpio.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use dockroot::error::{Context, Error, Result};
use dockroot::modules::{write_index, DECOMPRESS_MARKER, INDEX_PATH};
use dockroot::record::{INIT_VERSION_PREFIX, MANIFEST_IN_INITRAMFS};

use crate::compress::{compress, read_capped, Compression};
use crate::cpio::Archive;
use crate::elf;
use crate::kmod::{self, Found, KernelTree, Plan, Request};

/// Where the config goes in the initramfs (the prior art's path).
pub const CONFIG_PATH: &str = "etc/docker-btrfs.json";
/// The largest init binary accepted.
pub const INIT_MAX_BYTES: u64 = 64 << 20;
/// The largest config file read (the init refuses more than 64 KiB anyway).
pub const CONFIG_MAX_BYTES: u64 = 1 << 20;

/// Filesystems the generic image carries: the root, the top layer on ext4,
/// xfs or vfat, and overlay for stores that keep layers as directories
/// (Docker's overlay2, podman, containerd). The init loads one when it is about
/// to mount it (its `fs-TYPE` alias), not at every boot.
pub const DEFAULT_FILESYSTEMS: &[&str] = &["btrfs", "ext4", "xfs", "vfat", "overlay"];

/// Drivers the generic image carries for common machines and VMs, loaded at
/// boot only when a device's modalias matches one of their aliases. Names this
/// kernel lacks (built in, or not shipped) are skipped with a note.
pub const DEFAULT_DRIVERS: &[&str] = &[
    // VMs: virtio (QEMU/KVM, most clouds), VMware, Hyper-V, Xen.
    "virtio_pci",
    "virtio_blk",
    "virtio_scsi",
    "vmw_pvscsi",
    "hv_storvsc",
    "xen_blkfront",
    // Disks: NVMe, SATA (AHCI, and QEMU's default PIIX IDE), SAS HBAs and RAID, SCSI disks.
    "nvme",
    "ahci",
    "ata_piix",
    "mpt3sas",
    "megaraid_sas",
    "sd_mod",
    // USB disks: host controllers, mass storage and UAS.
    "xhci_pci",
    "ehci_pci",
    "ohci_pci",
    "uhci_hcd",
    "usb_storage",
    "uas",
    // SD cards and eMMC.
    "mmc_block",
    "sdhci_pci",
    "sdhci_acpi",
];

/// Filesystem types whose mounts need more than their own module.
// vfat mounts need the code page (cp437) and the I/O charset, which Debian's
// kernels default to "ascii" (FAT_DEFAULT_IOCHARSET): without nls_ascii an ESP
// fails to mount with EINVAL ("IO charset ascii not found").
const FS_EXTRAS: &[(&str, &[&str])] = &[("vfat", &["nls_cp437", "nls_ascii", "nls_iso8859_1", "nls_utf8"])];

/// The modules a mount of `fstype` needs besides its own ([`FS_EXTRAS`]).
fn fs_extras(fstype: &str) -> impl Iterator<Item = String> + '_ {
    FS_EXTRAS.iter().filter(move |(t, _)| *t == fstype).flat_map(|(_, extras)| extras.iter().map(|s| s.to_string()))
}

/// What to build.
#[derive(Debug, Clone)]
pub struct Options {
    /// `/lib/modules/RELEASE`.
    pub kernel_modules: PathBuf,
    /// The kernel release; default: the file name of `kernel_modules`.
    pub kernel_release: Option<String>,
    /// Modules asked for by name (`--module`).
    pub modules: Vec<String>,
    pub config: PathBuf,
    /// The config's bytes when they do not come from reading `config` (the
    /// packages' `--update` makes them from its settings); `config` then names
    /// their source in messages.
    pub config_bytes: Option<Vec<u8>>,
    pub output: PathBuf,
    /// The init binary; default: `dockroot-init` next to this program.
    pub init: Option<PathBuf>,
    /// The `dockroot` commands binary (`--commands`).
    pub commands: Commands,
    pub compression: Compression,
    /// mtime of every entry (0, or SOURCE_DATE_EPOCH).
    pub mtime: u32,
    /// Only what this machine needs (`--hostonly`).
    pub hostonly: bool,
    /// The generic set even with `--module` names, which are then loaded at
    /// every boot besides it (the packages' `MODE=generic` with `MODULES=`).
    pub generic: bool,
    /// The sysfs `--hostonly` reads (`--sysfs`, default `/sys`).
    pub sysfs: PathBuf,
    /// The mount table `--hostonly` reads (`--mounts`, default `/proc/self/mounts`).
    pub mounts: PathBuf,
    /// Where firmware files are (`--firmware-dir`); default: `lib/firmware` next
    /// to the modules directory's `lib/modules`.
    pub firmware_dir: Option<PathBuf>,
    /// Store modules compressed as shipped (`--keep-compressed`).
    pub keep_compressed: bool,
    /// The kernel's build configuration (`--kernel-config`); default:
    /// `boot/config-RELEASE` next to the modules directory's `lib/modules`.
    pub kernel_config: Option<PathBuf>,
}

impl Options {
    /// Options with the defaults for everything but the required paths.
    pub fn new(kernel_modules: PathBuf, config: PathBuf, output: PathBuf) -> Options {
        Options {
            kernel_modules,
            kernel_release: None,
            modules: Vec::new(),
            config,
            config_bytes: None,
            output,
            init: None,
            commands: Commands::Default,
            compression: Compression::Zstd,
            mtime: 0,
            hostonly: false,
            generic: false,
            sysfs: PathBuf::from("/sys"),
            mounts: PathBuf::from("/proc/self/mounts"),
            firmware_dir: None,
            keep_compressed: false,
            kernel_config: None,
        }
    }
}

/// Which modules the image carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// No `--module`, no `--hostonly`: [`DEFAULT_FILESYSTEMS`] before their mount, [`DEFAULT_DRIVERS`] by modalias.
    Generic,
    /// `--module` names only, all loaded at every boot.
    Listed,
    /// `--hostonly`: what this machine's devices and mounts need.
    HostOnly(HostOnly),
}

/// What `--hostonly` found on this machine.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostOnly {
    /// Modalias strings of the devices.
    pub modaliases: usize,
    /// Modules whose aliases matched them.
    pub drivers: Vec<String>,
    /// Filesystem types mounted at / and /boot*.
    pub filesystems: Vec<String>,
}

/// A firmware file going into the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Firmware {
    /// Its path in the image: `lib/firmware/NAME` (with `.xz`/`.zst` if stored so).
    pub image_path: String,
    pub len: usize,
}

/// Which `dockroot` commands binary goes into the image (at the init's
/// `record::COMMANDS_IN_INITRAMFS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Commands {
    /// `dockroot` next to this program, when it is there.
    Default,
    /// `--commands PATH`: it must be there.
    Path(PathBuf),
    /// `--commands none`.
    Leave,
}

/// What went into the image, for the summary.
#[derive(Debug)]
pub struct Built {
    /// The compressed image.
    pub image: Vec<u8>,
    /// Size of the cpio before compression.
    pub cpio_len: usize,
    pub init: PathBuf,
    pub init_len: usize,
    /// The commands binary included and its size; or why none is.
    pub commands: std::result::Result<(PathBuf, usize), String>,
    /// The image the config names, normalised.
    pub config_image: String,
    /// The module plan (module data dropped).
    pub plan: Plan,
    pub mode: Mode,
    /// Firmware files included.
    pub firmware: Vec<Firmware>,
    /// Firmware named by included modules but not found: (module, name).
    pub firmware_missing: Vec<MissingFirmware>,
    /// Where firmware was looked for.
    pub firmware_dir: PathBuf,
    /// The init decompresses modules itself (built with `decompress-modules`).
    pub init_decompresses: bool,
    /// The init's version, when it is a dockroot init ([`init_version`]).
    pub init_version: Option<String>,
    /// With `--keep-compressed`: each compressed module format kept, and who decompresses it.
    pub kept: Vec<Kept>,
}

/// Who decompresses a module kept compressed at boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decompressor {
    /// The kernel (finit_module with MODULE_INIT_COMPRESSED_FILE; its configuration says it can).
    Kernel,
    /// The init (built with the `decompress-modules` feature).
    Init,
}

/// One compressed module format kept by `--keep-compressed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    /// `.xz`, `.zst` or `.gz`.
    pub suffix: &'static str,
    /// How many module files of the image are in it.
    pub count: usize,
    pub by: Decompressor,
}

/// Where `needle` first starts in `haystack`.
fn find_bytes(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Does this init binary decompress modules itself? True if it carries
/// [`DECOMPRESS_MARKER`], which an init has only when built with the
/// `decompress-modules` feature.
pub fn init_decompresses_modules(init: &[u8]) -> bool {
    find_bytes(init, DECOMPRESS_MARKER.as_bytes()).is_some()
}

/// The version of a dockroot init binary: the line its `--version` prints
/// (`dockroot::record::INIT_VERSION_LINE`: `dockroot-init VERSION` and a
/// newline) is whole in the binary. `None` for another program.
pub fn init_version(init: &[u8]) -> Option<String> {
    let prefix = INIT_VERSION_PREFIX.as_bytes();
    let mut at = 0usize;
    while let Some(i) = init.get(at..).and_then(|rest| find_bytes(rest, prefix)) {
        let start = at.saturating_add(i).saturating_add(prefix.len());
        let rest = init.get(start..).unwrap_or_default();
        let len = rest.iter().take(64).take_while(|b| b.is_ascii_alphanumeric() || b".+-~".contains(b)).count();
        let version = rest.get(..len).unwrap_or_default();
        if version.first().is_some_and(u8::is_ascii_digit) && rest.get(len) == Some(&b'\n') {
            return std::str::from_utf8(version).ok().map(str::to_owned);
        }
        at = start;
    }
    None
}

/// The manifest the builder writes at `dockroot::record::MANIFEST_IN_INITRAMFS`.
pub fn manifest(init_version: Option<&str>) -> String {
    let m = serde_json::json!({
        "dockroot_initramfs": 1,
        "builder": env!("CARGO_PKG_VERSION"),
        "init_version": init_version,
    });
    format!("{m}\n")
}

/// `BASE` of a modules directory `BASE/lib/modules/RELEASE`, if it has that shape.
fn base_of(modules_dir: &Path) -> Option<&Path> {
    let lib_modules = modules_dir.parent()?;
    if !lib_modules.ends_with("lib/modules") {
        return None;
    }
    lib_modules.parent()?.parent()
}

/// Where firmware is looked for by default: `BASE/lib/firmware` for
/// `BASE/lib/modules/RELEASE` (so `/lib/firmware` for the host's own modules).
pub fn default_firmware_dir(modules_dir: &Path) -> PathBuf {
    base_of(modules_dir).map(|b| b.join("lib/firmware")).unwrap_or_else(|| PathBuf::from("/lib/firmware"))
}

/// Where the kernel configuration is by default: `BASE/boot/config-RELEASE`.
pub fn default_kernel_config(modules_dir: &Path, release: &str) -> Option<PathBuf> {
    base_of(modules_dir).map(|b| b.join("boot").join(format!("config-{release}")))
}

/// The kernel release of a modules directory: its file name.
pub fn release_of(dir: &Path) -> Result<String> {
    dir.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned)
        .context(|| format!("cannot tell the kernel release from {}: give --kernel-release", dir.display()))
}

/// The default `--init`: `dockroot` in the directory of this executable.
pub fn default_init() -> Result<PathBuf> {
    let exe = std::env::current_exe().context(|| "finding this program's own path (for the default --init)")?;
    Ok(exe.with_file_name("dockroot-init"))
}

/// The commands binary to include, checked like the init; `Ok(Err(why))` when
/// none is included (`--commands none`, or the default is not there).
fn read_commands(c: &Commands) -> Result<std::result::Result<(PathBuf, Vec<u8>), String>> {
    let path = match c {
        Commands::Leave => return Ok(Err("left out (--commands none)".into())),
        Commands::Path(p) => p.clone(),
        Commands::Default => {
            let exe = std::env::current_exe().context(|| "finding this program's own path (for --commands)")?;
            let p = exe.with_file_name("dockroot");
            // The default is taken when it can be, and said when not: a note, not an error.
            if !p.exists() {
                return Ok(Err(format!("none: {} is not there (scripts/build builds it)", p.display())));
            }
            return Ok(read_commands(&Commands::Path(p)).unwrap_or_else(|e| Err(format!("none: {e}"))));
        }
    };
    if !path.exists() {
        return Err(Error::msg(format!(
            "the commands binary {} does not exist: build it with scripts/build, or give --commands none",
            path.display()
        )));
    }
    let data = read_capped(&path, INIT_MAX_BYTES)?;
    elf::check_static_x86_64(&data).map_err(|e| {
        Error::msg(format!(
            "{} cannot be the initramfs's dockroot commands: {e}; they must be a static x86-64 executable \
             (scripts/build)",
            path.display()
        ))
    })?;
    Ok(Ok((path, data)))
}

/// Read the init and check it can run alone as `/init`.
fn read_init(path: &Path) -> Result<Vec<u8>> {
    if !path.exists() {
        return Err(Error::msg(format!(
            "the init binary {} does not exist: build it with scripts/build, or give --init PATH",
            path.display()
        )));
    }
    let data = read_capped(path, INIT_MAX_BYTES)?;
    elf::check_static_x86_64(&data).map_err(|e| {
        Error::msg(format!(
            "{} cannot be the initramfs /init: {e}; it must be a static x86-64 executable: build it with scripts/build, \
             or `cargo build --release` in the dockroot repository (its .cargo/config.toml makes the binaries \
             static; a RUSTFLAGS variable replaces those flags)",
            path.display()
        ))
    })?;
    Ok(data)
}

/// A kernel build configuration (`CONFIG_X=y` lines).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelConfig {
    pub path: PathBuf,
    values: BTreeMap<String, String>,
}

impl KernelConfig {
    /// Parse the text of a kernel `.config`.
    pub fn parse(path: &Path, text: &str) -> KernelConfig {
        let mut values = BTreeMap::new();
        for line in text.lines().map(str::trim) {
            // `# CONFIG_X is not set` says the option exists and is off.
            if let Some(key) = line.strip_prefix("# ").and_then(|l| l.strip_suffix(" is not set")) {
                values.insert(key.to_owned(), "n".to_owned());
            } else if let Some((k, v)) = line.split_once('=').filter(|(k, _)| k.starts_with("CONFIG_")) {
                values.insert(k.to_owned(), v.trim_matches('"').to_owned());
            }
        }
        KernelConfig { path: path.to_owned(), values }
    }

    /// Read `path`; `Ok(None)` if it does not exist.
    pub fn read(path: &Path) -> Result<Option<KernelConfig>> {
        if !path.exists() {
            return Ok(None);
        }
        let bytes = read_capped(path, CONFIG_MAX_BYTES.saturating_mul(16))?;
        Ok(Some(KernelConfig::parse(path, &String::from_utf8_lossy(&bytes))))
    }

    /// True if `key` is `y` (built in).
    pub fn is_y(&self, key: &str) -> bool {
        self.values.get(key).is_some_and(|v| v == "y")
    }

    /// Can the kernel load modules compressed with `suffix` (`.xz`, `.zst`,
    /// `.gz`) itself (finit_module with MODULE_INIT_COMPRESSED_FILE)? It needs
    /// CONFIG_MODULE_DECOMPRESS and was built for one compression only.
    pub fn decompresses_modules(&self, suffix: &str) -> std::result::Result<(), String> {
        let (key, kind) = compression_config(suffix);
        if !self.is_y("CONFIG_MODULE_DECOMPRESS") {
            return Err(format!("{} does not set CONFIG_MODULE_DECOMPRESS=y", self.path.display()));
        }
        if !self.is_y(key) {
            return Err(format!(
                "{} has CONFIG_MODULE_DECOMPRESS but not {key}=y: it decompresses other modules than {kind}",
                self.path.display()
            ));
        }
        Ok(())
    }

    /// Does the kernel's firmware loader read `.xz`/`.zst` firmware files?
    pub fn decompresses_firmware(&self, suffix: &str) -> bool {
        match suffix {
            // Before 5.19, CONFIG_FW_LOADER_COMPRESS alone meant xz.
            ".xz" => {
                self.is_y("CONFIG_FW_LOADER_COMPRESS_XZ")
                    || self.is_y("CONFIG_FW_LOADER_COMPRESS")
                        && !self.values.contains_key("CONFIG_FW_LOADER_COMPRESS_XZ")
            }
            ".zst" => self.is_y("CONFIG_FW_LOADER_COMPRESS_ZSTD"),
            _ => true,
        }
    }
}

fn compression_config(suffix: &str) -> (&'static str, &'static str) {
    match suffix {
        ".xz" => ("CONFIG_MODULE_COMPRESS_XZ", "xz"),
        ".zst" => ("CONFIG_MODULE_COMPRESS_ZSTD", "zstd"),
        _ => ("CONFIG_MODULE_COMPRESS_GZIP", "gzip"),
    }
}

/// Mount points of a mount table (`/proc/self/mounts`) at `/`, `/boot` and
/// below `/boot`, with their filesystem types. Octal escapes (`\040`) decoded.
pub fn root_and_boot_filesystems(mounts: &str) -> Vec<(String, String)> {
    let unescape = |s: &str| -> String {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0usize;
        while let Some(&c) = b.get(i) {
            let oct =
                b.get(i.saturating_add(1)..i.saturating_add(4)).filter(|d| d.iter().all(|x| (b'0'..=b'7').contains(x)));
            match (c, oct) {
                (b'\\', Some(d)) => {
                    let v = d.iter().fold(0u32, |a, x| a * 8 + u32::from(x - b'0'));
                    out.push(u8::try_from(v).unwrap_or(b'?'));
                    i = i.saturating_add(4);
                }
                _ => {
                    out.push(c);
                    i = i.saturating_add(1);
                }
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    let mut out = Vec::new();
    for line in mounts.lines() {
        let mut f = line.split_whitespace();
        let (Some(_), Some(target), Some(fstype)) = (f.next(), f.next(), f.next()) else { continue };
        let target = unescape(target);
        if target == "/" || target == "/boot" || target.starts_with("/boot/") {
            out.push((target, fstype.to_owned()));
        }
    }
    out
}

/// Find what `--hostonly` needs on this machine: drivers for its devices
/// (the modalias strings of the devices under `sysfs`), modules for the filesystems at
/// `/` and `/boot*`.
fn hostonly_request(opts: &Options, tree: &mut KernelTree) -> Result<(Request, HostOnly)> {
    let modaliases = dockroot::modules::collect_modaliases(&opts.sysfs).map_err(|e| {
        e.context(format!("--hostonly: reading the modalias strings of this machine under {}", opts.sysfs.display()))
    })?;
    let table = tree.alias_table()?;
    let mut drivers = BTreeSet::new();
    for modalias in modaliases.keys() {
        drivers.extend(table.lookup(modalias));
    }
    let mounts = read_capped(&opts.mounts, CONFIG_MAX_BYTES.saturating_mul(16))
        .map_err(|e| e.context("--hostonly: reading the mount table"))?;
    let mut filesystems: BTreeSet<String> = BTreeSet::new();
    for (_, fstype) in root_and_boot_filesystems(&String::from_utf8_lossy(&mounts)) {
        filesystems.insert(fstype);
    }
    let mut always = vec!["btrfs".to_string()];
    for fs in &filesystems {
        let name =
            if matches!(tree.find(&format!("fs-{fs}"))?, Found::Absent) { fs.clone() } else { format!("fs-{fs}") };
        always.push(name);
        always.extend(fs_extras(fs));
    }
    let found = HostOnly {
        modaliases: modaliases.len(),
        drivers: drivers.iter().cloned().collect(),
        filesystems: filesystems.into_iter().collect(),
    };
    let request = Request {
        always,
        required_always: opts.modules.clone(),
        drivers: drivers.into_iter().collect(),
        keep_compressed: opts.keep_compressed,
        ..Request::default()
    };
    Ok((request, found))
}

/// Who decompresses each compressed module format `--keep-compressed` keeps: the
/// kernel when its configuration says it can, else the init if it was built with
/// `decompress-modules` (`init_decompresses`); anything else is refused, naming
/// both remedies.
fn check_keep_compressed(
    opts: &Options,
    release: &str,
    plan: &Plan,
    init: &Path,
    init_decompresses: bool,
) -> Result<Vec<Kept>> {
    let mut counts: BTreeMap<&'static str, usize> = BTreeMap::new();
    for m in &plan.modules {
        if let Some(s) = crate::compress::module_suffix(&m.source) {
            let c = counts.entry(s).or_default();
            *c = c.saturating_add(1);
        }
    }
    if counts.is_empty() {
        return Ok(Vec::new());
    }
    let remedies = "drop --keep-compressed (the modules are then stored decompressed), or give an --init \
                    built with --features decompress-modules (it decompresses what the kernel cannot)";
    let path = match (&opts.kernel_config, default_kernel_config(&opts.kernel_modules, release)) {
        (Some(p), _) => Some(p.clone()),
        (None, p) => p,
    };
    let config = match &path {
        Some(p) => KernelConfig::read(p)?,
        None => None,
    };
    let Some(config) = config else {
        if init_decompresses {
            // The init decompresses whatever the kernel turns out not to.
            return Ok(counts
                .into_iter()
                .map(|(suffix, count)| Kept { suffix, count, by: Decompressor::Init })
                .collect());
        }
        let missing = match &path {
            Some(p) => format!("{} does not exist", p.display()),
            None => "no kernel configuration found".to_owned(),
        };
        return Err(Error::msg(format!(
            "--keep-compressed: cannot tell whether kernel {release} decompresses modules itself ({missing}) \
             and the init {} does not decompress them: give --kernel-config FILE, or {remedies}",
            init.display()
        )));
    };
    let mut kept = Vec::new();
    for (suffix, count) in counts {
        let by = match config.decompresses_modules(suffix) {
            Ok(()) => Decompressor::Kernel,
            Err(_) if init_decompresses => Decompressor::Init,
            Err(why) => {
                return Err(Error::msg(format!(
                    "--keep-compressed: kernel {release} cannot load .ko{suffix} modules itself ({why}) and the \
                     init {} was built without the decompress-modules feature: {remedies}",
                    init.display()
                )))
            }
        };
        kept.push(Kept { suffix, count, by });
    }
    Ok(kept)
}

/// Firmware a module names that was not found: (module, file name).
pub type MissingFirmware = (String, String);

/// The most bytes read of one firmware file.
pub const FIRMWARE_MAX_BYTES: u64 = 64 << 20;

/// Add the firmware the modules name: `DIR/NAME`, or `NAME.zst`/`NAME.xz` as
/// the kernel's loader tries them, stored as found (decompressed if the
/// kernel configuration is known and its loader cannot read that suffix).
fn add_firmware(
    archive: &mut Archive,
    plan: &Plan,
    dir: &Path,
    config: Option<&KernelConfig>,
) -> Result<(Vec<Firmware>, Vec<MissingFirmware>)> {
    let mut done: BTreeSet<&str> = BTreeSet::new();
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for m in &plan.modules {
        for name in &m.firmware {
            if !done.insert(name.as_str()) {
                continue;
            }
            if name.is_empty() || !Path::new(name).components().all(|c| matches!(c, std::path::Component::Normal(_))) {
                missing.push((m.name.clone(), format!("{name} (not a clean relative path, ignored)")));
                continue;
            }
            let Some((suffix, path)) =
                ["", ".zst", ".xz"].iter().map(|s| (*s, dir.join(format!("{name}{s}")))).find(|(_, p)| p.is_file())
            else {
                missing.push((m.name.clone(), name.clone()));
                continue;
            };
            let data = read_capped(&path, FIRMWARE_MAX_BYTES)?;
            let (image_path, data) = match config {
                Some(c) if !suffix.is_empty() && !c.decompresses_firmware(suffix) => {
                    let plain = crate::compress::decompress_file(&path, data, FIRMWARE_MAX_BYTES)?;
                    (format!("lib/firmware/{name}"), plain)
                }
                _ => (format!("lib/firmware/{name}{suffix}"), data),
            };
            found.push(Firmware { image_path: image_path.clone(), len: data.len() });
            archive.add_file(&image_path, 0o644, data)?;
        }
    }
    Ok((found, missing))
}

/// Build the compressed image in memory.
pub fn build_image(opts: &Options) -> Result<Built> {
    let init_path = match &opts.init {
        Some(p) => p.clone(),
        None => default_init()?,
    };
    let init = read_init(&init_path)?;
    let init_decompresses = init_decompresses_modules(&init);
    let init_version = init_version(&init);

    let config = match &opts.config_bytes {
        Some(bytes) => bytes.clone(),
        None => read_capped(&opts.config, CONFIG_MAX_BYTES)?,
    };
    let spec = dockroot::reference::from_prior_art_config(&config)
        .map_err(|e| e.context(format!("checking the config {}", opts.config.display())))?;

    let release = match &opts.kernel_release {
        Some(r) => r.clone(),
        None => release_of(&opts.kernel_modules)?,
    };
    let mut tree = KernelTree::open(&opts.kernel_modules, &release)?;
    let (request, mode) = if opts.hostonly {
        let (request, found) = hostonly_request(opts, &mut tree)?;
        (request, Mode::HostOnly(found))
    } else if opts.modules.is_empty() || opts.generic {
        let filesystems = DEFAULT_FILESYSTEMS
            .iter()
            .map(|fs| (fs.to_string(), std::iter::once(fs.to_string()).chain(fs_extras(fs)).collect()))
            .collect();
        let request = Request {
            required_always: opts.modules.clone(),
            drivers: DEFAULT_DRIVERS.iter().map(|s| s.to_string()).collect(),
            filesystems,
            keep_compressed: opts.keep_compressed,
            ..Request::default()
        };
        (request, Mode::Generic)
    } else {
        let request = Request {
            required_always: opts.modules.clone(),
            keep_compressed: opts.keep_compressed,
            ..Request::default()
        };
        (request, Mode::Listed)
    };
    let mut plan = kmod::plan(&mut tree, &request)?;
    let kept = if opts.keep_compressed {
        check_keep_compressed(opts, &release, &plan, &init_path, init_decompresses)?
    } else {
        Vec::new()
    };
    let index = write_index(&plan.index())?;

    let mut archive = Archive::new();
    for dir in ["dev", "proc", "sys", "run", "etc"] {
        archive.add_dir(dir, 0o755)?;
    }
    archive.add_dir(&format!("lib/modules/{release}"), 0o755)?;
    // The kernel opens /dev/console for /init's stdin, stdout and stderr before
    // devtmpfs exists: without this node /init starts with no stdio.
    archive.add_char_device("dev/console", 0o600, 5, 1)?;
    archive.add_file("init", 0o755, init)?;
    let commands = match read_commands(&opts.commands)? {
        Ok((path, data)) => {
            let len = data.len();
            // Where the init looks for them, and its parent directories.
            let at = dockroot::record::COMMANDS_IN_INITRAMFS.trim_start_matches('/');
            let dirs: Vec<&str> = at.match_indices('/').filter_map(|(i, _)| at.get(..i)).collect();
            for d in dirs {
                archive.add_dir(d, 0o755)?;
            }
            archive.add_file(at, 0o755, data)?;
            Ok((path, len))
        }
        Err(why) => Err(why),
    };
    archive.add_file(CONFIG_PATH, 0o644, config)?;
    archive.add_file(INDEX_PATH, 0o644, index.into_bytes())?;
    archive.add_file(MANIFEST_IN_INITRAMFS, 0o644, manifest(init_version.as_deref()).into_bytes())?;
    let init_len = std::fs::metadata(&init_path).map(|m| m.len() as usize).unwrap_or(0);
    for m in &mut plan.modules {
        archive.add_file(&m.image_path, 0o644, std::mem::take(&mut m.data))?;
    }
    let firmware_dir = opts.firmware_dir.clone().unwrap_or_else(|| default_firmware_dir(&opts.kernel_modules));
    let kernel_config = match (&opts.kernel_config, default_kernel_config(&opts.kernel_modules, &release)) {
        (Some(p), _) => {
            KernelConfig::read(p)?.context(|| format!("--kernel-config {} does not exist", p.display())).map(Some)?
        }
        (None, Some(p)) => KernelConfig::read(&p)?,
        (None, None) => None,
    };
    let (firmware, firmware_missing) = add_firmware(&mut archive, &plan, &firmware_dir, kernel_config.as_ref())?;
    let cpio = archive.write(opts.mtime)?;
    let image = compress(&cpio, opts.compression)?;
    Ok(Built {
        image,
        cpio_len: cpio.len(),
        init: init_path,
        init_len,
        commands,
        config_image: spec.to_string(),
        plan,
        mode,
        firmware,
        firmware_missing,
        firmware_dir,
        init_decompresses,
        init_version,
        kept,
    })
}

/// Write `data` to `path` through a temporary file in the same directory and a rename.
pub fn write_atomically(path: &Path, data: &[u8]) -> Result<()> {
    let name = path.file_name().context(|| format!("output {} has no file name", path.display()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp).context(|| format!("creating {}", tmp.display()))?;
        f.write_all(data).context(|| format!("writing {}", tmp.display()))?;
        f.sync_all().context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).context(|| format!("renaming {} to {}", tmp.display(), path.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn list(names: impl IntoIterator<Item = impl AsRef<str>>) -> String {
    names.into_iter().map(|n| n.as_ref().to_owned()).collect::<Vec<_>>().join(" ")
}

/// The summary printed on stderr.
pub fn summary(opts: &Options, built: &Built) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "dockroot-mkinitramfs: wrote {} ({}): {} bytes of cpio, {} bytes {}",
        opts.output.display(),
        opts.compression.name(),
        built.cpio_len,
        built.image.len(),
        if opts.compression == Compression::None { "uncompressed" } else { "compressed" }
    );
    let _ = writeln!(
        s,
        "  init: {} ({}, {} bytes{})",
        built.init.display(),
        built
            .init_version
            .as_deref()
            .map_or("not a dockroot init: no version".to_owned(), |v| format!("dockroot-init {v}")),
        built.init_len,
        if built.init_decompresses { ", decompresses modules itself: built with decompress-modules" } else { "" }
    );
    match &built.commands {
        Ok((path, len)) => {
            let _ = writeln!(s, "  commands: {} ({len} bytes), left at /run/dockroot/dockroot at boot", path.display());
        }
        Err(why) => {
            let _ = writeln!(s, "  commands: {why}");
        }
    }
    let _ = writeln!(s, "  config: {} (image {})", opts.config.display(), built.config_image);
    let plan = &built.plan;
    match &built.mode {
        Mode::Generic => {
            let _ =
                writeln!(s, "  generic image: filesystems before their mount, drivers when a device's modalias asks");
            if !opts.modules.is_empty() {
                let _ = writeln!(s, "  and at every boot: {}", list(&opts.modules));
            }
        }
        Mode::Listed => {
            let _ = writeln!(s, "  modules named by --module, loaded at every boot");
        }
        Mode::HostOnly(h) => {
            let _ = writeln!(
                s,
                "  hostonly: {} modalias strings under {}/devices matched {} modules: {}",
                h.modaliases,
                opts.sysfs.display(),
                h.drivers.len(),
                list(&h.drivers)
            );
            let _ = writeln!(
                s,
                "  hostonly: filesystems at / and /boot ({}): {}",
                opts.mounts.display(),
                if h.filesystems.is_empty() { "none".to_owned() } else { list(&h.filesystems) }
            );
        }
    }
    let (always, by_modalias) = plan.counts();
    let aliases: usize = plan.modules.iter().flat_map(|m| &m.aliases).filter(|a| !a.starts_with("fs-")).count();
    let filesystems: Vec<&str> = plan
        .modules
        .iter()
        .flat_map(|m| &m.aliases)
        .filter_map(|a| a.strip_prefix("fs-"))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let _ = writeln!(
        s,
        "  kernel {}: {} modules ({always} always, {by_modalias} by modalias; {aliases} device aliases; \
         filesystems {}) in load order: {}",
        plan.release,
        plan.modules.len(),
        if filesystems.is_empty() { "none".to_owned() } else { filesystems.join(" ") },
        list(plan.modules.iter().map(|m| &m.name))
    );
    if !plan.builtin.is_empty() {
        let _ = writeln!(s, "  built into the kernel (skipped): {}", list(&plan.builtin));
    }
    if !plan.absent.is_empty() {
        let _ = writeln!(s, "  not in this kernel (skipped): {}", list(&plan.absent));
    }
    let compressed = plan.modules.iter().filter(|m| crate::compress::module_suffix(&m.source).is_some()).count();
    if compressed > 0 {
        if opts.keep_compressed {
            let by = |who: Decompressor| {
                let parts: Vec<String> =
                    built.kept.iter().filter(|k| k.by == who).map(|k| format!("{} .ko{}", k.count, k.suffix)).collect();
                (!parts.is_empty()).then(|| parts.join(", "))
            };
            let mut whom = Vec::new();
            if let Some(k) = by(Decompressor::Kernel) {
                whom.push(format!("the kernel decompresses {k}"));
            }
            if let Some(i) = by(Decompressor::Init) {
                whom.push(format!("the init decompresses {i}"));
            }
            let _ = writeln!(s, "  kept {compressed} module files compressed: {}", whom.join("; "));
        } else {
            let _ = writeln!(s, "  decompressed {compressed} compressed module files (.ko.xz/.ko.zst/.ko.gz)");
        }
    }
    if !built.firmware.is_empty() {
        let bytes: usize = built.firmware.iter().map(|f| f.len).sum();
        let _ = writeln!(
            s,
            "  firmware from {}: {} files ({bytes} bytes): {}",
            built.firmware_dir.display(),
            built.firmware.len(),
            list(built.firmware.iter().map(|f| f.image_path.trim_start_matches("lib/firmware/")))
        );
    }
    for (module, name) in &built.firmware_missing {
        let _ = writeln!(
            s,
            "  note: firmware {name} (named by {module}) is not in {}: devices that need it will not work",
            built.firmware_dir.display()
        );
    }
    for note in &plan.notes {
        let _ = writeln!(s, "  note: {note}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_an_init_that_decompresses_modules_by_its_marker() {
        let marker = DECOMPRESS_MARKER.as_bytes();
        let with = |before: &[u8], after: &[u8]| [before, marker, after].concat();
        assert!(init_decompresses_modules(&with(b"\x7fELF....", b"\0rest")));
        assert!(init_decompresses_modules(marker), "the whole input");
        assert!(init_decompresses_modules(&with(b"", b"")));
        // Near misses: the first byte repeated before it, a cut-off or altered copy.
        assert!(init_decompresses_modules(&with(&marker[..5], b"")));
        assert!(!init_decompresses_modules(&marker[..marker.len() - 1]));
        let mut altered = marker.to_vec();
        if let Some(last) = altered.last_mut() {
            *last ^= 1;
        }
        assert!(!init_decompresses_modules(&altered));
        assert!(!init_decompresses_modules(b""));
        // What an init without the feature says about it is not the marker.
        assert!(!init_decompresses_modules(
            b"this init was built without the decompress-modules feature: rebuild the initramfs"
        ));
    }

    #[test]
    fn finds_the_version_line_of_a_dockroot_init() {
        let line = dockroot::record::INIT_VERSION_LINE;
        assert!(line.starts_with(INIT_VERSION_PREFIX) && line.ends_with('\n'));
        let version = line.strip_prefix(INIT_VERSION_PREFIX).and_then(|l| l.strip_suffix('\n'));
        assert_eq!(version, Some(env!("CARGO_PKG_VERSION")));
        assert_eq!(init_version(format!("\x7fELF..{line}..").as_bytes()).as_deref(), version);
        // The usage text and format pieces that also start so come first, and are passed over.
        let binary = b"usage: dockroot-init [--version]\0dockroot-init : boots\0dockroot-init 0.2.0-rc.1+g1\nrest";
        assert_eq!(init_version(binary).as_deref(), Some("0.2.0-rc.1+g1"));
        for other in [&b""[..], b"dockroot-init ", b"dockroot-init 1.0", b"dockroot-init x1.0\n", b"busybox 1.35\n"] {
            assert_eq!(init_version(other), None, "{}", String::from_utf8_lossy(other));
        }
        let m: serde_json::Value = serde_json::from_str(&manifest(Some("1.2.3"))).unwrap();
        assert_eq!(m["dockroot_initramfs"], 1);
        assert_eq!(m["init_version"], "1.2.3");
        assert_eq!(m["builder"], env!("CARGO_PKG_VERSION"));
        let m: serde_json::Value = serde_json::from_str(&manifest(None)).unwrap();
        assert!(m["init_version"].is_null());
    }
}
