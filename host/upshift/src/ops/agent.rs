//! `upshift agent`: claim instance runs from the shared work queue and carry them out, on as
//! many machines as there are agents. Claims use `FOR UPDATE SKIP LOCKED`, runs hold the same
//! instance leases and fencing as every run, and an item whose agent died (its lease expired)
//! is claimed again and its interrupted run *resumed*, never started twice.
//!
//! An agent rides out its state database: the store reconnects and retries each statement for
//! its state wait, and past that the agent keeps trying every few seconds, saying so on its
//! events, until the database is back or it is asked to stop. An item's outcome is written
//! only under the agent's own claim: when another agent claimed the item again meanwhile
//! (this one was paused or cut off past its lease), nothing is written and the item is
//! reported as lost.

use std::future::Future;
use std::time::Duration;

use serde::Serialize;

use crate::caps::Event;
use crate::fleet::Fleet;
use crate::lease::LeaseError;
use crate::queue::{Claim, QueueItem};
use crate::state::{RunStatus, StateError};

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
    /// Another agent claimed the item again before this one could record its outcome (this
    /// one was paused or cut off past its lease): nothing was written, and `outcome` says so.
    pub lost: bool,
}

/// What [`Handled::outcome`] says of an item another agent reclaimed.
pub const LOST: &str = "lost: another agent reclaimed it";

/// The first pause after the state database failed the agent; it doubles up to
/// [`STATE_RETRY_MAX`].
const STATE_RETRY_FIRST: Duration = Duration::from_secs(1);
/// The longest pause between the agent's attempts to reach the state database.
const STATE_RETRY_MAX: Duration = Duration::from_secs(5);

fn outcome_name(o: Outcome) -> &'static str {
    match o {
        Outcome::Succeeded => "succeeded",
        Outcome::Refused => "refused",
        Outcome::RolledBack => "rolled-back",
        Outcome::NeedsOperator => "needs-operator",
        Outcome::NothingChanged => "nothing-changed",
        Outcome::AlreadyThere => "already-there",
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
/// already finished one, else start it. Fails only when the state database could not tell
/// whether the item has a run already (nothing was started then).
async fn handle(session: &Session, fleet: &Fleet, claim: &Claim) -> Result<Handled, StateError> {
    let mut handled = Handled {
        instance: claim.item.instance.clone(),
        outcome: String::new(),
        reclaimed: claim.reclaimed,
        resumed: false,
        lost: false,
    };
    let instance = match fleet.instance(&claim.item.instance) {
        Ok(i) => i,
        Err(e) => {
            handled.outcome = format!("error: {e}");
            return Ok(handled);
        }
    };
    // A run of this item exists when an earlier claim started it.
    let earlier = session
        .state
        .runs(Some(&instance.name), 20)
        .await?
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
            return Ok(handled);
        }
        None => {
            let options = apply::PlanOptions {
                allow_unknown: claim.item.allow_unknown,
                ..apply::PlanOptions::default()
            };
            apply::apply_with(session, instance, &claim.item.target, &options, |_| true).await
        }
    };
    handled.outcome = match result {
        Ok(report) => outcome_name(report.outcome).to_string(),
        // Another holder has the instance now: it finishes (or undoes) the run; this agent
        // neither records an outcome for the item nor touches the instance again.
        Err(OpError::Busy(e @ LeaseError::Lost { .. })) => {
            handled.lost = true;
            format!("lost: {e}")
        }
        Err(e) => format!("error: {e}"),
    };
    Ok(handled)
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

/// Ask the state database `what` until it answers: a failure (the store already waited its
/// state wait for a lost connection) is reported as a `warn` event and tried again after a
/// pause growing to a few seconds. `None` when a stop was asked for meanwhile.
async fn patiently<T, F, Fut>(session: &Session, doing: &str, what: F) -> Option<T>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, StateError>>,
{
    let mut pause = STATE_RETRY_FIRST;
    let mut failures = 0u32;
    loop {
        match what().await {
            Ok(value) => {
                if failures > 0 {
                    session.events.emit(Event::Log {
                        instance: String::new(),
                        level: "info".into(),
                        message: format!("the state database answers again ({doing})"),
                    });
                }
                return Some(value);
            }
            Err(e) => {
                failures += 1;
                session.events.emit(Event::Log {
                    instance: String::new(),
                    level: "warn".into(),
                    message: format!(
                        "waiting for the state database ({doing}; attempt {failures}, next in {} s): {e}",
                        pause.as_secs()
                    ),
                });
            }
        }
        let until = tokio::time::Instant::now() + pause;
        while tokio::time::Instant::now() < until {
            if session.stop().requested().is_some() {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        pause = (pause * 2).min(STATE_RETRY_MAX);
    }
}

/// Claim and carry out items until the queue is empty (`until_empty`) or forever. Items other
/// agents hold are waited for, so an agent that dies mid-run has its item taken over. A state
/// database that cannot be reached does not end the agent: it waits for it (see the module's
/// documentation). SIGINT/SIGTERM end it after the item in hand.
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
        let Some(claimed) = patiently(session, "claiming an item", || queue.claim(name)).await
        else {
            return Ok(done);
        };
        match claimed {
            Some(claim) => {
                let Some(mut handled) = patiently(session, "reading the item's runs", || {
                    handle(session, fleet, &claim)
                })
                .await
                else {
                    return Ok(done);
                };
                // The lease was lost mid-run: the item is its new holder's to finish.
                if handled.lost {
                    done.push(handled);
                    continue;
                }
                // The item's outcome is recorded under this agent's claim; a stop asked for
                // meanwhile leaves it claimed, to be taken over after the lease.
                let Some(ours) = patiently(session, "recording the item's outcome", || {
                    queue.finish(&claim, &handled.outcome)
                })
                .await
                else {
                    return Ok(done);
                };
                if !ours {
                    handled.lost = true;
                    handled.outcome = format!("{LOST} (this agent's outcome: {})", handled.outcome);
                }
                done.push(handled);
            }
            None => {
                let Some(left) =
                    patiently(session, "counting the items left", || queue.remaining()).await
                else {
                    return Ok(done);
                };
                if until_empty && left == 0 {
                    return Ok(done);
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
}
