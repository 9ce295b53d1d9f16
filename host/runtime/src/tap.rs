//! The tap on one store's imports: off, recording every capability call and the host's answer,
//! or answering every call from a tape (replay, with no backends at all).
//!
//! Recording observes the live answer after the grant check and audit have run, so it changes
//! nothing. `log` and `progress` are not taped: they only send text to the operator.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::bindings::CapError as WitCapError;
use super::bindings::upshift::adapter::{db, files, http, service};

/// One import call the guest made and what the host answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImportCall {
    /// WIT interface, e.g. `db`.
    pub interface: String,
    /// WIT function, e.g. `query`.
    pub function: String,
    /// The call's arguments by name.
    pub args: Value,
    /// `{"ok": …}` or `{"err": {"Denied": "…"}}` (and the other `cap-error` cases).
    pub result: Value,
}

impl ImportCall {
    /// `db.query(binding = "meta", sql = "SELECT …")`, for messages.
    pub fn describe(&self) -> String {
        describe_call(&self.interface, &self.function, &self.args)
    }
}

fn describe_call(interface: &str, function: &str, args: &Value) -> String {
    let mut text = serde_json::to_string(args).unwrap_or_default();
    if text.len() > 300 {
        let mut end = 300;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    format!("{interface}.{function}{text}")
}

/// What a store does with import calls.
#[derive(Debug, Default)]
pub enum Tap {
    /// Nothing: calls go to the capabilities as always.
    #[default]
    Off,
    /// Calls go to the capabilities; each one and its answer is kept.
    Record(Vec<ImportCall>),
    /// Calls are answered from the tape, in order; nothing else is reached.
    Replay(Cursor),
}

impl Tap {
    /// Whether calls' arguments need to be captured.
    pub fn active(&self) -> bool {
        !matches!(self, Tap::Off)
    }
}

/// The recorded calls of one export, answered in order.
#[derive(Debug, Default)]
pub struct Cursor {
    calls: Vec<ImportCall>,
    next: usize,
    mismatch: Option<String>,
}

impl Cursor {
    /// A cursor over the calls recorded for one export.
    pub fn new(calls: Vec<ImportCall>) -> Cursor {
        Cursor {
            calls,
            next: 0,
            mismatch: None,
        }
    }

    /// How many calls were answered.
    pub fn answered(&self) -> usize {
        self.next
    }

    /// How many calls the tape holds.
    pub fn recorded(&self) -> usize {
        self.calls.len()
    }

    /// The first call that did not match the tape, or recorded calls never made.
    pub fn mismatch(&self) -> Option<String> {
        if let Some(m) = &self.mismatch {
            return Some(m.clone());
        }
        self.calls.get(self.next).map(|c| {
            format!(
                "the adapter made {} of the {} recorded calls; the next one on the tape, never made, is {}",
                self.next,
                self.calls.len(),
                c.describe()
            )
        })
    }

    /// Answer a call from the tape, or stop the export with a message naming the call and what
    /// was expected.
    pub fn answer<T: Taped>(
        &mut self,
        interface: &str,
        function: &str,
        args: Value,
    ) -> wasmtime::Result<Result<T, WitCapError>> {
        let n = self.next + 1;
        let made = describe_call(interface, function, &args);
        let problem = match self.calls.get(self.next) {
            None => format!(
                "call {n}: the adapter called {made}, but the tape records only {} call(s) here",
                self.calls.len()
            ),
            Some(c) if c.interface != interface || c.function != function || c.args != args => {
                format!(
                    "call {n}: the adapter called {made}, but the tape expects {}",
                    c.describe()
                )
            }
            Some(c) => match decode::<T>(&c.result) {
                Ok(answer) => {
                    self.next += 1;
                    return Ok(answer);
                }
                Err(e) => format!("call {n} ({made}): the recorded result is unreadable: {e}"),
            },
        };
        self.mismatch = Some(problem.clone());
        Err(wasmtime::Error::msg(format!("replay: {problem}")))
    }
}

/// A call's answer as it goes on the tape.
pub fn encode<T: Taped>(answer: &Result<T, WitCapError>) -> Value {
    match answer {
        Ok(v) => json!({ "ok": v.to_tape() }),
        Err(e) => json!({ "err": serde_json::to_value(e).unwrap_or(Value::Null) }),
    }
}

fn decode<T: Taped>(value: &Value) -> Result<Result<T, WitCapError>, String> {
    if let Some(ok) = value.get("ok") {
        return T::from_tape(ok.clone()).map(Ok);
    }
    if let Some(err) = value.get("err") {
        return serde_json::from_value(err.clone())
            .map(Err)
            .map_err(|e| format!("bad `err`: {e}"));
    }
    Err("expected {\"ok\": …} or {\"err\": …}".into())
}

/// A value an import returns, as written on the tape. Most are their serde form; bytes are
/// `{"text": …}` when they are UTF-8 (editable by hand) and `{"hex": …}` otherwise.
pub trait Taped: Sized {
    /// The tape's form.
    fn to_tape(&self) -> Value;
    /// Back from the tape's form.
    fn from_tape(value: Value) -> Result<Self, String>;
}

fn serde_to<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

fn serde_from<T: DeserializeOwned>(value: Value) -> Result<T, String> {
    serde_json::from_value(value).map_err(|e| e.to_string())
}

macro_rules! taped_by_serde {
    ($($t:ty),*) => {$(
        impl Taped for $t {
            fn to_tape(&self) -> Value {
                serde_to(self)
            }
            fn from_tape(value: Value) -> Result<Self, String> {
                serde_from(value)
            }
        }
    )*};
}

taped_by_serde!(
    (),
    bool,
    u64,
    Vec<u64>,
    Vec<String>,
    db::Rows,
    Vec<files::DirEntry>,
    service::ServiceStatus
);

/// Bytes in the tape's form.
pub fn bytes_to_tape(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(text) => json!({ "text": text }),
        Err(_) => json!({ "hex": hex::encode(bytes) }),
    }
}

fn bytes_from_tape(value: &Value) -> Result<Vec<u8>, String> {
    if let Some(text) = value.get("text").and_then(Value::as_str) {
        return Ok(text.as_bytes().to_vec());
    }
    if let Some(h) = value.get("hex").and_then(Value::as_str) {
        return hex::decode(h).map_err(|e| format!("bad hex: {e}"));
    }
    Err("bytes must be {\"text\": …} or {\"hex\": …}".into())
}

impl Taped for Vec<u8> {
    fn to_tape(&self) -> Value {
        bytes_to_tape(self)
    }
    fn from_tape(value: Value) -> Result<Self, String> {
        bytes_from_tape(&value)
    }
}

impl Taped for http::Response {
    fn to_tape(&self) -> Value {
        json!({ "status": self.status, "body": bytes_to_tape(&self.body) })
    }
    fn from_tape(value: Value) -> Result<Self, String> {
        let status = value
            .get("status")
            .and_then(Value::as_u64)
            .and_then(|s| u16::try_from(s).ok())
            .ok_or("`status` must be an HTTP status number")?;
        let body = bytes_from_tape(value.get("body").unwrap_or(&Value::Null))?;
        Ok(http::Response { status, body })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(function: &str, args: Value, result: Value) -> ImportCall {
        ImportCall {
            interface: "db".into(),
            function: function.into(),
            args,
            result,
        }
    }

    #[test]
    fn answers_in_order_and_names_the_first_call_that_differs() {
        let mut cursor = Cursor::new(vec![
            call("table-exists", json!({"table": "a"}), json!({"ok": true})),
            call("table-exists", json!({"table": "b"}), json!({"ok": false})),
        ]);
        let first: Result<bool, _> = cursor
            .answer("db", "table-exists", json!({"table": "a"}))
            .expect("recorded");
        assert!(matches!(first, Ok(true)));
        let wrong = cursor.answer::<bool>("db", "table-exists", json!({"table": "c"}));
        assert!(wrong.is_err());
        let why = cursor.mismatch().expect("a mismatch");
        assert!(why.contains("call 2") && why.contains("\"c\"") && why.contains("\"b\""));
        assert_eq!(cursor.answered(), 1);
    }

    #[test]
    fn calls_never_made_are_a_mismatch() {
        let cursor = Cursor::new(vec![call("execute", json!({}), json!({"ok": 1}))]);
        let why = cursor.mismatch().expect("unmade call");
        assert!(why.contains("0 of the 1") && why.contains("db.execute"));
    }

    #[test]
    fn errors_and_bytes_round_trip() {
        let denied: Result<u64, WitCapError> = Err(WitCapError::Denied("no".into()));
        let back = decode::<u64>(&encode(&denied));
        assert!(
            matches!(&back, Ok(Err(WitCapError::Denied(m))) if m == "no"),
            "{back:?}"
        );
        for bytes in [b"{\"a\":1}".to_vec(), vec![0xff, 0x00, 0x12]] {
            let back = Vec::<u8>::from_tape(bytes.to_tape());
            assert_eq!(back, Ok(bytes));
        }
        assert!(decode::<u64>(&json!({"maybe": 1})).is_err());
    }
}
