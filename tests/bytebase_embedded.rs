//! Bytebase with its embedded PostgreSQL (the default deployment: the metadata in a cluster
//! under `--data/pgdata`, running only while Bytebase runs), end to end through the `upshift`
//! binary with the `process` service backend: an upgrade keeps every row, a failing migration
//! is rolled back to an identical `pgdata`, `upshift restore` swaps a snapshot back, and a host
//! SIGKILLed while the snapshot runs is resumed. The simulator runs a real PostgreSQL from this
//! machine's server binaries as the embedded store (tests/simulators/README.md).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use common::{Env, checksums_over, columns, connect, json, stderr, step_ids};

/// A Bytebase instance `bb` on the embedded store under `data`, running, with seeded rows.
struct Embedded {
    env: Env,
    port: u16,
    data: PathBuf,
    /// The embedded store's database `bb`, over its socket.
    url: String,
}

/// The fleet file: `meta` bound to the embedded store's socket (`--port + 2`, user and
/// database `bb`; read only, and `privileged` because `bb` is the cluster's only role, its
/// superuser), `data` to the `--data` directory, no `PG_URL`.
fn fleet(port: u16, data: &Path, version: &str, fail_migration: Option<&str>) -> String {
    format!(
        r#"
[[instance]]
name = "bb"
product = "bytebase"

[instance.db.meta]
url = "{meta}"
access = ["read"]
privileged = true

[instance.service.app]
kind = "process"
command = "'{exe}' simulate bytebase --version {{version}} --port {port} --data '{data}'"
version = "{version}"
health_url = "http://127.0.0.1:{port}/healthz"
stop_timeout_secs = 20
{fail}

[instance.http.api]
url = "http://127.0.0.1:{port}"

[instance.files.data]
path = "{data}"
"#,
        meta = upshift_sim::bytebase::embedded::url(port + 2, "bb"),
        exe = env!("CARGO_BIN_EXE_upshift"),
        data = data.display(),
        fail = fail_migration
            .map(|v| format!("env = {{ BB_SIM_FAIL_MIGRATION = \"{v}\" }}"))
            .unwrap_or_default()
    )
}

/// Start `version` on a fresh embedded store and seed rows; `None` (said why) without
/// PostgreSQL's server binaries.
async fn embedded(
    version: &str,
    fail_migration: Option<&str>,
    ballast_rows: u32,
) -> Option<Embedded> {
    if let Err(e) = upshift_sim::pg::find_bindir() {
        common::missing(&format!(
            "PostgreSQL's server binaries, which the simulated embedded store runs: {e}"
        ));
        return None;
    }
    let env = Env::new();
    // As root the embedded server runs as `postgres`, which must reach the data directory.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    let data = env.dir.path().join("bbdata");
    let port = common::free_port();
    env.write_fleet(&fleet(port, &data, version, fail_migration));
    common::start_services(&env, "bb", &["app"]).await;
    let url = upshift_sim::bytebase::embedded::url(port + 2, "bb");
    let client = connect(&url).await;
    upshift_sim::bytebase::seed_user_rows(&client, 40)
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
    // Hint bits and visibility set now (on the statistics ANALYZE writes too), so later reads
    // do not rewrite pages.
    for sql in [
        "VACUUM (FREEZE, ANALYZE)",
        "VACUUM FREEZE pg_catalog.pg_statistic",
    ] {
        client.batch_execute(sql).await.expect("vacuum");
    }
    Some(Embedded {
        env,
        port,
        data,
        url,
    })
}

/// Stop service `app` of `bb` (in process, as `upshift stop` does), waiting until it exited.
async fn stop_app(env: &Env) {
    let fleet = upshift::fleet::Fleet::load(&env.fleet()).expect("fleet");
    let session = upshift::ops::Session::open(&env.data(), upshift::caps::EventSink::discard())
        .await
        .expect("session");
    let (_, caps) = upshift::ops::apply::prepare(&session, fleet.instance("bb").expect("bb"))
        .await
        .expect("prepare");
    caps.service().stop("app", "test").await.expect("stop app");
}

/// sha256 of every regular file under `dir`, by relative path.
fn file_checksums(dir: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                walk(root, &path, out);
            } else if kind.is_file() {
                let bytes =
                    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                let rel = path
                    .strip_prefix(root)
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                out.insert(rel, format!("{:x}", Sha256::digest(&bytes)));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Files PostgreSQL rewrites at every start or clean shutdown, whatever the data: the control
/// file (cluster state, checkpoint location), the WAL (the shutdown checkpoint record), the
/// statistics written at shutdown, the command line of the last start, the replication origin
/// checkpoint rewritten at every checkpoint, and the relation-cache init files
/// (`pg_internal.init`) that the first connection after a start writes again.
fn rewritten_by_every_start(path: &str) -> bool {
    path == "global/pg_control"
        || path.ends_with("/pg_internal.init")
        || path.starts_with("pg_wal/")
        || path.starts_with("pg_stat/")
        || path == "postmaster.opts"
        || path == "pg_logical/replorigin_checkpoint"
}

fn comparable(sums: BTreeMap<String, String>) -> BTreeMap<String, String> {
    sums.into_iter()
        .filter(|(p, _)| !rewritten_by_every_start(p))
        .collect()
}

async fn actuator_version(port: u16) -> String {
    let (status, body) = common::http_get(port, "/v1/actuator/info").await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    v["version"].as_str().unwrap_or_default().to_string()
}

async fn schema_version(url: &str) -> String {
    connect(url)
        .await
        .query_one(
            "SELECT version FROM instance_change_history ORDER BY id DESC LIMIT 1",
            &[],
        )
        .await
        .expect("version row")
        .get(0)
}

/// The row checksums of every table but the history (which the upgrade extends).
async fn rows(url: &str, cols: &BTreeMap<String, Vec<String>>) -> BTreeMap<String, (i64, String)> {
    checksums_over(url, cols, &["instance_change_history"]).await
}

const SNAPSHOT_STEPS: [&str; 7] = [
    "preflight",
    "stop",
    "snapshot-data",
    "switch",
    "start",
    "wait-healthy",
    "check-version",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_store_upgrade_snapshots_the_data_directory_and_keeps_every_row() {
    let Some(bb) = embedded("3.10.0", None, 0).await else {
        return;
    };
    let cols = columns(&bb.url).await;
    let before = rows(&bb.url, &cols).await;
    assert!(before.values().any(|(n, _)| *n >= 40), "{before:?}");

    // Stopped, the embedded store is down with Bytebase: its schema cannot be read, so no plan.
    stop_app(&bb.env).await;
    let refused = bb.env.upshift(&["plan", "bb", "--to", "3.11.1", "--json"]);
    assert_eq!(refused.status.code(), Some(3), "{}", stderr(&refused));
    let refused = json(&refused);
    assert_eq!(
        refused["outcome"]["rule"], "embedded-store-down",
        "{refused}"
    );
    common::start_services(&bb.env, "bb", &["app"]).await;

    // With `data` narrowed to reading, the snapshot the plan needs is not granted: refused
    // before anything runs, naming the grant to add.
    let fleet_text = std::fs::read_to_string(bb.env.fleet()).expect("fleet");
    bb.env
        .write_fleet(&format!("{fleet_text}access = [\"read\"]\n"));
    let narrowed = bb.env.upshift(&["plan", "bb", "--to", "3.11.1"]);
    assert_eq!(narrowed.status.code(), Some(2), "{}", stderr(&narrowed));
    assert!(
        stderr(&narrowed)
            .contains("add \"snapshot\" to `access` in [instance.files.data] of instance `bb`"),
        "{}",
        stderr(&narrowed)
    );
    bb.env.write_fleet(&fleet_text);

    let plan = bb.env.upshift(&["plan", "bb", "--to", "3.11.1", "--json"]);
    assert_eq!(plan.status.code(), Some(0), "{}", stderr(&plan));
    let plan = String::from_utf8_lossy(&plan.stdout).into_owned();
    assert!(
        plan.contains("snapshot-data") && !plan.contains("backup-meta"),
        "the embedded store is snapshotted, never cloned: {plan}"
    );

    let out = bb
        .env
        .upshift(&["apply", "bb", "--to", "3.11.1", "--yes", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report = json(&out);
    assert_eq!(report["outcome"], "succeeded");
    assert_eq!(step_ids(&report, "forward"), SNAPSHOT_STEPS, "{report}");
    let backup = &report["backups"][0];
    assert_eq!(backup["method"], "snapshot", "{backup}");
    assert_eq!(backup["binding"], "data");
    assert_eq!(backup["product_version"], "3.10.0");
    assert_eq!(
        report["backups"].as_array().map(Vec::len),
        Some(1),
        "no clone of the embedded db"
    );
    let checks = report["checks"].as_array().expect("checks");
    assert!(checks.iter().all(|c| c["passed"] == true), "{checks:?}");

    assert_eq!(actuator_version(bb.port).await, "3.11.1");
    assert_eq!(schema_version(&bb.url).await, "3.11.17");
    assert_eq!(
        rows(&bb.url, &cols).await,
        before,
        "every seeded row is intact"
    );
    // The snapshot holds the whole data directory, pgdata included.
    let location = PathBuf::from(backup["location"].as_str().expect("location"));
    assert!(
        location.join("files/pgdata/PG_VERSION").exists(),
        "{}",
        location.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_migration_on_the_embedded_store_is_rolled_back_to_an_identical_pgdata() {
    let Some(bb) = embedded("3.10.0", Some("3.11.1"), 0).await else {
        return;
    };
    let cols = columns(&bb.url).await;
    let before_rows = rows(&bb.url, &cols).await;
    let pgdata = bb.data.join("pgdata");
    // No background ANALYZE between the two moments: it would rewrite pg_statistic whenever
    // it runs, upgrade or not (the setting lives in pgdata/postgresql.auto.conf, compared too).
    let client = connect(&bb.url).await;
    for sql in [
        "ALTER SYSTEM SET autovacuum = off",
        "SELECT pg_reload_conf()",
    ] {
        client.batch_execute(sql).await.expect("autovacuum off");
    }
    drop(client);
    // Files are compared with the store stopped (a running server's files are not stable).
    stop_app(&bb.env).await;
    let before = file_checksums(&pgdata);
    common::start_services(&bb.env, "bb", &["app"]).await;

    let out = bb
        .env
        .upshift(&["apply", "bb", "--to", "3.11.1", "--yes", "--json"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let report = json(&out);
    assert_eq!(report["outcome"], "rolled-back");
    let failure = report["failure"].as_str().expect("failure");
    assert!(failure.contains("failed to migrate schema"), "{failure}");
    assert_eq!(
        step_ids(&report, "rollback"),
        [
            "rollback-stop-app",
            "rollback-restore-files-data",
            "rollback-switch-app",
            "rollback-start-app",
            "rollback-wait-app"
        ]
    );
    assert_eq!(
        actuator_version(bb.port).await,
        "3.10.0",
        "the old version serves"
    );
    assert_eq!(schema_version(&bb.url).await, "3.10.2");
    assert_eq!(
        rows(&bb.url, &cols).await,
        before_rows,
        "every row as before"
    );

    stop_app(&bb.env).await;
    let after = file_checksums(&pgdata);
    let (before, after) = (comparable(before), comparable(after));
    let differ: Vec<&String> = before
        .keys()
        .chain(after.keys())
        .filter(|p| before.get(*p) != after.get(*p))
        .collect();
    assert!(
        differ.is_empty(),
        "pgdata differs from before the upgrade in: {differ:?}"
    );
    assert!(before.len() > 100, "a real cluster: {} files", before.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upshift_restore_swaps_a_data_directory_snapshot_back() {
    let Some(bb) = embedded("3.10.0", None, 0).await else {
        return;
    };
    let cols = columns(&bb.url).await;
    let at_backup = rows(&bb.url, &cols).await;
    let out = bb
        .env
        .upshift(&["apply", "bb", "--to", "3.11.1", "--yes", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let id = json(&out)["backups"][0]["id"]
        .as_str()
        .expect("backup id")
        .to_string();
    // Changes after the backup, which the restore takes away.
    connect(&bb.url)
        .await
        .batch_execute("DELETE FROM issue; INSERT INTO project (resource_id, name, key) VALUES ('later', 'Later', 'L')")
        .await
        .expect("change");
    assert_ne!(rows(&bb.url, &cols).await, at_backup);

    let out = bb.env.upshift(&["restore", "bb", &id, "--yes", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report = json(&out);
    let steps: Vec<&str> = report["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| s["id"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        steps,
        [
            "stop",
            "restore-data",
            "switch",
            "start",
            "wait-healthy",
            "check-version"
        ]
    );
    assert_eq!(actuator_version(bb.port).await, "3.10.0");
    assert_eq!(schema_version(&bb.url).await, "3.10.2");
    assert_eq!(
        rows(&bb.url, &cols).await,
        at_backup,
        "the data is the snapshot's"
    );
    // The replaced directory is kept beside it.
    let kept = std::fs::read_dir(bb.env.dir.path())
        .expect("list")
        .filter_map(Result::ok)
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("bbdata.upshift-replaced-")
        });
    assert!(kept, "the replaced data directory is kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_killed_during_the_snapshot_is_resumed_and_finishes() {
    // Ballast makes the copy take long enough to be caught in the middle.
    let Some(bb) = embedded("3.10.0", None, 150_000).await else {
        return;
    };
    let cols = columns(&bb.url).await;
    let before = rows(&bb.url, &cols).await;
    let mut child = bb
        .env
        .command(&["apply", "bb", "--to", "3.11.1", "--yes", "--json"])
        .env_remove("UPSHIFT_CRASH_AT")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn apply");
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen = false;
    while Instant::now() < deadline {
        if common::step_started(&bb.env.data(), "snapshot-data") {
            seen = true;
            break;
        }
        if child.try_wait().expect("poll").is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    if !seen {
        let _ = child.kill();
        let out = child.wait_with_output().expect("apply ends");
        panic!("the apply never reached its snapshot: {}", stderr(&out));
    }
    child.kill().expect("SIGKILL apply");
    let out = child.wait_with_output().expect("apply ends");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(9), "{}", stderr(&out));
    assert!(
        common::step_started(&bb.env.data(), "snapshot-data"),
        "killed mid-snapshot"
    );
    assert_eq!(common::http_get(bb.port, "/healthz").await.0, 0, "stopped");

    let history = json(&bb.env.upshift(&["history", "--json"]));
    let run = history[0]["id"].as_str().expect("run id").to_string();
    assert_eq!(history[0]["status"], "running", "{history}");

    let out = bb.env.upshift(&["resume", &run, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report = json(&out);
    assert_eq!(report["outcome"], "succeeded", "{report}");
    assert_eq!(report["backups"][0]["method"], "snapshot", "{report}");
    assert_eq!(actuator_version(bb.port).await, "3.11.1");
    assert_eq!(schema_version(&bb.url).await, "3.11.17");
    assert_eq!(rows(&bb.url, &cols).await, before, "every row is intact");
    let history = json(&bb.env.upshift(&["history", "--json"]));
    assert_eq!(history[0]["status"], "succeeded", "{history}");
}

/// An external metadata database beside a `pgdata` left in the data directory (a deployment
/// moved to `PG_URL`): the `meta` server's data directory is not that `pgdata`, so the store is
/// external and the plan clones `meta`; a snapshot of the directory would back up nothing the
/// upgrade touches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pgdata_left_beside_an_external_store_does_not_make_it_embedded() {
    let Some(pg) = common::pg() else { return };
    let (_, db_url) = pg.fresh_db("bbext").await;
    let env = Env::new();
    let port = common::free_port();
    let data = env.dir.path().join("bbdata");
    std::fs::create_dir_all(data.join("pgdata")).expect("mkdir");
    std::fs::write(data.join("pgdata/PG_VERSION"), "16\n").expect("PG_VERSION");
    let fleet = format!(
        "{}\n[instance.files.data]\npath = \"{}\"\naccess = [\"read\"]\n",
        common::bytebase_instance("bb", &db_url, port, "3.10.0", None),
        data.display()
    );
    env.write_fleet(&fleet);
    common::start_services(&env, "bb", &["app"]).await;
    let out = env.upshift(&["plan", "bb", "--to", "3.11.1", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let plan = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        plan.contains("backup-meta") && !plan.contains("snapshot-data"),
        "{plan}"
    );
}
