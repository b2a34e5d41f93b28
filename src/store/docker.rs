//! Resolve an image in Docker's graph-driver store: with the btrfs driver to
//! the subvolume that holds its complete root filesystem, with overlay2 to
//! the `diff` directories of all its layers (overlayfs lowerdirs).
//!
//! Layout under the Docker data root (see shared notes); `<driver>` is
//! `btrfs` or `overlay2`, and each driver has its own image metadata:
//!
//! ```text
//! image/<driver>/repositories.json                 name -> image ID
//! image/<driver>/imagedb/content/sha256/<id>       image config; sha256(bytes) == id
//! image/<driver>/layerdb/sha256/<chain id>/        cache-id, diff, parent
//! btrfs/subvolumes/<cache-id>                      btrfs: the layer's subvolume (the top one is the whole root)
//! overlay2/<cache-id>/{diff/,link,lower}           overlay2: the layer's files, its short link name,
//!                                                  and the layers below it as "l/<link>:l/<link>..."
//! overlay2/l/<link> -> ../<cache-id>/diff          overlay2: short links, for short mount options
//! ```
//!
//! The pure part parses and checks (repositories, configs, chain IDs, ids);
//! the stores read the files. Every file read is size-capped, and every name
//! that becomes a path component is checked (cache IDs exactly 64 lowercase
//! hex digits, links 26 of `[A-Z0-9]`), so no file content can steer a path
//! out of the store.

use super::{
    chain_ids, check_image_id, check_layer_dir, is_dir, list_names, read_capped, short_list, verified_config, Checks,
    Driver, ImageFacts, ImageStore, Lookup, Root, StoreAt, StoreKind, JSON_CAP, JSON_CAP_TEXT,
};
use crate::error::{Error, Result};
use crate::reference::{is_hex64, ImageSpec, Reference};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Cap for the small layerdb files (cache-id, diff, parent).
const SMALL_CAP: u64 = 256;
const SMALL_CAP_TEXT: &str = "256 bytes";
/// Most image IDs listed from imagedb when matching an ID.
const MAX_IMAGE_IDS: usize = 1_000_000;

/// The tag and digest keys of `repositories.json`:
/// familiar repository name -> (familiar key `name:tag` / `name@digest` -> image ID).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Repositories {
    pub repos: BTreeMap<String, BTreeMap<String, String>>,
}

impl Repositories {
    /// Every key (`name:tag`, `name@digest`), sorted.
    pub fn keys(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.repos.values().flat_map(|m| m.keys().map(String::as_str)).collect();
        v.sort_unstable();
        v
    }

    /// Every image ID named in the file (may include malformed values).
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.repos.values().flat_map(|m| m.values().map(String::as_str))
    }
}

/// Parse `repositories.json`:
/// `{"Repositories":{"<repo>":{"<repo>:<tag>": "sha256:<id>", ...}}}`.
/// A missing or null `Repositories` is an empty store. Values are checked
/// only when looked up, so one odd entry does not hide the others.
pub fn parse_repositories(json: &[u8]) -> Result<Repositories> {
    let v: Value = serde_json::from_slice(json).map_err(|e| Error::with("repositories.json is not valid JSON", e))?;
    let top = v.as_object().ok_or_else(|| Error::msg("repositories.json must contain a JSON object"))?;
    let mut out = Repositories::default();
    let repos = match top.get("Repositories") {
        None | Some(Value::Null) => return Ok(out),
        Some(Value::Object(m)) => m,
        Some(_) => return Err(Error::msg("repositories.json: \"Repositories\" must be an object")),
    };
    for (repo, entries) in repos {
        let entries = entries
            .as_object()
            .ok_or_else(|| Error::msg(format!("repositories.json: repository {repo:?} must map to an object")))?;
        let mut m = BTreeMap::new();
        for (key, id) in entries {
            let id = id.as_str().ok_or_else(|| {
                Error::msg(format!("repositories.json: {key:?} must map to an image ID string, not {id}"))
            })?;
            m.insert(key.clone(), id.to_string());
        }
        out.repos.insert(repo.clone(), m);
    }
    Ok(out)
}

/// Find the image ID (`sha256:<64 hex>`) for `spec`.
///
/// `image_ids` are the IDs that have a config in imagedb (needed only for
/// [`ImageSpec::Id`] and [`ImageSpec::NameOrShortId`]). A name is looked up
/// under its familiar repository and key; a short ID must match exactly one
/// ID from the repositories or imagedb.
pub fn lookup(repos: &Repositories, spec: &ImageSpec, image_ids: &[String]) -> Result<String> {
    lookup_found(repos, spec, image_ids)?.map_err(Error::msg)
}

/// Like [`lookup`], but "not in this store" is `Ok(Err(why))`.
fn lookup_found(
    repos: &Repositories,
    spec: &ImageSpec,
    image_ids: &[String],
) -> Result<std::result::Result<String, String>> {
    match spec {
        ImageSpec::Named(r) => match lookup_name(repos, r)? {
            Some(id) => Ok(Ok(id)),
            None => Ok(Err(format!(
                "no image {r} (stored as {:?}) in repositories.json; {}",
                r.familiar_string(),
                listing(repos)
            ))),
        },
        ImageSpec::Id(id) => {
            if image_ids.iter().any(|x| x == id) {
                Ok(Ok(id.clone()))
            } else {
                Ok(Err(format!(
                    "no image with ID {id} in imagedb ({} image configs there); {}",
                    image_ids.len(),
                    listing(repos)
                )))
            }
        }
        ImageSpec::NameOrShortId { name, prefix } => {
            if let Some(id) = lookup_name(repos, name)? {
                return Ok(Ok(id));
            }
            let candidates: BTreeSet<&str> = image_ids
                .iter()
                .map(String::as_str)
                .chain(repos.ids())
                .filter(|id| id.strip_prefix("sha256:").is_some_and(|h| is_hex64(h) && h.starts_with(prefix.as_str())))
                .collect();
            let mut it = candidates.iter();
            match (it.next(), it.next()) {
                (Some(id), None) => Ok(Ok((*id).to_string())),
                (None, _) => {
                    Ok(Err(format!("no image {name} and no image ID starting with {prefix}; {}", listing(repos))))
                }
                (Some(_), Some(_)) => Err(Error::msg(format!(
                    "image ID prefix {prefix} is ambiguous: it matches {}",
                    candidates.iter().copied().collect::<Vec<_>>().join(", ")
                ))),
            }
        }
    }
}

/// The ID filed under `r`'s familiar repository and key, checked.
fn lookup_name(repos: &Repositories, r: &Reference) -> Result<Option<String>> {
    let key = r.familiar_string();
    let Some(id) = repos.repos.get(&r.familiar_name()).and_then(|m| m.get(&key)) else {
        return Ok(None);
    };
    check_image_id(id).map_err(|e| e.context(format!("repositories.json entry {key:?}")))?;
    Ok(Some(id.clone()))
}

/// "the store holds: a:b, c:d, ... and N more".
fn listing(repos: &Repositories) -> String {
    let keys = repos.keys();
    if keys.is_empty() {
        return "the store holds no named images".into();
    }
    let keys: Vec<String> = keys.into_iter().map(str::to_string).collect();
    format!("the store holds: {}", short_list(&keys))
}

/// A cache ID read from `file`: exactly 64 lowercase hex digits (no
/// whitespace, no path separators).
pub fn check_cache_id(cache_id: &str, file: &Path) -> Result<()> {
    if is_hex64(cache_id) {
        Ok(())
    } else {
        Err(Error::msg(format!(
            "{} holds {cache_id:?}, not a cache ID of exactly 64 lowercase hex digits: store corrupted or tampered",
            file.display()
        )))
    }
}

/// Docker's store with one graph driver (btrfs or overlay2) as an [`ImageStore`].
pub(crate) struct DockerStore {
    at: StoreAt,
}

impl DockerStore {
    pub(crate) fn new(top: &Path, path: PathBuf, driver: Driver, verify: bool) -> DockerStore {
        DockerStore { at: StoreAt::new(top, StoreKind::Docker, driver, path, verify) }
    }
}

impl ImageStore for DockerStore {
    fn at(&self) -> &StoreAt {
        &self.at
    }

    fn lookup(&self, spec: &ImageSpec, checks: &mut Checks) -> Result<Lookup> {
        let w = match walk(&self.at.abs, self.at.driver, spec, checks)? {
            Ok(w) => w,
            Err(why) => return Ok(Lookup::NotFound(why)),
        };
        let (layer, root) = match self.at.driver {
            Driver::Btrfs => {
                let (cache_id, sub) = btrfs_root(&self.at.abs, &w)?;
                (cache_id, Root::Subvolume(self.at.path.join(sub)))
            }
            _ => {
                let (cache_id, lowerdirs) = overlay2_root(&self.at.abs, &w, checks)?;
                (cache_id, Root::Overlay { base: self.at.path.join(OVERLAY2_DIR), lowerdirs })
            }
        };
        Ok(self.at.found(w.facts, layer, root, std::mem::take(checks)))
    }
}

/// An image found in `image/<driver>/` and its layerdb chain checked.
struct Walked {
    facts: ImageFacts,
    /// The layerdb directory of each layer, base first; `None` for a layer
    /// missing from the layerdb (only with verification off; never the top).
    layer_dirs: Vec<Option<PathBuf>>,
}

/// `Ok(Err(why))` when the image is not in the store.
fn walk(
    root: &Path,
    driver: Driver,
    spec: &ImageSpec,
    checks: &mut Checks,
) -> Result<std::result::Result<Walked, String>> {
    let store = root.join("image").join(driver.name());
    check_store(root, &store, driver)?;

    let repos_path = store.join("repositories.json");
    let repos = match read_capped(&repos_path, JSON_CAP, JSON_CAP_TEXT)? {
        Some(bytes) => parse_repositories(&bytes).map_err(|e| e.context(repos_path.display().to_string()))?,
        None => Repositories::default(),
    };
    let content = store.join("imagedb/content/sha256");
    let image_ids = match spec {
        ImageSpec::Named(_) => Vec::new(),
        _ => list_image_ids(&content)?,
    };
    let image_id = match lookup_found(&repos, spec, &image_ids)? {
        Ok(id) => id,
        Err(why) => return Ok(Err(why)),
    };
    let reference = match (spec, &image_id) {
        (ImageSpec::Named(r), _) => r.to_string(),
        (ImageSpec::NameOrShortId { name, .. }, id)
            if lookup_name(&repos, name).ok().flatten().as_ref() == Some(id) =>
        {
            name.to_string()
        }
        (_, id) => id.clone(),
    };
    let id_hex = image_id
        .strip_prefix("sha256:")
        .filter(|h| is_hex64(h))
        .ok_or_else(|| Error::msg(format!("invalid image ID {image_id:?} for {reference}")))?;

    // The image config, verified against its content address.
    let cfg = verified_config(&content.join(id_hex), &image_id, &reference, checks)?;
    let chains = chain_ids(&cfg.diff_ids);

    // Walk the layerdb from the top layer down; the walk follows the chain
    // computed from the config, so it is bounded by the number of layers.
    let layerdb = store.join("layerdb/sha256");
    let n = chains.len();
    let mut layer_dirs: Vec<Option<PathBuf>> = vec![None; n];
    for (i, (chain, diff)) in chains.iter().zip(&cfg.diff_ids).enumerate().rev() {
        let chain_hex = chain.strip_prefix("sha256:").filter(|h| is_hex64(h)).ok_or_else(|| {
            Error::msg(format!("layer {} of {reference} has an invalid chain ID {chain:?}", i.saturating_add(1)))
        })?;
        let dir = layerdb.join(chain_hex);
        let layer = format!("layer {} of {n} ({chain})", i.saturating_add(1));
        let diff_path = dir.join("diff");
        let found = read_small(&diff_path)?;
        let missing = || {
            format!("{layer} of {reference} is missing from the layer store: {} does not exist", diff_path.display())
        };
        let is_top = i.saturating_add(1) == n;
        if is_top && found.is_none() {
            return Err(Error::msg(missing()));
        }
        let Some(found) = found else {
            checks.check(false, missing)?;
            continue;
        };
        checks.check(found == *diff, || {
            format!("{} holds {found:?} but the image config of {reference} says {diff}", diff_path.display())
        })?;
        let parent_path = dir.join("parent");
        let parent = read_small(&parent_path)?;
        let expected = i.checked_sub(1).and_then(|p| chains.get(p));
        let say = |p: Option<&String>| p.map_or_else(|| "no parent".to_string(), |p| format!("parent {p}"));
        checks.check(parent.as_ref() == expected, || {
            format!(
                "{} gives {} but the image config of {reference} implies {}",
                parent_path.display(),
                say(parent.as_ref()),
                say(expected)
            )
        })?;
        if let Some(slot) = layer_dirs.get_mut(i) {
            *slot = Some(dir);
        }
    }
    let facts = ImageFacts { reference, image_id, manifest_digest: None, diff_ids: cfg.diff_ids, chain_ids: chains };
    Ok(Ok(Walked { facts, layer_dirs }))
}

/// The cache ID recorded in a layerdb directory, checked to be a path
/// component.
fn cache_id_of(dir: &Path, what: &str) -> Result<String> {
    let path = dir.join("cache-id");
    let id = read_small(&path)?
        .ok_or_else(|| Error::msg(format!("{what} has no cache ID: {} does not exist", path.display())))?;
    check_cache_id(&id, &path)?;
    Ok(id)
}

/// btrfs: the top layer's cache ID and its subvolume relative to the data
/// root (`btrfs/subvolumes/<cache-id>`), checked to be a directory.
fn btrfs_root(root: &Path, w: &Walked) -> Result<(String, PathBuf)> {
    let reference = &w.facts.reference;
    let top_dir = w
        .layer_dirs
        .last()
        .and_then(Option::as_ref)
        .ok_or_else(|| Error::msg(format!("image {reference} has no layers")))?;
    let cache_id = cache_id_of(top_dir, &format!("top layer of {reference}"))?;
    let subvolume = PathBuf::from("btrfs/subvolumes").join(&cache_id);
    check_layer_dir(
        &root.join(&subvolume),
        &format!("the top layer subvolume of {reference}"),
        &top_dir.join("cache-id").display().to_string(),
    )?;
    Ok((cache_id, subvolume))
}

/// The overlay2 driver's directory under the data root.
const OVERLAY2_DIR: &str = "overlay2";

/// A short link name from an overlay2 `link` file: 26 characters of
/// `[A-Z0-9]` (Docker's base32 of random bytes), nothing else.
pub fn is_overlay2_link(name: &str) -> bool {
    name.len() == 26 && name.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

/// overlay2: the top layer's cache ID and every layer's directory relative
/// to `overlay2/`, top first: `l/<link>` where the layer's short link is
/// valid and resolves to `../<cache-id>/diff`, else `<cache-id>/diff`. Every
/// layer needs its layerdb entry (its cache ID), whatever `checks` allows;
/// the top layer's `lower` file, where present, must name the layers below
/// in order.
fn overlay2_root(root: &Path, w: &Walked, checks: &mut Checks) -> Result<(String, Vec<PathBuf>)> {
    let reference = &w.facts.reference;
    let base = root.join(OVERLAY2_DIR);
    let links_ok = is_dir(&base.join("l"));
    let n = w.layer_dirs.len();
    let mut lowerdirs = Vec::with_capacity(n);
    let mut cache_ids: Vec<String> = Vec::with_capacity(n);
    let mut links: Vec<Option<String>> = Vec::with_capacity(n);
    for (i, dir) in w.layer_dirs.iter().enumerate().rev() {
        let what = format!("layer {} of {n} of {reference}", i.saturating_add(1));
        let dir = dir.as_ref().ok_or_else(|| {
            Error::msg(format!("{what} is missing from the layer store: the overlay needs every layer"))
        })?;
        let cache_id = cache_id_of(dir, &what)?;
        if cache_ids.contains(&cache_id) {
            checks.check(false, || format!("{what} has the cache ID {cache_id} of a layer above it"))?;
        }
        let diff = PathBuf::from(&cache_id).join("diff");
        check_layer_dir(
            &base.join(&diff),
            &format!("the diff directory of {what}"),
            &dir.join("cache-id").display().to_string(),
        )?;
        let link = read_small(&base.join(&cache_id).join("link"))?.filter(|l| is_overlay2_link(l));
        let short = link.as_ref().filter(|l| {
            links_ok
                && std::fs::read_link(base.join("l").join(l))
                    .is_ok_and(|t| t == Path::new("..").join(&cache_id).join("diff"))
        });
        lowerdirs.push(match short {
            Some(l) => PathBuf::from("l").join(l),
            None => diff,
        });
        links.push(link);
        cache_ids.push(cache_id);
    }
    // The top layer's record of the layers below it (Docker's own chain).
    if let (Some(top), Some(below)) = (cache_ids.first(), links.get(1..)) {
        let lower_path = base.join(top).join("lower");
        let expected: Option<Vec<String>> = below.iter().map(|l| l.as_ref().map(|l| format!("l/{l}"))).collect();
        if let (Some(lower), Some(expected)) = (read_capped(&lower_path, LOWER_CAP, LOWER_CAP_TEXT)?, expected) {
            let lower = String::from_utf8_lossy(&lower).into_owned();
            let expected = expected.join(":");
            checks.check(lower == expected, || {
                format!(
                    "{} names the layers {lower:?} below the top layer of {reference}, but the layer store's \
                     chain is {expected:?}",
                    lower_path.display()
                )
            })?;
        }
    }
    let top = cache_ids.into_iter().next().ok_or_else(|| Error::msg(format!("image {reference} has no layers")))?;
    Ok((top, lowerdirs))
}

/// Cap for an overlay2 `lower` file (Docker allows 127 layers of 29 bytes).
const LOWER_CAP: u64 = 64 * 1024;
const LOWER_CAP_TEXT: &str = "64 KiB";

/// The image store of `driver` must exist; otherwise say what is there instead.
fn check_store(root: &Path, store: &Path, driver: Driver) -> Result<()> {
    if store.is_dir() {
        return Ok(());
    }
    if !root.is_dir() {
        return Err(Error::msg(format!(
            "the Docker data directory {} does not exist (expected {}; set docker_path= to Docker's data root)",
            root.display(),
            store.display()
        )));
    }
    let image = root.join("image");
    if image.is_dir() {
        let drivers = list_names(&image);
        let found = if drivers.is_empty() { "nothing".to_string() } else { drivers.join(", ") };
        return Err(Error::msg(format!(
            "{} does not exist (image/ holds: {found}): is dockerd using --storage-driver {}?",
            store.display(),
            driver.name()
        )));
    }
    Err(Error::msg(format!(
        "{} does not exist and {} has no image/ directory: is docker_path= Docker's data root?",
        store.display(),
        root.display()
    )))
}

/// The IDs (`sha256:<hex>`) of the configs in imagedb; other names are ignored.
fn list_image_ids(dir: &Path) -> Result<Vec<String>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::with(format!("listing {}", dir.display()), e)),
    };
    let mut ids = Vec::new();
    for (n, entry) in rd.enumerate() {
        if n >= MAX_IMAGE_IDS {
            return Err(Error::msg(format!("{} has more than {MAX_IMAGE_IDS} entries", dir.display())));
        }
        let entry = entry.map_err(|e| Error::with(format!("listing {}", dir.display()), e))?;
        if let Some(name) = entry.file_name().to_str().filter(|s| is_hex64(s)) {
            ids.push(format!("sha256:{name}"));
        }
    }
    ids.sort();
    Ok(ids)
}

/// Read a small layerdb file (cache-id, diff, parent) as UTF-8, unmodified.
fn read_small(path: &Path) -> Result<Option<String>> {
    match read_capped(path, SMALL_CAP, SMALL_CAP_TEXT)? {
        None => Ok(None),
        Some(b) => String::from_utf8(b)
            .map(Some)
            .map_err(|_| Error::msg(format!("{} is not UTF-8 text: store corrupted", path.display()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::{parse, DEFAULT_DOMAIN};
    use crate::store::testutil::{write, TempDir};
    use crate::store::{parse_image_config, sha256_hex};
    use std::process::Command;

    /// sha256 of `data` by the system's sha256sum, independent of our code.
    fn sha256sum(data: &[u8]) -> String {
        use std::io::Write;
        let mut child = Command::new("sha256sum")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("sha256sum");
        child.stdin.take().unwrap().write_all(data).unwrap();
        let out = child.wait_with_output().unwrap();
        String::from_utf8(out.stdout).unwrap().split_whitespace().next().unwrap().to_string()
    }

    fn digest_of(s: &str) -> String {
        format!("sha256:{}", sha256_hex(s.as_bytes()))
    }

    #[test]
    fn sha256_matches_sha256sum() {
        for data in [&b""[..], b"abc", b"dockroot store test\n"] {
            assert_eq!(sha256_hex(data), sha256sum(data));
        }
        // FIPS 180-2 test vector.
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn chain_ids_match_independent_computation() {
        let d: Vec<String> = ["a", "b", "c"].iter().map(|s| digest_of(s)).collect();
        let c = chain_ids(&d);
        assert_eq!(c.len(), 3);
        assert_eq!(c[0], d[0]);
        let c1 = format!("sha256:{}", sha256sum(format!("{} {}", d[0], d[1]).as_bytes()));
        let c2 = format!("sha256:{}", sha256sum(format!("{c1} {}", d[2]).as_bytes()));
        assert_eq!(c[1], c1);
        assert_eq!(c[2], c2);
        // Hard-coded vectors for diff IDs sha256("a"), sha256("b"), sha256("c"), computed with
        // A=sha256:$(printf a | sha256sum ..); C1=sha256:$(printf '%s' "$A $B" | sha256sum ..); likewise C2.
        assert_eq!(c[1], "sha256:51c0c8ace48498d6f5fee6b0592cc06f2da0f3cbe09c5a34a97dce85c3889676");
        assert_eq!(c[2], "sha256:2fce7f8ce91bcf0a1428b36e1024639fdbd9469eea762dba98aa749631885106");
        assert!(chain_ids(&[]).is_empty());
    }

    #[test]
    fn repositories_parse() {
        let id = digest_of("img");
        let json = format!(
            r#"{{"Repositories":{{"labdeb":{{"labdeb:base":"{id}","labdeb@{id}":"{id}"}},
               "localhost:5000/team/os":{{"localhost:5000/team/os:v1":"{id}"}}}}}}"#
        );
        let r = parse_repositories(json.as_bytes()).unwrap();
        assert_eq!(r.keys(), vec!["labdeb:base", format!("labdeb@{id}").as_str(), "localhost:5000/team/os:v1"]);
        assert_eq!(r.repos.get("labdeb").and_then(|m| m.get("labdeb:base")), Some(&id));
        assert_eq!(parse_repositories(br#"{"Repositories":{}}"#).unwrap(), Repositories::default());
        assert_eq!(parse_repositories(br#"{}"#).unwrap(), Repositories::default());
        for (bad, want) in [
            (&b""[..], "not valid JSON"),
            (b"{\"Repositories\":{\"a\":{\"a:b\":\"sha", "not valid JSON"),
            (b"[]", "must contain a JSON object"),
            (br#"{"Repositories":[]}"#, "must be an object"),
            (br#"{"Repositories":{"a":"x"}}"#, "repository \"a\" must map to an object"),
            (br#"{"Repositories":{"a":{"a:t":5}}}"#, "\"a:t\" must map to an image ID string"),
        ] {
            let e = parse_repositories(bad).expect_err(want).to_string();
            assert!(e.contains(want), "{e}");
        }
    }

    fn sample_repos() -> (Repositories, [String; 4]) {
        let ids = [digest_of("1"), digest_of("2"), digest_of("3"), digest_of("4")];
        let [a, b, c, dg] = &ids;
        let json = format!(
            r#"{{"Repositories":{{
                "ubuntu":{{"ubuntu:latest":"{a}","ubuntu:22.04":"{b}"}},
                "foo/bar":{{"foo/bar:latest":"{c}","foo/bar@{dg}":"{b}"}},
                "localhost:5000/team/os":{{"localhost:5000/team/os:v1":"{dg}"}},
                "registry.example:5000/a/b/c":{{"registry.example:5000/a/b/c:tag":"{a}"}},
                "bad":{{"bad:latest":"../../etc"}}}}}}"#
        );
        (parse_repositories(json.as_bytes()).unwrap(), ids)
    }

    fn look(repos: &Repositories, s: &str, image_ids: &[String]) -> Result<String> {
        lookup(repos, &parse(&s.replace("<D>", DEFAULT_DOMAIN)).unwrap(), image_ids)
    }

    #[test]
    fn lookup_by_name_tag_digest_and_registry() {
        let (repos, [a, b, c, dg]) = sample_repos();
        for (input, want) in [
            ("ubuntu", &a),
            ("ubuntu:latest", &a),
            ("library/ubuntu", &a),
            ("<D>/library/ubuntu:22.04", &b),
            ("index.<D>/ubuntu:22.04", &b),
            ("foo/bar", &c),
            ("<D>/foo/bar", &c),
            (&format!("foo/bar@{dg}"), &b),
            (&format!("foo/bar:whatever@{dg}"), &b),
            ("localhost:5000/team/os:v1", &dg),
            ("registry.example:5000/a/b/c:tag", &a),
        ] {
            assert_eq!(look(&repos, input, &[]).unwrap(), *want, "{input}");
        }
    }

    #[test]
    fn lookup_not_found_lists_names() {
        let (repos, _) = sample_repos();
        let e = look(&repos, "ubuntu:20.04", &[]).unwrap_err().to_string();
        assert!(e.contains(&format!("{DEFAULT_DOMAIN}/library/ubuntu:20.04")), "{e}");
        assert!(e.contains("\"ubuntu:20.04\""), "{e}");
        assert!(e.contains("ubuntu:22.04") && e.contains("localhost:5000/team/os:v1"), "{e}");
        assert!(!e.contains("more"), "{e}");
        // localhost/x is not x.
        assert!(look(&repos, "localhost/ubuntu", &[]).is_err());

        // Many names: 20 listed, then "and N more".
        let mut big = Repositories::default();
        for i in 0..25 {
            big.repos.entry(format!("img{i:02}")).or_default().insert(format!("img{i:02}:latest"), digest_of("x"));
        }
        let e = look(&big, "nope", &[]).unwrap_err().to_string();
        assert!(e.contains("img19:latest") && !e.contains("img20:latest") && e.ends_with("and 5 more"), "{e}");
        let e = look(&Repositories::default(), "nope", &[]).unwrap_err().to_string();
        assert!(e.contains("no named images"), "{e}");

        // A malformed ID in the file is an error, not a path.
        let e = look(&repos, "bad", &[]).unwrap_err().to_string();
        assert!(e.contains("\"bad:latest\"") && e.contains("../../etc"), "{e}");
    }

    #[test]
    fn lookup_by_id_and_short_id() {
        let (repos, [a, b, c, dg]) = sample_repos();
        let extra = digest_of("only-in-imagedb");
        let in_db = vec![a.clone(), b.clone(), c.clone(), extra.clone()];
        assert_eq!(look(&repos, &a, &in_db).unwrap(), a);
        assert_eq!(look(&repos, a.strip_prefix("sha256:").unwrap(), &in_db).unwrap(), a);
        // dg is named in repositories.json but has no config.
        let e = look(&repos, &dg, &in_db).unwrap_err().to_string();
        assert!(e.contains(&dg) && e.contains("no image with ID"), "{e}");

        let short = |id: &str, n: usize| id.strip_prefix("sha256:").unwrap().get(..n).unwrap().to_string();
        assert_eq!(look(&repos, &short(&extra, 12), &in_db).unwrap(), extra);
        assert_eq!(look(&repos, &format!("sha256:{}", short(&c, 20)), &in_db).unwrap(), c);
        // Short IDs of images only in repositories.json are candidates too.
        assert_eq!(look(&repos, &short(&dg, 12), &in_db).unwrap(), dg);
        let e = look(&repos, "ffffffffffff", &in_db).unwrap_err().to_string();
        assert!(e.contains("no image ID starting with ffffffffffff"), "{e}");

        // Ambiguity lists the candidates.
        let p = "abcdef012345";
        let t1 = format!("sha256:{p}{}", "0".repeat(52));
        let t2 = format!("sha256:{p}{}", "1".repeat(52));
        let e = look(&repos, p, &[t1.clone(), t2.clone()]).unwrap_err().to_string();
        assert!(e.contains("ambiguous") && e.contains(&t1) && e.contains(&t2), "{e}");

        // A name wins over an ID prefix.
        let mut named_hex = repos.clone();
        named_hex.repos.entry(p.to_string()).or_default().insert(format!("{p}:latest"), a.clone());
        assert_eq!(look(&named_hex, p, &[t1]).unwrap(), a);
    }

    #[test]
    fn image_config_parse() {
        let d1 = digest_of("l1");
        let d2 = digest_of("l2");
        let json = format!(
            r#"{{"architecture":"amd64","os":"linux","config":{{}},"rootfs":{{"type":"layers","diff_ids":["{d1}","{d2}"]}}}}"#
        );
        let c = parse_image_config(json.as_bytes()).unwrap();
        assert_eq!(c.diff_ids, vec![d1.clone(), d2]);
        assert_eq!((c.os.as_deref(), c.architecture.as_deref()), (Some("linux"), Some("amd64")));
        let c = parse_image_config(br#"{"rootfs":{"type":"layers"}}"#).unwrap();
        assert!(c.diff_ids.is_empty() && c.os.is_none());
        let upper = d1.to_uppercase().replace("SHA256", "sha256");
        for (bad, want) in [
            ("".to_string(), "not valid JSON"),
            ("{\"rootfs\":".to_string(), "not valid JSON"),
            ("{}".to_string(), "no \"rootfs\""),
            (r#"{"rootfs":{"type":"other","diff_ids":[]}}"#.to_string(), "expected \"layers\""),
            (r#"{"rootfs":{"diff_ids":[]}}"#.to_string(), "expected \"layers\""),
            (r#"{"rootfs":{"type":"layers","diff_ids":"x"}}"#.to_string(), "must be an array"),
            (r#"{"rootfs":{"type":"layers","diff_ids":[1]}}"#.to_string(), "diff_ids[0] must be a string"),
            (format!(r#"{{"rootfs":{{"type":"layers","diff_ids":["{d1}","{upper}"]}}}}"#), "diff_ids[1]"),
            (r#"{"rootfs":{"type":"layers","diff_ids":["sha256:../../x"]}}"#.to_string(), "64 lowercase hex"),
            (format!(r#"{{"os":7,"rootfs":{{"type":"layers","diff_ids":["{d1}"]}}}}"#), "\"os\" must be a string"),
        ] {
            let e = parse_image_config(bad.as_bytes()).expect_err(&bad).to_string();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn id_checks() {
        let good = "a".repeat(64);
        assert!(check_cache_id(&good, Path::new("/x/cache-id")).is_ok());
        for bad in [
            "../../x".to_string(),
            format!("{good}\n"),
            format!(" {good}"),
            "A".repeat(64),
            "a".repeat(63),
            String::new(),
        ] {
            let e = check_cache_id(&bad, Path::new("/x/layerdb/sha256/y/cache-id")).unwrap_err().to_string();
            assert!(e.contains("/x/layerdb/sha256/y/cache-id"), "{e}");
        }
        assert!(check_image_id(&format!("sha256:{good}")).is_ok());
        assert!(check_image_id(&good).is_err());
        assert!(check_image_id(&format!("sha512:{good}")).is_err());
    }

    // ---- store trees on disk ----

    struct Img {
        id: String,
        diff_ids: Vec<String>,
        chains: Vec<String>,
        /// The top layer's.
        cache_id: String,
        /// Base first.
        cache_ids: Vec<String>,
    }

    /// Add an image with `layers` layers, like Docker writes it.
    fn add_image(root: &Path, seed: &str, layers: usize) -> Img {
        add_image_with(root, Driver::Btrfs, seed, layers)
    }

    /// overlay2's short link name of a cache ID (26 of [A-Z0-9]).
    fn link_of(cache_id: &str) -> String {
        cache_id.bytes().take(26).map(|b| char::from(b.to_ascii_uppercase())).collect()
    }

    /// Add an image with `layers` layers, like Docker writes it with `driver`.
    fn add_image_with(root: &Path, driver: Driver, seed: &str, layers: usize) -> Img {
        let diff_ids: Vec<String> = (0..layers).map(|i| digest_of(&format!("{seed}-layer{i}"))).collect();
        let list = diff_ids.iter().map(|d| format!("\"{d}\"")).collect::<Vec<_>>().join(",");
        let config = format!(
            r#"{{"architecture":"amd64","os":"linux","created":"{seed}","rootfs":{{"type":"layers","diff_ids":[{list}]}}}}"#
        );
        let id_hex = sha256sum(config.as_bytes());
        let store = root.join("image").join(driver.name());
        write(&store.join("imagedb/content/sha256").join(&id_hex), config.as_bytes());
        let chains = chain_ids(&diff_ids);
        let mut cache_ids: Vec<String> = Vec::new();
        for (i, (c, d)) in chains.iter().zip(&diff_ids).enumerate() {
            let dir = store.join("layerdb/sha256").join(c.strip_prefix("sha256:").unwrap());
            write(&dir.join("diff"), d.as_bytes());
            if i > 0 {
                write(&dir.join("parent"), chains[i - 1].as_bytes());
            }
            let cache_id = sha256_hex(format!("cache {c}").as_bytes());
            write(&dir.join("cache-id"), cache_id.as_bytes());
            write(&dir.join("size"), b"0");
            if driver == Driver::Btrfs {
                std::fs::create_dir_all(root.join("btrfs/subvolumes").join(&cache_id)).unwrap();
            } else {
                let layer = root.join("overlay2").join(&cache_id);
                write(&layer.join("diff").join(format!("layer{i}")), seed.as_bytes());
                write(&layer.join("link"), link_of(&cache_id).as_bytes());
                std::fs::create_dir_all(root.join("overlay2/l")).unwrap();
                let _ = std::fs::remove_file(root.join("overlay2/l").join(link_of(&cache_id)));
                std::os::unix::fs::symlink(
                    format!("../{cache_id}/diff"),
                    root.join("overlay2/l").join(link_of(&cache_id)),
                )
                .unwrap();
                if i > 0 {
                    let lower: Vec<String> = cache_ids.iter().rev().map(|c| format!("l/{}", link_of(c))).collect();
                    write(&layer.join("lower"), lower.join(":").as_bytes());
                }
            }
            cache_ids.push(cache_id);
        }
        let cache_id = cache_ids.last().cloned().unwrap_or_default();
        Img { id: format!("sha256:{id_hex}"), diff_ids, chains, cache_id, cache_ids }
    }

    fn write_repos(root: &Path, entries: &[(&str, &str, &str)]) {
        write_repos_with(root, Driver::Btrfs, entries)
    }

    fn write_repos_with(root: &Path, driver: Driver, entries: &[(&str, &str, &str)]) {
        let mut repos: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for (repo, key, id) in entries {
            repos.entry(repo).or_default().push(format!("\"{key}\":\"{id}\""));
        }
        let body = repos.iter().map(|(r, e)| format!("\"{r}\":{{{}}}", e.join(","))).collect::<Vec<_>>().join(",");
        let path = root.join("image").join(driver.name()).join("repositories.json");
        write(&path, format!("{{\"Repositories\":{{{body}}}}}").as_bytes());
    }

    /// A store with three images: labdeb:base (3 layers), a registry image
    /// (1 layer) and an untagged one (2 layers).
    fn fixture() -> (TempDir, Img, Img, Img) {
        let t = TempDir::new();
        let deb = add_image(&t.0, "deb", 3);
        let os = add_image(&t.0, "os", 1);
        let untagged = add_image(&t.0, "untagged", 2);
        let dg = digest_of("manifest");
        write_repos(
            &t.0,
            &[
                ("labdeb", "labdeb:base", &deb.id),
                ("labdeb", &format!("labdeb@{dg}"), &deb.id),
                ("registry.example:5000/team/os", "registry.example:5000/team/os:v1", &os.id),
            ],
        );
        (t, deb, os, untagged)
    }

    /// What the tests below check of an image resolved in the btrfs store:
    /// the top layer's cache ID and subvolume (relative to the data root).
    #[derive(Debug)]
    struct BtrfsImage {
        reference: String,
        image_id: String,
        diff_ids: Vec<String>,
        chain_ids: Vec<String>,
        cache_id: String,
        subvolume: PathBuf,
    }

    /// Resolve `s` in the Docker btrfs store at `root` through
    /// [`DockerStore`] with verification on; errors (and "not in this
    /// store") say which image and which store.
    fn resolve_str(root: &Path, s: &str) -> Result<BtrfsImage> {
        let spec = parse(s).unwrap();
        let context = |e: Error| e.context(format!("resolving image {spec} in the Docker store at {}", root.display()));
        let dir = PathBuf::from(root.file_name().unwrap());
        let store = DockerStore::new(root.parent().unwrap(), dir.clone(), Driver::Btrfs, true);
        let r = match store.resolve(&spec).map_err(context)? {
            Lookup::Found(r) => *r,
            Lookup::NotFound(why) => return Err(context(Error::msg(why))),
        };
        let Root::Subvolume(sub) = &r.root else { panic!("not a subvolume: {:?}", r.root) };
        let subvolume = sub.strip_prefix(&dir).unwrap().to_path_buf();
        let (reference, image_id, diff_ids, chain_ids) = (r.reference, r.image_id, r.diff_ids, r.chain_ids);
        Ok(BtrfsImage { reference, image_id, diff_ids, chain_ids, cache_id: r.layer, subvolume })
    }

    #[test]
    fn resolves_by_name_tag_digest_registry_and_id() {
        let (t, deb, os, untagged) = fixture();
        let r = resolve_str(&t.0, "labdeb:base").unwrap();
        assert_eq!(r.reference, format!("{DEFAULT_DOMAIN}/library/labdeb:base"));
        assert_eq!(r.image_id, deb.id);
        assert_eq!(r.diff_ids, deb.diff_ids);
        assert_eq!(r.chain_ids, deb.chains);
        assert_eq!(r.cache_id, deb.cache_id);
        assert_eq!(r.subvolume, PathBuf::from(format!("btrfs/subvolumes/{}", deb.cache_id)));
        assert!(t.0.join(&r.subvolume).is_dir());

        let full = format!("{DEFAULT_DOMAIN}/library/labdeb:base");
        assert_eq!(resolve_str(&t.0, &full).unwrap().image_id, deb.id);
        let by_digest = resolve_str(&t.0, &format!("labdeb@{}", digest_of("manifest"))).unwrap();
        assert_eq!(by_digest.image_id, deb.id);
        let r = resolve_str(&t.0, "registry.example:5000/team/os:v1").unwrap();
        assert_eq!((r.image_id.as_str(), r.cache_id.as_str()), (os.id.as_str(), os.cache_id.as_str()));
        assert_eq!(r.chain_ids.len(), 1);

        let r = resolve_str(&t.0, &untagged.id).unwrap();
        assert_eq!((r.reference.as_str(), r.cache_id.as_str()), (untagged.id.as_str(), untagged.cache_id.as_str()));
        let short = untagged.id.get(7..19).unwrap();
        assert_eq!(resolve_str(&t.0, short).unwrap().cache_id, untagged.cache_id);
        let hex = deb.id.strip_prefix("sha256:").unwrap();
        assert_eq!(resolve_str(&t.0, hex).unwrap().cache_id, deb.cache_id);
    }

    #[test]
    fn not_found_names_reference_and_lists_store() {
        let (t, ..) = fixture();
        let e = resolve_str(&t.0, "labdeb:other").unwrap_err().to_string();
        assert!(e.contains(&format!("{DEFAULT_DOMAIN}/library/labdeb:other")), "{e}");
        assert!(e.contains("labdeb:base") && e.contains("registry.example:5000/team/os:v1"), "{e}");
        assert!(e.contains(&t.0.display().to_string()), "{e}");
        let e = resolve_str(&t.0, &digest_of("nothing")).unwrap_err().to_string();
        assert!(e.contains("no image with ID") && e.contains("3 image configs"), "{e}");
    }

    #[test]
    fn missing_store_explains() {
        let t = TempDir::new();
        let e = resolve_str(&t.0.join("nope"), "x").unwrap_err().to_string();
        assert!(e.contains("does not exist") && e.contains("docker_path="), "{e}");
        let e = resolve_str(&t.0, "x").unwrap_err().to_string();
        assert!(e.contains("no image/ directory") && e.contains("docker_path="), "{e}");
        std::fs::create_dir_all(t.0.join("image/overlay2")).unwrap();
        let e = resolve_str(&t.0, "x").unwrap_err().to_string();
        assert!(e.contains("image/ holds: overlay2") && e.contains("--storage-driver btrfs"), "{e}");
        assert!(e.contains("image/btrfs"), "{e}");
    }

    #[test]
    fn corrupt_repositories_json() {
        let (t, ..) = fixture();
        let path = t.0.join("image/btrfs/repositories.json");
        for bad in [&b""[..], b"{\"Repositories\":{\"labdeb\":{\"labdeb:ba", b"null", b"\x00\x01"] {
            std::fs::write(&path, bad).unwrap();
            let e = resolve_str(&t.0, "labdeb:base").unwrap_err().to_string();
            assert!(e.contains("repositories.json") && e.contains("labdeb:base"), "{e}");
        }
        // Missing file: nothing named, but IDs still work.
        std::fs::remove_file(&path).unwrap();
        let e = resolve_str(&t.0, "labdeb:base").unwrap_err().to_string();
        assert!(e.contains("no named images"), "{e}");
    }

    #[test]
    fn oversized_files_are_refused() {
        let (t, deb, ..) = fixture();
        let repos = t.0.join("image/btrfs/repositories.json");
        std::fs::File::options().write(true).open(&repos).unwrap().set_len(JSON_CAP + 1).unwrap();
        let e = resolve_str(&t.0, "labdeb:base").unwrap_err().to_string();
        assert!(e.contains("repositories.json is larger than 64 MiB"), "{e}");

        let (t, deb2, ..) = fixture();
        let config = t.0.join("image/btrfs/imagedb/content/sha256").join(deb2.id.strip_prefix("sha256:").unwrap());
        std::fs::File::options().write(true).open(&config).unwrap().set_len(JSON_CAP + 1).unwrap();
        let e = resolve_str(&t.0, "labdeb:base").unwrap_err().to_string();
        assert!(e.contains(&format!("{} is larger than 64 MiB", config.display())), "{e}");

        let (t, ..) = fixture();
        let cache =
            t.0.join("image/btrfs/layerdb/sha256")
                .join(deb.chains[2].strip_prefix("sha256:").unwrap())
                .join("cache-id");
        std::fs::File::options().write(true).open(&cache).unwrap().set_len(SMALL_CAP + 1).unwrap();
        let e = resolve_str(&t.0, "labdeb:base").unwrap_err().to_string();
        assert!(e.contains("cache-id is larger than 256 bytes"), "{e}");
    }

    #[test]
    fn config_hash_mismatch_is_refused() {
        let (t, deb, ..) = fixture();
        let config = t.0.join("image/btrfs/imagedb/content/sha256").join(deb.id.strip_prefix("sha256:").unwrap());
        let mut bytes = std::fs::read(&config).unwrap();
        bytes.push(b' ');
        std::fs::write(&config, &bytes).unwrap();
        let e = resolve_str(&t.0, "labdeb:base").unwrap_err().to_string();
        assert!(
            e.contains(&format!(
                "verification failed: image config for {DEFAULT_DOMAIN}/library/labdeb:base does not match its ID"
            )) && e.contains("store corrupted or tampered"),
            "{e}"
        );
        std::fs::remove_file(&config).unwrap();
        let e = resolve_str(&t.0, "labdeb:base").unwrap_err().to_string();
        assert!(e.contains("image config") && e.contains("is missing") && e.contains(&deb.id), "{e}");
    }

    fn layer_file(t: &TempDir, chain: &str, name: &str) -> PathBuf {
        t.0.join("image/btrfs/layerdb/sha256").join(chain.strip_prefix("sha256:").unwrap()).join(name)
    }

    #[test]
    fn bad_cache_ids_are_refused() {
        let (t, deb, ..) = fixture();
        let cache = layer_file(&t, &deb.chains[2], "cache-id");
        // A traversal target that exists, so only the check stops it.
        std::fs::create_dir_all(t.0.join("x")).unwrap();
        for bad in ["../../x".to_string(), format!("{}\n", deb.cache_id), format!("{}/..", deb.cache_id)] {
            std::fs::write(&cache, &bad).unwrap();
            let e = resolve_str(&t.0, "labdeb:base").unwrap_err().to_string();
            assert!(e.contains(&cache.display().to_string()) && e.contains("labdeb:base"), "{e}");
            assert!(e.contains("64 lowercase hex"), "{e}");
        }
        std::fs::remove_file(&cache).unwrap();
        let e = resolve_str(&t.0, "labdeb:base").unwrap_err().to_string();
        assert!(e.contains("no cache ID") && e.contains(&cache.display().to_string()), "{e}");
    }

    #[test]
    fn missing_or_odd_subvolume_is_refused() {
        let (t, deb, ..) = fixture();
        let sub = t.0.join("btrfs/subvolumes").join(&deb.cache_id);
        std::fs::remove_dir(&sub).unwrap();
        let e = resolve_str(&t.0, "labdeb:base").unwrap_err().to_string();
        assert!(e.contains(&sub.display().to_string()) && e.contains("does not exist"), "{e}");
        // A symlink to a directory is not the subvolume.
        std::os::unix::fs::symlink(&t.0, &sub).unwrap();
        let e = resolve_str(&t.0, "labdeb:base").unwrap_err().to_string();
        assert!(e.contains("is not a directory"), "{e}");
    }

    #[test]
    fn layerdb_chain_mismatches_are_refused() {
        // Wrong parent.
        let (t, deb, os, _) = fixture();
        let parent = layer_file(&t, &deb.chains[2], "parent");
        std::fs::write(&parent, &os.chains[0]).unwrap();
        let e = resolve_str(&t.0, "labdeb:base").unwrap_err().to_string();
        assert!(e.contains(&parent.display().to_string()) && e.contains(&format!("parent {}", deb.chains[1])), "{e}");
        // Parent missing in the middle.
        std::fs::write(&parent, &deb.chains[1]).unwrap();
        let parent1 = layer_file(&t, &deb.chains[1], "parent");
        std::fs::remove_file(&parent1).unwrap();
        let e = resolve_str(&t.0, "labdeb:base").unwrap_err().to_string();
        assert!(e.contains("gives no parent"), "{e}");
        // A base layer that claims a parent (e.g. a loop back to the top).
        std::fs::write(&parent1, &deb.chains[0]).unwrap();
        let parent0 = layer_file(&t, &deb.chains[0], "parent");
        std::fs::write(&parent0, &deb.chains[2]).unwrap();
        let e = resolve_str(&t.0, "labdeb:base").unwrap_err().to_string();
        assert!(e.contains(&parent0.display().to_string()) && e.contains("implies no parent"), "{e}");
        std::fs::remove_file(&parent0).unwrap();
        assert!(resolve_str(&t.0, "labdeb:base").is_ok());
        // Wrong diff.
        let diff = layer_file(&t, &deb.chains[1], "diff");
        std::fs::write(&diff, &deb.diff_ids[0]).unwrap();
        let e = resolve_str(&t.0, "labdeb:base").unwrap_err().to_string();
        assert!(e.contains(&diff.display().to_string()) && e.contains(&deb.diff_ids[1]), "{e}");
        // Missing layer directory.
        std::fs::remove_dir_all(diff.parent().unwrap()).unwrap();
        let e = resolve_str(&t.0, "labdeb:base").unwrap_err().to_string();
        assert!(e.contains("layer 2 of 3") && e.contains("missing from the layer store"), "{e}");
    }

    /// Issue 4's hostile inputs, every metadata file the lookup reads, each
    /// broken four ways: a clear error naming the file and the image, no panic.
    #[test]
    fn every_metadata_file_broken_every_way_is_a_clear_error() {
        const HUGE: u64 = 100 << 20;
        let (t, deb, ..) = fixture();
        let config_of =
            |t: &TempDir| t.0.join("image/btrfs/imagedb/content/sha256").join(deb.id.strip_prefix("sha256:").unwrap());
        type PathOf<'a> = Box<dyn Fn(&TempDir) -> PathBuf + 'a>;
        let files: Vec<(&str, PathOf)> = vec![
            ("repositories.json", Box::new(|t: &TempDir| t.0.join("image/btrfs/repositories.json"))),
            ("image config", Box::new(config_of)),
            ("cache-id", Box::new(|t: &TempDir| layer_file(t, &deb.chains[2], "cache-id"))),
            ("diff", Box::new(|t: &TempDir| layer_file(t, &deb.chains[1], "diff"))),
            ("parent", Box::new(|t: &TempDir| layer_file(t, &deb.chains[2], "parent"))),
        ];
        drop(t);
        for (what, path_of) in &files {
            for how in ["empty", "truncated", "garbage", "huge"] {
                let (t, ..) = fixture();
                let path = path_of(&t);
                let good = std::fs::read(&path).unwrap();
                match how {
                    "empty" => std::fs::write(&path, b"").unwrap(),
                    "truncated" => std::fs::write(&path, &good[..good.len() / 2]).unwrap(),
                    "garbage" => std::fs::write(&path, b"\x00\xff{\"\n\x1b[2J").unwrap(),
                    _ => std::fs::File::options().write(true).open(&path).unwrap().set_len(HUGE).unwrap(),
                }
                let e = match resolve_str(&t.0, "labdeb:base") {
                    Ok(r) => panic!("{what} {how}: resolved anyway to {:?}", r.subvolume),
                    Err(e) => e.to_string(),
                };
                let named =
                    e.contains(&path.display().to_string()) || (*what == "repositories.json" && e.contains(what));
                assert!(named, "{what} {how}: the error does not name {}: {e}", path.display());
                assert!(e.contains("labdeb:base") || e.contains(&deb.id), "{what} {how}: the image is not named: {e}");
            }
        }
    }

    #[test]
    fn image_without_layers_is_refused() {
        let t = TempDir::new();
        let config = br#"{"os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
        let id = sha256_hex(config);
        write(&t.0.join("image/btrfs/imagedb/content/sha256").join(&id), config);
        let e = resolve_str(&t.0, &id).unwrap_err().to_string();
        assert!(e.contains("has no layers"), "{e}");
    }

    // ---- overlay2 ----

    /// Docker data at `<top>/docker` with `driver` and `os:1` (3 layers).
    fn overlay2_fixture(driver: Driver) -> (TempDir, Img) {
        let t = TempDir::new();
        let root = t.0.join("docker");
        let img = add_image_with(&root, driver, "ov", 3);
        write_repos_with(&root, driver, &[("os", "os:1", &img.id)]);
        (t, img)
    }

    fn opts_for(top: &TempDir) -> super::super::StoreOptions {
        let _ = top;
        super::super::StoreOptions::new(&["docker".to_string()])
    }

    fn resolve_in(t: &TempDir, o: &super::super::StoreOptions, s: &str) -> Result<super::super::Resolved> {
        super::super::resolve_image(&t.0, o, &parse(s).unwrap())
    }

    fn links(img: &Img) -> Vec<PathBuf> {
        img.cache_ids.iter().rev().map(|c| PathBuf::from("l").join(link_of(c))).collect()
    }

    #[test]
    fn overlay2_resolves_to_every_layer_top_first() {
        let (t, img) = overlay2_fixture(Driver::Overlay2);
        let o = opts_for(&t);
        let r = resolve_in(&t, &o, "os:1").unwrap();
        assert_eq!((r.store, r.driver), (StoreKind::Docker, Driver::Overlay2));
        assert_eq!(r.whence(), "Docker (overlay2) at /docker");
        assert_eq!((r.image_id.as_str(), r.layer.as_str()), (img.id.as_str(), img.cache_id.as_str()));
        assert_eq!(r.chain_ids, img.chains);
        assert_eq!(r.root, Root::Overlay { base: PathBuf::from("docker/overlay2"), lowerdirs: links(&img) });
        assert!(r.verified && r.warnings.is_empty(), "{r:?}");
        // Each lowerdir, taken from the base, is that layer's diff.
        let Root::Overlay { base, lowerdirs } = &r.root else { unreachable!() };
        for (i, l) in lowerdirs.iter().rev().enumerate() {
            assert_eq!(std::fs::read_to_string(t.0.join(base).join(l).join(format!("layer{i}"))).unwrap(), "ov");
        }
        // By ID too.
        assert_eq!(resolve_in(&t, &o, &img.id).unwrap().root, r.root);
    }

    #[test]
    fn overlay2_short_links_only_when_they_are_right() {
        let (t, img) = overlay2_fixture(Driver::Overlay2);
        let o = opts_for(&t);
        let ov = t.0.join("docker/overlay2");
        let long = |c: &str| PathBuf::from(c).join("diff");
        let lowers = || match resolve_in(&t, &o, "os:1").unwrap().root {
            Root::Overlay { lowerdirs, .. } => lowerdirs,
            other => panic!("{other:?}"),
        };
        let [base, mid, top] = [&img.cache_ids[0], &img.cache_ids[1], &img.cache_ids[2]];
        // A link that points at another layer's diff: the long form.
        let l_top = ov.join("l").join(link_of(top));
        std::fs::remove_file(&l_top).unwrap();
        std::os::unix::fs::symlink(format!("../{base}/diff"), &l_top).unwrap();
        assert_eq!(lowers()[0], long(top));
        // A link file naming something else than a link name.
        write(&ov.join(mid).join("link"), b"../../etc");
        assert_eq!(lowers()[1], long(mid));
        // No link file at all (the lower check cannot run then either).
        std::fs::remove_file(ov.join(base).join("link")).unwrap();
        assert_eq!(lowers(), vec![long(top), long(mid), long(base)]);
        // l/ itself a symlink: never followed.
        let (t, img) = overlay2_fixture(Driver::Overlay2);
        let ov = t.0.join("docker/overlay2");
        std::fs::rename(ov.join("l"), t.0.join("l-elsewhere")).unwrap();
        std::os::unix::fs::symlink(t.0.join("l-elsewhere"), ov.join("l")).unwrap();
        let r = resolve_in(&t, &opts_for(&t), "os:1").unwrap();
        let want: Vec<PathBuf> = img.cache_ids.iter().rev().map(|c| long(c)).collect();
        assert_eq!(r.root, Root::Overlay { base: PathBuf::from("docker/overlay2"), lowerdirs: want });
        assert!(is_overlay2_link("ABCDEFGHIJKLMNOPQRSTUVWXY2") && !is_overlay2_link("abcdefghijklmnopqrstuvwxy2"));
        assert!(!is_overlay2_link("ABCDEFGHIJKLMNOPQRSTUVWXY") && !is_overlay2_link("ABCDEFGHIJKLMNOPQRSTUVWX/."));
    }

    #[test]
    fn overlay2_refuses_missing_layers_bad_ids_and_a_wrong_lower_chain() {
        let (t, img) = overlay2_fixture(Driver::Overlay2);
        let o = opts_for(&t);
        let off = super::super::StoreOptions { verify: false, ..o.clone() };
        let ov = t.0.join("docker/overlay2");
        let layerdb = t.0.join("docker/image/overlay2/layerdb/sha256");
        // The lower record of the top layer disagrees with the chain (two layers swapped).
        let lower = ov.join(&img.cache_ids[2]).join("lower");
        let good = std::fs::read(&lower).unwrap();
        let swapped = format!("l/{}:l/{}", link_of(&img.cache_ids[0]), link_of(&img.cache_ids[1]));
        write(&lower, swapped.as_bytes());
        let e = resolve_in(&t, &o, "os:1").unwrap_err().to_string();
        assert!(e.contains("verification failed") && e.contains(&lower.display().to_string()), "{e}");
        let r = resolve_in(&t, &off, "os:1").unwrap();
        assert!(!r.verified && r.warnings.len() == 1 && r.warnings[0].contains("lower"), "{r:?}");
        write(&lower, &good);
        // Two layers with the same cache ID.
        let mid_cache = layerdb.join(img.chains[1].strip_prefix("sha256:").unwrap()).join("cache-id");
        write(&mid_cache, img.cache_ids[2].as_bytes());
        let e = resolve_in(&t, &o, "os:1").unwrap_err().to_string();
        assert!(e.contains("verification failed") && e.contains("cache ID"), "{e}");
        // A cache ID that is not one: refused whatever dockroot.verify says.
        write(&mid_cache, b"../../../etc");
        for opts in [&o, &off] {
            let e = resolve_in(&t, opts, "os:1").unwrap_err().to_string();
            assert!(e.contains(&mid_cache.display().to_string()) && e.contains("64 lowercase hex"), "{e}");
        }
        write(&mid_cache, img.cache_ids[1].as_bytes());
        // A missing diff directory.
        let diff = ov.join(&img.cache_ids[0]).join("diff");
        std::fs::rename(&diff, ov.join("moved")).unwrap();
        let e = resolve_in(&t, &off, "os:1").unwrap_err().to_string();
        assert!(
            e.contains(&diff.display().to_string()) && e.contains("does not exist") && e.contains("layer 1 of 3"),
            "{e}"
        );
        std::fs::rename(ov.join("moved"), &diff).unwrap();
        resolve_in(&t, &o, "os:1").unwrap();
        // A layer missing from the layerdb: an overlay cannot do without it.
        std::fs::remove_dir_all(layerdb.join(img.chains[0].strip_prefix("sha256:").unwrap())).unwrap();
        assert!(resolve_in(&t, &o, "os:1").unwrap_err().to_string().contains("missing from the layer store"));
        let e = resolve_in(&t, &off, "os:1").unwrap_err().to_string();
        assert!(e.contains("layer 1 of 3") && e.contains("the overlay needs every layer"), "{e}");
    }

    #[test]
    fn btrfs_and_overlay2_in_one_data_root_are_two_candidates() {
        let (t, ov) = overlay2_fixture(Driver::Overlay2);
        let root = t.0.join("docker");
        let bt = add_image_with(&root, Driver::Btrfs, "bt", 2);
        write_repos_with(&root, Driver::Btrfs, &[("os", "os:1", &bt.id), ("other", "other:1", &bt.id)]);
        let o = opts_for(&t);
        let e = resolve_in(&t, &o, "os:1").unwrap_err().to_string();
        assert!(
            e.contains("ambiguous")
                && e.contains("Docker (btrfs) at /docker")
                && e.contains("Docker (overlay2) at /docker")
                && e.contains("docker:btrfs, docker:overlay2"),
            "{e}"
        );
        let pin = |d: Driver| super::super::StoreOptions { pin: Some(StoreKind::Docker), driver: Some(d), ..o.clone() };
        let r = resolve_in(&t, &pin(Driver::Overlay2), "os:1").unwrap();
        assert_eq!((r.driver, r.image_id.as_str()), (Driver::Overlay2, ov.id.as_str()));
        let r = resolve_in(&t, &pin(Driver::Btrfs), "os:1").unwrap();
        assert_eq!(r.root, Root::Subvolume(PathBuf::from("docker/btrfs/subvolumes").join(&bt.cache_id)));
        // A name in one of them only is not ambiguous.
        assert_eq!(resolve_in(&t, &o, "other:1").unwrap().driver, Driver::Btrfs);
        // Pinned to a driver the data root does not use.
        std::fs::remove_dir_all(root.join("image/btrfs")).unwrap();
        let e = resolve_in(&t, &pin(Driver::Btrfs), "os:1").unwrap_err().to_string();
        assert!(e.contains("no image store found (dockroot.store=docker:btrfs)") && e.contains("overlay2"), "{e}");
    }
}
