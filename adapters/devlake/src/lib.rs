//! The Apache DevLake upgrade adapter: DevLake on MySQL or PostgreSQL, its `.env`, and the
//! migration gate. The rules are the table in [`rules`]; [`detect`] reads the instance,
//! [`secret`] the encryption secret, [`gate`] passes the migration gate and [`steps`] holds the
//! plans.

pub mod catalog;
pub mod detect;
pub mod gate;
pub mod rules;
pub mod secret;
pub mod steps;
pub mod verify;

use semver::Version;
use upshift_adapter_sdk::rules::{Jump, Rule};
use upshift_adapter_sdk::steps::CustomStep;
use upshift_adapter_sdk::{
    AdapterError, Check, Detection, FromFacts, Plan, Product, Refusal, RestoreRequest, refuse,
    versions,
};

use detect::{NO_ENV_FILE, tag};
use rules::Facts;

upshift_adapter_sdk::manifest! {
    product: "devlake",
    adapter_version: "0.1.0",
    supported_versions: ">=0.10.0, <2.0.0",
    catalog: ">=0.10.0, <=1.0.3",
    bindings: [
        { name: "lake", kind: db, access: [read, backup, restore], purpose: "DevLake's database (DB_URL, MySQL or PostgreSQL): migration and locking history, stored tokens; the host backs it up and restores it", optional: false },
        { name: "app", kind: service, access: [inspect, control, switch_version], purpose: "the devlake service (Compose tag, container or binary): stop, switch version, start", optional: false },
        { name: "api", kind: http, access: [read], purpose: "DevLake's API (8080): /version, /ping, /proceed-db-migration, connections", optional: false },
        { name: "config", kind: files, access: [read, snapshot, restore], purpose: "the directory holding DevLake's .env (ENCRYPTION_SECRET, DB_URL): read the secret, snapshot it", optional: false },
    ],
}

/// Apache DevLake, as the SDK's [`Product`].
pub struct DevLake;

impl Product for DevLake {
    const NAME: &'static str = "DevLake";
    const EXAMPLE: &'static str = "v1.0.1";
    const NEWEST_MAJOR: u64 = 1;
    const REFUSALS: &'static [Rule<Self>] = rules::REFUSALS;
    const OFFLINE_NOTE: Option<&'static str> = Some(
        "Offline plan: the live checks (ENCRYPTION_SECRET present and able to decrypt the stored tokens, ENCODE_KEY carried over across v0.18) run again in `preflight` and may still refuse.",
    );
    const CUSTOM_STEPS: &'static [CustomStep] = &[CustomStep {
        name: "pass-migration-gate",
        run: |_| gate::pass(),
    }];
    type Facts = Facts;

    fn detect() -> Result<Detection, AdapterError> {
        detect::detect()
    }

    fn upgrade(from: &Version, to: &Version) -> Plan {
        let mut plan = steps::upgrade(&tag(from), &tag(to));
        // The rules let an unknown target through only when the operator allowed it.
        if !catalog::knows(to) {
            plan.notes.push(format!(
                "{} is not in this adapter's catalog ({}; allowed with --allow-unknown): the adapter cannot know its migration scripts or secret rules, and verifies only what holds for every release",
                tag(to),
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
                format!("backup {} records no DevLake version", request.backup.id),
                &[],
                "restore it by hand and start the DevLake version it was taken at",
            ));
        };
        Ok(steps::restore(
            &request.current(),
            &tag(&backup_version),
            request.into.as_deref(),
        ))
    }

    /// The detection judged the secret by the running version's rules; `preflight` reads the
    /// `.env` again and tests the stored tokens with the secret the target will read.
    fn recheck(live: &Detection, target: &Version) -> Result<Facts, AdapterError> {
        let env = secret::read_env()?;
        let tested = detect::test_token(&env, *target >= rules::SECRET_RENAME)?;
        let (decrypts, undecodable) = detect::token_facts(tested.as_ref());
        Ok(Facts {
            has_encryption_secret: Some(env.encryption_secret.is_some()),
            has_encode_key: Some(env.encode_key.is_some()),
            secret_decrypts: decrypts.parse().ok(),
            token_undecodable: undecodable,
            ..Facts::from_facts(live)
        })
    }

    fn allowed(jump: &Jump<Self>, live: &Detection) -> String {
        format!(
            "{} → {} allowed (secret from {}, stored tokens {})",
            jump.from,
            jump.to,
            match live.fact("env-file") {
                Some(NO_ENV_FILE) | None => "the environment",
                Some(file) => file,
            },
            match jump.facts.secret_decrypts {
                Some(true) => "decrypt",
                Some(false) => "do NOT decrypt",
                None => "absent",
            }
        )
    }
}

upshift_adapter_sdk::export_product!(DevLake);
