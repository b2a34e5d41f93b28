//! `/init` of a dockroot initramfs: as PID 1 it boots. Anywhere else it only
//! says what it is: the commands (`dockroot plan`, ...) are the `dockroot`
//! binary of cli/, so that they cost the init nothing.

#![no_main]

mod glibc;
mod malloc;

const USAGE: &str = "usage: dockroot-init [--version | --help]

The /init of an initramfs built by dockroot-mkinitramfs: as PID 1 it boots a Docker
image. It does nothing else; the commands (dockroot plan, ...) are the `dockroot` program.";

/// The C entry point: std's runtime setup (SIGPIPE ignored, stack guard via
/// pthread_getattr_np, which drags in scanf/stdio) is skipped.
#[no_mangle]
pub extern "C" fn main(_argc: i32, _argv: *const *const u8) -> i32 {
    if rustix::process::getpid().is_init() {
        dockroot::boot::run();
    }
    let arg = std::env::args().nth(1);
    let code = match arg.as_deref() {
        Some("--version") => {
            // One string, so that the builder finds the version in the binary.
            print!("{}", dockroot::record::INIT_VERSION_LINE);
            0
        }
        Some("--help" | "-h") => {
            println!("dockroot-init {}\n{USAGE}", env!("CARGO_PKG_VERSION"));
            0
        }
        _ => {
            eprintln!("dockroot-init {}: boots only as PID 1\n{USAGE}", env!("CARGO_PKG_VERSION"));
            2
        }
    };
    std::process::exit(code);
}
