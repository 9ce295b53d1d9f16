//! A DevLake simulator: behaves as Apache DevLake does at upgrade time (product-facts §4) on
//! MySQL or PostgreSQL. Test infrastructure, not DevLake.
//!
//! It resolves its configuration like DevLake (`ENV_FILE`, else `.env` beside `ENV_PATH`, else
//! `./.env`; environment variables win), requires `DB_URL`, requires `ENCRYPTION_SECRET` from
//! v0.18 on (v0.17 reads `ENCODE_KEY` and writes a generated one back into `.env`), records every
//! start in `_devlake_locking_history`, holds `_devlake_locking_stub` locked for its lifetime (a
//! second instance on the same database gives up with DevLake's panic), and when migration
//! scripts are pending on a non-empty history it answers API calls (all but `/ping`, `/version`,
//! `/health`, `/ready`, which DevLake registers before its gate) with HTTP 428 until
//! `GET /proceed-db-migration` (or `FORCE_MIGRATION=true`). A GitHub connection token is stored
//! AES-CBC-encrypted with the secret, so a lost or changed secret shows as "invalid encKey".
//! `DL_SIM_FAIL_SCRIPT=<version>` makes that script fail after earlier ones were applied;
//! `DL_SIM_LOCK_TIMEOUT_SECS=<seconds>` shortens the lock timeout for tests.

pub mod catalog;
pub mod crypto;
pub mod store;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use clap::Parser;
use mysql_async::prelude::Queryable;
use tokio::sync::Mutex;

use catalog::{GateModel, Release};
use store::{Engine, Store};

/// The 428 message while migration waits for confirmation, as DevLake words it (DevLake's text
/// has line breaks where this has spaces).
pub const GATE_MESSAGE: &str = "New migration scripts detected. Database migration is required to launch DevLake. WARNING: Performing migration may wipe collected data for consistency and re-collecting data may be required. To proceed, please send a request to <config-ui-endpoint>/api/proceed-db-migration (or <devlake-endpoint>/proceed-db-migration). Alternatively, you may downgrade back to the previous DevLake version.";

/// The 428 message while migrating (≥ v1.0.0).
pub const MIGRATING_MESSAGE: &str =
    "Database migration is in progress. Please wait until it is completed.";

/// What a second instance prints when the lock is held elsewhere (`locking.go`).
pub const LOCK_TIMEOUT_MESSAGE: &str = "panic: locking _devlake_locking_stub timeout, the database might be locked by another devlake instance";

#[derive(Debug, Parser)]
#[command(name = "devlake-sim", disable_version_flag = true)]
struct Args {
    /// The DevLake release to simulate.
    #[arg(long)]
    version: String,
}

/// Resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The simulated release.
    pub release: Release,
    /// HTTP port.
    pub port: u16,
    /// `DB_URL`.
    pub db_url: String,
    /// `ENCRYPTION_SECRET` (or `ENCODE_KEY` before v0.18).
    pub secret: String,
    /// `FORCE_MIGRATION=true`.
    pub force_migration: bool,
    /// Script version that fails.
    pub fail_script: Option<u64>,
    /// How long to wait for `_devlake_locking_stub` (the release's own timeout unless
    /// `DL_SIM_LOCK_TIMEOUT_SECS` says otherwise).
    pub lock_timeout: Duration,
}

/// The `.env` DevLake would read, per §4.2.
pub fn env_file() -> PathBuf {
    if let Ok(f) = std::env::var("ENV_FILE") {
        return PathBuf::from(f);
    }
    if let Ok(p) = std::env::var("ENV_PATH") {
        return Path::new(&p)
            .parent()
            .unwrap_or(Path::new("."))
            .join(".env");
    }
    PathBuf::from(".env")
}

impl Config {
    /// From `--version V`, the `.env` and the environment (environment wins).
    pub fn from_args_and_env(args: &[String]) -> anyhow::Result<Config> {
        let parsed = Args::try_parse_from(
            std::iter::once("devlake-sim".to_string()).chain(args.iter().cloned()),
        )
        .map_err(|e| anyhow!("{e}"))?;
        let release = catalog::find(&parsed.version)
            .ok_or_else(|| anyhow!("no simulated DevLake release {}", parsed.version))?;
        let file = env_file();
        let mut values: BTreeMap<String, String> = BTreeMap::new();
        match dotenvy::from_path_iter(&file) {
            Ok(iter) => {
                for item in iter {
                    let (k, v) =
                        item.with_context(|| format!("{} does not parse", file.display()))?;
                    values.insert(k, v);
                }
            }
            Err(_) => println!("no [.env] file, devlake will read configuration from environment"),
        }
        for key in [
            "DB_URL",
            "ENCRYPTION_SECRET",
            "ENCODE_KEY",
            "PORT",
            "FORCE_MIGRATION",
            "DL_SIM_FAIL_SCRIPT",
            "DL_SIM_LOCK_TIMEOUT_SECS",
        ] {
            if let Ok(v) = std::env::var(key) {
                values.insert(key.to_string(), v);
            }
        }
        let db_url = values
            .get("DB_URL")
            .filter(|v| !v.is_empty())
            .cloned()
            .ok_or_else(|| {
                anyhow!("DB_URL is required, please set it in environment variable or .env file")
            })?;
        store::parse_db_url(&db_url)?;
        let lock_timeout = match values.get("DL_SIM_LOCK_TIMEOUT_SECS") {
            Some(v) => v
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(Duration::from_secs_f64)
                .ok_or_else(|| {
                    anyhow!("DL_SIM_LOCK_TIMEOUT_SECS={v} is not a number of seconds")
                })?,
            None => release.lock_timeout,
        };
        let secret = if release.encryption_secret {
            values
                .get("ENCRYPTION_SECRET")
                .filter(|v| !v.is_empty())
                .cloned()
                .ok_or_else(|| {
                    anyhow!(
                        "panic: ENCRYPTION_SECRET must be set in environment variable or .env file"
                    )
                })?
        } else {
            match values.get("ENCODE_KEY").filter(|v| !v.is_empty()) {
                Some(k) => k.clone(),
                None => {
                    // ≤ v0.17 generated a key and wrote it back into the .env (#5235).
                    let key = crypto::encrypt(
                        "generated",
                        &format!("{:?}", std::time::SystemTime::now()),
                    )
                    .chars()
                    .filter(char::is_ascii_alphanumeric)
                    .take(32)
                    .collect::<String>();
                    let mut text = std::fs::read_to_string(&file).unwrap_or_default();
                    text.push_str(&format!("\nENCODE_KEY={key}\n"));
                    std::fs::write(&file, text)
                        .with_context(|| format!("cannot write {}", file.display()))?;
                    key
                }
            }
        };
        Ok(Config {
            release,
            port: values
                .get("PORT")
                .and_then(|p| p.parse().ok())
                .unwrap_or(8080),
            db_url,
            secret,
            force_migration: values.get("FORCE_MIGRATION").is_some_and(|v| v == "true"),
            fail_script: values
                .get("DL_SIM_FAIL_SCRIPT")
                .and_then(|v| v.parse().ok()),
            lock_timeout,
        })
    }
}

/// The URL this simulator's client opens for `DB_URL`: DevLake's go-style query (`charset`,
/// `parseTime`, `loc`) removed; PostgreSQL keeps `sslmode`. `db_url` unchanged if invalid.
pub fn connection_url(db_url: &str) -> String {
    store::parse_db_url(db_url)
        .map(|(_, url)| url)
        .unwrap_or_else(|_| db_url.to_string())
}

/// DevLake's service status (`backend/server/services/init.go`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    WaitConfirm,
    Migrating,
    Ready,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::WaitConfirm => "waiting for migration confirmation",
            Status::Migrating => "migrating",
            Status::Ready => "ready",
        }
    }
}

struct Sim {
    config: Config,
    store: Store,
    status: Mutex<Status>,
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

async fn pending(
    store: &Store,
    release: &Release,
) -> anyhow::Result<(usize, Vec<&'static catalog::Script>)> {
    let done = store
        .history()
        .await
        .context("cannot read _devlake_migration_history")?;
    let pending = release
        .scripts()
        .filter(|s| !done.iter().any(|(v, n)| *v == s.version && n == s.name))
        .collect();
    Ok((done.len(), pending))
}

/// The error DevLake's driver reports for the simulated failing script (#3888, #8411).
fn duplicate_column(engine: Engine) -> &'static str {
    match engine {
        Engine::MySql => "Error 1060: Duplicate column name 'updated_date'",
        Engine::Postgres => {
            "ERROR: column \"updated_date\" of relation \"pull_requests\" already exists (SQLSTATE 42701)"
        }
    }
}

async fn migrate(sim: &Sim) -> anyhow::Result<()> {
    let (history, scripts) = pending(&sim.store, &sim.config.release).await?;
    println!(
        "[Execute] pending scripts: {}, executed scripts: {history}",
        scripts.len()
    );
    let engine = sim.store.engine();
    for s in scripts {
        if sim.config.fail_script == Some(s.version) {
            bail!(
                "{} (script {}_{}; earlier scripts stay applied)",
                duplicate_column(engine),
                s.version,
                s.name
            );
        }
        sim.store
            .batch(s.sql.on(engine))
            .await
            .with_context(|| format!("script {}_{} failed", s.version, s.name))?;
        sim.store.record_script(s.version, s.name).await?;
    }
    println!("[Execute] pending scripts: 0");
    Ok(())
}

/// Register this start and take `_devlake_locking_stub` (`locking.go`): the returned session
/// holds it until dropped.
async fn lock_database(config: &Config, store: &Store) -> anyhow::Result<store::LockSession> {
    let id = store
        .insert_locking_row(&host_name(), config.release.tag)
        .await
        .context("cannot insert into _devlake_locking_history")?;
    let mut session = store.lock_session().await?;
    match tokio::time::timeout(
        config.lock_timeout,
        session.acquire(config.release.lock_drops_stub),
    )
    .await
    {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e.context("cannot lock _devlake_locking_stub")),
        Err(_) => {
            session.cancel(store).await;
            println!("{LOCK_TIMEOUT_MESSAGE}");
            bail!("{LOCK_TIMEOUT_MESSAGE}");
        }
    }
    store.mark_locked(id).await?;
    Ok(session)
}

/// Start, lock, migrate or gate, and serve until SIGTERM/SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    println!("DevLake {} (simulator) starting", config.release.tag);
    let store = Store::connect(&config.db_url).await?;
    let engine = store.engine();
    for sql in catalog::BASE {
        store
            .batch(sql.on(engine))
            .await
            .context("cannot create the base tables")?;
    }
    // Held, never committed, until the process ends.
    let _lock = lock_database(&config, &store).await?;
    let (history, scripts) = pending(&store, &config.release).await?;
    println!(
        "has pending scripts? {}, FORCE_MIGRATION: {}",
        history > 0 && !scripts.is_empty(),
        config.force_migration
    );
    let sim = Arc::new(Sim {
        status: Mutex::new(Status::Migrating),
        config,
        store,
    });
    if !scripts.is_empty() && history > 0 && !sim.config.force_migration {
        println!("db migration confirmation needed");
        *sim.status.lock().await = Status::WaitConfirm;
    } else {
        migrate(&sim).await?;
        *sim.status.lock().await = Status::Ready;
    }
    let release = sim.config.release;
    let mut app = Router::new()
        .route("/ping", get(ping))
        .route("/version", get(version))
        .route("/proceed-db-migration", get(proceed))
        .route("/plugins/github/connections/{id}", get(connection));
    if release.health {
        app = app.route("/health", get(health));
    }
    if release.probes {
        app = app.route("/ready", get(ready));
    }
    let app = app.fallback(not_found).with_state(sim.clone());
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", sim.config.port))
        .await
        .with_context(|| format!("cannot listen on 127.0.0.1:{}", sim.config.port))?;
    println!(
        "DevLake {} is serving on 127.0.0.1:{}",
        sim.config.release.tag, sim.config.port
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => return std::future::pending().await,
                };
            tokio::select! { _ = term.recv() => {}, _ = tokio::signal::ctrl_c() => {} }
        })
        .await
        .context("the HTTP server failed")
}

fn json(status: StatusCode, body: serde_json::Value) -> Response {
    (status, axum::Json(body)).into_response()
}

/// DevLake's `shared.ApiBody`.
fn api_body(status: StatusCode, success: bool, message: &str, causes: &[String]) -> Response {
    json(
        status,
        serde_json::json!({
            "code": 0,
            "success": success,
            "message": message,
            "causes": if causes.is_empty() { serde_json::Value::Null } else { serde_json::json!(causes) },
            "data": null,
        }),
    )
}

/// The gate in front of every route registered after it (all but `/ping`, `/version`,
/// `/health`, `/ready`, `/proceed-db-migration`).
async fn gated(sim: &Sim) -> Option<Response> {
    let message = match (*sim.status.lock().await, sim.config.release.gate) {
        (Status::Ready, _) => return None,
        (Status::WaitConfirm, _) | (Status::Migrating, GateModel::Pending) => GATE_MESSAGE,
        (Status::Migrating, _) => MIGRATING_MESSAGE,
    };
    Some(api_body(
        StatusCode::PRECONDITION_REQUIRED,
        false,
        message,
        &[],
    ))
}

async fn ping() -> Response {
    StatusCode::OK.into_response()
}

async fn version(State(sim): State<Arc<Sim>>) -> Response {
    json(
        StatusCode::OK,
        serde_json::json!({ "version": format!("{}@sim", sim.config.release.tag) }),
    )
}

/// `/health`: an alias of `/ping` before v1.0.0; from then "maybe" unless ready, else a read.
async fn health(State(sim): State<Arc<Sim>>) -> Response {
    if !sim.config.release.probes {
        return StatusCode::OK.into_response();
    }
    if *sim.status.lock().await != Status::Ready {
        return api_body(StatusCode::OK, true, "maybe", &[]);
    }
    match sim.store.history().await {
        Ok(_) => api_body(StatusCode::OK, true, "good", &[]),
        Err(e) => api_body(
            StatusCode::INTERNAL_SERVER_ERROR,
            false,
            &format!("{e:#}"),
            &[],
        ),
    }
}

/// `/ready` (≥ v1.0.0): 503 "service is not ready: <status>" until ready.
async fn ready(State(sim): State<Arc<Sim>>) -> Response {
    let status = *sim.status.lock().await;
    if status == Status::Ready {
        api_body(StatusCode::OK, true, status.as_str(), &[])
    } else {
        api_body(
            StatusCode::SERVICE_UNAVAILABLE,
            false,
            &format!("service is not ready: {}", status.as_str()),
            &[],
        )
    }
}

/// Unknown routes pass through the gate first (gin's 404 chain includes it).
async fn not_found(State(sim): State<Arc<Sim>>) -> Response {
    match gated(&sim).await {
        Some(r) => r,
        None => (StatusCode::NOT_FOUND, "404 page not found").into_response(),
    }
}

async fn proceed(State(sim): State<Arc<Sim>>) -> Response {
    let gate = sim.config.release.gate;
    let mut status = sim.status.lock().await;
    match *status {
        Status::Ready => return api_body(StatusCode::OK, true, "success", &[]),
        Status::Migrating => {
            let message = if gate == GateModel::StatusCrashOnFailure {
                "already migrating"
            } else {
                "There is a migration in progress."
            };
            return api_body(StatusCode::BAD_REQUEST, false, message, &[]);
        }
        Status::WaitConfirm => *status = Status::Migrating,
    }
    drop(status);
    match migrate(&sim).await {
        Ok(()) => {
            *sim.status.lock().await = Status::Ready;
            api_body(StatusCode::OK, true, "success", &[])
        }
        Err(e) => {
            eprintln!("failed to execute migration: {e:#}");
            match gate {
                GateModel::Pending => *sim.status.lock().await = Status::WaitConfirm,
                GateModel::Status => {}
                GateModel::StatusCrashOnFailure => {
                    // v1.0.0's ExecuteMigration unlocks its mutex twice on this path.
                    eprintln!("fatal error: sync: unlock of unlocked mutex");
                    std::process::exit(2);
                }
            }
            api_body(
                StatusCode::INTERNAL_SERVER_ERROR,
                false,
                "error executing migration",
                &[format!("{e:#}")],
            )
        }
    }
}

async fn connection(
    State(sim): State<Arc<Sim>>,
    axum::extract::Path(id): axum::extract::Path<u64>,
) -> Response {
    if let Some(r) = gated(&sim).await {
        return r;
    }
    match sim.store.github_connection(id).await {
        Ok(Some((name, token))) => match crypto::decrypt(&sim.config.secret, &token) {
            Ok(plain) => json(
                StatusCode::OK,
                serde_json::json!({ "id": id, "name": name, "token": format!("{}****", plain.chars().take(4).collect::<String>()) }),
            ),
            Err(e) => json(
                StatusCode::INTERNAL_SERVER_ERROR,
                serde_json::json!({ "message": e }),
            ),
        },
        Ok(None) => json(
            StatusCode::NOT_FOUND,
            serde_json::json!({ "message": "connection not found" }),
        ),
        Err(e) => json(
            StatusCode::INTERNAL_SERVER_ERROR,
            serde_json::json!({ "message": format!("{e:#}") }),
        ),
    }
}

/// The seeded rows: (repo id, repo name, repo url, pr id, pr title).
fn seed_rows(n: usize) -> impl Iterator<Item = [String; 5]> {
    (0..n).map(|i| {
        [
            format!("github:GithubRepo:1:{i}"),
            format!("org/repo{i}"),
            format!("https://github.com/org/repo{i}"),
            format!("github:GithubPullRequest:1:{i}"),
            format!("PR {i}"),
        ]
    })
}

/// The token the seeded GitHub connection carries (encrypted with the secret).
pub const SEED_TOKEN: &str = "ghp_simulatedtoken";

/// MySQL: insert a GitHub connection (token encrypted with `secret`) and `n` repos and pull
/// requests (the schema of a migrated database).
pub async fn seed(conn: &mut mysql_async::Conn, secret: &str, n: usize) -> anyhow::Result<()> {
    conn.exec_drop(
        "INSERT INTO _tool_github_connections (name, endpoint, token, created_at) VALUES ('github', 'https://api.github.com/', ?, NOW(3))",
        (crypto::encrypt(secret, SEED_TOKEN),),
    )
    .await?;
    for [repo, name, url, pr, title] in seed_rows(n) {
        conn.exec_drop(
            "INSERT INTO repos (id, name, url) VALUES (?, ?, ?)",
            (&repo, name, url),
        )
        .await?;
        conn.exec_drop(
            "INSERT INTO pull_requests (id, base_repo_id, title, status) VALUES (?, ?, ?, 'MERGED')",
            (pr, &repo, title),
        )
        .await?;
    }
    Ok(())
}

/// PostgreSQL: the same rows as [`seed`].
pub async fn seed_pg(
    client: &tokio_postgres::Client,
    secret: &str,
    n: usize,
) -> anyhow::Result<()> {
    client
        .execute(
            "INSERT INTO _tool_github_connections (name, endpoint, token, created_at) VALUES ('github', 'https://api.github.com/', $1, now())",
            &[&crypto::encrypt(secret, SEED_TOKEN)],
        )
        .await?;
    for [repo, name, url, pr, title] in seed_rows(n) {
        client
            .execute(
                "INSERT INTO repos (id, name, url) VALUES ($1, $2, $3)",
                &[&repo, &name, &url],
            )
            .await?;
        client
            .execute(
                "INSERT INTO pull_requests (id, base_repo_id, title, status) VALUES ($1, $2, $3, 'MERGED')",
                &[&pr, &repo, &title],
            )
            .await?;
    }
    Ok(())
}
