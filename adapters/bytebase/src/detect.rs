//! Reading the live instance: the version from the API, the service and the metadata database,
//! and the facts the rules need (product-facts §1.4, §1.7, "What an adapter must encode").

use upshift_adapter_sdk::{
    AdapterError, Detection, Value, db, describe_cap_error, error, fact, files, http, service,
    value_text,
};

use crate::rules::{Facts, SchemaFormat, parse_history_version};

/// What the metadata database says.
#[derive(Debug, Clone, Default)]
pub struct SchemaState {
    /// The last recorded version, parsed.
    pub version: Option<semver::Version>,
    /// The raw text.
    pub raw: Option<String>,
    /// Its format.
    pub format: Option<SchemaFormat>,
    /// `database_id IS NOT NULL` rows.
    pub database_id_rows: Option<u64>,
    /// Duplicated versions.
    pub duplicate_versions: Option<u64>,
}

fn query_one(sql: &str) -> Result<Option<Value>, AdapterError> {
    let rows = db::query("meta", sql, &[]).map_err(|e| {
        error(format!(
            "reading the metadata database: {}",
            describe_cap_error(&e)
        ))
    })?;
    Ok(rows
        .rows
        .into_iter()
        .next()
        .and_then(|r| r.into_iter().next()))
}

fn count(sql: &str) -> Result<u64, AdapterError> {
    match query_one(sql)? {
        Some(Value::Int(n)) => Ok(u64::try_from(n).unwrap_or(0)),
        other => Err(error(format!(
            "expected a count from `{sql}`, got {other:?}"
        ))),
    }
}

fn table_exists(table: &str) -> Result<bool, AdapterError> {
    db::table_exists("meta", table).map_err(|e| {
        error(format!(
            "reading the metadata database: {}",
            describe_cap_error(&e)
        ))
    })
}

fn column_exists(table: &str, column: &str) -> Result<bool, AdapterError> {
    let rows = db::query(
        "meta",
        "SELECT count(*) FROM information_schema.columns WHERE table_name = $1 AND column_name = $2",
        &[Value::Text(table.into()), Value::Text(column.into())],
    )
    .map_err(|e| error(format!("reading the metadata database: {}", describe_cap_error(&e))))?;
    Ok(matches!(rows.rows.first().and_then(|r| r.first()), Some(Value::Int(n)) if *n > 0))
}

/// Read the schema version and its facts from the metadata database.
pub fn schema() -> Result<SchemaState, AdapterError> {
    let mut state = SchemaState::default();
    if table_exists("instance_change_history")? {
        let own_rows = if column_exists("instance_change_history", "instance_id")? {
            "WHERE instance_id IS NULL"
        } else {
            ""
        };
        let raw = query_one(&format!(
            "SELECT version FROM instance_change_history {own_rows} ORDER BY id DESC LIMIT 1"
        ))?
        .as_ref()
        .and_then(value_text);
        if let Some(raw) = &raw {
            let (version, format) = parse_history_version(raw)
                .ok_or_else(|| error(format!("instance_change_history holds version `{raw}`, which is neither padded nor semver")))?;
            state.version = Some(version);
            state.format = Some(format);
        }
        state.raw = raw;
        if column_exists("instance_change_history", "database_id")? {
            state.database_id_rows = Some(count(
                "SELECT count(*) FROM instance_change_history WHERE database_id IS NOT NULL",
            )?);
        } else {
            state.database_id_rows = Some(0);
        }
        state.duplicate_versions = Some(count(
            "SELECT count(*) FROM (SELECT version FROM instance_change_history GROUP BY version HAVING count(*) > 1) AS d",
        )?);
    } else if table_exists("migration_history")? {
        let raw = query_one("SELECT version FROM migration_history ORDER BY id DESC LIMIT 1")?
            .as_ref()
            .and_then(value_text);
        if let Some(raw) = &raw {
            state.version = parse_history_version(raw).map(|(v, _)| v);
        }
        state.raw = raw;
        state.format = Some(SchemaFormat::Legacy1x);
    }
    Ok(state)
}

/// The `version` field of an actuator JSON body.
pub fn actuator_version(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    value.get("version")?.as_str().map(str::to_string)
}

/// The `replicaCount` field of an actuator JSON body.
pub fn actuator_replicas(body: &[u8]) -> Option<i64> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    value.get("replicaCount")?.as_i64()
}

/// GET the actuator (≥ 2.0 at /v1/actuator/info, 1.x at /api/actuator/info).
pub fn actuator() -> Option<Vec<u8>> {
    for path in ["/v1/actuator/info", "/api/actuator/info"] {
        if let Ok(resp) = http::request("api", "GET", path, &[])
            && resp.status == 200
        {
            return Some(resp.body);
        }
    }
    None
}

/// The embedded store's PostgreSQL major, when the data directory is bound and has one.
fn embedded_pg() -> Option<u32> {
    let bytes = files::read("data", "pgdata/PG_VERSION").ok()?;
    String::from_utf8_lossy(&bytes).trim().parse().ok()
}

/// Facts as the rules want them, from a detection's facts.
pub fn facts_of(detection: &Detection) -> Facts {
    Facts {
        schema_format: detection
            .fact("schema-format")
            .and_then(SchemaFormat::parse),
        database_id_rows: detection
            .fact("database-id-rows")
            .and_then(|v| v.parse().ok()),
        duplicate_versions: detection
            .fact("duplicate-versions")
            .and_then(|v| v.parse().ok()),
        embedded_pg: detection
            .fact("embedded-pg-version")
            .and_then(|v| v.parse().ok()),
    }
}

/// Detect the running version and the facts.
pub fn detect() -> Result<Detection, AdapterError> {
    let mut facts = Vec::new();
    let schema = schema()?;
    if let Some(raw) = &schema.raw {
        facts.push(fact("schema-version-raw", raw.clone()));
    }
    if let Some(v) = &schema.version {
        facts.push(fact("schema-version", v.to_string()));
    }
    if let Some(f) = schema.format {
        facts.push(fact("schema-format", f.name()));
    }
    if let Some(n) = schema.database_id_rows {
        facts.push(fact("database-id-rows", n.to_string()));
    }
    if let Some(n) = schema.duplicate_versions {
        facts.push(fact("duplicate-versions", n.to_string()));
    }
    let api = actuator().and_then(|body| actuator_version(&body));
    if let Some(v) = &api {
        facts.push(fact("api-version", v.clone()));
    }
    let service = service::inspect("app").ok();
    if let Some(s) = &service {
        facts.push(fact("service-version", s.version.clone()));
        facts.push(fact("service-running", s.running.to_string()));
    }
    match embedded_pg() {
        Some(pg) => {
            facts.push(fact("store-mode", "embedded"));
            facts.push(fact("embedded-pg-version", pg.to_string()));
        }
        None => facts.push(fact("store-mode", "external")),
    }
    let version = api
        .or_else(|| service.map(|s| s.version))
        .or_else(|| schema.version.map(|v| v.to_string()))
        .ok_or_else(|| error("cannot tell the Bytebase version: the API does not answer, the service is unknown and the metadata has no version row"))?;
    Ok(Detection { version, facts })
}
