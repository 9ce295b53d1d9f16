//! Shared test harness: a throwaway PostgreSQL cluster per test binary (or the server named by
//! `UPSHIFT_TEST_PG_URL`), a fresh database per test, fleet files for simulated instances, and
//! guards that stop every process a test started, even when it panics.
//!
//! When PostgreSQL is missing, tests say exactly what is missing and return early on a developer
//! box; under `CI=true` that is a failure.

#![allow(dead_code)]

pub mod agents;
pub mod disk;
pub mod docker;
pub mod hostile;
pub mod kwdb;
pub mod mysql;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use tokio_postgres::NoTls;

/// Every record of the audit log file `log` (the active segment; none when it does not exist yet).
pub fn audit_records(log: &Path) -> Vec<upshift::audit::AuditRecord> {
    let text = match std::fs::read_to_string(log) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => panic!("audit log {}: {e}", log.display()),
    };
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("audit record {l}: {e}")))
        .collect()
}

/// Where the tests' PostgreSQL is.
pub struct Pg {
    base_url: String,
    _cluster: Option<upshift_sim::pg::Cluster>,
}

static PG: OnceLock<Result<Pg, String>> = OnceLock::new();
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Remove `<prefix>-<pid>` directories under the test tmpdir whose process is gone (a test
/// binary cannot clean up after itself: its servers live until the process ends).
pub fn sweep_stale(prefix: &str) {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let Ok(entries) = std::fs::read_dir(&root) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name
            .strip_prefix(&format!("{prefix}-"))
            .and_then(|p| p.parse::<u32>().ok())
            && pid != std::process::id()
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The tests' PostgreSQL, or `None` (with the reason printed) on a developer box without it.
/// Under `CI=true` a missing PostgreSQL fails the test.
pub fn pg() -> Option<&'static Pg> {
    let pg = PG.get_or_init(|| {
        if let Ok(url) = std::env::var("UPSHIFT_TEST_PG_URL") {
            return Ok(Pg {
                base_url: url,
                _cluster: None,
            });
        }
        sweep_stale("pg");
        let dir =
            PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("pg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        upshift_sim::pg::Cluster::start(&dir)
            .map(|cluster| Pg {
                base_url: cluster.url("postgres"),
                _cluster: Some(cluster),
            })
            .map_err(|e| e.to_string())
    });
    match pg {
        Ok(pg) => Some(pg),
        Err(why) => {
            missing(&format!("PostgreSQL, and it is missing: {why}"));
            None
        }
    }
}

/// A test that needs something this machine lacks says exactly what; under `CI=true` that is a
/// failure.
pub fn missing(what: &str) {
    let message = format!("this test needs {what}");
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{message}");
    }
    eprintln!("SKIPPED: {message}");
}

/// `url` with its database replaced.
pub fn with_db(url: &str, db: &str) -> String {
    upshift::caps::db::rewrite_dbname(url, db)
}

impl Pg {
    /// A URL for database `db` on this server.
    pub fn url(&self, db: &str) -> String {
        with_db(&self.base_url, db)
    }

    /// A new, empty database with a unique name starting with `prefix`, owned by a role of the
    /// same name (LOGIN CREATEDB: what an operator gives a product whose binding Upshift backs
    /// up and restores); the URL connects as that role.
    pub async fn fresh_db(&self, prefix: &str) -> (String, String) {
        self.fresh_db_as(prefix, "CREATEDB").await
    }

    /// A new, empty database owned by a new role with `attributes` (e.g. `""`, `"CREATEDB"`);
    /// the URL connects as that role. On a server where the tests may not create roles
    /// (`UPSHIFT_TEST_PG_URL` naming an ordinary role), the database is the base role's.
    pub async fn fresh_db_as(&self, prefix: &str, attributes: &str) -> (String, String) {
        let name = format!(
            "{prefix}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let admin = connect(&self.base_url).await;
        if admin
            .batch_execute(&format!("CREATE ROLE \"{name}\" LOGIN {attributes}"))
            .await
            .is_err()
        {
            admin
                .batch_execute(&format!("CREATE DATABASE \"{name}\""))
                .await
                .expect("create database");
            return (name.clone(), self.url(&name));
        }
        admin
            .batch_execute(&format!("CREATE DATABASE \"{name}\" OWNER \"{name}\""))
            .await
            .expect("create database");
        let url = self.url_as(&name, &name);
        (name, url)
    }

    /// A new, empty database of the base (superuser) role, for storage that is not a binding
    /// (the KWDB simulator's backing database).
    pub async fn fresh_storage_db(&self, prefix: &str) -> (String, String) {
        let name = format!(
            "{prefix}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        connect(&self.base_url)
            .await
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .expect("create database");
        let url = self.url(&name);
        (name, url)
    }

    /// A URL for database `db` connecting as `role` (trust authentication: no password).
    pub fn url_as(&self, role: &str, db: &str) -> String {
        let url = self.url(db);
        match url.split_once("://") {
            Some((scheme, rest)) => {
                let host = rest.split_once('@').map_or(rest, |(_, host)| host);
                format!("{scheme}://{role}@{host}")
            }
            None => url,
        }
    }

    /// A superuser (or the base role's) URL for database `db`.
    pub fn admin_url(&self, db: &str) -> String {
        self.url(db)
    }

    /// Whether a database exists.
    pub async fn database_exists(&self, name: &str) -> bool {
        let admin = connect(&self.base_url).await;
        let row = admin
            .query_one(
                "SELECT count(*) FROM pg_database WHERE datname = $1",
                &[&name],
            )
            .await
            .expect("query");
        row.get::<_, i64>(0) == 1
    }
}

/// A connected client (the connection task is spawned).
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    tokio::spawn(connection);
    client
}

/// Row count and an md5 over every row's text, per base table in `public`.
pub async fn table_checksums(url: &str) -> BTreeMap<String, (i64, String)> {
    let client = connect(url).await;
    let tables = client
        .query(
            "SELECT table_name::text FROM information_schema.tables \
             WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY 1",
            &[],
        )
        .await
        .expect("list tables");
    let mut out = BTreeMap::new();
    for t in tables {
        let name: String = t.get(0);
        let row = client
            .query_one(
                &format!(
                    "SELECT count(*), coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '') FROM \"{name}\" t"
                ),
                &[],
            )
            .await
            .expect("checksum");
        out.insert(name, (row.get(0), row.get(1)));
    }
    out
}

/// A free loopback TCP port, never the same one twice in a test process: tests run
/// concurrently and bind their ports only later, so a port handed out once stays reserved.
pub fn free_port() -> u16 {
    upshift_sim::ports::free_port().expect("free port")
}

/// A temporary directory holding a data dir and a fleet file; on drop, every process service
/// recorded under it is killed.
pub struct Env {
    /// The temporary directory.
    pub dir: tempfile::TempDir,
}

impl Env {
    /// A new environment.
    pub fn new() -> Env {
        Env {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// The data directory.
    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The fleet file path.
    pub fn fleet(&self) -> PathBuf {
        self.dir.path().join("upshift.toml")
    }

    /// Write the fleet file.
    pub fn write_fleet(&self, text: &str) {
        std::fs::write(self.fleet(), text).expect("write fleet");
    }

    /// The `upshift` binary with `--fleet`, `--data` and `args` set (the environment's
    /// `UPSHIFT_FLEET`/`UPSHIFT_DATA` removed), to run, or to spawn and watch from outside.
    pub fn command(&self, args: &[&str]) -> std::process::Command {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_upshift"));
        command
            .arg("--fleet")
            .arg(self.fleet())
            .arg("--data")
            .arg(self.data())
            .args(args)
            .env_remove("UPSHIFT_FLEET")
            .env_remove("UPSHIFT_DATA");
        command
    }

    /// Run the `upshift` binary with `--fleet` and `--data` set.
    pub fn upshift(&self, args: &[&str]) -> std::process::Output {
        self.command(args).output().expect("run upshift")
    }
}

impl Env {
    /// `upshift plan --product P --from A --to B --json`: the exit code and the JSON report.
    pub fn plan_offline(
        &self,
        product: &str,
        from: &str,
        to: &str,
    ) -> (Option<i32>, serde_json::Value) {
        let out = self.upshift(&[
            "plan",
            "--product",
            product,
            "--from",
            from,
            "--to",
            to,
            "--json",
        ]);
        (out.status.code(), json(&out))
    }
}

impl Default for Env {
    fn default() -> Self {
        Env::new()
    }
}

fn kill_services(dir: &Path) {
    let Ok(instances) = std::fs::read_dir(dir) else {
        return;
    };
    for instance in instances.filter_map(Result::ok) {
        let Ok(files) = std::fs::read_dir(instance.path()) else {
            continue;
        };
        for file in files.filter_map(Result::ok) {
            if file.path().extension().is_some_and(|e| e == "json")
                && let Ok(text) = std::fs::read_to_string(file.path())
                && let Ok(state) = serde_json::from_str::<serde_json::Value>(&text)
                && let Some(pid) = state.get("pid").and_then(serde_json::Value::as_i64)
            {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        kill_services(&self.data().join("services"));
    }
}

/// The fleet-file text of one simulated Bytebase instance.
pub fn bytebase_instance(
    name: &str,
    db_url: &str,
    port: u16,
    version: &str,
    fail_migration: Option<&str>,
) -> String {
    bytebase_instance_with_env(name, db_url, port, version, fail_migration, "")
}

/// The same, with extra `env` entries (`, KEY = "value"` pairs) for the process.
pub fn bytebase_instance_with_env(
    name: &str,
    db_url: &str,
    port: u16,
    version: &str,
    fail_migration: Option<&str>,
    extra_env: &str,
) -> String {
    format!(
        r#"
[[instance]]
name = "{name}"
product = "bytebase"

[instance.db.meta]
url = "{db_url}"

[instance.service.app]
kind = "process"
command = "'{exe}' simulate bytebase --version {{version}} --port {port}"
version = "{version}"
health_url = "http://127.0.0.1:{port}/healthz"
stop_timeout_secs = 10
env = {{ PG_URL = "{db_url}"{fail}{extra_env} }}

[instance.http.api]
url = "http://127.0.0.1:{port}"
"#,
        exe = env!("CARGO_BIN_EXE_upshift"),
        fail = fail_migration
            .map(|v| format!(", BB_SIM_FAIL_MIGRATION = \"{v}\""))
            .unwrap_or_default()
    )
}

/// The JSON a command printed on stdout (panics with both streams when it is not JSON).
pub fn json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// What a command printed on stderr, then its stdout (for assertion messages).
pub fn stderr(out: &std::process::Output) -> String {
    format!(
        "{}\nstdout:\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    )
}

/// `GET http://127.0.0.1:PORT/PATH`: status and body (status 0 when nothing answers).
pub async fn http_get(port: u16, path: &str) -> (u16, String) {
    match reqwest::get(format!("http://127.0.0.1:{port}{path}")).await {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.text().await.unwrap_or_default())
        }
        Err(_) => (0, String::new()),
    }
}

/// The ids of a report's steps in one phase (`forward` or `rollback`).
pub fn step_ids(report: &serde_json::Value, phase: &str) -> Vec<String> {
    report["steps"]
        .as_array()
        .map(|steps| {
            steps
                .iter()
                .filter(|s| s["phase"] == phase)
                .filter_map(|s| s["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Start services `bindings` of instance `name`, in order, and wait until each is healthy.
pub async fn start_services(env: &Env, name: &str, bindings: &[&str]) {
    let fleet = upshift::fleet::Fleet::load(&env.fleet()).expect("fleet");
    let session = upshift::ops::Session::open(&env.data(), upshift::caps::EventSink::discard())
        .await
        .expect("session");
    let (_, caps) = upshift::ops::apply::prepare(&session, fleet.instance(name).expect("instance"))
        .await
        .expect("prepare");
    for binding in bindings {
        let service = caps.service();
        service
            .start(binding, "test")
            .await
            .unwrap_or_else(|e| panic!("start {binding}: {e}"));
        service
            .wait_healthy(binding, std::time::Duration::from_secs(60), "test")
            .await
            .unwrap_or_else(|e| panic!("{binding} healthy: {e}"));
    }
}

/// For each table, its columns now; used to compare the same columns after an upgrade that
/// may add columns.
pub async fn columns(db_url: &str) -> BTreeMap<String, Vec<String>> {
    let client = connect(db_url).await;
    let rows = client
        .query(
            "SELECT table_name::text, column_name::text FROM information_schema.columns \
             WHERE table_schema = 'public' ORDER BY table_name, ordinal_position",
            &[],
        )
        .await
        .expect("columns");
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in rows {
        out.entry(r.get(0)).or_default().push(r.get(1));
    }
    out
}

/// Row count and checksum of the given columns of each table (tables that migrations create
/// later are not in `cols`).
pub async fn checksums_over(
    db_url: &str,
    cols: &BTreeMap<String, Vec<String>>,
    skip: &[&str],
) -> BTreeMap<String, (i64, String)> {
    let client = connect(db_url).await;
    let mut out = BTreeMap::new();
    for (table, columns) in cols {
        if skip.contains(&table.as_str()) {
            continue;
        }
        let list = columns
            .iter()
            .map(|c| format!("\"{c}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let row = client
            .query_one(
                &format!(
                    "SELECT count(*), coalesce(md5(string_agg(ROW({list})::text, '|' ORDER BY ROW({list})::text)), '') FROM \"{table}\""
                ),
                &[],
            )
            .await
            .unwrap_or_else(|e| panic!("checksum {table}: {e}"));
        out.insert(table.clone(), (row.get(0), row.get(1)));
    }
    out
}

/// The port of a `scheme://user@host:PORT/db` URL (0 when it has none).
pub fn url_port(url: &str) -> u16 {
    url.rsplit_once(':')
        .and_then(|(_, rest)| rest.split('/').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_default()
}

/// Whether the journal in `data` shows step `step` of a run started and not finished.
pub fn step_started(data: &Path, step: &str) -> bool {
    let Ok(conn) = rusqlite::Connection::open_with_flags(
        data.join("state.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    ) else {
        return false;
    };
    conn.query_row(
        "SELECT count(*) FROM steps WHERE step_id = ?1 AND status = 'started'",
        [step],
        |r| r.get::<_, i64>(0),
    )
    .is_ok_and(|n| n > 0)
}
