//! The metadata database behind one small enum: PostgreSQL (`tokio_postgres`) or MySQL/MariaDB
//! (`mysql_async`), configured from the environment variables the Compose file passes
//! (product-facts §3.3). Every query is plain text with literals quoted by [`Store::lit`], and
//! every result comes back as text, so the migration code is the same for both engines.

use anyhow::{Context, anyhow, bail};
use mysql_async::prelude::Queryable;

/// The database engine (`DB_SCHEME`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// `DB_SCHEME=mysql` (MySQL 8 / MariaDB).
    MySql,
    /// `DB_SCHEME=postgresql`.
    Postgres,
}

/// Connection settings, as OpenMetadata's `openmetadata.yaml` reads them from the environment.
#[derive(Debug, Clone)]
pub struct DbConfig {
    /// `DB_SCHEME`.
    pub engine: Engine,
    /// `DB_HOST`.
    pub host: String,
    /// `DB_PORT`.
    pub port: u16,
    /// `DB_USER`.
    pub user: String,
    /// `DB_USER_PASSWORD` (may be empty).
    pub password: String,
    /// `OM_DATABASE` (default `openmetadata_db`).
    pub database: String,
    /// `DB_PARAMS` (JDBC query parameters; parsed, then ignored).
    pub params: Vec<(String, String)>,
    /// `FERNET_KEY`.
    pub fernet_key: String,
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl DbConfig {
    /// Read `DB_SCHEME`, `DB_HOST`, `DB_PORT`, `DB_USER`, `DB_USER_PASSWORD`, `OM_DATABASE`,
    /// `DB_PARAMS` and `FERNET_KEY`. Missing or malformed settings are an error naming them.
    pub fn from_env() -> anyhow::Result<DbConfig> {
        let scheme = var("DB_SCHEME")
            .ok_or_else(|| anyhow!("DB_SCHEME is not set (expected `mysql` or `postgresql`)"))?;
        let engine = match scheme.trim() {
            "mysql" => Engine::MySql,
            "postgresql" => Engine::Postgres,
            other => bail!("DB_SCHEME={other} is not supported (expected `mysql` or `postgresql`)"),
        };
        let host = var("DB_HOST").ok_or_else(|| anyhow!("DB_HOST is not set"))?;
        let port_text = var("DB_PORT").ok_or_else(|| anyhow!("DB_PORT is not set"))?;
        let port = port_text
            .trim()
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| anyhow!("DB_PORT={port_text} is not a port number"))?;
        let user = var("DB_USER").ok_or_else(|| anyhow!("DB_USER is not set"))?;
        let password = std::env::var("DB_USER_PASSWORD").unwrap_or_default();
        let database = var("OM_DATABASE").unwrap_or_else(|| "openmetadata_db".to_string());
        let mut params = Vec::new();
        if let Some(p) = var("DB_PARAMS") {
            for piece in p
                .trim_start_matches('?')
                .split('&')
                .filter(|s| !s.is_empty())
            {
                let (k, v) = piece.split_once('=').ok_or_else(|| {
                    anyhow!("DB_PARAMS={p} is malformed: `{piece}` is not key=value")
                })?;
                params.push((k.to_string(), v.to_string()));
            }
        }
        let fernet_key = var("FERNET_KEY").ok_or_else(|| {
            anyhow!("FERNET_KEY is not set (OpenMetadata encrypts secrets with it)")
        })?;
        Ok(DbConfig {
            engine,
            host,
            port,
            user,
            password,
            database,
            params,
            fernet_key,
        })
    }
}

/// An open connection to the metadata database.
pub enum Store {
    /// PostgreSQL.
    Pg(tokio_postgres::Client),
    /// MySQL / MariaDB.
    My(mysql_async::Conn),
}

/// A text row (`None` = NULL).
pub type Row = Vec<Option<String>>;

fn my_text(v: &mysql_async::Value) -> Option<String> {
    use mysql_async::Value;
    match v {
        Value::NULL => None,
        Value::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::Int(i) => Some(i.to_string()),
        Value::UInt(u) => Some(u.to_string()),
        Value::Float(f) => Some(f.to_string()),
        Value::Double(d) => Some(d.to_string()),
        other => Some(format!("{other:?}")),
    }
}

impl Store {
    /// Connect (retrying for two seconds while the server comes up).
    pub async fn connect(cfg: &DbConfig) -> anyhow::Result<Store> {
        let mut last = String::new();
        for _ in 0..20 {
            match Self::try_connect(cfg).await {
                Ok(s) => return Ok(s),
                Err(e) => last = format!("{e:#}"),
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        bail!(
            "cannot connect to the {} database {} on {}:{} as {}: {last}",
            match cfg.engine {
                Engine::MySql => "MySQL",
                Engine::Postgres => "PostgreSQL",
            },
            cfg.database,
            cfg.host,
            cfg.port,
            cfg.user
        )
    }

    async fn try_connect(cfg: &DbConfig) -> anyhow::Result<Store> {
        match cfg.engine {
            Engine::Postgres => {
                let mut c = tokio_postgres::Config::new();
                c.host(&cfg.host)
                    .port(cfg.port)
                    .user(&cfg.user)
                    .dbname(&cfg.database)
                    .connect_timeout(std::time::Duration::from_secs(5));
                if !cfg.password.is_empty() {
                    c.password(&cfg.password);
                }
                let (client, connection) = c.connect(tokio_postgres::NoTls).await?;
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                Ok(Store::Pg(client))
            }
            Engine::MySql => {
                let opts = mysql_async::OptsBuilder::default()
                    .ip_or_hostname(cfg.host.clone())
                    .tcp_port(cfg.port)
                    .user(Some(cfg.user.clone()))
                    .pass((!cfg.password.is_empty()).then(|| cfg.password.clone()))
                    .db_name(Some(cfg.database.clone()));
                Ok(Store::My(mysql_async::Conn::new(opts).await?))
            }
        }
    }

    /// Which engine.
    pub fn engine(&self) -> Engine {
        match self {
            Store::Pg(_) => Engine::Postgres,
            Store::My(_) => Engine::MySql,
        }
    }

    /// A string literal for this engine (MySQL also escapes backslashes).
    pub fn lit(&self, s: &str) -> String {
        lit(self.engine(), s)
    }

    /// Run one statement.
    pub async fn exec(&mut self, sql: &str) -> anyhow::Result<()> {
        match self {
            Store::Pg(c) => c.batch_execute(sql).await.map_err(|e| {
                let detail = e
                    .as_db_error()
                    .map(|d| format!("{} (SQLSTATE {})", d.message(), d.code().code()))
                    .unwrap_or_else(|| e.to_string());
                anyhow!("{detail}")
            }),
            Store::My(c) => c.query_drop(sql).await.map_err(|e| anyhow!("{e}")),
        }
        .with_context(|| format!("statement failed: {sql}"))
    }

    /// Run a query; every value as text.
    pub async fn rows(&mut self, sql: &str) -> anyhow::Result<Vec<Row>> {
        match self {
            Store::Pg(c) => {
                let msgs = c
                    .simple_query(sql)
                    .await
                    .with_context(|| format!("query failed: {sql}"))?;
                Ok(msgs
                    .iter()
                    .filter_map(|m| match m {
                        tokio_postgres::SimpleQueryMessage::Row(r) => {
                            Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
                        }
                        _ => None,
                    })
                    .collect())
            }
            Store::My(c) => {
                let rows: Vec<mysql_async::Row> = c
                    .query(sql)
                    .await
                    .with_context(|| format!("query failed: {sql}"))?;
                Ok(rows
                    .iter()
                    .map(|r| {
                        (0..r.len())
                            .map(|i| r.as_ref(i).and_then(my_text))
                            .collect()
                    })
                    .collect())
            }
        }
    }

    /// The first column of the first row.
    pub async fn scalar(&mut self, sql: &str) -> anyhow::Result<Option<String>> {
        Ok(self
            .rows(sql)
            .await?
            .into_iter()
            .next()
            .and_then(|r| r.into_iter().next().flatten()))
    }

    /// A `COUNT(*)`-style number.
    pub async fn count(&mut self, sql: &str) -> anyhow::Result<i64> {
        let v = self.scalar(sql).await?.unwrap_or_default();
        v.trim()
            .parse()
            .map_err(|_| anyhow!("`{sql}` returned `{v}`, not a number"))
    }

    /// How a table created with this (unquoted) name is stored: as is on MySQL, folded to lower
    /// case on PostgreSQL — except `DATABASE_CHANGE_LOG`, which Flyway quotes.
    pub fn stored_name(&self, table: &str) -> String {
        match self.engine() {
            Engine::MySql => table.to_string(),
            Engine::Postgres if table == "DATABASE_CHANGE_LOG" => table.to_string(),
            Engine::Postgres => table.to_lowercase(),
        }
    }

    /// How to refer to that table in SQL.
    pub fn table_ref(&self, table: &str) -> String {
        match self.engine() {
            Engine::Postgres if table == "DATABASE_CHANGE_LOG" => "\"DATABASE_CHANGE_LOG\"".into(),
            _ => table.to_string(),
        }
    }

    fn schema_expr(&self) -> &'static str {
        match self.engine() {
            Engine::MySql => "DATABASE()",
            Engine::Postgres => "current_schema()",
        }
    }

    /// Does the table exist?
    pub async fn table_exists(&mut self, table: &str) -> anyhow::Result<bool> {
        let sql = format!(
            "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = {} AND table_name = {}",
            self.schema_expr(),
            self.lit(&self.stored_name(table))
        );
        Ok(self.count(&sql).await? > 0)
    }

    /// Does the table have that column?
    pub async fn column_exists(&mut self, table: &str, column: &str) -> anyhow::Result<bool> {
        let col = match self.engine() {
            Engine::MySql => column.to_string(),
            Engine::Postgres => column.to_lowercase(),
        };
        let sql = format!(
            "SELECT COUNT(*) FROM information_schema.columns WHERE table_schema = {} AND table_name = {} AND column_name = {}",
            self.schema_expr(),
            self.lit(&self.stored_name(table)),
            self.lit(&col)
        );
        Ok(self.count(&sql).await? > 0)
    }
}

/// A string literal for `engine`.
pub fn lit(engine: Engine, s: &str) -> String {
    match engine {
        Engine::Postgres => format!("'{}'", s.replace('\'', "''")),
        Engine::MySql => format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''")),
    }
}
