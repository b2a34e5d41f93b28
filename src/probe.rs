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

use crate::error::{Context, Error, Result};

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
// Checksums (table-driven, tables built at compile time).

const fn crc_table(poly: u32) -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { (c >> 1) ^ poly } else { c >> 1 };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
}

static CRC32C_TABLE: [u32; 256] = crc_table(0x82F6_3B78);
static CRC32_TABLE: [u32; 256] = crc_table(0xEDB8_8320);

fn crc_update(table: &[u32; 256], mut crc: u32, data: &[u8]) -> u32 {
    for &b in data {
        // The index is masked to 0..=255, always inside the table.
        crc = table[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    crc
}

/// CRC-32C (Castagnoli), as used by btrfs, ext4 metadata_csum and xfs v5.
pub fn crc32c(data: &[u8]) -> u32 {
    !crc_update(&CRC32C_TABLE, !0, data)
}

/// CRC-32 (IEEE 802.3), as used by GPT.
pub fn crc32(data: &[u8]) -> u32 {
    !crc_update(&CRC32_TABLE, !0, data)
}

/// XXH64 with seed 0 (btrfs `--csum xxhash`).
fn xxh64(data: &[u8]) -> u64 {
    const P1: u64 = 0x9E37_79B1_85EB_CA87;
    const P2: u64 = 0xC2B2_AE3D_27D4_EB4F;
    const P3: u64 = 0x1656_67B1_9E37_79F9;
    const P4: u64 = 0x85EB_CA77_C2B2_AE63;
    const P5: u64 = 0x27D4_EB2F_1656_67C5;
    fn round(acc: u64, input: u64) -> u64 {
        acc.wrapping_add(input.wrapping_mul(P2)).rotate_left(31).wrapping_mul(P1)
    }
    fn merge(acc: u64, v: u64) -> u64 {
        (acc ^ round(0, v)).wrapping_mul(P1).wrapping_add(P4)
    }
    fn u64_at(c: &[u8]) -> u64 {
        let mut b = [0u8; 8];
        for (d, s) in b.iter_mut().zip(c) {
            *d = *s;
        }
        u64::from_le_bytes(b)
    }

    let mut rest = data;
    let mut h: u64;
    if data.len() >= 32 {
        let mut v = [P1.wrapping_add(P2), P2, 0, 0u64.wrapping_sub(P1)];
        let mut chunks = data.chunks_exact(32);
        for chunk in &mut chunks {
            for (lane, word) in v.iter_mut().zip(chunk.chunks_exact(8)) {
                *lane = round(*lane, u64_at(word));
            }
        }
        rest = chunks.remainder();
        let [v1, v2, v3, v4] = v;
        h = v1
            .rotate_left(1)
            .wrapping_add(v2.rotate_left(7))
            .wrapping_add(v3.rotate_left(12))
            .wrapping_add(v4.rotate_left(18));
        for lane in v {
            h = merge(h, lane);
        }
    } else {
        h = P5;
    }
    h = h.wrapping_add(data.len() as u64);
    let mut words = rest.chunks_exact(8);
    for w in &mut words {
        h ^= round(0, u64_at(w));
        h = h.rotate_left(27).wrapping_mul(P1).wrapping_add(P4);
    }
    let mut tail = words.remainder();
    if tail.len() >= 4 {
        let (four, t) = tail.split_at(4);
        let mut b = [0u8; 4];
        b.copy_from_slice(four);
        h ^= u64::from(u32::from_le_bytes(b)).wrapping_mul(P1);
        h = h.rotate_left(23).wrapping_mul(P2).wrapping_add(P3);
        tail = t;
    }
    for &byte in tail {
        h ^= u64::from(byte).wrapping_mul(P5);
        h = h.rotate_left(11).wrapping_mul(P1);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(P2);
    h ^= h >> 29;
    h = h.wrapping_mul(P3);
    h ^= h >> 32;
    h
}

// ---------------------------------------------------------------------------
// Little helpers over untrusted buffers: all return None when out of bounds.

fn bytes(buf: &[u8], off: usize, len: usize) -> Option<&[u8]> {
    buf.get(off..off.checked_add(len)?)
}

fn arr<const N: usize>(buf: &[u8], off: usize) -> Option<[u8; N]> {
    bytes(buf, off, N)?.try_into().ok()
}

fn u8_at(buf: &[u8], off: usize) -> Option<u8> {
    buf.get(off).copied()
}
fn le16(buf: &[u8], off: usize) -> Option<u16> {
    arr(buf, off).map(u16::from_le_bytes)
}
fn le32(buf: &[u8], off: usize) -> Option<u32> {
    arr(buf, off).map(u32::from_le_bytes)
}
fn le64(buf: &[u8], off: usize) -> Option<u64> {
    arr(buf, off).map(u64::from_le_bytes)
}
fn be16(buf: &[u8], off: usize) -> Option<u16> {
    arr(buf, off).map(u16::from_be_bytes)
}
fn be32(buf: &[u8], off: usize) -> Option<u32> {
    arr(buf, off).map(u32::from_be_bytes)
}
fn be64(buf: &[u8], off: usize) -> Option<u64> {
    arr(buf, off).map(u64::from_be_bytes)
}

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

const BTRFS_SB_OFFSET: u64 = 64 * 1024;
const BTRFS_SB_SIZE: usize = 4096;

fn probe_btrfs<R: ReadAt + ?Sized>(dev: &R) -> Result<Option<FsInfo>> {
    let Some(sb) = read_exact_at(dev, BTRFS_SB_OFFSET, BTRFS_SB_SIZE)? else {
        return Ok(None);
    };
    Ok(parse_btrfs(&sb))
}

/// Parse a btrfs primary superblock (4096 bytes read at 64 KiB).
///
/// The checksum is verified for crc32c, xxhash64 and sha256; a blake2b
/// superblock is accepted unverified (no blake2b implementation in the init).
fn parse_btrfs(sb: &[u8]) -> Option<FsInfo> {
    if bytes(sb, 0x40, 8)? != b"_BHRfS_M" {
        return None;
    }
    // The primary copy records its own position.
    if le64(sb, 0x30)? != BTRFS_SB_OFFSET {
        return None;
    }
    let covered = sb.get(0x20..BTRFS_SB_SIZE)?;
    let csum = bytes(sb, 0, 32)?;
    let ok = match le16(sb, 0xc4)? {
        0 => csum.get(..4)? == crc32c(covered).to_le_bytes(),
        1 => csum.get(..8)? == xxh64(covered).to_le_bytes(),
        2 => {
            use sha2::Digest;
            csum == sha2::Sha256::digest(covered).as_slice()
        }
        3 => true,
        _ => false,
    };
    if !ok {
        return None;
    }
    let dev_item = 0xc9;
    Some(FsInfo {
        fstype: FsType::Btrfs,
        label: label_from(bytes(sb, 0x12b, 256)?),
        uuid: uuid_from(arr(sb, 0x20)?),
        btrfs: Some(BtrfsMember {
            num_devices: le64(sb, 0x88)?,
            devid: le64(sb, dev_item)?,
            dev_uuid: uuid_from(arr(sb, dev_item + 66)?).unwrap_or_default(),
        }),
    })
}

const EXT_SB_OFFSET: u64 = 1024;

fn probe_ext<R: ReadAt + ?Sized>(dev: &R) -> Result<Option<FsInfo>> {
    let Some(sb) = read_exact_at(dev, EXT_SB_OFFSET, 1024)? else {
        return Ok(None);
    };
    Ok(parse_ext(&sb))
}

/// Parse an ext2/3/4 superblock (1024 bytes read at 1 KiB). An external
/// journal device (not mountable) is not reported.
fn parse_ext(sb: &[u8]) -> Option<FsInfo> {
    const HAS_JOURNAL: u32 = 0x4;
    const INCOMPAT_JOURNAL_DEV: u32 = 0x8;
    const RO_COMPAT_METADATA_CSUM: u32 = 0x400;
    const EXT2_RO_SUPP: u32 = 0x1 | 0x2 | 0x4; // sparse_super, large_file, btree_dir
    const EXT2_INCOMPAT_SUPP: u32 = 0x2 | 0x10; // filetype, meta_bg
    const EXT3_INCOMPAT_SUPP: u32 = EXT2_INCOMPAT_SUPP | 0x4; // + recover

    if le16(sb, 0x38)? != 0xEF53 {
        return None;
    }
    if le32(sb, 0x18)? > 6 {
        return None; // block size above 64 KiB: garbage
    }
    let compat = le32(sb, 0x5c)?;
    let incompat = le32(sb, 0x60)?;
    let ro_compat = le32(sb, 0x64)?;
    if incompat & INCOMPAT_JOURNAL_DEV != 0 {
        return None;
    }
    if ro_compat & RO_COMPAT_METADATA_CSUM != 0 {
        // ext4 stores the raw crc32c (seed ~0, no final inversion).
        let stored = le32(sb, 0x3fc)?;
        if stored != !crc32c(sb.get(..0x3fc)?) {
            return None;
        }
    }
    let fstype = if compat & HAS_JOURNAL == 0 {
        if ro_compat & !EXT2_RO_SUPP == 0 && incompat & !EXT2_INCOMPAT_SUPP == 0 {
            FsType::Ext2
        } else {
            FsType::Ext4
        }
    } else if ro_compat & !EXT2_RO_SUPP == 0 && incompat & !EXT3_INCOMPAT_SUPP == 0 {
        FsType::Ext3
    } else {
        FsType::Ext4
    };
    Some(FsInfo { fstype, label: label_from(bytes(sb, 0x78, 16)?), uuid: uuid_from(arr(sb, 0x68)?), btrfs: None })
}

fn probe_xfs<R: ReadAt + ?Sized>(dev: &R) -> Result<Option<FsInfo>> {
    let Some(head) = read_exact_at(dev, 0, 512)? else {
        return Ok(None);
    };
    let Some(sectsize) = xfs_sane(&head) else {
        return Ok(None);
    };
    let is_v5 = be16(&head, 100).is_some_and(|v| v & 0xf == 5);
    if is_v5 {
        // v5 superblocks carry a crc32c over the whole sector.
        let Some(sector) = read_exact_at(dev, 0, sectsize)? else {
            return Ok(None);
        };
        if !xfs_crc_ok(&sector) {
            return Ok(None);
        }
    }
    Ok(parse_xfs(&head))
}

/// The sanity checks libblkid applies to an xfs superblock; returns the sector size.
fn xfs_sane(sb: &[u8]) -> Option<usize> {
    if bytes(sb, 0, 4)? != b"XFSB" {
        return None;
    }
    let blocksize = u64::from(be32(sb, 4)?);
    let dblocks = be64(sb, 8)?;
    let rextsize = u64::from(be32(sb, 80)?);
    let agblocks = u64::from(be32(sb, 84)?);
    let agcount = u64::from(be32(sb, 88)?);
    let sectsize = u64::from(be16(sb, 102)?);
    let inodesize = u64::from(be16(sb, 104)?);
    let blocklog = u32::from(u8_at(sb, 120)?);
    let sectlog = u32::from(u8_at(sb, 121)?);
    let inodelog = u32::from(u8_at(sb, 122)?);
    let inopblog = u32::from(u8_at(sb, 123)?);
    let imax_pct = u8_at(sb, 127)?;
    let pow = |log: u32| 1u64.checked_shl(log);
    let rext_bytes = rextsize.checked_mul(blocksize)?;
    let sane = agcount > 0
        && (9..=15).contains(&sectlog)
        && Some(sectsize) == pow(sectlog)
        && (9..=16).contains(&blocklog)
        && Some(blocksize) == pow(blocklog)
        && (8..=11).contains(&inodelog)
        && Some(inodesize) == pow(inodelog)
        && blocklog.checked_sub(inodelog) == Some(inopblog)
        && (4096..=1024 * 1024 * 1024).contains(&rext_bytes)
        && imax_pct <= 100
        && dblocks != 0
        && dblocks <= agcount.checked_mul(agblocks)?
        && dblocks >= agcount.checked_sub(1)?.checked_mul(agblocks)?.checked_add(64)?;
    if !sane {
        return None;
    }
    usize::try_from(sectsize).ok()
}

/// Verify the v5 superblock crc (offset 224, little-endian, over the sector
/// with the crc field taken as zero).
fn xfs_crc_ok(sector: &[u8]) -> bool {
    const CRC_OFF: usize = 224;
    let Some(stored) = le32(sector, CRC_OFF) else {
        return false;
    };
    let (Some(before), Some(after)) = (sector.get(..CRC_OFF), sector.get(CRC_OFF + 4..)) else {
        return false;
    };
    let crc = crc_update(&CRC32C_TABLE, !0, before);
    let crc = crc_update(&CRC32C_TABLE, crc, &[0; 4]);
    let crc = !crc_update(&CRC32C_TABLE, crc, after);
    crc == stored
}

fn parse_xfs(sb: &[u8]) -> Option<FsInfo> {
    Some(FsInfo {
        fstype: FsType::Xfs,
        label: label_from(bytes(sb, 108, 12)?),
        uuid: uuid_from(arr(sb, 32)?),
        btrfs: None,
    })
}

/// The FAT boot sector fields the probe needs, after the sanity checks.
struct FatBpb {
    sector_size: u64,
    cluster_sectors: u64,
    reserved: u64,
    fat_sectors: u64,
    fat_sectors_total: u64,
    root_entries: u64,
    fat32: bool,
    root_cluster: u32,
    fsinfo_sector: u64,
    boot_label: [u8; 11],
    serial: [u8; 4],
}

const FAT_NO_NAME: &[u8; 11] = b"NO NAME    ";

/// Check a FAT boot sector the way libblkid does: 0x55AA, a jump instruction or
/// a FAT type string, and a self-consistent BIOS parameter block.
fn parse_fat_bpb(bs: &[u8]) -> Option<FatBpb> {
    const FAT12_MAX: u64 = 0xFF4;
    const FAT16_MAX: u64 = 0xFFF4;
    const FAT32_MAX: u64 = 0x0FFF_FFF6;
    if bytes(bs, 0x1fe, 2)? != [0x55, 0xAA] {
        return None;
    }
    let magic16 = bytes(bs, 0x36, 8)?;
    let magic32 = bytes(bs, 0x52, 8)?;
    let strong = magic32.starts_with(b"MSWIN")
        || magic32 == b"FAT32   "
        || magic16.starts_with(b"MSDOS")
        || magic16 == b"FAT16   "
        || magic16 == b"FAT12   "
        || magic16 == b"FAT     ";
    if !strong {
        if !matches!(u8_at(bs, 0)?, 0xEB | 0xE9) {
            return None;
        }
        // OS/2 puts a FAT-like header in front of JFS and HPFS.
        if magic16 == b"JFS     " || magic16 == b"HPFS    " {
            return None;
        }
    }
    let sector_size = u64::from(le16(bs, 0x0b)?);
    let cluster_sectors = u64::from(u8_at(bs, 0x0d)?);
    let reserved = u64::from(le16(bs, 0x0e)?);
    let fats = u64::from(u8_at(bs, 0x10)?);
    let root_entries = u64::from(le16(bs, 0x11)?);
    let sectors16 = u64::from(le16(bs, 0x13)?);
    let media = u8_at(bs, 0x15)?;
    let fat16_len = u64::from(le16(bs, 0x16)?);
    let sectors32 = u64::from(le32(bs, 0x20)?);
    let fat32_len = u64::from(le32(bs, 0x24)?);
    if fats == 0 || reserved == 0 || !(media >= 0xf8 || media == 0xf0) {
        return None;
    }
    if !cluster_sectors.is_power_of_two() {
        return None;
    }
    if !sector_size.is_power_of_two() || !(512..=4096).contains(&sector_size) {
        return None;
    }
    let sectors = if sectors16 == 0 { sectors32 } else { sectors16 };
    let fat32 = fat16_len == 0;
    let fat_len = if fat32 { fat32_len } else { fat16_len };
    if fat_len == 0 {
        return None;
    }
    let fat_sectors_total = fat_len.checked_mul(fats)?;
    let dir_sectors = root_entries.checked_mul(32)?.div_ceil(sector_size);
    let meta = reserved.checked_add(fat_sectors_total)?.checked_add(dir_sectors)?;
    let clusters = sectors.checked_sub(meta)? / cluster_sectors;
    let max = if fat32 {
        FAT32_MAX
    } else if clusters > FAT12_MAX {
        FAT16_MAX
    } else {
        FAT12_MAX
    };
    if clusters > max {
        return None;
    }
    let (label_off, serial_off) = if fat32 { (0x47, 0x43) } else { (0x2b, 0x27) };
    Some(FatBpb {
        sector_size,
        cluster_sectors,
        reserved,
        fat_sectors: fat_len,
        fat_sectors_total,
        root_entries,
        fat32,
        root_cluster: le32(bs, 0x2c)?,
        fsinfo_sector: u64::from(le16(bs, 0x30)?),
        boot_label: arr(bs, label_off)?,
        serial: arr(bs, serial_off)?,
    })
}

/// Look for the volume-label entry among `entries` directory entries at
/// `offset`, stopping at the end-of-directory marker.
fn fat_dir_label<R: ReadAt + ?Sized>(dev: &R, offset: u64, entries: u64) -> Result<Option<[u8; 11]>> {
    const CHUNK: u64 = 512; // entries per read (16 KiB)
    let mut done = 0u64;
    while done < entries {
        let n = (entries - done).min(CHUNK);
        let Some(pos) = done.checked_mul(32).and_then(|b| offset.checked_add(b)) else {
            return Ok(None);
        };
        let Ok(len) = usize::try_from(n * 32) else {
            return Ok(None);
        };
        let Some(buf) = read_exact_at(dev, pos, len)? else {
            return Ok(None);
        };
        for ent in buf.chunks_exact(32) {
            let first = u8_at(ent, 0).unwrap_or(0);
            if first == 0 {
                return Ok(None); // end of directory
            }
            let attr = u8_at(ent, 11).unwrap_or(0);
            let cluster_hi = le16(ent, 20).unwrap_or(1);
            let cluster_lo = le16(ent, 26).unwrap_or(1);
            if first == 0xE5 || cluster_hi != 0 || cluster_lo != 0 || attr & 0x3f == 0x0f {
                continue; // deleted, a file or directory, or a long-name piece
            }
            if attr & (0x08 | 0x10) == 0x08 {
                return Ok(arr(ent, 0));
            }
        }
        done += n;
    }
    Ok(None)
}

/// vfat. The label is taken from the root directory's volume-label entry when
/// there is one (what Windows and `fatlabel` change), else from the boot sector,
/// as libblkid does; "NO NAME" means no label. The UUID is the volume serial
/// number, "ABCD-1234".
fn probe_vfat<R: ReadAt + ?Sized>(dev: &R) -> Result<Option<FsInfo>> {
    let Some(bs) = read_exact_at(dev, 0, 512)? else {
        return Ok(None);
    };
    let Some(bpb) = parse_fat_bpb(&bs) else {
        return Ok(None);
    };
    let ss = bpb.sector_size;
    let mut dir_label = None;
    if !bpb.fat32 {
        let root = bpb.reserved.saturating_add(bpb.fat_sectors_total).saturating_mul(ss);
        dir_label = fat_dir_label(dev, root, bpb.root_entries)?;
    } else {
        // Follow the root directory's cluster chain (bounded, like libblkid).
        let data_start = bpb.reserved.saturating_add(bpb.fat_sectors_total);
        let fat_entries = bpb.fat_sectors.saturating_mul(ss) / 4;
        let cluster_bytes = bpb.cluster_sectors.saturating_mul(ss);
        let mut next = u64::from(bpb.root_cluster);
        for _ in 0..100 {
            if next < 2 || next >= fat_entries {
                break;
            }
            let sector = (next - 2).saturating_mul(bpb.cluster_sectors).saturating_add(data_start);
            dir_label = fat_dir_label(dev, sector.saturating_mul(ss), cluster_bytes / 32)?;
            if dir_label.is_some() {
                break;
            }
            let fat_off = bpb.reserved.saturating_mul(ss).saturating_add(next.saturating_mul(4));
            let Some(e) = read_exact_at(dev, fat_off, 4)? else {
                break;
            };
            next = u64::from(le32(&e, 0).unwrap_or(0) & 0x0fff_ffff);
        }
        if bpb.fsinfo_sector != 0 {
            let Some(fsinfo) = read_exact_at(dev, bpb.fsinfo_sector.saturating_mul(ss), 512)? else {
                return Ok(None);
            };
            let sig1 = bytes(&fsinfo, 0, 4).unwrap_or(&[]);
            let sig2 = bytes(&fsinfo, 484, 4).unwrap_or(&[]);
            if !matches!(sig1, b"RRaA" | b"RRdA" | [0, 0, 0, 0]) || !matches!(sig2, b"rrAa" | [0, 0, 0, 0]) {
                return Ok(None);
            }
        }
    }
    let label = match dir_label {
        Some(l) if &l != FAT_NO_NAME => l,
        _ => bpb.boot_label,
    };
    let label = if &label == FAT_NO_NAME { None } else { label_from(&label) };
    let [s0, s1, s2, s3] = bpb.serial;
    let uuid = (bpb.serial != [0; 4]).then(|| format!("{s3:02X}{s2:02X}-{s1:02X}{s0:02X}"));
    Ok(Some(FsInfo { fstype: FsType::Vfat, label, uuid, btrfs: None }))
}

// ---------------------------------------------------------------------------
// Partition tables.

/// Which kind of partition table, with its disk identifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableKind {
    /// GPT, with the disk GUID (blkid's `PTUUID`), lowercase.
    Gpt { disk_guid: String },
    /// MBR ("dos"), with the 32-bit disk signature.
    Mbr { disk_signature: u32 },
}

/// One partition, numbered as Linux numbers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// 1-based; MBR logical partitions start at 5.
    pub number: u32,
    /// First sector, in units of the sector size given to [`read_partition_table`].
    pub start_lba: u64,
    /// Length in sectors of that size.
    pub sectors: u64,
    /// GPT: the partition GUID; MBR: "ssssssss-pp" (disk signature, number).
    pub partuuid: String,
    /// GPT partition name; None for MBR or an empty name.
    pub partlabel: Option<String>,
}

/// A disk's partition table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionTable {
    pub kind: TableKind,
    pub partitions: Vec<Partition>,
}

/// Read the partition table of a whole disk whose logical sector size is
/// `sector_size`. `Ok(None)`: no MBR signature (or an MBR whose boot flags are
/// not 0/0x80: a filesystem boot sector, not a table). A protective MBR (type
/// 0xEE) means GPT: the primary header at LBA 1 is used if valid, else the
/// backup in the last sector (when the disk size is known); if neither is
/// valid, an error says why.
pub fn read_partition_table<R: ReadAt + ?Sized>(disk: &R, sector_size: u64) -> Result<Option<PartitionTable>> {
    if !sector_size.is_power_of_two() || !(512..=65536).contains(&sector_size) {
        return Err(Error::msg(format!("unsupported logical sector size {sector_size}")));
    }
    let Some(mbr) = read_exact_at(disk, 0, 512)? else {
        return Ok(None);
    };
    if bytes(&mbr, 0x1fe, 2) != Some(&[0x55, 0xAA]) {
        return Ok(None);
    }
    let entries: Vec<MbrEntry> = (0..4).filter_map(|i| MbrEntry::parse(&mbr, 0x1be + 16 * i)).collect();
    if entries.iter().any(|e| e.kind == 0xEE) {
        return read_gpt(disk, sector_size).map(Some);
    }
    if entries.iter().any(|e| e.boot != 0 && e.boot != 0x80) {
        return Ok(None);
    }
    let disk_signature = le32(&mbr, 0x1b8).unwrap_or(0);
    read_mbr(disk, sector_size, disk_signature, &entries).map(Some)
}

struct MbrEntry {
    boot: u8,
    kind: u8,
    start: u64,
    sectors: u64,
}

impl MbrEntry {
    fn parse(sector: &[u8], off: usize) -> Option<MbrEntry> {
        Some(MbrEntry {
            boot: u8_at(sector, off)?,
            kind: u8_at(sector, off + 4)?,
            start: u64::from(le32(sector, off + 8)?),
            sectors: u64::from(le32(sector, off + 12)?),
        })
    }

    fn is_extended(&self) -> bool {
        matches!(self.kind, 0x05 | 0x0f | 0x85)
    }
}

/// Most partitions Linux creates on one disk; also bounds the EBR chain walk.
const MAX_PARTITIONS: u32 = 256;

fn read_mbr<R: ReadAt + ?Sized>(disk: &R, ss: u64, sig: u32, primary: &[MbrEntry]) -> Result<PartitionTable> {
    let partuuid = |n: u32| format!("{sig:08x}-{n:02x}");
    let mut parts = Vec::new();
    // Primary slots keep their numbers 1-4, gaps included.
    for (slot, e) in (1u32..).zip(primary) {
        if e.sectors == 0 {
            continue;
        }
        parts.push(Partition {
            number: slot,
            start_lba: e.start,
            sectors: e.sectors,
            partuuid: partuuid(slot),
            partlabel: None,
        });
    }
    // Logical partitions, numbered from 5 in chain order, as Linux does.
    let mut next_number = 5u32;
    for ext in primary.iter().filter(|e| e.is_extended() && e.sectors != 0) {
        let (ext_start, ext_size) = (ext.start, ext.sectors);
        let (mut this, mut this_size) = (ext_start, ext_size);
        for _ in 0..MAX_PARTITIONS {
            let Some(off) = this.checked_mul(ss) else {
                break;
            };
            let Some(ebr) = read_exact_at(disk, off, 512).context(|| format!("reading the EBR at sector {this}"))?
            else {
                break;
            };
            if bytes(&ebr, 0x1fe, 2) != Some(&[0x55, 0xAA]) {
                break;
            }
            let entries: Vec<MbrEntry> = (0..4).filter_map(|i| MbrEntry::parse(&ebr, 0x1be + 16 * i)).collect();
            for (i, e) in entries.iter().enumerate() {
                if e.sectors == 0 || e.is_extended() {
                    continue;
                }
                let Some(start) = this.checked_add(e.start) else {
                    continue;
                };
                if i >= 2 {
                    // Slots 3 and 4 of an EBR often hold garbage: keep them only
                    // if they lie inside this EBR's area and the extended partition.
                    let inside = e.start.checked_add(e.sectors).is_some_and(|end| end <= this_size)
                        && start >= ext_start
                        && start.checked_add(e.sectors).is_some_and(|end| end <= ext_start.saturating_add(ext_size));
                    if !inside {
                        continue;
                    }
                }
                if next_number > MAX_PARTITIONS {
                    break;
                }
                parts.push(Partition {
                    number: next_number,
                    start_lba: start,
                    sectors: e.sectors,
                    partuuid: partuuid(next_number),
                    partlabel: None,
                });
                next_number += 1;
            }
            // The link to the next EBR is relative to the extended partition.
            let Some(link) = entries.iter().find(|e| e.is_extended() && e.sectors != 0) else {
                break;
            };
            let Some(n) = ext_start.checked_add(link.start) else {
                break;
            };
            this = n;
            this_size = link.sectors;
        }
    }
    Ok(PartitionTable { kind: TableKind::Mbr { disk_signature: sig }, partitions: parts })
}

fn read_gpt<R: ReadAt + ?Sized>(disk: &R, ss: u64) -> Result<PartitionTable> {
    let primary = read_gpt_at(disk, ss, 1)?;
    let primary_err = match primary {
        Ok(t) => return Ok(t),
        Err(why) => why,
    };
    let last_lba = disk.size_hint().map(|size| size / ss).and_then(|n| n.checked_sub(1));
    let backup_err = match last_lba {
        Some(lba) if lba > 1 => match read_gpt_at(disk, ss, lba)? {
            Ok(t) => {
                log::warn!("primary GPT header is invalid ({primary_err}); using the backup header");
                return Ok(t);
            }
            Err(why) => why,
        },
        _ => "disk size unknown".to_string(),
    };
    Err(Error::msg(format!(
        "protective MBR found but no valid GPT: primary header: {primary_err}; backup header: {backup_err}"
    )))
}

/// Read and check the GPT header at `lba` and its entry array. The inner
/// `Err` says why this header is not valid; the outer one is an I/O error.
fn read_gpt_at<R: ReadAt + ?Sized>(disk: &R, ss: u64, lba: u64) -> Result<Result<PartitionTable, String>> {
    let Ok(ss_usize) = usize::try_from(ss) else {
        return Ok(Err("sector size too large".into()));
    };
    let Some(hdr) = read_exact_at(disk, lba.saturating_mul(ss), ss_usize)? else {
        return Ok(Err(format!("LBA {lba} is beyond the end of the disk")));
    };
    let table = match parse_gpt_header(&hdr, lba) {
        Ok(h) => h,
        Err(why) => return Ok(Err(why)),
    };
    let Some(array_len) = table.entries.checked_mul(table.entry_size).and_then(|n| usize::try_from(n).ok()) else {
        return Ok(Err("partition entry array too large".into()));
    };
    let Some(array) = read_exact_at(disk, table.entries_lba.saturating_mul(ss), array_len)? else {
        return Ok(Err(format!("partition entries at LBA {} are beyond the end of the disk", table.entries_lba)));
    };
    let crc = crc32(&array);
    if crc != table.entries_crc {
        return Ok(Err(format!(
            "partition entry array CRC mismatch (stored {:08x}, computed {crc:08x})",
            table.entries_crc
        )));
    }
    let mut parts = Vec::new();
    for (number, ent) in (1u32..).zip(array.chunks_exact(128)) {
        let type_guid: [u8; 16] = arr(ent, 0).unwrap_or([0; 16]);
        if type_guid == [0; 16] {
            continue;
        }
        let (Some(first), Some(last), Some(unique)) = (le64(ent, 32), le64(ent, 40), arr::<16>(ent, 16)) else {
            continue;
        };
        let Some(sectors) = last.checked_sub(first).and_then(|n| n.checked_add(1)) else {
            continue;
        };
        let name: Vec<u16> = ent
            .get(56..128)
            .unwrap_or(&[])
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c.first().copied().unwrap_or(0), c.get(1).copied().unwrap_or(0)]))
            .take_while(|&c| c != 0)
            .collect();
        let name = String::from_utf16_lossy(&name);
        parts.push(Partition {
            number,
            start_lba: first,
            sectors,
            partuuid: guid_to_string(unique),
            partlabel: (!name.is_empty()).then_some(name),
        });
    }
    Ok(Ok(PartitionTable { kind: TableKind::Gpt { disk_guid: table.disk_guid }, partitions: parts }))
}

struct GptHeader {
    disk_guid: String,
    entries_lba: u64,
    entries: u64,
    entry_size: u64,
    entries_crc: u32,
}

fn parse_gpt_header(hdr: &[u8], lba: u64) -> Result<GptHeader, String> {
    let short = || "header truncated".to_string();
    if bytes(hdr, 0, 8) != Some(b"EFI PART") {
        return Err("no \"EFI PART\" signature".into());
    }
    let size = le32(hdr, 12).ok_or_else(short)?;
    let Some(covered) = usize::try_from(size).ok().filter(|&s| s >= 92).and_then(|s| hdr.get(..s)) else {
        return Err(format!("bad header size {size}"));
    };
    let stored = le32(hdr, 16).ok_or_else(short)?;
    let mut copy = covered.to_vec();
    if let Some(field) = copy.get_mut(16..20) {
        field.fill(0);
    }
    let crc = crc32(&copy);
    if crc != stored {
        return Err(format!("header CRC mismatch (stored {stored:08x}, computed {crc:08x})"));
    }
    let my_lba = le64(hdr, 24).ok_or_else(short)?;
    if my_lba != lba {
        return Err(format!("header at LBA {lba} says it is at LBA {my_lba}"));
    }
    let entries = u64::from(le32(hdr, 80).ok_or_else(short)?);
    let entry_size = u64::from(le32(hdr, 84).ok_or_else(short)?);
    if entry_size != 128 {
        return Err(format!("unsupported partition entry size {entry_size}"));
    }
    if entries == 0 || entries > 8192 {
        return Err(format!("unreasonable number of partition entries {entries}"));
    }
    Ok(GptHeader {
        disk_guid: guid_to_string(arr(hdr, 56).ok_or_else(short)?),
        entries_lba: le64(hdr, 72).ok_or_else(short)?,
        entries,
        entry_size,
        entries_crc: le32(hdr, 88).ok_or_else(short)?,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::fs::File;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    /// A scratch directory removed on drop.
    pub(crate) struct Scratch(pub PathBuf);
    impl Scratch {
        pub(crate) fn new(name: &str) -> Scratch {
            let dir = std::env::temp_dir().join(format!("dockroot-probe-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }
        pub(crate) fn file(&self, name: &str, size: u64) -> PathBuf {
            let p = self.0.join(name);
            let f = File::create(&p).unwrap();
            f.set_len(size).unwrap();
            p
        }
    }
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Run a tool; a missing tool or a failure fails the test.
    pub(crate) fn run(prog: &str, args: &[&str]) -> String {
        let out = Command::new(prog)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {prog} (is it installed?): {e}"));
        assert!(out.status.success(), "{prog} {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// One tag as `blkid -p` reports it (raw value), None if absent.
    fn blkid(path: &Path, tag: &str, offset: Option<u64>) -> Option<String> {
        let mut cmd = Command::new("blkid");
        cmd.args(["-p", "-s", tag, "-o", "value"]);
        if let Some(o) = offset {
            cmd.arg(format!("--offset={o}"));
        }
        let out = cmd.arg(path).output().expect("cannot run blkid");
        let s = String::from_utf8(out.stdout).unwrap();
        let s = s.strip_suffix('\n').unwrap_or(&s);
        (!s.is_empty()).then(|| s.to_string())
    }

    fn probe_path(path: &Path) -> Result<Option<FsInfo>> {
        probe_filesystem(&File::open(path).unwrap())
    }

    /// Assert the probe says exactly what blkid says.
    fn assert_like_blkid(path: &Path, info: &FsInfo) {
        assert_eq!(blkid(path, "TYPE", None).as_deref(), Some(info.fstype.name()), "{path:?}");
        assert_eq!(blkid(path, "LABEL", None), info.label, "{path:?}");
        assert_eq!(blkid(path, "UUID", None), info.uuid, "{path:?}");
        if let Some(m) = &info.btrfs {
            assert_eq!(blkid(path, "UUID_SUB", None).as_deref(), Some(m.dev_uuid.as_str()));
        }
    }

    fn flip(path: &Path, offset: u64) {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
        let mut b = [0u8];
        f.read_exact_at(&mut b, offset).unwrap();
        b[0] ^= 0x01;
        f.write_all_at(&b, offset).unwrap();
    }

    fn head(path: &Path, len: usize) -> Vec<u8> {
        let mut v = std::fs::read(path).unwrap();
        v.truncate(len);
        v
    }

    #[test]
    fn checksum_test_vectors() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(xxh64(b""), 0xEF46_DB37_51D8_E999);
        assert_eq!(xxh64(b"a"), 0xD24E_C4F1_A98C_6E5B);
        assert_eq!(xxh64(b"abc"), 0x44BC_2CF5_AD77_0999);
        // Long enough for the 32-byte stripes plus every tail path.
        let long: Vec<u8> = (0..=100u8).collect();
        assert_ne!(xxh64(&long), xxh64(&long[..100]));
    }

    #[test]
    fn guid_formats() {
        let raw = [0x78, 0x56, 0x34, 0x12, 0x34, 0x12, 0x78, 0x56, 0x9a, 0xbc, 1, 2, 3, 4, 5, 6];
        assert_eq!(guid_to_string(raw), "12345678-1234-5678-9abc-010203040506");
        assert_eq!(uuid_from(raw).unwrap(), "78563412-3412-7856-9abc-010203040506");
        assert_eq!(uuid_from([0; 16]), None);
        assert_eq!(label_from(b"root  \t\0junk"), Some("root".to_string()));
        assert_eq!(label_from(b"   \0"), None);
    }

    #[test]
    fn btrfs_like_blkid_and_checksums() {
        let s = Scratch::new("btrfs");
        for (csum, label) in [("crc32c", "my root ü"), ("xxhash", "x"), ("sha256", "s"), ("blake2", "b")] {
            let img = s.file(&format!("{csum}.img"), 128 << 20);
            let img_s = img.to_str().unwrap();
            let uuid = "0a1b2c3d-4e5f-4061-8293-a4b5c6d7e8f9";
            run("mkfs.btrfs", &["-q", "-f", "--csum", csum, "-L", label, "-U", uuid, img_s]);
            let info = probe_path(&img).unwrap().expect("btrfs not found");
            assert_eq!(info.fstype, FsType::Btrfs);
            assert_eq!(info.label.as_deref(), Some(label));
            assert_eq!(info.uuid.as_deref(), Some(uuid));
            let m = info.btrfs.as_ref().unwrap();
            assert_eq!((m.num_devices, m.devid), (1, 1));
            assert_like_blkid(&img, &info);
            // Same answer from an in-memory copy of the first MiB.
            assert_eq!(probe_filesystem(&head(&img, 1 << 20)).unwrap(), Some(info.clone()));
            // A flipped byte anywhere in the checksummed area: not btrfs any more
            // (blake2b is not verified, so it is still found).
            flip(&img, BTRFS_SB_OFFSET + 0x800);
            let after = probe_path(&img).unwrap();
            if csum == "blake2" {
                assert!(after.is_some());
            } else {
                assert_eq!(after, None, "{csum}: corrupted superblock still detected");
            }
        }
    }

    #[test]
    fn ext_like_blkid() {
        let s = Scratch::new("ext");
        let cases: [(&str, &[&str], FsType); 4] = [
            ("mkfs.ext4", &[], FsType::Ext4),
            ("mkfs.ext4", &["-O", "^metadata_csum"], FsType::Ext4),
            ("mkfs.ext3", &[], FsType::Ext3),
            ("mkfs.ext2", &[], FsType::Ext2),
        ];
        for (i, (tool, extra, want)) in cases.into_iter().enumerate() {
            let img = s.file(&format!("{i}.img"), 16 << 20);
            let uuid = format!("1234567{i}-89ab-4cde-8f01-23456789abcd");
            let label = format!("ext label {i}");
            let mut args: Vec<&str> = vec!["-q", "-F", "-L", &label, "-U", &uuid];
            args.extend_from_slice(extra);
            args.push(img.to_str().unwrap());
            run(tool, &args);
            let info = probe_path(&img).unwrap().expect("ext not found");
            assert_eq!(info.fstype, want, "{tool} {extra:?}");
            assert_eq!(info.label.as_deref(), Some(label.as_str()));
            assert_eq!(info.uuid.as_deref(), Some(uuid.as_str()));
            assert_like_blkid(&img, &info);
        }
        // metadata_csum: a corrupted superblock is rejected, as the kernel and
        // e2fsprogs do (blkid 2.38 does not check it yet; 2.39 does).
        let img = s.0.join("0.img");
        flip(&img, 1024 + 0x200);
        assert_eq!(probe_path(&img).unwrap(), None);
        let out = Command::new("dumpe2fs").arg("-h").arg(&img).output().expect("cannot run dumpe2fs");
        assert!(!out.status.success(), "dumpe2fs accepted the corrupted superblock");
    }

    #[test]
    fn xfs_like_blkid() {
        let s = Scratch::new("xfs");
        for (i, crc) in ["crc=1", "crc=0"].into_iter().enumerate() {
            let img = s.file(&format!("{i}.img"), 320 << 20);
            let uuid = format!("9876543{i}-1234-4234-8234-123456789abc");
            let opt = format!("{crc},uuid={uuid}");
            run("mkfs.xfs", &["-q", "-f", "-L", "twelve_chars", "-m", &opt, img.to_str().unwrap()]);
            let info = probe_path(&img).unwrap().expect("xfs not found");
            assert_eq!(info.fstype, FsType::Xfs);
            assert_eq!(info.label.as_deref(), Some("twelve_chars"));
            assert_eq!(info.uuid.as_deref(), Some(uuid.as_str()));
            assert_like_blkid(&img, &info);
        }
        // v5: a changed byte the sanity checks cannot see fails the crc.
        let img = s.0.join("0.img");
        flip(&img, 300);
        assert_eq!(probe_path(&img).unwrap(), None);
    }

    #[test]
    fn vfat_like_blkid() {
        let s = Scratch::new("vfat");
        let cases: [(u64, &[&str], &str); 4] = [
            (2 << 20, &["-F", "12", "-n", "TINY"], "FAT12"),
            (32 << 20, &["-F", "16", "-n", "MY LABEL"], "FAT16"),
            (64 << 20, &["-F", "32", "-n", "EFI"], "FAT32"),
            (32 << 20, &["-F", "16"], "FAT16"),
        ];
        for (i, (size, opts, version)) in cases.into_iter().enumerate() {
            let img = s.file(&format!("{i}.img"), size);
            let id = format!("{i}bcdef0{i}");
            let mut args: Vec<&str> = opts.to_vec();
            args.extend_from_slice(&["-i", &id, img.to_str().unwrap()]);
            run("mkfs.vfat", &args);
            assert_eq!(blkid(&img, "VERSION", None).as_deref(), Some(version));
            let info = probe_path(&img).unwrap().expect("vfat not found");
            assert_eq!(info.fstype, FsType::Vfat);
            assert_eq!(info.uuid.as_deref(), Some(format!("{i}BCD-EF0{i}").as_str()));
            assert_like_blkid(&img, &info);
        }
        assert_eq!(probe_path(&s.0.join("3.img")).unwrap().unwrap().label, None);
        // The root directory label wins over the boot sector one (FAT16 and FAT32).
        for (img, off) in [("1.img", 0x2bu64), ("2.img", 0x47)] {
            let img = s.0.join(img);
            std::os::unix::fs::FileExt::write_all_at(
                &std::fs::OpenOptions::new().write(true).open(&img).unwrap(),
                b"BOOTSECTOR ",
                off,
            )
            .unwrap();
            let info = probe_path(&img).unwrap().unwrap();
            assert_ne!(info.label.as_deref(), Some("BOOTSECTOR"));
            assert_like_blkid(&img, &info);
        }
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

    /// `partx` (libblkid) listing: (number, start, sectors, partuuid, name).
    fn partx(path: &Path) -> Vec<(u32, u64, u64, String, Option<String>)> {
        let out = run("partx", &["-o", "NR,START,SECTORS,UUID,NAME", "-P", path.to_str().unwrap()]);
        out.lines()
            .map(|line| {
                let mut vals = Vec::new();
                for field in line.split("\" ") {
                    let v = field.split_once("=\"").unwrap().1.trim_end_matches('"');
                    // partx escapes bytes outside printable ASCII as \xNN.
                    let mut bytes = Vec::new();
                    let mut rest = v.as_bytes();
                    while let Some((&b, r)) = rest.split_first() {
                        if b == b'\\' && r.first() == Some(&b'x') {
                            let hex = std::str::from_utf8(&r[1..3]).unwrap();
                            bytes.push(u8::from_str_radix(hex, 16).unwrap());
                            rest = &r[3..];
                        } else {
                            bytes.push(b);
                            rest = r;
                        }
                    }
                    vals.push(String::from_utf8(bytes).unwrap());
                }
                let name = (!vals[4].is_empty()).then(|| vals[4].clone());
                (vals[0].parse().unwrap(), vals[1].parse().unwrap(), vals[2].parse().unwrap(), vals[3].clone(), name)
            })
            .collect()
    }

    fn as_tuples(t: &PartitionTable) -> Vec<(u32, u64, u64, String, Option<String>)> {
        t.partitions
            .iter()
            .map(|p| (p.number, p.start_lba, p.sectors, p.partuuid.clone(), p.partlabel.clone()))
            .collect()
    }

    #[test]
    fn gpt_like_partx_with_backup_fallback() {
        let s = Scratch::new("gpt");
        let disk = s.file("disk.img", 64 << 20);
        let d = disk.to_str().unwrap();
        run(
            "sgdisk",
            &[
                "-o",
                "-U",
                "11111111-2222-3333-4444-555555555555",
                "-n",
                "1:2048:+8M",
                "-c",
                "1:dockroot",
                "-u",
                "1:AAAAAAAA-BBBB-CCCC-DDDD-EEEEEEEEEEEE",
                "-n",
                "3:0:+8M",
                "-c",
                "3:ümlaut/x y",
                "-u",
                "3:01234567-89ab-cdef-0123-456789abcdef",
                "-n",
                "4:0:+1M",
                d,
            ],
        );
        let t = read_partition_table(&File::open(&disk).unwrap(), 512).unwrap().unwrap();
        assert_eq!(t.kind, TableKind::Gpt { disk_guid: "11111111-2222-3333-4444-555555555555".into() });
        assert_eq!(blkid(&disk, "PTUUID", None).as_deref(), Some("11111111-2222-3333-4444-555555555555"));
        let got = as_tuples(&t);
        assert_eq!(got, partx(&disk));
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].3, "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee");
        assert_eq!(got[1].4.as_deref(), Some("ümlaut/x y"));
        assert_eq!(got[2].4, None);

        // A filesystem inside partition 1, probed through an offset reader.
        struct At<'a>(&'a File, u64);
        impl ReadAt for At<'_> {
            fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
                ReadAt::read_at(self.0, buf, offset + self.1)
            }
        }
        let part = s.file("part.img", 8 << 20);
        run("mkfs.ext4", &["-q", "-F", "-L", "inpart", part.to_str().unwrap()]);
        run(
            "dd",
            &[&format!("if={}", part.display()), &format!("of={d}"), "bs=1M", "seek=1", "conv=notrunc", "status=none"],
        );
        let f = File::open(&disk).unwrap();
        let info = probe_filesystem(&At(&f, 2048 * 512)).unwrap().unwrap();
        assert_eq!(info.label, blkid(&disk, "LABEL", Some(2048 * 512)));
        assert_eq!(info.uuid, blkid(&disk, "UUID", Some(2048 * 512)));

        // Break the primary header: the backup at the end of the disk is used.
        flip(&disk, 512 + 60);
        let t2 = read_partition_table(&File::open(&disk).unwrap(), 512).unwrap().unwrap();
        assert_eq!(as_tuples(&t2), got);
        // Without a disk size there is no backup to find: a clear error.
        let mem = head(&disk, 1 << 20);
        let err = read_partition_table(&mem, 512).unwrap_err().to_string();
        assert!(err.contains("header CRC mismatch"), "{err}");
        // Break the backup too.
        flip(&disk, (64 << 20) - 512 + 60);
        let err = read_partition_table(&File::open(&disk).unwrap(), 512).unwrap_err().to_string();
        assert!(err.contains("no valid GPT"), "{err}");
    }

    #[test]
    fn mbr_with_logical_partitions_like_partx() {
        let s = Scratch::new("mbr");
        let disk = s.file("disk.img", 64 << 20);
        let script = "label: dos\nlabel-id: 0xdeadbeef\n\
                      start=2048, size=8192, type=83\n\
                      start=10240, size=40960, type=5\n\
                      start=12288, size=4096, type=83\n\
                      start=18432, size=4096, type=83\n\
                      start=24576, size=2048, type=83\n\
                      start=51200, size=2048, type=c\n";
        let mut child = Command::new("sfdisk")
            .args(["-q", disk.to_str().unwrap()])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("cannot run sfdisk");
        use std::io::Write;
        child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
        assert!(child.wait().unwrap().success());
        let t = read_partition_table(&File::open(&disk).unwrap(), 512).unwrap().unwrap();
        assert_eq!(t.kind, TableKind::Mbr { disk_signature: 0xdeadbeef });
        let got = as_tuples(&t);
        let numbers: Vec<u32> = got.iter().map(|p| p.0).collect();
        assert_eq!(numbers, [1, 2, 3, 5, 6, 7]);
        assert_eq!(got[3], (5, 12288, 4096, "deadbeef-05".to_string(), None));
        assert_eq!(got[5].3, "deadbeef-07");
        // partx shows the extended partition with its size clipped like Linux does.
        let mut want = partx(&disk);
        for p in &mut want {
            if p.0 == 2 {
                p.2 = 40960;
            }
        }
        assert_eq!(got, want);
        assert_eq!(blkid(&disk, "PTUUID", None).as_deref(), Some("deadbeef"));
    }

    #[test]
    fn protective_mbr_means_gpt_and_fat_boot_sector_is_no_table() {
        let s = Scratch::new("pmbr");
        let disk = s.file("d.img", 8 << 20);
        run("sgdisk", &["-o", "-n", "1:0:0", disk.to_str().unwrap()]);
        let mut img = std::fs::read(&disk).unwrap();
        assert!(matches!(read_partition_table(&img, 512).unwrap().unwrap().kind, TableKind::Gpt { .. }));
        // Protective MBR but no GPT header at all: an error, never an MBR reading.
        img[512..1024].fill(0);
        img.truncate(1 << 20);
        assert!(read_partition_table(&img, 512).is_err());
        // A FAT superfloppy: boot code where the table would be.
        let fat = s.file("f.img", 4 << 20);
        run("mkfs.vfat", &[fat.to_str().unwrap()]);
        let bytes = std::fs::read(&fat).unwrap();
        let t = read_partition_table(&bytes, 512).unwrap();
        assert!(t.is_none() || t.unwrap().partitions.is_empty());
    }
}
