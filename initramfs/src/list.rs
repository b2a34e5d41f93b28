//! `dockroot-mkinitramfs --list FILE`: what a dockroot initramfs holds, read
//! back with the builder's own readers (the cpio reader of [`crate::cpio`], the
//! decompressors of [`crate::compress`], the module index parser and the config
//! check of the library, the static-init check of [`crate::elf`]).
//!
//! [`inspect`] is pure (bytes in, [`Listing`] out); [`human`] and [`json`]
//! print it. The JSON form is versioned (`"dockroot_initramfs_list": 1`;
//! fields are only added within a version).

use std::fmt::Write as _;

use dockroot::error::{Error, Result};
use dockroot::modules::{parse_index, Load, INDEX_PATH};
use dockroot::record::{COMMANDS_IN_INITRAMFS, MANIFEST_IN_INITRAMFS};

use crate::build::{init_version, CONFIG_PATH};
use crate::compress::{decompress_image, image_compression, Compression};
use crate::cpio::{self, Entry};

/// The JSON schema version of `--list --json`.
pub const SCHEMA_VERSION: u32 = 1;
/// The most an image is decompressed to (newc files are at most 4 GiB each).
pub const MAX_CPIO_BYTES: u64 = 2 << 30;

/// A module of the image, in load order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    pub name: String,
    /// Its file in the image, without the leading `/`.
    pub path: String,
    pub load: Load,
    /// The file's size in the image (`None`: the index names a file the image lacks).
    pub bytes: Option<usize>,
    pub deps: Vec<String>,
}

/// Where the init's version was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionFrom {
    /// The builder's manifest (`MANIFEST_IN_INITRAMFS`).
    Manifest,
    /// The `/init` binary itself (an image made before the manifest).
    Init,
}

/// What [`inspect`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    /// The file's size.
    pub file_bytes: usize,
    /// Uncompressed cpio archives before the image (early microcode), in bytes.
    pub early_bytes: usize,
    pub compression: Compression,
    /// The image's cpio, decompressed.
    pub cpio_bytes: usize,
    pub entries: usize,
    /// The kernel release of the module index.
    pub kernel: String,
    pub init_bytes: usize,
    /// `Err(why)` when `/init` is not a static x86-64 executable.
    pub init_static: std::result::Result<(), String>,
    pub init_version: Option<(String, VersionFrom)>,
    /// The builder's version from the manifest.
    pub builder: Option<String>,
    pub commands_bytes: Option<usize>,
    /// The embedded config's size and the image it names (or why the init would refuse it).
    pub config: Option<(usize, std::result::Result<String, String>)>,
    pub modules: Vec<Module>,
    pub aliases: usize,
    pub index_bytes: usize,
    /// Firmware files: path without the leading `/`, size.
    pub firmware: Vec<(String, usize)>,
    /// The cpio's bytes not in the parts above (headers, names, padding, the manifest, small files).
    pub other_bytes: usize,
}

impl Listing {
    /// Modules loaded at every boot, and by modalias.
    pub fn counts(&self) -> (usize, usize) {
        let always = self.modules.iter().filter(|m| m.load == Load::Always).count();
        (always, self.modules.len().saturating_sub(always))
    }

    pub fn modules_bytes(&self) -> usize {
        self.modules.iter().filter_map(|m| m.bytes).sum()
    }

    pub fn firmware_bytes(&self) -> usize {
        self.firmware.iter().map(|f| f.1).sum()
    }
}

fn not_ours(why: impl std::fmt::Display) -> Error {
    Error::msg(format!("not a dockroot initramfs: {why}"))
}

fn has_index(entries: &[Entry]) -> bool {
    entries.iter().any(|e| e.name == INDEX_PATH)
}

/// Read an initramfs image: uncompressed early archives, then the image
/// (a newc cpio, plain, zstd or gzip), which must hold `/init` and the module
/// index. Anything else is an error saying why it is not a dockroot initramfs.
pub fn inspect(data: &[u8]) -> Result<Listing> {
    let mut rest = data;
    let mut early_bytes = 0usize;
    let (compression, cpio_bytes, entries) = loop {
        let how = image_compression(rest).map_err(not_ours)?;
        if how == Compression::None {
            let (entries, end) = cpio::read_prefix(rest).map_err(not_ours)?;
            if has_index(&entries) {
                break (how, end, entries);
            }
            // An early archive (microcode): the image follows, after zero padding.
            let after = rest.get(end..).unwrap_or_default();
            let zeros = after.iter().take_while(|&&b| b == 0).count();
            early_bytes = early_bytes.saturating_add(end).saturating_add(zeros);
            rest = after.get(zeros..).unwrap_or_default();
            if rest.is_empty() {
                return Err(not_ours(format!("its cpio archive has no module index (/{INDEX_PATH})")));
            }
            continue;
        }
        let cpio = decompress_image(rest, how, MAX_CPIO_BYTES).map_err(not_ours)?;
        let entries = cpio::read(&cpio).map_err(not_ours)?;
        break (how, cpio.len(), entries);
    };
    let find = |name: &str| entries.iter().find(|e| e.name == name.trim_start_matches('/'));
    let index = find(INDEX_PATH).ok_or_else(|| not_ours(format!("no module index (/{INDEX_PATH})")))?;
    let text = std::str::from_utf8(&index.data).map_err(|_| not_ours("its module index is not UTF-8"))?;
    let parsed = parse_index(text).map_err(|e| not_ours(format!("its module index: {e}")))?;
    let init = find("init").ok_or_else(|| not_ours("no /init"))?;

    let manifest = find(MANIFEST_IN_INITRAMFS).and_then(|m| serde_json::from_slice::<serde_json::Value>(&m.data).ok());
    let field = |k: &str| manifest.as_ref().and_then(|m| m.get(k)).and_then(|v| v.as_str()).map(str::to_owned);
    let init_version = match field("init_version") {
        Some(v) => Some((v, VersionFrom::Manifest)),
        None => init_version(&init.data).map(|v| (v, VersionFrom::Init)),
    };
    let config = find(CONFIG_PATH).map(|c| {
        let image =
            dockroot::reference::from_prior_art_config(&c.data).map(|s| s.to_string()).map_err(|e| e.to_string());
        (c.data.len(), image)
    });
    let modules: Vec<Module> = parsed
        .modules
        .iter()
        .map(|m| Module {
            name: m.name.clone(),
            path: m.path.clone(),
            load: m.load,
            bytes: find(&m.path).map(|e| e.data.len()),
            deps: m.deps.clone(),
        })
        .collect();
    let firmware: Vec<(String, usize)> = entries
        .iter()
        .filter(|e| e.name.starts_with("lib/firmware/") && e.mode & cpio::S_IFMT == cpio::S_IFREG)
        .map(|e| (e.name.clone(), e.data.len()))
        .collect();
    let commands_bytes = find(COMMANDS_IN_INITRAMFS).map(|e| e.data.len());
    let mut listing = Listing {
        file_bytes: data.len(),
        early_bytes,
        compression,
        cpio_bytes,
        entries: entries.len(),
        kernel: parsed.kernel.clone(),
        init_bytes: init.data.len(),
        init_static: crate::elf::check_static_x86_64(&init.data),
        init_version,
        builder: field("builder"),
        commands_bytes,
        config,
        modules,
        aliases: parsed.aliases.iter().filter(|a| !a.pattern.starts_with("fs-")).count(),
        index_bytes: index.data.len(),
        firmware,
        other_bytes: 0,
    };
    let parts = [
        listing.init_bytes,
        listing.commands_bytes.unwrap_or(0),
        listing.modules_bytes(),
        listing.firmware_bytes(),
        listing.index_bytes,
        listing.config.as_ref().map_or(0, |c| c.0),
    ];
    listing.other_bytes = cpio_bytes.saturating_sub(parts.iter().sum());
    Ok(listing)
}

/// `part` as a share of `whole`, for the human form.
fn percent(part: usize, whole: usize) -> String {
    if whole == 0 {
        return "-".to_owned();
    }
    format!("{:.1}%", part as f64 * 100.0 / whole as f64)
}

/// The human form (stdout of `--list FILE`); `file` as the user named it.
pub fn human(file: &str, l: &Listing) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{file}: dockroot initramfs for kernel {}", l.kernel);
    let early = if l.early_bytes > 0 {
        format!(" after {} bytes of uncompressed early cpio", l.early_bytes)
    } else {
        String::new()
    };
    let _ = writeln!(
        s,
        "  file: {} bytes, {}{early}; {} bytes of cpio, {} entries",
        l.file_bytes,
        l.compression.name(),
        l.cpio_bytes,
        l.entries
    );
    let version = match &l.init_version {
        Some((v, VersionFrom::Manifest)) => format!("dockroot-init {v}"),
        Some((v, VersionFrom::Init)) => format!("dockroot-init {v} (read from /init: no manifest)"),
        None => "not a dockroot init (no version)".to_owned(),
    };
    let kind = match &l.init_static {
        Ok(()) => "static x86-64".to_owned(),
        Err(why) => format!("NOT a static x86-64 executable: {why}"),
    };
    let _ = writeln!(s, "  init: /init, {version}, {} bytes, {kind}", l.init_bytes);
    let _ = match l.commands_bytes {
        Some(n) => {
            writeln!(s, "  commands: {COMMANDS_IN_INITRAMFS}, {n} bytes (left at /run/dockroot/dockroot at boot)")
        }
        None => writeln!(s, "  commands: none"),
    };
    let _ = match &l.config {
        Some((_, Ok(image))) => writeln!(s, "  config: /{CONFIG_PATH}: image {image}"),
        Some((_, Err(why))) => writeln!(s, "  config: /{CONFIG_PATH}: refused by the init: {why}"),
        None => writeln!(s, "  config: none (/{CONFIG_PATH} is missing: the boot needs dockroot.image=)"),
    };
    let _ = writeln!(s, "  built by: dockroot-mkinitramfs {}", l.builder.as_deref().unwrap_or("(not recorded)"));
    let (always, by_modalias) = l.counts();
    let _ = writeln!(
        s,
        "  modules: {} ({always} always, {by_modalias} by modalias; {} device aliases), {} bytes, in load order:",
        l.modules.len(),
        l.aliases,
        l.modules_bytes()
    );
    let width = l.modules.iter().map(|m| m.name.len()).max().unwrap_or(0);
    for m in &l.modules {
        let bytes = m.bytes.map_or("MISSING".to_owned(), |b| b.to_string());
        let _ = writeln!(s, "    {:<8} {:<width$} {bytes:>9}  /{}", m.load.word(), m.name, m.path);
    }
    if l.firmware.is_empty() {
        let _ = writeln!(s, "  firmware: none");
    } else {
        let _ = writeln!(s, "  firmware: {} files, {} bytes:", l.firmware.len(), l.firmware_bytes());
        for (path, bytes) in &l.firmware {
            let _ = writeln!(s, "    {bytes:>9}  /{path}");
        }
    }
    let _ = writeln!(s, "  sizes (uncompressed, of {} bytes of cpio):", l.cpio_bytes);
    let rows = [
        ("init", l.init_bytes),
        ("commands", l.commands_bytes.unwrap_or(0)),
        ("modules", l.modules_bytes()),
        ("firmware", l.firmware_bytes()),
        ("module index", l.index_bytes),
        ("config", l.config.as_ref().map_or(0, |c| c.0)),
        ("other", l.other_bytes),
    ];
    for (what, bytes) in rows {
        let _ = writeln!(s, "    {what:<12} {bytes:>10}  {:>6}", percent(bytes, l.cpio_bytes));
    }
    s
}

/// The JSON form (`--list FILE --json`), schema [`SCHEMA_VERSION`].
pub fn json(file: &str, l: &Listing) -> serde_json::Value {
    use serde_json::json;
    let (always, by_modalias) = l.counts();
    json!({
        "dockroot_initramfs_list": SCHEMA_VERSION,
        "file": file,
        "file_bytes": l.file_bytes,
        "compression": l.compression.name(),
        "early_cpio_bytes": l.early_bytes,
        "cpio_bytes": l.cpio_bytes,
        "entries": l.entries,
        "kernel": l.kernel,
        "init": {
            "path": "/init",
            "bytes": l.init_bytes,
            "version": l.init_version.as_ref().map(|v| v.0.clone()),
            "version_from": l.init_version.as_ref().map(|v| match v.1 {
                VersionFrom::Manifest => "manifest",
                VersionFrom::Init => "init",
            }),
            "static": l.init_static.is_ok(),
            "not_static": l.init_static.as_ref().err(),
        },
        "commands": l.commands_bytes.map(|b| json!({"path": COMMANDS_IN_INITRAMFS, "bytes": b})),
        "config": l.config.as_ref().map(|(bytes, image)| json!({
            "path": format!("/{CONFIG_PATH}"),
            "bytes": bytes,
            "image": image.as_ref().ok(),
            "error": image.as_ref().err(),
        })),
        "builder": l.builder,
        "modules": l.modules.iter().map(|m| json!({
            "name": m.name,
            "path": format!("/{}", m.path),
            "load": m.load.word(),
            "bytes": m.bytes,
            "deps": m.deps,
        })).collect::<Vec<_>>(),
        "modules_always": always,
        "modules_by_modalias": by_modalias,
        "aliases": l.aliases,
        "firmware": l.firmware.iter().map(|(p, b)| json!({"path": format!("/{p}"), "bytes": b})).collect::<Vec<_>>(),
        "sizes": {
            "init": l.init_bytes,
            "commands": l.commands_bytes.unwrap_or(0),
            "modules": l.modules_bytes(),
            "firmware": l.firmware_bytes(),
            "index": l.index_bytes,
            "config": l.config.as_ref().map_or(0, |c| c.0),
            "other": l.other_bytes,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::compress;
    use crate::cpio::Archive;
    use dockroot::modules::{write_index, IndexEntry, ModuleIndex};

    fn index() -> String {
        let entry = |name: &str, load, deps: &[&str]| IndexEntry {
            name: name.into(),
            path: format!("lib/modules/6.1.0-9/kernel/{name}.ko"),
            load,
            deps: deps.iter().map(|d| d.to_string()).collect(),
            pre: vec![],
            post: vec![],
        };
        let index = ModuleIndex {
            kernel: "6.1.0-9".into(),
            modules: vec![
                entry("libcrc32c", Load::Always, &[]),
                entry("btrfs", Load::Always, &["libcrc32c"]),
                entry("virtio_blk", Load::Modalias, &[]),
            ],
            aliases: vec![dockroot::modules::Alias {
                pattern: "virtio:d00000002v*".into(),
                module: "virtio_blk".into(),
            }],
        };
        write_index(&index).unwrap()
    }

    /// An image as the builder lays it out (init: some bytes with a version line).
    fn archive(with_manifest: bool) -> Archive {
        let mut a = Archive::new();
        a.add_file("init", 0o755, b"\x7fELF...dockroot-init 1.2.3\n...".to_vec()).unwrap();
        a.add_file("etc/docker-btrfs.json", 0o644, br#"{"docker_image": "team/os", "docker_tag": "v1"}"#.to_vec())
            .unwrap();
        a.add_file(INDEX_PATH, 0o644, index().into_bytes()).unwrap();
        a.add_file("lib/modules/6.1.0-9/kernel/libcrc32c.ko", 0o644, vec![1; 100]).unwrap();
        a.add_file("lib/modules/6.1.0-9/kernel/btrfs.ko", 0o644, vec![2; 1000]).unwrap();
        a.add_file("lib/modules/6.1.0-9/kernel/virtio_blk.ko", 0o644, vec![3; 10]).unwrap();
        a.add_file("lib/firmware/x/y.bin", 0o644, vec![4; 7]).unwrap();
        a.add_file("usr/lib/dockroot/dockroot", 0o755, vec![5; 50]).unwrap();
        if with_manifest {
            let m = crate::build::manifest(Some("1.2.4"));
            a.add_file(MANIFEST_IN_INITRAMFS, 0o644, m.into_bytes()).unwrap();
        }
        a
    }

    #[test]
    fn lists_every_part_of_an_image() {
        let cpio = archive(true).write(0).unwrap();
        let image = compress(&cpio, Compression::Zstd).unwrap();
        let l = inspect(&image).unwrap();
        assert_eq!(
            (l.file_bytes, l.cpio_bytes, l.compression, l.early_bytes),
            (image.len(), cpio.len(), Compression::Zstd, 0)
        );
        assert_eq!(l.kernel, "6.1.0-9");
        assert_eq!(l.init_version, Some(("1.2.4".into(), VersionFrom::Manifest)), "the manifest wins");
        assert_eq!(l.builder.as_deref(), Some(env!("CARGO_PKG_VERSION")));
        assert!(l.init_static.is_err(), "not an ELF executable");
        assert_eq!(l.commands_bytes, Some(50));
        // The reference as the init normalises it.
        let image = l.config.as_ref().unwrap().1.clone().unwrap();
        assert!(image.ends_with("team/os:v1"), "{image}");
        let names: Vec<(&str, Load, Option<usize>)> =
            l.modules.iter().map(|m| (m.name.as_str(), m.load, m.bytes)).collect();
        assert_eq!(
            names,
            [
                ("libcrc32c", Load::Always, Some(100)),
                ("btrfs", Load::Always, Some(1000)),
                ("virtio_blk", Load::Modalias, Some(10))
            ]
        );
        assert_eq!(l.modules[1].deps, ["libcrc32c"]);
        assert_eq!((l.counts(), l.aliases, l.modules_bytes()), ((2, 1), 1, 1110));
        assert_eq!(l.firmware, [("lib/firmware/x/y.bin".to_string(), 7)]);
        let parts = l.init_bytes + 50 + 1110 + 7 + l.index_bytes + l.config.as_ref().unwrap().0 + l.other_bytes;
        assert_eq!(parts, l.cpio_bytes);

        let h = human("img", &l);
        assert!(h.starts_with("img: dockroot initramfs for kernel 6.1.0-9\n"), "{h}");
        assert!(h.contains("  init: /init, dockroot-init 1.2.4, "), "{h}");
        assert!(h.contains("NOT a static x86-64 executable"), "{h}");
        assert!(h.contains(&format!("  config: /etc/docker-btrfs.json: image {image}\n")), "{h}");
        assert!(h.contains("  modules: 3 (2 always, 1 by modalias; 1 device aliases), 1110 bytes"), "{h}");
        assert!(h.contains("    modalias virtio_blk        10  /lib/modules/6.1.0-9/kernel/virtio_blk.ko\n"), "{h}");
        let j = json("img", &l);
        assert_eq!(j["dockroot_initramfs_list"], 1);
        assert_eq!(j["init"]["version_from"], "manifest");
        assert_eq!(j["modules"][2]["path"], "/lib/modules/6.1.0-9/kernel/virtio_blk.ko");
        assert_eq!(j["sizes"]["modules"], 1110);
        assert_eq!(j["commands"]["bytes"], 50);
    }

    #[test]
    fn without_a_manifest_the_version_is_read_from_the_init() {
        let cpio = archive(false).write(0).unwrap();
        let image = compress(&cpio, Compression::Gzip).unwrap();
        let l = inspect(&image).unwrap();
        assert_eq!(l.compression, Compression::Gzip);
        assert_eq!(l.init_version, Some(("1.2.3".into(), VersionFrom::Init)));
        assert_eq!(l.builder, None);
        assert!(human("img", &l).contains("dockroot-init 1.2.3 (read from /init: no manifest)"));
        assert_eq!(json("img", &l)["init"]["version_from"], "init");
    }

    #[test]
    fn an_early_archive_and_an_uncompressed_image() {
        let mut early = Archive::new();
        early.add_file("kernel/x86/microcode/GenuineIntel.bin", 0o644, vec![9; 33]).unwrap();
        let mut data = early.write(0).unwrap();
        let early_len = data.len() + 64;
        data.extend([0u8; 64]);
        let image = archive(true).write(0).unwrap();
        data.extend(&image);
        let l = inspect(&data).unwrap();
        assert_eq!((l.early_bytes, l.compression, l.cpio_bytes), (early_len, Compression::None, image.len()));
        assert!(human("img", &l).contains(&format!("none after {early_len} bytes of uncompressed early cpio")));
    }

    #[test]
    fn other_files_are_not_dockroot_initramfs_images() {
        let err = |data: &[u8]| inspect(data).unwrap_err().to_string();
        assert!(err(b"").starts_with("not a dockroot initramfs: neither"), "{}", err(b""));
        assert!(err(b"garbage, not an image").contains("neither a newc cpio archive nor zstd or gzip"));
        let mut other = Archive::new();
        other.add_file("init", 0o755, b"#!/bin/sh".to_vec()).unwrap();
        other.add_file("scripts/init-top/x", 0o644, vec![]).unwrap();
        let plain = other.write(0).unwrap();
        assert!(err(&plain).contains("no module index"), "{}", err(&plain));
        let zst = compress(&plain, Compression::Zstd).unwrap();
        assert!(err(&zst).contains("no module index (/lib/modules/dockroot-modules.index)"), "{}", err(&zst));
        assert!(err(&zst[..zst.len() / 2]).starts_with("not a dockroot initramfs: "));
        let mut no_init = Archive::new();
        no_init.add_file(INDEX_PATH, 0o644, index().into_bytes()).unwrap();
        assert_eq!(err(&no_init.write(0).unwrap()), "not a dockroot initramfs: no /init");
        let mut bad_index = Archive::new();
        bad_index.add_file("init", 0o755, vec![]).unwrap();
        bad_index.add_file(INDEX_PATH, 0o644, b"dockroot-modules 99\n".to_vec()).unwrap();
        assert!(err(&bad_index.write(0).unwrap()).contains("its module index: "));
        // Every truncation of a real image is an error or a listing, never a panic.
        let image = compress(&archive(true).write(0).unwrap(), Compression::Gzip).unwrap();
        for n in 0..image.len() {
            let _ = inspect(&image[..n]);
        }
    }
}
