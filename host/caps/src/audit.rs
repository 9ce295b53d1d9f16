//! Tamper-evident audit log: every capability call an adapter makes, and every host action done
//! on its behalf, appended to a hash-chained JSON-lines file (`<data>/audit.jsonl`).
//!
//! Each record carries its sequence number, the previous record's hash and its own hash over
//! `prev + "\n" + canonical JSON of the record without its hash`. `verify` reports the first
//! record that was edited, removed or reordered.
//!
//! A chain alone cannot show that its *last* records were removed, or that its tail was rewritten
//! with a recomputed chain. So the chain's head (record count and last hash) is handed to a
//! [`ChainAnchor`] after every append — `upshift` keeps it in the state store, which this crate
//! does not know — and [`verify_anchored`] checks the file against it. A log that does not
//! reach its anchored head is not appended to ([`AuditLog::open_anchored`]).

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::secrets::Secrets;

/// Whether a call was allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// The grant check passed.
    Allowed,
    /// The grant check refused it.
    Denied,
}

/// One capability call, as the caller fills it in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// sha256 of the adapter component.
    pub adapter_digest: String,
    /// Fleet instance name.
    pub instance: String,
    /// The run, if any.
    pub run_id: Option<String>,
    /// Logical binding name (empty for log/progress).
    pub binding: String,
    /// `db` | `files` | `service` | `http` | `log` | `progress`.
    pub capability: String,
    /// e.g. `query`, `backup`, `stop`.
    pub operation: String,
    /// Allowed or denied.
    pub decision: Decision,
    /// Why denied.
    pub reason: Option<String>,
    /// How long the backend took.
    pub duration_us: u64,
    /// Size of the result.
    pub result_bytes: u64,
    /// The backend's error.
    pub error: Option<String>,
    /// Short extra detail (never secrets).
    pub detail: Option<String>,
    /// The SQL statements of a db call, classified and fingerprinted (absent from other
    /// records, and from records written before it existed, which still verify).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sql: Vec<SqlAudit>,
}

/// One SQL statement of a db call as the host saw it: never its literals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SqlAudit {
    /// The access it needs (`read`, `write`, `ddl`, …), or `refused` when it was refused
    /// before its access was known.
    pub class: String,
    /// The normalised text: literals replaced by `?`, comments dropped, whitespace collapsed,
    /// unquoted words lowercased (cut at 1 KiB; the hash covers all of it).
    pub fingerprint: String,
    /// sha256 (hex) of the whole normalised text: equal for statements that differ only in
    /// their literals.
    pub sha256: String,
}

/// A record as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Position in the chain, from 0.
    pub seq: u64,
    /// RFC 3339 UTC time with microseconds.
    pub time: String,
    /// The call.
    #[serde(flatten)]
    pub event: AuditEvent,
    /// The previous record's hash (64 zeros for the first).
    pub prev: String,
    /// This record's hash.
    pub hash: String,
}

/// The hashed part of a record, in a fixed field order.
#[derive(Serialize)]
struct Hashed<'a> {
    seq: u64,
    time: &'a str,
    #[serde(flatten)]
    event: &'a AuditEvent,
    prev: &'a str,
}

/// The hash before the first record (64 zeros).
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

fn hash_of(
    seq: u64,
    time: &str,
    event: &AuditEvent,
    prev: &str,
) -> Result<String, serde_json::Error> {
    let body = serde_json::to_string(&Hashed {
        seq,
        time,
        event,
        prev,
    })?;
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update(b"\n");
    h.update(body.as_bytes());
    Ok(hex::encode(h.finalize()))
}

/// The audit log could not be used.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// I/O on the file.
    #[error("audit log {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file's last line is not a complete record.
    #[error(
        "audit log {path}: line {line} is not a complete record ({reason}); run `upshift audit verify` and keep a copy of the file before repairing it"
    )]
    Damaged {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: u64,
        /// Why.
        reason: String,
    },
    /// Encoding a record failed.
    #[error("audit record could not be encoded: {0}")]
    Encode(#[from] serde_json::Error),
    /// The file does not reach the head anchored for it: records were removed or replaced.
    #[error(
        "audit log {path}: {problem}; nothing more is appended to it\nfix: run `upshift audit verify` to see what is missing and keep a copy of the file; then `upshift audit verify --reanchor` anchors the log as it is now"
    )]
    Unanchored {
        /// The file.
        path: PathBuf,
        /// What does not match.
        problem: String,
    },
}

/// The head of a hash chain: how many records it has, and the last one's hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainHead {
    /// Records in the chain.
    pub records: u64,
    /// The last record's hash ([`GENESIS`] when there are none).
    pub hash: String,
}

/// Keeps an audit log's head where the log's file cannot vouch for it (in `upshift`, the state
/// store), so that removing or rewriting the last records shows.
pub trait ChainAnchor: Send + Sync {
    /// The chain now ends at `head`. Called after every append, in order, while the log is
    /// locked, so it must return at once (hand the head to a writer; keep only the newest).
    fn advance(&self, head: &ChainHead);
}

struct Tail {
    file: File,
    next_seq: u64,
    last_hash: String,
    anchor: Option<std::sync::Arc<dyn ChainAnchor>>,
    /// The file's length after this log's last write: more means another process appended
    /// (the chain continues from its record), less means the file was cut short.
    end: u64,
}

/// An append-only, hash-chained audit log. Thread-safe.
pub struct AuditLog {
    path: PathBuf,
    tail: Mutex<Tail>,
    secrets: Secrets,
}

impl AuditLog {
    /// Open (creating) the log and continue its chain.
    pub fn open(path: &Path) -> Result<AuditLog, AuditError> {
        AuditLog::open_anchored(path, None)
    }

    /// Open (creating) the log and continue its chain, but only if it reaches `anchor`, the head
    /// anchored for it: at least that many records, the anchored one with the anchored hash
    /// (more records than anchored are fine: the host stopped before anchoring them).
    pub fn open_anchored(path: &Path, anchor: Option<&ChainHead>) -> Result<AuditLog, AuditError> {
        let io = |source| AuditError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            crate::private::create_dir_all(dir).map_err(io)?;
        }
        let mut next_seq = 0;
        let mut last_hash = GENESIS.to_string();
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(io(e)),
        };
        if !text.is_empty() && !text.ends_with('\n') {
            return Err(AuditError::Damaged {
                path: path.to_path_buf(),
                line: text.lines().count() as u64,
                reason: "it has no line end (a write was cut short)".into(),
            });
        }
        let damaged = |n: usize, e: serde_json::Error| AuditError::Damaged {
            path: path.to_path_buf(),
            line: n as u64 + 1,
            reason: e.to_string(),
        };
        let mut lines = 0u64;
        let mut anchored_hash = None;
        let wanted = anchor.and_then(|a| a.records.checked_sub(1));
        for (n, line) in text.lines().enumerate() {
            if Some(n as u64) == wanted {
                let record: AuditRecord = serde_json::from_str(line).map_err(|e| damaged(n, e))?;
                anchored_hash = Some(record.hash);
            }
            lines += 1;
        }
        if let Some((n, last)) = text.lines().enumerate().last() {
            let record: AuditRecord = serde_json::from_str(last).map_err(|e| damaged(n, e))?;
            next_seq = record.seq + 1;
            last_hash = record.hash;
        }
        if let Some(anchor) = anchor {
            let problem = if lines < anchor.records {
                Some(removed_tail(anchor.records, lines))
            } else if anchor.records > 0 && anchored_hash.as_deref() != Some(anchor.hash.as_str()) {
                Some(replaced_tail(anchor.records))
            } else {
                None
            };
            if let Some(problem) = problem {
                return Err(AuditError::Unanchored {
                    path: path.to_path_buf(),
                    problem,
                });
            }
        }
        let file = crate::private::append(path).map_err(io)?;
        Ok(AuditLog {
            path: path.to_path_buf(),
            tail: Mutex::new(Tail {
                file,
                next_seq,
                last_hash,
                anchor: None,
                end: text.len() as u64,
            }),
            secrets: Secrets::new(),
        })
    }

    /// Mask every record with `secrets` (the session's registry) before it is written.
    pub fn with_secrets(mut self, secrets: Secrets) -> AuditLog {
        self.secrets = secrets;
        self
    }

    /// The secrets records are masked with.
    pub fn secrets(&self) -> &Secrets {
        &self.secrets
    }

    /// Hand the chain's head to `anchor` now and after every append.
    pub fn set_anchor(&self, anchor: std::sync::Arc<dyn ChainAnchor>) {
        let mut tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        anchor.advance(&ChainHead {
            records: tail.next_seq,
            hash: tail.last_hash.clone(),
        });
        tail.anchor = Some(anchor);
    }

    /// The chain's head as this log has written it.
    pub fn head(&self) -> ChainHead {
        let tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        ChainHead {
            records: tail.next_seq,
            hash: tail.last_hash.clone(),
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append one record; returns its sequence number. Other processes appending to the same
    /// file (two commands on one data directory) are serialised by a lock on the file, and the
    /// chain continues from their last record.
    pub fn append(&self, event: AuditEvent) -> Result<u64, AuditError> {
        self.append_sized(event).map(|(seq, _)| seq)
    }

    /// [`AuditLog::append`], also returning how many bytes the record took in the file (the
    /// guard charges them to the export call's budget).
    pub fn append_sized(&self, mut event: AuditEvent) -> Result<(u64, u64), AuditError> {
        for text in [&mut event.reason, &mut event.error, &mut event.detail] {
            self.secrets.mask_option(text);
        }
        let mut tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        let io = |source| AuditError::Io {
            path: self.path.clone(),
            source,
        };
        let locked = nix::fcntl::Flock::lock(
            tail.file.try_clone().map_err(io)?,
            nix::fcntl::FlockArg::LockExclusive,
        )
        .map_err(|(_, errno)| io(std::io::Error::from(errno)))?;
        let len = locked.metadata().map_err(io)?.len();
        if len < tail.end {
            return Err(AuditError::Unanchored {
                path: self.path.clone(),
                problem: format!(
                    "it was cut short while this host was writing it ({} bytes written, {len} there now)",
                    tail.end
                ),
            });
        }
        if len > tail.end {
            let text = std::fs::read_to_string(&self.path).map_err(io)?;
            let last = text.lines().last().unwrap_or_default();
            let record: AuditRecord =
                serde_json::from_str(last).map_err(|e| AuditError::Damaged {
                    path: self.path.clone(),
                    line: text.lines().count() as u64,
                    reason: e.to_string(),
                })?;
            tail.next_seq = record.seq + 1;
            tail.last_hash = record.hash;
        }
        let seq = tail.next_seq;
        let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let hash = hash_of(seq, &time, &event, &tail.last_hash)?;
        let record = AuditRecord {
            seq,
            time,
            event,
            prev: tail.last_hash.clone(),
            hash: hash.clone(),
        };
        let mut line = serde_json::to_string(&record)?;
        line.push('\n');
        tail.file.write_all(line.as_bytes()).map_err(io)?;
        tail.end = len + line.len() as u64;
        drop(locked);
        tail.next_seq = seq + 1;
        tail.last_hash = hash;
        if let Some(anchor) = &tail.anchor {
            anchor.advance(&ChainHead {
                records: tail.next_seq,
                hash: tail.last_hash.clone(),
            });
        }
        Ok((seq, line.len() as u64))
    }

    /// Flush the file to disk.
    pub fn sync(&self) -> Result<(), AuditError> {
        let tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        tail.file.sync_data().map_err(|source| AuditError::Io {
            path: self.path.clone(),
            source,
        })
    }

    /// The records of one run.
    pub fn records_for_run(&self, run_id: &str) -> Result<Vec<AuditRecord>, AuditError> {
        let file = File::open(&self.path).map_err(|source| AuditError::Io {
            path: self.path.clone(),
            source,
        })?;
        let mut out = Vec::new();
        for line in BufReader::new(file).lines() {
            let line = line.map_err(|source| AuditError::Io {
                path: self.path.clone(),
                source,
            })?;
            if let Ok(r) = serde_json::from_str::<AuditRecord>(&line)
                && r.event.run_id.as_deref() == Some(run_id)
            {
                out.push(r);
            }
        }
        Ok(out)
    }
}

/// What kind of damage `verify` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// A record's contents no longer match its hash.
    Edited,
    /// Records are missing.
    Removed,
    /// Records are out of order.
    Reordered,
    /// A line is not a record.
    Malformed,
    /// The chain's tail is not the one anchored: rewritten with a recomputed chain.
    Replaced,
}

fn removed_tail(anchored: u64, found: u64) -> String {
    let gone = anchored - found;
    format!(
        "{anchored} records anchored, {found} found; the last {} removed",
        if gone == 1 {
            "record was".to_string()
        } else {
            format!("{gone} were")
        }
    )
}

fn replaced_tail(anchored: u64) -> String {
    format!(
        "the tail was replaced: record seq {} is not the record anchored as the chain's head (its hash differs), so records up to it were rewritten with a recomputed chain",
        anchored - 1
    )
}

/// The first problem in the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainProblem {
    /// 1-based line.
    pub line: u64,
    /// The record's sequence number, when readable.
    pub seq: Option<u64>,
    /// What kind.
    pub kind: ProblemKind,
    /// For operators.
    pub message: String,
}

/// The outcome of `verify`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Records read.
    pub records: u64,
    /// The first problem, if any.
    pub first_problem: Option<ChainProblem>,
}

/// Walk the log and check the chain; report the first edited, removed or reordered record.
pub fn verify(path: &Path) -> Result<VerifyReport, AuditError> {
    verify_anchored(path, None)
}

/// [`verify`], and check the log against `anchor`, its head as anchored: a log with fewer
/// records than anchored lost its tail; one whose anchored record has another hash had its tail
/// rewritten. A missing file is an empty log when there is an anchor.
pub fn verify_anchored(
    path: &Path,
    anchor: Option<&ChainHead>,
) -> Result<VerifyReport, AuditError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && anchor.is_some() => String::new(),
        Err(source) => {
            return Err(AuditError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let wanted = anchor.and_then(|a| a.records.checked_sub(1));
    let (mut report, anchored_hash) = walk(&text, wanted)?;
    let Some(anchor) = anchor else {
        return Ok(report);
    };
    let lines = text.lines().count() as u64;
    let (kind, message, line) = match &mut report.first_problem {
        Some(p) => {
            // Say how far the anchor reaches, so a cut-short or removed tail is seen as such.
            p.message = format!(
                "{}; {} records anchored, {} intact before it",
                p.message, anchor.records, report.records
            );
            return Ok(report);
        }
        None if lines < anchor.records => (
            ProblemKind::Removed,
            removed_tail(anchor.records, lines),
            lines + 1,
        ),
        None if anchor.records > 0 && anchored_hash.as_deref() != Some(anchor.hash.as_str()) => (
            ProblemKind::Replaced,
            replaced_tail(anchor.records),
            anchor.records,
        ),
        None => return Ok(report),
    };
    report.first_problem = Some(ChainProblem {
        line,
        seq: Some(line - 1),
        kind,
        message,
    });
    Ok(report)
}

/// Check the chain in `text`; also the hash of record `wanted` (0-based), if it is intact.
fn walk(text: &str, wanted: Option<u64>) -> Result<(VerifyReport, Option<String>), AuditError> {
    let mut wanted_hash = None;
    let mut prev = GENESIS.to_string();
    let mut records = 0u64;
    let lines: Vec<&str> = text.lines().collect();
    let problem = |line: usize, seq: Option<u64>, kind, message: String| ChainProblem {
        line: line as u64 + 1,
        seq,
        kind,
        message: format!(
            "line {}{}: {message}",
            line + 1,
            seq.map(|s| format!(" (seq {s})")).unwrap_or_default()
        ),
    };
    for (i, raw) in lines.iter().enumerate() {
        // Every record before this line checked out, so this one must be the next in the chain.
        let expected_seq = i as u64;
        let truncated = i + 1 == lines.len() && !text.ends_with('\n');
        let record: AuditRecord = match serde_json::from_str(raw) {
            Ok(r) if !truncated => r,
            Ok(_) | Err(_) => {
                return Ok((
                    VerifyReport {
                        records,
                        first_problem: Some(problem(
                            i,
                            None,
                            ProblemKind::Malformed,
                            "is not a complete audit record".into(),
                        )),
                    },
                    wanted_hash,
                ));
            }
        };
        let own = hash_of(record.seq, &record.time, &record.event, &record.prev)?;
        if own != record.hash {
            return Ok((
                VerifyReport {
                    records,
                    first_problem: Some(problem(
                        i,
                        Some(record.seq),
                        ProblemKind::Edited,
                        "record was edited after it was written (its hash does not match its contents)"
                            .into(),
                    )),
                },
                wanted_hash,
            ));
        }
        if record.seq != expected_seq || record.prev != prev {
            let (kind, message) = if record.seq > expected_seq {
                let missing = if record.seq == expected_seq + 1 {
                    format!("record seq {expected_seq} is missing")
                } else {
                    format!("records seq {expected_seq}..{} are missing", record.seq - 1)
                };
                (ProblemKind::Removed, format!("{missing} before this line"))
            } else if record.seq < expected_seq {
                (
                    ProblemKind::Reordered,
                    format!(
                        "record comes after seq {} but has an earlier place in the chain",
                        expected_seq - 1
                    ),
                )
            } else {
                (
                    ProblemKind::Edited,
                    "record does not follow the previous one (its prev hash does not match)".into(),
                )
            };
            // A later record first (seq ahead) followed by an earlier one is a swap, not a removal.
            let kind_message = if kind == ProblemKind::Removed
                && lines
                    .get(i + 1)
                    .and_then(|next| serde_json::from_str::<AuditRecord>(next).ok())
                    .is_some_and(|n| n.seq == expected_seq)
            {
                (
                    ProblemKind::Reordered,
                    format!("record seq {} stands before seq {expected_seq}", record.seq),
                )
            } else {
                (kind, message)
            };
            return Ok((
                VerifyReport {
                    records,
                    first_problem: Some(problem(
                        i,
                        Some(record.seq),
                        kind_message.0,
                        kind_message.1,
                    )),
                },
                wanted_hash,
            ));
        }
        if Some(expected_seq) == wanted {
            wanted_hash = Some(record.hash.clone());
        }
        prev = record.hash;
        records += 1;
    }
    Ok((
        VerifyReport {
            records,
            first_problem: None,
        },
        wanted_hash,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(i: u64) -> AuditEvent {
        AuditEvent {
            adapter_digest: "ab".repeat(32),
            instance: "bb".into(),
            run_id: Some(format!("run-{}", i % 3)),
            binding: "meta".into(),
            capability: "db".into(),
            operation: "query".into(),
            decision: if i.is_multiple_of(2) {
                Decision::Allowed
            } else {
                Decision::Denied
            },
            reason: (i % 2 == 1).then(|| "not granted".into()),
            duration_us: i,
            result_bytes: i * 10,
            error: None,
            detail: None,
            sql: vec![],
        }
    }

    fn log_with(n: u64) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path).expect("open");
        for i in 0..n {
            log.append(event(i)).expect("append");
        }
        (dir, path)
    }

    fn rewrite(path: &Path, f: impl FnOnce(&mut Vec<String>)) {
        let mut lines: Vec<String> = std::fs::read_to_string(path)
            .expect("read")
            .lines()
            .map(String::from)
            .collect();
        f(&mut lines);
        std::fs::write(path, lines.join("\n") + "\n").expect("write");
    }

    #[test]
    fn sql_fingerprints_are_chained_and_records_without_them_keep_their_old_form() {
        let (_dir, path) = log_with(2);
        let log = AuditLog::open(&path).expect("reopen");
        let mut with_sql = event(2);
        with_sql.sql = vec![SqlAudit {
            class: "read".into(),
            fingerprint: "select * from t where id = ?".into(),
            sha256: "cd".repeat(32),
        }];
        log.append(with_sql).expect("append");
        let text = std::fs::read_to_string(&path).expect("read");
        let lines: Vec<&str> = text.lines().collect();
        // A record without statements is written exactly as before the field existed, so logs
        // written then still verify.
        assert!(!lines[0].contains("\"sql\""), "{}", lines[0]);
        assert!(lines[2].contains("\"class\":\"read\""), "{}", lines[2]);
        assert_eq!(verify(&path).expect("verify").first_problem, None);
        rewrite(&path, |l| l[2] = l[2].replace("id = ?", "id = 7"));
        let p = verify(&path)
            .expect("verify")
            .first_problem
            .expect("problem");
        assert_eq!((p.line, p.kind), (3, ProblemKind::Edited));
    }

    #[test]
    fn a_clean_chain_verifies_and_reopening_continues_it() {
        let (_dir, path) = log_with(100);
        assert_eq!(
            verify(&path).expect("verify"),
            VerifyReport {
                records: 100,
                first_problem: None
            }
        );
        let log = AuditLog::open(&path).expect("reopen");
        assert_eq!(log.append(event(100)).expect("append"), 100);
        assert_eq!(verify(&path).expect("verify").records, 101);
        assert_eq!(log.records_for_run("run-1").expect("records").len(), 34);
    }

    #[test]
    fn edits_removals_swaps_and_truncation_are_found() {
        let (_dir, path) = log_with(10);
        let original = std::fs::read_to_string(&path).expect("read");

        rewrite(&path, |l| {
            l[4] = l[4].replace("\"duration_us\":4", "\"duration_us\":5")
        });
        let p = verify(&path)
            .expect("verify")
            .first_problem
            .expect("problem");
        assert_eq!((p.line, p.kind, p.seq), (5, ProblemKind::Edited, Some(4)));

        std::fs::write(&path, &original).expect("restore");
        rewrite(&path, |l| {
            l.remove(5);
        });
        let p = verify(&path)
            .expect("verify")
            .first_problem
            .expect("problem");
        assert_eq!((p.line, p.kind), (6, ProblemKind::Removed));
        assert!(p.message.contains("seq 5 is missing"), "{}", p.message);

        std::fs::write(&path, &original).expect("restore");
        rewrite(&path, |l| l.swap(2, 3));
        let p = verify(&path)
            .expect("verify")
            .first_problem
            .expect("problem");
        assert_eq!((p.line, p.kind), (3, ProblemKind::Reordered));

        std::fs::write(&path, &original[..original.len() - 20]).expect("truncate");
        let p = verify(&path)
            .expect("verify")
            .first_problem
            .expect("problem");
        assert_eq!((p.line, p.kind), (10, ProblemKind::Malformed));
        assert!(
            AuditLog::open(&path).is_err(),
            "a torn log is not appended to"
        );
    }

    #[test]
    fn concurrent_appends_keep_one_chain() {
        let (_dir, path) = log_with(0);
        let log = std::sync::Arc::new(AuditLog::open(&path).expect("open"));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for i in 0..200 {
                        log.append(event(i)).expect("append");
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().expect("join");
        }
        assert_eq!(
            verify(&path).expect("verify"),
            VerifyReport {
                records: 1600,
                first_problem: None
            }
        );
    }

    /// Records every head it is given.
    #[derive(Default)]
    struct Heads(Mutex<Vec<ChainHead>>);

    impl ChainAnchor for Heads {
        fn advance(&self, head: &ChainHead) {
            self.0.lock().expect("heads").push(head.clone());
        }
    }

    #[test]
    fn the_anchor_sees_every_head_and_finds_a_removed_or_replaced_tail() {
        let (_dir, path) = log_with(3);
        let log = AuditLog::open(&path).expect("open");
        let heads = std::sync::Arc::new(Heads::default());
        log.set_anchor(heads.clone());
        for i in 3..6 {
            log.append(event(i)).expect("append");
        }
        let seen = heads.0.lock().expect("heads").clone();
        assert_eq!(
            seen.iter().map(|h| h.records).collect::<Vec<_>>(),
            [3, 4, 5, 6]
        );
        let head = log.head();
        assert_eq!(seen.last(), Some(&head));
        drop(log);
        let original = std::fs::read_to_string(&path).expect("read");
        assert_eq!(
            verify_anchored(&path, Some(&head))
                .expect("verify")
                .first_problem,
            None
        );
        assert!(AuditLog::open_anchored(&path, Some(&head)).is_ok());

        // The last line, then the last three, removed: the chain alone is intact.
        for removed in [1usize, 3] {
            let lines: Vec<&str> = original.lines().collect();
            let kept = &lines[..lines.len() - removed];
            std::fs::write(&path, kept.join("\n") + "\n").expect("write");
            assert_eq!(verify(&path).expect("verify").first_problem, None);
            let p = verify_anchored(&path, Some(&head))
                .expect("verify")
                .first_problem
                .expect("problem");
            assert_eq!(p.kind, ProblemKind::Removed);
            assert!(
                p.message
                    .contains(&format!("6 records anchored, {} found", 6 - removed)),
                "{}",
                p.message
            );
            let err = AuditLog::open_anchored(&path, Some(&head))
                .err()
                .expect("not appended to");
            assert!(err.to_string().contains("--reanchor"), "{err}");
        }

        // The last two rewritten with a recomputed chain (and one more): replaced.
        let lines: Vec<&str> = original.lines().collect();
        std::fs::write(&path, lines[..4].join("\n") + "\n").expect("write");
        let forger = AuditLog::open(&path).expect("open");
        for i in 0..3 {
            forger.append(event(100 + i)).expect("append");
        }
        drop(forger);
        assert_eq!(verify(&path).expect("verify").first_problem, None);
        let p = verify_anchored(&path, Some(&head))
            .expect("verify")
            .first_problem
            .expect("problem");
        assert_eq!((p.kind, p.seq), (ProblemKind::Replaced, Some(5)));
        assert!(AuditLog::open_anchored(&path, Some(&head)).is_err());

        // The last line cut short: malformed, and the anchor is named.
        std::fs::write(&path, &original[..original.len() - 30]).expect("write");
        let p = verify_anchored(&path, Some(&head))
            .expect("verify")
            .first_problem
            .expect("problem");
        assert_eq!(p.kind, ProblemKind::Malformed);
        assert!(
            p.message.contains("6 records anchored, 5 intact"),
            "{}",
            p.message
        );

        // The whole file removed.
        std::fs::remove_file(&path).expect("remove");
        let p = verify_anchored(&path, Some(&head))
            .expect("verify")
            .first_problem
            .expect("problem");
        assert!(
            p.message.contains("6 records anchored, 0 found"),
            "{}",
            p.message
        );
        assert!(AuditLog::open_anchored(&path, Some(&head)).is_err());
    }

    #[test]
    fn two_writers_of_one_file_keep_one_chain_and_a_cut_is_refused() {
        let (_dir, path) = log_with(2);
        let a = AuditLog::open(&path).expect("a");
        let b = AuditLog::open(&path).expect("b");
        for i in 0..10 {
            a.append(event(i)).expect("a appends");
            b.append(event(i)).expect("b appends");
        }
        assert_eq!(
            verify(&path).expect("verify"),
            VerifyReport {
                records: 22,
                first_problem: None
            }
        );
        let text = std::fs::read_to_string(&path).expect("read");
        std::fs::write(&path, &text[..text.len() / 2]).expect("cut");
        let err = a.append(event(0)).expect_err("refused");
        assert!(err.to_string().contains("cut short"), "{err}");
    }
}
