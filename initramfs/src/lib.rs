pub mod cpio;
pub mod elf;
pub mod compress;
