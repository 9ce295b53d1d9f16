//! `upshift demo`: a self-contained tour on a fresh machine. It starts a throwaway PostgreSQL
//! under the data directory, runs two simulated Bytebase instances (test infrastructure, not
//! the real product), upgrades one, and shows a second whose migration fails and is rolled
//! back. It stops everything it started before it exits.

use std::path::{Path, PathBuf};

use console::style;

use upshift::fleet::Fleet;
use upshift::ops::Session;
use upshift::ops::apply::{self, Outcome};

use crate::{Exit, ui};

const FROM: &str = "3.10.0";
const TO: &str = "3.11.1";

fn free_port() -> Result<u16, Exit> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

fn fleet_text(exe: &Path, cluster: &upshift_sim::pg::Cluster, ports: [u16; 2]) -> String {
    let mut out = String::from("# Written by `upshift demo`: two simulated Bytebase instances.\n");
    for (name, port, fail) in [
        ("bb-alpha", ports[0], None),
        ("bb-beta", ports[1], Some(TO)),
    ] {
        let db = name.replace('-', "_");
        out.push_str(&format!(
            r#"
[[instance]]
name = "{name}"
product = "bytebase"

[instance.db.meta]
url = "{url}"

[instance.service.app]
kind = "process"
command = "'{exe}' simulate bytebase --version {{version}} --port {port}"
version = "{FROM}"
health_url = "http://127.0.0.1:{port}/healthz"
stop_timeout_secs = 10
env = {{ PG_URL = "{url}"{fail} }}

[instance.http.api]
url = "http://127.0.0.1:{port}"
"#,
            exe = exe.display(),
            url = cluster.url(&db),
            fail = fail
                .map(|v| format!(", BB_SIM_FAIL_MIGRATION = \"{v}\""))
                .unwrap_or_default(),
        ));
    }
    out
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
        .map_err(|e| anyhow::anyhow!("the demo needs PostgreSQL's server binaries: {e}"))?;
    let outcome = tour(&root, &cluster, json).await;
    say(format!(
        "{} stopping the demo's processes",
        style("▸").cyan()
    ));
    let stopped = stop_services(&root, &cluster).await;
    let _ = cluster.stop();
    let code = outcome?;
    stopped?;
    Ok(code)
}

async fn stop_services(root: &Path, cluster: &upshift_sim::pg::Cluster) -> Result<(), Exit> {
    let fleet_path = root.join("upshift.toml");
    let Ok(fleet) = Fleet::load(&fleet_path) else {
        return Ok(());
    };
    let session = Session::open(&root.join("data"), upshift::caps::EventSink::discard())?;
    let _ = cluster;
    for instance in &fleet.instances {
        if let Ok((_, caps)) = apply::prepare(&session, instance).await {
            for service in caps.services.values() {
                service.stop().await.map_err(|e| anyhow::anyhow!("{e}"))?;
            }
        }
    }
    Ok(())
}

async fn tour(root: &Path, cluster: &upshift_sim::pg::Cluster, json: bool) -> Result<u8, Exit> {
    let say = |text: String| {
        if !json {
            eprintln!("{text}");
        }
    };
    for db in ["bb_alpha", "bb_beta"] {
        cluster
            .create_database(db)
            .map_err(|e| anyhow::anyhow!("cannot create database {db}: {e}"))?;
    }
    let exe = std::env::current_exe()?;
    let fleet_path = root.join("upshift.toml");
    std::fs::write(
        &fleet_path,
        fleet_text(&exe, cluster, [free_port()?, free_port()?]),
    )?;
    let fleet = Fleet::load(&fleet_path)?;
    let (ui, sink) = ui::Ui::sink(json);
    let session = Session::open(&root.join("data"), sink)?;

    say(format!(
        "{} starting two simulated Bytebase {FROM} instances and seeding data",
        style("▸").cyan()
    ));
    for instance in &fleet.instances {
        let (_, caps) = apply::prepare(&session, instance).await?;
        for service in caps.services.values() {
            service.start().await.map_err(|e| anyhow::anyhow!("{e}"))?;
            service
                .wait_healthy(std::time::Duration::from_secs(60))
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        let (client, connection) = tokio_postgres::connect(
            &cluster.url(&instance.name.replace('-', "_")),
            tokio_postgres::NoTls,
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        tokio::spawn(connection);
        upshift_sim::bytebase::seed_user_rows(&client, 25)
            .await
            .map_err(|e| anyhow::anyhow!("cannot seed rows: {e}"))?;
    }

    let mut outcomes = Vec::new();
    for instance in &fleet.instances {
        say(String::new());
        say(format!(
            "{} upgrading {} {FROM} → {TO}",
            style("▸").cyan().bold(),
            instance.name
        ));
        let report = apply::apply(&session, instance, TO, |plan| {
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
        if json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            eprint!("{}", ui::run_text(&report));
        }
        outcomes.push((instance.name.clone(), report));
    }

    say(String::new());
    say(format!("{}", style("Summary").bold()));
    let mut ok = true;
    for (name, report) in &outcomes {
        let (_, caps) = apply::prepare(&session, fleet.instance(name)?).await?;
        let running = match caps.services.get("app") {
            Some(s) => s.inspect().await.map(|s| s.version).unwrap_or_default(),
            None => String::new(),
        };
        let label = match report.outcome {
            Outcome::Succeeded => style(format!("{:<14}", "upgraded")).green(),
            Outcome::RolledBack => style(format!("{:<14}", "rolled back")).yellow(),
            Outcome::Refused => style(format!("{:<14}", "refused")).yellow(),
            Outcome::NeedsOperator => style(format!("{:<14}", "NEEDS OPERATOR")).red(),
        };
        say(format!("  {:<9} {label} now serving {running}", name));
        let expected = if name == "bb-alpha" {
            Outcome::Succeeded
        } else {
            Outcome::RolledBack
        };
        ok &= report.outcome == expected;
    }
    say(format!(
        "  audit log: {} (check it with `upshift --data {} audit verify`)",
        session.audit.path().display(),
        root.join("data").display()
    ));
    Ok(if ok { 0 } else { 1 })
}
