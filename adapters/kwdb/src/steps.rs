//! The two shapes of a KWDB upgrade (product-facts "What an adapter must encode → KWDB"):
//! in place (same major, offline: export, stop, copy the data directory, new image with every
//! other parameter kept, start, compare counts) and export/import into a new instance (1.x/2.x
//! → 3.x and the other paths §2.3 lists as export/import), then cut over.

use semver::Version;
use upshift_adapter_sdk::steps::{
    custom, files_restore, files_snapshot, plan, preflight, service_start, service_stop,
    service_switch, wait_healthy,
};
use upshift_adapter_sdk::{Plan, Step};

use crate::rules::{Method, strips_partition_interval};

/// Switch the `app` service to `version`, start it and wait until it answers.
fn run_version(version: &str, switch_title: String) -> [Step; 3] {
    [
        service_switch("switch", "app", version, switch_title),
        service_start("start", "app", format!("start KWDB {version}")),
        wait_healthy("wait-healthy", "app", 180_000, "wait until KWDB answers"),
    ]
}

/// The plan for an allowed upgrade.
pub fn upgrade(from: &Version, to: &Version) -> Plan {
    let (current, target) = (&from.to_string(), &to.to_string());
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
    let steps = match Method::of(from, to) {
        Method::InPlace => {
            let mut steps = vec![
                preflight(
                    target,
                    format!(
                        "re-check the path {current} → {target}, range health and running jobs"
                    ),
                ),
                export,
                service_stop("stop", "app", "stop KWDB: the in-place upgrade is offline"),
                files_snapshot(
                    "snapshot-store",
                    "store",
                    "copy the data directory (restorable to this same version only)",
                ),
            ];
            steps.extend(run_version(
                target,
                format!(
                    "recreate the container with {target}'s image, every other parameter unchanged"
                ),
            ));
            steps.push(custom(
                "compare-counts",
                "compare-counts",
                "sql",
                false,
                "compare every table's row count with the export",
            ));
            steps
        }
        Method::ExportImport => {
            notes.push(format!("{current} → {target} is never in place: a new {target} instance (bound as `next` / `next-sql`, sharing the extern directory) receives an export of this one. The old instance is stopped at the end and kept untouched; repoint clients and the fleet file at the new one."));
            notes.push("Users are imported without passwords (EXPORT USERS does not carry them): reset them on the new instance.".into());
            let mut steps = vec![
                preflight(
                    target,
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
            if strips_partition_interval(to) {
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
    plan(current, target, steps, notes)
}

/// Go back to a data-directory copy (§2.3: "restore from the pre-upgrade data-dir copy (same
/// version only)"): stop, put the copy back, run the version it was taken at.
pub fn restore_store(current: &str, version: &str) -> Plan {
    let mut steps = vec![
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
    ];
    steps.extend(run_version(
        version,
        format!("switch KWDB back to {version}: the copy only fits the version it was taken at"),
    ));
    plan(
        current,
        version,
        steps,
        vec![
            "The replaced data directory is kept beside it; remove it once you are satisfied."
                .into(),
        ],
    )
}
