//! The state in PostgreSQL (`--state postgres://…`): the same runs, journaled steps, backup
//! catalog and leases as the SQLite store, plus the work queue agents claim from, so several
//! machines share one journal. Tables are prefixed `upshift_`.
//!
//! Calls are synchronous like the SQLite store's (the `postgres` client); inside the async
//! runtime they run under `block_in_place`.

use std::sync::Mutex;

use postgres::{Client, NoTls, Row};

use crate::lease::{LeaseError, LeaseRows, now_ms};
use crate::queue::{Claim, QueueItem, WorkQueue};
use crate::{BackupRecord, RunRecord, RunStatus, StateError, StepRecord, StepStatus};

const SCHEMA_SQL: &str = "
CREATE TABLE IF NOT EXISTS upshift_runs (
    id TEXT PRIMARY KEY, instance TEXT NOT NULL, product TEXT NOT NULL, adapter_digest TEXT NOT NULL,
    kind TEXT NOT NULL, from_version TEXT NOT NULL, to_version TEXT NOT NULL, status TEXT NOT NULL,
    started_at TEXT NOT NULL, finished_at TEXT, plan_json TEXT NOT NULL, message TEXT);
CREATE INDEX IF NOT EXISTS upshift_runs_instance ON upshift_runs (instance, started_at);
CREATE TABLE IF NOT EXISTS upshift_steps (
    run_id TEXT NOT NULL REFERENCES upshift_runs (id), seq INTEGER NOT NULL, phase TEXT NOT NULL,
    step_id TEXT NOT NULL, title TEXT NOT NULL, status TEXT NOT NULL, started_at TEXT NOT NULL,
    started_ms BIGINT NOT NULL, finished_at TEXT, duration_ms BIGINT, output TEXT, error TEXT,
    PRIMARY KEY (run_id, phase, seq));
CREATE TABLE IF NOT EXISTS upshift_backups (
    id TEXT PRIMARY KEY, instance TEXT NOT NULL, binding TEXT NOT NULL, run_id TEXT, method TEXT NOT NULL,
    location TEXT NOT NULL, source_database TEXT NOT NULL, product_version TEXT NOT NULL,
    created_at TEXT NOT NULL, size_bytes BIGINT, sha256 TEXT, valid BOOLEAN NOT NULL, note TEXT);
CREATE TABLE IF NOT EXISTS upshift_leases (
    instance TEXT PRIMARY KEY, holder TEXT NOT NULL, token BIGINT NOT NULL, expires_ms BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS upshift_queue (
    instance TEXT PRIMARY KEY, target TEXT NOT NULL, status TEXT NOT NULL, agent TEXT,
    claims INTEGER NOT NULL DEFAULT 0, claimed_ms BIGINT, outcome TEXT, enqueued_at TEXT NOT NULL,
    finished_at TEXT);
";

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The PostgreSQL state store. Thread-safe.
pub struct PgState {
    /// The URL without its password, for messages.
    shown: String,
    client: Mutex<Option<Client>>,
}

impl Drop for PgState {
    /// The client closes its connection by blocking on its own runtime: do that off the async
    /// runtime's threads too.
    fn drop(&mut self) {
        if let Some(client) = self
            .client
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            std::thread::scope(|scope| {
                let _ = scope.spawn(move || drop(client)).join();
            });
        }
    }
}

/// Run the synchronous client on a thread of its own: it drives a runtime of its own, which
/// cannot be started from a thread that belongs to (or blocks on) the async runtime.
fn blocking<T: Send>(
    f: impl FnOnce() -> Result<T, postgres::Error> + Send,
) -> Result<T, postgres::Error> {
    std::thread::scope(|scope| match scope.spawn(f).join() {
        Ok(result) => result,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

/// `url` with any password replaced.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

impl PgState {
    /// Connect and create the tables (serialised by an advisory lock, so agents starting together
    /// do not race).
    pub fn open(url: &str) -> Result<PgState, StateError> {
        let shown = redact(url);
        let fail = |source: postgres::Error| StateError::Postgres {
            url: shown.clone(),
            source,
        };
        let mut client = blocking(|| Client::connect(url, NoTls)).map_err(fail)?;
        blocking(|| -> Result<(), postgres::Error> {
            let mut tx = client.transaction()?;
            tx.execute("SELECT pg_advisory_xact_lock(775511)", &[])?;
            tx.batch_execute(SCHEMA_SQL)?;
            tx.commit()
        })
        .map_err(fail)?;
        Ok(PgState {
            shown,
            client: Mutex::new(Some(client)),
        })
    }

    fn with<T: Send>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<T, postgres::Error> + Send,
    ) -> Result<T, StateError> {
        let mut guard = self.client.lock().unwrap_or_else(|p| p.into_inner());
        let Some(client) = guard.as_mut() else {
            return Err(StateError::Closed);
        };
        blocking(|| f(client)).map_err(|source| StateError::Postgres {
            url: self.shown.clone(),
            source,
        })
    }

    /// Record a new run.
    pub fn insert_run(&self, r: &RunRecord) -> Result<(), StateError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO upshift_runs (id, instance, product, adapter_digest, kind, from_version, to_version, status, started_at, finished_at, plan_json, message)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                &[&r.id, &r.instance, &r.product, &r.adapter_digest, &r.kind, &r.from_version, &r.to_version, &r.status.as_str(), &r.started_at, &r.finished_at, &r.plan_json, &r.message],
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
                "UPDATE upshift_runs SET status = $2, message = $3, finished_at = $4 WHERE id = $1",
                &[&run_id, &status.as_str(), &message, &now()],
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
        let seq = i32::try_from(seq).unwrap_or(i32::MAX);
        let ms = now_ms();
        self.with(|c| {
            c.execute(
                "INSERT INTO upshift_steps (run_id, seq, phase, step_id, title, status, started_at, started_ms)
                 VALUES ($1, $2, $3, $4, $5, 'started', $6, $7)
                 ON CONFLICT (run_id, phase, seq) DO UPDATE SET step_id = excluded.step_id, title = excluded.title,
                   status = 'started', started_at = excluded.started_at, started_ms = excluded.started_ms,
                   finished_at = NULL, duration_ms = NULL, output = NULL, error = NULL",
                &[&run_id, &seq, &phase, &step_id, &title, &now(), &ms],
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
        let seq = i32::try_from(seq).unwrap_or(i32::MAX);
        let ms = now_ms();
        self.with(|c| {
            c.execute(
                "UPDATE upshift_steps SET status = $4, output = $5, error = $6, finished_at = $7, duration_ms = GREATEST(0, $8 - started_ms)
                 WHERE run_id = $1 AND seq = $2 AND phase = $3",
                &[&run_id, &seq, &phase, &status.as_str(), &output, &error, &now(), &ms],
            )
            .map(|_| ())
        })
    }

    fn run_from(row: &Row) -> RunRecord {
        let status: String = row.get(7);
        RunRecord {
            id: row.get(0),
            instance: row.get(1),
            product: row.get(2),
            adapter_digest: row.get(3),
            kind: row.get(4),
            from_version: row.get(5),
            to_version: row.get(6),
            status: RunStatus::parse(&status).unwrap_or(RunStatus::Failed),
            started_at: row.get(8),
            finished_at: row.get(9),
            plan_json: row.get(10),
            message: row.get(11),
        }
    }

    /// One run.
    pub fn run(&self, run_id: &str) -> Result<Option<RunRecord>, StateError> {
        self.with(|c| {
            c.query_opt("SELECT * FROM upshift_runs WHERE id = $1", &[&run_id])
                .map(|r| r.as_ref().map(Self::run_from))
        })
    }

    /// Runs, newest first.
    pub fn runs(&self, instance: Option<&str>, limit: usize) -> Result<Vec<RunRecord>, StateError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with(|c| {
            c.query(
                "SELECT * FROM upshift_runs WHERE instance = COALESCE($1, instance) ORDER BY started_at DESC, id DESC LIMIT $2",
                &[&instance, &limit],
            )
            .map(|rows| rows.iter().map(Self::run_from).collect())
        })
    }

    /// A run's steps: forward ones, then rollback ones, each in order.
    pub fn steps(&self, run_id: &str) -> Result<Vec<StepRecord>, StateError> {
        self.with(|c| {
            c.query(
                "SELECT run_id, seq, step_id, title, phase, status, started_at, finished_at, duration_ms, output, error
                 FROM upshift_steps WHERE run_id = $1 ORDER BY phase = 'rollback', seq",
                &[&run_id],
            )
            .map(|rows| {
                rows.iter()
                    .map(|r| {
                        let status: String = r.get(5);
                        let seq: i32 = r.get(1);
                        let duration: Option<i64> = r.get(8);
                        StepRecord {
                            run_id: r.get(0),
                            seq: u32::try_from(seq).unwrap_or(0),
                            step_id: r.get(2),
                            title: r.get(3),
                            phase: r.get(4),
                            status: StepStatus::parse(&status).unwrap_or(StepStatus::Failed),
                            started_at: r.get(6),
                            finished_at: r.get(7),
                            duration_ms: duration.and_then(|d| u64::try_from(d).ok()),
                            output: r.get(9),
                            error: r.get(10),
                        }
                    })
                    .collect()
            })
        })
    }

    /// Catalogue a backup.
    pub fn insert_backup(&self, b: &BackupRecord) -> Result<(), StateError> {
        let size = b.size_bytes.and_then(|s| i64::try_from(s).ok());
        self.with(|c| {
            c.execute(
                "INSERT INTO upshift_backups (id, instance, binding, run_id, method, location, source_database, product_version, created_at, size_bytes, sha256, valid, note)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
                &[&b.id, &b.instance, &b.binding, &b.run_id, &b.method, &b.location, &b.source_database, &b.product_version, &b.created_at, &size, &b.sha256, &b.valid, &b.note],
            )
            .map(|_| ())
        })
    }

    /// Mark a backup invalid with the reason.
    pub fn mark_invalid(&self, id: &str, note: &str) -> Result<(), StateError> {
        self.with(|c| {
            c.execute(
                "UPDATE upshift_backups SET valid = false, note = $2 WHERE id = $1",
                &[&id, &note],
            )
            .map(|_| ())
        })
    }

    fn backup_from(row: &Row) -> BackupRecord {
        let size: Option<i64> = row.get(9);
        BackupRecord {
            id: row.get(0),
            instance: row.get(1),
            binding: row.get(2),
            run_id: row.get(3),
            method: row.get(4),
            location: row.get(5),
            source_database: row.get(6),
            product_version: row.get(7),
            created_at: row.get(8),
            size_bytes: size.and_then(|s| u64::try_from(s).ok()),
            sha256: row.get(10),
            valid: row.get(11),
            note: row.get(12),
        }
    }

    /// One backup.
    pub fn backup(&self, id: &str) -> Result<Option<BackupRecord>, StateError> {
        self.with(|c| {
            c.query_opt("SELECT * FROM upshift_backups WHERE id = $1", &[&id])
                .map(|r| r.as_ref().map(Self::backup_from))
        })
    }

    /// Backups, newest first.
    pub fn backups(&self, instance: Option<&str>) -> Result<Vec<BackupRecord>, StateError> {
        self.with(|c| {
            c.query(
                "SELECT * FROM upshift_backups WHERE instance = COALESCE($1, instance) ORDER BY created_at DESC, id DESC",
                &[&instance],
            )
            .map(|rows| rows.iter().map(Self::backup_from).collect())
        })
    }
}

impl LeaseRows for PgState {
    fn try_take(
        &self,
        instance: &str,
        holder: &str,
        expires: i64,
        now: i64,
    ) -> Result<Option<i64>, LeaseError> {
        self.with(|c| {
            c.query_opt(
                "INSERT INTO upshift_leases (instance, holder, token, expires_ms) VALUES ($1, $2, 1, $3)
                 ON CONFLICT (instance) DO UPDATE SET holder = excluded.holder, token = upshift_leases.token + 1,
                 expires_ms = excluded.expires_ms WHERE upshift_leases.expires_ms < $4 OR upshift_leases.holder = $2
                 RETURNING token",
                &[&instance, &holder, &expires, &now],
            )
            .map(|r| r.map(|r| r.get::<_, i64>(0)))
        })
        .map_err(crate::lease_store)
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
                "UPDATE upshift_leases SET expires_ms = $1 WHERE instance = $2 AND token = $3 AND expires_ms >= $4",
                &[&expires, &instance, &token, &now],
            )
        })
        .map(|n| n == 1)
        .map_err(crate::lease_store)
    }

    fn try_move(
        &self,
        instance: &str,
        token: i64,
        holder: &str,
        expires: i64,
    ) -> Result<Option<i64>, LeaseError> {
        self.with(|c| {
            c.query_opt(
                "UPDATE upshift_leases SET holder = $1, token = token + 1, expires_ms = $2 WHERE instance = $3 AND token = $4 RETURNING token",
                &[&holder, &expires, &instance, &token],
            )
            .map(|r| r.map(|r| r.get::<_, i64>(0)))
        })
        .map_err(crate::lease_store)
    }

    fn row(&self, instance: &str) -> Result<Option<(String, i64, i64)>, LeaseError> {
        self.with(|c| {
            c.query_opt(
                "SELECT holder, token, expires_ms FROM upshift_leases WHERE instance = $1",
                &[&instance],
            )
            .map(|r| r.map(|r| (r.get(0), r.get(1), r.get(2))))
        })
        .map_err(crate::lease_store)
    }

    fn delete(&self, instance: &str, token: i64) -> Result<(), LeaseError> {
        self.with(|c| {
            c.execute(
                "DELETE FROM upshift_leases WHERE instance = $1 AND token = $2",
                &[&instance, &token],
            )
        })
        .map(|_| ())
        .map_err(crate::lease_store)
    }
}

impl WorkQueue for PgState {
    fn enqueue(&self, items: &[QueueItem]) -> Result<usize, StateError> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            let mut n = 0;
            for item in items {
                n += tx.execute(
                    "INSERT INTO upshift_queue (instance, target, status, enqueued_at) VALUES ($1, $2, 'pending', $3)
                     ON CONFLICT (instance) DO UPDATE SET target = excluded.target, status = 'pending', agent = NULL,
                       claims = 0, outcome = NULL, enqueued_at = excluded.enqueued_at, finished_at = NULL
                     WHERE upshift_queue.status = 'done'",
                    // Second precision, as runs record their start.
                    &[&item.instance, &item.target, &chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)],
                )?;
            }
            tx.commit()?;
            Ok(n as usize)
        })
    }

    fn claim(&self, agent: &str) -> Result<Option<Claim>, StateError> {
        let now = now_ms();
        // A claim whose agent has held no lease on the instance for a whole lease period is
        // abandoned (the agent died); a fresh claim is given that long to take its lease.
        let stale = now - crate::lease::default_ttl().as_millis() as i64;
        self.with(|c| {
            let mut tx = c.transaction()?;
            let row = tx.query_opt(
                "SELECT q.instance, q.target, q.status, q.enqueued_at FROM upshift_queue q
                 WHERE q.status = 'pending'
                    OR (q.status = 'claimed' AND q.claimed_ms < $2 AND NOT EXISTS (
                        SELECT 1 FROM upshift_leases l WHERE l.instance = q.instance AND l.expires_ms >= $1))
                 ORDER BY q.enqueued_at, q.instance
                 LIMIT 1 FOR UPDATE OF q SKIP LOCKED",
                &[&now, &stale],
            )?;
            let Some(row) = row else {
                tx.commit()?;
                return Ok(None);
            };
            let (instance, target, status, enqueued_at): (String, String, String, String) =
                (row.get(0), row.get(1), row.get(2), row.get(3));
            tx.execute(
                "UPDATE upshift_queue SET status = 'claimed', agent = $2, claims = claims + 1, claimed_ms = $3 WHERE instance = $1",
                &[&instance, &agent, &now],
            )?;
            tx.commit()?;
            Ok(Some(Claim {
                item: QueueItem { instance, target },
                reclaimed: status == "claimed",
                enqueued_at,
            }))
        })
    }

    fn finish(&self, instance: &str, outcome: &str) -> Result<(), StateError> {
        self.with(|c| {
            c.execute(
                "UPDATE upshift_queue SET status = 'done', outcome = $2, finished_at = $3 WHERE instance = $1",
                &[&instance, &outcome, &now()],
            )
            .map(|_| ())
        })
    }

    fn remaining(&self) -> Result<usize, StateError> {
        self.with(|c| {
            c.query_one(
                "SELECT count(*) FROM upshift_queue WHERE status <> 'done'",
                &[],
            )
            .map(|r| usize::try_from(r.get::<_, i64>(0)).unwrap_or(0))
        })
    }
}
