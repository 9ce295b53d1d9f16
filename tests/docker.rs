//! The `docker` service backend on the real engine: recreating a container with a new image
//! keeps every other parameter, a failing image puts the original container back exactly as it
//! was, and ungranted switches and images are denied and audited.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::Value;
use upshift::audit::Decision;
use upshift::caps::EventSink;
use upshift::fleet::Fleet;
use upshift::ops::Session;
use upshift::ops::apply;
use upshift::ops::executor::RunContext;
use upshift::runtime::bindings::{Action, SwitchAction};

use common::docker::{self, ComposeDown, Containers, REPO};

static NEXT: AtomicU32 = AtomicU32::new(0);

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A fleet binding the Bytebase adapter's `app` to a container (its other bindings are unused).
fn fleet(container: &str, images: Option<&str>, access: Option<&str>) -> String {
    format!(
        r#"
[[instance]]
name = "kw"
product = "bytebase"

[instance.db.meta]
url = "postgres://postgres@127.0.0.1:1/unused"

[instance.http.api]
url = "http://127.0.0.1:1"

[instance.service.app]
kind = "docker"
container = "{container}"
image = "{REPO}:{{version}}"
stop_timeout_secs = 5
{images}
{access}
"#,
        images = images
            .map(|i| format!("images = [\"{i}\"]"))
            .unwrap_or_default(),
        access = access.map(|a| format!("access = {a}")).unwrap_or_default(),
    )
}

async fn version_served(port: u16) -> String {
    for _ in 0..50 {
        if let Ok(r) = reqwest::get(format!("http://127.0.0.1:{port}/version")).await {
            return r.text().await.unwrap_or_default();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    String::new()
}

/// The parts of `docker inspect` the operator set: everything but the image and what the image
/// itself supplies.
fn operator_view(c: &Value) -> Value {
    let image_env = |v: &str| v.starts_with("SVC_VERSION=") || v.starts_with("PATH=");
    let env: Vec<&Value> = c["Config"]["Env"]
        .as_array()
        .map(|e| {
            e.iter()
                .filter(|v| !v.as_str().is_some_and(image_env))
                .collect()
        })
        .unwrap_or_default();
    let mut labels = c["Config"]["Labels"].clone();
    if let Some(map) = labels.as_object_mut() {
        map.remove("org.opencontainers.image.version");
    }
    serde_json::json!({
        "HostConfig": c["HostConfig"],
        "Mounts": c["Mounts"],
        "Env": env,
        "Cmd": c["Config"]["Cmd"],
        "Entrypoint": c["Config"]["Entrypoint"],
        "WorkingDir": c["Config"]["WorkingDir"],
        "User": c["Config"]["User"],
        "Labels": labels,
        "Healthcheck": c["Config"]["Healthcheck"],
        "StopTimeout": c["Config"]["StopTimeout"],
        "Name": c["Name"],
    })
}

/// A KWDB-like container running `version`, removed (with what Upshift kept beside it) on drop.
struct Deployed {
    name: String,
    port: u16,
    _cleanup: Containers,
    _store: tempfile::TempDir,
}

async fn deploy(version: &str) -> Deployed {
    docker::images();
    let name = unique("upshift-kwdb");
    let cleanup = Containers(vec![
        name.clone(),
        format!("{name}-upshift-previous"),
        format!("{name}-upshift-next"),
    ]);
    let store = tempfile::tempdir().expect("store");
    let port = common::free_port();
    docker::run_kwdb_like(&name, port, store.path(), version);
    assert_eq!(version_served(port).await, version);
    Deployed {
        name,
        port,
        _cleanup: cleanup,
        _store: store,
    }
}

/// The instance's caps for a fleet text, with the session they audit to.
async fn caps_for(
    env: &common::Env,
    fleet_text: &str,
) -> (
    Session,
    std::sync::Arc<upshift::caps::InstanceCaps>,
    upshift::runtime::LoadedAdapter,
) {
    env.write_fleet(fleet_text);
    let fleet = Fleet::load(&env.fleet()).expect("fleet");
    let session = Session::open(&env.data(), EventSink::discard())
        .await
        .expect("session");
    let (adapter, caps) = apply::prepare(&session, fleet.instance("kw").expect("kw"))
        .await
        .expect("prepare");
    (session, caps, adapter)
}

/// The `app` service, reached as the executor reaches it: through the guarded capability.
struct App<'a>(&'a upshift::caps::InstanceCaps);

impl App<'_> {
    async fn inspect(&self) -> Result<upshift::caps::service::Status, upshift::caps::CapError> {
        self.0.service().inspect("app", Some("test")).await
    }
    async fn stop(&self) -> Result<String, upshift::caps::CapError> {
        self.0.service().stop("app", "test").await
    }
    async fn start(&self) -> Result<String, upshift::caps::CapError> {
        self.0.service().start("app", "test").await
    }
    async fn switch_version(&self, version: &str) -> Result<String, upshift::caps::CapError> {
        self.0
            .service()
            .switch_version("app", version, "test")
            .await
    }
    async fn wait_healthy(&self, timeout: Duration) -> Result<String, upshift::caps::CapError> {
        self.0.service().wait_healthy("app", timeout, "test").await
    }
    async fn finalize(&self) -> Result<String, upshift::caps::CapError> {
        self.0.service().finalize("app").await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recreating_with_a_new_image_keeps_every_other_parameter() {
    if !docker::available() {
        return;
    }
    let deployed = deploy("2.2.0").await;
    let (name, port) = (deployed.name.clone(), deployed.port);
    let before = docker::inspect(&name);

    let env = common::Env::new();
    let (_session, caps, _) = caps_for(&env, &fleet(&name, None, None)).await;
    let app = App(&caps);
    assert_eq!(app.inspect().await.expect("inspect").version, "2.2.0");
    app.stop().await.expect("stop");
    let switched = app.switch_version("3.0.0").await.expect("switch");
    assert!(switched.contains("kept as"), "{switched}");
    app.start().await.expect("start");
    app.wait_healthy(Duration::from_secs(30))
        .await
        .expect("healthy (the image's healthcheck)");
    assert_eq!(
        version_served(port).await,
        "3.0.0",
        "the new image's own defaults apply"
    );

    let after = docker::inspect(&name);
    assert_eq!(after["Config"]["Image"], format!("{REPO}:3.0.0"));
    assert_ne!(after["Id"], before["Id"]);
    assert_eq!(
        operator_view(&after),
        operator_view(&before),
        "every parameter but the image is unchanged"
    );
    assert!(
        after["Config"]["Env"]
            .as_array()
            .expect("env")
            .contains(&Value::from("KW_OPERATOR=set-by-operator")),
        "{}",
        after["Config"]["Env"]
    );
    let kept = docker::inspect(&format!("{name}-upshift-previous"));
    assert_eq!(
        kept["Id"], before["Id"],
        "the old container is kept until verification"
    );
    assert_eq!(kept["State"]["Running"], false);

    let done = app.finalize().await.expect("finalize");
    assert!(done.contains("removed"), "{done}");
    assert!(!docker::exists(&format!("{name}-upshift-previous")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_that_fails_to_start_puts_the_old_container_back_unchanged() {
    if !docker::available() {
        return;
    }
    let deployed = deploy("2.2.0").await;
    let (name, port) = (deployed.name.clone(), deployed.port);
    let before = docker::inspect(&name);

    let env = common::Env::new();
    let (_session, caps, _) = caps_for(&env, &fleet(&name, None, None)).await;
    let app = App(&caps);
    app.stop().await.expect("stop");
    app.switch_version("9.9.9")
        .await
        .expect("switch to the broken image");
    let err = app
        .start()
        .await
        .expect_err("the broken image exits at once");
    assert!(
        err.to_string().contains("cannot start (SVC_FAIL is set)"),
        "{err}"
    );

    app.stop().await.expect("stop");
    let back = app.switch_version("2.2.0").await.expect("switch back");
    assert!(back.contains("put back the kept container"), "{back}");
    app.start().await.expect("start");
    app.wait_healthy(Duration::from_secs(30))
        .await
        .expect("healthy");
    assert_eq!(version_served(port).await, "2.2.0");
    let after = docker::inspect(&name);
    assert_eq!(after["Id"], before["Id"], "the very same container is back");
    assert_eq!(after["Config"], before["Config"]);
    assert_eq!(after["HostConfig"], before["HostConfig"]);
    assert!(!docker::exists(&format!("{name}-upshift-previous")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ungranted_switches_and_images_are_denied_and_audited() {
    if !docker::available() {
        return;
    }
    let deployed = deploy("2.2.0").await;
    let (name, port) = (deployed.name.clone(), deployed.port);

    let switch = |version: &str| {
        Action::ServiceSwitch(SwitchAction {
            binding: "app".into(),
            version: version.into(),
        })
    };
    for (images, access, version, reason) in [
        (
            Some("upshift-test/other"),
            None,
            "3.0.0",
            "image repository `upshift-test/kwdb` is not granted",
        ),
        (
            None,
            Some("[\"inspect\", \"control\"]"),
            "3.0.0",
            "is not granted `switch-version`",
        ),
        (
            None,
            None,
            "3.0.0;rm",
            "`3.0.0;rm` is not a product version",
        ),
    ] {
        let env = common::Env::new();
        let (session, caps, adapter) = caps_for(&env, &fleet(&name, images, access)).await;
        caps.set_run(Some("deny".into()));
        let ctx = RunContext {
            session: &session,
            adapter: &adapter,
            caps: caps.clone(),
            run_id: "deny".into(),
            data_version: "2.2.0".into(),
            restore_source: None,
            lease: None,
        };
        let err = ctx.perform(&switch(version)).await.expect_err("denied");
        assert!(err.contains(reason), "{err}");
        let records = session.audit.records_for_run("deny").expect("audit");
        let denied = records
            .iter()
            .find(|r| r.event.binding == "app" && r.event.decision == Decision::Denied)
            .unwrap_or_else(|| panic!("the denial is audited: {records:?}"));
        assert!(
            denied
                .event
                .reason
                .as_deref()
                .unwrap_or("")
                .contains(reason),
            "{denied:?}"
        );
    }
    assert_eq!(
        version_served(port).await,
        "2.2.0",
        "the container was never touched"
    );
    assert_eq!(
        docker::inspect(&name)["Config"]["Image"],
        format!("{REPO}:2.2.0")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compose_service_changes_only_its_image_and_comes_back_byte_for_byte() {
    if !docker::available() {
        return;
    }
    docker::images();
    let dir = tempfile::Builder::new()
        .prefix("upshiftcompose")
        .tempdir()
        .expect("tempdir");
    let file = dir.path().join("docker-compose.yml");
    let port = common::free_port();
    let original = format!(
        "# KWDB for the data team -- keep this comment\nversion: \"2.4\"\nservices:\n  # the database\n  kwdb:\n    image: {REPO}:2.2.0   # pinned by ops\n    network_mode: host\n    working_dir: /kaiwudb/bin\n    environment:\n      - SVC_PORT={port}\n"
    );
    std::fs::write(&file, &original).expect("compose file");
    let _down = ComposeDown(file.clone());
    let up = std::process::Command::new("docker-compose")
        .arg("-f")
        .arg(&file)
        .args(["up", "-d", "kwdb"])
        .output()
        .expect("docker-compose");
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    assert_eq!(version_served(port).await, "2.2.0");

    let env = common::Env::new();
    let compose_fleet = format!(
        r#"
[[instance]]
name = "kw"
product = "bytebase"

[instance.db.meta]
url = "postgres://postgres@127.0.0.1:1/unused"

[instance.http.api]
url = "http://127.0.0.1:1"

[instance.service.app]
kind = "compose"
file = "{}"
service = "kwdb"
image = "{REPO}:{{version}}"
stop_timeout_secs = 2
"#,
        file.display()
    );
    let (_session, caps, _) = caps_for(&env, &compose_fleet).await;
    let app = App(&caps);
    let status = app.inspect().await.expect("inspect");
    assert!(status.running && status.version == "2.2.0", "{status:?}");

    app.stop().await.expect("stop");
    app.switch_version("3.0.0").await.expect("switch");
    assert_eq!(
        std::fs::read_to_string(&file).expect("read"),
        original.replace(&format!("{REPO}:2.2.0"), &format!("{REPO}:3.0.0")),
        "only the image changed; comments and layout are the operator's"
    );
    app.start().await.expect("start");
    app.wait_healthy(Duration::from_secs(30))
        .await
        .expect("healthy");
    assert_eq!(version_served(port).await, "3.0.0");

    app.stop().await.expect("stop");
    app.switch_version("2.2.0").await.expect("switch back");
    assert_eq!(
        std::fs::read_to_string(&file).expect("read"),
        original,
        "byte for byte"
    );
    app.start().await.expect("start");
    assert_eq!(version_served(port).await, "2.2.0");

    app.stop().await.expect("stop");
    app.switch_version("9.9.9")
        .await
        .expect("switch to the broken image");
    let err = app
        .start()
        .await
        .expect_err("the broken image does not stay up");
    assert!(err.to_string().contains("did not stay up"), "{err}");
    app.switch_version("2.2.0").await.expect("switch back");
    app.start().await.expect("start");
    app.wait_healthy(Duration::from_secs(30))
        .await
        .expect("healthy");
    assert_eq!(version_served(port).await, "2.2.0");
    assert_eq!(std::fs::read_to_string(&file).expect("read"), original);
    let kept = file.with_file_name("docker-compose.yml.upshift-previous");
    assert!(!kept.exists(), "putting the previous file back consumed it");

    app.stop().await.expect("stop");
    app.switch_version("3.0.0").await.expect("switch");
    assert_eq!(
        std::fs::read_to_string(&kept).expect("kept"),
        original,
        "kept until verified"
    );
    app.finalize().await.expect("finalize");
    assert!(!kept.exists(), "dropped once verified");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_load_from_a_tar_in_a_bound_directory_only_when_granted() {
    if !docker::available() {
        return;
    }
    let deployed = deploy("2.2.0").await;
    let files = tempfile::tempdir().expect("files");
    let tag = format!("7.7.{}", std::process::id() % 1000);
    let image = format!("{REPO}:{tag}");
    let sh = |args: &[&str]| {
        let out = std::process::Command::new("docker")
            .args(args)
            .output()
            .expect("docker");
        assert!(
            out.status.success(),
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    sh(&["tag", &format!("{REPO}:3.0.0"), &image]);
    sh(&[
        "save",
        "-o",
        &files.path().join("kwdb.tar").display().to_string(),
        &image,
    ]);
    sh(&["rmi", &image]);
    std::fs::write(
        files.path().parent().expect("parent").join("outside.tar"),
        b"x",
    )
    .ok();

    let adapter = format!("{}/test-misbehaving.wasm", upshift::adapters::BUILT_DIR);
    let fleet_text = |images: &str| {
        format!(
            "[[instance]]\nname = \"kw\"\nadapter = \"{adapter}\"\n[instance.files.data]\npath = \"{}\"\n\
             [instance.service.app]\nkind = \"docker\"\ncontainer = \"{}\"\nimage = \"{REPO}:{{version}}\"\nimages = [\"{images}\"]\n",
            files.path().display(),
            deployed.name
        )
    };
    let env = common::Env::new();
    let (session, caps, adapter) = caps_for(&env, &fleet_text(REPO)).await;
    let run = |name: &'static str, payload: String| {
        let (session, caps, adapter) = (&session, caps.clone(), &adapter);
        async move {
            session
                .runtime
                .call(
                    adapter,
                    Some(caps),
                    "run-step",
                    session.runtime.deadlines().live,
                    async |a, s| a.call_run_step(s, name, &payload).await,
                )
                .await
                .expect("no trap")
                .expect("answers")
                .summary
        }
    };
    assert_eq!(run("image-present", tag.clone()).await, "ok: false");
    let loaded = run("service-load", "kwdb.tar".into()).await;
    assert!(
        loaded.starts_with("ok:") && loaded.contains(&image),
        "{loaded}"
    );
    assert_eq!(run("image-present", tag.clone()).await, "ok: true");
    let escape = run("service-load", "../outside.tar".into()).await;
    assert!(
        escape.contains("denied") && escape.contains("leaves the bound directory"),
        "{escape}"
    );

    // A tar holding an image outside the granted repositories is undone and denied.
    sh(&["rmi", &image]);
    let env = common::Env::new();
    let (session, caps, adapter) = caps_for(&env, &fleet_text("upshift-test/other")).await;
    let denied = session
        .runtime
        .call(
            &adapter,
            Some(caps),
            "run-step",
            session.runtime.deadlines().live,
            async |a, s| a.call_run_step(s, "service-load", "kwdb.tar").await,
        )
        .await
        .expect("no trap")
        .expect("answers")
        .summary;
    assert!(
        denied.contains("outside the granted repositories"),
        "{denied}"
    );
    let gone = std::process::Command::new("docker")
        .args(["inspect", &image])
        .output()
        .expect("docker");
    assert!(
        !gone.status.success(),
        "the ungranted image was removed again"
    );
}
