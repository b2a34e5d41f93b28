//! Compressed modules: the compression a module file is in (from its name),
//! the line saying who decompressed the modules loaded, and, with the
//! `decompress-modules` feature only, decompressing xz, zstd and gzip in
//! memory for a kernel that cannot. All pure.

#[cfg(feature = "decompress-modules")]
use std::io::Read;

/// A string only an init built with the `decompress-modules` feature carries (it is
/// logged at start only there, so only there is it in the binary): the builder looks
/// for it to tell whether the `--init` it packs decompresses modules itself
/// (`dockroot-mkinitramfs --keep-compressed`).
pub const DECOMPRESS_MARKER: &str = "dockroot-init-feature: decompress-modules (xz zstd gzip)";

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
/// the others were decompressed by this init (as [`KernelLoader`](super::KernelLoader) does). `None` if
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

/// The deflate stream of a gzip member (RFC 1952 header skipped). Also
/// `dockroot boot-files`' initramfs check.
pub fn gzip_body(data: &[u8]) -> std::result::Result<&[u8], String> {
    let bad = || "gzip: truncated or invalid header".to_string();
    if data.get(..3) != Some(&[0x1f, 0x8b, 8]) {
        return Err("gzip: not a gzip file".into());
    }
    let flags = *data.get(3).ok_or_else(bad)?;
    let mut at = 10usize;
    if flags & 4 != 0 {
        let xlen = usize::from(crate::bytes::Bytes::new(data).le16(10).ok_or_else(bad)?);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_from_the_file_name() {
        assert_eq!(module_compression("a/b.ko.xz"), Some("xz"));
        assert_eq!(module_compression("a/b.ko.zst"), Some("zstd"));
        assert_eq!(module_compression("a/b.ko.gz"), Some("gzip"));
        assert_eq!(module_compression("a/b.ko"), None);
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
