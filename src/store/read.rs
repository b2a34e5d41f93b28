//! Bounded reads shared by the stores: whole files read under a size cap,
//! and directory checks and listings that never follow a symlink or list
//! without bound. All of it is thin file-system access; the stores decide
//! what the bytes mean.

use crate::error::{Error, Result};
use std::io::Read;
use std::path::Path;

/// Cap for store JSON files (repositories.json, images.json, layers.json, configs).
pub(crate) const JSON_CAP: u64 = 64 * 1024 * 1024;
pub(crate) const JSON_CAP_TEXT: &str = "64 MiB";

/// Read a whole file of at most `cap` bytes; `None` if it does not exist.
pub(crate) fn read_capped(path: &Path, cap: u64, cap_text: &str) -> Result<Option<Vec<u8>>> {
    let too_big = || Error::msg(format!("{} is larger than {cap_text}", path.display()));
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::with(format!("opening {}", path.display()), e)),
    };
    let len = file.metadata().map_err(|e| Error::with(format!("checking {}", path.display()), e))?.len();
    if len > cap {
        return Err(too_big());
    }
    let mut buf = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    // Read one byte past the cap in case the file grew since the check.
    file.take(cap.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(|e| Error::with(format!("reading {}", path.display()), e))?;
    if u64::try_from(buf.len()).map_or(true, |l| l > cap) {
        return Err(too_big());
    }
    Ok(Some(buf))
}

/// A real directory (not a symlink to one).
pub(crate) fn is_dir(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir())
}

/// A regular file (not a symlink to one).
pub(super) fn is_file(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file())
}

/// Names of the entries of `dir` (at most 16), sorted.
pub(crate) fn list_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).take(16).collect())
        .unwrap_or_default();
    v.sort();
    v
}
