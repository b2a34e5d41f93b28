//! The init's memory allocator, standing in for glibc's `malloc` (see
//! `src/malloc.rs`, which exports it under the C names in `dockroot-init` only).
//!
//! Why: glibc's `malloc.o` with its arenas, tunables and statistics printing is
//! about 30 KB of a static PID 1 that allocates a few megabytes for a few
//! seconds, single-threaded. This one is small and simple:
//!
//! - requests up to 64 KiB (with a 16-byte header) take a block of a power-of-two
//!   size class (32 B .. 64 KiB), from the class's free list or carved from a
//!   1 MiB chunk mapped with `mmap` (untouched pages cost no memory);
//! - larger or over-aligned requests get a mapping of their own, unmapped on free;
//! - every block carries its header (a tag, the class or the mapping's offset and
//!   length), so `free` and `realloc` need no size from the caller, and a pointer
//!   that is not ours (a corrupt header) aborts, as glibc's "free(): invalid
//!   pointer" does, instead of corrupting the heap.
//!
//! The pure part is the class arithmetic ([`class_of`], [`Header`]); the thin
//! part is [`Heap`] over a page source ([`Pages`]), unit-tested with real `mmap`.

use std::ptr::null_mut;

/// Bytes before every block's payload; also the alignment of every payload.
pub const HEADER: usize = 16;
/// The smallest block (header included).
const MIN_BLOCK: usize = 32;
/// Size classes: blocks of 32 << c bytes, c < CLASSES (the largest 64 KiB).
pub const CLASSES: usize = 12;
/// The largest block of a size class (header included).
pub const MAX_BLOCK: usize = MIN_BLOCK << (CLASSES - 1);
/// What a chunk maps at a time for the size classes.
const CHUNK: usize = 1 << 20;
const PAGE: usize = 4096;

const TAG_CLASS: u16 = 0xd0c1;
const TAG_MAPPED: u16 = 0xd0c2;

/// The header before each payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct Header {
    tag: u16,
    class: u16,
    /// Mapped blocks: the payload's offset from the mapping's start.
    offset: u32,
    /// Mapped blocks: the mapping's length.
    len: usize,
}

const _: () = assert!(std::mem::size_of::<Header>() == HEADER);

/// The size class for a payload of `size` bytes, or None when it needs a
/// mapping of its own.
pub fn class_of(size: usize) -> Option<usize> {
    let total = size.checked_add(HEADER)?.max(MIN_BLOCK);
    if total > MAX_BLOCK {
        return None;
    }
    let c = (total.next_power_of_two() / MIN_BLOCK).trailing_zeros() as usize;
    Some(c)
}

/// Bytes a block of class `c` holds for its payload.
pub fn capacity(c: usize) -> usize {
    (MIN_BLOCK << c) - HEADER
}

/// A mapping for `size` payload bytes at alignment `align` (a power of two):
/// the mapping's length and the payload's offset in it, or None on overflow.
pub fn mapping_for(size: usize, align: usize) -> Option<(usize, usize)> {
    let align = align.max(HEADER);
    if align > 1 << 30 {
        return None;
    }
    // The payload sits at the first multiple of `align` that leaves room for the header.
    let offset = HEADER.next_multiple_of(align);
    let len = offset.checked_add(size)?.checked_next_multiple_of(PAGE)?;
    Some((len, offset))
}

/// Where the heap gets and returns pages.
pub trait Pages {
    /// `len` bytes (a multiple of the page size), zeroed, page-aligned; null on failure.
    fn map(&mut self, len: usize) -> *mut u8;
    /// Return a mapping `map` gave.
    fn unmap(&mut self, at: *mut u8, len: usize);
}

/// The allocator's state: a free list per class and the chunk being carved.
pub struct Heap<P: Pages> {
    pages: P,
    free: [*mut u8; CLASSES],
    bump: *mut u8,
    bump_left: usize,
}

impl<P: Pages> Heap<P> {
    pub const fn new(pages: P) -> Self {
        Heap { pages, free: [null_mut(); CLASSES], bump: null_mut(), bump_left: 0 }
    }

    /// `size` bytes aligned to `align` (a power of two); null when out of memory.
    pub fn alloc(&mut self, size: usize, align: usize) -> *mut u8 {
        if align <= HEADER {
            if let Some(c) = class_of(size) {
                return self.alloc_class(c);
            }
        }
        let Some((len, offset)) = mapping_for(size, align) else { return null_mut() };
        let base = self.pages.map(len);
        if base.is_null() {
            return null_mut();
        }
        let header = Header { tag: TAG_MAPPED, class: 0, offset: offset as u32, len };
        // SAFETY: base..base+len is ours (just mapped); offset >= HEADER and
        // offset + size <= len, so the header and payload lie inside it, and
        // both are aligned (offset is a multiple of 16 and of align).
        unsafe {
            let payload = base.add(offset);
            payload.cast::<Header>().sub(1).write(header);
            payload
        }
    }

    fn alloc_class(&mut self, c: usize) -> *mut u8 {
        let block = if !self.free[c].is_null() {
            let block = self.free[c];
            // SAFETY: a free block's first word (inside its payload) holds the
            // next free block of the class (written by `free`).
            self.free[c] = unsafe { block.add(HEADER).cast::<*mut u8>().read() };
            block
        } else {
            let size = MIN_BLOCK << c;
            if self.bump_left < size {
                let chunk = self.pages.map(CHUNK);
                if chunk.is_null() {
                    return null_mut();
                }
                self.bump = chunk;
                self.bump_left = CHUNK;
            }
            let block = self.bump;
            // SAFETY: bump_left >= size bytes remain in the current chunk.
            self.bump = unsafe { self.bump.add(size) };
            self.bump_left -= size;
            block
        };
        let header = Header { tag: TAG_CLASS, class: c as u16, offset: 0, len: 0 };
        // SAFETY: block is a whole block of class c (16-aligned, MIN_BLOCK << c
        // bytes), ours and not in use: the header fits at its start.
        unsafe {
            block.cast::<Header>().write(header);
            block.add(HEADER)
        }
    }

    /// The header of a payload we gave, checked; None for a pointer that is not ours.
    ///
    /// # Safety
    /// The 16 bytes before `p` must be readable (true of every pointer the
    /// malloc family returned, ours or not).
    unsafe fn header(p: *mut u8) -> Option<Header> {
        // SAFETY: every payload we give has its header in the 16 bytes before
        // it; for a foreign pointer this reads garbage that the checks refuse.
        let h = unsafe { p.cast::<Header>().sub(1).read() };
        let ok = match h.tag {
            TAG_CLASS => usize::from(h.class) < CLASSES,
            TAG_MAPPED => h.offset as usize >= HEADER && h.len % PAGE == 0 && h.offset as usize <= h.len,
            _ => false,
        };
        ok.then_some(h)
    }

    /// How many bytes the block at `p` holds; None if it is not ours.
    ///
    /// # Safety
    /// As [`Heap::free`].
    pub unsafe fn usable(p: *mut u8) -> Option<usize> {
        // SAFETY: the caller's promise (see above).
        unsafe { Self::header(p) }.map(|h| match h.tag {
            TAG_CLASS => capacity(usize::from(h.class)),
            _ => h.len - h.offset as usize,
        })
    }

    /// Give back a block; false (and nothing done) if `p` is not ours.
    ///
    /// # Safety
    /// `p` is null or a pointer a malloc-family function returned and that is
    /// not used after this call (C's contract for `free`).
    pub unsafe fn free(&mut self, p: *mut u8) -> bool {
        if p.is_null() {
            return true;
        }
        // SAFETY: the caller's promise: the 16 bytes before p are readable.
        let Some(h) = (unsafe { Self::header(p) }) else { return false };
        if h.tag == TAG_CLASS {
            let c = usize::from(h.class);
            // SAFETY: the payload holds at least 16 bytes (MIN_BLOCK - HEADER):
            // its first word links the free list; the tag is cleared so a
            // second free of the same block is refused.
            unsafe {
                p.cast::<*mut u8>().write(self.free[c]);
                p.cast::<Header>().sub(1).write(Header { tag: 0, class: 0, offset: 0, len: 0 });
            }
            self.free[c] = p.wrapping_sub(HEADER);
        } else {
            let base = p.wrapping_sub(h.offset as usize);
            self.pages.unmap(base, h.len);
        }
        true
    }

    /// Resize; null (and `p` untouched) when out of memory. None if `p` is not ours.
    ///
    /// # Safety
    /// As [`Heap::free`] (C's contract for `realloc`).
    pub unsafe fn realloc(&mut self, p: *mut u8, size: usize) -> Option<*mut u8> {
        if p.is_null() {
            return Some(self.alloc(size, HEADER));
        }
        // SAFETY: the caller's promise.
        let have = unsafe { Self::usable(p) }?;
        if size <= have {
            return Some(p);
        }
        let q = self.alloc(size, HEADER);
        if !q.is_null() {
            // SAFETY: p holds `have` bytes, q at least `size`; distinct blocks.
            // It was ours (usable said so), so this free succeeds.
            unsafe {
                std::ptr::copy_nonoverlapping(p, q, have.min(size));
                self.free(p);
            }
        }
        Some(q)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pages from the host's mmap, counting what is mapped.
    #[derive(Default)]
    struct Counted {
        mapped: usize,
    }

    impl Pages for Counted {
        fn map(&mut self, len: usize) -> *mut u8 {
            self.mapped += len;
            // SAFETY: an anonymous private mapping: no file, no aliasing.
            let p = unsafe {
                libc::mmap(
                    null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                null_mut()
            } else {
                p.cast()
            }
        }
        fn unmap(&mut self, at: *mut u8, len: usize) {
            self.mapped -= len;
            // SAFETY: at/len is a mapping `map` made.
            unsafe { libc::munmap(at.cast(), len) };
        }
    }

    // The tests' free/realloc/usable: every pointer is one the heap gave or,
    // once, a foreign one inside a live array; all stay readable.
    fn usable(p: *mut u8) -> Option<usize> {
        // SAFETY: see above.
        unsafe { Heap::<Counted>::usable(p) }
    }
    fn free(heap: &mut Heap<Counted>, p: *mut u8) -> bool {
        // SAFETY: see above.
        unsafe { heap.free(p) }
    }
    fn realloc(heap: &mut Heap<Counted>, p: *mut u8, size: usize) -> Option<*mut u8> {
        // SAFETY: see above.
        unsafe { heap.realloc(p, size) }
    }

    #[test]
    fn classes_fit_the_request_and_the_header() {
        assert_eq!(class_of(0), Some(0));
        assert_eq!(class_of(16), Some(0));
        assert_eq!(class_of(17), Some(1));
        assert_eq!(capacity(1), 48);
        assert_eq!(class_of(MAX_BLOCK - HEADER), Some(CLASSES - 1));
        assert_eq!(class_of(MAX_BLOCK - HEADER + 1), None);
        assert_eq!(class_of(usize::MAX), None);
        for size in [1, 15, 16, 100, 1000, 4096, 30000, MAX_BLOCK - HEADER] {
            let c = class_of(size).unwrap();
            assert!(capacity(c) >= size && (c == 0 || capacity(c - 1) < size), "size {size} class {c}");
        }
    }

    #[test]
    fn mappings_leave_room_for_the_header_at_the_alignment() {
        assert_eq!(mapping_for(100_000, 8), Some((102_400, 16)));
        assert_eq!(mapping_for(10, 4096), Some((8192, 4096)));
        assert_eq!(mapping_for(usize::MAX - 10, 16), None);
        assert_eq!(mapping_for(1, 1 << 31), None);
    }

    #[test]
    fn blocks_are_reused_aligned_and_hold_their_bytes() {
        let mut heap = Heap::new(Counted::default());
        let a = heap.alloc(40, 8);
        let b = heap.alloc(40, 8);
        assert!(!a.is_null() && !b.is_null() && a != b);
        assert_eq!(a as usize % 16, 0);
        assert_eq!(usable(a), Some(48));
        // SAFETY: a and b hold 48 bytes each.
        unsafe {
            a.write_bytes(0xaa, 48);
            b.write_bytes(0xbb, 48);
            assert_eq!(*a.add(47), 0xaa);
        }
        assert!(free(&mut heap, a));
        assert!(!free(&mut heap, a), "a double free is refused");
        assert_eq!(heap.alloc(33, 16), a, "the freed block of the class comes back");
        assert_eq!(heap.pages.mapped, CHUNK);
        // SAFETY: b is still ours: a's free and reuse wrote only inside a's block.
        assert_eq!(unsafe { *b.add(47) }, 0xbb);
    }

    #[test]
    fn large_and_aligned_blocks_are_mappings_of_their_own() {
        let mut heap = Heap::new(Counted::default());
        let big = heap.alloc(1 << 20, 16);
        assert_eq!(heap.pages.mapped, (1 << 20) + PAGE);
        let aligned = heap.alloc(100, 4096);
        assert_eq!(aligned as usize % 4096, 0);
        assert!(free(&mut heap, big) && free(&mut heap, aligned));
        assert_eq!(heap.pages.mapped, 0, "every mapping is returned");
        let mut foreign = [0u64; 8];
        assert!(!free(&mut heap, foreign.as_mut_ptr().cast::<u8>().wrapping_add(32)), "not ours");
    }

    #[test]
    fn realloc_keeps_the_bytes_and_grows_across_classes_and_mappings() {
        let mut heap = Heap::new(Counted::default());
        let mut p = heap.alloc(10, 16);
        // SAFETY: p holds 16 bytes.
        unsafe { p.copy_from(b"0123456789".as_ptr(), 10) };
        for size in [12, 100, 5000, 200_000, 300] {
            p = realloc(&mut heap, p, size).unwrap();
            assert!(usable(p).unwrap() >= size);
            // SAFETY: at least 10 bytes were carried over each time.
            assert_eq!(unsafe { std::slice::from_raw_parts(p, 10) }, b"0123456789", "size {size}");
        }
        assert_eq!(realloc(&mut heap, p, 290), Some(p), "shrinking keeps the block");
        assert!(free(&mut heap, p));
        assert_eq!(heap.pages.mapped, CHUNK, "the 200 KB mapping went back");
    }
}
