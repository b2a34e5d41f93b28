//! Kernel modules in the initramfs: the index the builder writes, the alias
//! matching that picks drivers for the hardware present, and the parallel
//! loader PID 1 runs at boot.
//!
//! # The index
//!
//! The builder (`dockroot-mkinitramfs`) resolves dependencies on the host and
//! writes [`INDEX_PATH`], a small text file:
//!
//! ```text
//! dockroot-modules 2
//! kernel 6.1.0-56-amd64
//! module libcrc32c lib/modules/6.1.0-56-amd64/kernel/lib/libcrc32c.ko always deps= pre= post=
//! module btrfs lib/modules/6.1.0-56-amd64/kernel/fs/btrfs/btrfs.ko always deps=libcrc32c,xor pre=crc32c_generic post=
//! module virtio_blk lib/modules/6.1.0-56-amd64/kernel/drivers/block/virtio_blk.ko modalias deps=virtio_ring pre= post=
//! alias virtio:d00000002v* virtio_blk
//! ```
//!
//! The first line names the format and its version, the second the kernel
//! release the modules were built for. Each `module` line gives the module's
//! name (with `_`, as the kernel names it), its path inside the initramfs
//! (relative, no `..`; a `.ko.xz`/`.ko.zst`/`.ko.gz` file is loaded as such),
//! when to load it (`always`, or `modalias`: only when a device asks for it),
//! the modules it needs (`deps=`: hard dependencies, from modules.dep), the ones
//! to load before it if they can be (`pre=`: pre-softdeps) and the ones to load
//! after it (`post=`: post-softdeps). Every name in `deps=`/`pre=` is listed on
//! an earlier line and every name in `post=` on a later one, so line order is a
//! load order. An `alias` line gives a device alias pattern of a listed module,
//! as in the kernel's modules.alias (glob patterns: `*`, `?`, `[...]`).
//!
//! # At boot
//!
//! An [`Autoloader`] checks the release against the running kernel, loads the
//! `always` modules ([`Autoloader::load_unconditional`]), walks
//! `/sys/devices/**/modalias` ([`Autoloader::coldplug`]) and loads the modules
//! whose patterns match, matching as modprobe does; the boot driver passes it
//! the MODALIAS of every later uevent ([`Autoloader::on_modalias`]) so a device
//! that appears later gets its driver too. Each request loads the modules with
//! their dependencies and softdeps, each module at most once, in parallel on a
//! few threads where the dependencies allow.
//!
//! A module that is already loaded is fine; one that fails is reported and the
//! boot goes on (the missing driver shows up later as a missing device, with
//! this report on the console); the modules that need a failed one are skipped.
//! A failed *soft* dependency (say `crc32c_intel` on a CPU without SSE 4.2) does
//! not stop the modules waiting for it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::io::Errno;

use crate::error::{Context, Error, Result};

/// Where the builder puts the index, relative to the initramfs root.
pub const INDEX_PATH: &str = "lib/modules/dockroot-modules.index";

/// The first line of an index this code reads and writes.
pub const INDEX_HEADER: &str = "dockroot-modules 2";

/// The largest index [`read_index`] accepts (every module of a distribution
/// kernel with all its aliases is about 2 MiB).
pub const INDEX_MAX_BYTES: u64 = 8 << 20;

/// The longest diagnostic line made of modalias strings (one longer modalias gets a line of its own).
pub const DIAGNOSTIC_LINE_BYTES: usize = 400;

/// Modalias buses left out of [`Autoloader::unmatched`]: their modules pick
/// optional CPU-accelerated code, DMI quirks and input handlers, never a
/// disk's driver.
pub const NOT_DISK_BUSES: &[&str] = &["cpu:", "dmi:", "input:"];

/// The most modules loading at the same time.
pub const MAX_WORKERS: usize = 4;

/// `finit_module` flag: the file is compressed, the kernel decompresses it.
pub const MODULE_INIT_COMPRESSED_FILE: i32 = 4;

/// A string only an init built with the `decompress-modules` feature carries (it is
/// logged at start only there, so only there is it in the binary): the builder looks
/// for it to tell whether the `--init` it packs decompresses modules itself
/// (`dockroot-mkinitramfs --keep-compressed`).
pub const DECOMPRESS_MARKER: &str = "dockroot-init-feature: decompress-modules (xz zstd gzip)";

/// A module name as the kernel spells it: `-` becomes `_`
/// (`crc32c-intel.ko` is the module `crc32c_intel`).
pub fn normalize_name(name: &str) -> String {
    name.replace('-', "_")
}

/// When the init loads a module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Load {
    /// At every boot (filesystems, modules asked for by name, what they need).
    Always,
    /// Only when a device's modalias matches one of its aliases (or a module
    /// being loaded needs it).
    Modalias,
}

impl Load {
    /// The word in the index.
    pub fn word(self) -> &'static str {
        match self {
            Load::Always => "always",
            Load::Modalias => "modalias",
        }
    }

    fn parse(word: &str) -> Option<Load> {
        match word {
            "always" => Some(Load::Always),
            "modalias" => Some(Load::Modalias),
            _ => None,
        }
    }
}

/// The parsed index: which kernel the modules are for, the modules in load
/// order, and the device aliases of those modules.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ModuleIndex {
    /// The kernel release (`uname -r`) the modules were built for.
    pub kernel: String,
    /// The modules, in an order where every module comes after those it waits for.
    pub modules: Vec<IndexEntry>,
    /// Device alias patterns of listed modules.
    pub aliases: Vec<Alias>,
}

/// One module of the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    /// The module's name, `_` not `-`.
    pub name: String,
    /// Its file, relative to the initramfs root.
    pub path: String,
    /// When to load it.
    pub load: Load,
    /// Modules it cannot load without (hard dependencies).
    pub deps: Vec<String>,
    /// Modules to load before it if they can be (pre-softdeps).
    pub pre: Vec<String>,
    /// Modules to load after it (post-softdeps): they wait for it.
    pub post: Vec<String>,
}

/// A device alias pattern (`pci:v00001AF4d00001001sv*sd*bc*sc*i*`) and the module it names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Alias {
    pub pattern: String,
    pub module: String,
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

/// Check an alias pattern can be written and matched: no white space, and
/// brackets that close (modprobe's own index drops those that do not).
pub fn check_pattern(pattern: &str) -> std::result::Result<(), String> {
    if pattern.is_empty() || pattern.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("alias {pattern:?} is empty or contains white space"));
    }
    if normalize_alias(pattern).is_none() {
        return Err(format!("alias {pattern:?} has an unmatched bracket"));
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
    for dep in entry.deps.iter().chain(&entry.pre) {
        check_name(dep)?;
        if !seen.contains_key(dep.as_str()) {
            return Err(format!("module {} waits for {dep}, which is not listed before it", entry.name));
        }
    }
    for post in &entry.post {
        check_name(post)?;
        if seen.contains_key(post.as_str()) || *post == entry.name {
            return Err(format!("module {} has {post} as post-softdep, which must be listed after it", entry.name));
        }
    }
    Ok(())
}

/// Check that every `post=` name is listed (after its module: `check_entry` saw to that).
fn check_posts<'a>(
    modules: impl Iterator<Item = (&'a IndexEntry, usize)>,
    names: &BTreeMap<&str, usize>,
) -> std::result::Result<(), (usize, String)> {
    for (entry, line) in modules {
        if let Some(missing) = entry.post.iter().find(|p| !names.contains_key(p.as_str())) {
            return Err((line, format!("module {} has post-softdep {missing}, which is not listed", entry.name)));
        }
    }
    Ok(())
}

/// Write `index` in the text format described in the module docs.
///
/// Fails if a name, path or pattern cannot be written unambiguously (white
/// space, commas, absolute paths...) or the order is not a load order.
pub fn write_index(index: &ModuleIndex) -> Result<String> {
    let fail = |e: String| Error::msg(format!("cannot write the module index: {e}"));
    check_release(&index.kernel).map_err(fail)?;
    let mut out = format!("{INDEX_HEADER}\nkernel {}\n", index.kernel);
    let mut seen = BTreeMap::new();
    for (i, entry) in index.modules.iter().enumerate() {
        // Line numbers as the parser would report them.
        let line = i.saturating_add(3);
        check_entry(entry, &seen).map_err(fail)?;
        seen.insert(entry.name.as_str(), line);
        out.push_str(&format!(
            "module {} {} {} deps={} pre={} post={}\n",
            entry.name,
            entry.path,
            entry.load.word(),
            entry.deps.join(","),
            entry.pre.join(","),
            entry.post.join(",")
        ));
    }
    check_posts(index.modules.iter().map(|m| (m, 0)), &seen).map_err(|(_, e)| fail(e))?;
    for alias in &index.aliases {
        check_pattern(&alias.pattern).map_err(fail)?;
        if !seen.contains_key(alias.module.as_str()) {
            return Err(fail(format!("alias {} names module {}, which is not listed", alias.pattern, alias.module)));
        }
        out.push_str(&format!("alias {} {}\n", alias.pattern, alias.module));
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

    let mut index = ModuleIndex { kernel, modules: Vec::new(), aliases: Vec::new() };
    let mut lines_of: Vec<usize> = Vec::new();
    // Names borrowed from `text`: one map for the whole parse (rebuilding it per
    // line made parsing quadratic in the number of modules).
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for (n, line) in lines {
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(' ').collect();
        match fields.first().copied() {
            Some("module") => {}
            Some("alias") => {
                let [_, pattern, module] = fields.as_slice() else {
                    return Err(bad(n, format!("expected `alias PATTERN MODULE`, found {line:?}")));
                };
                check_pattern(pattern).map_err(|e| bad(n, e))?;
                if !seen.contains_key(*module) {
                    return Err(bad(
                        n,
                        format!("alias {pattern} names module {module}, which is not listed before it"),
                    ));
                }
                index.aliases.push(Alias { pattern: (*pattern).to_owned(), module: (*module).to_owned() });
                continue;
            }
            _ => return Err(bad(n, format!("expected a `module` or `alias` line, found {line:?}"))),
        }
        let [_, name, path, load, deps, pre, post] = fields.as_slice() else {
            return Err(bad(
                n,
                format!("expected `module NAME PATH always|modalias deps=A,B pre=C post=D`, found {line:?}"),
            ));
        };
        let load =
            Load::parse(load).ok_or_else(|| bad(n, format!("expected `always` or `modalias`, found {load:?}")))?;
        let entry = IndexEntry {
            name: (*name).to_owned(),
            path: (*path).to_owned(),
            load,
            deps: split_list(deps, "deps=").map_err(|e| bad(n, e))?,
            pre: split_list(pre, "pre=").map_err(|e| bad(n, e))?,
            post: split_list(post, "post=").map_err(|e| bad(n, e))?,
        };
        check_entry(&entry, &seen).map_err(|e| bad(n, e))?;
        seen.insert(name, n);
        lines_of.push(n);
        index.modules.push(entry);
    }
    check_posts(index.modules.iter().zip(lines_of.iter().copied()), &seen).map_err(|(n, e)| bad(n, e))?;
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

// ---------------------------------------------------------------------------
// Alias matching, as modprobe does it.

/// Normalise an alias or a modalias the way kmod does before matching
/// (`alias_normalize`): `-` becomes `_` outside brackets; `None` for an
/// unmatched `]` or an unterminated `[` (kmod refuses those).
pub fn normalize_alias(alias: &str) -> Option<String> {
    let mut out = String::with_capacity(alias.len());
    let mut chars = alias.chars();
    while let Some(c) = chars.next() {
        match c {
            '-' => out.push('_'),
            ']' => return None,
            '[' => {
                out.push('[');
                loop {
                    let c = chars.next()?;
                    out.push(c);
                    if c == ']' {
                        break;
                    }
                }
            }
            c => out.push(c),
        }
    }
    Some(out)
}

/// Does `class` (the name inside `[:name:]`) contain byte `c`? As in the C locale.
fn in_class(class: &[u8], c: u8) -> Option<bool> {
    Some(match class {
        b"alnum" => c.is_ascii_alphanumeric(),
        b"alpha" => c.is_ascii_alphabetic(),
        b"blank" => c == b' ' || c == b'\t',
        b"cntrl" => c.is_ascii_control(),
        b"digit" => c.is_ascii_digit(),
        b"graph" => c.is_ascii_graphic(),
        b"lower" => c.is_ascii_lowercase(),
        b"print" => c.is_ascii_graphic() || c == b' ',
        b"punct" => c.is_ascii_punctuation(),
        b"space" => c.is_ascii_whitespace() || c == 0x0b,
        b"upper" => c.is_ascii_uppercase(),
        b"xdigit" => c.is_ascii_hexdigit(),
        _ => return None,
    })
}

/// Match one bracket expression starting just after `[` at `p[start..]`
/// against `c`. Returns whether it matched and the index just after the
/// closing `]`, or `None` if the bracket does not close (then `[` is literal).
fn match_bracket(p: &[u8], start: usize, c: u8) -> Option<(bool, usize)> {
    let mut i = start;
    let negate = matches!(p.get(i), Some(b'!' | b'^'));
    if negate {
        i = i.checked_add(1)?;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let mut lo = *p.get(i)?;
        if lo == b']' && !first {
            return Some((matched != negate, i.checked_add(1)?));
        }
        first = false;
        i = i.checked_add(1)?;
        if lo == b'[' && p.get(i) == Some(&b':') {
            // A character class: [:alpha:].
            let name_start = i.checked_add(1)?;
            let rest = p.get(name_start..)?;
            let len = rest.windows(2).position(|w| w == b":]")?;
            let name = rest.get(..len)?;
            matched |= in_class(name, c).unwrap_or(false);
            i = name_start.checked_add(len)?.checked_add(2)?;
            continue;
        }
        if lo == b'\\' {
            lo = *p.get(i)?;
            i = i.checked_add(1)?;
        }
        // A range a-z (a `-` before the closing `]` is literal).
        if p.get(i) == Some(&b'-') && p.get(i.checked_add(1)?).is_some_and(|&n| n != b']') {
            let mut hi_at = i.checked_add(1)?;
            let mut hi = *p.get(hi_at)?;
            if hi == b'\\' {
                hi_at = hi_at.checked_add(1)?;
                hi = *p.get(hi_at)?;
            }
            matched |= lo <= c && c <= hi;
            i = hi_at.checked_add(1)?;
        } else {
            matched |= lo == c;
        }
    }
}

/// fnmatch(3) with no flags, in the C locale: `*` matches any run of bytes
/// (including `/` and a leading `.`), `?` one byte, `[...]` a bracket
/// expression (`!`/`^` negate, ranges, `[:class:]`, a leading `]` is literal,
/// an unterminated `[` is a literal `[`), and `\` escapes the next byte (a
/// trailing `\` matches nothing). This is what modprobe uses for modalias
/// patterns.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0usize, 0usize);
    // Where to resume after the last `*`: (pattern index after the star, text index it tries next).
    let mut star: Option<(usize, usize)> = None;
    loop {
        let step = match p.get(pi) {
            None if ti == t.len() => return true,
            None => None,
            Some(b'*') => {
                // Collapse runs of stars.
                let mut next = pi;
                while p.get(next) == Some(&b'*') {
                    next = next.saturating_add(1);
                }
                if next == p.len() {
                    return true;
                }
                star = Some((next, ti));
                pi = next;
                continue;
            }
            Some(&pc) => match t.get(ti) {
                None => None,
                Some(&tc) => match pc {
                    b'?' => Some(pi.saturating_add(1)),
                    b'[' => match match_bracket(p, pi.saturating_add(1), tc) {
                        Some((true, after)) => Some(after),
                        Some((false, _)) => None,
                        None => (tc == b'[').then(|| pi.saturating_add(1)),
                    },
                    b'\\' => match p.get(pi.saturating_add(1)) {
                        Some(&esc) if esc == tc => Some(pi.saturating_add(2)),
                        _ => None,
                    },
                    _ => (pc == tc).then(|| pi.saturating_add(1)),
                },
            },
        };
        match step {
            Some(next) => {
                pi = next;
                ti = ti.saturating_add(1);
            }
            None => match star {
                // Let the last star take one more byte and try again.
                Some((after_star, tried)) if tried < t.len() => {
                    let retry = tried.saturating_add(1);
                    star = Some((after_star, retry));
                    pi = after_star;
                    ti = retry;
                }
                _ => return false,
            },
        }
    }
}

/// The literal bus prefix of a normalised pattern (`pci:` of `pci:v*`), used to
/// try only the patterns that can match. `None` if the pattern has a glob
/// character before its first `:`.
fn bus_prefix(pattern: &str) -> Option<&str> {
    let colon = pattern.find(':')?;
    let prefix = pattern.get(..=colon)?;
    (!prefix.contains(['*', '?', '[', '\\'])).then_some(prefix)
}

/// Alias patterns, normalised, grouped by bus for quick lookups.
#[derive(Debug, Clone, Default)]
pub struct AliasTable {
    by_bus: BTreeMap<String, Vec<(String, String)>>,
    /// Patterns without a literal bus prefix: tried for every modalias.
    other: Vec<(String, String)>,
    len: usize,
}

impl AliasTable {
    /// Build the table from (pattern, module) pairs. Patterns kmod would
    /// refuse (unbalanced brackets) are left out, as depmod does.
    pub fn new<'a>(aliases: impl IntoIterator<Item = (&'a str, &'a str)>) -> AliasTable {
        let mut table = AliasTable::default();
        for (pattern, module) in aliases {
            let Some(norm) = normalize_alias(pattern) else { continue };
            let item = (norm.clone(), normalize_name(module));
            match bus_prefix(&norm) {
                Some(bus) => table.by_bus.entry(bus.to_owned()).or_default().push(item),
                None => table.other.push(item),
            }
            table.len = table.len.saturating_add(1);
        }
        table
    }

    /// The table of an index's aliases.
    pub fn of_index(index: &ModuleIndex) -> AliasTable {
        AliasTable::new(index.aliases.iter().map(|a| (a.pattern.as_str(), a.module.as_str())))
    }

    /// How many patterns the table holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if the table holds no pattern.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every module with a pattern matching `modalias`, sorted, each once.
    /// A modalias kmod would refuse (an unmatched bracket) matches nothing.
    pub fn lookup(&self, modalias: &str) -> Vec<String> {
        let Some(norm) = normalize_alias(modalias) else { return Vec::new() };
        let bus = norm.find(':').and_then(|i| norm.get(..=i));
        let candidates = bus.and_then(|b| self.by_bus.get(b)).into_iter().flatten().chain(&self.other);
        let found: BTreeSet<&str> = candidates.filter(|(p, _)| glob_match(p, &norm)).map(|(_, m)| m.as_str()).collect();
        found.into_iter().map(str::to_owned).collect()
    }
}

// ---------------------------------------------------------------------------
// Outcomes and reports.

/// What happened to one load attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// finit_module/init_module succeeded.
    Loaded,
    /// The module was loaded already (EEXIST, or /sys/module/NAME/initstate is `live`).
    AlreadyPresent,
    /// Opening or loading failed with this errno.
    Failed(Errno),
    /// The module could not be loaded at all, for the reason given (a
    /// compression neither the kernel nor this init can undo, say).
    Unsupported(String),
}

/// Why a module failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    Errno(Errno),
    Unsupported(String),
}

/// A module that failed to load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub name: String,
    pub path: String,
    pub cause: Cause,
}

impl Failure {
    /// The errno, if the kernel gave one.
    pub fn errno(&self) -> Option<Errno> {
        match self.cause {
            Cause::Errno(e) => Some(e),
            Cause::Unsupported(_) => None,
        }
    }

    /// A hint for the errno, in words.
    pub fn hint(&self) -> Option<&'static str> {
        self.errno().and_then(errno_hint)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (/{}): ", self.name, self.path)?;
        match &self.cause {
            Cause::Errno(e) => f.write_str(&crate::error::errno_text(*e))?,
            Cause::Unsupported(why) => f.write_str(why)?,
        }
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

/// What the loader did, for the console and kmsg.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Modules loaded now, with the time loading took.
    pub loaded: Vec<(String, Duration)>,
    /// Modules that were loaded before we tried.
    pub already_present: Vec<String>,
    pub failed: Vec<Failure>,
    pub skipped: Vec<Skipped>,
    /// Wall time of all load rounds.
    pub total: Duration,
}

impl LoadReport {
    /// True if every module tried is loaded now.
    pub fn all_loaded(&self) -> bool {
        self.failed.is_empty() && self.skipped.is_empty()
    }

    fn counts(&self) -> String {
        format!(
            "{} loaded, {} already present, {} failed, {} skipped ({} ms)",
            self.loaded.len(),
            self.already_present.len(),
            self.failed.len(),
            self.skipped.len(),
            self.total.as_millis()
        )
    }

    fn details(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for failure in &self.failed {
            write!(f, "\n  failed: {failure}")?;
        }
        for s in &self.skipped {
            write!(f, "\n  skipped: {} (needs {}, which did not load)", s.name, s.because_of)?;
        }
        Ok(())
    }
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "kernel modules: {}", self.counts())?;
        self.details(f)
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
        Errno::OPNOTSUPP => "the kernel cannot decompress this module's format (see /sys/module/compression)",
        _ => return None,
    })
}

// ---------------------------------------------------------------------------
// Scheduling: which module may start, given what has finished.

/// Where one module of the index stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Status {
    /// Not asked for (yet).
    Idle,
    /// Asked for, waiting for what it waits for.
    Waiting,
    /// Being loaded.
    Running,
    /// Loaded, present, failed or skipped.
    Done(Done),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Done {
    Loaded(Duration),
    AlreadyPresent,
    Failed(Cause),
    Skipped(String),
}

impl Done {
    fn ok(&self) -> bool {
        matches!(self, Done::Loaded(_) | Done::AlreadyPresent)
    }
}

/// The dependency graph of an index, by position.
#[derive(Debug, Clone, Default)]
struct Graph {
    pos: BTreeMap<String, usize>,
    /// Hard dependencies.
    hard: Vec<Vec<usize>>,
    /// Everything a module waits for: hard deps, pre-softdeps, and the modules naming it as post-softdep.
    waits: Vec<Vec<usize>>,
    /// What asking for a module brings along: deps, pre- and post-softdeps.
    wants: Vec<Vec<usize>>,
}

impl Graph {
    fn new(index: &ModuleIndex) -> Graph {
        let pos: BTreeMap<String, usize> = index.modules.iter().enumerate().map(|(i, m)| (m.name.clone(), i)).collect();
        let find = |names: &[String]| -> Vec<usize> { names.iter().filter_map(|n| pos.get(n).copied()).collect() };
        let hard: Vec<Vec<usize>> = index.modules.iter().map(|m| find(&m.deps)).collect();
        let mut waits: Vec<Vec<usize>> =
            index.modules.iter().map(|m| find(&m.deps).into_iter().chain(find(&m.pre)).collect()).collect();
        let mut wants = waits.clone();
        for (i, m) in index.modules.iter().enumerate() {
            for p in find(&m.post) {
                if let Some(w) = waits.get_mut(p) {
                    w.push(i);
                }
                if let Some(w) = wants.get_mut(i) {
                    w.push(p);
                }
            }
        }
        Graph { pos, hard, waits, wants }
    }

    /// `roots` and everything they bring along.
    fn closure(&self, roots: impl IntoIterator<Item = usize>) -> BTreeSet<usize> {
        let mut out = BTreeSet::new();
        let mut stack: Vec<usize> = roots.into_iter().collect();
        while let Some(i) = stack.pop() {
            if out.insert(i) {
                stack.extend(self.wants.get(i).into_iter().flatten().copied());
            }
        }
        out
    }
}

/// What a worker should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    Start(usize),
    /// Nothing can start until a running module finishes.
    Wait,
    /// Nothing waits or runs.
    Finished,
}

/// The state of all modules across load rounds (pure: no system calls).
#[derive(Debug, Clone)]
struct Schedule {
    status: Vec<Status>,
}

impl Schedule {
    fn new(len: usize) -> Schedule {
        Schedule { status: vec![Status::Idle; len] }
    }

    /// Ask for these modules (and what they bring along: pass a closure).
    /// Returns how many were newly queued.
    fn queue(&mut self, set: &BTreeSet<usize>) -> usize {
        let mut n = 0usize;
        for &i in set {
            if let Some(s @ Status::Idle) = self.status.get_mut(i) {
                *s = Status::Waiting;
                n = n.saturating_add(1);
            }
        }
        n
    }

    fn done(&self, i: usize) -> Option<&Done> {
        match self.status.get(i) {
            Some(Status::Done(d)) => Some(d),
            _ => None,
        }
    }

    /// The next module that may start; modules whose hard dependency did not
    /// load are marked skipped on the way (`names` for the message).
    fn next(&mut self, graph: &Graph, names: &[&str]) -> Next {
        let mut running = false;
        let mut waiting = None;
        for i in 0..self.status.len() {
            match self.status.get(i) {
                Some(Status::Running) => running = true,
                Some(Status::Waiting) => {
                    // Waits on modules nobody asked for (post-softdep relations) do not count.
                    let ready = graph
                        .waits
                        .get(i)
                        .into_iter()
                        .flatten()
                        .all(|&w| matches!(self.status.get(w), Some(Status::Done(_) | Status::Idle) | None));
                    if !ready {
                        waiting.get_or_insert(i);
                        continue;
                    }
                    let missing =
                        graph.hard.get(i).into_iter().flatten().find(|&&d| !self.done(d).is_some_and(Done::ok));
                    if let Some(&dep) = missing {
                        let dep_name = names.get(dep).copied().unwrap_or("?").to_owned();
                        let name = names.get(i).copied().unwrap_or("?");
                        log::warn!("skipping module {name}: it needs {dep_name}, which did not load");
                        if let Some(s) = self.status.get_mut(i) {
                            *s = Status::Done(Done::Skipped(dep_name));
                        }
                        continue;
                    }
                    if let Some(s) = self.status.get_mut(i) {
                        *s = Status::Running;
                    }
                    return Next::Start(i);
                }
                _ => {}
            }
        }
        if running {
            return Next::Wait;
        }
        if let Some(stuck) = waiting {
            // Cannot happen with an index that parsed (waits point to earlier
            // lines), but never hang: give up on what is left.
            let name = names.get(stuck).copied().unwrap_or("?");
            log::warn!("module {name} waits for modules that never load; skipping it");
            if let Some(s) = self.status.get_mut(stuck) {
                *s = Status::Done(Done::Skipped("(a dependency cycle)".to_owned()));
            }
            return self.next(graph, names);
        }
        Next::Finished
    }

    /// Mark every running module failed for `why`; returns their positions.
    fn abandon(&mut self, why: &str) -> Vec<usize> {
        let mut out = Vec::new();
        for (i, s) in self.status.iter_mut().enumerate() {
            if *s == Status::Running {
                *s = Status::Done(Done::Failed(Cause::Unsupported(why.to_owned())));
                out.push(i);
            }
        }
        out
    }

    fn finish(&mut self, i: usize, attempt: Attempt, took: Duration) {
        let done = match attempt {
            Attempt::Loaded => Done::Loaded(took),
            Attempt::AlreadyPresent => Done::AlreadyPresent,
            Attempt::Failed(e) => Done::Failed(Cause::Errno(e)),
            Attempt::Unsupported(why) => Done::Failed(Cause::Unsupported(why)),
        };
        if let Some(s) = self.status.get_mut(i) {
            *s = Status::Done(done);
        }
    }
}

/// Something that loads one module, synchronously: [`KernelLoader`], or a fake in tests.
pub trait Loader {
    fn load(&self, entry: &IndexEntry) -> Attempt;
}

impl<F: Fn(&IndexEntry) -> Attempt> Loader for F {
    fn load(&self, entry: &IndexEntry) -> Attempt {
        self(entry)
    }
}

/// Runs load attempts, possibly several at once: [`ForkExecutor`] at boot,
/// [`Sequential`] for a plain [`Loader`], a simulation in tests.
pub trait Executor {
    /// Start loading `entry`, the module at index position `i`.
    fn start(&mut self, i: usize, entry: &IndexEntry);
    /// Block until a started attempt finishes: its position, outcome and how
    /// long it took. `None` if nothing runs (or it can no longer be waited for).
    fn wait(&mut self) -> Option<(usize, Attempt, Duration)>;
}

/// Runs each attempt at once, in the calling thread, with a [`Loader`].
pub struct Sequential<L> {
    loader: L,
    done: std::collections::VecDeque<(usize, Attempt, Duration)>,
}

impl<L: Loader> Sequential<L> {
    pub fn new(loader: L) -> Self {
        Sequential { loader, done: std::collections::VecDeque::new() }
    }
}

impl<L: Loader> Executor for Sequential<L> {
    fn start(&mut self, i: usize, entry: &IndexEntry) {
        let t = Instant::now();
        let attempt = self.loader.load(entry);
        self.done.push_back((i, attempt, t.elapsed()));
    }

    fn wait(&mut self) -> Option<(usize, Attempt, Duration)> {
        self.done.pop_front()
    }
}

/// The default number of modules loading at once: min(4, 2 × CPUs this process may use).
pub fn default_workers() -> usize {
    let cpus = rustix::thread::sched_getaffinity(None).map(|set| set.count() as usize).unwrap_or(1);
    cpus.saturating_mul(2).clamp(1, MAX_WORKERS)
}

/// Run every queued module of `schedule` with `exec`, at most `workers` at
/// once. A module starts once all it waits for has finished. Returns the
/// positions that ran, in the order they finished.
fn run_queued<X: Executor + ?Sized>(
    schedule: &mut Schedule,
    graph: &Graph,
    index: &ModuleIndex,
    exec: &mut X,
    workers: usize,
) -> Vec<usize> {
    let names: Vec<&str> = index.modules.iter().map(|m| m.name.as_str()).collect();
    let mut running = 0usize;
    let mut order = Vec::new();
    loop {
        while running < workers.max(1) {
            match schedule.next(graph, &names) {
                Next::Start(i) => match index.modules.get(i) {
                    Some(entry) => {
                        exec.start(i, entry);
                        running = running.saturating_add(1);
                    }
                    None => schedule.finish(i, Attempt::Unsupported("not in the index".into()), Duration::ZERO),
                },
                Next::Wait => break,
                // Nothing runs and nothing waits.
                Next::Finished => return order,
            }
        }
        match exec.wait() {
            Some((i, attempt, took)) => {
                schedule.finish(i, attempt, took);
                running = running.saturating_sub(1);
                order.push(i);
            }
            None => {
                // The executor lost what it ran: never wait for it forever.
                order.extend(schedule.abandon("its loader was lost (no exit status)"));
                running = 0;
            }
        }
    }
}

/// The pure part of [`load_all`]: load every module of `index` with `loader`,
/// one at a time, respecting what each waits for; the report lists modules
/// in index order.
pub fn load_with<L: Loader>(index: &ModuleIndex, loader: L) -> LoadReport {
    let mut auto = Autoloader::with_executor(index.clone(), Sequential::new(loader), 1);
    auto.load_everything();
    auto.report
}

/// Add the outcomes of `positions` to `report` (in index order) and log each.
fn record(report: &mut LoadReport, schedule: &Schedule, index: &ModuleIndex, mut positions: Vec<usize>) {
    positions.sort_unstable();
    for i in positions {
        let (Some(entry), Some(done)) = (index.modules.get(i), schedule.done(i)) else { continue };
        match done {
            Done::Loaded(took) => {
                log::debug!("loaded module {} in {} us", entry.name, took.as_micros());
                report.loaded.push((entry.name.clone(), *took));
            }
            Done::AlreadyPresent => {
                log::debug!("module {} was already loaded", entry.name);
                report.already_present.push(entry.name.clone());
            }
            Done::Failed(cause) => {
                let failure = Failure { name: entry.name.clone(), path: entry.path.clone(), cause: cause.clone() };
                if failure.errno() == Some(Errno::NODEV) {
                    // Accelerated variants (crc32c_intel on a CPU without SSE4.2) and
                    // drivers of absent hardware: expected, not worth a warning.
                    log::info!("module {failure}");
                } else {
                    log::warn!("cannot load module {failure}");
                }
                report.failed.push(failure);
            }
            Done::Skipped(because_of) => {
                report.skipped.push(Skipped { name: entry.name.clone(), because_of: because_of.clone() })
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The kernel side.

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

/// The compression a module file is in, from its name: `xz`, `zstd` or `gzip`
/// (as `/sys/module/compression` names them), `None` for a plain `.ko`.
pub fn module_compression(path: &str) -> Option<&'static str> {
    if path.ends_with(".ko.xz") {
        Some("xz")
    } else if path.ends_with(".ko.zst") {
        Some("zstd")
    } else if path.ends_with(".ko.gz") {
        Some("gzip")
    } else {
        None
    }
}

/// A line saying who decompressed the compressed modules among `loaded` (module
/// paths): those in the format the kernel decompresses (`kernel`, from
/// `/sys/module/compression`) went to the kernel with MODULE_INIT_COMPRESSED_FILE,
/// the others were decompressed by this init (as [`KernelLoader`] does). `None` if
/// none is compressed.
pub fn decompression_summary<'a>(loaded: impl IntoIterator<Item = &'a str>, kernel: Option<&str>) -> Option<String> {
    const KINDS: [&str; 3] = ["xz", "zstd", "gzip"];
    let (mut by_kernel, mut by_init) = ([0usize; 3], [0usize; 3]);
    for path in loaded {
        let Some(kind) = module_compression(path) else { continue };
        let Some(k) = KINDS.iter().position(|&x| x == kind) else { continue };
        let counts = if kernel == Some(kind) { &mut by_kernel } else { &mut by_init };
        if let Some(c) = counts.get_mut(k) {
            *c = c.saturating_add(1);
        }
    }
    let list = |counts: &[usize; 3]| {
        let parts: Vec<String> =
            KINDS.iter().zip(counts).filter(|(_, &n)| n > 0).map(|(kind, n)| format!("{n} {kind}")).collect();
        (!parts.is_empty()).then(|| parts.join(", "))
    };
    let mut parts = Vec::new();
    if let Some(l) = list(&by_kernel) {
        parts.push(format!("decompressed by the kernel (MODULE_INIT_COMPRESSED_FILE): {l}"));
    }
    if let Some(l) = list(&by_init) {
        parts.push(format!("decompressed by this init: {l}"));
    }
    (!parts.is_empty()).then(|| format!("compressed kernel modules loaded: {}", parts.join("; ")))
}

/// The largest compressed module the init decompresses itself, and the most it may expand to.
#[cfg(feature = "decompress-modules")]
pub const DECOMPRESSED_MAX_BYTES: u64 = 256 << 20;

/// Decompress a module in memory (only with the `decompress-modules` feature).
#[cfg(feature = "decompress-modules")]
pub fn decompress(kind: &str, data: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let cap = DECOMPRESSED_MAX_BYTES;
    match kind {
        "xz" => {
            let mut input = std::io::BufReader::new(data);
            let mut limited = LimitedWriter { out: &mut out, cap };
            lzma_rs::xz_decompress(&mut input, &mut limited).map_err(|e| format!("xz: {e}"))?;
        }
        "zstd" => {
            let dec = ruzstd::decoding::StreamingDecoder::new(data).map_err(|e| format!("zstd: {e}"))?;
            dec.take(cap.saturating_add(1)).read_to_end(&mut out).map_err(|e| format!("zstd: {e}"))?;
        }
        "gzip" => {
            let body = gzip_body(data)?;
            out = miniz_oxide::inflate::decompress_to_vec_with_limit(body, cap as usize)
                .map_err(|e| format!("gzip: {e:?}"))?;
        }
        other => return Err(format!("unknown compression {other}")),
    }
    if out.len() as u64 > cap {
        return Err(format!("decompresses to more than {cap} bytes"));
    }
    Ok(out)
}

#[cfg(feature = "decompress-modules")]
struct LimitedWriter<'a> {
    out: &'a mut Vec<u8>,
    cap: u64,
}

#[cfg(feature = "decompress-modules")]
impl std::io::Write for LimitedWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if (self.out.len() as u64).saturating_add(buf.len() as u64) > self.cap {
            return Err(std::io::Error::other(format!("more than {} bytes", self.cap)));
        }
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The deflate stream of a gzip member (RFC 1952 header skipped).
#[cfg(feature = "decompress-modules")]
fn gzip_body(data: &[u8]) -> std::result::Result<&[u8], String> {
    let bad = || "gzip: truncated or invalid header".to_string();
    if data.get(..3) != Some(&[0x1f, 0x8b, 8]) {
        return Err("gzip: not a gzip file".into());
    }
    let flags = *data.get(3).ok_or_else(bad)?;
    let mut at = 10usize;
    if flags & 4 != 0 {
        let xlen = usize::from(u16::from_le_bytes([*data.get(10).ok_or_else(bad)?, *data.get(11).ok_or_else(bad)?]));
        at = at.checked_add(2).and_then(|a| a.checked_add(xlen)).ok_or_else(bad)?;
    }
    for bit in [8u8, 16] {
        if flags & bit != 0 {
            let rest = data.get(at..).ok_or_else(bad)?;
            let nul = rest.iter().position(|&b| b == 0).ok_or_else(bad)?;
            at = at.checked_add(nul).and_then(|a| a.checked_add(1)).ok_or_else(bad)?;
        }
    }
    if flags & 2 != 0 {
        at = at.checked_add(2).ok_or_else(bad)?;
    }
    data.get(at..).ok_or_else(bad)
}

/// Loads modules into the running kernel from the initramfs rooted at `root`.
#[derive(Debug, Clone)]
pub struct KernelLoader {
    root: PathBuf,
    /// What `/sys/module/compression` says the kernel decompresses itself, if anything.
    kernel_compression: Option<String>,
}

/// What to do for one module, decided before any process is forked.
enum Prepared {
    /// Nothing to run: the outcome is known.
    Done(Attempt),
    /// `finit_module` on this file with these flags.
    Finit(std::ffi::CString, i32),
}

impl KernelLoader {
    /// A loader for files under `root`; reads `/sys/module/compression` once.
    pub fn new(root: &Path) -> KernelLoader {
        let kernel_compression = std::fs::File::open("/sys/module/compression").ok().and_then(|f| {
            let mut s = String::new();
            f.take(64).read_to_string(&mut s).ok()?;
            Some(s.trim().to_owned()).filter(|s| !s.is_empty())
        });
        KernelLoader { root: root.to_owned(), kernel_compression }
    }

    fn prepare(&self, entry: &IndexEntry) -> Prepared {
        if is_live(&entry.name) {
            return Prepared::Done(Attempt::AlreadyPresent);
        }
        let path = self.root.join(&entry.path);
        let flags = match module_compression(&entry.path) {
            None => 0,
            Some(kind) if self.kernel_compression.as_deref() == Some(kind) => MODULE_INIT_COMPRESSED_FILE,
            Some(kind) => return Prepared::Done(self.load_compressed_here(&path, kind)),
        };
        match std::ffi::CString::new(path.into_os_string().into_encoded_bytes()) {
            Ok(c) => Prepared::Finit(c, flags),
            Err(_) => Prepared::Done(Attempt::Unsupported("the path contains a NUL byte".into())),
        }
    }

    /// open + finit_module, nothing else: no allocation, so it is safe in a
    /// forked child. `Ok` or the errno.
    fn finit(path: &std::ffi::CStr, flags: i32) -> std::result::Result<(), Errno> {
        use rustix::fs::{Mode, OFlags};
        let fd = rustix::fs::open(path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?;
        rustix::system::finit_module(&fd, c"", flags)
    }

    fn attempt_of(result: std::result::Result<(), Errno>) -> Attempt {
        match result {
            Ok(()) => Attempt::Loaded,
            Err(Errno::EXIST) => Attempt::AlreadyPresent,
            Err(e) => Attempt::Failed(e),
        }
    }

    fn cannot(&self, kind: &str) -> String {
        let kernel = match &self.kernel_compression {
            Some(k) => format!("the kernel decompresses only {k} modules"),
            None => "the kernel does not decompress modules (no /sys/module/compression)".to_owned(),
        };
        format!("{kind}-compressed, {kernel}")
    }

    #[cfg(not(feature = "decompress-modules"))]
    fn load_compressed_here(&self, _path: &Path, kind: &str) -> Attempt {
        Attempt::Unsupported(format!(
            "{} and this init was built without the decompress-modules feature: rebuild the initramfs \
             without --keep-compressed (the builder then stores modules decompressed), or with an init \
             built with --features decompress-modules",
            self.cannot(kind)
        ))
    }

    #[cfg(feature = "decompress-modules")]
    fn load_compressed_here(&self, path: &Path, kind: &str) -> Attempt {
        let mut data = Vec::new();
        let read = std::fs::File::open(path)
            .and_then(|f| f.take(DECOMPRESSED_MAX_BYTES.saturating_add(1)).read_to_end(&mut data));
        if let Err(e) = read {
            return Attempt::Failed(e.raw_os_error().map(Errno::from_raw_os_error).unwrap_or(Errno::IO));
        }
        let plain = match decompress(kind, &data) {
            Ok(p) => p,
            Err(e) => return Attempt::Unsupported(format!("{}; decompressing it here failed: {e}", self.cannot(kind))),
        };
        drop(data);
        Self::attempt_of(rustix::system::init_module(&plain, c""))
    }
}

impl Loader for KernelLoader {
    fn load(&self, entry: &IndexEntry) -> Attempt {
        match self.prepare(entry) {
            Prepared::Done(attempt) => attempt,
            Prepared::Finit(path, flags) => Self::attempt_of(Self::finit(&path, flags)),
        }
    }
}

/// Loads modules in parallel in forked child processes: each child runs one
/// `finit_module` and exits with 0 or the errno. (A process per module costs a
/// few KiB of init; std threads would cost 66 KiB of static glibc.) If fork
/// fails, the module is loaded in the calling process. Only its own children
/// are reaped (by pid, told apart with pidfds).
pub struct ForkExecutor {
    loader: KernelLoader,
    running: BTreeMap<i32, Child>,
    ready: std::collections::VecDeque<(usize, Attempt, Duration)>,
}

struct Child {
    position: usize,
    started: Instant,
    /// Readable once the child exits (None if pidfd_open failed: then it is waited for in turn).
    pidfd: Option<std::os::fd::OwnedFd>,
}

impl ForkExecutor {
    pub fn new(loader: KernelLoader) -> Self {
        ForkExecutor { loader, running: BTreeMap::new(), ready: std::collections::VecDeque::new() }
    }

    /// The pid of a child that has exited, waiting until one has.
    fn next_exited(&self) -> Option<i32> {
        use rustix::event::{PollFd, PollFlags};
        if self.running.is_empty() {
            return None;
        }
        let Some(fds) = self.running.values().map(|c| c.pidfd.as_ref()).collect::<Option<Vec<_>>>() else {
            // Some child has no pidfd: wait for the oldest child without one.
            return self.running.iter().find(|(_, c)| c.pidfd.is_none()).map(|(pid, _)| *pid);
        };
        let mut polls: Vec<PollFd<'_>> = fds.iter().map(|fd| PollFd::new(*fd, PollFlags::IN)).collect();
        loop {
            match rustix::event::poll(&mut polls, None) {
                Ok(_) => break,
                Err(Errno::INTR) => continue,
                // Cannot poll: wait for the oldest child.
                Err(_) => return self.running.keys().next().copied(),
            }
        }
        let ready = polls.iter().position(|p| !p.revents().is_empty());
        ready.and_then(|k| self.running.keys().nth(k).copied()).or_else(|| self.running.keys().next().copied())
    }

    /// Wait for child `pid` and turn its exit status into an attempt.
    fn reap(&mut self, pid: i32) -> Option<(usize, Attempt, Duration)> {
        let child = self.running.remove(&pid)?;
        let status = loop {
            let Some(p) = rustix::process::Pid::from_raw(pid) else { break Err(Errno::CHILD) };
            match rustix::process::waitpid(Some(p), rustix::process::WaitOptions::empty()) {
                Ok(Some((_, status))) => break Ok(status),
                Ok(None) => break Err(Errno::CHILD),
                Err(Errno::INTR) => continue,
                Err(e) => break Err(e),
            }
        };
        let attempt = match status {
            Ok(status) => match (status.exit_status(), status.terminating_signal()) {
                (Some(0), _) => Attempt::Loaded,
                (Some(code), _) => KernelLoader::attempt_of(Err(Errno::from_raw_os_error(code))),
                (None, Some(sig)) => Attempt::Unsupported(format!("the loader process died of signal {sig}")),
                (None, None) => Attempt::Unsupported(format!("the loader process ended oddly ({status:?})")),
            },
            Err(e) => Attempt::Unsupported(format!("lost its loader process ({})", crate::error::errno_text(e))),
        };
        Some((child.position, attempt, child.started.elapsed()))
    }
}

impl Executor for ForkExecutor {
    fn start(&mut self, i: usize, entry: &IndexEntry) {
        let t = Instant::now();
        let (path, flags) = match self.loader.prepare(entry) {
            Prepared::Done(attempt) => return self.ready.push_back((i, attempt, t.elapsed())),
            Prepared::Finit(path, flags) => (path, flags),
        };
        // SAFETY: fork(2) has no memory-safety preconditions for the parent. The
        // child only calls `KernelLoader::finit` (raw open and finit_module
        // system calls through rustix, no allocation, no locks) and `_exit`, so
        // it is sound even if other threads held locks at the time of the fork.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let code = match KernelLoader::finit(&path, flags) {
                Ok(()) => 0,
                Err(e) => e.raw_os_error().clamp(1, 255),
            };
            // SAFETY: _exit ends the child at once, without running the parent's
            // atexit handlers or flushing its buffers (which belong to the parent).
            unsafe { libc::_exit(code) }
        }
        let Some(child) = rustix::process::Pid::from_raw(pid) else {
            log::debug!("fork failed ({}); loading module {} in PID 1", std::io::Error::last_os_error(), entry.name);
            let attempt = KernelLoader::attempt_of(KernelLoader::finit(&path, flags));
            return self.ready.push_back((i, attempt, t.elapsed()));
        };
        let pidfd = rustix::process::pidfd_open(child, rustix::process::PidfdFlags::empty()).ok();
        self.running.insert(pid, Child { position: i, started: t, pidfd });
    }

    fn wait(&mut self) -> Option<(usize, Attempt, Duration)> {
        if let Some(done) = self.ready.pop_front() {
            return Some(done);
        }
        let pid = self.next_exited()?;
        self.reap(pid)
    }
}

// ---------------------------------------------------------------------------
// The sysfs walk.

/// Bounds of the `/sys/devices` walk.
pub const SYSFS_MAX_DEPTH: usize = 64;
/// The most directory entries the walk looks at.
pub const SYSFS_MAX_ENTRIES: usize = 2_000_000;
/// The most bytes read of one `modalias` file (the CPU's is about 1 KiB).
pub const MODALIAS_MAX_BYTES: u64 = 16 << 10;

/// Every `modalias` under `devices` (`/sys/devices`), without following
/// symlinks, `max_depth` directories deep at most: modalias → the first
/// device directory that has it. Unreadable files and directories (devices
/// going away) are skipped; only an unreadable `devices` is an error.
pub fn collect_modaliases(devices: &Path, max_depth: usize) -> Result<BTreeMap<String, PathBuf>> {
    let mut found: BTreeMap<String, PathBuf> = BTreeMap::new();
    let top = std::fs::read_dir(devices).context(|| format!("listing {}", devices.display()))?;
    let mut stack: Vec<(std::fs::ReadDir, usize, PathBuf)> = vec![(top, 0, devices.to_owned())];
    let mut entries = 0usize;
    while let Some((mut dir, depth, path)) = stack.pop() {
        let Some(entry) = dir.next() else { continue };
        stack.push((dir, depth, path.clone()));
        entries = entries.saturating_add(1);
        if entries > SYSFS_MAX_ENTRIES {
            log::warn!("stopped walking {} after {SYSFS_MAX_ENTRIES} entries", devices.display());
            break;
        }
        let Ok(entry) = entry else { continue };
        // DirEntry::file_type does not follow symlinks.
        let Ok(kind) = entry.file_type() else { continue };
        if kind.is_dir() {
            if depth < max_depth {
                if let Ok(sub) = std::fs::read_dir(entry.path()) {
                    stack.push((sub, depth.saturating_add(1), entry.path()));
                }
            }
        } else if kind.is_file() && entry.file_name() == "modalias" {
            let Ok(file) = std::fs::File::open(entry.path()) else { continue };
            let mut bytes = Vec::new();
            if file.take(MODALIAS_MAX_BYTES).read_to_end(&mut bytes).is_err() {
                continue;
            }
            let text = String::from_utf8_lossy(&bytes);
            let alias = text.trim_end_matches(['\n', '\0']).trim();
            if !alias.is_empty() {
                found.entry(alias.to_owned()).or_insert(path);
            }
        }
    }
    Ok(found)
}

// ---------------------------------------------------------------------------
// The autoloader.

/// What the autoloader knows of one modalias it was told about.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    /// The modules of the initramfs it matched.
    modules: Vec<String>,
    /// The device directory, if known (to tell later whether a driver bound anyway).
    device: Option<PathBuf>,
}

/// Loads the modules of an index as the boot needs them: the `always` ones,
/// and the drivers of the devices present or appearing (see the module docs).
pub struct Autoloader<X: Executor = ForkExecutor> {
    index: ModuleIndex,
    graph: Graph,
    aliases: AliasTable,
    exec: X,
    workers: usize,
    schedule: Schedule,
    report: LoadReport,
    /// Modalias strings seen, with what they matched.
    seen: BTreeMap<String, Seen>,
    /// Sysfs walks done by coldplug.
    walks: usize,
    /// The devices directory coldplug walked, walked again if uevents were lost.
    devices: Option<PathBuf>,
    /// The format the kernel decompresses itself (`/sys/module/compression`), for
    /// [`Autoloader::decompression_line`]: a loaded module in another format was
    /// decompressed by this init.
    kernel_compression: Option<String>,
}

impl Autoloader<ForkExecutor> {
    /// An autoloader for the running kernel, loading files under `root` (`/` at
    /// boot). Errors if the index is for another kernel.
    pub fn new(index: ModuleIndex, root: &Path) -> Result<Self> {
        let uname = rustix::system::uname();
        let running = uname.release().to_string_lossy();
        check_kernel_release(&index, &running)?;
        let loader = KernelLoader::new(root);
        if let Some(k) = &loader.kernel_compression {
            log::debug!("the kernel decompresses {k} modules itself");
        }
        #[cfg(feature = "decompress-modules")]
        log::debug!("{DECOMPRESS_MARKER}");
        let kernel_compression = loader.kernel_compression.clone();
        let mut auto = Autoloader::with_executor(index, ForkExecutor::new(loader), default_workers());
        auto.kernel_compression = kernel_compression;
        Ok(auto)
    }
}

impl<L: Loader> Autoloader<Sequential<L>> {
    /// An autoloader that loads one module at a time with `loader` (tests use fakes).
    pub fn with_loader(index: ModuleIndex, loader: L) -> Self {
        Autoloader::with_executor(index, Sequential::new(loader), 1)
    }
}

impl<X: Executor> Autoloader<X> {
    /// An autoloader running `workers` attempts at once with `exec`.
    pub fn with_executor(index: ModuleIndex, exec: X, workers: usize) -> Self {
        let graph = Graph::new(&index);
        let aliases = AliasTable::of_index(&index);
        let schedule = Schedule::new(index.modules.len());
        Autoloader {
            index,
            graph,
            aliases,
            exec,
            workers: workers.max(1),
            schedule,
            report: LoadReport::default(),
            seen: BTreeMap::new(),
            walks: 0,
            devices: None,
            kernel_compression: None,
        }
    }

    /// Load `roots` and what they bring along (each module at most once
    /// over the autoloader's life). Returns how many modules were tried.
    fn load_positions(&mut self, roots: impl IntoIterator<Item = usize>) -> usize {
        let set = self.graph.closure(roots);
        let queued = self.schedule.queue(&set);
        if queued == 0 {
            return 0;
        }
        let before: Vec<bool> = (0..self.index.modules.len()).map(|i| self.schedule.done(i).is_some()).collect();
        let start = Instant::now();
        let _ = run_queued(&mut self.schedule, &self.graph, &self.index, &mut self.exec, self.workers);
        self.report.total = self.report.total.saturating_add(start.elapsed());
        let newly: Vec<usize> = (0..self.index.modules.len())
            .filter(|&i| !before.get(i).copied().unwrap_or(true) && self.schedule.done(i).is_some())
            .collect();
        let n = newly.len();
        record(&mut self.report, &self.schedule, &self.index, newly);
        n
    }

    fn always_positions(&self) -> Vec<usize> {
        self.index.modules.iter().enumerate().filter(|(_, m)| m.load == Load::Always).map(|(i, _)| i).collect()
    }

    /// Load every module marked `always`. Returns how many were tried.
    pub fn load_unconditional(&mut self) -> usize {
        let n = self.load_positions(self.always_positions());
        log::info!("kernel modules: loaded the unconditional ones: {}", self.report.counts());
        n
    }

    /// What the boot does first: load the `always` modules and the drivers of
    /// the devices under `devices` (`/sys/devices`) together, in parallel, then
    /// walk again as [`Autoloader::coldplug`] does. Returns how many modules were tried.
    pub fn start(&mut self, devices: &Path) -> Result<usize> {
        let always = self.always_positions();
        self.coldplug_with(devices, always)
    }

    /// Load every module of the index, whatever its `load` word.
    pub fn load_everything(&mut self) -> usize {
        self.load_positions(0..self.index.modules.len())
    }

    /// Note `modalias` (of the device directory `device`, if known) and load the
    /// modules it matches. Returns how many modules were tried.
    fn note_modalias(&mut self, modalias: &str, device: Option<PathBuf>) -> usize {
        if self.seen.contains_key(modalias) {
            return 0;
        }
        let modules = self.aliases.lookup(modalias);
        let roots: Vec<usize> = modules.iter().filter_map(|m| self.graph.pos.get(m).copied()).collect();
        if !modules.is_empty() {
            log::debug!("modalias {modalias}: {}", modules.join(" "));
        }
        self.seen.insert(modalias.to_owned(), Seen { modules, device });
        self.load_positions(roots)
    }

    /// Load the modules a device's modalias asks for (from a uevent's
    /// `MODALIAS=`). A modalias seen before does nothing. Returns how many
    /// modules were tried.
    pub fn on_modalias(&mut self, modalias: &str) -> usize {
        self.note_modalias(modalias, None)
    }

    /// Like [`Autoloader::on_modalias`], with the device's sysfs directory
    /// (`/sys` + a uevent's `DEVPATH=`), so [`Autoloader::unmatched`] can leave
    /// out devices that got a driver anyway (a built-in one).
    pub fn on_device(&mut self, modalias: &str, device: &Path) -> usize {
        self.note_modalias(modalias, Some(device.to_owned()))
    }

    /// Walk `devices` (`/sys/devices`) for `modalias` files and load the modules
    /// they match, in parallel. Drivers bound while loading create devices of
    /// their own (virtio_pci → virtio devices): the walk is repeated while the
    /// previous one loaded something, 3 walks at most; later devices come
    /// through [`Autoloader::on_modalias`]. Returns how many modules were tried.
    pub fn coldplug(&mut self, devices: &Path) -> Result<usize> {
        self.coldplug_with(devices, Vec::new())
    }

    fn coldplug_with(&mut self, devices: &Path, mut extra: Vec<usize>) -> Result<usize> {
        let start = Instant::now();
        self.devices = Some(devices.to_owned());
        let mut tried = 0usize;
        for _ in 0..3 {
            let found = collect_modaliases(devices, SYSFS_MAX_DEPTH)?;
            self.walks = self.walks.saturating_add(1);
            let mut roots = std::mem::take(&mut extra);
            for (modalias, dir) in found {
                if self.seen.contains_key(&modalias) {
                    continue;
                }
                let modules = self.aliases.lookup(&modalias);
                roots.extend(modules.iter().filter_map(|m| self.graph.pos.get(m).copied()));
                self.seen.insert(modalias, Seen { modules, device: Some(dir) });
            }
            let n = self.load_positions(roots);
            tried = tried.saturating_add(n);
            if n == 0 {
                break;
            }
        }
        log::info!(
            "kernel modules: coldplug of {} in {} ms: {} modalias strings, {} modules tried",
            devices.display(),
            start.elapsed().as_millis(),
            self.seen.len(),
            tried
        );
        if let Some(line) = self.decompression_line() {
            log::info!("{line}");
        }
        Ok(tried)
    }

    /// The modalias strings seen that matched no module of the initramfs, sorted,
    /// each once, leaving out [`NOT_DISK_BUSES`] and devices that have a driver
    /// by now (`DEVICE/driver` exists: a built-in one).
    pub fn unmatched(&self) -> Vec<String> {
        self.unmatched_with(|dir| std::fs::symlink_metadata(dir.join("driver")).is_ok())
    }

    /// [`Autoloader::unmatched`] with the "has a driver" test given.
    pub fn unmatched_with(&self, has_driver: impl Fn(&Path) -> bool) -> Vec<String> {
        self.seen
            .iter()
            .filter(|(alias, seen)| {
                seen.modules.is_empty()
                    && !NOT_DISK_BUSES.iter().any(|bus| alias.starts_with(bus))
                    && !seen.device.as_deref().is_some_and(&has_driver)
            })
            .map(|(alias, _)| alias.clone())
            .collect()
    }

    /// The modules loaded (now or before we tried), in index order.
    pub fn loaded(&self) -> Vec<String> {
        let mut out: Vec<(usize, String)> = Vec::new();
        for (i, m) in self.index.modules.iter().enumerate() {
            if self.schedule.done(i).is_some_and(Done::ok) {
                out.push((i, m.name.clone()));
            }
        }
        out.into_iter().map(|(_, n)| n).collect()
    }

    /// Who decompressed the compressed modules loaded so far (see
    /// [`decompression_summary`]); `None` if none was compressed.
    pub fn decompression_line(&self) -> Option<String> {
        let loaded = self
            .index
            .modules
            .iter()
            .enumerate()
            .filter(|(i, _)| matches!(self.schedule.done(*i), Some(Done::Loaded(_))))
            .map(|(_, m)| m.path.as_str());
        decompression_summary(loaded, self.kernel_compression.as_deref())
    }

    /// Everything tried so far.
    pub fn report(&self) -> &LoadReport {
        &self.report
    }

    /// How many modalias strings were seen.
    pub fn modaliases_seen(&self) -> usize {
        self.seen.len()
    }

    /// The index this autoloader works from.
    pub fn index(&self) -> &ModuleIndex {
        &self.index
    }
}

impl<X: Executor> Autoloader<X> {
    /// How many modules marked `modalias` were tried (loaded for devices).
    fn tried_for_devices(&self) -> usize {
        self.index
            .modules
            .iter()
            .enumerate()
            .filter(|(i, m)| m.load == Load::Modalias && self.schedule.done(*i).is_some())
            .count()
    }

    /// Lines for the "timeout waiting for root" message: what loaded, what
    /// failed, and the devices no module of the initramfs matched.
    pub fn diagnostic_lines(&self) -> Vec<String> {
        let mut lines = vec![self.summary_line()];
        for f in &self.report.failed {
            lines.push(format!("module failed: {f}"));
        }
        for s in &self.report.skipped {
            lines.push(format!("module skipped: {} (needs {}, which did not load)", s.name, s.because_of));
        }
        let loaded = self.loaded();
        lines.push(format!("modules loaded: {}", if loaded.is_empty() { "none".to_owned() } else { loaded.join(" ") }));
        let unmatched = self.unmatched();
        if unmatched.is_empty() {
            lines.push(
                "every device's modalias matched a module of the initramfs, or the device has a driver".to_owned(),
            );
            return lines;
        }
        lines.push(format!(
            "{} modalias strings no module of the initramfs matches (devices without a driver):",
            unmatched.len()
        ));
        // Short lines: a kernel log record holds about 1 KiB.
        let mut line = String::new();
        for alias in unmatched {
            if !line.is_empty() && line.len().saturating_add(alias.len()) > DIAGNOSTIC_LINE_BYTES {
                lines.push(std::mem::take(&mut line));
            }
            line.push_str("  ");
            line.push_str(&alias);
        }
        lines.push(line);
        lines
    }

    fn summary_line(&self) -> String {
        let r = &self.report;
        let tried = r
            .loaded
            .len()
            .saturating_add(r.already_present.len())
            .saturating_add(r.failed.len())
            .saturating_add(r.skipped.len());
        format!(
            "kernel modules: {} ({} of them for devices); {tried} of {} in the initramfs tried; \
             {} modalias strings seen, {} matched no module",
            r.counts(),
            self.tried_for_devices(),
            self.index.modules.len(),
            self.seen.len(),
            self.unmatched().len()
        )
    }
}

impl<X: Executor> fmt::Display for Autoloader<X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.summary_line())?;
        self.report.details(f)
    }
}

/// The boot's device waiter drives the autoloader: every `add` uevent with a
/// MODALIAS loads what it matches (as udev's `kmod load` rule does), a lost
/// batch of uevents walks `/sys/devices` again, and a timeout shows
/// [`Autoloader::diagnostic_lines`].
impl<X: Executor> crate::devices::WaitHooks for Autoloader<X> {
    fn on_uevent(&mut self, ev: &crate::uevent::Uevent) {
        if ev.action != crate::uevent::Action::Add {
            return;
        }
        if let Some(modalias) = ev.modalias.as_deref().filter(|m| !m.is_empty()) {
            let dir = Path::new("/sys").join(ev.devpath.trim_start_matches('/'));
            self.on_device(modalias, &dir);
        }
    }

    fn on_overflow(&mut self) {
        let devices = self.devices.clone().unwrap_or_else(|| PathBuf::from("/sys/devices"));
        if let Err(e) = self.coldplug(&devices) {
            log::warn!("uevents were lost and walking {} again failed: {e}", devices.display());
        }
    }

    fn diagnostics(&self) -> Vec<String> {
        self.diagnostic_lines()
    }
}

/// Load every module of `index` from the initramfs rooted at `root` (`/` at
/// boot), in parallel where dependencies allow.
///
/// Errors only if the index is for another kernel; failures of single modules
/// are in the report (and logged as warnings).
pub fn load_all(index: &ModuleIndex, root: &Path) -> Result<LoadReport> {
    let mut auto = Autoloader::new(index.clone(), root)?;
    auto.load_everything();
    let report = auto.report().clone();
    // Each failure was logged as it happened: the counts are enough here.
    log::info!("kernel modules: {}", report.counts());
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn entry(name: &str, load: Load, deps: &[&str], pre: &[&str], post: &[&str]) -> IndexEntry {
        let list = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        IndexEntry {
            name: name.into(),
            path: format!("lib/modules/6.1.0-56-amd64/kernel/{name}.ko"),
            load,
            deps: list(deps),
            pre: list(pre),
            post: list(post),
        }
    }

    fn always(name: &str, deps: &[&str], pre: &[&str]) -> IndexEntry {
        entry(name, Load::Always, deps, pre, &[])
    }

    fn alias(pattern: &str, module: &str) -> Alias {
        Alias { pattern: pattern.into(), module: module.into() }
    }

    fn sample() -> ModuleIndex {
        ModuleIndex {
            kernel: "6.1.0-56-amd64".into(),
            modules: vec![
                always("crc32c_generic", &[], &[]),
                always("crc32c_intel", &[], &[]),
                always("libcrc32c", &[], &[]),
                always("xor", &[], &[]),
                always("btrfs", &["libcrc32c", "xor"], &["crc32c_generic", "crc32c_intel"]),
            ],
            aliases: vec![],
        }
    }

    /// A generic-style index: filesystems always, drivers by modalias.
    fn machine() -> ModuleIndex {
        ModuleIndex {
            kernel: "6.1.0-56-amd64".into(),
            modules: vec![
                always("crc32c_generic", &[], &[]),
                always("libcrc32c", &[], &[]),
                always("btrfs", &["libcrc32c"], &["crc32c_generic"]),
                entry("scsi_mod", Load::Modalias, &[], &[], &[]),
                entry("scsi_common", Load::Modalias, &[], &[], &[]),
                entry("sd_mod", Load::Modalias, &["scsi_common", "scsi_mod"], &[], &[]),
                entry("virtio_ring", Load::Modalias, &[], &[], &[]),
                entry("virtio", Load::Modalias, &["virtio_ring"], &[], &[]),
                entry("virtio_pci", Load::Modalias, &["virtio", "virtio_ring"], &[], &[]),
                entry("virtio_blk", Load::Modalias, &["virtio", "virtio_ring"], &[], &["blk_helper"]),
                entry("blk_helper", Load::Modalias, &[], &[], &[]),
                entry("nvme_core", Load::Modalias, &[], &[], &[]),
                entry("nvme", Load::Modalias, &["nvme_core"], &[], &[]),
            ],
            aliases: vec![
                alias("pci:v00001AF4d*sv*sd*bc*sc*i*", "virtio_pci"),
                alias("virtio:d00000002v*", "virtio_blk"),
                alias("pci:v*d*sv*sd*bc01sc08i02*", "nvme"),
                alias("scsi:t-0x00*", "sd_mod"),
                alias("scsi:t-0x0e*", "sd_mod"),
            ],
        }
    }

    #[test]
    fn write_then_parse_round_trips() {
        let index = machine();
        let text = write_index(&index).unwrap();
        assert!(text.starts_with("dockroot-modules 2\nkernel 6.1.0-56-amd64\n"), "{text}");
        assert!(text.contains(
            "\nmodule btrfs lib/modules/6.1.0-56-amd64/kernel/btrfs.ko always deps=libcrc32c pre=crc32c_generic post=\n"
        ));
        assert!(text.contains(
            "\nmodule virtio_blk lib/modules/6.1.0-56-amd64/kernel/virtio_blk.ko modalias deps=virtio,virtio_ring pre= post=blk_helper\n"
        ));
        assert!(text.ends_with("\nalias scsi:t-0x00* sd_mod\nalias scsi:t-0x0e* sd_mod\n"), "{text}");
        assert_eq!(parse_index(&text).unwrap(), index);
        let empty = ModuleIndex { kernel: "6.1.0".into(), ..ModuleIndex::default() };
        assert_eq!(parse_index(&write_index(&empty).unwrap()).unwrap(), empty);
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
        let mut index = sample();
        index.modules[4].post = vec!["xor".into()];
        let e = write_index(&index).unwrap_err().to_string();
        assert!(e.contains("btrfs has xor as post-softdep, which must be listed after it"), "{e}");
        let mut index = sample();
        index.modules[4].post = vec!["ghost".into()];
        let e = write_index(&index).unwrap_err().to_string();
        assert!(e.contains("post-softdep ghost, which is not listed"), "{e}");
        let mut index = sample();
        index.aliases.push(alias("pci:v*", "ghost"));
        assert!(write_index(&index).unwrap_err().to_string().contains("names module ghost"));
        let mut index = sample();
        index.aliases.push(alias("pci:v[0-9", "xor"));
        assert!(write_index(&index).unwrap_err().to_string().contains("unmatched bracket"));
        let mut index = sample();
        index.aliases.push(alias("pci: v", "xor"));
        assert!(write_index(&index).unwrap_err().to_string().contains("white space"));
    }

    fn parse_err(text: &str) -> String {
        parse_index(text).unwrap_err().to_string()
    }

    #[test]
    fn malformed_lines_name_the_line() {
        let head = "dockroot-modules 2\nkernel 6.1.0\n";
        let ok = "module a a.ko always deps= pre= post=\n";
        assert_eq!(parse_err(""), "module index is empty");
        let e = parse_err("dockroot-modules 1\n");
        assert!(e.starts_with("module index line 1: format \"dockroot-modules 1\" is not supported"), "{e}");
        assert!(e.contains("rebuild the initramfs"), "{e}");
        assert!(parse_err("something\n").starts_with("module index line 1: expected"));
        assert!(parse_err("dockroot-modules 2\nkernal 6.1\n").starts_with("module index line 2:"));
        assert!(parse_err("dockroot-modules 2\nkernel \n").starts_with("module index line 2:"));
        assert_eq!(parse_err("dockroot-modules 2\n"), "module index ends before its `kernel RELEASE` line");
        let cases = [
            (format!("{head}{ok}module b b.ko always deps=a\n"), "line 4: expected `module NAME PATH"),
            (
                format!("{head}{ok}module b b.ko always deps=c pre= post=\n"),
                "line 4: module b waits for c, which is not listed before it",
            ),
            (format!("{head}{ok}module b b.ko always deps= pre=c post=\n"), "line 4: module b waits for c"),
            (
                format!("{head}{ok}module a b.ko always deps= pre= post=\n"),
                "line 4: module a is listed twice (first on line 3)",
            ),
            (format!("{head}module a ../a.ko always deps= pre= post=\n"), "line 3: module path \"../a.ko\""),
            (format!("{head}modul a a.ko always deps= pre= post=\n"), "line 3: expected a `module` or `alias` line"),
            (format!("{head}module a a.ko always pre= deps= post=\n"), "line 3: expected `deps=...`"),
            (format!("{head}module a a.ko always deps=,x pre= post=\n"), "line 3: empty module name"),
            (
                format!("{head}module a a.ko sometimes deps= pre= post=\n"),
                "line 3: expected `always` or `modalias`, found \"sometimes\"",
            ),
            (
                format!("{head}module a a.ko always deps= pre= post=b\n"),
                "line 3: module a has post-softdep b, which is not listed",
            ),
            (
                format!("{head}{ok}module b b.ko always deps= pre= post=a\n"),
                "line 4: module b has a as post-softdep, which must be listed after it",
            ),
            (format!("{head}alias pci:* a\n{ok}"), "line 3: alias pci:* names module a, which is not listed before it"),
            (format!("{head}{ok}alias pci:*\n"), "line 4: expected `alias PATTERN MODULE`"),
            (format!("{head}{ok}alias pci:v]x a\n"), "line 4: alias \"pci:v]x\" has an unmatched bracket"),
        ];
        for (text, want) in cases {
            let e = parse_err(&text);
            assert!(e.starts_with(&format!("module index {want}")), "{text}: {e}");
        }
        // A post-softdep listed later, blank lines, aliases after their module: fine.
        let text = format!(
            "{head}\nmodule a a.ko always deps= pre= post=b\nalias x:* a\n\nmodule b b.ko modalias deps= pre= post=\n"
        );
        let index = parse_index(&text).unwrap();
        assert_eq!(index.modules.len(), 2);
        assert_eq!(index.aliases, [alias("x:*", "a")]);
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

    // --- glob matching ---

    /// glibc's fnmatch with no flags, the reference modprobe uses.
    fn libc_fnmatch(pattern: &str, text: &str) -> bool {
        let p = std::ffi::CString::new(pattern).unwrap();
        let t = std::ffi::CString::new(text).unwrap();
        // SAFETY: both are valid NUL-terminated strings that outlive the call.
        unsafe { libc::fnmatch(p.as_ptr(), t.as_ptr(), 0) == 0 }
    }

    #[test]
    fn glob_matches_real_modalias_patterns() {
        let cases: &[(&str, &str, bool)] = &[
            // virtio-blk (legacy and modern device IDs) and virtio_pci.
            ("pci:v00001AF4d00001001sv*sd*bc*sc*i*", "pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00", true),
            ("pci:v00001AF4d00001001sv*sd*bc*sc*i*", "pci:v00001AF4d00001042sv00001AF4sd00001100bc01sc00i00", false),
            ("pci:v00001AF4d*sv*sd*bc*sc*i*", "pci:v00001AF4d00001042sv00001AF4sd00001100bc01sc00i00", true),
            ("virtio:d00000002v*", "virtio:d00000002v00001AF4", true),
            ("virtio:d00000002v*", "virtio:d00000020v00001AF4", false),
            // NVMe and AHCI by PCI class.
            ("pci:v*d*sv*sd*bc01sc08i02*", "pci:v00001B36d00000010sv00001AF4sd00001100bc01sc08i02", true),
            ("pci:v*d*sv*sd*bc01sc06i01*", "pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01", true),
            ("pci:v*d*sv*sd*bc01sc06i01*", "pci:v00008086d00002922sv00001AF4sd00001100bc01sc08i02", false),
            // xHCI, USB mass storage (bulk-only) and UAS.
            ("pci:v*d*sv*sd*bc0Csc03i30*", "pci:v00001B36d0000000Dsv00001AF4sd00001100bc0Csc03i30", true),
            ("usb:v*p*d*dc*dsc*dp*ic08isc06ip50in*", "usb:v46F4p0001d0000dc00dsc00dp00ic08isc06ip50in00", true),
            ("usb:v*p*d*dc*dsc*dp*ic08isc06ip62in*", "usb:v46F4p0001d0000dc00dsc00dp00ic08isc06ip50in00", false),
            // A bcdDevice range as file2alias writes it.
            ("usb:v0BC2p3008d[0-1]*dc*dsc*dp*ic*isc*ip*in*", "usb:v0BC2p3008d0100dc00dsc00dp00ic08isc06ip50in00", true),
            (
                "usb:v0BC2p3008d[0-1]*dc*dsc*dp*ic*isc*ip*in*",
                "usb:v0BC2p3008d2000dc00dsc00dp00ic08isc06ip50in00",
                false,
            ),
            ("usb:v054Cp0010d0[0-4]*dc*", "usb:v054Cp0010d0450dc00", true),
            ("usb:v054Cp0010d0[0-4]*dc*", "usb:v054Cp0010d0550dc00", false),
            // SCSI disks, CPU features, ACPI and platform devices, MMC.
            ("scsi:t-0x00*", "scsi:t-0x00", true),
            ("scsi:t-0x00*", "scsi:t-0x05", false),
            (
                "cpu:type:x86,ven*fam*mod*:feature:*0094*",
                "cpu:type:x86,ven0002fam001Amod0002:feature:,0000,0093,0094,0095",
                true,
            ),
            (
                "cpu:type:x86,ven*fam*mod*:feature:*0094*",
                "cpu:type:x86,ven0002fam001Amod0002:feature:,0000,0093,0095",
                false,
            ),
            ("acpi*:80860F14:*", "acpi:80860F14:PNP0D40:", true),
            ("acpi*:PNP0D40:*", "acpi:80860F14:PNP0D40:", true),
            ("platform:sdhci-acpi", "platform:sdhci-acpi", true),
            ("mmc:block", "mmc:block", true),
            ("of:N*T*Cvirtio,mmio", "of:NvirtioT(null)Cvirtio,mmio", true),
        ];
        for &(pattern, text, want) in cases {
            assert_eq!(glob_match(pattern, text), want, "{pattern} vs {text}");
            assert_eq!(libc_fnmatch(pattern, text), want, "libc disagrees on {pattern} vs {text}");
        }
    }

    #[test]
    fn glob_edge_cases_agree_with_fnmatch() {
        let cases: &[(&str, &str)] = &[
            ("", ""),
            ("", "a"),
            ("*", ""),
            ("*", "anything/at:all"),
            ("**", "x"),
            ("a*", "a"),
            ("*a", "ba"),
            ("*a", "ab"),
            ("a*b*c", "aXbYc"),
            ("a*b*c", "aXbYcZ"),
            ("a*b*c", "abcbc"),
            ("*ab*ab*", "xabyab"),
            ("*aab", "aaaab"),
            ("?", ""),
            ("?", "a"),
            ("??", "a"),
            ("a?c", "abc"),
            ("a?c", "a/c"),
            ("?*?", "ab"),
            ("[abc]", "b"),
            ("[abc]", "d"),
            ("[!abc]", "d"),
            ("[!abc]", "a"),
            ("[^abc]", "d"),
            ("[a-c]x", "bx"),
            ("[a-c]x", "dx"),
            ("[c-a]", "b"),
            ("[]]", "]"),
            ("[]a]", "a"),
            ("[!]]", "]"),
            ("[!]]", "x"),
            ("[a-]", "-"),
            ("[-a]", "-"),
            ("[a-]", "b"),
            ("[", "["),
            ("[a", "[a"),
            ("[a", "a"),
            ("a[", "a["),
            ("[[:digit:]]", "7"),
            ("[[:digit:]]", "x"),
            ("[[:alpha:][:digit:]]", "q"),
            ("[[:upper:]]", "a"),
            ("[[:xdigit:]]x", "Fx"),
            ("[![:space:]]", " "),
            ("[[:bogus:]]", "b"),
            ("\\*", "*"),
            ("\\*", "a"),
            ("a\\", "a"),
            ("a\\", "a\\"),
            ("\\\\", "\\"),
            ("[\\]]", "]"),
            ("[\\a-c]", "b"),
            ("x*[0-9]", "xyz5"),
            ("x*[0-9]", "xyz"),
            (".*", ".hidden"),
            ("*", ".hidden"),
            ("a/*", "a/b/c"),
        ];
        for &(pattern, text) in cases {
            assert_eq!(glob_match(pattern, text), libc_fnmatch(pattern, text), "{pattern:?} vs {text:?}");
        }
    }

    #[test]
    fn glob_agrees_with_fnmatch_on_random_inputs() {
        // A deterministic xorshift: many short patterns over a small alphabet.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let pattern_atoms = ["a", "b", "-", "_", "*", "?", "[ab]", "[!a]", "[a-b]", "[", "]", "\\*", ":", "*a*"];
        let text_atoms = ["a", "b", "-", "_", "[", "]", "*", ":"];
        for _ in 0..20_000 {
            let plen = (next() % 6) as usize;
            let tlen = (next() % 7) as usize;
            let pattern: String =
                (0..plen).map(|_| pattern_atoms[(next() % pattern_atoms.len() as u64) as usize]).collect();
            let text: String = (0..tlen).map(|_| text_atoms[(next() % text_atoms.len() as u64) as usize]).collect();
            assert_eq!(glob_match(&pattern, &text), libc_fnmatch(&pattern, &text), "{pattern:?} vs {text:?}");
        }
    }

    #[test]
    fn aliases_normalise_like_kmod() {
        assert_eq!(normalize_alias("scsi:t-0x00*").as_deref(), Some("scsi:t_0x00*"));
        assert_eq!(normalize_alias("a-[x-z]-b").as_deref(), Some("a_[x-z]_b"));
        assert_eq!(normalize_alias("a]"), None);
        assert_eq!(normalize_alias("a[b"), None);
        assert_eq!(normalize_alias("crc32c-intel").as_deref(), Some("crc32c_intel"));
        assert!(check_pattern("pci:v*").is_ok());
        assert!(check_pattern("pci:v[").is_err());
    }

    #[test]
    fn alias_table_finds_every_matching_module_once() {
        let table = AliasTable::new([
            ("pci:v00001AF4d*sv*sd*bc*sc*i*", "virtio_pci"),
            ("pci:v00001AF4d00001001sv*sd*bc*sc*i*", "virtio-blk"),
            ("pci:v00001AF4d00001001sv*sd*bc01sc*i*", "virtio-blk"),
            ("scsi:t-0x00*", "sd_mod"),
            ("scsi:t-0x0[07]*", "sd_mod"),
            ("*:wild", "wild"),
            ("acpi*:PNP0D40:*", "sdhci_acpi"),
            ("broken[", "broken"),
        ]);
        assert_eq!(table.len(), 7, "the unbalanced pattern is left out");
        assert!(!table.is_empty());
        assert_eq!(
            table.lookup("pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00"),
            ["virtio_blk", "virtio_pci"],
            "all matches, names normalised, each once"
        );
        assert_eq!(table.lookup("pci:v00008086d00001237sv00001AF4sd00001100bc06sc00i00"), Vec::<String>::new());
        assert_eq!(table.lookup("scsi:t-0x00"), ["sd_mod"], "`-` and `_` are the same");
        assert_eq!(table.lookup("scsi:t_0x07"), ["sd_mod"]);
        assert_eq!(table.lookup("scsi:t-0x05"), Vec::<String>::new());
        assert_eq!(table.lookup("usb:wild"), ["wild"], "patterns without a literal bus are tried too");
        assert_eq!(table.lookup("acpi:80860F14:PNP0D40:"), ["sdhci_acpi"]);
        assert_eq!(table.lookup("scsi:t-0x00]"), Vec::<String>::new(), "kmod refuses an unmatched ]");
        assert_eq!(table.lookup("nocolon"), Vec::<String>::new());
    }

    // --- scheduling ---

    #[test]
    fn loads_in_order_and_skips_dependents_of_failures() {
        let mut index = sample();
        index.modules.push(always("raid1", &["btrfs"], &[]));
        index.modules.push(always("vfat", &[], &[]));
        let order = Mutex::new(Vec::new());
        let report = load_with(&index, |e: &IndexEntry| {
            order.lock().unwrap().push(e.name.clone());
            match e.name.as_str() {
                "crc32c_intel" => Attempt::Failed(Errno::NODEV),
                "xor" => Attempt::Failed(Errno::NOEXEC),
                "libcrc32c" => Attempt::AlreadyPresent,
                _ => Attempt::Loaded,
            }
        });
        // btrfs needs xor (failed): skipped, and so is raid1 which needs btrfs.
        // The failed soft dependency crc32c_intel stops nothing.
        assert_eq!(*order.lock().unwrap(), ["crc32c_generic", "crc32c_intel", "libcrc32c", "xor", "vfat"]);
        let loaded: Vec<&str> = report.loaded.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(loaded, ["crc32c_generic", "vfat"]);
        assert_eq!(report.already_present, ["libcrc32c"]);
        assert_eq!(report.failed.len(), 2);
        assert_eq!(report.failed[1].name, "xor");
        assert_eq!(report.failed[1].errno(), Some(Errno::NOEXEC));
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

    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    /// A pseudo-random index: module i depends on some earlier ones, pre-softdeps
    /// and post-softdeps included.
    fn random_index(seed: u64, n: usize) -> ModuleIndex {
        let mut rng = XorShift(seed | 1);
        let mut modules: Vec<IndexEntry> = Vec::new();
        for i in 0..n {
            let mut e = always(&format!("m{i}"), &[], &[]);
            for j in 0..i {
                match rng.next() % 12 {
                    0 => e.deps.push(format!("m{j}")),
                    1 => e.pre.push(format!("m{j}")),
                    _ => {}
                }
            }
            modules.push(e);
        }
        // A few post-softdeps: module i names a later module.
        for i in 0..n.saturating_sub(1) {
            if rng.next().is_multiple_of(5) {
                let later = format!("m{}", i + 1 + (rng.next() as usize % (n - i - 1)));
                let m = modules.get_mut(i).unwrap();
                if !m.post.contains(&later) {
                    m.post.push(later);
                }
            }
        }
        let index = ModuleIndex { kernel: "6.1.0".into(), modules, aliases: vec![] };
        parse_index(&write_index(&index).unwrap()).unwrap()
    }

    /// What a module must wait for: deps, pre-softdeps and modules naming it as post-softdep.
    fn waits_of(index: &ModuleIndex, name: &str) -> BTreeSet<String> {
        let e = index.modules.iter().find(|m| m.name == name).unwrap();
        let mut w: BTreeSet<String> = e.deps.iter().chain(&e.pre).cloned().collect();
        w.extend(index.modules.iter().filter(|m| m.post.iter().any(|p| p == name)).map(|m| m.name.clone()));
        w
    }

    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Event {
        Start(String),
        Finish(String),
    }

    /// An executor that finishes a random running attempt on each wait, and
    /// records what started and finished when.
    struct Simulated {
        rng: XorShift,
        running: Vec<(usize, String)>,
        events: Vec<Event>,
        max_running: usize,
        fail: BTreeSet<String>,
    }

    impl Simulated {
        fn new(seed: u64, fail: &[&str]) -> Self {
            Simulated {
                rng: XorShift(seed | 1),
                running: Vec::new(),
                events: Vec::new(),
                max_running: 0,
                fail: fail.iter().map(|s| s.to_string()).collect(),
            }
        }
    }

    impl Executor for Simulated {
        fn start(&mut self, i: usize, entry: &IndexEntry) {
            self.events.push(Event::Start(entry.name.clone()));
            self.running.push((i, entry.name.clone()));
            self.max_running = self.max_running.max(self.running.len());
        }

        fn wait(&mut self) -> Option<(usize, Attempt, Duration)> {
            if self.running.is_empty() {
                return None;
            }
            let k = self.rng.next() as usize % self.running.len();
            let (i, name) = self.running.swap_remove(k);
            self.events.push(Event::Finish(name.clone()));
            let attempt = if self.fail.contains(&name) { Attempt::Failed(Errno::INVAL) } else { Attempt::Loaded };
            Some((i, attempt, Duration::from_micros(10)))
        }
    }

    #[test]
    fn parallel_loading_never_starts_a_module_before_what_it_waits_for() {
        for seed in 1..=200u64 {
            let index = random_index(seed.wrapping_mul(0x2545_f491_4f6c_dd1d), 40);
            let fail = format!("m{}", seed % 7);
            let mut auto = Autoloader::with_executor(index.clone(), Simulated::new(seed, &[&fail]), 4);
            assert_eq!(auto.load_everything(), 40);
            let (sim, report) = (&auto.exec, auto.report());
            let skipped: BTreeSet<&str> = report.skipped.iter().map(|s| s.name.as_str()).collect();
            let mut finished = BTreeSet::new();
            let mut started = BTreeSet::new();
            for ev in &sim.events {
                match ev {
                    Event::Start(n) => {
                        assert!(started.insert(n.clone()), "seed {seed}: {n} started twice");
                        for w in waits_of(&index, n) {
                            // A skipped module never starts: waiting for it is over at once.
                            assert!(
                                finished.contains(&w) || skipped.contains(w.as_str()),
                                "seed {seed}: {n} started before {w} finished"
                            );
                        }
                    }
                    Event::Finish(n) => {
                        finished.insert(n.clone());
                    }
                }
            }
            assert!(sim.max_running <= 4, "seed {seed}");
            // Every module is accounted for once; exactly the dependents of the failure are skipped.
            let total = report.loaded.len() + report.failed.len() + report.skipped.len();
            assert_eq!(total, index.modules.len(), "seed {seed}");
            for m in &index.modules {
                let bad_dep = m.deps.iter().any(|d| *d == fail || skipped.contains(d.as_str()));
                assert_eq!(bad_dep, skipped.contains(m.name.as_str()), "seed {seed}: {}", m.name);
                assert_eq!(started.contains(&m.name), !skipped.contains(m.name.as_str()), "seed {seed}: {}", m.name);
            }
            // The report is in index order whatever the completion order.
            let loaded: Vec<&String> = report.loaded.iter().map(|(n, _)| n).collect();
            let mut sorted = loaded.clone();
            sorted.sort_by_key(|n| index.modules.iter().position(|m| &m.name == *n));
            assert_eq!(loaded, sorted);
        }
    }

    #[test]
    fn independent_modules_run_concurrently_up_to_the_pool_size() {
        let modules = (0..8).map(|i| always(&format!("m{i}"), &[], &[])).collect();
        let index = ModuleIndex { kernel: "6.1.0".into(), modules, aliases: vec![] };
        let mut auto = Autoloader::with_executor(index, Simulated::new(7, &[]), 3);
        auto.load_everything();
        assert_eq!(auto.report().loaded.len(), 8);
        assert_eq!(auto.exec.max_running, 3);
        // A chain never runs two at once.
        let chain = (0..5).map(|i| {
            if i == 0 {
                always("c0", &[], &[])
            } else {
                always(&format!("c{i}"), &[&format!("c{}", i - 1)], &[])
            }
        });
        let index = ModuleIndex { kernel: "6.1.0".into(), modules: chain.collect(), aliases: vec![] };
        let mut auto = Autoloader::with_executor(index, Simulated::new(7, &[]), 4);
        auto.load_everything();
        assert_eq!(auto.exec.max_running, 1);
        assert!((1..=MAX_WORKERS).contains(&default_workers()));
    }

    /// The fork executor carries each child's finit_module errno back: load
    /// files that are not modules, several at once, and compare with a direct call.
    #[test]
    fn fork_executor_reports_what_the_kernel_said() {
        let dir = std::env::temp_dir().join(format!("dockroot-fork-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("junk.ko"), b"not an ELF module").unwrap();
        let direct = KernelLoader::attempt_of(KernelLoader::finit(
            &std::ffi::CString::new(dir.join("junk.ko").into_os_string().into_encoded_bytes()).unwrap(),
            0,
        ));
        assert!(matches!(direct, Attempt::Failed(_)), "{direct:?}");
        let modules: Vec<IndexEntry> = (0..6)
            .map(|i| IndexEntry {
                path: if i == 5 { "missing.ko".into() } else { "junk.ko".into() },
                ..always(&format!("dockroot_test_junk{i}"), &[], &[])
            })
            .collect();
        let index = ModuleIndex { kernel: "6.1.0".into(), modules, aliases: vec![] };
        let mut auto = Autoloader::with_executor(index, ForkExecutor::new(KernelLoader::new(&dir)), 4);
        assert_eq!(auto.load_everything(), 6);
        let report = auto.report();
        assert_eq!(report.failed.len(), 6, "{report}");
        for f in &report.failed[..5] {
            assert_eq!(Attempt::Failed(f.errno().unwrap()), direct, "{f}");
        }
        assert_eq!(report.failed[5].errno(), Some(Errno::NOENT));
        assert!(auto.exec.running.is_empty(), "every child reaped");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn schedule_is_pure_and_cascades_skips() {
        let index = machine();
        let graph = Graph::new(&index);
        let names: Vec<&str> = index.modules.iter().map(|m| m.name.as_str()).collect();
        let pos = |n: &str| graph.pos[n];
        let mut s = Schedule::new(index.modules.len());
        // Asking for sd_mod brings scsi_mod and scsi_common, nothing else.
        let set = graph.closure([pos("sd_mod")]);
        assert_eq!(set, [pos("scsi_mod"), pos("scsi_common"), pos("sd_mod")].into_iter().collect());
        assert_eq!(s.queue(&set), 3);
        assert_eq!(s.queue(&set), 0, "queued once");
        assert_eq!(s.next(&graph, &names), Next::Start(pos("scsi_mod")));
        assert_eq!(s.next(&graph, &names), Next::Start(pos("scsi_common")));
        assert_eq!(s.next(&graph, &names), Next::Wait, "sd_mod waits for both");
        s.finish(pos("scsi_mod"), Attempt::Failed(Errno::INVAL), Duration::ZERO);
        assert_eq!(s.next(&graph, &names), Next::Wait);
        s.finish(pos("scsi_common"), Attempt::Loaded, Duration::ZERO);
        assert_eq!(s.next(&graph, &names), Next::Finished);
        assert_eq!(s.done(pos("sd_mod")), Some(&Done::Skipped("scsi_mod".into())));
        // virtio_blk brings its post-softdep, which waits for it.
        let set = graph.closure([pos("virtio_blk")]);
        assert!(set.contains(&pos("blk_helper")) && set.contains(&pos("virtio_ring")));
        s.queue(&set);
        assert_eq!(s.next(&graph, &names), Next::Start(pos("virtio_ring")));
        assert_eq!(s.next(&graph, &names), Next::Wait);
        s.finish(pos("virtio_ring"), Attempt::Loaded, Duration::ZERO);
        assert_eq!(s.next(&graph, &names), Next::Start(pos("virtio")));
        s.finish(pos("virtio"), Attempt::Loaded, Duration::ZERO);
        assert_eq!(s.next(&graph, &names), Next::Start(pos("virtio_blk")));
        assert_eq!(s.next(&graph, &names), Next::Wait, "blk_helper waits for virtio_blk");
        s.finish(pos("virtio_blk"), Attempt::Loaded, Duration::ZERO);
        assert_eq!(s.next(&graph, &names), Next::Start(pos("blk_helper")));
    }

    // --- the autoloader ---

    type Calls = Mutex<Vec<String>>;

    fn recording(calls: &Calls) -> impl Fn(&IndexEntry) -> Attempt + Sync + '_ {
        move |e: &IndexEntry| {
            calls.lock().unwrap().push(e.name.clone());
            if e.name == "nvme_core" {
                Attempt::Failed(Errno::NOMEM)
            } else {
                Attempt::Loaded
            }
        }
    }

    fn sorted(v: &[String]) -> Vec<String> {
        let mut v = v.to_vec();
        v.sort();
        v
    }

    #[test]
    fn autoloader_loads_always_then_what_devices_ask_for_each_once() {
        let calls = Calls::default();
        let mut auto = Autoloader::with_loader(machine(), recording(&calls));
        assert_eq!(auto.load_unconditional(), 3);
        assert_eq!(sorted(&calls.lock().unwrap()), ["btrfs", "crc32c_generic", "libcrc32c"]);
        assert_eq!(auto.load_unconditional(), 0, "nothing twice");

        calls.lock().unwrap().clear();
        assert_eq!(auto.on_modalias("virtio:d00000002v00001AF4"), 4);
        assert_eq!(sorted(&calls.lock().unwrap()), ["blk_helper", "virtio", "virtio_blk", "virtio_ring"]);
        calls.lock().unwrap().clear();
        assert_eq!(auto.on_modalias("virtio:d00000002v00001AF4"), 0, "a modalias seen before does nothing");
        assert_eq!(auto.on_modalias("pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00"), 1);
        assert_eq!(*calls.lock().unwrap(), ["virtio_pci"], "its deps are loaded already");

        // A failed hard dependency skips the driver; the report says so.
        assert_eq!(auto.on_modalias("pci:v00001B36d00000010sv00001AF4sd00001100bc01sc08i02"), 2);
        let report = auto.report();
        assert_eq!(report.failed.len(), 1);
        assert_eq!(report.skipped, [Skipped { name: "nvme".into(), because_of: "nvme_core".into() }]);

        // Unmatched: deduplicated, sorted, no CPU aliases, no devices with a driver.
        auto.on_modalias("acpi:PNP0303:");
        auto.on_modalias("acpi:PNP0303:");
        auto.on_modalias("cpu:type:x86,ven0002fam001Amod0002:feature:,0000");
        auto.on_device("pci:v00008086d00001237sv00001AF4sd00001100bc06sc00i00", Path::new("/fake/bridge"));
        auto.on_device("platform:pcspkr", Path::new("/fake/pcspkr"));
        assert_eq!(
            auto.unmatched_with(|d| d == Path::new("/fake/pcspkr")),
            ["acpi:PNP0303:", "pci:v00008086d00001237sv00001AF4sd00001100bc06sc00i00"]
        );
        assert_eq!(auto.modaliases_seen(), 7);
        let loaded = auto.loaded();
        assert_eq!(
            loaded,
            ["crc32c_generic", "libcrc32c", "btrfs", "virtio_ring", "virtio", "virtio_pci", "virtio_blk", "blk_helper"]
        );
        let text = auto.to_string();
        assert!(text.starts_with("kernel modules: 8 loaded, 0 already present, 1 failed, 1 skipped ("), "{text}");
        assert!(
            text.contains("(7 of them for devices); 10 of 13 in the initramfs tried; 7 modalias strings seen"),
            "{text}"
        );
        assert!(text.contains("\n  failed: nvme_core (/lib/modules/6.1.0-56-amd64/kernel/nvme_core.ko): "), "{text}");
        assert!(text.contains("\n  skipped: nvme (needs nvme_core, which did not load)"), "{text}");
    }

    #[test]
    fn modalias_of_an_always_module_before_it_loaded_loads_it_once() {
        let calls = Calls::default();
        let mut index = machine();
        index.aliases.push(alias("fs:btrfs*", "btrfs"));
        let mut auto = Autoloader::with_loader(index, recording(&calls));
        assert_eq!(auto.on_modalias("fs:btrfs"), 3);
        assert_eq!(auto.load_unconditional(), 0);
        assert_eq!(auto.load_everything(), 10);
        assert_eq!(calls.lock().unwrap().len(), 12, "all but nvme, skipped after nvme_core failed");
    }

    /// A fake /sys/devices.
    fn fake_sysfs(tag: &str) -> PathBuf {
        let root = std::env::temp_dir().join(format!("dockroot-sysfs-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let write = |rel: &str, text: &str| {
            let p = root.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        write("pci0000:00/0000:00:02.0/modalias", "pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00\n");
        write("pci0000:00/0000:00:02.0/virtio1/modalias", "virtio:d00000002v00001AF4\n");
        write("pci0000:00/0000:00:03.0/modalias", "pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00\n");
        write("pci0000:00/0000:00:00.0/modalias", "pci:v00008086d00001237sv00001AF4sd00001100bc06sc00i00\n");
        write("pci0000:00/0000:00:00.0/vendor", "0x8086\n");
        write("platform/pcspkr/modalias", "platform:pcspkr\n");
        write("platform/empty/modalias", "\n");
        write("system/cpu/modalias", "cpu:type:x86,ven0002fam001Amod0002:feature:,0000\n");
        write("a/b/c/d/e/deep/modalias", "scsi:t-0x00\n");
        // A symlink loop and a link to a device: never followed.
        std::os::unix::fs::symlink(&root, root.join("pci0000:00/loop")).unwrap();
        std::os::unix::fs::symlink(root.join("a"), root.join("platform/pcspkr/subsystem")).unwrap();
        std::os::unix::fs::symlink(root.join("platform/pcspkr"), root.join("platform/pcspkr/driver")).unwrap();
        root
    }

    #[test]
    fn collects_modaliases_without_following_links_and_bounded() {
        let root = fake_sysfs("collect");
        let found = collect_modaliases(&root, SYSFS_MAX_DEPTH).unwrap();
        let keys: Vec<&str> = found.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "cpu:type:x86,ven0002fam001Amod0002:feature:,0000",
                "pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00",
                "pci:v00008086d00001237sv00001AF4sd00001100bc06sc00i00",
                "platform:pcspkr",
                "scsi:t-0x00",
                "virtio:d00000002v00001AF4",
            ]
        );
        assert_eq!(found["virtio:d00000002v00001AF4"], root.join("pci0000:00/0000:00:02.0/virtio1"));
        let shallow = collect_modaliases(&root, 2).unwrap();
        assert!(!shallow.contains_key("scsi:t-0x00") && !shallow.contains_key("virtio:d00000002v00001AF4"));
        assert!(shallow.contains_key("platform:pcspkr"));
        let e = collect_modaliases(&root.join("nonexistent"), 4).unwrap_err().to_string();
        assert!(e.contains("listing") && e.contains("nonexistent"), "{e}");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn coldplug_loads_the_drivers_of_a_fake_machine() {
        let root = fake_sysfs("coldplug");
        let calls = Calls::default();
        let mut auto = Autoloader::with_loader(machine(), recording(&calls));
        auto.load_unconditional();
        let tried = auto.coldplug(&root).unwrap();
        assert_eq!(tried, 8, "virtio_pci, virtio_blk and sd_mod with their deps and softdeps");
        let c = sorted(&calls.lock().unwrap());
        for m in ["virtio_pci", "virtio_blk", "blk_helper", "sd_mod", "scsi_mod"] {
            assert!(c.contains(&m.to_string()), "{m} not loaded: {c:?}");
        }
        assert!(!c.contains(&"nvme".to_string()));
        assert_eq!(c.len(), 11, "each module once: {c:?}");
        // The second walk found nothing new.
        assert_eq!(auto.walks, 2);
        let unmatched = auto.unmatched();
        assert_eq!(unmatched, ["pci:v00008086d00001237sv00001AF4sd00001100bc06sc00i00"], "pcspkr has a driver link");
        assert_eq!(auto.coldplug(&root).unwrap(), 0);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn start_loads_always_and_coldplug_in_one_round_and_hooks_follow_uevents() {
        use crate::devices::WaitHooks;
        use crate::uevent::{Action, Uevent};
        let root = fake_sysfs("hooks");
        let calls = Calls::default();
        let mut auto = Autoloader::with_loader(machine(), recording(&calls));
        assert_eq!(auto.start(&root).unwrap(), 11, "3 always + 8 for the devices");
        assert_eq!(auto.report().loaded.len(), 11);
        calls.lock().unwrap().clear();

        let event = |action: Action, modalias: Option<&str>| Uevent {
            action,
            devpath: "/devices/dockroot-test/no-such-device".into(),
            subsystem: Some("pci".into()),
            devname: None,
            devtype: None,
            modalias: modalias.map(str::to_owned),
            driver: None,
            major: None,
            minor: None,
            partn: None,
            seqnum: Some(1),
        };
        let nvme = "pci:v00001B36d00000010sv00001AF4sd00001100bc01sc08i02";
        auto.on_uevent(&event(Action::Change, Some(nvme)));
        auto.on_uevent(&event(Action::Add, None));
        assert!(calls.lock().unwrap().is_empty(), "only add events with a MODALIAS load modules");
        auto.on_uevent(&event(Action::Add, Some(nvme)));
        assert_eq!(sorted(&calls.lock().unwrap()), ["nvme_core"], "nvme is skipped after nvme_core failed");
        auto.on_uevent(&event(Action::Add, Some("pci:v0000DEADd0000BEEFsv00000000sd00000000bc01sc00i00")));

        // A lost batch of events: walk again, find the new device.
        let dir = root.join("pci0000:00/0000:00:06.0/host0/target0:0:0/0:0:0:1");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("modalias"), "scsi:t-0x0e\n").unwrap();
        auto.on_overflow();
        assert!(auto.seen.contains_key("scsi:t-0x0e"), "walked again");

        let lines = auto.diagnostics();
        assert!(lines[0].starts_with("kernel modules: 11 loaded, 0 already present, 1 failed, 1 skipped"), "{lines:?}");
        assert!(lines.contains(&"module skipped: nvme (needs nvme_core, which did not load)".to_string()), "{lines:?}");
        assert!(lines.iter().any(|l| l.starts_with("module failed: nvme_core (/lib/modules/")), "{lines:?}");
        assert!(
            lines.iter().any(|l| l.starts_with("modules loaded: crc32c_generic libcrc32c btrfs scsi_mod")),
            "{lines:?}"
        );
        let n = lines.len();
        assert_eq!(lines[n - 2], "2 modalias strings no module of the initramfs matches (devices without a driver):");
        assert_eq!(
            lines[n - 1],
            "  pci:v00008086d00001237sv00001AF4sd00001100bc06sc00i00  pci:v0000DEADd0000BEEFsv00000000sd00000000bc01sc00i00"
        );
        // Many: lines of DIAGNOSTIC_LINE_BYTES at most, every alias whole.
        for i in 0..40 {
            auto.on_modalias(&format!("acpi:TEST{i:04}:"));
        }
        auto.on_modalias("input:b0011v0001p0001eAB41-e0,1,4,11,14");
        auto.on_modalias("dmi:bvnSeaBIOS:bvr1.16.2");
        let lines = auto.diagnostic_lines();
        let start = lines.iter().position(|l| l.starts_with("42 modalias strings")).unwrap();
        let listed: Vec<&str> = lines[start + 1..].iter().flat_map(|l| l.split_whitespace()).collect();
        assert_eq!(listed.len(), 42);
        assert!(
            listed.contains(&"acpi:TEST0039:")
                && !listed.iter().any(|l| l.starts_with("input:") || l.starts_with("dmi:"))
        );
        assert!(lines[start + 1..].iter().all(|l| l.len() <= DIAGNOSTIC_LINE_BYTES + 2 + 20), "{lines:?}");
        assert!(lines.len() > start + 2);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn hints_for_common_errnos() {
        assert!(errno_hint(Errno::KEYREJECTED).unwrap().contains("signature rejected"));
        assert!(errno_hint(Errno::NOEXEC).unwrap().contains("another kernel"));
        assert_eq!(errno_hint(Errno::ROFS), None);
        let f =
            Failure { name: "x".into(), path: "x.ko.zst".into(), cause: Cause::Unsupported("zstd-compressed".into()) };
        assert_eq!(f.to_string(), "x (/x.ko.zst): zstd-compressed");
        assert_eq!(f.errno(), None);
    }

    #[test]
    fn compression_from_the_file_name() {
        assert_eq!(module_compression("a/b.ko.xz"), Some("xz"));
        assert_eq!(module_compression("a/b.ko.zst"), Some("zstd"));
        assert_eq!(module_compression("a/b.ko.gz"), Some("gzip"));
        assert_eq!(module_compression("a/b.ko"), None);
    }

    #[test]
    fn finit_results_map_to_attempts() {
        assert_eq!(KernelLoader::attempt_of(Ok(())), Attempt::Loaded);
        assert_eq!(KernelLoader::attempt_of(Err(Errno::EXIST)), Attempt::AlreadyPresent);
        for e in [Errno::NOEXEC, Errno::NOENT, Errno::OPNOTSUPP, Errno::KEYREJECTED, Errno::PERM, Errno::INVAL] {
            assert_eq!(KernelLoader::attempt_of(Err(e)), Attempt::Failed(e), "{e:?}");
        }
    }

    #[test]
    fn says_who_decompressed_the_loaded_modules() {
        let paths = ["a.ko.xz", "b.ko.zst", "c.ko", "d.ko.xz", "e.ko.gz", "f.ko.zst"];
        assert_eq!(
            decompression_summary(paths, Some("xz")).unwrap(),
            "compressed kernel modules loaded: decompressed by the kernel (MODULE_INIT_COMPRESSED_FILE): 2 xz; \
             decompressed by this init: 2 zstd, 1 gzip"
        );
        assert_eq!(
            decompression_summary(paths, None).unwrap(),
            "compressed kernel modules loaded: decompressed by this init: 2 xz, 2 zstd, 1 gzip"
        );
        assert_eq!(
            decompression_summary(["a.ko.xz"], Some("xz")).unwrap(),
            "compressed kernel modules loaded: decompressed by the kernel (MODULE_INIT_COMPRESSED_FILE): 1 xz"
        );
        assert_eq!(decompression_summary(["a.ko", "b.ko"], Some("xz")), None);
        assert_eq!(decompression_summary([], None), None);
    }

    #[test]
    fn autoloader_counts_only_modules_it_loaded_for_the_decompression_line() {
        let mut index = sample();
        for m in &mut index.modules {
            m.path = format!("{}.ko.zst", m.name);
        }
        let names: Vec<String> = index.modules.iter().map(|m| m.name.clone()).collect();
        let present = names.first().cloned().unwrap();
        let mut auto =
            Autoloader::with_loader(
                index,
                move |e: &IndexEntry| {
                    if e.name == present {
                        Attempt::AlreadyPresent
                    } else {
                        Attempt::Loaded
                    }
                },
            );
        assert_eq!(auto.decompression_line(), None, "nothing loaded yet");
        auto.load_everything();
        let loaded = auto.report().loaded.len();
        assert!(loaded > 0 && loaded < names.len(), "{:?}", auto.report());
        auto.kernel_compression = Some("zstd".into());
        assert_eq!(
            auto.decompression_line().unwrap(),
            format!("compressed kernel modules loaded: decompressed by the kernel (MODULE_INIT_COMPRESSED_FILE): {loaded} zstd")
        );
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
        std::fs::write(dir.join(INDEX_PATH), write_index(&machine()).unwrap()).unwrap();
        assert_eq!(read_index(&dir).unwrap(), Some(machine()));
        std::fs::write(dir.join(INDEX_PATH), "garbage\n").unwrap();
        let e = read_index(&dir).unwrap_err().to_string();
        assert!(e.contains("dockroot-modules.index") && e.contains("line 1"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn load_all_refuses_another_kernel() {
        let index = ModuleIndex {
            kernel: "0.0.0-not-this-kernel".into(),
            modules: vec![always("a", &[], &[])],
            aliases: vec![],
        };
        let e = load_all(&index, Path::new("/nonexistent")).unwrap_err().to_string();
        assert!(e.contains("carries modules for 0.0.0-not-this-kernel but the running kernel is"), "{e}");
    }

    #[cfg(feature = "decompress-modules")]
    #[test]
    fn decompresses_what_the_real_tools_make() {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let data: Vec<u8> = (0..100_000u32).flat_map(|i| (i % 253).to_le_bytes()).collect();
        let pipe = |cmd: &str, args: &[&str]| {
            let mut child = Command::new(cmd).args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
            let mut stdin = child.stdin.take().unwrap();
            let input = data.clone();
            let w = std::thread::spawn(move || stdin.write_all(&input).unwrap());
            let out = child.wait_with_output().unwrap();
            w.join().unwrap();
            out.stdout
        };
        assert_eq!(decompress("xz", &pipe("xz", &["--check=crc32", "-c"])).unwrap(), data);
        assert_eq!(decompress("zstd", &pipe("zstd", &["-q", "-c"])).unwrap(), data);
        assert_eq!(decompress("gzip", &pipe("gzip", &["-c"])).unwrap(), data, "with a file name in the header");
        assert!(decompress("xz", b"not xz").unwrap_err().starts_with("xz:"));
        assert!(decompress("gzip", b"\x1f\x8b").is_err());
    }
}
