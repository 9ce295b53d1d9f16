//! Preflight before stopping anything (issue 15, case 8): an unhealthy service, a service started
//! by hand holding database sessions, and a disk too small for the backup each refuse the plan
//! before anything is stopped; `upshift adopt` records the hand-started service so the next
//! apply stops it; `upshift start|stop` are audited and respect the lease; a run that fails
//! before changing anything says so and exits 1. Real PostgreSQL, the real binary, real
//! processes and a real (small tmpfs) full disk.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Env, checksums_over, columns, connect, free_port, json, start_services, stderr};

/// The recorded pid of a process service (`None` when Upshift records none).
fn recorded_pid(env: &Env, instance: &str, binding: &str) -> Option<u32> {
    let path = env
        .data()
        .join(format!("services/{instance}/{binding}.json"));
    let text = std::fs::read_to_string(path).ok()?;
    let state: serde_json::Value = serde_json::from_str(&text).ok()?;
    state["pid"].as_u64().and_then(|p| u32::try_from(p).ok())
}

/// Whether `pid` is alive (not a zombie).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let after = s.get(s.rfind(')')? + 2..)?;
            Some(!after.starts_with('Z') && !after.starts_with('X'))
        })
        .unwrap_or(false)
}

/// Live processes simulating Bytebase on `port`.
fn bytebase_processes(port: u16) -> Vec<u32> {
    let wanted = ["simulate", "bytebase", "--port", &port.to_string()].map(str::to_string);
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| alive(*pid))
        .filter(|pid| {
            let Ok(bytes) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let words: Vec<String> = bytes
                .split(|b| *b == 0)
                .map(|w| String::from_utf8_lossy(w).into_owned())
                .collect();
            wanted.iter().all(|w| words.contains(w))
        })
        .collect()
}

/// The audit records of the data directory's active log.
fn audit(env: &Env) -> Vec<upshift::audit::AuditRecord> {
    common::audit_records(&env.data().join("audit.jsonl"))
}

/// A Bytebase instance `bb` at 3.10.0 with seeded rows, its service started by Upshift, its
/// health answering 404 while `marker` exists.
async fn bytebase(pg: &common::Pg, marker: &Path) -> (Env, u16, String) {
    let (_, url) = pg.fresh_db("bb").await;
    let env = Env::new();
    let port = free_port();
    let extra = format!(", BB_SIM_HEALTH_404_IF_EXISTS = \"{}\"", marker.display());
    env.write_fleet(&common::bytebase_instance_with_env(
        "bb", &url, port, "3.10.0", None, &extra,
    ));
    start_services(&env, "bb", &["app"]).await;
    upshift_sim::bytebase::seed_user_rows(&connect(&url).await, 10)
        .await
        .expect("seed");
    (env, port, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unhealthy_service_is_refused_within_seconds_showing_the_404_and_nothing_stops() {
    let Some(pg) = common::pg() else { return };
    let scratch = tempfile::tempdir().expect("tempdir");
    let marker = scratch.path().join("unhealthy");
    let (env, port, _) = bytebase(pg, &marker).await;
    let pid = recorded_pid(&env, "bb", "app").expect("Upshift started the service");
    std::fs::write(&marker, "").expect("make the service unhealthy");
    assert_eq!(common::http_get(port, "/healthz").await.0, 404);

    // `plan` shows the failed check and refuses.
    let out = env.upshift(&["plan", "bb", "--to", "3.11.1", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let plan = json(&out);
    assert_eq!(plan["outcome"]["rule"], "preflight-health", "{plan}");
    let failed: Vec<&serde_json::Value> = plan["preflight"]
        .as_array()
        .expect("preflight checks")
        .iter()
        .filter(|c| c["passed"] == false)
        .collect();
    assert_eq!(failed.len(), 1, "{plan}");
    assert_eq!(failed[0]["subject"], "app");

    let started = Instant::now();
    let out = env.upshift(&["apply", "bb", "--to", "3.11.1", "--yes", "--json"]);
    let took = started.elapsed();
    eprintln!("apply refused the unhealthy service in {took:.2?}");
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(took < Duration::from_secs(30), "refused in {took:?}");
    let report = json(&out);
    assert_eq!(report["outcome"], "refused");
    assert_eq!(report["refusal"]["rule"], "preflight-health");
    let reason = report["refusal"]["reason"].as_str().unwrap_or_default();
    let url = format!("http://127.0.0.1:{port}/healthz");
    assert!(
        reason.contains("404") && reason.contains(&url),
        "the reason shows the URL and its 404: {reason}"
    );
    assert!(
        report["refusal"]["advice"]
            .as_str()
            .unwrap_or_default()
            .contains("upshift stop bb app"),
        "{report}"
    );
    assert!(report["steps"].as_array().is_some_and(Vec::is_empty));
    // Nothing was stopped: the same process serves the same version.
    assert_eq!(recorded_pid(&env, "bb", "app"), Some(pid));
    assert!(alive(pid));
    let (status, body) = common::http_get(port, "/v1/actuator/info").await;
    assert!(status == 200 && body.contains("3.10.0"), "{body}");
    // The refusal is in the history, as a refusal.
    let out = env.upshift(&["history", "bb", "--json"]);
    let history = json(&out);
    assert_eq!(history[0]["status"], "refused", "{history}");
    // The preflight's reads were guarded and audited like any other.
    assert!(
        audit(&env).iter().any(|r| r.event.operation == "healthy"
            && r.event.detail.as_deref() == Some("host preflight")),
        "the health check is audited"
    );

    // Healthy again, the same apply goes ahead.
    std::fs::remove_file(&marker).expect("healthy again");
    let out = env.upshift(&["apply", "bb", "--to", "3.11.1", "--yes", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(json(&out)["outcome"], "succeeded");
}

/// A process started by hand, killed (and reaped) when the test ends.
struct HandStarted(std::process::Child);

impl Drop for HandStarted {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_started_by_hand_is_named_with_its_sessions_and_after_adopt_apply_stops_it() {
    let Some(pg) = common::pg() else { return };
    let (_, url) = pg.fresh_db("bb").await;
    let env = Env::new();
    let port = free_port();
    env.write_fleet(&common::bytebase_instance("bb", &url, port, "3.10.0", None));
    // The operator starts Bytebase by hand, with the fleet file's command line.
    let log = std::fs::File::create(env.dir.path().join("by-hand.log")).expect("log");
    let mut by_hand = HandStarted(
        std::process::Command::new(env!("CARGO_BIN_EXE_upshift"))
            .args(["simulate", "bytebase", "--version", "3.10.0", "--port"])
            .arg(port.to_string())
            .env("PG_URL", &url)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start Bytebase by hand"),
    );
    let hand_pid = by_hand.0.id();
    let deadline = Instant::now() + Duration::from_secs(60);
    while common::http_get(port, "/healthz").await.0 != 200 {
        assert!(
            Instant::now() < deadline,
            "the hand-started Bytebase never became healthy"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    upshift_sim::bytebase::seed_user_rows(&connect(&url).await, 10)
        .await
        .expect("seed");
    let cols = columns(&url).await;
    let before = checksums_over(&url, &cols, &["instance_change_history"]).await;
    assert_eq!(recorded_pid(&env, "bb", "app"), None, "unknown to Upshift");

    let out = env.upshift(&["apply", "bb", "--to", "3.11.1", "--yes", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let report = json(&out);
    assert_eq!(report["refusal"]["rule"], "preflight-unadopted", "{report}");
    let reason = report["refusal"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("not started by Upshift") && reason.contains(&format!("pid {hand_pid}")),
        "names the process: {reason}"
    );
    assert!(
        reason.contains("unexpected session")
            && reason.contains("application_name")
            && reason.contains("client 127.0.0.1:")
            && reason.contains(&format!("held by pid {hand_pid}")),
        "names each session and who holds it: {reason}"
    );
    let advice = report["refusal"]["advice"].as_str().unwrap_or_default();
    assert!(advice.contains("upshift adopt bb app"), "{advice}");
    assert!(alive(hand_pid), "nothing was stopped");
    assert_eq!(common::http_get(port, "/healthz").await.0, 200);

    // A pid that is not this service (a mistyped one) is refused, naming the one that is:
    // adopting it would let the next run stop an unrelated process.
    let mut unrelated = std::process::Command::new("sleep")
        .arg("600")
        .spawn()
        .expect("sleep");
    let out = env.upshift(&["adopt", "bb", "app", "--pid", &unrelated.id().to_string()]);
    let said = stderr(&out);
    assert_ne!(out.status.code(), Some(0), "{said}");
    assert!(
        said.contains(&format!("pid {}", unrelated.id()))
            && said.contains("refuses to adopt")
            && said.contains(&hand_pid.to_string()),
        "{said}"
    );
    assert_eq!(recorded_pid(&env, "bb", "app"), None, "nothing recorded");
    assert!(alive(unrelated.id()), "nothing was stopped");
    let _ = unrelated.kill();
    let _ = unrelated.wait();

    let out = env.upshift(&["adopt", "bb", "app", "--pid", &hand_pid.to_string()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("adopted pid {hand_pid}")),
        "{}",
        stderr(&out)
    );
    assert_eq!(recorded_pid(&env, "bb", "app"), Some(hand_pid));
    assert!(
        audit(&env).iter().any(|r| r.event.operation == "adopt"
            && r.event.binding == "app"
            && r.event.detail.as_deref() == Some("operator adopt")),
        "adopt is audited"
    );

    let out = env.upshift(&["apply", "bb", "--to", "3.11.1", "--yes", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(json(&out)["outcome"], "succeeded");
    // The hand-started process was stopped by the run; exactly one Bytebase serves, Upshift's.
    by_hand.0.wait().expect("the hand-started process ended");
    let running = bytebase_processes(port);
    let new_pid = recorded_pid(&env, "bb", "app").expect("Upshift's pid");
    assert_eq!(running, vec![new_pid], "exactly one service process");
    let (code, body) = common::http_get(port, "/v1/actuator/info").await;
    assert!(code == 200 && body.contains("3.11.1"), "{body}");
    let after = checksums_over(&url, &cols, &["instance_change_history"]).await;
    assert_eq!(before, after, "rows intact");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_that_cannot_fit_is_refused_before_anything_stops_naming_the_sizes() {
    let Some(pg) = common::pg() else { return };
    let (name, url) = pg.fresh_db("om").await;
    let db = upshift_sim::fleet::OmDatabase {
        url: &url,
        scheme: "postgresql",
        port: common::url_port(&url),
        user: &name,
        name: &name,
    };
    let exe = Path::new(env!("CARGO_BIN_EXE_upshift"));
    let (port, admin) = (free_port(), free_port());
    let env = Env::new();
    env.write_fleet(&upshift_sim::fleet::openmetadata(
        "om",
        exe,
        &db,
        "1.9.0",
        (port, admin),
        "",
    ));
    start_services(&env, "om", &["migrate", "server"]).await;
    // About 24 MiB of table data: more than the 8 MiB disk the backups go to.
    connect(&url)
        .await
        .batch_execute(
            "CREATE TABLE ballast AS SELECT g AS id, repeat(md5(g::text), 6) AS filler \
             FROM generate_series(1, 120000) g",
        )
        .await
        .expect("ballast");
    let Some(_disk) = common::disk::Tmpfs::mount(&env.data().join("backups"), "8m", None) else {
        return;
    };
    let pid = recorded_pid(&env, "om", "server").expect("server runs");

    let out = env.upshift(&["apply", "om", "--to", "1.12.1", "--yes", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let report = json(&out);
    assert_eq!(report["refusal"]["rule"], "preflight-disk", "{report}");
    let reason = report["refusal"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("backups") && reason.contains("MiB free") && reason.contains("needed"),
        "names the sizes: {reason}"
    );
    assert!(
        reason.contains("a dump of `meta`"),
        "names what needs the room: {reason}"
    );
    // Nothing was stopped, nothing written to the small disk.
    assert_eq!(recorded_pid(&env, "om", "server"), Some(pid));
    assert!(alive(pid));
    assert_eq!(common::http_get(admin, "/healthcheck").await.0, 200);
    let written = std::fs::read_dir(env.data().join("backups"))
        .expect("backups dir")
        .count();
    assert_eq!(written, 0, "no backup was started");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_stop_and_start_are_audited_and_wait_for_the_lease() {
    let Some(pg) = common::pg() else { return };
    let scratch = tempfile::tempdir().expect("tempdir");
    let (env, port, _) = bytebase(pg, &scratch.path().join("never")).await;
    let pid = recorded_pid(&env, "bb", "app").expect("running");

    // Another run holds the instance: both are refused, and nothing is touched.
    let session = upshift::ops::Session::open(&env.data(), upshift::caps::EventSink::discard())
        .await
        .expect("session");
    let held = session
        .hold_lease("bb", "an apply elsewhere")
        .await
        .expect("holder");
    for command in ["stop", "start"] {
        let out = env.upshift(&[command, "bb", "app"]);
        assert_eq!(out.status.code(), Some(6), "{command}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("an apply elsewhere"),
            "{}",
            stderr(&out)
        );
    }
    assert!(alive(pid));
    drop(held);
    drop(session);

    let out = env.upshift(&["stop", "bb"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!alive(pid), "stopped");
    assert_eq!(common::http_get(port, "/healthz").await.0, 0);
    assert_eq!(recorded_pid(&env, "bb", "app"), None);

    let out = env.upshift(&["start", "bb", "app", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let done = json(&out);
    assert_eq!(done[0]["binding"], "app");
    assert!(
        done[0]["summary"]
            .as_str()
            .unwrap_or_default()
            .contains("healthy"),
        "{done}"
    );
    let new_pid = recorded_pid(&env, "bb", "app").expect("started");
    assert_eq!(bytebase_processes(port), vec![new_pid]);
    assert_eq!(common::http_get(port, "/healthz").await.0, 200);

    let records = audit(&env);
    for (operation, detail) in [("stop", "operator stop"), ("start", "operator start")] {
        assert!(
            records.iter().any(|r| r.event.operation == operation
                && r.event.binding == "app"
                && r.event.instance == "bb"
                && r.event.detail.as_deref() == Some(detail)),
            "`{operation}` is audited with detail `{detail}`"
        );
    }
    // An unknown binding is bad usage.
    let out = env.upshift(&["stop", "bb", "nope"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

/// A service binding narrowed to `inspect`: the operator's `stop`, `start` and `adopt` need
/// `control`, so the guard denies each one (audited as a denial) and the service runs on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_commands_without_control_are_denied_by_the_guard() {
    let Some(pg) = common::pg() else { return };
    let scratch = tempfile::tempdir().expect("tempdir");
    let (env, port, _) = bytebase(pg, &scratch.path().join("never")).await;
    let pid = recorded_pid(&env, "bb", "app").expect("running");
    let text = std::fs::read_to_string(env.fleet()).expect("fleet");
    assert!(text.contains("[instance.service.app]\n"), "{text}");
    env.write_fleet(&text.replace(
        "[instance.service.app]\n",
        "[instance.service.app]\naccess = [\"inspect\"]\n",
    ));
    for command in [
        vec!["stop", "bb", "app"],
        vec!["start", "bb", "app"],
        vec!["adopt", "bb", "app"],
    ] {
        let out = env.upshift(&command);
        assert_ne!(out.status.code(), Some(0), "{command:?}: {}", stderr(&out));
        let operation = command[0];
        assert!(
            audit(&env).iter().any(|r| r.event.operation == operation
                && r.event.binding == "app"
                && r.event.decision == upshift::audit::Decision::Denied),
            "{command:?}: a denial is audited; {}",
            stderr(&out)
        );
    }
    assert!(alive(pid), "the service was not touched");
    assert_eq!(bytebase_processes(port), vec![pid]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_fails_before_changing_anything_exits_1_saying_nothing_was_changed() {
    let Some(pg) = common::pg() else { return };
    // The binding's role may not create databases: the clone backup fails.
    let (_, url) = pg.fresh_db_as("bb", "").await;
    let env = Env::new();
    let port = free_port();
    env.write_fleet(&common::bytebase_instance("bb", &url, port, "3.10.0", None));
    start_services(&env, "bb", &["app"]).await;
    upshift_sim::bytebase::seed_user_rows(&connect(&url).await, 5)
        .await
        .expect("seed");
    // The operator stopped it on purpose: the preflight says so and goes on.
    let out = env.upshift(&["stop", "bb", "app"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let cols = columns(&url).await;
    let before = checksums_over(&url, &cols, &[]).await;

    let out = env.upshift(&["apply", "bb", "--to", "3.11.1", "--yes", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let report = json(&out);
    assert_eq!(report["outcome"], "nothing-changed", "{report}");
    let failure = report["failure"].as_str().unwrap_or_default();
    assert!(
        failure.contains("backup-meta") && failure.contains("nothing was changed"),
        "{failure}"
    );
    assert!(
        common::step_ids(&report, "rollback").is_empty(),
        "nothing to roll back: {report}"
    );
    // Text output says it too.
    let out = env.upshift(&["apply", "bb", "--to", "3.11.1", "--yes"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("nothing was changed"),
        "{}",
        stderr(&out)
    );
    let history = json(&env.upshift(&["history", "bb", "--json"]));
    assert_eq!(history[0]["status"], "nothing-changed", "{history}");
    // Still stopped, still at 3.10.0, rows intact.
    assert!(bytebase_processes(port).is_empty());
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(env.data().join("services/bb/app.json")).expect("state"),
    )
    .expect("json");
    assert_eq!(state["version"], "3.10.0");
    assert_eq!(checksums_over(&url, &cols, &[]).await, before);
}
