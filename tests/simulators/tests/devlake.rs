//! The DevLake simulator behaves as product-facts §4 (and DevLake's source) says, on a real
//! MariaDB and a real PostgreSQL, as real processes.

use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use upshift_sim::devlake::{GATE_MESSAGE, LOCK_TIMEOUT_MESSAGE, MIGRATING_MESSAGE, crypto};
use upshift_sim::mariadb::Server;
use upshift_sim::pg::Cluster;

static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();
static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();
static NEXT: AtomicU32 = AtomicU32::new(0);

/// A directory under the target dir for this process, after removing those of earlier runs
/// whose process is gone.
fn own_dir(prefix: &str) -> std::path::PathBuf {
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
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{prefix}{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn missing<T>(what: &str, why: &str) -> Option<T> {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{what} is missing: {why}");
    }
    eprintln!("SKIPPED: {what} is missing: {why}");
    None
}

fn server() -> Option<&'static Server> {
    let s =
        SERVER.get_or_init(|| Server::start(&own_dir("dl-mariadb-")).map_err(|e| e.to_string()));
    match s {
        Ok(s) => Some(s),
        Err(why) => missing("MariaDB", why),
    }
}

fn cluster() -> Option<&'static Cluster> {
    let c = CLUSTER.get_or_init(|| Cluster::start(&own_dir("dl-pg-")).map_err(|e| e.to_string()));
    match c {
        Ok(c) => Some(c),
        Err(why) => missing("PostgreSQL", why),
    }
}

fn db_name() -> String {
    format!(
        "lake_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

async fn fresh_db(s: &Server) -> String {
    let name = db_name();
    let mut conn = mysql_async::Conn::new(mysql_async::Opts::from_url(&s.url("")).expect("url"))
        .await
        .expect("conn");
    conn.query_drop(format!("CREATE DATABASE `{name}`"))
        .await
        .expect("create");
    name
}

fn fresh_pg_db(c: &Cluster) -> String {
    let name = db_name();
    c.create_database(&name).expect("create database");
    name
}

async fn my(url: &str) -> mysql_async::Conn {
    mysql_async::Conn::new(mysql_async::Opts::from_url(url).expect("url"))
        .await
        .expect("conn")
}

async fn pg(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    client
}

struct Sim(Child);

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn port() -> u16 {
    upshift_sim::ports::free_port().expect("port")
}

/// Start the simulator with a `.env` holding `env_lines`; wait for its port, or its exit
/// (then its stderr is the error).
async fn start(
    version: &str,
    dir: &std::path::Path,
    env_lines: &str,
    extra: &[(&str, &str)],
) -> Result<(Sim, u16), String> {
    let p = port();
    let file = dir.join(format!(".env{p}"));
    std::fs::write(&file, format!("PORT={p}\n{env_lines}\n")).expect("env");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_devlake-sim"));
    cmd.args(["--version", version])
        .env_clear()
        .env("ENV_FILE", &file)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn");
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", p)).is_ok() {
            return Ok((Sim(child), p));
        }
        if let Ok(Some(_)) = child.try_wait() {
            let mut err = String::new();
            use std::io::Read;
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            return Err(err);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err("did not start".into())
}

/// A plain HTTP GET on loopback: (status, body).
async fn get(port: u16, path: &str) -> (u16, String) {
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
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

fn message(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// The gate seen from outside while a newer release waits for confirmation.
async fn assert_waiting(p: u16, tag: &str) {
    let (status, body) = get(p, "/plugins/github/connections/1").await;
    assert_eq!(status, 428, "{body}");
    assert_eq!(message(&body), GATE_MESSAGE);
    assert_eq!(
        get(p, "/blueprints").await.0,
        428,
        "unknown routes are gated too"
    );
    // DevLake registers /ping and /version before its gate middleware.
    assert_eq!(get(p, "/ping").await.0, 200);
    assert_eq!(
        get(p, "/version").await,
        (200, format!("{{\"version\":\"{tag}@sim\"}}"))
    );
    let (status, body) = get(p, "/ready").await;
    assert_eq!(
        (status, message(&body).as_str()),
        (
            503,
            "service is not ready: waiting for migration confirmation"
        )
    );
    assert_eq!(message(&get(p, "/health").await.1), "maybe");
}

// ---------------------------------------------------------------------------------------------
// MySQL (MariaDB)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_wait_at_the_428_gate_and_tokens_need_the_same_secret() {
    let Some(s) = server() else { return };
    let db = fresh_db(s).await;
    let dir = tempfile::tempdir().expect("dir");
    let env = format!(
        "DB_URL={}?charset=utf8mb4&parseTime=True&loc=UTC\nENCRYPTION_SECRET=s3cret",
        s.url(&db)
    );

    // A fresh database migrates without asking.
    let (sim, p) = start("v1.0.0", dir.path(), &env, &[]).await.expect("start");
    assert_eq!(
        get(p, "/version").await,
        (200, "{\"version\":\"v1.0.0@sim\"}".into())
    );
    let (status, body) = get(p, "/ready").await;
    assert_eq!((status, message(&body).as_str()), (200, "ready"));
    assert_eq!(message(&get(p, "/health").await.1), "good");
    let mut conn = my(&s.url(&db)).await;
    upshift_sim::devlake::seed(&mut conn, "s3cret", 5)
        .await
        .expect("seed");
    assert_eq!(get(p, "/plugins/github/connections/1").await.0, 200);
    drop(sim);

    // A newer release on the same database: API calls get 428 until proceed-db-migration.
    let (_sim, p) = start("1.0.1", dir.path(), &env, &[]).await.expect("start");
    assert_waiting(p, "v1.0.1").await;
    let (status, body) = get(p, "/proceed-db-migration").await;
    assert_eq!((status, message(&body).as_str()), (200, "success"));
    assert_eq!(get(p, "/plugins/github/connections/1").await.0, 200);
    assert_eq!(get(p, "/blueprints").await.0, 404);
    let locks: Vec<(String, u8)> = conn
        .query("SELECT version, succeeded FROM _devlake_locking_history ORDER BY id")
        .await
        .expect("locks");
    assert_eq!(
        locks,
        vec![("v1.0.0".to_string(), 1), ("v1.0.1".to_string(), 1)]
    );
    let newest: Option<u64> = conn
        .query_first("SELECT MAX(script_version) FROM _devlake_migration_history")
        .await
        .expect("max");
    assert_eq!(newest, Some(20240813160242));
    let repos: Option<i64> = conn
        .query_first("SELECT COUNT(*) FROM repos")
        .await
        .expect("repos");
    assert_eq!(repos, Some(5), "collected data survived");
    drop(_sim);

    // A changed secret: the stored token no longer decrypts.
    let changed = env.replace("s3cret", "other");
    let (_sim, p) = start("v1.0.1", dir.path(), &changed, &[])
        .await
        .expect("start");
    let (status, body) = get(p, "/plugins/github/connections/1").await;
    assert_eq!(
        (status, body.contains("invalid encKey")),
        (500, true),
        "{body}"
    );
    assert_eq!(
        crypto::decrypt("s3cret", &crypto::encrypt("s3cret", "x")),
        Ok("x".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_rules_and_failing_scripts() {
    let Some(s) = server() else { return };
    let db = fresh_db(s).await;
    let dir = tempfile::tempdir().expect("dir");
    let url = s.url(&db);

    let err = start("v1.0.0", dir.path(), &format!("DB_URL={url}"), &[])
        .await
        .err()
        .expect("refused");
    assert!(
        err.contains("ENCRYPTION_SECRET must be set in environment variable or .env file"),
        "{err}"
    );
    let err = start("v1.0.0", dir.path(), "ENCRYPTION_SECRET=x", &[])
        .await
        .err()
        .expect("refused");
    assert!(err.contains("DB_URL is required"), "{err}");
    let bad = "sqlite:///tmp/lake.db";
    let err = start(
        "v1.0.0",
        dir.path(),
        &format!("DB_URL={bad}\nENCRYPTION_SECRET=x"),
        &[],
    )
    .await
    .err()
    .expect("refused");
    assert!(err.contains(&format!("invalid DB_URL:{bad}")), "{err}");

    // v0.17 generates ENCODE_KEY and writes it into the .env; it has no /health.
    let p = port();
    let file = dir.path().join(".env017");
    std::fs::write(&file, format!("PORT={p}\nDB_URL={url}\n")).expect("env");
    let mut child = Command::new(env!("CARGO_BIN_EXE_devlake-sim"))
        .args(["--version", "v0.17.0"])
        .env_clear()
        .env("ENV_FILE", &file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", p)).is_err() {
        assert!(Instant::now() < deadline, "v0.17 did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(get(p, "/health").await.0, 404);
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&file).expect("env");
    assert!(
        text.lines()
            .any(|l| l.starts_with("ENCODE_KEY=") && l.len() > 20),
        "{text}"
    );

    // A failing script leaves earlier ones applied and v1.0.1 stuck in "migrating".
    let env = format!("DB_URL={url}\nENCRYPTION_SECRET=k");
    let (sim, p) = start(
        "v1.0.1",
        dir.path(),
        &env,
        &[("DL_SIM_FAIL_SCRIPT", "20240813160242")],
    )
    .await
    .expect("start");
    let (status, body) = get(p, "/proceed-db-migration").await;
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("Error 1060"), "{body}");
    let (status, body) = get(p, "/plugins/github/connections/1").await;
    assert_eq!(
        (status, message(&body).as_str()),
        (428, MIGRATING_MESSAGE),
        "the gate stays closed"
    );
    let (status, body) = get(p, "/proceed-db-migration").await;
    assert_eq!(
        (status, message(&body).as_str()),
        (400, "There is a migration in progress.")
    );
    drop(sim);
    let mut conn = my(&url).await;
    let newest: Option<u64> = conn
        .query_first("SELECT MAX(script_version) FROM _devlake_migration_history")
        .await
        .expect("max");
    assert_eq!(
        newest,
        Some(20240607000041),
        "earlier scripts (up to v1.0.1's renumbered 20240607000041) stay applied"
    );
    let (_sim, p) = start("v1.0.1", dir.path(), &env, &[("FORCE_MIGRATION", "true")])
        .await
        .expect("start");
    assert_eq!(get(p, "/plugins/github/connections/9").await.0, 404);
    let newest: Option<u64> = conn
        .query_first("SELECT MAX(script_version) FROM _devlake_migration_history")
        .await
        .expect("max");
    assert_eq!(newest, Some(20240813160242), "FORCE_MIGRATION migrated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_releases_retry_and_v1_0_0_crashes_on_a_failed_migration() {
    let Some(s) = server() else { return };
    let db = fresh_db(s).await;
    let dir = tempfile::tempdir().expect("dir");
    let env = format!("DB_URL={}\nENCRYPTION_SECRET=k", s.url(&db));
    let (sim, _) = start("v0.18.0", dir.path(), &env, &[])
        .await
        .expect("start");
    drop(sim);

    // ≤ v0.21: a failed proceed leaves the confirmation gate up; a retry can succeed.
    let (sim, p) = start(
        "v0.21.0",
        dir.path(),
        &env,
        &[("DL_SIM_FAIL_SCRIPT", "20240308142101")],
    )
    .await
    .expect("start");
    assert_eq!(get(p, "/health").await, (200, String::new()));
    assert_eq!(get(p, "/ready").await.0, 428, "no /ready before v1.0.0");
    assert_eq!(get(p, "/proceed-db-migration").await.0, 500);
    let (status, body) = get(p, "/plugins/github/connections/1").await;
    assert_eq!((status, message(&body)), (428, GATE_MESSAGE.to_string()));
    drop(sim);

    // v1.0.0: the failed migration takes the process down.
    let (mut sim, p) = start(
        "v1.0.0",
        dir.path(),
        &env,
        &[("DL_SIM_FAIL_SCRIPT", "20240523194205")],
    )
    .await
    .expect("start");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", p))
        .await
        .expect("connect");
    conn.write_all(b"GET /proceed-db-migration HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut out = String::new();
    let _ = conn.read_to_string(&mut out).await;
    assert!(!out.contains("200 OK"), "{out}");
    let status = sim.0.wait().expect("wait");
    assert_eq!(status.code(), Some(2));
    let mut err = String::new();
    use std::io::Read;
    if let Some(mut e) = sim.0.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    assert!(
        err.contains("fatal error: sync: unlock of unlocked mutex"),
        "{err}"
    );
    let mut c = my(&s.url(&db)).await;
    let newest: Option<u64> = c
        .query_first("SELECT MAX(script_version) FROM _devlake_migration_history")
        .await
        .expect("max");
    assert_eq!(newest, Some(20240308142101), "earlier scripts stay applied");
}

/// A second instance on the same database gives up on `_devlake_locking_stub` within its
/// timeout while the first keeps serving.
async fn second_instance_is_refused(env: &str, history: impl AsyncFn() -> Vec<(String, bool)>) {
    let dir = tempfile::tempdir().expect("dir");
    let (first, p) = start("v1.0.1", dir.path(), env, &[]).await.expect("start");
    let began = Instant::now();
    let err = start(
        "v1.0.1",
        dir.path(),
        env,
        &[("DL_SIM_LOCK_TIMEOUT_SECS", "1")],
    )
    .await
    .err()
    .expect("the second instance exits");
    let took = began.elapsed();
    assert!(err.contains(LOCK_TIMEOUT_MESSAGE), "{err}");
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(8),
        "{took:?}"
    );
    assert_eq!(get(p, "/ping").await.0, 200);
    assert_eq!(get(p, "/plugins/github/connections/1").await.0, 404);
    // The release's own timeout: v0.17 gives up after 2 s.
    let began = Instant::now();
    let err = start("v0.17.0", dir.path(), &format!("{env}\nENCODE_KEY=k"), &[])
        .await
        .err()
        .expect("the v0.17 instance exits");
    let took = began.elapsed();
    assert!(err.contains(LOCK_TIMEOUT_MESSAGE), "{err}");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(10),
        "{took:?}"
    );
    assert_eq!(
        history().await,
        vec![
            ("v1.0.1".to_string(), true),
            ("v1.0.1".to_string(), false),
            ("v0.17.0".to_string(), false)
        ]
    );
    // Once the first instance is gone, the lock is free again.
    drop(first);
    let (_third, p) = start(
        "v1.0.1",
        dir.path(),
        env,
        &[("DL_SIM_LOCK_TIMEOUT_SECS", "5")],
    )
    .await
    .expect("start after the first stopped");
    assert_eq!(get(p, "/ready").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_on_the_same_mysql_database_panics_on_the_lock() {
    let Some(s) = server() else { return };
    let db = fresh_db(s).await;
    let url = s.url(&db);
    let env = format!("DB_URL={url}?charset=utf8mb4&parseTime=True\nENCRYPTION_SECRET=k");
    second_instance_is_refused(&env, async || {
        let mut c = my(&url).await;
        let rows: Vec<(String, u8)> = c
            .query("SELECT version, succeeded FROM _devlake_locking_history ORDER BY id")
            .await
            .expect("locks");
        rows.into_iter().map(|(v, s)| (v, s == 1)).collect()
    })
    .await;
}

/// `LOCK TABLES _devlake_locking_stub WRITE` blocks every other session's read of the stub, so
/// a dump hangs on it (#4809) with or without `--single-transaction`; leaving the stub out
/// (DevLake re-creates it at every start) lets the dump finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysqldump_hangs_on_the_locking_stub_unless_it_is_left_out() {
    let Some(s) = server() else { return };
    let dump = ["/usr/bin/mariadb-dump", "/usr/bin/mysqldump"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    let Some(dump) = dump else {
        let _: Option<()> = missing("mysqldump", "neither mariadb-dump nor mysqldump");
        return;
    };
    let db = fresh_db(s).await;
    let dir = tempfile::tempdir().expect("dir");
    let env = format!("DB_URL={}\nENCRYPTION_SECRET=k", s.url(&db));
    let (_sim, _) = start("v1.0.1", dir.path(), &env, &[]).await.expect("start");
    let run = |extra: &[&str]| {
        Command::new(dump)
            .args(["-h", "127.0.0.1", "-P", &s.port().to_string(), "-u", "root"])
            .args(extra)
            .arg(&db)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("dump")
    };
    let mut plain = run(&[]);
    let mut single = run(&["--single-transaction"]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (what, child) in [("plain", &mut plain), ("--single-transaction", &mut single)] {
        assert!(
            matches!(child.try_wait(), Ok(None)),
            "a {what} dump waits for the stub's metadata lock"
        );
        let _ = child.kill();
        let _ = child.wait();
    }
    let ignore = format!("--ignore-table={db}._devlake_locking_stub");
    let mut child = run(&["--single-transaction", &ignore]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while matches!(child.try_wait(), Ok(None)) {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the dump without the stub hangs");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = child.wait_with_output().expect("dump");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("_devlake_migration_history"));
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_upgrades_wait_at_the_428_gate_and_tokens_need_the_same_secret() {
    let Some(c) = cluster() else { return };
    let db = fresh_pg_db(c);
    let url = c.url(&db);
    let dir = tempfile::tempdir().expect("dir");
    let env = format!(
        "DB_URL={}?sslmode=disable&charset=utf8mb4&parseTime=True&loc=UTC\nENCRYPTION_SECRET=s3cret",
        url.replacen("postgres://", "postgresql://", 1)
    );

    // A fresh database migrates without asking.
    let (sim, p) = start("v1.0.0", dir.path(), &env, &[]).await.expect("start");
    assert_eq!(get(p, "/ready").await.0, 200);
    let client = pg(&url).await;
    let tables: Vec<String> = client
        .query(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1",
            &[],
        )
        .await
        .expect("tables")
        .iter()
        .map(|r| r.get(0))
        .collect();
    for t in [
        "_devlake_locking_history",
        "_devlake_migration_history",
        "_tool_github_connections",
        "pull_requests",
        "repos",
    ] {
        assert!(tables.iter().any(|x| x == t), "{t} in {tables:?}");
    }
    upshift_sim::devlake::seed_pg(&client, "s3cret", 5)
        .await
        .expect("seed");
    let (status, body) = get(p, "/plugins/github/connections/1").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("ghp_****"), "{body}");
    drop(sim);

    // A newer release: 428 until proceed-db-migration.
    let (sim, p) = start("v1.0.1", dir.path(), &env, &[]).await.expect("start");
    assert_waiting(p, "v1.0.1").await;
    assert_eq!(get(p, "/proceed-db-migration").await.0, 200);
    assert_eq!(get(p, "/plugins/github/connections/1").await.0, 200);
    assert_eq!(message(&get(p, "/health").await.1), "good");
    let locks: Vec<(String, bool)> = client
        .query(
            "SELECT version, succeeded FROM _devlake_locking_history ORDER BY id",
            &[],
        )
        .await
        .expect("locks")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        locks,
        vec![("v1.0.0".to_string(), true), ("v1.0.1".to_string(), true)]
    );
    let newest: i64 = client
        .query_one(
            "SELECT MAX(script_version) FROM _devlake_migration_history",
            &[],
        )
        .await
        .expect("max")
        .get(0);
    assert_eq!(newest, 20240813160242);
    let merged: i64 = client
        .query_one(
            "SELECT COUNT(*) FROM information_schema.columns WHERE table_name = 'pull_requests' AND column_name = 'merged_date' AND data_type LIKE 'timestamp%'",
            &[],
        )
        .await
        .expect("column")
        .get(0);
    assert_eq!(merged, 1, "PostgreSQL DDL for the newest script");
    let repos: i64 = client
        .query_one("SELECT COUNT(*) FROM repos", &[])
        .await
        .expect("repos")
        .get(0);
    assert_eq!(repos, 5, "collected data survived");
    drop(sim);

    // A changed secret.
    let (_sim, p) = start("v1.0.1", dir.path(), &env.replace("s3cret", "other"), &[])
        .await
        .expect("start");
    let (status, body) = get(p, "/plugins/github/connections/1").await;
    assert_eq!(
        (status, body.contains("invalid encKey")),
        (500, true),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_failing_script_leaves_earlier_scripts_applied_and_the_gate_closed() {
    let Some(c) = cluster() else { return };
    let db = fresh_pg_db(c);
    let url = c.url(&db);
    let dir = tempfile::tempdir().expect("dir");
    let env = format!(
        "DB_URL={}\nENCRYPTION_SECRET=k",
        url.replacen("postgres://", "pg://", 1)
    );
    let (sim, _) = start("v0.18.0", dir.path(), &env, &[])
        .await
        .expect("start");
    drop(sim);
    let (sim, p) = start(
        "v1.0.1",
        dir.path(),
        &env,
        &[("DL_SIM_FAIL_SCRIPT", "20240813160242")],
    )
    .await
    .expect("start");
    let (status, body) = get(p, "/proceed-db-migration").await;
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("SQLSTATE 42701"), "{body}");
    let (status, body) = get(p, "/plugins/github/connections/1").await;
    assert_eq!((status, message(&body).as_str()), (428, MIGRATING_MESSAGE));
    drop(sim);
    let client = pg(&url).await;
    let newest: i64 = client
        .query_one(
            "SELECT MAX(script_version) FROM _devlake_migration_history",
            &[],
        )
        .await
        .expect("max")
        .get(0);
    assert_eq!(
        newest, 20240607000041,
        "earlier scripts (up to v1.0.1's renumbered 20240607000041) stay applied"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_on_the_same_pg_database_panics_on_the_lock() {
    let Some(c) = cluster() else { return };
    let db = fresh_pg_db(c);
    let url = c.url(&db);
    let env = format!("DB_URL={url}?sslmode=disable\nENCRYPTION_SECRET=k");
    second_instance_is_refused(&env, async || {
        pg(&url)
            .await
            .query(
                "SELECT version, succeeded FROM _devlake_locking_history ORDER BY id",
                &[],
            )
            .await
            .expect("locks")
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    })
    .await;
    // Nothing is left waiting on the server once the refused instances are gone.
    let waiting: i64 = pg(&url)
        .await
        .query_one(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
            &[],
        )
        .await
        .expect("activity")
        .get(0);
    assert_eq!(waiting, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_dump_works_while_devlake_holds_its_lock() {
    let Some(c) = cluster() else { return };
    let db = fresh_pg_db(c);
    let url = c.url(&db);
    let dir = tempfile::tempdir().expect("dir");
    let env = format!("DB_URL={url}\nENCRYPTION_SECRET=k");
    let (_sim, p) = start("v1.0.1", dir.path(), &env, &[]).await.expect("start");
    assert_eq!(get(p, "/ready").await.0, 200);
    let bindir = upshift_sim::pg::find_bindir().expect("bindir");
    let mut child = Command::new(bindir.join("pg_dump"))
        .args(["--schema-only", &url])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("pg_dump");
    let deadline = Instant::now() + Duration::from_secs(15);
    while matches!(child.try_wait(), Ok(None)) {
        assert!(Instant::now() < deadline, "pg_dump hangs");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = child.wait_with_output().expect("pg_dump");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("_devlake_migration_history"));
    // The stub exists only inside DevLake's uncommitted transaction.
    assert!(!text.contains("_devlake_locking_stub"), "{text}");
}

/// v1.0.0 records its two misnumbered scripts (`2025…`, after every later script); v1.0.1 runs
/// their renumbered `2024…` versions on that database and deletes the misnumbered rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_v1_0_0_misnumbers_two_scripts_and_v1_0_1_renumbers_them() {
    let Some(c) = cluster() else { return };
    let db = fresh_pg_db(c);
    let url = c.url(&db);
    let dir = tempfile::tempdir().expect("dir");
    let env = format!(
        "DB_URL={}\nENCRYPTION_SECRET=k",
        url.replacen("postgres://", "pg://", 1)
    );
    let history = async || -> Vec<i64> {
        pg(&url)
            .await
            .query(
                "SELECT script_version FROM _devlake_migration_history ORDER BY script_version",
                &[],
            )
            .await
            .expect("history")
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    let (sim, _) = start("v1.0.0", dir.path(), &env, &[]).await.expect("start");
    drop(sim);
    let recorded = history().await;
    assert_eq!(
        recorded[recorded.len() - 3..],
        [20240523194205, 20250531000041, 20250607000041],
        "v1.0.0's newest dated script, then its two misnumbered ones"
    );
    let (sim, p) = start("v1.0.1", dir.path(), &env, &[]).await.expect("start");
    assert_eq!(get(p, "/proceed-db-migration").await.0, 200);
    drop(sim);
    let recorded = history().await;
    assert!(
        !recorded.contains(&20250531000041) && !recorded.contains(&20250607000041),
        "the misnumbered rows are gone: {recorded:?}"
    );
    assert_eq!(
        recorded[recorded.len() - 3..],
        [20240531000041, 20240607000041, 20240813160242],
        "renumbered, then v1.0.1's newest"
    );
}
