//! Modules in any form (issue 3): an initramfs that carries `.ko.xz`, `.ko.zst` or
//! `.ko.gz` modules (the builder's `--keep-compressed`) boots. The kernel decompresses
//! the format its configuration names (finit_module with MODULE_INIT_COMPRESSED_FILE;
//! Debian 13: xz), an init built with `decompress-modules` (scripts/build's
//! `dockroot-test-variant`, `DOCKROOT_INIT_VARIANT`) decompresses the others, and the
//! shipped init, which cannot, names the module, the format and the remedy, then
//! reboots. Runs on whichever kernel `DOCKROOT_KERNEL_DIR` names (scripts/test runs
//! both); assertions are on what the booted system saw (testinit's report), what the
//! image holds (its cpio listing) and dockroot's own lines.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use qemu_tests::{
    assert_fatal_boot, boot, field, init_variant, sh, target_dir, Artifacts, BootOutput, BootSpec, Disk, OS_CONFIG,
};
use serde_json::Value;

/// Root and top layer on the fixture's btrfs, found by label; a failure reboots after 1 s.
const APPEND: &str = "root=LABEL=dockroot-test rootflags=subvol=rwlayer rw toplayer=LABEL=dockroot-test \
                      toplayer_path=toplayer dockroot.reboot_delay=1";
/// What the standard boots need: the virtio disk and btrfs.
const BOOT_MODULES: &[&str] = &["btrfs", "virtio_blk", "virtio_pci"];
/// dockroot's line naming who decompressed the compressed modules it loaded (src/modules/decompress.rs).
const DECOMPRESSED_LINE: &str = "dockroot: compressed kernel modules loaded: ";

/// A scratch directory for one test and kernel, emptied first.
fn scratch(test: &str, a: &Artifacts) -> PathBuf {
    let dir = target_dir().join("qemu-work").join("modules").join(format!("{test}-{}", a.kernel_release()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    dir
}

/// Runs the builder on `modules_dir` with `init`, the fixture's config, and `extra`
/// arguments, writing `out`. Its output, whether it succeeded or not.
fn mkinitramfs(a: &Artifacts, modules_dir: &Path, init: &Path, out: &Path, extra: &[&str]) -> Output {
    let config = out.with_extension("json");
    std::fs::write(&config, OS_CONFIG).expect("writing the config");
    let mut cmd = Command::new(&a.mkinitramfs);
    cmd.arg("--kernel-modules").arg(modules_dir).arg("--config").arg(&config).arg("--output").arg(out);
    cmd.arg("--init").arg(init).args(extra);
    let o = cmd.output().unwrap_or_else(|e| panic!("running {}: {e}", a.mkinitramfs.display()));
    eprintln!("{cmd:?}: {}\n{}", o.status, String::from_utf8_lossy(&o.stderr));
    o
}

fn built(a: &Artifacts, modules_dir: &Path, init: &Path, out: &Path, extra: &[&str]) -> String {
    let o = mkinitramfs(a, modules_dir, init, out, extra);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "the builder failed:\n{err}");
    err
}

fn refused(a: &Artifacts, modules_dir: &Path, init: &Path, out: &Path, extra: &[&str]) -> String {
    let o = mkinitramfs(a, modules_dir, init, out, extra);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "the builder should have refused:\n{err}");
    assert!(!out.exists(), "a refused build left {}", out.display());
    err
}

/// The file names in an initramfs the builder wrote (zstd, gzip or plain newc cpio).
fn image_files(image: &Path) -> Vec<String> {
    let head = std::fs::read(image).map(|d| d.get(..4).map(<[u8]>::to_vec).unwrap_or_default()).unwrap_or_default();
    let cat = match head.as_slice() {
        [0x28, 0xb5, 0x2f, 0xfd] => "zstd -dc",
        [0x1f, 0x8b, ..] => "gzip -dc",
        _ => "cat",
    };
    sh(&format!("{cat} '{}' | cpio -it --quiet", image.display())).lines().map(String::from).collect()
}

/// The modules of `files` (an image's listing) stored in each compressed format: suffix → names.
fn compressed_in(files: &[String]) -> BTreeMap<&'static str, BTreeSet<String>> {
    let mut out: BTreeMap<&'static str, BTreeSet<String>> = BTreeMap::new();
    for f in files.iter().filter(|f| f.starts_with("lib/modules/")) {
        for suffix in [".ko.xz", ".ko.zst", ".ko.gz"] {
            if let Some(stem) = f.strip_suffix(suffix) {
                let name = stem.rsplit('/').next().unwrap_or(stem).replace('-', "_");
                out.entry(suffix).or_default().insert(name);
            }
        }
    }
    out
}

/// The kernel configuration beside the modules (`boot/config-RELEASE`): `KEY=value`.
fn kernel_config(a: &Artifacts) -> BTreeMap<String, String> {
    let path = a.kernel_dir.join("boot").join(format!("config-{}", a.kernel_release()));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// The module format the kernel decompresses itself (`xz`, `zstd`, `gzip`), if any.
fn kernel_decompresses(a: &Artifacts) -> Option<&'static str> {
    let c = kernel_config(a);
    let y = |k: &str| c.get(k).is_some_and(|v| v == "y");
    if !y("CONFIG_MODULE_DECOMPRESS") {
        return None;
    }
    [
        ("CONFIG_MODULE_COMPRESS_XZ", "xz"),
        ("CONFIG_MODULE_COMPRESS_ZSTD", "zstd"),
        ("CONFIG_MODULE_COMPRESS_GZIP", "gzip"),
    ]
    .into_iter()
    .find(|(k, _)| y(k))
    .map(|(_, kind)| kind)
}

/// Module files under `dir` in each compressed format: suffix → count.
fn shipped_compressed(dir: &Path) -> BTreeMap<&'static str, usize> {
    let list = sh(&format!("find '{}' -name '*.ko.*' -type f", dir.display()));
    let mut out = BTreeMap::new();
    for f in list.lines() {
        for suffix in [".ko.xz", ".ko.zst", ".ko.gz"] {
            if f.ends_with(suffix) {
                *out.entry(suffix).or_insert(0) += 1;
            }
        }
    }
    out
}

/// Names in the kernel's modules.builtin.
fn builtin(a: &Artifacts) -> BTreeSet<String> {
    let text = std::fs::read_to_string(a.modules_dir().join("modules.builtin")).unwrap_or_default();
    text.lines().filter_map(|l| l.rsplit('/').next()?.strip_suffix(".ko")).map(|n| n.replace('-', "_")).collect()
}

/// Boots the fixture disk with `initrd`; testinit reports `/sys/module/NAME/initstate`
/// of `modules` (`live` only for a module loaded at run time, not a built-in one).
fn boot_fixture(name: &str, a: &Artifacts, initrd: PathBuf, append: &str, modules: &[&str]) -> BootOutput {
    let disk = Disk::copy_of(&a.disk);
    let stats: String = modules.iter().map(|m| format!(" --stat /sys/module/{m}/initstate")).collect();
    let append = if stats.is_empty() { append.to_string() } else { format!("{append} --{stats}") };
    let mut spec = BootSpec::new(a.kernel(), initrd, &[disk.path()], &append);
    spec.name = Some(format!("modules_{name}"));
    spec.timeout = Duration::from_secs(240);
    let out = boot(&spec);
    if let Some(t) = out.time_to_init() {
        eprintln!("{name}: time to init {t:.3} s");
    }
    out
}

/// The booted system is the fixture's image, and it has `modules` loaded as modules.
fn assert_booted_with(out: &BootOutput, modules: &[&str]) -> Value {
    let r = out.expect_testinit();
    assert_eq!(r["pid"], 1, "{r}");
    assert_eq!(r["errors"], serde_json::json!([]), "{r}");
    assert_eq!(r["root_mount"]["fstype"], "btrfs", "{}", r["root_mount"]);
    assert_eq!(field(&r, &["paths", "/layer3.txt", "content"]), "layer3\n", "{r}");
    for m in modules {
        let state = field(&r, &["paths", &format!("/sys/module/{m}/initstate"), "content"]);
        assert_eq!(state, "live\n", "module {m} is not loaded in the booted system:\n{}", out.tail(40));
    }
    r
}

/// dockroot's line saying who decompressed which compressed modules.
fn decompressed_line(out: &BootOutput) -> String {
    out.serial
        .lines()
        .find_map(|l| l.split_once(DECOMPRESSED_LINE).map(|(_, rest)| rest.to_string()))
        .unwrap_or_else(|| panic!("no '{DECOMPRESSED_LINE}' line:\n{}", out.tail(60)))
}

// ---------------------------------------------------------------------------
// The kernel decompresses: the generic image kept as the distribution ships it.
// ---------------------------------------------------------------------------

#[test]
fn the_kernel_decompresses_the_modules_kept_compressed() {
    let a = Artifacts::from_env();
    let release = a.kernel_release();
    let dir = scratch("kernel", &a);
    let shipped = shipped_compressed(&a.modules_dir());
    let kernel = kernel_decompresses(&a);
    eprintln!("kernel {release}: compressed modules shipped {shipped:?}; the kernel decompresses {kernel:?}");
    if release.contains("+deb13") {
        // The point of this test: make sure it does not pass vacuously on the kernel it is for.
        assert!(shipped.contains_key(".ko.xz") && kernel == Some("xz"), "Debian 13 ships .ko.xz and decompresses xz");
    }
    let image = dir.join("generic.img");
    if shipped.is_empty() {
        // Plain .ko modules: --keep-compressed has nothing to keep and refuses nothing.
        let summary = built(&a, &a.modules_dir(), &a.init, &image, &["--keep-compressed"]);
        let files = image_files(&image);
        assert!(compressed_in(&files).is_empty(), "compressed modules in the image of a plain kernel");
        assert!(files.iter().any(|f| f.ends_with("/btrfs.ko")), "no btrfs.ko in the image");
        assert!(!summary.contains("kept "), "{summary}");
        eprintln!(
            "NOTHING COMPRESSED TO TEST: kernel {release} ships plain .ko modules; checked that \
             --keep-compressed refuses nothing and the image holds plain .ko files (no boot needed)"
        );
        return;
    }
    let Some(kind) = kernel else {
        // Compressed modules the kernel cannot decompress: the shipped init cannot either.
        let e = refused(&a, &a.modules_dir(), &a.init, &image, &["--keep-compressed"]);
        assert!(e.contains("drop --keep-compressed") && e.contains("--features decompress-modules"), "{e}");
        eprintln!("kernel {release} decompresses no module format: --keep-compressed with the shipped init is refused");
        return;
    };
    let suffix = match kind {
        "xz" => ".ko.xz",
        "zstd" => ".ko.zst",
        _ => ".ko.gz",
    };
    assert_eq!(shipped.keys().copied().collect::<Vec<_>>(), [suffix], "mixed formats shipped: {shipped:?}");

    // The default (generic) image with the shipped init, modules kept as shipped.
    let summary = built(&a, &a.modules_dir(), &a.init, &image, &["--keep-compressed"]);
    assert!(summary.contains("the kernel decompresses") && !summary.contains("the init decompresses"));
    let files = image_files(&image);
    let kept = compressed_in(&files);
    let names = kept.get(suffix).cloned().unwrap_or_default();
    let builtin = builtin(&a);
    let wanted: Vec<&str> = BOOT_MODULES.iter().copied().filter(|m| !builtin.contains(*m)).collect();
    for m in &wanted {
        assert!(names.contains(*m), "{m}{suffix} not in the image: {names:?}");
    }
    assert!(!files.iter().any(|f| f.starts_with("lib/modules/") && f.ends_with(".ko")), "plain modules stored");
    eprintln!("the image holds {} {suffix} modules", names.len());

    let out = boot_fixture("kernel_decompresses", &a, image, APPEND, &wanted);
    assert_booted_with(&out, &wanted);
    let line = decompressed_line(&out);
    let by_kernel = "decompressed by the kernel (MODULE_INIT_COMPRESSED_FILE): ";
    let n: usize = line
        .split_once(by_kernel)
        .and_then(|(_, rest)| rest.strip_suffix(&format!(" {kind}")))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a kernel-only {kind} line: {line}"));
    assert!(n >= wanted.len(), "{n} modules decompressed by the kernel: {line}");
    assert!(!line.contains("by this init"), "{line}");
    eprintln!("kernel-side decompression: {line}");
}

// ---------------------------------------------------------------------------
// A modules tree recompressed with the host's tools.
// ---------------------------------------------------------------------------

/// The module files a listed image of [`BOOT_MODULES`] needs, found by the builder
/// itself: relative paths in the real modules directory (as shipped).
fn boot_module_files(a: &Artifacts, dir: &Path) -> Vec<String> {
    let image = dir.join("plain.img");
    let mut args = vec!["--compression", "none"];
    for m in BOOT_MODULES {
        args.extend(["--module", m]);
    }
    built(a, &a.modules_dir(), &a.init, &image, &args);
    let prefix = format!("lib/modules/{}/", a.kernel_release());
    let mut out = Vec::new();
    for f in image_files(&image) {
        let Some(rel) = f.strip_prefix(&prefix).filter(|r| r.ends_with(".ko")) else { continue };
        let shipped = ["", ".xz", ".zst", ".gz"]
            .iter()
            .map(|s| format!("{rel}{s}"))
            .find(|p| a.modules_dir().join(p).is_file())
            .unwrap_or_else(|| panic!("{rel} of the image is not in {}", a.modules_dir().display()));
        out.push(shipped);
    }
    assert!(out.len() >= 3, "too few modules for a boot: {out:?}");
    out
}

fn plain_path(rel: &str) -> &str {
    [".xz", ".zst", ".gz"].iter().find_map(|s| rel.strip_suffix(s)).unwrap_or(rel)
}

fn module_name(rel: &str) -> String {
    let file = plain_path(rel).rsplit('/').next().unwrap_or(rel);
    file.strip_suffix(".ko").unwrap_or(file).replace('-', "_")
}

/// Makes `BASE/lib/modules/RELEASE` under `dir` with the modules the boot needs, each
/// compressed as `format_of(name)` says (`zstd`, `gzip` or `xz`, by the host's tools),
/// with modules.dep translated from the real one, the real modules.softdep,
/// modules.builtin(.modinfo), and `BASE/boot/config-RELEASE`. Returns the modules
/// directory and each module's format.
fn recompressed_tree(
    a: &Artifacts,
    dir: &Path,
    format_of: impl Fn(&str) -> &'static str,
) -> (PathBuf, BTreeMap<String, &'static str>) {
    let release = a.kernel_release();
    let real = a.modules_dir();
    let files = boot_module_files(a, dir);
    let base = dir.join("tree");
    let modules = base.join("lib/modules").join(&release);
    std::fs::create_dir_all(base.join("boot")).expect("mkdir boot");
    let config = format!("boot/config-{release}");
    std::fs::copy(a.kernel_dir.join(&config), base.join(&config)).expect("copying the kernel config");
    let mut renamed: BTreeMap<String, String> = BTreeMap::new();
    let mut formats = BTreeMap::new();
    for rel in &files {
        let name = module_name(rel);
        let format = format_of(&name);
        let (suffix, tool) = match format {
            "zstd" => (".zst", "zstd -q -19 -c"),
            "gzip" => (".gz", "gzip -9 -n -c"),
            _ => (".xz", "xz --check=crc32 --lzma2=dict=1MiB -c"),
        };
        let decompress = match rel.rsplit('.').next() {
            Some("xz") => "xz -dc",
            Some("zst") => "zstd -dc",
            Some("gz") => "gzip -dc",
            _ => "cat",
        };
        let new_rel = format!("{}{suffix}", plain_path(rel));
        let target = modules.join(&new_rel);
        std::fs::create_dir_all(target.parent().expect("a parent")).expect("mkdir");
        sh(&format!("{decompress} '{}' | {tool} > '{}'", real.join(rel).display(), target.display()));
        renamed.insert(plain_path(rel).to_string(), new_rel);
        formats.insert(name, format);
    }
    // modules.dep, with the new file names, for the modules of the tree.
    let dep = std::fs::read_to_string(real.join("modules.dep")).expect("reading modules.dep");
    let mut lines = String::new();
    for line in dep.lines() {
        let Some((module, deps)) = line.split_once(':') else { continue };
        let Some(new) = renamed.get(plain_path(module)) else { continue };
        let deps: Option<Vec<&String>> = deps.split_whitespace().map(|d| renamed.get(plain_path(d))).collect();
        let deps = deps.unwrap_or_else(|| panic!("a dependency of {module} is missing from the tree: {line}"));
        lines.push_str(&format!("{new}:{}\n", deps.iter().map(|d| format!(" {d}")).collect::<String>()));
    }
    assert_eq!(lines.lines().count(), files.len(), "modules.dep lines:\n{lines}");
    std::fs::write(modules.join("modules.dep"), lines).expect("writing modules.dep");
    for f in ["modules.softdep", "modules.builtin", "modules.builtin.modinfo", "modules.order"] {
        if real.join(f).is_file() {
            std::fs::copy(real.join(f), modules.join(f)).unwrap_or_else(|e| panic!("copying {f}: {e}"));
        }
    }
    (modules, formats)
}

fn count(formats: &BTreeMap<String, &'static str>, kind: &str) -> usize {
    formats.values().filter(|f| **f == kind).count()
}

// ---------------------------------------------------------------------------
// The init decompresses what the kernel cannot.
// ---------------------------------------------------------------------------

#[test]
fn the_init_decompresses_what_the_kernel_cannot() {
    let a = Artifacts::from_env();
    let variant = init_variant();
    let dir = scratch("init", &a);
    let kernel = kernel_decompresses(&a);
    // btrfs (the largest) as zstd and virtio_blk as gzip, which no Debian kernel
    // decompresses; the rest in turn zstd, gzip, xz.
    let (modules, formats) = recompressed_tree(&a, &dir, {
        let cycle = std::cell::Cell::new(0usize);
        move |name| match name {
            "btrfs" => "zstd",
            "virtio_blk" => "gzip",
            // A hard dependency of btrfs: loaded at every boot (btrfs's checksum
            // softdeps load only as the superblock asks).
            "raid6_pq" => "xz",
            _ => {
                let i = cycle.get();
                cycle.set(i + 1);
                ["zstd", "gzip", "xz"][i % 3]
            }
        }
    });
    eprintln!("recompressed: {formats:?}; the kernel decompresses {kernel:?}");
    for kind in ["zstd", "gzip", "xz"] {
        assert!(count(&formats, kind) > 0, "no {kind} module in {formats:?}");
    }
    let mut args = vec!["--keep-compressed"];
    for m in BOOT_MODULES {
        args.extend(["--module", m]);
    }

    // The shipped init cannot load them: refused, with both remedies.
    let e = refused(&a, &modules, &a.init, &dir.join("refused.img"), &args);
    assert!(e.contains("cannot load .ko.") && e.contains("built without the decompress-modules feature"), "{e}");
    assert!(e.contains("drop --keep-compressed") && e.contains("--features decompress-modules"), "{e}");

    // The variant decompresses them.
    let image = dir.join("variant.img");
    let summary = built(&a, &modules, &variant, &image, &args);
    assert!(summary.contains("decompresses modules itself: built with decompress-modules"), "{summary}");
    let kept = compressed_in(&image_files(&image));
    for (suffix, kind) in [(".ko.zst", "zstd"), (".ko.gz", "gzip"), (".ko.xz", "xz")] {
        assert_eq!(kept.get(suffix).map_or(0, BTreeSet::len), count(&formats, kind), "{suffix}: {kept:?}");
    }
    assert!(kept[".ko.zst"].contains("btrfs") && kept[".ko.gz"].contains("virtio_blk"), "{kept:?}");
    let builtin = builtin(&a);
    let wanted: Vec<&str> = BOOT_MODULES.iter().copied().filter(|m| !builtin.contains(*m)).collect();

    let out = boot_fixture("init_decompresses", &a, image, &format!("{APPEND} dockroot.timeout=60"), &wanted);
    assert_booted_with(&out, &wanted);
    let line = decompressed_line(&out);
    eprintln!("in-init decompression: {line}");
    let by_init = line.split_once("decompressed by this init: ").map(|(_, r)| r).unwrap_or_default();
    // Every module the index loaded; the crypto helpers a CPU lacks (crc32c_intel...)
    // fail with ENODEV and are not counted, so at least the boot modules' share.
    for kind in ["zstd", "gzip"] {
        let n: usize = by_init
            .split(", ")
            .find_map(|p| p.strip_suffix(&format!(" {kind}")))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {kind} count decompressed by the init: {line}"));
        assert!(n >= 1 && n <= count(&formats, kind), "{n} {kind}: {line}");
    }
    let xz_by = if kernel == Some("xz") { "by the kernel (MODULE_INIT_COMPRESSED_FILE): " } else { "by this init: " };
    let xz_part = line.split_once(xz_by).map(|(_, r)| r).unwrap_or_default();
    assert!(xz_part.split([',', ';']).any(|p| p.trim().ends_with(" xz")), "xz not decompressed {xz_by}: {line}");
    assert!(!out.contains("cannot load module"), "a module failed:\n{}", out.tail(60));
}

// ---------------------------------------------------------------------------
// The shipped init with modules it cannot load.
// ---------------------------------------------------------------------------

/// The shipped init, given an initramfs whose modules are all .ko.zst (which neither
/// kernel decompresses), names each module, the format and the remedy, and reboots.
/// The builder refuses to make that image, so it is crafted: the variant's image,
/// uncompressed, followed by a second cpio holding the shipped init as `/init` (the
/// kernel unpacks both in turn, the later `/init` replacing the first).
#[test]
fn the_shipped_init_names_the_module_the_format_and_the_remedy() {
    let a = Artifacts::from_env();
    let variant = init_variant();
    let dir = scratch("shipped", &a);
    let (modules, formats) = recompressed_tree(&a, &dir, |_| "zstd");
    let mut args = vec!["--keep-compressed", "--compression", "none"];
    for m in BOOT_MODULES {
        args.extend(["--module", m]);
    }
    let e = refused(&a, &modules, &a.init, &dir.join("refused.img"), &args);
    assert!(e.contains("cannot load .ko.zst modules itself"), "{e}");

    let first = dir.join("variant.cpio");
    built(&a, &modules, &variant, &first, &args);
    let over = dir.join("override");
    std::fs::create_dir_all(&over).expect("mkdir");
    std::fs::copy(&a.init, over.join("init")).expect("copying the init");
    let image = dir.join("crafted.img");
    sh(&format!(
        "cd '{}' && echo init | cpio -o -H newc --quiet > ../override.cpio && cat '{}' ../override.cpio > '{}'",
        over.display(),
        first.display(),
        image.display()
    ));
    assert_eq!(image_files(&dir.join("override.cpio")), ["init"]);
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    assert_eq!(size(&image), size(&first) + size(&dir.join("override.cpio")), "the two archives, one after the other");

    let out = boot_fixture("shipped_init", &a, image, &format!("{APPEND} dockroot.timeout=4"), &[]);
    let msg = assert_fatal_boot(&out);
    let failed: Vec<&str> =
        msg.lines().filter_map(|l| l.split_once("dockroot: module failed: ").map(|(_, r)| r)).collect();
    assert!(!failed.is_empty(), "no module failure in the diagnostic:\n{msg}");
    let release = a.kernel_release();
    for f in &failed {
        let name = f.split(' ').next().unwrap_or_default();
        assert_eq!(formats.get(name), Some(&"zstd"), "{f}");
        assert!(f.contains(&format!("/lib/modules/{release}/")) && f.contains(".ko.zst): zstd-compressed, "), "{f}");
        assert!(f.contains("built without the decompress-modules feature"), "{f}");
        assert!(f.contains("without --keep-compressed") && f.contains("--features decompress-modules"), "{f}");
    }
    assert!(msg.contains("dockroot: modules loaded: none"), "a module loaded after all:\n{msg}");
    eprintln!("the shipped init's diagnostic names {} modules, e.g.: {}", failed.len(), failed[0]);
}
