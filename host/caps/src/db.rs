//! The db capability's backend: PostgreSQL through tokio-postgres, plus the host actions that
//! back up and restore the bound database (clone by template, or a `pg_dump` archive).
//!
//! The adapter never sees the URL. Reads run in a `READ ONLY` transaction as a second line of
//! defence behind [`super::sql::classify`]; every session has a statement timeout.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::Mutex;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, GenericClient, NoTls, Row, Transaction};

use std::sync::Arc;

use super::CapError;
use super::guard::{Call, Guard};
use super::limits::{MAX_RESULT_BYTES, MAX_ROWS, MAX_SQL_BYTES, MAX_STATEMENTS};
use super::mysql::MySqlBackend;
use super::operation::Operation;
use super::pg_backup::{DumpFacts, Manifest, TableFingerprint, fingerprints, seal, verify_files};
use crate::bindings::Value;
use upshift_model::grants::{Access, BindingKind};

/// Rows returned to an adapter.
#[derive(Debug, Clone, Default)]
pub struct Rows {
    /// Column names.
    pub columns: Vec<String>,
    /// Values, row by row.
    pub rows: Vec<Vec<Value>>,
}

/// One bound PostgreSQL database.
pub struct PgBackend {
    url: String,
    database: String,
    client: Mutex<Option<Client>>,
}

fn failed(context: &str, e: impl std::fmt::Display) -> CapError {
    CapError::Failed(format!("{context}: {e}"))
}

/// The message of a PostgreSQL error, with its SQLSTATE when the server sent one.
pub fn pg_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

/// Quote an identifier for PostgreSQL.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Whether `name` is a plain identifier (lowercase letters, digits, `_`; ≤ 63 bytes).
pub fn plain_ident(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z' | '_'))
        && name.len() <= 63
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

impl PgBackend {
    /// A backend for `url` (a `postgres://` URL naming a database). Connects lazily.
    pub fn new(url: &str) -> Result<PgBackend, CapError> {
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| CapError::Invalid(format!("database URL does not parse: {e}")))?;
        let database = config
            .get_dbname()
            .ok_or_else(|| CapError::Invalid("database URL names no database".into()))?
            .to_string();
        Ok(PgBackend {
            url: url.to_string(),
            database,
            client: Mutex::new(None),
        })
    }

    /// The bound database's name.
    pub fn database(&self) -> &str {
        &self.database
    }

    async fn connect_to(&self, database: &str) -> Result<Client, CapError> {
        let mut config: tokio_postgres::Config = self
            .url
            .parse()
            .map_err(|e| CapError::Invalid(format!("database URL does not parse: {e}")))?;
        config.dbname(database);
        config.application_name("upshift");
        config.connect_timeout(Duration::from_secs(10));
        let (client, connection) = config.connect(NoTls).await.map_err(|e| {
            failed(
                &format!("cannot connect to database `{database}`"),
                pg_message(&e),
            )
        })?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        client
            .batch_execute("SET statement_timeout = '120s'; SET lock_timeout = '30s'")
            .await
            .map_err(|e| failed("cannot configure the session", pg_message(&e)))?;
        Ok(client)
    }

    async fn with_client<T>(
        &self,
        f: impl AsyncFnOnce(&mut Client) -> Result<T, CapError>,
    ) -> Result<T, CapError> {
        let mut slot = self.client.lock().await;
        if slot.as_ref().is_none_or(Client::is_closed) {
            *slot = Some(self.connect_to(&self.database).await?);
        }
        match slot.as_mut() {
            Some(client) => f(client).await,
            None => Err(CapError::Failed("no database connection".into())),
        }
    }

    /// Close this backend's own session (needed before cloning or renaming the database).
    pub async fn disconnect(&self) {
        *self.client.lock().await = None;
    }

    /// Run one read statement in a read-only transaction.
    pub async fn query(&self, sql: &str, params: &[Value]) -> Result<(Rows, u64), CapError> {
        self.with_client(async |client| {
            let tx = client
                .build_transaction()
                .read_only(true)
                .start()
                .await
                .map_err(|e| failed("cannot start a read-only transaction", pg_message(&e)))?;
            let rows = rows_of(&tx, sql, params, "query failed").await;
            let _ = tx.rollback().await;
            rows
        })
        .await
    }

    /// Run one statement that returns rows *and* does work (KWDB's `EXPORT` / `IMPORT`, which
    /// answer with a job row), outside a read-only transaction.
    pub async fn query_job(&self, sql: &str, params: &[Value]) -> Result<(Rows, u64), CapError> {
        self.with_client(async |client| rows_of(client, sql, params, "statement failed").await)
            .await
    }

    /// Run one statement that changes data or schema.
    pub async fn execute(&self, sql: &str, params: &[Value]) -> Result<(u64, u64), CapError> {
        self.with_client(async |client| {
            let stmt = client
                .prepare(sql)
                .await
                .map_err(|e| failed("statement failed", pg_message(&e)))?;
            let args = coerce_params(stmt.params(), params)?;
            let refs: Vec<&(dyn ToSql + Sync)> = args.iter().map(|a| a.as_ref() as _).collect();
            let n = client
                .execute(&stmt, &refs)
                .await
                .map_err(|e| failed("statement failed", pg_message(&e)))?;
            Ok((n, 8))
        })
        .await
    }

    /// Run statements atomically.
    pub async fn transaction(
        &self,
        statements: &[(String, Vec<Value>)],
    ) -> Result<(Vec<u64>, u64), CapError> {
        self.with_client(async |client| {
            let tx = client
                .transaction()
                .await
                .map_err(|e| failed("cannot start a transaction", pg_message(&e)))?;
            let mut counts = Vec::with_capacity(statements.len());
            for (i, (sql, params)) in statements.iter().enumerate() {
                let stmt = tx
                    .prepare(sql)
                    .await
                    .map_err(|e| failed(&format!("statement {} failed", i + 1), pg_message(&e)))?;
                let args = coerce_params(stmt.params(), params)?;
                let refs: Vec<&(dyn ToSql + Sync)> = args.iter().map(|a| a.as_ref() as _).collect();
                counts.push(
                    tx.execute(&stmt, &refs).await.map_err(|e| {
                        failed(&format!("statement {} failed", i + 1), pg_message(&e))
                    })?,
                );
            }
            tx.commit()
                .await
                .map_err(|e| failed("commit failed", pg_message(&e)))?;
            let bytes = 8 * counts.len() as u64;
            Ok((counts, bytes))
        })
        .await
    }

    /// Whether a table exists on the search path.
    pub async fn table_exists(&self, table: &str) -> Result<(bool, u64), CapError> {
        let (rows, _) = self
            .query(
                "SELECT EXISTS (SELECT 1 FROM information_schema.tables \
                 WHERE table_schema = ANY (current_schemas(false)) AND table_name = $1)",
                &[Value::Text(table.to_string())],
            )
            .await?;
        let exists = matches!(
            rows.rows.first().and_then(|r| r.first()),
            Some(Value::Boolean(true))
        );
        Ok((exists, 1))
    }

    /// A session on the server's maintenance database, for CREATE/ALTER DATABASE.
    async fn admin(&self) -> Result<Client, CapError> {
        self.connect_to("postgres").await
    }

    async fn ensure_no_sessions(&self, admin: &Client, database: &str) -> Result<(), CapError> {
        // A session that was just closed (ours included) can linger for a moment while its
        // backend exits, so wait briefly before calling a session someone else's.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let rows = loop {
            let rows = admin
                .query(
                    "SELECT coalesce(application_name, ''), coalesce(client_addr::text, 'local') \
                     FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                    &[&database],
                )
                .await
                .map_err(|e| failed("cannot list sessions", pg_message(&e)))?;
            if rows.is_empty() {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                break rows;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let who: Vec<String> = rows
            .iter()
            .map(|r| {
                let app: String = r.get(0);
                let addr: String = r.get(1);
                format!(
                    "{} from {addr}",
                    if app.is_empty() {
                        "unnamed client"
                    } else {
                        &app
                    }
                )
            })
            .collect();
        Err(CapError::Failed(format!(
            "database `{database}` has {} other session(s) ({}); stop the service that uses it first",
            rows.len(),
            who.join(", ")
        )))
    }

    async fn database_exists(admin: &Client, name: &str) -> Result<bool, CapError> {
        let row = admin
            .query_one(
                "SELECT count(*) FROM pg_database WHERE datname = $1",
                &[&name],
            )
            .await
            .map_err(|e| failed("cannot look up databases", pg_message(&e)))?;
        Ok(row.get::<_, i64>(0) > 0)
    }

    /// Clone the bound database into `copy` with `CREATE DATABASE … TEMPLATE`. Returns its size.
    pub async fn clone_to(&self, copy: &str) -> Result<u64, CapError> {
        self.disconnect().await;
        let admin = self.admin().await?;
        self.ensure_no_sessions(&admin, &self.database).await?;
        if Self::database_exists(&admin, copy).await? {
            return Err(CapError::Failed(format!(
                "database `{copy}` already exists"
            )));
        }
        admin
            .batch_execute(&format!(
                "CREATE DATABASE {} TEMPLATE {}",
                quote_ident(copy),
                quote_ident(&self.database)
            ))
            .await
            .map_err(|e| {
                failed(
                    &format!("cannot clone `{}` into `{copy}`", self.database),
                    pg_message(&e),
                )
            })?;
        let row = admin
            .query_one("SELECT pg_database_size($1)", &[&copy])
            .await
            .map_err(|e| failed("cannot size the clone", pg_message(&e)))?;
        Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
    }

    /// Dump the bound database into directory `dir` with `pg_dump --format=directory --jobs N
    /// --compress 1` ([`DUMP_COMPRESSION`]; the `pg_dump` matching the server's major version),
    /// under a snapshot exported from a repeatable-read transaction that also fingerprints every
    /// table, so the manifest describes exactly the data in the dump. The directory only gets
    /// its final name when complete.
    pub async fn dump_to(
        &self,
        dir: &Path,
        product_version: &str,
    ) -> Result<(Manifest, String), CapError> {
        let bin = self.tool("pg_dump").await?;
        let partial = dir.with_extension("partial");
        let _ = tokio::fs::remove_dir_all(&partial).await;
        if let Some(parent) = partial.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| failed(&format!("cannot create {}", parent.display()), e))?;
        }
        let jobs = dump_jobs();
        let mut client = self.connect_to(&self.database).await?;
        let mut tx = snapshot_transaction(&mut client).await?;
        let snapshot: String = tx
            .query_one("SELECT pg_export_snapshot()", &[])
            .await
            .map_err(|e| failed("cannot export a snapshot", pg_message(&e)))?
            .get(0);
        let server_version: String = tx
            .query_one("SELECT version()", &[])
            .await
            .map_err(|e| failed("cannot read the server version", pg_message(&e)))?
            .get(0);
        // The fingerprints are taken in the exporting transaction while `pg_dump` reads the
        // same snapshot from its own connections: both see exactly the same data, and the
        // checksum pass costs no extra wall time where a core is free.
        let dump = tokio::process::Command::new(&bin)
            .arg("--format=directory")
            .arg(format!("--jobs={jobs}"))
            .arg(format!("--compress={DUMP_COMPRESSION}"))
            .arg(format!("--snapshot={snapshot}"))
            .arg("--no-password")
            .arg("--file")
            .arg(&partial)
            .arg("--dbname")
            .arg(&self.url)
            .kill_on_drop(true)
            .output();
        let dump = async {
            dump.await
                .map_err(|e| failed(&format!("cannot run {}", bin.display()), e))
        };
        // The first error drops the other side (a failed checksum kills `pg_dump`).
        let none_recorded = BTreeMap::new();
        let both = tokio::try_join!(fingerprints(&mut tx, &none_recorded), dump);
        let _ = tx.rollback().await;
        let (tables, out) = match both {
            Ok(both) => both,
            Err(e) => {
                let _ = tokio::fs::remove_dir_all(&partial).await;
                return Err(e);
            }
        };
        if !out.status.success() {
            let _ = tokio::fs::remove_dir_all(&partial).await;
            return Err(CapError::Failed(format!(
                "pg_dump failed ({}): {}; nothing was recorded",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        seal(
            &partial,
            dir,
            DumpFacts {
                format: "pg-directory",
                database: self.database.clone(),
                product_version: product_version.to_string(),
                server_version,
                tool: bin,
                jobs,
                tables,
            },
        )
        .await
    }

    /// Row counts and checksums of every table of database `name` on the same server, from one
    /// snapshot; tables named in `like` (a manifest's) are checksummed the way it recorded them.
    pub async fn fingerprint_database(
        &self,
        name: &str,
        like: &BTreeMap<String, TableFingerprint>,
    ) -> Result<BTreeMap<String, TableFingerprint>, CapError> {
        let mut client = self.connect_to(name).await?;
        let mut tx = snapshot_transaction(&mut client).await?;
        let found = fingerprints(&mut tx, like).await;
        let _ = tx.rollback().await;
        found
    }

    /// Drop database `name` (a scratch database of Upshift's own).
    pub async fn drop_database(&self, name: &str) -> Result<(), CapError> {
        let admin = self.admin().await?;
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {}", quote_ident(name)))
            .await
            .map_err(|e| failed(&format!("cannot drop `{name}`"), pg_message(&e)))
    }

    /// The server's `SELECT version()`.
    pub async fn server_version(&self) -> Result<String, CapError> {
        self.with_client(async |client| {
            let row = client
                .query_one("SELECT version()", &[])
                .await
                .map_err(|e| failed("cannot read the server version", pg_message(&e)))?;
            Ok(row.get(0))
        })
        .await
    }

    async fn tool(&self, name: &str) -> Result<PathBuf, CapError> {
        let major = self
            .with_client(async |client| {
                let row = client
                    .query_one("SHOW server_version_num", &[])
                    .await
                    .map_err(|e| failed("cannot read the server version", pg_message(&e)))?;
                let text: String = row.get(0);
                Ok(text.parse::<u32>().unwrap_or(0) / 10_000)
            })
            .await?;
        let candidate = PathBuf::from(format!("/usr/lib/postgresql/{major}/bin/{name}"));
        if candidate.exists() {
            return Ok(candidate);
        }
        Err(CapError::Failed(format!(
            "{name} for PostgreSQL {major} not found at {}; install the PostgreSQL {major} client tools (Debian: postgresql-client-{major})",
            candidate.display()
        )))
    }

    /// Create `target` from a backup: a clone (`from_clone` names the backup database) or a dump
    /// archive. `target` must not exist.
    pub async fn materialize(&self, target: &str, source: &BackupSource) -> Result<(), CapError> {
        let admin = self.admin().await?;
        if Self::database_exists(&admin, target).await? {
            return Err(CapError::Failed(format!(
                "database `{target}` already exists; choose another name or drop it first"
            )));
        }
        match source {
            BackupSource::Clone(db) => {
                if !Self::database_exists(&admin, db).await? {
                    return Err(CapError::Failed(format!(
                        "backup database `{db}` no longer exists"
                    )));
                }
                self.ensure_no_sessions(&admin, db).await?;
                admin
                    .batch_execute(&format!(
                        "CREATE DATABASE {} TEMPLATE {}",
                        quote_ident(target),
                        quote_ident(db)
                    ))
                    .await
                    .map_err(|e| {
                        failed(
                            &format!("cannot create `{target}` from `{db}`"),
                            pg_message(&e),
                        )
                    })?;
            }
            BackupSource::Dump {
                dir,
                manifest_sha256,
            } => {
                let manifest = Manifest::read(dir, manifest_sha256).map_err(|e| {
                    CapError::Failed(format!("{e}; the backup will not be restored"))
                })?;
                let checked = dir.clone();
                tokio::task::spawn_blocking(move || verify_files(&checked, &manifest))
                    .await
                    .map_err(|e| failed("checking the backup failed", e))?
                    .map_err(|e| {
                        CapError::Failed(format!(
                            "backup {}: {e}; it is damaged and will not be restored",
                            dir.display()
                        ))
                    })?;
                admin
                    .batch_execute(&format!("CREATE DATABASE {}", quote_ident(target)))
                    .await
                    .map_err(|e| failed(&format!("cannot create `{target}`"), pg_message(&e)))?;
                let bin = self.tool("pg_restore").await?;
                let target_url = rewrite_dbname(&self.url, target);
                let out = tokio::process::Command::new(&bin)
                    .arg("--no-owner")
                    .arg("--exit-on-error")
                    .arg("--no-password")
                    .arg(format!("--jobs={}", dump_jobs()))
                    .arg("--dbname")
                    .arg(&target_url)
                    .arg(dir)
                    .output()
                    .await
                    .map_err(|e| failed(&format!("cannot run {}", bin.display()), e))?;
                if !out.status.success() {
                    let _ = admin
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {}", quote_ident(target)))
                        .await;
                    return Err(CapError::Failed(format!(
                        "pg_restore failed ({}): {}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr).trim()
                    )));
                }
            }
        }
        Ok(())
    }

    /// Swap `replacement` in under the bound database's name; the current database is renamed
    /// to `keep_as` (kept for the operator, never dropped by Upshift).
    pub async fn swap_in(&self, replacement: &str, keep_as: &str) -> Result<(), CapError> {
        self.disconnect().await;
        let admin = self.admin().await?;
        self.ensure_no_sessions(&admin, &self.database).await?;
        admin
            .batch_execute(&format!(
                "ALTER DATABASE {} RENAME TO {}",
                quote_ident(&self.database),
                quote_ident(keep_as)
            ))
            .await
            .map_err(|e| {
                failed(
                    &format!("cannot rename `{}` to `{keep_as}`", self.database),
                    pg_message(&e),
                )
            })?;
        if let Err(e) = admin
            .batch_execute(&format!(
                "ALTER DATABASE {} RENAME TO {}",
                quote_ident(replacement),
                quote_ident(&self.database)
            ))
            .await
        {
            let undo = admin
                .batch_execute(&format!(
                    "ALTER DATABASE {} RENAME TO {}",
                    quote_ident(keep_as),
                    quote_ident(&self.database)
                ))
                .await;
            return Err(CapError::Failed(format!(
                "cannot rename `{replacement}` to `{}`: {}; the original was {}",
                self.database,
                pg_message(&e),
                if undo.is_ok() {
                    "put back"
                } else {
                    "left renamed — rename it back by hand"
                }
            )));
        }
        Ok(())
    }

    /// In database `target`, rewrite `column` of `table` from the bound database's name to
    /// `target` (Bytebase's `migration_history.namespace`). Returns rows changed; 0 when the
    /// table or column does not exist.
    pub async fn rewrite_namespace(
        &self,
        target: &str,
        table: &str,
        column: &str,
    ) -> Result<u64, CapError> {
        if !plain_ident(table) || !plain_ident(column) {
            return Err(CapError::Invalid(format!(
                "namespace column `{table}.{column}` is not a plain identifier"
            )));
        }
        let client = self.connect_to(target).await?;
        let present = client
            .query_one(
                "SELECT count(*) FROM information_schema.columns \
                 WHERE table_schema = ANY (current_schemas(false)) AND table_name = $1 AND column_name = $2",
                &[&table, &column],
            )
            .await
            .map_err(|e| failed("cannot look up the namespace column", pg_message(&e)))?;
        if present.get::<_, i64>(0) == 0 {
            return Ok(0);
        }
        client
            .execute(
                &format!(
                    "UPDATE {} SET {} = $1 WHERE {} = $2",
                    quote_ident(table),
                    quote_ident(column),
                    quote_ident(column)
                ),
                &[&target, &self.database],
            )
            .await
            .map_err(|e| failed("cannot rewrite the namespace", pg_message(&e)))
    }
}

/// The database engine behind a binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// PostgreSQL.
    Postgres,
    /// MySQL or MariaDB.
    MySql,
    /// KWDB (KaiwuDB): the PostgreSQL wire protocol with KWDB's own `EXPORT` / `IMPORT`.
    Kwdb,
}

/// One bound database, by engine.
pub enum DbBackend {
    /// PostgreSQL.
    Postgres(PgBackend),
    /// MySQL or MariaDB.
    MySql(MySqlBackend),
    /// KWDB, spoken to over the PostgreSQL wire protocol.
    Kwdb(PgBackend),
}

/// Why a host backup action cannot run on KWDB.
fn kwdb_no_host_backup(what: &str) -> CapError {
    CapError::Failed(format!(
        "{what} is not available on KWDB (it has no pg_dump or template clones); KWDB is backed up with EXPORT by the adapter, and the export directory is snapshotted"
    ))
}

impl DbBackend {
    /// A backend for `url`: `postgres://`, `mysql://` or `kwdb://` (KWDB over the PostgreSQL
    /// wire protocol).
    pub fn new(url: &str) -> Result<DbBackend, CapError> {
        if url.starts_with("mysql://") {
            Ok(DbBackend::MySql(MySqlBackend::new(url)?))
        } else if let Some(rest) = url.strip_prefix("kwdb://") {
            Ok(DbBackend::Kwdb(PgBackend::new(&format!(
                "postgresql://{rest}"
            ))?))
        } else {
            Ok(DbBackend::Postgres(PgBackend::new(url)?))
        }
    }

    /// The engine, for SQL classification.
    pub fn engine(&self) -> Engine {
        match self {
            DbBackend::Postgres(_) => Engine::Postgres,
            DbBackend::MySql(_) => Engine::MySql,
            DbBackend::Kwdb(_) => Engine::Kwdb,
        }
    }

    /// The bound database's name.
    pub fn database(&self) -> &str {
        match self {
            DbBackend::Postgres(b) | DbBackend::Kwdb(b) => b.database(),
            DbBackend::MySql(b) => b.database(),
        }
    }

    /// Run one read statement in a read-only transaction.
    pub async fn query(&self, sql: &str, params: &[Value]) -> Result<(Rows, u64), CapError> {
        match self {
            DbBackend::Postgres(b) | DbBackend::Kwdb(b) => b.query(sql, params).await,
            DbBackend::MySql(b) => b.query(sql, params).await,
        }
    }

    /// Run a KWDB `EXPORT` / `IMPORT`, which answers with a job row (KWDB only).
    pub async fn query_job(&self, sql: &str, params: &[Value]) -> Result<(Rows, u64), CapError> {
        match self {
            DbBackend::Kwdb(b) => b.query_job(sql, params).await,
            _ => Err(CapError::Invalid(
                "only KWDB bindings run EXPORT / IMPORT statements".into(),
            )),
        }
    }

    /// Run one statement that changes data or schema.
    pub async fn execute(&self, sql: &str, params: &[Value]) -> Result<(u64, u64), CapError> {
        match self {
            DbBackend::Postgres(b) | DbBackend::Kwdb(b) => b.execute(sql, params).await,
            DbBackend::MySql(b) => b.execute(sql, params).await,
        }
    }

    /// Run statements atomically.
    pub async fn transaction(
        &self,
        statements: &[(String, Vec<Value>)],
    ) -> Result<(Vec<u64>, u64), CapError> {
        match self {
            DbBackend::Postgres(b) | DbBackend::Kwdb(b) => b.transaction(statements).await,
            DbBackend::MySql(b) => b.transaction(statements).await,
        }
    }

    /// Whether a table exists.
    pub async fn table_exists(&self, table: &str) -> Result<(bool, u64), CapError> {
        match self {
            DbBackend::Postgres(b) | DbBackend::Kwdb(b) => b.table_exists(table).await,
            DbBackend::MySql(b) => b.table_exists(table).await,
        }
    }

    /// Clone by template (PostgreSQL only).
    pub async fn clone_to(&self, copy: &str) -> Result<u64, CapError> {
        match self {
            DbBackend::Postgres(b) => b.clone_to(copy).await,
            DbBackend::MySql(_) => Err(CapError::Failed(
                "template clones are PostgreSQL-only; on MySQL/MariaDB back up with method `dump`"
                    .into(),
            )),
            DbBackend::Kwdb(_) => Err(kwdb_no_host_backup("a template clone")),
        }
    }

    /// Dump into `dir` with a manifest; returns it and its sha256.
    pub async fn dump_to(
        &self,
        dir: &Path,
        product_version: &str,
    ) -> Result<(Manifest, String), CapError> {
        match self {
            DbBackend::Postgres(b) => b.dump_to(dir, product_version).await,
            DbBackend::MySql(b) => b.dump_to(dir, product_version).await,
            DbBackend::Kwdb(_) => Err(kwdb_no_host_backup("a dump")),
        }
    }

    /// Create `target` from a backup.
    pub async fn materialize(&self, target: &str, source: &BackupSource) -> Result<(), CapError> {
        match (self, source) {
            (DbBackend::Kwdb(_), _) => Err(kwdb_no_host_backup("a database restore")),
            (DbBackend::Postgres(b), _) => b.materialize(target, source).await,
            (
                DbBackend::MySql(b),
                BackupSource::Dump {
                    dir,
                    manifest_sha256,
                },
            ) => b.materialize(target, dir, manifest_sha256).await,
            (DbBackend::MySql(_), BackupSource::Clone(_)) => Err(CapError::Failed(
                "clone backups cannot be restored into MySQL/MariaDB".into(),
            )),
        }
    }

    /// Swap `replacement` in under the bound name, keeping the current data as `keep_as`.
    pub async fn swap_in(&self, replacement: &str, keep_as: &str) -> Result<(), CapError> {
        match self {
            DbBackend::Postgres(b) => b.swap_in(replacement, keep_as).await,
            DbBackend::Kwdb(_) => Err(kwdb_no_host_backup("`swap_in`")),
            DbBackend::MySql(b) => b.swap_in(replacement, keep_as).await,
        }
    }

    /// Rewrite a namespace column in `target`.
    pub async fn rewrite_namespace(
        &self,
        target: &str,
        table: &str,
        column: &str,
    ) -> Result<u64, CapError> {
        if !plain_ident(table) || !plain_ident(column) {
            return Err(CapError::Invalid(format!(
                "namespace column `{table}.{column}` is not a plain identifier"
            )));
        }
        match self {
            DbBackend::Postgres(b) => b.rewrite_namespace(target, table, column).await,
            DbBackend::Kwdb(_) => Err(kwdb_no_host_backup("`rewrite_namespace`")),
            DbBackend::MySql(b) => b.rewrite_namespace(target, table, column).await,
        }
    }

    /// Row counts and checksums of database `name`'s tables, taken as this version takes them.
    pub async fn fingerprint_database(
        &self,
        name: &str,
    ) -> Result<BTreeMap<String, TableFingerprint>, CapError> {
        self.fingerprint_like(name, &BTreeMap::new()).await
    }

    /// Row counts and checksums of database `name`'s tables, taken the way `expected` (a
    /// manifest's tables, perhaps from an older version) was taken, so the two compare.
    pub async fn fingerprint_like(
        &self,
        name: &str,
        expected: &BTreeMap<String, TableFingerprint>,
    ) -> Result<BTreeMap<String, TableFingerprint>, CapError> {
        match self {
            DbBackend::Postgres(b) => b.fingerprint_database(name, expected).await,
            DbBackend::Kwdb(_) => Err(kwdb_no_host_backup("`fingerprint_database`")),
            DbBackend::MySql(b) => b.fingerprint_database(name).await,
        }
    }

    /// Drop a scratch database.
    pub async fn drop_database(&self, name: &str) -> Result<(), CapError> {
        match self {
            DbBackend::Postgres(b) => b.drop_database(name).await,
            DbBackend::Kwdb(_) => Err(kwdb_no_host_backup("`drop_database`")),
            DbBackend::MySql(b) => b.drop_database(name).await,
        }
    }

    /// The server's version string.
    pub async fn server_version(&self) -> Result<String, CapError> {
        match self {
            DbBackend::Postgres(b) | DbBackend::Kwdb(b) => b.server_version().await,
            DbBackend::MySql(b) => b.server_version().await,
        }
    }
}

/// Prepare `sql`, bind `params` to its parameter types, and return its rows.
/// The db capability: the bound databases, reached only through the guard.
pub struct Db {
    guard: Arc<Guard>,
    backends: BTreeMap<String, DbBackend>,
}

impl Db {
    pub(crate) fn new(guard: Arc<Guard>) -> Db {
        Db {
            guard,
            backends: BTreeMap::new(),
        }
    }

    pub(crate) fn bind(&mut self, name: &str, backend: DbBackend) {
        self.backends.insert(name.to_string(), backend);
    }

    fn backend(&self, binding: &str) -> Result<&DbBackend, CapError> {
        crate::backend(&self.backends, "db", binding)
    }

    /// The access one SQL statement needs; refusals are audited as denials.
    fn sql_access(
        &self,
        binding: &str,
        operation: Operation,
        sql_text: &str,
    ) -> Result<Access, CapError> {
        if sql_text.len() > MAX_SQL_BYTES {
            let reason = format!(
                "SQL text of {} bytes exceeds the limit of {MAX_SQL_BYTES}",
                sql_text.len()
            );
            return Err(self.guard.deny(binding, "db", operation, reason));
        }
        let engine = self
            .backends
            .get(binding)
            .map_or(Engine::Postgres, DbBackend::engine);
        crate::sql::classify_for(engine, sql_text)
            .map_err(|e| self.guard.deny(binding, "db", operation, e.to_string()))
    }

    fn call<'a>(
        binding: &'a str,
        needs: &'a [Access],
        operation: Operation,
        detail: String,
    ) -> Call<'a> {
        Call {
            kind: BindingKind::Db,
            binding,
            needs,
            operation,
            detail: Some(detail),
        }
    }

    /// `db.query`: one read (or a KWDB `EXPORT` / `IMPORT`, which answer with a job row).
    pub async fn query(
        &self,
        binding: &str,
        sql_text: &str,
        params: &[Value],
    ) -> Result<Rows, CapError> {
        let access = self.sql_access(binding, Operation::Query, sql_text)?;
        let job = matches!(access, Access::Backup | Access::Restore);
        if access != Access::Read && !job {
            let reason =
                format!("`query` runs reads only; this statement needs `{access}`, use `execute`");
            return Err(
                match self.guard.deny(binding, "db", Operation::Query, reason) {
                    CapError::Denied(reason) => CapError::Invalid(reason),
                    audit_failed => audit_failed,
                },
            );
        }
        let needs = [access];
        let call = Self::call(binding, &needs, Operation::Query, access.name().into());
        self.guard
            .run(call, async || {
                let backend = self.backend(binding)?;
                if job {
                    backend.query_job(sql_text, params).await
                } else {
                    backend.query(sql_text, params).await
                }
            })
            .await
    }

    /// `db.execute`: one statement; returns the rows affected.
    pub async fn execute(
        &self,
        binding: &str,
        sql_text: &str,
        params: &[Value],
    ) -> Result<u64, CapError> {
        let access = self.sql_access(binding, Operation::Execute, sql_text)?;
        let needs = [access];
        let call = Self::call(binding, &needs, Operation::Execute, access.name().into());
        self.guard
            .run(call, async || {
                let backend = self.backend(binding)?;
                if access == Access::Read {
                    let (rows, bytes) = backend.query(sql_text, params).await?;
                    Ok((rows.rows.len() as u64, bytes))
                } else {
                    backend.execute(sql_text, params).await
                }
            })
            .await
    }

    /// `db.transaction`: statements run atomically; every access they need must be granted.
    pub async fn transaction(
        &self,
        binding: &str,
        statements: &[(String, Vec<Value>)],
    ) -> Result<Vec<u64>, CapError> {
        if statements.len() > MAX_STATEMENTS {
            return Err(CapError::Invalid(format!(
                "{} statements exceed the limit of {MAX_STATEMENTS} per transaction",
                statements.len()
            )));
        }
        let mut needed: Vec<Access> = Vec::new();
        for (sql_text, _) in statements {
            let a = self.sql_access(binding, Operation::Transaction, sql_text)?;
            if !needed.contains(&a) {
                needed.push(a);
            }
        }
        let detail = needed
            .iter()
            .map(|a| a.name())
            .collect::<Vec<_>>()
            .join("+");
        let call = Self::call(binding, &needed, Operation::Transaction, detail);
        self.guard
            .run(call, async || {
                self.backend(binding)?.transaction(statements).await
            })
            .await
    }

    /// `db.table-exists`.
    pub async fn table_exists(&self, binding: &str, table: &str) -> Result<bool, CapError> {
        let call = Self::call(
            binding,
            &[Access::Read],
            Operation::TableExists,
            table.to_string(),
        );
        self.guard
            .run(call, async || {
                self.backend(binding)?.table_exists(table).await
            })
            .await
    }

    /// Host: back up the bound database with `f` (needs `backup`).
    pub async fn backup<T>(
        &self,
        binding: &str,
        detail: &str,
        f: impl AsyncFnOnce(&DbBackend) -> Result<T, CapError>,
    ) -> Result<T, CapError> {
        self.host(binding, Operation::Backup, detail, f).await
    }

    /// Host: restore into the bound database's server with `f` (needs `restore`).
    pub async fn restore<T>(
        &self,
        binding: &str,
        detail: &str,
        f: impl AsyncFnOnce(&DbBackend) -> Result<T, CapError>,
    ) -> Result<T, CapError> {
        self.host(binding, Operation::Restore, detail, f).await
    }

    async fn host<T>(
        &self,
        binding: &str,
        operation: Operation,
        detail: &str,
        f: impl AsyncFnOnce(&DbBackend) -> Result<T, CapError>,
    ) -> Result<T, CapError> {
        self.guard
            .host(BindingKind::Db, binding, operation, detail, async || {
                f(self.backend(binding)?).await
            })
            .await
    }
}

async fn rows_of(
    client: &impl GenericClient,
    sql: &str,
    params: &[Value],
    context: &str,
) -> Result<(Rows, u64), CapError> {
    let stmt = client
        .prepare(sql)
        .await
        .map_err(|e| failed(context, pg_message(&e)))?;
    let args = coerce_params(stmt.params(), params)?;
    let refs: Vec<&(dyn ToSql + Sync)> = args.iter().map(|a| a.as_ref() as _).collect();
    let rows = client
        .query(&stmt, &refs)
        .await
        .map_err(|e| failed(context, pg_message(&e)))?;
    let columns = stmt
        .columns()
        .iter()
        .map(|c| c.name().to_string())
        .collect();
    convert_rows(columns, &rows)
}

/// Where a restore takes its data from.
#[derive(Debug, Clone)]
pub enum BackupSource {
    /// A database cloned by template.
    Clone(String),
    /// A `pg_dump` directory with its manifest's recorded sha256.
    Dump {
        /// The dump directory.
        dir: PathBuf,
        /// sha256 of its manifest, as catalogued.
        manifest_sha256: String,
    },
}

/// A read-only repeatable-read transaction on `client`: one snapshot for everything read in it.
async fn snapshot_transaction(client: &mut Client) -> Result<Transaction<'_>, CapError> {
    client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(|e| failed("cannot start the snapshot transaction", pg_message(&e)))
}

/// gzip level of `pg_dump`'s files. Level 1 halves the dump's CPU time against the default 6
/// for about 7% more bytes (measured in `docs/BENCHMARKS.md`): a backup taken before an upgrade
/// is on the clock of the maintenance window.
pub const DUMP_COMPRESSION: u32 = 1;

/// Parallel jobs for `pg_dump` / `pg_restore`: the cores, at most 4.
pub fn dump_jobs() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get().min(4) as u32)
        .unwrap_or(2)
}

/// `url` with its database name replaced.
pub fn rewrite_dbname(url: &str, database: &str) -> String {
    let (without_query, query) = match url.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (url, None),
    };
    let base = match without_query.rfind('/') {
        Some(i) if i > without_query.find("://").map_or(0, |p| p + 2) => &without_query[..i],
        _ => without_query,
    };
    match query {
        Some(q) => format!("{base}/{database}?{q}"),
        None => format!("{base}/{database}"),
    }
}

type Param = Box<dyn ToSql + Sync + Send>;

fn coerce_params(types: &[Type], values: &[Value]) -> Result<Vec<Param>, CapError> {
    if types.len() != values.len() {
        return Err(CapError::Invalid(format!(
            "the statement takes {} parameter(s) but {} were given",
            types.len(),
            values.len()
        )));
    }
    types
        .iter()
        .zip(values)
        .enumerate()
        .map(|(i, (ty, v))| coerce(i + 1, ty, v))
        .collect()
}

fn coerce(position: usize, ty: &Type, value: &Value) -> Result<Param, CapError> {
    let mismatch = || {
        CapError::Invalid(format!(
            "parameter ${position} has type {ty} and cannot take {value:?}; cast it in SQL (e.g. ${position}::text)"
        ))
    };
    Ok(match (value, ty) {
        (Value::Null, _) => Box::new(Option::<String>::None),
        (Value::Boolean(b), &Type::BOOL) => Box::new(*b),
        (Value::Int(i), &Type::INT2) => Box::new(i16::try_from(*i).map_err(|_| mismatch())?),
        (Value::Int(i), &Type::INT4) => Box::new(i32::try_from(*i).map_err(|_| mismatch())?),
        (Value::Int(i), &Type::INT8) => Box::new(*i),
        (Value::Int(i), &Type::OID) => Box::new(u32::try_from(*i).map_err(|_| mismatch())?),
        (Value::Int(i), &Type::FLOAT8) => Box::new(*i as f64),
        (Value::Float(f), &Type::FLOAT8) => Box::new(*f),
        (Value::Float(f), &Type::FLOAT4) => Box::new(*f as f32),
        (
            Value::Text(s),
            &Type::TEXT | &Type::VARCHAR | &Type::NAME | &Type::BPCHAR | &Type::UNKNOWN,
        ) => Box::new(s.clone()),
        (Value::Text(s), &Type::JSON | &Type::JSONB) => {
            Box::new(serde_json::from_str::<serde_json::Value>(s).map_err(|_| mismatch())?)
        }
        (Value::Bytes(b), &Type::BYTEA) => Box::new(b.clone()),
        _ => return Err(mismatch()),
    })
}

fn convert_rows(columns: Vec<String>, rows: &[Row]) -> Result<(Rows, u64), CapError> {
    if rows.len() > MAX_ROWS {
        return Err(CapError::Invalid(format!(
            "the query returned {} rows, more than the limit of {MAX_ROWS}; add a LIMIT",
            rows.len()
        )));
    }
    let mut bytes = 0usize;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let mut values = Vec::with_capacity(row.len());
        for (i, col) in row.columns().iter().enumerate() {
            let v = column_value(row, i, col.type_(), col.name())?;
            bytes += match &v {
                Value::Text(s) => s.len(),
                Value::Bytes(b) => b.len(),
                _ => 8,
            };
            values.push(v);
        }
        if bytes > MAX_RESULT_BYTES {
            return Err(CapError::Invalid(format!(
                "the query result exceeds {MAX_RESULT_BYTES} bytes; select fewer columns or rows"
            )));
        }
        out.push(values);
    }
    Ok((Rows { columns, rows: out }, bytes as u64))
}

fn column_value(row: &Row, i: usize, ty: &Type, name: &str) -> Result<Value, CapError> {
    let bad = |e: tokio_postgres::Error| CapError::Failed(format!("column `{name}`: {e}"));
    let v = match *ty {
        Type::BOOL => row
            .try_get::<_, Option<bool>>(i)
            .map_err(bad)?
            .map(Value::Boolean),
        Type::INT2 => row
            .try_get::<_, Option<i16>>(i)
            .map_err(bad)?
            .map(|v| Value::Int(v.into())),
        Type::INT4 => row
            .try_get::<_, Option<i32>>(i)
            .map_err(bad)?
            .map(|v| Value::Int(v.into())),
        Type::INT8 => row
            .try_get::<_, Option<i64>>(i)
            .map_err(bad)?
            .map(Value::Int),
        Type::OID => row
            .try_get::<_, Option<u32>>(i)
            .map_err(bad)?
            .map(|v| Value::Int(v.into())),
        Type::FLOAT4 => row
            .try_get::<_, Option<f32>>(i)
            .map_err(bad)?
            .map(|v| Value::Float(v.into())),
        Type::FLOAT8 => row
            .try_get::<_, Option<f64>>(i)
            .map_err(bad)?
            .map(Value::Float),
        Type::TEXT | Type::VARCHAR | Type::NAME | Type::BPCHAR => row
            .try_get::<_, Option<String>>(i)
            .map_err(bad)?
            .map(Value::Text),
        Type::JSON | Type::JSONB => row
            .try_get::<_, Option<serde_json::Value>>(i)
            .map_err(bad)?
            .map(|v| Value::Text(v.to_string())),
        Type::BYTEA => row
            .try_get::<_, Option<Vec<u8>>>(i)
            .map_err(bad)?
            .map(Value::Bytes),
        Type::TIMESTAMPTZ => row
            .try_get::<_, Option<chrono::DateTime<chrono::Utc>>>(i)
            .map_err(bad)?
            .map(|v| Value::Text(v.to_rfc3339())),
        Type::TIMESTAMP => row
            .try_get::<_, Option<chrono::NaiveDateTime>>(i)
            .map_err(bad)?
            .map(|v| Value::Text(v.to_string())),
        _ => {
            return Err(CapError::Invalid(format!(
                "column `{name}` has type {ty}, which the db capability does not convert; cast it in SQL (e.g. {name}::text)"
            )));
        }
    };
    Ok(v.unwrap_or(Value::Null))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_database_names_in_urls() {
        assert_eq!(
            rewrite_dbname("postgres://u@h:5/meta", "meta2"),
            "postgres://u@h:5/meta2"
        );
        assert_eq!(
            rewrite_dbname("postgres://u:p@h:5/meta?sslmode=disable", "x"),
            "postgres://u:p@h:5/x?sslmode=disable"
        );
        assert!(plain_ident("migration_history"));
        assert!(!plain_ident("a; drop"));
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
    }
}
