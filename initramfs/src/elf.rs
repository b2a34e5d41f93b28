//! ELF64 reading for the builder, through the `object` crate (read-only):
//! the `.modinfo` section of kernel modules, and the checks that the init is a
//! static x86-64 executable. Plus [`minimal_elf64`], a hand-built module-shaped
//! ELF for tests and fuzzing.
//!
//! `object` bounds every offset it reads against the file; malformed input
//! gives an error, never a panic. The messages are this crate's own, so the
//! builder says the same things it always said.

use object::elf::{
    FileHeader64, SectionHeader64, ELFCLASS64, ELFDATA2LSB, ET_DYN, ET_EXEC, ET_REL, PT_INTERP, PT_LOAD,
};
use object::read::elf::{FileHeader, ProgramHeader, SectionHeader, SectionTable};
use object::{LittleEndian, ReadRef};

/// The ELF magic.
pub const MAGIC: &[u8; 4] = &object::elf::ELFMAG;
/// `e_machine` of x86-64.
pub const EM_X86_64: u16 = object::elf::EM_X86_64.0;
const EHDR_LEN: usize = size_of::<FileHeader64<LittleEndian>>();
const SHDR_LEN: usize = size_of::<SectionHeader64<LittleEndian>>();
const PHDR_LEN: usize = size_of::<object::elf::ProgramHeader64<LittleEndian>>();

type Header = FileHeader64<LittleEndian>;

/// The file header of an ELF64 little-endian file.
///
/// Read as plain bytes rather than through `FileHeader::parse`, which also
/// insists on `EI_VERSION` = 1: this reader never did (nor does the kernel's
/// module loader or ELF loader), and a module it took before must still pass.
fn header(data: &[u8]) -> Result<&Header, String> {
    if data.get(..4) != Some(MAGIC.as_slice()) {
        return Err("not an ELF file".into());
    }
    if data.get(4) != Some(&ELFCLASS64.0) {
        return Err("not a 64-bit ELF file".into());
    }
    if data.get(5) != Some(&ELFDATA2LSB.0) {
        return Err("not a little-endian ELF file".into());
    }
    data.read_at::<Header>(0).map_err(|()| "ELF header is truncated".to_string())
}

/// The section table (headers and their names), or `None` if the file has no sections.
fn sections<'a>(data: &'a [u8], h: &Header) -> Result<Option<SectionTable<'a, Header, &'a [u8]>>, String> {
    let e = LittleEndian;
    if h.e_shoff(e) == 0 {
        return Ok(None);
    }
    // The entry size first, for a clear message (with e_shnum = 0, the
    // extended count, `object` checks it when it reads section header 0).
    let entsize = usize::from(h.e_shentsize(e));
    if h.e_shnum(e) != 0 && entsize != SHDR_LEN {
        return Err(format!("section header size {entsize} is not {SHDR_LEN}, the ELF64 size"));
    }
    let shnum = h.shnum(e, data).map_err(|err| format!("section header 0 (the extended section count): {err}"))?;
    if shnum == 0 {
        return Ok(None);
    }
    // A table larger than the file cannot be real; `object` checks it against the file.
    let headers = h.section_headers(e, data).map_err(|_| "section header table is outside the file".to_string())?;
    let names_index =
        h.section_strings_index(e, data).ok().map(|i| i.0).filter(|&i| i < headers.len()).ok_or_else(|| {
            format!("section name table index {} is out of range ({shnum} sections)", h.e_shstrndx(e).0)
        })?;
    if let Some(names) = headers.get(names_index) {
        names.data(e, data).map_err(|_| format!("section {names_index}'s data is outside the file"))?;
    }
    let strings = h.section_strings(e, data, headers).map_err(|err| format!("section name table: {err}"))?;
    Ok(Some(SectionTable::new(headers, strings)))
}

/// The contents of the section called `wanted`, if there is one.
pub fn find_section<'a>(data: &'a [u8], wanted: &str) -> Result<Option<&'a [u8]>, String> {
    let h = header(data)?;
    let Some(table) = sections(data, h)? else { return Ok(None) };
    let e = LittleEndian;
    // In order: a broken section before the wanted one is an error.
    for (index, section) in table.enumerate() {
        let i = index.0;
        let bytes = section.data(e, data).map_err(|_| format!("section {i}'s data is outside the file"))?;
        let name =
            table.section_name(e, section).map_err(|_| format!("section {i}'s name is outside the string table"))?;
        if name == wanted.as_bytes() {
            return Ok(Some(bytes));
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
    let e = LittleEndian;
    let machine = h.e_machine(e).0;
    if machine != EM_X86_64 {
        return Err(format!("built for ELF machine {machine} instead of x86-64 ({EM_X86_64})"));
    }
    match h.e_type(e) {
        ET_EXEC | ET_DYN => {}
        ET_REL => return Err("an object file, not an executable".into()),
        t => return Err(format!("ELF type {} is not an executable", t.0)),
    }
    let entsize = usize::from(h.e_phentsize(e));
    if h.e_phnum(e) == 0 || entsize < PHDR_LEN {
        return Err("has no program headers".into());
    }
    if entsize != PHDR_LEN {
        return Err(format!("program header size {entsize} is not {PHDR_LEN}, the ELF64 size"));
    }
    let headers = h.program_headers(e, data).map_err(|_| "program header table is outside the file".to_string())?;
    let mut loads = 0usize;
    for p in headers {
        match p.p_type(e) {
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
    out[16..18].copy_from_slice(&ET_REL.0.to_le_bytes());
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
    fn malformed_tables_say_what_is_wrong() {
        let elf = minimal_elf64(&[(".modinfo", INFO)]);
        let mut c = elf.clone();
        c[58..60].copy_from_slice(&32u16.to_le_bytes()); // e_shentsize
        assert!(modinfo(&c).unwrap_err().contains("section header size 32"));
        let mut c = elf.clone();
        c[62..64].copy_from_slice(&9u16.to_le_bytes()); // e_shstrndx
        assert_eq!(modinfo(&c).unwrap_err(), "section name table index 9 is out of range (3 sections)");
        let shoff = usize::try_from(u64::from_le_bytes(elf[40..48].try_into().unwrap())).unwrap();
        let mut c = elf.clone();
        c[shoff + SHDR_LEN + 24..shoff + SHDR_LEN + 32].copy_from_slice(&u64::MAX.to_le_bytes()); // .modinfo's sh_offset
        assert_eq!(modinfo(&c).unwrap_err(), "section 1's data is outside the file");
        let mut c = elf.clone();
        c[shoff + SHDR_LEN..shoff + SHDR_LEN + 4].copy_from_slice(&u32::MAX.to_le_bytes()); // .modinfo's sh_name
        assert_eq!(modinfo(&c).unwrap_err(), "section 1's name is outside the string table");
        assert_eq!(modinfo(&elf[..shoff + 10]).unwrap_err(), "section header table is outside the file");
        assert_eq!(modinfo(&elf[..40]).unwrap_err(), "ELF header is truncated");
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
