//! The Bytebase upgrade adapter: Bytebase with an external PostgreSQL metadata database, run as
//! a plain binary. The rules live in [`rules`]; this file wires them to the contract.

pub mod detect;
pub mod rules;
pub mod steps;
pub mod verify;

use upshift_adapter_sdk::rules::{parse_pair, unparseable};
use upshift_adapter_sdk::{
    AdapterError, AdapterInfo, Check, Detection, Guest, Plan, Refusal, RestoreRequest, StepOutput,
    error, versions,
};

upshift_adapter_sdk::manifest! {
    product: "bytebase",
    adapter_version: "0.1.0",
    supported_versions: ">=0.1.0, <4.0.0",
    bindings: [
        { name: "meta", kind: db, access: [read, backup, restore], purpose: "the metadata database (PG_URL): read the schema version; the host backs it up and restores it", optional: false },
        { name: "app", kind: service, access: [inspect, control, switch_version], purpose: "the Bytebase process: stop, switch binary version, start", optional: false },
        { name: "api", kind: http, access: [read], purpose: "Bytebase's HTTP API: /healthz and /v1/actuator/info", optional: false },
        { name: "data", kind: files, access: [read], purpose: "the --data directory, to detect an embedded PostgreSQL (pgdata/PG_VERSION)", optional: true },
    ],
}

const EXAMPLE: &str = "3.11.1";

struct Bytebase;

impl Guest for Bytebase {
    fn describe() -> AdapterInfo {
        manifest()
    }

    fn detect() -> Result<Detection, AdapterError> {
        detect::detect()
    }

    fn plan(current: Detection, target: String) -> Result<Plan, Refusal> {
        let (from, to) = parse_pair("Bytebase", &current.version, &target, EXAMPLE)?;
        rules::check(&from, &to, &detect::facts_of(&current)).map_err(Refusal::from)?;
        Ok(steps::upgrade(
            &from.to_string(),
            &to,
            current.facts.is_empty(),
        ))
    }

    fn run_step(name: String, payload: String) -> Result<StepOutput, AdapterError> {
        match name.as_str() {
            "preflight" => {
                let target = versions::parse(&payload)
                    .ok_or_else(|| error(format!("bad target `{payload}`")))?;
                let live = detect::detect()?;
                let from = versions::parse(&live.version)
                    .ok_or_else(|| error(format!("bad live version `{}`", live.version)))?;
                match rules::check(&from, &target, &detect::facts_of(&live)) {
                    Ok(()) => Ok(StepOutput {
                        summary: format!(
                            "{from} → {target} allowed (schema {}, {} database_id row(s))",
                            live.fact("schema-format").unwrap_or("unknown"),
                            live.fact("database-id-rows").unwrap_or("?")
                        ),
                    }),
                    Err(r) => Err(error(format!("refused by rule `{}`: {}", r.rule, r.reason))),
                }
            }
            other => Err(error(format!("unknown step `{other}`"))),
        }
    }

    fn verify(expected: String) -> Result<Vec<Check>, AdapterError> {
        verify::verify(&expected)
    }

    fn plan_restore(request: RestoreRequest) -> Result<Plan, Refusal> {
        let backup_version = versions::parse(&request.backup.product_version)
            .ok_or_else(|| {
                unparseable(
                    "Bytebase",
                    "the backup's version",
                    &request.backup.product_version,
                    EXAMPLE,
                )
            })?
            .to_string();
        let current = request.current_version.unwrap_or_else(|| "unknown".into());
        Ok(match &request.into {
            None => steps::restore_in_place(&current, &backup_version),
            Some(name) => steps::restore_into(&current, &backup_version, name),
        })
    }
}

upshift_adapter_sdk::export_adapter!(Bytebase);

#[cfg(test)]
mod tests {
    use super::detect::{actuator_replicas, actuator_version};

    #[test]
    fn actuator_fields() {
        let body = br#"{"version":"3.11.1","gitCommit":"abc","replicaCount":1}"#;
        assert_eq!(actuator_version(body).as_deref(), Some("3.11.1"));
        assert_eq!(actuator_replicas(body), Some(1));
        assert_eq!(actuator_version(b"not json"), None);
    }
}
