//! The btrfs superblock: type, LABEL, UUID and the member device's item
//! (devid, num_devices, UUID_SUB), checksum verified.
//!
//! Pure: parses bytes read through [`ReadAt`].

use super::checksum::{crc32c, xxh64};
use super::{label_from, read_exact_at, uuid_from, BtrfsMember, FsInfo, FsType, ReadAt};
use crate::bytes::Bytes;
use crate::error::Result;

const BTRFS_SB_OFFSET: u64 = 64 * 1024;
const BTRFS_SB_SIZE: usize = 4096;
/// The checksum algorithms by `csum_type`, as the start of their kernel
/// modules' names (`crc32c_generic`, `xxhash_generic`, `sha256_ssse3`, `blake2b_generic`).
const CHECKSUMS: [&str; 4] = ["crc32c", "xxhash", "sha256", "blake2b"];

pub(super) fn probe_btrfs<R: ReadAt + ?Sized>(dev: &R) -> Result<Option<FsInfo>> {
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
    let at = Bytes::new(sb);
    if at.slice(0x40, 8)? != b"_BHRfS_M" {
        return None;
    }
    // The primary copy records its own position.
    if at.le64(0x30)? != BTRFS_SB_OFFSET {
        return None;
    }
    let covered = sb.get(0x20..BTRFS_SB_SIZE)?;
    let csum = at.slice(0, 32)?;
    let csum_type = at.le16(0xc4)?;
    let ok = match csum_type {
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
        label: label_from(at.slice(0x12b, 256)?),
        uuid: uuid_from(at.array(0x20)?),
        btrfs: Some(BtrfsMember {
            num_devices: at.le64(0x88)?,
            devid: at.le64(dev_item)?,
            dev_uuid: uuid_from(at.array(dev_item + 66)?).unwrap_or_default(),
            checksum: CHECKSUMS.get(usize::from(csum_type)).copied()?,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::fixtures::{assert_like_blkid, flip, head, probe_path, run, Scratch};
    use crate::probe::probe_filesystem;

    #[test]
    fn btrfs_like_blkid_and_checksums() {
        let s = Scratch::new("btrfs");
        for (csum, label) in [("crc32c", "my root ü"), ("xxhash", "x"), ("sha256", "s"), ("blake2", "b")] {
            let module_prefix = if csum == "blake2" { "blake2b" } else { csum };
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
            assert_eq!(m.checksum, module_prefix, "the checksum drivers to load before mounting");
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
}
