//! The db capability's PostgreSQL engine, through tokio-postgres, plus the host actions that
//! back up and restore the bound database (clone by template, or a `pg_dump` archive).
//!
//! The adapter never sees the URL. Reads run in a `READ ONLY` transaction as a second line of
//! defence behind [`super::sql::classify`]; every session has a statement timeout.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{CancelToken, Client, GenericClient, NoTls, Row, Transaction};

use super::functions::refuse_volatile;
use super::sql::FunctionRef;
use super::{RestoreEngine, Rows};
use crate::CapError;
use crate::backup::manifest::{DumpFacts, Manifest, TableFingerprint, seal};
use crate::bindings::Value;
use crate::limits::{MAX_RESULT_BYTES, MAX_ROWS};

/// One bound PostgreSQL (or KWDB) database.
///
/// Every call opens its own connection and closes it afterwards, so nothing a call leaves in
/// its session (settings, temporary tables, prepared statements, advisory locks, `LISTEN`)
/// reaches the next call. A call that does not finish (the export's deadline, a cancelled
/// export) cancels its query on the server and closes the connection.
pub struct PgBackend {
    url: String,
    database: String,
    flavour: Flavour,
    policy: RolePolicy,
    /// The URL's role, looked up on the first connection.
    role: tokio::sync::OnceCell<RoleFacts>,
}

/// Which server speaks the PostgreSQL protocol behind a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// PostgreSQL itself.
    Postgres,
    /// KWDB: no role check (its roles are not PostgreSQL's) and no PostgreSQL-only settings.
    Kwdb,
}

/// What the operator accepts of a binding's role (see [`RolePolicy::judge`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RolePolicy {
    /// The binding's name, for messages.
    pub binding: String,
    /// `privileged = true` in the fleet file: any role is accepted (and reported).
    pub privileged: bool,
    /// The binding is granted `backup` or `restore`: the host creates databases for it (clone,
    /// restore beside), so `CREATEDB` alone is expected and accepted.
    pub creates_databases: bool,
    /// The access the binding is granted: on MySQL / MariaDB it decides which privileges on
    /// the bound schema the account may hold (see [`RolePolicy::judge_mysql`]).
    pub access: Vec<upshift_model::grants::Access>,
}

/// The powers of a connection's role that reach beyond its database.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoleFacts {
    /// The role's name.
    pub name: String,
    /// `rolsuper`.
    pub superuser: bool,
    /// `rolcreaterole`.
    pub createrole: bool,
    /// `rolcreatedb`.
    pub createdb: bool,
    /// Privileged built-in roles it is a member of, directly or through other roles.
    pub members_of: Vec<String>,
}

/// Built-in roles whose members reach the server's files, programs or other sessions.
pub const PRIVILEGED_ROLES: [&str; 4] = [
    "pg_read_server_files",
    "pg_write_server_files",
    "pg_execute_server_program",
    "pg_signal_backend",
];

/// The role of the session and its powers; membership is through any chain of roles.
const ROLE_QUERY: &str = "SELECT r.rolname::text, r.rolsuper, r.rolcreaterole, r.rolcreatedb, \
     coalesce((SELECT array_agg(b.rolname::text ORDER BY b.rolname) FROM pg_roles b \
       WHERE b.rolname = ANY ($1) AND pg_has_role(r.oid, b.oid, 'MEMBER')), '{}'::text[]) \
     FROM pg_roles r WHERE r.rolname = current_user";

impl RolePolicy {
    /// Whether a role with `facts` may be used: `Ok(None)` for an ordinary role, `Ok(Some(notice))`
    /// for a privileged one the operator accepted, and a denial naming the powers and the fix
    /// otherwise.
    pub fn judge(&self, facts: &RoleFacts) -> Result<Option<String>, CapError> {
        let mut powers = Vec::new();
        if facts.createrole {
            powers.push("has CREATEROLE".to_string());
        }
        if facts.createdb && (!self.creates_databases || self.privileged) {
            powers.push("has CREATEDB".to_string());
        }
        for role in &facts.members_of {
            powers.push(format!("is a member of {role}"));
        }
        let what = if facts.superuser {
            format!("role `{}`, a superuser", facts.name)
        } else if powers.is_empty() {
            return Ok(None);
        } else {
            format!("role `{}`, which {}", facts.name, powers.join(" and "))
        };
        if self.privileged {
            return Ok(Some(format!(
                "binding `{}` connects as {what} (privileged = true)",
                self.binding
            )));
        }
        Err(CapError::Denied(format!(
            "binding `{b}` connects as {what}; use a role with only the privileges the adapter needs (docs/least-privilege.md), or set privileged = true on [instance.db.{b}]",
            b = self.binding
        )))
    }
}

/// A connection opened for one call. Dropped before [`CallConn::finish`] (the call did not
/// complete: a deadline, a cancelled export), it asks the server to cancel the running query
/// and closes the socket.
struct CallConn {
    client: Client,
    cancel: Option<CancelToken>,
    task: tokio::task::AbortHandle,
}

impl CallConn {
    /// The call completed: close the connection normally.
    fn finish(mut self) {
        self.cancel = None;
    }
}

impl std::ops::Deref for CallConn {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl std::ops::DerefMut for CallConn {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.client
    }
}

impl Drop for CallConn {
    fn drop(&mut self) {
        let Some(token) = self.cancel.take() else {
            return;
        };
        let task = self.task.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    let _ = tokio::time::timeout(CANCEL_WITHIN, token.cancel_query(NoTls)).await;
                    task.abort();
                });
            }
            Err(_) => task.abort(),
        }
    }
}

/// How long a cancel request may take before the connection is just closed.
const CANCEL_WITHIN: Duration = Duration::from_secs(5);
/// A statement's longest run, when the call's deadline does not end it earlier.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(120);
/// The longest wait for a lock, when the call's deadline does not end it earlier.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(30);

/// How long after the export's deadline the server ends a statement by itself, should the
/// host's own cancel not reach it (the host gives up at the deadline).
const SERVER_BACKSTOP: Duration = Duration::from_millis(500);

/// Milliseconds of `limit`, cut to the time left before the current export's deadline (plus
/// [`SERVER_BACKSTOP`], so the host's clearer deadline error comes first).
fn bounded_ms(limit: Duration) -> Result<u128, CapError> {
    match crate::guard::time_left() {
        Some(left) if left.is_zero() => Err(CapError::Failed(
            "the adapter's export has reached its deadline; the call was not made".into(),
        )),
        Some(left) => Ok((left + SERVER_BACKSTOP).min(limit).as_millis().max(1)),
        None => Ok(limit.as_millis()),
    }
}

fn failed(context: &str, e: impl std::fmt::Display) -> CapError {
    CapError::Failed(format!("{context}: {e}"))
}

/// Why a connection to `database` failed, naming the server's host and port and the cause
/// (`cannot connect to PostgreSQL at 127.0.0.1:5999 (database `app`): connection refused`),
/// not tokio-postgres's bare "error connecting to server".
fn connect_message(
    config: &tokio_postgres::Config,
    flavour: Flavour,
    database: &str,
    e: &tokio_postgres::Error,
) -> String {
    let product = match flavour {
        Flavour::Postgres => "PostgreSQL",
        Flavour::Kwdb => "KWDB",
    };
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        Some(tokio_postgres::config::Host::Unix(dir)) => dir.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let cause = match e.as_db_error() {
        Some(_) => pg_message(e),
        None => crate::connect::cause(e),
    };
    format!("cannot connect to {product} at {host}:{port} (database `{database}`): {cause}")
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
    /// A backend for `url` (a `postgres://` URL naming a database), with no binding policy
    /// (any role accepted: for host-side tools and tests). Connects per call.
    pub fn new(url: &str) -> Result<PgBackend, CapError> {
        PgBackend::bound(url, Flavour::Postgres, None)
    }

    /// A backend for binding `url` of `flavour`; with a `policy`, the URL's role is checked
    /// against it before the first statement.
    pub fn bound(
        url: &str,
        flavour: Flavour,
        policy: Option<RolePolicy>,
    ) -> Result<PgBackend, CapError> {
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| CapError::Invalid(format!("database URL does not parse: {e}")))?;
        let database = config
            .get_dbname()
            .ok_or_else(|| CapError::Invalid("database URL names no database".into()))?
            .to_string();
        let policy = policy.unwrap_or(RolePolicy {
            privileged: true,
            ..RolePolicy::default()
        });
        Ok(PgBackend {
            url: url.to_string(),
            database,
            flavour,
            policy,
            role: tokio::sync::OnceCell::new(),
        })
    }

    /// The bound database's name.
    pub fn database(&self) -> &str {
        &self.database
    }

    /// Open a connection to `database` for one call: the role is checked (once per backend)
    /// before anything else runs, then the session's timeouts are cut to the call's deadline.
    async fn connect_to(&self, database: &str) -> Result<CallConn, CapError> {
        let statement_ms = bounded_ms(STATEMENT_TIMEOUT)?;
        let lock_ms = bounded_ms(LOCK_TIMEOUT)?;
        let mut config: tokio_postgres::Config = self
            .url
            .parse()
            .map_err(|e| CapError::Invalid(format!("database URL does not parse: {e}")))?;
        config.dbname(database);
        config.application_name("upshift");
        config.connect_timeout(Duration::from_secs(10));
        let (client, connection) = config
            .connect(NoTls)
            .await
            .map_err(|e| CapError::Failed(connect_message(&config, self.flavour, database, &e)))?;
        let task = tokio::spawn(async move {
            let _ = connection.await;
        })
        .abort_handle();
        let conn = CallConn {
            cancel: Some(client.cancel_token()),
            client,
            task,
        };
        if self.flavour == Flavour::Postgres {
            let facts = self.role.get_or_try_init(|| role_facts(&conn)).await?;
            self.policy.judge(facts)?;
        }
        let mut settings =
            format!("SET statement_timeout = {statement_ms}; SET lock_timeout = {lock_ms};");
        if self.flavour == Flavour::Postgres {
            // PostgreSQL 14+ notices a client gone mid-query (the host gave up) within a second.
            settings.push_str(
                " SELECT set_config('client_connection_check_interval', '1000', false) \
                 WHERE current_setting('server_version_num')::int >= 140000;",
            );
        }
        conn.batch_execute(&settings)
            .await
            .map_err(|e| failed("cannot configure the session", pg_message(&e)))?;
        Ok(conn)
    }

    /// The binding's role checked against its policy: the notice to show when it is a
    /// privileged role the operator accepted (`privileged = true`).
    pub async fn check_role(&self) -> Result<Option<String>, CapError> {
        if self.flavour != Flavour::Postgres {
            return Ok(None);
        }
        if self.role.get().is_none() {
            self.connect_to(&self.database).await?.finish();
        }
        match self.role.get() {
            Some(facts) => self.policy.judge(facts),
            None => Ok(None),
        }
    }

    /// Run `f` on a connection of its own, closed afterwards (cancelled if `f` never ends).
    async fn with_client<T>(
        &self,
        f: impl AsyncFnOnce(&mut Client) -> Result<T, CapError>,
    ) -> Result<T, CapError> {
        let mut conn = self.connect_to(&self.database).await?;
        let out = f(&mut conn.client).await;
        conn.finish();
        out
    }

    /// Run one read statement in a read-only transaction; refused first if any of `functions`
    /// (on a read grant: the ones it calls) is volatile.
    pub async fn query(
        &self,
        sql: &str,
        params: &[Value],
        functions: &[FunctionRef],
    ) -> Result<(Rows, u64), CapError> {
        self.with_client(async |client| {
            let tx = client
                .build_transaction()
                .read_only(true)
                .start()
                .await
                .map_err(|e| failed("cannot start a read-only transaction", pg_message(&e)))?;
            refuse_volatile(&tx, functions).await?;
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

    /// Run statements atomically; with `read_only` the server refuses any write in them, and
    /// the call is refused first if any of `functions` (on a read grant: the ones they call) is
    /// volatile.
    pub async fn transaction(
        &self,
        statements: &[(String, Vec<Value>)],
        read_only: bool,
        functions: &[FunctionRef],
    ) -> Result<(Vec<u64>, u64), CapError> {
        self.with_client(async |client| {
            let tx = client
                .build_transaction()
                .read_only(read_only)
                .start()
                .await
                .map_err(|e| failed("cannot start a transaction", pg_message(&e)))?;
            refuse_volatile(&tx, functions).await?;
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
                &[],
            )
            .await?;
        let exists = matches!(
            rows.rows.first().and_then(|r| r.first()),
            Some(Value::Boolean(true))
        );
        Ok((exists, 1))
    }

    /// The other client sessions on the bound database.
    pub async fn sessions(&self) -> Result<Vec<super::DbSession>, CapError> {
        self.with_client(async |client| {
            let rows = client
                .query(
                    "SELECT pid::bigint, coalesce(usename::text, ''), coalesce(application_name, ''), \
                     host(client_addr), coalesce(client_port, -1)::int \
                     FROM pg_stat_activity \
                     WHERE datname = current_database() AND pid <> pg_backend_pid() \
                     AND backend_type = 'client backend' ORDER BY pid",
                    &[],
                )
                .await
                .map_err(|e| failed("cannot list sessions", pg_message(&e)))?;
            Ok(rows
                .iter()
                .map(|r| {
                    let addr: Option<String> = r.get(3);
                    let port: i32 = r.get(4);
                    super::DbSession {
                        pid: r.get(0),
                        user: r.get(1),
                        application: r.get(2),
                        client: addr
                            .and_then(|a| a.parse().ok())
                            .zip(u16::try_from(port).ok()),
                        origin: String::new(),
                    }
                })
                .collect())
        })
        .await
    }

    /// The bound database's size, its tables' data size, and the server's data directory
    /// when this role may read it and the server is on this machine.
    pub async fn size_estimate(&self) -> Result<super::SizeEstimate, CapError> {
        let local = self
            .url
            .parse::<tokio_postgres::Config>()
            .map(|c| {
                c.get_hosts().iter().all(|h| match h {
                    tokio_postgres::config::Host::Tcp(name) => {
                        name == "localhost"
                            || name
                                .parse::<std::net::IpAddr>()
                                .is_ok_and(|ip| ip.is_loopback())
                    }
                    #[cfg(unix)]
                    tokio_postgres::config::Host::Unix(_) => true,
                })
            })
            .unwrap_or(false);
        self.with_client(async |client| {
            let row = client
                .query_one(
                    "SELECT pg_database_size(current_database())::bigint, \
                     (SELECT coalesce(sum(pg_table_size(c.oid)), 0)::bigint FROM pg_class c \
                      JOIN pg_namespace n ON n.oid = c.relnamespace \
                      WHERE c.relkind IN ('r', 'm') \
                      AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
                      AND n.nspname NOT LIKE 'pg_toast%'), \
                     (SELECT setting FROM pg_settings WHERE name = 'data_directory')",
                    &[],
                )
                .await
                .map_err(|e| failed("cannot size the database", pg_message(&e)))?;
            let dir: Option<String> = row.get(2);
            Ok(super::SizeEstimate {
                database_bytes: u64::try_from(row.get::<_, i64>(0)).unwrap_or(0),
                data_bytes: u64::try_from(row.get::<_, i64>(1)).unwrap_or(0),
                server_dir: dir.filter(|_| local).map(PathBuf::from),
            })
        })
        .await
    }

    /// A session on the server's maintenance database, for CREATE/ALTER DATABASE.
    async fn admin(&self) -> Result<CallConn, CapError> {
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
            crate::private::create_dir_all(parent)
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
            // Its own process group: a Ctrl-C at the terminal stops the run at a step
            // boundary (the host's handler) and does not cut the dump.
            .process_group(0)
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

    /// The size of database `name` on this server, or `None` when it does not exist.
    pub async fn database_size(&self, name: &str) -> Result<Option<u64>, CapError> {
        let admin = self.admin().await?;
        let row = admin
            .query_opt(
                "SELECT pg_database_size(oid) FROM pg_database WHERE datname = $1",
                &[&name],
            )
            .await
            .map_err(|e| failed(&format!("cannot size `{name}`"), pg_message(&e)))?;
        Ok(row.map(|r| u64::try_from(r.get::<_, i64>(0)).unwrap_or(0)))
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

    /// Swap `replacement` in under the bound database's name; the current database is renamed
    /// to `keep_as` (kept for the operator, never dropped by Upshift).
    pub async fn swap_in(&self, replacement: &str, keep_as: &str) -> Result<(), CapError> {
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
    pub(super) async fn rewrite_namespace(
        &self,
        target: &str,
        table: &str,
        column: &str,
    ) -> Result<u64, CapError> {
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

impl RestoreEngine for PgBackend {
    async fn database_exists(&self, name: &str) -> Result<bool, CapError> {
        let admin = self.admin().await?;
        let exists = Self::database_exists(&admin, name).await;
        admin.finish();
        exists
    }

    async fn create_from_clone(&self, target: &str, db: &str) -> Result<(), CapError> {
        let admin = self.admin().await?;
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
            })
    }

    async fn create_database(&self, target: &str) -> Result<(), CapError> {
        self.admin()
            .await?
            .batch_execute(&format!("CREATE DATABASE {}", quote_ident(target)))
            .await
            .map_err(|e| failed(&format!("cannot create `{target}`"), pg_message(&e)))
    }

    async fn load_dump(&self, target: &str, dir: &Path) -> Result<(), CapError> {
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
            // Not cut by a Ctrl-C at the terminal (see the dump).
            .process_group(0)
            .output()
            .await
            .map_err(|e| failed(&format!("cannot run {}", bin.display()), e))?;
        super::tool_outcome("pg_restore failed", &out)
    }

    async fn drop_database(&self, name: &str) -> Result<(), CapError> {
        PgBackend::drop_database(self, name).await
    }
}

/// The session role's powers beyond its database.
async fn role_facts(client: &Client) -> Result<RoleFacts, CapError> {
    let roles: Vec<String> = PRIVILEGED_ROLES.iter().map(|r| r.to_string()).collect();
    let row = client
        .query_one(ROLE_QUERY, &[&roles])
        .await
        .map_err(|e| failed("cannot look up the connection's role", pg_message(&e)))?;
    let facts = (|| {
        Ok::<_, tokio_postgres::Error>(RoleFacts {
            name: row.try_get(0)?,
            superuser: row.try_get(1)?,
            createrole: row.try_get(2)?,
            createdb: row.try_get(3)?,
            members_of: row.try_get(4)?,
        })
    })();
    facts.map_err(|e| failed("cannot read the connection's role", e))
}

/// Prepare `sql`, bind `params` to its parameter types, and return its rows.
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

/// How a PostgreSQL table's rows are checksummed. No method's result depends on the order the
/// rows are stored in, so a restored copy compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowChecksum {
    /// The sum of every row's 64-bit hash: `hash_record_extended` (the hash functions of the
    /// columns' own types, which PostgreSQL keeps stable across versions for hash partitioning),
    /// mixed once more with `hashint8extended` so that a value moved to another row changes the
    /// sum. Written by this version for every table whose column types all have a hash
    /// function; about ten times cheaper than [`RowChecksum::Md5Sum`]. Equal values under the
    /// type's equality hash alike (`1.0` and `1.00` as `numeric`).
    HashSum,
    /// Sums of both 64-bit halves of each row text's md5. Written for tables with a column type
    /// that has no hash function (`json`, `xml`, `point`, …), and by the previous version.
    Md5Sum,
    /// md5 over the sorted md5s of every row (manifests written before `Md5Sum`): a sort and
    /// one text of 32 bytes per row, which fails beyond PostgreSQL's 1 GB text limit.
    SortedMd5,
}

/// Prefix of [`RowChecksum::HashSum`] checksums.
const HASHSUM_PREFIX: &str = "hashsum:";
/// Prefix of [`RowChecksum::Md5Sum`] checksums.
const MD5SUM_PREFIX: &str = "md5sum:";

impl RowChecksum {
    /// The method a recorded PostgreSQL checksum was taken with, read from its prefix, so a
    /// restored copy of the table is checksummed the same way.
    pub fn of(checksum: &str) -> RowChecksum {
        if checksum.starts_with(HASHSUM_PREFIX) {
            RowChecksum::HashSum
        } else if checksum.starts_with(MD5SUM_PREFIX) {
            RowChecksum::Md5Sum
        } else {
            RowChecksum::SortedMd5
        }
    }

    /// The `SELECT` giving `(rows, checksum)` of table `schema.table`.
    fn query(self, schema: &str, table: &str) -> String {
        let from = format!("{}.{} t", quote_ident(schema), quote_ident(table));
        match self {
            RowChecksum::HashSum => format!(
                "SELECT count(*)::bigint, '{HASHSUM_PREFIX}' \
                 || coalesce(sum(hashint8extended(hash_record_extended(t, 0), 0)), 0)::text \
                 FROM {from}"
            ),
            RowChecksum::Md5Sum => format!(
                "SELECT count(*)::bigint, '{MD5SUM_PREFIX}' \
                 || coalesce(sum(('x' || substr(h, 1, 16))::bit(64)::bigint::numeric), 0)::text || ':' \
                 || coalesce(sum(('x' || substr(h, 17, 16))::bit(64)::bigint::numeric), 0)::text \
                 FROM (SELECT md5(t::text) AS h FROM {from}) r"
            ),
            RowChecksum::SortedMd5 => format!(
                "SELECT count(*)::bigint, coalesce(md5(string_agg(md5(t::text), '' ORDER BY md5(t::text))), '') FROM {from}"
            ),
        }
    }
}

/// Row counts and checksums of every user table, read inside transaction `tx` (so all of them
/// describe one snapshot). A table named in `like` (a manifest's tables) is checksummed with the
/// method its recorded checksum was taken with; any other table with [`RowChecksum::HashSum`],
/// or [`RowChecksum::Md5Sum`] where PostgreSQL has no hash function for one of its column types
/// (or, before version 14, no `hash_record_extended`).
pub async fn fingerprints(
    tx: &mut Transaction<'_>,
    like: &BTreeMap<String, TableFingerprint>,
) -> Result<BTreeMap<String, TableFingerprint>, CapError> {
    let tables = tx
        .query(
            "SELECT n.nspname::text, c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
             AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1, 2",
            &[],
        )
        .await
        .map_err(|e| CapError::Failed(format!("cannot list tables: {}", pg_message(&e))))?;
    let mut out = BTreeMap::new();
    for t in tables {
        let (schema, table): (String, String) = (t.get(0), t.get(1));
        let name = format!("{schema}.{table}");
        let cannot = |e: tokio_postgres::Error| {
            CapError::Failed(format!("cannot checksum {name}: {}", pg_message(&e)))
        };
        let row = match like.get(&name) {
            Some(recorded) => {
                let method = RowChecksum::of(&recorded.checksum);
                tx.query_one(&method.query(&schema, &table), &[])
                    .await
                    .map_err(cannot)?
            }
            None => {
                // A type without a hash function fails on the first row; the savepoint keeps
                // the snapshot's transaction usable for the fallback.
                let attempt = tx.savepoint("upshift_checksum").await.map_err(cannot)?;
                match attempt
                    .query_one(&RowChecksum::HashSum.query(&schema, &table), &[])
                    .await
                {
                    Ok(row) => {
                        attempt.commit().await.map_err(cannot)?;
                        row
                    }
                    Err(e) if e.code() == Some(&SqlState::UNDEFINED_FUNCTION) => {
                        attempt.rollback().await.map_err(cannot)?;
                        tx.query_one(&RowChecksum::Md5Sum.query(&schema, &table), &[])
                            .await
                            .map_err(cannot)?
                    }
                    Err(e) => return Err(cannot(e)),
                }
            }
        };
        out.insert(
            name,
            TableFingerprint {
                rows: row.get(0),
                checksum: row.get(1),
            },
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn privileged_roles_are_refused_unless_accepted() {
        let policy = |privileged, creates_databases| RolePolicy {
            binding: "meta".into(),
            privileged,
            creates_databases,
            ..RolePolicy::default()
        };
        let role = |f: &dyn Fn(&mut RoleFacts)| {
            let mut facts = RoleFacts {
                name: "app".into(),
                ..RoleFacts::default()
            };
            f(&mut facts);
            facts
        };
        let plain = role(&|_| {});
        assert_eq!(policy(false, false).judge(&plain), Ok(None));
        let su = role(&|r| r.superuser = true);
        let denied = policy(false, true).judge(&su).expect_err("superuser");
        assert!(
            denied
                .to_string()
                .contains("connects as role `app`, a superuser; use a role"),
            "{denied}"
        );
        assert!(denied.to_string().contains("[instance.db.meta]"));
        assert_eq!(
            policy(true, false).judge(&su),
            Ok(Some(
                "binding `meta` connects as role `app`, a superuser (privileged = true)".into()
            ))
        );
        // CREATEDB is expected where the host creates databases (backup / restore grants).
        let creator = role(&|r| r.createdb = true);
        assert_eq!(policy(false, true).judge(&creator), Ok(None));
        assert!(policy(false, false).judge(&creator).is_err());
        let signal = role(&|r| r.members_of = vec!["pg_signal_backend".into()]);
        let denied = policy(false, true).judge(&signal).expect_err("member");
        assert!(
            denied
                .to_string()
                .contains("which is a member of pg_signal_backend"),
            "{denied}"
        );
        let both = role(&|r| {
            r.createrole = true;
            r.members_of = vec!["pg_read_server_files".into()];
        });
        let denied = policy(false, true).judge(&both).expect_err("both");
        assert!(
            denied
                .to_string()
                .contains("which has CREATEROLE and is a member of pg_read_server_files"),
            "{denied}"
        );
    }

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
