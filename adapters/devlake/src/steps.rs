//! The steps of a DevLake upgrade and restore (product-facts §4.5, seed `devlake-upgrade.md`):
//! back up the database and the `.env`, switch the tag (Compose, approach 1) or start a new
//! instance on the kept `.env` (process or container, approach 2), pass the migration gate,
//! verify.

use upshift_adapter_sdk::steps::{
    custom, db_backup, db_restore, files_snapshot, http_check, plan, preflight, service_start,
    service_stop, service_switch, wait_healthy,
};
use upshift_adapter_sdk::{BackupMethod, Plan, RestoreTarget};

/// The upgrade plan for an allowed jump (`current` and `target` are tags, `v1.0.1`).
pub fn upgrade(current: &str, target: &str) -> Plan {
    let notes = vec![
        "DevLake's migrations are one-way: once /proceed-db-migration has run, going back means restoring this run's backup (Upshift does that if anything fails).".to_string(),
        "Customised Grafana dashboards are replaced on upgrade: export them first; Upshift does not manage Grafana.".to_string(),
    ];
    let steps = vec![
        preflight(
            target,
            "check the .env's secret: present, carried over from ENCODE_KEY, and able to decrypt the stored tokens",
        ),
        service_stop(
            "stop",
            "app",
            "stop DevLake: its lock on _devlake_locking_stub would hang a dump, and nothing may write during the migration",
        ),
        db_backup(
            "backup-lake",
            "lake",
            BackupMethod::Dump,
            format!("back up the database (single-transaction dump, shaped as {current})"),
        ),
        files_snapshot(
            "snapshot-config",
            "config",
            "snapshot the .env (DB_URL, ENCRYPTION_SECRET)",
        ),
        service_switch(
            "switch",
            "app",
            target,
            format!("switch DevLake to {target}, keeping the .env"),
        ),
        service_start("start", "app", format!("start DevLake {target}")),
        custom(
            "migrate",
            "pass-migration-gate",
            target,
            true,
            "confirm the pending migration scripts (/proceed-db-migration) and wait until the API serves",
        ),
        wait_healthy(
            "wait-healthy",
            "app",
            120_000,
            "wait until DevLake is healthy",
        ),
        http_check(
            "check-version",
            "api",
            "/version",
            200,
            Some(target),
            format!("/version reports {target}"),
        ),
    ];
    plan(current, target, steps, notes)
}

/// Restore the database backup and start the version it was taken at.
pub fn restore(current: &str, backup_version: &str, into: Option<&str>) -> Plan {
    if let Some(name) = into {
        let restore = db_restore(
            "restore-lake",
            "lake",
            RestoreTarget::NewDatabase(name.to_string()),
            vec![],
            format!("restore the {backup_version} backup into a new database `{name}`"),
        );
        let note = format!(
            "The running instance is untouched. Point a DevLake {backup_version} with the same ENCRYPTION_SECRET at `{name}` to use it."
        );
        return plan(current, backup_version, vec![restore], vec![note]);
    }
    plan(
        current,
        backup_version,
        vec![
            service_stop("stop", "app", "stop DevLake before its database is replaced"),
            db_restore("restore-lake", "lake", RestoreTarget::SameDatabase, vec![], format!("restore the {backup_version} backup beside the live database, then swap it in")),
            service_switch("switch", "app", backup_version, format!("switch DevLake to {backup_version}, the version the backup was taken at")),
            service_start("start", "app", format!("start DevLake {backup_version} with the same ENCRYPTION_SECRET")),
            custom("migrate", "pass-migration-gate", backup_version, true, "wait until the API serves (nothing should be pending)"),
            wait_healthy("wait-healthy", "app", 120_000, "wait until DevLake is healthy"),
        ],
        vec!["The replaced tables are kept beside the restored ones; drop them once you are satisfied.".into()],
    )
}
