//! A throwaway MariaDB server for tests: `mariadb-install-db` into a directory and `mariadbd` on a
//! free loopback port with a password-less root, gone when the process that started it ends
//! (started from the same long-lived spawner thread as the PostgreSQL cluster, with
//! `PR_SET_PDEATHSIG`). As root it runs as the system user `mysql`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::pg::{PgError, spawn_supervised};

/// A running throwaway MariaDB server.
pub struct Server {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

fn missing() -> PgError {
    PgError::Failed(
        "MariaDB server binaries (mariadb-install-db, mariadbd) not found; install Debian's mariadb-server or set UPSHIFT_TEST_MYSQL_URL".into(),
    )
}

impl Server {
    /// Create and start a server in `dir` (created; must be empty or absent).
    pub fn start(dir: &Path) -> Result<Server, PgError> {
        let install = Path::new("/usr/bin/mariadb-install-db");
        let daemon = Path::new("/usr/sbin/mariadbd");
        if !install.exists() || !daemon.exists() {
            return Err(missing());
        }
        let data = dir.join("data");
        std::fs::create_dir_all(&data)
            .map_err(|e| PgError::Failed(format!("cannot create {}: {e}", data.display())))?;
        let as_root = nix::unistd::geteuid().is_root();
        let mut mysql_ids = None;
        if as_root {
            let user = nix::unistd::User::from_name("mysql")
                .map_err(|e| PgError::Failed(format!("cannot look up user mysql: {e}")))?
                .ok_or_else(|| {
                    PgError::Failed("running as root needs the system user `mysql`".into())
                })?;
            for d in [dir, &data] {
                std::os::unix::fs::chown(d, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
                    .map_err(|e| PgError::Failed(format!("cannot chown {}: {e}", d.display())))?;
            }
            mysql_ids = Some((user.uid.as_raw(), user.gid.as_raw()));
        }
        let user_arg = if as_root { "--user=mysql" } else { "--user=" };
        let mut init = Command::new(install);
        init.arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg("--auth-root-authentication-method=normal")
            .arg("--skip-test-db");
        if as_root {
            init.arg(user_arg);
        }
        let out = init
            .stdin(Stdio::null())
            .output()
            .map_err(|e| PgError::Failed(format!("cannot run mariadb-install-db: {e}")))?;
        if !out.status.success() {
            return Err(PgError::Failed(format!(
                "mariadb-install-db failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let port =
            crate::ports::free_port().map_err(|e| PgError::Failed(format!("no free port: {e}")))?;
        let log = dir.join("server.log");
        let mut server = Command::new(daemon);
        server
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", dir.join("mysqld.sock").display()))
            .arg(format!("--pid-file={}", dir.join("mysqld.pid").display()))
            .arg(format!("--log-error={}", log.display()))
            .arg(format!("--port={port}"))
            .args([
                "--bind-address=127.0.0.1",
                "--skip-name-resolve",
                "--innodb-buffer-pool-size=32M",
            ])
            .args(["--innodb-flush-log-at-trx-commit=0", "--skip-log-bin"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // Start it as `mysql` rather than letting mariadbd switch users itself: a process that
        // changes its own credentials loses PR_SET_PDEATHSIG and would outlive the tests.
        if let Some((uid, gid)) = mysql_ids {
            use std::os::unix::process::CommandExt;
            server.uid(uid).gid(gid);
        }
        let child = spawn_supervised(server)?;
        let mut s = Server {
            dir: dir.to_path_buf(),
            port,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(s);
            }
            if let Some(child) = s.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(PgError::Failed(format!(
                    "mariadbd exited ({status}) while starting; its log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )));
            }
            if Instant::now() > deadline {
                let _ = s.stop();
                return Err(PgError::Failed(
                    "mariadbd did not accept connections within 60 s".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The port (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Where it lives.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `mysql://root@127.0.0.1:PORT/DB`.
    pub fn url(&self, database: &str) -> String {
        format!("mysql://root@127.0.0.1:{}/{database}", self.port)
    }

    /// Stop it (SIGTERM) and wait.
    pub fn stop(&mut self) -> Result<(), PgError> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_starts_and_stops() {
        let dir = std::env::temp_dir().join(format!("upshift-sim-mariadb-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut server = match Server::start(&dir) {
            Ok(s) => s,
            Err(e)
                if std::env::var("CI").as_deref() != Ok("true")
                    && e.to_string().contains("not found") =>
            {
                eprintln!("SKIPPED: {e}");
                return;
            }
            Err(e) => panic!("{e}"),
        };
        assert!(std::net::TcpStream::connect(("127.0.0.1", server.port())).is_ok());
        server.stop().expect("stop");
        assert!(std::net::TcpStream::connect(("127.0.0.1", server.port())).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
