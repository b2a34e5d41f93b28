//! Outcomes and reports: what one load attempt did ([`Attempt`]), the modules
//! that failed or were skipped, the [`LoadReport`] for the console and kmsg, and
//! words for the errno values `finit_module` gives. All pure.

use std::fmt;
use std::time::Duration;

use rustix::io::Errno;

/// What happened to one load attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// finit_module/init_module succeeded.
    Loaded,
    /// The module was loaded already (EEXIST, or /sys/module/NAME/initstate is `live`).
    AlreadyPresent,
    /// Opening or loading failed with this errno.
    Failed(Errno),
    /// The module could not be loaded at all, for the reason given (a
    /// compression neither the kernel nor this init can undo, say).
    Unsupported(String),
}

/// Why a module failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    Errno(Errno),
    Unsupported(String),
}

/// A module that failed to load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub name: String,
    pub path: String,
    pub cause: Cause,
}

impl Failure {
    /// The errno, if the kernel gave one.
    pub fn errno(&self) -> Option<Errno> {
        match self.cause {
            Cause::Errno(e) => Some(e),
            Cause::Unsupported(_) => None,
        }
    }

    /// A hint for the errno, in words.
    pub fn hint(&self) -> Option<&'static str> {
        self.errno().and_then(errno_hint)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (/{}): ", self.name, self.path)?;
        match &self.cause {
            Cause::Errno(e) => f.write_str(&crate::error::errno_text(*e))?,
            Cause::Unsupported(why) => f.write_str(why)?,
        }
        if let Some(hint) = self.hint() {
            write!(f, ": {hint}")?;
        }
        Ok(())
    }
}

/// A module not tried because a module it needs did not load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub name: String,
    /// The hard dependency that failed or was skipped itself.
    pub because_of: String,
}

/// What the loader did, for the console and kmsg.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Modules loaded now, with the time loading took.
    pub loaded: Vec<(String, Duration)>,
    /// Modules that were loaded before we tried.
    pub already_present: Vec<String>,
    pub failed: Vec<Failure>,
    pub skipped: Vec<Skipped>,
    /// Wall time of all load rounds.
    pub total: Duration,
}

impl LoadReport {
    /// True if every module tried is loaded now.
    pub fn all_loaded(&self) -> bool {
        self.failed.is_empty() && self.skipped.is_empty()
    }

    pub(super) fn counts(&self) -> String {
        format!(
            "{} loaded, {} already present, {} failed, {} skipped ({} ms)",
            self.loaded.len(),
            self.already_present.len(),
            self.failed.len(),
            self.skipped.len(),
            self.total.as_millis()
        )
    }

    pub(super) fn details(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for failure in &self.failed {
            write!(f, "\n  failed: {failure}")?;
        }
        for s in &self.skipped {
            write!(f, "\n  skipped: {} (needs {}, which did not load)", s.name, s.because_of)?;
        }
        Ok(())
    }
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "kernel modules: {}", self.counts())?;
        self.details(f)
    }
}

/// Words for the errno values finit_module gives.
pub fn errno_hint(errno: Errno) -> Option<&'static str> {
    Some(match errno {
        Errno::NOEXEC => "built for another kernel? (not a valid module for this kernel)",
        Errno::KEYREJECTED => "module signature rejected (the kernel requires modules signed with a key it trusts)",
        Errno::NOKEY | Errno::NOPKG | Errno::NODATA | Errno::BADMSG => {
            "module signature missing or unusable while the kernel requires signed modules"
        }
        Errno::INVAL => "invalid module (built for another kernel, or a symbol version mismatch: see dmesg)",
        Errno::NOENT => "file missing, or the module needs a symbol no loaded module provides (see dmesg)",
        Errno::NODEV => "no matching hardware or CPU feature (harmless for drivers of absent devices)",
        Errno::PERM => "not permitted (module loading disabled or lockdown)",
        Errno::NOMEM => "out of memory",
        Errno::BUSY => "module busy (being loaded or removed concurrently)",
        Errno::OPNOTSUPP => "the kernel cannot decompress this module's format (see /sys/module/compression)",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_for_common_errnos() {
        assert!(errno_hint(Errno::KEYREJECTED).unwrap().contains("signature rejected"));
        assert!(errno_hint(Errno::NOEXEC).unwrap().contains("another kernel"));
        assert_eq!(errno_hint(Errno::ROFS), None);
        let f =
            Failure { name: "x".into(), path: "x.ko.zst".into(), cause: Cause::Unsupported("zstd-compressed".into()) };
        assert_eq!(f.to_string(), "x (/x.ko.zst): zstd-compressed");
        assert_eq!(f.errno(), None);
    }
}
