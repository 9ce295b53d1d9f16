//! What the host trusts between runs, attacked by someone who can write the files it keeps
//! (issue 14): a compiled artifact swapped in the cache directory, capabilities edited in
//! `upshift.lock`, and the audit log's last records removed or rewritten. Each is driven through
//! the real `upshift` CLI (and, for capability calls, the same session and guard an adapter's
//! imports use), and each must be refused or reported, never trusted.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{Env, stderr};
use upshift::audit::{AuditEvent, AuditLog, AuditRecord, Decision};
use upshift::caps::EventSink;
use upshift::fleet::Fleet;
use upshift::ops::{Session, apply};

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn built(name: &str) -> PathBuf {
    Path::new(upshift::adapters::BUILT_DIR).join(name)
}

/// `upshift` with `--data data` (another data directory than the environment's).
fn upshift_in(env: &Env, data: &Path, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_upshift"))
        .arg("--fleet")
        .arg(env.fleet())
        .arg("--data")
        .arg(data)
        .args(args)
        .env_remove("UPSHIFT_FLEET")
        .env_remove("UPSHIFT_DATA")
        .output()
        .expect("run upshift")
}

/// The test-misbehaving adapter as the file `adapters/m.wasm`, instance `m`, with `extra` added
/// to its fleet entry.
fn misbehaving_fleet(env: &Env, extra: &str) -> PathBuf {
    let dir = env.dir.path().join("adapters");
    std::fs::create_dir_all(&dir).expect("adapters dir");
    let wasm = dir.join("m.wasm");
    if !wasm.exists() {
        std::fs::copy(built("test-misbehaving.wasm"), &wasm).expect("copy adapter");
    }
    env.write_fleet(&format!(
        "[[instance]]\nname = \"m\"\nadapter = \"adapters/m.wasm\"\n{extra}"
    ));
    wasm
}

/// The cache entry (`.cwasm`) of the adapter whose digest is `digest`.
fn artifact_of(cache: &Path, digest: &str) -> PathBuf {
    std::fs::read_dir(cache)
        .expect("cache dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.extension().is_some_and(|x| x == "cwasm")
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(digest))
        })
        .unwrap_or_else(|| panic!("no artifact of {digest} in {}", cache.display()))
}

/// Plan instance `m` in `data`: it must succeed with the misbehaving adapter's own code (its
/// `describe` matches its manifest, and the report names its product). The warnings printed.
fn plan_m(env: &Env, data: &Path) -> String {
    let out = upshift_in(env, data, &["plan", "m", "--to", "2.0.0", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report = common::json(&out);
    assert_eq!(report["product"], "misbehaving", "{report}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_cached_artifact_runs_only_if_the_state_store_recorded_its_digest() {
    let env = Env::new();
    let wasm = misbehaving_fleet(&env, "");
    let data = env.data();
    let cache = data.join("cache");
    let m = upshift::runtime::digest(&std::fs::read(&wasm).expect("wasm"));
    let b = upshift::runtime::digest(&std::fs::read(built("bytebase.wasm")).expect("wasm"));

    // Both adapters compiled and cached: `m` through its instance, Bytebase offline.
    assert!(!plan_m(&env, &data).contains("cache entry"));
    let out = env.upshift(&[
        "plan",
        "--product",
        "bytebase",
        "--from",
        "3.10.0",
        "--to",
        "3.11.1",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let m_artifact = artifact_of(&cache, &m);
    let b_artifact = artifact_of(&cache, &b);
    assert!(!plan_m(&env, &data).contains("cache entry"), "a hit");

    // Bytebase's artifact — and every file beside it, such as a checksum — put under `m`'s name.
    let swap_in_bytebase = || {
        for entry in std::fs::read_dir(&cache)
            .expect("cache")
            .filter_map(Result::ok)
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(rest) = name.strip_prefix(&b) {
                std::fs::copy(entry.path(), cache.join(format!("{m}{rest}"))).expect("copy");
            }
        }
    };
    swap_in_bytebase();
    let b_bytes = std::fs::read(&b_artifact).expect("b artifact");
    assert_eq!(std::fs::read(&m_artifact).expect("swapped"), b_bytes);
    let warned = plan_m(&env, &data);
    assert!(
        warned.contains("is not the one this host recorded") && warned.contains("recompiled"),
        "the replaced entry is noted: {warned}"
    );
    assert_ne!(
        std::fs::read(&m_artifact).expect("rebuilt"),
        b_bytes,
        "the entry is rebuilt from the adapter"
    );
    assert!(
        !plan_m(&env, &data).contains("cache entry"),
        "trusted again"
    );

    // A damaged and a truncated entry are noted and rebuilt, never loaded.
    let good = std::fs::read(&m_artifact).expect("artifact");
    let mut damaged = good.clone();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0xff;
    for bad in [damaged, good[..good.len() / 3].to_vec(), Vec::new()] {
        std::fs::write(&m_artifact, &bad).expect("damage");
        let warned = plan_m(&env, &data);
        assert!(
            warned.contains("is not the one this host recorded"),
            "{warned}"
        );
        assert_eq!(
            std::fs::read(&m_artifact).expect("rebuilt").len(),
            good.len()
        );
    }

    // A second data directory sharing the cache: its state recorded nothing, so even an entry
    // planted before it ever ran (Bytebase's, with a matching checksum beside it) is not loaded.
    let other = env.dir.path().join("other-data");
    std::fs::create_dir_all(&other).expect("other data");
    std::os::unix::fs::symlink(&cache, other.join("cache")).expect("share the cache");
    swap_in_bytebase();
    let warned = plan_m(&env, &other);
    assert!(
        warned.contains("was not recorded by this host's state"),
        "{warned}"
    );
    assert!(!plan_m(&env, &other).contains("cache entry"), "its own now");
    // The first data directory still runs the right adapter off the shared entry.
    plan_m(&env, &data);
}

/// The approved entry of `upshift.lock`, edited with `edit` (a TOML editor, not text).
fn edit_lock(env: &Env, edit: impl FnOnce(&mut toml_edit::Table)) {
    let path = env.dir.path().join("upshift.lock");
    let mut doc: toml_edit::DocumentMut = std::fs::read_to_string(&path)
        .expect("lock file")
        .parse()
        .expect("lock TOML");
    let entry = doc["adapter"]
        .as_array_of_tables_mut()
        .and_then(|a| a.get_mut(0))
        .expect("one approved adapter");
    edit(entry);
    std::fs::write(&path, doc.to_string()).expect("write lock");
}

/// An edit of a lock entry.
type LockEdit = fn(&mut toml_edit::Table);

/// The approved access of `binding` in a lock entry, to edit.
fn access(entry: &mut toml_edit::Table, binding: &str) -> toml_edit::Array {
    entry["bindings"][binding]["access"]
        .as_array()
        .cloned()
        .expect("access list")
}

fn set_access(entry: &mut toml_edit::Table, binding: &str, list: toml_edit::Array) {
    entry["bindings"][binding]["access"] = toml_edit::value(list);
}

/// Every record of the data directory's audit log.
fn audit_records(data: &Path) -> Vec<AuditRecord> {
    common::audit_records(&data.join("audit.jsonl"))
}

/// Run `step` (a capability call of the misbehaving adapter) in instance `m` through a
/// session, as `upshift apply` would: the summary is the host's answer to the adapter.
async fn run_step(env: &Env, step: &str) -> String {
    let fleet = Fleet::load(&env.fleet()).expect("fleet");
    let session = Session::open(&env.data(), EventSink::discard())
        .await
        .expect("session");
    let (adapter, caps) = apply::prepare(&session, fleet.instance("m").expect("m"))
        .await
        .expect("prepare");
    let step = step.to_string();
    session
        .runtime
        .call(
            &adapter,
            Some(caps),
            "run-step",
            session.runtime.deadlines().live,
            async |a, s| a.call_run_step(s, &step, "").await,
        )
        .await
        .expect("no trap")
        .expect("answers")
        .summary
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lock_files_approval_is_the_ceiling_of_the_grant() {
    let env = Env::new();
    let files = env.dir.path().join("files");
    std::fs::create_dir_all(&files).expect("files");
    std::fs::write(files.join("hello.txt"), "hello").expect("file");
    let pg = common::pg();
    let db = match pg {
        Some(pg) => {
            let (_, url) = pg.fresh_db_as("lockceil", "").await;
            common::connect(&url)
                .await
                .batch_execute(
                    "CREATE TABLE principal (id int); INSERT INTO principal VALUES (1), (2);",
                )
                .await
                .expect("seed");
            Some(url)
        }
        None => None,
    };
    let bind_files = format!("[instance.files.data]\npath = \"{}\"\n", files.display());
    let bind_db = db
        .as_ref()
        .map(|url| format!("[instance.db.meta]\nurl = \"{url}\"\n"))
        .unwrap_or_default();
    misbehaving_fleet(&env, &format!("{bind_files}{bind_db}"));
    let out = env.upshift(&["lock", "--approve"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let lock = env.dir.path().join("upshift.lock");
    let approved = std::fs::read_to_string(&lock).expect("lock");
    assert!(run_step(&env, "files-read").await.starts_with("ok:"));

    // Narrowed by hand: `read` on `data` taken away. The adapter's read is denied, naming the
    // lock file, and audited; the adapter still loads and plans.
    edit_lock(&env, |entry| {
        let mut list = access(entry, "data");
        list.retain(|v| v.as_str() != Some("read"));
        set_access(entry, "data", list);
    });
    let out = env.upshift(&["plan", "m", "--to", "2.0.0", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let answer = run_step(&env, "files-read").await;
    let lock_shown = lock.display().to_string();
    assert!(
        answer.contains("binding `data` is not granted `read`")
            && answer.contains(&format!(
                "(the lock file {lock_shown} approves only restore, snapshot)"
            )),
        "{answer}"
    );
    let last = audit_records(&env.data()).pop().expect("a record");
    assert_eq!(
        (last.event.decision, last.event.operation.as_str()),
        (Decision::Denied, "read")
    );
    assert!(
        last.event
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("the lock file")),
        "{last:?}"
    );

    // A whole binding removed from the approval: nothing on it is granted.
    edit_lock(&env, |entry| {
        entry["bindings"]
            .as_table_like_mut()
            .expect("bindings")
            .remove("data");
    });
    let answer = run_step(&env, "files-read").await;
    assert!(answer.contains("approves nothing on it"), "{answer}");

    // A database write taken away: the DELETE is denied and no row is gone.
    if let Some(url) = &db {
        std::fs::write(&lock, &approved).expect("restore lock");
        edit_lock(&env, |entry| {
            let mut list = access(entry, "meta");
            list.retain(|v| v.as_str() != Some("write"));
            set_access(entry, "meta", list);
        });
        let answer = run_step(&env, "db-write").await;
        assert!(
            answer.contains("binding `meta` is not granted `write` (the lock file"),
            "{answer}"
        );
        let rows: i64 = common::connect(url)
            .await
            .query_one("SELECT count(*) FROM principal", &[])
            .await
            .expect("count")
            .get(0);
        assert_eq!(rows, 2, "the table is untouched");
        assert!(run_step(&env, "db-read").await.starts_with("ok:"));
    }

    // Widened by hand: more than the adapter asks for is refused at load, naming the file, the
    // entry and the fix; nothing runs.
    let widenings: [(&str, LockEdit); 3] = [
        ("+ data (files): adds write", |entry| {
            let mut list = access(entry, "data");
            list.push("write");
            set_access(entry, "data", list);
        }),
        ("+ extra: new db binding (read)", |entry| {
            let mut extra = toml_edit::Table::new();
            extra["kind"] = toml_edit::value("db");
            let mut list = toml_edit::Array::new();
            list.push("read");
            extra["access"] = toml_edit::value(list);
            entry["bindings"]["extra"] = toml_edit::Item::Table(extra);
        }),
        ("! data: was a files binding, now a db binding", |entry| {
            entry["bindings"]["data"]["kind"] = toml_edit::value("db");
        }),
    ];
    for (change, widen) in widenings {
        std::fs::write(&lock, &approved).expect("restore lock");
        edit_lock(&env, widen);
        let records = audit_records(&env.data()).len();
        let out = env.upshift(&["plan", "m", "--to", "2.0.0"]);
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains(&format!("lock file {lock_shown}, entry `adapters/m.wasm`"))
                && err.contains("approves more than the adapter asks for")
                && err.contains(change)
                && err.contains("upshift lock --approve"),
            "{err}"
        );
        assert_eq!(audit_records(&env.data()).len(), records, "nothing ran");
    }

    // The fleet file granting what the lock does not approve is refused the same way.
    std::fs::write(&lock, &approved).expect("restore lock");
    edit_lock(&env, |entry| {
        let mut list = access(entry, "data");
        list.retain(|v| v.as_str() != Some("read"));
        set_access(entry, "data", list);
    });
    misbehaving_fleet(
        &env,
        &format!("{bind_files}access = [\"read\", \"snapshot\"]\n{bind_db}"),
    );
    let out = env.upshift(&["plan", "m", "--to", "2.0.0"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("grants access `read` on [instance.files.data]")
            && err.contains("does not approve (it approves: restore, snapshot)")
            && err
                .contains("remove `read` from `access` in [instance.files.data] of the fleet file"),
        "{err}"
    );
    // Approving again keeps the narrowing (`lock` shows it) and still refuses the fleet's grant.
    let out = env.upshift(&["lock", "--approve"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = env.upshift(&["lock"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("approved, narrowed in the lock file: - data (files): drops read"),
        "{}",
        stdout(&out)
    );
    let out = env.upshift(&["plan", "m", "--to", "2.0.0"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    // A widened entry is shown as such and replaced by what the adapter asks for on approval.
    std::fs::write(&lock, &approved).expect("restore lock");
    edit_lock(&env, |entry| {
        let mut list = access(entry, "data");
        list.push("write");
        set_access(entry, "data", list);
    });
    let out = env.upshift(&["lock"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("approves more than it asks for (+ data (files): adds write)"),
        "{}",
        stdout(&out)
    );
    let out = env.upshift(&["lock", "--approve"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&lock).expect("lock"), approved);
    let out = env.upshift(&["plan", "m", "--to", "2.0.0"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

fn verify(env: &Env) -> (Option<i32>, String, serde_json::Value) {
    let text = env.upshift(&["audit", "verify"]);
    let json = env.upshift(&["audit", "verify", "--json"]);
    assert_eq!(text.status.code(), json.status.code());
    (text.status.code(), stdout(&text), common::json(&json))
}

#[test]
fn the_audit_logs_head_is_anchored_so_a_lost_or_rewritten_tail_shows() {
    let env = Env::new();
    misbehaving_fleet(&env, "");
    // Records written by real runs: each plan's capability calls are denied and audited.
    for _ in 0..3 {
        let out = env.upshift(&["plan", "m", "--to", "4.0.0-calls", "--json"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    }
    let log = env.data().join("audit.jsonl");
    let original = std::fs::read_to_string(&log).expect("audit log");
    let lines: Vec<&str> = original.lines().collect();
    let n = lines.len();
    assert!(n >= 12, "{n} records");
    let (code, text, _) = verify(&env);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains(&format!(
            "{n} records, chain intact; head anchored in the state store at {n} records"
        )),
        "{text}"
    );

    let write = |text: String| std::fs::write(&log, text).expect("write log");
    let keep = |k: usize| lines[..k].join("\n") + "\n";
    // Removed tails: the last line, the last three, everything.
    for (removed, says) in [
        (
            1,
            format!(
                "{n} records anchored, {} found; the last record was removed",
                n - 1
            ),
        ),
        (
            3,
            format!(
                "{n} records anchored, {} found; the last 3 were removed",
                n - 3
            ),
        ),
        (
            n,
            format!("{n} records anchored, 0 found; the last {n} were removed"),
        ),
    ] {
        write(if removed == n {
            String::new()
        } else {
            keep(n - removed)
        });
        let (code, text, json) = verify(&env);
        assert_eq!(code, Some(1), "{text}");
        assert!(text.contains("TAMPERED") && text.contains(&says), "{text}");
        assert_eq!(json["problem"]["kind"], "removed", "{json}");
        assert_eq!(json["anchored"], n as u64, "{json}");
        // Nothing more is appended to it: the host refuses to run, and says how to go on.
        let out = env.upshift(&["plan", "m", "--to", "2.0.0"]);
        assert_ne!(out.status.code(), Some(0), "{}", stderr(&out));
        assert!(
            stderr(&out).contains(&says)
                && stderr(&out).contains("upshift audit verify --reanchor"),
            "{}",
            stderr(&out)
        );
    }

    // The last line cut short mid-way.
    write(original[..original.len() - lines[n - 1].len() / 2].to_string());
    let (code, text, json) = verify(&env);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains(&format!("line {n}: is not a complete audit record"))
            && text.contains(&format!("{n} records anchored, {} intact", n - 1)),
        "{text}"
    );
    assert_eq!(json["problem"]["kind"], "malformed", "{json}");

    // The tail rewritten with a valid, recomputed chain: the same count, and more.
    for forged in [2, 5] {
        write(keep(n - 2));
        let forger = AuditLog::open(&log).expect("open without the anchor");
        for i in 0..forged {
            forger
                .append(AuditEvent {
                    adapter_digest: "0".repeat(64),
                    instance: "m".into(),
                    run_id: None,
                    binding: "data".into(),
                    capability: "files".into(),
                    operation: "read".into(),
                    decision: Decision::Allowed,
                    reason: None,
                    duration_us: i,
                    result_bytes: 0,
                    error: None,
                    detail: None,
                    sql: Vec::new(),
                })
                .expect("forge");
        }
        drop(forger);
        let (code, text, json) = verify(&env);
        assert_eq!(code, Some(1), "{text}");
        assert!(
            text.contains(&format!(
                "the tail was replaced: record seq {} is not the record anchored",
                n - 1
            )),
            "{text}"
        );
        assert_eq!(json["problem"]["kind"], "replaced", "{json}");
    }

    // The untouched log verifies, and the host appends to it again.
    write(original.clone());
    let (code, text, _) = verify(&env);
    assert_eq!(code, Some(0), "{text}");
    let out = env.upshift(&["plan", "m", "--to", "1.0.0-calls", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let (code, text, json) = verify(&env);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(json["anchored"], json["records"], "{json}");

    // An operator who kept a copy accepts a log that lost its tail: `--reanchor`.
    let now = std::fs::read_to_string(&log).expect("log");
    let kept: Vec<&str> = now.lines().collect();
    write(kept[..kept.len() - 1].join("\n") + "\n");
    let out = env.upshift(&["audit", "verify", "--reanchor"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("re-anchored the audit log"),
        "{}",
        stdout(&out)
    );
    let (code, text, _) = verify(&env);
    assert_eq!(code, Some(0), "{text}");
    let out = env.upshift(&["plan", "m", "--to", "2.0.0"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

/// The audit log's files, closed segments first.
fn audit_files(data: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(data)
        .expect("data dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("audit") && n.ends_with(".jsonl"))
        .collect();
    names.sort();
    names
}

/// Records in every segment.
fn audit_lines(data: &Path) -> u64 {
    audit_files(data)
        .iter()
        .map(|n| {
            std::fs::read_to_string(data.join(n))
                .expect("segment")
                .lines()
                .count() as u64
        })
        .sum()
}

fn index_rows(data: &Path) -> u64 {
    let conn = rusqlite::Connection::open(data.join("state.db")).expect("state.db");
    conn.query_row("SELECT COUNT(*) FROM audit_index", [], |r| r.get(0))
        .expect("count")
}

#[test]
fn the_audit_log_rotates_into_chained_segments_that_verify_and_its_index_catches_up() {
    let env = Env::new();
    misbehaving_fleet(&env, "");
    let data = env.data();
    let plan = || {
        let out = env.upshift(&[
            "--audit-segment-bytes",
            "4096",
            "plan",
            "m",
            "--to",
            "4.0.0-calls",
            "--json",
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    };
    let out = env.upshift(&["--audit-segment-bytes", "100", "history"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--audit-segment-bytes 100: give at least 4096 bytes"),
        "{}",
        stderr(&out)
    );
    for _ in 0..6 {
        plan();
    }
    let files = audit_files(&data);
    assert!(files.len() >= 3, "rotated: {files:?}");
    assert_eq!(files[0], "audit-000001.jsonl");
    assert_eq!(files.last().map(String::as_str), Some("audit.jsonl"));
    let n = audit_lines(&data);
    let (code, text, json) = verify(&env);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains(&format!(
            "{n} records, chain intact; head anchored in the state store at {n} records"
        )),
        "{text}"
    );
    assert_eq!(json["records"], n, "{json}");
    // Every record is indexed in the state store.
    assert_eq!(index_rows(&data), n);

    // Index rows lost (the last ones, as in a crash between the log and the index, and one in
    // the middle): the next command indexes them from the log.
    let conn = rusqlite::Connection::open(data.join("state.db")).expect("state.db");
    conn.execute(
        "DELETE FROM audit_index WHERE seq >= ?1 OR seq = 3",
        [n as i64 - 5],
    )
    .expect("delete");
    drop(conn);
    assert_eq!(index_rows(&data), n - 6);
    plan();
    let now = audit_lines(&data);
    assert!(now > n);
    assert_eq!(index_rows(&data), now);

    // A closed segment removed, edited, or two swapped: reported by file, and the chain's end
    // still checks against the anchor.
    let segment = |k: u64| data.join(format!("audit-{k:06}.jsonl"));
    let kept = std::fs::read_to_string(segment(2)).expect("segment 2");
    std::fs::remove_file(segment(2)).expect("remove");
    let (code, text, json) = verify(&env);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("TAMPERED") && text.contains("segment audit-000002.jsonl is missing"),
        "{text}"
    );
    assert_eq!(json["problem"]["kind"], "removed", "{json}");
    assert_eq!(json["problem"]["file"], "audit-000003.jsonl", "{json}");
    std::fs::write(segment(2), &kept).expect("restore");
    assert_eq!(verify(&env).0, Some(0));

    let edited = kept.replacen("\"duration_us\":0", "\"duration_us\":1", 1);
    assert_ne!(edited, kept);
    std::fs::write(segment(2), &edited).expect("edit");
    let (code, text, json) = verify(&env);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("audit-000002.jsonl line 1"), "{text}");
    assert_eq!(json["problem"]["kind"], "edited", "{json}");
    std::fs::write(segment(2), &kept).expect("restore");

    let first = std::fs::read_to_string(segment(1)).expect("segment 1");
    std::fs::write(segment(1), &kept).expect("swap");
    std::fs::write(segment(2), &first).expect("swap");
    let (code, text, _) = verify(&env);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("audit-000001.jsonl line 1"), "{text}");
    std::fs::write(segment(1), &first).expect("restore");
    std::fs::write(segment(2), &kept).expect("restore");
    assert_eq!(verify(&env).0, Some(0));
}

/// The same index in shared PostgreSQL state (`upshift_audit_index`): written by every
/// command, caught up when rows are lost, and the chain across segments verifies there too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_index_lives_in_postgresql_state_too() {
    let Some(pg) = common::pg() else { return };
    let (_, state_url) = pg.fresh_db("auditindex").await;
    let env = Env::new();
    misbehaving_fleet(&env, "");
    let data = env.data();
    let shared = |args: &[&str]| {
        let mut all = vec![
            "--state",
            state_url.as_str(),
            "--audit-segment-bytes",
            "4096",
        ];
        all.extend_from_slice(args);
        env.upshift(&all)
    };
    for _ in 0..4 {
        let out = shared(&["plan", "m", "--to", "4.0.0-calls", "--json"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    }
    assert!(audit_files(&data).len() >= 2);
    let n = audit_lines(&data);
    let out = shared(&["audit", "verify"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(
        stdout(&out).contains(&format!(
            "{n} records, chain intact; head anchored in the state store at {n} records"
        )),
        "{}",
        stdout(&out)
    );
    let client = common::connect(&state_url).await;
    async fn count(c: &tokio_postgres::Client) -> u64 {
        c.query_one("SELECT COUNT(*) FROM upshift_audit_index", &[])
            .await
            .expect("count")
            .get::<_, i64>(0) as u64
    }
    assert_eq!(count(&client).await, n);
    client
        .execute(
            "DELETE FROM upshift_audit_index WHERE seq >= $1",
            &[&(n as i64 - 4)],
        )
        .await
        .expect("delete");
    let out = shared(&["plan", "m", "--to", "4.0.0-calls", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(count(&client).await, audit_lines(&data));
}
