//! Every operation the audit log names: the WIT functions an adapter imports, the adapter exports
//! a fault or a refused plan is recorded against, and the host operations done on an adapter's
//! behalf (plan actions, rollbacks, the clean-up after a verified run).
//!
//! An operation's name is what the audit record's `operation` field holds. WIT operations are
//! named exactly as in `wit/adapter.wit`; host operations are listed in `docs/capabilities.md`.

use std::fmt;

use upshift_model::grants::Access;

/// One audited operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operation {
    /// `db.query`.
    Query,
    /// `db.execute`.
    Execute,
    /// `db.transaction`.
    Transaction,
    /// `db.table-exists`.
    TableExists,
    /// `files.read`.
    Read,
    /// `files.write`.
    Write,
    /// `files.list-dir`.
    ListDir,
    /// `files.exists`.
    Exists,
    /// `service.inspect`.
    Inspect,
    /// `service.healthy`.
    Healthy,
    /// `service.image-present`.
    ImagePresent,
    /// `service.load-image` (audited on the service binding, and on the files binding it reads).
    LoadImage,
    /// `http.request`.
    Request,
    /// `log.write` (only a flood over the cap is audited).
    LogWrite,
    /// `progress.report` (only a flood over the cap is audited).
    ProgressReport,
    /// The `describe` export.
    Describe,
    /// The `detect` export.
    Detect,
    /// The `plan` export.
    Plan,
    /// The `run-step` export.
    RunStep,
    /// The `verify` export.
    Verify,
    /// The `plan-restore` export.
    PlanRestore,
    /// Host: back up a database (`db-backup`).
    Backup,
    /// Host: restore a database backup or a directory snapshot (`db-restore`, `files-restore`,
    /// rollback restores).
    Restore,
    /// Host: snapshot a directory (`files-snapshot`).
    Snapshot,
    /// Host: stop a service (`service-stop`, rollbacks).
    Stop,
    /// Host: start a service (`service-start`, rollbacks).
    Start,
    /// Host: switch a service's version (`service-switch`, rollbacks).
    SwitchVersion,
    /// Host: wait until a service is healthy (`wait-healthy`, rollbacks).
    WaitHealthy,
    /// Host: expect an HTTP endpoint to answer (`http-check`).
    HttpCheck,
    /// Host: after a verified run, remove what a switch kept for rolling back (the previous
    /// container, the previous Compose file).
    Finalize,
    /// Host: an adapter fault in an export the host does not know by name.
    AdapterFault,
    /// Host: look at a database binding's role before a plan (a privileged role is refused
    /// unless the operator set `privileged = true`).
    CheckRole,
    /// Host: record a service started by hand so Upshift can stop and start it
    /// (`upshift adopt`).
    Adopt,
    /// Host: before a plan that backs a database up, list its sessions and estimate its size
    /// (the preflight).
    Preflight,
}

impl Operation {
    /// Every operation, WIT ones first.
    pub const ALL: [Operation; 34] = [
        Operation::Query,
        Operation::Execute,
        Operation::Transaction,
        Operation::TableExists,
        Operation::Read,
        Operation::Write,
        Operation::ListDir,
        Operation::Exists,
        Operation::Inspect,
        Operation::Healthy,
        Operation::ImagePresent,
        Operation::LoadImage,
        Operation::Request,
        Operation::LogWrite,
        Operation::ProgressReport,
        Operation::Describe,
        Operation::Detect,
        Operation::Plan,
        Operation::RunStep,
        Operation::Verify,
        Operation::PlanRestore,
        Operation::Backup,
        Operation::Restore,
        Operation::Snapshot,
        Operation::Stop,
        Operation::Start,
        Operation::SwitchVersion,
        Operation::WaitHealthy,
        Operation::HttpCheck,
        Operation::Finalize,
        Operation::AdapterFault,
        Operation::CheckRole,
        Operation::Adopt,
        Operation::Preflight,
    ];

    /// The name written to the audit log.
    pub fn name(self) -> &'static str {
        match self {
            Operation::Query => "query",
            Operation::Execute => "execute",
            Operation::Transaction => "transaction",
            Operation::TableExists => "table-exists",
            Operation::Read => "read",
            Operation::Write | Operation::LogWrite => "write",
            Operation::ListDir => "list-dir",
            Operation::Exists => "exists",
            Operation::Inspect => "inspect",
            Operation::Healthy => "healthy",
            Operation::ImagePresent => "image-present",
            Operation::LoadImage => "load-image",
            Operation::Request => "request",
            Operation::ProgressReport => "report",
            Operation::Describe => "describe",
            Operation::Detect => "detect",
            Operation::Plan => "plan",
            Operation::RunStep => "run-step",
            Operation::Verify => "verify",
            Operation::PlanRestore => "plan-restore",
            Operation::Backup => "backup",
            Operation::Restore => "restore",
            Operation::Snapshot => "snapshot",
            Operation::Stop => "stop",
            Operation::Start => "start",
            Operation::SwitchVersion => "switch-version",
            Operation::WaitHealthy => "wait-healthy",
            Operation::HttpCheck => "http-check",
            Operation::Finalize => "finalize",
            Operation::AdapterFault => "adapter-fault",
            Operation::CheckRole => "check-role",
            Operation::Adopt => "adopt",
            Operation::Preflight => "preflight",
        }
    }

    /// True for operations the host performs (not a WIT import or export).
    pub fn is_host(self) -> bool {
        self >= Operation::Backup
    }

    /// The export an adapter fault or a refused plan is recorded against.
    pub fn of_export(export: &str) -> Operation {
        match export {
            "describe" => Operation::Describe,
            "detect" => Operation::Detect,
            "plan" => Operation::Plan,
            "run-step" => Operation::RunStep,
            "verify" => Operation::Verify,
            "plan-restore" => Operation::PlanRestore,
            _ => Operation::AdapterFault,
        }
    }

    /// The access a host operation needs on its binding (WIT operations decide per call).
    pub fn host_access(self) -> Option<Access> {
        Some(match self {
            Operation::Backup => Access::Backup,
            Operation::Restore => Access::Restore,
            Operation::Snapshot => Access::Snapshot,
            Operation::Stop | Operation::Start | Operation::Adopt => Access::Control,
            Operation::Preflight => Access::Backup,
            Operation::SwitchVersion | Operation::Finalize => Access::SwitchVersion,
            Operation::WaitHealthy => Access::Inspect,
            Operation::HttpCheck => Access::Read,
            _ => return None,
        })
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::Operation;

    #[test]
    fn all_is_complete_and_ordered() {
        for (i, op) in Operation::ALL.iter().enumerate() {
            assert_eq!(*op as usize, i, "{op:?}");
        }
        assert!(Operation::Backup.is_host());
        assert!(!Operation::PlanRestore.is_host());
        for op in Operation::ALL {
            assert_eq!(
                op.is_host(),
                op.host_access().is_some() || op >= Operation::Finalize
            );
        }
    }
}
