//! Every command's `--help` and `-h` print the usage on stdout and exit 0; an
//! unknown option, a stray argument or an unknown command is a usage error:
//! exit 2, the message and the usage on stderr, nothing on stdout.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

const COMMANDS: [&str; 6] = ["bless", "boot-files", "plan", "rollback", "status", "switch"];

/// `dockroot ARGS`: status, stdout, stderr.
fn dockroot(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dockroot")).args(args).output().expect("running dockroot");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

#[test]
fn help_exits_0_on_stdout() {
    for args in [&["--help"][..], &["-h"], &["help"]] {
        let (code, out, err) = dockroot(args);
        assert_eq!((code, err.as_str()), (0, ""), "{args:?}: {out}{err}");
        assert!(out.contains("usage: dockroot COMMAND") && out.contains("switch"), "{args:?}: {out}");
    }
    let (code, out, _) = dockroot(&["--version"]);
    assert_eq!(code, 0);
    assert_eq!(out, format!("dockroot {}\n", env!("CARGO_PKG_VERSION")));
    for cmd in COMMANDS {
        for help in ["--help", "-h"] {
            // Help wins over everything else on the line, even what would be refused.
            for args in [vec![cmd, help], vec![cmd, "--top", "/nonexistent", help]] {
                let (code, out, err) = dockroot(&args);
                assert_eq!((code, err.as_str()), (0, ""), "{args:?}: {out}{err}");
                assert!(out.starts_with(&format!("usage: dockroot {cmd}")), "{args:?}: {out}");
                assert!(out.contains("exit status:") && out.contains("  2  usage error"), "{args:?}: {out}");
                assert!(!out.contains("PARTITION_OPTIONS"), "{args:?}: {out}");
            }
        }
    }
}

#[test]
fn unknown_options_and_arguments_exit_2() {
    for cmd in COMMANDS {
        for bad in [&["--no-such-option"][..], &["-Z"], &["--top"], &["--top", "/a", "--device", "/b"]] {
            let mut args = vec![cmd];
            args.extend_from_slice(bad);
            let (code, out, err) = dockroot(&args);
            assert_eq!(code, 2, "{args:?}: {out}{err}");
            assert!(out.is_empty(), "{args:?}: {out}");
            assert!(err.starts_with(&format!("dockroot {cmd}: ")), "{args:?}: {err}");
            assert!(err.contains(&format!("usage: dockroot {cmd}")), "{args:?}: {err}");
        }
        let (code, _, err) = dockroot(&[cmd, "--no-such-option"]);
        assert!(err.contains("'--no-such-option'"), "{cmd}: {code} {err}");
    }
    // Stray arguments, where a command takes none (switch takes one image).
    for args in [&["plan", "stray"][..], &["status", "stray"], &["rollback", "stray"], &["switch", "os:1", "os:2"]] {
        let (code, out, err) = dockroot(args);
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert!(out.is_empty(), "{args:?}: {out}");
    }
    for args in [&["frobnicate"][..], &[], &["--frob"]] {
        let (code, out, err) = dockroot(args);
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert!(out.is_empty() && err.contains("usage: dockroot COMMAND"), "{args:?}: {out}{err}");
    }
}
