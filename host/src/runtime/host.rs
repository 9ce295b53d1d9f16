//! The host side of the WIT imports. Each function is the same shape: find the caps, run
//! [`InstanceCaps::guarded`] (grant check → audit → backend), convert the answer.

use std::sync::Arc;

use super::HostState;
use super::bindings::upshift::adapter::{db, files, http, log, progress, service, types};
use super::bindings::{CapError as WitCapError, Value};
use crate::caps::limits::{MAX_LOG_LINE, MAX_SQL_BYTES, MAX_STATEMENTS};
use crate::caps::{CapError, Event, InstanceCaps, sql};
use crate::grants::{Access, BindingKind};

type CapResult<T> = wasmtime::Result<Result<T, WitCapError>>;

impl From<CapError> for WitCapError {
    fn from(e: CapError) -> WitCapError {
        match e {
            CapError::Denied(m) => WitCapError::Denied(m),
            CapError::UnknownBinding(m) => WitCapError::UnknownBinding(m),
            CapError::Invalid(m) => WitCapError::Invalid(m),
            CapError::Failed(m) => WitCapError::Failed(m),
        }
    }
}

impl HostState {
    fn caps(&self) -> Result<Arc<InstanceCaps>, WitCapError> {
        self.caps.clone().ok_or_else(|| {
            WitCapError::Denied(
                "no capabilities are available during `describe` and offline planning".into(),
            )
        })
    }
}

fn wit<T>(r: Result<T, CapError>) -> CapResult<T> {
    Ok(r.map_err(WitCapError::from))
}

/// Classify SQL and check its size; the access it needs, or the refusal (audited as denied).
async fn sql_access(
    caps: &InstanceCaps,
    binding: &str,
    operation: &str,
    sql_text: &str,
) -> Result<Access, CapError> {
    let refusal = if sql_text.len() > MAX_SQL_BYTES {
        Some(format!(
            "SQL text of {} bytes exceeds the limit of {MAX_SQL_BYTES}",
            sql_text.len()
        ))
    } else {
        match sql::classify(sql_text) {
            Ok(a) => return Ok(a),
            Err(e) => Some(e.to_string()),
        }
    };
    let reason = refusal.unwrap_or_default();
    caps.record(crate::caps::CallRecord {
        binding,
        capability: "db",
        operation,
        decision: crate::audit::Decision::Denied,
        reason: Some(reason.clone()),
        duration_us: 0,
        result_bytes: 0,
        error: None,
        detail: None,
    })?;
    Err(CapError::Denied(reason))
}

impl types::Host for HostState {}

impl db::Host for HostState {
    async fn query(
        &mut self,
        binding: String,
        sql_text: String,
        params: Vec<Value>,
    ) -> CapResult<db::Rows> {
        let caps = match self.caps() {
            Ok(c) => c,
            Err(e) => return Ok(Err(e)),
        };
        let access = match sql_access(&caps, &binding, "query", &sql_text).await {
            Ok(a) => a,
            Err(e) => return wit(Err(e)),
        };
        let r = if access != Access::Read {
            Err(CapError::Invalid(format!(
                "`query` runs reads only; this statement needs `{access}`, use `execute`"
            )))
        } else {
            caps.guarded(
                BindingKind::Db,
                &binding,
                Access::Read,
                "query",
                Some("read".into()),
                || async {
                    let backend = caps
                        .db
                        .get(&binding)
                        .ok_or_else(|| CapError::Failed("no backend".into()))?;
                    backend.query(&sql_text, &params).await
                },
            )
            .await
        };
        wit(r.map(|rows| db::Rows {
            columns: rows.columns,
            rows: rows.rows,
        }))
    }

    async fn execute(
        &mut self,
        binding: String,
        sql_text: String,
        params: Vec<Value>,
    ) -> CapResult<u64> {
        let caps = match self.caps() {
            Ok(c) => c,
            Err(e) => return Ok(Err(e)),
        };
        let access = match sql_access(&caps, &binding, "execute", &sql_text).await {
            Ok(a) => a,
            Err(e) => return wit(Err(e)),
        };
        let r = caps
            .guarded(
                BindingKind::Db,
                &binding,
                access,
                "execute",
                Some(access.name().into()),
                || async {
                    let backend = caps
                        .db
                        .get(&binding)
                        .ok_or_else(|| CapError::Failed("no backend".into()))?;
                    if access == Access::Read {
                        backend
                            .query(&sql_text, &params)
                            .await
                            .map(|(r, n)| (r.rows.len() as u64, n))
                    } else {
                        backend.execute(&sql_text, &params).await
                    }
                },
            )
            .await;
        wit(r)
    }

    async fn transaction(
        &mut self,
        binding: String,
        statements: Vec<db::Statement>,
    ) -> CapResult<Vec<u64>> {
        let caps = match self.caps() {
            Ok(c) => c,
            Err(e) => return Ok(Err(e)),
        };
        if statements.len() > MAX_STATEMENTS {
            return wit(Err(CapError::Invalid(format!(
                "{} statements exceed the limit of {MAX_STATEMENTS} per transaction",
                statements.len()
            ))));
        }
        let mut needed = Vec::new();
        for s in &statements {
            match sql_access(&caps, &binding, "transaction", &s.sql).await {
                Ok(a) if !needed.contains(&a) => needed.push(a),
                Ok(_) => {}
                Err(e) => return wit(Err(e)),
            }
        }
        for a in &needed {
            if let Err(d) = caps.grants.check(&binding, BindingKind::Db, *a) {
                let r: Result<(), CapError> = caps
                    .guarded(
                        BindingKind::Db,
                        &binding,
                        *a,
                        "transaction",
                        None,
                        || async { Ok(((), 0)) },
                    )
                    .await;
                return wit(r.and(Err(CapError::Denied(d.to_string()))));
            }
        }
        let top = needed.iter().copied().max().unwrap_or(Access::Read);
        let list: Vec<(String, Vec<Value>)> =
            statements.into_iter().map(|s| (s.sql, s.params)).collect();
        let detail = needed
            .iter()
            .map(|a| a.name())
            .collect::<Vec<_>>()
            .join("+");
        let r = caps
            .guarded(
                BindingKind::Db,
                &binding,
                top,
                "transaction",
                Some(detail),
                || async {
                    let backend = caps
                        .db
                        .get(&binding)
                        .ok_or_else(|| CapError::Failed("no backend".into()))?;
                    backend.transaction(&list).await
                },
            )
            .await;
        wit(r)
    }

    async fn table_exists(&mut self, binding: String, table: String) -> CapResult<bool> {
        let caps = match self.caps() {
            Ok(c) => c,
            Err(e) => return Ok(Err(e)),
        };
        let r = caps
            .guarded(
                BindingKind::Db,
                &binding,
                Access::Read,
                "table-exists",
                Some(table.clone()),
                || async {
                    let backend = caps
                        .db
                        .get(&binding)
                        .ok_or_else(|| CapError::Failed("no backend".into()))?;
                    backend.table_exists(&table).await
                },
            )
            .await;
        wit(r)
    }
}

impl files::Host for HostState {
    async fn read(&mut self, binding: String, path: String) -> CapResult<Vec<u8>> {
        let caps = match self.caps() {
            Ok(c) => c,
            Err(e) => return Ok(Err(e)),
        };
        let r = caps
            .guarded(
                BindingKind::Files,
                &binding,
                Access::Read,
                "read",
                Some(path.clone()),
                || async {
                    let b = caps
                        .files
                        .get(&binding)
                        .ok_or_else(|| CapError::Failed("no backend".into()))?;
                    b.read(&path)
                },
            )
            .await;
        wit(r)
    }

    async fn write(&mut self, binding: String, path: String, contents: Vec<u8>) -> CapResult<()> {
        let caps = match self.caps() {
            Ok(c) => c,
            Err(e) => return Ok(Err(e)),
        };
        let r = caps
            .guarded(
                BindingKind::Files,
                &binding,
                Access::Write,
                "write",
                Some(path.clone()),
                || async {
                    let b = caps
                        .files
                        .get(&binding)
                        .ok_or_else(|| CapError::Failed("no backend".into()))?;
                    b.write(&path, &contents)
                },
            )
            .await;
        wit(r)
    }

    async fn list_dir(&mut self, binding: String, path: String) -> CapResult<Vec<files::DirEntry>> {
        let caps = match self.caps() {
            Ok(c) => c,
            Err(e) => return Ok(Err(e)),
        };
        let r = caps
            .guarded(
                BindingKind::Files,
                &binding,
                Access::Read,
                "list",
                Some(path.clone()),
                || async {
                    let b = caps
                        .files
                        .get(&binding)
                        .ok_or_else(|| CapError::Failed("no backend".into()))?;
                    b.list(&path)
                },
            )
            .await;
        wit(r.map(|entries| {
            entries
                .into_iter()
                .map(|e| files::DirEntry {
                    name: e.name,
                    is_dir: e.is_dir,
                    size: e.size,
                })
                .collect()
        }))
    }

    async fn exists(&mut self, binding: String, path: String) -> CapResult<bool> {
        let caps = match self.caps() {
            Ok(c) => c,
            Err(e) => return Ok(Err(e)),
        };
        let r = caps
            .guarded(
                BindingKind::Files,
                &binding,
                Access::Read,
                "exists",
                Some(path.clone()),
                || async {
                    let b = caps
                        .files
                        .get(&binding)
                        .ok_or_else(|| CapError::Failed("no backend".into()))?;
                    b.exists(&path)
                },
            )
            .await;
        wit(r)
    }
}

impl service::Host for HostState {
    async fn inspect(&mut self, binding: String) -> CapResult<service::ServiceStatus> {
        let caps = match self.caps() {
            Ok(c) => c,
            Err(e) => return Ok(Err(e)),
        };
        let r = caps
            .guarded(
                BindingKind::Service,
                &binding,
                Access::Inspect,
                "inspect",
                None,
                || async {
                    let b = caps
                        .services
                        .get(&binding)
                        .ok_or_else(|| CapError::Failed("no backend".into()))?;
                    let s = b.inspect().await?;
                    Ok((s, 64))
                },
            )
            .await;
        wit(r.map(|s| service::ServiceStatus {
            running: s.running,
            version: s.version,
            detail: s.detail,
        }))
    }

    async fn healthy(&mut self, binding: String) -> CapResult<bool> {
        let caps = match self.caps() {
            Ok(c) => c,
            Err(e) => return Ok(Err(e)),
        };
        let r = caps
            .guarded(
                BindingKind::Service,
                &binding,
                Access::Inspect,
                "healthy",
                None,
                || async {
                    let b = caps
                        .services
                        .get(&binding)
                        .ok_or_else(|| CapError::Failed("no backend".into()))?;
                    Ok((b.healthy().await?, 1))
                },
            )
            .await;
        wit(r)
    }
}

impl http::Host for HostState {
    async fn request(
        &mut self,
        binding: String,
        method: String,
        path: String,
        body: Vec<u8>,
    ) -> CapResult<http::Response> {
        let caps = match self.caps() {
            Ok(c) => c,
            Err(e) => return Ok(Err(e)),
        };
        let access = if crate::caps::http::is_read_method(&method) {
            Access::Read
        } else {
            Access::Write
        };
        let detail = format!(
            "{} {}",
            method.to_ascii_uppercase(),
            path.chars().take(200).collect::<String>()
        );
        let r = caps
            .guarded(
                BindingKind::Http,
                &binding,
                access,
                "request",
                Some(detail),
                || async {
                    let b = caps
                        .http
                        .get(&binding)
                        .ok_or_else(|| CapError::Failed("no backend".into()))?;
                    b.request(&method, &path, body).await
                },
            )
            .await;
        wit(r.map(|resp| http::Response {
            status: resp.status,
            body: resp.body,
        }))
    }
}

fn cut(text: &str) -> String {
    if text.len() <= MAX_LOG_LINE {
        return text.to_string();
    }
    let mut end = MAX_LOG_LINE;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes cut)", &text[..end], text.len() - end)
}

impl HostState {
    /// Spend one unit of the per-call log budget; the first message over it audits the flood.
    fn spend_log_budget(&mut self, caps: &InstanceCaps, what: &str) -> bool {
        if self.log_budget > 0 {
            self.log_budget -= 1;
            return true;
        }
        if !self.flood_reported {
            self.flood_reported = true;
            let _ = caps.record(crate::caps::CallRecord {
                binding: "",
                capability: what,
                operation: "write",
                decision: crate::audit::Decision::Denied,
                reason: Some(format!(
                    "more than {} log/progress messages in one call; the rest are dropped",
                    crate::caps::limits::MAX_LOG_PER_CALL
                )),
                duration_us: 0,
                result_bytes: 0,
                error: None,
                detail: None,
            });
        }
        false
    }
}

impl log::Host for HostState {
    async fn write(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        let Some(caps) = self.caps.clone() else {
            return Ok(());
        };
        if !self.spend_log_budget(&caps, "log") {
            return Ok(());
        }
        let level = match level {
            log::Level::Debug => "debug",
            log::Level::Info => "info",
            log::Level::Warn => "warn",
            log::Level::Error => "error",
        };
        caps.events.emit(Event::Log {
            instance: caps.caller.instance.clone(),
            level: level.into(),
            message: cut(&message),
        });
        Ok(())
    }
}

impl progress::Host for HostState {
    async fn report(&mut self, done: u64, total: u64, message: String) -> wasmtime::Result<()> {
        let Some(caps) = self.caps.clone() else {
            return Ok(());
        };
        if !self.spend_log_budget(&caps, "progress") {
            return Ok(());
        }
        caps.events.emit(Event::Progress {
            instance: caps.caller.instance.clone(),
            done,
            total,
            message: cut(&message),
        });
        Ok(())
    }
}
