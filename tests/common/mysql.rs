//! A throwaway MariaDB per test binary (or the server named by `UPSHIFT_TEST_MYSQL_URL`), and a
//! fresh database per test. Missing MariaDB: said plainly, and a failure under `CI=true`.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use mysql_async::prelude::Queryable;

/// Where the tests' MariaDB is.
pub struct MySql {
    base_url: String,
    _server: Option<upshift_sim::mariadb::Server>,
}

static SERVER: OnceLock<Result<MySql, String>> = OnceLock::new();
static NEXT: AtomicU32 = AtomicU32::new(0);

/// The tests' MariaDB, or `None` (printing why) on a developer box without it.
pub fn mysql() -> Option<&'static MySql> {
    let server = SERVER.get_or_init(|| {
        if let Ok(url) = std::env::var("UPSHIFT_TEST_MYSQL_URL") {
            return Ok(MySql {
                base_url: url,
                _server: None,
            });
        }
        super::sweep_stale("mariadb");
        let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("mariadb-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        upshift_sim::mariadb::Server::start(&dir)
            .map(|s| MySql {
                base_url: s.url(""),
                _server: Some(s),
            })
            .map_err(|e| e.to_string())
    });
    match server {
        Ok(s) => Some(s),
        Err(why) => {
            let message = format!("MariaDB is needed for this test and is missing: {why}");
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{message}");
            }
            eprintln!("SKIPPED: {message}");
            None
        }
    }
}

impl MySql {
    /// A URL for database `db`.
    pub fn url(&self, db: &str) -> String {
        format!("{}{db}", self.base_url.trim_end_matches(|c| c != '/'))
    }

    /// A new database with a unique name starting with `prefix`, and its URL.
    pub async fn fresh_db(&self, prefix: &str) -> (String, String) {
        let name = format!(
            "{prefix}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut conn = self.conn("").await;
        conn.query_drop(format!("CREATE DATABASE `{name}`"))
            .await
            .expect("create database");
        let url = self.url(&name);
        (name, url)
    }

    /// A connection to database `db` ("" for none).
    pub async fn conn(&self, db: &str) -> mysql_async::Conn {
        let opts = mysql_async::Opts::from_url(&self.url(db)).expect("url");
        mysql_async::Conn::new(opts).await.expect("connect")
    }
}

/// Row count and `CHECKSUM TABLE` of each of `tables` in database `db`.
pub async fn checksums(
    conn: &mut mysql_async::Conn,
    db: &str,
    tables: &[String],
) -> std::collections::BTreeMap<String, (u64, Option<u64>)> {
    let mut out = std::collections::BTreeMap::new();
    for t in tables {
        let count: Option<u64> = conn
            .query_first(format!("SELECT COUNT(*) FROM `{db}`.`{t}`"))
            .await
            .unwrap_or_else(|e| panic!("count {t}: {e}"));
        let sum: Option<(String, Option<u64>)> = conn
            .query_first(format!("CHECKSUM TABLE `{db}`.`{t}`"))
            .await
            .unwrap_or_else(|e| panic!("checksum {t}: {e}"));
        out.insert(t.clone(), (count.unwrap_or(0), sum.and_then(|s| s.1)));
    }
    out
}

/// The base tables of database `db`.
pub async fn tables(conn: &mut mysql_async::Conn, db: &str) -> Vec<String> {
    conn.exec(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = ? AND table_type = 'BASE TABLE' ORDER BY 1",
        (db,),
    )
    .await
    .expect("list tables")
}
