//! `/init` of a dockroot initramfs. As PID 1 it boots; run any other way it
//! explains itself (a later stage adds a host-side dry run).

fn main() {
    if rustix::process::getpid().is_init() {
        dockroot::boot::run();
    }
    let arg = std::env::args().nth(1);
    match arg.as_deref() {
        Some("--version") => println!("dockroot {}", env!("CARGO_PKG_VERSION")),
        _ => {
            eprintln!(
                "dockroot {}: the /init of an initramfs that boots a Docker image from btrfs.\n\
                 It runs as PID 1 only; build an initramfs with dockroot-mkinitramfs.",
                env!("CARGO_PKG_VERSION")
            );
            std::process::exit(2);
        }
    }
}
