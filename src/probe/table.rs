//! Partition tables: GPT (primary header, else the backup in the last sector;
//! CRCs checked) and MBR with extended/logical partitions, numbered as Linux
//! numbers them.
//!
//! Pure: parses bytes read through [`ReadAt`].

use super::checksum::crc32;
use super::{guid_to_string, read_exact_at, ReadAt};
use crate::bytes::Bytes;
use crate::error::{Context, Error, Result};

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
    if Bytes::new(&mbr).slice(0x1fe, 2) != Some(&[0x55, 0xAA]) {
        return Ok(None);
    }
    let entries: Vec<MbrEntry> = (0..4).filter_map(|i| MbrEntry::parse(&mbr, 0x1be + 16 * i)).collect();
    if entries.iter().any(|e| e.kind == 0xEE) {
        return read_gpt(disk, sector_size).map(Some);
    }
    if entries.iter().any(|e| e.boot != 0 && e.boot != 0x80) {
        return Ok(None);
    }
    let disk_signature = Bytes::new(&mbr).le32(0x1b8).unwrap_or(0);
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
        let at = Bytes::new(sector);
        Some(MbrEntry {
            boot: at.u8(off)?,
            kind: at.u8(off + 4)?,
            start: u64::from(at.le32(off + 8)?),
            sectors: u64::from(at.le32(off + 12)?),
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
            if Bytes::new(&ebr).slice(0x1fe, 2) != Some(&[0x55, 0xAA]) {
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
        let at = Bytes::new(ent);
        let type_guid: [u8; 16] = at.array(0).unwrap_or([0; 16]);
        if type_guid == [0; 16] {
            continue;
        }
        let (Some(first), Some(last), Some(unique)) = (at.le64(32), at.le64(40), at.array::<16>(16)) else {
            continue;
        };
        let Some(sectors) = last.checked_sub(first).and_then(|n| n.checked_add(1)) else {
            continue;
        };
        let name: Vec<u16> = ent
            .get(56..128)
            .unwrap_or(&[])
            .chunks_exact(2)
            .map(|c| Bytes::new(c).le16(0).unwrap_or(0))
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
    let at = Bytes::new(hdr);
    let short = || "header truncated".to_string();
    if at.slice(0, 8) != Some(b"EFI PART") {
        return Err("no \"EFI PART\" signature".into());
    }
    let size = at.le32(12).ok_or_else(short)?;
    let Some(covered) = usize::try_from(size).ok().filter(|&s| s >= 92).and_then(|s| hdr.get(..s)) else {
        return Err(format!("bad header size {size}"));
    };
    let stored = at.le32(16).ok_or_else(short)?;
    let mut copy = covered.to_vec();
    if let Some(field) = copy.get_mut(16..20) {
        field.fill(0);
    }
    let crc = crc32(&copy);
    if crc != stored {
        return Err(format!("header CRC mismatch (stored {stored:08x}, computed {crc:08x})"));
    }
    let my_lba = at.le64(24).ok_or_else(short)?;
    if my_lba != lba {
        return Err(format!("header at LBA {lba} says it is at LBA {my_lba}"));
    }
    let entries = u64::from(at.le32(80).ok_or_else(short)?);
    let entry_size = u64::from(at.le32(84).ok_or_else(short)?);
    if entry_size != 128 {
        return Err(format!("unsupported partition entry size {entry_size}"));
    }
    if entries == 0 || entries > 8192 {
        return Err(format!("unreasonable number of partition entries {entries}"));
    }
    Ok(GptHeader {
        disk_guid: guid_to_string(at.array(56).ok_or_else(short)?),
        entries_lba: at.le64(72).ok_or_else(short)?,
        entries,
        entry_size,
        entries_crc: at.le32(88).ok_or_else(short)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::fixtures::{blkid, flip, head, run, Scratch};
    use crate::probe::probe_filesystem;
    use std::fs::File;
    use std::path::Path;
    use std::process::Command;

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
