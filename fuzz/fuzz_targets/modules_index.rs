//! The module index the init reads at boot: `parse_index` on arbitrary text;
//! an accepted index is written back by `write_index` and parses to the
//! same value, and writing is then a fixed point. Input without the format
//! line gets it prepended, so the fuzzer works on the body whatever the
//! format's version.
#![no_main]

use dockroot::modules::{parse_index, write_index, INDEX_HEADER};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut text = String::from_utf8_lossy(data).into_owned();
    if !text.starts_with("dockroot-modules") {
        text.insert_str(0, &format!("{INDEX_HEADER}\n"));
    }
    let Ok(index) = parse_index(&text) else { return };
    let written = write_index(&index).unwrap_or_else(|e| panic!("parsed index {index:?} cannot be written: {e}"));
    let again = parse_index(&written).unwrap_or_else(|e| panic!("written index {written:?} does not parse: {e}"));
    assert_eq!(again, index, "round trip through {written:?}");
    assert_eq!(write_index(&again).ok().as_deref(), Some(written.as_str()));
});
