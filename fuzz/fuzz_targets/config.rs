//! The prior art's embedded config (`/etc/docker-btrfs.json`):
//! `from_prior_art_config` on arbitrary bytes. An accepted config names an
//! image whose printed form parses back to the same thing.
#![no_main]

use dockroot::reference::{from_prior_art_config, parse, ImageSpec};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(spec) = from_prior_art_config(data) else { return };
    match &spec {
        ImageSpec::Named(r) | ImageSpec::NameOrShortId { name: r, .. } => {
            let again = parse(&r.to_string()).unwrap_or_else(|e| panic!("{r} does not parse back: {e}"));
            assert_eq!(again, ImageSpec::Named(r.clone()), "{r}");
            assert!(r.tag.is_some() || r.digest.is_some(), "{r} has neither tag nor digest");
        }
        ImageSpec::Id(id) => {
            assert_eq!(parse(id).ok().as_ref(), Some(&spec), "{id}");
        }
    }
});
