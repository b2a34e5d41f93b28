//! Podman's image store (containers-storage) with the btrfs driver.
//!
//! Layout under the graph root (as Podman 4 writes it):
//!
//! ```text
//! btrfs-images/images.json        [{"id", "names": ["localhost/x:t", ...], "layer": <top layer id>,
//!                                   "digest", "digests", ...}]
//! btrfs-images/<id>/<big data>    the config under key "sha256:<id>", manifests under
//!                                 "manifest-sha256:<digest>"; a key that is not only
//!                                 [.0-9a-z] is stored as "=" + base64(key)
//! btrfs-layers/layers.json        [{"id", "parent", "diff-digest", ...}]
//! btrfs/subvolumes/<layer id>     the layer's subvolume: the top one is the whole root
//! ```
//!
//! Names are fully qualified: a short name is looked up as the full name on
//! the default domain and as `localhost/<name>` ([`super::qualified_candidates`]).

use super::{
    chain_ids, check_layer_dir, qualified_candidates, read_capped, sha256_hex, short_list, split_name, verified_config,
    Checks, Driver, ImageFacts, ImageStore, Lookup, Root, StoreAt, StoreKind, JSON_CAP, JSON_CAP_TEXT, MAX_LAYERS,
};
use crate::error::{Error, Result};
use crate::reference::{is_hex64, ImageSpec, Reference};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Cap for a stored manifest.
const MANIFEST_CAP: u64 = 4 * 1024 * 1024;
const MANIFEST_CAP_TEXT: &str = "4 MiB";

/// An entry of `images.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodmanImage {
    /// 64 lowercase hex digits (checked when parsed).
    pub id: String,
    pub names: Vec<String>,
    /// The top layer's ID, if the image has layers.
    pub layer: Option<String>,
    /// Manifest digests: `digest` and `digests`.
    pub digests: Vec<String>,
}

/// An entry of `layers.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodmanLayer {
    pub id: String,
    pub parent: Option<String>,
    /// The uncompressed digest (the config's diff ID), if recorded.
    pub diff_digest: Option<String>,
}

fn opt_str(obj: &serde_json::Map<String, Value>, key: &str, what: &str) -> Result<Option<String>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(Error::msg(format!("{what}: {key:?} must be a string, not {other}"))),
    }
}

fn str_list(obj: &serde_json::Map<String, Value>, key: &str, what: &str) -> Result<Vec<String>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| Error::msg(format!("{what}: {key:?} must hold strings, not {v}")))
            })
            .collect(),
        Some(other) => Err(Error::msg(format!("{what}: {key:?} must be an array, not {other}"))),
    }
}

/// A store ID that becomes a path component: 64 lowercase hex digits.
fn check_id(id: &str, what: &str) -> Result<()> {
    if is_hex64(id) {
        Ok(())
    } else {
        Err(Error::msg(format!("{what}: {id:?} is not an ID of 64 lowercase hex digits")))
    }
}

/// Parse `btrfs-images/images.json`.
pub fn parse_images_json(json: &[u8]) -> Result<Vec<PodmanImage>> {
    let v: Value = serde_json::from_slice(json).map_err(|e| Error::with("not valid JSON", e))?;
    let list = match v {
        Value::Array(a) => a,
        Value::Null => Vec::new(),
        _ => return Err(Error::msg("must contain a JSON array of images")),
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        let what = format!("image {i}");
        let obj = item.as_object().ok_or_else(|| Error::msg(format!("{what} is not a JSON object")))?;
        let id = opt_str(obj, "id", &what)?.ok_or_else(|| Error::msg(format!("{what} has no \"id\"")))?;
        check_id(&id, &what)?;
        let what = format!("image {id}");
        let layer = opt_str(obj, "layer", &what)?;
        if let Some(l) = &layer {
            check_id(l, &format!("{what}: \"layer\""))?;
        }
        let mut digests = str_list(obj, "digests", &what)?;
        if let Some(d) = opt_str(obj, "digest", &what)? {
            if !digests.contains(&d) {
                digests.insert(0, d);
            }
        }
        out.push(PodmanImage { id, names: str_list(obj, "names", &what)?, layer, digests });
    }
    Ok(out)
}

/// Parse `btrfs-layers/layers.json`.
pub fn parse_layers_json(json: &[u8]) -> Result<BTreeMap<String, PodmanLayer>> {
    let v: Value = serde_json::from_slice(json).map_err(|e| Error::with("not valid JSON", e))?;
    let list = match v {
        Value::Array(a) => a,
        Value::Null => Vec::new(),
        _ => return Err(Error::msg("must contain a JSON array of layers")),
    };
    let mut out = BTreeMap::new();
    for (i, item) in list.iter().enumerate() {
        let what = format!("layer {i}");
        let obj = item.as_object().ok_or_else(|| Error::msg(format!("{what} is not a JSON object")))?;
        let id = opt_str(obj, "id", &what)?.ok_or_else(|| Error::msg(format!("{what} has no \"id\"")))?;
        check_id(&id, &what)?;
        let what = format!("layer {id}");
        let parent = opt_str(obj, "parent", &what)?;
        let diff_digest = opt_str(obj, "diff-digest", &what)?;
        out.insert(id.clone(), PodmanLayer { id, parent, diff_digest });
    }
    Ok(out)
}

/// The file name containers-storage gives a big-data item: the key itself
/// if it is only `.`, digits and lowercase letters, else `=` + base64(key).
/// A key of dots only (`.`, `..`), which containers-storage would turn into a
/// path out of the image's directory, is encoded too (the boot never asks for
/// one: its keys are `sha256:<id>` and `manifest-<digest>`).
pub fn big_data_file_name(key: &str) -> String {
    if key.bytes().all(|b| b == b'.' || b.is_ascii_digit() || b.is_ascii_lowercase()) && key.bytes().any(|b| b != b'.')
    {
        return key.to_string();
    }
    let mut s = String::from("=");
    s.push_str(&base64(key.as_bytes()));
    s
}

/// Standard base64 with padding.
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let sym = |v: u32| char::from(ALPHABET[(v & 63) as usize]);
    let mut out = String::with_capacity(data.len().div_ceil(3).saturating_mul(4));
    for chunk in data.chunks(3) {
        let b = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let n = (b(0) << 16) | (b(1) << 8) | b(2);
        out.push(sym(n >> 18));
        out.push(sym(n >> 12));
        out.push(if chunk.len() > 1 { sym(n >> 6) } else { '=' });
        out.push(if chunk.len() > 2 { sym(n) } else { '=' });
    }
    out
}

/// Which image `spec` names: `Ok(Err(why))` if none; an error if a name
/// matches more than one image.
pub fn find_image<'a>(
    images: &'a [PodmanImage],
    spec: &ImageSpec,
) -> Result<std::result::Result<(&'a PodmanImage, String), String>> {
    match spec {
        ImageSpec::Named(r) => find_named(images, r),
        ImageSpec::Id(id) => {
            let hex = id.strip_prefix("sha256:").unwrap_or(id);
            Ok(match images.iter().find(|i| i.id == hex) {
                Some(i) => Ok((i, id.clone())),
                None => Err(format!("no image with ID {id}; {}", listing(images))),
            })
        }
        ImageSpec::NameOrShortId { name, prefix } => {
            if let Ok(found) = find_named(images, name)? {
                return Ok(Ok(found));
            }
            let hits: Vec<&PodmanImage> = images.iter().filter(|i| i.id.starts_with(prefix.as_str())).collect();
            match hits.as_slice() {
                [one] => Ok(Ok((one, format!("sha256:{}", one.id)))),
                [] => Ok(Err(format!("no image {name} and no image ID starting with {prefix}; {}", listing(images)))),
                many => Err(Error::msg(format!(
                    "image ID prefix {prefix} is ambiguous: it matches {}",
                    many.iter().map(|i| i.id.as_str()).collect::<Vec<_>>().join(", ")
                ))),
            }
        }
    }
}

fn find_named<'a>(
    images: &'a [PodmanImage],
    r: &Reference,
) -> Result<std::result::Result<(&'a PodmanImage, String), String>> {
    let repos = qualified_candidates(r);
    let mut hits: Vec<(&PodmanImage, String)> = Vec::new();
    for img in images {
        for name in &img.names {
            let (repo, tag, digest) = split_name(name);
            if !repos.iter().any(|c| c == repo) {
                continue;
            }
            let matched = match (&r.digest, &r.tag) {
                // A digest reference names the manifest, whatever the tag.
                (Some(d), _) => digest == Some(d.as_str()) || img.digests.iter().any(|x| x == d),
                (None, Some(t)) => tag == Some(t.as_str()) && digest.is_none(),
                (None, None) => false,
            };
            if matched && !hits.iter().any(|(i, _)| i.id == img.id) {
                let shown = match &r.digest {
                    Some(d) => format!("{repo}@{d}"),
                    None => name.clone(),
                };
                hits.push((img, shown));
            }
        }
    }
    match hits.len() {
        0 => Ok(Err(format!("no image {r} (looked for {}); {}", looked_for(r, &repos), listing(images)))),
        1 => hits.pop().map(Ok).ok_or_else(|| Error::msg("internal: lost the match")),
        _ => Err(Error::msg(format!(
            "{r} is ambiguous here: {}; name the image fully or by ID",
            hits.iter().map(|(i, n)| format!("{n} is image sha256:{}", i.id)).collect::<Vec<_>>().join(", ")
        ))),
    }
}

fn looked_for(r: &Reference, repos: &[String]) -> String {
    let suffix = match (&r.digest, &r.tag) {
        (Some(d), _) => format!("@{d}"),
        (None, Some(t)) => format!(":{t}"),
        (None, None) => String::new(),
    };
    repos.iter().map(|c| format!("{c}{suffix}")).collect::<Vec<_>>().join(" and ")
}

fn listing(images: &[PodmanImage]) -> String {
    let mut names: Vec<String> = images.iter().flat_map(|i| i.names.iter().cloned()).collect();
    names.sort();
    if names.is_empty() {
        return "the store holds no named images".into();
    }
    format!("the store holds: {}", short_list(&names))
}

/// Podman's btrfs store as an [`ImageStore`].
pub(crate) struct PodmanStore {
    at: StoreAt,
}

impl PodmanStore {
    pub(crate) fn new(top: &Path, path: PathBuf, verify: bool) -> PodmanStore {
        PodmanStore { at: StoreAt::new(top, StoreKind::Podman, Driver::Btrfs, path, verify) }
    }

    fn read_json(&self, rel: &str) -> Result<Option<Vec<u8>>> {
        read_capped(&self.at.abs.join(rel), JSON_CAP, JSON_CAP_TEXT)
    }
}

impl ImageStore for PodmanStore {
    fn at(&self) -> &StoreAt {
        &self.at
    }

    fn lookup(&self, spec: &ImageSpec, checks: &mut Checks) -> Result<Lookup> {
        let images_path = self.at.abs.join("btrfs-images/images.json");
        let images = match self.read_json("btrfs-images/images.json")? {
            Some(b) => parse_images_json(&b).map_err(|e| e.context(images_path.display().to_string()))?,
            None => Vec::new(),
        };
        let (img, reference) =
            match find_image(&images, spec).map_err(|e| e.context(images_path.display().to_string()))? {
                Ok(found) => found,
                Err(why) => return Ok(Lookup::NotFound(why)),
            };
        let image_id = format!("sha256:{}", img.id);
        let image_dir = self.at.abs.join("btrfs-images").join(&img.id);

        // The config, under its own digest as the key.
        let cfg = verified_config(&image_dir.join(big_data_file_name(&image_id)), &image_id, &reference, checks)?;
        let top = img.layer.clone().ok_or_else(|| {
            Error::msg(format!("image {reference} ({image_id}) has no top layer in {}", images_path.display()))
        })?;

        // A digest reference: the stored manifest must hash to it and name this config.
        let mut manifest_digest = img.digests.first().cloned();
        if let ImageSpec::Named(Reference { digest: Some(d), .. }) = spec {
            manifest_digest = Some(d.clone());
            let path = image_dir.join(big_data_file_name(&format!("manifest-{d}")));
            match read_capped(&path, MANIFEST_CAP, MANIFEST_CAP_TEXT)? {
                None => checks.check(false, || {
                    format!(
                        "{reference} names manifest {d}, but the store has no copy of it ({} is missing)",
                        path.display()
                    )
                })?,
                Some(m) => {
                    let h = format!("sha256:{}", sha256_hex(&m));
                    checks.check(h == *d, || format!("{} hashes to {h}, not {d}", path.display()))?;
                    let config_digest = super::containerd::manifest_config(&m).ok();
                    checks.check(config_digest.as_deref() == Some(image_id.as_str()), || {
                        format!(
                            "manifest {} names config {}, not the image's {image_id}",
                            path.display(),
                            config_digest.as_deref().unwrap_or("(none)")
                        )
                    })?;
                }
            }
        }

        // The layer chain, top down, against the config's diff IDs.
        let layers_path = self.at.abs.join("btrfs-layers/layers.json");
        let layers = match self.read_json("btrfs-layers/layers.json")? {
            Some(b) => parse_layers_json(&b).map_err(|e| e.context(layers_path.display().to_string()))?,
            None => BTreeMap::new(),
        };
        let mut chain: Vec<&PodmanLayer> = Vec::new();
        let mut seen = BTreeSet::new();
        let mut next = Some(top.clone());
        while let Some(id) = next {
            if chain.len() > MAX_LAYERS || !seen.insert(id.clone()) {
                return Err(Error::msg(format!(
                    "{}: the parents of layer {top} (image {reference}) loop or run past {MAX_LAYERS} layers",
                    layers_path.display()
                )));
            }
            let layer = layers.get(&id).ok_or_else(|| {
                Error::msg(format!(
                    "layer {id} of image {reference} is missing from {} (store corrupted)",
                    layers_path.display()
                ))
            })?;
            chain.push(layer);
            next = layer.parent.clone();
        }
        chain.reverse();
        let diffs: Vec<String> =
            chain.iter().map(|l| l.diff_digest.clone().unwrap_or_else(|| "(none recorded)".into())).collect();
        checks.check(diffs == cfg.diff_ids, || {
            format!(
                "the layers of {reference} in {} have diff digests [{}] but its image config says [{}]",
                layers_path.display(),
                diffs.join(", "),
                cfg.diff_ids.join(", ")
            )
        })?;

        let sub_rel = PathBuf::from("btrfs/subvolumes").join(&top);
        check_layer_dir(
            &self.at.abs.join(&sub_rel),
            &format!("the top layer subvolume of {reference}"),
            &images_path.display().to_string(),
        )?;
        let root = Root::Subvolume(self.at.path.join(sub_rel));
        let facts = ImageFacts {
            reference,
            image_id,
            manifest_digest,
            chain_ids: chain_ids(&cfg.diff_ids),
            diff_ids: cfg.diff_ids,
        };
        Ok(self.at.found(facts, top, root, std::mem::take(checks)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::{parse, DEFAULT_DOMAIN};

    const A: &str = "f6298150a7d1f21d69ca8d00cf1fd5e7bec12df6d2f16f98dc90a9e16652f10b";
    const B: &str = "ea1759c503cd0ca064dc317871b516d3c916c7db7f154c7eebefa3598522a978";
    const C: &str = "ea1759c503cd0ca064dc317871b516d3c916c7db7f154c7eebefa3598522a979";

    fn images() -> Vec<PodmanImage> {
        let json = format!(
            r#"[{{"id":"{A}","names":["localhost/base:1"],"layer":"{A}","digest":"sha256:{B}"}},
               {{"id":"{B}","names":["{DEFAULT_DOMAIN}/library/ubuntu:latest","localhost:5000/team/os:v1"],"layer":"{A}",
                 "digests":["sha256:{C}"]}},
               {{"id":"{C}","names":["localhost/ubuntu:latest"]}}]"#
        );
        parse_images_json(json.as_bytes()).unwrap()
    }

    fn find(s: &str) -> Result<std::result::Result<String, String>> {
        let imgs = images();
        Ok(find_image(&imgs, &parse(s).unwrap())?.map(|(i, shown)| format!("{} {shown}", i.id)))
    }

    #[test]
    fn short_and_full_names_find_qualified_entries() {
        assert_eq!(find("base:1").unwrap().unwrap(), format!("{A} localhost/base:1"));
        assert_eq!(find("localhost/base:1").unwrap().unwrap(), format!("{A} localhost/base:1"));
        assert_eq!(find("localhost:5000/team/os:v1").unwrap().unwrap(), format!("{B} localhost:5000/team/os:v1"));
        let why = find("base:2").unwrap().unwrap_err();
        assert!(
            why.contains("localhost/base:2") && why.contains("the store holds: ") && why.contains("localhost/base:1"),
            "{why}"
        );
        // A digest reference matches the image's manifest digests.
        assert_eq!(find(&format!("base@sha256:{B}")).unwrap().unwrap(), format!("{A} localhost/base@sha256:{B}"));
        assert!(find(&format!("base@sha256:{C}")).unwrap().is_err());
        // IDs and prefixes.
        assert_eq!(find(&format!("sha256:{A}")).unwrap().unwrap(), format!("{A} sha256:{A}"));
        assert_eq!(find(&A[..12]).unwrap().unwrap(), format!("{A} sha256:{A}"));
        let e = find(&B[..14]).unwrap_err().to_string();
        assert!(e.contains("ambiguous") && e.contains(B) && e.contains(C), "{e}");
    }

    #[test]
    fn a_short_name_in_two_places_is_ambiguous() {
        // "ubuntu" is both <default>/library/ubuntu and localhost/ubuntu.
        let e = find("ubuntu").unwrap_err().to_string();
        assert!(
            e.contains("ambiguous") && e.contains(B) && e.contains(C) && e.contains("localhost/ubuntu:latest"),
            "{e}"
        );
    }

    #[test]
    fn bad_entries_are_errors() {
        for (json, want) in [
            ("{}", "JSON array"),
            ("[1]", "not a JSON object"),
            ("[{\"names\":[]}]", "no \"id\""),
            ("[{\"id\":\"../../etc\"}]", "64 lowercase hex"),
            (&format!("[{{\"id\":\"{A}\",\"layer\":\"../x\"}}]"), "\"layer\""),
            (&format!("[{{\"id\":\"{A}\",\"names\":\"x\"}}]"), "must be an array"),
            ("[", "not valid JSON"),
        ] {
            let e = parse_images_json(json.as_bytes()).unwrap_err().to_string();
            assert!(e.contains(want), "{json}: {e}");
        }
        let e = parse_layers_json(b"[{\"id\":\"x\"}]").unwrap_err().to_string();
        assert!(e.contains("64 lowercase hex"), "{e}");
        assert_eq!(parse_images_json(b"null").unwrap(), vec![]);
    }

    #[test]
    fn big_data_names_like_containers_storage() {
        assert_eq!(big_data_file_name("manifest"), "manifest");
        // Never a name that leaves the image's directory.
        assert_eq!(big_data_file_name(".."), "=Li4=");
        assert_eq!(big_data_file_name("."), "=Lg==");
        assert_eq!(big_data_file_name(""), "=");
        // Seen in a store Podman 4.3 wrote.
        assert_eq!(
            big_data_file_name(&format!("sha256:{A}")),
            "=c2hhMjU2OmY2Mjk4MTUwYTdkMWYyMWQ2OWNhOGQwMGNmMWZkNWU3YmVjMTJkZjZkMmYxNmY5OGRjOTBhOWUxNjY1MmYxMGI="
        );
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(&[0xff, 0xfe]), "//4=");
    }
}
