//! The flows: plan (live and offline), apply with automatic rollback, backup and restore.

use std::sync::Arc;

use serde::Serialize;

use crate::adapters;
use crate::audit::{AuditRecord, Decision};
use crate::caps::InstanceCaps;
use crate::fleet::Instance;
use crate::lease::Held;
use crate::runtime::LoadedAdapter;
use crate::runtime::bindings::{
    Action, BackupInfo, BackupMethod, Check, Detection, Fact, Plan, Refusal, RestoreRequest,
};
use crate::state::{BackupRecord, RunRecord, RunStatus};

use super::executor::{RunContext, StepResult};
use super::plan::{self, Prior, PriorService, Reached, RollbackAction};
use super::{OpError, Session};

/// A plan, or the product's refusal.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum PlanOutcome {
    /// The steps to run.
    Plan(#[serde(serialize_with = "serialize_plan")] Plan),
    /// Why not, and the way forward.
    Refused(Refusal),
}

/// A plan in the machine interface's spelling ([`super::plan::plan_json`]).
fn serialize_plan<S: serde::Serializer>(plan: &Plan, serializer: S) -> Result<S::Ok, S::Error> {
    serde::Serialize::serialize(&super::plan::plan_json(plan), serializer)
}

/// What `upshift plan` shows.
#[derive(Debug, Clone, Serialize)]
pub struct PlanReport {
    /// Instance name (empty for offline plans).
    pub instance: String,
    /// Product.
    pub product: String,
    /// Adapter digest.
    pub adapter_digest: String,
    /// What detection found (offline: the given version, no facts).
    pub detection: Detection,
    /// The plan or refusal.
    pub outcome: PlanOutcome,
    /// Services' state before (live plans).
    pub prior: Prior,
    /// What the host will do if the run fails after its last step.
    pub rollback: Vec<RollbackAction>,
    /// Database bindings whose role is privileged, accepted with `privileged = true` (e.g.
    /// "binding `meta` connects as role `postgres`, a superuser (privileged = true)").
    pub privileged: Vec<String>,
    /// The preflight's checks (live plans): health, sessions, disk.
    pub preflight: Vec<super::preflight::PreflightCheck>,
}

/// The rule id every adapter's plan refuses with when the instance already runs the target
/// (the SDK's `already-at-target`): the host treats it as nothing to do, not as a refusal.
pub const ALREADY_AT_TARGET: &str = "already-at-target";

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Done and verified.
    Succeeded,
    /// The product's rules refused it; nothing changed.
    Refused,
    /// It failed and was rolled back to the previous version and data.
    RolledBack,
    /// It failed and could not be put back: an operator is needed.
    NeedsOperator,
    /// It failed before any step with an effect completed: nothing was changed, so nothing
    /// was rolled back.
    NothingChanged,
    /// The instance already runs the target: nothing to do, and no run is recorded.
    AlreadyThere,
}

/// One step as reported.
#[derive(Debug, Clone, Serialize)]
pub struct StepLine {
    /// `forward` or `rollback`.
    pub phase: String,
    /// Step id.
    pub id: String,
    /// Title.
    pub title: String,
    /// Whether it succeeded.
    pub ok: bool,
    /// Summary or error.
    pub message: String,
    /// How long it took, in milliseconds (0 for a step a resumed run found done).
    pub duration_ms: u64,
}

/// Milliseconds since `start`, saturating.
fn elapsed_ms(start: std::time::Instant) -> u64 {
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// What `upshift apply` / `upshift restore` report.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// Run id.
    pub run_id: String,
    /// Instance.
    pub instance: String,
    /// Version before.
    pub from_version: String,
    /// Version asked for.
    pub to_version: String,
    /// How it ended.
    pub outcome: Outcome,
    /// Steps run, in order.
    pub steps: Vec<StepLine>,
    /// Verification checks.
    pub checks: Vec<Check>,
    /// Backups taken.
    pub backups: Vec<BackupRecord>,
    /// The refusal, when refused.
    pub refusal: Option<Refusal>,
    /// Why it was rolled back or stopped.
    pub failure: Option<String>,
    /// The command that returns the instance to where it was before this run.
    pub rollback_command: Option<String>,
    /// For an operator: the state left behind and what to run.
    pub operator_help: Option<String>,
    /// Denied capability calls during this run.
    pub denials: Vec<AuditRecord>,
    /// What `resume` found when it compared the instance with the run's journal, one line each
    /// (empty for runs that were not resumed).
    pub found: Vec<String>,
}

impl RunReport {
    /// A report of a run that ran no step (already there, refused): `outcome`, nothing else.
    fn without_steps(
        run_id: String,
        instance: &str,
        from: String,
        to: String,
        outcome: Outcome,
    ) -> RunReport {
        RunReport {
            run_id,
            instance: instance.to_string(),
            from_version: from,
            to_version: to,
            outcome,
            steps: Vec::new(),
            checks: Vec::new(),
            backups: Vec::new(),
            refusal: None,
            failure: None,
            rollback_command: None,
            operator_help: None,
            denials: Vec::new(),
            found: Vec::new(),
        }
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn host(e: impl std::fmt::Display) -> OpError {
    OpError::Host(e.to_string())
}

/// Load an instance's adapter and capabilities.
pub async fn prepare(
    session: &Session,
    instance: &Instance,
) -> Result<(LoadedAdapter, Arc<InstanceCaps>), OpError> {
    let adapter = session.load_adapter(instance).await?;
    let caps = session.caps_for(instance, &adapter)?;
    Ok((adapter, caps))
}

/// Call the adapter's `detect`.
pub async fn detect(
    session: &Session,
    adapter: &LoadedAdapter,
    caps: &Arc<InstanceCaps>,
) -> Result<Detection, OpError> {
    let out = session.runtime.detect(adapter, caps.clone()).await?;
    out.map_err(|e| {
        OpError::Host(format!(
            "instance `{}`: the {} adapter could not detect the running version: {}",
            caps.caller().instance,
            adapter.manifest.product,
            e.message
        ))
    })
}

pub(crate) async fn call_plan(
    session: &Session,
    adapter: &LoadedAdapter,
    detection: &Detection,
    target: &str,
) -> Result<Result<Plan, Refusal>, OpError> {
    upshift_model::version::check(target)
        .map_err(|e| OpError::Usage(format!("the target version: {e}")))?;
    let out = session.runtime.plan(adapter, detection, target).await?;
    if let Err(r) = &out {
        plan::validate_refusal(r).map_err(|why| fault(session, adapter, "plan", why))?;
    }
    Ok(out)
}

/// A plan asks for an action that is not granted: refused before anything runs, and audited
/// as a denial.
fn ungranted(adapter: &LoadedAdapter, caps: &InstanceCaps, export: &str, why: String) -> OpError {
    let why = format!("adapter {}'s plan was refused: {why}", adapter.label);
    match caps.refuse_plan(export, why.clone()) {
        crate::caps::CapError::Denied(_) => OpError::Usage(why),
        audit_failed => OpError::Host(audit_failed.to_string()),
    }
}

/// The adapter broke the contract: blamed on it and audited.
fn fault(session: &Session, adapter: &LoadedAdapter, export: &str, reason: String) -> OpError {
    OpError::Adapter(session.runtime.audited(
        adapter,
        None,
        crate::runtime::AdapterFault {
            adapter: adapter.label.clone(),
            short: adapter.short_digest().to_string(),
            export: export.into(),
            reason,
        },
    ))
}

async fn prior_of(plan: &Plan, caps: &InstanceCaps) -> Result<Prior, OpError> {
    let mut prior = Prior::default();
    for step in &plan.steps {
        let binding = match &step.action {
            Action::ServiceStop(b) | Action::ServiceStart(b) => b,
            Action::ServiceSwitch(a) => &a.binding,
            _ => continue,
        };
        if prior.services.contains_key(binding) {
            continue;
        }
        let status = match caps
            .service()
            .inspect(binding, Some("host inspection"))
            .await
        {
            Ok(status) => status,
            // Unbound, or not granted `inspect`: no prior state is known.
            Err(crate::caps::CapError::Denied(_) | crate::caps::CapError::UnknownBinding(_)) => {
                continue;
            }
            Err(e) => return Err(host(e)),
        };
        prior.services.insert(
            binding.clone(),
            PriorService {
                running: status.running,
                version: status.version,
                detail: status.detail,
            },
        );
    }
    Ok(prior)
}

/// The fact the host appends to the detection handed to an adapter's `plan` when the operator
/// passed `--allow-unknown`: plan a target release the adapter's catalog does not know.
pub const ALLOW_UNKNOWN_FACT: &str = "operator.allow-unknown-release";

/// The operator's wait-healthy limits in `plan`: `--timeout` for every wait-healthy step,
/// else the binding's `wait_healthy_secs`; each replaced timeout is noted in the plan.
fn operator_timeouts(plan: &mut Plan, caps: Option<&InstanceCaps>, options: &PlanOptions) {
    let mut notes = Vec::new();
    for step in &mut plan.steps {
        let crate::runtime::bindings::Action::WaitHealthy(wait) = &mut step.action else {
            continue;
        };
        let fleet_limit = caps.and_then(|caps| caps.service().wait_limit(&wait.binding));
        let (secs, source) = match (options.wait_healthy_secs, fleet_limit) {
            (Some(secs), _) => (secs, "--timeout"),
            (None, Some(limit)) => (limit.as_secs(), "the fleet file's wait_healthy_secs"),
            (None, None) => continue,
        };
        let ms = u32::try_from(secs.saturating_mul(1000)).unwrap_or(u32::MAX);
        notes.push(format!(
            "step `{}` waits up to {secs} s for `{}` to be healthy ({source}; the adapter asked for {} s)",
            step.id,
            wait.binding,
            wait.timeout_ms / 1000
        ));
        wait.timeout_ms = ms;
    }
    plan.notes.extend(notes);
}

/// What the operator allows a plan beyond the adapter's own rules.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlanOptions {
    /// `--allow-unknown`: the adapter may plan a target release its catalog does not know (it
    /// notes in the plan that it cannot know that release's rules).
    pub allow_unknown: bool,
    /// `--timeout SECS`: every wait-healthy step of the plan waits up to this long (over the
    /// fleet file's `wait_healthy_secs` and the adapter's own timeout).
    pub wait_healthy_secs: Option<u64>,
}

impl PlanOptions {
    /// The detection as the adapter's `plan` sees it: the detected facts, then the operator's
    /// (`operator.*`). What is shown as detected stays what detection found.
    pub fn detection_for_plan(&self, detected: &Detection) -> Detection {
        let mut asked = detected.clone();
        if self.allow_unknown {
            asked.facts.push(Fact {
                key: ALLOW_UNKNOWN_FACT.into(),
                value: "true".into(),
            });
        }
        asked
    }
}

/// Plan an upgrade of a live instance (touches nothing but reads).
pub async fn plan_instance(
    session: &Session,
    instance: &Instance,
    target: &str,
) -> Result<PlanReport, OpError> {
    plan_instance_with(session, instance, target, &PlanOptions::default()).await
}

/// [`plan_instance`] with the operator's [`PlanOptions`] (`--allow-unknown`).
pub async fn plan_instance_with(
    session: &Session,
    instance: &Instance,
    target: &str,
    options: &PlanOptions,
) -> Result<PlanReport, OpError> {
    let (adapter, caps) = prepare(session, instance).await?;
    // Every database binding's role, before any adapter SQL: a privileged role the operator
    // did not accept stops the plan here (audited); an accepted one is named in the plan.
    let privileged = caps
        .db()
        .check_roles()
        .await
        .map_err(|e| OpError::Usage(format!("instance `{}`: {e}", instance.name)))?;
    let detection = detect(session, &adapter, &caps).await?;
    let asked = options.detection_for_plan(&detection);
    let outcome = call_plan(session, &adapter, &asked, target).await?;
    let mut preflight = Vec::new();
    let (outcome, prior, rollback) = match outcome {
        Ok(mut p) => {
            plan::validate(&p).map_err(|r| fault(session, &adapter, "plan", r))?;
            operator_timeouts(&mut p, Some(&caps), options);
            plan::check_grants(&p, caps.grants(), &instance.name)
                .map_err(|why| ungranted(&adapter, &caps, "plan", why))?;
            let prior = prior_of(&p, &caps).await?;
            // Before anything is stopped: the world must be as the plan assumes.
            let checked = super::preflight::run(session, instance, &caps, &p, &prior).await?;
            preflight = checked.checks;
            match checked.refusal {
                Some(r) => (PlanOutcome::Refused(r), prior, Vec::new()),
                None => {
                    let rollback = plan::worst_case_rollback(&p, &prior);
                    (PlanOutcome::Plan(p), prior, rollback)
                }
            }
        }
        Err(r) => (PlanOutcome::Refused(r), Prior::default(), Vec::new()),
    };
    Ok(PlanReport {
        instance: instance.name.clone(),
        product: adapter.manifest.product.clone(),
        adapter_digest: adapter.digest.clone(),
        detection,
        outcome,
        prior,
        rollback,
        privileged,
        preflight,
    })
}

/// Evaluate an adapter's rules (bundled or a file) for `from` → `to` with no live instance.
pub async fn offline_plan(
    session: &Session,
    adapter: &crate::fleet::AdapterRef,
    from: &str,
    to: &str,
) -> Result<PlanReport, OpError> {
    offline_plan_with(session, adapter, from, to, &PlanOptions::default()).await
}

/// [`offline_plan`] with the operator's [`PlanOptions`] (`--allow-unknown`).
pub async fn offline_plan_with(
    session: &Session,
    adapter: &crate::fleet::AdapterRef,
    from: &str,
    to: &str,
    options: &PlanOptions,
) -> Result<PlanReport, OpError> {
    upshift_model::version::check(from)
        .map_err(|e| OpError::Usage(format!("the version planned from: {e}")))?;
    let (label, wasm) = adapters::resolve(adapter).map_err(OpError::Usage)?;
    let adapter = session.load_component(&label, &label, &wasm).await?;
    let detection = Detection {
        version: from.to_string(),
        facts: Vec::new(),
    };
    let asked = options.detection_for_plan(&detection);
    let outcome = match call_plan(session, &adapter, &asked, to).await? {
        Ok(mut p) => {
            plan::validate(&p).map_err(|r| fault(session, &adapter, "plan", r))?;
            operator_timeouts(&mut p, None, options);
            PlanOutcome::Plan(p)
        }
        Err(r) => PlanOutcome::Refused(r),
    };
    // Offline, assume every service the plan touches runs `from` now.
    let mut prior = Prior::default();
    if let PlanOutcome::Plan(p) = &outcome {
        for step in &p.steps {
            if let Action::ServiceStop(b) | Action::ServiceStart(b) = &step.action {
                prior.services.insert(
                    b.clone(),
                    PriorService {
                        running: true,
                        version: from.to_string(),
                        detail: "assumed (offline plan)".into(),
                    },
                );
            }
        }
    }
    Ok(PlanReport {
        instance: String::new(),
        product: adapter.manifest.product.clone(),
        adapter_digest: adapter.digest.clone(),
        detection,
        rollback: match &outcome {
            PlanOutcome::Plan(p) => plan::worst_case_rollback(p, &prior),
            PlanOutcome::Refused(_) => Vec::new(),
        },
        outcome,
        prior,
        privileged: Vec::new(),
        preflight: Vec::new(),
    })
}

fn new_run(
    instance: &Instance,
    adapter: &LoadedAdapter,
    kind: &str,
    from: &str,
    to: &str,
    plan_json: String,
) -> RunRecord {
    RunRecord {
        id: crate::state::new_run_id(),
        instance: instance.name.clone(),
        product: adapter.manifest.product.clone(),
        adapter_digest: adapter.digest.clone(),
        kind: kind.to_string(),
        from_version: from.to_string(),
        to_version: to.to_string(),
        status: RunStatus::Running,
        started_at: now(),
        finished_at: None,
        plan_json,
        message: None,
    }
}

/// Denied calls of a run, for the report. Calls to optional bindings the operator left unbound
/// are expected (the adapter cannot know) and stay in the audit log only.
pub(super) async fn denials(session: &Session, run_id: &str) -> Vec<AuditRecord> {
    session
        .audit_records(run_id, true)
        .await
        .map(|records| {
            records
                .into_iter()
                .filter(|r| r.event.decision == Decision::Denied)
                .filter(|r| {
                    !r.event
                        .reason
                        .as_deref()
                        .is_some_and(|why| why.ends_with("is not bound for this instance"))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// What running a plan's steps in order produced.
#[derive(Default)]
pub(super) struct Forward {
    pub(super) lines: Vec<StepLine>,
    pub(super) reached: Vec<Reached>,
    pub(super) backups: Vec<(String, BackupRecord)>,
    pub(super) failure: Option<String>,
    /// A resumed run: its rollback checks each action's effect before doing it, and the data's
    /// version before it starts a service.
    pub(super) resumed: bool,
}

/// Run `steps` in order, journaled, stopping at the first failure.
async fn run_forward(ctx: &RunContext<'_>, steps: &[crate::runtime::bindings::Step]) -> Forward {
    run_forward_from(ctx, steps, Forward::default()).await
}

/// Run the steps after those `out` already reached (a resumed run), stopping at the first
/// failure.
pub(super) async fn run_forward_from(
    ctx: &RunContext<'_>,
    steps: &[crate::runtime::bindings::Step],
    mut out: Forward,
) -> Forward {
    let start = out.reached.len();
    for (i, step) in steps.iter().enumerate().skip(start) {
        // The lease is lost: another holder has the instance; nothing more is done here.
        if ctx.lease_lost() {
            break;
        }
        // SIGINT/SIGTERM: the step before finished; no new one starts, the host rolls back.
        if let Some(why) = ctx
            .session
            .stop()
            .at_boundary(&format!("step `{}`", step.id))
        {
            out.failure = Some(why);
            break;
        }
        out.reached.push(Reached::Started);
        let started = std::time::Instant::now();
        let r = ctx
            .step(
                "forward",
                i as u32,
                i + 1,
                steps.len(),
                &step.id,
                &step.title,
                async || ctx.perform(&step.action).await,
            )
            .await;
        let (ok, message) = match r {
            Ok(StepResult { summary, backup }) => {
                out.reached[i] = Reached::Done(backup.as_ref().map(|b| b.id.clone()));
                if let Some(b) = backup {
                    out.backups.push((step.id.clone(), b));
                }
                (true, summary)
            }
            Err(e) => {
                out.failure = Some(format!("step `{}` failed: {e}", step.id));
                (false, e)
            }
        };
        out.lines.push(StepLine {
            phase: "forward".into(),
            id: step.id.clone(),
            title: step.title.clone(),
            ok,
            message,
            duration_ms: elapsed_ms(started),
        });
        if !ok {
            break;
        }
    }
    out
}

/// Upgrade an instance to `target`: detect, plan, confirm, run, verify; on any failure roll
/// back to the previous version and data by the host's own rollback.
pub async fn apply(
    session: &Session,
    instance: &Instance,
    target: &str,
    confirm: impl FnOnce(&PlanReport) -> bool,
) -> Result<RunReport, OpError> {
    apply_with(session, instance, target, &PlanOptions::default(), confirm).await
}

/// [`apply`] with the operator's [`PlanOptions`] (`--allow-unknown`).
pub async fn apply_with(
    session: &Session,
    instance: &Instance,
    target: &str,
    options: &PlanOptions,
    confirm: impl FnOnce(&PlanReport) -> bool,
) -> Result<RunReport, OpError> {
    let held = session
        .hold_lease(&instance.name, &format!("apply --to {target}"))
        .await?;
    let report = plan_instance_with(session, instance, target, options).await?;
    let (adapter, caps) = prepare(session, instance).await?;
    let from = report.detection.version.clone();
    let plan = match &report.outcome {
        // Nothing to do: not a refusal, and not a run (no run is recorded).
        PlanOutcome::Refused(r) if r.rule == ALREADY_AT_TARGET => {
            return Ok(RunReport::without_steps(
                String::new(),
                &instance.name,
                from,
                target.to_string(),
                Outcome::AlreadyThere,
            ));
        }
        PlanOutcome::Refused(r) => {
            let run = new_run(instance, &adapter, "upgrade", &from, target, "null".into());
            session
                .state
                .insert_run(held.lease(), &session.masked_run(&run))
                .await
                .map_err(|e| super::journal_error(&held, e))?;
            let msg = format!("refused by rule `{}`: {}", r.rule, r.reason);
            end_run(session, &held, &run.id, RunStatus::Refused, Some(&msg)).await?;
            return Ok(RunReport {
                refusal: Some(r.clone()),
                ..RunReport::without_steps(
                    run.id,
                    &instance.name,
                    from,
                    target.to_string(),
                    Outcome::Refused,
                )
            });
        }
        PlanOutcome::Plan(p) => p.clone(),
    };
    if !confirm(&report) {
        return Err(OpError::Usage("not confirmed; nothing was changed".into()));
    }
    let plan_json =
        serde_json::json!({ "plan": plan, "prior": report.prior, "detection": report.detection })
            .to_string();
    let run = new_run(instance, &adapter, "upgrade", &from, target, plan_json);
    session.stop().begin_changes()?;
    let ctx = RunContext::begin(session, &adapter, &caps, &held, &run, None).await?;
    let forward = run_forward(&ctx, &plan.steps).await;
    conclude(
        &ctx,
        instance,
        &plan,
        &report.prior,
        &from,
        target,
        forward,
        0,
    )
    .await
}

/// Finish a run whose forward steps ran: verify, then finalize — or roll back by the host's
/// own plan. `rollback_done` rollback steps already succeeded (a resumed rollback).
#[allow(clippy::too_many_arguments)]
pub(super) async fn conclude(
    ctx: &RunContext<'_>,
    instance: &Instance,
    plan: &Plan,
    prior: &Prior,
    from: &str,
    target: &str,
    forward: Forward,
    rollback_done: usize,
) -> Result<RunReport, OpError> {
    let (session, adapter, caps, run_id) = (ctx.session, ctx.adapter, &ctx.caps, &ctx.run_id);
    let Forward {
        mut lines,
        reached,
        backups,
        mut failure,
        resumed,
    } = forward;
    let mut checks = Vec::new();
    let lost = || {
        ctx.lease_lost()
            .then(|| OpError::Busy(ctx.lease.lost_error()))
    };
    // The lease was lost: another holder carries the run on; this host neither verifies nor
    // rolls back, and writes nothing more.
    if let Some(e) = lost() {
        return Err(e);
    }
    if failure.is_none() {
        failure = session.stop().at_boundary("verification");
    }
    if failure.is_none() {
        match session.runtime.verify(adapter, caps.clone(), target).await {
            Ok(Ok(c)) => {
                let bad: Vec<String> = c
                    .iter()
                    .filter(|c| !c.passed)
                    .map(|c| format!("{}: {}", c.name, c.detail))
                    .collect();
                checks = c;
                if !bad.is_empty() {
                    failure = Some(format!("verification failed: {}", bad.join("; ")));
                } else if checks.is_empty() {
                    failure = Some(
                        "verification returned no checks; refusing to call the upgrade done".into(),
                    );
                }
            }
            Ok(Err(e)) => failure = Some(format!("verification could not run: {}", e.message)),
            Err(f) => failure = Some(f.to_string()),
        }
    }
    if let Some(e) = lost() {
        return Err(e);
    }
    let backup_records: Vec<BackupRecord> = backups.iter().map(|(_, b)| b.clone()).collect();
    let Some(failure) = failure else {
        // Verified: drop what was kept only for rolling back (e.g. the previous container).
        for name in caps.service().bindings() {
            let started = std::time::Instant::now();
            match ctx.finalize(name).await {
                Ok(done) if !done.is_empty() => lines.push(StepLine {
                    phase: "finalize".into(),
                    id: format!("finalize-{name}"),
                    title: format!("clean up after `{name}`"),
                    ok: true,
                    message: done,
                    duration_ms: elapsed_ms(started),
                }),
                Ok(_) => {}
                Err(e) => lines.push(StepLine {
                    phase: "finalize".into(),
                    id: format!("finalize-{name}"),
                    title: format!("clean up after `{name}`"),
                    ok: false,
                    message: e.to_string(),
                    duration_ms: elapsed_ms(started),
                }),
            }
        }
        // Offer the restore command only for a backup the adapter knows how to restore.
        let mut rollback_command = None;
        for b in &backup_records {
            let request = restore_request(b, Some(target.to_string()), None);
            if let Ok(Ok(_)) = plan_restore(session, adapter, &request).await {
                rollback_command = Some(format!("upshift restore {} {}", instance.name, b.id));
                break;
            }
        }
        end_run(session, ctx.lease, run_id, RunStatus::Succeeded, None).await?;
        return Ok(RunReport {
            run_id: run_id.clone(),
            instance: instance.name.clone(),
            from_version: from.to_string(),
            to_version: target.to_string(),
            outcome: Outcome::Succeeded,
            steps: lines,
            checks,
            backups: backup_records,
            refusal: None,
            failure: None,
            rollback_command,
            operator_help: None,
            denials: denials(session, run_id).await,
            found: Vec::new(),
        });
    };
    // Nothing with an effect completed: there is nothing to roll back, and the report says so.
    if rollback_done == 0 && !changed_anything(&plan.steps[..reached.len()], prior) {
        let message = format!(
            "{failure}; nothing was changed (no step with an effect had run), so nothing was rolled back"
        );
        end_run(
            session,
            ctx.lease,
            run_id,
            RunStatus::NothingChanged,
            Some(&message),
        )
        .await?;
        return Ok(RunReport {
            run_id: run_id.clone(),
            instance: instance.name.clone(),
            from_version: from.to_string(),
            to_version: target.to_string(),
            outcome: Outcome::NothingChanged,
            steps: lines,
            checks,
            backups: backup_records,
            refusal: None,
            failure: Some(message),
            rollback_command: None,
            operator_help: None,
            denials: denials(session, run_id).await,
            found: Vec::new(),
        });
    }
    // Roll back: the host's own plan, never the adapter's.
    let actions = plan::rollback(&plan.steps[..reached.len()], &reached, prior);
    let mut rollback_failed = None;
    let n = actions.len();
    for (i, action) in actions.iter().enumerate().skip(rollback_done) {
        if let Some(e) = lost() {
            return Err(e);
        }
        let id = action.id();
        let title = action.describe();
        let started = std::time::Instant::now();
        let r = ctx
            .step("rollback", i as u32, i + 1, n, &id, &title, async || {
                if resumed {
                    if let Some(done) = super::resume::already_done(ctx, action).await? {
                        return Ok(StepResult {
                            summary: done,
                            backup: None,
                        });
                    }
                    if let RollbackAction::Start { binding } = action {
                        super::resume::safe_to_start(ctx, binding).await?;
                    }
                }
                ctx.perform_rollback(action, &backups).await
            })
            .await;
        if let Some(e) = lost() {
            return Err(e);
        }
        let ok = r.is_ok();
        lines.push(StepLine {
            phase: "rollback".into(),
            id: id.clone(),
            title,
            ok,
            message: match r {
                Ok(s) => s.summary,
                Err(e) => {
                    rollback_failed = Some(format!("rollback step `{id}` failed: {e}"));
                    e
                }
            },
            duration_ms: elapsed_ms(started),
        });
        if !ok {
            break;
        }
    }
    let (outcome, status, help) = match &rollback_failed {
        None => (Outcome::RolledBack, RunStatus::RolledBack, None),
        Some(why) => {
            let help = operator_help(&instance.name, caps, &backup_records, why).await;
            (Outcome::NeedsOperator, RunStatus::Failed, Some(help))
        }
    };
    let message = match &rollback_failed {
        None => failure.clone(),
        Some(why) => format!("{failure}; {why}"),
    };
    end_run(session, ctx.lease, run_id, status, Some(&message)).await?;
    Ok(RunReport {
        run_id: run_id.clone(),
        instance: instance.name.clone(),
        from_version: from.to_string(),
        to_version: target.to_string(),
        outcome,
        steps: lines,
        checks,
        backups: backup_records,
        refusal: None,
        failure: Some(failure),
        rollback_command: None,
        operator_help: help,
        denials: denials(session, run_id).await,
        found: Vec::new(),
    })
}

/// Record how run `run_id` ended (its message masked), fenced by `held`'s lease: a write the
/// fence refuses marks the lease lost and is the lost lease (exit 6).
pub(super) async fn end_run(
    session: &Session,
    held: &Held,
    run_id: &str,
    status: RunStatus,
    message: Option<&str>,
) -> Result<(), OpError> {
    let message = message.map(|m| session.mask(m));
    session
        .state
        .finish_run(held.lease(), run_id, status, message.as_deref())
        .await
        .map_err(|e| super::journal_error(held, e))
}

/// Whether any step that ran (completed, or started and failed) may have changed the instance:
/// stopping a service that was running, starting or switching one, a restore, or an adapter step
/// that says it mutates. Backups, snapshots, waits and checks change nothing.
fn changed_anything(steps: &[crate::runtime::bindings::Step], prior: &Prior) -> bool {
    steps.iter().any(|step| match &step.action {
        Action::ServiceStop(b) => prior.services.get(b).is_none_or(|p| p.running),
        Action::ServiceStart(_)
        | Action::ServiceSwitch(_)
        | Action::DbRestore(_)
        | Action::FilesRestore(_) => true,
        Action::Custom(c) => c.mutates,
        Action::DbBackup(_)
        | Action::FilesSnapshot(_)
        | Action::WaitHealthy(_)
        | Action::HttpCheck(_) => false,
    })
}

pub(super) async fn operator_help(
    instance: &str,
    caps: &InstanceCaps,
    backups: &[BackupRecord],
    why: &str,
) -> String {
    let mut out = format!(
        "Instance `{instance}` could not be rolled back automatically ({why}).\nIts state now:\n"
    );
    for name in caps.service().bindings() {
        match caps.service().inspect(name, Some("operator help")).await {
            Ok(s) => out.push_str(&format!(
                "  service `{name}`: {} version {} ({})\n",
                if s.running { "running" } else { "stopped" },
                s.version,
                s.detail
            )),
            Err(e) => out.push_str(&format!("  service `{name}`: cannot inspect: {e}\n")),
        }
    }
    for b in backups {
        out.push_str(&format!(
            "  backup {} of `{}` at version {} ({} {})\n",
            b.id, b.binding, b.product_version, b.method, b.location
        ));
    }
    if let Some(b) = backups.first() {
        out.push_str(&format!(
            "To put the data and version back, run:\n  upshift restore {instance} {}\n",
            b.id
        ));
    } else {
        out.push_str(
            "No backup was taken before the failure, so the data was not changed by this run.\n",
        );
    }
    out
}

/// What the adapter is told about a backup it is asked to restore.
fn restore_request(
    backup: &BackupRecord,
    current: Option<String>,
    into: Option<&str>,
) -> RestoreRequest {
    RestoreRequest {
        backup: BackupInfo {
            id: backup.id.clone(),
            binding: backup.binding.clone(),
            product_version: backup.product_version.clone(),
            method: match backup.method.as_str() {
                "dump" => BackupMethod::Dump,
                "snapshot" => BackupMethod::Snapshot,
                _ => BackupMethod::Clone,
            },
        },
        current_version: current,
        into: into.map(str::to_string),
    }
}

/// The adapter's restore plan for `request`, or its refusal (pure: no capabilities).
async fn plan_restore(
    session: &Session,
    adapter: &LoadedAdapter,
    request: &RestoreRequest,
) -> Result<Result<Plan, Refusal>, OpError> {
    let out = session.runtime.plan_restore(adapter, request).await?;
    if let Err(r) = &out {
        plan::validate_refusal(r).map_err(|why| fault(session, adapter, "plan-restore", why))?;
    }
    Ok(out)
}

/// Back up every db binding the adapter may back up (`dump` unless `clone` is asked for).
pub async fn backup(
    session: &Session,
    instance: &Instance,
    method: BackupMethod,
) -> Result<Vec<BackupRecord>, OpError> {
    let held = session.hold_lease(&instance.name, "backup").await?;
    let (adapter, caps) = prepare(session, instance).await?;
    let version = match detect(session, &adapter, &caps).await {
        Ok(d) => d.version,
        Err(_) => "unknown".into(),
    };
    let run = new_run(
        instance,
        &adapter,
        "backup",
        &version,
        &version,
        "null".into(),
    );
    session.stop().begin_changes()?;
    let ctx = RunContext::begin(session, &adapter, &caps, &held, &run, None).await?;
    let bindings: Vec<String> = caps
        .grants()
        .grants()
        .iter()
        .filter(|(_, g)| {
            g.kind == crate::grants::BindingKind::Db
                && g.access.contains(&crate::grants::Access::Backup)
        })
        .map(|(n, _)| n.clone())
        .collect();
    if bindings.is_empty() {
        return Err(OpError::Usage(format!(
            "instance `{}` has no database binding with `backup` access",
            instance.name
        )));
    }
    let mut out = Vec::new();
    for (i, b) in bindings.iter().enumerate() {
        if let Some(why) = session.stop().at_boundary(&format!("backing up `{b}`")) {
            let taken: Vec<&str> = out.iter().map(|r: &BackupRecord| r.id.as_str()).collect();
            let why = if taken.is_empty() {
                format!("{why}; no backup was taken")
            } else {
                format!("{why}; the backups taken are kept: {}", taken.join(", "))
            };
            end_run(session, &held, &run.id, RunStatus::Failed, Some(&why)).await?;
            return Err(OpError::Host(why));
        }
        let action = Action::DbBackup(crate::runtime::bindings::DbBackupAction {
            binding: b.clone(),
            method,
            restore_on_rollback: false,
        });
        let r = ctx
            .step(
                "forward",
                i as u32,
                i + 1,
                bindings.len(),
                &format!("backup-{b}"),
                &format!("back up `{b}`"),
                async || ctx.perform(&action).await,
            )
            .await;
        match r {
            Ok(StepResult {
                backup: Some(rec), ..
            }) => out.push(rec),
            Ok(_) => {}
            Err(_) if ctx.lease_lost() => return Err(OpError::Busy(held.lost_error())),
            Err(e) => {
                end_run(session, &held, &run.id, RunStatus::Failed, Some(&e)).await?;
                return Err(OpError::Host(format!("backup of `{b}` failed: {e}")));
            }
        }
    }
    end_run(session, &held, &run.id, RunStatus::Succeeded, None).await?;
    Ok(out)
}

/// Restore a catalogued backup as the adapter's `plan-restore` says (into the bound database
/// by swap, or into a new database with `into`).
pub async fn restore(
    session: &Session,
    instance: &Instance,
    backup_id: &str,
    into: Option<&str>,
    confirm: impl FnOnce(&Plan) -> bool,
) -> Result<RunReport, OpError> {
    let backup = session
        .state
        .backup(backup_id)
        .await
        .map_err(host)?
        .ok_or_else(|| {
            OpError::Usage(format!(
                "no backup `{backup_id}`; `upshift backups` lists them"
            ))
        })?;
    // Restoring a backup the instance's stopped run took is the recovery that run's operator
    // help names; any other unfinished run refuses the restore.
    let held = session
        .hold_lease_to_start(
            &instance.name,
            &format!("restore {backup_id}"),
            backup.run_id.as_deref(),
        )
        .await?;
    if !backup.valid {
        return Err(OpError::Usage(format!(
            "backup `{backup_id}` is marked invalid ({}); choose another backup (`upshift backups`)",
            backup.note.as_deref().unwrap_or("no reason recorded")
        )));
    }
    if backup.instance != instance.name {
        return Err(OpError::Usage(format!(
            "backup `{backup_id}` belongs to instance `{}`, not `{}`",
            backup.instance, instance.name
        )));
    }
    let (adapter, caps) = prepare(session, instance).await?;
    let current = detect(session, &adapter, &caps)
        .await
        .ok()
        .map(|d| d.version);
    let request = restore_request(&backup, current.clone(), into);
    let planned = plan_restore(session, &adapter, &request).await?;
    let from = current.unwrap_or_else(|| "unknown".into());
    let plan = match planned {
        Ok(p) => p,
        Err(r) => {
            let to = backup.product_version.clone();
            return Ok(RunReport {
                backups: vec![backup],
                refusal: Some(r),
                ..RunReport::without_steps(
                    String::new(),
                    &instance.name,
                    from,
                    to,
                    Outcome::Refused,
                )
            });
        }
    };
    plan::validate(&plan).map_err(|r| fault(session, &adapter, "plan-restore", r))?;
    plan::check_grants(&plan, caps.grants(), &instance.name)
        .map_err(|why| ungranted(&adapter, &caps, "plan-restore", why))?;
    refuse_existing_targets(&instance.name, &caps, &plan).await?;
    if !confirm(&plan) {
        return Err(OpError::Usage("not confirmed; nothing was changed".into()));
    }
    // What the services were before anything is touched: a restore that fails before its swap
    // puts exactly this back.
    let prior = prior_of(&plan, &caps).await?;
    let run = new_run(
        instance,
        &adapter,
        "restore",
        &from,
        &backup.product_version,
        serde_json::json!({ "plan": plan, "backup": backup.id, "prior": prior }).to_string(),
    );
    session.stop().begin_changes()?;
    let ctx =
        RunContext::begin(session, &adapter, &caps, &held, &run, Some(backup.clone())).await?;
    let forward = run_forward(&ctx, &plan.steps).await;
    if ctx.lease_lost() {
        // Another holder has the instance: it finishes or undoes this restore, not this host.
        return Err(OpError::Busy(held.lost_error()));
    }
    let Some(failure) = forward.failure.clone() else {
        end_run(session, &held, &run.id, RunStatus::Succeeded, None).await?;
        return Ok(RunReport {
            run_id: run.id.clone(),
            instance: instance.name.clone(),
            from_version: from,
            to_version: backup.product_version.clone(),
            outcome: Outcome::Succeeded,
            steps: forward.lines,
            checks: Vec::new(),
            backups: vec![backup],
            refusal: None,
            failure: None,
            rollback_command: None,
            operator_help: None,
            denials: denials(session, &run.id).await,
            found: Vec::new(),
        });
    };
    if !replaced_data(&ctx, &plan.steps, &forward.reached) {
        // Nothing was replaced: undo what the run did to the services (stop, switch) with the
        // host's own rollback, as a failed upgrade is undone.
        let undo = plan::rollback(
            &plan.steps[..forward.reached.len()],
            &forward.reached,
            &prior,
        );
        let mut forward = forward;
        forward.failure = Some(format!(
            "{failure} (before the swap: the live data was not replaced)"
        ));
        if undo.is_empty() {
            let message = format!("{failure}; the live data and services were not changed");
            end_run(session, &held, &run.id, RunStatus::Failed, Some(&message)).await?;
            return Err(OpError::Host(format!(
                "restore of backup `{}` failed (run {}): {message}",
                backup.id, run.id
            )));
        }
        let mut report = conclude(&ctx, instance, &plan, &prior, &from, &from, forward, 0).await?;
        report.to_version = backup.product_version.clone();
        report.backups = vec![backup];
        return Ok(report);
    }
    // Live data was (perhaps partly) replaced: an operator decides; the help says exactly
    // what was done and what is left.
    let help = restore_help(&instance.name, &caps, &backup, &forward.lines, &failure).await;
    end_run(session, &held, &run.id, RunStatus::Failed, Some(&failure)).await?;
    Ok(RunReport {
        run_id: run.id.clone(),
        instance: instance.name.clone(),
        from_version: from,
        to_version: backup.product_version.clone(),
        outcome: Outcome::NeedsOperator,
        steps: forward.lines,
        checks: Vec::new(),
        backups: vec![backup],
        refusal: None,
        failure: Some(failure),
        rollback_command: None,
        operator_help: Some(help),
        denials: denials(session, &run.id).await,
        found: Vec::new(),
    })
}

/// Whether a failed restore run replaced any live data: its swap began, or a step that changes
/// live data (a start, a mutating adapter step, a restore in place) finished before the
/// failure. A restore into a new database leaves the live one alone.
fn replaced_data(
    ctx: &RunContext<'_>,
    steps: &[crate::runtime::bindings::Step],
    reached: &[Reached],
) -> bool {
    let changes_live_data = |action: &Action| match action {
        Action::DbRestore(a) => matches!(
            a.target,
            crate::runtime::bindings::RestoreTarget::SameDatabase
        ),
        other => plan::changes_data(other),
    };
    ctx.swap_began.load(std::sync::atomic::Ordering::SeqCst)
        || steps
            .iter()
            .zip(reached)
            .any(|(step, how)| matches!(how, Reached::Done(_)) && changes_live_data(&step.action))
}

/// Refuse a restore into a new database that already exists, before anything is stopped.
async fn refuse_existing_targets(
    instance: &str,
    caps: &InstanceCaps,
    plan: &Plan,
) -> Result<(), OpError> {
    for step in &plan.steps {
        let Action::DbRestore(a) = &step.action else {
            continue;
        };
        let crate::runtime::bindings::RestoreTarget::NewDatabase(name) = &a.target else {
            continue;
        };
        if !crate::caps::db::plain_ident(name) {
            return Err(OpError::Usage(format!(
                "`{name}` is not a plain database name (lowercase letters, digits, `_`); give another name with --into; nothing was changed"
            )));
        }
        let exists = caps
            .db()
            .restore(&a.binding, "host restore preflight", async |db| {
                db.database_exists(name).await
            })
            .await
            .map_err(|e| {
                OpError::Host(format!(
                    "instance `{instance}`: cannot check whether database `{name}` exists: {e}; nothing was changed"
                ))
            })?;
        if exists {
            return Err(OpError::Usage(format!(
                "database `{name}` already exists on the server of instance `{instance}`'s binding `{}`; restore into a name that does not exist yet (--into NEW_NAME), or drop `{name}` first if it is no longer needed; nothing was stopped or changed",
                a.binding
            )));
        }
    }
    Ok(())
}

/// What an operator needs after a restore failed once it had begun replacing live data: what
/// each step did, the services' state now, and how to finish.
async fn restore_help(
    instance: &str,
    caps: &InstanceCaps,
    backup: &BackupRecord,
    lines: &[StepLine],
    failure: &str,
) -> String {
    let mut out = format!(
        "The restore of backup {} into instance `{instance}` failed after it began replacing live data ({failure}).\nWhat it did:\n",
        backup.id
    );
    for l in lines {
        out.push_str(&format!(
            "  {} {}: {}\n",
            if l.ok { "done" } else { "FAILED" },
            l.id,
            l.message
        ));
    }
    out.push_str("Its state now:\n");
    for name in caps.service().bindings() {
        match caps.service().inspect(name, Some("operator help")).await {
            Ok(s) => out.push_str(&format!(
                "  service `{name}`: {} version {} ({})\n",
                if s.running { "running" } else { "stopped" },
                s.version,
                s.detail
            )),
            Err(e) => out.push_str(&format!("  service `{name}`: cannot inspect: {e}\n")),
        }
    }
    out.push_str(&format!(
        "The data replaced by the restore is kept as the step above says (never dropped by Upshift). Fix what the failed step reports, then either finish the remaining steps by hand or run the restore again — it rebuilds the database from backup {} once more:\n  upshift restore {instance} {}\n",
        backup.id, backup.id
    ));
    out
}
