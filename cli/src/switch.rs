//! `dockroot switch`: choose the image later boots boot, in the file beside
//! the rw layer that the init reads (`dockroot::nextboot`).

use std::ffi::OsString;
use std::os::fd::AsFd;
use std::path::Path;

use crate::args::{self, Own};
use crate::partition::{self, Where};
use dockroot::config::{self, Params, RootPlan};
use dockroot::nextboot::{self, NextBoot, Selection};
use dockroot::{reference, rwlayer, store, Context, Error, Result};

const USAGE: &str = "usage: dockroot switch IMAGE [--once] [OPTIONS]
       dockroot switch --reset [OPTIONS]

Choose the image the next boots boot, overriding the initramfs's embedded config:
from now on, or with --once for the next boot only (the boot removes the choice
before it uses it, so it boots at most once, whatever happens). dockroot.image= on
the kernel command line still wins. --reset removes both choices: the embedded
config decides again. The choice is a small file beside the rw layer
(NAME.dockroot-next), replaced atomically; the image must be in a store on the
partition now (docker pull it first).

  IMAGE            an image reference (myname/desktop:2) or ID, as dockroot.image= takes
  --once           for the next boot only
  --reset          remove the choices
PARTITION_OPTIONS
  --help           this text

exit status:
  0  done
  1  it could not be done (the partition, the file, or the image is not in a store)
  2  usage error";

fn usage() -> String {
    USAGE.replace("PARTITION_OPTIONS", partition::OPTIONS_HELP)
}

/// What to do.
#[derive(Debug, PartialEq, Eq)]
enum Action {
    Switch { image: String, once: bool },
    Reset,
}

#[derive(Debug)]
struct Args {
    action: Action,
    at: Where,
    cmdline: Option<String>,
}

fn parse(argv: Vec<OsString>) -> std::result::Result<Option<Args>, String> {
    let (mut image, mut once, mut reset) = (None, false, false);
    let (mut at, mut cmdline) = (Where::FromCmdline, None);
    let run = args::parse(argv, &mut at, &mut cmdline, |arg, _| {
        match arg {
            Own::Long(n) if n == "once" => once = true,
            Own::Long(n) if n == "reset" => reset = true,
            Own::Value(v) if image.is_none() => {
                image = Some(v.into_string().map_err(|v| format!("the image {v:?} is not valid UTF-8"))?)
            }
            other => return Err(other.unexpected()),
        }
        Ok(())
    })?;
    if !run {
        return Ok(None);
    }
    let action = match (image, reset) {
        (Some(_), true) => return Err("give an image or --reset, not both".into()),
        (None, true) if once => return Err("--once goes with an image, not with --reset".into()),
        (None, true) => Action::Reset,
        (Some(image), false) => {
            reference::parse(&image).map_err(|e| format!("{image}: {e}"))?;
            Action::Switch { image, once }
        }
        (None, false) => return Err("give an image, or --reset".into()),
    };
    Ok(Some(Args { action, at, cmdline }))
}

/// `dockroot switch`: returns the exit status.
pub fn run(argv: Vec<OsString>) -> u8 {
    match args::arguments("switch", &usage(), parse(argv)) {
        Ok(a) => args::finish("switch", switch(&a)),
        Err(code) => code,
    }
}

fn switch(a: &Args) -> Result<String> {
    let cmdline = partition::cmdline(&a.cmdline)?;
    let params = Params::from_cmdline(&cmdline)?;
    let root = RootPlan::from_params(&params)?;
    partition::with_top(&a.at, &root.root, true, |top, _| change(top, &cmdline, &root, &a.action))
}

/// Change the file under the mounted top level `top`; what was done, as said to the user.
fn change(top: &Path, cmdline: &str, root: &RootPlan, action: &Action) -> Result<String> {
    let (name, parent) = root.rw_subvol.split_last().context(|| "rootflags=subvol= names no rw layer")?;
    let shown = format!("/{}{}", root.rw_subvol.join("/"), nextboot::SUFFIX);
    let top_dir = std::fs::File::open(top).context(|| format!("opening {}", top.display()))?;
    let dir = rwlayer::open_beneath(top_dir.as_fd(), parent)?;
    let mut next = match nextboot::read(dir.as_fd(), name) {
        Ok(n) => n.unwrap_or_default(),
        Err(e) => {
            eprintln!("dockroot switch: replacing {shown}, which cannot be used: {e}");
            NextBoot::default()
        }
    };
    let said = match action {
        Action::Reset => {
            next = NextBoot::default();
            format!("removed the choices in {shown}: the next boot boots the image the embedded config names")
        }
        Action::Switch { image, once } => {
            let spec = reference::parse(image)?;
            let opts = config::store_options(&config::split(cmdline).0, &root.docker_path)?;
            let found = store::resolve_image(top, &opts, &spec)
                .map_err(|e| Error::msg(format!("{image} cannot boot from this partition: {e}")))?;
            let sel = Selection { image: image.clone(), set: rwlayer::now_stamp(), kept: None };
            let what = format!("{image} ({} in {})", found.image_id, found.whence());
            if *once {
                next.once = Some(sel);
                format!("the next boot boots {what}, once; then {}", after_once(&next))
            } else {
                next.switch = Some(sel);
                match &next.once {
                    Some(o) => format!("the boots after the one-shot {} boot {what}", o.image),
                    None => format!("the next boots boot {what}"),
                }
            }
        }
    };
    nextboot::write(dir.as_fd(), name, &next).context(|| format!("writing {shown}"))?;
    let mut said = said;
    if Params::from_cmdline(cmdline).is_ok_and(|p| p.image.is_some()) {
        said.push_str("\nnote: dockroot.image= on the kernel command line wins over this choice while it is there");
    }
    Ok(said)
}

/// What boots after a one-shot boot.
fn after_once(next: &NextBoot) -> String {
    match &next.switch {
        Some(s) => format!("{} (dockroot switch) again", s.image),
        None => "the image the embedded config names again".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<OsString> {
        s.split_whitespace().map(OsString::from).collect()
    }

    fn action(s: &str) -> std::result::Result<Action, String> {
        match parse(args(s))? {
            Some(a) => Ok(a.action),
            None => Err("help".into()),
        }
    }

    #[test]
    fn parses_switch_once_and_reset() {
        assert_eq!(action("os:2"), Ok(Action::Switch { image: "os:2".into(), once: false }));
        assert_eq!(action("--once os:2 --top /t"), Ok(Action::Switch { image: "os:2".into(), once: true }));
        assert_eq!(action("--reset --device /dev/vda2"), Ok(Action::Reset));
        assert_eq!(action("os:2 --help"), Err("help".into()));
        assert_eq!(action(""), Err("give an image, or --reset".into()));
        assert_eq!(action("os --reset"), Err("give an image or --reset, not both".into()));
        assert_eq!(action("--reset --once"), Err("--once goes with an image, not with --reset".into()));
        assert!(action("Bad/Name").unwrap_err().starts_with("Bad/Name: "));
        assert!(action("os:1 os:2").unwrap_err().contains("os:2"));
    }
}
