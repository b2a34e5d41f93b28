//! `/init` of a dockroot initramfs. As PID 1 it boots; on a host,
//! `dockroot plan` is a dry run of what the init would do with a disk.

#![no_main]

mod glibc;

use std::path::{Path, PathBuf};

use dockroot::config::{self, BootConfig, Embedded};
use dockroot::{plan, Context, Error, Result};

const USAGE: &str = "usage:
  dockroot plan (--top DIR | --device DEV) [--cmdline STRING] [--config FILE] [--toplayer-dir DIR]
      A dry run: what the init would do with this disk and kernel command line, changing nothing.
  dockroot --version
  dockroot --help

As PID 1 (the /init of an initramfs built by dockroot-mkinitramfs) it boots a Docker image.";

const PLAN_USAGE: &str = "usage: dockroot plan (--top DIR | --device DEV) [OPTIONS]

A dry run: what the init would do with this disk and kernel command line, changing nothing.
Put it before a reboot: its exit status says how the boot would go.

  --top DIR        the root partition's top level (subvolid=5), already mounted
  --device DEV     the root partition: mounted read-only (subvolid=5) for the run, then unmounted
  --cmdline STRING the kernel command line (default: this machine's /proc/cmdline)
  --config FILE    the initramfs's embedded config (default: none; dockroot.image= must say)
  --toplayer-dir D the top layer directory, when it is on another device mounted here
  --help           this text

exit status:
  0  the boot would do what the command line asks
  1  the plan could not look (a device that cannot be mounted, a file that cannot be read)
  2  usage error
  3  the boot would fall back to a previous root (FALLBACK)
  4  the boot would fail: the command line or config is refused, or no root can boot";

/// The C entry point: std's runtime setup (SIGPIPE ignored, stack guard via
/// pthread_getattr_np, which drags in scanf/stdio) is skipped.
#[no_mangle]
pub extern "C" fn main(_argc: i32, _argv: *const *const u8) -> i32 {
    if rustix::process::getpid().is_init() {
        dockroot::boot::run();
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match args.first().map(String::as_str) {
        Some("--version") => {
            println!("dockroot {}", env!("CARGO_PKG_VERSION"));
            0
        }
        Some("--help" | "-h" | "help") => {
            println!("dockroot {}\n{USAGE}", env!("CARGO_PKG_VERSION"));
            0
        }
        Some("plan") => run_plan(&args[1..]),
        _ => {
            eprintln!("dockroot {}\n{USAGE}", env!("CARGO_PKG_VERSION"));
            2
        }
    };
    std::process::exit(code);
}

/// `dockroot plan`'s arguments.
#[derive(Default)]
struct PlanArgs {
    top: Option<PathBuf>,
    device: Option<PathBuf>,
    cmdline: Option<String>,
    config: Option<PathBuf>,
    toplayer_dir: Option<PathBuf>,
}

/// `dockroot plan`: prints the plan, returns the exit status.
fn run_plan(args: &[String]) -> i32 {
    let mut a = PlanArgs::default();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let slot = match arg.as_str() {
            "--help" | "-h" => {
                println!("{PLAN_USAGE}");
                return 0;
            }
            "--top" => &mut a.top,
            "--device" => &mut a.device,
            "--toplayer-dir" => &mut a.toplayer_dir,
            "--config" => &mut a.config,
            "--cmdline" => {
                let Some(v) = it.next() else { return usage(&format!("{arg} needs a value")) };
                a.cmdline = Some(v.clone());
                continue;
            }
            other => return usage(&format!("unknown argument {other:?}")),
        };
        let Some(v) = it.next() else { return usage(&format!("{arg} needs a value")) };
        *slot = Some(v.into());
    }
    if a.top.is_some() == a.device.is_some() {
        return usage("give exactly one of --top and --device");
    }
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
    let describe = |top: &Path| -> Result<plan::Plan> {
        plan::describe(&plan::PlanInput { top, cmdline: &cmdline, config, toplayer_dir: a.toplayer_dir.as_deref() })
    };
    let planned = match (&a.top, &a.device) {
        (Some(t), _) => describe(t),
        (_, Some(dev)) => with_device_mounted(dev, describe),
        (None, None) => return usage("give exactly one of --top and --device"),
    };
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

fn usage(what: &str) -> i32 {
    eprintln!("dockroot plan: {what}\n\n{PLAN_USAGE}");
    2
}

/// The command line (`--cmdline` or this machine's) and the embedded config (`--config`).
fn read_inputs(a: &PlanArgs) -> Result<(String, Option<Embedded>)> {
    let cmdline = match &a.cmdline {
        Some(c) => c.clone(),
        None => std::fs::read_to_string("/proc/cmdline").context(|| "reading /proc/cmdline")?,
    };
    let config = match &a.config {
        Some(f) => Some(config::read_embedded(f)?.context(|| format!("--config {}: no such file", f.display()))?),
        None => None,
    };
    Ok((cmdline, config))
}

/// Run `f` on `dev` mounted read-only at a temporary directory, which is
/// removed afterwards whatever happens.
fn with_device_mounted<T>(dev: &Path, f: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
    let (fstype, options) = device_mount(dev)?;
    let dir = std::env::temp_dir().join(format!("dockroot-plan-{}", std::process::id()));
    std::fs::create_dir(&dir).context(|| format!("creating {}", dir.display()))?;
    let mounted = rustix::mount::mount(dev, &dir, fstype.as_str(), rustix::mount::MountFlags::RDONLY, options)
        .context(|| format!("mounting {} ({fstype}) read-only", dev.display()));
    let r = mounted.and_then(|()| {
        let r = f(&dir);
        if let Err(e) = rustix::mount::unmount(&dir, rustix::mount::UnmountFlags::empty()) {
            eprintln!("dockroot plan: could not unmount {} from {}: {e}", dev.display(), dir.display());
        }
        r
    });
    let _ = std::fs::remove_dir(&dir);
    r
}

/// How `--device` is mounted: its filesystem as probed, read-only and without
/// replaying a journal, so that the dry run writes nothing; btrfs at its top level.
fn device_mount(dev: &Path) -> Result<(String, &'static std::ffi::CStr)> {
    let file = std::fs::File::open(dev).context(|| format!("opening {}", dev.display()))?;
    let fs = dockroot::probe::probe_filesystem(&file)?
        .ok_or_else(|| Error::msg(format!("{}: no filesystem recognised", dev.display())))?;
    let name = fs.fstype.name().to_string();
    let options = match name.as_str() {
        "btrfs" => c"subvolid=5",
        "ext4" | "ext3" | "ext2" => c"noload",
        "xfs" => c"norecovery",
        _ => c"",
    };
    let name = if fs.fstype.is_ext() { "ext4".to_string() } else { name };
    Ok((name, options))
}
