//! `dockroot-mkinitramfs`: see `--help`.

use std::process::ExitCode;

use dockroot_mkinitramfs::args::{self, Command};
use dockroot_mkinitramfs::build;
use dockroot_mkinitramfs::compress::read_capped;
use dockroot_mkinitramfs::list as listing;
use dockroot_mkinitramfs::update::{self, Action, Request, Settings};

/// `--list FILE [--json]`: 0 shown, 1 unreadable or not a dockroot initramfs.
fn list(file: &str, json: bool) -> ExitCode {
    let data = match read_capped(std::path::Path::new(file), listing::MAX_CPIO_BYTES) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("dockroot-mkinitramfs: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match listing::inspect(&data) {
        Ok(l) if json => {
            println!("{}", listing::json(file, &l));
            ExitCode::SUCCESS
        }
        Ok(l) => {
            print!("{}", listing::human(file, &l));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("dockroot-mkinitramfs: error: {file}: {e}");
            ExitCode::FAILURE
        }
    }
}

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
        Ok(Command::Update(req)) => {
            let mtime = args::mtime_from_env(epoch.as_deref()).unwrap_or(0);
            return match run_update(&req, mtime) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("dockroot-mkinitramfs: error: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Ok(Command::List { file, json }) => return list(&file, json),
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

/// `--update` and `--remove`: one line per image on stderr, nothing on stdout
/// (the kernel hooks must not write there).
fn run_update(req: &Request, mtime: u32) -> dockroot::error::Result<()> {
    let targets = update::targets(req)?;
    if let Action::Remove(_) = req.action {
        for (_, out) in &targets {
            if update::remove(out)? {
                eprintln!("dockroot-mkinitramfs: removed {}", out.display());
            }
        }
        return Ok(());
    }
    if targets.is_empty() {
        eprintln!(
            "dockroot-mkinitramfs: no installed kernel (a {} directory with its {}): nothing to do",
            req.root.join("usr/lib/modules/RELEASE").display(),
            req.root.join("boot/vmlinuz-RELEASE").display()
        );
        return Ok(());
    }
    let settings = Settings::read(&req.root)?;
    for (release, out) in targets {
        let opts = update::options(&req.root, &settings, &release, out, mtime)?;
        let built =
            build::build_image(&opts).map_err(|e| e.context(format!("building the image of kernel {release}")))?;
        build::write_atomically(&opts.output, &built.image)?;
        eprintln!(
            "dockroot-mkinitramfs: wrote {} for kernel {release} ({} bytes, image {}, {} modules)",
            opts.output.display(),
            built.image.len(),
            built.config_image,
            built.plan.modules.len()
        );
    }
    Ok(())
}
