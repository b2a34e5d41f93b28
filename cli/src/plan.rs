//! `dockroot plan`: the arguments, the inputs and mounting `--device`; the dry
//! run itself is `dockroot::plan` (the same facts and rule as the boot).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::args::{self, Own};
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

fn parse(argv: Vec<OsString>) -> std::result::Result<Option<Args>, String> {
    let mut a = Args::default();
    let run = args::parse(argv, &mut a.at, &mut a.cmdline, |arg, p| {
        let path = |p: &mut lexopt::Parser| p.value().map(PathBuf::from).map_err(|e| e.to_string());
        match arg {
            Own::Long(n) if n == "toplayer-dir" => a.toplayer_dir = Some(path(p)?),
            Own::Long(n) if n == "config" => a.config = Some(path(p)?),
            other => return Err(other.unexpected()),
        }
        Ok(())
    })?;
    Ok(run.then_some(a))
}

/// `dockroot plan`: prints the plan, returns the exit status.
pub fn run(argv: Vec<OsString>) -> u8 {
    let a = match args::arguments("plan", USAGE, parse(argv)) {
        Ok(a) => a,
        Err(code) => return code,
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
        match partition::check_device(dev, &root) {
            Ok(None) => {}
            Ok(Some(why)) => {
                eprintln!("dockroot plan: {why}");
                return EXIT_NOT_THE_DEVICE;
            }
            Err(e) => {
                eprintln!("dockroot plan: {e}");
                return 1;
            }
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

    fn parsed(s: &str) -> std::result::Result<Option<Args>, String> {
        parse(s.split_whitespace().map(OsString::from).collect())
    }

    #[test]
    fn parses_the_options() {
        let a = parsed("--device /dev/sda2 --cmdline=ro --config c.json --toplayer-dir /m").unwrap().unwrap();
        assert_eq!(a.at, Where::Device(PathBuf::from("/dev/sda2")));
        assert_eq!(a.cmdline.as_deref(), Some("ro"));
        assert_eq!(a.config, Some(PathBuf::from("c.json")));
        assert_eq!(a.toplayer_dir, Some(PathBuf::from("/m")));
        assert!(parsed("--top /t --help").unwrap().is_none());
        assert!(parsed("-h").unwrap().is_none());
    }

    #[test]
    fn refuses_what_it_cannot_run() {
        let err = |s: &str| parsed(s).err().unwrap_or_default();
        assert_eq!(parsed("").unwrap().unwrap().at, Where::FromCmdline);
        assert_eq!(err("--top /a --device /b"), "give at most one of --top and --device");
        assert!(err("--top").contains("--top"), "{}", err("--top"));
        assert!(err("--top /a --frob").contains("--frob"), "{}", err("--top /a --frob"));
        assert!(err("--top /a stray").contains("stray"), "{}", err("--top /a stray"));
    }
}
