//! Stage 9: does the new root have modules for the running kernel? After an
//! update the image may ship a newer kernel than the one on the boot partition:
//! the machine then boots the old kernel into an image whose `/lib/modules` has
//! no directory for it, and after the switch nothing can load a module (no
//! network, GPU or USB drivers). That is said loudly, with both releases, on
//! the console, in kmsg and in boot.json.
//!
//! When the image carries its own kernel and a dockroot initramfs for it, the
//! init boots that kernel at once instead ([`try_kexec`]): `kexec_file_load`
//! with the same command line plus `dockroot.kexec_from=RELEASE`, then
//! `reboot(LINUX_REBOOT_CMD_KEXEC)`, so the first boot after an update already
//! runs the image's kernel. A command line with that marker never kexecs again
//! (at most one kexec per power-on); `dockroot.kexec=off` turns it off.
//!
//! Pure part: [`assess`], [`plan_kexec`], [`kexec_cmdline`]. Thin part:
//! [`image_releases`] (the directories of `/usr/lib/modules` and `/lib/modules`
//! inside the new root), `uname`, finding the files, the system calls.

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::OnceLock;

use rustix::fs::{Mode, OFlags, ResolveFlags};

/// The most module directories listed.
const MAX_RELEASES: usize = 64;

/// What the new root has for the running kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Modules {
    /// `/lib/modules/RELEASE` is there.
    Match,
    /// The image ships no kernel modules at all: nothing to compare.
    NoneShipped,
    /// It has modules for these releases only.
    OtherReleases(Vec<String>),
}

/// The running kernel and what the new root has for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelCheck {
    pub running: String,
    pub modules: Modules,
}

/// Compare the running release with the module directories of the image
/// (`None`: it has no modules directory).
pub fn assess(running: &str, image: Option<Vec<String>>) -> KernelCheck {
    let modules = match image {
        None => Modules::NoneShipped,
        Some(r) if r.iter().any(|r| r == running) => Modules::Match,
        Some(r) if r.is_empty() => Modules::NoneShipped,
        Some(mut r) => {
            r.sort();
            Modules::OtherReleases(r)
        }
    };
    KernelCheck { running: running.to_string(), modules }
}

impl KernelCheck {
    /// The warning to give, if the image cannot load modules for this kernel;
    /// `no_kexec`: why its own kernel was not booted instead.
    pub fn warning(&self, no_kexec: Option<&str>) -> Option<String> {
        let Modules::OtherReleases(image) = &self.modules else { return None };
        let why = no_kexec.map(|w| format!(" (not booted by kexec: {w})")).unwrap_or_default();
        Some(format!(
            "WARNING: the running kernel is {} but the image has modules only for {}: after the switch no module \
             can be loaded (network, GPU, USB drivers); boot the image's kernel{why}: copy it and a dockroot \
             initramfs built for it to the boot partition",
            self.running,
            image.join(", ")
        ))
    }

    /// For boot.json: with the release a kexec came from, and why none was done.
    pub fn to_json(&self, kexec_from: Option<&str>, no_kexec: Option<&str>) -> serde_json::Value {
        let (matches, image) = match &self.modules {
            Modules::Match => (serde_json::json!(true), serde_json::json!([self.running])),
            Modules::NoneShipped => (serde_json::Value::Null, serde_json::json!([])),
            Modules::OtherReleases(r) => (serde_json::json!(false), serde_json::json!(r)),
        };
        serde_json::json!({
            "running": self.running, "image_modules": image, "modules_match": matches,
            "kexec_from": kexec_from, "no_kexec": no_kexec,
        })
    }
}

/// Why this boot did not kexec into the image's kernel, when it had reason to
/// (set by [`try_kexec`], read for the warning and boot.json).
static NO_KEXEC: OnceLock<String> = OnceLock::new();

/// What to do about the image's kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KexecPlan {
    /// Nothing to do: the modules match, or the image ships none.
    Nothing,
    /// Boot this release of the image: look for its files ([`kernel_paths`], [`initrd_paths`]).
    Try(String),
    /// It would, but may not: why.
    Refrain(String),
}

/// Whether to kexec into the image's kernel: only when the image has modules for
/// other releases only, kexec is on and this power-on has not kexeced yet. The
/// release tried is the newest-sorting one the image has modules for.
pub fn plan_kexec(check: &KernelCheck, kexec: bool, kexec_from: Option<&str>) -> KexecPlan {
    let Modules::OtherReleases(image) = &check.modules else { return KexecPlan::Nothing };
    let Some(release) = image.last() else { return KexecPlan::Nothing };
    match (kexec, kexec_from) {
        (false, _) => KexecPlan::Refrain("dockroot.kexec=off".into()),
        (true, Some(from)) => KexecPlan::Refrain(format!(
            "this boot already came from kernel {from} by kexec (dockroot.kexec_from=): at most one kexec per power-on"
        )),
        (true, None) => KexecPlan::Try(release.clone()),
    }
}

/// Where an image keeps the kernel of `release`, first found wins.
pub fn kernel_paths(release: &str) -> [String; 3] {
    [
        format!("boot/vmlinuz-{release}"),
        format!("usr/lib/modules/{release}/vmlinuz"),
        format!("lib/modules/{release}/vmlinuz"),
    ]
}

/// Where an image keeps a dockroot initramfs for `release`, first found wins:
/// `/boot/initramfs-dockroot-RELEASE.img`, Debian's `/boot/initrd.img-RELEASE`
/// (which dockroot's kernel hook writes), and, when the image has modules for
/// this release only (`only`), the README's `/boot/initramfs-dockroot.img`.
pub fn initrd_paths(release: &str, only: bool) -> Vec<String> {
    let mut v = vec![format!("boot/initramfs-dockroot-{release}.img"), format!("boot/initrd.img-{release}")];
    if only {
        v.push("boot/initramfs-dockroot.img".into());
    }
    v
}

/// The command line for the image's kernel: this one, with `dockroot.kexec_from=`
/// the running release, and `dockroot.image=` the image when this boot's choice
/// would otherwise be lost (a one-shot choice, removed from its file already).
pub fn kexec_cmdline(cmdline: &str, running: &str, carry_image: Option<&str>) -> String {
    let mut c = cmdline.trim_end().to_string();
    if let Some(image) = carry_image {
        c.push_str(&format!(" dockroot.image={image}"));
    }
    c.push_str(&format!(" dockroot.kexec_from={running}"));
    c
}

/// Boot the image's own kernel when [`plan_kexec`] says so and the files are
/// there: this returns only when it does not (the reason is kept for the
/// warning, [`no_kexec_reason`]). `new_root` is the finished root.
pub fn try_kexec(
    new_root: BorrowedFd<'_>,
    cmdline: &str,
    kexec: bool,
    kexec_from: Option<&str>,
    carry_image: Option<&str>,
) {
    let check = assess(&running_release(), image_releases(new_root));
    let release = match plan_kexec(&check, kexec, kexec_from) {
        KexecPlan::Nothing => return,
        KexecPlan::Refrain(why) => {
            let _ = NO_KEXEC.set(why);
            return;
        }
        KexecPlan::Try(r) => r,
    };
    let only = matches!(&check.modules, Modules::OtherReleases(r) if r.len() == 1);
    let find = |paths: &[String]| paths.iter().find_map(|p| open_file(new_root, p).map(|fd| (p.clone(), fd)));
    let (Some((kpath, kernel)), Some((ipath, initrd))) =
        (find(&kernel_paths(&release)), find(&initrd_paths(&release, only)))
    else {
        let _ = NO_KEXEC.set(format!(
            "the image has no kernel and dockroot initramfs for {release} (looked for /{} and /{})",
            kernel_paths(&release).join(", /"),
            initrd_paths(&release, only).join(", /")
        ));
        return;
    };
    let line = kexec_cmdline(cmdline, &check.running, carry_image);
    log::warn!(
        "the image's kernel is {release}, not the running {}: booting /{kpath} with /{ipath} by kexec",
        check.running
    );
    if let Err(e) = load(kernel.as_fd(), initrd.as_fd(), &line) {
        let _ = NO_KEXEC.set(format!("the kernel refused to load /{kpath} for kexec ({e}; locked down?)"));
        return;
    }
    rustix::fs::sync();
    if let Err(e) = rustix::system::reboot(rustix::system::RebootCommand::Kexec) {
        let _ = NO_KEXEC.set(format!("the kexec reboot failed ({e})"));
    }
}

/// Why this boot did not kexec into the image's kernel, if it had reason to.
pub fn no_kexec_reason() -> Option<&'static str> {
    NO_KEXEC.get().map(String::as_str)
}

/// A regular file inside the root, resolved inside it.
fn open_file(root: BorrowedFd<'_>, path: &str) -> Option<std::os::fd::OwnedFd> {
    let how = OFlags::RDONLY | OFlags::CLOEXEC;
    let fd = rustix::fs::openat2(root, path, how, Mode::empty(), ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS)
        .ok()?;
    let st = rustix::fs::fstat(&fd).ok()?;
    (rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::RegularFile).then_some(fd)
}

/// `kexec_file_load(kernel, initrd, cmdline)`.
fn load(kernel: BorrowedFd<'_>, initrd: BorrowedFd<'_>, cmdline: &str) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let line = std::ffi::CString::new(cmdline).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let len = line.as_bytes_with_nul().len();
    // SAFETY: kexec_file_load(2) reads the two descriptors (open for the call's
    // duration) and `len` bytes at `line`, a NUL-terminated buffer that lives
    // until the call returns; flags 0. It writes no memory of this process.
    let r = unsafe {
        libc::syscall(libc::SYS_kexec_file_load, kernel.as_raw_fd(), initrd.as_raw_fd(), len, line.as_ptr(), 0u64)
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The running kernel's release (`uname -r`).
pub fn running_release() -> String {
    rustix::system::uname().release().to_string_lossy().into_owned()
}

/// The release directories under `/usr/lib/modules` and `/lib/modules` of the
/// new root (symlinks resolved inside it); `None` when it has neither.
pub fn image_releases(new_root: BorrowedFd<'_>) -> Option<Vec<String>> {
    let mut found: Option<Vec<String>> = None;
    for dir in ["usr/lib/modules", "lib/modules"] {
        let how = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let resolve = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS;
        let Ok(fd) = rustix::fs::openat2(new_root, dir, how, Mode::empty(), resolve) else { continue };
        let names = found.get_or_insert_with(Vec::new);
        let Ok(mut entries) = rustix::fs::Dir::read_from(&fd) else { continue };
        while let Some(Ok(e)) = entries.read() {
            if names.len() >= MAX_RELEASES {
                break;
            }
            let Ok(name) = e.file_name().to_str() else { continue };
            if !matches!(name, "." | "..")
                && e.file_type() == rustix::fs::FileType::Directory
                && !names.iter().any(|n| n == name)
            {
                names.push(name.to_string());
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn says_when_the_image_has_no_modules_for_this_kernel() {
        let r = |v: &[&str]| Some(v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(assess("6.1.0-57-amd64", r(&["6.1.0-57-amd64", "6.12.0"])).modules, Modules::Match);
        assert_eq!(assess("6.1.0", None).modules, Modules::NoneShipped);
        assert_eq!(assess("6.1.0", r(&[])).modules, Modules::NoneShipped);
        let k = assess("6.1.0-57-amd64", r(&["6.12.57+deb13-amd64", "6.12.1"]));
        assert_eq!(k.modules, Modules::OtherReleases(vec!["6.12.1".into(), "6.12.57+deb13-amd64".into()]));
        let w = k.warning(None).unwrap();
        assert!(w.starts_with("WARNING: the running kernel is 6.1.0-57-amd64 but the image has modules only for 6.12.1, 6.12.57+deb13-amd64"), "{w}");
        assert_eq!(k.to_json(None, None)["modules_match"], false);
        assert!(k.warning(Some("dockroot.kexec=off")).unwrap().contains("(not booted by kexec: dockroot.kexec=off)"));
        assert_eq!(assess("6.1.0", None).warning(None), None);
        assert_eq!(assess("6.1.0", None).to_json(None, None)["modules_match"], serde_json::Value::Null);
    }

    #[test]
    fn kexecs_at_most_once_and_only_when_asked() {
        let other = assess("6.1.0", Some(vec!["6.12.2".into(), "6.12.10".into()]));
        assert_eq!(plan_kexec(&other, true, None), KexecPlan::Try("6.12.2".into()), "the last in sort order");
        assert_eq!(plan_kexec(&other, false, None), KexecPlan::Refrain("dockroot.kexec=off".into()));
        let KexecPlan::Refrain(why) = plan_kexec(&other, true, Some("6.1.0")) else { panic!() };
        assert!(why.contains("at most one kexec per power-on"), "{why}");
        assert_eq!(plan_kexec(&assess("6.1.0", Some(vec!["6.1.0".into()])), true, None), KexecPlan::Nothing);
        assert_eq!(plan_kexec(&assess("6.1.0", None), true, None), KexecPlan::Nothing);
        assert_eq!(kexec_cmdline("root=/dev/vda ro\n", "6.1.0", None), "root=/dev/vda ro dockroot.kexec_from=6.1.0");
        assert_eq!(
            kexec_cmdline("root=/dev/vda", "6.1.0", Some("example/os:2")),
            "root=/dev/vda dockroot.image=example/os:2 dockroot.kexec_from=6.1.0"
        );
        assert_eq!(kernel_paths("R")[0], "boot/vmlinuz-R");
        assert_eq!(initrd_paths("R", false), ["boot/initramfs-dockroot-R.img", "boot/initrd.img-R"]);
        assert_eq!(initrd_paths("R", true).last().map(String::as_str), Some("boot/initramfs-dockroot.img"));
    }

    #[test]
    fn lists_the_module_directories_inside_the_root() {
        let d = std::env::temp_dir().join(format!("dockroot-kernel-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("usr/lib/modules/6.12.1")).unwrap();
        std::fs::create_dir_all(d.join("lib")).unwrap();
        std::os::unix::fs::symlink("/usr/lib/modules", d.join("lib/modules")).unwrap();
        std::fs::write(d.join("usr/lib/modules/not-a-dir"), b"").unwrap();
        let fd = rustix::fs::open(&d, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
        assert_eq!(image_releases(std::os::fd::AsFd::as_fd(&fd)), Some(vec!["6.12.1".to_string()]));
        std::fs::remove_dir_all(d.join("usr")).unwrap();
        std::fs::remove_file(d.join("lib/modules")).unwrap();
        assert_eq!(image_releases(std::os::fd::AsFd::as_fd(&fd)), None);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
