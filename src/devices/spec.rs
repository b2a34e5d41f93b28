//! How a boot parameter names a block device: the kernel's `root=` forms and
//! the usual initramfs conventions (`/dev/NAME`, `LABEL=`, `UUID=`,
//! `PARTUUID=`, `PARTLABEL=`, `MAJ:MIN`, `/dev/disk/by-*/`).
//!
//! Pure: parsing and display only, no I/O.

use std::fmt;

use crate::error::{Context, Error, Result};

/// How a boot parameter names a block device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceSpec {
    /// `/dev/NAME` (also `/dev/cciss/c0d0`-style names with a slash).
    Path(String),
    /// `LABEL=` (or `/dev/disk/by-label/`): the filesystem label, exact match.
    Label(String),
    /// `UUID=` (or `/dev/disk/by-uuid/`): the filesystem UUID, case-insensitive.
    Uuid(String),
    /// `PARTUUID=` (or `/dev/disk/by-partuuid/`): GPT partition GUID or MBR
    /// "ssssssss-pp", case-insensitive like the kernel.
    PartUuid(String),
    /// `PARTLABEL=` (or `/dev/disk/by-partlabel/`): the GPT partition name, exact.
    PartLabel(String),
    /// `MAJ:MIN` in decimal, or a hexadecimal device number like the kernel's `0801`.
    MajMin(u32, u32),
}

const SPEC_FORMS: &str = "expected /dev/NAME, LABEL=, UUID=, PARTUUID=, PARTLABEL=, MAJ:MIN or /dev/disk/by-{label,uuid,partuuid,partlabel}/";

impl DeviceSpec {
    /// Parse a device name as given to `root=`.
    pub fn parse(s: &str) -> Result<DeviceSpec> {
        let nonempty = |kind: &str, v: &str| -> Result<String> {
            if v.is_empty() {
                Err(Error::msg(format!("empty {kind} in device name {s:?}")))
            } else {
                Ok(v.to_string())
            }
        };
        if let Some(v) = s.strip_prefix("LABEL=") {
            return Ok(DeviceSpec::Label(nonempty("LABEL=", v)?));
        }
        if let Some(v) = s.strip_prefix("UUID=") {
            return Ok(DeviceSpec::Uuid(nonempty("UUID=", v)?));
        }
        if let Some(v) = s.strip_prefix("PARTUUID=") {
            if let Some((_, off)) = v.split_once('/') {
                return Err(Error::msg(format!(
                    "device name {s:?}: \"{off}\" (PARTNROFF=, a partition relative to another) is not supported; \
                     name the partition itself with PARTUUID= or PARTLABEL="
                )));
            }
            return Ok(DeviceSpec::PartUuid(nonempty("PARTUUID=", v)?));
        }
        if let Some(v) = s.strip_prefix("PARTLABEL=") {
            return Ok(DeviceSpec::PartLabel(nonempty("PARTLABEL=", v)?));
        }
        if let Some(rest) = s.strip_prefix("/dev/disk/") {
            let (kind, escaped) = rest.split_once('/').unwrap_or((rest, ""));
            let v = udev_unescape(escaped).context(|| format!("device name {s:?}"))?;
            let v = nonempty("name", &v)?;
            return match kind {
                "by-label" => Ok(DeviceSpec::Label(v)),
                "by-uuid" => Ok(DeviceSpec::Uuid(v)),
                "by-partuuid" => Ok(DeviceSpec::PartUuid(v)),
                "by-partlabel" => Ok(DeviceSpec::PartLabel(v)),
                _ => Err(Error::msg(format!(
                    "device name {s:?}: /dev/disk/{kind}/ links come from udev, which this initramfs does not run; \
                     use LABEL=, UUID=, PARTUUID= or PARTLABEL="
                ))),
            };
        }
        if let Some(name) = s.strip_prefix("/dev/") {
            let bad = name.is_empty()
                || name.ends_with('/')
                || name.split('/').any(|c| c.is_empty() || c == "." || c == "..");
            if bad {
                return Err(Error::msg(format!("device name {s:?}: not a device path; {SPEC_FORMS}")));
            }
            return Ok(DeviceSpec::Path(s.to_string()));
        }
        if let Some((maj, min)) = s.split_once(':') {
            let num = |x: &str| {
                (!x.is_empty() && x.bytes().all(|b| b.is_ascii_digit())).then(|| x.parse::<u32>().ok()).flatten()
            };
            return match (num(maj), num(min)) {
                (Some(a), Some(b)) => Ok(DeviceSpec::MajMin(a, b)),
                _ => Err(Error::msg(format!("device name {s:?}: bad MAJ:MIN; {SPEC_FORMS}"))),
            };
        }
        if !s.is_empty() && s.len() <= 8 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            // The kernel's hexadecimal dev_t (new_decode_dev): 0801 is 8:1.
            let dev = u32::from_str_radix(s, 16).map_err(|e| Error::with(format!("device name {s:?}"), e))?;
            return Ok(DeviceSpec::MajMin((dev & 0xfff00) >> 8, (dev & 0xff) | ((dev >> 12) & 0xfff00)));
        }
        Err(Error::msg(format!("unrecognised device name {s:?}: {SPEC_FORMS}")))
    }
}

impl std::str::FromStr for DeviceSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<DeviceSpec> {
        DeviceSpec::parse(s)
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Path(p) => write!(f, "{p}"),
            DeviceSpec::Label(v) => write!(f, "LABEL={v}"),
            DeviceSpec::Uuid(v) => write!(f, "UUID={v}"),
            DeviceSpec::PartUuid(v) => write!(f, "PARTUUID={v}"),
            DeviceSpec::PartLabel(v) => write!(f, "PARTLABEL={v}"),
            DeviceSpec::MajMin(a, b) => write!(f, "{a}:{b}"),
        }
    }
}

/// Undo udev's escaping of /dev/disk/by-* link names (`\x2f` for '/', `\x20`
/// for ' ', ...). The result must be UTF-8.
fn udev_unescape(s: &str) -> Result<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut rest = s.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'\\' {
            if let Some([b'x', h, l, after @ ..]) = Some(tail) {
                let hex = [*h, *l];
                // Two hex digits exactly (from_str_radix alone would take "+f").
                let digits = h.is_ascii_hexdigit() && l.is_ascii_hexdigit();
                if let Some(v) =
                    std::str::from_utf8(&hex).ok().filter(|_| digits).and_then(|x| u8::from_str_radix(x, 16).ok())
                {
                    out.push(v);
                    rest = after;
                    continue;
                }
            }
        }
        out.push(b);
        rest = tail;
    }
    String::from_utf8(out).map_err(|e| Error::with(format!("{s:?} does not decode to UTF-8"), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::fixtures::parse;

    #[test]
    fn parse_all_forms() {
        assert_eq!(parse("/dev/vda2"), DeviceSpec::Path("/dev/vda2".into()));
        assert_eq!(parse("/dev/cciss/c0d0p1"), DeviceSpec::Path("/dev/cciss/c0d0p1".into()));
        assert_eq!(parse("LABEL=root fs"), DeviceSpec::Label("root fs".into()));
        assert_eq!(parse("LABEL=a=b"), DeviceSpec::Label("a=b".into()));
        assert_eq!(
            parse("UUID=0A1B2C3D-4e5f-4061-8293-a4b5c6d7e8f9"),
            DeviceSpec::Uuid("0A1B2C3D-4e5f-4061-8293-a4b5c6d7e8f9".into())
        );
        assert_eq!(parse("UUID=1234-ABCD"), DeviceSpec::Uuid("1234-ABCD".into()));
        assert_eq!(parse("PARTUUID=deadbeef-05"), DeviceSpec::PartUuid("deadbeef-05".into()));
        assert_eq!(parse("PARTLABEL=dockroot"), DeviceSpec::PartLabel("dockroot".into()));
        assert_eq!(parse("8:17"), DeviceSpec::MajMin(8, 17));
        assert_eq!(parse("259:0"), DeviceSpec::MajMin(259, 0));
        assert_eq!(parse("0801"), DeviceSpec::MajMin(8, 1));
        assert_eq!(parse("fe00"), DeviceSpec::MajMin(254, 0));
        assert_eq!(parse("10300"), DeviceSpec::MajMin(259, 0));
        assert_eq!(parse("/dev/disk/by-label/my\\x2flabel\\x20x"), DeviceSpec::Label("my/label x".into()));
        assert_eq!(parse("/dev/disk/by-label/\\xc3\\xbcber"), DeviceSpec::Label("über".into()));
        assert_eq!(parse("/dev/disk/by-uuid/1234-ABCD"), DeviceSpec::Uuid("1234-ABCD".into()));
        assert_eq!(parse("/dev/disk/by-partuuid/deadbeef-01"), DeviceSpec::PartUuid("deadbeef-01".into()));
        assert_eq!(parse("/dev/disk/by-partlabel/EFI\\x20system"), DeviceSpec::PartLabel("EFI system".into()));
        // A backslash that is not an escape stays.
        assert_eq!(parse("/dev/disk/by-label/a\\b\\x4"), DeviceSpec::Label("a\\b\\x4".into()));
        assert_eq!(parse("/dev/disk/by-label/a\\x+fb"), DeviceSpec::Label("a\\x+fb".into()), "not two hex digits");
    }

    #[test]
    fn display_round_trips() {
        for s in ["/dev/sda1", "LABEL=x y", "UUID=abc", "PARTUUID=deadbeef-01", "PARTLABEL=p", "8:1"] {
            assert_eq!(parse(s).to_string(), s);
            assert_eq!(parse(&parse(s).to_string()), parse(s));
        }
        assert_eq!(parse("/dev/disk/by-label/a\\x2fb").to_string(), "LABEL=a/b");
    }

    #[test]
    fn parse_rejects_bad_input() {
        for (s, needle) in [
            ("", "unrecognised"),
            ("sda1", "unrecognised"),
            ("LABEL=", "empty LABEL="),
            ("UUID=", "empty UUID="),
            ("PARTUUID=", "empty PARTUUID="),
            ("PARTLABEL=", "empty PARTLABEL="),
            ("PARTUUID=00112233-01/PARTNROFF=1", "PARTNROFF"),
            ("/dev/", "not a device path"),
            ("/dev/../etc/passwd", "not a device path"),
            ("/dev/sda/", "not a device path"),
            ("/dev/disk/by-id/ata-FOO", "udev"),
            ("/dev/disk/by-path/pci-0000", "udev"),
            ("/dev/disk/by-label/", "empty name"),
            ("/dev/disk/by-label/\\xff", "UTF-8"),
            ("8:", "bad MAJ:MIN"),
            (":1", "bad MAJ:MIN"),
            ("8:x", "bad MAJ:MIN"),
            ("8:-1", "bad MAJ:MIN"),
            ("99999999999:1", "bad MAJ:MIN"),
            ("123456789", "unrecognised"),
            ("label=x", "unrecognised"),
        ] {
            let e = DeviceSpec::parse(s).expect_err(s).to_string();
            assert!(e.contains(needle), "{s:?}: {e}");
        }
    }
}
