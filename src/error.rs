//! One error type for the whole init: a message that says what was being done
//! (which device, which path, which image) and, where there is one, the cause.
//!
//! PID 1 must never panic, so every fallible step returns `Result<T>` and the
//! boot driver turns the final error into a console + kmsg message.

use std::fmt;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error with context. `what` says what failed, in words a user can act on;
/// `cause` is the underlying error, if any (an errno, a JSON error, ...).
#[derive(Debug)]
pub struct Error {
    what: String,
    cause: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl Error {
    /// An error with no underlying cause.
    pub fn msg(what: impl Into<String>) -> Self {
        Error { what: what.into(), cause: None }
    }

    /// An error caused by `cause`.
    pub fn with(what: impl Into<String>, cause: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Self {
        Error { what: what.into(), cause: Some(cause.into()) }
    }

    /// What failed, without the cause.
    pub fn what(&self) -> &str {
        &self.what
    }

    /// The errno behind this error, if the cause is a system call failure.
    pub fn errno(&self) -> Option<rustix::io::Errno> {
        let cause = self.cause.as_deref()?;
        if let Some(e) = cause.downcast_ref::<rustix::io::Errno>() {
            return Some(*e);
        }
        if let Some(e) = cause.downcast_ref::<std::io::Error>() {
            return e.raw_os_error().map(rustix::io::Errno::from_raw_os_error);
        }
        cause.downcast_ref::<Error>().and_then(Error::errno)
    }

    /// Wrap this error in more context: "`what`: <this error>".
    pub fn context(self, what: impl Into<String>) -> Self {
        Error { what: what.into(), cause: Some(Box::new(self)) }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.what)?;
        match self.cause.as_deref() {
            None => Ok(()),
            Some(cause) => match cause.downcast_ref::<rustix::io::Errno>() {
                Some(errno) => write!(f, ": {}", errno_text(*errno)),
                None => write!(f, ": {cause}"),
            },
        }
    }
}

impl std::error::Error for Error {}

/// An errno in words, once: "No such device (os error 19)" (rustix's own
/// Display repeats the number).
pub fn errno_text(errno: rustix::io::Errno) -> String {
    std::io::Error::from_raw_os_error(errno.raw_os_error()).to_string()
}

/// Add context to any error: `file.read().context(|| format!("reading {path}"))?`.
pub trait Context<T> {
    fn context<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T>;
}

impl<T, E> Context<T> for std::result::Result<T, E>
where
    E: Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
{
    fn context<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T> {
        self.map_err(|e| Error::with(what(), e))
    }
}

impl<T> Context<T> for Option<T> {
    fn context<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T> {
        self.ok_or_else(|| Error::msg(what()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_chains_context_and_cause() {
        let r: std::result::Result<(), rustix::io::Errno> = Err(rustix::io::Errno::NOENT);
        let e = r.context(|| "opening /dev/vda").unwrap_err().context("probing root device");
        let s = e.to_string();
        assert_eq!(s, "probing root device: opening /dev/vda: No such file or directory (os error 2)");
        assert_eq!(e.errno(), Some(rustix::io::Errno::NOENT));
    }

    #[test]
    fn option_context_gives_message() {
        let e = None::<u8>.context(|| "no image named x").unwrap_err();
        assert_eq!(e.to_string(), "no image named x");
        assert_eq!(e.errno(), None);
    }
}
