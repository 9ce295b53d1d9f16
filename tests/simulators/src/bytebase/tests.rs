//! The simulator behaves as product-facts §1.4–§1.5 say, on a real PostgreSQL.

use std::sync::OnceLock;

use semver::Version;
use tokio_postgres::{Client, NoTls};

use super::catalog::{self, Release};
use super::migrate::migrate;
use crate::pg::{Cluster, PgError};

static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();
static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A fresh database, or `None` (printing why) when PostgreSQL is missing outside CI.
async fn fresh_db() -> Option<(Client, String)> {
    let cluster = CLUSTER.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("upshift-sim-bb-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Cluster::start(&dir).map_err(|e| e.to_string())
    });
    let cluster = match cluster {
        Ok(c) => c,
        Err(why)
            if std::env::var("CI").as_deref() != Ok("true")
                && *why == PgError::Missing.to_string() =>
        {
            eprintln!("SKIPPED: {why}");
            return None;
        }
        Err(why) => panic!("{why}"),
    };
    let name = format!(
        "sim_{}",
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    cluster.create_database(&name).expect("create database");
    let url = cluster.url(&name);
    let (client, conn) = tokio_postgres::connect(&url, NoTls).await.expect("connect");
    tokio::spawn(conn);
    Some((client, url))
}

fn release(v: &str) -> Release {
    catalog::find(v).expect("simulated release")
}

async fn versions(client: &Client, table: &str) -> Vec<String> {
    client
        .query(&format!("SELECT version FROM {table} ORDER BY id"), &[])
        .await
        .expect("history")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn fresh_installs_record_versions_in_their_era_format() {
    let Some((mut c, _)) = fresh_db().await else {
        return;
    };
    assert_eq!(
        migrate(&mut c, &release("3.14.2"), None)
            .await
            .expect("install"),
        Version::new(3, 14, 33)
    );
    assert_eq!(
        versions(&c, "instance_change_history").await,
        ["3.14.33"],
        "a fresh install records the newest file; a PATCH without new files records what 3.14.1 records"
    );

    let Some((mut c, _)) = fresh_db().await else {
        return;
    };
    migrate(&mut c, &release("2.10.0"), None)
        .await
        .expect("install");
    let v = versions(&c, "instance_change_history").await;
    assert!(v[0].starts_with("0002.0010.0004-"), "{v:?}");

    let Some((mut c, _)) = fresh_db().await else {
        return;
    };
    migrate(&mut c, &release("1.2.0"), None)
        .await
        .expect("install");
    let row = c
        .query_one(
            "SELECT version, namespace = current_database() FROM migration_history",
            &[],
        )
        .await
        .expect("1.x history");
    assert!(row.get::<_, String>(0).starts_with("0001.0002.0002-"));
    assert!(
        row.get::<_, bool>(1),
        "namespace names the metadata database"
    );
}

#[tokio::test]
async fn upgrades_apply_exactly_the_pending_migrations() {
    let Some((mut c, _)) = fresh_db().await else {
        return;
    };
    migrate(&mut c, &release("3.10.0"), None)
        .await
        .expect("install");
    assert_eq!(
        migrate(&mut c, &release("3.13.0"), None)
            .await
            .expect("upgrade"),
        Version::new(3, 13, 31)
    );
    let v = versions(&c, "instance_change_history").await;
    // 3.10.3–3.10.6, 3.11.0–3.11.17, 3.12.0–3.12.5, 3.13.0–3.13.31: one row per file.
    assert_eq!(
        (
            v.first().map(String::as_str),
            v.last().map(String::as_str),
            v.len()
        ),
        (Some("3.10.2"), Some("3.13.31"), 1 + 4 + 18 + 6 + 32),
        "{v:?}"
    );
    assert!(v.iter().any(|r| r == "3.11.17"), "{v:?}");
    let downgraded = migrate(&mut c, &release("3.10.0"), None)
        .await
        .expect("an old binary starts silently");
    assert_eq!(
        downgraded,
        Version::new(3, 13, 31),
        "nothing is undone, nothing refuses"
    );
}

#[tokio::test]
async fn a_failing_migration_leaves_earlier_files_committed() {
    let Some((mut c, _)) = fresh_db().await else {
        return;
    };
    migrate(&mut c, &release("3.5.0"), None)
        .await
        .expect("install");
    let err = migrate(&mut c, &release("3.13.0"), Some(&Version::new(3, 11, 1)))
        .await
        .expect_err("fails");
    let text = format!("{err:#}");
    assert!(
        text.contains("failed to migrate schema") && text.contains("SQLSTATE 42703"),
        "{text}"
    );
    let v = versions(&c, "instance_change_history").await;
    assert_eq!(
        (v.first().map(String::as_str), v.last().map(String::as_str)),
        (Some("3.5.15"), Some("3.11.0")),
        "every file before 3.11.1 stays applied: {v:?}"
    );
    let column: i64 = c
        .query_one("SELECT count(*) FROM information_schema.columns WHERE table_name = 'issue' AND column_name = 'task_type'", &[])
        .await
        .expect("columns")
        .get(0);
    assert_eq!(column, 0, "the failing file rolled back as a whole");
}

#[tokio::test]
async fn cross_era_rules_hold() {
    // 1.x history is copied by 2.0–2.2 ...
    let Some((mut c, _)) = fresh_db().await else {
        return;
    };
    migrate(&mut c, &release("1.2.0"), None)
        .await
        .expect("install");
    migrate(&mut c, &release("2.1.0"), None)
        .await
        .expect("2.1.0 copies 1.x history");
    let v = versions(&c, "instance_change_history").await;
    assert_eq!(
        v.len(),
        1 + 4 + 2,
        "the 1.x row, 2.0.0–2.0.3, 2.1.0–2.1.1: {v:?}"
    );
    assert!(v[6].starts_with("0002.0001.0001-"), "{v:?}");
    // ... and later releases cannot read a 1.x-only database.
    let Some((mut c, _)) = fresh_db().await else {
        return;
    };
    migrate(&mut c, &release("1.2.0"), None)
        .await
        .expect("install");
    let err = migrate(&mut c, &release("2.10.0"), None)
        .await
        .expect_err("no 1.x support");
    assert!(
        format!("{err:#}").contains("instance_change_history"),
        "{err:#}"
    );

    // Per-database history stops the 3.4.1 backfill.
    let Some((mut c, _)) = fresh_db().await else {
        return;
    };
    migrate(&mut c, &release("3.3.1"), None)
        .await
        .expect("install");
    c.execute(
        "INSERT INTO instance_change_history (database_id, version) VALUES (7, '0003.0003.0000-20240101000000')",
        &[],
    )
    .await
    .expect("row");
    let err = migrate(&mut c, &release("3.10.0"), None)
        .await
        .expect_err("refused");
    assert!(
        format!("{err:#}").contains("Must upgrade to Bytebase 3.3.1 first"),
        "{err:#}"
    );

    // Without it the backfill rewrites padded versions to plain ones.
    let Some((mut c, _)) = fresh_db().await else {
        return;
    };
    migrate(&mut c, &release("3.3.1"), None)
        .await
        .expect("install");
    migrate(&mut c, &release("3.10.0"), None)
        .await
        .expect("backfill");
    let v = versions(&c, "instance_change_history").await;
    assert_eq!(
        (v.first().map(String::as_str), v.last().map(String::as_str)),
        (Some("3.3.8"), Some("3.10.2")),
        "{v:?}"
    );
    assert!(
        v.iter().all(|r| !r.contains('-')),
        "no padded row is left: {v:?}"
    );

    // Duplicate versions break the unique index (#16723).
    let Some((mut c, _)) = fresh_db().await else {
        return;
    };
    migrate(&mut c, &release("3.3.1"), None)
        .await
        .expect("install");
    c.execute(
        "INSERT INTO instance_change_history (version) SELECT version FROM instance_change_history",
        &[],
    )
    .await
    .expect("duplicate");
    let err = migrate(&mut c, &release("3.10.0"), None)
        .await
        .expect_err("duplicates");
    assert!(format!("{err:#}").contains("SQLSTATE 23505"), "{err:#}");

    // 3.14+ cannot parse padded versions.
    let Some((mut c, _)) = fresh_db().await else {
        return;
    };
    migrate(&mut c, &release("3.3.1"), None)
        .await
        .expect("install");
    let err = migrate(&mut c, &release("3.14.0"), None)
        .await
        .expect_err("padded");
    assert!(
        format!("{err:#}").contains("invalid version \"0003.0003.0008-"),
        "{err:#}"
    );
}

#[tokio::test]
async fn the_server_answers_health_and_actuator() {
    let Some((_c, url)) = fresh_db().await else {
        return;
    };
    let port = crate::ports::free_port().expect("port");
    let opts = super::Options {
        version: "3.11.1".into(),
        port,
        store: super::Store::External(url),
        fail_migration: None,
        external_url: "http://bb.example".into(),
    };
    let server = tokio::spawn(super::run(opts));
    let mut body = String::new();
    for _ in 0..100 {
        if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            s.write_all(b"GET /v1/actuator/info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await
                .expect("write");
            s.read_to_string(&mut body).await.expect("read");
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(
        body.contains("\"version\":\"3.11.1\"") && body.contains("\"replicaCount\":1"),
        "{body}"
    );
    server.abort();
}

async fn version(c: &Client) -> String {
    c.query_one(
        "SELECT version FROM instance_change_history ORDER BY id DESC LIMIT 1",
        &[],
    )
    .await
    .expect("version")
    .get::<_, String>(0)
}

/// Serve `version` on the embedded store under `data` until the returned task is aborted (its
/// embedded server stops with it); wait until the actuator answers.
async fn serve_embedded(
    data: &std::path::Path,
    port: u16,
    version: &str,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    let opts = super::Options {
        version: version.into(),
        port,
        store: super::Store::Embedded(data.to_path_buf()),
        fail_migration: None,
        external_url: "http://bb.example".into(),
    };
    let server = tokio::spawn(super::run(opts));
    for _ in 0..600 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return server;
        }
        assert!(!server.is_finished(), "the simulator exited while starting");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the simulator did not serve within 30 s");
}

#[tokio::test]
async fn the_embedded_store_lives_under_data_and_stops_with_the_simulator() {
    if let Err(e) = crate::pg::find_bindir() {
        assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "{e}");
        eprintln!("SKIPPED: {e}");
        return;
    }
    let root = std::env::temp_dir().join(format!("upshift-sim-bb-embedded-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).expect("dir");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let data = root.join("data");
    let port = crate::ports::free_port().expect("port");
    let store = super::embedded::url(port + 2, "bb");

    let server = serve_embedded(&data, port, "3.10.0").await;
    assert_eq!(
        std::fs::read_to_string(data.join("pgdata/PG_VERSION"))
            .expect("PG_VERSION")
            .trim()
            .parse::<u32>()
            .ok(),
        crate::pg::find_bindir()
            .ok()
            .and_then(|b| b.parent()?.file_name()?.to_str()?.parse().ok()),
        "the cluster is this machine's PostgreSQL major"
    );
    let (client, conn) = tokio_postgres::connect(&store, NoTls)
        .await
        .expect("user bb, database bb, on the socket at --port + 2");
    tokio::spawn(conn);
    super::seed_user_rows(&client, 3).await.expect("seed");
    assert_eq!(version(&client).await, "3.10.2");
    drop(client);
    server.abort();
    let _ = server.await;
    assert!(
        tokio_postgres::connect(&store, NoTls).await.is_err(),
        "the embedded server stopped with the simulator"
    );
    assert!(
        !data.join("pgdata/postmaster.pid").exists(),
        "it was shut down cleanly"
    );

    // The next release migrates the same pgdata, rows kept.
    let server = serve_embedded(&data, port, "3.11.1").await;
    let (client, conn) = tokio_postgres::connect(&store, NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    assert_eq!(version(&client).await, "3.11.17");
    let projects: i64 = client
        .query_one(
            "SELECT count(*) FROM project WHERE resource_id LIKE 'project-%'",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(projects, 3);
    drop(client);
    server.abort();
    let _ = server.await;
    let _ = std::fs::remove_dir_all(&root);
}
