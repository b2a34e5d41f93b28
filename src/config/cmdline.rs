//! The kernel command line's tokens: [`split`] cuts `/proc/cmdline` exactly as
//! the kernel's `next_arg()` does (pure).

/// One `param[=value]` token of the kernel command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arg {
    pub key: String,
    pub value: Option<String>,
}

/// Split a kernel command line into arguments with the kernel's quoting rules
/// (`lib/cmdline.c: next_arg`): arguments are separated by whitespace; double
/// quotes group whitespace; quotes around a whole argument or around a value
/// (`key="a b"`) are removed, other quotes are kept; there are no escapes.
/// Everything after a lone `--` belongs to init and is returned separately.
pub fn split(cmdline: &str) -> (Vec<Arg>, Vec<String>) {
    let mut args = Vec::new();
    let mut rest = cmdline.trim_start_matches(is_space);
    while !rest.is_empty() {
        let (arg, next) = next_arg(rest);
        rest = next.trim_start_matches(is_space);
        if arg.key == "--" && arg.value.is_none() {
            return (args, split_all(rest));
        }
        args.push(arg);
    }
    (args, Vec::new())
}

/// All remaining tokens as plain strings (the init's arguments after `--`).
fn split_all(mut rest: &str) -> Vec<String> {
    let mut out = Vec::new();
    while !rest.is_empty() {
        let (arg, next) = next_arg(rest);
        rest = next.trim_start_matches(is_space);
        out.push(match arg.value {
            Some(v) => format!("{}={}", arg.key, v),
            None => arg.key,
        });
    }
    out
}

fn is_space(c: char) -> bool {
    // The kernel's isspace(): space, \t, \n, \v, \f, \r.
    matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r')
}

/// One step of the kernel's `next_arg()`; `s` starts with a non-space.
fn next_arg(s: &str) -> (Arg, &str) {
    let (quoted, body) = match s.strip_prefix('"') {
        Some(b) => (true, b),
        None => (false, s),
    };
    let mut in_quote = quoted;
    let mut equals: Option<usize> = None;
    let mut end = body.len();
    for (i, c) in body.char_indices() {
        if is_space(c) && !in_quote {
            end = i;
            break;
        }
        // As in the kernel, an '=' at position 0 does not split.
        if equals.is_none() && c == '=' && i > 0 {
            equals = Some(i);
        }
        if c == '"' {
            in_quote = !in_quote;
        }
    }
    let token = &body[..end];
    let rest = body.get(end..).unwrap_or("");
    // A leading quote of the whole argument drops a trailing quote.
    let strip_trailing = |t: &str| -> String { t.strip_suffix('"').unwrap_or(t).to_string() };
    let arg = match equals {
        None => Arg { key: if quoted { strip_trailing(token) } else { token.to_string() }, value: None },
        Some(eq) => {
            let key = token[..eq].to_string();
            let raw = &token[eq + 1..];
            let value = match raw.strip_prefix('"') {
                Some(v) => strip_trailing(v),
                None if quoted => strip_trailing(raw),
                None => raw.to_string(),
            };
            Arg { key, value: Some(value) }
        }
    };
    (arg, rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(key: &str, value: Option<&str>) -> Arg {
        Arg { key: key.into(), value: value.map(Into::into) }
    }

    #[test]
    fn split_plain_and_values() {
        let (args, init) = split("  root=LABEL=linux rw  quiet\tinit=/sbin/init\n");
        assert_eq!(
            args,
            vec![a("root", Some("LABEL=linux")), a("rw", None), a("quiet", None), a("init", Some("/sbin/init"))]
        );
        assert!(init.is_empty());
    }

    #[test]
    fn split_quotes_like_the_kernel() {
        let (args, _) = split(r#"a="b c" "d=e f" "g h" x="y"z p=q"r s"t"#);
        assert_eq!(
            args,
            vec![
                a("a", Some("b c")),
                a("d", Some("e f")),
                a("g h", None),
                // A value that starts with a quote loses it, and a trailing quote.
                a("x", Some("y\"z")),
                // Quotes inside a value group spaces and are kept.
                a("p", Some("q\"r s\"t")),
            ]
        );
    }

    #[test]
    fn split_unterminated_quote_runs_to_end() {
        let (args, _) = split(r#"a="b c d"#);
        assert_eq!(args, vec![a("a", Some("b c d"))]);
    }

    #[test]
    fn split_equals_at_start_is_not_a_separator() {
        let (args, _) = split("=x y==z");
        assert_eq!(args, vec![a("=x", None), a("y", Some("=z"))]);
    }

    #[test]
    fn split_double_dash_gives_init_args() {
        let (args, init) = split("root=/dev/vda -- single  x=1 \"two words\"");
        assert_eq!(args, vec![a("root", Some("/dev/vda"))]);
        assert_eq!(init, vec!["single", "x=1", "two words"]);
    }

    #[test]
    fn split_handles_garbage_without_panicking() {
        for s in ["\"", "\"\"", "=", "==", "\"=\"", "a=\"", " \u{0} \u{ff}é\"=é", "--", "-- --"] {
            let _ = split(s);
        }
        let long = "x".repeat(4096);
        let (args, _) = split(&long);
        assert_eq!(args.len(), 1);
    }
}
