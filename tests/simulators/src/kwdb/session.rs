//! A SQL session: its backing connection, current database, and the statements the simulator
//! implements itself (databases, users, grants, cluster settings, jobs, `kwdb_internal`).

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context;

use super::Shared;
use super::statements::{self, ColType, Stmt, qi, ql};

/// An error with a SQLSTATE, as KWDB would answer it.
#[derive(Debug)]
pub struct SqlError {
    /// SQLSTATE.
    pub code: &'static str,
    /// The message.
    pub message: String,
}

impl std::fmt::Display for SqlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SqlError {}

/// An `anyhow::Error` carrying a SQLSTATE.
pub fn sql_err(code: &'static str, message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(SqlError {
        code,
        message: message.into(),
    })
}

/// A result value of an implemented statement.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    Null,
    Text(String),
    Int(i64),
    Float(f64),
}

/// What an implemented statement answers.
#[derive(Debug)]
pub enum Output {
    /// Rows with their columns.
    Rows {
        cols: Vec<(String, ColType)>,
        rows: Vec<Vec<Val>>,
    },
    /// A command tag (and a row count).
    Tag(String, Option<usize>),
}

/// A session.
pub struct Session {
    /// The backing connection (search_path = the current database).
    pub client: tokio_postgres::Client,
    /// The current KWDB database.
    pub db: String,
    /// The user that connected.
    pub user: String,
    /// Prepared backing statements by SQL text.
    pub prepared: HashMap<String, tokio_postgres::Statement>,
    /// What the servers share.
    pub shared: Arc<Shared>,
}

/// The backing `search_path` of a session in KWDB database `db`: the database, then the
/// simulator's functions (`version()`, `current_database()`) ahead of PostgreSQL's own.
pub fn search_path(db: &str) -> String {
    format!("{}, kwdb_sim_fn, pg_catalog", qi(db))
}

/// Create the simulator's catalog in schema `kwdb_sim` (idempotent), and in schema
/// `kwdb_sim_fn` the functions that answer as KWDB inside passed-through statements.
pub async fn init_catalog(
    client: &tokio_postgres::Client,
    release: &super::catalog::Release,
) -> anyhow::Result<()> {
    client
        .batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS kwdb_sim_fn;
             CREATE OR REPLACE FUNCTION kwdb_sim_fn.version() RETURNS text LANGUAGE sql IMMUTABLE AS $kwdb$SELECT {}::text$kwdb$;
             CREATE OR REPLACE FUNCTION kwdb_sim_fn.current_database() RETURNS name LANGUAGE sql STABLE AS $kwdb$SELECT current_schema()$kwdb$;",
            ql(&release.short_info())
        ))
        .await
        .context("cannot create the simulator functions (schema kwdb_sim_fn) in the backing database")?;
    client
        .batch_execute(
            "CREATE SCHEMA IF NOT EXISTS kwdb_sim;
             CREATE TABLE IF NOT EXISTS kwdb_sim.databases (name text PRIMARY KEY, kind text NOT NULL, partition_interval text, comment text);
             CREATE TABLE IF NOT EXISTS kwdb_sim.tables (db text NOT NULL, name text NOT NULL, create_sql text NOT NULL, PRIMARY KEY (db, name));
             CREATE TABLE IF NOT EXISTS kwdb_sim.users (name text PRIMARY KEY, password_hash text);
             CREATE TABLE IF NOT EXISTS kwdb_sim.grants (kind text NOT NULL, object text NOT NULL, grantee text NOT NULL, privileges text NOT NULL, PRIMARY KEY (kind, object, grantee));
             CREATE TABLE IF NOT EXISTS kwdb_sim.settings (name text PRIMARY KEY, value text NOT NULL);
             CREATE TABLE IF NOT EXISTS kwdb_sim.jobs (id bigserial PRIMARY KEY, job_type text NOT NULL, description text NOT NULL, user_name text NOT NULL, status text NOT NULL, created timestamptz NOT NULL DEFAULT now(), finished timestamptz, fraction_completed float8 NOT NULL DEFAULT 0, error text NOT NULL DEFAULT '');
             INSERT INTO kwdb_sim.users VALUES ('root', NULL) ON CONFLICT DO NOTHING;
             INSERT INTO kwdb_sim.databases VALUES ('defaultdb', 'relational', NULL, NULL) ON CONFLICT DO NOTHING;
             CREATE SCHEMA IF NOT EXISTS defaultdb;",
        )
        .await
        .context("cannot create the simulator catalog (schema kwdb_sim) in the backing database")
}

/// Names no KWDB database may take here (they are the backing database's own schemas).
const RESERVED: &[&str] = &[
    "kwdb_sim",
    "kwdb_sim_fn",
    "public",
    "pg_catalog",
    "information_schema",
    "system",
];

fn hash_password(p: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(p.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Session {
    /// Connect to the backing database and select `db` (falls back to `defaultdb`).
    pub async fn connect(shared: Arc<Shared>, user: &str, db: &str) -> anyhow::Result<Session> {
        let (client, conn) = tokio_postgres::connect(&shared.backing_url, tokio_postgres::NoTls)
            .await
            .context("cannot connect to the backing database")?;
        tokio::spawn(conn);
        let mut s = Session {
            client,
            db: String::new(),
            user: user.to_string(),
            prepared: HashMap::new(),
            shared,
        };
        let db = if s.database(db).await?.is_some() {
            db
        } else {
            "defaultdb"
        };
        s.use_db(db).await?;
        Ok(s)
    }

    /// `(kind, partition_interval, comment)` of a database.
    pub async fn database(
        &self,
        name: &str,
    ) -> anyhow::Result<Option<(String, Option<String>, Option<String>)>> {
        let row = self
            .client
            .query_opt(
                "SELECT kind, partition_interval, comment FROM kwdb_sim.databases WHERE name = $1",
                &[&name],
            )
            .await?;
        Ok(row.map(|r| (r.get(0), r.get(1), r.get(2))))
    }

    async fn must_database(
        &self,
        name: &str,
    ) -> anyhow::Result<(String, Option<String>, Option<String>)> {
        self.database(name)
            .await?
            .ok_or_else(|| sql_err("3D000", format!("database \"{name}\" does not exist")))
    }

    async fn use_db(&mut self, name: &str) -> anyhow::Result<()> {
        self.must_database(name).await?;
        self.client
            .batch_execute(&format!("SET search_path TO {}", search_path(name)))
            .await?;
        self.db = name.to_string();
        Ok(())
    }

    /// Create a database (schema + catalog row), honouring the release's partition-interval rules.
    pub async fn create_database(
        &self,
        name: &str,
        ts: bool,
        interval: Option<&str>,
        if_not_exists: bool,
    ) -> anyhow::Result<()> {
        let release = self.shared.release;
        if RESERVED.contains(&name) {
            return Err(sql_err(
                "42939",
                format!("database name \"{name}\" is reserved"),
            ));
        }
        if let Some(i) = interval {
            if !ts {
                return Err(sql_err(
                    "42601",
                    "PARTITION INTERVAL applies to time-series databases only (CREATE TS DATABASE)",
                ));
            }
            if release.refuses_partition_interval() {
                return Err(sql_err(
                    "0A000",
                    format!(
                        "PARTITION INTERVAL is deprecated and no longer supported for time-series databases in KaiwuDB {} (since V3.1.0): remove \"PARTITION INTERVAL {i}\"",
                        release.tag()
                    ),
                ));
            }
        }
        if self.database(name).await?.is_some() {
            if if_not_exists {
                return Ok(());
            }
            return Err(sql_err(
                "42P04",
                format!("database \"{name}\" already exists"),
            ));
        }
        let interval = if ts && release.keeps_partition_interval() {
            Some(interval.unwrap_or("10d").to_string())
        } else {
            if interval.is_some() {
                super::log(
                    'W',
                    &format!(
                        "PARTITION INTERVAL on {name} ignored: KaiwuDB {} has no custom partition interval",
                        release.tag()
                    ),
                );
            }
            None
        };
        self.client
            .batch_execute(&format!("CREATE SCHEMA {}", qi(name)))
            .await?;
        self.client
            .execute(
                "INSERT INTO kwdb_sim.databases (name, kind, partition_interval) VALUES ($1, $2, $3)",
                &[&name, &(if ts { "ts" } else { "relational" }), &interval],
            )
            .await?;
        Ok(())
    }

    /// Run a KWDB `CREATE TABLE` into `default_db` (or the database it names).
    pub async fn create_table(&self, sql: &str, default_db: &str) -> anyhow::Result<String> {
        let t = statements::parse_create_table(sql, default_db)
            .map_err(|e| sql_err("42601", format!("{e:#}")))?;
        self.must_database(&t.db).await?;
        self.client.batch_execute(&t.pg_sql).await?;
        self.client
            .execute(
                "INSERT INTO kwdb_sim.tables (db, name, create_sql) VALUES ($1, $2, $3)
                 ON CONFLICT (db, name) DO UPDATE SET create_sql = EXCLUDED.create_sql",
                &[&t.db, &t.table, &t.kwdb_sql],
            )
            .await?;
        Ok(t.table)
    }

    /// Record a grant.
    pub async fn grant(
        &self,
        kind: &str,
        objects: &[String],
        grantees: &[String],
        privileges: &str,
        check_users: bool,
    ) -> anyhow::Result<()> {
        for o in objects {
            let object = if kind == "DATABASE" {
                self.must_database(o).await?;
                o.clone()
            } else if o.contains('.') {
                o.clone()
            } else {
                format!("{}.{o}", self.db)
            };
            for g in grantees {
                if check_users
                    && self
                        .client
                        .query_opt("SELECT 1 FROM kwdb_sim.users WHERE name = $1", &[g])
                        .await?
                        .is_none()
                {
                    return Err(sql_err("42704", format!("user or role {g} does not exist")));
                }
                self.client
                    .execute(
                        "INSERT INTO kwdb_sim.grants (kind, object, grantee, privileges) VALUES ($1, $2, $3, $4)
                         ON CONFLICT (kind, object, grantee) DO UPDATE SET privileges = EXCLUDED.privileges",
                        &[&kind, &object, g, &privileges],
                    )
                    .await?;
            }
        }
        Ok(())
    }

    /// Create a user; `Ok(false)` when it existed and `if_not_exists`.
    pub async fn create_user(
        &self,
        name: &str,
        password: Option<&str>,
        if_not_exists: bool,
    ) -> anyhow::Result<bool> {
        let n = self
            .client
            .execute(
                "INSERT INTO kwdb_sim.users (name, password_hash) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&name, &password.map(hash_password)],
            )
            .await?;
        if n == 0 && !if_not_exists {
            return Err(sql_err(
                "42710",
                format!("a user or role named {name} already exists"),
            ));
        }
        Ok(n == 1)
    }

    /// Set a cluster setting.
    pub async fn set_setting(&self, name: &str, value: &str) -> anyhow::Result<()> {
        if name == "version" {
            return Err(sql_err(
                "0A000",
                "the cluster version is managed by the simulator",
            ));
        }
        self.client
            .execute(
                "INSERT INTO kwdb_sim.settings VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
                &[&name, &value],
            )
            .await?;
        Ok(())
    }

    /// Record a job; returns its id.
    pub async fn record_job(
        &self,
        job_type: &str,
        description: &str,
        status: &str,
        error: &str,
    ) -> anyhow::Result<i64> {
        let row = self
            .client
            .query_one(
                "INSERT INTO kwdb_sim.jobs (job_type, description, user_name, status, finished, fraction_completed, error)
                 VALUES ($1, $2, $3, $4, now(), $5, $6) RETURNING id",
                &[
                    &job_type,
                    &description,
                    &self.user,
                    &status,
                    &(if status == "succeeded" { 1.0f64 } else { 0.0f64 }),
                    &error,
                ],
            )
            .await?;
        Ok(row.get(0))
    }

    fn default_setting(&self, name: &str) -> Option<String> {
        let r = self.shared.release;
        Some(
            match name {
                "version" => "20.1-3",
                "ts.raft_log.sync_period" => r.default_raft_sync_period(),
                "ts.wal.wal_level" => "2",
                "ts.wal.checkpoint_interval" => "1m",
                "server.time_until_store_dead" => "5m0s",
                "sql.defaults.distsql" => "auto",
                _ => return None,
            }
            .to_string(),
        )
    }

    /// Run a statement the simulator implements (not `Passthrough`/`Begin`/`End`).
    pub async fn execute(&mut self, sql: &str, stmt: &Stmt) -> anyhow::Result<Output> {
        let rows = |stmt: &Stmt, rows: Vec<Vec<Val>>| Output::Rows {
            cols: stmt.columns().unwrap_or_default(),
            rows,
        };
        match stmt {
            Stmt::Version => Ok(rows(
                stmt,
                vec![vec![Val::Text(self.shared.release.short_info())]],
            )),
            Stmt::CreateDatabase {
                name,
                ts,
                interval,
                if_not_exists,
            } => {
                self.create_database(name, *ts, interval.as_deref(), *if_not_exists)
                    .await?;
                Ok(Output::Tag("CREATE DATABASE".into(), None))
            }
            Stmt::DropDatabase {
                name,
                if_exists,
                restrict,
            } => {
                if self.database(name).await?.is_none() {
                    if *if_exists {
                        return Ok(Output::Tag("DROP DATABASE".into(), None));
                    }
                    return Err(sql_err(
                        "3D000",
                        format!("database \"{name}\" does not exist"),
                    ));
                }
                if name == "defaultdb" {
                    return Err(sql_err("42939", "cannot drop the default database"));
                }
                if *restrict {
                    let n: i64 = self
                        .client
                        .query_one(
                            "SELECT count(*) FROM information_schema.tables WHERE table_schema = $1",
                            &[name],
                        )
                        .await?
                        .get(0);
                    if n > 0 {
                        return Err(sql_err(
                            "2BP01",
                            format!("database \"{name}\" is not empty and RESTRICT was specified"),
                        ));
                    }
                }
                self.client
                    .batch_execute(&format!("DROP SCHEMA {} CASCADE", qi(name)))
                    .await?;
                self.client
                    .execute("DELETE FROM kwdb_sim.databases WHERE name = $1", &[name])
                    .await?;
                self.client
                    .execute("DELETE FROM kwdb_sim.tables WHERE db = $1", &[name])
                    .await?;
                self.client
                    .execute(
                        "DELETE FROM kwdb_sim.grants WHERE (kind = 'DATABASE' AND object = $1) OR (kind = 'TABLE' AND object LIKE $1 || '.%')",
                        &[name],
                    )
                    .await?;
                Ok(Output::Tag("DROP DATABASE".into(), None))
            }
            Stmt::Use(name) => {
                self.use_db(name).await?;
                Ok(Output::Tag("SET".into(), None))
            }
            Stmt::ShowDatabases => {
                let mut out = Vec::new();
                for r in self
                    .client
                    .query(
                        "SELECT name, kind FROM kwdb_sim.databases ORDER BY name",
                        &[],
                    )
                    .await?
                {
                    let kind: String = r.get(1);
                    out.push(vec![
                        Val::Text(r.get(0)),
                        Val::Text(
                            if kind == "ts" {
                                "TIME SERIES"
                            } else {
                                "RELATIONAL"
                            }
                            .into(),
                        ),
                    ]);
                }
                out.push(vec![
                    Val::Text("system".into()),
                    Val::Text("RELATIONAL".into()),
                ]);
                out.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
                Ok(rows(stmt, out))
            }
            Stmt::CreateUser {
                name,
                password,
                if_not_exists,
            } => {
                self.create_user(name, password.as_deref(), *if_not_exists)
                    .await?;
                Ok(Output::Tag("CREATE USER".into(), None))
            }
            Stmt::Grant {
                privileges,
                kind,
                objects,
                grantees,
            } => {
                self.grant(kind, objects, grantees, privileges, true)
                    .await?;
                Ok(Output::Tag("GRANT".into(), None))
            }
            Stmt::CommentDatabase { name, comment } => {
                self.must_database(name).await?;
                self.client
                    .execute(
                        "UPDATE kwdb_sim.databases SET comment = $2 WHERE name = $1",
                        &[name, comment],
                    )
                    .await?;
                Ok(Output::Tag("COMMENT ON DATABASE".into(), None))
            }
            Stmt::SetClusterSetting { name, value } => {
                self.set_setting(name, value).await?;
                Ok(Output::Tag("SET CLUSTER SETTING".into(), None))
            }
            Stmt::ShowClusterSetting(name) => {
                let stored: Option<String> = self
                    .client
                    .query_opt(
                        "SELECT value FROM kwdb_sim.settings WHERE name = $1",
                        &[name],
                    )
                    .await?
                    .map(|r| r.get(0));
                let value = stored
                    .or_else(|| self.default_setting(name))
                    .ok_or_else(|| sql_err("42704", format!("unknown setting: \"{name}\"")))?;
                Ok(rows(stmt, vec![vec![Val::Text(value)]]))
            }
            Stmt::ShowJobs => {
                let mut out = Vec::new();
                for r in self
                    .client
                    .query(
                        "SELECT id, job_type, description, user_name, status, created::text, finished::text, fraction_completed, error FROM kwdb_sim.jobs ORDER BY id",
                        &[],
                    )
                    .await?
                {
                    let opt = |i: usize| {
                        r.get::<_, Option<String>>(i)
                            .map(Val::Text)
                            .unwrap_or(Val::Null)
                    };
                    out.push(vec![
                        Val::Int(r.get(0)),
                        opt(1),
                        opt(2),
                        opt(3),
                        opt(4),
                        opt(5),
                        opt(6),
                        Val::Float(r.get(7)),
                        opt(8),
                    ]);
                }
                Ok(rows(stmt, out))
            }
            Stmt::ShowTables(from) => {
                let db = from.clone().unwrap_or_else(|| self.db.clone());
                let (kind, _, _) = self.must_database(&db).await?;
                let table_type = if kind == "ts" {
                    "TIME SERIES TABLE"
                } else {
                    "BASE TABLE"
                };
                let out = self
                    .client
                    .query(
                        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1 AND table_type = 'BASE TABLE' ORDER BY 1",
                        &[&db],
                    )
                    .await?
                    .iter()
                    .map(|r| vec![Val::Text(r.get(0)), Val::Text(table_type.into())])
                    .collect();
                Ok(rows(stmt, out))
            }
            Stmt::ShowUsers => {
                let out = self
                    .client
                    .query("SELECT name FROM kwdb_sim.users ORDER BY name", &[])
                    .await?
                    .iter()
                    .map(|r| {
                        vec![
                            Val::Text(r.get(0)),
                            Val::Text(String::new()),
                            Val::Text("{}".into()),
                        ]
                    })
                    .collect();
                Ok(rows(stmt, out))
            }
            Stmt::KvStoreStatus { sums: true } => {
                let (unavailable, under) = self.shared.ranges;
                Ok(rows(
                    stmt,
                    vec![vec![Val::Int(unavailable), Val::Int(under)]],
                ))
            }
            Stmt::KvStoreStatus { sums: false } => {
                let (unavailable, under) = self.shared.ranges;
                Ok(rows(
                    stmt,
                    vec![vec![
                        Val::Int(1),
                        Val::Int(1),
                        Val::Text(format!(
                            r#"{{"ranges": 20, "ranges.unavailable": {unavailable}, "ranges.underreplicated": {under}}}"#
                        )),
                    ]],
                ))
            }
            Stmt::Ranges => {
                let mut out = vec![
                    vec![
                        Val::Int(1),
                        Val::Text("/Min".into()),
                        Val::Text("/System/NodeLiveness".into()),
                        Val::Text("system".into()),
                        Val::Text("".into()),
                        Val::Text("{1}".into()),
                        Val::Int(1),
                        Val::Int(8192),
                    ],
                    vec![
                        Val::Int(2),
                        Val::Text("/System/NodeLiveness".into()),
                        Val::Text("/Table/SystemConfigSpan/Start".into()),
                        Val::Text("system".into()),
                        Val::Text("".into()),
                        Val::Text("{1}".into()),
                        Val::Int(1),
                        Val::Int(4096),
                    ],
                ];
                for (i, r) in self
                    .client
                    .query(
                        "SELECT t.db, t.name FROM kwdb_sim.tables t JOIN information_schema.tables i ON i.table_schema = t.db AND i.table_name = t.name ORDER BY t.db, t.name",
                        &[],
                    )
                    .await?
                    .into_iter()
                    .enumerate()
                {
                    let id = 78 + i as i64;
                    out.push(vec![
                        Val::Int(out.len() as i64 + 1),
                        Val::Text(format!("/Table/{id}")),
                        Val::Text(format!("/Table/{}", id + 1)),
                        Val::Text(r.get(0)),
                        Val::Text(r.get(1)),
                        Val::Text("{1}".into()),
                        Val::Int(1),
                        Val::Int(65536),
                    ]);
                }
                Ok(rows(stmt, out))
            }
            Stmt::CreateTable => {
                let db = self.db.clone();
                self.create_table(sql, &db).await?;
                Ok(Output::Tag("CREATE TABLE".into(), None))
            }
            Stmt::ExportDatabase { path, db, options } => {
                super::export::export_database(self, path, db, options).await
            }
            Stmt::ExportUsers(path) => super::export::export_users(self, path).await,
            Stmt::ExportSettings(path) => super::export::export_settings(self, path).await,
            Stmt::ImportDatabase { path, options } => {
                super::export::import_database(self, sql, path, options).await
            }
            Stmt::ImportUsers(path) => super::export::import_users(self, sql, path).await,
            Stmt::ImportSettings(path) => super::export::import_settings(self, sql, path).await,
            Stmt::Unsupported(why) => Err(sql_err("0A000", why.clone())),
            Stmt::Begin | Stmt::End | Stmt::Passthrough => Err(sql_err(
                "XX000",
                "internal: statement is not implemented by the simulator",
            )),
        }
    }
}

/// Quote for KWDB output.
pub fn literal(s: &str) -> String {
    ql(s)
}
