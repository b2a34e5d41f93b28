//! Boot tests for hostile and broken input (issue 4 item 5): images whose /etc is a
//! symlink out of the root, a Docker store that is corrupt in each of the ways a
//! power cut or a bad tool leaves it (the previous root must boot, the reason must be
//! on the console and in the boot record), and kernel command lines that try to leave
//! the partition's top level (refused before anything on the disk is touched).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use qemu_tests::{assert_same_digest, field, sh, tree_digest, Artifacts, Machine, OS_CONFIG, STANDARD_APPEND};
use serde_json::Value;

/// The rw layer's names on the disk: everything else must stay as it was.
// The boot counters (rwlayer.dockroot-trials) are the init's own, beside the rw layer.
const RW_NAMES: &[&str] =
    &["rwlayer", "rwlayer.kept", "rwlayer.dockroot-tmp", "rwlayer.dockroot-ready", "rwlayer.dockroot-trials"];

/// Digest of the whole disk except the rw layer and its kept/temporary names.
fn outside(m: &Machine) -> BTreeMap<String, String> {
    m.inspect(|top| tree_digest(top, RW_NAMES))
}

fn marker(r: &Value) -> &Value {
    field(r, &["paths", "/var/tmp/from-previous-boot", "exists"])
}

/// Boot an image whose /etc is a symlink to `target` with the top layer (which
/// writes etc/hostname, etc/secret, hard links and a symlink in etc/): everything
/// lands inside the rw layer, where the image's own symlink says (its /), and
/// nothing else on the disk changes.
fn etc_symlink_stays_inside(image_key: &str, target: &str) {
    let a = Artifacts::from_env();
    let image = a.fixture()["images"][image_key].clone();
    let reference = image["reference"].as_str().expect("reference in fixture.json");
    let (repo, tag) = reference.rsplit_once(':').expect("name:tag");
    let m = Machine::new(&format!(r#"{{"docker_image":"{repo}","docker_tag":"{tag}"}}"#));
    let before = outside(&m);
    assert!(before.contains_key("var/lib/docker") && before.contains_key("toplayer/etc/hostname"), "digest too small");

    let r = m.report(&format!("hostile_{image_key}"), "-- --stat /hostname --stat /etc --stat /secret");
    let rec = &r["boot_record"];
    assert_eq!(rec["booted"], "fresh", "{rec}");
    assert_eq!(rec["image"]["id"], image["id"], "{rec}");
    // The booted system sees /etc -> target, and the top layer's files through it.
    assert_eq!(field(&r, &["paths", "/etc", "symlink_target"]), target, "{r}");
    assert_eq!(field(&r, &["paths", "/etc/hostname", "content"]), "dockroot-test-machine\n");
    assert_eq!(field(&r, &["paths", "/hostname", "content"]), "dockroot-test-machine\n");
    assert_eq!(field(&r, &["paths", "/secret", "mode"]), "0600");
    assert_eq!(field(&r, &["paths", "/secret", "uid"]), 1000);

    let after = outside(&m);
    assert_same_digest("the disk outside the rw layer", &before, &after);
    m.inspect(|top| {
        let rw = top.join("rwlayer");
        let etc = std::fs::read_link(rw.join("etc")).expect("the image's /etc symlink is gone");
        assert_eq!(etc, Path::new(target), "the rw layer's /etc symlink was replaced");
        for f in ["hostname", "secret", "hard-a", "hard-b", "motd-link"] {
            assert!(rw.join(f).symlink_metadata().is_ok(), "the top layer's etc/{f} is not at /{f} in the rw layer");
        }
        assert_eq!(std::fs::read_to_string(rw.join("hostname")).unwrap(), "dockroot-test-machine\n");
        assert!(
            !top.join("hostname").exists() && !top.join("secret").exists(),
            "the top layer escaped to the top level"
        );
    });
}

#[test]
fn an_image_with_etc_a_symlink_to_root_keeps_the_top_layer_inside() {
    etc_symlink_stays_inside("hostile_etc_root", "/");
}

#[test]
fn an_image_with_etc_a_symlink_up_keeps_the_top_layer_inside() {
    etc_symlink_stays_inside("hostile_etc_up", "../../..");
}

/// One way of breaking the Docker store, undone after its boot.
struct Breakage {
    name: &'static str,
    /// Breaks the store (the disk mounted read-write at the path); returns what to restore.
    apply: Box<dyn Fn(&Path) -> Restore>,
    /// What the fallback reason must name.
    reason_names: Vec<String>,
}

enum Restore {
    /// Put the file back as it was (None: it did not exist).
    File(PathBuf, Option<Vec<u8>>),
    Nothing,
}

#[test]
fn a_broken_docker_store_falls_back_to_the_previous_root() {
    let m = Machine::new(OS_CONFIG);
    let fx = m.artifacts.fixture();
    let os = &fx["images"]["os"];
    let s = |v: &Value| v.as_str().expect("string in fixture.json").to_string();
    let chains: Vec<String> = os["chain_ids"].as_array().unwrap().iter().map(s).collect();
    let top_cache = s(&os["top_cache_id"]);
    let store = "var/lib/docker/image/btrfs";
    let repos = format!("{store}/repositories.json");
    let base_parent =
        format!("{store}/layerdb/sha256/{}/parent", chains[0].strip_prefix("sha256:").expect("sha256: chain id"));

    let replace = |rel: String, content: Box<dyn Fn(&Path)>| -> Box<dyn Fn(&Path) -> Restore> {
        Box::new(move |top: &Path| {
            let path = top.join(&rel);
            let old = std::fs::read(&path).ok();
            content(&path);
            Restore::File(path.strip_prefix(top).unwrap().to_path_buf(), old)
        })
    };
    let breakages = vec![
        Breakage {
            name: "garbage",
            apply: replace(
                repos.clone(),
                Box::new(|p| std::fs::write(p, b"{\"Repositories\": {\x00\xff garbage").unwrap()),
            ),
            reason_names: vec!["repositories.json".into(), "not valid JSON".into()],
        },
        Breakage {
            name: "empty",
            apply: replace(repos.clone(), Box::new(|p| std::fs::write(p, b"").unwrap())),
            reason_names: vec!["repositories.json".into()],
        },
        Breakage {
            name: "huge",
            apply: replace(
                repos.clone(),
                Box::new(|p| {
                    sh(&format!("head -c 100M /dev/zero | tr '\\0' ' ' > '{}'", p.display()));
                }),
            ),
            reason_names: vec!["repositories.json".into(), "larger than".into()],
        },
        Breakage {
            // The base layer claims the top layer as its parent: the chain loops.
            name: "parent_loop",
            apply: replace(
                base_parent.clone(),
                Box::new({
                    let top_chain = chains.last().unwrap().clone();
                    move |p| std::fs::write(p, top_chain.as_bytes()).unwrap()
                }),
            ),
            reason_names: vec![base_parent.clone()],
        },
        Breakage {
            // The image's layer is a plain directory with the same files (a store
            // copied without btrfs, say): the store lookup finds it, the
            // snapshot refuses it. (The next breakage removes it.)
            name: "layer_not_a_subvolume",
            apply: Box::new({
                let top_cache = top_cache.clone();
                move |top: &Path| {
                    let sub = top.join("var/lib/docker/btrfs/subvolumes").join(&top_cache);
                    let plain = sub.with_extension("plain");
                    sh(&format!("cp -a '{}' '{}'", sub.display(), plain.display()));
                    sh(&format!("btrfs subvolume delete '{}' >/dev/null", sub.display()));
                    sh(&format!("mv '{}' '{}'", plain.display(), sub.display()));
                    assert!(sub.join("layer3.txt").is_file(), "the plain directory lacks the layer's files");
                    let show = std::process::Command::new("btrfs").arg("subvolume").arg("show").arg(&sub).output();
                    assert!(!show.unwrap().status.success(), "{} is still a subvolume", sub.display());
                    Restore::Nothing
                }
            }),
            reason_names: vec![
                format!("/var/lib/docker/btrfs/subvolumes/{top_cache} (top layer of image"),
                "is not a btrfs subvolume".into(),
            ],
        },
        Breakage {
            name: "no_layer_subvolume",
            apply: Box::new({
                let top_cache = top_cache.clone();
                move |top: &Path| {
                    let sub = top.join("var/lib/docker/btrfs/subvolumes").join(&top_cache);
                    // A plain directory by now (the breakage before), or a subvolume.
                    sh(&format!(
                        "btrfs subvolume delete '{0}' >/dev/null 2>&1 || rm -rf '{0}'; test ! -e '{0}'",
                        sub.display()
                    ));
                    Restore::Nothing
                }
            }),
            reason_names: vec![top_cache.clone(), "dockroot-test/os".into()],
        },
    ];

    let first = m.report("broken_store_first", "-- --make-nested");
    assert_eq!(marker(&first), true);
    let first_root = field(&first, &["root_btrfs", "subvolume_id"]).clone();
    for b in &breakages {
        let restore = m.modify(|top| (b.apply)(top));
        let before = outside(&m);
        let out = m.boot(&format!("broken_store_{}", b.name), "");
        let r = out.expect_testinit();
        assert_eq!(r["errors"], serde_json::json!([]), "{}: {r}", b.name);
        let rec = &r["boot_record"];
        let booted = rec["booted"].as_str().unwrap_or_default();
        assert!(booted.starts_with("fallback: /rwlayer as it was"), "{}: {rec}", b.name);
        let reason = rec["fallback"]["reason"].as_str().unwrap_or_default();
        for n in &b.reason_names {
            assert!(reason.contains(n.as_str()), "{}: the reason does not name {n:?}: {reason}", b.name);
        }
        assert_eq!(marker(&r), true, "{}: the previous root did not boot with its changes", b.name);
        assert_eq!(field(&r, &["root_btrfs", "subvolume_id"]), &first_root, "{}: not the same root", b.name);
        let console = format!("dockroot: ERROR: cannot prepare a fresh root: {reason}");
        assert!(
            out.contains(&console),
            "{}: the console does not show the reason {reason:?}:\n{}",
            b.name,
            out.tail(30)
        );
        assert!(out.contains("dockroot: WARNING: FALLBACK: booting the previous root"), "{}", out.tail(30));
        assert_same_digest(&format!("{}: the disk outside the rw layer", b.name), &before, &outside(&m));
        m.inspect(|top| {
            assert!(!top.join("rwlayer.dockroot-tmp").exists(), "{}: a half-built root was left", b.name);
            assert!(!top.join("rwlayer.kept").exists(), "{}: the fallback retired the root it booted", b.name);
        });
        if let Restore::File(rel, old) = restore {
            m.modify(|top| match &old {
                Some(bytes) => std::fs::write(top.join(&rel), bytes).unwrap(),
                None => std::fs::remove_file(top.join(&rel)).unwrap(),
            });
        }
    }
}

/// Kernel command lines that name paths outside the partition's top level are
/// refused before anything is mounted: a clear message, a reboot, the disk untouched.
#[test]
fn paths_leaving_the_top_level_on_the_command_line_are_refused() {
    let m = Machine::new(OS_CONFIG);
    let image_hash = || sh(&format!("sha256sum '{}'", m.disk.path().display()));
    let before = image_hash();
    let cases = [
        (
            "cmdline_subvol_dotdot",
            "root=LABEL=dockroot-test rootflags=subvol=../x rw toplayer=LABEL=dockroot-test toplayer_path=toplayer",
            "rootflags=subvol=\"../x\": '..' is not allowed",
        ),
        (
            "cmdline_docker_path_dotdot",
            &format!("{STANDARD_APPEND} docker_path=a/../.."),
            "docker_path=\"a/../..\": '..' is not allowed",
        ),
        // An absolute path means the partition's top level; '..' cannot climb out of it.
        (
            "cmdline_toplayer_path_dotdot",
            &format!("{STANDARD_APPEND} toplayer_path=/../../etc"),
            "toplayer_path=\"/../../etc\": '..' is not allowed",
        ),
        (
            "cmdline_image_dotdot",
            &format!("{STANDARD_APPEND} dockroot.image=../x"),
            "dockroot.image=../x: invalid image reference \"../x\"",
        ),
    ];
    for (name, append, want) in cases {
        let out = m.boot_cmdline(name, &format!("{append} dockroot.reboot_delay=1"));
        assert!(!out.timed_out, "{name}: no reboot:\n{}", out.tail(30));
        assert!(out.testinit().is_none(), "{name}: booted anyway");
        assert!(out.contains("dockroot: ERROR: cannot boot:") && out.contains(want), "{name}:\n{}", out.tail(30));
        assert!(out.contains("rebooting in 1 s"), "{name}:\n{}", out.tail(30));
        assert!(out.contains("reboot: Restarting system"), "{name}: did not reboot:\n{}", out.tail(30));
    }
    assert_eq!(image_hash(), before, "the disk changed");
}

/// A kernel command line of about 2000 bytes (x86 keeps 2048) full of what a
/// bootloader or a careless user leaves: repeated keys (the last wins), an
/// unknown dockroot.* key (a warning), odd characters, quotes in odd places and
/// an unbalanced quote at the end. dockroot reads it as the kernel does and boots.
#[test]
fn a_garbage_command_line_still_boots() {
    let m = Machine::new(OS_CONFIG);
    let mut append = String::from(
        "root=LABEL=no-such-disk rootflags=subvol=elsewhere ro toplayer_path=nowhere \
         é ☃ \u{1}\u{7f} =lonely == ,,, '' p=q\"r s\"t \"quoted word\" dockroot.bogus=1 dockroot.debug @RAW@",
    );
    // Padding: dotted keys are module parameters, never handed to init (the kernel
    // panics beyond 32 init arguments or environment variables).
    let tail = format!(" {STANDARD_APPEND} rw x=\"unbalanced quote");
    let harness = "console=ttyS0 panic=-1 printk.time=1 no_timer_check ";
    let mut i = 0;
    while harness.len() + append.len() + tail.len() < 1970 {
        append.push_str(&format!(" junk{i}.opt=\"v {i}\""));
        i += 1;
    }
    append.push_str(&tail);
    // A byte that is not UTF-8 (the kernel passes any): an init argument.
    let (head, rest) = append.split_once("@RAW@").expect("the placeholder");
    let raw = [head.as_bytes(), b"caf\xe9", rest.as_bytes()].concat();
    let full = harness.len() + raw.len() + 2;
    assert!((1900..2048).contains(&full), "{full} bytes");
    let mut spec = m.spec_cmdline("cmdline_garbage", "");
    spec.append_raw = raw;
    let out = qemu_tests::boot(&spec);
    let r = out.expect_testinit();
    assert_eq!(r["errors"], serde_json::json!([]), "{r}");
    let cmdline = r["cmdline"].as_str().expect("testinit's /proc/cmdline");
    assert!(cmdline.ends_with("x=\"unbalanced quote"), "the kernel cut the command line: {cmdline}");
    let rec = &r["boot_record"];
    assert_eq!(rec["booted"], "fresh", "{rec}");
    assert_eq!(rec["rw_layer"], "/rwlayer", "the last rootflags= did not win: {rec}");
    assert_eq!(rec["root_device"]["label"], "dockroot-test", "the last root= did not win: {rec}");
    assert!(strings(&r["root_mount"]["mount_options"]).contains(&"rw".to_string()), "the last rw did not win");
    assert_eq!(field(&r, &["paths", "/etc/hostname", "content"]), "dockroot-test-machine\n", "top layer");
    assert!(out.contains("dockroot: WARNING: unknown kernel parameter dockroot.bogus ignored"), "{}", out.tail(40));
    // What the kernel gave init (no '=', not the kernel's own) reaches the image's init.
    let argv = strings(&r["argv"]);
    for a in ["é", "☃", "quoted word", "caf\u{fffd}"] {
        assert!(argv.iter().any(|x| x == a), "argv lacks {a:?}: {argv:?}");
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect()).unwrap_or_default()
}
