//! containerd's content blobs (`store::containerd`): `parse_descriptor_list` on
//! arbitrary bytes (an OCI index, a Docker manifest list or a manifest). Every
//! accepted descriptor has a `sha256:<64 hex>` digest (it becomes a blob path);
//! `pick_platform` picks an entry of the list that matches, or an entry without a
//! platform, or fails. (meta.db, the bbolt database, has its own target: bbolt.)
#![no_main]

use dockroot::reference::is_hex64;
use dockroot::store::{parse_descriptor_list, pick_platform, Platform};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(Some(list)) = parse_descriptor_list(data) else { return };
    for d in &list {
        let hex = d.digest.strip_prefix("sha256:").unwrap_or_else(|| panic!("digest {:?}", d.digest));
        assert!(is_hex64(hex), "digest {:?}", d.digest);
    }
    let mut wants = vec![
        Platform::running(),
        Platform { os: "linux".into(), architecture: "arm64".into(), variant: Some("v8".into()) },
        Platform { os: "linux".into(), architecture: "arm".into(), variant: Some("v7".into()) },
    ];
    // The platforms the list itself names.
    wants.extend(list.iter().filter_map(|d| d.platform.clone()).take(4));
    for want in &wants {
        let Ok(d) = pick_platform(&list, want) else { continue };
        assert!(list.iter().any(|x| std::ptr::eq(x, d)), "picked a descriptor not in the list");
        match &d.platform {
            Some(p) => {
                assert_eq!((&p.os, &p.architecture), (&want.os, &want.architecture), "picked {d:?} for {want}");
                if let Some(v) = &want.variant {
                    assert_eq!(p.variant.as_ref(), Some(v), "picked {d:?} for {want}");
                }
            }
            None => assert!(
                !list.iter().any(|x| x.platform.as_ref().is_some_and(|p| p.os == want.os
                    && p.architecture == want.architecture
                    && want.variant.as_ref().is_none_or(|v| p.variant.as_ref() == Some(v)))),
                "picked an entry without a platform over an exact match for {want}"
            ),
        }
    }
});
