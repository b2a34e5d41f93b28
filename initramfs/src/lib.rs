pub mod cpio;
