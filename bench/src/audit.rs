//! The audit log under volume (issue 20): the cost of one append with the state-store anchor
//! and index against one without, and what a large log costs the commands that come after it
//! (memory while opening, indexing, searching and verifying it; verify's throughput).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use upshift::audit::{AuditEvent, AuditLog, Decision};
use upshift::caps::EventSink;
use upshift::integrity::{StateAnchor, audit_log_key, catch_up_index, records_for_run};

use crate::Config;
use crate::report::{Metric, Target, Unit};

/// A record of about 1.4 KB for run `run-<i % 1000>`.
fn event(i: u64) -> AuditEvent {
    AuditEvent {
        adapter_digest: "ab".repeat(32),
        instance: "bench".into(),
        run_id: Some(format!("run-{}", i % 1000)),
        binding: "meta".into(),
        capability: "db".into(),
        operation: "query".into(),
        decision: if i.is_multiple_of(3) {
            Decision::Denied
        } else {
            Decision::Allowed
        },
        reason: None,
        duration_us: i,
        result_bytes: i,
        error: None,
        detail: Some(format!("{i:>8} {}", "d".repeat(900))),
        sql: Vec::new(),
    }
}

/// Kibibytes of this process's resident memory now (`VmRSS:`) or at its peak (`VmHWM:`).
fn memory_kib(field: &str) -> Result<u64> {
    std::fs::read_to_string("/proc/self/status")?
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/self/status"))
}

/// Every figure of the group.
pub async fn run(cfg: &Config) -> Result<Vec<Metric>> {
    let mut out = vec![append(cfg).await?];
    out.extend(large_log(cfg).await?);
    Ok(out)
}

async fn append(cfg: &Config) -> Result<Metric> {
    let n: u64 = if cfg.quick { 5_000 } else { 20_000 };
    let mut m = Metric::new(
        "audit append, anchored and indexed in the SQLite state",
        "one `AuditLog::append` of a 1.4 KB record; the head and the index row go to the state store's writer thread",
        Unit::Seconds,
        Target::None,
    );
    let mut plain = crate::stats::Samples::new();
    for run in 0..cfg.runs {
        let dir = cfg.data.join(format!("audit-append-{run}"));
        std::fs::create_dir_all(&dir)?;
        let state = upshift::state::open(&dir.join("state.db")).await?;
        for anchored in [false, true] {
            let path = dir.join(format!("audit-{anchored}.jsonl"));
            let log = AuditLog::open(&path)?;
            let anchor = if anchored {
                let a =
                    StateAnchor::start(state.clone(), audit_log_key(&path), EventSink::discard())?;
                log.set_anchor(a.clone());
                Some(a)
            } else {
                None
            };
            let t = Instant::now();
            for i in 0..n {
                log.append(event(i))?;
            }
            let per = t.elapsed().as_secs_f64() / n as f64;
            if let Some(a) = anchor {
                if !tokio::task::block_in_place(|| a.flush(Duration::from_secs(60))) {
                    bail!("the anchor was not flushed within 60 s");
                }
                m.ours.push(per);
            } else {
                plain.push(per);
            }
        }
        drop(state);
        let _ = std::fs::remove_dir_all(&dir);
    }
    m.comparison = Some(("the same append with no anchor and no index".into(), plain));
    m.notes.push(format!("{n} appends back to back per run"));
    Ok(m)
}

async fn large_log(cfg: &Config) -> Result<Vec<Metric>> {
    let n: u64 = if cfg.quick { 60_000 } else { 300_000 };
    let dir = cfg.data.join("audit-large");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("audit.jsonl");
    {
        let log = AuditLog::open(&path)?;
        for i in 0..n {
            log.append(event(i))?;
        }
    }
    let size: u64 = upshift::audit::segments::all_segments(&path)?
        .iter()
        .map(|s| std::fs::metadata(&s.path).map(|m| m.len()).unwrap_or(0))
        .sum();
    let state = upshift::state::open(&dir.join("state.db")).await?;
    let key = audit_log_key(&path);
    // The peak so far (earlier groups) does not count: start it again from here.
    std::fs::write("/proc/self/clear_refs", "5").context("cannot reset the peak RSS")?;
    let start = memory_kib("VmRSS:")?;
    let log = Arc::new(AuditLog::open(&path)?);
    catch_up_index(&state, &key, &log)
        .await
        .map_err(anyhow::Error::msg)?;
    log.append(event(n))?;
    let records = records_for_run(&state, &key, &log, "run-7", false)
        .await
        .map_err(anyhow::Error::msg)?;
    if records.len() as u64 != n / 1000 {
        bail!("run-7 has {} records, expected {}", records.len(), n / 1000);
    }
    let mut verify = Metric::new(
        "audit verify of a large log",
        "`upshift::audit::verify`: every segment read line by line, every hash recomputed",
        Unit::BytesPerSecond,
        Target::None,
    );
    for _ in 0..cfg.runs.min(3) {
        let t = Instant::now();
        let report = upshift::audit::verify(&path)?;
        verify.ours.push(size as f64 / t.elapsed().as_secs_f64());
        if report.first_problem.is_some() || report.records != n + 1 {
            bail!("the log does not verify: {report:?}");
        }
    }
    let peak = memory_kib("VmHWM:")?;
    let mut memory = Metric::new(
        "memory to open, index, append to, search and verify a large audit log",
        "peak RSS growth of the process over its RSS before opening the log",
        Unit::Bytes,
        Target::AtMost(64.0 * 1024.0 * 1024.0),
    );
    memory.ours.push(peak.saturating_sub(start) as f64 * 1024.0);
    let note = format!(
        "{n} records, {:.0} MB in {} segments of 64 MiB, with no index yet",
        size as f64 / 1e6,
        upshift::audit::segments::all_segments(&path)?.len()
    );
    memory.notes.push(note.clone());
    verify.notes.push(note);
    drop(log);
    drop(state);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(vec![memory, verify])
}
