//! Replaying a tape: each recorded export is called again with its recorded arguments, with no
//! capabilities at all; its import calls are answered from the tape in order, and its result is
//! compared with the recorded one.

use serde::Serialize;
use serde_json::{Value, json};

use super::diff::{Difference, differences};
use super::{Tape, TapeAdapter};
use upshift_runtime::tap::Cursor;
use upshift_runtime::{LoadedAdapter, Runtime};

/// How many differences are shown per export.
const SHOWN: usize = 10;

/// What replaying one export found.
#[derive(Debug, Clone, Serialize)]
pub struct ExportReplay {
    /// The export, e.g. `detect`.
    pub export: String,
    /// Import calls on the tape for it.
    pub calls_recorded: usize,
    /// Import calls answered from the tape.
    pub calls_answered: usize,
    /// The first call that did not follow the tape (named, with what the tape expected).
    pub call_mismatch: Option<String>,
    /// Where the result differs from the recorded one (the first few).
    pub differences: Vec<Difference>,
    /// Calls and result as recorded.
    pub identical: bool,
}

/// What `upshift adapter test --replay` reports.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayReport {
    /// The instance the tape was recorded on.
    pub instance: String,
    /// The command that recorded it.
    pub command: String,
    /// The adapter it was recorded with.
    pub recorded_with: TapeAdapter,
    /// The adapter replayed now.
    pub replayed_with: TapeAdapter,
    /// Whether the adapters' digests are the same (a different one is a note, not an error:
    /// replaying an edited adapter against an old tape is the point).
    pub same_adapter: bool,
    /// Each export, in tape order.
    pub exports: Vec<ExportReplay>,
    /// Every export followed the tape and returned what was recorded.
    pub identical: bool,
}

fn outcome(result: Option<&Value>, fault: Option<&str>) -> Value {
    match fault {
        Some(f) => json!({ "fault": f }),
        None => result.cloned().unwrap_or(Value::Null),
    }
}

/// Replay every export of `tape` on `adapter`. Nothing but the tape answers the adapter.
pub async fn replay(runtime: &Runtime, adapter: &LoadedAdapter, tape: &Tape) -> ReplayReport {
    let mut exports = Vec::new();
    for record in &tape.exports {
        let cursor = Cursor::new(record.calls.clone());
        let (result, cursor) = runtime.replay(adapter, &record.call, cursor).await;
        let replayed = match &result {
            Ok(v) => outcome(Some(v), None),
            Err(f) => outcome(None, Some(&f.reason)),
        };
        let recorded = outcome(record.result.as_ref(), record.fault.as_deref());
        let call_mismatch = cursor.mismatch();
        // A call that left the tape stopped the export: its result says nothing more.
        let differences = if call_mismatch.is_some() {
            Vec::new()
        } else {
            differences(&recorded, &replayed, SHOWN)
        };
        exports.push(ExportReplay {
            export: record.call.name().to_string(),
            calls_recorded: cursor.recorded(),
            calls_answered: cursor.answered(),
            identical: call_mismatch.is_none() && differences.is_empty(),
            call_mismatch,
            differences,
        });
    }
    let replayed_with = TapeAdapter {
        product: adapter.manifest.product.clone(),
        adapter_version: adapter.manifest.adapter_version.clone(),
        sha256: adapter.digest.clone(),
    };
    ReplayReport {
        instance: tape.instance.clone(),
        command: tape.command.clone(),
        same_adapter: replayed_with.sha256 == tape.adapter.sha256,
        recorded_with: tape.adapter.clone(),
        replayed_with,
        identical: exports.iter().all(|e| e.identical),
        exports,
    }
}

impl std::fmt::Display for ReplayReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (r, now) = (&self.recorded_with, &self.replayed_with);
        let who = if self.instance.is_empty() {
            "an offline plan".to_string()
        } else {
            format!("`{}`", self.instance)
        };
        writeln!(
            f,
            "tape of {who} ({}), recorded with {} adapter {} (sha256 {})",
            self.command,
            r.product,
            r.adapter_version,
            short(&r.sha256)
        )?;
        if !self.same_adapter {
            writeln!(
                f,
                "note: replaying a different adapter: {} {} (sha256 {})",
                now.product,
                now.adapter_version,
                short(&now.sha256)
            )?;
        }
        let answered: usize = self.exports.iter().map(|e| e.calls_answered).sum();
        for e in &self.exports {
            let mark = if e.identical { "identical" } else { "DIFFERS" };
            writeln!(
                f,
                "  {:<13} {:>3}/{:<3} calls answered  {mark}",
                e.export, e.calls_answered, e.calls_recorded
            )?;
            if let Some(m) = &e.call_mismatch {
                writeln!(f, "      {m}")?;
            }
            for d in &e.differences {
                writeln!(f, "    {d}")?;
            }
        }
        let differing = self.exports.iter().filter(|e| !e.identical).count();
        if self.identical {
            writeln!(
                f,
                "{} export(s) replayed, {answered} call(s) answered from the tape: identical",
                self.exports.len()
            )
        } else {
            writeln!(
                f,
                "{} export(s) replayed, {answered} call(s) answered from the tape: {differing} differ(s)",
                self.exports.len()
            )
        }
    }
}

fn short(digest: &str) -> &str {
    digest.get(..12).unwrap_or(digest)
}
