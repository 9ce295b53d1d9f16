//! The OpenMetadata upgrade adapter: the server and its one-shot migration job over MySQL or
//! PostgreSQL. The rules are the table in [`rules`]; [`detect`] reads the instance and [`steps`]
//! holds the plans.

pub mod catalog;
pub mod detect;
pub mod rules;
pub mod steps;
pub mod verify;

use semver::Version;
use upshift_adapter_sdk::rules::{Jump, Rule};
use upshift_adapter_sdk::{
    AdapterError, Check, Detection, Plan, Product, Refusal, RestoreRequest, refuse, versions,
};

upshift_adapter_sdk::manifest! {
    product: "openmetadata",
    adapter_version: "0.1.0",
    supported_versions: ">=1.0.0, <3.0.0",
    catalog: ">=1.1.0, <=2.1.0",
    bindings: [
        { name: "meta", kind: db, access: [read, backup, restore], purpose: "the OpenMetadata database (MySQL or PostgreSQL): read SERVER_CHANGE_LOG; the host backs it up and restores it", optional: false },
        { name: "server", kind: service, access: [inspect, control, switch_version], purpose: "the OpenMetadata server: stop, switch version, start", optional: false },
        { name: "migrate", kind: service, access: [inspect, control, switch_version], purpose: "the one-shot migration job (`./bootstrap/openmetadata-ops.sh migrate`, Compose's execute-migrate-all), run to completion", optional: false },
        { name: "api", kind: http, access: [read], purpose: "the API port (8585): /api/v1/version", optional: false },
        { name: "admin", kind: http, access: [read], purpose: "the admin port (8586): /healthcheck", optional: false },
    ],
}

/// OpenMetadata, as the SDK's [`Product`].
pub struct OpenMetadata;

impl Product for OpenMetadata {
    const NAME: &'static str = "OpenMetadata";
    const EXAMPLE: &'static str = "1.12.1";
    const NEWEST_MAJOR: u64 = 2;
    const REFUSALS: &'static [Rule<Self>] = rules::REFUSALS;
    const OFFLINE_NOTE: Option<&'static str> = Some(
        "Offline plan: the live checks (the database's own migration version, a leftover DATABASE_CHANGE_LOG, STARTED/FAILED rows) run again in `preflight` and may still refuse.",
    );
    type Facts = rules::Facts;

    fn detect() -> Result<Detection, AdapterError> {
        detect::detect()
    }

    fn upgrade(from: &Version, to: &Version) -> Plan {
        let mut plan = steps::upgrade(&from.to_string(), &to.to_string());
        // The rules let an unknown target through only when the operator allowed it.
        if !catalog::knows(to) {
            plan.notes.push(format!(
                "{to} is not in this adapter's catalog ({}; allowed with --allow-unknown): the adapter cannot know its migrations, gates or stepping stones, and verifies only what holds for every release",
                catalog::describe_nearest(to)
            ));
        }
        plan
    }

    fn verify(expected: &str) -> Result<Vec<Check>, AdapterError> {
        verify::verify(expected)
    }

    fn restore(request: &RestoreRequest) -> Result<Plan, Refusal> {
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
        Ok(steps::restore(
            &request.current(),
            &backup_version.to_string(),
            request.into.as_deref(),
        ))
    }

    fn allowed(jump: &Jump<Self>, _live: &Detection) -> String {
        format!(
            "{} → {} allowed (database at {}, no unfinished migrations)",
            jump.from,
            jump.to,
            jump.facts
                .db_version
                .as_ref()
                .map_or("no migrations yet".to_string(), ToString::to_string)
        )
    }
}

upshift_adapter_sdk::export_product!(OpenMetadata);
