//! Whole stores on disk (`store::resolve_image`): a valid Docker store (btrfs or
//! overlay2 driver) or Podman store (btrfs) of a two-layer image is written to a
//! temporary directory, with parts of the input in place of its small files, then
//! the image is resolved by name, by ID and by short ID (Podman: also by manifest
//! digest). This fuzzes the layerdb's small files (diff, parent, cache-id), overlay2's
//! link and lower files, Podman's images.json, layers.json and manifest, and the
//! config, as the boot reads them, not only their parsers.
//!
//! Input: a mode byte, then the files separated by `\n--\n`. Mode bits 0-1: 0 Docker
//! btrfs, 1 and 3 Docker overlay2, 2 Podman; bit 2: `dockroot.verify=off`. A part
//! that is exactly `*`, or missing at the end, is generated (consistent with the
//! rest: an image ID is its config's hash). Docker parts: repositories.json, the
//! config, then per layer (base first) diff, parent, cache-id, link, then the top
//! layer's lower file. Podman parts: images.json, the config, layers.json, the manifest.
//!
//! `STORE_TREE_DEBUG=1` prints each resolution (to check that a seed resolves).
//!
//! Whatever the files say, a resolved image lies inside its store: its store path,
//! subvolume, overlay base and lowerdirs are relative paths of normal components,
//! under the store's directory; its IDs are well formed; and with verification on,
//! its ID is its config's hash and its diff IDs are the config's.
#![no_main]

use std::fs;
use std::path::{Component, Path, PathBuf};

use dockroot::reference::{is_hex64, parse};
use dockroot::store::{
    big_data_file_name, chain_ids, check_digest_id, parse_image_config, resolve_image,
    sha256_hex, Resolved, Root,
};
use dockroot::config::{store_options, Arg};
use libfuzzer_sys::fuzz_target;

const SEP: &[u8] = b"\n--\n";
const DOCKER: &str = "var/lib/docker";
const PODMAN: &str = "var/lib/containers/storage";
/// Layers the harness writes layerdb entries for (the config may list more).
const MAX_LAYERS: usize = 3;

fn hex_of(s: &str) -> String {
    sha256_hex(s.as_bytes())
}

fn write(path: &Path, data: &[u8]) {
    if let Some(p) = path.parent() {
        fs::create_dir_all(p).expect("mkdir");
    }
    fs::write(path, data).expect("write");
}

/// A name the harness can create a file or directory under (the store may hold any).
fn plain(name: &str) -> bool {
    !name.is_empty() && name.len() <= 255 && !name.contains(['/', '\0']) && name != "." && name != ".."
}

fn mkdir(path: &Path) {
    fs::create_dir_all(path).expect("mkdir");
}

/// A relative path of normal components only (no `..`, no root, no `.`).
fn check_inside(what: &str, p: &Path, under: Option<&Path>) {
    assert!(!p.as_os_str().is_empty(), "{what} is empty");
    assert!(p.components().all(|c| matches!(c, Component::Normal(_))), "{what} {} leaves its directory", p.display());
    if let Some(u) = under {
        assert!(p.starts_with(u), "{what} {} is not under {}", p.display(), u.display());
    }
}

/// The input's parts: `Some(bytes)` to use, `None` to generate.
struct Parts<'a>(Vec<&'a [u8]>);

impl<'a> Parts<'a> {
    fn split(data: &'a [u8]) -> Parts<'a> {
        let mut parts = Vec::new();
        let mut rest = data;
        while let Some(at) = rest.windows(SEP.len()).position(|w| w == SEP) {
            parts.push(&rest[..at]);
            rest = &rest[at + SEP.len()..];
        }
        if !data.is_empty() {
            parts.push(rest);
        }
        Parts(parts)
    }

    fn get(&self, i: usize) -> Option<&'a [u8]> {
        self.0.get(i).copied().filter(|p| *p != b"*")
    }
}

/// Docker (btrfs or overlay2) store; returns the config as written.
fn docker(top: &Path, parts: &Parts, overlay: bool) -> Vec<u8> {
    let store = top.join(DOCKER);
    let driver = if overlay { "overlay2" } else { "btrfs" };
    let image = store.join("image").join(driver);
    let gen_diffs: Vec<String> = (0..2).map(|i| format!("sha256:{}", hex_of(&format!("diff {i}")))).collect();
    let config = parts.get(1).map(<[u8]>::to_vec).unwrap_or_else(|| {
        format!(
            r#"{{"architecture":"amd64","os":"linux","config":{{}},"rootfs":{{"type":"layers","diff_ids":["{}","{}"]}}}}"#,
            gen_diffs[0], gen_diffs[1]
        )
        .into_bytes()
    });
    let id = sha256_hex(&config);
    write(&image.join("imagedb/content/sha256").join(&id), &config);
    let repos = parts.get(0).map(<[u8]>::to_vec).unwrap_or_else(|| {
        format!(r#"{{"Repositories":{{"fuzz/os":{{"fuzz/os:latest":"sha256:{id}"}}}}}}"#).into_bytes()
    });
    write(&image.join("repositories.json"), &repos);
    let diffs = parse_image_config(&config).map(|c| c.diff_ids).unwrap_or_default();
    let chains = chain_ids(&diffs);
    let mut links = Vec::new();
    for (i, (chain, diff)) in chains.iter().zip(&diffs).enumerate().take(MAX_LAYERS) {
        let Some(chain_hex) = chain.strip_prefix("sha256:").filter(|h| is_hex64(h)) else { continue };
        let dir = image.join("layerdb/sha256").join(chain_hex);
        let slot = 2 + 4 * i;
        write(&dir.join("diff"), parts.get(slot).unwrap_or(diff.as_bytes()));
        match (parts.get(slot + 1), i.checked_sub(1).and_then(|p| chains.get(p))) {
            (Some(p), _) => write(&dir.join("parent"), p),
            (None, Some(p)) => write(&dir.join("parent"), p.as_bytes()),
            (None, None) => {}
        }
        let gen_cache = hex_of(&format!("cache {i}"));
        let cache = parts.get(slot + 2).unwrap_or(gen_cache.as_bytes());
        write(&dir.join("cache-id"), cache);
        // The layer's directories, for the generated cache ID and for a fuzzed one
        // that is a plain name.
        let cache = String::from_utf8_lossy(cache).into_owned();
        let names: Vec<&str> = [gen_cache.as_str(), cache.as_str()]
            .into_iter()
            .filter(|c| plain(c))
            .collect();
        for c in names {
            if overlay {
                mkdir(&store.join("overlay2").join(c).join("diff"));
            } else {
                mkdir(&store.join("btrfs/subvolumes").join(c));
            }
        }
        if overlay {
            let gen_link: String = hex_of(&format!("link {i}")).to_uppercase().chars().take(26).collect();
            let link = parts.get(slot + 3).unwrap_or(gen_link.as_bytes());
            if plain(&cache) {
                write(&store.join("overlay2").join(&cache).join("link"), link);
            }
            let link = String::from_utf8_lossy(link).into_owned();
            if plain(&cache) && link.len() == 26 && link.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()) {
                let l = store.join("overlay2/l");
                mkdir(&l);
                let _ = std::os::unix::fs::symlink(Path::new("..").join(&cache).join("diff"), l.join(&link));
            }
            links.push(link);
        }
    }
    if overlay {
        if let Some(top_cache) = chains.len().checked_sub(1).filter(|n| *n < MAX_LAYERS).map(|n| {
            parts.get(2 + 4 * n + 2).map(|c| String::from_utf8_lossy(c).into_owned()).unwrap_or(hex_of(&format!("cache {n}")))
        }) {
            let below: Vec<String> = links.iter().rev().skip(1).map(|l| format!("l/{l}")).collect();
            let lower = parts.get(2 + 4 * MAX_LAYERS).map(<[u8]>::to_vec).unwrap_or(below.join(":").into_bytes());
            if plain(&top_cache) {
                write(&store.join("overlay2").join(top_cache).join("lower"), &lower);
            }
        }
    }
    config
}

/// Podman (btrfs) store; returns the config as written and the manifest digest.
fn podman(top: &Path, parts: &Parts) -> (Vec<u8>, String) {
    let store = top.join(PODMAN);
    let layer_ids: Vec<String> = (0..2).map(|i| hex_of(&format!("layer {i}"))).collect();
    let diffs: Vec<String> = (0..2).map(|i| format!("sha256:{}", hex_of(&format!("diff {i}")))).collect();
    let config = parts.get(1).map(<[u8]>::to_vec).unwrap_or_else(|| {
        format!(r#"{{"os":"linux","rootfs":{{"type":"layers","diff_ids":["{}","{}"]}}}}"#, diffs[0], diffs[1])
            .into_bytes()
    });
    let id = sha256_hex(&config);
    let manifest = parts.get(3).map(<[u8]>::to_vec).unwrap_or_else(|| {
        format!(r#"{{"schemaVersion":2,"config":{{"digest":"sha256:{id}","size":{}}},"layers":[]}}"#, config.len())
            .into_bytes()
    });
    let manifest_digest = format!("sha256:{}", sha256_hex(&manifest));
    let images = parts.get(0).map(<[u8]>::to_vec).unwrap_or_else(|| {
        format!(
            r#"[{{"id":"{id}","digest":"{manifest_digest}","names":["localhost/fuzz/os:latest"],"layer":"{}"}}]"#,
            layer_ids[1]
        )
        .into_bytes()
    });
    write(&store.join("btrfs-images/images.json"), &images);
    let dir = store.join("btrfs-images").join(&id);
    write(&dir.join(big_data_file_name(&format!("sha256:{id}"))), &config);
    write(&dir.join(big_data_file_name(&format!("manifest-{manifest_digest}"))), &manifest);
    let layers = parts.get(2).map(<[u8]>::to_vec).unwrap_or_else(|| {
        format!(
            r#"[{{"id":"{0}","diff-digest":"{2}"}},{{"id":"{1}","parent":"{0}","diff-digest":"{3}"}}]"#,
            layer_ids[0], layer_ids[1], diffs[0], diffs[1]
        )
        .into_bytes()
    });
    write(&store.join("btrfs-layers/layers.json"), &layers);
    for l in &layer_ids {
        mkdir(&store.join("btrfs/subvolumes").join(l));
    }
    (config, manifest_digest)
}

fn check(r: &Resolved, config: &[u8], store: &str) {
    let store = Path::new(store);
    check_inside("store path", &r.store_path, None);
    assert_eq!(r.store_path, store, "resolved in another store");
    match &r.root {
        Root::Subvolume(p) => check_inside("subvolume", p, Some(store)),
        Root::Overlay { base, lowerdirs } => {
            check_inside("overlay base", base, Some(store));
            assert!(!lowerdirs.is_empty(), "no lowerdirs");
            assert_eq!(lowerdirs.len(), r.diff_ids.len(), "one lowerdir per layer");
            for l in lowerdirs {
                check_inside("lowerdir", l, None);
            }
        }
    }
    assert!(is_hex64(r.image_id.strip_prefix("sha256:").unwrap_or("")), "image ID {:?}", r.image_id);
    for d in r.diff_ids.iter().chain(&r.chain_ids) {
        assert!(check_digest_id(d).is_ok(), "ID {d:?}");
    }
    assert_eq!(r.chain_ids, chain_ids(&r.diff_ids));
    assert!(!r.layer.is_empty() && !r.layer.contains('/') && r.layer != "..", "layer {:?}", r.layer);
    let _ = PathBuf::from(&r.layer);
    if r.verified {
        assert!(r.warnings.is_empty(), "verified with warnings: {:?}", r.warnings);
        assert_eq!(r.image_id, format!("sha256:{}", sha256_hex(config)), "verified, but not the config's hash");
        let cfg = parse_image_config(config).expect("verified, but the config does not parse");
        assert_eq!(r.diff_ids, cfg.diff_ids, "verified, but not the config's diff IDs");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let parts = Parts::split(rest);
    let base = if Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
    let top = base.join(format!("dockroot-fuzz-store-{}", std::process::id()));
    let _ = fs::remove_dir_all(&top);
    mkdir(&top);
    let (config, store, mut specs) = match mode & 3 {
        2 => {
            let (config, manifest) = podman(&top, &parts);
            (config, PODMAN, vec![format!("fuzz/os@{manifest}")])
        }
        m => (docker(&top, &parts, m != 0), DOCKER, Vec::new()),
    };
    let id = sha256_hex(&config);
    specs.extend(["fuzz/os:latest".to_string(), format!("sha256:{id}"), id[..12].to_string()]);
    let mut args = Vec::new();
    if mode & 4 != 0 {
        args.push(Arg { key: "dockroot.verify".into(), value: Some("off".into()) });
    }
    let opts = store_options(&args, &["var".into(), "lib".into(), "docker".into()]).expect("store options");
    for s in &specs {
        let spec = parse(s).expect("a spec the harness made");
        let result = resolve_image(&top, &opts, &spec);
        if std::env::var_os("STORE_TREE_DEBUG").is_some() {
            eprintln!("{s}: {:?}", result.as_ref().map(|r| (&r.root, r.verified, &r.warnings)));
        }
        if let Ok(r) = result {
            check(&r, &config, store);
        }
    }
    let _ = fs::remove_dir_all(&top);
});
