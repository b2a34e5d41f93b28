//! An overlay root's `dockroot-overlay.json` (read back from the disk at
//! every boot that mounts that root): parsing never panics, every accepted
//! path stays inside the partition, the JSON round-trips, and the mount
//! options built from it are escaped and within the page limit or refused.
#![no_main]

use std::path::{Component, Path, PathBuf};

use dockroot::overlay::{legacy_options, Overlay, LEGACY_OPTIONS_MAX};
use dockroot::rwlayer::OverlaySpec;
use libfuzzer_sys::fuzz_target;

fn inside(p: &Path) -> bool {
    p.components().next().is_some() && p.components().all(|c| matches!(c, Component::Normal(_)))
}

fuzz_target!(|data: &[u8]| {
    let Ok(spec) = OverlaySpec::from_json(data) else { return };
    assert!(inside(&spec.base), "{spec:?}");
    assert!(!spec.lowerdirs.is_empty() && spec.lowerdirs.iter().all(|l| inside(l)), "{spec:?}");
    let json = spec.to_json().expect("an accepted spec serialises");
    assert_eq!(OverlaySpec::from_json(json.as_bytes()).expect("round trip"), spec);
    let ov = Overlay {
        base: Path::new("/.dockroot/top").join(&spec.base),
        lowerdirs: spec.lowerdirs.clone(),
        upper: Some((PathBuf::from("/.dockroot/top/rw/upper"), PathBuf::from("/.dockroot/top/rw/work"))),
    };
    if let Ok(opts) = legacy_options(&ov) {
        assert!(opts.len() <= LEGACY_OPTIONS_MAX);
        // Exactly as many unescaped ':' separators as layers minus one.
        let lower = opts.strip_prefix("lowerdir=").expect("lowerdir first");
        let (mut seps, mut escaped) = (0usize, false);
        for c in lower.chars() {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, ',') => break,
                (false, ':') => seps += 1,
                _ => {}
            }
        }
        assert_eq!(seps + 1, spec.lowerdirs.len(), "{opts}");
    }
});
