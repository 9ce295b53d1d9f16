//! The two databases DevLake runs on (product-facts §4.2: `mysql://…`, or `postgresql://`,
//! `postgres://`, `pg://`), behind one type so the simulator has one code path.
//!
//! A [`Store`] runs the simulator's own statements; a [`LockSession`] is the dedicated
//! connection that holds `_devlake_locking_stub` in a never-committed transaction for the life
//! of the process (`backend/server/services/locking.go`).

use anyhow::{Context, anyhow};
use mysql_async::prelude::Queryable;
use tokio_postgres::NoTls;

/// Which database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// MySQL (or MariaDB): `mysql://`.
    MySql,
    /// PostgreSQL: `postgresql://`, `postgres://`, `pg://`.
    Postgres,
}

/// Query parameters passed on to PostgreSQL; DevLake's go-style ones (`charset`, `parseTime`,
/// `loc`, …) are dropped.
const PG_KEPT: &[&str] = &["sslmode", "connect_timeout", "application_name"];

/// The engine of a `DB_URL` and the URL this simulator's client takes: the go-style query
/// removed (MySQL), or reduced to [`PG_KEPT`] with the scheme normalised to `postgres://`.
/// Any other scheme is refused as DevLake does: `invalid DB_URL:<url>`.
pub fn parse_db_url(db_url: &str) -> anyhow::Result<(Engine, String)> {
    let invalid = || anyhow!("invalid DB_URL:{db_url}");
    let (scheme, rest) = db_url.split_once("://").ok_or_else(invalid)?;
    let (base, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    if base.is_empty() {
        return Err(invalid());
    }
    match scheme.to_ascii_lowercase().as_str() {
        "mysql" => Ok((Engine::MySql, format!("mysql://{base}"))),
        "postgresql" | "postgres" | "pg" => {
            let kept: Vec<&str> = query
                .unwrap_or("")
                .split('&')
                .filter(|kv| {
                    let key = kv.split('=').next().unwrap_or("");
                    PG_KEPT.contains(&key)
                })
                .collect();
            let mut url = format!("postgres://{base}");
            if !kept.is_empty() {
                url.push('?');
                url.push_str(&kept.join("&"));
            }
            Ok((Engine::Postgres, url))
        }
        _ => Err(invalid()),
    }
}

/// The simulator's connection(s) to DevLake's database.
pub enum Store {
    /// A MySQL pool.
    MySql(mysql_async::Pool),
    /// One pipelined PostgreSQL client.
    Postgres {
        /// The client.
        client: tokio_postgres::Client,
        /// The URL it was opened with (for the lock session).
        url: String,
    },
}

async fn pg_connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .context("cannot connect to the database")?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

impl Store {
    /// Connect to `DB_URL` (checked by [`parse_db_url`]).
    pub async fn connect(db_url: &str) -> anyhow::Result<Store> {
        match parse_db_url(db_url)? {
            (Engine::MySql, url) => {
                let opts = mysql_async::Opts::from_url(&url)
                    .map_err(|e| anyhow!("invalid DB_URL:{db_url}: {e}"))?;
                let pool = mysql_async::Pool::new(opts);
                drop(
                    pool.get_conn()
                        .await
                        .context("cannot connect to the database")?,
                );
                Ok(Store::MySql(pool))
            }
            (Engine::Postgres, url) => Ok(Store::Postgres {
                client: pg_connect(&url).await?,
                url,
            }),
        }
    }

    /// Which engine.
    pub fn engine(&self) -> Engine {
        match self {
            Store::MySql(_) => Engine::MySql,
            Store::Postgres { .. } => Engine::Postgres,
        }
    }

    /// Run statements without parameters.
    pub async fn batch(&self, sql: &str) -> anyhow::Result<()> {
        match self {
            Store::MySql(pool) => pool.get_conn().await?.query_drop(sql).await?,
            Store::Postgres { client, .. } => client.batch_execute(sql).await?,
        }
        Ok(())
    }

    /// `(script_version, script_name)` of `_devlake_migration_history`.
    pub async fn history(&self) -> anyhow::Result<Vec<(u64, String)>> {
        const SQL: &str = "SELECT script_version, script_name FROM _devlake_migration_history";
        match self {
            Store::MySql(pool) => Ok(pool.get_conn().await?.query(SQL).await?),
            Store::Postgres { client, .. } => client
                .query(SQL, &[])
                .await?
                .iter()
                .map(|r| {
                    let v: i64 = r.try_get(0)?;
                    Ok((u64::try_from(v)?, r.try_get(1)?))
                })
                .collect(),
        }
    }

    /// Record a script as applied.
    pub async fn record_script(&self, version: u64, name: &str) -> anyhow::Result<()> {
        match self {
            Store::MySql(pool) => {
                pool.get_conn()
                    .await?
                    .exec_drop(
                        "INSERT INTO _devlake_migration_history (script_version, script_name, comment, created_at) VALUES (?, ?, 'Framework', NOW(3))",
                        (version, name),
                    )
                    .await?
            }
            Store::Postgres { client, .. } => {
                client
                    .execute(
                        "INSERT INTO _devlake_migration_history (script_version, script_name, comment, created_at) VALUES ($1, $2, 'Framework', now())",
                        &[&i64::try_from(version)?, &name],
                    )
                    .await?;
            }
        }
        Ok(())
    }

    /// Insert this start's `_devlake_locking_history` row (`succeeded` false); its id.
    pub async fn insert_locking_row(&self, host: &str, version: &str) -> anyhow::Result<u64> {
        match self {
            Store::MySql(pool) => {
                let mut conn = pool.get_conn().await?;
                conn.exec_drop(
                    "INSERT INTO _devlake_locking_history (host_name, version, succeeded, created_at, updated_at) VALUES (?, ?, 0, NOW(3), NOW(3))",
                    (host, version),
                )
                .await?;
                conn.last_insert_id()
                    .ok_or_else(|| anyhow!("no id for the _devlake_locking_history row"))
            }
            Store::Postgres { client, .. } => {
                let row = client
                    .query_one(
                        "INSERT INTO _devlake_locking_history (host_name, version, succeeded, created_at, updated_at) VALUES ($1, $2, false, now(), now()) RETURNING id",
                        &[&host, &version],
                    )
                    .await?;
                let id: i64 = row.try_get(0)?;
                Ok(u64::try_from(id)?)
            }
        }
    }

    /// Set `succeeded` on the locking row once the lock is held.
    pub async fn mark_locked(&self, id: u64) -> anyhow::Result<()> {
        match self {
            Store::MySql(pool) => {
                pool.get_conn()
                    .await?
                    .exec_drop(
                        "UPDATE _devlake_locking_history SET succeeded = 1, updated_at = NOW(3) WHERE id = ?",
                        (id,),
                    )
                    .await?
            }
            Store::Postgres { client, .. } => {
                client
                    .execute(
                        "UPDATE _devlake_locking_history SET succeeded = true, updated_at = now() WHERE id = $1",
                        &[&i64::try_from(id)?],
                    )
                    .await?;
            }
        }
        Ok(())
    }

    /// `(name, encrypted token)` of a GitHub connection.
    pub async fn github_connection(&self, id: u64) -> anyhow::Result<Option<(String, String)>> {
        match self {
            Store::MySql(pool) => Ok(pool
                .get_conn()
                .await?
                .exec_first(
                    "SELECT name, token FROM _tool_github_connections WHERE id = ?",
                    (id,),
                )
                .await?),
            Store::Postgres { client, .. } => {
                let Ok(id) = i64::try_from(id) else {
                    return Ok(None);
                };
                match client
                    .query_opt(
                        "SELECT name, token FROM _tool_github_connections WHERE id = $1",
                        &[&id],
                    )
                    .await?
                {
                    Some(r) => Ok(Some((r.try_get(0)?, r.try_get(1)?))),
                    None => Ok(None),
                }
            }
        }
    }

    /// Open the dedicated connection that will hold the lock.
    pub async fn lock_session(&self) -> anyhow::Result<LockSession> {
        match self {
            Store::MySql(pool) => {
                let conn = pool.get_conn().await?;
                let id = conn.id();
                Ok(LockSession::MySql { conn, id })
            }
            Store::Postgres { url, .. } => {
                let client = Box::new(pg_connect(url).await?);
                let cancel = client.cancel_token();
                Ok(LockSession::Postgres { client, cancel })
            }
        }
    }
}

/// The connection holding `_devlake_locking_stub`; dropping it (or the process ending) releases
/// the lock.
pub enum LockSession {
    /// MySQL: `LOCK TABLES … WRITE` on this session.
    MySql {
        /// The session (a pooled connection never returned while held).
        conn: mysql_async::Conn,
        /// Its server-side id (for `KILL QUERY` when acquiring times out).
        id: u32,
    },
    /// PostgreSQL: an open transaction holding the table lock.
    Postgres {
        /// The session.
        client: Box<tokio_postgres::Client>,
        /// To cancel a statement that waits for another instance's lock.
        cancel: tokio_postgres::CancelToken,
    },
}

impl LockSession {
    /// Take the lock as DevLake does. `drop_stub` (≥ v0.20): drop and re-create the stub inside
    /// the locking transaction; before that, create it if missing and lock it. MySQL: `LOCK
    /// TABLES _devlake_locking_stub WRITE`; PostgreSQL: `LOCK TABLE _devlake_locking_stub IN
    /// EXCLUSIVE MODE` (`dalgorm_transaction.go` `LockTables`, `Exclusive: true`). Blocks while
    /// another instance holds it.
    pub async fn acquire(&mut self, drop_stub: bool) -> anyhow::Result<()> {
        // The same text on both engines.
        const CREATE: &str = "CREATE TABLE IF NOT EXISTS _devlake_locking_stub (stub VARCHAR(255) NOT NULL, PRIMARY KEY (stub))";
        match self {
            LockSession::MySql { conn, .. } => {
                if drop_stub {
                    conn.query_drop("DROP TABLE IF EXISTS _devlake_locking_stub")
                        .await?;
                }
                conn.query_drop(CREATE).await?;
                conn.query_drop("LOCK TABLES _devlake_locking_stub WRITE")
                    .await?;
            }
            LockSession::Postgres { client, .. } => {
                if drop_stub {
                    client
                        .batch_execute(&format!(
                            "BEGIN; DROP TABLE IF EXISTS _devlake_locking_stub CASCADE; {CREATE}; LOCK TABLE _devlake_locking_stub IN EXCLUSIVE MODE"
                        ))
                        .await?;
                } else {
                    client.batch_execute(CREATE).await?;
                    client
                        .batch_execute("BEGIN; LOCK TABLE _devlake_locking_stub IN EXCLUSIVE MODE")
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// Cancel the statement this session is waiting in (best effort), so nothing is left
    /// queued on the server after giving up.
    pub async fn cancel(&self, store: &Store) {
        match (self, store) {
            (LockSession::MySql { id, .. }, Store::MySql(pool)) => {
                if let Ok(mut c) = pool.get_conn().await {
                    let _ = c.query_drop(format!("KILL QUERY {id}")).await;
                }
            }
            (LockSession::Postgres { cancel, .. }, _) => {
                let _ = cancel.cancel_query(NoTls).await;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn db_url_schemes() {
        assert_eq!(
            parse_db_url(
                "mysql://merico:merico@mysql:3306/lake?charset=utf8mb4&parseTime=True&loc=UTC"
            )
            .ok(),
            Some((
                Engine::MySql,
                "mysql://merico:merico@mysql:3306/lake".into()
            ))
        );
        for scheme in ["postgresql", "postgres", "pg", "PG"] {
            assert_eq!(
                parse_db_url(&format!(
                    "{scheme}://merico:merico@pg:5432/lake?sslmode=disable&charset=utf8mb4&loc=UTC"
                ))
                .ok(),
                Some((
                    Engine::Postgres,
                    "postgres://merico:merico@pg:5432/lake?sslmode=disable".into()
                ))
            );
        }
        for bad in [
            "sqlite:///tmp/lake.db",
            "merico:merico@tcp(mysql:3306)/lake?charset=utf8mb4",
            "mysql://",
        ] {
            let err = parse_db_url(bad).err().map(|e| e.to_string());
            assert_eq!(err, Some(format!("invalid DB_URL:{bad}")));
        }
    }
}
