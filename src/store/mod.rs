//! Image stores: find which container engines keep images on the root
//! partition, resolve the image to boot in each, and say what to boot.
//!
//! Every store sits behind [`ImageStore`]; adding a store touches one module:
//!
//! | store | module | default path under the top level | boots |
//! |---|---|---|---|
//! | Docker, btrfs graph driver | `docker` | `docker_path` (`var/lib/docker`) | the top layer's subvolume |
//! | Docker, overlay2 graph driver | `docker` | `docker_path` | an overlay of every layer's `diff` |
//! | Podman / containers-storage, btrfs driver | `podman` | `var/lib/containers/storage` | the top layer's subvolume |
//! | containerd, btrfs snapshotter | `containerd` | `var/lib/containerd`, `<docker_path>/containerd/daemon` | the committed snapshot |
//! | containerd, overlayfs snapshotter | `containerd` | the same | an overlay of every layer's snapshot |
//!
//! Each (store, driver) pair found is one candidate: a Docker data root with
//! both `image/btrfs` and `image/overlay2` is two, a containerd root with
//! both snapshotters is two. [`resolve_image`] detects the candidates
//! ([`detect`]), resolves the reference in each and picks the one that has
//! it ([`select`]): a name found in more than one is an error that lists
//! where, unless `dockroot.store=` pins one ([`StoreOptions::pin`],
//! [`StoreOptions::driver`]).
//!
//! Verification (on unless [`StoreOptions::verify`] is off): the image
//! config's sha256 is the image ID, the layers the store records match the
//! config's `diff_ids` and chain IDs, and a digest reference matches the
//! stored manifest. With verification off a mismatch becomes a warning in
//! [`Resolved::warnings`]; the checks that keep paths inside the store
//! (IDs that become path components) are never switched off.

pub mod bbolt;
mod containerd;
mod docker;
mod podman;

pub use containerd::{parse_descriptor_list, pick_platform, Descriptor};
pub use docker::{check_cache_id, lookup, parse_repositories, resolve_docker_btrfs, Repositories, ResolvedImage};
pub use podman::{big_data_file_name, parse_images_json, parse_layers_json, PodmanImage, PodmanLayer};

use crate::error::{Error, Result};
use crate::reference::{is_hex64, ImageSpec, Reference, DEFAULT_DOMAIN};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Component, Path, PathBuf};

/// Cap for store JSON files (repositories.json, images.json, layers.json, configs).
pub(crate) const JSON_CAP: u64 = 64 * 1024 * 1024;
pub(crate) const JSON_CAP_TEXT: &str = "64 MiB";
/// Most image names listed in a "not found" message.
pub(crate) const MAX_LISTED: usize = 20;
/// Most layers an image may have (Docker's own limit is 127).
pub(crate) const MAX_LAYERS: usize = 1000;

/// Default Podman graph root, relative to the top level.
pub const DEFAULT_PODMAN_PATH: &str = "var/lib/containers/storage";
/// Default containerd root, relative to the top level.
pub const DEFAULT_CONTAINERD_PATH: &str = "var/lib/containerd";
/// The containerd root of the containerd that dockerd starts itself,
/// relative to Docker's data root.
pub const DOCKER_CONTAINERD_SUBDIR: &str = "containerd/daemon";
/// The containerd namespace Docker uses.
pub const DEFAULT_NAMESPACE: &str = "moby";

/// Which kind of store an image came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum StoreKind {
    Docker,
    Podman,
    Containerd,
}

impl StoreKind {
    /// `docker`, `podman` or `containerd` (the `dockroot.store=` values).
    pub fn name(self) -> &'static str {
        match self {
            StoreKind::Docker => "docker",
            StoreKind::Podman => "podman",
            StoreKind::Containerd => "containerd",
        }
    }

    /// "Docker", "Podman", "containerd", for messages.
    pub fn title(self) -> &'static str {
        match self {
            StoreKind::Docker => "Docker",
            StoreKind::Podman => "Podman",
            StoreKind::Containerd => "containerd",
        }
    }

    /// The drivers (snapshotters) dockroot reads in this kind of store.
    pub fn drivers(self) -> &'static [Driver] {
        match self {
            StoreKind::Docker => &[Driver::Btrfs, Driver::Overlay2],
            StoreKind::Podman => &[Driver::Btrfs],
            StoreKind::Containerd => &[Driver::Btrfs, Driver::Overlayfs],
        }
    }

    /// Parse a `dockroot.store=` value: `KIND` or `KIND:DRIVER`
    /// (`docker:btrfs`, `docker:overlay2`, `podman:btrfs`,
    /// `containerd:btrfs`, `containerd:overlayfs`).
    pub fn parse_pin(s: &str) -> Result<(StoreKind, Option<Driver>)> {
        let bad = || {
            let all: Vec<String> = [StoreKind::Docker, StoreKind::Podman, StoreKind::Containerd]
                .iter()
                .flat_map(|k| k.drivers().iter().map(move |d| pin_text(*k, Some(*d))))
                .collect();
            Error::msg(format!(
                "dockroot.store={s:?}: expected docker, podman or containerd, or one of {}",
                all.join(", ")
            ))
        };
        let (kind, driver) = match s.split_once(':') {
            Some((k, d)) => (k, Some(d)),
            None => (s, None),
        };
        let kind = match kind {
            "docker" => StoreKind::Docker,
            "podman" => StoreKind::Podman,
            "containerd" => StoreKind::Containerd,
            _ => return Err(bad()),
        };
        match driver {
            None => Ok((kind, None)),
            Some(d) => match kind.drivers().iter().find(|x| x.name() == d) {
                Some(x) => Ok((kind, Some(*x))),
                None => Err(bad()),
            },
        }
    }
}

/// How a store keeps an image's layers on disk: its graph driver (Docker,
/// Podman) or snapshotter (containerd).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Driver {
    /// btrfs subvolumes (Docker's and Podman's `btrfs` driver, containerd's
    /// `btrfs` snapshotter): the top layer is the whole root filesystem.
    Btrfs,
    /// Docker's `overlay2` driver: one `diff` directory per layer.
    Overlay2,
    /// containerd's `overlayfs` snapshotter: one `snapshots/<id>/fs` per layer.
    Overlayfs,
}

impl Driver {
    /// `btrfs`, `overlay2`, `overlayfs`: the name the store itself uses.
    pub fn name(self) -> &'static str {
        match self {
            Driver::Btrfs => "btrfs",
            Driver::Overlay2 => "overlay2",
            Driver::Overlayfs => "overlayfs",
        }
    }
}

/// The `dockroot.store=` value that pins `kind` (and `driver`).
pub fn pin_text(kind: StoreKind, driver: Option<Driver>) -> String {
    match driver {
        Some(d) => format!("{}:{}", kind.name(), d.name()),
        None => kind.name().to_string(),
    }
}

/// "Docker (overlay2) at /var/lib/docker".
pub fn whence(kind: StoreKind, driver: Driver, path: &Path) -> String {
    format!("{} ({}) at /{}", kind.title(), driver.name(), path.display())
}

/// What to boot, relative to the root partition's top level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Root {
    /// A btrfs subvolume holding the image's complete root filesystem:
    /// snapshot it.
    Subvolume(PathBuf),
    /// Layer directories to mount as overlayfs lowerdirs (Docker's overlay2
    /// driver, containerd's overlayfs snapshotter).
    Overlay {
        /// The driver's directory, relative to the top level (for example
        /// `var/lib/docker/overlay2`): the init mounts with this as its working
        /// directory, so short relative lowerdirs keep the mount options under
        /// the kernel's one-page limit.
        base: PathBuf,
        /// Layer directories relative to `base`, top layer first, each checked
        /// to be a directory inside `base` (overlay2: `l/<link>` when that
        /// short link resolves to the layer's `diff`, else `<cache-id>/diff`;
        /// containerd: `snapshots/<id>/fs`).
        lowerdirs: Vec<PathBuf>,
    },
}

/// An image resolved in one store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub store: StoreKind,
    /// The driver or snapshotter that holds the layers.
    pub driver: Driver,
    /// The store's directory, relative to the top level.
    pub store_path: PathBuf,
    /// The normalised reference as found in the store, or the image ID when
    /// found by ID.
    pub reference: String,
    /// `sha256:<hex>` of the image config.
    pub image_id: String,
    /// The manifest (or index) digest, where the store records it.
    pub manifest_digest: Option<String>,
    /// From the image config, base layer first.
    pub diff_ids: Vec<String>,
    /// Chain IDs, base layer first.
    pub chain_ids: Vec<String>,
    /// The store's own ID of the top layer (Docker cache ID, Podman layer ID,
    /// containerd snapshot ID).
    pub layer: String,
    /// What to boot.
    pub root: Root,
    /// Whether the checks were enforced (`dockroot.verify`).
    pub verified: bool,
    /// Mismatches found with verification off, for the log and boot record.
    pub warnings: Vec<String>,
}

impl Resolved {
    /// "Docker (overlay2) at /var/lib/docker".
    pub fn whence(&self) -> String {
        whence(self.store, self.driver, &self.store_path)
    }
}

/// The outcome of looking an image up in one store.
#[derive(Debug)]
pub enum Lookup {
    Found(Box<Resolved>),
    /// Not in this store; why, in words (what the store holds).
    NotFound(String),
}

/// Where a store candidate is and how it keeps its layers: what every
/// [`ImageStore`] has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreAt {
    pub kind: StoreKind,
    pub driver: Driver,
    /// The store's directory, relative to the top level.
    pub path: PathBuf,
    /// The same, joined to the mounted top level.
    pub abs: PathBuf,
    /// `dockroot.verify`.
    pub verify: bool,
}

impl StoreAt {
    pub fn new(top: &Path, kind: StoreKind, driver: Driver, path: PathBuf, verify: bool) -> StoreAt {
        StoreAt { abs: top.join(&path), kind, driver, path, verify }
    }

    /// The outcome for an image found here: `facts` with this store's
    /// name, the layer and the root, and the checks' warnings.
    pub(crate) fn found(&self, facts: ImageFacts, layer: String, root: Root, checks: Checks) -> Lookup {
        Lookup::Found(Box::new(Resolved {
            store: self.kind,
            driver: self.driver,
            store_path: self.path.clone(),
            reference: facts.reference,
            image_id: facts.image_id,
            manifest_digest: facts.manifest_digest,
            diff_ids: facts.diff_ids,
            chain_ids: facts.chain_ids,
            layer,
            root,
            verified: checks.verify,
            warnings: checks.warnings,
        }))
    }
}

/// What every store learns about an image before it finds the layers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ImageFacts {
    pub reference: String,
    pub image_id: String,
    pub manifest_digest: Option<String>,
    pub diff_ids: Vec<String>,
    pub chain_ids: Vec<String>,
}

/// One image store candidate on the root partition (a store with one
/// driver).
pub trait ImageStore {
    /// Where it is and what it is.
    fn at(&self) -> &StoreAt;
    /// Which kind of store.
    fn kind(&self) -> StoreKind {
        self.at().kind
    }
    /// `docker`, `podman`, `containerd`.
    fn name(&self) -> &'static str {
        self.kind().name()
    }
    /// The driver or snapshotter read.
    fn driver(&self) -> Driver {
        self.at().driver
    }
    /// The store's directory relative to the top level.
    fn path(&self) -> &Path {
        &self.at().path
    }
    /// "Docker (overlay2) at /var/lib/docker".
    fn whence(&self) -> String {
        whence(self.kind(), self.driver(), self.path())
    }
    /// Find `spec` here and check it, each check enforced or recorded in
    /// `checks`. `Ok(NotFound)` when the store does not have it; `Err` when
    /// it does (or may) but something is wrong.
    fn lookup(&self, spec: &ImageSpec, checks: &mut Checks) -> Result<Lookup>;
    /// [`ImageStore::lookup`] with the checks `dockroot.verify` asks for.
    fn resolve(&self, spec: &ImageSpec) -> Result<Lookup> {
        self.lookup(spec, &mut Checks::new(self.at().verify))
    }
}

/// An OS/architecture pair, as image indexes and configs name them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    /// e.g. `v8` for arm64, `v7` for arm; `None` matches any.
    pub variant: Option<String>,
}

impl Platform {
    /// The platform this program runs on (linux and Go's name of the CPU).
    pub fn running() -> Platform {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "x86" => "386",
            "aarch64" => "arm64",
            "arm" => "arm",
            "powerpc64" => "ppc64",
            "riscv64" => "riscv64",
            "s390x" => "s390x",
            "loongarch64" => "loong64",
            other => other,
        };
        Platform { os: "linux".into(), architecture: arch.into(), variant: None }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// Where to look and what to check. Paths are components relative to the
/// root partition's top level (as `config::relative_path` returns them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    /// Docker's data root (`docker_path=`).
    pub docker_path: Vec<String>,
    /// Podman's graph root.
    pub podman_path: Vec<String>,
    /// containerd roots, each tried.
    pub containerd_paths: Vec<Vec<String>>,
    /// The containerd namespace.
    pub namespace: String,
    /// `dockroot.store=`: only this kind of store is searched.
    pub pin: Option<StoreKind>,
    /// `dockroot.store=KIND:DRIVER`: only this driver (or snapshotter).
    pub driver: Option<Driver>,
    /// `dockroot.verify=` (default on).
    pub verify: bool,
    /// The platform picked from multi-platform images.
    pub platform: Platform,
}

fn components(s: &str) -> Vec<String> {
    s.split('/').filter(|c| !c.is_empty()).map(str::to_string).collect()
}

impl StoreOptions {
    /// The defaults for a Docker data root at `docker_path`.
    pub fn new(docker_path: &[String]) -> StoreOptions {
        let mut docker_containerd = docker_path.to_vec();
        docker_containerd.extend(components(DOCKER_CONTAINERD_SUBDIR));
        StoreOptions {
            docker_path: docker_path.to_vec(),
            podman_path: components(DEFAULT_PODMAN_PATH),
            containerd_paths: vec![components(DEFAULT_CONTAINERD_PATH), docker_containerd],
            namespace: DEFAULT_NAMESPACE.into(),
            pin: None,
            driver: None,
            verify: true,
            platform: Platform::running(),
        }
    }
}

impl StoreOptions {
    /// The `dockroot.store=` value in force, if any.
    pub fn pin_text(&self) -> Option<String> {
        self.pin.map(|k| pin_text(k, self.driver))
    }

    /// Whether candidates of `kind` with `driver` are searched.
    pub fn wants(&self, kind: StoreKind, driver: Driver) -> bool {
        self.pin.is_none_or(|p| p == kind) && self.driver.is_none_or(|d| d == driver)
    }
}

/// The stores found, and notes on stores seen but not usable.
pub struct Detected {
    pub stores: Vec<Box<dyn ImageStore>>,
    /// E.g. "Docker at /var/lib/docker keeps images with the vfs storage driver, which dockroot does not read".
    pub notes: Vec<String>,
    /// Every place looked at, for a "no store found" message.
    pub looked: Vec<String>,
}

/// A relative path made of normal components only.
fn rel(parts: &[String]) -> Result<PathBuf> {
    let p: PathBuf = parts.iter().collect();
    if p.components().all(|c| matches!(c, Component::Normal(_))) {
        Ok(p)
    } else {
        Err(Error::msg(format!("store path {:?} must be relative, without '..'", p.display())))
    }
}

/// A real directory (not a symlink to one).
pub(crate) fn is_dir(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir())
}

fn is_file(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file())
}

/// Names of the entries of `dir` (at most 16), sorted.
pub(crate) fn list_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).take(16).collect())
        .unwrap_or_default();
    v.sort();
    v
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

// ---------------------------------------------------------------------------
// Shared by the stores.

/// Enforce a check, or with verification off record it as a warning.
#[derive(Debug, Default)]
pub struct Checks {
    pub verify: bool,
    pub warnings: Vec<String>,
}

impl Checks {
    pub fn new(verify: bool) -> Checks {
        Checks { verify, warnings: Vec::new() }
    }

    /// `ok`, or a refusal (verification on) / a warning (off) saying `why`.
    pub fn check(&mut self, ok: bool, why: impl FnOnce() -> String) -> Result<()> {
        if ok {
            return Ok(());
        }
        let why = why();
        if self.verify {
            Err(Error::msg(format!(
                "verification failed: {why}: store corrupted or tampered (dockroot.verify=off boots it anyway)"
            )))
        } else {
            self.warnings.push(format!("dockroot.verify=off: {why}"));
            Ok(())
        }
    }
}

/// Read the image config at `path`, check that it hashes to `image_id`
/// (`sha256:<hex>`) and that it lists layers.
pub(crate) fn verified_config(
    path: &Path,
    image_id: &str,
    reference: &str,
    checks: &mut Checks,
) -> Result<ImageConfig> {
    let config = read_capped(path, JSON_CAP, JSON_CAP_TEXT)?.ok_or_else(|| {
        Error::msg(format!("{reference} is image {image_id}, but its image config {} is missing", path.display()))
    })?;
    let hashed = sha256_hex(&config);
    checks.check(image_id.strip_prefix("sha256:") == Some(hashed.as_str()), || {
        format!(
            "image config for {reference} does not match its ID {image_id} ({} hashes to sha256:{hashed})",
            path.display()
        )
    })?;
    let cfg = parse_image_config(&config).map_err(|e| e.context(path.display().to_string()))?;
    if cfg.diff_ids.is_empty() {
        return Err(Error::msg(format!(
            "image {reference} has no layers ({} lists no rootfs.diff_ids): nothing to boot",
            path.display()
        )));
    }
    Ok(cfg)
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

/// What the boot needs from an image config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageConfig {
    /// Layer diff IDs, base first, each `sha256:<64 hex>`.
    pub diff_ids: Vec<String>,
    /// `os`, if the config names one.
    pub os: Option<String>,
    /// `architecture`, if the config names one.
    pub architecture: Option<String>,
}

/// Parse an image config: `rootfs.type` must be "layers" and every diff ID
/// `sha256:<64 lowercase hex>`.
pub fn parse_image_config(json: &[u8]) -> Result<ImageConfig> {
    let v: Value = serde_json::from_slice(json).map_err(|e| Error::with("image config is not valid JSON", e))?;
    let top = v.as_object().ok_or_else(|| Error::msg("image config must contain a JSON object"))?;
    let rootfs = top
        .get("rootfs")
        .and_then(Value::as_object)
        .ok_or_else(|| Error::msg("image config has no \"rootfs\" object"))?;
    match rootfs.get("type").and_then(Value::as_str) {
        Some("layers") => {}
        other => return Err(Error::msg(format!("image config: rootfs.type is {other:?}, expected \"layers\""))),
    }
    let list = match rootfs.get("diff_ids") {
        Some(Value::Array(a)) => a.as_slice(),
        None | Some(Value::Null) => &[],
        Some(_) => return Err(Error::msg("image config: rootfs.diff_ids must be an array")),
    };
    if list.len() > MAX_LAYERS {
        return Err(Error::msg(format!("image config lists {} layers, more than {MAX_LAYERS}", list.len())));
    }
    let mut diff_ids = Vec::with_capacity(list.len());
    for (i, d) in list.iter().enumerate() {
        let s = d
            .as_str()
            .ok_or_else(|| Error::msg(format!("image config: rootfs.diff_ids[{i}] must be a string, not {d}")))?;
        check_digest_id(s).map_err(|e| e.context(format!("image config: rootfs.diff_ids[{i}]")))?;
        diff_ids.push(s.to_string());
    }
    let opt_str = |key: &str| -> Result<Option<String>> {
        match top.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(Error::msg(format!("image config: {key:?} must be a string, not {other}"))),
        }
    };
    Ok(ImageConfig { diff_ids, os: opt_str("os")?, architecture: opt_str("architecture")? })
}

/// Chain IDs of a layer stack: C0 = D0, Cn = sha256(C(n-1) + " " + Dn).
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => format!("sha256:{}", sha256_hex(format!("{prev} {d}").as_bytes())),
        };
        out.push(next);
    }
    out
}

/// Lowercase hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len().saturating_mul(2));
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

/// `sha256:<64 lowercase hex>` (image IDs, diff IDs, chain IDs, digests).
pub fn check_digest_id(s: &str) -> Result<()> {
    match s.strip_prefix("sha256:") {
        Some(h) if is_hex64(h) => Ok(()),
        _ => Err(Error::msg(format!("{s:?} is not of the form sha256:<64 lowercase hex digits>"))),
    }
}

/// An image ID: `sha256:<64 lowercase hex>`.
pub fn check_image_id(id: &str) -> Result<()> {
    check_digest_id(id).map_err(|e| e.context("invalid image ID"))
}

/// Read a whole file of at most `cap` bytes; `None` if it does not exist.
pub(crate) fn read_capped(path: &Path, cap: u64, cap_text: &str) -> Result<Option<Vec<u8>>> {
    let too_big = || Error::msg(format!("{} is larger than {cap_text}", path.display()));
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::with(format!("opening {}", path.display()), e)),
    };
    let len = file.metadata().map_err(|e| Error::with(format!("checking {}", path.display()), e))?.len();
    if len > cap {
        return Err(too_big());
    }
    let mut buf = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    // Read one byte past the cap in case the file grew since the check.
    file.take(cap.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(|e| Error::with(format!("reading {}", path.display()), e))?;
    if u64::try_from(buf.len()).map_or(true, |l| l > cap) {
        return Err(too_big());
    }
    Ok(Some(buf))
}

/// The layer's directory must be a real directory (not a symlink).
pub(crate) fn check_layer_dir(abs: &Path, what: &str, named_by: &str) -> Result<()> {
    match std::fs::symlink_metadata(abs) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(Error::msg(format!("{what}, {}, is not a directory", abs.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(Error::msg(format!("{what}, {}, does not exist ({named_by} names it)", abs.display())))
        }
        Err(e) => Err(Error::with(format!("checking {}", abs.display()), e)),
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

/// Scratch directories and files for the unit tests of the stores and the
/// dry run.
#[cfg(test)]
pub(crate) mod testutil {
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fresh directory under the temp dir, removed on drop.
    pub struct TempDir(pub PathBuf);

    impl TempDir {
        pub fn new() -> TempDir {
            static N: AtomicUsize = AtomicUsize::new(0);
            let p = std::env::temp_dir().join(format!(
                "dockroot-unit-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::SeqCst)
            ));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Write `data` to `path`, creating the directories on the way.
    pub fn write(path: &Path, data: &[u8]) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, data).unwrap();
    }
}

#[cfg(test)]
mod tests {
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
    fn store_kinds_and_options() {
        for k in [StoreKind::Docker, StoreKind::Podman, StoreKind::Containerd] {
            assert_eq!(StoreKind::parse_pin(k.name()).unwrap(), (k, None));
            for d in k.drivers() {
                assert_eq!(StoreKind::parse_pin(&pin_text(k, Some(*d))).unwrap(), (k, Some(*d)));
            }
        }
        assert_eq!(StoreKind::parse_pin("docker:overlay2").unwrap(), (StoreKind::Docker, Some(Driver::Overlay2)));
        assert_eq!(
            StoreKind::parse_pin("containerd:overlayfs").unwrap(),
            (StoreKind::Containerd, Some(Driver::Overlayfs))
        );
        for bad in
            ["lxc", "docker:overlayfs", "containerd:overlay2", "podman:overlay2", "docker:", ":btrfs", "docker:btrfs:x"]
        {
            let e = StoreKind::parse_pin(bad).unwrap_err().to_string();
            assert!(e.contains("docker, podman or containerd") && e.contains("containerd:overlayfs"), "{bad}: {e}");
        }
        assert_eq!(
            whence(StoreKind::Docker, Driver::Overlay2, Path::new("var/lib/docker")),
            "Docker (overlay2) at /var/lib/docker"
        );
        let o = StoreOptions {
            pin: Some(StoreKind::Containerd),
            driver: Some(Driver::Overlayfs),
            ..StoreOptions::new(&[])
        };
        assert_eq!(o.pin_text().as_deref(), Some("containerd:overlayfs"));
        assert!(o.wants(StoreKind::Containerd, Driver::Overlayfs));
        assert!(!o.wants(StoreKind::Containerd, Driver::Btrfs) && !o.wants(StoreKind::Docker, Driver::Overlayfs));
        let o = StoreOptions::new(&["docker".to_string()]);
        assert_eq!(o.containerd_paths[1], vec!["docker", "containerd", "daemon"]);
        assert_eq!(o.podman_path, vec!["var", "lib", "containers", "storage"]);
        assert!(rel(&["..".to_string()]).is_err());
        assert!(rel(&["/abs".to_string()]).is_err());
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

    #[test]
    fn checks_enforce_or_warn() {
        let mut c = Checks::new(true);
        assert!(c.check(true, || "x".into()).is_ok());
        let e = c.check(false, || "config hashes to y".into()).unwrap_err().to_string();
        assert!(e.contains("verification failed: config hashes to y") && e.contains("dockroot.verify=off"), "{e}");
        let mut c = Checks::new(false);
        c.check(false, || "config hashes to y".into()).unwrap();
        assert_eq!(c.warnings, vec!["dockroot.verify=off: config hashes to y".to_string()]);
    }

    #[test]
    fn hex_and_sha() {
        assert_eq!(hex(&[0, 0x0f, 0xa5, 0xff]), "000fa5ff");
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
