//! The steps of a Bytebase upgrade and restore (product-facts §1.6 and "What an adapter must
//! encode → Bytebase").

use semver::Version;
use upshift_adapter_sdk::steps::{
    db_backup, db_restore, files_restore, files_snapshot, http_check, plan, preflight,
    service_start, service_stop, service_switch, wait_healthy,
};
use upshift_adapter_sdk::{BackupMethod, NamespaceColumn, Plan, RestoreTarget, Step};

use crate::rules::StoreMode;

/// The actuator path a version serves.
pub fn actuator_path(version: &Version) -> &'static str {
    if version.major >= 2 {
        "/v1/actuator/info"
    } else {
        "/api/actuator/info"
    }
}

/// The upgrade plan for an allowed jump, by where the metadata lives.
pub fn upgrade_in(store: StoreMode, from: &Version, to: &Version) -> Plan {
    match store {
        StoreMode::External => upgrade(from, to),
        StoreMode::Embedded => upgrade_embedded(from, to),
    }
}

/// The notes every upgrade plan carries beside its store's own.
fn common_notes(current: &str, to: &Version) -> Vec<String> {
    let t = to.to_string();
    let mut notes = vec![
        "Bytebase migrates its metadata when the new version starts; a PATCH release may migrate too.".to_string(),
        format!("If anything fails, Upshift restores the backup and starts {current} again: an old binary must never run on the migrated schema (Bytebase would start silently on it)."),
    ];
    // Planned only because the operator passed --allow-unknown (rule `unknown-release`).
    if crate::catalog::unknown_target(to) {
        notes.push(format!(
            "{t} is not in this adapter's release catalog ({}), planned because --allow-unknown was given: the adapter cannot know its rules (schema files, stepping stones, refusals); verification checks only that the schema is a {}.{} file or older and not older than what the newest known release before it ships.",
            crate::catalog::RANGE,
            to.major,
            to.minor
        ));
    }
    notes
}

/// Start `version`, wait until healthy, and check that the API reports it.
fn run_and_check(version: &Version, start_title: String) -> [Step; 3] {
    let t = version.to_string();
    [
        service_start("start", "app", start_title),
        wait_healthy("wait-healthy", "app", 180_000, "wait for /healthz"),
        http_check(
            "check-version",
            "api",
            actuator_path(version),
            200,
            Some(&t),
            format!("the API reports {t}"),
        ),
    ]
}

/// The upgrade plan of a Bytebase whose metadata is its embedded PostgreSQL under `--data`
/// (§1.2, §1.6): the store stops with the service, so the backup is a copy of the whole data
/// directory taken while it is stopped (`cp -rp <data> <data>.bak`, made a checksummed snapshot).
pub fn upgrade_embedded(from: &Version, to: &Version) -> Plan {
    let (current, t) = (from.to_string(), to.to_string());
    let mut steps = vec![
        preflight(
            &t,
            format!(
                "re-check that the metadata allows {current} → {t} (read from the embedded PostgreSQL while Bytebase runs)"
            ),
        ),
        service_stop(
            "stop",
            "app",
            "stop Bytebase, and with it its embedded PostgreSQL: a copy of a live pgdata is not consistent",
        ),
        files_snapshot(
            "snapshot-data",
            "data",
            "copy the whole --data directory (pgdata and the rest), checksummed: the embedded store's backup",
        ),
        service_switch(
            "switch",
            "app",
            &t,
            format!(
                "switch Bytebase to {t} (a container is recreated with the new image, every other parameter kept)"
            ),
        ),
    ];
    steps.extend(run_and_check(
        to,
        format!("start Bytebase {t}; it starts its embedded PostgreSQL and migrates the metadata"),
    ));
    let mut notes = common_notes(&current, to);
    notes.push("The metadata is in the embedded PostgreSQL under --data/pgdata, which stops with Bytebase: it is backed up as a snapshot of the whole data directory, never cloned.".into());
    plan(&current, &t, steps, notes)
}

/// The upgrade plan for an allowed jump (external PostgreSQL metadata).
pub fn upgrade(from: &Version, to: &Version) -> Plan {
    let (current, t) = (from.to_string(), to.to_string());
    let steps = vec![
        preflight(
            &t,
            format!("re-check that the metadata allows {current} → {t}"),
        ),
        service_stop(
            "stop",
            "app",
            "stop Bytebase: only one process may use the metadata, and a template clone needs no other sessions",
        ),
        db_backup(
            "backup-meta",
            "meta",
            BackupMethod::Clone,
            "back up the metadata database (CREATE DATABASE … TEMPLATE)",
        ),
        service_switch(
            "switch",
            "app",
            &t,
            format!("switch the Bytebase binary to {t}"),
        ),
        service_start(
            "start",
            "app",
            format!(
                "start Bytebase {t}; it migrates its metadata at startup under advisory lock 1002"
            ),
        ),
        wait_healthy("wait-healthy", "app", 180_000, "wait for /healthz"),
        http_check(
            "check-version",
            "api",
            actuator_path(to),
            200,
            Some(&t),
            format!("the API reports {t}"),
        ),
    ];
    let notes = common_notes(&current, to);
    plan(&current, &t, steps, notes)
}

/// Put back a snapshot of the data directory (the embedded store's backup): stop, swap the copy
/// in (checked file by file; the replaced directory is kept), run the version it was taken at.
pub fn restore_snapshot(current: &str, v: &Version) -> Plan {
    let version = &v.to_string();
    let mut steps = vec![
        service_stop(
            "stop",
            "app",
            "stop Bytebase and its embedded PostgreSQL before the data directory is replaced",
        ),
        files_restore(
            "restore-data",
            "data",
            format!(
                "put back the data directory copied at {version} (every file checked, swapped in by rename)"
            ),
        ),
        service_switch(
            "switch",
            "app",
            version,
            format!("switch to {version}, the version the copy was taken at"),
        ),
    ];
    steps.extend(run_and_check(v, format!("start Bytebase {version}")));
    plan(
        current,
        version,
        steps,
        vec!["The replaced data directory is kept beside it (`<data>.upshift-replaced-<tag>`); remove it once you are satisfied.".into()],
    )
}

fn namespace() -> Vec<NamespaceColumn> {
    vec![NamespaceColumn {
        table: "migration_history".into(),
        column: "namespace".into(),
    }]
}

/// Restore option 1 of the backup runbook: into the same database, swapped in by rename, then
/// the backup's version started.
pub fn restore_in_place(current: &str, backup_version: &str) -> Plan {
    plan(
        current,
        backup_version,
        vec![
            service_stop("stop", "app", "stop Bytebase: a running server keeps the database from being renamed"),
            db_restore("restore-meta", "meta", RestoreTarget::SameDatabase, namespace(), "restore the metadata beside the live one, then swap names"),
            service_switch("switch", "app", backup_version, format!("switch to {backup_version}, the version the backup was taken at")),
            service_start("start", "app", format!("start Bytebase {backup_version}")),
            wait_healthy("wait-healthy", "app", 180_000, "wait for /healthz"),
        ],
        vec!["The replaced metadata database is kept under a new name; drop it once you are satisfied.".into()],
    )
}

/// Restore option 2: into a differently named database, with the `namespace` rewrite.
pub fn restore_into(current: &str, backup_version: &str, name: &str) -> Plan {
    plan(
        current,
        backup_version,
        vec![db_restore(
            "restore-meta",
            "meta",
            RestoreTarget::NewDatabase(name.to_string()),
            namespace(),
            format!(
                "restore the metadata into `{name}` and move its change history (migration_history.namespace) to it"
            ),
        )],
        vec![format!(
            "The running instance is untouched. To use the copy, point PG_URL at `{name}` and start Bytebase {backup_version}."
        )],
    )
}
