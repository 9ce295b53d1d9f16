//! The migration workflow of `./bootstrap/openmetadata-ops.sh` (product-facts §3.2, §3.3):
//! Flyway scripts (≤ 1.10), native migrations with their SchemaChanges / DataMigration /
//! PostDDLScripts steps, `SERVER_MIGRATION_SQL_LOGS`, the Flyway-history import (≥ 1.11), the 2.x
//! baseline, the newest-code gate, `validate`, `changelog`, `repair` and `recover`.

use std::cmp::Ordering;

use anyhow::{anyhow, bail};

use super::catalog::{
    self, BASELINE_VERSION, Era, FLYWAY, MINIMUM_SUPPORTED_MIGRATION_VERSION, NATIVE, Native,
    Release, Sql, Ver,
};
use super::store::{Engine, Store};

/// One `SERVER_CHANGE_LOG` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeRow {
    /// `installed_rank`.
    pub rank: String,
    /// `version`.
    pub version: String,
    /// `migrationFileName`.
    pub file: String,
    /// `installed_on`.
    pub installed_on: String,
    /// `migrationType` (≥ 1.11).
    pub migration_type: Option<String>,
    /// `status` (2.x).
    pub status: Option<String>,
}

/// What the database holds, as the workflow sees it.
#[derive(Debug, Clone, Default)]
pub struct DbState {
    /// `SERVER_CHANGE_LOG` exists.
    pub has_server_change_log: bool,
    /// `DATABASE_CHANGE_LOG` (Flyway) exists.
    pub has_database_change_log: bool,
    /// Entity tables exist.
    pub has_entities: bool,
    /// `SERVER_CHANGE_LOG.migrationType` exists.
    pub has_type: bool,
    /// `SERVER_CHANGE_LOG.status` exists.
    pub has_status: bool,
    /// Successful Flyway versions in `DATABASE_CHANGE_LOG`.
    pub flyway: Vec<String>,
    /// `SERVER_CHANGE_LOG` rows by `installed_rank`.
    pub rows: Vec<ChangeRow>,
}

impl DbState {
    /// Nothing of OpenMetadata's in the database.
    pub fn is_empty(&self) -> bool {
        !self.has_server_change_log && !self.has_database_change_log && !self.has_entities
    }

    /// Versions of completed native (and baseline) rows.
    pub fn completed(&self) -> Vec<Ver> {
        self.rows
            .iter()
            .filter(|r| {
                !matches!(
                    r.migration_type.as_deref(),
                    Some("FLYWAY") | Some("EXTENSION")
                ) && r.status.as_deref().is_none_or(|s| s == "COMPLETED")
            })
            .filter_map(|r| Ver::parse(&r.version))
            .collect()
    }

    /// max(`SERVER_CHANGE_LOG.version`) over completed rows, compared numerically.
    pub fn max(&self) -> Option<Ver> {
        self.completed().into_iter().max_by(|a, b| a.cmp_num(b))
    }

    /// Rows left `STARTED` or `FAILED`.
    pub fn broken(&self) -> Vec<&ChangeRow> {
        self.rows
            .iter()
            .filter(|r| matches!(r.status.as_deref(), Some("STARTED") | Some("FAILED")))
            .collect()
    }

    /// The only row is a `STARTED` baseline: an interrupted 2.x install (baseline decision
    /// `RESUME`).
    pub fn baseline_started_only(&self) -> bool {
        !self.rows.is_empty()
            && self
                .rows
                .iter()
                .all(|r| r.version == BASELINE_VERSION && r.status.as_deref() == Some("STARTED"))
    }

    /// Rows imported from Flyway's history.
    pub fn has_flyway_rows(&self) -> bool {
        self.rows
            .iter()
            .any(|r| r.migration_type.as_deref() == Some("FLYWAY"))
    }
}

/// Read the tracking tables.
pub async fn inspect(store: &mut Store) -> anyhow::Result<DbState> {
    let mut st = DbState {
        has_server_change_log: store.table_exists("SERVER_CHANGE_LOG").await?,
        has_database_change_log: store.table_exists("DATABASE_CHANGE_LOG").await?,
        has_entities: store.table_exists("user_entity").await?
            || store.table_exists("table_entity").await?,
        ..DbState::default()
    };
    if st.has_database_change_log {
        let sql = format!(
            "SELECT version FROM {} WHERE success = TRUE AND version IS NOT NULL ORDER BY installed_rank",
            store.table_ref("DATABASE_CHANGE_LOG")
        );
        st.flyway = store
            .rows(&sql)
            .await?
            .into_iter()
            .filter_map(|r| r.into_iter().next().flatten())
            .collect();
    }
    if st.has_server_change_log {
        st.has_type = store
            .column_exists("SERVER_CHANGE_LOG", "migrationType")
            .await?;
        st.has_status = store.column_exists("SERVER_CHANGE_LOG", "status").await?;
        let sql = format!(
            "SELECT installed_rank, version, migrationFileName, installed_on, {}, {} FROM SERVER_CHANGE_LOG ORDER BY installed_rank",
            if st.has_type { "migrationType" } else { "NULL" },
            if st.has_status { "status" } else { "NULL" },
        );
        st.rows = store
            .rows(&sql)
            .await?
            .into_iter()
            .map(|r| {
                let mut it = r.into_iter();
                let mut next = || it.next().flatten();
                ChangeRow {
                    rank: next().unwrap_or_default(),
                    version: next().unwrap_or_default(),
                    file: next().unwrap_or_default(),
                    installed_on: next().unwrap_or_default(),
                    migration_type: next(),
                    status: next(),
                }
            })
            .collect();
    }
    Ok(st)
}

/// What `migrate` would run: missing Flyway scripts (`v001`), the baseline, native versions
/// above the recorded maximum.
pub fn pending(release: &Release, st: &DbState) -> Vec<String> {
    let mut out = Vec::new();
    if release.era == Era::Flyway {
        for f in FLYWAY {
            if !st.flyway.iter().any(|v| v == f.version) {
                out.push(format!("v{}", f.version));
            }
        }
    }
    let mut max = st.max();
    if (st.is_empty() || st.baseline_started_only()) && release.has_status() {
        out.push(BASELINE_VERSION.to_string());
        max = Ver::parse(BASELINE_VERSION);
    }
    for n in release.natives() {
        if max
            .as_ref()
            .is_none_or(|m| n.ver().cmp_num(m) == Ordering::Greater)
        {
            out.push(n.version.to_string());
        }
    }
    out
}

/// Executed migrations this release does not know: versions above its newest (a newer release
/// migrated the database).
pub fn unexpected(release: &Release, st: &DbState) -> Vec<String> {
    let newest = release.newest();
    let mut v: Vec<Ver> = st
        .completed()
        .into_iter()
        .filter(|v| v.cmp_num(&newest) == Ordering::Greater)
        .collect();
    v.sort_by(|a, b| a.cmp_num(b));
    v.iter().map(|v| v.to_string()).collect()
}

/// The 2.x baseline decision's `ABORT` and the newest code's minimum-version gate.
pub fn gate(release: &Release, st: &DbState) -> anyhow::Result<()> {
    if !release.has_status() || st.is_empty() || st.baseline_started_only() {
        return Ok(());
    }
    if st.has_entities && st.rows.is_empty() && !st.has_database_change_log {
        bail!(
            "Baseline decision ABORT: the database has OpenMetadata entity tables but no migration history (SERVER_CHANGE_LOG is missing or empty). Refusing to guess its shape: restore a backup taken with its migration history, or drop-create the database (`./bootstrap/openmetadata-ops.sh drop-create`) and start over."
        );
    }
    if release.era == Era::V2Gated {
        let max = st.max();
        let too_old = max
            .as_ref()
            .is_none_or(|m| !m.at_least(MINIMUM_SUPPORTED_MIGRATION_VERSION));
        if st.has_database_change_log || too_old {
            bail!(
                "java.lang.IllegalStateException: A database must already be on {min} or later to be migrated by OpenMetadata {rel} (MINIMUM_SUPPORTED_MIGRATION_VERSION = {min}); this database is at {at}{legacy}. Please upgrade through the latest 2.0.x release first, then run this release's migrate. --force cannot bypass this check.",
                min = MINIMUM_SUPPORTED_MIGRATION_VERSION,
                rel = release.version,
                at = max
                    .map(|m| m.to_string())
                    .unwrap_or_else(|| "no version".into()),
                legacy = if st.has_database_change_log {
                    " and still has the legacy Flyway table DATABASE_CHANGE_LOG"
                } else {
                    ""
                },
            );
        }
    }
    Ok(())
}

/// `migrate` options.
#[derive(Debug, Clone, Default)]
pub struct MigrateOptions {
    /// `--force`.
    pub force: bool,
    /// `OM_SIM_FAIL_MIGRATION`: this native version's DataMigration fails.
    pub fail: Option<String>,
    /// Recorded as Flyway's `installed_by`.
    pub user: String,
}

struct Run<'a> {
    store: &'a mut Store,
    opts: &'a MigrateOptions,
    has_type: bool,
    has_status: bool,
}

fn engine_text(engine: Engine, sql: &Sql) -> &'static str {
    sql.text(engine)
}

/// `ALTER TABLE t ADD COLUMN c …` → (t, c); `CREATE INDEX i ON t …` → (t, i).
fn guard_of(sql: &str) -> Option<(bool, String, String)> {
    let w: Vec<&str> = sql.split_whitespace().collect();
    match w.as_slice() {
        ["ALTER", "TABLE", t, "ADD", "COLUMN", c, ..] => Some((true, t.to_string(), c.to_string())),
        ["CREATE", "INDEX", i, "ON", t, ..] => Some((false, t.to_string(), i.to_string())),
        _ => None,
    }
}

impl Run<'_> {
    fn engine(&self) -> Engine {
        self.store.engine()
    }

    async fn index_exists(&mut self, table: &str, index: &str) -> anyhow::Result<bool> {
        let sql = match self.engine() {
            Engine::MySql => format!(
                "SELECT COUNT(*) FROM information_schema.statistics WHERE table_schema = DATABASE() AND table_name = {} AND index_name = {}",
                self.store.lit(table),
                self.store.lit(index)
            ),
            Engine::Postgres => format!(
                "SELECT COUNT(*) FROM pg_indexes WHERE schemaname = current_schema() AND indexname = {}",
                self.store.lit(&index.to_lowercase())
            ),
        };
        Ok(self.store.count(&sql).await? > 0)
    }

    /// A SchemaChanges / PostDDLScripts statement: skipped when its MD5 is already in
    /// `SERVER_MIGRATION_SQL_LOGS` (unless `--force`), or when the column/index it adds is
    /// there already; otherwise executed and logged.
    async fn logged(&mut self, version: &str, sql: &Sql) -> anyhow::Result<()> {
        let text = engine_text(self.engine(), sql);
        let l = self.store.lit(text);
        if !self.opts.force {
            let seen = self
                .store
                .count(&format!(
                    "SELECT COUNT(*) FROM SERVER_MIGRATION_SQL_LOGS WHERE checksum = MD5({l})"
                ))
                .await?;
            if seen > 0 {
                println!("  skipped (already executed): {text}");
                return Ok(());
            }
        }
        let present = match guard_of(text) {
            Some((true, t, c)) => self.store.column_exists(&t, &c).await?,
            Some((false, t, i)) => self.index_exists(&t, &i).await?,
            None => false,
        };
        if present {
            println!("  skipped (already applied): {text}");
        } else {
            self.store.exec(text).await?;
            println!("  executed: {text}");
        }
        let upsert = match self.engine() {
            Engine::MySql => "ON DUPLICATE KEY UPDATE executedAt = CURRENT_TIMESTAMP",
            Engine::Postgres => {
                "ON CONFLICT (checksum) DO UPDATE SET executedAt = CURRENT_TIMESTAMP"
            }
        };
        self.store
            .exec(&format!(
                "INSERT INTO SERVER_MIGRATION_SQL_LOGS (version, sqlStatement, checksum, executedAt) VALUES ({}, {l}, MD5({l}), CURRENT_TIMESTAMP) {upsert}",
                self.store.lit(version)
            ))
            .await
    }

    async fn upsert_row(
        &mut self,
        version: &str,
        file: &str,
        kind: &str,
        status: &str,
        checksum_of: &str,
        metrics: &serde_json::Value,
    ) -> anyhow::Result<()> {
        let mut cols = vec![
            "version",
            "migrationFileName",
            "checksum",
            "installed_on",
            "metrics",
        ];
        let s = &*self.store;
        let mut vals = vec![
            s.lit(version),
            s.lit(file),
            format!("MD5({})", s.lit(checksum_of)),
            "CURRENT_TIMESTAMP".to_string(),
            s.lit(&metrics.to_string()),
        ];
        if self.has_type {
            cols.push("migrationType");
            vals.push(s.lit(kind));
        }
        if self.has_status {
            cols.push("status");
            vals.push(s.lit(status));
        }
        let update = match self.engine() {
            Engine::MySql => format!(
                "ON DUPLICATE KEY UPDATE checksum = VALUES(checksum), installed_on = CURRENT_TIMESTAMP, metrics = VALUES(metrics){}",
                if self.has_status {
                    ", status = VALUES(status)"
                } else {
                    ""
                }
            ),
            Engine::Postgres => format!(
                "ON CONFLICT (version) DO UPDATE SET checksum = EXCLUDED.checksum, installed_on = CURRENT_TIMESTAMP, metrics = EXCLUDED.metrics{}",
                if self.has_status {
                    ", status = EXCLUDED.status"
                } else {
                    ""
                }
            ),
        };
        let sql = format!(
            "INSERT INTO SERVER_CHANGE_LOG ({}) VALUES ({}) {update}",
            cols.join(", "),
            vals.join(", ")
        );
        self.store.exec(&sql).await
    }

    async fn set_status(&mut self, version: &str, status: &str) -> anyhow::Result<()> {
        let sql = format!(
            "UPDATE SERVER_CHANGE_LOG SET status = {} WHERE version = {}",
            self.store.lit(status),
            self.store.lit(version)
        );
        self.store.exec(&sql).await
    }

    /// A failed step: with `--force` logged and skipped, otherwise the end of the run
    /// (2.x marks the row `FAILED`; 1.x leaves no row).
    async fn step_failed(
        &mut self,
        n: &Native,
        step: &str,
        e: anyhow::Error,
    ) -> anyhow::Result<()> {
        if self.opts.force {
            println!(
                "[--force] Migration {} step {step} failed, continuing: {e:#}",
                n.version
            );
            return Ok(());
        }
        if self.has_status {
            self.set_status(n.version, "FAILED").await?;
        }
        Err(anyhow!(
            "Migration {} failed during {step}: {e:#}. Earlier steps of this migration stay applied{}.",
            n.version,
            if self.has_status {
                "; its SERVER_CHANGE_LOG row is marked FAILED — run `./bootstrap/openmetadata-ops.sh repair` before migrating again"
            } else {
                "; no SERVER_CHANGE_LOG row was recorded"
            }
        ))
    }

    async fn native(&mut self, n: &'static Native) -> anyhow::Result<()> {
        println!("Migration {}: Initialization", n.version);
        let file = n.file_name();
        let engine = self.engine();
        let all: Vec<&str> = n
            .schema
            .iter()
            .chain(n.data)
            .chain(n.post)
            .map(|s| engine_text(engine, s))
            .collect();
        let checksum_of = all.join("\n");
        if self.has_status {
            self.upsert_row(
                n.version,
                &file,
                "NATIVE",
                "STARTED",
                &checksum_of,
                &serde_json::json!({}),
            )
            .await?;
        }
        println!("Migration {}: SchemaChanges", n.version);
        for sql in n.schema {
            if let Err(e) = self.logged(n.version, sql).await {
                self.step_failed(n, "SchemaChanges", e).await?;
                break;
            }
        }
        println!("Migration {}: DataMigration", n.version);
        let mut data = Ok(());
        if self.opts.fail.as_deref() == Some(n.version) {
            data = Err(anyhow!(
                "simulated failure (OM_SIM_FAIL_MIGRATION={}): java.sql.SQLException: data migration aborted",
                n.version
            ));
        } else {
            for sql in n.data {
                if let Err(e) = self.store.exec(engine_text(engine, sql)).await {
                    data = Err(e);
                    break;
                }
            }
        }
        if let Err(e) = data {
            self.step_failed(n, "DataMigration", e).await?;
        }
        println!("Migration {}: PostDDLScripts", n.version);
        for sql in n.post {
            if let Err(e) = self.logged(n.version, sql).await {
                self.step_failed(n, "PostDDLScripts", e).await?;
                break;
            }
        }
        let metrics = serde_json::json!({
            "schemaChanges": n.schema.len(),
            "dataMigration": n.data.len(),
            "postDDLScripts": n.post.len(),
        });
        self.upsert_row(
            n.version,
            &file,
            "NATIVE",
            "COMPLETED",
            &checksum_of,
            &metrics,
        )
        .await?;
        println!("Migration {}: COMPLETED", n.version);
        Ok(())
    }

    /// Flyway's `migrate()`: scripts missing from `DATABASE_CHANGE_LOG`, each recorded.
    async fn flyway(&mut self, st: &DbState) -> anyhow::Result<()> {
        let engine = self.engine();
        self.store
            .exec(catalog::DATABASE_CHANGE_LOG.text(engine))
            .await?;
        let dcl = self.store.table_ref("DATABASE_CHANGE_LOG");
        for f in FLYWAY {
            if st.flyway.iter().any(|v| v == f.version) {
                continue;
            }
            println!(
                "Flyway: migrating schema to version {} - {}",
                f.version, f.description
            );
            for sql in f.sql {
                self.store
                    .exec(sql.text(engine))
                    .await
                    .map_err(|e| anyhow!("Flyway migration v{} failed: {e:#}", f.version))?;
            }
            let rank = self
                .store
                .count(&format!(
                    "SELECT COALESCE(MAX(installed_rank), 0) FROM {dcl}"
                ))
                .await?
                + 1;
            let text: Vec<&str> = f.sql.iter().map(|s| s.text(engine)).collect();
            let checksum = flyway_checksum(&text.join("\n"));
            let s = &*self.store;
            let sql = format!(
                "INSERT INTO {dcl} (installed_rank, version, description, type, script, checksum, installed_by, installed_on, execution_time, success) VALUES ({rank}, {}, {}, 'SQL', {}, {checksum}, {}, CURRENT_TIMESTAMP, 1, TRUE)",
                s.lit(f.version),
                s.lit(f.description),
                s.lit(&f.script()),
                s.lit(&self.opts.user)
            );
            self.store.exec(&sql).await?;
        }
        Ok(())
    }
}

/// Flyway's CRC32-style checksum (any stable 32-bit number will do here).
fn flyway_checksum(text: &str) -> i32 {
    use sha2::Digest;
    let d = sha2::Sha256::digest(text.as_bytes());
    i32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

/// `./bootstrap/openmetadata-ops.sh migrate [--force]`.
pub async fn migrate(
    store: &mut Store,
    release: &Release,
    opts: &MigrateOptions,
) -> anyhow::Result<()> {
    let engine = store.engine();
    let mut st = inspect(store).await?;
    gate(release, &st)?;
    if release.has_status() && st.baseline_started_only() {
        resume(store).await?;
        st = inspect(store).await?;
    }
    let mut run = Run {
        store,
        opts,
        has_type: false,
        has_status: false,
    };
    if st.is_empty() {
        println!(
            "Empty database: installing OpenMetadata {}",
            release.version
        );
        match release.era {
            Era::Flyway => {
                run.flyway(&st).await?;
            }
            Era::Native => {
                for sql in catalog::TRACKING {
                    run.store.exec(sql.text(engine)).await?;
                }
                run.store
                    .exec(catalog::ADD_MIGRATION_TYPE.text(engine))
                    .await?;
                run.has_type = true;
                for f in FLYWAY.iter().filter(|f| f.version != "000") {
                    for sql in f.sql {
                        run.store.exec(sql.text(engine)).await?;
                    }
                }
            }
            Era::V2 | Era::V2Gated => {
                for sql in catalog::TRACKING {
                    run.store.exec(sql.text(engine)).await?;
                }
                run.store
                    .exec(catalog::ADD_MIGRATION_TYPE.text(engine))
                    .await?;
                run.store.exec(catalog::ADD_STATUS.text(engine)).await?;
                run.has_type = true;
                run.has_status = true;
                baseline(&mut run).await?;
            }
        }
    } else {
        match release.era {
            Era::Flyway => run.flyway(&st).await?,
            Era::Native | Era::V2 | Era::V2Gated => {
                for sql in catalog::TRACKING {
                    run.store.exec(sql.text(engine)).await?;
                }
                if !run
                    .store
                    .column_exists("SERVER_CHANGE_LOG", "migrationType")
                    .await?
                {
                    run.store
                        .exec(catalog::ADD_MIGRATION_TYPE.text(engine))
                        .await?;
                }
                if release.has_status()
                    && !run
                        .store
                        .column_exists("SERVER_CHANGE_LOG", "status")
                        .await?
                {
                    run.store.exec(catalog::ADD_STATUS.text(engine)).await?;
                }
                if st.has_database_change_log {
                    import_flyway_history(run.store).await?;
                }
            }
        }
    }
    let st = inspect(run.store).await?;
    run.has_type = st.has_type;
    run.has_status = st.has_status;
    let broken = st.broken();
    if !broken.is_empty() && !opts.force {
        let list: Vec<String> = broken
            .iter()
            .map(|r| format!("{} ({})", r.version, r.status.as_deref().unwrap_or("")))
            .collect();
        bail!(
            "SERVER_CHANGE_LOG has unfinished migrations: {}. Run `./bootstrap/openmetadata-ops.sh repair` first, then migrate again.",
            list.join(", ")
        );
    }
    if opts.force && release.ver().at_least("1.11.0") && st.has_flyway_rows() {
        // PR #24985: after the Flyway history was moved into SERVER_CHANGE_LOG, --force
        // re-executed the old Flyway statements and lost roles, policies and bot relationships.
        println!("[--force] re-running legacy Flyway migrations recorded in SERVER_CHANGE_LOG");
        for f in FLYWAY.iter().filter(|f| f.version != "000") {
            for sql in f.sql {
                if let Err(e) = run.store.exec(sql.text(engine)).await {
                    println!("[--force] v{} failed, continuing: {e:#}", f.version);
                }
            }
        }
    }
    let todo: Vec<&'static Native> = if opts.force {
        release.natives().collect()
    } else {
        let max = st.max();
        release
            .natives()
            .filter(|n| {
                max.as_ref()
                    .is_none_or(|m| n.ver().cmp_num(m) == Ordering::Greater)
            })
            .collect()
    };
    if todo.is_empty() {
        println!("No Server Migration To be Run");
    }
    for n in todo {
        run.native(n).await?;
    }
    let st = inspect(run.store).await?;
    print_changelog(&st);
    Ok(())
}

/// 2.x on an empty database: install the baseline schema in one go and record
/// `2.0.0-baseline` (`migrationType='BASELINE'`).
async fn baseline(run: &mut Run<'_>) -> anyhow::Result<()> {
    let engine = run.engine();
    println!("Baseline decision RUN: installing the {BASELINE_VERSION} schema");
    let base = Ver::parse(BASELINE_VERSION).ok_or_else(|| anyhow!("bad baseline version"))?;
    let mut all: Vec<&'static str> = Vec::new();
    for f in FLYWAY.iter().filter(|f| f.version != "000") {
        all.extend(f.sql.iter().map(|s| s.text(engine)));
    }
    for n in NATIVE
        .iter()
        .filter(|n| n.ver().cmp_num(&base) != Ordering::Greater)
    {
        all.extend(
            n.schema
                .iter()
                .chain(n.data)
                .chain(n.post)
                .map(|s| s.text(engine)),
        );
    }
    let checksum_of = all.join("\n");
    let file = "bootstrap/sql/migrations/baseline/schema.sql";
    run.upsert_row(
        BASELINE_VERSION,
        file,
        "BASELINE",
        "STARTED",
        &checksum_of,
        &serde_json::json!({}),
    )
    .await?;
    let fail_at = (run.opts.fail.as_deref() == Some(BASELINE_VERSION)).then_some(all.len() / 2);
    for (i, sql) in all.iter().enumerate() {
        if fail_at == Some(i) {
            bail!(
                "the {BASELINE_VERSION} install failed after {i} of {} statements (simulated: OM_SIM_FAIL_MIGRATION={BASELINE_VERSION}); its SERVER_CHANGE_LOG row stays STARTED — run migrate again to RESUME",
                all.len()
            );
        }
        run.store.exec(sql).await?;
    }
    run.upsert_row(
        BASELINE_VERSION,
        file,
        "BASELINE",
        "COMPLETED",
        &checksum_of,
        &serde_json::json!({ "statements": all.len() }),
    )
    .await
}

/// Baseline decision `RESUME`: only a `STARTED` baseline row. Wipe the half-installed schema and
/// install again — refused when entity rows exist (they would be lost).
async fn resume(store: &mut Store) -> anyhow::Result<()> {
    let mut rows = 0;
    for t in catalog::ENTITY_TABLES {
        if store.table_exists(t).await? {
            rows += store.count(&format!("SELECT COUNT(*) FROM {t}")).await?;
        }
    }
    if rows > 0 {
        bail!(
            "Baseline decision RESUME refused: the {BASELINE_VERSION} install was interrupted (its SERVER_CHANGE_LOG row is STARTED) but the entity tables hold {rows} row(s) that a re-install would wipe. Restore a backup, or drop-create the database."
        );
    }
    println!("Baseline decision RESUME: wiping the interrupted {BASELINE_VERSION} install");
    for t in catalog::ENTITY_TABLES.iter().chain(&[
        "entity_relationship",
        "doc_store",
        "entity_extension",
        "SERVER_MIGRATION_SQL_LOGS",
        "SERVER_CHANGE_LOG",
    ]) {
        store.exec(&format!("DROP TABLE IF EXISTS {t}")).await?;
    }
    Ok(())
}

/// ≥ 1.11: copy `DATABASE_CHANGE_LOG` into `SERVER_CHANGE_LOG` as `FLYWAY` rows, then drop it
/// (`migrateFlywayToServerChangeLogs`, `dropFlywayTable`).
async fn import_flyway_history(store: &mut Store) -> anyhow::Result<()> {
    let cast = match store.engine() {
        Engine::MySql => "CAST(checksum AS CHAR)",
        Engine::Postgres => "CAST(checksum AS VARCHAR)",
    };
    let dcl = store.table_ref("DATABASE_CHANGE_LOG");
    store
        .exec(&format!(
            "INSERT INTO SERVER_CHANGE_LOG (version, migrationFileName, checksum, installed_on, migrationType) SELECT version, script, COALESCE({cast}, ''), installed_on, 'FLYWAY' FROM {dcl} WHERE success = TRUE AND version IS NOT NULL AND version NOT IN (SELECT version FROM SERVER_CHANGE_LOG)"
        ))
        .await?;
    store.exec(&format!("DROP TABLE {dcl}")).await?;
    println!("Moved the Flyway history into SERVER_CHANGE_LOG and dropped DATABASE_CHANGE_LOG");
    Ok(())
}

/// Print `SERVER_CHANGE_LOG` as `changelog` does.
pub fn print_changelog(st: &DbState) {
    println!(
        "installed_rank | version | migrationFileName | migrationType | status | installed_on"
    );
    for r in &st.rows {
        println!(
            "{} | {} | {} | {} | {} | {}",
            r.rank,
            r.version,
            r.file,
            r.migration_type.as_deref().unwrap_or("-"),
            r.status.as_deref().unwrap_or("-"),
            r.installed_on
        );
    }
}

/// `repair`: 2.x deletes `STARTED`/`FAILED` rows (keeping a `STARTED` baseline) and their SQL
/// logs; the Flyway era repairs Flyway's history (failed rows removed).
pub async fn repair(store: &mut Store) -> anyhow::Result<usize> {
    let st = inspect(store).await?;
    let mut removed = 0;
    if st.has_database_change_log {
        let dcl = store.table_ref("DATABASE_CHANGE_LOG");
        let n = store
            .count(&format!("SELECT COUNT(*) FROM {dcl} WHERE success = FALSE"))
            .await?;
        store
            .exec(&format!("DELETE FROM {dcl} WHERE success = FALSE"))
            .await?;
        removed += n as usize;
    }
    for r in st.broken() {
        if r.migration_type.as_deref() == Some("BASELINE") && r.status.as_deref() == Some("STARTED")
        {
            continue;
        }
        let v = store.lit(&r.version);
        store
            .exec(&format!(
                "DELETE FROM SERVER_MIGRATION_SQL_LOGS WHERE version = {v}"
            ))
            .await?;
        store
            .exec(&format!(
                "DELETE FROM SERVER_CHANGE_LOG WHERE version = {v}"
            ))
            .await?;
        println!(
            "Removed {} row {} and its SQL logs",
            r.status.as_deref().unwrap_or(""),
            r.version
        );
        removed += 1;
    }
    Ok(removed)
}
