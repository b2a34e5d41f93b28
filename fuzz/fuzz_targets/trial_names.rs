//! The boot counters' file names (`trial`, one file per image beside the rw
//! layer, read by the init at every boot as untrusted input): parsing never
//! panics; an accepted name round-trips and names only an image ID (no path);
//! the state the boot and `dockroot bless` move to is always nameable; several
//! names merge into one state per image, never a less cautious one.
#![no_main]

use dockroot::trial::{name, on_bless, on_boot, parse_name, read_states, State, Step};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let names: Vec<&str> = text.split('\n').collect();
    for n in &names {
        let Some((hex, state)) = parse_name(n) else { continue };
        assert_eq!(name(&hex, state).as_deref(), Some(*n), "round trip");
        assert!(hex.len() == 64 && !hex.contains('/'));
        for tries in [0, 1, 3, 99, 255] {
            match on_boot(state, tries) {
                Step::Use(next) => {
                    assert!(name(&hex, next).is_some());
                    assert!(matches!(next, State::Trial { .. }));
                }
                Step::Refused => assert!(state.refused()),
                Step::Nothing => assert!(tries == 0 || state == State::Good),
            }
        }
        for good in [true, false] {
            if let Some(to) = on_bless(state, good) {
                assert!(name(&hex, to).is_some());
            }
        }
    }
    let states = read_states(names.iter().copied());
    for (hex, (state, files)) in &states {
        assert!(!files.is_empty());
        for f in files {
            let (h, s) = parse_name(f).expect("only our names are kept");
            assert_eq!(&h, hex);
            // The merged state refuses whenever one of its files does.
            assert!(!s.refused() || state.refused());
        }
    }
});
