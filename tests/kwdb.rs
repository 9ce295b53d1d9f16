//! KWDB end to end through the `upshift` binary, on the real Docker engine and a real
//! PostgreSQL behind the simulator: a same-major upgrade that recreates the container with every
//! parameter but the image, a crashing upgrade rolled back to the same container and store, a
//! 2.x → 3.x move by EXPORT / IMPORT into a new instance (PARTITION INTERVAL stripped, counts
//! compared, cut over), the refusals, and offline plans. KWDB is played by the simulator in
//! tests/simulators (test infrastructure that behaves as KWDB does at upgrade time), baked into
//! FROM-scratch images laid out like `kwdb/kwdb`.

mod common;

use std::process::Command;

use common::docker::{self, Containers, KWDB_SIM_REPO};
use common::kwdb::{counts, instance, node, ready, rows, version, wait_sql};
use common::{Env, json, stderr, step_ids};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_same_major_upgrade_recreates_the_container_and_keeps_every_row() {
    let Some(pg) = ready() else { return };
    let env = Env::new();
    let (_, backing) = pg.fresh_storage_db("kwb").await;
    let old = node(env.dir.path(), "3.0.0", &backing, None, &[], true);
    let _cleanup = Containers(vec![
        old.name.clone(),
        format!("{}-upshift-previous", old.name),
        format!("{}-upshift-next", old.name),
    ]);
    upshift_sim::kwdb::seed(&wait_sql(old.sql).await, 60)
        .await
        .expect("seed");
    let before = rows(old.sql).await;
    let inspected = docker::inspect(&old.name);
    env.write_fleet(&instance("kw", &old, &old.store.join("extern"), None));

    let out = env.upshift(&["apply", "kw", "--to", "3.1.0", "--yes", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report = json(&out);
    assert_eq!(
        step_ids(&report, "forward"),
        [
            "preflight",
            "export",
            "stop",
            "snapshot-store",
            "switch",
            "start",
            "wait-healthy",
            "compare-counts"
        ]
    );
    assert!(
        report["checks"]
            .as_array()
            .expect("checks")
            .iter()
            .all(|c| c["passed"] == true),
        "{report}"
    );
    assert!(version(old.sql).await.starts_with("KaiwuDB V3.1.0 "));
    assert_eq!(
        rows(old.sql).await,
        before,
        "every row, value and timestamp"
    );
    // Everything but the image is what the operator set.
    let now = docker::inspect(&old.name);
    assert_eq!(now["Config"]["Image"], format!("{KWDB_SIM_REPO}:3.1.0"));
    for key in [
        "Binds",
        "NetworkMode",
        "IpcMode",
        "Ulimits",
        "RestartPolicy",
    ] {
        assert_eq!(
            now["HostConfig"][key], inspected["HostConfig"][key],
            "{key}"
        );
    }
    for key in ["Cmd", "WorkingDir"] {
        assert_eq!(now["Config"][key], inspected["Config"][key], "{key}");
    }
    // The operator's label is kept; the image's own label is the new image's.
    assert_eq!(now["Config"]["Labels"]["team"], "data");
    assert_eq!(
        now["Config"]["Labels"]["org.opencontainers.image.version"],
        "3.1.0"
    );
    // The export is a logical backup beside the data, with its counts.
    let export = old.store.join("extern/upshift/export-1");
    assert!(export.join("shop/meta.sql").exists() && export.join("upshift-counts.json").exists());
    assert!(
        !std::fs::read_to_string(export.join("users/users.sql"))
            .expect("users.sql")
            .contains("alice-secret-pw")
    );

    // No downgrade afterwards...
    let out = env.upshift(&["plan", "kw", "--to", "3.0.0", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(json(&out)["outcome"]["rule"], "downgrade");
    // ...but the data-directory copy goes back with the version it was taken at.
    let restore = report["rollback_command"]
        .as_str()
        .expect("a restore command for the data-directory copy")
        .to_string();
    let mut args: Vec<&str> = restore.split_whitespace().skip(1).collect();
    args.extend(["--yes", "--json"]);
    let out = env.upshift(&args);
    assert_eq!(out.status.code(), Some(0), "{restore}: {}", stderr(&out));
    assert_eq!(
        step_ids(&json(&out), "forward"),
        ["stop", "restore-store", "switch", "start", "wait-healthy"]
    );
    assert!(version(old.sql).await.starts_with("KaiwuDB V3.0.0 "));
    assert_eq!(rows(old.sql).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashing_upgrade_is_rolled_back_to_the_same_container_and_store() {
    let Some(pg) = ready() else { return };
    let env = Env::new();
    let (_, backing) = pg.fresh_storage_db("kwb").await;
    let old = node(
        env.dir.path(),
        "3.0.0",
        &backing,
        None,
        &["KWDB_SIM_FAIL_UPGRADE_TO=3.1.0"],
        true,
    );
    let _cleanup = Containers(vec![
        old.name.clone(),
        format!("{}-upshift-previous", old.name),
        format!("{}-upshift-next", old.name),
    ]);
    upshift_sim::kwdb::seed(&wait_sql(old.sql).await, 40)
        .await
        .expect("seed");
    let before = rows(old.sql).await;
    let id = docker::inspect(&old.name)["Id"].clone();
    let marker = std::fs::read(old.store.join("KWDB_STORE")).expect("store marker");
    env.write_fleet(&instance("kw", &old, &old.store.join("extern"), None));

    let out = env.upshift(&["apply", "kw", "--to", "3.1.0", "--yes", "--json"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let report = json(&out);
    assert_eq!(report["outcome"], "rolled-back");
    assert_eq!(
        step_ids(&report, "rollback"),
        [
            "rollback-stop-app",
            "rollback-restore-files-store",
            "rollback-switch-app",
            "rollback-start-app",
            "rollback-wait-app"
        ]
    );
    assert_eq!(
        docker::inspect(&old.name)["Id"],
        id,
        "the very same container is back"
    );
    assert!(version(old.sql).await.starts_with("KaiwuDB V3.0.0 "));
    assert_eq!(
        std::fs::read(old.store.join("KWDB_STORE")).expect("marker"),
        marker
    );
    assert_eq!(rows(old.sql).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2x_instance_moves_to_3x_by_export_and_import() {
    let Some(pg) = ready() else { return };
    let env = Env::new();
    let external = env.dir.path().join("extern");
    std::fs::create_dir_all(&external).expect("extern");
    let (_, backing_old) = pg.fresh_storage_db("kwb").await;
    let (_, backing_new) = pg.fresh_storage_db("kwb").await;
    let old = node(
        env.dir.path(),
        "2.2.2",
        &backing_old,
        Some(&external),
        &[],
        true,
    );
    let new = node(
        env.dir.path(),
        "3.1.0",
        &backing_new,
        Some(&external),
        &[],
        false,
    );
    let _cleanup = Containers(vec![old.name.clone(), new.name.clone()]);
    upshift_sim::kwdb::seed(&wait_sql(old.sql).await, 50)
        .await
        .expect("seed");
    let before = rows(old.sql).await;
    let before_counts = counts(old.sql).await;

    // Without a new instance bound, the adapter says what it needs.
    env.write_fleet(&instance("kw", &old, &external, None));
    let out = env.upshift(&["plan", "kw", "--to", "3.1.0", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(json(&out)["outcome"]["rule"], "needs-new-instance");

    env.write_fleet(&instance("kw", &old, &external, Some(&new)));
    let out = env.upshift(&["apply", "kw", "--to", "3.1.0", "--yes", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report = json(&out);
    assert_eq!(
        step_ids(&report, "forward"),
        [
            "preflight",
            "export",
            "snapshot-export",
            "prepare-meta",
            "switch-next",
            "start-next",
            "wait-next",
            "import",
            "compare-counts",
            "cut-over"
        ]
    );
    assert!(
        report["checks"]
            .as_array()
            .expect("checks")
            .iter()
            .all(|c| c["passed"] == true),
        "{report}"
    );
    assert!(version(new.sql).await.starts_with("KaiwuDB V3.1.0 "));
    assert_eq!(counts(new.sql).await, before_counts);
    assert_eq!(
        rows(new.sql).await,
        before,
        "every row, value and timestamp"
    );
    let meta = external.join("upshift/export-1/sensors/meta.sql");
    assert!(
        !std::fs::read_to_string(&meta)
            .expect("meta.sql")
            .contains("PARTITION INTERVAL")
    );
    assert!(
        std::fs::read_to_string(meta.with_extension("sql.orig"))
            .expect("original")
            .contains("PARTITION INTERVAL")
    );
    assert_eq!(
        docker::inspect(&old.name)["State"]["Running"],
        false,
        "the old instance is stopped"
    );
    // The export is catalogued, but it is not a data-directory copy: no restore command is
    // offered, and a restore says how to use it instead.
    assert!(report["rollback_command"].is_null(), "{report}");
    let export = report["backups"][0]["id"]
        .as_str()
        .expect("export snapshot");
    let out = env.upshift(&["restore", "kw", export, "--yes", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(json(&out)["refusal"]["rule"], "restore-by-import");
    // The old instance's data is untouched: started again, it still serves 2.2.2 with every row.
    let out = Command::new("docker")
        .args(["start", &old.name])
        .output()
        .expect("docker start");
    assert!(out.status.success());
    assert!(version(old.sql).await.starts_with("KaiwuDB V2.2.2 "));
    assert_eq!(rows(old.sql).await, before);
}

#[test]
fn offline_plans_follow_the_path_table() {
    let env = Env::new();
    let plan = |from: &str, to: &str| {
        let (code, v) = env.plan_offline("kwdb", from, to);
        let ids: Vec<String> = v["outcome"]["steps"]
            .as_array()
            .map(|s| {
                s.iter()
                    .filter_map(|s| s["id"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        (code, v["outcome"]["rule"].as_str().map(str::to_string), ids)
    };
    let (code, _, ids) = plan("3.0.0", "3.2.1");
    assert_eq!(code, Some(0));
    assert!(
        ids.contains(&"snapshot-store".to_string()) && !ids.contains(&"import".to_string()),
        "{ids:?}"
    );
    let (code, _, ids) = plan("2.2.2", "3.1.0");
    assert_eq!(code, Some(0));
    assert!(
        ids.contains(&"import".to_string()) && ids.contains(&"prepare-meta".to_string()),
        "{ids:?}"
    );
    let (_, _, ids) = plan("2.2.2", "3.0.0");
    assert!(
        ids.contains(&"import".to_string()) && !ids.contains(&"prepare-meta".to_string()),
        "3.0 still accepts PARTITION INTERVAL: {ids:?}"
    );
    let (_, _, ids) = plan("2.1.0", "2.2.2");
    assert!(
        ids.contains(&"import".to_string()),
        "2.1.0 → 2.2.2 is export/import: {ids:?}"
    );
    assert_eq!(plan("3.1.0", "3.0.0").1.as_deref(), Some("downgrade"));
    assert_eq!(
        plan("3.1.0", "3.2.1-beta1").1.as_deref(),
        Some("release-to-prerelease")
    );
    assert_eq!(plan("3.2.1", "4.0.0").1.as_deref(), Some("unknown-major"));
    assert_eq!(
        plan("3.1.0", "3.1.0").1.as_deref(),
        Some("already-at-target")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_without_the_backup_grant_is_denied_and_audited() {
    let Some(pg) = common::pg() else { return };
    let (_, backing) = pg.fresh_storage_db("kwdeny").await;
    let env = Env::new();
    let (sql, http) = (common::free_port(), common::free_port());
    let store = env.dir.path().join("store");
    std::fs::create_dir_all(store.join("extern")).expect("dirs");
    let fleet = |access: &str| {
        format!(
            r#"
[[instance]]
name = "kw"
product = "kwdb"

[instance.db.sql]
url = "kwdb://root@127.0.0.1:{sql}/defaultdb"
{access}

[instance.service.app]
kind = "process"
command = "'{exe}' simulate kwdb start-single-node --sim-version {{version}} --insecure --listen-addr=127.0.0.1:{sql} --http-addr=127.0.0.1:{http} --store={store}"
version = "3.0.0"
health_url = "http://127.0.0.1:{http}/health"
stop_timeout_secs = 5
env = {{ KWDB_SIM_BACKING_URL = "{backing}" }}

[instance.files.store]
path = "{store}"

[instance.files.extern]
path = "{store}/extern"
"#,
            exe = env!("CARGO_BIN_EXE_upshift"),
            store = store.display(),
        )
    };
    env.write_fleet(&fleet(""));
    common::start_services(&env, "kw", &["app"]).await;
    upshift_sim::kwdb::seed(&wait_sql(sql).await, 10)
        .await
        .expect("seed");
    // The operator narrows the SQL binding to reads: the adapter's EXPORT needs `backup`.
    env.write_fleet(&fleet("access = [\"read\"]"));
    let out = env.upshift(&["apply", "kw", "--to", "3.1.0", "--yes", "--json"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let report = json(&out);
    assert!(
        report["failure"].as_str().unwrap_or("").contains("export"),
        "{report}"
    );
    let denial = report["denials"]
        .as_array()
        .and_then(|d| d.first())
        .cloned()
        .unwrap_or_default();
    assert_eq!(denial["binding"], "sql", "{report}");
    assert_eq!(denial["decision"], "denied", "{report}");
    assert!(
        denial["reason"].as_str().unwrap_or("").contains("backup"),
        "{denial}"
    );
    assert!(
        version(sql).await.starts_with("KaiwuDB V3.0.0 "),
        "untouched"
    );
    assert!(
        !store.join("extern/upshift/export-1/shop/meta.sql").exists(),
        "nothing was exported"
    );
    let audit = env.upshift(&["audit", "verify"]);
    assert_eq!(audit.status.code(), Some(0), "{}", stderr(&audit));
}

/// A simulated KWDB started by the test itself, not by Upshift (as an operator's own systemd
/// unit or shell would), bound in the fleet as a `process` service whose `version` the fleet
/// file declares. Killed on drop.
struct Outside {
    child: std::process::Child,
    sql: u16,
    http: u16,
    store: std::path::PathBuf,
}

impl Outside {
    async fn start(
        dir: &std::path::Path,
        release: &str,
        backing: &str,
        env: &[(&str, &str)],
    ) -> Outside {
        let (sql, http) = (common::free_port(), common::free_port());
        // One store for every start in a test: the simulator binds a store to its backing
        // database, so the rows stay the same across restarts.
        let store = dir.join("outside-store");
        std::fs::create_dir_all(store.join("extern")).expect("store");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_upshift"));
        cmd.args([
            "simulate",
            "kwdb",
            "start-single-node",
            "--sim-version",
            release,
            "--insecure",
        ])
        .arg(format!("--listen-addr=127.0.0.1:{sql}"))
        .arg(format!("--http-addr=127.0.0.1:{http}"))
        .arg(format!("--store={}", store.display()))
        .env("KWDB_SIM_BACKING_URL", backing)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start the simulator");
        wait_sql(sql).await;
        Outside {
            child,
            sql,
            http,
            store,
        }
    }

    /// The fleet entry: the same command Upshift would run, `version` as declared.
    fn fleet(&self, declared: &str, backing: &str) -> String {
        format!(
            r#"
[[instance]]
name = "kw"
product = "kwdb"

[instance.db.sql]
url = "kwdb://root@127.0.0.1:{sql}/defaultdb"

[instance.service.app]
kind = "process"
command = "'{exe}' simulate kwdb start-single-node --sim-version {{version}} --insecure --listen-addr=127.0.0.1:{sql} --http-addr=127.0.0.1:{http} --store={store}"
version = "{declared}"
health_url = "http://127.0.0.1:{http}/health"
stop_timeout_secs = 5
env = {{ KWDB_SIM_BACKING_URL = "{backing}" }}

[instance.files.store]
path = "{store}"

[instance.files.extern]
path = "{store}/extern"
"#,
            sql = self.sql,
            http = self.http,
            exe = env!("CARGO_BIN_EXE_upshift"),
            store = self.store.display(),
        )
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The adapter's own `preflight` step for `target`, run against the instance `kw` of the fleet.
async fn adapter_preflight(env: &Env, target: &str) -> Result<String, String> {
    let fleet = upshift::fleet::Fleet::load(&env.fleet()).expect("fleet");
    let session = upshift::ops::Session::open(&env.data(), upshift::caps::EventSink::discard())
        .await
        .expect("session");
    let (adapter, caps) = upshift::ops::apply::prepare(&session, fleet.instance("kw").expect("kw"))
        .await
        .expect("prepare");
    let target = target.to_string();
    session
        .runtime
        .call(
            &adapter,
            Some(caps),
            "run-step",
            session.runtime.deadlines().live,
            async |a, s| a.call_run_step(s, "preflight", &target).await,
        )
        .await
        .expect("no trap")
        .map(|o| o.summary)
        .map_err(|e| e.message)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kwdb_upshift_did_not_start_gets_the_range_and_job_checks() {
    let Some(pg) = common::pg() else { return };
    let env = Env::new();
    let (_, backing) = pg.fresh_storage_db("kwout").await;

    // Unhealthy ranges on a node started outside Upshift: the plan and the adapter's preflight
    // both read them through `sql`.
    let node = Outside::start(
        env.dir.path(),
        "3.0.0",
        &backing,
        &[("KWDB_SIM_RANGES", "unavailable=2,underreplicated=1")],
    )
    .await;
    upshift_sim::kwdb::seed(&wait_sql(node.sql).await, 10)
        .await
        .expect("seed");
    env.write_fleet(&node.fleet("3.0.0", &backing));
    let out = env.upshift(&["plan", "kw", "--to", "3.1.0", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let refusal = &json(&out)["outcome"];
    assert_eq!(refusal["rule"], "unavailable-ranges", "{refusal}");
    assert!(
        refusal["reason"]
            .as_str()
            .unwrap_or("")
            .contains("2 range(s)"),
        "{refusal}"
    );
    let preflight = adapter_preflight(&env, "3.1.0").await;
    assert!(
        preflight
            .as_ref()
            .is_err_and(|e| e.contains("unavailable-ranges")),
        "{preflight:?}"
    );
    drop(node);

    // The same data, healthy, but a job still running.
    let node = Outside::start(env.dir.path(), "3.0.0", &backing, &[]).await;
    let backing_client = common::connect(&backing).await;
    backing_client
        .batch_execute(
            "INSERT INTO kwdb_sim.jobs (job_type, description, user_name, status) VALUES ('IMPORT', 'IMPORT DATABASE CSV DATA (...)', 'root', 'running')",
        )
        .await
        .expect("a running job");
    env.write_fleet(&node.fleet("3.0.0", &backing));
    let out = env.upshift(&["plan", "kw", "--to", "3.1.0", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(
        json(&out)["outcome"]["rule"],
        "jobs-running",
        "{}",
        json(&out)
    );
    let preflight = adapter_preflight(&env, "3.1.0").await;
    assert!(
        preflight
            .as_ref()
            .is_err_and(|e| e.contains("jobs-running")),
        "{preflight:?}"
    );

    // Once the job is done, both allow the upgrade and name the user databases.
    backing_client
        .batch_execute("UPDATE kwdb_sim.jobs SET status = 'succeeded', finished = now()")
        .await
        .expect("job done");
    let preflight = adapter_preflight(&env, "3.1.0").await.expect("allowed");
    assert!(
        preflight.contains("databases: ") && preflight.contains("shop"),
        "{preflight}"
    );
    // The adapter allows it; the host still wants the unknown process adopted first.
    let out = env.upshift(&["plan", "kw", "--to", "3.1.0", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(json(&out)["outcome"]["rule"], "preflight-unadopted");
    let out = env.upshift(&["adopt", "kw", "app"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = env.upshift(&["plan", "kw", "--to", "3.1.0", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_version_the_sql_port_contradicts_is_refused_naming_both() {
    let Some(pg) = common::pg() else { return };
    let env = Env::new();
    let (_, backing) = pg.fresh_storage_db("kwdecl").await;
    let node = Outside::start(env.dir.path(), "3.1.0", &backing, &[]).await;
    // The fleet file still says 3.0.0; the node runs 3.1.0.
    env.write_fleet(&node.fleet("3.0.0", &backing));
    let out = env.upshift(&["plan", "kw", "--to", "3.2.1", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let refusal = &json(&out)["outcome"];
    assert_eq!(refusal["rule"], "declared-contradicts-sql", "{refusal}");
    let reason = refusal["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("declares KWDB 3.0.0")
            && reason.contains("SELECT version() on `sql` reports 3.1.0"),
        "{refusal}"
    );
    assert!(
        refusal["advice"]
            .as_str()
            .unwrap_or("")
            .contains("fleet file"),
        "{refusal}"
    );
    // Declared as it runs (with a leading `v`), the adapter allows it: only the host's own
    // check remains (adopt the process Upshift did not start), then the plan is made.
    env.write_fleet(&node.fleet("v3.1.0", &backing));
    let out = env.upshift(&["plan", "kw", "--to", "3.2.1", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(json(&out)["outcome"]["rule"], "preflight-unadopted");
    let out = env.upshift(&["adopt", "kw", "app"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = env.upshift(&["plan", "kw", "--to", "3.2.1", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn a_release_outside_the_catalog_is_refused_with_the_nearest_known() {
    let env = Env::new();
    let (code, v) = env.plan_offline("kwdb", "3.2.1", "3.99.0");
    assert_eq!(code, Some(3), "{v}");
    assert_eq!(v["outcome"]["rule"], "unknown-release", "{v}");
    let reason = v["outcome"]["reason"].as_str().unwrap_or("");
    assert!(reason.contains("nearest known: 3.2.1"), "{reason}");
    // 3.0.1 is a code tag without release notes: the adapter does not know its paths.
    let (code, v) = env.plan_offline("kwdb", "3.0.0", "v3.0.1");
    assert_eq!(code, Some(3), "{v}");
    assert_eq!(v["outcome"]["rule"], "unknown-release", "{v}");
    assert!(
        v["outcome"]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("nearest known: 3.0.0, 3.1.0"),
        "{v}"
    );
    // Every release of the catalog plans (from the one before it, or from 2.2.2 into 3.x).
    for (from, to) in [
        ("2.0.4", "2.1.0"),
        ("2.1.0", "2.2.0"),
        ("2.2.0", "2.2.1"),
        ("2.2.1", "2.2.2"),
        ("2.2.2", "3.0.0"),
        ("3.0.0", "3.1.0"),
        ("3.1.0", "3.2.0"),
        ("3.2.0", "v3.2.1"),
    ] {
        let (code, v) = env.plan_offline("kwdb", from, to);
        assert_eq!(code, Some(0), "{from} → {to}: {v}");
    }
}
