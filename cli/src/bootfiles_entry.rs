//! `dockroot boot-files`, the pure part: the Boot Loader Specification entry
//! (render, parse), the entry name, the command line it carries (this boot's,
//! without the per-boot markers), the `LoaderDevicePartUUID` EFI variable, the
//! order of kernel releases, the update plan (what to write and remove on the
//! ESP given what is there) and the GRUB and rEFInd stanzas. No system calls.

use std::cmp::Ordering;

/// Where the files live on the ESP: `/dockroot/ENTRY/DIR/{linux,initrd}`.
pub const ESP_DIR: &str = "dockroot";
/// The entries' directory on the ESP (systemd-boot, BLS Type 1).
pub const ENTRIES_DIR: &str = "loader/entries";
/// The kernel's and the initramfs's file names inside a content directory.
pub const KERNEL_FILE: &str = "linux";
pub const INITRD_FILE: &str = "initrd";
/// The suffix of what is being written: an entry (`ENTRY.conf.dockroot-tmp`, not
/// `*.conf`, so no boot loader reads it) or a content directory.
pub const TMP_SUFFIX: &str = ".dockroot-tmp";
/// The longest entry name.
const MAX_ENTRY_NAME: usize = 64;

/// Check an entry name (`--entry`): `[A-Za-z0-9._-]`, not starting with a dot,
/// at most 64 characters.
pub fn check_entry_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_ENTRY_NAME {
        return Err(format!("entry name {name:?} must be 1 to {MAX_ENTRY_NAME} characters"));
    }
    if name.starts_with('.') {
        return Err(format!("entry name {name:?} must not start with a dot"));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return Err(format!("entry name {name:?} contains {c:?}: use only A-Z a-z 0-9 . _ -"));
    }
    Ok(())
}

/// The content directory's name: the release (with anything a FAT file name
/// cannot hold replaced by `_`) and the first 12 hex digits of the content hash.
pub fn content_dir_name(release: &str, hash_hex: &str) -> String {
    let release: String = release
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+') { c } else { '_' })
        .collect();
    let hash: String = hash_hex.chars().take(12).collect();
    format!("{release}-{hash}")
}

/// What an entry says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Entry {
    pub title: String,
    pub version: String,
    /// Paths on the ESP, starting with `/`.
    pub linux: String,
    pub initrd: String,
    pub options: String,
}

impl Entry {
    /// The entry file's text.
    pub fn render(&self) -> String {
        format!(
            "# Written by dockroot boot-files: the kernel and dockroot initramfs of the image the\n\
             # next boot boots. It is rewritten when that image changes; edit options here or\n\
             # give dockroot boot-files --cmdline.\n\
             title {}\nversion {}\nlinux {}\ninitrd {}\noptions {}\n",
            one_line(&self.title),
            one_line(&self.version),
            self.linux,
            self.initrd,
            one_line(&self.options)
        )
    }

    /// Parse an entry file (any BLS Type 1 entry: unknown keys are ignored,
    /// several `options` lines are joined with a space, as systemd-boot does).
    pub fn parse(text: &str) -> Entry {
        let mut e = Entry::default();
        let mut options: Vec<&str> = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let (key, value) = line.split_once(|c: char| c.is_whitespace()).unwrap_or((line, ""));
            let value = value.trim();
            match key {
                "title" => e.title = value.to_string(),
                "version" => e.version = value.to_string(),
                "linux" => e.linux = value.to_string(),
                "initrd" if e.initrd.is_empty() => e.initrd = value.to_string(),
                "options" if !value.is_empty() => options.push(value),
                _ => {}
            }
        }
        e.options = options.join(" ");
        e
    }
}

/// A value on one line (an entry is line based).
fn one_line(s: &str) -> String {
    s.split(['\n', '\r']).map(str::trim).filter(|p| !p.is_empty()).collect::<Vec<_>>().join(" ")
}

/// The ESP path of a file of the content directory `dir` of `entry`.
pub fn esp_path(entry: &str, dir: &str, file: &str) -> String {
    format!("/{ESP_DIR}/{entry}/{dir}/{file}")
}

/// The kernel command line tokens as written (quotes kept), split as the
/// kernel splits them: white space separates, double quotes group.
fn raw_tokens(cmdline: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start: Option<usize> = None;
    let mut quoted = false;
    for (i, c) in cmdline.char_indices() {
        match (c, start) {
            ('"', None) => {
                start = Some(i);
                quoted = true;
            }
            ('"', Some(_)) => quoted = !quoted,
            (c, Some(s)) if c.is_whitespace() && !quoted => {
                out.extend(cmdline.get(s..i));
                start = None;
            }
            (c, None) if !c.is_whitespace() => start = Some(i),
            _ => {}
        }
    }
    if let Some(s) = start {
        out.extend(cmdline.get(s..));
    }
    out
}

/// The key of a raw token (`key=value`, quotes removed).
fn token_key(token: &str) -> String {
    token.split('=').next().unwrap_or_default().replace('"', "")
}

/// The command line for the entry from this boot's (`/proc/cmdline`): without
/// what the boot loader or this boot added: `BOOT_IMAGE=` and `initrd=` (the
/// loader's), `dockroot.kexec_from=` (the kexec marker, `kernel::kexec_cmdline`)
/// and the `dockroot.image=` that kexec carries right before it (a one-shot
/// choice of that boot, already used). Everything after `--` is kept as it is.
pub fn entry_cmdline(proc_cmdline: &str) -> String {
    let tokens = raw_tokens(proc_cmdline.trim());
    let end = tokens.iter().position(|t| *t == "--").unwrap_or(tokens.len());
    let (args, rest) = tokens.split_at(end);
    let mut keep: Vec<&str> = Vec::new();
    for (i, t) in args.iter().enumerate() {
        let key = token_key(t);
        let carried = key == "dockroot.image"
            && args.get(i.saturating_add(1)).is_some_and(|n| token_key(n) == "dockroot.kexec_from");
        if !(carried || matches!(key.as_str(), "BOOT_IMAGE" | "initrd" | "dockroot.kexec_from")) {
            keep.push(t);
        }
    }
    keep.extend(rest);
    keep.join(" ")
}

/// Decode the `LoaderDevicePartUUID` EFI variable (efivarfs: 4 attribute bytes,
/// then a UTF-16LE GUID string, NUL-terminated): the ESP's partition GUID, lower case.
pub fn decode_loader_partuuid(bytes: &[u8]) -> Result<String, String> {
    let data = bytes.get(4..).ok_or("LoaderDevicePartUUID: shorter than its attributes")?;
    let units: Vec<u16> = data
        .chunks_exact(2)
        .map(|c| match c {
            [a, b] => u16::from_le_bytes([*a, *b]),
            _ => 0,
        })
        .take_while(|&u| u != 0)
        .collect();
    let s = String::from_utf16(&units).map_err(|_| "LoaderDevicePartUUID: not UTF-16".to_string())?;
    let s = s.trim().to_ascii_lowercase();
    let groups: Vec<&str> = s.split('-').collect();
    let lens: Vec<usize> = groups.iter().map(|g| g.len()).collect();
    if lens != [8, 4, 4, 4, 12] || !s.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        return Err(format!("LoaderDevicePartUUID: {s:?} is not a GUID"));
    }
    Ok(s)
}

/// Compare kernel releases in version order (`sort -V`): runs of digits
/// numerically, other runs as text; `6.12.10` is newer than `6.12.9`.
pub fn version_cmp(a: &str, b: &str) -> Ordering {
    fn runs(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for i in 1..=bytes.len() {
            let boundary = i == bytes.len()
                || bytes.get(i).map(u8::is_ascii_digit) != bytes.get(i.saturating_sub(1)).map(u8::is_ascii_digit);
            if boundary {
                let digits = bytes.get(start).is_some_and(u8::is_ascii_digit);
                out.extend(s.get(start..i).map(|r| (digits, r)));
                start = i;
            }
        }
        out
    }
    let (ra, rb) = (runs(a), runs(b));
    for (x, y) in ra.iter().zip(&rb) {
        let o = match (x, y) {
            ((true, p), (true, q)) => {
                let (p, q) = (p.trim_start_matches('0'), q.trim_start_matches('0'));
                p.len().cmp(&q.len()).then_with(|| p.cmp(q))
            }
            ((_, p), (_, q)) => p.cmp(q),
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    ra.len().cmp(&rb.len()).then_with(|| a.cmp(b))
}

/// What is on the ESP now, for [`plan_update`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EspState {
    /// `/loader/entries/ENTRY.conf`'s text, if it exists.
    pub entry_text: Option<String>,
    /// `/loader/entries/ENTRY.conf.dockroot-tmp` exists (a run stopped half way).
    pub temp_entry: bool,
    /// The names in `/dockroot/ENTRY/`.
    pub dirs: Vec<String>,
    /// The wanted content directory exists and holds exactly the wanted files.
    pub wanted_complete: bool,
}

/// What to do on the ESP, in this order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Update {
    /// Write the content directory (its name) with both files.
    pub write_dir: Option<String>,
    /// Write the entry (text).
    pub write_entry: Option<String>,
    /// Remove the leftover temporary entry.
    pub remove_temp_entry: bool,
    /// Remove these names of `/dockroot/ENTRY/` (after the entry is written).
    pub remove_dirs: Vec<String>,
}

impl Update {
    pub fn changes(&self) -> bool {
        self.write_dir.is_some() || self.write_entry.is_some() || self.remove_temp_entry || !self.remove_dirs.is_empty()
    }
}

/// The update that makes the ESP hold `dir` (complete) and `entry` naming it,
/// and nothing else under `/dockroot/ENTRY/`. Nothing when it already does.
pub fn plan_update(state: &EspState, dir: &str, entry_text: &str) -> Update {
    let mut remove_dirs: Vec<String> = state.dirs.iter().filter(|d| *d != dir).cloned().collect();
    remove_dirs.sort();
    Update {
        write_dir: (!state.wanted_complete).then(|| dir.to_string()),
        write_entry: (state.entry_text.as_deref() != Some(entry_text)).then(|| entry_text.to_string()),
        remove_temp_entry: state.temp_entry,
        remove_dirs,
    }
}

/// GRUB's single-quoted string.
fn grub_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The GRUB menu entry for `entry`, its files on the ESP (mounted at `esp_shown`;
/// `fs_uuid`: the ESP's filesystem UUID, to find it).
pub fn grub_stanza(entry: &Entry, esp_shown: &str, fs_uuid: Option<&str>) -> String {
    let search = match fs_uuid {
        Some(u) => format!("    search --no-floppy --fs-uuid --set=root {u}\n"),
        None => "    # set root to the EFI system partition, e.g. search --no-floppy --fs-uuid --set=root XXXX-XXXX\n"
            .into(),
    };
    format!(
        "# dockroot: add to /etc/grub.d/40_custom, then update-grub. The paths are on the EFI\n\
         # system partition (mounted at {esp_shown}), not on /boot.\n\
         menuentry {} {{\n{search}    linux {} {}\n    initrd {}\n}}\n",
        grub_quote(&entry.title),
        entry.linux,
        entry.options,
        entry.initrd
    )
}

/// The rEFInd manual stanza for `entry` (`partuuid`: the ESP's partition GUID).
pub fn refind_stanza(entry: &Entry, esp_shown: &str, partuuid: Option<&str>) -> String {
    let volume = match partuuid {
        Some(p) => format!("    volume {p}\n"),
        None => String::new(),
    };
    format!(
        "# dockroot: add to refind.conf. The paths are on the EFI system partition (mounted at {esp_shown}).\n\
         menuentry \"{}\" {{\n{volume}    loader {}\n    initrd {}\n    options \"{}\"\n}}\n",
        entry.title.replace('"', "'"),
        entry.linux,
        entry.initrd,
        entry.options.replace('"', "'")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            title: "example/os:2".into(),
            version: "6.12.57+deb13-amd64".into(),
            linux: "/dockroot/dockroot/6.12.57+deb13-amd64-0123456789ab/linux".into(),
            initrd: "/dockroot/dockroot/6.12.57+deb13-amd64-0123456789ab/initrd".into(),
            options: "root=LABEL=disk rootflags=subvol=rw quiet".into(),
        }
    }

    #[test]
    fn renders_and_parses_an_entry() {
        let e = entry();
        let text = e.render();
        assert!(
            text.contains("\ntitle example/os:2\nversion 6.12.57+deb13-amd64\nlinux /dockroot/dockroot/"),
            "{text}"
        );
        assert!(text.ends_with("options root=LABEL=disk rootflags=subvol=rw quiet\n"), "{text}");
        assert_eq!(Entry::parse(&text), e);
        let hand =
            "title  A\n# comment\noptions root=/dev/sda2\noptions  quiet \nlinux /vmlinuz\ninitrd /a\ninitrd /b\n";
        let p = Entry::parse(hand);
        assert_eq!((p.title.as_str(), p.options.as_str(), p.initrd.as_str()), ("A", "root=/dev/sda2 quiet", "/a"));
        let odd = Entry { title: "a\nb".into(), ..entry() };
        assert!(odd.render().contains("title a b\n"));
    }

    #[test]
    fn validates_entry_names() {
        for ok in ["dockroot", "dockroot-2", "a.b_c", "X9"] {
            assert_eq!(check_entry_name(ok), Ok(()), "{ok}");
        }
        for bad in ["", ".hidden", "a/b", "a b", "ä", "x*", &"a".repeat(65)] {
            assert!(check_entry_name(bad).is_err(), "{bad}");
        }
        assert_eq!(content_dir_name("6.12.57+deb13-amd64", "0123456789abcdef"), "6.12.57+deb13-amd64-0123456789ab");
        assert_eq!(content_dir_name("a:b", "ff"), "a_b-ff");
    }

    #[test]
    fn takes_this_boots_command_line_without_per_boot_markers() {
        assert_eq!(
            entry_cmdline("BOOT_IMAGE=/vmlinuz-6.1 root=LABEL=d ro initrd=\\initrd quiet\n"),
            "root=LABEL=d ro quiet"
        );
        assert_eq!(
            entry_cmdline("root=LABEL=d dockroot.image=os:1 quiet dockroot.image=os:2 dockroot.kexec_from=6.1.0"),
            "root=LABEL=d dockroot.image=os:1 quiet",
            "the image kexec carried goes, the user's stays"
        );
        assert_eq!(entry_cmdline("a=\"x y\" b -- initrd=kept"), "a=\"x y\" b -- initrd=kept");
        assert_eq!(entry_cmdline("  "), "");
    }

    #[test]
    fn decodes_the_loader_partuuid_variable() {
        let mut v = vec![6, 0, 0, 0];
        for u in "5A3B1C2D-0000-4F00-8A00-0123456789AB".encode_utf16().chain([0]) {
            v.extend(u.to_le_bytes());
        }
        assert_eq!(decode_loader_partuuid(&v).unwrap(), "5a3b1c2d-0000-4f00-8a00-0123456789ab");
        assert!(decode_loader_partuuid(&[6, 0]).is_err());
        let mut bad = vec![6, 0, 0, 0];
        bad.extend("xyz".encode_utf16().flat_map(u16::to_le_bytes));
        assert!(decode_loader_partuuid(&bad).unwrap_err().contains("not a GUID"));
    }

    #[test]
    fn orders_releases_as_versions() {
        let mut r = vec!["6.12.9-amd64", "6.12.57+deb13-amd64", "6.1.0-57-amd64", "6.12.10-amd64"];
        r.sort_by(|a, b| version_cmp(a, b));
        assert_eq!(r, ["6.1.0-57-amd64", "6.12.9-amd64", "6.12.10-amd64", "6.12.57+deb13-amd64"]);
        assert_eq!(version_cmp("6.1", "6.1.0"), Ordering::Less);
        assert_eq!(version_cmp("6.01", "6.1"), Ordering::Less, "a total order: equal numbers fall back to text");
    }

    #[test]
    fn plans_the_update_from_what_the_esp_holds() {
        let text = entry().render();
        let dir = "6.12.57+deb13-amd64-0123456789ab";
        // Empty ESP: write both, remove nothing.
        let u = plan_update(&EspState::default(), dir, &text);
        assert_eq!((u.write_dir.as_deref(), u.write_entry.is_some(), u.remove_dirs.len()), (Some(dir), true, 0));
        // Up to date: nothing.
        let same = EspState {
            entry_text: Some(text.clone()),
            dirs: vec![dir.into()],
            wanted_complete: true,
            ..Default::default()
        };
        assert!(!plan_update(&same, dir, &text).changes());
        // A new image: new directory and entry, then the old directory and a crashed run's leftovers go.
        let old = EspState {
            entry_text: Some(text.replace(dir, "6.1.0-aaaaaaaaaaaa")),
            dirs: vec!["6.1.0-aaaaaaaaaaaa".into(), "x.dockroot-tmp".into()],
            temp_entry: true,
            wanted_complete: false,
        };
        let u = plan_update(&old, dir, &text);
        assert_eq!(u.write_dir.as_deref(), Some(dir));
        assert_eq!(u.write_entry.as_deref(), Some(text.as_str()));
        assert!(u.remove_temp_entry);
        assert_eq!(u.remove_dirs, ["6.1.0-aaaaaaaaaaaa", "x.dockroot-tmp"]);
        // Only the options changed: only the entry.
        let opts = EspState { entry_text: Some(text.replace("quiet", "")), ..same.clone() };
        let u = plan_update(&opts, dir, &text);
        assert!(u.write_dir.is_none() && u.write_entry.is_some() && u.remove_dirs.is_empty());
        // The wanted directory is there but damaged (a crash while copying): written again.
        let damaged = EspState { wanted_complete: false, ..same };
        assert_eq!(plan_update(&damaged, dir, &text).write_dir.as_deref(), Some(dir));
    }

    #[test]
    fn prints_grub_and_refind_stanzas() {
        let e = Entry { title: "it's".into(), ..entry() };
        let g = grub_stanza(&e, "/boot/efi", Some("ABCD-1234"));
        assert!(g.contains("menuentry 'it'\\''s' {\n    search --no-floppy --fs-uuid --set=root ABCD-1234\n"), "{g}");
        assert!(
            g.contains("    linux /dockroot/dockroot/6.12.57+deb13-amd64-0123456789ab/linux root=LABEL=disk"),
            "{g}"
        );
        assert!(g.contains("(mounted at /boot/efi)"), "{g}");
        let r = refind_stanza(&entry(), "/efi", Some("5a3b1c2d-0000-4f00-8a00-0123456789ab"));
        assert!(r.contains("    volume 5a3b1c2d-0000-4f00-8a00-0123456789ab\n    loader /dockroot/"), "{r}");
        assert!(r.contains("    options \"root=LABEL=disk rootflags=subvol=rw quiet\"\n"), "{r}");
    }
}
