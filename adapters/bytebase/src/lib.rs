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
use upshift_adapter_sdk::{AdapterError, Check, Detection, Plan, Product, Refusal, RestoreRequest};

upshift_adapter_sdk::manifest! {
    product: "bytebase",
    adapter_version: "0.1.0",
    supported_versions: ">=0.1.0, <4.0.0",
    catalog: ">=3.3.1, <=3.21.1",
    bindings: [
        { name: "meta", kind: db, access: [read, backup, restore], purpose: "the metadata database (PG_URL): read the schema version; the host backs it up and restores it", optional: false },
        { name: "app", kind: service, access: [inspect, control, switch_version], purpose: "the Bytebase process: stop, switch binary version, start", optional: false },
        { name: "api", kind: http, access: [read], purpose: "Bytebase's HTTP API: /healthz and /v1/actuator/info", optional: false },
        { name: "data", kind: files, access: [read], purpose: "the --data directory, to detect an embedded PostgreSQL (pgdata/PG_VERSION)", optional: true },
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

    fn verify(expected: &str) -> Result<Vec<Check>, AdapterError> {
        verify::verify(expected)
    }

    fn restore(request: &RestoreRequest) -> Result<Plan, Refusal> {
        let backup = backup_version::<Self>(request)?.to_string();
        let current = request.current();
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
