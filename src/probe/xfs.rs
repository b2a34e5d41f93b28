//! The xfs superblock: libblkid's sanity checks, the v5 crc, LABEL and UUID.
//!
//! Pure: parses bytes read through [`ReadAt`].

use super::checksum::{crc_update, CRC32C_TABLE};
use super::{label_from, read_exact_at, uuid_from, FsInfo, FsType, ReadAt};
use crate::bytes::Bytes;
use crate::error::Result;

pub(super) fn probe_xfs<R: ReadAt + ?Sized>(dev: &R) -> Result<Option<FsInfo>> {
    let Some(head) = read_exact_at(dev, 0, 512)? else {
        return Ok(None);
    };
    let Some(sectsize) = xfs_sane(&head) else {
        return Ok(None);
    };
    let is_v5 = Bytes::new(&head).be16(100).is_some_and(|v| v & 0xf == 5);
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
    let at = Bytes::new(sb);
    if at.slice(0, 4)? != b"XFSB" {
        return None;
    }
    let blocksize = u64::from(at.be32(4)?);
    let dblocks = at.be64(8)?;
    let rextsize = u64::from(at.be32(80)?);
    let agblocks = u64::from(at.be32(84)?);
    let agcount = u64::from(at.be32(88)?);
    let sectsize = u64::from(at.be16(102)?);
    let inodesize = u64::from(at.be16(104)?);
    let blocklog = u32::from(at.u8(120)?);
    let sectlog = u32::from(at.u8(121)?);
    let inodelog = u32::from(at.u8(122)?);
    let inopblog = u32::from(at.u8(123)?);
    let imax_pct = at.u8(127)?;
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
    let Some(stored) = Bytes::new(sector).le32(CRC_OFF) else {
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
    let at = Bytes::new(sb);
    Some(FsInfo {
        fstype: FsType::Xfs,
        label: label_from(at.slice(108, 12)?),
        uuid: uuid_from(at.array(32)?),
        btrfs: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::fixtures::{assert_like_blkid, flip, probe_path, run, Scratch};

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
}
