//! The state in SQLite (`<data>/state.db`, WAL mode): its schema and how statements run. The
//! connection is only touched under `spawn_blocking`, never on an async worker thread.
//!
//! A full disk must not stop the journal from recording a failure: beside the database a
//! reserve file ([`RESERVE_FILE`], [`RESERVE_BYTES`]) holds space that is released when a
//! statement fails with "disk full" (the statement is then tried once more), and made again
//! once there is room.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, ToSql, params_from_iter};

use crate::queue::WorkQueue;
use crate::store::{Dialect, Engine, Store, Value};
use crate::{SCHEMA, StateError};

/// The tables (schema [`SCHEMA`]; `PRAGMA user_version` says which a file has).
const SCHEMA_SQL: &str = "
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY, instance TEXT NOT NULL, product TEXT NOT NULL, adapter_digest TEXT NOT NULL,
    kind TEXT NOT NULL, from_version TEXT NOT NULL, to_version TEXT NOT NULL, status TEXT NOT NULL,
    started_at TEXT NOT NULL, finished_at TEXT, plan_json TEXT NOT NULL, message TEXT);
CREATE INDEX IF NOT EXISTS runs_instance ON runs (instance, started_at);
CREATE TABLE IF NOT EXISTS steps (
    run_id TEXT NOT NULL REFERENCES runs (id), seq INTEGER NOT NULL, phase TEXT NOT NULL,
    step_id TEXT NOT NULL, title TEXT NOT NULL, status TEXT NOT NULL, started_at TEXT NOT NULL,
    started_ms INTEGER NOT NULL, finished_at TEXT, duration_ms INTEGER, output TEXT, error TEXT,
    holder TEXT, PRIMARY KEY (run_id, phase, seq));
CREATE TABLE IF NOT EXISTS backups (
    id TEXT PRIMARY KEY, instance TEXT NOT NULL, binding TEXT NOT NULL, run_id TEXT, method TEXT NOT NULL,
    location TEXT NOT NULL, source_database TEXT NOT NULL, product_version TEXT NOT NULL,
    created_at TEXT NOT NULL, size_bytes INTEGER, sha256 TEXT, valid INTEGER NOT NULL, note TEXT);
CREATE INDEX IF NOT EXISTS backups_instance ON backups (instance, created_at);
CREATE TABLE IF NOT EXISTS leases (
    instance TEXT PRIMARY KEY, holder TEXT NOT NULL, token INTEGER NOT NULL, expires_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS artifacts (
    adapter_digest TEXT NOT NULL, engine TEXT NOT NULL, sha256 TEXT NOT NULL, recorded_at TEXT NOT NULL,
    PRIMARY KEY (adapter_digest, engine));
CREATE TABLE IF NOT EXISTS audit_anchors (
    log TEXT PRIMARY KEY, records INTEGER NOT NULL, head TEXT NOT NULL, anchored_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS kept (
    run_id TEXT NOT NULL, instance TEXT NOT NULL, binding TEXT NOT NULL, container_id TEXT NOT NULL,
    replaced_by TEXT NOT NULL, image TEXT NOT NULL, kept_at TEXT NOT NULL, released_at TEXT,
    PRIMARY KEY (run_id, container_id));
CREATE TABLE IF NOT EXISTS pending (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, location TEXT NOT NULL, instance TEXT NOT NULL,
    binding TEXT NOT NULL, run_id TEXT, recorded_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS audit_index (
    log TEXT NOT NULL, seq INTEGER NOT NULL, segment INTEGER NOT NULL, byte_offset INTEGER NOT NULL,
    run_id TEXT, denied INTEGER NOT NULL, PRIMARY KEY (log, seq));
CREATE INDEX IF NOT EXISTS audit_index_run ON audit_index (log, run_id, seq);
";

/// The reserve file's name, beside the state database (in the data directory).
pub const RESERVE_FILE: &str = "state.db.reserve";
/// How much space the reserve holds: enough for a run's remaining journal writes.
pub const RESERVE_BYTES: u64 = 4 << 20;

/// Space held for the journal on the disk of the state database.
#[derive(Debug)]
struct Reserve {
    path: PathBuf,
    /// Whether it was released (and so is to be made again once there is room).
    released: AtomicBool,
}

impl Reserve {
    fn beside(database: &Path) -> Reserve {
        Reserve {
            path: database.with_file_name(RESERVE_FILE),
            released: AtomicBool::new(false),
        }
    }

    /// Make the reserve file unless it is there; only when the disk has room for it and as
    /// much again, so making it never fills the disk. Best effort: returns whether it is there.
    fn ensure(&self) -> bool {
        if std::fs::metadata(&self.path).is_ok_and(|m| m.len() >= RESERVE_BYTES) {
            return true;
        }
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let room = nix::sys::statvfs::statvfs(dir)
            .map(|s| s.blocks_available().saturating_mul(s.fragment_size()))
            .unwrap_or(0);
        if room < 2 * RESERVE_BYTES {
            return false;
        }
        let made = (|| -> std::io::Result<()> {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&self.path)?;
            // Written, not sparse: the blocks must really be held.
            let zeros = vec![0u8; 1 << 20];
            for _ in 0..(RESERVE_BYTES >> 20) {
                file.write_all(&zeros)?;
            }
            file.sync_all()
        })();
        if made.is_err() {
            let _ = std::fs::remove_file(&self.path);
            return false;
        }
        self.released.store(false, Ordering::Relaxed);
        true
    }

    /// Give the reserved space back to the file system; whether anything was freed.
    fn release(&self) -> bool {
        let freed = std::fs::remove_file(&self.path).is_ok();
        self.released.store(true, Ordering::Relaxed);
        freed
    }
}

/// Whether SQLite failed because the disk (or the file system) is full.
fn disk_full(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DiskFull)
}

/// Run `f`; when it fails because the disk is full, release the reserve and run it once more.
/// After a success, a released reserve is made again if there is room.
fn with_reserve<T>(reserve: &Reserve, f: impl Fn() -> rusqlite::Result<T>) -> rusqlite::Result<T> {
    let out = match f() {
        Err(e) if disk_full(&e) && reserve.release() => f(),
        other => other,
    };
    if out.is_ok() && reserve.released.load(Ordering::Relaxed) {
        reserve.ensure();
    }
    out
}

/// How SQLite's SQL is written: plain table names, `?n` parameters, and no row locks (SQLite runs
/// one write at a time).
pub(crate) const DIALECT: Dialect = Dialect {
    tables: "",
    param: '?',
    now_ms: "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
    share: "",
};

/// The SQLite engine: one connection, used by one blocking task at a time.
pub struct Sqlite {
    at: String,
    conn: Arc<Mutex<Connection>>,
    reserve: Arc<Reserve>,
}

/// The SQLite state store.
pub type SqliteState = Store<Sqlite>;

/// Open (creating or migrating) the state database at `path`.
pub async fn open(path: &Path) -> Result<SqliteState, StateError> {
    let at = path.display().to_string();
    let reserve = Arc::new(Reserve::beside(path));
    let conn = blocking(&at, {
        let (path, at, reserve) = (path.to_path_buf(), at.clone(), reserve.clone());
        move || {
            let conn = open_blocking(&path, &at)?;
            reserve.ensure();
            Ok::<_, StateError>(conn)
        }
    })
    .await??;
    Ok(Store::new(Sqlite {
        at,
        conn: Arc::new(Mutex::new(conn)),
        reserve,
    }))
}

/// How long a statement waits for another process's write to the state database before
/// SQLite reports it busy (several commands started at once on one data directory wait their
/// turn instead of failing with "database is locked").
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

fn open_blocking(path: &Path, at: &str) -> Result<Connection, StateError> {
    private(path).map_err(|source| StateError::Private {
        at: at.to_string(),
        source,
    })?;
    // Setting up a brand-new file takes locks SQLite does not always wait for through its busy
    // handler (switching to WAL, the first writer of the WAL index): those few steps are
    // retried until BUSY_TIMEOUT has passed.
    let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
    let mut pause = std::time::Duration::from_millis(5);
    loop {
        match set_up(path) {
            Err(e) if is_busy(&e) && std::time::Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(std::time::Duration::from_millis(200));
            }
            Err(Setup::Sqlite(source)) => {
                return Err(StateError::Sqlite {
                    at: at.to_string(),
                    source,
                });
            }
            Err(Setup::Newer(found)) => {
                return Err(StateError::Newer {
                    at: at.to_string(),
                    found,
                });
            }
            Ok(conn) => return Ok(conn),
        }
    }
}

/// Why setting up the connection failed.
enum Setup {
    Sqlite(rusqlite::Error),
    Newer(i64),
}

impl From<rusqlite::Error> for Setup {
    fn from(e: rusqlite::Error) -> Setup {
        Setup::Sqlite(e)
    }
}

fn is_busy(e: &Setup) -> bool {
    matches!(
        e,
        Setup::Sqlite(rusqlite::Error::SqliteFailure(f, _))
            if matches!(f.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// Open the connection, switch to WAL and create or migrate the schema: under one
/// `BEGIN IMMEDIATE` transaction, so two processes opening a new file at once never both
/// create it, and the second finds the first's schema.
fn set_up(path: &Path) -> Result<Connection, Setup> {
    let mut conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        // Another connection held the file in a mode that cannot change now: try again.
        return Err(Setup::Sqlite(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            Some(format!("journal mode is {mode}, not wal")),
        )));
    }
    conn.pragma_update(None, "foreign_keys", "ON")?;
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > SCHEMA {
        return Err(Setup::Newer(version));
    }
    if version < SCHEMA {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > SCHEMA {
            return Err(Setup::Newer(version));
        }
        if version < SCHEMA {
            tx.execute_batch(SCHEMA_SQL)?;
            // Schema 6: who journaled each step (an older file's steps table lacks it).
            let has_holder: bool = tx.query_row(
                "SELECT EXISTS (SELECT 1 FROM pragma_table_info('steps') WHERE name = 'holder')",
                [],
                |r| r.get(0),
            )?;
            if !has_holder {
                tx.execute_batch("ALTER TABLE steps ADD COLUMN holder TEXT")?;
            }
            tx.pragma_update(None, "user_version", SCHEMA)?;
        }
        tx.commit()?;
    }
    Ok(conn)
}

/// Create the database file 0600 (or make an existing one and its `-wal`/`-shm` 0600) before
/// SQLite opens it, whatever the umask: SQLite creates the `-wal` and `-shm` files with the
/// database file's own mode.
fn private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    for suffix in ["-wal", "-shm"] {
        let mut side = path.as_os_str().to_owned();
        side.push(suffix);
        let side = std::path::PathBuf::from(side);
        if side.exists() {
            std::fs::set_permissions(&side, std::fs::Permissions::from_mode(0o600))?;
        }
    }
    Ok(())
}

/// Run `work` on the blocking pool.
async fn blocking<T: Send + 'static>(
    at: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, StateError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| StateError::Worker {
            at: at.to_string(),
            why: e.to_string(),
        })
}

impl Sqlite {
    /// Run `f` on the connection, on the blocking pool.
    /// A statement that fails because the disk is full is tried once more after the reserve
    /// is released (see [`Reserve`]).
    async fn with<T: Send + 'static>(
        &self,
        f: impl Fn(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StateError> {
        let (conn, reserve) = (self.conn.clone(), self.reserve.clone());
        blocking(&self.at, move || {
            let conn = conn.lock().unwrap_or_else(PoisonError::into_inner);
            with_reserve(&reserve, || f(&conn))
        })
        .await?
        .map_err(|source| StateError::Sqlite {
            at: self.at.clone(),
            source,
        })
    }
}

impl ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Value::Null => ToSqlOutput::from(rusqlite::types::Null),
            Value::Int(i) => ToSqlOutput::from(*i),
            Value::Text(s) | Value::Other(s) => ToSqlOutput::from(s.as_str()),
            Value::Bool(b) => ToSqlOutput::from(*b),
        })
    }
}

fn value(v: ValueRef<'_>) -> Value {
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Int(i),
        ValueRef::Text(t) => match std::str::from_utf8(t) {
            Ok(s) => Value::Text(s.to_string()),
            Err(_) => Value::Other(format!("{} bytes of text that is not UTF-8", t.len())),
        },
        ValueRef::Real(f) => Value::Other(format!("{f} (a real)")),
        ValueRef::Blob(b) => Value::Other(format!("a blob of {} bytes", b.len())),
    }
}

impl Engine for Sqlite {
    const DIALECT: Dialect = DIALECT;

    fn at(&self) -> &str {
        &self.at
    }

    async fn execute(&self, sql: String, params: Vec<Value>) -> Result<u64, StateError> {
        self.with(move |c| {
            let n = c.prepare_cached(&sql)?.execute(params_from_iter(&params))?;
            Ok(u64::try_from(n).unwrap_or(u64::MAX))
        })
        .await
    }

    async fn query(&self, sql: String, params: Vec<Value>) -> Result<Vec<Vec<Value>>, StateError> {
        self.with(move |c| {
            let mut stmt = c.prepare_cached(&sql)?;
            let columns = stmt.column_count();
            stmt.query_map(params_from_iter(&params), |row| {
                (0..columns)
                    .map(|i| row.get_ref(i).map(value))
                    .collect::<rusqlite::Result<Vec<_>>>()
            })?
            .collect()
        })
        .await
    }

    fn queue(&self) -> Option<&dyn WorkQueue> {
        None
    }
}
