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

    /// The URL of `user` (no password: the server listens on loopback only) for database `db`.
    pub fn url_as(&self, user: &str, db: &str) -> String {
        let url = self.url(db);
        match url.split_once('@') {
            Some((_, server)) => format!("mysql://{user}@{server}"),
            None => url,
        }
    }

    /// A new database with a unique name starting with `prefix`, and the URL of a
    /// least-privilege account of the same name that the product and a binding granted `read`,
    /// `backup` and `restore` (or `ddl`) share: [`restore_grants`].
    pub async fn fresh_db(&self, prefix: &str) -> (String, String) {
        let name = self.fresh_name(prefix);
        let mut conn = self.conn("").await;
        conn.query_drop(format!("CREATE DATABASE `{name}`"))
            .await
            .expect("create database");
        let url = self.account(&name, &name, &restore_grants(&name)).await;
        (name, url)
    }

    /// A unique name starting with `prefix`.
    pub fn fresh_name(&self, prefix: &str) -> String {
        format!(
            "{prefix}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Create account `user`@`%` (no password), run each of `grants` (`GRANT … ON …`
    /// without the `TO` clause) for it; its URL for database `db`.
    pub async fn account(&self, user: &str, db: &str, grants: &[String]) -> String {
        let mut conn = self.conn("").await;
        conn.query_drop(format!("CREATE USER '{user}'@'%'"))
            .await
            .unwrap_or_else(|e| panic!("create user {user}: {e}"));
        for grant in grants {
            conn.query_drop(format!("{grant} TO '{user}'@'%'"))
                .await
                .unwrap_or_else(|e| panic!("{grant}: {e}"));
        }
        self.url_as(user, db)
    }

    /// A connection to database `db` ("" for none).
    pub async fn conn(&self, db: &str) -> mysql_async::Conn {
        let opts = mysql_async::Opts::from_url(&self.url(db)).expect("url");
        mysql_async::Conn::new(opts).await.expect("connect")
    }
}

/// `name` escaped for a database-level grant (`_` and `%` are wildcards there).
pub fn escaped(name: &str) -> String {
    name.replace('_', "\\_").replace('%', "\\%")
}

/// What a binding granted only `read` needs: reads of its schema.
pub fn read_grants(db: &str) -> Vec<String> {
    vec![format!("GRANT SELECT, SHOW VIEW ON `{}`.*", escaped(db))]
}

/// What a binding granted `write` and `ddl` needs on its schema.
pub fn schema_grants(db: &str) -> Vec<String> {
    vec![format!(
        "GRANT SELECT, SHOW VIEW, INSERT, UPDATE, DELETE, LOCK TABLES, CREATE TEMPORARY TABLES, CREATE, DROP, ALTER, INDEX, REFERENCES, CREATE VIEW ON `{}`.*",
        escaped(db)
    )]
}

/// What a binding granted `backup` and `restore` needs (docs/least-privilege.md): its schema,
/// and the databases a restore creates beside it.
pub fn restore_grants(db: &str) -> Vec<String> {
    let mut grants = schema_grants(db);
    for sibling in [
        format!("{}\\_restoring\\_%", escaped(db)),
        format!("{}\\_pre\\_restore\\_%", escaped(db)),
        "upshift\\_verify\\_%".to_string(),
    ] {
        grants.push(format!(
            "GRANT SELECT, SHOW VIEW, INSERT, UPDATE, DELETE, LOCK TABLES, CREATE, DROP, ALTER, INDEX, REFERENCES, CREATE VIEW ON `{sibling}`.*"
        ));
    }
    grants
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
