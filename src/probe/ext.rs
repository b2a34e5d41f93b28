//! The ext2/3/4 superblock: which of the three, LABEL and UUID, the
//! metadata_csum checksum verified.
//!
//! Pure: parses bytes read through [`ReadAt`].

use super::checksum::crc32c;
use super::{label_from, read_exact_at, uuid_from, FsInfo, FsType, ReadAt};
use crate::bytes::Bytes;
use crate::error::Result;

const EXT_SB_OFFSET: u64 = 1024;

pub(super) fn probe_ext<R: ReadAt + ?Sized>(dev: &R) -> Result<Option<FsInfo>> {
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
    let at = Bytes::new(sb);

    if at.le16(0x38)? != 0xEF53 {
        return None;
    }
    if at.le32(0x18)? > 6 {
        return None; // block size above 64 KiB: garbage
    }
    let compat = at.le32(0x5c)?;
    let incompat = at.le32(0x60)?;
    let ro_compat = at.le32(0x64)?;
    if incompat & INCOMPAT_JOURNAL_DEV != 0 {
        return None;
    }
    if ro_compat & RO_COMPAT_METADATA_CSUM != 0 {
        // ext4 stores the raw crc32c (seed ~0, no final inversion).
        let stored = at.le32(0x3fc)?;
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
    Some(FsInfo { fstype, label: label_from(at.slice(0x78, 16)?), uuid: uuid_from(at.array(0x68)?), btrfs: None })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::fixtures::{assert_like_blkid, flip, probe_path, run, Scratch};
    use std::process::Command;

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
}
