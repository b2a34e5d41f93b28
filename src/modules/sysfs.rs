//! The sysfs walk: every `modalias` under `/sys/devices`, bounded in depth,
//! entries and bytes, without following symlinks. Thin (directory reads);
//! tested on a fake tree.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::{Context, Result};

/// Bounds of the `/sys/devices` walk.
pub const SYSFS_MAX_DEPTH: usize = 64;
/// The most directory entries the walk looks at.
pub const SYSFS_MAX_ENTRIES: usize = 2_000_000;
/// The most bytes read of one `modalias` file (the CPU's is about 1 KiB).
pub const MODALIAS_MAX_BYTES: u64 = 16 << 10;

/// Every `modalias` under `devices` (`/sys/devices`), without following
/// symlinks, `max_depth` directories deep at most: modalias → the first
/// device directory that has it. Unreadable files and directories (devices
/// going away) are skipped; only an unreadable `devices` is an error.
pub fn collect_modaliases(devices: &Path, max_depth: usize) -> Result<BTreeMap<String, PathBuf>> {
    let mut found: BTreeMap<String, PathBuf> = BTreeMap::new();
    let top = std::fs::read_dir(devices).context(|| format!("listing {}", devices.display()))?;
    let mut stack: Vec<(std::fs::ReadDir, usize, PathBuf)> = vec![(top, 0, devices.to_owned())];
    let mut entries = 0usize;
    while let Some((mut dir, depth, path)) = stack.pop() {
        let Some(entry) = dir.next() else { continue };
        stack.push((dir, depth, path.clone()));
        entries = entries.saturating_add(1);
        if entries > SYSFS_MAX_ENTRIES {
            log::warn!("stopped walking {} after {SYSFS_MAX_ENTRIES} entries", devices.display());
            break;
        }
        let Ok(entry) = entry else { continue };
        // DirEntry::file_type does not follow symlinks.
        let Ok(kind) = entry.file_type() else { continue };
        if kind.is_dir() {
            if depth < max_depth {
                if let Ok(sub) = std::fs::read_dir(entry.path()) {
                    stack.push((sub, depth.saturating_add(1), entry.path()));
                }
            }
        } else if kind.is_file() && entry.file_name() == "modalias" {
            let Ok(file) = std::fs::File::open(entry.path()) else { continue };
            let mut bytes = Vec::new();
            if file.take(MODALIAS_MAX_BYTES).read_to_end(&mut bytes).is_err() {
                continue;
            }
            let text = String::from_utf8_lossy(&bytes);
            let alias = text.trim_end_matches(['\n', '\0']).trim();
            if !alias.is_empty() {
                found.entry(alias.to_owned()).or_insert(path);
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modules::fixtures::*;

    #[test]
    fn collects_modaliases_without_following_links_and_bounded() {
        let root = fake_sysfs("collect");
        let found = collect_modaliases(&root, SYSFS_MAX_DEPTH).unwrap();
        let keys: Vec<&str> = found.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "cpu:type:x86,ven0002fam001Amod0002:feature:,0000",
                "pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00",
                "pci:v00008086d00001237sv00001AF4sd00001100bc06sc00i00",
                "platform:pcspkr",
                "scsi:t-0x00",
                "virtio:d00000002v00001AF4",
            ]
        );
        assert_eq!(found["virtio:d00000002v00001AF4"], root.join("pci0000:00/0000:00:02.0/virtio1"));
        let shallow = collect_modaliases(&root, 2).unwrap();
        assert!(!shallow.contains_key("scsi:t-0x00") && !shallow.contains_key("virtio:d00000002v00001AF4"));
        assert!(shallow.contains_key("platform:pcspkr"));
        let e = collect_modaliases(&root.join("nonexistent"), 4).unwrap_err().to_string();
        assert!(e.contains("listing") && e.contains("nonexistent"), "{e}");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
