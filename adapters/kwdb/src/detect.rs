//! Reading a live KWDB: the version from `SELECT version()` (`KaiwuDB V<x.y.z> (…)`, §2.6),
//! the user databases, cluster health (§2.4's pre-upgrade checks) and whether a new instance is
//! bound for export/import.

use upshift_adapter_sdk::rules::numeric;
use upshift_adapter_sdk::{
    AdapterError, Detection, Value, describe_cap_error, error, fact, live, service, value_text,
};

/// The running instance's SQL binding.
pub const SQL: &str = "sql";
/// The new instance's SQL binding (export/import upgrades).
pub const NEXT_SQL: &str = "next-sql";

/// Databases every KWDB has, never exported.
const SYSTEM_DATABASES: &[&str] = &[
    "defaultdb",
    "postgres",
    "system",
    "kwdb_internal",
    "information_schema",
    "pg_catalog",
    "crdb_internal",
];

/// The product version in a `version()` answer.
pub fn parse_version_text(text: &str) -> Option<String> {
    let rest = text.trim().strip_prefix("KaiwuDB")?.trim_start();
    let word = rest.split_whitespace().next()?;
    numeric(word).map(|v| v.to_string())
}

/// `SELECT version()` on a binding, parsed.
pub fn sql_version(binding: &str) -> Result<String, AdapterError> {
    let text = live::scalar(binding, "SELECT version()", &[])?.unwrap_or_default();
    parse_version_text(&text)
        .ok_or_else(|| error(format!("`{text}` is not a KaiwuDB version() answer")))
}

/// User databases on a binding (`SHOW DATABASES`, first column).
pub fn user_databases(binding: &str) -> Result<Vec<String>, AdapterError> {
    Ok(live::column(binding, "SHOW DATABASES", &[])?
        .into_iter()
        .filter(|d| !SYSTEM_DATABASES.contains(&d.as_str()))
        .collect())
}

fn as_count(v: Option<&Value>) -> u64 {
    v.and_then(value_text)
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0)
}

/// Unavailable and under-replicated ranges (§2.4's query).
pub fn range_health(binding: &str) -> Result<(u64, u64), AdapterError> {
    let rows = live::rows(
        binding,
        "SELECT sum((metrics->>'ranges.unavailable')::DECIMAL)::INT, sum((metrics->>'ranges.underreplicated')::DECIMAL)::INT FROM kwdb_internal.kv_store_status",
        &[],
    )?;
    let first = rows.first();
    Ok((
        as_count(first.and_then(|r| r.first())),
        as_count(first.and_then(|r| r.get(1))),
    ))
}

/// Jobs `SHOW JOBS` lists as running.
pub fn running_jobs(binding: &str) -> Result<u64, AdapterError> {
    let result = upshift_adapter_sdk::db::query(binding, "SHOW JOBS", &[])
        .map_err(|e| error(format!("SHOW JOBS failed: {}", describe_cap_error(&e))))?;
    let Some(status) = result.columns.iter().position(|c| c == "status") else {
        return Ok(0);
    };
    Ok(result
        .rows
        .iter()
        .filter(|r| {
            r.get(status)
                .and_then(value_text)
                .is_some_and(|s| s.eq_ignore_ascii_case("running"))
        })
        .count() as u64)
}

/// Detect the version and the facts. Whenever the `sql` binding answers, the release is what
/// `SELECT version()` reports and the health facts (ranges, jobs, user databases) are read
/// from it, whoever started the service; the `app` service's declared release is reported
/// beside it (`deployed-version`) so the rules can refuse a contradiction. When `sql` does not
/// answer and `app` is stopped, the declared release stands (an offline node).
pub fn detect() -> Result<Detection, AdapterError> {
    let deployed = service::inspect("app").map_err(|e| {
        error(format!(
            "cannot inspect the KWDB service: {}",
            describe_cap_error(&e)
        ))
    })?;
    let mut facts = vec![fact("deployed-version", &deployed.version)];
    let version = match sql_version(SQL) {
        Ok(v) => {
            facts.push(fact("sql-version", &v));
            let (unavailable, under) = range_health(SQL)?;
            facts.push(fact("user-databases", user_databases(SQL)?.join(",")));
            facts.push(fact("unavailable-ranges", unavailable.to_string()));
            facts.push(fact("underreplicated-ranges", under.to_string()));
            facts.push(fact("running-jobs", running_jobs(SQL)?.to_string()));
            v
        }
        Err(_) if !deployed.running => {
            numeric(&deployed.version).map_or(deployed.version.clone(), |v| v.to_string())
        }
        Err(e) => return Err(e),
    };
    match service::inspect("next") {
        Ok(next) => {
            facts.push(fact("next-bound", "true"));
            facts.push(fact("next-version", next.version));
            // Read whenever `next-sql` answers, whoever started the new instance.
            match user_databases(NEXT_SQL) {
                Ok(databases) => {
                    facts.push(fact("next-user-databases", databases.len().to_string()));
                }
                Err(_) if !next.running => {}
                Err(e) => return Err(e),
            }
        }
        Err(_) => facts.push(fact("next-bound", "false")),
    }
    Ok(Detection { version, facts })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_text() {
        assert_eq!(
            parse_version_text(
                "KaiwuDB V3.2.1 (x86_64-linux-gnu, built 2026/06/01 10:00:00, go1.22, gcc 11)"
            )
            .as_deref(),
            Some("3.2.1")
        );
        assert_eq!(
            parse_version_text("KaiwuDB V2.2.0").as_deref(),
            Some("2.2.0")
        );
        assert_eq!(parse_version_text("PostgreSQL 15.4"), None);
    }
}
