//! Guest-side SDK for Upshift adapters.
//!
//! It generates the `upshift:adapter` bindings once, re-exports them, and adds the small helpers
//! every adapter needs (version parsing, step builders, fact lookup), so that an adapter crate is
//! mostly its product's rule table. An adapter implements [`Guest`] and calls
//! [`export_adapter!`](crate::export_adapter).

/// The generated `upshift:adapter` bindings.
#[allow(missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "upshift:adapter/adapter",
        pub_export_macro: true,
        export_macro_name: "export_adapter",
        default_bindings_module: "upshift_adapter_sdk::bindings",
    });
}

pub mod live;
pub mod manifest;
pub mod rules;
pub mod steps;
pub mod versions;

pub use bindings::upshift::adapter::types::*;
pub use bindings::upshift::adapter::{db, files, http, log, progress, service};
pub use bindings::{Guest, export_adapter};

/// The `upshift:adapter` API version this SDK is generated from.
pub const HOST_API: &str = __host_api_literal!();

impl Detection {
    /// The value of fact `key`, if the detection carries it.
    pub fn fact(&self, key: &str) -> Option<&str> {
        self.facts
            .iter()
            .find(|f| f.key == key)
            .map(|f| f.value.as_str())
    }
}

/// A fact, for building a [`Detection`].
pub fn fact(key: &str, value: impl Into<String>) -> Fact {
    Fact {
        key: key.to_string(),
        value: value.into(),
    }
}

/// An [`AdapterError`] with this message.
pub fn error(message: impl Into<String>) -> AdapterError {
    AdapterError {
        message: message.into(),
    }
}

/// A [`Refusal`] naming the rule, the reason, the versions to pass through and the advice.
pub fn refuse(
    rule: &str,
    reason: impl Into<String>,
    path: &[String],
    advice: impl Into<String>,
) -> Refusal {
    Refusal {
        rule: rule.to_string(),
        reason: reason.into(),
        path: path.to_vec(),
        advice: advice.into(),
    }
}

/// A capability error as one line, for adapter error messages.
pub fn describe_cap_error(err: &CapError) -> String {
    match err {
        CapError::Denied(m) => format!("denied: {m}"),
        CapError::UnknownBinding(m) => format!("unknown binding: {m}"),
        CapError::Invalid(m) => format!("invalid request: {m}"),
        CapError::Failed(m) => format!("failed: {m}"),
    }
}

/// Write an info line to the run log.
pub fn info(message: &str) {
    log::write(log::Level::Info, message);
}

/// A value as text, for reading query results (`None` for SQL NULL).
pub fn value_text(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::Boolean(b) => Some(b.to_string()),
        Value::Int(i) => Some(i.to_string()),
        Value::Float(f) => Some(f.to_string()),
        Value::Text(s) => Some(s.clone()),
        Value::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
    }
}
