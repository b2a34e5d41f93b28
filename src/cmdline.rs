//! Stage 2: the kernel command line and the embedded config.
//!
//! Pure: [`split`] tokenises `/proc/cmdline` exactly as the kernel's `next_arg()`
//! does, and [`Params::parse`] turns the tokens into the boot parameters. The
//! parameters of the prior art (`root`, `rootflags`, `rootfstype`, `rw`/`ro`,
//! `init`, `docker_path`, `toplayer`, `toplayerfstype`, `toplayerflags`,
//! `toplayer_path`) keep their meaning; ours are namespaced `dockroot.*`.

use std::time::Duration;

use crate::error::{Error, Result};

/// Path of the embedded config inside the initramfs (the prior art's format).
pub const CONFIG_PATH: &str = "/etc/docker-btrfs.json";
/// Default Docker data directory, relative to the root partition's top level.
pub const DEFAULT_DOCKER_PATH: &str = "var/lib/docker";
/// Default bound on the wait for the root device (no `rootwait`).
pub const DEFAULT_DEVICE_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on the wait for the root device with a bare `rootwait`. The kernel
/// waits forever; an init that must never hang waits long, but not forever.
pub const ROOTWAIT_TIMEOUT: Duration = Duration::from_secs(300);
/// Default delay between a fatal error's message and the reboot.
pub const DEFAULT_REBOOT_DELAY: Duration = Duration::from_secs(30);
/// Default number of previous roots kept (`dockroot.keep=`).
pub const DEFAULT_KEEP: usize = 3;
/// Most previous roots that can be kept.
pub const MAX_KEEP: usize = 100;
/// Longest delay accepted for any `*delay=`/timeout parameter (one day).
const MAX_SECONDS: u64 = 86_400;

/// One `param[=value]` token of the kernel command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arg {
    pub key: String,
    pub value: Option<String>,
}

/// Split a kernel command line into arguments with the kernel's quoting rules
/// (`lib/cmdline.c: next_arg`): arguments are separated by whitespace; double
/// quotes group whitespace; quotes around a whole argument or around a value
/// (`key="a b"`) are removed, other quotes are kept; there are no escapes.
/// Everything after a lone `--` belongs to init and is returned separately.
pub fn split(cmdline: &str) -> (Vec<Arg>, Vec<String>) {
    let mut args = Vec::new();
    let mut rest = cmdline.trim_start_matches(is_space);
    while !rest.is_empty() {
        let (arg, next) = next_arg(rest);
        rest = next.trim_start_matches(is_space);
        if arg.key == "--" && arg.value.is_none() {
            return (args, split_all(rest));
        }
        args.push(arg);
    }
    (args, Vec::new())
}

/// All remaining tokens as plain strings (the init's arguments after `--`).
fn split_all(mut rest: &str) -> Vec<String> {
    let mut out = Vec::new();
    while !rest.is_empty() {
        let (arg, next) = next_arg(rest);
        rest = next.trim_start_matches(is_space);
        out.push(match arg.value {
            Some(v) => format!("{}={}", arg.key, v),
            None => arg.key,
        });
    }
    out
}

fn is_space(c: char) -> bool {
    // The kernel's isspace(): space, \t, \n, \v, \f, \r.
    matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r')
}

/// One step of the kernel's `next_arg()`; `s` starts with a non-space.
fn next_arg(s: &str) -> (Arg, &str) {
    let (quoted, body) = match s.strip_prefix('"') {
        Some(b) => (true, b),
        None => (false, s),
    };
    let mut in_quote = quoted;
    let mut equals: Option<usize> = None;
    let mut end = body.len();
    for (i, c) in body.char_indices() {
        if is_space(c) && !in_quote {
            end = i;
            break;
        }
        // As in the kernel, an '=' at position 0 does not split.
        if equals.is_none() && c == '=' && i > 0 {
            equals = Some(i);
        }
        if c == '"' {
            in_quote = !in_quote;
        }
    }
    let token = &body[..end];
    let rest = body.get(end..).unwrap_or("");
    // A leading quote of the whole argument drops a trailing quote.
    let strip_trailing = |t: &str| -> String { t.strip_suffix('"').unwrap_or(t).to_string() };
    let arg = match equals {
        None => Arg { key: if quoted { strip_trailing(token) } else { token.to_string() }, value: None },
        Some(eq) => {
            let key = token[..eq].to_string();
            let raw = &token[eq + 1..];
            let value = match raw.strip_prefix('"') {
                Some(v) => strip_trailing(v),
                None if quoted => strip_trailing(raw),
                None => raw.to_string(),
            };
            Arg { key, value: Some(value) }
        }
    };
    (arg, rest)
}

/// What to boot (`dockroot.boot=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootMode {
    /// A fresh snapshot of the image with the top layer (the default).
    Fresh,
    /// The newest kept root as it was (rescue): a writable snapshot of it, no top layer.
    Previous,
    /// The current rw layer as it is, changes and all (this once).
    Persist,
}

impl BootMode {
    pub fn name(self) -> &'static str {
        match self {
            BootMode::Fresh => "fresh",
            BootMode::Previous => "previous",
            BootMode::Persist => "persist",
        }
    }
}

/// The boot parameters dockroot understands, after parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    /// `root=`: the partition holding the Docker data directory.
    pub root: Option<String>,
    /// `rootflags=`, as given (passed to the final mount; must name `subvol=`).
    pub rootflags: Option<String>,
    /// `rootfstype=`; without it, the filesystem found on the device.
    pub rootfstype: Option<String>,
    /// `dockroot.rw=NAME`: the rw layer's name, where `rootflags=subvol=`
    /// does not fit (a root partition that is not btrfs).
    pub rw_name: Option<String>,
    /// `ro` (the kernel's default) or `rw`; the last one given wins.
    pub read_only: bool,
    /// `init=`: the program to run in the new root.
    pub init: Option<String>,
    /// `docker_path=`: the Docker data directory relative to the top level.
    pub docker_path: String,
    /// `toplayer=`: the device holding the machine's top layer.
    pub toplayer: Option<String>,
    pub toplayerfstype: Option<String>,
    pub toplayerflags: Option<String>,
    /// `toplayer_path=`: the top layer directory relative to that device's root.
    pub toplayer_path: Option<String>,
    /// `dockroot.image=`: overrides the embedded config's image.
    pub image: Option<String>,
    /// How long to wait for the root device (`dockroot.timeout=`, `rootwait[=N]`).
    pub device_timeout: Duration,
    /// `rootdelay=`: sleep before looking for the root device.
    pub rootdelay: Duration,
    /// `dockroot.reboot_delay=`: seconds between a fatal message and the reboot.
    pub reboot_delay: Duration,
    /// `dockroot.debug`: debug messages on the console too.
    pub debug: bool,
    /// `dockroot.boot=`: fresh (default), previous or persist.
    pub mode: BootMode,
    /// `dockroot.keep=`: how many previous roots to keep.
    pub keep: usize,
    /// Things worth a warning (unknown `dockroot.*` keys, ignored values).
    pub warnings: Vec<String>,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            root: None,
            rootflags: None,
            rootfstype: None,
            rw_name: None,
            read_only: true,
            init: None,
            docker_path: DEFAULT_DOCKER_PATH.to_string(),
            toplayer: None,
            toplayerfstype: None,
            toplayerflags: None,
            toplayer_path: None,
            image: None,
            device_timeout: DEFAULT_DEVICE_TIMEOUT,
            rootdelay: Duration::ZERO,
            reboot_delay: DEFAULT_REBOOT_DELAY,
            debug: false,
            mode: BootMode::Fresh,
            keep: DEFAULT_KEEP,
            warnings: Vec::new(),
        }
    }
}

impl Params {
    /// Parse the arguments of a kernel command line (see [`split`]).
    /// Parameters that do not concern dockroot are ignored. A malformed value
    /// of a parameter dockroot owns is an error naming it.
    pub fn parse(args: &[Arg]) -> Result<Params> {
        let mut p = Params::default();
        let mut explicit_timeout: Option<Duration> = None;
        let mut rootwait: Option<Duration> = None;
        for Arg { key, value } in args {
            let v = value.as_deref();
            let text = |name: &str| -> Result<String> {
                match v {
                    Some(s) if !s.is_empty() => Ok(s.to_string()),
                    _ => Err(Error::msg(format!("kernel parameter {name}= needs a value"))),
                }
            };
            match key.as_str() {
                "root" => p.root = Some(text("root")?),
                "rootflags" => p.rootflags = Some(text("rootflags")?),
                "rootfstype" => p.rootfstype = Some(text("rootfstype")?),
                "ro" if v.is_none() => p.read_only = true,
                "rw" if v.is_none() => p.read_only = false,
                "init" => p.init = Some(text("init")?),
                "docker_path" => p.docker_path = text("docker_path")?,
                "toplayer" => p.toplayer = Some(text("toplayer")?),
                "toplayerfstype" => p.toplayerfstype = Some(text("toplayerfstype")?),
                "toplayerflags" => p.toplayerflags = Some(text("toplayerflags")?),
                "toplayer_path" => p.toplayer_path = Some(text("toplayer_path")?),
                "rootwait" => {
                    rootwait = Some(match v {
                        None => ROOTWAIT_TIMEOUT,
                        Some(s) => seconds("rootwait", s)?,
                    })
                }
                "rootdelay" => p.rootdelay = seconds("rootdelay", v.unwrap_or(""))?,
                "dockroot.image" => p.image = Some(text("dockroot.image")?),
                "dockroot.rw" => p.rw_name = Some(text("dockroot.rw")?),
                "dockroot.timeout" => explicit_timeout = Some(seconds("dockroot.timeout", v.unwrap_or(""))?),
                "dockroot.reboot_delay" => p.reboot_delay = seconds("dockroot.reboot_delay", v.unwrap_or(""))?,
                "dockroot.debug" => p.debug = true,
                "dockroot.boot" => {
                    p.mode = match v {
                        Some("fresh") => BootMode::Fresh,
                        Some("previous") => BootMode::Previous,
                        Some("persist") => BootMode::Persist,
                        other => {
                            return Err(Error::msg(format!(
                                "kernel parameter dockroot.boot={}: expected fresh, previous or persist",
                                other.unwrap_or("")
                            )))
                        }
                    }
                }
                "dockroot.keep" => {
                    let raw = v.unwrap_or("");
                    p.keep = raw.parse().ok().filter(|n| *n <= MAX_KEEP).ok_or_else(|| {
                        Error::msg(format!(
                            "kernel parameter dockroot.keep={raw:?}: expected a number from 0 to {MAX_KEEP}"
                        ))
                    })?;
                }
                // The image stores' own parameters (store::options_from_args reads them).
                k if crate::store::STORE_PARAMS.contains(&k) => {}
                // Test builds only (boot.rs reads it).
                "dockroot.fault" if cfg!(feature = "fault-injection") => {}
                k if k.starts_with("dockroot.") => {
                    p.warnings.push(format!("unknown kernel parameter {k} ignored"));
                }
                _ => {}
            }
        }
        p.device_timeout = explicit_timeout.or(rootwait).unwrap_or(DEFAULT_DEVICE_TIMEOUT);
        Ok(p)
    }

    /// The rw layer's path from `dockroot.rw=NAME` or `rootflags=subvol=NAME`,
    /// if given; both, naming different paths, is an error.
    pub fn rw_subvol(&self) -> Result<Option<&str>> {
        let subvol = self.rootflags.as_deref().and_then(|f| mount_option(f, "subvol"));
        match (self.rw_name.as_deref(), subvol) {
            (Some(a), Some(b)) if a.trim_matches('/') != b.trim_matches('/') => Err(Error::msg(format!(
                "dockroot.rw={a} and rootflags=subvol={b} name different rw layers: give one of them"
            ))),
            (Some(a), _) => Ok(Some(a)),
            (None, b) => Ok(b),
        }
    }
}

/// The value of `name=` in a comma-separated mount option string.
pub fn mount_option<'a>(options: &'a str, name: &str) -> Option<&'a str> {
    options.split(',').filter_map(|o| o.split_once('=')).filter(|(k, _)| *k == name).map(|(_, v)| v).next_back()
}

/// A mount option string with `name=...` options removed.
pub fn without_option(options: &str, name: &str) -> String {
    options
        .split(',')
        .filter(|o| !o.is_empty() && o.split_once('=').map(|(k, _)| k) != Some(name) && *o != name)
        .collect::<Vec<_>>()
        .join(",")
}

fn seconds(name: &str, value: &str) -> Result<Duration> {
    let n: u64 = value
        .parse()
        .map_err(|_| Error::msg(format!("kernel parameter {name}={value:?}: expected a whole number of seconds")))?;
    if n > MAX_SECONDS {
        return Err(Error::msg(format!("kernel parameter {name}={n}: more than {MAX_SECONDS} seconds")));
    }
    Ok(Duration::from_secs(n))
}

/// Check a path given on the command line and turn it into components
/// relative to a filesystem's top level. Leading slashes are allowed (as for
/// btrfs' `subvol=`) and mean the top level; empty and `.` components are
/// dropped; `..` is refused, so no parameter can point outside the partition.
pub fn relative_path(param: &str, path: &str) -> Result<Vec<String>> {
    if path.len() > 4096 {
        return Err(Error::msg(format!("{param}: path is longer than 4096 bytes")));
    }
    if path.contains('\0') {
        return Err(Error::msg(format!("{param}={path:?}: path contains a NUL byte")));
    }
    let mut out = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                return Err(Error::msg(format!(
                    "{param}={path:?}: '..' is not allowed: paths are relative to the partition's top level"
                )))
            }
            c if c.len() > 255 => {
                return Err(Error::msg(format!("{param}={path:?}: a path component is longer than 255 bytes")))
            }
            c => out.push(c.to_string()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(key: &str, value: Option<&str>) -> Arg {
        Arg { key: key.into(), value: value.map(Into::into) }
    }

    #[test]
    fn split_plain_and_values() {
        let (args, init) = split("  root=LABEL=linux rw  quiet\tinit=/sbin/init\n");
        assert_eq!(
            args,
            vec![a("root", Some("LABEL=linux")), a("rw", None), a("quiet", None), a("init", Some("/sbin/init"))]
        );
        assert!(init.is_empty());
    }

    #[test]
    fn split_quotes_like_the_kernel() {
        let (args, _) = split(r#"a="b c" "d=e f" "g h" x="y"z p=q"r s"t"#);
        assert_eq!(
            args,
            vec![
                a("a", Some("b c")),
                a("d", Some("e f")),
                a("g h", None),
                // A value that starts with a quote loses it, and a trailing quote.
                a("x", Some("y\"z")),
                // Quotes inside a value group spaces and are kept.
                a("p", Some("q\"r s\"t")),
            ]
        );
    }

    #[test]
    fn split_unterminated_quote_runs_to_end() {
        let (args, _) = split(r#"a="b c d"#);
        assert_eq!(args, vec![a("a", Some("b c d"))]);
    }

    #[test]
    fn split_equals_at_start_is_not_a_separator() {
        let (args, _) = split("=x y==z");
        assert_eq!(args, vec![a("=x", None), a("y", Some("=z"))]);
    }

    #[test]
    fn split_double_dash_gives_init_args() {
        let (args, init) = split("root=/dev/vda -- single  x=1 \"two words\"");
        assert_eq!(args, vec![a("root", Some("/dev/vda"))]);
        assert_eq!(init, vec!["single", "x=1", "two words"]);
    }

    #[test]
    fn split_handles_garbage_without_panicking() {
        for s in ["\"", "\"\"", "=", "==", "\"=\"", "a=\"", " \u{0} \u{ff}é\"=é", "--", "-- --"] {
            let _ = split(s);
        }
        let long = "x".repeat(4096);
        let (args, _) = split(&long);
        assert_eq!(args.len(), 1);
    }

    #[test]
    fn params_prior_art_line() {
        let (args, _) = split(
            "root=LABEL=linux rootflags=subvol=docker_rwlayer rw docker_path=docker \
             toplayer=LABEL=linux toplayer_path=boot_docker",
        );
        let p = Params::parse(&args).unwrap();
        assert_eq!(p.root.as_deref(), Some("LABEL=linux"));
        assert_eq!(p.rw_subvol().unwrap(), Some("docker_rwlayer"));
        assert!(!p.read_only);
        assert_eq!(p.docker_path, "docker");
        assert_eq!(p.toplayer.as_deref(), Some("LABEL=linux"));
        assert_eq!(p.toplayer_path.as_deref(), Some("boot_docker"));
        assert_eq!(p.device_timeout, DEFAULT_DEVICE_TIMEOUT);
    }

    #[test]
    fn params_defaults() {
        let p = Params::parse(&[]).unwrap();
        assert!(p.read_only, "the kernel mounts root read-only unless rw is given");
        assert_eq!(p.docker_path, DEFAULT_DOCKER_PATH);
        assert_eq!(p.reboot_delay, DEFAULT_REBOOT_DELAY);
        assert_eq!(p.rw_subvol().unwrap(), None);
    }

    #[test]
    fn rw_layer_name_from_either_parameter() {
        let rw = |cmd: &str| Params::parse(&split(cmd).0).unwrap().rw_subvol().map(|o| o.map(str::to_string));
        assert_eq!(rw("dockroot.rw=roots/rw").unwrap().as_deref(), Some("roots/rw"));
        assert_eq!(rw("rootflags=subvol=/rw dockroot.rw=rw").unwrap().as_deref(), Some("rw"));
        let e = rw("rootflags=subvol=a dockroot.rw=b").unwrap_err().to_string();
        assert!(e.contains("dockroot.rw=b") && e.contains("subvol=a"), "{e}");
        assert!(Params::parse(&split("dockroot.rw=").0).is_err());
    }

    #[test]
    fn params_waits() {
        let p = Params::parse(&split("rootwait").0).unwrap();
        assert_eq!(p.device_timeout, ROOTWAIT_TIMEOUT);
        let p = Params::parse(&split("rootwait=7 rootdelay=2").0).unwrap();
        assert_eq!(p.device_timeout, Duration::from_secs(7));
        assert_eq!(p.rootdelay, Duration::from_secs(2));
        let p = Params::parse(&split("dockroot.timeout=3 rootwait").0).unwrap();
        assert_eq!(p.device_timeout, Duration::from_secs(3));
        let e = Params::parse(&split("rootdelay=soon").0).unwrap_err();
        assert!(e.to_string().contains("rootdelay=\"soon\""), "{e}");
        assert!(Params::parse(&split("dockroot.timeout=99999999").0).is_err());
    }

    #[test]
    fn params_filesystem_types_flags_and_waits() {
        let p = Params::parse(
            &split(
                "root=LABEL=r rootfstype=btrfs toplayer=LABEL=m toplayerfstype=ext4 \
                 toplayerflags=ro,noload rootdelay=2 rootwait toplayer_path=/machine",
            )
            .0,
        )
        .unwrap();
        assert_eq!(p.rootfstype.as_deref(), Some("btrfs"));
        assert_eq!(p.toplayerfstype.as_deref(), Some("ext4"));
        // Mount options are kept whole, commas and all, for the mount call.
        assert_eq!(p.toplayerflags.as_deref(), Some("ro,noload"));
        assert_eq!(p.rootdelay, Duration::from_secs(2));
        assert_eq!(p.device_timeout, ROOTWAIT_TIMEOUT, "a bare rootwait waits long");
        assert_eq!(p.toplayer_path.as_deref(), Some("/machine"));
        // Defaults: no types or flags, no delay.
        let d = Params::parse(&[]).unwrap();
        assert_eq!((d.rootfstype, d.toplayerfstype, d.toplayerflags), (None, None, None));
        assert_eq!(d.rootdelay, Duration::ZERO);
        // Quoted flags keep their spaces; the last of each wins.
        let p = Params::parse(
            &split(r#"toplayerflags="subvol=my top,ro" rootfstype=ext4 rootfstype=xfs rootdelay=9 rootdelay=0"#).0,
        )
        .unwrap();
        assert_eq!(p.toplayerflags.as_deref(), Some("subvol=my top,ro"));
        assert_eq!(p.rootfstype.as_deref(), Some("xfs"));
        assert_eq!(p.rootdelay, Duration::ZERO);
        // rootwait with a value bounds the wait; dockroot.timeout beats it in either order.
        assert_eq!(Params::parse(&split("rootwait=0").0).unwrap().device_timeout, Duration::ZERO);
        let p = Params::parse(&split("rootwait dockroot.timeout=4").0).unwrap();
        assert_eq!(p.device_timeout, Duration::from_secs(4));
        // Malformed or empty values are errors naming the parameter.
        for (cmd, want) in [
            ("rootfstype=", "rootfstype= needs a value"),
            ("toplayerfstype", "toplayerfstype= needs a value"),
            ("toplayerflags=", "toplayerflags= needs a value"),
            ("rootdelay", "rootdelay=\"\": expected a whole number of seconds"),
            ("rootdelay=-1", "rootdelay=\"-1\""),
            ("rootdelay=1.5", "rootdelay=\"1.5\""),
            ("rootdelay=86401", "rootdelay=86401: more than 86400 seconds"),
            ("rootwait=soon", "rootwait=\"soon\""),
        ] {
            let e = Params::parse(&split(cmd).0).unwrap_err().to_string();
            assert!(e.contains(want), "{cmd}: {e}");
        }
    }

    #[test]
    fn params_last_wins_and_unknown_warns() {
        let p = Params::parse(&split("rw ro root=/dev/a root=/dev/b dockroot.imgae=x dockroot.image=os:1").0).unwrap();
        assert!(p.read_only);
        assert_eq!(p.root.as_deref(), Some("/dev/b"));
        assert_eq!(p.image.as_deref(), Some("os:1"));
        assert_eq!(p.warnings.len(), 1);
        assert!(p.warnings[0].contains("dockroot.imgae"));
    }

    #[test]
    fn params_empty_values_are_errors() {
        for s in ["root=", "init", "dockroot.image=", "toplayer_path"] {
            let e = Params::parse(&split(s).0).unwrap_err();
            assert!(e.to_string().contains("needs a value"), "{s}: {e}");
        }
    }

    #[test]
    fn boot_mode_and_keep() {
        let p = Params::parse(&[]).unwrap();
        assert_eq!((p.mode, p.keep), (BootMode::Fresh, DEFAULT_KEEP));
        let p = Params::parse(&split("dockroot.boot=previous dockroot.keep=0").0).unwrap();
        assert_eq!((p.mode, p.keep), (BootMode::Previous, 0));
        assert_eq!(Params::parse(&split("dockroot.boot=persist").0).unwrap().mode, BootMode::Persist);
        let e = Params::parse(&split("dockroot.boot=yesterday").0).unwrap_err().to_string();
        assert!(e.contains("dockroot.boot=yesterday") && e.contains("fresh, previous or persist"), "{e}");
        assert!(Params::parse(&split("dockroot.keep=101").0).is_err());
        assert!(Params::parse(&split("dockroot.keep=-1").0).is_err());
    }

    #[test]
    fn mount_options() {
        assert_eq!(mount_option("compress=zstd,subvol=/a/b,noatime", "subvol"), Some("/a/b"));
        assert_eq!(mount_option("subvol=a,subvol=b", "subvol"), Some("b"));
        assert_eq!(mount_option("subvolid=5", "subvol"), None);
        assert_eq!(without_option("subvol=a,compress=zstd,subvolid=5,,ro", "subvol"), "compress=zstd,subvolid=5,ro");
    }

    #[test]
    fn relative_paths() {
        assert_eq!(relative_path("p", "/var/lib//docker/").unwrap(), vec!["var", "lib", "docker"]);
        assert_eq!(relative_path("p", "./docker").unwrap(), vec!["docker"]);
        assert!(relative_path("p", "/").unwrap().is_empty());
        let e = relative_path("docker_path", "a/../../etc").unwrap_err();
        assert!(e.to_string().contains("'..' is not allowed"), "{e}");
        assert!(relative_path("p", &"x".repeat(300)).is_err());
        assert!(relative_path("p", "a\0b").is_err());
    }
}
