//! The hostile MySQL / MariaDB suite: the payload-driven hostile adapter (`db-probe`, built from
//! tests/adapters/hostile) sends each escape of issue 20's MySQL rows, with variations (case,
//! spacing, comments, quoting, version numbers), through the path an adapter uses (a plan's
//! custom step → `db.query` / `db.execute` / `db.transaction`) to a real MariaDB. Every attack
//! must be denied with a message naming what was refused, leave a denied audit record, and leave
//! the server as it was: the victim table and its rows, no trigger / view / routine / event, no
//! file written, no other table. Ordinary statements keep working. Listed in
//! docs/hostile-adapters.md.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use upshift::audit::Decision;
use upshift::caps::{EventSink, InstanceCaps};
use upshift::fleet::Fleet;
use upshift::ops::{Session, apply};
use upshift::runtime::{Deadlines, LoadedAdapter};

/// What a probe must end in.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// Denied: the error and a denied audit record's reason both contain this fragment.
    Denied(&'static str),
    /// Allowed: the step succeeds.
    Allowed,
}

use Expect::{Allowed, Denied};

const EXECUTABLE: &str = "executable comments and optimizer hints";
const OUTSIDE: &str = "but the binding is for database";
const NO_DDL: &str = "binding `meta` is not granted `ddl`";
const READS_ONLY: &str = "`query` runs reads only";
const STORED: &str = "a stored program";
const DEFINER: &str = "a `DEFINER` clause";
const USER_VARIABLE: &str = "the user variable";
const OUTFILE: &str = "`INTO OUTFILE` is refused on every grant";
const LOAD_FILE: &str = "the function `load_file` is refused";
const SLEEP: &str = "the function `sleep` is refused";
const GET_LOCK: &str = "the function `get_lock` is refused";
const SET_STATEMENT: &str = "`SET STATEMENT … FOR` is refused";

/// The probes: `(call and binding, SQL, expectation)`. `{db}` is the bound database, `{other}`
/// another database on the same server, `{file}` a path the server could write.
#[rustfmt::skip]
const PROBES: &[(&str, &str, Expect)] = &[
    // An executable comment dropped the victim table on a read grant.
    ("query meta", "/*!DROP TABLE IF EXISTS victim, `*/SELECT 1/*!`*/", Denied(EXECUTABLE)),
    ("transaction meta", "/*!DROP TABLE IF EXISTS victim, `*/SELECT 1/*!`*/", Denied(EXECUTABLE)),
    ("execute meta", "/*!50000 DROP TABLE victim */", Denied(EXECUTABLE)),
    ("execute rw", "/*!99999 DROP TABLE victim */ SELECT 1", Denied(EXECUTABLE)),
    ("query meta", "SELECT 1 /*M!100000 , (SELECT 1 FROM victim) */", Denied(EXECUTABLE)),
    ("query meta", "SELECT (SELECT 1 /*!, 2 */) AS x", Denied(EXECUTABLE)),
    ("query meta", "SELECT /*+ SET_VAR(max_statement_time=0) */ 1", Denied(EXECUTABLE)),
    // Comments as the server reads them: `--` plus a tab or newline is a comment there.
    ("query meta", "SELECT 1 --\t'\n, LOAD_FILE('/etc/hostname') -- '", Denied("`--` followed by a tab")),
    ("query meta", "SELECT 1 # '\n, LOAD_FILE('/etc/hostname')", Denied(LOAD_FILE)),
    ("query meta", "SELECT 'a\\', LOAD_FILE('/etc/hostname') -- '", Denied("NO_BACKSLASH_ESCAPES")),
    // A trigger, a DEFINER view and a procedure were created on a read grant.
    ("query meta", "/*!CREATE TRIGGER tr BEFORE INSERT ON victim FOR EACH ROW SET NEW.name = 'x'*/", Denied(EXECUTABLE)),
    ("execute rw", "CREATE TRIGGER tr BEFORE INSERT ON victim FOR EACH ROW SET NEW.name = 'x'", Denied(STORED)),
    ("execute rw", "create definer = current_user trigger tr before insert on victim for each row set new.name = 'x'", Denied(STORED)),
    ("query meta", "/*!CREATE DEFINER=CURRENT_USER SQL SECURITY DEFINER VIEW v AS SELECT * FROM victim*/", Denied(EXECUTABLE)),
    ("execute rw", "CREATE DEFINER=CURRENT_USER SQL SECURITY DEFINER VIEW v AS SELECT * FROM victim", Denied(DEFINER)),
    ("execute rw", "CREATE ALGORITHM = MERGE DEFINER = `root`@`localhost` VIEW v AS SELECT * FROM victim", Denied(DEFINER)),
    ("query meta", "/*!CREATE PROCEDURE p() SELECT 1*/", Denied(EXECUTABLE)),
    ("execute rw", "CREATE PROCEDURE p() SELECT 1", Denied(STORED)),
    ("execute rw", "CREATE FUNCTION f() RETURNS INT RETURN 1", Denied(STORED)),
    ("execute rw", "CREATE EVENT e ON SCHEDULE EVERY 1 HOUR DO DELETE FROM victim", Denied(STORED)),
    // DDL commits implicitly: a read grant never gets it, whatever the call.
    ("query meta", "DROP TABLE victim", Denied(READS_ONLY)),
    ("execute meta", "DROP TABLE victim", Denied(NO_DDL)),
    ("transaction meta", "SELECT 1\nDROP TABLE victim", Denied(NO_DDL)),
    ("execute meta", "CREATE TABLE t2 (a INT)", Denied(NO_DDL)),
    ("execute meta", "CREATE VIEW v AS SELECT * FROM victim", Denied(NO_DDL)),
    ("execute meta", "TRUNCATE TABLE victim", Denied(NO_DDL)),
    ("execute meta", "RENAME TABLE victim TO gone", Denied("")),
    ("execute meta", "CREATE TEMPORARY TABLE t2 (a INT)", Denied(NO_DDL)),
    // Files on the database server.
    ("query meta", "SELECT * FROM victim /*! INTO OUTFILE '{file}' */", Denied(EXECUTABLE)),
    ("query meta", "SELECT * FROM victim INTO OUTFILE '{file}'", Denied(OUTFILE)),
    ("execute rw", "SELECT * FROM victim INTO OUTFILE '{file}'", Denied(OUTFILE)),
    ("execute rw", "SELECT name FROM victim LIMIT 1 into dumpfile '{file}'", Denied("`INTO DUMPFILE`")),
    ("query meta", "SELECT 1 /*!, LOAD_FILE('/etc/hostname') */", Denied(EXECUTABLE)),
    ("query meta", "SELECT `load_file`('/etc/hostname')", Denied(LOAD_FILE)),
    ("query meta", "SELECT `LOAD_FILE`('/etc/hostname')", Denied(LOAD_FILE)),
    ("query meta", "SELECT Load_File /* x */ ('/etc/hostname')", Denied(LOAD_FILE)),
    ("query meta", "SELECT `{db}`.`load_file`('/etc/hostname')", Denied(LOAD_FILE)),
    ("execute rw", "INSERT INTO victim (id, name) VALUES (99, LOAD_FILE('/etc/hostname'))", Denied(LOAD_FILE)),
    ("execute rw", "LOAD DATA INFILE '/etc/hostname' INTO TABLE victim", Denied("`LOAD DATA` / `LOAD XML`")),
    // A per-statement override of the host's statement limit, and sleeps.
    ("query meta", "/*!SET STATEMENT max_statement_time=0 FOR*/ SELECT SLEEP(330)", Denied(EXECUTABLE)),
    ("query meta", "SET STATEMENT max_statement_time=0 FOR SELECT SLEEP(330)", Denied(SET_STATEMENT)),
    ("execute rw", "set statement max_statement_time = 0 for select 1", Denied(SET_STATEMENT)),
    ("query meta", "SELECT SLEEP(330)", Denied(SLEEP)),
    ("query meta", "SELECT `sleep`(330)", Denied(SLEEP)),
    ("execute rw", "SELECT BENCHMARK(100000000, MD5('x'))", Denied("the function `benchmark` is refused")),
    // Other schemas.
    ("query meta", "SELECT * FROM {other}.secret", Denied(OUTSIDE)),
    ("query meta", "SELECT * FROM `{other}` . `secret`", Denied(OUTSIDE)),
    ("query meta", "SELECT * FROM victim WHERE id IN (SELECT id FROM {other}.secret)", Denied(OUTSIDE)),
    ("query meta", "SELECT * FROM victim AS {other}, {other}.secret", Denied(OUTSIDE)),
    ("transaction meta", "SELECT 1\nSELECT * FROM {other}.secret", Denied(OUTSIDE)),
    ("query meta", "SELECT user, password FROM mysql.user", Denied(OUTSIDE)),
    ("query meta", "SELECT * FROM `mysql`.`user`", Denied(OUTSIDE)),
    ("query meta", "SELECT * FROM performance_schema.threads", Denied(OUTSIDE)),
    ("execute rw", "INSERT INTO {other}.secret (id, secret) VALUES (2, 'x')", Denied(OUTSIDE)),
    ("execute rw", "CREATE TABLE t2 AS SELECT * FROM {other}.secret", Denied(OUTSIDE)),
    ("query meta", "SELECT * FROM \"{other}\".\"secret\"", Denied(OUTSIDE)),
    ("execute rw", "ALTER TABLE victim RENAME TO {other}.victim", Denied(OUTSIDE)),
    ("execute rw", "CREATE TABLE {other} LIKE {other}.secret", Denied(OUTSIDE)),
    ("query meta", "SELECT info FROM information_schema.processlist", Denied("other sessions' statements")),
    ("query meta", "USE {other}", Denied("`USE` is refused")),
    // Session state that would outlive the statement.
    ("query meta", "SELECT GET_LOCK('upshift', 0)", Denied(GET_LOCK)),
    ("execute rw", "SELECT get_lock('upshift', 0)", Denied(GET_LOCK)),
    ("query meta", "SELECT IS_USED_LOCK('upshift')", Denied("the function `is_used_lock` is refused")),
    ("query meta", "SELECT 1 INTO @v", Denied(USER_VARIABLE)),
    ("query meta", "SELECT name FROM victim LIMIT 1 INTO @`v`", Denied(USER_VARIABLE)),
    ("query meta", "SELECT @v := 42", Denied(USER_VARIABLE)),
    ("execute rw", "SET @v = 42", Denied("`SET` is refused on every grant")),
    ("transaction rw", "SELECT @v := 42\nSELECT @v", Denied(USER_VARIABLE)),
    ("execute rw", "HANDLER victim OPEN", Denied("`HANDLER` is refused")),
    ("execute rw", "LOCK TABLES victim WRITE", Denied("`LOCK TABLES`")),
    ("execute rw", "DO SLEEP(5)", Denied("`DO` is refused")),
    ("execute rw", "CALL p()", Denied("`CALL` is refused")),
    // Ordinary statements keep working.
    ("query meta", "SELECT count(*) FROM victim", Allowed),
    ("query meta", "SELECT `name` FROM `{db}`.`victim` WHERE id = 1", Allowed),
    ("query meta", "SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE()", Allowed),
    ("query meta", "SELECT @@version, LOWER(name) FROM victim -- a comment\nORDER BY id", Allowed),
    ("transaction meta", "SELECT count(*) FROM victim\nSELECT max(id) FROM victim # done", Allowed),
    ("execute rw", "UPDATE victim SET name = name WHERE id = 1", Allowed),
];

/// The `db-probe` component, built into the suite's own target directory.
fn component() -> PathBuf {
    common::hostile::component("hostile-mysql", "db-probe").unwrap_or_else(|e| panic!("{e}"))
}

/// The custom step `name` with `payload`, as a run performs it: the error or `ok: …`.
async fn step(
    session: &Session,
    adapter: &LoadedAdapter,
    caps: &Arc<InstanceCaps>,
    name: &str,
    payload: String,
) -> String {
    common::hostile::custom_step(session, adapter, caps, "hostile-mysql", name, &payload).await
}

/// What no probe may change: the victim's rows, the bound database's tables, stored programs
/// and views, the other database's secret, and the file an `INTO OUTFILE` would write.
async fn untouched(conn: &mut mysql_async::Conn, db: &str, other: &str, file: &Path) -> String {
    let victim: Option<(i64, Option<String>)> = conn
        .query_first(format!(
            "SELECT COUNT(*), GROUP_CONCAT(name ORDER BY id) FROM `{db}`.victim"
        ))
        .await
        .unwrap_or(None);
    let tables = common::mysql::tables(conn, db).await.join(",");
    let mut objects = Vec::new();
    for (what, sql) in [
        (
            "triggers",
            "SELECT COUNT(*) FROM information_schema.triggers WHERE trigger_schema = ?",
        ),
        (
            "views",
            "SELECT COUNT(*) FROM information_schema.views WHERE table_schema = ?",
        ),
        (
            "routines",
            "SELECT COUNT(*) FROM information_schema.routines WHERE routine_schema = ?",
        ),
        (
            "events",
            "SELECT COUNT(*) FROM information_schema.events WHERE event_schema = ?",
        ),
    ] {
        let n: Option<i64> = conn
            .exec_first(sql, (db,))
            .await
            .expect("inspect information_schema");
        objects.push(format!("{what}={}", n.unwrap_or(-1)));
    }
    let secret: Option<i64> = conn
        .query_first(format!("SELECT COUNT(*) FROM `{other}`.secret"))
        .await
        .expect("count the secret");
    format!(
        "victim={victim:?} tables=[{tables}] {} secret_rows={} file_written={}",
        objects.join(" "),
        secret.unwrap_or(-1),
        file.exists()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mysql_escape_is_denied_audited_and_the_server_untouched() {
    let Some(my) = common::mysql::mysql() else {
        return;
    };
    let wasm = component();
    let (db, url) = my.fresh_db("hostile_mysql").await;
    let (other, _) = my.fresh_db("other").await;
    let mut admin = my.conn("").await;
    for seed in [
        format!("CREATE TABLE `{db}`.victim (id INT PRIMARY KEY, name TEXT)"),
        format!("INSERT INTO `{db}`.victim VALUES (1, 'a'), (2, 'b'), (3, 'c')"),
        format!("CREATE TABLE `{other}`.secret (id INT PRIMARY KEY, secret TEXT)"),
        format!("INSERT INTO `{other}`.secret VALUES (1, 'the other database')"),
    ] {
        admin.query_drop(seed).await.expect("seed");
    }
    // A path the server (running as `mysql`, no secure_file_priv) could write.
    let file = std::env::temp_dir().join(format!("hostile-mysql-{}.out", std::process::id()));
    let _ = std::fs::remove_file(&file);

    // The worst case the operator can consent to: the server's root account, marked
    // `privileged`. The SQL rules must hold even there (root has FILE and every schema).
    let env = common::Env::new();
    env.write_fleet(&format!(
        r#"
[[instance]]
name = "db-probe"
adapter = "{adapter}"

[instance.db.meta]
url = "{url}"
access = ["read"]
privileged = true

[instance.db.rw]
url = "{url}"
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
    caps.set_run(Some("hostile-mysql".into()));
    let digest = adapter.digest.clone();
    let baseline = untouched(&mut admin, &db, &other, &file).await;
    assert!(
        baseline.contains("tables=[victim]") && baseline.contains("file_written=false"),
        "{baseline}"
    );

    let mut failures = Vec::new();
    for (call, template, expect) in PROBES {
        let sql = template
            .replace("{db}", &db)
            .replace("{other}", &other)
            .replace("{file}", &file.display().to_string());
        let before = common::audit_records(session.audit.path()).len();
        let started = Instant::now();
        let outcome = step(
            &session,
            &adapter,
            &caps,
            "attack",
            format!("{call}\n{sql}"),
        )
        .await;
        let took = started.elapsed();
        eprintln!(
            "{:<18} {:<90.90} -> {}",
            call,
            sql.replace('\n', " | "),
            outcome.chars().take(200).collect::<String>()
        );
        let records = common::audit_records(session.audit.path());
        let new = &records[before..];
        let row = format!("`{call}` `{sql}`");
        match expect {
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
                        && !r.event.sql.is_empty()
                });
                if !audited {
                    failures.push(format!(
                        "{row}: no denied audit record with `{fragment}` and the statement's fingerprint: {new:#?}"
                    ));
                }
                // Refused before the server: no sleep ran, whatever it asked for.
                if took > Duration::from_secs(5) {
                    failures.push(format!("{row}: the denial took {took:?}"));
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
        let now = untouched(&mut admin, &db, &other, &file).await;
        if now != baseline {
            failures.push(format!("{row}: the server changed: {baseline} → {now}"));
        }
        let benign = step(&session, &adapter, &caps, "benign", String::new()).await;
        assert_eq!(benign, "ok: benign", "after {row}");
    }
    let _ = std::fs::remove_file(&file);
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    // The audit shows that a statement carried an executable comment (not what it held).
    let marked = common::audit_records(session.audit.path())
        .iter()
        .flat_map(|r| r.event.sql.iter())
        .any(|s| s.fingerprint.starts_with("/*!…*/ select"));
    assert!(marked, "an executable comment is marked in the fingerprint");
    let report = upshift::audit::verify(session.audit.path()).expect("verify");
    assert!(report.first_problem.is_none(), "the audit chain is intact");
}
