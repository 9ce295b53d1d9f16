//! A throwaway PostgreSQL cluster for tests and the demo: `initdb` into a directory, a server on
//! a free loopback port with trust authentication, gone when the process that started it ends.
//!
//! `initdb` refuses to run as root, so as root the cluster runs as the system user `postgres`.
//! The server is started from a thread that lives as long as the process, with
//! `PR_SET_PDEATHSIG`, so it dies with its parent even when destructors never run.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Why a cluster could not be had.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The server binaries are not installed.
    #[error(
        "PostgreSQL server binaries (initdb, postgres) not found under /usr/lib/postgresql/*/bin; install Debian's postgresql-15 or set UPSHIFT_TEST_PG_URL"
    )]
    Missing,
    /// A step failed.
    #[error("{0}")]
    Failed(String),
}

/// A running throwaway cluster.
pub struct Cluster {
    dir: PathBuf,
    port: u16,
    bindir: PathBuf,
    child: Option<Child>,
    /// A directory made for the cluster outside the one asked for (see [`Cluster::start`]),
    /// removed when the cluster stops.
    made: Option<PathBuf>,
    /// The user the server runs as (when we are root).
    owner: Option<(u32, u32)>,
}

/// Whether user `uid` (group `gid`) can pass through every existing directory above and at
/// `dir` (the execute bit that applies to it).
pub(crate) fn traversable_by(dir: &Path, uid: u32, gid: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    dir.ancestors()
        .filter_map(|a| std::fs::metadata(a).ok())
        .all(|m| {
            let mode = m.mode();
            if m.uid() == uid {
                mode & 0o100 != 0
            } else if m.gid() == gid {
                mode & 0o010 != 0
            } else {
                mode & 0o001 != 0
            }
        })
}

/// The directory holding `initdb` and `postgres`.
pub fn find_bindir() -> Result<PathBuf, PgError> {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() && dir.join("postgres").exists() {
            return Ok(dir);
        }
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|_| PgError::Missing)?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let major = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            (bin.join("initdb").exists() && bin.join("postgres").exists()).then_some((major, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b).ok_or(PgError::Missing)
}

fn free_port() -> Result<u16, PgError> {
    crate::ports::free_port().map_err(|e| PgError::Failed(format!("no free port: {e}")))
}

/// The uid/gid to run as: `postgres` when we are root, ourselves otherwise.
pub(crate) fn run_as() -> Result<Option<(u32, u32)>, PgError> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    let user = nix::unistd::User::from_name("postgres")
        .map_err(|e| PgError::Failed(format!("cannot look up user postgres: {e}")))?
        .ok_or_else(|| {
            PgError::Failed("running as root needs the system user `postgres` (Debian's postgresql package creates it)".into())
        })?;
    Ok(Some((user.uid.as_raw(), user.gid.as_raw())))
}

pub(crate) fn chown_tree(path: &Path, uid: u32, gid: u32) -> Result<(), PgError> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .map_err(|e| PgError::Failed(format!("cannot chown {}: {e}", path.display())))
}

pub(crate) fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// A command to spawn and where to send the child.
type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Spawn the server from a thread that never exits, so PR_SET_PDEATHSIG (which fires when the
/// spawning *thread* ends) fires only when the process ends.
pub(crate) fn spawn_supervised(mut cmd: Command) -> Result<Child, PgError> {
    static SPAWNER: std::sync::OnceLock<std::sync::Mutex<mpsc::Sender<SpawnRequest>>> =
        std::sync::OnceLock::new();
    let sender = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("pg-spawner".into())
            .spawn(move || {
                while let Ok((mut cmd, reply)) = rx.recv() {
                    let _ = reply.send(cmd.spawn());
                }
                // Keep this thread alive for the process lifetime.
                loop {
                    std::thread::park();
                }
            })
            .ok();
        std::sync::Mutex::new(tx)
    });
    // SAFETY: prctl is async-signal-safe and touches only the calling (child) process.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            if nix::libc::prctl(nix::libc::PR_SET_PDEATHSIG, nix::libc::SIGQUIT) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (reply_tx, reply_rx) = mpsc::channel();
    sender
        .lock()
        .map_err(|_| PgError::Failed("the spawner thread is gone".into()))?
        .send((cmd, reply_tx))
        .map_err(|_| PgError::Failed("the spawner thread is gone".into()))?;
    reply_rx
        .recv()
        .map_err(|_| PgError::Failed("the spawner thread is gone".into()))?
        .map_err(|e| PgError::Failed(format!("cannot start postgres: {e}")))
}

impl Cluster {
    /// Create and start a cluster in `dir` (created; must be empty or absent).
    ///
    /// As root the server runs as `postgres`, which must be able to reach the cluster: when a
    /// directory above `dir` shuts it out (root's home is 0700), the cluster goes in a fresh
    /// directory under the system's temporary directory instead ([`Cluster::dir`] says where),
    /// removed again when the cluster stops.
    pub fn start(dir: &Path) -> Result<Cluster, PgError> {
        let bindir = find_bindir()?;
        let owner = run_as()?;
        let asked = dir;
        let made = match owner {
            Some((uid, gid)) if !traversable_by(asked, uid, gid) => {
                let place = std::env::temp_dir().join(format!(
                    "upshift-pg-{}-{}",
                    std::process::id(),
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_nanos())
                ));
                if !traversable_by(&std::env::temp_dir(), uid, gid) {
                    return Err(PgError::Failed(format!(
                        "the user postgres can reach neither {} nor {}; run as another user or make one of them traversable (chmod o+x)",
                        asked.display(),
                        std::env::temp_dir().display()
                    )));
                }
                Some(place)
            }
            _ => None,
        };
        let dir: &Path = made.as_deref().unwrap_or(asked);
        if dir.exists()
            && std::fs::read_dir(dir)
                .map(|mut d| d.next().is_some())
                .unwrap_or(false)
        {
            return Err(PgError::Failed(format!("{} is not empty", dir.display())));
        }
        let data = dir.join("data");
        let sockets = dir.join("sockets");
        for d in [dir, &data, &sockets] {
            std::fs::create_dir_all(d)
                .map_err(|e| PgError::Failed(format!("cannot create {}: {e}", d.display())))?;
        }
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700));
        if let Some((uid, gid)) = owner {
            for d in [dir, &data, &sockets] {
                chown_tree(d, uid, gid)?;
            }
        }
        let as_owner = |cmd: &mut Command| {
            use std::os::unix::process::CommandExt;
            if let Some((uid, gid)) = owner {
                cmd.uid(uid).gid(gid);
            }
        };
        let mut initdb = Command::new(bindir.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args([
                "--auth=trust",
                "--username=postgres",
                "--encoding=UTF8",
                "--no-sync",
                "--no-instructions",
            ])
            .env("LC_ALL", "C")
            .stdin(Stdio::null());
        as_owner(&mut initdb);
        let out = initdb
            .output()
            .map_err(|e| PgError::Failed(format!("cannot run initdb: {e}")))?;
        if !out.status.success() {
            return Err(PgError::Failed(format!(
                "initdb failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let port = free_port()?;
        let log = dir.join("server.log");
        std::fs::File::create(&log)
            .map_err(|e| PgError::Failed(format!("cannot create {}: {e}", log.display())))?;
        if let Some((uid, gid)) = owner {
            chown_tree(&log, uid, gid)?;
        }
        let mut cluster = Cluster {
            dir: dir.to_path_buf(),
            made,
            port,
            bindir,
            child: None,
            owner,
        };
        cluster.serve()?;
        Ok(cluster)
    }

    /// Start the server of a cluster [`Cluster::stop`]ped before, on the same port and data,
    /// and wait until it accepts connections (a state database restarted under its clients).
    pub fn start_again(&mut self) -> Result<(), PgError> {
        if self.child.is_some() {
            return Err(PgError::Failed("the server is running".into()));
        }
        self.serve()
    }

    /// Spawn the server and wait (up to 30 s) until it accepts connections.
    fn serve(&mut self) -> Result<(), PgError> {
        let data = self.dir.join("data");
        let sockets = self.dir.join("sockets");
        let log = self.dir.join("server.log");
        let log_file = std::fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .map_err(|e| PgError::Failed(format!("cannot open {}: {e}", log.display())))?;
        let log_err = log_file
            .try_clone()
            .map_err(|e| PgError::Failed(format!("cannot open the log: {e}")))?;
        let mut server = Command::new(self.bindir.join("postgres"));
        server
            .arg("-D")
            .arg(&data)
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(&sockets)
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "shared_buffers=32MB",
                "-c",
                "max_connections=400",
            ])
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err)
            .process_group(0);
        use std::os::unix::process::CommandExt;
        if let Some((uid, gid)) = self.owner {
            server.uid(uid).gid(gid);
        }
        self.child = Some(spawn_supervised(server)?);
        let port = self.port;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() && self.ready() {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(PgError::Failed(format!(
                    "postgres exited ({status}) while starting; its log:\n{}",
                    log_tail(&log)
                )));
            }
            if Instant::now() > deadline {
                let _ = self.stop();
                return Err(PgError::Failed(format!(
                    "postgres did not accept connections within 30 s; its log:\n{}",
                    log_tail(&log)
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn ready(&self) -> bool {
        Command::new(self.bindir.join("pg_isready"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-q",
            ])
            .status()
            .map(|s| s.success())
            .unwrap_or(true)
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Where it lives.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A URL for `database`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Create a database (with `psql`, so no async runtime is needed).
    pub fn create_database(&self, name: &str) -> Result<(), PgError> {
        let out = Command::new(self.bindir.join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-v",
                "ON_ERROR_STOP=1",
                "-q",
                "-c",
            ])
            .arg(format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\"")))
            .output()
            .map_err(|e| PgError::Failed(format!("cannot run psql: {e}")))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(PgError::Failed(format!(
                "CREATE DATABASE {name} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    }

    /// Create database `name` owned by a new role of the same name (LOGIN CREATEDB, nothing
    /// more: what an operator gives a product whose database Upshift backs up and restores);
    /// the URL connecting as that role.
    pub fn create_owned_database(&self, name: &str) -> Result<String, PgError> {
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        for sql in [
            format!("CREATE ROLE {quoted} LOGIN CREATEDB"),
            format!("CREATE DATABASE {quoted} OWNER {quoted}"),
        ] {
            let out = Command::new(self.bindir.join("psql"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
                .args([
                    "-U",
                    "postgres",
                    "-d",
                    "postgres",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-q",
                    "-c",
                ])
                .arg(&sql)
                .output()
                .map_err(|e| PgError::Failed(format!("cannot run psql: {e}")))?;
            if !out.status.success() {
                return Err(PgError::Failed(format!(
                    "{sql} failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
        }
        Ok(format!("postgres://{name}@127.0.0.1:{}/{name}", self.port))
    }

    /// Fast shutdown, and wait for it.
    pub fn stop(&mut self) -> Result<(), PgError> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return Ok(()),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(PgError::Failed(
                        "postgres did not stop in 20 s and was killed".into(),
                    ));
                }
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.stop();
        if let Some(made) = self.made.take() {
            let _ = std::fs::remove_dir_all(made);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_starts_serves_and_stops() {
        let dir = std::env::temp_dir().join(format!("upshift-sim-pg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut cluster = match Cluster::start(&dir) {
            Ok(c) => c,
            Err(PgError::Missing) if std::env::var("CI").as_deref() != Ok("true") => {
                eprintln!("SKIPPED: {}", PgError::Missing);
                return;
            }
            Err(e) => panic!("{e}"),
        };
        cluster.create_database("probe").expect("create");
        let out = Command::new(cluster.bindir.join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &cluster.port().to_string(),
                "-U",
                "postgres",
                "-d",
                "probe",
                "-tAc",
                "SELECT 40 + 2",
            ])
            .output()
            .expect("psql");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");
        cluster.stop().expect("stop");
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", cluster.port())).is_err(),
            "stopped"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn as_root_a_cluster_under_a_closed_directory_runs_elsewhere_and_is_removed() {
        // Root's home is 0700: the `postgres` user the server runs as cannot reach it.
        let closed =
            std::env::temp_dir().join(format!("upshift-sim-closed-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&closed);
        std::fs::create_dir_all(&closed).expect("dir");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        let asked = closed.join("pg");
        let cluster = match Cluster::start(&asked) {
            Ok(c) => c,
            Err(PgError::Missing) if std::env::var("CI").as_deref() != Ok("true") => {
                eprintln!("SKIPPED: {}", PgError::Missing);
                return;
            }
            Err(e) => panic!("{e}"),
        };
        let root = nix::unistd::geteuid().is_root();
        // Not root: the server runs as us and the cluster is where it was asked to be.
        assert_eq!(cluster.dir() == asked, !root, "{}", cluster.dir().display());
        cluster
            .create_database("probe")
            .expect("the server answers");
        let place = cluster.dir().to_path_buf();
        drop(cluster);
        if root {
            assert!(!place.exists(), "{} was left behind", place.display());
        }
        let _ = std::fs::remove_dir_all(&closed);
    }
}
