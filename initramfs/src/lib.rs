pub mod cpio;
pub mod elf;
