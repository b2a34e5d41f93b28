//! Command line of `dockroot-mkinitramfs`, split into options and values by
//! `lexopt`; the rules (required, once only, non-empty, --hostonly only) are here.

use std::path::PathBuf;

use dockroot::error::{Error, Result};
use lexopt::Arg::{Long, Short, Value};

use crate::build::{Commands, Options, DEFAULT_DRIVERS, DEFAULT_FILESYSTEMS};
use crate::compress::Compression;

/// What the command line asks for.
#[derive(Debug)]
pub enum Command {
    Help,
    Version,
    Build(Box<Options>),
    /// `--update` or `--remove`: the packages' rebuild of installed kernels' images.
    Update(crate::update::Request),
    /// `--list FILE [--json]`: what an initramfs holds.
    List {
        file: String,
        json: bool,
    },
}

/// The `--help` text.
pub fn help() -> String {
    let filesystems = DEFAULT_FILESYSTEMS.join(" ");
    let drivers = DEFAULT_DRIVERS.join(" ");
    format!(
        "\
dockroot-mkinitramfs {version}: build the dockroot initramfs.

Usage:
  dockroot-mkinitramfs --kernel-modules /lib/modules/RELEASE --config FILE --output FILE
                       [--module NAME ...] [--hostonly [--sysfs DIR] [--mounts FILE]]
                       [--init PATH] [--commands PATH|none] [--compression zstd|gzip|none]
                       [--kernel-release RELEASE]
                       [--firmware-dir DIR] [--keep-compressed] [--kernel-config FILE]
  dockroot-mkinitramfs --update RELEASE|--all [--output FILE] [--root DIR]
  dockroot-mkinitramfs --remove RELEASE [--output FILE] [--root DIR]
  dockroot-mkinitramfs --list FILE [--json]

Writes a newc cpio, compressed, holding:
  /init                     the static dockroot init (--init)
  /usr/lib/dockroot/dockroot  the static dockroot commands (--commands), which the init
                            leaves at /run/dockroot/dockroot for the booted system
  /etc/docker-btrfs.json    the config (--config): {{\"docker_image\": \"...\", \"docker_tag\": \"...\"}}
  /dev/console              so the kernel gives /init its stdio
  /dev /proc /sys /run /etc empty mount points
  /lib/modules/RELEASE/...  the kernel modules and all they need, decompressed, never stripped
  /lib/modules/dockroot-modules.index  what to load when, in which order, and the
                            modules' device aliases (modules.alias patterns)
  /lib/firmware/...         firmware files the modules name (modinfo firmware=), if found

Which modules:
  generic (the default, no --module, no --hostonly): one image for any machine.
    Loaded when the init is about to mount one (the type from rootfstype=, or
    btrfs when rootflags= names a subvolume: at once; else from the device's
    superblock), the filesystems:
      {filesystems}
    Loaded when the init finds a device whose modalias matches one of their
    aliases (the devices of /sys/bus and /sys/class, then every uevent), the drivers:
      {drivers}
  --module NAME: only these (and what they need), loaded at every boot.
  --hostonly: only what this machine needs: the modules whose aliases match the
    modalias strings of its devices (in /sys/bus and /sys/class), loaded when the
    device is found at boot; and at every boot btrfs, the filesystems mounted at
    / and /boot* (from /proc/self/mounts), and any --module names.
  Names of the generic set or the filesystems that this kernel does not have
  (built in, or not shipped) are skipped with a note.

Options:
  --kernel-modules DIR   the kernel's modules directory, /lib/modules/RELEASE (required)
  --kernel-release REL   the kernel release the modules must match (default: the name of DIR)
  --module NAME          a module (or alias) to include with its dependencies and soft
                         dependencies; repeat for more. A name this kernel does not have is
                         an error; a built-in one is skipped with a note.
  --hostonly             only what this machine needs (see above)
  --sysfs DIR            the sysfs --hostonly reads (default /sys; for tests)
  --mounts FILE          the mount table --hostonly reads (default /proc/self/mounts; for tests)
  --config FILE          the JSON config with \"docker_image\" (required)
  --output FILE          where to write the image (required)
  --init PATH            the init binary, a static x86-64 executable
                         (default: dockroot-init next to this program)
  --commands PATH|none   the dockroot commands binary (status, switch, ...), a static
                         x86-64 executable the init copies to /run/dockroot/dockroot
                         (default: dockroot next to this program, when it is there;
                         none: leave them out)
  --compression KIND     zstd (default, level {level}), gzip or none
  --firmware-dir DIR     where firmware files are (default: lib/firmware beside DIR's
                         lib/modules, so /lib/firmware for /lib/modules/RELEASE). The
                         kernel loads firmware from the initramfs's /lib/firmware itself
                         (CONFIG_FW_LOADER); a missing file is a note, not an error.
  --keep-compressed      store .ko.xz/.ko.zst/.ko.gz modules as shipped (a smaller image):
                         the kernel decompresses them (finit_module with
                         MODULE_INIT_COMPRESSED_FILE) when its configuration says it
                         can (CONFIG_MODULE_DECOMPRESS and the matching
                         CONFIG_MODULE_COMPRESS_*); the init decompresses the other
                         formats if it was built with `--features decompress-modules`
                         (about 160 KB more init). Refused otherwise: drop the option
                         (modules are then stored decompressed), or give such an --init.
  --kernel-config FILE   the kernel's build configuration (default: boot/config-RELEASE
                         beside DIR's lib/modules, so /boot/config-RELEASE)
  --list FILE            say what the initramfs FILE holds, building nothing: the
                         kernel release, the modules (loaded always or by modalias,
                         in load order, with their sizes), the image the config
                         names, the init's version, the commands, firmware, and the
                         sizes (compressed, uncompressed, per part). Exit 0 when
                         shown, 1 when FILE is unreadable or not a dockroot initramfs.
  --json                 with --list: the same as JSON (schema version {schema},
                         \"dockroot_initramfs_list\": {schema}; see the README)
  -h, --help             this text
  -V, --version          the version

Installed kernels (the kernel hooks of the Debian and Arch packages call this):
  --update RELEASE       build the image of the installed kernel RELEASE (its modules in
                         /usr/lib/modules/RELEASE or /lib/modules/RELEASE) and write it
                         atomically to /boot/initrd.img-RELEASE (or --output FILE)
  --update --all         the same for every kernel that has both /usr/lib/modules/RELEASE
                         (or /lib/modules/RELEASE) and /boot/vmlinuz-RELEASE
  --remove RELEASE       remove /boot/initrd.img-RELEASE (or --output FILE), if it is there
  --root DIR             every path above and below is under DIR (default /)
  The image to boot comes from /etc/docker-btrfs.json when it exists, else from IMAGE=
  in the settings file, /etc/dockroot/mkinitramfs.conf. The init is
  /usr/lib/dockroot/dockroot-init, the commands /usr/bin/dockroot (left out when
  missing). The settings file holds KEY=VALUE lines (# starts a comment; a value may be
  quoted with \" or ', nothing is expanded):
    MODE=generic|hostonly|listed  the generic set, --hostonly, or only MODULES
                         (default generic)
    MODULES=NAME ...     modules loaded at every boot (with generic and hostonly: besides
                         the set), as --module
    COMPRESSION=KIND     zstd (default), gzip or none, as --compression
    IMAGE=REFERENCE      the image to boot when there is no /etc/docker-btrfs.json
  A missing settings file means the defaults. One line per image written, on stderr.

The same inputs give the same bytes: directories first, then files of a kind
together (by extension, then path), uid/gid 0, mtime 0 (or SOURCE_DATE_EPOCH
if set), fixed compression settings.
",
        version = env!("CARGO_PKG_VERSION"),
        level = crate::compress::ZSTD_LEVEL,
        schema = crate::list::SCHEMA_VERSION,
    )
}

/// An option's name (`--name`), or the command `-h`/`--help` or `-V`/`--version`
/// asks for; a short option or a bare value is a usage error.
fn option_name(arg: lexopt::Arg<'_>) -> Result<std::result::Result<String, Command>> {
    match arg {
        Short('h') | Long("help") => Ok(Err(Command::Help)),
        Short('V') | Long("version") => Ok(Err(Command::Version)),
        Long(name) => Ok(Ok(format!("--{name}"))),
        Short(c) => Err(usage(format!("unknown option -{c}"))),
        Value(v) => {
            let v = v.to_string_lossy();
            Err(usage(format!("unexpected argument {v:?}: every value follows its option")))
        }
    }
}

fn usage(msg: impl Into<String>) -> Error {
    Error::msg(format!("{} (see --help)", msg.into()))
}

/// Whether the command line asks for `--update` or `--remove`.
fn is_update(args: &[String]) -> bool {
    args.iter().take_while(|a| *a != "--").any(|a| {
        let name = a.split_once('=').map_or(a.as_str(), |(n, _)| n);
        matches!(name, "--update" | "--remove" | "--all" | "--root")
    })
}

/// Parse `--update RELEASE|--all` or `--remove RELEASE` with `--output` and `--root`.
fn parse_update(args: &[String]) -> Result<Command> {
    use crate::update::{Action, Request};
    let mut update = None::<Option<String>>;
    let mut remove = None;
    let mut all = false;
    let mut output = None;
    let mut root = None;
    let mut parser = lexopt::Parser::from_args(args);
    while let Some(arg) = parser.next().map_err(|e| usage(e.to_string()))? {
        let opt = match option_name(arg)? {
            Ok(opt) => opt,
            Err(command) => return Ok(command),
        };
        let value = |parser: &mut lexopt::Parser| -> Result<String> {
            let v = parser.value().map_err(|_| usage(format!("option {opt} needs a value")))?;
            let v = v.into_string().map_err(|v| usage(format!("option {opt}: {v:?} is not valid UTF-8")))?;
            if v.is_empty() {
                return Err(usage(format!("option {opt} needs a non-empty value")));
            }
            Ok(v)
        };
        let twice = || usage(format!("option {opt} given twice"));
        match opt.as_str() {
            "--all" => {
                if parser.optional_value().is_some() {
                    return Err(usage("option --all takes no value"));
                }
                if all {
                    return Err(twice());
                }
                all = true;
            }
            "--update" => {
                if update.is_some() {
                    return Err(twice());
                }
                // RELEASE, unless --all follows (or the option has no value at all).
                let next = parser.try_raw_args().and_then(|raw| raw.peek().map(|a| a.to_string_lossy().into_owned()));
                let takes = parser.optional_value().map(|v| v.to_string_lossy().into_owned());
                update = Some(match (takes, next) {
                    (Some(v), _) => Some(v),
                    (None, Some(n)) if !n.starts_with('-') => Some(value(&mut parser)?),
                    _ => None,
                });
            }
            "--remove" => {
                if remove.is_some() {
                    return Err(twice());
                }
                remove = Some(value(&mut parser)?);
            }
            "--output" => {
                if output.replace(value(&mut parser)?).is_some() {
                    return Err(twice());
                }
            }
            "--root" => {
                if root.replace(value(&mut parser)?).is_some() {
                    return Err(twice());
                }
            }
            _ => {
                return Err(usage(format!(
                    "unknown option {opt}: --update and --remove take only --all, --output and --root"
                )))
            }
        }
    }
    let action = match (update, remove, all) {
        (Some(_), Some(_), _) => return Err(usage("--update and --remove cannot be combined")),
        (Some(Some(r)), None, false) => Action::Update(r),
        (Some(None), None, true) => Action::UpdateAll,
        (Some(Some(_)), None, true) => return Err(usage("--update takes a RELEASE or --all, not both")),
        (Some(None), None, false) => return Err(usage("--update needs a RELEASE or --all")),
        (None, Some(r), false) => Action::Remove(r),
        (None, Some(_), true) => return Err(usage("--remove takes one RELEASE, not --all")),
        (None, None, _) => return Err(usage("--all and --root go with --update or --remove")),
    };
    if let Action::Update(r) | Action::Remove(r) = &action {
        if !crate::update::is_release_name(r) {
            return Err(usage(format!("{r:?} is not a kernel release (a directory name in /usr/lib/modules)")));
        }
    }
    if action == Action::UpdateAll && output.is_some() {
        return Err(usage("--output names one image: give a RELEASE, not --all"));
    }
    Ok(Command::Update(Request {
        action,
        root: PathBuf::from(root.unwrap_or_else(|| "/".to_owned())),
        output: output.map(PathBuf::from),
    }))
}

/// Parse the arguments (without the program name). `mtime` is the entries' mtime.
pub fn parse(args: &[String], mtime: u32) -> Result<Command> {
    if is_update(args) {
        return parse_update(args);
    }
    let mut kernel_modules = None;
    let mut kernel_release = None;
    let mut modules = Vec::new();
    let mut config = None;
    let mut output = None;
    let mut init = None;
    let mut commands = None;
    let mut compression = None;
    let mut sysfs = None;
    let mut mounts = None;
    let mut firmware_dir = None;
    let mut kernel_config = None;
    let mut hostonly = false;
    let mut keep_compressed = false;
    let mut list = None;
    let mut json = false;
    // The first build option given, to refuse it beside --list.
    let mut build_option: Option<String> = None;

    let mut parser = lexopt::Parser::from_args(args);
    loop {
        // The argument as given, for messages. This command has no short
        // options but -h and -V, and no operands: a lone `-`, a lone `--`
        // (which lexopt takes as the end of options) or a cluster like `-hV`
        // is an unknown option, as it always was.
        let raw = parser.try_raw_args().and_then(|raw| raw.peek().map(|a| a.to_string_lossy().into_owned()));
        if let Some(r) = raw.as_deref() {
            if r == "-" || r == "--" || (r.starts_with('-') && !r.starts_with("--") && r.len() > 2) {
                return Err(usage(format!("unknown option {r}")));
            }
        }
        let Some(arg) = parser.next().map_err(|e| usage(e.to_string()))? else { break };
        let opt = match option_name(arg)? {
            Ok(opt) => opt,
            Err(command) => return Ok(command),
        };
        let opt = opt.as_str();
        if !matches!(opt, "--list" | "--json") && build_option.is_none() {
            build_option = Some(opt.to_owned());
        }
        match opt {
            "--json" => {
                if parser.optional_value().is_some() {
                    return Err(usage("option --json takes no value"));
                }
                json = true;
                continue;
            }
            "--hostonly" | "--keep-compressed" => {
                if parser.optional_value().is_some() {
                    return Err(usage(format!("option {opt} takes no value")));
                }
                let flag = if opt == "--hostonly" { &mut hostonly } else { &mut keep_compressed };
                if *flag {
                    return Err(usage(format!("option {opt} given twice")));
                }
                *flag = true;
                continue;
            }
            "--kernel-modules" | "--kernel-release" | "--module" | "--config" | "--output" | "--init"
            | "--commands" | "--compression" | "--sysfs" | "--mounts" | "--firmware-dir" | "--kernel-config"
            | "--list" => {}
            _ => return Err(usage(format!("unknown option {}", raw.as_deref().unwrap_or(opt)))),
        }
        // The next argument even if it starts with `-`, or the part after `=`.
        let value = parser.value().map_err(|_| usage(format!("option {opt} needs a value")))?;
        let value = value.into_string().map_err(|v| usage(format!("option {opt}: {v:?} is not valid UTF-8")))?;
        if value.is_empty() {
            return Err(usage(format!("option {opt} needs a non-empty value")));
        }
        let once = |slot: &mut Option<String>| -> Result<()> {
            if slot.is_some() {
                return Err(usage(format!("option {opt} given twice")));
            }
            *slot = Some(value.clone());
            Ok(())
        };
        match opt {
            "--kernel-modules" => once(&mut kernel_modules)?,
            "--kernel-release" => once(&mut kernel_release)?,
            "--module" => modules.push(value.clone()),
            "--config" => once(&mut config)?,
            "--output" => once(&mut output)?,
            "--init" => once(&mut init)?,
            "--commands" => once(&mut commands)?,
            "--sysfs" => once(&mut sysfs)?,
            "--mounts" => once(&mut mounts)?,
            "--firmware-dir" => once(&mut firmware_dir)?,
            "--kernel-config" => once(&mut kernel_config)?,
            "--list" => once(&mut list)?,
            _ => once(&mut compression)?,
        }
    }

    if let Some(file) = list {
        if let Some(opt) = build_option {
            return Err(usage(format!("--list reads an initramfs and builds nothing: {opt} does not go with it")));
        }
        return Ok(Command::List { file, json });
    }
    if json {
        return Err(usage("--json goes with --list FILE"));
    }

    let required = |slot: Option<String>, opt: &str| slot.ok_or_else(|| usage(format!("missing option {opt}")));
    let kernel_modules = required(kernel_modules, "--kernel-modules /lib/modules/RELEASE")?;
    let config = required(config, "--config FILE")?;
    let output = required(output, "--output FILE")?;
    if !hostonly && (sysfs.is_some() || mounts.is_some()) {
        return Err(usage("--sysfs and --mounts only make sense with --hostonly"));
    }
    let mut opts = Options::new(PathBuf::from(kernel_modules), PathBuf::from(config), PathBuf::from(output));
    opts.kernel_release = kernel_release;
    opts.modules = modules;
    opts.init = init.map(PathBuf::from);
    opts.commands = match commands.as_deref() {
        None => Commands::Default,
        Some("none") => Commands::Leave,
        Some(p) => Commands::Path(PathBuf::from(p)),
    };
    if let Some(c) = compression {
        opts.compression = Compression::parse(&c)?;
    }
    opts.mtime = mtime;
    opts.hostonly = hostonly;
    if let Some(s) = sysfs {
        opts.sysfs = PathBuf::from(s);
    }
    if let Some(m) = mounts {
        opts.mounts = PathBuf::from(m);
    }
    opts.firmware_dir = firmware_dir.map(PathBuf::from);
    opts.keep_compressed = keep_compressed;
    opts.kernel_config = kernel_config.map(PathBuf::from);
    Ok(Command::Build(Box::new(opts)))
}

/// The entries' mtime: `SOURCE_DATE_EPOCH` if set and not empty, else 0.
pub fn mtime_from_env(value: Option<&str>) -> Result<u32> {
    match value.map(str::trim) {
        None | Some("") => Ok(0),
        Some(v) => {
            let secs: u64 =
                v.parse().map_err(|_| Error::msg(format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds")))?;
            u32::try_from(secs)
                .map_err(|_| Error::msg(format!("SOURCE_DATE_EPOCH={v} does not fit a cpio mtime (32 bits)")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    fn err(s: &str) -> String {
        parse(&args(s), 0).unwrap_err().to_string()
    }

    #[test]
    fn parses_the_documented_command_line() {
        let Command::Build(o) = parse(
            &args("--kernel-modules /lib/modules/6.1 --module btrfs --module=virtio_blk --config c.json --output out.img --init /x/dockroot --compression gzip"),
            7,
        )
        .unwrap() else {
            panic!("not a build")
        };
        assert_eq!(o.kernel_modules, PathBuf::from("/lib/modules/6.1"));
        assert_eq!(o.modules, ["btrfs", "virtio_blk"]);
        assert_eq!(o.config, PathBuf::from("c.json"));
        assert_eq!(o.output, PathBuf::from("out.img"));
        assert_eq!(o.init, Some(PathBuf::from("/x/dockroot")));
        assert_eq!(o.compression, Compression::Gzip);
        assert_eq!(o.kernel_release, None);
        assert_eq!(o.mtime, 7);

        let Command::Build(o) = parse(&args("--kernel-modules d --config c --output o"), 0).unwrap() else {
            panic!("not a build")
        };
        assert_eq!(o.compression, Compression::Zstd);
        assert!(o.modules.is_empty() && o.init.is_none());
        assert!(!o.hostonly && !o.keep_compressed);
        assert_eq!((o.sysfs.to_str(), o.mounts.to_str()), (Some("/sys"), Some("/proc/self/mounts")));

        let Command::Build(o) = parse(
            &args("--kernel-modules d --config c --output o --hostonly --sysfs /fake/sys --mounts=/fake/mounts --keep-compressed --kernel-config /k/config --firmware-dir /fw"),
            0,
        )
        .unwrap() else {
            panic!("not a build")
        };
        assert!(o.hostonly && o.keep_compressed);
        assert_eq!(o.sysfs, PathBuf::from("/fake/sys"));
        assert_eq!(o.mounts, PathBuf::from("/fake/mounts"));
        assert_eq!(o.kernel_config, Some(PathBuf::from("/k/config")));
        assert_eq!(o.firmware_dir, Some(PathBuf::from("/fw")));
    }

    #[test]
    fn help_and_version() {
        assert!(matches!(parse(&args("--help"), 0).unwrap(), Command::Help));
        assert!(matches!(parse(&args("--module x -h"), 0).unwrap(), Command::Help));
        assert!(matches!(parse(&args("--version"), 0).unwrap(), Command::Version));
        let h = help();
        assert!(h.contains("--kernel-modules") && h.contains("btrfs ext4 xfs vfat") && h.contains("SOURCE_DATE_EPOCH"));
        assert!(h.contains("--hostonly") && h.contains("--keep-compressed") && h.contains("virtio_pci virtio_blk"));
        assert!(h.contains("--features decompress-modules"), "{h}");
    }

    #[test]
    fn clear_errors() {
        assert_eq!(err("--frobnicate"), "unknown option --frobnicate (see --help)");
        assert!(err("--config c --output o").contains("missing option --kernel-modules"));
        assert!(err("--kernel-modules d --output o").contains("missing option --config"));
        assert!(err("--kernel-modules d --config c").contains("missing option --output"));
        assert_eq!(err("--kernel-modules"), "option --kernel-modules needs a value (see --help)");
        assert!(err("--output a --output b").contains("--output given twice"));
        assert!(err("stray").contains("unexpected argument \"stray\""));
        assert!(err("--kernel-modules d --config c --output o --compression lz4").contains("zstd, gzip or none"));
        assert!(
            err("--kernel-modules d --config c --output o --hostonly --hostonly").contains("--hostonly given twice")
        );
        assert!(err("--kernel-modules d --config c --output o --hostonly=yes").contains("--hostonly takes no value"));
        assert!(err("--kernel-modules d --config c --output o --sysfs /x").contains("only make sense with --hostonly"));
    }

    #[test]
    fn update_and_remove() {
        use crate::update::{Action, Request};
        let req = |s: &str| match parse(&args(s), 0).unwrap() {
            Command::Update(r) => r,
            other => panic!("not an update: {other:?}"),
        };
        let root = PathBuf::from("/");
        assert_eq!(
            req("--update 6.1.0-9-amd64"),
            Request { action: Action::Update("6.1.0-9-amd64".into()), root: root.clone(), output: None }
        );
        assert_eq!(req("--update --all"), Request { action: Action::UpdateAll, root: root.clone(), output: None });
        assert_eq!(req("--all --update --root /mnt").action, Action::UpdateAll);
        assert_eq!(req("--all --update --root /mnt").root, PathBuf::from("/mnt"));
        assert_eq!(
            req("--update=6.1 --output /staging/initrd"),
            Request {
                action: Action::Update("6.1".into()),
                root: root.clone(),
                output: Some("/staging/initrd".into())
            }
        );
        assert_eq!(req("--remove 6.1 --root=/r").action, Action::Remove("6.1".into()));
        assert!(matches!(parse(&args("--update --help"), 0).unwrap(), Command::Help));
        assert_eq!(err("--update"), "--update needs a RELEASE or --all (see --help)");
        assert!(err("--update 6.1 --all").contains("a RELEASE or --all, not both"));
        assert!(err("--update --all --output x").contains("--output names one image"));
        assert!(err("--update 6.1 --remove 6.1").contains("cannot be combined"));
        assert!(err("--remove").contains("--remove needs a value"));
        assert!(err("--remove 6.1 --all").contains("not --all"));
        assert!(err("--all").contains("go with --update or --remove"));
        assert!(err("--update ../x").contains("is not a kernel release"));
        assert!(err("--update 6.1 --hostonly").contains("unknown option --hostonly"));
        assert!(err("--update 6.1 --root a --root b").contains("--root given twice"));
        assert!(err("--update 6.1 extra").contains("unexpected argument \"extra\""));
        assert!(help().contains("--update RELEASE|--all") && help().contains("/etc/dockroot/mkinitramfs.conf"));
    }

    #[test]
    fn list_and_json() {
        let Command::List { file, json } = parse(&args("--list /boot/initrd.img"), 0).unwrap() else {
            panic!("not a list")
        };
        assert_eq!((file.as_str(), json), ("/boot/initrd.img", false));
        let Command::List { file, json } = parse(&args("--json --list=x.img"), 0).unwrap() else {
            panic!("not a list")
        };
        assert_eq!((file.as_str(), json), ("x.img", true));
        assert_eq!(err("--list"), "option --list needs a value (see --help)");
        assert!(err("--list a --list b").contains("--list given twice"));
        assert!(err("--list a --output b").contains("--output does not go with it"), "{}", err("--list a --output b"));
        assert!(err("--hostonly --list a").contains("--hostonly does not go with it"));
        assert_eq!(err("--json --kernel-modules d --config c --output o"), "--json goes with --list FILE (see --help)");
        assert!(err("--list a --json=yes").contains("--json takes no value"));
        assert!(help().contains("--list FILE") && help().contains("\"dockroot_initramfs_list\": 1"));
    }

    #[test]
    fn source_date_epoch() {
        assert_eq!(mtime_from_env(None).unwrap(), 0);
        assert_eq!(mtime_from_env(Some("")).unwrap(), 0);
        assert_eq!(mtime_from_env(Some("1700000000")).unwrap(), 1_700_000_000);
        assert!(mtime_from_env(Some("yesterday")).is_err());
        assert!(mtime_from_env(Some("99999999999")).unwrap_err().to_string().contains("32 bits"));
    }
}
