//! OpenMetadata end to end through the `upshift` binary, on real PostgreSQL and MariaDB: an
//! upgrade that migrates through the one-shot `migrate` job with every seeded entity intact, a
//! failing migration rolled back to identical data, the 2.0 gate and the other refusals,
//! offline plans, and a restore that puts the backup's version back on its own data.
//! OpenMetadata is played by the simulator in tests/simulators (test infrastructure that
//! behaves as OpenMetadata does at upgrade time).

mod common;

use std::collections::BTreeMap;

use common::{Env, connect, free_port, http_get, json, start_services, stderr, step_ids};

/// Where the instance's database is, as the server's environment spells it.
struct Db {
    url: String,
    scheme: &'static str,
    port: u16,
    user: String,
    name: String,
}

fn db_on(url: &str, scheme: &'static str, user: &str, name: &str) -> Db {
    let port = common::url_port(url);
    Db {
        url: url.to_string(),
        scheme,
        port,
        user: user.to_string(),
        name: name.to_string(),
    }
}

/// An OpenMetadata instance `om` on `db`, installed at `version` and seeded.
struct Om {
    env: Env,
    port: u16,
}

fn fleet(db: &Db, version: &str, port: u16, admin: u16, extra_env: &str) -> String {
    let database = upshift_sim::fleet::OmDatabase {
        url: &db.url,
        scheme: db.scheme,
        port: db.port,
        user: &db.user,
        name: &db.name,
    };
    upshift_sim::fleet::openmetadata(
        "om",
        std::path::Path::new(env!("CARGO_BIN_EXE_upshift")),
        &database,
        version,
        (port, admin),
        extra_env,
    )
}

async fn installed(db: &Db, version: &str, extra_env: &str) -> Om {
    let env = Env::new();
    let (port, admin) = (free_port(), free_port());
    env.write_fleet(&fleet(db, version, port, admin, extra_env));
    // A fresh install: the migrate job, seed, then the server.
    start_services(&env, "om", &["migrate"]).await;
    if db.scheme == "postgresql" {
        upshift_sim::openmetadata::seed_pg(&connect(&db.url).await, 25)
            .await
            .expect("seed");
    } else {
        let mut conn = mysql_async::Conn::new(mysql_async::Opts::from_url(&db.url).expect("url"))
            .await
            .expect("connect");
        upshift_sim::openmetadata::seed_mysql(&mut conn, 25)
            .await
            .expect("seed");
    }
    start_services(&env, "om", &["server"]).await;
    Om { env, port }
}

async fn pg_om(pg: &common::Pg, version: &str, extra_env: &str) -> (Om, Db) {
    let (name, url) = pg.fresh_db("om").await;
    let db = db_on(&url, "postgresql", &name, &name);
    (installed(&db, version, extra_env).await, db)
}

async fn version(port: u16) -> String {
    let (status, body) = http_get(port, "/api/v1/version").await;
    assert_eq!(status, 200, "/api/v1/version: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    v["version"].as_str().unwrap_or_default().to_string()
}

/// Row count and checksum of every entity table (the change-log tables grow by design).
async fn entities(url: &str) -> BTreeMap<String, (i64, String)> {
    common::table_checksums(url)
        .await
        .into_iter()
        .filter(|(t, _)| t.ends_with("_entity") || t == "entity_relationship")
        .collect()
}

async fn max_change_log(url: &str) -> Vec<String> {
    let client = connect(url).await;
    client
        .query(
            "SELECT version FROM server_change_log ORDER BY installed_rank",
            &[],
        )
        .await
        .expect("change log")
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_migrates_through_the_job_and_keeps_every_entity() {
    let Some(pg) = common::pg() else { return };
    let (om, db) = pg_om(pg, "1.9.0", "").await;
    let before = entities(&db.url).await;
    assert!(
        before.get("table_entity").is_some_and(|(n, _)| *n >= 25),
        "{before:?}"
    );

    let out = om
        .env
        .upshift(&["apply", "om", "--to", "1.12.1", "--yes", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report = json(&out);
    assert_eq!(report["outcome"], "succeeded", "{report}");
    assert_eq!(
        step_ids(&report, "forward"),
        [
            "preflight",
            "stop",
            "backup-meta",
            "switch-server",
            "switch-migrate",
            "migrate",
            "start",
            "wait-healthy",
            "check-version"
        ]
    );
    let checks = report["checks"].as_array().expect("checks");
    assert!(
        checks.len() >= 7 && checks.iter().all(|c| c["passed"] == true),
        "{checks:?}"
    );
    assert_eq!(report["backups"][0]["product_version"], "1.9.0");
    assert_eq!(version(om.port).await, "1.12.1");
    assert!(
        max_change_log(&db.url)
            .await
            .contains(&"1.12.0".to_string())
    );
    let after = entities(&db.url).await;
    for (table, (n, _)) in &before {
        assert!(
            after.get(table).is_some_and(|(m, _)| m >= n),
            "{table}: {before:?} → {after:?}"
        );
    }

    // Restore: the 1.9.0 backup goes back into a clean database and 1.9.0 starts on it.
    let restore = report["rollback_command"]
        .as_str()
        .expect("rollback command")
        .to_string();
    let mut args: Vec<&str> = restore.split_whitespace().skip(1).collect();
    args.extend(["--yes", "--json"]);
    let out = om.env.upshift(&args);
    assert_eq!(out.status.code(), Some(0), "{restore}: {}", stderr(&out));
    assert_eq!(version(om.port).await, "1.9.0");
    assert_eq!(
        entities(&db.url).await,
        before,
        "the backup's data, exactly"
    );
    let log = max_change_log(&db.url).await;
    assert!(
        log.contains(&"1.9.0".to_string()) && !log.iter().any(|v| v == "1.10.0" || v == "1.12.0"),
        "a 1.9.0-shaped database: {log:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_migration_is_rolled_back_to_identical_data() {
    let Some(pg) = common::pg() else { return };
    // 1.12.1's own migration (1.12.0) fails after its schema changes ran.
    let (om, db) = pg_om(pg, "1.9.0", ", OM_SIM_FAIL_MIGRATION = \"1.12.0\"").await;
    let before = common::table_checksums(&db.url).await;

    let out = om
        .env
        .upshift(&["apply", "om", "--to", "1.12.1", "--yes", "--json"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let report = json(&out);
    assert_eq!(report["outcome"], "rolled-back");
    assert_eq!(
        step_ids(&report, "rollback"),
        [
            "rollback-stop-server",
            "rollback-stop-migrate",
            "rollback-restore-meta",
            "rollback-switch-server",
            "rollback-switch-migrate",
            "rollback-start-server",
            "rollback-wait-server"
        ]
    );
    assert_eq!(
        common::table_checksums(&db.url).await,
        before,
        "every table is identical"
    );
    assert_eq!(
        version(om.port).await,
        "1.9.0",
        "the old version serves again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_refusals_name_the_rule() {
    let Some(pg) = common::pg() else { return };
    let (om, db) = pg_om(pg, "1.12.1", "").await;
    let out = om.env.upshift(&["plan", "om", "--to", "2.1.0", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let refusal = &json(&out)["outcome"];
    assert_eq!(refusal["rule"], "via-latest-2.0", "{refusal}");
    assert_eq!(refusal["path"], serde_json::json!(["2.0.3", "2.1.0"]));
    let out = om.env.upshift(&["plan", "om", "--to", "1.9.0", "--json"]);
    assert_eq!(json(&out)["outcome"]["rule"], "downgrade");

    // Through 2.0.3 it goes; a FAILED change-log row then blocks the next upgrade.
    let out = om
        .env
        .upshift(&["apply", "om", "--to", "2.0.3", "--yes", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    connect(&db.url)
        .await
        .execute(
            "UPDATE server_change_log SET status = 'FAILED' WHERE version = '2.0.3'",
            &[],
        )
        .await
        .expect("mark failed");
    let out = om
        .env
        .upshift(&["apply", "om", "--to", "2.1.0", "--yes", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(json(&out)["refusal"]["rule"], "unfinished-migrations");
    assert_eq!(version(om.port).await, "2.0.3", "nothing was touched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_on_mariadb_crosses_into_2_0() {
    let Some(my) = common::mysql::mysql() else {
        return;
    };
    let (name, url) = my.fresh_db("om").await;
    // The product and the binding share a least-privilege account named after the database.
    let db = db_on(&url, "mysql", &name, &name);
    let om = installed(&db, "1.12.1", "").await;
    let out = om
        .env
        .upshift(&["apply", "om", "--to", "2.0.3", "--yes", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report = json(&out);
    assert!(
        report["checks"]
            .as_array()
            .expect("checks")
            .iter()
            .all(|c| c["passed"] == true),
        "{report}"
    );
    assert_eq!(version(om.port).await, "2.0.3");
    let out = om
        .env
        .upshift(&["apply", "om", "--to", "2.1.0", "--yes", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(version(om.port).await, "2.1.0");
}

/// The fact `key` of a plan report's detection.
fn detected<'a>(report: &'a serde_json::Value, key: &str) -> Option<&'a str> {
    report["detection"]["facts"]
        .as_array()?
        .iter()
        .find(|f| f["key"] == key)?["value"]
        .as_str()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quoted_upper_case_change_log_is_read_by_its_own_name() {
    let Some(pg) = common::pg() else { return };
    let (om, db) = pg_om(pg, "1.9.0", "").await;
    // A change log created with a quoted name keeps its upper case on PostgreSQL; unquoted,
    // `SERVER_CHANGE_LOG` folds to `server_change_log`, which no longer exists.
    connect(&db.url)
        .await
        .batch_execute("ALTER TABLE server_change_log RENAME TO \"SERVER_CHANGE_LOG\"")
        .await
        .expect("rename");
    let out = om.env.upshift(&["plan", "om", "--to", "1.12.1", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report = json(&out);
    assert_eq!(detected(&report, "db-version"), Some("1.9.0"), "{report}");
    assert!(
        detected(&report, "change-log-rows").is_some_and(|n| n != "0"),
        "{report}"
    );
    // Its rows still count: a FAILED one refuses as it would in the lower-case table.
    connect(&db.url)
        .await
        .batch_execute(
            "ALTER TABLE \"SERVER_CHANGE_LOG\" ADD COLUMN status VARCHAR(20) DEFAULT 'COMPLETED'; \
             UPDATE \"SERVER_CHANGE_LOG\" SET status = 'FAILED' WHERE version = '1.9.0'",
        )
        .await
        .expect("mark failed");
    let out = om.env.upshift(&["plan", "om", "--to", "1.12.1", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(json(&out)["outcome"]["rule"], "unfinished-migrations");
}

/// The case: a database whose SERVER_CHANGE_LOG reaches 1.9.4 behind a server that
/// says 1.9.0 is refused, naming both sources and what to fix, instead of planning 1.9.0 → 1.9.2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_release_older_than_the_database_is_refused() {
    let Some(pg) = common::pg() else { return };
    let (om, db) = pg_om(pg, "1.9.0", "").await;
    let out = om.env.upshift(&["plan", "om", "--to", "1.9.2", "--json"]);
    assert_eq!(out.status.code(), Some(0), "agreeing: {}", stderr(&out));
    connect(&db.url)
        .await
        .batch_execute(
            "INSERT INTO server_change_log (version, migrationfilename, checksum) \
             VALUES ('1.9.4', 'bootstrap/sql/migrations/native/1.9.4', 'x')",
        )
        .await
        .expect("a newer release's row");
    let out = om.env.upshift(&["plan", "om", "--to", "1.9.2", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let refusal = &json(&out)["outcome"];
    assert_eq!(refusal["rule"], "release-contradicts-database", "{refusal}");
    let reason = refusal["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("/api/v1/version says release 1.9.0") && reason.contains("1.9.4"),
        "{reason}"
    );
    let advice = refusal["advice"].as_str().unwrap_or_default();
    assert!(
        advice.contains("fleet file") && advice.contains("restore"),
        "{advice}"
    );
    assert_eq!(version(om.port).await, "1.9.0", "nothing was touched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entity_tables_without_history_are_refused_as_abort() {
    let Some(pg) = common::pg() else { return };
    // A half-restored database: entity tables, no SERVER_CHANGE_LOG (the runner's ABORT, §3.2).
    let (name, url) = pg.fresh_db("om").await;
    connect(&url)
        .await
        .batch_execute("CREATE TABLE table_entity (id varchar(36) PRIMARY KEY, json jsonb)")
        .await
        .expect("entity table");
    let env = Env::new();
    let db = db_on(&url, "postgresql", &name, &name);
    env.write_fleet(&fleet(&db, "1.9.0", free_port(), free_port(), ""));
    let out = env.upshift(&["plan", "om", "--to", "1.12.1", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(json(&out)["outcome"]["rule"], "abort-state");
}

#[test]
fn offline_plans_follow_the_version_paths() {
    let env = Env::new();
    let plan = |from: &str, to: &str| env.plan_offline("openmetadata", from, to);
    let (code, v) = plan("1.9.0", "1.12.1");
    assert_eq!(code, Some(0), "{v}");
    let (code, v) = plan("1.12.1", "2.1.0");
    assert_eq!(
        (code, v["outcome"]["rule"].as_str()),
        (Some(3), Some("via-latest-2.0"))
    );
    assert_eq!(v["outcome"]["path"], serde_json::json!(["2.0.3", "2.1.0"]));
    let (code, _) = plan("2.0.3", "2.1.0");
    assert_eq!(code, Some(0));
    let (code, v) = plan("2.0.3", "1.12.1");
    assert_eq!(
        (code, v["outcome"]["rule"].as_str()),
        (Some(3), Some("downgrade"))
    );
    let (code, v) = plan("1.12.1", "1.12.1");
    assert_eq!(
        (code, v["outcome"]["rule"].as_str()),
        // Nothing to do is not a refusal: exit 0.
        (Some(0), Some("already-at-target"))
    );
    let (code, v) = plan("2.1.0", "3.0.0");
    assert_eq!(
        (code, v["outcome"]["rule"].as_str()),
        (Some(3), Some("unknown-major"))
    );
    // A release the catalog does not know: refused with the nearest known ones.
    let (code, v) = plan("1.9.0", "1.9.7");
    assert_eq!(
        (code, v["outcome"]["rule"].as_str()),
        (Some(3), Some("unknown-release")),
        "{v}"
    );
    let reason = v["outcome"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("1.9.6 and 1.9.8"), "{reason}");
}
