//! Capabilities lent to adapters. Every call has the same shape: grant check → audit → backend.
//!
//! [`InstanceCaps`] holds one instance's capabilities (db, files, service, http). Each owns its
//! backends privately and exposes only guarded methods, so the wasm host traits (in
//! `runtime::host`) and the host's plan actions (in `ops::executor`) reach a backend the same
//! way: through the one guard, which checks the grant, writes the audit record, then calls
//! the backend. Every audited operation is an [`Operation`].

pub mod audit;
pub mod backup;
pub mod bindings;
mod connect;
pub mod db;
pub mod events;
pub mod files;
mod guard;
pub mod http;
pub mod operation;
pub mod private;
pub mod secrets;
pub mod service;

use std::sync::Arc;

use crate::audit::AuditLog;
use upshift_model::grants::GrantSet;

pub use events::{Event, EventSink};
pub use guard::{Caller, OverBudget, Spend, StepBudget, Witness, with_deadline, within_export};
pub use operation::Operation;
pub use secrets::Secrets;

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

/// One instance's capabilities, shared by the sandbox and the plan executor. Each capability
/// owns its backends privately and reaches them only through the guard.
pub struct InstanceCaps {
    guard: Arc<guard::Guard>,
    db: db::Db,
    files: files::Files,
    service: service::Services,
    http: http::Http,
    /// Where log lines and progress go.
    pub events: EventSink,
    budget: StepBudget,
}

impl InstanceCaps {
    /// Caps with no backends yet; the `upshift` crate's session binds them from the fleet file.
    pub fn new(caller: Caller, grants: GrantSet, audit: Arc<AuditLog>, events: EventSink) -> Self {
        let guard = Arc::new(guard::Guard::new(caller, grants, audit));
        InstanceCaps {
            db: db::Db::new(guard.clone()),
            files: files::Files::new(guard.clone()),
            service: service::Services::new(guard.clone()),
            http: http::Http::new(guard.clone()),
            guard,
            events,
            budget: StepBudget::default(),
        }
    }

    /// What each export call with these caps may make the host do (from the fleet file).
    pub fn set_budget(&mut self, budget: StepBudget) {
        self.budget = budget;
    }

    /// The budget of each export call with these caps.
    pub fn budget(&self) -> StepBudget {
        self.budget
    }

    /// Bind a database backend.
    pub fn bind_db(&mut self, name: &str, backend: db::DbBackend) {
        self.db.bind(name, backend);
    }

    /// Bind a directory.
    pub fn bind_files(&mut self, name: &str, backend: files::FilesBackend) {
        self.files.bind(name, backend);
    }

    /// Bind a service.
    pub fn bind_service(&mut self, name: &str, backend: service::ServiceBackend) {
        self.service.bind(name, backend);
    }

    /// Set the operator's wait-healthy limit of service `name` (`wait_healthy_secs`).
    pub fn set_wait_healthy_limit(&mut self, name: &str, limit: std::time::Duration) {
        self.service.set_wait_limit(name, limit);
    }

    /// Bind an HTTP base URL.
    pub fn bind_http(&mut self, name: &str, backend: http::HttpBackend) {
        self.http.bind(name, backend);
    }

    /// The db capability.
    pub fn db(&self) -> &db::Db {
        &self.db
    }

    /// The files capability.
    pub fn files(&self) -> &files::Files {
        &self.files
    }

    /// The service capability.
    pub fn service(&self) -> &service::Services {
        &self.service
    }

    /// The http capability.
    pub fn http(&self) -> &http::Http {
        &self.http
    }

    /// The session's secrets: what every record and event is masked with.
    pub fn secrets(&self) -> &Secrets {
        self.guard.secrets()
    }

    /// Who is calling.
    pub fn caller(&self) -> &Caller {
        self.guard.caller()
    }

    /// The effective grants.
    pub fn grants(&self) -> &GrantSet {
        self.guard.grants()
    }

    /// Tag later audit records with this run.
    pub fn set_run(&self, run_id: Option<String>) {
        self.guard.set_run(run_id);
    }

    /// Act only under this lease from now on (`None`: no lease is checked): every capability
    /// call waits until the lease is confirmed with more than its safety margin left, and is
    /// denied once the lease is lost.
    pub fn set_tenure(&self, tenure: Option<std::sync::Arc<upshift_model::tenure::Tenure>>) {
        self.guard.set_tenure(tenure);
    }

    /// Audit a fault of the adapter in `export` (capability `sandbox`).
    pub fn record_fault(&self, export: &str, reason: &str) -> Result<(), CapError> {
        self.guard.fault(export, reason)
    }

    /// Audit a plan (from `export`) refused by the grant check (capability `plan`).
    pub fn refuse_plan(&self, export: &str, why: String) -> CapError {
        self.guard
            .deny("", "plan", Operation::of_export(export), why)
    }

    /// Audit the first log or progress message over the per-call cap (`operation` is
    /// [`Operation::LogWrite`] or [`Operation::ProgressReport`]).
    pub fn deny_flood(&self, operation: Operation, reason: String) -> CapError {
        let capability = match operation {
            Operation::ProgressReport => "progress",
            _ => "log",
        };
        self.guard.deny("", capability, operation, reason)
    }
}

/// Run blocking file-system work off the async executor.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, CapError> + Send + 'static,
) -> Result<T, CapError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| CapError::Failed(format!("blocking work failed: {e}")))?
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
    /// Longest adapter-supplied text (a path, a reason, an error, a binding name) kept in an
    /// audit record; longer text is cut, saying how much.
    pub const MAX_AUDIT_TEXT: usize = 4 << 10;
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
