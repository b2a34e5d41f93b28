//! The newc ("070701") cpio format the kernel unpacks into rootfs: a writer
//! that gives the same bytes for the same entries, and a bounded reader
//! (`--list`, tests and fuzzing).
//!
//! Each entry is a 110-byte ASCII header (`070701` and 13 fields of 8 hex
//! digits: ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor,
//! rdevmajor, rdevminor, namesize, check), the name with its NUL padded to a
//! multiple of 4, and the data padded to a multiple of 4. The archive ends
//! with the entry `TRAILER!!!`.

use std::collections::BTreeMap;

use dockroot::error::{Context, Error, Result};

/// The newc magic.
pub const MAGIC: &[u8; 6] = b"070701";
/// The name of the last entry.
pub const TRAILER: &str = "TRAILER!!!";
/// Size of a newc header.
pub const HEADER_LEN: usize = 110;

/// File type bits of `mode` (as in `st_mode`).
pub const S_IFMT: u32 = 0o170000;
pub const S_IFDIR: u32 = 0o040000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFCHR: u32 = 0o020000;
pub const S_IFLNK: u32 = 0o120000;

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File(Vec<u8>),
    CharDevice { major: u32, minor: u32 },
    Symlink(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Node {
    perm: u32,
    kind: Kind,
}

/// An archive being built. Insertion order does not change the output: it is
/// written in [`write_order`]. Parent directories are added (mode 0755) as
/// needed.
#[derive(Debug, Default, Clone)]
pub struct Archive {
    nodes: BTreeMap<String, Node>,
}

/// Check and normalise an archive path: relative (a leading `/` is dropped),
/// no `.`/`..`, no empty components. Its first component may not be the
/// trailer's name: that entry, or the parent directory implied for it, would
/// end the archive for the kernel.
fn clean_path(path: &str) -> Result<String> {
    let trimmed = path.trim_start_matches('/');
    let ok = !trimmed.is_empty()
        && !trimmed.contains('\0')
        && trimmed.split('/').all(|c| !c.is_empty() && c != "." && c != "..");
    if !ok || trimmed.split('/').next() == Some(TRAILER) {
        return Err(Error::msg(format!("cannot put {path:?} in the cpio archive: not a clean relative path")));
    }
    Ok(trimmed.to_owned())
}

impl Archive {
    /// An empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    fn add_parents(&mut self, path: &str) -> Result<()> {
        let mut end = 0;
        while let Some(pos) = path.get(end..).and_then(|rest| rest.find('/')) {
            end = end.checked_add(pos).context(|| format!("path {path:?} too long"))?;
            let parent = path.get(..end).context(|| format!("bad path {path:?}"))?;
            self.insert(parent, Node { perm: 0o755, kind: Kind::Dir }, true)?;
            end = end.checked_add(1).context(|| format!("path {path:?} too long"))?;
        }
        Ok(())
    }

    fn insert(&mut self, path: &str, node: Node, implicit: bool) -> Result<()> {
        if let Some(old) = self.nodes.get(path) {
            if old.kind == Kind::Dir && node.kind == Kind::Dir {
                if !implicit {
                    self.nodes.insert(path.to_owned(), node);
                }
                return Ok(());
            }
            return Err(Error::msg(format!("cpio archive: /{path} added twice")));
        }
        self.nodes.insert(path.to_owned(), node);
        Ok(())
    }

    fn add(&mut self, path: &str, perm: u32, kind: Kind) -> Result<()> {
        let path = clean_path(path)?;
        if perm & !0o7777 != 0 {
            return Err(Error::msg(format!("cpio archive: mode {perm:o} of /{path} has bits beyond 07777")));
        }
        self.add_parents(&path)?;
        self.insert(&path, Node { perm, kind }, false)
    }

    /// A directory with permission bits `perm` (e.g. 0o755).
    pub fn add_dir(&mut self, path: &str, perm: u32) -> Result<()> {
        self.add(path, perm, Kind::Dir)
    }

    /// A regular file.
    pub fn add_file(&mut self, path: &str, perm: u32, data: Vec<u8>) -> Result<()> {
        u32::try_from(data.len())
            .map_err(|_| Error::msg(format!("cpio archive: /{path} is larger than 4 GiB, newc cannot hold it")))?;
        self.add(path, perm, Kind::File(data))
    }

    /// A character device node.
    pub fn add_char_device(&mut self, path: &str, perm: u32, major: u32, minor: u32) -> Result<()> {
        self.add(path, perm, Kind::CharDevice { major, minor })
    }

    /// A symbolic link to `target`.
    pub fn add_symlink(&mut self, path: &str, target: &str) -> Result<()> {
        self.add(path, 0o777, Kind::Symlink(target.to_owned()))
    }

    /// Number of entries (without the trailer).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True if nothing was added.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The archive's bytes: entries in [`write_order`], inode numbers 1, 2,
    /// ... in that order, uid/gid 0, every mtime `mtime`.
    pub fn write(&self, mtime: u32) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut ino: u32 = 0;
        let mut entries: Vec<(&String, &Node)> = self.nodes.iter().collect();
        entries.sort_by(|a, b| write_order((a.0, a.1.kind == Kind::Dir), (b.0, b.1.kind == Kind::Dir)));
        for (path, node) in entries {
            ino = ino.checked_add(1).context(|| "cpio archive: more than 2^32 entries")?;
            let (kind_bits, nlink, data, rdev): (u32, u32, &[u8], (u32, u32)) = match &node.kind {
                Kind::Dir => (S_IFDIR, 2, &[], (0, 0)),
                Kind::File(data) => (S_IFREG, 1, data, (0, 0)),
                Kind::CharDevice { major, minor } => (S_IFCHR, 1, &[], (*major, *minor)),
                Kind::Symlink(target) => (S_IFLNK, 1, target.as_bytes(), (0, 0)),
            };
            let header =
                Header { ino, mode: kind_bits | node.perm, nlink, mtime, rdev_major: rdev.0, rdev_minor: rdev.1 };
            write_entry(&mut out, &header, path, data)?;
        }
        write_entry(
            &mut out,
            &Header { ino: 0, mode: 0, nlink: 1, mtime: 0, rdev_major: 0, rdev_minor: 0 },
            TRAILER,
            &[],
        )?;
        Ok(out)
    }
}

/// The order entries are written in, given each one's path and whether it
/// is a directory: every directory first, by path (so a parent comes before
/// what it holds, as the kernel needs when it unpacks), then everything else
/// by the extension of its file name (what follows the last `.`, none for a
/// name without one or starting with it), then by path.
///
/// Files of a kind are alike, and zstd finds matches only within its window
/// (a few MiB at the builder's level): sorted by path, the init (`/init`) and
/// the commands (`/usr/lib/dockroot/dockroot`), two builds of much the same
/// code, sat 20 MB apart, on either side of the modules; side by side they
/// make the generic image 0.3 MB smaller (5.67 MB to 5.33 MB) at no cost.
pub fn write_order(a: (&str, bool), b: (&str, bool)) -> std::cmp::Ordering {
    fn key((path, dir): (&str, bool)) -> (bool, &str, &str) {
        (!dir, if dir { "" } else { extension(path) }, path)
    }
    key(a).cmp(&key(b))
}

/// The extension of the last component of `path`: what follows its last `.`,
/// `""` if it has none or only a leading one.
fn extension(path: &str) -> &str {
    let name = path.rsplit('/').next().unwrap_or(path);
    match name.rfind('.') {
        Some(i) if i > 0 => name.get(i.saturating_add(1)..).unwrap_or(""),
        _ => "",
    }
}

struct Header {
    ino: u32,
    mode: u32,
    nlink: u32,
    mtime: u32,
    rdev_major: u32,
    rdev_minor: u32,
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

fn write_entry(out: &mut Vec<u8>, h: &Header, name: &str, data: &[u8]) -> Result<()> {
    let size = u32::try_from(data.len()).map_err(|_| Error::msg(format!("cpio archive: /{name} is too large")))?;
    let namesize = u32::try_from(name.len().saturating_add(1))
        .map_err(|_| Error::msg(format!("cpio archive: name {name:?} is too long")))?;
    let fields = [h.ino, h.mode, 0, 0, h.nlink, h.mtime, size, 0, 0, h.rdev_major, h.rdev_minor, namesize, 0];
    out.extend_from_slice(MAGIC);
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
    Ok(())
}

/// One entry read back from an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub ino: u32,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub mtime: u32,
    pub dev_major: u32,
    pub dev_minor: u32,
    pub rdev_major: u32,
    pub rdev_minor: u32,
    pub data: Vec<u8>,
}

fn hex_field(header: &[u8], index: usize, offset: usize) -> Result<u32> {
    let start = index.checked_mul(8).and_then(|i| i.checked_add(6)).context(|| "bad field index")?;
    let end = start.checked_add(8).context(|| "bad field index")?;
    let raw = header.get(start..end).context(|| format!("cpio header at offset {offset} is truncated"))?;
    let text = std::str::from_utf8(raw).ok().filter(|t| t.bytes().all(|b| b.is_ascii_hexdigit()));
    let text =
        text.context(|| format!("cpio header at offset {offset}: field {index} is not 8 hex digits: {raw:?}"))?;
    u32::from_str_radix(text, 16).context(|| format!("cpio header at offset {offset}: field {index}"))
}

fn align4(n: usize) -> Option<usize> {
    n.checked_add(3).map(|v| v & !3)
}

/// Read a newc archive up to its trailer. Never panics; refuses anything
/// malformed (bad magic, truncated data, non-UTF-8 names) with the offset.
pub fn read(bytes: &[u8]) -> Result<Vec<Entry>> {
    read_prefix(bytes).map(|(entries, _)| entries)
}

/// [`read`], and where the archive ends (after its trailer's padding): what
/// follows may be another archive, as the kernel reads them.
pub fn read_prefix(bytes: &[u8]) -> Result<(Vec<Entry>, usize)> {
    let mut entries = Vec::new();
    let mut pos = 0usize;
    loop {
        let header = bytes
            .get(pos..pos.checked_add(HEADER_LEN).context(|| "offset overflow")?)
            .context(|| format!("cpio archive ends at offset {pos} without a {TRAILER} entry"))?;
        if header.get(..6) != Some(MAGIC.as_slice()) {
            return Err(Error::msg(format!("cpio header at offset {pos}: bad magic (not newc 070701)")));
        }
        let f = |i| hex_field(header, i, pos);
        let (ino, mode, uid, gid, nlink, mtime, filesize) = (f(0)?, f(1)?, f(2)?, f(3)?, f(4)?, f(5)?, f(6)?);
        let (dev_major, dev_minor, rdev_major, rdev_minor, namesize) = (f(7)?, f(8)?, f(9)?, f(10)?, f(11)?);
        let name_start = pos.checked_add(HEADER_LEN).context(|| "offset overflow")?;
        let name_end = name_start.checked_add(namesize as usize).context(|| "offset overflow")?;
        let raw_name = bytes
            .get(name_start..name_end)
            .context(|| format!("cpio entry at offset {pos}: name runs past the end"))?;
        let raw_name = match raw_name.split_last() {
            Some((0, name)) => name,
            _ => return Err(Error::msg(format!("cpio entry at offset {pos}: name is empty or not NUL-terminated"))),
        };
        let name = std::str::from_utf8(raw_name)
            .context(|| format!("cpio entry at offset {pos}: name is not UTF-8"))?
            .to_owned();
        let data_start = align4(name_end).context(|| "offset overflow")?;
        let data_end = data_start.checked_add(filesize as usize).context(|| "offset overflow")?;
        let data = bytes
            .get(data_start..data_end)
            .context(|| format!("cpio entry {name:?} at offset {pos}: data runs past the end"))?
            .to_vec();
        pos = align4(data_end).context(|| "offset overflow")?;
        if name == TRAILER {
            return Ok((entries, pos));
        }
        entries.push(Entry {
            name,
            ino,
            mode,
            uid,
            gid,
            nlink,
            mtime,
            dev_major,
            dev_minor,
            rdev_major,
            rdev_minor,
            data,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    fn sample() -> Archive {
        let mut a = Archive::new();
        a.add_file("init", 0o755, b"#!not really\n".to_vec()).unwrap();
        a.add_file("etc/docker-btrfs.json", 0o644, br#"{"docker_image":"x"}"#.to_vec()).unwrap();
        a.add_char_device("dev/console", 0o600, 5, 1).unwrap();
        for d in ["dev", "proc", "sys", "run"] {
            a.add_dir(d, 0o755).unwrap();
        }
        a.add_file("lib/modules/6.1.0/kernel/fs/a.ko", 0o644, vec![7u8; 1001]).unwrap();
        a.add_symlink("lib64", "lib").unwrap();
        a
    }

    fn temp_dir(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("dockroot-cpio-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn header_fields_are_exact() {
        let mut a = Archive::new();
        a.add_file("ab", 0o644, b"xyz".to_vec()).unwrap();
        let out = a.write(0x1234).unwrap();
        let expected_header = concat!(
            "070701", "00000001", "000081a4", "00000000", "00000000", "00000001", "00001234", "00000003", "00000000",
            "00000000", "00000000", "00000000", "00000003", "00000000"
        );
        assert_eq!(std::str::from_utf8(&out[..110]).unwrap(), expected_header);
        // name "ab\0" padded so that 110 + 3 + 3 = 116 is a multiple of 4; data padded to 4.
        assert_eq!(&out[110..116], b"ab\0\0\0\0");
        assert_eq!(&out[116..120], b"xyz\0");
        let trailer = std::str::from_utf8(&out[120..230]).unwrap();
        assert_eq!(
            trailer,
            concat!(
                "070701", "00000000", "00000000", "00000000", "00000000", "00000001", "00000000", "00000000",
                "00000000", "00000000", "00000000", "00000000", "0000000b", "00000000"
            )
        );
        assert_eq!(&out[230..], b"TRAILER!!!\0\0\0\0");
        assert_eq!(out.len() % 4, 0);
    }

    #[test]
    fn char_device_header() {
        let mut a = Archive::new();
        a.add_char_device("dev/console", 0o600, 5, 1).unwrap();
        let entries = read(&a.write(0).unwrap()).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].name, "dev");
        assert_eq!(entries[0].mode, 0o040755);
        assert_eq!(entries[1].name, "dev/console");
        assert_eq!(entries[1].mode, 0o020600);
        assert_eq!((entries[1].rdev_major, entries[1].rdev_minor), (5, 1));
    }

    #[test]
    fn reader_reads_writer_output_directories_first_then_by_kind() {
        let entries = read(&sample().write(0).unwrap()).unwrap();
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "dev",
                "etc",
                "lib",
                "lib/modules",
                "lib/modules/6.1.0",
                "lib/modules/6.1.0/kernel",
                "lib/modules/6.1.0/kernel/fs",
                "proc",
                "run",
                "sys",
                "dev/console",
                "init",
                "lib64",
                "etc/docker-btrfs.json",
                "lib/modules/6.1.0/kernel/fs/a.ko",
            ]
        );
        for (i, e) in entries.iter().enumerate() {
            assert_eq!(e.ino as usize, i + 1);
            assert_eq!((e.uid, e.gid, e.mtime), (0, 0, 0));
        }
        let init = entries.iter().find(|e| e.name == "init").unwrap();
        assert_eq!(init.mode, 0o100755);
        assert_eq!(init.data, b"#!not really\n");
        let ko = entries.iter().find(|e| e.name.ends_with("a.ko")).unwrap();
        assert_eq!(ko.data, vec![7u8; 1001]);
        let link = entries.iter().find(|e| e.name == "lib64").unwrap();
        assert_eq!((link.mode, link.data.as_slice()), (0o120777, b"lib".as_slice()));
    }

    #[test]
    fn files_of_a_kind_sit_together_and_parents_come_first() {
        let mut a = Archive::new();
        for f in [
            "lib/modules/6.1.0/kernel/fs/btrfs.ko",
            "usr/lib/dockroot/dockroot",
            "init",
            "usr/lib/dockroot/initramfs.json",
            "lib/modules/6.1.0/kernel/drivers/virtio.ko",
            "etc/docker-btrfs.json",
            "lib/modules/dockroot-modules.index",
            "etc/.hidden",
            "lib/modules/6.1.0/kernel/fs/x.ko.xz",
        ] {
            a.add_file(f, 0o644, vec![1]).unwrap();
        }
        let entries = read(&a.write(0).unwrap()).unwrap();
        let files: Vec<&str> = entries.iter().filter(|e| e.mode & S_IFMT == S_IFREG).map(|e| e.name.as_str()).collect();
        assert_eq!(
            files,
            [
                "etc/.hidden",
                "init",
                "usr/lib/dockroot/dockroot",
                "lib/modules/dockroot-modules.index",
                "etc/docker-btrfs.json",
                "usr/lib/dockroot/initramfs.json",
                "lib/modules/6.1.0/kernel/drivers/virtio.ko",
                "lib/modules/6.1.0/kernel/fs/btrfs.ko",
                "lib/modules/6.1.0/kernel/fs/x.ko.xz",
            ]
        );
        for (i, e) in entries.iter().enumerate() {
            let mut parent = e.name.as_str();
            while let Some((p, _)) = parent.rsplit_once('/') {
                let at = entries.iter().position(|d| d.name == p).unwrap();
                assert!(at < i && entries[at].mode & S_IFMT == S_IFDIR, "{} before its parent {p}", e.name);
                parent = p;
            }
        }
        assert_eq!(extension("a.b/c"), "");
        assert_eq!(extension("a/.c"), "");
        assert_eq!(extension("a/b.tar.gz"), "gz");
        assert_eq!(extension("x."), "");
    }

    #[test]
    fn same_entries_in_any_order_give_same_bytes() {
        let mut b = Archive::new();
        b.add_symlink("lib64", "lib").unwrap();
        b.add_file("lib/modules/6.1.0/kernel/fs/a.ko", 0o644, vec![7u8; 1001]).unwrap();
        for d in ["run", "sys", "proc", "dev"] {
            b.add_dir(d, 0o755).unwrap();
        }
        b.add_char_device("dev/console", 0o600, 5, 1).unwrap();
        b.add_file("etc/docker-btrfs.json", 0o644, br#"{"docker_image":"x"}"#.to_vec()).unwrap();
        b.add_file("init", 0o755, b"#!not really\n".to_vec()).unwrap();
        assert_eq!(sample().write(0).unwrap(), b.write(0).unwrap());
        assert_ne!(sample().write(0).unwrap(), sample().write(1).unwrap());
    }

    #[test]
    fn refuses_bad_paths_and_duplicates() {
        let mut a = Archive::new();
        // Found by the cpio_roundtrip fuzz target: `a/./b` and `a/.` passed
        // (Path::components() drops inner `.`), and `TRAILER!!!/x` put a
        // parent directory named like the trailer in the archive.
        for bad in
            ["", "/", "a/../b", "./a", "a//b", "a/", "TRAILER!!!", "a/./b", "a/.", "TRAILER!!!/x", "/TRAILER!!!/x/y"]
        {
            assert!(a.add_file(bad, 0o644, vec![]).is_err(), "{bad:?}");
        }
        a.add_file("/x", 0o644, vec![]).unwrap();
        assert!(a.add_file("x", 0o644, vec![]).unwrap_err().to_string().contains("/x added twice"));
        assert!(a.add_dir("x/y", 0o755).is_err(), "x is a file, not a parent directory");
        assert!(a.add_file("y", 0o10644, vec![]).is_err());
        a.add_dir("d", 0o700).unwrap();
        a.add_file("d/f", 0o644, vec![]).unwrap();
        let entries = read(&a.write(0).unwrap()).unwrap();
        assert_eq!(entries[0].mode, 0o040700, "an explicit dir keeps its mode when a child is added");
    }

    #[test]
    fn read_prefix_says_where_the_archive_ends() {
        let first = sample().write(0).unwrap();
        let mut two = first.clone();
        two.extend([0u8; 16]);
        two.extend(&first);
        let (entries, end) = read_prefix(&two).unwrap();
        assert_eq!(end, first.len());
        assert_eq!(entries, read(&first).unwrap());
    }

    #[test]
    fn reader_refuses_malformed_input_without_panicking() {
        let good = sample().write(0).unwrap();
        assert!(read(&[]).is_err());
        assert!(read(&good[..good.len() - 20]).unwrap_err().to_string().contains("TRAILER"));
        let mut bad = good.clone();
        bad[0] = b'1';
        assert!(read(&bad).unwrap_err().to_string().contains("bad magic"));
        let mut bad = good.clone();
        bad[10] = b'g';
        assert!(read(&bad).unwrap_err().to_string().contains("not 8 hex digits"));
        // Every truncation and every single-byte corruption is an error or a valid read, never a panic.
        for n in 0..good.len() {
            let _ = read(&good[..n]);
        }
        for i in 0..good.len().min(4000) {
            let mut c = good.clone();
            c[i] = c[i].wrapping_add(0x41);
            let _ = read(&c);
        }
    }

    #[test]
    fn gnu_cpio_lists_and_extracts_our_archive() {
        let bytes = sample().write(0).unwrap();
        let dir = temp_dir("gnu");
        let archive = dir.join("a.cpio");
        std::fs::write(&archive, &bytes).unwrap();

        let out = Command::new("cpio").args(["-t", "--quiet", "-F"]).arg(&archive).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let listed = String::from_utf8(out.stdout).unwrap();
        let expected: Vec<String> = read(&bytes).unwrap().into_iter().map(|e| e.name).collect();
        assert_eq!(listed.lines().collect::<Vec<_>>(), expected);

        let root = dir.join("root");
        std::fs::create_dir(&root).unwrap();
        let out = Command::new("cpio")
            .args(["-i", "--quiet", "--make-directories", "--preserve-modification-time", "-F"])
            .arg(&archive)
            .current_dir(&root)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
        assert_eq!(std::fs::read(root.join("init")).unwrap(), b"#!not really\n");
        assert_eq!(std::fs::metadata(root.join("init")).unwrap().permissions().mode() & 0o7777, 0o755);
        assert_eq!(std::fs::read(root.join("lib/modules/6.1.0/kernel/fs/a.ko")).unwrap(), vec![7u8; 1001]);
        let console = std::fs::symlink_metadata(root.join("dev/console")).unwrap();
        assert!(console.file_type().is_char_device());
        assert_eq!(console.rdev(), libc_makedev(5, 1));
        assert_eq!(console.mode() & 0o7777, 0o600);
        assert_eq!(std::fs::read_link(root.join("lib64")).unwrap(), std::path::Path::new("lib"));
        assert!(root.join("proc").is_dir() && root.join("sys").is_dir() && root.join("run").is_dir());
        assert_eq!(std::fs::metadata(root.join("init")).unwrap().mtime(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn libc_makedev(major: u64, minor: u64) -> u64 {
        ((major & 0xfffff000) << 32) | ((major & 0xfff) << 8) | ((minor & 0xffffff00) << 12) | (minor & 0xff)
    }
}
