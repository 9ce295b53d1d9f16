//! The one guard every capability call passes: grant check → audit → backend. It is also the
//! only place an audit record is built.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::CapError;
use crate::audit::{AuditEvent, AuditLog, Decision, SqlAudit};
use crate::operation::Operation;
use upshift_model::grants::{Access, BindingKind, Denial, GrantSet};
use upshift_model::tenure::{Lapse, Tenure};

/// Who is calling: recorded in every audit record.
#[derive(Debug, Clone)]
pub struct Caller {
    /// sha256 of the adapter component.
    pub adapter_digest: String,
    /// Fleet instance name.
    pub instance: String,
}

/// How much one export call (a plan step, `detect`, `verify`, …) may make the host do. Over
/// either limit the call that crosses it is refused and the export is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepBudget {
    /// Host calls: every capability call and every log or progress message the adapter makes.
    pub host_calls: u64,
    /// Bytes of audit records written for its calls.
    pub audit_bytes: u64,
}

impl StepBudget {
    /// Default host calls per export call (the bundled adapters make at most a few dozen).
    pub const DEFAULT_HOST_CALLS: u64 = 10_000;
    /// Default audit bytes per export call (the bundled adapters write at most a few KiB).
    pub const DEFAULT_AUDIT_BYTES: u64 = 16 << 20;
    /// No limit (benchmarks that make a million calls on purpose).
    pub const UNLIMITED: StepBudget = StepBudget {
        host_calls: u64::MAX,
        audit_bytes: u64::MAX,
    };
}

impl Default for StepBudget {
    fn default() -> Self {
        StepBudget {
            host_calls: StepBudget::DEFAULT_HOST_CALLS,
            audit_bytes: StepBudget::DEFAULT_AUDIT_BYTES,
        }
    }
}

/// An export call went over its [`StepBudget`]: the adapter's fault. The export is stopped with
/// this as its reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OverBudget {
    /// Too many host calls.
    #[error(
        "it made more than {limit} host calls in {subject}, so that call was refused and the adapter stopped; the budget per export call is {limit} host calls and {bytes} bytes of audit records; raise `host_calls_per_step` in the fleet file's [budget] (or [instance.budget]) if this is expected"
    )]
    HostCalls {
        /// The export (and step) that made them.
        subject: String,
        /// The budget's host calls.
        limit: u64,
        /// The budget's audit bytes.
        bytes: u64,
    },
    /// Too many bytes of audit records.
    #[error(
        "its {calls} host calls in {subject} wrote {written} bytes of audit records, reaching the budget of {limit} bytes, so the next call was refused and the adapter stopped; raise `audit_bytes_per_step` in the fleet file's [budget] (or [instance.budget]) if this is expected"
    )]
    AuditBytes {
        /// The export (and step) that made them.
        subject: String,
        /// Calls made before the refused one.
        calls: u64,
        /// Bytes written.
        written: u64,
        /// The budget's audit bytes.
        limit: u64,
    },
}

/// What one export call has spent of its [`StepBudget`]: the runtime charges each host call,
/// the guard each audit record written while the export runs (see [`within_export`]).
#[derive(Debug)]
pub struct Spend {
    budget: StepBudget,
    subject: String,
    calls: AtomicU64,
    bytes: AtomicU64,
}

impl Spend {
    /// Nothing spent yet of `budget`, by `subject` (e.g. "step `migrate`", for the message).
    pub fn new(budget: StepBudget, subject: impl Into<String>) -> Spend {
        Spend {
            budget,
            subject: subject.into(),
            calls: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        }
    }

    /// Count one host call before it is made. Refused once the call budget is used up, or
    /// once the records already written reached the byte budget (so at most one call's
    /// records go past it).
    pub fn charge_call(&self) -> Result<(), OverBudget> {
        let calls = self.calls.fetch_add(1, Ordering::Relaxed);
        if calls >= self.budget.host_calls {
            return Err(OverBudget::HostCalls {
                subject: self.subject.clone(),
                limit: self.budget.host_calls,
                bytes: self.budget.audit_bytes,
            });
        }
        let written = self.bytes.load(Ordering::Relaxed);
        if written >= self.budget.audit_bytes {
            return Err(OverBudget::AuditBytes {
                subject: self.subject.clone(),
                calls,
                written,
                limit: self.budget.audit_bytes,
            });
        }
        Ok(())
    }

    /// Host calls counted so far (the refused one included).
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Bytes of audit records written so far.
    pub fn audit_bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// The export call that is running: when it must end, and its budget.
struct Export {
    deadline: Instant,
    spend: Option<Arc<Spend>>,
}

tokio::task_local! {
    /// The adapter's current export.
    static EXPORT: Export;
}

/// Run `fut` (an adapter's export) with every capability call in it bounded by `deadline`: a
/// backend still busy then is abandoned, and the call is recorded as failed.
pub async fn with_deadline<F: Future>(deadline: Instant, fut: F) -> F::Output {
    within_export(deadline, None, fut).await
}

/// [`with_deadline`], and every audit record written while `fut` runs is charged to `spend`.
pub async fn within_export<F: Future>(
    deadline: Instant,
    spend: Option<Arc<Spend>>,
    fut: F,
) -> F::Output {
    EXPORT.scope(Export { deadline, spend }, fut).await
}

/// Time left before the current export's deadline, if the call is made inside one.
pub(crate) fn time_left() -> Option<Duration> {
    EXPORT
        .try_with(|e| e.deadline.saturating_duration_since(Instant::now()))
        .ok()
}

/// Charge `bytes` of audit records to the current export's budget, if any.
fn charge_bytes(bytes: u64) {
    let _ = EXPORT.try_with(|e| {
        if let Some(spend) = &e.spend {
            spend.bytes.fetch_add(bytes, Ordering::Relaxed);
        }
    });
}

/// One call as the guard sees it.
struct Call<'a> {
    /// The capability the binding belongs to.
    pub kind: BindingKind,
    /// Binding name.
    pub binding: &'a str,
    /// Every access the call needs (a transaction may need several).
    pub needs: &'a [Access],
    /// What is done.
    pub operation: Operation,
    /// Short context for the record.
    pub detail: Option<String>,
    /// A db call's statements, classified and fingerprinted.
    pub sql: Vec<SqlAudit>,
}

/// The fields of one audit record that vary per call.
struct Record<'a> {
    binding: &'a str,
    capability: &'a str,
    operation: Operation,
    decision: Decision,
    reason: Option<String>,
    duration_us: u64,
    result_bytes: u64,
    error: Option<String>,
    detail: Option<String>,
    sql: Vec<SqlAudit>,
}

/// Build the record of one call: the only place an [`AuditEvent`] is made.
fn event(caller: &Caller, run_id: Option<String>, r: Record<'_>) -> AuditEvent {
    AuditEvent {
        adapter_digest: caller.adapter_digest.clone(),
        instance: caller.instance.clone(),
        run_id,
        binding: r.binding.to_string(),
        capability: r.capability.to_string(),
        operation: r.operation.name().to_string(),
        decision: r.decision,
        reason: r.reason,
        duration_us: r.duration_us,
        result_bytes: r.result_bytes,
        error: r.error,
        detail: r.detail,
        sql: r.sql,
    }
}

fn denied<'a>(
    binding: &'a str,
    capability: &'a str,
    operation: Operation,
    reason: String,
    detail: Option<String>,
) -> Record<'a> {
    Record {
        binding,
        capability,
        operation,
        decision: Decision::Denied,
        reason: Some(reason),
        duration_us: 0,
        result_bytes: 0,
        error: None,
        detail,
        sql: Vec::new(),
    }
}

/// The audit of an adapter that holds no caps (during `describe`, offline `plan`,
/// `plan-restore`): its denied calls and its faults, tagged with the adapter's label.
#[derive(Clone)]
pub struct Witness {
    audit: Arc<AuditLog>,
    caller: Caller,
}

impl Witness {
    /// A witness writing to `audit` for `caller`.
    pub fn new(audit: Arc<AuditLog>, caller: Caller) -> Witness {
        Witness { audit, caller }
    }

    /// Record a call denied because no caps are lent.
    pub fn deny(
        &self,
        binding: &str,
        capability: &str,
        operation: Operation,
        reason: &str,
    ) -> Result<(), CapError> {
        let r = denied(binding, capability, operation, reason.to_string(), None);
        append(&self.audit, event(&self.caller, None, r))
    }

    /// Record an adapter fault (capability `sandbox`, operation = the export).
    pub fn fault(&self, export: &str, reason: &str) -> Result<(), CapError> {
        append(
            &self.audit,
            event(&self.caller, None, fault_record(export, reason)),
        )
    }
}

fn fault_record<'a>(export: &str, reason: &str) -> Record<'a> {
    denied(
        "",
        "sandbox",
        Operation::of_export(export),
        reason.to_string(),
        Some("adapter fault".into()),
    )
}

/// Write one record (the log masks secrets and cuts long text) and charge its bytes to the
/// export's budget.
fn append(audit: &AuditLog, event: AuditEvent) -> Result<(), CapError> {
    let (_, bytes) = audit.append_sized(event).map_err(|e| {
        CapError::Failed(format!(
            "audit log could not be written, call not made: {e}"
        ))
    })?;
    charge_bytes(bytes);
    Ok(())
}

/// Grants, audit log and caller of one instance: checks and records every call.
pub(crate) struct Guard {
    caller: Caller,
    grants: GrantSet,
    audit: Arc<AuditLog>,
    run_id: Mutex<Option<String>>,
    tenure: Mutex<Option<Arc<Tenure>>>,
}

impl Guard {
    pub(crate) fn new(caller: Caller, grants: GrantSet, audit: Arc<AuditLog>) -> Guard {
        Guard {
            caller,
            grants,
            audit,
            run_id: Mutex::new(None),
            tenure: Mutex::new(None),
        }
    }

    pub(crate) fn caller(&self) -> &Caller {
        &self.caller
    }

    pub(crate) fn grants(&self) -> &GrantSet {
        &self.grants
    }

    pub(crate) fn secrets(&self) -> &crate::Secrets {
        self.audit.secrets()
    }

    pub(crate) fn set_run(&self, run_id: Option<String>) {
        if let Ok(mut slot) = self.run_id.lock() {
            *slot = run_id;
        }
    }

    pub(crate) fn set_tenure(&self, tenure: Option<Arc<Tenure>>) {
        if let Ok(mut slot) = self.tenure.lock() {
            *slot = tenure;
        }
    }

    /// Wait until the lease the run acts under (if any) lets an action start: confirmed, with
    /// more than its safety margin left. While the heartbeat cannot confirm it (the state
    /// database unreachable, or this process was paused) the call waits; once the lease is
    /// lost, or stays unconfirmed past three TTLs and ten seconds (the heartbeat gives up
    /// before that), the call is refused.
    async fn under_lease(&self) -> Result<(), String> {
        let Some(tenure) = self.tenure.lock().ok().and_then(|t| t.clone()) else {
            return Ok(());
        };
        let waited = Instant::now();
        let patience = tenure.ttl() * 3 + Duration::from_secs(10);
        loop {
            match tenure.usable() {
                Ok(()) => return Ok(()),
                Err(lost @ Lapse::Lost { .. }) => return Err(lost.to_string()),
                Err(Lapse::Unconfirmed { .. }) if waited.elapsed() > patience => {
                    tenure.mark_lost(&format!(" (not confirmed within {} s)", patience.as_secs()));
                    return Err(tenure.lost().to_string());
                }
                Err(Lapse::Unconfirmed { .. }) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn run_id(&self) -> Option<String> {
        self.run_id.lock().ok().and_then(|r| r.clone())
    }

    /// Write one record. An audit log that cannot be written stops the call.
    fn record(&self, r: Record<'_>) -> Result<(), CapError> {
        append(&self.audit, event(&self.caller, self.run_id(), r))
    }

    /// Record a denial decided before any backend runs (a refused statement, a flood, a plan
    /// asking for what is not granted) and return it as [`CapError::Denied`].
    pub(crate) fn deny(
        &self,
        binding: &str,
        capability: &str,
        operation: Operation,
        reason: String,
    ) -> CapError {
        self.deny_sql(binding, capability, operation, reason, Vec::new())
    }

    /// [`Guard::deny`] for a db call, recording its statements' classes and fingerprints.
    pub(crate) fn deny_sql(
        &self,
        binding: &str,
        capability: &str,
        operation: Operation,
        reason: String,
        sql: Vec<SqlAudit>,
    ) -> CapError {
        let mut record = denied(binding, capability, operation, reason.clone(), None);
        record.sql = sql;
        match self.record(record) {
            Ok(()) => CapError::Denied(reason),
            Err(e) => e,
        }
    }

    /// Record an adapter fault.
    pub(crate) fn fault(&self, export: &str, reason: &str) -> Result<(), CapError> {
        self.record(fault_record(export, reason))
    }

    /// Record `call` as not reaching its backend for `reason`: `Denied`, or `Unbound` for an
    /// optional binding the fleet file leaves unbound (an audit log that cannot be written is
    /// the error).
    fn refuse(&self, call: Call<'_>, reason: &str, decision: Decision) -> Result<(), CapError> {
        let mut record = denied(
            call.binding,
            call.kind.name(),
            call.operation,
            reason.to_string(),
            call.detail,
        );
        record.decision = decision;
        record.sql = call.sql;
        self.record(record)
    }

    /// Check every access the call needs, audit the decision, and on success run `backend`,
    /// auditing its outcome. `backend` returns the value and its size in bytes.
    async fn run<T>(
        &self,
        call: Call<'_>,
        backend: impl AsyncFnOnce() -> Result<(T, u64), CapError>,
    ) -> Result<T, CapError> {
        let capability = call.kind.name();
        let needs = call.needs;
        for access in needs {
            if let Err(denial) = self.grants.check(call.binding, call.kind, *access) {
                let reason = denial.to_string();
                let decision = match denial {
                    Denial::Unbound(_) => Decision::Unbound,
                    _ => Decision::Denied,
                };
                self.refuse(call, &reason, decision)?;
                return Err(match denial {
                    Denial::Undeclared(_) => CapError::UnknownBinding(reason),
                    _ => CapError::Denied(reason),
                });
            }
        }
        // No action starts without the lease confirmed: a paused or cut-off host whose lease
        // moved on is refused here, before its backend is reached.
        if let Err(reason) = self.under_lease().await {
            self.refuse(call, &reason, Decision::Denied)?;
            return Err(CapError::Denied(reason));
        }
        let started = Instant::now();
        // Boxed: it keeps the callers' futures shallow (the backends' futures are deep).
        let work = Box::pin(backend());
        let outcome = match time_left() {
            Some(left) => tokio::time::timeout(left, work).await.unwrap_or_else(|_| {
                Err(CapError::Failed(format!(
                    "the adapter's export reached its deadline during this call ({:.1} s were left when it started); the call was cancelled",
                    left.as_secs_f64()
                )))
            }),
            None => work.await,
        };
        // A backend may refuse too (a path or URL that leaves the binding): that is a denial.
        let (decision, reason, result_bytes, error) = match &outcome {
            Ok((_, n)) => (Decision::Allowed, None, *n, None),
            Err(CapError::Denied(why)) => (Decision::Denied, Some(why.clone()), 0, None),
            Err(e) => (Decision::Allowed, None, 0, Some(e.to_string())),
        };
        self.record(Record {
            binding: call.binding,
            capability,
            operation: call.operation,
            decision,
            reason,
            duration_us: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            result_bytes,
            error,
            detail: call.detail,
            sql: call.sql,
        })?;
        outcome.map(|(v, _)| v)
    }

    /// Run a host operation on a binding: its access comes from the operation.
    async fn host<T>(
        &self,
        kind: BindingKind,
        binding: &str,
        operation: Operation,
        detail: &str,
        backend: impl AsyncFnOnce() -> Result<T, CapError>,
    ) -> Result<T, CapError> {
        let access = operation
            .host_access()
            .ok_or_else(|| CapError::Invalid(format!("`{operation}` is not a host operation")))?;
        self.run(
            Call {
                kind,
                binding,
                needs: &[access],
                operation,
                detail: Some(detail.to_string()),
                sql: Vec::new(),
            },
            async || backend().await.map(|v| (v, 0)),
        )
        .await
    }
}

/// One capability's backends by binding name, reached only through the guard.
pub(crate) struct Bound<B> {
    guard: Arc<Guard>,
    kind: BindingKind,
    backends: BTreeMap<String, B>,
}

impl<B> Bound<B> {
    pub(crate) fn new(guard: Arc<Guard>, kind: BindingKind) -> Bound<B> {
        Bound {
            guard,
            kind,
            backends: BTreeMap::new(),
        }
    }

    pub(crate) fn bind(&mut self, name: &str, backend: B) {
        self.backends.insert(name.to_string(), backend);
    }

    /// A binding's backend for reading its configuration (an engine, whether it is a job);
    /// never for a call, which goes through [`Bound::call`] or [`Bound::host`].
    pub(crate) fn config(&self, binding: &str) -> Option<&B> {
        self.backends.get(binding)
    }

    /// The bound names.
    pub(crate) fn names(&self) -> impl Iterator<Item = &str> {
        self.backends.keys().map(String::as_str)
    }

    /// The grants.
    pub(crate) fn grants(&self) -> &GrantSet {
        self.guard.grants()
    }

    /// The session's secrets (a read may add to them).
    pub(crate) fn secrets(&self) -> &crate::Secrets {
        self.guard.secrets()
    }

    /// Record a denial of a db call decided before the backend is reached, with its statements'
    /// classes and fingerprints.
    pub(crate) fn deny_sql(
        &self,
        binding: &str,
        operation: Operation,
        reason: String,
        sql: Vec<SqlAudit>,
    ) -> CapError {
        self.guard
            .deny_sql(binding, self.kind.name(), operation, reason, sql)
    }

    fn backend(&self, binding: &str) -> Result<&B, CapError> {
        self.backends.get(binding).ok_or_else(|| {
            CapError::Failed(format!(
                "{} binding `{binding}` has no backend",
                self.kind.name()
            ))
        })
    }

    /// An adapter's call: every access in `needs` is checked, then `f` runs on the backend.
    /// `f` returns the value and its size in bytes.
    pub(crate) async fn call<T>(
        &self,
        binding: &str,
        needs: &[Access],
        operation: Operation,
        detail: Option<String>,
        f: impl AsyncFnOnce(&B) -> Result<(T, u64), CapError>,
    ) -> Result<T, CapError> {
        self.call_sql(binding, needs, operation, detail, Vec::new(), f)
            .await
    }

    /// [`Bound::call`] for a db call: its record carries the statements' classes and
    /// fingerprints.
    pub(crate) async fn call_sql<T>(
        &self,
        binding: &str,
        needs: &[Access],
        operation: Operation,
        detail: Option<String>,
        sql: Vec<SqlAudit>,
        f: impl AsyncFnOnce(&B) -> Result<(T, u64), CapError>,
    ) -> Result<T, CapError> {
        let call = Call {
            kind: self.kind,
            binding,
            needs,
            operation,
            detail,
            sql,
        };
        self.guard
            .run(call, async || f(self.backend(binding)?).await)
            .await
    }

    /// A host operation: its access comes from the operation.
    pub(crate) async fn host<T>(
        &self,
        binding: &str,
        operation: Operation,
        detail: &str,
        f: impl AsyncFnOnce(&B) -> Result<T, CapError>,
    ) -> Result<T, CapError> {
        self.guard
            .host(self.kind, binding, operation, detail, async || {
                f(self.backend(binding)?).await
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use upshift_model::grants::{BindingRequest, BoundName};

    fn bound(dir: &std::path::Path) -> (Bound<()>, Arc<AuditLog>) {
        let audit = Arc::new(AuditLog::open(&dir.join("audit.jsonl")).expect("audit"));
        let grants = GrantSet::resolve(
            "i",
            &[BindingRequest {
                name: "meta".into(),
                kind: BindingKind::Db,
                access: vec![Access::Read],
                purpose: "test".into(),
                optional: false,
            }],
            &[BoundName {
                name: "meta".into(),
                kind: BindingKind::Db,
                access: None,
            }],
        )
        .expect("grants");
        let caller = Caller {
            adapter_digest: "d".into(),
            instance: "i".into(),
        };
        let guard = Arc::new(Guard::new(caller, grants, audit.clone()));
        let mut bound = Bound::new(guard, BindingKind::Db);
        bound.bind("meta", ());
        (bound, audit)
    }

    #[tokio::test]
    async fn a_call_past_the_exports_deadline_is_abandoned_and_recorded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (bound, audit) = bound(dir.path());
        let slow = bound.call(
            "meta",
            &[Access::Read],
            Operation::Query,
            None,
            async |_| {
                tokio::time::sleep(Duration::from_secs(30)).await;
                Ok(((), 0))
            },
        );
        let started = Instant::now();
        let err = with_deadline(started + Duration::from_millis(100), slow)
            .await
            .expect_err("abandoned at the deadline");
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(err.to_string().contains("deadline"), "{err}");
        let records = crate::audit::verify(audit.path()).expect("verify");
        assert_eq!(records.records, 1, "the abandoned call is recorded once");

        // Outside an export there is no deadline.
        let quick = bound
            .call(
                "meta",
                &[Access::Read],
                Operation::Query,
                None,
                async |_| Ok((7, 1)),
            )
            .await;
        assert_eq!(quick, Ok(7));
    }

    /// Under a lease, a call waits while the lease is unconfirmed (the backend is not reached),
    /// goes ahead once a renewal confirms it, and is denied — audited, backend untouched — once
    /// the lease is lost.
    #[tokio::test]
    async fn calls_wait_for_an_unconfirmed_lease_and_are_denied_once_it_is_lost() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (bound, audit) = bound(dir.path());
        let ttl = Duration::from_secs(4);
        // Granted long enough ago that less than the margin (a quarter) is left.
        let tenure = Arc::new(Tenure::new(
            "i",
            7,
            ttl,
            ttl / 4,
            Instant::now() - Duration::from_millis(3500),
        ));
        bound.guard.set_tenure(Some(tenure.clone()));
        let reached = Arc::new(AtomicU64::new(0));
        let call = |reached: Arc<AtomicU64>| {
            let bound = &bound;
            async move {
                bound
                    .call(
                        "meta",
                        &[Access::Read],
                        Operation::Query,
                        None,
                        async |_| {
                            reached.fetch_add(1, Ordering::SeqCst);
                            Ok(((), 0))
                        },
                    )
                    .await
            }
        };
        let confirm = {
            let tenure = tenure.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                tenure.renewed(Instant::now());
            })
        };
        let waited = Instant::now();
        call(reached.clone()).await.expect("allowed once confirmed");
        assert!(waited.elapsed() >= Duration::from_millis(250), "it waited");
        assert_eq!(reached.load(Ordering::SeqCst), 1);
        confirm.await.expect("confirm");

        tenure.mark_lost(" to upshift on another host");
        let err = call(reached.clone()).await.expect_err("denied");
        assert!(
            matches!(&err, CapError::Denied(why) if why.contains("another host")),
            "{err}"
        );
        assert_eq!(
            reached.load(Ordering::SeqCst),
            1,
            "the backend was not reached"
        );
        let records = audit.records_where(None, |_| true).expect("records");
        let last = records.last().expect("a record");
        assert_eq!(last.event.decision, Decision::Denied);
        assert!(
            last.event
                .reason
                .as_deref()
                .unwrap_or("")
                .contains("is lost"),
            "{:?}",
            last.event.reason
        );
    }

    #[tokio::test]
    async fn records_written_in_an_export_are_charged_to_its_budget_and_cut() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (bound, audit) = bound(dir.path());
        let budget = StepBudget {
            host_calls: 3,
            audit_bytes: 1 << 20,
        };
        let spend = Arc::new(Spend::new(budget, "step `s`"));
        let long = format!("{}tail-that-says-why", "p".repeat(1 << 20));
        let denied = within_export(
            Instant::now() + Duration::from_secs(10),
            Some(spend.clone()),
            bound.call(
                "meta",
                &[Access::Write],
                Operation::Execute,
                Some(long.clone()),
                async |_| Ok(((), 0)),
            ),
        )
        .await;
        assert!(denied.is_err());
        let written = std::fs::metadata(audit.path()).expect("log").len();
        assert_eq!(
            spend.audit_bytes(),
            written,
            "the record's bytes are charged"
        );
        assert!(written < 8 << 10, "a 1 MiB detail is cut: {written} bytes");
        let records = crate::audit::verify(audit.path()).expect("verify");
        assert_eq!(records.records, 1);
        let text = std::fs::read_to_string(audit.path()).expect("log");
        assert!(text.contains("bytes cut) … ") && text.contains("tail-that-says-why"));

        // Outside an export nothing is charged.
        let _ = bound
            .call(
                "meta",
                &[Access::Read],
                Operation::Query,
                None,
                async |_| Ok(((), 0)),
            )
            .await;
        assert_eq!(spend.audit_bytes(), written);

        // The calls: three are allowed, the fourth is refused, and so is every later one.
        for _ in 0..3 {
            assert_eq!(spend.charge_call(), Ok(()));
        }
        for _ in 0..2 {
            let over = spend.charge_call().expect_err("over");
            assert!(
                over.to_string()
                    .contains("more than 3 host calls in step `s`")
                    && over.to_string().contains("host_calls_per_step"),
                "{over}"
            );
        }
        // The bytes: refused once the records written reach the budget.
        let small = Spend::new(
            StepBudget {
                host_calls: 100,
                audit_bytes: 10,
            },
            "`verify`",
        );
        small.bytes.store(10, Ordering::Relaxed);
        let over = small.charge_call().expect_err("over");
        assert!(over.to_string().contains("audit_bytes_per_step"), "{over}");
    }

    #[tokio::test]
    async fn a_denied_call_never_reaches_the_backend() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (bound, _) = bound(dir.path());
        let mut reached = false;
        let err = bound
            .call(
                "meta",
                &[Access::Write],
                Operation::Execute,
                None,
                async |_| {
                    reached = true;
                    Ok(((), 0))
                },
            )
            .await
            .expect_err("write is not granted");
        assert!(matches!(err, CapError::Denied(_)), "{err:?}");
        assert!(!reached);
    }
}
