//! Restore safety (issue 15, cases 4 and 5): a restore is a transaction — one that fails before
//! its swap (the database server's disk is full while the copy is loaded) starts the service
//! again as it was and exits 4; `--into` an existing database is refused before anything stops;
//! a relative `--data` catalogues absolute locations, and `backup verify` marks a backup invalid
//! only for damage it read, never for a path it could not read. Real PostgreSQL, a real full
//! disk (a small tmpfs), the real `upshift` binary.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{Env, connect, free_port, json, start_services, stderr};

/// `upshift` run in `cwd` with `--data DATA` exactly as given (perhaps relative).
fn upshift_in(cwd: &Path, fleet: &Path, data: &str, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_upshift"))
        .current_dir(cwd)
        .arg("--fleet")
        .arg(fleet)
        .arg("--data")
        .arg(data)
        .args(args)
        .env_remove("UPSHIFT_FLEET")
        .env_remove("UPSHIFT_DATA")
        .output()
        .expect("run upshift")
}

/// The process id the service state of `bb`'s `app` records.
fn service_pid(data: &Path) -> i64 {
    let text = std::fs::read_to_string(data.join("services/bb/app.json")).expect("service state");
    let state: serde_json::Value = serde_json::from_str(&text).expect("service state JSON");
    state["pid"].as_i64().expect("a pid")
}

/// How many processes serve the simulated Bytebase on `port`.
fn service_processes(port: u16) -> usize {
    let marker = format!("--port {port}");
    std::fs::read_dir("/proc")
        .expect("proc")
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains("simulate bytebase") && c.trim_end().ends_with(&marker))
        .count()
}

/// The one catalogued backup of `bb`.
fn the_backup(env_data: &Path, fleet: &Path) -> serde_json::Value {
    let out = upshift_in(
        Path::new("/"),
        fleet,
        &env_data.display().to_string(),
        &["backups", "bb", "--json"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let list = json(&out);
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    list[0].clone()
}

/// A Bytebase instance `bb` at 3.10.0 on database `url`, seeded.
async fn bytebase_on(url: &str) -> (Env, u16) {
    let env = Env::new();
    let port = free_port();
    env.write_fleet(&common::bytebase_instance("bb", url, port, "3.10.0", None));
    start_services(&env, "bb", &["app"]).await;
    upshift_sim::bytebase::seed_user_rows(&connect(url).await, 10)
        .await
        .expect("seed");
    (env, port)
}

/// Back up `bb` by dump; the backup's id.
fn backup(env: &Env) -> String {
    let out = env.upshift(&["backup", "bb", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    json(&out)[0]["id"].as_str().expect("backup id").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_into_an_existing_database_is_refused_before_anything_stops() {
    let Some(pg) = common::pg() else { return };
    let (_, url) = pg.fresh_db("into").await;
    let (taken, _) = pg.fresh_db("taken").await;
    let (env, port) = bytebase_on(&url).await;
    let id = backup(&env);
    let pid = service_pid(&env.data());
    let runs_before = json(&env.upshift(&["history", "--json"]));

    let out = env.upshift(&["restore", "bb", &id, "--into", &taken, "--yes", "--json"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    // Under --json the error is the JSON document on stdout (`stderr` shows both streams).
    let err = stderr(&out);
    assert!(
        err.contains(&format!("database `{taken}` already exists")) && err.contains("--into"),
        "names the database and the fix: {err}"
    );
    assert!(err.contains("nothing was stopped"), "{err}");
    // Nothing was stopped: the same process serves, the same version, and no run was recorded.
    assert_eq!(
        service_pid(&env.data()),
        pid,
        "the service was not restarted"
    );
    let (status, body) = common::http_get(port, "/v1/actuator/info").await;
    assert!(
        status == 200 && body.contains("3.10.0"),
        "still serving: {body}"
    );
    assert_eq!(service_processes(port), 1, "exactly one service process");
    assert_eq!(
        json(&env.upshift(&["history", "--json"])),
        runs_before,
        "no restore run was started"
    );

    // A name that does not exist yet is restored into, the live instance untouched.
    let fresh = format!("{taken}_copy");
    let out = env.upshift(&["restore", "bb", &id, "--into", &fresh, "--yes", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(pg.database_exists(&fresh).await);
    assert_eq!(service_pid(&env.data()), pid);

    // A restore into a new database that fails (the dump was damaged after it was catalogued)
    // had nothing to undo: exit 1, saying so, and no half-made database.
    let toc = env.data().join("backups").join(&id).join("toc.dat");
    let mut bytes = std::fs::read(&toc).expect("toc.dat");
    bytes[0] ^= 0xff;
    std::fs::write(&toc, &bytes).expect("damage");
    let broken = format!("{taken}_broken");
    let out = env.upshift(&["restore", "bb", &id, "--into", &broken, "--yes", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    // Under --json the error is the JSON document on stdout (`stderr` shows both streams).
    let err = stderr(&out);
    assert!(
        err.contains("damaged") && err.contains("were not changed"),
        "{err}"
    );
    assert!(!pg.database_exists(&broken).await);
    assert_eq!(service_pid(&env.data()), pid);
    let runs = json(&env.upshift(&["history", "--json"]));
    assert_eq!(
        (&runs[0]["kind"], &runs[0]["status"]),
        (&"restore".into(), &"failed".into()),
        "{runs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relative_data_dir_keeps_backups_valid_and_verify_condemns_only_damage() {
    let Some(pg) = common::pg() else { return };
    let (_, url) = pg.fresh_db("rel").await;
    let (env, _port) = bytebase_on(&url).await;
    // The operator works in `work/` and names the data directory relatively.
    let work = env.dir.path().join("work");
    let elsewhere = env.dir.path().join("elsewhere/deeper");
    std::fs::create_dir_all(&work).expect("work dir");
    std::fs::create_dir_all(&elsewhere).expect("another dir");
    let fleet = env.fleet();
    let out = upshift_in(&work, &fleet, "./d", &["backup", "bb", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let id = json(&out)[0]["id"].as_str().expect("id").to_string();
    let data = work.join("d");
    let dir = data.join("backups").join(&id);
    let record = the_backup(&data, &fleet);
    assert_eq!(
        record["location"].as_str(),
        Some(dir.display().to_string().as_str()),
        "the location is catalogued absolute"
    );

    // From another directory, by another relative path to the same data directory.
    let verify = |cwd: &Path, data: &str| upshift_in(cwd, &fleet, data, &["backup", "verify", &id]);
    let out = verify(&elsewhere, "../../work/d");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("backup is good"));
    assert_eq!(the_backup(&data, &fleet)["valid"], true);

    // A catalog written before locations were absolute holds the relative path it was given:
    // it is read under the data directory, from anywhere.
    let state = rusqlite::Connection::open(data.join("state.db")).expect("state.db");
    state
        .execute(
            "UPDATE backups SET location = ?1 WHERE id = ?2",
            (format!("./d/backups/{id}"), &id),
        )
        .expect("an old relative row");
    let out = verify(&elsewhere, &data.display().to_string());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(the_backup(&data, &fleet)["valid"], true);

    // The backup's directory is missing (an unmounted disk, a moved tree): an error naming the
    // path and the cause; the backup stays valid.
    let away = data.join("backups").join(format!("{id}.away"));
    std::fs::rename(&dir, &away).expect("move the backup away");
    let out = verify(&elsewhere, "../../work/d");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    // Under --json the error is the JSON document on stdout (`stderr` shows both streams).
    let err = stderr(&out);
    assert!(
        err.contains(&dir.display().to_string()) && err.contains("No such file"),
        "names the path and the cause: {err}"
    );
    assert_eq!(the_backup(&data, &fleet)["valid"], true, "not condemned");
    std::fs::rename(&away, &dir).expect("put it back");

    // One file cannot be read (a symlink loop stands in its place: even root cannot read it).
    let toc = dir.join("toc.dat");
    let bytes = std::fs::read(&toc).expect("toc.dat");
    std::fs::remove_file(&toc).expect("remove");
    std::os::unix::fs::symlink("toc.dat", &toc).expect("a symlink loop");
    let out = verify(&elsewhere, "../../work/d");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    // Under --json the error is the JSON document on stdout (`stderr` shows both streams).
    let err = stderr(&out);
    assert!(
        err.contains(&toc.display().to_string()) && err.contains("symbolic links"),
        "names the file and the cause: {err}"
    );
    let record = the_backup(&data, &fleet);
    assert_eq!(record["valid"], true, "not condemned: {record}");
    std::fs::remove_file(&toc).expect("remove the loop");

    // Its bytes differ from what was recorded: that is damage, and the backup is marked invalid.
    let mut damaged = bytes.clone();
    let last = damaged.len() - 1;
    damaged[last] ^= 0xff;
    std::fs::write(&toc, &damaged).expect("corrupt");
    let out = verify(&elsewhere, "../../work/d");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("marked invalid"));
    let record = the_backup(&data, &fleet);
    assert_eq!(record["valid"], false, "{record}");
    assert!(
        record["note"]
            .as_str()
            .is_some_and(|n| n.contains("toc.dat has changed")),
        "{record}"
    );
    let out = upshift_in(
        &elsewhere,
        &fleet,
        "../../work/d",
        &["restore", "bb", &id, "--yes"],
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "an invalid backup is not restored"
    );

    // Repaired: a good verification marks it valid again and clears the note.
    std::fs::write(&toc, &bytes).expect("repair");
    let out = verify(&elsewhere, "../../work/d");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let record = the_backup(&data, &fleet);
    assert_eq!(record["valid"], true, "{record}");
    assert!(record["note"].is_null(), "{record}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_that_fills_the_servers_disk_starts_the_old_service_again() {
    if common::pg().is_none() {
        return;
    }
    // The postgres system user owns the server's files when the tests run as root.
    let owner = nix::unistd::geteuid().is_root().then(|| {
        let user = nix::unistd::User::from_name("postgres")
            .ok()
            .flatten()
            .expect("the postgres user");
        (user.uid.as_raw(), user.gid.as_raw())
    });
    // 16 MiB: room for an empty database (about 7.5 MiB) but not for the 25 MiB of rows.
    let tiny_dir = std::env::temp_dir().join(format!("upshift-tiny-{}", std::process::id()));
    let Some(tiny) = common::disk::Tmpfs::mount(&tiny_dir, "16m", owner) else {
        return;
    };
    // A second throwaway cluster: every new database it creates (the restore's copy among
    // them) lands on the tmpfs, because template1 lives there; the live database and the
    // write-ahead log stay on the real disk, so only the copy runs out of room.
    let cluster_dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("pg-full-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cluster_dir);
    let cluster = upshift_sim::pg::Cluster::start(&cluster_dir).expect("a second cluster");
    let url = cluster
        .create_owned_database("bbfull")
        .expect("the instance's database");
    let admin = connect(&cluster.url("postgres")).await;
    for sql in [
        format!(
            "CREATE TABLESPACE tiny LOCATION '{}'",
            tiny.path().display()
        ),
        "GRANT CREATE ON TABLESPACE tiny TO PUBLIC".into(),
        "ALTER DATABASE template1 SET TABLESPACE tiny".into(),
    ] {
        admin
            .batch_execute(&sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    let (env, port) = bytebase_on(&url).await;
    connect(&url)
        .await
        .batch_execute(
            "CREATE TABLE bulk AS SELECT g AS id, repeat(md5(g::text), 8) AS payload \
             FROM generate_series(1, 90000) g",
        )
        .await
        .expect("25 MiB of rows");
    let id = backup(&env);
    let before = common::table_checksums(&url).await;
    let pid = service_pid(&env.data());
    assert_eq!(service_processes(port), 1);

    let out = env.upshift(&["restore", "bb", &id, "--yes", "--json"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let report = json(&out);
    assert_eq!(report["outcome"], "rolled-back", "{report}");
    let failure = report["failure"].as_str().unwrap_or_default();
    assert!(
        failure.contains("No space left on device") || failure.contains("could not extend file"),
        "the real cause: {failure}"
    );
    assert_eq!(
        common::step_ids(&report, "forward"),
        ["stop", "restore-meta"],
        "it failed while loading the copy, before the swap"
    );
    let rollback = common::step_ids(&report, "rollback");
    assert!(
        rollback.contains(&"rollback-start-app".to_string())
            && rollback.contains(&"rollback-wait-app".to_string()),
        "the rollback started the service again: {rollback:?}"
    );

    // The service runs again at the version it had, once, on the original rows.
    let (status, body) = common::http_get(port, "/v1/actuator/info").await;
    assert!(
        status == 200 && body.contains("\"3.10.0\""),
        "serves {body}"
    );
    assert_eq!(service_processes(port), 1, "exactly one service process");
    assert_ne!(
        service_pid(&env.data()),
        pid,
        "it was stopped and started again"
    );
    assert_eq!(
        common::table_checksums(&url).await,
        before,
        "every row intact"
    );
    let leftovers = admin
        .query(
            "SELECT datname::text FROM pg_database WHERE datname LIKE '%restoring%'",
            &[],
        )
        .await
        .expect("databases");
    assert!(leftovers.is_empty(), "the half-loaded copy was dropped");

    // The history tells the truth.
    let runs = json(&env.upshift(&["history", "--json"]));
    assert_eq!(runs[0]["kind"], "restore", "{runs}");
    assert_eq!(runs[0]["status"], "rolled-back", "{runs}");
    drop(admin);
    drop(env);
    drop(cluster);
    drop(tiny);
    let _ = std::fs::remove_dir(&tiny_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_that_fails_after_its_swap_says_exactly_what_it_did() {
    let Some(pg) = common::pg() else { return };
    let (_, url) = pg.fresh_db("after").await;
    let env = Env::new();
    let port = free_port();
    let marker = env.dir.path().join("broken-host");
    env.write_fleet(&common::bytebase_instance_with_env(
        "bb",
        &url,
        port,
        "3.10.0",
        None,
        &format!(", BB_SIM_FAIL_START_IF_EXISTS = \"{}\"", marker.display()),
    ));
    start_services(&env, "bb", &["app"]).await;
    upshift_sim::bytebase::seed_user_rows(&connect(&url).await, 10)
        .await
        .expect("seed");
    let id = backup(&env);
    let at_backup = common::table_checksums(&url).await;
    connect(&url)
        .await
        .execute(
            "INSERT INTO project (resource_id, name, key) VALUES ('later', 'Later', 'LATER')",
            &[],
        )
        .await
        .expect("a row written after the backup");
    assert_ne!(common::table_checksums(&url).await, at_backup);
    // From now on the service cannot start: the restore fails after its swap, at `start`.
    std::fs::write(&marker, b"").expect("marker");

    let out = env.upshift(&["restore", "bb", &id, "--yes", "--json"]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    let report = json(&out);
    assert_eq!(report["outcome"], "needs-operator", "{report}");
    assert_eq!(
        common::step_ids(&report, "forward"),
        ["stop", "restore-meta", "switch", "start"]
    );
    assert!(
        common::step_ids(&report, "rollback").is_empty(),
        "nothing is undone once the data was replaced"
    );
    let help = report["operator_help"].as_str().expect("operator help");
    assert!(
        help.contains("after it began replacing live data")
            && help.contains("done restore-meta: restored")
            && help.contains("kept as")
            && help.contains("FAILED start")
            && help.contains("service `app`: stopped"),
        "says what was done and the state now: {help}"
    );
    let command = help
        .lines()
        .find(|l| l.trim_start().starts_with("upshift restore"))
        .expect("a command to finish");
    // The database holds the backup's data, as the help says.
    assert_eq!(common::table_checksums(&url).await, at_backup);
    let runs = json(&env.upshift(&["history", "--json"]));
    assert_eq!(runs[0]["status"], "failed", "{runs}");

    // Once the host is fixed, the command the help gives finishes the restore.
    std::fs::remove_file(&marker).expect("fix the host");
    let mut args: Vec<&str> = command.split_whitespace().skip(1).collect();
    args.extend(["--yes", "--json"]);
    let out = env.upshift(&args);
    assert_eq!(out.status.code(), Some(0), "{command}: {}", stderr(&out));
    let (status, body) = common::http_get(port, "/v1/actuator/info").await;
    assert!(
        status == 200 && body.contains("\"3.10.0\""),
        "serves {body}"
    );
    assert_eq!(service_processes(port), 1, "exactly one service process");
    assert_eq!(
        common::table_checksums(&url).await,
        at_backup,
        "the backup's rows"
    );
}
