//! The hostile-adapter suite: dozens of malicious adapters, each a real component built from
//! tests/adapters/hostile with one cargo feature, run one after another by one host. Each must
//! end in a clear error blamed on the adapter, leave a denied audit record, and leave a host
//! that goes on serving the next adapter. The cases are listed in docs/hostile-adapters.md.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use upshift::audit::{AuditRecord, Decision};
use upshift::caps::{Event, EventSink, InstanceCaps};
use upshift::fleet::Fleet;
use upshift::ops::{OpError, Session, apply};
use upshift::runtime::bindings::{BackupInfo, BackupMethod, Detection, RestoreRequest};
use upshift::runtime::{Deadlines, LoadedAdapter};

/// How a case is driven.
#[derive(Clone, Copy)]
enum Act {
    /// Load the adapter (`describe` and the manifest check).
    Load,
    /// `upshift plan INSTANCE --to 2.0.0`: detect, plan, validate, check grants.
    Plan,
    /// Call one export directly, with the instance's capabilities.
    Export(&'static str),
    /// Run the plan step `custom(attack, payload)`; the payload names a fixture.
    Step(Payload),
}

/// What the test hands the attack as its payload.
#[derive(Clone, Copy)]
enum Payload {
    None,
    /// An absolute path outside the bound directory.
    OutsideFile,
    /// The port of a loopback server that must never be reached.
    ForbiddenPort,
}

/// One hostile adapter: its cargo feature, what it does, how it is driven, the fragment the
/// error must contain, and the fragment of the reason of its denied audit record.
struct Case {
    feature: &'static str,
    does: &'static str,
    act: Act,
    error: &'static str,
    audited: &'static str,
}

const fn case(
    feature: &'static str,
    does: &'static str,
    act: Act,
    error: &'static str,
    audited: &'static str,
) -> Case {
    Case {
        feature,
        does,
        act,
        error,
        audited,
    }
}

const DEADLINE: &str = "ran longer than its deadline";
const PANIC: &str = "it panicked";
const PURE: &str = "no capabilities are available during `describe`, `plan` and `plan-restore`";
const FLOOD: &str = "more than 1000 log/progress messages in one call";

use Act::{Export, Load, Plan, Step};
use Payload::{ForbiddenPort, None as NoPayload, OutsideFile};

/// Every case, in the order the host meets them: feature, what it does, how it is driven, the
/// error fragment, the audit fragment.
#[rustfmt::skip]
const CASES: &[Case] = &[
    // The sandbox: time, memory, stack, panics, traps, handles.
    case("spin-loop", "loops forever in `plan`", Plan, DEADLINE, DEADLINE),
    case("memory-bomb", "allocates until it dies in `plan`", Plan, "memory limit of 64 MiB", "memory limit"),
    case("deep-recursion", "recurses without end in `plan`", Plan, "overflowed its stack", "stack"),
    case("panic-describe", "panics in `describe`", Load, "describe panicked on purpose", PANIC),
    case("trap-every-export", "panics in `detect`", Export("detect"), "detect panicked on purpose", PANIC),
    case("trap-every-export", "panics in `plan`", Export("plan"), "plan panicked on purpose", PANIC),
    case("trap-every-export", "panics in `run-step`", Step(NoPayload), "run-step panicked on purpose", PANIC),
    case("trap-every-export", "panics in `verify`", Export("verify"), "verify panicked on purpose", PANIC),
    case("trap-every-export", "reads far out of bounds in `plan-restore`", Export("plan-restore"), "out of bounds", "out of bounds"),
    case("resource-hog", "takes a million WASI stream handles and keeps them", Step(NoPayload), "more resource handles than an instance may", "more resource handles"),
    // The contract: describe and plans.
    case("lying-describe", "claims `ddl` in `describe` that its manifest does not", Load, "the adapter is lying about what it needs", "does not match the embedded manifest"),
    case("plan-uses-caps", "reads a file from the pure `plan`", Plan, PURE, PURE),
    case("plan-100k-steps", "returns a plan of 100,000 steps", Plan, "100000 steps, more than the limit of 500", "100000 steps"),
    case("plan-cycle", "repeats a step id (a cycle)", Plan, "step id `a` is used twice", "used twice"),
    case("plan-bad-step-id", "names a step `../../etc/passwd`", Plan, "ids are letters, digits", "ids are letters"),
    case("plan-huge-text", "gives a step a 1 MiB title", Plan, "over the limit of 16384", "over the limit of 16384"),
    case("plan-ungranted-backup", "plans a dump of a database it may only read", Plan, "needs `backup` on db binding `meta`", "not granted `backup`"),
    case("plan-wrong-kind", "plans to stop its database as if a service", Plan, "needs `control` on service binding `meta`", "is a db binding, not service"),
    case("plan-switch-uninspected", "plans a version switch of a service it may only inspect", Plan, "needs `switch-version` on service binding `app`", "not granted `switch-version`"),
    case("huge-refusal", "refuses with a 20 MiB reason", Plan, "a refusal text field is 20971520 bytes", "refusal text field"),
    case("huge-summary", "answers a step with a 20 MiB summary", Step(NoPayload), "20971520 bytes of text, over the limit", "20971520 bytes"),
    // Floods: the step goes on; the operator gets the first 1,000 messages, the audit one denial.
    case("log-flood", "writes 20,000 log lines of 64 KiB", Step(NoPayload), "ok: flooded the log", FLOOD),
    case("progress-flood", "reports progress 20,000 times with 64 KiB messages", Step(NoPayload), "ok: flooded the progress bar", FLOOD),
    // Volume: a million host calls in one step are stopped by the step's budget, audited once.
    case("call-flood", "checks that a file exists a million times in one step", Step(NoPayload), "more than 10000 host calls in step `attack`", "more than 10000 host calls in step `attack`"),
    // Files.
    case("path-dotdot", "reads `sub/../../secret.txt`", Step(NoPayload), "the path leaves the bound directory", "leaves the bound directory"),
    case("path-absolute", "reads an absolute path", Step(OutsideFile), "is absolute; paths are relative to the bound directory", "is absolute"),
    case("symlink-read", "reads through a symlink inside the directory that points outside", Step(NoPayload), "leaves the bound directory", "leaves the bound directory"),
    case("symlink-write", "writes through that symlink", Step(NoPayload), "not granted `write`", "not granted `write`"),
    // Bindings.
    case("ungranted-binding", "queries a binding it never declared", Step(NoPayload), "binding `admin` is not declared by the adapter", "not declared"),
    case("unbound-binding", "queries a declared binding the operator left unbound", Step(NoPayload), "binding `spare` is not bound for this instance", "not bound"),
    // A read-only database, widened.
    case("ddl-on-read", "drops a table on a read-only binding", Step(NoPayload), "binding `meta` is not granted `ddl` (granted: read)", "not granted `ddl`"),
    case("write-in-cte", "deletes inside a CTE through `query`", Step(NoPayload), "`query` runs reads only; this statement needs `write`", "`query` runs reads only"),
    case("dblink", "reaches another database with `dblink`", Step(NoPayload), "function `dblink` is not allowed", "dblink"),
    case("connect-trick", "sends `\\connect postgres`", Step(NoPayload), "cannot parse the SQL", "cannot parse the SQL"),
    case("set-role", "sends `SET ROLE postgres`", Step(NoPayload), "`SET ROLE` statements are not allowed", "`SET ROLE` statements are not allowed"),
    case("create-database", "creates another database", Step(NoPayload), "`CREATE DATABASE` statements are not allowed", "`CREATE DATABASE` statements are not allowed"),
    case("set-config", "turns off read-only with `set_config`", Step(NoPayload), "function `set_config` is not allowed", "set_config"),
    case("nextval-read-only", "advances a sequence from a read", Step(NoPayload), "function `nextval` (pg_catalog.nextval) is volatile", "function `nextval` (pg_catalog.nextval) is volatile"),
    // HTTP.
    case("http-other-host", "requests `//127.0.0.1:OTHER/steal`", Step(ForbiddenPort), "is not a path under the bound URL", "is not a path under the bound URL"),
    case("http-absolute-url", "requests `http://127.0.0.1:OTHER/steal`", Step(ForbiddenPort), "is not a path under the bound URL", "is not a path under the bound URL"),
    case("http-redirect", "gets a 302 to another host (not followed) and follows it by hand", Step(NoPayload), "/stolen` is not a path under the bound URL", "/stolen` is not a path under the bound URL"),
    case("http-write-on-read", "sends DELETE on a read-only binding", Step(NoPayload), "binding `api` is not granted `write`", "not granted `write`"),
];

/// The hostile components, built once per test process: feature → wasm file.
fn components() -> &'static Result<PathBuf, String> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT.get_or_init(|| {
        let mut features: Vec<&str> = CASES.iter().map(|c| c.feature).collect();
        features.dedup();
        let mut dir = None;
        for feature in features {
            let built = common::hostile::component("hostile", feature)?;
            dir = built.parent().map(Path::to_path_buf);
        }
        dir.ok_or_else(|| "no hostile cases".to_string())
    })
}

/// A loopback server answering `200 OK`, and `302` to `/redirect` (its body and `Location`
/// naming `elsewhere`).
fn api_server(elsewhere: u16) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 4096];
            let n = stream.read(&mut buf).unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]);
            let reply = if request.starts_with("GET /redirect ") {
                let to = format!("http://127.0.0.1:{elsewhere}/stolen");
                format!(
                    "HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{to}",
                    to.len()
                )
            } else {
                "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nOK".into()
            };
            let _ = stream.write_all(reply.as_bytes());
        }
    });
    port
}

/// A loopback port that counts the connections it gets (there must be none).
fn forbidden_server(hits: Arc<AtomicUsize>) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            hits.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    port
}

/// The fixture every case runs against.
struct World {
    env: common::Env,
    fleet: Fleet,
    db_url: String,
    outside: PathBuf,
    forbidden_port: u16,
    forbidden_hits: Arc<AtomicUsize>,
}

async fn world(pg: &common::Pg, built: &Path) -> World {
    let (_, db_url) = pg.fresh_db_as("hostile", "").await;
    common::connect(&db_url)
        .await
        .batch_execute(
            "CREATE TABLE victims (id serial PRIMARY KEY, name text);
             INSERT INTO victims (name) VALUES ('a'), ('b'), ('c');",
        )
        .await
        .expect("seed");
    let env = common::Env::new();
    let data = env.dir.path().join("data-dir");
    let outside = env.dir.path().join("outside");
    std::fs::create_dir_all(data.join("sub")).expect("mkdir");
    std::fs::create_dir_all(&outside).expect("mkdir");
    std::fs::write(env.dir.path().join("secret.txt"), b"secret").expect("write");
    std::fs::write(outside.join("secret.txt"), b"secret").expect("write");
    std::os::unix::fs::symlink(&outside, data.join("link")).expect("symlink");
    let forbidden_hits = Arc::new(AtomicUsize::new(0));
    let forbidden_port = forbidden_server(forbidden_hits.clone());
    let api = api_server(forbidden_port);
    let mut text = String::new();
    let mut features: Vec<&str> = CASES.iter().map(|c| c.feature).collect();
    features.dedup();
    for feature in features {
        text.push_str(&format!(
            r#"
[[instance]]
name = "{feature}"
adapter = "{adapter}"

[instance.db.meta]
url = "{db_url}"
access = ["read"]

[instance.files.data]
path = "{data}"
access = ["read"]

[instance.service.app]
kind = "process"
command = "/usr/bin/env APP_VERSION={{version}} sleep 30"
version = "1.0.0"

[instance.http.api]
url = "http://127.0.0.1:{api}"
"#,
            adapter = built.join(format!("{feature}.wasm")).display(),
            data = data.display(),
        ));
    }
    env.write_fleet(&text);
    let fleet = Fleet::load(&env.fleet()).expect("fleet");
    World {
        env,
        fleet,
        db_url,
        outside,
        forbidden_port,
        forbidden_hits,
    }
}

/// Run one export of a loaded adapter with the instance's caps; the fault or answer as text.
async fn export(
    session: &Session,
    adapter: &LoadedAdapter,
    caps: &Arc<InstanceCaps>,
    name: &str,
) -> String {
    let rt = &session.runtime;
    let caps = Some(caps.clone());
    let detection = Detection {
        version: "1.0.0".into(),
        facts: vec![],
    };
    let request = RestoreRequest {
        backup: BackupInfo {
            id: "b1".into(),
            binding: "meta".into(),
            product_version: "1.0.0".into(),
            method: BackupMethod::Dump,
        },
        current_version: None,
        into: None,
    };
    let live = rt.deadlines().live;
    let answer = match name {
        "detect" => rt
            .call(adapter, caps, name, live, async |a, s| {
                a.call_detect(s).await
            })
            .await
            .map(|r| format!("{r:?}")),
        "plan" => rt
            .call(adapter, caps, name, live, async |a, s| {
                a.call_plan(s, &detection, "2.0.0").await
            })
            .await
            .map(|r| format!("{r:?}")),
        "verify" => rt
            .call(adapter, caps, name, live, async |a, s| {
                a.call_verify(s, "2.0.0").await
            })
            .await
            .map(|r| format!("{r:?}")),
        "plan-restore" => rt
            .call(adapter, caps, name, live, async |a, s| {
                a.call_plan_restore(s, &request).await
            })
            .await
            .map(|r| format!("{r:?}")),
        other => panic!("no export {other}"),
    };
    match answer {
        Ok(text) => format!("ok: {text}"),
        Err(fault) => fault.to_string(),
    }
}

/// The custom step `name` with `payload` in run `run_id`, as a run performs it: the error or
/// `ok: …`.
async fn step(
    session: &Session,
    adapter: &LoadedAdapter,
    caps: &Arc<InstanceCaps>,
    run_id: &str,
    name: &str,
    payload: String,
) -> String {
    common::hostile::custom_step(session, adapter, caps, run_id, name, &payload).await
}

/// Drive one case; the outcome as text (an error, or `ok: …` when the host let it through).
async fn attack(session: &Session, w: &World, case: &Case) -> (String, Option<LoadedAdapter>) {
    let instance = w.fleet.instance(case.feature).expect("instance");
    if let Plan = case.act {
        return match apply::plan_instance(session, instance, "2.0.0").await {
            Ok(report) => (format!("ok: {:?}", report.outcome), None),
            Err(e) => (e.to_string(), None),
        };
    }
    let (adapter, caps) = match apply::prepare(session, instance).await {
        Ok(pair) => pair,
        Err(e @ OpError::Adapter(_)) => return (e.to_string(), None),
        Err(e) => panic!("{}: not an adapter fault: {e}", case.feature),
    };
    caps.set_run(Some(format!("hostile-{}", case.feature)));
    let text = match case.act {
        Load | Plan => format!("ok: loaded {}", adapter.digest),
        Export(name) => export(session, &adapter, &caps, name).await,
        Step(payload) => {
            let payload = match payload {
                NoPayload => String::new(),
                OutsideFile => w.env.dir.path().join("secret.txt").display().to_string(),
                ForbiddenPort => w.forbidden_port.to_string(),
            };
            let run = format!("hostile-{}", case.feature);
            step(session, &adapter, &caps, &run, "attack", payload).await
        }
    };
    (text, Some(adapter))
}

/// The host still serves: the bundled Bytebase adapter plans offline, and the hostile component
/// itself (when it loaded) still answers a benign step.
async fn still_serves(session: &Session, w: &World, case: &Case, loaded: Option<&LoadedAdapter>) {
    let bytebase = upshift::fleet::AdapterRef::Bundled("bytebase".into());
    let report = apply::offline_plan(session, &bytebase, "3.10.0", "3.11.1")
        .await
        .unwrap_or_else(|e| panic!("after {}: the host no longer plans: {e}", case.feature));
    assert!(
        matches!(report.outcome, apply::PlanOutcome::Plan(_)),
        "after {}: {:?}",
        case.feature,
        report.outcome
    );
    if let Some(adapter) = loaded {
        let instance = w.fleet.instance(case.feature).expect("instance");
        let caps = session.caps_for(instance, adapter).expect("caps");
        let answer = step(session, adapter, &caps, "benign", "benign", String::new()).await;
        assert_eq!(answer, "ok: benign", "after {}", case.feature);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hostile_adapter_is_stopped_blamed_audited_and_the_host_serves_on() {
    let Some(pg) = common::pg() else { return };
    let built = match components() {
        Ok(dir) => dir.clone(),
        Err(e) => panic!("{e}"),
    };
    let w = world(pg, &built).await;
    let messages = Arc::new(AtomicUsize::new(0));
    let counter = messages.clone();
    let sink = EventSink::new(move |e| {
        if matches!(e, Event::Log { .. } | Event::Progress { .. }) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    });
    let mut session = Session::open(&w.env.data(), sink).await.expect("session");
    session.runtime.set_deadlines(Deadlines {
        pure: Duration::from_secs(1),
        live: Duration::from_secs(10),
    });

    let mut digests = std::collections::BTreeSet::new();
    let mut failures = Vec::new();
    for case in CASES {
        let wasm = std::fs::read(built.join(format!("{}.wasm", case.feature))).expect("wasm");
        let digest = upshift::runtime::digest(&wasm);
        digests.insert(digest.clone());
        messages.store(0, Ordering::Relaxed);
        let audited_before = common::audit_records(session.audit.path()).len();

        let (outcome, loaded) = attack(&session, &w, case).await;
        eprintln!(
            "{:<24} {:<60} -> {}",
            case.feature,
            case.does,
            outcome.chars().take(300).collect::<String>()
        );

        let records = common::audit_records(session.audit.path());
        let denied = records[audited_before..].iter().any(|r| {
            // A denial (or a call to an unbound binding), or (what only the database's READ ONLY transaction stops) the
            // backend's refusal recorded with the call.
            let has = |t: &Option<String>| t.as_deref().unwrap_or("").contains(case.audited);
            r.event.adapter_digest == digest
                && ((r.event.decision != Decision::Allowed && has(&r.event.reason))
                    || has(&r.event.error))
        });
        let delivered = messages.load(Ordering::Relaxed);
        let row = format!("{} ({})", case.feature, case.does);
        if case.error.is_empty() || !outcome.contains(case.error) {
            failures.push(format!(
                "{row}: expected `{}` in: {outcome:.500}",
                case.error
            ));
        } else if !outcome.starts_with("ok: ") && !outcome.contains("adapter") {
            failures.push(format!(
                "{row}: the error does not blame the adapter: {outcome:.500}"
            ));
        } else if outcome.len() > 20_000 {
            failures.push(format!("{row}: an error of {} bytes", outcome.len()));
        }
        if case.audited.is_empty() || !denied {
            failures.push(format!(
                "{row}: no denied audit record with `{}`: {:#?}",
                case.audited,
                &records[audited_before..]
            ));
        }
        if delivered > 1_050 {
            failures.push(format!(
                "{row}: {delivered} log/progress messages reached the operator"
            ));
        }
        still_serves(&session, &w, case, loaded.as_ref()).await;
    }

    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    let distinct_features: std::collections::BTreeSet<_> =
        CASES.iter().map(|c| c.feature).collect();
    assert_eq!(
        digests.len(),
        distinct_features.len(),
        "one component per case"
    );
    assert!(digests.len() >= 25, "{} hostile components", digests.len());

    // Nothing any of them tried got through.
    assert_eq!(
        w.forbidden_hits.load(Ordering::SeqCst),
        0,
        "no request left the bound URL"
    );
    assert!(
        !w.outside.join("planted.txt").exists(),
        "nothing written outside"
    );
    assert!(!pg.database_exists("stolen").await, "no database created");
    let rows = common::connect(&w.db_url)
        .await
        .query_one("SELECT count(*) FROM victims", &[])
        .await
        .expect("the table survived");
    assert_eq!(rows.get::<_, i64>(0), 3, "no row deleted");
    let report = upshift::audit::verify(session.audit.path()).expect("verify");
    assert!(report.first_problem.is_none(), "the audit chain is intact");
}

/// The records appended to the audit log since it had `before` records.
fn audit_since(env: &common::Env, before: usize) -> Vec<(AuditRecord, usize)> {
    let text = std::fs::read_to_string(env.data().join("audit.jsonl")).unwrap_or_default();
    text.lines()
        .skip(before)
        .map(|l| {
            let record = serde_json::from_str(l).expect("audit record");
            (record, l.len() + 1)
        })
        .collect()
}

fn audit_len(env: &common::Env) -> usize {
    std::fs::read_to_string(env.data().join("audit.jsonl"))
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

/// Run `upshift` under `/usr/bin/time -v`: the output and the peak RSS in KiB, or `None` when
/// the tool is missing (a failure under `CI=true`).
fn upshift_peak_rss(env: &common::Env, args: &[&str]) -> (std::process::Output, Option<u64>) {
    let time = Path::new("/usr/bin/time");
    if !time.exists() {
        let why = "/usr/bin/time (GNU time, `apt-get install time`) is needed to measure peak RSS";
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{why}");
        }
        eprintln!("SKIPPED the memory bound: {why}");
        return (env.upshift(args), None);
    }
    let out = std::process::Command::new(time)
        .arg("-v")
        .arg(env!("CARGO_BIN_EXE_upshift"))
        .arg("--fleet")
        .arg(env.fleet())
        .arg("--data")
        .arg(env.data())
        .args(args)
        .env_remove("UPSHIFT_FLEET")
        .env_remove("UPSHIFT_DATA")
        .output()
        .expect("run upshift under /usr/bin/time");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let peak = stderr
        .lines()
        .find_map(|l| l.trim().strip_prefix("Maximum resident set size (kbytes):"))
        .and_then(|v| v.trim().parse().ok());
    assert!(
        peak.is_some(),
        "no peak RSS from /usr/bin/time -v:\n{stderr}"
    );
    (out, peak)
}

/// Issue 20, "volume": one step making a million host calls wrote a million audit records
/// (half a gigabyte), and every later command loaded them. Through the real CLI: the step is
/// stopped by its budget — of host calls (capability calls, and log lines and progress
/// reports), or of audit bytes (big denied paths) — with a fault naming the budget and the
/// fleet-file key, audited once; the run, which changed nothing, ends saying so (exit 1); and `plan`,
/// `history` and `audit verify` on that data directory stay within a few tens of MB.
#[test]
fn a_million_host_calls_in_one_step_are_stopped_by_the_steps_budget() {
    let wasm =
        common::hostile::component("hostile", "call-flood").unwrap_or_else(|e| panic!("{e}"));
    let env = common::Env::new();
    let files = env.dir.path().join("files");
    std::fs::create_dir_all(&files).expect("mkdir");
    env.write_fleet(&format!(
        r#"
[[instance]]
name = "flood"
adapter = "{wasm}"

[instance.files.data]
path = "{files}"
access = ["read"]

[[instance]]
name = "tight"
adapter = "{wasm}"

[instance.budget]
host_calls_per_step = 300
audit_bytes_per_step = 1048576

[instance.files.data]
path = "{files}"
access = ["read"]
"#,
        wasm = wasm.display(),
        files = files.display(),
    ));

    const CALLS: &str = "host calls in step `attack`";
    const BYTES: &str = "bytes of audit records, reaching the budget of";
    // instance, target, what the fault says, the host-call budget, the byte budget, and how
    // many allowed `exists` calls were made before the budget stopped the step (the log lines
    // and progress reports delivered count too: 1,000 of them, the per-call cap).
    #[rustfmt::skip]
    let runs: &[(&str, &str, String, usize, usize, usize)] = &[
        ("flood", "2.0.0-calls", format!("more than 10000 {CALLS}"), 10_000, 16 << 20, 10_000),
        ("flood", "2.0.0-logs", format!("more than 10000 {CALLS}"), 10_000, 16 << 20, 9_000),
        ("flood", "2.0.0-big", format!("{BYTES} 16777216 bytes"), 10_000, 16 << 20, 0),
        ("tight", "2.0.0-calls", format!("more than 300 {CALLS}"), 300, 1 << 20, 300),
        ("tight", "2.0.0-big", format!("{BYTES} 1048576 bytes"), 300, 1 << 20, 0),
    ];
    let mut failures = Vec::new();
    for (instance, target, says, calls, bytes, exists) in runs {
        let before = audit_len(&env);
        let started = std::time::Instant::now();
        let out = env.upshift(&["apply", instance, "--to", target, "--yes"]);
        let took = started.elapsed();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let what = format!("apply {instance} --to {target}");
        let records = audit_since(&env, before);
        let step: Vec<_> = records
            .iter()
            .filter(|(r, _)| r.event.instance == *instance)
            .collect();
        let written: usize = step.iter().map(|(_, n)| n).sum();
        let faults: Vec<_> = step
            .iter()
            .filter(|(r, _)| r.event.capability == "sandbox")
            .collect();
        let biggest = step.iter().map(|(_, n)| *n).max().unwrap_or(0);
        eprintln!(
            "{what}: exit {:?} in {took:.1?}, {} records, {written} bytes (largest {biggest})",
            out.status.code(),
            step.len()
        );
        // The flooding step reads only: it failed before anything was changed, so there was
        // nothing to roll back, and the exit says so (1, not 4).
        if out.status.code() != Some(1) || !text.contains("nothing was changed") {
            failures.push(format!(
                "{what}: exit {:?}, not 1 (failed, nothing was changed):\n{text:.3000}",
                out.status.code()
            ));
        }
        let denied = step
            .iter()
            .filter(|(r, _)| r.event.operation == "read" && r.event.decision == Decision::Denied)
            .count();
        if target.ends_with("-big") && denied < 100 {
            failures.push(format!(
                "{what}: {denied} denied reads before the byte budget"
            ));
        }
        if !text.contains(says.as_str()) || !text.contains("fleet file") {
            failures.push(format!(
                "{what}: no `{says}` and fleet-file hint in:\n{text:.3000}"
            ));
        }
        let allowed = step
            .iter()
            .filter(|(r, _)| r.event.operation == "exists" && r.event.decision == Decision::Allowed)
            .count();
        if allowed != *exists {
            failures.push(format!(
                "{what}: {allowed} allowed `exists` calls, not {exists}"
            ));
        }
        if step.len() > calls + 5 {
            failures.push(format!(
                "{what}: {} audit records for a budget of {calls} calls",
                step.len()
            ));
        }
        // At most one call's records go past the byte budget; no record is over ~13 KiB.
        if written > bytes + (16 << 10) || biggest > 16 << 10 {
            failures.push(format!(
                "{what}: {written} audit bytes (largest record {biggest}) for a budget of {bytes}"
            ));
        }
        let over: Vec<_> = faults
            .iter()
            .filter(|(r, _)| {
                r.event.decision == Decision::Denied
                    && r.event
                        .reason
                        .as_deref()
                        .is_some_and(|t| t.contains(says.as_str()))
            })
            .collect();
        if over.len() != 1 || faults.len() != 1 {
            failures.push(format!(
                "{what}: the budget fault is audited {} times ({} sandbox records), not once",
                over.len(),
                faults.len()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));

    // The log is small, and the commands that read it stay small.
    let report = upshift::audit::verify(&env.data().join("audit.jsonl")).expect("verify");
    assert!(report.first_problem.is_none(), "the audit chain is intact");
    for args in [
        &["plan", "flood", "--to", "2.0.0-calls"][..],
        &["history"],
        &["audit", "verify"],
    ] {
        let (out, peak) = upshift_peak_rss(&env, args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}:\n{}",
            common::stderr(&out)
        );
        if let Some(kib) = peak {
            eprintln!("upshift {}: peak RSS {} KiB", args.join(" "), kib);
            assert!(kib < 80 << 10, "upshift {args:?} peaked at {kib} KiB");
        }
    }
}
