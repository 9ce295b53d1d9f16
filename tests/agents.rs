//! Agents across machines (issue 18), from outside: real `upshift agent` processes sharing a
//! PostgreSQL state cluster of the test's own, simulated Bytebase instances, real SIGSTOP,
//! a real network partition (a veth in a network namespace taken down) and real restarts of
//! the state cluster.
//!
//! - An agent paused, or cut off from the state, past its lease while another agent takes its
//!   item over and finishes the run: when it comes back it writes nothing more (the run stays
//!   `succeeded`, the queue names the agent that finished, no step row changes), exits 6, rolls
//!   back and restores nothing, and the new version was started once and runs once.
//! - The state cluster restarted (fast, or stopped for 3 s) under two agents: both ride it out,
//!   the queue drains, no run is left `running`, every instance is upgraded exactly once.

mod common;

use std::time::{Duration, Instant};

use common::agents::{
    Agent, AgentExit, AgentFleet, Netns, StateCluster, is_stopped, service_processes,
};
use nix::sys::signal::Signal;
use tokio_postgres::{Client, NoTls, Row};

/// The tests take turns: each runs several agents and simulated services on a 2-core machine,
/// and the partition test's addresses are fixed.
static TURNS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The agents' lease (`UPSHIFT_LEASE_SECS`): short, so that a pause outlives it quickly.
const LEASE_SECS: u32 = 3;

/// The agents' lease in the state-restart tests: longer than the outage (a restart, or 3 s
/// stopped) plus the cluster's start on a loaded machine.
const RESTART_LEASE_SECS: u32 = 10;

/// How long an agent may take to get to the moment a test waits for (it compiles the adapter
/// for its own data directory first).
const REACH: Duration = Duration::from_secs(120);

/// The shared state, as the test reads it: one connection, made again when it broke (the
/// cluster restarts under some tests).
struct StateDb {
    url: String,
    client: Option<Client>,
}

impl StateDb {
    fn new(url: &str) -> StateDb {
        StateDb {
            url: format!("{url}?connect_timeout=5"),
            client: None,
        }
    }

    /// The rows of `sql` with text parameters, or `None` when the state cannot be read now.
    async fn try_rows(&mut self, sql: &str, params: &[&str]) -> Option<Vec<Row>> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            let (client, connection) = tokio_postgres::connect(&self.url, NoTls).await.ok()?;
            tokio::spawn(connection);
            self.client = Some(client);
        }
        let client = self.client.as_ref()?;
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
            .iter()
            .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        match client.query(sql, &params).await {
            Ok(rows) => Some(rows),
            Err(_) => {
                self.client = None;
                None
            }
        }
    }

    /// The rows of `sql`; the state must be readable.
    async fn rows(&mut self, sql: &str, params: &[&str]) -> Vec<Row> {
        match self.try_rows(sql, params).await {
            Some(rows) => rows,
            None => {
                tokio::time::sleep(Duration::from_millis(500)).await;
                self.try_rows(sql, params)
                    .await
                    .unwrap_or_else(|| panic!("cannot read the state: {sql}"))
            }
        }
    }

    /// Every row of `sql` as its JSON text (`row_to_json` of the row called `r`).
    async fn json_rows(&mut self, sql: &str, params: &[&str]) -> Vec<serde_json::Value> {
        self.rows(sql, params)
            .await
            .iter()
            .map(|r| serde_json::from_str(r.get::<_, &str>(0)).expect("row JSON"))
            .collect()
    }

    /// The runs of `instance`, oldest first (every column but the plan, which no one rewrites).
    async fn runs(&mut self, instance: &str) -> Vec<serde_json::Value> {
        self.json_rows(
            "SELECT (to_jsonb(r) - 'plan_json')::text FROM upshift_runs r \
             WHERE instance = $1 ORDER BY started_at, id",
            &[instance],
        )
        .await
    }

    /// Every journaled step of `instance`'s runs, in order.
    async fn steps(&mut self, instance: &str) -> Vec<serde_json::Value> {
        self.json_rows(
            "SELECT row_to_json(r)::text FROM upshift_steps r \
             WHERE run_id IN (SELECT id FROM upshift_runs WHERE instance = $1) \
             ORDER BY run_id, phase, seq",
            &[instance],
        )
        .await
    }

    /// The queue row of `instance`.
    async fn queue(&mut self, instance: &str) -> Vec<serde_json::Value> {
        self.json_rows(
            "SELECT row_to_json(r)::text FROM upshift_queue r WHERE instance = $1",
            &[instance],
        )
        .await
    }
}

/// Poll `what` every 50 ms until it gives `Some`, for at most `limit`; `agent` must not exit
/// meanwhile (its stderr is in the message).
async fn until<T>(
    agent: &mut Agent,
    limit: Duration,
    goal: &str,
    mut what: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(t) = what().await {
            return t;
        }
        if agent.exited() {
            let exit = agent.wait(Duration::from_secs(1));
            panic!(
                "{} ended before {goal}: {:?}",
                agent.name,
                exit.map(|e| (e.code, e.tail()))
            );
        }
        assert!(
            Instant::now() < deadline,
            "{goal}: not within {} s",
            limit.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Where agent A is interrupted.
#[derive(Debug, Clone, Copy)]
enum Moment {
    /// Right after it journaled the `start` forward step as `started`, before it starts the
    /// new version (its test hook `UPSHIFT_PAUSE_AT` stops it there).
    StartJournaled,
    /// In the middle of `wait-healthy` (the new version answers 404 until the test lets it be
    /// healthy), after its heartbeat has renewed the lease during that step.
    MidStepAfterHeartbeat,
}

/// How agent A loses the state.
#[derive(Debug, Clone, Copy)]
enum Loss {
    /// SIGSTOP: A freezes, heartbeat and all.
    Pause,
    /// A keeps running, but its link to the state cluster is down.
    Partition,
}

/// The forward step `seq` of `steps`, if journaled.
fn forward(steps: &[serde_json::Value], seq: i64) -> Option<&serde_json::Value> {
    steps
        .iter()
        .find(|s| s["phase"] == "forward" && s["seq"] == seq)
}

/// Agent A loses the state (`loss`) at `moment` and stays without it well past its lease while
/// agent B takes the item over and finishes the run; then A gets the state back.
async fn a_stale_agent_changes_nothing(loss: Loss, moment: Moment) {
    let Some(pg) = common::pg() else { return };
    let netns = match loss {
        Loss::Pause => None,
        Loss::Partition => {
            if let Some(why) = Netns::unavailable() {
                common::missing(&why);
                return;
            }
            Some(())
        }
    };
    let _turn = TURNS.lock().await;
    let label = format!("{loss:?} at {moment:?}");
    // The namespace is declared before the cluster in it, so it is removed after it.
    let netns = netns.map(|()| Netns::create(2).expect("network namespace"));
    let cluster = match &netns {
        Some(ns) => StateCluster::start(
            Some(&ns.name),
            &[&Netns::inner_addr(1), &Netns::inner_addr(2)],
        ),
        None => StateCluster::start(None, &["127.0.0.1"]),
    }
    .expect("the state cluster");
    // A reaches the state through network 1 (the one cut), B and the test through network 2.
    let (a_url, b_url) = match &netns {
        Some(_) => (
            cluster.url(&Netns::inner_addr(1)),
            cluster.url(&Netns::inner_addr(2)),
        ),
        None => (cluster.url("127.0.0.1"), cluster.url("127.0.0.1")),
    };
    let marker_dir = tempfile::tempdir().expect("tempdir");
    let unhealthy = marker_dir.path().join("healthz-404");
    let extra = match moment {
        Moment::StartJournaled => String::new(),
        Moment::MidStepAfterHeartbeat => format!(
            ", BB_SIM_HEALTH_404_IF_EXISTS = \"{}\"",
            unhealthy.display()
        ),
    };
    let fleet = AgentFleet::bytebase(pg, "bb", 1, &[], &extra, LEASE_SECS).await;
    let (instance, port, db) = (fleet.names[0].as_str(), fleet.ports[0], &fleet.dbs[0]);
    fleet.enqueue_all(&b_url, "3.11.1");
    let mut state = StateDb::new(&b_url);

    let hook = match moment {
        Moment::StartJournaled => vec![("UPSHIFT_PAUSE_AT", "forward:4:started")],
        // A stops itself for a moment once it has journaled the `stop` step (so after its
        // preflight found the old version healthy), for the test to make the new one unhealthy.
        Moment::MidStepAfterHeartbeat => vec![("UPSHIFT_PAUSE_AT", "forward:1:started")],
    };
    let mut a = fleet.spawn_agent("agent-a", &a_url, &hook);
    let a_pid = a.pid();
    match moment {
        Moment::StartJournaled => {
            until(&mut a, REACH, "A paused itself", async || {
                is_stopped(a_pid).then_some(())
            })
            .await;
            let steps = state.steps(instance).await;
            let start = forward(&steps, 4).expect("the start step is journaled");
            assert_eq!(start["step_id"], "start", "{label}: {start}");
            assert_eq!(start["status"], "started", "{label}: {start}");
            if let Loss::Partition = loss {
                netns.as_ref().expect("netns").set_link(1, false);
                a.signal(Signal::SIGCONT);
            }
        }
        Moment::MidStepAfterHeartbeat => {
            // The new version is unhealthy from its start until the test says otherwise.
            until(&mut a, REACH, "A paused itself at `stop`", async || {
                is_stopped(a_pid).then_some(())
            })
            .await;
            std::fs::write(&unhealthy, "").expect("marker");
            a.signal(Signal::SIGCONT);
            let step_started_ms = until(&mut a, REACH, "A waits for health", async || {
                forward(&state.steps(instance).await, 5)
                    .filter(|s| s["step_id"] == "wait-healthy" && s["status"] == "started")
                    .and_then(|s| s["started_ms"].as_i64())
            })
            .await;
            // Mid-step, the heartbeat renews the lease: it expires later than a lease taken
            // when the step began would.
            let ttl_ms = i64::from(LEASE_SECS) * 1000;
            until(
                &mut a,
                Duration::from_secs(20),
                "A's heartbeat renewed its lease mid-step",
                async || {
                    let rows = state
                        .rows(
                            "SELECT expires_ms FROM upshift_leases WHERE instance = $1",
                            &[instance],
                        )
                        .await;
                    rows.first()
                        .map(|r| r.get::<_, i64>(0))
                        .filter(|expires| *expires > step_started_ms + ttl_ms + 300)
                },
            )
            .await;
            match loss {
                Loss::Pause => {
                    a.signal(Signal::SIGSTOP);
                    until(
                        &mut a,
                        Duration::from_secs(10),
                        "A is stopped",
                        async || is_stopped(a_pid).then_some(()),
                    )
                    .await;
                }
                Loss::Partition => netns.as_ref().expect("netns").set_link(1, false),
            }
            std::fs::remove_file(&unhealthy).expect("the new version may be healthy now");
        }
    }

    let lost_at = Instant::now();

    // B takes the item over once A's lease has expired, and finishes the run.
    let mut b = fleet.spawn_agent("agent-b", &b_url, &[]);
    let b_exit = b
        .wait(Duration::from_secs(150))
        .unwrap_or_else(|| panic!("{label}: B did not finish"));
    assert_eq!(b_exit.code, Some(0), "{label}: B: {}", b_exit.tail());
    let handled = b_exit.handled();
    assert_eq!(handled.len(), 1, "{label}: B handled {handled:?}");
    assert_eq!(handled[0]["instance"], instance, "{handled:?}");
    assert_eq!(handled[0]["outcome"], "succeeded", "{label}: {handled:?}");
    assert_eq!(handled[0]["reclaimed"], true, "{label}: {handled:?}");
    assert_eq!(handled[0]["resumed"], true, "{label}: {handled:?}");
    if let Loss::Pause = loss {
        assert!(
            is_stopped(a_pid),
            "{label}: A stayed stopped while B worked"
        );
    }
    let runs = state.runs(instance).await;
    let steps = state.steps(instance).await;
    let queue = state.queue(instance).await;
    let data = common::table_checksums(db).await;
    assert_eq!(runs.len(), 1, "{label}: one run: {runs:?}");
    assert_eq!(runs[0]["status"], "succeeded", "{label}: {runs:?}");
    assert_eq!(
        fleet.starts_of(instance, "3.11.1"),
        1,
        "{label}: before A is back, the new version was started once:\n{}",
        fleet.service_log(instance)
    );

    // A gets the state back, well past its lease (at least twice its length after losing it).
    let past = lost_at + 2 * Duration::from_secs(LEASE_SECS.into());
    tokio::time::sleep(past.saturating_duration_since(Instant::now())).await;
    match loss {
        Loss::Pause => a.signal(Signal::SIGCONT),
        Loss::Partition => netns.as_ref().expect("netns").set_link(1, true),
    }
    let a_exit: AgentExit = a
        .wait(Duration::from_secs(120))
        .unwrap_or_else(|| panic!("{label}: A did not exit after it got the state back"));

    // Nothing A wrote after B finished: the run, its steps and the queue row are as B left them.
    assert_eq!(
        state.runs(instance).await,
        runs,
        "{label}: the run row is as B left it (A: {})",
        a_exit.tail()
    );
    assert_eq!(
        state.queue(instance).await,
        queue,
        "{label}: the queue row is as B left it"
    );
    assert_eq!(
        state.steps(instance).await,
        steps,
        "{label}: no step row was written after B finished"
    );
    assert_eq!(queue.len(), 1, "{queue:?}");
    assert_eq!(queue[0]["status"], "done", "{label}: {queue:?}");
    assert_eq!(queue[0]["outcome"], "succeeded", "{label}: {queue:?}");
    assert_eq!(queue[0]["agent"], "agent-b", "{label}: {queue:?}");
    // A knows it lost the lease, says so with exit 6, and never rolled back or restored.
    assert_eq!(
        a_exit.code,
        Some(6),
        "{label}: A exits 6 (it lost the lease); it printed {} and\n{}",
        a_exit.stdout,
        a_exit.tail()
    );
    assert!(
        steps.iter().all(|s| s["phase"] != "rollback"),
        "{label}: no rollback step: {steps:?}"
    );
    let restores: Vec<_> = fleet
        .audit("agent-a")
        .into_iter()
        .filter(|r| {
            r.event.operation.contains("restore")
                || r.event.detail.as_deref().unwrap_or("").contains("rollback")
        })
        .collect();
    assert!(
        restores.is_empty(),
        "{label}: A restored or rolled back: {restores:?}"
    );
    assert_eq!(
        common::table_checksums(db).await,
        data,
        "{label}: A changed nothing in the product's database"
    );
    // The new version serves, as one process, started once.
    let (_, body) = common::http_get(port, "/v1/actuator/info").await;
    assert!(body.contains("\"3.11.1\""), "{label}: serves {body}");
    assert_eq!(service_processes(port), 1, "{label}: one process");
    assert_eq!(
        fleet.starts_of(instance, "3.11.1"),
        1,
        "{label}: the new version was started once:\n{}",
        fleet.service_log(instance)
    );
    let starts = |machine: &str| {
        fleet
            .audit(machine)
            .into_iter()
            .filter(|r| {
                r.event.instance == instance
                    && r.event.capability == "service"
                    && r.event.operation == "start"
                    && r.event.decision == upshift::audit::Decision::Allowed
                    && r.event.error.is_none()
            })
            .count()
    };
    assert_eq!(
        starts("agent-a") + starts("agent-b"),
        1,
        "{label}: one audited start of the service (A {}, B {})",
        starts("agent-a"),
        starts("agent-b")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_paused_past_its_lease_after_journaling_start_changes_nothing() {
    a_stale_agent_changes_nothing(Loss::Pause, Moment::StartJournaled).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_paused_past_its_lease_mid_step_after_a_heartbeat_changes_nothing() {
    a_stale_agent_changes_nothing(Loss::Pause, Moment::MidStepAfterHeartbeat).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_partitioned_from_the_state_after_journaling_start_changes_nothing() {
    a_stale_agent_changes_nothing(Loss::Partition, Moment::StartJournaled).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_partitioned_from_the_state_mid_step_changes_nothing() {
    a_stale_agent_changes_nothing(Loss::Partition, Moment::MidStepAfterHeartbeat).await;
}

/// How the state cluster goes away under the agents.
#[derive(Debug, Clone, Copy)]
enum Restart {
    /// `pg_ctl restart -m fast`.
    Fast,
    /// `pg_ctl stop -m fast`, 3 s, `pg_ctl start`.
    StopWaitStart,
}

/// Two agents work through six instances; the state cluster restarts under them.
async fn agents_ride_out_a_state_restart(how: Restart) {
    let Some(pg) = common::pg() else { return };
    let _turn = TURNS.lock().await;
    let cluster = StateCluster::start(None, &["127.0.0.1"]).expect("the state cluster");
    let url = cluster.url("127.0.0.1");
    // The outage is shorter than the lease, so riding it out is the promise; an outage longer
    // than the lease lets the other agent take an item over (fenced, exit 6), which the pause
    // and partition tests cover.
    let fleet = AgentFleet::bytebase(pg, "rs", 6, &[], "", RESTART_LEASE_SECS).await;
    fleet.enqueue_all(&url, "3.11.1");
    let mut state = StateDb::new(&url);
    let mut a = fleet.spawn_agent("agent-a", &url, &[]);
    let mut b = fleet.spawn_agent("agent-b", &url, &[]);
    until(&mut a, REACH, "both agents claimed work", async || {
        let rows = state
            .try_rows(
                "SELECT count(DISTINCT agent) FROM upshift_queue WHERE agent IS NOT NULL",
                &[],
            )
            .await?;
        (rows.first()?.get::<_, i64>(0) >= 2).then_some(())
    })
    .await;
    match how {
        Restart::Fast => cluster.restart_fast().expect("pg_ctl restart"),
        Restart::StopWaitStart => {
            cluster.stop_fast().expect("pg_ctl stop");
            std::thread::sleep(Duration::from_secs(3));
            cluster.start_again().expect("pg_ctl start");
        }
    }
    let back = Instant::now() + Duration::from_secs(30);
    while state.try_rows("SELECT 1", &[]).await.is_none() {
        assert!(Instant::now() < back, "{how:?}: the state cluster is back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for agent in [&mut a, &mut b] {
        let exit = agent
            .wait(Duration::from_secs(180))
            .unwrap_or_else(|| panic!("{how:?}: {} did not finish", agent.name));
        assert_eq!(
            exit.code,
            Some(0),
            "{how:?}: {} rides out the restart: {}",
            agent.name,
            exit.tail()
        );
    }
    let queue = state
        .json_rows(
            "SELECT row_to_json(r)::text FROM upshift_queue r ORDER BY instance",
            &[],
        )
        .await;
    assert_eq!(queue.len(), 6, "{queue:?}");
    for item in &queue {
        assert_eq!(item["status"], "done", "{how:?}: the queue drained: {item}");
        assert_eq!(item["outcome"], "succeeded", "{how:?}: {item}");
    }
    let running = state
        .rows(
            "SELECT id, instance FROM upshift_runs WHERE status = 'running'",
            &[],
        )
        .await;
    assert!(
        running.is_empty(),
        "{how:?}: runs left running: {:?}",
        running
            .iter()
            .map(|r| r.get::<_, String>(1))
            .collect::<Vec<_>>()
    );
    for (name, port) in fleet.names.iter().zip(&fleet.ports) {
        let runs = state.runs(name).await;
        let succeeded = runs
            .iter()
            .filter(|r| r["kind"] == "upgrade" && r["status"] == "succeeded")
            .count();
        assert_eq!(
            succeeded, 1,
            "{how:?}: {name}: exactly one succeeded run: {runs:?}"
        );
        let (_, body) = common::http_get(*port, "/v1/actuator/info").await;
        assert!(body.contains("\"3.11.1\""), "{how:?}: {name} serves {body}");
        assert_eq!(service_processes(*port), 1, "{how:?}: {name}: one process");
        assert_eq!(
            fleet.starts_of(name, "3.11.1"),
            1,
            "{how:?}: {name}: the new version was started once"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_ride_out_a_fast_restart_of_the_state_cluster() {
    agents_ride_out_a_state_restart(Restart::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_ride_out_the_state_cluster_stopped_for_three_seconds() {
    agents_ride_out_a_state_restart(Restart::StopWaitStart).await;
}

/// `upshift enqueue --allow-unknown` carries the operator's allowance to the agent that claims
/// the item: a target the Bytebase catalog does not know (3.14.2, which the simulator plays) is
/// refused for the instance queued without it and upgraded for the one queued with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_plans_a_release_outside_the_catalog_only_when_it_was_queued_allowed() {
    let Some(pg) = common::pg() else { return };
    let _turn = TURNS.lock().await;
    let (_, url) = pg.fresh_db("state").await;
    let fleet = AgentFleet::bytebase(pg, "au", 2, &[], "", LEASE_SECS).await;
    let enqueue = |name: &str, extra: &[&str]| {
        let out = fleet
            .upshift("ops", &url)
            .args(["enqueue", name, "--to", "3.14.2"])
            .args(extra)
            .output()
            .expect("enqueue");
        assert!(
            out.status.success(),
            "enqueue {name}: {}",
            common::stderr(&out)
        );
    };
    enqueue("au01", &[]);
    enqueue("au02", &["--allow-unknown"]);

    let mut agent = fleet.spawn_agent("agent-u", &url, &[]);
    let exit = agent
        .wait(Duration::from_secs(300))
        .expect("the agent finished");
    assert_eq!(exit.code, Some(0), "{}", exit.tail());
    let handled = exit.handled();
    let outcome = |name: &str| {
        handled
            .iter()
            .find(|h| h["instance"] == name)
            .map(|h| h["outcome"].clone())
            .unwrap_or_default()
    };
    assert_eq!(outcome("au01"), "refused", "{handled:?}");
    assert_eq!(outcome("au02"), "succeeded", "{handled:?}");

    let mut state = StateDb::new(&url);
    let refused = state.runs("au01").await;
    assert!(
        refused.iter().any(|r| r["status"] == "refused"
            && r["message"]
                .as_str()
                .unwrap_or_default()
                .contains("unknown-release")),
        "au01 was refused by `unknown-release`: {refused:?}"
    );
    let (_, body) = common::http_get(fleet.ports[0], "/v1/actuator/info").await;
    assert!(
        body.contains("\"3.10.0\""),
        "au01 still serves 3.10.0: {body}"
    );
    let (_, body) = common::http_get(fleet.ports[1], "/v1/actuator/info").await;
    assert!(body.contains("\"3.14.2\""), "au02 serves 3.14.2: {body}");
}
