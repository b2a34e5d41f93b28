//! `dockroot boot-files`: the kernel and dockroot initramfs inside the root
//! the next boot boots, which may be layers (an overlay root's upper directory
//! over the image's layers, Docker's overlay2 layer directories, the machine's
//! top layer over the image) or one complete tree (a btrfs subvolume).
//!
//! [`Layers`] looks a path up through the layers top-down as overlayfs would
//! show it: the first layer that has a name decides what it is; a whiteout
//! (a `0:0` character device, or a `.wh.NAME` file as in image tarballs) hides
//! it; a directory merges with the same directory of lower layers until one is
//! opaque (`trusted.overlay.opaque`/`user.overlay.opaque` = `y`, or a
//! `.wh..wh..opq` file). Symbolic links are resolved inside the image (an
//! absolute target starts again at the image's root), never on this machine.
//!
//! [`find_boot_files`] then takes the newest release (version order) that has
//! both a kernel and a dockroot initramfs for it, where the init's kexec looks
//! for them (`dockroot::kernel::kernel_paths`, `initrd_paths`). An initramfs is
//! a dockroot one when its cpio (uncompressed, zstd or gzip; after an optional
//! uncompressed early cpio) holds the module index `lib/modules/dockroot-modules.index`
//! and the index's release is the kernel's ([`check_initramfs`], pure).

use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use dockroot::modules::{parse_index, INDEX_MAX_BYTES, INDEX_PATH};
use dockroot::{Error, Result};

use crate::bootfiles_entry::version_cmp;

/// The most symbolic links followed for one path.
const MAX_LINKS: usize = 40;
/// The largest kernel or initramfs read.
pub const MAX_FILE_BYTES: u64 = 1 << 30;
/// The most a compressed initramfs is read through looking for the index.
const MAX_CPIO_BYTES: u64 = 4 << 30;
/// The most cpio entries looked at.
const MAX_CPIO_ENTRIES: usize = 1_000_000;
/// The most releases looked at.
const MAX_RELEASES: usize = 64;

/// A root as layers, top first (one for a complete tree), and how to name
/// paths inside it in messages.
#[derive(Debug, Clone)]
pub struct Layers {
    pub dirs: Vec<PathBuf>,
    /// What the root is, for messages ("the image example/os:2", "/rwlayer").
    pub shown: String,
}

/// What a name is in the merged view.
enum Found {
    Absent,
    File(PathBuf),
    Link(PathBuf),
    /// The directories that make it up, top first.
    Dir(Vec<PathBuf>),
}

fn is_whiteout(m: &std::fs::Metadata) -> bool {
    m.file_type().is_char_device() && m.rdev() == 0
}

fn is_opaque(dir: &Path) -> bool {
    let xattr = |name: &str| {
        let mut buf = [0u8; 4];
        rustix::fs::lgetxattr(dir, name, &mut buf).ok().and_then(|n| buf.get(..n).map(|v| v == b"y")).unwrap_or(false)
    };
    xattr("trusted.overlay.opaque") || xattr("user.overlay.opaque") || dir.join(".wh..wh..opq").exists()
}

impl Layers {
    /// Look `name` up in the directory made of `dirs` (top first).
    fn child(dirs: &[PathBuf], name: &str) -> Found {
        let mut merged: Vec<PathBuf> = Vec::new();
        for d in dirs {
            if std::fs::symlink_metadata(d.join(format!(".wh.{name}"))).is_ok() {
                break;
            }
            let p = d.join(name);
            let Ok(m) = std::fs::symlink_metadata(&p) else { continue };
            match (merged.is_empty(), m.file_type()) {
                (_, t) if t.is_dir() => {
                    let opaque = is_opaque(&p);
                    merged.push(p);
                    if opaque {
                        break;
                    }
                }
                (true, _) if is_whiteout(&m) => return Found::Absent,
                (true, t) if t.is_symlink() => return Found::Link(p),
                (true, t) if t.is_file() => return Found::File(p),
                (true, _) => return Found::Absent,
                // Below a directory, anything else ends the merge (overlayfs hides it).
                (false, _) => break,
            }
        }
        if merged.is_empty() {
            Found::Absent
        } else {
            Found::Dir(merged)
        }
    }

    /// Resolve `path` (relative to the image's root) to what it names: the real
    /// path of a regular file, or the directories of a directory.
    fn resolve(&self, path: &str) -> Result<Found> {
        let mut stack: Vec<Vec<PathBuf>> = vec![self.dirs.clone()];
        let mut todo: Vec<String> = components(path).into_iter().rev().collect();
        let mut links = 0usize;
        while let Some(name) = todo.pop() {
            let Some(here) = stack.last() else { return Ok(Found::Absent) };
            if name == ".." {
                if stack.len() > 1 {
                    stack.pop();
                }
                continue;
            }
            let last = todo.is_empty();
            match Layers::child(here, &name) {
                Found::Absent => return Ok(Found::Absent),
                Found::Dir(d) => stack.push(d),
                Found::File(f) if last => return Ok(Found::File(f)),
                Found::File(_) => return Ok(Found::Absent),
                Found::Link(l) => {
                    links = links.saturating_add(1);
                    if links > MAX_LINKS {
                        return Err(Error::msg(format!("/{path} in {}: too many symbolic links", self.shown)));
                    }
                    let target =
                        std::fs::read_link(&l).map_err(|e| Error::with(format!("reading {}", l.display()), e))?;
                    let target = target.to_string_lossy().into_owned();
                    if target.starts_with('/') {
                        stack.truncate(1);
                    }
                    todo.extend(components(&target).into_iter().rev());
                }
            }
        }
        Ok(stack.pop().map(Found::Dir).unwrap_or(Found::Absent))
    }

    /// The real path of the regular file `path` of the image, if it has one.
    pub fn file(&self, path: &str) -> Result<Option<PathBuf>> {
        Ok(match self.resolve(path)? {
            Found::File(f) => Some(f),
            _ => None,
        })
    }

    /// The names in the directory `path` of the image (whiteouts applied), sorted.
    pub fn list(&self, path: &str) -> Result<Vec<String>> {
        let Found::Dir(dirs) = self.resolve(path)? else { return Ok(Vec::new()) };
        let mut seen: Vec<String> = Vec::new();
        let mut hidden: Vec<String> = Vec::new();
        for d in &dirs {
            let rd = std::fs::read_dir(d).map_err(|e| Error::with(format!("listing {}", d.display()), e))?;
            let mut here: Vec<String> = Vec::new();
            for e in rd.flatten().take(100_000) {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(h) = name.strip_prefix(".wh.") {
                    hidden.push(h.to_string());
                } else if e.metadata().is_ok_and(|m| is_whiteout(&m)) {
                    hidden.push(name);
                } else if !hidden.contains(&name) && !seen.contains(&name) {
                    here.push(name);
                }
            }
            seen.extend(here);
        }
        seen.sort();
        Ok(seen)
    }
}

fn components(path: &str) -> Vec<String> {
    path.split('/').filter(|c| !c.is_empty() && *c != ".").map(str::to_string).collect()
}

/// The kernel and initramfs found, with their contents.
pub struct BootFiles {
    pub release: String,
    /// Paths inside the image, as `/boot/vmlinuz-...`.
    pub kernel_path: String,
    pub initrd_path: String,
    pub kernel: Vec<u8>,
    pub initrd: Vec<u8>,
    /// Releases passed over, and why (newest first).
    pub skipped: Vec<String>,
}

fn read_capped(path: &Path) -> Result<Vec<u8>> {
    let f = std::fs::File::open(path).map_err(|e| Error::with(format!("opening {}", path.display()), e))?;
    let mut buf = Vec::new();
    f.take(MAX_FILE_BYTES.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(|e| Error::with(format!("reading {}", path.display()), e))?;
    if buf.len() as u64 > MAX_FILE_BYTES {
        return Err(Error::msg(format!("{} is larger than {MAX_FILE_BYTES} bytes", path.display())));
    }
    Ok(buf)
}

/// The releases the image may boot, newest first: its module directories and
/// its `/boot/vmlinuz-RELEASE` files.
pub fn releases(image: &Layers) -> Result<Vec<String>> {
    let mut r: Vec<String> = Vec::new();
    for dir in ["usr/lib/modules", "lib/modules"] {
        r.extend(image.list(dir)?);
    }
    r.extend(image.list("boot")?.iter().filter_map(|n| n.strip_prefix("vmlinuz-").map(str::to_string)));
    r.retain(|n| !n.is_empty() && !n.starts_with('.') && n != "dockroot-modules.index");
    r.sort_by(|a, b| version_cmp(b, a));
    r.dedup();
    r.truncate(MAX_RELEASES);
    Ok(r)
}

/// The newest release with a kernel and a dockroot initramfs, read; `Ok(None)`
/// with the reasons when there is none.
pub fn find_boot_files(image: &Layers) -> Result<std::result::Result<BootFiles, Vec<String>>> {
    let mut skipped = Vec::new();
    let all = releases(image)?;
    if all.is_empty() {
        skipped.push(
            "no kernel release: no /usr/lib/modules/RELEASE, /lib/modules/RELEASE or /boot/vmlinuz-RELEASE".into(),
        );
    }
    for release in all {
        let kernels = dockroot::kernel::kernel_paths(&release);
        let mut kernel = None;
        for k in &kernels {
            if let Some(p) = image.file(k)? {
                kernel = Some((k.clone(), p));
                break;
            }
        }
        let Some((kernel_path, kernel_real)) = kernel else {
            skipped.push(format!("{release}: no kernel (looked for /{})", kernels.join(", /")));
            continue;
        };
        // The README's /boot/initramfs-dockroot.img is tried for every release:
        // its module index says which one it is for.
        let initrds = dockroot::kernel::initrd_paths(&release, true);
        let mut found = None;
        let mut why: Vec<String> = Vec::new();
        for i in &initrds {
            let Some(p) = image.file(i)? else { continue };
            let data = read_capped(&p)?;
            match check_initramfs(&data, &release) {
                Ok(()) => {
                    found = Some((i.clone(), data));
                    break;
                }
                Err(e) => why.push(format!("/{i}: {e}")),
            }
        }
        let Some((initrd_path, initrd)) = found else {
            let what = if why.is_empty() { format!("looked for /{}", initrds.join(", /")) } else { why.join("; ") };
            skipped.push(format!("{release}: no dockroot initramfs ({what})"));
            continue;
        };
        let kernel = read_capped(&kernel_real)?;
        return Ok(Ok(BootFiles {
            release,
            kernel_path: format!("/{kernel_path}"),
            initrd_path: format!("/{initrd_path}"),
            kernel,
            initrd,
            skipped,
        }));
    }
    Ok(Err(skipped))
}

/// Is `data` a dockroot initramfs for `release`? `Err(why not)`.
pub fn check_initramfs(data: &[u8], release: &str) -> std::result::Result<(), String> {
    let mut rest = data;
    // Uncompressed cpio archives first (an early microcode archive, or the whole image).
    loop {
        if rest.starts_with(b"0707") {
            let mut r = rest;
            match scan_cpio(&mut r)? {
                Some(index) => return check_index(&index, release),
                None => {
                    let used = rest.len().saturating_sub(r.len());
                    rest = rest.get(used..).unwrap_or_default();
                    let zeros = rest.iter().take_while(|&&b| b == 0).count();
                    rest = rest.get(zeros..).unwrap_or_default();
                    if rest.is_empty() {
                        return Err(
                            "not a dockroot initramfs: no module index (lib/modules/dockroot-modules.index)".into()
                        );
                    }
                }
            }
        } else {
            break;
        }
    }
    let index = if rest.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        let dec = ruzstd::decoding::StreamingDecoder::new(rest).map_err(|e| format!("zstd: {e}"))?;
        let mut r = std::io::BufReader::new(dec.take(MAX_CPIO_BYTES));
        scan_cpio(&mut r)?
    } else if rest.starts_with(&[0x1f, 0x8b]) {
        let body = dockroot::modules::gzip_body(rest)?;
        let cpio = miniz_oxide::inflate::decompress_to_vec_with_limit(body, MAX_FILE_BYTES as usize)
            .map_err(|e| format!("gzip: {e:?}"))?;
        scan_cpio(&mut cpio.as_slice())?
    } else {
        return Err("not a dockroot initramfs: neither a cpio archive nor zstd or gzip compressed".into());
    };
    match index {
        Some(i) => check_index(&i, release),
        None => Err("not a dockroot initramfs: no module index (lib/modules/dockroot-modules.index)".into()),
    }
}

fn check_index(index: &[u8], release: &str) -> std::result::Result<(), String> {
    let text = std::str::from_utf8(index).map_err(|_| "its module index is not UTF-8".to_string())?;
    let parsed = parse_index(text).map_err(|e| format!("its module index: {e}"))?;
    if parsed.kernel == release {
        Ok(())
    } else {
        Err(format!("a dockroot initramfs for kernel {}, not {release}", parsed.kernel))
    }
}

fn read_exact(r: &mut impl Read, n: usize) -> std::result::Result<Vec<u8>, String> {
    let mut buf = vec![0u8; n];
    r.read_exact(&mut buf).map_err(|e| format!("cpio: {e}"))?;
    Ok(buf)
}

/// Walk a newc cpio archive up to its trailer: the module index's data, if it is there.
fn scan_cpio(r: &mut impl Read) -> std::result::Result<Option<Vec<u8>>, String> {
    for _ in 0..MAX_CPIO_ENTRIES {
        let header = read_exact(r, 110)?;
        if !(header.starts_with(b"070701") || header.starts_with(b"070702")) {
            return Err("cpio: not a newc header".into());
        }
        let field = |i: usize| -> std::result::Result<usize, String> {
            let at = i.saturating_mul(8).saturating_add(6);
            let hex = header.get(at..at.saturating_add(8)).and_then(|h| std::str::from_utf8(h).ok()).unwrap_or("");
            usize::from_str_radix(hex, 16).map_err(|_| "cpio: a header field is not hexadecimal".to_string())
        };
        let (size, namesize) = (field(6)?, field(11)?);
        if namesize > 4096 {
            return Err("cpio: a file name longer than 4096 bytes".into());
        }
        let name_pad = (4 - (110usize.saturating_add(namesize)) % 4) % 4;
        let name = read_exact(r, namesize.saturating_add(name_pad))?;
        let name = name.get(..namesize.saturating_sub(1)).unwrap_or_default();
        let data_pad = (4 - size % 4) % 4;
        if name == b"TRAILER!!!" {
            return Ok(None);
        }
        let name = name.strip_prefix(b"./").unwrap_or(name);
        let name = name.strip_prefix(b"/").unwrap_or(name);
        if name == INDEX_PATH.as_bytes() {
            if size as u64 > INDEX_MAX_BYTES {
                return Err("its module index is too large".into());
            }
            return read_exact(r, size).map(Some);
        }
        let skip = size.saturating_add(data_pad) as u64;
        let skipped =
            std::io::copy(&mut r.by_ref().take(skip), &mut std::io::sink()).map_err(|e| format!("cpio: {e}"))?;
        if skipped != skip {
            return Err("cpio: truncated".into());
        }
    }
    Err(format!("cpio: more than {MAX_CPIO_ENTRIES} entries"))
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// A newc cpio of `files` (name, data), with its trailer.
    pub fn cpio(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        let entries = files.iter().map(|(n, d)| (*n, *d)).chain([("TRAILER!!!", &b""[..])]);
        for (i, (name, data)) in entries.enumerate() {
            let namesize = name.len() + 1;
            out.extend(
                format!(
                    "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
                    i,
                    0o100644,
                    0,
                    0,
                    1,
                    0,
                    data.len(),
                    0,
                    0,
                    0,
                    0,
                    namesize,
                    0
                )
                .bytes(),
            );
            out.extend(name.bytes());
            out.push(0);
            while out.len() % 4 != 0 {
                out.push(0);
            }
            out.extend_from_slice(data);
            while out.len() % 4 != 0 {
                out.push(0);
            }
        }
        out
    }

    /// A dockroot initramfs for `release` (uncompressed).
    pub fn initramfs(release: &str) -> Vec<u8> {
        let index = format!("dockroot-modules 3\nkernel {release}\n");
        cpio(&[("init", b"\x7fELF"), ("lib/modules/dockroot-modules.index", index.as_bytes())])
    }

    fn temp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("dockroot-bootfiles-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn write(p: &Path, data: &[u8]) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }

    #[test]
    fn recognises_a_dockroot_initramfs_and_its_release() {
        let plain = initramfs("6.12.1");
        assert_eq!(check_initramfs(&plain, "6.12.1"), Ok(()));
        assert_eq!(check_initramfs(&plain, "6.1.0").unwrap_err(), "a dockroot initramfs for kernel 6.12.1, not 6.1.0");
        // After an early microcode archive, and compressed.
        let mut early = cpio(&[("kernel/x86/microcode/GenuineIntel.bin", b"ucode")]);
        early.extend([0u8; 512]);
        let mut with_early = early.clone();
        with_early.extend(&plain);
        assert_eq!(check_initramfs(&with_early, "6.12.1"), Ok(()));
        let gz = {
            let body = miniz_oxide::deflate::compress_to_vec(&plain, 6);
            let mut g = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];
            g.extend(body);
            g.extend([0u8; 8]);
            g
        };
        assert_eq!(check_initramfs(&gz, "6.12.1"), Ok(()));
        // zstd, the builder's default, as the zstd tool makes it (when it is installed).
        let d = temp("zst");
        std::fs::write(d.join("i"), &plain).unwrap();
        if let Ok(z) = std::process::Command::new("zstd").arg("-q").arg("-c").arg(d.join("i")).output() {
            assert_eq!(check_initramfs(&z.stdout, "6.12.1"), Ok(()));
        }
        std::fs::remove_dir_all(&d).unwrap();
        let other = cpio(&[("init", b"#!/bin/sh"), ("scripts/init-top/x", b"")]);
        assert!(check_initramfs(&other, "6.12.1").unwrap_err().contains("no module index"));
        assert!(check_initramfs(b"junk", "6.12.1").unwrap_err().contains("not a dockroot initramfs"));
        assert!(check_initramfs(&plain[..60], "6.12.1").is_err());
    }

    #[test]
    fn looks_through_layers_with_whiteouts_opaque_dirs_and_links() {
        let d = temp("layers");
        let (upper, lower) = (d.join("upper"), d.join("lower"));
        // The lower layer: two releases, a usrmerge symlink, /boot files.
        write(&lower.join("usr/lib/modules/6.1.0/modules.dep"), b"");
        write(&lower.join("usr/lib/modules/6.12.9/vmlinuz"), b"k9");
        write(&lower.join("usr/lib/modules/6.12.10/vmlinuz"), b"k10");
        std::fs::create_dir_all(&lower).unwrap();
        std::os::unix::fs::symlink("usr/lib", lower.join("lib")).unwrap();
        write(&lower.join("boot/vmlinuz-6.1.0"), b"k1");
        write(&lower.join("boot/initrd.img-6.1.0"), &initramfs("6.1.0"));
        write(&lower.join("boot/initrd.img-6.12.10"), b"not dockroot");
        write(&lower.join("etc/a/x"), b"");
        // The upper layer: 6.12.10's directory whited out (a .wh. file), /etc/a opaque.
        write(&upper.join("usr/lib/modules/.wh.6.12.10"), b"");
        write(&upper.join("etc/a/.wh..wh..opq"), b"");
        write(&upper.join("boot/initrd.img-6.12.9"), &initramfs("6.12.9"));
        let l = Layers { dirs: vec![upper.clone(), lower.clone()], shown: "test".into() };
        assert_eq!(l.list("usr/lib/modules").unwrap(), ["6.1.0", "6.12.9"]);
        assert_eq!(l.list("lib/modules").unwrap(), ["6.1.0", "6.12.9"], "through the symlink");
        assert_eq!(l.file("lib/modules/6.12.9/vmlinuz").unwrap(), Some(lower.join("usr/lib/modules/6.12.9/vmlinuz")));
        assert_eq!(l.file("/lib/../lib/modules/6.12.10/vmlinuz").unwrap(), None, "whited out");
        assert_eq!(l.file("etc/a/x").unwrap(), None, "below an opaque directory");
        assert_eq!(l.file("boot").unwrap(), None, "a directory is not a file");
        // Releases newest first; the newest with both a kernel and a dockroot initramfs wins.
        assert_eq!(releases(&l).unwrap(), ["6.12.9", "6.1.0"]);
        let f = find_boot_files(&l).unwrap().unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!((f.release.as_str(), f.kernel_path.as_str()), ("6.12.9", "/usr/lib/modules/6.12.9/vmlinuz"));
        assert_eq!((f.kernel.as_slice(), f.initrd_path.as_str()), (&b"k9"[..], "/boot/initrd.img-6.12.9"));
        // Without it: 6.1.0 (6.12.9 is said to be passed over).
        std::fs::remove_file(upper.join("boot/initrd.img-6.12.9")).unwrap();
        let f = find_boot_files(&l).unwrap().unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!((f.release.as_str(), f.kernel.as_slice()), ("6.1.0", &b"k1"[..]));
        assert!(f.skipped[0].starts_with("6.12.9: no dockroot initramfs"), "{:?}", f.skipped);
        // A symlink loop is an error, not a hang; an empty image says why nothing boots.
        std::os::unix::fs::symlink("loop", upper.join("loop")).unwrap();
        assert!(l.file("loop/x").unwrap_err().to_string().contains("too many symbolic links"));
        let empty = Layers { dirs: vec![d.join("none")], shown: "empty".into() };
        let why = find_boot_files(&empty).unwrap().err().unwrap();
        assert!(why[0].starts_with("no kernel release"), "{why:?}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
