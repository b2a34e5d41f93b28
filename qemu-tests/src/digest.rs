//! The tree digests the crash and root tests compare (a pure walk of a directory
//! tree on the host: file types, metadata, content hashes and extended attributes).

use std::fs;
use std::io::Read;
use std::path::Path;

/// A digest of everything below `root`, by path relative to it ("." is `root` itself;
/// a name that is not UTF-8 is written with `\xNN` escapes): file type, mode, owner,
/// link count, size, and the SHA-256 of the content, of the symlink target or the
/// device number; a btrfs subvolume's root directory says so. Each extended attribute
/// is an entry of its own, `"{path} xattr {name}"`: its value as text if it is short
/// UTF-8, else its length and SHA-256. Symlinks are never followed; nested btrfs
/// subvolumes are walked like directories. Top-level names in `skip` are left out.
/// Times and inode numbers are not part of it: the digest says whether two trees hold
/// byte-identical files with the same metadata and extended attributes.
pub fn tree_digest(root: &Path, skip: &[&str]) -> std::collections::BTreeMap<String, String> {
    use sha2::{Digest, Sha256};
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![(root.to_path_buf(), ".".to_string())];
    let mut buf = vec![0u8; 1 << 16];
    while let Some((path, rel)) = stack.pop() {
        let md = fs::symlink_metadata(&path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display()));
        let ft = md.file_type();
        let what = if ft.is_file() {
            let mut f = fs::File::open(&path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
            let mut h = Sha256::new();
            loop {
                match f.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => h.update(&buf[..n]),
                    Err(e) => panic!("reading {}: {e}", path.display()),
                }
            }
            format!("file sha256 {}", hex(&h.finalize()))
        } else if ft.is_symlink() {
            let t = fs::read_link(&path).unwrap_or_else(|e| panic!("readlink {}: {e}", path.display()));
            format!("symlink -> {}", name_text(t.as_os_str()))
        } else if ft.is_dir() {
            let mut names: Vec<(std::ffi::OsString, String)> = fs::read_dir(&path)
                .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
                .map(|e| e.unwrap_or_else(|e| panic!("reading {}: {e}", path.display())).file_name())
                .map(|n| {
                    let t = name_text(&n);
                    (n, t)
                })
                .filter(|(_, t)| rel != "." || !skip.contains(&t.as_str()))
                .collect();
            names.sort_by(|a, b| a.1.cmp(&b.1));
            for (n, t) in names.iter().rev() {
                let child = if rel == "." { t.clone() } else { format!("{rel}/{t}") };
                stack.push((path.join(n), child));
            }
            if md.ino() == BTRFS_SUBVOL_INO && is_btrfs(&path) {
                "dir (btrfs subvolume)".to_string()
            } else {
                "dir".to_string()
            }
        } else if ft.is_block_device() || ft.is_char_device() {
            format!("{} device {:x}", if ft.is_block_device() { "block" } else { "char" }, md.rdev())
        } else if ft.is_fifo() {
            "fifo".to_string()
        } else if ft.is_socket() {
            "socket".to_string()
        } else {
            "special".to_string()
        };
        let size = if ft.is_dir() { 0 } else { md.len() };
        let entry =
            format!("{what} mode {:o} owner {}:{} links {} size {size}", md.mode(), md.uid(), md.gid(), md.nlink());
        for (name, value) in xattrs(&path) {
            let shown = match String::from_utf8(value) {
                Ok(text) if text.len() <= 256 => text,
                Ok(text) => format!("{} bytes sha256 {}", text.len(), hex(&Sha256::digest(text.as_bytes()))),
                Err(e) => {
                    let v = e.into_bytes();
                    format!("{} bytes sha256 {}", v.len(), hex(&Sha256::digest(&v)))
                }
            };
            out.insert(format!("{rel} xattr {name}"), shown);
        }
        out.insert(rel, entry);
    }
    out
}

/// The inode number of a btrfs subvolume's root directory.
const BTRFS_SUBVOL_INO: u64 = 256;

fn is_btrfs(path: &Path) -> bool {
    const BTRFS_SUPER_MAGIC: i64 = 0x9123_683e;
    rustix::fs::statfs(path).map(|s| s.f_type == BTRFS_SUPER_MAGIC).unwrap_or(false)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A file name as text: itself if it is UTF-8 (and has no backslash), else with every
/// byte outside printable ASCII and every backslash written `\xNN`, so that two
/// different names never give the same text.
fn name_text(name: &std::ffi::OsStr) -> String {
    let b = name.as_encoded_bytes();
    match std::str::from_utf8(b) {
        Ok(s) if !s.contains('\\') => s.to_string(),
        _ => {
            b.iter()
                .map(|&c| {
                    if (0x20..0x7f).contains(&c) && c != b'\\' {
                        (c as char).to_string()
                    } else {
                        format!("\\x{c:02x}")
                    }
                })
                .collect()
        }
    }
}

/// The extended attributes of `path` (not following a symlink), by name. Panics if
/// they cannot be read (a filesystem without xattrs has none).
fn xattrs(path: &Path) -> Vec<(String, Vec<u8>)> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut names = vec![0u8; 65536];
    // SAFETY: `c` is a NUL-terminated path, `names` a writable buffer of the given size.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    let n = match usize::try_from(n) {
        Ok(n) => n,
        Err(_) => {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOTSUP) {
                return Vec::new();
            }
            panic!("listing the extended attributes of {}: {e}", path.display());
        }
    };
    let mut out = Vec::new();
    for name in names[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let cname = std::ffi::CString::new(name).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut value = vec![0u8; 65536];
        // SAFETY: both strings are NUL-terminated, `value` is a writable buffer of the given size.
        let len = unsafe { libc::lgetxattr(c.as_ptr(), cname.as_ptr(), value.as_mut_ptr().cast(), value.len()) };
        let len = usize::try_from(len).unwrap_or_else(|_| {
            panic!(
                "reading extended attribute {} of {}: {}",
                String::from_utf8_lossy(name),
                path.display(),
                std::io::Error::last_os_error()
            )
        });
        value.truncate(len);
        out.push((String::from_utf8_lossy(name).into_owned(), value));
    }
    out
}

/// How two [`tree_digest`]s differ, one line per path (at most `max` lines), for messages.
pub fn digest_diff(
    before: &std::collections::BTreeMap<String, String>,
    after: &std::collections::BTreeMap<String, String>,
    max: usize,
) -> Vec<String> {
    let mut lines = Vec::new();
    for (k, v) in before {
        match after.get(k) {
            None => lines.push(format!("gone: {k} ({v})")),
            Some(w) if w != v => lines.push(format!("changed: {k}: {v} => {w}")),
            Some(_) => {}
        }
    }
    lines.extend(after.iter().filter(|(k, _)| !before.contains_key(*k)).map(|(k, v)| format!("new: {k} ({v})")));
    lines.truncate(max);
    lines
}

/// In a root's [`tree_digest`]: when dockroot made it (the `user.dockroot.created`
/// xattr of its root directory), which starts the names of kept roots.
pub const DIGEST_CREATED: &str = ". xattr user.dockroot.created";

/// A root's creation stamp from its [`tree_digest`].
pub fn digest_created(digest: &std::collections::BTreeMap<String, String>) -> String {
    digest.get(DIGEST_CREATED).cloned().unwrap_or_else(|| "(none)".into())
}
