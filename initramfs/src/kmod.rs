//! Kernel module resolution on the host: which module files go into the
//! initramfs, and in which order the init loads them.
//!
//! Sources, in `/lib/modules/RELEASE/`:
//! - `modules.dep` (`kernel/fs/btrfs/btrfs.ko: kernel/crypto/xor.ko ...`): module
//!   paths and hard dependencies. Without it, the builder walks `kernel/` for
//!   `*.ko{,.xz,.zst,.gz}` files and reads dependencies from each module's
//!   `.modinfo` `depends=`.
//! - `modules.softdep` (`softdep NAME pre: A B post: C`) and each module's own
//!   `.modinfo` `softdep=` entries. As in modprobe, words before the first
//!   `pre:`/`post:` are ignored.
//! - `modules.alias` (`alias NAME MODULE`): a soft dependency or a requested name
//!   may be an alias (btrfs wants `crc32c`, which `crc32c_generic` and
//!   `crc32c_intel` provide). Only aliases that match the name exactly count
//!   (no wildcard patterns: those are for devices), and *every* module
//!   providing the alias is included, since which one works depends on the CPU.
//!   Device aliases (`bus:...` patterns) of the included modules go into the
//!   index for the init's modalias matching, and `--hostonly` matches this
//!   machine's modaliases against all of them. Without modules.alias, the
//!   aliases are read from every module's `.modinfo` (slow, only when needed).
//! - `modules.builtin` and `modules.builtin.modinfo`: modules and aliases built
//!   into the kernel are skipped with a note.
//!
//! Names compare with `-` and `_` equal. Every included module must carry the
//! vermagic of the kernel release. The load order puts hard dependencies and
//! pre-softdeps before a module and post-softdeps after it; ties are broken
//! by rank ([`load_ranks`]: what loads at every boot, then the drivers in the
//! order asked for, the likely root disks first, so the init starts those
//! first), then by the longest chain of loads that waits on a module, in
//! module bytes ([`critical_paths`]: btrfs's dependencies before the drivers'
//! and zstd_compress before raid6_pq), then by name; a cycle is an error
//! that names it.
//!
//! Each included module is loaded `always` if a module asked for as such
//! (filesystems, `--module` names) needs it, directly or not; the others
//! (drivers of the generic set, what `--hostonly` found in sysfs, and what
//! they need) only when a device's modalias asks for them at boot.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

use dockroot::error::{Context, Error, Result};
use dockroot::modules::{check_pattern, normalize_name, Alias, AliasTable, IndexEntry, Load, ModuleIndex};

use crate::compress::{decompress_module, module_suffix, read_capped, MODULE_MAX_BYTES};
use crate::elf;

/// The largest modules.* text file read (Debian's modules.alias is about 1.5 MiB).
pub const INDEX_FILE_MAX_BYTES: u64 = 64 << 20;
/// Bounds on the walk of `kernel/` when modules.dep is missing.
const WALK_MAX_FILES: usize = 500_000;
const WALK_MAX_DEPTH: usize = 32;

/// The module name of a module file path: its file name without `.ko` and a
/// compression suffix, with `-` as `_`. `None` if it is not a module file.
pub fn module_name_of(path: &str) -> Option<String> {
    let file = path.rsplit('/').next()?;
    let stem = match module_suffix(file) {
        Some(suffix) => file.strip_suffix(suffix)?,
        None => file,
    };
    let name = stem.strip_suffix(".ko")?;
    if name.is_empty() {
        return None;
    }
    Some(normalize_name(name))
}

fn check_relative(path: &str, what: &str) -> Result<()> {
    if path.is_empty() || !Path::new(path).components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(Error::msg(format!("{what}: module path {path:?} is not a clean relative path")));
    }
    Ok(())
}

/// Parsed modules.dep: name → relative path, and name → dependency names.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DepFile {
    pub paths: BTreeMap<String, String>,
    pub deps: BTreeMap<String, Vec<String>>,
}

/// Parse modules.dep. Absolute paths under `dir` (old depmod) are made relative.
pub fn parse_modules_dep(text: &str, dir: &Path) -> Result<DepFile> {
    let mut out = DepFile::default();
    let prefix = format!("{}/", dir.display());
    let rel = |p: &str, n: usize| -> Result<String> {
        let p = p.strip_prefix(prefix.as_str()).unwrap_or(p);
        check_relative(p, &format!("modules.dep line {n}"))?;
        Ok(p.to_owned())
    };
    for (i, line) in text.lines().enumerate() {
        let n = i.saturating_add(1);
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (module, deps) = line
            .split_once(':')
            .context(|| format!("modules.dep line {n}: expected `path: deps...`, found {line:?}"))?;
        let module = rel(module.trim(), n)?;
        let name = module_name_of(&module).context(|| format!("modules.dep line {n}: {module:?} is not a .ko file"))?;
        let mut dep_names = Vec::new();
        for dep in deps.split_whitespace() {
            let dep = rel(dep, n)?;
            let dep_name =
                module_name_of(&dep).context(|| format!("modules.dep line {n}: {dep:?} is not a .ko file"))?;
            out.paths.entry(dep_name.clone()).or_insert(dep);
            dep_names.push(dep_name);
        }
        out.paths.insert(name.clone(), module);
        out.deps.insert(name, dep_names);
    }
    Ok(out)
}

/// Soft dependencies of one module.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SoftDeps {
    pub pre: Vec<String>,
    pub post: Vec<String>,
    /// Words before any `pre:`/`post:` (modprobe ignores them too).
    pub ignored: Vec<String>,
}

/// Parse a softdep specification: `pre: a b post: c`.
pub fn parse_softdep_spec(spec: &str, into: &mut SoftDeps) {
    #[derive(PartialEq)]
    enum Mode {
        None,
        Pre,
        Post,
    }
    let mut mode = Mode::None;
    for word in spec.split_whitespace() {
        match word {
            "pre:" => mode = Mode::Pre,
            "post:" => mode = Mode::Post,
            w => match mode {
                Mode::Pre => into.pre.push(normalize_name(w)),
                Mode::Post => into.post.push(normalize_name(w)),
                Mode::None => into.ignored.push(w.to_owned()),
            },
        }
    }
}

/// Parse modules.softdep: module name → its softdep specifications.
pub fn parse_softdep_file(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("softdep") {
            continue;
        }
        let Some(name) = words.next() else { continue };
        out.entry(normalize_name(name)).or_default().push(words.collect::<Vec<_>>().join(" "));
    }
    out
}

/// True if an alias pattern has glob characters (a device alias, never an exact name).
fn is_pattern(alias: &str) -> bool {
    alias.contains(['*', '?', '['])
}

/// True if an alias is a device alias (`bus:...`): what a modalias can match.
/// Name aliases (`fs-btrfs`, `crypto-crc32c`, `char-major-10-234`) are not;
/// `devname:` aliases are for udev's static nodes, not devices.
pub fn is_device_alias(alias: &str) -> bool {
    alias.contains(':') && !alias.starts_with("devname:")
}

/// modules.alias, parsed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AliasFile {
    /// Exact (non-wildcard) aliases: alias → modules.
    pub exact: BTreeMap<String, BTreeSet<String>>,
    /// Device aliases: module → patterns, as written.
    pub device: BTreeMap<String, Vec<String>>,
}

impl AliasFile {
    fn add(&mut self, alias: &str, module: &str) {
        let module = normalize_name(module);
        if is_device_alias(alias) {
            self.device.entry(module.clone()).or_default().push(alias.to_owned());
        }
        if !is_pattern(alias) {
            self.exact.entry(normalize_name(alias)).or_default().insert(module);
        }
    }
}

/// Parse modules.alias: exact aliases (names) and device alias patterns.
pub fn parse_alias_file(text: &str) -> AliasFile {
    let mut out = AliasFile::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("alias") {
            continue;
        }
        let (Some(alias), Some(module)) = (words.next(), words.next()) else { continue };
        out.add(alias, module);
    }
    out
}

/// Parse modules.builtin: the names of built-in modules.
pub fn parse_builtin_file(text: &str) -> BTreeSet<String> {
    text.lines().filter_map(|l| module_name_of(l.trim())).collect()
}

/// Parse modules.builtin.modinfo (`name.key=value` strings separated by NULs):
/// exact aliases of built-in modules, alias → module names.
pub fn parse_builtin_modinfo(bytes: &[u8]) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for item in bytes.split(|&b| b == 0) {
        let item = String::from_utf8_lossy(item);
        let Some((key, alias)) = item.split_once('=') else { continue };
        let Some(module) = key.strip_suffix(".alias") else { continue };
        if !is_pattern(alias) {
            out.entry(normalize_name(alias)).or_default().insert(normalize_name(module));
        }
    }
    out
}

/// What a name resolves to in this kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Module files (one for a module name, all providers for an alias).
    Modules(Vec<String>),
    /// Built into the kernel (a module name or an alias of one).
    Builtin,
    /// Neither a module, nor an alias, nor built in.
    Absent,
}

/// A kernel's modules directory, read.
#[derive(Debug)]
pub struct KernelTree {
    /// The modules directory, `/lib/modules/RELEASE`.
    pub dir: PathBuf,
    /// The kernel release the modules must be built for.
    pub release: String,
    paths: BTreeMap<String, String>,
    /// Dependencies from modules.dep; `None` when it is missing.
    dep_file: Option<BTreeMap<String, Vec<String>>>,
    softdep_file: BTreeMap<String, Vec<String>>,
    /// Aliases; `None` until read when modules.alias is missing.
    aliases: Option<AliasFile>,
    builtin: BTreeSet<String>,
    builtin_aliases: BTreeMap<String, BTreeSet<String>>,
    /// Things worth telling the user (missing index files, duplicates...).
    pub notes: BTreeSet<String>,
}

fn read_text(path: &Path) -> Result<Option<String>> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::with(format!("reading {}", path.display()), e)),
        Ok(_) => {}
    }
    let bytes = read_capped(path, INDEX_FILE_MAX_BYTES)?;
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

/// Find module files under `dir/kernel` (without following symlinks): name → relative path.
fn walk_modules(dir: &Path, notes: &mut BTreeSet<String>) -> Result<BTreeMap<String, String>> {
    let mut found: BTreeMap<String, String> = BTreeMap::new();
    let mut stack = vec![(PathBuf::from("kernel"), 0usize)];
    let mut files = 0usize;
    while let Some((rel, depth)) = stack.pop() {
        let abs = dir.join(&rel);
        let entries = std::fs::read_dir(&abs).context(|| format!("listing {}", abs.display()))?;
        for entry in entries {
            let entry = entry.context(|| format!("listing {}", abs.display()))?;
            let kind = entry.file_type().context(|| format!("reading {}", entry.path().display()))?;
            let child = rel.join(entry.file_name());
            if kind.is_dir() {
                if depth >= WALK_MAX_DEPTH {
                    return Err(Error::msg(format!(
                        "{} is nested deeper than {WALK_MAX_DEPTH} levels",
                        entry.path().display()
                    )));
                }
                stack.push((child, depth.saturating_add(1)));
            } else if kind.is_file() {
                files = files.saturating_add(1);
                if files > WALK_MAX_FILES {
                    return Err(Error::msg(format!("more than {WALK_MAX_FILES} files under {}/kernel", dir.display())));
                }
                let Some(child) = child.to_str().map(str::to_owned) else { continue };
                let Some(name) = module_name_of(&child) else { continue };
                match found.get(&name) {
                    Some(other) if *other <= child => {
                        notes.insert(format!("two files for module {name}: using {other}, not {child}"));
                    }
                    Some(other) => {
                        notes.insert(format!("two files for module {name}: using {child}, not {other}"));
                        found.insert(name, child);
                    }
                    None => {
                        found.insert(name, child);
                    }
                }
            }
        }
    }
    Ok(found)
}

impl KernelTree {
    /// Read the index files of the modules directory `dir` for kernel `release`.
    pub fn open(dir: &Path, release: &str) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::msg(format!("kernel modules directory {} does not exist", dir.display())));
        }
        let mut notes = BTreeSet::new();
        let (paths, dep_file) = match read_text(&dir.join("modules.dep"))? {
            Some(text) => {
                let dep = parse_modules_dep(&text, dir).context(|| format!("in {}/modules.dep", dir.display()))?;
                (dep.paths, Some(dep.deps))
            }
            None => {
                notes.insert(format!(
                    "{}/modules.dep is missing: found modules by walking kernel/ and read dependencies from their .modinfo",
                    dir.display()
                ));
                (walk_modules(dir, &mut notes)?, None)
            }
        };
        let softdep_file = read_text(&dir.join("modules.softdep"))?.map(|t| parse_softdep_file(&t)).unwrap_or_default();
        let aliases = read_text(&dir.join("modules.alias"))?.map(|t| parse_alias_file(&t));
        let builtin = match read_text(&dir.join("modules.builtin"))? {
            Some(t) => parse_builtin_file(&t),
            None => {
                notes.insert(format!("{}/modules.builtin is missing: cannot tell built-in modules", dir.display()));
                BTreeSet::new()
            }
        };
        let builtin_modinfo = dir.join("modules.builtin.modinfo");
        let builtin_aliases = if builtin_modinfo.exists() {
            parse_builtin_modinfo(&read_capped(&builtin_modinfo, INDEX_FILE_MAX_BYTES)?)
        } else {
            BTreeMap::new()
        };
        Ok(KernelTree {
            dir: dir.to_owned(),
            release: release.to_owned(),
            paths,
            dep_file,
            softdep_file,
            aliases,
            builtin,
            builtin_aliases,
            notes,
        })
    }

    /// The aliases: modules.alias, or every module's `.modinfo` aliases when it is missing.
    fn aliases(&mut self) -> Result<&AliasFile> {
        if self.aliases.is_none() {
            self.notes.insert(format!(
                "{}/modules.alias is missing: read the aliases of {} modules from their .modinfo",
                self.dir.display(),
                self.paths.len()
            ));
            let mut file = AliasFile::default();
            for (name, rel) in &self.paths {
                let data = read_module(&self.dir, rel)?;
                let info = elf::modinfo(&data).map_err(|e| Error::msg(format!("module {name} ({rel}): {e}")))?;
                for alias in &info.aliases {
                    file.add(alias, name);
                }
            }
            self.aliases = Some(file);
        }
        self.aliases.as_ref().context(|| "module aliases not read")
    }

    /// The device alias patterns of module `name`, as written.
    pub fn device_aliases(&mut self, name: &str) -> Result<Vec<String>> {
        Ok(self.aliases()?.device.get(name).cloned().unwrap_or_default())
    }

    /// The filesystem types module `name` mounts (its `fs-TYPE` aliases, the
    /// kernel's `MODULE_ALIAS_FS`: ext4 mounts ext2, ext3 and ext4).
    pub fn filesystem_types(&mut self, name: &str) -> Result<Vec<String>> {
        Ok(self
            .aliases()?
            .exact
            .iter()
            .filter(|(alias, modules)| alias.starts_with("fs_") && modules.contains(name))
            .filter_map(|(alias, _)| alias.strip_prefix("fs_").map(str::to_owned))
            .collect())
    }

    /// A table of every device alias of this kernel's modules (for `--hostonly`).
    pub fn alias_table(&mut self) -> Result<AliasTable> {
        self.aliases()?;
        let paths = &self.paths;
        let file = self.aliases.as_ref().context(|| "module aliases not read")?;
        let pairs = file
            .device
            .iter()
            .filter(|(m, _)| paths.contains_key(*m))
            .flat_map(|(m, ps)| ps.iter().map(move |p| (p.as_str(), m.as_str())));
        Ok(AliasTable::new(pairs))
    }

    /// What `name` (a module name or an alias) is in this kernel.
    pub fn find(&mut self, name: &str) -> Result<Found> {
        let name = normalize_name(name);
        if self.paths.contains_key(&name) {
            return Ok(Found::Modules(vec![name]));
        }
        if self.builtin.contains(&name) {
            return Ok(Found::Builtin);
        }
        let providers: Vec<String> =
            self.aliases()?.exact.get(&name).map(|s| s.iter().cloned().collect()).unwrap_or_default();
        let providers: Vec<String> = providers.into_iter().filter(|m| self.paths.contains_key(m)).collect();
        if !providers.is_empty() {
            return Ok(Found::Modules(providers));
        }
        if self.builtin_aliases.contains_key(&name) {
            return Ok(Found::Builtin);
        }
        Ok(Found::Absent)
    }
}

fn read_module(dir: &Path, rel: &str) -> Result<Vec<u8>> {
    let path = dir.join(rel);
    decompress_module(&path, read_capped(&path, MODULE_MAX_BYTES)?)
}

/// A module going into the initramfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedModule {
    pub name: String,
    /// Its file in the modules directory, relative (possibly compressed).
    pub source: String,
    /// Its path in the initramfs: `lib/modules/RELEASE/...ko`, decompressed
    /// (or as shipped, `.ko.xz`..., with `keep_compressed`).
    pub image_path: String,
    /// The bytes that go into the image (plain, or as shipped with `keep_compressed`).
    pub data: Vec<u8>,
    /// When the init loads it.
    pub load: Load,
    /// Hard dependencies.
    pub deps: Vec<String>,
    /// Pre-softdeps: modules to load before it if they can be.
    pub pre: Vec<String>,
    /// Post-softdeps: modules to load after it.
    pub post: Vec<String>,
    /// Its device alias patterns.
    pub aliases: Vec<String>,
    /// Firmware files it names (`firmware=` in its modinfo).
    pub firmware: Vec<String>,
}

/// The modules and their load order.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub release: String,
    /// In load order.
    pub modules: Vec<PlannedModule>,
    /// Requested names (or soft dependencies) built into the kernel.
    pub builtin: BTreeSet<String>,
    /// Default-set names this kernel does not have.
    pub absent: BTreeSet<String>,
    pub notes: BTreeSet<String>,
}

impl Plan {
    /// The index the init reads.
    pub fn index(&self) -> ModuleIndex {
        ModuleIndex {
            kernel: self.release.clone(),
            modules: self
                .modules
                .iter()
                .map(|m| IndexEntry {
                    name: m.name.clone(),
                    path: m.image_path.clone(),
                    load: m.load,
                    deps: m.deps.clone(),
                    pre: m.pre.clone(),
                    post: m.post.clone(),
                })
                .collect(),
            aliases: self
                .modules
                .iter()
                .flat_map(|m| m.aliases.iter().map(|p| Alias { pattern: p.clone(), module: m.name.clone() }))
                .collect(),
        }
    }

    /// How many modules load `always`, and how many by modalias.
    pub fn counts(&self) -> (usize, usize) {
        let always = self.modules.iter().filter(|m| m.load == Load::Always).count();
        (always, self.modules.len().saturating_sub(always))
    }
}

/// What to include.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// Loaded at every boot (filesystems); a name this kernel lacks is skipped with a note.
    pub always: Vec<String>,
    /// Loaded at every boot (`--module` names); a name this kernel lacks is an error.
    pub required_always: Vec<String>,
    /// Loaded when a device asks for them (drivers of the generic set, or what
    /// `--hostonly` found); names this kernel lacks are skipped with a note. One
    /// without any device alias is loaded always, with a note.
    pub drivers: Vec<String>,
    /// Loaded before a mount of a filesystem type (the generic set): the type
    /// and the modules (or aliases) it needs, under the alias `fs-TYPE`; names
    /// this kernel lacks are skipped with a note.
    pub filesystems: Vec<(String, Vec<String>)>,
    /// Store modules as the kernel ships them (`.ko.xz`...) instead of decompressed.
    pub keep_compressed: bool,
}

struct Node {
    source: String,
    data: Vec<u8>,
    deps: BTreeSet<String>,
    pre: BTreeSet<String>,
    post: BTreeSet<String>,
    firmware: Vec<String>,
}

/// Resolve names to modules of `tree`: found modules go into `pending`.
fn resolve_roots(tree: &mut KernelTree, names: &[String], required: bool, plan: &mut Plan) -> Result<BTreeSet<String>> {
    let mut roots = BTreeSet::new();
    for name in names {
        match tree.find(name)? {
            Found::Modules(ms) => roots.extend(ms),
            Found::Builtin => {
                plan.builtin.insert(normalize_name(name));
            }
            Found::Absent if required => {
                return Err(Error::msg(format!(
                    "module {name} does not exist in kernel {} ({}): it is not in {}, not an alias and not built in",
                    tree.release,
                    tree.dir.display(),
                    if tree.dep_file.is_some() { "modules.dep" } else { "kernel/" }
                )));
            }
            Found::Absent => {
                plan.absent.insert(normalize_name(name));
            }
        }
    }
    Ok(roots)
}

/// Resolve the requested names and everything they need, and decide when
/// each loads (see the module docs).
pub fn plan(tree: &mut KernelTree, request: &Request) -> Result<Plan> {
    let mut plan = Plan { release: tree.release.clone(), ..Plan::default() };
    let mut always_roots = resolve_roots(tree, &request.required_always, true, &mut plan)?;
    always_roots.extend(resolve_roots(tree, &request.always, false, &mut plan)?);
    let driver_roots = resolve_roots(tree, &request.drivers, false, &mut plan)?;
    let driver_ranks = request_ranks(tree, &request.drivers)?;
    // `fs-TYPE` aliases: what the kernel's modules.alias says, and the extras asked for.
    let mut fs_aliases: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (fstype, names) in &request.filesystems {
        for m in resolve_roots(tree, names, false, &mut plan)? {
            fs_aliases.entry(m).or_default().insert(format!("fs-{fstype}"));
        }
    }
    for d in &driver_roots {
        if !always_roots.contains(d) && tree.device_aliases(d)?.is_empty() {
            plan.notes.insert(format!("module {d} has no device alias: it is loaded at every boot"));
            always_roots.insert(d.clone());
        }
    }
    let mut pending: BTreeSet<String> =
        always_roots.iter().chain(&driver_roots).chain(fs_aliases.keys()).cloned().collect();

    let mut nodes: BTreeMap<String, Node> = BTreeMap::new();
    while let Some(name) = pending.pop_first() {
        if nodes.contains_key(&name) {
            continue;
        }
        let rel = tree.paths.get(&name).cloned().context(|| format!("module {name} has no file"))?;
        let raw = read_capped(&tree.dir.join(&rel), MODULE_MAX_BYTES)?;
        let plain = decompress_module(&tree.dir.join(&rel), raw.clone())?;
        let info = elf::modinfo(&plain)
            .map_err(|e| Error::msg(format!("module {name} ({}/{rel}): {e}", tree.dir.display())))?;
        match info.release() {
            Some(r) if r == tree.release => {}
            Some(_) | None => {
                return Err(Error::msg(format!(
                    "module {name} ({}/{rel}) has vermagic {:?} but the kernel release is {}: it was built for another kernel \
                     (give --kernel-release if the directory name is not the release)",
                    tree.dir.display(),
                    info.vermagic.as_deref().unwrap_or(""),
                    tree.release
                )));
            }
        }

        let dep_names: Vec<String> = match &tree.dep_file {
            Some(deps) => deps.get(&name).cloned().unwrap_or_default(),
            None => info.depends.iter().map(|d| normalize_name(d)).collect(),
        };
        let mut deps = BTreeSet::new();
        for dep in dep_names {
            if tree.paths.contains_key(&dep) {
                deps.insert(dep);
            } else if tree.builtin.contains(&dep) {
                plan.builtin.insert(dep);
            } else {
                return Err(Error::msg(format!(
                    "module {name} depends on {dep}, which is neither a module of kernel {} nor built in",
                    tree.release
                )));
            }
        }

        let mut soft = SoftDeps::default();
        for spec in tree.softdep_file.get(&name).into_iter().flatten().chain(info.softdeps.iter()) {
            parse_softdep_spec(spec, &mut soft);
        }
        for word in &soft.ignored {
            plan.notes.insert(format!(
                "module {name}: ignored softdep word {word:?} (not after pre: or post:, as modprobe does)"
            ));
        }
        let resolve_soft = |names: &[String], tree: &mut KernelTree, plan: &mut Plan| -> Result<BTreeSet<String>> {
            let mut out = BTreeSet::new();
            for s in names {
                match tree.find(s)? {
                    Found::Modules(ms) => out.extend(ms.into_iter().filter(|m| *m != name)),
                    Found::Builtin => {
                        plan.builtin.insert(s.clone());
                    }
                    Found::Absent => {
                        plan.notes.insert(format!("module {name}: soft dependency {s} is not in this kernel, skipped"));
                    }
                }
            }
            Ok(out)
        };
        let pre: BTreeSet<String> =
            resolve_soft(&soft.pre, tree, &mut plan)?.into_iter().filter(|p| !deps.contains(p)).collect();
        let post = resolve_soft(&soft.post, tree, &mut plan)?;
        for m in deps.iter().chain(&pre).chain(&post) {
            if !nodes.contains_key(m) {
                pending.insert(m.clone());
            }
        }
        for fstype in tree.filesystem_types(&name)? {
            fs_aliases.entry(name.clone()).or_default().insert(format!("fs-{fstype}"));
        }
        let data = if request.keep_compressed { raw } else { plain };
        nodes.insert(name, Node { source: rel, data, deps, pre, post, firmware: info.firmware });
    }

    // What each module waits for: hard deps, pre-softdeps, and the modules naming it as post-softdep.
    let mut waits: BTreeMap<String, BTreeSet<String>> =
        nodes.iter().map(|(n, node)| (n.clone(), node.deps.iter().chain(&node.pre).cloned().collect())).collect();
    for (n, node) in &nodes {
        for p in &node.post {
            if let Some(w) = waits.get_mut(p) {
                w.insert(n.clone());
            }
        }
    }
    let brings: BTreeMap<String, BTreeSet<String>> = nodes
        .iter()
        .map(|(n, node)| (n.clone(), node.deps.iter().chain(&node.pre).chain(&node.post).cloned().collect()))
        .collect();
    let ranks = load_ranks(&brings, &always_roots, &driver_ranks);
    let costs: BTreeMap<String, u64> =
        nodes.iter().map(|(n, node)| (n.clone(), u64::try_from(node.data.len()).unwrap_or(u64::MAX))).collect();
    let order = topological_order(&waits, &ranks, &critical_paths(&waits, &costs))?;

    // `always`: the always roots and everything they bring along, but for a
    // filesystem module's own pre-softdeps: the init loads those before the
    // mount, as far as the superblock wants them (btrfs's checksum drivers).
    let mut always: BTreeSet<String> = BTreeSet::new();
    let mut stack: Vec<String> = always_roots.into_iter().collect();
    while let Some(n) = stack.pop() {
        if let Some(node) = nodes.get(&n) {
            if always.insert(n.clone()) {
                let pre = node.pre.iter().filter(|_| !fs_aliases.contains_key(&n));
                stack.extend(node.deps.iter().chain(pre).chain(&node.post).cloned());
            }
        }
    }

    for name in order {
        let node = nodes.remove(&name).context(|| format!("module {name} lost while ordering"))?;
        let stored = match module_suffix(&node.source) {
            Some(suffix) if !request.keep_compressed => {
                node.source.strip_suffix(suffix).unwrap_or(&node.source).to_owned()
            }
            _ => node.source.clone(),
        };
        let mut aliases = Vec::new();
        for pattern in tree.device_aliases(&name)? {
            match check_pattern(&pattern) {
                Ok(()) => aliases.push(pattern),
                Err(e) => {
                    plan.notes.insert(format!("module {name}: {e}: left out, as depmod does"));
                }
            }
        }
        aliases.extend(fs_aliases.remove(&name).into_iter().flatten());
        aliases.sort();
        aliases.dedup();
        plan.modules.push(PlannedModule {
            image_path: format!("lib/modules/{}/{stored}", tree.release),
            load: if always.contains(&name) { Load::Always } else { Load::Modalias },
            name,
            source: node.source,
            data: node.data,
            deps: node.deps.into_iter().collect(),
            pre: node.pre.into_iter().collect(),
            post: node.post.into_iter().collect(),
            aliases,
            firmware: node.firmware,
        });
    }
    plan.notes.extend(tree.notes.iter().cloned());
    Ok(plan)
}

/// The place of each module among the requested `names` (0 for the first
/// name): the first name that brings it. Names this kernel lacks are skipped.
fn request_ranks(tree: &mut KernelTree, names: &[String]) -> Result<BTreeMap<String, usize>> {
    let mut ranks = BTreeMap::new();
    for (i, name) in names.iter().enumerate() {
        if let Found::Modules(ms) = tree.find(name)? {
            for m in ms {
                ranks.entry(m).or_insert(i);
            }
        }
    }
    Ok(ranks)
}

/// Which modules the init should start first when several may start (the
/// index order is its tie-break): what loads at every boot (rank 0), then the
/// drivers in the order they were asked for (the generic set lists the likely
/// root disks first: virtio and NVMe before legacy IDE and USB), each with
/// what it `brings` along (deps, softdeps); everything else after them. A
/// module several bring takes the best rank among them.
pub fn load_ranks(
    brings: &BTreeMap<String, BTreeSet<String>>,
    always: &BTreeSet<String>,
    drivers: &BTreeMap<String, usize>,
) -> BTreeMap<String, usize> {
    let mut roots: Vec<(usize, &str)> = always.iter().map(|m| (0, m.as_str())).collect();
    roots.extend(drivers.iter().map(|(m, i)| (i.saturating_add(1), m.as_str())));
    roots.sort();
    let mut ranks: BTreeMap<String, usize> = BTreeMap::new();
    for (rank, root) in roots {
        let mut stack = vec![root];
        while let Some(m) = stack.pop() {
            if ranks.contains_key(m) || !brings.contains_key(m) {
                continue;
            }
            ranks.insert(m.to_owned(), rank);
            stack.extend(brings.get(m).into_iter().flatten().map(String::as_str));
        }
    }
    ranks
}

/// For each key of `waits`: its cost plus the costiest chain of names waiting
/// on it, directly or not (a name's "bottom level", as list schedulers rank
/// tasks). With module bytes as costs (the kernel hashes a module for its
/// signature and relocates it: the load's cost grows with its size), the
/// dependencies of a big module that waits (btrfs.ko, 3.8 MB) come before
/// a driver chain of small ones, and its biggest dependency first. A
/// cycle is cut (the names in it count once).
pub fn critical_paths(
    waits: &BTreeMap<String, BTreeSet<String>>,
    costs: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    let mut dependents: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (name, ws) in waits {
        for w in ws.iter().filter(|w| *w != name) {
            dependents.entry(w.as_str()).or_default().push(name);
        }
    }
    fn path<'a>(
        n: &'a str,
        dependents: &BTreeMap<&'a str, Vec<&'a str>>,
        costs: &BTreeMap<String, u64>,
        memo: &mut BTreeMap<&'a str, u64>,
        on_stack: &mut BTreeSet<&'a str>,
    ) -> u64 {
        if let Some(&p) = memo.get(n) {
            return p;
        }
        if !on_stack.insert(n) {
            return 0;
        }
        let mut longest = 0u64;
        for &d in dependents.get(n).into_iter().flatten() {
            longest = longest.max(path(d, dependents, costs, memo, on_stack));
        }
        on_stack.remove(n);
        let p = costs.get(n).copied().unwrap_or(0).saturating_add(longest);
        memo.insert(n, p);
        p
    }
    let mut memo: BTreeMap<&str, u64> = BTreeMap::new();
    let mut on_stack = BTreeSet::new();
    waits.keys().map(|n| (n.clone(), path(n, &dependents, costs, &mut memo, &mut on_stack))).collect()
}

/// Order the keys of `waits` so that every name comes after the names it waits
/// for; among those ready at the same time, by `ranks` (lowest first; a name
/// without one last), then by `paths` (longest first: [`critical_paths`]),
/// then by name. A cycle is an error naming it.
pub fn topological_order(
    waits: &BTreeMap<String, BTreeSet<String>>,
    ranks: &BTreeMap<String, usize>,
    paths: &BTreeMap<String, u64>,
) -> Result<Vec<String>> {
    let rank = |name: &str| {
        (ranks.get(name).copied().unwrap_or(usize::MAX), std::cmp::Reverse(paths.get(name).copied().unwrap_or(0)))
    };
    let mut remaining: BTreeMap<&str, usize> = BTreeMap::new();
    let mut dependents: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (name, ws) in waits {
        let ws: Vec<&str> = ws.iter().map(String::as_str).filter(|w| waits.contains_key(*w) && *w != name).collect();
        remaining.insert(name, ws.len());
        for w in ws {
            dependents.entry(w).or_default().push(name);
        }
    }
    let mut ready: BTreeSet<((usize, std::cmp::Reverse<u64>), &str)> =
        remaining.iter().filter(|(_, n)| **n == 0).map(|(k, _)| (rank(k), *k)).collect();
    let mut order = Vec::new();
    while let Some((_, name)) = ready.pop_first() {
        remaining.remove(name);
        order.push(name.to_owned());
        for d in dependents.get(name).into_iter().flatten() {
            if let Some(n) = remaining.get_mut(d) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    ready.insert((rank(d), d));
                }
            }
        }
    }
    if remaining.is_empty() {
        return Ok(order);
    }
    // Every module left waits for another one left: follow those waits to a cycle.
    let mut path: Vec<&str> = Vec::new();
    let mut current = *remaining.keys().next().context(|| "no module left in the cycle")?;
    loop {
        if let Some(start) = path.iter().position(|p| *p == current) {
            let mut cycle: Vec<&str> = path.get(start..).unwrap_or_default().to_vec();
            cycle.push(current);
            return Err(Error::msg(format!(
                "kernel module dependency cycle: {} (each waits for the next, through modules.dep or softdeps)",
                cycle.join(" -> ")
            )));
        }
        path.push(current);
        let next = waits
            .get(current)
            .into_iter()
            .flatten()
            .map(String::as_str)
            .find(|w| remaining.contains_key(w) && *w != current);
        current = next.context(|| format!("module {current} left unordered without a cycle"))?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_module_files() {
        assert_eq!(module_name_of("kernel/arch/x86/crypto/crc32c-intel.ko.xz").as_deref(), Some("crc32c_intel"));
        assert_eq!(module_name_of("kernel/fs/btrfs/btrfs.ko").as_deref(), Some("btrfs"));
        assert_eq!(module_name_of("btrfs.ko.zst").as_deref(), Some("btrfs"));
        assert_eq!(module_name_of("kernel/fs/btrfs/README"), None);
        assert_eq!(module_name_of("x/.ko"), None);
    }

    #[test]
    fn parses_modules_dep() {
        let text = "kernel/fs/btrfs/btrfs.ko.xz: kernel/crypto/xor.ko.xz kernel/lib/libcrc32c.ko.xz\n\
                    kernel/crypto/xor.ko.xz:\n# comment\n\n\
                    /lib/modules/6.1/kernel/lib/libcrc32c.ko.xz:\n";
        let dep = parse_modules_dep(text, Path::new("/lib/modules/6.1")).unwrap();
        assert_eq!(dep.paths["btrfs"], "kernel/fs/btrfs/btrfs.ko.xz");
        assert_eq!(dep.paths["libcrc32c"], "kernel/lib/libcrc32c.ko.xz");
        assert_eq!(dep.deps["btrfs"], ["xor", "libcrc32c"]);
        assert!(dep.deps["xor"].is_empty());
        let e = parse_modules_dep("a.ko: b.ko\nno colon here\n", Path::new("/x")).unwrap_err().to_string();
        assert!(e.starts_with("modules.dep line 2:"), "{e}");
        let e = parse_modules_dep("../a.ko:\n", Path::new("/x")).unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("not a clean relative path"), "{e}");
    }

    #[test]
    fn parses_softdeps_like_modprobe() {
        let map = parse_softdep_file(
            "# Soft dependencies extracted from modules themselves.\n\
             softdep ext4 pre: crypto-crc32c\nsoftdep cifs gcm\nsoftdep usb-storage pre: a post: b c\n",
        );
        assert_eq!(map["ext4"], ["pre: crypto-crc32c"]);
        let mut s = SoftDeps::default();
        parse_softdep_spec(&map["usb_storage"][0], &mut s);
        assert_eq!((s.pre, s.post), (vec!["a".to_string()], vec!["b".to_string(), "c".to_string()]));
        let mut s = SoftDeps::default();
        parse_softdep_spec(&map["cifs"][0], &mut s);
        assert_eq!(s.ignored, ["gcm"]);
        assert!(s.pre.is_empty() && s.post.is_empty());
    }

    #[test]
    fn parses_aliases_exactly_and_builtins() {
        let a = parse_alias_file(
            "alias crc32c crc32c_intel\nalias crc32c crc32c_generic\nalias crypto-crc32c crc32c-intel\n\
             alias cpu:type:x86,ven*fam*mod*:feature:*0094* crc32c_intel\nalias devname:btrfs-control btrfs\n\
             alias pci:v00001AF4d00001001sv*sd*bc*sc*i* virtio-blk\nalias virtio:d00000002v* virtio_blk\n\
             alias acpi*:PNP0D40:* sdhci_acpi\nalias fs-btrfs btrfs\n",
        );
        assert_eq!(a.exact["crc32c"].iter().collect::<Vec<_>>(), ["crc32c_generic", "crc32c_intel"]);
        assert_eq!(a.exact["crypto_crc32c"].iter().collect::<Vec<_>>(), ["crc32c_intel"]);
        assert_eq!(a.exact["fs_btrfs"].iter().collect::<Vec<_>>(), ["btrfs"]);
        assert_eq!(a.exact.len(), 4, "wildcard aliases are not names: {:?}", a.exact.keys());
        // Device aliases by module, as written; names and devname: are not device aliases.
        assert_eq!(a.device["crc32c_intel"], ["cpu:type:x86,ven*fam*mod*:feature:*0094*"]);
        assert_eq!(a.device["virtio_blk"], ["pci:v00001AF4d00001001sv*sd*bc*sc*i*", "virtio:d00000002v*"]);
        assert_eq!(a.device["sdhci_acpi"], ["acpi*:PNP0D40:*"]);
        assert!(!a.device.contains_key("btrfs"));
        assert_eq!(a.device.len(), 3);
        let b = parse_builtin_file("kernel/crypto/sha256_generic.ko\nkernel/drivers/nvmem/nvmem_core.ko\n");
        assert!(b.contains("sha256_generic") && b.contains("nvmem_core"));
        let bm = parse_builtin_modinfo(b"sha256_generic.alias=sha256\0sha256_generic.license=GPL\0x.alias=pci:v*\0");
        assert_eq!(bm.keys().collect::<Vec<_>>(), ["sha256"]);
    }

    fn waits(pairs: &[(&str, &[&str])]) -> BTreeMap<String, BTreeSet<String>> {
        pairs.iter().map(|(n, ws)| (n.to_string(), ws.iter().map(|w| w.to_string()).collect())).collect()
    }

    #[test]
    fn topological_order_is_deterministic() {
        let w = waits(&[
            ("btrfs", &["xor", "libcrc32c", "crc32c_generic"]),
            ("xor", &[]),
            ("libcrc32c", &[]),
            ("crc32c_generic", &[]),
            ("a", &[]),
        ]);
        assert_eq!(
            topological_order(&w, &BTreeMap::new(), &BTreeMap::new()).unwrap(),
            ["a", "crc32c_generic", "libcrc32c", "xor", "btrfs"]
        );
        let w = waits(&[("c", &["b"]), ("b", &["a"]), ("a", &[])]);
        assert_eq!(topological_order(&w, &BTreeMap::new(), &BTreeMap::new()).unwrap(), ["a", "b", "c"]);
    }

    #[test]
    fn likely_root_drivers_come_first_with_what_they_wait_for() {
        let w = waits(&[
            ("btrfs", &["xor"]),
            ("xor", &[]),
            ("ata_piix", &["libata"]),
            ("libata", &["scsi_mod"]),
            ("scsi_mod", &["scsi_common"]),
            ("scsi_common", &[]),
            ("virtio_scsi", &["scsi_mod", "virtio"]),
            ("virtio_blk", &["virtio"]),
            ("virtio", &[]),
            ("nls_utf8", &[]),
        ]);
        let always: BTreeSet<String> = ["btrfs".to_string()].into();
        let drivers: BTreeMap<String, usize> =
            [("virtio_blk", 0), ("virtio_scsi", 1), ("ata_piix", 2)].map(|(m, i)| (m.to_string(), i)).into();
        let ranks = load_ranks(&w, &always, &drivers);
        assert_eq!((ranks["xor"], ranks["virtio"], ranks["scsi_mod"], ranks["libata"]), (0, 1, 2, 3));
        assert!(!ranks.contains_key("nls_utf8"));
        assert_eq!(
            topological_order(&w, &ranks, &BTreeMap::new()).unwrap(),
            [
                "xor",
                "btrfs",
                "virtio",
                "virtio_blk",
                "scsi_common",
                "scsi_mod",
                "virtio_scsi",
                "libata",
                "ata_piix",
                "nls_utf8"
            ]
        );
    }

    #[test]
    fn ties_go_to_the_longest_chain_of_bytes_waiting() {
        let w = waits(&[
            ("zstd_compress", &[]),
            ("raid6_pq", &[]),
            ("crc32c_generic", &[]),
            ("libcrc32c", &["crc32c_generic"]),
            ("btrfs", &["libcrc32c", "raid6_pq", "zstd_compress"]),
            ("virtio_ring", &[]),
            ("virtio", &["virtio_ring"]),
            ("virtio_blk", &["virtio"]),
        ]);
        let kb = |k: u64| k * 1024;
        let costs: BTreeMap<String, u64> = [
            ("zstd_compress", kb(436)),
            ("raid6_pq", kb(147)),
            ("crc32c_generic", kb(10)),
            ("libcrc32c", kb(8)),
            ("btrfs", kb(3782)),
            ("virtio_ring", kb(77)),
            ("virtio", kb(33)),
            ("virtio_blk", kb(58)),
        ]
        .map(|(m, c)| (m.to_string(), c))
        .into();
        let paths = critical_paths(&w, &costs);
        assert_eq!(paths["btrfs"], kb(3782));
        assert_eq!(paths["crc32c_generic"], kb(10 + 8 + 3782));
        assert_eq!(paths["virtio_ring"], kb(77 + 33 + 58));
        // All rank 0: btrfs's chain first, its biggest dependency first; the
        // drivers' chain after it.
        let ranks: BTreeMap<String, usize> = w.keys().map(|m| (m.clone(), 0)).collect();
        assert_eq!(
            topological_order(&w, &ranks, &paths).unwrap(),
            [
                "zstd_compress",
                "raid6_pq",
                "crc32c_generic",
                "libcrc32c",
                "btrfs",
                "virtio_ring",
                "virtio",
                "virtio_blk"
            ]
        );
        // Ranks still come first: the drivers asked for first.
        let ranks: BTreeMap<String, usize> =
            w.keys().map(|m| (m.clone(), usize::from(!m.starts_with("virtio")))).collect();
        assert_eq!(topological_order(&w, &ranks, &paths).unwrap()[..3], ["virtio_ring", "virtio", "virtio_blk"]);
        // A cycle counts each name once and ends.
        let cyclic = waits(&[("a", &["b"]), ("b", &["a"])]);
        let one: BTreeMap<String, u64> = [("a".to_string(), 1), ("b".to_string(), 1)].into();
        assert!(critical_paths(&cyclic, &one).values().all(|&p| p <= 2));
    }

    #[test]
    fn cycles_are_named() {
        let w = waits(&[("a", &["b"]), ("b", &["c"]), ("c", &["a"]), ("d", &[]), ("e", &["a"])]);
        let e = topological_order(&w, &BTreeMap::new(), &BTreeMap::new()).unwrap_err().to_string();
        assert!(e.starts_with("kernel module dependency cycle: a -> b -> c -> a"), "{e}");
        let w = waits(&[("x", &["x"])]);
        assert_eq!(
            topological_order(&w, &BTreeMap::new(), &BTreeMap::new()).unwrap(),
            ["x"],
            "a module waiting for itself is no cycle"
        );
    }
}
