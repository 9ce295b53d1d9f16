//! Plans as data: validation against the grants before anything runs, a readable rendering,
//! and the rollback the host derives by itself (it never asks the adapter how to undo).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::caps::limits::{MAX_PLAN_STEPS, MAX_TEXT};
use crate::grants::{Access, BindingKind, GrantSet};
use crate::runtime::bindings::{
    Action, BackupMethod, Detection, Plan, Refusal, RestoreTarget, Step,
};

/// A plan as the machine interface shows it: the contract's action variants and enum values
/// in kebab-case, as `wit/adapter.wit` spells them (`{"wait-healthy": {…}}`,
/// `"method": "dump"`), record fields in snake_case like every other field. The run journal
/// keeps the generated names; this is only the view.
pub fn plan_json(plan: &Plan) -> serde_json::Value {
    let mut value = serde_json::to_value(plan).unwrap_or(serde_json::Value::Null);
    kebab_actions(&mut value);
    value
}

/// Rewrite, in a plan's JSON (as [`serde_json::to_value`] gives it or the journal stores
/// it), every step's action variant and enum value to kebab-case: see [`plan_json`].
pub fn kebab_actions(plan: &mut serde_json::Value) {
    use heck::ToKebabCase;
    use serde_json::Value;
    /// `{"Name": x}` → `{"name": x}`, `"Name"` → `"name"`.
    fn kebab_variant(value: &mut Value) {
        match value {
            Value::String(name) => *name = name.to_kebab_case(),
            Value::Object(map) if map.len() == 1 => {
                let renamed = std::mem::take(map)
                    .into_iter()
                    .map(|(name, inner)| (name.to_kebab_case(), inner))
                    .collect();
                *map = renamed;
            }
            _ => {}
        }
    }
    let Some(steps) = plan.get_mut("steps").and_then(Value::as_array_mut) else {
        return;
    };
    for action in steps.iter_mut().filter_map(|step| step.get_mut("action")) {
        kebab_variant(action);
        let Some(fields) = action
            .as_object_mut()
            .and_then(|map| map.values_mut().next())
            .and_then(Value::as_object_mut)
        else {
            continue;
        };
        // The enums and variants inside actions: a backup's method, a restore's target.
        for key in ["method", "target"] {
            if let Some(inner) = fields.get_mut(key) {
                kebab_variant(inner);
            }
        }
    }
}

/// The grant a built-in action needs, if any (custom steps are checked call by call).
pub fn action_grant(action: &Action) -> Option<(BindingKind, &str, Access)> {
    Some(match action {
        Action::DbBackup(a) => (BindingKind::Db, a.binding.as_str(), Access::Backup),
        Action::DbRestore(a) => (BindingKind::Db, a.binding.as_str(), Access::Restore),
        Action::FilesSnapshot(b) => (BindingKind::Files, b.as_str(), Access::Snapshot),
        Action::FilesRestore(b) => (BindingKind::Files, b.as_str(), Access::Restore),
        Action::ServiceStop(b) | Action::ServiceStart(b) => {
            (BindingKind::Service, b.as_str(), Access::Control)
        }
        Action::ServiceSwitch(a) => (
            BindingKind::Service,
            a.binding.as_str(),
            Access::SwitchVersion,
        ),
        Action::WaitHealthy(a) => (BindingKind::Service, a.binding.as_str(), Access::Inspect),
        Action::HttpCheck(a) => (BindingKind::Http, a.binding.as_str(), Access::Read),
        Action::Custom(_) => return None,
    })
}

/// The text fields of an action (bindings, versions, paths, names, payloads).
fn action_texts(action: &Action) -> Vec<&String> {
    match action {
        Action::DbBackup(a) => vec![&a.binding],
        Action::DbRestore(a) => {
            let mut out = vec![&a.binding];
            if let RestoreTarget::NewDatabase(n) = &a.target {
                out.push(n);
            }
            out.extend(
                a.namespace_columns
                    .iter()
                    .flat_map(|c| [&c.table, &c.column]),
            );
            out
        }
        Action::FilesSnapshot(b)
        | Action::FilesRestore(b)
        | Action::ServiceStop(b)
        | Action::ServiceStart(b) => vec![b],
        Action::ServiceSwitch(a) => vec![&a.binding, &a.version],
        Action::WaitHealthy(a) => vec![&a.binding],
        Action::HttpCheck(a) => {
            let mut out = vec![&a.binding, &a.path];
            out.extend(&a.expect_body_contains);
            out
        }
        Action::Custom(a) => vec![&a.name, &a.payload],
    }
}

/// Check a plan's shape before anything runs: bounded and well-formed. The error is the
/// adapter's fault.
pub fn validate(plan: &Plan) -> Result<(), String> {
    if plan.steps.len() > MAX_PLAN_STEPS {
        return Err(format!(
            "the plan has {} steps, more than the limit of {MAX_PLAN_STEPS}",
            plan.steps.len()
        ));
    }
    let texts = plan
        .notes
        .iter()
        .chain([&plan.from_version, &plan.to_version])
        .chain(plan.steps.iter().flat_map(|s| [&s.id, &s.title]))
        .chain(plan.steps.iter().flat_map(|s| action_texts(&s.action)));
    for t in texts {
        if t.len() > MAX_TEXT {
            return Err(format!(
                "a plan text field is {} bytes, over the limit of {MAX_TEXT}",
                t.len()
            ));
        }
    }
    for (i, step) in plan.steps.iter().enumerate() {
        let ok_id = !step.id.is_empty()
            && step.id.len() <= 64
            && step
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !ok_id {
            return Err(format!(
                "step {} has id `{}`; ids are letters, digits, `-` and `_`",
                i + 1,
                step.id
            ));
        }
        if plan.steps[..i].iter().any(|s| s.id == step.id) {
            return Err(format!("step id `{}` is used twice", step.id));
        }
    }
    check_versions(plan)
}

/// What a restore plan's `from-version` says when the live version could not be detected.
const UNKNOWN_VERSION: &str = "unknown";

/// Every version a plan carries (its `from` and `to`, each `service-switch`) is a product
/// version (semver, optionally with a leading `v`; `from` may also be `unknown`, for a restore
/// onto an instance whose version could not be detected); the error names the field or the step.
fn check_versions(plan: &Plan) -> Result<(), String> {
    use upshift_model::version::check;
    if plan.from_version != UNKNOWN_VERSION {
        check(&plan.from_version).map_err(|e| format!("the plan's `from-version`: {e}"))?;
    }
    check(&plan.to_version).map_err(|e| format!("the plan's `to-version`: {e}"))?;
    for (i, step) in plan.steps.iter().enumerate() {
        if let Action::ServiceSwitch(a) = &step.action {
            check(&a.version).map_err(|e| {
                format!(
                    "step {} (`{}`) switches service `{}` to a version that is not one: {e}",
                    i + 1,
                    step.id,
                    a.binding
                )
            })?;
        }
    }
    Ok(())
}

/// Check a refusal's text fields against the text limit (a refusal is printed and journaled).
pub fn validate_refusal(refusal: &Refusal) -> Result<(), String> {
    let texts = [&refusal.rule, &refusal.reason, &refusal.advice]
        .into_iter()
        .chain(&refusal.path);
    for t in texts {
        if t.len() > MAX_TEXT {
            return Err(format!(
                "a refusal text field is {} bytes, over the limit of {MAX_TEXT}",
                t.len()
            ));
        }
    }
    if refusal.path.len() > MAX_PLAN_STEPS {
        return Err(format!(
            "the refusal's path has {} versions, more than the limit of {MAX_PLAN_STEPS}",
            refusal.path.len()
        ));
    }
    Ok(())
}

/// Check that every built-in action of a plan is granted. A shortfall comes from the operator's
/// narrowing (or an unbound optional binding), so the message says how to grant it.
pub fn check_grants(plan: &Plan, grants: &GrantSet, instance: &str) -> Result<(), String> {
    for step in &plan.steps {
        if let Some((kind, binding, access)) = action_grant(&step.action) {
            grants.check(binding, kind, access).map_err(|d| {
                if let crate::grants::Denial::NotApproved { lock, .. } = &d {
                    return format!(
                        "the plan's step `{}` needs `{access}` on {kind} binding `{binding}`, but {d}; add it to the adapter's entry in {lock} (or delete the entry and approve it anew with `upshift lock --approve`)",
                        step.id
                    );
                }
                if let crate::grants::Denial::Unbound(_) = &d {
                    return format!(
                        "the plan's step `{}` needs `{access}` on {kind} binding `{binding}`, but {d}; bind it with an [instance.{kind}.{binding}] table for instance `{instance}` in the fleet file",
                        step.id
                    );
                }
                format!(
                    "the plan's step `{}` needs `{access}` on {kind} binding `{binding}`, but {d}; add \"{access}\" to `access` in [instance.{kind}.{binding}] of instance `{instance}` (or remove the narrowing)",
                    step.id
                )
            })?;
        }
    }
    Ok(())
}

/// One line describing what an action does.
pub fn describe_action(action: &Action) -> String {
    match action {
        Action::DbBackup(a) => format!(
            "back up database `{}` ({})",
            a.binding,
            match a.method {
                BackupMethod::Clone => "server-side clone",
                BackupMethod::Dump => "pg_dump archive",
                BackupMethod::Snapshot => "not a database method",
            }
        ),
        Action::DbRestore(a) => match &a.target {
            RestoreTarget::SameDatabase => {
                format!("restore database `{}` in place (swap by rename)", a.binding)
            }
            RestoreTarget::NewDatabase(n) => {
                format!("restore database `{}` into new database `{n}`", a.binding)
            }
        },
        Action::FilesSnapshot(b) => format!("snapshot directory `{b}`"),
        Action::FilesRestore(b) => format!("restore directory `{b}` from the chosen snapshot"),
        Action::ServiceStop(b) => format!("stop service `{b}`"),
        Action::ServiceStart(b) => format!("start service `{b}`"),
        Action::ServiceSwitch(a) => format!("switch service `{}` to {}", a.binding, a.version),
        Action::WaitHealthy(a) => format!(
            "wait up to {} s for `{}` to be healthy",
            a.timeout_ms / 1000,
            a.binding
        ),
        Action::HttpCheck(a) => {
            format!("expect {} from `{}` {}", a.expect_status, a.binding, a.path)
        }
        Action::Custom(a) => format!(
            "adapter step `{}`{}",
            a.name,
            if a.mutates {
                " (changes things)"
            } else {
                " (read-only)"
            }
        ),
    }
}

/// A service's state before a run touched it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriorService {
    /// Whether it ran.
    pub running: bool,
    /// Its version.
    pub version: String,
    /// What the backend reported (for containers: the image reference and image id), recorded
    /// before anything was touched.
    #[serde(default)]
    pub detail: String,
}

/// What the host recorded before the first step.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prior {
    /// Services the plan touches, by binding.
    pub services: BTreeMap<String, PriorService>,
}

/// One action of a host-derived rollback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum RollbackAction {
    /// Stop a service the run touched.
    Stop {
        /// Binding.
        binding: String,
    },
    /// Restore the backup a step took, in place.
    Restore {
        /// Binding.
        binding: String,
        /// The step that took the backup.
        from_step: String,
        /// Its id, once known.
        backup_id: Option<String>,
    },
    /// Restore the directory snapshot a step took, in place.
    RestoreFiles {
        /// Binding.
        binding: String,
        /// The step that took the snapshot.
        from_step: String,
        /// Its id, once known.
        backup_id: Option<String>,
    },
    /// Switch a service back.
    Switch {
        /// Binding.
        binding: String,
        /// Version before the run.
        version: String,
    },
    /// Start a service that ran before.
    Start {
        /// Binding.
        binding: String,
    },
    /// Wait for it.
    WaitHealthy {
        /// Binding.
        binding: String,
    },
}

impl RollbackAction {
    /// A short id for the journal.
    pub fn id(&self) -> String {
        match self {
            RollbackAction::Stop { binding } => format!("rollback-stop-{binding}"),
            RollbackAction::Restore { binding, .. } => format!("rollback-restore-{binding}"),
            RollbackAction::RestoreFiles { binding, .. } => {
                format!("rollback-restore-files-{binding}")
            }
            RollbackAction::Switch { binding, .. } => format!("rollback-switch-{binding}"),
            RollbackAction::Start { binding } => format!("rollback-start-{binding}"),
            RollbackAction::WaitHealthy { binding } => format!("rollback-wait-{binding}"),
        }
    }

    /// One line for humans.
    pub fn describe(&self) -> String {
        match self {
            RollbackAction::Stop { binding } => format!("stop service `{binding}`"),
            RollbackAction::Restore {
                binding,
                from_step,
                backup_id,
            } => format!(
                "restore database `{binding}` from the backup taken in step `{from_step}`{}",
                backup_id
                    .as_ref()
                    .map(|id| format!(" ({id})"))
                    .unwrap_or_default()
            ),
            RollbackAction::RestoreFiles {
                binding,
                from_step,
                backup_id,
            } => format!(
                "restore directory `{binding}` from the snapshot taken in step `{from_step}`{}",
                backup_id
                    .as_ref()
                    .map(|id| format!(" ({id})"))
                    .unwrap_or_default()
            ),
            RollbackAction::Switch { binding, version } => {
                format!("switch service `{binding}` back to {version}")
            }
            RollbackAction::Start { binding } => format!("start service `{binding}`"),
            RollbackAction::WaitHealthy { binding } => {
                format!("wait until service `{binding}` is healthy")
            }
        }
    }
}

/// How far a step got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reached {
    /// It finished; for backups, with the backup id.
    Done(Option<String>),
    /// It started and failed or its outcome is unknown.
    Started,
}

pub(super) fn changes_data(action: &Action) -> bool {
    match action {
        Action::ServiceStart(_) | Action::DbRestore(_) | Action::FilesRestore(_) => true,
        Action::Custom(c) => c.mutates,
        _ => false,
    }
}

/// The rollback for a run that reached `reached` (in step order) from `prior`. Data comes back
/// before any old version starts, because an old binary on a migrated schema is never safe.
pub fn rollback(steps: &[Step], reached: &[Reached], prior: &Prior) -> Vec<RollbackAction> {
    let ran: Vec<(&Step, &Reached)> = steps.iter().zip(reached).collect();
    let mut touched: Vec<String> = Vec::new();
    let mut switched: Vec<String> = Vec::new();
    for (step, _) in &ran {
        match &step.action {
            Action::ServiceStop(b) | Action::ServiceStart(b) if !touched.contains(b) => {
                touched.push(b.clone());
            }
            Action::ServiceSwitch(a) => {
                if !touched.contains(&a.binding) {
                    touched.push(a.binding.clone());
                }
                if !switched.contains(&a.binding) {
                    switched.push(a.binding.clone());
                }
            }
            _ => {}
        }
    }
    let mut out: Vec<RollbackAction> = touched
        .iter()
        .map(|b| RollbackAction::Stop { binding: b.clone() })
        .collect();
    for (i, (step, how)) in ran.iter().enumerate().rev() {
        let Reached::Done(id) = how else { continue };
        if !ran[i + 1..].iter().any(|(s, _)| changes_data(&s.action)) {
            continue;
        }
        match &step.action {
            Action::DbBackup(a) if a.restore_on_rollback => out.push(RollbackAction::Restore {
                binding: a.binding.clone(),
                from_step: step.id.clone(),
                backup_id: id.clone(),
            }),
            Action::FilesSnapshot(binding) => out.push(RollbackAction::RestoreFiles {
                binding: binding.clone(),
                from_step: step.id.clone(),
                backup_id: id.clone(),
            }),
            _ => {}
        }
    }
    for b in &switched {
        if let Some(p) = prior.services.get(b) {
            out.push(RollbackAction::Switch {
                binding: b.clone(),
                version: p.version.clone(),
            });
        }
    }
    for b in &touched {
        if prior.services.get(b).is_some_and(|p| p.running) {
            out.push(RollbackAction::Start { binding: b.clone() });
            out.push(RollbackAction::WaitHealthy { binding: b.clone() });
        }
    }
    out
}

/// The rollback if every step runs and the last one fails (printed before anything starts).
pub fn worst_case_rollback(plan: &Plan, prior: &Prior) -> Vec<RollbackAction> {
    let reached: Vec<Reached> = plan.steps.iter().map(|_| Reached::Done(None)).collect();
    rollback(&plan.steps, &reached, prior)
}

/// Detection facts that carry the version the product's data (its schema) is at, in the order
/// the host looks for them: `data-release` (Bytebase: the release its schema belongs to, as the
/// adapter's catalog tells; its `schema-version` is a migration file number, not comparable with
/// a release), `schema-version` and `db-version` (OpenMetadata: the newest completed native
/// migration). A product without such a fact is judged by its detected version.
pub const DATA_VERSION_FACTS: &[&str] = &["data-release", "schema-version", "db-version"];

/// The text of `detection`'s fact `key`.
fn fact<'a>(detection: &'a Detection, key: &str) -> Option<&'a str> {
    detection
        .facts
        .iter()
        .find(|f| f.key == key)
        .map(|f| f.value.as_str())
}

/// The version the data of `detection` is at, and where it was read: the first
/// [`DATA_VERSION_FACTS`] fact that is a product version, else the detected version.
pub fn data_version(detection: &Detection) -> Option<(String, semver::Version)> {
    DATA_VERSION_FACTS
        .iter()
        .filter_map(|key| {
            let value = fact(detection, key)?;
            let parsed = upshift_model::version::check(value).ok()?;
            Some((format!("fact `{key}` = {value}"), parsed))
        })
        .next()
        .or_else(|| {
            let parsed = upshift_model::version::check(&detection.version).ok()?;
            Some((format!("detected version {}", detection.version), parsed))
        })
}

/// How far a journaled step got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Journaled {
    /// Journaled as finished.
    Done,
    /// Journaled as started (or failed): its effect may or may not be there.
    Unfinished,
}

/// What the journal implies about one service now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedService {
    /// Whether it runs (`None`: an unfinished step leaves both possible).
    pub running: Option<bool>,
    /// The versions it may be set to.
    pub versions: Vec<String>,
    /// The journaled step that last changed it, if any.
    pub by: Option<String>,
}

/// What the journal implies about the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedData {
    /// As it was when the run started: no step that changes data ran, or a restore put it back.
    AsBefore,
    /// Anywhere from where it was up to the run's target: a step that changes data ran.
    Changing,
}

/// The instance as the journal implies it is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// Services by binding.
    pub services: BTreeMap<String, ExpectedService>,
    /// The data.
    pub data: ExpectedData,
}

/// Whether a service runs, and its version.
type ServiceState = (bool, String);

/// The states a service may be in after the journaled steps.
struct Possible {
    states: Vec<ServiceState>,
    by: Option<String>,
}

/// What a step does to services and data.
enum Effect<'a> {
    Running(&'a str, bool),
    Version(&'a str, &'a str),
    Restored,
    Nothing,
}

fn forward_effect(action: &Action) -> Effect<'_> {
    match action {
        Action::ServiceStop(b) => Effect::Running(b, false),
        Action::ServiceSwitch(a) => Effect::Version(&a.binding, &a.version),
        Action::ServiceStart(b) => Effect::Running(b, true),
        _ => Effect::Nothing,
    }
}

fn rollback_effect(action: &RollbackAction) -> Effect<'_> {
    match action {
        RollbackAction::Stop { binding } => Effect::Running(binding, false),
        RollbackAction::Start { binding } => Effect::Running(binding, true),
        RollbackAction::Switch { binding, version } => Effect::Version(binding, version),
        RollbackAction::Restore { .. } | RollbackAction::RestoreFiles { .. } => Effect::Restored,
        RollbackAction::WaitHealthy { .. } => Effect::Nothing,
    }
}

/// The state the journal implies: from `prior`, each journaled forward step (`forward[i]` for
/// `steps[i]`) and then each journaled rollback action, in order. A finished step's effect is
/// there; an unfinished one's may or may not be.
pub fn expected(
    steps: &[Step],
    forward: &[Journaled],
    rollback: &[RollbackAction],
    rolled: &[Journaled],
    prior: &Prior,
) -> Expected {
    // Per binding, every (running, version) the service may be in, and the step that last
    // changed it.
    let mut states: BTreeMap<String, Possible> = prior
        .services
        .iter()
        .map(|(b, p)| {
            let possible = Possible {
                states: vec![(p.running, p.version.clone())],
                by: None,
            };
            (b.clone(), possible)
        })
        .collect();
    let mut data = ExpectedData::AsBefore;
    let effects = steps
        .iter()
        .zip(forward)
        .map(|(s, j)| {
            (
                s.id.clone(),
                forward_effect(&s.action),
                changes_data(&s.action),
                *j,
            )
        })
        .chain(
            rollback
                .iter()
                .zip(rolled)
                .map(|(a, j)| (a.id(), rollback_effect(a), false, *j)),
        );
    for (id, effect, changes, journaled) in effects {
        // A step that may change data (a start migrates, a mutating custom step) started.
        if changes {
            data = ExpectedData::Changing;
        }
        let binding = match &effect {
            Effect::Running(b, _) | Effect::Version(b, _) => *b,
            Effect::Restored => {
                if journaled == Journaled::Done {
                    data = ExpectedData::AsBefore;
                }
                continue;
            }
            Effect::Nothing => continue,
        };
        let Some(possible) = states.get_mut(binding) else {
            continue;
        };
        let after: Vec<ServiceState> = possible
            .states
            .iter()
            .map(|(running, version)| match &effect {
                Effect::Running(_, r) => (*r, version.clone()),
                Effect::Version(_, v) => (*running, v.to_string()),
                _ => (*running, version.clone()),
            })
            .collect();
        match journaled {
            Journaled::Done => possible.states = after,
            Journaled::Unfinished => possible.states.extend(after),
        }
        possible.states.sort();
        possible.states.dedup();
        possible.by = Some(id);
    }
    let services = states
        .into_iter()
        .map(
            |(
                b,
                Possible {
                    states: possible,
                    by,
                },
            )| {
                let running = match possible.iter().map(|(r, _)| *r).collect::<Vec<_>>() {
                    all if all.iter().all(|r| *r) => Some(true),
                    all if all.iter().all(|r| !*r) => Some(false),
                    _ => None,
                };
                let mut versions: Vec<String> = possible.into_iter().map(|(_, v)| v).collect();
                versions.sort();
                versions.dedup();
                (
                    b,
                    ExpectedService {
                        running,
                        versions,
                        by,
                    },
                )
            },
        )
        .collect();
    Expected { services, data }
}

/// A service as inspected now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveService {
    /// Whether it runs.
    pub running: bool,
    /// The version it is set to.
    pub version: String,
    /// Whether it is a one-shot job (never "running" between runs).
    pub job: bool,
}

/// Which way a resumed run goes on from here.
#[derive(Debug, Clone, Copy)]
pub enum Onward<'a> {
    /// The forward steps not yet done (the first may be the one whose outcome is unknown).
    Forward(&'a [Step]),
    /// The rollback actions not yet done.
    Rollback(&'a [RollbackAction]),
}

/// A service put back where the journal left it before the run goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fix {
    /// It runs, but the journal has it stopped.
    Stop(String),
    /// It is stopped, but the journal has it running.
    Start(String),
}

/// What resume found when it compared the live instance with the journal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// What it found, one line each, for the report and the journal.
    pub found: Vec<String>,
    /// Where the instance disagrees with the journal so that going on would act blindly: any
    /// one stops the run for an operator, touching nothing.
    pub disagreements: Vec<String>,
    /// Services to put back first.
    pub fixes: Vec<Fix>,
}

fn described(running: bool, version: &str) -> String {
    format!(
        "{} at {version}",
        if running { "running" } else { "stopped" }
    )
}

fn expectation(e: &ExpectedService) -> String {
    let running = match e.running {
        Some(true) => "running",
        Some(false) => "stopped",
        None => "running or stopped",
    };
    let by = e.by.as_ref().map_or_else(
        || "as before the run".to_string(),
        |s| format!("after step `{s}`"),
    );
    format!("{running} at {} ({by})", e.versions.join(" or "))
}

/// Compare the live instance (`live` services, `now` = the adapter's detection, `None` when it
/// failed) with what the journal implies (`expected`, from `before` = the detection journaled
/// with the run and `prior`), for a run that goes on `onward` to `target`. Versions are
/// compared as product versions, never as text.
#[allow(clippy::too_many_arguments)]
pub fn reconcile(
    expected: &Expected,
    live: &BTreeMap<String, LiveService>,
    before: &Detection,
    now: Option<&Detection>,
    prior: &Prior,
    target: &str,
    onward: Onward<'_>,
) -> Reconciled {
    use upshift_model::version::check;
    let mut out = Reconciled::default();
    let data = now.and_then(data_version);
    let restores_first = |upto: usize, rest: &[RollbackAction]| {
        rest[..upto].iter().any(|a| {
            matches!(
                a,
                RollbackAction::Restore { .. } | RollbackAction::RestoreFiles { .. }
            )
        })
    };
    // Starting `version` on the data as it is now: never an older binary on newer data.
    let newer_than = |version: &str| -> Option<String> {
        let (source, at) = data.as_ref()?;
        let v = check(version).ok()?;
        (*at > v).then(|| source.clone())
    };
    for (binding, e) in &expected.services {
        let Some(l) = live.get(binding) else {
            out.found.push(format!(
                "service `{binding}` could not be inspected; the journal has it {}",
                expectation(e)
            ));
            continue;
        };
        let now_text = described(l.running, &l.version);
        let known = e.versions.contains(&l.version);
        let back_by_hand = match onward {
            Onward::Rollback(rest) => {
                prior
                    .services
                    .get(binding)
                    .is_some_and(|p| p.version == l.version)
                    && !restores_first(rest.len(), rest)
            }
            Onward::Forward(_) => false,
        };
        let ahead_by_hand = match onward {
            Onward::Forward(rest) => {
                !l.running
                    && rest.iter().any(|s| {
                        matches!(&s.action, Action::ServiceSwitch(a)
                            if a.binding == *binding && a.version == l.version)
                    })
            }
            Onward::Rollback(_) => false,
        };
        if !known && !back_by_hand && !ahead_by_hand {
            out.disagreements.push(format!(
                "service `{binding}` is {now_text}, a version no journaled step of this run set (the journal has it {})",
                expectation(e)
            ));
            continue;
        }
        out.found.push(format!(
            "service `{binding}` is {now_text}; the journal has it {}",
            expectation(e)
        ));
        if !known {
            out.found.push(format!(
                "service `{binding}` was already switched to {} by hand, as the {} would have done",
                l.version,
                if back_by_hand { "rollback" } else { "upgrade" }
            ));
        }
        if l.job {
            continue;
        }
        match (e.running, l.running) {
            (Some(false), true) if back_by_hand => {
                if let Some(source) = newer_than(&l.version) {
                    out.disagreements.push(format!(
                        "service `{binding}` runs {} on data that is newer ({source})",
                        l.version
                    ));
                } else {
                    out.found.push(format!(
                        "service `{binding}` already runs {} again (started by hand); it is not started a second time",
                        l.version
                    ));
                }
            }
            (Some(false), true) => {
                out.found.push(format!(
                    "service `{binding}` runs although the journal has it stopped (started by hand?); it is stopped again before the run goes on"
                ));
                out.fixes.push(Fix::Stop(binding.clone()));
            }
            (Some(true), false) => {
                if let Some(source) = newer_than(&l.version) {
                    out.disagreements.push(format!(
                        "service `{binding}` is stopped and would be started at {} on data that is newer ({source})",
                        l.version
                    ));
                } else {
                    out.found.push(format!(
                        "service `{binding}` is stopped although the journal has it running (stopped by hand?); it is started again before the run goes on"
                    ));
                    out.fixes.push(Fix::Start(binding.clone()));
                }
            }
            _ => {}
        }
    }
    let Some(now) = now else {
        out.found
            .push("the adapter's detect failed, so the data's version is not known".into());
        if let Onward::Rollback(rest) = onward
            && expected.data == ExpectedData::Changing
            && let Some(i) = rest
                .iter()
                .position(|a| matches!(a, RollbackAction::Start { .. }))
            && !restores_first(i, rest)
        {
            out.disagreements.push(
                "the rollback would start the previous version without restoring data first, and the data's version cannot be read".into(),
            );
        }
        return out;
    };
    out.found.push(format!(
        "the adapter detects version {}{}",
        now.version.escape_debug().take(80).collect::<String>(),
        data.as_ref()
            .map(|(source, _)| format!(" (data: {source})"))
            .unwrap_or_default()
    ));
    match expected.data {
        ExpectedData::AsBefore => {
            for key in DATA_VERSION_FACTS {
                if let (Some(was), Some(is)) = (fact(before, key), fact(now, key))
                    && was != is
                {
                    out.disagreements.push(format!(
                        "the data is at `{key}` = {is}, but it was {was} when the run started and no journaled step of this run changed it since"
                    ));
                }
            }
        }
        ExpectedData::Changing => {
            if let Some((source, at)) = &data {
                if check(target).is_ok_and(|t| *at > t) {
                    out.disagreements.push(format!(
                        "the data ({source}) is newer than this run's target {target}"
                    ));
                }
                if let Some((was, then)) = data_version(before)
                    && *at < then
                {
                    out.disagreements.push(format!(
                        "the data ({source}) is older than when the run started ({was})"
                    ));
                }
            }
        }
    }
    if let Onward::Rollback(rest) = onward {
        for (i, action) in rest.iter().enumerate() {
            let RollbackAction::Start { binding } = action else {
                continue;
            };
            if restores_first(i, rest) {
                break;
            }
            let version = rest[..i]
                .iter()
                .rev()
                .find_map(|a| match a {
                    RollbackAction::Switch {
                        binding: b,
                        version,
                    } if b == binding => Some(version.clone()),
                    _ => None,
                })
                .or_else(|| live.get(binding).map(|l| l.version.clone()));
            if let Some(version) = version
                && let Some(source) = newer_than(&version)
            {
                out.disagreements.push(format!(
                    "the rollback would start `{binding}` at {version} on data that is newer ({source}), and no backup of this run is restored before that"
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::bindings::{CustomAction, DbBackupAction, SwitchAction};

    fn step(id: &str, action: Action) -> Step {
        Step {
            id: id.into(),
            title: id.into(),
            action,
        }
    }

    fn upgrade() -> Vec<Step> {
        vec![
            step(
                "preflight",
                Action::Custom(CustomAction {
                    name: "preflight".into(),
                    payload: String::new(),
                    mutates: false,
                }),
            ),
            step("stop", Action::ServiceStop("app".into())),
            step(
                "backup",
                Action::DbBackup(DbBackupAction {
                    binding: "meta".into(),
                    method: BackupMethod::Clone,
                    restore_on_rollback: true,
                }),
            ),
            step(
                "switch",
                Action::ServiceSwitch(SwitchAction {
                    binding: "app".into(),
                    version: "3.11.1".into(),
                }),
            ),
            step("start", Action::ServiceStart("app".into())),
        ]
    }

    fn prior() -> Prior {
        let mut p = Prior::default();
        p.services.insert(
            "app".into(),
            PriorService {
                running: true,
                version: "3.10.0".into(),
                detail: String::new(),
            },
        );
        p
    }

    #[test]
    fn data_is_restored_before_the_old_version_starts() {
        let steps = upgrade();
        let reached = vec![
            Reached::Done(None),
            Reached::Done(None),
            Reached::Done(Some("bk-1".into())),
            Reached::Done(None),
            Reached::Started,
        ];
        let rb = rollback(&steps, &reached, &prior());
        assert_eq!(
            rb,
            vec![
                RollbackAction::Stop {
                    binding: "app".into()
                },
                RollbackAction::Restore {
                    binding: "meta".into(),
                    from_step: "backup".into(),
                    backup_id: Some("bk-1".into())
                },
                RollbackAction::Switch {
                    binding: "app".into(),
                    version: "3.10.0".into()
                },
                RollbackAction::Start {
                    binding: "app".into()
                },
                RollbackAction::WaitHealthy {
                    binding: "app".into()
                },
            ]
        );
    }

    #[test]
    fn no_restore_when_nothing_could_change_data() {
        let steps = upgrade();
        let reached = vec![
            Reached::Done(None),
            Reached::Done(None),
            Reached::Done(Some("bk-1".into())),
            Reached::Started,
        ];
        let rb = rollback(&steps[..4], &reached, &prior());
        assert!(
            !rb.iter()
                .any(|a| matches!(a, RollbackAction::Restore { .. })),
            "{rb:?}"
        );
        assert!(rb.contains(&RollbackAction::Switch {
            binding: "app".into(),
            version: "3.10.0".into()
        }));
        let rb = rollback(&steps[..2], &reached[..2], &prior());
        assert_eq!(
            rb,
            vec![
                RollbackAction::Stop {
                    binding: "app".into()
                },
                RollbackAction::Start {
                    binding: "app".into()
                },
                RollbackAction::WaitHealthy {
                    binding: "app".into()
                },
            ]
        );
    }

    #[test]
    fn snapshots_are_restored_like_backups() {
        let steps = vec![
            step("snap", Action::FilesSnapshot("data".into())),
            step("start", Action::ServiceStart("app".into())),
        ];
        let reached = vec![Reached::Done(Some("bk-9".into())), Reached::Started];
        let rb = rollback(&steps, &reached, &Prior::default());
        assert_eq!(
            rb,
            vec![
                RollbackAction::Stop {
                    binding: "app".into()
                },
                RollbackAction::RestoreFiles {
                    binding: "data".into(),
                    from_step: "snap".into(),
                    backup_id: Some("bk-9".into())
                },
            ]
        );
    }

    #[test]
    fn validation_rejects_bad_plans() {
        let plan = Plan {
            from_version: "1.0.0".into(),
            to_version: "2.0.0".into(),
            steps: vec![
                step("a", Action::ServiceStop("app".into())),
                step("a", Action::ServiceStop("app".into())),
            ],
            notes: vec![],
        };
        assert!(validate(&plan).unwrap_err().contains("used twice"));
        let plan = Plan {
            steps: (0..MAX_PLAN_STEPS + 1)
                .map(|i| step(&format!("s{i}"), Action::ServiceStop("app".into())))
                .collect(),
            ..plan
        };
        assert!(validate(&plan).unwrap_err().contains("limit"));
    }

    /// Found by the fuzz target `plan`: only ids, titles, versions and notes were bounded, so a
    /// custom step's payload (or any other action text) of any size was accepted.
    #[test]
    fn validation_bounds_every_text_field() {
        let long = "x".repeat(MAX_TEXT + 1);
        let plan = Plan {
            from_version: "1.0.0".into(),
            to_version: "2.0.0".into(),
            steps: vec![step(
                "custom",
                Action::Custom(CustomAction {
                    name: "c".into(),
                    payload: long.clone(),
                    mutates: false,
                }),
            )],
            notes: vec![],
        };
        assert!(validate(&plan).unwrap_err().contains("over the limit"));
        let plan = Plan {
            steps: vec![step(
                "switch",
                Action::ServiceSwitch(SwitchAction {
                    binding: "app".into(),
                    version: long,
                }),
            )],
            ..plan
        };
        assert!(validate(&plan).unwrap_err().contains("over the limit"));
        let plan = Plan {
            steps: upgrade(),
            ..plan
        };
        assert!(validate(&plan).is_ok());
    }

    #[test]
    fn validation_names_the_step_or_field_with_a_bad_version() {
        let good = Plan {
            from_version: "v1.0.0".into(),
            to_version: "1.2.3-rc.1".into(),
            steps: upgrade(),
            notes: vec![],
        };
        assert!(validate(&good).is_ok());
        let unknown = Plan {
            from_version: "unknown".into(),
            ..good.clone()
        };
        assert!(
            validate(&unknown).is_ok(),
            "a restore onto an undetected version"
        );
        for bad in [
            "../../bin/sh -c 'touch x' x",
            "1.0.0 ; touch x",
            "1.0.0\n",
            "$(touch x)",
            "1.0.0/../..",
        ] {
            let to = Plan {
                to_version: bad.into(),
                ..good.clone()
            };
            assert!(validate(&to).unwrap_err().contains("`to-version`"), "{bad}");
            let from = Plan {
                from_version: bad.into(),
                ..good.clone()
            };
            assert!(
                validate(&from).unwrap_err().contains("`from-version`"),
                "{bad}"
            );
            let mut steps = upgrade();
            for s in &mut steps {
                if let Action::ServiceSwitch(a) = &mut s.action {
                    a.version = bad.into();
                }
            }
            let err = validate(&Plan {
                steps,
                ..good.clone()
            })
            .unwrap_err();
            assert!(
                err.contains("(`switch`)") && err.contains("is not a product version"),
                "{err}"
            );
        }
    }

    fn detection(version: &str, schema: &str) -> Detection {
        Detection {
            version: version.into(),
            facts: vec![crate::runtime::bindings::Fact {
                key: "schema-version".into(),
                value: schema.into(),
            }],
        }
    }

    fn live(running: bool, version: &str) -> BTreeMap<String, LiveService> {
        BTreeMap::from([(
            "app".to_string(),
            LiveService {
                running,
                version: version.into(),
                job: false,
            },
        )])
    }

    use Journaled::{Done, Unfinished};

    #[test]
    fn the_journal_implies_the_state_step_by_step() {
        let steps = upgrade();
        // Killed during the backup: stopped at the old version, data as before.
        let e = expected(&steps, &[Done, Done, Unfinished], &[], &[], &prior());
        assert_eq!(
            e.services["app"],
            ExpectedService {
                running: Some(false),
                versions: vec!["3.10.0".into()],
                by: Some("stop".into()),
            }
        );
        assert_eq!(e.data, ExpectedData::AsBefore);
        // Killed as the new version starts: running or not, and the data may be migrating.
        let e = expected(
            &steps,
            &[Done, Done, Done, Done, Unfinished],
            &[],
            &[],
            &prior(),
        );
        assert_eq!(e.services["app"].running, None);
        assert_eq!(e.services["app"].versions, vec!["3.11.1".to_string()]);
        assert_eq!(e.data, ExpectedData::Changing);
        // A rollback that restored the data puts it back as before.
        let reached = vec![
            Reached::Done(None),
            Reached::Done(None),
            Reached::Done(Some("bk-1".into())),
            Reached::Done(None),
            Reached::Started,
        ];
        let rb = rollback(&steps, &reached, &prior());
        let e = expected(
            &steps,
            &[Done, Done, Done, Done, Unfinished],
            &rb,
            &[Done, Done],
            &prior(),
        );
        assert_eq!(e.data, ExpectedData::AsBefore);
        assert_eq!(e.services["app"].running, Some(false));
    }

    #[test]
    fn an_upgrade_behind_the_runs_back_is_a_disagreement() {
        let steps = upgrade();
        let e = expected(&steps, &[Done, Done, Unfinished], &[], &[], &prior());
        let r = reconcile(
            &e,
            &live(true, "3.11.1"),
            &detection("3.10.0", "3.10.0"),
            Some(&detection("3.11.1", "3.11.1")),
            &prior(),
            "3.11.1",
            Onward::Forward(&steps[2..]),
        );
        assert_eq!(r.disagreements.len(), 2, "{r:?}");
        assert!(r.disagreements[0].contains("no journaled step of this run set"));
        assert!(r.disagreements[1].contains("`schema-version` = 3.11.1, but it was 3.10.0"));
        assert!(r.fixes.is_empty());
        // The same world as the journal left it: nothing to say against going on.
        let r = reconcile(
            &e,
            &live(false, "3.10.0"),
            &detection("3.10.0", "3.10.0"),
            Some(&detection("3.10.0", "3.10.0")),
            &prior(),
            "3.11.1",
            Onward::Forward(&steps[2..]),
        );
        assert!(r.disagreements.is_empty() && r.fixes.is_empty(), "{r:?}");
    }

    #[test]
    fn a_service_moved_by_hand_is_put_back() {
        let steps = upgrade();
        let e = expected(&steps, &[Done, Done], &[], &[], &prior());
        let r = reconcile(
            &e,
            &live(true, "3.10.0"),
            &detection("3.10.0", "3.10.0"),
            Some(&detection("3.10.0", "3.10.0")),
            &prior(),
            "3.11.1",
            Onward::Forward(&steps[2..]),
        );
        assert!(r.disagreements.is_empty(), "{r:?}");
        assert_eq!(r.fixes, vec![Fix::Stop("app".into())]);
        let e = expected(&steps, &[Done, Done, Done, Done, Done], &[], &[], &prior());
        let r = reconcile(
            &e,
            &live(false, "3.11.1"),
            &detection("3.10.0", "3.10.0"),
            Some(&detection("3.11.1", "3.10.0")),
            &prior(),
            "3.11.1",
            Onward::Forward(&steps[5..]),
        );
        assert_eq!(r.fixes, vec![Fix::Start("app".into())], "{r:?}");
    }

    #[test]
    fn a_rollback_never_starts_an_older_binary_on_newer_data() {
        let steps = upgrade();
        // Killed after the switch: the rollback takes no backup (nothing ran after it), yet
        // the data was migrated behind the run's back.
        let reached = vec![
            Reached::Done(None),
            Reached::Done(None),
            Reached::Done(Some("bk-1".into())),
            Reached::Started,
        ];
        let rb = rollback(&steps[..4], &reached, &prior());
        let e = expected(&steps, &[Done, Done, Done, Unfinished], &rb, &[], &prior());
        let r = reconcile(
            &e,
            &live(false, "3.11.1"),
            &detection("3.10.0", "3.10.0"),
            Some(&detection("3.11.1", "3.11.1")),
            &prior(),
            "3.11.1",
            Onward::Rollback(&rb),
        );
        assert!(
            r.disagreements
                .iter()
                .any(|d| d
                    .contains("the rollback would start `app` at 3.10.0 on data that is newer")),
            "{r:?}"
        );
        // Versions compare as versions: data at 3.9.0 is older than 3.10.0 (as text it is not).
        let old = Prior {
            services: BTreeMap::from([(
                "app".to_string(),
                PriorService {
                    running: true,
                    version: "3.10.0".into(),
                    detail: String::new(),
                },
            )]),
        };
        let r = reconcile(
            &e,
            &live(false, "3.11.1"),
            &detection("3.10.0", "3.9.0"),
            Some(&detection("3.11.1", "3.9.0")),
            &old,
            "3.11.1",
            Onward::Rollback(&rb),
        );
        assert!(r.disagreements.is_empty(), "{r:?}");
    }
}
