//! The OpenMetadata upgrade adapter: the server and its one-shot migration job over MySQL or
//! PostgreSQL. The rules live in [`rules`]; this file wires them to the contract.

pub mod detect;
pub mod rules;
pub mod steps;
pub mod verify;

use upshift_adapter_sdk::rules::parse_pair;
use upshift_adapter_sdk::{
    AdapterError, AdapterInfo, Check, Detection, Guest, Plan, Refusal, RestoreRequest, StepOutput,
    error, refuse, versions,
};

upshift_adapter_sdk::manifest! {
    product: "openmetadata",
    adapter_version: "0.1.0",
    supported_versions: ">=1.0.0, <3.0.0",
    bindings: [
        { name: "meta", kind: db, access: [read, backup, restore], purpose: "the OpenMetadata database (MySQL or PostgreSQL): read SERVER_CHANGE_LOG; the host backs it up and restores it", optional: false },
        { name: "server", kind: service, access: [inspect, control, switch_version], purpose: "the OpenMetadata server: stop, switch version, start", optional: false },
        { name: "migrate", kind: service, access: [inspect, control, switch_version], purpose: "the one-shot migration job (`./bootstrap/openmetadata-ops.sh migrate`, Compose's execute-migrate-all), run to completion", optional: false },
        { name: "api", kind: http, access: [read], purpose: "the API port (8585): /api/v1/version", optional: false },
        { name: "admin", kind: http, access: [read], purpose: "the admin port (8586): /healthcheck", optional: false },
    ],
}

const EXAMPLE: &str = "1.12.1";

struct OpenMetadata;

impl Guest for OpenMetadata {
    fn describe() -> AdapterInfo {
        manifest()
    }

    fn detect() -> Result<Detection, AdapterError> {
        detect::detect()
    }

    fn plan(current: Detection, target: String) -> Result<Plan, Refusal> {
        let (from, to) = parse_pair("OpenMetadata", &current.version, &target, EXAMPLE)?;
        rules::check(&from, &to, &detect::facts_of(&current)).map_err(Refusal::from)?;
        Ok(steps::upgrade(
            &from.to_string(),
            &to.to_string(),
            current.facts.is_empty(),
        ))
    }

    fn run_step(name: String, payload: String) -> Result<StepOutput, AdapterError> {
        match name.as_str() {
            "preflight" => {
                let live = detect::detect()?;
                let (from, to) = parse_pair("OpenMetadata", &live.version, &payload, EXAMPLE)
                    .map_err(|r| error(r.reason))?;
                let facts = detect::facts_of(&live);
                rules::check(&from, &to, &facts)
                    .map_err(|r| error(format!("refused by rule `{}`: {}", r.rule, r.reason)))?;
                Ok(StepOutput {
                    summary: format!(
                        "{from} → {to} allowed (database at {}, no unfinished migrations)",
                        facts
                            .db_version
                            .map_or("no migrations yet".to_string(), |v| v.to_string())
                    ),
                })
            }
            other => Err(error(format!("unknown step `{other}`"))),
        }
    }

    fn verify(expected: String) -> Result<Vec<Check>, AdapterError> {
        verify::verify(&expected)
    }

    fn plan_restore(request: RestoreRequest) -> Result<Plan, Refusal> {
        let Some(backup_version) = versions::parse(&request.backup.product_version) else {
            return Err(refuse(
                "backup-version-unknown",
                format!(
                    "backup {} records no OpenMetadata version (`{}`); a backup only fits a database of its own version",
                    request.backup.id, request.backup.product_version
                ),
                &[],
                "restore it by hand into a clean database migrated to the version it was taken at",
            ));
        };
        let current = request.current_version.unwrap_or_else(|| "unknown".into());
        Ok(steps::restore(
            &current,
            &backup_version.to_string(),
            request.into.as_deref(),
        ))
    }
}

upshift_adapter_sdk::export_adapter!(OpenMetadata);
