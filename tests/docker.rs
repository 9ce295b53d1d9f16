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
        map.retain(|k, _| !k.starts_with("io.upshift."));
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

/// The `app` service, reached as the executor reaches it: through the guarded capability, and
/// switched and finalized as a run step is (the run journals the container a switch keeps).
struct App<'a>(RunContext<'a>);

impl<'a> App<'a> {
    fn new(
        session: &'a Session,
        caps: &std::sync::Arc<upshift::caps::InstanceCaps>,
        adapter: &'a upshift::runtime::LoadedAdapter,
        held: &'a upshift::lease::Held,
    ) -> App<'a> {
        let run_id = unique("run");
        caps.set_run(Some(run_id.clone()));
        App(RunContext {
            session,
            adapter,
            caps: caps.clone(),
            run_id,
            data_version: String::new(),
            restore_source: None,
            lease: held,
            swap_began: Default::default(),
        })
    }
    async fn inspect(&self) -> Result<upshift::caps::service::Status, upshift::caps::CapError> {
        self.0.caps.service().inspect("app", Some("test")).await
    }
    async fn stop(&self) -> Result<String, upshift::caps::CapError> {
        self.0.caps.service().stop("app", "test").await
    }
    async fn start(&self) -> Result<String, upshift::caps::CapError> {
        self.0.caps.service().start("app", "test").await
    }
    /// A plan's `service-switch` step.
    async fn switch_version(&self, version: &str) -> Result<String, String> {
        self.0
            .perform(&Action::ServiceSwitch(SwitchAction {
                binding: "app".into(),
                version: version.into(),
            }))
            .await
            .map(|r| r.summary)
    }
    /// The host's rollback switch.
    async fn roll_back_to(&self, version: &str) -> Result<String, String> {
        self.0
            .perform_rollback(
                &upshift::ops::plan::RollbackAction::Switch {
                    binding: "app".into(),
                    version: version.into(),
                },
                &[],
            )
            .await
            .map(|r| r.summary)
    }
    async fn wait_healthy(&self, timeout: Duration) -> Result<String, upshift::caps::CapError> {
        self.0
            .caps
            .service()
            .wait_healthy("app", timeout, "test")
            .await
    }
    async fn finalize(&self) -> Result<String, upshift::caps::CapError> {
        self.0.finalize("app").await
    }
    /// What the run journaled as kept.
    async fn journaled(&self) -> Vec<upshift::state::KeptRecord> {
        self.0
            .session
            .state
            .kept(&self.0.run_id)
            .await
            .expect("journal")
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
    let (session, caps, adapter) = caps_for(&env, &fleet(&name, None, None)).await;
    let held = session
        .hold_lease(&caps.caller().instance, "docker test")
        .await
        .expect("the instance's lease");
    let app = App::new(&session, &caps, &adapter, &held);
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
    // The run journaled the kept container by id; the new one carries Upshift's labels.
    let journaled = app.journaled().await;
    assert_eq!(journaled.len(), 1, "{journaled:?}");
    assert_eq!(Value::from(journaled[0].container_id.clone()), before["Id"]);
    assert_eq!(Value::from(journaled[0].replaced_by.clone()), after["Id"]);
    assert_eq!(
        after["Config"]["Labels"]["io.upshift.replaces"],
        before["Id"]
    );
    assert_eq!(
        after["Config"]["Labels"]["io.upshift.run"],
        Value::from(app.0.run_id.clone())
    );

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
    let (session, caps, adapter) = caps_for(&env, &fleet(&name, None, None)).await;
    let held = session
        .hold_lease(&caps.caller().instance, "docker test")
        .await
        .expect("the instance's lease");
    let app = App::new(&session, &caps, &adapter, &held);
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
        let held = session
            .hold_lease(&caps.caller().instance, "docker test")
            .await
            .expect("the instance's lease");
        let ctx = RunContext {
            session: &session,
            adapter: &adapter,
            caps: caps.clone(),
            run_id: "deny".into(),
            data_version: "2.2.0".into(),
            restore_source: None,
            lease: &held,
            swap_began: Default::default(),
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
    let (session, caps, adapter) = caps_for(&env, &compose_fleet).await;
    let held = session
        .hold_lease(&caps.caller().instance, "docker test")
        .await
        .expect("the instance's lease");
    let app = App::new(&session, &caps, &adapter, &held);
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

/// `docker …`, asserting success; its standard output.
fn sh(args: &[&str]) -> String {
    let out = std::process::Command::new("docker")
        .args(args)
        .output()
        .expect("docker");
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A container someone else plants under `name`: the old version's image, with their own env,
/// mount and label.
fn plant(name: &str, mount: &std::path::Path) -> String {
    sh(&[
        "create",
        "--name",
        name,
        "-e",
        "PLANTED=yes",
        "--label",
        "planted=yes",
        "-v",
        &format!("{}:/planted", mount.display()),
        &format!("{REPO}:2.2.0"),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planted_or_renamed_kept_container_is_reported_and_never_adopted() {
    if !docker::available() {
        return;
    }
    let mount = tempfile::tempdir().expect("mount");
    // How someone with Docker access tampers between the switch and the switch back.
    #[derive(Debug, Clone, Copy)]
    enum Tamper {
        /// The kept container removed, another planted under its name.
        ReplacedByAPlant,
        /// The kept container renamed away, another planted under its name.
        RenamedAndPlanted,
        /// The kept container renamed away, nothing planted.
        Renamed,
        /// The bound container (the one Upshift created) replaced by a plant.
        BoundReplaced,
    }
    for tamper in [
        Tamper::ReplacedByAPlant,
        Tamper::RenamedAndPlanted,
        Tamper::Renamed,
        Tamper::BoundReplaced,
    ] {
        let deployed = deploy("2.2.0").await;
        let name = deployed.name.clone();
        let kept_name = format!("{name}-upshift-previous");
        let moved = format!("{name}-moved");
        let _more = Containers(vec![moved.clone()]);
        let original = docker::inspect(&name)["Id"].clone();

        let env = common::Env::new();
        let (session, caps, adapter) = caps_for(&env, &fleet(&name, None, None)).await;
        let held = session
            .hold_lease(&caps.caller().instance, "docker test")
            .await
            .expect("the instance's lease");
        let app = App::new(&session, &caps, &adapter, &held);
        app.stop().await.expect("stop");
        app.switch_version("3.0.0").await.expect("switch");
        let created = docker::inspect(&name)["Id"].clone();
        assert_eq!(docker::inspect(&kept_name)["Id"], original);

        let planted = match tamper {
            Tamper::ReplacedByAPlant => {
                sh(&["rm", "-f", &kept_name]);
                Some(plant(&kept_name, mount.path()))
            }
            Tamper::RenamedAndPlanted => {
                sh(&["rename", &kept_name, &moved]);
                Some(plant(&kept_name, mount.path()))
            }
            Tamper::Renamed => {
                sh(&["rename", &kept_name, &moved]);
                None
            }
            Tamper::BoundReplaced => {
                sh(&["rename", &name, &moved]);
                Some(plant(&name, mount.path()))
            }
        };
        let bound_before = docker::inspect(&name)["Id"].clone();

        // A forward switch back and the host's rollback both refuse, naming what was found.
        for err in [
            app.switch_version("2.2.0").await.expect_err("refused"),
            app.roll_back_to("2.2.0").await.expect_err("refused"),
        ] {
            assert!(
                err.contains("switching") && err.contains("refused"),
                "{tamper:?}: {err}"
            );
            let original_short = &original.as_str().expect("id")[..12];
            assert!(
                err.contains(original_short),
                "{tamper:?}: names the kept id: {err}"
            );
            if let Some(p) = &planted {
                assert!(err.contains(&p[..12]), "{tamper:?}: names the plant: {err}");
            }
            match tamper {
                Tamper::ReplacedByAPlant => assert!(err.contains("is gone"), "{err}"),
                Tamper::RenamedAndPlanted | Tamper::Renamed => {
                    assert!(err.contains(&moved), "{tamper:?}: {err}")
                }
                Tamper::BoundReplaced => {
                    assert!(err.contains("not the container Upshift created"), "{err}")
                }
            }
        }
        // Nothing moved: the bound container is what it was, the plant was not used or removed.
        let bound = docker::inspect(&name);
        assert_eq!(bound["Id"], bound_before, "{tamper:?}");
        if let Some(p) = &planted {
            assert_eq!(
                docker::inspect(p)["Id"],
                Value::from(p.clone()),
                "{tamper:?}: the plant is left alone"
            );
        }
        if !matches!(tamper, Tamper::BoundReplaced) {
            assert_eq!(bound["Id"], created, "{tamper:?}");
            assert!(
                !bound["Config"]["Env"].to_string().contains("PLANTED"),
                "{tamper:?}: {}",
                bound["Config"]["Env"]
            );
        }
        // Finalizing removes only the journaled id, and only under the kept name.
        let finalized = app.finalize().await;
        match tamper {
            Tamper::ReplacedByAPlant => {
                assert!(
                    finalized
                        .expect("nothing to remove")
                        .contains("already gone")
                );
            }
            Tamper::RenamedAndPlanted | Tamper::Renamed => {
                let err = finalized.expect_err("renamed: left alone").to_string();
                assert!(err.contains(&moved), "{err}");
                assert_eq!(docker::inspect(&moved)["Id"], original, "not removed");
            }
            Tamper::BoundReplaced => {
                assert!(
                    finalized
                        .expect("removed")
                        .contains("removed the kept container")
                );
                assert!(!docker::exists(&kept_name));
            }
        }
        if let Some(p) = &planted {
            assert!(docker::exists(p), "{tamper:?}: the plant was not removed");
            sh(&["rm", "-f", p]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_under_the_kept_name_that_no_run_kept_is_never_adopted() {
    if !docker::available() {
        return;
    }
    // The issue's reproduction: the bound container runs 3.0.0, and someone plants a 2.2.0
    // container named `<bound>-upshift-previous` before a switch to 2.2.0.
    let deployed = deploy("3.0.0").await;
    let name = deployed.name.clone();
    let mount = tempfile::tempdir().expect("mount");
    let planted = plant(&format!("{name}-upshift-previous"), mount.path());
    let before = docker::inspect(&name);

    let env = common::Env::new();
    let (session, caps, adapter) = caps_for(&env, &fleet(&name, None, None)).await;
    let held = session
        .hold_lease(&caps.caller().instance, "docker test")
        .await
        .expect("the instance's lease");
    let app = App::new(&session, &caps, &adapter, &held);
    app.stop().await.expect("stop");
    let err = app.switch_version("2.2.0").await.expect_err("refused");
    assert!(
        err.contains("this run did not keep") && err.contains(&planted[..12]),
        "{err}"
    );
    let after = docker::inspect(&name);
    assert_eq!(
        after["Id"], before["Id"],
        "the bound container was not replaced"
    );
    assert_eq!(after["Config"], before["Config"]);
    assert_eq!(
        docker::inspect(&planted)["Id"],
        Value::from(planted.clone())
    );
    assert_eq!(
        app.finalize().await.expect("finalize"),
        "",
        "nothing journaled, nothing removed"
    );
    assert!(docker::exists(&planted));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compose_file_where_compose_could_see_another_image_is_refused() {
    if !docker::available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("docker-compose.yml");
    let env = common::Env::new();
    let compose_fleet = format!(
        "[[instance]]\nname = \"kw\"\nproduct = \"bytebase\"\n[instance.db.meta]\nurl = \"postgres://postgres@127.0.0.1:1/unused\"\n\
         [instance.http.api]\nurl = \"http://127.0.0.1:1\"\n[instance.service.app]\nkind = \"compose\"\nfile = \"{}\"\n\
         service = \"kwdb\"\nimage = \"{REPO}:{{version}}\"\n",
        file.display()
    );
    let good = format!("services:\n  kwdb:\n    image: {REPO}:2.2.0\n    network_mode: host\n");
    for (text, expected) in [
        (
            // The reproduction: the host edited the first, docker-compose used the last.
            format!("{good}    image: upshift-test/other:2.2.0\n"),
            "line 5: the key `image` is written twice",
        ),
        (
            good.replace(":2.2.0", ":${KW_TAG}"),
            "which docker-compose interpolates",
        ),
        (
            format!(
                "x-base: &base\n  image: upshift-test/other:2.2.0\n{}",
                good.replace("    network_mode", "    <<: *base\n    network_mode")
            ),
            "a merge key (`<<`)",
        ),
        (
            good.replace(
                "    network_mode: host\n",
                "    extends: { file: other.yml, service: x }\n",
            ),
            "uses `extends`",
        ),
    ] {
        std::fs::write(&file, &text).expect("compose file");
        let (session, caps, adapter) = caps_for(&env, &compose_fleet).await;
        let held = session
            .hold_lease(&caps.caller().instance, "docker test")
            .await
            .expect("the instance's lease");
        let app = App::new(&session, &caps, &adapter, &held);
        let err = app.switch_version("3.0.0").await.expect_err("refused");
        assert!(
            err.contains(&file.display().to_string())
                && err.contains(expected)
                && err.contains("Fix"),
            "{err}"
        );
        assert_eq!(
            std::fs::read_to_string(&file).expect("read"),
            text,
            "untouched"
        );
        assert!(
            !file
                .with_file_name("docker-compose.yml.upshift-previous")
                .exists()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_that_would_move_a_tag_or_name_an_ungranted_image_is_refused_before_loading() {
    if !docker::available() {
        return;
    }
    let deployed = deploy("2.2.0").await;
    let tag = format!("1.{}", std::process::id() % 100_000);
    // An image the service may not touch, and the granted repository's existing tag.
    let other = format!("upshift-test/other:{tag}");
    sh(&["tag", &format!("{REPO}:2.2.0"), &other]);
    let other_id = docker::inspect(&other)["Id"].clone();
    let existing_id = docker::inspect(&format!("{REPO}:2.2.0"))["Id"].clone();
    let loaded_id = docker::inspect(&format!("{REPO}:3.0.0"))["Id"].clone();

    // The 3.0.0 image saved, unpacked, and packed again with the names each case writes.
    let files = tempfile::tempdir().expect("files");
    let unpacked = tempfile::tempdir().expect("unpacked");
    let saved = unpacked.path().join("saved.tar");
    sh(&[
        "save",
        "-o",
        &saved.display().to_string(),
        &format!("{REPO}:3.0.0"),
    ]);
    let run = |cmd: &mut std::process::Command| {
        let out = cmd.output().expect("tar");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let layout = unpacked.path().join("layout");
    std::fs::create_dir(&layout).expect("layout");
    run(std::process::Command::new("tar")
        .arg("-xf")
        .arg(&saved)
        .arg("-C")
        .arg(&layout));
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(layout.join("manifest.json")).expect("manifest"))
            .expect("json");
    let pack = |file: &str, repo_tags: Value, index: Option<Value>| {
        let mut m = manifest.clone();
        m[0]["RepoTags"] = repo_tags;
        std::fs::write(layout.join("manifest.json"), m.to_string()).expect("manifest");
        let _ = std::fs::remove_file(layout.join("index.json"));
        let _ = std::fs::remove_file(layout.join("repositories"));
        if let Some(index) = index {
            std::fs::write(layout.join("index.json"), index.to_string()).expect("index");
        }
        run(std::process::Command::new("tar")
            .arg("-cf")
            .arg(files.path().join(file))
            .arg("-C")
            .arg(&layout)
            .arg("."));
    };
    let zero_digest = format!("sha256:{}", "0".repeat(64));
    let cases: Vec<(&str, Value, Option<Value>, &str)> = vec![
        (
            "other.tar",
            serde_json::json!([other]),
            None,
            "outside the granted repositories",
        ),
        (
            "prefixed.tar",
            serde_json::json!([format!("docker.io/{other}")]),
            None,
            "outside the granted repositories",
        ),
        (
            "library.tar",
            serde_json::json!([format!("docker.io/library/other:{tag}")]),
            None,
            "outside the granted repositories",
        ),
        (
            "upper.tar",
            serde_json::json!([other.to_uppercase()]),
            None,
            "not a valid image reference",
        ),
        (
            "digest.tar",
            serde_json::json!([format!("{other}@{zero_digest}")]),
            None,
            "outside the granted repositories",
        ),
        (
            "index-only.tar",
            Value::Null,
            Some(serde_json::json!({"schemaVersion": 2, "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": zero_digest, "size": 1,
                "annotations": {"org.opencontainers.image.ref.name": other}
            }]})),
            "outside the granted repositories",
        ),
        ("untagged.tar", Value::Null, None, "names no image"),
        (
            "moves.tar",
            serde_json::json!([format!("{REPO}:2.2.0")]),
            None,
            "already exists on this engine",
        ),
    ];
    for (file, repo_tags, index, _) in &cases {
        pack(file, repo_tags.clone(), index.clone());
    }
    std::fs::write(files.path().join("not-a-tar.tar"), b"hello").expect("write");

    let adapter = format!("{}/test-misbehaving.wasm", upshift::adapters::BUILT_DIR);
    let env = common::Env::new();
    let (session, caps, adapter) = caps_for(
        &env,
        &format!(
            "[[instance]]\nname = \"kw\"\nadapter = \"{adapter}\"\n[instance.files.data]\npath = \"{}\"\n\
             [instance.service.app]\nkind = \"docker\"\ncontainer = \"{}\"\nimage = \"{REPO}:{{version}}\"\n",
            files.path().display(),
            deployed.name
        ),
    )
    .await;
    caps.set_run(Some("loads".into()));
    let load = |file: String| {
        let (session, caps, adapter) = (&session, caps.clone(), &adapter);
        async move {
            session
                .runtime
                .call(
                    adapter,
                    Some(caps),
                    "run-step",
                    session.runtime.deadlines().live,
                    async |a, s| a.call_run_step(s, "service-load", &file).await,
                )
                .await
                .expect("no trap")
                .expect("answers")
                .summary
        }
    };
    let mut expected: Vec<(String, &str)> = cases
        .iter()
        .map(|(file, _, _, why)| (file.to_string(), *why))
        .collect();
    expected.push(("not-a-tar.tar".into(), "not"));
    for (file, why) in &expected {
        let answer = load(file.clone()).await;
        assert!(
            answer.contains("denied") && answer.contains(why),
            "{file}: {answer}"
        );
        assert_eq!(
            docker::inspect(&other)["Id"],
            other_id,
            "{file}: `{other}` survives"
        );
        assert_eq!(
            docker::inspect(&format!("{REPO}:2.2.0"))["Id"],
            existing_id,
            "{file}: the granted tag did not move"
        );
    }
    let denials = session
        .audit
        .records_for_run("loads")
        .expect("audit")
        .into_iter()
        .filter(|r| r.event.decision == Decision::Denied)
        .count();
    assert_eq!(denials, expected.len(), "each denial is audited");

    // A granted name, however written, loads; reloading the same image under an existing tag
    // moves nothing and is allowed.
    let new_tag = format!("{REPO}:8.{}", std::process::id() % 100_000);
    pack(
        "granted.tar",
        serde_json::json!([format!("docker.io/{new_tag}"), format!("{REPO}:3.0.0")]),
        None,
    );
    let answer = load("granted.tar".into()).await;
    assert!(answer.starts_with("ok:"), "{answer}");
    assert_eq!(docker::inspect(&new_tag)["Id"], loaded_id);
    sh(&["rmi", &new_tag]);
    sh(&["rmi", &other]);
}
