//! containerd's image store with the btrfs or the overlayfs snapshotter
//! (plain containerd, or Docker with the containerd image store; namespace
//! `moby` for Docker).
//!
//! ```text
//! io.containerd.metadata.v1.bolt/meta.db (bbolt)
//!   v1/<ns>/images/<name>/target/{digest, mediatype}     name -> index or manifest
//!   v1/<ns>/snapshots/btrfs/<chain ID>/{name, parent}    name: the snapshotter's key
//! io.containerd.content.v1.content/blobs/sha256/<hex>    index, manifest, config (content addressed)
//! io.containerd.snapshotter.v1.<snapshotter>/metadata.db (bbolt)
//!   v1/snapshots/<key>/{id (uvarint), kind (3 = committed), parent (key)}
//! io.containerd.snapshotter.v1.btrfs/snapshots/<id>       the committed snapshot (a read-only subvolume)
//! io.containerd.snapshotter.v1.overlayfs/snapshots/<id>/fs  one layer's files
//! ```
//!
//! The walk: name -> target -> (index: the manifest for the platform) ->
//! manifest -> config -> diff IDs -> chain IDs -> snapshots of the chain
//! (each naming the one below as parent) -> their ids. btrfs boots
//! `snapshots/<id>` of the top one; overlayfs every layer's
//! `snapshots/<id>/fs`, top first. Every blob is hashed against its digest.

use super::bbolt::{uvarint, Bucket, Db, MAX_ENTRIES};
use super::{
    chain_ids, check_digest_id, check_layer_dir, parse_image_config, qualified_candidates, read_capped, sha256_hex,
    short_list, split_name, Checks, Driver, ImageFacts, ImageStore, Lookup, Platform, Root, StoreAt, StoreKind,
    JSON_CAP, JSON_CAP_TEXT,
};
use crate::error::{Error, Result};
use crate::reference::{is_hex64, ImageSpec, Reference};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// containerd's metadata database, relative to its root.
pub(crate) const META_DB: &str = "io.containerd.metadata.v1.bolt/meta.db";
const BLOBS: &str = "io.containerd.content.v1.content/blobs/sha256";
/// Cap for an index or a manifest.
const MANIFEST_CAP: u64 = 4 * 1024 * 1024;
const MANIFEST_CAP_TEXT: &str = "4 MiB";
/// Deepest nesting of indexes followed.
const MAX_INDEX_DEPTH: usize = 4;
/// The snapshotter's kind of a committed snapshot.
const KIND_COMMITTED: u8 = 3;

/// A content descriptor from an index or manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: Option<String>,
    pub digest: String,
    pub platform: Option<Platform>,
}

fn is_index_type(t: &str) -> bool {
    matches!(t, "application/vnd.oci.image.index.v1+json" | "application/vnd.docker.distribution.manifest.list.v2+json")
}

fn parse_json(bytes: &[u8]) -> Result<serde_json::Map<String, Value>> {
    match serde_json::from_slice(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(Error::msg("must contain a JSON object")),
        Err(e) => Err(Error::with("not valid JSON", e)),
    }
}

fn descriptor(v: &Value, what: &str) -> Result<Descriptor> {
    let o = v.as_object().ok_or_else(|| Error::msg(format!("{what} is not an object")))?;
    let digest = o
        .get("digest")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::msg(format!("{what} has no \"digest\" string")))?;
    check_digest_id(digest).map_err(|e| e.context(format!("{what}: digest")))?;
    let media_type = o.get("mediaType").and_then(Value::as_str).map(str::to_string);
    let platform = o.get("platform").and_then(Value::as_object).map(|p| {
        let s = |k: &str| p.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        Platform {
            os: s("os"),
            architecture: s("architecture"),
            variant: p.get("variant").and_then(Value::as_str).map(str::to_string),
        }
    });
    Ok(Descriptor { media_type, digest: digest.to_string(), platform })
}

/// The `manifests` of an index (OCI index or Docker manifest list), or
/// `None` if the JSON is a manifest.
pub fn parse_descriptor_list(bytes: &[u8]) -> Result<Option<Vec<Descriptor>>> {
    let m = parse_json(bytes)?;
    let is_index = m.get("mediaType").and_then(Value::as_str).is_some_and(is_index_type)
        || (m.contains_key("manifests") && !m.contains_key("config"));
    if !is_index {
        return Ok(None);
    }
    let list =
        m.get("manifests").and_then(Value::as_array).ok_or_else(|| Error::msg("index has no \"manifests\" array"))?;
    list.iter()
        .enumerate()
        .map(|(i, v)| descriptor(v, &format!("manifests[{i}]")))
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// The config digest a manifest names.
pub fn manifest_config(bytes: &[u8]) -> Result<String> {
    let m = parse_json(bytes)?;
    let cfg = m.get("config").ok_or_else(|| Error::msg("manifest has no \"config\""))?;
    Ok(descriptor(cfg, "manifest config")?.digest)
}

/// The manifest for `want` among an index's entries: same OS and
/// architecture, and the variant if `want` names one (the first such); else
/// the first entry without a platform (a nested index, say), which
/// containerd also takes to match any platform.
pub fn pick_platform<'a>(list: &'a [Descriptor], want: &Platform) -> Result<&'a Descriptor> {
    let exact = list.iter().find(|d| {
        d.platform.as_ref().is_some_and(|p| {
            p.os == want.os
                && p.architecture == want.architecture
                && want.variant.as_ref().is_none_or(|v| p.variant.as_ref() == Some(v))
        })
    });
    exact.or_else(|| list.iter().find(|d| d.platform.is_none())).ok_or_else(|| {
        let have: Vec<String> = list.iter().filter_map(|d| d.platform.as_ref().map(|p| p.to_string())).collect();
        Error::msg(format!(
            "the index has no manifest for {want} (it has: {})",
            if have.is_empty() { "none".to_string() } else { have.join(", ") }
        ))
    })
}

/// A snapshot's recorded parent must be the one `by` implies.
fn check_parent(
    checks: &mut Checks,
    db: &Path,
    snapshot: &str,
    parent: Option<&str>,
    expected: Option<&str>,
    by: &str,
) -> Result<()> {
    checks.check(parent == expected, || {
        format!(
            "{}: snapshot {snapshot} has parent {} but {by} implies {}",
            db.display(),
            parent.unwrap_or("(none)"),
            expected.unwrap_or("(none)")
        )
    })
}

/// A snapshotter's directory under the containerd root:
/// `io.containerd.snapshotter.v1.<name>`.
pub(crate) fn snapshotter_dir(snapshotter: Driver) -> String {
    format!("io.containerd.snapshotter.v1.{}", snapshotter.name())
}

/// containerd's store with one snapshotter (btrfs or overlayfs) as an [`ImageStore`].
pub(crate) struct ContainerdStore {
    at: StoreAt,
    namespace: String,
    platform: Platform,
}

/// An image entry of meta.db.
struct Target {
    name: String,
    digest: String,
}

fn text(b: Vec<u8>) -> String {
    String::from_utf8_lossy(&b).into_owned()
}

impl ContainerdStore {
    pub(crate) fn new(
        top: &Path,
        path: PathBuf,
        snapshotter: Driver,
        namespace: &str,
        platform: Platform,
        verify: bool,
    ) -> ContainerdStore {
        ContainerdStore {
            at: StoreAt::new(top, StoreKind::Containerd, snapshotter, path, verify),
            namespace: namespace.to_string(),
            platform,
        }
    }

    fn target(&self, db: &Db, images: &Bucket<'_>, name: &[u8]) -> Result<Option<Target>> {
        let Some(img) = images.bucket(name)? else { return Ok(None) };
        let shown = String::from_utf8_lossy(name).into_owned();
        let t = img.bucket(b"target")?.ok_or_else(|| {
            Error::msg(format!("{}: image {shown:?} has no target: database corrupted", db.path().display()))
        })?;
        let digest = t.get(b"digest")?.map(text).ok_or_else(|| {
            Error::msg(format!("{}: image {shown:?} has no target digest: database corrupted", db.path().display()))
        })?;
        check_digest_id(&digest).map_err(|e| e.context(format!("{}: image {shown:?}", db.path().display())))?;
        Ok(Some(Target { name: shown, digest }))
    }

    /// Find the image entry `spec` names; `Ok(Err(why))` if none.
    fn find(&self, db: &Db, images: &Bucket<'_>, spec: &ImageSpec) -> Result<std::result::Result<Target, String>> {
        let names: Vec<Vec<u8>> = images.buckets(MAX_ENTRIES)?.into_iter().map(|(k, _)| k).collect();
        let listing = || {
            let shown: Vec<String> = names.iter().map(|n| String::from_utf8_lossy(n).into_owned()).collect();
            if shown.is_empty() {
                format!("namespace {} holds no images", self.namespace)
            } else {
                format!("namespace {} holds: {}", self.namespace, short_list(&shown))
            }
        };
        let by_name = |r: &Reference| -> Result<std::result::Result<Target, String>> {
            let repos = qualified_candidates(r);
            let mut hits: Vec<Target> = Vec::new();
            for n in &names {
                let s = String::from_utf8_lossy(n);
                let (repo, tag, digest) = split_name(&s);
                if !repos.iter().any(|c| c == repo) {
                    continue;
                }
                let Some(t) = self.target(db, images, n)? else { continue };
                let ok = match (&r.digest, &r.tag) {
                    (Some(d), _) => digest == Some(d.as_str()) || t.digest == *d,
                    (None, Some(want)) => tag == Some(want.as_str()) && digest.is_none(),
                    (None, None) => false,
                };
                if ok && !hits.iter().any(|h| h.digest == t.digest) {
                    hits.push(t);
                }
            }
            match hits.len() {
                0 => Ok(Err(format!("no image {r} (looked for {}); {}", repos.join(" and "), listing()))),
                1 => hits.pop().map(Ok).ok_or_else(|| Error::msg("internal: lost the match")),
                _ => Err(Error::msg(format!(
                    "{r} is ambiguous here: {}; name the image fully or by digest",
                    hits.iter().map(|t| format!("{} is {}", t.name, t.digest)).collect::<Vec<_>>().join(", ")
                ))),
            }
        };
        let by_prefix = |prefix: &str| -> Result<Vec<Target>> {
            let mut hits: Vec<Target> = Vec::new();
            for n in &names {
                if let Some(t) = self.target(db, images, n)? {
                    if t.digest.strip_prefix("sha256:").is_some_and(|h| h.starts_with(prefix))
                        && !hits.iter().any(|h| h.digest == t.digest)
                    {
                        hits.push(t);
                    }
                }
            }
            Ok(hits)
        };
        match spec {
            ImageSpec::Named(r) => by_name(r),
            ImageSpec::Id(id) => {
                let mut hits = by_prefix(id.strip_prefix("sha256:").unwrap_or(id))?;
                Ok(hits.pop().ok_or_else(|| format!("no image whose digest is {id}; {}", listing())))
            }
            ImageSpec::NameOrShortId { name, prefix } => {
                if let Ok(t) = by_name(name)? {
                    return Ok(Ok(t));
                }
                let mut hits = by_prefix(prefix)?;
                match hits.len() {
                    0 => Ok(Err(format!("no image {name} and no image digest starting with {prefix}; {}", listing()))),
                    1 => hits.pop().map(Ok).ok_or_else(|| Error::msg("internal: lost the match")),
                    _ => Err(Error::msg(format!(
                        "image digest prefix {prefix} is ambiguous: it matches {}",
                        hits.iter().map(|t| t.digest.as_str()).collect::<Vec<_>>().join(", ")
                    ))),
                }
            }
        }
    }

    /// A blob by digest, hashed against it.
    fn blob(&self, digest: &str, cap: u64, cap_text: &str, what: &str, checks: &mut Checks) -> Result<Vec<u8>> {
        let hex = digest
            .strip_prefix("sha256:")
            .filter(|h| is_hex64(h))
            .ok_or_else(|| Error::msg(format!("{what}: digest {digest:?} is not sha256:<64 hex>")))?;
        let path = self.at.abs.join(BLOBS).join(hex);
        let bytes = read_capped(&path, cap, cap_text)?.ok_or_else(|| {
            Error::msg(format!("{what} {digest} is not in the content store ({} is missing)", path.display()))
        })?;
        let h = sha256_hex(&bytes);
        checks.check(h == hex, || format!("{what}: {} hashes to sha256:{h}, not {digest}", path.display()))?;
        Ok(bytes)
    }

    /// Why an image in the store cannot be booted from this snapshotter:
    /// its layers are not unpacked with it (but maybe with another).
    fn not_unpacked(&self, db: &Db, reference: &str, top_chain: &str) -> Result<String> {
        let mut others = Vec::new();
        if let Some(all) = db.bucket_path(&[b"v1", self.namespace.as_bytes(), b"snapshots"])? {
            for (name, b) in all.buckets(64)? {
                if b.bucket(top_chain.as_bytes())?.is_some() {
                    others.push(text(name));
                }
            }
        }
        let this = self.at.driver.name();
        Ok(if others.is_empty() {
            format!("image {reference} is in the store but not unpacked (no snapshot {top_chain})")
        } else {
            format!("image {reference} is unpacked with the {} snapshotter, not {this}", others.join(", "))
        })
    }
}

impl ImageStore for ContainerdStore {
    fn at(&self) -> &StoreAt {
        &self.at
    }

    fn lookup(&self, spec: &ImageSpec, checks: &mut Checks) -> Result<Lookup> {
        let meta_path = self.at.abs.join(META_DB);
        let db = Db::open(&meta_path)?;
        // Named in messages as on the partition, not under where it is mounted.
        let shown = Path::new("/").join(&self.at.path);
        let meta_shown = shown.join(META_DB);
        let ns = self.namespace.as_bytes();
        let Some(images) = db.bucket_path(&[b"v1", ns, b"images"])? else {
            let have: Vec<String> = match db.bucket_path(&[b"v1"])? {
                Some(v1) => v1.buckets(1000)?.into_iter().map(|(k, _)| text(k)).collect(),
                None => Vec::new(),
            };
            return Ok(Lookup::NotFound(format!(
                "{} has no images in namespace {} (namespaces: {})",
                meta_shown.display(),
                self.namespace,
                if have.is_empty() { "none".to_string() } else { have.join(", ") }
            )));
        };
        let target = match self.find(&db, &images, spec).map_err(|e| e.context(meta_shown.display().to_string()))? {
            Ok(t) => t,
            Err(why) => return Ok(Lookup::NotFound(why)),
        };
        let reference = target.name.clone();

        // Index -> manifest for the platform -> config.
        let mut digest = target.digest.clone();
        let mut manifest = None;
        for _ in 0..MAX_INDEX_DEPTH {
            let what = format!("manifest of {reference}");
            let bytes = self.blob(&digest, MANIFEST_CAP, MANIFEST_CAP_TEXT, &what, checks)?;
            let list = parse_descriptor_list(&bytes).map_err(|e| e.context(format!("{what} {digest}")))?;
            match list {
                Some(list) => {
                    let d = pick_platform(&list, &self.platform)
                        .map_err(|e| e.context(format!("image {reference} (index {digest})")))?;
                    digest = d.digest.clone();
                }
                _ => {
                    manifest = Some(bytes);
                    break;
                }
            }
        }
        let manifest = manifest
            .ok_or_else(|| Error::msg(format!("image {reference}: indexes nested deeper than {MAX_INDEX_DEPTH}")))?;
        let config_digest =
            manifest_config(&manifest).map_err(|e| e.context(format!("manifest {digest} of {reference}")))?;
        let config =
            self.blob(&config_digest, JSON_CAP, JSON_CAP_TEXT, &format!("image config of {reference}"), checks)?;
        let cfg = parse_image_config(&config)
            .map_err(|e| e.context(format!("image config {config_digest} of {reference}")))?;
        if cfg.diff_ids.is_empty() {
            return Err(Error::msg(format!("image {reference} has no layers: nothing to boot")));
        }
        let chains = chain_ids(&cfg.diff_ids);

        // The snapshots of the chain, top down: each must name the one below
        // as its parent, as the chain IDs say.
        let n = chains.len();
        let top_chain = chains.last().cloned().unwrap_or_default();
        let snapshotter = self.at.driver.name();
        let Some(snaps) = db.bucket_path(&[b"v1", ns, b"snapshots", snapshotter.as_bytes()])? else {
            return Ok(Lookup::NotFound(self.not_unpacked(&db, &reference, &top_chain)?));
        };
        if snaps.bucket(top_chain.as_bytes())?.is_none() {
            return Ok(Lookup::NotFound(self.not_unpacked(&db, &reference, &top_chain)?));
        }
        // The snapshotter's key of each layer, base first.
        let mut keys: Vec<Option<String>> = vec![None; n];
        for (i, chain) in chains.iter().enumerate().rev() {
            let Some(snap) = snaps.bucket(chain.as_bytes())? else {
                checks.check(false, || {
                    format!(
                        "layer {} of {n} of {reference} ({chain}) has no snapshot in {}",
                        i.saturating_add(1),
                        meta_shown.display()
                    )
                })?;
                continue;
            };
            let parent = snap.get(b"parent")?.map(text);
            let expected = i.checked_sub(1).and_then(|p| chains.get(p)).cloned();
            let by = format!("the image config of {reference}");
            check_parent(checks, &meta_shown, chain, parent.as_deref(), expected.as_deref(), &by)?;
            let key = snap.get(b"name")?.map(text).ok_or_else(|| {
                Error::msg(format!("{}: snapshot {chain} has no name: database corrupted", meta_shown.display()))
            })?;
            if let Some(slot) = keys.get_mut(i) {
                *slot = Some(key);
            }
        }

        // The snapshotter's ids of those keys.
        let dir = snapshotter_dir(self.at.driver);
        let sdb_path = self.at.abs.join(&dir).join("metadata.db");
        let sdb_shown = shown.join(&dir).join("metadata.db");
        let sdb = Db::open(&sdb_path)?;
        let snapshot = |key: &str| -> Result<(u64, Option<String>)> {
            let entry = sdb.bucket_path(&[b"v1", b"snapshots", key.as_bytes()])?.ok_or_else(|| {
                Error::msg(format!(
                    "{} has no snapshot {key:?} ({} names it for {reference})",
                    sdb_shown.display(),
                    meta_shown.display()
                ))
            })?;
            let id = entry.get(b"id")?.as_deref().and_then(uvarint).ok_or_else(|| {
                Error::msg(format!("{}: snapshot {key:?} has no valid id: database corrupted", sdb_shown.display()))
            })?;
            let kind = entry.get(b"kind")?.and_then(|k| k.first().copied());
            if kind != Some(KIND_COMMITTED) {
                return Err(Error::msg(format!(
                    "{}: snapshot {key:?} of {reference} is not committed (kind {kind:?}): an unpacking was interrupted?",
                    sdb_shown.display()
                )));
            }
            Ok((id, entry.get(b"parent")?.map(text)))
        };
        let named_by = sdb_shown.display().to_string();
        let (layer, root) = match self.at.driver {
            Driver::Btrfs => {
                let key = keys.last().cloned().flatten().unwrap_or_default();
                let (id, _) = snapshot(&key)?;
                let sub_rel = PathBuf::from(&dir).join("snapshots").join(id.to_string());
                check_layer_dir(&self.at.abs.join(&sub_rel), &format!("the snapshot of {reference}"), &named_by)?;
                (id.to_string(), Root::Subvolume(self.at.path.join(sub_rel)))
            }
            _ => {
                // Every layer is a lowerdir, so every layer needs its snapshot.
                let mut lowerdirs = Vec::with_capacity(n);
                let mut ids = Vec::with_capacity(n);
                for (i, key) in keys.iter().enumerate().rev() {
                    let what = format!("layer {} of {n} of {reference}", i.saturating_add(1));
                    let key = key
                        .as_deref()
                        .ok_or_else(|| Error::msg(format!("{what} has no snapshot: the overlay needs every layer")))?;
                    let (id, parent) = snapshot(key)?;
                    let below = i.checked_sub(1).and_then(|p| keys.get(p)).cloned().flatten();
                    let shown = format!("{key:?} ({what})");
                    check_parent(checks, &sdb_path, &shown, parent.as_deref(), below.as_deref(), "meta.db's chain")?;
                    let fs = PathBuf::from("snapshots").join(id.to_string()).join("fs");
                    check_layer_dir(&self.at.abs.join(&dir).join(&fs), &format!("the snapshot of {what}"), &named_by)?;
                    lowerdirs.push(fs);
                    ids.push(id);
                }
                let top = ids.first().map(u64::to_string).unwrap_or_default();
                (top, Root::Overlay { base: self.at.path.join(&dir), lowerdirs })
            }
        };
        let facts = ImageFacts {
            reference,
            image_id: config_digest,
            manifest_digest: Some(target.digest),
            diff_ids: cfg.diff_ids,
            chain_ids: chains,
        };
        Ok(self.at.found(facts, layer, root, std::mem::take(checks)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:86f73b47d20a1fa9e266e5696d2d033316a9dd933112153b8d1c10628cf82f92";
    const D2: &str = "sha256:0584ea2096caaa893c3d13d6410990a6c8c2429161682d8a567b4348ee692d90";

    fn amd64() -> Platform {
        Platform { os: "linux".into(), architecture: "amd64".into(), variant: None }
    }

    #[test]
    fn index_platform_pick() {
        let idx = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[
              {{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{D2}","size":1,
                "platform":{{"architecture":"arm64","os":"linux","variant":"v8"}}}},
              {{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{D1}","size":1,
                "platform":{{"architecture":"amd64","os":"linux"}}}},
              {{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{D2}","size":1,
                "platform":{{"architecture":"unknown","os":"unknown"}}}}]}}"#
        );
        let list = parse_descriptor_list(idx.as_bytes()).unwrap().unwrap();
        assert_eq!(list.len(), 3);
        assert_eq!(pick_platform(&list, &amd64()).unwrap().digest, D1);
        let arm = Platform { os: "linux".into(), architecture: "arm64".into(), variant: Some("v8".into()) };
        assert_eq!(pick_platform(&list, &arm).unwrap().digest, D2);
        let e = pick_platform(&list, &Platform { os: "linux".into(), architecture: "s390x".into(), variant: None })
            .unwrap_err()
            .to_string();
        assert!(e.contains("linux/s390x") && e.contains("linux/arm64/v8, linux/amd64, unknown/unknown"), "{e}");
        // A manifest list without mediaType is recognised by its shape.
        let list =
            format!(r#"{{"manifests":[{{"digest":"{D1}","platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#);
        assert!(parse_descriptor_list(list.as_bytes()).unwrap().is_some());
        // An entry without a platform (a nested index) matches when no entry names the platform.
        let nested = format!(
            r#"{{"manifests":[{{"digest":"{D2}","platform":{{"os":"linux","architecture":"arm64"}}}},{{"digest":"{D1}"}}]}}"#
        );
        let list = parse_descriptor_list(nested.as_bytes()).unwrap().unwrap();
        assert_eq!(pick_platform(&list, &amd64()).unwrap().digest, D1);
    }

    #[test]
    fn manifests_and_bad_json() {
        let m = format!(r#"{{"schemaVersion":2,"config":{{"digest":"{D1}"}},"layers":[]}}"#);
        assert!(parse_descriptor_list(m.as_bytes()).unwrap().is_none());
        assert_eq!(manifest_config(m.as_bytes()).unwrap(), D1);
        for (bad, want) in [
            ("[]", "JSON object"),
            ("{", "not valid JSON"),
            (r#"{"config":{"digest":"sha256:../../x"}}"#, "sha256:<64"),
            (r#"{"config":{}}"#, "no \"digest\""),
        ] {
            let e = manifest_config(bad.as_bytes()).unwrap_err().to_string();
            assert!(e.contains(want), "{bad}: {e}");
        }
        let e = parse_descriptor_list(br#"{"mediaType":"application/vnd.oci.image.index.v1+json"}"#).unwrap_err();
        assert!(e.to_string().contains("no \"manifests\""), "{e}");
    }
}
