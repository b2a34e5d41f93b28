//! Image references: `reference::parse` on arbitrary text. For accepted
//! input: the printed form parses back to the same value, the familiar
//! string (the repositories.json key) is stable, and IDs are well formed.
#![no_main]

use dockroot::reference::{is_hex64, parse, ImageSpec, Reference};
use libfuzzer_sys::fuzz_target;

fn check_named(r: &Reference) {
    let shown = r.to_string();
    match parse(&shown) {
        Ok(ImageSpec::Named(again)) => assert_eq!(&again, r, "{shown:?} parses back differently"),
        other => panic!("{shown:?} (from {r:?}) parses back as {other:?}"),
    }
    assert!(r.tag.is_some() || r.digest.is_some(), "{r:?}");
    assert!(!r.domain.is_empty() && !r.path.is_empty(), "{r:?}");
    // The key Docker files the image under names the same image.
    let key = r.familiar_string();
    let again = match parse(&key) {
        Ok(ImageSpec::Named(a)) | Ok(ImageSpec::NameOrShortId { name: a, .. }) => a,
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
