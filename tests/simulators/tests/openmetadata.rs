//! The OpenMetadata simulator behaves as product-facts §3 says, on a real PostgreSQL and a real
//! MariaDB, driven as real processes.

use std::process::Stdio;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use mysql_async::prelude::Queryable;
use upshift_sim::mariadb::Server;
use upshift_sim::openmetadata::server::{NO_FLYWAY_MESSAGE, PENDING_MESSAGE};
use upshift_sim::openmetadata::store::{DbConfig, Engine, Store};
use upshift_sim::pg::Cluster;

const BIN: &str = env!("CARGO_BIN_EXE_openmetadata-sim");

static PG: OnceLock<Result<Cluster, String>> = OnceLock::new();
static MY: OnceLock<Result<Server, String>> = OnceLock::new();
static NEXT: AtomicU32 = AtomicU32::new(0);

/// Remove directories of earlier runs whose process is gone.
fn sweep(prefix: &str) {
    if let Ok(entries) = std::fs::read_dir(env!("CARGO_TARGET_TMPDIR")) {
        for e in entries.filter_map(Result::ok) {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix(prefix)
                && !std::path::Path::new(&format!("/proc/{pid}")).exists()
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

fn dir(prefix: &str) -> std::path::PathBuf {
    sweep(prefix);
    let d = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{prefix}{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn available<T>(what: &str, r: &'static Result<T, String>) -> Option<&'static T> {
    match r {
        Ok(s) => Some(s),
        Err(why) if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!("SKIPPED: {what} is missing: {why}");
            None
        }
        Err(why) => panic!("{what} is missing: {why}"),
    }
}

/// A fresh, empty metadata database on `engine`, as the simulator's environment sees it.
async fn fresh(engine: Engine) -> Option<DbConfig> {
    let name = format!(
        "om_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let port = match engine {
        Engine::Postgres => {
            let c = available(
                "PostgreSQL",
                PG.get_or_init(|| Cluster::start(&dir("om-pg-")).map_err(|e| e.to_string())),
            )?;
            c.create_database(&name).expect("create database");
            c.port()
        }
        Engine::MySql => {
            let s = available(
                "MariaDB",
                MY.get_or_init(|| Server::start(&dir("om-mariadb-")).map_err(|e| e.to_string())),
            )?;
            let mut conn =
                mysql_async::Conn::new(mysql_async::Opts::from_url(&s.url("")).expect("url"))
                    .await
                    .expect("conn");
            conn.query_drop(format!("CREATE DATABASE `{name}`"))
                .await
                .expect("create");
            s.port()
        }
    };
    Some(DbConfig {
        engine,
        host: "127.0.0.1".into(),
        port,
        user: match engine {
            Engine::Postgres => "postgres".into(),
            Engine::MySql => "root".into(),
        },
        password: String::new(),
        database: name,
        params: Vec::new(),
        fernet_key: "jJ/9sz0g0OHxsfxOoSfdFdmk3ysNmPRnH3TUAbz3IHA=".into(),
    })
}

fn env_of(cfg: &DbConfig) -> Vec<(&'static str, String)> {
    vec![
        (
            "DB_SCHEME",
            match cfg.engine {
                Engine::Postgres => "postgresql".into(),
                Engine::MySql => "mysql".into(),
            },
        ),
        (
            "DB_DRIVER_CLASS",
            match cfg.engine {
                Engine::Postgres => "org.postgresql.Driver".into(),
                Engine::MySql => "com.mysql.cj.jdbc.Driver".into(),
            },
        ),
        ("DB_HOST", cfg.host.clone()),
        ("DB_PORT", cfg.port.to_string()),
        ("DB_USER", cfg.user.clone()),
        ("DB_USER_PASSWORD", cfg.password.clone()),
        ("OM_DATABASE", cfg.database.clone()),
        (
            "DB_PARAMS",
            match cfg.engine {
                Engine::Postgres => "sslmode=disable".into(),
                Engine::MySql => {
                    "allowPublicKeyRetrieval=true&useSSL=false&serverTimezone=UTC".into()
                }
            },
        ),
        ("FERNET_KEY", cfg.fernet_key.clone()),
    ]
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Run `openmetadata-sim --version V args…` to completion.
async fn om(cfg: &DbConfig, version: &str, args: &[&str], extra: &[(&str, &str)]) -> Out {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.arg("--version").arg(version).args(args).env_clear();
    for (k, v) in env_of(cfg) {
        cmd.env(k, v);
    }
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let out = cmd.output().await.expect("run openmetadata-sim");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn migrate_ok(cfg: &DbConfig, version: &str) -> Out {
    let out = om(cfg, version, &["migrate"], &[]).await;
    assert_eq!(
        out.code, 0,
        "migrate {version} failed:\n{}\n{}",
        out.stdout, out.stderr
    );
    out
}

struct Running {
    child: tokio::process::Child,
    port: u16,
    admin: u16,
}

impl Running {
    /// SIGTERM, and the exit status.
    async fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().expect("pid") as i32;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("kill");
        tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .expect("stops on SIGTERM")
            .expect("wait")
    }
}

fn free_port() -> u16 {
    upshift_sim::ports::free_port().expect("port")
}

/// Start the server; `Err(stderr)` if it exits instead.
async fn serve(cfg: &DbConfig, version: &str) -> Result<Running, (i32, String)> {
    let (port, admin) = (free_port(), free_port());
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(["--version", version, "server", "--port"])
        .arg(port.to_string())
        .arg("--admin-port")
        .arg(admin.to_string())
        .env_clear()
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env_of(cfg) {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn");
    for _ in 0..150 {
        if std::net::TcpStream::connect(("127.0.0.1", admin)).is_ok()
            && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        {
            return Ok(Running { child, port, admin });
        }
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use tokio::io::AsyncReadExt;
                let _ = e.read_to_string(&mut err).await;
            }
            return Err((status.code().unwrap_or(-1), err));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the server did not start");
}

/// A plain HTTP GET on loopback: (status, JSON body).
async fn get(port: u16, path: &str) -> (u16, serde_json::Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("");
    (
        status,
        serde_json::from_str(body).unwrap_or(serde_json::Value::String(body.into())),
    )
}

async fn db(cfg: &DbConfig) -> Store {
    Store::connect(cfg).await.expect("connect")
}

async fn count(cfg: &DbConfig, sql: &str) -> i64 {
    db(cfg).await.count(sql).await.expect(sql)
}

/// `version → (migrationType, status)` of SERVER_CHANGE_LOG (NULL columns as "").
async fn change_log(cfg: &DbConfig) -> Vec<(String, String, String)> {
    let mut s = db(cfg).await;
    let ty = s
        .column_exists("SERVER_CHANGE_LOG", "migrationType")
        .await
        .expect("col");
    let st = s
        .column_exists("SERVER_CHANGE_LOG", "status")
        .await
        .expect("col");
    let sql = format!(
        "SELECT version, {}, {} FROM SERVER_CHANGE_LOG ORDER BY installed_rank",
        if ty { "migrationType" } else { "''" },
        if st { "status" } else { "''" }
    );
    s.rows(&sql)
        .await
        .expect("rows")
        .into_iter()
        .map(|r| {
            let mut it = r.into_iter().map(|v| v.unwrap_or_default());
            (
                it.next().unwrap_or_default(),
                it.next().unwrap_or_default(),
                it.next().unwrap_or_default(),
            )
        })
        .collect()
}

fn versions(log: &[(String, String, String)]) -> Vec<&str> {
    log.iter().map(|(v, _, _)| v.as_str()).collect()
}

async fn seed(cfg: &DbConfig, n: usize) {
    match cfg.engine {
        Engine::Postgres => {
            let (client, conn) = tokio_postgres::connect(
                &format!(
                    "host={} port={} user={} dbname={}",
                    cfg.host, cfg.port, cfg.user, cfg.database
                ),
                tokio_postgres::NoTls,
            )
            .await
            .expect("pg");
            tokio::spawn(conn);
            upshift_sim::openmetadata::seed_pg(&client, n)
                .await
                .expect("seed");
        }
        Engine::MySql => {
            let url = format!(
                "mysql://{}@{}:{}/{}",
                cfg.user, cfg.host, cfg.port, cfg.database
            );
            let mut conn = mysql_async::Conn::new(mysql_async::Opts::from_url(&url).expect("url"))
                .await
                .expect("conn");
            upshift_sim::openmetadata::seed_mysql(&mut conn, n)
                .await
                .expect("seed");
        }
    }
}

macro_rules! both_engines {
    ($body:ident: $pg:ident, $my:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $pg() {
            if let Some(cfg) = fresh(Engine::Postgres).await {
                $body(cfg).await
            }
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $my() {
            if let Some(cfg) = fresh(Engine::MySql).await {
                $body(cfg).await
            }
        }
    };
}

async fn fresh_install_serves_version_and_health(cfg: DbConfig) {
    // A Flyway-era server on a database Flyway never migrated refuses.
    let (code, err) = serve(&cfg, "1.9.0").await.err().expect("refused");
    assert_eq!(code, 1);
    assert!(err.contains(NO_FLYWAY_MESSAGE), "{err}");

    let out = migrate_ok(&cfg, "1.9.0").await;
    assert!(out.stdout.contains("| 1.9.0 |"), "{}", out.stdout);
    // Flyway's history (quoted upper case on PostgreSQL) and the native rows.
    let mut s = db(&cfg).await;
    assert!(s.table_exists("DATABASE_CHANGE_LOG").await.expect("t"));
    let stored = s.stored_name("SERVER_CHANGE_LOG");
    assert_eq!(
        stored,
        if cfg.engine == Engine::Postgres {
            "server_change_log"
        } else {
            "SERVER_CHANGE_LOG"
        }
    );
    let dcl = s.table_ref("DATABASE_CHANGE_LOG");
    let flyway = s
        .rows(&format!(
            "SELECT version, script FROM {dcl} ORDER BY installed_rank"
        ))
        .await
        .expect("flyway");
    assert_eq!(flyway.len(), 3, "{flyway:?}");
    assert_eq!(
        flyway[1][1].as_deref(),
        Some("v001__create_entity_tables.sql")
    );
    assert!(
        !s.column_exists("SERVER_CHANGE_LOG", "status")
            .await
            .expect("c"),
        "1.x has no status column"
    );
    let log = change_log(&cfg).await;
    assert_eq!(
        versions(&log),
        ["1.1.0", "1.2.0", "1.3.0", "1.5.0", "1.9.0"]
    );
    assert!(
        count(&cfg, "SELECT COUNT(*) FROM SERVER_MIGRATION_SQL_LOGS").await >= 5,
        "statements are logged"
    );
    assert_eq!(om(&cfg, "1.9.0", &["validate"], &[]).await.code, 0);
    seed(&cfg, 3).await;

    let server = serve(&cfg, "1.9.0").await.expect("starts");
    let (status, v) = get(server.port, "/api/v1/version").await;
    assert_eq!(status, 200);
    assert_eq!(v["version"], "1.9.0");
    assert_eq!(v["revision"].as_str().map(str::len), Some(40));
    assert!(
        v["timestamp"]
            .as_i64()
            .is_some_and(|t| t > 1_600_000_000_000)
    );
    let (status, h) = get(server.admin, "/healthcheck").await;
    assert_eq!(status, 200, "{h}");
    assert_eq!(h["OpenMetadataServerHealthCheck"]["healthy"], true);
    assert_eq!(
        get(server.port, "/healthcheck").await.0,
        404,
        "admin port only"
    );
    let (_, roles) = get(server.port, "/api/v1/roles").await;
    assert_eq!(roles["paging"]["total"], 3, "{roles}");
    let (_, bots) = get(server.port, "/api/v1/bots").await;
    assert_eq!(
        bots["data"][0]["botUser"], "autoClassification-bot",
        "{bots}"
    );
    assert!(server.stop().await.success(), "clean exit on SIGTERM");
}
both_engines!(fresh_install_serves_version_and_health: fresh_install_pg, fresh_install_mariadb);

async fn switched_binary_refuses_until_migrate(cfg: DbConfig) {
    migrate_ok(&cfg, "1.9.0").await;
    seed(&cfg, 5).await;
    let (code, err) = serve(&cfg, "1.12.1").await.err().expect("refused");
    assert_eq!(code, 1);
    assert!(err.contains(PENDING_MESSAGE.trim_end()), "{err}");
    let v = om(&cfg, "1.12.1", &["validate"], &[]).await;
    assert_eq!(v.code, 1);
    assert!(v.stdout.contains("1.10.0, 1.11.0, 1.12.0"), "{}", v.stdout);

    migrate_ok(&cfg, "1.12.1").await;
    let mut s = db(&cfg).await;
    assert!(
        !s.table_exists("DATABASE_CHANGE_LOG").await.expect("t"),
        "the Flyway table is dropped"
    );
    let log = change_log(&cfg).await;
    let flyway: Vec<&str> = log
        .iter()
        .filter(|(_, t, _)| t == "FLYWAY")
        .map(|(v, _, _)| v.as_str())
        .collect();
    assert_eq!(flyway, ["000", "001", "002"], "{log:?}");
    assert_eq!(
        log.last().map(|(v, t, _)| (v.as_str(), t.as_str())),
        Some(("1.12.0", "NATIVE")),
        "the newest migration of 1.12.1 is 1.12.0"
    );
    assert_eq!(om(&cfg, "1.12.1", &["validate"], &[]).await.code, 0);

    let server = serve(&cfg, "1.12.1").await.expect("starts after migrate");
    assert_eq!(
        get(server.port, "/api/v1/version").await.1["version"],
        "1.12.1"
    );
    assert_eq!(
        get(server.port, "/api/v1/policies").await.1["paging"]["total"],
        4
    );
    drop(server);
    assert_eq!(
        count(&cfg, "SELECT COUNT(*) FROM table_entity").await,
        5,
        "data intact"
    );
    assert_eq!(
        count(
            &cfg,
            "SELECT COUNT(*) FROM policy_entity WHERE provider = 'system'"
        )
        .await,
        4,
        "1.12.0's data migration ran on the seeded rows"
    );
}
both_engines!(switched_binary_refuses_until_migrate: switched_binary_pg, switched_binary_mariadb);

async fn newest_code_gate_needs_2_0_x_first(cfg: DbConfig) {
    migrate_ok(&cfg, "1.9.0").await;
    seed(&cfg, 2).await;
    // Legacy Flyway table and max < 2.0.0: refused, with or without --force.
    for args in [&["migrate"][..], &["migrate", "--force"][..]] {
        let out = om(&cfg, "2.1.0", args, &[]).await;
        assert_eq!(out.code, 1, "{args:?}: {}", out.stdout);
        assert!(
            out.stderr.contains("IllegalStateException"),
            "{}",
            out.stderr
        );
        assert!(
            out.stderr.contains("upgrade through the latest 2.0.x"),
            "{}",
            out.stderr
        );
        assert!(out.stderr.contains("DATABASE_CHANGE_LOG"), "{}", out.stderr);
    }
    migrate_ok(&cfg, "1.12.1").await;
    let out = om(&cfg, "2.1.0", &["migrate", "--force"], &[]).await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("this database is at 1.12.0"),
        "{}",
        out.stderr
    );
    assert_eq!(
        versions(&change_log(&cfg).await).last().copied(),
        Some("1.12.0"),
        "the refusal changed nothing"
    );

    migrate_ok(&cfg, "2.0.3").await;
    let log = change_log(&cfg).await;
    assert!(
        log.iter()
            .any(|(v, t, s)| v == "2.0.3" && t == "NATIVE" && s == "COMPLETED"),
        "{log:?}"
    );
    assert!(log.iter().all(|(_, _, s)| s == "COMPLETED"), "{log:?}");
    migrate_ok(&cfg, "2.1.0").await;
    assert_eq!(
        versions(&change_log(&cfg).await).last().copied(),
        Some("2.1.0")
    );
    let server = serve(&cfg, "2.1.0").await.expect("starts");
    assert_eq!(
        get(server.port, "/api/v1/version").await.1["version"],
        "2.1.0"
    );
    assert_eq!(
        get(server.port, "/api/v1/roles").await.1["paging"]["total"],
        3
    );
}
both_engines!(newest_code_gate_needs_2_0_x_first: gate_pg, gate_mariadb);

async fn failed_migration_then_repair(cfg: DbConfig) {
    // 2.x: a fresh install is the baseline.
    migrate_ok(&cfg, "2.0.0").await;
    let log = change_log(&cfg).await;
    assert_eq!(
        log,
        [(
            "2.0.0-baseline".to_string(),
            "BASELINE".to_string(),
            "COMPLETED".to_string()
        )]
    );
    seed(&cfg, 2).await;
    let out = om(
        &cfg,
        "2.0.3",
        &["migrate"],
        &[("OM_SIM_FAIL_MIGRATION", "2.0.3")],
    )
    .await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .contains("Migration 2.0.3 failed during DataMigration"),
        "{}",
        out.stderr
    );
    let log = change_log(&cfg).await;
    assert!(
        log.iter().any(|(v, _, s)| v == "2.0.3" && s == "FAILED"),
        "{log:?}"
    );
    let mut s = db(&cfg).await;
    assert!(
        s.column_exists("user_entity", "isBot").await.expect("c"),
        "SchemaChanges ran before the failure"
    );
    let v = om(&cfg, "2.0.3", &["validate"], &[]).await;
    assert_eq!(v.code, 1);
    assert!(v.stdout.contains("2.0.3 (FAILED)"), "{}", v.stdout);
    assert!(
        serve(&cfg, "2.0.3").await.is_err(),
        "no start with a FAILED row"
    );
    let again = om(&cfg, "2.0.3", &["migrate"], &[]).await;
    assert_eq!(again.code, 1);
    assert!(again.stderr.contains("repair"), "{}", again.stderr);

    assert_eq!(om(&cfg, "2.0.3", &["repair"], &[]).await.code, 0);
    let log = change_log(&cfg).await;
    assert!(!log.iter().any(|(v, _, _)| v == "2.0.3"), "{log:?}");
    assert_eq!(
        count(
            &cfg,
            "SELECT COUNT(*) FROM SERVER_MIGRATION_SQL_LOGS WHERE version = '2.0.3'"
        )
        .await,
        0
    );
    migrate_ok(&cfg, "2.0.3").await;
    assert_eq!(om(&cfg, "2.0.3", &["validate"], &[]).await.code, 0);
    assert_eq!(
        count(&cfg, "SELECT COUNT(*) FROM user_entity WHERE isBot = TRUE").await,
        2,
        "the bot users are marked once the data migration ran"
    );

    // 1.x: no row for the failed version, its schema change applied; re-running skips the
    // logged statement and completes.
    let Some(old) = fresh(cfg.engine).await else {
        return;
    };
    migrate_ok(&old, "1.9.0").await;
    let out = om(
        &old,
        "1.10.2",
        &["migrate"],
        &[("OM_SIM_FAIL_MIGRATION", "1.10.0")],
    )
    .await;
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(!versions(&change_log(&old).await).contains(&"1.10.0"));
    assert!(
        db(&old)
            .await
            .column_exists("bot_entity", "provider")
            .await
            .expect("c")
    );
    assert_eq!(om(&old, "1.10.2", &["validate"], &[]).await.code, 1);
    let out = migrate_ok(&old, "1.10.2").await;
    assert!(
        out.stdout.contains("skipped (already executed)"),
        "{}",
        out.stdout
    );
    assert_eq!(om(&old, "1.10.2", &["validate"], &[]).await.code, 0);
}
both_engines!(failed_migration_then_repair: failure_and_repair_pg, failure_and_repair_mariadb);

async fn force_after_crossing_1_11_loses_roles(cfg: DbConfig) {
    migrate_ok(&cfg, "1.9.0").await;
    seed(&cfg, 2).await;
    migrate_ok(&cfg, "1.12.1").await;
    assert_eq!(count(&cfg, "SELECT COUNT(*) FROM role_entity").await, 3);
    let out = om(&cfg, "1.12.1", &["migrate", "--force"], &[]).await;
    assert_eq!(out.code, 0, "--force reports success: {}", out.stderr);
    for t in ["role_entity", "policy_entity", "bot_entity"] {
        assert_eq!(
            count(&cfg, &format!("SELECT COUNT(*) FROM {t}")).await,
            0,
            "{t} lost by --force"
        );
    }
    assert_eq!(
        count(
            &cfg,
            "SELECT COUNT(*) FROM entity_relationship WHERE fromEntity = 'bot'"
        )
        .await,
        0
    );
    assert_eq!(
        count(&cfg, "SELECT COUNT(*) FROM table_entity").await,
        2,
        "only roles, policies and bots are lost"
    );
    let server = serve(&cfg, "1.12.1").await.expect("starts");
    assert_eq!(
        get(server.port, "/api/v1/roles").await.1["paging"]["total"],
        0
    );
    drop(server);
    assert_eq!(om(&cfg, "1.12.1", &["recover"], &[]).await.code, 0);
    assert_eq!(count(&cfg, "SELECT COUNT(*) FROM role_entity").await, 3);

    // A database born on 1.12.1 has no Flyway rows: --force does not touch the roles.
    let Some(born) = fresh(cfg.engine).await else {
        return;
    };
    migrate_ok(&born, "1.12.1").await;
    seed(&born, 1).await;
    assert_eq!(
        om(&born, "1.12.1", &["migrate", "--force"], &[]).await.code,
        0
    );
    assert_eq!(count(&born, "SELECT COUNT(*) FROM role_entity").await, 3);
}
both_engines!(force_after_crossing_1_11_loses_roles: force_pg, force_mariadb);

async fn older_binary_refuses_newer_database(cfg: DbConfig) {
    migrate_ok(&cfg, "1.12.1").await;
    let (code, err) = serve(&cfg, "1.9.0").await.err().expect("refused");
    assert_eq!(code, 1);
    assert!(
        err.contains("Unexpected executed migrations [1.10.0, 1.11.0, 1.12.0]"),
        "{err}"
    );
    migrate_ok(&cfg, "2.0.3").await;
    let (_, err) = serve(&cfg, "2.0.0").await.err().expect("refused");
    assert!(
        err.contains("Unexpected executed migrations [2.0.3]"),
        "{err}"
    );
    assert!(serve(&cfg, "2.0.3").await.is_ok());
}
both_engines!(older_binary_refuses_newer_database: older_binary_pg, older_binary_mariadb);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_when_entity_tables_have_no_history() {
    let Some(cfg) = fresh(Engine::Postgres).await else {
        return;
    };
    db(&cfg)
        .await
        .exec("CREATE TABLE user_entity (id VARCHAR(36) PRIMARY KEY)")
        .await
        .expect("create");
    let out = om(&cfg, "2.0.3", &["migrate"], &[]).await;
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("ABORT"), "{}", out.stderr);
    assert!(out.stderr.contains("drop-create"), "{}", out.stderr);
    assert!(
        !db(&cfg)
            .await
            .table_exists("SERVER_CHANGE_LOG")
            .await
            .expect("t")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_bad_settings_fail_clearly() {
    let cfg = DbConfig {
        engine: Engine::Postgres,
        host: "127.0.0.1".into(),
        port: 1,
        user: "u".into(),
        password: String::new(),
        database: "d".into(),
        params: Vec::new(),
        fernet_key: "k".into(),
    };
    let cases: &[(&str, &str, &str)] = &[
        ("DB_SCHEME", "", "DB_SCHEME is not set"),
        ("DB_SCHEME", "oracle", "DB_SCHEME=oracle is not supported"),
        ("DB_PORT", "abc", "DB_PORT=abc is not a port number"),
        ("FERNET_KEY", "", "FERNET_KEY is not set"),
        ("DB_PARAMS", "useSSL", "DB_PARAMS=useSSL is malformed"),
    ];
    for (key, value, message) in cases {
        let out = om(&cfg, "1.9.0", &["validate"], &[(key, value)]).await;
        assert_eq!(out.code, 1, "{key}={value}");
        assert!(
            out.stderr.contains(message),
            "{key}={value}: {}",
            out.stderr
        );
    }
    let out = om(&cfg, "9.9.9", &["validate"], &[]).await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .contains("no simulated OpenMetadata release 9.9.9"),
        "{}",
        out.stderr
    );
    let out = om(&cfg, "1.9.0", &["check-connection"], &[]).await;
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("cannot connect"), "{}", out.stderr);
}

async fn interrupted_baseline_resumes(cfg: DbConfig) {
    let fail = [("OM_SIM_FAIL_MIGRATION", "2.0.0-baseline")];
    let out = om(&cfg, "2.0.3", &["migrate"], &fail).await;
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("stays STARTED"), "{}", out.stderr);
    let started = vec![(
        "2.0.0-baseline".to_string(),
        "BASELINE".to_string(),
        "STARTED".to_string(),
    )];
    assert_eq!(change_log(&cfg).await, started);
    assert!(serve(&cfg, "2.0.3").await.is_err(), "pending: no start");
    // repair keeps a STARTED baseline row.
    assert_eq!(om(&cfg, "2.0.3", &["repair"], &[]).await.code, 0);
    assert_eq!(change_log(&cfg).await, started);
    // The newest code's gate lets RESUME through (nothing was installed yet).
    let out = migrate_ok(&cfg, "2.1.0").await;
    assert!(
        out.stdout.contains("Baseline decision RESUME"),
        "{}",
        out.stdout
    );
    let log = change_log(&cfg).await;
    assert_eq!(versions(&log), ["2.0.0-baseline", "2.0.3", "2.1.0"]);
    assert!(log.iter().all(|(_, _, s)| s == "COMPLETED"), "{log:?}");

    // RESUME is refused when entity rows would be wiped.
    let Some(other) = fresh(cfg.engine).await else {
        return;
    };
    assert_eq!(om(&other, "2.0.3", &["migrate"], &fail).await.code, 1);
    db(&other)
        .await
        .exec("INSERT INTO user_entity (id, name, json, updatedAt) VALUES ('u1', 'alice', '{}', 1)")
        .await
        .expect("insert");
    let out = om(&other, "2.0.3", &["migrate"], &[]).await;
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("RESUME refused"), "{}", out.stderr);
    assert_eq!(count(&other, "SELECT COUNT(*) FROM user_entity").await, 1);
}
both_engines!(interrupted_baseline_resumes: resume_pg, resume_mariadb);
