//! Every capability passes a grant check and is audited, allowed or denied. A real test adapter
//! (tests/adapters/misbehaving) makes one call per step; the tests check the answer it got and
//! the audit record the host wrote.

mod common;

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};

use upshift::audit::{AuditRecord, Decision};
use upshift::caps::db::DbBackend;
use upshift::caps::{Event, EventSink, InstanceCaps};
use upshift::fleet::Fleet;
use upshift::ops::Session;
use upshift::ops::apply;
use upshift::runtime::LoadedAdapter;
use upshift::runtime::bindings::Detection;

/// A loopback HTTP server answering `200 OK` to a bounded number of requests.
fn tiny_http_server() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(50) {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nOK");
        }
    });
    port
}

fn fleet_text(db_url: &str, files: &std::path::Path, http_port: u16) -> String {
    let adapter = format!("{}/test-misbehaving.wasm", upshift::adapters::BUILT_DIR);
    format!(
        r#"
[[instance]]
name = "granted"
adapter = "{adapter}"

[instance.db.meta]
url = "{db_url}"
access = ["read"]

[instance.files.data]
path = "{files}"

[instance.service.app]
kind = "process"
command = "/usr/bin/env APP_VERSION={{version}} sleep 30"
version = "1.0.0"

[instance.http.api]
url = "http://127.0.0.1:{http_port}"

[[instance]]
name = "unbound"
adapter = "{adapter}"
"#,
        files = files.display()
    )
}

async fn step(
    session: &Session,
    adapter: &LoadedAdapter,
    caps: &Arc<InstanceCaps>,
    name: &str,
) -> String {
    let name = name.to_string();
    session
        .runtime
        .call(
            adapter,
            Some(caps.clone()),
            "run-step",
            session.runtime.deadlines().live,
            async |a, s| a.call_run_step(s, &name, "").await,
        )
        .await
        .expect("no trap")
        .expect("step answers")
        .summary
}

fn find<'a>(
    records: &'a [AuditRecord],
    binding: &str,
    operation: &str,
    decision: Decision,
) -> Option<&'a AuditRecord> {
    records.iter().find(|r| {
        r.event.binding == binding && r.event.operation == operation && r.event.decision == decision
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_capability_is_checked_and_audited() {
    let Some(pg) = common::pg() else { return };
    let (_, db_url) = pg.fresh_db_as("caps", "").await;
    let env = common::Env::new();
    let files = env.dir.path().join("files");
    std::fs::create_dir_all(&files).expect("mkdir");
    std::fs::write(files.join("hello.txt"), b"hello").expect("write");
    std::fs::write(env.dir.path().join("outside.txt"), b"secret").expect("write");
    env.write_fleet(&fleet_text(&db_url, &files, tiny_http_server()));
    let fleet = Fleet::load(&env.fleet()).expect("fleet");
    let session = Session::open(&env.data(), EventSink::discard())
        .await
        .expect("session");

    let (adapter, caps) = apply::prepare(&session, fleet.instance("granted").expect("instance"))
        .await
        .expect("prepare");
    caps.set_run(Some("caps-granted".into()));
    let expectations: &[(&str, &str)] = &[
        ("db-read", "ok: 1"),
        (
            "db-write",
            "error: denied: binding `meta` is not granted `write` (granted: read)",
        ),
        (
            "db-ddl",
            "error: denied: binding `meta` is not granted `ddl` (granted: read)",
        ),
        (
            "db-outside",
            "error: denied: function `pg_read_file` is not allowed",
        ),
        ("files-read", "ok: 5"),
        (
            "files-write",
            "error: denied: binding `data` is not granted `write`",
        ),
        (
            "files-escape",
            "error: denied: cannot read `../outside.txt`: the path leaves the bound directory",
        ),
        ("service-inspect", "ok: false"),
        ("http-get", "ok: 200"),
        (
            "http-post",
            "error: denied: binding `api` is not granted `write`",
        ),
        (
            "undeclared",
            "error: unknown binding: binding `other` is not declared by the adapter",
        ),
    ];
    for (name, expected) in expectations {
        let got = step(&session, &adapter, &caps, name).await;
        assert!(
            got.starts_with(expected),
            "{name}: got `{got}`, expected `{expected}…`"
        );
    }
    assert_eq!(
        std::fs::read(files.join("hello.txt")).expect("read"),
        b"hello",
        "nothing was written"
    );

    let records = session
        .audit
        .records_for_run("caps-granted")
        .expect("audit");
    for (binding, operation) in [
        ("meta", "query"),
        ("data", "read"),
        ("app", "inspect"),
        ("api", "request"),
    ] {
        let r = find(&records, binding, operation, Decision::Allowed)
            .unwrap_or_else(|| panic!("allowed {binding}/{operation} is audited"));
        assert_eq!(r.event.adapter_digest, adapter.digest);
        assert_eq!(r.event.instance, "granted");
    }
    for (binding, operation, reason) in [
        ("meta", "execute", "not granted `write`"),
        ("meta", "query", "pg_read_file"),
        ("data", "write", "not granted `write`"),
        ("api", "request", "not granted `write`"),
        ("other", "query", "not declared"),
    ] {
        let r = find(&records, binding, operation, Decision::Denied)
            .unwrap_or_else(|| panic!("denied {binding}/{operation} is audited: {records:#?}"));
        assert!(
            r.event.reason.as_deref().unwrap_or("").contains(reason),
            "{r:?}"
        );
    }
    let escape = records
        .iter()
        .find(|r| r.event.binding == "data" && r.event.detail.as_deref() == Some("../outside.txt"))
        .expect("the escape attempt is audited");
    assert_eq!(escape.event.decision, Decision::Denied, "{escape:?}");
    assert!(
        escape
            .event
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("leaves the bound directory"),
        "{escape:?}"
    );

    // Optional bindings left unbound answer `denied` and are audited as `unbound`: nothing was
    // reached, and nothing granted was refused.
    let (adapter, caps) = apply::prepare(&session, fleet.instance("unbound").expect("instance"))
        .await
        .expect("prepare");
    caps.set_run(Some("caps-unbound".into()));
    for (name, binding) in [
        ("db-read", "meta"),
        ("files-read", "data"),
        ("service-inspect", "app"),
        ("http-get", "api"),
    ] {
        let got = step(&session, &adapter, &caps, name).await;
        assert_eq!(
            got,
            format!("error: denied: binding `{binding}` is not bound for this instance"),
            "{name}"
        );
    }
    let records = session
        .audit
        .records_for_run("caps-unbound")
        .expect("audit");
    assert_eq!(
        records
            .iter()
            .filter(|r| r.event.decision == Decision::Unbound
                && r.event
                    .reason
                    .as_deref()
                    .is_some_and(|why| why.contains("is not bound")))
            .count(),
        4
    );

    let report = upshift::audit::verify(session.audit.path()).expect("verify");
    assert!(report.first_problem.is_none(), "chain intact");
    assert_eq!(report.records, 15, "one record per call");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_flood_is_capped_and_audited() {
    let env = common::Env::new();
    let adapter_path = format!("{}/test-misbehaving.wasm", upshift::adapters::BUILT_DIR);
    env.write_fleet(&format!(
        "[[instance]]\nname = \"flood\"\nadapter = \"{adapter_path}\"\n"
    ));
    let lines = Arc::new(Mutex::new(0usize));
    let counter = lines.clone();
    let sink = EventSink::new(move |e| {
        if let Event::Log { .. } = e
            && let Ok(mut n) = counter.lock()
        {
            *n += 1;
        }
    });
    let session = Session::open(&env.data(), sink).await.expect("session");
    let fleet = Fleet::load(&env.fleet()).expect("fleet");
    let (adapter, caps) = apply::prepare(&session, fleet.instance("flood").expect("instance"))
        .await
        .expect("prepare");
    caps.set_run(Some("flood".into()));
    let detection = Detection {
        version: "1.0.0".into(),
        facts: vec![],
    };
    let refusal = session
        .runtime
        .call(
            &adapter,
            Some(caps.clone()),
            "plan",
            session.runtime.deadlines().pure,
            async |a, s| a.call_plan(s, &detection, "flood").await,
        )
        .await
        .expect("no trap")
        .expect_err("refuses after flooding");
    assert_eq!(refusal.rule, "flood");
    assert_eq!(
        *lines.lock().expect("lock"),
        1_000,
        "exactly the cap is delivered"
    );
    let records = session.audit.records_for_run("flood").expect("audit");
    let denied: Vec<_> = records
        .iter()
        .filter(|r| r.event.decision == Decision::Denied)
        .collect();
    assert_eq!(
        denied.len(),
        1,
        "one denial for the whole flood: {denied:?}"
    );
    assert!(
        denied[0]
            .event
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("1000")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_snapshots_are_granted_audited_and_rolled_back() {
    use upshift::ops::executor::RunContext;
    use upshift::ops::plan::RollbackAction;
    use upshift::runtime::bindings::Action;

    let env = common::Env::new();
    let files = env.dir.path().join("app-data");
    std::fs::create_dir_all(files.join("conf")).expect("mkdir");
    std::fs::write(files.join(".env"), b"ENCRYPTION_SECRET=keep-me\n").expect("write");
    std::fs::write(files.join("conf/app.yml"), b"a: 1\n").expect("write");
    let adapter_path = format!("{}/test-misbehaving.wasm", upshift::adapters::BUILT_DIR);
    let fleet_text = |access: &str| {
        format!(
            "[[instance]]\nname = \"snap\"\nadapter = \"{adapter_path}\"\n[instance.files.data]\npath = \"{}\"\n{access}\n",
            files.display()
        )
    };
    env.write_fleet(&fleet_text(""));
    let fleet = Fleet::load(&env.fleet()).expect("fleet");
    let session = Session::open(&env.data(), EventSink::discard())
        .await
        .expect("session");
    let (adapter, caps) = apply::prepare(&session, fleet.instance("snap").expect("snap"))
        .await
        .expect("prepare");
    caps.set_run(Some("snap-run".into()));
    let held = session
        .hold_lease("snap", "snap-run")
        .await
        .expect("the instance's lease");
    let ctx = RunContext {
        session: &session,
        adapter: &adapter,
        caps: caps.clone(),
        run_id: "snap-run".into(),
        data_version: "1.0.0".into(),
        restore_source: None,
        lease: &held,
        swap_began: Default::default(),
    };
    let taken = ctx
        .perform(&Action::FilesSnapshot("data".into()))
        .await
        .expect("snapshot");
    let backup = taken.backup.expect("catalogued");
    assert_eq!(backup.method, "snapshot");

    std::fs::write(files.join(".env"), b"ENCRYPTION_SECRET=lost\n").expect("damage");
    std::fs::remove_file(files.join("conf/app.yml")).expect("damage");
    let restored = ctx
        .perform_rollback(
            &RollbackAction::RestoreFiles {
                binding: "data".into(),
                from_step: "snapshot-data".into(),
                backup_id: Some(backup.id.clone()),
            },
            &[("snapshot-data".into(), backup.clone())],
        )
        .await
        .expect("restore");
    assert!(
        restored.summary.contains("replaced tree is kept"),
        "{}",
        restored.summary
    );
    assert_eq!(
        std::fs::read(files.join(".env")).expect("read"),
        b"ENCRYPTION_SECRET=keep-me\n"
    );
    assert_eq!(
        std::fs::read(files.join("conf/app.yml")).expect("read"),
        b"a: 1\n"
    );
    let records = session.audit.records_for_run("snap-run").expect("audit");
    for op in ["snapshot", "restore"] {
        assert!(
            records.iter().any(|r| r.event.binding == "data"
                && r.event.operation == op
                && r.event.decision == Decision::Allowed),
            "{op} audited: {records:?}"
        );
    }

    // Narrowed to read, the same step is denied and audited.
    env.write_fleet(&fleet_text("access = [\"read\"]"));
    let fleet = Fleet::load(&env.fleet()).expect("fleet");
    let (adapter, caps) = apply::prepare(&session, fleet.instance("snap").expect("snap"))
        .await
        .expect("prepare");
    caps.set_run(Some("snap-denied".into()));
    let ctx = RunContext {
        session: &session,
        adapter: &adapter,
        caps: caps.clone(),
        run_id: "snap-denied".into(),
        data_version: "1.0.0".into(),
        restore_source: None,
        lease: &held,
        swap_began: Default::default(),
    };
    let err = ctx
        .perform(&Action::FilesSnapshot("data".into()))
        .await
        .expect_err("denied");
    assert!(err.contains("not granted `snapshot`"), "{err}");
    let records = session.audit.records_for_run("snap-denied").expect("audit");
    assert!(
        records
            .iter()
            .any(|r| r.event.decision == Decision::Denied && r.event.operation == "snapshot")
    );
}

/// A manifest's tables: `(name, rows, checksum)` each.
fn manifest_tables(
    tables: &[(&str, i64, &str)],
) -> std::collections::BTreeMap<String, upshift::caps::backup::manifest::TableFingerprint> {
    tables
        .iter()
        .map(|&(name, rows, checksum)| {
            (
                name.to_string(),
                upshift::caps::backup::manifest::TableFingerprint {
                    rows,
                    checksum: checksum.to_string(),
                },
            )
        })
        .collect()
}

/// A table's checksum does not depend on the order its rows are stored in, changes when one
/// value changes or moves to another row, falls back to md5 where a column type has no hash
/// function, and an older manifest's checksums are met with the method that wrote them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_checksums_ignore_row_order_and_read_old_manifests() {
    let Some(pg) = common::pg() else { return };
    let (name, url) = pg.fresh_db("checksum").await;
    let client = common::connect(&url).await;
    client
        .batch_execute(
            "CREATE TABLE a (id int PRIMARY KEY, note text, at timestamptz);
             CREATE TABLE b (id int PRIMARY KEY, note text, at timestamptz);
             CREATE TABLE swapped (id int PRIMARY KEY, note text, at timestamptz);
             CREATE TABLE empty (id int);
             CREATE TABLE docs (id int, doc json);
             INSERT INTO a SELECT i, 'row ' || i, '2026-01-01'::timestamptz + i * interval '1 min'
               FROM generate_series(1, 5000) i;
             INSERT INTO b SELECT i, 'row ' || i, '2026-01-01'::timestamptz + i * interval '1 min'
               FROM generate_series(5000, 1, -1) i;
             INSERT INTO swapped SELECT * FROM a;
             UPDATE swapped SET note = CASE id WHEN 1 THEN 'row 2' ELSE 'row 1' END
               WHERE id IN (1, 2);
             INSERT INTO docs SELECT i, json_build_object('n', i) FROM generate_series(1, 10) i;",
        )
        .await
        .expect("seed");
    let db = DbBackend::new(&url).expect("backend");
    let now = db.fingerprint_database(&name).await.expect("fingerprint");
    let (a, b) = (&now["public.a"], &now["public.b"]);
    assert_eq!((a.rows, b.rows), (5000, 5000));
    assert!(a.checksum.starts_with("hashsum:"), "{}", a.checksum);
    assert_eq!(a.checksum, b.checksum, "same rows stored in another order");
    assert_ne!(
        now["public.swapped"].checksum, a.checksum,
        "two values swapped between rows: every column holds the same values, the rows differ"
    );
    assert_eq!(now["public.empty"].checksum, "hashsum:0");
    let docs = &now["public.docs"];
    assert!(
        docs.checksum.starts_with("md5sum:") && docs.rows == 10,
        "json has no hash function, so md5 of the row text: {docs:?}"
    );

    client
        .batch_execute("UPDATE b SET note = 'row 2500!' WHERE id = 2500")
        .await
        .expect("change one value");
    let changed = db.fingerprint_database(&name).await.expect("fingerprint");
    assert_ne!(changed["public.b"].checksum, a.checksum);
    assert_eq!(changed["public.a"].checksum, a.checksum);
    assert_eq!(changed["public.docs"].checksum, docs.checksum);

    // A manifest of the version before `hashsum:` holds `md5sum:` for every table.
    let md5sum: String = client
        .query_one(
            "SELECT 'md5sum:' || sum(('x' || substr(h, 1, 16))::bit(64)::bigint::numeric) || ':' \
             || sum(('x' || substr(h, 17, 16))::bit(64)::bigint::numeric) \
             FROM (SELECT md5(t::text) AS h FROM public.a t) r",
            &[],
        )
        .await
        .expect("md5sum checksum")
        .get(0);
    let md5sum_manifest = manifest_tables(&[("public.a", 5000, &md5sum)]);
    let like_md5sum = db
        .fingerprint_like(&name, &md5sum_manifest)
        .await
        .expect("fingerprint");
    assert_eq!(like_md5sum["public.a"].checksum, md5sum);
    assert_eq!(
        like_md5sum["public.b"].checksum, changed["public.b"].checksum,
        "a table the manifest does not name is checksummed as this version does"
    );

    // A manifest written before `md5sum:` holds plain md5s: fingerprint the same way.
    let legacy: String = client
        .query_one(
            "SELECT md5(string_agg(md5(t::text), '' ORDER BY md5(t::text))) FROM public.a t",
            &[],
        )
        .await
        .expect("legacy checksum")
        .get(0);
    let old_manifest = manifest_tables(&[("public.a", 5000, &legacy), ("public.empty", 0, "")]);
    let like_old = db
        .fingerprint_like(&name, &old_manifest)
        .await
        .expect("fingerprint");
    assert_eq!(like_old["public.a"].checksum, legacy);
    assert_eq!(
        like_old["public.empty"].checksum, "",
        "old form of an empty table"
    );
}
