//! Reading the live instance: the version from the API, the service and the metadata database,
//! and the facts the rules need (product-facts §1.4, §1.7, "What an adapter must encode").

use upshift_adapter_sdk::live::{self, Answer};
use upshift_adapter_sdk::{AdapterError, Detection, Value, error, fact, service};

use crate::catalog;
use crate::rules::{SchemaFormat, StoreMode, parse_history_version};

/// The metadata database's binding.
const META: &str = "meta";
/// The HTTP API's binding.
const API: &str = "api";

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

fn column_exists(table: &str, column: &str) -> Result<bool, AdapterError> {
    let found = live::count(
        META,
        "SELECT count(*) FROM information_schema.columns WHERE table_name = $1 AND column_name = $2",
        &[Value::Text(table.into()), Value::Text(column.into())],
    )?;
    Ok(found > 0)
}

/// Read the schema version and its facts from the metadata database.
pub fn schema() -> Result<SchemaState, AdapterError> {
    let mut state = SchemaState::default();
    if live::table_exists(META, "instance_change_history")? {
        let own_rows = if column_exists("instance_change_history", "instance_id")? {
            "WHERE instance_id IS NULL"
        } else {
            ""
        };
        let raw = live::scalar(
            META,
            &format!(
                "SELECT version FROM instance_change_history {own_rows} ORDER BY id DESC LIMIT 1"
            ),
            &[],
        )?;
        if let Some(raw) = &raw {
            let (version, format) = parse_history_version(raw)
                .ok_or_else(|| error(format!("instance_change_history holds version `{raw}`, which is neither padded nor semver")))?;
            state.version = Some(version);
            state.format = Some(format);
        }
        state.raw = raw;
        state.database_id_rows = Some(
            if column_exists("instance_change_history", "database_id")? {
                live::count(
                    META,
                    "SELECT count(*) FROM instance_change_history WHERE database_id IS NOT NULL",
                    &[],
                )?
            } else {
                0
            },
        );
        state.duplicate_versions = Some(live::count(
            META,
            "SELECT count(*) FROM (SELECT version FROM instance_change_history GROUP BY version HAVING count(*) > 1) AS d",
            &[],
        )?);
    } else if live::table_exists(META, "migration_history")? {
        let raw = live::scalar(
            META,
            "SELECT version FROM migration_history ORDER BY id DESC LIMIT 1",
            &[],
        )?;
        state.version = raw
            .as_deref()
            .and_then(parse_history_version)
            .map(|(v, _)| v);
        state.raw = raw;
        state.format = Some(SchemaFormat::Legacy1x);
    }
    Ok(state)
}

/// The `version` field of an actuator answer.
pub fn actuator_version(answer: &Answer) -> Option<String> {
    answer.field("version")
}

/// The `replicaCount` field of an actuator answer.
pub fn actuator_replicas(answer: &Answer) -> Option<i64> {
    answer.json()?.get("replicaCount")?.as_i64()
}

/// GET the actuator (≥ 2.0 at /v1/actuator/info, 1.x at /api/actuator/info).
pub fn actuator() -> Option<Answer> {
    ["/v1/actuator/info", "/api/actuator/info"]
        .into_iter()
        .find_map(|path| live::get(API, path).ok().filter(|a| a.status == 200))
}

/// The embedded store's PostgreSQL major, when the data directory is bound and has one.
fn embedded_pg() -> Option<u32> {
    let bytes = live::read("data", "pgdata/PG_VERSION").ok()?;
    String::from_utf8_lossy(&bytes).trim().parse().ok()
}

/// Whether the `meta` server is the embedded one: its data directory is a `pgdata` (Bytebase's
/// embedded role `bb` is the cluster's superuser, so it may read the setting); for a role that
/// may not read it, whether the server listens on no TCP address (Bytebase starts the embedded
/// one with `-h ""`, a socket only). `None` when the server does not answer (it is down).
fn meta_serves_a_pgdata() -> Option<bool> {
    if let Ok(Some(dir)) = live::scalar(META, "SELECT current_setting('data_directory')", &[]) {
        return Some(dir.trim_end_matches('/').ends_with("/pgdata"));
    }
    let listen = live::scalar(META, "SELECT current_setting('listen_addresses')", &[]).ok()??;
    Some(listen.trim().is_empty())
}

/// The store mode: embedded when the data directory holds `pgdata/PG_VERSION`, unless the
/// `meta` server says it lives elsewhere (an external PostgreSQL beside a `pgdata` left from
/// before, which stops nothing when Bytebase stops).
fn store_mode(embedded_pg: Option<u32>, meta_in_pgdata: Option<bool>) -> StoreMode {
    match (embedded_pg, meta_in_pgdata) {
        (None, _) | (Some(_), Some(false)) => StoreMode::External,
        (Some(_), _) => StoreMode::Embedded,
    }
}

/// Detect the running version and the facts.
pub fn detect() -> Result<Detection, AdapterError> {
    let mut facts = Vec::new();
    let pgdata = embedded_pg();
    let meta_in_pgdata = pgdata.and_then(|_| meta_serves_a_pgdata());
    let mode = store_mode(pgdata, meta_in_pgdata);
    let embedded = pgdata.filter(|_| mode == StoreMode::Embedded);
    let service = service::inspect("app").ok();
    // The embedded store runs only while Bytebase runs (§1.2): stopped, its schema is unread
    // (rule `embedded-store-down` refuses to plan on that); anything else is an error.
    let stopped = service.as_ref().is_some_and(|s| !s.running);
    let schema = match schema() {
        Ok(schema) => schema,
        Err(_) if embedded.is_some() && stopped => SchemaState::default(),
        Err(e) => return Err(e),
    };
    if let Some(raw) = &schema.raw {
        facts.push(fact("schema-version-raw", raw.clone()));
    }
    if let Some(v) = &schema.version {
        facts.push(fact("schema-version", v.to_string()));
        // The host compares the data's version with releases (resume): give it as a release.
        facts.push(fact(
            "data-release",
            catalog::release_for_schema(v).to_string(),
        ));
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
    let api = actuator().as_ref().and_then(actuator_version);
    if let Some(v) = &api {
        facts.push(fact("api-version", v.clone()));
    }
    if let Some(s) = &service {
        facts.push(fact("service-version", s.version.clone()));
        facts.push(fact("service-running", s.running.to_string()));
    }
    facts.push(fact("store-mode", mode.name()));
    if let Some(pg) = embedded {
        facts.push(fact("embedded-pg-version", pg.to_string()));
    }
    if mode == StoreMode::External && pgdata.is_some() {
        facts.push(fact(
            "unused-pgdata",
            "the data directory holds a pgdata, but `meta` is served from elsewhere",
        ));
    }
    let (release, source) = release(
        api.as_deref(),
        service.as_ref().map(|s| s.version.as_str()),
        schema.version.as_ref(),
    )
    .ok_or_else(|| error("cannot tell the Bytebase release: the API does not answer, the fleet file declares no version of the service and the metadata has no version row; declare the running release as the service's `version`"))?;
    facts.push(fact("release", release.to_string()));
    facts.push(fact("release-source", source.name()));
    Ok(Detection {
        version: release.to_string(),
        facts,
    })
}

/// Where the release in a detection came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseSource {
    /// The running binary's `/v1/actuator/info` `version`.
    Api,
    /// The operator's `version` of the service in the fleet file.
    Declared,
    /// Only the metadata schema: the release it belongs to ([`catalog::release_for_schema`]).
    Schema,
}

impl ReleaseSource {
    /// The fact value.
    pub fn name(self) -> &'static str {
        match self {
            ReleaseSource::Api => "api",
            ReleaseSource::Declared => "declared",
            ReleaseSource::Schema => "schema",
        }
    }

    /// Who said so, for messages.
    pub fn describe(self) -> &'static str {
        match self {
            ReleaseSource::Api => "the running binary (/v1/actuator/info)",
            ReleaseSource::Declared => "the fleet file (the service's `version`)",
            ReleaseSource::Schema => "the metadata schema",
        }
    }
}

impl upshift_adapter_sdk::FactValue for ReleaseSource {
    fn from_fact(text: &str) -> Option<ReleaseSource> {
        match text {
            "api" => Some(ReleaseSource::Api),
            "declared" => Some(ReleaseSource::Declared),
            "schema" => Some(ReleaseSource::Schema),
            _ => None,
        }
    }
}

/// The release, normalised: the API's version, else the operator's declared one, else what
/// the schema implies (never the schema version itself: it is a file number, §1.5).
pub fn release(
    api: Option<&str>,
    declared: Option<&str>,
    schema: Option<&semver::Version>,
) -> Option<(semver::Version, ReleaseSource)> {
    if let Some(v) = api.and_then(catalog::release) {
        return Some((v, ReleaseSource::Api));
    }
    if let Some(v) = declared.and_then(catalog::release) {
        return Some((v, ReleaseSource::Declared));
    }
    Some((catalog::release_for_schema(schema?), ReleaseSource::Schema))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actuator_fields() {
        let answer = |body: &str| Answer {
            status: 200,
            body: body.into(),
        };
        let info = answer(r#"{"version":"3.11.1","gitCommit":"abc","replicaCount":1}"#);
        assert_eq!(actuator_version(&info).as_deref(), Some("3.11.1"));
        assert_eq!(actuator_replicas(&info), Some(1));
        assert_eq!(actuator_version(&answer("not json")), None);
    }

    #[test]
    fn the_store_is_embedded_when_pgdata_exists_unless_meta_lives_elsewhere() {
        assert_eq!(store_mode(None, None), StoreMode::External);
        assert_eq!(store_mode(Some(16), Some(true)), StoreMode::Embedded);
        assert_eq!(store_mode(Some(16), None), StoreMode::Embedded);
        assert_eq!(store_mode(Some(16), Some(false)), StoreMode::External);
    }

    #[test]
    fn the_release_comes_from_the_api_then_the_operator_then_the_schema() {
        let v = |s: &str| semver::Version::parse(s).expect("version");
        let schema = v("3.11.17");
        assert_eq!(
            release(Some("v3.13.0"), Some("3.10.0"), Some(&schema)),
            Some((v("3.13.0"), ReleaseSource::Api))
        );
        assert_eq!(
            release(None, Some("3.10.0+sha"), Some(&schema)),
            Some((v("3.10.0"), ReleaseSource::Declared))
        );
        assert_eq!(
            release(None, None, Some(&schema)),
            Some((v("3.11.1"), ReleaseSource::Schema))
        );
        assert_eq!(
            release(None, None, Some(&v("3.22.7"))),
            Some((v("3.22.0"), ReleaseSource::Schema))
        );
        assert_eq!(release(None, None, None), None);
    }
}
