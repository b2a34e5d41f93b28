//! Docker's store files: `parse_repositories` and `parse_image_config` on
//! arbitrary bytes, then `lookup` of every name, ID and ID prefix the parsed
//! repositories mention (and of specs taken from the input's text), and
//! `chain_ids` of the parsed config.
#![no_main]

use dockroot::reference::{parse, ImageSpec};
use dockroot::store::{chain_ids, check_digest_id, check_image_id, lookup, parse_image_config, parse_repositories};
use libfuzzer_sys::fuzz_target;

/// Most lookups per input (each lists the store in its error).
const MAX_SPECS: usize = 32;

fuzz_target!(|data: &[u8]| {
    if let Ok(config) = parse_image_config(data) {
        for d in &config.diff_ids {
            assert!(check_digest_id(d).is_ok(), "accepted diff ID {d:?}");
        }
        let chain = chain_ids(&config.diff_ids);
        assert_eq!(chain.len(), config.diff_ids.len());
        assert_eq!(chain.first(), config.diff_ids.first());
        for c in &chain {
            assert!(check_digest_id(c).is_ok(), "chain ID {c:?}");
        }
    }

    let Ok(repos) = parse_repositories(data) else { return };
    let ids: Vec<String> = repos.ids().map(str::to_string).collect();
    let mut texts: Vec<String> = Vec::new();
    for (repo, entries) in &repos.repos {
        texts.push(repo.clone());
        for (key, id) in entries {
            texts.push(key.clone());
            texts.push(id.clone());
            // A short prefix of the ID, as a user would type it.
            let hex = id.strip_prefix("sha256:").unwrap_or(id);
            if let Some(p) = hex.get(..12) {
                texts.push(p.to_string());
            }
        }
    }
    // Text from the input itself (e.g. a name that is not in the file).
    texts.extend(String::from_utf8_lossy(data).split(['"', ' ', '\n']).map(str::to_string));
    let mut tried = 0;
    for t in texts {
        if tried >= MAX_SPECS {
            break;
        }
        let Ok(spec) = parse(&t) else { continue };
        tried += 1;
        // With and without the imagedb's IDs.
        for image_ids in [&ids[..], &[]] {
            if let Ok(id) = lookup(&repos, &spec, image_ids) {
                assert!(check_image_id(&id).is_ok(), "lookup of {spec} gave {id:?}");
                match &spec {
                    ImageSpec::Id(want) => assert_eq!(&id, want),
                    ImageSpec::NameOrShortId { name, prefix } => {
                        // Either the name matched, or the ID starts with the prefix.
                        let filed = repos.repos.get(&name.familiar_name()).and_then(|m| m.get(&name.familiar_string()));
                        assert!(
                            filed == Some(&id) || id.strip_prefix("sha256:").is_some_and(|h| h.starts_with(prefix.as_str())),
                            "lookup of {spec} gave {id:?}"
                        );
                    }
                    ImageSpec::Named(r) => {
                        let filed = repos.repos.get(&r.familiar_name()).and_then(|m| m.get(&r.familiar_string()));
                        assert_eq!(filed, Some(&id), "lookup of {spec}");
                    }
                }
            }
        }
    }
});
