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
//!
//! This file holds the types every store shares (pure). The rest is split:
//! `select` detects the candidates and picks the one store that has the
//! image, `verify` holds the checks of what was found (hashes, chain IDs,
//! IDs, layer directories), `read` the size-capped reads and bounded
//! listings; `docker`, `podman` and `containerd` read one kind of store each.

pub mod bbolt;
mod containerd;
mod docker;
mod podman;
mod read;
mod select;
mod verify;

pub use containerd::{parse_descriptor_list, pick_platform, Descriptor};
pub use docker::{check_cache_id, lookup, parse_repositories, Repositories};
pub use podman::{big_data_file_name, parse_images_json, parse_layers_json, PodmanImage, PodmanLayer};
pub(crate) use read::{is_dir, list_names, read_capped, JSON_CAP, JSON_CAP_TEXT};
pub(crate) use select::short_list;
pub use select::{detect, qualified_candidates, resolve_image, select, split_name, Detected, Outcome};
pub use verify::{chain_ids, check_digest_id, check_image_id, parse_image_config, sha256_hex, Checks, ImageConfig};
pub(crate) use verify::{check_layer_dir, verified_config, MAX_LAYERS};

use crate::error::{Error, Result};
use crate::reference::ImageSpec;
use std::path::{Path, PathBuf};

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
    use super::select::rel;
    use super::*;

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
}
