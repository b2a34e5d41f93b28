//! Boot counting: a fresh root of an image that has not yet booted well on
//! this machine is on trial, with `dockroot.tries=` tries (default 3). Each
//! boot of it uses one try before switch_root, so a hang, a crash or a power
//! cut counts; `dockroot bless` (run when systemd reaches
//! `boot-complete.target`) marks the image good; an image that used its tries
//! unblessed, or that `dockroot bless bad` gave up on, is refused: the boot
//! goes back to the newest root whose image was blessed (see
//! [`crate::policy::refusal`]).
//!
//! The counters live on the root partition in a directory beside the rw
//! layer, `NAME.dockroot-trials/`, one empty file per image, its state in its
//! name, as systemd-boot counts in its entries' names (`+LEFT-DONE`): a state
//! changes by one atomic rename (then the directory is synced), so a power cut
//! at any point leaves the old state or the new one, never both or neither:
//!
//! | file name | state |
//! |---|---|
//! | `<64 hex>+L-D` | on trial: L tries left, D used (`+0-D`: refused, tries used up) |
//! | `<64 hex>.good` | blessed: a boot reached `boot-complete.target` |
//! | `<64 hex>.bad` | refused: `dockroot bless bad` |
//!
//! The directory is untrusted input: names that are not ours are ignored;
//! several files for one image (which no step of ours leaves) count as the
//! most cautious of them ([`State::merge`]).
//!
//! Pure part: [`parse_name`], [`name`], [`on_boot`], [`on_bless`], [`read_states`]
//! over names. Thin part: [`Trials`] (open, list, create, rename, sync).

use std::collections::BTreeMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{Mode, OFlags};

use crate::error::{Context, Error, Result};

/// The directory's suffix after the rw layer's name.
pub const SUFFIX: &str = ".dockroot-trials";
/// The default of `dockroot.tries=`.
pub const DEFAULT_TRIES: u8 = 3;
/// The most tries `dockroot.tries=` may give.
pub const MAX_TRIES: u8 = 99;
/// The most entries read from the directory (a hostile directory cannot make the boot slow).
const MAX_ENTRIES: usize = 1024;

/// An image's state on this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Never booted with counting on.
    New,
    /// On trial: tries left and used.
    Trial {
        left: u8,
        done: u8,
    },
    Good,
    /// `dockroot bless bad`.
    Bad,
}

impl State {
    /// Whether the boot refuses the image.
    pub fn refused(self) -> bool {
        matches!(self, State::Bad | State::Trial { left: 0, .. })
    }

    /// Two files for one image: the more cautious state (refused over on
    /// trial over good; fewer tries left; more used).
    pub fn merge(self, other: State) -> State {
        fn rank(s: State) -> (u8, u8, u8) {
            match s {
                State::Bad => (4, 0, 0),
                State::Trial { left, done } => (if left == 0 { 3 } else { 2 }, MAX_TRIES - left.min(MAX_TRIES), done),
                State::Good => (1, 0, 0),
                State::New => (0, 0, 0),
            }
        }
        if rank(other) > rank(self) {
            other
        } else {
            self
        }
    }

    /// As said in messages and `dockroot status`.
    pub fn describe(self) -> String {
        match self {
            State::New => "not yet booted".into(),
            State::Trial { left: 0, done } => format!("refused: failed {done} boots without being blessed"),
            State::Trial { left, done } => format!("on trial: {left} tries left, {done} used"),
            State::Good => "blessed".into(),
            State::Bad => "refused: dockroot bless bad".into(),
        }
    }
}

/// The image ID's hex digits ("sha256:" stripped), if it is a full sha256 ID.
pub fn id_hex(image_id: &str) -> Option<&str> {
    let hex = image_id.strip_prefix("sha256:").unwrap_or(image_id);
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))).then_some(hex)
}

/// The image (64 hex) and state a file name says, or None if it is not ours.
pub fn parse_name(file: &str) -> Option<(String, State)> {
    let hex = id_hex(file.get(..64)?)?;
    let rest = file.get(64..)?;
    let state = match rest {
        ".good" => State::Good,
        ".bad" => State::Bad,
        _ => {
            let (left, done) = rest.strip_prefix('+')?.split_once('-')?;
            // Decimal as we write it: no sign, no leading zero, at most 99.
            let canonical = |s: &str| {
                !s.is_empty()
                    && s.len() <= 2
                    && s.bytes().all(|b| b.is_ascii_digit())
                    && (s == "0" || !s.starts_with('0'))
            };
            let num = |s: &str| canonical(s).then(|| s.parse().ok()).flatten();
            State::Trial { left: num(left)?, done: num(done)? }
        }
    };
    Some((hex.to_string(), state))
}

/// The file name for an image (64 hex) in a state; None for [`State::New`] (no file).
pub fn name(hex: &str, state: State) -> Option<String> {
    match state {
        State::New => None,
        State::Trial { left, done } => Some(format!("{hex}+{left}-{done}")),
        State::Good => Some(format!("{hex}.good")),
        State::Bad => Some(format!("{hex}.bad")),
    }
}

/// Every image's state from the directory's file names (untrusted: others ignored).
pub fn read_states<'a>(names: impl IntoIterator<Item = &'a str>) -> BTreeMap<String, (State, Vec<String>)> {
    let mut states: BTreeMap<String, (State, Vec<String>)> = BTreeMap::new();
    for n in names {
        if let Some((hex, s)) = parse_name(n) {
            let e = states.entry(hex).or_insert((s, Vec::new()));
            e.0 = e.0.merge(s);
            e.1.push(n.to_string());
        }
    }
    states
}

/// What a boot of an image in `state` does with `tries` (`dockroot.tries=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Counting is off, or the image is blessed.
    Nothing,
    /// Use a try: the state it moves to.
    Use(State),
    /// The image is refused (see [`crate::policy::refusal`]).
    Refused,
}

/// The boot's step (pure).
pub fn on_boot(state: State, tries: u8) -> Step {
    if tries == 0 {
        return Step::Nothing;
    }
    match state {
        State::Good => Step::Nothing,
        s if s.refused() => Step::Refused,
        State::New => Step::Use(State::Trial { left: tries.min(MAX_TRIES) - 1, done: 1 }),
        State::Trial { left, done } => {
            Step::Use(State::Trial { left: left.saturating_sub(1), done: done.saturating_add(1).min(MAX_TRIES) })
        }
        State::Bad => Step::Refused,
    }
}

/// `dockroot bless` (good) or `bless bad`: the state to move to, or None when
/// there is nothing to do (already so).
pub fn on_bless(state: State, good: bool) -> Option<State> {
    match (state, good) {
        (State::Good, true) | (State::Bad, false) => None,
        (_, true) => Some(State::Good),
        (_, false) => Some(State::Bad),
    }
}

/// The trials directory of a rw layer, open.
pub struct Trials {
    dir: OwnedFd,
    /// As shown (`/rwlayer.dockroot-trials`).
    pub shown: String,
}

impl Trials {
    /// Open (with `create`, make) the directory beside the rw layer `name` in `parent`.
    pub fn open(parent: BorrowedFd<'_>, parent_shown: &str, name: &str, create: bool) -> Result<Option<Trials>> {
        let dir_name = format!("{name}{SUFFIX}");
        let shown = format!("{parent_shown}/{dir_name}");
        let flags = OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC;
        let dir = match rustix::fs::openat(parent, dir_name.as_str(), flags, Mode::empty()) {
            Ok(d) => d,
            Err(rustix::io::Errno::NOENT) if create => {
                match rustix::fs::mkdirat(parent, dir_name.as_str(), Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                    Err(e) => return Err(Error::with(format!("creating {shown}"), e)),
                }
                rustix::fs::fsync(parent).map_err(|e| Error::with(format!("syncing the directory of {shown}"), e))?;
                rustix::fs::openat(parent, dir_name.as_str(), flags, Mode::empty())
                    .map_err(|e| Error::with(format!("opening {shown}"), e))?
            }
            Err(rustix::io::Errno::NOENT) => return Ok(None),
            Err(e) => return Err(Error::with(format!("opening {shown}"), e)),
        };
        Ok(Some(Trials { dir, shown }))
    }

    /// The file names in the directory (at most [`MAX_ENTRIES`]).
    pub fn names(&self) -> Result<Vec<String>> {
        let dup = rustix::io::fcntl_dupfd_cloexec(&self.dir, 0).context(|| format!("reading {}", self.shown))?;
        let mut dir = rustix::fs::Dir::read_from(dup).context(|| format!("reading {}", self.shown))?;
        let mut names = Vec::new();
        while let Some(entry) = dir.read() {
            let entry = entry.context(|| format!("reading {}", self.shown))?;
            let n = entry.file_name().to_string_lossy();
            if n != "." && n != ".." {
                names.push(n.into_owned());
            }
            if names.len() >= MAX_ENTRIES {
                break;
            }
        }
        Ok(names)
    }

    /// Every image's state (see [`read_states`]).
    pub fn states(&self) -> Result<BTreeMap<String, (State, Vec<String>)>> {
        Ok(read_states(self.names()?.iter().map(String::as_str)))
    }

    /// Move image `hex` from its files `from` (none for a new image) to `to`,
    /// durably: create or rename, drop any other file of the image, sync the directory.
    pub fn set(&self, hex: &str, from: &[String], to: State) -> Result<()> {
        let Some(target) = name(hex, to) else { return Ok(()) };
        let dir = self.dir.as_fd();
        match from.split_first() {
            None => {
                let fd = rustix::fs::openat(
                    dir,
                    target.as_str(),
                    OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
                    Mode::from_raw_mode(0o644),
                )
                .map_err(|e| Error::with(format!("creating {}/{target}", self.shown), e))?;
                rustix::fs::fsync(&fd).map_err(|e| Error::with(format!("syncing {}/{target}", self.shown), e))?;
            }
            Some((first, others)) => {
                if first != &target {
                    rustix::fs::renameat(dir, first.as_str(), dir, target.as_str())
                        .map_err(|e| Error::with(format!("renaming {}/{first} to {target}", self.shown), e))?;
                }
                for o in others.iter().filter(|o| *o != &target) {
                    rustix::fs::unlinkat(dir, o.as_str(), rustix::fs::AtFlags::empty())
                        .map_err(|e| Error::with(format!("removing {}/{o}", self.shown), e))?;
                }
            }
        }
        rustix::fs::fsync(dir).map_err(|e| Error::with(format!("syncing {}", self.shown), e))
    }

    /// Forget image `hex` (its files `files`): it is new again.
    pub fn clear(&self, files: &[String]) -> Result<()> {
        for f in files {
            rustix::fs::unlinkat(self.dir.as_fd(), f.as_str(), rustix::fs::AtFlags::empty())
                .map_err(|e| Error::with(format!("removing {}/{f}", self.shown), e))?;
        }
        rustix::fs::fsync(self.dir.as_fd()).map_err(|e| Error::with(format!("syncing {}", self.shown), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn names_round_trip_and_strangers_are_ignored() {
        for s in [State::Trial { left: 2, done: 1 }, State::Trial { left: 0, done: 3 }, State::Good, State::Bad] {
            let n = name(A, s).unwrap();
            assert_eq!(parse_name(&n), Some((A.to_string(), s)), "{n}");
        }
        assert_eq!(name(A, State::New), None);
        for bad in [
            "",
            "x",
            A,
            &format!("{A}+"),
            &format!("{A}+1"),
            &format!("{A}+1-"),
            &format!("{A}+-1"),
            &format!("{A}+100-1"),
            &format!("{A}+1-1x"),
            &format!("{A}+ 1-1"),
            &format!("{A}+00-3"),
            &format!("{A}+1-03"),
            &format!("{A}.GOOD"),
            &format!("{A}.good.tmp"),
            &"A".repeat(64),
            &format!("{}+1-1", &A[..63]),
            "../../etc+1-1",
        ] {
            assert_eq!(parse_name(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_boot_uses_a_try_until_none_is_left() {
        let mut s = State::New;
        let mut steps = Vec::new();
        loop {
            match on_boot(s, 3) {
                Step::Use(next) => {
                    steps.push(next);
                    s = next;
                }
                Step::Refused => break,
                Step::Nothing => panic!("counting is on"),
            }
        }
        assert_eq!(
            steps,
            [State::Trial { left: 2, done: 1 }, State::Trial { left: 1, done: 2 }, State::Trial { left: 0, done: 3 }]
        );
        assert!(s.refused());
        assert_eq!(s.describe(), "refused: failed 3 boots without being blessed");
        assert_eq!(on_boot(State::Good, 3), Step::Nothing);
        assert_eq!(on_boot(State::Bad, 3), Step::Refused);
        assert_eq!(on_boot(State::New, 0), Step::Nothing, "dockroot.tries=0 counts nothing");
        assert_eq!(on_boot(State::Bad, 0), Step::Nothing, "and refuses nothing");
        assert_eq!(on_boot(State::New, 1), Step::Use(State::Trial { left: 0, done: 1 }));
        assert_eq!(on_boot(State::New, 200), Step::Use(State::Trial { left: MAX_TRIES - 1, done: 1 }));
    }

    #[test]
    fn blessing_moves_to_good_or_bad_once() {
        assert_eq!(on_bless(State::Trial { left: 1, done: 2 }, true), Some(State::Good));
        assert_eq!(on_bless(State::New, true), Some(State::Good));
        assert_eq!(on_bless(State::Good, true), None);
        assert_eq!(on_bless(State::Good, false), Some(State::Bad));
        assert_eq!(on_bless(State::Bad, false), None);
        assert_eq!(on_bless(State::Trial { left: 0, done: 3 }, true), Some(State::Good));
    }

    #[test]
    fn several_files_for_one_image_count_as_the_most_cautious() {
        let a_good = format!("{A}.good");
        let a_trial = format!("{A}+1-2");
        let a_trial2 = format!("{A}+2-1");
        let b_bad = format!("{B}.bad");
        let b_good = format!("{B}.good");
        let states = read_states([
            a_good.as_str(),
            a_trial.as_str(),
            a_trial2.as_str(),
            b_good.as_str(),
            b_bad.as_str(),
            "junk",
        ]);
        assert_eq!(states[A].0, State::Trial { left: 1, done: 2 });
        assert_eq!(states[A].1.len(), 3);
        assert_eq!(states[B].0, State::Bad);
        assert_eq!(states.len(), 2);
    }

    fn tempdir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("dockroot-trial-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn counters_change_by_renames_on_disk() {
        let d = tempdir("rename");
        let parent = rustix::fs::open(&d, OFlags::DIRECTORY | OFlags::RDONLY, Mode::empty()).unwrap();
        assert!(Trials::open(parent.as_fd(), "/", "rw", false).unwrap().is_none(), "not created when only reading");
        let t = Trials::open(parent.as_fd(), "", "rw", true).unwrap().unwrap();
        assert_eq!(t.shown, "/rw.dockroot-trials");
        let hex = A.to_string();
        let mut state = State::New;
        for _ in 0..3 {
            let files = t.states().unwrap().get(&hex).map(|e| e.1.clone()).unwrap_or_default();
            let Step::Use(next) = on_boot(state, 3) else { panic!() };
            t.set(&hex, &files, next).unwrap();
            state = t.states().unwrap()[&hex].0;
            assert_eq!(state, next);
        }
        assert_eq!(on_boot(state, 3), Step::Refused);
        let names = t.names().unwrap();
        assert_eq!(names, [format!("{A}+0-3")], "one file per image");
        std::fs::write(d.join("rw.dockroot-trials").join(format!("{A}.bad")), b"").unwrap();
        let files = t.states().unwrap()[&hex].1.clone();
        t.set(&hex, &files, State::Good).unwrap();
        assert_eq!(t.names().unwrap(), [format!("{A}.good")], "blessing leaves one file");
        t.clear(&t.states().unwrap()[&hex].1).unwrap();
        assert!(t.names().unwrap().is_empty());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
