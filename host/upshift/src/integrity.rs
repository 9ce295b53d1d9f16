//! What the state store vouches for that the data and cache directories cannot: the digests of
//! the compiled artifacts this host trusts ([`StateLedger`], for the runtime's cache) and the
//! head of the audit log's hash chain ([`StateAnchor`], for the audit log).

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::audit::{ChainAnchor, ChainHead};
use crate::caps::{Event, EventSink};
use crate::runtime::cache::{ArtifactLedger, LedgerFuture};
use crate::state::StateStore;

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

#[derive(Default)]
struct Slot {
    /// The newest head not yet handed to the writer.
    latest: Option<ChainHead>,
    /// The writer is storing a head.
    busy: bool,
    /// Stop once nothing is pending.
    stop: bool,
}

struct Shared {
    slot: Mutex<Slot>,
    changed: Condvar,
}

/// Anchors an audit log's head in the state store. Every append hands it the new head, which
/// costs a lock and a wake-up; a writer thread stores the newest head (heads that arrive while
/// it writes are coalesced into the next write). [`StateAnchor::flush`] waits until the newest
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
                    let head = {
                        let mut slot = writer.slot.lock().unwrap_or_else(PoisonError::into_inner);
                        loop {
                            if let Some(head) = slot.latest.take() {
                                slot.busy = true;
                                break head;
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
    use crate::audit::{AuditEvent, AuditLog, Decision};

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
