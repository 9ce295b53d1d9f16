//! The two shapes of a KWDB upgrade (product-facts "What an adapter must encode → KWDB"):
//! in place (same major, offline: export, stop, copy the data directory, new image with every
//! other parameter kept, start, compare counts) and export/import into a new instance (1.x/2.x
//! → 3.x and the other paths §2.3 lists as export/import), then cut over.

use upshift_adapter_sdk::Plan;
use upshift_adapter_sdk::steps::{
    custom, files_restore, files_snapshot, service_start, service_stop, service_switch,
    wait_healthy,
};

use crate::rules::Method;

/// The plan for an allowed upgrade.
pub fn upgrade(current: &str, target: &str, method: Method, strip: bool, offline: bool) -> Plan {
    let mut notes = vec![
        "KWDB cannot simply be downgraded after an upgrade: the export and the data-directory copy taken here are the way back (§2.3).".to_string(),
        "Standalone and single-replica nodes only: multi-replica clusters need `kwbase node upgrade` node by node (and `ts.raft_log.sync_period = '0s'` five minutes before 3.0/3.1 → 3.2), which this adapter does not drive.".to_string(),
    ];
    let export = custom(
        "export",
        "export",
        target,
        true,
        "EXPORT every user database (WITH privileges, comment), the users and the cluster settings to nodelocal://1/upshift/export-N, with every table's row count",
    );
    let steps = match method {
        Method::InPlace => vec![
            custom(
                "preflight",
                "preflight",
                target,
                false,
                format!("re-check the path {current} → {target}, range health and running jobs"),
            ),
            export,
            service_stop("stop", "app", "stop KWDB: the in-place upgrade is offline"),
            files_snapshot(
                "snapshot-store",
                "store",
                "copy the data directory (restorable to this same version only)",
            ),
            service_switch(
                "switch",
                "app",
                target,
                format!(
                    "recreate the container with {target}'s image, every other parameter unchanged"
                ),
            ),
            service_start("start", "app", format!("start KWDB {target}")),
            wait_healthy("wait-healthy", "app", 180_000, "wait until KWDB answers"),
            custom(
                "compare-counts",
                "compare-counts",
                "sql",
                false,
                "compare every table's row count with the export",
            ),
        ],
        Method::ExportImport => {
            notes.push(format!("{current} → {target} is never in place: a new {target} instance (bound as `next` / `next-sql`, sharing the extern directory) receives an export of this one. The old instance is stopped at the end and kept untouched; repoint clients and the fleet file at the new one."));
            notes.push("Users are imported without passwords (EXPORT USERS does not carry them): reset them on the new instance.".into());
            let mut steps = vec![
                custom(
                    "preflight",
                    "preflight",
                    target,
                    false,
                    format!(
                        "re-check the path {current} → {target}, range health, running jobs, and that `next` is bound and empty"
                    ),
                ),
                export,
                files_snapshot(
                    "snapshot-export",
                    "extern",
                    "keep the export as a checksummed, catalogued backup",
                ),
            ];
            if strip {
                steps.push(custom("prepare-meta", "prepare-meta", target, true, format!("remove PARTITION INTERVAL from meta.sql: {target} no longer accepts it and the import would fail (§2.2)")));
            }
            steps.extend([
                service_switch("switch-next", "next", target, format!("set the new instance to {target}")),
                service_start("start-next", "next", format!("start the new KWDB {target}")),
                wait_healthy("wait-next", "next", 180_000, "wait until the new instance answers"),
                custom("import", "import", target, true, "IMPORT every database (WITH privileges), the users and the cluster settings into the new instance; any rejected row fails"),
                custom("compare-counts", "compare-counts", "next-sql", false, "compare every table's row count on the new instance with the export"),
                service_stop("cut-over", "app", format!("cut over: stop the old {current} instance (kept as it is)")),
            ]);
            steps
        }
    };
    if offline {
        notes.push("Offline plan: range health, running jobs and (for export/import) the `next` instance are checked again in `preflight` and may still refuse.".into());
    }
    Plan {
        from_version: current.to_string(),
        to_version: target.to_string(),
        steps,
        notes,
    }
}

/// Go back to a data-directory copy (§2.3: "restore from the pre-upgrade data-dir copy (same
/// version only)"): stop, put the copy back, run the version it was taken at.
pub fn restore_store(current: &str, version: &str) -> Plan {
    Plan {
        from_version: current.to_string(),
        to_version: version.to_string(),
        steps: vec![
            service_stop(
                "stop",
                "app",
                "stop KWDB before its data directory is replaced",
            ),
            files_restore(
                "restore-store",
                "store",
                format!("put back the data directory copied at {version}"),
            ),
            service_switch(
                "switch",
                "app",
                version,
                format!(
                    "switch KWDB back to {version}: the copy only fits the version it was taken at"
                ),
            ),
            service_start("start", "app", format!("start KWDB {version}")),
            wait_healthy("wait-healthy", "app", 180_000, "wait until KWDB answers"),
        ],
        notes: vec![
            "The replaced data directory is kept beside it; remove it once you are satisfied."
                .into(),
        ],
    }
}
