//! A KWDB (KaiwuDB) simulator: behaves as `kwbase` does at upgrade time (product-facts §2).
//! Test infrastructure, not KaiwuDB.
//!
//! The binary mirrors the `kwbase` CLI (`version`, `start-single-node`, `start`) so the documented
//! `docker run … ./kwbase start-single-node --insecure --listen-addr=… --http-addr=… --store=…`
//! works verbatim. It speaks the PostgreSQL wire protocol on `--listen-addr`; data lives in a
//! backing PostgreSQL database (`KWDB_SIM_BACKING_URL`), one schema per KWDB database, with the
//! simulator's own catalog in schema `kwdb_sim`. `--store DIR` holds `KWDB_STORE`, recording the
//! store format (2 for 2.x, 3 for 3.x) and the version that last opened it, so starts refuse a
//! format change (2.x → 3.x in place), a downgrade, and the in-place paths the release notes
//! exclude; `KWDB_SIM_FAIL_UPGRADE_TO=<version>` crashes an in-place upgrade to that version
//! before the store is touched. EXPORT/IMPORT (CSV, users, cluster settings) follow §2.7.

pub mod catalog;
pub mod cli;
pub mod export;
pub mod session;
pub mod statements;
pub mod wire;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, anyhow, bail};
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};

use catalog::Release;

/// The store marker file inside `--store`.
pub const STORE_FILE: &str = "KWDB_STORE";

/// What the simulator was asked to do.
#[derive(Debug, Clone)]
pub enum Command {
    /// `kwbase version`.
    Version(Release),
    /// `kwbase start-single-node` / `kwbase start`.
    Start(Config),
    /// `kwbase sql`, `kwbase node status`, `kwbase node upgrade` (clients of a running node).
    Client(cli::Client),
}

/// Resolved configuration of a start.
#[derive(Debug, Clone)]
pub struct Config {
    /// The simulated release.
    pub release: Release,
    /// `--listen-addr` (SQL), default `0.0.0.0:26257`.
    pub listen_addr: String,
    /// `--http-addr`, default `0.0.0.0:8080`.
    pub http_addr: String,
    /// `--store`.
    pub store: PathBuf,
    /// `--external-io-dir`, default `<store>/extern`.
    pub external_io_dir: PathBuf,
    /// `KWDB_SIM_BACKING_URL`.
    pub backing_url: String,
    /// `KWDB_SIM_FAIL_UPGRADE_TO`.
    pub fail_upgrade_to: Option<(u64, u64, u64)>,
    /// `KWDB_SIM_IMPORT_FAULT`.
    pub import_fault: Option<ImportFault>,
    /// `KWDB_SIM_RANGES`: unavailable and under-replicated ranges reported.
    pub ranges: (i64, i64),
    /// `--insecure` given (secure mode is accepted but served in plaintext).
    pub insecure: bool,
}

/// Flags that take a value (documented `kwbase start` flags, §2.5).
const VALUE_FLAGS: &[&str] = &[
    "listen-addr",
    "http-addr",
    "store",
    "s",
    "external-io-dir",
    "certs-dir",
    "cache",
    "max-sql-memory",
    "advertise-addr",
    "brpc-addr",
    "join",
    "restful-port",
    "restful-timeout",
    "sim-version",
    "locality",
    "attrs",
];
/// Flags without a value.
const BOOL_FLAGS: &[&str] = &[
    "insecure",
    "background",
    "upgrade-complete",
    "use-raft-store",
];

fn parse_flags(args: &[String]) -> anyhow::Result<Vec<(String, Option<String>)>> {
    parse_flags_with(args, VALUE_FLAGS, BOOL_FLAGS)
}

/// `--flag=value`, `--flag value`, `-f value` and boolean flags.
pub(crate) fn parse_flags_with(
    args: &[String],
    value_flags: &[&str],
    bool_flags: &[&str],
) -> anyhow::Result<Vec<(String, Option<String>)>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        let body = a
            .strip_prefix("--")
            .or_else(|| a.strip_prefix('-'))
            .ok_or_else(|| anyhow!("unexpected argument {a:?}"))?;
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (body.to_string(), None),
        };
        if bool_flags.contains(&name.as_str()) {
            out.push((name, inline));
        } else if value_flags.contains(&name.as_str()) {
            let value = match inline {
                Some(v) => v,
                None => {
                    i += 1;
                    args.get(i)
                        .cloned()
                        .ok_or_else(|| anyhow!("flag needs an argument: --{name}"))?
                }
            };
            out.push((name, Some(value)));
        } else {
            bail!("unknown flag: --{name}");
        }
        i += 1;
    }
    Ok(out)
}

fn release_from(flags: &[(String, Option<String>)]) -> anyhow::Result<Release> {
    let text = flags
        .iter()
        .rev()
        .find(|(n, _)| n == "sim-version")
        .and_then(|(_, v)| v.clone())
        .or_else(|| std::env::var("KWDB_SIM_VERSION").ok())
        .ok_or_else(|| {
            anyhow!(
                "no KaiwuDB version to simulate: set KWDB_SIM_VERSION (e.g. 3.1.0) or --sim-version"
            )
        })?;
    catalog::find(&text).ok_or_else(|| {
        anyhow!(
            "no simulated KaiwuDB release {text:?} (simulated: {})",
            catalog::RELEASES
                .iter()
                .map(|r| r.tag())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

impl Command {
    /// From the command line (without the program name) and the environment.
    pub fn from_args_and_env(args: &[String]) -> anyhow::Result<Command> {
        let (sub, rest) = args
            .split_first()
            .ok_or_else(|| anyhow!("usage: kwbase version | kwbase start-single-node --insecure --listen-addr=HOST:PORT --http-addr=HOST:PORT --store=DIR"))?;
        if matches!(sub.as_str(), "sql" | "node") {
            return cli::Client::from_args_and_env(sub, rest).map(Command::Client);
        }
        let flags = parse_flags(rest)?;
        let release = release_from(&flags)?;
        match sub.as_str() {
            "version" => Ok(Command::Version(release)),
            "start-single-node" | "start" => {
                let get = |name: &str| {
                    flags
                        .iter()
                        .rev()
                        .find(|(n, _)| n == name)
                        .and_then(|(_, v)| v.clone())
                };
                let store = get("store")
                    .or_else(|| get("s"))
                    .ok_or_else(|| anyhow!("--store is required by the simulator"))?;
                // `--store=path=/x,attrs=ssd` or `--store=/x`.
                let store = store
                    .split(',')
                    .find_map(|p| p.strip_prefix("path="))
                    .map(str::to_string)
                    .unwrap_or(store);
                let store = PathBuf::from(store);
                let backing_url = std::env::var("KWDB_SIM_BACKING_URL")
                    .ok()
                    .filter(|v| !v.is_empty())
                    .ok_or_else(|| {
                        anyhow!("KWDB_SIM_BACKING_URL is required: the postgres:// URL of the database that holds the simulator's data")
                    })?;
                if !(backing_url.starts_with("postgres://")
                    || backing_url.starts_with("postgresql://"))
                {
                    bail!("KWDB_SIM_BACKING_URL must be a postgres:// URL");
                }
                let fail_upgrade_to = match std::env::var("KWDB_SIM_FAIL_UPGRADE_TO") {
                    Ok(v) if !v.is_empty() => {
                        Some(catalog::parse_version(&v).ok_or_else(|| {
                            anyhow!("KWDB_SIM_FAIL_UPGRADE_TO={v:?} is not a version")
                        })?)
                    }
                    _ => None,
                };
                let import_fault = match std::env::var("KWDB_SIM_IMPORT_FAULT") {
                    Ok(v) if !v.is_empty() => Some(ImportFault::parse(&v)?),
                    _ => None,
                };
                let ranges = match std::env::var("KWDB_SIM_RANGES") {
                    Ok(v) if !v.is_empty() => parse_ranges(&v)?,
                    _ => (0, 0),
                };
                Ok(Command::Start(Config {
                    import_fault,
                    ranges,
                    release,
                    listen_addr: get("listen-addr").unwrap_or_else(|| "0.0.0.0:26257".into()),
                    http_addr: get("http-addr").unwrap_or_else(|| "0.0.0.0:8080".into()),
                    external_io_dir: get("external-io-dir")
                        .map(PathBuf::from)
                        .unwrap_or_else(|| store.join("extern")),
                    store,
                    backing_url,
                    fail_upgrade_to,
                    insecure: flags.iter().any(|(n, _)| n == "insecure"),
                }))
            }
            other => {
                bail!(
                    "unknown command {other:?} (simulated: version, start-single-node, start, sql, node status, node upgrade)"
                )
            }
        }
    }
}

/// The library entry point of `kwdb-sim` and `upshift simulate kwdb`.
pub fn main_with_args(args: &[String]) -> ExitCode {
    let outcome = Command::from_args_and_env(args).and_then(|cmd| match cmd {
        Command::Version(r) => {
            print!("{}", r.version_text());
            Ok(())
        }
        Command::Start(config) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)?
            .block_on(run(config)),
        Command::Client(client) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)?
            .block_on(client.run()),
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let msg = format!("{e:#}");
            if matches!(
                args.first().map(String::as_str),
                Some("start" | "start-single-node")
            ) {
                log('F', &msg);
            }
            eprintln!("ERROR: {msg}");
            ExitCode::from(1)
        }
    }
}

/// A server log line in kwbase's style (`I251201 18:40:00.000000 1 msg`).
pub fn log(level: char, msg: &str) {
    let now = chrono::Utc::now();
    println!("{level}{} 1 {msg}", now.format("%y%m%d %H:%M:%S%.6f"));
}

/// The content of `<store>/KWDB_STORE`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoreMarker {
    /// 2 (1.x/2.x engine) or 3 (the 3.x storage engine).
    pub store_format: u32,
    /// The product version that last opened the store, `V<x.y.z>`.
    pub version: String,
    /// The version that created it.
    pub created_by: String,
    /// A random id of this store; the backing database records which store it belongs to.
    #[serde(default)]
    pub store_id: Option<String>,
    /// The backing PostgreSQL database holding this store's rows (the `KWDB_SIM_BACKING_URL`
    /// database, or a sibling created for a new store when that one belongs to another store).
    #[serde(default)]
    pub backing_database: Option<String>,
}

fn new_store_id(store: &Path) -> String {
    use sha2::Digest;
    let seed = format!(
        "{}:{}:{:?}",
        store.display(),
        std::process::id(),
        std::time::SystemTime::now()
    );
    sha2::Sha256::digest(seed.as_bytes())[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `url` with its database replaced by `db`.
pub fn url_with_database(url: &str, db: &str) -> anyhow::Result<String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| anyhow!("invalid backing URL"))?;
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, format!("?{q}")),
        None => (rest, String::new()),
    };
    let authority = rest.split_once('/').map(|(a, _)| a).unwrap_or(rest);
    Ok(format!("{scheme}://{authority}/{db}{query}"))
}

/// The database a URL names (`postgres` when none).
pub fn url_database(url: &str) -> String {
    url.split_once("://")
        .map(|(_, r)| r)
        .and_then(|r| r.split('?').next())
        .and_then(|r| r.split_once('/'))
        .map(|(_, d)| d.to_string())
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| "postgres".into())
}

/// Tie the store to a backing database, so a new store never sees another store's rows: the
/// URL's database when it is unclaimed or already this store's, else (for a new store) a
/// sibling database `<db>_<store_id>` created on the same server. Returns (url, database).
async fn bind_backing(
    base_url: &str,
    store_id: &str,
    wanted: Option<&str>,
    fresh_store: bool,
) -> anyhow::Result<(String, String)> {
    let base_db = url_database(base_url);
    let db = wanted.unwrap_or(&base_db).to_string();
    let url = url_with_database(base_url, &db)?;
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .with_context(|| {
            format!("cannot connect to the backing database {db} (KWDB_SIM_BACKING_URL)")
        })?;
    let task = tokio::spawn(conn);
    client
        .batch_execute(
            "CREATE SCHEMA IF NOT EXISTS kwdb_sim;
             CREATE TABLE IF NOT EXISTS kwdb_sim.store (id text PRIMARY KEY, bound_at timestamptz NOT NULL DEFAULT now());",
        )
        .await
        .context("cannot prepare the backing database")?;
    let owner: Option<String> = client
        .query_opt("SELECT id FROM kwdb_sim.store LIMIT 1", &[])
        .await?
        .map(|r| r.get(0));
    let result = match owner {
        None => {
            client
                .execute("INSERT INTO kwdb_sim.store (id) VALUES ($1)", &[&store_id])
                .await?;
            Ok((url, db))
        }
        Some(o) if o == store_id => Ok((url, db)),
        Some(o) if fresh_store && wanted.is_none() => {
            let sibling = format!("{base_db}_{store_id}");
            log(
                'I',
                &format!(
                    "backing database {base_db} holds the rows of store {o}; this new store {store_id} keeps its rows in {sibling}"
                ),
            );
            client
                .batch_execute(&format!("CREATE DATABASE {}", statements::qi(&sibling)))
                .await
                .with_context(|| format!("cannot create the backing database {sibling}"))?;
            drop(client);
            task.abort();
            return Box::pin(bind_backing(base_url, store_id, Some(&sibling), true)).await;
        }
        Some(o) => Err(anyhow!(
            "backing database {db} belongs to store {o}, not to this store ({store_id}): the store directory and the backing database do not belong together"
        )),
    };
    drop(client);
    task.abort();
    result
}

/// Read the store marker, if the store was initialised.
pub fn read_store(store: &Path) -> anyhow::Result<Option<StoreMarker>> {
    let path = store.join(STORE_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .with_context(|| format!("{} is corrupt", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn write_store(store: &Path, marker: &StoreMarker) -> anyhow::Result<()> {
    let path = store.join(STORE_FILE);
    let tmp = store.join(format!("{STORE_FILE}.tmp"));
    std::fs::write(&tmp, serde_json::to_string_pretty(marker)? + "\n")
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))
}

/// Check the store against the binary: `Ok(Some(old))` for an in-place upgrade from `old`.
pub fn check_store(
    release: &Release,
    store: &Path,
    marker: Option<&StoreMarker>,
) -> anyhow::Result<Option<(u64, u64, u64)>> {
    let Some(m) = marker else { return Ok(None) };
    let recorded = catalog::parse_version(&m.version).ok_or_else(|| {
        anyhow!(
            "{} records an unreadable version {:?}",
            STORE_FILE,
            m.version
        )
    })?;
    if m.store_format != release.store_format() && release.version > recorded {
        bail!(
            "store {} has store format {} (written by KaiwuDB {}), but KaiwuDB {} uses store format {}: the storage engine changed in V3.0.0 and v1.x/v2.x stores cannot be upgraded in place; deploy a new instance and migrate with EXPORT/IMPORT",
            store.display(),
            m.store_format,
            m.version,
            release.tag(),
            release.store_format()
        );
    }
    if release.version < recorded {
        bail!(
            "store {} was last opened by KaiwuDB {}; KaiwuDB {} is older and cannot open it: after upgrade, you cannot simply downgrade (reinstall the old version and restore a backup taken before the upgrade)",
            store.display(),
            m.version,
            release.tag()
        );
    }
    if release.version == recorded {
        return Ok(None);
    }
    if let Some(why) = release.refuses_in_place_from(recorded) {
        bail!("store {}: {why}", store.display());
    }
    Ok(Some(recorded))
}

/// A data fault injected into every `IMPORT DATABASE`, standing in for the upgrade bugs of §2.8
/// so an adapter's verification can be seen to catch them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ImportFault {
    /// `lose-rows=N`: N rows of each table vanish after loading ("!1304 fix: wrong count after
    /// upgrade"); the job still reports every row.
    LoseRows(u64),
    /// `truncate-timestamps`: timestamps lose their sub-second part ("!667 fix: time precision
    /// after version upgrade").
    TruncateTimestamps,
}

impl ImportFault {
    /// `lose-rows=N` or `truncate-timestamps`.
    pub fn parse(v: &str) -> anyhow::Result<ImportFault> {
        if v == "truncate-timestamps" {
            return Ok(ImportFault::TruncateTimestamps);
        }
        v.strip_prefix("lose-rows=")
            .and_then(|n| n.parse().ok())
            .map(ImportFault::LoseRows)
            .ok_or_else(|| {
                anyhow!("KWDB_SIM_IMPORT_FAULT={v:?}: expected lose-rows=N or truncate-timestamps")
            })
    }
}

/// `KWDB_SIM_RANGES=unavailable=N,underreplicated=M` (either part may be left out).
pub fn parse_ranges(v: &str) -> anyhow::Result<(i64, i64)> {
    let mut out = (0, 0);
    for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, n) = part
            .split_once('=')
            .and_then(|(k, n)| Some((k, n.parse::<i64>().ok()?)))
            .ok_or_else(|| {
                anyhow!("KWDB_SIM_RANGES={v:?}: expected unavailable=N,underreplicated=M")
            })?;
        match key {
            "unavailable" => out.0 = n,
            "underreplicated" => out.1 = n,
            _ => bail!("KWDB_SIM_RANGES={v:?}: unknown part {key:?}"),
        }
    }
    Ok(out)
}

/// What the servers share.
#[derive(Debug)]
pub struct Shared {
    /// The simulated release.
    pub release: Release,
    /// The backing database.
    pub backing_url: String,
    /// Where `nodelocal://` paths land.
    pub external_io_dir: PathBuf,
    /// The store directory.
    pub store: PathBuf,
    /// `host:port` of the SQL listener.
    pub sql_addr: String,
    /// `KWDB_SIM_IMPORT_FAULT`.
    pub import_fault: Option<ImportFault>,
    /// `KWDB_SIM_RANGES`: unavailable and under-replicated ranges reported.
    pub ranges: (i64, i64),
}

/// Start: check and record the store, then serve SQL and HTTP until SIGTERM/SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let release = config.release;
    log(
        'I',
        &format!("KaiwuDB {} (simulator) starting", release.tag()),
    );
    if !config.insecure {
        log(
            'W',
            "secure mode (--certs-dir) is accepted but the simulator serves plaintext",
        );
    }
    std::fs::create_dir_all(&config.store)
        .with_context(|| format!("cannot create the store {}", config.store.display()))?;
    let marker = read_store(&config.store)?;
    let upgrade_from = check_store(&release, &config.store, marker.as_ref())?;
    if let Some(from) = upgrade_from {
        log(
            'I',
            &format!(
                "upgrading store {} from {} to {}",
                config.store.display(),
                catalog::tag(from),
                release.tag()
            ),
        );
        if config.fail_upgrade_to == Some(release.version) {
            log(
                'F',
                &format!(
                    "upgrade crash: ts engine partition-interval recorder failed while opening the store written by {} (simulated, see !1336 fix upgrade crash)",
                    catalog::tag(from)
                ),
            );
            bail!(
                "upgrade crash while upgrading {} to {}",
                catalog::tag(from),
                release.tag()
            );
        }
    }

    let store_id = marker
        .as_ref()
        .and_then(|m| m.store_id.clone())
        .unwrap_or_else(|| new_store_id(&config.store));
    let wanted_db = marker.as_ref().and_then(|m| m.backing_database.clone());
    let (backing_url, backing_db) = bind_backing(
        &config.backing_url,
        &store_id,
        wanted_db.as_deref(),
        marker.is_none(),
    )
    .await?;
    let (client, conn) = tokio_postgres::connect(&backing_url, tokio_postgres::NoTls)
        .await
        .context("cannot connect to the backing database")?;
    let conn_task = tokio::spawn(conn);
    session::init_catalog(&client, &release).await?;
    drop(client);
    conn_task.abort();

    let new_marker = match &marker {
        Some(m) => StoreMarker {
            version: release.tag(),
            store_id: Some(store_id.clone()),
            backing_database: Some(backing_db.clone()),
            ..m.clone()
        },
        None => StoreMarker {
            store_format: release.store_format(),
            version: release.tag(),
            created_by: release.tag(),
            store_id: Some(store_id.clone()),
            backing_database: Some(backing_db.clone()),
        },
    };
    if marker.as_ref() != Some(&new_marker) {
        write_store(&config.store, &new_marker)?;
    }
    std::fs::create_dir_all(&config.external_io_dir).with_context(|| {
        format!(
            "cannot create the external IO directory {}",
            config.external_io_dir.display()
        )
    })?;

    // HTTP first: callers wait for the SQL port.
    let http = tokio::net::TcpListener::bind(&config.http_addr)
        .await
        .with_context(|| format!("cannot listen on {}", config.http_addr))?;
    let sql = tokio::net::TcpListener::bind(&config.listen_addr)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen_addr))?;
    let sql_addr = sql.local_addr()?.to_string();
    let http_addr = http.local_addr()?.to_string();
    let shared = Arc::new(Shared {
        release,
        backing_url,
        external_io_dir: config.external_io_dir.clone(),
        store: config.store.clone(),
        sql_addr: sql_addr.clone(),
        import_fault: config.import_fault,
        ranges: config.ranges,
    });
    println!(
        "KaiwuDB node starting at {} (simulator)",
        chrono::Utc::now()
    );
    println!(
        "build:               KaiwuDB {} @ {}",
        release.tag(),
        release.built
    );
    println!("webui:               http://{http_addr}");
    println!("sql:                 postgresql://root@{sql_addr}?sslmode=disable");
    println!("store[0]:            path={}", config.store.display());
    println!(
        "storage engine:      store format {}",
        new_marker.store_format
    );
    println!("nodeID:              1");

    let app = Router::new()
        .route("/health", get(health))
        .route("/_status/vars", get(vars))
        .with_state(shared.clone());
    let sql_task = tokio::spawn(wire::serve(sql, shared.clone()));
    let http_task = tokio::spawn(async move { axum::serve(http, app).await });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        r = sql_task => { r.context("the SQL server failed")??; }
        r = http_task => { r.context("the HTTP server failed")?.context("the HTTP server failed")?; }
    }
    log('I', "received signal, shutting down");
    Ok(())
}

async fn health(State(s): State<Arc<Shared>>) -> Response {
    (
        StatusCode::OK,
        axum::Json(serde_json::json!({
            "nodeId": 1,
            "address": { "networkField": "tcp", "addressField": s.sql_addr },
            "buildTag": s.release.tag(),
        })),
    )
        .into_response()
}

async fn vars(State(s): State<Arc<Shared>>) -> Response {
    (
        StatusCode::OK,
        format!(
            "# TYPE build_timestamp gauge\nbuild_timestamp{{tag=\"{}\",go_version=\"{}\"}} 0\nranges_unavailable 0\nranges_underreplicated 0\n",
            s.release.tag(),
            catalog::GO_VERSION
        ),
    )
        .into_response()
}

/// Seed an instance through its SQL port: a relational database `shop` (tables `customers` and
/// `orders`, `n` rows each, a comment and a grant), a time-series database `sensors` (table
/// `readings`, `n` rows; with `PARTITION INTERVAL 10d` on 2.x), a user `alice` with a password
/// and a cluster setting. Timestamps carry microseconds.
pub async fn seed(client: &tokio_postgres::Client, n: usize) -> anyhow::Result<()> {
    let version: String = client
        .query_one("SELECT version()", &[])
        .await
        .context("SELECT version()")?
        .try_get(0)?;
    let v2 = version.starts_with("KaiwuDB V2.");
    let ts_db = if v2 {
        "CREATE TS DATABASE sensors PARTITION INTERVAL 10d"
    } else {
        "CREATE TS DATABASE sensors"
    };
    client
        .batch_execute(&format!(
            "CREATE DATABASE shop;
             CREATE TABLE shop.customers (id INT PRIMARY KEY, name STRING, email VARCHAR(100), vip BOOL, joined TIMESTAMPTZ);
             CREATE TABLE shop.orders (id INT PRIMARY KEY, customer_id INT NOT NULL, amount FLOAT, note STRING, blob BYTES, created TIMESTAMP);
             COMMENT ON DATABASE shop IS 'the web shop';
             {ts_db};
             CREATE TABLE sensors.readings (ts TIMESTAMP NOT NULL, temperature FLOAT, humidity DOUBLE) TAGS (device_id INT NOT NULL, site VARCHAR(32)) PRIMARY TAGS (device_id);
             CREATE USER alice WITH PASSWORD 'alice-secret-pw';
             GRANT ALL ON DATABASE shop TO alice;
             SET CLUSTER SETTING ts.wal.checkpoint_interval = '5m';"
        ))
        .await
        .context("seeding the schema")?;
    let base = chrono::DateTime::from_timestamp(1_735_689_600, 0)
        .ok_or_else(|| anyhow!("bad base time"))?
        .naive_utc();
    for chunk in (0..n).collect::<Vec<_>>().chunks(200) {
        let mut customers = Vec::new();
        let mut orders = Vec::new();
        let mut readings = Vec::new();
        for &i in chunk {
            let t = base
                + chrono::Duration::seconds(i as i64 * 61)
                + chrono::Duration::microseconds((i as i64 * 123_457) % 1_000_000);
            let ts = t.format("%Y-%m-%d %H:%M:%S%.6f");
            customers.push(format!(
                "({i}, 'customer {i}', {}, {}, '{ts}+00')",
                if i % 7 == 3 {
                    "NULL".to_string()
                } else {
                    format!("'c{i}@example.com'")
                },
                i % 2 == 0
            ));
            orders.push(format!(
                "({i}, {}, {}.25, 'note, \"quoted\" {i}', '\\x{:02x}ff', '{ts}')",
                i % 10,
                i * 3,
                i % 256
            ));
            readings.push(format!(
                "('{ts}', {}.5, {}.125, {}, 'site-{}')",
                20 + i % 15,
                40 + i % 30,
                i % 4,
                i % 3
            ));
        }
        client
            .batch_execute(&format!(
                "INSERT INTO shop.customers VALUES {};
                 INSERT INTO shop.orders VALUES {};
                 INSERT INTO sensors.readings VALUES {};",
                customers.join(", "),
                orders.join(", "),
                readings.join(", ")
            ))
            .await
            .context("seeding rows")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backing_urls_swap_their_database() {
        assert_eq!(
            url_with_database("postgres://u@h:5/kw?sslmode=disable", "kw_1").ok(),
            Some("postgres://u@h:5/kw_1?sslmode=disable".into())
        );
        assert_eq!(
            url_with_database("postgres://u@h:5", "x").ok(),
            Some("postgres://u@h:5/x".into())
        );
        assert_eq!(url_database("postgres://u@h:5/kw?a=b"), "kw");
        assert_eq!(url_database("postgres://u@h:5"), "postgres");
    }

    #[test]
    fn flags_take_both_forms_and_unknown_ones_fail() {
        let f = parse_flags(&[
            "--store=/a".into(),
            "--listen-addr".into(),
            "0.0.0.0:1".into(),
            "--insecure".into(),
            "-s".into(),
            "path=/b,attrs=ssd".into(),
        ])
        .expect("flags");
        assert_eq!(f.len(), 4);
        assert_eq!(f[1], ("listen-addr".into(), Some("0.0.0.0:1".into())));
        assert!(parse_flags(&["--bogus".into()]).is_err());
        assert!(parse_flags(&["--store".into()]).is_err());
    }
}
