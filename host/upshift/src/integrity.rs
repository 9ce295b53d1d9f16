//! What the state store vouches for that the data and cache directories cannot: the digests of
//! the compiled artifacts this host trusts ([`StateLedger`], for the runtime's cache) and the
//! head of the audit log's hash chain ([`StateAnchor`], for the audit log). The same writer
//! keeps the audit index: where each record is, by run and outcome, so a run's records and
//! denials are read by offset ([`records_for_run`]) instead of by scanning the log; an index
//! that is missing or behind is caught up from the log ([`catch_up_index`]).

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::audit::{AuditLog, AuditRecord, ChainAnchor, ChainHead, Decision, IndexEntry, RecordAt};
use crate::caps::{Event, EventSink};
use crate::runtime::cache::{ArtifactLedger, LedgerFuture};
use crate::state::{AuditIndexRow, StateStore};

/// The runtime's artifact ledger in the state store.
pub struct StateLedger(pub Arc<dyn StateStore>);

impl ArtifactLedger for StateLedger {
    fn recorded<'a>(
        &'a self,
        adapter: &'a str,
        engine: &'a str,
    ) -> LedgerFuture<'a, Option<String>> {
        Box::pin(async move {
            self.0
                .artifact_digest(adapter, engine)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn record<'a>(
        &'a self,
        adapter: &'a str,
        engine: &'a str,
        artifact: &'a str,
    ) -> LedgerFuture<'a, ()> {
        Box::pin(async move {
            self.0
                .record_artifact(adapter, engine, artifact)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

/// The name an audit log's anchor has in the state store: this machine's host name and the
/// log's absolute path, since agents on several machines may share one state store.
pub fn audit_log_key(path: &Path) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    let absolute = path
        .parent()
        .and_then(|dir| dir.canonicalize().ok())
        .zip(path.file_name())
        .map(|(dir, name)| dir.join(name))
        .unwrap_or_else(|| path.to_path_buf());
    format!("{host}:{}", absolute.display())
}

/// Index rows held for the writer at most; past that (the writer cannot keep up with a flood
/// of calls) this session indexes nothing more and the next session catches up from the log.
const MAX_PENDING_ROWS: usize = 50_000;

fn row_of(entry: &IndexEntry) -> AuditIndexRow {
    AuditIndexRow {
        seq: entry.seq,
        segment: entry.at.segment,
        offset: entry.at.offset,
        run_id: entry.run_id.clone(),
        denied: entry.decision == Decision::Denied,
    }
}

#[derive(Default)]
struct Slot {
    /// The newest head not yet handed to the writer.
    latest: Option<ChainHead>,
    /// Index rows of the records up to `latest`, in order.
    pending: Vec<AuditIndexRow>,
    /// Rows were dropped (too many pending): index nothing more.
    overflowed: bool,
    /// The writer is storing a head.
    busy: bool,
    /// Stop once nothing is pending.
    stop: bool,
}

struct Shared {
    slot: Mutex<Slot>,
    changed: Condvar,
}

/// Anchors an audit log's head in the state store, and indexes its records there. Every append
/// hands it the record's place and the new head, which costs a lock and a wake-up; a writer
/// thread stores the pending index rows in batches, then the newest head (heads that arrive
/// while it writes are coalesced into the next write). [`StateAnchor::flush`] waits until the newest
/// head is stored; a session flushes when it ends.
pub struct StateAnchor {
    shared: Arc<Shared>,
}

impl StateAnchor {
    /// Start the writer for the log named `key` (see [`audit_log_key`]); failures to store a
    /// head go to `events` as warnings. Must be called inside a Tokio runtime, which the
    /// writer uses to reach the store.
    pub fn start(
        state: Arc<dyn StateStore>,
        key: String,
        events: EventSink,
    ) -> std::io::Result<Arc<StateAnchor>> {
        let shared = Arc::new(Shared {
            slot: Mutex::new(Slot::default()),
            changed: Condvar::new(),
        });
        let handle = tokio::runtime::Handle::try_current().map_err(std::io::Error::other)?;
        let writer = shared.clone();
        std::thread::Builder::new()
            .name("upshift-audit-anchor".into())
            .spawn(move || {
                loop {
                    let (head, rows) = {
                        let mut slot = writer.slot.lock().unwrap_or_else(PoisonError::into_inner);
                        loop {
                            if let Some(head) = slot.latest.take() {
                                slot.busy = true;
                                break (head, std::mem::take(&mut slot.pending));
                            }
                            if slot.stop {
                                return;
                            }
                            slot = writer
                                .changed
                                .wait(slot)
                                .unwrap_or_else(PoisonError::into_inner);
                        }
                    };
                    // The rows first: an anchored head never runs ahead of its index by more
                    // than what a catch-up reads.
                    if !rows.is_empty()
                        && let Err(e) = handle.block_on(state.index_audit(&key, &rows))
                    {
                        events.emit(Event::Log {
                            instance: "upshift".into(),
                            level: "warn".into(),
                            message: format!(
                                "{} audit records could not be indexed in the state store ({e}); the next session indexes them from the log",
                                rows.len()
                            ),
                        });
                    }
                    let stored =
                        handle.block_on(state.anchor_audit(&key, head.records, &head.hash));
                    if let Err(e) = stored {
                        events.emit(Event::Log {
                            instance: "upshift".into(),
                            level: "warn".into(),
                            message: format!(
                                "the audit log's head (record {}) could not be anchored in the state store: {e}",
                                head.records
                            ),
                        });
                    }
                    let mut slot = writer.slot.lock().unwrap_or_else(PoisonError::into_inner);
                    slot.busy = false;
                    writer.changed.notify_all();
                }
            })?;
        Ok(Arc::new(StateAnchor { shared }))
    }

    /// Wait (at most `limit`) until the newest head is stored; whether it was.
    pub fn flush(&self, limit: Duration) -> bool {
        let ends = Instant::now() + limit;
        let mut slot = self
            .shared
            .slot
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        while slot.latest.is_some() || slot.busy {
            let left = ends.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            slot = self
                .shared
                .changed
                .wait_timeout(slot, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }
}

impl ChainAnchor for StateAnchor {
    fn advance(&self, head: &ChainHead) {
        let mut slot = self
            .shared
            .slot
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        slot.latest = Some(head.clone());
        self.shared.changed.notify_all();
    }

    fn appended(&self, entry: &IndexEntry) {
        let mut slot = self
            .shared
            .slot
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if slot.overflowed {
            return;
        }
        if slot.pending.len() >= MAX_PENDING_ROWS {
            slot.overflowed = true;
            return;
        }
        slot.pending.push(row_of(entry));
    }
}

fn place(row: &AuditIndexRow) -> RecordAt {
    RecordAt {
        segment: row.segment,
        offset: row.offset,
    }
}

/// Rows written per statement while catching up.
const CATCH_UP_BATCH: usize = 5_000;

/// Bring the index of `audit` (named `key`, see [`audit_log_key`]) up to the log: records the
/// writer never indexed (a crash between the log write and the index write, a flood it could
/// not keep up with, a data directory older than the index) are read from the log line by line
/// and indexed in batches. An index that names a record the log does not hold there (the log
/// was replaced, or re-anchored) is dropped and rebuilt. Returns how many rows were written.
pub async fn catch_up_index(
    state: &Arc<dyn StateStore>,
    key: &str,
    audit: &Arc<AuditLog>,
) -> Result<u64, String> {
    let head = audit.head();
    let end = state
        .audit_index_end(key)
        .await
        .map_err(|e| e.to_string())?;
    let from = match &end {
        None => None,
        Some(end) if end.last.seq >= head.records => {
            state
                .clear_audit_index(key)
                .await
                .map_err(|e| e.to_string())?;
            None
        }
        Some(end) => {
            let (audit, last) = (audit.clone(), end.last.clone());
            let holds =
                tokio::task::spawn_blocking(move || audit.records_at(&[(last.seq, place(&last))]))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())?
                    .is_some();
            if !holds {
                state
                    .clear_audit_index(key)
                    .await
                    .map_err(|e| e.to_string())?;
                None
            } else if end.rows == end.last.seq + 1 {
                if end.last.seq + 1 == head.records {
                    return Ok(0);
                }
                Some(end.last.clone())
            } else {
                // Holes (another process's writer stopped early): index everything again;
                // rows already there are replaced by the same.
                None
            }
        }
    };
    let (audit, state, key) = (audit.clone(), state.clone(), key.to_string());
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let skip_through = from.as_ref().map(|r| r.seq);
        let mut batch = Vec::with_capacity(CATCH_UP_BATCH);
        let mut written = 0u64;
        let mut failed = None;
        let mut store = |batch: &mut Vec<AuditIndexRow>| {
            if let Err(e) = handle.block_on(state.index_audit(&key, batch)) {
                failed.get_or_insert(e.to_string());
            }
            written += batch.len() as u64;
            batch.clear();
        };
        audit
            .entries_from(from.as_ref().map(place), |entry| {
                if skip_through.is_some_and(|s| entry.seq <= s) {
                    return;
                }
                batch.push(row_of(&entry));
                if batch.len() >= CATCH_UP_BATCH {
                    store(&mut batch);
                }
            })
            .map_err(|e| e.to_string())?;
        if !batch.is_empty() {
            store(&mut batch);
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(written),
        }
    })
    .await
    .map_err(|e| e.to_string())?
}

/// The records of run `run_id` in `audit` (named `key`), only its denials when
/// `denied_only`: read by offset from the index, plus the records after the index's end read
/// from the log. An index that is missing, has holes or names the wrong records is not used:
/// the log is scanned line by line instead (bounded memory, but the whole log).
pub async fn records_for_run(
    state: &Arc<dyn StateStore>,
    key: &str,
    audit: &Arc<AuditLog>,
    run_id: &str,
    denied_only: bool,
) -> Result<Vec<AuditRecord>, String> {
    let wanted = {
        let run_id = run_id.to_string();
        move |run: Option<&str>, decision: Decision| {
            run == Some(run_id.as_str()) && (!denied_only || decision == Decision::Denied)
        }
    };
    let end = state
        .audit_index_end(key)
        .await
        .map_err(|e| e.to_string())?
        .filter(|end| end.rows == end.last.seq + 1);
    let rows = match &end {
        Some(end) => state
            .audit_index_for_run(key, run_id, denied_only, end.last.seq)
            .await
            .map_err(|e| e.to_string())?,
        None => Vec::new(),
    };
    let audit = audit.clone();
    tokio::task::spawn_blocking(move || {
        let scan = |audit: &AuditLog| {
            audit.records_where(None, |e| wanted(e.run_id.as_deref(), e.decision))
        };
        let Some(end) = end else {
            return scan(&audit);
        };
        let last = (end.last.seq, place(&end.last));
        let mut places: Vec<(u64, RecordAt)> = rows.iter().map(|r| (r.seq, place(r))).collect();
        places.push(last);
        let Some(mut records) = audit.records_at(&places)? else {
            return scan(&audit);
        };
        records.pop();
        if !records
            .iter()
            .all(|r| wanted(r.event.run_id.as_deref(), r.event.decision))
        {
            return scan(&audit);
        }
        let after = audit.records_where(Some(last.1), |e| {
            e.seq > last.0 && wanted(e.run_id.as_deref(), e.decision)
        })?;
        records.extend(after);
        Ok(records)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())
}

impl Drop for StateAnchor {
    fn drop(&mut self) {
        let mut slot = self
            .shared
            .slot
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        slot.stop = true;
        self.shared.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::AuditEvent;

    fn event(i: u64) -> AuditEvent {
        AuditEvent {
            adapter_digest: "ab".repeat(32),
            instance: "bb".into(),
            run_id: Some("run".into()),
            binding: "meta".into(),
            capability: "db".into(),
            operation: "query".into(),
            decision: Decision::Allowed,
            reason: None,
            duration_us: i,
            result_bytes: i,
            error: None,
            detail: Some("read".into()),
            sql: Vec::new(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_append_is_anchored_by_the_time_the_anchor_is_flushed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = crate::state::open(&dir.path().join("state.db"))
            .await
            .expect("state");
        let path = dir.path().join("audit.jsonl");
        let key = audit_log_key(&path);
        let log = AuditLog::open(&path).expect("log");
        let anchor =
            StateAnchor::start(state.clone(), key.clone(), EventSink::discard()).expect("anchor");
        log.set_anchor(anchor.clone());
        for i in 0..500 {
            log.append(event(i)).expect("append");
        }
        assert!(tokio::task::block_in_place(
            || anchor.flush(Duration::from_secs(10))
        ));
        let stored = state
            .audit_anchor(&key)
            .await
            .expect("get")
            .expect("anchored");
        assert_eq!(stored.records, 500);
        assert_eq!(stored.head, log.head().hash);
    }

    fn run_event(i: u64) -> AuditEvent {
        AuditEvent {
            run_id: Some(format!("run-{}", i % 5)),
            decision: if i.is_multiple_of(3) {
                Decision::Denied
            } else {
                Decision::Allowed
            },
            ..event(i)
        }
    }

    /// The run's records by scanning the log: what the index must give.
    fn scanned(log: &AuditLog, run: &str, denied_only: bool) -> Vec<u64> {
        log.records_for_run(run)
            .expect("scan")
            .into_iter()
            .filter(|r| !denied_only || r.event.decision == Decision::Denied)
            .map(|r| r.seq)
            .collect()
    }

    async fn indexed(
        state: &Arc<dyn StateStore>,
        key: &str,
        log: &Arc<AuditLog>,
        run: &str,
        denied_only: bool,
    ) -> Vec<u64> {
        records_for_run(state, key, log, run, denied_only)
            .await
            .expect("records")
            .into_iter()
            .map(|r| r.seq)
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_index_finds_a_runs_records_and_is_caught_up_when_behind_or_rebuilt_when_wrong() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = crate::state::open(&dir.path().join("state.db"))
            .await
            .expect("state");
        let path = dir.path().join("audit.jsonl");
        let key = audit_log_key(&path);
        let log = Arc::new(AuditLog::open(&path).expect("log").with_segment_bytes(4000));
        let anchor =
            StateAnchor::start(state.clone(), key.clone(), EventSink::discard()).expect("anchor");
        log.set_anchor(anchor.clone());
        for i in 0..300 {
            log.append(run_event(i)).expect("append");
        }
        assert!(tokio::task::block_in_place(
            || anchor.flush(Duration::from_secs(10))
        ));
        drop(anchor);
        let end = state
            .audit_index_end(&key)
            .await
            .expect("end")
            .expect("indexed");
        assert_eq!((end.rows, end.last.seq), (300, 299));
        assert!(end.last.segment > 5, "rotated: {end:?}");
        for (run, denied_only) in [("run-2", false), ("run-2", true), ("run-9", false)] {
            assert_eq!(
                indexed(&state, &key, &log, run, denied_only).await,
                scanned(&log, run, denied_only),
                "{run} {denied_only}"
            );
        }
        assert_eq!(indexed(&state, &key, &log, "run-2", false).await.len(), 60);

        // Records the index never got (a crash between the log write and the index write):
        // still found, from the log after the index's end; a catch-up indexes them.
        let unindexed = Arc::new(
            AuditLog::open(&path)
                .expect("reopen")
                .with_segment_bytes(4000),
        );
        for i in 300..340 {
            unindexed.append(run_event(i)).expect("append");
        }
        assert_eq!(
            indexed(&state, &key, &unindexed, "run-2", false).await,
            scanned(&unindexed, "run-2", false)
        );
        assert_eq!(catch_up_index(&state, &key, &unindexed).await, Ok(40));
        assert_eq!(catch_up_index(&state, &key, &unindexed).await, Ok(0));
        let end = state
            .audit_index_end(&key)
            .await
            .expect("end")
            .expect("indexed");
        assert_eq!((end.rows, end.last.seq), (340, 339));

        // Rows lost in the middle (a hole): not trusted; the catch-up indexes everything again.
        state.clear_audit_index(&key).await.expect("clear");
        let mut rows = Vec::new();
        unindexed
            .entries_from(None, |e| rows.push(row_of(&e)))
            .expect("entries");
        rows.remove(100);
        state.index_audit(&key, &rows).await.expect("index");
        assert_eq!(
            indexed(&state, &key, &unindexed, "run-0", false).await,
            scanned(&unindexed, "run-0", false)
        );
        assert_eq!(catch_up_index(&state, &key, &unindexed).await, Ok(340));
        assert_eq!(
            state
                .audit_index_end(&key)
                .await
                .expect("end")
                .map(|e| e.rows),
            Some(340)
        );

        // An index that names the wrong records (the log was replaced): not believed, and
        // dropped and rebuilt by the catch-up.
        let mut wrong = rows[..50].to_vec();
        for row in &mut wrong {
            row.run_id = Some("run-2".into());
        }
        state.index_audit(&key, &wrong).await.expect("index");
        assert_eq!(
            indexed(&state, &key, &unindexed, "run-2", false).await,
            scanned(&unindexed, "run-2", false)
        );
        let last = rows.last().expect("rows").clone();
        assert_eq!(last.seq, 339);
        let moved = AuditIndexRow {
            offset: last.offset + 1,
            ..last
        };
        state.index_audit(&key, &[moved]).await.expect("index");
        assert_eq!(catch_up_index(&state, &key, &unindexed).await, Ok(340));
        assert_eq!(
            indexed(&state, &key, &unindexed, "run-2", false).await,
            scanned(&unindexed, "run-2", false)
        );
    }

    /// A kilobyte record of run `run-<i % 1000>`.
    fn big_event(i: u64) -> AuditEvent {
        AuditEvent {
            run_id: Some(format!("run-{}", i % 1000)),
            detail: Some(format!("{i:>8} {}", "d".repeat(900))),
            ..run_event(i)
        }
    }

    /// Kibibytes of this process's resident memory now (`VmRSS`) or at its peak (`VmHWM`).
    fn memory_kib(field: &str) -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .expect("status")
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("field")
    }

    /// How many records the big log has: 300,000 (about 415 MB) in an optimised build, 60,000
    /// (about 83 MB, still more than the bound) in a debug build, where hashing is slow;
    /// `UPSHIFT_BIG_AUDIT_RECORDS` overrides.
    fn big_records() -> u64 {
        std::env::var("UPSHIFT_BIG_AUDIT_RECORDS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(if cfg!(debug_assertions) {
                60_000
            } else {
                300_000
            })
    }

    /// Growth of the peak resident memory past this bound means something loaded the log.
    const BIG_LOG_GROWTH_KIB: u64 = 64 * 1024;

    /// A large log (300,000 records of 1.4 KB, rotated into 64 MiB segments, with no index
    /// yet: a data directory from before the index) is opened, indexed, appended to, searched
    /// for one run's records and verified by a fresh process, whose peak memory grows by less
    /// than 64 MiB over its start: the log is never loaded whole (opening it used to read it
    /// into one string).
    #[test]
    fn a_large_log_is_opened_indexed_searched_and_verified_in_bounded_memory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path).expect("log");
        let n = big_records();
        let started = Instant::now();
        for i in 0..n {
            log.append(big_event(i)).expect("append");
        }
        let written = started.elapsed();
        drop(log);
        let size: u64 = crate::audit::segments::all_segments(&path)
            .expect("segments")
            .iter()
            .map(|s| std::fs::metadata(&s.path).expect("size").len())
            .sum();
        let child = std::process::Command::new(std::env::current_exe().expect("exe"))
            .args([
                "--exact",
                "integrity::tests::big_log_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("UPSHIFT_BIG_AUDIT_LOG", &path)
            .output()
            .expect("child");
        let out = String::from_utf8_lossy(&child.stdout);
        assert!(
            child.status.success(),
            "{out}\n{}",
            String::from_utf8_lossy(&child.stderr)
        );
        let growth: u64 = out
            .lines()
            .find_map(|l| l.strip_prefix("peak growth KiB: "))
            .and_then(|v| v.trim().parse().ok())
            .expect("the child reports its growth");
        println!(
            "{n} records, {size} bytes written in {:.2} s; peak memory grew {growth} KiB\n{out}{}",
            written.as_secs_f64(),
            String::from_utf8_lossy(&child.stderr)
        );
        assert!(growth < BIG_LOG_GROWTH_KIB, "{out}");
    }

    /// The child of the test above (does nothing unless it sets `UPSHIFT_BIG_AUDIT_LOG`).
    #[test]
    #[ignore = "run by a_large_log_is_opened_indexed_searched_and_verified_in_bounded_memory"]
    fn big_log_child() {
        let Some(path) = std::env::var_os("UPSHIFT_BIG_AUDIT_LOG") else {
            return;
        };
        let path = std::path::PathBuf::from(path);
        let n = big_records();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let state = crate::state::open(&path.with_file_name("state.db"))
                .await
                .expect("state");
            let key = audit_log_key(&path);
            let start = memory_kib("VmRSS:");
            let mut timings = Vec::new();
            let mut time = |what: &str, since: Instant| {
                timings.push(format!("{what}: {:.2} s", since.elapsed().as_secs_f64()));
            };
            let t = Instant::now();
            let log = Arc::new(AuditLog::open(&path).expect("open"));
            time("open", t);
            assert_eq!(log.head().records, n);
            let t = Instant::now();
            assert_eq!(catch_up_index(&state, &key, &log).await, Ok(n));
            time("index from the log", t);
            let anchor = StateAnchor::start(state.clone(), key.clone(), EventSink::discard())
                .expect("anchor");
            log.set_anchor(anchor.clone());
            let t = Instant::now();
            log.append(big_event(n)).expect("append");
            time("append", t);
            let t = Instant::now();
            let records = records_for_run(&state, &key, &log, "run-7", false)
                .await
                .expect("records");
            time("one run's records", t);
            assert_eq!(records.len() as u64, n / 1000);
            let t = Instant::now();
            let report = crate::audit::verify(&path).expect("verify");
            time("verify", t);
            assert_eq!(report.records, n + 1);
            assert_eq!(report.first_problem, None);
            assert!(tokio::task::block_in_place(
                || anchor.flush(Duration::from_secs(30))
            ));
            let peak = memory_kib("VmHWM:");
            println!("{}", timings.join(", "));
            println!("start KiB: {start}, peak KiB: {peak}");
            println!("peak growth KiB: {}", peak.saturating_sub(start));
        });
    }

    /// `cargo test -p upshift --release --lib append_cost -- --ignored --nocapture`: the cost of
    /// one audit append without and with the state-store anchor.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "a measurement, not a test"]
    async fn append_cost() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = crate::state::open(&dir.path().join("state.db"))
            .await
            .expect("state");
        let n = 20_000u64;
        for anchored in [false, true] {
            let path = dir.path().join(format!("audit-{anchored}.jsonl"));
            let log = AuditLog::open(&path).expect("log");
            let anchor = anchored.then(|| {
                let a =
                    StateAnchor::start(state.clone(), audit_log_key(&path), EventSink::discard())
                        .expect("anchor");
                log.set_anchor(a.clone());
                a
            });
            let started = Instant::now();
            for i in 0..n {
                log.append(event(i)).expect("append");
            }
            let per = started.elapsed().as_secs_f64() / n as f64;
            if let Some(a) = anchor {
                assert!(tokio::task::block_in_place(
                    || a.flush(Duration::from_secs(10))
                ));
            }
            println!(
                "append, anchored: {anchored}: {:.2} µs per record",
                per * 1e6
            );
        }
    }
}
