//! Hostile adapters against the database connection (issue 14, H2): the server's `READ ONLY`
//! on a read grant whatever the classifier thinks, no session state outliving a call, the
//! export's deadline ending a call that waits on the server (and the server's query with it),
//! and bindings whose role reaches beyond its database. One payload-driven component
//! (`db-probe` in tests/adapters/hostile) runs every variation through the paths an adapter
//! uses: a plan step's `run-step`, its `db` imports, the guard, the backend.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use upshift::audit::Decision;
use upshift::caps::{EventSink, InstanceCaps};
use upshift::fleet::Fleet;
use upshift::ops::{Session, apply};
use upshift::runtime::{Deadlines, LoadedAdapter};

/// The fixture: a database owned by a least-privilege role, the probe component bound to it
/// in several instances, and roles with powers beyond the database.
struct World {
    env: common::Env,
    fleet: Fleet,
    db: String,
    /// The database as the superuser (for the test's own checks).
    admin_url: String,
}

/// An instance of the probe adapter with a `meta` binding (and the owner's `rw`).
fn instance(name: &str, wasm: &Path, meta_url: &str, extra: &str, rw_url: &str) -> String {
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

async fn world(pg: &common::Pg, wasm: &Path) -> World {
    let (db, owner_url) = pg.fresh_db_as("conn", "").await;
    common::connect(&owner_url)
        .await
        .batch_execute(
            "CREATE TABLE victims (id serial PRIMARY KEY, name text);
             INSERT INTO victims (name) VALUES ('a'), ('b'), ('c');",
        )
        .await
        .expect("seed");
    let admin_url = pg.admin_url(&db);
    let n = &db;
    // A volatile function that writes, which a statement classified as a read can call; and
    // roles that reach beyond the database: one only through a chain of memberships.
    common::connect(&admin_url)
        .await
        .batch_execute(&format!(
            "CREATE FUNCTION sneaky() RETURNS int LANGUAGE sql VOLATILE AS $$ DELETE FROM victims RETURNING 1 $$;
             ALTER FUNCTION sneaky() OWNER TO \"{db}\";
             CREATE ROLE signal_mid_{n} NOLOGIN;
             GRANT pg_signal_backend TO signal_mid_{n};
             CREATE ROLE signal_{n} LOGIN;
             GRANT signal_mid_{n} TO signal_{n};
             CREATE ROLE creator_{n} LOGIN CREATEDB;
             GRANT SELECT ON victims TO signal_{n}, creator_{n};"
        ))
        .await
        .expect("roles");
    let su_url = admin_url.clone();
    let mut text = String::new();
    text.push_str(&instance("probe", wasm, &owner_url, "", &owner_url));
    text.push_str(&instance("su-refused", wasm, &su_url, "", &owner_url));
    text.push_str(&instance(
        "su-accepted",
        wasm,
        &su_url,
        "privileged = true",
        &owner_url,
    ));
    text.push_str(&instance(
        "signal",
        wasm,
        &pg.url_as(&format!("signal_{n}"), &db),
        "",
        &owner_url,
    ));
    text.push_str(&instance(
        "creator",
        wasm,
        &pg.url_as(&format!("creator_{n}"), &db),
        "",
        &owner_url,
    ));
    let env = common::Env::new();
    env.write_fleet(&text);
    let fleet = Fleet::load(&env.fleet()).expect("fleet");
    World {
        env,
        fleet,
        db,
        admin_url,
    }
}

/// The custom step `name` with `payload`, as a run performs it: the error or `ok: …`.
async fn step(
    session: &Session,
    adapter: &LoadedAdapter,
    caps: &Arc<InstanceCaps>,
    name: &str,
    payload: &str,
) -> String {
    common::hostile::custom_step(session, adapter, caps, "hostile-conn", name, payload).await
}

/// The loaded probe and its caps for `instance`.
async fn prepare(
    session: &Session,
    w: &World,
    instance: &str,
) -> (LoadedAdapter, Arc<InstanceCaps>) {
    let instance = w.fleet.instance(instance).expect("instance");
    apply::prepare(session, instance).await.expect("prepare")
}

async fn victims(w: &World) -> i64 {
    common::connect(&w.admin_url)
        .await
        .query_one("SELECT count(*) FROM victims", &[])
        .await
        .expect("count")
        .get(0)
}

/// Sessions of the host (`application_name = upshift`) still running a query on the database.
async fn host_queries(w: &World) -> i64 {
    common::connect(&w.admin_url)
        .await
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 \
             AND application_name = 'upshift' AND state <> 'idle'",
            &[&w.db],
        )
        .await
        .expect("pg_stat_activity")
        .get(0)
}

async fn session(w: &World, live: Duration) -> Session {
    let mut session = Session::open(&w.env.data(), EventSink::discard())
        .await
        .expect("session");
    session.runtime.set_deadlines(Deadlines {
        pure: Duration::from_secs(2),
        live,
    });
    session
}

fn built() -> std::path::PathBuf {
    common::hostile::component("hostile-conn", "db-probe").unwrap_or_else(|e| panic!("{e}"))
}

/// (a) On a read grant every call runs in a transaction the server keeps `READ ONLY`: a
/// statement the classifier takes for a read but that writes (a user-defined volatile
/// function, a sequence) is refused by the server, recorded, and the table is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_grant_never_writes_even_past_the_classifier() {
    let Some(pg) = common::pg() else { return };
    let wasm = built();
    let w = world(pg, &wasm).await;
    let session = session(&w, Duration::from_secs(20)).await;
    let (adapter, caps) = prepare(&session, &w, "probe").await;
    let variations = [
        "transaction meta\nSELECT sneaky()",
        "transaction meta\nSELECT 1\n--next--\nSELECT sneaky()",
        "transaction meta\nWITH x AS (SELECT sneaky() AS n) SELECT n FROM x",
        "transaction meta\nSELECT count(*) FROM victims WHERE sneaky() > 0",
        "transaction meta\nSELECT nextval('victims_id_seq')",
        "query meta\nSELECT sneaky()",
        "execute meta\nSELECT sneaky()",
    ];
    let mut failures = Vec::new();
    for payload in variations {
        let before = common::audit_records(session.audit.path()).len();
        let outcome = step(&session, &adapter, &caps, "attack", payload).await;
        eprintln!("{payload:?} -> {outcome}");
        if outcome.starts_with("ok: ") || !outcome.contains("adapter") {
            failures.push(format!("{payload:?}: not refused and blamed: {outcome}"));
        }
        // The server's refusal (or, where the classifier already knows, a denial).
        let refused = common::audit_records(session.audit.path())[before..]
            .iter()
            .any(|r| {
                r.event.decision == Decision::Denied
                    || r.event
                        .error
                        .as_deref()
                        .unwrap_or("")
                        .contains("read-only transaction")
            });
        if !refused {
            failures.push(format!("{payload:?}: not audited"));
        }
        if victims(&w).await != 3 {
            failures.push(format!("{payload:?}: rows were deleted"));
            break;
        }
        let next = step(&session, &adapter, &caps, "benign", "").await;
        assert_eq!(next, "ok: benign", "after {payload:?}");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let seq: i64 = common::connect(&w.admin_url)
        .await
        .query_one("SELECT last_value FROM victims_id_seq", &[])
        .await
        .expect("sequence")
        .get(0);
    assert_eq!(seq, 3, "the sequence did not move");

    // The connection layer itself, below the classifier: a read-only transaction stays read
    // only, whatever its statements are.
    let backend = upshift::caps::db::DbBackend::new(&pg.url_as(&w.db, &w.db)).expect("backend");
    let err = backend
        .transaction(&[("SELECT sneaky()".to_string(), vec![])], true, &[])
        .await
        .expect_err("the server refuses the write");
    assert!(err.to_string().contains("read-only transaction"), "{err}");
    assert_eq!(victims(&w).await, 3);
}

/// (b) Nothing a call leaves in its session — settings, temporary tables, prepared
/// statements, cursors, advisory locks, `LISTEN` — is there for the next call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_session_state_outlives_a_call() {
    let Some(pg) = common::pg() else { return };
    let wasm = built();
    let w = world(pg, &wasm).await;
    let session = session(&w, Duration::from_secs(20)).await;
    let (adapter, caps) = prepare(&session, &w, "probe").await;
    // (what the adapter does, what it then asks, the answer a fresh session gives)
    let variations: &[(&str, &str, &str)] = &[
        (
            "transaction meta\nSELECT query_to_xml('select set_config(''upshift.poisoned'',''yes'',false)', true, false, '')",
            "query meta\nSELECT coalesce(current_setting('upshift.poisoned', true), 'unset')",
            r#"ok: [["unset"]]"#,
        ),
        (
            "transaction rw\nSELECT query_to_xml('select set_config(''statement_timeout'',''987s'',false)', true, false, '')",
            "query rw\nSELECT (current_setting('statement_timeout') <> '987s')::text",
            r#"ok: [["true"]]"#,
        ),
        (
            "transaction rw\nSELECT query_to_xml('select set_config(''search_path'',''pg_catalog'',false)', true, false, '')",
            "query rw\nSELECT current_setting('search_path')",
            r#"ok: [["\"$user\", public"]]"#,
        ),
        (
            "execute rw\nCREATE TEMP TABLE leftover AS SELECT 1 AS x",
            "query rw\nSELECT coalesce(to_regclass('pg_temp.leftover')::text, 'none')",
            r#"ok: [["none"]]"#,
        ),
        (
            "execute rw\nSELECT pg_advisory_lock(4242)::text",
            "query rw\nSELECT count(*)::text FROM pg_locks WHERE locktype = 'advisory' AND objid = 4242",
            r#"ok: [["0"]]"#,
        ),
        (
            "transaction rw\nSELECT pg_advisory_lock(4243)",
            "query rw\nSELECT count(*)::text FROM pg_locks WHERE locktype = 'advisory' AND objid = 4243",
            r#"ok: [["0"]]"#,
        ),
        (
            "execute rw\nPREPARE leftover_stmt AS SELECT 1",
            "query rw\nSELECT count(*)::text FROM pg_prepared_statements WHERE name = 'leftover_stmt'",
            r#"ok: [["0"]]"#,
        ),
        (
            "execute rw\nLISTEN upshift_probe",
            "query rw\nSELECT count(*)::text FROM pg_listening_channels()",
            r#"ok: [["0"]]"#,
        ),
        (
            "transaction rw\nDECLARE leftover_cursor CURSOR WITH HOLD FOR SELECT 1",
            "query rw\nSELECT count(*)::text FROM pg_cursors WHERE name = 'leftover_cursor'",
            r#"ok: [["0"]]"#,
        ),
    ];
    let mut failures = Vec::new();
    for (change, probe, fresh) in variations {
        let changed = step(&session, &adapter, &caps, "attack", change).await;
        // The session that made the change may take a moment to end (its locks with it).
        let mut seen = String::new();
        for _ in 0..20 {
            seen = step(&session, &adapter, &caps, "attack", probe).await;
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
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(victims(&w).await, 3);
}

/// (c) A call waiting on the server past the export's deadline ends at the deadline with an
/// error blaming the adapter, recorded; its query is cancelled on the server (gone from
/// `pg_stat_activity`), and the host serves the next call. The wait is a lock held by the
/// test's own session, so it stays valid whatever functions a grant allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_past_the_deadline_is_cancelled_on_the_server() {
    let Some(pg) = common::pg() else { return };
    let wasm = built();
    let w = world(pg, &wasm).await;
    let deadline = Duration::from_secs(4);
    let session = session(&w, deadline).await;
    let (adapter, caps) = prepare(&session, &w, "probe").await;
    let variations = [
        "execute rw\nUPDATE victims SET name = name",
        "transaction rw\nSELECT 1\n--next--\nUPDATE victims SET name = name",
        "query meta\nSELECT count(*)::text FROM victims",
        "transaction meta\nSELECT count(*) FROM victims",
    ];
    let mut failures = Vec::new();
    for payload in variations {
        let mut holder = common::connect(&w.admin_url).await;
        let lock = holder.transaction().await.expect("begin");
        lock.batch_execute("LOCK TABLE victims IN ACCESS EXCLUSIVE MODE")
            .await
            .expect("lock");
        let before = common::audit_records(session.audit.path()).len();
        let started = Instant::now();
        let outcome = step(&session, &adapter, &caps, "attack", payload).await;
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
        let mut left = host_queries(&w).await;
        for _ in 0..30 {
            if left == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            left = host_queries(&w).await;
        }
        if left != 0 {
            failures.push(format!(
                "{payload:?}: {left} query(ies) of the host still running on the server"
            ));
        }
        lock.rollback().await.expect("release");
        // The host serves the next call, database included.
        let next = step(&session, &adapter, &caps, "benign", "").await;
        assert_eq!(next, "ok: benign", "after {payload:?}");
        let read = step(
            &session,
            &adapter,
            &caps,
            "attack",
            "query meta\nSELECT count(*)::text FROM victims",
        )
        .await;
        assert_eq!(read, r#"ok: [["3"]]"#, "after {payload:?}");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// (d) A binding whose role reaches beyond its database (a superuser; a member of
/// `pg_signal_backend`, even through another role; `CREATEDB` on a binding that is not backed
/// up) is refused before any SQL runs, audited; with `privileged = true` it works and `plan`
/// says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privileged_roles_need_the_operators_consent() {
    let Some(pg) = common::pg() else { return };
    let wasm = built();
    let w = world(pg, &wasm).await;
    let session = session(&w, Duration::from_secs(20)).await;
    let read = "query meta\nSELECT count(*)::text FROM victims";
    let refused = [
        ("su-refused", "connects as role `postgres`, a superuser"),
        ("signal", "is a member of pg_signal_backend"),
        ("creator", "has CREATEDB"),
    ];
    let mut failures = Vec::new();
    for (instance, why) in refused {
        let (adapter, caps) = prepare(&session, &w, instance).await;
        let before = common::audit_records(session.audit.path()).len();
        let outcome = step(&session, &adapter, &caps, "attack", read).await;
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
        // `plan` is refused before the adapter runs, and says why.
        let out = w.env.upshift(&["plan", instance, "--to", "2.0.0"]);
        let text = common::stderr(&out);
        if out.status.success() || !text.contains(why) {
            failures.push(format!(
                "{instance}: plan was not refused with `{why}`: {text}"
            ));
        }
        let next = step(&session, &adapter, &caps, "benign", "").await;
        assert_eq!(next, "ok: benign", "after {instance}");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    let (adapter, caps) = prepare(&session, &w, "su-accepted").await;
    let outcome = step(&session, &adapter, &caps, "attack", read).await;
    assert_eq!(outcome, r#"ok: [["3"]]"#);
    let out = w.env.upshift(&["plan", "su-accepted", "--to", "2.0.0"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert!(
        text.contains(
            "binding `meta` connects as role `postgres`, a superuser (privileged = true)"
        ),
        "{text}"
    );
    let out = w
        .env
        .upshift(&["plan", "su-accepted", "--to", "2.0.0", "--json"]);
    let report = common::json(&out);
    assert_eq!(
        report["privileged"][0],
        "binding `meta` connects as role `postgres`, a superuser (privileged = true)"
    );
    // `adapter inspect` names the bindings of its instances that accept a privileged role.
    let out = w
        .env
        .upshift(&["adapter", "inspect", &wasm.display().to_string()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(
            "instance `su-accepted`: binding `meta` may connect as a privileged role (privileged = true)"
        ),
        "{}",
        common::stderr(&out)
    );
    assert!(!text.contains("instance `probe`"), "{text}");
    // An ordinary owner role is not named.
    let out = w.env.upshift(&["plan", "probe", "--to", "2.0.0", "--json"]);
    assert_eq!(common::json(&out)["privileged"], serde_json::json!([]));
    assert_eq!(victims(&w).await, 3);
}

/// The PostgreSQL recipes in docs/least-privilege.md, run as written (names made unique, the
/// elided password filled in), give roles the role check accepts on a binding Upshift backs up
/// and restores, and refuses on a read-only one (their `CREATEDB`): the page cannot drift from
/// the check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_least_privilege_recipes_pass_the_role_check() {
    use upshift::caps::db::{DbBackend, RolePolicy};
    let Some(pg) = common::pg() else { return };
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/least-privilege.md");
    let text = std::fs::read_to_string(&doc).expect("docs/least-privilege.md");
    let recipes: Vec<&str> = text
        .split("```sql\n")
        .skip(1)
        .filter_map(|rest| rest.split("```").next())
        .filter(|sql| sql.contains("CREATE ROLE"))
        .collect();
    assert!(recipes.len() >= 3, "{} PostgreSQL recipes", recipes.len());
    let admin = common::connect(&pg.admin_url("postgres")).await;
    for (n, recipe) in recipes.iter().enumerate() {
        // The role and database each recipe creates, renamed so runs never collide.
        let word_after = |marker: &str| {
            recipe
                .split(marker)
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .map(|w| w.trim_end_matches(';').to_string())
                .unwrap_or_else(|| panic!("recipe {n} has no `{marker}`: {recipe}"))
        };
        let (role, database) = (word_after("CREATE ROLE "), word_after("CREATE DATABASE "));
        let unique = |name: &str| format!("{name}_{}_{n}", std::process::id());
        let sql = recipe
            .replace('…', "recipe-password")
            .split_whitespace()
            .map(|w| {
                let bare = w.trim_end_matches(';');
                let renamed = if bare == role || bare == database {
                    unique(bare)
                } else {
                    bare.to_string()
                };
                if w.ends_with(';') {
                    format!("{renamed};")
                } else {
                    renamed
                }
            })
            .collect::<Vec<_>>()
            .join(" ");
        // CREATE DATABASE cannot run inside the implicit transaction of a multi-statement batch.
        for statement in sql.split(';').filter(|s| !s.trim().is_empty()) {
            admin
                .batch_execute(statement)
                .await
                .unwrap_or_else(|e| panic!("recipe {n} `{statement}`: {e}"));
        }
        let url = pg.url_as(&unique(&role), &unique(&database));
        let policy = |creates_databases| RolePolicy {
            binding: "meta".into(),
            privileged: false,
            creates_databases,
            ..RolePolicy::default()
        };
        let backed_up = DbBackend::bound(&url, Some(policy(true))).expect("backend");
        assert_eq!(
            backed_up.check_role().await.map_err(|e| e.to_string()),
            Ok(None),
            "recipe {n} on a binding granted backup and restore: {recipe}"
        );
        let read_only = DbBackend::bound(&url, Some(policy(false))).expect("backend");
        let refused = read_only.check_role().await;
        assert!(
            refused
                .as_ref()
                .is_err_and(|e| e.to_string().contains("CREATEDB")),
            "recipe {n} on a read-only binding: {refused:?}"
        );
    }
}
