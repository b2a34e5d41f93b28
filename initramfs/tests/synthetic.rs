//! The builder end to end on synthetic module trees (no kernel package needed):
//! fake modules.dep/softdep/alias/builtin files and tiny ELF modules with a
//! `.modinfo` section, compressed with the real xz/zstd/gzip.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use dockroot::modules::{AliasTable, Load};

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
        ["crc32c_generic", "crc32c_intel", "jbd2", "libcrc32c", "xor", "ext4", "btrfs", "ext4_post"],
        "topological, ties by the longest chain of bytes waiting (the fake btrfs.ko is bigger), then by name"
    );
    let btrfs = &index.modules[position(&index, "btrfs")];
    assert_eq!(btrfs.deps, ["libcrc32c", "xor"]);
    assert_eq!(btrfs.pre, ["crc32c_generic", "crc32c_intel"], "the crc32c alias brings every provider");
    assert_eq!(btrfs.path, format!("lib/modules/{RELEASE}/kernel/fs/btrfs/btrfs.ko"));
    let libcrc32c = &index.modules[position(&index, "libcrc32c")];
    assert_eq!(libcrc32c.pre, ["crc32c_generic", "crc32c_intel"], "softdep from .modinfo");
    let ext4 = &index.modules[position(&index, "ext4")];
    assert_eq!(
        (ext4.deps.as_slice(), ext4.pre.as_slice()),
        (&["jbd2".to_string()][..], &["crc32c_generic".to_string()][..])
    );
    let post = &index.modules[position(&index, "ext4_post")];
    assert!(post.pre.is_empty() && post.deps.is_empty());
    assert_eq!(ext4.post, ["ext4_post"], "a post-softdep, listed after the module naming it");
    assert!(index.modules.iter().all(|m| m.load == Load::Always), "--module: everything at every boot");
    assert!(!names(&index).contains(&"virtio_blk".to_string()), "not asked for");

    assert!(
        summary.contains(
            "8 modules (8 always, 0 by modalias; 0 device aliases; filesystems btrfs) in load order: crc32c_generic crc32c_intel jbd2"
        ),
        "{summary}"
    );
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
    assert_eq!(names(&index), ["crc32c_generic", "crc32c_intel", "libcrc32c", "xor", "jbd2", "btrfs", "ext4"]);
    let m = &index.modules[position(&index, "btrfs")];
    assert_eq!(m.deps, ["libcrc32c", "xor"], "from depends=");
    assert_eq!(m.pre, ["crc32c_generic", "crc32c_intel"], "from softdep= and aliases read from .modinfo");
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
    assert!(
        summary.contains("generic image: filesystems before their mount, drivers when a device's modalias asks"),
        "{summary}"
    );
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
    assert!(e.contains("build it with scripts/build") && !e.contains("build-init"), "{e}");
    assert!(e.contains("or `cargo build --release` in the dockroot repository"), "{e}");
    let o = attempt(&["--module", "xor", "--init", "/nonexistent/dockroot"]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(
        e.contains("/nonexistent/dockroot does not exist: build it with scripts/build, or give --init PATH"),
        "{e}"
    );

    // The default init is `dockroot-init` next to the builder: in a test build it is missing or not static.
    let o = attempt(&["--module", "xor"]);
    let next_to_us = Path::new(env!("CARGO_BIN_EXE_dockroot-mkinitramfs")).with_file_name("dockroot-init");
    if o.status.success() {
        assert_eq!(find(&entries(&b.dir.join("init.img")), "init").data, std::fs::read(&next_to_us).unwrap());
    } else {
        let e = stderr(&o);
        assert!(e.contains(&next_to_us.display().to_string()) && e.contains("scripts/build"), "{e}");
        assert!(!e.contains("build-init"), "{e}");
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

/// Drivers with device aliases on top of the standard tree: virtio_pci as a
/// module (it is built in there), nvme, sd_mod (which needs scsi_mod), and a
/// module nobody's hardware matches.
fn add_drivers(t: &Tree) {
    let mods = [
        ("kernel/drivers/virtio/virtio_pci.ko", "virtio_pci", "pci:v00001AF4d*sv*sd*bc*sc*i*"),
        ("kernel/drivers/nvme/host/nvme.ko", "nvme", "pci:v*d*sv*sd*bc01sc08i02*"),
        ("kernel/drivers/scsi/sd_mod.ko", "sd_mod", "scsi:t-0x00*"),
        ("kernel/drivers/scsi/scsi_mod.ko", "scsi_mod", ""),
        ("kernel/drivers/ata/ahci.ko", "ahci", "pci:v*d*sv*sd*bc01sc06i01*"),
        ("kernel/fs/fat/vfat.ko", "vfat", ""),
        ("kernel/fs/nls/nls_cp437.ko", "nls_cp437", ""),
    ];
    let mut dep = std::fs::read_to_string(t.dir.join("modules.dep")).unwrap();
    let mut alias = std::fs::read_to_string(t.dir.join("modules.alias")).unwrap();
    for (rel, name, pattern) in mods {
        let info: Vec<String> = if pattern.is_empty() { vec![] } else { vec![format!("alias={pattern}")] };
        let info: Vec<&str> = info.iter().map(String::as_str).collect();
        t.module(rel, name, RELEASE, &info);
        let deps = if name == "sd_mod" { " kernel/drivers/scsi/scsi_mod.ko" } else { "" };
        dep.push_str(&format!("{rel}:{deps}\n"));
        if !pattern.is_empty() {
            alias.push_str(&format!("alias {pattern} {name}\n"));
        }
    }
    alias.push_str("alias fs-ext4 ext4\nalias fs-vfat vfat\nalias fs-btrfs btrfs\n");
    t.file("modules.dep", &dep);
    t.file("modules.alias", &alias);
    t.file("modules.builtin", "kernel/crypto/sha256_generic.ko\n");
}

#[test]
fn generic_image_loads_filesystems_before_their_mount_and_drivers_by_modalias() {
    let (b, _) = setup("generic");
    add_drivers(&b.tree);
    let (entries, summary) = b.ok("a.img", &[]);
    let index = index(&entries);
    // Nothing at every boot: filesystems by their `fs-TYPE` alias, drivers by modalias.
    assert!(index.modules.iter().all(|m| m.load == Load::Modalias), "{summary}");
    let table = AliasTable::of_index(&index);
    assert_eq!(table.lookup("fs-btrfs"), ["btrfs"]);
    assert_eq!(table.lookup("fs-ext4"), ["ext4"]);
    assert_eq!(table.lookup("fs-vfat"), ["nls_cp437", "vfat"], "vfat mounts need their code pages");
    for m in ["xor", "libcrc32c", "crc32c_generic", "jbd2", "ext4_post"] {
        assert!(names(&index).contains(&m.to_string()), "{m}: what they need comes along");
    }
    // The index carries the device aliases of included modules, and only those.
    assert_eq!(table.lookup("virtio:d00000002v00001AF4"), Vec::<String>::new(), "no such alias in this tree");
    assert_eq!(table.lookup("pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00"), ["virtio_blk", "virtio_pci"]);
    assert_eq!(table.lookup("pci:v00001B36d00000010sv00001AF4sd00001100bc01sc08i02"), ["nvme"]);
    assert_eq!(table.lookup("scsi:t-0x00"), ["sd_mod"]);
    assert!(
        index.aliases.iter().all(|a| a.pattern.contains(':') || a.pattern.starts_with("fs-")),
        "other name aliases stay out"
    );
    assert!(summary.contains("generic image"), "{summary}");
    assert!(summary.contains("(0 always, 16 by modalias; 5 device aliases; filesystems btrfs ext4 vfat)"), "{summary}");
}

/// A fake sysfs and mount table for --hostonly.
fn fake_host(dir: &Path) -> (PathBuf, PathBuf) {
    let sys = dir.join("sys");
    let write = |rel: &str, text: &str| {
        let p = sys.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    write("devices/pci0000:00/0000:00:02.0/modalias", "pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00\n");
    write("devices/pci0000:00/0000:00:00.0/modalias", "pci:v00008086d00001237sv00001AF4sd00001100bc06sc00i00\n");
    write("devices/platform/pcspkr/modalias", "platform:pcspkr\n");
    // The devices as the buses list them (what --hostonly reads).
    for (bus, name, device) in [
        ("pci", "0000:00:02.0", "pci0000:00/0000:00:02.0"),
        ("pci", "0000:00:00.0", "pci0000:00/0000:00:00.0"),
        ("platform", "pcspkr", "platform/pcspkr"),
    ] {
        let dir = sys.join("bus").join(bus).join("devices");
        std::fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::symlink(format!("../../../devices/{device}"), dir.join(name)).unwrap();
    }
    let mounts = dir.join("mounts");
    std::fs::write(
        &mounts,
        "/dev/vda / ext4 rw,relatime 0 0\nproc /proc proc rw 0 0\n/dev/vdb1 /boot/efi vfat rw 0 0\n\
         /dev/vdc /srv xfs rw 0 0\ntmpfs /boot/old\\040one tmpfs rw 0 0\n",
    )
    .unwrap();
    (sys, mounts)
}

#[test]
fn hostonly_takes_what_this_machine_has() {
    let (b, _) = setup("hostonly");
    add_drivers(&b.tree);
    let (sys, mounts) = fake_host(&b.dir);
    let (entries, summary) = b.ok(
        "a.img",
        &["--hostonly", "--sysfs", sys.to_str().unwrap(), "--mounts", mounts.to_str().unwrap(), "--module", "xor"],
    );
    let index = index(&entries);
    let n = names(&index);
    let load = |m: &str| index.modules[position(&index, m)].load;
    // The virtio disk's PCI modalias matches virtio_blk and virtio_pci: by modalias.
    assert_eq!(load("virtio_blk"), Load::Modalias);
    assert_eq!(load("virtio_pci"), Load::Modalias);
    // btrfs, the filesystems at / (ext4) and /boot/efi (vfat + codepage), --module: always.
    for m in ["btrfs", "ext4", "jbd2", "vfat", "nls_cp437", "xor"] {
        assert_eq!(load(m), Load::Always, "{m}");
    }
    // Hardware this machine lacks, and /srv's xfs, stay out.
    for m in ["nvme", "ahci", "sd_mod"] {
        assert!(!n.contains(&m.to_string()), "{m} in {n:?}");
    }
    assert!(summary.contains("hostonly: 3 modalias strings under"), "{summary}");
    assert!(summary.contains("matched 2 modules: virtio_blk virtio_pci"), "{summary}");
    assert!(summary.contains("filesystems at / and /boot") && summary.contains("ext4 tmpfs vfat"), "{summary}");
    assert!(summary.contains("not in this kernel (skipped): nls_ascii nls_iso8859_1 nls_utf8 tmpfs"), "{summary}");
    // A missing sysfs is an error naming it.
    let e = b.fails(&["--hostonly", "--sysfs", "/nonexistent/sys", "--mounts", mounts.to_str().unwrap()]);
    assert!(e.contains("--hostonly") && e.contains("/nonexistent/sys/bus"), "{e}");
}

#[test]
fn firmware_named_by_modules_is_included_as_found() {
    let (b, _) = setup("firmware");
    b.tree.module(
        "kernel/drivers/net/fwdev.ko",
        "fwdev",
        RELEASE,
        &[
            "firmware=fwdev/plain.bin",
            "firmware=fwdev/packed.bin",
            "firmware=fwdev/missing.bin",
            "firmware=../escape.bin",
        ],
    );
    let dep = std::fs::read_to_string(b.tree.dir.join("modules.dep")).unwrap();
    b.tree.file("modules.dep", &format!("{dep}kernel/drivers/net/fwdev.ko:\n"));
    let fw = b.dir.join("lib/firmware/fwdev");
    std::fs::create_dir_all(&fw).unwrap();
    std::fs::write(fw.join("plain.bin"), b"plain firmware").unwrap();
    std::fs::write(fw.join("packed.bin.xz"), pipe("xz", &["--check=crc32", "-c"], b"packed firmware")).unwrap();

    // Default firmware dir: lib/firmware beside the tree's lib/modules.
    let (entries, summary) = b.ok("a.img", &["--module", "fwdev"]);
    assert_eq!(find(&entries, "lib/firmware/fwdev/plain.bin").data, b"plain firmware");
    let packed = find(&entries, "lib/firmware/fwdev/packed.bin.xz");
    assert_eq!(pipe("xz", &["-d", "-c"], &packed.data), b"packed firmware", "stored as found");
    assert_eq!(find(&entries, "lib/firmware").mode, 0o040755);
    assert!(summary.contains("firmware from ") && summary.contains(": 2 files ("), "{summary}");
    assert!(summary.contains("note: firmware fwdev/missing.bin (named by fwdev) is not in"), "{summary}");
    assert!(summary.contains("../escape.bin (not a clean relative path, ignored)"), "{summary}");
    assert!(!entries.iter().any(|e| e.name.contains("escape")));

    // A kernel whose firmware loader cannot read .xz gets it decompressed.
    let config = b.dir.join("config");
    std::fs::write(
        &config,
        "CONFIG_FW_LOADER=y\nCONFIG_FW_LOADER_COMPRESS=y\n# CONFIG_FW_LOADER_COMPRESS_XZ is not set\n",
    )
    .unwrap();
    let (entries, _) = b.ok("b.img", &["--module", "fwdev", "--kernel-config", config.to_str().unwrap()]);
    assert_eq!(find(&entries, "lib/firmware/fwdev/packed.bin").data, b"packed firmware");

    // --firmware-dir elsewhere: nothing found, notes only, still a success.
    let (entries, summary) = b.ok("c.img", &["--module", "fwdev", "--firmware-dir", "/nonexistent/fw"]);
    assert!(!entries.iter().any(|e| e.name.starts_with("lib/firmware")));
    assert!(summary.contains("firmware fwdev/plain.bin (named by fwdev) is not in /nonexistent/fw"), "{summary}");
}

#[test]
fn keep_compressed_needs_a_kernel_that_decompresses_that_format() {
    let (b, btrfs) = setup("keep");
    // No kernel configuration: refused, saying what to give.
    let e = b.fails(&["--module", "btrfs", "--keep-compressed"]);
    assert!(e.contains("--keep-compressed: cannot tell whether kernel") && e.contains("--kernel-config"), "{e}");

    let config = b.dir.join("config");
    std::fs::write(&config, "CONFIG_MODULE_DECOMPRESS=y\nCONFIG_MODULE_COMPRESS_XZ=y\n").unwrap();
    let cfg = config.to_str().unwrap();
    // The standard tree also has .ko.zst and .ko.gz modules: refused, naming the format
    // and both remedies.
    let e = b.fails(&["--module", "btrfs", "--keep-compressed", "--kernel-config", cfg]);
    assert!(e.contains("cannot load .ko.gz modules itself") && e.contains("not CONFIG_MODULE_COMPRESS_GZIP=y"), "{e}");
    assert!(e.contains("was built without the decompress-modules feature"), "{e}");
    assert!(e.contains("drop --keep-compressed") && e.contains("--features decompress-modules"), "{e}");
    std::fs::write(&config, "CONFIG_MODULE_COMPRESS_XZ=y\n").unwrap();
    let e = b.fails(&["--module", "btrfs", "--keep-compressed", "--kernel-config", cfg]);
    assert!(e.contains("does not set CONFIG_MODULE_DECOMPRESS=y"), "{e}");

    // Only .ko.xz modules (and plain ones): kept as shipped, byte for byte.
    let plain = b.tree.module("kernel/fs/xzfs/xzfs.ko.xz", "xzfs", RELEASE, &["depends="]);
    let dep = std::fs::read_to_string(b.tree.dir.join("modules.dep")).unwrap();
    b.tree.file("modules.dep", &format!("{dep}kernel/fs/xzfs/xzfs.ko.xz:\n"));
    std::fs::write(&config, "CONFIG_MODULE_DECOMPRESS=y\nCONFIG_MODULE_COMPRESS_XZ=y\n").unwrap();
    let (entries, summary) =
        b.ok("a.img", &["--module", "xzfs", "--module", "jbd2", "--keep-compressed", "--kernel-config", cfg]);
    let index = index(&entries);
    let xz = &index.modules[position(&index, "xzfs")];
    assert_eq!(xz.path, format!("lib/modules/{RELEASE}/kernel/fs/xzfs/xzfs.ko.xz"));
    let stored = &find(&entries, &xz.path).data;
    assert_eq!(stored, &std::fs::read(b.tree.dir.join("kernel/fs/xzfs/xzfs.ko.xz")).unwrap());
    assert_eq!(pipe("xz", &["-d", "-c"], stored), plain);
    assert_eq!(index.modules[position(&index, "jbd2")].path, format!("lib/modules/{RELEASE}/kernel/fs/jbd2/jbd2.ko"));
    assert!(summary.contains("kept 1 module files compressed"), "{summary}");

    // The default configuration is BASE/boot/config-RELEASE.
    let boot = b.dir.join("boot");
    std::fs::create_dir_all(&boot).unwrap();
    std::fs::write(boot.join(format!("config-{RELEASE}")), "CONFIG_MODULE_DECOMPRESS=y\nCONFIG_MODULE_COMPRESS_XZ=y\n")
        .unwrap();
    b.ok("b.img", &["--module", "xzfs", "--keep-compressed"]);
    let _ = btrfs;
}

/// A copy of the static test init with [`DECOMPRESS_MARKER`] in it, as an init built
/// with `--features decompress-modules` carries it.
fn decompressing_init(dir: &Path) -> PathBuf {
    let mut data = std::fs::read(static_init()).unwrap();
    data.extend_from_slice(b"\0");
    data.extend_from_slice(dockroot::modules::DECOMPRESS_MARKER.as_bytes());
    data.extend_from_slice(b"\0");
    let path = dir.join("decompressing-init");
    std::fs::write(&path, data).unwrap();
    path
}

#[test]
fn keep_compressed_formats_the_kernel_cannot_load_when_the_init_decompresses_them() {
    let (b, _) = setup("keep-init");
    let init = decompressing_init(&b.dir);
    let config = b.dir.join("config");
    std::fs::write(&config, "CONFIG_MODULE_DECOMPRESS=y\nCONFIG_MODULE_COMPRESS_XZ=y\n").unwrap();
    let with_init = |out: &str, extra: &[&str]| {
        let mut args = b.args_without_init(out, extra);
        args.extend(["--init".to_string(), init.display().to_string()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = run(&args, &[]);
        assert!(o.status.success(), "builder failed: {}", stderr(&o));
        (entries(&b.dir.join(out)), stderr(&o))
    };
    // .ko.xz for the kernel, .ko.zst and .ko.gz for the init: all kept as shipped.
    let (entries, summary) =
        with_init("a.img", &["--module", "btrfs", "--keep-compressed", "--kernel-config", config.to_str().unwrap()]);
    let index = index(&entries);
    for (name, path) in [
        ("btrfs", "kernel/fs/btrfs/btrfs.ko.xz"),
        ("xor", "kernel/crypto/xor.ko.zst"),
        ("libcrc32c", "kernel/lib/libcrc32c.ko.gz"),
    ] {
        let m = &index.modules[position(&index, name)];
        assert_eq!(m.path, format!("lib/modules/{RELEASE}/{path}"));
        assert_eq!(find(&entries, &m.path).data, std::fs::read(b.tree.dir.join(path)).unwrap(), "{name}");
    }
    assert!(summary.contains("decompresses modules itself: built with decompress-modules"), "{summary}");
    assert!(
        summary.contains("kept 3 module files compressed: the kernel decompresses 1 .ko.xz; the init decompresses 1 .ko.gz, 1 .ko.zst"),
        "{summary}"
    );
    // No kernel configuration at all: the init decompresses everything.
    let (_, summary) = with_init("b.img", &["--module", "btrfs", "--keep-compressed"]);
    assert!(summary.contains("the init decompresses 1 .ko.gz, 1 .ko.xz, 1 .ko.zst"), "{summary}");
    // The same without the marker (the plain static init): refused.
    let e = b.fails(&["--module", "btrfs", "--keep-compressed"]);
    assert!(e.contains("does not decompress them") && e.contains("--features decompress-modules"), "{e}");
}

#[test]
fn carries_the_commands_for_the_booted_system_or_leaves_them_out() {
    let (b, _) = setup("commands");
    let at = dockroot::record::COMMANDS_IN_INITRAMFS.trim_start_matches('/');
    let (e, summary) = b.ok("with.img", &["--module", "xor", "--commands", &static_init().display().to_string()]);
    let carried = find(&e, at);
    assert_eq!(carried.data, std::fs::read(static_init()).unwrap());
    assert_eq!(carried.mode & 0o777, 0o755);
    for dir in ["usr", "usr/lib", "usr/lib/dockroot"] {
        assert!(e.iter().any(|x| x.name == dir), "no {dir} in the image");
    }
    assert!(summary.contains("left at /run/dockroot/dockroot at boot"), "{summary}");

    let (e, summary) = b.ok("without.img", &["--module", "xor", "--commands", "none"]);
    assert!(!e.iter().any(|x| x.name == at), "--commands none carried them");
    assert!(summary.contains("commands: left out (--commands none)"), "{summary}");

    let e = b.fails(&["--module", "xor", "--commands", "/bin/ls"]);
    assert!(e.contains("/bin/ls cannot be the initramfs's dockroot commands: dynamically linked"), "{e}");
    let e = b.fails(&["--module", "xor", "--commands", "/nonexistent/dockroot"]);
    assert!(e.contains("/nonexistent/dockroot does not exist"), "{e}");

    // The default: `dockroot` next to the builder when it is a static executable; else a note.
    let (e, summary) = b.ok("default.img", &["--module", "xor"]);
    let next_to_us = Path::new(env!("CARGO_BIN_EXE_dockroot-mkinitramfs")).with_file_name("dockroot");
    match e.iter().find(|x| x.name == at) {
        Some(c) => assert_eq!(c.data, std::fs::read(&next_to_us).unwrap()),
        None => assert!(summary.contains("  commands: none: "), "{summary}"),
    }
}

/// `--list` on an image the builder made: every field against what went in.
#[test]
fn list_shows_what_the_image_holds() {
    let (b, btrfs) = setup("list");
    // A static init that carries a dockroot init's version line.
    let mut init = std::fs::read(static_init()).unwrap();
    init.extend_from_slice(b"\0dockroot-init 7.8.9\n");
    let init_path = b.dir.join("versioned-init");
    std::fs::write(&init_path, &init).unwrap();
    let commands = b.dir.join("commands");
    std::fs::write(&commands, std::fs::read(static_init()).unwrap()).unwrap();
    let mut args = b.args_without_init("a.img", &["--module", "btrfs", "--module", "virtio_blk"]);
    args.extend([
        "--init".into(),
        init_path.display().to_string(),
        "--commands".into(),
        commands.display().to_string(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = run(&args, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("(dockroot-init 7.8.9, "), "{}", stderr(&o));
    let image_path = b.dir.join("a.img");
    let image = std::fs::read(&image_path).unwrap();
    let entries = entries(&image_path);
    let idx = index(&entries);
    let file = image_path.display().to_string();

    let o = run(&["--list", &file], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = String::from_utf8(o.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], format!("{file}: dockroot initramfs for kernel {RELEASE}"));
    let cpio_len = decompress(&image).len();
    assert_eq!(
        lines[1],
        format!("  file: {} bytes, zstd; {cpio_len} bytes of cpio, {} entries", image.len(), entries.len())
    );
    assert_eq!(lines[2], format!("  init: /init, dockroot-init 7.8.9, {} bytes, static x86-64", init.len()));
    let commands_len = std::fs::metadata(&commands).unwrap().len();
    assert_eq!(
        lines[3],
        format!(
            "  commands: /usr/lib/dockroot/dockroot, {commands_len} bytes (left at /run/dockroot/dockroot at boot)"
        )
    );
    let image_ref = dockroot::reference::from_prior_art_config(&std::fs::read(config(&b.dir)).unwrap()).unwrap();
    assert_eq!(lines[4], format!("  config: /etc/docker-btrfs.json: image {image_ref}"));
    assert_eq!(lines[5], format!("  built by: dockroot-mkinitramfs {}", env!("CARGO_PKG_VERSION")));
    let n = idx.modules.len();
    assert!(lines[6].starts_with(&format!("  modules: {n} ({n} always, 0 by modalias; ")), "{}", lines[6]);
    for (m, line) in idx.modules.iter().zip(&lines[7..]) {
        let words: Vec<&str> = line.split_whitespace().collect();
        let bytes = find(&entries, &m.path).data.len().to_string();
        assert_eq!(words, ["always", m.name.as_str(), bytes.as_str(), &format!("/{}", m.path)], "{line}");
    }
    let btrfs_line = format!("/lib/modules/{RELEASE}/kernel/fs/btrfs/btrfs.ko");
    assert!(text.contains(&format!(" {} ", btrfs.len())) && text.contains(&btrfs_line), "{text}");
    assert_eq!(lines[7 + n], "  firmware: none");
    assert!(text.contains("  sizes (uncompressed, of "), "{text}");

    // The same as JSON, field by field.
    let o = run(&["--list", &file, "--json"], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["dockroot_initramfs_list"], 1);
    assert_eq!(j["file"], file.as_str());
    assert_eq!((j["file_bytes"].as_u64(), j["cpio_bytes"].as_u64()), (Some(image.len() as u64), Some(cpio_len as u64)));
    assert_eq!((j["compression"].as_str(), j["early_cpio_bytes"].as_u64()), (Some("zstd"), Some(0)));
    assert_eq!(j["entries"].as_u64(), Some(entries.len() as u64));
    assert_eq!(j["kernel"], RELEASE);
    assert_eq!(j["init"]["version"], "7.8.9");
    assert_eq!(j["init"]["version_from"], "manifest");
    assert_eq!((j["init"]["bytes"].as_u64(), j["init"]["static"].as_bool()), (Some(init.len() as u64), Some(true)));
    assert_eq!(j["commands"]["bytes"].as_u64(), Some(commands_len));
    assert_eq!(j["config"]["image"], image_ref.to_string().as_str());
    assert_eq!(j["builder"], env!("CARGO_PKG_VERSION"));
    let modules = j["modules"].as_array().unwrap();
    assert_eq!(modules.len(), n);
    for (m, jm) in idx.modules.iter().zip(modules) {
        assert_eq!(jm["name"], m.name.as_str());
        assert_eq!(jm["path"], format!("/{}", m.path).as_str());
        assert_eq!(jm["load"], "always");
        assert_eq!(jm["bytes"].as_u64(), Some(find(&entries, &m.path).data.len() as u64));
    }
    assert_eq!((j["modules_always"].as_u64(), j["modules_by_modalias"].as_u64()), (Some(n as u64), Some(0)));
    let sizes = &j["sizes"];
    let sum: u64 = ["init", "commands", "modules", "firmware", "index", "config", "other"]
        .iter()
        .map(|k| sizes[k].as_u64().unwrap())
        .sum();
    assert_eq!(sum, cpio_len as u64);
    assert_eq!(sizes["init"].as_u64(), Some(init.len() as u64));

    // A generic image: drivers by modalias.
    add_drivers(&b.tree);
    let o = b.run("g.img", &["--compression", "gzip"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let g = b.dir.join("g.img").display().to_string();
    let o = run(&["--list", &g, "--json"], &[]);
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["compression"], "gzip");
    assert!(j["modules_by_modalias"].as_u64().unwrap() > 0, "{j}");
    assert!(j["init"]["version"].is_null(), "busybox is no dockroot init");
    let o = run(&["--list", &g], &[]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("init: /init, not a dockroot init (no version), "));

    // Not an initramfs, or none at all: exit 1 with the file named; usage errors: 2.
    let garbage = b.dir.join("garbage.img");
    std::fs::write(&garbage, b"this is not an initramfs\n").unwrap();
    let garbage = garbage.display().to_string();
    let o = run(&["--list", &garbage], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(o.stdout.is_empty());
    assert_eq!(
        stderr(&o),
        format!(
            "dockroot-mkinitramfs: error: {garbage}: not a dockroot initramfs: neither a newc cpio archive nor zstd \
             or gzip compressed\n"
        )
    );
    let missing = b.dir.join("missing.img").display().to_string();
    let o = run(&["--list", &missing, "--json"], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains(&missing) && stderr(&o).contains("No such file"), "{}", stderr(&o));
    let o = run(&["--list", &file, "--output", "x"], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let o = run(&["--json"], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}
