//! Reading the live instance: the version from `/version` (or the service while the 428 gate
//! holds the API), the migration and locking history, and the secret the next start will read
//! (product-facts §4.1–§4.4).

use semver::Version;
use upshift_adapter_sdk::rules::numeric;
use upshift_adapter_sdk::{
    AdapterError, Detection, describe_cap_error, error, fact, live, service, value_text,
};

use crate::rules::SECRET_RENAME;
use crate::{catalog, secret};

/// The database binding.
pub const DB: &str = "lake";

/// The `env-file` fact when no `.env` was found (the secret can only come from the
/// environment).
pub const NO_ENV_FILE: &str = "none found";

/// DevLake writes its tags with a `v`: `v1.0.1`.
pub fn tag(v: &Version) -> String {
    format!("v{v}")
}

/// What `/version` and the gate say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Api {
    /// Serving this version.
    Serving(String),
    /// HTTP 428: migrations wait for confirmation (or are running).
    Gated,
    /// Not answering (stopped).
    Down,
}

/// An API route behind DevLake's 428 middleware. `/ping` and `/version` are registered before
/// it and never answer 428 (DevLake's `api.go`), so the gate is probed on a real API route.
pub const GATED_PROBE: &str = "/blueprints";

/// Whether the API answers 428 now, and with what.
pub fn gate() -> Option<String> {
    live::get("api", GATED_PROBE)
        .ok()
        .filter(|a| a.status == 428)
        .map(|a| a.body)
}

/// Ask the API.
pub fn api() -> Api {
    if gate().is_some() {
        return Api::Gated;
    }
    match live::get("api", "/version") {
        Ok(a) if a.status == 200 => match a.field("version") {
            Some(v) => Api::Serving(v.split('@').next().unwrap_or(&v).to_string()),
            None => Api::Down,
        },
        Ok(a) if a.status == 428 => Api::Gated,
        _ => Api::Down,
    }
}

/// One `_devlake_locking_history` row.
#[derive(Debug, Clone)]
pub struct Start {
    /// The version that started.
    pub version: String,
    /// Whether its migrations completed.
    pub succeeded: bool,
}

/// The newest starts, newest first (MySQL keeps `succeeded` as TINYINT, PostgreSQL as
/// boolean or smallint: read as text).
pub fn starts() -> Result<Vec<Start>, AdapterError> {
    if !live::table_exists(DB, "_devlake_locking_history")? {
        return Ok(Vec::new());
    }
    let rows = live::rows(
        DB,
        "SELECT version, succeeded FROM _devlake_locking_history ORDER BY id DESC LIMIT 200",
        &[],
    )?;
    Ok(rows
        .iter()
        .map(|r| Start {
            version: r.first().and_then(value_text).unwrap_or_default(),
            succeeded: matches!(
                r.get(1).and_then(value_text).as_deref(),
                Some("1" | "true" | "t")
            ),
        })
        .collect())
}

/// Stored encrypted connection tokens: `(id, token)`.
pub fn connections() -> Result<Vec<(String, String)>, AdapterError> {
    if !live::table_exists(DB, "_tool_github_connections")? {
        return Ok(Vec::new());
    }
    let rows = live::rows(
        DB,
        "SELECT id, token FROM _tool_github_connections ORDER BY id",
        &[],
    )?;
    Ok(rows
        .iter()
        .filter_map(|r| Some((value_text(r.first()?)?, value_text(r.get(1)?)?)))
        .collect())
}

/// The first stored token opened with the secret a version that `reads_new` (≥ v0.18) reads:
/// `None` when there is no stored token; the connection's id with what opening it said.
pub fn test_token(
    env: &secret::EnvSecrets,
    reads_new: bool,
) -> Result<Option<(String, secret::Opening)>, AdapterError> {
    let tokens = connections()?;
    let Some((id, token)) = tokens.into_iter().next() else {
        return Ok(None);
    };
    // A value not in DevLake's format is undecodable whatever the secret; check it first.
    let opening = match secret::open("", &token) {
        undecodable @ secret::Opening::Undecodable(_) => undecodable,
        _ => match secret::secret_for(env, reads_new) {
            Some(s) => secret::open(s, &token),
            None => secret::Opening::WrongSecret,
        },
    };
    Ok(Some((id, opening)))
}

/// The `secret-decrypts` and `token-undecodable` facts of a token test.
pub fn token_facts(tested: Option<&(String, secret::Opening)>) -> (String, Option<String>) {
    match tested {
        None => ("untested (no stored token)".to_string(), None),
        Some((_, secret::Opening::Opens)) => ("true".to_string(), None),
        Some((_, secret::Opening::WrongSecret)) => ("false".to_string(), None),
        Some((id, secret::Opening::Undecodable(why))) => (
            "false".to_string(),
            Some(format!("_tool_github_connections id {id}: {why}")),
        ),
    }
}

/// The newest framework migration script the database records (`comment = 'Framework'`),
/// leaving out the misnumbered versions (see [`catalog::MISNUMBERED`]); `None` before the
/// first migration.
pub fn framework_script() -> Result<Option<u64>, AdapterError> {
    if !live::table_exists(DB, "_devlake_migration_history")? {
        return Ok(None);
    }
    let misnumbered: Vec<String> = catalog::MISNUMBERED.iter().map(u64::to_string).collect();
    live::scalar(
        DB,
        &format!(
            "SELECT max(script_version) FROM _devlake_migration_history WHERE comment = 'Framework' AND script_version NOT IN ({})",
            misnumbered.join(", ")
        ),
        &[],
    )?
    .map(|v| {
        v.trim().parse::<u64>().map_err(|_| {
            error(format!(
                "_devlake_migration_history records script version `{v}`, which is not a number"
            ))
        })
    })
    .transpose()
}

/// Detect the version, the migration state and the secret; the secret test assumes the
/// newest rules (ENCRYPTION_SECRET) unless the instance is older than v0.18.
pub fn detect() -> Result<Detection, AdapterError> {
    let deployed = service::inspect("app").map(|s| s.version).map_err(|e| {
        error(format!(
            "cannot inspect the DevLake service: {}",
            describe_cap_error(&e)
        ))
    })?;
    let api = api();
    let version = match &api {
        Api::Serving(v) => v.clone(),
        Api::Gated | Api::Down => deployed.clone(),
    };
    let history = starts()?;
    let current = numeric(&version);
    // `succeeded` is set once the start holds its lock, before any migration: while the gate
    // waits, the database is still shaped by the deployment before this one.
    let gated = api == Api::Gated;
    let confirmed = !gated
        && history
            .first()
            .is_some_and(|s| s.succeeded && numeric(&s.version) == current);
    let last_migrated = if gated {
        history
            .iter()
            .find(|s| s.succeeded && numeric(&s.version) != current)
            .map(|s| s.version.clone())
    } else {
        Some(version.clone())
    };
    let env = secret::read_env()?;
    let reads_new = current.as_ref().is_none_or(|v| *v >= SECRET_RENAME);
    let tokens = connections()?;
    let tested = test_token(&env, reads_new)?;
    let (decrypts, undecodable) = token_facts(tested.as_ref());
    let max_script = if live::table_exists(DB, "_devlake_migration_history")? {
        live::scalar(
            DB,
            "SELECT max(script_version) FROM _devlake_migration_history",
            &[],
        )?
    } else {
        None
    };
    let framework_script = framework_script()?;
    let source = match &api {
        Api::Serving(_) => "DevLake's /version",
        Api::Gated | Api::Down => "the service's declared version (fleet file)",
    };
    let mut facts = vec![
        fact("deployed-version", &deployed),
        fact("version-source", source),
        fact(
            "api",
            match &api {
                Api::Serving(v) => format!("serving {v}"),
                Api::Gated => "428: waiting for migration confirmation".into(),
                Api::Down => "not answering".into(),
            },
        ),
        fact(
            "env-file",
            env.file.clone().unwrap_or_else(|| NO_ENV_FILE.into()),
        ),
        fact(
            "has-encryption-secret",
            env.encryption_secret.is_some().to_string(),
        ),
        fact("has-encode-key", env.encode_key.is_some().to_string()),
        fact("secret-decrypts", decrypts),
        fact("migration-confirmed", confirmed.to_string()),
        fact("connections", tokens.len().to_string()),
        fact(
            "max-script-version",
            max_script.unwrap_or_else(|| "none".into()),
        ),
    ];
    if let Some(script) = framework_script {
        facts.push(fact("framework-script", script.to_string()));
    }
    if let Some(why) = undecodable {
        facts.push(fact("token-undecodable", why));
    }
    if let Some(v) = last_migrated {
        facts.push(fact("last-migrated", v));
    }
    Ok(Detection { version, facts })
}
