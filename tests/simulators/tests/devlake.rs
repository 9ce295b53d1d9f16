//! The DevLake simulator behaves as product-facts §4 says, on a real MariaDB.

use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use mysql_async::prelude::Queryable;
use upshift_sim::devlake::{GATE_MESSAGE, crypto};
use upshift_sim::mariadb::Server;

static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();
static NEXT: AtomicU32 = AtomicU32::new(0);

fn server() -> Option<&'static Server> {
    let s = SERVER.get_or_init(|| {
        // Directories of earlier runs whose process is gone.
        if let Ok(entries) = std::fs::read_dir(env!("CARGO_TARGET_TMPDIR")) {
            for e in entries.filter_map(Result::ok) {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(pid) = name.strip_prefix("dl-mariadb-")
                    && !std::path::Path::new(&format!("/proc/{pid}")).exists()
                {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("dl-mariadb-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Server::start(&dir).map_err(|e| e.to_string())
    });
    match s {
        Ok(s) => Some(s),
        Err(why) if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!("SKIPPED: MariaDB is missing: {why}");
            None
        }
        Err(why) => panic!("MariaDB is missing: {why}"),
    }
}

async fn fresh_db(s: &Server) -> String {
    let name = format!(
        "lake_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let mut conn = mysql_async::Conn::new(mysql_async::Opts::from_url(&s.url("")).expect("url"))
        .await
        .expect("conn");
    conn.query_drop(format!("CREATE DATABASE `{name}`"))
        .await
        .expect("create");
    name
}

struct Sim(Child);

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

/// Start the simulator with a `.env` holding `env_lines`; wait for its port (or its exit).
async fn start(
    version: &str,
    dir: &std::path::Path,
    env_lines: &str,
    extra: &[(&str, &str)],
) -> Result<(Sim, u16), String> {
    let p = port();
    std::fs::write(dir.join(".env"), format!("PORT={p}\n{env_lines}\n")).expect("env");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_devlake-sim"));
    cmd.args(["--version", version])
        .env_clear()
        .env("ENV_FILE", dir.join(".env"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn");
    for _ in 0..100 {
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
    let mut conn = mysql_async::Conn::new(mysql_async::Opts::from_url(&s.url(&db)).expect("url"))
        .await
        .expect("conn");
    upshift_sim::devlake::seed(&mut conn, "s3cret", 5)
        .await
        .expect("seed");
    assert_eq!(get(p, "/plugins/github/connections/1").await.0, 200);
    drop(sim);

    // A newer release on the same database: every call gets 428 until proceed-db-migration.
    let (_sim, p) = start("v1.0.1", dir.path(), &env, &[]).await.expect("start");
    let (status, body) = get(p, "/version").await;
    assert_eq!(status, 428);
    assert!(body.contains(&GATE_MESSAGE[..60]), "{body}");
    assert_eq!(get(p, "/proceed-db-migration").await.0, 200);
    assert_eq!(
        get(p, "/version").await,
        (200, "{\"version\":\"v1.0.1@sim\"}".into())
    );
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
    assert_eq!(newest, Some(20241010000001));
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

    // v0.17 generates ENCODE_KEY and writes it into the .env.
    let (sim, _) = start("v0.17.0", dir.path(), &format!("DB_URL={url}"), &[])
        .await
        .expect("start");
    drop(sim);
    let text = std::fs::read_to_string(dir.path().join(".env")).expect("env");
    assert!(
        text.lines()
            .any(|l| l.starts_with("ENCODE_KEY=") && l.len() > 20),
        "{text}"
    );

    // FORCE_MIGRATION=true migrates at start; a failing script leaves earlier ones applied.
    let env = format!("DB_URL={url}\nENCRYPTION_SECRET=k");
    let (sim, p) = start(
        "v1.0.1",
        dir.path(),
        &env,
        &[("DL_SIM_FAIL_SCRIPT", "20241010000001")],
    )
    .await
    .expect("start");
    let (status, body) = get(p, "/proceed-db-migration").await;
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("Error 1060"), "{body}");
    assert_eq!(get(p, "/version").await.0, 428, "the gate stays closed");
    drop(sim);
    let mut conn = mysql_async::Conn::new(mysql_async::Opts::from_url(&url).expect("url"))
        .await
        .expect("conn");
    let newest: Option<u64> = conn
        .query_first("SELECT MAX(script_version) FROM _devlake_migration_history")
        .await
        .expect("max");
    assert_eq!(newest, Some(20240607000041), "earlier scripts stay applied");
    let (_sim, p) = start("v1.0.1", dir.path(), &env, &[("FORCE_MIGRATION", "true")])
        .await
        .expect("start");
    assert_eq!(get(p, "/version").await.0, 200);
}
