//! PID 1's helper processes: fork(2) for one that runs Rust code (emptying a
//! trash directory), only while the process runs a single thread; a child
//! sharing PID 1's memory for one that makes only system calls (a module load).
//!
//! A forked child has one thread, the one that called fork; a lock another
//! thread held at that moment (malloc's, stdio's, the logger's) stays locked in
//! the child forever. The init runs no other thread, so its children may
//! allocate and log; [`fork_single_threaded`] checks that this still holds
//! before each fork and refuses otherwise, with an error naming what the fork
//! was for.
//!
//! A module load needs no copy of PID 1 at all: [`spawn_sharing_memory`]
//! starts a child that shares PID 1's memory (clone with `CLONE_VM`, as
//! `posix_spawn` does) and runs only system calls on a stack of its own. Unlike
//! fork it copies no page tables, and PID 1 takes no copy-on-write fault on
//! every page it writes next (costly under emulation, and on PID 1's path to
//! the next load).
//!
//! Pure part: the rule ([`check_threads`]). Thin part: counting the entries of
//! `/proc/self/task` (one per thread), the fork and clone system calls and `_exit`.

use crate::error::{Error, Result};

/// The most `/proc/self/task` entries counted.
pub const THREADS_MAX: usize = 1 << 16;

/// Which side of a fork the caller is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forked {
    /// The new process: it must end with [`exit_child`], never return to the caller's caller.
    Child,
    /// The calling process, with the child's pid.
    Parent(rustix::process::Pid),
}

/// How many threads this process runs: the entries of `/proc/self/task`
/// ([`THREADS_MAX`] at most), 0 if it cannot be listed.
pub fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, |tasks| tasks.take(THREADS_MAX).count())
}

/// May a process running `threads` threads ([`thread_count`]) fork for `what`?
/// Only with exactly one; the error names `what`.
pub fn check_threads(what: &str, threads: usize) -> Result<()> {
    if threads != 1 {
        return Err(Error::msg(format!("cannot fork for {what}: /proc/self/task lists {threads} threads, not 1")));
    }
    Ok(())
}

/// Fork, for `what` (said in the error), if this process runs exactly one
/// thread; an error without forking otherwise, or if fork fails.
pub fn fork_single_threaded(what: &str) -> Result<Forked> {
    check_threads(what, thread_count())?;
    // SAFETY: the fork system call has no memory-safety preconditions for the
    // parent. The child is a copy of this process with only the calling
    // thread, and this process runs no other thread (checked just above; only
    // this thread could have started one since, and it is here), so no lock is
    // held by a thread that does not exist in the child: it may allocate and
    // log. The system call, not glibc's fork(): glibc's locks its stdio
    // streams around the fork, which links its FILE machinery into the static
    // init (4.4 KB) for streams this program never opens; with one thread that
    // locking has nothing to do,
    // and neither have its atfork handlers (none are registered). The child's
    // glibc state stays consistent: glibc 2.34+ asks the kernel for the TID
    // where it signals itself (abort), not its cached copy.
    let pid = unsafe { libc::syscall(libc::SYS_fork) };
    let pid = i32::try_from(pid).unwrap_or(-1);
    if pid < 0 {
        return Err(Error::with(format!("cannot fork for {what}"), std::io::Error::last_os_error()));
    }
    Ok(rustix::process::Pid::from_raw(pid).map_or(Forked::Child, Forked::Parent))
}

/// End a forked child at once with `code`.
pub fn exit_child(code: i32) -> ! {
    // SAFETY: _exit ends the process without running the parent's atexit
    // handlers or flushing its stdio buffers, which belong to the parent.
    unsafe { libc::_exit(code) }
}

/// A stack for a [`spawn_sharing_memory`] child: an anonymous mapping whose
/// lowest page is inaccessible, so that an overflow faults (ending the child)
/// instead of writing over memory PID 1 uses. Unmapped when dropped: keep it
/// until the child is reaped.
#[derive(Debug)]
pub struct ChildStack {
    base: *mut libc::c_void,
    len: usize,
}

impl ChildStack {
    /// Usable bytes: ample for a few system calls.
    pub const SIZE: usize = 64 << 10;
    const GUARD: usize = 4096;

    /// Map a stack, or `None` if the kernel refuses.
    pub fn new() -> Option<ChildStack> {
        let len = Self::SIZE + Self::GUARD;
        // SAFETY: an anonymous private mapping, aliasing nothing.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return None;
        }
        let stack = ChildStack { base, len };
        // SAFETY: the lowest page of the mapping just made, which nothing uses.
        (unsafe { libc::mprotect(base, Self::GUARD, libc::PROT_NONE) } == 0).then_some(stack)
    }

    /// The initial stack pointer: the mapping's end (the stack grows down;
    /// page-aligned, so 16-byte aligned as the ABI wants).
    fn top(&self) -> *mut libc::c_void {
        self.base.wrapping_byte_add(self.len)
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: the whole mapping `new` made; its owner keeps it until the
        // child that ran on it has been reaped, so nothing uses it any more.
        unsafe { libc::munmap(self.base, self.len) };
    }
}

/// Start a child process that shares this process's memory and runs
/// `entry(arg)` on `stack`, then exits with the value `entry` returns (its low
/// 8 bits). The child gets its own copy of the file descriptor table and is
/// reaped like a forked one (it is no thread: it signals SIGCHLD). Returns its
/// pid and a pidfd for it (`None` if the kernel gave none).
///
/// # Safety
///
/// `entry` runs concurrently with this process, in its memory, with its
/// thread pointer: it may only make raw system calls (rustix's, which touch
/// no `errno`) on data it only reads. It must not allocate, take a lock, log,
/// panic, touch a thread-local or close a descriptor through libc. `arg` and
/// `stack` must stay alive and unchanged until the child has been reaped.
pub unsafe fn spawn_sharing_memory(
    what: &str,
    entry: extern "C" fn(*mut libc::c_void) -> libc::c_int,
    arg: *const libc::c_void,
    stack: &ChildStack,
) -> Result<(rustix::process::Pid, Option<std::os::fd::OwnedFd>)> {
    use std::os::fd::FromRawFd;
    let mut pidfd: libc::c_int = -1;
    // SAFETY: clone(2) through glibc's wrapper, which switches the child to
    // `stack` (mapped, ours, unused by anything else), calls `entry(arg)` and
    // ends the child with the exit system call. The caller guarantees `entry`
    // only makes raw system calls on data that outlives the child (this
    // function's contract). CLONE_PIDFD stores the child's pidfd in `pidfd`,
    // a local that lives through the call.
    let pid = unsafe {
        libc::clone(
            entry,
            stack.top(),
            libc::CLONE_VM | libc::CLONE_PIDFD | libc::SIGCHLD,
            arg.cast_mut(),
            &mut pidfd as *mut libc::c_int,
        )
    };
    let Some(pid) = (pid > 0).then(|| rustix::process::Pid::from_raw(pid)).flatten() else {
        return Err(Error::with(format!("cannot start a process for {what}"), std::io::Error::last_os_error()));
    };
    // SAFETY: with CLONE_PIDFD the kernel stored a new descriptor, which only this owner closes.
    let pidfd = (pidfd >= 0).then(|| unsafe { std::os::fd::OwnedFd::from_raw_fd(pidfd) });
    Ok((pid, pidfd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forks_only_with_one_thread() {
        assert!(check_threads("a test", 1).is_ok());
        let e = check_threads("emptying the trash", 3).unwrap_err().to_string();
        assert_eq!(e, "cannot fork for emptying the trash: /proc/self/task lists 3 threads, not 1");
        let e = check_threads("a module loader", 0).unwrap_err().to_string();
        assert_eq!(e, "cannot fork for a module loader: /proc/self/task lists 0 threads, not 1", "unreadable");
    }

    #[test]
    fn refuses_to_fork_a_process_with_threads() {
        // At least two threads: this one and one waiting for the channel to close.
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let other = std::thread::spawn(move || rx.recv().is_err());
        let threads = thread_count();
        assert!(threads >= 2, "{threads}");
        let e = fork_single_threaded("a test").err().unwrap().to_string();
        drop(tx);
        assert!(other.join().unwrap());
        assert!(e.starts_with("cannot fork for a test: /proc/self/task lists "), "{e}");
    }

    extern "C" fn exit_with(arg: *mut libc::c_void) -> libc::c_int {
        // A raw system call, as a loader child makes: getppid through rustix.
        let parent = rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get());
        // SAFETY: the test passes a pointer to an i32 that outlives the child.
        let wanted = unsafe { *arg.cast::<i32>() };
        if parent > 0 {
            wanted
        } else {
            99
        }
    }

    extern "C" fn write_below_the_stack(arg: *mut libc::c_void) -> libc::c_int {
        // SAFETY: test only: a write to the guard page, as an overflow would.
        unsafe { std::ptr::write_volatile(arg.cast::<u8>(), 1) };
        0
    }

    fn wait(pid: rustix::process::Pid) -> rustix::process::WaitStatus {
        rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty()).unwrap().unwrap().1
    }

    #[test]
    fn a_child_sharing_memory_runs_on_its_stack_and_exits_with_its_code() {
        let stack = ChildStack::new().unwrap();
        for code in [0, 7, 255] {
            let arg = code;
            // SAFETY: exit_with only makes a raw system call and reads `arg`,
            // which lives (as `stack` does) until the child is reaped below.
            let (pid, pidfd) =
                unsafe { spawn_sharing_memory("a test", exit_with, (&arg as *const i32).cast(), &stack) }.unwrap();
            assert!(pidfd.is_some(), "CLONE_PIDFD gives a pidfd");
            assert_eq!(wait(pid).exit_status(), Some(code));
        }
        // An overflow hits the guard page and ends the child, not this process.
        let guard = stack.base;
        // SAFETY: the child writes only to the guard page (and dies of it).
        let (pid, _) = unsafe { spawn_sharing_memory("a test", write_below_the_stack, guard, &stack) }.unwrap();
        let status = wait(pid);
        assert_eq!(status.terminating_signal(), Some(libc::SIGSEGV), "{status:?}");
    }
}
