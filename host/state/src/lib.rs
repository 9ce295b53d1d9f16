//! What the host remembers: runs, their steps (journaled before and after each one runs), the
//! backup catalog, the instance leases and the work queue, in SQLite (`<data>/state.db`, WAL
//! mode) or in a shared PostgreSQL database ([`postgres`]) for agents on several machines.

pub mod lease;
pub mod postgres;
pub mod queue;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::lease::{LeaseError, LeaseRows};
use serde::{Deserialize, Serialize};

/// The schema version this build writes.
const SCHEMA: i64 = 2;

/// How a run ended (or that it is still running).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Under way, or the host died while it ran.
    Running,
    /// Done and verified.
    Succeeded,
    /// Refused by the product's rules.
    Refused,
    /// Failed and rolled back.
    RolledBack,
    /// Failed and not rolled back: an operator is needed.
    Failed,
}

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// Journaled before running; still running or outcome unknown.
    Started,
    /// Done.
    Succeeded,
    /// Failed.
    Failed,
    /// Not run.
    Skipped,
    /// Undone by a rollback.
    RolledBack,
}

macro_rules! text_enum {
    ($ty:ident { $($variant:ident => $text:literal),* $(,)? }) => {
        impl $ty {
            /// The stored text.
            pub fn as_str(self) -> &'static str {
                match self { $($ty::$variant => $text),* }
            }

            pub(crate) fn parse(text: &str) -> Option<$ty> {
                match text { $($text => Some($ty::$variant),)* _ => None }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

text_enum!(RunStatus { Running => "running", Succeeded => "succeeded", Refused => "refused", RolledBack => "rolled_back", Failed => "failed" });
text_enum!(StepStatus { Started => "started", Succeeded => "succeeded", Failed => "failed", Skipped => "skipped", RolledBack => "rolled_back" });

/// A run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    /// Sortable id.
    pub id: String,
    /// Instance.
    pub instance: String,
    /// Product.
    pub product: String,
    /// Adapter sha256.
    pub adapter_digest: String,
    /// `upgrade` | `restore` | `backup`.
    pub kind: String,
    /// Version before.
    pub from_version: String,
    /// Version asked for.
    pub to_version: String,
    /// Status.
    pub status: RunStatus,
    /// RFC 3339.
    pub started_at: String,
    /// RFC 3339.
    pub finished_at: Option<String>,
    /// The plan and what was recorded before it ran.
    pub plan_json: String,
    /// Why it ended so.
    pub message: Option<String>,
}

/// A step of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Run.
    pub run_id: String,
    /// Position within its phase.
    pub seq: u32,
    /// Step id.
    pub step_id: String,
    /// Title.
    pub title: String,
    /// `forward` | `rollback`.
    pub phase: String,
    /// Status.
    pub status: StepStatus,
    /// RFC 3339.
    pub started_at: String,
    /// RFC 3339.
    pub finished_at: Option<String>,
    /// Duration.
    pub duration_ms: Option<u64>,
    /// Summary.
    pub output: Option<String>,
    /// Error.
    pub error: Option<String>,
}

/// A catalogued backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupRecord {
    /// Short id (`bk-…`).
    pub id: String,
    /// Instance.
    pub instance: String,
    /// Binding.
    pub binding: String,
    /// The run that took it.
    pub run_id: Option<String>,
    /// `clone` | `dump` | `snapshot`.
    pub method: String,
    /// Database name or file path.
    pub location: String,
    /// The database it was taken from.
    pub source_database: String,
    /// Product version the data was at.
    pub product_version: String,
    /// RFC 3339.
    pub created_at: String,
    /// Size.
    pub size_bytes: Option<u64>,
    /// sha256 of the archive (dumps).
    pub sha256: Option<String>,
    /// False once known to be damaged or incomplete.
    pub valid: bool,
    /// Free text.
    pub note: Option<String>,
}

/// The state database could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// SQLite failed.
    #[error("state database {path}: {source}")]
    Sqlite {
        /// The file.
        path: PathBuf,
        /// The error.
        source: rusqlite::Error,
    },
    /// Written by a newer upshift.
    #[error(
        "state database {path} is newer (schema {found}) than this upshift (schema {SCHEMA}); upgrade upshift"
    )]
    Newer {
        /// The file.
        path: PathBuf,
        /// Its schema version.
        found: i64,
    },
    /// PostgreSQL failed.
    #[error("state database {url}: {source}")]
    Postgres {
        /// The URL, password hidden.
        url: String,
        /// The error.
        source: ::postgres::Error,
    },
    /// The connection was closed.
    #[error("the state database connection is closed")]
    Closed,
    /// A stored value this build does not understand.
    #[error("state database {path}: unexpected value `{value}` in {column}")]
    Value {
        /// The file.
        path: PathBuf,
        /// Column.
        column: &'static str,
        /// Value.
        value: String,
    },
}

/// The SQLite state store. Thread-safe.
pub struct SqliteState {
    path: PathBuf,
    conn: Mutex<Connection>,
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

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
    PRIMARY KEY (run_id, phase, seq));
CREATE TABLE IF NOT EXISTS backups (
    id TEXT PRIMARY KEY, instance TEXT NOT NULL, binding TEXT NOT NULL, run_id TEXT, method TEXT NOT NULL,
    location TEXT NOT NULL, source_database TEXT NOT NULL, product_version TEXT NOT NULL,
    created_at TEXT NOT NULL, size_bytes INTEGER, sha256 TEXT, valid INTEGER NOT NULL, note TEXT);
CREATE INDEX IF NOT EXISTS backups_instance ON backups (instance, created_at);
CREATE TABLE IF NOT EXISTS leases (
    instance TEXT PRIMARY KEY, holder TEXT NOT NULL, token INTEGER NOT NULL, expires_ms INTEGER NOT NULL);
";

impl SqliteState {
    /// Open (creating or migrating) the state database.
    pub fn open(path: &Path) -> Result<SqliteState, StateError> {
        let sql = |source| StateError::Sqlite {
            path: path.to_path_buf(),
            source,
        };
        let conn = Connection::open(path).map_err(sql)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(sql)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(sql)?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(sql)?;
        if version > SCHEMA {
            return Err(StateError::Newer {
                path: path.to_path_buf(),
                found: version,
            });
        }
        if version < SCHEMA {
            conn.execute_batch(SCHEMA_SQL).map_err(sql)?;
            conn.pragma_update(None, "user_version", SCHEMA)
                .map_err(sql)?;
        }
        Ok(SqliteState {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StateError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&conn).map_err(|source| StateError::Sqlite {
            path: self.path.clone(),
            source,
        })
    }

    /// A new sortable run id.
    pub fn new_run_id() -> String {
        uuid::Uuid::now_v7().simple().to_string()
    }

    /// A new short backup id (`bk-` and 12 hex digits).
    pub fn new_backup_id() -> String {
        let hex = uuid::Uuid::now_v7().simple().to_string();
        // The first 12 digits are milliseconds; the random tail keeps ids unique within one.
        format!("bk-{}{}", &hex[6..12], &hex[26..32])
    }

    /// Record a new run.
    pub fn insert_run(&self, r: &RunRecord) -> Result<(), StateError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO runs (id, instance, product, adapter_digest, kind, from_version, to_version, status, started_at, finished_at, plan_json, message)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                params![r.id, r.instance, r.product, r.adapter_digest, r.kind, r.from_version, r.to_version, r.status.as_str(), r.started_at, r.finished_at, r.plan_json, r.message],
            )
            .map(|_| ())
        })
    }

    /// Record how a run ended.
    pub fn finish_run(
        &self,
        run_id: &str,
        status: RunStatus,
        message: Option<&str>,
    ) -> Result<(), StateError> {
        self.with(|c| {
            c.execute(
                "UPDATE runs SET status = ?2, message = ?3, finished_at = ?4 WHERE id = ?1",
                params![run_id, status.as_str(), message, now()],
            )
            .map(|_| ())
        })
    }

    /// Journal a step before it runs.
    pub fn step_started(
        &self,
        run_id: &str,
        seq: u32,
        step_id: &str,
        title: &str,
        phase: &str,
    ) -> Result<(), StateError> {
        let ms = chrono::Utc::now().timestamp_millis();
        self.with(|c| {
            c.execute(
                "INSERT OR REPLACE INTO steps (run_id, seq, phase, step_id, title, status, started_at, started_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, 'started', ?6, ?7)",
                params![run_id, seq, phase, step_id, title, now(), ms],
            )
            .map(|_| ())
        })
    }

    /// Journal how a step ended.
    pub fn step_finished(
        &self,
        run_id: &str,
        seq: u32,
        phase: &str,
        status: StepStatus,
        output: Option<&str>,
        error: Option<&str>,
    ) -> Result<(), StateError> {
        let ms = chrono::Utc::now().timestamp_millis();
        self.with(|c| {
            c.execute(
                "UPDATE steps SET status = ?4, output = ?5, error = ?6, finished_at = ?7, duration_ms = max(0, ?8 - started_ms)
                 WHERE run_id = ?1 AND seq = ?2 AND phase = ?3",
                params![run_id, seq, phase, status.as_str(), output, error, now(), ms],
            )
            .map(|_| ())
        })
    }

    fn run_from(&self, row: &Row<'_>) -> rusqlite::Result<(RunRecord, String)> {
        let status: String = row.get(7)?;
        Ok((
            RunRecord {
                id: row.get(0)?,
                instance: row.get(1)?,
                product: row.get(2)?,
                adapter_digest: row.get(3)?,
                kind: row.get(4)?,
                from_version: row.get(5)?,
                to_version: row.get(6)?,
                status: RunStatus::parse(&status).unwrap_or(RunStatus::Failed),
                started_at: row.get(8)?,
                finished_at: row.get(9)?,
                plan_json: row.get(10)?,
                message: row.get(11)?,
            },
            status,
        ))
    }

    fn checked_run(&self, (run, status): (RunRecord, String)) -> Result<RunRecord, StateError> {
        if RunStatus::parse(&status).is_none() {
            return Err(StateError::Value {
                path: self.path.clone(),
                column: "runs.status",
                value: status,
            });
        }
        Ok(run)
    }

    /// One run.
    pub fn run(&self, run_id: &str) -> Result<Option<RunRecord>, StateError> {
        let found = self.with(|c| {
            c.query_row("SELECT * FROM runs WHERE id = ?1", [run_id], |r| {
                self.run_from(r)
            })
            .optional()
        })?;
        found.map(|r| self.checked_run(r)).transpose()
    }

    /// Runs, newest first.
    pub fn runs(&self, instance: Option<&str>, limit: usize) -> Result<Vec<RunRecord>, StateError> {
        let rows = self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT * FROM runs WHERE (?1 IS NULL OR instance = ?1) ORDER BY started_at DESC, id DESC LIMIT ?2",
            )?;
            stmt.query_map(params![instance, limit as i64], |r| self.run_from(r))?
                .collect::<rusqlite::Result<Vec<_>>>()
        })?;
        rows.into_iter().map(|r| self.checked_run(r)).collect()
    }

    /// A run's steps: forward ones, then rollback ones, each in order.
    pub fn steps(&self, run_id: &str) -> Result<Vec<StepRecord>, StateError> {
        let rows = self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT run_id, seq, step_id, title, phase, status, started_at, finished_at, duration_ms, output, error
                 FROM steps WHERE run_id = ?1 ORDER BY phase = 'rollback', seq",
            )?;
            stmt.query_map([run_id], |r| {
                let status: String = r.get(5)?;
                let duration: Option<i64> = r.get(8)?;
                Ok((
                    StepRecord {
                        run_id: r.get(0)?,
                        seq: r.get(1)?,
                        step_id: r.get(2)?,
                        title: r.get(3)?,
                        phase: r.get(4)?,
                        status: StepStatus::parse(&status).unwrap_or(StepStatus::Failed),
                        started_at: r.get(6)?,
                        finished_at: r.get(7)?,
                        duration_ms: duration.and_then(|d| u64::try_from(d).ok()),
                        output: r.get(9)?,
                        error: r.get(10)?,
                    },
                    status,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()
        })?;
        rows.into_iter()
            .map(|(step, status)| match StepStatus::parse(&status) {
                Some(_) => Ok(step),
                None => Err(StateError::Value {
                    path: self.path.clone(),
                    column: "steps.status",
                    value: status,
                }),
            })
            .collect()
    }

    /// Catalogue a backup.
    pub fn insert_backup(&self, b: &BackupRecord) -> Result<(), StateError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO backups (id, instance, binding, run_id, method, location, source_database, product_version, created_at, size_bytes, sha256, valid, note)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
                params![
                    b.id, b.instance, b.binding, b.run_id, b.method, b.location, b.source_database, b.product_version,
                    b.created_at, b.size_bytes.map(|s| s as i64), b.sha256, b.valid, b.note
                ],
            )
            .map(|_| ())
        })
    }

    /// Mark a backup invalid (it failed verification) with the reason.
    pub fn mark_invalid(&self, id: &str, note: &str) -> Result<(), StateError> {
        self.with(|c| {
            c.execute(
                "UPDATE backups SET valid = 0, note = ?2 WHERE id = ?1",
                params![id, note],
            )
            .map(|_| ())
        })
    }

    fn backup_from(row: &Row<'_>) -> rusqlite::Result<BackupRecord> {
        let size: Option<i64> = row.get(9)?;
        Ok(BackupRecord {
            id: row.get(0)?,
            instance: row.get(1)?,
            binding: row.get(2)?,
            run_id: row.get(3)?,
            method: row.get(4)?,
            location: row.get(5)?,
            source_database: row.get(6)?,
            product_version: row.get(7)?,
            created_at: row.get(8)?,
            size_bytes: size.and_then(|s| u64::try_from(s).ok()),
            sha256: row.get(10)?,
            valid: row.get(11)?,
            note: row.get(12)?,
        })
    }

    /// One backup.
    pub fn backup(&self, id: &str) -> Result<Option<BackupRecord>, StateError> {
        self.with(|c| {
            c.query_row(
                "SELECT * FROM backups WHERE id = ?1",
                [id],
                Self::backup_from,
            )
            .optional()
        })
    }

    /// Backups, newest first.
    pub fn backups(&self, instance: Option<&str>) -> Result<Vec<BackupRecord>, StateError> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT * FROM backups WHERE (?1 IS NULL OR instance = ?1) ORDER BY created_at DESC, id DESC",
            )?;
            stmt.query_map([instance], Self::backup_from)?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
    }
}

/// A state store's failure under a lease operation (shared by the SQLite and PostgreSQL stores).
pub(crate) fn lease_store(e: StateError) -> LeaseError {
    LeaseError::Store(e.to_string())
}

impl LeaseRows for SqliteState {
    fn try_take(
        &self,
        instance: &str,
        holder: &str,
        expires: i64,
        now: i64,
    ) -> Result<Option<i64>, LeaseError> {
        self.with(|c| {
            c.query_row(
                "INSERT INTO leases (instance, holder, token, expires_ms) VALUES (?1, ?2, 1, ?3) \
                 ON CONFLICT (instance) DO UPDATE SET holder = excluded.holder, token = leases.token + 1, \
                 expires_ms = excluded.expires_ms WHERE leases.expires_ms < ?4 OR leases.holder = ?2 \
                 RETURNING token",
                params![instance, holder, expires, now],
                |r| r.get::<_, i64>(0),
            )
            .optional()
        })
        .map_err(lease_store)
    }

    fn try_extend(
        &self,
        instance: &str,
        token: i64,
        expires: i64,
        now: i64,
    ) -> Result<bool, LeaseError> {
        self.with(|c| {
            c.execute(
                "UPDATE leases SET expires_ms = ?1 WHERE instance = ?2 AND token = ?3 AND expires_ms >= ?4",
                params![expires, instance, token, now],
            )
        })
        .map(|n| n == 1)
        .map_err(lease_store)
    }

    fn try_move(
        &self,
        instance: &str,
        token: i64,
        holder: &str,
        expires: i64,
    ) -> Result<Option<i64>, LeaseError> {
        self.with(|c| {
            c.query_row(
                "UPDATE leases SET holder = ?1, token = token + 1, expires_ms = ?2 \
                 WHERE instance = ?3 AND token = ?4 RETURNING token",
                params![holder, expires, instance, token],
                |r| r.get::<_, i64>(0),
            )
            .optional()
        })
        .map_err(lease_store)
    }

    fn row(&self, instance: &str) -> Result<Option<(String, i64, i64)>, LeaseError> {
        self.with(|c| {
            c.query_row(
                "SELECT holder, token, expires_ms FROM leases WHERE instance = ?1",
                params![instance],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
        })
        .map_err(lease_store)
    }

    fn delete(&self, instance: &str, token: i64) -> Result<(), LeaseError> {
        self.with(|c| {
            c.execute(
                "DELETE FROM leases WHERE instance = ?1 AND token = ?2",
                params![instance, token],
            )
        })
        .map(|_| ())
        .map_err(lease_store)
    }
}

/// Where the state lives: SQLite on this machine (default), or PostgreSQL shared by agents on
/// several machines (`--state postgres://…`).
pub enum StateStore {
    /// `<data>/state.db`.
    Sqlite(SqliteState),
    /// A shared PostgreSQL database.
    Postgres(crate::postgres::PgState),
}

macro_rules! on_store {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            StateStore::Sqlite($s) => $e,
            StateStore::Postgres($s) => $e,
        }
    };
}

impl StateStore {
    /// Open the SQLite state database.
    pub fn open(path: &Path) -> Result<StateStore, StateError> {
        SqliteState::open(path).map(StateStore::Sqlite)
    }

    /// Open the state in PostgreSQL.
    pub fn open_postgres(url: &str) -> Result<StateStore, StateError> {
        crate::postgres::PgState::open(url).map(StateStore::Postgres)
    }

    /// The work queue agents claim from (PostgreSQL state only).
    pub fn queue(&self) -> Option<&dyn crate::queue::WorkQueue> {
        match self {
            StateStore::Sqlite(_) => None,
            StateStore::Postgres(p) => Some(p),
        }
    }

    /// A new sortable run id.
    pub fn new_run_id() -> String {
        SqliteState::new_run_id()
    }

    /// A new short backup id (`bk-` and 12 hex digits).
    pub fn new_backup_id() -> String {
        SqliteState::new_backup_id()
    }

    /// Record a new run.
    pub fn insert_run(&self, r: &RunRecord) -> Result<(), StateError> {
        on_store!(self, s => s.insert_run(r))
    }

    /// Record how a run ended.
    pub fn finish_run(
        &self,
        run_id: &str,
        status: RunStatus,
        message: Option<&str>,
    ) -> Result<(), StateError> {
        on_store!(self, s => s.finish_run(run_id, status, message))
    }

    /// Journal a step before it runs.
    pub fn step_started(
        &self,
        run_id: &str,
        seq: u32,
        step_id: &str,
        title: &str,
        phase: &str,
    ) -> Result<(), StateError> {
        on_store!(self, s => s.step_started(run_id, seq, step_id, title, phase))
    }

    /// Journal how a step ended.
    pub fn step_finished(
        &self,
        run_id: &str,
        seq: u32,
        phase: &str,
        status: StepStatus,
        output: Option<&str>,
        error: Option<&str>,
    ) -> Result<(), StateError> {
        on_store!(self, s => s.step_finished(run_id, seq, phase, status, output, error))
    }

    /// One run.
    pub fn run(&self, run_id: &str) -> Result<Option<RunRecord>, StateError> {
        on_store!(self, s => s.run(run_id))
    }

    /// Runs, newest first.
    pub fn runs(&self, instance: Option<&str>, limit: usize) -> Result<Vec<RunRecord>, StateError> {
        on_store!(self, s => s.runs(instance, limit))
    }

    /// A run's steps: forward ones, then rollback ones, each in order.
    pub fn steps(&self, run_id: &str) -> Result<Vec<StepRecord>, StateError> {
        on_store!(self, s => s.steps(run_id))
    }

    /// Catalogue a backup.
    pub fn insert_backup(&self, b: &BackupRecord) -> Result<(), StateError> {
        on_store!(self, s => s.insert_backup(b))
    }

    /// Mark a backup invalid with the reason.
    pub fn mark_invalid(&self, id: &str, note: &str) -> Result<(), StateError> {
        on_store!(self, s => s.mark_invalid(id, note))
    }

    /// One backup.
    pub fn backup(&self, id: &str) -> Result<Option<BackupRecord>, StateError> {
        on_store!(self, s => s.backup(id))
    }

    /// Backups, newest first.
    pub fn backups(&self, instance: Option<&str>) -> Result<Vec<BackupRecord>, StateError> {
        on_store!(self, s => s.backups(instance))
    }
}

impl LeaseRows for StateStore {
    fn try_take(
        &self,
        instance: &str,
        holder: &str,
        expires: i64,
        now: i64,
    ) -> Result<Option<i64>, LeaseError> {
        on_store!(self, s => s.try_take(instance, holder, expires, now))
    }

    fn try_extend(
        &self,
        instance: &str,
        token: i64,
        expires: i64,
        now: i64,
    ) -> Result<bool, LeaseError> {
        on_store!(self, s => s.try_extend(instance, token, expires, now))
    }

    fn try_move(
        &self,
        instance: &str,
        token: i64,
        holder: &str,
        expires: i64,
    ) -> Result<Option<i64>, LeaseError> {
        on_store!(self, s => s.try_move(instance, token, holder, expires))
    }

    fn row(&self, instance: &str) -> Result<Option<(String, i64, i64)>, LeaseError> {
        on_store!(self, s => s.row(instance))
    }

    fn delete(&self, instance: &str, token: i64) -> Result<(), LeaseError> {
        on_store!(self, s => s.delete(instance, token))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(id: &str, instance: &str, started: &str) -> RunRecord {
        RunRecord {
            id: id.into(),
            instance: instance.into(),
            product: "bytebase".into(),
            adapter_digest: "ab".into(),
            kind: "upgrade".into(),
            from_version: "3.10.0".into(),
            to_version: "3.11.1".into(),
            status: RunStatus::Running,
            started_at: started.into(),
            finished_at: None,
            plan_json: "{}".into(),
            message: None,
        }
    }

    #[test]
    fn runs_steps_and_backups_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.db");
        let store = StateStore::open(&path).expect("open");
        store
            .insert_run(&run("r1", "a", "2026-01-01T00:00:00Z"))
            .expect("insert");
        store
            .insert_run(&run("r2", "b", "2026-01-02T00:00:00Z"))
            .expect("insert");
        store
            .step_started("r1", 0, "stop", "stop it", "forward")
            .expect("start");
        store
            .step_started("r1", 0, "rollback-stop-app", "stop", "rollback")
            .expect("start");
        assert_eq!(
            store.steps("r1").expect("steps")[0].status,
            StepStatus::Started,
            "journaled before it runs"
        );
        store
            .step_finished("r1", 0, "forward", StepStatus::Failed, None, Some("boom"))
            .expect("finish");
        store
            .finish_run("r1", RunStatus::RolledBack, Some("boom"))
            .expect("finish");
        let steps = store.steps("r1").expect("steps");
        assert_eq!(
            steps.iter().map(|s| s.phase.as_str()).collect::<Vec<_>>(),
            ["forward", "rollback"]
        );
        assert_eq!(steps[0].error.as_deref(), Some("boom"));
        assert!(steps[0].duration_ms.is_some());
        let runs = store.runs(None, 10).expect("runs");
        assert_eq!(
            runs.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["r2", "r1"]
        );
        assert_eq!(
            store.runs(Some("a"), 10).expect("runs")[0].status,
            RunStatus::RolledBack
        );

        let b = BackupRecord {
            id: StateStore::new_backup_id(),
            instance: "a".into(),
            binding: "meta".into(),
            run_id: Some("r1".into()),
            method: "dump".into(),
            location: "/x".into(),
            source_database: "metadb".into(),
            product_version: "3.10.0".into(),
            created_at: "2026-01-01T00:00:00Z".into(),
            size_bytes: Some(10),
            sha256: Some("f".repeat(64)),
            valid: true,
            note: None,
        };
        store.insert_backup(&b).expect("backup");
        drop(store);
        let store = StateStore::open(&path).expect("reopen");
        assert_eq!(store.backup(&b.id).expect("get"), Some(b.clone()));
        assert_eq!(store.backups(Some("b")).expect("list"), vec![]);
        assert_ne!(StateStore::new_backup_id(), StateStore::new_backup_id());
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.db");
        let conn = Connection::open(&path).expect("open");
        conn.pragma_update(None, "user_version", 7).expect("set");
        drop(conn);
        let err = StateStore::open(&path).err().expect("refused").to_string();
        assert!(
            err.contains("newer (schema 7)") && err.contains("upgrade upshift"),
            "{err}"
        );
    }
}
