//! The steps of an OpenMetadata upgrade and restore (product-facts §3.3, §3.4; seed
//! `openmetadata-upgrade.md`): back up (version-shaped) → stop → switch → migrate → start →
//! verify. `migrate` is the operator's one-shot job (`openmetadata-ops.sh migrate`), never
//! with `--force`.

use upshift_adapter_sdk::steps::{
    db_backup, db_restore, http_check, plan, preflight, service_start, service_stop,
    service_switch, wait_healthy,
};
use upshift_adapter_sdk::{BackupMethod, Plan, RestoreTarget, Step};

/// Wait until the server is healthy and check that it reports `version`.
fn serving(version: &str) -> [Step; 2] {
    [
        wait_healthy(
            "wait-healthy",
            "server",
            180_000,
            "wait for the admin /healthcheck",
        ),
        http_check(
            "check-version",
            "api",
            "/api/v1/version",
            200,
            Some(version),
            format!("/api/v1/version reports {version}"),
        ),
    ]
}

/// The upgrade plan for an allowed jump.
pub fn upgrade(current: &str, target: &str) -> Plan {
    let notes = vec![
        format!("The backup has the shape of {current}: it can only ever be restored into a {current} database, and `upshift restore` starts {current} on it."),
        "Migrations run through the bound `migrate` job (`./bootstrap/openmetadata-ops.sh migrate`) and never with `--force`, which loses roles, policies and bots after 1.11 (PR #24985).".to_string(),
        "Search indexes are not backed up: after the upgrade run `./bootstrap/openmetadata-ops.sh reindex` (and `deploy-pipelines` if ingestion pipelines exist).".to_string(),
    ];
    let mut steps = vec![
        preflight(
            target,
            format!("re-check that the database allows {current} → {target}"),
        ),
        service_stop(
            "stop",
            "server",
            "stop the server, so the backup is consistent and nothing writes during the migration",
        ),
        db_backup(
            "backup-meta",
            "meta",
            BackupMethod::Dump,
            format!("back up the database (shaped as {current})"),
        ),
        service_switch(
            "switch-server",
            "server",
            target,
            format!("switch the server to {target}"),
        ),
        service_switch(
            "switch-migrate",
            "migrate",
            target,
            format!("switch the migration job to {target}"),
        ),
        service_start(
            "migrate",
            "migrate",
            format!("run {target}'s `openmetadata-ops.sh migrate` to completion"),
        ),
        service_start(
            "start",
            "server",
            format!(
                "start OpenMetadata {target}; it refuses to start if a migration is still pending"
            ),
        ),
    ];
    steps.extend(serving(target));
    plan(current, target, steps, notes)
}

/// Restore per the seed: a clean database shaped as the backup's version (the dump carries
/// exactly that schema), the data, and that version started on it.
pub fn restore(current: &str, backup_version: &str, into: Option<&str>) -> Plan {
    let Some(name) = into else {
        let mut steps = vec![
            service_stop(
                "stop",
                "server",
                "stop the server before its database is replaced",
            ),
            db_restore(
                "restore-meta",
                "meta",
                RestoreTarget::SameDatabase,
                vec![],
                format!(
                    "restore the {backup_version} backup into a clean database beside the live one, then swap names"
                ),
            ),
            service_switch(
                "switch-server",
                "server",
                backup_version,
                format!(
                    "switch the server to {backup_version}, the version the backup was taken at"
                ),
            ),
            service_switch(
                "switch-migrate",
                "migrate",
                backup_version,
                format!("switch the migration job to {backup_version}"),
            ),
            service_start(
                "migrate",
                "migrate",
                format!(
                    "run {backup_version}'s migrate: nothing may be pending on a {backup_version}-shaped database"
                ),
            ),
            service_start(
                "start",
                "server",
                format!("start OpenMetadata {backup_version}"),
            ),
        ];
        steps.extend(serving(backup_version));
        let notes = vec![
            "The replaced database is kept under a new name; drop it once you are satisfied."
                .into(),
            "Rebuild the search indexes afterwards: `./bootstrap/openmetadata-ops.sh reindex`."
                .into(),
        ];
        return plan(current, backup_version, steps, notes);
    };
    let restore = db_restore(
        "restore-meta",
        "meta",
        RestoreTarget::NewDatabase(name.to_string()),
        vec![],
        format!("restore the {backup_version} backup into a new, clean database `{name}`"),
    );
    let note = format!(
        "The running instance is untouched. `{name}` is shaped as {backup_version}: only OpenMetadata {backup_version} may be pointed at it (OM_DATABASE={name})."
    );
    plan(current, backup_version, vec![restore], vec![note])
}
