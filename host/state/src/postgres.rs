//! The state in PostgreSQL (`--state postgres://…`): the same runs, journaled steps, backup
//! catalog and leases as the SQLite store, plus the work queue agents claim from, so several
//! machines share one journal. Tables are prefixed `upshift_`.
//!
//! Asynchronous through `tokio-postgres`: one connection, which callers share (statements are
//! pipelined; nothing holds it between them). Every statement stands alone, the queue's
//! included, so no transaction can take in someone else's statements.
//!
//! The connection rides out restarts of the server: a statement that fails because the
//! connection is gone reconnects (with backoff, once for all callers that failed together) and
//! runs again, for up to the store's *state wait* (see [`Pg::retry`]).
//!
//! Each distinct statement is prepared once per connection and kept ([`Conn::prepared`]), so
//! running it again is one round trip instead of two (Parse/Describe, then Bind/Execute).

use std::collections::HashMap;
use std::error::Error;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::sync::Mutex;
use tokio::time::Instant;
use tokio_postgres::types::{FromSql, IsNull, ToSql, Type, to_sql_checked};
use tokio_postgres::{Client, NoTls, Statement};

use crate::queue::{Claim, QueueItem, WorkQueue};
use crate::store::{Dialect, Engine, Store, Value};
use crate::{StateError, StateFuture};

/// How long a store waits for a lost state database by default before a statement fails.
pub const DEFAULT_STATE_WAIT: Duration = Duration::from_secs(300);

/// The first pause between reconnection attempts; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest pause between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// The longest one connection attempt may take (a partitioned server never answers).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a statement may go unanswered before its connection counts as lost (the state's
/// statements are short: single-row writes and small reads; a write waits for a lease row's
/// lock at most as long as a takeover statement runs).
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(15);

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
    holder TEXT, PRIMARY KEY (run_id, phase, seq));
ALTER TABLE upshift_steps ADD COLUMN IF NOT EXISTS holder TEXT;
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
ALTER TABLE upshift_queue ADD COLUMN IF NOT EXISTS allow_unknown BOOLEAN NOT NULL DEFAULT FALSE;
";

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// How PostgreSQL's SQL is written: tables prefixed `upshift_`, `$n` parameters, the server's
/// clock, and fences that share-lock the lease row until the write commits.
pub(crate) const DIALECT: Dialect = Dialect {
    tables: "upshift_",
    param: '$',
    now_ms: "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT",
    share: " FOR SHARE",
};

/// The PostgreSQL engine.
pub struct Pg {
    /// The URL without its userinfo, for messages.
    at: String,
    /// The URL itself, kept (in memory only) to connect again.
    url: String,
    /// The current connection and what reconnecting knows.
    link: Mutex<Link>,
    /// How long a statement waits for a lost database before it fails.
    state_wait: Duration,
    /// How long a lease lasts without a heartbeat: a claim whose agent holds no lease for that
    /// long is abandoned.
    lease_ttl: Duration,
}

/// The shared connection. Callers clone the client out and run their statement without
/// holding the lock; only reconnecting holds it.
struct Link {
    client: Arc<Conn>,
    /// Bumped on every new connection: a caller whose statement failed on generation `g`
    /// reconnects only if the link is still at `g` (else someone already did).
    generation: u64,
    /// No connection attempt before this instant (the shared backoff).
    next_try: Instant,
    /// The pause after the next failed attempt.
    backoff: Duration,
    /// Why the last attempt to connect failed.
    cause: Option<String>,
}

/// One connection and the statements prepared on it (they belong to it: a new connection
/// starts with none). Derefs to the client.
pub struct Conn {
    client: Client,
    statements: std::sync::Mutex<HashMap<String, Statement>>,
}

/// How many prepared statements a connection keeps (the store has a few dozen distinct ones).
const STATEMENTS_KEPT: usize = 256;

impl Conn {
    fn new(client: Client) -> Conn {
        Conn {
            client,
            statements: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// `sql` prepared on this connection: the first time a round trip (Parse/Describe), then
    /// from memory.
    async fn prepared(&self, sql: &str) -> Result<Statement, tokio_postgres::Error> {
        let kept = self
            .statements
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(sql)
            .cloned();
        if let Some(statement) = kept {
            return Ok(statement);
        }
        let statement = self.client.prepare(sql).await?;
        let mut kept = self
            .statements
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if kept.len() >= STATEMENTS_KEPT {
            kept.clear();
        }
        kept.insert(sql.to_string(), statement.clone());
        Ok(statement)
    }
}

impl std::ops::Deref for Conn {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

/// The PostgreSQL state store.
pub type PgState = Store<Pg>;

/// Connect, with the connection driven by a task of its own. The connection ends with an error
/// the next statement reports too.
async fn connect(url: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move { drop(connection.await) });
    Ok(client)
}

/// Connect and create the tables (serialised by an advisory lock, so agents starting together
/// do not race). `lease_ttl` is the hosts' lease period; `state_wait` how long a statement
/// waits for the database once it was lost (restarted, unreachable) before it fails. The
/// first connection attempt is not retried (a wrong URL fails at once); once connected, the
/// tables are created under the same retries as every statement.
pub async fn open(
    url: &str,
    lease_ttl: Duration,
    state_wait: Duration,
) -> Result<PgState, StateError> {
    let at = upshift_model::redact::url_for_display(url);
    let fail = |source| StateError::Postgres {
        at: at.clone(),
        source,
    };
    let client = connect(url).await.map_err(fail)?;
    let pg = Pg {
        at,
        url: url.to_string(),
        link: Mutex::new(Link {
            client: Arc::new(Conn::new(client)),
            generation: 0,
            next_try: Instant::now(),
            backoff: FIRST_BACKOFF,
            cause: None,
        }),
        state_wait,
        lease_ttl,
    };
    // One transaction, sent as one batch, so it can run again on a new connection when the
    // server goes away under it (the tables are created only if missing).
    let schema = format!("BEGIN; SELECT pg_advisory_xact_lock(775511); {SCHEMA_SQL}; COMMIT;");
    let schema = &schema;
    pg.retry(|client| async move { client.batch_execute(schema).await })
        .await?;
    Ok(Store::new(pg))
}

/// Whether `error` means the connection is gone (rather than the statement being refused):
/// closed, an I/O error, SQLSTATE class 08 (connection exception), or the server shutting down
/// or not yet accepting connections (57P01 admin_shutdown, 57P02 crash_shutdown, 57P03
/// cannot_connect_now).
pub fn connection_lost(error: &tokio_postgres::Error) -> bool {
    if error.is_closed() {
        return true;
    }
    if let Some(state) = error.code() {
        let code = state.code();
        return code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03");
    }
    let mut cause = error.source();
    while let Some(e) = cause {
        if e.is::<std::io::Error>() {
            return true;
        }
        cause = e.source();
    }
    false
}

/// `error` and its causes, `: `-separated (tokio-postgres shows "error connecting to server"
/// and leaves why to its source).
fn with_causes(error: &tokio_postgres::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let more = e.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = e.source();
    }
    text
}

impl Pg {
    fn fail(&self) -> impl Fn(tokio_postgres::Error) -> StateError + '_ {
        |source| StateError::Postgres {
            at: self.at.clone(),
            source,
        }
    }

    /// The current client and its generation.
    async fn current(&self) -> (Arc<Conn>, u64) {
        let link = self.link.lock().await;
        (link.client.clone(), link.generation)
    }

    /// Run `statement` on the shared connection. When it fails because the connection is gone
    /// ([`connection_lost`]), connect again — with a backoff from 100 ms doubling to 2 s, shared
    /// by every caller, so callers that failed together reconnect once — and run it again, until
    /// it has been failing for the store's state wait; then fail with
    /// [`StateError::Unreachable`], naming the last cause. Any other error is returned at once.
    ///
    /// Assumption: every statement is idempotent or fenced. A statement whose connection broke
    /// may have been committed before the answer was lost, so it can run twice; the callers'
    /// statements are written so that the second run changes nothing more (upserts, updates
    /// conditional on the state they set, writes conditional on a lease token or a claim).
    async fn retry<T, F, Fut>(&self, statement: F) -> Result<T, StateError>
    where
        F: Fn(Arc<Conn>) -> Fut,
        Fut: Future<Output = Result<T, tokio_postgres::Error>>,
    {
        let mut since: Option<Instant> = None;
        loop {
            let (client, generation) = self.current().await;
            // A link cut without a reset (a partition) answers nothing, ever: a statement
            // without an answer in time counts as a lost connection.
            let cause = match tokio::time::timeout(STATEMENT_TIMEOUT, statement(client)).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(e)) if !connection_lost(&e) => return Err(self.fail()(e)),
                Ok(Err(e)) => with_causes(&e),
                Err(_) => format!(
                    "no answer to a statement within {} s",
                    STATEMENT_TIMEOUT.as_secs()
                ),
            };
            let since = *since.get_or_insert_with(Instant::now);
            self.reconnect(generation, since, cause).await?;
        }
    }

    /// Make sure the link is past `generation`: connect again unless another caller already
    /// did, waiting out the shared backoff. Fails once the database has been unreachable since
    /// `since` for longer than the state wait.
    async fn reconnect(
        &self,
        generation: u64,
        since: Instant,
        cause: String,
    ) -> Result<(), StateError> {
        let mut cause = cause;
        loop {
            let pause = {
                let mut link = self.link.lock().await;
                if link.generation != generation {
                    return Ok(());
                }
                if Instant::now() >= link.next_try {
                    let left = self.state_wait.saturating_sub(since.elapsed());
                    let attempt = tokio::time::timeout(
                        CONNECT_TIMEOUT.min(left.max(FIRST_BACKOFF)),
                        connect(&self.url),
                    )
                    .await;
                    match attempt {
                        Ok(Ok(client)) => {
                            link.client = Arc::new(Conn::new(client));
                            link.generation += 1;
                            link.backoff = FIRST_BACKOFF;
                            link.cause = None;
                            return Ok(());
                        }
                        Ok(Err(e)) => link.cause = Some(with_causes(&e)),
                        Err(_) => {
                            link.cause = Some(format!(
                                "no answer to a connection attempt within {} s",
                                CONNECT_TIMEOUT.min(left.max(FIRST_BACKOFF)).as_secs_f64()
                            ))
                        }
                    }
                    link.next_try = Instant::now() + link.backoff;
                    link.backoff = (link.backoff * 2).min(MAX_BACKOFF);
                }
                if let Some(last) = &link.cause {
                    cause.clone_from(last);
                }
                link.next_try.saturating_duration_since(Instant::now())
            };
            let waited = since.elapsed();
            if waited >= self.state_wait {
                return Err(StateError::Unreachable {
                    at: self.at.clone(),
                    waited_secs: waited.as_secs(),
                    limit_secs: self.state_wait.as_secs(),
                    cause,
                });
            }
            tokio::time::sleep(
                pause
                    .min(self.state_wait - waited)
                    .max(Duration::from_millis(10)),
            )
            .await;
        }
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
    const DIALECT: Dialect = DIALECT;

    fn at(&self) -> &str {
        &self.at
    }

    async fn execute(&self, sql: String, params: Vec<Value>) -> Result<u64, StateError> {
        let (sql, params) = (&sql, &params);
        self.retry(|conn| async move {
            let statement = conn.prepared(sql).await?;
            conn.execute(&statement, &refs(params)).await
        })
        .await
    }

    async fn query(&self, sql: String, params: Vec<Value>) -> Result<Vec<Vec<Value>>, StateError> {
        let (sql, params) = (&sql, &params);
        let rows = self
            .retry(|conn| async move {
                let statement = conn.prepared(sql).await?;
                conn.query(&statement, &refs(params)).await
            })
            .await?;
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
            let mut allow_unknown: Vec<bool> = Vec::new();
            for item in items {
                if !instances.contains(&item.instance.as_str()) {
                    instances.push(&item.instance);
                    targets.push(&item.target);
                    allow_unknown.push(item.allow_unknown);
                }
            }
            // Second precision, as runs record their start.
            let enqueued = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            let (instances, targets, allow_unknown, enqueued) =
                (&instances, &targets, &allow_unknown, &enqueued);
            // Safe to repeat: a second run finds the rows pending and changes nothing.
            let n = self
                .retry(|client| async move {
                    client
                        .execute(
                            "INSERT INTO upshift_queue (instance, target, allow_unknown, status, enqueued_at)
                             SELECT instance, target, allow_unknown, 'pending', $4::text
                             FROM UNNEST($1::text[], $2::text[], $3::bool[]) AS i (instance, target, allow_unknown)
                             ON CONFLICT (instance) DO UPDATE SET target = excluded.target, allow_unknown = excluded.allow_unknown,
                               status = 'pending', agent = NULL, claims = 0, outcome = NULL,
                               enqueued_at = excluded.enqueued_at, finished_at = NULL
                             WHERE upshift_queue.status = 'done'",
                            &[instances, targets, allow_unknown, enqueued],
                        )
                        .await
                })
                .await?;
            Ok(usize::try_from(n).unwrap_or(usize::MAX))
        })
    }

    fn claim<'a>(&'a self, agent: &'a str) -> StateFuture<'a, Option<Claim>> {
        Box::pin(async move {
            // A claim whose agent has held no lease on the instance for a whole lease period is
            // abandoned (the agent died); a fresh claim is given that long to take its lease.
            // Both are measured by the database's clock, as lease expiries are: agents' clocks
            // are never compared.
            let period = crate::lease::ttl_ms(self.lease_ttl);
            // One statement: the row is locked from the choice to the update. An item this
            // agent holds comes first: an agent claims only with nothing in hand, so such an
            // item is one whose claim committed but whose answer was lost with the connection
            // (the statement then ran again), and it is taken up again rather than left until
            // its lease period runs out. Agents' names are unique (host and pid).
            let period = &period;
            let row = self
                .retry(|client| async move {
                    client
                        .query_opt(
                            "WITH clock AS (SELECT (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT AS now_ms),
                             next AS (
                               SELECT q.instance, q.status FROM upshift_queue q, clock
                               WHERE q.status = 'pending'
                                  OR (q.status = 'claimed' AND q.agent = $2)
                                  OR (q.status = 'claimed' AND q.claimed_ms < clock.now_ms - $1 AND NOT EXISTS (
                                      SELECT 1 FROM upshift_leases l WHERE l.instance = q.instance AND l.expires_ms >= clock.now_ms))
                               ORDER BY (q.status = 'claimed' AND q.agent = $2) DESC, q.enqueued_at, q.instance
                               LIMIT 1 FOR UPDATE OF q SKIP LOCKED)
                             UPDATE upshift_queue u SET status = 'claimed', agent = $2, claims = u.claims + 1,
                               claimed_ms = (SELECT now_ms FROM clock)
                             FROM next WHERE u.instance = next.instance
                             RETURNING u.instance, u.target, next.status, u.enqueued_at, u.claims, u.allow_unknown",
                            &[period, &agent],
                        )
                        .await
                })
                .await?;
            let Some(row) = row else {
                return Ok(None);
            };
            let get = |i| row.try_get::<_, String>(i).map_err(self.fail());
            let (instance, target, status, enqueued_at) = (get(0)?, get(1)?, get(2)?, get(3)?);
            let claims: i32 = row.try_get(4).map_err(self.fail())?;
            let allow_unknown: bool = row.try_get(5).map_err(self.fail())?;
            Ok(Some(Claim {
                item: QueueItem {
                    instance,
                    target,
                    allow_unknown,
                },
                reclaimed: status == "claimed",
                enqueued_at,
                agent: agent.to_string(),
                claim: i64::from(claims),
            }))
        })
    }

    fn finish<'a>(&'a self, claim: &'a Claim, outcome: &'a str) -> StateFuture<'a, bool> {
        Box::pin(async move {
            let finished = now();
            let (instance, agent, claims, finished) = (
                &claim.item.instance,
                &claim.agent,
                &Value::Int(claim.claim),
                &finished,
            );
            // Fenced by the claim: only the claim that is still current writes. The `done` arm
            // makes it safe to repeat (the first run committed, its answer was lost); enqueueing
            // again resets `claims`, so an old claim cannot match a new item's row.
            let n = self
                .retry(|client| async move {
                    client
                        .execute(
                            "UPDATE upshift_queue SET status = 'done', outcome = $4, finished_at = $5
                             WHERE instance = $1 AND agent = $2 AND claims = $3
                               AND (status = 'claimed' OR (status = 'done' AND outcome = $4))",
                            &[instance, agent, claims, &outcome, finished],
                        )
                        .await
                })
                .await?;
            Ok(n > 0)
        })
    }

    fn remaining(&self) -> StateFuture<'_, usize> {
        Box::pin(async move {
            let row = self
                .retry(|client| async move {
                    client
                        .query_one(
                            "SELECT count(*) FROM upshift_queue WHERE status <> 'done'",
                            &[],
                        )
                        .await
                })
                .await?;
            let count: i64 = row.try_get(0).map_err(self.fail())?;
            usize::try_from(count).map_err(|_| StateError::Value {
                at: self.at.clone(),
                column: "count(*) of upshift_queue",
                value: count.to_string(),
            })
        })
    }
}
