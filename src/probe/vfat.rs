//! vfat (FAT12/16/32): the boot sector's BIOS parameter block checked like
//! libblkid, the volume label from the root directory (or the boot sector)
//! and the volume serial as UUID.
//!
//! Pure: parses bytes read through [`ReadAt`] (a bounded walk of the root
//! directory's cluster chain for FAT32).

use super::{label_from, read_exact_at, FsInfo, FsType, ReadAt};
use crate::bytes::Bytes;
use crate::error::Result;

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
    let at = Bytes::new(bs);
    const FAT12_MAX: u64 = 0xFF4;
    const FAT16_MAX: u64 = 0xFFF4;
    const FAT32_MAX: u64 = 0x0FFF_FFF6;
    if at.slice(0x1fe, 2)? != [0x55, 0xAA] {
        return None;
    }
    let magic16 = at.slice(0x36, 8)?;
    let magic32 = at.slice(0x52, 8)?;
    let strong = magic32.starts_with(b"MSWIN")
        || magic32 == b"FAT32   "
        || magic16.starts_with(b"MSDOS")
        || magic16 == b"FAT16   "
        || magic16 == b"FAT12   "
        || magic16 == b"FAT     ";
    if !strong {
        if !matches!(at.u8(0)?, 0xEB | 0xE9) {
            return None;
        }
        // OS/2 puts a FAT-like header in front of JFS and HPFS.
        if magic16 == b"JFS     " || magic16 == b"HPFS    " {
            return None;
        }
    }
    let sector_size = u64::from(at.le16(0x0b)?);
    let cluster_sectors = u64::from(at.u8(0x0d)?);
    let reserved = u64::from(at.le16(0x0e)?);
    let fats = u64::from(at.u8(0x10)?);
    let root_entries = u64::from(at.le16(0x11)?);
    let sectors16 = u64::from(at.le16(0x13)?);
    let media = at.u8(0x15)?;
    let fat16_len = u64::from(at.le16(0x16)?);
    let sectors32 = u64::from(at.le32(0x20)?);
    let fat32_len = u64::from(at.le32(0x24)?);
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
        root_cluster: at.le32(0x2c)?,
        fsinfo_sector: u64::from(at.le16(0x30)?),
        boot_label: at.array(label_off)?,
        serial: at.array(serial_off)?,
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
            let at = Bytes::new(ent);
            let first = at.u8(0).unwrap_or(0);
            if first == 0 {
                return Ok(None); // end of directory
            }
            let attr = at.u8(11).unwrap_or(0);
            let cluster_hi = at.le16(20).unwrap_or(1);
            let cluster_lo = at.le16(26).unwrap_or(1);
            if first == 0xE5 || cluster_hi != 0 || cluster_lo != 0 || attr & 0x3f == 0x0f {
                continue; // deleted, a file or directory, or a long-name piece
            }
            if attr & (0x08 | 0x10) == 0x08 {
                return Ok(at.array(0));
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
pub(super) fn probe_vfat<R: ReadAt + ?Sized>(dev: &R) -> Result<Option<FsInfo>> {
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
            next = u64::from(Bytes::new(&e).le32(0).unwrap_or(0) & 0x0fff_ffff);
        }
        if bpb.fsinfo_sector != 0 {
            let Some(fsinfo) = read_exact_at(dev, bpb.fsinfo_sector.saturating_mul(ss), 512)? else {
                return Ok(None);
            };
            let sig1 = Bytes::new(&fsinfo).slice(0, 4).unwrap_or(&[]);
            let sig2 = Bytes::new(&fsinfo).slice(484, 4).unwrap_or(&[]);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::fixtures::{assert_like_blkid, blkid, probe_path, run, Scratch};

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
}
