//! Image references: `reference::parse` on arbitrary text. For accepted
//! input: the printed form parses back to the same value, the familiar
//! string (the repositories.json key) is stable, IDs are well formed, and no
//! normalised name has a `.`, `..` or empty path component or a leading `/`
//! (stores turn names into lookups, and some into paths).
#![no_main]

use dockroot::reference::{is_hex64, parse, ImageSpec, Reference};
use libfuzzer_sys::fuzz_target;

/// A name that is safe to use as (part of) a relative path: no leading `/`, no
/// `.`, `..` or empty component, no NUL.
fn check_path_like(what: &str, s: &str, r: &Reference) {
    assert!(!s.starts_with('/'), "{what} {s:?} of {r:?} starts with /");
    assert!(!s.contains('\0'), "{what} {s:?} of {r:?} holds a NUL");
    for c in s.split('/') {
        assert!(!matches!(c, "" | "." | ".."), "{what} {s:?} of {r:?} has the path component {c:?}");
    }
}

fn check_named(r: &Reference) {
    check_path_like("domain", &r.domain, r);
    assert!(!r.domain.contains('/'), "domain {:?} of {r:?} holds a /", r.domain);
    check_path_like("path", &r.path, r);
    check_path_like("full name", &r.full_name(), r);
    check_path_like("familiar name", &r.familiar_name(), r);
    if let Some(t) = &r.tag {
        assert!(!t.contains('/') && !t.is_empty() && t != "." && t != "..", "tag {t:?} of {r:?}");
    }
    if let Some(d) = &r.digest {
        assert!(!d.contains('/') && d.contains(':'), "digest {d:?} of {r:?}");
    }
    let shown = r.to_string();
    match parse(&shown) {
        Ok(ImageSpec::Named(again)) => assert_eq!(&again, r, "{shown:?} parses back differently"),
        other => panic!("{shown:?} (from {r:?}) parses back as {other:?}"),
    }
    assert!(r.tag.is_some() || r.digest.is_some(), "{r:?}");
    assert!(!r.domain.is_empty() && !r.path.is_empty(), "{r:?}");
    // The key Docker files the image under names the same image, except
    // when the default domain is dropped from a path whose first component
    // looks like a domain (`<default>/a.b/c` is filed as `a.b/c:latest`, as
    // Docker does: that key read as a reference names the domain `a.b`).
    let key = r.familiar_string();
    let familiar = r.familiar_name();
    let domain_dropped = familiar != r.full_name();
    if let Some((first, _)) = familiar.split_once('/') {
        if domain_dropped && (first.contains(['.', ':']) || first == "localhost") {
            return;
        }
    }
    let again = match parse(&key) {
        Ok(ImageSpec::Named(a)) | Ok(ImageSpec::NameOrShortId { name: a, .. }) => a,
        // The official image `sha256` with a 64-hex tag is filed as
        // `sha256:<hex>`, which read as a reference is an image ID.
        Ok(ImageSpec::Id(_)) if r.familiar_name() == "sha256" => return,
        other => panic!("familiar string {key:?} of {r:?} parses as {other:?}"),
    };
    assert_eq!(again.familiar_string(), key, "familiar string of {r:?} is not stable");
    assert_eq!(again.familiar_name(), r.familiar_name());
    assert_eq!((&again.domain, &again.path), (&r.domain, &r.path));
    assert_eq!(again.digest, r.digest);
    if r.digest.is_none() {
        assert_eq!(again.tag, r.tag);
    }
}

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    let Ok(spec) = parse(&s) else { return };
    // Display never fails.
    let _ = spec.to_string();
    match &spec {
        ImageSpec::Named(r) => check_named(r),
        ImageSpec::Id(id) => {
            let hex = id.strip_prefix("sha256:").unwrap_or_else(|| panic!("{id:?} from {s:?}"));
            assert!(is_hex64(hex), "{id:?}");
            assert_eq!(parse(id).ok(), Some(spec.clone()));
        }
        ImageSpec::NameOrShortId { name, prefix } => {
            assert!((12..64).contains(&prefix.len()), "{prefix:?}");
            assert!(prefix.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "{prefix:?}");
            check_named(name);
        }
    }
});
