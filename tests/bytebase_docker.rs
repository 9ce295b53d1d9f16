//! Bytebase as both seeds run it (issue 19), external-PostgreSQL mode: a container started with
//! the seed's own `docker run` parameters — `--init`, `--restart always`, `--add-host
//! host.docker.internal:host-gateway`, `--publish`, the `--data` volume, `--data … --port …`
//! after the image — upgraded through the `docker` backend by the real `upshift` binary.
//!
//! The container uses host networking as well, because the metadata database of these tests
//! listens on loopback only (no traffic leaves the machine); Docker keeps `--publish` in the
//! container's configuration and ignores it there, and the tests check it is kept all the same.
//!
//! Embedded mode (no `PG_URL`): the image also carries this machine's PostgreSQL server, which
//! the simulator runs under `/var/opt/bytebase/pgdata` as Bytebase runs its bundled one. The
//! store listens only on a socket in the container's `/tmp`, so the one parameter added to the
//! seed's `docker run` is a volume publishing that `/tmp` to the host (docs/products/bytebase.md).

mod common;

use std::process::Command;
use std::time::Duration;

use common::docker::{self, BYTEBASE_SIM_REPO, Containers};
use common::{Env, free_port, http_get, json, stderr};
use serde_json::Value;

/// A seed-style Bytebase container and its fleet entry, removed (with what Upshift kept beside
/// it) on drop.
struct Deployed {
    env: Env,
    name: String,
    port: u16,
    db_url: String,
    _data: tempfile::TempDir,
    _cleanup: Containers,
}

/// `docker run` as `bytebase-upgrade.md` and `bytebase-backup.md` start Bytebase, with the
/// metadata in `PG_URL` (external mode) and `extra_env` (`KEY=value`) for the simulator.
async fn deploy(pg: &common::Pg, version: &str, extra_env: &[&str]) -> Deployed {
    docker::bytebase_images(&["3.10.0", "3.11.1"]);
    let (_, db_url) = pg.fresh_db("bbdock").await;
    let name = format!("upshift-bb-{}-{}", std::process::id(), free_port());
    let cleanup = kept_beside(&name);
    let data = tempfile::tempdir().expect("data dir");
    let port = free_port();
    let mut env_vars = vec![format!("PG_URL={db_url}")];
    env_vars.extend(extra_env.iter().map(|e| e.to_string()));
    seed_docker_run(
        &name,
        port,
        &[(data.path(), "/var/opt/bytebase")],
        &env_vars,
        &format!("{BYTEBASE_SIM_REPO}:{version}"),
    );
    wait_healthy(port).await;
    let client = connect(&db_url).await;
    upshift_sim::bytebase::seed_user_rows(&client, 40)
        .await
        .expect("seed");

    let env = Env::new();
    env.write_fleet(&format!(
        r#"
[[instance]]
name = "bb"
product = "bytebase"

[instance.db.meta]
url = "{db_url}"

[instance.service.app]
kind = "docker"
container = "{name}"
image = "{BYTEBASE_SIM_REPO}:{{version}}"
health_url = "http://127.0.0.1:{port}/healthz"
stop_timeout_secs = 10

[instance.http.api]
url = "http://127.0.0.1:{port}"
"#
    ));
    Deployed {
        env,
        name,
        port,
        db_url,
        _data: data,
        _cleanup: cleanup,
    }
}

/// The container `name` and what Upshift keeps beside it during a switch, removed on drop.
fn kept_beside(name: &str) -> Containers {
    Containers(vec![
        name.to_string(),
        format!("{name}-upshift-previous"),
        format!("{name}-upshift-next"),
    ])
}

/// The seeds' `docker run` (`--init`, `--restart always`, `--add-host
/// host.docker.internal:host-gateway`, `--publish`, the volumes, `--data … --port …` after the
/// image) on host networking, with `env` (`KEY=value`) set.
fn seed_docker_run(
    name: &str,
    port: u16,
    volumes: &[(&std::path::Path, &str)],
    env: &[String],
    image: &str,
) {
    let mut run = Command::new("docker");
    run.args(["run", "-d", "--init", "--name", name, "--restart", "always"])
        .args(["--add-host", "host.docker.internal:host-gateway"])
        .args(["--publish", &format!("127.0.0.1:{port}:{port}")])
        .args(["--network", "host"]);
    for (host, inside) in volumes {
        run.arg("--volume")
            .arg(format!("{}:{inside}", host.display()));
    }
    for e in env {
        run.args(["-e", e]);
    }
    run.arg(image)
        .args(["--data", "/var/opt/bytebase", "--port", &port.to_string()]);
    let out = run.output().expect("docker run");
    assert!(out.status.success(), "docker run: {}", stderr(&out));
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to the metadata database");
    tokio::spawn(connection);
    client
}

async fn wait_healthy(port: u16) {
    for _ in 0..300 {
        if http_get(port, "/healthz").await.0 == 200 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the Bytebase container on port {port} did not become healthy");
}

async fn served_version(port: u16) -> String {
    let (_, body) = http_get(port, "/v1/actuator/info").await;
    serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| v["version"].as_str().map(str::to_string))
        .unwrap_or(body)
}

/// What the operator set on the container, besides its image: the seed's parameters.
fn seed_parameters(name: &str) -> Value {
    let c = docker::inspect(name);
    let host = &c["HostConfig"];
    serde_json::json!({
        "Init": host["Init"],
        "RestartPolicy": host["RestartPolicy"],
        "ExtraHosts": host["ExtraHosts"],
        "PortBindings": host["PortBindings"],
        "Binds": host["Binds"],
        "NetworkMode": host["NetworkMode"],
        "Cmd": c["Config"]["Cmd"],
        "Env": c["Config"]["Env"],
        "Name": c["Name"],
    })
}

/// Containers named `name` (exactly) that run.
fn running_containers(name: &str) -> usize {
    let out = Command::new("docker")
        .args(["ps", "-q", "--filter", &format!("name=^/{name}$")])
        .output()
        .expect("docker ps");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_style_container_is_upgraded_keeping_every_parameter_and_row() {
    let Some(pg) = common::pg() else { return };
    if !docker::available() {
        return;
    }
    let bb = deploy(pg, "3.10.0", &[]).await;
    let before_params = seed_parameters(&bb.name);
    assert_eq!(before_params["Init"], true, "{before_params}");
    let before_rows = common::table_checksums(&bb.db_url).await;

    let out = bb
        .env
        .upshift(&["apply", "bb", "--to", "3.11.1", "--yes", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report = json(&out);
    let checks = report["checks"].as_array().cloned().unwrap_or_default();
    assert!(
        !checks.is_empty() && checks.iter().all(|c| c["passed"] == true),
        "{checks:?}"
    );
    assert_eq!(served_version(bb.port).await, "3.11.1");
    let container = docker::inspect(&bb.name);
    assert_eq!(
        container["Config"]["Image"],
        format!("{BYTEBASE_SIM_REPO}:3.11.1")
    );
    assert_eq!(
        seed_parameters(&bb.name),
        before_params,
        "every parameter of the seed's `docker run` is kept"
    );
    assert_eq!(running_containers(&bb.name), 1);

    let after_rows = common::table_checksums(&bb.db_url).await;
    let seeded: Vec<&String> = before_rows
        .keys()
        .filter(|t| t.as_str() != "instance_change_history")
        .collect();
    for table in seeded {
        assert_eq!(
            before_rows.get(table).map(|(n, _)| n),
            after_rows.get(table).map(|(n, _)| n),
            "{table}: every row is kept"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_migration_in_a_container_is_rolled_back_to_the_old_container() {
    let Some(pg) = common::pg() else { return };
    if !docker::available() {
        return;
    }
    let bb = deploy(pg, "3.10.0", &["BB_SIM_FAIL_MIGRATION=3.11.1"]).await;
    let before_params = seed_parameters(&bb.name);
    let before_id = docker::inspect(&bb.name)["Id"].clone();
    let before_rows = common::table_checksums(&bb.db_url).await;

    let out = bb
        .env
        .upshift(&["apply", "bb", "--to", "3.11.1", "--yes", "--json"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let report = json(&out);
    assert_eq!(report["outcome"], "rolled-back", "{report}");

    assert_eq!(
        common::table_checksums(&bb.db_url).await,
        before_rows,
        "every table is identical to before the upgrade"
    );
    assert_eq!(served_version(bb.port).await, "3.10.0");
    let container = docker::inspect(&bb.name);
    assert_eq!(
        container["Config"]["Image"],
        format!("{BYTEBASE_SIM_REPO}:3.10.0")
    );
    assert_eq!(container["Id"], before_id, "the original container is back");
    assert_eq!(seed_parameters(&bb.name), before_params);
    assert_eq!(running_containers(&bb.name), 1);
}

/// A seed-style container on its embedded store: the `--data` volume holds `pgdata`, the
/// container's `/tmp` (the store's socket) is published to `sockets`.
struct EmbeddedDeployed {
    env: Env,
    name: String,
    port: u16,
    data: tempfile::TempDir,
    /// The embedded store's database `bb`, over the published socket.
    url: String,
    _sockets: tempfile::TempDir,
    _cleanup: Containers,
}

/// `chmod mode path`: the store runs as `postgres` (uid 999 in the image), which must reach the
/// volumes.
fn chmod(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

async fn deploy_embedded(version: &str, extra_env: &[&str]) -> EmbeddedDeployed {
    docker::bytebase_embedded_images(&["3.10.0", "3.11.1"]);
    let name = format!("upshift-bbe-{}-{}", std::process::id(), free_port());
    let cleanup = kept_beside(&name);
    let data = tempfile::tempdir().expect("data dir");
    chmod(data.path(), 0o755);
    let sockets = tempfile::tempdir().expect("socket dir");
    chmod(sockets.path(), 0o1777);
    let port = free_port();
    let env_vars: Vec<String> = extra_env.iter().map(|e| e.to_string()).collect();
    seed_docker_run(
        &name,
        port,
        &[(data.path(), "/var/opt/bytebase"), (sockets.path(), "/tmp")],
        &env_vars,
        &format!("{}:{version}", docker::BYTEBASE_EMBEDDED_REPO),
    );
    wait_healthy(port).await;
    assert!(
        data.path().join("pgdata/PG_VERSION").exists(),
        "the embedded store lives on the volume"
    );
    let url = format!(
        "postgres://bb@{}:{}/bb",
        sockets.path().display().to_string().replace('/', "%2F"),
        port + 2
    );
    let client = connect(&url).await;
    upshift_sim::bytebase::seed_user_rows(&client, 40)
        .await
        .expect("seed");

    let env = Env::new();
    env.write_fleet(&format!(
        r#"
[[instance]]
name = "bb"
product = "bytebase"

[instance.db.meta]
url = "{url}"
access = ["read"]
privileged = true

[instance.service.app]
kind = "docker"
container = "{name}"
image = "{repo}:{{version}}"
health_url = "http://127.0.0.1:{port}/healthz"
stop_timeout_secs = 20

[instance.http.api]
url = "http://127.0.0.1:{port}"

[instance.files.data]
path = "{data}"
"#,
        repo = docker::BYTEBASE_EMBEDDED_REPO,
        data = data.path().display(),
    ));
    EmbeddedDeployed {
        env,
        name,
        port,
        data,
        url,
        _sockets: sockets,
        _cleanup: cleanup,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_store_container_is_upgraded_by_a_snapshot_of_its_volume() {
    if !embedded_prerequisites() {
        return;
    }
    let bb = deploy_embedded("3.10.0", &[]).await;
    let before_params = seed_parameters(&bb.name);
    let before_rows = common::table_checksums(&bb.url).await;

    let out = bb
        .env
        .upshift(&["apply", "bb", "--to", "3.11.1", "--yes", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report = json(&out);
    let steps: Vec<&str> = report["steps"]
        .as_array()
        .map(|s| s.iter().filter_map(|s| s["id"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        steps.contains(&"snapshot-data") && !steps.contains(&"backup-meta"),
        "the volume is snapshotted, never cloned: {steps:?}"
    );
    assert_eq!(report["backups"][0]["method"], "snapshot", "{report}");
    let checks = report["checks"].as_array().cloned().unwrap_or_default();
    assert!(
        !checks.is_empty() && checks.iter().all(|c| c["passed"] == true),
        "{checks:?}"
    );
    assert_eq!(served_version(bb.port).await, "3.11.1");
    assert_eq!(
        docker::inspect(&bb.name)["Config"]["Image"],
        format!("{}:3.11.1", docker::BYTEBASE_EMBEDDED_REPO)
    );
    assert_eq!(seed_parameters(&bb.name), before_params);
    assert_eq!(running_containers(&bb.name), 1);
    let after_rows = common::table_checksums(&bb.url).await;
    for (table, (rows, _)) in &before_rows {
        if table != "instance_change_history" {
            assert_eq!(
                after_rows.get(table).map(|(n, _)| n),
                Some(rows),
                "{table}: every row is kept"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_migration_on_an_embedded_store_container_restores_the_volume() {
    if !embedded_prerequisites() {
        return;
    }
    let bb = deploy_embedded("3.10.0", &["BB_SIM_FAIL_MIGRATION=3.11.1"]).await;
    let before_params = seed_parameters(&bb.name);
    let before_id = docker::inspect(&bb.name)["Id"].clone();
    let before_rows = common::table_checksums(&bb.url).await;

    let out = bb
        .env
        .upshift(&["apply", "bb", "--to", "3.11.1", "--yes", "--json"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let report = json(&out);
    assert_eq!(report["outcome"], "rolled-back", "{report}");
    let rollback: Vec<&str> = report["steps"]
        .as_array()
        .map(|s| {
            s.iter()
                .filter(|s| s["phase"] == "rollback")
                .filter_map(|s| s["id"].as_str())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        rollback.iter().any(|id| id.contains("restore")),
        "the rollback restores the snapshot: {rollback:?}"
    );

    assert_eq!(served_version(bb.port).await, "3.10.0");
    assert_eq!(
        common::table_checksums(&bb.url).await,
        before_rows,
        "every table is identical to before the upgrade"
    );
    let container = docker::inspect(&bb.name);
    assert_eq!(container["Id"], before_id, "the original container is back");
    assert_eq!(seed_parameters(&bb.name), before_params);
    assert_eq!(running_containers(&bb.name), 1);
    let parent = bb.data.path().parent().expect("parent");
    let mine = format!(
        "{}.upshift-replaced-",
        bb.data.path().file_name().expect("name").to_string_lossy()
    );
    let replaced: Vec<std::path::PathBuf> = std::fs::read_dir(parent)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with(&mine))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        replaced.len(),
        1,
        "the migrated tree is kept beside the volume for inspection"
    );
    for dir in replaced {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Docker, and PostgreSQL's server binaries to put in the image; says what is missing.
fn embedded_prerequisites() -> bool {
    if !docker::available() {
        return false;
    }
    if let Err(e) = upshift_sim::pg::find_bindir() {
        common::missing(&format!(
            "PostgreSQL's server binaries, which the embedded-store image carries: {e}"
        ));
        return false;
    }
    true
}
