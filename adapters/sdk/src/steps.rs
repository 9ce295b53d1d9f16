//! Builders for plan steps, so adapters state *what* happens and not how records are spelled.

use crate::{
    Action, AdapterError, BackupMethod, CustomAction, DbBackupAction, DbRestoreAction,
    HttpCheckAction, NamespaceColumn, Plan, RestoreTarget, Step, StepOutput, SwitchAction,
    WaitAction,
};

/// The name (and id) of the step that judges the upgrade again on the live instance; the SDK
/// runs it (see [`crate::exports::run_step`]).
pub const PREFLIGHT: &str = "preflight";

/// How the adapter runs one of its custom steps (`run-step`): the step's name and the function
/// given its payload. A product lists them in [`crate::Product::CUSTOM_STEPS`].
pub struct CustomStep {
    /// The name the plan's [`custom`] step gives.
    pub name: &'static str,
    /// Run it with the step's payload.
    pub run: fn(&str) -> Result<StepOutput, AdapterError>,
}

/// A plan from `from` to `to`: its steps in order and the notes printed with it.
pub fn plan(from: &str, to: &str, steps: Vec<Step>, notes: Vec<String>) -> Plan {
    Plan {
        from_version: from.to_string(),
        to_version: to.to_string(),
        steps,
        notes,
    }
}

fn step(id: &str, title: impl Into<String>, action: Action) -> Step {
    Step {
        id: id.to_string(),
        title: title.into(),
        action,
    }
}

/// Back up a database; restored automatically if the run rolls back.
pub fn db_backup(id: &str, binding: &str, method: BackupMethod, title: impl Into<String>) -> Step {
    step(
        id,
        title,
        Action::DbBackup(DbBackupAction {
            binding: binding.to_string(),
            method,
            restore_on_rollback: true,
        }),
    )
}

/// Restore the chosen backup of a database.
pub fn db_restore(
    id: &str,
    binding: &str,
    target: RestoreTarget,
    namespace_columns: Vec<NamespaceColumn>,
    title: impl Into<String>,
) -> Step {
    step(
        id,
        title,
        Action::DbRestore(DbRestoreAction {
            binding: binding.to_string(),
            target,
            namespace_columns,
        }),
    )
}

/// Snapshot a bound directory.
pub fn files_snapshot(id: &str, binding: &str, title: impl Into<String>) -> Step {
    step(id, title, Action::FilesSnapshot(binding.to_string()))
}

/// Restore the snapshot the operator chose (`upshift restore`) over a bound directory.
pub fn files_restore(id: &str, binding: &str, title: impl Into<String>) -> Step {
    step(id, title, Action::FilesRestore(binding.to_string()))
}

/// Stop a service.
pub fn service_stop(id: &str, binding: &str, title: impl Into<String>) -> Step {
    step(id, title, Action::ServiceStop(binding.to_string()))
}

/// Start a service.
pub fn service_start(id: &str, binding: &str, title: impl Into<String>) -> Step {
    step(id, title, Action::ServiceStart(binding.to_string()))
}

/// Switch a stopped service to another product version.
pub fn service_switch(id: &str, binding: &str, version: &str, title: impl Into<String>) -> Step {
    step(
        id,
        title,
        Action::ServiceSwitch(SwitchAction {
            binding: binding.to_string(),
            version: version.to_string(),
        }),
    )
}

/// Wait for a service to report healthy.
pub fn wait_healthy(id: &str, binding: &str, timeout_ms: u32, title: impl Into<String>) -> Step {
    step(
        id,
        title,
        Action::WaitHealthy(WaitAction {
            binding: binding.to_string(),
            timeout_ms,
        }),
    )
}

/// Expect an HTTP endpoint to answer with `status` (and a body containing `contains`).
pub fn http_check(
    id: &str,
    binding: &str,
    path: &str,
    status: u16,
    contains: Option<&str>,
    title: impl Into<String>,
) -> Step {
    step(
        id,
        title,
        Action::HttpCheck(HttpCheckAction {
            binding: binding.to_string(),
            path: path.to_string(),
            expect_status: status,
            expect_body_contains: contains.map(str::to_string),
            timeout_ms: 10_000,
        }),
    )
}

/// A step the adapter runs itself through `run-step`.
pub fn custom(
    id: &str,
    name: &str,
    payload: &str,
    mutates: bool,
    title: impl Into<String>,
) -> Step {
    step(
        id,
        title,
        Action::Custom(CustomAction {
            name: name.to_string(),
            payload: payload.to_string(),
            mutates,
        }),
    )
}

/// The `preflight` step: detect the instance again and judge the upgrade to `target` by the
/// rules before anything changes.
pub fn preflight(target: &str, title: impl Into<String>) -> Step {
    custom(PREFLIGHT, PREFLIGHT, target, false, title)
}
