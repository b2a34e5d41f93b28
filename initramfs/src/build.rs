//! Putting the initramfs together: the init, the config, the device node the
//! kernel needs for stdio, the modules and their index, as one compressed cpio.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use dockroot::error::{Context, Error, Result};
use dockroot::modules::{write_index, INDEX_PATH};

use crate::compress::{compress, read_capped, Compression};
use crate::cpio::Archive;
use crate::elf;
use crate::kmod::{self, KernelTree, Plan};

/// Where the config goes in the initramfs (the prior art's path).
pub const CONFIG_PATH: &str = "etc/docker-btrfs.json";
/// The largest init binary accepted.
pub const INIT_MAX_BYTES: u64 = 64 << 20;
/// The largest config file read (the init refuses more than 64 KiB anyway).
pub const CONFIG_MAX_BYTES: u64 = 1 << 20;

/// The modules included when no `--module` is given: what it takes to reach
/// a btrfs root (and a top layer on ext4, xfs or vfat) on common machines and
/// VMs. Names this kernel lacks (built in, or not shipped) are skipped with a note.
pub const DEFAULT_MODULES: &[&str] = &[
    // Filesystems: the root, and the top layer.
    "btrfs",
    "ext4",
    "xfs",
    "vfat",
    "nls_cp437",
    "nls_iso8859_1",
    "nls_utf8",
    // VMs: virtio (QEMU/KVM, most clouds).
    "virtio_pci",
    "virtio_blk",
    "virtio_scsi",
    // Disks: NVMe, SATA (AHCI, and QEMU's default PIIX IDE), SCSI disks.
    "nvme",
    "ahci",
    "ata_piix",
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

/// What to build.
#[derive(Debug, Clone)]
pub struct Options {
    /// `/lib/modules/RELEASE`.
    pub kernel_modules: PathBuf,
    /// The kernel release; default: the file name of `kernel_modules`.
    pub kernel_release: Option<String>,
    /// Modules asked for; empty means [`DEFAULT_MODULES`].
    pub modules: Vec<String>,
    pub config: PathBuf,
    pub output: PathBuf,
    /// The init binary; default: `dockroot` next to this program.
    pub init: Option<PathBuf>,
    pub compression: Compression,
    /// mtime of every entry (0, or SOURCE_DATE_EPOCH).
    pub mtime: u32,
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
    /// The image the config names, normalised.
    pub config_image: String,
    /// The module plan (module data dropped).
    pub plan: Plan,
    /// True if the default set was used.
    pub default_set: bool,
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
    Ok(exe.with_file_name("dockroot"))
}

/// Read the init and check it can run alone as `/init`.
fn read_init(path: &Path) -> Result<Vec<u8>> {
    if !path.exists() {
        return Err(Error::msg(format!(
            "the init binary {} does not exist: build it with scripts/build-init, or give --init PATH",
            path.display()
        )));
    }
    let data = read_capped(path, INIT_MAX_BYTES)?;
    elf::check_static_x86_64(&data).map_err(|e| {
        Error::msg(format!(
            "{} cannot be the initramfs /init: {e}; it must be a static x86-64 executable: build it with scripts/build-init",
            path.display()
        ))
    })?;
    Ok(data)
}

/// Build the compressed image in memory.
pub fn build_image(opts: &Options) -> Result<Built> {
    let init_path = match &opts.init {
        Some(p) => p.clone(),
        None => default_init()?,
    };
    let init = read_init(&init_path)?;

    let config = read_capped(&opts.config, CONFIG_MAX_BYTES)?;
    let spec = dockroot::reference::from_prior_art_config(&config)
        .map_err(|e| e.context(format!("checking the config {}", opts.config.display())))?;

    let release = match &opts.kernel_release {
        Some(r) => r.clone(),
        None => release_of(&opts.kernel_modules)?,
    };
    let mut tree = KernelTree::open(&opts.kernel_modules, &release)?;
    let default_set = opts.modules.is_empty();
    let requested: Vec<String> =
        if default_set { DEFAULT_MODULES.iter().map(|s| s.to_string()).collect() } else { opts.modules.clone() };
    let mut plan = kmod::plan(&mut tree, &requested, !default_set)?;
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
    archive.add_file(CONFIG_PATH, 0o644, config)?;
    archive.add_file(INDEX_PATH, 0o644, index.into_bytes())?;
    let init_len = std::fs::metadata(&init_path).map(|m| m.len() as usize).unwrap_or(0);
    for m in &mut plan.modules {
        archive.add_file(&m.image_path, 0o644, std::mem::take(&mut m.data))?;
    }
    let cpio = archive.write(opts.mtime)?;
    let image = compress(&cpio, opts.compression)?;
    Ok(Built {
        image,
        cpio_len: cpio.len(),
        init: init_path,
        init_len,
        config_image: spec.to_string(),
        plan,
        default_set,
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
    let _ = writeln!(s, "  init: {} ({} bytes)", built.init.display(), built.init_len);
    let _ = writeln!(s, "  config: {} (image {})", opts.config.display(), built.config_image);
    let plan = &built.plan;
    let _ = writeln!(
        s,
        "  kernel {}: {} modules{} in load order: {}",
        plan.release,
        plan.modules.len(),
        if built.default_set { " (default set)" } else { "" },
        list(plan.modules.iter().map(|m| &m.name))
    );
    if !plan.builtin.is_empty() {
        let _ = writeln!(s, "  built into the kernel (skipped): {}", list(&plan.builtin));
    }
    if !plan.absent.is_empty() {
        let _ = writeln!(s, "  not in this kernel (skipped): {}", list(&plan.absent));
    }
    let decompressed = plan.modules.iter().filter(|m| crate::compress::module_suffix(&m.source).is_some()).count();
    if decompressed > 0 {
        let _ = writeln!(s, "  decompressed {decompressed} compressed module files (.ko.xz/.ko.zst/.ko.gz)");
    }
    for note in &plan.notes {
        let _ = writeln!(s, "  note: {note}");
    }
    s
}
