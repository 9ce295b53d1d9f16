//! Reading the live instance: the server's version from `/api/v1/version` (or the service, when
//! it is stopped) and the migration state from `SERVER_CHANGE_LOG` (product-facts §3.1, §3.2).
//! The SQL is plain enough for both MySQL and PostgreSQL.

use semver::Version;
use upshift_adapter_sdk::rules::numeric;
use upshift_adapter_sdk::{AdapterError, Detection, fact, live, service};

use crate::rules::Facts;

/// The database binding.
pub const DB: &str = "meta";

/// The first of `names` that exists (MySQL keeps `SERVER_CHANGE_LOG`, PostgreSQL folds it).
fn find_table(names: &[&str]) -> Result<Option<String>, AdapterError> {
    for name in names {
        if live::table_exists(DB, name)? {
            return Ok(Some((*name).to_string()));
        }
    }
    Ok(None)
}

/// The change-log table, if the database has one.
pub fn change_log() -> Result<Option<String>, AdapterError> {
    find_table(&["SERVER_CHANGE_LOG", "server_change_log"])
}

/// How the bound database quotes identifiers: PostgreSQL with `"…"`, MySQL and MariaDB with
/// backquotes (double quotes are string literals there unless `ANSI_QUOTES` is set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quoting {
    /// `"name"` (PostgreSQL, the SQL standard).
    Ansi,
    /// `` `name` `` (MySQL, MariaDB).
    Backquote,
}

impl Quoting {
    /// The quoting of a server whose `SELECT version()` answered `version`.
    pub fn of_server(version: &str) -> Quoting {
        if version.to_ascii_lowercase().contains("postgres") {
            Quoting::Ansi
        } else {
            Quoting::Backquote
        }
    }

    /// `name` quoted as an identifier, a quote inside it doubled, so the exact name that
    /// [`live::table_exists`] found is the one queried (a quoted upper-case table on PostgreSQL
    /// is not the folded lower-case one).
    pub fn ident(self, name: &str) -> String {
        let q = match self {
            Quoting::Ansi => '"',
            Quoting::Backquote => '`',
        };
        let doubled = name.replace(q, &format!("{q}{q}"));
        format!("{q}{doubled}{q}")
    }
}

/// The bound database's identifier quoting, from its `SELECT version()`.
pub fn quoting() -> Result<Quoting, AdapterError> {
    let version = live::scalar(DB, "SELECT version()", &[])?.unwrap_or_default();
    Ok(Quoting::of_server(&version))
}

/// The migration state of the database.
#[derive(Debug, Clone, Default)]
pub struct MigrationState {
    /// The highest recorded version, numerically.
    pub db_version: Option<Version>,
    /// Rows recorded.
    pub rows: u64,
    /// The facts the rules use.
    pub facts: Facts,
}

/// Read `SERVER_CHANGE_LOG` and its neighbours.
pub fn migrations() -> Result<MigrationState, AdapterError> {
    let log = change_log()?;
    let legacy = find_table(&["DATABASE_CHANGE_LOG", "database_change_log"])?.is_some();
    let entities = find_table(&["table_entity", "TABLE_ENTITY"])?.is_some();
    let Some(log) = log else {
        return Ok(MigrationState {
            facts: Facts {
                legacy_flyway: Some(legacy),
                unfinished_migrations: Some(0),
                entities_without_history: Some(entities && !legacy),
                db_version: None,
                ..Facts::default()
            },
            ..MigrationState::default()
        });
    };
    let log = quoting()?.ident(&log);
    let versions = live::column(DB, &format!("SELECT version FROM {log}"), &[])?;
    let db_version = versions.iter().filter_map(|v| numeric(v)).max();
    // Only the newest code has `status`; a query on a missing column fails, on any engine.
    let unfinished = live::count(
        DB,
        &format!("SELECT count(*) FROM {log} WHERE status IN ('STARTED', 'FAILED')"),
        &[],
    )
    .unwrap_or_default();
    Ok(MigrationState {
        db_version: db_version.clone(),
        rows: versions.len() as u64,
        facts: Facts {
            db_version,
            legacy_flyway: Some(legacy),
            unfinished_migrations: Some(unfinished),
            entities_without_history: Some(versions.is_empty() && entities && !legacy),
            ..Facts::default()
        },
    })
}

/// The version the server reports, when it answers.
pub fn api_version() -> Option<String> {
    live::get("api", "/api/v1/version")
        .ok()
        .filter(|a| a.status == 200)
        .and_then(|a| a.field("version"))
}

/// Detect the running version and the database's migration state.
pub fn detect() -> Result<Detection, AdapterError> {
    let deployed = service::inspect("server").map(|s| s.version).map_err(|e| {
        upshift_adapter_sdk::error(format!(
            "cannot inspect the server: {}",
            upshift_adapter_sdk::describe_cap_error(&e)
        ))
    })?;
    let api = api_version();
    let source = if api.is_some() {
        "the server's /api/v1/version"
    } else {
        "the service's declared version (fleet file)"
    };
    let version = api.clone().unwrap_or_else(|| deployed.clone());
    let state = migrations()?;
    let mut facts = vec![
        fact("deployed-version", &deployed),
        fact("api-version", api.as_deref().unwrap_or("not answering")),
        fact("version-source", source),
        fact("change-log-rows", state.rows.to_string()),
        fact(
            "legacy-flyway",
            state.facts.legacy_flyway.unwrap_or(false).to_string(),
        ),
        fact(
            "unfinished-migrations",
            state.facts.unfinished_migrations.unwrap_or(0).to_string(),
        ),
        fact(
            "entities-without-history",
            state
                .facts
                .entities_without_history
                .unwrap_or(false)
                .to_string(),
        ),
    ];
    if let Some(v) = &state.db_version {
        facts.push(fact("db-version", v.to_string()));
    }
    Ok(Detection { version, facts })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted_for_the_engine() {
        let pg = Quoting::of_server("PostgreSQL 15.6 (Debian 15.6-0+deb12u1) on x86_64");
        assert_eq!(pg, Quoting::Ansi);
        assert_eq!(pg.ident("SERVER_CHANGE_LOG"), "\"SERVER_CHANGE_LOG\"");
        assert_eq!(pg.ident("a\"b"), "\"a\"\"b\"");
        let maria = Quoting::of_server("10.11.6-MariaDB-0+deb12u1");
        assert_eq!(maria, Quoting::Backquote);
        assert_eq!(maria.ident("SERVER_CHANGE_LOG"), "`SERVER_CHANGE_LOG`");
        assert_eq!(Quoting::of_server("8.0.36").ident("a`b"), "`a``b`");
    }
}
