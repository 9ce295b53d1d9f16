//! Runs survive their terminal (issue 15, case 2), through the real `upshift` binary, a real
//! PostgreSQL and the Bytebase simulator:
//!
//! - stdout and stderr into a pipe whose reader goes away (`… 2>&1 | head -3`, and a child
//!   whose pipes the test drops): the run finishes — upgraded, or rolled back — and says so in
//!   `history` and the reports directory;
//! - SIGHUP mid-run changes nothing;
//! - SIGTERM or SIGINT while a step is in progress: the step finishes, no further step starts,
//!   the host's rollback runs, exit 4;
//! - signals during the rollback do not interrupt it;
//! - a signal before anything was changed ends the command at once, saying so (exit 1).
//!
//! Every test ends with the instance at exactly the old or the new version, its rows intact,
//! exactly one service process, and a run in the history that says what happened.

mod common;

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Env, connect, free_port, json, start_services, stderr};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A Bytebase instance `bb` at 3.10.0 with seeded rows, started; its migration to 3.11.1 fails
/// when `fail`.
struct Subject {
    env: Env,
    port: u16,
    url: String,
    /// Every table's row count and checksum before the run.
    before: BTreeMap<String, (i64, String)>,
    /// The seeded columns' checksums (what an upgrade must keep).
    cols: BTreeMap<String, Vec<String>>,
    seeded: BTreeMap<String, (i64, String)>,
}

async fn bytebase(pg: &common::Pg, fail: bool) -> Subject {
    let (_, url) = pg.fresh_db("term").await;
    let env = Env::new();
    let port = free_port();
    let fail = fail.then_some("3.11.1");
    env.write_fleet(&common::bytebase_instance("bb", &url, port, "3.10.0", fail));
    start_services(&env, "bb", &["app"]).await;
    upshift_sim::bytebase::seed_user_rows(&connect(&url).await, 10)
        .await
        .expect("seed");
    let cols = common::columns(&url).await;
    Subject {
        before: common::table_checksums(&url).await,
        seeded: common::checksums_over(&url, &cols, &["instance_change_history"]).await,
        cols,
        env,
        port,
        url,
    }
}

impl Subject {
    /// From now on every start of the service takes three seconds before it serves, so the
    /// `wait-healthy` steps take observable time.
    fn slow_starts(&self) {
        let fleet = std::fs::read_to_string(self.env.fleet()).expect("fleet");
        let exe = env!("CARGO_BIN_EXE_upshift");
        let fast = format!(
            "command = \"'{exe}' simulate bytebase --version {{version}} --port {}\"",
            self.port
        );
        let slow = format!(
            "command = \"sh -c \\\"sleep 3 && exec '{exe}' simulate bytebase --version {{version}} --port {}\\\"\"",
            self.port
        );
        assert!(fleet.contains(&fast), "{fleet}");
        self.env.write_fleet(&fleet.replace(&fast, &slow));
    }

    /// `upshift apply bb --to 3.11.1 --yes` plus `extra`, started with both streams piped.
    fn spawn_apply(&self, extra: &[&str]) -> Child {
        self.env
            .command(&["apply", "bb", "--to", "3.11.1", "--yes"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn upshift apply")
    }

    /// The version the service answers with (`None` when nothing answers).
    async fn serving(&self) -> Option<String> {
        let (status, body) = common::http_get(self.port, "/v1/actuator/info").await;
        let info: serde_json::Value = serde_json::from_str(&body).ok()?;
        (status == 200).then(|| info["version"].as_str().unwrap_or_default().to_string())
    }

    /// Assert the instance is at exactly `version`, served by exactly one process, with every
    /// row: all of them as before at the old version, every seeded one at the new.
    async fn assert_at(&self, version: &str, what: &str) {
        assert_eq!(
            self.serving().await.as_deref(),
            Some(version),
            "{what}: serves"
        );
        assert_eq!(
            service_processes(self.port),
            1,
            "{what}: exactly one service process"
        );
        if version == "3.10.0" {
            assert_eq!(
                common::table_checksums(&self.url).await,
                self.before,
                "{what}: identical data"
            );
        } else {
            assert_eq!(
                common::checksums_over(&self.url, &self.cols, &["instance_change_history"]).await,
                self.seeded,
                "{what}: every seeded row"
            );
        }
    }

    /// The newest run in the history (`upshift history --json`).
    fn newest_run(&self) -> serde_json::Value {
        let out = self.env.upshift(&["history", "--json"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        json(&out)[0].clone()
    }

    /// The run's report as kept in the reports directory.
    fn kept_report(&self, run_id: &str) -> serde_json::Value {
        let path = self.env.data().join(format!("reports/{run_id}.json"));
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("the run's report {}: {e}", path.display()));
        serde_json::from_str(&text).expect("the kept report is JSON")
    }

    /// The journal of the newest run: (phase, step id, status, duration in ms), in order.
    fn journal(&self) -> Vec<(String, String, String, Option<i64>)> {
        let db = rusqlite::Connection::open(self.env.data().join("state.db")).expect("state");
        let mut rows = db
            .prepare(
                "SELECT phase, step_id, status, duration_ms FROM steps \
                 WHERE run_id = (SELECT id FROM runs ORDER BY started_at DESC, rowid DESC LIMIT 1) \
                 ORDER BY CASE phase WHEN 'forward' THEN 0 ELSE 1 END, seq",
            )
            .expect("query");
        rows.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .expect("steps")
            .collect::<Result<_, _>>()
            .expect("rows")
    }

    /// Wait until the journal shows step `id` of `phase` started and not yet finished.
    fn wait_in_step(&self, child: &mut Child, phase: &str, id: &str) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if self
                .journal()
                .iter()
                .any(|(p, s, status, _)| p == phase && s == id && status == "started")
            {
                return;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("upshift ended ({status}) before {phase} step `{id}` started");
            }
            assert!(
                Instant::now() < deadline,
                "{phase} step `{id}` never started: {:?}",
                self.journal()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// How many processes serve the simulated Bytebase on `port`.
fn service_processes(port: u16) -> usize {
    let port = port.to_string();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return 0;
    };
    procs
        .filter_map(Result::ok)
        .filter_map(|p| std::fs::read(p.path().join("cmdline")).ok())
        .filter(|cmdline| {
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let has = |word: &str| args.contains(&word.as_bytes());
            has("simulate") && has("bytebase") && has(&port)
        })
        .count()
}

fn signal(child: &Child, signal: Signal) {
    kill(Pid::from_raw(child.id() as i32), signal).expect("signal upshift");
}

/// The (phase, id, status) of a journal's steps.
fn statuses(journal: &[(String, String, String, Option<i64>)]) -> Vec<(&str, &str, &str)> {
    journal
        .iter()
        .map(|(p, s, st, _)| (p.as_str(), s.as_str(), st.as_str()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_piped_into_head_finishes_the_upgrade() {
    let Some(pg) = common::pg() else { return };
    let s = bytebase(pg, false).await;
    // The plan alone is longer than three lines: `head` is gone before the first step.
    let out = Command::new("sh")
        .arg("-c")
        .arg("\"$0\" --fleet \"$1\" --data \"$2\" apply bb --to 3.11.1 --yes 2>&1 | head -3")
        .arg(env!("CARGO_BIN_EXE_upshift"))
        .arg(s.env.fleet())
        .arg(s.env.data())
        .stdin(Stdio::null())
        .output()
        .expect("run the pipeline");
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(shown.lines().count(), 3, "head showed three lines: {shown}");
    assert!(shown.starts_with("Plan bb (bytebase)"), "{shown}");

    let run = s.newest_run();
    assert_eq!(run["status"], "succeeded", "{run}");
    let report = s.kept_report(run["id"].as_str().expect("run id"));
    assert_eq!(report["outcome"], "succeeded", "{report}");
    assert_eq!(
        common::step_ids(&report, "forward").len(),
        7,
        "every step ran: {report}"
    );
    s.assert_at("3.11.1", "after `| head -3`").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_goes_away_mid_run_leaves_a_finished_rollback() {
    let Some(pg) = common::pg() else { return };
    // The migration to 3.11.1 fails: the run must roll back with nobody reading.
    let s = bytebase(pg, true).await;
    let mut child = s.spawn_apply(&["--json"]);
    let mut events = std::io::BufReader::new(child.stderr.take().expect("stderr"));
    let mut first = String::new();
    events.read_line(&mut first).expect("a first event");
    assert!(first.starts_with('{'), "a JSON event: {first}");
    // The reader goes away: every later write of upshift meets a closed pipe.
    drop(events);
    drop(child.stdout.take());
    let status = child.wait().expect("upshift ends");
    assert_eq!(status.code(), Some(4), "rolled back: {status}");

    let run = s.newest_run();
    assert_eq!(run["status"], "rolled-back", "{run}");
    let report = s.kept_report(run["id"].as_str().expect("run id"));
    assert_eq!(report["outcome"], "rolled-back", "{report}");
    assert!(
        report["steps"]
            .as_array()
            .expect("steps")
            .iter()
            .filter(|l| l["phase"] == "rollback")
            .all(|l| l["ok"] == true),
        "every rollback step succeeded: {report}"
    );
    s.assert_at("3.10.0", "after the reader went away").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_mid_run_changes_nothing() {
    let Some(pg) = common::pg() else { return };
    let s = bytebase(pg, false).await;
    s.slow_starts();
    let mut child = s.spawn_apply(&["--json"]);
    s.wait_in_step(&mut child, "forward", "wait-healthy");
    signal(&child, Signal::SIGHUP);
    let out = child.wait_with_output().expect("upshift ends");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("SIGHUP ignored"), "{}", stderr(&out));
    assert_eq!(json(&out)["outcome"], "succeeded");
    assert_eq!(s.newest_run()["status"], "succeeded");
    s.assert_at("3.11.1", "after SIGHUP").await;
}

/// Send `sig` while the forward `wait-healthy` step waits for the new version: that step
/// finishes, `check-version` never starts, the host rolls back, exit 4.
async fn stopped_mid_step(sig: Signal, name: &str) {
    let Some(pg) = common::pg() else { return };
    let s = bytebase(pg, false).await;
    s.slow_starts();
    let mut child = s.spawn_apply(&["--json"]);
    s.wait_in_step(&mut child, "forward", "wait-healthy");
    let sent = Instant::now();
    signal(&child, sig);
    let out = child.wait_with_output().expect("upshift ends");
    assert_eq!(out.status.code(), Some(4), "{name}: {}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "{name}: the run stops after the step in progress and rolls back"
        )),
        "{name}: said at once: {err}"
    );
    let report = json(&out);
    assert_eq!(report["outcome"], "rolled-back", "{report}");
    let why = format!("stopped by {name} at step boundary (before step `check-version`)");
    assert_eq!(report["failure"], why.as_str(), "{report}");

    let journal = s.journal();
    let forward: Vec<_> = statuses(&journal)
        .into_iter()
        .filter(|(p, ..)| *p == "forward")
        .collect();
    assert_eq!(
        forward.last().copied(),
        Some(("forward", "wait-healthy", "succeeded")),
        "{name}: the step in progress finished and no other started: {journal:?}"
    );
    assert_eq!(forward.len(), 6, "{journal:?}");
    // It waited out the slow start: it was not cut when the signal came.
    let waited = journal
        .iter()
        .find(|(p, id, ..)| p == "forward" && id == "wait-healthy")
        .and_then(|(.., ms)| *ms)
        .expect("duration");
    assert!(waited >= 1000, "{name}: wait-healthy took {waited} ms");
    assert!(sent.elapsed() >= Duration::from_millis(500));
    let rollback: Vec<_> = statuses(&journal)
        .into_iter()
        .filter(|(p, ..)| *p == "rollback")
        .collect();
    assert!(
        rollback.len() >= 4 && rollback.iter().all(|(.., st)| *st == "succeeded"),
        "{name}: the host's rollback ran: {journal:?}"
    );
    let run = s.newest_run();
    assert_eq!(run["status"], "rolled-back", "{run}");
    assert!(
        run["message"].as_str().is_some_and(|m| m.contains(&why)),
        "{name}: the history says why: {run}"
    );
    s.assert_at("3.10.0", name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_step_finishes_the_step_then_rolls_back() {
    stopped_mid_step(Signal::SIGTERM, "SIGTERM").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_mid_step_finishes_the_step_then_rolls_back() {
    stopped_mid_step(Signal::SIGINT, "SIGINT").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_during_the_rollback_do_not_stop_it() {
    let Some(pg) = common::pg() else { return };
    // 3.11.1's migration fails; the rollback starts 3.10.0 again, slowly.
    let s = bytebase(pg, true).await;
    s.slow_starts();
    let mut child = s.spawn_apply(&["--json"]);
    s.wait_in_step(&mut child, "rollback", "rollback-restore-meta");
    signal(&child, Signal::SIGTERM);
    s.wait_in_step(&mut child, "rollback", "rollback-wait-app");
    signal(&child, Signal::SIGINT);
    std::thread::sleep(Duration::from_millis(300));
    signal(&child, Signal::SIGTERM);
    let out = child.wait_with_output().expect("upshift ends");
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("already stopping"), "{err}");
    let report = json(&out);
    assert_eq!(report["outcome"], "rolled-back", "{report}");
    assert!(
        report["failure"]
            .as_str()
            .is_some_and(|f| !f.contains("stopped by")),
        "the failure is the migration's, not the signal's: {report}"
    );
    let journal = s.journal();
    let rollback: Vec<_> = statuses(&journal)
        .into_iter()
        .filter(|(p, ..)| *p == "rollback")
        .collect();
    assert_eq!(
        rollback.last().map(|(_, id, st)| (*id, *st)),
        Some(("rollback-wait-app", "succeeded")),
        "the rollback ran to its end: {journal:?}"
    );
    assert!(
        rollback.iter().all(|(.., st)| *st == "succeeded"),
        "{journal:?}"
    );
    assert_eq!(s.newest_run()["status"], "rolled-back");
    s.assert_at("3.10.0", "signals during the rollback").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_before_anything_changed_ends_the_command_at_once() {
    let Some(pg) = common::pg() else { return };
    let s = bytebase(pg, false).await;
    // The API answers nothing (a listener that never replies): `detect` waits on it, long
    // before any step.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    let silent_port = silent.local_addr().expect("addr").port();
    let fleet = std::fs::read_to_string(s.env.fleet()).expect("fleet");
    let api = format!("[instance.http.api]\nurl = \"http://127.0.0.1:{}\"", s.port);
    assert!(fleet.contains(&api), "{fleet}");
    s.env.write_fleet(&fleet.replace(
        &api,
        &format!("[instance.http.api]\nurl = \"http://127.0.0.1:{silent_port}\""),
    ));
    let child = s.spawn_apply(&["--json"]);
    std::thread::sleep(Duration::from_secs(2));
    let sent = Instant::now();
    signal(&child, Signal::SIGINT);
    let out = child.wait_with_output().expect("upshift ends");
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "ended at once: {:?}",
        sent.elapsed()
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("stopped by SIGINT before anything was changed; nothing was changed"),
        "{}",
        stderr(&out)
    );
    // No run was journaled; the lease is free for the next command.
    let history = s.env.upshift(&["history", "--json"]);
    assert_eq!(
        json(&history),
        serde_json::json!([]),
        "{}",
        stderr(&history)
    );
    let db = rusqlite::Connection::open(s.env.data().join("state.db")).expect("state");
    let leases: i64 = db
        .query_row("SELECT count(*) FROM leases", [], |r| r.get(0))
        .expect("leases");
    assert_eq!(leases, 0, "the lease was given back");
    drop(silent);
    s.assert_at("3.10.0", "after SIGINT while planning").await;
}

/// The pids of the `pg_dump` processes whose parent is `parent`.
fn pg_dumps_of(parent: u32) -> Vec<u32> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .filter_map(Result::ok)
        .filter_map(|p| {
            let pid: u32 = p.file_name().to_str()?.parse().ok()?;
            let status = std::fs::read_to_string(p.path().join("status")).ok()?;
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(str::trim)
                    .map(str::to_string)
            };
            (field("Name:")? == "pg_dump" && field("PPid:")? == parent.to_string()).then_some(pid)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_to_the_whole_process_group_does_not_cut_a_dump() {
    let Some(pg) = common::pg() else { return };
    let s = bytebase(pg, false).await;
    // Enough data that `pg_dump` works for a while.
    connect(&s.url)
        .await
        .batch_execute(
            "CREATE TABLE bulk (id int, body text);
             INSERT INTO bulk SELECT g, md5(g::text) || md5((g * 7)::text) || md5((g * 13)::text)
             FROM generate_series(1, 400000) g;",
        )
        .await
        .expect("bulk rows");
    // A terminal's Ctrl-C goes to the foreground process group: upshift and its children.
    use std::os::unix::process::CommandExt;
    let mut child = s
        .env
        .command(&["backup", "bb", "--json"])
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn upshift backup");
    let deadline = Instant::now() + Duration::from_secs(60);
    let dump = loop {
        if let Some(pid) = pg_dumps_of(child.id()).first() {
            break *pid;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("upshift ended ({status}) before pg_dump ran");
        }
        assert!(Instant::now() < deadline, "pg_dump never ran");
        std::thread::sleep(Duration::from_millis(5));
    };
    nix::sys::signal::killpg(Pid::from_raw(child.id() as i32), Signal::SIGINT)
        .expect("Ctrl-C to the group");
    let out = child.wait_with_output().expect("upshift ends");
    let err = stderr(&out);
    assert!(
        err.contains("SIGINT: the run stops after the step in progress"),
        "{err}"
    );
    // The one step (the dump) ran to its end: nothing was cut, the backup is whole.
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        !Path::new(&format!("/proc/{dump}")).exists(),
        "pg_dump {dump} ended"
    );
    let backups = json(&s.env.upshift(&["backups", "--json"]));
    let taken = &backups[0];
    assert_eq!(
        (&taken["method"], &taken["valid"]),
        (&serde_json::json!("dump"), &serde_json::json!(true)),
        "{backups}"
    );
    let id = taken["id"].as_str().expect("backup id");
    let verify = s.env.upshift(&["backup", "verify", id, "--json"]);
    assert_eq!(verify.status.code(), Some(0), "{}", stderr(&verify));
    assert_eq!(s.newest_run()["status"], "succeeded");
    assert_eq!(s.serving().await.as_deref(), Some("3.10.0"));
}

/// The pid of the `upshift` process working in data directory `data`.
fn upshift_working_in(data: &Path) -> Option<u32> {
    let data = data.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(Result::ok)
        .find_map(|p| {
            let pid: u32 = p.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(p.path().join("cmdline")).ok()?;
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let exe = Path::new(std::str::from_utf8(args.first()?).ok()?);
            (exe.file_name()? == "upshift"
                && args.contains(&data.as_bytes())
                && args.contains(&b"apply".as_slice()))
            .then_some(pid)
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_at_the_confirmation_prompt_ends_the_command_at_once() {
    let Some(pg) = common::pg() else { return };
    let s = bytebase(pg, false).await;
    // The prompt needs a terminal: `script` (util-linux) runs upshift on a pseudo-terminal.
    let command = format!(
        "exec '{}' --fleet '{}' --data '{}' apply bb --to 3.11.1",
        env!("CARGO_BIN_EXE_upshift"),
        s.env.fleet().display(),
        s.env.data().display()
    );
    let mut script = match Command::new("script")
        .args(["-qfec", &command, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            let why = format!("`script` (util-linux) is needed for a pseudo-terminal: {e}");
            assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
            eprintln!("SKIPPED: {why}");
            return;
        }
    };
    let shown = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let shown = shown.clone();
        let mut terminal = script.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = std::io::Read::read(&mut terminal, &mut buf) {
                if n == 0 {
                    break;
                }
                if let Ok(mut text) = shown.lock() {
                    text.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !shown
        .lock()
        .is_ok_and(|t| t.contains("Proceed with this plan? [y/N]"))
    {
        if let Ok(Some(status)) = script.try_wait() {
            panic!("upshift ended ({status}) before its prompt: {shown:?}");
        }
        assert!(Instant::now() < deadline, "no prompt: {shown:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = upshift_working_in(&s.env.data()).expect("the upshift process");
    let sent = Instant::now();
    kill(Pid::from_raw(pid as i32), Signal::SIGINT).expect("SIGINT");
    let status = script.wait().expect("script ends");
    let took = sent.elapsed();
    let _ = reader.join();
    let shown = shown.lock().map(|t| t.clone()).unwrap_or_default();
    assert!(took < Duration::from_secs(2), "ended at once: {took:?}");
    assert_eq!(status.code(), Some(1), "{shown}");
    assert!(
        shown.contains("stopped by SIGINT before anything was changed; nothing was changed"),
        "{shown}"
    );
    let history = s.env.upshift(&["history", "--json"]);
    assert_eq!(
        json(&history),
        serde_json::json!([]),
        "{}",
        stderr(&history)
    );
    let db = rusqlite::Connection::open(s.env.data().join("state.db")).expect("state");
    let leases: i64 = db
        .query_row("SELECT count(*) FROM leases", [], |r| r.get(0))
        .expect("leases");
    assert_eq!(leases, 0, "the lease was given back");
    s.assert_at("3.10.0", "after SIGINT at the prompt").await;
}
