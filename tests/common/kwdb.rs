//! KWDB test infrastructure: nodes of the KWDB simulator in containers started like the docs'
//! `docker run` (host networking, loopback only), fleet bindings for them, and readers of their
//! seeded rows.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use super::docker::{self, KWDB_SIM_REPO};
use super::free_port;

static NEXT: AtomicU32 = AtomicU32::new(0);

pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// One simulated KWDB node in a container, started like the docs' `docker run`.
pub struct Node {
    pub name: String,
    pub sql: u16,
    pub http: u16,
    pub store: PathBuf,
}

/// `docker run` (or `docker create`, when `start` is false) of a node, the docs' parameters
/// kept (host networking and loopback addresses only).
pub fn node(
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

pub fn url(port: u16) -> String {
    format!("postgres://root@127.0.0.1:{port}/defaultdb")
}

pub async fn wait_sql(port: u16) -> tokio_postgres::Client {
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

pub async fn version(port: u16) -> String {
    let client = wait_sql(port).await;
    client
        .query_one("SELECT version()", &[])
        .await
        .expect("version()")
        .get(0)
}

/// Row counts of the seeded tables.
pub async fn counts(port: u16) -> Vec<i64> {
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
pub async fn rows(port: u16) -> Vec<String> {
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

pub fn instance(name: &str, node: &Node, external: &Path, next: Option<&Node>) -> String {
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

pub fn ready() -> Option<&'static super::Pg> {
    let pg = super::pg()?;
    if !docker::available() {
        return None;
    }
    docker::kwdb_images(&["2.2.2", "3.0.0", "3.1.0"]);
    Some(pg)
}
