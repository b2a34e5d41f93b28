//! Alias matching, as modprobe does it: kmod's normalisation of aliases and
//! modaliases, fnmatch(3) in the C locale, and [`AliasTable`], the patterns of
//! an index grouped by bus for quick lookups. All pure.

use std::collections::{BTreeMap, BTreeSet};

use super::{normalize_name, ModuleIndex};

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

/// The modules of `index` made for CPU features the CPU lacks: each of their
/// aliases is a `cpu:` one and none matches `cpu`, the CPU's modalias
/// (`/sys/devices/system/cpu/modalias`). Accelerated variants such as
/// crc32c_intel: their init refuses such a CPU (ENODEV) and udev would not
/// load them, so the autoloader does not try (a failed load costs a module's
/// signature check, and its cleanup waits for every CPU to reschedule, which
/// a module benchmarking with preemption off delays). Each once, in the
/// order of the index's aliases.
pub fn not_for_cpu(index: &ModuleIndex, aliases: &AliasTable, cpu: &str) -> Vec<String> {
    let fits = aliases.lookup(cpu);
    let mut out: Vec<String> = Vec::new();
    for a in index.aliases.iter().filter(|a| a.pattern.starts_with("cpu:")) {
        let m = normalize_name(&a.module);
        let other = index.aliases.iter().any(|b| !b.pattern.starts_with("cpu:") && normalize_name(&b.module) == m);
        if !other && !fits.contains(&m) && !out.contains(&m) {
            out.push(m);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modules::*;

    #[test]
    fn modules_for_cpu_features_the_cpu_lacks_are_ruled_out() {
        let a = |pattern: &str, module: &str| Alias { pattern: pattern.into(), module: module.into() };
        let index = ModuleIndex {
            kernel: "6.1.0".into(),
            modules: vec![],
            aliases: vec![
                a("cpu:type:x86,ven*fam*mod*:feature:*0094*", "crc32c_intel"),
                a("cpu:type:x86,ven*fam*mod*:feature:*0089*", "sha256_ssse3"),
                a("cpu:type:x86,ven*fam*mod*:feature:*009C*", "sha256_ssse3"),
                // A cpu: alias and a device alias: not a CPU variant, kept.
                a("cpu:type:x86,ven*fam*mod*:feature:*0123*", "both"),
                a("pci:v00001AF4d*sv*sd*bc*sc*i*", "both"),
                a("virtio:d00000002v*", "virtio_blk"),
            ],
        };
        let table = AliasTable::of_index(&index);
        let unfit = |cpu: &str| not_for_cpu(&index, &table, cpu);
        assert_eq!(unfit("cpu:type:x86,ven0000fam0006mod0006:feature:,0000,0001,0089"), ["crc32c_intel"]);
        assert!(unfit("cpu:type:x86,ven0000fam0006mod0006:feature:,0000,0094,009C").is_empty());
        assert_eq!(unfit("cpu:type:x86,ven0000fam0006mod0006:feature:,0000"), ["crc32c_intel", "sha256_ssse3"]);
        // Another architecture's CPU matches no x86 pattern.
        assert_eq!(unfit("cpu:type:aarch64:feature:,0000,0001").len(), 2);
    }

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
}
