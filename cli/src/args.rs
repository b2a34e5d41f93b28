//! What every command's arguments share: `-h`/`--help`, the partition options
//! ([`partition::take_option`]), usage errors (exit 2) and the end of a command
//! that says what it did (exit 0) or why it could not (exit 1).

use std::ffi::OsString;

use crate::partition::{self, Where};

/// A command's own argument, given to its parser.
pub enum Own {
    Long(String),
    Short(char),
    Value(OsString),
}

impl Own {
    /// The usage error for an argument the command does not take.
    pub fn unexpected(&self) -> String {
        match self {
            Own::Long(n) => format!("invalid option '--{n}'"),
            Own::Short(c) => format!("invalid option '-{c}'"),
            Own::Value(v) => format!("unexpected argument {v:?}"),
        }
    }
}

/// Parse `args`: `--help`, the partition options (into `at` and `cmdline`),
/// and every other argument through `own`, which takes its value from the
/// parser when it has one. `Ok(false)` when `--help` was asked for.
pub fn parse(
    args: Vec<OsString>,
    at: &mut Where,
    cmdline: &mut Option<String>,
    mut own: impl FnMut(Own, &mut lexopt::Parser) -> Result<(), String>,
) -> Result<bool, String> {
    use lexopt::Arg::{Long, Short, Value};
    let mut p = lexopt::Parser::from_args(args);
    while let Some(arg) = p.next().map_err(|e| e.to_string())? {
        let arg = match arg {
            Short('h') | Long("help") => return Ok(false),
            Long(name) => Own::Long(name.to_owned()),
            Short(c) => Own::Short(c),
            Value(v) => Own::Value(v),
        };
        match arg {
            Own::Long(name) if partition::OPTIONS.contains(&name.as_str()) => {
                partition::take_option(&name, &mut p, at, cmdline)?
            }
            arg => own(arg, &mut p)?,
        }
    }
    Ok(true)
}

/// A command's parsed arguments (`None`: `--help`), to run with, or the exit
/// status to stop with now: `--help` prints `usage` (0), a usage error says
/// what is wrong, with `usage` (2).
pub fn arguments<A>(name: &str, usage: &str, parsed: Result<Option<A>, String>) -> Result<A, u8> {
    match parsed {
        Ok(Some(a)) => Ok(a),
        Ok(None) => {
            println!("{usage}");
            Err(0)
        }
        Err(e) => {
            eprintln!("dockroot {name}: {e}\n\n{usage}");
            Err(crate::EXIT_USAGE)
        }
    }
}

/// The end of a command that says what it did: printed (exit 0), or the error (exit 1).
pub fn finish(name: &str, done: dockroot::Result<String>) -> u8 {
    match done {
        Ok(said) => {
            println!("{said}");
            0
        }
        Err(e) => {
            eprintln!("dockroot {name}: {e}");
            1
        }
    }
}
