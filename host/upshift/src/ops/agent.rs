//! `upshift agent`: claim instance runs from the shared work queue and carry them out, on as
//! many machines as there are agents. Claims use `FOR UPDATE SKIP LOCKED`, runs hold the same
//! instance leases and fencing as every run, and an item whose agent died (its lease expired)
//! is claimed again and its interrupted run *resumed*, never started twice.

use std::time::Duration;

use serde::Serialize;

use crate::fleet::Fleet;
use crate::queue::{Claim, QueueItem};
use crate::state::RunStatus;

use super::apply::{self, Outcome};
use super::{OpError, Session, resume};

/// What an agent did with one item.
#[derive(Debug, Clone, Serialize)]
pub struct Handled {
    /// Instance.
    pub instance: String,
    /// How it ended (`succeeded`, `rolled-back`, `refused`, `needs-operator`, `nothing-changed`,
    /// `error: …`).
    pub outcome: String,
    /// Whether the item had been abandoned by a dead agent.
    pub reclaimed: bool,
    /// Whether an interrupted run was resumed rather than a new one started.
    pub resumed: bool,
}

fn outcome_name(o: Outcome) -> &'static str {
    match o {
        Outcome::Succeeded => "succeeded",
        Outcome::Refused => "refused",
        Outcome::RolledBack => "rolled-back",
        Outcome::NeedsOperator => "needs-operator",
        Outcome::NothingChanged => "nothing-changed",
    }
}

fn status_name(s: RunStatus) -> &'static str {
    match s {
        RunStatus::Running => "running",
        RunStatus::Succeeded => "succeeded",
        RunStatus::Refused => "refused",
        RunStatus::RolledBack => "rolled-back",
        RunStatus::Failed => "needs-operator",
        RunStatus::Abandoned => "abandoned",
        RunStatus::NothingChanged => "nothing-changed",
    }
}

/// Carry out one claimed item: resume the item's interrupted run if there is one, report an
/// already finished one, else start it.
async fn handle(session: &Session, fleet: &Fleet, claim: &Claim) -> Handled {
    let mut handled = Handled {
        instance: claim.item.instance.clone(),
        outcome: String::new(),
        reclaimed: claim.reclaimed,
        resumed: false,
    };
    let instance = match fleet.instance(&claim.item.instance) {
        Ok(i) => i,
        Err(e) => {
            handled.outcome = format!("error: {e}");
            return handled;
        }
    };
    // A run of this item exists when an earlier claim started it.
    let earlier = session
        .state
        .runs(Some(&instance.name), 20)
        .await
        .unwrap_or_default()
        .into_iter()
        .find(|r| {
            r.kind == "upgrade"
                && r.to_version == claim.item.target
                && r.started_at >= claim.enqueued_at
        });
    let result = match earlier {
        Some(run) if run.status == RunStatus::Running => {
            handled.resumed = true;
            resume::resume(session, fleet, &run.id, None).await
        }
        Some(run) => {
            handled.outcome = status_name(run.status).to_string();
            return handled;
        }
        None => apply::apply(session, instance, &claim.item.target, |_| true).await,
    };
    handled.outcome = match result {
        Ok(report) => outcome_name(report.outcome).to_string(),
        Err(e) => format!("error: {e}"),
    };
    handled
}

/// Put instances on the queue for agents.
pub async fn enqueue(session: &Session, items: &[QueueItem]) -> Result<usize, OpError> {
    let queue = session.state.queue().ok_or_else(|| {
        OpError::Usage("the work queue lives in shared state: pass --state postgres://…".into())
    })?;
    queue
        .enqueue(items)
        .await
        .map_err(|e| OpError::Host(e.to_string()))
}

/// Claim and carry out items until the queue is empty (`until_empty`) or forever. Items other
/// agents hold are waited for, so an agent that dies mid-run has its item taken over.
pub async fn run(
    session: &Session,
    fleet: &Fleet,
    name: &str,
    until_empty: bool,
) -> Result<Vec<Handled>, OpError> {
    let queue = session.state.queue().ok_or_else(|| {
        OpError::Usage("`upshift agent` needs shared state: pass --state postgres://…".into())
    })?;
    session.act_as_agent(name);
    let mut done = Vec::new();
    loop {
        // SIGINT/SIGTERM: the item in hand was finished (or rolled back); claim no more.
        if session.stop().requested().is_some() {
            return Ok(done);
        }
        let claimed = queue
            .claim(name)
            .await
            .map_err(|e| OpError::Host(e.to_string()))?;
        match claimed {
            Some(claim) => {
                let handled = handle(session, fleet, &claim).await;
                queue
                    .finish(&claim.item.instance, &handled.outcome)
                    .await
                    .map_err(|e| OpError::Host(e.to_string()))?;
                done.push(handled);
            }
            None => {
                let left = queue
                    .remaining()
                    .await
                    .map_err(|e| OpError::Host(e.to_string()))?;
                if until_empty && left == 0 {
                    return Ok(done);
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
}
