//! The adapter's exports as typed calls, each with its deadline. With an observer set (see
//! [`Runtime::set_observer`]) every call is shown to it: its arguments, the imports it made
//! and their answers, and its result.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use wasmtime::Store;

use super::bindings::{
    Adapter, AdapterError, Check, Detection, Plan, Refusal, RestoreRequest, StepOutput,
};
use super::tap::{Cursor, ImportCall, Tap};
use super::{AdapterFault, Deadlines, HostState, LoadedAdapter, Runtime};
use upshift_caps::InstanceCaps;

/// One export call as it happened: its arguments, the imports it made with the host's answers,
/// and its result or fault (what a tape stores).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExportRecord {
    /// The export and its arguments (`"export"`, `"args"`).
    #[serde(flatten)]
    pub call: ExportCall,
    /// The imports it made, in order, with the host's answers.
    #[serde(default)]
    pub calls: Vec<ImportCall>,
    /// What it returned (`{"Ok": …}` / `{"Err": …}`), unless it faulted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// Why the sandbox stopped it, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<String>,
}

/// Sees every export call the runtime makes, once it has returned. The runtime owns this seam;
/// recording a tape (`--record`) is one observer.
pub trait ExportObserver: Send + Sync {
    /// `record` was just made on `adapter`.
    fn export_finished(&self, adapter: &LoadedAdapter, record: ExportRecord);
}

/// One export call with its arguments, as it goes on the tape.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "export", content = "args", rename_all = "kebab-case")]
pub enum ExportCall {
    /// `detect()`.
    Detect,
    /// `plan(current, target)`.
    Plan {
        /// What detection found.
        current: Detection,
        /// The target version.
        target: String,
    },
    /// `run-step(name, payload)`.
    RunStep {
        /// The custom step's name.
        name: String,
        /// Its payload.
        payload: String,
    },
    /// `verify(expected)`.
    Verify {
        /// The version expected to run.
        expected: String,
    },
    /// `plan-restore(request)`.
    PlanRestore {
        /// The restore asked for.
        request: RestoreRequest,
    },
}

impl ExportCall {
    /// The export's WIT name.
    pub fn name(&self) -> &'static str {
        match self {
            ExportCall::Detect => "detect",
            ExportCall::Plan { .. } => "plan",
            ExportCall::RunStep { .. } => "run-step",
            ExportCall::Verify { .. } => "verify",
            ExportCall::PlanRestore { .. } => "plan-restore",
        }
    }

    /// Whether the export may call imports (and so gets the live deadline).
    pub fn is_live(&self) -> bool {
        matches!(
            self,
            ExportCall::Detect | ExportCall::RunStep { .. } | ExportCall::Verify { .. }
        )
    }

    /// The call as a budget fault names it: "step `migrate`" for a custom step, else the
    /// export.
    fn subject(&self) -> String {
        match self {
            ExportCall::RunStep { name, .. } => format!("step `{name}`"),
            other => format!("`{}`", other.name()),
        }
    }

    fn deadline(&self, d: Deadlines) -> std::time::Duration {
        if self.is_live() { d.live } else { d.pure }
    }
}

type Outcome<T, E> = Result<Result<T, E>, AdapterFault>;

impl Runtime {
    /// Call `detect`.
    pub async fn detect(
        &self,
        adapter: &LoadedAdapter,
        caps: Arc<InstanceCaps>,
    ) -> Outcome<Detection, AdapterError> {
        self.export(
            adapter,
            Some(caps),
            || ExportCall::Detect,
            async |a, s| a.call_detect(s).await,
        )
        .await
    }

    /// Call `plan` (pure: no capabilities).
    pub async fn plan(
        &self,
        adapter: &LoadedAdapter,
        current: &Detection,
        target: &str,
    ) -> Outcome<Plan, Refusal> {
        let record = || ExportCall::Plan {
            current: current.clone(),
            target: target.to_string(),
        };
        self.export(adapter, None, record, async |a, s| {
            a.call_plan(s, current, target).await
        })
        .await
    }

    /// Call `run-step`.
    pub async fn run_step(
        &self,
        adapter: &LoadedAdapter,
        caps: Arc<InstanceCaps>,
        name: &str,
        payload: &str,
    ) -> Outcome<StepOutput, AdapterError> {
        let record = || ExportCall::RunStep {
            name: name.to_string(),
            payload: payload.to_string(),
        };
        self.export(adapter, Some(caps), record, async |a, s| {
            a.call_run_step(s, name, payload).await
        })
        .await
    }

    /// Call `verify`.
    pub async fn verify(
        &self,
        adapter: &LoadedAdapter,
        caps: Arc<InstanceCaps>,
        expected: &str,
    ) -> Outcome<Vec<Check>, AdapterError> {
        let record = || ExportCall::Verify {
            expected: expected.to_string(),
        };
        self.export(adapter, Some(caps), record, async |a, s| {
            a.call_verify(s, expected).await
        })
        .await
    }

    /// Call `plan-restore` (pure: no capabilities).
    pub async fn plan_restore(
        &self,
        adapter: &LoadedAdapter,
        request: &RestoreRequest,
    ) -> Outcome<Plan, Refusal> {
        let record = || ExportCall::PlanRestore {
            request: request.clone(),
        };
        self.export(adapter, None, record, async |a, s| {
            a.call_plan_restore(s, request).await
        })
        .await
    }

    /// Run an export, seen by the observer when one is set.
    async fn export<R: Serialize>(
        &self,
        adapter: &LoadedAdapter,
        caps: Option<Arc<InstanceCaps>>,
        record: impl FnOnce() -> ExportCall,
        call: impl AsyncFnOnce(&Adapter, &mut Store<HostState>) -> wasmtime::Result<R>,
    ) -> Result<R, AdapterFault> {
        let export = record();
        let deadline = export.deadline(self.deadlines);
        let subject = export.subject();
        let Some(observer) = &self.observer else {
            return self
                .call_as(
                    adapter,
                    caps,
                    Tap::Off,
                    export.name(),
                    &subject,
                    deadline,
                    call,
                )
                .await
                .0;
        };
        let (outcome, tap) = self
            .call_as(
                adapter,
                caps,
                Tap::Record(Vec::new()),
                export.name(),
                &subject,
                deadline,
                call,
            )
            .await;
        let calls = match tap {
            Tap::Record(calls) => calls,
            _ => Vec::new(),
        };
        let (result, fault) = match &outcome {
            Ok(r) => (Some(to_json(r)), None),
            Err(f) => (None, Some(f.reason.clone())),
        };
        observer.export_finished(
            adapter,
            ExportRecord {
                call: export,
                calls,
                result,
                fault,
            },
        );
        outcome
    }

    /// Replay one recorded export with no capabilities: its imports are answered by `cursor`.
    /// The result comes back as the tape's JSON, with the cursor.
    pub async fn replay(
        &self,
        adapter: &LoadedAdapter,
        export: &ExportCall,
        cursor: Cursor,
    ) -> (Result<Value, AdapterFault>, Cursor) {
        let tap = Tap::Replay(cursor);
        let (name, deadline) = (export.name(), export.deadline(self.deadlines));
        let (outcome, tap) = match export {
            ExportCall::Detect => {
                let (r, t) = self
                    .call_tapped(adapter, None, tap, name, deadline, async |a, s| {
                        a.call_detect(s).await
                    })
                    .await;
                (r.map(|r| to_json(&r)), t)
            }
            ExportCall::Plan { current, target } => {
                let (r, t) = self
                    .call_tapped(adapter, None, tap, name, deadline, async |a, s| {
                        a.call_plan(s, current, target).await
                    })
                    .await;
                (r.map(|r| to_json(&r)), t)
            }
            ExportCall::RunStep {
                name: step,
                payload,
            } => {
                let (r, t) = self
                    .call_tapped(adapter, None, tap, name, deadline, async |a, s| {
                        a.call_run_step(s, step, payload).await
                    })
                    .await;
                (r.map(|r| to_json(&r)), t)
            }
            ExportCall::Verify { expected } => {
                let (r, t) = self
                    .call_tapped(adapter, None, tap, name, deadline, async |a, s| {
                        a.call_verify(s, expected).await
                    })
                    .await;
                (r.map(|r| to_json(&r)), t)
            }
            ExportCall::PlanRestore { request } => {
                let (r, t) = self
                    .call_tapped(adapter, None, tap, name, deadline, async |a, s| {
                        a.call_plan_restore(s, request).await
                    })
                    .await;
                (r.map(|r| to_json(&r)), t)
            }
        };
        let cursor = match tap {
            Tap::Replay(c) => c,
            _ => Cursor::default(),
        };
        (outcome, cursor)
    }
}

fn to_json<R: Serialize>(r: &R) -> Value {
    serde_json::to_value(r).unwrap_or(Value::Null)
}
