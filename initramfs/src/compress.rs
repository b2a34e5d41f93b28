//! Compression of the initramfs, decompression of `.ko.xz`/`.ko.zst`/`.ko.gz`
//! modules, and size-capped file reads.
//!
//! The output must be the same bytes for the same input: zstd runs at a fixed
//! level in one thread (the `zstd` crate only uses threads when asked to), and
//! gzip gets a header with mtime 0, no file name and OS 255 ("unknown").

use std::io::{Read, Write};
use std::path::Path;

use dockroot::error::{Context, Error, Result};

/// zstd level for the initramfs. On Debian 12's default module set (20 MB of
/// cpio) level 9 gives 4.7 MB in 0.5 s; level 19 gives 4.25 MB but takes 20 s,
/// which every rebuild and test would pay for 10% less to read at boot.
pub const ZSTD_LEVEL: i32 = 9;

/// The largest module file read (compressed or not), and the largest a
/// compressed module may expand to. The largest modules of distribution
/// kernels are around 20 MiB.
pub const MODULE_MAX_BYTES: u64 = 256 << 20;

/// How the cpio archive is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Zstd,
    Gzip,
    None,
}

impl Compression {
    /// Parse the `--compression` value.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "zstd" => Ok(Compression::Zstd),
            "gzip" => Ok(Compression::Gzip),
            "none" => Ok(Compression::None),
            _ => Err(Error::msg(format!("unknown compression {s:?}: use zstd, gzip or none"))),
        }
    }

    /// The name as given on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Compression::Zstd => "zstd",
            Compression::Gzip => "gzip",
            Compression::None => "none",
        }
    }
}

/// Compress `data` deterministically.
pub fn compress(data: &[u8], how: Compression) -> Result<Vec<u8>> {
    match how {
        Compression::None => Ok(data.to_vec()),
        Compression::Zstd => {
            let mut c = zstd::bulk::Compressor::new(ZSTD_LEVEL).context(|| "setting up the zstd compressor")?;
            c.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true)).context(|| "enabling zstd checksums")?;
            c.compress(data).context(|| "compressing the initramfs with zstd")
        }
        Compression::Gzip => {
            let mut enc =
                flate2::GzBuilder::new().mtime(0).operating_system(255).write(Vec::new(), flate2::Compression::best());
            enc.write_all(data).context(|| "compressing the initramfs with gzip")?;
            enc.finish().context(|| "compressing the initramfs with gzip")
        }
    }
}

/// How an initramfs image (or what follows its uncompressed early archives) is
/// compressed, by its magic; `Err` names what it is not.
pub fn image_compression(data: &[u8]) -> std::result::Result<Compression, String> {
    match data {
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Ok(Compression::Zstd),
        [0x1f, 0x8b, ..] => Ok(Compression::Gzip),
        [b'0', b'7', b'0', b'7', b'0', b'1', ..] => Ok(Compression::None),
        _ => Err("neither a newc cpio archive nor zstd or gzip compressed".to_owned()),
    }
}

/// Decompress an image compressed as `how`, at most `cap` bytes of output.
pub fn decompress_image(data: &[u8], how: Compression, cap: u64) -> Result<Vec<u8>> {
    let what = || format!("the {} stream", how.name());
    match how {
        Compression::None => Ok(data.to_vec()),
        Compression::Zstd => {
            let dec = zstd::stream::read::Decoder::new(data).context(|| "setting up the zstd decoder")?;
            read_all_capped(dec, cap, what)
        }
        Compression::Gzip => read_all_capped(flate2::read::MultiGzDecoder::new(data), cap, what),
    }
}

/// Read at most `cap` bytes of a file; a larger file is an error.
pub fn read_capped(path: &Path, cap: u64) -> Result<Vec<u8>> {
    let file = std::fs::File::open(path).context(|| format!("opening {}", path.display()))?;
    read_all_capped(file, cap, || path.display().to_string())
}

fn read_all_capped<R: Read>(reader: R, cap: u64, what: impl Fn() -> String) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    reader.take(cap.saturating_add(1)).read_to_end(&mut out).context(|| format!("reading {}", what()))?;
    if out.len() as u64 > cap {
        return Err(Error::msg(format!("{} is larger than {cap} bytes", what())));
    }
    Ok(out)
}

/// The compression suffix of a module file name, if any (`.xz`, `.zst`, `.gz`).
pub fn module_suffix(file_name: &str) -> Option<&'static str> {
    [".ko.xz", ".ko.zst", ".ko.gz"].into_iter().find(|s| file_name.ends_with(s)).and_then(|s| s.strip_prefix(".ko"))
}

/// Decompress a file read from `path` according to its suffix (`.xz`, `.zst`,
/// `.gz`), at most `cap` bytes of output; another suffix is returned as it is.
pub fn decompress_file(path: &Path, data: Vec<u8>, cap: u64) -> Result<Vec<u8>> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let what = || format!("{} (decompressed)", path.display());
    let fail = |e: std::io::Error| Error::with(format!("decompressing {}", path.display()), e);
    if name.ends_with(".xz") {
        read_all_capped(liblzma::read::XzDecoder::new(data.as_slice()), cap, what)
    } else if name.ends_with(".zst") {
        let dec = zstd::stream::read::Decoder::new(data.as_slice()).map_err(fail)?;
        read_all_capped(dec, cap, what)
    } else if name.ends_with(".gz") {
        read_all_capped(flate2::read::MultiGzDecoder::new(data.as_slice()), cap, what)
    } else {
        Ok(data)
    }
}

/// Decompress a module read from `path` according to its suffix; a plain
/// `.ko` is returned as it is. The output is capped at [`MODULE_MAX_BYTES`].
pub fn decompress_module(path: &Path, data: Vec<u8>) -> Result<Vec<u8>> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    match module_suffix(&name) {
        None => Ok(data),
        Some(_) => decompress_file(path, data, MODULE_MAX_BYTES),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    fn sample() -> Vec<u8> {
        (0..200_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect()
    }

    /// Pipe `input` through a command and return its stdout.
    fn pipe(cmd: &str, args: &[&str], input: &[u8]) -> Vec<u8> {
        let mut child = Command::new(cmd).args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let input = input.to_vec();
        let writer = std::thread::spawn(move || stdin.write_all(&input).unwrap());
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        assert!(out.status.success(), "{cmd} failed");
        out.stdout
    }

    #[test]
    fn compression_is_deterministic_and_readable_by_the_real_tools() {
        let data = sample();
        for how in [Compression::Zstd, Compression::Gzip, Compression::None] {
            let a = compress(&data, how).unwrap();
            assert_eq!(a, compress(&data, how).unwrap(), "{how:?}");
            match how {
                Compression::Zstd => {
                    assert_eq!(&a[..4], &[0x28, 0xb5, 0x2f, 0xfd]);
                    assert_eq!(pipe("zstd", &["-d", "-c"], &a), data);
                }
                Compression::Gzip => {
                    assert_eq!(&a[..10], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 2, 255], "mtime 0, OS unknown");
                    assert_eq!(pipe("gzip", &["-d", "-c"], &a), data);
                }
                Compression::None => assert_eq!(a, data),
            }
            assert!(a.len() < data.len() || how == Compression::None);
        }
    }

    #[test]
    fn images_are_recognised_and_decompressed() {
        let data = sample();
        for how in [Compression::Zstd, Compression::Gzip] {
            let image = compress(&data, how).unwrap();
            assert_eq!(image_compression(&image), Ok(how));
            assert_eq!(decompress_image(&image, how, 1 << 30).unwrap(), data);
            let e = decompress_image(&image, how, 1000).unwrap_err().to_string();
            assert!(e.contains("larger than 1000 bytes"), "{e}");
            assert!(decompress_image(&image[..image.len() / 2], how, 1 << 30).is_err(), "{how:?} truncated");
        }
        assert_eq!(image_compression(b"070701000"), Ok(Compression::None));
        assert!(image_compression(b"\x7fELF").unwrap_err().contains("neither"));
        assert!(image_compression(b"").is_err());
    }

    #[test]
    fn decompresses_modules_made_by_the_real_tools() {
        let data = sample();
        let dir = std::env::temp_dir();
        assert_eq!(decompress_module(&dir.join("a.ko"), data.clone()).unwrap(), data);
        let xz = pipe("xz", &["--check=crc32", "-c"], &data);
        assert_eq!(decompress_module(&dir.join("a.ko.xz"), xz).unwrap(), data);
        let zst = pipe("zstd", &["-c", "-q"], &data);
        assert_eq!(decompress_module(&dir.join("a.ko.zst"), zst).unwrap(), data);
        let gz = pipe("gzip", &["-c", "-n"], &data);
        assert_eq!(decompress_module(&dir.join("a.ko.gz"), gz).unwrap(), data);
        let e = decompress_module(Path::new("/m/a.ko.xz"), b"not xz".to_vec()).unwrap_err().to_string();
        assert!(e.contains("/m/a.ko.xz"), "{e}");
    }

    #[test]
    fn suffixes_and_compression_names() {
        assert_eq!(module_suffix("btrfs.ko.zst"), Some(".zst"));
        assert_eq!(module_suffix("btrfs.ko"), None);
        assert_eq!(module_suffix("btrfs.xz"), None);
        assert_eq!(Compression::parse("gzip").unwrap(), Compression::Gzip);
        assert!(Compression::parse("lz4").unwrap_err().to_string().contains("zstd, gzip or none"));
    }

    #[test]
    fn capped_reads_refuse_larger_files() {
        let path = std::env::temp_dir().join(format!("dockroot-cap-{}", std::process::id()));
        std::fs::write(&path, [1u8; 100]).unwrap();
        assert_eq!(read_capped(&path, 100).unwrap().len(), 100);
        assert!(read_capped(&path, 99).unwrap_err().to_string().contains("larger than 99 bytes"));
        std::fs::remove_file(&path).unwrap();
    }
}
