//! The KWDB simulator behaves as product-facts §2 says, on a real PostgreSQL, as real processes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use upshift_sim::pg::{Cluster, PgError};

static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();
static NEXT: AtomicU32 = AtomicU32::new(0);

fn cluster() -> Option<&'static Cluster> {
    let c = CLUSTER.get_or_init(|| {
        // Directories of earlier runs whose process is gone.
        if let Ok(entries) = std::fs::read_dir(env!("CARGO_TARGET_TMPDIR")) {
            for e in entries.filter_map(Result::ok) {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(pid) = name.strip_prefix("kwdb-pg-")
                    && !Path::new(&format!("/proc/{pid}")).exists()
                {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("kwdb-pg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Cluster::start(&dir).map_err(|e| match e {
            PgError::Missing => format!("missing: {e}"),
            other => other.to_string(),
        })
    });
    match c {
        Ok(c) => Some(c),
        Err(why) if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!("SKIPPED: PostgreSQL is not available: {why}");
            None
        }
        Err(why) => panic!("PostgreSQL is not available: {why}"),
    }
}

/// A fresh backing database; its URL.
fn backing(c: &Cluster) -> String {
    let name = format!(
        "kwdb_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    c.create_database(&name).expect("create backing db");
    c.url(&name)
}

fn port() -> u16 {
    upshift_sim::ports::free_port().expect("port")
}

struct Sim {
    child: Child,
    sql: u16,
    http: u16,
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sim {
    /// SIGTERM and wait, as `docker stop` would.
    fn stop(mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    async fn connect(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(
            &format!(
                "host=127.0.0.1 port={} user=root dbname=defaultdb",
                self.sql
            ),
            tokio_postgres::NoTls,
        )
        .await
        .expect("connect to the simulator");
        tokio::spawn(conn);
        client
    }
}

/// Start `kwdb-sim start-single-node` as the docs' docker command line does; on failure its
/// log (stdout and stderr).
async fn start(
    version: &str,
    store: &Path,
    backing_url: &str,
    extra: &[(&str, &str)],
) -> Result<Sim, String> {
    let (sql, http) = (port(), port());
    let log = store.with_extension(format!("log{}", NEXT.fetch_add(1, Ordering::Relaxed)));
    let out = std::fs::File::create(&log).expect("log");
    let err = out.try_clone().expect("log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kwdb-sim"));
    cmd.args([
        "start-single-node",
        "--insecure",
        &format!("--listen-addr=127.0.0.1:{sql}"),
        "--http-addr",
        &format!("127.0.0.1:{http}"),
        &format!("--store={}", store.display()),
        "--cache=.25",
        "--max-sql-memory=.25",
    ])
    .env_clear()
    .env("KWDB_SIM_VERSION", version)
    .env("KWDB_SIM_BACKING_URL", backing_url)
    .stdin(Stdio::null())
    .stdout(out)
    .stderr(err);
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn");
    for _ in 0..150 {
        if std::net::TcpStream::connect(("127.0.0.1", sql)).is_ok() {
            return Ok(Sim { child, sql, http });
        }
        if let Ok(Some(status)) = child.try_wait() {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(format!("exit {status}: {text}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    Err("did not start".into())
}

fn marker(store: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(store.join("KWDB_STORE")).expect("KWDB_STORE"))
        .expect("json")
}

async fn http_get(port: u16, path: &str) -> (u16, String) {
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
    (
        status,
        out.split("\r\n\r\n").nth(1).unwrap_or("").to_string(),
    )
}

async fn one_text(c: &tokio_postgres::Client, sql: &str) -> String {
    c.query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

async fn count(c: &tokio_postgres::Client, table: &str) -> i64 {
    c.query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap_or_else(|e| panic!("count {table}: {e}"))
        .get(0)
}

fn db_error(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_else(|| e.to_string())
}

#[test]
fn version_prints_the_kwbase_lines_and_unknown_versions_fail() {
    for v in ["2.1.0", "V2.2.2", "3.2.1"] {
        let out = Command::new(env!("CARGO_BIN_EXE_kwdb-sim"))
            .arg("version")
            .env("KWDB_SIM_VERSION", v)
            .output()
            .expect("run");
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        let tag = format!("V{}", v.trim_start_matches('V'));
        assert_eq!(
            text.lines().next(),
            Some(format!("KaiwuDB Version:  {tag}").as_str())
        );
        for field in [
            "Build Time:",
            "Distribution:",
            "Platform:",
            "Go Version:",
            "C Compiler:",
            "Build SHA-1:",
        ] {
            assert!(text.contains(field), "{field} in {text}");
        }
    }
    let out = Command::new(env!("CARGO_BIN_EXE_kwdb-sim"))
        .args(["version", "--sim-version", "2.0.4"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no simulated KaiwuDB release"),
        "{out:?}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_kwdb-sim"))
        .args(["start-single-node", "--insecure", "--store=/nonexistent/x"])
        .env_clear()
        .env("KWDB_SIM_VERSION", "3.1.0")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("KWDB_SIM_BACKING_URL is required"),
        "{out:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_version_health_and_pre_upgrade_checks() {
    let Some(c) = cluster() else { return };
    let dir = tempfile::tempdir().expect("dir");
    for (v, built) in [("2.1.0", "2024/11/22"), ("3.2.1", "2026/06/")] {
        let store = dir.path().join(v);
        let sim = start(v, &store, &backing(c), &[]).await.expect("start");
        let client = sim.connect().await;
        let version = one_text(&client, "SELECT version()").await;
        assert!(
            version.starts_with(&format!("KaiwuDB V{v} (x86_64-linux-gnu, built {built}")),
            "{version}"
        );
        assert!(
            version.contains(", go1.") && version.contains(", gcc "),
            "{version}"
        );
        // Simple protocol gives the same text.
        let rows = client
            .simple_query("select version();")
            .await
            .expect("simple");
        let simple = rows.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        });
        assert_eq!(simple.as_deref(), Some(version.as_str()));
        let (status, body) = http_get(sim.http, "/health").await;
        assert_eq!(status, 200);
        assert!(body.contains(&format!("V{v}")), "{body}");
        // The documented pre-upgrade health query, SHOW JOBS and ranges.
        let row = client
            .query_one(
                "SELECT sum((metrics->>'ranges.unavailable')::DECIMAL)::INT, sum((metrics->>'ranges.underreplicated')::DECIMAL)::INT FROM kwdb_internal.kv_store_status;",
                &[],
            )
            .await
            .expect("health query");
        assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (0, 0));
        assert!(
            client
                .query("SHOW JOBS", &[])
                .await
                .expect("jobs")
                .is_empty()
        );
        assert!(
            client
                .query("SELECT * FROM kwdb_internal.ranges", &[])
                .await
                .expect("ranges")
                .len()
                >= 2
        );
        // The kwbase client side, as `docker exec … ./kwbase sql` would run it.
        let host = format!("--host=127.0.0.1:{}", sim.sql);
        let out = Command::new(env!("CARGO_BIN_EXE_kwdb-sim"))
            .args(["sql", "--insecure", &host, "-e", "SELECT version()"])
            .output()
            .expect("kwbase sql");
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("version\n{version}\n")
        );
        let out = Command::new(env!("CARGO_BIN_EXE_kwdb-sim"))
            .args(["node", "upgrade", "1", "--insecure", &host])
            .output()
            .expect("kwbase node upgrade");
        assert_eq!(out.status.code(), Some(1));
        assert!(
            String::from_utf8_lossy(&out.stderr)
                .contains("upgrading is forbidden in the current start mode"),
            "{out:?}"
        );
        let period = one_text(&client, "SHOW CLUSTER SETTING ts.raft_log.sync_period").await;
        assert_eq!(period, if v == "2.1.0" { "10s" } else { "0s" });
        sim.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_pass_through_with_parameters_and_databases_map_to_schemas() {
    let Some(c) = cluster() else { return };
    let dir = tempfile::tempdir().expect("dir");
    let sim = start("3.1.0", &dir.path().join("s"), &backing(c), &[])
        .await
        .expect("start");
    let client = sim.connect().await;
    client
        .batch_execute(
            "CREATE DATABASE app; USE app; CREATE TABLE t (id INT PRIMARY KEY, name STRING, score FLOAT, ok BOOL, at TIMESTAMP, raw BYTES)",
        )
        .await
        .expect("ddl");
    let n = client
        .execute(
            "INSERT INTO t VALUES ($1, $2, $3, $4, now(), $5)",
            &[&7i64, &"seven", &1.5f64, &true, &vec![1u8, 2, 255]],
        )
        .await
        .expect("insert");
    assert_eq!(n, 1);
    let row = client
        .query_one(
            "SELECT name, score, ok, raw FROM app.t WHERE id = $1",
            &[&7i64],
        )
        .await
        .expect("select");
    assert_eq!(row.get::<_, String>(0), "seven");
    assert_eq!(row.get::<_, f64>(1), 1.5);
    assert!(row.get::<_, bool>(2));
    assert_eq!(row.get::<_, Vec<u8>>(3), vec![1u8, 2, 255]);
    let ty = one_text(
        &client,
        "SELECT data_type::text FROM information_schema.columns WHERE table_schema = 'app' AND table_name = 't' AND column_name = 'id'",
    )
    .await;
    assert_eq!(ty, "bigint", "KWDB INT is 64-bit");
    // version() and current_database() answer as KWDB inside any passed-through statement.
    let row = client
        .query_one("SELECT version() AS v, current_database()::text AS d", &[])
        .await
        .expect("version in an expression");
    assert!(row.get::<_, String>(0).starts_with("KaiwuDB V3.1.0 ("));
    assert_eq!(row.get::<_, String>(1), "app");
    let tables: Vec<(String, String)> = client
        .query("SHOW TABLES", &[])
        .await
        .expect("tables")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(tables, vec![("t".to_string(), "BASE TABLE".to_string())]);
    let users: Vec<String> = client
        .query("SHOW USERS", &[])
        .await
        .expect("users")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(users, vec!["root".to_string()]);
    let dbs = client.query("SHOW DATABASES", &[]).await.expect("show");
    let names: Vec<String> = dbs.iter().map(|r| r.get(0)).collect();
    assert!(names.contains(&"app".to_string()) && names.contains(&"defaultdb".to_string()));
    let err = client
        .batch_execute("USE nosuchdb")
        .await
        .expect_err("unknown db");
    assert!(db_error(&err).contains("does not exist"), "{err}");
    let err = client
        .batch_execute("CREATE TS DATABASE s2 PARTITION INTERVAL 10d")
        .await
        .expect_err("3.1 refuses PARTITION INTERVAL");
    assert!(db_error(&err).contains("deprecated"), "{err}");
    client
        .batch_execute("CREATE TS DATABASE s2")
        .await
        .expect("plain ts db");
    // An ALTER TABLE passed through shows in the exported DDL.
    client
        .batch_execute("ALTER TABLE t ADD COLUMN extra INT8; EXPORT INTO CSV 'nodelocal://1/alt' FROM DATABASE app")
        .await
        .expect("alter, export");
    let meta = std::fs::read_to_string(dir.path().join("s/extern/alt/meta.sql")).expect("meta.sql");
    assert!(meta.contains("extra bigint"), "{meta}");
    client
        .batch_execute("DROP DATABASE app CASCADE")
        .await
        .expect("drop");
    let err = client
        .query("SELECT * FROM app.t", &[])
        .await
        .expect_err("gone");
    assert!(db_error(&err).contains("does not exist"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_from_2x_then_import_into_3_1_needs_partition_interval_stripped() {
    let Some(c) = cluster() else { return };
    let dir = tempfile::tempdir().expect("dir");
    let old_store = dir.path().join("old");
    let url = backing(c);
    let old = start("2.2.2", &old_store, &url, &[])
        .await
        .expect("start 2.2.2");
    let oc = old.connect().await;
    upshift_sim::kwdb::seed(&oc, 120).await.expect("seed");
    let tables = ["shop.customers", "shop.orders", "sensors.readings"];
    let mut before = Vec::new();
    for t in tables {
        before.push(count(&oc, t).await);
    }
    assert_eq!(before, vec![120, 120, 120]);
    let ts_before: Vec<String> = oc
        .query(
            "SELECT ts::text FROM sensors.readings ORDER BY ts, device_id",
            &[],
        )
        .await
        .expect("ts")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        ts_before.iter().any(|t| t.contains('.')),
        "sub-second values seeded"
    );

    let r = oc
        .query_one(
            "EXPORT INTO CSV \"nodelocal://1/backup/shop\" FROM DATABASE shop WITH privileges, comment",
            &[],
        )
        .await
        .expect("export shop");
    assert_eq!(r.get::<_, String>("result"), "succeed");
    assert_eq!(r.get::<_, i64>("rows"), 240);
    assert_eq!(r.get::<_, i64>("file_num"), 2);
    oc.batch_execute("EXPORT INTO CSV 'nodelocal://1/backup/sensors' FROM DATABASE sensors")
        .await
        .expect("export sensors");
    oc.batch_execute("EXPORT USERS TO SQL \"nodelocal://1/backup/users\"")
        .await
        .expect("export users");
    oc.batch_execute("EXPORT CLUSTER SETTING TO SQL \"nodelocal://1/backup/settings\"")
        .await
        .expect("export settings");

    // Layout under <store>/extern (the docs' /var/lib/kaiwudb/extern).
    let backup = old_store.join("extern/backup");
    let meta = std::fs::read_to_string(backup.join("sensors/meta.sql")).expect("meta.sql");
    assert!(
        meta.starts_with("CREATE TS DATABASE sensors PARTITION INTERVAL 10d;"),
        "{meta}"
    );
    assert!(meta.contains("TAGS (device_id INT NOT NULL"), "{meta}");
    let csv =
        std::fs::read_to_string(backup.join("sensors/public/readings/n1.0.csv")).expect("csv");
    assert_eq!(csv.lines().count(), 120);
    let shop_meta = std::fs::read_to_string(backup.join("shop/meta.sql")).expect("meta");
    assert!(
        shop_meta.starts_with("CREATE DATABASE shop;"),
        "{shop_meta}"
    );
    assert!(
        shop_meta.contains("GRANT ALL ON DATABASE shop TO alice;"),
        "{shop_meta}"
    );
    assert!(
        shop_meta.contains("COMMENT ON DATABASE shop IS 'the web shop';"),
        "{shop_meta}"
    );
    assert!(backup.join("shop/public/orders/n1.0.csv").exists());
    let users = std::fs::read_to_string(backup.join("users/users.sql")).expect("users.sql");
    assert!(users.contains("CREATE USER alice;"), "{users}");
    assert!(
        !users.contains("alice-secret-pw") && !users.to_uppercase().contains("PASSWORD"),
        "{users}"
    );
    let settings =
        std::fs::read_to_string(backup.join("settings/clustersetting.sql")).expect("settings");
    assert!(
        settings.contains("SET CLUSTER SETTING ts.wal.checkpoint_interval = '5m';"),
        "{settings}"
    );

    // A non-empty target is refused with KWDB's message.
    let err = oc
        .batch_execute("EXPORT INTO CSV \"nodelocal://1/backup/shop\" FROM DATABASE shop")
        .await
        .expect_err("non-empty dir");
    assert_eq!(
        db_error(&err),
        "export path nodelocal://1/backup/shop is not empty (contains 3 files), please use an empty directory to prevent data loss"
    );
    let err = oc
        .batch_execute("EXPORT INTO CSV \"http://10.0.0.1:8000/b\" FROM DATABASE shop")
        .await
        .expect_err("http");
    assert!(db_error(&err).contains("not supported"), "{err}");

    // A new 3.1.0 instance (the cross-major path of §2.2), fed the copied export.
    let new_store = dir.path().join("new");
    // Started with the same environment (same backing URL): a new store sees none of the old
    // store's rows.
    let new = start("3.1.0", &new_store, &url, &[])
        .await
        .expect("start 3.1.0");
    assert_ne!(
        marker(&new_store)["backing_database"],
        marker(&old_store)["backing_database"]
    );
    let copy = new_store.join("extern/backup");
    std::fs::create_dir_all(&copy).expect("mkdir");
    let status = Command::new("cp")
        .arg("-r")
        .arg(backup.join("."))
        .arg(&copy)
        .status()
        .expect("cp");
    assert!(status.success());
    let nc = new.connect().await;
    let fresh: Vec<String> = nc
        .query("SHOW DATABASES", &[])
        .await
        .expect("dbs")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(fresh, vec!["defaultdb".to_string(), "system".to_string()]);
    let err = nc
        .query(
            "IMPORT DATABASE CSV DATA (\"nodelocal://1/backup/sensors\")",
            &[],
        )
        .await
        .expect_err("PARTITION INTERVAL in meta.sql");
    assert!(db_error(&err).contains("PARTITION INTERVAL"), "{err}");
    let failed = nc.query("SHOW JOBS", &[]).await.expect("jobs");
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].get::<_, String>("status"), "failed");

    // Strip it, as the upgrade doc says.
    let meta_path = copy.join("sensors/meta.sql");
    std::fs::write(&meta_path, meta.replace(" PARTITION INTERVAL 10d", "")).expect("strip");
    let err = nc
        .query(
            "IMPORT DATABASE CSV DATA (\"nodelocal://1/backup/sensors\") WITH comment",
            &[],
        )
        .await
        .expect_err("no comment");
    assert_eq!(db_error(&err), "NO COMMENT statement in the SQL file");
    let err = nc
        .query(
            "IMPORT DATABASE CSV DATA (\"nodelocal://1/backup/sensors\") WITH privileges",
            &[],
        )
        .await
        .expect_err("no grants for sensors");
    assert_eq!(db_error(&err), "NO PRIVILEGES statement in the SQL file");
    let r = nc
        .query_one(
            "IMPORT DATABASE CSV DATA (\"nodelocal://1/backup/sensors\")",
            &[],
        )
        .await
        .expect("import sensors");
    assert_eq!(r.get::<_, String>("status"), "succeeded");
    assert_eq!(r.get::<_, f64>("fraction_completed"), 1.0);
    assert_eq!(r.get::<_, i64>("rows"), 120);
    assert_eq!(r.get::<_, i64>("reject_rows"), 0);
    assert_eq!(r.get::<_, i64>("abandon_rows"), 0);
    assert!(r.get::<_, i64>("job_id") > 0);

    // A malformed line is a rejected row written to reject.txt.
    let orders_csv = copy.join("shop/public/orders/n1.0.csv");
    let mut text = std::fs::read_to_string(&orders_csv).expect("csv");
    text.push_str("999,only-two-fields\n");
    std::fs::write(&orders_csv, &text).expect("write");
    let r = nc
        .query_one(
            "IMPORT DATABASE CSV DATA ('nodelocal://1/backup/shop') WITH privileges, comment",
            &[],
        )
        .await
        .expect("import shop");
    assert_eq!(r.get::<_, i64>("rows"), 240);
    assert_eq!(r.get::<_, i64>("reject_rows"), 1);
    let reject =
        std::fs::read_to_string(copy.join("shop/public/orders/reject.txt")).expect("reject.txt");
    assert!(reject.contains("999,only-two-fields"), "{reject}");
    nc.batch_execute("IMPORT USERS SQL DATA (\"nodelocal://1/backup/users/users.sql\")")
        .await
        .expect("import users");
    nc.batch_execute(
        "IMPORT CLUSTER SETTING SQL DATA (\"nodelocal://1/backup/settings/clustersetting.sql\")",
    )
    .await
    .expect("import settings");

    let mut after = Vec::new();
    for t in tables {
        after.push(count(&nc, t).await);
    }
    assert_eq!(after, before, "row counts survive export/import");
    let ts_after: Vec<String> = nc
        .query(
            "SELECT ts::text FROM sensors.readings ORDER BY ts, device_id",
            &[],
        )
        .await
        .expect("ts")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ts_after, ts_before, "timestamps keep their precision");
    let orders_old: Vec<(i64, String, Vec<u8>, Option<String>)> = oc
        .query("SELECT o.id, o.note, o.blob, c.email FROM shop.orders o JOIN shop.customers c ON c.id = o.id ORDER BY o.id", &[])
        .await
        .expect("old")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let orders_new: Vec<(i64, String, Vec<u8>, Option<String>)> = nc
        .query("SELECT o.id, o.note, o.blob, c.email FROM shop.orders o JOIN shop.customers c ON c.id = o.id ORDER BY o.id", &[])
        .await
        .expect("new")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(
        orders_new, orders_old,
        "quotes, commas, bytes and NULLs survive"
    );
    let kinds: Vec<(String, String)> = nc
        .query("SHOW DATABASES", &[])
        .await
        .expect("dbs")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(
        kinds.contains(&("sensors".into(), "TIME SERIES".into())),
        "{kinds:?}"
    );
    assert_eq!(
        one_text(&nc, "SHOW CLUSTER SETTING ts.wal.checkpoint_interval").await,
        "5m"
    );
    let jobs = nc.query("SHOW JOBS", &[]).await.expect("jobs");
    let succeeded = jobs
        .iter()
        .filter(|r| r.get::<_, String>("status") == "succeeded")
        .count();
    assert_eq!(succeeded, 4, "sensors, shop, users, settings");
    // The grant came over WITH privileges, and alice exists after IMPORT USERS.
    nc.batch_execute("GRANT SELECT ON DATABASE sensors TO alice")
        .await
        .expect("alice exists");
    nc.batch_execute(
        "EXPORT INTO CSV 'nodelocal://1/again/shop' FROM DATABASE shop WITH privileges",
    )
    .await
    .expect("re-export");
    let again =
        std::fs::read_to_string(new_store.join("extern/again/shop/meta.sql")).expect("meta");
    assert!(
        again.contains("GRANT ALL ON DATABASE shop TO alice;"),
        "{again}"
    );
    old.stop();
    new.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_refuse_format_changes_downgrades_and_excluded_paths() {
    let Some(c) = cluster() else { return };
    let dir = tempfile::tempdir().expect("dir");
    let url = backing(c);

    // A 2.x store: a 3.x binary refuses it (the store format changed), an older 2.x too.
    let s2 = dir.path().join("s2");
    start("2.2.2", &s2, &url, &[]).await.expect("2.2.2").stop();
    let m = marker(&s2);
    assert_eq!(m["store_format"], 2);
    assert_eq!(m["version"], "V2.2.2");
    let err = start("3.0.0", &s2, &url, &[]).await.err().expect("refused");
    assert!(
        err.contains("store format 2") && err.contains("cannot be upgraded in place"),
        "{err}"
    );
    let err = start("2.2.0", &s2, &url, &[]).await.err().expect("refused");
    assert!(err.contains("cannot simply downgrade"), "{err}");
    assert_eq!(marker(&s2), m, "refusals leave the store alone");

    // 2.1.0 → 2.2.2 in place is excluded by the release notes; 2.1.0 → 2.2.0 is allowed.
    let s21 = dir.path().join("s21");
    start("2.1.0", &s21, &url, &[]).await.expect("2.1.0").stop();
    let err = start("2.2.2", &s21, &url, &[])
        .await
        .err()
        .expect("refused");
    assert!(err.contains("export/import"), "{err}");
    start("2.2.0", &s21, &url, &[]).await.expect("2.2.0").stop();
    assert_eq!(marker(&s21)["version"], "V2.2.0");

    // A same-major upgrade: the crash injection leaves the store as it was, then it succeeds
    // and the data is still there.
    let s3 = dir.path().join("s3");
    let url3 = backing(c);
    let sim = start("3.0.0", &s3, &url3, &[]).await.expect("3.0.0");
    sim.connect()
        .await
        .batch_execute("CREATE DATABASE keep; CREATE TABLE keep.t (id INT); INSERT INTO keep.t VALUES (1), (2)")
        .await
        .expect("data");
    sim.stop();
    let before = marker(&s3);
    let err = start(
        "3.1.0",
        &s3,
        &url3,
        &[("KWDB_SIM_FAIL_UPGRADE_TO", "3.1.0")],
    )
    .await
    .err()
    .expect("crash");
    assert!(err.contains("upgrade crash"), "{err}");
    assert_eq!(marker(&s3), before, "the crash left the store unchanged");
    let sim = start(
        "3.1.0",
        &s3,
        &url3,
        &[("KWDB_SIM_FAIL_UPGRADE_TO", "3.2.0")],
    )
    .await
    .expect("3.1.0");
    let m = marker(&s3);
    assert_eq!(
        (
            m["store_format"].clone(),
            m["version"].clone(),
            m["created_by"].clone()
        ),
        (3.into(), "V3.1.0".into(), "V3.0.0".into())
    );
    let client = sim.connect().await;
    assert_eq!(count(&client, "keep.t").await, 2);
    assert!(
        one_text(&client, "SELECT version()")
            .await
            .starts_with("KaiwuDB V3.1.0 ")
    );
    sim.stop();
    let err = start("3.0.0", &s3, &url3, &[])
        .await
        .err()
        .expect("downgrade");
    assert!(err.contains("cannot simply downgrade"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v3_0_accepts_and_ignores_partition_interval() {
    let Some(c) = cluster() else { return };
    let dir = tempfile::tempdir().expect("dir");
    let store = dir.path().join("s");
    let sim = start("3.0.0", &store, &backing(c), &[])
        .await
        .expect("start 3.0.0");
    let client = sim.connect().await;
    client
        .batch_execute("CREATE TS DATABASE m PARTITION INTERVAL 10d; CREATE TABLE m.r (ts TIMESTAMPTZ NOT NULL, v INT) TAGS (d INT NOT NULL) PRIMARY TAGS (d); INSERT INTO m.r VALUES ('2025-01-01 00:00:00.5+00', 1, 1)")
        .await
        .expect("3.0.0 accepts PARTITION INTERVAL");
    client
        .batch_execute("EXPORT INTO CSV 'nodelocal://1/x/m' FROM DATABASE m")
        .await
        .expect("export");
    let meta = std::fs::read_to_string(store.join("extern/x/m/meta.sql")).expect("meta");
    assert!(meta.starts_with("CREATE TS DATABASE m;\n"), "{meta}");
    // A 2.x meta.sql with PARTITION INTERVAL imports on 3.0.0.
    let two = store.join("extern/two/m2");
    std::fs::create_dir_all(two.join("public/r")).expect("mkdir");
    std::fs::write(
        two.join("meta.sql"),
        "CREATE TS DATABASE m2 PARTITION INTERVAL 10d;\nCREATE TABLE r (ts TIMESTAMP NOT NULL, v INT) TAGS (d INT NOT NULL) PRIMARY TAGS (d);\n",
    )
    .expect("meta");
    std::fs::write(
        two.join("public/r/n1.0.csv"),
        "2024-05-01 10:00:00.000001,7,1\n2024-05-01 10:00:01.999999,8,2\n",
    )
    .expect("csv");
    let r = client
        .query_one("IMPORT DATABASE CSV DATA ('nodelocal://1/two/m2')", &[])
        .await
        .expect("import on 3.0.0");
    assert_eq!(r.get::<_, i64>("rows"), 2);
    let ts: Vec<String> = client
        .query("SELECT ts::text FROM m2.r ORDER BY ts", &[])
        .await
        .expect("ts")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        ts,
        vec!["2024-05-01 10:00:00.000001", "2024-05-01 10:00:01.999999"]
    );
    sim.stop();
}

/// A small ts export as a 3.x release writes it.
fn write_export(dir: &Path) {
    std::fs::create_dir_all(dir.join("public/r")).expect("mkdir");
    std::fs::write(
        dir.join("meta.sql"),
        "CREATE TS DATABASE f;\nCREATE TABLE r (ts TIMESTAMP NOT NULL, v INT) TAGS (d INT NOT NULL) PRIMARY TAGS (d);\n",
    )
    .expect("meta");
    let rows: String = (0..10)
        .map(|i| format!("2024-05-01 10:00:0{i}.25,{i},1\n"))
        .collect();
    std::fs::write(dir.join("public/r/n1.0.csv"), rows).expect("csv");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_faults_show_as_wrong_counts_and_lost_precision() {
    let Some(c) = cluster() else { return };
    let dir = tempfile::tempdir().expect("dir");
    for (fault, want_count, want_first) in [
        ("lose-rows=3", 7, None),
        ("truncate-timestamps", 10, Some("2024-05-01 10:00:00")),
    ] {
        let store = dir.path().join(fault);
        write_export(&store.join("extern/b/f"));
        let sim = start(
            "3.2.1",
            &store,
            &backing(c),
            &[("KWDB_SIM_IMPORT_FAULT", fault)],
        )
        .await
        .expect("start");
        let client = sim.connect().await;
        let r = client
            .query_one("IMPORT DATABASE CSV DATA ('nodelocal://1/b/f')", &[])
            .await
            .expect("import");
        assert_eq!(r.get::<_, i64>("rows"), 10, "the job reports every row");
        assert_eq!(count(&client, "f.r").await, want_count, "{fault}");
        let first = one_text(&client, "SELECT min(ts)::text FROM f.r").await;
        match want_first {
            Some(t) => assert_eq!(first, t),
            None => assert!(first.ends_with(".25"), "{first}"),
        }
        sim.stop();
    }
    let dir2 = dir.path().join("bad");
    let err = start(
        "3.2.1",
        &dir2,
        &backing(c),
        &[("KWDB_SIM_IMPORT_FAULT", "x")],
    )
    .await
    .err()
    .expect("bad fault");
    assert!(err.contains("expected lose-rows=N"), "{err}");
}
