//! `dockroot plan`: what the init would do with a disk and a kernel command
//! line, without changing anything (a host-side dry run).
//!
//! [`describe`] only reads: the command line is checked as the init checks
//! it, the image is resolved in the stores on the mounted top level exactly
//! as at boot, and the rw layer, the kept roots and the top layer are looked
//! at to say what would be created, kept, deleted and written.

use crate::boot::RootPlan;
use crate::cmdline::{self, BootMode, Params};
use crate::error::{Error, Result};
use crate::reference::{self, ImageSpec};
use crate::rwlayer;
use crate::store::{self, Resolved, Root};
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
    /// The image of the initramfs's embedded config, used when the command
    /// line has no `dockroot.image=`.
    pub config_image: Option<ImageSpec>,
    /// The top layer directory as mounted on this host, to list its files;
    /// when `None` and `toplayer=` is the root partition itself, it is found
    /// under `top`.
    pub toplayer_dir: Option<&'a Path>,
}

/// The dry run's findings.
#[derive(Debug)]
pub struct Plan {
    /// The image that would boot, if it resolves.
    pub resolved: Option<Resolved>,
    /// Why a fresh root could not be made (the boot would fall back).
    pub refusal: Option<String>,
    /// Kept roots the boot would delete (`dockroot.keep=`).
    pub pruned: Vec<String>,
    /// The report, line by line.
    pub lines: Vec<String>,
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
    let (args, _) = cmdline::split(input.cmdline);
    let params = Params::parse(&args).map_err(|e| e.context("in the kernel command line"))?;
    let root = RootPlan::from_params(&params)?;
    let opts = store::options_from_args(&args, &root.docker_path)?;
    let mut lines: Vec<String> = Vec::new();
    let mut pruned: Vec<String> = Vec::new();
    let mut say = |s: String| lines.push(s);
    let fstype = root.fstype.as_deref().unwrap_or("filesystem type detected at boot");
    say(format!("root partition: {} ({fstype}), top level at {}", root.root, input.top.display()));
    for w in &params.warnings {
        say(format!("warning: {w}"));
    }

    // The image.
    let image = match (&params.image, &input.config_image) {
        (Some(s), _) => Some(reference::parse(s).map_err(|e| e.context(format!("dockroot.image={s}")))?),
        (None, Some(spec)) => Some(spec.clone()),
        (None, None) => None,
    };
    let d = store::detect(input.top, &opts)?;
    if d.stores.is_empty() {
        say(format!("stores: none found (looked for {})", d.looked.join(", ")));
    } else {
        let found: Vec<String> = d.stores.iter().map(|s| s.whence()).collect();
        say(format!("stores: {}", found.join(", ")));
    }
    for n in &d.notes {
        say(format!("note: {n}"));
    }
    say(format!(
        "verification: {}",
        if opts.verify { "on" } else { "off (dockroot.verify=off): mismatches are only warnings" }
    ));
    drop(d);
    let resolved = match &image {
        None => Err(Error::msg(format!(
            "no image to boot: dockroot.image= is not set and no embedded config ({}) was given",
            cmdline::CONFIG_PATH
        ))),
        Some(spec) => store::resolve_image(input.top, &opts, spec),
    };
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

    // The rw layer and the kept roots.
    let rw_shown = format!("/{}", root.rw_subvol.join("/"));
    let rw_abs = input.top.join(root.rw_subvol.join("/"));
    let current = std::fs::symlink_metadata(&rw_abs).ok().filter(|m| m.is_dir()).map(|_| rw_abs.clone());
    let kept_dir = PathBuf::from(format!("{}.kept", rw_abs.display()));
    let kept_shown = format!("{rw_shown}.kept");
    let kept = list_kept(&kept_dir);
    let kept_list = if kept.is_empty() { "none".to_string() } else { kept.join(", ") };
    say(format!("rw layer: {rw_shown} ({})", if current.is_some() { "exists" } else { "does not exist yet" }));
    say(format!("kept roots in {kept_shown}: {kept_list} (dockroot.keep={})", params.keep));
    let fresh_ok = resolved.is_ok();
    match (params.mode, fresh_ok) {
        (BootMode::Persist, _) if current.is_some() => {
            say(format!("dockroot.boot=persist: {rw_shown} boots as it is; nothing is created or deleted"))
        }
        (BootMode::Previous, _) if !kept.is_empty() => say(format!(
            "dockroot.boot=previous: a writable copy of {kept_shown}/{} becomes {rw_shown}",
            kept.last().map(String::as_str).unwrap_or_default()
        )),
        (_, true) => {
            let mut after = kept.clone();
            if let Some(cur) = &current {
                let info = std::fs::File::open(cur).ok().and_then(|f| rwlayer::read_info(f.as_fd()));
                let retired = info.map(|i| rwlayer::kept_name(&i, &kept));
                say(format!(
                    "the current {rw_shown} is retired read-only to {kept_shown}/{}",
                    retired.clone().unwrap_or_else(|| "<boot time>-unknown".into())
                ));
                after.push(retired.unwrap_or_else(|| format!("{}-unknown", rwlayer::now_stamp())));
            }
            say(match resolved.as_ref().map(|r| &r.root) {
                Ok(Root::Overlay { .. }) => {
                    format!("a fresh {rw_shown} is created: the upper and work directories of the overlay")
                }
                _ => format!("a fresh {rw_shown} is created from the image"),
            });
            pruned = rwlayer::prune_plan(&after, params.keep);
            if !pruned.is_empty() {
                say(format!("deleted to keep {}: {}", params.keep, pruned.join(", ")));
            }
        }
        (_, false) => say(match &current {
            Some(_) => format!("FALLBACK: the boot would keep booting {rw_shown} as it is"),
            None if !kept.is_empty() => format!(
                "FALLBACK: the boot would boot a copy of {kept_shown}/{}",
                kept.last().map(String::as_str).unwrap_or_default()
            ),
            None => "the boot would fail: there is no previous root to fall back to".to_string(),
        }),
    }

    // The top layer.
    let toplayer_dir = match (input.toplayer_dir, &params.toplayer, &root.toplayer_path) {
        (Some(d), _, _) => Some(d.to_path_buf()),
        (None, Some(t), Some(_)) if *t == root.root => {
            root.toplayer_on_root(&params)?.map(|parts| input.top.join(parts.join("/")))
        }
        _ => None,
    };
    // The top layer goes only into a fresh root.
    let writes_top = fresh_ok
        && match params.mode {
            BootMode::Fresh => true,
            BootMode::Persist => current.is_none(),
            BootMode::Previous => kept.is_empty(),
        };
    match (&params.toplayer, toplayer_dir) {
        (None, _) => say("top layer: none (no toplayer=)".into()),
        (Some(t), None) => say(format!(
            "top layer: toplayer={t}{}: mount it and give its directory to list the files",
            root.toplayer_path.as_ref().map(|p| format!(" toplayer_path=/{}", p.join("/"))).unwrap_or_default()
        )),
        (Some(_), Some(dir)) => match walk(&dir) {
            Err(e) => say(format!("top layer: {e}: the boot would fail to apply it (and fall back)")),
            Ok((entries, total)) => {
                let verb = if writes_top { "would write" } else { "(not applied in this mode)" };
                say(format!("top layer: {} {verb} {total} entries:", dir.display()));
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
    Ok(Plan { resolved, refusal, pruned, lines })
}

/// dockroot's kept roots in `dir`, oldest first.
fn list_kept(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .filter(|n| rwlayer::is_kept_name(n))
                .take(10_000)
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The entries below `dir` (relative paths, directories with a trailing
/// `/`), sorted, at most [`MAX_LISTED_FILES`], and how many there are.
fn walk(dir: &Path) -> Result<(Vec<String>, usize)> {
    let meta =
        std::fs::symlink_metadata(dir).map_err(|e| Error::with(format!("the top layer {}", dir.display()), e))?;
    if !meta.is_dir() {
        return Err(Error::msg(format!("the top layer {} is not a directory", dir.display())));
    }
    let mut out = Vec::new();
    let mut stack: Vec<(PathBuf, String, usize)> = vec![(dir.to_path_buf(), String::new(), 0)];
    let mut total: usize = 0;
    while let Some((path, rel, depth)) = stack.pop() {
        let rd = std::fs::read_dir(&path).map_err(|e| Error::with(format!("listing {}", path.display()), e))?;
        for entry in rd {
            let entry = entry.map_err(|e| Error::with(format!("listing {}", path.display()), e))?;
            total = total.saturating_add(1);
            if total > MAX_WALKED {
                return Err(Error::msg(format!("the top layer {} has more than {MAX_WALKED} entries", dir.display())));
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            let r = if rel.is_empty() { name } else { format!("{rel}/{name}") };
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            out.push(if is_dir { format!("{r}/") } else { r.clone() });
            if is_dir {
                if depth >= MAX_DEPTH {
                    return Err(Error::msg(format!(
                        "the top layer {} is nested deeper than {MAX_DEPTH}",
                        dir.display()
                    )));
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

    #[test]
    fn plans_a_fresh_boot() {
        let t = TempDir::new();
        let id = podman_image(&t.0);
        std::fs::create_dir_all(t.0.join("rw")).unwrap();
        for k in ["20240101T000000Z-aaaaaaaaaaaa", "20240102T000000Z-bbbbbbbbbbbb", "20240103T000000Z-cccccccccccc"] {
            std::fs::create_dir_all(t.0.join("rw.kept").join(k)).unwrap();
        }
        write(&t.0.join("machine/etc/hostname"), b"box\n");
        let plan = describe(&PlanInput { top: &t.0, cmdline: CMD, config_image: None, toplayer_dir: None }).unwrap();
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
    }

    #[test]
    fn plans_a_fallback_and_refuses_bad_command_lines() {
        let t = TempDir::new();
        podman_image(&t.0);
        std::fs::create_dir_all(t.0.join("rw")).unwrap();
        let cmd = CMD.replace("os:1", "os:2");
        let plan = describe(&PlanInput { top: &t.0, cmdline: &cmd, config_image: None, toplayer_dir: None }).unwrap();
        let text = plan.to_string();
        assert!(plan.resolved.is_none());
        assert!(plan.refusal.as_deref().unwrap().contains("localhost/os:2"), "{plan:?}");
        assert!(text.contains("FALLBACK: the boot would keep booting /rw as it is"), "{text}");
        assert!(text.contains("machine: No such file") && text.contains("fail to apply"), "{text}");
        assert!(plan.pruned.is_empty());

        let e = describe(&PlanInput { top: &t.0, cmdline: "root=/dev/vda", config_image: None, toplayer_dir: None })
            .unwrap_err()
            .to_string();
        assert!(e.contains("rootflags=subvol=NAME") && e.contains("is not set"), "{e}");
        let e = describe(&PlanInput {
            top: &t.0,
            cmdline: &format!("{CMD} dockroot.store=lxc"),
            config_image: None,
            toplayer_dir: None,
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("dockroot.store"), "{e}");
    }
}
