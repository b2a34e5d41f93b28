//! `dockroot bless`: this boot's image booted well (or, `bless bad`, it did
//! not): the boot counters beside the rw layer (`dockroot::trial`) say so, and
//! the init stops counting (or refuses the image at once). `--reset` forgets
//! every refusal.

use std::ffi::OsString;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use crate::args::{self, Own};
use crate::partition::{self, Where};
use dockroot::config::{Params, RootPlan};
use dockroot::record::BOOT_RECORD;
use dockroot::rwlayer::RwStore;
use dockroot::trial::{self, State};
use dockroot::{Context, Error, Result};

const USAGE: &str = "usage: dockroot bless [good | bad] [OPTIONS]
       dockroot bless --reset [OPTIONS]

Boot counting: a fresh root of an image that has not yet booted well on this machine
is on trial (dockroot.tries=, default 3 boots). `dockroot bless` (good) says this
boot went well: the image is blessed and no longer counted. The init leaves a systemd
unit that runs it when the boot reaches boot-complete.target (units that must succeed
first are RequiredBy=boot-complete.target); an image without systemd runs it itself.
`dockroot bless bad` gives up on the image at once: the next boot goes back to the
newest root whose image was blessed. --reset forgets every refusal (images that used
their tries, or were blessed bad): they get new tries when they are asked for again.

The image is the one this system booted, from the boot record (--record), or --image.

  good | bad       this boot's image booted well (the default), or not
  --image ID       the image (an image ID, sha256:...) instead of the booted one
  --record FILE    the boot record (default: /run/dockroot/boot.json)
  --reset          forget every refusal
PARTITION_OPTIONS
  --help           this text

exit status:
  0  done (or already so)
  1  it could not be done (no boot record, the partition, the counters)
  2  usage error";

fn usage() -> String {
    USAGE.replace("PARTITION_OPTIONS", partition::OPTIONS_HELP)
}

#[derive(Debug, PartialEq, Eq)]
enum Action {
    Bless { good: bool },
    Reset,
}

#[derive(Debug)]
struct Args {
    action: Action,
    image: Option<String>,
    record: Option<PathBuf>,
    at: Where,
    cmdline: Option<String>,
}

fn parse(argv: Vec<OsString>) -> std::result::Result<Option<Args>, String> {
    let (mut verdict, mut reset, mut image, mut record) = (None, false, None, None);
    let (mut at, mut cmdline) = (Where::FromCmdline, None);
    let run = args::parse(argv, &mut at, &mut cmdline, |arg, p| {
        match arg {
            Own::Long(n) if n == "reset" => reset = true,
            Own::Long(n) if n == "image" => {
                let v = p.value().map_err(|e| e.to_string())?.into_string().map_err(|v| format!("{v:?}: not UTF-8"))?;
                trial::id_hex(&v)
                    .ok_or_else(|| format!("--image {v}: expected an image ID (sha256: and 64 hex digits)"))?;
                image = Some(v);
            }
            Own::Long(n) if n == "record" => record = Some(PathBuf::from(p.value().map_err(|e| e.to_string())?)),
            Own::Value(v) if verdict.is_none() => {
                verdict = Some(match v.to_str() {
                    Some("good") => true,
                    Some("bad") => false,
                    _ => return Err(format!("{v:?}: expected good or bad")),
                })
            }
            other => return Err(other.unexpected()),
        }
        Ok(())
    })?;
    if !run {
        return Ok(None);
    }
    let action = match (verdict, reset) {
        (Some(_), true) => return Err("give good, bad or --reset, not two of them".into()),
        (None, true) => Action::Reset,
        (v, false) => Action::Bless { good: v.unwrap_or(true) },
    };
    Ok(Some(Args { action, image, record, at, cmdline }))
}

/// `dockroot bless`: returns the exit status.
pub fn run(argv: Vec<OsString>) -> u8 {
    match args::arguments("bless", &usage(), parse(argv)) {
        Ok(a) => args::finish("bless", bless(&a)),
        Err(code) => code,
    }
}

/// The booted image's ID from the boot record.
fn booted_image(record: &Path) -> Result<String> {
    let text = std::fs::read_to_string(record)
        .context(|| format!("reading the boot record {} (give --image ID on a host)", record.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::msg(format!("{}: {e}", record.display())))?;
    json.pointer("/image/id")
        .and_then(|v| v.as_str())
        .filter(|id| trial::id_hex(id).is_some())
        .map(str::to_string)
        .ok_or_else(|| {
            Error::msg(format!("{}: this boot was not a fresh root of an image (nothing to bless)", record.display()))
        })
}

fn bless(a: &Args) -> Result<String> {
    let image = match (&a.action, &a.image) {
        (Action::Reset, _) => None,
        (_, Some(i)) => Some(i.clone()),
        (_, None) => Some(booted_image(a.record.as_deref().unwrap_or(Path::new(BOOT_RECORD)))?),
    };
    let cmdline = partition::cmdline(&a.cmdline)?;
    let params = Params::from_cmdline(&cmdline)?;
    let root = RootPlan::from_params(&params)?;
    partition::with_top(&a.at, &root.root, true, |top, _| {
        let top_dir = std::fs::File::open(top).context(|| format!("opening {}", top.display()))?;
        let store = RwStore::open(top_dir.as_fd(), &root.rw_subvol)?;
        let trials = store.trials(image.is_some())?;
        match (&a.action, image) {
            (Action::Reset, _) => {
                let Some(t) = trials else { return Ok("no image was ever refused here".into()) };
                let states = t.states()?;
                let refused: Vec<(&String, &Vec<String>)> =
                    states.iter().filter(|(_, (s, _))| s.refused()).map(|(h, (_, f))| (h, f)).collect();
                for (_, files) in &refused {
                    t.clear(files)?;
                }
                Ok(match refused.is_empty() {
                    true => "no image is refused".into(),
                    false => format!(
                        "forgot the refusal of {}: each gets new tries when it is asked for again",
                        refused.iter().map(|(h, _)| format!("sha256:{h}")).collect::<Vec<_>>().join(", ")
                    ),
                })
            }
            (Action::Bless { good }, Some(image)) => {
                let t = trials.context(|| "the boot counters' directory could not be made")?;
                let hex = trial::id_hex(&image).context(|| format!("{image} is not an image ID"))?;
                let states = t.states()?;
                let (state, files) = states.get(hex).cloned().unwrap_or((State::New, Vec::new()));
                let Some(to) = trial::on_bless(state, *good) else {
                    return Ok(format!("image {image} is already {}", state.describe()));
                };
                t.set(hex, &files, to)?;
                Ok(match good {
                    true => format!(
                        "image {image} is blessed (it was {}): its boots are no longer counted",
                        state.describe()
                    ),
                    false => format!("image {image} is refused: the next boot goes back to the newest blessed image"),
                })
            }
            (Action::Bless { .. }, None) => Err(Error::msg("no image to bless")),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn action(s: &str) -> std::result::Result<Action, String> {
        match parse(s.split_whitespace().map(OsString::from).collect())? {
            Some(a) => Ok(a.action),
            None => Err("help".into()),
        }
    }

    #[test]
    fn parses_good_bad_and_reset() {
        assert_eq!(action(""), Ok(Action::Bless { good: true }));
        assert_eq!(action("good"), Ok(Action::Bless { good: true }));
        assert_eq!(action("bad --top /t"), Ok(Action::Bless { good: false }));
        assert_eq!(action("--reset"), Ok(Action::Reset));
        assert_eq!(action("bad --reset"), Err("give good, bad or --reset, not two of them".into()));
        assert_eq!(action("maybe"), Err("\"maybe\": expected good or bad".into()));
        assert_eq!(action("good --help"), Err("help".into()));
        assert!(action("--image sha256:12").unwrap_err().contains("expected an image ID"));
        assert!(action(&format!("--image sha256:{}", "a".repeat(64))).is_ok());
    }
}
