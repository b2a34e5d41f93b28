//! The kernel command line: `split` (the kernel's `next_arg()` quoting) and
//! `Params::parse`, then the path and device-name checks applied to the
//! parameters (`relative_path`, `DeviceSpec::parse`). Input:
//! arbitrary bytes, read as UTF-8 with invalid sequences replaced (as the
//! init reads /proc/cmdline).
#![no_main]

use dockroot::config::{mount_option, relative_path, split, without_option, Arg, Params};
use dockroot::devices::DeviceSpec;
use libfuzzer_sys::fuzz_target;

fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r')
}

fn token(a: &Arg) -> String {
    match &a.value {
        Some(v) => format!("{}={}", a.key, v),
        None => a.key.clone(),
    }
}

fn check(s: &str) {
    let (args, init_args) = split(s);
    // Without quotes, the kernel's rules are plain white-space splitting
    // (a lone `--` hands the rest to init).
    if !s.contains('"') {
        let words: Vec<&str> = s.split(is_space).filter(|w| !w.is_empty()).collect();
        let (ours, init): (&[&str], &[&str]) = match words.iter().position(|w| *w == "--") {
            Some(i) => (&words[..i], &words[i + 1..]),
            None => (&words[..], &[]),
        };
        let got: Vec<String> = args.iter().map(token).collect();
        assert_eq!(got, ours, "split({s:?})");
        assert_eq!(init_args, init, "split({s:?}) init arguments");
        for a in &args {
            assert!(!a.key.is_empty() || a.value.is_none(), "empty key with a value in {s:?}");
        }
    }
    let Ok(p) = Params::parse(&args) else { return };
    assert!(p.device_timeout.as_secs() <= 86_400 * 2);
    for (name, path) in [
        ("docker_path", Some(p.docker_path.as_str())),
        ("toplayer_path", p.toplayer_path.as_deref()),
        ("rw layer", p.rw_subvol().ok().flatten()),
        ("init", p.init.as_deref()),
    ] {
        if let Some(path) = path {
            if let Ok(parts) = relative_path(name, path) {
                for c in &parts {
                    assert!(!c.is_empty() && c != "." && c != ".." && !c.contains('/'), "{name}={path:?}: {c:?}");
                }
            }
        }
    }
    for dev in [p.root.as_deref(), p.toplayer.as_deref()].into_iter().flatten() {
        if let Ok(DeviceSpec::Path(path)) = DeviceSpec::parse(dev) {
            let name = path.strip_prefix("/dev/").unwrap_or_else(|| panic!("{dev:?} gave {path:?}"));
            assert!(name.split('/').all(|c| !c.is_empty() && c != "." && c != ".."), "{dev:?} gave {path:?}");
        }
    }
    if let Some(flags) = p.rootflags.as_deref() {
        let rest = without_option(flags, "subvol");
        assert!(mount_option(&rest, "subvol").is_none(), "without_option({flags:?}) kept subvol: {rest:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    check(&s);
});
