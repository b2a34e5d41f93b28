//! Verification of what a store holds: image configs hashed against their
//! IDs, diff IDs and chain IDs, `sha256:<hex>` IDs, layer directories, and
//! [`Checks`], which enforces each check or (with `dockroot.verify=off`)
//! records it as a warning.
//!
//! Pure, except [`verified_config`] (reads the config through
//! [`read_capped`]) and [`check_layer_dir`] (one `lstat`).

use super::read::{read_capped, JSON_CAP, JSON_CAP_TEXT};
use crate::error::{Error, Result};
use crate::reference::is_hex64;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::Path;

/// Most layers an image may have (Docker's own limit is 127).
pub(crate) const MAX_LAYERS: usize = 1000;

/// Enforce a check, or with verification off record it as a warning.
#[derive(Debug, Default)]
pub struct Checks {
    pub verify: bool,
    pub warnings: Vec<String>,
}

impl Checks {
    pub fn new(verify: bool) -> Checks {
        Checks { verify, warnings: Vec::new() }
    }

    /// `ok`, or a refusal (verification on) / a warning (off) saying `why`.
    pub fn check(&mut self, ok: bool, why: impl FnOnce() -> String) -> Result<()> {
        if ok {
            return Ok(());
        }
        let why = why();
        if self.verify {
            Err(Error::msg(format!(
                "verification failed: {why}: store corrupted or tampered (dockroot.verify=off boots it anyway)"
            )))
        } else {
            self.warnings.push(format!("dockroot.verify=off: {why}"));
            Ok(())
        }
    }
}

/// Read the image config at `path`, check that it hashes to `image_id`
/// (`sha256:<hex>`) and that it lists layers.
pub(crate) fn verified_config(
    path: &Path,
    image_id: &str,
    reference: &str,
    checks: &mut Checks,
) -> Result<ImageConfig> {
    let config = read_capped(path, JSON_CAP, JSON_CAP_TEXT)?.ok_or_else(|| {
        Error::msg(format!("{reference} is image {image_id}, but its image config {} is missing", path.display()))
    })?;
    let hashed = sha256_hex(&config);
    checks.check(image_id.strip_prefix("sha256:") == Some(hashed.as_str()), || {
        format!(
            "image config for {reference} does not match its ID {image_id} ({} hashes to sha256:{hashed})",
            path.display()
        )
    })?;
    let cfg = parse_image_config(&config).map_err(|e| e.context(path.display().to_string()))?;
    if cfg.diff_ids.is_empty() {
        return Err(Error::msg(format!(
            "image {reference} has no layers ({} lists no rootfs.diff_ids): nothing to boot",
            path.display()
        )));
    }
    Ok(cfg)
}

/// What the boot needs from an image config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageConfig {
    /// Layer diff IDs, base first, each `sha256:<64 hex>`.
    pub diff_ids: Vec<String>,
    /// `os`, if the config names one.
    pub os: Option<String>,
    /// `architecture`, if the config names one.
    pub architecture: Option<String>,
}

/// Parse an image config: `rootfs.type` must be "layers" and every diff ID
/// `sha256:<64 lowercase hex>`.
pub fn parse_image_config(json: &[u8]) -> Result<ImageConfig> {
    let v: Value = serde_json::from_slice(json).map_err(|e| Error::with("image config is not valid JSON", e))?;
    let top = v.as_object().ok_or_else(|| Error::msg("image config must contain a JSON object"))?;
    let rootfs = top
        .get("rootfs")
        .and_then(Value::as_object)
        .ok_or_else(|| Error::msg("image config has no \"rootfs\" object"))?;
    match rootfs.get("type").and_then(Value::as_str) {
        Some("layers") => {}
        other => return Err(Error::msg(format!("image config: rootfs.type is {other:?}, expected \"layers\""))),
    }
    let list = match rootfs.get("diff_ids") {
        Some(Value::Array(a)) => a.as_slice(),
        None | Some(Value::Null) => &[],
        Some(_) => return Err(Error::msg("image config: rootfs.diff_ids must be an array")),
    };
    if list.len() > MAX_LAYERS {
        return Err(Error::msg(format!("image config lists {} layers, more than {MAX_LAYERS}", list.len())));
    }
    let mut diff_ids = Vec::with_capacity(list.len());
    for (i, d) in list.iter().enumerate() {
        let s = d
            .as_str()
            .ok_or_else(|| Error::msg(format!("image config: rootfs.diff_ids[{i}] must be a string, not {d}")))?;
        check_digest_id(s).map_err(|e| e.context(format!("image config: rootfs.diff_ids[{i}]")))?;
        diff_ids.push(s.to_string());
    }
    let opt_str = |key: &str| -> Result<Option<String>> {
        match top.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(Error::msg(format!("image config: {key:?} must be a string, not {other}"))),
        }
    };
    Ok(ImageConfig { diff_ids, os: opt_str("os")?, architecture: opt_str("architecture")? })
}

/// Chain IDs of a layer stack: C0 = D0, Cn = sha256(C(n-1) + " " + Dn).
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => format!("sha256:{}", sha256_hex(format!("{prev} {d}").as_bytes())),
        };
        out.push(next);
    }
    out
}

/// Lowercase hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len().saturating_mul(2));
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

/// `sha256:<64 lowercase hex>` (image IDs, diff IDs, chain IDs, digests).
pub fn check_digest_id(s: &str) -> Result<()> {
    match s.strip_prefix("sha256:") {
        Some(h) if is_hex64(h) => Ok(()),
        _ => Err(Error::msg(format!("{s:?} is not of the form sha256:<64 lowercase hex digits>"))),
    }
}

/// An image ID: `sha256:<64 lowercase hex>`.
pub fn check_image_id(id: &str) -> Result<()> {
    check_digest_id(id).map_err(|e| e.context("invalid image ID"))
}

/// The layer's directory must be a real directory (not a symlink).
pub(crate) fn check_layer_dir(abs: &Path, what: &str, named_by: &str) -> Result<()> {
    match std::fs::symlink_metadata(abs) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(Error::msg(format!("{what}, {}, is not a directory", abs.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(Error::msg(format!("{what}, {}, does not exist ({named_by} names it)", abs.display())))
        }
        Err(e) => Err(Error::with(format!("checking {}", abs.display()), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_enforce_or_warn() {
        let mut c = Checks::new(true);
        assert!(c.check(true, || "x".into()).is_ok());
        let e = c.check(false, || "config hashes to y".into()).unwrap_err().to_string();
        assert!(e.contains("verification failed: config hashes to y") && e.contains("dockroot.verify=off"), "{e}");
        let mut c = Checks::new(false);
        c.check(false, || "config hashes to y".into()).unwrap();
        assert_eq!(c.warnings, vec!["dockroot.verify=off: config hashes to y".to_string()]);
    }

    #[test]
    fn hex_and_sha() {
        assert_eq!(hex(&[0, 0x0f, 0xa5, 0xff]), "000fa5ff");
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
