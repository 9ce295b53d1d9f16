//! Record and replay through the `upshift` binary: `plan` and `apply --record` on a simulated
//! Bytebase over a real PostgreSQL write tapes holding every capability call and its answer;
//! with the cluster stopped, `adapter test --replay` answers the adapter from the tape alone and
//! finds it identical, finds an edited tape's difference, names the call an adapter that
//! behaves differently makes, and refuses malformed tapes.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

use common::{Env, json, stderr};

/// `upshift ARGS` with no fleet file and an empty data directory: replay needs neither.
fn upshift(data: &Path, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_upshift"))
        .arg("--fleet")
        .arg(data.join("no-fleet.toml"))
        .arg("--data")
        .arg(data)
        .args(args)
        .env_remove("UPSHIFT_FLEET")
        .env_remove("UPSHIFT_DATA")
        .output()
        .expect("run upshift")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn read_tape(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).expect("tape written");
    serde_json::from_str(&text).expect("tape is JSON")
}

fn export_names(tape: &Value) -> Vec<String> {
    tape["exports"]
        .as_array()
        .expect("exports")
        .iter()
        .filter_map(|e| e["export"].as_str().map(str::to_string))
        .collect()
}

/// The db.query call of an export whose SQL contains `sql`.
fn query_call<'a>(export: &'a mut Value, sql: &str) -> &'a mut Value {
    export["calls"]
        .as_array_mut()
        .expect("calls")
        .iter_mut()
        .find(|c| {
            c["interface"] == "db"
                && c["function"] == "query"
                && c["args"]["sql"].as_str().is_some_and(|s| s.contains(sql))
        })
        .unwrap_or_else(|| panic!("a query with `{sql}`"))
}

/// A PostgreSQL cluster of this test's own, so that it can be stopped before replaying.
fn own_cluster(dir: &Path) -> Option<upshift_sim::pg::Cluster> {
    match upshift_sim::pg::Cluster::start(dir) {
        Ok(c) => Some(c),
        Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("PostgreSQL is needed for this test: {e}")
        }
        Err(e) => {
            eprintln!("SKIPPED: PostgreSQL is needed for this test and is missing: {e}");
            None
        }
    }
}

/// `upshift ARGS --record TAPE` in `env`.
fn record(env: &Env, args: &[&str], tape: &Path) -> Output {
    let mut args = args.to_vec();
    args.extend(["--record", tape.to_str().expect("utf-8 path")]);
    env.upshift(&args)
}

fn replay(data: &Path, adapter: &str, tape: &Path, json_out: bool) -> Output {
    let tape = tape.to_str().expect("utf-8 path");
    let mut args = vec!["adapter", "test", adapter, "--replay", tape];
    if json_out {
        args.push("--json");
    }
    upshift(data, &args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_run_replays_offline_and_differences_are_shown() {
    common::sweep_stale("rr-pg");
    let pg_dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("rr-pg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&pg_dir);
    let Some(mut cluster) = own_cluster(&pg_dir) else {
        return;
    };
    let db_url = cluster
        .create_owned_database("bb")
        .expect("create database");
    let env = Env::new();
    let port = common::free_port();
    env.write_fleet(&common::bytebase_instance(
        "bb", &db_url, port, "3.10.0", None,
    ));
    common::start_services(&env, "bb", &["app"]).await;
    let client = common::connect(&db_url).await;
    upshift_sim::bytebase::seed_user_rows(&client, 10)
        .await
        .expect("seed");
    drop(client);

    let tapes = tempfile::tempdir().expect("tempdir");
    let plan_tape = tapes.path().join("plan.json");
    let apply_tape = tapes.path().join("apply.json");
    let refused_tape = tapes.path().join("refused.json");

    let out = record(
        &env,
        &["plan", "bb", "--to", "3.11.1", "--json"],
        &plan_tape,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(json(&out)["outcome"]["outcome"], "plan");
    let tape = read_tape(&plan_tape);
    assert_eq!(tape["format"], "upshift-tape/1");
    assert_eq!(tape["instance"], "bb");
    assert_eq!(tape["adapter"]["product"], "bytebase");
    assert_eq!(export_names(&tape), ["detect", "plan"]);
    let mut detect = tape["exports"][0].clone();
    let version_row = query_call(&mut detect, "SELECT version FROM instance_change_history");
    let recorded_version = version_row["result"]["ok"]["rows"][0][0]["Text"]
        .as_str()
        .expect("the version row's text")
        .to_string();
    assert!(
        recorded_version.contains("3") && recorded_version.contains("10"),
        "{recorded_version}"
    );
    let api = detect["calls"]
        .as_array()
        .expect("calls")
        .iter()
        .find(|c| c["interface"] == "http")
        .expect("the actuator request");
    assert!(
        api["result"]["ok"]["body"]["text"]
            .as_str()
            .is_some_and(|b| b.contains("3.10.0")),
        "{api}"
    );
    assert_eq!(tape["exports"][0]["result"]["Ok"]["version"], "3.10.0");
    let mode = std::fs::metadata(&plan_tape).expect("meta");
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o077,
        0,
        "the tape is readable by its owner only"
    );

    // A refused run writes its tape too; an existing file is refused before anything runs.
    let out = record(&env, &["plan", "bb", "--to", "3.9.0"], &refused_tape);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let refused = read_tape(&refused_tape);
    assert!(refused["exports"][1]["result"]["Err"]["rule"].is_string());
    let out = record(&env, &["plan", "bb", "--to", "3.11.1"], &plan_tape);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("exists already"), "{}", stderr(&out));

    let out = record(
        &env,
        &["apply", "bb", "--to", "3.11.1", "--yes", "--json"],
        &apply_tape,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let applied = read_tape(&apply_tape);
    let names = export_names(&applied);
    for export in ["detect", "plan", "run-step", "verify", "plan-restore"] {
        assert!(names.iter().any(|n| n == export), "{export} in {names:?}");
    }

    // From here on nothing live exists: the cluster is stopped and the service killed. A run
    // that fails (detection cannot read the database) still leaves its tape.
    let pg_port = cluster.port();
    cluster.stop().expect("stop the cluster");
    drop(cluster);
    let failed_tape = tapes.path().join("failed.json");
    let out = record(&env, &["plan", "bb", "--to", "3.11.1"], &failed_tape);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let failed = read_tape(&failed_tape);
    assert_eq!(export_names(&failed), ["detect"]);
    // Detection reads the data directory and the service first; the database call fails.
    let db_call = failed["exports"][0]["calls"]
        .as_array()
        .and_then(|calls| calls.iter().find(|c| c["interface"] == "db"));
    assert!(
        db_call.is_some_and(|c| c["result"]["err"]["Failed"].is_string()),
        "{failed}"
    );
    assert!(failed["exports"][0]["result"]["Err"]["message"].is_string());
    drop(env);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", pg_port)).is_err(),
        "the cluster is gone"
    );
    let scratch = tempfile::tempdir().expect("tempdir");
    let data = scratch.path().join("data");

    for tape in [&plan_tape, &apply_tape, &refused_tape, &failed_tape] {
        let out = replay(&data, "bytebase", tape, false);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert!(stdout(&out).contains(": identical"), "{}", stdout(&out));
    }
    let out = replay(&data, "bytebase", &apply_tape, true);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report = json(&out);
    assert_eq!(report["identical"], true);
    assert_eq!(report["same_adapter"], true);
    let mut answered = 0;
    for e in report["exports"].as_array().expect("exports") {
        assert_eq!(e["calls_answered"], e["calls_recorded"], "{e}");
        answered += e["calls_answered"].as_u64().expect("count");
    }
    assert!(answered > 10, "{answered} calls answered");
    assert!(!data.exists(), "replay touches no data directory");

    // An edited tape: the version row says 3.9.0 now. Detection differs; the plan is replayed
    // with its recorded arguments and stays identical.
    let mut edited = read_tape(&plan_tape);
    let row = query_call(
        &mut edited["exports"][0],
        "SELECT version FROM instance_change_history",
    );
    row["result"]["ok"]["rows"][0][0]["Text"] = Value::from("3.9.0");
    let edited_tape = tapes.path().join("edited.json");
    std::fs::write(&edited_tape, edited.to_string()).expect("write");
    let out = replay(&data, "bytebase", &edited_tape, false);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("detect") && text.contains("DIFFERS") && text.contains("$.Ok.facts"),
        "{text}"
    );
    assert!(
        text.contains(&format!("- recorded \"{recorded_version}\"")) && text.contains("\"3.9.0\""),
        "{text}"
    );
    assert!(text.contains("1 differ"), "{text}");

    // An adapter that does not make the recorded calls: the first call it skipped is named.
    let other = format!("{}/test-misbehaving.wasm", upshift::adapters::BUILT_DIR);
    let out = replay(&data, &other, &plan_tape, false);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("note: replaying a different adapter"),
        "{text}"
    );
    assert!(
        text.contains("the adapter made 0 of the") && text.contains("never made, is files.read"),
        "{text}"
    );

    // A tape whose calls come in another order: the call the adapter made, and the expected one.
    let mut swapped = read_tape(&plan_tape);
    swapped["exports"][0]["calls"]
        .as_array_mut()
        .expect("calls")
        .swap(0, 1);
    let swapped_tape = tapes.path().join("swapped.json");
    std::fs::write(&swapped_tape, swapped.to_string()).expect("write");
    let out = replay(&data, "bytebase", &swapped_tape, false);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("call 1: the adapter called files.read")
            && text.contains("but the tape expects service.inspect"),
        "{text}"
    );
}

#[test]
fn malformed_tapes_and_unknown_adapters_are_bad_input() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let good = dir.path().join("offline.json");
    let out = upshift(
        &data,
        &[
            "plan",
            "--product",
            "bytebase",
            "--from",
            "3.10.0",
            "--to",
            "3.11.1",
            "--record",
            good.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = replay(&data, "bytebase", &good, false);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    let cases = [
        ("not-json.json", "{\"format\": ".to_string(), "is not JSON"),
        (
            "future.json",
            r#"{"format":"upshift-tape/2","exports":[]}"#.to_string(),
            "this host reads `upshift-tape/1`",
        ),
        (
            "no-format.json",
            r#"{"exports":[]}"#.to_string(),
            "no \"format\"",
        ),
        (
            "bad-export.json",
            std::fs::read_to_string(&good)
                .expect("tape")
                .replace("\"export\": \"plan\"", "\"export\": \"frobnicate\""),
            "does not follow",
        ),
    ];
    for (name, text, message) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        let out = replay(&data, "bytebase", &path, false);
        assert_eq!(out.status.code(), Some(2), "{name}: {}", stderr(&out));
        assert!(stderr(&out).contains(message), "{name}: {}", stderr(&out));
    }
    let out = replay(&data, "bytebase", &dir.path().join("absent.json"), false);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("cannot read it"), "{}", stderr(&out));
    let out = replay(&data, "no-such-adapter", &good, false);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("neither a file nor a bundled adapter"));
}
