//! `dockroot`: the commands for a running system and a host. The boot itself
//! is `dockroot-init`; both read disks and decide through the same library.

mod args;
mod bless;
mod bootfiles;
mod bootfiles_entry;
mod bootfiles_esp;
mod bootfiles_image;
// The init's stand-ins for glibc's __assert_fail and dcgettext: the commands are
// static too and carried in every initramfs, so they shed the same ~80 KB.
#[path = "../../src/glibc.rs"]
mod glibc;
// The init's allocator too (src/heap.rs): glibc's malloc.o is 36 KB of a binary
// every initramfs carries.
#[path = "../../src/malloc.rs"]
mod malloc;
mod partition;
mod plan;
mod rollback;
mod status;
mod switch;

use std::ffi::OsString;
use std::process::ExitCode;

const USAGE: &str = "usage: dockroot COMMAND [OPTIONS]

commands:
  bless      this boot's image booted well (boot counting), or bad; --reset
  boot-files copy the next boot's kernel and dockroot initramfs to the EFI system partition
             and write its systemd-boot entry (or print a GRUB or rEFInd one)
  plan       a dry run: what the init would do with a disk and a kernel command line,
             changing nothing; its exit status says how the boot would go
  rollback   the next boots boot the previous image (a kept root's)
  status     what runs and what the next boot will do (--json for scripts)
  switch     choose the image later boots boot (from now on, or --once), or --reset

  dockroot COMMAND --help   what a command does, its options and exit status
  dockroot --version
  dockroot --help

The boot itself is dockroot-init, the /init of an initramfs built by dockroot-mkinitramfs.";

/// Exit status of a usage error, for every command.
pub const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let first = args.next();
    let rest: Vec<OsString> = args.collect();
    let code = match first.as_ref().and_then(|a| a.to_str()) {
        Some("--version" | "-V") => {
            println!("dockroot {}", env!("CARGO_PKG_VERSION"));
            0
        }
        Some("--help" | "-h" | "help") => {
            println!("dockroot {}\n{USAGE}", env!("CARGO_PKG_VERSION"));
            0
        }
        Some("bless") => bless::run(rest),
        Some("boot-files") => bootfiles::run(rest),
        Some("plan") => plan::run(rest),
        Some("rollback") => rollback::run(rest),
        Some("status") => status::run(rest),
        Some("switch") => switch::run(rest),
        Some(other) => usage_error(&format!("unknown command {other:?}")),
        None if first.is_some() => usage_error("the command is not valid UTF-8"),
        None => usage_error("no command given"),
    };
    ExitCode::from(code)
}

fn usage_error(what: &str) -> u8 {
    eprintln!("dockroot: {what}\n\n{USAGE}");
    EXIT_USAGE
}
