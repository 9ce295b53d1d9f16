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
//!
//! The log is never loaded whole. It rotates into *segments* (see [`segments`]): when the
//! active file `audit.jsonl` reaches [`AuditLog::with_segment_bytes`] (default
//! [`DEFAULT_SEGMENT_BYTES`]) it is renamed `audit-NNNNNN.jsonl` and a new active file begins;
//! the chain (sequence numbers and `prev` hashes) simply continues into it, so a segment's
//! first record carries the previous segment's head hash. Opening reads the last line only
//! (backwards from the end); appending after another process's write reads only its last
//! line; [`verify`] streams every segment line by line. Each append also hands the anchor the
//! record's place ([`IndexEntry`]), so a run's records can be read by offset
//! ([`AuditLog::records_at`]) instead of by scanning.

pub mod segments;

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

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
    /// The binding is declared optional and the operator left it unbound: the call reached
    /// nothing and the adapter was told so, but nothing granted was refused (an adapter
    /// probing for an optional directory is not a security event).
    Unbound,
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
    /// A line the log needs (its last one, or the anchored record) is not a complete record.
    #[error(
        "audit log {path}: the line at byte {offset} is not a complete record ({reason}); run `upshift audit verify` and keep a copy of the file before repairing it"
    )]
    Damaged {
        /// The segment file.
        path: PathBuf,
        /// Where the line starts.
        offset: u64,
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

    /// Record `entry` was just written (called before [`ChainAnchor::advance`] for it, under
    /// the same rules: in order, at once). For an index of the log; by default nothing.
    fn appended(&self, entry: &IndexEntry) {
        let _ = entry;
    }
}

/// Where a record's line starts: its segment's number and the byte offset in that file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RecordAt {
    /// The segment (see [`segments`]), from 1.
    pub segment: u64,
    /// Byte offset of the line in the segment's file.
    pub offset: u64,
}

/// What an index of the log keeps about one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    /// Its sequence number.
    pub seq: u64,
    /// Where it is.
    pub at: RecordAt,
    /// Its run, if any.
    pub run_id: Option<String>,
    /// Allowed or denied.
    pub decision: Decision,
}

/// The size at which the active segment is closed and a new one begins: 64 MiB.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;

/// The fields of a record an index needs (read without the rest).
#[derive(Deserialize)]
struct Brief {
    seq: u64,
    #[serde(default)]
    run_id: Option<String>,
    decision: Decision,
}

struct Tail {
    /// The active segment, opened for reading and appending.
    file: File,
    /// Its inode: another one at the log's path means another process rotated the log.
    ino: u64,
    /// Its segment number.
    segment: u64,
    next_seq: u64,
    last_hash: String,
    anchor: Option<Arc<dyn ChainAnchor>>,
    /// The file's length after this log's last write: more means another process appended
    /// (the chain continues from its record), less means the file was cut short.
    end: u64,
    /// The head must be read from the files again (the active segment was reopened).
    stale: bool,
}

/// An append-only, hash-chained audit log. Thread-safe.
pub struct AuditLog {
    path: PathBuf,
    tail: Mutex<Tail>,
    secrets: Secrets,
    segment_bytes: u64,
}

fn parse(bytes: &[u8]) -> Result<AuditRecord, serde_json::Error> {
    serde_json::from_slice(bytes)
}

/// Whether `record`'s hash is the hash of its contents.
fn intact(record: &AuditRecord) -> bool {
    hash_of(record.seq, &record.time, &record.event, &record.prev)
        .is_ok_and(|own| own == record.hash)
}

fn io_at(path: &Path) -> impl Fn(std::io::Error) -> AuditError + '_ {
    move |source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn damaged(path: &Path, offset: u64, reason: impl ToString) -> AuditError {
    AuditError::Damaged {
        path: path.to_path_buf(),
        offset,
        reason: reason.to_string(),
    }
}

/// Read `file` (`path`, its first `len` bytes) backwards, record by record, until `stop` says so.
fn backwards(
    path: &Path,
    file: &File,
    len: u64,
    mut stop: impl FnMut(AuditRecord) -> bool,
) -> Result<bool, AuditError> {
    if len == 0 {
        return Ok(false);
    }
    if segments::last_byte(file, len).map_err(io_at(path))? != Some(b'\n') {
        return Err(damaged(
            path,
            len,
            "the file ends without a line end (a write was cut short)",
        ));
    }
    let mut lines = segments::Backward::new(file, len);
    while let Some((offset, line)) = lines.previous().map_err(io_at(path))? {
        let record = parse(&line).map_err(|e| damaged(path, offset, e))?;
        if stop(record) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The last record of the log: the active segment's (`file`, its first `len` bytes), or when
/// that is empty the last closed segment's (`closed`, in order).
fn last_record(
    path: &Path,
    file: &File,
    len: u64,
    closed: &[segments::Segment],
) -> Result<Option<AuditRecord>, AuditError> {
    let mut last = None;
    if backwards(path, file, len, |r| {
        last = Some(r);
        true
    })? {
        return Ok(last);
    }
    for segment in closed.iter().rev() {
        let file = File::open(&segment.path).map_err(io_at(&segment.path))?;
        let len = file.metadata().map_err(io_at(&segment.path))?.len();
        if backwards(&segment.path, &file, len, |r| {
            last = Some(r);
            true
        })? {
            return Ok(last);
        }
    }
    Ok(None)
}

/// The record numbered `seq`, looked for from the log's end backwards (it is normally the
/// last record or close to it); `None` once an earlier one is reached.
fn find_from_end(
    path: &Path,
    file: &File,
    len: u64,
    closed: &[segments::Segment],
    seq: u64,
) -> Result<Option<AuditRecord>, AuditError> {
    let mut found = None;
    let mut look = |r: AuditRecord| {
        if r.seq <= seq {
            found = (r.seq == seq).then_some(r);
            true
        } else {
            false
        }
    };
    if backwards(path, file, len, &mut look)? {
        return Ok(found);
    }
    for segment in closed.iter().rev() {
        let file = File::open(&segment.path).map_err(io_at(&segment.path))?;
        let len = file.metadata().map_err(io_at(&segment.path))?.len();
        if backwards(&segment.path, &file, len, &mut look)? {
            return Ok(found);
        }
    }
    Ok(None)
}

/// A rotation that stopped between linking the active file to its closed name and removing
/// the active name leaves one file under both names: finish it.
fn finish_rotation(path: &Path, closed: &[segments::Segment]) -> std::io::Result<bool> {
    let (Ok(active), Some(last)) = (std::fs::metadata(path), closed.last()) else {
        return Ok(false);
    };
    let last = std::fs::metadata(&last.path)?;
    if (active.dev(), active.ino()) != (last.dev(), last.ino()) {
        return Ok(false);
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e),
    }
}

impl AuditLog {
    /// Open (creating) the log and continue its chain.
    pub fn open(path: &Path) -> Result<AuditLog, AuditError> {
        AuditLog::open_anchored(path, None)
    }

    /// Open (creating) the log and continue its chain, but only if it reaches `anchor`, the head
    /// anchored for it: at least that many records, the anchored one with the anchored hash
    /// (more records than anchored are fine: the host stopped before anchoring them).
    ///
    /// Reads the last record, and the anchored one looking backwards from the end: never the
    /// whole log ([`verify_anchored`] checks every record).
    pub fn open_anchored(path: &Path, anchor: Option<&ChainHead>) -> Result<AuditLog, AuditError> {
        let io = io_at(path);
        if let Some(dir) = path.parent() {
            crate::private::create_dir_all(dir).map_err(&io)?;
        }
        let mut closed = segments::closed_segments(path).map_err(&io)?;
        if finish_rotation(path, &closed).map_err(&io)? {
            closed = segments::closed_segments(path).map_err(&io)?;
        }
        let file = crate::private::append_read(path).map_err(&io)?;
        // Writers hold the file exclusively while they append: read a whole last line.
        let shared = nix::fcntl::Flock::lock(
            file.try_clone().map_err(&io)?,
            nix::fcntl::FlockArg::LockShared,
        )
        .map_err(|(_, errno)| io(std::io::Error::from(errno)))?;
        let meta = shared.metadata().map_err(&io)?;
        let len = meta.len();
        let (next_seq, last_hash) = match last_record(path, &file, len, &closed)? {
            Some(r) => (r.seq + 1, r.hash),
            None => (0, GENESIS.to_string()),
        };
        if let Some(anchor) = anchor {
            let problem = if next_seq < anchor.records {
                Some(removed_tail(anchor.records, next_seq))
            } else if anchor.records > 0 {
                let anchored = find_from_end(path, &file, len, &closed, anchor.records - 1)?;
                let holds = anchored.is_some_and(|r| r.hash == anchor.hash && intact(&r));
                (!holds).then(|| replaced_tail(anchor.records))
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
        drop(shared);
        Ok(AuditLog {
            path: path.to_path_buf(),
            tail: Mutex::new(Tail {
                file,
                ino: meta.ino(),
                segment: segments::active_number(&closed),
                next_seq,
                last_hash,
                anchor: None,
                end: len,
                stale: false,
            }),
            secrets: Secrets::new(),
            segment_bytes: DEFAULT_SEGMENT_BYTES,
        })
    }

    /// Close the active segment once it holds `bytes` or more (at the next append) and begin a
    /// new one (default [`DEFAULT_SEGMENT_BYTES`]; at least 1).
    pub fn with_segment_bytes(mut self, bytes: u64) -> AuditLog {
        self.segment_bytes = bytes.max(1);
        self
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
    pub fn set_anchor(&self, anchor: Arc<dyn ChainAnchor>) {
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

    /// The active segment's file (the log's name).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The active segment again, after another process rotated the log (or removed the file).
    fn reopen(&self, tail: &mut Tail) -> Result<(), AuditError> {
        let io = io_at(&self.path);
        let file = crate::private::append_read(&self.path).map_err(&io)?;
        tail.ino = file.metadata().map_err(&io)?.ino();
        tail.file = file;
        let closed = segments::closed_segments(&self.path).map_err(&io)?;
        tail.segment = segments::active_number(&closed);
        tail.end = 0;
        tail.stale = true;
        Ok(())
    }

    /// Close the active segment (held exclusively by the caller): it becomes the closed
    /// segment of its number, and an empty active segment begins.
    fn rotate(&self, tail: &mut Tail) -> Result<(), AuditError> {
        let closed = segments::closed_path(&self.path, tail.segment);
        // A link, not a rename: a segment of that name already there is never replaced.
        std::fs::hard_link(&self.path, &closed).map_err(io_at(&closed))?;
        match std::fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_at(&self.path)(e)),
        }
        let io = io_at(&self.path);
        let file = crate::private::append_read(&self.path).map_err(&io)?;
        tail.ino = file.metadata().map_err(&io)?.ino();
        tail.file = file;
        tail.segment += 1;
        tail.end = 0;
        Ok(())
    }

    /// Append one record; returns its sequence number. Other processes appending to the same
    /// file (two commands on one data directory) are serialised by a lock on the file, and the
    /// chain continues from their last record.
    pub fn append(&self, event: AuditEvent) -> Result<u64, AuditError> {
        self.append_sized(event).map(|(seq, _)| seq)
    }

    /// [`AuditLog::append`], also returning how many bytes the record took in the file (the
    /// guard charges them to the export call's budget).
    /// Secrets are masked first, then long text is cut to `MAX_AUDIT_TEXT` (head and tail kept).
    pub fn append_sized(&self, mut event: AuditEvent) -> Result<(u64, u64), AuditError> {
        for text in [&mut event.reason, &mut event.error, &mut event.detail]
            .into_iter()
            .flatten()
        {
            self.secrets.mask_string(text);
            cut(text);
        }
        cut(&mut event.binding);
        let mut tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        let io = io_at(&self.path);
        let (locked, len) = loop {
            let locked = nix::fcntl::Flock::lock(
                tail.file.try_clone().map_err(&io)?,
                nix::fcntl::FlockArg::LockExclusive,
            )
            .map_err(|(_, errno)| io(std::io::Error::from(errno)))?;
            let current = match std::fs::metadata(&self.path) {
                Ok(meta) => Some(meta.ino()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(io(e)),
            };
            if current != Some(tail.ino) {
                drop(locked);
                self.reopen(&mut tail)?;
                continue;
            }
            let len = locked.metadata().map_err(&io)?.len();
            if len < tail.end {
                return Err(AuditError::Unanchored {
                    path: self.path.clone(),
                    problem: format!(
                        "it was cut short while this host was writing it ({} bytes written, {len} there now)",
                        tail.end
                    ),
                });
            }
            if len > tail.end || tail.stale {
                let closed = if len == 0 {
                    segments::closed_segments(&self.path).map_err(&io)?
                } else {
                    Vec::new()
                };
                let (next_seq, last_hash) = match last_record(&self.path, &locked, len, &closed)? {
                    Some(r) => (r.seq + 1, r.hash),
                    None => (0, GENESIS.to_string()),
                };
                if next_seq < tail.next_seq {
                    return Err(AuditError::Unanchored {
                        path: self.path.clone(),
                        problem: format!(
                            "records were removed while this host was writing it ({} written, {next_seq} there now)",
                            tail.next_seq
                        ),
                    });
                }
                tail.next_seq = next_seq;
                tail.last_hash = last_hash;
                tail.end = len;
                tail.stale = false;
            }
            if len > 0 && len >= self.segment_bytes {
                self.rotate(&mut tail)?;
                drop(locked);
                continue;
            }
            break (locked, len);
        };
        let seq = tail.next_seq;
        let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let hash = hash_of(seq, &time, &event, &tail.last_hash)?;
        let entry = tail.anchor.is_some().then(|| IndexEntry {
            seq,
            at: RecordAt {
                segment: tail.segment,
                offset: len,
            },
            run_id: event.run_id.clone(),
            decision: event.decision,
        });
        let record = AuditRecord {
            seq,
            time,
            event,
            prev: tail.last_hash.clone(),
            hash: hash.clone(),
        };
        let mut line = serde_json::to_string(&record)?;
        line.push('\n');
        tail.file.write_all(line.as_bytes()).map_err(&io)?;
        tail.end = len + line.len() as u64;
        drop(locked);
        tail.next_seq = seq + 1;
        tail.last_hash = hash;
        if let Some(anchor) = &tail.anchor {
            if let Some(entry) = &entry {
                anchor.appended(entry);
            }
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
        tail.file.sync_data().map_err(io_at(&self.path))
    }

    /// The records of one run, found by reading every segment line by line (one line in
    /// memory at a time). With an index, [`AuditLog::records_at`] reads only the run's.
    pub fn records_for_run(&self, run_id: &str) -> Result<Vec<AuditRecord>, AuditError> {
        self.records_where(None, |e| e.run_id.as_deref() == Some(run_id))
    }

    /// The records from `from` on (every one when `None`) whose index entry `keep` accepts,
    /// read line by line; lines that are not records are skipped (`verify` reports them).
    pub fn records_where(
        &self,
        from: Option<RecordAt>,
        mut keep: impl FnMut(&IndexEntry) -> bool,
    ) -> Result<Vec<AuditRecord>, AuditError> {
        let mut out = Vec::new();
        self.scan(from, |entry, line| {
            if keep(&entry)
                && let Ok(record) = parse(line)
            {
                out.push(record);
            }
        })?;
        Ok(out)
    }

    /// The index entry of every record from `from` on (every one when `None`), in order,
    /// read line by line: what an index that is missing or behind is caught up from.
    pub fn entries_from(
        &self,
        from: Option<RecordAt>,
        mut each: impl FnMut(IndexEntry),
    ) -> Result<(), AuditError> {
        self.scan(from, |entry, _| each(entry))
    }

    fn scan(
        &self,
        from: Option<RecordAt>,
        mut each: impl FnMut(IndexEntry, &[u8]),
    ) -> Result<(), AuditError> {
        let all = segments::all_segments(&self.path).map_err(io_at(&self.path))?;
        let mut buf = Vec::new();
        for segment in all {
            let start = match from {
                Some(at) if segment.number < at.segment => continue,
                Some(at) if segment.number == at.segment => at.offset,
                _ => 0,
            };
            let mut lines = match segments::open_at(&segment.path, start) {
                Ok(lines) => lines,
                // Rotated away since it was listed: its records are in the next segment.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_at(&segment.path)(e)),
            };
            loop {
                let offset = lines.offset();
                match lines.next_line(&mut buf).map_err(io_at(&segment.path))? {
                    segments::Line::Complete => {}
                    segments::Line::TooLong => continue,
                    segments::Line::Unterminated | segments::Line::End => break,
                }
                let Ok(brief) = serde_json::from_slice::<Brief>(&buf) else {
                    continue;
                };
                let entry = IndexEntry {
                    seq: brief.seq,
                    at: RecordAt {
                        segment: segment.number,
                        offset,
                    },
                    run_id: brief.run_id,
                    decision: brief.decision,
                };
                each(entry, &buf);
            }
        }
        Ok(())
    }

    /// The records at `places` (each with the sequence number expected there), in that order.
    /// `None` when a place does not hold that record: the index that named it is stale (the
    /// log was replaced or re-anchored), and the caller falls back to
    /// [`AuditLog::records_where`].
    pub fn records_at(
        &self,
        places: &[(u64, RecordAt)],
    ) -> Result<Option<Vec<AuditRecord>>, AuditError> {
        let all = segments::all_segments(&self.path).map_err(io_at(&self.path))?;
        let mut open: Option<(u64, PathBuf, File)> = None;
        let mut out = Vec::with_capacity(places.len());
        let mut line = Vec::new();
        for &(seq, at) in places {
            if open.as_ref().is_none_or(|(n, _, _)| *n != at.segment) {
                let Some(segment) = all.iter().find(|s| s.number == at.segment) else {
                    return Ok(None);
                };
                let file = match File::open(&segment.path) {
                    Ok(file) => file,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(io_at(&segment.path)(e)),
                };
                open = Some((at.segment, segment.path.clone(), file));
            }
            let Some((_, path, file)) = &open else {
                return Ok(None);
            };
            if !read_line_at(file, at.offset, &mut line).map_err(io_at(path))? {
                return Ok(None);
            }
            match parse(&line) {
                Ok(record) if record.seq == seq => out.push(record),
                _ => return Ok(None),
            }
        }
        Ok(Some(out))
    }
}

/// The complete line at `offset` in `file` into `line`; false if there is none there.
fn read_line_at(file: &File, offset: u64, line: &mut Vec<u8>) -> std::io::Result<bool> {
    line.clear();
    let mut chunk = [0u8; 4096];
    let mut at = offset;
    loop {
        let n = file.read_at(&mut chunk, at)?;
        if n == 0 {
            return Ok(false);
        }
        if let Some(end) = chunk[..n].iter().position(|b| *b == b'\n') {
            line.extend_from_slice(&chunk[..end]);
            return Ok(true);
        }
        line.extend_from_slice(&chunk[..n]);
        if line.len() > segments::MAX_LINE_BYTES {
            return Ok(false);
        }
        at += n as u64;
    }
}

/// Cut `text` to about [`MAX_AUDIT_TEXT`](crate::limits::MAX_AUDIT_TEXT) bytes, keeping its
/// head and its tail (where a denial says why) and saying how much was cut: an adapter's 10 MiB
/// path makes a record of a few KiB.
fn cut(text: &mut String) {
    let max = crate::limits::MAX_AUDIT_TEXT;
    if text.len() <= max {
        return;
    }
    let mut head = max * 3 / 4;
    while !text.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = text.len() - max / 4;
    while !text.is_char_boundary(tail) {
        tail += 1;
    }
    *text = format!(
        "{} … ({} bytes cut) … {}",
        &text[..head],
        tail - head,
        &text[tail..]
    );
}

/// What kind of damage `verify` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// A record's contents no longer match its hash.
    Edited,
    /// Records (or a whole segment) are missing.
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
    /// The segment file it is in (its name, e.g. `audit.jsonl` or `audit-000002.jsonl`).
    pub file: String,
    /// 1-based line in that file.
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
///
/// Every segment is read in order, line by line (one line, at most [`segments::MAX_LINE_BYTES`],
/// in memory): time linear in the log's size, memory bounded. A segment missing from the
/// numbering, segments out of order, or one replaced by another chain are reported at the
/// first line that shows it.
pub fn verify_anchored(
    path: &Path,
    anchor: Option<&ChainHead>,
) -> Result<VerifyReport, AuditError> {
    let all = segments::all_segments(path).map_err(io_at(path))?;
    if all.is_empty() && anchor.is_none() {
        return Err(AuditError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        });
    }
    let wanted = anchor.and_then(|a| a.records.checked_sub(1));
    let walked = walk(path, &all, wanted)?;
    let mut report = walked.report;
    let Some(anchor) = anchor else {
        return Ok(report);
    };
    let found = report.records;
    let (kind, message, file, line) = match &mut report.first_problem {
        Some(p) => {
            // Say how far the anchor reaches, so a cut-short or removed tail is seen as such.
            p.message = format!(
                "{}; {} records anchored, {} intact before it",
                p.message, anchor.records, report.records
            );
            return Ok(report);
        }
        None if found < anchor.records => (
            ProblemKind::Removed,
            removed_tail(anchor.records, found),
            walked.last_file,
            walked.last_file_lines + 1,
        ),
        None if anchor.records > 0 && walked.wanted_hash.as_deref() != Some(&anchor.hash) => {
            let (file, line) = walked
                .wanted_at
                .unwrap_or((walked.last_file, anchor.records));
            (
                ProblemKind::Replaced,
                replaced_tail(anchor.records),
                file,
                line,
            )
        }
        None => return Ok(report),
    };
    let seq = if kind == ProblemKind::Removed {
        found
    } else {
        anchor.records - 1
    };
    report.first_problem = Some(ChainProblem {
        file,
        line,
        seq: Some(seq),
        kind,
        message,
    });
    Ok(report)
}

/// What walking the chain found.
struct Walked {
    report: VerifyReport,
    /// The hash of the wanted record, if it is intact.
    wanted_hash: Option<String>,
    /// Where the wanted record is (file name, line).
    wanted_at: Option<(String, u64)>,
    /// The last segment's name and how many lines it has.
    last_file: String,
    last_file_lines: u64,
}

/// Check the chain across `segments`; also the hash of record `wanted` (0-based), if intact.
fn walk(
    path: &Path,
    segments: &[segments::Segment],
    wanted: Option<u64>,
) -> Result<Walked, AuditError> {
    let multi = segments.len() > 1;
    let mut walked = Walked {
        report: VerifyReport {
            records: 0,
            first_problem: None,
        },
        wanted_hash: None,
        wanted_at: None,
        last_file: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        last_file_lines: 0,
    };
    let mut prev = GENESIS.to_string();
    let mut buf = Vec::new();
    let mut previous: Option<&segments::Segment> = None;
    for segment in segments {
        let name = segment.name();
        walked.last_file = name.clone();
        walked.last_file_lines = 0;
        let problem = |line: u64, seq: Option<u64>, kind, message: String| ChainProblem {
            file: name.clone(),
            line,
            seq,
            kind,
            message: format!(
                "{}line {line}{}: {message}",
                if multi {
                    format!("{name} ")
                } else {
                    String::new()
                },
                seq.map(|s| format!(" (seq {s})")).unwrap_or_default()
            ),
        };
        let expected_number = previous.map_or(1, |p| p.number + 1);
        if segment.number != expected_number {
            let missing = if segment.number == expected_number + 1 {
                format!(
                    "segment {} is missing",
                    segments::closed_path(path, expected_number)
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default()
                )
            } else {
                format!(
                    "segments {expected_number}..{} are missing",
                    segment.number - 1
                )
            };
            walked.report.first_problem = Some(problem(
                1,
                None,
                ProblemKind::Removed,
                format!("{missing} before this file (the segments are numbered without a gap)"),
            ));
            return Ok(walked);
        }
        let boundary = previous.map(|p| p.name());
        previous = Some(segment);
        let mut lines = match segments::open_at(&segment.path, 0) {
            Ok(lines) => lines,
            Err(source) => {
                return Err(AuditError::Io {
                    path: segment.path.clone(),
                    source,
                });
            }
        };
        let mut next = |buf: &mut Vec<u8>| {
            lines
                .next_line(buf)
                .map_err(io_at(&segment.path))
                .map(|l| (l, std::mem::take(buf)))
        };
        let mut line_no = 0u64;
        loop {
            let (kind, bytes) = next(&mut buf)?;
            if kind == segments::Line::End {
                break;
            }
            line_no += 1;
            walked.last_file_lines = line_no;
            let expected_seq = walked.report.records;
            let record = match (kind, parse(&bytes)) {
                (segments::Line::Complete, Ok(r)) => r,
                (kind, _) => {
                    let why = if kind == segments::Line::TooLong {
                        format!(
                            "is longer than {} bytes, so it is not an audit record",
                            segments::MAX_LINE_BYTES
                        )
                    } else {
                        "is not a complete audit record".into()
                    };
                    walked.report.first_problem =
                        Some(problem(line_no, None, ProblemKind::Malformed, why));
                    return Ok(walked);
                }
            };
            if !intact(&record) {
                walked.report.first_problem = Some(problem(
                    line_no,
                    Some(record.seq),
                    ProblemKind::Edited,
                    "record was edited after it was written (its hash does not match its contents)"
                        .into(),
                ));
                return Ok(walked);
            }
            if record.seq != expected_seq || record.prev != prev {
                let (mut kind, mut message) = if record.seq > expected_seq {
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
                        "record does not follow the previous one (its prev hash does not match)"
                            .into(),
                    )
                };
                // A later record first (seq ahead) followed by an earlier one is a swap, not a
                // removal.
                if kind == ProblemKind::Removed {
                    let peeked = next(&mut buf)?;
                    if peeked.0 == segments::Line::Complete
                        && parse(&peeked.1).is_ok_and(|n| n.seq == expected_seq)
                    {
                        kind = ProblemKind::Reordered;
                        message =
                            format!("record seq {} stands before seq {expected_seq}", record.seq);
                    }
                }
                if line_no == 1
                    && let Some(before) = &boundary
                {
                    message = format!(
                        "{message}; this segment does not continue {before}: a segment was removed, reordered or replaced"
                    );
                }
                walked.report.first_problem =
                    Some(problem(line_no, Some(record.seq), kind, message));
                return Ok(walked);
            }
            if Some(expected_seq) == wanted {
                walked.wanted_hash = Some(record.hash.clone());
                walked.wanted_at = Some((name.clone(), line_no));
            }
            prev = record.hash;
            walked.report.records += 1;
        }
    }
    Ok(walked)
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
    fn cut_keeps_head_and_tail_on_char_boundaries() {
        let mut short = "é".repeat(10);
        cut(&mut short);
        assert_eq!(short, "é".repeat(10));
        let mut long = "é".repeat(10_000);
        cut(&mut long);
        assert!(
            long.len() < crate::limits::MAX_AUDIT_TEXT + 64,
            "{}",
            long.len()
        );
        assert!(long.starts_with("éé") && long.ends_with("éé") && long.contains("bytes cut"));
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

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("audit"))
            .collect();
        names.sort();
        names
    }

    /// A log of `n` records in segments of about four records each.
    fn rotated_log(n: u64) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path)
            .expect("open")
            .with_segment_bytes(1500);
        for i in 0..n {
            log.append(event(i)).expect("append");
        }
        (dir, path)
    }

    #[test]
    fn the_log_rotates_into_chained_segments_that_verify_and_reopen_as_one_chain() {
        let (dir, path) = rotated_log(40);
        let files = names(dir.path());
        assert!(files.len() > 5, "{files:?}");
        assert_eq!(files[0], "audit-000001.jsonl");
        assert_eq!(files.last().map(String::as_str), Some("audit.jsonl"));
        // Each segment's first record carries the previous segment's head hash.
        let first_of_two =
            std::fs::read_to_string(dir.path().join("audit-000002.jsonl")).expect("read");
        let last_of_one =
            std::fs::read_to_string(dir.path().join("audit-000001.jsonl")).expect("read");
        let first: AuditRecord =
            serde_json::from_str(first_of_two.lines().next().expect("line")).expect("record");
        let last: AuditRecord =
            serde_json::from_str(last_of_one.lines().last().expect("line")).expect("record");
        assert_eq!((first.prev, first.seq), (last.hash, last.seq + 1));
        assert_eq!(
            verify(&path).expect("verify"),
            VerifyReport {
                records: 40,
                first_problem: None
            }
        );
        let log = AuditLog::open(&path)
            .expect("reopen")
            .with_segment_bytes(1500);
        assert_eq!(log.head().records, 40);
        assert_eq!(log.append(event(40)).expect("append"), 40);
        let run_1 = log.records_for_run("run-1").expect("records");
        assert_eq!(run_1.len(), 14);
        assert!(run_1.windows(2).all(|w| w[0].seq < w[1].seq));

        // Every record's place, as an index keeps it, reads back that record.
        let mut entries = Vec::new();
        log.entries_from(None, |e| entries.push(e))
            .expect("entries");
        assert_eq!(entries.len(), 41);
        let places: Vec<(u64, RecordAt)> = entries.iter().map(|e| (e.seq, e.at)).collect();
        let read = log.records_at(&places).expect("read").expect("all there");
        assert!(read.iter().enumerate().all(|(i, r)| r.seq == i as u64));
        // Entries from a place on are the rest of the log.
        let mut rest = Vec::new();
        log.entries_from(Some(entries[30].at), |e| rest.push(e.seq))
            .expect("entries");
        assert_eq!(rest, (30..41).collect::<Vec<_>>());
        // A place that does not hold the record named: the index is stale.
        let wrong = [(7, entries[8].at)];
        assert_eq!(log.records_at(&wrong).expect("read"), None);
    }

    #[test]
    fn a_removed_edited_or_reordered_segment_is_reported_by_name() {
        let (dir, path) = rotated_log(40);
        let segment = |n: u64| dir.path().join(format!("audit-{n:06}.jsonl"));
        let keep = dir.path().join("kept");
        std::fs::copy(segment(2), &keep).expect("copy");

        std::fs::remove_file(segment(2)).expect("remove");
        let p = verify(&path)
            .expect("verify")
            .first_problem
            .expect("problem");
        assert_eq!(
            (p.kind, p.file.as_str(), p.line),
            (ProblemKind::Removed, "audit-000003.jsonl", 1)
        );
        assert!(
            p.message.contains("segment audit-000002.jsonl is missing"),
            "{}",
            p.message
        );

        // Renamed to close the gap: the chain shows it.
        std::fs::rename(segment(3), segment(2)).expect("rename");
        let p = verify(&path)
            .expect("verify")
            .first_problem
            .expect("problem");
        assert_eq!(
            (p.kind, p.file.as_str()),
            (ProblemKind::Removed, "audit-000002.jsonl")
        );
        assert!(
            p.message.contains("does not continue audit-000001.jsonl"),
            "{}",
            p.message
        );
        std::fs::rename(segment(2), segment(3)).expect("rename back");
        std::fs::copy(&keep, segment(2)).expect("restore");
        assert_eq!(verify(&path).expect("verify").first_problem, None);

        // Two segments swapped.
        let three = dir.path().join("three");
        std::fs::rename(segment(3), &three).expect("move");
        std::fs::rename(segment(2), segment(3)).expect("move");
        std::fs::rename(&three, segment(2)).expect("move");
        let p = verify(&path)
            .expect("verify")
            .first_problem
            .expect("problem");
        assert_eq!(p.file, "audit-000002.jsonl");
        assert!(
            matches!(p.kind, ProblemKind::Removed | ProblemKind::Reordered),
            "{p:?}"
        );
        assert!(
            p.message
                .contains("a segment was removed, reordered or replaced"),
            "{}",
            p.message
        );
        std::fs::rename(segment(2), &three).expect("move");
        std::fs::rename(segment(3), segment(2)).expect("move");
        std::fs::rename(&three, segment(3)).expect("move");
        assert_eq!(verify(&path).expect("verify").first_problem, None);

        // A record of a closed segment edited; its last record removed.
        rewrite(&segment(2), |l| {
            l[1] = l[1].replace("\"instance\":\"bb\"", "\"instance\":\"bc\"")
        });
        let p = verify(&path)
            .expect("verify")
            .first_problem
            .expect("problem");
        assert_eq!(
            (p.kind, p.file.as_str(), p.line),
            (ProblemKind::Edited, "audit-000002.jsonl", 2)
        );
        assert!(
            p.message.starts_with("audit-000002.jsonl line 2"),
            "{}",
            p.message
        );
        std::fs::copy(&keep, segment(2)).expect("restore");
        rewrite(&segment(2), |l| {
            l.pop();
        });
        let p = verify(&path)
            .expect("verify")
            .first_problem
            .expect("problem");
        assert_eq!(
            (p.kind, p.file.as_str(), p.line),
            (ProblemKind::Removed, "audit-000003.jsonl", 1)
        );
        std::fs::copy(&keep, segment(2)).expect("restore");

        // The active segment removed: the anchor shows it, and the log is not appended to.
        let head = AuditLog::open(&path).expect("open").head();
        std::fs::remove_file(&path).expect("remove");
        let p = verify_anchored(&path, Some(&head))
            .expect("verify")
            .first_problem
            .expect("problem");
        assert_eq!(p.kind, ProblemKind::Removed);
        assert!(AuditLog::open_anchored(&path, Some(&head)).is_err());
    }

    #[test]
    fn two_writers_keep_one_chain_across_rotations() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let a = std::sync::Arc::new(AuditLog::open(&path).expect("a").with_segment_bytes(2000));
        let b = std::sync::Arc::new(AuditLog::open(&path).expect("b").with_segment_bytes(2000));
        let handles: Vec<_> = [a, b]
            .into_iter()
            .map(|log| {
                std::thread::spawn(move || {
                    for i in 0..150 {
                        log.append(event(i)).expect("append");
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().expect("join");
        }
        assert!(names(dir.path()).len() > 10);
        assert_eq!(
            verify(&path).expect("verify"),
            VerifyReport {
                records: 300,
                first_problem: None
            }
        );
    }

    #[test]
    fn a_rotation_cut_short_is_finished_and_the_log_goes_on() {
        let (dir, path) = log_with(5);
        // Linked under its closed name, the active name not yet removed.
        std::fs::hard_link(&path, dir.path().join("audit-000001.jsonl")).expect("link");
        let log = AuditLog::open(&path).expect("open");
        assert_eq!(log.head().records, 5);
        assert_eq!(log.append(event(5)).expect("append"), 5);
        assert_eq!(names(dir.path()), ["audit-000001.jsonl", "audit.jsonl"]);
        assert_eq!(verify(&path).expect("verify").records, 6);
    }

    #[test]
    fn a_line_longer_than_the_cap_is_malformed() {
        let (_dir, path) = log_with(3);
        rewrite(&path, |l| {
            l.insert(1, "x".repeat(segments::MAX_LINE_BYTES + 1))
        });
        let p = verify(&path)
            .expect("verify")
            .first_problem
            .expect("problem");
        assert_eq!((p.line, p.kind), (2, ProblemKind::Malformed));
        assert!(p.message.contains("longer than"), "{}", p.message);
    }

    #[test]
    fn the_anchored_record_is_found_behind_unanchored_ones() {
        let (_dir, path) = rotated_log(30);
        let log = AuditLog::open(&path).expect("open");
        let head = log.head();
        drop(log);
        let log = AuditLog::open(&path)
            .expect("open")
            .with_segment_bytes(1500);
        for i in 0..20 {
            log.append(event(i)).expect("append");
        }
        drop(log);
        assert!(AuditLog::open_anchored(&path, Some(&head)).is_ok());
        let forged = ChainHead {
            records: head.records,
            hash: "f".repeat(64),
        };
        let err = AuditLog::open_anchored(&path, Some(&forged))
            .err()
            .expect("refused");
        assert!(err.to_string().contains("the tail was replaced"), "{err}");
    }
}
