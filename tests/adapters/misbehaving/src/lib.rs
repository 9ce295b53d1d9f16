//! A test-only adapter that misbehaves on request, to prove the sandbox holds.
//!
//! `plan(target)` chooses a behaviour: `loop` spins forever, `bomb` allocates until the memory
//! limit, `huge` returns a plan of 100,000 steps, `panic` panics, `recurse` recurses without
//! end, `calls:N` (or the product version `N.0.0-calls`) makes N `files::exists` calls (denied without capabilities; the benchmarks
//! divide by N to get one guest → host round trip), and a target `V-cheap` is a cheap upgrade of
//! process service `app` to version `V-cheap` (snapshot `data`, stop, switch, start, wait
//! healthy; `verify` inspects `app`), which the fleet-apply benchmark runs. `run-step(name)` makes one capability call (`db-read`, `db-write`, `db-ddl`,
//! `files-read`, `files-write`, `service-inspect`, `image-present`, `service-load`, `http-get`,
//! `http-post`, `undeclared`; the payload is the step's argument) and
//! reports the host's answer in its summary, so tests can check grants and denials.

use upshift_adapter_sdk::{
    AdapterError, AdapterInfo, Check, Detection, Guest, Plan, Refusal, RestoreRequest, StepOutput,
    db, describe_cap_error, error, files, http, live::check, log, refuse, service, steps,
};

upshift_adapter_sdk::manifest! {
    product: "misbehaving",
    adapter_version: "0.1.0",
    supported_versions: ">=0.0.0",
    bindings: [
        { name: "meta", kind: db, access: [read, write], purpose: "read and write test rows", optional: true },
        { name: "data", kind: files, access: [read, snapshot, restore], purpose: "read files; the host snapshots and restores them", optional: true },
        { name: "app", kind: service, access: [inspect, control, switch_version], purpose: "inspect, control and switch the service, and load its images", optional: true },
        { name: "api", kind: http, access: [read], purpose: "GET endpoints", optional: true },
    ],
}

struct Misbehaving;

#[allow(unconditional_recursion, clippy::only_used_in_recursion)]
fn recurse(depth: u64) -> u64 {
    std::hint::black_box(recurse(depth + 1)) + 1
}

fn answer<T: std::fmt::Debug>(r: Result<T, upshift_adapter_sdk::CapError>) -> String {
    match r {
        Ok(v) => format!("ok: {v:?}"),
        Err(e) => format!("error: {}", describe_cap_error(&e)),
    }
}

impl Guest for Misbehaving {
    fn describe() -> AdapterInfo {
        manifest()
    }

    fn detect() -> Result<Detection, AdapterError> {
        Ok(Detection {
            version: "1.0.0".into(),
            facts: vec![],
        })
    }

    fn plan(current: Detection, target: String) -> Result<Plan, Refusal> {
        match target.as_str() {
            "loop" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "bomb" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "recurse" => Err(refuse("never", recurse(0).to_string(), &[], "")),
            "huge" => Ok(Plan {
                from_version: current.version,
                to_version: target.clone(),
                steps: (0..100_000)
                    .map(|i| steps::custom(&format!("s{i}"), "noop", "", false, "a step"))
                    .collect(),
                notes: vec![],
            }),
            "panic" => panic!("the adapter panicked on purpose"),
            "flood" => {
                for i in 0..5_000 {
                    log::write(log::Level::Info, &format!("flood line {i}"));
                }
                Err(refuse("flood", "flooded", &[], ""))
            }
            calls if calls.starts_with("calls:") || calls.ends_with("-calls") => {
                let n: u64 = calls
                    .strip_prefix("calls:")
                    .or_else(|| calls.split('.').next())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                let denied = (0..n)
                    .filter(|_| files::exists("data", "probe").is_err())
                    .count();
                Ok(Plan {
                    from_version: current.version,
                    to_version: target,
                    steps: vec![],
                    notes: vec![format!("{denied} of {n} calls denied")],
                })
            }
            cheap if cheap.ends_with("-cheap") => Ok(Plan {
                from_version: current.version,
                to_version: target.clone(),
                steps: vec![
                    steps::files_snapshot("snapshot", "data", "snapshot the data directory"),
                    steps::service_stop("stop", "app", "stop the app"),
                    steps::service_switch("switch", "app", &target, "switch the app"),
                    steps::service_start("start", "app", "start the app"),
                    steps::wait_healthy("healthy", "app", 10_000, "wait for the app"),
                ],
                notes: vec![],
            }),
            _ => Ok(Plan {
                from_version: current.version,
                to_version: target,
                steps: vec![],
                notes: vec![],
            }),
        }
    }

    fn run_step(name: String, payload: String) -> Result<StepOutput, AdapterError> {
        let summary = match name.as_str() {
            "db-read" => answer(db::query("meta", "SELECT 1 AS one", &[]).map(|r| r.rows.len())),
            "db-write" => answer(db::execute("meta", "DELETE FROM principal", &[])),
            "db-ddl" => answer(db::execute("meta", "DROP TABLE principal", &[])),
            "db-outside" => answer(
                db::query("meta", "SELECT pg_read_file('/etc/passwd')", &[]).map(|r| r.rows.len()),
            ),
            "files-read" => answer(files::read("data", "hello.txt").map(|b| b.len())),
            "files-write" => answer(files::write("data", "hello.txt", b"overwritten")),
            "files-escape" => answer(files::read("data", "../outside.txt").map(|b| b.len())),
            "service-inspect" => answer(service::inspect("app").map(|s| s.running)),
            "image-present" => answer(service::image_present("app", &payload)),
            "service-load" => answer(service::load_image("app", "data", &payload)),
            "http-get" => answer(http::request("api", "GET", "/healthz", &[]).map(|r| r.status)),
            "http-post" => answer(http::request("api", "POST", "/healthz", &[]).map(|r| r.status)),
            "undeclared" => answer(db::query("other", "SELECT 1", &[]).map(|r| r.rows.len())),
            other => return Err(error(format!("unknown step {other}"))),
        };
        Ok(StepOutput { summary })
    }

    fn verify(expected: String) -> Result<Vec<Check>, AdapterError> {
        if !expected.ends_with("-cheap") {
            return Ok(vec![]);
        }
        let app = service::inspect("app").map_err(|e| error(describe_cap_error(&e)))?;
        Ok(vec![check(
            "app runs the target",
            app.running && app.version == expected,
            format!("running: {}, version {}", app.running, app.version),
        )])
    }

    fn plan_restore(_request: RestoreRequest) -> Result<Plan, Refusal> {
        Err(refuse("unsupported", "no restores", &[], ""))
    }
}

upshift_adapter_sdk::export_adapter!(Misbehaving);
