//! Tamper-evident audit log: every capability call an adapter makes, and every host action done
//! on its behalf, appended to a hash-chained JSON-lines file (`<data>/audit.jsonl`).
//!
//! Each record carries its sequence number, the previous record's hash and its own hash over
//! `prev + "\n" + canonical JSON of the record without its hash`. `verify` reports the first
//! record that was edited, removed or reordered.

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

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

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
}

struct Tail {
    file: File,
    next_seq: u64,
    last_hash: String,
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
        let io = |source| AuditError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            crate::private::create_dir_all(dir).map_err(io)?;
        }
        let mut next_seq = 0;
        let mut last_hash = GENESIS.to_string();
        if path.exists() {
            let text = std::fs::read_to_string(path).map_err(io)?;
            if !text.is_empty() && !text.ends_with('\n') {
                return Err(AuditError::Damaged {
                    path: path.to_path_buf(),
                    line: text.lines().count() as u64,
                    reason: "it has no line end (a write was cut short)".into(),
                });
            }
            if let Some((n, last)) = text.lines().enumerate().last() {
                let record: AuditRecord =
                    serde_json::from_str(last).map_err(|e| AuditError::Damaged {
                        path: path.to_path_buf(),
                        line: n as u64 + 1,
                        reason: e.to_string(),
                    })?;
                next_seq = record.seq + 1;
                last_hash = record.hash;
            }
        }
        let file = crate::private::append(path).map_err(io)?;
        Ok(AuditLog {
            path: path.to_path_buf(),
            tail: Mutex::new(Tail {
                file,
                next_seq,
                last_hash,
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

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append one record; returns its sequence number.
    pub fn append(&self, mut event: AuditEvent) -> Result<u64, AuditError> {
        for text in [&mut event.reason, &mut event.error, &mut event.detail] {
            self.secrets.mask_option(text);
        }
        let mut tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
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
        tail.file
            .write_all(line.as_bytes())
            .map_err(|source| AuditError::Io {
                path: self.path.clone(),
                source,
            })?;
        tail.next_seq = seq + 1;
        tail.last_hash = hash;
        Ok(seq)
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
    let text = std::fs::read_to_string(path).map_err(|source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    })?;
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
                return Ok(VerifyReport {
                    records,
                    first_problem: Some(problem(
                        i,
                        None,
                        ProblemKind::Malformed,
                        "is not a complete audit record".into(),
                    )),
                });
            }
        };
        let own = hash_of(record.seq, &record.time, &record.event, &record.prev)?;
        if own != record.hash {
            return Ok(VerifyReport {
                records,
                first_problem: Some(problem(
                    i,
                    Some(record.seq),
                    ProblemKind::Edited,
                    "record was edited after it was written (its hash does not match its contents)"
                        .into(),
                )),
            });
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
            return Ok(VerifyReport {
                records,
                first_problem: Some(problem(i, Some(record.seq), kind_message.0, kind_message.1)),
            });
        }
        prev = record.hash;
        records += 1;
    }
    Ok(VerifyReport {
        records,
        first_problem: None,
    })
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
}
