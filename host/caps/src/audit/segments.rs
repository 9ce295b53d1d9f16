//! The audit log's files and how they are read without loading them whole.
//!
//! A log named `<dir>/audit.jsonl` is the *active segment* `audit.jsonl` plus the closed
//! segments `audit-000001.jsonl`, `audit-000002.jsonl`, … in `<dir>`, numbered from 1 in chain
//! order. The active segment's number is one more than the last closed one's (1 when there is
//! none: a log written before rotation existed is simply a log of one segment). Lines are read
//! forwards with a [`LineReader`] and backwards with a [`Backward`] reader, both holding at
//! most one line (capped at [`MAX_LINE_BYTES`]) in memory.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The longest line a record may take; a longer one is malformed (no record the host writes
/// comes near it: details and errors are cut well below).
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// How much is read at a time going backwards.
const CHUNK: usize = 64 * 1024;

/// One file of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Its place in the chain, from 1.
    pub number: u64,
    /// The file.
    pub path: PathBuf,
    /// Whether it is the active segment (the log's own path).
    pub active: bool,
}

impl Segment {
    /// The file name, for messages.
    pub fn name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.path.display().to_string())
    }
}

/// `audit.jsonl` → (`audit`, `.jsonl`).
fn stem_and_extension(active: &Path) -> (String, String) {
    let stem = active
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "audit".into());
    let extension = active
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    (stem, extension)
}

/// The closed segment numbered `number` of the log whose active segment is `active`.
pub fn closed_path(active: &Path, number: u64) -> PathBuf {
    let (stem, extension) = stem_and_extension(active);
    active.with_file_name(format!("{stem}-{number:06}{extension}"))
}

/// The closed segments of the log whose active segment is `active`, in number order.
pub fn closed_segments(active: &Path) -> std::io::Result<Vec<Segment>> {
    let dir = match active.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let (stem, extension) = stem_and_extension(active);
    let prefix = format!("{stem}-");
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(digits) = name
            .strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix(&extension))
        else {
            continue;
        };
        if digits.len() < 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(number) = digits.parse::<u64>() {
            out.push(Segment {
                number,
                path: entry.path(),
                active: false,
            });
        }
    }
    out.sort_by_key(|s| s.number);
    Ok(out)
}

/// The number the active segment has next to `closed` (the closed segments, in order).
pub fn active_number(closed: &[Segment]) -> u64 {
    closed.last().map_or(1, |s| s.number + 1)
}

/// Every segment of the log, closed ones first, then the active one if its file exists.
pub fn all_segments(active: &Path) -> std::io::Result<Vec<Segment>> {
    let mut segments = closed_segments(active)?;
    if active.exists() {
        segments.push(Segment {
            number: active_number(&segments),
            path: active.to_path_buf(),
            active: true,
        });
    }
    Ok(segments)
}

/// What reading one line gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A line (its bytes, without the line end, are in the buffer).
    Complete,
    /// The file ends in the middle of a line (a write cut short).
    Unterminated,
    /// The line is longer than [`MAX_LINE_BYTES`].
    TooLong,
    /// Nothing more.
    End,
}

/// Reads a file line by line, keeping one line in memory, and knows each line's byte offset.
pub struct LineReader<R> {
    reader: BufReader<R>,
    /// Where the next line starts.
    offset: u64,
}

impl<R: Read> LineReader<R> {
    /// Read `inner` from byte `offset` (where it is positioned).
    pub fn new(inner: R, offset: u64) -> LineReader<R> {
        LineReader {
            reader: BufReader::with_capacity(CHUNK, inner),
            offset,
        }
    }

    /// Where the next line starts.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The next line into `buf` (cleared first).
    pub fn next_line(&mut self, buf: &mut Vec<u8>) -> std::io::Result<Line> {
        buf.clear();
        let limit = MAX_LINE_BYTES as u64 + 1;
        let n = (&mut self.reader).take(limit).read_until(b'\n', buf)?;
        self.offset += n as u64;
        if n == 0 {
            return Ok(Line::End);
        }
        if buf.last() == Some(&b'\n') {
            buf.pop();
            return Ok(Line::Complete);
        }
        if n as u64 >= limit {
            return Ok(Line::TooLong);
        }
        Ok(Line::Unterminated)
    }
}

/// Open `path` and position it at `offset`.
pub fn open_at(path: &Path, offset: u64) -> std::io::Result<LineReader<File>> {
    use std::io::{Seek, SeekFrom};
    let mut file = File::open(path)?;
    if offset > 0 {
        file.seek(SeekFrom::Start(offset))?;
    }
    Ok(LineReader::new(file, offset))
}

/// Reads a file's lines from its end towards its start, one line in memory at a time.
pub struct Backward<'f> {
    file: &'f File,
    /// Start of the bytes in `buf`.
    pos: u64,
    /// Bytes `[pos, pos + buf.len())` not yet handed out.
    buf: Vec<u8>,
    done: bool,
}

impl<'f> Backward<'f> {
    /// Read `file`'s first `end` bytes backwards. They must end with a line end (the caller
    /// checks), which is not part of the last line.
    pub fn new(file: &'f File, end: u64) -> Backward<'f> {
        Backward {
            file,
            pos: end.saturating_sub(1),
            buf: Vec::new(),
            done: end == 0,
        }
    }

    /// The previous line: its offset and bytes; `None` at the file's start.
    pub fn previous(&mut self) -> std::io::Result<Option<(u64, Vec<u8>)>> {
        loop {
            if self.done {
                return Ok(None);
            }
            if let Some(i) = self.buf.iter().rposition(|b| *b == b'\n') {
                let line = self.buf.split_off(i + 1);
                self.buf.truncate(i);
                return Ok(Some((self.pos + i as u64 + 1, line)));
            }
            if self.pos == 0 {
                self.done = true;
                return Ok(Some((0, std::mem::take(&mut self.buf))));
            }
            if self.buf.len() > MAX_LINE_BYTES {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("a line longer than {MAX_LINE_BYTES} bytes"),
                ));
            }
            let n = CHUNK.min(usize::try_from(self.pos).unwrap_or(CHUNK));
            let start = self.pos - n as u64;
            let mut chunk = vec![0u8; n];
            self.file.read_exact_at(&mut chunk, start)?;
            chunk.extend_from_slice(&self.buf);
            self.buf = chunk;
            self.pos = start;
        }
    }
}

/// The last byte of `file`'s first `len` bytes.
pub fn last_byte(file: &File, len: u64) -> std::io::Result<Option<u8>> {
    if len == 0 {
        return Ok(None);
    }
    let mut b = [0u8; 1];
    file.read_exact_at(&mut b, len - 1)?;
    Ok(Some(b[0]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_read_both_ways_with_their_offsets() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        let long = "x".repeat(3 * CHUNK / 2);
        let text = format!("a\n{long}\nbc\n");
        std::fs::write(&path, &text).expect("write");
        let file = File::open(&path).expect("open");
        let mut back = Backward::new(&file, text.len() as u64);
        let mut seen = Vec::new();
        while let Some((at, line)) = back.previous().expect("read") {
            seen.push((at, String::from_utf8(line).expect("utf8")));
        }
        let at_bc = (text.len() - 3) as u64;
        assert_eq!(
            seen,
            vec![(at_bc, "bc".into()), (2, long.clone()), (0, "a".into())]
        );
        let mut forward = open_at(&path, 2).expect("open");
        let mut buf = Vec::new();
        assert_eq!(forward.next_line(&mut buf).expect("line"), Line::Complete);
        assert_eq!(buf, long.as_bytes());
        assert_eq!(forward.offset(), at_bc);
        assert_eq!(forward.next_line(&mut buf).expect("line"), Line::Complete);
        assert_eq!(forward.next_line(&mut buf).expect("line"), Line::End);

        std::fs::write(&path, format!("a\n{}\nb", "y".repeat(MAX_LINE_BYTES + 5))).expect("w");
        let mut forward = open_at(&path, 0).expect("open");
        assert_eq!(forward.next_line(&mut buf).expect("line"), Line::Complete);
        assert_eq!(forward.next_line(&mut buf).expect("line"), Line::TooLong);
        std::fs::write(&path, "a\nb").expect("w");
        let mut forward = open_at(&path, 0).expect("open");
        assert_eq!(forward.next_line(&mut buf).expect("line"), Line::Complete);
        assert_eq!(
            forward.next_line(&mut buf).expect("line"),
            Line::Unterminated
        );
    }

    #[test]
    fn closed_segments_are_found_in_number_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let active = dir.path().join("audit.jsonl");
        for name in [
            "audit-000002.jsonl",
            "audit-000010.jsonl",
            "audit-000001.jsonl",
            "audit-1.jsonl",
            "audit-00000x.jsonl",
            "other-000003.jsonl",
        ] {
            std::fs::write(dir.path().join(name), "").expect("write");
        }
        let numbers: Vec<u64> = closed_segments(&active)
            .expect("list")
            .iter()
            .map(|s| s.number)
            .collect();
        assert_eq!(numbers, [1, 2, 10]);
        assert_eq!(
            closed_path(&active, 3),
            dir.path().join("audit-000003.jsonl")
        );
        assert!(
            all_segments(&active)
                .expect("list")
                .iter()
                .all(|s| !s.active)
        );
        std::fs::write(&active, "").expect("write");
        let all = all_segments(&active).expect("list");
        assert_eq!(all.last().map(|s| (s.number, s.active)), Some((11, true)));
    }
}
