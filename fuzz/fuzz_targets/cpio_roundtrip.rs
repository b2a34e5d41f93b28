//! The initramfs cpio (newc) writer and reader.
//!
//! 1. `cpio::read` on the raw input never panics.
//! 2. The input drives a list of `Archive::add_*` calls (paths built from a
//!    small alphabet with `.`, `..`, empty components, the trailer's name and
//!    arbitrary text). A model says which calls must succeed; the written
//!    archive, read back, must hold exactly the model's entries (parents
//!    implied; directories first by path, then the rest by their name's
//!    extension and path; inode numbers 1, 2, ...), and any truncation of it
//!    must be refused.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

// The builder's cpio module, compiled here from its source: it needs only
// `dockroot::error`, and depending on the whole builder crate would build its
// C compression libraries (zstd, liblzma) with the sanitizer for nothing.
#[path = "../../initramfs/src/cpio.rs"]
#[allow(dead_code)]
mod cpio;
use cpio::{Archive, S_IFCHR, S_IFDIR, S_IFLNK, S_IFREG, TRAILER};

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Dir,
    File(Vec<u8>),
    Dev(u32, u32),
    Link(String),
}

/// A path as a caller might give it: 1 to 4 components, maybe a leading or
/// trailing slash.
fn gen_path(u: &mut Unstructured) -> Result<String> {
    const PARTS: &[&str] = &["a", "b", "c", "lib", ".", "..", "", "TRAILER!!!", "a b", "é", "a\0"];
    let n = u.int_in_range(1..=4)?;
    let mut parts = Vec::new();
    for _ in 0..n {
        let i = u.choose_index(PARTS.len() + 1)?;
        parts.push(match PARTS.get(i) {
            Some(p) => p.to_string(),
            None => {
                let s: String = u.arbitrary()?;
                s.chars().take(16).collect()
            }
        });
    }
    let mut p = parts.join("/");
    if u.ratio(1, 4)? {
        p.insert(0, '/');
    }
    if u.ratio(1, 8)? {
        p.push('/');
    }
    Ok(p)
}

/// The documented rule: relative after dropping leading slashes, no empty,
/// `.` or `..` component, no NUL; and no entry (the path or an implied
/// parent) named like the trailer, which would end the archive early.
fn clean(path: &str) -> Option<String> {
    let t = path.trim_start_matches('/');
    let ok = !t.is_empty()
        && !t.contains('\0')
        && t.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
        && t.split('/').next() != Some(TRAILER);
    ok.then(|| t.to_string())
}

/// What adding `kind` at `path` must do to the model; None means refused.
fn model_add(model: &BTreeMap<String, (u32, Kind)>, path: &str, perm: u32, kind: &Kind) -> Option<Vec<(String, (u32, Kind))>> {
    let p = clean(path)?;
    if perm > 0o7777 {
        return None;
    }
    let mut changes = Vec::new();
    let mut end = 0;
    while let Some(i) = p[end..].find('/') {
        let parent = &p[..end + i];
        match model.get(parent) {
            None => changes.push((parent.to_string(), (0o755, Kind::Dir))),
            Some((_, Kind::Dir)) => {}
            Some(_) => return None,
        }
        end += i + 1;
    }
    match (model.get(&p), kind) {
        (None, _) | (Some((_, Kind::Dir)), Kind::Dir) => changes.push((p, (perm, kind.clone()))),
        _ => return None,
    }
    Some(changes)
}

/// One `add_*` call: path, permission bits, what.
fn next_op(u: &mut Unstructured) -> Result<(String, u32, Kind)> {
    let op = u.int_in_range(0..=3)?;
    let path = gen_path(u)?;
    let perm: u32 = if u.ratio(1, 16)? { u.arbitrary()? } else { u.int_in_range(0..=0o7777)? };
    Ok(match op {
        0 => (path, perm, Kind::Dir),
        1 => {
            let len = u.int_in_range(0..=300)?;
            (path, perm, Kind::File(u.bytes(len).unwrap_or(&[]).to_vec()))
        }
        2 => (path, perm, Kind::Dev(u.arbitrary()?, u.arbitrary()?)),
        _ => (path, 0o777, Kind::Link(u.arbitrary()?)),
    })
}

fn run(u: &mut Unstructured) {
    let mtime: u32 = u.arbitrary().unwrap_or(0);
    let mut archive = Archive::new();
    let mut model: BTreeMap<String, (u32, Kind)> = BTreeMap::new();
    for _ in 0..64 {
        if u.is_empty() {
            break;
        }
        let Ok((path, perm, kind)) = next_op(u) else { break };
        let got = match &kind {
            Kind::Dir => archive.add_dir(&path, perm),
            Kind::File(d) => archive.add_file(&path, perm, d.clone()),
            Kind::Dev(ma, mi) => archive.add_char_device(&path, perm, *ma, *mi),
            Kind::Link(t) => archive.add_symlink(&path, t),
        };
        match (model_add(&model, &path, perm, &kind), got) {
            (Some(changes), Ok(())) => {
                model.extend(changes);
            }
            (None, Err(_)) => {}
            (want, got) => panic!("add {kind:?} at {path:?} perm {perm:o}: model says {want:?}, archive says {got:?}"),
        }
    }
    assert_eq!(archive.len(), model.len());

    let bytes = archive.write(mtime).unwrap_or_else(|e| panic!("write failed: {e}"));
    let entries = cpio::read(&bytes).unwrap_or_else(|e| panic!("reading back failed: {e}"));
    assert_eq!(entries.len(), model.len(), "{entries:?}\n{model:?}");
    // The documented order, restated: directories by path, then the rest by
    // the extension of the last component (after its last `.`, none for a
    // leading one), then by path.
    let ext = |p: &str| {
        let name = p.rsplit('/').next().unwrap_or(p);
        match name.rfind('.') {
            Some(i) if i > 0 => name[i + 1..].to_string(),
            _ => String::new(),
        }
    };
    let mut expected: Vec<_> = model.iter().collect();
    expected.sort_by_key(|(p, (_, k))| {
        let dir = *k == Kind::Dir;
        (!dir, if dir { String::new() } else { ext(p) }, (*p).clone())
    });
    for (i, (e, (path, (perm, kind)))) in entries.iter().zip(expected).enumerate() {
        // The kernel needs every parent directory before what it holds.
        let mut parent = path.as_str();
        while let Some((p, _)) = parent.rsplit_once('/') {
            assert!(entries[..i].iter().any(|d| d.name == p && d.mode & 0o170000 == S_IFDIR), "{path} before {p}");
            parent = p;
        }
        assert_eq!(&e.name, path);
        assert_eq!(e.ino as usize, i + 1, "{path}");
        assert_eq!((e.uid, e.gid, e.mtime, e.dev_major, e.dev_minor), (0, 0, mtime, 0, 0), "{path}");
        let (bits, nlink, data, rdev): (u32, u32, &[u8], (u32, u32)) = match kind {
            Kind::Dir => (S_IFDIR, 2, &[], (0, 0)),
            Kind::File(d) => (S_IFREG, 1, d, (0, 0)),
            Kind::Dev(ma, mi) => (S_IFCHR, 1, &[], (*ma, *mi)),
            Kind::Link(t) => (S_IFLNK, 1, t.as_bytes(), (0, 0)),
        };
        assert_eq!(e.mode, bits | perm, "{path}");
        assert_eq!(e.nlink, nlink, "{path}");
        assert_eq!(e.data, data, "{path}");
        assert_eq!((e.rdev_major, e.rdev_minor), rdev, "{path}");
    }
    // The same entries give the same bytes.
    assert_eq!(archive.clone().write(mtime).ok().as_deref(), Some(&bytes[..]));
    // A cut archive has no trailer: refused.
    let cut: u32 = u.arbitrary().unwrap_or(0);
    let k = (cut as usize) % bytes.len();
    assert!(cpio::read(&bytes[..k]).is_err(), "archive cut at {k} of {} accepted", bytes.len());
}

fuzz_target!(|data: &[u8]| {
    if let Ok(entries) = cpio::read(data) {
        assert!(entries.iter().all(|e| e.name != TRAILER));
    }
    run(&mut Unstructured::new(data));
});
