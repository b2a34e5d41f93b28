//! A small, bounded ELF64 reader: the `.modinfo` section of kernel modules,
//! and the checks that the init is a static x86-64 executable.
//!
//! Every offset read from the file is checked against its length; malformed
//! input gives an error, never a panic.

/// The ELF magic.
pub const MAGIC: &[u8; 4] = b"\x7fELF";
/// `e_machine` of x86-64.
pub const EM_X86_64: u16 = 62;
const ET_REL: u16 = 1;
const ET_EXEC: u16 = 2;
const ET_DYN: u16 = 3;
const PT_LOAD: u32 = 1;
const PT_INTERP: u32 = 3;
const SHT_NOBITS: u32 = 8;
const SHN_XINDEX: u16 = 0xffff;
const EHDR_LEN: usize = 64;
const SHDR_LEN: usize = 64;
const PHDR_LEN: usize = 56;

fn u16_at(data: &[u8], off: usize) -> Option<u16> {
    let b = data.get(off..off.checked_add(2)?)?;
    Some(u16::from_le_bytes(b.try_into().ok()?))
}

fn u32_at(data: &[u8], off: usize) -> Option<u32> {
    let b = data.get(off..off.checked_add(4)?)?;
    Some(u32::from_le_bytes(b.try_into().ok()?))
}

fn u64_at(data: &[u8], off: usize) -> Option<u64> {
    let b = data.get(off..off.checked_add(8)?)?;
    Some(u64::from_le_bytes(b.try_into().ok()?))
}

fn usize_at(data: &[u8], off: usize) -> Option<usize> {
    usize::try_from(u64_at(data, off)?).ok()
}

/// The parts of an ELF64 little-endian header this reader uses.
#[derive(Debug, Clone, Copy)]
struct Header {
    e_type: u16,
    machine: u16,
    phoff: usize,
    phentsize: usize,
    phnum: usize,
    shoff: usize,
    shentsize: usize,
    shnum: usize,
    shstrndx: usize,
}

fn header(data: &[u8]) -> Result<Header, String> {
    if data.get(..4) != Some(MAGIC.as_slice()) {
        return Err("not an ELF file".into());
    }
    if data.get(4) != Some(&2) {
        return Err("not a 64-bit ELF file".into());
    }
    if data.get(5) != Some(&1) {
        return Err("not a little-endian ELF file".into());
    }
    if data.len() < EHDR_LEN {
        return Err("ELF header is truncated".into());
    }
    let bad = || "ELF header is truncated".to_string();
    let mut h = Header {
        e_type: u16_at(data, 16).ok_or_else(bad)?,
        machine: u16_at(data, 18).ok_or_else(bad)?,
        phoff: usize_at(data, 32).ok_or_else(bad)?,
        phentsize: u16_at(data, 54).ok_or_else(bad)?.into(),
        phnum: u16_at(data, 56).ok_or_else(bad)?.into(),
        shoff: usize_at(data, 40).ok_or_else(bad)?,
        shentsize: u16_at(data, 58).ok_or_else(bad)?.into(),
        shnum: u16_at(data, 60).ok_or_else(bad)?.into(),
        shstrndx: u16_at(data, 62).ok_or_else(bad)?.into(),
    };
    // Extended numbering: the real counts live in section header 0.
    if h.shoff != 0 && (h.shnum == 0 || h.shstrndx == usize::from(SHN_XINDEX)) {
        let first = h.shoff;
        if h.shnum == 0 {
            h.shnum =
                usize_at(data, first.checked_add(32).ok_or_else(bad)?).ok_or("section header 0 is outside the file")?;
        }
        if h.shstrndx == usize::from(SHN_XINDEX) {
            h.shstrndx = u32_at(data, first.checked_add(40).ok_or_else(bad)?)
                .ok_or("section header 0 is outside the file")? as usize;
        }
    }
    Ok(h)
}

/// Offset of the `index`th entry of a table.
fn entry_offset(table: usize, entsize: usize, index: usize) -> Option<usize> {
    table.checked_add(entsize.checked_mul(index)?)
}

struct Section<'a> {
    name: &'a [u8],
    data: &'a [u8],
}

fn section<'a>(data: &'a [u8], h: &Header, index: usize, names: Option<&'a [u8]>) -> Result<Section<'a>, String> {
    let off = entry_offset(h.shoff, h.shentsize, index).ok_or("section table offset overflows")?;
    let field = |rel: usize| off.checked_add(rel);
    let out = || format!("section header {index} is outside the file");
    let name_off = u32_at(data, field(0).ok_or_else(out)?).ok_or_else(out)? as usize;
    let kind = u32_at(data, field(4).ok_or_else(out)?).ok_or_else(out)?;
    let start = usize_at(data, field(24).ok_or_else(out)?).ok_or_else(out)?;
    let size = usize_at(data, field(32).ok_or_else(out)?).ok_or_else(out)?;
    let bytes = if kind == SHT_NOBITS {
        &[][..]
    } else {
        let end = start.checked_add(size).ok_or_else(out)?;
        data.get(start..end).ok_or_else(|| format!("section {index}'s data is outside the file"))?
    };
    let name = match names {
        Some(table) => {
            let rest =
                table.get(name_off..).ok_or_else(|| format!("section {index}'s name is outside the string table"))?;
            let len = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
            rest.get(..len).unwrap_or_default()
        }
        None => &[][..],
    };
    Ok(Section { name, data: bytes })
}

/// The contents of the section called `wanted`, if there is one.
pub fn find_section<'a>(data: &'a [u8], wanted: &str) -> Result<Option<&'a [u8]>, String> {
    let h = header(data)?;
    if h.shoff == 0 || h.shnum == 0 {
        return Ok(None);
    }
    if h.shentsize < SHDR_LEN {
        return Err(format!("section header size {} is too small", h.shentsize));
    }
    if h.shstrndx >= h.shnum {
        return Err(format!("section name table index {} is out of range ({} sections)", h.shstrndx, h.shnum));
    }
    // A table larger than the file cannot be real; this also bounds the loop.
    let table_len = h.shentsize.checked_mul(h.shnum).ok_or("section table size overflows")?;
    if h.shoff.checked_add(table_len).is_none_or(|end| end > data.len()) {
        return Err("section header table is outside the file".into());
    }
    let names = section(data, &h, h.shstrndx, None)?.data;
    for i in 0..h.shnum {
        let s = section(data, &h, i, Some(names))?;
        if s.name == wanted.as_bytes() {
            return Ok(Some(s.data));
        }
    }
    Ok(None)
}

/// What a kernel module's `.modinfo` says (the fields the builder uses).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Modinfo {
    /// `vermagic=`, e.g. `6.1.0-56-amd64 SMP preempt mod_unload modversions`.
    pub vermagic: Option<String>,
    /// `depends=`, split on commas (empty names dropped).
    pub depends: Vec<String>,
    /// Every `softdep=` value, e.g. `pre: crc32c`.
    pub softdeps: Vec<String>,
    /// Every `alias=` value.
    pub aliases: Vec<String>,
    /// `name=`, if present.
    pub name: Option<String>,
    /// Every `firmware=` value: files the module may ask the kernel's firmware loader for.
    pub firmware: Vec<String>,
}

impl Modinfo {
    /// The kernel release the module was built for: the first word of vermagic.
    pub fn release(&self) -> Option<&str> {
        self.vermagic.as_deref()?.split_whitespace().next()
    }
}

/// Parse the NUL-separated `key=value` strings of a `.modinfo` section.
pub fn parse_modinfo(section: &[u8]) -> Modinfo {
    let mut info = Modinfo::default();
    for item in section.split(|&b| b == 0).filter(|s| !s.is_empty()) {
        let item = String::from_utf8_lossy(item);
        let Some((key, value)) = item.split_once('=') else { continue };
        match key {
            "vermagic" => info.vermagic = Some(value.to_owned()),
            "depends" => info.depends = value.split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect(),
            "softdep" => info.softdeps.push(value.to_owned()),
            "alias" => info.aliases.push(value.to_owned()),
            "name" => info.name = Some(value.to_owned()),
            "firmware" => info.firmware.push(value.to_owned()),
            _ => {}
        }
    }
    info
}

/// Read a module's `.modinfo`. A module without one is an error.
pub fn modinfo(data: &[u8]) -> Result<Modinfo, String> {
    let section = find_section(data, ".modinfo")?.ok_or("no .modinfo section (not a kernel module?)")?;
    Ok(parse_modinfo(section))
}

/// Check that `data` is a static x86-64 executable the kernel can run as
/// `/init` with nothing else in the initramfs: ELF64, little-endian, x86-64,
/// an executable (ET_EXEC, or ET_DYN for static-pie), with loadable segments
/// and no program interpreter (PT_INTERP).
pub fn check_static_x86_64(data: &[u8]) -> Result<(), String> {
    let h = header(data)?;
    if h.machine != EM_X86_64 {
        return Err(format!("built for ELF machine {} instead of x86-64 ({EM_X86_64})", h.machine));
    }
    match h.e_type {
        ET_EXEC | ET_DYN => {}
        ET_REL => return Err("an object file, not an executable".into()),
        t => return Err(format!("ELF type {t} is not an executable")),
    }
    if h.phnum == 0 || h.phentsize < PHDR_LEN {
        return Err("has no program headers".into());
    }
    let mut loads = 0usize;
    for i in 0..h.phnum {
        let off = entry_offset(h.phoff, h.phentsize, i).ok_or("program header offset overflows")?;
        let p_type = u32_at(data, off).ok_or_else(|| format!("program header {i} is outside the file"))?;
        if off.checked_add(PHDR_LEN).is_none_or(|end| end > data.len()) {
            return Err(format!("program header {i} is outside the file"));
        }
        match p_type {
            PT_INTERP => return Err(
                "dynamically linked (it has a program interpreter, PT_INTERP), but the initramfs holds no libraries"
                    .into(),
            ),
            PT_LOAD => loads = loads.saturating_add(1),
            _ => {}
        }
    }
    if loads == 0 {
        return Err("has no loadable segment".into());
    }
    Ok(())
}

/// Build a minimal ELF64 x86-64 relocatable file holding the given sections
/// (name, contents). For tests and fuzzing: the shape of a kernel module as far
/// as this reader is concerned. Meant for a few small sections (sizes are not
/// checked against the format's 32-bit name offsets and 16-bit counts).
pub fn minimal_elf64(sections: &[(&str, &[u8])]) -> Vec<u8> {
    let mut names = vec![0u8];
    let mut name_offsets = Vec::new();
    for (name, _) in sections.iter().copied().chain([(".shstrtab", &[][..])]) {
        name_offsets.push(names.len() as u32);
        names.extend_from_slice(name.as_bytes());
        names.push(0);
    }
    let mut out = vec![0u8; EHDR_LEN];
    let mut placed = Vec::new();
    for (_, data) in sections.iter().copied().chain([(".shstrtab", names.as_slice())]) {
        while !out.len().is_multiple_of(8) {
            out.push(0);
        }
        placed.push((out.len() as u64, data.len() as u64));
        out.extend_from_slice(data);
    }
    while !out.len().is_multiple_of(8) {
        out.push(0);
    }
    let shoff = out.len() as u64;
    let shnum = u16::try_from(sections.len().saturating_add(2)).unwrap_or(u16::MAX);
    out.extend_from_slice(&[0u8; SHDR_LEN]); // the null section
    for (i, (offset, size)) in placed.iter().enumerate() {
        let mut sh = [0u8; SHDR_LEN];
        sh[0..4].copy_from_slice(&name_offsets[i].to_le_bytes());
        let kind: u32 = if i + 1 == placed.len() { 3 } else { 1 }; // STRTAB / PROGBITS
        sh[4..8].copy_from_slice(&kind.to_le_bytes());
        sh[24..32].copy_from_slice(&offset.to_le_bytes());
        sh[32..40].copy_from_slice(&size.to_le_bytes());
        sh[48..56].copy_from_slice(&1u64.to_le_bytes());
        out.extend_from_slice(&sh);
    }
    out[0..4].copy_from_slice(MAGIC);
    out[4] = 2; // ELFCLASS64
    out[5] = 1; // little-endian
    out[6] = 1; // EV_CURRENT
    out[16..18].copy_from_slice(&ET_REL.to_le_bytes());
    out[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
    out[20..24].copy_from_slice(&1u32.to_le_bytes());
    out[40..48].copy_from_slice(&shoff.to_le_bytes());
    out[52..54].copy_from_slice(&(EHDR_LEN as u16).to_le_bytes());
    out[58..60].copy_from_slice(&(SHDR_LEN as u16).to_le_bytes());
    out[60..62].copy_from_slice(&shnum.to_le_bytes());
    out[62..64].copy_from_slice(&shnum.saturating_sub(1).to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &[u8] =
        b"license=GPL\0depends=xor,raid6_pq\0softdep=pre: crc32c\0softdep=post: foo\0\0\0alias=fs-btrfs\0\
vermagic=6.1.0-56-amd64 SMP preempt mod_unload modversions \0name=btrfs\0";

    #[test]
    fn reads_modinfo_from_a_generated_elf() {
        let elf = minimal_elf64(&[(".text", b"\xc3"), (".modinfo", INFO)]);
        let info = modinfo(&elf).unwrap();
        assert_eq!(info.release(), Some("6.1.0-56-amd64"));
        assert_eq!(info.depends, ["xor", "raid6_pq"]);
        assert_eq!(info.softdeps, ["pre: crc32c", "post: foo"]);
        assert_eq!(info.aliases, ["fs-btrfs"]);
        assert_eq!(info.name.as_deref(), Some("btrfs"));
        assert_eq!(find_section(&elf, ".text").unwrap(), Some(&b"\xc3"[..]));
        assert_eq!(find_section(&elf, ".data").unwrap(), None);
    }

    #[test]
    fn empty_depends_is_no_dependency() {
        assert_eq!(parse_modinfo(b"depends=\0vermagic=6.1.0 SMP\0").depends, Vec::<String>::new());
    }

    #[test]
    fn reads_modinfo_from_gcc_output() {
        let dir = std::env::temp_dir().join(format!("dockroot-elf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let c = dir.join("m.c");
        std::fs::write(
            &c,
            "__attribute__((section(\".modinfo\"), used)) static const char a[] = \"vermagic=6.1.0-56-amd64 SMP mod_unload \";\n\
             __attribute__((section(\".modinfo\"), used)) static const char b[] = \"depends=libcrc32c\";\n\
             int f(void) { return 1; }\n",
        )
        .unwrap();
        let o = dir.join("m.o");
        let st = std::process::Command::new("gcc").arg("-c").arg(&c).arg("-o").arg(&o).status().unwrap();
        assert!(st.success());
        let info = modinfo(&std::fs::read(&o).unwrap()).unwrap();
        assert_eq!(info.release(), Some("6.1.0-56-amd64"));
        assert_eq!(info.depends, ["libcrc32c"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn refuses_non_elf_and_modules_without_modinfo() {
        assert_eq!(modinfo(b"hello").unwrap_err(), "not an ELF file");
        let elf = minimal_elf64(&[(".text", b"\xc3")]);
        assert!(modinfo(&elf).unwrap_err().contains("no .modinfo section"));
    }

    #[test]
    fn malformed_elf_never_panics() {
        let elf = minimal_elf64(&[(".modinfo", INFO)]);
        for n in 0..elf.len() {
            let _ = modinfo(&elf[..n]);
            let _ = check_static_x86_64(&elf[..n]);
        }
        for i in 0..elf.len() {
            for delta in [1u8, 0x80, 0xff] {
                let mut c = elf.clone();
                c[i] = c[i].wrapping_add(delta);
                let _ = modinfo(&c);
                let _ = check_static_x86_64(&c);
            }
        }
        // Huge counts and offsets.
        let mut c = elf.clone();
        c[40..48].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(modinfo(&c).is_err());
        let mut c = elf.clone();
        c[60..62].copy_from_slice(&0u16.to_le_bytes()); // extended numbering with a zero sh_size
        assert!(modinfo(&c).unwrap_err().contains("no .modinfo"));
    }

    #[test]
    fn static_check_accepts_static_busybox_and_refuses_dynamic_ls() {
        let busybox = std::fs::read("/bin/busybox").expect("busybox-static is installed by scripts/setup");
        check_static_x86_64(&busybox).unwrap();
        let ls = std::fs::read("/bin/ls").unwrap();
        assert!(check_static_x86_64(&ls).unwrap_err().contains("dynamically linked"));
        let obj = minimal_elf64(&[(".modinfo", INFO)]);
        assert!(check_static_x86_64(&obj).unwrap_err().contains("object file"));
        assert_eq!(check_static_x86_64(b"#!/bin/sh\n").unwrap_err(), "not an ELF file");
    }
}
