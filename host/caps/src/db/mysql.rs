//! The db capability's MySQL / MariaDB backend (mysql_async), and its backups: a
//! `mariadb-dump --single-transaction` (a plain dump hangs on DevLake's table lock), gzip-compressed
//! and checksummed, with a manifest of every table's row count and checksum.
//!
//! Before the first statement of a fleet binding the account's grants are checked against
//! what the binding needs ([`grants`]).

pub mod grants;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder, Params, Row, TxOpts};

use super::pg::RolePolicy;
use super::{RestoreEngine, Rows};
use crate::CapError;
use crate::backup::manifest::{DumpFacts, Manifest, TableFingerprint, seal};
use crate::bindings::Value;
use crate::limits::{MAX_RESULT_BYTES, MAX_ROWS};

/// The dump file inside a MySQL backup directory.
pub const DUMP_FILE: &str = "dump.sql.gz";

/// One bound MySQL / MariaDB database. Every call opens its own connection and closes it
/// afterwards, so no session state (user variables, `GET_LOCK` locks, `SET SESSION`, temporary
/// tables, prepared statements) outlives a call; a call that does not finish (the export's
/// deadline) has its query killed on the server.
pub struct MySqlBackend {
    opts: Opts,
    database: String,
    /// The binding's policy; `None` for host tools and tests (no account check).
    policy: Option<RolePolicy>,
    /// The URL's account and its grants, read on the first connection.
    account: tokio::sync::OnceCell<grants::Account>,
}

/// A connection opened for one call; dropped before [`CallConn::finish`] (the call's deadline
/// passed, the export was cancelled), its running query is killed (`KILL QUERY` from a second
/// connection) and the connection closed.
struct CallConn {
    conn: Option<Conn>,
    opts: Opts,
}

impl CallConn {
    /// The call completed: close the connection normally.
    async fn finish(mut self) {
        if let Some(conn) = self.conn.take() {
            let _ = conn.disconnect().await;
        }
    }

    /// The connection (present until finished or dropped).
    fn conn(&mut self) -> Result<&mut Conn, CapError> {
        self.conn
            .as_mut()
            .ok_or_else(|| CapError::Failed("no database connection".into()))
    }
}

impl Drop for CallConn {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        let id = conn.id();
        let opts = self.opts.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let kill = async {
                    let mut killer = Conn::new(opts).await?;
                    killer.query_drop(format!("KILL QUERY {id}")).await?;
                    killer.disconnect().await
                };
                let _ = tokio::time::timeout(KILL_WITHIN, kill).await;
                drop(conn);
            });
        }
    }
}

/// How long the `KILL QUERY` of an abandoned call may take.
const KILL_WITHIN: Duration = Duration::from_secs(5);
/// A statement's longest run, when the call's deadline does not end it earlier.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(120);
/// The longest wait for a lock, when the call's deadline does not end it earlier.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(30);
/// How long after the export's deadline the server ends a statement by itself, should the
/// host's `KILL QUERY` not reach it (the host gives up at the deadline).
const SERVER_BACKSTOP: Duration = Duration::from_millis(500);

/// `limit`, cut to the time left before the current export's deadline (plus
/// [`SERVER_BACKSTOP`], so the host's clearer deadline error comes first).
fn bounded(limit: Duration) -> Result<Duration, CapError> {
    match crate::guard::time_left() {
        Some(left) if left.is_zero() => Err(CapError::Failed(
            "the adapter's export has reached its deadline; the call was not made".into(),
        )),
        Some(left) => Ok((left + SERVER_BACKSTOP).min(limit)),
        None => Ok(limit),
    }
}

/// The session settings of one call, in order; the statement limit comes last, after
/// anything else the host sets up, so nothing set before it can change it. MariaDB limits every
/// statement (`max_statement_time`, seconds); MySQL only `SELECT`s (`max_execution_time`, ms).
fn session_setup(mariadb: bool) -> Result<Vec<String>, CapError> {
    // Whole seconds, rounded up: the server's lock wait must not end before the deadline.
    let lock = bounded(LOCK_TIMEOUT)?;
    let lock_secs = (lock.as_secs() + u64::from(lock.subsec_nanos() > 0)).max(1);
    let statement = bounded(STATEMENT_TIMEOUT)?;
    let limit = if mariadb {
        format!(
            "SET SESSION max_statement_time = {:.3}",
            statement.as_secs_f64().max(0.001)
        )
    } else {
        format!(
            "SET SESSION max_execution_time = {}",
            statement.as_millis().max(1)
        )
    };
    Ok(vec![
        format!(
            "SET SESSION lock_wait_timeout = {lock_secs}, SESSION innodb_lock_wait_timeout = {lock_secs}"
        ),
        limit,
    ])
}

fn failed(context: &str, e: impl std::fmt::Display) -> CapError {
    CapError::Failed(format!("{context}: {e}"))
}

/// Quote a MySQL identifier.
pub fn quote(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

fn to_mysql(v: &Value) -> mysql_async::Value {
    match v {
        Value::Null => mysql_async::Value::NULL,
        Value::Boolean(b) => mysql_async::Value::Int(i64::from(*b)),
        Value::Int(i) => mysql_async::Value::Int(*i),
        Value::Float(f) => mysql_async::Value::Double(*f),
        Value::Text(s) => mysql_async::Value::Bytes(s.clone().into_bytes()),
        Value::Bytes(b) => mysql_async::Value::Bytes(b.clone()),
    }
}

fn from_mysql(v: mysql_async::Value) -> Value {
    use mysql_async::Value as M;
    match v {
        M::NULL => Value::Null,
        M::Bytes(b) => match String::from_utf8(b) {
            Ok(s) => Value::Text(s),
            Err(e) => Value::Bytes(e.into_bytes()),
        },
        M::Int(i) => Value::Int(i),
        M::UInt(u) => i64::try_from(u)
            .map(Value::Int)
            .unwrap_or_else(|_| Value::Text(u.to_string())),
        M::Float(f) => Value::Float(f.into()),
        M::Double(f) => Value::Float(f),
        M::Date(y, mo, d, h, mi, s, us) => Value::Text(format!(
            "{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}.{us:06}"
        )),
        M::Time(neg, d, h, mi, s, us) => Value::Text(format!(
            "{}{}:{mi:02}:{s:02}.{us:06}",
            if neg { "-" } else { "" },
            u64::from(d) * 24 + u64::from(h)
        )),
    }
}

fn params(values: &[Value]) -> Params {
    if values.is_empty() {
        Params::Empty
    } else {
        Params::Positional(values.iter().map(to_mysql).collect())
    }
}

fn convert(rows: Vec<Row>) -> Result<(Rows, u64), CapError> {
    if rows.len() > MAX_ROWS {
        return Err(CapError::Invalid(format!(
            "the query returned {} rows, more than the limit of {MAX_ROWS}; add a LIMIT",
            rows.len()
        )));
    }
    let columns = rows
        .first()
        .map(|r| {
            r.columns_ref()
                .iter()
                .map(|c| c.name_str().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let mut bytes = 0usize;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let values: Vec<Value> = row
            .unwrap_raw()
            .into_iter()
            .map(|v| v.map(from_mysql).unwrap_or(Value::Null))
            .collect();
        bytes += values
            .iter()
            .map(|v| match v {
                Value::Text(s) => s.len(),
                Value::Bytes(b) => b.len(),
                _ => 8,
            })
            .sum::<usize>();
        if bytes > MAX_RESULT_BYTES {
            return Err(CapError::Invalid(format!(
                "the query result exceeds {MAX_RESULT_BYTES} bytes"
            )));
        }
        out.push(values);
    }
    Ok((Rows { columns, rows: out }, bytes as u64))
}

fn tool(names: &[&str]) -> Result<PathBuf, CapError> {
    for name in names {
        for dir in ["/usr/bin", "/usr/local/bin"] {
            let p = Path::new(dir).join(name);
            if p.exists() {
                return Ok(p);
            }
        }
    }
    Err(CapError::Failed(format!(
        "{} not found; install the MariaDB/MySQL client tools (Debian: mariadb-client)",
        names.join(" / ")
    )))
}

impl MySqlBackend {
    /// A backend for a `mysql://user[:password]@host:port/database` URL, with no binding
    /// policy (no account check: host tools and tests). Connects per call.
    pub fn new(url: &str) -> Result<MySqlBackend, CapError> {
        MySqlBackend::bound(url, None)
    }

    /// A backend for a binding's URL; with a `policy`, the URL's account is checked against it
    /// before the first statement (see [`RolePolicy::judge_mysql`]).
    pub fn bound(url: &str, policy: Option<RolePolicy>) -> Result<MySqlBackend, CapError> {
        let opts = Opts::from_url(url)
            .map_err(|e| CapError::Invalid(format!("database URL does not parse: {e}")))?;
        let database = opts
            .db_name()
            .ok_or_else(|| CapError::Invalid("database URL names no database".into()))?
            .to_string();
        Ok(MySqlBackend {
            opts,
            database,
            policy,
            account: tokio::sync::OnceCell::new(),
        })
    }

    /// The bound database's name.
    pub fn database(&self) -> &str {
        &self.database
    }

    /// Open a connection to `database` (or none) for one call: the account is checked (read
    /// once per backend) before anything else runs, then the session's limits are cut to the
    /// call's deadline, the statement limit last.
    async fn connect_to(&self, database: Option<&str>) -> Result<CallConn, CapError> {
        // A call made at the deadline is not made at all.
        bounded(STATEMENT_TIMEOUT)?;
        let opts = OptsBuilder::from_opts(self.opts.clone()).db_name(database);
        let conn = Conn::new(opts).await.map_err(|e| {
            CapError::Failed(format!(
                "cannot connect to MySQL at {}:{} (database `{}`): {}",
                self.opts.ip_or_hostname(),
                self.opts.tcp_port(),
                database.unwrap_or(""),
                crate::connect::cause(&e)
            ))
        })?;
        let mut call = CallConn {
            conn: Some(conn),
            opts: self.opts.clone(),
        };
        let prepared = self.prepare(call.conn()?).await;
        match prepared {
            Ok(()) => Ok(call),
            Err(e) => {
                call.finish().await;
                Err(e)
            }
        }
    }

    /// The URL's account and its grants, read once per backend on a connection of its own
    /// (reading them enables each granted role in turn).
    async fn account(&self) -> Result<&grants::Account, CapError> {
        self.account
            .get_or_try_init(|| async {
                let opts = OptsBuilder::from_opts(self.opts.clone()).db_name(None::<String>);
                let mut conn = Conn::new(opts)
                    .await
                    .map_err(|e| failed("cannot connect to check the account", e))?;
                let mariadb = conn.server_version().0 >= 10;
                let read = grants::read_account(&mut conn, mariadb).await;
                let _ = conn.disconnect().await;
                read
            })
            .await
    }

    /// Check the account (before anything else runs), then set the session's limits.
    async fn prepare(&self, conn: &mut Conn) -> Result<(), CapError> {
        if let Some(policy) = &self.policy {
            policy.judge_mysql(&self.database, self.account().await?)?;
        }
        let mariadb = conn.server_version().0 >= 10;
        for statement in session_setup(mariadb)? {
            conn.query_drop(&statement)
                .await
                .map_err(|e| failed("cannot configure the session", e))?;
        }
        Ok(())
    }

    /// The binding's account checked against its policy: the notice to show when it holds
    /// more than the binding needs and the operator accepted it (`privileged = true`).
    pub async fn check_role(&self) -> Result<Option<String>, CapError> {
        let Some(policy) = &self.policy else {
            return Ok(None);
        };
        policy.judge_mysql(&self.database, self.account().await?)
    }

    async fn with_conn<T>(
        &self,
        f: impl AsyncFnOnce(&mut Conn) -> Result<T, CapError>,
    ) -> Result<T, CapError> {
        self.with_conn_to(Some(&self.database), f).await
    }

    /// Run `f` on a connection of its own to `database`, closed afterwards (its query killed
    /// if `f` never ends).
    async fn with_conn_to<T>(
        &self,
        database: Option<&str>,
        f: impl AsyncFnOnce(&mut Conn) -> Result<T, CapError>,
    ) -> Result<T, CapError> {
        let mut call = self.connect_to(database).await?;
        let out = f(call.conn()?).await;
        call.finish().await;
        out
    }

    /// Run one read statement in a read-only transaction.
    pub async fn query(&self, sql: &str, values: &[Value]) -> Result<(Rows, u64), CapError> {
        self.with_conn(async |conn| {
            let mut tx_opts = TxOpts::default();
            tx_opts.with_readonly(Some(true));
            let mut tx = conn
                .start_transaction(tx_opts)
                .await
                .map_err(|e| failed("cannot start a read-only transaction", e))?;
            let rows: Vec<Row> = tx
                .exec(sql, params(values))
                .await
                .map_err(|e| failed("query failed", e))?;
            let _ = tx.rollback().await;
            convert(rows)
        })
        .await
    }

    /// Run one statement that changes data or schema.
    pub async fn execute(&self, sql: &str, values: &[Value]) -> Result<(u64, u64), CapError> {
        self.with_conn(async |conn| {
            conn.exec_drop(sql, params(values))
                .await
                .map_err(|e| failed("statement failed", e))?;
            Ok((conn.affected_rows(), 8))
        })
        .await
    }

    /// Run statements atomically; with `read_only` the server refuses any write
    /// (`START TRANSACTION READ ONLY`).
    pub async fn transaction(
        &self,
        statements: &[(String, Vec<Value>)],
        read_only: bool,
    ) -> Result<(Vec<u64>, u64), CapError> {
        self.with_conn(async |conn| {
            let mut tx_opts = TxOpts::default();
            tx_opts.with_readonly(Some(read_only));
            let mut tx = conn
                .start_transaction(tx_opts)
                .await
                .map_err(|e| failed("cannot start a transaction", e))?;
            let mut counts = Vec::new();
            for (i, (sql, values)) in statements.iter().enumerate() {
                tx.exec_drop(sql.as_str(), params(values))
                    .await
                    .map_err(|e| failed(&format!("statement {} failed", i + 1), e))?;
                counts.push(tx.affected_rows());
            }
            tx.commit().await.map_err(|e| failed("commit failed", e))?;
            let bytes = 8 * counts.len() as u64;
            Ok((counts, bytes))
        })
        .await
    }

    /// Whether a table exists in the bound database.
    pub async fn table_exists(&self, table: &str) -> Result<(bool, u64), CapError> {
        let (rows, _) = self
            .query(
                "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = ?",
                &[Value::Text(table.to_string())],
            )
            .await?;
        Ok((
            matches!(rows.rows.first().and_then(|r| r.first()), Some(Value::Int(n)) if *n > 0),
            1,
        ))
    }

    /// The other sessions on the bound database (`information_schema.PROCESSLIST`; an account
    /// without `PROCESS` sees only its own).
    pub async fn sessions(&self) -> Result<Vec<super::DbSession>, CapError> {
        let (rows, _) = self
            .query(
                "SELECT ID, USER, HOST FROM information_schema.PROCESSLIST \
                 WHERE DB = DATABASE() AND ID <> CONNECTION_ID() ORDER BY ID",
                &[],
            )
            .await?;
        Ok(rows
            .rows
            .iter()
            .map(|r| {
                let text = |i: usize| match r.get(i) {
                    Some(Value::Text(t)) => t.clone(),
                    Some(Value::Int(n)) => n.to_string(),
                    Some(other) => format!("{other:?}"),
                    None => String::new(),
                };
                let host = text(2);
                let client = client_of(&host);
                super::DbSession {
                    pid: match r.first() {
                        Some(Value::Int(n)) => *n,
                        _ => 0,
                    },
                    user: text(1),
                    application: String::new(),
                    client,
                    origin: if client.is_some() {
                        String::new()
                    } else {
                        host
                    },
                }
            })
            .collect())
    }

    /// The bound database's data and index size (`information_schema.tables`).
    pub async fn size_estimate(&self) -> Result<super::SizeEstimate, CapError> {
        let (rows, _) = self
            .query(
                "SELECT CAST(COALESCE(SUM(data_length + index_length), 0) AS SIGNED), \
                 CAST(COALESCE(SUM(data_length), 0) AS SIGNED) \
                 FROM information_schema.tables WHERE table_schema = DATABASE()",
                &[],
            )
            .await?;
        let number = |i: usize| match rows.rows.first().and_then(|r| r.get(i)) {
            Some(Value::Int(n)) => u64::try_from(*n).unwrap_or(0),
            Some(Value::Text(t)) => t.parse().unwrap_or(0),
            _ => 0,
        };
        Ok(super::SizeEstimate {
            database_bytes: number(0),
            data_bytes: number(1),
            server_dir: None,
        })
    }

    /// The server's version string.
    pub async fn server_version(&self) -> Result<String, CapError> {
        let (rows, _) = self.query("SELECT VERSION()", &[]).await?;
        Ok(match rows.rows.first().and_then(|r| r.first()) {
            Some(Value::Text(v)) => v.clone(),
            _ => "unknown".into(),
        })
    }

    /// Row counts and checksums of every table of database `name`.
    pub async fn fingerprint_database(
        &self,
        name: &str,
    ) -> Result<BTreeMap<String, TableFingerprint>, CapError> {
        let out = self
            .with_conn_to(Some(name), async |conn| {
            let columns: Vec<(String, String)> = conn.exec(
                    "SELECT c.table_name, c.column_name FROM information_schema.columns c \
                     JOIN information_schema.tables t ON t.table_schema = c.table_schema AND t.table_name = c.table_name \
                     WHERE c.table_schema = ? AND t.table_type = 'BASE TABLE' ORDER BY c.table_name, c.ordinal_position",
                    (name,),
                )
                .await
                .map_err(|e| failed("cannot list columns", e))?;
            let mut by_table: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for (t, c) in columns {
                by_table.entry(t).or_default().push(c);
            }
            let mut out = BTreeMap::new();
            for (table, cols) in by_table {
                let row_text = cols
                    .iter()
                    .map(|c| format!("COALESCE(HEX({}), 'NULL')", quote(c)))
                    .collect::<Vec<_>>()
                    .join(", ");
                let sql = format!(
                    "SELECT COUNT(*), COALESCE(SUM(CRC32(CONCAT_WS('|', {row_text}))), 0) FROM {}",
                    quote(&table)
                );
                let row: Option<(i64, String)> = conn
                    .query_first(sql)
                    .await
                    .map_err(|e| failed(&format!("cannot checksum {table}"), e))?;
                let (rows, sum) = row.unwrap_or((0, "0".into()));
                out.insert(
                    format!("{name}.{table}"),
                    TableFingerprint {
                        rows,
                        checksum: format!("crc32sum:{sum}"),
                    },
                );
            }
                Ok(out)
            })
            .await?;
        // Names are compared without the database, so a copy under another name compares equal.
        Ok(out
            .into_iter()
            .map(|(k, v)| {
                (
                    k.split_once('.').map(|(_, t)| t.to_string()).unwrap_or(k),
                    v,
                )
            })
            .collect())
    }

    fn tool_env(&self, cmd: &mut tokio::process::Command, database: &str) {
        cmd.arg(format!("--host={}", self.opts.ip_or_hostname()))
            .arg(format!("--port={}", self.opts.tcp_port()))
            .arg(format!("--user={}", self.opts.user().unwrap_or("root")))
            .arg(database);
        if let Some(pass) = self.opts.pass() {
            cmd.env("MYSQL_PWD", pass);
        }
    }

    /// Dump the bound database into `dir/dump.sql.gz` with `--single-transaction`, fingerprinting
    /// its tables first; the directory gets its final name only when complete.
    pub async fn dump_to(
        &self,
        dir: &Path,
        product_version: &str,
    ) -> Result<(Manifest, String), CapError> {
        let bin = tool(&["mariadb-dump", "mysqldump"])?;
        let partial = dir.with_extension("partial");
        let _ = tokio::fs::remove_dir_all(&partial).await;
        crate::private::create_dir_all(&partial)
            .map_err(|e| failed(&format!("cannot create {}", partial.display()), e))?;
        let tables = self.fingerprint_database(&self.database).await?;
        let server_version = self.server_version().await?;
        let mut cmd = tokio::process::Command::new(&bin);
        cmd.args([
            "--single-transaction",
            "--skip-lock-tables",
            "--routines",
            "--triggers",
            "--hex-blob",
            "--skip-comments",
        ]);
        self.tool_env(&mut cmd, &self.database);
        // Its own process group: a Ctrl-C at the terminal does not cut the dump.
        let out = cmd
            .process_group(0)
            .output()
            .await
            .map_err(|e| failed(&format!("cannot run {}", bin.display()), e))?;
        if !out.status.success() {
            let _ = tokio::fs::remove_dir_all(&partial).await;
            return Err(CapError::Failed(format!(
                "{} failed ({}): {}; nothing was recorded",
                bin.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let file = partial.join(DUMP_FILE);
        let sql = out.stdout;
        let written = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let mut gz = GzEncoder::new(crate::private::create(&file)?, Compression::default());
            gz.write_all(&sql)?;
            gz.finish()?.sync_all()
        })
        .await
        .map_err(|e| failed("compressing the dump failed", e))?;
        written.map_err(|e| failed("cannot write the dump", e))?;
        seal(
            &partial,
            dir,
            DumpFacts {
                format: "mysql-dump-gz",
                database: self.database.clone(),
                product_version: product_version.to_string(),
                server_version,
                tool: bin,
                jobs: 1,
                tables,
            },
        )
        .await
    }

    async fn admin_exec(&self, sql: &str) -> Result<(), CapError> {
        self.with_conn_to(None, async |conn| {
            conn.query_drop(sql)
                .await
                .map_err(|e| failed(&format!("`{sql}` failed"), e))
        })
        .await
    }

    async fn database_exists(&self, name: &str) -> Result<bool, CapError> {
        self.with_conn_to(None, async |conn| {
            let n: Option<i64> = conn
                .exec_first(
                    "SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name = ?",
                    (name,),
                )
                .await
                .map_err(|e| failed("cannot look up databases", e))?;
            Ok(n.unwrap_or(0) > 0)
        })
        .await
    }

    /// Put `replacement`'s tables in place of the bound database's in one atomic
    /// `RENAME TABLE` (MySQL cannot rename databases); the old tables move to `keep_as`.
    pub async fn swap_in(&self, replacement: &str, keep_as: &str) -> Result<(), CapError> {
        self.with_conn_to(None, async |conn| {
            let tables_of = async |conn: &mut Conn, db: &str| -> Result<Vec<String>, CapError> {
                conn.exec(
                    "SELECT table_name FROM information_schema.tables WHERE table_schema = ? AND table_type = 'BASE TABLE'",
                    (db,),
                )
                .await
                .map_err(|e| failed("cannot list tables", e))
            };
            let current = tables_of(conn, &self.database).await?;
            let incoming = tables_of(conn, replacement).await?;
            conn.query_drop(format!("CREATE DATABASE {}", quote(keep_as)))
                .await
                .map_err(|e| failed(&format!("cannot create `{keep_as}`"), e))?;
            let moves: Vec<String> = current
                .iter()
                .map(|t| {
                    format!(
                        "{}.{} TO {}.{}",
                        quote(&self.database),
                        quote(t),
                        quote(keep_as),
                        quote(t)
                    )
                })
                .chain(incoming.iter().map(|t| {
                    format!(
                        "{}.{} TO {}.{}",
                        quote(replacement),
                        quote(t),
                        quote(&self.database),
                        quote(t)
                    )
                }))
                .collect();
            if !moves.is_empty()
                && let Err(e) = conn
                    .query_drop(format!("RENAME TABLE {}", moves.join(", ")))
                    .await
            {
                // `RENAME TABLE` is atomic: nothing moved, so the empty `keep_as` goes too.
                let _ = conn
                    .query_drop(format!("DROP DATABASE {}", quote(keep_as)))
                    .await;
                return Err(failed("cannot swap the tables in (nothing was moved)", e));
            }
            conn.query_drop(format!("DROP DATABASE {}", quote(replacement)))
                .await
                .map_err(|e| failed(&format!("cannot drop the emptied `{replacement}`"), e))
        })
        .await
    }

    /// Rewrite a namespace column in database `target` from the bound database's name.
    pub(super) async fn rewrite_namespace(
        &self,
        target: &str,
        table: &str,
        column: &str,
    ) -> Result<u64, CapError> {
        self.with_conn_to(Some(target), async |conn| {
            let present: Option<i64> = conn
                .exec_first(
                    "SELECT COUNT(*) FROM information_schema.columns WHERE table_schema = ? AND table_name = ? AND column_name = ?",
                    (target, table, column),
                )
                .await
                .map_err(|e| failed("cannot look up the namespace column", e))?;
            if present.unwrap_or(0) == 0 {
                return Ok(0);
            }
            conn.exec_drop(
                format!(
                    "UPDATE {} SET {} = ? WHERE {} = ?",
                    quote(table),
                    quote(column),
                    quote(column)
                ),
                (target, self.database.as_str()),
            )
            .await
            .map_err(|e| failed("cannot rewrite the namespace", e))?;
            Ok(conn.affected_rows())
        })
        .await
    }

    /// The size of database `name` (its tables' data and indexes), or `None` when it does not
    /// exist.
    pub async fn database_size(&self, name: &str) -> Result<Option<u64>, CapError> {
        if !MySqlBackend::database_exists(self, name).await? {
            return Ok(None);
        }
        self.with_conn_to(None, async |conn| {
            let size: Option<Option<u64>> = conn
                .exec_first(
                    "SELECT CAST(SUM(data_length + index_length) AS UNSIGNED) FROM information_schema.tables WHERE table_schema = ?",
                    (name,),
                )
                .await
                .map_err(|e| failed(&format!("cannot size `{name}`"), e))?;
            Ok(Some(size.flatten().unwrap_or(0)))
        })
        .await
    }

    /// Drop database `name` (a scratch database of Upshift's own).
    pub async fn drop_database(&self, name: &str) -> Result<(), CapError> {
        self.admin_exec(&format!("DROP DATABASE IF EXISTS {}", quote(name)))
            .await
    }
}

impl RestoreEngine for MySqlBackend {
    async fn database_exists(&self, name: &str) -> Result<bool, CapError> {
        MySqlBackend::database_exists(self, name).await
    }

    async fn create_from_clone(&self, _target: &str, _db: &str) -> Result<(), CapError> {
        Err(CapError::Failed(
            "clone backups cannot be restored into MySQL/MariaDB".into(),
        ))
    }

    async fn create_database(&self, target: &str) -> Result<(), CapError> {
        self.admin_exec(&format!("CREATE DATABASE {}", quote(target)))
            .await
    }

    async fn load_dump(&self, target: &str, dir: &Path) -> Result<(), CapError> {
        let file = dir.join(DUMP_FILE);
        let sql = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
            let mut out = Vec::new();
            GzDecoder::new(std::fs::File::open(&file)?).read_to_end(&mut out)?;
            Ok(out)
        })
        .await
        .map_err(|e| failed("reading the dump failed", e))?
        .map_err(|e| failed("cannot read the dump", e))?;
        let bin = tool(&["mariadb", "mysql"])?;
        let mut cmd = tokio::process::Command::new(&bin);
        self.tool_env(&mut cmd, target);
        let mut child = cmd
            .process_group(0)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| failed(&format!("cannot run {}", bin.display()), e))?;
        if let Some(mut stdin) = child.stdin.take() {
            use tokio::io::AsyncWriteExt;
            stdin
                .write_all(&sql)
                .await
                .map_err(|e| failed("cannot feed the dump", e))?;
        }
        let out = child
            .wait_with_output()
            .await
            .map_err(|e| failed("the restore failed", e))?;
        super::tool_outcome("restoring the dump failed", &out)
    }

    async fn drop_database(&self, name: &str) -> Result<(), CapError> {
        MySqlBackend::drop_database(self, name).await
    }
}

/// A `PROCESSLIST.HOST` value as an address and port: `127.0.0.1:50112`, `[::1]:50112`, or
/// `localhost:50112` (a loopback client whose name the server resolved). `None` for a local
/// socket (`localhost`) or anything else.
fn client_of(host: &str) -> Option<(std::net::IpAddr, u16)> {
    if let Ok(addr) = host.parse::<std::net::SocketAddr>() {
        return Some((addr.ip(), addr.port()));
    }
    let (name, port) = host.rsplit_once(':')?;
    let port = port.parse().ok()?;
    match name {
        "localhost" => Some((std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), port)),
        other => Some((other.parse().ok()?, port)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[tokio::test]
    async fn the_statement_limit_is_set_last_and_cut_to_the_deadline() {
        assert_eq!(
            session_setup(true).expect("no deadline"),
            [
                "SET SESSION lock_wait_timeout = 30, SESSION innodb_lock_wait_timeout = 30",
                "SET SESSION max_statement_time = 120.000",
            ]
        );
        assert_eq!(
            session_setup(false).expect("no deadline")[1],
            "SET SESSION max_execution_time = 120000"
        );
        // 4.2 s left: the server's limits end half a second after the deadline, lock waits
        // rounded up to whole seconds, never before it.
        let setup =
            crate::guard::with_deadline(Instant::now() + Duration::from_millis(4200), async {
                session_setup(true)
            })
            .await
            .expect("before the deadline");
        assert_eq!(
            setup[0],
            "SET SESSION lock_wait_timeout = 5, SESSION innodb_lock_wait_timeout = 5"
        );
        let secs: f64 = setup[1]
            .trim_start_matches("SET SESSION max_statement_time = ")
            .parse()
            .expect("seconds");
        assert!((4.6..=4.7).contains(&secs), "{secs}");
        // At the deadline the call is not made.
        let late = crate::guard::with_deadline(Instant::now(), async { session_setup(true) }).await;
        assert!(late.is_err_and(|e| e.to_string().contains("deadline")));
    }
}

#[cfg(test)]
mod client_tests {
    use super::client_of;

    #[test]
    fn processlist_hosts_read_as_addresses() {
        assert_eq!(
            client_of("127.0.0.1:50112"),
            Some(("127.0.0.1".parse().expect("ip"), 50112))
        );
        assert_eq!(
            client_of("localhost:4000"),
            Some(("127.0.0.1".parse().expect("ip"), 4000))
        );
        assert_eq!(client_of("[::1]:7"), Some(("::1".parse().expect("ip"), 7)));
        assert_eq!(client_of("localhost"), None);
    }
}
