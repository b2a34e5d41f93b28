//! `dockroot plan`: the arguments, the inputs and mounting `--device`; the dry
//! run itself is `dockroot::plan` (the same facts and rule as the boot).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::partition::{self, Where};
use dockroot::config::{self, BootConfig, Embedded, Params};
use dockroot::{plan, Context, Result};

const USAGE: &str = "usage: dockroot plan [--top DIR | --device DEV] [OPTIONS]

A dry run: what the init would do with this disk and kernel command line, changing nothing.
Put it before a reboot: its exit status says how the boot would go. A device is mounted
read-only (btrfs at its top level, no journal replayed) for the run, then unmounted.

  --top DIR        the root partition's top level (subvolid=5), already mounted
  --device DEV     the root partition (default: the device root= names on the command line)
  --cmdline STRING the kernel command line (default: this machine's /proc/cmdline)
  --config FILE    the initramfs's embedded config (default: none; dockroot.image= must say)
  --toplayer-dir D the top layer directory, when it is on another device mounted here
  --help           this text

exit status:
  0  the boot would do what the command line asks
  1  the plan could not look (a device that cannot be mounted, a file that cannot be read)
  2  usage error
  3  the boot would fall back to a previous root (FALLBACK)
  4  the boot would fail: the command line or config is refused, or no root can boot
  5  --device is not the device root= names (by label, UUID, PARTUUID or PARTLABEL)";

/// `--device` is not the device `root=` names.
const EXIT_NOT_THE_DEVICE: u8 = 5;

/// `dockroot plan`'s arguments.
#[derive(Default)]
struct Args {
    at: Where,
    cmdline: Option<String>,
    config: Option<PathBuf>,
    toplayer_dir: Option<PathBuf>,
}

/// What the command line asks for.
enum Parsed {
    Help,
    Run(Args),
}

fn parse(args: Vec<OsString>) -> std::result::Result<Parsed, String> {
    use lexopt::prelude::*;
    let mut a = Args::default();
    let mut p = lexopt::Parser::from_args(args);
    while let Some(arg) = p.next().map_err(|e| e.to_string())? {
        let path = |p: &mut lexopt::Parser| p.value().map(PathBuf::from).map_err(|e| e.to_string());
        match arg {
            Long(name) if partition::OPTIONS.contains(&name) => {
                let name = name.to_owned();
                partition::take_option(&name, &mut p, &mut a.at, &mut a.cmdline)?
            }
            Short('h') | Long("help") => return Ok(Parsed::Help),
            Long("toplayer-dir") => a.toplayer_dir = Some(path(&mut p)?),
            Long("config") => a.config = Some(path(&mut p)?),
            other => return Err(other.unexpected().to_string()),
        }
    }
    Ok(Parsed::Run(a))
}

/// `dockroot plan`: prints the plan, returns the exit status.
pub fn run(args: Vec<OsString>) -> u8 {
    let a = match parse(args) {
        Ok(Parsed::Help) => {
            println!("{USAGE}");
            return 0;
        }
        Ok(Parsed::Run(a)) => a,
        Err(e) => {
            eprintln!("dockroot plan: {e}\n\n{USAGE}");
            return crate::EXIT_USAGE;
        }
    };
    // What the init would refuse, before looking at any disk.
    let checked = read_inputs(&a)
        .and_then(|(cmdline, config)| BootConfig::parse(&cmdline, || Ok(config.clone())).map(|_| (cmdline, config)));
    let (cmdline, config) = match checked {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dockroot plan: the boot would fail: {e}");
            return 4;
        }
    };
    let root = Params::from_cmdline(&cmdline).map(|p| p.root.unwrap_or_default()).unwrap_or_default();
    if let Where::Device(dev) = &a.at {
        if let Err(e) = partition::check_device(dev, &root) {
            eprintln!("dockroot plan: {e}");
            return EXIT_NOT_THE_DEVICE;
        }
    }
    let describe = |top: &Path, device: Option<&Path>| -> Result<plan::Plan> {
        let toplayer_dir = a.toplayer_dir.as_deref();
        plan::describe(&plan::PlanInput { top, cmdline: &cmdline, config, toplayer_dir, device })
    };
    let planned = partition::with_top(&a.at, &root, false, describe);
    match planned {
        Ok(p) => {
            print!("{p}");
            p.outcome().exit_code()
        }
        Err(e) => {
            eprintln!("dockroot plan: {e}");
            1
        }
    }
}

/// The command line (`--cmdline` or this machine's) and the embedded config (`--config`).
fn read_inputs(a: &Args) -> Result<(String, Option<Embedded>)> {
    let cmdline = partition::cmdline(&a.cmdline)?;
    let config = match &a.config {
        Some(f) => Some(config::read_embedded(f)?.context(|| format!("--config {}: no such file", f.display()))?),
        None => None,
    };
    Ok((cmdline, config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<OsString> {
        s.split_whitespace().map(OsString::from).collect()
    }

    #[test]
    fn parses_the_options() {
        let Ok(Parsed::Run(a)) = parse(args("--device /dev/sda2 --cmdline=ro --config c.json --toplayer-dir /m"))
        else {
            panic!("not parsed")
        };
        assert_eq!(a.at, Where::Device(PathBuf::from("/dev/sda2")));
        assert_eq!(a.cmdline.as_deref(), Some("ro"));
        assert_eq!(a.config, Some(PathBuf::from("c.json")));
        assert_eq!(a.toplayer_dir, Some(PathBuf::from("/m")));
        assert!(matches!(parse(args("--top /t --help")), Ok(Parsed::Help)));
        assert!(matches!(parse(args("-h")), Ok(Parsed::Help)));
    }

    #[test]
    fn refuses_what_it_cannot_run() {
        let err = |s: &str| parse(args(s)).err().unwrap_or_default();
        assert!(matches!(parse(args("")), Ok(Parsed::Run(Args { at: Where::FromCmdline, .. }))));
        assert_eq!(err("--top /a --device /b"), "give at most one of --top and --device");
        assert!(err("--top").contains("--top"), "{}", err("--top"));
        assert!(err("--top /a --frob").contains("--frob"), "{}", err("--top /a --frob"));
        assert!(err("--top /a stray").contains("stray"), "{}", err("--top /a stray"));
    }
}
