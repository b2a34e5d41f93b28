//! `dockroot boot-files` on a host (`--top` a directory holding a store, `--esp`
//! a plain directory): the first run writes the files and the entry, the
//! second writes nothing, new files replace the old directory, a crashed run's
//! leftovers are removed, `--dry-run` writes nothing, and a root without a
//! kernel and dockroot initramfs exits 3.
//!
//! The stores: Podman's btrfs layout (a layer "subvolume" is a plain directory
//! here, as in `dockroot::plan`'s tests: for boot-files the same as Docker's
//! btrfs driver, one complete tree) and Docker's overlay2 layout (layers, with a
//! whiteout), both written by hand. The ESP is a plain directory: this kernel
//! may have no vfat (the QEMU tests write a real ESP).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use dockroot::store::{big_data_file_name, chain_ids, sha256_hex};

fn write(path: &Path, data: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
}

/// A one-layer image `localhost/os:1` in a Podman layout under `top`; returns its layer directory.
fn podman_image(top: &Path) -> PathBuf {
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
    write(&g.join("btrfs-layers/layers.json"), format!(r#"[{{"id":"{layer}","diff-digest":"{diff}"}}]"#).as_bytes());
    let dir = g.join("btrfs/subvolumes").join(&layer);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A newc cpio holding a dockroot module index for `release`.
fn initramfs(release: &str) -> Vec<u8> {
    let index = format!("dockroot-modules 3\nkernel {release}\n");
    let mut out = Vec::new();
    for (i, (name, data)) in
        [("init", &b"\x7fELF"[..]), ("lib/modules/dockroot-modules.index", index.as_bytes()), ("TRAILER!!!", b"")]
            .iter()
            .enumerate()
    {
        out.extend(
            format!(
                "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
                i,
                0o100644,
                0,
                0,
                1,
                0,
                data.len(),
                0,
                0,
                0,
                0,
                name.len() + 1,
                0
            )
            .bytes(),
        );
        out.extend(name.bytes());
        out.push(0);
        while out.len() % 4 != 0 {
            out.push(0);
        }
        out.extend_from_slice(data);
        while out.len() % 4 != 0 {
            out.push(0);
        }
    }
    out
}

/// An image of `layers` (each a list of (path, data); data `None`: a whiteout, a 0:0
/// character device as overlay2 stores it) in Docker's overlay2 layout under
/// `top/var/lib/docker`, base layer first; returns its ID.
/// A layer's files: a path and its data, `None` for a whiteout.
type Layer<'a> = &'a [(&'a str, Option<&'a [u8]>)];

fn docker_overlay2_image(top: &Path, seed: &str, layers: &[Layer<'_>]) -> String {
    let root = top.join("var/lib/docker");
    let store = root.join("image/overlay2");
    let diff_ids: Vec<String> =
        (0..layers.len()).map(|i| format!("sha256:{}", sha256_hex(format!("{seed}-{i}").as_bytes()))).collect();
    let list = diff_ids.iter().map(|d| format!("\"{d}\"")).collect::<Vec<_>>().join(",");
    let config = format!(r#"{{"os":"linux","created":"{seed}","rootfs":{{"type":"layers","diff_ids":[{list}]}}}}"#);
    let id = sha256_hex(config.as_bytes());
    write(&store.join("imagedb/content/sha256").join(&id), config.as_bytes());
    let chains = chain_ids(&diff_ids);
    for (i, (files, (c, d))) in layers.iter().zip(chains.iter().zip(&diff_ids)).enumerate() {
        let dir = store.join("layerdb/sha256").join(c.strip_prefix("sha256:").unwrap());
        write(&dir.join("diff"), d.as_bytes());
        if i > 0 {
            write(&dir.join("parent"), chains[i - 1].as_bytes());
        }
        let cache_id = sha256_hex(format!("cache {c}").as_bytes());
        write(&dir.join("cache-id"), cache_id.as_bytes());
        let diff = root.join("overlay2").join(&cache_id).join("diff");
        std::fs::create_dir_all(&diff).unwrap();
        for (path, data) in files.iter() {
            match data {
                Some(data) => write(&diff.join(path), data),
                None => {
                    std::fs::create_dir_all(diff.join(path).parent().unwrap()).unwrap();
                    let ok = Command::new("mknod").arg(diff.join(path)).args(["c", "0", "0"]).status().unwrap();
                    assert!(ok.success(), "mknod (needs root)");
                }
            }
        }
    }
    write(
        &store.join("repositories.json"),
        format!(r#"{{"Repositories":{{"os":{{"os:1":"sha256:{id}"}}}}}}"#).as_bytes(),
    );
    format!("sha256:{id}")
}

const CMD: &str = "root=LABEL=disk rootflags=subvol=rw dockroot.image=os:1 quiet";

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dockroot"))
        .arg("boot-files")
        .args(args)
        .env("TMPDIR", std::env::temp_dir())
        .output()
        .expect("running dockroot boot-files");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

fn mtime(p: &Path) -> SystemTime {
    std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).modified().unwrap()
}

/// Every file below `dir`, relative, sorted.
fn files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn boot_files_follow_the_image_and_write_nothing_when_up_to_date() {
    let base = std::env::temp_dir().join(format!("dockroot-cli-bootfiles-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let (top, esp) = (base.join("top"), base.join("esp"));
    std::fs::create_dir_all(&esp).unwrap();
    let layer = podman_image(&top);
    write(&layer.join("boot/vmlinuz-6.12.1"), b"kernel 6.12.1");
    write(&layer.join("boot/initrd.img-6.12.1"), &initramfs("6.12.1"));
    // An older release with both files, and a newer one whose initramfs is not dockroot's.
    write(&layer.join("boot/vmlinuz-6.1.0"), b"kernel 6.1.0");
    write(&layer.join("boot/initrd.img-6.1.0"), &initramfs("6.1.0"));
    write(&layer.join("boot/vmlinuz-6.12.10"), b"kernel 6.12.10");
    write(&layer.join("boot/initrd.img-6.12.10"), b"initramfs-tools");
    let (t, e) = (top.to_str().unwrap(), esp.to_str().unwrap());

    // On a host, a new ESP needs the command line.
    let (code, out, err) = run(&["--top", t, "--esp", e]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("/loader/entries/dockroot.conf on ") && err.contains("give --cmdline"), "{err}");

    // First run: the files and the entry.
    let (code, out, err) = run(&["--top", t, "--esp", e, "--cmdline", CMD, "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["dockroot_boot_files"], 1);
    assert_eq!(
        (v["changed"].as_bool(), v["release"].as_str(), v["from"].as_str()),
        (Some(true), Some("6.12.1"), Some("fresh"))
    );
    assert_eq!(v["image"], "localhost/os:1");
    assert_eq!(v["kernel_source"], "/boot/vmlinuz-6.12.1");
    assert!(v["skipped"][0].as_str().unwrap().starts_with("6.12.10: no dockroot initramfs"), "{v}");
    let linux = v["kernel"].as_str().unwrap().to_string();
    assert!(linux.starts_with("/dockroot/dockroot/6.12.1-") && linux.ends_with("/linux"), "{linux}");
    let conf = esp.join("loader/entries/dockroot.conf");
    let text = std::fs::read_to_string(&conf).unwrap();
    assert!(text.contains(&format!("\nlinux {linux}\n")) && text.contains(&format!("\noptions {CMD}\n")), "{text}");
    assert_eq!(std::fs::read(esp.join(linux.trim_start_matches('/'))).unwrap(), b"kernel 6.12.1");
    let first = files(&esp);
    assert_eq!(first.len(), 3, "{first:?}");

    // Second run (the options from the entry): nothing written.
    let stamps: Vec<SystemTime> = first.iter().map(|f| mtime(&esp.join(f))).collect();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let (code, out, err) = run(&["--top", t, "--esp", e]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("up to date: /loader/entries/dockroot.conf names"), "{out}");
    assert_eq!(files(&esp), first);
    assert_eq!(first.iter().map(|f| mtime(&esp.join(f))).collect::<Vec<_>>(), stamps);

    // A crashed run's leftovers: removed, the rest untouched.
    write(&esp.join("dockroot/dockroot/6.12.1-000000000000.dockroot-tmp/linux"), b"half");
    write(&esp.join("loader/entries/dockroot.conf.dockroot-tmp"), b"title half");
    let (code, out, err) = run(&["--top", t, "--esp", e]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("removed /dockroot/dockroot/6.12.1-000000000000.dockroot-tmp"), "{out}");
    assert!(out.contains("removed /loader/entries/dockroot.conf.dockroot-tmp"), "{out}");
    assert_eq!(files(&esp), first);
    assert_eq!(first.iter().map(|f| mtime(&esp.join(f))).collect::<Vec<_>>(), stamps);

    // The image's kernel changes: --dry-run says so and writes nothing; then a new
    // directory and entry, and the old directory goes.
    write(&layer.join("boot/vmlinuz-6.12.1"), b"kernel 6.12.1, rebuilt");
    let (code, out, err) = run(&["--top", t, "--esp", e, "--dry-run", "--print", "grub"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("would write /dockroot/dockroot/6.12.1-") && out.contains("dry run: nothing written"),
        "{out}"
    );
    assert!(out.contains("menuentry 'localhost/os:1' {"), "{out}");
    assert_eq!(files(&esp), first);
    let (code, out, err) = run(&["--top", t, "--esp", e, "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let old_dir = Path::new(&linux).parent().unwrap().display().to_string();
    assert_eq!(v["removed"], serde_json::json!([old_dir]));
    let new_linux = v["kernel"].as_str().unwrap();
    assert_ne!(new_linux, linux);
    assert_eq!(std::fs::read(esp.join(new_linux.trim_start_matches('/'))).unwrap(), b"kernel 6.12.1, rebuilt");
    assert!(!esp.join(old_dir.trim_start_matches('/')).exists());
    assert!(std::fs::read_to_string(&conf).unwrap().contains(&format!("\nlinux {new_linux}\n")));
    assert_eq!(files(&esp).len(), 3, "{:?}", files(&esp));

    // No kernel with a dockroot initramfs: exit 3, nothing touched.
    for r in ["6.12.1", "6.1.0"] {
        std::fs::remove_file(layer.join(format!("boot/initrd.img-{r}"))).unwrap();
    }
    let before = files(&esp);
    let (code, out, err) = run(&["--top", t, "--esp", e]);
    assert_eq!(code, 3, "{out}{err}");
    assert!(err.contains("has no kernel with a dockroot initramfs") && err.contains("localhost/os:1"), "{err}");
    assert_eq!(files(&esp), before);

    // Usage errors: 2.
    assert_eq!(run(&["--entry", "a/b"]).0, 2);
    assert_eq!(run(&["--top", t]).0, if Path::new("/run/dockroot/boot.json").exists() { 1 } else { 2 });
    let (code, out, _) = run(&["--help"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("usage: dockroot boot-files"), "{out}");
    std::fs::remove_dir_all(&base).unwrap();
}

/// Docker's overlay2 store: the files are looked up through the image's layers
/// (a whiteout in the top layer hides a file of the base layer), and retagging
/// the image to another one replaces the files.
#[test]
fn boot_files_look_through_docker_overlay2_layers() {
    let base = std::env::temp_dir().join(format!("dockroot-cli-bootfiles-ov-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let (top, esp) = (base.join("top"), base.join("esp"));
    std::fs::create_dir_all(&esp).unwrap();
    let (i61, i612) = (initramfs("6.1.0"), initramfs("6.12.1"));
    let lower: Layer<'_> = &[
        ("boot/vmlinuz-6.1.0", Some(b"kernel 6.1.0")),
        ("boot/initrd.img-6.1.0", Some(&i61)),
        ("usr/lib/modules/6.12.1/vmlinuz", Some(b"kernel 6.12.1")),
        ("boot/initrd.img-6.12.1", Some(&i612)),
    ];
    let upper: Layer<'_> = &[("boot/initrd.img-6.12.1", None), ("etc/hostname", Some(b"os"))];
    let id = docker_overlay2_image(&top, "a", &[lower, upper]);
    let (t, e) = (top.to_str().unwrap(), esp.to_str().unwrap());
    let (code, out, err) = run(&["--top", t, "--esp", e, "--cmdline", CMD, "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((v["release"].as_str(), v["image_id"].as_str()), (Some("6.1.0"), Some(id.as_str())), "{v}");
    assert!(v["root"].as_str().unwrap().contains("Docker (overlay2) at /var/lib/docker"), "{v}");
    assert!(v["skipped"][0].as_str().unwrap().starts_with("6.12.1: no dockroot initramfs"), "{v}");
    let old = v["kernel"].as_str().unwrap().to_string();
    assert_eq!(std::fs::read(esp.join(old.trim_start_matches('/'))).unwrap(), b"kernel 6.1.0");

    // os:1 now names another image (a pull): its kernel replaces the old one.
    let id2 = docker_overlay2_image(&top, "b", &[lower]);
    let (code, out, err) = run(&["--top", t, "--esp", e, "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((v["release"].as_str(), v["image_id"].as_str()), (Some("6.12.1"), Some(id2.as_str())), "{v}");
    assert_eq!(v["removed"], serde_json::json!([Path::new(&old).parent().unwrap().display().to_string()]));
    assert_eq!(files(&esp).len(), 3, "{:?}", files(&esp));
    std::fs::remove_dir_all(&base).unwrap();
}
