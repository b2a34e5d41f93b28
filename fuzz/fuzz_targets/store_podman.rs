//! Podman's store files (containers-storage, `store::podman`): `parse_images_json`
//! and `parse_layers_json` on arbitrary bytes. Accepted IDs and layer IDs are path
//! components (64 lowercase hex digits); the big-data file name of the keys the
//! boot reads (`sha256:<image ID>`, `manifest-<digest of a reference>`) is one safe
//! path component, and that of any key stays in the image's directory (like
//! containers-storage, a key outside `[.0-9a-z]` becomes `=` + standard base64,
//! which may hold a `/`, but never a `.` or `..` component); image names
//! split into parts of themselves.
#![no_main]

use dockroot::reference::is_hex64;
use dockroot::store::{big_data_file_name, parse_images_json, parse_layers_json, split_name};
use libfuzzer_sys::fuzz_target;

use dockroot::reference::{parse, ImageSpec};

/// A single path component that cannot escape its directory.
fn check_component(what: &str, name: &str) {
    assert!(
        !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0']),
        "{what} gives the file name {name:?}"
    );
}

/// The big-data file name of a key the boot reads.
fn check_boot_key(key: &str) {
    check_component(&format!("big-data key {key:?}"), &big_data_file_name(key));
}

fn check_key(key: &str) {
    let file = big_data_file_name(key);
    assert!(!file.starts_with('/') && !file.contains('\0'), "{key:?} -> {file:?}");
    for c in file.split('/') {
        assert!(!matches!(c, "." | ".."), "big-data key {key:?} gives {file:?}");
    }
    // Only [.0-9a-z] keys are used as they are; every other key is encoded.
    if file == key {
        assert!(key.bytes().all(|b| b == b'.' || b.is_ascii_digit() || b.is_ascii_lowercase()), "{key:?}");
    } else {
        assert!(file.starts_with('='), "{key:?} -> {file:?}");
    }
}

fn check_name(name: &str) {
    let (repo, tag, digest) = split_name(name);
    assert!(name.starts_with(repo), "{name:?} -> repo {repo:?}");
    if let Some(t) = tag {
        assert!(!t.contains('/') && name.contains(t), "{name:?} -> tag {t:?}");
    }
    if let Some(d) = digest {
        assert!(name.ends_with(d), "{name:?} -> digest {d:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(images) = parse_images_json(data) {
        for img in &images {
            assert!(is_hex64(&img.id), "image ID {:?}", img.id);
            if let Some(l) = &img.layer {
                assert!(is_hex64(l), "layer ID {l:?} of image {}", img.id);
            }
            check_boot_key(&format!("sha256:{}", img.id));
            for d in &img.digests {
                check_key(&format!("manifest-{d}"));
            }
            for n in &img.names {
                check_name(n);
                check_key(n);
            }
        }
    }
    if let Ok(layers) = parse_layers_json(data) {
        for (id, layer) in &layers {
            assert_eq!(id, &layer.id);
            assert!(is_hex64(id), "layer ID {id:?}");
        }
    }
    // Any text is a key containers-storage may have encoded.
    let text = String::from_utf8_lossy(data);
    check_key(&text);
    // A digest reference names the manifest the boot reads.
    if let Ok(ImageSpec::Named(r)) = parse(&text) {
        if let Some(d) = &r.digest {
            check_boot_key(&format!("manifest-{d}"));
        }
    }
});
