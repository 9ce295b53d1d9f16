//! Test-only hostile adapters. Each cargo feature is one attack (see `cases.rs`); the suite in
//! `tests/hostile.rs` builds one component per feature, so every case has its own digest.
//!
//! Every case implements [`Case`]; the defaults are well behaved, so a case overrides only the
//! export it abuses. `run-step("benign")` always answers, so a test can show that the same
//! component is still served after its attack; `run-step("attack", payload)` runs [`Case::attack`].

use upshift_adapter_sdk::{
    AdapterError, AdapterInfo, CapError, Check, Detection, Guest, Plan, Refusal, RestoreRequest,
    StepOutput, describe_cap_error, error, refuse,
};

mod cases;

upshift_adapter_sdk::manifest! {
    product: "hostile",
    adapter_version: "0.1.0",
    supported_versions: ">=0.0.0",
    bindings: [
        { name: "meta", kind: db, access: [read], purpose: "read rows", optional: true },
        { name: "spare", kind: db, access: [read], purpose: "never bound by the tests", optional: true },
        { name: "data", kind: files, access: [read, write], purpose: "read and write files", optional: true },
        { name: "app", kind: service, access: [inspect], purpose: "inspect the service", optional: true },
        { name: "api", kind: http, access: [read], purpose: "GET endpoints", optional: true },
        { name: "rw", kind: db, access: [read, write, ddl], purpose: "write and change schema (bound only for db-probe)", optional: true },
        { name: "proc", kind: service, access: [inspect, control, switch_version], purpose: "stop, switch and start a service (tests/hostile_edges.rs)", optional: true },
    ],
}

/// One hostile adapter: each export defaults to good behaviour.
pub trait Case {
    /// `describe`.
    fn describe() -> AdapterInfo {
        manifest()
    }

    /// `detect`.
    fn detect() -> Result<Detection, AdapterError> {
        Ok(Detection {
            version: "1.0.0".into(),
            facts: vec![],
        })
    }

    /// `plan`: an empty plan to the target.
    fn plan(current: Detection, target: String) -> Result<Plan, Refusal> {
        Ok(Plan {
            from_version: current.version,
            to_version: target,
            steps: vec![],
            notes: vec![],
        })
    }

    /// `run-step("attack", payload)`: the attack through the capabilities.
    fn attack(_payload: &str) -> Result<String, CapError> {
        Ok("no attack".into())
    }

    /// `verify`.
    fn verify(_expected: String) -> Result<Vec<Check>, AdapterError> {
        Ok(vec![Check {
            name: "fine".into(),
            passed: true,
            detail: String::new(),
        }])
    }

    /// `plan-restore`.
    fn plan_restore(_request: RestoreRequest) -> Result<Plan, Refusal> {
        Err(refuse("unsupported", "no restores", &[], ""))
    }
}

/// The component's export type.
pub struct Hostile;

impl Guest for Hostile {
    fn describe() -> AdapterInfo {
        <Hostile as Case>::describe()
    }

    fn detect() -> Result<Detection, AdapterError> {
        <Hostile as Case>::detect()
    }

    fn plan(current: Detection, target: String) -> Result<Plan, Refusal> {
        <Hostile as Case>::plan(current, target)
    }

    fn run_step(name: String, payload: String) -> Result<StepOutput, AdapterError> {
        match name.as_str() {
            "benign" => Ok(StepOutput {
                summary: "benign".into(),
            }),
            "attack" => <Hostile as Case>::attack(&payload)
                .map(|summary| StepOutput { summary })
                .map_err(|e| error(describe_cap_error(&e))),
            other => Err(error(format!("unknown step {other}"))),
        }
    }

    fn verify(expected: String) -> Result<Vec<Check>, AdapterError> {
        <Hostile as Case>::verify(expected)
    }

    fn plan_restore(request: RestoreRequest) -> Result<Plan, Refusal> {
        <Hostile as Case>::plan_restore(request)
    }
}

upshift_adapter_sdk::export_adapter!(Hostile);
