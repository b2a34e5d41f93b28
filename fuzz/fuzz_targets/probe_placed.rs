//! The probes again, with the input placed where each structure lives in a
//! 128 KiB disk image, its magic number set and its checksum made valid, so
//! the fuzzer spends its time past the signature and checksum checks.
//!
//! The first input byte picks the structure (low 3 bits) and whether the
//! magic and checksum are left as they are (bit 7); the rest is the payload:
//! 0 btrfs superblock at 64 KiB, 1 ext superblock at 1 KiB, 2 xfs at 0,
//! 3 FAT boot sector at 0, 4 GPT (protective MBR, payload from LBA 1),
//! 5 MBR and EBRs at 0.
#![no_main]

use dockroot::probe::{crc32, crc32c, probe_filesystem, read_partition_table};
use libfuzzer_sys::fuzz_target;

mod probe_checks;
use probe_checks as checks;

const DISK: usize = 128 * 1024;

fn put(buf: &mut [u8], off: usize, bytes: &[u8]) {
    if let Some(dst) = buf.get_mut(off..off + bytes.len()) {
        dst.copy_from_slice(bytes);
    }
}

fn le32(buf: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(buf[off..off + 4].try_into().unwrap())
}

fn fix_btrfs(disk: &mut [u8]) {
    let sb = &mut disk[64 * 1024..64 * 1024 + 4096];
    put(sb, 0x40, b"_BHRfS_M");
    put(sb, 0x30, &(64u64 * 1024).to_le_bytes());
    if u16::from_le_bytes([sb[0xc4], sb[0xc5]]) == 0 {
        let c = crc32c(&sb[0x20..]);
        put(sb, 0, &c.to_le_bytes());
    }
}

fn fix_ext(disk: &mut [u8]) {
    let sb = &mut disk[1024..2048];
    put(sb, 0x38, &0xEF53u16.to_le_bytes());
    if le32(sb, 0x64) & 0x400 != 0 {
        let c = !crc32c(&sb[..0x3fc]);
        put(sb, 0x3fc, &c.to_le_bytes());
    }
}

fn fix_xfs(disk: &mut [u8]) {
    put(disk, 0, b"XFSB");
    let sectsize = usize::from(u16::from_be_bytes([disk[102], disk[103]]));
    if disk[100] & 0xf == 5 && (512..=32768).contains(&sectsize) {
        put(disk, 224, &[0; 4]);
        let c = crc32c(&disk[..sectsize]);
        put(disk, 224, &c.to_le_bytes());
    }
}

fn fix_gpt(disk: &mut [u8]) {
    // Protective MBR.
    put(disk, 0x1be + 4, &[0xEE]);
    put(disk, 0x1be + 8, &1u32.to_le_bytes());
    put(disk, 0x1be + 12, &u32::MAX.to_le_bytes());
    put(disk, 0x1fe, &[0x55, 0xAA]);
    let hdr = 512;
    put(disk, hdr, b"EFI PART");
    // The entry array's CRC, when the header points inside the image.
    let lba = u64::from_le_bytes(disk[hdr + 72..hdr + 80].try_into().unwrap());
    let count = u64::from(le32(disk, hdr + 80));
    let size = u64::from(le32(disk, hdr + 84));
    let start = lba.checked_mul(512);
    let end = count.checked_mul(size).and_then(|n| start?.checked_add(n));
    if let (Some(start), Some(end)) = (start, end) {
        if end <= DISK as u64 {
            let c = crc32(&disk[start as usize..end as usize]);
            put(disk, hdr + 88, &c.to_le_bytes());
        }
    }
    let hsize = le32(disk, hdr + 12) as usize;
    if (92..=512).contains(&hsize) {
        put(disk, hdr + 16, &[0; 4]);
        let c = crc32(&disk[hdr..hdr + hsize]);
        put(disk, hdr + 16, &c.to_le_bytes());
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, payload)) = data.split_first() else { return };
    let raw = mode & 0x80 != 0;
    let mut disk = vec![0u8; DISK];
    let at = match mode & 7 {
        0 => 64 * 1024,
        1 => 1024,
        4 => 512,
        _ => 0,
    };
    let n = payload.len().min(DISK - at);
    disk[at..at + n].copy_from_slice(&payload[..n]);
    if !raw {
        match mode & 7 {
            0 => fix_btrfs(&mut disk),
            1 => fix_ext(&mut disk),
            2 => fix_xfs(&mut disk),
            3 | 5 => put(&mut disk, 0x1fe, &[0x55, 0xAA]),
            4 => fix_gpt(&mut disk),
            _ => {}
        }
    }
    if let Ok(Some(info)) = probe_filesystem(&disk[..]) {
        checks::check_fs(&info);
    }
    for ss in [512, 4096] {
        if let Ok(Some(t)) = read_partition_table(&disk[..], ss) {
            checks::check_table(&t);
        }
    }
});
