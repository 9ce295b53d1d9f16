//! `upshift abandon RUN --why "…"`: the operator put the instance right by hand and ends an
//! unfinished run without the host touching anything. The reason goes into the run's journal
//! (a step of phase `operator`), its message, and the hash-chained audit log.

use serde::Serialize;

use crate::audit::{AuditEvent, Decision};
use crate::state::RunStatus;

use super::{OpError, Session};

/// What `upshift abandon` did.
#[derive(Debug, Clone, Serialize)]
pub struct Abandoned {
    /// The run.
    pub run_id: String,
    /// Its instance.
    pub instance: String,
    /// Its kind.
    pub kind: String,
    /// Its status before (`running`, or `failed` at a step whose outcome was unknown).
    pub was: RunStatus,
    /// The operator's reason, as recorded.
    pub why: String,
    /// The audit record's sequence number.
    pub audit_seq: u64,
}

fn host(e: impl std::fmt::Display) -> OpError {
    OpError::Host(e.to_string())
}

/// Mark run `run_id` abandoned for the reason `why`. Only an unfinished run can be abandoned,
/// and only while no live process holds its instance's lease; nothing but the journal and the
/// audit log is touched.
pub async fn abandon(session: &Session, run_id: &str, why: &str) -> Result<Abandoned, OpError> {
    let why = why.trim();
    if why.is_empty() {
        return Err(OpError::Usage(
            "--why is empty: say what you did by hand to the instance (it is kept in the run's journal and the audit log)".into(),
        ));
    }
    let run = session
        .state
        .run(run_id)
        .await
        .map_err(host)?
        .ok_or_else(|| {
            OpError::Usage(format!("no run `{run_id}`; `upshift history` lists them"))
        })?;
    let unfinished = session
        .state
        .unfinished_runs(&run.instance)
        .await
        .map_err(host)?
        .iter()
        .any(|r| r.id == run.id);
    if !unfinished {
        return Err(OpError::Usage(format!(
            "run `{run_id}` already ended ({}{}); only an unfinished run can be abandoned, and nothing was changed",
            run.status,
            run.message
                .as_deref()
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        )));
    }
    // A run still under way is not abandoned behind its back.
    let held = session
        .hold_lease_for_run(&run.instance, &format!("abandon {run_id}"))
        .await?;
    let why_masked = session.mask(why).into_owned();
    let event = AuditEvent {
        adapter_digest: run.adapter_digest.clone(),
        instance: run.instance.clone(),
        run_id: Some(run.id.clone()),
        binding: String::new(),
        capability: "host".into(),
        operation: "abandon".into(),
        decision: Decision::Allowed,
        reason: Some(why_masked.clone()),
        duration_us: 0,
        result_bytes: 0,
        error: None,
        detail: Some(format!(
            "the operator marked {} run {} abandoned (it was {})",
            run.kind, run.id, run.status
        )),
        sql: Vec::new(),
    };
    let audit = session.audit.clone();
    let audit_seq = tokio::task::spawn_blocking(move || audit.append(event))
        .await
        .map_err(host)?
        .map_err(|e| {
            OpError::Host(format!(
                "the abandon was not recorded in the audit log, and the run was left as it was: {e}"
            ))
        })?;
    let ended = session
        .state
        .abandon_run(held.lease(), &run.id, run.status, &why_masked)
        .await
        .map_err(|e| super::journal_error(&held, e))?;
    let _ = held.release().await;
    if !ended {
        return Err(OpError::Usage(format!(
            "run `{run_id}` changed while it was being abandoned; `upshift history --run {run_id}` shows it now"
        )));
    }
    Ok(Abandoned {
        run_id: run.id,
        instance: run.instance,
        kind: run.kind,
        was: run.status,
        why: why_masked,
        audit_seq,
    })
}
