//! The host side of the WIT imports. Each function is the same shape: through the tap (see
//! [`super::tap`]), find the caps, run [`InstanceCaps::guarded`] (grant check → audit →
//! backend), convert the answer.

use std::sync::Arc;

use serde_json::json;

use super::HostState;
use super::bindings::upshift::adapter::{db, files, http, log, progress, service, types};
use super::bindings::{CapError as WitCapError, Value};
use super::tap::{ImportCall, Tap, Taped, bytes_to_tape, encode};
use upshift_caps::audit::Decision;
use upshift_caps::db::Engine;
use upshift_caps::limits::{MAX_LOG_LINE, MAX_LOG_PER_CALL, MAX_SQL_BYTES, MAX_STATEMENTS};
use upshift_caps::{CallRecord, CapError, Event, InstanceCaps, sql};
use upshift_model::grants::{Access, BindingKind};

type CapResult<T> = wasmtime::Result<Result<T, WitCapError>>;

impl HostState {
    /// A call's arguments for the tap, built only when the tap is on.
    fn tap_args(&self, args: impl FnOnce() -> serde_json::Value) -> Option<serde_json::Value> {
        self.tap.active().then(args)
    }

    /// Make one import call. Replaying, the tape answers it and nothing else is reached.
    /// Otherwise `f` runs with the instance's caps (grant check → audit → backend; without caps,
    /// during `describe` and offline planning, every call is denied), and a recording tap keeps
    /// the call and the answer the guest gets.
    async fn taped<T: Taped>(
        &mut self,
        interface: &str,
        function: &str,
        binding: &str,
        args: Option<serde_json::Value>,
        f: impl AsyncFnOnce(Arc<InstanceCaps>) -> Result<T, CapError>,
    ) -> CapResult<T> {
        if let Tap::Replay(cursor) = &mut self.tap {
            return cursor.answer(interface, function, args.unwrap_or_default());
        }
        let answer = match self.caps.clone() {
            Some(caps) => f(caps).await.map_err(WitCapError::from),
            None => {
                let reason =
                    "no capabilities are available during `describe`, `plan` and `plan-restore`";
                if let Some(witness) = &self.witness {
                    witness.deny(binding, interface, function, reason);
                }
                Err(WitCapError::Denied(reason.into()))
            }
        };
        if let (Tap::Record(calls), Some(args)) = (&mut self.tap, args) {
            calls.push(ImportCall {
                interface: interface.into(),
                function: function.into(),
                args,
                result: encode(&answer),
            });
        }
        Ok(answer)
    }
}

/// A denial decided before any backend runs, written to the audit log.
fn deny(
    caps: &InstanceCaps,
    binding: &str,
    capability: &str,
    operation: &str,
    reason: String,
) -> CapError {
    let recorded = caps.record(CallRecord {
        binding,
        capability,
        operation,
        decision: Decision::Denied,
        reason: Some(reason.clone()),
        duration_us: 0,
        result_bytes: 0,
        error: None,
        detail: None,
    });
    match recorded {
        Ok(()) => CapError::Denied(reason),
        Err(e) => e,
    }
}

/// The access one SQL statement needs; refusals are audited as denials.
fn sql_access(
    caps: &InstanceCaps,
    binding: &str,
    operation: &str,
    sql_text: &str,
) -> Result<Access, CapError> {
    if sql_text.len() > MAX_SQL_BYTES {
        let reason = format!(
            "SQL text of {} bytes exceeds the limit of {MAX_SQL_BYTES}",
            sql_text.len()
        );
        return Err(deny(caps, binding, "db", operation, reason));
    }
    let engine = caps
        .db
        .get(binding)
        .map_or(Engine::Postgres, |b| b.engine());
    sql::classify_for(engine, sql_text)
        .map_err(|e| deny(caps, binding, "db", operation, e.to_string()))
}

impl types::Host for HostState {}

impl db::Host for HostState {
    async fn query(
        &mut self,
        binding: String,
        sql_text: String,
        params: Vec<Value>,
    ) -> CapResult<db::Rows> {
        let args =
            self.tap_args(|| json!({ "binding": binding, "sql": sql_text, "params": params }));
        self.taped("db", "query", &binding, args, async |caps| {
            let access = sql_access(&caps, &binding, "query", &sql_text)?;
            // KWDB's EXPORT / IMPORT answer with a job row, so they are run through `query`.
            let job = matches!(access, Access::Backup | Access::Restore);
            if access != Access::Read && !job {
                let reason = format!(
                    "`query` runs reads only; this statement needs `{access}`, use `execute`"
                );
                return Err(match deny(&caps, &binding, "db", "query", reason) {
                    CapError::Denied(reason) => CapError::Invalid(reason),
                    audit_failed => audit_failed,
                });
            }
            let rows = caps
                .guarded(
                    BindingKind::Db,
                    &binding,
                    access,
                    "query",
                    Some(access.name().into()),
                    || async {
                        let backend = caps.db_backend(&binding)?;
                        if job {
                            backend.query_job(&sql_text, &params).await
                        } else {
                            backend.query(&sql_text, &params).await
                        }
                    },
                )
                .await?;
            Ok(db::Rows {
                columns: rows.columns,
                rows: rows.rows,
            })
        })
        .await
    }

    async fn execute(
        &mut self,
        binding: String,
        sql_text: String,
        params: Vec<Value>,
    ) -> CapResult<u64> {
        let args =
            self.tap_args(|| json!({ "binding": binding, "sql": sql_text, "params": params }));
        self.taped("db", "execute", &binding, args, async |caps| {
            let access = sql_access(&caps, &binding, "execute", &sql_text)?;
            caps.guarded(
                BindingKind::Db,
                &binding,
                access,
                "execute",
                Some(access.name().into()),
                || async {
                    let backend = caps.db_backend(&binding)?;
                    if access == Access::Read {
                        let (rows, bytes) = backend.query(&sql_text, &params).await?;
                        Ok((rows.rows.len() as u64, bytes))
                    } else {
                        backend.execute(&sql_text, &params).await
                    }
                },
            )
            .await
        })
        .await
    }

    async fn transaction(
        &mut self,
        binding: String,
        statements: Vec<db::Statement>,
    ) -> CapResult<Vec<u64>> {
        let args = self.tap_args(|| json!({ "binding": binding, "statements": statements }));
        self.taped("db", "transaction", &binding, args, async |caps| {
            if statements.len() > MAX_STATEMENTS {
                return Err(CapError::Invalid(format!(
                    "{} statements exceed the limit of {MAX_STATEMENTS} per transaction",
                    statements.len()
                )));
            }
            let mut needed: Vec<Access> = Vec::new();
            for s in &statements {
                let a = sql_access(&caps, &binding, "transaction", &s.sql)?;
                if !needed.contains(&a) {
                    needed.push(a);
                }
            }
            // Every access the batch needs must be granted; the widest one is audited with it.
            for a in &needed {
                if let Err(d) = caps.grants.check(&binding, BindingKind::Db, *a) {
                    return Err(deny(&caps, &binding, "db", "transaction", d.to_string()));
                }
            }
            let widest = needed.iter().copied().max().unwrap_or(Access::Read);
            let detail = needed
                .iter()
                .map(|a| a.name())
                .collect::<Vec<_>>()
                .join("+");
            let list: Vec<(String, Vec<Value>)> =
                statements.into_iter().map(|s| (s.sql, s.params)).collect();
            caps.guarded(
                BindingKind::Db,
                &binding,
                widest,
                "transaction",
                Some(detail),
                || async { caps.db_backend(&binding)?.transaction(&list).await },
            )
            .await
        })
        .await
    }

    async fn table_exists(&mut self, binding: String, table: String) -> CapResult<bool> {
        let args = self.tap_args(|| json!({ "binding": binding, "table": table }));
        self.taped("db", "table-exists", &binding, args, async |caps| {
            caps.guarded(
                BindingKind::Db,
                &binding,
                Access::Read,
                "table-exists",
                Some(table.clone()),
                || async { caps.db_backend(&binding)?.table_exists(&table).await },
            )
            .await
        })
        .await
    }
}

impl files::Host for HostState {
    async fn read(&mut self, binding: String, path: String) -> CapResult<Vec<u8>> {
        let args = self.tap_args(|| json!({ "binding": binding, "path": path }));
        self.taped("files", "read", &binding, args, async |caps| {
            caps.guarded(
                BindingKind::Files,
                &binding,
                Access::Read,
                "read",
                Some(path.clone()),
                || async { caps.files_backend(&binding)?.read(&path) },
            )
            .await
        })
        .await
    }

    async fn write(&mut self, binding: String, path: String, contents: Vec<u8>) -> CapResult<()> {
        let args = self.tap_args(
            || json!({ "binding": binding, "path": path, "contents": bytes_to_tape(&contents) }),
        );
        self.taped("files", "write", &binding, args, async |caps| {
            caps.guarded(
                BindingKind::Files,
                &binding,
                Access::Write,
                "write",
                Some(path.clone()),
                || async { caps.files_backend(&binding)?.write(&path, &contents) },
            )
            .await
        })
        .await
    }

    async fn list_dir(&mut self, binding: String, path: String) -> CapResult<Vec<files::DirEntry>> {
        let args = self.tap_args(|| json!({ "binding": binding, "path": path }));
        self.taped("files", "list-dir", &binding, args, async |caps| {
            let entries = caps
                .guarded(
                    BindingKind::Files,
                    &binding,
                    Access::Read,
                    "list",
                    Some(path.clone()),
                    || async { caps.files_backend(&binding)?.list(&path) },
                )
                .await?;
            Ok(entries
                .into_iter()
                .map(|e| files::DirEntry {
                    name: e.name,
                    is_dir: e.is_dir,
                    size: e.size,
                })
                .collect())
        })
        .await
    }

    async fn exists(&mut self, binding: String, path: String) -> CapResult<bool> {
        let args = self.tap_args(|| json!({ "binding": binding, "path": path }));
        self.taped("files", "exists", &binding, args, async |caps| {
            caps.guarded(
                BindingKind::Files,
                &binding,
                Access::Read,
                "exists",
                Some(path.clone()),
                || async { caps.files_backend(&binding)?.exists(&path) },
            )
            .await
        })
        .await
    }
}

impl service::Host for HostState {
    async fn inspect(&mut self, binding: String) -> CapResult<service::ServiceStatus> {
        let args = self.tap_args(|| json!({ "binding": binding }));
        self.taped("service", "inspect", &binding, args, async |caps| {
            let s = caps
                .guarded(
                    BindingKind::Service,
                    &binding,
                    Access::Inspect,
                    "inspect",
                    None,
                    || async { Ok((caps.service_backend(&binding)?.inspect().await?, 64)) },
                )
                .await?;
            Ok(service::ServiceStatus {
                running: s.running,
                version: s.version,
                detail: s.detail,
            })
        })
        .await
    }

    async fn healthy(&mut self, binding: String) -> CapResult<bool> {
        let args = self.tap_args(|| json!({ "binding": binding }));
        self.taped("service", "healthy", &binding, args, async |caps| {
            caps.guarded(
                BindingKind::Service,
                &binding,
                Access::Inspect,
                "healthy",
                None,
                || async { Ok((caps.service_backend(&binding)?.healthy().await?, 1)) },
            )
            .await
        })
        .await
    }

    async fn image_present(&mut self, binding: String, version: String) -> CapResult<bool> {
        let args = self.tap_args(|| json!({ "binding": binding, "version": version }));
        self.taped("service", "image-present", &binding, args, async |caps| {
            caps.guarded(
                BindingKind::Service,
                &binding,
                Access::Inspect,
                "image-present",
                Some(version.clone()),
                || async {
                    Ok((
                        caps.service_backend(&binding)?
                            .image_present(&version)
                            .await?,
                        1,
                    ))
                },
            )
            .await
        })
        .await
    }

    async fn load_image(
        &mut self,
        binding: String,
        files_binding: String,
        path: String,
    ) -> CapResult<Vec<String>> {
        let args = self.tap_args(
            || json!({ "binding": binding, "files-binding": files_binding, "path": path }),
        );
        self.taped("service", "load-image", &binding, args, async |caps| {
            let file = caps
                .guarded(
                    BindingKind::Files,
                    &files_binding,
                    Access::Read,
                    "open",
                    Some(path.clone()),
                    || async { caps.files_backend(&files_binding)?.open(&path) },
                )
                .await?;
            caps.guarded(
                BindingKind::Service,
                &binding,
                Access::Control,
                "load-image",
                Some(path.clone()),
                || async {
                    let images = caps.service_backend(&binding)?.load_image(file).await?;
                    let bytes = images.iter().map(|i| i.len() as u64).sum();
                    Ok((images, bytes))
                },
            )
            .await
        })
        .await
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
        let args = self.tap_args(|| json!({ "binding": binding, "method": method, "path": path, "body": bytes_to_tape(&body) }));
        self.taped("http", "request", &binding, args, async |caps| {
            let access = if upshift_caps::http::is_read_method(&method) {
                Access::Read
            } else {
                Access::Write
            };
            let detail = format!(
                "{} {}",
                method.to_ascii_uppercase(),
                path.chars().take(200).collect::<String>()
            );
            let resp = caps
                .guarded(
                    BindingKind::Http,
                    &binding,
                    access,
                    "request",
                    Some(detail),
                    || async {
                        caps.http_backend(&binding)?
                            .request(&method, &path, body)
                            .await
                    },
                )
                .await?;
            Ok(http::Response {
                status: resp.status,
                body: resp.body,
            })
        })
        .await
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
            let reason = format!(
                "more than {MAX_LOG_PER_CALL} log/progress messages in one call; the rest are dropped"
            );
            let _ = deny(caps, "", what, "write", reason);
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
