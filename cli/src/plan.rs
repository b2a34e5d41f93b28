//! `dockroot plan`: the arguments, the inputs and mounting `--device`; the dry
//! run itself is `dockroot::plan` (the same facts and rule as the boot).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::args::{self, Own};
use crate::partition::{self, Where};
use crate::EXIT_USAGE;
use dockroot::config::{self, BootConfig, Embedded, Params, RootPlan};
use dockroot::devices::DeviceSpec;
use dockroot::{plan, Context, Result};

const USAGE: &str = "usage: dockroot plan [--top DIR | --device DEV] [OPTIONS]

A dry run: what the init would do with this disk and kernel command line, changing nothing.
Put it before a reboot: its exit status says how the boot would go. A device is mounted
read-only (btrfs at its top level, no journal replayed) for the run, then unmounted.

  --top DIR        the root partition's top level (subvolid=5), already mounted
  --device DEV     the root partition (default: the device root= names on the command line)
  --cmdline STRING the kernel command line (default: this machine's /proc/cmdline)
  --config FILE    the initramfs's embedded config (default: none; dockroot.image= must say)
  --toplayer-device DEV
                   the device toplayer= names, when it is not the root partition (mounted
                   read-only for the run; toplayerflags=subvol= and toplayer_path= are read on it)
  --toplayer-dir D the top layer directory, when it is on another device mounted here
                   (the device it is mounted from must be the one toplayer= names)
  --help           this text

exit status:
  0  the boot would do what the command line asks
  1  the plan could not look (a device that cannot be mounted, a file that cannot be read)
  2  usage error
  3  the boot would fall back to a previous root (FALLBACK)
  4  the boot would fail: the command line or config is refused, or no root can boot
  5  --device is not the device root= names (by label, UUID, PARTUUID or PARTLABEL)
  6  --toplayer-device, or the device --toplayer-dir is mounted from, is not the device
     toplayer= names";

/// `--device` is not the device `root=` names.
const EXIT_NOT_THE_DEVICE: u8 = 5;
/// `--toplayer-device` (or the device `--toplayer-dir` is on) is not the device `toplayer=` names.
const EXIT_NOT_THE_TOPLAYER_DEVICE: u8 = 6;

/// `dockroot plan`'s arguments.
#[derive(Default)]
struct Args {
    at: Where,
    cmdline: Option<String>,
    config: Option<PathBuf>,
    toplayer_dir: Option<PathBuf>,
    toplayer_device: Option<PathBuf>,
}

fn parse(argv: Vec<OsString>) -> std::result::Result<Option<Args>, String> {
    let mut a = Args::default();
    let run = args::parse(argv, &mut a.at, &mut a.cmdline, |arg, p| {
        let path = |p: &mut lexopt::Parser| p.value().map(PathBuf::from).map_err(|e| e.to_string());
        match arg {
            Own::Long(n) if n == "toplayer-dir" => a.toplayer_dir = Some(path(p)?),
            Own::Long(n) if n == "toplayer-device" => a.toplayer_device = Some(path(p)?),
            Own::Long(n) if n == "config" => a.config = Some(path(p)?),
            other => return Err(other.unexpected()),
        }
        Ok(())
    })?;
    if a.toplayer_dir.is_some() && a.toplayer_device.is_some() {
        return Err("give at most one of --toplayer-dir and --toplayer-device".into());
    }
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
    let params = Params::from_cmdline(&cmdline).unwrap_or_default();
    let root = params.root.clone().unwrap_or_default();
    if let Err(code) = check_devices(&a, &root, params.toplayer.as_deref()) {
        return code;
    }
    // The top layer's directory under a top level: toplayerflags=subvol= then toplayer_path=,
    // which the root partition needs (None without it) and another device does not.
    let toplayer_under = |top: &Path, on_root: bool| -> Option<PathBuf> {
        let mut r = RootPlan::from_params(&params).ok()?;
        if !on_root {
            r.toplayer_path.get_or_insert_with(Vec::new);
        }
        Some(top.join(r.toplayer_on_root(&params).ok()??.join("/")))
    };
    let describe = |top: &Path, device: Option<&Path>| -> Result<plan::Plan> {
        let run = |toplayer_dir: Option<&Path>, toplayer_device: Option<(&Path, &Path)>| {
            let config = config.clone();
            let input = plan::PlanInput { top, cmdline: &cmdline, config, toplayer_dir, device, toplayer_device };
            plan::describe(&input)
        };
        match (&a.toplayer_device, &a.toplayer_dir, toplayer_on(device, params.toplayer.as_deref(), &root)) {
            (Some(tdev), _, _) => partition::with_toplayer_device(tdev, |ttop| {
                run(toplayer_under(ttop, false).as_deref(), Some((ttop, tdev.as_path())))
            }),
            (None, Some(dir), _) => run(Some(dir), None),
            // toplayer= names the device mounted for the run (not by the same words as root=).
            (None, None, true) => run(toplayer_under(top, true).as_deref(), None),
            (None, None, false) => run(None, None),
        }
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

/// `--device` must be the device `root=` names (else exit 5), `--toplayer-device`
/// or the device `--toplayer-dir` is mounted from the one `toplayer=` names (else
/// exit 6); exit 1 when one cannot be looked at.
fn check_devices(a: &Args, root: &str, toplayer: Option<&str>) -> std::result::Result<(), u8> {
    let fail = |code: u8, why: &dyn std::fmt::Display| {
        eprintln!("dockroot plan: {why}");
        Err(code)
    };
    if let Where::Device(dev) = &a.at {
        match partition::check_device(dev, root) {
            Ok(None) => {}
            Ok(Some(why)) => return fail(EXIT_NOT_THE_DEVICE, &why),
            Err(e) => return fail(1, &e),
        }
    }
    let given = match (&a.toplayer_device, &a.toplayer_dir) {
        (Some(dev), _) => Some((dev.clone(), "--toplayer-device".to_string())),
        (None, Some(dir)) => match partition::device_of_dir(dir) {
            Ok(Some(dev)) => {
                let option = format!("--toplayer-dir {}: its device", dir.display());
                Some((dev, option))
            }
            Ok(None) => {
                eprintln!(
                    "dockroot plan: note: --toplayer-dir {} is not on a block device: not checked against toplayer=",
                    dir.display()
                );
                None
            }
            Err(e) => return fail(1, &e),
        },
        (None, None) => None,
    };
    match (given, toplayer) {
        (Some((_, option)), None) => {
            fail(EXIT_USAGE, &format!("{option} given, but the command line has no toplayer="))
        }
        (Some((dev, option)), Some(spec)) => match partition::check_named(&dev, &option, "toplayer", spec) {
            Ok(None) => Ok(()),
            Ok(Some(why)) => fail(EXIT_NOT_THE_TOPLAYER_DEVICE, &why),
            Err(e) => fail(1, &e),
        },
        (None, _) => Ok(()),
    }
}

/// Whether `toplayer=` names the root partition's `device` mounted for the run (as
/// the init decides, by the device, whatever words `root=` uses), other than by
/// the same words as `root=` (which `plan::describe` sees itself).
fn toplayer_on(device: Option<&Path>, toplayer: Option<&str>, root: &str) -> bool {
    match (device, toplayer) {
        (Some(dev), Some(t)) if t != root => {
            matches!(DeviceSpec::parse(t), Ok(s) if !matches!(s, DeviceSpec::Path(_) | DeviceSpec::MajMin(..)))
                && matches!(partition::check_named(dev, "--device", "toplayer", t), Ok(None))
        }
        _ => false,
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
