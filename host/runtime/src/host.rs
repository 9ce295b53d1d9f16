//! The host side of the WIT imports. Each function is the same shape: through the tap (see
//! [`super::tap`]), find the caps, call the capability's guarded method (grant check → audit
//! → backend, in `upshift_caps`), convert the answer.

use std::sync::Arc;

use serde_json::json;

use super::HostState;
use super::bindings::upshift::adapter::{db, files, http, log, progress, service, types};
use super::bindings::{CapError as WitCapError, Value};
use super::tap::{ImportCall, Tap, Taped, bytes_to_tape, encode};
use upshift_caps::limits::{MAX_LOG_LINE, MAX_LOG_PER_CALL};
use upshift_caps::{CapError, Event, InstanceCaps, Operation};

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
        operation: Operation,
        binding: &str,
        args: Option<serde_json::Value>,
        f: impl AsyncFnOnce(Arc<InstanceCaps>) -> Result<T, CapError>,
    ) -> CapResult<T> {
        if let Tap::Replay(cursor) = &mut self.tap {
            return cursor.answer(interface, operation.name(), args.unwrap_or_default());
        }
        let answer = match self.caps.clone() {
            Some(caps) => f(caps).await.map_err(WitCapError::from),
            None => {
                let reason =
                    "no capabilities are available during `describe`, `plan` and `plan-restore`";
                if let Some(witness) = &self.witness {
                    let _ = witness.deny(binding, interface, operation, reason);
                }
                Err(WitCapError::Denied(reason.into()))
            }
        };
        if let (Tap::Record(calls), Some(args)) = (&mut self.tap, args) {
            calls.push(ImportCall {
                interface: interface.into(),
                function: operation.name().into(),
                args,
                result: encode(&answer),
            });
        }
        Ok(answer)
    }
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
        self.taped("db", Operation::Query, &binding, args, async |caps| {
            let rows = caps.db().query(&binding, &sql_text, &params).await?;
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
        self.taped("db", Operation::Execute, &binding, args, async |caps| {
            caps.db().execute(&binding, &sql_text, &params).await
        })
        .await
    }

    async fn transaction(
        &mut self,
        binding: String,
        statements: Vec<db::Statement>,
    ) -> CapResult<Vec<u64>> {
        let args = self.tap_args(|| json!({ "binding": binding, "statements": statements }));
        self.taped("db", Operation::Transaction, &binding, args, async |caps| {
            let list: Vec<(String, Vec<Value>)> =
                statements.into_iter().map(|s| (s.sql, s.params)).collect();
            caps.db().transaction(&binding, &list).await
        })
        .await
    }

    async fn table_exists(&mut self, binding: String, table: String) -> CapResult<bool> {
        let args = self.tap_args(|| json!({ "binding": binding, "table": table }));
        self.taped("db", Operation::TableExists, &binding, args, async |caps| {
            caps.db().table_exists(&binding, &table).await
        })
        .await
    }
}

impl files::Host for HostState {
    async fn read(&mut self, binding: String, path: String) -> CapResult<Vec<u8>> {
        let args = self.tap_args(|| json!({ "binding": binding, "path": path }));
        self.taped("files", Operation::Read, &binding, args, async |caps| {
            caps.files().read(&binding, &path).await
        })
        .await
    }

    async fn write(&mut self, binding: String, path: String, contents: Vec<u8>) -> CapResult<()> {
        let args = self.tap_args(
            || json!({ "binding": binding, "path": path, "contents": bytes_to_tape(&contents) }),
        );
        self.taped("files", Operation::Write, &binding, args, async |caps| {
            caps.files().write(&binding, &path, contents).await
        })
        .await
    }

    async fn list_dir(&mut self, binding: String, path: String) -> CapResult<Vec<files::DirEntry>> {
        let args = self.tap_args(|| json!({ "binding": binding, "path": path }));
        self.taped("files", Operation::ListDir, &binding, args, async |caps| {
            let entries = caps.files().list_dir(&binding, &path).await?;
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
        self.taped("files", Operation::Exists, &binding, args, async |caps| {
            caps.files().exists(&binding, &path).await
        })
        .await
    }
}

impl service::Host for HostState {
    async fn inspect(&mut self, binding: String) -> CapResult<service::ServiceStatus> {
        let args = self.tap_args(|| json!({ "binding": binding }));
        self.taped(
            "service",
            Operation::Inspect,
            &binding,
            args,
            async |caps| {
                let s = caps.service().inspect(&binding, None).await?;
                Ok(service::ServiceStatus {
                    running: s.running,
                    version: s.version,
                    detail: s.detail,
                })
            },
        )
        .await
    }

    async fn healthy(&mut self, binding: String) -> CapResult<bool> {
        let args = self.tap_args(|| json!({ "binding": binding }));
        self.taped(
            "service",
            Operation::Healthy,
            &binding,
            args,
            async |caps| caps.service().healthy(&binding, None).await,
        )
        .await
    }

    async fn image_present(&mut self, binding: String, version: String) -> CapResult<bool> {
        let args = self.tap_args(|| json!({ "binding": binding, "version": version }));
        self.taped(
            "service",
            Operation::ImagePresent,
            &binding,
            args,
            async |caps| caps.service().image_present(&binding, &version).await,
        )
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
        self.taped(
            "service",
            Operation::LoadImage,
            &binding,
            args,
            async |caps| {
                caps.service()
                    .load_image(&binding, caps.files(), &files_binding, &path)
                    .await
            },
        )
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
        self.taped("http", Operation::Request, &binding, args, async |caps| {
            let resp = caps.http().request(&binding, &method, &path, body).await?;
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
    fn spend_log_budget(&mut self, caps: &InstanceCaps, what: Operation) -> bool {
        if self.log_budget > 0 {
            self.log_budget -= 1;
            return true;
        }
        if !self.flood_reported {
            self.flood_reported = true;
            let reason = format!(
                "more than {MAX_LOG_PER_CALL} log/progress messages in one call; the rest are dropped"
            );
            let _ = caps.deny_flood(what, reason);
        }
        false
    }
}

impl log::Host for HostState {
    async fn write(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        let Some(caps) = self.caps.clone() else {
            return Ok(());
        };
        if !self.spend_log_budget(&caps, Operation::LogWrite) {
            return Ok(());
        }
        let level = match level {
            log::Level::Debug => "debug",
            log::Level::Info => "info",
            log::Level::Warn => "warn",
            log::Level::Error => "error",
        };
        caps.events.emit(Event::Log {
            instance: caps.caller().instance.clone(),
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
        if !self.spend_log_budget(&caps, Operation::ProgressReport) {
            return Ok(());
        }
        caps.events.emit(Event::Progress {
            instance: caps.caller().instance.clone(),
            done,
            total,
            message: cut(&message),
        });
        Ok(())
    }
}
