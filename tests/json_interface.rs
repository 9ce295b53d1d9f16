//! The machine interface, through the `upshift` binary: every command's `--json` output is one
//! JSON document on stdout with the keys docs/json.md documents, errors included
//! (`{"error": {"kind", "message", "fix"}}`), enum values spelled as docs/json.md lists them,
//! bad flag combinations refused with exit 2, already-at-target exiting 0 without a run,
//! connection errors naming host, port and cause, and fleet-wide plans.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;
use upshift::caps::EventSink;
use upshift::fleet::Fleet;
use upshift::ops::Session;
use upshift::ops::apply;

use common::{Env, stderr};

/// docs/json.md.
fn doc() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/json.md");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The example docs/json.md gives after `<!-- schema: NAME -->`.
fn documented(name: &str) -> Value {
    let doc = doc();
    let marker = format!("<!-- schema: {name} -->");
    let at = doc
        .find(&marker)
        .unwrap_or_else(|| panic!("docs/json.md documents no `{name}` ({marker})"));
    let rest = &doc[at..];
    let start = rest.find("```json\n").expect("a ```json block follows") + "```json\n".len();
    let end = rest[start..].find("```").expect("the block ends") + start;
    serde_json::from_str(&rest[start..end])
        .unwrap_or_else(|e| panic!("docs/json.md `{name}` example is not JSON: {e}"))
}

/// The values docs/json.md lists for enum `name` (its line `- `name`: `a`, `b`, …`).
fn documented_enum(name: &str) -> BTreeSet<String> {
    let doc = doc();
    let prefix = format!("- `{name}`:");
    let line = doc
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("docs/json.md lists no enum `{name}`"));
    line[prefix.len()..]
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

fn keys(value: &Value) -> BTreeSet<String> {
    value
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

/// `actual` has the shape of docs/json.md's `name`: the same keys (of the first element, for
/// an array).
fn assert_shape(name: &str, actual: &Value) {
    let example = documented(name);
    match (&example, actual) {
        (Value::Array(want), Value::Array(got)) => {
            if let (Some(want), Some(got)) = (want.first(), got.first()) {
                assert_eq!(keys(want), keys(got), "`{name}` element keys\n{actual:#}");
            }
        }
        (Value::Object(_), Value::Object(_)) => {
            assert_eq!(keys(&example), keys(actual), "`{name}` keys\n{actual:#}");
        }
        _ => panic!("`{name}`: documented {example}, got {actual}"),
    }
}

fn assert_listed(enum_name: &str, value: &Value) {
    let listed = documented_enum(enum_name);
    let value = value
        .as_str()
        .unwrap_or_else(|| panic!("`{enum_name}` is a string: {value}"));
    assert!(
        listed.contains(value),
        "`{enum_name}` value `{value}` is not in docs/json.md ({listed:?})"
    );
}

/// Every step of `plan` (a plan's JSON: `{steps: [{action}]}`) names its action, and the
/// action's backup method, as docs/json.md lists them; returns the action names seen.
fn assert_actions_listed(plan: &Value) -> BTreeSet<String> {
    let steps = plan["steps"]
        .as_array()
        .unwrap_or_else(|| panic!("a plan has steps: {plan:#}"));
    let mut seen = BTreeSet::new();
    for step in steps {
        let action = &step["action"];
        let name = match action {
            Value::String(name) => name.clone(),
            Value::Object(map) if map.len() == 1 => map.keys().next().cloned().unwrap_or_default(),
            other => panic!("an action is a variant: {other}"),
        };
        assert_listed("plan.step.action", &Value::String(name.clone()));
        if let Some(method) = action[&name].get("method") {
            assert_listed("plan.step.action.method", method);
        }
        seen.insert(name);
    }
    seen
}

/// Stdout as exactly one JSON document (panics with both streams otherwise).
fn one_document(out: &std::process::Output) -> Value {
    let text = String::from_utf8_lossy(&out.stdout);
    let mut stream = serde_json::Deserializer::from_str(&text).into_iter::<Value>();
    let first = match stream.next() {
        Some(Ok(v)) => v,
        other => panic!(
            "stdout is not one JSON document ({other:?}):\n{}",
            stderr(out)
        ),
    };
    assert!(
        stream.next().is_none(),
        "stdout holds more than one JSON document:\n{}",
        stderr(out)
    );
    first
}

/// An error document of `kind`, with exit `code`.
fn assert_error(out: &std::process::Output, code: i32, kind: &str) -> Value {
    assert_eq!(out.status.code(), Some(code), "{}", stderr(out));
    let doc = one_document(out);
    assert_shape("error", &doc);
    assert_eq!(keys(&doc["error"]), keys(&documented("error")["error"]));
    assert_eq!(doc["error"]["kind"], kind, "{doc:#}");
    assert_listed("error.kind", &doc["error"]["kind"]);
    doc
}

const CLOSED_PORT_FLEET: &str = r#"
[[instance]]
name = "bb"
product = "bytebase"
target = "3.11.1"

[instance.db.meta]
url = "postgres://postgres@127.0.0.1:PORT/metadb"

[instance.service.app]
kind = "process"
command = "/bin/true {version}"
version = "3.10.0"
wait_healthy_secs = 45

[instance.http.api]
url = "http://127.0.0.1:PORT"
"#;

#[test]
fn errors_are_one_json_document_with_kind_message_and_fix() {
    let env = Env::new();
    let port = common::free_port();
    env.write_fleet(&CLOSED_PORT_FLEET.replace("PORT", &port.to_string()));

    // A command line clap refuses: exit 2, still one JSON document.
    let out = env.upshift(&["apply", "bb", "--all", "--json"]);
    let doc = assert_error(&out, 2, "usage");
    assert!(
        doc["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("--all")),
        "{doc:#}"
    );
    assert!(
        out.stderr.is_empty(),
        "no human text when not asked: {}",
        stderr(&out)
    );
    for bad in [
        &["apply", "--all", "--parallel", "0", "--yes", "--json"][..],
        &["apply", "--all", "--max-failures", "0", "--yes", "--json"],
        &[
            "apply",
            "--all",
            "--select",
            "product=bytebase",
            "--yes",
            "--json",
        ],
        &["enqueue", "bb", "--all"],
        &[
            "plan",
            "bb",
            "--product",
            "bytebase",
            "--from",
            "1.0.0",
            "--json",
        ],
        &["apply", "bb", "--timeout", "0", "--yes", "--json"],
        &["history", "--limit", "0", "--json"],
    ] {
        let out = env.upshift(bad);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{bad:?} is refused: {}",
            stderr(&out)
        );
    }
    // Without --json the same refusal is clap's text on stderr.
    let out = env.upshift(&["apply", "--all", "--parallel", "0", "--yes"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty() && stderr(&out).contains("--parallel"));

    // An unknown instance: a fleet-file error naming the instance, the file and the fix.
    let out = env.upshift(&["backups", "nosuch", "--json"]);
    let doc = assert_error(&out, 2, "fleet-file");
    let message = doc["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("nosuch") && message.contains(&env.fleet().display().to_string()),
        "{doc:#}"
    );
    assert!(doc["error"]["fix"].is_string(), "{doc:#}");
    let out = env.upshift(&["backups", "nosuch"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no instance named `nosuch`"),
        "{}",
        stderr(&out)
    );
    let out = env.upshift(&["history", "nosuch", "--json"]);
    assert_error(&out, 2, "fleet-file");
    let out = env.upshift(&["history", "--run", "nope", "--json"]);
    let doc = assert_error(&out, 2, "usage");
    assert!(
        doc["error"]["fix"]
            .as_str()
            .is_some_and(|f| f.contains("upshift history"))
    );

    // An operator timeout out of range: the fleet file is refused, naming the key and the fix.
    let fresh = Env::new();
    fresh.write_fleet(
        &CLOSED_PORT_FLEET
            .replace("PORT", &port.to_string())
            .replace("wait_healthy_secs = 45", "wait_healthy_secs = 0"),
    );
    let out = fresh.upshift(&["plan", "bb", "--json"]);
    let doc = assert_error(&out, 2, "fleet-file");
    assert!(
        doc["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("wait_healthy_secs = 0")),
        "{doc:#}"
    );
    assert!(
        doc["error"]["fix"]
            .as_str()
            .is_some_and(|f| f.contains("1 to 86400")),
        "{doc:#}"
    );

    // A binding whose port nothing listens on: host, port and cause, as kind `connection`.
    let out = env.upshift(&["plan", "bb", "--json"]);
    let doc = assert_error(&out, 1, "connection");
    let message = doc["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!("127.0.0.1:{port}"))
            && message.contains("connection refused")
            && message.contains("`meta`")
            && message.contains("`bb`"),
        "{doc:#}"
    );
    let out = env.upshift(&["plan", "bb"]);
    assert!(
        stderr(&out).contains(&format!("cannot connect to PostgreSQL at 127.0.0.1:{port}")),
        "{}",
        stderr(&out)
    );
}

/// The actions docs/json.md lists are exactly the contract's: the cases of `variant action`
/// in wit/adapter.wit, as the WIT spells them.
#[test]
fn documented_actions_are_the_contracts_action_variants() {
    let wit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../wit/adapter.wit"
    ))
    .expect("wit/adapter.wit");
    let body = wit
        .split_once("variant action {")
        .and_then(|(_, rest)| rest.split_once('}'))
        .map(|(body, _)| body)
        .expect("wit/adapter.wit has `variant action`");
    let cases: BTreeSet<String> = body
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("//"))
        .map(|l| {
            l.split(['(', ','])
                .next()
                .unwrap_or_default()
                .trim()
                .to_string()
        })
        .collect();
    assert!(cases.contains("wait-healthy"), "{cases:?}");
    assert_eq!(documented_enum("plan.step.action"), cases);
}

#[test]
fn offline_documents_have_the_documented_keys() {
    let env = Env::new();
    let port = common::free_port();
    env.write_fleet(&CLOSED_PORT_FLEET.replace("PORT", &port.to_string()));
    let run = |args: &[&str], code: i32| {
        let out = env.upshift(args);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {}", stderr(&out));
        one_document(&out)
    };

    let plan = run(
        &[
            "plan",
            "--product",
            "bytebase",
            "--from",
            "3.10.0",
            "--to",
            "3.11.1",
            "--json",
        ],
        0,
    );
    assert_shape("plan", &plan);
    assert_listed("plan.outcome.outcome", &plan["outcome"]["outcome"]);
    // --timeout replaces every wait-healthy step's timeout and says so in the plan.
    let timed = run(
        &[
            "plan",
            "--product",
            "bytebase",
            "--from",
            "3.10.0",
            "--to",
            "3.11.1",
            "--timeout",
            "777",
            "--json",
        ],
        0,
    );
    let waits: Vec<&Value> = timed["outcome"]["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .filter_map(|s| s["action"].get("wait-healthy"))
        .collect();
    assert!(!waits.is_empty(), "{timed:#}");
    assert!(
        waits.iter().all(|w| w["timeout_ms"] == 777_000),
        "{waits:?}"
    );
    let actions = assert_actions_listed(&timed["outcome"]);
    assert!(
        actions.contains("db-backup") && actions.contains("service-switch"),
        "{actions:?}"
    );
    assert!(
        timed["outcome"]["notes"].as_array().is_some_and(|n| n
            .iter()
            .any(|n| n.as_str().is_some_and(|n| n.contains("777 s")))),
        "{timed:#}"
    );

    // Already at the target: exit 0, not a refusal exit.
    let there = run(
        &[
            "plan",
            "--product",
            "bytebase",
            "--from",
            "3.10.0",
            "--to",
            "3.10.0",
            "--json",
        ],
        0,
    );
    assert_eq!(there["outcome"]["rule"], "already-at-target");
    let refused = run(
        &[
            "plan",
            "--product",
            "bytebase",
            "--from",
            "3.10.0",
            "--to",
            "3.5.0",
            "--json",
        ],
        3,
    );
    assert_listed("plan.outcome.outcome", &refused["outcome"]["outcome"]);

    // A fleet-wide plan: the unreachable instance is a line, not the end of the command.
    let fleet = run(&["plan", "--all", "--json"], 1);
    assert_shape("plan-fleet", &fleet);
    assert_shape("plan-fleet-instance", &fleet["instances"][0]);
    assert_listed("plan-fleet.result", &fleet["instances"][0]["result"]);
    assert_eq!(fleet["counts"]["error"], 1);
    let out = env.upshift(&["plan", "--select", "product=bytebase"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Fleet plan"),
        "{}",
        stderr(&out)
    );

    assert_shape(
        "adapter-inspect",
        &run(&["adapter", "inspect", "bytebase", "--json"], 0),
    );
    assert_shape("gc", &run(&["gc", "--dry-run", "--json"], 0));
    // An adapter not approved yet: exit 1, still the document.
    assert_shape("lock", &run(&["lock", "--json"], 1));
    assert_eq!(run(&["history", "--json"], 0), Value::Array(Vec::new()));
    assert_eq!(run(&["backups", "--json"], 0), Value::Array(Vec::new()));
    // No audit log yet (a fresh data directory): an error document.
    let fresh = Env::new();
    let out = fresh.upshift(&["audit", "verify", "--json"]);
    assert_error(&out, 2, "usage");
}

async fn start_app(env: &Env) {
    let fleet = Fleet::load(&env.fleet()).expect("fleet");
    let session = Session::open(&env.data(), EventSink::discard())
        .await
        .expect("session");
    let (_, caps) = apply::prepare(&session, fleet.instance("bb").expect("bb"))
        .await
        .expect("prepare");
    let app = caps.service();
    app.start("app", "test").await.expect("start");
    app.wait_healthy("app", Duration::from_secs(60), "test")
        .await
        .expect("healthy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_documents_have_the_documented_keys_and_names() {
    let Some(pg) = common::pg() else { return };
    let (_, db_url) = pg.fresh_db("bbjson").await;
    let env = Env::new();
    let port = common::free_port();
    let fleet = common::bytebase_instance("bb", &db_url, port, "3.10.0", None).replace(
        "stop_timeout_secs = 10",
        "stop_timeout_secs = 10\nwait_healthy_secs = 321",
    );
    env.write_fleet(&fleet);
    start_app(&env).await;
    let run = |args: &[&str], code: i32| {
        let out = env.upshift(args);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {}", stderr(&out));
        (one_document(&out), out)
    };

    // The fleet file's wait_healthy_secs is in the plan.
    let (plan, _) = run(&["plan", "bb", "--to", "3.11.1", "--json"], 0);
    assert_shape("plan", &plan);
    let waits: Vec<&Value> = plan["outcome"]["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .filter_map(|s| s["action"].get("wait-healthy"))
        .collect();
    assert!(
        !waits.is_empty() && waits.iter().all(|w| w["timeout_ms"] == 321_000),
        "{plan:#}"
    );

    // One instance: the report, with step durations; events on stderr, kebab-case.
    let (report, out) = run(&["apply", "bb", "--to", "3.11.1", "--yes", "--json"], 0);
    assert_shape("apply", &report);
    assert_listed("outcome", &report["outcome"]);
    let steps = report["steps"].as_array().expect("steps");
    assert!(!steps.is_empty());
    for step in steps {
        assert_shape("apply.steps", &Value::Array(vec![step.clone()]));
        assert!(step["duration_ms"].is_u64(), "{step}");
    }
    assert!(
        steps.iter().any(|s| s["duration_ms"].as_u64() > Some(0)),
        "some step took time: {steps:?}"
    );
    for line in String::from_utf8_lossy(&out.stderr).lines() {
        let event: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("stderr line is not a JSON event ({e}): {line}"));
        assert_listed("event", &event["event"]);
    }

    // History: the plan nested as JSON, statuses kebab-case.
    let (runs, _) = run(&["history", "bb", "--json"], 0);
    assert_shape("history", &runs);
    assert!(runs[0]["plan"].is_object(), "{:#}", runs[0]);
    assert!(runs[0].get("plan_json").is_none());
    assert_listed("run.status", &runs[0]["status"]);
    let run_id = runs[0]["id"].as_str().expect("id").to_string();
    let (one, _) = run(&["history", "--run", &run_id, "--json"], 0);
    assert_shape("history-run", &one);
    let journaled = assert_actions_listed(&one["run"]["plan"]["plan"]);
    assert_eq!(
        journaled,
        assert_actions_listed(&plan["outcome"]),
        "history shows the plan that ran, spelled as `plan --json` spells it"
    );
    for step in one["steps"].as_array().expect("steps") {
        assert_listed("step.status", &step["status"]);
    }

    // Status and the audit log: the documented keys and values.
    let (statuses, _) = run(&["status", "bb", "--json"], 0);
    assert_shape("status", &statuses);
    let bb = &statuses[0];
    assert_listed("status.reach", &bb["reach"]);
    assert_listed("status.plan.outcome", &bb["plan"]["outcome"]);
    for service in bb["health"].as_array().expect("health") {
        assert_listed("status.health.state", &service["state"]);
    }
    assert_eq!(
        bb["last_run"]["id"].as_str(),
        Some(run_id.as_str()),
        "{bb:#}"
    );
    let (records, _) = run(&["audit", "show", "--limit", "0", "--json"], 0);
    assert_shape("audit-show", &records);
    for record in records.as_array().expect("records") {
        assert_listed("audit.decision", &record["decision"]);
    }

    // Already at the target, alone or in a rollout: exit 0 and no run recorded.
    let (again, _) = run(&["apply", "bb", "--to", "3.11.1", "--yes", "--json"], 0);
    assert_eq!(again["outcome"], "already-there");
    let (rollout, out) = run(&["apply", "--all", "--to", "3.11.1", "--yes", "--json"], 0);
    assert_shape("rollout", &rollout);
    assert_listed("rollout.status", &rollout["instances"][0]["status"]);
    assert_eq!(rollout["instances"][0]["status"], "already-there");
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("AlreadyThere"),
        "{}",
        stderr(&out)
    );
    let (after, _) = run(&["history", "bb", "--json"], 0);
    assert_eq!(
        after.as_array().map(Vec::len),
        runs.as_array().map(Vec::len)
    );

    // Backups, backup verify, audit verify.
    let (backups, _) = run(&["backups", "bb", "--json"], 0);
    assert_shape("backups", &backups);
    let id = backups[0]["id"].as_str().expect("id").to_string();
    let (verified, _) = run(&["backup", "verify", &id, "--json"], 0);
    assert_shape("backup-verify", &verified);
    let (audit, _) = run(&["audit", "verify", "--json"], 0);
    assert_shape("audit-verify", &audit);

    // A rollout shows the fleet plan table before it starts (text mode).
    let out = env.upshift(&["apply", "--all", "--to", "3.11.1", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stderr(&out);
    assert!(
        text.contains("Fleet plan") && text.contains("already"),
        "{text}"
    );
}

/// A MySQL binding and an HTTP binding whose ports nothing listens on: the operator reads the
/// host, the port and the cause, for MySQL as the command's error (kind `connection`), for HTTP
/// (which the adapter copes with) in what the audit log recorded for the call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_and_http_connection_errors_name_host_port_and_cause() {
    let env = Env::new();
    let mysql_port = common::free_port();
    let config = env.dir.path().join("devlake-config");
    std::fs::create_dir_all(&config).expect("config dir");
    std::fs::write(config.join(".env"), "ENCRYPTION_SECRET=x\n").expect(".env");
    env.write_fleet(&format!(
        r#"
[[instance]]
name = "dl"
product = "devlake"

[instance.db.lake]
url = "mysql://merico@127.0.0.1:{mysql_port}/lake"

[instance.service.app]
kind = "process"
command = "/bin/true {{version}}"
version = "v1.0.0"

[instance.http.api]
url = "http://127.0.0.1:{mysql_port}"

[instance.files.config]
path = "{config}"
"#,
        config = config.display()
    ));
    let out = env.upshift(&["plan", "dl", "--to", "v1.0.1", "--json"]);
    let doc = assert_error(&out, 1, "connection");
    let message = doc["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!("MySQL at 127.0.0.1:{mysql_port}"))
            && message.contains("database `lake`")
            && message.to_lowercase().contains("refused")
            && message.contains("`dl`"),
        "{doc:#}"
    );

    // HTTP: a Bytebase whose database answers and whose API port is closed.
    let Some(pg) = common::pg() else { return };
    let (_, db_url) = pg.fresh_db("jsonhttp").await;
    let api_port = common::free_port();
    let env = Env::new();
    env.write_fleet(&common::bytebase_instance(
        "bb", &db_url, api_port, "3.10.0", None,
    ));
    let out = env.upshift(&["plan", "bb", "--to", "3.11.1", "--json"]);
    let _ = one_document(&out);
    let out = env.upshift(&["audit", "show", "bb", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let records = one_document(&out);
    let http_errors: Vec<&str> = records
        .as_array()
        .expect("records")
        .iter()
        .filter(|r| r["capability"] == "http")
        .filter_map(|r| r["error"].as_str())
        .collect();
    assert!(
        !http_errors.is_empty()
            && http_errors.iter().all(|e| e.contains(&format!(
                "cannot connect to HTTP server at 127.0.0.1:{api_port}"
            )) && e.to_lowercase().contains("refused")),
        "{records:#}"
    );
}
