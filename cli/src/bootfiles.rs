//! `dockroot boot-files`: the boot files follow the image. The kernel and
//! dockroot initramfs of the root the next boot boots (as `dockroot status`
//! computes it: `dockroot::plan`, the boot's own rule) are copied to the EFI
//! system partition and a Boot Loader Specification entry for systemd-boot
//! names them; for GRUB and rEFInd the stanza to add is printed.
//!
//! The parts: `bootfiles_entry` (pure: entry, names, command line, update
//! plan), `bootfiles_image` (the files inside the root, through its layers),
//! `bootfiles_esp` (finding, mounting and writing the ESP, crash-safe). This
//! file: the arguments, putting them together, the report.
//!
//! The JSON (schema version 1, `"dockroot_boot_files": 1`; fields are only ever
//! added within a version):
//!
//! ```text
//! { "dockroot_boot_files": 1, "esp": str, "esp_partuuid": null | str, "entry": "/loader/entries/NAME.conf",
//!   "changed": bool, "dry_run": bool, "from": "fresh" | "current" | "copy", "root": str,
//!   "image": str, "image_id": null | str, "release": str,
//!   "kernel": str, "initrd": str, "kernel_source": str, "initrd_source": str, "options": str,
//!   "written": [str], "removed": [str], "skipped": [str], "print": null | str }
//! ```

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde_json::json;
use sha2::{Digest, Sha256};

use crate::args::{self, Own};
use crate::bootfiles_entry::{self as entry, Entry, ENTRIES_DIR, INITRD_FILE, KERNEL_FILE};
use crate::bootfiles_esp::{self as esp, Esp};
use crate::bootfiles_image::{self as image, Layers};
use crate::partition::{self, Where};
use dockroot::config::{self, Embedded, Params};
use dockroot::plan::{self, Plan};
use dockroot::policy::Decision;
use dockroot::record::{BOOT_RECORD, CONFIG};
use dockroot::rwlayer::{OverlaySpec, OVERLAY_SPEC, UPPER};
use dockroot::store::Root;
use dockroot::{Error, Result};

/// The schema version of `--json`.
pub const SCHEMA: u64 = 1;
/// The next boot's root carries no kernel with a dockroot initramfs.
pub const EXIT_NO_KERNEL: u8 = 3;

const USAGE: &str = "usage: dockroot boot-files [--esp DIR] [--entry NAME] [--cmdline ARGS] [OPTIONS]

Copies the kernel and dockroot initramfs of the image the next boot boots (as dockroot
status says: a fresh root of the image, the rw layer as it is, or a copy of a kept root)
to the EFI system partition, and writes or updates the systemd-boot entry
/loader/entries/NAME.conf (Boot Loader Specification, Type 1) naming them, with this
machine's kernel command line. The files go to /dockroot/NAME/RELEASE-HASH/linux and
initrd (HASH: of both files); directories the entry no longer names are removed after
the entry is written. Nothing is written when nothing changed.

The kernel: the newest release (version order) for which the root has both a kernel
(/boot/vmlinuz-RELEASE, /usr/lib/modules/RELEASE/vmlinuz) and a dockroot initramfs
(/boot/initramfs-dockroot-RELEASE.img, /boot/initrd.img-RELEASE,
/boot/initramfs-dockroot.img) whose module index names that release.

  --esp DIR        the EFI system partition, mounted (default: the partition systemd-boot
                   was started from, LoaderDevicePartUUID, where it is mounted, else
                   mounted for the run); required on a host
  --entry NAME     the entry's name (default: dockroot): A-Z a-z 0-9 . _ -
  --cmdline ARGS   the kernel command line, for the entry and to find the next boot's image
                   (default: the entry's options line, else this boot's /proc/cmdline
                   without BOOT_IMAGE=, initrd= and dockroot.kexec_from=)
  --print grub|refind  also print the menu entry for GRUB or rEFInd on stdout
  --dry-run        say what would be written and removed; write nothing
  --json           the result as JSON (schema version 1, documented in the README)
  --config FILE    the initramfs's embedded config (default: /run/dockroot/config.json)
  --top DIR        the root partition's top level (subvolid=5), already mounted
  --device DEV     the root partition (default: the device root= names on the command line)
  --help           this text

exit status:
  0  done, or up to date (nothing written)
  1  it could not (the ESP, the partition, a file); nothing half written is used
  2  usage error
  3  the next boot's root has no kernel with a dockroot initramfs for it";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Print {
    Grub,
    Refind,
}

#[derive(Debug)]
struct Args {
    esp: Option<PathBuf>,
    entry: String,
    print: Option<Print>,
    dry_run: bool,
    json: bool,
    config: Option<PathBuf>,
    at: Where,
    cmdline: Option<String>,
}

fn parse(argv: Vec<OsString>) -> std::result::Result<Option<Args>, String> {
    let mut a = Args {
        esp: None,
        entry: "dockroot".into(),
        print: None,
        dry_run: false,
        json: false,
        config: None,
        at: Where::FromCmdline,
        cmdline: None,
    };
    let run = args::parse(argv, &mut a.at, &mut a.cmdline, |arg, p| {
        let value = |p: &mut lexopt::Parser| p.value().map_err(|e| e.to_string());
        match arg {
            Own::Long(n) if n == "esp" => a.esp = Some(value(p)?.into()),
            Own::Long(n) if n == "entry" => {
                a.entry = value(p)?.into_string().map_err(|v| format!("--entry {v:?} is not valid UTF-8"))?;
                entry::check_entry_name(&a.entry)?;
            }
            Own::Long(n) if n == "print" => {
                a.print = match value(p)?.to_str() {
                    Some("grub") => Some(Print::Grub),
                    Some("refind") => Some(Print::Refind),
                    other => return Err(format!("--print {other:?}: give grub or refind")),
                }
            }
            Own::Long(n) if n == "dry-run" => a.dry_run = true,
            Own::Long(n) if n == "json" => a.json = true,
            Own::Long(n) if n == "config" => a.config = Some(value(p)?.into()),
            other => return Err(other.unexpected()),
        }
        Ok(())
    })?;
    Ok(run.then_some(a))
}

/// Why it stopped: the exit status and the message.
struct Stop(u8, String);

impl From<Error> for Stop {
    fn from(e: Error) -> Stop {
        Stop(1, e.to_string())
    }
}

/// `dockroot boot-files`: returns the exit status.
pub fn run(argv: Vec<OsString>) -> u8 {
    let a = match args::arguments("boot-files", USAGE, parse(argv)) {
        Ok(a) => a,
        Err(code) => return code,
    };
    match boot_files(&a) {
        Ok(report) => {
            println!("{}", report.trim_end());
            0
        }
        Err(Stop(code, msg)) => {
            eprintln!("dockroot boot-files: {msg}");
            if code == crate::EXIT_USAGE {
                eprintln!("\n{USAGE}");
            }
            code
        }
    }
}

/// Where the files come from: the next boot's root.
struct Source {
    from: &'static str,
    title: String,
    image_id: Option<String>,
    layers: Layers,
}

/// The root the next boot boots, as layers.
fn next_root(p: &Plan, top: &Path, device: Option<&Path>) -> std::result::Result<Source, Stop> {
    let on = |rel: &str| match device {
        Some(d) => format!("{rel} on {}", d.display()),
        None => rel.to_string(),
    };
    let root_layers = |shown: &str| -> Result<Vec<PathBuf>> {
        let dir = top.join(shown.trim_start_matches('/'));
        let spec = dir.join(OVERLAY_SPEC);
        if !(spec.is_file() && dir.join(UPPER).is_dir()) {
            return Ok(vec![dir]);
        }
        let bytes =
            std::fs::read(&spec).map_err(|e| Error::with(format!("reading {}/{OVERLAY_SPEC}", on(shown)), e))?;
        let s = OverlaySpec::from_json(&bytes)?;
        let mut v = vec![dir.join(UPPER)];
        v.extend(s.lowerdirs.iter().map(|l| top.join(&s.base).join(l)));
        Ok(v)
    };
    match &p.decision {
        Decision::Fresh { .. } => {
            let r =
                p.resolved.as_ref().ok_or_else(|| Stop(1, "the plan has no image for a fresh root (a bug)".into()))?;
            let mut dirs: Vec<PathBuf> = p.toplayer_dir.iter().cloned().collect();
            match &r.root {
                Root::Subvolume(s) => dirs.push(top.join(s)),
                Root::Overlay { base, lowerdirs } => dirs.extend(lowerdirs.iter().map(|l| top.join(base).join(l))),
            }
            let shown = format!("the image {} in {}", r.reference, r.whence());
            Ok(Source {
                from: "fresh",
                title: r.reference.clone(),
                image_id: Some(r.image_id.clone()),
                layers: Layers { dirs, shown },
            })
        }
        Decision::Current { .. } => Ok(Source {
            from: "current",
            title: p.image.to_string(),
            image_id: None,
            layers: Layers { dirs: root_layers(&p.rw_shown)?, shown: on(&p.rw_shown) },
        }),
        Decision::CopyKept { shown, .. } => Ok(Source {
            from: "copy",
            title: format!("{} (kept root {})", p.image, shown.rsplit('/').next().unwrap_or(shown)),
            image_id: None,
            layers: Layers { dirs: root_layers(shown)?, shown: on(shown) },
        }),
        Decision::Fail(why) => {
            Err(Stop(1, format!("the next boot would fail ({why}): nothing to take boot files from")))
        }
        Decision::Check(_) => Err(Stop(1, "the policy did not decide (a bug in dockroot)".into())),
    }
}

/// The embedded config: `--config`, else the copy the init left, else none.
fn read_config(given: Option<&Path>) -> Result<Option<Embedded>> {
    match given {
        Some(f) => config::read_embedded(f)?
            .map(Some)
            .ok_or_else(|| Error::msg(format!("--config {}: no such file", f.display()))),
        None => config::read_embedded(Path::new(CONFIG)),
    }
}

fn hash12(kernel: &[u8], initrd: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(Sha256::digest(kernel));
    h.update(Sha256::digest(initrd));
    h.finalize().iter().take(6).map(|b| format!("{b:02x}")).collect()
}

fn boot_files(a: &Args) -> std::result::Result<String, Stop> {
    let booted = Path::new(BOOT_RECORD).exists();
    let found = match &a.esp {
        Some(dir) => {
            if !dir.is_dir() {
                return Err(Stop(1, format!("--esp {}: not a directory", dir.display())));
            }
            Esp { partuuid: None, device: None, fs_uuid: None, mounted_at: Some(dir.clone()) }
        }
        None if !booted => {
            return Err(Stop(
                crate::EXIT_USAGE,
                format!("not a system dockroot booted (no {BOOT_RECORD}): give --esp DIR, the EFI system partition"),
            ))
        }
        None => esp::find_esp()?,
    };
    let mut stop: Option<Stop> = None;
    let done = esp::with_esp_mounted(&found, |dir| {
        let esp_shown = match (&found.mounted_at, &found.device) {
            (Some(m), _) => m.display().to_string(),
            (None, Some(d)) => format!("{} (mounted for the run)", d.display()),
            (None, None) => dir.display().to_string(),
        };
        match on_esp(a, &found, dir, &esp_shown, booted) {
            Ok(s) => Ok(s),
            Err(Stop(code, msg)) => {
                let msg =
                    if found.mounted_at.is_none() { msg.replace(&dir.display().to_string(), &esp_shown) } else { msg };
                stop = Some(Stop(code, msg));
                Ok(String::new())
            }
        }
    });
    match (done, stop) {
        (_, Some(s)) => Err(s),
        (Ok(s), None) => Ok(s),
        (Err(e), None) => Err(e.into()),
    }
}

/// Everything once the ESP is mounted at `dir`.
fn on_esp(a: &Args, found: &Esp, dir: &Path, esp_shown: &str, booted: bool) -> std::result::Result<String, Stop> {
    let conf_rel = format!("/{ENTRIES_DIR}/{}.conf", a.entry);
    let existing = std::fs::read_to_string(dir.join(conf_rel.trim_start_matches('/'))).ok().map(|t| Entry::parse(&t));
    let cmdline = match (&a.cmdline, existing.as_ref().filter(|e| !e.options.is_empty())) {
        (Some(c), _) => c.trim().to_string(),
        (None, Some(e)) => e.options.clone(),
        (None, None) if booted => entry::entry_cmdline(&partition::cmdline(&None)?),
        (None, None) => {
            return Err(Stop(
                1,
                format!("no command line for the entry: {conf_rel} on {esp_shown} does not exist yet; give --cmdline"),
            ))
        }
    };
    let params = Params::from_cmdline(&cmdline)?;
    let root = params.root.clone().unwrap_or_default();
    let cfg = read_config(a.config.as_deref())?;
    let mut warnings: Vec<String> = Vec::new();
    let taken = partition::with_top(&a.at, &root, false, |top, device| {
        let p = plan::describe(&plan::PlanInput { top, cmdline: &cmdline, config: cfg, toplayer_dir: None, device })?;
        let src = match next_root(&p, top, device) {
            Ok(s) => s,
            Err(Stop(_, msg)) => return Err(Error::msg(msg)),
        };
        if src.from == "fresh" && params.toplayer.is_some() && p.toplayer_dir.is_none() {
            warnings.push("the top layer (toplayer=) could not be looked into: files it may bring are not seen".into());
        }
        let files = image::find_boot_files(&src.layers)?;
        Ok((src, files))
    })?;
    let (src, files) = taken;
    let files = files.map_err(|why| {
        Stop(
            EXIT_NO_KERNEL,
            format!(
                "{} has no kernel with a dockroot initramfs for it ({}); nothing written",
                src.layers.shown,
                why.join("; ")
            ),
        )
    })?;
    let dir_name = entry::content_dir_name(&files.release, &hash12(&files.kernel, &files.initrd));
    let new = Entry {
        title: src.title.clone(),
        version: files.release.clone(),
        linux: entry::esp_path(&a.entry, &dir_name, KERNEL_FILE),
        initrd: entry::esp_path(&a.entry, &dir_name, INITRD_FILE),
        options: cmdline.clone(),
    };
    let text = new.render();
    let state = esp::read_state(dir, &a.entry, (&dir_name, &files.kernel, &files.initrd))?;
    let update = entry::plan_update(&state, &dir_name, &text);
    let files_dir = format!("/{}/{}", entry::ESP_DIR, a.entry);
    let mut written: Vec<String> = Vec::new();
    if update.write_dir.is_some() {
        written.push(new.linux.clone());
        written.push(new.initrd.clone());
    }
    if update.write_entry.is_some() {
        written.push(conf_rel.clone());
    }
    let mut removed: Vec<String> = update.remove_dirs.iter().map(|d| format!("{files_dir}/{d}")).collect();
    if update.remove_temp_entry {
        removed.push(format!("{conf_rel}{}", entry::TMP_SUFFIX));
    }
    if !a.dry_run && update.changes() {
        esp::apply(dir, &a.entry, &update, &files.kernel, &files.initrd)?;
    }
    let print = a.print.map(|p| match p {
        Print::Grub => entry::grub_stanza(&new, esp_shown, found.fs_uuid.as_deref()),
        Print::Refind => entry::refind_stanza(&new, esp_shown, found.partuuid.as_deref()),
    });
    let source_root: Vec<String> = vec![src.layers.shown.clone()];
    if a.json {
        let v = json!({
            "dockroot_boot_files": SCHEMA,
            "esp": esp_shown, "esp_partuuid": found.partuuid, "entry": conf_rel,
            "changed": update.changes(), "dry_run": a.dry_run, "from": src.from, "root": source_root[0],
            "image": src.title, "image_id": src.image_id, "release": files.release,
            "kernel": new.linux, "initrd": new.initrd,
            "kernel_source": files.kernel_path, "initrd_source": files.initrd_path, "options": new.options,
            "written": written, "removed": removed, "skipped": files.skipped, "warnings": warnings, "print": print,
        });
        return Ok(format!("{v:#}"));
    }
    let mut out: Vec<String> = Vec::new();
    let from = match src.from {
        "fresh" => "a fresh root of",
        "current" => "the rw layer as it is:",
        _ => "a copy of",
    };
    out.push(format!(
        "next boot: {from} {}: kernel {} ({} with {})",
        src.layers.shown, files.release, files.kernel_path, files.initrd_path
    ));
    for s in &files.skipped {
        out.push(format!("  passed over: {s}"));
    }
    for w in &warnings {
        out.push(format!("warning: {w}"));
    }
    let esp_line = match &found.partuuid {
        Some(p) => format!("EFI system partition: {esp_shown} (PARTUUID={p})"),
        None => format!("EFI system partition: {esp_shown}"),
    };
    out.push(esp_line);
    if !update.changes() {
        out.push(format!("up to date: {conf_rel} names {} and {}", new.linux, new.initrd));
    } else {
        let (w, r) = if a.dry_run { ("would write", "would remove") } else { ("wrote", "removed") };
        out.extend(written.iter().map(|p| format!("  {w} {p}")));
        out.extend(removed.iter().map(|p| format!("  {r} {p}")));
        if a.dry_run {
            out.push("dry run: nothing written".into());
        }
    }
    out.push(format!("  options {}", new.options));
    let mut s = out.join("\n");
    if let Some(p) = print {
        s.push_str("\n\n");
        s.push_str(&p);
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(s: &str) -> std::result::Result<Option<Args>, String> {
        parse(s.split_whitespace().map(OsString::from).collect())
    }

    #[test]
    fn parses_its_options() {
        let a = parsed("--esp /boot/efi --entry os-2 --print grub --dry-run --json --top /t --cmdline=ro")
            .unwrap()
            .unwrap();
        assert_eq!(a.esp, Some(PathBuf::from("/boot/efi")));
        assert_eq!((a.entry.as_str(), a.print, a.dry_run, a.json), ("os-2", Some(Print::Grub), true, true));
        assert_eq!((a.at, a.cmdline.as_deref()), (Where::Top(PathBuf::from("/t")), Some("ro")));
        assert_eq!(parsed("").unwrap().unwrap().entry, "dockroot");
        assert!(parsed("--help").unwrap().is_none());
        assert!(parsed("--entry .x").unwrap_err().contains("must not start with a dot"));
        assert!(parsed("--print lilo").unwrap_err().contains("grub or refind"));
        assert!(parsed("--frob").unwrap_err().contains("--frob"));
    }

    #[test]
    fn names_the_content_by_both_files() {
        assert_eq!(hash12(b"k", b"i").len(), 12);
        assert_ne!(hash12(b"k", b"i"), hash12(b"ki", b""));
        assert_eq!(hash12(b"k", b"i"), hash12(b"k", b"i"));
    }
}
