//! Durable runs (issue 5): one lease per instance with expiry, heartbeat and a fencing token.
//! A second apply is refused naming the holder; a dead holder's lease expires and is taken
//! over; a holder whose lease moved is refused before its next step. Real PostgreSQL, real
//! processes, the real SQLite state store.

mod common;

use std::time::Duration;

use common::{Env, connect, free_port, json, start_services, stderr};
use std::sync::Arc;

use upshift::lease::LeaseError;
use upshift::state::StateStore;

/// The two 30-instance tests take turns: together they would hold sixty simulated instances and
/// their database sessions at once.
static FLEET_SIZED: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn store(env: &Env) -> Arc<dyn StateStore> {
    std::fs::create_dir_all(env.data()).expect("data dir");
    upshift::state::open(&env.data().join("state.db"))
        .await
        .expect("state")
}

#[tokio::test]
async fn an_expired_lease_is_taken_over_and_the_old_holder_is_fenced_out() {
    let env = Env::new();
    let leases = store(&env).await;
    let a = leases
        .acquire("kw", "holder A", Duration::from_millis(300))
        .await
        .expect("A takes the lease");
    match leases
        .acquire("kw", "holder B", Duration::from_secs(30))
        .await
    {
        Err(LeaseError::Held { holder, token, .. }) => {
            assert_eq!((holder.as_str(), token), ("holder A", a.token));
        }
        other => panic!("B must be refused while A holds it: {other:?}"),
    }
    // A renews while alive...
    let a = leases
        .renew(&a, Duration::from_millis(300))
        .await
        .expect("renew");
    leases.check(&a).await.expect("A still holds it");
    // ...then dies: its lease runs out and B takes over with a larger token.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let b = leases
        .acquire("kw", "holder B", Duration::from_secs(30))
        .await
        .expect("B takes the expired lease");
    assert_eq!(b.token, a.token + 1, "the fencing token grows");
    // A, back from the dead, can neither act nor renew, nor release B's lease.
    match leases.check(&a).await {
        Err(LeaseError::Lost { by, .. }) => assert!(by.contains("holder B"), "{by}"),
        other => panic!("A must be fenced out: {other:?}"),
    }
    assert!(matches!(
        leases.renew(&a, Duration::from_secs(30)).await,
        Err(LeaseError::Lost { .. })
    ));
    leases
        .release(&a)
        .await
        .expect("release is a no-op for a lost lease");
    leases.check(&b).await.expect("B still holds it");
    // Other instances are independent.
    leases
        .acquire("om", "holder A", Duration::from_secs(30))
        .await
        .expect("another instance");
}

/// A Bytebase instance `bb` at 3.10.0 with seeded rows.
async fn bytebase(pg: &common::Pg) -> (Env, u16) {
    let (_, url) = pg.fresh_db("bb").await;
    let env = Env::new();
    let port = free_port();
    env.write_fleet(&common::bytebase_instance("bb", &url, port, "3.10.0", None));
    start_services(&env, "bb", &["app"]).await;
    upshift_sim::bytebase::seed_user_rows(&connect(&url).await, 10)
        .await
        .expect("seed");
    (env, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_apply_is_refused_naming_the_holder() {
    let Some(pg) = common::pg() else { return };
    let (env, port) = bytebase(pg).await;
    let session = upshift::ops::Session::open(&env.data(), upshift::caps::EventSink::discard())
        .await
        .expect("session");
    let held = session
        .hold_lease("bb", "an apply elsewhere")
        .await
        .expect("first holder");

    let out = env.upshift(&["apply", "bb", "--to", "3.11.1", "--yes", "--json"]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("an apply elsewhere") && err.contains("being worked on"),
        "{err}"
    );
    let (status, body) = common::http_get(port, "/v1/actuator/info").await;
    assert!(
        status == 200 && body.contains("3.10.0"),
        "untouched: {body}"
    );

    // Once the holder is done, the next apply goes ahead.
    drop(held);
    let out = env.upshift(&["apply", "bb", "--to", "3.11.1", "--yes", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(json(&out)["outcome"], "succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_lease_moved_stops_before_its_next_step() {
    let Some(pg) = common::pg() else { return };
    let (name, url) = pg.fresh_db("om").await;
    let db = upshift_sim::fleet::OmDatabase {
        url: &url,
        scheme: "postgresql",
        port: common::url_port(&url),
        user: &name,
        name: &name,
    };
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_upshift"));
    let (port, admin) = (free_port(), free_port());
    let fleet = upshift_sim::fleet::openmetadata("om", exe, &db, "1.9.0", (port, admin), "");
    let env = Env::new();
    env.write_fleet(&fleet);
    start_services(&env, "om", &["migrate", "server"]).await;
    // From now on the migrate job takes two seconds: time for someone else to take the lease.
    let slow = format!(
        "command = \"sh -c \\\"sleep 2 && exec '{}' simulate openmetadata --version {{version}} migrate\\\"\"",
        exe.display()
    );
    let fast = format!(
        "command = \"'{}' simulate openmetadata --version {{version}} migrate\"",
        exe.display()
    );
    assert!(fleet.contains(&fast));
    env.write_fleet(&fleet.replace(&fast, &slow));

    let child = std::process::Command::new(env!("CARGO_BIN_EXE_upshift"))
        .arg("--fleet")
        .arg(env.fleet())
        .arg("--data")
        .arg(env.data())
        .args(["apply", "om", "--to", "1.12.1", "--yes", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn apply");
    // Wait until the migrate job runs, then move the lease as a holder elsewhere would.
    let leases = store(&env).await;
    let mut stolen = false;
    for _ in 0..1200 {
        std::thread::sleep(Duration::from_millis(50));
        let state: serde_json::Value =
            std::fs::read_to_string(env.data().join("services/om/migrate.json"))
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_default();
        // The job runs: its pid is recorded with the new version.
        if state["version"] == "1.12.1" && state["pid"].is_number() {
            let c = rusqlite::Connection::open(env.data().join("state.db")).expect("state");
            let n = c
                .execute("UPDATE leases SET token = token + 1, holder = 'an intruder' WHERE instance = 'om'", [])
                .expect("move the lease");
            stolen = n == 1;
            break;
        }
    }
    drop(leases);
    assert!(stolen, "the run reached its migrate step");
    let out = child.wait_with_output().expect("apply ends");
    // A lost lease: exit 6, naming who has the instance now; no rollback, nothing written.
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(
        said.contains("was lost") && said.contains("an intruder"),
        "{said}"
    );
    // It stopped where it was: the server it had stopped was not started again, no rollback
    // step was journaled, and the run row is as the host left it before it lost the lease.
    assert_eq!(common::http_get(port, "/api/v1/version").await.0, 0);
    let c = rusqlite::Connection::open(env.data().join("state.db")).expect("state");
    let (status, rollbacks): (String, i64) = c
        .query_row(
            "SELECT r.status, (SELECT COUNT(*) FROM steps s WHERE s.run_id = r.id AND s.phase = 'rollback')
             FROM runs r WHERE r.instance = 'om'",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .expect("the run");
    assert_eq!((status.as_str(), rollbacks), ("running", 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_30_instance_rollout_halts_exactly_when_the_failure_budget_is_spent() {
    let Some(pg) = common::pg() else { return };
    let _turn = FLEET_SIZED.lock().await;
    // 30 Bytebase 3.10.0 instances; the 5th, 12th and 20th fail their migration to 3.11.1.
    let failing = [5usize, 12, 20];
    let env = Env::new();
    let mut fleet = String::new();
    let mut ports = Vec::new();
    for n in 1..=30usize {
        let (_, url) = pg.fresh_db("fleet").await;
        let port = free_port();
        ports.push(port);
        let fail = failing.contains(&n).then_some("3.11.1");
        fleet.push_str(
            &common::bytebase_instance(&format!("bb{n:02}"), &url, port, "3.10.0", fail).replace(
                "product = \"bytebase\"",
                &format!(
                    "product = \"bytebase\"\nlabels = {{ ring = \"{}\" }}",
                    if n <= 4 { "canary" } else { "main" }
                ),
            ),
        );
    }
    env.write_fleet(&fleet);
    for n in 1..=30usize {
        start_services(&env, &format!("bb{n:02}"), &["app"]).await;
    }

    let out = env.upshift(&[
        "apply",
        "--all",
        "--to",
        "3.11.1",
        "--waves",
        "1,10%,rest",
        "--parallel",
        "4",
        "--max-failures",
        "2",
        "--yes",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let report = json(&out);
    assert_eq!(report["waves"], serde_json::json!([1, 3, 26]));
    let events = String::from_utf8_lossy(&out.stderr).into_owned();
    let status: Vec<(String, String)> = report["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .map(|i| {
            (
                i["instance"].as_str().unwrap_or_default().to_string(),
                i["status"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(status.len(), 30);
    let of = |n: usize| status[n - 1].1.as_str();
    // The canary waves went through.
    assert!((1..=4).all(|n| of(n) == "upgraded"), "{status:?}");
    // Exactly the budget's worth of failures: the 5th and the 12th; the 20th never started.
    assert_eq!(
        (of(5), of(12)),
        ("rolled-back", "rolled-back"),
        "{status:?}"
    );
    assert_eq!(of(20), "not-started", "{status:?}");
    assert_eq!(status.iter().filter(|(_, s)| s == "rolled-back").count(), 2);
    // Nothing starts after the budget is spent: at most the 3 runs already in flight beside the
    // 12th finished; everything after them stayed untouched.
    assert!((16..=30).all(|n| of(n) == "not-started"), "{status:?}");
    assert!(
        (6..=15)
            .filter(|n| *n != 12)
            .all(|n| matches!(of(n), "upgraded" | "not-started")),
        "{status:?}"
    );
    assert!(
        report["halted"]
            .as_str()
            .is_some_and(|h| h.contains("budget")),
        "{report}"
    );
    // The fleet's progress is streamed: one event at the start and one per instance that ran.
    let ran = status.iter().filter(|(_, s)| s != "not-started").count();
    let fleet_events = events
        .lines()
        .filter(|l| l.contains("\"event\":\"fleet\""))
        .count();
    assert_eq!(fleet_events, ran + 1, "{events}");
    for (n, (_, s)) in status.iter().enumerate() {
        let want = if s == "upgraded" { "3.11.1" } else { "3.10.0" };
        let (code, body) = common::http_get(ports[n], "/v1/actuator/info").await;
        assert!(
            code == 200 && body.contains(want),
            "bb{:02}: {s} but serves {body}",
            n + 1
        );
    }
    // The report, in Markdown and JSON.
    let id = report["id"].as_str().expect("id");
    let md = std::fs::read_to_string(env.data().join(format!("reports/{id}.md")))
        .expect("markdown report");
    assert!(
        md.contains("## bb12 (bytebase)")
            && md.contains("Why it was rolled back")
            && md.contains("| forward | backup-meta | succeeded |"),
        "{md}"
    );
    assert!(env.data().join(format!("reports/{id}.json")).exists());

    // Selection by label: the canary ring only, already there now.
    let out = env.upshift(&[
        "apply",
        "--select",
        "label:ring=canary",
        "--to",
        "3.11.1",
        "--yes",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report = json(&out);
    assert_eq!(report["instances"].as_array().map(Vec::len), Some(4));
    assert_eq!(report["counts"]["already-there"], 4);
}

/// The id of the newest run in `env`'s state.
fn newest_run(env: &Env) -> serde_json::Value {
    let out = env.upshift(&["history", "--json"]);
    json(&out)[0].clone()
}

/// Kill the host (SIGKILL) at `point`, then resume: the run must end as `expect`.
async fn crash_then_resume(
    pg: &common::Pg,
    point: &str,
    fail: Option<&str>,
) -> (serde_json::Value, bool) {
    let (_, url) = pg.fresh_db("crash").await;
    let env = Env::new();
    let port = free_port();
    env.write_fleet(&common::bytebase_instance("bb", &url, port, "3.10.0", fail));
    start_services(&env, "bb", &["app"]).await;
    upshift_sim::bytebase::seed_user_rows(&connect(&url).await, 15)
        .await
        .expect("seed");
    let cols = common::columns(&url).await;
    let before = common::checksums_over(&url, &cols, &["instance_change_history"]).await;
    let whole_before = common::table_checksums(&url).await;

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_upshift"))
        .arg("--fleet")
        .arg(env.fleet())
        .arg("--data")
        .arg(env.data())
        .args(["apply", "bb", "--to", "3.11.1", "--yes", "--json"])
        .env("UPSHIFT_CRASH_AT", point)
        .output()
        .expect("run apply");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        out.status.signal(),
        Some(9),
        "{point}: the host was killed: {}",
        stderr(&out)
    );
    let run = newest_run(&env);
    assert_eq!(
        run["status"], "running",
        "{point}: the journal shows an interrupted run"
    );
    let out = env.upshift(&["resume", run["id"].as_str().expect("id"), "--json"]);
    let report = json(&out);
    let code = out.status.code();
    // Whatever happened, the instance is at the old or the new version, with every row.
    let (_, body) = common::http_get(port, "/v1/actuator/info").await;
    let upgraded = body.contains("\"3.11.1\"");
    assert!(
        upgraded || body.contains("\"3.10.0\""),
        "{point}: serves {body}"
    );
    if upgraded {
        assert_eq!(code, Some(0), "{point}: {}", stderr(&out));
        let after = common::checksums_over(&url, &cols, &["instance_change_history"]).await;
        assert_eq!(before, after, "{point}: every seeded row");
    } else {
        assert_eq!(code, Some(4), "{point}: {}", stderr(&out));
        assert_eq!(
            common::table_checksums(&url).await,
            whole_before,
            "{point}: identical data"
        );
    }
    assert_ne!(
        newest_run(&env)["status"],
        "running",
        "{point}: the run ended"
    );
    // The journal tells the truth: no step is left `started` (the one the host died in was
    // closed by the resume with what it found, or run again), and each names who did it.
    let journal = json(&env.upshift(&[
        "history",
        "--run",
        run["id"].as_str().expect("id"),
        "--json",
    ]));
    let steps = journal["steps"].as_array().expect("steps");
    assert!(
        steps.iter().all(|s| s["status"] != "started"),
        "{point}: no step is left started: {journal}"
    );
    assert!(
        steps
            .iter()
            .all(|s| s["holder"].as_str().is_some_and(|h| h.contains(" pid "))),
        "{point}: every step names its holder: {journal}"
    );
    if point.ends_with(":started") {
        let interrupted = point.split(':').collect::<Vec<_>>();
        let step = steps
            .iter()
            .find(|s| {
                s["phase"] == interrupted[0]
                    && s["seq"].as_u64().map(|n| n.to_string()).as_deref() == Some(interrupted[1])
            })
            .expect("the interrupted step's row");
        assert!(
            step["holder"].as_str().unwrap_or("").contains("(resume "),
            "{point}: the interrupted step was closed or run again by the resume: {step}"
        );
    }
    (report, upgraded)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_at_every_step_boundary_the_upgrade_resumes_to_the_new_version() {
    let Some(pg) = common::pg() else { return };
    // preflight, stop, backup-meta, switch, start, wait-healthy, check-version
    for seq in 0..7 {
        for when in ["started", "finished"] {
            let point = format!("forward:{seq}:{when}");
            let (report, upgraded) = crash_then_resume(pg, &point, None).await;
            assert!(upgraded, "{point}: {report}");
            let done_before: Vec<&str> = report["steps"]
                .as_array()
                .expect("steps")
                .iter()
                .filter(|s| {
                    s["message"]
                        .as_str()
                        .is_some_and(|m| m.starts_with("done before the host stopped"))
                })
                .filter_map(|s| s["id"].as_str())
                .collect();
            // Finished steps are skipped, never repeated.
            let finished = if when == "finished" { seq + 1 } else { seq };
            assert_eq!(done_before.len(), finished, "{point}: {report}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_while_rolling_back_the_rollback_is_finished() {
    let Some(pg) = common::pg() else { return };
    // The migration fails at start; the rollback is stop, restore-meta, switch, start, wait.
    for seq in 0..5 {
        for when in ["started", "finished"] {
            let point = format!("rollback:{seq}:{when}");
            let (report, upgraded) = crash_then_resume(pg, &point, Some("3.11.1")).await;
            assert!(!upgraded, "{point}");
            assert_eq!(report["outcome"], "rolled-back", "{point}: {report}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_job_with_an_unknown_outcome_is_never_repeated() {
    let Some(pg) = common::pg() else { return };
    let om = om_subject(pg).await;
    let (env, port, url) = (&om.env, om.port, om.db_url.clone());
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_upshift"));
    let before = common::table_checksums(&url).await;

    // The host dies as the migrate job (step 6) is journaled as started.
    let out = std::process::Command::new(exe)
        .arg("--fleet")
        .arg(env.fleet())
        .arg("--data")
        .arg(env.data())
        .args(["apply", "om", "--to", "1.12.1", "--yes", "--json"])
        .env("UPSHIFT_CRASH_AT", "forward:5:started")
        .output()
        .expect("apply");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(9));
    let run = newest_run(env);
    let out = env.upshift(&["resume", run["id"].as_str().expect("id"), "--json"]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    let report = json(&out);
    assert!(
        report["failure"]
            .as_str()
            .unwrap_or("")
            .contains("not repeated blindly"),
        "{report}"
    );
    let help = report["operator_help"].as_str().expect("operator help");
    assert!(
        help.contains("service `server`: stopped version 1.12.1"),
        "{help}"
    );
    // The printed command puts data and version back.
    let restore = help
        .lines()
        .find(|l| l.trim_start().starts_with("upshift restore"))
        .expect("a restore command")
        .trim()
        .to_string();
    let mut args: Vec<&str> = restore.split_whitespace().skip(1).collect();
    args.extend(["--yes", "--json"]);
    let out = env.upshift(&args);
    assert_eq!(out.status.code(), Some(0), "{restore}: {}", stderr(&out));
    let (_, body) = common::http_get(port, "/api/v1/version").await;
    assert!(body.contains("\"1.9.0\""), "{body}");
    let after = common::table_checksums(&url).await;
    for (table, sum) in &before {
        if table.ends_with("_entity") {
            assert_eq!(after.get(table), Some(sum), "{table}");
        }
    }
}

/// A product instance set up for the crash harness: its env, the API port and version path,
/// the versions, and how to read its seeded data.
struct Subject {
    env: Env,
    instance: &'static str,
    port: u16,
    version_path: &'static str,
    from: &'static str,
    to: &'static str,
    db_url: String,
}

async fn om_subject(pg: &common::Pg) -> Subject {
    let (name, url) = pg.fresh_db("omc").await;
    let db = upshift_sim::fleet::OmDatabase {
        url: &url,
        scheme: "postgresql",
        port: common::url_port(&url),
        user: &name,
        name: &name,
    };
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_upshift"));
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
    start_services(&env, "om", &["migrate"]).await;
    upshift_sim::openmetadata::seed_pg(&connect(&url).await, 10)
        .await
        .expect("seed");
    start_services(&env, "om", &["server"]).await;
    Subject {
        env,
        instance: "om",
        port,
        version_path: "/api/v1/version",
        from: "\"1.9.0\"",
        to: "\"1.12.1\"",
        db_url: url,
    }
}

async fn devlake_subject(pg: &common::Pg) -> Subject {
    let (_, url) = pg.fresh_db("dlc").await;
    let env = Env::new();
    let port = free_port();
    let config = env.dir.path().join("config");
    std::fs::create_dir_all(&config).expect("config");
    std::fs::write(
        config.join(".env"),
        format!("PORT={port}\nDB_URL={url}\nENCRYPTION_SECRET=crash-secret\n"),
    )
    .expect(".env");
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_upshift"));
    env.write_fleet(&upshift_sim::fleet::devlake(
        "dl", exe, &url, port, "v1.0.0", &config, "",
    ));
    start_services(&env, "dl", &["app"]).await;
    upshift_sim::devlake::seed_pg(&connect(&url).await, "crash-secret", 10)
        .await
        .expect("seed");
    Subject {
        env,
        instance: "dl",
        port,
        version_path: "/version",
        from: "v1.0.0@",
        to: "v1.0.1@",
        db_url: url,
    }
}

/// Row counts of the seeded tables (entities, repos …): what must survive anything.
async fn seeded_counts(url: &str) -> Vec<(String, i64)> {
    common::table_checksums(url)
        .await
        .into_iter()
        .filter(|(t, _)| {
            t.ends_with("_entity")
                || t == "repos"
                || t == "pull_requests"
                || t == "_tool_github_connections"
        })
        .map(|(t, (n, _))| (t, n))
        .collect()
}

/// Kill the host at `point` of `s`'s upgrade, resume, and (if resume hands over to an operator)
/// run the restore command it prints. The instance ends at the old or the new version with every
/// seeded row.
async fn crash_resume_recover(s: &Subject, point: &str) -> &'static str {
    let before = seeded_counts(&s.db_url).await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_upshift"))
        .arg("--fleet")
        .arg(s.env.fleet())
        .arg("--data")
        .arg(s.env.data())
        .args([
            "apply",
            s.instance,
            "--to",
            s.to.trim_matches(['"', '@']),
            "--yes",
            "--json",
        ])
        .env("UPSHIFT_CRASH_AT", point)
        .output()
        .expect("apply");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(9), "{point}: {}", stderr(&out));
    let run = newest_run(&s.env);
    let out = s
        .env
        .upshift(&["resume", run["id"].as_str().expect("id"), "--json"]);
    let how = match out.status.code() {
        Some(0) => "resumed",
        Some(4) => "rolled back",
        Some(5) => {
            let report = json(&out);
            let help = report["operator_help"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let restore = help
                .lines()
                .find(|l| l.trim_start().starts_with("upshift restore"))
                .unwrap_or_else(|| panic!("{point}: exit 5 without a restore command: {report}"))
                .trim()
                .to_string();
            let mut args: Vec<&str> = restore.split_whitespace().skip(1).collect();
            args.extend(["--yes", "--json"]);
            let out = s.env.upshift(&args);
            assert_eq!(
                out.status.code(),
                Some(0),
                "{point}: {restore}: {}",
                stderr(&out)
            );
            "restored by the operator command"
        }
        other => panic!("{point}: resume exited {other:?}: {}", stderr(&out)),
    };
    let (_, body) = common::http_get(s.port, s.version_path).await;
    assert!(
        body.contains(s.from) || body.contains(s.to),
        "{point} ({how}): serves {body}"
    );
    assert_eq!(
        seeded_counts(&s.db_url).await,
        before,
        "{point} ({how}): every seeded row"
    );
    how
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openmetadata_and_devlake_survive_a_kill_at_every_step_boundary() {
    let Some(pg) = common::pg() else { return };
    let mut outcomes = Vec::new();
    // Both plans have nine steps.
    for seq in 0..9 {
        for when in ["started", "finished"] {
            let point = format!("forward:{seq}:{when}");
            let om = om_subject(pg).await;
            outcomes.push(("om", point.clone(), crash_resume_recover(&om, &point).await));
            let dl = devlake_subject(pg).await;
            outcomes.push((
                "devlake",
                point.clone(),
                crash_resume_recover(&dl, &point).await,
            ));
        }
    }
    // The steps whose effect cannot be established were handed to the operator, never repeated:
    // OpenMetadata's migrate job (6th step) and DevLake's gate confirmation (7th step).
    for (product, point, how) in &outcomes {
        let unknown = matches!(
            (*product, point.as_str()),
            ("om", "forward:5:started") | ("devlake", "forward:6:started")
        );
        assert_eq!(
            *how == "restored by the operator command",
            unknown,
            "{product} {point}: {how}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_agents_share_postgres_state_and_a_killed_one_loses_nothing() {
    let Some(pg) = common::pg() else { return };
    let _turn = FLEET_SIZED.lock().await;
    let (_, state_url) = pg.fresh_db("state").await;
    let failing = [7usize, 19];
    let fleet = common::agents::AgentFleet::bytebase(pg, "bb", 30, &failing, "", 2).await;
    let ports = &fleet.ports;
    fleet.enqueue_all(&state_url, "3.11.1");

    let a = fleet.spawn_agent("agent-a", &state_url, &[]);
    let b = fleet.spawn_agent("agent-b", &state_url, &[]);
    let c = fleet.spawn_agent("agent-c", &state_url, &[]);

    // Kill agent-b (SIGKILL) while one of its runs is under way.
    let state = connect(&state_url).await;
    let mut victim = None;
    for _ in 0..600 {
        let rows = state
            .query(
                "SELECT q.instance FROM upshift_queue q JOIN upshift_runs r ON r.instance = q.instance \
                 WHERE q.agent = 'agent-b' AND q.status = 'claimed' AND r.status = 'running'",
                &[],
            )
            .await
            .unwrap_or_default();
        if let Some(r) = rows.first() {
            victim = Some(r.get::<_, String>(0));
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let victim = victim.expect("agent-b was caught mid-run");
    b.signal(nix::sys::signal::Signal::SIGKILL);
    drop(b);

    let outputs: Vec<serde_json::Value> = [a, c]
        .into_iter()
        .map(|mut agent| {
            let out = agent
                .wait(Duration::from_secs(600))
                .unwrap_or_else(|| panic!("{} did not finish", agent.name));
            assert_eq!(out.code, Some(0), "an agent failed: {}", out.tail());
            serde_json::from_str(&out.stdout).expect("agent JSON")
        })
        .collect();

    // Every instance was upgraded, or rolled back, exactly once.
    for n in 1..=30usize {
        let name = format!("bb{n:02}");
        let runs = state
            .query(
                "SELECT status FROM upshift_runs WHERE instance = $1 AND kind = 'upgrade'",
                &[&name],
            )
            .await
            .expect("runs");
        let statuses: Vec<String> = runs.iter().map(|r| r.get(0)).collect();
        let want = if failing.contains(&n) {
            "rolled_back"
        } else {
            "succeeded"
        };
        assert_eq!(statuses, [want], "{name}: exactly one run");
        let served = if failing.contains(&n) {
            "3.10.0"
        } else {
            "3.11.1"
        };
        let (_, body) = common::http_get(ports[n - 1], "/v1/actuator/info").await;
        assert!(body.contains(served), "{name} serves {body}");
    }
    let done: i64 = state
        .query_one(
            "SELECT count(*) FROM upshift_queue WHERE status = 'done'",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(done, 30);
    // The killed agent's item was taken over by another agent and its run resumed.
    let taken_over = outputs
        .iter()
        .flat_map(|o| o.as_array().cloned().unwrap_or_default())
        .find(|h| h["instance"] == victim.as_str())
        .expect("the victim's item was handled by a surviving agent");
    assert_eq!(taken_over["reclaimed"], true, "{taken_over}");
    assert_eq!(taken_over["resumed"], true, "{taken_over}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kwdb_in_containers_survives_a_kill_at_every_step_boundary() {
    use common::docker::Containers;
    use common::kwdb::{instance, node, ready, rows, version, wait_sql};
    let Some(pg) = ready() else { return };
    let mut handed_over = Vec::new();
    // preflight, export, stop, snapshot-store, switch, start, wait-healthy, compare-counts
    for seq in 0..8 {
        for when in ["started", "finished"] {
            let point = format!("forward:{seq}:{when}");
            let env = Env::new();
            let (_, backing) = pg.fresh_storage_db("kwc").await;
            let kw = node(env.dir.path(), "3.0.0", &backing, None, &[], true);
            let _cleanup = Containers(vec![
                kw.name.clone(),
                format!("{}-upshift-previous", kw.name),
                format!("{}-upshift-next", kw.name),
            ]);
            upshift_sim::kwdb::seed(&wait_sql(kw.sql).await, 20)
                .await
                .expect("seed");
            let before = rows(kw.sql).await;
            env.write_fleet(&instance("kw", &kw, &kw.store.join("extern"), None));
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_upshift"))
                .arg("--fleet")
                .arg(env.fleet())
                .arg("--data")
                .arg(env.data())
                .args(["apply", "kw", "--to", "3.1.0", "--yes", "--json"])
                .env("UPSHIFT_CRASH_AT", &point)
                .output()
                .expect("apply");
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(out.status.signal(), Some(9), "{point}: {}", stderr(&out));
            let run = newest_run(&env);
            let out = env.upshift(&["resume", run["id"].as_str().expect("id"), "--json"]);
            let report = json(&out);
            match out.status.code() {
                Some(0) => assert!(
                    version(kw.sql).await.starts_with("KaiwuDB V3.1.0 "),
                    "{point}"
                ),
                Some(5) => {
                    handed_over.push(point.clone());
                    // Handed to the operator before anything was stopped: it still serves 3.0.0.
                    let help = report["operator_help"].as_str().unwrap_or_default();
                    assert!(help.contains("the data was not changed"), "{point}: {help}");
                    assert!(
                        version(kw.sql).await.starts_with("KaiwuDB V3.0.0 "),
                        "{point}"
                    );
                }
                other => panic!("{point}: resume exited {other:?}: {}", stderr(&out)),
            }
            assert_eq!(
                rows(kw.sql).await,
                before,
                "{point}: every row, value and timestamp"
            );
        }
    }
    // Only the export (an adapter step that writes) had an outcome that could not be established.
    assert_eq!(handed_over, ["forward:1:started"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_can_finish_a_run_after_establishing_the_unknown_step() {
    let Some(pg) = common::pg() else { return };
    let om = om_subject(pg).await;
    let exe = env!("CARGO_BIN_EXE_upshift");
    let out = std::process::Command::new(exe)
        .arg("--fleet")
        .arg(om.env.fleet())
        .arg("--data")
        .arg(om.env.data())
        .args(["apply", "om", "--to", "1.12.1", "--yes", "--json"])
        .env("UPSHIFT_CRASH_AT", "forward:5:started")
        .output()
        .expect("apply");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(9));
    let run = newest_run(&om.env);
    let id = run["id"].as_str().expect("id").to_string();
    let out = om.env.upshift(&["resume", &id, "--json"]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    let help = json(&out)["operator_help"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let finish = format!("upshift resume {id} --step-done migrate");
    assert!(help.contains(&finish), "{help}");
    // The run was marked failed; an operator who ran the job by hand and saw it succeed goes on.
    let fleet = std::fs::read_to_string(om.env.fleet()).expect("fleet");
    let env_line = fleet
        .lines()
        .find(|l| l.starts_with("env = "))
        .expect("env line")
        .trim_start_matches("env = ")
        .to_string();
    let vars: toml::Table = toml::from_str(&format!("v = {env_line}")).expect("env table");
    let mut job = std::process::Command::new(exe);
    job.args(["simulate", "openmetadata", "--version", "1.12.1", "migrate"]);
    for (k, v) in vars["v"].as_table().expect("table") {
        job.env(k, v.as_str().unwrap_or_default());
    }
    assert!(job.output().expect("migrate by hand").status.success());
    // Without saying which step completed, the handed-over run is not resumed.
    let out = om.env.upshift(&["resume", &id, "--json"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--step-done"), "{}", stderr(&out));
    let out = om
        .env
        .upshift(&["resume", &id, "--step-done", "migrate", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report = json(&out);
    assert_eq!(report["outcome"], "succeeded", "{report}");
    let migrate = report["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .find(|s| s["id"] == "migrate")
        .cloned()
        .unwrap_or_default();
    assert!(
        migrate["message"]
            .as_str()
            .is_some_and(|m| m.contains("operator established")),
        "{report}"
    );
    let (_, body) = common::http_get(om.port, "/api/v1/version").await;
    assert!(body.contains("\"1.12.1\""), "{body}");
    assert_eq!(newest_run(&om.env)["status"], "succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_applies_on_one_instance_one_is_refused() {
    let Some(pg) = common::pg() else { return };
    let om = om_subject(pg).await;
    // The first apply's migrate job takes two seconds.
    let fleet = std::fs::read_to_string(om.env.fleet()).expect("fleet");
    let exe = env!("CARGO_BIN_EXE_upshift");
    let fast = format!("command = \"'{exe}' simulate openmetadata --version {{version}} migrate\"");
    let slow = format!(
        "command = \"sh -c \\\"sleep 2 && exec '{exe}' simulate openmetadata --version {{version}} migrate\\\"\""
    );
    assert!(fleet.contains(&fast));
    om.env.write_fleet(&fleet.replace(&fast, &slow));
    let first = std::process::Command::new(exe)
        .arg("--fleet")
        .arg(om.env.fleet())
        .arg("--data")
        .arg(om.env.data())
        .args(["apply", "om", "--to", "1.12.1", "--yes", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("first apply");
    // Wait until the first apply holds the lease (its run is journaled).
    for _ in 0..100 {
        if newest_run(&om.env)["status"] == "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let second = om
        .env
        .upshift(&["apply", "om", "--to", "1.12.1", "--yes", "--json"]);
    assert_eq!(second.status.code(), Some(6), "{}", stderr(&second));
    assert!(
        stderr(&second).contains("apply --to 1.12.1"),
        "names the holder: {}",
        stderr(&second)
    );
    let first = first.wait_with_output().expect("first ends");
    assert_eq!(
        first.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let (_, body) = common::http_get(om.port, "/api/v1/version").await;
    assert!(body.contains("\"1.12.1\""), "{body}");
    // One run, not two.
    let history = json(&om.env.upshift(&["history", "om", "--json"]));
    assert_eq!(history.as_array().map(Vec::len), Some(1), "{history}");
}

/// `upshift backups` and `upshift history` read the state `--state` names: an apply recorded in
/// shared PostgreSQL state is listed with the same `--state`, and not from the data directory's
/// SQLite state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_and_history_read_the_state_that_state_names() {
    let Some(pg) = common::pg() else { return };
    let (_, state_url) = pg.fresh_db("state").await;
    let (env, _) = bytebase(pg).await;
    let shared = |args: &[&str]| {
        let mut all = vec!["--state", state_url.as_str()];
        all.extend_from_slice(args);
        env.upshift(&all)
    };
    let out = shared(&["apply", "bb", "--to", "3.11.1", "--yes", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report = json(&out);
    assert_eq!(report["outcome"], "succeeded");
    let run_id = report["run_id"].as_str().expect("run id").to_string();
    let taken: Vec<String> = report["backups"]
        .as_array()
        .expect("backups")
        .iter()
        .map(|b| b["id"].as_str().expect("backup id").to_string())
        .collect();
    assert!(!taken.is_empty(), "the apply took a backup: {report}");

    // With the same --state, both list what the apply recorded.
    let out = shared(&["history", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let runs = json(&out);
    let runs = runs.as_array().expect("runs");
    assert!(
        runs.iter().any(|r| r["id"] == run_id.as_str()
            && r["status"] == "succeeded"
            && r["instance"] == "bb"),
        "{runs:?}"
    );
    let out = shared(&["history", "--run", &run_id, "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let one = json(&out);
    assert_eq!(one["run"]["id"], run_id.as_str());
    assert!(
        !one["steps"].as_array().expect("steps").is_empty(),
        "the journaled steps: {one}"
    );
    let out = shared(&["backups", "bb", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let listed: Vec<String> = json(&out)
        .as_array()
        .expect("backups")
        .iter()
        .map(|b| b["id"].as_str().expect("backup id").to_string())
        .collect();
    for id in &taken {
        assert!(listed.contains(id), "{id} listed in {listed:?}");
    }

    // The SQLite state in the data directory never saw them.
    let out = env.upshift(&["history", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        !json(&out)
            .as_array()
            .expect("runs")
            .iter()
            .any(|r| r["id"] == run_id.as_str()),
        "not in SQLite"
    );
    let out = env.upshift(&["history", "--run", &run_id]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = env.upshift(&["backups", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let local = json(&out);
    assert!(
        !local
            .as_array()
            .expect("backups")
            .iter()
            .any(|b| taken.iter().any(|id| b["id"] == id.as_str())),
        "not in SQLite: {local}"
    );
}

/// In shared PostgreSQL state every write about a run is fenced by the writer's lease token, in
/// the same statement: a holder whose lease was taken over writes nothing more (run row, steps,
/// backup catalog), each refusal names the new holder, and the new holder's writes land. Many
/// stale writes racing a takeover never land after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_state_refuses_every_write_of_a_holder_whose_lease_moved() {
    use upshift::state::{RunRecord, RunStatus, StateError, StepStatus};
    let Some(pg) = common::pg() else { return };
    let (_, url) = pg.fresh_db("fence").await;
    let state =
        upshift::state::open_postgres(&url, Duration::from_secs(30), Duration::from_secs(30))
            .await
            .expect("state");
    let ttl = Duration::from_secs(30);
    let a = state.acquire("bb", "host A", ttl).await.expect("lease");
    let run = RunRecord {
        id: "r1".into(),
        instance: "bb".into(),
        product: "bytebase".into(),
        adapter_digest: "d".into(),
        kind: "upgrade".into(),
        from_version: "3.10.0".into(),
        to_version: "3.11.1".into(),
        status: RunStatus::Running,
        started_at: "2026-12-06T00:00:00Z".into(),
        finished_at: None,
        plan_json: "null".into(),
        message: None,
    };
    state.insert_run(&a, &run).await.expect("insert");
    state
        .step_started(&a, "r1", 0, "start", "start", "forward")
        .await
        .expect("step");
    // A writer hammering its journal while B takes the lease over: once B holds it, not one of
    // A's writes lands (each is checked against the lease row, locked, in its own statement).
    let writer = {
        let (state, a) = (state.clone(), a.clone());
        tokio::spawn(async move {
            let mut landed_after = 0;
            for i in 0..400u32 {
                let r = state
                    .step_finished(
                        &a,
                        "r1",
                        0,
                        "forward",
                        StepStatus::Failed,
                        None,
                        Some(&i.to_string()),
                    )
                    .await;
                match r {
                    Ok(()) => landed_after = i,
                    Err(StateError::Fenced { holder, .. }) => {
                        assert_eq!(holder.as_deref(), Some("host B"));
                        return (landed_after, i);
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            (landed_after, 400)
        })
    };
    tokio::time::sleep(Duration::from_millis(30)).await;
    let b = state
        .take_over("bb", a.token, "host B", ttl)
        .await
        .expect("take over");
    // B reads the row right after its takeover; nothing A writes may change it afterwards.
    let seen = state.steps("r1").await.expect("steps");
    let (last_ok, refused_at) = writer.await.expect("writer");
    assert!(
        refused_at < 400,
        "A's writes were refused once B held the lease"
    );
    assert!(last_ok < refused_at);
    let after = state.steps("r1").await.expect("steps");
    assert_eq!(seen, after, "no write of A landed after B's takeover");
    for r in [
        state
            .finish_run(&a, "r1", RunStatus::Failed, Some("stale"))
            .await,
        state
            .step_started(&a, "r1", 1, "verify", "verify", "forward")
            .await,
    ] {
        assert!(matches!(r, Err(StateError::Fenced { .. })), "{r:?}");
    }
    state
        .finish_run(&b, "r1", RunStatus::Succeeded, None)
        .await
        .expect("B finishes the run");
    let r1 = state.run("r1").await.expect("run").expect("r1");
    assert_eq!(r1.status, RunStatus::Succeeded);
}
