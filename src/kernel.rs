//! Stage 9: does the new root have modules for the running kernel? After an
//! update the image may ship a newer kernel than the one on the boot partition:
//! the machine then boots the old kernel into an image whose `/lib/modules` has
//! no directory for it, and after the switch nothing can load a module (no
//! network, GPU or USB drivers). That is said loudly, with both releases, on
//! the console, in kmsg and in boot.json.
//!
//! Pure part: [`assess`]. Thin part: [`image_releases`] (the directories of
//! `/usr/lib/modules` and `/lib/modules` inside the new root) and `uname`.

use std::os::fd::BorrowedFd;

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
    /// The warning to give, if the image cannot load modules for this kernel.
    pub fn warning(&self) -> Option<String> {
        let Modules::OtherReleases(image) = &self.modules else { return None };
        Some(format!(
            "WARNING: the running kernel is {} but the image has modules only for {}: after the switch no module \
             can be loaded (network, GPU, USB drivers); boot the image's kernel: copy it and a dockroot initramfs \
             built for it to the boot partition",
            self.running,
            image.join(", ")
        ))
    }

    /// For boot.json.
    pub fn to_json(&self) -> serde_json::Value {
        let (matches, image) = match &self.modules {
            Modules::Match => (serde_json::json!(true), serde_json::json!([self.running])),
            Modules::NoneShipped => (serde_json::Value::Null, serde_json::json!([])),
            Modules::OtherReleases(r) => (serde_json::json!(false), serde_json::json!(r)),
        };
        serde_json::json!({ "running": self.running, "image_modules": image, "modules_match": matches })
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
        let w = k.warning().unwrap();
        assert!(w.starts_with("WARNING: the running kernel is 6.1.0-57-amd64 but the image has modules only for 6.12.1, 6.12.57+deb13-amd64"), "{w}");
        assert_eq!(k.to_json()["modules_match"], false);
        assert_eq!(assess("6.1.0", None).warning(), None);
        assert_eq!(assess("6.1.0", None).to_json()["modules_match"], serde_json::Value::Null);
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
