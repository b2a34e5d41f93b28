//! Selection across stores: find the store candidates on the root partition
//! ([`detect`]: Docker, Podman, containerd, one per driver or snapshotter),
//! resolve the image in each and pick the one that has it ([`select`]), and
//! the name matching the stores share ([`qualified_candidates`],
//! [`split_name`], [`short_list`]).
//!
//! [`select`] and the name helpers are pure; [`detect`] looks at the file
//! system (`lstat`s and short directory listings), and [`resolve_image`]
//! runs each store's lookup.

use super::read::{is_dir, is_file, list_names};
use super::{
    containerd, docker, pin_text, podman, whence, Driver, ImageStore, Lookup, Resolved, StoreKind, StoreOptions,
};
use crate::error::{Error, Result};
use crate::reference::{ImageSpec, Reference, DEFAULT_DOMAIN};
use std::path::{Component, Path, PathBuf};

/// Most image names listed in a "not found" message.
pub(crate) const MAX_LISTED: usize = 20;

/// The stores found, and notes on stores seen but not usable.
pub struct Detected {
    pub stores: Vec<Box<dyn ImageStore>>,
    /// E.g. "Docker at /var/lib/docker keeps images with the vfs storage driver, which dockroot does not read".
    pub notes: Vec<String>,
    /// Every place looked at, for a "no store found" message.
    pub looked: Vec<String>,
}

/// A relative path made of normal components only.
pub(super) fn rel(parts: &[String]) -> Result<PathBuf> {
    let p: PathBuf = parts.iter().collect();
    if p.components().all(|c| matches!(c, Component::Normal(_))) {
        Ok(p)
    } else {
        Err(Error::msg(format!("store path {:?} must be relative, without '..'", p.display())))
    }
}

/// "a, b" or "nothing".
fn names_or_nothing(names: &[String]) -> String {
    if names.is_empty() {
        "nothing".to_string()
    } else {
        names.join(", ")
    }
}

/// Find the store candidates under `top` (the mounted top level of the root
/// partition): one per store and driver (snapshotter) that holds images.
pub fn detect(top: &Path, opts: &StoreOptions) -> Result<Detected> {
    let mut d = Detected { stores: Vec::new(), notes: Vec::new(), looked: Vec::new() };
    let pinned = opts.pin_text().map(|p| format!(" (dockroot.store={p})")).unwrap_or_default();
    if opts.pin.is_none_or(|p| p == StoreKind::Docker) {
        let path = rel(&opts.docker_path)?;
        d.looked.push(format!("Docker at /{} (docker_path=)", path.display()));
        let abs = top.join(&path);
        let before = d.stores.len();
        for driver in StoreKind::Docker.drivers() {
            if opts.wants(StoreKind::Docker, *driver) && is_dir(&abs.join("image").join(driver.name())) {
                d.stores.push(Box::new(docker::DockerStore::new(top, path.clone(), *driver, opts.verify)));
            }
        }
        if d.stores.len() == before && is_dir(&abs.join("image")) {
            d.notes.push(format!(
                "Docker at /{} keeps images with the {} storage driver{pinned}; dockroot reads btrfs and overlay2",
                path.display(),
                names_or_nothing(&list_names(&abs.join("image")))
            ));
        }
    }
    if opts.wants(StoreKind::Podman, Driver::Btrfs) {
        let path = rel(&opts.podman_path)?;
        d.looked.push(format!("Podman at /{}", path.display()));
        let abs = top.join(&path);
        if is_dir(&abs.join("btrfs-images")) {
            d.stores.push(Box::new(podman::PodmanStore::new(top, path, opts.verify)));
        } else {
            let others: Vec<String> =
                list_names(&abs).into_iter().filter(|n| n.ends_with("-images") && n != "btrfs-images").collect();
            if !others.is_empty() {
                d.notes.push(format!(
                    "Podman at /{} keeps images in {} (only the btrfs driver is supported yet)",
                    path.display(),
                    others.join(", ")
                ));
            }
        }
    }
    if opts.pin.is_none_or(|p| p == StoreKind::Containerd) {
        let mut seen = Vec::new();
        for parts in &opts.containerd_paths {
            let path = rel(parts)?;
            if seen.contains(&path) {
                continue;
            }
            seen.push(path.clone());
            d.looked.push(format!("containerd at /{}", path.display()));
            let abs = top.join(&path);
            if !is_file(&abs.join(containerd::META_DB)) {
                continue;
            }
            // One candidate per snapshotter that has its database; when none
            // has, the first wanted explains what meta.db holds.
            let wanted: Vec<Driver> = StoreKind::Containerd
                .drivers()
                .iter()
                .copied()
                .filter(|s| opts.wants(StoreKind::Containerd, *s))
                .collect();
            let mut present: Vec<Driver> = wanted
                .iter()
                .copied()
                .filter(|s| is_file(&abs.join(containerd::snapshotter_dir(*s)).join("metadata.db")))
                .collect();
            if present.is_empty() {
                present.extend(wanted.first().copied());
            }
            for s in present {
                d.stores.push(Box::new(containerd::ContainerdStore::new(
                    top,
                    path.clone(),
                    s,
                    &opts.namespace,
                    opts.platform.clone(),
                    opts.verify,
                )));
            }
        }
    }
    Ok(d)
}

/// Detect the stores under `top`, resolve `spec` in each, and pick the one
/// store that has it.
pub fn resolve_image(top: &Path, opts: &StoreOptions, spec: &ImageSpec) -> Result<Resolved> {
    let d = detect(top, opts)?;
    let outcomes: Vec<Outcome> = d
        .stores
        .iter()
        .map(|s| Outcome { kind: s.kind(), driver: s.driver(), path: s.path().to_path_buf(), result: s.resolve(spec) })
        .collect();
    select(spec, opts.pin_text().as_deref(), &d.looked, &d.notes, outcomes)
}

/// One store candidate's answer, for [`select`].
#[derive(Debug)]
pub struct Outcome {
    pub kind: StoreKind,
    pub driver: Driver,
    pub path: PathBuf,
    pub result: Result<Lookup>,
}

impl Outcome {
    fn whence(&self) -> String {
        whence(self.kind, self.driver, &self.path)
    }
}

/// Pick the answer: exactly one candidate must have the image and none may
/// have failed. `pin` is the `dockroot.store=` value in force; `looked` and
/// `notes` explain an empty result.
pub fn select(
    spec: &ImageSpec,
    pin: Option<&str>,
    looked: &[String],
    notes: &[String],
    outcomes: Vec<Outcome>,
) -> Result<Resolved> {
    let pinned = pin.map(|p| format!(" (dockroot.store={p})")).unwrap_or_default();
    let with_notes = |mut msg: String| {
        for n in notes {
            msg.push_str("; ");
            msg.push_str(n);
        }
        msg
    };
    if outcomes.is_empty() {
        return Err(Error::msg(with_notes(format!(
            "cannot resolve image {spec}: no image store found{pinned}: looked for {}",
            looked.join(", ")
        ))));
    }
    let mut found: Vec<Resolved> = Vec::new();
    let mut failed: Vec<(String, Error)> = Vec::new();
    let mut missing: Vec<String> = Vec::new();
    for o in outcomes {
        let at = o.whence();
        match o.result {
            Ok(Lookup::Found(r)) => found.push(*r),
            Ok(Lookup::NotFound(why)) => missing.push(format!("{at}: {why}")),
            Err(e) => failed.push((at, e)),
        }
    }
    let pin_of = |r: &Resolved| pin_text(r.store, Some(r.driver));
    if let Some((at, e)) = failed.first() {
        let rest = failed.len().saturating_sub(1);
        let also = if rest > 0 { format!(" (and {rest} more store failed)") } else { String::new() };
        let others = match found.first() {
            Some(r) => format!(
                "; the image was found in {}, set dockroot.store={} to boot from it alone",
                r.whence(),
                pin_of(r)
            ),
            None => String::new(),
        };
        return Err(Error::msg(format!("image {spec} in {at}: {e}{also}{others}")));
    }
    match found.len() {
        1 => found.pop().ok_or_else(|| Error::msg("internal: lost the resolved image")),
        0 => Err(Error::msg(with_notes(format!("no image {spec} in any store{pinned}: {}", missing.join("; "))))),
        _ => {
            let list: Vec<String> =
                found.iter().map(|r| format!("{} as {} (image {})", r.whence(), r.reference, r.image_id)).collect();
            let pins: Vec<String> = found.iter().map(pin_of).collect();
            Err(Error::msg(format!(
                "image {spec} is ambiguous: found in {}; set dockroot.store= to one of {} to choose, \
                 or remove the image from all but one store",
                list.join(", "),
                pins.join(", ")
            )))
        }
    }
}

/// The names a reference may be filed under in stores that keep fully
/// qualified names (Podman, containerd): the full name, and for names on the
/// default domain also `localhost/<name as typed>`, since Podman files
/// `podman build -t x` as `localhost/x`. Each is (repository, tag or digest key).
pub fn qualified_candidates(r: &Reference) -> Vec<String> {
    let mut repos = vec![r.full_name()];
    if r.domain == DEFAULT_DOMAIN {
        repos.push(format!("localhost/{}", r.familiar_name()));
    }
    repos
}

/// A name `repo:tag` / `repo@digest` / `repo:tag@digest` split into
/// (repo, tag, digest); the tag's ':' is the last one after the last '/'.
pub fn split_name(name: &str) -> (&str, Option<&str>, Option<&str>) {
    let (rest, digest) = match name.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (name, None),
    };
    match rest.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, Some(tag), digest),
        _ => (rest, None, digest),
    }
}

/// "a, b, c and N more" of at most [`MAX_LISTED`] names.
pub(crate) fn short_list(names: &[String]) -> String {
    let shown: Vec<&str> = names.iter().map(String::as_str).take(MAX_LISTED).collect();
    let mut s = shown.join(", ");
    if let Some(more) = names.len().checked_sub(MAX_LISTED).filter(|n| *n > 0) {
        s.push_str(&format!(" and {more} more"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::super::Root;
    use super::*;
    use crate::reference::parse;

    fn resolved(kind: StoreKind, path: &str, id: &str) -> Resolved {
        Resolved {
            store: kind,
            driver: Driver::Btrfs,
            store_path: PathBuf::from(path),
            reference: "localhost/x:t".into(),
            image_id: id.into(),
            manifest_digest: None,
            diff_ids: vec![],
            chain_ids: vec![],
            layer: "l".into(),
            root: Root::Subvolume(PathBuf::from(path).join("sub")),
            verified: true,
            warnings: vec![],
        }
    }

    fn found(kind: StoreKind, path: &str, id: &str) -> Outcome {
        Outcome {
            kind,
            driver: Driver::Btrfs,
            path: path.into(),
            result: Ok(Lookup::Found(Box::new(resolved(kind, path, id)))),
        }
    }

    fn missing(kind: StoreKind, path: &str, why: &str) -> Outcome {
        Outcome { kind, driver: Driver::Btrfs, path: path.into(), result: Ok(Lookup::NotFound(why.into())) }
    }

    #[test]
    fn select_one_none_many_failed() {
        let spec = parse("x:t").unwrap();
        let looked = vec!["Docker at /var/lib/docker (docker_path=)".to_string()];
        let r = select(
            &spec,
            None,
            &looked,
            &[],
            vec![
                missing(StoreKind::Docker, "var/lib/docker", "no such name"),
                found(StoreKind::Podman, "p", "sha256:aa"),
            ],
        )
        .unwrap();
        assert_eq!((r.store, r.image_id.as_str()), (StoreKind::Podman, "sha256:aa"));

        let e = select(
            &spec,
            None,
            &looked,
            &[],
            vec![found(StoreKind::Docker, "var/lib/docker", "sha256:d1"), found(StoreKind::Podman, "p", "sha256:p1")],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("ambiguous") && e.contains("Docker (btrfs) at /var/lib/docker") && e.contains("sha256:d1"),
            "{e}"
        );
        assert!(e.contains("Podman (btrfs) at /p") && e.contains("sha256:p1"), "{e}");
        assert!(e.contains("set dockroot.store= to one of docker:btrfs, podman:btrfs"), "{e}");

        let e = select(
            &spec,
            Some("podman"),
            &looked,
            &["Docker at /x uses overlay2".to_string()],
            vec![missing(StoreKind::Podman, "p", "it holds: a, b")],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("no image")
                && e.contains("(dockroot.store=podman)")
                && e.contains("Podman (btrfs) at /p: it holds: a, b"),
            "{e}"
        );
        assert!(e.contains("overlay2"), "{e}");

        let e = select(&spec, None, &looked, &["note".to_string()], vec![]).unwrap_err().to_string();
        assert!(
            e.contains("no image store found") && e.contains("Docker at /var/lib/docker") && e.contains("note"),
            "{e}"
        );

        // A failing store blocks the boot even if another has the image.
        let e = select(
            &spec,
            None,
            &looked,
            &[],
            vec![
                Outcome {
                    kind: StoreKind::Docker,
                    driver: Driver::Overlay2,
                    path: "d".into(),
                    result: Err(Error::msg("repositories.json is broken")),
                },
                found(StoreKind::Podman, "p", "sha256:p1"),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("in Docker (overlay2) at /d: repositories.json is broken")
                && e.contains("set dockroot.store=podman:btrfs"),
            "{e}"
        );
    }

    #[test]
    fn candidates_and_name_split() {
        let r = match parse("x:t").unwrap() {
            ImageSpec::Named(r) => r,
            o => panic!("{o:?}"),
        };
        assert_eq!(qualified_candidates(&r), vec![format!("{DEFAULT_DOMAIN}/library/x"), "localhost/x".to_string()]);
        let r = match parse("team/x").unwrap() {
            ImageSpec::Named(r) => r,
            o => panic!("{o:?}"),
        };
        assert_eq!(qualified_candidates(&r)[1], "localhost/team/x");
        let r = match parse("localhost/x").unwrap() {
            ImageSpec::Named(r) => r,
            o => panic!("{o:?}"),
        };
        assert_eq!(qualified_candidates(&r), vec!["localhost/x".to_string()]);
        assert_eq!(split_name("localhost:5000/a/b:t"), ("localhost:5000/a/b", Some("t"), None));
        assert_eq!(split_name("localhost:5000/a/b"), ("localhost:5000/a/b", None, None));
        assert_eq!(split_name("a/b@sha256:00"), ("a/b", None, Some("sha256:00")));
        assert_eq!(split_name("a/b:t@sha256:00"), ("a/b", Some("t"), Some("sha256:00")));
    }
}
