//! What the host remembers: runs, their steps (journaled before and after each one runs), the
//! backup catalog, the instance leases and the work queue, in SQLite (`<data>/state.db`, WAL
//! mode, [`sqlite`]) or in a shared PostgreSQL database ([`postgres`]) for agents on several
//! machines.
//!
//! Everything is asynchronous and never blocks the async runtime's worker threads: SQLite runs
//! under `spawn_blocking`, PostgreSQL through `tokio-postgres`. The store is the
//! [`StateStore`] trait; what it does is written once, in [`store`], over a small
//! [`store::Engine`] each database implements (run a statement, fetch rows). The engines differ
//! only in their schema and the SQL dialect ([`store::Dialect`]).

pub mod lease;
pub mod postgres;
pub mod queue;
pub mod sqlite;
pub mod store;

use std::fmt;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::lease::{Lease, LeaseStore};
use crate::queue::WorkQueue;

/// The schema version this build writes (5 added `pending`; 4 added `audit_index` and `kept`;
/// 3 added `artifacts` and `audit_anchors`).
const SCHEMA: i64 = 6;

/// How a run ended (or that it is still running). Serialized kebab-case (`rolled-back`), as every enum of the JSON interface; the older
/// snake_case names are still read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunStatus {
    /// Under way, or the host died while it ran.
    Running,
    /// Done and verified.
    Succeeded,
    /// Refused by the product's rules.
    Refused,
    /// Failed and rolled back.
    #[serde(alias = "rolled_back")]
    RolledBack,
    /// Failed and not rolled back: an operator is needed.
    Failed,
    /// Ended by the operator (`upshift abandon`), who put the instance right by hand; the
    /// host touched nothing when it was marked so.
    Abandoned,
    /// Failed before any step with an effect completed: nothing was changed.
    #[serde(alias = "nothing_changed")]
    NothingChanged,
}

/// How a step ended. Serialized kebab-case, as [`RunStatus`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
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
    #[serde(alias = "rolled_back")]
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

text_enum!(RunStatus { Running => "running", Succeeded => "succeeded", Refused => "refused", RolledBack => "rolled_back", Failed => "failed", Abandoned => "abandoned", NothingChanged => "nothing_changed" });
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
    /// Who journaled it (the lease holder: host, process, what for).
    pub holder: Option<String>,
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

/// A container a run's switch kept for switching back, journaled by id: switching back and
/// finalizing use this record only, never a container found by name or image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptRecord {
    /// The run whose switch kept it.
    pub run_id: String,
    /// Instance.
    pub instance: String,
    /// The service binding.
    pub binding: String,
    /// The kept container's full id.
    pub container_id: String,
    /// The id of the container created in its place (under the bound name).
    pub replaced_by: String,
    /// The image the kept container was created from (`repo:tag`).
    pub image: String,
    /// RFC 3339, when it was kept.
    pub kept_at: String,
    /// RFC 3339, when it was put back or removed; `None` while it is kept.
    pub released_at: Option<String>,
}

/// A backup artifact being made (or removed): recorded before it is created, forgotten once it
/// is catalogued or removed, so one a killed host left behind is found by `upshift gc`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingArtifact {
    /// Unique id (the backup id it was made for, or a fresh one).
    pub id: String,
    /// What it is: `clone` or `restore-target` (databases), `dump` or `snapshot` (directories,
    /// whose unfinished form is `<location>.partial`), `restore-dir` (a directory built beside
    /// a files binding).
    pub kind: String,
    /// The database name or the absolute path.
    pub location: String,
    /// Instance.
    pub instance: String,
    /// The binding it belongs to.
    pub binding: String,
    /// The run making it (`None`: `upshift gc` removing a backup).
    pub run_id: Option<String>,
    /// RFC 3339, when it was recorded.
    pub recorded_at: String,
}

/// The head of an audit log's hash chain as last anchored: how many records it had and the
/// hash of the last one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditAnchor {
    /// Records in the chain.
    pub records: u64,
    /// The last record's hash (64 zeros for an empty chain).
    pub head: String,
    /// RFC 3339, when it was anchored.
    pub anchored_at: String,
}

/// One audit record as the audit index keeps it: where its line is, so a run's records (or
/// its denials) are read by offset instead of by scanning the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditIndexRow {
    /// The record's sequence number.
    pub seq: u64,
    /// The log segment it is in (from 1).
    pub segment: u64,
    /// Byte offset of its line in that segment.
    pub offset: u64,
    /// Its run, if any.
    pub run_id: Option<String>,
    /// Whether the call was denied.
    pub denied: bool,
}

/// How far the audit index of one log reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditIndexEnd {
    /// Rows indexed.
    pub rows: u64,
    /// The row of the highest sequence number.
    pub last: AuditIndexRow,
}

/// The state database could not be used, saying whose fault it is.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// SQLite refused or failed a statement.
    #[error("state database {at}: SQLite said: {source}")]
    Sqlite {
        /// The file.
        at: String,
        /// What SQLite said.
        source: rusqlite::Error,
    },
    /// PostgreSQL refused or failed a statement, or the connection failed.
    #[error("state database {at}: PostgreSQL said: {source}")]
    Postgres {
        /// The URL as shown by `upshift_model::redact::url_for_display` (no userinfo).
        at: String,
        /// What PostgreSQL (or the connection to it) said.
        source: tokio_postgres::Error,
    },
    /// The PostgreSQL state could not be reached again within the store's state wait.
    #[error(
        "the state database at {at} has been unreachable for {waited_secs} s (the state wait is {limit_secs} s; set UPSHIFT_STATE_WAIT_SECS to wait longer); last: {cause}"
    )]
    Unreachable {
        /// The URL as shown by `upshift_model::redact::url_for_display` (no userinfo).
        at: String,
        /// How long it had been unreachable.
        waited_secs: u64,
        /// The state wait.
        limit_secs: u64,
        /// The last error connecting (or the statement's, when no attempt had been made).
        cause: String,
    },
    /// Written by a newer upshift.
    #[error(
        "state database {at} is newer (schema {found}) than this upshift (schema {SCHEMA}); upgrade upshift"
    )]
    Newer {
        /// The file.
        at: String,
        /// Its schema version.
        found: i64,
    },
    /// A stored value this build does not understand (written by something else).
    #[error(
        "state database {at}: unexpected value `{value}` in {column}; it was not written by this upshift"
    )]
    Value {
        /// The file or URL.
        at: String,
        /// Column.
        column: &'static str,
        /// Value.
        value: String,
    },
    /// The state file could not be made readable by its owner only.
    #[error("state database {at}: cannot make it private (mode 0600): {source}")]
    Private {
        /// The file.
        at: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A write made under a lease matched nothing because the lease is no longer the writer's:
    /// another holder took the instance over (or the lease was released). The writer must stop:
    /// write nothing more, and never roll back or restore.
    #[error(
        "the lease on instance `{instance}` (token {token}) is no longer this process's{}: this write was refused and the run stops without touching anything else",
        holder.as_ref().map(|h| format!(" (held by {h})")).unwrap_or_else(|| " (released)".into())
    )]
    Fenced {
        /// Instance.
        instance: String,
        /// The writer's (stale) token.
        token: i64,
        /// Who holds the lease now, if anyone.
        holder: Option<String>,
    },
    /// A write made under a lease found no row to change (a bug in upshift, or a row deleted
    /// by hand).
    #[error("state database {at}: the {what} to update is not there")]
    Missing {
        /// The database.
        at: String,
        /// What was to be updated.
        what: &'static str,
    },
    /// The thread running SQLite statements was lost (a bug in upshift, or shutdown).
    #[error("state database {at}: the thread running its statements stopped: {why}")]
    Worker {
        /// The file.
        at: String,
        /// Why.
        why: String,
    },
}

/// A state store operation under way. Boxed so that [`StateStore`] can be used as
/// `Arc<dyn StateStore>`.
pub type StateFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StateError>> + Send + 'a>>;

/// Where the state lives: runs, the steps journal, the backup catalog, leases (the supertrait
/// [`LeaseStore`]) and, in shared state, the work queue.
///
/// Callers hold it as `Arc<dyn StateStore>` (what [`open`] and [`open_postgres`] return): the
/// engine is chosen at run time from `--state`, and a trait object keeps every caller free of
/// engine type parameters. Methods return boxed futures ([`StateFuture`]) so the trait stays
/// dyn-compatible; the allocation is nothing next to a database round trip. There is one
/// implementation, [`store::Store`], generic over the engine.
pub trait StateStore: LeaseStore {
    /// Record a new run. This and every other write about a run is *fenced* by the lease it is
    /// made under: it lands only while `lease`'s token is still the instance's, and otherwise
    /// fails with [`StateError::Fenced`] having changed nothing.
    fn insert_run<'a>(&'a self, lease: &'a Lease, run: &'a RunRecord) -> StateFuture<'a, ()>;
    /// Record how a run ended (fenced).
    fn finish_run<'a>(
        &'a self,
        lease: &'a Lease,
        run_id: &'a str,
        status: RunStatus,
        message: Option<&'a str>,
    ) -> StateFuture<'a, ()>;
    /// Journal a step before it runs, naming the lease's holder (fenced).
    #[allow(clippy::too_many_arguments)]
    fn step_started<'a>(
        &'a self,
        lease: &'a Lease,
        run_id: &'a str,
        seq: u32,
        step_id: &'a str,
        title: &'a str,
        phase: &'a str,
    ) -> StateFuture<'a, ()>;
    /// Journal how a step ended (fenced).
    #[allow(clippy::too_many_arguments)]
    fn step_finished<'a>(
        &'a self,
        lease: &'a Lease,
        run_id: &'a str,
        seq: u32,
        phase: &'a str,
        status: StepStatus,
        output: Option<&'a str>,
        error: Option<&'a str>,
    ) -> StateFuture<'a, ()>;
    /// One run.
    fn run<'a>(&'a self, run_id: &'a str) -> StateFuture<'a, Option<RunRecord>>;
    /// Runs, newest first.
    fn runs<'a>(
        &'a self,
        instance: Option<&'a str>,
        limit: usize,
    ) -> StateFuture<'a, Vec<RunRecord>>;
    /// A run's steps: forward ones, then rollback ones, each in order, then the operator's
    /// (`abandon`).
    fn steps<'a>(&'a self, run_id: &'a str) -> StateFuture<'a, Vec<StepRecord>>;
    /// The unfinished runs of `instance`, newest first (see [`store::UNFINISHED`]): runs
    /// still `running` (under way, or their host died), and upgrades that stopped for an
    /// operator at a forward step whose outcome is unknown (`failed`, a forward step journaled
    /// as started and never as finished, no rollback begun) that no later run superseded, which
    /// `upshift resume RUN --step-done STEP` can still finish.
    fn unfinished_runs<'a>(&'a self, instance: &'a str) -> StateFuture<'a, Vec<RunRecord>>;
    /// The runs of `run`'s instance that started after it (they supersede it), oldest first.
    fn runs_after<'a>(&'a self, run: &'a RunRecord) -> StateFuture<'a, Vec<RunRecord>>;
    /// Mark run `run_id` abandoned by the operator, if its status is still `expected`:
    /// journal a step (phase `operator`, id `abandon`) holding `why`, and end the run with
    /// status `abandoned`. Whether it was (false: its status changed meanwhile).
    fn abandon_run<'a>(
        &'a self,
        lease: &'a Lease,
        run_id: &'a str,
        expected: RunStatus,
        why: &'a str,
    ) -> StateFuture<'a, bool>;
    /// Catalogue a backup (fenced).
    fn insert_backup<'a>(
        &'a self,
        lease: &'a Lease,
        backup: &'a BackupRecord,
    ) -> StateFuture<'a, ()>;
    /// Mark a backup invalid (it failed verification) with the reason.
    fn mark_invalid<'a>(&'a self, id: &'a str, note: &'a str) -> StateFuture<'a, ()>;
    /// Mark a backup valid again (a later verification passed) and clear the failure note.
    fn mark_valid<'a>(&'a self, id: &'a str) -> StateFuture<'a, ()>;
    /// One backup.
    fn backup<'a>(&'a self, id: &'a str) -> StateFuture<'a, Option<BackupRecord>>;
    /// Backups, newest first.
    fn backups<'a>(&'a self, instance: Option<&'a str>) -> StateFuture<'a, Vec<BackupRecord>>;
    /// Remove a backup from the catalog (its files or database are already gone).
    fn delete_backup<'a>(&'a self, id: &'a str) -> StateFuture<'a, ()>;
    /// Record an artifact about to be created (or removed), before it is touched (fenced).
    fn record_pending<'a>(
        &'a self,
        lease: &'a Lease,
        artifact: &'a PendingArtifact,
    ) -> StateFuture<'a, ()>;
    /// Forget a pending artifact: it was catalogued or removed.
    fn forget_pending<'a>(&'a self, id: &'a str) -> StateFuture<'a, ()>;
    /// The pending artifacts (of one instance, or all), oldest first.
    fn pending<'a>(&'a self, instance: Option<&'a str>) -> StateFuture<'a, Vec<PendingArtifact>>;
    /// Journal a container a switch kept for switching back (fenced).
    fn record_kept<'a>(&'a self, lease: &'a Lease, kept: &'a KeptRecord) -> StateFuture<'a, ()>;
    /// The containers run `run_id` kept, in the order they were kept.
    fn kept<'a>(&'a self, run_id: &'a str) -> StateFuture<'a, Vec<KeptRecord>>;
    /// Record that the kept container `container_id` of run `run_id` was put back or removed.
    /// (Fenced.)
    fn release_kept<'a>(
        &'a self,
        lease: &'a Lease,
        run_id: &'a str,
        container_id: &'a str,
    ) -> StateFuture<'a, ()>;
    /// The work queue agents claim from (shared PostgreSQL state only).
    fn queue(&self) -> Option<&dyn WorkQueue>;
    /// The sha256 recorded for the compiled artifact of adapter `adapter_digest` under the
    /// engine whose compatibility key is `engine`.
    fn artifact_digest<'a>(
        &'a self,
        adapter_digest: &'a str,
        engine: &'a str,
    ) -> StateFuture<'a, Option<String>>;
    /// Record `sha256` as the trusted compiled artifact of `adapter_digest` under `engine`
    /// (replacing an earlier one).
    fn record_artifact<'a>(
        &'a self,
        adapter_digest: &'a str,
        engine: &'a str,
        sha256: &'a str,
    ) -> StateFuture<'a, ()>;
    /// The anchored head of the audit log named `log`.
    fn audit_anchor<'a>(&'a self, log: &'a str) -> StateFuture<'a, Option<AuditAnchor>>;
    /// Anchor the head of the audit log named `log`: `records` records, the last one `head`.
    fn anchor_audit<'a>(&'a self, log: &'a str, records: u64, head: &'a str)
    -> StateFuture<'a, ()>;
    /// Index `rows` of the audit log named `log` (a row for a sequence number already there is
    /// replaced).
    fn index_audit<'a>(&'a self, log: &'a str, rows: &'a [AuditIndexRow]) -> StateFuture<'a, ()>;
    /// The indexed records of run `run_id` in the audit log named `log` (only the denied
    /// ones when `denied_only`), by sequence number, up to sequence number `up_to`.
    fn audit_index_for_run<'a>(
        &'a self,
        log: &'a str,
        run_id: &'a str,
        denied_only: bool,
        up_to: u64,
    ) -> StateFuture<'a, Vec<AuditIndexRow>>;
    /// How far the index of the audit log named `log` reaches (`None`: nothing indexed).
    fn audit_index_end<'a>(&'a self, log: &'a str) -> StateFuture<'a, Option<AuditIndexEnd>>;
    /// Forget the index of the audit log named `log` (it is rebuilt from the log).
    fn clear_audit_index<'a>(&'a self, log: &'a str) -> StateFuture<'a, ()>;
}

/// Open (creating or migrating) the SQLite state database, `<data>/state.db`.
pub async fn open(path: &Path) -> Result<Arc<dyn StateStore>, StateError> {
    Ok(Arc::new(sqlite::open(path).await?))
}

/// Open (creating the tables in) the state in PostgreSQL; `lease_ttl` is the hosts' lease
/// period (a queued claim whose agent holds no lease that long is given to another agent);
/// `state_wait` how long a statement waits for a lost database (reconnecting) before it fails
/// (default [`postgres::DEFAULT_STATE_WAIT`]).
pub async fn open_postgres(
    url: &str,
    lease_ttl: std::time::Duration,
    state_wait: std::time::Duration,
) -> Result<Arc<dyn StateStore>, StateError> {
    Ok(Arc::new(postgres::open(url, lease_ttl, state_wait).await?))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::LeaseError;

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

    /// The lease writes about `instance` are made under in these tests (taken again each time,
    /// so always the newest token).
    async fn fence(store: &Arc<dyn StateStore>, instance: &str) -> Lease {
        store
            .acquire(instance, "tests", std::time::Duration::from_secs(60))
            .await
            .expect("lease")
    }

    /// A new state database: its directory (removed when dropped), path and store.
    async fn fresh() -> (tempfile::TempDir, std::path::PathBuf, Arc<dyn StateStore>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.db");
        let store = open(&path).await.expect("open");
        (dir, path, store)
    }

    #[tokio::test]
    async fn runs_steps_and_backups_round_trip() {
        let (_dir, path, store) = fresh().await;
        store
            .insert_run(
                &fence(&store, "a").await,
                &run("r1", "a", "2026-01-01T00:00:00Z"),
            )
            .await
            .expect("insert");
        store
            .insert_run(
                &fence(&store, "b").await,
                &run("r2", "b", "2026-01-02T00:00:00Z"),
            )
            .await
            .expect("insert");
        store
            .step_started(
                &fence(&store, "a").await,
                "r1",
                0,
                "stop",
                "stop it",
                "forward",
            )
            .await
            .expect("start");
        store
            .step_started(
                &fence(&store, "a").await,
                "r1",
                0,
                "rollback-stop-app",
                "stop",
                "rollback",
            )
            .await
            .expect("start");
        assert_eq!(
            store.steps("r1").await.expect("steps")[0].status,
            StepStatus::Started,
            "journaled before it runs"
        );
        store
            .step_finished(
                &fence(&store, "a").await,
                "r1",
                0,
                "forward",
                StepStatus::Failed,
                None,
                Some("boom"),
            )
            .await
            .expect("finish");
        store
            .finish_run(
                &fence(&store, "a").await,
                "r1",
                RunStatus::RolledBack,
                Some("boom"),
            )
            .await
            .expect("finish");
        let steps = store.steps("r1").await.expect("steps");
        assert_eq!(
            steps.iter().map(|s| s.phase.as_str()).collect::<Vec<_>>(),
            ["forward", "rollback"]
        );
        assert_eq!(steps[0].error.as_deref(), Some("boom"));
        assert!(steps[0].duration_ms.is_some());
        let runs = store.runs(None, 10).await.expect("runs");
        assert_eq!(
            runs.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["r2", "r1"]
        );
        assert_eq!(
            store.runs(Some("a"), 10).await.expect("runs")[0].status,
            RunStatus::RolledBack
        );

        let b = BackupRecord {
            id: new_backup_id(),
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
        store
            .insert_backup(&fence(&store, &b.instance).await, &b)
            .await
            .expect("backup");
        drop(store);
        let store = open(&path).await.expect("reopen");
        assert_eq!(store.backup(&b.id).await.expect("get"), Some(b.clone()));
        assert_eq!(store.backups(Some("b")).await.expect("list"), vec![]);
        assert_ne!(new_backup_id(), new_backup_id());
    }

    #[tokio::test]
    async fn artifacts_and_audit_anchors_round_trip_and_older_databases_gain_their_tables() {
        let (_dir, path, store) = fresh().await;
        assert_eq!(store.artifact_digest("ad", "e1").await.expect("get"), None);
        store
            .record_artifact("ad", "e1", "aa")
            .await
            .expect("record");
        store
            .record_artifact("ad", "e1", "bb")
            .await
            .expect("replace");
        store
            .record_artifact("ad", "e2", "cc")
            .await
            .expect("other engine");
        assert_eq!(
            store.artifact_digest("ad", "e1").await.expect("get"),
            Some("bb".into())
        );
        assert_eq!(store.audit_anchor("log").await.expect("get"), None);
        store.anchor_audit("log", 3, "h3").await.expect("anchor");
        store.anchor_audit("log", 5, "h5").await.expect("anchor");
        let anchor = store.audit_anchor("log").await.expect("get").expect("some");
        assert_eq!((anchor.records, anchor.head.as_str()), (5, "h5"));
        drop(store);

        // A database written by the previous schema (no such tables) gains them on open.
        let conn = rusqlite::Connection::open(&path).expect("open");
        conn.execute_batch(
            "DROP TABLE artifacts; DROP TABLE audit_anchors; PRAGMA user_version = 2;",
        )
        .expect("downgrade");
        drop(conn);
        let store = open(&path).await.expect("migrates");
        assert_eq!(store.artifact_digest("ad", "e1").await.expect("get"), None);
        store.anchor_audit("log", 1, "h1").await.expect("anchor");
        assert!(store.audit_anchor("log").await.expect("get").is_some());
    }

    #[tokio::test]
    async fn kept_containers_round_trip_and_are_released() {
        let (_dir, path, store) = fresh().await;
        let kept = KeptRecord {
            run_id: "r1".into(),
            instance: "kw".into(),
            binding: "app".into(),
            container_id: "a".repeat(64),
            replaced_by: "b".repeat(64),
            image: "kwdb/kwdb:2.2.0".into(),
            kept_at: "2026-01-01T00:00:00Z".into(),
            released_at: None,
        };
        store
            .record_kept(&fence(&store, &kept.instance).await, &kept)
            .await
            .expect("record");
        assert_eq!(store.kept("r1").await.expect("kept"), vec![kept.clone()]);
        assert_eq!(store.kept("r2").await.expect("kept"), vec![]);
        store
            .release_kept(
                &fence(&store, &kept.instance).await,
                "r1",
                &kept.container_id,
            )
            .await
            .expect("release");
        drop(store);
        let store = open(&path).await.expect("reopen");
        let back = store.kept("r1").await.expect("kept");
        assert!(back[0].released_at.is_some(), "{back:?}");

        // A database of the previous schema gains the table on open.
        drop(store);
        let conn = rusqlite::Connection::open(&path).expect("open");
        conn.execute_batch("DROP TABLE kept; PRAGMA user_version = 3;")
            .expect("downgrade");
        drop(conn);
        let store = open(&path).await.expect("migrates");
        assert_eq!(store.kept("r1").await.expect("kept"), vec![]);
    }

    #[tokio::test]
    async fn the_audit_index_round_trips_and_older_databases_gain_it() {
        let (_dir, path, store) = fresh().await;
        assert_eq!(store.audit_index_end("log").await.expect("end"), None);
        let rows: Vec<AuditIndexRow> = (0..1200u64)
            .map(|seq| AuditIndexRow {
                seq,
                segment: 1 + seq / 500,
                offset: seq * 100,
                run_id: (seq % 4 != 3).then(|| format!("run-{}", seq % 4)),
                denied: seq % 2 == 1,
            })
            .collect();
        store.index_audit("log", &rows).await.expect("index");
        store.index_audit("other", &rows[..3]).await.expect("index");
        // Written again (a catch-up overlapping the writer): replaced, not doubled.
        store
            .index_audit("log", &rows[1100..])
            .await
            .expect("index");
        let end = store
            .audit_index_end("log")
            .await
            .expect("end")
            .expect("some");
        assert_eq!((end.rows, &end.last), (1200, &rows[1199]));
        let run_1 = store
            .audit_index_for_run("log", "run-1", false, u64::MAX)
            .await
            .expect("run");
        assert_eq!(run_1.len(), 300);
        assert!(run_1.iter().all(|r| r.run_id.as_deref() == Some("run-1")));
        let denied = store
            .audit_index_for_run("log", "run-1", true, 100)
            .await
            .expect("run");
        assert_eq!(denied.len(), 25);
        assert!(denied.iter().all(|r| r.denied && r.seq <= 100));
        assert!(
            store
                .audit_index_for_run("log", "run-0", true, u64::MAX)
                .await
                .expect("run")
                .is_empty()
        );
        store.clear_audit_index("log").await.expect("clear");
        assert_eq!(store.audit_index_end("log").await.expect("end"), None);
        assert!(store.audit_index_end("other").await.expect("end").is_some());
        drop(store);

        // A database of schema 3 (no index table) gains it on open.
        let conn = rusqlite::Connection::open(&path).expect("open");
        conn.execute_batch("DROP TABLE audit_index; PRAGMA user_version = 3;")
            .expect("downgrade");
        drop(conn);
        let store = open(&path).await.expect("migrates");
        store.index_audit("log", &rows[..2]).await.expect("index");
        assert_eq!(
            store
                .audit_index_end("log")
                .await
                .expect("end")
                .map(|e| e.rows),
            Some(2)
        );
    }

    #[tokio::test]
    async fn pending_artifacts_round_trip_and_older_databases_gain_their_table() {
        let (_dir, path, store) = fresh().await;
        let artifact = |id: &str, instance: &str| PendingArtifact {
            id: id.into(),
            kind: "clone".into(),
            location: format!("metadb_{id}"),
            instance: instance.into(),
            binding: "meta".into(),
            run_id: Some("r1".into()),
            recorded_at: format!("2026-01-01T00:00:0{}Z", id.len()),
        };
        store
            .record_pending(&fence(&store, "bb").await, &artifact("a", "bb"))
            .await
            .expect("record");
        store
            .record_pending(&fence(&store, "om").await, &artifact("bb", "om"))
            .await
            .expect("record");
        assert_eq!(
            store.pending(None).await.expect("all"),
            vec![artifact("a", "bb"), artifact("bb", "om")]
        );
        assert_eq!(
            store.pending(Some("om")).await.expect("om"),
            vec![artifact("bb", "om")]
        );
        store.forget_pending("a").await.expect("forget");
        store
            .forget_pending("a")
            .await
            .expect("forgetting twice is fine");
        assert_eq!(store.pending(Some("bb")).await.expect("bb"), vec![]);
        drop(store);

        // A database of schema 4 (no `pending` table) gains it on open.
        let conn = rusqlite::Connection::open(&path).expect("open");
        conn.execute_batch("DROP TABLE pending; PRAGMA user_version = 4;")
            .expect("downgrade");
        drop(conn);
        let store = open(&path).await.expect("migrates");
        assert_eq!(store.pending(None).await.expect("empty"), vec![]);
        store
            .record_pending(&fence(&store, "bb").await, &artifact("c", "bb"))
            .await
            .expect("record");
    }

    #[tokio::test]
    async fn backups_are_deleted_from_the_catalog() {
        let (_dir, _, store) = fresh().await;
        let b = BackupRecord {
            id: "bk-1".into(),
            instance: "a".into(),
            binding: "meta".into(),
            run_id: None,
            method: "dump".into(),
            location: "/x".into(),
            source_database: "metadb".into(),
            product_version: "3.10.0".into(),
            created_at: "2026-01-01T00:00:00Z".into(),
            size_bytes: None,
            sha256: None,
            valid: true,
            note: None,
        };
        store
            .insert_backup(&fence(&store, &b.instance).await, &b)
            .await
            .expect("insert");
        store.delete_backup("bk-1").await.expect("delete");
        assert_eq!(store.backup("bk-1").await.expect("get"), None);
    }

    /// A real full disk (a 16 MiB tmpfs): the journal still records a run because the reserve
    /// beside the state database is released, and the reserve is made again once there is
    /// room.
    #[tokio::test]
    async fn a_full_disk_releases_the_reserve_so_the_journal_still_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=16m", "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            let message = "this test needs `mount -t tmpfs` (root, or CAP_SYS_ADMIN) for a real full disk, and it was refused";
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{message}");
            }
            eprintln!("SKIPPED: {message}");
            return;
        }
        struct Unmount<'a>(&'a std::path::Path);
        impl Drop for Unmount<'_> {
            fn drop(&mut self) {
                let _ = std::process::Command::new("umount").arg(self.0).status();
            }
        }
        let _unmount = Unmount(dir.path());
        let path = dir.path().join("state.db");
        let store = open(&path).await.expect("open");
        let reserve = dir.path().join(sqlite::RESERVE_FILE);
        assert_eq!(
            std::fs::metadata(&reserve).expect("reserve").len(),
            sqlite::RESERVE_BYTES
        );
        // Something else fills the disk to the last byte.
        let filler = dir.path().join("filler");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&filler).expect("filler");
            let chunk = vec![7u8; 64 << 10];
            while f.write_all(&chunk).is_ok() {}
            while f.write_all(&[7u8]).is_ok() {}
            let _ = f.sync_all();
        }
        let mut runs = 0;
        // Enough rows to need new pages (about 16 KiB of WAL each, so a run's journal fits
        // the reserve many times): without the reserve these fail with SQLITE_FULL.
        for i in 0..100 {
            let mut r = run(&format!("r{i}"), "a", "2026-01-01T00:00:00Z");
            r.plan_json = "x".repeat(4000);
            store
                .insert_run(&fence(&store, "a").await, &r)
                .await
                .unwrap_or_else(|e| panic!("run {i} journaled despite the full disk: {e}"));
            runs += 1;
        }
        assert_eq!(runs, 100);
        assert!(!reserve.exists(), "the reserve was released");
        // Room again: the next write makes the reserve again.
        std::fs::remove_file(&filler).expect("remove filler");
        store
            .finish_run(
                &fence(&store, "a").await,
                "r0",
                RunStatus::RolledBack,
                Some("disk full"),
            )
            .await
            .expect("finish");
        assert_eq!(
            std::fs::metadata(&reserve)
                .expect("reserve made again")
                .len(),
            sqlite::RESERVE_BYTES
        );
        drop(store);
    }

    #[tokio::test]
    async fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.db");
        let conn = rusqlite::Connection::open(&path).expect("open");
        conn.pragma_update(None, "user_version", 7).expect("set");
        drop(conn);
        let err = open(&path).await.err().expect("refused").to_string();
        assert!(
            err.contains("newer (schema 7)") && err.contains("upgrade upshift"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_value_this_build_did_not_write_is_an_error_naming_it() {
        let (_dir, path, store) = fresh().await;
        store
            .insert_run(
                &fence(&store, "a").await,
                &run("r1", "a", "2026-01-01T00:00:00Z"),
            )
            .await
            .expect("insert");
        let conn = rusqlite::Connection::open(&path).expect("open");
        conn.execute("UPDATE runs SET status = 'paused' WHERE id = 'r1'", [])
            .expect("tamper");
        let err = store.run("r1").await.expect_err("refused").to_string();
        assert!(
            err.contains("`paused`") && err.contains("runs.status"),
            "{err}"
        );
        let err = store.runs(None, 5).await.expect_err("refused").to_string();
        assert!(err.contains("`paused`"), "{err}");
    }

    #[tokio::test]
    async fn unfinished_runs_are_running_ones_and_those_stopped_at_an_unknown_step() {
        let (_dir, path, store) = fresh().await;
        let ids = |runs: Vec<RunRecord>| runs.into_iter().map(|r| r.id).collect::<Vec<_>>();
        // r1 ended; r2 stopped for an operator at a step whose outcome is unknown.
        store
            .insert_run(
                &fence(&store, "a").await,
                &run("r1", "a", "2026-01-01T00:00:00Z"),
            )
            .await
            .expect("insert");
        store
            .finish_run(&fence(&store, "a").await, "r1", RunStatus::Succeeded, None)
            .await
            .expect("finish");
        store
            .insert_run(
                &fence(&store, "a").await,
                &run("r2", "a", "2026-01-02T00:00:00Z"),
            )
            .await
            .expect("insert");
        store
            .step_started(
                &fence(&store, "a").await,
                "r2",
                0,
                "stop",
                "stop it",
                "forward",
            )
            .await
            .expect("step");
        store
            .step_finished(
                &fence(&store, "a").await,
                "r2",
                0,
                "forward",
                StepStatus::Succeeded,
                None,
                None,
            )
            .await
            .expect("step");
        store
            .step_started(
                &fence(&store, "a").await,
                "r2",
                1,
                "migrate",
                "migrate",
                "forward",
            )
            .await
            .expect("step");
        store
            .finish_run(
                &fence(&store, "a").await,
                "r2",
                RunStatus::Failed,
                Some("unknown outcome"),
            )
            .await
            .expect("finish");
        assert_eq!(
            ids(store.unfinished_runs("a").await.expect("q")),
            ["r2"],
            "stopped at an unknown step"
        );
        assert!(store.unfinished_runs("b").await.expect("q").is_empty());
        // A failed run whose rollback ran is finished.
        store
            .step_started(
                &fence(&store, "a").await,
                "r2",
                0,
                "rollback-start",
                "start",
                "rollback",
            )
            .await
            .expect("step");
        assert!(store.unfinished_runs("a").await.expect("q").is_empty());
        rusqlite::Connection::open(&path)
            .expect("open")
            .execute("DELETE FROM steps WHERE phase = 'rollback'", [])
            .expect("undo");
        // A later run supersedes it (same second: the later id wins), and is itself unfinished.
        let r2 = store.run("r2").await.expect("get").expect("r2");
        store
            .insert_run(
                &fence(&store, "a").await,
                &run("r3", "a", "2026-01-02T00:00:00Z"),
            )
            .await
            .expect("insert");
        assert_eq!(ids(store.runs_after(&r2).await.expect("q")), ["r3"]);
        assert_eq!(ids(store.unfinished_runs("a").await.expect("q")), ["r3"]);
        let r3 = store.run("r3").await.expect("get").expect("r3");
        assert!(store.runs_after(&r3).await.expect("q").is_empty());

        // Abandoned: only from the status it had, with the reason journaled.
        assert!(
            !store
                .abandon_run(&fence(&store, "a").await, "r3", RunStatus::Failed, "x")
                .await
                .expect("cas")
        );
        assert!(
            store
                .abandon_run(
                    &fence(&store, "a").await,
                    "r3",
                    RunStatus::Running,
                    "fixed by hand"
                )
                .await
                .expect("abandon")
        );
        let r3 = store.run("r3").await.expect("get").expect("r3");
        assert_eq!(r3.status, RunStatus::Abandoned);
        assert!(r3.finished_at.is_some());
        assert_eq!(
            r3.message.as_deref(),
            Some("abandoned by the operator: fixed by hand")
        );
        let steps = store.steps("r3").await.expect("steps");
        assert_eq!(
            (steps[0].phase.as_str(), steps[0].step_id.as_str()),
            ("operator", "abandon")
        );
        assert_eq!(steps[0].output.as_deref(), Some("fixed by hand"));
        assert!(store.unfinished_runs("a").await.expect("q").is_empty());
    }

    /// Case 6: many processes opening a brand-new state file at once all get it, schema
    /// and all, and none reports "database is locked".
    #[test]
    fn many_openers_of_a_new_file_all_succeed() {
        for round in 0..5 {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("state.db");
            let threads: Vec<_> = (0..8)
                .map(|i| {
                    let path = path.clone();
                    std::thread::spawn(move || {
                        let rt = tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                            .expect("runtime");
                        rt.block_on(async {
                            let store = open(&path).await.map_err(|e| e.to_string())?;
                            store
                                .acquire(
                                    "kw",
                                    &format!("opener {i}"),
                                    std::time::Duration::from_secs(30),
                                )
                                .await
                                .map(|_| true)
                                .or_else(|e| match e {
                                    crate::lease::LeaseError::Held { .. } => Ok(false),
                                    other => Err(other.to_string()),
                                })
                        })
                    })
                })
                .collect();
            let results: Vec<Result<bool, String>> = threads
                .into_iter()
                .map(|t| t.join().expect("thread"))
                .collect();
            assert!(
                results.iter().all(Result::is_ok),
                "round {round}: {results:?}"
            );
            assert_eq!(
                results.iter().filter(|r| matches!(r, Ok(true))).count(),
                1,
                "round {round}: exactly one holds the lease: {results:?}"
            );
        }
    }

    #[tokio::test]
    async fn leases_are_exclusive_until_released() {
        let (_dir, _, store) = fresh().await;
        let ttl = std::time::Duration::from_secs(30);
        let a = store.acquire("kw", "A", ttl).await.expect("A");
        match store.acquire("kw", "B", ttl).await {
            Err(crate::lease::LeaseError::Held { holder, .. }) => assert_eq!(holder, "A"),
            other => panic!("B must be refused: {other:?}"),
        }
        store.release(&a).await.expect("release");
        let b = store.acquire("kw", "B", ttl).await.expect("B after A");
        assert_eq!(b.holder, "B");
        store.check(&b).await.expect("B holds it");
    }

    /// Every write about a run is fenced: once the lease moved to another holder, the old
    /// holder's run, step, backup, pending and kept writes all fail with `Fenced` and change
    /// nothing, while the new holder's land and name it.
    #[tokio::test]
    async fn writes_under_a_lease_that_moved_are_refused_and_change_nothing() {
        let (_dir, _path, store) = fresh().await;
        let ttl = std::time::Duration::from_secs(60);
        let old = store.acquire("a", "host A", ttl).await.expect("lease");
        store
            .insert_run(&old, &run("r1", "a", "2026-01-01T00:00:00Z"))
            .await
            .expect("insert");
        store
            .step_started(&old, "r1", 0, "start", "start it", "forward")
            .await
            .expect("step");
        let new = store
            .take_over("a", old.token, "host B", ttl)
            .await
            .expect("take over");
        assert!(new.token > old.token);
        let fenced = |r: Result<(), StateError>| {
            assert!(
                matches!(&r, Err(StateError::Fenced { instance, token, holder }) if instance == "a" && *token == old.token && holder.as_deref() == Some("host B")),
                "{r:?}"
            )
        };
        fenced(
            store
                .step_finished(
                    &old,
                    "r1",
                    0,
                    "forward",
                    StepStatus::Failed,
                    None,
                    Some("stale"),
                )
                .await,
        );
        fenced(
            store
                .finish_run(&old, "r1", RunStatus::Failed, Some("stale"))
                .await,
        );
        fenced(
            store
                .step_started(&old, "r1", 1, "verify", "verify", "forward")
                .await,
        );
        fenced(
            store
                .insert_run(&old, &run("r2", "a", "2026-01-02T00:00:00Z"))
                .await,
        );
        assert!(
            store
                .abandon_run(&old, "r1", RunStatus::Running, "stale")
                .await
                .is_err()
        );
        // Nothing changed: the run is still running, its one step still started by A.
        let r1 = store.run("r1").await.expect("get").expect("r1");
        assert_eq!(r1.status, RunStatus::Running);
        assert!(store.run("r2").await.expect("get").is_none());
        let steps = store.steps("r1").await.expect("steps");
        assert_eq!(steps.len(), 1, "{steps:?}");
        assert_eq!(steps[0].status, StepStatus::Started);
        assert_eq!(steps[0].holder.as_deref(), Some("host A"));
        // The new holder's writes land, and the journal names it.
        store
            .step_finished(
                &new,
                "r1",
                0,
                "forward",
                StepStatus::Succeeded,
                Some("done"),
                None,
            )
            .await
            .expect("finish step");
        store
            .step_started(&new, "r1", 1, "verify", "verify", "forward")
            .await
            .expect("step");
        store
            .finish_run(&new, "r1", RunStatus::Succeeded, None)
            .await
            .expect("finish run");
        let steps = store.steps("r1").await.expect("steps");
        assert_eq!(steps[1].holder.as_deref(), Some("host B"));
        // A write under the current token for a row that is not there is not a lost lease.
        assert!(matches!(
            store
                .finish_run(&new, "nope", RunStatus::Failed, None)
                .await,
            Err(StateError::Missing { .. })
        ));
        // A renewal under the old token fails; an expired lease nobody took is still renewed.
        assert!(matches!(
            store.renew(&old, ttl).await,
            Err(LeaseError::Lost { .. })
        ));
        let short = store
            .acquire("b", "host A", std::time::Duration::from_millis(1))
            .await
            .expect("lease");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        store
            .renew(&short, ttl)
            .await
            .expect("renewed: nobody took it");
    }
}
