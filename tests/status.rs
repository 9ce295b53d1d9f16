//! `upshift status` and `upshift audit show` (issue 17), through the real binary: a healthy
//! instance with its plan, one whose database port has nothing listening (unreachable) and one
//! whose port accepts and never answers (timed out) without slowing the rest; an unfinished run
//! and a held lease (a real paused `upshift apply`); a contradiction the Bytebase adapter's rules
//! find (real PostgreSQL); `--watch` refreshing until SIGINT; status changing nothing; the
//! audit log filtered by instance, denials and time.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Env, free_port, json, stderr};

/// The test adapter's component file (detects `1.0.0`; plans `V-cheap` as a five-step upgrade
/// of service `app`; plans `N.0.0-calls` making N denied `files::exists` calls).
fn adapter() -> String {
    format!("{}/test-misbehaving.wasm", upshift::adapters::BUILT_DIR)
}

/// A test-adapter instance with a process service `app` (and a `data` directory when `dir` is
/// given), `target` in the fleet file.
fn cheap(name: &str, dir: Option<&Path>, target: Option<&str>) -> String {
    let mut text = format!(
        "[[instance]]\nname = \"{name}\"\nadapter = \"{}\"\n{}\n\
         [instance.service.app]\nkind = \"process\"\n\
         command = \"/usr/bin/env APP_VERSION={{version}} /bin/sleep infinity\"\n\
         version = \"1.0.0\"\nstop_timeout_secs = 10\n\n",
        adapter(),
        target
            .map(|t| format!("target = \"{t}\""))
            .unwrap_or_default()
    );
    if let Some(dir) = dir {
        let data = dir.join(name);
        std::fs::create_dir_all(&data).expect("data dir");
        std::fs::write(data.join("file.dat"), b"data").expect("data file");
        text.push_str(&format!(
            "[instance.files.data]\npath = \"{}\"\n\n",
            data.display()
        ));
    }
    text
}

/// A Bytebase instance whose database, service and API are all at 127.0.0.1:`port` (its
/// service not started).
fn bytebase_at(name: &str, port: u16) -> String {
    format!(
        "[[instance]]\nname = \"{name}\"\nproduct = \"bytebase\"\n\n\
         [instance.db.meta]\nurl = \"postgres://bb:pw@127.0.0.1:{port}/bb\"\n\n\
         [instance.service.app]\nkind = \"process\"\n\
         command = \"/usr/bin/env BB={{version}} /bin/sleep infinity\"\nversion = \"3.10.0\"\n\
         health_url = \"http://127.0.0.1:{port}/healthz\"\n\n\
         [instance.http.api]\nurl = \"http://127.0.0.1:{port}\"\n\n"
    )
}

/// `upshift status --json`: the exit code and one entry per instance, by name.
fn status(env: &Env, args: &[&str]) -> std::collections::BTreeMap<String, serde_json::Value> {
    let mut all = vec!["status", "--json"];
    all.extend_from_slice(args);
    let out = env.upshift(&all);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    json(&out)
        .as_array()
        .unwrap_or_else(|| panic!("an array: {}", stderr(&out)))
        .iter()
        .map(|s| {
            (
                s["instance"].as_str().unwrap_or_default().to_string(),
                s.clone(),
            )
        })
        .collect()
}

/// Every object key in `value`, recursively (fact objects' `key` values are not keys).
fn keys(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                out.push(k.clone());
                keys(v, out);
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| keys(v, out)),
        _ => {}
    }
}

fn history_len(env: &Env) -> usize {
    let out = env.upshift(&["history", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    json(&out).as_array().map_or(0, Vec::len)
}

/// Whether `pid` is stopped (SIGSTOP).
fn is_stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| Some(s.get(s.rfind(')')? + 2..)?.starts_with('T')))
        .unwrap_or(false)
}

#[test]
fn status_shows_a_healthy_instance_an_unreachable_one_and_a_silent_one_without_waiting_on_them() {
    let env = Env::new();
    // A port that accepts connections (the kernel completes them) and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    let silent_port = silent.local_addr().expect("addr").port();
    let nothing = free_port();
    env.write_fleet(&format!(
        "{}{}{}",
        cheap("good", Some(env.dir.path()), Some("2.0.0-cheap")),
        bytebase_at("down", nothing),
        bytebase_at("silent", silent_port),
    ));
    let out = env.upshift(&["start", "good", "app"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let audit_before = common::audit_records(&env.data().join("audit.jsonl")).len();

    // The first status compiles the adapters into the data directory's cache (not timed
    // against the instances); the second is timed.
    status(&env, &["--timeout", "2"]);
    let started = Instant::now();
    let all = status(&env, &["--timeout", "2"]);
    let took = started.elapsed();
    eprintln!("status of 3 instances, one silent (2 s timeout), took {took:.2?}");
    assert!(took < Duration::from_secs(6), "took {took:?}");

    let good = &all["good"];
    assert_eq!(good["reach"], "reachable", "{good}");
    assert_eq!(good["product"], "misbehaving");
    assert_eq!(good["version"], "1.0.0");
    assert_eq!(good["health"][0]["binding"], "app", "{good}");
    assert_eq!(good["health"][0]["state"], "healthy", "{good}");
    assert_eq!(good["target"]["version"], "2.0.0-cheap");
    assert_eq!(good["target"]["source"], "fleet");
    assert_eq!(good["plan"]["outcome"], "plan", "{good}");
    assert_eq!(good["plan"]["steps"], 5, "{good}");
    assert_eq!(
        good["plan"]["path"],
        serde_json::json!(["1.0.0", "2.0.0-cheap"])
    );
    assert!(good["contradiction"].is_null() && good["lease"].is_null());
    assert!(
        good["took_ms"].as_u64().is_some_and(|ms| ms < 1500),
        "the silent instance did not slow the good one: {good}"
    );

    let down = &all["down"];
    assert_eq!(down["reach"], "unreachable", "{down}");
    assert_eq!(down["product"], "bytebase");
    assert!(down["version"].is_null());
    let problem = down["problem"].as_str().unwrap_or_default();
    assert!(problem.contains("connect"), "{problem}");

    let silent_status = &all["silent"];
    assert_eq!(silent_status["reach"], "timed-out", "{silent_status}");
    assert!(
        silent_status["problem"]
            .as_str()
            .is_some_and(|p| p.contains("2.0 s") && p.contains("--timeout")),
        "{silent_status}"
    );

    // One JSON document, snake_case keys throughout (as every command's, docs/json.md).
    let out = env.upshift(&["status", "good", "--json"]);
    let doc = json(&out);
    let mut names = Vec::new();
    keys(&doc, &mut names);
    assert!(
        names.iter().any(|k| k.contains('_'))
            && names
                .iter()
                .all(|k| !k.contains('-') && k.to_lowercase() == *k),
        "{names:?}"
    );

    // The table: one line per instance under a header.
    let out = env.upshift(&["status", "--timeout", "2"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    assert!(lines[0].starts_with("NAME") && lines[0].contains("HEALTH"));
    // The tables README.md and docs/status.md show have the real columns.
    let columns = |header: &str| header.split_whitespace().collect::<Vec<_>>().join(" ");
    for doc in ["README.md", "docs/status.md"] {
        let path = format!("{}/../../{doc}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).expect("doc");
        let shown = text
            .lines()
            .find(|l| l.starts_with("NAME "))
            .unwrap_or_else(|| panic!("{doc} shows a status table"));
        assert_eq!(columns(shown), columns(lines[0]), "{doc}");
    }
    assert!(
        lines[1].starts_with("good")
            && lines[1].contains("healthy")
            && lines[1].contains("1.0.0→2.0.0-cheap (5 steps)"),
        "{table}"
    );
    assert!(lines[2].starts_with("down") && lines[2].contains("unreachable"));
    assert!(lines[3].starts_with("silent") && lines[3].contains("timed-out"));

    // Status changed nothing: no run, no lease; what it read is audited as the host's status.
    assert_eq!(history_len(&env), 0);
    assert!(status(&env, &["good"])["good"]["lease"].is_null());
    let records = common::audit_records(&env.data().join("audit.jsonl"));
    assert!(records.len() > audit_before);
    let unexpected: Vec<_> = records[audit_before..]
        .iter()
        // A read of an optional binding the instance does not bind (Bytebase's `data`) is
        // recorded as `unbound`, not as a denial; nothing may be denied.
        .filter(|r| {
            r.event.run_id.is_some() || r.event.decision == upshift::audit::Decision::Denied
        })
        .collect();
    assert!(
        unexpected.is_empty(),
        "status records only allowed reads outside any run: {unexpected:#?}"
    );
    assert!(
        records[audit_before..]
            .iter()
            .any(|r| r.event.detail.as_deref() == Some("host status")
                && r.event.operation == "healthy")
    );

    // Bad input: exit 2 with the flag named.
    for (args, flag) in [
        (vec!["status", "--parallel", "0"], "--parallel"),
        (vec!["status", "--timeout", "0"], "--timeout"),
        (vec!["status", "nonexistent"], "nonexistent"),
        (vec!["status", "good", "--all"], "--all"),
    ] {
        let out = env.upshift(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(flag),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    drop(silent);
}

#[test]
fn status_shows_an_unfinished_run_and_the_lease_of_a_paused_apply() {
    let env = Env::new();
    env.write_fleet(&format!(
        "{}{}",
        cheap("busy", Some(env.dir.path()), Some("2.0.0-cheap")),
        cheap("idle", None, None),
    ));
    let out = env.upshift(&["start", "busy", "app"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // The apply stops itself (SIGSTOP) once it journaled its `stop` step as started.
    let mut apply = env
        .command(&["apply", "busy", "--yes", "--json"])
        .env("UPSHIFT_PAUSE_AT", "forward:1:started")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("apply");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !is_stopped(apply.id()) {
        assert!(Instant::now() < deadline, "the apply never paused");
        std::thread::sleep(Duration::from_millis(50));
    }

    let all = status(&env, &[]);
    let busy = &all["busy"];
    let unfinished = busy["unfinished_runs"].as_array().expect("list");
    assert_eq!(unfinished.len(), 1, "{busy}");
    assert_eq!(unfinished[0]["outcome"], "running");
    assert_eq!(busy["last_run"]["id"], unfinished[0]["id"]);
    let holder = busy["lease"]["holder"].as_str().unwrap_or_default();
    assert!(
        holder.contains(&format!("pid {}", apply.id())),
        "the paused apply holds the lease: {busy}"
    );
    assert!(busy["lease"]["expires_in_secs"].as_i64().is_some());
    // The run's first step, the snapshot of `data`, is catalogued.
    let backup = &busy["newest_backup"];
    assert_eq!(backup["method"], "snapshot", "{busy}");
    assert_eq!(backup["binding"], "data");
    assert_eq!(backup["product_version"], "1.0.0");
    assert!(
        backup["age_secs"]
            .as_i64()
            .is_some_and(|age| (0..60).contains(&age))
    );
    let idle = &all["idle"];
    assert!(idle["lease"].is_null() && idle["unfinished_runs"] == serde_json::json!([]));
    assert!(idle["target"].is_null(), "no target, no catalog: {idle}");

    let out = env.upshift(&["status"]);
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    let run = unfinished[0]["id"].as_str().unwrap_or_default();
    assert!(
        table.contains(&format!("unfinished run {run}")) && table.contains("lease held by"),
        "{table}"
    );
    // Status took nothing from the paused run: still one run, still its lease.
    assert_eq!(history_len(&env), 1);
    assert_eq!(status(&env, &["busy"])["busy"]["lease"]["holder"], holder);

    apply.kill().expect("SIGKILL");
    let ended = apply.wait().expect("wait");
    assert_eq!(ended.signal(), Some(9));
}

#[test]
fn status_watch_refreshes_until_sigint_which_exits_0() {
    let env = Env::new();
    env.write_fleet(&cheap("w", None, Some("2.0.0-cheap")));
    let mut child = env
        .command(&["status", "--watch", "0.3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("status --watch");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut headers = 0;
    let mut rows = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while headers < 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).expect("two refreshes within 30 s");
        headers += usize::from(line.starts_with("Every 0.3 s"));
        rows += usize::from(line.starts_with("w "));
    }
    assert!(rows >= 1, "a row per refresh");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("SIGINT");
    let started = Instant::now();
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(0), "Ctrl-C ends the watch with exit 0");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[test]
fn audit_show_filters_by_instance_denials_and_time() {
    let env = Env::new();
    env.write_fleet(&format!(
        "{}{}",
        cheap("m", None, None),
        cheap("n", None, None)
    ));
    // Allowed calls for both (status inspects their services), then a denial for m: the test
    // adapter's cheap plan snapshots `data`, which m does not bind, so the host refuses the plan
    // (exit 2) and audits the refusal.
    status(&env, &[]);
    std::thread::sleep(Duration::from_millis(50));
    let out = env.upshift(&["plan", "m", "--to", "2.0.0-cheap", "--json"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));

    let show = |args: &[&str]| -> Vec<serde_json::Value> {
        let mut all = vec!["audit", "show", "--json"];
        all.extend_from_slice(args);
        let out = env.upshift(&all);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        json(&out).as_array().cloned().unwrap_or_default()
    };
    let everything = show(&[]);
    let instances: std::collections::BTreeSet<&str> = everything
        .iter()
        .filter_map(|r| r["instance"].as_str())
        .collect();
    assert_eq!(instances, ["m", "n"].into(), "{everything:?}");

    let only_n = show(&["n"]);
    assert!(!only_n.is_empty() && only_n.iter().all(|r| r["instance"] == "n"));
    assert!(only_n.iter().all(|r| r["decision"] == "allowed"));

    let denied = show(&["--denied"]);
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert_eq!(denied[0]["instance"], "m");
    assert_eq!(denied[0]["decision"], "denied");
    assert!(
        denied[0]["reason"]
            .as_str()
            .is_some_and(|why| why.contains("data")
                && why.contains("bind it with an [instance.files.data] table")),
        "{denied:?}"
    );
    assert!(show(&["n", "--denied"]).is_empty());

    // Since the denial: only it (status read everything before it).
    let since = denied[0]["time"].as_str().expect("time");
    let after = show(&["--since", since]);
    assert!(
        !after.is_empty() && after.iter().all(|r| r["instance"] == "m"),
        "{after:?}"
    );
    assert_eq!(
        after.iter().filter(|r| r["decision"] == "denied").count(),
        1
    );
    assert!(after.len() < everything.len());
    assert_eq!(show(&["--since", "1h"]).len(), everything.len());
    assert!(show(&["--since", "2999-01-01T00:00:00Z"]).is_empty());
    assert_eq!(show(&["--limit", "2"]).len(), 2);

    // Human lines name the time, the instance, the call and the decision.
    let out = env.upshift(&["audit", "show", "m", "--denied"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains(" m ") && text.contains("DENIED"), "{text}");

    // Status's own calls pass the guard: with `inspect` narrowed away, the health check is
    // denied (shown as `unknown`, naming the grant) and audited as the host's status call.
    let narrowed = cheap("o", None, None).replace(
        "stop_timeout_secs = 10\n",
        "stop_timeout_secs = 10\naccess = [\"control\", \"switch-version\"]\n",
    );
    assert!(narrowed.contains("access = "), "{narrowed}");
    env.write_fleet(&format!(
        "{}{}{narrowed}",
        cheap("m", None, None),
        cheap("n", None, None)
    ));
    let o = status(&env, &["o"]).remove("o").expect("o");
    assert_eq!(o["health"][0]["state"], "unknown", "{o}");
    assert!(
        o["health"][0]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("not granted `inspect`")),
        "{o}"
    );
    let denied_o = show(&["o", "--denied"]);
    assert!(
        !denied_o.is_empty()
            && denied_o.iter().all(|r| r["detail"] == "host status"
                && r["reason"]
                    .as_str()
                    .is_some_and(|why| why.contains("not granted `inspect`"))),
        "{denied_o:?}"
    );

    // Bad input: exit 2, saying what to give.
    for (args, says) in [
        (vec!["audit", "show", "--since", "yesterday"], "RFC 3339"),
        (vec!["audit", "show", "--since", "5x"], "30m"),
        (
            vec!["audit", "show", "nonexistent"],
            "no instance `nonexistent`",
        ),
    ] {
        let out = env.upshift(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(says),
            "{args:?}: {}",
            stderr(&out)
        );
    }
}

/// A Bytebase whose binary reports 3.11.1 while the fleet file declares 3.10.0: status shows
/// the contradiction the adapter's rules find, and the refusal as the instance's plan.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_flags_a_contradiction_between_version_sources() {
    let Some(pg) = common::pg() else { return };
    let (_, db_url) = pg.fresh_db("st").await;
    let env = Env::new();
    let port = free_port();
    let fleet: String = common::bytebase_instance("bb", &db_url, port, "3.10.0", None)
        .lines()
        .map(|line| {
            if line.starts_with("command = ") {
                format!(
                    r#"command = "sh -c 'exec \"$0\" simulate bytebase --version 3.11.1 --port {port}' '{exe}' {{version}}""#,
                    exe = env!("CARGO_BIN_EXE_upshift")
                )
            } else if line.starts_with("product = ") {
                format!("{line}\ntarget = \"3.12.0\"")
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    env.write_fleet(&fleet);
    common::start_services(&env, "bb", &["app"]).await;

    let all = status(&env, &[]);
    let bb = &all["bb"];
    assert_eq!(bb["reach"], "reachable", "{bb}");
    assert_eq!(bb["health"][0]["state"], "healthy", "{bb}");
    let contradiction = bb["contradiction"].as_str().unwrap_or_default();
    assert!(
        contradiction.starts_with("api-contradicts-declared: ") && contradiction.contains("3.11.1"),
        "{bb}"
    );
    assert_eq!(bb["plan"]["outcome"], "refused");
    assert_eq!(bb["plan"]["rule"], "api-contradicts-declared");
    assert!(
        bb["facts"].as_array().is_some_and(|f| !f.is_empty()),
        "{bb}"
    );

    let out = env.upshift(&["status", "-v"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        text.contains("CONTRADICTION") && text.contains("refused: api-contradicts-declared"),
        "{text}"
    );
    assert_eq!(history_len(&env), 0, "status recorded no run");

    // The adapter probes its optional `data` binding, which this instance leaves unbound: the
    // audit records that as `unbound`, so `audit show --denied` stays empty of it.
    let shown = |args: &[&str]| -> Vec<serde_json::Value> {
        let mut all = vec!["audit", "show", "bb", "--json"];
        all.extend_from_slice(args);
        let out = env.upshift(&all);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        json(&out).as_array().cloned().unwrap_or_default()
    };
    let probes: Vec<_> = shown(&[])
        .into_iter()
        .filter(|r| r["binding"] == "data")
        .collect();
    assert!(
        !probes.is_empty() && probes.iter().all(|r| r["decision"] == "unbound"),
        "{probes:?}"
    );
    let denied = shown(&["--denied"]);
    assert!(denied.is_empty(), "{denied:?}");
}
