//! Recognise filesystems and partition tables from raw bytes, like libblkid.
//!
//! Everything here is pure parsing: the only I/O goes through [`ReadAt`], so the
//! same code runs on a block device (`std::fs::File`), on a byte slice in unit
//! tests, or under a fuzzer. Disk contents are untrusted: every offset is
//! bounds-checked, every length capped, and nothing here panics.
//!
//! Supported: btrfs, ext2/3/4, vfat (FAT12/16/32) and xfs filesystems; GPT and
//! MBR (with extended/logical partitions) partition tables. The values reported
//! (type, LABEL, UUID, PARTUUID, PARTLABEL) are the ones `blkid` and the kernel
//! report, in the same textual form.
//!
//! Files: `checksum.rs` (crc32c, crc32, xxh64), one file per filesystem
//! family (`btrfs.rs`, `ext.rs`, `xfs.rs`, `vfat.rs`), `table.rs` (GPT and
//! MBR); this file holds the [`ReadAt`] interface, the shared value types and
//! helpers, and [`probe_filesystem`], which asks every family.

mod btrfs;
mod checksum;
mod ext;
#[cfg(test)]
pub(crate) mod fixtures;
mod table;
mod vfat;
mod xfs;

pub use checksum::{crc32, crc32c};
pub use table::{read_partition_table, Partition, PartitionTable, TableKind};

use crate::error::{Context, Error, Result};
use btrfs::probe_btrfs;
use ext::probe_ext;
use vfat::probe_vfat;
use xfs::probe_xfs;

/// Positioned reads from a device or an image (`pread(2)`).
pub trait ReadAt {
    /// Read up to `buf.len()` bytes at `offset`; 0 means end of device.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize>;

    /// Total size in bytes, when it can be known cheaply (used to find the
    /// backup GPT header in the last sector). `None` if unknown.
    fn size_hint(&self) -> Option<u64> {
        None
    }
}

impl ReadAt for std::fs::File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        std::os::unix::fs::FileExt::read_at(self, buf, offset)
    }

    fn size_hint(&self) -> Option<u64> {
        // Works for block devices too (their metadata length is 0). Reads use
        // pread, so moving the file offset is harmless.
        use std::io::Seek;
        let mut f = self;
        f.seek(std::io::SeekFrom::End(0)).ok()
    }
}

impl ReadAt for [u8] {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        let Ok(start) = usize::try_from(offset) else {
            return Ok(0);
        };
        let Some(src) = self.get(start..) else {
            return Ok(0);
        };
        let n = src.len().min(buf.len());
        if let (Some(dst), Some(src)) = (buf.get_mut(..n), src.get(..n)) {
            dst.copy_from_slice(src);
        }
        Ok(n)
    }

    fn size_hint(&self) -> Option<u64> {
        u64::try_from(self.len()).ok()
    }
}

impl ReadAt for Vec<u8> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        self.as_slice().read_at(buf, offset)
    }

    fn size_hint(&self) -> Option<u64> {
        self.as_slice().size_hint()
    }
}

/// Read exactly `len` bytes at `offset`. A short read (the device ends before
/// `offset + len`) gives `Ok(None)`: there is no such structure on this device.
/// I/O errors are returned.
pub fn read_exact_at<R: ReadAt + ?Sized>(dev: &R, offset: u64, len: usize) -> Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; len];
    let mut done = 0usize;
    while done < len {
        let Some(pos) = u64::try_from(done).ok().and_then(|d| offset.checked_add(d)) else {
            return Ok(None);
        };
        let Some(rest) = buf.get_mut(done..) else {
            return Ok(None);
        };
        match dev.read_at(rest, pos) {
            Ok(0) => return Ok(None),
            Ok(n) => done = done.saturating_add(n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::with(format!("reading {len} bytes at offset {offset}"), e)),
        }
    }
    Ok(Some(buf))
}

// ---------------------------------------------------------------------------
// Labels, UUIDs and GUIDs (integers and byte ranges: crate::bytes::Bytes).

/// A label the way blkid sets it: up to the first NUL, trailing whitespace
/// removed, empty means no label. Bytes that are not UTF-8 become U+FFFD.
fn label_from(raw: &[u8]) -> Option<String> {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    let s = String::from_utf8_lossy(raw.get(..end)?);
    let t = s.trim_end_matches(|c: char| c.is_ascii_whitespace() || c == '\x0b');
    (!t.is_empty()).then(|| t.to_string())
}

/// A UUID in byte order (btrfs, ext, xfs), as blkid prints it; all-zero is none.
fn uuid_from(raw: [u8; 16]) -> Option<String> {
    if raw.iter().all(|&b| b == 0) {
        return None;
    }
    Some(uuid_string(raw))
}

fn uuid_string(raw: [u8; 16]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(36);
    for (i, byte) in raw.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        let _ = write!(s, "{byte:02x}");
    }
    s
}

/// A GUID in the mixed-endian form Linux, blkid and sgdisk print (the first
/// three fields little-endian), lowercase.
pub fn guid_to_string(raw: [u8; 16]) -> String {
    let [a0, a1, a2, a3, b0, b1, c0, c1, rest @ ..] = raw;
    let swapped = [a3, a2, a1, a0, b1, b0, c1, c0];
    let mut out = [0u8; 16];
    for (d, s) in out.iter_mut().zip(swapped.iter().chain(rest.iter())) {
        *d = *s;
    }
    uuid_string(out)
}

// ---------------------------------------------------------------------------
// Filesystems.

/// A filesystem type this probe recognises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsType {
    Btrfs,
    /// ext2: no journal and no feature ext2 lacks.
    Ext2,
    /// ext3: a journal and no feature ext3 lacks.
    Ext3,
    /// ext4: any feature beyond ext3 (extents, 64bit, flex_bg, metadata_csum, ...).
    Ext4,
    Vfat,
    Xfs,
}

impl FsType {
    /// The name blkid reports, which is also the `mount(2)` fstype. (A kernel
    /// without the ext2/ext3 drivers mounts those with "ext4".)
    pub fn name(&self) -> &'static str {
        match self {
            FsType::Btrfs => "btrfs",
            FsType::Ext2 => "ext2",
            FsType::Ext3 => "ext3",
            FsType::Ext4 => "ext4",
            FsType::Vfat => "vfat",
            FsType::Xfs => "xfs",
        }
    }

    /// ext2, ext3 or ext4.
    pub fn is_ext(&self) -> bool {
        matches!(self, FsType::Ext2 | FsType::Ext3 | FsType::Ext4)
    }
}

impl std::fmt::Display for FsType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The btrfs device item of one member device (a filesystem may span several).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BtrfsMember {
    /// How many devices the filesystem has.
    pub num_devices: u64,
    /// This device's id within the filesystem.
    pub devid: u64,
    /// This device's UUID (blkid's `UUID_SUB`).
    pub dev_uuid: String,
    /// The checksum algorithm, as the start of its kernel modules' names
    /// (`crc32c`, `xxhash`, `sha256`, `blake2b`).
    pub checksum: &'static str,
}

/// What a filesystem superblock says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsInfo {
    pub fstype: FsType,
    /// The label (blkid `LABEL`), if set.
    pub label: Option<String>,
    /// The filesystem UUID as blkid prints it (`UUID`): lowercase 8-4-4-4-12, or
    /// "ABCD-1234" (uppercase volume serial) for vfat. None if all zero.
    pub uuid: Option<String>,
    /// Multi-device details, for btrfs only.
    pub btrfs: Option<BtrfsMember>,
}

/// Find the filesystem on `dev`. `Ok(None)`: no known filesystem (also for a
/// stale signature whose checksum does not match, or a device too small to hold
/// the superblock). An error is returned for I/O errors, and when two different
/// filesystems claim the device (blkid calls this "ambivalent"), since picking
/// one could mount the wrong data.
pub fn probe_filesystem<R: ReadAt + ?Sized>(dev: &R) -> Result<Option<FsInfo>> {
    let mut found: Vec<FsInfo> = Vec::new();
    found.extend(probe_btrfs(dev).context(|| "probing for btrfs")?);
    found.extend(probe_ext(dev).context(|| "probing for ext2/3/4")?);
    found.extend(probe_xfs(dev).context(|| "probing for xfs")?);
    found.extend(probe_vfat(dev).context(|| "probing for vfat")?);
    if found.len() > 1 {
        let names: Vec<&str> = found.iter().map(|f| f.fstype.name()).collect();
        return Err(Error::msg(format!(
            "several filesystem signatures found ({}); wipe the stale one with wipefs",
            names.join(", ")
        )));
    }
    Ok(found.pop())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::fixtures::{assert_like_blkid, head, probe_path, run, Scratch};

    #[test]
    fn guid_formats() {
        let raw = [0x78, 0x56, 0x34, 0x12, 0x34, 0x12, 0x78, 0x56, 0x9a, 0xbc, 1, 2, 3, 4, 5, 6];
        assert_eq!(guid_to_string(raw), "12345678-1234-5678-9abc-010203040506");
        assert_eq!(uuid_from(raw).unwrap(), "78563412-3412-7856-9abc-010203040506");
        assert_eq!(uuid_from([0; 16]), None);
        assert_eq!(label_from(b"root  \t\0junk"), Some("root".to_string()));
        assert_eq!(label_from(b"   \0"), None);
    }

    /// mkfs over an older filesystem leaves one signature, never an ambiguity.
    #[test]
    fn reformatted_device_has_one_filesystem() {
        let s = Scratch::new("reformat");
        let mkfs = |fs: &str, img: &str| match fs {
            "btrfs" => run("mkfs.btrfs", &["-q", "-f", img]),
            "vfat" => run("mkfs.vfat", &[img]),
            "ext4" => run("mkfs.ext4", &["-q", "-F", img]),
            _ => run("mkfs.xfs", &["-q", "-f", img]),
        };
        for (old, new) in [
            ("btrfs", "vfat"),
            ("btrfs", "ext4"),
            ("vfat", "ext4"),
            ("ext4", "btrfs"),
            ("btrfs", "xfs"),
            ("xfs", "btrfs"),
        ] {
            let img = s.file(&format!("{old}-{new}.img"), 320 << 20);
            let p = img.to_str().unwrap();
            mkfs(old, p);
            mkfs(new, p);
            let info = probe_path(&img).unwrap().unwrap();
            assert_eq!(info.fstype.name(), new);
            assert_like_blkid(&img, &info);
        }
    }

    #[test]
    fn truncated_empty_and_garbage_input_is_not_a_filesystem() {
        assert_eq!(probe_filesystem(&Vec::new()).unwrap(), None);
        assert_eq!(probe_filesystem(&[0u8; 100][..]).unwrap(), None);
        assert_eq!(read_partition_table(&Vec::new(), 512).unwrap(), None);
        let s = Scratch::new("trunc");
        let img = s.file("b.img", 128 << 20);
        run("mkfs.btrfs", &["-q", "-f", img.to_str().unwrap()]);
        assert!(probe_filesystem(&head(&img, 1 << 20)).unwrap().is_some());
        // Cut inside the superblock.
        assert_eq!(probe_filesystem(&head(&img, 64 * 1024 + 2000)).unwrap(), None);
        assert!(read_partition_table(&[0u8; 512][..], 3000).is_err());
    }

    /// Mutate real superblocks and partition tables at random: never a panic.
    #[test]
    fn mutated_images_never_panic() {
        let s = Scratch::new("fuzz");
        let mut seeds: Vec<Vec<u8>> = Vec::new();
        let mk = |name: &str, size: u64, prog: &str, args: &[&str]| {
            let img = s.file(name, size);
            let mut a = args.to_vec();
            a.push(img.to_str().unwrap());
            run(prog, &a);
            head(&img, 1 << 20)
        };
        seeds.push(mk("b", 128 << 20, "mkfs.btrfs", &["-q", "-f"]));
        seeds.push(mk("e", 8 << 20, "mkfs.ext4", &["-q", "-F"]));
        seeds.push(mk("v", 64 << 20, "mkfs.vfat", &["-F", "32"]));
        seeds.push(mk("v16", 16 << 20, "mkfs.vfat", &[]));
        seeds.push(mk("g", 8 << 20, "sgdisk", &["-o", "-n", "1:0:+1M", "-n", "2:0:+1M"]));
        let mut rng = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let hot = [0usize, 0x1be, 0x200, 0x400, 0x438, 0x4000, 0x10000, 0x10040, 0x100c4];
        for round in 0..3000 {
            let mut img = seeds[round % seeds.len()].clone();
            for _ in 0..(1 + next() % 8) {
                let base = hot[(next() % hot.len() as u64) as usize];
                let pos = (base + (next() % 512) as usize) % img.len();
                img[pos] = next() as u8;
            }
            if round % 7 == 0 {
                img.truncate((next() % img.len() as u64) as usize);
            }
            let _ = probe_filesystem(&img);
            let _ = read_partition_table(&img, 512);
        }
    }
}
