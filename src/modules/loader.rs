//! The kernel side: [`KernelLoader`] loads one module (`finit_module`, or
//! `init_module` on a module this init decompressed), [`ForkExecutor`] runs
//! several loads at once, each in a child process that shares PID 1's memory
//! and only makes the two system calls ([`crate::fork::spawn_sharing_memory`]).
//! Thin: system calls; the decision
//! of what to call for a module ([`KernelLoader`]'s `prepare`) and the mapping
//! of results to attempts are the pure parts.

use std::collections::{BTreeMap, VecDeque};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::io::Errno;

#[cfg(feature = "decompress-modules")]
use super::{decompress, DECOMPRESSED_MAX_BYTES};
use super::{module_compression, Attempt, Executor, IndexEntry, Loader};
use crate::fork::ChildStack;

/// `finit_module` flag: the file is compressed, the kernel decompresses it.
pub const MODULE_INIT_COMPRESSED_FILE: i32 = 4;

/// `/sys/module/NAME`, where the kernel lists a module once it is "coming".
fn sys_module(name: &str) -> String {
    format!("/sys/module/{name}")
}

/// Is the module already loaded and initialised? (`/sys/module/NAME/initstate` says `live`.)
fn is_live(name: &str) -> bool {
    let Ok(file) = std::fs::File::open(sys_module(name) + "/initstate") else { return false };
    let mut state = String::new();
    if file.take(64).read_to_string(&mut state).is_err() {
        return false;
    }
    state.trim() == "live"
}

/// Loads modules into the running kernel from the initramfs rooted at `root`.
#[derive(Debug, Clone)]
pub struct KernelLoader {
    root: PathBuf,
    /// What `/sys/module/compression` says the kernel decompresses itself, if anything.
    pub(super) kernel_compression: Option<String>,
}

/// What to do for one module, decided before any process is forked.
enum Prepared {
    /// Nothing to run: the outcome is known.
    Done(Attempt),
    /// `finit_module` on this file with these flags.
    Finit(std::ffi::CString, i32),
}

impl KernelLoader {
    /// A loader for files under `root`; reads `/sys/module/compression` once.
    pub fn new(root: &Path) -> KernelLoader {
        let kernel_compression = std::fs::File::open("/sys/module/compression").ok().and_then(|f| {
            let mut s = String::new();
            f.take(64).read_to_string(&mut s).ok()?;
            Some(s.trim().to_owned()).filter(|s| !s.is_empty())
        });
        KernelLoader { root: root.to_owned(), kernel_compression }
    }

    fn prepare(&self, entry: &IndexEntry) -> Prepared {
        if is_live(&entry.name) {
            return Prepared::Done(Attempt::AlreadyPresent);
        }
        let path = self.root.join(&entry.path);
        let flags = match module_compression(&entry.path) {
            None => 0,
            Some(kind) if self.kernel_compression.as_deref() == Some(kind) => MODULE_INIT_COMPRESSED_FILE,
            Some(kind) => return Prepared::Done(self.load_compressed_here(&path, kind)),
        };
        match std::ffi::CString::new(path.into_os_string().into_encoded_bytes()) {
            Ok(c) => Prepared::Finit(c, flags),
            Err(_) => Prepared::Done(Attempt::Unsupported("the path contains a NUL byte".into())),
        }
    }

    /// open + finit_module + close as raw system calls, nothing else: no
    /// allocation, no lock, no `errno` (rustix's calls return it), so it may
    /// run in a child sharing PID 1's memory. `Ok` or the errno.
    fn finit(path: &std::ffi::CStr, flags: i32) -> std::result::Result<(), Errno> {
        use rustix::fs::{Mode, OFlags};
        use std::os::fd::IntoRawFd;
        let fd = rustix::fs::open(path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?;
        let loaded = rustix::system::finit_module(&fd, c"", flags);
        // SAFETY: the descriptor opened just above, closed once, by the raw
        // system call (std's close would go through libc, which may set errno).
        unsafe { rustix::io::close(fd.into_raw_fd()) };
        loaded
    }

    /// [`finit`](Self::finit) as a child's whole life: the exit code is 0 or the errno.
    extern "C" fn finit_in_child(job: *mut libc::c_void) -> libc::c_int {
        // SAFETY: `ForkExecutor::start` passes a `FinitJob` it keeps, unchanged,
        // until it has reaped this child.
        let job = unsafe { &*job.cast::<FinitJob>() };
        match Self::finit(&job.path, job.flags) {
            Ok(()) => 0,
            Err(e) => e.raw_os_error().clamp(1, 255),
        }
    }

    fn attempt_of(result: std::result::Result<(), Errno>) -> Attempt {
        match result {
            Ok(()) => Attempt::Loaded,
            Err(Errno::EXIST) => Attempt::AlreadyPresent,
            Err(e) => Attempt::Failed(e),
        }
    }

    fn cannot(&self, kind: &str) -> String {
        let kernel = match &self.kernel_compression {
            Some(k) => format!("the kernel decompresses only {k} modules"),
            None => "the kernel does not decompress modules (no /sys/module/compression)".to_owned(),
        };
        format!("{kind}-compressed, {kernel}")
    }

    #[cfg(not(feature = "decompress-modules"))]
    fn load_compressed_here(&self, _path: &Path, kind: &str) -> Attempt {
        Attempt::Unsupported(format!(
            "{} and this init was built without the decompress-modules feature: rebuild the initramfs \
             without --keep-compressed (the builder then stores modules decompressed), or with an init \
             built with --features decompress-modules",
            self.cannot(kind)
        ))
    }

    #[cfg(feature = "decompress-modules")]
    fn load_compressed_here(&self, path: &Path, kind: &str) -> Attempt {
        let mut data = Vec::new();
        let read = std::fs::File::open(path)
            .and_then(|f| f.take(DECOMPRESSED_MAX_BYTES.saturating_add(1)).read_to_end(&mut data));
        if let Err(e) = read {
            return Attempt::Failed(e.raw_os_error().map(Errno::from_raw_os_error).unwrap_or(Errno::IO));
        }
        let plain = match decompress(kind, &data) {
            Ok(p) => p,
            Err(e) => return Attempt::Unsupported(format!("{}; decompressing it here failed: {e}", self.cannot(kind))),
        };
        drop(data);
        Self::attempt_of(rustix::system::init_module(&plain, c""))
    }
}

impl Loader for KernelLoader {
    fn load(&self, entry: &IndexEntry) -> Attempt {
        match self.prepare(entry) {
            Prepared::Done(attempt) => attempt,
            Prepared::Finit(path, flags) => Self::attempt_of(Self::finit(&path, flags)),
        }
    }
}

/// Loads modules in parallel in child processes: each child runs one
/// `finit_module` and exits with 0 or the errno. (A process per module costs a
/// few KiB of init; std threads would cost 66 KiB of static glibc.) The child
/// shares PID 1's memory ([`crate::fork::spawn_sharing_memory`]): no copy of
/// PID 1 is made. If it cannot be started, the module is loaded in the calling
/// process. Only its own children are reaped (by pid, told apart with pidfds).
pub struct ForkExecutor {
    loader: KernelLoader,
    /// Load what the caller waits for in the calling process ([`ForkExecutor::one_cpu`]);
    /// no load starts before its dependencies finished ([`Executor::visible`]).
    in_place: bool,
    running: BTreeMap<i32, Child>,
    ready: VecDeque<(usize, Attempt, Duration)>,
    /// How many loads ran in a child process (the tests check it).
    spawned: usize,
}

struct Child {
    position: usize,
    started: Instant,
    /// Readable once the child exits (None if the kernel gave none: then it is waited for in turn).
    pidfd: Option<std::os::fd::OwnedFd>,
    /// What the child reads and the stack it runs on: kept until it is reaped.
    job: Box<FinitJob>,
    stack: ChildStack,
}

/// What a loader child reads: the module's file and the `finit_module` flags.
struct FinitJob {
    path: std::ffi::CString,
    flags: i32,
}

impl ForkExecutor {
    pub fn new(loader: KernelLoader) -> Self {
        ForkExecutor { loader, in_place: false, running: BTreeMap::new(), ready: VecDeque::new(), spawned: 0 }
    }

    /// An executor for one CPU: what the caller waits for now is loaded in
    /// the calling process (a child would only add the cost of a fork);
    /// what loads in the background still gets a child, so a driver that
    /// sleeps in its probe does not hold the boot.
    pub fn one_cpu(loader: KernelLoader) -> Self {
        let mut executor = ForkExecutor::new(loader);
        executor.in_place = true;
        executor
    }

    /// The pid of a child that has exited, waiting until one has (`block`:
    /// `None` for as long as it takes), or `None` if none has by then.
    fn next_exited(&self, wait: Option<Duration>) -> Option<i32> {
        use rustix::event::{PollFd, PollFlags, Timespec};
        if self.running.is_empty() {
            return None;
        }
        let block = wait.is_none();
        let Some(fds) = self.running.values().map(|c| c.pidfd.as_ref()).collect::<Option<Vec<_>>>() else {
            // Some child has no pidfd: wait for the oldest child without one (in
            // turn, when not blocking: it is reaped by a later blocking wait).
            if let Some(d) = wait {
                std::thread::sleep(d);
            }
            return self.running.iter().find(|(_, c)| c.pidfd.is_none()).map(|(pid, _)| *pid).filter(|_| block);
        };
        let mut polls: Vec<PollFd<'_>> = fds.iter().map(|fd| PollFd::new(*fd, PollFlags::IN)).collect();
        let limit =
            wait.map(|d| Timespec { tv_sec: d.as_secs().try_into().unwrap_or(0), tv_nsec: d.subsec_nanos().into() });
        loop {
            match rustix::event::poll(&mut polls, limit.as_ref()) {
                Ok(_) => break,
                Err(Errno::INTR) => continue,
                // Cannot poll: wait for the oldest child.
                Err(_) => return self.running.keys().next().copied().filter(|_| block),
            }
        }
        let ready = polls.iter().position(|p| !p.revents().is_empty());
        match ready {
            Some(k) => self.running.keys().nth(k).copied(),
            None => self.running.keys().next().copied().filter(|_| block),
        }
    }

    /// Wait for child `pid` and turn its exit status into an attempt.
    fn reap(&mut self, pid: i32) -> Option<(usize, Attempt, Duration)> {
        let child = self.running.remove(&pid)?;
        let status = loop {
            let Some(p) = rustix::process::Pid::from_raw(pid) else { break Err(Errno::CHILD) };
            match rustix::process::waitpid(Some(p), rustix::process::WaitOptions::empty()) {
                Ok(Some((_, status))) => break Ok(status),
                Ok(None) => break Err(Errno::CHILD),
                Err(Errno::INTR) => continue,
                Err(e) => break Err(e),
            }
        };
        let attempt = match status {
            Ok(status) => match (status.exit_status(), status.terminating_signal()) {
                (Some(0), _) => Attempt::Loaded,
                (Some(code), _) => KernelLoader::attempt_of(Err(Errno::from_raw_os_error(code))),
                (None, Some(sig)) => Attempt::Unsupported(format!("the loader process died of signal {sig}")),
                (None, None) => Attempt::Unsupported(format!("the loader process ended oddly ({status:?})")),
            },
            Err(e) => Attempt::Unsupported(format!("lost its loader process ({})", crate::error::errno_text(e))),
        };
        Some((child.position, attempt, child.started.elapsed()))
    }
}

/// Children still running when the executor goes (a failed boot) still read
/// their job and run on their stack: both are left mapped, never freed.
impl Drop for ForkExecutor {
    fn drop(&mut self) {
        for child in std::mem::take(&mut self.running).into_values() {
            std::mem::forget(child.job);
            std::mem::forget(child.stack);
        }
    }
}

impl Executor for ForkExecutor {
    fn start(&mut self, i: usize, entry: &IndexEntry, awaited: bool) {
        let t = Instant::now();
        let (path, flags) = match self.loader.prepare(entry) {
            Prepared::Done(attempt) => return self.ready.push_back((i, attempt, t.elapsed())),
            Prepared::Finit(path, flags) => (path, flags),
        };
        let job = Box::new(FinitJob { path, flags });
        let in_child = if awaited && self.in_place {
            None
        } else {
            match ChildStack::new() {
                Some(stack) => {
                    let arg: *const FinitJob = &*job;
                    // SAFETY: `finit_in_child` makes only raw system calls on
                    // the job, which is read-only from here on and kept, with
                    // the stack, in `running` until the child is reaped.
                    let started = unsafe {
                        crate::fork::spawn_sharing_memory(
                            "a module loader",
                            KernelLoader::finit_in_child,
                            arg.cast(),
                            &stack,
                        )
                    };
                    Some(started.map(|(pid, pidfd)| (pid, pidfd, stack)))
                }
                None => Some(Err(crate::error::Error::msg("cannot map a stack for a module loader"))),
            }
        };
        let (child, pidfd, stack) = match in_child {
            Some(Ok(started)) => started,
            refused => {
                if let Some(Err(e)) = refused {
                    log::debug!("{e}; loading module {} in PID 1", entry.name);
                }
                let attempt = KernelLoader::attempt_of(KernelLoader::finit(&job.path, job.flags));
                return self.ready.push_back((i, attempt, t.elapsed()));
            }
        };
        self.spawned = self.spawned.saturating_add(1);
        self.running.insert(child.as_raw_pid(), Child { position: i, started: t, pidfd, job, stack });
    }

    fn wait(&mut self) -> Option<(usize, Attempt, Duration)> {
        if let Some(done) = self.ready.pop_front() {
            return Some(done);
        }
        let pid = self.next_exited(None)?;
        self.reap(pid)
    }

    fn poll(&mut self) -> Option<(usize, Attempt, Duration)> {
        self.poll_for(Duration::ZERO)
    }

    fn poll_for(&mut self, limit: Duration) -> Option<(usize, Attempt, Duration)> {
        if let Some(done) = self.ready.pop_front() {
            return Some(done);
        }
        let pid = self.next_exited(Some(limit))?;
        self.reap(pid)
    }

    /// Not on one CPU: there a waiting load would only take turns with the
    /// running one.
    fn overlaps(&self) -> bool {
        !self.in_place
    }

    /// `/sys/module/NAME` appears once the kernel made the module's symbols
    /// resolvable (state "coming", before its init runs); a load needing
    /// them then waits in the kernel until that init is done.
    fn visible(&self, entry: &IndexEntry) -> bool {
        std::fs::symlink_metadata(sys_module(&entry.name)).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modules::fixtures::*;
    use crate::modules::*;

    /// Run `body` in a forked child of this test process: the child has one
    /// thread, as PID 1 has, so `fork_single_threaded` forks there. True if
    /// `body` returned; a panic's message goes to stderr.
    fn in_single_threaded_child(body: impl FnOnce()) -> bool {
        use std::io::Write;
        // SAFETY: test only. The child runs `body` (allocation, which glibc's
        // fork keeps usable in the child, and system calls) and ends with
        // _exit, never returning into the test harness.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let code = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
                Ok(()) => 0,
                Err(payload) => {
                    let msg = payload
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()));
                    let _ = writeln!(std::io::stderr(), "in the forked child: {}", msg.unwrap_or_default());
                    1
                }
            };
            crate::fork::exit_child(code);
        }
        let pid = rustix::process::Pid::from_raw(pid).unwrap();
        let (_, status) = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty()).unwrap().unwrap();
        status.exit_status() == Some(0)
    }

    /// The executor carries each child's finit_module errno back: load files
    /// that are not modules, several at once, and compare with a direct call.
    /// Each load runs in a child sharing the process's memory, in a
    /// single-threaded process (as PID 1) and in this multi-threaded test
    /// process alike (no lock is taken in the child); one that loads in place
    /// (one CPU) loads what is awaited in the process itself.
    #[test]
    fn fork_executor_reports_what_the_kernel_said() {
        let dir = std::env::temp_dir().join(format!("dockroot-fork-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("junk.ko"), b"not an ELF module").unwrap();
        let direct = KernelLoader::attempt_of(KernelLoader::finit(
            &std::ffi::CString::new(dir.join("junk.ko").into_os_string().into_encoded_bytes()).unwrap(),
            0,
        ));
        assert!(matches!(direct, Attempt::Failed(_)), "{direct:?}");
        let modules: Vec<IndexEntry> = (0..6)
            .map(|i| IndexEntry {
                path: if i == 5 { "missing.ko".into() } else { "junk.ko".into() },
                ..always(&format!("dockroot_test_junk{i}"), &[], &[])
            })
            .collect();
        let index = ModuleIndex { kernel: "6.1.0".into(), modules, aliases: vec![] };
        let load = || {
            let mut auto = Autoloader::with_executor(index.clone(), ForkExecutor::new(KernelLoader::new(&dir)), 4);
            assert_eq!(auto.load_everything(), 6);
            let report = auto.report();
            assert_eq!(report.failed.len(), 6, "{report}");
            for f in &report.failed[..5] {
                assert_eq!(Attempt::Failed(f.errno().unwrap()), direct, "{f}");
            }
            assert_eq!(report.failed[5].errno(), Some(Errno::NOENT));
            assert!(auto.exec.running.is_empty(), "every child reaped");
            assert_eq!(auto.exec.spawned, 6, "every load in a child");
        };
        assert!(in_single_threaded_child(|| {
            assert_eq!(crate::fork::thread_count(), 1);
            load();
        }));
        load();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn finit_results_map_to_attempts() {
        assert_eq!(KernelLoader::attempt_of(Ok(())), Attempt::Loaded);
        assert_eq!(KernelLoader::attempt_of(Err(Errno::EXIST)), Attempt::AlreadyPresent);
        for e in [Errno::NOEXEC, Errno::NOENT, Errno::OPNOTSUPP, Errno::KEYREJECTED, Errno::PERM, Errno::INVAL] {
            assert_eq!(KernelLoader::attempt_of(Err(e)), Attempt::Failed(e), "{e:?}");
        }
    }
}
