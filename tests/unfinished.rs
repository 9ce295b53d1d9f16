//! One unfinished run per instance (issue 15, cases 1 and 6): a run whose host was killed
//! mid-backup stops every new run on its instance until it is resumed or abandoned; `abandon`
//! is journaled and audited; a run a later run superseded is not resumed; simultaneous applies
//! on a brand-new data directory leave one running and refuse the others with exit 6. Real
//! PostgreSQL, the real `upshift` binary killed with a real SIGKILL, the Bytebase and
//! OpenMetadata simulators.

mod common;

use common::agents::service_processes;

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Env, connect, free_port, json, start_services, stderr};

/// `upshift` with `--fleet` of `env`, and `--data DATA`.
fn upshift_at(env: &Env, data: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_upshift"));
    cmd.arg("--fleet")
        .arg(env.fleet())
        .arg("--data")
        .arg(data)
        .env_remove("UPSHIFT_FLEET")
        .env_remove("UPSHIFT_DATA")
        .env_remove("UPSHIFT_CRASH_AT");
    cmd
}

/// The runs in `env`'s history, newest first.
fn history(env: &Env) -> Vec<serde_json::Value> {
    let out = env.upshift(&["history", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    json(&out).as_array().cloned().unwrap_or_default()
}

/// The Bytebase schema version the simulator's migrations recorded last.
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

/// A Bytebase instance `bb` at 3.10.0 with seeded rows and `ballast_rows` rows of about 1 KB
/// each in schema `ballast` (so cloning its database takes a moment, without the product or the
/// checksums of `public` seeing them); the environment, its port and database URL.
async fn bytebase(pg: &common::Pg, ballast_rows: u32) -> (Env, u16, String) {
    let (_, url) = pg.fresh_db("unf").await;
    bytebase_on(url, ballast_rows).await
}

/// [`bytebase`] on the database at `url`.
async fn bytebase_on(url: String, ballast_rows: u32) -> (Env, u16, String) {
    let env = Env::new();
    let port = free_port();
    env.write_fleet(&common::bytebase_instance("bb", &url, port, "3.10.0", None));
    start_services(&env, "bb", &["app"]).await;
    let client = connect(&url).await;
    upshift_sim::bytebase::seed_user_rows(&client, 10)
        .await
        .expect("seed");
    if ballast_rows > 0 {
        client
            .batch_execute(&format!(
                "CREATE SCHEMA ballast; CREATE TABLE ballast.filler AS \
                 SELECT g AS id, repeat(md5(g::text), 30) AS filler FROM generate_series(1, {ballast_rows}) g"
            ))
            .await
            .expect("ballast");
    }
    (env, port, url)
}

/// Case 1, first half, and abandon: `apply` is SIGKILLed from outside while its backup clone
/// runs (the service stopped). A second `apply` (and a `backup`, and a `restore` of an earlier
/// backup) is refused with exit 6 naming the run, its last journaled step and the commands that
/// finish it, and changes nothing.
/// Once the operator has put the instance right by hand, `abandon` ends the run (journaled,
/// audited, the audit chain intact) and the next `apply` upgrades.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_during_the_backup_clone_a_second_apply_is_refused_until_the_run_is_abandoned() {
    let Some(pg) = common::pg() else { return };
    let (db, url) = pg.fresh_db("unf").await;
    let (env, port, url) = bytebase_on(url, 150_000).await;
    let before = common::table_checksums(&url).await;
    let cols = common::columns(&url).await;
    let skip = ["instance_change_history", "migration_history"];
    let before_upgrade = common::checksums_over(&url, &cols, &skip).await;
    assert_eq!(service_processes(port), 1);
    // An earlier backup, which a restore could bring back.
    let out = env.upshift(&["backup", "bb", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let earlier_backup = json(&out)[0]["id"].as_str().expect("backup id").to_string();

    let mut child = upshift_at(&env, &env.data())
        .args(["apply", "bb", "--to", "3.11.1", "--yes", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn apply");
    // Watch from outside: the journal says the backup step started, or PostgreSQL shows the
    // clone under way. Then kill the host as a machine dying there would.
    let admin = connect(&pg.admin_url("postgres")).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen = None;
    while seen.is_none() && Instant::now() < deadline {
        if common::step_started(&env.data(), "backup-meta") {
            seen = Some("the journal shows backup-meta started");
        } else if admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' \
                 AND query ILIKE 'CREATE DATABASE % TEMPLATE %' AND strpos(query, $1) > 0",
                &[&format!("TEMPLATE \"{db}\"")],
            )
            .await
            .is_ok_and(|r| r.get::<_, i64>(0) > 0)
        {
            seen = Some("PostgreSQL shows the clone of the instance's database running");
        } else if child.try_wait().expect("poll apply").is_some() {
            break;
        } else {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let seen = seen.unwrap_or_else(|| {
        let _ = child.kill();
        panic!("the apply never reached its backup step")
    });
    child.kill().expect("SIGKILL apply");
    eprintln!("SIGKILL sent: {seen}");
    let out = child.wait_with_output().expect("apply ends");
    assert_eq!(out.status.signal(), Some(9), "{seen}: {}", stderr(&out));

    // The run is interrupted in its backup step, the service stopped.
    let runs = history(&env);
    assert_eq!(runs.len(), 2, "the backup and the apply: {runs:?}");
    let run_id = runs[0]["id"].as_str().expect("id").to_string();
    assert_eq!(runs[0]["status"], "running", "{runs:?}");
    assert!(
        common::step_started(&env.data(), "backup-meta"),
        "{seen}: killed while the backup ran"
    );
    assert_eq!(common::http_get(port, "/healthz").await.0, 0, "stopped");
    assert_eq!(service_processes(port), 0);
    let schema = schema_version(&url).await;

    // A second apply, a backup and a restore are refused: exit 6 naming the run, its last journaled
    // step, the dead holder and the exact commands.
    for args in [
        &["apply", "bb", "--to", "3.11.1", "--yes", "--json"][..],
        &["backup", "bb", "--json"][..],
        &["restore", "bb", &earlier_backup, "--yes", "--json"][..],
    ] {
        let out = env.upshift(args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(6), "{args:?}: {err}");
        for want in [
            format!("unfinished run {run_id} (upgrade, started "),
            "step 3 `backup-meta`".to_string(),
            "never finished".to_string(),
            format!("`upshift resume {run_id}`"),
            format!("`upshift abandon {run_id} --why "),
            "Nothing was changed".to_string(),
        ] {
            assert!(err.contains(&want), "{args:?}: `{want}` in {err}");
        }
        // Its holder is named dead while its lease lasts; after that the run is still there.
        assert!(
            err.contains("is gone") || err.contains("its host stopped without ending it"),
            "{args:?}: {err}"
        );
    }
    // ...and changed nothing: still stopped, no service process, same schema and rows, no run.
    assert_eq!(common::http_get(port, "/healthz").await.0, 0);
    assert_eq!(service_processes(port), 0);
    assert_eq!(schema_version(&url).await, schema);
    assert_eq!(common::table_checksums(&url).await, before);
    let runs = history(&env);
    assert_eq!(runs.len(), 2, "no new run: {runs:?}");
    assert_eq!(runs[0]["status"], "running");

    // The operator puts the instance right by hand (starts it again at 3.10.0) and abandons
    // the run. The reason is required.
    start_services(&env, "bb", &["app"]).await;
    let (_, body) = common::http_get(port, "/v1/actuator/info").await;
    assert!(body.contains("\"3.10.0\""), "{body}");
    let out = env.upshift(&["abandon", &run_id]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = env.upshift(&["abandon", &run_id, "--why", "  "]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--why is empty"), "{}", stderr(&out));
    assert_eq!(history(&env)[0]["status"], "running", "nothing recorded");
    let why = "started bb by hand at 3.10.0 after the host died mid-backup";
    let out = env.upshift(&["abandon", &run_id, "--why", why, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let done = json(&out);
    assert_eq!(
        (done["was"].as_str(), done["why"].as_str()),
        (Some("running"), Some(why))
    );

    // In history: status, message and the journaled operator step.
    let out = env.upshift(&["history", "--run", &run_id, "--json"]);
    let one = json(&out);
    assert_eq!(one["run"]["status"], "abandoned", "{one}");
    assert!(one["run"]["finished_at"].is_string(), "{one}");
    assert!(
        one["run"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(why)),
        "{one}"
    );
    let step = one["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .find(|s| s["phase"] == "operator")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        (step["step_id"].as_str(), step["output"].as_str()),
        (Some("abandon"), Some(why)),
        "{one}"
    );
    let out = env.upshift(&["history"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("abandoned"),
        "{}",
        stderr(&out)
    );
    // In the audit log, whose chain still verifies.
    let records = common::audit_records(&env.data().join("audit.jsonl"));
    let record = records
        .iter()
        .find(|r| r.event.operation == "abandon")
        .expect("an audit record of the abandon");
    assert_eq!(record.event.run_id.as_deref(), Some(run_id.as_str()));
    assert_eq!(record.event.reason.as_deref(), Some(why));
    assert_eq!(record.event.capability, "host");
    let out = env.upshift(&["audit", "verify"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("chain intact"));

    // An ended run is neither abandoned again nor resumed.
    let out = env.upshift(&["abandon", &run_id, "--why", "again"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("already ended (abandoned"),
        "{}",
        stderr(&out)
    );
    let out = env.upshift(&["resume", &run_id, "--json"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(
        records.len(),
        common::audit_records(&env.data().join("audit.jsonl")).len(),
        "refusals change nothing"
    );

    // Now the next apply goes ahead: one service process at 3.11.1, every row.
    let out = env.upshift(&["apply", "bb", "--to", "3.11.1", "--yes", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(json(&out)["outcome"], "succeeded");
    let (_, body) = common::http_get(port, "/v1/actuator/info").await;
    assert!(body.contains("\"3.11.1\""), "{body}");
    assert_eq!(service_processes(port), 1);
    assert_eq!(
        common::checksums_over(&url, &cols, &skip).await,
        before_upgrade,
        "every row"
    );
    let ballast: i64 = connect(&url)
        .await
        .query_one("SELECT count(*) FROM ballast.filler", &[])
        .await
        .expect("ballast")
        .get(0);
    assert_eq!(ballast, 150_000);
    let statuses: Vec<String> = history(&env)
        .iter()
        .map(|r| r["status"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(statuses, ["succeeded", "abandoned", "succeeded"]);
}

/// An OpenMetadata instance `om` at 1.9.0 with seeded rows: env, port, database URL.
async fn openmetadata(pg: &common::Pg) -> (Env, u16, String) {
    let (name, url) = pg.fresh_db("unfom").await;
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
    start_services(&env, "om", &["migrate"]).await;
    upshift_sim::openmetadata::seed_pg(&connect(&url).await, 10)
        .await
        .expect("seed");
    start_services(&env, "om", &["server"]).await;
    (env, port, url)
}

/// A run stopped for an operator at a step whose outcome is unknown is unfinished: a new apply
/// is refused naming `resume --step-done` and the restore of its backup. The operator restores
/// that backup (allowed: it is the recovery the run names); the restore supersedes the run,
/// which is then refused by `resume` naming the restore, and no longer stands in the way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_superseded_by_a_later_run_is_not_resumed() {
    let Some(pg) = common::pg() else { return };
    let (env, port, _url) = openmetadata(pg).await;
    // Killed right after the migrate job (6th step) was journaled as started.
    let out = upshift_at(&env, &env.data())
        .args(["apply", "om", "--to", "1.12.1", "--yes", "--json"])
        .env("UPSHIFT_CRASH_AT", "forward:5:started")
        .output()
        .expect("apply");
    assert_eq!(out.status.signal(), Some(9), "{}", stderr(&out));
    let run_id = history(&env)[0]["id"].as_str().expect("id").to_string();
    let out = env.upshift(&["resume", &run_id, "--json"]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert_eq!(history(&env)[0]["status"], "failed");

    // Unfinished: a new apply is refused, naming the ways to finish it.
    let out = env.upshift(&["apply", "om", "--to", "1.12.1", "--yes", "--json"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(6), "{err}");
    assert!(
        err.contains(&format!("unfinished run {run_id}"))
            && err.contains(&format!("`upshift resume {run_id} --step-done migrate`"))
            && err.contains(&format!("`upshift abandon {run_id} --why ")),
        "{err}"
    );
    let restore = err
        .split('`')
        .find(|s| s.starts_with("upshift restore om bk-"))
        .unwrap_or_else(|| panic!("names the restore of its backup: {err}"))
        .to_string();

    // The operator restores that backup: a later run.
    let mut args: Vec<&str> = restore.split_whitespace().skip(1).collect();
    args.extend(["--yes", "--json"]);
    let out = env.upshift(&args);
    assert_eq!(out.status.code(), Some(0), "{restore}: {}", stderr(&out));
    let restore_run = json(&out)["run_id"].as_str().expect("run id").to_string();
    let (_, body) = common::http_get(port, "/api/v1/version").await;
    assert!(body.contains("\"1.9.0\""), "{body}");

    // Resuming the superseded run is refused, naming the later run; nothing changes.
    let out = env.upshift(&["resume", &run_id, "--step-done", "migrate", "--json"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("superseded") && err.contains(&restore_run) && err.contains("restore"),
        "{err}"
    );
    let (_, body) = common::http_get(port, "/api/v1/version").await;
    assert!(body.contains("\"1.9.0\""), "{body}");
    assert!(err.contains("nothing more is needed"), "{err}");
    // Superseded, it has ended: there is nothing to abandon either.
    let out = env.upshift(&["abandon", &run_id, "--why", "restored its backup"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let runs = history(&env);
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_eq!(runs[1]["status"], "failed", "left as it was");

    // It no longer stands in the way.
    let out = env.upshift(&["apply", "om", "--to", "1.12.1", "--yes", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let (_, body) = common::http_get(port, "/api/v1/version").await;
    assert!(body.contains("\"1.12.1\""), "{body}");
}

/// Start `n` applies of `bb` at once, each on the brand-new data directory `data` (the
/// process services' state stays in `env`'s): their exit codes and stderr.
fn simultaneous_applies(env: &Env, data: &Path, n: usize) -> Vec<(Option<i32>, String)> {
    let children: Vec<_> = (0..n)
        .map(|_| {
            upshift_at(env, data)
                .arg("--services")
                .arg(env.data().join("services"))
                .args(["apply", "bb", "--to", "3.11.1", "--yes", "--json"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn apply")
        })
        .collect();
    children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().expect("apply ends");
            (out.status.code(), stderr(&out))
        })
        .collect()
}

/// Case 6: simultaneous applies on a brand-new data directory: exactly one runs, every other
/// exits 6 naming the holder, none exits 1 ("database is locked"); and simultaneous `plan`s
/// and `history`s on a new directory all succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_applies_on_a_new_data_dir_one_runs_and_the_rest_exit_6() {
    let Some(pg) = common::pg() else { return };
    for n in [2usize, 8] {
        let (env, port, _) = bytebase(pg, 0).await;
        let data = env.dir.path().join(format!("fresh-{n}"));
        assert!(!data.exists());
        let results = simultaneous_applies(&env, &data, n);
        let ran: Vec<_> = results.iter().filter(|(c, _)| *c == Some(0)).collect();
        let refused: Vec<_> = results.iter().filter(|(c, _)| *c == Some(6)).collect();
        assert_eq!(
            (ran.len(), refused.len()),
            (1, n - 1),
            "{n} at once: {results:#?}"
        );
        for (_, err) in &refused {
            assert!(
                err.contains("being worked on by upshift on")
                    && err.contains("(apply --to 3.11.1)"),
                "names the holder: {err}"
            );
            assert!(!err.contains("locked"), "{err}");
        }
        let (_, body) = common::http_get(port, "/v1/actuator/info").await;
        assert!(body.contains("\"3.11.1\""), "{body}");
        assert_eq!(service_processes(port), 1);
        let runs = json(
            &upshift_at(&env, &data)
                .args(["history", "--json"])
                .output()
                .expect("history"),
        );
        assert_eq!(runs.as_array().map(Vec::len), Some(1), "one run: {runs}");
        assert_eq!(runs[0]["status"], "succeeded");
    }

    // Reading commands started together on a new directory: none fails.
    let (env, _, _) = bytebase(pg, 0).await;
    for (k, args) in [
        &["plan", "bb", "--to", "3.11.1", "--json"][..],
        &["history", "--json"][..],
    ]
    .into_iter()
    .enumerate()
    {
        let data = env.dir.path().join(format!("read-{k}"));
        let children: Vec<_> = (0..8)
            .map(|_| {
                upshift_at(&env, &data)
                    .arg("--services")
                    .arg(env.data().join("services"))
                    .args(args)
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("spawn")
            })
            .collect();
        for c in children {
            let out = c.wait_with_output().expect("ends");
            assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        }
    }
}

/// A holder on this machine that died before journaling a run (while loading the adapter or
/// planning) left nothing to finish: the next apply takes its lease over at once instead of
/// waiting for it to expire, and a run started under a live holder is still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_holder_that_left_no_run_is_taken_over_at_once() {
    let Some(pg) = common::pg() else { return };
    let (env, port, _) = bytebase(pg, 0).await;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    let mut gone = Command::new("true").spawn().expect("spawn");
    let dead = gone.id();
    gone.wait().expect("exits");
    assert!(!Path::new(&format!("/proc/{dead}")).exists());
    let conn = rusqlite::Connection::open(env.data().join("state.db")).expect("state");
    let expires = chrono_ms() + 600_000;
    conn.execute(
        "INSERT INTO leases (instance, holder, token, expires_ms) VALUES ('bb', ?1, 7, ?2)",
        rusqlite::params![
            format!("upshift on {host} pid {dead} (apply --to 3.11.1)"),
            expires
        ],
    )
    .expect("a dead holder's lease");
    drop(conn);
    assert!(history(&env).is_empty(), "it left no run");
    // The lease had ten minutes left: only a take-over lets this apply run now.
    let out = env.upshift(&["apply", "bb", "--to", "3.11.1", "--yes", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let (_, body) = common::http_get(port, "/v1/actuator/info").await;
    assert!(body.contains("\"3.11.1\""), "{body}");
    assert_eq!(service_processes(port), 1);
}

/// Milliseconds since the epoch.
fn chrono_ms() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis(),
    )
    .expect("fits")
}
