//! The OpenMetadata server: the start-up migration check (product-facts §3.2), then
//! `GET /api/v1/version` on the application port and `/healthcheck` on the admin port (§3.1,
//! §3.3), plus roles, policies and bots for the post-upgrade check.

use std::sync::Arc;

use anyhow::{Context, bail};
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::sync::Mutex;

use super::catalog::{Era, Release};
use super::migrate::{self, DbState};
use super::store::Store;

/// What 1.x and later say when migrations are pending (`validateMigrationsForServer`).
pub const PENDING_MESSAGE: &str = "There are pending migrations to be run on the database. Please backup your data and run `./bootstrap/openmetadata-ops.sh migrate`. You can find more information on upgrading OpenMetadata at https://docs.open-metadata.org/deployment/upgrade ";

/// What a Flyway-era server says on a database Flyway never migrated.
pub const NO_FLYWAY_MESSAGE: &str = "Could not validate Flyway migrations in the database. Make sure you have run `./bootstrap/openmetadata-ops.sh migrate` at least once.";

/// The start-up check: refuse a database migrated by a newer release ("Migration Mismatch",
/// #24434), one Flyway never ran on (Flyway era), or one with pending migrations.
pub fn check_start(release: &Release, st: &DbState) -> anyhow::Result<()> {
    let unexpected = migrate::unexpected(release, st);
    if !unexpected.is_empty() {
        bail!(
            "java.lang.IllegalStateException: Migration Mismatch: Missing migrations that were not executed []. Unexpected executed migrations [{}]. The database was migrated by a newer OpenMetadata than {} (whose newest migration is {}); restore the backup taken before that upgrade or run the newer release.",
            unexpected.join(", "),
            release.version,
            release.newest_native
        );
    }
    if release.era == Era::Flyway && st.flyway.is_empty() {
        bail!("java.lang.IllegalStateException: {NO_FLYWAY_MESSAGE}");
    }
    if !migrate::pending(release, st).is_empty() {
        bail!("java.lang.IllegalStateException: {PENDING_MESSAGE}");
    }
    Ok(())
}

struct Served {
    release: Release,
    started: i64,
    store: Mutex<Store>,
}

/// Check the database, then serve on 127.0.0.1 `port` and `admin_port` until SIGTERM/SIGINT.
pub async fn run(
    release: Release,
    mut store: Store,
    port: u16,
    admin_port: u16,
) -> anyhow::Result<()> {
    println!("Starting OpenMetadata {} (simulator)", release.version);
    let st = migrate::inspect(&mut store).await?;
    check_start(&release, &st)?;
    let served = Arc::new(Served {
        release,
        started: chrono::Utc::now().timestamp_millis(),
        store: Mutex::new(store),
    });
    let app = Router::new()
        .route("/api/v1/version", get(version))
        .route("/api/v1/system/version", get(version))
        .route("/api/v1/roles", get(roles))
        .route("/api/v1/policies", get(policies))
        .route("/api/v1/bots", get(bots))
        .with_state(served.clone());
    let admin = Router::new()
        .route("/healthcheck", get(healthcheck))
        .route("/ping", get(|| async { "pong" }))
        .with_state(served.clone());
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .with_context(|| format!("cannot listen on 127.0.0.1:{port}"))?;
    let admin_listener = tokio::net::TcpListener::bind(("127.0.0.1", admin_port))
        .await
        .with_context(|| format!("cannot listen on 127.0.0.1:{admin_port}"))?;
    println!(
        "OpenMetadata {} is serving on 127.0.0.1:{port} (admin 127.0.0.1:{admin_port})",
        served.release.version
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let api = axum::serve(listener, app).with_graceful_shutdown(wait(stop_rx.clone()));
    let adm = axum::serve(admin_listener, admin).with_graceful_shutdown(wait(stop_rx));
    let signals = async move {
        shutdown().await;
        let _ = stop_tx.send(true);
    };
    let (a, b, ()) = tokio::join!(api, adm, signals);
    a.context("the API server failed")?;
    b.context("the admin server failed")?;
    println!("OpenMetadata stopped");
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

fn json(status: StatusCode, body: serde_json::Value) -> Response {
    (status, axum::Json(body)).into_response()
}

async fn version(State(s): State<Arc<Served>>) -> Response {
    json(
        StatusCode::OK,
        serde_json::json!({
            "version": s.release.version,
            "revision": s.release.revision(),
            "timestamp": s.started,
        }),
    )
}

async fn healthcheck(State(s): State<Arc<Served>>) -> Response {
    let db = s.store.lock().await.scalar("SELECT 1").await;
    let healthy = db.is_ok();
    json(
        if healthy {
            StatusCode::OK
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        },
        serde_json::json!({
            "OpenMetadataServerHealthCheck": { "healthy": healthy, "duration": 0 },
            "deadlocks": { "healthy": true, "duration": 0 },
            "database": { "healthy": healthy, "message": db.err().map(|e| format!("{e:#}")) },
        }),
    )
}

/// `{"data": [{id, name, …}], "paging": {"total": n}}` from an entity table.
async fn list(s: &Served, table: &str, extra: &str) -> Response {
    let mut store = s.store.lock().await;
    let sql = format!("SELECT id, name{extra} FROM {table} WHERE deleted = FALSE ORDER BY name");
    match store.rows(&sql).await {
        Ok(rows) => {
            let data: Vec<serde_json::Value> = rows
                .into_iter()
                .map(|r| {
                    let mut it = r.into_iter();
                    let id = it.next().flatten();
                    let name = it.next().flatten();
                    let mut v = serde_json::json!({ "id": id, "name": name });
                    if !extra.is_empty() {
                        v["botUser"] = serde_json::json!(it.next().flatten());
                    }
                    v
                })
                .collect();
            json(
                StatusCode::OK,
                serde_json::json!({ "paging": { "total": data.len() }, "data": data }),
            )
        }
        Err(e) => json(
            StatusCode::INTERNAL_SERVER_ERROR,
            serde_json::json!({ "code": 500, "message": format!("{e:#}") }),
        ),
    }
}

async fn roles(State(s): State<Arc<Served>>) -> Response {
    list(&s, "role_entity", "").await
}

async fn policies(State(s): State<Arc<Served>>) -> Response {
    list(&s, "policy_entity", "").await
}

async fn bots(State(s): State<Arc<Served>>) -> Response {
    list(
        &s,
        "bot_entity",
        ", (SELECT MIN(u.name) FROM entity_relationship r JOIN user_entity u ON u.id = r.toId WHERE r.fromId = bot_entity.id AND r.fromEntity = 'bot' AND r.toEntity = 'user')",
    )
    .await
}
