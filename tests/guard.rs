//! The one guard: every audited operation is named as in the WIT (or is a documented host
//! operation), host clean-up is audited, and a denial is recorded once, by the guard.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use upshift::audit::{AuditRecord, Decision};
use upshift::caps::{CapError, EventSink, InstanceCaps, Operation};
use upshift::fleet::Fleet;
use upshift::ops::Session;
use upshift::ops::apply;

fn repo_file(path: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every function name in the WIT: imports (`name: func(`) and exports (`export name: func(`).
fn wit_functions() -> BTreeSet<String> {
    repo_file("wit/adapter.wit")
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with("///"))
        .filter_map(|l| {
            let (head, _) = l.split_once(": func(")?;
            Some(head.trim_start_matches("export ").trim().to_string())
        })
        .collect()
}

#[test]
fn every_operation_is_named_as_in_the_wit_or_is_a_documented_host_operation() {
    let wit = wit_functions();
    for name in [
        "query",
        "list-dir",
        "load-image",
        "table-exists",
        "plan-restore",
    ] {
        assert!(wit.contains(name), "the WIT parser finds `{name}`: {wit:?}");
    }
    let docs = repo_file("docs/capabilities.md");
    let host_section = docs
        .split_once("### Host operations")
        .map(|(_, rest)| rest.split("\n## ").next().unwrap_or(rest))
        .expect("docs/capabilities.md lists the host operations");
    for op in Operation::ALL {
        let name = op.name();
        if op.is_host() {
            assert!(
                host_section.contains(&format!("`{name}`")),
                "host operation `{name}` is documented in docs/capabilities.md"
            );
        } else {
            assert!(wit.contains(name), "`{name}` ({op:?}) is a WIT function");
        }
    }
    for drifted in ["list", "open", "check"] {
        assert!(
            Operation::ALL.iter().all(|op| op.name() != drifted),
            "`{drifted}` is not an operation name"
        );
    }
}

fn fleet_text(files: &Path, compose_file: &Path) -> String {
    let adapter = format!("{}/test-misbehaving.wasm", upshift::adapters::BUILT_DIR);
    format!(
        r#"
[[instance]]
name = "kept"
adapter = "{adapter}"

[instance.db.meta]
url = "postgres://postgres@127.0.0.1:1/unused"
access = ["read"]

[instance.service.app]
kind = "compose"
file = "{compose}"
service = "app"
image = "example.invalid/app:{{version}}"

[[instance]]
name = "plain"
adapter = "{adapter}"

[instance.files.data]
path = "{files}"

[instance.service.app]
kind = "process"
command = "/usr/bin/env APP_VERSION={{version}} sleep 30"
version = "1.0.0"
"#,
        files = files.display(),
        compose = compose_file.display(),
    )
}

async fn prepare(env: &common::Env, name: &str, run: &str) -> (Session, Arc<InstanceCaps>) {
    let fleet = Fleet::load(&env.fleet()).expect("fleet");
    let session = Session::open(&env.data(), EventSink::discard())
        .await
        .expect("session");
    let (_, caps) = apply::prepare(&session, fleet.instance(name).expect("instance"))
        .await
        .expect("prepare");
    caps.set_run(Some(run.into()));
    (session, caps)
}

fn audited(session: &Session, run: &str) -> Vec<AuditRecord> {
    session.audit.records_for_run(run).expect("audit")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_what_a_switch_kept_is_audited() {
    let env = common::Env::new();
    let files = env.dir.path().join("files");
    std::fs::create_dir_all(&files).expect("mkdir");
    let compose = env.dir.path().join("docker-compose.yml");
    std::fs::write(
        &compose,
        "services:\n  app:\n    image: example.invalid/app:2\n",
    )
    .expect("write");
    let kept = env.dir.path().join("docker-compose.yml.upshift-previous");
    std::fs::write(&kept, "services: {}\n").expect("write");
    env.write_fleet(&fleet_text(&files, &compose));
    let (session, caps) = prepare(&env, "kept", "finalize").await;

    let done = caps
        .service()
        .finalize("app", None)
        .await
        .expect("finalize");
    assert!(done.contains("removed"), "{done}");
    assert!(!kept.exists(), "the kept file is removed");
    let records = audited(&session, "finalize");
    assert_eq!(records.len(), 1, "one record: {records:#?}");
    let r = &records[0].event;
    assert_eq!(
        (
            r.binding.as_str(),
            r.capability.as_str(),
            r.operation.as_str()
        ),
        ("app", "service", "finalize")
    );
    assert_eq!(r.decision, Decision::Allowed);

    // A process keeps nothing: nothing is reached and nothing recorded.
    let (session, caps) = prepare(&env, "plain", "finalize-plain").await;
    assert_eq!(
        caps.service()
            .finalize("app", None)
            .await
            .expect("finalize"),
        ""
    );
    assert!(audited(&session, "finalize-plain").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_denial_is_recorded_once_by_the_guard() {
    let env = common::Env::new();
    let files = env.dir.path().join("files");
    std::fs::create_dir_all(&files).expect("mkdir");
    let compose = env.dir.path().join("docker-compose.yml");
    env.write_fleet(&fleet_text(&files, &compose));
    let (session, caps) = prepare(&env, "kept", "tx").await;

    let statements = vec![
        ("SELECT 1".to_string(), Vec::new()),
        ("INSERT INTO t VALUES (1)".to_string(), Vec::new()),
    ];
    let err = caps
        .db()
        .transaction("meta", &statements)
        .await
        .expect_err("write is not granted");
    assert!(
        matches!(&err, CapError::Denied(why) if why.contains("not granted `write`")),
        "{err:?}"
    );
    let records = audited(&session, "tx");
    assert_eq!(records.len(), 1, "one record: {records:#?}");
    let r = &records[0].event;
    assert_eq!(
        (r.binding.as_str(), r.operation.as_str()),
        ("meta", "transaction")
    );
    assert_eq!(r.decision, Decision::Denied);

    // A statement the classifier refuses is one denial too, and nothing runs.
    caps.set_run(Some("tx-refused".into()));
    let statements = vec![("SELECT pg_read_file('/etc/passwd')".to_string(), Vec::new())];
    caps.db()
        .transaction("meta", &statements)
        .await
        .expect_err("refused");
    let records = audited(&session, "tx-refused");
    assert_eq!(records.len(), 1, "one record: {records:#?}");
    assert_eq!(records[0].event.decision, Decision::Denied);
    assert_eq!(records[0].event.operation, "transaction");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_image_is_recorded_under_its_wit_name_on_both_bindings() {
    let env = common::Env::new();
    let files = env.dir.path().join("files");
    std::fs::create_dir_all(&files).expect("mkdir");
    std::fs::write(files.join("image.tar"), b"not a tar").expect("write");
    let compose = env.dir.path().join("docker-compose.yml");
    env.write_fleet(&fleet_text(&files, &compose));
    let (session, caps) = prepare(&env, "plain", "load").await;

    let err = caps
        .service()
        .load_image("app", caps.files(), "data", "image.tar")
        .await
        .expect_err("a process service has no images");
    assert!(matches!(err, CapError::Invalid(_)), "{err:?}");
    let seen: Vec<(String, String, String)> = audited(&session, "load")
        .into_iter()
        .map(|r| (r.event.binding, r.event.capability, r.event.operation))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("data".into(), "files".into(), "load-image".into()),
            ("app".into(), "service".into(), "load-image".into()),
        ]
    );
}
