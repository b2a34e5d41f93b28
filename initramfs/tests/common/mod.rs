//! Helpers shared by the builder's integration tests: synthetic module trees,
//! running the builder, reading its output back.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use dockroot_mkinitramfs::{cpio, elf};

pub const RELEASE: &str = "6.1.0-99-test";

/// A fresh, empty directory for one test.
pub fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "dockroot-mkinitramfs-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The bytes of a fake module: an ELF with a `.modinfo` section.
pub fn module_elf(name: &str, vermagic: &str, modinfo_extra: &[&str]) -> Vec<u8> {
    let mut info = Vec::new();
    for item in modinfo_extra
        .iter()
        .copied()
        .chain([format!("name={name}").as_str(), &format!("vermagic={vermagic} SMP preempt mod_unload modversions ")])
    {
        info.extend_from_slice(item.as_bytes());
        info.push(0);
    }
    let text = format!("code of {name}");
    elf::minimal_elf64(&[(".text", text.as_bytes()), (".modinfo", &info)])
}

/// Pipe bytes through a command.
pub fn pipe(cmd: &str, args: &[&str], input: &[u8]) -> Vec<u8> {
    let mut child = Command::new(cmd).args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let t = std::thread::spawn(move || stdin.write_all(&input).unwrap());
    let out = child.wait_with_output().unwrap();
    t.join().unwrap();
    assert!(out.status.success(), "{cmd} failed");
    out.stdout
}

/// A synthetic `/lib/modules/RELEASE` tree.
pub struct Tree {
    pub dir: PathBuf,
}

impl Tree {
    pub fn new(root: &Path, release: &str) -> Tree {
        let dir = root.join("lib/modules").join(release);
        std::fs::create_dir_all(dir.join("kernel")).unwrap();
        Tree { dir }
    }

    /// Write a module at `rel` (compressed with the real tool if the suffix says so);
    /// returns the plain ELF bytes.
    pub fn module(&self, rel: &str, name: &str, vermagic: &str, modinfo: &[&str]) -> Vec<u8> {
        let plain = module_elf(name, vermagic, modinfo);
        let bytes = if rel.ends_with(".xz") {
            pipe("xz", &["--check=crc32", "-c"], &plain)
        } else if rel.ends_with(".zst") {
            pipe("zstd", &["-q", "-c"], &plain)
        } else if rel.ends_with(".gz") {
            pipe("gzip", &["-n", "-c"], &plain)
        } else {
            plain.clone()
        };
        let path = self.dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
        plain
    }

    pub fn file(&self, name: &str, text: &str) {
        std::fs::write(self.dir.join(name), text).unwrap();
    }

    pub fn bytes(&self, name: &str, bytes: &[u8]) {
        std::fs::write(self.dir.join(name), bytes).unwrap();
    }
}

/// A valid config file.
pub fn config(dir: &Path) -> PathBuf {
    let path = dir.join("docker-btrfs.json");
    std::fs::write(&path, r#"{"docker_image": "archlinux/base", "docker_tag": "latest"}"#).unwrap();
    path
}

/// The static init the tests use (busybox-static, installed by scripts/setup).
pub fn static_init() -> PathBuf {
    let p = PathBuf::from("/bin/busybox");
    assert!(p.exists(), "/bin/busybox (Debian's busybox-static) is needed as a static test init: run scripts/setup");
    p
}

/// Run the builder binary.
pub fn run(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dockroot-mkinitramfs"));
    cmd.args(args).env_remove("SOURCE_DATE_EPOCH");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Decompress an image by its magic, with the real tools.
pub fn decompress(image: &[u8]) -> Vec<u8> {
    match image.get(..4) {
        Some([0x28, 0xb5, 0x2f, 0xfd]) => pipe("zstd", &["-d", "-c"], image),
        Some([0x1f, 0x8b, ..]) => pipe("gzip", &["-d", "-c"], image),
        _ => image.to_vec(),
    }
}

/// Read an image file back: its cpio entries.
pub fn entries(image: &Path) -> Vec<cpio::Entry> {
    cpio::read(&decompress(&std::fs::read(image).unwrap())).unwrap()
}

pub fn find<'a>(entries: &'a [cpio::Entry], name: &str) -> &'a cpio::Entry {
    entries.iter().find(|e| e.name == name).unwrap_or_else(|| panic!("no {name} in the image"))
}

/// The module index of an image, parsed.
pub fn index(entries: &[cpio::Entry]) -> dockroot::modules::ModuleIndex {
    let text = std::str::from_utf8(&find(entries, dockroot::modules::INDEX_PATH).data).unwrap();
    dockroot::modules::parse_index(text).unwrap()
}

pub fn names(index: &dockroot::modules::ModuleIndex) -> Vec<String> {
    index.modules.iter().map(|m| m.name.clone()).collect()
}

pub fn position(index: &dockroot::modules::ModuleIndex, name: &str) -> usize {
    index.modules.iter().position(|m| m.name == name).unwrap_or_else(|| panic!("{name} not in the index"))
}
