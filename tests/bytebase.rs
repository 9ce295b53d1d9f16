//! Bytebase end to end on a real PostgreSQL, through the `upshift` binary: upgrades that keep
//! every row, a failing migration rolled back to identical data, every refusal rule, offline
//! plans, and both restore options of the backup runbook. Bytebase itself is played by the
//! simulator in tests/simulators (test infrastructure that behaves as Bytebase does at upgrade
//! time).

mod common;

use std::time::Duration;

use serde_json::Value;
use upshift::caps::EventSink;
use upshift::fleet::Fleet;
use upshift::ops::Session;
use upshift::ops::apply;

use common::{Env, checksums_over, columns, connect};

fn json(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A Bytebase instance `bb` running `version` on a fresh database, with seeded rows.
struct Running {
    env: Env,
    db_url: String,
    db_name: String,
    port: u16,
}

async fn running(pg: &common::Pg, version: &str, fail_migration: Option<&str>) -> Running {
    let (db_name, db_url) = pg.fresh_db("bb").await;
    let env = Env::new();
    let port = common::free_port();
    env.write_fleet(&common::bytebase_instance(
        "bb",
        &db_url,
        port,
        version,
        fail_migration,
    ));
    start_app(&env).await;
    let client = connect(&db_url).await;
    upshift_sim::bytebase::seed_user_rows(&client, 40)
        .await
        .expect("seed");
    Running {
        env,
        db_url,
        db_name,
        port,
    }
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

async fn actuator_version(port: u16) -> String {
    let body = reqwest::get(format!("http://127.0.0.1:{port}/v1/actuator/info"))
        .await
        .expect("actuator answers")
        .text()
        .await
        .expect("body");
    let v: Value = serde_json::from_str(&body).expect("json");
    v["version"].as_str().unwrap_or_default().to_string()
}

async fn schema_version(db_url: &str) -> String {
    let client = connect(db_url).await;
    let row = client
        .query_one(
            "SELECT version FROM instance_change_history ORDER BY id DESC LIMIT 1",
            &[],
        )
        .await
        .expect("version row");
    row.get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_keeps_every_seeded_row_and_verifies() {
    let Some(pg) = common::pg() else { return };
    let bb = running(pg, "3.10.0", None).await;
    let cols = columns(&bb.db_url).await;
    let before = checksums_over(&bb.db_url, &cols, &["instance_change_history"]).await;
    assert!(
        before.values().any(|(n, _)| *n >= 40),
        "seeded rows exist: {before:?}"
    );

    let out = bb
        .env
        .upshift(&["apply", "bb", "--to", "3.11.1", "--yes", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report = json(&out);
    assert_eq!(report["outcome"], "succeeded");
    let checks = report["checks"].as_array().expect("checks");
    assert!(
        checks.len() >= 3 && checks.iter().all(|c| c["passed"] == true),
        "{checks:?}"
    );
    let backup = &report["backups"][0];
    assert_eq!(backup["method"], "clone");
    assert_eq!(backup["product_version"], "3.10.0");
    assert_eq!(
        report["rollback_command"],
        format!("upshift restore bb {}", backup["id"].as_str().expect("id"))
    );

    assert_eq!(actuator_version(bb.port).await, "3.11.1");
    assert_eq!(schema_version(&bb.db_url).await, "3.11.17");
    let after = checksums_over(&bb.db_url, &cols, &["instance_change_history"]).await;
    assert_eq!(before, after, "every seeded row is intact");
    assert!(
        pg.database_exists(backup["location"].as_str().expect("location"))
            .await
    );

    let history = bb.env.upshift(&["history", "bb", "--json"]);
    let runs = json(&history);
    assert_eq!(runs[0]["status"], "succeeded");
    assert_eq!(runs[0]["to_version"], "3.11.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_migration_is_rolled_back_to_identical_data() {
    let Some(pg) = common::pg() else { return };
    let bb = running(pg, "3.10.0", Some("3.11.1")).await;
    let before = common::table_checksums(&bb.db_url).await;

    let out = bb
        .env
        .upshift(&["apply", "bb", "--to", "3.11.1", "--yes", "--json"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let report = json(&out);
    assert_eq!(report["outcome"], "rolled-back");
    let failure = report["failure"].as_str().expect("failure");
    assert!(failure.contains("failed to migrate schema"), "{failure}");
    let rollback: Vec<&str> = report["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .filter(|s| s["phase"] == "rollback")
        .map(|s| s["id"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        rollback,
        [
            "rollback-stop-app",
            "rollback-restore-meta",
            "rollback-switch-app",
            "rollback-start-app",
            "rollback-wait-app"
        ]
    );

    let after = common::table_checksums(&bb.db_url).await;
    assert_eq!(
        before, after,
        "every table is identical to before the upgrade"
    );
    assert_eq!(
        actuator_version(bb.port).await,
        "3.10.0",
        "the old version serves again"
    );
    assert_eq!(schema_version(&bb.db_url).await, "3.10.2");

    let history = json(&bb.env.upshift(&["history", "--json"]));
    assert_eq!(history[0]["status"], "rolled-back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_narrowed_grant_stops_the_plan_before_anything_changes() {
    let Some(pg) = common::pg() else { return };
    let bb = running(pg, "3.10.0", None).await;
    // Narrowed to `read`, the binding is not backed up: its role must not create databases
    // either (a role with CREATEDB would be refused before the plan, for that reason).
    connect(&pg.url("postgres"))
        .await
        .batch_execute(&format!("ALTER ROLE \"{}\" NOCREATEDB", bb.db_name))
        .await
        .expect("alter role");
    let text = std::fs::read_to_string(bb.env.fleet()).expect("fleet");
    bb.env.write_fleet(&text.replace(
        "[instance.db.meta]\n",
        "[instance.db.meta]\naccess = [\"read\"]\n",
    ));
    let out = bb.env.upshift(&["apply", "bb", "--to", "3.11.1", "--yes"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("needs `backup` on db binding `meta`"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        actuator_version(bb.port).await,
        "3.10.0",
        "nothing was touched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_refusals_name_the_rule_and_the_path() {
    let Some(pg) = common::pg() else { return };
    let bb = running(pg, "3.10.0", None).await;
    let out = bb.env.upshift(&["plan", "bb", "--to", "3.5.0", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(json(&out)["outcome"]["rule"], "downgrade");
    // Already at the target: nothing to do, exit 0, and no run recorded (a rollout says the same).
    let runs_before = json(&bb.env.upshift(&["history", "bb", "--json"]));
    let out = bb
        .env
        .upshift(&["apply", "bb", "--to", "3.10.0", "--yes", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(json(&out)["outcome"], "already-there");
    assert_eq!(json(&out)["run_id"], "");
    let out = bb
        .env
        .upshift(&["apply", "--all", "--to", "3.10.0", "--yes", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(json(&out)["instances"][0]["status"], "already-there");
    assert!(
        !stderr(&out).contains("AlreadyThere"),
        "events use the kebab-case names: {}",
        stderr(&out)
    );
    assert_eq!(
        json(&bb.env.upshift(&["history", "bb", "--json"])),
        runs_before,
        "already-at-target records no run"
    );

    // A 2.x database that still has per-database change history must stop at 3.3.1.
    let old = running(pg, "2.10.0", None).await;
    let client = connect(&old.db_url).await;
    client
        .execute(
            "INSERT INTO instance_change_history (instance_id, database_id, version, status) \
             SELECT instance_id, 101, '0002.0010.0099-20240101000000', 'DONE' FROM instance_change_history LIMIT 1",
            &[],
        )
        .await
        .expect("insert a managed-database history row");
    let out = old.env.upshift(&["plan", "bb", "--to", "3.10.0", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let refusal = &json(&out)["outcome"];
    assert_eq!(refusal["rule"], "via-3.3.1", "{refusal}");
    assert_eq!(refusal["path"][0], "3.3.1", "{refusal}");
    assert_eq!(actuator_version(old.port).await, "2.10.0");
}

#[test]
fn offline_plans_follow_the_version_paths() {
    let env = Env::new();
    let plan = |from: &str, to: &str| env.plan_offline("bytebase", from, to);
    let (code, v) = plan("3.10.0", "3.11.1");
    assert_eq!(code, Some(0));
    let ids: Vec<&str> = v["outcome"]["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| s["id"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        ids,
        [
            "preflight",
            "stop",
            "backup-meta",
            "switch",
            "start",
            "wait-healthy",
            "check-version"
        ]
    );
    let rollback: Vec<&str> = v["rollback"]
        .as_array()
        .expect("rollback")
        .iter()
        .map(|a| a["action"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        rollback,
        ["stop", "restore", "switch", "start", "wait-healthy"],
        "offline, the service is assumed to run the from-version"
    );

    let cases: &[(&str, &str, &str, &[&str])] = &[
        (
            "1.5.0",
            "3.20.0",
            "via-2.1.0",
            &["2.1.0", "3.3.1", "3.13.0", "3.20.0"],
        ),
        ("2.0.0", "3.5.0", "via-2.1.0", &["2.1.0", "3.3.1", "3.5.0"]),
        ("3.3.1", "3.14.0", "via-3.4.1-3.13", &["3.13.0", "3.14.0"]),
        ("3.11.1", "3.10.0", "downgrade", &[]),
        ("0.9.0", "1.0.0", "zero-x-with-data", &[]),
    ];
    for (from, to, rule, path) in cases {
        let (code, v) = plan(from, to);
        assert_eq!(code, Some(3), "{from} → {to}: {v}");
        assert_eq!(v["outcome"]["rule"], *rule, "{from} → {to}: {v}");
        let got: Vec<&str> = v["outcome"]["path"]
            .as_array()
            .expect("path")
            .iter()
            .filter_map(|p| p.as_str())
            .collect();
        assert_eq!(got, *path, "{from} → {to}");
    }
    let (code, _) = plan("2.0.0", "2.1.0");
    assert_eq!(code, Some(0), "2.0.0 → 2.1.0 is the required stop itself");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_in_place_swaps_the_backup_in() {
    let Some(pg) = common::pg() else { return };
    let bb = running(pg, "3.10.0", None).await;
    let out = bb.env.upshift(&["backup", "bb", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let backups = json(&out);
    let id = backups[0]["id"].as_str().expect("id").to_string();
    assert_eq!(backups[0]["method"], "dump");
    assert_eq!(backups[0]["product_version"], "3.10.0");
    assert_eq!(backups[0]["sha256"].as_str().map(str::len), Some(64));
    let at_backup = common::table_checksums(&bb.db_url).await;

    let client = connect(&bb.db_url).await;
    client
        .batch_execute("DELETE FROM issue; DELETE FROM project WHERE id > 1")
        .await
        .expect("damage");
    drop(client);
    assert_ne!(common::table_checksums(&bb.db_url).await, at_backup);

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
        ["stop", "restore-meta", "switch", "start", "wait-healthy"]
    );
    assert_eq!(
        common::table_checksums(&bb.db_url).await,
        at_backup,
        "the data is the backup's"
    );
    assert_eq!(actuator_version(bb.port).await, "3.10.0");
    let kept = report["steps"][1]["message"].as_str().expect("message");
    let kept_name = kept.rsplit('`').nth(1).expect("kept database named");
    assert!(
        pg.database_exists(kept_name).await,
        "the replaced database is kept: {kept}"
    );

    let listed = json(&bb.env.upshift(&["backups", "bb", "--json"]));
    assert_eq!(listed[0]["id"], id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_into_another_database_rewrites_the_namespace() {
    let Some(pg) = common::pg() else { return };
    let bb = running(pg, "1.2.0", None).await;
    let client = connect(&bb.db_url).await;
    let ns: Vec<String> = client
        .query("SELECT DISTINCT namespace FROM migration_history", &[])
        .await
        .expect("1.x history")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        ns,
        vec![bb.db_name.clone()],
        "1.x history names its database"
    );
    let out = bb.env.upshift(&["backup", "bb", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let id = json(&out)[0]["id"].as_str().expect("id").to_string();

    let target = format!("{}_copy", bb.db_name);
    let out = bb
        .env
        .upshift(&["restore", "bb", &id, "--into", &target, "--yes", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let copy = connect(&pg.url(&target)).await;
    let ns: Vec<String> = copy
        .query("SELECT DISTINCT namespace FROM migration_history", &[])
        .await
        .expect("history in the copy")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        ns,
        vec![target.clone()],
        "the change history now belongs to the new database"
    );
    let original: i64 = client
        .query_one(
            "SELECT count(*) FROM migration_history WHERE namespace = $1",
            &[&bb.db_name],
        )
        .await
        .expect("original")
        .get(0);
    assert!(original > 0, "the original database is untouched");
    assert_eq!(
        common::table_checksums(&pg.url(&target))
            .await
            .keys()
            .collect::<Vec<_>>(),
        common::table_checksums(&bb.db_url)
            .await
            .keys()
            .collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_rollback_exits_5_with_the_state_and_the_command_that_recovers() {
    let Some(pg) = common::pg() else { return };
    let (_, db_url) = pg.fresh_db("bb").await;
    let env = Env::new();
    let port = common::free_port();
    let marker = env.dir.path().join("host-is-broken");
    env.write_fleet(&common::bytebase_instance_with_env(
        "bb",
        &db_url,
        port,
        "3.10.0",
        Some("3.11.1"),
        &format!(", BB_SIM_FAIL_START_IF_EXISTS = \"{}\"", marker.display()),
    ));
    start_app(&env).await;
    let client = connect(&db_url).await;
    upshift_sim::bytebase::seed_user_rows(&client, 10)
        .await
        .expect("seed");
    drop(client);
    let before = common::table_checksums(&db_url).await;

    // The migration fails, and the broken host then refuses to start the old version too.
    std::fs::write(&marker, b"").expect("marker");
    let out = env.upshift(&["apply", "bb", "--to", "3.11.1", "--yes", "--json"]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    let report = json(&out);
    assert_eq!(report["outcome"], "needs-operator");
    let help = report["operator_help"].as_str().expect("operator help");
    assert!(
        help.contains("service `app`: stopped version 3.10.0"),
        "the state is spelled out: {help}"
    );
    let id = report["backups"][0]["id"].as_str().expect("backup id");
    let command = format!("upshift restore bb {id}");
    assert!(help.contains(&command), "{help}");
    assert_eq!(
        common::table_checksums(&db_url).await,
        before,
        "the data was restored before the old version failed to start"
    );

    // Once the host is fixed, the printed command puts everything back.
    std::fs::remove_file(&marker).expect("fix the host");
    let out = env.upshift(&["restore", "bb", id, "--yes", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(actuator_version(port).await, "3.10.0");
    assert_eq!(common::table_checksums(&db_url).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_verify_and_a_damaged_byte_is_caught() {
    let Some(pg) = common::pg() else { return };
    let bb = running(pg, "3.10.0", None).await;
    let out = bb.env.upshift(&["backup", "bb", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let id = json(&out)[0]["id"].as_str().expect("id").to_string();

    let out = bb
        .env
        .upshift(&["backup", "verify", &id, "--restore-test", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v = json(&out);
    let names: Vec<&str> = v["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .map(|c| c["name"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(names, ["manifest", "files", "restore-test"]);
    assert!(
        v["checks"]
            .as_array()
            .expect("checks")
            .iter()
            .all(|c| c["passed"] == true),
        "{v}"
    );
    let detail = v["checks"][2]["detail"].as_str().expect("detail");
    assert!(detail.contains("every table matches"), "{detail}");
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(
            bb.env
                .data()
                .join("backups")
                .join(&id)
                .join("manifest.json"),
        )
        .expect("manifest"),
    )
    .expect("manifest json");
    assert_eq!(
        manifest["tables"]["public.project"]["rows"], 41,
        "the default project and 40 seeded ones"
    );
    assert!(
        manifest["tool_version"]
            .as_str()
            .unwrap_or("")
            .contains("pg_dump"),
        "{manifest}"
    );

    // Flip one byte of the largest data file.
    let dir = bb.env.data().join("backups").join(&id);
    let victim = std::fs::read_dir(&dir)
        .expect("dump dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "gz" || x == "dat"))
        .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .expect("a data file");
    let mut bytes = std::fs::read(&victim).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&victim, bytes).expect("write");
    let out = bb.env.upshift(&["backup", "verify", &id, "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let v = json(&out);
    let file = victim
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    assert_eq!(v["checks"][1]["passed"], false);
    assert!(
        v["checks"][1]["detail"]
            .as_str()
            .unwrap_or("")
            .contains(&file),
        "{v}"
    );
    assert_eq!(
        v["backup"]["valid"], false,
        "a damaged backup is marked invalid"
    );

    let out = bb.env.upshift(&["restore", "bb", &id, "--yes"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is marked invalid"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        actuator_version(bb.port).await,
        "3.10.0",
        "nothing was stopped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_backup_clone_verifies_against_its_manifest() {
    let Some(pg) = common::pg() else { return };
    let bb = running(pg, "3.10.0", None).await;
    let out = bb
        .env
        .upshift(&["apply", "bb", "--to", "3.11.1", "--yes", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let id = json(&out)["backups"][0]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let out = bb
        .env
        .upshift(&["backup", "verify", &id, "--restore-test", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let names: Vec<String> = json(&out)["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .map(|c| format!("{}={}", c["name"].as_str().unwrap_or(""), c["passed"]))
        .collect();
    assert_eq!(
        names,
        ["manifest=true", "contents=true", "restore-test=true"]
    );
}

/// The schema version upstream `release` records (the simulator's copy of product-facts §1.5).
fn upstream_schema(release: &str) -> &'static str {
    upshift_sim::bytebase::catalog::UPSTREAM
        .iter()
        .find(|(r, _)| *r == release)
        .map(|(_, schema)| *schema)
        .unwrap_or_else(|| panic!("{release} is not in the upstream table"))
}

/// Whether every check of an apply report passed, with the checks for the message.
fn all_checks_passed(report: &Value) -> (bool, String) {
    let checks = report["checks"].as_array().cloned().unwrap_or_default();
    (
        checks.len() >= 3 && checks.iter().all(|c| c["passed"] == true),
        format!("{checks:?}"),
    )
}

/// The whole release table, 3.3.1 → 3.4.1 → … → 3.21.1, one release at a time on one
/// database: each step is detected at the release it runs and the schema file it records,
/// planned, applied and verified against the schema version upstream records (a file number:
/// 3.11.1 records 3.11.17), never against the release number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_release_of_the_table_upgrades_and_verifies_by_its_schema_file() {
    let Some(pg) = common::pg() else { return };
    let table = upshift_sim::bytebase::catalog::UPSTREAM;
    let (first, first_schema) = table[0];
    let bb = running(pg, first, None).await;
    // 3.3.1 still writes padded versions (`0003.0003.0008-<ts>`); 3.4.1 rewrites them.
    let recorded = |raw: String| {
        upshift_sim::bytebase::catalog::parse_recorded(&raw)
            .map(|(v, _)| v.to_string())
            .unwrap_or(raw)
    };
    assert_eq!(recorded(schema_version(&bb.db_url).await), first_schema);
    let cols = columns(&bb.db_url).await;
    // `setting` gains the row the 3.13/0000 migration inserts; every other table is unchanged.
    let skip = ["instance_change_history", "setting"];
    let before = checksums_over(&bb.db_url, &cols, &skip).await;
    let mut from = first;
    for (release, _) in &table[1..] {
        let planned = bb.env.upshift(&["plan", "bb", "--to", release, "--json"]);
        assert_eq!(
            planned.status.code(),
            Some(0),
            "plan {from} → {release}: {}",
            stderr(&planned)
        );
        let plan = json(&planned);
        let text = plan.to_string();
        assert!(
            text.contains(&format!("\"{from}\"")) && text.contains(&format!("\"{release}\"")),
            "the plan goes {from} → {release}: {plan}"
        );

        let out = bb
            .env
            .upshift(&["apply", "bb", "--to", release, "--yes", "--json"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{from} → {release}: {}",
            stderr(&out)
        );
        let report = json(&out);
        assert_eq!(
            report["outcome"], "succeeded",
            "{from} → {release}: {report}"
        );
        let (passed, checks) = all_checks_passed(&report);
        assert!(passed, "{from} → {release}: {checks}");
        assert_eq!(actuator_version(bb.port).await, *release);
        assert_eq!(
            recorded(schema_version(&bb.db_url).await),
            upstream_schema(release),
            "{release} records its newest schema file"
        );
        from = release;
    }
    let after = checksums_over(&bb.db_url, &cols, &skip).await;
    assert_eq!(
        before, after,
        "every seeded row is intact after the whole table"
    );
}

/// `--to v3.13.0` is the release 3.13.0: it plans, upgrades and verifies, not rolled back over
/// the text `v3.13.0`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_with_a_leading_v_plans_and_verifies() {
    let Some(pg) = common::pg() else { return };
    let bb = running(pg, "3.11.1", None).await;
    let out = bb.env.upshift(&["plan", "bb", "--to", "v3.13.0", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = bb
        .env
        .upshift(&["apply", "bb", "--to", "v3.13.0", "--yes", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report = json(&out);
    assert_eq!(report["outcome"], "succeeded", "{report}");
    let (passed, checks) = all_checks_passed(&report);
    assert!(passed, "{checks}");
    assert_eq!(actuator_version(bb.port).await, "3.13.0");
    assert_eq!(schema_version(&bb.db_url).await, "3.13.31");
}

/// A 3.12 schema under a fleet file that declares 3.10.0 (the API silent) is refused, naming
/// both sources, before anything changes: planning 3.10.0 → 3.11.0 would start an older binary
/// on a newer schema.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_release_older_than_the_schema_is_refused_naming_both() {
    let Some(pg) = common::pg() else { return };
    let migrated = running(pg, "3.12.0", None).await;
    let stop = migrated.env.upshift(&["stop", "bb"]);
    assert_eq!(stop.status.code(), Some(0), "{}", stderr(&stop));
    // The same database under a fleet file (and a data directory) that say 3.10.0.
    let bb = Running {
        env: Env::new(),
        ..migrated
    };
    bb.env.write_fleet(&common::bytebase_instance(
        "bb", &bb.db_url, bb.port, "3.10.0", None,
    ));
    let before = common::table_checksums(&bb.db_url).await;

    let out = bb.env.upshift(&["plan", "bb", "--to", "3.11.0", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let refusal = &json(&out)["outcome"];
    assert_eq!(refusal["rule"], "release-contradicts-schema", "{refusal}");
    let reason = refusal["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("fleet file")
            && reason.contains("3.10.0")
            && reason.contains("instance_change_history")
            && reason.contains("3.12.4"),
        "the refusal names both sources: {reason}"
    );
    assert!(
        refusal["advice"]
            .as_str()
            .unwrap_or_default()
            .contains("fleet file"),
        "{refusal}"
    );
    let out = bb
        .env
        .upshift(&["apply", "bb", "--to", "3.11.0", "--yes", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(json(&out)["refusal"]["rule"], "release-contradicts-schema");
    assert_eq!(
        common::table_checksums(&bb.db_url).await,
        before,
        "nothing changed"
    );
    assert_eq!(
        common::http_get(bb.port, "/healthz").await.0,
        0,
        "nothing was started"
    );
}

/// The notes of a plan report (`upshift plan --json`).
fn notes(report: &Value) -> Vec<String> {
    report["outcome"]["notes"]
        .as_array()
        .map(|n| {
            n.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// A target the release catalog does not know — past its newest release (3.99.0) or between
/// its rows (3.14.2, which the simulator plays) — is refused naming the nearest known releases;
/// with `--allow-unknown` it is planned with a note and, through `preflight`, upgraded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_outside_the_catalog_is_refused_unless_the_operator_allows_it() {
    let Some(pg) = common::pg() else { return };
    let bb = running(pg, "3.11.1", None).await;

    let out = bb.env.upshift(&["plan", "bb", "--to", "3.99.0", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let refusal = &json(&out)["outcome"];
    assert_eq!(refusal["rule"], "unknown-release", "{refusal}");
    let reason = refusal["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("nearest known: 3.21.1"), "{reason}");
    assert!(
        refusal["advice"]
            .as_str()
            .unwrap_or_default()
            .contains("--allow-unknown"),
        "{refusal}"
    );
    let out = bb.env.upshift(&["plan", "bb", "--to", "3.14.2", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let refusal = &json(&out)["outcome"];
    assert_eq!(refusal["rule"], "unknown-release", "{refusal}");
    assert!(
        refusal["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("nearest known: 3.14.1, 3.15.0"),
        "{refusal}"
    );
    let out = bb
        .env
        .upshift(&["apply", "bb", "--to", "3.99.0", "--yes", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(json(&out)["refusal"]["rule"], "unknown-release");

    let out = bb
        .env
        .upshift(&["plan", "bb", "--to", "3.99.0", "--allow-unknown", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report = json(&out);
    assert!(
        notes(&report)
            .iter()
            .any(|n| n.contains("--allow-unknown") && n.contains("cannot know its rules")),
        "the plan notes the unknown release: {report}"
    );
    let shown = report["detection"]["facts"].to_string();
    assert!(
        !shown.contains("operator."),
        "the operator's allowance is not shown as detected: {shown}"
    );

    // Offline alike: refused, then planned with both notes.
    let (code, v) = bb.env.plan_offline("bytebase", "3.21.1", "3.99.0");
    assert_eq!(
        (code, &v["outcome"]["rule"]),
        (Some(3), &Value::from("unknown-release"))
    );
    let out = bb.env.upshift(&[
        "plan",
        "--product",
        "bytebase",
        "--from",
        "3.21.1",
        "--to",
        "3.99.0",
        "--allow-unknown",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let offline = notes(&json(&out));
    assert!(
        offline.iter().any(|n| n.starts_with("Offline plan"))
            && offline.iter().any(|n| n.contains("--allow-unknown")),
        "{offline:?}"
    );

    // Allowed, the upgrade runs: preflight does not refuse what the plan was allowed.
    let out = bb.env.upshift(&[
        "apply",
        "bb",
        "--to",
        "3.14.2",
        "--allow-unknown",
        "--yes",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report = json(&out);
    assert_eq!(report["outcome"], "succeeded", "{report}");
    let (passed, checks) = all_checks_passed(&report);
    assert!(passed, "{checks}");
    assert_eq!(actuator_version(bb.port).await, "3.14.2");
    assert_eq!(schema_version(&bb.db_url).await, "3.14.33");
}

/// A Bytebase whose binary reports one release (`/v1/actuator/info`) while the fleet file
/// declares another is refused naming both sources and what to fix; the same release written
/// `v3.11.1` in the fleet file is no disagreement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_and_the_declared_version_disagreeing_is_refused_naming_both() {
    let Some(pg) = common::pg() else { return };
    let started = |declared: &'static str| async move {
        let (_, db_url) = pg.fresh_db("bb").await;
        let env = Env::new();
        let port = common::free_port();
        // An operator's wrapper runs 3.11.1 whatever the fleet file declares (it is handed
        // `{version}` and ignores it).
        let fleet: String = common::bytebase_instance("bb", &db_url, port, declared, None)
            .lines()
            .map(|line| {
                if line.starts_with("command = ") {
                    format!(
                        r#"command = "sh -c 'exec \"$0\" simulate bytebase --version 3.11.1 --port {port}' '{exe}' {{version}}""#,
                        exe = env!("CARGO_BIN_EXE_upshift")
                    )
                } else {
                    line.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        env.write_fleet(&fleet);
        start_app(&env).await;
        (env, db_url, port)
    };
    let (env, db_url, port) = started("3.10.0").await;
    assert_eq!(actuator_version(port).await, "3.11.1");
    let before = common::table_checksums(&db_url).await;
    let out = env.upshift(&["plan", "bb", "--to", "3.12.0", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let refusal = &json(&out)["outcome"];
    assert_eq!(refusal["rule"], "api-contradicts-declared", "{refusal}");
    let reason = refusal["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("/v1/actuator/info")
            && reason.contains("3.11.1")
            && reason.contains("fleet file")
            && reason.contains("3.10.0"),
        "the refusal names both sources: {reason}"
    );
    assert!(
        refusal["advice"]
            .as_str()
            .unwrap_or_default()
            .contains("set the service's `version` in the fleet file to 3.11.1"),
        "{refusal}"
    );
    let out = env.upshift(&["apply", "bb", "--to", "3.12.0", "--yes", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(json(&out)["refusal"]["rule"], "api-contradicts-declared");
    assert_eq!(
        common::table_checksums(&db_url).await,
        before,
        "nothing changed"
    );
    assert_eq!(actuator_version(port).await, "3.11.1", "still serving");
    let stop = env.upshift(&["stop", "bb"]);
    assert_eq!(stop.status.code(), Some(0), "{}", stderr(&stop));

    let (env, _, _) = started("v3.11.1").await;
    let out = env.upshift(&["plan", "bb", "--to", "3.12.0", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let stop = env.upshift(&["stop", "bb"]);
    assert_eq!(stop.status.code(), Some(0), "{}", stderr(&stop));
}

/// `upshift adapter inspect` shows the range of each bundled adapter's release catalog, from the
/// adapter's bytes.
#[test]
fn inspect_shows_each_release_catalogs_range() {
    let env = Env::new();
    for (product, range) in [
        ("bytebase", ">=3.3.1, <=3.21.1"),
        ("openmetadata", ">=1.1.0, <=2.1.0"),
        ("devlake", ">=0.10.0, <=1.0.3"),
        ("kwdb", ">=2.0.4, <=3.2.1"),
    ] {
        let out = env.upshift(&["adapter", "inspect", product]);
        assert_eq!(out.status.code(), Some(0), "{product}: {}", stderr(&out));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.lines()
                .any(|l| l.starts_with("catalog") && l.contains(range)),
            "{product}: {text}"
        );
        let out = env.upshift(&["adapter", "inspect", product, "--json"]);
        assert_eq!(out.status.code(), Some(0), "{product}: {}", stderr(&out));
        assert_eq!(json(&out)["manifest"]["catalog"], range, "{product}");
    }
}
