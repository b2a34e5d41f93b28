//! Docker image references, parsed and normalised the way Docker does it
//! (the `distribution/reference` grammar and `ParseNormalizedNamed` /
//! `ParseAnyReference` rules), with hand-written grammar checks.
//!
//! Grammar:
//!
//! ```text
//! reference  := name [ ":" tag ] [ "@" digest ]
//! name       := [ domain "/" ] path
//! domain     := host [ ":" port ]        host: dns-ish name, IPv4, or "[" IPv6 "]"
//! path       := component [ "/" component ]*      at most 255 characters
//! component  := [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
//! tag        := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
//! digest     := algorithm ":" hex        (sha256/sha384/sha512, lowercase hex)
//! ```
//!
//! Normalisation: the first path component is a registry domain only if it
//! contains `.` or `:` or is `localhost`; otherwise the default domain is used,
//! and a one-component path on the default domain gets the `library/` prefix.
//! The legacy `index.` alias of the default domain is folded into it. With
//! neither a tag nor a digest, the tag is `latest`.
//!
//! Upper case in the path is an error ("repository name must be lowercase"),
//! as in Docker 20.10 — so `Foo/bar` is rejected; newer versions of
//! distribution/reference instead treat an upper-case first component as a
//! domain name.
//!
//! Image IDs: `sha256:<64 hex>` or a bare 64-hex string is an image ID (never
//! a name, as in Docker). A lowercase-hex string of 12 to 63 characters
//! (optionally after `sha256:`) is ambiguous, as in Docker: it is looked up as
//! a name first and then as a unique image-ID prefix
//! ([`ImageSpec::NameOrShortId`]). 12 is the length of the short IDs Docker
//! prints; shorter hex strings are names only (Docker accepts shorter
//! prefixes, but at boot a short string that happens to match an ID would
//! rather be a typo).

use crate::error::{Error, Result};
use serde_json::Value;
use std::fmt;

/// Docker's default naming namespace: the domain a name without a registry is
/// filed under, and the key form used in Docker's stores. It is only a name;
/// this program never contacts any registry.
pub const DEFAULT_DOMAIN: &str = "docker.io";

/// The repository prefix of official images on the default domain.
const OFFICIAL_PREFIX: &str = "library/";

/// The legacy alias of the default domain is `index.` + [`DEFAULT_DOMAIN`].
const LEGACY_DOMAIN_PREFIX: &str = "index.";

/// The tag used when a reference has neither a tag nor a digest.
pub const DEFAULT_TAG: &str = "latest";

/// Longest repository path Docker accepts.
const MAX_PATH_LEN: usize = 255;

/// Longest tag Docker accepts.
const MAX_TAG_LEN: usize = 128;

/// Shortest hex string that is also tried as an image-ID prefix.
pub const MIN_SHORT_ID_LEN: usize = 12;

/// Where the prior art's embedded config lives in its initramfs.
pub const PRIOR_ART_CONFIG_PATH: &str = "/etc/docker-btrfs.json";

/// Largest prior-art config accepted.
const MAX_PRIOR_ART_CONFIG: usize = 64 * 1024;

/// A normalised, named image reference: `domain/path[:tag][@digest]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// Registry domain, e.g. the default domain or `localhost:5000`.
    pub domain: String,
    /// Repository path, e.g. `library/ubuntu`.
    pub path: String,
    /// Tag; `latest` when the input had neither tag nor digest.
    pub tag: Option<String>,
    /// Digest `algorithm:hex`, if given.
    pub digest: Option<String>,
}

/// What the user asked to boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSpec {
    /// An image name (with tag and/or digest).
    Named(Reference),
    /// A full image ID, `sha256:<64 lowercase hex>`.
    Id(String),
    /// A lowercase-hex string of 12..=63 characters: Docker looks it up as
    /// the name `name` first, then as an image-ID prefix `prefix` (hex only,
    /// without `sha256:`).
    NameOrShortId { name: Reference, prefix: String },
}

impl Reference {
    /// `domain/path`, e.g. `<default domain>/library/ubuntu`.
    pub fn full_name(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// The name as Docker shows it: the default domain and the `library/`
    /// prefix of official images are dropped: `ubuntu`, `foo/bar`,
    /// `localhost:5000/team/os`.
    pub fn familiar_name(&self) -> String {
        if self.domain != DEFAULT_DOMAIN {
            return self.full_name();
        }
        match self.path.strip_prefix(OFFICIAL_PREFIX) {
            Some(rest) if !rest.contains('/') => rest.to_string(),
            _ => self.path.clone(),
        }
    }

    /// The key Docker files this reference under in `repositories.json`:
    /// `ubuntu:latest`, or `ubuntu@sha256:...` when there is a digest (a
    /// `name:tag@digest` reference is stored as `name@digest` only).
    pub fn familiar_string(&self) -> String {
        let name = self.familiar_name();
        match (&self.digest, &self.tag) {
            (Some(d), _) => format!("{name}@{d}"),
            (None, Some(t)) => format!("{name}:{t}"),
            (None, None) => format!("{name}:{DEFAULT_TAG}"),
        }
    }
}

/// The full form: `<default domain>/library/ubuntu:22.04`, `localhost/x:t@sha256:...`.
impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.domain, self.path)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// A named spec shows its full reference, an ID shows `sha256:<hex>`.
impl fmt::Display for ImageSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageSpec::Named(r) => r.fmt(f),
            ImageSpec::Id(id) => f.write_str(id),
            ImageSpec::NameOrShortId { name, prefix } => {
                write!(f, "{name} (or image ID {prefix}...)")
            }
        }
    }
}

/// Parse an image reference or image ID as `docker run` would accept it.
pub fn parse(s: &str) -> Result<ImageSpec> {
    parse_spec(s).map(|(spec, _)| spec)
}

/// Parse `s`; the flag says whether the input had an explicit tag or digest
/// (or was an ID), which a separate `docker_tag` may not override.
fn parse_spec(s: &str) -> Result<(ImageSpec, bool)> {
    if is_hex64(s) {
        return Ok((ImageSpec::Id(format!("sha256:{s}")), true));
    }
    if let Some(hex) = s.strip_prefix("sha256:") {
        if is_hex64(hex) {
            return Ok((ImageSpec::Id(s.to_string()), true));
        }
    }
    let (name, explicit) = parse_named(s)?;
    let hex = s.strip_prefix("sha256:").unwrap_or(s);
    if (MIN_SHORT_ID_LEN..64).contains(&hex.len()) && is_lower_hex(hex) {
        return Ok((ImageSpec::NameOrShortId { name, prefix: hex.to_string() }, explicit));
    }
    Ok((ImageSpec::Named(name), explicit))
}

/// Parse and normalise a named reference. The flag is true when the input
/// had an explicit tag or digest.
fn parse_named(s: &str) -> Result<(Reference, bool)> {
    let bad = |why: String| Error::msg(format!("invalid image reference {s:?}: {why}"));
    if s.is_empty() {
        return Err(bad("it is empty".into()));
    }
    let (rest, digest) = match s.split_once('@') {
        Some((rest, d)) => (rest, Some(d)),
        None => (s, None),
    };
    if let Some(d) = digest {
        check_digest(d).map_err(|why| bad(format!("digest {d:?} {why}")))?;
    }
    // The tag follows the last ':' unless that ':' belongs to a domain's port
    // (then a '/' follows it).
    let (name, tag) = match rest.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name, Some(tag)),
        _ => (rest, None),
    };
    if let Some(t) = tag {
        if !is_valid_tag(t) {
            return Err(bad(format!(
                "tag {t:?} is not valid (1 to 128 letters, digits, '_', '.', '-', not starting with '.' or '-')"
            )));
        }
    }
    if name.is_empty() {
        return Err(bad("repository name must have at least one component".into()));
    }

    let (domain, path) = split_domain(name);
    if path.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(bad(format!("repository name {path:?} must be lowercase")));
    }
    if !is_valid_domain(&domain) {
        return Err(bad(format!("{domain:?} is not a valid registry domain")));
    }
    if path.len() > MAX_PATH_LEN {
        return Err(bad(format!("repository name is longer than {MAX_PATH_LEN} characters")));
    }
    if let Some(c) = path.split('/').find(|c| !is_valid_component(c)) {
        return Err(bad(format!(
            "repository name component {c:?} is not valid (lowercase letters and digits, \
             separated by '.', '_', '__' or dashes)"
        )));
    }

    let explicit = tag.is_some() || digest.is_some();
    let tag = match (tag, digest) {
        (None, None) => Some(DEFAULT_TAG.to_string()),
        (t, _) => t.map(str::to_string),
    };
    Ok((Reference { domain, path, tag, digest: digest.map(str::to_string) }, explicit))
}

/// Split a name into (domain, path), normalised.
fn split_domain(name: &str) -> (String, String) {
    let (domain, path) = match name.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => (first, rest),
        _ => (DEFAULT_DOMAIN, name),
    };
    let domain = match domain.strip_prefix(LEGACY_DOMAIN_PREFIX) {
        Some(d) if d == DEFAULT_DOMAIN => DEFAULT_DOMAIN,
        _ => domain,
    };
    let path = if domain == DEFAULT_DOMAIN && !path.contains('/') {
        format!("{OFFICIAL_PREFIX}{path}")
    } else {
        path.to_string()
    };
    (domain.to_string(), path)
}

/// `host[:port]`, host a DNS-like name / IPv4 address or `[IPv6]`.
fn is_valid_domain(d: &str) -> bool {
    let (host_ok, port) = if let Some(rest) = d.strip_prefix('[') {
        let Some((inner, after)) = rest.split_once(']') else {
            return false;
        };
        let ok = !inner.is_empty() && inner.bytes().all(|b| b.is_ascii_hexdigit() || b == b':');
        let port = match after {
            "" => None,
            a => match a.strip_prefix(':') {
                Some(p) => Some(p),
                None => return false,
            },
        };
        (ok, port)
    } else {
        let (host, port) = match d.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (d, None),
        };
        (host.split('.').all(is_valid_domain_component), port)
    };
    host_ok && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// `[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]`
fn is_valid_domain_component(c: &str) -> bool {
    let b = c.as_bytes();
    match (b.first(), b.last()) {
        (Some(f), Some(l)) => {
            f.is_ascii_alphanumeric()
                && l.is_ascii_alphanumeric()
                && b.iter().all(|x| x.is_ascii_alphanumeric() || *x == b'-')
        }
        _ => false,
    }
}

/// `[a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*`
fn is_valid_component(c: &str) -> bool {
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let b = c.as_bytes();
    if !b.first().is_some_and(alnum) || !b.last().is_some_and(alnum) {
        return false;
    }
    // The runs between alphanumerics are the separators.
    c.split(|ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit())
        .all(|sep| matches!(sep, "" | "." | "_" | "__") || sep.bytes().all(|x| x == b'-'))
}

/// `[\w][\w.-]{0,127}` with `\w` = `[A-Za-z0-9_]`.
fn is_valid_tag(t: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    t.len() <= MAX_TAG_LEN && t.bytes().next().is_some_and(word) && t.bytes().all(|b| word(b) || b == b'.' || b == b'-')
}

/// `algorithm:hex`, with an algorithm Docker knows and its exact length.
/// Returns why not, to be appended to "digest X".
fn check_digest(d: &str) -> std::result::Result<(), String> {
    let Some((algo, hex)) = d.split_once(':') else {
        return Err("must be algorithm:hex".into());
    };
    let algo_ok = algo.split(['-', '_', '+', '.']).all(|c| {
        c.bytes().next().is_some_and(|b| b.is_ascii_alphabetic()) && c.bytes().all(|b| b.is_ascii_alphanumeric())
    });
    if !algo_ok {
        return Err(format!("has an invalid algorithm {algo:?}"));
    }
    let want = match algo {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return Err(format!("uses unsupported algorithm {algo:?} (sha256, sha384 or sha512)")),
    };
    if hex.len() != want || !is_lower_hex(hex) {
        return Err(format!("must have {want} lowercase hex digits after {algo}:"));
    }
    Ok(())
}

/// Exactly 64 lowercase hex digits.
pub fn is_hex64(s: &str) -> bool {
    s.len() == 64 && is_lower_hex(s)
}

/// Only lowercase hex digits (true for "").
fn is_lower_hex(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Read the prior art's embedded config, e.g.
/// `{"docker_image": "archlinux/base", "docker_tag": "latest"}`.
/// `docker_tag` is optional (default `latest`) and may not be combined with
/// a `docker_image` that already has a tag or digest, or is an image ID.
/// Unknown keys are ignored; a `null` value counts as absent.
pub fn from_prior_art_config(json: &[u8]) -> Result<ImageSpec> {
    let file = PRIOR_ART_CONFIG_PATH;
    if json.len() > MAX_PRIOR_ART_CONFIG {
        return Err(Error::msg(format!(
            "{file} is {} bytes, larger than the {} KiB accepted",
            json.len(),
            MAX_PRIOR_ART_CONFIG / 1024
        )));
    }
    let v: Value = serde_json::from_slice(json).map_err(|e| Error::with(format!("{file} is not valid JSON"), e))?;
    let obj = v.as_object().ok_or_else(|| Error::msg(format!("{file} must contain a JSON object")))?;
    let string_key = |key: &str| -> Result<Option<&str>> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(other) => Err(Error::msg(format!("{file}: \"{key}\" must be a string, not {other}"))),
        }
    };
    let image = string_key("docker_image")?
        .ok_or_else(|| Error::msg(format!("{file} has no \"docker_image\" (the image to boot)")))?;
    let tag = string_key("docker_tag")?;
    let ctx = |e: Error| e.context(format!("{file}: \"docker_image\""));
    let (spec, explicit) = parse_spec(image).map_err(ctx)?;
    let Some(tag) = tag else { return Ok(spec) };
    if explicit {
        return Err(Error::msg(format!(
            "{file}: \"docker_image\" {image:?} already has a tag, digest or image ID, \
             so \"docker_tag\" {tag:?} must be left out"
        )));
    }
    if !is_valid_tag(tag) {
        return Err(Error::msg(format!(
            "{file}: \"docker_tag\" {tag:?} is not a valid tag (1 to 128 letters, digits, '_', '.', '-', \
             not starting with '.' or '-')"
        )));
    }
    let mut name = match spec {
        ImageSpec::Named(r) | ImageSpec::NameOrShortId { name: r, .. } => r,
        ImageSpec::Id(_) => return Err(Error::msg(format!("{file}: an image ID cannot have \"docker_tag\""))),
    };
    name.tag = Some(tag.to_string());
    Ok(ImageSpec::Named(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test inputs write the default domain as `<D>`, so the constant is the
    /// only place it is spelt out.
    fn d(s: &str) -> String {
        s.replace("<D>", DEFAULT_DOMAIN)
    }

    const H: &str = "dbcc1c35ac38df41fd2f5e4130b32ffdb93ebae8b3dbe638c23575912276fc9c";

    fn named(s: &str) -> Reference {
        match parse(&d(s)) {
            Ok(ImageSpec::Named(r)) => r,
            other => panic!("{s}: expected a named reference, got {other:?}"),
        }
    }

    #[test]
    fn valid_references_normalise() {
        let sha = format!("sha256:{H}");
        // input, domain, path, tag, digest
        type Row<'a> = (&'a str, &'a str, &'a str, Option<&'a str>, Option<&'a str>);
        let table: &[Row] = &[
            ("ubuntu", "<D>", "library/ubuntu", Some("latest"), None),
            ("ubuntu:22.04", "<D>", "library/ubuntu", Some("22.04"), None),
            ("library/ubuntu", "<D>", "library/ubuntu", Some("latest"), None),
            ("<D>/library/ubuntu:22.04", "<D>", "library/ubuntu", Some("22.04"), None),
            ("<D>/ubuntu", "<D>", "library/ubuntu", Some("latest"), None),
            ("index.<D>/library/debian", "<D>", "library/debian", Some("latest"), None),
            ("index.<D>/debian", "<D>", "library/debian", Some("latest"), None),
            ("index.<D>/docker/docker", "<D>", "docker/docker", Some("latest"), None),
            ("docker/docker", "<D>", "docker/docker", Some("latest"), None),
            ("<D>/library/foo/bar", "<D>", "library/foo/bar", Some("latest"), None),
            ("store/foo/bar", "<D>", "store/foo/bar", Some("latest"), None),
            ("other/library", "<D>", "other/library", Some("latest"), None),
            ("localhost/x", "localhost", "x", Some("latest"), None),
            ("localhost/library/debian", "localhost", "library/debian", Some("latest"), None),
            ("localhost", "<D>", "library/localhost", Some("latest"), None),
            ("localhost:5000", "<D>", "library/localhost", Some("5000"), None),
            ("localhost:5000/team/os:v1", "localhost:5000", "team/os", Some("v1"), None),
            ("registry.example:5000/a/b/c:tag", "registry.example:5000", "a/b/c", Some("tag"), None),
            ("127.0.0.1:5000/library/debian", "127.0.0.1:5000", "library/debian", Some("latest"), None),
            ("192.168.0.1:8/debian", "192.168.0.1:8", "debian", Some("latest"), None),
            ("192.168.0.1", "<D>", "library/192.168.0.1", Some("latest"), None),
            ("192.168.0.1:80", "<D>", "library/192.168.0.1", Some("80"), None),
            ("test.com/foo", "test.com", "foo", Some("latest"), None),
            ("test_com/foo", "<D>", "test_com/foo", Some("latest"), None),
            ("test-com:8080/foo", "test-com:8080", "foo", Some("latest"), None),
            ("xn--n3h.com:18080/foo", "xn--n3h.com:18080", "foo", Some("latest"), None),
            ("Registry.Example:5000/foo", "Registry.Example:5000", "foo", Some("latest"), None),
            ("[fc00::1]:5000/docker", "[fc00::1]:5000", "docker", Some("latest"), None),
            (
                "[fc00:1:2:3:4:5:6:7]:5000/library/debian",
                "[fc00:1:2:3:4:5:6:7]:5000",
                "library/debian",
                Some("latest"),
                None,
            ),
            ("[::1]/x:t", "[::1]", "x", Some("t"), None),
            ("docker-rules/docker", "<D>", "docker-rules/docker", Some("latest"), None),
            ("docker---rules/docker", "<D>", "docker---rules/docker", Some("latest"), None),
            ("dock__er/docker", "<D>", "dock__er/docker", Some("latest"), None),
            ("d/docker", "<D>", "d/docker", Some("latest"), None),
            ("ab_c-d/x.y__z", "<D>", "ab_c-d/x.y__z", Some("latest"), None),
            (
                "thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev",
                "<D>",
                "library/thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev",
                Some("latest"),
                None,
            ),
            ("ubuntu:Latest_1.0-rc", "<D>", "library/ubuntu", Some("Latest_1.0-rc"), None),
            ("ubuntu:_x", "<D>", "library/ubuntu", Some("_x"), None),
            ("dbcc1", "<D>", "library/dbcc1", Some("latest"), None),
            (
                "<D>/1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a",
                "<D>",
                "library/1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a",
                Some("latest"),
                None,
            ),
        ];
        for (input, domain, path, tag, digest) in table {
            let r = named(input);
            assert_eq!(r.domain, d(domain), "domain of {input}");
            assert_eq!(r.path, *path, "path of {input}");
            assert_eq!(r.tag.as_deref(), *tag, "tag of {input}");
            assert_eq!(r.digest.as_deref(), *digest, "digest of {input}");
        }

        let r = named(&format!("redis@{sha}"));
        assert_eq!(
            (r.path.as_str(), r.tag.as_deref(), r.digest.as_deref()),
            ("library/redis", None, Some(sha.as_str()))
        );
        let r = named(&format!("busybox:latest@{sha}"));
        assert_eq!((r.tag.as_deref(), r.digest.as_deref()), (Some("latest"), Some(sha.as_str())));
        let r = named(&format!("localhost:5000/a/b:t@{sha}"));
        assert_eq!((r.domain.as_str(), r.path.as_str(), r.tag.as_deref()), ("localhost:5000", "a/b", Some("t")));
        let sha512 = format!("sha512:{H}{H}");
        assert_eq!(named(&format!("x@{sha512}")).digest, Some(sha512));
    }

    #[test]
    fn invalid_references_are_errors_quoting_the_input() {
        let long_path = format!("{}/docker", "a".repeat(256));
        let long_tag = format!("ubuntu:{}", "t".repeat(129));
        let table: Vec<String> = [
            "",
            "https://github.com/docker/docker",
            "-docker",
            "-docker/docker",
            "docker-/docker",
            "-docker-/docker",
            "-<D>/docker/docker",
            "docker///docker",
            "<D>/docker///docker",
            "____/____",
            "_docker/_docker",
            "dock..er/docker",
            "dock_.er/docker",
            "dock-.er/docker",
            "dock___er/docker",
            "docker/",
            "/docker",
            "[fc00::1]",
            "[fc00::1]:5000",
            "fc00::1:5000/debian",
            "[fe80::1%eth0]:5000/debian",
            "[2001:db8:3:4::192.0.2.33]:5000/debian",
            "ubuntu:",
            "ubuntu:-x",
            "ubuntu:.x",
            "ubuntu:a/b",
            "ubuntu@",
            "ubuntu@sha256:abc",
            "ubuntu@md5:d41d8cd98f00b204e9800998ecf8427e",
            "ubuntu@sha256:DBCC1C35AC38DF41FD2F5E4130B32FFDB93EBAE8B3DBE638C23575912276FC9C",
            "ubuntu@sha256:dbcc1c35ac38df41fd2f5e4130b32ffdb93ebae8b3dbe638c23575912276fc9c@x",
            "ubu ntu",
            "ubuntu\n",
            "host:port/x",
            "host:/x",
            ":tag",
            "@sha256:dbcc1c35ac38df41fd2f5e4130b32ffdb93ebae8b3dbe638c23575912276fc9c",
            "ünïcode",
            "a.b_c-d/x",
        ]
        .iter()
        .map(|s| d(s))
        .chain([long_path, long_tag])
        .collect();
        for input in &table {
            let e = parse(input).expect_err(input);
            assert!(e.to_string().contains(&format!("{input:?}")), "error for {input:?} must quote it: {e}");
        }
    }

    #[test]
    fn uppercase_repository_is_a_clear_error() {
        for input in ["Ubuntu", "docker/Docker", "Docker/docker", "DOCKER/docker", "<D>/docker/Docker", "localhost/X:t"]
        {
            let e = parse(&d(input)).expect_err(input).to_string();
            assert!(e.contains("must be lowercase"), "{input}: {e}");
        }
        // Upper case is fine in a tag and in a registry domain.
        assert_eq!(named("ubuntu:LTS").tag.as_deref(), Some("LTS"));
        assert_eq!(named("Example.COM/x").domain, "Example.COM");
    }

    #[test]
    fn image_ids() {
        let id = format!("sha256:{H}");
        assert_eq!(parse(H).unwrap(), ImageSpec::Id(id.clone()));
        assert_eq!(parse(&id).unwrap(), ImageSpec::Id(id.clone()));
        // 63 hex digits is a name, also tried as an ID prefix.
        let h63 = H.get(..63).unwrap();
        match parse(h63).unwrap() {
            ImageSpec::NameOrShortId { name, prefix } => {
                assert_eq!(name.path, format!("library/{h63}"));
                assert_eq!(prefix, h63);
            }
            other => panic!("{other:?}"),
        }
        // Twelve digits, with or without sha256:.
        let h12 = H.get(..12).unwrap();
        assert!(matches!(parse(h12).unwrap(), ImageSpec::NameOrShortId { prefix, .. } if prefix == h12));
        match parse(&format!("sha256:{h12}")).unwrap() {
            ImageSpec::NameOrShortId { name, prefix } => {
                assert_eq!((name.path.as_str(), name.tag.as_deref()), ("library/sha256", Some(h12)));
                assert_eq!(prefix, h12);
            }
            other => panic!("{other:?}"),
        }
        // Eleven digits or a non-hex letter: a name only.
        assert!(matches!(parse(H.get(..11).unwrap()).unwrap(), ImageSpec::Named(_)));
        assert!(matches!(parse("abcdef12345g").unwrap(), ImageSpec::Named(_)));
        // A tag makes it a name only.
        assert!(matches!(parse(&format!("{h12}:latest")).unwrap(), ImageSpec::Named(_)));
        // 64 upper-case hex digits: not an ID, and not a valid (lowercase) name.
        assert!(parse(&H.to_uppercase()).unwrap_err().to_string().contains("lowercase"));
        assert_eq!(ImageSpec::Id(id.clone()).to_string(), id);
    }

    #[test]
    fn familiar_and_full_forms() {
        let sha = format!("sha256:{H}");
        // input, familiar name, full name, familiar string (store key), Display
        let table: Vec<(String, &str, String, String, String)> = vec![
            (
                "ubuntu".into(),
                "ubuntu",
                d("<D>/library/ubuntu"),
                "ubuntu:latest".into(),
                d("<D>/library/ubuntu:latest"),
            ),
            (
                d("<D>/library/ubuntu:22.04"),
                "ubuntu",
                d("<D>/library/ubuntu"),
                "ubuntu:22.04".into(),
                d("<D>/library/ubuntu:22.04"),
            ),
            ("foo/bar".into(), "foo/bar", d("<D>/foo/bar"), "foo/bar:latest".into(), d("<D>/foo/bar:latest")),
            (
                "library/foo/bar".into(),
                "library/foo/bar",
                d("<D>/library/foo/bar"),
                "library/foo/bar:latest".into(),
                d("<D>/library/foo/bar:latest"),
            ),
            (
                "localhost:5000/team/os:v1".into(),
                "localhost:5000/team/os",
                "localhost:5000/team/os".into(),
                "localhost:5000/team/os:v1".into(),
                "localhost:5000/team/os:v1".into(),
            ),
            (
                "localhost/library/x".into(),
                "localhost/library/x",
                "localhost/library/x".into(),
                "localhost/library/x:latest".into(),
                "localhost/library/x:latest".into(),
            ),
            (
                format!("busybox@{sha}"),
                "busybox",
                d("<D>/library/busybox"),
                format!("busybox@{sha}"),
                d(&format!("<D>/library/busybox@{sha}")),
            ),
            (
                format!("busybox:1.36@{sha}"),
                "busybox",
                d("<D>/library/busybox"),
                format!("busybox@{sha}"),
                d(&format!("<D>/library/busybox:1.36@{sha}")),
            ),
        ];
        for (input, familiar, full, key, display) in table {
            let r = named(&input);
            assert_eq!(r.familiar_name(), familiar, "{input}");
            assert_eq!(r.full_name(), full, "{input}");
            assert_eq!(r.familiar_string(), key, "{input}");
            assert_eq!(r.to_string(), display, "{input}");
            // The full form parses back to the same reference.
            assert_eq!(named(&display), r, "{input}");
        }
    }

    #[test]
    fn prior_art_config() {
        let p = |s: &str| from_prior_art_config(s.as_bytes());
        let r = match p(r#"{"docker_image": "archlinux/base", "docker_tag": "2020"}"#).unwrap() {
            ImageSpec::Named(r) => r,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            (r.domain.as_str(), r.path.as_str(), r.tag.as_deref()),
            (DEFAULT_DOMAIN, "archlinux/base", Some("2020"))
        );
        // docker_tag optional; null counts as absent; unknown keys ignored.
        for json in [
            r#"{"docker_image": "archlinux/base"}"#,
            r#"{"docker_image": "archlinux/base", "docker_tag": null, "x": [1]}"#,
        ] {
            assert_eq!(p(json).unwrap(), parse("archlinux/base").unwrap(), "{json}");
        }
        assert_eq!(p(r#"{"docker_image": "localhost:5000/a:v1"}"#).unwrap(), parse("localhost:5000/a:v1").unwrap());
        let id = format!("sha256:{H}");
        assert_eq!(p(&format!(r#"{{"docker_image": "{id}"}}"#)).unwrap(), ImageSpec::Id(id.clone()));
        // A hex name plus a tag is a name only.
        let h12 = H.get(..12).unwrap();
        assert!(matches!(
            p(&format!(r#"{{"docker_image": "{h12}", "docker_tag": "t"}}"#)).unwrap(),
            ImageSpec::Named(_)
        ));

        let errs: &[(String, &str)] = &[
            (r#"{"docker_image": "a:b", "docker_tag": "c"}"#.into(), "must be left out"),
            (format!(r#"{{"docker_image": "a@sha256:{H}", "docker_tag": "c"}}"#), "must be left out"),
            (format!(r#"{{"docker_image": "{H}", "docker_tag": "c"}}"#), "must be left out"),
            (r#"{"docker_image": "a", "docker_tag": "-c"}"#.into(), "\"docker_tag\" \"-c\" is not a valid tag"),
            (r#"{"docker_image": "a", "docker_tag": 3}"#.into(), "\"docker_tag\" must be a string"),
            (r#"{"docker_image": ["a"]}"#.into(), "\"docker_image\" must be a string"),
            (r#"{"docker_tag": "x"}"#.into(), "has no \"docker_image\""),
            (r#"{"docker_image": "Arch"}"#.into(), "must be lowercase"),
            (r#"["docker_image"]"#.into(), "must contain a JSON object"),
            (r#"{"docker_image": "a""#.into(), "not valid JSON"),
            ("".into(), "not valid JSON"),
            (format!(r#"{{"docker_image": "a", "pad": "{}"}}"#, "x".repeat(70_000)), "larger than the 64 KiB"),
        ];
        for (json, want) in errs {
            let e = p(json).expect_err(json).to_string();
            assert!(e.contains(want), "{json}: {e}");
            assert!(e.contains(PRIOR_ART_CONFIG_PATH), "{json}: {e}");
        }
    }

    #[test]
    fn component_grammar() {
        for ok in ["a", "a1", "a.b", "a_b", "a__b", "a-b", "a---b", "a.b-c_d__e"] {
            assert!(is_valid_component(ok), "{ok}");
        }
        for bad in ["", ".", "a.", ".a", "a..b", "a___b", "a_.b", "a-.b", "a.-b", "A", "a b", "-", "a/b"] {
            assert!(!is_valid_component(bad), "{bad:?}");
        }
        for ok in ["localhost", "a.b", "a-b.c:1", "[::1]", "[fc00::1]:80", "1.2.3.4:5000"] {
            assert!(is_valid_domain(ok), "{ok}");
        }
        for bad in ["", "a.", ".a", "a-.b", "a:", "a:x", "a:1:2", "[]", "[::1", "[::1]x", "[::g]", "a_b.c"] {
            assert!(!is_valid_domain(bad), "{bad:?}");
        }
    }
}
