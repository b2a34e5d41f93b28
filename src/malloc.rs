//! glibc's allocation functions (`malloc`, `free`, `calloc`, `realloc`,
//! `posix_memalign`, `aligned_alloc`, `memalign`), defined by `dockroot-init`
//! (and the `dockroot` commands) itself so that the static linker leaves glibc's `malloc.o` out (about 30 KB):
//! [`dockroot::heap`] does the work. Rust's allocations and glibc's own
//! (`opendir`, `realpath`) both come here. Should glibc ever need another symbol
//! of `malloc.o`, the link fails with a duplicate `malloc`: loud, at build time.
//!
//! One global heap behind a spin lock: the init runs one thread (forks go
//! through `fork::fork_single_threaded`), so the lock is never contended; it is
//! there so that a mistake cannot corrupt the heap.

use std::sync::atomic::{AtomicBool, Ordering};

use dockroot::heap::{Heap, Pages, HEADER};

struct Mmap;

impl Pages for Mmap {
    fn map(&mut self, len: usize) -> *mut u8 {
        // SAFETY: an anonymous private mapping: raw kernel ABI with no aliasing.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            std::ptr::null_mut()
        } else {
            p.cast()
        }
    }

    fn unmap(&mut self, at: *mut u8, len: usize) {
        // SAFETY: at/len is a whole mapping `map` made and the heap no longer uses.
        unsafe { libc::munmap(at.cast(), len) };
    }
}

static LOCK: AtomicBool = AtomicBool::new(false);
static mut HEAP: Heap<Mmap> = Heap::new(Mmap);

/// Run `f` on the heap, alone.
fn with_heap<T>(f: impl FnOnce(&mut Heap<Mmap>) -> T) -> T {
    while LOCK.compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
        std::hint::spin_loop();
    }
    // SAFETY: LOCK makes this the only live reference to HEAP until it is released.
    let r = f(unsafe { &mut *std::ptr::addr_of_mut!(HEAP) });
    LOCK.store(false, Ordering::Release);
    r
}

/// A pointer that is not ours: heap corruption or a bug; stop, as glibc does.
fn invalid_pointer() -> ! {
    std::process::abort()
}

#[no_mangle]
pub extern "C" fn malloc(size: usize) -> *mut u8 {
    with_heap(|h| h.alloc(size, HEADER))
}

#[no_mangle]
pub extern "C" fn free(p: *mut u8) {
    // SAFETY: C's contract: p is null or came from this malloc family and is done with.
    if !with_heap(|h| unsafe { h.free(p) }) {
        invalid_pointer()
    }
}

#[no_mangle]
pub extern "C" fn calloc(n: usize, size: usize) -> *mut u8 {
    let Some(total) = n.checked_mul(size) else { return std::ptr::null_mut() };
    let p = malloc(total);
    if !p.is_null() {
        // SAFETY: p holds at least `total` bytes (a recycled block is not zeroed).
        unsafe { p.write_bytes(0, total) };
    }
    p
}

#[no_mangle]
pub extern "C" fn realloc(p: *mut u8, size: usize) -> *mut u8 {
    // SAFETY: C's contract: p is null or came from this malloc family.
    match with_heap(|h| unsafe { h.realloc(p, size) }) {
        Some(q) => q,
        None => invalid_pointer(),
    }
}

#[no_mangle]
pub extern "C" fn posix_memalign(out: *mut *mut u8, align: usize, size: usize) -> i32 {
    if !align.is_power_of_two() || align < std::mem::size_of::<usize>() {
        return libc::EINVAL;
    }
    let p = with_heap(|h| h.alloc(size, align));
    if p.is_null() {
        return libc::ENOMEM;
    }
    // SAFETY: the caller passes a valid place for the result (posix_memalign's contract).
    unsafe { out.write(p) };
    0
}

#[no_mangle]
pub extern "C" fn aligned_alloc(align: usize, size: usize) -> *mut u8 {
    if !align.is_power_of_two() {
        return std::ptr::null_mut();
    }
    with_heap(|h| h.alloc(size, align))
}

#[no_mangle]
pub extern "C" fn memalign(align: usize, size: usize) -> *mut u8 {
    aligned_alloc(align, size)
}
