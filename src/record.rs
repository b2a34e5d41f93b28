//! The boot record, `/run/dockroot/boot.json`: what this boot did and why,
//! for the booted system (the initramfs's `/run` moves into the new root),
//! and the stage timings it and the closing log line report.

use std::time::{Duration, Instant};

use crate::config::Params;
use crate::devices::BlockDevice;
use crate::error::{Error, Result};
use crate::store::{self, Resolved};

/// Stage timings, for the closing log line and the boot record.
#[derive(Default)]
pub struct Timings {
    start: Option<Instant>,
    stages: Vec<(&'static str, Duration)>,
}

impl Timings {
    pub fn new() -> Self {
        Timings { start: Some(Instant::now()), stages: Vec::new() }
    }

    pub fn run<T>(&mut self, name: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let t = Instant::now();
        let r = f();
        self.stages.push((name, t.elapsed()));
        r
    }

    pub fn summary(&self) -> String {
        let total = self.start.map(|s| s.elapsed()).unwrap_or_default();
        let parts: Vec<String> = self.stages.iter().map(|(n, d)| format!("{n} {}ms", d.as_millis())).collect();
        format!("{}ms in all ({})", total.as_millis(), parts.join(", "))
    }
}

/// Where the boot record is written (the initramfs's /run moves into the new root).
pub const BOOT_RECORD: &str = "/run/dockroot/boot.json";
/// Where the boot's whole log is kept ([`crate::logging::keep`]), beside the record.
pub const BOOT_LOG: &str = "/run/dockroot/boot.log";
/// Where an initramfs carries the `dockroot` commands (`dockroot-mkinitramfs --commands`).
pub const COMMANDS_IN_INITRAMFS: &str = "/usr/lib/dockroot/dockroot";
/// What the builder records about an initramfs it makes (`dockroot-mkinitramfs
/// --list` reads it; the init does not): JSON, `{"dockroot_initramfs": 1,
/// "builder": VERSION, "init_version": VERSION or null}`.
pub const MANIFEST_IN_INITRAMFS: &str = "/usr/lib/dockroot/initramfs.json";
/// The line `dockroot-init --version` prints, whole in the binary: the builder
/// finds the init's version by it ([`INIT_VERSION_PREFIX`], a version, a newline).
pub const INIT_VERSION_LINE: &str = concat!("dockroot-init ", env!("CARGO_PKG_VERSION"), "\n");
/// The start of [`INIT_VERSION_LINE`].
pub const INIT_VERSION_PREFIX: &str = "dockroot-init ";
/// Where the booted system finds them: the exact version that booted it, even
/// when the image ships none.
pub const COMMANDS: &str = "/run/dockroot/dockroot";

/// Where the booted system finds the initramfs's embedded config (for `dockroot status`).
pub const CONFIG: &str = "/run/dockroot/config.json";

/// Leave a copy of the initramfs's file `from` at `to` in `/run/dockroot/`
/// (under a temporary name, then renamed, so the booted system never sees half
/// a file), with `mode`. `None` when this initramfs has no such file.
pub fn leave(from: &str, to: &'static str, mode: u32) -> Result<Option<&'static str>> {
    use rustix::fs::{Mode, OFlags};
    let src = match rustix::fs::open(from, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(e) => return Err(Error::with(format!("opening {from}"), e)),
    };
    let tmp = format!("{to}.tmp");
    let copy = || -> rustix::io::Result<()> {
        match rustix::fs::mkdir("/run/dockroot", Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(e),
        }
        let len = rustix::fs::fstat(&src)?.st_size;
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::CLOEXEC;
        let dst = rustix::fs::open(tmp.as_str(), flags, Mode::from_raw_mode(mode))?;
        rustix::fs::fchmod(&dst, Mode::from_raw_mode(mode))?;
        // The kernel copies; a file grows no larger than it was (a bound on the loop).
        let mut left = u64::try_from(len).unwrap_or(0);
        while left > 0 {
            match rustix::fs::sendfile(&dst, &src, None, usize::try_from(left).unwrap_or(usize::MAX)) {
                Ok(0) => break,
                Ok(n) => left = left.saturating_sub(n as u64),
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e),
            }
        }
        rustix::fs::rename(tmp.as_str(), to)
    };
    copy().map_err(|e| Error::with(format!("copying {from} to {to}"), e))?;
    Ok(Some(to))
}

/// Which root this boot ended up with, and why.
pub enum Booted {
    /// A fresh snapshot of the image with the top layer.
    Fresh(Resolved),
    /// The current rw layer as it was (`dockroot.boot=persist`).
    Persisted,
    /// A writable copy of a kept root (`dockroot.boot=previous`).
    Previous(String),
    /// The fresh root could not be made: an older root instead.
    Fallback { reason: String, from: String },
}

/// The facts for /run/dockroot/boot.json, gathered along the way.
#[derive(Default)]
pub struct Record {
    pub warnings: Vec<String>,
    pub recovered: Vec<String>,
    pub retired: Option<String>,
    pub pruned: Vec<String>,
    pub kept: Vec<String>,
    pub rw_layer: String,
    /// "subvolume" or "overlay".
    pub rw_kind: &'static str,
    /// Whether old overlay roots are being deleted in the background.
    pub trash_deleter: bool,
    /// Where the `dockroot` commands were left ([`leave`]).
    pub commands: Option<&'static str>,
    /// The running kernel and the image's modules ([`crate::kernel::KernelCheck::to_json`]).
    pub kernel: serde_json::Value,
    /// Where the embedded config was left ([`CONFIG`]).
    pub config: Option<&'static str>,
    /// Where the image came from ([`crate::nextboot::ImageSource::name`]).
    pub image_source: &'static str,
    /// Boot counting (`choose::counting`): the image asked for and its trial.
    pub trial: serde_json::Value,
    /// A fallback that is a fresh root (a refused image's boot going back to a blessed one).
    pub fallback: Option<serde_json::Value>,
}

impl Record {
    pub fn warn(&mut self, w: String) {
        // The log says "WARNING: " itself (the kernel's warning starts with it already).
        log::warn!("{}", w.strip_prefix("WARNING: ").unwrap_or(&w));
        self.warnings.push(w);
    }

    pub fn write(&self, params: &Params, root_dev: &BlockDevice, booted: &Booted, t: &Timings) {
        let (booted_name, image, fallback) = match booted {
            Booted::Fresh(r) => (
                "fresh".to_string(),
                serde_json::json!({
                    "reference": r.reference, "id": r.image_id, "diff_ids": r.diff_ids,
                    "chain_ids": r.chain_ids, "store": r.whence(), "store_kind": r.store.name(),
                    "driver": r.driver.name(), "layer": r.layer,
                    "layer_subvolume": match &r.root {
                        store::Root::Subvolume(p) => serde_json::json!(format!("/{}", p.display())),
                        store::Root::Overlay { .. } => serde_json::Value::Null,
                    },
                    "lowerdirs": match &r.root {
                        store::Root::Subvolume(_) => serde_json::Value::Null,
                        store::Root::Overlay { base, lowerdirs } => serde_json::json!(lowerdirs
                            .iter()
                            .map(|l| format!("/{}", base.join(l).display()))
                            .collect::<Vec<_>>()),
                    },
                    "manifest_digest": r.manifest_digest, "verified": r.verified,
                }),
                serde_json::Value::Null,
            ),
            Booted::Persisted => ("persist".to_string(), serde_json::Value::Null, serde_json::Value::Null),
            Booted::Previous(k) => (format!("previous: {k}"), serde_json::Value::Null, serde_json::Value::Null),
            Booted::Fallback { reason, from } => (
                format!("fallback: {from}"),
                serde_json::Value::Null,
                serde_json::json!({"reason": reason, "booted": from}),
            ),
        };
        let fallback = match (fallback, &self.fallback) {
            (serde_json::Value::Null, Some(f)) => f.clone(),
            (f, _) => f,
        };
        let stages: serde_json::Map<String, serde_json::Value> =
            t.stages.iter().map(|(n, d)| (n.to_string(), serde_json::json!(d.as_secs_f64() * 1000.0))).collect();
        let fs = root_dev.fs.as_ref();
        let json = serde_json::json!({
            "dockroot": env!("CARGO_PKG_VERSION"),
            "requested": params.mode.name(),
            "booted": booted_name,
            "image": image,
            "image_source": self.image_source,
            "commands": self.commands,
            "kernel": self.kernel,
            "config": self.config,
            "fallback": fallback,
            "trial": self.trial,
            "rw_layer": self.rw_layer,
            "rw_layer_kind": self.rw_kind,
            "deleting_in_background": self.trash_deleter,
            "root_device": {
                "devnode": root_dev.devnode.to_string_lossy(),
                "label": fs.and_then(|f| f.label.clone()),
                "uuid": fs.and_then(|f| f.uuid.clone()),
            },
            "retired": self.retired,
            "pruned": self.pruned,
            "kept": self.kept,
            "keep": params.keep,
            "recovered": self.recovered,
            "warnings": self.warnings,
            "stages_ms": stages,
            "total_ms": t.start.map(|s| s.elapsed().as_secs_f64() * 1000.0),
        });
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all("/run/dockroot")?;
            std::fs::write(BOOT_RECORD, format!("{json:#}\n"))
        };
        if let Err(e) = write() {
            log::warn!("could not write {BOOT_RECORD}: {e}");
        }
    }
}
