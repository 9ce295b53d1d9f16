//! `upshift audit show`: who did what to which instance, read from the hash-chained audit log
//! (every segment, line by line), filtered by instance, decision and time. Read only.

use std::collections::HashMap;

use serde::Serialize;

use crate::audit::Decision;

use super::{OpError, Session};

/// Which records to show.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Only this instance's.
    pub instance: Option<String>,
    /// Only denied calls.
    pub denied_only: bool,
    /// Only records at or after this time.
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// At most this many, the newest (0: all).
    pub limit: usize,
}

/// One audit record as `audit show` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEntry {
    /// Position in the chain.
    pub seq: u64,
    /// RFC 3339 UTC.
    pub time: String,
    /// Instance.
    pub instance: String,
    /// The run, if the call was part of one.
    pub run_id: Option<String>,
    /// Who made it: the run's lease holder (host, process, agent), when it was part of a run.
    pub who: Option<String>,
    /// The adapter (sha256) on whose behalf it was made.
    pub adapter_digest: String,
    /// Binding.
    pub binding: String,
    /// `db`, `files`, `service`, `http`, `log`, `progress`.
    pub capability: String,
    /// The operation (`query`, `stop`, …).
    pub operation: String,
    /// `allowed`, `denied` or `unbound`.
    pub decision: DecisionName,
    /// Why it was denied.
    pub reason: Option<String>,
    /// The backend's error.
    pub error: Option<String>,
    /// Extra detail (e.g. `host preflight`, `host status`).
    pub detail: Option<String>,
}

/// A decision, kebab-case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DecisionName {
    /// The grant check passed.
    Allowed,
    /// The grant check refused it.
    Denied,
    /// An optional binding the fleet file leaves unbound: nothing was reached.
    Unbound,
}

/// The records `query` asks for, oldest first.
pub async fn show(session: &Session, query: &AuditQuery) -> Result<Vec<AuditEntry>, OpError> {
    let audit = session.audit.clone();
    let denied_only = query.denied_only;
    let records = tokio::task::spawn_blocking(move || {
        audit.records_where(None, |e| !denied_only || e.decision == Decision::Denied)
    })
    .await
    .map_err(|e| OpError::Host(format!("reading the audit log: {e}")))?
    .map_err(|e| OpError::Host(format!("audit log {}: {e}", session.audit.path().display())))?;
    let mut kept: Vec<_> = records
        .into_iter()
        .filter(|r| {
            query
                .instance
                .as_deref()
                .is_none_or(|name| r.event.instance == name)
        })
        .filter(|r| {
            query.since.is_none_or(|since| {
                chrono::DateTime::parse_from_rfc3339(&r.time)
                    .is_ok_and(|t| t.with_timezone(&chrono::Utc) >= since)
            })
        })
        .collect();
    if query.limit > 0 && kept.len() > query.limit {
        kept.drain(..kept.len() - query.limit);
    }
    let mut holders: HashMap<String, Option<String>> = HashMap::new();
    let mut out = Vec::with_capacity(kept.len());
    for r in kept {
        let who = match &r.event.run_id {
            Some(run) => {
                if !holders.contains_key(run) {
                    let holder = session
                        .state
                        .steps(run)
                        .await
                        .map_err(|e| OpError::Host(e.to_string()))?
                        .into_iter()
                        .find_map(|s| s.holder);
                    holders.insert(run.clone(), holder);
                }
                holders.get(run).cloned().flatten()
            }
            None => None,
        };
        let e = r.event;
        out.push(AuditEntry {
            seq: r.seq,
            time: r.time,
            instance: e.instance,
            run_id: e.run_id,
            who,
            adapter_digest: e.adapter_digest,
            binding: e.binding,
            capability: e.capability,
            operation: e.operation,
            decision: match e.decision {
                Decision::Allowed => DecisionName::Allowed,
                Decision::Denied => DecisionName::Denied,
                Decision::Unbound => DecisionName::Unbound,
            },
            reason: e.reason,
            error: e.error,
            detail: e.detail,
        });
    }
    Ok(out)
}

/// `--since`: RFC 3339 (`2026-01-02T03:04:05Z`), or an age (`90s`, `30m`, `1h`, `2d`, `1w`)
/// counted back from `now`.
pub fn parse_since(
    text: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<chrono::DateTime<chrono::Utc>, String> {
    let text = text.trim();
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    let bad = |why: String| {
        format!(
            "--since {text:?}: {why}; give an RFC 3339 time (2026-01-02T03:04:05Z) or an age such as 90s, 30m, 1h 30m, 2d or 1w"
        )
    };
    let age = humantime::parse_duration(text).map_err(|e| bad(e.to_string()))?;
    let age = chrono::TimeDelta::from_std(age).map_err(|_| bad("too long ago".into()))?;
    now.checked_sub_signed(age)
        .ok_or_else(|| bad("too long ago".into()))
}

#[cfg(test)]
mod tests {
    use super::parse_since;

    #[test]
    fn since_takes_rfc3339_and_ages_and_refuses_the_rest() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-01-02T12:00:00Z")
            .map(|t| t.with_timezone(&chrono::Utc))
            .unwrap_or_default();
        let at = |t: &str| parse_since(t, now).map(|t| t.to_rfc3339());
        assert_eq!(at("1h").as_deref(), Ok("2026-01-02T11:00:00+00:00"));
        assert_eq!(at("30m").as_deref(), Ok("2026-01-02T11:30:00+00:00"));
        assert_eq!(at("2d").as_deref(), Ok("2025-12-31T12:00:00+00:00"));
        assert_eq!(
            at("2026-01-01T00:00:00Z").as_deref(),
            Ok("2026-01-01T00:00:00+00:00")
        );
        assert_eq!(at("1h 30m").as_deref(), Ok("2026-01-02T10:30:00+00:00"));
        for bad in ["", "h", "yesterday", "-1h", "99999999999999999w", "1x"] {
            assert!(at(bad).is_err(), "{bad}");
        }
    }
}
