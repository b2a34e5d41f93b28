//! What the next boots boot, chosen from the running system (`dockroot switch`):
//! one small file beside the rw layer, `NAME.dockroot-next`, on the root
//! partition. The init reads it (stage 5) and treats it as untrusted input: a
//! file that cannot be read or parsed is a warning and is ignored, never a
//! failed boot.
//!
//! The format (version 1), JSON, at most [`MAX_BYTES`]:
//!
//! ```json
//! {"dockroot_next_boot": 1,
//!  "switch": {"image": "myname/desktop:2", "set": "20261204T053000Z"},
//!  "once": {"image": "myname/test:1", "set": "20261204T053100Z"}}
//! ```
//!
//! A choice may name a kept root (`"kept": "20261204T050000Z-0123456789ab"`):
//! `dockroot rollback` writes the previous image's ID and its kept root, which
//! boots as a copy when the image cannot be made fresh (see `policy`).
//! `switch` holds from now on; `once` is for the next boot only: the init
//! removes it from the file before it builds the root, so it is tried at most
//! once, whatever happens. Precedence ([`select`]): `dockroot.image=` on the
//! kernel command line > `once` > `switch` > the embedded config.
//!
//! Pure part: [`parse`], [`NextBoot::to_json`], [`select`]. Thin part: [`read`]
//! and [`write`] (temp file, fsync, rename, fsync the directory).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{Mode, OFlags};

use crate::error::{Context, Error, Result};
use crate::reference::{self, ImageSpec};

/// The file's suffix after the rw layer's name.
pub const SUFFIX: &str = ".dockroot-next";
/// The largest file read: a handful of references and timestamps fit many times over.
pub const MAX_BYTES: usize = 4096;
/// The format's version, in `"dockroot_next_boot"`.
pub const VERSION: u64 = 1;

/// An image chosen for later boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// The image reference as given (checked with [`reference::parse`]).
    pub image: String,
    /// When it was chosen (UTC, `YYYYMMDDTHHMMSSZ` as [`crate::rwlayer::utc_stamp`]), for `status`.
    pub set: String,
    /// `dockroot rollback`: the kept root (a name in `NAME.kept/`) to copy when
    /// the image cannot be made fresh.
    pub kept: Option<String>,
}

/// The file's contents.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NextBoot {
    /// From now on (`dockroot switch IMAGE`).
    pub switch: Option<Selection>,
    /// For the next boot only (`dockroot switch --once IMAGE`).
    pub once: Option<Selection>,
}

/// Where the image that boots comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageSource {
    /// `dockroot.image=` on the kernel command line.
    Cmdline,
    /// `dockroot switch --once`.
    Once,
    /// `dockroot switch`.
    Switch,
    /// `dockroot rollback` (a choice that names a kept root).
    Rollback,
    /// The initramfs's embedded config.
    Embedded,
}

impl ImageSource {
    /// As said in messages and boot.json.
    pub fn name(self) -> &'static str {
        match self {
            ImageSource::Cmdline => "dockroot.image= on the kernel command line",
            ImageSource::Once => "dockroot switch --once",
            ImageSource::Switch => "dockroot switch",
            ImageSource::Rollback => "dockroot rollback",
            ImageSource::Embedded => "the embedded config",
        }
    }
}

impl NextBoot {
    /// Nothing chosen: the file can be removed.
    pub fn is_empty(&self) -> bool {
        self.switch.is_none() && self.once.is_none()
    }

    /// The file's bytes.
    pub fn to_json(&self) -> String {
        let sel = |s: &Selection| match &s.kept {
            Some(k) => serde_json::json!({"image": s.image, "set": s.set, "kept": k}),
            None => serde_json::json!({"image": s.image, "set": s.set}),
        };
        let mut v = serde_json::json!({"dockroot_next_boot": VERSION});
        if let (Some(s), Some(m)) = (&self.switch, v.as_object_mut()) {
            m.insert("switch".into(), sel(s));
        }
        if let (Some(s), Some(m)) = (&self.once, v.as_object_mut()) {
            m.insert("once".into(), sel(s));
        }
        format!("{v}\n")
    }
}

/// Parse the file's bytes; every field is checked (an image that does not
/// parse as a reference is refused here, not at the boot that would use it).
pub fn parse(bytes: &[u8]) -> Result<NextBoot> {
    if bytes.len() > MAX_BYTES {
        return Err(Error::msg(format!("more than {MAX_BYTES} bytes")));
    }
    let v: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| Error::msg(format!("not JSON: {e}")))?;
    let obj = v.as_object().context(|| "not a JSON object")?;
    match obj.get("dockroot_next_boot").and_then(serde_json::Value::as_u64) {
        Some(VERSION) => {}
        Some(n) => return Err(Error::msg(format!("format version {n}, this dockroot reads {VERSION}"))),
        None => return Err(Error::msg("no \"dockroot_next_boot\" version number")),
    }
    for key in obj.keys() {
        if !matches!(key.as_str(), "dockroot_next_boot" | "switch" | "once") {
            return Err(Error::msg(format!("unknown field {key:?}")));
        }
    }
    let selection = |key: &str| -> Result<Option<Selection>> {
        let Some(s) = obj.get(key) else { return Ok(None) };
        let s = s.as_object().context(|| format!("{key:?} is not an object"))?;
        let text = |field: &str| -> Result<String> {
            let t = s.get(field).and_then(serde_json::Value::as_str);
            Ok(t.context(|| format!("{key:?} has no {field:?} string"))?.to_string())
        };
        let image = text("image")?;
        reference::parse(&image).context(|| format!("{key:?}: image {image:?}"))?;
        let set = text("set")?;
        if !is_utc_time(&set) {
            return Err(Error::msg(format!("{key:?}: \"set\" is not a UTC time like 20261204T053000Z: {set:?}")));
        }
        let kept = match s.get("kept") {
            None => None,
            Some(k) => {
                let k = k.as_str().context(|| format!("{key:?}: \"kept\" is not a string"))?;
                if !crate::rwlayer::is_kept_name(k) || k.contains('/') || k.len() > 255 {
                    return Err(Error::msg(format!("{key:?}: \"kept\" is not a kept root's name: {k:?}")));
                }
                Some(k.to_string())
            }
        };
        Ok(Some(Selection { image, set, kept }))
    };
    Ok(NextBoot { switch: selection("switch")?, once: selection("once")? })
}

/// `YYYYMMDDTHHMMSSZ`, digits where digits belong.
fn is_utc_time(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 16
        && b.iter().enumerate().all(|(i, c)| match i {
            8 => *c == b'T',
            15 => *c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

/// The image that boots and where it comes from: `dockroot.image=` (when
/// `on_cmdline`, `configured` is it) > `once` > `switch` (or a rollback) > the
/// embedded config (`configured` again); and the kept root a rollback names.
/// The one rule for the init, `plan` and `status`.
pub fn select(configured: &ImageSpec, on_cmdline: bool, next: &NextBoot) -> (ImageSpec, ImageSource, Option<String>) {
    if on_cmdline {
        return (configured.clone(), ImageSource::Cmdline, None);
    }
    let chosen =
        [(&next.once, ImageSource::Once), (&next.switch, ImageSource::Switch)].into_iter().find_map(|(s, src)| {
            let s = s.as_ref()?;
            let spec = reference::parse(&s.image).ok()?;
            let src = if s.kept.is_some() && src == ImageSource::Switch { ImageSource::Rollback } else { src };
            Some((spec, src, s.kept.clone()))
        });
    chosen.unwrap_or_else(|| (configured.clone(), ImageSource::Embedded, None))
}

/// The file's name for the rw layer named `rw_name`.
pub fn file_name(rw_name: &str) -> String {
    format!("{rw_name}{SUFFIX}")
}

/// Read the file in `dir` (the rw layer's parent directory): `Ok(None)` when
/// there is none; an error says why it cannot be used (the caller warns and
/// boots as if there were none).
pub fn read(dir: BorrowedFd<'_>, rw_name: &str) -> Result<Option<NextBoot>> {
    let name = file_name(rw_name);
    let fd = match rustix::fs::openat(
        dir,
        name.as_str(),
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(e) => return Err(Error::with("cannot open it", e)),
    };
    let st = rustix::fs::fstat(&fd).map_err(|e| Error::with("cannot stat it", e))?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(Error::msg("not a regular file"));
    }
    let mut buf = vec![0u8; MAX_BYTES + 1];
    let mut len = 0;
    while len < buf.len() {
        let Some(rest) = buf.get_mut(len..) else { break };
        match rustix::io::read(&fd, rest) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(Error::with("cannot read it", e)),
        }
    }
    buf.truncate(len);
    parse(&buf).map(Some)
}

/// Replace the file in `dir` with `next` (or remove it when `next` is empty),
/// so that a power cut at any point leaves the old file or the new one: a
/// temporary file, fsync, rename over the file, fsync the directory.
pub fn write(dir: BorrowedFd<'_>, rw_name: &str, next: &NextBoot) -> Result<()> {
    let name = file_name(rw_name);
    if next.is_empty() {
        match rustix::fs::unlinkat(dir, name.as_str(), rustix::fs::AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(Error::with(format!("removing {name}"), e)),
        }
        return rustix::fs::fsync(dir).map_err(|e| Error::with(format!("syncing the directory of {name}"), e));
    }
    let tmp = format!("{name}.tmp");
    let fd: OwnedFd = rustix::fs::openat(
        dir,
        tmp.as_str(),
        OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
    )
    .map_err(|e| Error::with(format!("creating {tmp}"), e))?;
    let bytes = next.to_json();
    let mut rest = bytes.as_bytes();
    while !rest.is_empty() {
        match rustix::io::write(&fd, rest) {
            Ok(0) => return Err(Error::msg(format!("writing {tmp}: the disk took no bytes"))),
            Ok(n) => rest = rest.get(n..).unwrap_or_default(),
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(Error::with(format!("writing {tmp}"), e)),
        }
    }
    rustix::fs::fsync(&fd).map_err(|e| Error::with(format!("syncing {tmp}"), e))?;
    drop(fd);
    rustix::fs::renameat(dir, tmp.as_str(), dir, name.as_str())
        .map_err(|e| Error::with(format!("renaming {tmp} to {name}"), e))?;
    rustix::fs::fsync(dir.as_fd()).map_err(|e| Error::with(format!("syncing the directory of {name}"), e))
}

/// What the next-boot file did to this boot.
#[derive(Debug)]
pub struct Applied {
    /// Where the image that boots comes from.
    pub source: ImageSource,
    /// The file as shown (`/rwlayer.dockroot-next`).
    pub shown: String,
    /// The file as read (what `dockroot status` shows), if it could be.
    pub next: Option<NextBoot>,
    /// Why the file was ignored, or its one-shot choice was.
    pub warnings: Vec<String>,
    /// The kept root a rollback names.
    pub rollback_kept: Option<String>,
}

/// Stage 5: read the file beside the rw layer `rw` (its path under the top
/// level `top`) and put the image it chooses ([`select`]) in `image`. With
/// `consume` (the init, not `plan`), a one-shot choice is removed from the
/// file before it is used, and not used when it cannot be removed: it boots at
/// most once.
pub fn apply(top: BorrowedFd<'_>, rw: &[String], image: &mut ImageSpec, on_cmdline: bool, consume: bool) -> Applied {
    let shown = format!("/{}{SUFFIX}", rw.join("/"));
    let mut applied =
        Applied { source: ImageSource::Embedded, shown, next: None, warnings: Vec::new(), rollback_kept: None };
    if on_cmdline {
        applied.source = ImageSource::Cmdline;
    }
    let Some((name, parent)) = rw.split_last() else { return applied };
    let read = crate::rwlayer::open_beneath(top, parent).and_then(|dir| Ok((read(dir.as_fd(), name)?, dir)));
    let (mut next, dir) = match read {
        Ok((Some(next), dir)) => (next, dir),
        Ok((None, _)) => return applied,
        Err(e) => {
            applied.warnings.push(format!("ignoring {}: {e}", applied.shown));
            return applied;
        }
    };
    applied.next = Some(next.clone());
    let (spec, source, kept) = select(image, on_cmdline, &next);
    if source == ImageSource::Once && consume {
        next.once = None;
        if let Err(e) = write(dir.as_fd(), name, &next) {
            applied.warnings.push(format!(
                "not booting the one-shot choice in {}: it could not be removed from the file ({e}), \
                 and it must boot at most once",
                applied.shown
            ));
            let (spec, source, kept) = select(image, on_cmdline, &next);
            (*image, applied.source, applied.rollback_kept) = (spec, source, kept);
            return applied;
        }
    }
    (*image, applied.source, applied.rollback_kept) = (spec, source, kept);
    applied
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(image: &str) -> Selection {
        Selection { image: image.into(), set: "20261204T053000Z".into(), kept: None }
    }

    #[test]
    fn round_trips() {
        for next in [
            NextBoot::default(),
            NextBoot { switch: Some(sel("os:2")), once: None },
            NextBoot { switch: None, once: Some(sel(&format!("sha256:{}", "a".repeat(64)))) },
            NextBoot { switch: Some(sel("example/os:2")), once: Some(sel("os:test")) },
            NextBoot {
                switch: Some(Selection { kept: Some("20261204T050000Z-0123456789ab".into()), ..sel("os:1") }),
                once: None,
            },
        ] {
            assert_eq!(parse(next.to_json().as_bytes()).unwrap(), next);
        }
    }

    #[test]
    fn refuses_what_it_cannot_trust() {
        let e = |s: &str| parse(s.as_bytes()).unwrap_err().to_string();
        assert!(e("").starts_with("not JSON"), "{}", e(""));
        assert_eq!(e("[]"), "not a JSON object");
        assert_eq!(e("{}"), "no \"dockroot_next_boot\" version number");
        assert_eq!(e(r#"{"dockroot_next_boot": 2}"#), "format version 2, this dockroot reads 1");
        assert_eq!(e(r#"{"dockroot_next_boot": 1, "rollback": {}}"#), "unknown field \"rollback\"");
        assert_eq!(e(r#"{"dockroot_next_boot": 1, "switch": "os"}"#), "\"switch\" is not an object");
        assert_eq!(e(r#"{"dockroot_next_boot": 1, "once": {"set": "x"}}"#), "\"once\" has no \"image\" string");
        let bad_ref = e(r#"{"dockroot_next_boot": 1, "switch": {"image": "../etc", "set": "20261204T053000Z"}}"#);
        assert!(bad_ref.starts_with("\"switch\": image \"../etc\""), "{bad_ref}");
        let bad_time = e(r#"{"dockroot_next_boot": 1, "switch": {"image": "os", "set": "yesterday"}}"#);
        assert!(bad_time.contains("not a UTC time"), "{bad_time}");
        let kept = |k: &str| {
            e(&format!(
                r#"{{"dockroot_next_boot": 1, "switch": {{"image": "os", "set": "20261204T053000Z", "kept": {k}}}}}"#
            ))
        };
        assert_eq!(kept("3"), "\"switch\": \"kept\" is not a string");
        assert!(kept(r#""../../etc""#).contains("is not a kept root's name"), "{}", kept(r#""../x""#));
        assert!(kept(r#""20261204T050000Z-a/b""#).contains("is not a kept root's name"));
        let big = format!(r#"{{"dockroot_next_boot": 1, "x": "{}"}}"#, "a".repeat(MAX_BYTES));
        assert_eq!(e(&big), format!("more than {MAX_BYTES} bytes"));
    }

    #[test]
    fn precedence_is_cmdline_once_switch_embedded() {
        let configured = reference::parse("os:1").unwrap();
        let both = NextBoot { switch: Some(sel("os:2")), once: Some(sel("os:3")) };
        let only_switch = NextBoot { switch: Some(sel("os:2")), once: None };
        let spec = |s: &str| reference::parse(s).unwrap();
        assert_eq!(select(&configured, true, &both), (spec("os:1"), ImageSource::Cmdline, None));
        assert_eq!(select(&configured, false, &both), (spec("os:3"), ImageSource::Once, None));
        assert_eq!(select(&configured, false, &only_switch), (spec("os:2"), ImageSource::Switch, None));
        assert_eq!(select(&configured, false, &NextBoot::default()), (spec("os:1"), ImageSource::Embedded, None));
        let k = "20261204T050000Z-0123456789ab".to_string();
        let rollback = NextBoot { switch: Some(Selection { kept: Some(k.clone()), ..sel("os:0") }), once: None };
        assert_eq!(select(&configured, false, &rollback), (spec("os:0"), ImageSource::Rollback, Some(k)));
        // A selection that does not parse (only a file written by hand past `parse`) is skipped.
        let broken = NextBoot { switch: Some(sel("os:2")), once: Some(sel("Not/Valid")) };
        assert_eq!(select(&configured, false, &broken), (spec("os:2"), ImageSource::Switch, None));
    }

    #[test]
    fn writes_atomically_and_reads_back() {
        let dir = tempfile_dir();
        let fd = rustix::fs::open(&dir, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
        assert_eq!(read(fd.as_fd(), "rw").unwrap(), None);
        let next = NextBoot { switch: Some(sel("os:2")), once: Some(sel("os:3")) };
        write(fd.as_fd(), "rw", &next).unwrap();
        assert_eq!(read(fd.as_fd(), "rw").unwrap(), Some(next));
        assert!(!dir.join("rw.dockroot-next.tmp").exists());
        std::fs::write(dir.join("rw.dockroot-next"), b"{\"dockroot_next_boot\": 1, \"switch\": 3}").unwrap();
        assert!(read(fd.as_fd(), "rw").is_err());
        write(fd.as_fd(), "rw", &NextBoot::default()).unwrap();
        assert!(!dir.join("rw.dockroot-next").exists());
        std::fs::create_dir(dir.join("rw.dockroot-next")).unwrap();
        assert_eq!(read(fd.as_fd(), "rw").unwrap_err().to_string(), "not a regular file");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("dockroot-nextboot-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir(&d).unwrap();
        d
    }
}
