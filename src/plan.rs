//! `dockroot plan`: what the init would do with a disk and a kernel command
//! line, without changing anything (a host-side dry run, and a pre-flight
//! check before a reboot: see [`Outcome`]).
//!
//! [`describe`] only reads: the command line is checked as the init checks it
//! ([`BootConfig`]), the image is resolved in the stores on the mounted top
//! level exactly as at boot, the roots on the partition are looked at as the
//! init looks at them (`choose::facts`), and the same rule decides
//! ([`policy::decide_with`]); the plan says what would be created, kept,
//! deleted and written.

use crate::choose::facts::{self, Lookout};
use crate::config::{BootConfig, Embedded};
use crate::error::{Context, Error, Result};
use crate::nextboot::{self, ImageSource, NextBoot};
use crate::policy::{self, Decision};
use crate::policy::{Bootable, RootFacts, Which};
use crate::reference::ImageSpec;
use crate::rwlayer::{self, At, RwStore};
use crate::store::{self, Resolved, Root};
use crate::switch_root;
use std::fmt;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

/// Most top layer entries listed.
const MAX_LISTED_FILES: usize = 200;
/// Most top layer entries walked.
const MAX_WALKED: usize = 100_000;
/// Deepest top layer directory walked.
const MAX_DEPTH: usize = 256;

/// What to plan for.
pub struct PlanInput<'a> {
    /// The root partition's top level (subvolid=5), mounted (read-only is enough).
    pub top: &'a Path,
    /// The kernel command line the init would get.
    pub cmdline: &'a str,
    /// The initramfs's embedded config, used when the command line has no
    /// `dockroot.image=`.
    pub config: Option<Embedded>,
    /// The top layer directory as mounted on this host, to list its files;
    /// when `None` and `toplayer=` is the root partition itself, it is found
    /// under `top`.
    pub toplayer_dir: Option<&'a Path>,
    /// The device mounted at `top` for the run, if it was: messages then name
    /// paths on the partition (`/machine on /dev/sda2`), not under the mount.
    pub device: Option<&'a Path>,
}

/// How the boot would go, for the exit status of `dockroot plan`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// As the command line asks (exit 0).
    AsAsked,
    /// It would fall back to a previous root (exit 3).
    Fallback,
    /// It would fail (exit 4); so does a command line the init refuses.
    Fail,
}

impl Outcome {
    /// `dockroot plan`'s exit status (README, "Checking a setup before rebooting").
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::AsAsked => 0,
            Outcome::Fallback => 3,
            Outcome::Fail => 4,
        }
    }
}

/// The dry run's findings.
#[derive(Debug)]
pub struct Plan {
    /// The image that would boot, if it resolves.
    pub resolved: Option<Resolved>,
    /// Why a fresh root could not be made (the boot would fall back).
    pub refusal: Option<String>,
    /// What the boot would do.
    pub decision: Decision,
    /// Kept roots the boot would delete (`dockroot.keep=`).
    pub pruned: Vec<String>,
    /// The image the boot would look for, and where that choice comes from.
    pub image: ImageSpec,
    pub image_source: ImageSource,
    /// The next-boot file as read (`dockroot switch`), if there is one and it can be used.
    pub next: Option<NextBoot>,
    /// The rw layer as shown (`/rwlayer`) and whether it exists.
    pub rw_shown: String,
    pub rw_exists: bool,
    /// The kept roots, oldest first, each looked into (whether it has an init).
    pub kept: Vec<RootFacts>,
    /// The top layer directory as found on this host and walked without error,
    /// which a fresh root gets on top of the image (for `dockroot boot-files`).
    pub toplayer_dir: Option<PathBuf>,
    /// The report, line by line.
    pub lines: Vec<String>,
}

impl Plan {
    pub fn outcome(&self) -> Outcome {
        match &self.decision {
            Decision::Fail(_) | Decision::Check(_) => Outcome::Fail,
            d if d.fallback().is_some() => Outcome::Fallback,
            _ => Outcome::AsAsked,
        }
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for l in &self.lines {
            writeln!(f, "{l}")?;
        }
        Ok(())
    }
}

/// Plan the boot of `input.top` with `input.cmdline`. A command line the
/// init would refuse is an error; a store problem is a [`Plan::refusal`]
/// (the boot falls back to the previous root).
pub fn describe(input: &PlanInput<'_>) -> Result<Plan> {
    let mut cfg = BootConfig::parse(input.cmdline, || Ok(input.config.clone()))?;
    let top = std::fs::File::open(input.top).context(|| format!("opening {}", input.top.display()))?;
    let on_cmdline = cfg.params.image.is_some();
    let next = nextboot::apply(top.as_fd(), &cfg.root.rw_subvol, &mut cfg.image, on_cmdline, false);
    let (params, root, opts) = (&cfg.params, &cfg.root, &cfg.store);
    let mut lines: Vec<String> = Vec::new();
    let mut say = |s: String| lines.push(s);
    let fstype = root.fstype.as_deref().unwrap_or("filesystem type detected at boot");
    say(match input.device {
        Some(dev) => {
            format!("root partition: {} ({fstype}): {}, mounted read-only for the run", root.root, dev.display())
        }
        None => format!("root partition: {} ({fstype}), top level at {}", root.root, input.top.display()),
    });
    for w in &params.warnings {
        say(format!("warning: {w}"));
    }

    // The image.
    match store::detect(input.top, opts) {
        Ok(d) => {
            if d.stores.is_empty() {
                say(format!("stores: none found (looked for {})", d.looked.join(", ")));
            } else {
                let found: Vec<String> = d.stores.iter().map(|s| s.whence()).collect();
                say(format!("stores: {}", found.join(", ")));
            }
            for n in &d.notes {
                say(format!("note: {n}"));
            }
        }
        Err(e) => say(format!("stores: {e}")),
    }
    say(format!(
        "verification: {}",
        if opts.verify { "on" } else { "off (dockroot.verify=off): mismatches are only warnings" }
    ));
    say(format!("image {} (from {})", cfg.image, next.source.name()));
    for w in &next.warnings {
        say(format!("warning: {w}"));
    }
    if next.source == nextboot::ImageSource::Once {
        say(format!("  a one-shot choice: the boot removes it from {} before it uses it", next.shown));
    }
    let resolved = store::resolve_image(input.top, opts, &cfg.image);
    match &resolved {
        Ok(r) => {
            say(format!("image: {} in {}", r.reference, r.whence()));
            say(format!("  image ID {}", r.image_id));
            if let Some(m) = &r.manifest_digest {
                say(format!("  manifest {m}"));
            }
            for (i, (d, c)) in r.diff_ids.iter().zip(&r.chain_ids).enumerate() {
                say(format!("  layer {}: diff {d}, chain {c}", i.saturating_add(1)));
            }
            match &r.root {
                Root::Subvolume(p) => say(format!("  boots a writable snapshot of the subvolume /{}", p.display())),
                Root::Overlay { base, lowerdirs } => {
                    let l: Vec<String> = lowerdirs.iter().map(|p| p.display().to_string()).collect();
                    say(format!(
                        "  boots an overlay of {} layer directories in /{} (top first): {}",
                        lowerdirs.len(),
                        base.display(),
                        l.join(":")
                    ));
                }
            }
            for w in &r.warnings {
                say(format!("  warning: {w}"));
            }
        }
        Err(e) => say(format!("image: cannot make a fresh root: {e}")),
    }

    // The top layer, walked now: the boot falls back when it cannot apply it.
    let toplayer_dir = match (input.toplayer_dir, &params.toplayer, &root.toplayer_path) {
        (Some(d), _, _) => Some(d.to_path_buf()),
        (None, Some(t), Some(_)) if *t == root.root => {
            root.toplayer_on_root(params)?.map(|parts| input.top.join(parts.join("/")))
        }
        _ => None,
    };
    // Paths as the user knows them: on the partition when a device was mounted for the run.
    let shown = |p: &Path| match (input.device, p.strip_prefix(input.top)) {
        (Some(dev), Ok(rel)) => format!("/{} on {}", rel.display(), dev.display()),
        _ => p.display().to_string(),
    };
    let walked = toplayer_dir.as_ref().map(|dir| (shown(dir), walk(dir, &shown(dir))));

    // The rw layer, the kept roots, and the rule.
    let rw = RwStore::open(top.as_fd(), &root.rw_subvol)?;
    let mut facts = facts::gather(&rw, params.mode);
    facts.rollback_kept = next.rollback_kept.clone();
    facts.fresh_failed = match (&resolved, &walked) {
        (Err(e), _) => Some(e.to_string()),
        (Ok(_), Some((dir, Err(e)))) => Some(format!("applying the top layer {dir}: {e}")),
        _ => None,
    };
    let rw_shown = rw.rw_shown();
    let kept_shown = format!("{rw_shown}.kept");
    let kept: Vec<String> = facts.kept.iter().map(|k| k.name.clone()).collect();
    let kept_list = if kept.is_empty() { "none".to_string() } else { kept.join(", ") };
    say(format!("rw layer: {rw_shown} ({})", if facts.current.is_some() { "exists" } else { "does not exist yet" }));
    say(format!("kept roots in {kept_shown}: {kept_list} (dockroot.keep={})", params.keep));
    if let Some(e) = &facts.kept_error {
        say(format!("warning: {e}"));
    }
    let check_mount = check_mount_dir();
    let candidates = switch_root::init_candidates(params.init.as_deref());
    let look = Lookout { top: input.top, check_mount: &check_mount, candidates: &candidates };
    let has_current = facts.current.is_some();
    let decision = policy::decide_with(&mut facts, |w| facts::check(&rw, w, &look));
    // Every kept root is looked into, for the report (the decision is made).
    for k in facts.kept.iter_mut().filter(|k| k.bootable == Bootable::Unchecked) {
        k.bootable = facts::check(&rw, &Which::Kept(k.name.clone()), &look);
    }
    let _ = std::fs::remove_dir(&check_mount);
    for (name, why) in facts.kept.iter().filter_map(|k| match &k.bootable {
        policy::Bootable::No(why) => Some((&k.shown, why)),
        _ => None,
    }) {
        say(format!("kept root {name} cannot boot: {why}"));
    }
    let mut pruned: Vec<String> = Vec::new();
    let retire_and_prune = |say: &mut dyn FnMut(String), pruned: &mut Vec<String>| {
        let mut after = kept.clone();
        if has_current {
            let info = rw.open_root(&At::Current).ok().and_then(|fd| rwlayer::read_info(fd.as_fd()));
            let retired = info.map(|i| rwlayer::kept_name(&i, &kept));
            say(format!(
                "the current {rw_shown} is retired read-only to {kept_shown}/{}",
                retired.clone().unwrap_or_else(|| "<boot time>-unknown".into())
            ));
            after.push(retired.unwrap_or_else(|| format!("{}-unknown", rwlayer::now_stamp())));
        }
        *pruned = rwlayer::prune_plan(&after, params.keep);
        if !pruned.is_empty() {
            say(format!("deleted to keep {}: {}", params.keep, pruned.join(", ")));
        }
    };
    match &decision {
        Decision::Fresh { note } => {
            if let Some(n) = note {
                say(format!("warning: {n}"));
            }
            retire_and_prune(&mut say, &mut pruned);
            say(match resolved.as_ref().map(|r| &r.root) {
                Ok(Root::Overlay { .. }) => {
                    format!("a fresh {rw_shown} is created: the upper and work directories of the overlay")
                }
                _ => format!("a fresh {rw_shown} is created from the image"),
            });
        }
        Decision::Current { fallback: None } => {
            say(format!("dockroot.boot=persist: {rw_shown} boots as it is; nothing is created or deleted"))
        }
        Decision::CopyKept { shown, fallback: None, note, .. } => {
            match note {
                Some(n) => say(format!("{n}: a writable copy of {shown} becomes {rw_shown}")),
                None => say(format!("dockroot.boot=previous: a writable copy of {shown} becomes {rw_shown}")),
            }
            retire_and_prune(&mut say, &mut pruned);
        }
        Decision::Current { fallback: Some(_) } => {
            say(format!("FALLBACK: the boot would keep booting {rw_shown} as it is"))
        }
        Decision::CopyKept { shown, fallback: Some(_), .. } => {
            say(format!("FALLBACK: the boot would boot a copy of {shown}"));
            retire_and_prune(&mut say, &mut pruned);
        }
        Decision::Fail(reason) => say(format!("the boot would fail: {reason}")),
        Decision::Check(_) => say("the boot would fail: the policy did not decide (a bug in dockroot)".into()),
    }

    let toplayer_walked = match (&toplayer_dir, &walked) {
        (Some(d), Some((_, Ok(_)))) => Some(d.clone()),
        _ => None,
    };
    // The top layer goes only into a fresh root.
    let writes_top = matches!(decision, Decision::Fresh { .. });
    match (&params.toplayer, walked) {
        (None, _) => say("top layer: none (no toplayer=)".into()),
        (Some(t), None) => say(format!(
            "top layer: toplayer={t}{}: mount it and give its directory to list the files",
            root.toplayer_path.as_ref().map(|p| format!(" toplayer_path=/{}", p.join("/"))).unwrap_or_default()
        )),
        (Some(_), Some((dir, walked))) => match walked {
            Err(e) => say(format!("top layer: {e}: the boot would fail to apply it (and fall back)")),
            Ok((entries, total)) => {
                let verb = if writes_top { "would write" } else { "(not applied in this mode)" };
                say(format!("top layer: {dir} {verb} {total} entries:"));
                for e in &entries {
                    say(format!("  /{e}"));
                }
                if total > entries.len() {
                    say(format!("  ... and {} more", total.saturating_sub(entries.len())));
                }
            }
        },
    }
    let (resolved, refusal) = match resolved {
        Ok(r) => (Some(r), None),
        Err(e) => (None, Some(e.to_string())),
    };
    Ok(Plan {
        resolved,
        refusal,
        decision,
        pruned,
        image: cfg.image.clone(),
        image_source: next.source,
        next: next.next.clone(),
        rw_shown,
        rw_exists: has_current,
        kept: facts.kept,
        toplayer_dir: toplayer_walked,
        lines,
    })
}

/// A directory name of its own (made only when an overlay root is looked
/// into, and removed after) for each plan.
fn check_mount_dir() -> PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::env::temp_dir().join(format!("dockroot-plan-check-{}-{n}", std::process::id()))
}

/// The entries below `dir` (relative paths, directories with a trailing
/// `/`), sorted, at most [`MAX_LISTED_FILES`], and how many there are.
/// Messages name it `shown`.
fn walk(dir: &Path, shown: &str) -> Result<(Vec<String>, usize)> {
    let meta = std::fs::symlink_metadata(dir).map_err(|e| Error::with(format!("the top layer {shown}"), e))?;
    if !meta.is_dir() {
        return Err(Error::msg(format!("the top layer {shown} is not a directory")));
    }
    let mut out = Vec::new();
    let mut stack: Vec<(PathBuf, String, usize)> = vec![(dir.to_path_buf(), String::new(), 0)];
    let mut total: usize = 0;
    while let Some((path, rel, depth)) = stack.pop() {
        let listing = || format!("listing {rel} in the top layer {shown}");
        let rd = std::fs::read_dir(&path).map_err(|e| Error::with(listing(), e))?;
        for entry in rd {
            let entry = entry.map_err(|e| Error::with(listing(), e))?;
            total = total.saturating_add(1);
            if total > MAX_WALKED {
                return Err(Error::msg(format!("the top layer {shown} has more than {MAX_WALKED} entries")));
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            let r = if rel.is_empty() { name } else { format!("{rel}/{name}") };
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            out.push(if is_dir { format!("{r}/") } else { r.clone() });
            if is_dir {
                if depth >= MAX_DEPTH {
                    return Err(Error::msg(format!("the top layer {shown} is nested deeper than {MAX_DEPTH}")));
                }
                stack.push((entry.path(), r, depth.saturating_add(1)));
            }
        }
    }
    out.sort();
    out.truncate(MAX_LISTED_FILES);
    Ok((out, total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testutil::{write, TempDir};
    use crate::store::{big_data_file_name, sha256_hex};

    /// A one-layer image `localhost/os:1` in a Podman layout (the layout
    /// Podman writes is checked in tests/stores_loop.rs).
    fn podman_image(top: &Path) -> String {
        let g = top.join("var/lib/containers/storage");
        let diff = format!("sha256:{}", sha256_hex(b"layer"));
        let config = format!(r#"{{"os":"linux","rootfs":{{"type":"layers","diff_ids":["{diff}"]}}}}"#);
        let id = sha256_hex(config.as_bytes());
        let layer = sha256_hex(b"layer id");
        write(
            &g.join("btrfs-images/images.json"),
            format!(r#"[{{"id":"{id}","names":["localhost/os:1"],"layer":"{layer}"}}]"#).as_bytes(),
        );
        write(&g.join("btrfs-images").join(&id).join(big_data_file_name(&format!("sha256:{id}"))), config.as_bytes());
        write(
            &g.join("btrfs-layers/layers.json"),
            format!(r#"[{{"id":"{layer}","diff-digest":"{diff}"}}]"#).as_bytes(),
        );
        std::fs::create_dir_all(g.join("btrfs/subvolumes").join(&layer)).unwrap();
        id
    }

    const CMD: &str =
        "root=LABEL=disk rootflags=subvol=rw toplayer=LABEL=disk toplayer_path=/machine dockroot.image=os:1";

    fn input<'a>(top: &'a Path, cmdline: &'a str) -> PlanInput<'a> {
        PlanInput { top, cmdline, config: None, toplayer_dir: None, device: None }
    }

    /// An overlay root at `dir` (over the layer `layers/l1` of the top level
    /// `top`), with an init in its upper directory or not.
    fn overlay_root(top: &Path, dir: &Path, with_init: bool) {
        std::fs::create_dir_all(top.join("layers/l1/etc")).unwrap();
        write(&dir.join(rwlayer::OVERLAY_SPEC), br#"{"base": "layers", "lowerdirs": ["l1"]}"#);
        std::fs::create_dir_all(dir.join(rwlayer::UPPER)).unwrap();
        std::fs::create_dir_all(dir.join(rwlayer::WORK)).unwrap();
        if with_init {
            let init = dir.join(rwlayer::UPPER).join("sbin/init");
            write(&init, b"#!/bin/sh\n");
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }

    /// Looking inside an overlay root mounts it: root only.
    fn can_mount() -> bool {
        let root = rustix::process::geteuid().is_root();
        if !root {
            eprintln!("skipped: mounting overlay roots needs root");
        }
        root
    }

    #[test]
    fn plans_a_fresh_boot() {
        let t = TempDir::new();
        let id = podman_image(&t.0);
        overlay_root(&t.0, &t.0.join("rw"), true);
        for k in ["20240101T000000Z-aaaaaaaaaaaa", "20240102T000000Z-bbbbbbbbbbbb", "20240103T000000Z-cccccccccccc"] {
            std::fs::create_dir_all(t.0.join("rw.kept").join(k)).unwrap();
        }
        write(&t.0.join("machine/etc/hostname"), b"box\n");
        let plan = describe(&input(&t.0, CMD)).unwrap();
        let text = plan.to_string();
        let r = plan.resolved.as_ref().unwrap();
        assert_eq!(r.image_id, format!("sha256:{id}"));
        assert!(text.contains("stores: Podman (btrfs) at /var/lib/containers/storage"), "{text}");
        assert!(text.contains("image: localhost/os:1 in Podman (btrfs) at /var/lib/containers/storage"), "{text}");
        assert!(
            text.contains("boots a writable snapshot of the subvolume /var/lib/containers/storage/btrfs/subvolumes/"),
            "{text}"
        );
        assert!(text.contains("the current /rw is retired read-only to /rw.kept/"), "{text}");
        // keep=3 (default): 3 kept + the retired one -> the oldest goes.
        assert_eq!(plan.pruned, vec!["20240101T000000Z-aaaaaaaaaaaa".to_string()]);
        assert!(
            text.contains("top layer: ") && text.contains("would write 2 entries") && text.contains("/etc/hostname"),
            "{text}"
        );
        assert!(plan.refusal.is_none());
        assert_eq!(plan.decision, Decision::Fresh { note: None });
        assert_eq!(plan.outcome(), Outcome::AsAsked);
    }

    #[test]
    fn plans_a_fallback_and_refuses_bad_command_lines() {
        let e = describe(&input(Path::new("/nonexistent"), "root=/dev/vda dockroot.image=os")).unwrap_err().to_string();
        assert!(e.contains("rootflags=subvol=NAME") && e.contains("is not set"), "{e}");
        let e =
            describe(&input(Path::new("/nonexistent"), &format!("{CMD} dockroot.store=lxc"))).unwrap_err().to_string();
        assert!(e.contains("dockroot.store"), "{e}");
        if !can_mount() {
            return;
        }
        let t = TempDir::new();
        podman_image(&t.0);
        overlay_root(&t.0, &t.0.join("rw"), true);
        let cmd = CMD.replace("os:1", "os:2");
        let plan = describe(&input(&t.0, &cmd)).unwrap();
        let text = plan.to_string();
        assert!(plan.resolved.is_none());
        assert!(plan.refusal.as_deref().unwrap().contains("localhost/os:2"), "{plan:?}");
        assert!(text.contains("FALLBACK: the boot would keep booting /rw as it is"), "{text}");
        assert!(text.contains("machine: No such file") && text.contains("fail to apply"), "{text}");
        assert!(plan.pruned.is_empty());
        assert_eq!(plan.outcome(), Outcome::Fallback);
        assert_eq!(plan.outcome().exit_code(), 3);
    }

    /// The plan promises only a fallback the boot would make: a kept root
    /// without an init is skipped, and without any root that can boot the
    /// plan says the boot fails.
    #[test]
    fn a_kept_root_without_an_init_is_never_promised() {
        if !can_mount() {
            return;
        }
        let t = TempDir::new();
        podman_image(&t.0);
        let (good, bad) = ("20240101T000000Z-aaaaaaaaaaaa", "20240102T000000Z-bbbbbbbbbbbb");
        overlay_root(&t.0, &t.0.join("rw.kept").join(bad), false);
        let cmd = CMD.replace("os:1", "os:2");
        let plan = describe(&input(&t.0, &cmd)).unwrap();
        let text = plan.to_string();
        assert!(text.contains(&format!("kept root /rw.kept/{bad} cannot boot: no init found")), "{text}");
        assert!(text.contains("the boot would fail: ") && text.contains("no previous root to fall back to"), "{text}");
        assert_eq!(plan.outcome(), Outcome::Fail);
        assert_eq!(plan.outcome().exit_code(), 4);

        overlay_root(&t.0, &t.0.join("rw.kept").join(good), true);
        let plan = describe(&input(&t.0, &cmd)).unwrap();
        let text = plan.to_string();
        assert!(text.contains(&format!("FALLBACK: the boot would boot a copy of /rw.kept/{good}")), "{text}");
        assert!(text.contains(&format!("kept root /rw.kept/{bad} cannot boot")), "{text}");
        assert_eq!(plan.outcome(), Outcome::Fallback);
        // The same with dockroot.boot=previous: the older root with an init, as asked.
        let plan = describe(&input(&t.0, &format!("{CMD} dockroot.boot=previous"))).unwrap();
        assert!(
            plan.to_string()
                .contains(&format!("dockroot.boot=previous: a writable copy of /rw.kept/{good} becomes /rw")),
            "{plan}"
        );
        assert_eq!(plan.outcome(), Outcome::AsAsked);
    }
}
