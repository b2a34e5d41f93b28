//! Command line of `dockroot-mkinitramfs`, parsed by hand.

use std::path::PathBuf;

use dockroot::error::{Error, Result};

use crate::build::{Options, DEFAULT_MODULES};
use crate::compress::Compression;

/// What the command line asks for.
#[derive(Debug)]
pub enum Command {
    Help,
    Version,
    Build(Options),
}

/// The `--help` text.
pub fn help() -> String {
    let defaults = DEFAULT_MODULES.join(" ");
    format!(
        "\
dockroot-mkinitramfs {version}: build the dockroot initramfs.

Usage:
  dockroot-mkinitramfs --kernel-modules /lib/modules/RELEASE --config FILE --output FILE
                       [--module NAME ...] [--init PATH] [--compression zstd|gzip|none]
                       [--kernel-release RELEASE]

Writes a newc cpio, compressed, holding:
  /init                     the static dockroot binary (--init)
  /etc/docker-btrfs.json    the config (--config): {{\"docker_image\": \"...\", \"docker_tag\": \"...\"}}
  /dev/console              so the kernel gives /init its stdio
  /dev /proc /sys /run /etc empty mount points
  /lib/modules/RELEASE/...  the kernel modules asked for and all they need, decompressed, never stripped
  /lib/modules/dockroot-modules.index  the load order the init follows

Options:
  --kernel-modules DIR   the kernel's modules directory, /lib/modules/RELEASE (required)
  --kernel-release REL   the kernel release the modules must match (default: the name of DIR)
  --module NAME          a module (or alias) to include with its dependencies and soft
                         dependencies; repeat for more. A name this kernel does not have is
                         an error; a built-in one is skipped with a note.
  --config FILE          the JSON config with \"docker_image\" (required)
  --output FILE          where to write the image (required)
  --init PATH            the init binary, a static x86-64 executable
                         (default: dockroot next to this program)
  --compression KIND     zstd (default, level {level}), gzip or none
  -h, --help             this text
  -V, --version          the version

Without --module, a default set for real machines and VMs is included:
  {defaults}
Names of the default set that this kernel does not have (built in, or not shipped) are
skipped with a note.

The same inputs give the same bytes: entries sorted, uid/gid 0, mtime 0 (or
SOURCE_DATE_EPOCH if set), fixed compression settings.
",
        version = env!("CARGO_PKG_VERSION"),
        level = crate::compress::ZSTD_LEVEL,
    )
}

fn usage(msg: impl Into<String>) -> Error {
    Error::msg(format!("{} (see --help)", msg.into()))
}

/// Parse the arguments (without the program name). `mtime` is the entries' mtime.
pub fn parse(args: &[String], mtime: u32) -> Result<Command> {
    let mut kernel_modules = None;
    let mut kernel_release = None;
    let mut modules = Vec::new();
    let mut config = None;
    let mut output = None;
    let mut init = None;
    let mut compression = None;

    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (opt, inline) = match arg.split_once('=') {
            Some((o, v)) if o.starts_with("--") => (o, Some(v.to_owned())),
            _ => (arg.as_str(), None),
        };
        match opt {
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            _ => {}
        }
        let known =
            ["--kernel-modules", "--kernel-release", "--module", "--config", "--output", "--init", "--compression"];
        if !known.contains(&opt) {
            return Err(if opt.starts_with('-') {
                usage(format!("unknown option {arg}"))
            } else {
                usage(format!("unexpected argument {arg:?}: every value follows its option"))
            });
        }
        let value = match inline {
            Some(v) => v,
            None => it.next().cloned().ok_or_else(|| usage(format!("option {opt} needs a value")))?,
        };
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
            _ => once(&mut compression)?,
        }
    }

    let required = |slot: Option<String>, opt: &str| slot.ok_or_else(|| usage(format!("missing option {opt}")));
    let kernel_modules = required(kernel_modules, "--kernel-modules /lib/modules/RELEASE")?;
    let config = required(config, "--config FILE")?;
    let output = required(output, "--output FILE")?;
    let compression = match compression {
        Some(c) => Compression::parse(&c)?,
        None => Compression::Zstd,
    };
    Ok(Command::Build(Options {
        kernel_modules: PathBuf::from(kernel_modules),
        kernel_release,
        modules,
        config: PathBuf::from(config),
        output: PathBuf::from(output),
        init: init.map(PathBuf::from),
        compression,
        mtime,
    }))
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
    }

    #[test]
    fn help_and_version() {
        assert!(matches!(parse(&args("--help"), 0).unwrap(), Command::Help));
        assert!(matches!(parse(&args("--module x -h"), 0).unwrap(), Command::Help));
        assert!(matches!(parse(&args("--version"), 0).unwrap(), Command::Version));
        let h = help();
        assert!(h.contains("--kernel-modules") && h.contains("btrfs ext4 xfs vfat") && h.contains("SOURCE_DATE_EPOCH"));
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
