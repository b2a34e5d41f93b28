//! The table of block devices for "device not found" messages ([`describe`]),
//! and the size and duration formats the log uses.
//!
//! Pure: formatting only.

use std::time::Duration;

use super::scan::BlockDevice;

/// `n / div` with one decimal, rounded half up ("1.5"); integers only (no
/// float formatting in the init: it costs about 10 KB).
fn tenths(n: u128, div: u128) -> String {
    let t = n.saturating_mul(10).saturating_add(div / 2) / div.max(1);
    format!("{}.{}", t / 10, t % 10)
}

pub(super) fn fmt_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}s", tenths(d.as_millis(), 1000))
    }
}

/// A size as lsblk shows it: 512, 1K, 1.5M, 20G.
fn fmt_size(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "K", "M", "G", "T", "P", "E"];
    let mut unit = 0;
    let mut div: u128 = 1;
    while u128::from(bytes) >= div.saturating_mul(1024) && unit + 1 < UNITS.len() {
        div = div.saturating_mul(1024);
        unit += 1;
    }
    let u = UNITS.get(unit).copied().unwrap_or("?");
    let n = u128::from(bytes);
    if unit == 0 {
        format!("{bytes}")
    } else if n < div.saturating_mul(10) && n % div != 0 {
        format!("{}{u}", tenths(n, div))
    } else {
        format!("{}{u}", n.saturating_add(div / 2) / div)
    }
}

/// A value for the table: "-" if absent; quoted and escaped (Rust string
/// syntax) if it has spaces, quotes or control characters, so a label read
/// from disk cannot garble the console.
pub(super) fn cell(v: Option<&str>) -> String {
    match v {
        None => "-".to_string(),
        Some(s) if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control() || c == '"') => {
            format!("{s:?}")
        }
        Some(s) => s.to_string(),
    }
}

/// A table of block devices (name, MAJ:MIN, size in lsblk's units, filesystem
/// type, LABEL, UUID, btrfs devid/num_devices for multi-device btrfs members,
/// PARTUUID, PARTLABEL and probe errors), for "device not found" messages.
pub fn describe(devs: &[BlockDevice]) -> String {
    if devs.is_empty() {
        return "(no block devices found)\n".to_string();
    }
    let header = ["NAME", "MAJ:MIN", "SIZE", "FSTYPE", "LABEL", "UUID", "DEVID", "PARTUUID", "PARTLABEL", "ERROR"];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for d in devs {
        let fs = d.fs.as_ref();
        let p = d.partition.as_ref();
        rows.push(vec![
            cell(Some(&d.name)),
            format!("{}:{}", d.major, d.minor),
            fmt_size(d.size_bytes),
            cell(fs.map(|f| f.fstype.name())),
            cell(fs.and_then(|f| f.label.as_deref())),
            cell(fs.and_then(|f| f.uuid.as_deref())),
            fs.and_then(|f| f.btrfs.as_ref())
                .filter(|b| b.num_devices > 1)
                .map_or_else(|| "-".to_string(), |b| format!("{}/{}", b.devid, b.num_devices)),
            cell(p.map(|p| p.partuuid.as_str())),
            cell(p.and_then(|p| p.partlabel.as_deref())),
            d.probe_error.as_deref().map(|e| cell(Some(e)).trim_matches('"').to_string()).unwrap_or_else(|| "-".into()),
        ]);
    }
    let mut widths = vec![0usize; header.len()];
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, (c, w)) in row.iter().zip(&widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(c);
            } else {
                line.push_str(c);
                line.push_str(&" ".repeat(w.saturating_sub(c.chars().count()) + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::fixtures::{dev, sample, with_fs};
    use crate::probe::{BtrfsMember, FsType};

    #[test]
    fn describe_lists_everything() {
        let mut devs = sample();
        let mut bad = dev("sdd", 48);
        bad.probe_error = Some("opening /dev/sdd: Input/output error".into());
        bad.size_bytes = 1536 * 1024;
        devs.push(bad);
        let mut spacey =
            with_fs(dev("sde", 64), FsType::Xfs, Some("my\tlabel"), "22222222-2222-3333-4444-555555555555");
        spacey.size_bytes = 512;
        devs.push(spacey);
        if let Some(fs) = devs[2].fs.as_mut() {
            fs.btrfs = Some(BtrfsMember { num_devices: 2, devid: 1, dev_uuid: "x".into(), checksum: "crc32c" });
        }
        let t = describe(&devs);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 7, "{t}");
        let cols: Vec<&str> = lines[0].split_whitespace().collect();
        assert_eq!(
            cols,
            ["NAME", "MAJ:MIN", "SIZE", "FSTYPE", "LABEL", "UUID", "DEVID", "PARTUUID", "PARTLABEL", "ERROR"]
        );
        let sda2: Vec<&str> = lines[3].split_whitespace().collect();
        assert_eq!(
            sda2,
            [
                "sda2",
                "8:2",
                "1G",
                "btrfs",
                "dock",
                "0a1b2c3d-4e5f-4061-8293-a4b5c6d7e8f9",
                "1/2",
                "0a0b0c0d-aaaa-bbbb-cccc-000000000002",
                "root",
                "-"
            ]
        );
        let sdb5: Vec<&str> = lines[4].split_whitespace().collect();
        assert_eq!(sdb5[6..9], ["-", "deadbeef-05", "-"]);
        assert!(
            lines[5].starts_with("sdd ")
                && lines[5].contains("1.5M")
                && lines[5].ends_with("opening /dev/sdd: Input/output error"),
            "{t}"
        );
        assert!(lines[6].contains("\"my\\tlabel\"") && lines[6].contains(" 512 "), "{t}");
        // Columns line up: every row has the UUID column at the same place.
        let at = lines[0].find("UUID").unwrap();
        assert_eq!(&lines[3][at..at + 8], "0a1b2c3d");
        assert_eq!(describe(&[]), "(no block devices found)\n");
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(fmt_size(0), "0");
        assert_eq!(fmt_size(1024), "1K");
        assert_eq!(fmt_size(1536), "1.5K");
        assert_eq!(fmt_size(64 << 20), "64M");
        assert_eq!(fmt_size(u64::MAX), "16E");
        assert_eq!(fmt_duration(Duration::from_secs(30)), "30s");
        assert_eq!(fmt_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(fmt_duration(Duration::from_millis(250)), "0.3s");
        assert_eq!(fmt_size(10 << 20 | 1), "10M");
        assert_eq!(fmt_size((1 << 30) + (1 << 29) + (1 << 27)), "1.6G");
    }
}
