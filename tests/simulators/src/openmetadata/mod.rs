//! An OpenMetadata simulator: behaves as OpenMetadata's server and its
//! `./bootstrap/openmetadata-ops.sh` do at upgrade time (product-facts §3), on MySQL/MariaDB or
//! PostgreSQL. Test infrastructure, not OpenMetadata.
//!
//! `openmetadata-sim --version V <command>` with the commands `migrate [--force]`, `validate`,
//! `changelog`, `info`, `repair`, `recover`, `check-connection` and `server [--port P]
//! [--admin-port A]`; the database comes from `DB_SCHEME`, `DB_HOST`, `DB_PORT`, `DB_USER`,
//! `DB_USER_PASSWORD`, `OM_DATABASE`, `DB_PARAMS`, and `FERNET_KEY` must be set.
//! `OM_SIM_FAIL_MIGRATION=<version>` makes that native migration's DataMigration fail after its
//! SchemaChanges ran.

pub mod catalog;
pub mod migrate;
pub mod server;
pub mod store;

use std::process::ExitCode;

use anyhow::{Context, anyhow, bail};
use clap::{Parser, Subcommand};
use mysql_async::prelude::Queryable;

use catalog::Release;
use store::{DbConfig, Engine, Store};

#[derive(Debug, Parser)]
#[command(name = "openmetadata-sim", disable_version_flag = true)]
struct Args {
    /// The OpenMetadata release to simulate.
    #[arg(long, global = true)]
    version: Option<String>,
    /// Debug logging (`openmetadata-ops.sh -d`); accepted and ignored.
    #[arg(short = 'd', long = "debug", global = true)]
    debug: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run pending migrations (Flyway and native), then print the change log.
    Migrate {
        /// Run all available migrations and log step failures instead of aborting.
        #[arg(long)]
        force: bool,
    },
    /// Exit 0 when no migration is pending, 1 (listing them) otherwise.
    Validate,
    /// Print SERVER_CHANGE_LOG.
    Changelog,
    /// Print the Flyway history (if any), SERVER_CHANGE_LOG and what is pending.
    Info,
    /// Delete STARTED/FAILED SERVER_CHANGE_LOG rows and their SQL logs (Flyway era: failed
    /// Flyway rows).
    Repair,
    /// Re-seed the default roles, policies and bots (≥ 1.11, after `migrate --force` lost them).
    Recover,
    /// Connect to the database and exit.
    CheckConnection,
    /// Run the server.
    Server {
        /// API/UI port.
        #[arg(long, default_value_t = 8585)]
        port: u16,
        /// Admin port (`/healthcheck`).
        #[arg(long = "admin-port", default_value_t = 8586)]
        admin_port: u16,
    },
}

fn release_of(version: Option<&str>) -> anyhow::Result<Release> {
    let v = version.ok_or_else(|| anyhow!("--version V is required (the simulated release)"))?;
    catalog::find(v).ok_or_else(|| {
        let known: Vec<&str> = catalog::RELEASES.iter().map(|r| r.version).collect();
        anyhow!(
            "no simulated OpenMetadata release {v} (simulated: {})",
            known.join(", ")
        )
    })
}

/// The entry point of `openmetadata-sim` and `upshift simulate openmetadata`: `args` without the
/// program name. Builds its own Tokio runtime, so call it outside one. Exit 0 on success, 1 on
/// any failure (the message on stderr), as `openmetadata-ops.sh` and the server do.
pub fn main_with_args(args: &[String]) -> ExitCode {
    let parsed = match Args::try_parse_from(
        std::iter::once("openmetadata-sim".to_string()).chain(args.iter().cloned()),
    ) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let outcome = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(run(parsed)));
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ERROR {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let _ = args.debug;
    let release = release_of(args.version.as_deref())?;
    let cfg = DbConfig::from_env()?;
    let mut store = Store::connect(&cfg).await?;
    match args.command {
        Cmd::Migrate { force } => {
            let fail = std::env::var("OM_SIM_FAIL_MIGRATION")
                .ok()
                .filter(|v| !v.trim().is_empty())
                .map(|v| v.trim().to_string());
            if let Some(f) = &fail
                && catalog::Ver::parse(f).is_none()
            {
                bail!("OM_SIM_FAIL_MIGRATION={f} is not a version (x.y.z)");
            }
            let opts = migrate::MigrateOptions {
                force,
                fail,
                user: cfg.user.clone(),
            };
            println!(
                "OpenMetadata {} (simulator): migrate{}",
                release.version,
                if force { " --force" } else { "" }
            );
            migrate::migrate(&mut store, &release, &opts).await?;
            println!("Migration completed");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Validate => {
            let st = migrate::inspect(&mut store).await?;
            migrate::gate(&release, &st)?;
            let pending = migrate::pending(&release, &st);
            let broken = st.broken();
            if pending.is_empty() && broken.is_empty() {
                println!(
                    "No pending migrations. The database is at {}",
                    max_text(&st)
                );
                Ok(ExitCode::SUCCESS)
            } else {
                println!("Pending migrations: {}", pending.join(", "));
                for r in broken {
                    println!(
                        "Unfinished migration: {} ({})",
                        r.version,
                        r.status.as_deref().unwrap_or("")
                    );
                }
                Ok(ExitCode::from(1))
            }
        }
        Cmd::Changelog => {
            let st = migrate::inspect(&mut store).await?;
            migrate::print_changelog(&st);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Info => {
            let st = migrate::inspect(&mut store).await?;
            if st.has_database_change_log {
                println!("Flyway (DATABASE_CHANGE_LOG): {}", st.flyway.join(", "));
            }
            migrate::print_changelog(&st);
            println!("Database version: {}", max_text(&st));
            let pending = migrate::pending(&release, &st);
            println!(
                "Pending: {}",
                if pending.is_empty() {
                    "none".to_string()
                } else {
                    pending.join(", ")
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Repair => {
            let n = migrate::repair(&mut store).await?;
            println!("Repair done: {n} row(s) removed");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Recover => {
            if !release.ver().at_least("1.11.0") {
                bail!("`recover` does not exist before 1.11.0");
            }
            for sql in seed_statements(store.engine(), 0) {
                store.exec(&sql).await?;
            }
            println!("Recovered the default roles, policies and bots");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::CheckConnection => {
            store.scalar("SELECT 1").await?;
            println!("Connection to the {} database is OK", cfg.database);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Server { port, admin_port } => {
            server::run(release, store, port, admin_port).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn max_text(st: &migrate::DbState) -> String {
    st.max()
        .map(|m| m.to_string())
        .unwrap_or_else(|| "no version".into())
}

/// The default roles, policies and bots OpenMetadata seeds.
pub const DEFAULT_ROLES: &[&str] = &["DataConsumer", "DataSteward", "DefaultBotRole"];
/// The default policies.
pub const DEFAULT_POLICIES: &[&str] = &[
    "DataConsumerPolicy",
    "DataStewardPolicy",
    "OrganizationPolicy",
    "DefaultBotPolicy",
];
/// The default bots (each with its bot user, `<bot>` in `user_entity`).
pub const DEFAULT_BOTS: &[&str] = &["ingestion-bot", "autoClassification-bot"];

fn uuid(kind: u32, i: usize) -> String {
    format!("{kind:08x}-0000-4000-8000-{i:012x}")
}

/// The statements [`seed_pg`] and [`seed_mysql`] run: the default roles, policies, bots (with
/// their bot users and bot→user / role→policy relationships), and `n` tables, users and teams.
/// Rows that exist already are left alone, so seeding twice is harmless.
pub fn seed_statements(engine: Engine, n: usize) -> Vec<String> {
    let l = |s: &str| store::lit(engine, s);
    let ignore = |sql: String| match engine {
        Engine::MySql => sql.replacen("INSERT INTO", "INSERT IGNORE INTO", 1),
        Engine::Postgres => format!("{sql} ON CONFLICT DO NOTHING"),
    };
    let now = 1_700_000_000_000i64;
    let entity = |table: &str, id: &str, name: &str, kind: &str| {
        let doc = serde_json::json!({ "id": id, "name": name, "fullyQualifiedName": name, "entityType": kind, "version": 0.1 });
        ignore(format!(
            "INSERT INTO {table} (id, name, json, updatedAt, deleted) VALUES ({}, {}, {}, {now}, FALSE)",
            l(id),
            l(name),
            l(&doc.to_string())
        ))
    };
    let rel = |from: &str, to: &str, fe: &str, te: &str, relation: i32| {
        ignore(format!(
            "INSERT INTO entity_relationship (fromId, toId, fromEntity, toEntity, relation, deleted) VALUES ({}, {}, {}, {}, {relation}, FALSE)",
            l(from),
            l(to),
            l(fe),
            l(te)
        ))
    };
    let mut out = Vec::new();
    for (i, name) in DEFAULT_POLICIES.iter().enumerate() {
        out.push(entity("policy_entity", &uuid(0x7001, i), name, "policy"));
    }
    for (i, name) in DEFAULT_ROLES.iter().enumerate() {
        let id = uuid(0x7002, i);
        out.push(entity("role_entity", &id, name, "role"));
        // role HAS (10) policy
        out.push(rel(&id, &uuid(0x7001, i), "role", "policy", 10));
    }
    for (i, name) in DEFAULT_BOTS.iter().enumerate() {
        let bot = uuid(0x7003, i);
        let user = uuid(0x7004, i);
        out.push(entity("bot_entity", &bot, name, "bot"));
        out.push(entity("user_entity", &user, name, "user"));
        // bot CONTAINS (0) its bot user
        out.push(rel(&bot, &user, "bot", "user", 0));
    }
    for i in 0..n {
        out.push(entity(
            "table_entity",
            &uuid(0x1001, i),
            &format!("mysql_prod.shop.public.orders_{i}"),
            "table",
        ));
        out.push(entity(
            "user_entity",
            &uuid(0x1002, i),
            &format!("user{i}"),
            "user",
        ));
        out.push(entity(
            "team_entity",
            &uuid(0x1003, i),
            &format!("team{i}"),
            "team",
        ));
    }
    out
}

/// Seed a PostgreSQL metadata database after a first `migrate` (see [`seed_statements`]).
pub async fn seed_pg(client: &tokio_postgres::Client, n: usize) -> anyhow::Result<()> {
    for sql in seed_statements(Engine::Postgres, n) {
        client
            .batch_execute(&sql)
            .await
            .with_context(|| format!("seed failed: {sql}"))?;
    }
    Ok(())
}

/// Seed a MySQL/MariaDB metadata database after a first `migrate` (see [`seed_statements`]).
pub async fn seed_mysql(conn: &mut mysql_async::Conn, n: usize) -> anyhow::Result<()> {
    for sql in seed_statements(Engine::MySql, n) {
        conn.query_drop(&sql)
            .await
            .with_context(|| format!("seed failed: {sql}"))?;
    }
    Ok(())
}

/// Seed through the same environment-style configuration the simulator reads.
pub async fn seed(cfg: &DbConfig, n: usize) -> anyhow::Result<()> {
    let mut store = Store::connect(cfg).await?;
    for sql in seed_statements(store.engine(), n) {
        store.exec(&sql).await?;
    }
    Ok(())
}
