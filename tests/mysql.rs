//! MySQL / MariaDB bindings on a real MariaDB: statements classified in the MySQL dialect and
//! checked against the grant, and backups taken with `--single-transaction`, verified, trial
//! restored table by table, refused when damaged, and swapped back in.

mod common;

use std::sync::Arc;

use mysql_async::prelude::Queryable;
use upshift::caps::db::{BackupSource, DbBackend};
use upshift::caps::{EventSink, InstanceCaps};
use upshift::fleet::Fleet;
use upshift::ops::Session;
use upshift::ops::apply;
use upshift::runtime::LoadedAdapter;

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
    let (db, url) = my.fresh_db("caps").await;
    seed(&mut my.conn(&db).await).await;
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
    let backend = DbBackend::new(&url).expect("backend");
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
    let scratch = format!("{db}_trial");
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
    let staging = format!("{db}_restoring");
    backend
        .materialize(&staging, &source)
        .await
        .expect("restore");
    backend
        .swap_in(&staging, &format!("{db}_kept"))
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
        .conn(&format!("{db}_kept"))
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
        .materialize(&format!("{db}_never"), &source)
        .await
        .expect_err("damaged");
    assert!(err.to_string().contains("dump.sql.gz has changed"), "{err}");
    let exists: Option<i64> = my
        .conn("")
        .await
        .exec_first(
            "SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name = ?",
            (format!("{db}_never"),),
        )
        .await
        .expect("schemata");
    assert_eq!(exists, Some(0));
}
