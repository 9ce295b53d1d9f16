//! Bytebase's startup migrator, as product-facts §1.4–§1.5 describe it.

use anyhow::{Context, anyhow, bail};
use semver::Version;
use tokio_postgres::{Client, GenericClient};

use super::catalog::{BASE_SCHEMA, Era, Migration, Release, padded, parse_recorded};

const V1_HISTORY: &str = "
CREATE TABLE migration_history (id SERIAL PRIMARY KEY, created_by TEXT NOT NULL, created_ts BIGINT NOT NULL,
  updated_by TEXT NOT NULL, updated_ts BIGINT NOT NULL, release_version TEXT NOT NULL, namespace TEXT NOT NULL,
  sequence BIGINT NOT NULL, source TEXT NOT NULL, type TEXT NOT NULL, status TEXT NOT NULL, version TEXT NOT NULL,
  description TEXT NOT NULL, statement TEXT NOT NULL, schema TEXT NOT NULL, schema_prev TEXT NOT NULL,
  execution_duration_ns BIGINT NOT NULL, issue_id INTEGER, payload TEXT NOT NULL DEFAULT '{}');
CREATE UNIQUE INDEX migration_history_unique_namespace_sequence ON migration_history (namespace, sequence);
CREATE UNIQUE INDEX migration_history_unique_namespace_source_version ON migration_history (namespace, source, version);
";

const V2_HISTORY: &str = "
CREATE TABLE instance_change_history (id BIGSERIAL PRIMARY KEY, row_status TEXT NOT NULL DEFAULT 'NORMAL',
  creator_id INTEGER NOT NULL DEFAULT 1, created_ts BIGINT NOT NULL DEFAULT 0, updater_id INTEGER NOT NULL DEFAULT 1,
  updated_ts BIGINT NOT NULL DEFAULT 0, instance_id INTEGER, database_id INTEGER, issue_id INTEGER,
  release_version TEXT NOT NULL DEFAULT '', sequence BIGINT NOT NULL DEFAULT 0, source TEXT NOT NULL DEFAULT 'LIBRARY',
  type TEXT NOT NULL DEFAULT 'MIGRATE', status TEXT NOT NULL DEFAULT 'DONE', version TEXT NOT NULL,
  description TEXT NOT NULL DEFAULT '', statement TEXT NOT NULL DEFAULT '', schema TEXT NOT NULL DEFAULT '',
  schema_prev TEXT NOT NULL DEFAULT '', execution_duration_ns BIGINT NOT NULL DEFAULT 0, payload JSONB NOT NULL DEFAULT '{}');
CREATE UNIQUE INDEX idx_instance_change_history_unique_instance_id_database_id_sequence ON instance_change_history (instance_id, database_id, sequence);
CREATE UNIQUE INDEX idx_instance_change_history_unique_instance_id_database_id_version ON instance_change_history (instance_id, database_id, version);
";

const V3_HISTORY: &str = "
CREATE TABLE instance_change_history (id BIGSERIAL PRIMARY KEY, version TEXT NOT NULL);
CREATE UNIQUE INDEX idx_instance_change_history_unique_version ON instance_change_history (version);
ALTER SEQUENCE instance_change_history_id_seq RESTART WITH 101;
";

/// The 2.x columns the 3.4.1 backfill drops.
const V2_ONLY_COLUMNS: &[&str] = &[
    "row_status",
    "creator_id",
    "created_ts",
    "updater_id",
    "updated_ts",
    "instance_id",
    "database_id",
    "issue_id",
    "release_version",
    "sequence",
    "source",
    "type",
    "status",
    "description",
    "statement",
    "schema",
    "schema_prev",
    "execution_duration_ns",
    "payload",
];

fn pg(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("ERROR: {} (SQLSTATE {})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

async fn table_exists(c: &impl GenericClient, table: &str) -> anyhow::Result<bool> {
    let row = c
        .query_one(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public' AND table_name = $1",
            &[&table],
        )
        .await
        .map_err(|e| anyhow!("failed to check table {table}: {}", pg(&e)))?;
    Ok(row.get::<_, i64>(0) > 0)
}

async fn column_exists(c: &impl GenericClient, table: &str, column: &str) -> anyhow::Result<bool> {
    let row = c
        .query_one(
            "SELECT count(*) FROM information_schema.columns WHERE table_schema = 'public' AND table_name = $1 AND column_name = $2",
            &[&table, &column],
        )
        .await
        .map_err(|e| anyhow!("failed to check column {table}.{column}: {}", pg(&e)))?;
    Ok(row.get::<_, i64>(0) > 0)
}

fn epoch() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Record `version` in the history table of `era`.
async fn record(
    c: &impl GenericClient,
    era: Era,
    release: &Release,
    version: &Version,
    m: Option<&Migration>,
) -> anyhow::Result<()> {
    let description = m.map(|m| m.name()).unwrap_or("LATEST");
    let statement = m.map(|m| m.sql).unwrap_or("LATEST.sql");
    let r = match era {
        Era::V1 => {
            c.execute(
                "INSERT INTO migration_history (created_by, created_ts, updated_by, updated_ts, release_version, namespace, sequence, \
                 source, type, status, version, description, statement, schema, schema_prev, execution_duration_ns, issue_id, payload) \
                 VALUES ('system', $1, 'system', $1, $2, current_database(), \
                 (SELECT coalesce(max(sequence), 0) + 1 FROM migration_history), 'LIBRARY', 'MIGRATE', 'DONE', $3, $4, $5, '', '', 0, NULL, '{}')",
                &[&epoch(), &release.version.to_string(), &padded(version), &description, &statement],
            )
            .await
        }
        Era::V2 => {
            c.execute(
                "INSERT INTO instance_change_history (created_ts, updated_ts, instance_id, database_id, release_version, sequence, version, description, statement) \
                 VALUES ($1, $1, NULL, NULL, $2, (SELECT coalesce(max(sequence), 0) + 1 FROM instance_change_history), $3, $4, $5)",
                &[&epoch(), &release.version.to_string(), &padded(version), &description, &statement],
            )
            .await
        }
        Era::V3 => {
            c.execute("INSERT INTO instance_change_history (version) VALUES ($1)", &[&version.to_string()])
                .await
        }
    };
    r.map(|_| ())
        .map_err(|e| anyhow!("failed to record version {version}: {}", pg(&e)))
}

async fn fresh_install(client: &mut Client, release: &Release) -> anyhow::Result<Version> {
    let tx = client.transaction().await.context("begin")?;
    tx.execute("SELECT pg_advisory_xact_lock(1002)", &[])
        .await
        .map_err(|e| anyhow!(pg(&e)))?;
    let mut latest = String::from(BASE_SCHEMA);
    for m in release.migrations() {
        latest.push_str(m.sql);
        latest.push_str(";\n");
    }
    latest.push_str(match release.era {
        Era::V1 => V1_HISTORY,
        Era::V2 => V2_HISTORY,
        Era::V3 => V3_HISTORY,
    });
    latest.push_str(
        "INSERT INTO principal (id, type, name, email) VALUES (1, 'SYSTEM_BOT', 'Bytebase', 'support@bytebase.com');
         SELECT setval('principal_id_seq', 101, false);
         INSERT INTO environment (resource_id, name) VALUES ('test', 'Test'), ('prod', 'Prod');
         INSERT INTO project (resource_id, name, key) VALUES ('default', 'Default project', 'DEFAULT');
         INSERT INTO setting (name, value) VALUES ('bb.auth.secret', md5(random()::text)), ('bb.workspace.id', md5(random()::text)), ('bb.enterprise.license', '');",
    );
    tx.batch_execute(&latest)
        .await
        .map_err(|e| anyhow!("failed to initialize the metadata schema: {}", pg(&e)))?;
    let version = release.schema_version();
    record(&tx, release.era, release, &version, None).await?;
    tx.commit()
        .await
        .map_err(|e| anyhow!("commit: {}", pg(&e)))?;
    println!("Initialized a fresh metadata schema at {version}.");
    Ok(version)
}

/// 2.0.0–2.2.x: copy 1.x `migration_history` (namespace = this database) into
/// `instance_change_history` (migrateOld / backfillHistory).
async fn migrate_old(client: &mut Client) -> anyhow::Result<()> {
    let tx = client.transaction().await.context("begin")?;
    tx.batch_execute(V2_HISTORY)
        .await
        .map_err(|e| anyhow!("failed to create instance_change_history: {}", pg(&e)))?;
    tx.execute(
        "INSERT INTO instance_change_history (created_ts, updated_ts, instance_id, database_id, release_version, sequence, source, type, status, version, description, statement, schema, schema_prev, execution_duration_ns) \
         SELECT created_ts, updated_ts, NULL, NULL, release_version, sequence, source, type, status, version, description, statement, schema, schema_prev, execution_duration_ns \
         FROM migration_history WHERE namespace = current_database() ORDER BY id",
        &[],
    )
    .await
    .map_err(|e| anyhow!("failed to copy the 1.x migration history: {}", pg(&e)))?;
    tx.commit()
        .await
        .map_err(|e| anyhow!("commit: {}", pg(&e)))?;
    println!("Copied the 1.x migration_history into instance_change_history.");
    Ok(())
}

/// 3.4.1–3.13.x: the legacy backfill to `instance_change_history(id, version)`.
async fn legacy_backfill(client: &mut Client) -> anyhow::Result<()> {
    let tx = client.transaction().await.context("begin")?;
    tx.execute("SELECT pg_advisory_xact_lock(1002)", &[])
        .await
        .map_err(|e| anyhow!(pg(&e)))?;
    if column_exists(&tx, "instance_change_history", "database_id").await? {
        let n: i64 = tx
            .query_one(
                "SELECT count(1) FROM instance_change_history WHERE database_id IS NOT NULL",
                &[],
            )
            .await
            .map_err(|e| anyhow!(pg(&e)))?
            .get(0);
        if n > 0 {
            bail!("failed to migrate schema: Must upgrade to Bytebase 3.3.1 first");
        }
    }
    if column_exists(&tx, "instance_change_history", "status").await? {
        tx.execute(
            "DELETE FROM instance_change_history WHERE status = 'FAILED'",
            &[],
        )
        .await
        .map_err(|e| anyhow!(pg(&e)))?;
    }
    let rows = tx
        .query("SELECT id, version FROM instance_change_history", &[])
        .await
        .map_err(|e| anyhow!(pg(&e)))?;
    for row in rows {
        let id: i64 = row.get(0);
        let text: String = row.get(1);
        if let Some((v, true)) = parse_recorded(&text) {
            tx.execute(
                "UPDATE instance_change_history SET version = $2 WHERE id = $1",
                &[&id, &v.to_string()],
            )
            .await
            .map_err(|e| anyhow!(pg(&e)))?;
        }
    }
    for column in V2_ONLY_COLUMNS {
        tx.batch_execute(&format!(
            "ALTER TABLE instance_change_history DROP COLUMN IF EXISTS \"{column}\""
        ))
        .await
        .map_err(|e| anyhow!(pg(&e)))?;
    }
    tx.batch_execute("CREATE UNIQUE INDEX idx_instance_change_history_unique_version ON instance_change_history (version)")
        .await
        .map_err(|e| anyhow!("failed to migrate schema: could not create unique index \"idx_instance_change_history_unique_version\": {}", pg(&e)))?;
    tx.commit()
        .await
        .map_err(|e| anyhow!("commit: {}", pg(&e)))?;
    println!("Backfilled instance_change_history to plain versions.");
    Ok(())
}

/// The recorded schema version, and whether it is padded.
async fn current(client: &Client, release: &Release) -> anyhow::Result<(Version, bool, String)> {
    let sql = if release.era == Era::V1 {
        "SELECT version FROM migration_history ORDER BY id DESC LIMIT 1"
    } else {
        "SELECT version FROM instance_change_history ORDER BY id DESC LIMIT 1"
    };
    let row = client
        .query_opt(sql, &[])
        .await
        .map_err(|e| anyhow!("failed to get the current schema version: {}", pg(&e)))?
        .ok_or_else(|| anyhow!("the latest database version is not found"))?;
    let raw: String = row.get(0);
    let (v, is_padded) = parse_recorded(&raw).ok_or_else(|| anyhow!("invalid version {raw:?}"))?;
    Ok((v, is_padded, raw))
}

/// Install or migrate the metadata schema for `release`; returns the recorded version.
pub async fn migrate(
    client: &mut Client,
    release: &Release,
    fail: Option<&Version>,
) -> anyhow::Result<Version> {
    if !table_exists(&*client, "principal").await? {
        return fresh_install(client, release).await;
    }
    if release.era != Era::V1
        && !table_exists(&*client, "instance_change_history").await?
        && table_exists(&*client, "migration_history").await?
        && release.copies_1x_history()
    {
        migrate_old(client).await?;
    }
    let (mut now, is_padded, raw) = current(client, release).await?;
    if release.era == Era::V3 && is_padded {
        if release.runs_legacy_backfill() {
            legacy_backfill(client).await?;
        } else {
            bail!(
                "failed to get the current schema version: invalid version {raw:?}: Major number must not contain leading zeroes \"{:04}\"",
                now.major
            );
        }
    }
    for m in release.migrations() {
        let version = m.version();
        if version <= now {
            continue;
        }
        println!("Migrating {version}.");
        let tx = client.transaction().await.context("begin")?;
        tx.execute("SELECT pg_advisory_xact_lock(1002)", &[])
            .await
            .map_err(|e| anyhow!(pg(&e)))?;
        let statement = if fail == Some(&version) {
            format!(
                "{}; UPDATE issue SET task_kind = 'DATABASE_SCHEMA_UPDATE'",
                m.sql
            )
        } else {
            m.sql.to_string()
        };
        if let Err(e) = tx.batch_execute(&statement).await {
            let preview: String = statement.chars().take(120).collect();
            bail!(
                "failed to migrate schema: failed to execute migration \"{}\" (version {version}): statement {preview:?} as user postgres on the metadata database: {}",
                m.file(),
                pg(&e)
            );
        }
        record(&tx, release.era, release, &version, Some(&m)).await?;
        tx.commit()
            .await
            .map_err(|e| anyhow!("commit: {}", pg(&e)))?;
        now = version;
    }
    Ok(now)
}
