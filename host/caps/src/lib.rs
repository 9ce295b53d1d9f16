//! Capabilities lent to adapters. Every call has the same shape: grant check → audit → backend.
//!
//! [`InstanceCaps`] holds one instance's grants and backends. The wasm host traits (in
//! `runtime::host`) and the host's built-in plan actions (in `ops::executor`) both go through
//! [`InstanceCaps::guarded`], so a call is checked and audited the same way whoever makes it.

pub mod audit;
pub mod bindings;
pub mod compose;
pub mod compose_file;
pub mod db;
pub mod docker;
pub mod events;
pub mod files;
pub mod http;
pub mod kwdb_sql;
pub mod mysql;
pub mod pg_backup;
pub mod process;
pub mod service;
pub mod snapshot;
pub mod sql;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::audit::{AuditEvent, AuditLog, Decision};
use upshift_model::grants::{Access, BindingKind, GrantSet};

pub use events::{Event, EventSink};

/// Why a capability call failed (mirrors the WIT `cap-error`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapError {
    /// The grant check refused it.
    #[error("denied: {0}")]
    Denied(String),
    /// The binding name is unknown to the adapter's declaration.
    #[error("unknown binding: {0}")]
    UnknownBinding(String),
    /// Malformed, or over a limit.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The resource answered with an error.
    #[error("{0}")]
    Failed(String),
}

/// Who is calling: recorded in every audit record.
#[derive(Debug, Clone)]
pub struct Caller {
    /// sha256 of the adapter component.
    pub adapter_digest: String,
    /// Fleet instance name.
    pub instance: String,
}

/// One instance's grants and backends, shared by the sandbox and the plan executor.
pub struct InstanceCaps {
    /// Who is calling.
    pub caller: Caller,
    /// The effective grants.
    pub grants: GrantSet,
    /// Database backends by binding name.
    pub db: BTreeMap<String, db::DbBackend>,
    /// Directory backends by binding name.
    pub files: BTreeMap<String, files::FilesBackend>,
    /// Service backends by binding name.
    pub services: BTreeMap<String, service::ServiceBackend>,
    /// HTTP backends by binding name.
    pub http: BTreeMap<String, http::HttpBackend>,
    /// Where log lines and progress go.
    pub events: EventSink,
    audit: Arc<AuditLog>,
    run_id: Mutex<Option<String>>,
}

impl InstanceCaps {
    /// Caps with no backends yet; the `upshift` crate's session builds them from the fleet file.
    pub fn new(caller: Caller, grants: GrantSet, audit: Arc<AuditLog>, events: EventSink) -> Self {
        InstanceCaps {
            caller,
            grants,
            db: BTreeMap::new(),
            files: BTreeMap::new(),
            services: BTreeMap::new(),
            http: BTreeMap::new(),
            events,
            audit,
            run_id: Mutex::new(None),
        }
    }

    /// The database backend of a binding.
    pub fn db_backend(&self, binding: &str) -> Result<&db::DbBackend, CapError> {
        self.db.get(binding).ok_or_else(|| unbound("db", binding))
    }

    /// The directory a files binding names.
    pub fn files_root(&self, binding: &str) -> Result<&std::path::Path, CapError> {
        self.files_backend(binding).map(files::FilesBackend::root)
    }

    /// The directory backend of a binding.
    pub fn files_backend(&self, binding: &str) -> Result<&files::FilesBackend, CapError> {
        self.files
            .get(binding)
            .ok_or_else(|| unbound("files", binding))
    }

    /// The service backend of a binding.
    pub fn service_backend(&self, binding: &str) -> Result<&service::ServiceBackend, CapError> {
        self.services
            .get(binding)
            .ok_or_else(|| unbound("service", binding))
    }

    /// The HTTP backend of a binding.
    pub fn http_backend(&self, binding: &str) -> Result<&http::HttpBackend, CapError> {
        self.http
            .get(binding)
            .ok_or_else(|| unbound("http", binding))
    }

    /// Tag later audit records with this run.
    pub fn set_run(&self, run_id: Option<String>) {
        if let Ok(mut slot) = self.run_id.lock() {
            *slot = run_id;
        }
    }

    fn run(&self) -> Option<String> {
        self.run_id.lock().ok().and_then(|r| r.clone())
    }

    /// The audit log these caps write to.
    pub fn audit(&self) -> &Arc<AuditLog> {
        &self.audit
    }

    /// Record one call in the audit log. An audit log that cannot be written stops the call:
    /// nothing happens unaudited.
    pub fn record(&self, call: CallRecord<'_>) -> Result<(), CapError> {
        self.audit
            .append(AuditEvent {
                adapter_digest: self.caller.adapter_digest.clone(),
                instance: self.caller.instance.clone(),
                run_id: self.run(),
                binding: call.binding.to_string(),
                capability: call.capability.to_string(),
                operation: call.operation.to_string(),
                decision: call.decision,
                reason: call.reason,
                duration_us: call.duration_us,
                result_bytes: call.result_bytes,
                error: call.error,
                detail: call.detail,
            })
            .map(|_| ())
            .map_err(|e| {
                CapError::Failed(format!(
                    "audit log could not be written, call not made: {e}"
                ))
            })
    }

    /// Check the grant, audit the decision, and on success run `backend`, auditing its outcome.
    /// `backend` returns the value and its size in bytes.
    pub async fn guarded<T, F, Fut>(
        &self,
        kind: BindingKind,
        binding: &str,
        access: Access,
        operation: &str,
        detail: Option<String>,
        backend: F,
    ) -> Result<T, CapError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(T, u64), CapError>>,
    {
        if let Err(denial) = self.grants.check(binding, kind, access) {
            let reason = denial.to_string();
            self.record(CallRecord {
                binding,
                capability: kind.name(),
                operation,
                decision: Decision::Denied,
                reason: Some(reason.clone()),
                duration_us: 0,
                result_bytes: 0,
                error: None,
                detail,
            })?;
            return Err(match denial {
                upshift_model::grants::Denial::Undeclared(_) => CapError::UnknownBinding(reason),
                _ => CapError::Denied(reason),
            });
        }
        let started = Instant::now();
        let outcome = backend().await;
        // A backend may refuse too (a path or URL that leaves the binding): that is a denial.
        let (decision, reason, result_bytes, error) = match &outcome {
            Ok((_, n)) => (Decision::Allowed, None, *n, None),
            Err(CapError::Denied(why)) => (Decision::Denied, Some(why.clone()), 0, None),
            Err(e) => (Decision::Allowed, None, 0, Some(e.to_string())),
        };
        self.record(CallRecord {
            binding,
            capability: kind.name(),
            operation,
            decision,
            reason,
            duration_us: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            result_bytes,
            error,
            detail,
        })?;
        outcome.map(|(v, _)| v)
    }
}

fn unbound(kind: &str, binding: &str) -> CapError {
    CapError::Failed(format!("{kind} binding `{binding}` has no backend"))
}

/// The fields of one audit record that vary per call.
pub struct CallRecord<'a> {
    /// Binding name.
    pub binding: &'a str,
    /// Capability name.
    pub capability: &'a str,
    /// Operation name.
    pub operation: &'a str,
    /// Allowed or denied.
    pub decision: Decision,
    /// Why denied.
    pub reason: Option<String>,
    /// How long the backend took.
    pub duration_us: u64,
    /// Size of the result.
    pub result_bytes: u64,
    /// The backend's error.
    pub error: Option<String>,
    /// Extra detail.
    pub detail: Option<String>,
}

/// Limits on what the host hands back to (or accepts from) an adapter.
pub mod limits {
    /// Largest result (rows, file, body) returned to an adapter.
    pub const MAX_RESULT_BYTES: usize = 16 << 20;
    /// Most rows a query returns.
    pub const MAX_ROWS: usize = 100_000;
    /// Longest SQL text accepted.
    pub const MAX_SQL_BYTES: usize = 1 << 20;
    /// Longest log line kept; longer lines are cut.
    pub const MAX_LOG_LINE: usize = 8 << 10;
    /// Log lines and progress reports accepted per export call.
    pub const MAX_LOG_PER_CALL: u32 = 1_000;
    /// Statements per `transaction` call.
    pub const MAX_STATEMENTS: usize = 1_000;
    /// Steps in a plan.
    pub const MAX_PLAN_STEPS: usize = 500;
    /// Longest text field in a plan, refusal or detection.
    pub const MAX_TEXT: usize = 16 << 10;
    /// Guest memory per instance.
    pub const MEMORY_BYTES: usize = 64 << 20;
}
