//! The Bytebase upgrade adapter: Bytebase with an external PostgreSQL metadata database, run as
//! a plain binary. The rules are the tables in [`rules`]; [`detect`] reads the instance and
//! [`steps`] holds the plans.

pub mod catalog;
pub mod detect;
pub mod rules;
pub mod steps;
pub mod verify;

use semver::Version;
use upshift_adapter_sdk::rules::{Jump, Rule, Stone, backup_version};
use upshift_adapter_sdk::{
    AdapterError, BackupMethod, Check, Detection, Plan, Product, Refusal, RestoreRequest, refuse,
};

upshift_adapter_sdk::manifest! {
    product: "bytebase",
    adapter_version: "0.1.0",
    supported_versions: ">=0.1.0, <4.0.0",
    catalog: ">=3.3.1, <=3.21.1",
    bindings: [
        { name: "meta", kind: db, access: [read, backup, restore], purpose: "the metadata database (PG_URL, or the embedded PostgreSQL's socket): read the schema version; the host backs up and restores an external one", optional: false },
        { name: "app", kind: service, access: [inspect, control, switch_version], purpose: "the Bytebase process: stop, switch binary version, start", optional: false },
        { name: "api", kind: http, access: [read], purpose: "Bytebase's HTTP API: /healthz and /v1/actuator/info", optional: false },
        { name: "data", kind: files, access: [read, snapshot, restore], purpose: "the --data directory: detect an embedded PostgreSQL (pgdata/PG_VERSION); with one, the host snapshots it while Bytebase is stopped and restores it", optional: true },
    ],
}

/// Bytebase, as the SDK's [`Product`].
pub struct Bytebase;

impl Product for Bytebase {
    const NAME: &'static str = "Bytebase";
    const EXAMPLE: &'static str = "3.11.1";
    const NEWEST_MAJOR: u64 = 3;
    const REFUSALS: &'static [Rule<Self>] = rules::REFUSALS;
    const STONES: &'static [Stone<Self>] = rules::STONES;
    const OFFLINE_NOTE: Option<&'static str> = Some(
        "Offline plan: the live checks (schema format, database_id rows, duplicate versions, embedded PostgreSQL 14) run again in `preflight` and may still refuse.",
    );
    type Facts = rules::Facts;

    /// The catalog is judged when planning, where the operator's `--allow-unknown` is; a plan
    /// for an unknown release exists only because the operator allowed it, so `preflight`
    /// re-judges what can change on the live instance and not the target's place in the
    /// catalog.
    fn recheck(live: &Detection, _target: &Version) -> Result<rules::Facts, AdapterError> {
        Ok(rules::Facts {
            allow_unknown: Some(true),
            ..<rules::Facts as upshift_adapter_sdk::FromFacts>::from_facts(live)
        })
    }

    fn detect() -> Result<Detection, AdapterError> {
        detect::detect()
    }

    fn upgrade(from: &Version, to: &Version) -> Plan {
        steps::upgrade(from, to)
    }

    /// The embedded store is backed up as a snapshot of the data directory, never cloned.
    fn upgrade_for(jump: &Jump<Self>) -> Plan {
        let store = jump.facts.store_mode.unwrap_or(rules::StoreMode::External);
        steps::upgrade_in(store, jump.from, jump.to)
    }

    fn verify(expected: &str) -> Result<Vec<Check>, AdapterError> {
        verify::verify(expected)
    }

    fn restore(request: &RestoreRequest) -> Result<Plan, Refusal> {
        let version = backup_version::<Self>(request)?;
        let current = request.current();
        if request.backup.method == BackupMethod::Snapshot {
            if request.backup.binding != "data" {
                return Err(refuse(
                    "restore-unknown-snapshot",
                    format!(
                        "backup {} is a snapshot of binding `{}`; Bytebase restores snapshots of its data directory (`data`) only",
                        request.backup.id, request.backup.binding
                    ),
                    &[],
                    "pick a backup of `data` or of `meta` (`upshift backups INSTANCE`)",
                ));
            }
            if request.into.is_some() {
                return Err(refuse(
                    "restore-into-unsupported",
                    "a snapshot of the data directory is restored over the bound data directory only",
                    &[],
                    "drop --into",
                ));
            }
            return Ok(steps::restore_snapshot(&current, &version));
        }
        let backup = version.to_string();
        Ok(match &request.into {
            None => steps::restore_in_place(&current, &backup),
            Some(name) => steps::restore_into(&current, &backup, name),
        })
    }

    fn allowed(jump: &Jump<Self>, live: &Detection) -> String {
        format!(
            "{} → {} allowed (schema {}, {} database_id row(s))",
            jump.from,
            jump.to,
            live.fact("schema-format").unwrap_or("unknown"),
            live.fact("database-id-rows").unwrap_or("?")
        )
    }
}

upshift_adapter_sdk::export_product!(Bytebase);

#[cfg(test)]
mod tests {
    use super::*;
    use upshift_adapter_sdk::{Action, BackupInfo, exports, fact};

    fn ids(plan: &Plan) -> Vec<&str> {
        plan.steps.iter().map(|s| s.id.as_str()).collect()
    }

    fn live(store: &str, running: bool, schema: Option<&str>) -> Detection {
        let mut facts = vec![
            fact("store-mode", store),
            fact("service-running", running.to_string()),
        ];
        if let Some(s) = schema {
            facts.push(fact("schema-version", s));
            facts.push(fact("schema-format", "semver"));
        }
        Detection {
            version: "3.10.0".into(),
            facts,
        }
    }

    #[test]
    fn the_embedded_store_is_snapshotted_while_stopped_and_never_cloned() {
        let plan = exports::plan::<Bytebase>(&live("embedded", true, Some("3.10.2")), "3.11.1")
            .expect("allowed");
        assert_eq!(
            ids(&plan),
            [
                "preflight",
                "stop",
                "snapshot-data",
                "switch",
                "start",
                "wait-healthy",
                "check-version"
            ]
        );
        assert!(
            plan.steps
                .iter()
                .any(|s| matches!(&s.action, Action::FilesSnapshot(b) if b == "data"))
        );
        assert!(
            !plan
                .steps
                .iter()
                .any(|s| matches!(s.action, Action::DbBackup(_))),
            "the embedded store stops with the service: never cloned"
        );
        let external = exports::plan::<Bytebase>(&live("external", true, Some("3.10.2")), "3.11.1")
            .expect("allowed");
        assert!(ids(&external).contains(&"backup-meta"));
        // Offline (no facts): the external plan, as before.
        let offline = exports::plan::<Bytebase>(
            &Detection {
                version: "3.10.0".into(),
                facts: vec![],
            },
            "3.11.1",
        )
        .expect("allowed");
        assert!(ids(&offline).contains(&"backup-meta"));
    }

    #[test]
    fn a_stopped_embedded_store_is_refused_until_bytebase_runs() {
        let refused = exports::plan::<Bytebase>(&live("embedded", false, None), "3.11.1")
            .expect_err("schema unread");
        assert_eq!(refused.rule, "embedded-store-down");
        assert!(
            refused.advice.contains("upshift start"),
            "{}",
            refused.advice
        );
    }

    #[test]
    fn a_data_snapshot_is_restored_by_swapping_it_back_and_running_its_version() {
        let request = |binding: &str, into: Option<&str>| RestoreRequest {
            backup: BackupInfo {
                id: "b1".into(),
                binding: binding.into(),
                product_version: "3.10.0".into(),
                method: BackupMethod::Snapshot,
            },
            current_version: Some("3.11.1".into()),
            into: into.map(Into::into),
        };
        let plan = Bytebase::restore(&request("data", None)).expect("plan");
        assert_eq!(
            ids(&plan),
            [
                "stop",
                "restore-data",
                "switch",
                "start",
                "wait-healthy",
                "check-version"
            ]
        );
        assert_eq!(plan.to_version, "3.10.0");
        let into = Bytebase::restore(&request("data", Some("x"))).expect_err("into");
        assert_eq!(into.rule, "restore-into-unsupported");
        let other = Bytebase::restore(&request("meta", None)).expect_err("not data");
        assert_eq!(other.rule, "restore-unknown-snapshot");
    }
}
