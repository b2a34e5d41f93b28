//! Kernel modules in the initramfs: the index the builder writes, and the
//! loader PID 1 runs at boot.
//!
//! The builder (`dockroot-mkinitramfs`) resolves dependencies on the host and
//! writes [`INDEX_PATH`], a small text file that lists the modules in load order:
//!
//! ```text
//! dockroot-modules 1
//! kernel 6.1.0-56-amd64
//! module libcrc32c lib/modules/6.1.0-56-amd64/kernel/lib/libcrc32c.ko deps= soft=
//! module btrfs lib/modules/6.1.0-56-amd64/kernel/fs/btrfs/btrfs.ko deps=libcrc32c,xor soft=crc32c_generic
//! ```
//!
//! The first line names the format and its version, the second the kernel
//! release the modules were built for. Each `module` line gives the module's
//! name (with `_`, as the kernel names it), its path inside the initramfs
//! (relative, no `..`), the modules it needs (`deps=`: hard dependencies, from
//! modules.dep) and the ones it must merely wait for (`soft=`: soft
//! dependencies). Every name in `deps=`/`soft=` is a module listed on an earlier
//! line, so loading line by line is always a valid order, and modules whose
//! waits are done could be loaded in parallel.
//!
//! At boot, [`load_all`] checks the release against the running kernel, then
//! loads each module with `finit_module`. A module that is already loaded is
//! fine; one that fails is reported and the boot goes on (the missing driver
//! shows up later as a missing device, with this report on the console); the
//! modules that need a failed one are skipped. A failed *soft* dependency (say
//! `crc32c_intel` on a CPU without SSE 4.2) does not stop the modules waiting
//! for it.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::{Component, Path};
use std::time::{Duration, Instant};

use rustix::io::Errno;

use crate::error::{Context, Error, Result};

/// Where the builder puts the index, relative to the initramfs root.
pub const INDEX_PATH: &str = "lib/modules/dockroot-modules.index";

/// The first line of an index this code reads and writes.
pub const INDEX_HEADER: &str = "dockroot-modules 1";

/// The largest index [`read_index`] accepts (a full distribution kernel's
/// worth of modules is about 600 KiB).
pub const INDEX_MAX_BYTES: u64 = 4 << 20;

/// A module name as the kernel spells it: `-` becomes `_`
/// (`crc32c-intel.ko` is the module `crc32c_intel`).
pub fn normalize_name(name: &str) -> String {
    name.replace('-', "_")
}

/// The parsed index: which kernel the modules are for and the modules in load order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ModuleIndex {
    /// The kernel release (`uname -r`) the modules were built for.
    pub kernel: String,
    /// The modules, in an order where every module comes after those it waits for.
    pub modules: Vec<IndexEntry>,
}

/// One module of the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    /// The module's name, `_` not `-`.
    pub name: String,
    /// Its file, relative to the initramfs root.
    pub path: String,
    /// Modules it cannot load without (hard dependencies).
    pub deps: Vec<String>,
    /// Modules to load before it if they can be (soft dependencies).
    pub soft: Vec<String>,
}

impl IndexEntry {
    /// Every module this one must wait for: hard then soft dependencies.
    pub fn wait_for(&self) -> impl Iterator<Item = &str> {
        self.deps.iter().chain(self.soft.iter()).map(String::as_str)
    }
}

fn check_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() {
        return Err("empty module name".into());
    }
    if let Some(c) = name.chars().find(|c| c.is_whitespace() || c.is_control() || matches!(c, ',' | '=' | '/')) {
        return Err(format!("module name {name:?} contains {c:?}"));
    }
    Ok(())
}

fn check_path(path: &str) -> std::result::Result<(), String> {
    if path.is_empty() {
        return Err("empty module path".into());
    }
    if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("module path {path:?} contains white space or a control character"));
    }
    if !Path::new(path).components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(format!("module path {path:?} must be relative, without `.` or `..`"));
    }
    Ok(())
}

fn check_release(release: &str) -> std::result::Result<(), String> {
    if release.is_empty() || release.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("kernel release {release:?} is empty or contains white space"));
    }
    Ok(())
}

/// Check one entry against the modules listed before it (`seen`: name → line).
fn check_entry(entry: &IndexEntry, seen: &BTreeMap<&str, usize>) -> std::result::Result<(), String> {
    check_name(&entry.name)?;
    check_path(&entry.path)?;
    if let Some(line) = seen.get(entry.name.as_str()) {
        return Err(format!("module {} is listed twice (first on line {line})", entry.name));
    }
    for dep in entry.wait_for() {
        check_name(dep)?;
        if !seen.contains_key(dep) {
            return Err(format!("module {} waits for {dep}, which is not listed before it", entry.name));
        }
    }
    Ok(())
}

/// Write `index` in the text format described in the module docs.
///
/// Fails if a name or path cannot be written unambiguously (white space,
/// commas, absolute paths...) or the order is not a load order.
pub fn write_index(index: &ModuleIndex) -> Result<String> {
    check_release(&index.kernel).map_err(|e| Error::msg(format!("cannot write the module index: {e}")))?;
    let mut out = format!("{INDEX_HEADER}\nkernel {}\n", index.kernel);
    let mut seen = BTreeMap::new();
    for (i, entry) in index.modules.iter().enumerate() {
        // Line numbers as the parser would report them.
        let line = i.saturating_add(3);
        check_entry(entry, &seen).map_err(|e| Error::msg(format!("cannot write the module index: {e}")))?;
        seen.insert(entry.name.as_str(), line);
        out.push_str(&format!(
            "module {} {} deps={} soft={}\n",
            entry.name,
            entry.path,
            entry.deps.join(","),
            entry.soft.join(",")
        ));
    }
    Ok(out)
}

fn split_list(field: &str, key: &str) -> std::result::Result<Vec<String>, String> {
    let list = field.strip_prefix(key).ok_or_else(|| format!("expected `{key}...`, found {field:?}"))?;
    if list.is_empty() {
        return Ok(Vec::new());
    }
    Ok(list.split(',').map(str::to_owned).collect())
}

/// Parse an index written by [`write_index`]. Errors name the line.
pub fn parse_index(text: &str) -> Result<ModuleIndex> {
    let bad = |line: usize, what: String| Error::msg(format!("module index line {line}: {what}"));
    let mut lines = text.lines().enumerate().map(|(i, l)| (i.saturating_add(1), l));

    match lines.next() {
        Some((_, INDEX_HEADER)) => {}
        Some((n, l)) if l.starts_with("dockroot-modules ") => {
            return Err(bad(n, format!("format {l:?} is not supported (this init reads {INDEX_HEADER:?}): rebuild the initramfs with the matching dockroot-mkinitramfs")));
        }
        Some((n, l)) => return Err(bad(n, format!("expected {INDEX_HEADER:?}, found {l:?}"))),
        None => return Err(Error::msg("module index is empty")),
    }
    let kernel = match lines.next() {
        Some((n, l)) => {
            let release =
                l.strip_prefix("kernel ").ok_or_else(|| bad(n, format!("expected `kernel RELEASE`, found {l:?}")))?;
            check_release(release).map_err(|e| bad(n, e))?;
            release.to_owned()
        }
        None => return Err(Error::msg("module index ends before its `kernel RELEASE` line")),
    };

    let mut index = ModuleIndex { kernel, modules: Vec::new() };
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (n, line) in lines {
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(' ').collect();
        let [kw, name, path, deps, soft] = fields.as_slice() else {
            return Err(bad(n, format!("expected `module NAME PATH deps=A,B soft=C`, found {line:?}")));
        };
        if *kw != "module" {
            return Err(bad(n, format!("expected a `module` line, found {line:?}")));
        }
        let entry = IndexEntry {
            name: (*name).to_owned(),
            path: (*path).to_owned(),
            deps: split_list(deps, "deps=").map_err(|e| bad(n, e))?,
            soft: split_list(soft, "soft=").map_err(|e| bad(n, e))?,
        };
        let seen_ref: BTreeMap<&str, usize> = seen.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        check_entry(&entry, &seen_ref).map_err(|e| bad(n, e))?;
        seen.insert(entry.name.clone(), n);
        index.modules.push(entry);
    }
    Ok(index)
}

/// Read and parse the index under `root` ([`INDEX_PATH`]). `Ok(None)` if the
/// initramfs has no index (no modules were put in it).
pub fn read_index(root: &Path) -> Result<Option<ModuleIndex>> {
    let path = root.join(INDEX_PATH);
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::with(format!("opening the module index {}", path.display()), e)),
    };
    let mut text = String::new();
    file.take(INDEX_MAX_BYTES.saturating_add(1))
        .read_to_string(&mut text)
        .context(|| format!("reading the module index {}", path.display()))?;
    if text.len() as u64 > INDEX_MAX_BYTES {
        return Err(Error::msg(format!("the module index {} is larger than {INDEX_MAX_BYTES} bytes", path.display())));
    }
    parse_index(&text).map(Some).map_err(|e| e.context(format!("in {}", path.display())))
}

/// Refuse to load modules built for another kernel.
pub fn check_kernel_release(index: &ModuleIndex, running: &str) -> Result<()> {
    if index.kernel != running {
        return Err(Error::msg(format!(
            "this initramfs carries modules for {} but the running kernel is {running}: rebuild the initramfs for this kernel",
            index.kernel
        )));
    }
    Ok(())
}

/// What happened to one module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// finit_module succeeded.
    Loaded,
    /// The module was loaded already (EEXIST, or /sys/module/NAME/initstate is `live`).
    AlreadyPresent,
    /// Opening or loading failed with this errno.
    Failed(Errno),
}

/// A module that failed to load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub name: String,
    pub path: String,
    pub errno: Errno,
}

impl Failure {
    /// A hint for the errno, in words.
    pub fn hint(&self) -> Option<&'static str> {
        errno_hint(self.errno)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Errno's Display reads like "Exec format error (os error 8)".
        write!(f, "{} (/{}): {}", self.name, self.path, crate::error::errno_text(self.errno))?;
        if let Some(hint) = self.hint() {
            write!(f, ": {hint}")?;
        }
        Ok(())
    }
}

/// A module not tried because a module it needs did not load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub name: String,
    /// The hard dependency that failed or was skipped itself.
    pub because_of: String,
}

/// What [`load_all`] did, for the console and kmsg.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Modules loaded now, with the time finit_module took.
    pub loaded: Vec<(String, Duration)>,
    /// Modules that were loaded before we tried.
    pub already_present: Vec<String>,
    pub failed: Vec<Failure>,
    pub skipped: Vec<Skipped>,
    /// Wall time of the whole run.
    pub total: Duration,
}

impl LoadReport {
    /// True if every module is loaded now.
    pub fn all_loaded(&self) -> bool {
        self.failed.is_empty() && self.skipped.is_empty()
    }
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "kernel modules: {} loaded, {} already present, {} failed, {} skipped ({} ms)",
            self.loaded.len(),
            self.already_present.len(),
            self.failed.len(),
            self.skipped.len(),
            self.total.as_millis()
        )?;
        for failure in &self.failed {
            write!(f, "\n  failed: {failure}")?;
        }
        for s in &self.skipped {
            write!(f, "\n  skipped: {} (needs {}, which did not load)", s.name, s.because_of)?;
        }
        Ok(())
    }
}

/// Words for the errno values finit_module gives.
pub fn errno_hint(errno: Errno) -> Option<&'static str> {
    Some(match errno {
        Errno::NOEXEC => "built for another kernel? (not a valid module for this kernel)",
        Errno::KEYREJECTED => "module signature rejected (the kernel requires modules signed with a key it trusts)",
        Errno::NOKEY | Errno::NOPKG | Errno::NODATA | Errno::BADMSG => {
            "module signature missing or unusable while the kernel requires signed modules"
        }
        Errno::INVAL => "invalid module (built for another kernel, or a symbol version mismatch: see dmesg)",
        Errno::NOENT => "file missing, or the module needs a symbol no loaded module provides (see dmesg)",
        Errno::NODEV => "no matching hardware or CPU feature (harmless for drivers of absent devices)",
        Errno::PERM => "not permitted (module loading disabled or lockdown)",
        Errno::NOMEM => "out of memory",
        Errno::BUSY => "module busy (being loaded or removed concurrently)",
        _ => return None,
    })
}

/// The pure part of [`load_all`]: walk the index in order, call `attempt` for
/// each module whose hard dependencies all loaded, record the outcome.
pub fn load_with(index: &ModuleIndex, mut attempt: impl FnMut(&IndexEntry) -> Attempt) -> LoadReport {
    let start = Instant::now();
    let mut report = LoadReport::default();
    // Modules that did not load (failed or skipped): their dependents are skipped.
    let mut missing: std::collections::BTreeSet<&str> = std::collections::BTreeSet::new();
    for entry in &index.modules {
        if let Some(dep) = entry.deps.iter().find(|d| missing.contains(d.as_str())) {
            log::warn!("skipping module {}: it needs {dep}, which did not load", entry.name);
            missing.insert(entry.name.as_str());
            report.skipped.push(Skipped { name: entry.name.clone(), because_of: dep.clone() });
            continue;
        }
        let t = Instant::now();
        match attempt(entry) {
            Attempt::Loaded => {
                let took = t.elapsed();
                log::debug!("loaded module {} in {} us", entry.name, took.as_micros());
                report.loaded.push((entry.name.clone(), took));
            }
            Attempt::AlreadyPresent => {
                log::debug!("module {} was already loaded", entry.name);
                report.already_present.push(entry.name.clone());
            }
            Attempt::Failed(errno) => {
                let failure = Failure { name: entry.name.clone(), path: entry.path.clone(), errno };
                if errno == Errno::NODEV {
                    // Accelerated variants (crc32c_intel on a CPU without SSE4.2) and
                    // drivers of absent hardware: expected, not worth a warning.
                    log::info!("module {failure}");
                } else {
                    log::warn!("cannot load module {failure}");
                }
                missing.insert(entry.name.as_str());
                report.failed.push(failure);
            }
        }
    }
    report.total = start.elapsed();
    report
}

/// Is the module already loaded and initialised? (`/sys/module/NAME/initstate` says `live`.)
fn is_live(name: &str) -> bool {
    let path = format!("/sys/module/{name}/initstate");
    let Ok(file) = std::fs::File::open(path) else { return false };
    let mut state = String::new();
    if file.take(64).read_to_string(&mut state).is_err() {
        return false;
    }
    state.trim() == "live"
}

/// Load one module with finit_module.
fn load_one(root: &Path, entry: &IndexEntry) -> Attempt {
    use rustix::fs::{Mode, OFlags};
    if is_live(&entry.name) {
        return Attempt::AlreadyPresent;
    }
    let path = root.join(&entry.path);
    let fd = match rustix::fs::open(&path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()) {
        Ok(fd) => fd,
        Err(e) => return Attempt::Failed(e),
    };
    match rustix::system::finit_module(&fd, c"", 0) {
        Ok(()) => Attempt::Loaded,
        Err(Errno::EXIST) => Attempt::AlreadyPresent,
        Err(e) => Attempt::Failed(e),
    }
}

/// Load every module of `index` from the initramfs rooted at `root` (`/` at boot).
///
/// Errors only if the index is for another kernel; failures of single modules
/// are in the report (and logged as warnings).
pub fn load_all(index: &ModuleIndex, root: &Path) -> Result<LoadReport> {
    let uname = rustix::system::uname();
    let running = uname.release().to_string_lossy();
    check_kernel_release(index, &running)?;
    let report = load_with(index, |entry| load_one(root, entry));
    log::info!(
        "kernel modules: {} loaded, {} already present, {} failed, {} skipped in {} ms",
        report.loaded.len(),
        report.already_present.len(),
        report.failed.len(),
        report.skipped.len(),
        report.total.as_millis()
    );
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, deps: &[&str], soft: &[&str]) -> IndexEntry {
        IndexEntry {
            name: name.into(),
            path: format!("lib/modules/6.1.0-56-amd64/kernel/{name}.ko"),
            deps: deps.iter().map(|s| s.to_string()).collect(),
            soft: soft.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn sample() -> ModuleIndex {
        ModuleIndex {
            kernel: "6.1.0-56-amd64".into(),
            modules: vec![
                entry("crc32c_generic", &[], &[]),
                entry("crc32c_intel", &[], &[]),
                entry("libcrc32c", &[], &[]),
                entry("xor", &[], &[]),
                entry("btrfs", &["libcrc32c", "xor"], &["crc32c_generic", "crc32c_intel"]),
            ],
        }
    }

    #[test]
    fn write_then_parse_round_trips() {
        let index = sample();
        let text = write_index(&index).unwrap();
        assert!(text.starts_with("dockroot-modules 1\nkernel 6.1.0-56-amd64\n"), "{text}");
        assert!(text.contains(
            "\nmodule btrfs lib/modules/6.1.0-56-amd64/kernel/btrfs.ko deps=libcrc32c,xor soft=crc32c_generic,crc32c_intel\n"
        ));
        assert!(text.contains("\nmodule xor lib/modules/6.1.0-56-amd64/kernel/xor.ko deps= soft=\n"));
        assert_eq!(parse_index(&text).unwrap(), index);
    }

    #[test]
    fn empty_module_list_round_trips() {
        let index = ModuleIndex { kernel: "6.1.0".into(), modules: vec![] };
        assert_eq!(parse_index(&write_index(&index).unwrap()).unwrap(), index);
    }

    #[test]
    fn writer_refuses_unwritable_entries() {
        let mut index = sample();
        index.modules[0].path = "/abs/x.ko".into();
        assert!(write_index(&index).unwrap_err().to_string().contains("must be relative"));
        let mut index = sample();
        index.modules[1].name = "bad name".into();
        assert!(write_index(&index).unwrap_err().to_string().contains("bad name"));
        let mut index = sample();
        index.modules.swap(0, 4);
        let e = write_index(&index).unwrap_err().to_string();
        assert!(e.contains("btrfs waits for libcrc32c, which is not listed before it"), "{e}");
    }

    fn parse_err(text: &str) -> String {
        parse_index(text).unwrap_err().to_string()
    }

    #[test]
    fn malformed_lines_name_the_line() {
        let head = "dockroot-modules 1\nkernel 6.1.0\n";
        assert_eq!(parse_err(""), "module index is empty");
        assert!(parse_err("dockroot-modules 2\n").starts_with("module index line 1: format"));
        assert!(parse_err("something\n").starts_with("module index line 1: expected"));
        assert!(parse_err("dockroot-modules 1\nkernal 6.1\n").starts_with("module index line 2:"));
        assert!(parse_err("dockroot-modules 1\nkernel \n").starts_with("module index line 2:"));
        let e = parse_err(&format!("{head}module a a.ko deps= soft=\nmodule b b.ko deps=a\n"));
        assert!(e.starts_with("module index line 4: expected `module NAME PATH"), "{e}");
        let e = parse_err(&format!("{head}module a a.ko deps= soft=\nmodule b b.ko deps=c soft=\n"));
        assert_eq!(e, "module index line 4: module b waits for c, which is not listed before it");
        let e = parse_err(&format!("{head}module a a.ko deps= soft=\nmodule a b.ko deps= soft=\n"));
        assert_eq!(e, "module index line 4: module a is listed twice (first on line 3)");
        let e = parse_err(&format!("{head}module a ../a.ko deps= soft=\n"));
        assert!(e.starts_with("module index line 3: module path \"../a.ko\""), "{e}");
        let e = parse_err(&format!("{head}modul a a.ko deps= soft=\n"));
        assert!(e.starts_with("module index line 3: expected a `module` line"), "{e}");
        let e = parse_err(&format!("{head}module a a.ko soft= deps=\n"));
        assert!(e.starts_with("module index line 3: expected `deps=...`"), "{e}");
        let e = parse_err(&format!("{head}module a a.ko deps=,x soft=\n"));
        assert!(e.starts_with("module index line 3: empty module name"), "{e}");
    }

    #[test]
    fn blank_lines_are_ignored() {
        let text = "dockroot-modules 1\nkernel 6.1.0\n\nmodule a a.ko deps= soft=\n\n";
        assert_eq!(parse_index(text).unwrap().modules.len(), 1);
    }

    #[test]
    fn release_mismatch_is_a_clear_error() {
        let index = sample();
        assert!(check_kernel_release(&index, "6.1.0-56-amd64").is_ok());
        let e = check_kernel_release(&index, "6.12.0-1-amd64").unwrap_err().to_string();
        assert_eq!(
            e,
            "this initramfs carries modules for 6.1.0-56-amd64 but the running kernel is 6.12.0-1-amd64: \
             rebuild the initramfs for this kernel"
        );
    }

    #[test]
    fn loads_in_order_and_skips_dependents_of_failures() {
        let mut index = sample();
        index.modules.push(entry("raid1", &["btrfs"], &[]));
        index.modules.push(entry("vfat", &[], &[]));
        let mut order = Vec::new();
        let report = load_with(&index, |e| {
            order.push(e.name.clone());
            match e.name.as_str() {
                "crc32c_intel" => Attempt::Failed(Errno::NODEV),
                "xor" => Attempt::Failed(Errno::NOEXEC),
                "libcrc32c" => Attempt::AlreadyPresent,
                _ => Attempt::Loaded,
            }
        });
        // btrfs needs xor (failed): skipped, and so is raid1 which needs btrfs.
        // The failed soft dependency crc32c_intel stops nothing.
        assert_eq!(order, ["crc32c_generic", "crc32c_intel", "libcrc32c", "xor", "vfat"]);
        let loaded: Vec<&str> = report.loaded.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(loaded, ["crc32c_generic", "vfat"]);
        assert_eq!(report.already_present, ["libcrc32c"]);
        assert_eq!(report.failed.len(), 2);
        assert_eq!(report.failed[1].name, "xor");
        assert_eq!(report.failed[1].errno, Errno::NOEXEC);
        assert_eq!(
            report.skipped,
            [
                Skipped { name: "btrfs".into(), because_of: "xor".into() },
                Skipped { name: "raid1".into(), because_of: "btrfs".into() },
            ]
        );
        assert!(!report.all_loaded());
        let text = report.to_string();
        assert!(text.starts_with("kernel modules: 2 loaded, 1 already present, 2 failed, 2 skipped ("), "{text}");
        assert!(
            text.contains("\n  failed: xor (/lib/modules/6.1.0-56-amd64/kernel/xor.ko): ")
                && text.contains("(os error 8): built for another kernel?"),
            "{text}"
        );
        assert!(text.contains("\n  skipped: raid1 (needs btrfs, which did not load)"), "{text}");
    }

    #[test]
    fn hints_for_common_errnos() {
        assert!(errno_hint(Errno::KEYREJECTED).unwrap().contains("signature rejected"));
        assert!(errno_hint(Errno::NOEXEC).unwrap().contains("another kernel"));
        assert_eq!(errno_hint(Errno::ROFS), None);
    }

    #[test]
    fn normalizes_dashes() {
        assert_eq!(normalize_name("crc32c-intel"), "crc32c_intel");
    }

    #[test]
    fn read_index_from_a_root() {
        let dir = std::env::temp_dir().join(format!("dockroot-modules-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(read_index(&dir).unwrap(), None);
        std::fs::create_dir_all(dir.join("lib/modules")).unwrap();
        std::fs::write(dir.join(INDEX_PATH), write_index(&sample()).unwrap()).unwrap();
        assert_eq!(read_index(&dir).unwrap(), Some(sample()));
        std::fs::write(dir.join(INDEX_PATH), "garbage\n").unwrap();
        let e = read_index(&dir).unwrap_err().to_string();
        assert!(e.contains("dockroot-modules.index") && e.contains("line 1"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn load_all_refuses_another_kernel() {
        let index = ModuleIndex { kernel: "0.0.0-not-this-kernel".into(), modules: vec![entry("a", &[], &[])] };
        let e = load_all(&index, Path::new("/nonexistent")).unwrap_err().to_string();
        assert!(e.contains("carries modules for 0.0.0-not-this-kernel but the running kernel is"), "{e}");
    }
}
