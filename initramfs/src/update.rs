//! Rebuilding the initramfs of installed kernels, as the distribution packages
//! do it (`dockroot-mkinitramfs --update`, `--remove`): the kernel hooks
//! (`/etc/kernel/postinst.d/dockroot`, kernel-install's `50-dockroot.install`,
//! Arch's alpm hook) only call this.
//!
//! - the builder's settings come from `/etc/dockroot/mkinitramfs.conf` ([`Settings`]:
//!   `KEY=VALUE` lines, no shell);
//! - the image to boot from `/etc/docker-btrfs.json` when it exists (the prior
//!   art's file), else from the settings' `IMAGE=`;
//! - the kernels: each `/usr/lib/modules/RELEASE` (or `/lib/modules/RELEASE`) that has
//!   `/boot/vmlinuz-RELEASE` for `--all`, or the one release named;
//! - the output: `/boot/initrd.img-RELEASE` (Debian's name), written atomically.
//!
//! Every path is under a root directory (`--root`, default `/`), so the tests run
//! on a directory tree.

use std::path::{Path, PathBuf};

use dockroot::error::{Context, Error, Result};

use crate::build::{Commands, Options};
use crate::compress::Compression;

/// The settings file, relative to the root.
pub const SETTINGS_PATH: &str = "etc/dockroot/mkinitramfs.conf";
/// The image to boot (the prior art's file), relative to the root.
pub const IMAGE_CONFIG_PATH: &str = "etc/docker-btrfs.json";
/// The init the package ships, relative to the root.
pub const PACKAGED_INIT: &str = "usr/lib/dockroot/dockroot-init";
/// The commands the package ships, relative to the root.
pub const PACKAGED_COMMANDS: &str = "usr/bin/dockroot";
/// Where kernels keep their modules, relative to the root, in order of preference.
pub const MODULE_DIRS: &[&str] = &["usr/lib/modules", "lib/modules"];
/// The largest settings file read.
const SETTINGS_MAX_BYTES: u64 = 64 << 10;

/// Which modules the image carries (`MODE=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleMode {
    /// The generic set, plus `MODULES=` loaded at every boot.
    Generic,
    /// What this machine needs (`--hostonly`), plus `MODULES=`.
    HostOnly,
    /// Only `MODULES=` (`--module` without `--hostonly`).
    Listed,
}

/// The builder's settings from `/etc/dockroot/mkinitramfs.conf`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub mode: ModuleMode,
    pub modules: Vec<String>,
    pub compression: Compression,
    /// The image to boot when there is no `/etc/docker-btrfs.json`.
    pub image: Option<String>,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings { mode: ModuleMode::Generic, modules: Vec::new(), compression: Compression::Zstd, image: None }
    }
}

/// The keys the settings file knows.
pub const SETTINGS_KEYS: &[&str] = &["MODE", "MODULES", "COMPRESSION", "IMAGE"];

impl Settings {
    /// Parse the settings file's text; `file` names it in messages. Lines are
    /// `KEY=VALUE` (spaces around `=` allowed), `#` starts a comment line, a value
    /// may be wrapped in one pair of `"` or `'` (nothing inside is expanded). An
    /// unknown key, a key given twice or a bad value is an error naming the line.
    pub fn parse(file: &str, text: &str) -> Result<Settings> {
        let mut s = Settings::default();
        let mut seen: Vec<&str> = Vec::new();
        for (n, raw) in text.lines().enumerate() {
            let at = |msg: String| Error::msg(format!("{file}, line {}: {msg}", n + 1));
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = line.split_once('=').ok_or_else(|| at(format!("{line:?} is not KEY=VALUE")))?;
            let key = key.trim();
            let value = unquote(value.trim()).map_err(|m| at(m.to_string()))?;
            let known = SETTINGS_KEYS.iter().find(|k| **k == key).ok_or_else(|| {
                at(format!("unknown setting {key:?} (the settings are {})", SETTINGS_KEYS.join(", ")))
            })?;
            if seen.contains(known) {
                return Err(at(format!("{key} is set twice")));
            }
            seen.push(known);
            match key {
                "MODE" => {
                    s.mode = match value {
                        "generic" => ModuleMode::Generic,
                        "hostonly" => ModuleMode::HostOnly,
                        "listed" => ModuleMode::Listed,
                        other => return Err(at(format!("MODE={other:?}: expected generic, hostonly or listed"))),
                    }
                }
                "MODULES" => s.modules = value.split_whitespace().map(str::to_owned).collect(),
                "COMPRESSION" => {
                    s.compression = Compression::parse(value).map_err(|e| at(format!("COMPRESSION: {e}")))?
                }
                _ => {
                    s.image = if value.is_empty() {
                        None
                    } else {
                        dockroot::reference::parse(value).map_err(|e| at(format!("IMAGE={value:?}: {e}")))?;
                        Some(value.to_owned())
                    }
                }
            }
        }
        if s.mode == ModuleMode::Listed && s.modules.is_empty() {
            return Err(Error::msg(format!("{file}: MODE=listed needs MODULES= (the modules to include)")));
        }
        Ok(s)
    }

    /// Read the settings under `root`; a missing file means the defaults.
    pub fn read(root: &Path) -> Result<Settings> {
        let path = root.join(SETTINGS_PATH);
        match std::fs::metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Settings::default()),
            Err(e) => return Err(Error::with(format!("reading {}", path.display()), e)),
            Ok(_) => {}
        }
        let bytes = crate::compress::read_capped(&path, SETTINGS_MAX_BYTES)?;
        let text = String::from_utf8(bytes).map_err(|_| Error::msg(format!("{} is not UTF-8 text", path.display())))?;
        Settings::parse(&path.display().to_string(), &text)
    }
}

/// A value without its one pair of matching quotes.
fn unquote(v: &str) -> std::result::Result<&str, &'static str> {
    for q in ['"', '\''] {
        if let Some(rest) = v.strip_prefix(q) {
            return rest.strip_suffix(q).ok_or("a quoted value must end with the same quote");
        }
    }
    Ok(v)
}

/// The embedded config for the image: `/etc/docker-btrfs.json`'s bytes when it
/// exists, else one made from `IMAGE=`; returns the bytes and where they came from.
pub fn image_config(root: &Path, settings: &Settings) -> Result<(Vec<u8>, PathBuf)> {
    let json = root.join(IMAGE_CONFIG_PATH);
    if json.exists() {
        let bytes = crate::compress::read_capped(&json, crate::build::CONFIG_MAX_BYTES)?;
        dockroot::reference::from_prior_art_config(&bytes)
            .map_err(|e| e.context(format!("checking {}", json.display())))?;
        return Ok((bytes, json));
    }
    let settings_path = root.join(SETTINGS_PATH);
    let image = settings.image.as_deref().context(|| {
        format!(
            "no image to boot: write {} ({{\"docker_image\": \"NAME\", \"docker_tag\": \"TAG\"}}) or set IMAGE= in {}",
            json.display(),
            settings_path.display()
        )
    })?;
    // A parsed reference has no quote or backslash: it is a JSON string as it is.
    let spec =
        dockroot::reference::parse(image).map_err(|e| e.context(format!("IMAGE= in {}", settings_path.display())))?;
    let name = spec.to_string();
    if name.contains(['"', '\\']) {
        return Err(Error::msg(format!("IMAGE={image:?} in {} cannot be written as JSON", settings_path.display())));
    }
    Ok((format!("{{\"docker_image\": \"{image}\"}}\n").into_bytes(), settings_path))
}

/// Whether `release` is a plain directory name (no `/`, not `.` or `..`, not empty).
pub fn is_release_name(release: &str) -> bool {
    !release.is_empty() && release != "." && release != ".." && !release.contains('/') && !release.contains('\0')
}

/// The modules directory of `release` under `root`: the first of [`MODULE_DIRS`] that has it.
pub fn modules_dir(root: &Path, release: &str) -> Result<PathBuf> {
    if !is_release_name(release) {
        return Err(Error::msg(format!("{release:?} is not a kernel release")));
    }
    MODULE_DIRS.iter().map(|d| root.join(d).join(release)).find(|p| p.is_dir()).context(|| {
        format!("kernel {release} has no modules directory ({})", root.join(MODULE_DIRS[0]).join(release).display())
    })
}

/// The installed kernels under `root`: each release with a modules directory and
/// `/boot/vmlinuz-RELEASE`, sorted, each once (`/lib` may be a link to `/usr/lib`).
pub fn installed_kernels(root: &Path) -> Result<Vec<String>> {
    let mut releases = std::collections::BTreeSet::new();
    for d in MODULE_DIRS {
        let dir = root.join(d);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::with(format!("listing {}", dir.display()), e)),
        };
        for entry in entries {
            let entry = entry.context(|| format!("listing {}", dir.display()))?;
            let Ok(name) = entry.file_name().into_string() else { continue };
            if is_release_name(&name) && entry.path().is_dir() && kernel_image(root, &name).is_file() {
                releases.insert(name);
            }
        }
    }
    Ok(releases.into_iter().collect())
}

/// `/boot/vmlinuz-RELEASE` under `root`.
pub fn kernel_image(root: &Path, release: &str) -> PathBuf {
    root.join("boot").join(format!("vmlinuz-{release}"))
}

/// The default output: `/boot/initrd.img-RELEASE` under `root`.
pub fn default_output(root: &Path, release: &str) -> PathBuf {
    root.join("boot").join(format!("initrd.img-{release}"))
}

/// The builder's options for one kernel.
pub fn options(root: &Path, settings: &Settings, release: &str, output: PathBuf, mtime: u32) -> Result<Options> {
    let modules = modules_dir(root, release)?;
    let (config_bytes, config_path) = image_config(root, settings)?;
    let mut o = Options::new(modules, config_path, output);
    o.config_bytes = Some(config_bytes);
    o.kernel_release = Some(release.to_owned());
    o.modules = settings.modules.clone();
    o.generic = settings.mode == ModuleMode::Generic;
    o.hostonly = settings.mode == ModuleMode::HostOnly;
    o.compression = settings.compression;
    o.init = Some(root.join(PACKAGED_INIT));
    let commands = root.join(PACKAGED_COMMANDS);
    o.commands = if commands.exists() { Commands::Path(commands) } else { Commands::Leave };
    o.kernel_config = Some(root.join("boot").join(format!("config-{release}"))).filter(|p| p.exists());
    o.mtime = mtime;
    Ok(o)
}

/// What `--update` or `--remove` was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub action: Action,
    /// `--root` (default `/`).
    pub root: PathBuf,
    /// `--output`, for one release only.
    pub output: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Build for one release.
    Update(String),
    /// Build for every installed kernel.
    UpdateAll,
    /// Remove the image of one release.
    Remove(String),
}

/// The outputs `--update` writes: (release, output path), in order.
pub fn targets(req: &Request) -> Result<Vec<(String, PathBuf)>> {
    match &req.action {
        Action::Update(r) | Action::Remove(r) => {
            if !is_release_name(r) {
                return Err(Error::msg(format!("{r:?} is not a kernel release")));
            }
            let out = req.output.clone().unwrap_or_else(|| default_output(&req.root, r));
            Ok(vec![(r.clone(), out)])
        }
        Action::UpdateAll => Ok(installed_kernels(&req.root)?
            .into_iter()
            .map(|r| {
                let out = default_output(&req.root, &r);
                (r, out)
            })
            .collect()),
    }
}

/// Remove `path` if it is there; whether it was.
pub fn remove(path: &Path) -> Result<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::with(format!("removing {}", path.display()), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("dockroot-update-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn err(text: &str) -> String {
        Settings::parse("/etc/dockroot/mkinitramfs.conf", text).unwrap_err().to_string()
    }

    #[test]
    fn settings_parse_and_default() {
        assert_eq!(Settings::parse("f", "").unwrap(), Settings::default());
        let s = Settings::parse(
            "f",
            "# comment\n\n  MODE = hostonly\nMODULES=\"dm_crypt  raid1\"\nCOMPRESSION='gzip'\nIMAGE=myname/desktop:v2\n",
        )
        .unwrap();
        assert_eq!(s.mode, ModuleMode::HostOnly);
        assert_eq!(s.modules, ["dm_crypt", "raid1"]);
        assert_eq!(s.compression, Compression::Gzip);
        assert_eq!(s.image.as_deref(), Some("myname/desktop:v2"));
        let s = Settings::parse("f", "MODE=listed\nMODULES=virtio_blk\nIMAGE=\n").unwrap();
        assert_eq!((s.mode, s.image), (ModuleMode::Listed, None));
        // Nothing is expanded: a $ stays a $ (and is not a module name the kernel has).
        assert_eq!(Settings::parse("f", "MODULES=$X").unwrap().modules, ["$X"]);
    }

    #[test]
    fn settings_errors_name_the_file_and_line() {
        assert_eq!(
            err("MODE=generic\nFOO=1\n"),
            "/etc/dockroot/mkinitramfs.conf, line 2: unknown setting \"FOO\" (the settings are MODE, MODULES, COMPRESSION, IMAGE)"
        );
        assert!(err("MODE=tiny").contains("line 1: MODE=\"tiny\": expected generic, hostonly or listed"));
        assert!(err("COMPRESSION=lz4").contains("line 1: COMPRESSION:"));
        assert!(err("\nMODE=generic\nMODE=hostonly").contains("line 3: MODE is set twice"));
        assert!(err("just words").contains("line 1: \"just words\" is not KEY=VALUE"));
        assert!(err("IMAGE=\"a").contains("same quote"));
        assert!(err("IMAGE=Not A Reference").contains("line 1: IMAGE="));
        assert!(err("MODE=listed").contains("MODE=listed needs MODULES="));
    }

    #[test]
    fn image_from_docker_btrfs_json_first_then_the_settings() {
        let root = temp("image");
        let none = image_config(&root, &Settings::default()).unwrap_err().to_string();
        assert!(none.contains("no image to boot") && none.contains("etc/docker-btrfs.json"), "{none}");
        assert!(none.contains("IMAGE= in") && none.contains("etc/dockroot/mkinitramfs.conf"), "{none}");

        let settings = Settings { image: Some("myname/desktop:v2".into()), ..Settings::default() };
        let (bytes, from) = image_config(&root, &settings).unwrap();
        assert_eq!(from, root.join(SETTINGS_PATH));
        let spec = dockroot::reference::from_prior_art_config(&bytes).unwrap();
        assert_eq!(spec.to_string(), dockroot::reference::parse("myname/desktop:v2").unwrap().to_string());

        std::fs::create_dir_all(root.join("etc")).unwrap();
        let json = br#"{"docker_image": "os", "docker_tag": "7"}"#;
        std::fs::write(root.join(IMAGE_CONFIG_PATH), json).unwrap();
        let (bytes, from) = image_config(&root, &settings).unwrap();
        assert_eq!((bytes.as_slice(), from), (&json[..], root.join(IMAGE_CONFIG_PATH)));

        std::fs::write(root.join(IMAGE_CONFIG_PATH), b"{}").unwrap();
        let bad = image_config(&root, &settings).unwrap_err().to_string();
        assert!(bad.contains("docker-btrfs.json") && bad.contains("docker_image"), "{bad}");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn kernels_with_modules_and_an_image_in_boot() {
        let root = temp("kernels");
        for r in ["6.1.0-9-amd64", "6.12.1-amd64", "no-vmlinuz"] {
            std::fs::create_dir_all(root.join("usr/lib/modules").join(r)).unwrap();
        }
        std::fs::create_dir_all(root.join("lib/modules/6.0.0-old")).unwrap();
        std::fs::create_dir_all(root.join("boot")).unwrap();
        for r in ["6.1.0-9-amd64", "6.12.1-amd64", "6.0.0-old", "gone-modules"] {
            std::fs::write(kernel_image(&root, r), b"kernel").unwrap();
        }
        // A file is not a modules directory.
        std::fs::write(root.join("usr/lib/modules/file"), b"").unwrap();
        std::fs::write(kernel_image(&root, "file"), b"kernel").unwrap();
        assert_eq!(installed_kernels(&root).unwrap(), ["6.0.0-old", "6.1.0-9-amd64", "6.12.1-amd64"]);
        assert_eq!(modules_dir(&root, "6.0.0-old").unwrap(), root.join("lib/modules/6.0.0-old"));
        assert_eq!(modules_dir(&root, "6.12.1-amd64").unwrap(), root.join("usr/lib/modules/6.12.1-amd64"));
        assert!(modules_dir(&root, "gone-modules").unwrap_err().to_string().contains("has no modules directory"));
        assert!(modules_dir(&root, "..").is_err() && modules_dir(&root, "a/b").is_err());

        let all = Request { action: Action::UpdateAll, root: root.clone(), output: None };
        let t = targets(&all).unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(t[1], ("6.1.0-9-amd64".to_string(), root.join("boot/initrd.img-6.1.0-9-amd64")));
        let one = Request { action: Action::Update("x".into()), root: root.clone(), output: Some("/s/initrd".into()) };
        assert_eq!(targets(&one).unwrap(), [("x".to_string(), PathBuf::from("/s/initrd"))]);
        let bad = Request { action: Action::Remove("../x".into()), root: root.clone(), output: None };
        assert!(targets(&bad).is_err());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn options_follow_the_settings() {
        let root = temp("options");
        std::fs::create_dir_all(root.join("usr/lib/modules/6.1.0-9-amd64")).unwrap();
        let s = Settings {
            mode: ModuleMode::Generic,
            modules: vec!["dm_crypt".into()],
            image: Some("os".into()),
            ..Default::default()
        };
        let o = options(&root, &s, "6.1.0-9-amd64", PathBuf::from("/out"), 5).unwrap();
        assert!(o.generic && !o.hostonly);
        assert_eq!(o.modules, ["dm_crypt"]);
        assert_eq!(o.init, Some(root.join(PACKAGED_INIT)));
        assert!(matches!(o.commands, Commands::Leave));
        assert_eq!((o.kernel_release.as_deref(), o.mtime, o.kernel_config.clone()), (Some("6.1.0-9-amd64"), 5, None));
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        std::fs::write(root.join(PACKAGED_COMMANDS), b"").unwrap();
        let s = Settings { mode: ModuleMode::HostOnly, ..s };
        let o = options(&root, &s, "6.1.0-9-amd64", PathBuf::from("/out"), 0).unwrap();
        assert!(!o.generic && o.hostonly);
        assert!(matches!(o.commands, Commands::Path(ref p) if *p == root.join(PACKAGED_COMMANDS)));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn remove_is_quiet_about_a_missing_file() {
        let root = temp("remove");
        let f = root.join("initrd.img-1");
        std::fs::write(&f, b"x").unwrap();
        assert!(remove(&f).unwrap());
        assert!(!remove(&f).unwrap());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
