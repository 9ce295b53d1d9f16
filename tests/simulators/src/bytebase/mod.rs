//! A Bytebase simulator: behaves as Bytebase does at upgrade time with an external PostgreSQL
//! metadata database or its embedded one (product-facts §1.2–§1.7). Test infrastructure, not
//! Bytebase.
//!
//! At start it reads `PG_URL` (external store) or, without it, runs the embedded store under
//! `--data DIR` ([`embedded`]: a real PostgreSQL under `DIR/pgdata` on `--port + 2`), installs a fresh schema or migrates the existing one from its
//! release's migration list (each file in its own transaction under advisory lock 1002, the
//! version row inserted in the same transaction), converts history between eras exactly where
//! the real releases do, refuses where they refuse, starts silently on a newer schema (no
//! downgrade check), and then serves `/healthz` and the actuator. `BB_SIM_FAIL_MIGRATION=<v>`
//! makes migration `<v>` fail after earlier files have committed; `BB_SIM_FAIL_START_IF_EXISTS=<file>`
//! makes every start fail while that file exists (a broken host, for rollback-failure tests);
//! `BB_SIM_HEALTH_404_IF_EXISTS=<file>` makes `/healthz` answer 404 while that file exists (an
//! unhealthy service, for preflight tests).

pub mod catalog;
pub mod embedded;
mod migrate;

use std::sync::Arc;

use anyhow::{Context, anyhow, bail};
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use clap::Parser;
use semver::Version;
use tokio_postgres::{Client, NoTls};

use catalog::Release;

/// Command-line arguments, as Bytebase takes them plus the simulated version.
#[derive(Debug, Parser)]
#[command(name = "bytebase-sim", disable_version_flag = true)]
struct Args {
    /// The Bytebase release to simulate.
    #[arg(long)]
    version: String,
    /// HTTP port.
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// The data directory: without `PG_URL`, the embedded store lives in `pgdata/` under it.
    #[arg(long)]
    data: Option<std::path::PathBuf>,
    /// Reported by the actuator.
    #[arg(long)]
    external_url: Option<String>,
}

/// Where the metadata lives (product-facts §1.2).
#[derive(Debug, Clone)]
pub enum Store {
    /// An external PostgreSQL (`PG_URL`).
    External(String),
    /// The embedded PostgreSQL under this `--data` directory.
    Embedded(std::path::PathBuf),
}

/// How to run the simulator.
#[derive(Debug, Clone)]
pub struct Options {
    /// The simulated release.
    pub version: String,
    /// HTTP port on 127.0.0.1.
    pub port: u16,
    /// Where the metadata lives.
    pub store: Store,
    /// Make this migration version fail (`BB_SIM_FAIL_MIGRATION`).
    pub fail_migration: Option<String>,
    /// The external URL the actuator reports.
    pub external_url: String,
}

impl Options {
    /// From `--version V --port P [--data D] [--external-url U]`, `PG_URL` and
    /// `BB_SIM_FAIL_MIGRATION`.
    pub fn from_args_and_env(args: &[String]) -> anyhow::Result<Options> {
        let parsed = Args::try_parse_from(
            std::iter::once("bytebase-sim".to_string()).chain(args.iter().cloned()),
        )
        .map_err(|e| anyhow!("{e}"))?;
        let store = match (
            std::env::var("PG_URL").ok().filter(|u| !u.is_empty()),
            parsed.data.clone(),
        ) {
            (Some(url), _) => Store::External(url),
            (None, Some(dir)) => Store::Embedded(dir),
            (None, None) => bail!(
                "neither PG_URL nor --data is set: Bytebase with external PostgreSQL reads its metadata URL from PG_URL; the embedded store lives under --data DIR"
            ),
        };
        Ok(Options {
            external_url: parsed
                .external_url
                .unwrap_or_else(|| format!("http://127.0.0.1:{}", parsed.port)),
            version: parsed.version,
            port: parsed.port,
            store,
            fail_migration: std::env::var("BB_SIM_FAIL_MIGRATION")
                .ok()
                .filter(|v| !v.is_empty()),
        })
    }
}

/// The simulated releases.
pub fn catalog() -> Vec<Release> {
    catalog::releases()
}

struct Served {
    release: Release,
    external_url: String,
    _client: Client,
}

async fn connect(url: &str) -> anyhow::Result<Client> {
    let mut last = None;
    for _ in 0..50 {
        match tokio_postgres::connect(url, NoTls).await {
            Ok((client, connection)) => {
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                return Ok(client);
            }
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    Err(anyhow!(
        "cannot connect to the metadata database: {}",
        last.map(|e| e.to_string()).unwrap_or_default()
    ))
}

/// Migrate, then serve until SIGTERM or SIGINT. An error means Bytebase would have exited.
pub async fn run(opts: Options) -> anyhow::Result<()> {
    if let Ok(marker) = std::env::var("BB_SIM_FAIL_START_IF_EXISTS")
        && std::path::Path::new(&marker).exists()
    {
        bail!(
            "cannot start: {marker} exists (BB_SIM_FAIL_START_IF_EXISTS simulates a broken host)"
        );
    }
    let release = catalog::find(&opts.version).ok_or_else(|| {
        let known: Vec<String> = catalog::releases()
            .iter()
            .map(|r| r.version.to_string())
            .collect();
        anyhow!(
            "no simulated Bytebase release {} (simulated: {})",
            opts.version,
            known.join(", ")
        )
    })?;
    println!(
        "Starting Bytebase {}(sim{})...",
        release.version,
        release.version.to_string().replace('.', "")
    );
    let (url, embedded) = match &opts.store {
        Store::External(url) => (url.clone(), None),
        Store::Embedded(dir) => {
            println!("-----Embedded Postgres BEGIN-----");
            let store =
                embedded::Embedded::start(dir, embedded::datastore_port(opts.port)?).await?;
            println!("-----Embedded Postgres END-----");
            (store.url(embedded::USER), Some(store))
        }
    };
    let mut client = connect(&url).await?;
    let fail = opts
        .fail_migration
        .as_deref()
        .map(Version::parse)
        .transpose()
        .context("BB_SIM_FAIL_MIGRATION is not a version")?;
    let recorded = migrate::migrate(&mut client, &release, fail.as_ref()).await?;
    println!("Current schema version: {recorded}");
    let state = Arc::new(Served {
        release: release.clone(),
        external_url: opts.external_url.clone(),
        _client: client,
    });
    let actuator = if release.version.major >= 2 {
        "/v1/actuator/info"
    } else {
        "/api/actuator/info"
    };
    let unhealthy_marker = std::env::var_os("BB_SIM_HEALTH_404_IF_EXISTS");
    let healthz = get(move || {
        let marker = unhealthy_marker.clone();
        async move {
            match marker {
                Some(m) if std::path::Path::new(&m).exists() => {
                    (axum::http::StatusCode::NOT_FOUND, "404 page not found")
                }
                _ => (axum::http::StatusCode::OK, "OK"),
            }
        }
    });
    let app = Router::new()
        .route("/healthz", healthz)
        .route(actuator, get(actuator_info))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", opts.port))
        .await
        .with_context(|| format!("cannot listen on 127.0.0.1:{}", opts.port))?;
    println!(
        "Bytebase {} is serving on 127.0.0.1:{}",
        release.version, opts.port
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown())
        .await
        .context("the HTTP server failed")?;
    // The embedded server stops when Bytebase stops (fast shutdown, waited for).
    if let Some(mut store) = embedded {
        store.stop();
    }
    println!("Bytebase stopped");
    Ok(())
}

async fn shutdown() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

async fn actuator_info(State(state): State<Arc<Served>>) -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({
        "version": state.release.version.to_string(),
        "gitCommit": format!("sim{}", state.release.version.to_string().replace('.', "")),
        "externalUrl": state.external_url,
        "replicaCount": 1,
        "readonly": false,
        "saas": false,
    }))
}

/// Insert `n` extra projects, instances, databases and issues, as users create them.
pub async fn seed_user_rows(client: &Client, n: usize) -> anyhow::Result<()> {
    for i in 0..n {
        let project = format!("project-{i}");
        client
            .execute(
                "INSERT INTO project (resource_id, name, key) VALUES ($1, $2, $3)",
                &[&project, &format!("Project {i}"), &format!("P{i}")],
            )
            .await
            .context("insert project")?;
        let instance = format!("instance-{i}");
        client
            .execute(
                "INSERT INTO instance (resource_id, environment, name, engine) VALUES ($1, 'prod', $2, 'POSTGRES')",
                &[&instance, &format!("Instance {i}")],
            )
            .await
            .context("insert instance")?;
        client
            .execute(
                "INSERT INTO db (instance, name) VALUES ($1, $2)",
                &[&instance, &format!("app_{i}")],
            )
            .await
            .context("insert db")?;
        client
            .execute(
                "INSERT INTO issue (project_id, title, status, created_ts) \
                 SELECT id, $2, 'OPEN', 1700000000 FROM project WHERE resource_id = $1",
                &[&project, &format!("Change schema {i}")],
            )
            .await
            .context("insert issue")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
