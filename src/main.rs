//! `/init` of a dockroot initramfs. As PID 1 it boots; on a host,
//! `dockroot plan` is a dry run of what the init would do with a disk.

#![no_main]

use std::path::{Path, PathBuf};

use dockroot::{plan, reference, Context, Error, Result};

const USAGE: &str = "usage:
  dockroot plan (--top DIR | --device DEV) [--cmdline STRING] [--config FILE] [--toplayer-dir DIR]
      A dry run: what the init would do with this disk and kernel command line, changing nothing.
      --top DIR        the root partition's top level (subvolid=5), already mounted
      --device DEV     the root partition: mounted read-only (subvolid=5) for the run, then unmounted
      --cmdline STRING the kernel command line (default: this machine's /proc/cmdline)
      --config FILE    the initramfs's embedded config (default: none; dockroot.image= must say)
      --toplayer-dir D the top layer directory, when it is on another device mounted here
  dockroot --version

As PID 1 (the /init of an initramfs built by dockroot-mkinitramfs) it boots a Docker image.";

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
        Some("plan") => match run_plan(&args[1..]) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("dockroot plan: {e}");
                1
            }
        },
        _ => {
            eprintln!("dockroot {}\n{USAGE}", env!("CARGO_PKG_VERSION"));
            2
        }
    };
    std::process::exit(code);
}

fn run_plan(args: &[String]) -> Result<()> {
    let mut top: Option<PathBuf> = None;
    let mut device: Option<PathBuf> = None;
    let mut cmdline: Option<String> = None;
    let mut config: Option<PathBuf> = None;
    let mut toplayer_dir: Option<PathBuf> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().cloned().context(|| format!("{a} needs a value\n{USAGE}"));
        match a.as_str() {
            "--top" => top = Some(value()?.into()),
            "--device" => device = Some(value()?.into()),
            "--cmdline" => cmdline = Some(value()?),
            "--config" => config = Some(value()?.into()),
            "--toplayer-dir" => toplayer_dir = Some(value()?.into()),
            other => return Err(Error::msg(format!("unknown argument {other:?}\n{USAGE}"))),
        }
    }
    let cmdline = match cmdline {
        Some(c) => c,
        None => std::fs::read_to_string("/proc/cmdline").context(|| "reading /proc/cmdline")?,
    };
    let config_image = match &config {
        Some(f) => {
            let bytes = std::fs::read(f).context(|| format!("reading {}", f.display()))?;
            Some(reference::from_prior_art_config(&bytes).context(|| format!("in {}", f.display()))?)
        }
        None => None,
    };
    let describe = |top: &Path| -> Result<()> {
        let input = plan::PlanInput {
            top,
            cmdline: &cmdline,
            config_image: config_image.clone(),
            toplayer_dir: toplayer_dir.as_deref(),
        };
        print!("{}", plan::describe(&input)?);
        Ok(())
    };
    match (top, device) {
        (Some(t), None) => describe(&t),
        (None, Some(dev)) => {
            let dir = std::env::temp_dir().join(format!("dockroot-plan-{}", std::process::id()));
            std::fs::create_dir_all(&dir).context(|| format!("creating {}", dir.display()))?;
            let (fstype, options) = device_mount(&dev)?;
            rustix::mount::mount(&dev, &dir, fstype.as_str(), rustix::mount::MountFlags::RDONLY, options)
                .context(|| format!("mounting {} ({fstype}) read-only on {}", dev.display(), dir.display()))?;
            let r = describe(&dir);
            let _ = rustix::mount::unmount(&dir, rustix::mount::UnmountFlags::empty());
            let _ = std::fs::remove_dir(&dir);
            r
        }
        _ => Err(Error::msg(format!("give exactly one of --top and --device\n{USAGE}"))),
    }
}

/// How `--device` is mounted: its filesystem as probed, read-only and without
/// replaying a journal, so that the dry run writes nothing; btrfs at its top level.
fn device_mount(dev: &Path) -> Result<(String, &'static std::ffi::CStr)> {
    let file = std::fs::File::open(dev).context(|| format!("opening {}", dev.display()))?;
    let fs =
        dockroot::probe::probe_filesystem(&file)?.context(|| format!("{}: no filesystem recognised", dev.display()))?;
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

/// glibc's `__libc_start_main` references `__assert_fail`, whose object pulls in
/// gettext, locale loading and iconv (about 30 KB); nothing in this program asserts
/// through glibc, so this stands in for it: abort, as glibc's does after printing.
#[no_mangle]
pub extern "C" fn __assert_fail(_expr: *const u8, _file: *const u8, _line: u32, _func: *const u8) -> ! {
    std::process::abort()
}

/// glibc's `strerror` (which Rust's `io::Error` Display uses, through
/// `__xpg_strerror_r`) translates messages with `dcgettext`, whose object pulls
/// in the message catalog loader, iconv and transliteration tables (48 KB of
/// init). An initramfs has no catalogs: the untranslated English message is
/// the answer, as glibc's own would give.
#[no_mangle]
pub extern "C" fn __dcgettext(_domain: *const u8, msgid: *const u8, _category: i32) -> *const u8 {
    msgid
}

/// The public name of [`__dcgettext`].
#[no_mangle]
pub extern "C" fn dcgettext(domain: *const u8, msgid: *const u8, category: i32) -> *const u8 {
    __dcgettext(domain, msgid, category)
}
