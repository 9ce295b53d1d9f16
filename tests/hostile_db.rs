//! The hostile SQL suite: one payload-driven hostile adapter (`db-probe`, built from
//! tests/adapters/hostile) sends many variations of each SQL escape through the real path an
//! adapter uses (a plan's custom step → `db.query` / `db.execute` / `db.transaction`). Every
//! attack must be denied with a clear error, leave a denied audit record naming the reason and
//! carrying the statement's classification and fingerprint, and leave the database, its other
//! sessions and the host untouched. Ordinary reads keep working. Listed in
//! docs/hostile-adapters.md.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use upshift::audit::Decision;
use upshift::caps::{EventSink, InstanceCaps};
use upshift::fleet::Fleet;
use upshift::ops::{Session, apply};
use upshift::runtime::{Deadlines, LoadedAdapter};

/// What a probe must end in.
#[derive(Clone, Copy)]
enum Expect {
    /// Denied: the error and a denied audit record's reason both contain this fragment.
    Denied(&'static str),
    /// Allowed: the step succeeds.
    Ok,
}

use Expect::{Denied, Ok as Allowed};

/// One probe: the operation and binding (`query meta`, `transaction rw`, …), the SQL (for a
/// transaction, one statement per line) and what must happen.
struct Probe {
    call: &'static str,
    sql: &'static str,
    expect: Expect,
}

const fn probe(call: &'static str, sql: &'static str, expect: Expect) -> Probe {
    Probe { call, sql, expect }
}

const NO_WRITE: &str = "binding `meta` is not granted `write`";
const NO_DDL: &str = "binding `meta` is not granted `ddl`";
const READS_ONLY: &str = "`query` runs reads only";
const VOLATILE: &str = "is volatile";
const SQL_TEXT: &str = "runs SQL given as text";

#[rustfmt::skip]
const PROBES: &[Probe] = &[
    // EXPLAIN ANALYZE runs its statement: every spelling needs the statement's access.
    probe("transaction meta", "EXPLAIN (ANALYZE) DELETE FROM victims", Denied(NO_WRITE)),
    probe("transaction meta", "SELECT 1\nEXPLAIN ANALYZE DELETE FROM victims", Denied(NO_WRITE)),
    probe("transaction meta", "EXPLAIN ANALYSE DELETE FROM victims", Denied("cannot parse the SQL")),
    probe("transaction meta", "EXPLAIN (ANALYZE true, BUFFERS) DELETE FROM victims", Denied(NO_WRITE)),
    probe("transaction meta", "EXPLAIN (FORMAT JSON, ANALYZE on) DELETE FROM victims", Denied(NO_WRITE)),
    probe("transaction meta", "explain (analyse 1) delete from victims", Denied(NO_WRITE)),
    probe("transaction meta", "EXPLAIN (ANALYZE, VERBOSE) UPDATE victims SET name = 'x'", Denied(NO_WRITE)),
    probe("transaction meta", "EXPLAIN (ANALYZE) WITH d AS (DELETE FROM victims RETURNING id) SELECT * FROM d", Denied(NO_WRITE)),
    probe("query meta", "EXPLAIN (ANALYZE) DELETE FROM victims", Denied(READS_ONLY)),
    probe("execute meta", "EXPLAIN ANALYZE VERBOSE DELETE FROM victims", Denied(NO_WRITE)),
    probe("execute meta", "EXPLAIN (ANALYZE) SELECT * INTO t FROM victims", Denied(NO_DDL)),
    // SELECT … INTO and CREATE TABLE AS create a table.
    probe("transaction meta", "SELECT * INTO t FROM victims", Denied(NO_DDL)),
    probe("query meta", "SELECT * INTO TEMP t FROM victims", Denied(READS_ONLY)),
    probe("execute meta", "SELECT id INTO UNLOGGED TABLE t FROM victims", Denied(NO_DDL)),
    probe("execute meta", "CREATE TABLE t AS SELECT * FROM victims", Denied(NO_DDL)),
    // Function names as the server resolves them: U& escapes, quoting, case, schemas.
    probe("query meta", "SELECT U&\"pg_terminat\\0065_backend\"(pid) FROM pg_stat_activity WHERE application_name = 'bystander'", Denied("`pg_terminate_backend` is not allowed")),
    probe("query meta", "SELECT u&\"pg_terminate_backen\\+000064\"(pid) FROM pg_stat_activity WHERE application_name = 'bystander'", Denied("`pg_terminate_backend` is not allowed")),
    probe("transaction meta", "SELECT U&\"pg_terminat!0065_backend\" UESCAPE '!'(pid) FROM pg_stat_activity WHERE application_name = 'bystander'", Denied("`pg_terminate_backend` is not allowed")),
    probe("query meta", "SELECT U&\"pg_catalog\".U&\"pg_read_fil\\0065\"('/etc/hostname')", Denied("`pg_read_file` is not allowed")),
    probe("query meta", "SELECT \"pg_read_file\"('/etc/hostname')", Denied("`pg_read_file` is not allowed")),
    probe("query meta", "SELECT PG_READ_FILE('/etc/hostname')", Denied("`pg_read_file` is not allowed")),
    probe("query meta", "SELECT pg_catalog . pg_read_binary_file ('/etc/hostname')", Denied("`pg_read_binary_file` is not allowed")),
    probe("query meta", "SELECT U&\"set_confi\\0067\"('statement_timeout', '0', false)", Denied("`set_config` is not allowed")),
    probe("query meta", "SELECT U&\"pg_slee\\0070\"(0.2)", Denied(VOLATILE)),
    probe("query meta", "SELECT \"pg_catalog\".\"pg_sleep\"(0.2)", Denied(VOLATILE)),
    probe("query meta", "SELECT Pg_Catalog.PG_SLEEP/* a comment */(0.2)", Denied(VOLATILE)),
    // Volatile functions on a read grant, wherever they hide.
    probe("query meta", "SELECT nextval('victims_id_seq')", Denied(VOLATILE)),
    probe("transaction meta", "SELECT nextval('victims_id_seq')", Denied(VOLATILE)),
    probe("query meta", "SELECT setval('victims_id_seq', 1000)", Denied(VOLATILE)),
    probe("query meta", "SELECT lo_from_bytea(0, 'stolen')", Denied(VOLATILE)),
    probe("transaction meta", "SELECT lo_create(0)", Denied(VOLATILE)),
    probe("query meta", "SELECT pg_notify('upshift', 'hello')", Denied(VOLATILE)),
    probe("query meta", "SELECT pg_advisory_lock(42)", Denied(VOLATILE)),
    probe("transaction meta", "SELECT pg_try_advisory_xact_lock(42)", Denied(VOLATILE)),
    probe("query meta", "SELECT * FROM pg_sleep(0.2)", Denied(VOLATILE)),
    probe("query meta", "SELECT * FROM victims, LATERAL pg_sleep(0.2) AS s", Denied(VOLATILE)),
    probe("query meta", "WITH x AS (SELECT pg_sleep(0.2)) SELECT * FROM x", Denied(VOLATILE)),
    probe("query meta", "SELECT (SELECT nextval('victims_id_seq')) AS n", Denied(VOLATILE)),
    probe("query meta", "SELECT id FROM victims WHERE id IN (SELECT pg_advisory_lock(id) FROM victims)", Denied(VOLATILE)),
    probe("query meta", "SELECT CASE WHEN true THEN pg_sleep(0.2) END", Denied(VOLATILE)),
    probe("query meta", "SELECT count(*) FILTER (WHERE pg_notify('x', 'y') IS NULL) FROM victims", Denied(VOLATILE)),
    probe("execute meta", "SELECT pg_advisory_lock(7)", Denied(VOLATILE)),
    // Functions that run SQL text: refused on every grant.
    probe("query meta", "SELECT query_to_xml('select set_config(''statement_timeout'',''0'',false)', true, true, '')", Denied(SQL_TEXT)),
    probe("query meta", "SELECT U&\"query_to_xm\\006c\"('select 1', true, true, '')", Denied(SQL_TEXT)),
    probe("query meta", "SELECT * FROM ts_stat('select to_tsvector(name) from victims')", Denied(SQL_TEXT)),
    probe("query meta", "SELECT table_to_xml('victims', true, true, '')", Denied(SQL_TEXT)),
    probe("query meta", "SELECT database_to_xml(true, true, '')", Denied(SQL_TEXT)),
    probe("execute rw", "SELECT query_to_xml_and_xmlschema('delete from victims', true, true, '')", Denied(SQL_TEXT)),
    probe("transaction rw", "SELECT pg_catalog.cursor_to_xml('c', 1, true, true, '')", Denied(SQL_TEXT)),
    probe("execute rw", "INSERT INTO victims (name) SELECT query_to_xml('select 1', true, true, '')::text", Denied(SQL_TEXT)),
    // Stored expressions (DDL on a ddl grant) are checked by the same rules.
    probe("execute rw", "CREATE TABLE t (a text DEFAULT (query_to_xml('select pg_read_file(''/etc/hostname'')', true, true, ''))::text)", Denied(SQL_TEXT)),
    probe("execute rw", "CREATE TABLE t (a text CHECK (pg_read_file('/etc/hostname') <> ''))", Denied("`pg_read_file` is not allowed")),
    probe("execute rw", "CREATE TABLE t (a text, b text GENERATED ALWAYS AS (query_to_xml('select 1', true, true, '')::text) STORED)", Denied(SQL_TEXT)),
    probe("execute rw", "CREATE INDEX i ON victims ((query_to_xml('select 1', true, true, '')::text))", Denied(SQL_TEXT)),
    probe("execute rw", "CREATE INDEX i ON victims (name) WHERE pg_read_file('/etc/hostname') <> ''", Denied("`pg_read_file` is not allowed")),
    probe("execute rw", "CREATE VIEW t AS SELECT query_to_xml('select 1', true, true, '') AS x", Denied(SQL_TEXT)),
    probe("execute rw", "CREATE MATERIALIZED VIEW t AS SELECT U&\"pg_read_fil\\0065\"('/etc/hostname') AS x", Denied("`pg_read_file` is not allowed")),
    probe("execute rw", "ALTER TABLE victims ALTER COLUMN name SET DEFAULT query_to_xml('select 1', true, true, '')::text", Denied(SQL_TEXT)),
    probe("execute rw", "ALTER TABLE victims ADD CONSTRAINT c CHECK (query_to_xml('select 1', true, true, '') IS NOT NULL)", Denied(SQL_TEXT)),
    probe("execute rw", "ALTER TABLE victims ADD COLUMN x text DEFAULT U&\"query_to_xm\\006c\"('select 1', true, true, '')::text", Denied(SQL_TEXT)),
    probe("execute rw", "CREATE POLICY p ON victims USING (pg_read_file('/etc/hostname') <> '')", Denied("`pg_read_file` is not allowed")),
    probe("execute rw", "CREATE TRIGGER tr BEFORE INSERT ON victims FOR EACH ROW EXECUTE FUNCTION query_to_xml()", Denied(SQL_TEXT)),
    probe("execute rw", "CREATE DOMAIN d AS text DEFAULT query_to_xml('select 1', true, true, '')::text", Denied(SQL_TEXT)),
    probe("execute rw", "CREATE RULE r AS ON INSERT TO victims DO ALSO SELECT pg_read_file('/etc/hostname')", Denied("`pg_read_file` is not allowed")),
    // Where the host cannot see every stored expression, the statement kind is refused.
    probe("execute rw", "CREATE POLICY p ON victims USING (true)", Denied("statements are not allowed")),
    probe("execute rw", "CREATE TRIGGER tr BEFORE INSERT ON victims FOR EACH ROW EXECUTE FUNCTION f()", Denied("statements are not allowed")),
    probe("execute rw", "CREATE DOMAIN d AS text CHECK (VALUE <> '')", Denied("statements are not allowed")),
    probe("execute rw", "CREATE RULE r AS ON INSERT TO victims DO ALSO NOTIFY x", Denied("")),
    // Ordinary reads with immutable and stable functions still work on a read grant.
    probe("query meta", "SELECT now(), lower(name), version() FROM victims ORDER BY id", Allowed),
    probe("query meta", "SELECT count(*) FROM victims", Allowed),
    probe("query meta", "SELECT v.name, upper(v.name) FROM victims v WHERE v.id = 1", Allowed),
    probe("query meta", "SELECT 'pg_sleep'::regproc::text, current_setting('server_version')", Allowed),
    probe("query meta", "EXPLAIN SELECT * FROM victims", Allowed),
    probe("query meta", "SELECT U&\"lowe\\0072\"('ABC')", Allowed),
    probe("transaction meta", "SELECT count(*) FROM victims\nSELECT coalesce(max(id), 0) FROM victims", Allowed),
    probe("execute rw", "ALTER TABLE victims ALTER COLUMN id SET DEFAULT nextval('victims_id_seq')", Allowed),
];

/// The `db-probe` component, built into the suite's own target directory.
fn component() -> PathBuf {
    common::hostile::component("hostile-db", "db-probe").unwrap_or_else(|e| panic!("{e}"))
}

/// The custom step `name` with `payload`, as a run performs it: the error or `ok: …`.
async fn step(
    session: &Session,
    adapter: &LoadedAdapter,
    caps: &Arc<InstanceCaps>,
    name: &str,
    payload: String,
) -> String {
    common::hostile::custom_step(session, adapter, caps, "hostile-db", name, &payload).await
}

/// What no probe may change: the victims' rows, the sequence, tables, large objects, locks.
async fn untouched(db: &tokio_postgres::Client, bystander: &tokio_postgres::Client) -> String {
    let row = db
        .query_one(
            "SELECT (SELECT count(*) FROM victims), \
                    (SELECT last_value FROM victims_id_seq), \
                    (SELECT count(*) FROM pg_class WHERE relname IN ('t', 'i', 'd') \
                        OR relname LIKE 'pg_temp%t'), \
                    (SELECT count(*) FROM pg_largeobject_metadata), \
                    (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'), \
                    (SELECT count(*) FROM pg_constraint WHERE conname = 'c'), \
                    (SELECT count(*) FROM pg_policy)",
            &[],
        )
        .await
        .expect("inspect the database");
    let alive = bystander.query_one("SELECT 1", &[]).await.is_ok();
    format!(
        "rows={} seq={} tables={} large_objects={} advisory_locks={} constraints={} policies={} bystander_alive={alive}",
        row.get::<_, i64>(0),
        row.get::<_, i64>(1),
        row.get::<_, i64>(2),
        row.get::<_, i64>(3),
        row.get::<_, i64>(4),
        row.get::<_, i64>(5),
        row.get::<_, i64>(6),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sql_escape_is_denied_audited_and_the_database_untouched() {
    let Some(pg) = common::pg() else { return };
    let wasm = component();
    // The worst case the operator can consent to: a superuser URL, marked `privileged`. The
    // SQL rules must hold even there (a superuser could read server files).
    let (name, _) = pg.fresh_db_as("hostile_db", "").await;
    let db_url = pg.admin_url(&name);
    let db = common::connect(&db_url).await;
    db.batch_execute(
        "CREATE TABLE victims (id serial PRIMARY KEY, name text);
         INSERT INTO victims (name) VALUES ('a'), ('b'), ('c');",
    )
    .await
    .expect("seed");
    // Another session the adapter must not be able to end.
    let bystander = common::connect(&format!("{db_url}?application_name=bystander")).await;

    let env = common::Env::new();
    env.write_fleet(&format!(
        r#"
[[instance]]
name = "db-probe"
adapter = "{adapter}"

[instance.db.meta]
url = "{db_url}"
access = ["read"]
privileged = true

[instance.db.rw]
url = "{db_url}"
access = ["read", "write", "ddl"]
privileged = true
"#,
        adapter = wasm.display(),
    ));
    let fleet = Fleet::load(&env.fleet()).expect("fleet");
    let instance = fleet.instance("db-probe").expect("instance");
    let mut session = Session::open(&env.data(), EventSink::new(|_| {}))
        .await
        .expect("session");
    session.runtime.set_deadlines(Deadlines {
        pure: Duration::from_secs(1),
        live: Duration::from_secs(20),
    });
    let (adapter, caps) = apply::prepare(&session, instance)
        .await
        .expect("the probe loads");
    caps.set_run(Some("hostile-db".into()));
    let digest = adapter.digest.clone();
    let baseline = untouched(&db, &bystander).await;
    assert!(baseline.contains("bystander_alive=true"), "{baseline}");

    let mut failures = Vec::new();
    for p in PROBES {
        let before = common::audit_records(session.audit.path()).len();
        let payload = format!("{}\n{}", p.call, p.sql);
        let outcome = step(&session, &adapter, &caps, "attack", payload).await;
        eprintln!(
            "{:<18} {:<90.90} -> {}",
            p.call,
            p.sql.replace('\n', " | "),
            outcome.chars().take(200).collect::<String>()
        );
        let records = common::audit_records(session.audit.path());
        let new = &records[before..];
        let row = format!("`{}` `{}`", p.call, p.sql);
        // Every db call's record carries the statements' classes and fingerprints.
        for r in new.iter().filter(|r| r.event.capability == "db") {
            if r.event.sql.is_empty()
                || r.event
                    .sql
                    .iter()
                    .any(|s| s.sha256.len() != 64 || s.class.is_empty())
            {
                failures.push(format!(
                    "{row}: a db record without its SQL fingerprint: {r:?}"
                ));
            }
        }
        match p.expect {
            Denied(fragment) => {
                if outcome.starts_with("ok: ") || !outcome.contains(fragment) {
                    failures.push(format!(
                        "{row}: expected a denial with `{fragment}`, got: {outcome:.400}"
                    ));
                } else if !outcome.contains("denied") && !outcome.contains("invalid request") {
                    failures.push(format!("{row}: not reported as a denial: {outcome:.400}"));
                }
                let audited = new.iter().any(|r| {
                    r.event.adapter_digest == digest
                        && r.event.decision == Decision::Denied
                        && r.event.reason.as_deref().unwrap_or("").contains(fragment)
                });
                if !audited {
                    failures.push(format!(
                        "{row}: no denied audit record with `{fragment}`: {new:#?}"
                    ));
                }
            }
            Allowed => {
                if !outcome.starts_with("ok: ") {
                    failures.push(format!(
                        "{row}: an ordinary statement was refused: {outcome:.400}"
                    ));
                }
            }
        }
        let now = untouched(&db, &bystander).await;
        if now != baseline {
            failures.push(format!("{row}: the database changed: {baseline} → {now}"));
        }
        // The host serves on: the same component answers a benign step.
        let benign = step(&session, &adapter, &caps, "benign", String::new()).await;
        assert_eq!(benign, "ok: benign", "after {row}");
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n\n")
    );

    // The same statement with other literals shares a fingerprint.
    let records = common::audit_records(session.audit.path());
    let print = |needle: &str| {
        records
            .iter()
            .flat_map(|r| r.event.sql.iter())
            .find(|s| s.fingerprint.contains(needle))
            .map(|s| s.sha256.clone())
    };
    assert!(print("nextval").is_some(), "fingerprints are recorded");
    let report = upshift::audit::verify(session.audit.path()).expect("verify");
    assert!(report.first_problem.is_none(), "the audit chain is intact");
}
