//! A DevLake simulator: behaves as Apache DevLake does at upgrade time (product-facts §4) with
//! its default MySQL database. Test infrastructure, not DevLake.
//!
//! It resolves its configuration like DevLake (`ENV_FILE`, else `.env` beside `ENV_PATH`, else
//! `./.env`; environment variables win), requires `DB_URL`, requires `ENCRYPTION_SECRET` from
//! v0.18 on (v0.17 reads `ENCODE_KEY` and writes a generated one back into `.env`), records every
//! start in `_devlake_locking_history`, and when migration scripts are pending on a non-empty
//! history it answers every API call with HTTP 428 until `GET /proceed-db-migration` (or
//! `FORCE_MIGRATION=true`). A GitHub connection token is stored AES-CBC-encrypted with the
//! secret, so a lost or changed secret shows as "invalid encKey". `DL_SIM_FAIL_SCRIPT=<version>`
//! makes that script fail after earlier ones were applied.

pub mod catalog;
pub mod crypto;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, anyhow, bail};
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use clap::Parser;
use mysql_async::prelude::Queryable;
use tokio::sync::Mutex;

use catalog::Release;

/// The 428 message, as DevLake words it.
pub const GATE_MESSAGE: &str = "New migration scripts detected. Database migration is required to launch DevLake. WARNING: Performing migration may wipe collected data for consistency and re-collecting data may be required. To proceed, please send a request to <config-ui-endpoint>/api/proceed-db-migration (or <devlake-endpoint>/proceed-db-migration). Alternatively, you may downgrade back to the previous DevLake version.";

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
        if !db_url.starts_with("mysql://") {
            bail!("invalid DB_URL: this simulator speaks MySQL only (`mysql://…`)");
        }
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
        })
    }
}

/// DevLake's go-style DB_URL with its query (`charset`, `parseTime`, `loc`) removed.
pub fn connection_url(db_url: &str) -> String {
    db_url.split('?').next().unwrap_or(db_url).to_string()
}

/// The base tables every DevLake database has.
const BASE: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS _devlake_migration_history (script_version BIGINT NOT NULL, script_name VARCHAR(255) NOT NULL, comment TEXT NULL, created_at DATETIME(3) NULL, PRIMARY KEY (script_version, script_name))",
    "CREATE TABLE IF NOT EXISTS _devlake_locking_history (id BIGINT AUTO_INCREMENT PRIMARY KEY, host_name VARCHAR(255), version VARCHAR(255), succeeded TINYINT(1), created_at DATETIME(3), updated_at DATETIME(3))",
    "CREATE TABLE IF NOT EXISTS _tool_github_connections (id BIGINT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(100), endpoint VARCHAR(255), token TEXT, created_at DATETIME(3))",
];

struct Sim {
    config: Config,
    pool: mysql_async::Pool,
    /// `Some(reason)` while API calls get 428.
    gate: Mutex<Option<&'static str>>,
    lock_id: u64,
}

async fn pending(
    conn: &mut mysql_async::Conn,
    release: &Release,
) -> anyhow::Result<(usize, Vec<&'static catalog::Script>)> {
    let done: Vec<(u64, String)> = conn
        .query("SELECT script_version, script_name FROM _devlake_migration_history")
        .await
        .context("cannot read _devlake_migration_history")?;
    let pending = release
        .scripts()
        .filter(|s| !done.iter().any(|(v, n)| *v == s.version && n == s.name))
        .collect();
    Ok((done.len(), pending))
}

async fn migrate(sim: &Sim) -> anyhow::Result<()> {
    let mut conn = sim.pool.get_conn().await.context("cannot connect")?;
    let (_, scripts) = pending(&mut conn, &sim.config.release).await?;
    println!("[Execute] pending scripts: {}", scripts.len());
    for s in scripts {
        if sim.config.fail_script == Some(s.version) {
            bail!(
                "proceed-db-migration failed: Error 1060: Duplicate column name 'updated_date' (script {}_{}; earlier scripts stay applied)",
                s.version,
                s.name
            );
        }
        conn.query_drop(s.sql)
            .await
            .with_context(|| format!("script {}_{} failed", s.version, s.name))?;
        conn.exec_drop(
            "INSERT INTO _devlake_migration_history (script_version, script_name, comment, created_at) VALUES (?, ?, '', NOW(3))",
            (s.version, s.name),
        )
        .await?;
    }
    conn.exec_drop(
        "UPDATE _devlake_locking_history SET succeeded = 1, updated_at = NOW(3) WHERE id = ?",
        (sim.lock_id,),
    )
    .await?;
    println!("[Execute] pending scripts: 0");
    Ok(())
}

/// Start, migrate or gate, and serve until SIGTERM/SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    println!("DevLake {} (simulator) starting", config.release.tag);
    let opts = mysql_async::Opts::from_url(&connection_url(&config.db_url))
        .map_err(|e| anyhow!("invalid DB_URL: {e}"))?;
    let pool = mysql_async::Pool::new(opts);
    let mut conn = pool
        .get_conn()
        .await
        .context("cannot connect to the database")?;
    for sql in BASE {
        conn.query_drop(*sql)
            .await
            .context("cannot create the base tables")?;
    }
    conn.exec_drop(
        "INSERT INTO _devlake_locking_history (host_name, version, succeeded, created_at, updated_at) VALUES ('sim', ?, 0, NOW(3), NOW(3))",
        (config.release.tag,),
    )
    .await?;
    let lock_id = conn.last_insert_id().unwrap_or(0);
    let (history, scripts) = pending(&mut conn, &config.release).await?;
    drop(conn);
    let sim = Arc::new(Sim {
        gate: Mutex::new(None),
        config,
        pool,
        lock_id,
    });
    if !scripts.is_empty() && history > 0 && !sim.config.force_migration {
        println!(
            "waiting for migration confirmation: {} pending script(s)",
            scripts.len()
        );
        *sim.gate.lock().await = Some(GATE_MESSAGE);
    } else {
        migrate(&sim).await?;
    }
    let app = Router::new()
        .route("/ping", get(ping))
        .route("/ready", get(ping))
        .route("/version", get(version))
        .route("/proceed-db-migration", get(proceed))
        .route("/plugins/github/connections/{id}", get(connection))
        .with_state(sim.clone());
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

async fn gated(sim: &Sim) -> Option<Response> {
    sim.gate.lock().await.map(|message| {
        json(
            StatusCode::PRECONDITION_REQUIRED,
            serde_json::json!({ "message": message }),
        )
    })
}

async fn ping(State(sim): State<Arc<Sim>>) -> Response {
    match gated(&sim).await {
        Some(r) => r,
        None => (StatusCode::OK, "pong").into_response(),
    }
}

async fn version(State(sim): State<Arc<Sim>>) -> Response {
    match gated(&sim).await {
        Some(r) => r,
        None => json(
            StatusCode::OK,
            serde_json::json!({ "version": format!("{}@sim", sim.config.release.tag) }),
        ),
    }
}

async fn proceed(State(sim): State<Arc<Sim>>) -> Response {
    let mut gate = sim.gate.lock().await;
    if gate.is_none() {
        return json(
            StatusCode::OK,
            serde_json::json!({ "message": "no migration needed" }),
        );
    }
    *gate = Some("Database migration is in progress...");
    drop(gate);
    match migrate(&sim).await {
        Ok(()) => {
            *sim.gate.lock().await = None;
            json(
                StatusCode::OK,
                serde_json::json!({ "message": "migration done" }),
            )
        }
        Err(e) => {
            *sim.gate.lock().await = Some(GATE_MESSAGE);
            json(
                StatusCode::INTERNAL_SERVER_ERROR,
                serde_json::json!({ "message": format!("{e:#}") }),
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
    let row: Result<Option<(String, String)>, _> = async {
        let mut conn = sim.pool.get_conn().await?;
        conn.exec_first(
            "SELECT name, token FROM _tool_github_connections WHERE id = ?",
            (id,),
        )
        .await
    }
    .await;
    match row {
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
            serde_json::json!({ "message": e.to_string() }),
        ),
    }
}

/// Insert a GitHub connection (token encrypted with `secret`) and `n` repos and pull requests.
pub async fn seed(conn: &mut mysql_async::Conn, secret: &str, n: usize) -> anyhow::Result<()> {
    conn.exec_drop(
        "INSERT INTO _tool_github_connections (name, endpoint, token, created_at) VALUES ('github', 'https://api.github.com/', ?, NOW(3))",
        (crypto::encrypt(secret, "ghp_simulatedtoken"),),
    )
    .await?;
    for i in 0..n {
        conn.exec_drop(
            "INSERT INTO repos (id, name, url) VALUES (?, ?, ?)",
            (
                format!("github:GithubRepo:1:{i}"),
                format!("org/repo{i}"),
                format!("https://github.com/org/repo{i}"),
            ),
        )
        .await?;
        conn.exec_drop(
            "INSERT INTO pull_requests (id, base_repo_id, title, status) VALUES (?, ?, ?, 'MERGED')",
            (format!("github:GithubPullRequest:1:{i}"), format!("github:GithubRepo:1:{i}"), format!("PR {i}")),
        )
        .await?;
    }
    Ok(())
}
