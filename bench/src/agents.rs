//! Queue throughput of `upshift agent` and the host's time per instance outside the steps.
//!
//! `INSTANCES` cheap upgrades (the fleet group's: a process service and a small data directory
//! per instance, the test adapter's plan for `2.0.0-cheap`) are enqueued in a throwaway
//! PostgreSQL state, then drained by 1, 2 and 4 real `upshift agent --until-empty` processes,
//! each with its own data directory (separate machines) and the shared process-service state.
//! The journal (steps' `started_ms` and `duration_ms`, the queue's claim and finish times) says
//! where each agent's time went; `pg_stat_database.xact_commit` counts the state's transactions.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

use crate::Config;
use crate::fleet;
use crate::report::{Metric, Target, Unit};
use crate::snapshot::run_ok;
use crate::stats::Samples;

/// Instances drained per run (the number).
const INSTANCES: usize = 40;
/// Agent counts, in the order.
const AGENTS: [usize; 3] = [1, 2, 4];
/// The target version of the drain (the fleet's instances start at `1.0.0-cheap`).
const TARGET: &str = "2.0.0-cheap";
/// The goal per instance outside the steps.
const GOAL: f64 = 20e-3;

/// What one drain measured.
#[derive(Debug, Default, Clone)]
struct Drain {
    /// Wall time from spawning the agents to the last one's exit, in seconds.
    wall: f64,
    /// Sum of the journaled step durations, in seconds.
    steps: f64,
    /// State transactions committed during the drain (`xact_commit`).
    xacts: f64,
    /// The parts of agents × wall, summed over agents and items, in seconds.
    parts: Parts,
}

/// Where the agents' time went, summed over the drain (seconds).
#[derive(Debug, Default, Clone)]
struct Parts {
    /// Spawn → first claim, per agent: process start, fleet and session (state connection,
    /// schema, audit log), the first claim statement.
    startup: f64,
    /// Claim → first step's start: lease, unfinished-run check, adapter load, role check,
    /// detect, plan, preflight, the run's row.
    before_steps: f64,
    /// Between steps: lease checks and journal statements around each step.
    between_steps: f64,
    /// Last step's end → the item's finish: verify, finalize, the restore plan offered, the
    /// run's status, lease release.
    after_steps: f64,
    /// An item's finish → the same agent's next claim (the queue's finish and claim).
    between_items: f64,
    /// An agent's last finish → the last agent's exit: waiting for items others hold (the
    /// 300 ms poll) and exiting.
    tail: f64,
}

/// The figures.
pub async fn run(cfg: &Config) -> Result<Vec<Metric>> {
    let root = cfg.data.join("agents");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root)?;
    let result = run_in(cfg, &root);
    fleet::kill_under(&root);
    let _ = std::fs::remove_dir_all(&root);
    result
}

fn run_in(cfg: &Config, root: &Path) -> Result<Vec<Metric>> {
    let upshift = fleet::upshift_binary()?;
    let adapter = root.join("test-misbehaving.wasm");
    std::fs::write(&adapter, crate::sandbox::built("test-misbehaving")?)?;
    let cluster = upshift_sim::pg::Cluster::start(&root.join("cluster"))
        .map_err(|e| anyhow::anyhow!("a throwaway PostgreSQL for the agents' state: {e}"))?;
    let pg = Psql {
        bindir: upshift_sim::pg::find_bindir().map_err(|e| anyhow::anyhow!("{e}"))?,
        cluster: &cluster,
    };
    let instances = if cfg.quick { 20 } else { INSTANCES };
    let mut drains: Vec<Vec<Drain>> = vec![Vec::new(); AGENTS.len()];
    let mut idle_wall = Samples::new();
    let mut idle_xacts = Samples::new();
    let mut loads = Vec::new();
    for run in 0..cfg.runs {
        // Rotate the order, so a drift in the machine's load falls on every count alike.
        for k in 0..AGENTS.len() {
            let slot = (k + run) % AGENTS.len();
            let agents = AGENTS[slot];
            let dir = root.join(format!("run-{run}-{agents}"));
            let db = format!("state_{run}_{agents}");
            let drain = drain(&upshift, &adapter, &pg, &dir, &db, instances, agents)?;
            eprintln!(
                "agents run {run}: {agents} agent(s) drained {instances} in {:.2} s (steps {:.2} s, \
                 {:.0} transactions), overhead {:.1} ms per instance",
                drain.wall,
                drain.steps,
                drain.xacts,
                overhead(&drain, agents, instances) * 1e3
            );
            if slot == 0 {
                // One agent on the now empty queue: what an agent costs before any item.
                let (wall, xacts) = idle_agent(&upshift, &pg, &dir, &db)?;
                idle_wall.push(wall);
                idle_xacts.push(xacts);
            }
            drains[slot].push(drain);
            fleet::kill_under(&dir);
            let _ = std::fs::remove_dir_all(&dir);
            pg.sql("postgres", &format!("DROP DATABASE {db}"))?;
        }
        loads.push(crate::machine::load_average());
    }
    let server = pg.sql("postgres", "SHOW server_version")?;
    let mut out = Vec::new();
    let mut overheads = Vec::new();
    for (slot, agents) in AGENTS.iter().enumerate() {
        let runs = &drains[slot];
        let plural = if *agents == 1 { "" } else { "s" };
        let mut wall = Metric::new(
            &format!(
                "agents: drain {instances} cheap upgrades from the queue, {agents} agent{plural}"
            ),
            &format!(
                "wall time from starting {agents} `upshift agent --until-empty` process{} to the \
                 last one's exit",
                if *agents == 1 { "" } else { "es" }
            ),
            Unit::Seconds,
            Target::None,
        );
        let mut ideal = Samples::new();
        for d in runs {
            wall.ours.push(d.wall);
            ideal.push(d.steps / *agents as f64);
        }
        wall.comparison = Some((
            format!(
                "the journaled steps alone, spread evenly over {agents} agent{plural} (Σ step durations / {agents})"
            ),
            ideal,
        ));
        let mut per = Metric::new(
            &format!("agents: per-instance overhead outside the steps, {agents} agent{plural}"),
            &format!(
                "(wall time × {agents} − Σ journaled step durations (`upshift_steps.duration_ms`)) / \
                 {instances}: everything an agent does that is not a step, its start and its \
                 wait at the end included"
            ),
            Unit::Seconds,
            Target::AtMost(GOAL),
        );
        let mut xacts = Samples::new();
        for d in runs {
            per.ours.push(overhead(d, *agents, instances));
            xacts.push(d.xacts / instances as f64);
        }
        per.notes.push(format!(
            "where it went, per instance (medians over the runs; the parts add up to agents × \
             wall − steps): {}",
            parts_text(runs, instances)
        ));
        per.notes.push(format!(
            "state transactions (`pg_stat_database.xact_commit` of the state database, read \
             before and after the drain; every statement is its own transaction, and each \
             unprepared statement's Parse/Describe is one more) per instance: {} (min / median \
             / max), the agents' start included",
            crate::report::triple(Unit::Count, &xacts)
        ));
        overheads.push(per);
        out.push(wall);
    }
    if let Some(first) = out.first_mut() {
        first.notes.push(format!(
            "{instances} instances, each a process service (`env APP_VERSION={{version}} sleep \
             infinity`) with a data directory of 8 files of 4 KiB; the cheap upgrade is the test \
             adapter's plan for `{TARGET}` (snapshot the data directory, stop, switch, start — \
             the process backend waits 300 ms to see it did not exit at once — wait healthy), \
             then `verify`, as in the fleet figure"
        ));
        first.notes.push(format!(
            "the state: a throwaway PostgreSQL {server} cluster from `upshift_sim::pg` on \
             loopback (fsync off, synchronous_commit off: a durable state database adds its \
             commit latency to every statement), a fresh database per drain; before each drain \
             (untimed) `upshift apply --all --to 1.0.0-cheap` brings the instances up and \
             compiles the adapter once, its compiled-adapter cache is copied into every agent's \
             data directory (a machine that ran agents before has it), and `upshift enqueue \
             --all --to {TARGET}` queues them"
        ));
        first.notes.push(format!(
            "each agent has its own data directory (audit log, cache) and `--name`; all share \
             `--services` (one machine); every drain is checked: every item `done` with outcome \
             `succeeded` and every instance running exactly one process at `{TARGET}`; {} runs \
             per count, in rotating order; load average after each round: {}",
            cfg.runs,
            loads.join("; ")
        ));
        first.notes.push(format!(
            "one agent started on the empty queue (after a drain): {} wall, {} state \
             transactions (min / median / max): what an agent costs before its first item",
            crate::report::triple(Unit::Seconds, &idle_wall),
            crate::report::triple(Unit::Count, &idle_xacts),
        ));
    }
    out.extend(overheads);
    Ok(out)
}

fn overhead(d: &Drain, agents: usize, instances: usize) -> f64 {
    (d.wall * agents as f64 - d.steps) / instances as f64
}

fn parts_text(runs: &[Drain], instances: usize) -> String {
    let median = |f: &dyn Fn(&Parts) -> f64| {
        let mut s = Samples::new();
        for d in runs {
            s.push(f(&d.parts) / instances as f64);
        }
        crate::report::fmt(Unit::Seconds, s.median())
    };
    format!(
        "agents' start {}, claim → first step {}, between steps {}, last step → finish {}, \
         finish → next claim {}, waiting at the end {}",
        median(&|p| p.startup),
        median(&|p| p.before_steps),
        median(&|p| p.between_steps),
        median(&|p| p.after_steps),
        median(&|p| p.between_items),
        median(&|p| p.tail),
    )
}

/// psql against the throwaway cluster.
struct Psql<'a> {
    bindir: PathBuf,
    cluster: &'a upshift_sim::pg::Cluster,
}

impl Psql<'_> {
    fn sql(&self, db: &str, sql: &str) -> Result<String> {
        run_ok(
            Command::new(self.bindir.join("psql"))
                .args([
                    "-X",
                    "-q",
                    "-t",
                    "-A",
                    "-F",
                    "|",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-d",
                ])
                .arg(self.cluster.url(db))
                .arg("-c")
                .arg(sql),
        )
    }

    /// Transactions committed in `db` so far, once the counter has settled (a backend reports
    /// its counts when its client goes away, a moment after).
    fn xact_commit(&self, db: &str) -> Result<f64> {
        let read = || -> Result<f64> {
            self.sql(
                "postgres",
                &format!("SELECT xact_commit FROM pg_stat_database WHERE datname = '{db}'"),
            )?
            .parse::<f64>()
            .context("xact_commit")
        };
        let mut last = read()?;
        for _ in 0..50 {
            std::thread::sleep(Duration::from_millis(200));
            let now = read()?;
            if now == last {
                return Ok(now);
            }
            last = now;
        }
        Ok(last)
    }
}

fn epoch_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

/// `upshift` with the run's fleet, a data directory, the shared services and the state.
fn upshift_cmd(upshift: &Path, dir: &Path, data: &str, url: &str) -> Command {
    let mut cmd = Command::new(upshift);
    cmd.arg("--fleet")
        .arg(dir.join("upshift.toml"))
        .arg("--data")
        .arg(dir.join(data))
        .arg("--services")
        .arg(dir.join("services"))
        .arg("--state")
        .arg(url);
    cmd
}

/// Set up `instances` instances, queue them, drain them with `agents` agents; check and measure.
fn drain(
    upshift: &Path,
    adapter: &Path,
    pg: &Psql<'_>,
    dir: &Path,
    db: &str,
    instances: usize,
    agents: usize,
) -> Result<Drain> {
    pg.cluster
        .create_database(db)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let url = pg.cluster.url(db);
    let list = fleet::instances(&dir.join("instances"), instances)?;
    std::fs::write(dir.join("upshift.toml"), fleet::fleet_file(adapter, &list))?;
    // Untimed: bring every instance up at the old version, compiling the adapter once.
    let mut setup = upshift_cmd(upshift, dir, "data-setup", &url);
    setup
        .args([
            "apply",
            "--all",
            "--to",
            "1.0.0-cheap",
            "--yes",
            "--parallel",
            "8",
        ])
        .arg("--max-failures")
        .arg(instances.to_string());
    fleet::timed(setup, "upshift apply --to 1.0.0-cheap")?;
    fleet::check_running(&list, "1.0.0-cheap")?;
    for a in 0..agents {
        let data = dir.join(format!("data-agent-{a}"));
        std::fs::create_dir_all(&data)?;
        std::fs::set_permissions(&data, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        run_ok(
            Command::new("cp")
                .arg("-a")
                .arg(dir.join("data-setup").join("cache"))
                .arg(&data),
        )?;
    }
    let mut enqueue = upshift_cmd(upshift, dir, "data-setup", &url);
    enqueue.args(["enqueue", "--all", "--to", TARGET]);
    let queued = run_ok(&mut enqueue)?;
    if !queued.contains(&format!("queued {instances} of {instances}")) {
        bail!("enqueue said: {queued}");
    }
    std::thread::sleep(Duration::from_millis(300));
    let before = pg.xact_commit(db)?;

    let spawned_ms = epoch_ms();
    let started = Instant::now();
    let mut children = Vec::new();
    for a in 0..agents {
        let name = format!("agent-{a}");
        let log = |ext: &str| std::fs::File::create(dir.join(format!("{name}.{ext}")));
        let child = upshift_cmd(upshift, dir, &format!("data-agent-{a}"), &url)
            .args(["agent", "--name", &name, "--until-empty", "--json"])
            .stdin(Stdio::null())
            .stdout(log("out")?)
            .stderr(log("err")?)
            .spawn()
            .context("cannot start upshift agent")?;
        children.push((name, child));
    }
    let mut failed = Vec::new();
    for (name, child) in &mut children {
        let status = child.wait().context("waiting for an agent")?;
        if !status.success() {
            let err = std::fs::read_to_string(dir.join(format!("{name}.err"))).unwrap_or_default();
            failed.push(format!("{name} exited {status}: {}", err.trim()));
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let ended_ms = epoch_ms();
    if !failed.is_empty() {
        bail!("agents failed: {}", failed.join("; "));
    }
    let after = pg.xact_commit(db)?;

    // Every item done and succeeded, every instance at the target.
    let bad = pg.sql(
        db,
        "SELECT q.instance || ' ' || q.status || ' ' || coalesce(q.outcome, '') || ': ' || \
           coalesce(string_agg(r.status || ' ' || coalesce(r.message, ''), '; '), 'no run') \
         FROM upshift_queue q LEFT JOIN upshift_runs r ON r.instance = q.instance \
           AND r.to_version = q.target \
         WHERE q.status <> 'done' OR q.outcome IS DISTINCT FROM 'succeeded' \
         GROUP BY q.instance, q.status, q.outcome",
    )?;
    if !bad.is_empty() {
        bail!("the queue was not drained with every upgrade succeeded: {bad}");
    }
    fleet::check_running(&list, TARGET)?;

    // Per item: its agent, claim, finish, and its run's steps.
    let rows = pg.sql(
        db,
        &format!(
            "SELECT q.agent, q.claimed_ms, \
               (extract(epoch FROM q.finished_at::timestamptz) * 1000)::bigint, \
               min(s.started_ms), max(s.started_ms + s.duration_ms), sum(s.duration_ms), count(s.*) \
             FROM upshift_queue q \
             JOIN upshift_runs r ON r.instance = q.instance AND r.to_version = '{TARGET}' \
             JOIN upshift_steps s ON s.run_id = r.id \
             GROUP BY q.instance, q.agent, q.claimed_ms, q.finished_at \
             ORDER BY q.agent, q.claimed_ms"
        ),
    )?;
    let mut items: Vec<(String, [f64; 6])> = Vec::new();
    for line in rows.lines() {
        let cols: Vec<&str> = line.split('|').collect();
        if cols.len() != 7 {
            bail!("unexpected journal row {line:?}");
        }
        let mut v = [0.0; 6];
        for (i, c) in cols[1..].iter().enumerate() {
            v[i] = c
                .parse::<f64>()
                .with_context(|| format!("journal row {line:?}"))?;
        }
        items.push((cols[0].to_string(), v));
    }
    if items.len() != instances {
        bail!(
            "{} of {instances} items have a journaled run with steps",
            items.len()
        );
    }
    let mut d = Drain {
        wall,
        xacts: after - before,
        ..Drain::default()
    };
    let mut last: Option<(&str, f64)> = None;
    for (agent, [claimed, finished, first, end, sum, _count]) in &items {
        d.steps += sum / 1e3;
        d.parts.before_steps += (first - claimed) / 1e3;
        d.parts.between_steps += (end - first - sum) / 1e3;
        d.parts.after_steps += (finished - end) / 1e3;
        match last {
            Some((a, prev)) if a == agent => d.parts.between_items += (claimed - prev) / 1e3,
            Some((_, prev)) => {
                d.parts.tail += (ended_ms - prev) / 1e3;
                d.parts.startup += (claimed - spawned_ms) / 1e3;
            }
            None => d.parts.startup += (claimed - spawned_ms) / 1e3,
        }
        last = Some((agent, *finished));
    }
    if let Some((_, prev)) = last {
        d.parts.tail += (ended_ms - prev) / 1e3;
    }
    // An agent that claimed nothing spent the whole drain starting and waiting.
    let claiming = {
        let mut names: Vec<&str> = items.iter().map(|(a, _)| a.as_str()).collect();
        names.dedup();
        names.len()
    };
    d.parts.tail += (agents - claiming) as f64 * wall;
    Ok(d)
}

/// One agent on the empty queue: its wall time and state transactions.
fn idle_agent(upshift: &Path, pg: &Psql<'_>, dir: &Path, db: &str) -> Result<(f64, f64)> {
    let url = pg.cluster.url(db);
    let before = pg.xact_commit(db)?;
    let mut cmd = upshift_cmd(upshift, dir, "data-agent-0", &url);
    cmd.args(["agent", "--name", "idle", "--until-empty", "--json"]);
    let wall = fleet::timed(cmd, "upshift agent on an empty queue")?;
    let after = pg.xact_commit(db)?;
    Ok((wall, after - before))
}
