//! Faults leave nothing half-done (issue 15, cases 3 and 7), and `upshift gc` with retention.
//! Real full disks (small tmpfs mounts), real SIGKILLs of the real `upshift` process observed
//! from outside (the clone or restore target appearing in `pg_database`), real PostgreSQL.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::disk::Tmpfs;
use common::{Env, connect, free_port, json, start_services, stderr};

/// The newest run in `env`'s journal.
fn newest_run(env: &Env) -> serde_json::Value {
    json(&env.upshift(&["history", "--json"]))[0].clone()
}

/// Entries under `dir` whose name ends with `.partial`.
fn partials(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".partial"))
                .collect()
        })
        .unwrap_or_default()
}

/// Row counts of DevLake's seeded tables: what must survive anything.
async fn devlake_counts(url: &str) -> Vec<(String, i64)> {
    common::table_checksums(url)
        .await
        .into_iter()
        .filter(|(t, _)| t.ends_with("_entity") || t == "repos" || t == "pull_requests")
        .map(|(t, (n, _))| (t, n))
        .collect()
}

/// An environment on a mounted disk: the environment (its services killed) goes first.
struct OnDisk {
    env: Env,
    _disk: Tmpfs,
}

/// A DevLake instance `dl` at v1.0.0 with seeded rows, whose `config` binding (snapshotted by
/// the upgrade) holds `.env` and a `ballast_mib` MiB file. `mount` is called with the data
/// directory before anything is written to it.
async fn devlake(
    pg: &common::Pg,
    ballast_mib: usize,
    mount: impl FnOnce(&Path) -> Option<Tmpfs>,
) -> Option<(OnDisk, u16, String, PathBuf)> {
    let (_, url) = pg.fresh_db("dlfull").await;
    let env = Env::new();
    let mounted = mount(&env.data())?;
    let port = free_port();
    let config = env.dir.path().join("config");
    std::fs::create_dir_all(&config).expect("config");
    std::fs::write(
        config.join(".env"),
        format!("PORT={port}\nDB_URL={url}\nENCRYPTION_SECRET=full-secret\n"),
    )
    .expect(".env");
    std::fs::write(config.join("ballast.bin"), vec![0x5a; ballast_mib << 20]).expect("ballast");
    let exe = Path::new(env!("CARGO_BIN_EXE_upshift"));
    env.write_fleet(&upshift_sim::fleet::devlake(
        "dl", exe, &url, port, "v1.0.0", &config, "",
    ));
    start_services(&env, "dl", &["app"]).await;
    upshift_sim::devlake::seed_pg(&connect(&url).await, "full-secret", 10)
        .await
        .expect("seed");
    Some((
        OnDisk {
            env,
            _disk: mounted,
        },
        port,
        url,
        config,
    ))
}

/// `upshift apply dl --to v1.0.1` with the disk `disk` filled by another writer the moment the
/// journal shows the snapshot started (preflight found room): what an operator's disk does when
/// something else fills it during the backup. The filler file is returned with the output.
fn apply_while_the_disk_fills(env: &Env, disk: &Path) -> (std::process::Output, PathBuf) {
    let child = env
        .command(&["apply", "dl", "--to", "v1.0.1", "--yes", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start apply");
    let deadline = Instant::now() + Duration::from_secs(60);
    let started = || {
        rusqlite::Connection::open(env.data().join("state.db"))
            .and_then(|db| {
                db.query_row(
                    "SELECT count(*) FROM steps WHERE phase = 'forward' AND step_id = 'snapshot-config'",
                    [],
                    |r| r.get::<_, i64>(0),
                )
            })
            .is_ok_and(|n| n > 0)
    };
    while !started() {
        assert!(
            Instant::now() < deadline,
            "the run never reached its snapshot"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // Fill every byte that is left.
    let filler = disk.join("filler.bin");
    let mut file = std::fs::File::create(&filler).expect("filler");
    let chunk = vec![0xa5u8; 1 << 20];
    while std::io::Write::write_all(&mut file, &chunk).is_ok() {}
    let mut tail = 4096;
    while tail > 0 {
        if std::io::Write::write_all(&mut file, &chunk[..tail]).is_err() {
            tail /= 2;
        }
    }
    drop(file);
    (child.wait_with_output().expect("apply"), filler)
}

/// The upgrade of `dl` fails at its snapshot on a disk filled during the run: exit 4 (rolled
/// back, recorded), DevLake serves v1.0.0 with every row, no `.partial` and no pending record
/// is left, and once there is room the next apply is not blocked by anything the failure left.
async fn snapshot_fills_the_disk(env: &Env, disk: &Path, port: u16, url: &str, config: &Path) {
    let before = devlake_counts(url).await;
    let (out, filler) = apply_while_the_disk_fills(env, disk);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let report = json(&out);
    let failure = report["failure"].as_str().unwrap_or_default();
    assert!(
        failure.contains("snapshot-config") && failure.contains("No space left on device"),
        "the failure names the step and the full disk: {report}"
    );
    assert_eq!(report["outcome"], "rolled-back", "{report}");
    let run = newest_run(env);
    assert_eq!(
        run["status"], "rolled-back",
        "the journal recorded the end: {run}"
    );
    assert_eq!(
        partials(&env.data().join("backups")),
        Vec::<String>::new(),
        "no .partial is left"
    );
    let (_, body) = common::http_get(port, "/version").await;
    assert!(body.contains("v1.0.0"), "serves the old version: {body}");
    assert_eq!(devlake_counts(url).await, before, "every seeded row");
    // Nothing for gc: the failed snapshot removed itself and cleared its record.
    let out = env.upshift(&["gc", "--dry-run", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        json(&out)["items"],
        serde_json::json!([]),
        "{}",
        stderr(&out)
    );

    // Room again: the next apply goes ahead.
    std::fs::remove_file(filler).expect("remove the filler");
    std::fs::remove_file(config.join("ballast.bin")).expect("remove ballast");
    let out = env.upshift(&["apply", "dl", "--to", "v1.0.1", "--yes", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let (_, body) = common::http_get(port, "/version").await;
    assert!(body.contains("v1.0.1"), "serves the new version: {body}");
    assert_eq!(devlake_counts(url).await, before, "every seeded row");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_that_fills_the_backups_disk_rolls_back_and_leaves_no_partial() {
    let Some(pg) = common::pg() else { return };
    // The backups directory alone is a 96 MiB disk: room for the 32 MiB snapshot when the
    // plan is made, full by the time the snapshot is written.
    let Some((subject, port, url, config)) = devlake(pg, 32, |data| {
        Tmpfs::mount(&data.join("backups"), "96m", None)
    })
    .await
    else {
        return;
    };
    let backups = subject.env.data().join("backups");
    snapshot_fills_the_disk(&subject.env, &backups, port, &url, &config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_that_fills_the_state_stores_disk_still_records_the_end_of_the_run() {
    let Some(pg) = common::pg() else { return };
    // The whole data directory — state database, audit log, compiled adapters, backups — is
    // on a 160 MiB disk, filled to the last byte once the run has begun.
    let Some((subject, port, url, config)) =
        devlake(pg, 32, |data| Tmpfs::mount(data, "160m", None)).await
    else {
        return;
    };
    let env = &subject.env;
    assert!(
        env.data().join("state.db.reserve").exists(),
        "the journal's reserve is kept beside the state database"
    );
    snapshot_fills_the_disk(env, &env.data(), port, &url, &config).await;
    assert!(env.data().join("state.db.reserve").exists());
}

/// A Bytebase instance `bb` at 3.10.0 with seeded rows and a 300,000-row ballast table (so a
/// backup and a restore take long enough to be caught in the act from outside); its service
/// left running only with `start`.
async fn bytebase(pg: &common::Pg, start: bool) -> (Env, u16, String, String) {
    let (name, url) = pg.fresh_db("bbleft").await;
    let env = Env::new();
    let port = free_port();
    env.write_fleet(&common::bytebase_instance("bb", &url, port, "3.10.0", None));
    // The simulator creates its schema when it first starts.
    start_services(&env, "bb", &["app"]).await;
    if !start {
        stop_app(&env).await;
    }
    let client = connect(&url).await;
    upshift_sim::bytebase::seed_user_rows(&client, 5)
        .await
        .expect("seed");
    client
        .batch_execute(
            "CREATE TABLE ballast AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 300000) g",
        )
        .await
        .expect("ballast");
    (env, port, url, name)
}

/// Stop `bb`'s service (a clone backup or a restore needs its database to itself).
async fn stop_app(env: &Env) {
    let fleet = upshift::fleet::Fleet::load(&env.fleet()).expect("fleet");
    let session = upshift::ops::Session::open(&env.data(), upshift::caps::EventSink::discard())
        .await
        .expect("session");
    let (_, caps) = upshift::ops::apply::prepare(&session, fleet.instance("bb").expect("bb"))
        .await
        .expect("prepare");
    caps.service().stop("app", "test").await.expect("stop");
}

/// Databases whose names start with `prefix`.
async fn databases_like(pg: &common::Pg, prefix: &str) -> Vec<String> {
    let admin = connect(&pg.admin_url("postgres")).await;
    admin
        .query(
            "SELECT datname::text FROM pg_database WHERE starts_with(datname, $1) ORDER BY 1",
            &[&prefix],
        )
        .await
        .expect("pg_database")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Start `upshift ARGS` and SIGKILL it the moment a database named `prefix…` appears in
/// `pg_database`; returns that database's name.
async fn kill_when_database_appears(
    env: &Env,
    pg: &common::Pg,
    args: &[&str],
    prefix: &str,
) -> String {
    let mut child = env
        .command(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn upshift");
    let deadline = Instant::now() + Duration::from_secs(120);
    let found = loop {
        if let Some(name) = databases_like(pg, prefix).await.into_iter().next() {
            break name;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("upshift {args:?} ended ({status}) before `{prefix}…` appeared");
        }
        assert!(Instant::now() < deadline, "`{prefix}…` never appeared");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    child.kill().expect("SIGKILL");
    let status = child.wait().expect("reaped");
    assert_eq!(status.signal(), Some(9), "killed in the act");
    found
}

/// gc's items as (kind, location, action).
fn items(report: &serde_json::Value) -> Vec<(String, String, String)> {
    report["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| {
            (
                i["kind"].as_str().unwrap_or_default().to_string(),
                i["location"].as_str().unwrap_or_default().to_string(),
                i["action"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clone_left_by_a_killed_backup_is_listed_with_its_size_and_dropped_by_gc() {
    let Some(pg) = common::pg() else { return };
    let (env, port, url, db) = bytebase(pg, true).await;
    let before = common::table_checksums(&url).await;
    let clone = kill_when_database_appears(
        &env,
        pg,
        &["apply", "bb", "--to", "3.11.1", "--yes", "--json"],
        &format!("{db}_bk_"),
    )
    .await;
    let run = newest_run(&env);
    assert_eq!(run["status"], "running", "{run}");
    let run_id = run["id"].as_str().expect("id").to_string();

    // While its run has not ended, the clone is the run's: gc keeps it and says why.
    let out = env.upshift(&["gc", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report = json(&out);
    assert_eq!(
        items(&report),
        [("clone".to_string(), clone.clone(), "kept".to_string())],
        "{report}"
    );
    assert!(
        report["items"][0]["detail"]
            .as_str()
            .is_some_and(|d| d.contains(&format!("upshift resume {run_id}"))),
        "{report}"
    );
    assert!(pg.database_exists(&clone).await);

    // The operator ends the run (what `upshift abandon` records).
    end_run(&env, &run_id);

    // Now it is an orphan: listed with its size, removed by nothing in a dry run…
    let out = env.upshift(&["gc", "--dry-run", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report = json(&out);
    assert_eq!(
        items(&report),
        [(
            "clone".to_string(),
            clone.clone(),
            "would-remove".to_string()
        )],
        "{report}"
    );
    let size = report["items"][0]["size_bytes"].as_u64().unwrap_or(0);
    assert!(size > 10 << 20, "the clone's size ({size}) is shown");
    assert!(
        report["items"][0]["why"]
            .as_str()
            .is_some_and(|w| w.contains(&run_id)),
        "{report}"
    );
    assert!(
        pg.database_exists(&clone).await,
        "a dry run removes nothing"
    );
    let text = env.upshift(&["gc", "--dry-run"]);
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(
        text.contains(&format!("would remove: clone `{clone}` of bb/meta")) && text.contains("MiB"),
        "{text}"
    );

    // …and dropped by gc, once.
    let out = env.upshift(&["gc", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        items(&json(&out)),
        [("clone".to_string(), clone.clone(), "removed".to_string())]
    );
    assert!(!pg.database_exists(&clone).await, "dropped");
    let out = env.upshift(&["gc", "--json"]);
    assert_eq!(json(&out)["items"], serde_json::json!([]), "nothing left");
    // The run was killed before anything changed the data: every row, identical.
    assert_eq!(common::table_checksums(&url).await, before);

    // Killed again while cloning, the run is resumed instead: resume removes the clone its
    // killed host left before it goes on, and the run ends.
    start_services(&env, "bb", &["app"]).await;
    let clone = kill_when_database_appears(
        &env,
        pg,
        &["apply", "bb", "--to", "3.11.1", "--yes", "--json"],
        &format!("{db}_bk_"),
    )
    .await;
    let run_id = newest_run(&env)["id"].as_str().expect("id").to_string();
    let out = env.upshift(&["resume", &run_id, "--json"]);
    assert!(matches!(out.status.code(), Some(0 | 4)), "{}", stderr(&out));
    assert_ne!(newest_run(&env)["status"], "running");
    assert!(!pg.database_exists(&clone).await, "resume removed {clone}");
    let out = env.upshift(&["gc", "--dry-run", "--json"]);
    assert_eq!(
        json(&out)["items"],
        serde_json::json!([]),
        "nothing left for gc"
    );
    let (_, body) = common::http_get(port, "/v1/actuator/info").await;
    assert!(
        body.contains("\"3.11.1\"") || body.contains("\"3.10.0\""),
        "{body}"
    );
    let after = common::table_checksums(&url).await;
    assert_eq!(after["ballast"], before["ballast"], "every row");
    assert_eq!(after["project"].0, before["project"].0, "every row");
    // Every catalogued clone backup is still there.
    let backups = json(&env.upshift(&["backups", "--json"]));
    for b in backups.as_array().expect("backups") {
        let location = b["location"].as_str().expect("location");
        assert!(pg.database_exists(location).await, "{location} is kept");
    }
}

/// End run `run_id` as the operator does after fixing things by hand: `upshift abandon`
/// (restore runs and backup runs are not resumed).
fn end_run(env: &Env, run_id: &str) {
    let out = env.upshift(&[
        "abandon",
        run_id,
        "--why",
        "the operator checked the instance by hand",
    ]);
    assert_eq!(out.status.code(), Some(0), "abandon: {}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_target_left_by_a_killed_restore_is_dropped_by_gc() {
    let Some(pg) = common::pg() else { return };
    let (env, _port, url, db) = bytebase(pg, false).await;
    let out = env.upshift(&["backup", "bb", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let backup = json(&out)[0]["id"].as_str().expect("id").to_string();
    let before = common::table_checksums(&url).await;

    let target = kill_when_database_appears(
        &env,
        pg,
        &["restore", "bb", &backup, "--yes", "--json"],
        &format!("{db}_restoring_"),
    )
    .await;
    let run = newest_run(&env);
    assert_eq!(
        (&run["kind"], &run["status"]),
        (&"restore".into(), &"running".into())
    );
    let run_id = run["id"].as_str().expect("id").to_string();

    // The restore run has not ended: its target is kept.
    let out = env.upshift(&["gc", "--dry-run", "--json"]);
    assert_eq!(
        items(&json(&out)),
        [(
            "restore-target".to_string(),
            target.clone(),
            "kept".to_string()
        )],
        "{}",
        stderr(&out)
    );
    // The operator ends the run (what `upshift abandon` records; a restore run is not
    // resumed).
    end_run(&env, &run_id);
    // The killed host's pg_restore goes on by itself; wait until it is done with the target.
    let admin = connect(&pg.admin_url("postgres")).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let n: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1",
                &[&target],
            )
            .await
            .expect("activity")
            .get(0);
        if n == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "pg_restore never finished");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let out = env.upshift(&["gc", "--dry-run", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report = json(&out);
    assert_eq!(
        items(&report),
        [(
            "restore-target".to_string(),
            target.clone(),
            "would-remove".to_string()
        )],
        "{report}"
    );
    assert!(report["items"][0]["size_bytes"].as_u64().unwrap_or(0) > 0);
    assert!(
        pg.database_exists(&target).await,
        "a dry run removes nothing"
    );
    let out = env.upshift(&["gc"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains(&format!("removed: restore-target `{target}` of bb/meta")),
        "{text}"
    );
    assert!(!pg.database_exists(&target).await, "dropped");
    // The bound database was never touched, and the backup is still catalogued.
    assert_eq!(common::table_checksums(&url).await, before);
    let backups = json(&env.upshift(&["backups", "--json"]));
    assert_eq!(backups[0]["id"], backup.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_the_newest_backups_and_a_dry_run_removes_nothing() {
    let Some(pg) = common::pg() else { return };
    let (env, _port, _url, _db) = bytebase(pg, false).await;
    // Four backups, oldest first: a clone, a dump, a dump, a clone.
    let mut ids = Vec::new();
    for method in ["clone", "dump", "dump", "clone"] {
        let out = env.upshift(&["backup", "bb", "--method", method, "--json"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let b = json(&out)[0].clone();
        ids.push((
            b["id"].as_str().expect("id").to_string(),
            b["location"].as_str().expect("location").to_string(),
        ));
        // Distinct creation times (catalogued to the second).
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    let exists = async |(id, location): &(String, String), method: &str| {
        let artifact = if method == "clone" {
            pg.database_exists(location).await
        } else {
            Path::new(location).exists()
        };
        (artifact, env.data().join("backups").join(id).exists())
    };
    // Without [retention], every backup is kept.
    let out = env.upshift(&["gc", "--json"]);
    assert_eq!(
        json(&out)["items"],
        serde_json::json!([]),
        "{}",
        stderr(&out)
    );

    let fleet = std::fs::read_to_string(env.fleet()).expect("fleet");
    env.write_fleet(&format!("[retention]\nkeep = 2\n{fleet}"));
    let out = env.upshift(&["gc", "--dry-run", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report = json(&out);
    let listed: Vec<String> = report["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| {
            assert_eq!(
                (&i["kind"], &i["action"]),
                (&"backup".into(), &"would-remove".into())
            );
            i["location"].as_str().unwrap_or_default().to_string()
        })
        .collect();
    assert_eq!(listed.len(), 2, "{report}");
    assert!(listed[0].starts_with(&ids[0].0) || listed[1].starts_with(&ids[0].0));
    assert!(listed.iter().any(|l| l.starts_with(&ids[1].0)), "{report}");
    for (i, method) in ["clone", "dump", "dump", "clone"].iter().enumerate() {
        assert_eq!(exists(&ids[i], method).await, (true, true), "dry run: {i}");
    }
    let catalog = json(&env.upshift(&["backups", "--json"]));
    assert_eq!(
        catalog.as_array().map(Vec::len),
        Some(4),
        "dry run: catalog"
    );

    let out = env.upshift(&["gc", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report = json(&out);
    assert!(
        report["items"]
            .as_array()
            .expect("items")
            .iter()
            .all(|i| i["action"] == "removed"),
        "{report}"
    );
    assert_eq!(
        exists(&ids[0], "clone").await,
        (false, false),
        "oldest clone"
    );
    assert_eq!(exists(&ids[1], "dump").await, (false, false), "oldest dump");
    assert_eq!(exists(&ids[2], "dump").await, (true, true), "kept");
    assert_eq!(exists(&ids[3], "clone").await, (true, true), "kept");
    let catalog = json(&env.upshift(&["backups", "--json"]));
    let left: Vec<&str> = catalog
        .as_array()
        .expect("catalog")
        .iter()
        .filter_map(|b| b["id"].as_str())
        .collect();
    assert_eq!(left, [ids[3].0.as_str(), ids[2].0.as_str()], "the catalog");
    // The kept backups still restore-check: the newest verifies.
    let out = env.upshift(&["backup", "verify", &ids[3].0, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // Nothing more to remove.
    let out = env.upshift(&["gc", "--json"]);
    assert_eq!(json(&out)["items"], serde_json::json!([]));
}
