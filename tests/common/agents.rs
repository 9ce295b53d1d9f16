//! Agents sharing PostgreSQL state (issue 18): a fleet of simulated Bytebase instances whose
//! upgrades are queued for agents, the agents themselves (the real `upshift agent`, each with
//! its own data directory, as separate machines would have), a state cluster of the test's own
//! that it can restart, and a network namespace to cut one agent off from that cluster.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{Env, Pg, free_port, start_services, stderr};

/// A fleet of simulated Bytebase instances at 3.10.0, each with its own database on the shared
/// test server, their services started. Agents are separate machines (own data directories)
/// sharing the PostgreSQL state; on this one machine they also share the process services'
/// state (`<dir>/data/services`).
pub struct AgentFleet {
    /// The fleet file, the data directories and the services' state.
    pub env: Env,
    /// The instances' names, in order.
    pub names: Vec<String>,
    /// Each instance's HTTP port, in the order of `names`.
    pub ports: Vec<u16>,
    /// Each instance's database URL, in the order of `names`.
    pub dbs: Vec<String>,
    /// `UPSHIFT_LEASE_SECS` for every command.
    pub lease_secs: u32,
}

impl AgentFleet {
    /// `count` instances named `{prefix}01`, `{prefix}02`, …; those whose 1-based position is in
    /// `failing` fail their migration to 3.11.1; `extra_env` (`, KEY = "value"` pairs) goes into
    /// every instance's process environment.
    pub async fn bytebase(
        pg: &Pg,
        prefix: &str,
        count: usize,
        failing: &[usize],
        extra_env: &str,
        lease_secs: u32,
    ) -> AgentFleet {
        let env = Env::new();
        let mut fleet = String::new();
        let (mut names, mut ports, mut dbs) = (Vec::new(), Vec::new(), Vec::new());
        for n in 1..=count {
            let (_, url) = pg.fresh_db("agents").await;
            let port = free_port();
            let name = format!("{prefix}{n:02}");
            let fail = failing.contains(&n).then_some("3.11.1");
            fleet.push_str(&super::bytebase_instance_with_env(
                &name, &url, port, "3.10.0", fail, extra_env,
            ));
            names.push(name);
            ports.push(port);
            dbs.push(url);
        }
        env.write_fleet(&fleet);
        for name in &names {
            start_services(&env, name, &["app"]).await;
        }
        AgentFleet {
            env,
            names,
            ports,
            dbs,
            lease_secs,
        }
    }

    /// The services' state, shared by every agent on this machine.
    pub fn services(&self) -> PathBuf {
        self.env.data().join("services")
    }

    /// The data directory of the machine called `machine`.
    pub fn data(&self, machine: &str) -> PathBuf {
        self.env.dir.path().join(format!("data-{machine}"))
    }

    /// The `upshift` binary as the machine `machine` runs it, with the state at `state_url`.
    pub fn upshift(&self, machine: &str, state_url: &str) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_upshift"));
        cmd.arg("--fleet")
            .arg(self.env.fleet())
            .arg("--data")
            .arg(self.data(machine))
            .arg("--services")
            .arg(self.services())
            .arg("--state")
            .arg(state_url)
            .env_remove("UPSHIFT_FLEET")
            .env_remove("UPSHIFT_DATA")
            .env_remove("UPSHIFT_STATE")
            .env("UPSHIFT_LEASE_SECS", self.lease_secs.to_string());
        cmd
    }

    /// Queue every instance's upgrade to `to` (from the machine `ops`).
    pub fn enqueue_all(&self, state_url: &str, to: &str) {
        let out = self
            .upshift("ops", state_url)
            .args(["enqueue", "--all", "--to", to])
            .output()
            .expect("enqueue");
        assert!(out.status.success(), "enqueue: {}", stderr(&out));
        let queued = format!("queued {n} of {n}", n = self.names.len());
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(&queued),
            "enqueue: {}",
            stderr(&out)
        );
    }

    /// Start `upshift agent --name NAME --until-empty --json` on its own machine (data
    /// directory `data-NAME`) with `envs` added; its output goes to files beside the fleet.
    pub fn spawn_agent(&self, name: &str, state_url: &str, envs: &[(&str, &str)]) -> Agent {
        let out = self.env.dir.path().join(format!("{name}.stdout"));
        let err = self.env.dir.path().join(format!("{name}.stderr"));
        let mut cmd = self.upshift(name, state_url);
        cmd.args(["agent", "--name", name, "--until-empty", "--json"])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).expect("agent stdout"))
            .stderr(std::fs::File::create(&err).expect("agent stderr"));
        for (k, v) in envs {
            cmd.env(k, v);
        }
        Agent {
            name: name.to_string(),
            child: Some(cmd.spawn().expect("spawn agent")),
            out,
            err,
        }
    }

    /// What the simulator wrote for instance `name` (every start appends to it).
    pub fn service_log(&self, name: &str) -> String {
        std::fs::read_to_string(self.services().join(name).join("app.log")).unwrap_or_default()
    }

    /// How many times instance `name`'s service was started at `version` (the simulator
    /// prints `Starting Bytebase VERSION(…)` first thing, before it migrates or listens).
    pub fn starts_of(&self, name: &str, version: &str) -> usize {
        let line = format!("Starting Bytebase {version}(");
        self.service_log(name)
            .lines()
            .filter(|l| l.starts_with(&line))
            .count()
    }

    /// The audit records of machine `machine` (its active audit segment).
    pub fn audit(&self, machine: &str) -> Vec<upshift::audit::AuditRecord> {
        super::audit_records(&self.data(machine).join("audit.jsonl"))
    }
}

/// A running `upshift agent`; killed when dropped unfinished.
pub struct Agent {
    /// Its name (and machine).
    pub name: String,
    child: Option<Child>,
    out: PathBuf,
    err: PathBuf,
}

/// How an agent ended.
#[derive(Debug)]
pub struct AgentExit {
    /// The exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    /// What it printed on stdout (its JSON with `--json`).
    pub stdout: String,
    /// What it printed on stderr.
    pub stderr: String,
}

impl AgentExit {
    /// The last lines of stderr, for messages.
    pub fn tail(&self) -> String {
        let lines: Vec<&str> = self.stderr.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// The items it handled (`--json`), or an empty list when it printed none.
    pub fn handled(&self) -> Vec<serde_json::Value> {
        serde_json::from_str::<serde_json::Value>(&self.stdout)
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
    }
}

impl Agent {
    /// Its process id.
    pub fn pid(&self) -> nix::unistd::Pid {
        let id = self.child.as_ref().map_or(0, Child::id);
        nix::unistd::Pid::from_raw(i32::try_from(id).expect("pid"))
    }

    /// Send it `signal`.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(self.pid(), signal)
            .unwrap_or_else(|e| panic!("{signal} to {}: {e}", self.name));
    }

    /// Whether it has exited (without reaping it).
    pub fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|c| c.try_wait().ok().flatten().is_some())
    }

    /// Wait up to `limit` for it to exit; `None` (and the agent killed) when it did not.
    pub fn wait(&mut self, limit: Duration) -> Option<AgentExit> {
        let mut child = self.child.take()?;
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for the agent") {
                break Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let exit = AgentExit {
            code: status.and_then(|s| s.code()),
            stdout: std::fs::read_to_string(&self.out).unwrap_or_default(),
            stderr: std::fs::read_to_string(&self.err).unwrap_or_default(),
        };
        match status {
            Some(_) => Some(exit),
            None => {
                eprintln!(
                    "{} did not exit within {} s and was killed; its stderr:\n{}",
                    self.name,
                    limit.as_secs(),
                    exit.tail()
                );
                None
            }
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Whether process `pid` is stopped (SIGSTOP: state `T` in `/proc/PID/stat`).
pub fn is_stopped(pid: nix::unistd::Pid) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(") ")
                .and_then(|(_, rest)| rest.chars().next())
        })
        .is_some_and(|state| state == 'T')
}

/// How many processes serve the simulated Bytebase on `port` (its command line names it).
pub fn service_processes(port: u16) -> usize {
    let want = format!("--port\0{port}\0");
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).into_owned())
        .filter(|c| c.contains("simulate\0bytebase\0") && format!("{c}\0").contains(&want))
        .count()
}

/// A PostgreSQL cluster of the test's own for the agents' shared state, run with `pg_ctl` so
/// the test can restart it (`pg_ctl restart -m fast`, or stop and start) and, in a network
/// namespace, cut an agent off from it. Stopped and removed when dropped; one a killed test
/// process left is stopped by the next [`StateCluster::start`].
pub struct StateCluster {
    dir: PathBuf,
    bindir: PathBuf,
    port: u16,
    netns: Option<String>,
    /// `postgres` (uid, gid) when we are root: initdb refuses root.
    owner: Option<(u32, u32)>,
}

/// Directories of state clusters under the system temporary directory (the `postgres` user must
/// reach them): `upshift-agentstate-<pid>-<n>`.
const CLUSTER_PREFIX: &str = "upshift-agentstate-";

fn pid_is_gone(pid: &str) -> bool {
    pid.parse::<u32>()
        .is_ok_and(|pid| pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists())
}

impl StateCluster {
    /// initdb and start a cluster listening on `listen` (addresses), in network namespace
    /// `netns` when given (its loopback, addresses and routes set up already). Trust
    /// authentication from loopback and from 10.213.0.0/16.
    pub fn start(netns: Option<&str>, listen: &[&str]) -> Result<StateCluster, String> {
        sweep_stale_clusters();
        let bindir = upshift_sim::pg::find_bindir().map_err(|e| e.to_string())?;
        let owner = if nix::unistd::geteuid().is_root() {
            let user = nix::unistd::User::from_name("postgres")
                .map_err(|e| format!("cannot look up the user postgres: {e}"))?
                .ok_or("running as root needs the system user `postgres`")?;
            Some((user.uid.as_raw(), user.gid.as_raw()))
        } else {
            None
        };
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "{CLUSTER_PREFIX}{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sockets"))
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        if let Some((uid, gid)) = owner {
            for d in [dir.clone(), dir.join("sockets")] {
                std::os::unix::fs::chown(&d, Some(uid), Some(gid))
                    .map_err(|e| format!("cannot chown {}: {e}", d.display()))?;
            }
        }
        let cluster = StateCluster {
            dir,
            bindir,
            port: free_port(),
            netns: netns.map(str::to_string),
            owner,
        };
        let data = cluster.dir.join("data");
        cluster.run(
            "initdb",
            &[
                "-D",
                &data.to_string_lossy(),
                "--auth=trust",
                "--username=postgres",
                "--encoding=UTF8",
                "--no-sync",
                "--no-instructions",
            ],
        )?;
        let hba = data.join("pg_hba.conf");
        let mut rules = std::fs::read_to_string(&hba).map_err(|e| format!("pg_hba.conf: {e}"))?;
        rules.push_str("\nhost all all 10.213.0.0/16 trust\n");
        std::fs::write(&hba, rules).map_err(|e| format!("pg_hba.conf: {e}"))?;
        let options = format!(
            "-p {} -k {} -c listen_addresses={} -c fsync=off -c synchronous_commit=off \
             -c full_page_writes=off -c shared_buffers=16MB -c max_connections=100",
            cluster.port,
            cluster.dir.join("sockets").display(),
            listen.join(",")
        );
        cluster.pg_ctl(&["-o", &options, "start"])?;
        Ok(cluster)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A URL for the `postgres` database through `host`.
    pub fn url(&self, host: &str) -> String {
        format!("postgres://postgres@{host}:{}/postgres", self.port)
    }

    /// `pg_ctl restart -m fast` (every session is disconnected; the same options).
    pub fn restart_fast(&self) -> Result<(), String> {
        self.pg_ctl(&["-m", "fast", "restart"])
    }

    /// `pg_ctl stop -m fast`.
    pub fn stop_fast(&self) -> Result<(), String> {
        self.pg_ctl(&["-m", "fast", "stop"])
    }

    /// `pg_ctl start` again, with the options it last ran with.
    pub fn start_again(&self) -> Result<(), String> {
        let opts = std::fs::read_to_string(self.dir.join("data/postmaster.opts"))
            .map_err(|e| format!("postmaster.opts: {e}"))?;
        // `postmaster.opts` is the command line: the binary, then the options, quoted.
        let options = opts
            .trim()
            .split_once(' ')
            .map(|(_, o)| o.replace('"', ""))
            .unwrap_or_default();
        self.pg_ctl(&["-o", &options, "start"])
    }

    /// `pg_ctl -D DATA -l LOG -w -t 60 ARGS`.
    fn pg_ctl(&self, args: &[&str]) -> Result<(), String> {
        let data = self.dir.join("data").to_string_lossy().into_owned();
        let log = self.dir.join("server.log").to_string_lossy().into_owned();
        let mut all = vec!["-D", &data, "-l", &log, "-w", "-t", "60"];
        all.extend_from_slice(args);
        self.run("pg_ctl", &all).map_err(|e| {
            let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            format!(
                "{e}\nthe server's log:\n{}",
                lines[lines.len().saturating_sub(15)..].join("\n")
            )
        })
    }

    /// Run one of the server binaries as the cluster's owner, in its namespace.
    fn run(&self, program: &str, args: &[&str]) -> Result<(), String> {
        let mut words: Vec<String> = Vec::new();
        if let Some(ns) = &self.netns {
            words.extend(["ip", "netns", "exec", ns].map(String::from));
        }
        if let Some((uid, gid)) = self.owner {
            words.extend([
                "setpriv".into(),
                format!("--reuid={uid}"),
                format!("--regid={gid}"),
                "--clear-groups".into(),
                "--".into(),
            ]);
        }
        words.push(self.bindir.join(program).to_string_lossy().into_owned());
        words.extend(args.iter().map(|a| a.to_string()));
        // Output goes to a file: a daemon that kept a pipe open would hold `output()` forever.
        let out_path = self.dir.join("commands.log");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&out_path)
            .map_err(|e| format!("cannot open {}: {e}", out_path.display()))?;
        let status = Command::new(&words[0])
            .args(&words[1..])
            .current_dir(&self.dir)
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(out.try_clone().map_err(|e| e.to_string())?)
            .stderr(out)
            .status()
            .map_err(|e| format!("cannot run {}: {e}", words.join(" ")))?;
        if status.success() {
            Ok(())
        } else {
            let text = std::fs::read_to_string(&out_path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            Err(format!(
                "`{}` failed ({status}):\n{}",
                words.join(" "),
                lines[lines.len().saturating_sub(10)..].join("\n")
            ))
        }
    }
}

impl Drop for StateCluster {
    fn drop(&mut self) {
        let _ = self.pg_ctl(&["-m", "immediate", "stop"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Stop and remove the state clusters of test processes that are gone.
fn sweep_stale_clusters() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(CLUSTER_PREFIX)
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if !pid_is_gone(pid) {
            continue;
        }
        // The postmaster's pid is the first line of postmaster.pid; it may run in a namespace
        // of a test that is gone, so signal it rather than ask pg_ctl.
        if let Ok(text) = std::fs::read_to_string(entry.path().join("data/postmaster.pid"))
            && let Some(Ok(server)) = text.lines().next().map(str::parse::<i32>)
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(server),
                nix::sys::signal::Signal::SIGQUIT,
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        let _ = std::fs::remove_dir_all(entry.path());
    }
}

/// A network namespace with one veth pair per private network `10.213.K.0/24` (K = 1, 2, …):
/// `10.213.K.1` on this side, `10.213.K.2` inside. Removed with its veths when dropped, also
/// when the test fails; one a killed test process left is removed by the next
/// [`Netns::create`].
pub struct Netns {
    /// The namespace's name (`upag-<pid>`).
    pub name: String,
    nets: u8,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn host_veth(pid: u32, k: u8) -> String {
    format!("uag{pid}h{k}")
}

impl Netns {
    /// Why this machine cannot create network namespaces, if it cannot.
    pub fn unavailable() -> Option<String> {
        if !nix::unistd::geteuid().is_root() {
            return Some(
                "root (CAP_NET_ADMIN and CAP_SYS_ADMIN) to create a network namespace and veth pairs with `ip netns add`/`ip link add`; run the test as root".into(),
            );
        }
        match Command::new("ip").arg("-V").output() {
            Ok(o) if o.status.success() => None,
            _ => Some("the `ip` command (iproute2) to create a network namespace".into()),
        }
    }

    /// Create the namespace and `nets` veth pairs (at most 9).
    pub fn create(nets: u8) -> Result<Netns, String> {
        sweep_stale_netns();
        let pid = std::process::id();
        let ns = Netns {
            name: format!("upag-{pid}"),
            nets,
        };
        ip(&["netns", "add", &ns.name])?;
        ip(&["netns", "exec", &ns.name, "ip", "link", "set", "lo", "up"])?;
        for k in 1..=nets {
            let (host, inner) = (host_veth(pid, k), format!("uag{pid}n{k}"));
            ip(&["link", "add", &host, "type", "veth", "peer", "name", &inner])?;
            ip(&["link", "set", &inner, "netns", &ns.name])?;
            ip(&["addr", "add", &format!("10.213.{k}.1/24"), "dev", &host])?;
            ip(&["link", "set", &host, "up"])?;
            let addr = format!("10.213.{k}.2/24");
            ip(&[
                "netns", "exec", &ns.name, "ip", "addr", "add", &addr, "dev", &inner,
            ])?;
            ip(&["netns", "exec", &ns.name, "ip", "link", "set", &inner, "up"])?;
        }
        Ok(ns)
    }

    /// The address inside the namespace on network `k`.
    pub fn inner_addr(k: u8) -> String {
        format!("10.213.{k}.2")
    }

    /// Bring this side of network `k` down (a partition) or up again.
    pub fn set_link(&self, k: u8, up: bool) {
        let host = host_veth(std::process::id(), k);
        ip(&["link", "set", &host, if up { "up" } else { "down" }])
            .unwrap_or_else(|e| panic!("{e}"));
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for k in 1..=self.nets {
            let _ = ip(&["link", "del", &host_veth(std::process::id(), k)]);
        }
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// Remove the namespaces (and veths) of test processes that are gone.
fn sweep_stale_netns() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name.strip_prefix("upag-") else {
            continue;
        };
        if !pid_is_gone(pid) {
            continue;
        }
        if let Ok(pid) = pid.parse::<u32>() {
            for k in 1..=9 {
                let _ = ip(&["link", "del", &host_veth(pid, k)]);
            }
        }
        let _ = ip(&["netns", "del", name]);
    }
}
