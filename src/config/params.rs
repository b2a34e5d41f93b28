//! Every kernel parameter dockroot reads, its default and its validation (pure).
//!
//! [`Params::parse`] turns the command line's tokens into the boot parameters and
//! [`store_options`] into the image stores' options. The parameters of the prior
//! art (`root`, `rootflags`, `rootfstype`, `rw`/`ro`, `init`, `docker_path`,
//! `toplayer`, `toplayerfstype`, `toplayerflags`, `toplayer_path`) keep their
//! meaning; ours are namespaced `dockroot.*`. [`PARAMETERS`] lists them all; a test
//! holds the README's parameter table to it.

use std::time::Duration;

use super::cmdline::Arg;
use crate::error::{Error, Result};
use crate::store::{Platform, StoreKind, StoreOptions};

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

/// Every kernel parameter dockroot reads (the key, without `=`), in the
/// README's order. Any other `dockroot.*` key is warned about and ignored.
pub const PARAMETERS: [&str; 30] = [
    "root",
    "rootflags",
    "dockroot.rw",
    "rootfstype",
    "ro",
    "rw",
    "init",
    "docker_path",
    "toplayer",
    "toplayerfstype",
    "toplayerflags",
    "toplayer_path",
    "dockroot.image",
    "dockroot.timeout",
    "rootwait",
    "rootdelay",
    "dockroot.reboot_delay",
    "dockroot.boot",
    "dockroot.keep",
    "dockroot.tries",
    "dockroot.trial",
    "dockroot.store",
    "dockroot.verify",
    "dockroot.podman_path",
    "dockroot.containerd_path",
    "dockroot.containerd_namespace",
    "dockroot.platform",
    "dockroot.debug",
    "dockroot.kexec",
    "dockroot.kexec_from",
];

/// Test builds only (`--features fault-injection`): `dockroot.fault=`, read by the boot.
pub const FAULT_PARAMETER: &str = "dockroot.fault";

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
    /// `dockroot.kexec=on|off`: boot the image's own kernel when the running one has no modules in it.
    pub kexec: bool,
    /// `dockroot.kexec_from=RELEASE`: set by dockroot on the command line of the kernel it
    /// kexecs into (the release it came from), so that a power-on kexecs at most once.
    pub kexec_from: Option<String>,
    /// `dockroot.boot=`: fresh (default), previous or persist.
    pub mode: BootMode,
    /// `dockroot.keep=`: how many previous roots to keep.
    pub keep: usize,
    /// `dockroot.tries=N`: boots an image may take without being blessed (0: no counting).
    pub tries: u8,
    /// `dockroot.trial=retry`: give a refused image new tries (this boot's target only).
    pub retry: bool,
    /// `dockroot.fault=`: a fault to inject (test builds only; ignored with a
    /// warning otherwise).
    pub fault: Option<String>,
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
            kexec: true,
            kexec_from: None,
            mode: BootMode::Fresh,
            keep: DEFAULT_KEEP,
            tries: crate::trial::DEFAULT_TRIES,
            retry: false,
            fault: None,
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
                "dockroot.kexec" => {
                    p.kexec = match v {
                        None | Some("on") => true,
                        Some("off") => false,
                        Some(other) => {
                            return Err(Error::msg(format!(
                                "kernel parameter dockroot.kexec={other}: expected on or off"
                            )))
                        }
                    }
                }
                "dockroot.kexec_from" => p.kexec_from = Some(text("dockroot.kexec_from")?),
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
                "dockroot.tries" => {
                    let raw = v.unwrap_or("");
                    let max = crate::trial::MAX_TRIES;
                    p.tries = raw.parse().ok().filter(|n| *n <= max).ok_or_else(|| {
                        Error::msg(format!(
                            "kernel parameter dockroot.tries={raw:?}: expected a number from 0 to {max}"
                        ))
                    })?;
                }
                "dockroot.trial" => {
                    p.retry = match v {
                        Some("retry") => true,
                        other => {
                            return Err(Error::msg(format!(
                                "kernel parameter dockroot.trial={}: expected retry",
                                other.unwrap_or("")
                            )))
                        }
                    }
                }
                // The image stores' own parameters ([`store_options`] reads them).
                k if k.starts_with("dockroot.") && PARAMETERS.contains(&k) => {}
                FAULT_PARAMETER if cfg!(feature = "fault-injection") => p.fault = Some(v.unwrap_or("").to_string()),
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

/// The store options from the kernel command line, on top of the defaults
/// for `docker_path`:
///
/// - `dockroot.store=docker|podman|containerd`: search only that kind of store;
///   `dockroot.store=KIND:DRIVER` (`docker:btrfs`, `docker:overlay2`,
///   `podman:btrfs`, `containerd:btrfs`, `containerd:overlayfs`) only that driver;
/// - `dockroot.verify=on|off` (default on);
/// - `dockroot.podman_path=PATH`: Podman's graph root;
/// - `dockroot.containerd_path=PATH[,PATH...]`: containerd roots (replace both defaults);
/// - `dockroot.containerd_namespace=NS` (default `moby`);
/// - `dockroot.platform=OS/ARCH[/VARIANT]` (default: the running one).
///
/// Paths are relative to the root partition's top level; `..` is refused.
pub fn store_options(args: &[Arg], docker_path: &[String]) -> Result<StoreOptions> {
    let mut o = StoreOptions::new(docker_path);
    for a in args {
        let v = a.value.as_deref().unwrap_or("");
        let needs = || Error::msg(format!("kernel parameter {}= needs a value", a.key));
        match a.key.as_str() {
            "dockroot.store" => {
                let (kind, driver) = StoreKind::parse_pin(v)?;
                o.pin = Some(kind);
                o.driver = driver;
            }
            "dockroot.verify" => {
                o.verify = match v {
                    "on" | "1" | "yes" | "true" => true,
                    "off" | "0" | "no" | "false" => false,
                    _ => return Err(Error::msg(format!("kernel parameter dockroot.verify={v:?}: expected on or off"))),
                }
            }
            "dockroot.podman_path" if !v.is_empty() => o.podman_path = relative_path("dockroot.podman_path", v)?,
            "dockroot.containerd_path" if !v.is_empty() => {
                o.containerd_paths = v
                    .split(',')
                    .filter(|p| !p.is_empty())
                    .map(|p| relative_path("dockroot.containerd_path", p))
                    .collect::<Result<_>>()?;
            }
            "dockroot.containerd_namespace" => {
                let ok = !v.is_empty()
                    && v.len() <= 76
                    && v.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
                if !ok {
                    return Err(Error::msg(format!(
                        "kernel parameter dockroot.containerd_namespace={v:?}: expected a containerd namespace name"
                    )));
                }
                o.namespace = v.to_string();
            }
            "dockroot.platform" => {
                let parts: Vec<&str> = v.split('/').collect();
                o.platform = match parts.as_slice() {
                    [os, arch] if !os.is_empty() && !arch.is_empty() => {
                        Platform { os: (*os).into(), architecture: (*arch).into(), variant: None }
                    }
                    [os, arch, var] if !os.is_empty() && !arch.is_empty() && !var.is_empty() => {
                        Platform { os: (*os).into(), architecture: (*arch).into(), variant: Some((*var).into()) }
                    }
                    _ => {
                        return Err(Error::msg(format!(
                            "kernel parameter dockroot.platform={v:?}: expected OS/ARCH or OS/ARCH/VARIANT"
                        )))
                    }
                };
            }
            "dockroot.podman_path" | "dockroot.containerd_path" => return Err(needs()),
            _ => {}
        }
    }
    Ok(o)
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
    use super::super::cmdline::split;
    use super::*;

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
        let p = Params::parse(&split("dockroot.tries=5 dockroot.trial=retry").0).unwrap();
        assert_eq!((p.tries, p.retry), (5, true));
        assert_eq!(Params::parse(&split("").0).unwrap().tries, crate::trial::DEFAULT_TRIES);
        assert_eq!(Params::parse(&split("dockroot.tries=0").0).unwrap().tries, 0);
        assert!(Params::parse(&split("dockroot.tries=100").0).is_err());
        assert!(Params::parse(&split("dockroot.trial=again").0).is_err());
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
    #[test]
    fn store_options_from_the_command_line() {
        let args = |s: &str| super::super::cmdline::split(s).0;
        let docker = vec!["docker".to_string()];
        let o = store_options(&args("root=/dev/vda quiet"), &docker).unwrap();
        assert_eq!(o, StoreOptions::new(&docker));
        let o = store_options(
            &args(
                "dockroot.store=podman dockroot.verify=off dockroot.podman_path=/@/var/lib/containers/storage \
                 dockroot.containerd_path=a/containerd,b dockroot.containerd_namespace=k8s.io dockroot.platform=linux/arm64/v8",
            ),
            &docker,
        )
        .unwrap();
        assert_eq!(o.pin, Some(StoreKind::Podman));
        assert!(!o.verify);
        assert_eq!(o.podman_path, vec!["@", "var", "lib", "containers", "storage"]);
        assert_eq!(o.containerd_paths, vec![vec!["a".to_string(), "containerd".to_string()], vec!["b".to_string()]]);
        assert_eq!(o.namespace, "k8s.io");
        assert_eq!(o.platform.to_string(), "linux/arm64/v8");
        for (bad, want) in [
            ("dockroot.store=lxc", "docker, podman or containerd"),
            ("dockroot.verify=maybe", "expected on or off"),
            ("dockroot.podman_path=../x", "'..' is not allowed"),
            ("dockroot.containerd_path=a,../../b", "'..' is not allowed"),
            ("dockroot.containerd_namespace=a/b", "namespace"),
            ("dockroot.platform=linux", "OS/ARCH"),
            ("dockroot.podman_path=", "needs a value"),
        ] {
            let e = store_options(&args(bad), &docker).unwrap_err().to_string();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }
}
