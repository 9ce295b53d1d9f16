//! The Apache DevLake upgrade adapter: DevLake on MySQL or PostgreSQL, its `.env`, and the
//! migration gate. The rules live in [`rules`]; this file wires them to the contract.

pub mod detect;
pub mod gate;
pub mod rules;
pub mod secret;
pub mod steps;
pub mod verify;

use upshift_adapter_sdk::rules::parse_pair;
use upshift_adapter_sdk::{
    AdapterError, AdapterInfo, Check, Detection, Guest, Plan, Refusal, RestoreRequest, StepOutput,
    error, refuse, versions,
};

upshift_adapter_sdk::manifest! {
    product: "devlake",
    adapter_version: "0.1.0",
    supported_versions: ">=0.10.0, <2.0.0",
    bindings: [
        { name: "lake", kind: db, access: [read, backup, restore], purpose: "DevLake's database (DB_URL, MySQL or PostgreSQL): migration and locking history, stored tokens; the host backs it up and restores it", optional: false },
        { name: "app", kind: service, access: [inspect, control, switch_version], purpose: "the devlake service (Compose tag, container or binary): stop, switch version, start", optional: false },
        { name: "api", kind: http, access: [read], purpose: "DevLake's API (8080): /version, /ping, /proceed-db-migration, connections", optional: false },
        { name: "config", kind: files, access: [read, snapshot, restore], purpose: "the directory holding DevLake's .env (ENCRYPTION_SECRET, DB_URL): read the secret, snapshot it", optional: false },
    ],
}

const EXAMPLE: &str = "v1.0.1";

struct DevLake;

impl Guest for DevLake {
    fn describe() -> AdapterInfo {
        manifest()
    }

    fn detect() -> Result<Detection, AdapterError> {
        detect::detect()
    }

    fn plan(current: Detection, target: String) -> Result<Plan, Refusal> {
        let (from, to) = parse_pair("DevLake", &current.version, &target, EXAMPLE)?;
        // Pure over the detection: the secret test against the target's rules runs again in
        // `preflight`.
        let facts = detect::facts_of(&current);
        rules::check(&from, &to, &facts).map_err(Refusal::from)?;
        Ok(steps::upgrade(
            &detect::tag(&from),
            &detect::tag(&to),
            current.facts.is_empty(),
        ))
    }

    fn run_step(name: String, payload: String) -> Result<StepOutput, AdapterError> {
        match name.as_str() {
            "preflight" => {
                let live = detect::detect()?;
                let (from, to) = parse_pair("DevLake", &live.version, &payload, EXAMPLE)
                    .map_err(|r| error(r.reason))?;
                let env = secret::read_env()?;
                let mut facts = detect::facts_of(&live);
                facts.has_encryption_secret = Some(env.encryption_secret.is_some());
                facts.has_encode_key = Some(env.encode_key.is_some());
                facts.secret_decrypts = detect::secret_opens_tokens(&env, &to)?;
                rules::check(&from, &to, &facts)
                    .map_err(|r| error(format!("refused by rule `{}`: {}", r.rule, r.reason)))?;
                Ok(StepOutput {
                    summary: format!(
                        "{from} → {to} allowed (secret from {}, stored tokens {})",
                        env.file.as_deref().unwrap_or("the environment"),
                        match facts.secret_decrypts {
                            Some(true) => "decrypt",
                            Some(false) => "do NOT decrypt",
                            None => "absent",
                        }
                    ),
                })
            }
            "pass-migration-gate" => gate::pass(),
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
                format!("backup {} records no DevLake version", request.backup.id),
                &[],
                "restore it by hand and start the DevLake version it was taken at",
            ));
        };
        let current = request.current_version.unwrap_or_else(|| "unknown".into());
        Ok(steps::restore(
            &current,
            &detect::tag(&backup_version),
            request.into.as_deref(),
        ))
    }
}

upshift_adapter_sdk::export_adapter!(DevLake);
