//! `upshift demo`: a self-contained tour on a fresh machine. It starts a throwaway PostgreSQL
//! under the data directory and a mixed fleet of simulated products (test infrastructure, not
//! the real products) with seeded data — three Bytebase instances (one on its embedded
//! PostgreSQL), OpenMetadata, DevLake and KWDB — upgrades each, and shows one Bytebase whose migration fails being rolled back. It
//! stops everything it started before it exits.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use console::style;

use upshift::fleet::Fleet;
use upshift::ops::Session;
use upshift::ops::apply::{self, Outcome};

use crate::{Exit, ui};

fn free_port() -> Result<u16, Exit> {
    Ok(upshift_sim::ports::free_port()?)
}

/// How a member's data is seeded once its first services run.
#[derive(Clone, Copy)]
enum Seed {
    Bytebase,
    OpenMetadata,
    DevLake,
    Kwdb,
}

/// One instance of the demo fleet.
struct Member {
    name: &'static str,
    from: &'static str,
    to: &'static str,
    expect: Outcome,
    /// The `[[instance]]` block.
    fleet: String,
    /// Services started before seeding, then after.
    start_before_seed: &'static [&'static str],
    start_after_seed: &'static [&'static str],
    seed: Seed,
    /// The service whose version the summary reports.
    primary: &'static str,
    /// Where the seed connects (PostgreSQL URL, or the simulator's own SQL port for KWDB).
    seed_url: String,
}

const DEVLAKE_SECRET: &str = "demo-encryption-secret";

fn bytebase(exe: &Path, url: &str, name: &'static str, fail: bool) -> Result<Member, Exit> {
    let port = free_port()?;
    let fail = if fail {
        ", BB_SIM_FAIL_MIGRATION = \"3.11.1\""
    } else {
        ""
    };
    Ok(Member {
        name,
        from: "3.10.0",
        to: "3.11.1",
        expect: if fail.is_empty() {
            Outcome::Succeeded
        } else {
            Outcome::RolledBack
        },
        fleet: format!(
            r#"
[[instance]]
name = "{name}"
product = "bytebase"
labels = {{ product = "bytebase" }}

[instance.db.meta]
url = "{url}"

[instance.service.app]
kind = "process"
command = "'{exe}' simulate bytebase --version {{version}} --port {port}"
version = "3.10.0"
health_url = "http://127.0.0.1:{port}/healthz"
stop_timeout_secs = 10
env = {{ PG_URL = "{url}"{fail} }}

[instance.http.api]
url = "http://127.0.0.1:{port}"
"#,
            exe = exe.display(),
        ),
        start_before_seed: &["app"],
        start_after_seed: &[],
        seed: Seed::Bytebase,
        primary: "app",
        seed_url: url.to_string(),
    })
}

/// Bytebase's default deployment: the metadata in its embedded PostgreSQL under `data/pgdata`
/// (no `PG_URL`), backed up as a snapshot of the data directory.
fn bytebase_embedded(exe: &Path, data: &Path) -> Result<Member, Exit> {
    let port = free_port()?;
    let meta = upshift_sim::bytebase::embedded::url(port + 2, "bb");
    Ok(Member {
        name: "bb-embedded",
        from: "3.10.0",
        to: "3.11.1",
        expect: Outcome::Succeeded,
        fleet: format!(
            r#"
[[instance]]
name = "bb-embedded"
product = "bytebase"
labels = {{ product = "bytebase" }}

[instance.db.meta]
url = "{meta}"
access = ["read"]
privileged = true

[instance.service.app]
kind = "process"
command = "'{exe}' simulate bytebase --version {{version}} --port {port} --data '{data}'"
version = "3.10.0"
health_url = "http://127.0.0.1:{port}/healthz"
stop_timeout_secs = 20

[instance.http.api]
url = "http://127.0.0.1:{port}"

[instance.files.data]
path = "{data}"
"#,
            exe = exe.display(),
            data = data.display(),
        ),
        start_before_seed: &["app"],
        start_after_seed: &[],
        seed: Seed::Bytebase,
        primary: "app",
        seed_url: meta,
    })
}

fn openmetadata(exe: &Path, url: &str, pg_port: u16, db: &str) -> Result<Member, Exit> {
    let database = upshift_sim::fleet::OmDatabase {
        url,
        scheme: "postgresql",
        port: pg_port,
        user: db,
        name: db,
    };
    Ok(Member {
        name: "om",
        from: "1.9.0",
        to: "1.12.1",
        expect: Outcome::Succeeded,
        fleet: upshift_sim::fleet::openmetadata(
            "om",
            exe,
            &database,
            "1.9.0",
            (free_port()?, free_port()?),
            "",
        ),
        start_before_seed: &["migrate"],
        start_after_seed: &["server"],
        seed: Seed::OpenMetadata,
        primary: "server",
        seed_url: url.to_string(),
    })
}

fn devlake(exe: &Path, root: &Path, url: &str) -> Result<Member, Exit> {
    let port = free_port()?;
    let config = root.join("devlake");
    std::fs::create_dir_all(&config)?;
    std::fs::write(
        config.join(".env"),
        format!("# DevLake\nPORT={port}\nDB_URL={url}\nENCRYPTION_SECRET={DEVLAKE_SECRET}\n"),
    )?;
    Ok(Member {
        name: "lake",
        from: "v1.0.0",
        to: "v1.0.1",
        expect: Outcome::Succeeded,
        fleet: upshift_sim::fleet::devlake("lake", exe, url, port, "v1.0.0", &config, ""),
        start_before_seed: &["app"],
        start_after_seed: &[],
        seed: Seed::DevLake,
        primary: "app",
        seed_url: url.to_string(),
    })
}

fn kwdb(exe: &Path, root: &Path, backing: &str) -> Result<Member, Exit> {
    let (sql, http) = (free_port()?, free_port()?);
    let store = root.join("kwdb").join("store");
    let external = root.join("kwdb").join("extern");
    std::fs::create_dir_all(&store)?;
    std::fs::create_dir_all(&external)?;
    Ok(Member {
        name: "kw",
        from: "3.0.0",
        to: "3.1.0",
        expect: Outcome::Succeeded,
        fleet: format!(
            r#"
[[instance]]
name = "kw"
product = "kwdb"

[instance.db.sql]
url = "kwdb://root@127.0.0.1:{sql}/defaultdb"

[instance.service.app]
kind = "process"
command = "'{exe}' simulate kwdb start-single-node --sim-version {{version}} --insecure --listen-addr=127.0.0.1:{sql} --http-addr=127.0.0.1:{http} --store={store} --external-io-dir={external}"
version = "3.0.0"
health_url = "http://127.0.0.1:{http}/health"
stop_timeout_secs = 10
env = {{ KWDB_SIM_BACKING_URL = "{backing}" }}

[instance.files.store]
path = "{store}"

[instance.files.extern]
path = "{external}"
"#,
            exe = exe.display(),
            store = store.display(),
            external = external.display(),
        ),
        start_before_seed: &["app"],
        start_after_seed: &[],
        seed: Seed::Kwdb,
        primary: "app",
        seed_url: format!("postgres://root@127.0.0.1:{sql}/defaultdb"),
    })
}

/// Run the demo in `<data>/demo`.
pub async fn run(data: &Path, json: bool) -> Result<u8, Exit> {
    let root: PathBuf = data.join("demo");
    if root.exists() {
        std::fs::remove_dir_all(&root)?;
    }
    std::fs::create_dir_all(&root)?;
    let say = |text: String| {
        if !json {
            eprintln!("{text}");
        }
    };
    say(format!(
        "{} starting a throwaway PostgreSQL under {}",
        style("▸").cyan(),
        root.display()
    ));
    let mut cluster = upshift_sim::pg::Cluster::start(&root.join("pg"))
        .map_err(|e| anyhow::anyhow!("cannot start the demo's throwaway PostgreSQL: {e}"))?;
    if !cluster.dir().starts_with(&root) {
        // As root, with a data directory the `postgres` user cannot reach (root's home).
        say(format!(
            "  (in {}: the user postgres cannot reach {})",
            cluster.dir().display(),
            root.display()
        ));
    }
    let outcome = tour(&root, &cluster, json).await;
    say(format!(
        "{} stopping the demo's processes",
        style("▸").cyan()
    ));
    let stopped = stop_services(&root).await;
    let _ = cluster.stop();
    let code = outcome?;
    stopped?;
    Ok(code)
}

async fn stop_services(root: &Path) -> Result<(), Exit> {
    let fleet_path = root.join("upshift.toml");
    let Ok(fleet) = Fleet::load(&fleet_path) else {
        return Ok(());
    };
    let session = Session::open(&root.join("data"), upshift::caps::EventSink::discard()).await?;
    for instance in &fleet.instances {
        if let Ok((_, caps)) = apply::prepare(&session, instance).await {
            for name in caps.service().bindings() {
                caps.service()
                    .stop(name, "demo")
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            }
        }
    }
    Ok(())
}

async fn pg_client(url: &str) -> Result<tokio_postgres::Client, Exit> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot connect to {}: {e}",
                upshift::model::redact::url_for_display(url)
            )
        })?;
    tokio::spawn(connection);
    Ok(client)
}

async fn seed(member: &Member) -> Result<(), Exit> {
    let client = pg_client(&member.seed_url).await?;
    let seeded = match member.seed {
        Seed::Bytebase => upshift_sim::bytebase::seed_user_rows(&client, 25).await,
        Seed::OpenMetadata => upshift_sim::openmetadata::seed_pg(&client, 25).await,
        Seed::DevLake => upshift_sim::devlake::seed_pg(&client, DEVLAKE_SECRET, 25).await,
        Seed::Kwdb => upshift_sim::kwdb::seed(&client, 25).await,
    };
    seeded.map_err(|e| anyhow::anyhow!("cannot seed {}: {e:#}", member.name).into())
}

async fn start(
    session: &Session,
    fleet: &Fleet,
    name: &str,
    bindings: &[&str],
) -> Result<(), Exit> {
    let (_, caps) = apply::prepare(session, fleet.instance(name)?).await?;
    for binding in bindings {
        let service = caps.service();
        service
            .start(binding, "demo")
            .await
            .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        service
            .wait_healthy(binding, std::time::Duration::from_secs(60), "demo")
            .await
            .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
    }
    Ok(())
}

async fn tour(root: &Path, cluster: &upshift_sim::pg::Cluster, json: bool) -> Result<u8, Exit> {
    let say = |text: String| {
        if !json {
            eprintln!("{text}");
        }
    };
    // Each product's database is owned by a least-privilege role of its own, as an operator
    // would set it up (docs/least-privilege.md); only the KWDB simulator's storage is the
    // cluster's own.
    let owned = |db: &str| {
        cluster
            .create_owned_database(db)
            .map_err(|e| anyhow::anyhow!("cannot create database {db}: {e}"))
    };
    let (alpha, beta, om, lake) = (
        owned("bb_alpha")?,
        owned("bb_beta")?,
        owned("om")?,
        owned("lake")?,
    );
    cluster
        .create_database("kw_backing")
        .map_err(|e| anyhow::anyhow!("cannot create database kw_backing: {e}"))?;
    let exe = std::env::current_exe()?;
    // The embedded store's server runs as `postgres` when we are root: beside the cluster,
    // which is where that user can reach (and gone with it).
    let embedded_data = if cluster.dir().starts_with(root) {
        root.join("bb-embedded")
    } else {
        cluster.dir().join("bb-embedded")
    };
    let members = vec![
        bytebase(&exe, &alpha, "bb-alpha", false)?,
        bytebase(&exe, &beta, "bb-beta", true)?,
        bytebase_embedded(&exe, &embedded_data)?,
        openmetadata(&exe, &om, cluster.port(), "om")?,
        devlake(&exe, root, &lake)?,
        kwdb(&exe, root, &cluster.url("kw_backing"))?,
    ];
    let fleet_path = root.join("upshift.toml");
    let mut text = String::from(
        "# Written by `upshift demo`: a mixed fleet of simulated products (test infrastructure).\n",
    );
    for m in &members {
        text.push_str(&m.fleet);
    }
    std::fs::write(&fleet_path, text)?;
    let fleet = Fleet::load(&fleet_path)?;
    let (ui, sink) = ui::Ui::sink(json);
    let session = Session::open(&root.join("data"), sink).await?;

    say(format!(
        "{} starting {} simulated instances (Bytebase ×3, one on its embedded PostgreSQL, OpenMetadata, DevLake, KWDB) and seeding data",
        style("▸").cyan(),
        members.len()
    ));
    for m in &members {
        start(&session, &fleet, m.name, m.start_before_seed).await?;
        seed(m).await?;
        start(&session, &fleet, m.name, m.start_after_seed).await?;
    }

    // Under --json: one document at the end, every run's report in order.
    let mut reports = Vec::new();
    for m in &members {
        let instance = fleet.instance(m.name)?;
        say(String::new());
        say(format!(
            "{} upgrading {} ({}) {} → {}",
            style("▸").cyan().bold(),
            m.name,
            instance.adapter_label(),
            m.from,
            m.to
        ));
        let report = apply::apply(&session, instance, m.to, |plan| {
            if !json {
                eprint!("{}", ui::plan_text(plan));
            }
            true
        })
        .await;
        if let Some(ui) = &ui {
            ui.clear();
        }
        let report = report?;
        if !json {
            eprint!("{}", ui::run_text(&report));
        }
        reports.push(report);
    }

    say(String::new());
    say(format!("{}", style("Summary").bold()));
    let mut ok = true;
    let name_width = members.iter().map(|m| m.name.len()).max().unwrap_or(0);
    for (m, report) in members.iter().zip(&reports) {
        let outcome = &report.outcome;
        let label = match outcome {
            Outcome::Succeeded => style(format!("{:<17}", "upgraded")).green(),
            Outcome::RolledBack => style(format!("{:<17}", "rolled back")).yellow(),
            Outcome::Refused => style(format!("{:<17}", "refused")).yellow(),
            Outcome::NeedsOperator => style(format!("{:<17}", "NEEDS OPERATOR")).red(),
            Outcome::NothingChanged => style(format!("{:<17}", "failed, unchanged")).red(),
            Outcome::AlreadyThere => style(format!("{:<17}", "already there")).green(),
        };
        let (_, caps) = apply::prepare(&session, fleet.instance(m.name)?).await?;
        let now = caps
            .service()
            .inspect(m.primary, Some("demo"))
            .await
            .map(|s| s.version)
            .unwrap_or_default();
        let expected = if *outcome == m.expect {
            String::new()
        } else {
            format!("  (expected {:?})", m.expect)
        };
        say(format!(
            "  {:<name_width$} {:<13} {label} now at {now}{expected}",
            m.name,
            fleet.instance(m.name)?.adapter_label()
        ));
        ok &= *outcome == m.expect;
    }
    say(format!(
        "  audit log: {} (check it with `upshift --data {} audit verify`)",
        session.audit.path().display(),
        root.join("data").display()
    ));
    if json {
        crate::print_json(&serde_json::json!({ "ok": ok, "runs": reports }))?;
    }
    Ok(if ok { 0 } else { 1 })
}

pub fn simulate(product: &str, args: &[String]) -> ExitCode {
    match product {
        "bytebase" => {
            let outcome =
                upshift_sim::bytebase::Options::from_args_and_env(args).and_then(|opts| {
                    tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(2)
                        .enable_all()
                        .build()
                        .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))?
                        .block_on(upshift_sim::bytebase::run(opts))
                });
            match outcome {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("FATAL {e:#}");
                    ExitCode::from(1)
                }
            }
        }
        "devlake" => {
            let outcome =
                upshift_sim::devlake::Config::from_args_and_env(args).and_then(|config| {
                    tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(2)
                        .enable_all()
                        .build()
                        .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))?
                        .block_on(upshift_sim::devlake::run(config))
                });
            match outcome {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("FATAL {e:#}");
                    ExitCode::from(1)
                }
            }
        }
        // It builds its own runtime, like the simulator binary.
        "openmetadata" => upshift_sim::openmetadata::main_with_args(args),
        "kwdb" => upshift_sim::kwdb::main_with_args(args),
        other => {
            eprintln!(
                "error: no simulator for `{other}` (simulators: bytebase, devlake, kwdb, openmetadata)"
            );
            ExitCode::from(2)
        }
    }
}
