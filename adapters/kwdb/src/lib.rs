//! The KWDB (KaiwuDB) upgrade adapter: a standalone KWDB in a container (or as a binary), its
//! data directory and its extern directory. The rules live in [`rules`]; this file wires them
//! to the contract.

pub mod detect;
pub mod export;
pub mod rules;
pub mod steps;
pub mod verify;

use upshift_adapter_sdk::rules::parse_pair;
use upshift_adapter_sdk::rules::unparseable;
use upshift_adapter_sdk::{
    AdapterError, AdapterInfo, BackupMethod, Check, Detection, Guest, Plan, Refusal,
    RestoreRequest, StepOutput, error, refuse, versions,
};

upshift_adapter_sdk::manifest! {
    product: "kwdb",
    adapter_version: "0.1.0",
    supported_versions: ">=2.0.0, <4.0.0",
    bindings: [
        { name: "sql", kind: db, access: [read, backup], purpose: "the running KWDB's SQL port (kwdb:// URL): version(), health, row counts, EXPORT", optional: false },
        { name: "app", kind: service, access: [inspect, control, switch_version], purpose: "the KWDB container or binary: stop, recreate with the new image, start", optional: false },
        { name: "store", kind: files, access: [read, snapshot, restore], purpose: "the data directory (--store), copied before an in-place upgrade", optional: false },
        { name: "extern", kind: files, access: [read, write, snapshot, restore], purpose: "the extern directory behind nodelocal://1 (shared with `next`): the exports, their counts, meta.sql edits", optional: false },
        { name: "next", kind: service, access: [inspect, control, switch_version], purpose: "a new, empty instance for upgrades that are never in place (2.x → 3.x)", optional: true },
        { name: "next-sql", kind: db, access: [read, restore], purpose: "the new instance's SQL port: IMPORT and row counts", optional: true },
    ],
}

const EXAMPLE: &str = "3.1.0";

struct Kwdb;

impl Guest for Kwdb {
    fn describe() -> AdapterInfo {
        manifest()
    }

    fn detect() -> Result<Detection, AdapterError> {
        detect::detect()
    }

    fn plan(current: Detection, target: String) -> Result<Plan, Refusal> {
        let (from, to) = parse_pair("KWDB", &current.version, &target, EXAMPLE)?;
        let method =
            rules::check(&from, &to, &detect::facts_of(&current)).map_err(Refusal::from)?;
        Ok(steps::upgrade(
            &from.to_string(),
            &to.to_string(),
            method,
            rules::strips_partition_interval(&to),
            current.facts.is_empty(),
        ))
    }

    fn run_step(name: String, payload: String) -> Result<StepOutput, AdapterError> {
        match name.as_str() {
            "preflight" => {
                let live = detect::detect()?;
                let (from, to) = parse_pair("KWDB", &live.version, &payload, EXAMPLE)
                    .map_err(|r| error(r.reason))?;
                let method = rules::check(&from, &to, &detect::facts_of(&live))
                    .map_err(|r| error(format!("refused by rule `{}`: {}", r.rule, r.reason)))?;
                Ok(StepOutput {
                    summary: format!(
                        "{from} → {to} allowed ({}); databases: {}",
                        match method {
                            rules::Method::InPlace => "in place",
                            rules::Method::ExportImport => "export/import into `next`",
                        },
                        live.fact("user-databases")
                            .filter(|d| !d.is_empty())
                            .unwrap_or("none")
                    ),
                })
            }
            "export" => export::export(),
            "prepare-meta" => export::prepare_meta(),
            "import" => export::import(),
            "compare-counts" => export::compare(&payload),
            other => Err(error(format!("unknown step `{other}`"))),
        }
    }

    fn verify(expected: String) -> Result<Vec<Check>, AdapterError> {
        verify::verify(&expected)
    }

    fn plan_restore(request: RestoreRequest) -> Result<Plan, Refusal> {
        let backup = &request.backup;
        if backup.binding != "store" || backup.method != BackupMethod::Snapshot {
            return Err(refuse(
                "restore-by-import",
                format!(
                    "backup {} is not a copy of the data directory; KWDB returns to an export by importing it into an empty instance of {} (§2.7)",
                    backup.id, backup.product_version
                ),
                &[],
                "deploy an empty instance of that version and IMPORT the export under the extern directory's upshift/",
            ));
        }
        let version = versions::parse(&backup.product_version)
            .ok_or_else(|| {
                unparseable(
                    "KWDB",
                    "the backup's version",
                    &backup.product_version,
                    EXAMPLE,
                )
            })?
            .to_string();
        let current = request
            .current_version
            .clone()
            .unwrap_or_else(|| "unknown".into());
        if request.into.is_some() {
            return Err(refuse(
                "restore-into-unsupported",
                "a data-directory copy is restored over the bound data directory only",
                &[],
                "drop --into",
            ));
        }
        Ok(steps::restore_store(&current, &version))
    }
}

upshift_adapter_sdk::export_adapter!(Kwdb);
