//! The module index: the contract between the builder (`dockroot-mkinitramfs`,
//! which writes it with [`write_index`]) and the init (which reads it with
//! [`read_index`]). The format is described in the docs of [`crate::modules`].
//!
//! All pure (text in, text out) but for [`read_index`], which reads one file.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Component, Path};

use super::normalize_alias;
use crate::error::{Context, Error, Result};

/// Where the builder puts the index, relative to the initramfs root.
pub const INDEX_PATH: &str = "lib/modules/dockroot-modules.index";

/// The first line of an index this code writes.
pub const INDEX_HEADER: &str = "dockroot-modules 3";
/// The first line of the previous format, still read: the same lines, but no
/// `fs-TYPE` aliases (its builder loaded filesystems at every boot).
const INDEX_HEADER_2: &str = "dockroot-modules 2";

/// The alias naming the modules a mount of filesystem `fstype` needs: the
/// kernel's own name for it (`MODULE_ALIAS_FS`, what `request_module` asks for).
pub fn filesystem_alias(fstype: &str) -> String {
    format!("fs-{fstype}")
}

/// The largest index [`read_index`] accepts (every module of a distribution
/// kernel with all its aliases is about 2 MiB).
pub const INDEX_MAX_BYTES: u64 = 8 << 20;
/// A module name as the kernel spells it: `-` becomes `_`
/// (`crc32c-intel.ko` is the module `crc32c_intel`).
pub fn normalize_name(name: &str) -> String {
    name.replace('-', "_")
}

/// When the init loads a module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Load {
    /// At every boot (modules asked for by name, host-only filesystems, what
    /// they need).
    Always,
    /// Only when a device's modalias or a mount's `fs-TYPE` matches one of its
    /// aliases (or a module being loaded needs it).
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
        Some((_, INDEX_HEADER | INDEX_HEADER_2)) => {}
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modules::fixtures::*;

    #[test]
    fn write_then_parse_round_trips() {
        let index = machine();
        let text = write_index(&index).unwrap();
        assert!(text.starts_with("dockroot-modules 3\nkernel 6.1.0-56-amd64\n"), "{text}");
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
        let head = "dockroot-modules 3\nkernel 6.1.0\n";
        let ok = "module a a.ko always deps= pre= post=\n";
        assert_eq!(parse_err(""), "module index is empty");
        let e = parse_err("dockroot-modules 1\n");
        assert!(e.starts_with("module index line 1: format \"dockroot-modules 1\" is not supported"), "{e}");
        assert!(e.contains("rebuild the initramfs"), "{e}");
        assert!(parse_err("something\n").starts_with("module index line 1: expected"));
        assert!(parse_err("dockroot-modules 3\nkernal 6.1\n").starts_with("module index line 2:"));
        assert!(parse_err("dockroot-modules 3\nkernel \n").starts_with("module index line 2:"));
        assert_eq!(parse_err("dockroot-modules 3\n"), "module index ends before its `kernel RELEASE` line");
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
}
