//! Checks after an upgrade (product-facts "What an adapter must encode → OpenMetadata →
//! Verification").

use upshift_adapter_sdk::live::{self, check, endpoint_ok};
use upshift_adapter_sdk::rules::numeric;
use upshift_adapter_sdk::{AdapterError, Check};

use crate::catalog;
use crate::detect::{DB, api_version, migrations};

/// Every check for `expected`; failing checks are returned, not errors.
pub fn verify(expected: &str) -> Result<Vec<Check>, AdapterError> {
    let mut out = Vec::new();
    let api = api_version();
    // Compared as versions, normalised once: `v1.12.1` and `1.12.1+build` are 1.12.1.
    let wanted = catalog::release(expected);
    out.push(check(
        "api-version",
        wanted.is_some() && api.as_deref().and_then(catalog::release) == wanted,
        format!(
            "/api/v1/version reports {}, expected {}",
            api.as_deref().unwrap_or("nothing"),
            wanted.as_ref().map_or_else(
                || format!("`{expected}` (not a version)"),
                ToString::to_string
            )
        ),
    ));
    out.push(endpoint_ok("healthcheck", "admin", "/healthcheck"));
    let state = migrations()?;
    let target = numeric(expected);
    let unfinished = state.facts.unfinished_migrations.unwrap_or(0);
    out.push(check(
        "migrations-complete",
        unfinished == 0 && state.rows > 0,
        format!(
            "{} change-log row(s), {unfinished} STARTED/FAILED",
            state.rows
        ),
    ));
    out.push(check(
        "schema-version",
        matches!((&state.db_version, &target), (Some(db), Some(t)) if db <= t),
        format!(
            "SERVER_CHANGE_LOG reaches {} (the release may carry no migration of its own), expected ≤ {expected}",
            state.db_version.as_ref().map_or("nothing".to_string(), ToString::to_string)
        ),
    ));
    // After 1.11, `migrate --force` silently lost these (PR #24985): they must still be there.
    for table in ["role_entity", "policy_entity", "bot_entity"] {
        let n = live::count(DB, &format!("SELECT count(*) FROM {table}"), &[]).unwrap_or(0);
        out.push(check(
            &format!("{table}-present"),
            n > 0,
            format!("{n} row(s) in {table}"),
        ));
    }
    Ok(out)
}
