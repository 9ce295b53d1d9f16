//! `upshift resume RUN`: continue an upgrade after the host died in the middle of it.
//!
//! The journal says which steps finished. Those are skipped. The one step whose outcome is
//! unknown (journaled as started, never as finished) is re-checked by host inspection before
//! anything else happens: a service's state and version, the backup catalog. A step that only
//! reads, or whose effect inspection shows missing, runs again; a step with side effects whose
//! effect cannot be established (a mutating adapter step, a restore, a one-shot job) is never
//! repeated: the run stops with exit 5, the instance's exact state and the commands to run. A
//! run that was rolling back finishes its rollback.
//!
//! Before any of that, resume reconciles: it re-reads every service the run touches (running or
//! not, its version) and the adapter's `detect`, and compares them with what the journal implies
//! (the state `apply` recorded before the run, changed by each journaled step). Where they
//! disagree so that going on would act blindly — a service set to a version no journaled step
//! set, data newer than the run's target or changed although no step of the run changed it, an
//! older binary about to start on newer data with no backup of the run restored first — it stops
//! with exit 5, touching nothing, and leaves the run unfinished for `abandon` or a restore. A
//! service merely stopped or started by hand is put back where the journal left it. What it
//! found is reported and journaled (phase `reconcile`).

use serde::Deserialize;

use crate::fleet::Fleet;
use std::collections::BTreeMap;

use crate::runtime::bindings::{Action, Detection, Plan, Step};
use crate::state::{BackupRecord, RunRecord, RunStatus, StepRecord, StepStatus};

use super::apply::{
    Forward, Outcome, RunReport, StepLine, conclude, denials, detect, operator_help, prepare,
};
use super::executor::{RunContext, StepResult};
use super::plan::{self, Fix, Journaled, LiveService, Onward, Prior, Reached, RollbackAction};
use super::{OpError, Session};

/// What `apply` journaled with the run.
#[derive(Deserialize)]
struct Saved {
    plan: Plan,
    prior: Prior,
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
        duration_ms: 0,
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
    // What the killed host left half-made (a `.partial`, an uncatalogued clone) goes first.
    for line in super::gc::clear_run(session, &caps, run_id, RESUME).await {
        session.events.emit(crate::caps::Event::Log {
            instance: instance.name.clone(),
            level: "info".into(),
            message: line,
        });
    }
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
    let mut forward = Forward {
        resumed: true,
        ..Forward::default()
    };
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
    let failing = rolling_back || forward.failure.is_some();
    if failing && unknown.is_some() {
        forward.reached.push(Reached::Started);
    }
    // The host's rollback for where the run got (what `conclude` derives), and how far it ran.
    let actions = plan::rollback(
        &steps[..forward.reached.len()],
        &forward.reached,
        &saved.prior,
    );
    let rolled = journaled(&journal, "rollback", actions.len());
    let done = rolled.iter().take_while(|j| **j == Journaled::Done).count();
    let mut forward_journal = journaled(&journal, "forward", steps.len());
    forward_journal.truncate(forward.reached.len() + usize::from(unknown.is_some() && !failing));
    let onward = if failing {
        Onward::Rollback(&actions[done..])
    } else {
        Onward::Forward(&steps[forward.reached.len()..])
    };
    let found = match reconcile(
        &ctx,
        &run,
        &saved,
        &forward_journal,
        &actions,
        &rolled,
        onward,
    )
    .await?
    {
        Reconciliation::Agrees(found) => found,
        Reconciliation::Disagrees { found, why } => {
            let backups: Vec<BackupRecord> =
                forward.backups.iter().map(|(_, b)| b.clone()).collect();
            let help = disagreement_help(session, instance, &run, &backups, &found).await;
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
                found,
            });
        }
    };
    let mut found = found;
    if failing && let Some(i) = unknown {
        // The forward step the host stopped during is undone by the rollback below.
        ctx.close_step(
            "forward",
            i as u32,
            StepStatus::Failed,
            None,
            Some(&format!(
                "interrupted: its host stopped during it; resumed by {}, which rolls the run back",
                held.lease().holder
            )),
        )
        .await?;
    }
    if failing {
        // It was failing: finish the host's rollback (the steps that already succeeded stay done).
        forward
            .failure
            .get_or_insert_with(|| "the run was rolling back when the host stopped".into());
        let report = conclude(
            &ctx,
            instance,
            &saved.plan,
            &saved.prior,
            &run.from_version,
            &run.to_version,
            forward,
            done,
        )
        .await?;
        return Ok(RunReport { found, ..report });
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
                found.push(format!(
                    "step `{}` had not finished when the host stopped: {why}; it counts as done",
                    step.id
                ));
                forward
                    .reached
                    .push(Reached::Done(backup.as_ref().map(|b| b.id.clone())));
                if let Some(b) = backup {
                    forward.backups.push((step.id.clone(), *b));
                }
                ctx.close_step(
                    "forward",
                    i as u32,
                    StepStatus::Succeeded,
                    Some(&format!(
                        "interrupted when its host stopped; resumed by {}, which found it done: {why}",
                        held.lease().holder
                    )),
                    None,
                )
                .await?;
                forward
                    .lines
                    .push(line(step, format!("outcome re-checked: {why}")));
            }
            Established::Again(why) => {
                found.push(format!(
                    "step `{}` had not finished when the host stopped: {why}; it runs again",
                    step.id
                ));
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
                found.push(why.clone());
                let backups: Vec<BackupRecord> =
                    forward.backups.iter().map(|(_, b)| b.clone()).collect();
                let mut help = operator_help(&instance.name, &caps, &backups, &why).await;
                help.push_str(&format!(
                    "If you have established that step `{}` did complete, finish the run with:\n  upshift resume {run_id} --step-done {}\n",
                    step.id, step.id
                ));
                super::apply::end_run(session, &held, run_id, RunStatus::Failed, Some(&why))
                    .await?;
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
                    found,
                });
            }
        }
    }
    let forward = super::apply::run_forward_from(&ctx, steps, forward).await;
    let report = conclude(
        &ctx,
        instance,
        &saved.plan,
        &saved.prior,
        &run.from_version,
        &run.to_version,
        forward,
        0,
    )
    .await?;
    Ok(RunReport { found, ..report })
}

/// How far each of the first `count` steps of `phase` got, as journaled (up to the first
/// step never journaled).
fn journaled(journal: &[StepRecord], phase: &str, count: usize) -> Vec<Journaled> {
    (0..count)
        .map_while(|seq| {
            journal
                .iter()
                .find(|j| j.phase == phase && j.seq as usize == seq)
                .map(|j| match j.status {
                    StepStatus::Succeeded => Journaled::Done,
                    _ => Journaled::Unfinished,
                })
        })
        .collect()
}

/// The outcome of comparing the live instance with the journal.
enum Reconciliation {
    /// Nothing stops the run (services found moved by hand were put back): what was found.
    Agrees(Vec<String>),
    /// Going on would act blindly: what was found, and why not.
    Disagrees { found: Vec<String>, why: String },
}

/// Re-read the live state (every service the run touches, the adapter's `detect`), compare it
/// with what the journal implies, journal what was found (phase `reconcile`) and put back
/// services found stopped or started by hand.
async fn reconcile(
    ctx: &RunContext<'_>,
    run: &RunRecord,
    saved: &Saved,
    forward: &[Journaled],
    actions: &[RollbackAction],
    rolled: &[Journaled],
    onward: Onward<'_>,
) -> Result<Reconciliation, OpError> {
    let expected = plan::expected(&saved.plan.steps, forward, actions, rolled, &saved.prior);
    let services = ctx.caps.service();
    let mut live = BTreeMap::new();
    for binding in expected.services.keys() {
        match services.inspect(binding, Some(RESUME)).await {
            Ok(s) => {
                live.insert(
                    binding.clone(),
                    LiveService {
                        running: s.running,
                        version: s.version,
                        job: services.is_job(binding),
                    },
                );
            }
            // Unbound, or not granted `inspect`: nothing to compare.
            Err(crate::caps::CapError::Denied(_) | crate::caps::CapError::UnknownBinding(_)) => {}
            Err(e) => return Err(host(e)),
        }
    }
    let (now, detect_failed) = match detect(ctx.session, ctx.adapter, &ctx.caps).await {
        Ok(d) => (Some(d), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let mut result = plan::reconcile(
        &expected,
        &live,
        &saved.detection,
        now.as_ref(),
        &saved.prior,
        &run.to_version,
        onward,
    );
    if let Some(e) = detect_failed {
        result.found.push(format!("detect: {e}"));
    }
    let session = ctx.session;
    let journal = session.state.steps(&run.id).await.map_err(host)?;
    let mut seq = journal.iter().filter(|j| j.phase == "reconcile").count() as u32;
    let fixes = result.fixes.len();
    let found = result.found.clone();
    let disagreements = result.disagreements.clone();
    let checked = ctx
        .step(
            "reconcile",
            seq,
            1,
            1 + fixes,
            "reconcile",
            "compare the instance with the journal",
            async || {
                if disagreements.is_empty() {
                    Ok(StepResult {
                        summary: found.join("\n"),
                        backup: None,
                    })
                } else {
                    Err(disagreements
                        .iter()
                        .chain(&found)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join("\n"))
                }
            },
        )
        .await;
    let mut found = result.found;
    if !result.disagreements.is_empty() {
        let why = format!(
            "the instance is not where run {}'s journal left it, so resume did not act: {}",
            run.id,
            result.disagreements.join("; ")
        );
        found.splice(0..0, result.disagreements);
        return Ok(Reconciliation::Disagrees { found, why });
    }
    if let Err(e) = checked {
        return Err(OpError::Host(format!(
            "cannot journal what resume found: {e}"
        )));
    }
    for (k, fix) in result.fixes.iter().enumerate() {
        seq += 1;
        let (id, title) = match fix {
            Fix::Stop(b) => (
                format!("reconcile-stop-{b}"),
                format!("stop service `{b}` again"),
            ),
            Fix::Start(b) => (
                format!("reconcile-start-{b}"),
                format!("start service `{b}` again"),
            ),
        };
        let r = ctx
            .step(
                "reconcile",
                seq,
                k + 2,
                1 + fixes,
                &id,
                &title,
                async || {
                    match fix {
                        Fix::Stop(b) => services.stop(b, RESUME).await,
                        Fix::Start(b) => services.start(b, RESUME).await,
                    }
                    .map(|summary| StepResult {
                        summary,
                        backup: None,
                    })
                    .map_err(|e| e.to_string())
                },
            )
            .await;
        match r {
            Ok(done) => found.push(format!("{title}: {}", done.summary)),
            Err(e) => {
                found.push(format!("{title}: failed: {e}"));
                return Ok(Reconciliation::Disagrees {
                    why: format!(
                        "resume could not put the instance back where run {}'s journal left it ({title}: {e})",
                        run.id
                    ),
                    found,
                });
            }
        }
    }
    Ok(Reconciliation::Agrees(found))
}

/// What an operator reads when resume stops before acting: what it found, and the commands
/// (the run stays unfinished until it is abandoned).
async fn disagreement_help(
    session: &Session,
    instance: &crate::fleet::Instance,
    run: &RunRecord,
    taken: &[BackupRecord],
    found: &[String],
) -> String {
    let name = &instance.name;
    let id = &run.id;
    let mut out = format!(
        "Run {id} was not resumed: instance `{name}` is not where the run's journal left it, and going on would act blindly.\nNothing was touched. What resume found:\n"
    );
    for f in found {
        out.push_str(&format!("  - {f}\n"));
    }
    out.push_str(&format!(
        "The run stays unfinished. Once you have decided what instance `{name}` should be:\n  - if it is right as it is now, end the run without touching anything:\n    upshift abandon {id} --why \"WHAT YOU FOUND\"\n"
    ));
    // A backup of this run, else the newest valid one of the instance at the run's from-version.
    let earlier = session
        .state
        .backups(Some(name))
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|b| b.valid && b.product_version == run.from_version)
        .max_by(|a, b| a.created_at.cmp(&b.created_at));
    match taken.first().cloned().or(earlier) {
        Some(b) => out.push_str(&format!(
            "  - to put back the data and version {} from before the run, end it and restore backup {} (taken {}{}):\n    upshift abandon {id} --why \"WHAT YOU FOUND\"\n    upshift restore {name} {}\n",
            run.from_version,
            b.id,
            b.created_at,
            b.run_id
                .as_deref()
                .filter(|r| *r != id.as_str())
                .map(|r| format!(" by run {r}"))
                .unwrap_or_default(),
            b.id
        )),
        None => out.push_str(&format!(
            "  - no backup of `{name}` at {} is catalogued (`upshift backups {name}`), so the data from before the run cannot be put back by Upshift\n",
            run.from_version
        )),
    }
    out
}

/// In a resumed rollback, whether `action`'s effect is already there (a service switched back
/// or started by hand): then it is not done again. `None`: do it.
pub(super) async fn already_done(
    ctx: &RunContext<'_>,
    action: &RollbackAction,
) -> Result<Option<String>, String> {
    let services = ctx.caps.service();
    let inspect = async |b: &str| {
        services
            .inspect(b, Some(RESUME))
            .await
            .map_err(|e| e.to_string())
    };
    Ok(match action {
        RollbackAction::Switch { binding, version } => {
            let s = inspect(binding).await?;
            (s.version == *version).then(|| format!("`{binding}` is already at {version}"))
        }
        RollbackAction::Start { binding } if !services.is_job(binding) => {
            let s = inspect(binding).await?;
            s.running
                .then(|| format!("`{binding}` already runs {} ({})", s.version, s.detail))
        }
        _ => None,
    })
}

/// In a resumed rollback, right before `binding` starts: never an older binary on newer data.
pub(super) async fn safe_to_start(ctx: &RunContext<'_>, binding: &str) -> Result<(), String> {
    let services = ctx.caps.service();
    let status = services
        .inspect(binding, Some(RESUME))
        .await
        .map_err(|e| e.to_string())?;
    let Ok(detection) = detect(ctx.session, ctx.adapter, &ctx.caps).await else {
        return Ok(());
    };
    let (Some((source, at)), Ok(version)) = (
        plan::data_version(&detection),
        upshift_model::version::check(&status.version),
    ) else {
        return Ok(());
    };
    if at > version {
        return Err(format!(
            "not starting `{binding}` at {}: the data is newer ({source}); restore a backup taken at {} first",
            status.version, status.version
        ));
    }
    Ok(())
}
