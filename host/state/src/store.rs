//! The state store, written once for every engine: the statements (in one SQL both SQLite and
//! PostgreSQL accept, adjusted by the engine's [`Dialect`]), turning rows into records, and the
//! lease rows. An [`Engine`] only runs a statement and hands back its rows as [`Value`]s.

use std::fmt;
use std::future::Future;

use crate::lease::{Lease, LeaseError, LeaseRow, LeaseRows};
use crate::queue::WorkQueue;
use crate::{
    AuditAnchor, AuditIndexEnd, AuditIndexRow, BackupRecord, KeptRecord, PendingArtifact,
    RunRecord, RunStatus, StateError, StateFuture, StateStore, StepRecord, StepStatus,
};

/// How an engine's SQL differs from the one the statements are written in: tables are written
/// `#name`, parameters `$n`, the server's clock `{now_ms}` and a shared row lock `{share}`.
#[derive(Debug, Clone, Copy)]
pub struct Dialect {
    /// What `#` becomes: the table name prefix.
    pub tables: &'static str,
    /// What `$` becomes: how parameters are written (`?n` in SQLite, `$n` in PostgreSQL).
    pub param: char,
    /// What `{now_ms}` becomes: the database's clock, milliseconds since the epoch.
    pub now_ms: &'static str,
    /// What `{share}` becomes: the clause that locks the rows a subquery reads until the
    /// statement's transaction ends (empty where writes are serialised anyway).
    pub share: &'static str,
}

impl Dialect {
    /// `template` in this dialect.
    pub fn sql(&self, template: &str) -> String {
        let mut out = String::with_capacity(template.len() + 64);
        for c in template.chars() {
            match c {
                '#' => out.push_str(self.tables),
                '$' => out.push(self.param),
                c => out.push(c),
            }
        }
        out.replace("{now_ms}", self.now_ms)
            .replace("{share}", self.share)
    }
}

/// The condition that makes a write fenced: the lease of the instance `$I` still has the token
/// `$T` (`I` and `T` are replaced by the statement's parameter numbers). In PostgreSQL the lease
/// row is share-locked until the write commits, so a takeover waits for the write, and a write
/// that comes after a takeover sees the new token and matches nothing.
fn fence(instance: usize, token: usize) -> String {
    format!(
        "EXISTS (SELECT 1 FROM #leases WHERE instance = ${instance} AND token = ${token}{{share}})"
    )
}

/// A value going into or coming out of a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// An integer (whatever width the column has).
    Int(i64),
    /// Text.
    Text(String),
    /// A boolean (SQLite stores it as an integer).
    Bool(bool),
    /// Something this build never writes, described for error messages.
    Other(String),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("NULL"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Text(s) | Value::Other(s) => f.write_str(s),
            Value::Bool(b) => write!(f, "{b}"),
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::Text(s.to_string())
    }
}

impl From<&String> for Value {
    fn from(s: &String) -> Value {
        Value::Text(s.clone())
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Value {
        Value::Int(i)
    }
}

impl From<u32> for Value {
    fn from(i: u32) -> Value {
        Value::Int(i.into())
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Value {
        Value::Bool(b)
    }
}

impl<T> From<Option<T>> for Value
where
    T: Into<Value>,
{
    fn from(v: Option<T>) -> Value {
        v.map_or(Value::Null, Into::into)
    }
}

/// The parameters of a statement.
macro_rules! params {
    ($($v:expr),* $(,)?) => { vec![$(Value::from($v)),*] };
}

/// What a database must provide: run one statement, or fetch the rows of one query. Every
/// statement it gets is already in its [`Dialect`].
pub trait Engine: Send + Sync + 'static {
    /// How its SQL is written.
    const DIALECT: Dialect;
    /// The database, for messages (file, or URL without password).
    fn at(&self) -> &str;
    /// Run a statement; the number of rows it changed.
    fn execute(
        &self,
        sql: String,
        params: Vec<Value>,
    ) -> impl Future<Output = Result<u64, StateError>> + Send;
    /// Run a query; its rows, each the selected columns in order.
    fn query(
        &self,
        sql: String,
        params: Vec<Value>,
    ) -> impl Future<Output = Result<Vec<Vec<Value>>, StateError>> + Send;
    /// The work queue, where the engine has one.
    fn queue(&self) -> Option<&dyn WorkQueue>;
}

/// The state store over an engine: [`StateStore`] and the lease rows, once for all engines.
pub struct Store<E> {
    engine: E,
}

impl<E: Engine> Store<E> {
    /// The store over `engine` (whose schema is in place).
    pub fn new(engine: E) -> Store<E> {
        Store { engine }
    }

    /// The engine.
    pub fn engine(&self) -> &E {
        &self.engine
    }

    async fn execute(&self, template: &str, params: Vec<Value>) -> Result<u64, StateError> {
        self.engine.execute(E::DIALECT.sql(template), params).await
    }

    /// Run a write fenced by `lease` (its template holds [`fence`]): it must change a row. When
    /// it changes none, either the lease is no longer `lease`'s ([`StateError::Fenced`]) or
    /// the row it updates does not exist ([`StateError::Missing`]).
    async fn fenced(
        &self,
        lease: &Lease,
        what: &'static str,
        template: &str,
        params: Vec<Value>,
    ) -> Result<(), StateError> {
        if self.execute(template, params).await? > 0 {
            return Ok(());
        }
        self.check_fence(lease).await?;
        Err(StateError::Missing {
            at: self.engine.at().to_string(),
            what,
        })
    }

    /// `Ok` while `lease`'s token is still its instance's, else [`StateError::Fenced`] naming
    /// the holder now, if any.
    async fn check_fence(&self, lease: &Lease) -> Result<(), StateError> {
        let row = self
            .first(
                "SELECT holder, token FROM #leases WHERE instance = $1",
                params![&lease.instance],
            )
            .await?;
        let now = row
            .map(|mut r| Ok::<_, StateError>((r.text("leases.holder")?, r.int("leases.token")?)))
            .transpose()?;
        match now {
            Some((_, token)) if token == lease.token => Ok(()),
            other => Err(StateError::Fenced {
                instance: lease.instance.clone(),
                token: lease.token,
                holder: other.map(|(holder, _)| holder),
            }),
        }
    }

    async fn all(&self, template: &str, params: Vec<Value>) -> Result<Vec<Cells<'_>>, StateError> {
        let rows = self.engine.query(E::DIALECT.sql(template), params).await?;
        Ok(rows
            .into_iter()
            .map(|row| Cells {
                at: self.engine.at(),
                values: row.into_iter(),
            })
            .collect())
    }

    async fn first(
        &self,
        template: &str,
        params: Vec<Value>,
    ) -> Result<Option<Cells<'_>>, StateError> {
        Ok(self.all(template, params).await?.into_iter().next())
    }
}

/// One row's values, read in the order they were selected.
struct Cells<'a> {
    at: &'a str,
    values: std::vec::IntoIter<Value>,
}

impl Cells<'_> {
    fn bad(&self, column: &'static str, value: &Value) -> StateError {
        StateError::Value {
            at: self.at.to_string(),
            column,
            value: value.to_string(),
        }
    }

    fn next(&mut self, column: &'static str) -> Result<Value, StateError> {
        self.values.next().ok_or_else(|| StateError::Value {
            at: self.at.to_string(),
            column,
            value: "(missing)".into(),
        })
    }

    /// The next value, `None` if NULL, else what `pick` takes from it (it hands back what it
    /// does not take).
    fn opt<T>(
        &mut self,
        column: &'static str,
        pick: fn(Value) -> Result<T, Value>,
    ) -> Result<Option<T>, StateError> {
        match self.next(column)? {
            Value::Null => Ok(None),
            value => pick(value)
                .map(Some)
                .map_err(|other| self.bad(column, &other)),
        }
    }

    /// The next value, which must not be NULL.
    fn required<T>(
        &mut self,
        column: &'static str,
        pick: fn(Value) -> Result<T, Value>,
    ) -> Result<T, StateError> {
        self.opt(column, pick)?
            .ok_or_else(|| self.bad(column, &Value::Null))
    }

    fn opt_text(&mut self, column: &'static str) -> Result<Option<String>, StateError> {
        self.opt(column, text)
    }

    fn text(&mut self, column: &'static str) -> Result<String, StateError> {
        self.required(column, text)
    }

    fn opt_int(&mut self, column: &'static str) -> Result<Option<i64>, StateError> {
        self.opt(column, int)
    }

    fn int(&mut self, column: &'static str) -> Result<i64, StateError> {
        self.required(column, int)
    }

    /// A non-negative integer.
    fn opt_u64(&mut self, column: &'static str) -> Result<Option<u64>, StateError> {
        self.opt_int(column)?
            .map(|i| u64::try_from(i).map_err(|_| self.bad(column, &Value::Int(i))))
            .transpose()
    }

    fn u32(&mut self, column: &'static str) -> Result<u32, StateError> {
        let i = self.int(column)?;
        u32::try_from(i).map_err(|_| self.bad(column, &Value::Int(i)))
    }

    fn bool(&mut self, column: &'static str) -> Result<bool, StateError> {
        self.required(column, |v| match v {
            Value::Bool(b) => Ok(b),
            Value::Int(0) => Ok(false),
            Value::Int(1) => Ok(true),
            other => Err(other),
        })
    }

    fn parsed<T>(
        &mut self,
        column: &'static str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Result<T, StateError> {
        let text = self.text(column)?;
        parse(&text).ok_or_else(|| self.bad(column, &Value::Text(text)))
    }
}

fn text(v: Value) -> Result<String, Value> {
    match v {
        Value::Text(s) => Ok(s),
        other => Err(other),
    }
}

fn int(v: Value) -> Result<i64, Value> {
    match v {
        Value::Int(i) => Ok(i),
        other => Err(other),
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

const RUN_COLUMNS: &str = "SELECT id, instance, product, adapter_digest, kind, from_version, to_version, status, \
     started_at, finished_at, plan_json, message FROM #runs";

/// The runs' columns as [`RUN_COLUMNS`], from `#runs` named `r`.
const RUN_COLUMNS_R: &str = "SELECT r.id, r.instance, r.product, r.adapter_digest, r.kind, r.from_version, r.to_version, \
     r.status, r.started_at, r.finished_at, r.plan_json, r.message FROM #runs r";

/// Whether run `r` is unfinished, in SQL: still `running`, or an upgrade that stopped for an
/// operator at a forward step whose outcome is unknown (a forward step journaled as started
/// and never as finished, no rollback begun) and that no later run of its instance superseded
/// (`upshift resume RUN --step-done STEP` can still finish it). Abandoned, refused, rolled-back
/// and succeeded runs are finished, and so is a failed run whose rollback failed (its steps all
/// ended; the operator restores a backup).
pub const UNFINISHED: &str = "(r.status = 'running' OR (r.status = 'failed' AND r.kind = 'upgrade' \
     AND EXISTS (SELECT 1 FROM #steps s WHERE s.run_id = r.id AND s.phase = 'forward' AND s.status = 'started') \
     AND NOT EXISTS (SELECT 1 FROM #steps s WHERE s.run_id = r.id AND s.phase = 'rollback') \
     AND NOT EXISTS (SELECT 1 FROM #runs l WHERE l.instance = r.instance \
       AND (l.started_at > r.started_at OR (l.started_at = r.started_at AND l.id > r.id)))))";

const BACKUP_COLUMNS: &str = "SELECT id, instance, binding, run_id, method, location, source_database, \
     product_version, created_at, size_bytes, sha256, valid, note FROM #backups";

fn run_from(mut r: Cells<'_>) -> Result<RunRecord, StateError> {
    Ok(RunRecord {
        id: r.text("runs.id")?,
        instance: r.text("runs.instance")?,
        product: r.text("runs.product")?,
        adapter_digest: r.text("runs.adapter_digest")?,
        kind: r.text("runs.kind")?,
        from_version: r.text("runs.from_version")?,
        to_version: r.text("runs.to_version")?,
        status: r.parsed("runs.status", RunStatus::parse)?,
        started_at: r.text("runs.started_at")?,
        finished_at: r.opt_text("runs.finished_at")?,
        plan_json: r.text("runs.plan_json")?,
        message: r.opt_text("runs.message")?,
    })
}

fn step_from(mut r: Cells<'_>) -> Result<StepRecord, StateError> {
    Ok(StepRecord {
        run_id: r.text("steps.run_id")?,
        seq: r.u32("steps.seq")?,
        step_id: r.text("steps.step_id")?,
        title: r.text("steps.title")?,
        phase: r.text("steps.phase")?,
        status: r.parsed("steps.status", StepStatus::parse)?,
        started_at: r.text("steps.started_at")?,
        finished_at: r.opt_text("steps.finished_at")?,
        duration_ms: r.opt_u64("steps.duration_ms")?,
        output: r.opt_text("steps.output")?,
        error: r.opt_text("steps.error")?,
        holder: r.opt_text("steps.holder")?,
    })
}

fn backup_from(mut r: Cells<'_>) -> Result<BackupRecord, StateError> {
    Ok(BackupRecord {
        id: r.text("backups.id")?,
        instance: r.text("backups.instance")?,
        binding: r.text("backups.binding")?,
        run_id: r.opt_text("backups.run_id")?,
        method: r.text("backups.method")?,
        location: r.text("backups.location")?,
        source_database: r.text("backups.source_database")?,
        product_version: r.text("backups.product_version")?,
        created_at: r.text("backups.created_at")?,
        size_bytes: r.opt_u64("backups.size_bytes")?,
        sha256: r.opt_text("backups.sha256")?,
        valid: r.bool("backups.valid")?,
        note: r.opt_text("backups.note")?,
    })
}

fn kept_from(mut r: Cells<'_>) -> Result<KeptRecord, StateError> {
    Ok(KeptRecord {
        run_id: r.text("kept.run_id")?,
        instance: r.text("kept.instance")?,
        binding: r.text("kept.binding")?,
        container_id: r.text("kept.container_id")?,
        replaced_by: r.text("kept.replaced_by")?,
        image: r.text("kept.image")?,
        kept_at: r.text("kept.kept_at")?,
        released_at: r.opt_text("kept.released_at")?,
    })
}

fn pending_from(mut r: Cells<'_>) -> Result<PendingArtifact, StateError> {
    Ok(PendingArtifact {
        id: r.text("pending.id")?,
        kind: r.text("pending.kind")?,
        location: r.text("pending.location")?,
        instance: r.text("pending.instance")?,
        binding: r.text("pending.binding")?,
        run_id: r.opt_text("pending.run_id")?,
        recorded_at: r.text("pending.recorded_at")?,
    })
}

impl<E: Engine> StateStore for Store<E> {
    fn insert_run<'a>(&'a self, lease: &'a Lease, r: &'a RunRecord) -> StateFuture<'a, ()> {
        Box::pin(async move {
            // Repeating it (after a connection lost before the answer) finds the row there.
            let sql = format!(
                "INSERT INTO #runs (id, instance, product, adapter_digest, kind, from_version, to_version, status, started_at, finished_at, plan_json, message)
                 SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12 WHERE {f}
                 ON CONFLICT (id) DO UPDATE SET id = excluded.id WHERE {f}",
                f = fence(13, 14)
            );
            self.fenced(
                lease,
                "run",
                &sql,
                params![
                    &r.id,
                    &r.instance,
                    &r.product,
                    &r.adapter_digest,
                    &r.kind,
                    &r.from_version,
                    &r.to_version,
                    r.status.as_str(),
                    &r.started_at,
                    r.finished_at.as_ref(),
                    &r.plan_json,
                    r.message.as_ref(),
                    &lease.instance,
                    lease.token
                ],
            )
            .await
        })
    }

    fn finish_run<'a>(
        &'a self,
        lease: &'a Lease,
        run_id: &'a str,
        status: RunStatus,
        message: Option<&'a str>,
    ) -> StateFuture<'a, ()> {
        Box::pin(async move {
            let sql = format!(
                "UPDATE #runs SET status = $2, message = $3, finished_at = $4 WHERE id = $1 AND {}",
                fence(5, 6)
            );
            self.fenced(
                lease,
                "run",
                &sql,
                params![
                    run_id,
                    status.as_str(),
                    message,
                    &now(),
                    &lease.instance,
                    lease.token
                ],
            )
            .await
        })
    }

    fn step_started<'a>(
        &'a self,
        lease: &'a Lease,
        run_id: &'a str,
        seq: u32,
        step_id: &'a str,
        title: &'a str,
        phase: &'a str,
    ) -> StateFuture<'a, ()> {
        let ms = crate::lease::now_ms();
        Box::pin(async move {
            let sql = format!(
                "INSERT INTO #steps (run_id, seq, phase, step_id, title, status, started_at, started_ms, holder)
                 SELECT $1, $2, $3, $4, $5, 'started', $6, $7, $8 WHERE {f}
                 ON CONFLICT (run_id, phase, seq) DO UPDATE SET step_id = excluded.step_id, title = excluded.title,
                   status = 'started', started_at = excluded.started_at, started_ms = excluded.started_ms,
                   finished_at = NULL, duration_ms = NULL, output = NULL, error = NULL, holder = excluded.holder
                 WHERE {f}",
                f = fence(9, 10)
            );
            self.fenced(
                lease,
                "step",
                &sql,
                params![
                    run_id,
                    seq,
                    phase,
                    step_id,
                    title,
                    &now(),
                    ms,
                    &lease.holder,
                    &lease.instance,
                    lease.token
                ],
            )
            .await
        })
    }

    fn step_finished<'a>(
        &'a self,
        lease: &'a Lease,
        run_id: &'a str,
        seq: u32,
        phase: &'a str,
        status: StepStatus,
        output: Option<&'a str>,
        error: Option<&'a str>,
    ) -> StateFuture<'a, ()> {
        let ms = crate::lease::now_ms();
        Box::pin(async move {
            let sql = format!(
                "UPDATE #steps SET status = $4, output = $5, error = $6, finished_at = $7,
                   duration_ms = CASE WHEN $8 > started_ms THEN $8 - started_ms ELSE 0 END
                 WHERE run_id = $1 AND seq = $2 AND phase = $3 AND {}",
                fence(9, 10)
            );
            self.fenced(
                lease,
                "step",
                &sql,
                params![
                    run_id,
                    seq,
                    phase,
                    status.as_str(),
                    output,
                    error,
                    &now(),
                    ms,
                    &lease.instance,
                    lease.token
                ],
            )
            .await
        })
    }

    fn run<'a>(&'a self, run_id: &'a str) -> StateFuture<'a, Option<RunRecord>> {
        Box::pin(async move {
            let sql = format!("{RUN_COLUMNS} WHERE id = $1");
            self.first(&sql, params![run_id])
                .await?
                .map(run_from)
                .transpose()
        })
    }

    fn runs<'a>(
        &'a self,
        instance: Option<&'a str>,
        limit: usize,
    ) -> StateFuture<'a, Vec<RunRecord>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        Box::pin(async move {
            let sql = format!(
                "{RUN_COLUMNS} WHERE instance = COALESCE($1, instance) ORDER BY started_at DESC, id DESC LIMIT $2"
            );
            self.all(&sql, params![instance, limit])
                .await?
                .into_iter()
                .map(run_from)
                .collect()
        })
    }

    fn steps<'a>(&'a self, run_id: &'a str) -> StateFuture<'a, Vec<StepRecord>> {
        Box::pin(async move {
            self.all(
                "SELECT run_id, seq, step_id, title, phase, status, started_at, finished_at, duration_ms, output, error, holder
                 FROM #steps WHERE run_id = $1
                 ORDER BY CASE phase WHEN 'forward' THEN 0 WHEN 'rollback' THEN 1 ELSE 2 END, seq",
                params![run_id],
            )
            .await?
            .into_iter()
            .map(step_from)
            .collect()
        })
    }

    fn unfinished_runs<'a>(&'a self, instance: &'a str) -> StateFuture<'a, Vec<RunRecord>> {
        Box::pin(async move {
            let sql = format!(
                "{RUN_COLUMNS_R} WHERE r.instance = $1 AND {UNFINISHED} ORDER BY r.started_at DESC, r.id DESC"
            );
            self.all(&sql, params![instance])
                .await?
                .into_iter()
                .map(run_from)
                .collect()
        })
    }

    fn runs_after<'a>(&'a self, run: &'a RunRecord) -> StateFuture<'a, Vec<RunRecord>> {
        Box::pin(async move {
            let sql = format!(
                "{RUN_COLUMNS} WHERE instance = $1 AND id <> $2 AND (started_at > $3 OR (started_at = $3 AND id > $2))
                 ORDER BY started_at, id"
            );
            self.all(&sql, params![&run.instance, &run.id, &run.started_at])
                .await?
                .into_iter()
                .map(run_from)
                .collect()
        })
    }

    fn abandon_run<'a>(
        &'a self,
        lease: &'a Lease,
        run_id: &'a str,
        expected: RunStatus,
        why: &'a str,
    ) -> StateFuture<'a, bool> {
        let ms = crate::lease::now_ms();
        Box::pin(async move {
            let message = format!("abandoned by the operator: {why}");
            let sql = format!(
                "UPDATE #runs SET status = $2, message = $3, finished_at = $4 WHERE id = $1 AND status = $5 AND {}",
                fence(6, 7)
            );
            let ended = self
                .execute(
                    &sql,
                    params![
                        run_id,
                        RunStatus::Abandoned.as_str(),
                        &message,
                        &now(),
                        expected.as_str(),
                        &lease.instance,
                        lease.token
                    ],
                )
                .await?;
            if ended != 1 {
                // Its status changed meanwhile, or the lease is no longer ours.
                self.check_fence(lease).await?;
                return Ok(false);
            }
            let sql = format!(
                "INSERT INTO #steps (run_id, seq, phase, step_id, title, status, started_at, started_ms, finished_at, duration_ms, output, holder)
                 SELECT $1, 0, 'operator', 'abandon', 'abandoned by the operator', 'succeeded', $2, $3, $2, 0, $4, $5 WHERE {f}
                 ON CONFLICT (run_id, phase, seq) DO UPDATE SET output = excluded.output,
                   started_at = excluded.started_at, finished_at = excluded.finished_at, holder = excluded.holder
                 WHERE {f}",
                f = fence(6, 7)
            );
            self.fenced(
                lease,
                "step",
                &sql,
                params![
                    run_id,
                    &now(),
                    ms,
                    why,
                    &lease.holder,
                    &lease.instance,
                    lease.token
                ],
            )
            .await?;
            Ok(true)
        })
    }

    fn insert_backup<'a>(&'a self, lease: &'a Lease, b: &'a BackupRecord) -> StateFuture<'a, ()> {
        let size = b.size_bytes.map(|s| i64::try_from(s).unwrap_or(i64::MAX));
        Box::pin(async move {
            let sql = format!(
                "INSERT INTO #backups (id, instance, binding, run_id, method, location, source_database, product_version, created_at, size_bytes, sha256, valid, note)
                 SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13 WHERE {f}
                 ON CONFLICT (id) DO UPDATE SET id = excluded.id WHERE {f}",
                f = fence(14, 15)
            );
            self.fenced(
                lease,
                "backup",
                &sql,
                params![
                    &b.id,
                    &b.instance,
                    &b.binding,
                    b.run_id.as_ref(),
                    &b.method,
                    &b.location,
                    &b.source_database,
                    &b.product_version,
                    &b.created_at,
                    size,
                    b.sha256.as_ref(),
                    b.valid,
                    b.note.as_ref(),
                    &lease.instance,
                    lease.token
                ],
            )
            .await
        })
    }

    fn mark_invalid<'a>(&'a self, id: &'a str, note: &'a str) -> StateFuture<'a, ()> {
        Box::pin(async move {
            self.execute(
                "UPDATE #backups SET valid = $3, note = $2 WHERE id = $1",
                params![id, note, false],
            )
            .await
            .map(drop)
        })
    }

    fn mark_valid<'a>(&'a self, id: &'a str) -> StateFuture<'a, ()> {
        Box::pin(async move {
            self.execute(
                "UPDATE #backups SET valid = $2, note = NULL WHERE id = $1",
                params![id, true],
            )
            .await
            .map(drop)
        })
    }

    fn backup<'a>(&'a self, id: &'a str) -> StateFuture<'a, Option<BackupRecord>> {
        Box::pin(async move {
            let sql = format!("{BACKUP_COLUMNS} WHERE id = $1");
            self.first(&sql, params![id])
                .await?
                .map(backup_from)
                .transpose()
        })
    }

    fn backups<'a>(&'a self, instance: Option<&'a str>) -> StateFuture<'a, Vec<BackupRecord>> {
        Box::pin(async move {
            let sql = format!(
                "{BACKUP_COLUMNS} WHERE instance = COALESCE($1, instance) ORDER BY created_at DESC, id DESC"
            );
            self.all(&sql, params![instance])
                .await?
                .into_iter()
                .map(backup_from)
                .collect()
        })
    }

    fn delete_backup<'a>(&'a self, id: &'a str) -> StateFuture<'a, ()> {
        Box::pin(async move {
            self.execute("DELETE FROM #backups WHERE id = $1", params![id])
                .await
                .map(drop)
        })
    }

    fn record_pending<'a>(
        &'a self,
        lease: &'a Lease,
        a: &'a PendingArtifact,
    ) -> StateFuture<'a, ()> {
        Box::pin(async move {
            let sql = format!(
                "INSERT INTO #pending (id, kind, location, instance, binding, run_id, recorded_at)
                 SELECT $1, $2, $3, $4, $5, $6, $7 WHERE {f}
                 ON CONFLICT (id) DO UPDATE SET kind = excluded.kind, location = excluded.location,
                   instance = excluded.instance, binding = excluded.binding, run_id = excluded.run_id,
                   recorded_at = excluded.recorded_at
                 WHERE {f}",
                f = fence(8, 9)
            );
            self.fenced(
                lease,
                "pending artifact",
                &sql,
                params![
                    &a.id,
                    &a.kind,
                    &a.location,
                    &a.instance,
                    &a.binding,
                    a.run_id.as_ref(),
                    &a.recorded_at,
                    &lease.instance,
                    lease.token
                ],
            )
            .await
        })
    }

    fn forget_pending<'a>(&'a self, id: &'a str) -> StateFuture<'a, ()> {
        Box::pin(async move {
            self.execute("DELETE FROM #pending WHERE id = $1", params![id])
                .await
                .map(drop)
        })
    }

    fn pending<'a>(&'a self, instance: Option<&'a str>) -> StateFuture<'a, Vec<PendingArtifact>> {
        Box::pin(async move {
            self.all(
                "SELECT id, kind, location, instance, binding, run_id, recorded_at FROM #pending
                 WHERE instance = COALESCE($1, instance) ORDER BY recorded_at, id",
                params![instance],
            )
            .await?
            .into_iter()
            .map(pending_from)
            .collect()
        })
    }

    fn record_kept<'a>(&'a self, lease: &'a Lease, k: &'a KeptRecord) -> StateFuture<'a, ()> {
        Box::pin(async move {
            let sql = format!(
                "INSERT INTO #kept (run_id, instance, binding, container_id, replaced_by, image, kept_at, released_at)
                 SELECT $1, $2, $3, $4, $5, $6, $7, $8 WHERE {f}
                 ON CONFLICT (run_id, container_id) DO UPDATE SET replaced_by = excluded.replaced_by,
                   image = excluded.image, kept_at = excluded.kept_at, released_at = excluded.released_at
                 WHERE {f}",
                f = fence(9, 10)
            );
            self.fenced(
                lease,
                "kept container",
                &sql,
                params![
                    &k.run_id,
                    &k.instance,
                    &k.binding,
                    &k.container_id,
                    &k.replaced_by,
                    &k.image,
                    &k.kept_at,
                    k.released_at.as_ref(),
                    &lease.instance,
                    lease.token
                ],
            )
            .await
        })
    }

    fn kept<'a>(&'a self, run_id: &'a str) -> StateFuture<'a, Vec<KeptRecord>> {
        Box::pin(async move {
            self.all(
                "SELECT run_id, instance, binding, container_id, replaced_by, image, kept_at, released_at
                 FROM #kept WHERE run_id = $1 ORDER BY kept_at, container_id",
                params![run_id],
            )
            .await?
            .into_iter()
            .map(kept_from)
            .collect()
        })
    }

    fn release_kept<'a>(
        &'a self,
        lease: &'a Lease,
        run_id: &'a str,
        container_id: &'a str,
    ) -> StateFuture<'a, ()> {
        Box::pin(async move {
            let sql = format!(
                "UPDATE #kept SET released_at = $3 WHERE run_id = $1 AND container_id = $2 AND {}",
                fence(4, 5)
            );
            self.fenced(
                lease,
                "kept container",
                &sql,
                params![run_id, container_id, &now(), &lease.instance, lease.token],
            )
            .await
        })
    }

    fn queue(&self) -> Option<&dyn WorkQueue> {
        self.engine.queue()
    }

    fn artifact_digest<'a>(
        &'a self,
        adapter_digest: &'a str,
        engine: &'a str,
    ) -> StateFuture<'a, Option<String>> {
        Box::pin(async move {
            self.first(
                "SELECT sha256 FROM #artifacts WHERE adapter_digest = $1 AND engine = $2",
                params![adapter_digest, engine],
            )
            .await?
            .map(|mut r| r.text("artifacts.sha256"))
            .transpose()
        })
    }

    fn record_artifact<'a>(
        &'a self,
        adapter_digest: &'a str,
        engine: &'a str,
        sha256: &'a str,
    ) -> StateFuture<'a, ()> {
        Box::pin(async move {
            self.execute(
                "INSERT INTO #artifacts (adapter_digest, engine, sha256, recorded_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (adapter_digest, engine) DO UPDATE SET sha256 = excluded.sha256,
                   recorded_at = excluded.recorded_at",
                params![adapter_digest, engine, sha256, &now()],
            )
            .await
            .map(drop)
        })
    }

    fn audit_anchor<'a>(&'a self, log: &'a str) -> StateFuture<'a, Option<AuditAnchor>> {
        Box::pin(async move {
            self.first(
                "SELECT records, head, anchored_at FROM #audit_anchors WHERE log = $1",
                params![log],
            )
            .await?
            .map(|mut r| {
                Ok(AuditAnchor {
                    records: r
                        .opt_u64("audit_anchors.records")?
                        .ok_or_else(|| r.bad("audit_anchors.records", &Value::Null))?,
                    head: r.text("audit_anchors.head")?,
                    anchored_at: r.text("audit_anchors.anchored_at")?,
                })
            })
            .transpose()
        })
    }

    fn anchor_audit<'a>(
        &'a self,
        log: &'a str,
        records: u64,
        head: &'a str,
    ) -> StateFuture<'a, ()> {
        let records = i64::try_from(records).unwrap_or(i64::MAX);
        Box::pin(async move {
            self.execute(
                "INSERT INTO #audit_anchors (log, records, head, anchored_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (log) DO UPDATE SET records = excluded.records, head = excluded.head,
                   anchored_at = excluded.anchored_at",
                params![log, records, head, &now()],
            )
            .await
            .map(drop)
        })
    }

    fn index_audit<'a>(&'a self, log: &'a str, rows: &'a [AuditIndexRow]) -> StateFuture<'a, ()> {
        Box::pin(async move {
            for chunk in rows.chunks(INDEX_BATCH) {
                let mut sql = String::from(
                    "INSERT INTO #audit_index (log, seq, segment, byte_offset, run_id, denied) VALUES ",
                );
                let mut params = Vec::with_capacity(chunk.len() * 6);
                for (i, row) in chunk.iter().enumerate() {
                    let n = i * 6;
                    if i > 0 {
                        sql.push_str(", ");
                    }
                    sql.push_str(&format!(
                        "(${}, ${}, ${}, ${}, ${}, ${})",
                        n + 1,
                        n + 2,
                        n + 3,
                        n + 4,
                        n + 5,
                        n + 6
                    ));
                    params.extend(params![
                        log,
                        wide(row.seq),
                        wide(row.segment),
                        wide(row.offset),
                        row.run_id.as_ref(),
                        row.denied,
                    ]);
                }
                sql.push_str(
                    " ON CONFLICT (log, seq) DO UPDATE SET segment = excluded.segment,
                      byte_offset = excluded.byte_offset, run_id = excluded.run_id,
                      denied = excluded.denied",
                );
                self.execute(&sql, params).await?;
            }
            Ok(())
        })
    }

    fn audit_index_for_run<'a>(
        &'a self,
        log: &'a str,
        run_id: &'a str,
        denied_only: bool,
        up_to: u64,
    ) -> StateFuture<'a, Vec<AuditIndexRow>> {
        Box::pin(async move {
            let rows = if denied_only {
                self.all(
                    "SELECT seq, segment, byte_offset, run_id, denied FROM #audit_index
                     WHERE log = $1 AND run_id = $2 AND seq <= $3 AND denied = $4 ORDER BY seq",
                    params![log, run_id, wide(up_to), true],
                )
                .await?
            } else {
                self.all(
                    "SELECT seq, segment, byte_offset, run_id, denied FROM #audit_index
                     WHERE log = $1 AND run_id = $2 AND seq <= $3 ORDER BY seq",
                    params![log, run_id, wide(up_to)],
                )
                .await?
            };
            rows.into_iter()
                .map(|mut row| index_row_from(&mut row))
                .collect()
        })
    }

    fn audit_index_end<'a>(&'a self, log: &'a str) -> StateFuture<'a, Option<AuditIndexEnd>> {
        Box::pin(async move {
            // One statement, so the count and the last row are of the same moment.
            self.first(
                "SELECT seq, segment, byte_offset, run_id, denied,
                   (SELECT COUNT(*) FROM #audit_index WHERE log = $1)
                 FROM #audit_index WHERE log = $1 ORDER BY seq DESC LIMIT 1",
                params![log],
            )
            .await?
            .map(|mut row| {
                let last = index_row_from(&mut row)?;
                let rows = row.opt_u64("audit_index.count")?.unwrap_or(0);
                Ok(AuditIndexEnd { rows, last })
            })
            .transpose()
        })
    }

    fn clear_audit_index<'a>(&'a self, log: &'a str) -> StateFuture<'a, ()> {
        Box::pin(async move {
            self.execute("DELETE FROM #audit_index WHERE log = $1", params![log])
                .await
                .map(drop)
        })
    }
}

/// Audit index rows written per statement (six parameters each, well under both engines'
/// parameter limits).
const INDEX_BATCH: usize = 500;

/// An unsigned count as the signed integer the columns hold.
fn wide(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn index_row_from(r: &mut Cells<'_>) -> Result<AuditIndexRow, StateError> {
    Ok(AuditIndexRow {
        seq: r
            .opt_u64("audit_index.seq")?
            .ok_or_else(|| r.bad("audit_index.seq", &Value::Null))?,
        segment: r
            .opt_u64("audit_index.segment")?
            .ok_or_else(|| r.bad("audit_index.segment", &Value::Null))?,
        offset: r
            .opt_u64("audit_index.byte_offset")?
            .ok_or_else(|| r.bad("audit_index.byte_offset", &Value::Null))?,
        run_id: r.opt_text("audit_index.run_id")?,
        denied: r.bool("audit_index.denied")?,
    })
}

/// A state store's failure under a lease operation.
fn lease_store(e: StateError) -> LeaseError {
    LeaseError::Store(e.to_string())
}

impl<E: Engine> Store<E> {
    /// The token and expiry a lease statement `RETURNING token, expires_ms` returned, if it
    /// changed a row.
    async fn granted(
        &self,
        template: &str,
        params: Vec<Value>,
    ) -> Result<Option<(i64, i64)>, LeaseError> {
        let row = self.first(template, params).await.map_err(lease_store)?;
        row.map(|mut r| Ok((r.int("leases.token")?, r.int("leases.expires_ms")?)))
            .transpose()
            .map_err(lease_store)
    }
}

impl<E: Engine> LeaseRows for Store<E> {
    async fn try_take(
        &self,
        instance: &str,
        holder: &str,
        ttl_ms: i64,
    ) -> Result<Option<(i64, i64)>, LeaseError> {
        self.granted(
            "INSERT INTO #leases (instance, holder, token, expires_ms) VALUES ($1, $2, 1, {now_ms} + $3)
             ON CONFLICT (instance) DO UPDATE SET holder = excluded.holder, token = #leases.token + 1,
               expires_ms = excluded.expires_ms
             WHERE #leases.expires_ms < {now_ms} OR #leases.holder = $2
             RETURNING token, expires_ms",
            params![instance, holder, ttl_ms],
        )
        .await
    }

    async fn try_extend(
        &self,
        instance: &str,
        token: i64,
        ttl_ms: i64,
    ) -> Result<Option<i64>, LeaseError> {
        let row = self
            .first(
                "UPDATE #leases SET expires_ms = {now_ms} + $1 WHERE instance = $2 AND token = $3
                 RETURNING expires_ms",
                params![ttl_ms, instance, token],
            )
            .await
            .map_err(lease_store)?;
        row.map(|mut r| r.int("leases.expires_ms"))
            .transpose()
            .map_err(lease_store)
    }

    async fn try_move(
        &self,
        instance: &str,
        token: i64,
        holder: &str,
        ttl_ms: i64,
    ) -> Result<Option<(i64, i64)>, LeaseError> {
        self.granted(
            "UPDATE #leases SET holder = $1, token = token + 1, expires_ms = {now_ms} + $2
             WHERE instance = $3 AND token = $4 RETURNING token, expires_ms",
            params![holder, ttl_ms, instance, token],
        )
        .await
    }

    async fn row(&self, instance: &str) -> Result<Option<LeaseRow>, LeaseError> {
        let row = self
            .first(
                "SELECT holder, token, expires_ms, {now_ms} FROM #leases WHERE instance = $1",
                params![instance],
            )
            .await
            .map_err(lease_store)?;
        row.map(|mut r| {
            Ok(LeaseRow {
                holder: r.text("leases.holder")?,
                token: r.int("leases.token")?,
                expires_ms: r.int("leases.expires_ms")?,
                now_ms: r.int("leases.now")?,
            })
        })
        .transpose()
        .map_err(lease_store)
    }

    async fn delete(&self, instance: &str, token: i64) -> Result<(), LeaseError> {
        self.execute(
            "DELETE FROM #leases WHERE instance = $1 AND token = $2",
            params![instance, token],
        )
        .await
        .map(drop)
        .map_err(lease_store)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn dialects_rewrite_tables_and_parameters() {
        let template =
            "UPDATE #leases SET token = #leases.token + 1 WHERE instance = $1 AND token = $12";
        let sqlite = crate::sqlite::DIALECT;
        let pg = crate::postgres::DIALECT;
        assert_eq!(
            sqlite.sql(template),
            "UPDATE leases SET token = leases.token + 1 WHERE instance = ?1 AND token = ?12"
        );
        assert_eq!(
            pg.sql(template),
            "UPDATE upshift_leases SET token = upshift_leases.token + 1 WHERE instance = $1 AND token = $12"
        );
    }
}
