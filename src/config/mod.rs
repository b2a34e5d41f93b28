//! Stage 2: the boot's configuration, read once. [`BootConfig::parse`] takes the
//! kernel command line and the initramfs's embedded config and checks every
//! parameter; no other module reads raw parameters. The init, `dockroot plan`
//! and the tests build it the same way.
//!
//! - [`cmdline`]: the kernel's tokenisation of `/proc/cmdline`;
//! - [`params`]: every parameter, its default and its validation;
//! - here: the whole [`BootConfig`], and the checked paths of the [`RootPlan`].

pub mod cmdline;
pub mod params;

pub use cmdline::{split, Arg};
pub use params::*;

use crate::error::{Context, Error, Result};
use crate::reference::{self, ImageSpec};
use crate::store::StoreOptions;

/// Everything the command line and the embedded config say, checked.
#[derive(Debug, Clone)]
pub struct BootConfig {
    /// The parameters as given (with their defaults).
    pub params: Params,
    /// The checked device and paths.
    pub root: RootPlan,
    /// Where to look for the image and what to check.
    pub store: StoreOptions,
    /// The image to boot: `dockroot.image=`, else the embedded config's.
    pub image: ImageSpec,
    /// The kernel command line as read (passed on to a kernel dockroot kexecs into).
    pub cmdline: String,
}

/// The embedded config as read: where it is (as shown in messages) and its bytes.
#[derive(Debug, Clone)]
pub struct Embedded {
    pub shown: String,
    pub bytes: Vec<u8>,
}

impl BootConfig {
    /// Check the kernel command line `cmdline`. `embedded` reads the embedded
    /// config (`None`: there is none); it is read only when the command line
    /// names no image (`dockroot.image=`), so a command line can override a
    /// broken one.
    pub fn parse(cmdline: &str, embedded: impl FnOnce() -> Result<Option<Embedded>>) -> Result<BootConfig> {
        BootConfig::new(Params::from_cmdline(cmdline)?, cmdline, embedded)
    }

    /// The rest of [`parse`](Self::parse), once `params` (from `cmdline`) are
    /// known: the boot uses what they say about failing (the reboot delay,
    /// debug) before anything else can fail.
    pub fn new(
        params: Params,
        cmdline: &str,
        embedded: impl FnOnce() -> Result<Option<Embedded>>,
    ) -> Result<BootConfig> {
        let image = match &params.image {
            Some(img) => reference::parse(img).context(|| format!("dockroot.image={img}"))?,
            None => match embedded()? {
                Some(e) => reference::from_prior_art_config(&e.bytes).context(|| format!("in {}", e.shown))?,
                None => {
                    return Err(Error::msg(format!(
                        "no image to boot: dockroot.image= is not set and there is no embedded config \
                         ({CONFIG_PATH} in the initramfs)"
                    )))
                }
            },
        };
        let root = RootPlan::from_params(&params)?;
        let store = store_options(&split(cmdline).0, &root.docker_path).context(|| "in the kernel command line")?;
        Ok(BootConfig { params, root, store, image, cmdline: cmdline.to_string() })
    }
}

impl Params {
    /// The parameters of a kernel command line.
    pub fn from_cmdline(cmdline: &str) -> Result<Params> {
        Params::parse(&split(cmdline).0).context(|| "in the kernel command line")
    }
}

/// Read an embedded config file: `None` when there is none.
pub fn read_embedded(path: &std::path::Path) -> Result<Option<Embedded>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(Embedded { shown: path.display().to_string(), bytes })),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::with(format!("reading {}", path.display()), e)),
    }
}

/// The checked, pure part of the plan: which device, which paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootPlan {
    pub root: String,
    /// `rootfstype=`, if given; else the filesystem found on the device.
    pub fstype: Option<String>,
    pub rw_subvol: Vec<String>,
    pub docker_path: Vec<String>,
    /// rootflags without subvol=/subvolid=, for the staging mount.
    pub staging_flags: String,
    /// toplayer_path below the toplayer filesystem's root, if any.
    pub toplayer_path: Option<Vec<String>>,
}

impl RootPlan {
    /// The top layer directory below the root partition's top level, when
    /// `toplayer=` is the root partition: `toplayerflags=subvol=` then
    /// `toplayer_path=` (None without `toplayer_path=`).
    pub fn toplayer_on_root(&self, p: &Params) -> Result<Option<Vec<String>>> {
        let Some(path) = &self.toplayer_path else { return Ok(None) };
        let mut parts = p
            .toplayerflags
            .as_deref()
            .and_then(|f| mount_option(f, "subvol"))
            .map(|s| relative_path("toplayerflags=subvol", s))
            .transpose()?
            .unwrap_or_default();
        parts.extend(path.iter().cloned());
        Ok(Some(parts))
    }

    /// The filesystem types this boot mounts, as far as the command line
    /// tells before any device is read: `rootfstype=` and `toplayerfstype=`,
    /// or btrfs where `rootflags=`/`toplayerflags=` name a subvolume (only
    /// btrfs has that option). The boot loads their modules at once.
    pub fn expected_filesystems(p: &Params) -> Vec<&str> {
        fn guess<'a>(fstype: &'a Option<String>, flags: &Option<String>) -> Option<&'a str> {
            match (fstype, flags) {
                (Some(t), _) => Some(t.as_str()),
                (None, Some(f)) if mount_option(f, "subvol").is_some() || mount_option(f, "subvolid").is_some() => {
                    Some("btrfs")
                }
                _ => None,
            }
        }
        let mut out: Vec<&str> = Vec::new();
        for t in [guess(&p.rootfstype, &p.rootflags), guess(&p.toplayerfstype, &p.toplayerflags)].into_iter().flatten()
        {
            if !out.contains(&t) {
                out.push(t);
            }
        }
        out
    }

    pub fn from_params(p: &Params) -> Result<RootPlan> {
        let root = p.root.clone().context(|| "root= is not set: it must name the partition with the Docker data")?;
        let fstype = p.rootfstype.clone();
        let subvol = p.rw_subvol()?.context(|| {
            "rootflags=subvol=NAME is not set (nor dockroot.rw=NAME): it names the rw layer \
             (a root dockroot creates at every boot)"
        })?;
        let rw_subvol = relative_path("rootflags=subvol", subvol)?;
        if rw_subvol.is_empty() {
            return Err(Error::msg(
                "the rw layer's name (rootflags=subvol= or dockroot.rw=) is the top level; it must name the rw layer",
            ));
        }
        let docker_path = relative_path("docker_path", &p.docker_path)?;
        if docker_path.starts_with(&rw_subvol) || rw_subvol.starts_with(&docker_path) {
            return Err(Error::msg(format!(
                "docker_path={} and the rw layer {} overlap: the rw layer would replace Docker's data",
                p.docker_path, subvol
            )));
        }
        let flags = p.rootflags.clone().unwrap_or_default();
        let staging_flags = without_option(&without_option(&flags, "subvol"), "subvolid");
        let toplayer_path = p.toplayer_path.as_deref().map(|t| relative_path("toplayer_path", t)).transpose()?;
        Ok(RootPlan { root, fstype, rw_subvol, docker_path, staging_flags, toplayer_path })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(cmd: &str) -> Result<RootPlan> {
        RootPlan::from_params(&Params::parse(&split(cmd).0).unwrap())
    }

    #[test]
    fn plan_from_prior_art_cmdline() {
        let p = plan("root=LABEL=linux rootflags=subvol=docker_rwlayer,compress=zstd docker_path=docker toplayer_path=/boot_docker").unwrap();
        assert_eq!(p.rw_subvol, vec!["docker_rwlayer"]);
        assert_eq!(p.docker_path, vec!["docker"]);
        assert_eq!(p.staging_flags, "compress=zstd");
        assert_eq!(p.fstype, None);
        assert_eq!(p.toplayer_path, Some(vec!["boot_docker".to_string()]));
    }

    #[test]
    fn the_command_line_tells_which_filesystems_to_load_early() {
        let expected = |cmd: &str| RootPlan::expected_filesystems(&Params::parse(&split(cmd).0).unwrap()).join(" ");
        assert_eq!(expected("root=/dev/vda rootflags=subvol=rw"), "btrfs");
        assert_eq!(expected("root=/dev/vda rootflags=compress=zstd,subvolid=256"), "btrfs");
        assert_eq!(expected("root=/dev/vda rootflags=subvol=rw toplayerflags=subvol=top"), "btrfs");
        assert_eq!(expected("root=/dev/vda rootfstype=xfs dockroot.rw=rw toplayerfstype=vfat"), "xfs vfat");
        assert_eq!(expected("root=/dev/vda rootfstype=ext4 rootflags=subvol=rw"), "ext4");
        assert_eq!(expected("root=/dev/vda dockroot.rw=rw rootflags=noatime toplayer=/dev/vdb"), "");
    }

    #[test]
    fn plan_errors_name_the_parameter() {
        let cases = [
            ("rootflags=subvol=rw", "root= is not set"),
            ("root=/dev/vda", "rootflags=subvol=NAME is not set (nor dockroot.rw=NAME)"),
            ("root=/dev/vda rootflags=subvol=/", "is the top level"),
            ("root=/dev/vda rootflags=subvol=../x", "'..' is not allowed"),
            ("root=/dev/vda dockroot.rw=a rootflags=subvol=b", "name different rw layers"),
            ("root=/dev/vda rootflags=subvol=rw docker_path=/var/../../x", "'..' is not allowed"),
            ("root=/dev/vda rootflags=subvol=var docker_path=var/lib/docker", "overlap"),
            ("root=/dev/vda rootflags=subvol=rw toplayer_path=a/../..", "'..' is not allowed"),
        ];
        for (cmd, want) in cases {
            let e = plan(cmd).unwrap_err().to_string();
            assert!(e.contains(want), "{cmd}: {e}");
        }
    }

    fn config(cmd: &str, embedded: Option<&str>) -> Result<BootConfig> {
        BootConfig::parse(cmd, || Ok(embedded.map(|b| Embedded { shown: "/etc/x.json".into(), bytes: b.into() })))
    }

    #[test]
    fn the_image_comes_from_the_command_line_or_the_embedded_config() {
        let base = "root=/dev/vda rootflags=subvol=rw";
        let c = config(&format!("{base} dockroot.image=os:1"), None).unwrap();
        assert_eq!(c.image, reference::parse("os:1").unwrap());
        let c = config(base, Some(r#"{"docker_image":"os","docker_tag":"2"}"#)).unwrap();
        assert_eq!(c.image, reference::parse("os:2").unwrap());
        // The command line wins, and a broken embedded config is then never read.
        let c = BootConfig::parse(&format!("{base} dockroot.image=os:1"), || Err(Error::msg("unreadable"))).unwrap();
        assert_eq!(c.image, reference::parse("os:1").unwrap());
        let e = config(base, None).unwrap_err().to_string();
        assert!(e.contains("no image to boot") && e.contains(CONFIG_PATH), "{e}");
        let e = config(base, Some("{")).unwrap_err().to_string();
        assert!(e.contains("in /etc/x.json"), "{e}");
        let e = config(&format!("{base} dockroot.image=../x"), None).unwrap_err().to_string();
        assert!(e.contains("dockroot.image=../x"), "{e}");
        let e = config(&format!("{base} dockroot.image=os dockroot.verify=maybe"), None).unwrap_err().to_string();
        assert!(e.contains("in the kernel command line") && e.contains("dockroot.verify"), "{e}");
        assert_eq!(config(&format!("{base} dockroot.image=os docker_path=d"), None).unwrap().store.docker_path, ["d"]);
    }

    /// The README's kernel parameter table lists exactly [`PARAMETERS`], in order,
    /// with the defaults the code has.
    #[test]
    fn the_readme_parameter_table_is_the_code() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
        let section = readme.split("\n## Kernel parameters").nth(1).unwrap().split("\n## ").next().unwrap();
        let mut keys = Vec::new();
        let mut defaults = std::collections::BTreeMap::new();
        for row in section.lines().filter(|l| l.starts_with("| `")) {
            let cells: Vec<&str> = row.split(" | ").collect();
            for name in cells[0].trim_start_matches("| ").split(" / ") {
                let name = name.trim_matches('`');
                let key = name.split('=').next().unwrap();
                if keys.last().map(String::as_str) != Some(key) {
                    keys.push(key.to_string());
                }
                defaults.insert(key.to_string(), cells[1].to_string());
            }
        }
        assert_eq!(keys, PARAMETERS, "the README's table (left) and config::PARAMETERS (right) differ");
        let d = Params::default();
        let documented = [
            ("docker_path", format!("`{}`", DEFAULT_DOCKER_PATH)),
            ("dockroot.timeout", format!("`{}`", DEFAULT_DEVICE_TIMEOUT.as_secs())),
            ("dockroot.reboot_delay", format!("`{}`", DEFAULT_REBOOT_DELAY.as_secs())),
            ("dockroot.keep", format!("`{}`", DEFAULT_KEEP)),
            ("dockroot.boot", format!("`{}`", d.mode.name())),
            ("rootdelay", format!("`{}`", d.rootdelay.as_secs())),
            ("ro", format!("`{}`", if d.read_only { "ro" } else { "rw" })),
            ("dockroot.containerd_namespace", format!("`{}`", StoreOptions::new(&[]).namespace)),
            ("dockroot.podman_path", format!("`{}`", StoreOptions::new(&[]).podman_path.join("/"))),
        ];
        for (key, want) in documented {
            assert_eq!(defaults[key], want, "the README's default for {key}");
        }
        let rootwait = section.lines().find(|l| l.starts_with("| `rootwait`")).unwrap();
        assert!(rootwait.contains(&format!("up to {} s", ROOTWAIT_TIMEOUT.as_secs())), "{rootwait}");
        let keep = section.lines().find(|l| l.starts_with("| `dockroot.keep")).unwrap();
        assert!(keep.contains(&format!("(0 to {MAX_KEEP})")), "{keep}");
    }

    /// Every listed parameter is read: none is warned about as unknown.
    #[test]
    fn every_listed_parameter_is_read() {
        for key in PARAMETERS {
            for arg in [key.to_string(), format!("{key}=1")] {
                if let Ok(p) = Params::parse(&split(&arg).0) {
                    assert!(p.warnings.is_empty(), "{arg}: {:?}", p.warnings);
                }
            }
        }
        let p = Params::parse(&split("dockroot.nonsense=1").0).unwrap();
        assert_eq!(p.warnings, ["unknown kernel parameter dockroot.nonsense ignored"]);
    }
}
