//! Apache DevLake end to end through the `upshift` binary, on a real MariaDB: an upgrade that
//! passes the 428 migration gate with every seeded row and token intact, a failing migration
//! script rolled back to identical data, every secret rule, downgrades, offline plans and a
//! restore. DevLake is played by the simulator in tests/simulators (test infrastructure that
//! behaves as DevLake does at upgrade time).

mod common;

use std::path::PathBuf;

use common::docker::{self, ComposeDown, DEVLAKE_SIM_REPO};
use common::mysql::{MySql, checksums, tables};
use common::{Env, connect, free_port, http_get, json, start_services, stderr, step_ids};

const SECRET: &str = "s3cret-of-the-lake";

/// A DevLake instance `dl` on a fresh MariaDB database, with its `.env` in `config/`.
struct Lake {
    env: Env,
    db: String,
    port: u16,
    config: PathBuf,
}

fn fleet(
    db_url: &str,
    port: u16,
    version: &str,
    config: &std::path::Path,
    extra_env: &str,
) -> String {
    upshift_sim::fleet::devlake(
        "dl",
        std::path::Path::new(env!("CARGO_BIN_EXE_upshift")),
        db_url,
        port,
        version,
        config,
        extra_env,
    )
}

fn env_text(port: u16, db_url: &str, secret_line: &str) -> String {
    format!(
        "# DevLake configuration\nPORT={port}\nDB_URL={db_url}?charset=utf8mb4&parseTime=True&loc=UTC\n{secret_line}\n"
    )
}

async fn lake(
    my: &MySql,
    version: &str,
    secret_line: &str,
    extra_env: &str,
    seed_secret: &str,
) -> Lake {
    let (db, url) = my.fresh_db("lake").await;
    let env = Env::new();
    let port = free_port();
    let config = env.dir.path().join("config");
    std::fs::create_dir_all(&config).expect("config dir");
    std::fs::write(config.join(".env"), env_text(port, &url, secret_line)).expect(".env");
    env.write_fleet(&fleet(&url, port, version, &config, extra_env));
    start_services(&env, "dl", &["app"]).await;
    let mut conn = my.conn(&db).await;
    upshift_sim::devlake::seed(&mut conn, seed_secret, 30)
        .await
        .expect("seed");
    Lake {
        env,
        db,
        port,
        config,
    }
}

async fn version(port: u16) -> String {
    let (status, body) = http_get(port, "/version").await;
    assert_eq!(status, 200, "/version: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    v["version"]
        .as_str()
        .unwrap_or_default()
        .split('@')
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Checksums of the tables that existed before, except the locking history, which gains a row
/// at every start by design (§4.1), and the lock stub a running DevLake holds locked.
async fn data(
    my: &MySql,
    db: &str,
    of: &[String],
) -> std::collections::BTreeMap<String, (u64, Option<u64>)> {
    let mut conn = my.conn(db).await;
    let keep: Vec<String> = of
        .iter()
        .filter(|t| *t != "_devlake_locking_history" && *t != "_devlake_locking_stub")
        .cloned()
        .collect();
    checksums(&mut conn, db, &keep).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_passes_the_migration_gate_and_keeps_data_and_tokens() {
    let Some(my) = common::mysql::mysql() else {
        return;
    };
    let dl = lake(
        my,
        "v1.0.0",
        &format!("ENCRYPTION_SECRET={SECRET}"),
        "",
        SECRET,
    )
    .await;
    let mut conn = my.conn(&dl.db).await;
    let before_tables = tables(&mut conn, &dl.db).await;
    let before = data(my, &dl.db, &before_tables).await;
    assert!(
        before.get("repos").is_some_and(|(n, _)| *n == 30),
        "{before:?}"
    );

    let out = dl
        .env
        .upshift(&["apply", "dl", "--to", "v1.0.1", "--yes", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report = json(&out);
    assert_eq!(report["outcome"], "succeeded", "{report}");
    assert_eq!(
        step_ids(&report, "forward"),
        [
            "preflight",
            "stop",
            "backup-lake",
            "snapshot-config",
            "switch",
            "start",
            "migrate",
            "wait-healthy",
            "check-version"
        ]
    );
    let gate = report["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .find(|s| s["id"] == "migrate")
        .expect("migrate step");
    assert!(
        gate["message"]
            .as_str()
            .unwrap_or("")
            .contains("/proceed-db-migration"),
        "{gate}"
    );
    let checks = report["checks"].as_array().expect("checks");
    assert!(
        checks
            .iter()
            .any(|c| c["name"] == "connection-1-decrypts" && c["passed"] == true),
        "{checks:?}"
    );
    assert!(checks.iter().all(|c| c["passed"] == true), "{checks:?}");
    assert_eq!(report["backups"][0]["product_version"], "v1.0.0");
    assert_eq!(
        report["backups"].as_array().map(Vec::len),
        Some(2),
        "the database and the .env"
    );

    assert_eq!(version(dl.port).await, "v1.0.1");
    // The seeded rows are all there (the migration added columns, so compare counts).
    let mut conn = my.conn(&dl.db).await;
    let repos: Option<u64> =
        mysql_async::prelude::Queryable::query_first(&mut conn, "SELECT COUNT(*) FROM repos")
            .await
            .expect("count");
    let prs: Option<u64> = mysql_async::prelude::Queryable::query_first(
        &mut conn,
        "SELECT COUNT(*) FROM pull_requests",
    )
    .await
    .expect("count");
    assert_eq!((repos, prs), (Some(30), Some(30)));
    let (status, body) = http_get(dl.port, "/plugins/github/connections/1").await;
    assert_eq!(status, 200, "the token still decrypts: {body}");

    // The printed rollback command restores v1.0.0 with its data.
    let restore = report["rollback_command"]
        .as_str()
        .expect("rollback command");
    let args: Vec<&str> = restore.split_whitespace().skip(1).collect();
    let mut full = args.clone();
    full.extend(["--yes", "--json"]);
    let out = dl.env.upshift(&full);
    assert_eq!(out.status.code(), Some(0), "{restore}: {}", stderr(&out));
    assert_eq!(version(dl.port).await, "v1.0.0");
    assert_eq!(
        data(my, &dl.db, &before_tables).await,
        before,
        "restored to the backup's data"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_migration_script_is_rolled_back_to_identical_data() {
    let Some(my) = common::mysql::mysql() else {
        return;
    };
    // v1.0.1's newest script fails with "Error 1060: Duplicate column name" after earlier ones ran.
    let dl = lake(
        my,
        "v1.0.0",
        &format!("ENCRYPTION_SECRET={SECRET}"),
        ", DL_SIM_FAIL_SCRIPT = \"20240813160242\"",
        SECRET,
    )
    .await;
    let mut conn = my.conn(&dl.db).await;
    let before_tables = tables(&mut conn, &dl.db).await;
    let before = data(my, &dl.db, &before_tables).await;
    let env_before = std::fs::read(dl.config.join(".env")).expect(".env");

    let out = dl
        .env
        .upshift(&["apply", "dl", "--to", "v1.0.1", "--yes", "--json"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let report = json(&out);
    assert_eq!(report["outcome"], "rolled-back");
    assert!(
        report["failure"]
            .as_str()
            .unwrap_or("")
            .contains("Error 1060"),
        "{report}"
    );
    assert_eq!(
        step_ids(&report, "rollback"),
        [
            "rollback-stop-app",
            "rollback-restore-files-config",
            "rollback-restore-lake",
            "rollback-switch-app",
            "rollback-start-app",
            "rollback-wait-app"
        ]
    );
    assert_eq!(
        data(my, &dl.db, &before_tables).await,
        before,
        "every table is identical"
    );
    assert_eq!(
        std::fs::read(dl.config.join(".env")).expect(".env"),
        env_before
    );
    assert_eq!(
        version(dl.port).await,
        "v1.0.0",
        "the old version serves again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_secret_rules_refuse_before_anything_changes() {
    let Some(my) = common::mysql::mysql() else {
        return;
    };
    let dl = lake(
        my,
        "v1.0.0",
        &format!("ENCRYPTION_SECRET={SECRET}"),
        "",
        SECRET,
    )
    .await;
    let env_file = dl.config.join(".env");
    let original = std::fs::read_to_string(&env_file).expect(".env");
    let refused = |text: String, rule: &'static str| {
        std::fs::write(&env_file, text).expect("write .env");
        let out = dl
            .env
            .upshift(&["apply", "dl", "--to", "v1.0.1", "--yes", "--json"]);
        assert_eq!(out.status.code(), Some(3), "{rule}: {}", stderr(&out));
        assert_eq!(json(&out)["refusal"]["rule"], rule);
    };
    // A changed secret: the stored token no longer opens with it.
    refused(original.replace(SECRET, "a-new-secret"), "secret-changed");
    // A lost secret.
    refused(
        original.replace(&format!("ENCRYPTION_SECRET={SECRET}"), ""),
        "secret-missing",
    );
    // Only the pre-0.18 name.
    refused(
        original.replace("ENCRYPTION_SECRET=", "ENCODE_KEY="),
        "encode-key-not-carried-over",
    );
    std::fs::write(&env_file, &original).expect("restore .env");
    assert_eq!(version(dl.port).await, "v1.0.0", "nothing was touched");

    // Once v1.0.1 has migrated, going back to v1.0.0 is refused.
    let out = dl.env.upshift(&["apply", "dl", "--to", "v1.0.1", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = dl.env.upshift(&["plan", "dl", "--to", "v1.0.0", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(json(&out)["outcome"]["rule"], "downgrade-after-migration");
}

/// A wrong secret and a stored token that is not in DevLake's format are two different
/// refusals: only the first is "the secret was changed or lost" (§4.3; the format checked on
/// apache/incubator-devlake `backend/core/plugin/plugin_utils.go@v1.0.3`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_token_is_not_reported_as_a_wrong_secret() {
    let Some(my) = common::mysql::mysql() else {
        return;
    };
    let dl = lake(
        my,
        "v1.0.0",
        &format!("ENCRYPTION_SECRET={SECRET}"),
        "",
        SECRET,
    )
    .await;
    let plan = |what: &str| {
        let out = dl.env.upshift(&["plan", "dl", "--to", "v1.0.1", "--json"]);
        assert_eq!(out.status.code(), Some(3), "{what}: {}", stderr(&out));
        json(&out)["outcome"].clone()
    };
    // The secret that wrote the token opens it: the plan goes through.
    let out = dl.env.upshift(&["plan", "dl", "--to", "v1.0.1", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    // A wrong secret: DevLake's format, but it does not open.
    let env_file = dl.config.join(".env");
    let original = std::fs::read_to_string(&env_file).expect(".env");
    std::fs::write(&env_file, original.replace(SECRET, "a-new-secret")).expect(".env");
    let wrong = plan("wrong secret");
    assert_eq!(wrong["rule"], "secret-changed", "{wrong}");
    let reason = wrong["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("changed or lost"), "{reason}");
    assert!(!reason.contains("cannot decode"), "{reason}");
    std::fs::write(&env_file, &original).expect(".env");

    // The right secret, but a token that is not what DevLake writes: a plaintext token, then
    // Base64 that is not whole AES blocks.
    let mut conn = my.conn(&dl.db).await;
    for (stored, why) in [("ghp_plaintexttoken", "Base64"), ("c2hvcnQ=", "AES blocks")] {
        use mysql_async::prelude::Queryable;
        conn.exec_drop(
            "UPDATE _tool_github_connections SET token = ? WHERE id = 1",
            (stored,),
        )
        .await
        .expect("update token");
        let bad = plan(stored);
        assert_eq!(bad["rule"], "token-undecodable", "{bad}");
        let reason = bad["reason"].as_str().unwrap_or_default();
        assert!(reason.contains("cannot decode"), "{reason}");
        assert!(reason.contains(why), "{reason}");
        assert!(!reason.contains("changed or lost"), "{reason}");
    }
    assert_eq!(version(dl.port).await, "v1.0.0", "nothing was touched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encode_key_carried_over_across_0_18() {
    let Some(my) = common::mysql::mysql() else {
        return;
    };
    // A v0.17 instance keeps its key as ENCODE_KEY.
    let dl = lake(my, "v0.17.0", &format!("ENCODE_KEY={SECRET}"), "", SECRET).await;
    let out = dl.env.upshift(&["plan", "dl", "--to", "v0.18.0", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(json(&out)["outcome"]["rule"], "encode-key-not-carried-over");
    // Carrying the value over as ENCRYPTION_SECRET is what the advice says; then it upgrades.
    let env_file = dl.config.join(".env");
    let text = std::fs::read_to_string(&env_file).expect(".env");
    std::fs::write(&env_file, format!("{text}ENCRYPTION_SECRET={SECRET}\n")).expect(".env");
    let out = dl
        .env
        .upshift(&["apply", "dl", "--to", "v0.18.0", "--yes", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(version(dl.port).await, "v0.18.0");
    let (status, body) = http_get(dl.port, "/plugins/github/connections/1").await;
    assert_eq!(status, 200, "{body}");
}

#[test]
fn offline_plans_for_the_version_paths() {
    let env = Env::new();
    let plan = |from: &str, to: &str| env.plan_offline("devlake", from, to);
    let (code, v) = plan("v0.17.0", "v0.18.0");
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["outcome"]["to_version"], "v0.18.0");
    let (code, v) = plan("v1.0.1", "v1.0.0");
    assert_eq!(
        (code, v["outcome"]["rule"].as_str()),
        (Some(3), Some("downgrade-after-migration"))
    );
    let (code, v) = plan("v1.0.1", "v1.0.1");
    assert_eq!(
        (code, v["outcome"]["rule"].as_str()),
        // Nothing to do is not a refusal: exit 0.
        (Some(0), Some("already-at-target"))
    );
    let (code, v) = plan("v1.0.1", "v2.0.0");
    assert_eq!(
        (code, v["outcome"]["rule"].as_str()),
        (Some(3), Some("unknown-major"))
    );
    // Not a product version: the host refuses it before the adapter sees it (exit 2, usage).
    let out = env.upshift(&[
        "plan",
        "--product",
        "devlake",
        "--from",
        "v1.0.1",
        "--to",
        "latest",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", common::stderr(&out));
    assert!(
        common::stderr(&out).contains("`latest` is not a product version"),
        "{}",
        common::stderr(&out)
    );
    // A release the catalog does not know: refused with the nearest known ones.
    let (code, v) = env.plan_offline("devlake", "v1.0.0", "v1.0.9");
    assert_eq!(
        (code, v["outcome"]["rule"].as_str()),
        (Some(3), Some("unknown-release")),
        "{v}"
    );
    let reason = v["outcome"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("v1.0.3"), "{reason}");
}

/// A database that a newer DevLake migrated, behind a DevLake that says v1.0.0, is refused
/// naming both sources and what to fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_release_older_than_the_database_is_refused() {
    let Some(my) = common::mysql::mysql() else {
        return;
    };
    let dl = lake(
        my,
        "v1.0.0",
        &format!("ENCRYPTION_SECRET={SECRET}"),
        "",
        SECRET,
    )
    .await;
    let out = dl.env.upshift(&["plan", "dl", "--to", "v1.0.1", "--json"]);
    assert_eq!(out.status.code(), Some(0), "agreeing: {}", stderr(&out));
    // v1.0.1's newest framework script (upstream `Version()` at v1.0.1).
    let mut conn = my.conn(&dl.db).await;
    mysql_async::prelude::Queryable::query_drop(
        &mut conn,
        "INSERT INTO _devlake_migration_history (script_version, script_name, comment, created_at) VALUES (20240813160242, 'newer', 'Framework', NOW(3))",
    )
    .await
    .expect("a newer release's row");
    let out = dl.env.upshift(&["plan", "dl", "--to", "v1.0.1", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let refusal = &json(&out)["outcome"];
    assert_eq!(refusal["rule"], "release-contradicts-database", "{refusal}");
    let reason = refusal["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("/version says release v1.0.0") && reason.contains("20240813160242"),
        "{reason}"
    );
    let advice = refusal["advice"].as_str().unwrap_or_default();
    assert!(
        advice.contains("fleet file") && advice.contains("restore"),
        "{advice}"
    );
    assert_eq!(version(dl.port).await, "v1.0.0", "nothing was touched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approach_1_an_image_tag_bump_through_compose() {
    let Some(my) = common::mysql::mysql() else {
        return;
    };
    if !docker::available() {
        return;
    }
    docker::devlake_images(&["v1.0.0", "v1.0.1"]);
    let (db, url) = my.fresh_db("lake").await;
    let dir = tempfile::Builder::new()
        .prefix("upshiftlake")
        .tempdir()
        .expect("tempdir");
    let config = dir.path().join("config");
    std::fs::create_dir_all(&config).expect("config dir");
    let port = free_port();
    std::fs::write(
        config.join(".env"),
        env_text(port, &url, &format!("ENCRYPTION_SECRET={SECRET}")),
    )
    .expect(".env");
    // As DevLake's compose file from v0.18 does: the .env as env_file, no mount (§4.2).
    let compose = dir.path().join("docker-compose.yml");
    let original = format!(
        "version: \"2.4\"\nservices:\n  devlake:\n    image: {DEVLAKE_SIM_REPO}:v1.0.0   # from the release's compose file\n    network_mode: host\n    env_file: ./config/.env\n    restart: unless-stopped\n"
    );
    std::fs::write(&compose, &original).expect("compose file");
    let _down = ComposeDown(compose.clone());
    let up = std::process::Command::new("docker-compose")
        .arg("-f")
        .arg(&compose)
        .args(["up", "-d", "devlake"])
        .output()
        .expect("docker-compose");
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    for _ in 0..100 {
        if http_get(port, "/ping").await.0 == 200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let mut conn = my.conn(&db).await;
    upshift_sim::devlake::seed(&mut conn, SECRET, 12)
        .await
        .expect("seed");

    let env = Env::new();
    env.write_fleet(&format!(
        r#"
[[instance]]
name = "dl"
product = "devlake"

[instance.db.lake]
url = "{url}"

[instance.service.app]
kind = "compose"
file = "{compose}"
service = "devlake"
image = "{DEVLAKE_SIM_REPO}:{{version}}"
health_url = "http://127.0.0.1:{port}/ping"
stop_timeout_secs = 5

[instance.http.api]
url = "http://127.0.0.1:{port}"

[instance.files.config]
path = "{config}"
"#,
        compose = compose.display(),
        config = config.display(),
    ));
    let out = env.upshift(&["apply", "dl", "--to", "v1.0.1", "--yes", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        json(&out)["checks"]
            .as_array()
            .expect("checks")
            .iter()
            .all(|c| c["passed"] == true)
    );
    assert_eq!(version(port).await, "v1.0.1");
    // Only the tag changed, comment and layout kept.
    assert_eq!(
        std::fs::read_to_string(&compose).expect("compose file"),
        original.replace(":v1.0.0   #", ":v1.0.1   #")
    );
    let (status, body) = http_get(port, "/plugins/github/connections/1").await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_on_postgresql_passes_the_gate_and_keeps_the_tokens() {
    let Some(pg) = common::pg() else { return };
    let (_, url) = pg.fresh_db("lake").await;
    let env = Env::new();
    let port = free_port();
    let config = env.dir.path().join("config");
    std::fs::create_dir_all(&config).expect("config dir");
    std::fs::write(
        config.join(".env"),
        format!("PORT={port}\nDB_URL={url}\nENCRYPTION_SECRET={SECRET}\n"),
    )
    .expect(".env");
    env.write_fleet(&fleet(&url, port, "v1.0.0", &config, ""));
    start_services(&env, "dl", &["app"]).await;
    upshift_sim::devlake::seed_pg(&connect(&url).await, SECRET, 20)
        .await
        .expect("seed");
    let before = common::table_checksums(&url).await;

    let out = env.upshift(&["apply", "dl", "--to", "v1.0.1", "--yes", "--json"]);
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
    assert_eq!(version(port).await, "v1.0.1");
    let client = connect(&url).await;
    let repos: i64 = client
        .query_one("SELECT count(*) FROM repos", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(repos, 20);
    assert!(before.contains_key("_devlake_migration_history"));
    let (status, body) = http_get(port, "/plugins/github/connections/1").await;
    assert_eq!(status, 200, "{body}");
}
