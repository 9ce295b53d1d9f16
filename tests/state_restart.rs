//! The PostgreSQL state rides out restarts of its server (issue 18): a store keeps working
//! across a fast restart, a statement issued while the server is down completes once it is back
//! (callers that failed together reconnect once), past the state wait the error names the
//! database and the bound, and a queue item's outcome is written only under its current claim.
//! Each restart test has a throwaway cluster of its own (the shared one is never restarted).

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use upshift::queue::QueueItem;
use upshift::state::StateStore;
use upshift_sim::pg::Cluster;

/// A cluster this test alone may stop and start, with a database `upshift`; `None` (said why)
/// without PostgreSQL on a developer box, a failure under `CI=true`.
fn own_cluster(name: &str) -> Option<(Cluster, String)> {
    common::sweep_stale(&format!("restart-{name}"));
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("restart-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    match Cluster::start(&dir) {
        Ok(cluster) => {
            cluster.create_database("upshift").expect("create database");
            let url = cluster.url("upshift");
            Some((cluster, url))
        }
        Err(e) => {
            common::missing(&format!("PostgreSQL server binaries, and: {e}"));
            None
        }
    }
}

async fn open(url: &str, lease: Duration, wait: Duration) -> Arc<dyn StateStore> {
    upshift::state::open_postgres(url, lease, wait)
        .await
        .expect("open the PostgreSQL state")
}

fn item(instance: &str) -> QueueItem {
    QueueItem {
        instance: instance.into(),
        target: "3.11.1".into(),
        allow_unknown: false,
    }
}

/// Connections to database `upshift` other than the asking one.
async fn sessions_on_upshift(url: &str) -> i64 {
    let admin = common::connect(&common::with_db(url, "postgres")).await;
    admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = 'upshift' AND pid <> pg_backend_pid()",
            &[],
        )
        .await
        .expect("pg_stat_activity")
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_keeps_working_across_restarts_and_waits_for_a_stopped_server() {
    let Some((mut cluster, url)) = own_cluster("ride") else {
        return;
    };
    let state = open(&url, Duration::from_secs(30), Duration::from_secs(60)).await;
    let queue = state.queue().expect("PostgreSQL has a queue");
    assert_eq!(
        queue
            .enqueue(&[item("a"), item("b")])
            .await
            .expect("enqueue"),
        2
    );

    // A fast restart (what `pg_ctl restart -m fast` does): the connection the store had is
    // gone; the next statements reconnect and succeed.
    cluster.stop().expect("stop");
    cluster.start_again().expect("start again");
    assert_eq!(queue.remaining().await.expect("after the restart"), 2);
    assert_eq!(queue.enqueue(&[item("c")]).await.expect("a write"), 1);
    assert!(
        state
            .runs(None, 10)
            .await
            .expect("the store's own tables")
            .is_empty()
    );

    // Stopped for about 3 s under eight callers: each statement completes once the server is
    // back, and together they made one new connection.
    cluster.stop().expect("stop");
    let mut waiting = Vec::new();
    for n in 0..8 {
        let state = state.clone();
        waiting.push(tokio::spawn(async move {
            let queue = state.queue().expect("queue");
            if n == 0 {
                queue.enqueue(&[item("d")]).await.map(|_| 4)
            } else {
                queue.remaining().await
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        waiting.iter().all(|t| !t.is_finished()),
        "a statement completed while the server was stopped"
    );
    let restarted = tokio::task::spawn_blocking(move || {
        cluster.start_again().expect("start again");
        cluster
    });
    for (n, task) in waiting.into_iter().enumerate() {
        let left = tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("the statement completes once the server is back")
            .expect("task")
            .unwrap_or_else(|e| panic!("statement {n} failed although the server came back: {e}"));
        assert!((3..=4).contains(&left), "statement {n}: {left} items left");
    }
    // Keep the cluster (its drop stops the server).
    let _cluster = restarted.await.expect("restarted");
    assert_eq!(
        queue.remaining().await.expect("remaining"),
        4,
        "d was queued"
    );
    assert_eq!(
        sessions_on_upshift(&url).await,
        1,
        "the eight callers that failed together reconnected once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_state_wait_the_error_names_the_database_and_the_bound() {
    let Some((mut cluster, url)) = own_cluster("bound") else {
        return;
    };
    let state = open(&url, Duration::from_secs(30), Duration::from_secs(2)).await;
    let queue = state.queue().expect("queue");
    cluster.stop().expect("stop");
    let error = queue
        .remaining()
        .await
        .expect_err("the server is stopped past the state wait")
        .to_string();
    let at = format!("127.0.0.1:{}", cluster.port());
    assert!(error.contains(&at), "names the database: {error}");
    assert!(
        error.contains("unreachable for 2 s") && error.contains("state wait is 2 s"),
        "names the bound: {error}"
    );
    assert!(
        error.contains("error connecting to server: Connection refused"),
        "names the last cause: {error}"
    );
    assert!(matches!(
        queue.claim("agent-x").await,
        Err(upshift::state::StateError::Unreachable { .. })
    ));
    // The store is not broken for good: once the server is back it works again.
    cluster.start_again().expect("start again");
    assert_eq!(
        queue.remaining().await.expect("after the server is back"),
        0
    );
}

/// The queue row of `instance`: status, agent, claims, outcome.
async fn queue_row(url: &str, instance: &str) -> (String, Option<String>, i32, Option<String>) {
    let client = common::connect(url).await;
    let row = client
        .query_one(
            "SELECT status, agent, claims, outcome FROM upshift_queue WHERE instance = $1",
            &[&instance],
        )
        .await
        .expect("queue row");
    (row.get(0), row.get(1), row.get(2), row.get(3))
}

#[tokio::test]
async fn finish_by_a_stale_claim_writes_nothing_and_the_newer_claim_wins() {
    let Some(pg) = common::pg() else { return };
    let (_, url) = pg.fresh_db("fenced-queue").await;
    // A short lease period: a claim whose agent took no lease is abandoned after it.
    let state = open(&url, Duration::from_millis(200), Duration::from_secs(30)).await;
    let queue = state.queue().expect("queue");
    queue.enqueue(&[item("i1")]).await.expect("enqueue");

    let a = queue
        .claim("agent-a")
        .await
        .expect("claim")
        .expect("an item");
    assert_eq!(
        (a.agent.as_str(), a.claim, a.reclaimed),
        ("agent-a", 1, false)
    );
    // agent-a is paused past the lease period; agent-b takes the item over.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let b = queue
        .claim("agent-b")
        .await
        .expect("claim")
        .expect("reclaimed");
    assert_eq!(b.item.instance, "i1");
    assert_eq!(
        (b.agent.as_str(), b.claim, b.reclaimed),
        ("agent-b", 2, true)
    );

    assert!(
        !queue.finish(&a, "needs-operator").await.expect("finish"),
        "the stale claim is told it lost the item"
    );
    assert_eq!(
        queue_row(&url, "i1").await,
        ("claimed".into(), Some("agent-b".into()), 2, None),
        "the stale agent wrote nothing"
    );
    assert!(queue.finish(&b, "succeeded").await.expect("finish"));
    // Repeating the same finish (its answer lost with the connection) is still ours.
    assert!(queue.finish(&b, "succeeded").await.expect("finish again"));
    assert!(!queue.finish(&a, "needs-operator").await.expect("finish"));
    assert_eq!(
        queue_row(&url, "i1").await,
        (
            "done".into(),
            Some("agent-b".into()),
            2,
            Some("succeeded".into())
        )
    );
    assert_eq!(queue.remaining().await.expect("remaining"), 0);

    // An agent claims only with nothing in hand: an item it holds is one whose claim's answer
    // was lost, taken up again at once under a new claim number that fences the old one.
    queue
        .enqueue(&[item("i2"), item("i3")])
        .await
        .expect("enqueue");
    let first = queue.claim("agent-c").await.expect("claim").expect("i2");
    let again = queue
        .claim("agent-c")
        .await
        .expect("claim")
        .expect("i2 again");
    assert_eq!(
        (first.item.instance.as_str(), again.item.instance.as_str()),
        ("i2", "i2")
    );
    assert_eq!(again.claim, first.claim + 1);
    assert!(!queue.finish(&first, "succeeded").await.expect("finish"));
    assert!(queue.finish(&again, "succeeded").await.expect("finish"));
    assert_eq!(queue_row(&url, "i3").await.0, "pending");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_waits_out_a_stopped_state_database_and_still_stops_on_sigterm() {
    let Some((mut cluster, url)) = own_cluster("agent") else {
        return;
    };
    let env = common::Env::new();
    env.write_fleet("");
    // The agent opens its session while the database is up, with nothing queued.
    let state = open(&url, Duration::from_secs(30), Duration::from_secs(60)).await;
    let mut agent = env
        .command(&["--state", &url, "agent", "--name", "agent-r", "--json"])
        .env("UPSHIFT_STATE_WAIT_SECS", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn agent");
    // Until its session is open and it asks the queue for work.
    let admin = common::connect(&common::with_db(&url, "postgres")).await;
    let opened = std::time::Instant::now();
    while admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = 'upshift' AND query LIKE '%upshift_queue%'",
            &[],
        )
        .await
        .expect("pg_stat_activity")
        .get::<_, i64>(0)
        == 0
    {
        assert!(opened.elapsed() < Duration::from_secs(60), "the agent never asked for work");
        assert!(agent.try_wait().expect("agent").is_none(), "the agent ended early");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    drop(admin);
    // Stopped for 4 s, past the agent's state wait of 1 s: it waits rather than exits.
    cluster.stop().expect("stop");
    tokio::time::sleep(Duration::from_secs(4)).await;
    if agent.try_wait().expect("agent").is_some() {
        let out = agent.wait_with_output().expect("agent output");
        panic!(
            "the agent exited on a lost state database ({}): {}",
            out.status,
            common::stderr(&out)
        );
    }
    cluster.start_again().expect("start again");

    // Work queued once the database is back is taken up (instances the fleet lacks end at
    // once, as errors).
    let queue = state.queue().expect("queue");
    queue
        .enqueue(&[item("x1"), item("x2")])
        .await
        .expect("enqueue");
    let queued = std::time::Instant::now();
    while queue.remaining().await.expect("remaining") > 0 {
        assert!(
            queued.elapsed() < Duration::from_secs(60),
            "the agent never took the work up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(agent.id()).expect("pid")),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let out = agent.wait_with_output().expect("agent output");
    let stderr = common::stderr(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("waiting for the state database") && stderr.contains("unreachable"),
        "the agent said it was waiting: {stderr}"
    );
    let done = common::json(&out);
    let handled: Vec<&str> = done
        .as_array()
        .expect("a list")
        .iter()
        .map(|h| h["instance"].as_str().expect("instance"))
        .collect();
    assert_eq!(handled, ["x1", "x2"], "{done}");
    assert!(
        done.as_array()
            .expect("list")
            .iter()
            .all(|h| h["lost"] == false)
    );
}
