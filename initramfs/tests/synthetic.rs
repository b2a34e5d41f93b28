//! The builder end to end on synthetic module trees (no kernel package needed):
//! fake modules.dep/softdep/alias/builtin files and tiny ELF modules with a
//! `.modinfo` section, compressed with the real xz/zstd/gzip.

mod common;

use std::path::{Path, PathBuf};

use common::*;

/// A tree covering deps, softdeps (file and .modinfo), aliases, built-ins and
/// the three compressions. Returns the tree and the plain bytes of btrfs.
fn standard_tree(root: &Path) -> (Tree, Vec<u8>) {
    let t = Tree::new(root, RELEASE);
    let btrfs = t.module(
        "kernel/fs/btrfs/btrfs.ko.xz",
        "btrfs",
        RELEASE,
        &["depends=xor,libcrc32c", "softdep=pre: crc32c sha256 nosuchalias", "alias=fs-btrfs"],
    );
    t.module("kernel/crypto/xor.ko.zst", "xor", RELEASE, &["depends="]);
    t.module("kernel/lib/libcrc32c.ko.gz", "libcrc32c", RELEASE, &["softdep=pre: crc32c", "depends="]);
    t.module("kernel/crypto/crc32c_generic.ko", "crc32c_generic", RELEASE, &["alias=crc32c", "alias=crypto-crc32c"]);
    t.module("kernel/arch/x86/crypto/crc32c-intel.ko", "crc32c_intel", RELEASE, &["alias=crc32c"]);
    t.module("kernel/fs/ext4/ext4.ko", "ext4", RELEASE, &["depends=jbd2"]);
    t.module("kernel/fs/jbd2/jbd2.ko", "jbd2", RELEASE, &["depends="]);
    t.module("kernel/fs/ext4/ext4-post.ko", "ext4_post", RELEASE, &["depends="]);
    t.module(
        "kernel/drivers/block/virtio_blk.ko",
        "virtio_blk",
        RELEASE,
        &["alias=pci:v00001AF4d00001001sv*sd*bc*sc*i*"],
    );
    t.file(
        "modules.dep",
        "kernel/fs/btrfs/btrfs.ko.xz: kernel/crypto/xor.ko.zst kernel/lib/libcrc32c.ko.gz\n\
         kernel/crypto/xor.ko.zst:\n\
         kernel/lib/libcrc32c.ko.gz:\n\
         kernel/crypto/crc32c_generic.ko:\n\
         kernel/arch/x86/crypto/crc32c-intel.ko:\n\
         kernel/fs/ext4/ext4.ko: kernel/fs/jbd2/jbd2.ko\n\
         kernel/fs/jbd2/jbd2.ko:\n\
         kernel/fs/ext4/ext4-post.ko:\n\
         kernel/drivers/block/virtio_blk.ko:\n",
    );
    t.file(
        "modules.softdep",
        "# Soft dependencies extracted from modules themselves.\n\
         softdep ext4 pre: crypto-crc32c post: ext4-post\n\
         softdep cifs gcm\n",
    );
    t.file(
        "modules.alias",
        "# Aliases extracted from modules themselves.\n\
         alias crc32c crc32c_generic\nalias crc32c crc32c_intel\nalias crypto-crc32c crc32c_generic\n\
         alias fs-btrfs btrfs\nalias pci:v00001AF4d00001001sv*sd*bc*sc*i* virtio_blk\n",
    );
    t.file("modules.builtin", "kernel/drivers/virtio/virtio_pci.ko\nkernel/crypto/sha256_generic.ko\n");
    t.bytes(
        "modules.builtin.modinfo",
        b"sha256_generic.alias=sha256\0sha256_generic.license=GPL\0virtio_pci.alias=pci:v00001AF4d*\0",
    );
    (t, btrfs)
}

struct Build {
    dir: PathBuf,
    tree: Tree,
}

fn setup(tag: &str) -> (Build, Vec<u8>) {
    let dir = temp_dir(tag);
    let (tree, btrfs) = standard_tree(&dir);
    (Build { dir, tree }, btrfs)
}

impl Drop for Build {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Build {
    fn args(&self, out: &str, extra: &[&str]) -> Vec<String> {
        let mut a = self.args_without_init(out, extra);
        a.extend(["--init".to_string(), static_init().display().to_string()]);
        a
    }

    fn args_without_init(&self, out: &str, extra: &[&str]) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "--kernel-modules".into(),
            self.tree.dir.display().to_string(),
            "--config".into(),
            config(&self.dir).display().to_string(),
            "--output".into(),
            self.dir.join(out).display().to_string(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    }

    fn run(&self, out: &str, extra: &[&str]) -> std::process::Output {
        let args = self.args(out, extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&args, &[])
    }

    fn ok(&self, out: &str, extra: &[&str]) -> (Vec<dockroot_mkinitramfs::cpio::Entry>, String) {
        let o = self.run(out, extra);
        assert!(o.status.success(), "builder failed: {}", stderr(&o));
        (entries(&self.dir.join(out)), stderr(&o))
    }

    fn fails(&self, extra: &[&str]) -> String {
        let o = self.run("fail.img", extra);
        assert_eq!(o.status.code(), Some(1), "expected a failure: {}", stderr(&o));
        assert!(!self.dir.join("fail.img").exists(), "no output on failure");
        stderr(&o)
    }
}

#[test]
fn resolves_deps_softdeps_aliases_and_builtins_in_order() {
    let (b, _) = setup("resolve");
    let (entries, summary) = b.ok("a.img", &["--module", "btrfs", "--module", "ext4", "--module", "virtio-pci"]);
    let index = index(&entries);
    assert_eq!(index.kernel, RELEASE);
    assert_eq!(
        names(&index),
        ["crc32c_generic", "crc32c_intel", "jbd2", "ext4", "ext4_post", "libcrc32c", "xor", "btrfs"],
        "topological, ties by name"
    );
    let btrfs = &index.modules[position(&index, "btrfs")];
    assert_eq!(btrfs.deps, ["libcrc32c", "xor"]);
    assert_eq!(btrfs.soft, ["crc32c_generic", "crc32c_intel"], "the crc32c alias brings every provider");
    assert_eq!(btrfs.path, format!("lib/modules/{RELEASE}/kernel/fs/btrfs/btrfs.ko"));
    let libcrc32c = &index.modules[position(&index, "libcrc32c")];
    assert_eq!(libcrc32c.soft, ["crc32c_generic", "crc32c_intel"], "softdep from .modinfo");
    let ext4 = &index.modules[position(&index, "ext4")];
    assert_eq!(
        (ext4.deps.as_slice(), ext4.soft.as_slice()),
        (&["jbd2".to_string()][..], &["crc32c_generic".to_string()][..])
    );
    let post = &index.modules[position(&index, "ext4_post")];
    assert_eq!(post.soft, ["ext4"], "a post-softdep waits for the module naming it");
    assert!(!names(&index).contains(&"virtio_blk".to_string()), "not asked for");

    assert!(summary.contains("8 modules in load order: crc32c_generic crc32c_intel jbd2"), "{summary}");
    assert!(summary.contains("built into the kernel (skipped): sha256 virtio_pci"), "{summary}");
    assert!(summary.contains("soft dependency nosuchalias is not in this kernel"), "{summary}");
    assert!(!summary.contains("ignored softdep word"), "cifs is not included, its softdep line is not looked at");
    assert!(summary.contains("decompressed 3 compressed module files"), "{summary}");
}

#[test]
fn image_holds_init_config_console_dirs_and_plain_modules() {
    let (b, btrfs) = setup("contents");
    let (entries, _) = b.ok("a.img", &["--module", "btrfs"]);
    let init = find(&entries, "init");
    assert_eq!(init.mode, 0o100755);
    assert_eq!(init.data, std::fs::read(static_init()).unwrap());
    let cfg = find(&entries, "etc/docker-btrfs.json");
    assert_eq!(cfg.data, std::fs::read(b.dir.join("docker-btrfs.json")).unwrap(), "the config is copied as it is");
    let console = find(&entries, "dev/console");
    assert_eq!((console.mode, console.rdev_major, console.rdev_minor), (0o020600, 5, 1));
    for d in ["dev", "proc", "sys", "run", "etc", "lib", "lib/modules", &format!("lib/modules/{RELEASE}")] {
        assert_eq!(find(&entries, d).mode, 0o040755, "{d}");
    }
    // Decompressed, byte for byte the module (never stripped).
    let ko = find(&entries, &format!("lib/modules/{RELEASE}/kernel/fs/btrfs/btrfs.ko"));
    assert_eq!(ko.data, btrfs);
    assert_eq!(ko.mode, 0o100644);
    assert!(entries.iter().all(|e| !e.name.ends_with(".xz") && !e.name.ends_with(".zst") && !e.name.ends_with(".gz")));
    let xor = find(&entries, &format!("lib/modules/{RELEASE}/kernel/crypto/xor.ko"));
    assert_eq!(xor.data, module_elf("xor", RELEASE, &["depends="]));
    let lib = find(&entries, &format!("lib/modules/{RELEASE}/kernel/lib/libcrc32c.ko"));
    assert_eq!(lib.data, module_elf("libcrc32c", RELEASE, &["softdep=pre: crc32c", "depends="]));
    for (i, e) in entries.iter().enumerate() {
        assert_eq!((e.uid, e.gid, e.mtime, e.ino as usize), (0, 0, 0, i + 1), "{}", e.name);
    }
    // Every module in the index is in the image.
    for m in index(&entries).modules {
        find(&entries, &m.path);
    }
    // GNU cpio reads it too.
    let cpio = b.dir.join("a.cpio");
    std::fs::write(&cpio, decompress(&std::fs::read(b.dir.join("a.img")).unwrap())).unwrap();
    let out = std::process::Command::new("cpio").args(["-t", "--quiet", "-F"]).arg(&cpio).output().unwrap();
    assert!(out.status.success());
    let listed = String::from_utf8(out.stdout).unwrap();
    let ours: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(listed.lines().collect::<Vec<_>>(), ours);
}

#[test]
fn same_inputs_same_bytes() {
    let (b, _) = setup("determinism");
    for comp in ["zstd", "gzip", "none"] {
        let (one, two) = (format!("{comp}-1.img"), format!("{comp}-2.img"));
        b.ok(&one, &["--module", "btrfs", "--module", "ext4", "--compression", comp]);
        b.ok(&two, &["--module", "ext4", "--module", "btrfs", "--compression", comp]);
        let (x, y) = (std::fs::read(b.dir.join(one)).unwrap(), std::fs::read(b.dir.join(two)).unwrap());
        assert_eq!(x, y, "{comp}: two builds differ");
    }
    let (z, g, n) = (
        std::fs::read(b.dir.join("zstd-1.img")).unwrap(),
        std::fs::read(b.dir.join("gzip-1.img")).unwrap(),
        std::fs::read(b.dir.join("none-1.img")).unwrap(),
    );
    assert_eq!(&z[..4], &[0x28, 0xb5, 0x2f, 0xfd]);
    assert_eq!(&g[..2], &[0x1f, 0x8b]);
    assert_eq!(&n[..6], b"070701");
    assert_eq!(decompress(&z), n);
    assert_eq!(decompress(&g), n);

    // SOURCE_DATE_EPOCH sets every mtime.
    let args = b.args("epoch.img", &["--module", "btrfs"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = run(&args, &[("SOURCE_DATE_EPOCH", "1700000000")]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(entries(&b.dir.join("epoch.img")).iter().all(|e| e.mtime == 1_700_000_000));
    let o = run(&args, &[("SOURCE_DATE_EPOCH", "soon")]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("SOURCE_DATE_EPOCH"), "{}", stderr(&o));
}

#[test]
fn a_missing_module_is_an_error_naming_it() {
    let (b, _) = setup("missing");
    let e = b.fails(&["--module", "btrfs", "--module", "nosuchmod"]);
    assert!(e.contains(&format!("module nosuchmod does not exist in kernel {RELEASE}")), "{e}");
}

#[test]
fn an_alias_can_be_asked_for() {
    let (b, _) = setup("alias");
    let (entries, _) = b.ok("a.img", &["--module", "crc32c"]);
    assert_eq!(names(&index(&entries)), ["crc32c_generic", "crc32c_intel"]);
}

#[test]
fn vermagic_mismatch_is_refused_naming_module_vermagic_and_release() {
    let (b, _) = setup("vermagic");
    b.tree.module("kernel/crypto/xor.ko.zst", "xor", "6.1.0-98-other", &["depends="]);
    let e = b.fails(&["--module", "btrfs"]);
    assert!(
        e.contains("module xor (")
            && e.contains("has vermagic \"6.1.0-98-other SMP")
            && e.contains(&format!("the kernel release is {RELEASE}")),
        "{e}"
    );
}

#[test]
fn kernel_release_defaults_to_the_directory_name_and_can_be_given() {
    let dir = temp_dir("release");
    let (tree, _) = standard_tree(&dir);
    let renamed = dir.join("lib/modules/custom-dir");
    std::fs::rename(&tree.dir, &renamed).unwrap();
    let cfg = config(&dir);
    let out = dir.join("a.img");
    let init = static_init();
    let base = [
        "--kernel-modules",
        renamed.to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--init",
        init.to_str().unwrap(),
        "--module",
        "xor",
    ];
    let o = run(&base, &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("the kernel release is custom-dir"), "{}", stderr(&o));
    let mut with = base.to_vec();
    with.extend(["--kernel-release", RELEASE]);
    let o = run(&with, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let idx = index(&entries(&out));
    assert_eq!(idx.kernel, RELEASE);
    assert_eq!(idx.modules[0].path, format!("lib/modules/{RELEASE}/kernel/crypto/xor.ko"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn dependency_cycles_are_errors_naming_the_cycle() {
    let (b, _) = setup("cycle");
    b.tree.module("kernel/a/alpha.ko", "alpha", RELEASE, &[]);
    b.tree.module("kernel/a/beta.ko", "beta", RELEASE, &[]);
    let dep = std::fs::read_to_string(b.tree.dir.join("modules.dep")).unwrap();
    b.tree.file(
        "modules.dep",
        &format!("{dep}kernel/a/alpha.ko: kernel/a/beta.ko\nkernel/a/beta.ko: kernel/a/alpha.ko\n"),
    );
    let e = b.fails(&["--module", "alpha"]);
    assert!(e.contains("kernel module dependency cycle: alpha -> beta -> alpha"), "{e}");

    // Through soft dependencies too: ext4 pre: crc32c_generic, which names ext4 as its own pre-softdep.
    let (b, _) = setup("softcycle");
    b.tree.module("kernel/crypto/crc32c_generic.ko", "crc32c_generic", RELEASE, &["softdep=pre: ext4"]);
    let e = b.fails(&["--module", "ext4"]);
    assert!(e.contains("kernel module dependency cycle: crc32c_generic -> ext4 -> crc32c_generic"), "{e}");
}

#[test]
fn without_modules_dep_reads_modinfo_and_walks_kernel_dir() {
    let (b, btrfs) = setup("fallback");
    for f in ["modules.dep", "modules.alias", "modules.softdep"] {
        std::fs::remove_file(b.tree.dir.join(f)).unwrap();
    }
    let (entries, summary) = b.ok("a.img", &["--module", "btrfs", "--module", "ext4"]);
    let index = index(&entries);
    assert_eq!(names(&index), ["crc32c_generic", "crc32c_intel", "jbd2", "ext4", "libcrc32c", "xor", "btrfs"]);
    let m = &index.modules[position(&index, "btrfs")];
    assert_eq!(m.deps, ["libcrc32c", "xor"], "from depends=");
    assert_eq!(m.soft, ["crc32c_generic", "crc32c_intel"], "from softdep= and aliases read from .modinfo");
    assert_eq!(find(&entries, &m.path).data, btrfs);
    assert!(summary.contains("modules.dep is missing"), "{summary}");
    assert!(summary.contains("modules.alias is missing"), "{summary}");

    // A hard dependency that is nowhere is an error.
    b.tree.module("kernel/fs/ext4/ext4.ko", "ext4", RELEASE, &["depends=jbd2,ghost"]);
    let e = b.fails(&["--module", "ext4"]);
    assert!(e.contains("module ext4 depends on ghost, which is neither a module"), "{e}");
}

#[test]
fn default_set_skips_what_the_kernel_lacks() {
    let (b, _) = setup("defaults");
    let (entries, summary) = b.ok("a.img", &[]);
    let n = names(&index(&entries));
    for want in ["btrfs", "ext4", "virtio_blk", "crc32c_intel", "xor"] {
        assert!(n.contains(&want.to_string()), "{want} missing from {n:?}");
    }
    assert!(summary.contains("(default set)"), "{summary}");
    assert!(summary.contains("built into the kernel (skipped): sha256 virtio_pci"), "{summary}");
    assert!(summary.contains("not in this kernel (skipped): ahci"), "{summary}");
}

#[test]
fn refuses_a_dynamic_or_missing_init() {
    let (b, _) = setup("init");
    let attempt = |extra: &[&str]| {
        let args = b.args_without_init("init.img", extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&args, &[])
    };
    let o = attempt(&["--module", "xor", "--init", "/bin/ls"]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains("/bin/ls cannot be the initramfs /init: dynamically linked"), "{e}");
    assert!(e.contains("build it with scripts/build-init"), "{e}");
    let o = attempt(&["--module", "xor", "--init", "/nonexistent/dockroot"]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains("/nonexistent/dockroot does not exist: build it with scripts/build-init"), "{e}");

    // The default init is `dockroot` next to the builder: in a test build it is missing or not static.
    let o = attempt(&["--module", "xor"]);
    let next_to_us = Path::new(env!("CARGO_BIN_EXE_dockroot-mkinitramfs")).with_file_name("dockroot");
    if o.status.success() {
        assert_eq!(find(&entries(&b.dir.join("init.img")), "init").data, std::fs::read(&next_to_us).unwrap());
    } else {
        let e = stderr(&o);
        assert!(e.contains(&next_to_us.display().to_string()) && e.contains("scripts/build-init"), "{e}");
    }
}

#[test]
fn refuses_a_bad_config() {
    let (b, _) = setup("config");
    let bad = b.dir.join("bad.json");
    let out = b.dir.join("x.img");
    let init = static_init();
    for (text, want) in [("not json", "not valid JSON"), (r#"{"docker_tag": "x"}"#, "docker_image")] {
        std::fs::write(&bad, text).unwrap();
        let o = run(
            &[
                "--kernel-modules",
                b.tree.dir.to_str().unwrap(),
                "--module",
                "xor",
                "--config",
                bad.to_str().unwrap(),
                "--output",
                out.to_str().unwrap(),
                "--init",
                init.to_str().unwrap(),
            ],
            &[],
        );
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        let e = stderr(&o);
        assert!(e.contains("checking the config") && e.contains("bad.json") && e.contains(want), "{e}");
        assert!(!out.exists());
    }
}

#[test]
fn help_version_and_usage_errors() {
    let o = run(&["--help"], &[]);
    assert!(o.status.success());
    let help = String::from_utf8(o.stdout).unwrap();
    assert!(help.contains("--kernel-modules") && help.contains("btrfs ext4 xfs vfat"), "{help}");
    let o = run(&["--version"], &[]);
    assert!(o.status.success());
    assert!(String::from_utf8(o.stdout).unwrap().starts_with("dockroot-mkinitramfs "));
    let o = run(&["--kernel-modules", "/x", "--bogus"], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("unknown option --bogus"), "{}", stderr(&o));
    let o = run(&["--kernel-modules", "/x"], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("missing option --config"), "{}", stderr(&o));
}
