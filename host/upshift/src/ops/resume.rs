//! `upshift resume RUN`: continue an upgrade after the host died in the middle of it.
//!
//! The journal says which steps finished. Those are skipped. The one step whose outcome is
//! unknown (journaled as started, never as finished) is re-checked by host inspection before
//! anything else happens: a service's state and version, the backup catalog. A step that only
//! reads, or whose effect inspection shows missing, runs again; a step with side effects whose
//! effect cannot be established (a mutating adapter step, a restore, a one-shot job) is never
//! repeated: the run stops with exit 5, the instance's exact state and the commands to run. A
//! run that was rolling back finishes its rollback.

use serde::Deserialize;

use crate::fleet::Fleet;
use crate::runtime::bindings::{Action, Detection, Plan, Step};
use crate::state::{BackupRecord, RunStatus, StepStatus};

use super::apply::{
    Forward, Outcome, RunReport, StepLine, conclude, denials, operator_help, prepare,
};
use super::executor::RunContext;
use super::plan::{Prior, Reached};
use super::{OpError, Session};

/// What `apply` journaled with the run.
#[derive(Deserialize)]
struct Saved {
    plan: Plan,
    prior: Prior,
    #[allow(dead_code)]
    detection: Detection,
}

/// What inspection says about a step whose outcome is unknown.
enum Established {
    /// Its effect is there: count it as done.
    Done(String, Option<Box<BackupRecord>>),
    /// Its effect is not there, and running it again is safe.
    Again(String),
    /// Its effect cannot be established, and repeating it is not safe.
    Unknown(String),
}

/// The audit detail of the inspections that establish an interrupted step.
const RESUME: &str = "host resume";

fn host(e: impl std::fmt::Display) -> OpError {
    OpError::Host(e.to_string())
}

async fn establish(
    ctx: &RunContext<'_>,
    step: &Step,
    taken: &[BackupRecord],
) -> Result<Established, OpError> {
    let services = ctx.caps.service();
    let inspect = async |b: &str| services.inspect(b, Some(RESUME)).await.map_err(host);
    Ok(match &step.action {
        Action::ServiceStop(b) => match inspect(b).await? {
            s if !s.running => Established::Done(format!("`{b}` is stopped"), None),
            _ => Established::Again(format!("`{b}` still runs")),
        },
        Action::ServiceStart(b) => {
            let status = inspect(b).await?;
            if services.is_job(b) {
                if services.healthy(b, Some(RESUME)).await.map_err(host)? {
                    Established::Done(format!("job `{b}` completed"), None)
                } else {
                    Established::Unknown(format!(
                        "job `{b}` (version {}) may have run partly when the host stopped; it is not repeated blindly",
                        status.version
                    ))
                }
            } else if status.running {
                Established::Done(format!("`{b}` runs {}", status.version), None)
            } else {
                Established::Again(format!("`{b}` is not running"))
            }
        }
        Action::ServiceSwitch(a) => {
            let status = inspect(&a.binding).await?;
            if status.version == a.version {
                Established::Done(format!("`{}` is set to {}", a.binding, a.version), None)
            } else {
                Established::Again(format!("`{}` is still at {}", a.binding, status.version))
            }
        }
        Action::DbBackup(a) => match taken.iter().find(|b| b.binding == a.binding) {
            Some(b) => Established::Done(
                format!("backup {} is catalogued", b.id),
                Some(Box::new(b.clone())),
            ),
            None => Established::Again(format!(
                "no backup of `{}` reached the catalog (an interrupted dump never does)",
                a.binding
            )),
        },
        Action::FilesSnapshot(binding) => match taken.iter().find(|b| b.binding == *binding) {
            Some(b) => Established::Done(
                format!("snapshot {} is catalogued", b.id),
                Some(Box::new(b.clone())),
            ),
            None => Established::Again(format!("no snapshot of `{binding}` reached the catalog")),
        },
        Action::WaitHealthy(_) | Action::HttpCheck(_) => Established::Again("it only reads".into()),
        Action::Custom(c) if !c.mutates => Established::Again("it only reads".into()),
        Action::Custom(c) => Established::Unknown(format!(
            "adapter step `{}` changes things and its outcome cannot be established",
            c.name
        )),
        Action::DbRestore(_) | Action::FilesRestore(_) => {
            Established::Unknown("a restore may have been half done".into())
        }
    })
}

fn line(step: &Step, message: String) -> StepLine {
    StepLine {
        phase: "forward".into(),
        id: step.id.clone(),
        title: step.title.clone(),
        ok: true,
        message,
    }
}

/// Resume run `run_id`. `step_done` is the operator's word that the step with that id, whose
/// outcome was unknown, did complete (`--step-done ID`).
pub async fn resume(
    session: &Session,
    fleet: &Fleet,
    run_id: &str,
    step_done: Option<&str>,
) -> Result<RunReport, OpError> {
    let run = session
        .state
        .run(run_id)
        .await
        .map_err(host)?
        .ok_or_else(|| {
            OpError::Usage(format!("no run `{run_id}`; `upshift history` lists them"))
        })?;
    // A later run of the instance acted on what this one left: going on from this run's
    // journal would undo or repeat over that run's work.
    if matches!(run.status, RunStatus::Running | RunStatus::Failed)
        && let Some(later) = session.state.runs_after(&run).await.map_err(host)?.first()
    {
        return Err(OpError::Usage(format!(
            "run `{run_id}` cannot be resumed: the later run {} ({} {} → {}, started {}, {}) superseded it; {}",
            later.id,
            later.kind,
            later.from_version,
            later.to_version,
            later.started_at,
            later.status,
            if run.status == RunStatus::Running {
                format!(
                    "once instance `{}` is right, mark it ended with `upshift abandon {run_id} --why \"…\"`",
                    run.instance
                )
            } else {
                "it stays as it ended, and nothing more is needed for it".to_string()
            }
        )));
    }
    // A run handed to the operator at a step whose outcome was unknown goes on once the
    // operator says that step completed.
    let reopened = run.status == RunStatus::Failed && step_done.is_some();
    if run.status != RunStatus::Running && !reopened {
        return Err(OpError::Usage(format!(
            "run `{run_id}` is not interrupted: it ended as {}{}",
            run.status,
            if run.status == RunStatus::Failed {
                " (if it stopped at a step whose outcome was unknown, pass --step-done STEP once you have established that it completed)"
            } else {
                ""
            }
        )));
    }
    if run.kind != "upgrade" {
        return Err(OpError::Usage(format!(
            "run `{run_id}` is a {}; only upgrades are resumed (run the {} again)",
            run.kind, run.kind
        )));
    }
    let instance = fleet
        .instance(&run.instance)
        .map_err(|e| OpError::Usage(e.to_string()))?;
    // Only the resume of a run takes over the lease its dead holder left.
    let held = session
        .hold_lease_for_run(&instance.name, &format!("resume {run_id}"))
        .await?;
    let (adapter, caps) = prepare(session, instance).await?;
    if adapter.digest != run.adapter_digest {
        return Err(OpError::Usage(format!(
            "the adapter of `{}` changed since run {run_id} started (sha256 {} then, {} now); resume with the adapter that planned it, or restore its backup",
            instance.name,
            &run.adapter_digest[..12.min(run.adapter_digest.len())],
            &adapter.digest[..12.min(adapter.digest.len())]
        )));
    }
    let saved: Saved = serde_json::from_str(&run.plan_json)
        .map_err(|e| OpError::Host(format!("run {run_id} has no usable journaled plan: {e}")))?;
    let ctx = RunContext::attach(session, &adapter, &caps, &held, &run, None);
    let journal = session.state.steps(run_id).await.map_err(host)?;
    let taken: Vec<BackupRecord> = session
        .state
        .backups(Some(&instance.name))
        .await
        .map_err(host)?
        .into_iter()
        .filter(|b| b.run_id.as_deref() == Some(run_id))
        .collect();
    let steps = &saved.plan.steps;
    let mut forward = Forward::default();
    let mut unknown = None;
    for (i, step) in steps.iter().enumerate() {
        let Some(j) = journal
            .iter()
            .find(|j| j.phase == "forward" && j.seq as usize == i)
        else {
            break;
        };
        match j.status {
            StepStatus::Succeeded => {
                let backup = match &step.action {
                    Action::DbBackup(a) => taken.iter().find(|b| b.binding == a.binding),
                    Action::FilesSnapshot(b) => taken.iter().find(|t| t.binding == *b),
                    _ => None,
                };
                forward
                    .reached
                    .push(Reached::Done(backup.map(|b| b.id.clone())));
                if let Some(b) = backup {
                    forward.backups.push((step.id.clone(), b.clone()));
                }
                forward.lines.push(line(
                    step,
                    format!(
                        "done before the host stopped: {}",
                        j.output.clone().unwrap_or_default()
                    ),
                ));
            }
            StepStatus::Failed => {
                forward.reached.push(Reached::Started);
                forward.failure = Some(format!(
                    "step `{}` failed: {}",
                    step.id,
                    j.error.clone().unwrap_or_default()
                ));
                break;
            }
            _ => {
                unknown = Some(i);
                break;
            }
        }
    }
    let rolling_back = journal.iter().any(|j| j.phase == "rollback");
    if rolling_back || forward.failure.is_some() {
        // It was failing: finish the host's rollback (the steps that already succeeded stay done).
        if unknown.is_some() {
            forward.reached.push(Reached::Started);
        }
        forward
            .failure
            .get_or_insert_with(|| "the run was rolling back when the host stopped".into());
        let done = (0..)
            .take_while(|seq| {
                journal.iter().any(|j| {
                    j.phase == "rollback" && j.seq == *seq && j.status == StepStatus::Succeeded
                })
            })
            .count();
        return conclude(
            &ctx,
            instance,
            &saved.plan,
            &saved.prior,
            &run.from_version,
            &run.to_version,
            forward,
            done,
        )
        .await;
    }
    if let Some(i) = unknown {
        let step = &steps[i];
        let established = if step_done == Some(step.id.as_str()) {
            Established::Done("the operator established that it completed".into(), None)
        } else {
            establish(&ctx, step, &taken).await?
        };
        match established {
            Established::Done(why, backup) => {
                forward
                    .reached
                    .push(Reached::Done(backup.as_ref().map(|b| b.id.clone())));
                if let Some(b) = backup {
                    forward.backups.push((step.id.clone(), *b));
                }
                forward
                    .lines
                    .push(line(step, format!("outcome re-checked: {why}")));
            }
            Established::Again(why) => {
                caps.events.emit(crate::caps::Event::Log {
                    instance: instance.name.clone(),
                    level: "info".into(),
                    message: format!("step `{}` runs again: {why}", step.id),
                });
            }
            Established::Unknown(why) => {
                let why = format!(
                    "step `{}` had not finished when the host stopped, and {why}",
                    step.id
                );
                let backups: Vec<BackupRecord> =
                    forward.backups.iter().map(|(_, b)| b.clone()).collect();
                let mut help = operator_help(&instance.name, &caps, &backups, &why).await;
                help.push_str(&format!(
                    "If you have established that step `{}` did complete, finish the run with:\n  upshift resume {run_id} --step-done {}\n",
                    step.id, step.id
                ));
                session
                    .state
                    .finish_run(run_id, RunStatus::Failed, Some(&session.mask(&why)))
                    .await
                    .map_err(host)?;
                return Ok(RunReport {
                    run_id: run.id.clone(),
                    instance: instance.name.clone(),
                    from_version: run.from_version.clone(),
                    to_version: run.to_version.clone(),
                    outcome: Outcome::NeedsOperator,
                    steps: forward.lines,
                    checks: Vec::new(),
                    backups,
                    refusal: None,
                    failure: Some(why),
                    rollback_command: None,
                    operator_help: Some(help),
                    denials: denials(session, run_id).await,
                });
            }
        }
    }
    let forward = super::apply::run_forward_from(&ctx, steps, forward).await;
    conclude(
        &ctx,
        instance,
        &saved.plan,
        &saved.prior,
        &run.from_version,
        &run.to_version,
        forward,
        0,
    )
    .await
}
