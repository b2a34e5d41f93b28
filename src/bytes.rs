//! Fixed-width integers and byte ranges read from untrusted on-disk bytes:
//! superblocks and partition tables ([`crate::probe`]) and bbolt pages
//! ([`crate::store`]'s containerd reader).
//!
//! Pure: every read is bounds-checked and returns `None` when the field does
//! not lie wholly inside the buffer; offset arithmetic is checked, so no
//! offset (even near `usize::MAX`) can overflow or panic. Callers turn `None`
//! into their own "too short" answer.

/// A byte buffer read by offset: little-endian integers (what btrfs, ext, FAT,
/// GPT, MBR and bbolt store), the few big-endian ones xfs stores, single
/// bytes, fixed-size arrays and sub-slices. Methods take `self` by value (two
/// words, in registers): by reference, every call site spilled it to the stack
/// and the init grew by 2.5 KB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bytes<'a>(&'a [u8]);

impl<'a> Bytes<'a> {
    /// A reader over `buf`.
    pub fn new(buf: &'a [u8]) -> Bytes<'a> {
        Bytes(buf)
    }

    /// The `len` bytes at `off`.
    pub fn slice(self, off: usize, len: usize) -> Option<&'a [u8]> {
        self.0.get(off..off.checked_add(len)?)
    }

    /// The `N` bytes at `off`, copied.
    pub fn array<const N: usize>(self, off: usize) -> Option<[u8; N]> {
        self.slice(off, N)?.try_into().ok()
    }

    /// The byte at `off`.
    pub fn u8(self, off: usize) -> Option<u8> {
        self.0.get(off).copied()
    }

    /// A little-endian u16 at `off`.
    pub fn le16(self, off: usize) -> Option<u16> {
        self.array(off).map(u16::from_le_bytes)
    }

    /// A little-endian u32 at `off`.
    pub fn le32(self, off: usize) -> Option<u32> {
        self.array(off).map(u32::from_le_bytes)
    }

    /// A little-endian u64 at `off`.
    pub fn le64(self, off: usize) -> Option<u64> {
        self.array(off).map(u64::from_le_bytes)
    }

    /// A big-endian u16 at `off`.
    pub fn be16(self, off: usize) -> Option<u16> {
        self.array(off).map(u16::from_be_bytes)
    }

    /// A big-endian u32 at `off`.
    pub fn be32(self, off: usize) -> Option<u32> {
        self.array(off).map(u32::from_be_bytes)
    }

    /// A big-endian u64 at `off`.
    pub fn be64(self, off: usize) -> Option<u64> {
        self.array(off).map(u64::from_be_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUF: [u8; 10] = [0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a];

    #[test]
    fn reads_in_bounds() {
        let b = Bytes::new(&BUF);
        assert_eq!(b.u8(0), Some(0x01));
        assert_eq!(b.u8(9), Some(0x0a));
        assert_eq!(b.le16(0), Some(0x0201));
        assert_eq!(b.le16(8), Some(0x0a09), "the last two bytes");
        assert_eq!(b.le32(1), Some(0x0504_0302));
        assert_eq!(b.le64(2), Some(0x0a09_0807_0605_0403), "the last eight bytes");
        assert_eq!(b.be16(0), Some(0x0102));
        assert_eq!(b.be32(6), Some(0x0708_090a));
        assert_eq!(b.be64(0), Some(0x0102_0304_0506_0708));
        assert_eq!(b.slice(3, 2), Some(&[0x04, 0x05][..]));
        assert_eq!(b.slice(10, 0), Some(&[][..]), "an empty range at the end");
        assert_eq!(b.array::<3>(7), Some([0x08, 0x09, 0x0a]));
    }

    #[test]
    fn out_of_bounds_is_none() {
        let b = Bytes::new(&BUF);
        assert_eq!(b.u8(10), None);
        assert_eq!(b.le16(9), None, "one byte short");
        assert_eq!(b.le32(7), None);
        assert_eq!(b.le64(3), None);
        assert_eq!(b.be16(9), None);
        assert_eq!(b.be32(7), None);
        assert_eq!(b.be64(3), None);
        assert_eq!(b.slice(8, 3), None);
        assert_eq!(b.slice(11, 0), None);
        assert_eq!(b.array::<11>(0), None);
        let empty = Bytes::new(&[]);
        assert_eq!((empty.u8(0), empty.le16(0), empty.le32(0), empty.le64(0)), (None, None, None, None));
        assert_eq!(empty.slice(0, 0), Some(&[][..]));
    }

    #[test]
    fn offsets_near_usize_max_do_not_overflow() {
        let b = Bytes::new(&BUF);
        for off in [usize::MAX, usize::MAX - 1, usize::MAX - 3, usize::MAX - 7, usize::MAX / 2] {
            assert_eq!(b.u8(off), None);
            assert_eq!(b.le16(off), None);
            assert_eq!(b.le32(off), None);
            assert_eq!(b.le64(off), None);
            assert_eq!(b.be16(off), None);
            assert_eq!(b.be32(off), None);
            assert_eq!(b.be64(off), None);
            assert_eq!(b.array::<16>(off), None);
            assert_eq!(b.slice(off, 1), None);
            assert_eq!(b.slice(off, 0), None);
            assert_eq!(b.slice(1, off), None);
        }
        assert_eq!(b.slice(usize::MAX, usize::MAX), None);
    }
}
