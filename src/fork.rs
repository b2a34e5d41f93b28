//! fork(2) for PID 1's helper processes (a module load, emptying a trash
//! directory), only while the process runs a single thread.
//!
//! A forked child has one thread, the one that called fork; a lock another
//! thread held at that moment (malloc's, stdio's, the logger's) stays locked in
//! the child forever. The init runs no other thread, so its children may
//! allocate and log; [`fork_single_threaded`] checks that this still holds
//! before each fork and refuses otherwise, with an error naming what the fork
//! was for.
//!
//! Pure part: the rule ([`check_threads`]). Thin part: counting the entries of
//! `/proc/self/task` (one per thread), the fork system call and `_exit`.

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
}
