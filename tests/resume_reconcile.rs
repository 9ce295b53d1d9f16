//! Resume reconciles before it acts (issue 15, case 1): it re-reads the services and the
//! adapter's `detect`, compares them with the run's journal, and never acts blindly on a world
//! that changed behind its back. Real PostgreSQL, the Bytebase simulator, the real binary
//! killed with SIGKILL (by the crash hook at exact points, or from outside at a moment the test
//! observes).

mod common;

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use common::{Env, connect, free_port, json, start_services, stderr};

/// A Bytebase instance `bb` at 3.10.0 with 15 seeded rows; `fail` makes that version's
/// migration fail.
async fn bytebase(pg: &common::Pg, fail: Option<&str>) -> (Env, u16, String) {
    let (_, url) = pg.fresh_db("rr").await;
    let env = Env::new();
    let port = free_port();
    env.write_fleet(&common::bytebase_instance("bb", &url, port, "3.10.0", fail));
    start_services(&env, "bb", &["app"]).await;
    upshift_sim::bytebase::seed_user_rows(&connect(&url).await, 15)
        .await
        .expect("seed");
    (env, port, url)
}

/// `apply bb --to 3.11.1`, killed by the crash hook at `point`; the interrupted run's id.
fn apply_killed_at(env: &Env, point: &str) -> String {
    let out = env
        .command(&["apply", "bb", "--to", "3.11.1", "--yes", "--json"])
        .env("UPSHIFT_CRASH_AT", point)
        .output()
        .expect("run apply");
    assert_eq!(
        out.status.signal(),
        Some(9),
        "{point}: the host was killed: {}",
        stderr(&out)
    );
    newest_run(env)
}

/// The id of the newest run, which must be unfinished.
fn newest_run(env: &Env) -> String {
    let run = json(&env.upshift(&["history", "--json"]))[0].clone();
    assert_eq!(run["status"], "running", "an interrupted run: {run}");
    run["id"].as_str().expect("id").to_string()
}

/// `history --run RUN --json`: the run and its journaled steps.
fn history(env: &Env, run: &str) -> serde_json::Value {
    let out = env.upshift(&["history", "--run", run, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    json(&out)
}

/// The pids of every live Bytebase simulator serving `port` (found in /proc, whoever started
/// them).
fn service_pids(port: u16) -> Vec<u32> {
    let want = port.to_string();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let words: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|w| String::from_utf8_lossy(w).into_owned())
            .collect();
        let is_sim = words.iter().any(|w| w == "simulate")
            && words.iter().any(|w| w == "bytebase")
            && words.windows(2).any(|w| w[0] == "--port" && w[1] == want);
        let zombie = std::fs::read_to_string(entry.path().join("stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .map(|(_, r)| r.trim_start().starts_with('Z'))
            })
            .unwrap_or(true);
        if is_sim && !zombie {
            pids.push(pid);
        }
    }
    pids
}

/// The newest schema version Bytebase recorded in its metadata.
async fn schema_version(url: &str) -> String {
    connect(url)
        .await
        .query_one(
            "SELECT version FROM instance_change_history ORDER BY id DESC LIMIT 1",
            &[],
        )
        .await
        .expect("schema version")
        .get(0)
}

/// What someone does by hand with the service machinery (as `upshift start` would): switch
/// `app` to `version` and start it, waiting until it is healthy.
async fn switch_and_start_by_hand(env: &Env, version: &str) {
    let fleet = upshift::fleet::Fleet::load(&env.fleet()).expect("fleet");
    let session = upshift::ops::Session::open(&env.data(), upshift::caps::EventSink::discard())
        .await
        .expect("session");
    let (_, caps) = upshift::ops::apply::prepare(&session, fleet.instance("bb").expect("bb"))
        .await
        .expect("prepare");
    let service = caps.service();
    service
        .switch_version("app", version, "by hand", None, None)
        .await
        .expect("switch by hand");
    service
        .start("app", "by hand")
        .await
        .expect("start by hand");
    service
        .wait_healthy("app", Duration::from_secs(60), "by hand")
        .await
        .expect("healthy");
}

/// The recorded pid of `app`, if the state file has one.
fn recorded_pid(env: &Env) -> Option<i32> {
    let text = std::fs::read_to_string(env.data().join("services/bb/app.json")).ok()?;
    let state: serde_json::Value = serde_json::from_str(&text).ok()?;
    state["pid"].as_i64().map(|p| p as i32)
}

/// The `found` lines of a report, joined.
fn found(report: &serde_json::Value) -> String {
    report["found"]
        .as_array()
        .map(|f| {
            f.iter()
                .filter_map(|l| l.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

/// Case 1 as reported: the run dies with the service stopped during the backup; then a second,
/// un-gated upgrade runs 3.11.1 on the same database (migrating its schema). Resume must not
/// start 3.10.0 on the 3.11.1 schema nor report "rolled back": it stops with exit 5, naming
/// what it found, touching nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_crash_and_an_upgrade_behind_its_back_resume_stops_before_acting() {
    let Some(pg) = common::pg() else { return };
    for (point, backup_of_this_run) in [("forward:2:started", false), ("forward:2:finished", true)]
    {
        let (env, port, url) = bytebase(pg, None).await;
        let run = apply_killed_at(&env, point);
        assert_eq!(
            common::http_get(port, "/healthz").await.0,
            0,
            "{point}: killed with the service stopped"
        );
        // What a second apply did behind the run's back: 3.11.1 on the same database.
        switch_and_start_by_hand(&env, "3.11.1").await;
        assert_eq!(schema_version(&url).await, "3.11.17", "{point}: migrated");
        let data_before = common::table_checksums(&url).await;
        let pid_before = service_pids(port);
        assert_eq!(pid_before.len(), 1, "{point}");

        let out = env.upshift(&["resume", &run, "--json"]);
        assert_eq!(out.status.code(), Some(5), "{point}: {}", stderr(&out));
        let report = json(&out);
        assert_eq!(report["outcome"], "needs-operator", "{point}: {report}");
        let seen = found(&report);
        assert!(
            seen.contains(
                "service `app` is running at 3.11.1, a version no journaled step of this run set"
            ),
            "{point}: {seen}"
        );
        assert!(
            seen.contains("`schema-version` = 3.11.17, but it was 3.10.2"),
            "{point}: {seen}"
        );
        let help = report["operator_help"].as_str().expect("operator help");
        assert!(
            help.contains("Nothing was touched")
                && help.contains(&format!("upshift abandon {run} --why")),
            "{point}: {help}"
        );
        let history = history(&env, &run);
        if backup_of_this_run {
            let backup = history["steps"]
                .as_array()
                .and_then(|s| s.iter().find(|s| s["step_id"] == "backup-meta"))
                .and_then(|s| s["output"].as_str())
                .and_then(|o| o.split_whitespace().nth(1))
                .expect("the run's backup")
                .to_string();
            assert!(
                help.contains(&format!("upshift restore bb {backup}")),
                "{point}: the restore command names this run's backup {backup}: {help}"
            );
        }

        // Nothing was touched: the same process serves 3.11.1 on the same data.
        assert_eq!(
            service_pids(port),
            pid_before,
            "{point}: exactly one process"
        );
        let (code, body) = common::http_get(port, "/v1/actuator/info").await;
        assert!(
            code == 200 && body.contains("\"3.11.1\""),
            "{point}: {body}"
        );
        assert_eq!(schema_version(&url).await, "3.11.17", "{point}");
        assert_eq!(common::table_checksums(&url).await, data_before, "{point}");
        // A truthful history: not rolled back, still unfinished, with what resume found.
        assert_eq!(history["run"]["status"], "running", "{point}: {history}");
        let steps = history["steps"].as_array().expect("steps");
        assert!(
            !steps.iter().any(|s| s["phase"] == "rollback"),
            "{point}: no rollback ran: {history}"
        );
        let reconcile = steps
            .iter()
            .find(|s| s["phase"] == "reconcile")
            .expect("what resume found is journaled");
        assert_eq!(reconcile["status"], "failed", "{point}: {history}");
        assert!(
            reconcile["error"]
                .as_str()
                .is_some_and(|e| e.contains("a version no journaled step of this run set")),
            "{point}: {history}"
        );
        // Resuming again finds the same and still touches nothing.
        let again = env.upshift(&["resume", &run, "--json"]);
        assert_eq!(again.status.code(), Some(5), "{point}: {}", stderr(&again));
        assert_eq!(service_pids(port), pid_before, "{point}");
    }
}

/// Killed from outside after the switch to 3.11.1, as the new binary starts (and migrates);
/// then someone stops the service by hand. Resume finds it stopped, says so, and the run ends
/// at exactly the old or the new version with every row, one process serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_stopped_by_hand_after_the_switch_is_found_and_the_run_ends_at_one_version() {
    let Some(pg) = common::pg() else { return };
    let (env, port, url) = bytebase(pg, None).await;
    let cols = common::columns(&url).await;
    let rows = common::checksums_over(&url, &cols, &["instance_change_history"]).await;
    let whole = common::table_checksums(&url).await;
    let mut child = env
        .command(&["apply", "bb", "--to", "3.11.1", "--yes", "--json"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn apply");
    // The moment the new binary has a pid, the host dies (SIGKILL from outside).
    let state = env.data().join("services/bb/app.json");
    let mut seen = false;
    for _ in 0..600 {
        let text = std::fs::read_to_string(&state).unwrap_or_default();
        let now: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        if now["version"] == "3.11.1" && now["pid"].is_number() {
            seen = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().expect("SIGKILL the host");
    let status = child.wait().expect("reaped");
    assert!(seen, "the apply reached the start of 3.11.1 ({status})");
    assert_eq!(status.signal(), Some(9), "killed, not finished");
    let run = newest_run(&env);
    // Someone stops the service by hand (SIGTERM to its process group) and waits for it.
    let pid = recorded_pid(&env).expect("a recorded pid");
    nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("stop by hand");
    for _ in 0..400 {
        if service_pids(port).is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    assert!(service_pids(port).is_empty(), "stopped by hand");

    let out = env.upshift(&["resume", &run, "--json"]);
    let report = json(&out);
    let lines = found(&report);
    assert!(
        lines.contains("service `app` is stopped at 3.11.1; the journal has it running"),
        "resume says what it found: {lines}"
    );
    // Killed as the start was journaled, its outcome is re-checked and it runs again;
    // killed once it was journaled as done, its missing effect is put back.
    assert!(
        lines.contains("step `start` had not finished when the host stopped: `app` is not running; it runs again")
            || lines.contains("it is started again before the run goes on"),
        "resume says what it found: {lines}"
    );
    let (_, body) = common::http_get(port, "/v1/actuator/info").await;
    match out.status.code() {
        Some(0) => {
            assert!(body.contains("\"3.11.1\""), "{body}");
            let after = common::checksums_over(&url, &cols, &["instance_change_history"]).await;
            assert_eq!(after, rows, "every seeded row");
        }
        Some(4) => {
            assert!(body.contains("\"3.10.0\""), "{body}");
            assert_eq!(common::table_checksums(&url).await, whole, "identical data");
        }
        other => panic!("exit {other:?}: {}", stderr(&out)),
    }
    assert_eq!(service_pids(port).len(), 1, "exactly one service process");
    let history = history(&env, &run);
    assert_ne!(history["run"]["status"], "running", "{history}");
    let reconcile = history["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["step_id"] == "reconcile"))
        .expect("journaled what it found");
    assert!(
        reconcile["output"]
            .as_str()
            .is_some_and(|o| o.contains("is stopped at 3.11.1")),
        "{history}"
    );
}

/// The migration fails, the host dies in the rollback right after the data restore, and the
/// operator switches back to 3.10.0 and starts it by hand. Resume checks each remaining
/// rollback action's effect: the switch and the start are already done, so no second process
/// is started, and the run ends rolled back with identical data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_finished_by_hand_is_not_started_a_second_time() {
    let Some(pg) = common::pg() else { return };
    let (env, port, url) = bytebase(pg, Some("3.11.1")).await;
    let whole = common::table_checksums(&url).await;
    // Rollback: stop, restore-meta, switch, start, wait; killed once the restore is journaled.
    let run = apply_killed_at(&env, "rollback:1:finished");
    assert!(service_pids(port).is_empty(), "stopped for the restore");
    assert_eq!(schema_version(&url).await, "3.10.2", "restored");
    switch_and_start_by_hand(&env, "3.10.0").await;
    let by_hand = service_pids(port);
    assert_eq!(by_hand.len(), 1);

    let out = env.upshift(&["resume", &run, "--json"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let report = json(&out);
    assert_eq!(report["outcome"], "rolled-back", "{report}");
    let lines = found(&report);
    assert!(
        lines.contains("already runs 3.10.0 again (started by hand)"),
        "{lines}"
    );
    let message = |id: &str| {
        report["steps"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["id"] == id))
            .and_then(|s| s["message"].as_str())
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        message("rollback-switch-app").contains("already at 3.10.0"),
        "{report}"
    );
    assert!(
        message("rollback-start-app").contains("already runs 3.10.0"),
        "{report}"
    );
    assert_eq!(
        service_pids(port),
        by_hand,
        "the same single process serves"
    );
    let (code, body) = common::http_get(port, "/v1/actuator/info").await;
    assert!(code == 200 && body.contains("\"3.10.0\""), "{body}");
    assert_eq!(common::table_checksums(&url).await, whole, "identical data");
    assert_eq!(history(&env, &run)["run"]["status"], "rolled-back");
}

/// Case 1 with a real SIGKILL from outside: the moment the service is stopped for the backup
/// (its recorded pid gone, still at 3.10.0) the host is killed; then 3.11.1 runs on the same
/// database behind the run's back. Resume stops with exit 5 and touches nothing. (When the kill
/// lands after the switch, the world is not the reported one: the test tries again.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_from_outside_during_the_backup_then_upgraded_behind_its_back() {
    let Some(pg) = common::pg() else { return };
    for attempt in 1..=5 {
        let (env, port, url) = bytebase(pg, None).await;
        let mut child = env
            .command(&["apply", "bb", "--to", "3.11.1", "--yes", "--json"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn apply");
        let state = env.data().join("services/bb/app.json");
        let mut stopped = false;
        for _ in 0..20_000 {
            let text = std::fs::read_to_string(&state).unwrap_or_default();
            let now: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            if now["version"] == "3.10.0" && now["pid"].is_null() {
                stopped = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        child.kill().expect("SIGKILL the host");
        let status = child.wait().expect("reaped");
        assert!(stopped, "the apply stopped the service ({status})");
        assert_eq!(status.signal(), Some(9), "killed, not finished");
        let run = newest_run(&env);
        let journal = history(&env, &run);
        let last = journal["steps"]
            .as_array()
            .and_then(|s| s.last())
            .and_then(|s| s["step_id"].as_str())
            .unwrap_or_default()
            .to_string();
        let service = std::fs::read_to_string(&state).unwrap_or_default();
        if !matches!(last.as_str(), "stop" | "backup-meta") || !service.contains("\"3.10.0\"") {
            eprintln!("attempt {attempt}: killed at `{last}`, past the backup; again");
            continue;
        }
        switch_and_start_by_hand(&env, "3.11.1").await;
        let data_before = common::table_checksums(&url).await;
        let pids = service_pids(port);
        assert_eq!(pids.len(), 1);
        let out = env.upshift(&["resume", &run, "--json"]);
        assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
        let report = json(&out);
        assert!(
            found(&report).contains("a version no journaled step of this run set"),
            "{report}"
        );
        assert_eq!(service_pids(port), pids, "exactly the one process");
        let (code, body) = common::http_get(port, "/v1/actuator/info").await;
        assert!(code == 200 && body.contains("\"3.11.1\""), "{body}");
        assert_eq!(schema_version(&url).await, "3.11.17");
        assert_eq!(common::table_checksums(&url).await, data_before);
        let journal = history(&env, &run);
        assert_eq!(journal["run"]["status"], "running", "{journal}");
        assert!(
            !journal["steps"]
                .as_array()
                .expect("steps")
                .iter()
                .any(|s| s["phase"] == "rollback"),
            "{journal}"
        );
        return;
    }
    panic!("in 5 attempts the kill never landed while the service was stopped for the backup");
}
