//! Errors as the machine interface shows them: under `--json` every failure is one JSON
//! document on stdout, `{"error": {"kind", "message", "fix"}}` (docs/json.md), with the same
//! exit code as in text mode.

use serde::Serialize;

use upshift::fleet::FleetError;
use upshift::ops::OpError;

use crate::Exit;

/// The document's one key.
#[derive(Debug, Serialize)]
struct Document<'a> {
    error: &'a JsonError,
}

/// One error for a program to act on.
#[derive(Debug, Serialize)]
pub struct JsonError {
    /// Stable kebab-case kind: `usage`, `fleet-file`, `busy`, `connection`, `adapter`,
    /// `stopped` or `error`.
    pub kind: &'static str,
    /// What went wrong (one paragraph; the `fix:` line split off).
    pub message: String,
    /// What to do about it, when the host knows.
    pub fix: Option<String>,
}

/// An error with its causes, `message: cause: cause`, leaving out a cause its message already
/// quotes (a library error that names its I/O error in its own words, then says the fix).
pub fn error_text(error: &anyhow::Error) -> String {
    let mut text = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

/// What connection errors begin with (host/caps: PostgreSQL and MySQL backends, the state
/// store); the kind `connection` is read from it.
const CONNECT_PREFIX: &str = "cannot connect to ";

impl JsonError {
    /// A command line clap rejected (exit 2).
    pub fn usage(rendered: &str) -> JsonError {
        let message = rendered
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or(rendered)
            .trim_start_matches("error: ")
            .to_string();
        JsonError {
            kind: "usage",
            message,
            fix: Some("see `upshift COMMAND --help` for the accepted flags".into()),
        }
    }

    /// The JSON form of an error a command returned.
    pub fn of(exit: &Exit) -> JsonError {
        let text = error_text(&exit.error);
        let (message, fix) = match text.split_once("\nfix: ") {
            Some((message, fix)) => (message.to_string(), Some(fix.trim().to_string())),
            None => (text.clone(), None),
        };
        let op = exit.error.downcast_ref::<OpError>();
        let kind = if crate::STOPPED_IDLE.load(std::sync::atomic::Ordering::SeqCst) {
            "stopped"
        } else if exit.error.downcast_ref::<FleetError>().is_some() {
            "fleet-file"
        } else if exit.code == crate::exit::BUSY {
            "busy"
        } else if exit.code == 2 {
            "usage"
        } else if text.contains(CONNECT_PREFIX) {
            "connection"
        } else if matches!(op, Some(OpError::Adapter(_))) {
            "adapter"
        } else {
            "error"
        };
        let fix = fix
            .or_else(|| crate::hint(&exit.error).map(str::to_string))
            .or_else(|| default_fix(kind).map(str::to_string));
        JsonError {
            kind,
            message: message.trim().to_string(),
            fix,
        }
    }
}

/// The general way out of a kind of error, when the error names none of its own.
fn default_fix(kind: &str) -> Option<&'static str> {
    match kind {
        "usage" => Some("see `upshift COMMAND --help`"),
        "busy" => Some(
            "wait for the other run to finish; an unfinished run of this host is listed by `upshift history` (then `upshift resume RUN` or `upshift abandon RUN --why …`)",
        ),
        "connection" => {
            Some("start the service, or correct the binding's host and port in the fleet file")
        }
        "stopped" => Some("run the command again when you mean it to go on"),
        _ => None,
    }
}

/// Print `error` as the one JSON document on stdout, secrets masked.
pub fn print_json_error(error: &JsonError) {
    if crate::print_json(&Document { error }).is_err() {
        // The document could not be made: say so in the simplest valid JSON.
        println!(
            "{{\"error\": {{\"kind\": \"error\", \"message\": \"unprintable error\", \"fix\": null}}}}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_the_message_already_quotes_is_not_repeated() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let quoted = anyhow::Error::new(io).context("cannot read x: no such file\nfix: create it");
        assert_eq!(
            error_text(&quoted),
            "cannot read x: no such file\nfix: create it"
        );
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let unquoted = anyhow::Error::new(io).context("cannot read x");
        assert_eq!(error_text(&unquoted), "cannot read x: no such file");
    }

    #[test]
    fn a_fix_line_is_split_off_and_kinds_are_read() {
        let exit = Exit {
            code: 2,
            error: anyhow::anyhow!("bad thing\nfix: do this"),
        };
        let e = JsonError::of(&exit);
        assert_eq!((e.kind, e.message.as_str()), ("usage", "bad thing"));
        assert_eq!(e.fix.as_deref(), Some("do this"));
        let exit = Exit {
            code: 1,
            error: anyhow::anyhow!(
                "instance `bb`: cannot connect to PostgreSQL at 127.0.0.1:1 (database `x`): connection refused"
            ),
        };
        assert_eq!(JsonError::of(&exit).kind, "connection");
        let exit = Exit {
            code: crate::exit::BUSY,
            error: anyhow::anyhow!("held"),
        };
        assert_eq!(JsonError::of(&exit).kind, "busy");
        let e = JsonError::usage("error: unexpected argument '--x' found\n\nUsage: upshift …");
        assert_eq!(e.message, "unexpected argument '--x' found");
    }
}
