//! Invariants of what the probes report, shared by the probe targets.

use dockroot::probe::{FsInfo, PartitionTable, TableKind};

/// A filesystem probe result is well formed.
pub fn check_fs(info: &FsInfo) {
    if let Some(l) = &info.label {
        assert!(!l.is_empty() && !l.contains('\0'), "{info:?}");
    }
    if let Some(u) = &info.uuid {
        assert!(u.len() == 36 || (info.fstype.name() == "vfat" && u.len() == 9), "{info:?}");
    }
    assert_eq!(info.btrfs.is_some(), info.fstype.name() == "btrfs", "{info:?}");
}

/// Partition numbers are unique and in range; no empty partition.
pub fn check_table(t: &PartitionTable) {
    let mut numbers: Vec<u32> = t.partitions.iter().map(|p| p.number).collect();
    numbers.sort_unstable();
    numbers.dedup();
    assert_eq!(numbers.len(), t.partitions.len(), "partition numbers repeat: {t:?}");
    for p in &t.partitions {
        assert!(p.number >= 1 && p.number <= 8192, "{p:?}");
        assert!(p.sectors > 0, "{p:?}");
        if let TableKind::Mbr { .. } = t.kind {
            assert!(p.number <= 256, "{p:?}");
        }
    }
}
