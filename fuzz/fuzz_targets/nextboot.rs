//! The next-boot file beside the rw layer (`nextboot`, written by `dockroot
//! switch`, read by the init at every boot): parsing never panics, a file at
//! most MAX_BYTES long is all that is accepted, an accepted file round-trips,
//! and every image it names is one the init can parse, so `select` picks it.
#![no_main]

use dockroot::nextboot::{parse, select, ImageSource, MAX_BYTES};
use dockroot::reference;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(next) = parse(data) else { return };
    assert!(data.len() <= MAX_BYTES);
    assert_eq!(parse(next.to_json().as_bytes()).expect("round trip"), next);
    let configured = reference::parse("os:1").expect("a valid reference");
    let (spec, source, kept) = select(&configured, false, &next);
    match (&next.once, &next.switch) {
        (Some(o), _) => {
            assert_eq!((spec, source, kept), (reference::parse(&o.image).unwrap(), ImageSource::Once, o.kept.clone()))
        }
        (None, Some(s)) => {
            let src = if s.kept.is_some() { ImageSource::Rollback } else { ImageSource::Switch };
            assert_eq!((spec, source, kept), (reference::parse(&s.image).unwrap(), src, s.kept.clone()))
        }
        (None, None) => assert_eq!((spec, source, kept), (configured, ImageSource::Embedded, None)),
    }
    // A kept root's name never leaves the kept directory.
    for s in [&next.once, &next.switch].into_iter().flatten() {
        assert!(s.kept.as_ref().is_none_or(|k| !k.contains('/') && k != ".." && k != "."));
    }
});
