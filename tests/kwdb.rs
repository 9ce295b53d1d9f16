//! KWDB end to end through the `upshift` binary, on the real Docker engine and a real
//! PostgreSQL behind the simulator: a same-major upgrade that recreates the container with every
//! parameter but the image, a crashing upgrade rolled back to the same container and store, a
//! 2.x → 3.x move by EXPORT / IMPORT into a new instance (PARTITION INTERVAL stripped, counts
//! compared, cut over), the refusals, and offline plans. KWDB is played by the simulator in
//! tests/simulators (test infrastructure that behaves as KWDB does at upgrade time), baked into
//! FROM-scratch images laid out like `kwdb/kwdb`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use common::docker::{self, Containers, KWDB_SIM_REPO};
use common::{Env, free_port, json, stderr, step_ids};

static NEXT: AtomicU32 = AtomicU32::new(0);

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// One simulated KWDB node in a container, started like the docs' `docker run`.
struct Node {
    name: String,
    sql: u16,
    http: u16,
    store: PathBuf,
}

/// `docker run` (or `docker create`, when `start` is false) of a node, the docs' parameters
/// kept (host networking and loopback addresses only).
fn node(
    dir: &Path,
    version: &str,
    backing: &str,
    external: Option<&Path>,
    env: &[&str],
    start: bool,
) -> Node {
    let name = unique("kwdb");
    let (sql, http) = (free_port(), free_port());
    let store = dir.join(format!("{name}-store"));
    std::fs::create_dir_all(&store).expect("store dir");
    let mut cmd = Command::new("docker");
    cmd.arg(if start { "run" } else { "create" });
    if start {
        cmd.arg("-d");
    }
    cmd.args([
        "--name",
        &name,
        "--network",
        "host",
        "--ipc",
        "shareable",
        "-w",
        "/kaiwudb/bin",
    ])
    .args([
        "--ulimit",
        "nofile=1024:4096",
        "--label",
        "team=data",
        "--restart",
        "unless-stopped",
    ])
    .arg("-v")
    .arg(format!(
        "{}:/kaiwudb/deploy/kwdb-container",
        store.display()
    ))
    .args(["-e", &format!("KWDB_SIM_BACKING_URL={backing}")]);
    if let Some(ext) = external {
        cmd.arg("-v")
            .arg(format!("{}:/kaiwudb/extern", ext.display()));
    }
    for e in env {
        cmd.args(["-e", e]);
    }
    cmd.arg(format!("{KWDB_SIM_REPO}:{version}"))
        .args(["./kwbase", "start-single-node", "--insecure"])
        .arg(format!("--listen-addr=127.0.0.1:{sql}"))
        .arg(format!("--http-addr=127.0.0.1:{http}"))
        .arg("--store=/kaiwudb/deploy/kwdb-container");
    if external.is_some() {
        cmd.arg("--external-io-dir=/kaiwudb/extern");
    }
    let out = cmd.output().expect("docker");
    assert!(
        out.status.success(),
        "docker run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Node {
        name,
        sql,
        http,
        store,
    }
}

fn url(port: u16) -> String {
    format!("postgres://root@127.0.0.1:{port}/defaultdb")
}

async fn wait_sql(port: u16) -> tokio_postgres::Client {
    for _ in 0..150 {
        if let Ok((client, conn)) = tokio_postgres::connect(&url(port), tokio_postgres::NoTls).await
        {
            tokio::spawn(conn);
            return client;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("KWDB on {port} did not answer");
}

async fn version(port: u16) -> String {
    let client = wait_sql(port).await;
    client
        .query_one("SELECT version()", &[])
        .await
        .expect("version()")
        .get(0)
}

/// Row counts of the seeded tables.
async fn counts(port: u16) -> Vec<i64> {
    let client = wait_sql(port).await;
    let mut out = Vec::new();
    for t in ["shop.customers", "shop.orders", "sensors.readings"] {
        out.push(
            client
                .query_one(&format!("SELECT count(*) FROM {t}"), &[])
                .await
                .expect("count")
                .get(0),
        );
    }
    out
}

/// Every seeded row, as text, in a stable order (to prove values and timestamp precision).
async fn rows(port: u16) -> Vec<String> {
    let client = wait_sql(port).await;
    let mut out = Vec::new();
    for t in ["shop.customers", "shop.orders", "sensors.readings"] {
        for m in client
            .simple_query(&format!("SELECT * FROM {t} ORDER BY 1, 2"))
            .await
            .expect("rows")
        {
            if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
                out.push(
                    (0..r.len())
                        .map(|i| r.get(i).unwrap_or("NULL").to_string())
                        .collect::<Vec<_>>()
                        .join("|"),
                );
            }
        }
    }
    out
}

fn instance(name: &str, node: &Node, external: &Path, next: Option<&Node>) -> String {
    let mut text = format!(
        r#"
[[instance]]
name = "{name}"
product = "kwdb"

[instance.db.sql]
url = "kwdb://root@127.0.0.1:{sql}/defaultdb"

[instance.service.app]
kind = "docker"
container = "{container}"
image = "{KWDB_SIM_REPO}:{{version}}"
health_url = "http://127.0.0.1:{http}/health"
stop_timeout_secs = 5

[instance.files.store]
path = "{store}"

[instance.files.extern]
path = "{external}"
"#,
        sql = node.sql,
        http = node.http,
        container = node.name,
        store = node.store.display(),
        external = external.display(),
    );
    if let Some(n) = next {
        text.push_str(&format!(
            r#"
[instance.service.next]
kind = "docker"
container = "{container}"
image = "{KWDB_SIM_REPO}:{{version}}"
health_url = "http://127.0.0.1:{http}/health"
stop_timeout_secs = 5

[instance.db.next-sql]
url = "kwdb://root@127.0.0.1:{sql}/defaultdb"
"#,
            container = n.name,
            http = n.http,
            sql = n.sql,
        ));
    }
    text
}

fn ready() -> Option<&'static common::Pg> {
    let pg = common::pg()?;
    if !docker::available() {
        return None;
    }
    docker::kwdb_images(&["2.2.2", "3.0.0", "3.1.0"]);
    Some(pg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_same_major_upgrade_recreates_the_container_and_keeps_every_row() {
    let Some(pg) = ready() else { return };
    let env = Env::new();
    let (_, backing) = pg.fresh_db("kwb").await;
    let old = node(env.dir.path(), "3.0.0", &backing, None, &[], true);
    let _cleanup = Containers(vec![
        old.name.clone(),
        format!("{}-upshift-previous", old.name),
        format!("{}-upshift-next", old.name),
    ]);
    upshift_sim::kwdb::seed(&wait_sql(old.sql).await, 60)
        .await
        .expect("seed");
    let before = rows(old.sql).await;
    let inspected = docker::inspect(&old.name);
    env.write_fleet(&instance("kw", &old, &old.store.join("extern"), None));

    let out = env.upshift(&["apply", "kw", "--to", "3.1.0", "--yes", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report = json(&out);
    assert_eq!(
        step_ids(&report, "forward"),
        [
            "preflight",
            "export",
            "stop",
            "snapshot-store",
            "switch",
            "start",
            "wait-healthy",
            "compare-counts"
        ]
    );
    assert!(
        report["checks"]
            .as_array()
            .expect("checks")
            .iter()
            .all(|c| c["passed"] == true),
        "{report}"
    );
    assert!(version(old.sql).await.starts_with("KaiwuDB V3.1.0 "));
    assert_eq!(
        rows(old.sql).await,
        before,
        "every row, value and timestamp"
    );
    // Everything but the image is what the operator set.
    let now = docker::inspect(&old.name);
    assert_eq!(now["Config"]["Image"], format!("{KWDB_SIM_REPO}:3.1.0"));
    for key in [
        "Binds",
        "NetworkMode",
        "IpcMode",
        "Ulimits",
        "RestartPolicy",
    ] {
        assert_eq!(
            now["HostConfig"][key], inspected["HostConfig"][key],
            "{key}"
        );
    }
    for key in ["Cmd", "WorkingDir"] {
        assert_eq!(now["Config"][key], inspected["Config"][key], "{key}");
    }
    // The operator's label is kept; the image's own label is the new image's.
    assert_eq!(now["Config"]["Labels"]["team"], "data");
    assert_eq!(
        now["Config"]["Labels"]["org.opencontainers.image.version"],
        "3.1.0"
    );
    // The export is a logical backup beside the data, with its counts.
    let export = old.store.join("extern/upshift/export-1");
    assert!(export.join("shop/meta.sql").exists() && export.join("upshift-counts.json").exists());
    assert!(
        !std::fs::read_to_string(export.join("users/users.sql"))
            .expect("users.sql")
            .contains("alice-secret-pw")
    );

    // No downgrade afterwards...
    let out = env.upshift(&["plan", "kw", "--to", "3.0.0", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(json(&out)["outcome"]["rule"], "downgrade");
    // ...but the data-directory copy goes back with the version it was taken at.
    let restore = report["rollback_command"]
        .as_str()
        .expect("a restore command for the data-directory copy")
        .to_string();
    let mut args: Vec<&str> = restore.split_whitespace().skip(1).collect();
    args.extend(["--yes", "--json"]);
    let out = env.upshift(&args);
    assert_eq!(out.status.code(), Some(0), "{restore}: {}", stderr(&out));
    assert_eq!(
        step_ids(&json(&out), "forward"),
        ["stop", "restore-store", "switch", "start", "wait-healthy"]
    );
    assert!(version(old.sql).await.starts_with("KaiwuDB V3.0.0 "));
    assert_eq!(rows(old.sql).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashing_upgrade_is_rolled_back_to_the_same_container_and_store() {
    let Some(pg) = ready() else { return };
    let env = Env::new();
    let (_, backing) = pg.fresh_db("kwb").await;
    let old = node(
        env.dir.path(),
        "3.0.0",
        &backing,
        None,
        &["KWDB_SIM_FAIL_UPGRADE_TO=3.1.0"],
        true,
    );
    let _cleanup = Containers(vec![
        old.name.clone(),
        format!("{}-upshift-previous", old.name),
        format!("{}-upshift-next", old.name),
    ]);
    upshift_sim::kwdb::seed(&wait_sql(old.sql).await, 40)
        .await
        .expect("seed");
    let before = rows(old.sql).await;
    let id = docker::inspect(&old.name)["Id"].clone();
    let marker = std::fs::read(old.store.join("KWDB_STORE")).expect("store marker");
    env.write_fleet(&instance("kw", &old, &old.store.join("extern"), None));

    let out = env.upshift(&["apply", "kw", "--to", "3.1.0", "--yes", "--json"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let report = json(&out);
    assert_eq!(report["outcome"], "rolled-back");
    assert_eq!(
        step_ids(&report, "rollback"),
        [
            "rollback-stop-app",
            "rollback-restore-files-store",
            "rollback-switch-app",
            "rollback-start-app",
            "rollback-wait-app"
        ]
    );
    assert_eq!(
        docker::inspect(&old.name)["Id"],
        id,
        "the very same container is back"
    );
    assert!(version(old.sql).await.starts_with("KaiwuDB V3.0.0 "));
    assert_eq!(
        std::fs::read(old.store.join("KWDB_STORE")).expect("marker"),
        marker
    );
    assert_eq!(rows(old.sql).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2x_instance_moves_to_3x_by_export_and_import() {
    let Some(pg) = ready() else { return };
    let env = Env::new();
    let external = env.dir.path().join("extern");
    std::fs::create_dir_all(&external).expect("extern");
    let (_, backing_old) = pg.fresh_db("kwb").await;
    let (_, backing_new) = pg.fresh_db("kwb").await;
    let old = node(
        env.dir.path(),
        "2.2.2",
        &backing_old,
        Some(&external),
        &[],
        true,
    );
    let new = node(
        env.dir.path(),
        "3.1.0",
        &backing_new,
        Some(&external),
        &[],
        false,
    );
    let _cleanup = Containers(vec![old.name.clone(), new.name.clone()]);
    upshift_sim::kwdb::seed(&wait_sql(old.sql).await, 50)
        .await
        .expect("seed");
    let before = rows(old.sql).await;
    let before_counts = counts(old.sql).await;

    // Without a new instance bound, the adapter says what it needs.
    env.write_fleet(&instance("kw", &old, &external, None));
    let out = env.upshift(&["plan", "kw", "--to", "3.1.0", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(json(&out)["outcome"]["rule"], "needs-new-instance");

    env.write_fleet(&instance("kw", &old, &external, Some(&new)));
    let out = env.upshift(&["apply", "kw", "--to", "3.1.0", "--yes", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report = json(&out);
    assert_eq!(
        step_ids(&report, "forward"),
        [
            "preflight",
            "export",
            "snapshot-export",
            "prepare-meta",
            "switch-next",
            "start-next",
            "wait-next",
            "import",
            "compare-counts",
            "cut-over"
        ]
    );
    assert!(
        report["checks"]
            .as_array()
            .expect("checks")
            .iter()
            .all(|c| c["passed"] == true),
        "{report}"
    );
    assert!(version(new.sql).await.starts_with("KaiwuDB V3.1.0 "));
    assert_eq!(counts(new.sql).await, before_counts);
    assert_eq!(
        rows(new.sql).await,
        before,
        "every row, value and timestamp"
    );
    let meta = external.join("upshift/export-1/sensors/meta.sql");
    assert!(
        !std::fs::read_to_string(&meta)
            .expect("meta.sql")
            .contains("PARTITION INTERVAL")
    );
    assert!(
        std::fs::read_to_string(meta.with_extension("sql.orig"))
            .expect("original")
            .contains("PARTITION INTERVAL")
    );
    assert_eq!(
        docker::inspect(&old.name)["State"]["Running"],
        false,
        "the old instance is stopped"
    );
    // The export is catalogued, but it is not a data-directory copy: no restore command is
    // offered, and a restore says how to use it instead.
    assert!(report["rollback_command"].is_null(), "{report}");
    let export = report["backups"][0]["id"]
        .as_str()
        .expect("export snapshot");
    let out = env.upshift(&["restore", "kw", export, "--yes", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(json(&out)["refusal"]["rule"], "restore-by-import");
    // The old instance's data is untouched: started again, it still serves 2.2.2 with every row.
    let out = Command::new("docker")
        .args(["start", &old.name])
        .output()
        .expect("docker start");
    assert!(out.status.success());
    assert!(version(old.sql).await.starts_with("KaiwuDB V2.2.2 "));
    assert_eq!(rows(old.sql).await, before);
}

#[test]
fn offline_plans_follow_the_path_table() {
    let env = Env::new();
    let plan = |from: &str, to: &str| {
        let (code, v) = env.plan_offline("kwdb", from, to);
        let ids: Vec<String> = v["outcome"]["steps"]
            .as_array()
            .map(|s| {
                s.iter()
                    .filter_map(|s| s["id"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        (code, v["outcome"]["rule"].as_str().map(str::to_string), ids)
    };
    let (code, _, ids) = plan("3.0.0", "3.2.1");
    assert_eq!(code, Some(0));
    assert!(
        ids.contains(&"snapshot-store".to_string()) && !ids.contains(&"import".to_string()),
        "{ids:?}"
    );
    let (code, _, ids) = plan("2.2.2", "3.1.0");
    assert_eq!(code, Some(0));
    assert!(
        ids.contains(&"import".to_string()) && ids.contains(&"prepare-meta".to_string()),
        "{ids:?}"
    );
    let (_, _, ids) = plan("2.2.2", "3.0.0");
    assert!(
        ids.contains(&"import".to_string()) && !ids.contains(&"prepare-meta".to_string()),
        "3.0 still accepts PARTITION INTERVAL: {ids:?}"
    );
    let (_, _, ids) = plan("2.1.0", "2.2.2");
    assert!(
        ids.contains(&"import".to_string()),
        "2.1.0 → 2.2.2 is export/import: {ids:?}"
    );
    assert_eq!(plan("3.1.0", "3.0.0").1.as_deref(), Some("downgrade"));
    assert_eq!(
        plan("3.1.0", "3.2.1-beta1").1.as_deref(),
        Some("release-to-prerelease")
    );
    assert_eq!(plan("3.2.1", "4.0.0").1.as_deref(), Some("unknown-major"));
    assert_eq!(
        plan("3.1.0", "3.1.0").1.as_deref(),
        Some("already-at-target")
    );
}
