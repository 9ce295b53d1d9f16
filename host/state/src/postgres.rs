//! The state in PostgreSQL (`--state postgres://…`): the same runs, journaled steps, backup
//! catalog and leases as the SQLite store, plus the work queue agents claim from, so several
//! machines share one journal. Tables are prefixed `upshift_`.
//!
//! Asynchronous through `tokio-postgres`: one connection, which callers share (statements are
//! pipelined; nothing holds it between them). Every statement stands alone, the queue's
//! included, so no transaction can take in someone else's statements. Each distinct statement
//! is prepared once per connection and kept ([`Pg::prepared`]), so running it again is one
//! round trip instead of two (Parse/Describe, then Bind/Execute).

use std::collections::HashMap;
use std::error::Error;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use bytes::BytesMut;
use tokio_postgres::types::{FromSql, IsNull, ToSql, Type, to_sql_checked};
use tokio_postgres::{Client, NoTls, Statement};

use crate::lease::now_ms;
use crate::queue::{Claim, QueueItem, WorkQueue};
use crate::store::{Dialect, Engine, Store, Value};
use crate::{StateError, StateFuture};

const SCHEMA_SQL: &str = "
CREATE TABLE IF NOT EXISTS upshift_runs (
    id TEXT PRIMARY KEY, instance TEXT NOT NULL, product TEXT NOT NULL, adapter_digest TEXT NOT NULL,
    kind TEXT NOT NULL, from_version TEXT NOT NULL, to_version TEXT NOT NULL, status TEXT NOT NULL,
    started_at TEXT NOT NULL, finished_at TEXT, plan_json TEXT NOT NULL, message TEXT);
CREATE INDEX IF NOT EXISTS upshift_runs_instance ON upshift_runs (instance, started_at);
CREATE TABLE IF NOT EXISTS upshift_steps (
    run_id TEXT NOT NULL REFERENCES upshift_runs (id), seq INTEGER NOT NULL, phase TEXT NOT NULL,
    step_id TEXT NOT NULL, title TEXT NOT NULL, status TEXT NOT NULL, started_at TEXT NOT NULL,
    started_ms BIGINT NOT NULL, finished_at TEXT, duration_ms BIGINT, output TEXT, error TEXT,
    PRIMARY KEY (run_id, phase, seq));
CREATE TABLE IF NOT EXISTS upshift_backups (
    id TEXT PRIMARY KEY, instance TEXT NOT NULL, binding TEXT NOT NULL, run_id TEXT, method TEXT NOT NULL,
    location TEXT NOT NULL, source_database TEXT NOT NULL, product_version TEXT NOT NULL,
    created_at TEXT NOT NULL, size_bytes BIGINT, sha256 TEXT, valid BOOLEAN NOT NULL, note TEXT);
CREATE TABLE IF NOT EXISTS upshift_leases (
    instance TEXT PRIMARY KEY, holder TEXT NOT NULL, token BIGINT NOT NULL, expires_ms BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS upshift_artifacts (
    adapter_digest TEXT NOT NULL, engine TEXT NOT NULL, sha256 TEXT NOT NULL, recorded_at TEXT NOT NULL,
    PRIMARY KEY (adapter_digest, engine));
CREATE TABLE IF NOT EXISTS upshift_audit_anchors (
    log TEXT PRIMARY KEY, records BIGINT NOT NULL, head TEXT NOT NULL, anchored_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS upshift_kept (
    run_id TEXT NOT NULL, instance TEXT NOT NULL, binding TEXT NOT NULL, container_id TEXT NOT NULL,
    replaced_by TEXT NOT NULL, image TEXT NOT NULL, kept_at TEXT NOT NULL, released_at TEXT,
    PRIMARY KEY (run_id, container_id));
CREATE TABLE IF NOT EXISTS upshift_pending (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, location TEXT NOT NULL, instance TEXT NOT NULL,
    binding TEXT NOT NULL, run_id TEXT, recorded_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS upshift_audit_index (
    log TEXT NOT NULL, seq BIGINT NOT NULL, segment BIGINT NOT NULL, byte_offset BIGINT NOT NULL,
    run_id TEXT, denied BOOLEAN NOT NULL, PRIMARY KEY (log, seq));
CREATE INDEX IF NOT EXISTS upshift_audit_index_run ON upshift_audit_index (log, run_id, seq);
CREATE TABLE IF NOT EXISTS upshift_queue (
    instance TEXT PRIMARY KEY, target TEXT NOT NULL, status TEXT NOT NULL, agent TEXT,
    claims INTEGER NOT NULL DEFAULT 0, claimed_ms BIGINT, outcome TEXT, enqueued_at TEXT NOT NULL,
    finished_at TEXT);
";

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The PostgreSQL engine.
pub struct Pg {
    /// The URL without its userinfo, for messages.
    at: String,
    client: Client,
    /// How long a lease lasts without a heartbeat: a claim whose agent holds no lease for that
    /// long is abandoned.
    lease_ttl: Duration,
    /// Statements prepared on `client`, by their text (they belong to that connection).
    statements: Mutex<HashMap<String, Statement>>,
}

/// How many prepared statements a connection keeps (the store has a few dozen distinct ones).
const STATEMENTS_KEPT: usize = 256;

/// The PostgreSQL state store.
pub type PgState = Store<Pg>;

/// Connect and create the tables (serialised by an advisory lock, so agents starting together
/// do not race). `lease_ttl` is the hosts' lease period.
pub async fn open(url: &str, lease_ttl: Duration) -> Result<PgState, StateError> {
    let at = upshift_model::redact::url_for_display(url);
    let fail = |source| StateError::Postgres {
        at: at.clone(),
        source,
    };
    let (mut client, connection) = tokio_postgres::connect(url, NoTls).await.map_err(fail)?;
    // The connection ends with an error the next statement reports too.
    tokio::spawn(async move { drop(connection.await) });
    let tx = client.transaction().await.map_err(fail)?;
    tx.execute("SELECT pg_advisory_xact_lock(775511)", &[])
        .await
        .map_err(fail)?;
    tx.batch_execute(SCHEMA_SQL).await.map_err(fail)?;
    tx.commit().await.map_err(fail)?;
    Ok(Store::new(Pg {
        at,
        client,
        lease_ttl,
        statements: Mutex::new(HashMap::new()),
    }))
}

impl Pg {
    fn fail(&self) -> impl Fn(tokio_postgres::Error) -> StateError + '_ {
        |source| StateError::Postgres {
            at: self.at.clone(),
            source,
        }
    }

    /// `sql` prepared on this connection: the first time a round trip (Parse/Describe), then
    /// from memory.
    async fn prepared(&self, sql: &str) -> Result<Statement, StateError> {
        let kept = self
            .statements
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(sql)
            .cloned();
        if let Some(statement) = kept {
            return Ok(statement);
        }
        let statement = self.client.prepare(sql).await.map_err(self.fail())?;
        let mut kept = self
            .statements
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if kept.len() >= STATEMENTS_KEPT {
            kept.clear();
        }
        kept.insert(sql.to_string(), statement.clone());
        Ok(statement)
    }
}

fn refs(params: &[Value]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
}

/// Integers go in at the width of the column (`INTEGER` or `BIGINT`).
impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(i) if *ty == Type::INT4 => i32::try_from(*i)?.to_sql(ty, out),
            Value::Int(i) if *ty == Type::INT8 => i.to_sql(ty, out),
            Value::Bool(b) if *ty == Type::BOOL => b.to_sql(ty, out),
            Value::Text(s) | Value::Other(s) if <&str as ToSql>::accepts(ty) => {
                s.as_str().to_sql(ty, out)
            }
            other => Err(format!("cannot send {other:?} as a {ty} parameter").into()),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

impl<'a> FromSql<'a> for Value {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Value, Box<dyn Error + Sync + Send>> {
        Ok(if *ty == Type::INT2 {
            Value::Int(i16::from_sql(ty, raw)?.into())
        } else if *ty == Type::INT4 {
            Value::Int(i32::from_sql(ty, raw)?.into())
        } else if *ty == Type::INT8 {
            Value::Int(i64::from_sql(ty, raw)?)
        } else if *ty == Type::BOOL {
            Value::Bool(bool::from_sql(ty, raw)?)
        } else if <&str as FromSql>::accepts(ty) {
            Value::Text(<&str as FromSql>::from_sql(ty, raw)?.to_string())
        } else {
            Value::Other(format!("a value of type {ty}"))
        })
    }

    fn from_sql_null(_: &Type) -> Result<Value, Box<dyn Error + Sync + Send>> {
        Ok(Value::Null)
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

impl Engine for Pg {
    const DIALECT: Dialect = Dialect {
        tables: "upshift_",
        param: '$',
    };

    fn at(&self) -> &str {
        &self.at
    }

    async fn execute(&self, sql: String, params: Vec<Value>) -> Result<u64, StateError> {
        let statement = self.prepared(&sql).await?;
        self.client
            .execute(&statement, &refs(&params))
            .await
            .map_err(self.fail())
    }

    async fn query(&self, sql: String, params: Vec<Value>) -> Result<Vec<Vec<Value>>, StateError> {
        let statement = self.prepared(&sql).await?;
        let rows = self
            .client
            .query(&statement, &refs(&params))
            .await
            .map_err(self.fail())?;
        rows.iter()
            .map(|row| (0..row.len()).map(|i| row.try_get::<_, Value>(i)).collect())
            .collect::<Result<_, _>>()
            .map_err(self.fail())
    }

    fn queue(&self) -> Option<&dyn WorkQueue> {
        Some(self)
    }
}

impl WorkQueue for Pg {
    fn enqueue<'a>(&'a self, items: &'a [QueueItem]) -> StateFuture<'a, usize> {
        Box::pin(async move {
            // One statement, so all are queued or none; an instance named twice once.
            let mut instances: Vec<&str> = Vec::new();
            let mut targets: Vec<&str> = Vec::new();
            for item in items {
                if !instances.contains(&item.instance.as_str()) {
                    instances.push(&item.instance);
                    targets.push(&item.target);
                }
            }
            // Second precision, as runs record their start.
            let enqueued = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            let n = self
                .client
                .execute(
                    "INSERT INTO upshift_queue (instance, target, status, enqueued_at)
                     SELECT instance, target, 'pending', $3::text FROM UNNEST($1::text[], $2::text[]) AS i (instance, target)
                     ON CONFLICT (instance) DO UPDATE SET target = excluded.target, status = 'pending', agent = NULL,
                       claims = 0, outcome = NULL, enqueued_at = excluded.enqueued_at, finished_at = NULL
                     WHERE upshift_queue.status = 'done'",
                    &[&instances, &targets, &enqueued],
                )
                .await
                .map_err(self.fail())?;
            Ok(usize::try_from(n).unwrap_or(usize::MAX))
        })
    }

    fn claim<'a>(&'a self, agent: &'a str) -> StateFuture<'a, Option<Claim>> {
        Box::pin(async move {
            let now = now_ms();
            // A claim whose agent has held no lease on the instance for a whole lease period is
            // abandoned (the agent died); a fresh claim is given that long to take its lease.
            let period = crate::lease::ttl_ms(self.lease_ttl);
            let stale = now.saturating_sub(period);
            // One statement: the row is locked from the choice to the update.
            let claim = self
                .prepared(
                    "WITH next AS (
                       SELECT q.instance, q.status FROM upshift_queue q
                       WHERE q.status = 'pending'
                          OR (q.status = 'claimed' AND q.claimed_ms < $2 AND NOT EXISTS (
                              SELECT 1 FROM upshift_leases l WHERE l.instance = q.instance AND l.expires_ms >= $1))
                       ORDER BY q.enqueued_at, q.instance
                       LIMIT 1 FOR UPDATE OF q SKIP LOCKED)
                     UPDATE upshift_queue u SET status = 'claimed', agent = $3, claims = u.claims + 1, claimed_ms = $1
                     FROM next WHERE u.instance = next.instance
                     RETURNING u.instance, u.target, next.status, u.enqueued_at",
                )
                .await?;
            let row = self
                .client
                .query_opt(&claim, &[&now, &stale, &agent])
                .await
                .map_err(self.fail())?;
            let Some(row) = row else {
                return Ok(None);
            };
            let get = |i| row.try_get::<_, String>(i).map_err(self.fail());
            let (instance, target, status, enqueued_at) = (get(0)?, get(1)?, get(2)?, get(3)?);
            Ok(Some(Claim {
                item: QueueItem { instance, target },
                reclaimed: status == "claimed",
                enqueued_at,
            }))
        })
    }

    fn finish<'a>(&'a self, instance: &'a str, outcome: &'a str) -> StateFuture<'a, ()> {
        Box::pin(async move {
            let finish = self
                .prepared(
                    "UPDATE upshift_queue SET status = 'done', outcome = $2, finished_at = $3 WHERE instance = $1",
                )
                .await?;
            self.client
                .execute(&finish, &[&instance, &outcome, &now()])
                .await
                .map(drop)
                .map_err(self.fail())
        })
    }

    fn remaining(&self) -> StateFuture<'_, usize> {
        Box::pin(async move {
            let remaining = self
                .prepared("SELECT count(*) FROM upshift_queue WHERE status <> 'done'")
                .await?;
            let row = self
                .client
                .query_one(&remaining, &[])
                .await
                .map_err(self.fail())?;
            let count: i64 = row.try_get(0).map_err(self.fail())?;
            usize::try_from(count).map_err(|_| StateError::Value {
                at: self.at.clone(),
                column: "count(*) of upshift_queue",
                value: count.to_string(),
            })
        })
    }
}
