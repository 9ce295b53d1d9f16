//! MySQL / MariaDB bindings on a real MariaDB: statements classified in the MySQL dialect and
//! checked against the grant, and backups taken with `--single-transaction`, verified, trial
//! restored table by table, refused when damaged, and swapped back in. The connection (issue
//! 20): an account reaching beyond its schema refused at bind time, a query past the deadline
//! killed on the server, no session state outliving a call, and the documented least-privilege
//! recipes accepted.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::mysql::{MySql, read_grants, schema_grants};
use mysql_async::prelude::Queryable;
use upshift::audit::Decision;
use upshift::caps::db::{BackupSource, DbBackend, RolePolicy};
use upshift::caps::{EventSink, InstanceCaps};
use upshift::fleet::Fleet;
use upshift::model::grants::Access;
use upshift::ops::Session;
use upshift::ops::apply;
use upshift::runtime::{Deadlines, LoadedAdapter};

async fn seed(conn: &mut mysql_async::Conn) {
    conn.query_drop(
        "CREATE TABLE principal (id INT PRIMARY KEY AUTO_INCREMENT, email VARCHAR(200) NOT NULL, note TEXT NULL, \
         avatar BLOB NULL, created DATETIME(6) NOT NULL, score DOUBLE NULL)",
    )
    .await
    .expect("create");
    conn.query_drop("CREATE TABLE _devlake_migration_history (script_version BIGINT, script_name VARCHAR(255), comment TEXT)")
        .await
        .expect("create");
    for i in 0..200 {
        conn.exec_drop(
            "INSERT INTO principal (email, note, avatar, created, score) VALUES (?, ?, ?, NOW(6), ?)",
            (
                format!("user{i}@example.com"),
                if i % 3 == 0 { None } else { Some(format!("note {i}")) },
                if i % 5 == 0 { Some(vec![0u8, 1, 2, 255]) } else { None },
                f64::from(i) / 7.0,
            ),
        )
        .await
        .expect("insert");
    }
    conn.query_drop("INSERT INTO _devlake_migration_history VALUES (20240607000041, 'modify_pr_assignees', 'x'), (20220406000001, 'init', NULL)")
        .await
        .expect("insert");
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
        .expect("answers")
        .summary
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_statements_are_classified_and_granted() {
    let Some(my) = common::mysql::mysql() else {
        return;
    };
    let (db, _) = my.fresh_db("caps").await;
    seed(&mut my.conn(&db).await).await;
    let url = my.account(&format!("{db}_r"), &db, &read_grants(&db)).await;
    let env = common::Env::new();
    env.write_fleet(&format!(
        "[[instance]]\nname = \"m\"\nadapter = \"{}/test-misbehaving.wasm\"\n[instance.db.meta]\nurl = \"{url}\"\naccess = [\"read\"]\n",
        upshift::adapters::BUILT_DIR
    ));
    let fleet = Fleet::load(&env.fleet()).expect("fleet");
    let session = Session::open(&env.data(), EventSink::discard())
        .await
        .expect("session");
    let (adapter, caps) = apply::prepare(&session, fleet.instance("m").expect("m"))
        .await
        .expect("prepare");
    assert_eq!(step(&session, &adapter, &caps, "db-read").await, "ok: 1");
    assert!(
        step(&session, &adapter, &caps, "db-write")
            .await
            .contains("not granted `write`")
    );
    assert!(
        step(&session, &adapter, &caps, "db-ddl")
            .await
            .contains("not granted `ddl`")
    );
    let count: Option<i64> = my
        .conn(&db)
        .await
        .query_first("SELECT COUNT(*) FROM principal")
        .await
        .expect("count");
    assert_eq!(count, Some(200), "nothing was deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_backups_verify_restore_test_and_swap_back() {
    let Some(my) = common::mysql::mysql() else {
        return;
    };
    let (db, url) = my.fresh_db("bk").await;
    seed(&mut my.conn(&db).await).await;
    // The least-privilege account of a binding granted backup and restore, checked.
    let backend = DbBackend::bound(
        &url,
        Some(policy(
            &[Access::Read, Access::Backup, Access::Restore],
            false,
        )),
    )
    .expect("backend");
    assert_eq!(
        backend.check_role().await.map_err(|e| e.to_string()),
        Ok(None)
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let dump = dir.path().join("bk-1");
    let (manifest, sha) = backend.dump_to(&dump, "v1.0.3").await.expect("dump");
    assert_eq!(manifest.format, "mysql-dump-gz");
    assert_eq!(manifest.tables["principal"].rows, 200);
    assert_eq!(manifest.tables["_devlake_migration_history"].rows, 2);
    assert!(
        manifest
            .tool_version
            .as_deref()
            .is_some_and(|v| v.contains("mariadb-dump") || v.contains("mysqldump")),
        "{:?}",
        manifest.tool_version
    );

    // Trial restore into a scratch database, compared table by table.
    let source = BackupSource::Dump {
        dir: dump.clone(),
        manifest_sha256: sha.clone(),
    };
    let scratch = format!("upshift_verify_{db}");
    backend
        .materialize(&scratch, &source)
        .await
        .expect("restore");
    let found = backend
        .fingerprint_database(&scratch)
        .await
        .expect("fingerprint");
    assert_eq!(
        found, manifest.tables,
        "every table's rows and checksum match"
    );
    backend.drop_database(&scratch).await.expect("drop");

    // Damage the live data, then swap the backup back in; the damaged tables are kept aside.
    let mut conn = my.conn(&db).await;
    conn.query_drop("DELETE FROM principal WHERE id > 10")
        .await
        .expect("damage");
    drop(conn);
    let staging = format!("{db}_restoring_1");
    backend
        .materialize(&staging, &source)
        .await
        .expect("restore");
    backend
        .swap_in(&staging, &format!("{db}_pre_restore_1"))
        .await
        .expect("swap");
    assert_eq!(
        backend
            .fingerprint_database(&db)
            .await
            .expect("fingerprint"),
        manifest.tables
    );
    let kept: Option<i64> = my
        .conn(&format!("{db}_pre_restore_1"))
        .await
        .query_first("SELECT COUNT(*) FROM principal")
        .await
        .expect("kept");
    assert_eq!(kept, Some(10), "the replaced tables are kept, not dropped");

    // One flipped byte in the dump: refused before anything is created.
    let file = dump.join("dump.sql.gz");
    let mut bytes = std::fs::read(&file).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&file, bytes).expect("write");
    let err = backend
        .materialize(&format!("{db}_restoring_never"), &source)
        .await
        .expect_err("damaged");
    assert!(err.to_string().contains("dump.sql.gz has changed"), "{err}");
    let exists: Option<i64> = my
        .conn("")
        .await
        .exec_first(
            "SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name = ?",
            (format!("{db}_restoring_never"),),
        )
        .await
        .expect("schemata");
    assert_eq!(exists, Some(0));
}

/// A policy for binding `meta` granted `access`.
fn policy(access: &[Access], privileged: bool) -> RolePolicy {
    RolePolicy {
        binding: "meta".into(),
        privileged,
        access: access.to_vec(),
        ..RolePolicy::default()
    }
}

/// The connection fixture: a database with `victims`, the payload-driven probe component
/// (`db-probe`) bound in several instances: `meta` (read) as various accounts, `rw` (read,
/// write, ddl) as a least-privilege account with its schema's privileges.
struct World {
    env: common::Env,
    fleet: Fleet,
    db: String,
    /// The accounts the instances connect as (for PROCESSLIST).
    users: Vec<String>,
}

/// An instance of the probe with `meta` bound to `meta_url` (plus `extra` lines) and `rw`.
fn probe_instance(name: &str, wasm: &Path, meta_url: &str, extra: &str, rw_url: &str) -> String {
    format!(
        r#"
[[instance]]
name = "{name}"
adapter = "{adapter}"

[instance.db.meta]
url = "{meta_url}"
access = ["read"]
{extra}

[instance.db.rw]
url = "{rw_url}"
"#,
        adapter = wasm.display(),
    )
}

/// The accounts `meta` is bound to, by instance, and what the check must name.
const REFUSED: [(&str, &str); 7] = [
    ("root", "ALL PRIVILEGES on *.* (a server-wide privilege"),
    (
        "file",
        "FILE on *.* (a server-wide privilege: reads and writes files",
    ),
    (
        "process",
        "PROCESS on *.* (a server-wide privilege: sees every session",
    ),
    ("other", "SELECT on `other_"),
    ("role", "FILE on *.*"),
    ("wildcard", "are wildcards, so it also covers other schemas"),
    ("trigger", "TRIGGER on `"),
];

async fn world(my: &MySql, wasm: &Path) -> World {
    let (db, _) = my.fresh_db("conn").await;
    let mut root = my.conn(&db).await;
    root.query_drop(
        "CREATE TABLE victims (id INT PRIMARY KEY AUTO_INCREMENT, name VARCHAR(20)) ENGINE=InnoDB;
         INSERT INTO victims (name) VALUES ('a'), ('b'), ('c');
         CREATE TABLE numbers (n INT PRIMARY KEY) ENGINE=InnoDB;
         INSERT INTO numbers SELECT seq FROM seq_1_to_3000;",
    )
    .await
    .expect("seed");
    let other = my.fresh_name("other");
    root.query_drop(format!("CREATE DATABASE `{other}`"))
        .await
        .expect("other database");
    let role = format!("{db}_filer");
    root.query_drop(format!(
        "CREATE ROLE `{role}`; GRANT FILE ON *.* TO `{role}`"
    ))
    .await
    .expect("role");
    let read = read_grants(&db);
    let with = |extra: &str| {
        let mut g = read.clone();
        g.push(extra.to_string());
        g
    };
    let rw_user = format!("{db}_rw");
    let rw_url = my.account(&rw_user, &db, &schema_grants(&db)).await;
    let read_user = format!("{db}_r");
    let read_url = my.account(&read_user, &db, &read).await;
    let mut users = vec![rw_user, read_user];
    let mut text = probe_instance("probe", wasm, &read_url, "", &rw_url);
    for (instance, _) in REFUSED {
        let grants = match instance {
            "root" => {
                text.push_str(&probe_instance(instance, wasm, &my.url(&db), "", &rw_url));
                text.push_str(&probe_instance(
                    "root-accepted",
                    wasm,
                    &my.url(&db),
                    "privileged = true",
                    &rw_url,
                ));
                continue;
            }
            "file" => with("GRANT FILE ON *.*"),
            "process" => with("GRANT PROCESS ON *.*"),
            "other" => with(&format!("GRANT SELECT ON `{other}`.*")),
            // A role granted but not enabled at login: `SET ROLE` enables it.
            "role" => with(&format!("GRANT `{role}`")),
            // The database's own name, its `_` unescaped: a wildcard.
            "wildcard" => vec![format!("GRANT SELECT ON `{db}`.*")],
            _ => with(&format!(
                "GRANT TRIGGER ON `{}`.*",
                common::mysql::escaped(&db)
            )),
        };
        let user = format!("{db}_{instance}");
        let url = my.account(&user, &db, &grants).await;
        users.push(user);
        text.push_str(&probe_instance(instance, wasm, &url, "", &rw_url));
    }
    let env = common::Env::new();
    env.write_fleet(&text);
    let fleet = Fleet::load(&env.fleet()).expect("fleet");
    World {
        env,
        fleet,
        db,
        users,
    }
}

fn probe() -> std::path::PathBuf {
    common::hostile::component("hostile-mysql", "db-probe").unwrap_or_else(|e| panic!("{e}"))
}

async fn probe_session(w: &World, live: Duration) -> Session {
    let mut session = Session::open(&w.env.data(), EventSink::discard())
        .await
        .expect("session");
    session.runtime.set_deadlines(Deadlines {
        pure: Duration::from_secs(2),
        live,
    });
    session
}

/// The custom step `name` with `payload`, as a run performs it: the error or `ok: …`.
async fn attack(
    session: &Session,
    adapter: &LoadedAdapter,
    caps: &Arc<InstanceCaps>,
    name: &str,
    payload: &str,
) -> String {
    common::hostile::custom_step(session, adapter, caps, "mysql-conn", name, payload).await
}

async fn prepare(
    session: &Session,
    w: &World,
    instance: &str,
) -> (LoadedAdapter, Arc<InstanceCaps>) {
    let instance = w.fleet.instance(instance).expect("instance");
    apply::prepare(session, instance).await.expect("prepare")
}

async fn victims(my: &MySql, w: &World) -> Option<i64> {
    my.conn(&w.db)
        .await
        .query_first("SELECT COUNT(*) FROM victims")
        .await
        .expect("count")
}

/// An account that reaches beyond its schema (root; FILE; PROCESS; another schema; a role
/// with FILE it may enable; a wildcard database name; TRIGGER) is refused before any SQL runs,
/// naming the privilege, audited, and `plan` is refused too; with `privileged = true` root
/// works and `plan` says so; the least-privilege account just works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_reaching_beyond_the_schema_are_refused_at_bind_time() {
    let Some(my) = common::mysql::mysql() else {
        return;
    };
    let wasm = probe();
    let w = world(my, &wasm).await;
    let session = probe_session(&w, Duration::from_secs(20)).await;
    let read = "query meta\nSELECT COUNT(*) FROM victims";
    let mut failures = Vec::new();
    for (instance, why) in REFUSED {
        let (adapter, caps) = prepare(&session, &w, instance).await;
        let before = common::audit_records(session.audit.path()).len();
        let outcome = attack(&session, &adapter, &caps, "attack", read).await;
        eprintln!("{instance} -> {outcome}");
        if !outcome.contains(why) || !outcome.contains("privileged = true on [instance.db.meta]") {
            failures.push(format!("{instance}: expected `{why}` in: {outcome}"));
        }
        let denied = common::audit_records(session.audit.path())[before..]
            .iter()
            .any(|r| {
                r.event.decision == Decision::Denied
                    && r.event.binding == "meta"
                    && r.event.reason.as_deref().unwrap_or("").contains(why)
            });
        if !denied {
            failures.push(format!("{instance}: no denied audit record with `{why}`"));
        }
        let out = w.env.upshift(&["plan", instance, "--to", "2.0.0"]);
        let text = common::stderr(&out);
        if out.status.success() || !text.contains(why) {
            failures.push(format!(
                "{instance}: plan was not refused with `{why}`: {text}"
            ));
        }
        let next = attack(&session, &adapter, &caps, "benign", "").await;
        assert_eq!(next, "ok: benign", "after {instance}");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    let (adapter, caps) = prepare(&session, &w, "root-accepted").await;
    assert_eq!(
        attack(&session, &adapter, &caps, "attack", read).await,
        r#"ok: [["3"]]"#
    );
    let out = w
        .env
        .upshift(&["plan", "root-accepted", "--to", "2.0.0", "--json"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let report = common::json(&out);
    let notice = report["privileged"][0].as_str().unwrap_or_default();
    assert!(
        notice.starts_with("binding `meta` connects as MySQL account `root@")
            && notice.contains("ALL PRIVILEGES on *.*")
            && notice.ends_with("(privileged = true)"),
        "{report}"
    );
    // The least-privilege accounts pass, and `plan` names nothing.
    let (adapter, caps) = prepare(&session, &w, "probe").await;
    assert_eq!(
        attack(&session, &adapter, &caps, "attack", read).await,
        r#"ok: [["3"]]"#
    );
    let out = w.env.upshift(&["plan", "probe", "--to", "2.0.0", "--json"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert_eq!(common::json(&out)["privileged"], serde_json::json!([]));
    assert_eq!(victims(my, &w).await, Some(3));
}

/// Queries of the host's accounts still running on the server.
async fn host_queries(my: &MySql, w: &World) -> Vec<String> {
    let placeholders = vec!["?"; w.users.len()].join(", ");
    my.conn("")
        .await
        .exec(
            format!(
                "SELECT CONCAT(USER, ': ', COALESCE(INFO, '')) FROM information_schema.PROCESSLIST \
                 WHERE USER IN ({placeholders}) AND COMMAND = 'Query'"
            ),
            w.users.clone(),
        )
        .await
        .expect("PROCESSLIST")
}

/// A call still running on the server at the export's deadline (a cross join, or an update
/// blocked on a row lock the test holds) ends at the deadline with an error blaming the
/// deadline, recorded; its query is gone from the server's PROCESSLIST within seconds, and the
/// host serves the next call. Below the guard, a call abandoned with no deadline known to the
/// server (its own limits far away) has its query killed by the host (`KILL QUERY`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_past_the_deadline_is_killed_on_the_server() {
    let Some(my) = common::mysql::mysql() else {
        return;
    };
    let wasm = probe();
    let w = world(my, &wasm).await;
    let deadline = Duration::from_secs(4);
    let session = probe_session(&w, deadline).await;
    let (adapter, caps) = prepare(&session, &w, "probe").await;
    let cross = "SELECT COUNT(*) FROM numbers a, numbers b, numbers c WHERE a.n + b.n > c.n";
    let variations = [
        "execute rw\nUPDATE victims SET name = name".to_string(),
        "transaction rw\nSELECT 1\n--next--\nUPDATE victims SET name = name".to_string(),
        format!("query meta\n{cross}"),
        format!("transaction meta\n{cross}"),
        format!("execute rw\n{cross}"),
    ];
    let mut failures = Vec::new();
    for payload in &variations {
        let mut holder = my.conn(&w.db).await;
        holder
            .query_drop("START TRANSACTION; SELECT * FROM victims FOR UPDATE")
            .await
            .expect("lock the rows");
        let before = common::audit_records(session.audit.path()).len();
        let started = Instant::now();
        let outcome = attack(&session, &adapter, &caps, "attack", payload).await;
        let took = started.elapsed();
        eprintln!("{payload:?} -> {took:?}: {outcome}");
        if took > deadline + Duration::from_secs(3) {
            failures.push(format!("{payload:?}: ran {took:?}, deadline {deadline:?}"));
        }
        if outcome.starts_with("ok: ") || !outcome.contains("deadline") {
            failures.push(format!("{payload:?}: no deadline error: {outcome}"));
        }
        if !common::hostile::audited(&session, before, "deadline") {
            failures.push(format!("{payload:?}: the deadline is not in the audit log"));
        }
        // The server's query is gone shortly after, while the test still holds the lock.
        let mut left = host_queries(my, &w).await;
        let gone_by = Instant::now() + Duration::from_secs(3);
        while !left.is_empty() && Instant::now() < gone_by {
            tokio::time::sleep(Duration::from_millis(100)).await;
            left = host_queries(my, &w).await;
        }
        eprintln!(
            "  gone from PROCESSLIST {:?} after the call began",
            started.elapsed()
        );
        if !left.is_empty() {
            failures.push(format!(
                "{payload:?}: still running on the server {:?} after the deadline: {left:?}",
                started.elapsed()
            ));
        }
        holder.query_drop("ROLLBACK").await.expect("release");
        drop(holder);
        let next = attack(&session, &adapter, &caps, "benign", "").await;
        assert_eq!(next, "ok: benign", "after {payload:?}");
        let read = attack(
            &session,
            &adapter,
            &caps,
            "attack",
            "query meta\nSELECT COUNT(*) FROM victims",
        )
        .await;
        assert_eq!(read, r#"ok: [["3"]]"#, "after {payload:?}");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // The connection layer itself: a call dropped while its query runs (the guard's timeout
    // drops it at the deadline) has the query killed, though the server's limits are far off.
    let rw_url = my.url_as(&format!("{}_rw", w.db), &w.db);
    let backend = DbBackend::new(&rw_url).expect("backend");
    let mut holder = my.conn(&w.db).await;
    holder
        .query_drop("START TRANSACTION; SELECT * FROM victims FOR UPDATE")
        .await
        .expect("lock the rows");
    for sql in ["UPDATE victims SET name = name", cross] {
        let abandoned =
            tokio::time::timeout(Duration::from_secs(2), backend.execute(sql, &[])).await;
        assert!(
            abandoned.is_err(),
            "{sql}: still running at 2 s: {abandoned:?}"
        );
        let dropped = Instant::now();
        let mut left = host_queries(my, &w).await;
        while !left.is_empty() && dropped.elapsed() < Duration::from_secs(3) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            left = host_queries(my, &w).await;
        }
        eprintln!(
            "{sql}: gone {:?} after the call was dropped",
            dropped.elapsed()
        );
        assert!(
            left.is_empty(),
            "{sql}: not killed 3 s after the call was dropped: {left:?}"
        );
    }
    holder.query_drop("ROLLBACK").await.expect("release");
}

/// Nothing a call leaves in its session — a `GET_LOCK` lock, user variables, `SET SESSION`,
/// a temporary table, a prepared statement — is there for the next call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_session_state_outlives_a_mysql_call() {
    let Some(my) = common::mysql::mysql() else {
        return;
    };
    let wasm = probe();
    let w = world(my, &wasm).await;
    let session = probe_session(&w, Duration::from_secs(20)).await;
    let (adapter, caps) = prepare(&session, &w, "probe").await;
    // (what the adapter does, what it then asks, what a fresh session answers)
    let variations: &[(&str, &str, &str)] = &[
        (
            "execute rw\nSELECT GET_LOCK('upshift_probe', 0)",
            "query rw\nSELECT COALESCE(IS_USED_LOCK('upshift_probe'), 'free')",
            r#"ok: [["free"]]"#,
        ),
        (
            "transaction rw\nSELECT GET_LOCK('upshift_probe_tx', 0)",
            "query rw\nSELECT COALESCE(IS_USED_LOCK('upshift_probe_tx'), 'free')",
            r#"ok: [["free"]]"#,
        ),
        (
            "execute rw\nSET @poisoned = 42",
            "query rw\nSELECT COALESCE(@poisoned, 'unset')",
            r#"ok: [["unset"]]"#,
        ),
        (
            "transaction rw\nSELECT 42 INTO @poisoned_too",
            "query rw\nSELECT COALESCE(@poisoned_too, 'unset')",
            r#"ok: [["unset"]]"#,
        ),
        (
            "execute rw\nSELECT @poisoned_three := 42",
            "query rw\nSELECT COALESCE(@poisoned_three, 'unset')",
            r#"ok: [["unset"]]"#,
        ),
        (
            "execute rw\nSET SESSION sql_mode = 'ANSI_QUOTES'",
            "query rw\nSELECT IF(@@SESSION.sql_mode LIKE '%ANSI_QUOTES%', 'changed', 'fresh')",
            r#"ok: [["fresh"]]"#,
        ),
        (
            "execute rw\nSET SESSION max_statement_time = 0",
            "query rw\nSELECT IF(@@SESSION.max_statement_time > 0, 'limited', 'unlimited')",
            r#"ok: [["limited"]]"#,
        ),
        (
            "execute rw\nCREATE TEMPORARY TABLE leftover (x INT)",
            "query rw\nSELECT COUNT(*) FROM information_schema.tables WHERE table_name = 'leftover'",
            r#"ok: [["0"]]"#,
        ),
    ];
    let mut failures = Vec::new();
    for (change, probe, fresh) in variations {
        let changed = attack(&session, &adapter, &caps, "attack", change).await;
        if changed.contains("denied: ") {
            // The SQL analysis refuses it before any session exists: nothing to leave behind
            // (the connection layer's own answer is checked below the guard, further down).
            eprintln!("{change:?} -> {changed}");
            continue;
        }
        let mut seen = String::new();
        for _ in 0..20 {
            seen = attack(&session, &adapter, &caps, "attack", probe).await;
            if seen == *fresh {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!("{change:?} -> {changed}\n  then {probe:?} -> {seen}");
        if seen != *fresh {
            failures.push(format!(
                "{change:?} ({changed}) left state behind: {probe:?} answered {seen}, a fresh session {fresh}"
            ));
        }
    }
    // A prepared statement: the next call cannot run it.
    let prepared = attack(
        &session,
        &adapter,
        &caps,
        "attack",
        "execute rw\nPREPARE leftover_stmt FROM 'SELECT 1'",
    )
    .await;
    let reused = attack(
        &session,
        &adapter,
        &caps,
        "attack",
        "execute rw\nEXECUTE leftover_stmt",
    )
    .await;
    eprintln!("PREPARE -> {prepared}; EXECUTE -> {reused}");
    if reused.starts_with("ok: ") {
        failures.push(format!("a prepared statement outlived its call: {reused}"));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // The connection layer itself, below the classifier (which refuses most of the above):
    // each call's session is its own.
    let rw_url = my.url_as(&format!("{}_rw", w.db), &w.db);
    let backend = DbBackend::new(&rw_url).expect("backend");
    let first = |rows: upshift::caps::db::Rows| match rows.rows.first().and_then(|r| r.first()) {
        Some(upshift::caps::bindings::Value::Text(t)) => t.clone(),
        other => format!("{other:?}"),
    };
    let changes = [
        "SELECT GET_LOCK('upshift_backend_probe', 0)",
        "SET @poisoned = 42",
        "SET SESSION max_statement_time = 0, SESSION sql_mode = 'ANSI_QUOTES'",
        "CREATE TEMPORARY TABLE leftover (x INT)",
    ];
    for sql in changes {
        backend
            .execute(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let probes = [
        (
            "SELECT COALESCE(IS_USED_LOCK('upshift_backend_probe'), 'free')",
            "free",
        ),
        ("SELECT COALESCE(@poisoned, 'unset')", "unset"),
        (
            "SELECT IF(@@SESSION.max_statement_time > 0, 'limited', 'unlimited')",
            "limited",
        ),
        (
            "SELECT IF(@@SESSION.sql_mode LIKE '%ANSI_QUOTES%', 'changed', 'fresh')",
            "fresh",
        ),
    ];
    for (sql, fresh) in probes {
        let (rows, _) = backend
            .query(sql, &[], &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        assert_eq!(first(rows), fresh, "{sql}");
    }
    let leftover = backend
        .query("SELECT COUNT(*) FROM leftover", &[], &[])
        .await;
    assert!(
        leftover.is_err(),
        "the temporary table outlived its call: {leftover:?}"
    );
    assert_eq!(victims(my, &w).await, Some(3));
}

/// The MySQL / MariaDB recipes in docs/least-privilege.md, run as written (names made unique,
/// the elided password filled in), give accounts the check accepts on a binding Upshift backs
/// up and restores, and refuses on a read-only one (their schema changes): the page cannot drift
/// from the check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_mysql_recipes_pass_the_account_check() {
    let Some(my) = common::mysql::mysql() else {
        return;
    };
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/least-privilege.md");
    let text = std::fs::read_to_string(&doc).expect("docs/least-privilege.md");
    let recipes: Vec<&str> = text
        .split("```sql\n")
        .skip(1)
        .filter_map(|rest| rest.split("```").next())
        .filter(|sql| sql.contains("CREATE USER '"))
        .collect();
    assert!(recipes.len() >= 2, "{} MySQL recipes", recipes.len());
    let mut admin = my.conn("").await;
    for (n, recipe) in recipes.iter().enumerate() {
        let between = |marker: &str, end: char| {
            recipe
                .split(marker)
                .nth(1)
                .and_then(|rest| rest.split(end).next())
                .map(str::to_string)
                .unwrap_or_else(|| panic!("recipe {n} has no `{marker}`: {recipe}"))
        };
        let user = between("CREATE USER '", '\'');
        let database = between("CREATE DATABASE ", ' ');
        // Digits only, so the escaped patterns of the recipe stay escaped.
        let unique = format!("{}{n}", std::process::id());
        let escaped = common::mysql::escaped(&database);
        let sql = recipe
            .replace('…', "recipe-password")
            .replace(&format!("'{user}'"), &format!("'{user}{unique}'"))
            .replace(&escaped, &format!("{escaped}{unique}"))
            .replace(&format!("{database} "), &format!("{database}{unique} "))
            .replace(&format!("{database}."), &format!("{database}{unique}."));
        for statement in sql
            .split(';')
            .map(|s| {
                s.lines()
                    .filter(|l| !l.trim_start().starts_with("--"))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .filter(|s| !s.trim().is_empty())
        {
            admin
                .query_drop(&statement)
                .await
                .unwrap_or_else(|e| panic!("recipe {n} `{statement}`: {e}"));
        }
        let url = my
            .url_as(&format!("{user}{unique}"), &format!("{database}{unique}"))
            .replacen("@", ":recipe-password@", 1);
        let restores = DbBackend::bound(
            &url,
            Some(policy(
                &[Access::Read, Access::Backup, Access::Restore],
                false,
            )),
        )
        .expect("backend");
        assert_eq!(
            restores.check_role().await.map_err(|e| e.to_string()),
            Ok(None),
            "recipe {n} on a binding granted read, backup and restore: {sql}"
        );
        let read_only =
            DbBackend::bound(&url, Some(policy(&[Access::Read], false))).expect("backend");
        let refused = read_only.check_role().await;
        assert!(
            refused.as_ref().is_err_and(|e| e
                .to_string()
                .contains("more than a binding granted read needs")),
            "recipe {n} on a read-only binding: {refused:?}"
        );
    }
}
