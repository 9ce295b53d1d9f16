//! The db capability: [`Db`] owns the bound databases and reaches them only through the guard.
//! [`DbBackend`] dispatches to one engine per file: PostgreSQL ([`pg`]), MySQL / MariaDB
//! ([`mysql`]) and KWDB (PostgreSQL's wire protocol plus the statements in [`kwdb`]);
//! [`sql`] classifies statements by the access they need and checks the functions they name;
//! [`functions`] refuses, on read grants, functions the server marks volatile.

pub mod functions;
pub mod kwdb;
pub mod mysql;
pub mod mysql_sql;
pub mod pg;
pub mod sql;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::CapError;
use crate::audit::SqlAudit;
use crate::backup::manifest::{BackupCheckError, Manifest, TableFingerprint, verify_files};
use crate::bindings::Value;
use crate::guard::{Bound, Guard};
use crate::limits::{MAX_SQL_BYTES, MAX_STATEMENTS};
use crate::operation::Operation;
use upshift_model::grants::{Access, BindingKind};

pub use mysql::MySqlBackend;
pub use pg::{
    DUMP_COMPRESSION, Flavour, PgBackend, RoleFacts, RolePolicy, dump_jobs, plain_ident,
    rewrite_dbname,
};

/// Rows returned to an adapter.
#[derive(Debug, Clone, Default)]
pub struct Rows {
    /// Column names.
    pub columns: Vec<String>,
    /// Values, row by row.
    pub rows: Vec<Vec<Value>>,
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

/// A session on a bound database, as its server lists it (the host's preflight).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbSession {
    /// The server's id for it (PostgreSQL backend pid, MySQL connection id).
    pub pid: i64,
    /// The role or account it connected as.
    pub user: String,
    /// Its `application_name` (empty when unset; MySQL has none).
    pub application: String,
    /// Its client's TCP address and port (`None`: a local socket, or not shown to this role).
    pub client: Option<(std::net::IpAddr, u16)>,
    /// How the server names the client when that is not an address (MySQL's `HOST`, e.g.
    /// `localhost` for a local socket); empty otherwise.
    pub origin: String,
}

impl DbSession {
    /// `pid 4242, user bb, application_name "psql", client 127.0.0.1:50112`.
    pub fn describe(&self) -> String {
        format!(
            "pid {}, user {}, application_name {:?}, client {}",
            self.pid,
            self.user,
            self.application,
            match self.client {
                Some((ip, port)) => std::net::SocketAddr::new(ip, port).to_string(),
                None if !self.origin.is_empty() => self.origin.clone(),
                None => "local socket (or not shown)".into(),
            }
        )
    }

    /// One of Upshift's own sessions (every connection Upshift opens names itself `upshift`).
    pub fn is_upshift(&self) -> bool {
        self.application == "upshift"
    }
}

/// The sizes a backup of a bound database is estimated from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SizeEstimate {
    /// The whole database on the server (what a template clone copies).
    pub database_bytes: u64,
    /// Its tables' data without indexes (what a dump writes, before compression).
    pub data_bytes: u64,
    /// The server's data directory when this role may read it and the server is on this
    /// machine (where a clone is written).
    pub server_dir: Option<PathBuf>,
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
        DbBackend::bound(url, None)
    }

    /// The backend of a fleet binding: the URL's role (PostgreSQL, see [`RolePolicy::judge`])
    /// or account (MySQL / MariaDB, see [`RolePolicy::judge_mysql`]) is checked against
    /// `policy` before the first statement.
    pub fn bound(url: &str, policy: Option<RolePolicy>) -> Result<DbBackend, CapError> {
        if url.starts_with("mysql://") {
            Ok(DbBackend::MySql(MySqlBackend::bound(url, policy)?))
        } else if let Some(rest) = url.strip_prefix("kwdb://") {
            Ok(DbBackend::Kwdb(PgBackend::bound(
                &format!("postgresql://{rest}"),
                Flavour::Kwdb,
                policy,
            )?))
        } else {
            Ok(DbBackend::Postgres(PgBackend::bound(
                url,
                Flavour::Postgres,
                policy,
            )?))
        }
    }

    /// Check the binding's role (PostgreSQL) or account's grants (MySQL / MariaDB): the
    /// notice for an accepted privileged one, or the denial of one the operator did not accept.
    pub async fn check_role(&self) -> Result<Option<String>, CapError> {
        match self {
            DbBackend::Postgres(b) | DbBackend::Kwdb(b) => b.check_role().await,
            DbBackend::MySql(b) => b.check_role().await,
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

    /// Run one read statement in a read-only transaction, refused if any of `functions` is
    /// volatile (PostgreSQL and KWDB; MySQL has no such marking).
    pub async fn query(
        &self,
        sql: &str,
        params: &[Value],
        functions: &[sql::FunctionRef],
    ) -> Result<(Rows, u64), CapError> {
        match self {
            DbBackend::Postgres(b) | DbBackend::Kwdb(b) => b.query(sql, params, functions).await,
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

    /// Run statements atomically; with `read_only` the server itself refuses any write, and the
    /// call is refused first if any of `functions` is volatile (PostgreSQL and KWDB).
    pub async fn transaction(
        &self,
        statements: &[(String, Vec<Value>)],
        read_only: bool,
        functions: &[sql::FunctionRef],
    ) -> Result<(Vec<u64>, u64), CapError> {
        match self {
            DbBackend::Postgres(b) | DbBackend::Kwdb(b) => {
                b.transaction(statements, read_only, functions).await
            }
            DbBackend::MySql(b) => b.transaction(statements, read_only).await,
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

    /// Dump into `dir` with a manifest; returns it and its sha256. A dump that fails leaves
    /// nothing behind (neither `dir` nor its `.partial`).
    pub async fn dump_to(
        &self,
        dir: &Path,
        product_version: &str,
    ) -> Result<(Manifest, String), CapError> {
        let dumped = match self {
            DbBackend::Postgres(b) => b.dump_to(dir, product_version).await,
            DbBackend::MySql(b) => b.dump_to(dir, product_version).await,
            DbBackend::Kwdb(_) => Err(kwdb_no_host_backup("a dump")),
        };
        if dumped.is_err() {
            let _ = tokio::fs::remove_dir_all(dir.with_extension("partial")).await;
        }
        dumped
    }

    /// The size of database `name` on the bound server, or `None` when there is no such
    /// database.
    pub async fn database_size(&self, name: &str) -> Result<Option<u64>, CapError> {
        match self {
            DbBackend::Postgres(b) => b.database_size(name).await,
            DbBackend::Kwdb(_) => Err(kwdb_no_host_backup("`database_size`")),
            DbBackend::MySql(b) => b.database_size(name).await,
        }
    }

    /// Create `target` from a backup: one flow for every engine (the engine's part is its
    /// [`RestoreEngine`]).
    pub async fn materialize(&self, target: &str, source: &BackupSource) -> Result<(), CapError> {
        match self {
            DbBackend::Kwdb(_) => Err(kwdb_no_host_backup("a database restore")),
            DbBackend::Postgres(b) => materialize(b, target, source).await,
            DbBackend::MySql(b) => materialize(b, target, source).await,
        }
    }

    /// Whether database `name` exists on the bound server.
    pub async fn database_exists(&self, name: &str) -> Result<bool, CapError> {
        match self {
            DbBackend::Kwdb(_) => Err(kwdb_no_host_backup("`database_exists`")),
            DbBackend::Postgres(b) => RestoreEngine::database_exists(b, name).await,
            DbBackend::MySql(b) => RestoreEngine::database_exists(b, name).await,
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

    /// Rewrite a namespace column in `target`; the names are checked here for every engine.
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

    /// The other sessions on the bound database (`None`: the engine cannot list them).
    pub async fn sessions(&self) -> Result<Option<Vec<DbSession>>, CapError> {
        match self {
            DbBackend::Postgres(b) => b.sessions().await.map(Some),
            DbBackend::MySql(b) => b.sessions().await.map(Some),
            DbBackend::Kwdb(_) => Ok(None),
        }
    }

    /// The sizes a backup is estimated from (`None`: the engine cannot tell).
    pub async fn size_estimate(&self) -> Result<Option<SizeEstimate>, CapError> {
        match self {
            DbBackend::Postgres(b) => b.size_estimate().await.map(Some),
            DbBackend::MySql(b) => b.size_estimate().await.map(Some),
            DbBackend::Kwdb(_) => Ok(None),
        }
    }
}

/// What one engine does for a restore; the flow around it is [`materialize`], shared.
pub(crate) trait RestoreEngine {
    /// Whether database `name` exists.
    async fn database_exists(&self, name: &str) -> Result<bool, CapError>;
    /// Create `target` as a copy of the clone backup `db`.
    async fn create_from_clone(&self, target: &str, db: &str) -> Result<(), CapError>;
    /// Create the empty database `target`.
    async fn create_database(&self, target: &str) -> Result<(), CapError>;
    /// Load the (checked) dump in `dir` into `target`.
    async fn load_dump(&self, target: &str, dir: &Path) -> Result<(), CapError>;
    /// Drop database `name`.
    async fn drop_database(&self, name: &str) -> Result<(), CapError>;
}

/// Create `target` from a backup: refused if it exists; a dump is checked against its manifest
/// (every file's sha256) before anything is created, and a failed load drops what it created.
async fn materialize(
    engine: &impl RestoreEngine,
    target: &str,
    source: &BackupSource,
) -> Result<(), CapError> {
    if engine.database_exists(target).await? {
        return Err(CapError::Failed(format!(
            "database `{target}` already exists; choose another name or drop it first"
        )));
    }
    match source {
        BackupSource::Clone(db) => engine.create_from_clone(target, db).await,
        BackupSource::Dump {
            dir,
            manifest_sha256,
        } => {
            check_dump(dir, manifest_sha256).await?;
            engine.create_database(target).await?;
            if let Err(e) = engine.load_dump(target, dir).await {
                let _ = engine.drop_database(target).await;
                return Err(e);
            }
            Ok(())
        }
    }
}

/// A restore tool's outcome: `what` with its exit status and stderr when it failed.
fn tool_outcome(what: &str, out: &std::process::Output) -> Result<(), CapError> {
    if out.status.success() {
        return Ok(());
    }
    Err(CapError::Failed(format!(
        "{what} ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}

/// Check a dump directory against its manifest before it is restored.
async fn check_dump(dir: &Path, manifest_sha256: &str) -> Result<(), CapError> {
    let manifest = Manifest::read(dir, manifest_sha256)
        .map_err(|e| CapError::Failed(format!("{e}; the backup will not be restored")))?;
    let checked = dir.to_path_buf();
    tokio::task::spawn_blocking(move || verify_files(&checked, &manifest))
        .await
        .map_err(|e| CapError::Failed(format!("checking the backup failed: {e}")))?
        .map_err(|e| {
            CapError::Failed(match e {
                BackupCheckError::Damaged(_) => format!(
                    "backup {}: {e}; it is damaged and will not be restored",
                    dir.display()
                ),
                BackupCheckError::Unreadable { .. } => format!(
                    "backup {}: {e}; it was not restored (make the path readable and run the command again)",
                    dir.display()
                ),
            })
        })
}

/// The db capability: the bound databases, reached only through the guard.
pub struct Db {
    bound: Bound<DbBackend>,
}

impl Db {
    pub(crate) fn new(guard: Arc<Guard>) -> Db {
        Db {
            bound: Bound::new(guard, BindingKind::Db),
        }
    }

    pub(crate) fn bind(&mut self, name: &str, backend: DbBackend) {
        self.bound.bind(name, backend);
    }

    /// Analyse one SQL statement: its access and functions, and its audit entry. A refusal is
    /// audited as a denial carrying the statements seen so far (`seen`) and this one.
    fn analyze(
        &self,
        binding: &str,
        operation: Operation,
        sql_text: &str,
        seen: &mut Vec<SqlAudit>,
    ) -> Result<sql::Analysis, CapError> {
        let (engine, database) = self
            .bound
            .config(binding)
            .map_or((Engine::Postgres, None), |b| {
                (b.engine(), Some(b.database().to_string()))
            });
        let analysis = if sql_text.len() > MAX_SQL_BYTES {
            Err(format!(
                "SQL text of {} bytes exceeds the limit of {MAX_SQL_BYTES}",
                sql_text.len()
            ))
        } else {
            sql::analyze_bound(engine, database.as_deref(), sql_text).map_err(|e| e.to_string())
        };
        let print = if sql_text.len() > MAX_SQL_BYTES {
            sql::fingerprint(engine, "")
        } else {
            sql::fingerprint(engine, sql_text)
        };
        match analysis {
            Ok(a) => {
                seen.push(print.audit(a.access.name()));
                Ok(a)
            }
            Err(reason) => {
                seen.push(print.audit("refused"));
                Err(self
                    .bound
                    .deny_sql(binding, operation, reason, std::mem::take(seen)))
            }
        }
    }

    /// Whether `binding` is a read grant (no `write`): then the server is asked to refuse
    /// volatile functions, and these are the ones to ask about.
    fn volatility_check(
        &self,
        binding: &str,
        functions: Vec<sql::FunctionRef>,
    ) -> Vec<sql::FunctionRef> {
        let read_grant = self
            .bound
            .grants()
            .check(binding, BindingKind::Db, Access::Write)
            .is_err();
        if read_grant { functions } else { Vec::new() }
    }

    /// `db.query`: one read (or a KWDB `EXPORT` / `IMPORT`, which answer with a job row).
    pub async fn query(
        &self,
        binding: &str,
        sql_text: &str,
        params: &[Value],
    ) -> Result<Rows, CapError> {
        let mut audit = Vec::new();
        let analysis = self.analyze(binding, Operation::Query, sql_text, &mut audit)?;
        let access = analysis.access;
        let job = matches!(access, Access::Backup | Access::Restore);
        if access != Access::Read && !job {
            let reason =
                format!("`query` runs reads only; this statement needs `{access}`, use `execute`");
            return Err(
                match self
                    .bound
                    .deny_sql(binding, Operation::Query, reason, audit)
                {
                    CapError::Denied(reason) => CapError::Invalid(reason),
                    audit_failed => audit_failed,
                },
            );
        }
        let functions = self.volatility_check(binding, analysis.functions);
        let detail = Some(access.name().to_string());
        self.bound
            .call_sql(
                binding,
                &[access],
                Operation::Query,
                detail,
                audit,
                async |b| {
                    if job {
                        b.query_job(sql_text, params).await
                    } else {
                        b.query(sql_text, params, &functions).await
                    }
                },
            )
            .await
    }

    /// `db.execute`: one statement; returns the rows affected.
    pub async fn execute(
        &self,
        binding: &str,
        sql_text: &str,
        params: &[Value],
    ) -> Result<u64, CapError> {
        let mut audit = Vec::new();
        let analysis = self.analyze(binding, Operation::Execute, sql_text, &mut audit)?;
        let access = analysis.access;
        let functions = self.volatility_check(binding, analysis.functions);
        let detail = Some(access.name().to_string());
        self.bound
            .call_sql(
                binding,
                &[access],
                Operation::Execute,
                detail,
                audit,
                async |b| {
                    if access == Access::Read {
                        let (rows, bytes) = b.query(sql_text, params, &functions).await?;
                        Ok((rows.rows.len() as u64, bytes))
                    } else {
                        b.execute(sql_text, params).await
                    }
                },
            )
            .await
    }

    /// `db.transaction`: statements run atomically; each is classified, and every access they
    /// need must be granted.
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
        let mut functions = Vec::new();
        let mut audit = Vec::new();
        for (sql_text, _) in statements {
            let a = self.analyze(binding, Operation::Transaction, sql_text, &mut audit)?;
            if !needed.contains(&a.access) {
                needed.push(a.access);
            }
            functions.extend(a.functions);
        }
        functions.sort();
        functions.dedup();
        let functions = self.volatility_check(binding, functions);
        let detail = needed
            .iter()
            .map(|a| a.name())
            .collect::<Vec<_>>()
            .join("+");
        // Read-write only when the binding may write: on a read grant the server enforces
        // READ ONLY whatever the statements were classified as.
        let read_only = !self.may_write(binding);
        self.bound
            .call_sql(
                binding,
                &needed,
                Operation::Transaction,
                Some(detail),
                audit,
                async |b| b.transaction(statements, read_only, &functions).await,
            )
            .await
    }

    /// Whether `binding` is granted `write` or `ddl`.
    fn may_write(&self, binding: &str) -> bool {
        let grants = self.bound.grants();
        [Access::Write, Access::Ddl]
            .into_iter()
            .any(|a| grants.check(binding, BindingKind::Db, a).is_ok())
    }

    /// Host: check the role of every bound database against its policy before a plan (audited
    /// as `check-role`); the notices of privileged roles the operator accepted, or the first
    /// denial. A database that cannot be reached is left to the adapter's own first call, which
    /// checks the role again before anything runs.
    pub async fn check_roles(&self) -> Result<Vec<String>, CapError> {
        let names: Vec<String> = self.bound.names().map(str::to_string).collect();
        let mut notices = Vec::new();
        for name in names {
            let checked = self
                .bound
                .call(
                    &name,
                    &[],
                    Operation::CheckRole,
                    Some("host inspection".into()),
                    async |b| b.check_role().await.map(|n| (n, 0)),
                )
                .await;
            match checked {
                Ok(notice) => notices.extend(notice),
                Err(denied @ CapError::Denied(_)) => return Err(denied),
                Err(_) => {}
            }
        }
        Ok(notices)
    }

    /// Host preflight: the other sessions on the bound database (needs `backup`; audited as
    /// `preflight`). `None` when the engine cannot list them.
    pub async fn sessions(
        &self,
        binding: &str,
        detail: &str,
    ) -> Result<Option<Vec<DbSession>>, CapError> {
        self.bound
            .call(
                binding,
                &[Access::Backup],
                Operation::Preflight,
                Some(detail.to_string()),
                async |b| b.sessions().await.map(|s| (s, 64)),
            )
            .await
    }

    /// Host preflight: the sizes a backup of the bound database is estimated from (needs
    /// `backup`; audited as `preflight`). `None` when the engine cannot tell.
    pub async fn size_estimate(
        &self,
        binding: &str,
        detail: &str,
    ) -> Result<Option<SizeEstimate>, CapError> {
        self.bound
            .call(
                binding,
                &[Access::Backup],
                Operation::Preflight,
                Some(detail.to_string()),
                async |b| b.size_estimate().await.map(|s| (s, 24)),
            )
            .await
    }

    /// `db.table-exists`.
    pub async fn table_exists(&self, binding: &str, table: &str) -> Result<bool, CapError> {
        let detail = Some(table.to_string());
        self.bound
            .call(
                binding,
                &[Access::Read],
                Operation::TableExists,
                detail,
                async |b| b.table_exists(table).await,
            )
            .await
    }

    /// Host: back up the bound database with `f` (needs `backup`).
    pub async fn backup<T>(
        &self,
        binding: &str,
        detail: &str,
        f: impl AsyncFnOnce(&DbBackend) -> Result<T, CapError>,
    ) -> Result<T, CapError> {
        self.bound.host(binding, Operation::Backup, detail, f).await
    }

    /// Host: restore into the bound database's server with `f` (needs `restore`).
    pub async fn restore<T>(
        &self,
        binding: &str,
        detail: &str,
        f: impl AsyncFnOnce(&DbBackend) -> Result<T, CapError>,
    ) -> Result<T, CapError> {
        self.bound
            .host(binding, Operation::Restore, detail, f)
            .await
    }
}
