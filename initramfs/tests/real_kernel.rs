//! The builder on a real distribution kernel's modules directory, checked
//! against kmod's own `modprobe --show-depends`.
//!
//! Needs DOCKROOT_TEST_KERNEL_MODULES=/path/to/lib/modules/RELEASE (with
//! modules.dep: `scripts/fetch-kernel` runs depmod). Unset, these tests fail
//! and say how to set it.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn modules_dir() -> PathBuf {
    let Some(dir) = std::env::var_os("DOCKROOT_TEST_KERNEL_MODULES") else {
        panic!(
            "DOCKROOT_TEST_KERNEL_MODULES is not set: point it at a real kernel modules directory with modules.dep, e.g.\n  \
             DOCKROOT_TEST_KERNEL_MODULES=\"$(echo \"$(scripts/fetch-kernel | tail -n1)\"/lib/modules/*)\" cargo test -p dockroot-mkinitramfs"
        )
    };
    let dir = PathBuf::from(dir);
    assert!(
        dir.join("modules.dep").is_file(),
        "DOCKROOT_TEST_KERNEL_MODULES={} has no modules.dep (run depmod -b BASE RELEASE)",
        dir.display()
    );
    dir
}

fn release(dir: &Path) -> String {
    dir.file_name().unwrap().to_str().unwrap().to_owned()
}

/// Build an image from `dir` with these modules; returns (entries, summary).
fn build(dir: &Path, work: &Path, out: &str, modules: &[&str]) -> (Vec<dockroot_mkinitramfs::cpio::Entry>, String) {
    let cfg = config(work);
    let out = work.join(out);
    let init = static_init();
    let mut args = vec![
        "--kernel-modules",
        dir.to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--init",
        init.to_str().unwrap(),
    ];
    for m in modules {
        args.extend(["--module", m]);
    }
    let o = run(&args, &[]);
    assert!(o.status.success(), "builder failed on {}: {}", dir.display(), stderr(&o));
    (entries(&out), stderr(&o))
}

/// What `modprobe --show-depends NAME` would insmod, as module names, in its order.
fn modprobe_plan(dir: &Path, name: &str) -> Vec<String> {
    let base = dir.parent().and_then(Path::parent).and_then(Path::parent).unwrap();
    assert!(dir.parent().unwrap().ends_with("lib/modules"), "{} is not BASE/lib/modules/RELEASE", dir.display());
    let out = Command::new("modprobe")
        .arg("-d")
        .arg(base)
        .args(["-S", &release(dir), "--show-depends", name])
        .output()
        .expect("modprobe (kmod) is installed");
    assert!(out.status.success(), "modprobe --show-depends {name}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("insmod "))
        .map(|p| dockroot_mkinitramfs::kmod::module_name_of(p.split_whitespace().next().unwrap()).unwrap())
        .collect()
}

#[test]
fn filesystem_and_disk_modules_match_modprobe() {
    let dir = modules_dir();
    let work = temp_dir("real-modprobe");
    let targets = ["btrfs", "ext4", "xfs", "vfat", "nvme", "virtio_blk", "sd_mod", "usb_storage"];
    let (entries, summary) = build(&dir, &work, "a.img", &targets);
    let index = index(&entries);
    assert_eq!(index.kernel, release(&dir));
    let ours = names(&index);
    for target in targets {
        let theirs = modprobe_plan(&dir, target);
        if theirs.is_empty() {
            assert!(
                summary.contains(target),
                "{target}: built in for modprobe, but the summary does not say so:\n{summary}"
            );
            continue;
        }
        for m in &theirs {
            assert!(ours.contains(m), "modprobe loads {m} for {target}, we do not include it: {ours:?}");
        }
        // modprobe loads the target last; everything before it must come before it here too.
        let t = position(&index, theirs.last().unwrap());
        for m in &theirs[..theirs.len() - 1] {
            assert!(position(&index, m) < t, "{m} must load before {target}: {ours:?}");
        }
    }
    // btrfs needs crc32c before it (or mounting fails): some provider must come first.
    let btrfs = position(&index, "btrfs");
    assert!(
        index.modules[..btrfs].iter().any(|m| m.name.starts_with("crc32c")) || summary.contains("crc32c"),
        "{ours:?}"
    );
    std::fs::remove_dir_all(&work).unwrap();
}

#[test]
fn default_set_is_complete_plain_and_deterministic() {
    let dir = modules_dir();
    let rel = release(&dir);
    let work = temp_dir("real-default");
    let (entries, summary) = build(&dir, &work, "a.img", &[]);
    let index = index(&entries);
    assert!(position(&index, "btrfs") > 0, "{summary}");
    let dep = std::fs::read_to_string(dir.join("modules.dep")).unwrap();
    let dep = dockroot_mkinitramfs::kmod::parse_modules_dep(&dep, &dir).unwrap();
    for m in &index.modules {
        let entry = find(&entries, &m.path);
        let info = dockroot_mkinitramfs::elf::modinfo(&entry.data).unwrap();
        assert_eq!(info.release(), Some(rel.as_str()), "{}", m.name);
        // The image holds the module exactly as the kernel package has it, decompressed.
        let source = dir.join(&dep.paths[&m.name]);
        let raw = std::fs::read(&source).unwrap();
        let plain = match source.extension().and_then(|e| e.to_str()) {
            Some("xz") => pipe("xz", &["-d", "-c"], &raw),
            Some("zst") => pipe("zstd", &["-d", "-c"], &raw),
            Some("gz") => pipe("gzip", &["-d", "-c"], &raw),
            _ => raw,
        };
        assert!(plain == entry.data, "{} differs from {}", m.path, source.display());
        // Every hard dependency of modules.dep is in the image, before the module.
        let me = position(&index, &m.name);
        for d in &dep.deps[&m.name] {
            assert!(position(&index, d) < me, "{d} must come before {}", m.name);
        }
    }
    // Same inputs, same bytes.
    build(&dir, &work, "b.img", &[]);
    assert!(
        std::fs::read(work.join("a.img")).unwrap() == std::fs::read(work.join("b.img")).unwrap(),
        "two builds differ"
    );
    std::fs::remove_dir_all(&work).unwrap();
}

#[test]
fn without_index_files_the_same_modules_are_found() {
    // The kernel's own files behind a symlink, without modules.dep and modules.alias:
    // dependencies and aliases come from each module's .modinfo.
    let dir = modules_dir();
    let rel = release(&dir);
    let work = temp_dir("real-fallback");
    let bare = work.join("lib/modules").join(&rel);
    std::fs::create_dir_all(&bare).unwrap();
    std::os::unix::fs::symlink(dir.join("kernel"), bare.join("kernel")).unwrap();
    for f in ["modules.builtin", "modules.builtin.modinfo"] {
        if dir.join(f).exists() {
            std::fs::copy(dir.join(f), bare.join(f)).unwrap();
        }
    }
    let targets = ["btrfs", "ext4", "virtio_blk", "nvme"];
    let (with, _) = build(&dir, &work, "with.img", &targets);
    let (without, summary) = build(&bare, &work, "without.img", &targets);
    assert!(summary.contains("modules.dep is missing") && summary.contains("modules.alias is missing"), "{summary}");
    let (with, without) = (index(&with), index(&without));
    let set = |i: &dockroot::modules::ModuleIndex| i.modules.iter().map(|m| m.name.clone()).collect::<BTreeSet<_>>();
    assert_eq!(set(&with), set(&without));
    // modules.dep lists all dependencies transitively, depends= only direct ones:
    // the order found without it must still respect every modules.dep dependency.
    for m in &with.modules {
        for d in &m.deps {
            assert!(position(&without, d) < position(&without, &m.name), "{d} before {}", m.name);
        }
    }
    std::fs::remove_dir_all(&work).unwrap();
}

/// Modalias strings of QEMU's devices (virtio, NVMe, AHCI, xHCI, USB storage,
/// SCSI disks), and of this machine's own devices.
fn sample_modaliases() -> Vec<String> {
    let mut out: Vec<String> = [
        "pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00",
        "pci:v00001AF4d00001004sv00001AF4sd00000008bc01sc00i00",
        "virtio:d00000002v00001AF4",
        "virtio:d00000008v00001AF4",
        "pci:v00001B36d00000010sv00001AF4sd00001100bc01sc08i02",
        "pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01",
        "pci:v00008086d00007010sv00001AF4sd00001100bc01sc01i80",
        "pci:v00001B36d0000000Dsv00001AF4sd00001100bc0Csc03i30",
        "usb:v46F4p0001d0000dc00dsc00dp00ic08isc06ip50in00",
        "usb:v1D6Bp0003d0601dc09dsc00dp03ic09isc00ip00in00",
        "scsi:t-0x00",
        "scsi:t-0x05",
        "acpi:PNP0A08:PNP0A03:",
        "platform:pcspkr",
        "cpu:type:x86,ven0002fam001Amod0002:feature:,0000,0001,0094",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let host = dockroot::modules::collect_modaliases(Path::new("/sys")).unwrap();
    out.extend(host.into_keys());
    out
}

/// What `modprobe -R MODALIAS` resolves it to, modules only (not built-ins).
fn modprobe_resolve(dir: &Path, modalias: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let base = dir.parent().and_then(Path::parent).and_then(Path::parent).unwrap();
    let out = Command::new("modprobe")
        .arg("-d")
        .arg(base)
        .args(["-S", &release(dir), "-R", modalias])
        .output()
        .expect("modprobe (kmod) is installed");
    String::from_utf8(out.stdout).unwrap().lines().map(str::to_owned).filter(|m| modules.contains(m)).collect()
}

#[test]
fn alias_matching_agrees_with_modprobe() {
    let dir = modules_dir();
    let mut tree = dockroot_mkinitramfs::kmod::KernelTree::open(&dir, &release(&dir)).unwrap();
    let table = tree.alias_table().unwrap();
    assert!(table.len() > 10_000, "a distribution kernel has many device aliases: {}", table.len());
    let dep = std::fs::read_to_string(dir.join("modules.dep")).unwrap();
    let modules: BTreeSet<String> =
        dockroot_mkinitramfs::kmod::parse_modules_dep(&dep, &dir).unwrap().paths.into_keys().collect();
    for modalias in sample_modaliases() {
        let ours: BTreeSet<String> = table.lookup(&modalias).into_iter().collect();
        assert_eq!(ours, modprobe_resolve(&dir, &modalias, &modules), "{modalias}");
    }
    // The ones the boot tests rely on.
    let has = |m: &str, name: &str| table.lookup(m).contains(&name.to_string());
    assert!(has("virtio:d00000002v00001AF4", "virtio_blk"));
    assert!(has("pci:v00001B36d00000010sv00001AF4sd00001100bc01sc08i02", "nvme"));
    assert!(has("pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01", "ahci"));
    assert!(has("usb:v46F4p0001d0000dc00dsc00dp00ic08isc06ip50in00", "usb_storage"));
    assert!(has("scsi:t-0x00", "sd_mod"));
}

#[test]
fn generic_image_finds_drivers_for_qemu_devices() {
    let dir = modules_dir();
    let work = temp_dir("real-generic");
    let (entries, summary) = build(&dir, &work, "a.img", &[]);
    let index = index(&entries);
    let load = |n: &str| index.modules[position(&index, n)].load;
    let table = dockroot::modules::AliasTable::of_index(&index);
    // No module at every boot: the filesystems load before their mount, by
    // their `fs-TYPE` alias (ext4 mounts ext2 and ext3; vfat brings its code pages).
    assert!(index.modules.iter().all(|m| m.load == dockroot::modules::Load::Modalias), "{summary}");
    let vfat = ["nls_ascii", "nls_cp437", "nls_iso8859_1", "nls_utf8", "vfat"];
    for (fstype, modules) in [
        ("btrfs", &["btrfs"][..]),
        ("ext2", &["ext4"]),
        ("ext3", &["ext4"]),
        ("ext4", &["ext4"]),
        ("xfs", &["xfs"]),
        ("vfat", &vfat),
    ] {
        assert_eq!(table.lookup(&format!("fs-{fstype}")), modules, "{fstype}: {summary}");
    }
    for (modalias, driver) in [
        ("virtio:d00000002v00001AF4", "virtio_blk"),
        ("virtio:d00000008v00001AF4", "virtio_scsi"),
        ("pci:v00001B36d00000010sv00001AF4sd00001100bc01sc08i02", "nvme"),
        ("pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01", "ahci"),
        ("pci:v00001B36d0000000Dsv00001AF4sd00001100bc0Csc03i30", "xhci_pci"),
        ("usb:v46F4p0001d0000dc00dsc00dp00ic08isc06ip50in00", "usb_storage"),
        ("scsi:t-0x00", "sd_mod"),
    ] {
        assert!(table.lookup(modalias).contains(&driver.to_string()), "{modalias} should load {driver}");
        assert_eq!(load(driver), dockroot::modules::Load::Modalias, "{driver}");
    }
    std::fs::remove_dir_all(&work).unwrap();
}

#[test]
fn hostonly_on_this_machine() {
    let dir = modules_dir();
    let work = temp_dir("real-hostonly");
    let cfg = config(&work);
    let out = work.join("h.img");
    let init = static_init();
    let o = run(
        &[
            "--kernel-modules",
            dir.to_str().unwrap(),
            "--config",
            cfg.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--init",
            init.to_str().unwrap(),
            "--hostonly",
        ],
        &[],
    );
    let summary = stderr(&o);
    assert!(o.status.success(), "{summary}");
    let index = index(&entries(&out));
    let n = names(&index);
    assert!(n.contains(&"btrfs".to_string()), "{summary}");
    // btrfs at every boot, but not its checksum drivers: the superblock says which one it needs.
    let load = |n: &str| index.modules[position(&index, n)].load;
    assert_eq!(load("btrfs"), dockroot::modules::Load::Always, "{summary}");
    assert_eq!(load("xxhash_generic"), dockroot::modules::Load::Modalias, "{summary}");
    assert_eq!(load("libcrc32c"), dockroot::modules::Load::Always, "{summary}");
    assert!(index.aliases.iter().any(|a| a.pattern == "fs-btrfs" && a.module == "btrfs"), "{summary}");
    // Whatever this machine's devices are, each modalias-loaded driver is one modprobe would load for it.
    let host = dockroot::modules::collect_modaliases(Path::new("/sys")).unwrap();
    let table = dockroot::modules::AliasTable::of_index(&index);
    let wanted: BTreeSet<String> = host.keys().flat_map(|m| table.lookup(m)).collect();
    for m in &index.modules {
        if m.load == dockroot::modules::Load::Modalias && wanted.contains(&m.name) {
            assert!(summary.contains(&m.name), "{}: {summary}", m.name);
        }
    }
    eprintln!("{summary}");
    std::fs::remove_dir_all(&work).unwrap();
}

/// `--list --json` of a generic image of a real kernel agrees with its index and cpio.
#[test]
fn list_of_a_generic_image() {
    let dir = modules_dir();
    let work = temp_dir("real-list");
    let (entries, _) = build(&dir, &work, "a.img", &[]);
    let index = index(&entries);
    let file = work.join("a.img").display().to_string();
    let o = run(&["--list", &file, "--json"], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["kernel"], release(&dir).as_str());
    let modules = j["modules"].as_array().unwrap();
    let listed: Vec<&str> = modules.iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(listed, names(&index), "load order");
    let load = |n: &str| modules.iter().find(|m| m["name"] == n).map(|m| m["load"].as_str().unwrap().to_owned());
    assert_eq!(load("btrfs").as_deref(), Some("modalias"), "before its mount");
    assert_eq!(load("virtio_blk").as_deref(), Some("modalias"));
    let always = index.modules.iter().filter(|m| m.load == dockroot::modules::Load::Always).count() as u64;
    assert_eq!(j["modules_always"].as_u64(), Some(always));
    assert_eq!(j["modules_by_modalias"].as_u64(), Some(index.modules.len() as u64 - always));
    let device_aliases = index.aliases.iter().filter(|a| !a.pattern.starts_with("fs-")).count();
    assert_eq!(j["aliases"].as_u64(), Some(device_aliases as u64));
    let module_bytes: usize = index.modules.iter().map(|m| find(&entries, &m.path).data.len()).sum();
    assert_eq!(j["sizes"]["modules"].as_u64(), Some(module_bytes as u64));
    let text = String::from_utf8(run(&["--list", &file], &[]).stdout).unwrap();
    assert!(text.contains(&format!("  modules: {} ({always} always, ", index.modules.len())), "{text}");
    std::fs::remove_dir_all(&work).unwrap();
}
