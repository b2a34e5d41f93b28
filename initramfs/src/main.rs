//! `dockroot-mkinitramfs`: see `--help`.

use std::process::ExitCode;

use dockroot_mkinitramfs::args::{self, Command};
use dockroot_mkinitramfs::build;

fn main() -> ExitCode {
    let argv: Vec<String> = match std::env::args_os().skip(1).map(|a| a.into_string()).collect() {
        Ok(v) => v,
        Err(bad) => {
            eprintln!("dockroot-mkinitramfs: error: argument {bad:?} is not valid UTF-8");
            return ExitCode::from(2);
        }
    };
    let epoch = std::env::var("SOURCE_DATE_EPOCH").ok();
    let command = args::mtime_from_env(epoch.as_deref()).and_then(|mtime| args::parse(&argv, mtime));
    let opts = match command {
        Ok(Command::Help) => {
            print!("{}", args::help());
            return ExitCode::SUCCESS;
        }
        Ok(Command::Version) => {
            println!("dockroot-mkinitramfs {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Ok(Command::Build(opts)) => opts,
        Err(e) => {
            eprintln!("dockroot-mkinitramfs: error: {e}");
            return ExitCode::from(2);
        }
    };
    let result = build::build_image(&opts).and_then(|built| {
        build::write_atomically(&opts.output, &built.image)?;
        Ok(built)
    });
    match result {
        Ok(built) => {
            eprint!("{}", build::summary(&opts, &built));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("dockroot-mkinitramfs: error: {e}");
            ExitCode::FAILURE
        }
    }
}
