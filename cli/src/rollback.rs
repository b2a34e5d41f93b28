//! `dockroot rollback`: the next boots boot the previous image. Which one is
//! decided here ([`previous`], pure); the init then boots it fresh from the
//! store, or a copy of its kept root when it is gone (`policy`).

use std::ffi::OsString;
use std::os::fd::AsFd;
use std::path::Path;

use crate::args;
use crate::partition::{self, Where};
use dockroot::config::{self, Params, RootPlan};
use dockroot::nextboot::{self, NextBoot, Selection};
use dockroot::reference::{self, ImageSpec};
use dockroot::rwlayer::{self, At, RwStore};
use dockroot::{store, Context, Error, Result};

const USAGE: &str = "usage: dockroot rollback [OPTIONS]

The next boots boot the previous image: the image of the newest kept root whose image
is not the one the rw layer holds now. It boots fresh from the store (with the top
layer) while the image is there, else as a copy of that kept root. A pending
dockroot switch --once choice is dropped. dockroot.image= on the kernel command line
still wins; dockroot switch --reset undoes the rollback.

PARTITION_OPTIONS
  --help           this text

exit status:
  0  done
  1  it could not be done (no kept root of another image, the partition, the file)
  2  usage error";

fn usage() -> String {
    USAGE.replace("PARTITION_OPTIONS", partition::OPTIONS_HELP)
}

fn parse(argv: Vec<OsString>) -> std::result::Result<Option<(Where, Option<String>)>, String> {
    let (mut at, mut cmdline) = (Where::FromCmdline, None);
    let run = args::parse(argv, &mut at, &mut cmdline, |arg, _| Err(arg.unexpected()))?;
    Ok(run.then_some((at, cmdline)))
}

/// `dockroot rollback`: returns the exit status.
pub fn run(argv: Vec<OsString>) -> u8 {
    let (at, cmdline) = match args::arguments("rollback", &usage(), parse(argv)) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let done = partition::cmdline(&cmdline).and_then(|cmdline| {
        let root = RootPlan::from_params(&Params::from_cmdline(&cmdline)?)?;
        partition::with_top(&at, &root.root, true, |top, _| rollback(top, &cmdline, &root))
    });
    args::finish("rollback", done)
}

/// The previous image: the newest kept root (names sort by creation time,
/// `kept` is oldest first) whose image is an image ID and not `current`.
pub fn previous<'a>(current: Option<&str>, kept: &'a [(String, Option<String>)]) -> Option<(&'a str, &'a str)> {
    kept.iter().rev().find_map(|(name, image)| {
        let image = image.as_deref()?;
        let is_id = image.strip_prefix("sha256:").is_some_and(reference::is_hex64);
        (is_id && Some(image) != current).then_some((name.as_str(), image))
    })
}

fn rollback(top: &Path, cmdline: &str, root: &RootPlan) -> Result<String> {
    let top_dir = std::fs::File::open(top).context(|| format!("opening {}", top.display()))?;
    let store = RwStore::open(top_dir.as_fd(), &root.rw_subvol)?;
    let image_of = |at: &At| store.open_root(at).ok().and_then(|fd| rwlayer::read_info(fd.as_fd())).map(|i| i.image);
    let current = image_of(&At::Current);
    let kept: Vec<(String, Option<String>)> =
        store.kept()?.into_iter().map(|name| (name.clone(), image_of(&At::Kept(name)))).collect();
    let Some((name, image)) = previous(current.as_deref(), &kept) else {
        return Err(Error::msg(format!(
            "no kept root in {}.kept holds another image than {} ({}): nothing to roll back to",
            store.rw_shown(),
            store.rw_shown(),
            current.as_deref().unwrap_or("unknown")
        )));
    };
    let shown = store.kept_shown(name);
    let opts = config::store_options(&config::split(cmdline).0, &root.docker_path)?;
    let now = match store::resolve_image(top, &opts, &ImageSpec::Id(image.to_string())) {
        Ok(r) => format!("fresh from {} while it is there (it is now, as {})", r.whence(), r.reference),
        Err(_) => format!("as a copy of {shown}: the image is no longer in the stores"),
    };
    let (rw_name, parent) = root.rw_subvol.split_last().context(|| "rootflags=subvol= names no rw layer")?;
    let file = format!("/{}{}", root.rw_subvol.join("/"), nextboot::SUFFIX);
    let dir = rwlayer::open_beneath(top_dir.as_fd(), parent)?;
    let next = NextBoot {
        switch: Some(Selection { image: image.to_string(), set: rwlayer::now_stamp(), kept: Some(name.to_string()) }),
        once: None,
    };
    nextboot::write(dir.as_fd(), rw_name, &next).context(|| format!("writing {file}"))?;
    let mut said = format!(
        "the next boots boot the previous image {image} (of {shown}), {now}; dockroot switch --reset undoes this"
    );
    if Params::from_cmdline(cmdline).is_ok_and(|p| p.image.is_some()) {
        said.push_str("\nnote: dockroot.image= on the kernel command line wins over this while it is there");
    }
    Ok(said)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_previous_image_is_the_newest_kept_other_one() {
        let (a, b) = (format!("sha256:{}", "a".repeat(64)), format!("sha256:{}", "b".repeat(64)));
        let k = |n: &str, i: Option<&String>| (n.to_string(), i.cloned());
        let kept = vec![k("1", Some(&b)), k("2", Some(&a)), k("3", None), k("4", Some(&a))];
        assert_eq!(previous(Some(&a), &kept), Some(("1", b.as_str())));
        assert_eq!(previous(Some(&b), &kept), Some(("4", a.as_str())));
        assert_eq!(previous(None, &kept), Some(("4", a.as_str())));
        assert_eq!(previous(Some(&a), &kept[1..]), None, "only the running image is kept");
        let words = vec![k("1", Some(&"copy".to_string()))];
        assert_eq!(previous(None, &words), None, "not an image ID");
    }

    #[test]
    fn takes_only_the_partition_options() {
        let args = |s: &str| s.split_whitespace().map(OsString::from).collect::<Vec<_>>();
        assert!(matches!(parse(args("--device /dev/vda2")), Ok(Some((Where::Device(_), None)))));
        assert!(matches!(parse(args("-h")), Ok(None)));
        assert!(parse(args("os:1")).is_err());
    }
}
