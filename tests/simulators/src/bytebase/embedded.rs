//! Bytebase's embedded metadata store: with `--data DIR` and no `PG_URL`, a real PostgreSQL
//! cluster under `DIR/pgdata`, as Bytebase runs its bundled one (product-facts §1.2).
//!
//! Like Bytebase it runs `initdb -U bb` when `pgdata/PG_VERSION` is absent (only chmod 0700
//! otherwise), starts the server on `--port + 2` listening on a Unix socket only (`-h ""`), in
//! `/tmp`, creates database `bb` when missing, and stops the server (fast shutdown) when it stops.
//! Unlike Bytebase (which bundles PostgreSQL 16 and uses `pg_ctl start`, a daemon) it runs this
//! machine's server binaries (PostgreSQL 15 on Debian) as its own child, which dies with it
//! (`PR_SET_PDEATHSIG`): a killed simulator leaves a stale `postmaster.pid`, which PostgreSQL
//! itself checks and replaces at the next start (crash recovery).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};

use crate::pg;

/// Where Bytebase puts the embedded server's socket (`common.GetPostgresSocketDir()`).
pub const SOCKET_DIR: &str = "/tmp";

/// The embedded server's user and metadata database.
pub const USER: &str = "bb";

/// The embedded store's port for Bytebase's `--port` (`DatastorePort = --port + 2`, §1.2).
pub fn datastore_port(port: u16) -> anyhow::Result<u16> {
    port.checked_add(2)
        .ok_or_else(|| anyhow!("--port {port} leaves no room for the embedded store on --port + 2"))
}

/// A running embedded PostgreSQL.
pub struct Embedded {
    child: Option<Child>,
    pgdata: PathBuf,
    port: u16,
}

impl Embedded {
    /// Init (when `DIR/pgdata/PG_VERSION` is absent) and start the server; wait until it
    /// accepts connections and database `bb` exists.
    pub async fn start(data: &Path, port: u16) -> anyhow::Result<Embedded> {
        let bindir = pg::find_bindir().map_err(|e| anyhow!("embedded PostgreSQL: {e}"))?;
        let owner = pg::run_as().map_err(|e| anyhow!("{e}"))?;
        std::fs::create_dir_all(data)
            .with_context(|| format!("cannot create the data directory {}", data.display()))?;
        let data = data
            .canonicalize()
            .with_context(|| format!("cannot resolve {}", data.display()))?;
        if let Some((uid, gid)) = owner
            && !pg::traversable_by(&data, uid, gid)
        {
            bail!(
                "the embedded PostgreSQL runs as user postgres (we are root), which cannot reach {}; make it and every directory above it traversable (chmod o+x)",
                data.display()
            );
        }
        let pgdata = data.join("pgdata");
        let as_owner = |cmd: &mut Command| {
            use std::os::unix::process::CommandExt;
            if let Some((uid, gid)) = owner {
                cmd.uid(uid).gid(gid);
            }
        };
        use std::os::unix::fs::PermissionsExt;
        if pgdata.join("PG_VERSION").exists() {
            // Bytebase: "If file permission was mutated before, postgres cannot start up".
            std::fs::set_permissions(&pgdata, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("cannot chmod 0700 {}", pgdata.display()))?;
        } else {
            std::fs::create_dir_all(&pgdata)
                .with_context(|| format!("cannot create {}", pgdata.display()))?;
            std::fs::set_permissions(&pgdata, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("cannot chmod 0700 {}", pgdata.display()))?;
            if let Some((uid, gid)) = owner {
                pg::chown_tree(&pgdata, uid, gid).map_err(|e| anyhow!("{e}"))?;
            }
            println!("-----Postgres initdb BEGIN-----");
            let mut initdb = Command::new(bindir.join("initdb"));
            initdb
                .args(["-U", USER, "-D"])
                .arg(&pgdata)
                .args(["--auth=trust", "--no-sync", "--no-instructions"])
                .env("LC_ALL", "C")
                .stdin(Stdio::null());
            as_owner(&mut initdb);
            let out = initdb.output().context("cannot run initdb")?;
            if !out.status.success() {
                bail!(
                    "failed to initdb {}: {}{}",
                    pgdata.display(),
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            println!("-----Postgres initdb END-----");
        }
        println!(
            "Start embedded Postgres datastorePort={port} pgDataDir={}",
            pgdata.display()
        );
        let mut server = Command::new(bindir.join("postgres"));
        server
            .arg("-D")
            .arg(&pgdata)
            .args([
                "-p",
                &port.to_string(),
                "-k",
                SOCKET_DIR,
                "-N",
                "500",
                "-h",
                "",
            ])
            .args(["-c", "fsync=off", "-c", "shared_buffers=16MB"])
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .process_group(0);
        as_owner(&mut server);
        use std::os::unix::process::CommandExt;
        let child = pg::spawn_supervised(server).map_err(|e| anyhow!("{e}"))?;
        let mut embedded = Embedded {
            child: Some(child),
            pgdata,
            port,
        };
        if let Err(e) = embedded.wait_and_create_bb().await {
            embedded.stop();
            return Err(e);
        }
        Ok(embedded)
    }

    /// The URL of database `db` over the socket.
    pub fn url(&self, db: &str) -> String {
        url(self.port, db)
    }

    async fn wait_and_create_bb(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let client = loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                bail!(
                    "failed to start the embedded PostgreSQL under {}: postgres exited ({status})",
                    self.pgdata.display()
                );
            }
            match tokio_postgres::connect(&self.url("postgres"), tokio_postgres::NoTls).await {
                Ok((client, connection)) => {
                    tokio::spawn(async move {
                        let _ = connection.await;
                    });
                    break client;
                }
                Err(e) if Instant::now() > deadline => {
                    bail!(
                        "the embedded PostgreSQL under {} did not accept connections within 60 s: {e}",
                        self.pgdata.display()
                    )
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        let exists = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'bb')",
                &[],
            )
            .await
            .context("cannot query the embedded PostgreSQL")?
            .get::<_, bool>(0);
        if !exists {
            client
                .batch_execute("CREATE DATABASE bb")
                .await
                .context("cannot create database bb in the embedded PostgreSQL")?;
        }
        Ok(())
    }

    /// Fast shutdown (what `pg_ctl stop` does by default), and wait for it.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    eprintln!("the embedded PostgreSQL did not stop in 30 s; killing it");
                    let _ = child.kill();
                    let _ = child.wait();
                    return;
                }
            }
        }
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The socket URL of database `db` of an embedded store on `port`.
pub fn url(port: u16, db: &str) -> String {
    format!("postgres://{USER}@%2Ftmp:{port}/{db}")
}
