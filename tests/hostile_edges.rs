//! Hostile adapters at the edges of the capabilities (issue 14, H3): versions that try to become
//! commands or paths, special files in a granted directory, HTTP paths that try to leave the
//! base path, and credentials in URLs that must never be shown. Each probe is one component of
//! tests/adapters/hostile (features `edge-*`) driven with a table of payloads, through the real
//! `upshift` binary or the executor the binary uses. Every hostile payload must be denied,
//! audited, leave its target untouched, and leave a host that goes on serving.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use upshift::audit::{AuditRecord, Decision};
use upshift::caps::{EventSink, InstanceCaps};
use upshift::fleet::Fleet;
use upshift::ops::executor::RunContext;
use upshift::ops::{Session, apply};
use upshift::runtime::bindings::{Action, CustomAction, SwitchAction};
use upshift::runtime::{Deadlines, LoadedAdapter};

/// The components this suite builds, one per feature.
const FEATURES: &[&str] = &["edge-versions", "edge-files", "edge-http", "edge-leak"];

/// The edge components, built once per test process: the directory holding `<feature>.wasm`.
fn components() -> &'static Result<PathBuf, String> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT.get_or_init(|| {
        // Its own target directory: tests/hostile.rs may build the same crate at the same time.
        let mut dir = None;
        for feature in FEATURES {
            let built = common::hostile::component("hostile-edges", feature)?;
            dir = built.parent().map(Path::to_path_buf);
        }
        dir.ok_or_else(|| "no edge components".to_string())
    })
}

fn wasm(feature: &str) -> String {
    match components() {
        Ok(dir) => dir.join(format!("{feature}.wasm")).display().to_string(),
        Err(e) => panic!("{e}"),
    }
}

/// Every record of the data directory's audit log.
fn audit_records(data: &Path) -> Vec<AuditRecord> {
    common::audit_records(&data.join("audit.jsonl"))
}

/// Whether a record after `from` is a denial whose reason contains `fragment`.
fn denied_with(records: &[AuditRecord], from: usize, fragment: &str) -> bool {
    records[from.min(records.len())..].iter().any(|r| {
        r.event.decision == Decision::Denied
            && r.event.reason.as_deref().unwrap_or("").contains(fragment)
    })
}

/// Whether a record after `from` says `fragment`, as a denial or as the backend's error.
fn recorded(records: &[AuditRecord], from: usize, fragment: &str) -> bool {
    denied_with(records, from, fragment)
        || records[from.min(records.len())..]
            .iter()
            .any(|r| r.event.error.as_deref().unwrap_or("").contains(fragment))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Run the plan step `custom(attack, payload)` as the executor does; the error or `ok: …`.
async fn step(
    session: &Session,
    adapter: &LoadedAdapter,
    caps: &Arc<InstanceCaps>,
    name: &str,
    payload: &str,
) -> String {
    perform(
        session,
        adapter,
        caps,
        &Action::Custom(CustomAction {
            name: name.into(),
            payload: payload.into(),
            mutates: false,
        }),
    )
    .await
}

async fn perform(
    session: &Session,
    adapter: &LoadedAdapter,
    caps: &Arc<InstanceCaps>,
    action: &Action,
) -> String {
    let held = match session.hold_lease(&caps.caller().instance, "edges").await {
        Ok(held) => held,
        Err(e) => return format!("cannot hold the instance's lease: {e}"),
    };
    let ctx = RunContext {
        session,
        adapter,
        caps: caps.clone(),
        run_id: "edges".into(),
        data_version: "1.0.0".into(),
        restore_source: None,
        lease: &held,
        swap_began: Default::default(),
    };
    match ctx.perform(action).await {
        Ok(r) => format!("ok: {}", r.summary),
        Err(e) => e,
    }
}

/// A session on `env`'s data directory and the prepared instance `name`.
async fn prepared(env: &common::Env, name: &str) -> (Session, LoadedAdapter, Arc<InstanceCaps>) {
    let fleet = Fleet::load(&env.fleet()).expect("fleet");
    let mut session = Session::open(&env.data(), EventSink::discard())
        .await
        .expect("session");
    // Long enough that a call blocked on a special file would show in the elapsed time.
    session.runtime.set_deadlines(Deadlines {
        pure: Duration::from_secs(2),
        live: Duration::from_secs(30),
    });
    let (adapter, caps) = apply::prepare(&session, fleet.instance(name).expect("instance"))
        .await
        .expect("prepare");
    caps.set_run(Some("edges".into()));
    (session, adapter, caps)
}

/// Versions an adapter might hand the host to run something, or to leave a path.
const HOSTILE_VERSIONS: &[&str] = &[
    "../../../../../../../../bin/sh -c 'touch pwned-sh' x",
    "../../../../../../../../usr/bin/touch pwned-touch",
    "1.0.0 ; touch pwned-semicolon",
    "1.0.0\n",
    "1.0.0\ntouch pwned-newline",
    "$(touch pwned-subst)",
    "`touch pwned-backtick`",
    "1.0.0/../..",
    "..",
    "1.0.0 pwned-arg",
    "1.0.0\0",
    "1.0.0\u{1b}]0;title\u{7}",
    "v1.0.0;touch pwned-v",
    "-c",
    "",
    " 1.2.3",
    "30",
    "1.2",
];

/// Versions that must still work.
const VALID_VERSIONS: &[&str] = &["1.2.3", "v1.2.3", "1.2.3-rc.1"];

/// A target that carries `version` to the `edge-versions` adapter in role `role` (2: a
/// `service-switch` step, 3: the plan's `to-version`, 4: its `from-version`).
fn carrying(role: u8, version: &str) -> String {
    let hex: String = version.bytes().map(|b| format!("{b:02x}")).collect();
    format!("{role}.0.0-h{hex}")
}

/// Files in `dir` whose name starts with `pwned`.
fn pwned(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("pwned"))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_never_becomes_a_command_or_a_path() {
    let env = common::Env::new();
    let opt = env.dir.path().join("opt");
    let work = env.dir.path().join("work");
    std::fs::create_dir_all(&work).expect("mkdir");
    for v in VALID_VERSIONS.iter().chain(["1.0.0"].iter()) {
        let dir = opt.join(v);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let server = dir.join("server");
        std::fs::write(&server, format!("#!/bin/sh\ntouch ran-{v}\n")).expect("write");
        std::fs::set_permissions(&server, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
    }
    env.write_fleet(&format!(
        r#"
[[instance]]
name = "edge"
adapter = "{adapter}"

[instance.service.proc]
kind = "process"
command = "{opt}/{{version}}/server"
version = "1.0.0"
workdir = "{work}"
oneshot = true
run_timeout_secs = 20
"#,
        adapter = wasm("edge-versions"),
        opt = opt.display(),
        work = work.display(),
    ));

    // Through the real binary: every plan carrying a bad version is refused, naming where.
    let mut failures = Vec::new();
    for version in HOSTILE_VERSIONS {
        for (role, names) in [
            (2, "step 2 (`switch`)"),
            (3, "`to-version`"),
            (4, "`from-version`"),
        ] {
            let before = audit_records(&env.data()).len();
            let out = env.upshift(&["apply", "edge", "--to", &carrying(role, version), "--yes"]);
            let said = text(&out);
            let records = audit_records(&env.data());
            if out.status.success()
                || !said.contains("is not a product version")
                || !said.contains(names)
            {
                failures.push(format!("{version:?} as {names}: {said:.600}"));
            } else if !denied_with(&records, before, "is not a product version") {
                failures.push(format!("{version:?} as {names}: no denied audit record"));
            }
        }
    }
    // The operator's own target is checked too (a usage error, not the adapter's fault).
    let out = env.upshift(&["plan", "edge", "--to", "1.0.0 ; touch pwned-target"]);
    if out.status.code() != Some(2) || !text(&out).contains("is not a product version") {
        failures.push(format!("operator target: {:.600}", text(&out)));
    }

    // Valid versions still switch and run.
    for version in VALID_VERSIONS {
        let out = env.upshift(&["apply", "edge", "--to", &carrying(2, version), "--yes"]);
        if !out.status.success() {
            failures.push(format!("valid {version}: {}", text(&out)));
        } else if !work.join(format!("ran-{version}")).exists() {
            failures.push(format!("valid {version}: the job did not run"));
        }
    }

    // Below plan validation: the executor's switch, and the adapter's `image-present`, refuse
    // a bad version before any backend sees it — denied and audited.
    let (session, adapter, caps) = prepared(&env, "edge").await;
    for version in HOSTILE_VERSIONS {
        let before = audit_records(&env.data()).len();
        let switch = Action::ServiceSwitch(SwitchAction {
            binding: "proc".into(),
            version: version.to_string(),
        });
        let said = perform(&session, &adapter, &caps, &switch).await;
        let records = audit_records(&env.data());
        if !said.contains("is not a product version")
            || !denied_with(&records, before, "is not a product version")
        {
            failures.push(format!("executor switch {version:?}: {said:.400}"));
        }
        let before = records.len();
        let said = step(&session, &adapter, &caps, "attack", version).await;
        let records = audit_records(&env.data());
        if !said.contains("is not a product version")
            || !denied_with(&records, before, "is not a product version")
        {
            failures.push(format!("image-present {version:?}: {said:.400}"));
        }
        let start = perform(
            &session,
            &adapter,
            &caps,
            &Action::ServiceStart("proc".into()),
        )
        .await;
        if !start.starts_with("ok: ") {
            failures.push(format!(
                "after {version:?} the service no longer starts: {start}"
            ));
        }
    }
    let said = step(&session, &adapter, &caps, "attack", "1.2.3").await;
    if !said.contains("a process service has no images") {
        failures.push(format!("image-present 1.2.3: {said}"));
    }
    assert_eq!(
        step(&session, &adapter, &caps, "benign", "").await,
        "ok: benign",
        "the host serves on"
    );

    assert_eq!(pwned(&work), Vec::<String>::new(), "nothing was executed");
    assert_eq!(pwned(env.dir.path()), Vec::<String>::new());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let report = upshift::audit::verify(&env.data().join("audit.jsonl")).expect("verify");
    assert!(report.first_problem.is_none(), "the audit chain is intact");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn special_files_are_refused_at_once_and_reads_are_capped() {
    use nix::sys::stat::{Mode, SFlag, makedev, mknod};
    let env = common::Env::new();
    let data = env.dir.path().join("granted");
    std::fs::create_dir_all(data.join("sub")).expect("mkdir");
    std::fs::write(data.join("ok.txt"), b"hello").expect("write");
    nix::unistd::mkfifo(&data.join("fifo"), Mode::S_IRWXU).expect("mkfifo");
    // Writes aim at their own FIFO, so `fifo` stays one (a reader stuck on it can be let go).
    nix::unistd::mkfifo(&data.join("wfifo"), Mode::S_IRWXU).expect("mkfifo");
    let _socket = std::os::unix::net::UnixListener::bind(data.join("socket")).expect("bind");
    std::os::unix::fs::symlink("/dev/zero", data.join("zero")).expect("symlink");
    std::os::unix::fs::symlink("fifo", data.join("to-fifo")).expect("symlink");
    std::os::unix::fs::symlink("sub", data.join("to-sub")).expect("symlink");
    // A device inside the directory needs CAP_MKNOD (the symlink to /dev/zero is tried anyway).
    let device = mknod(
        &data.join("null"),
        SFlag::S_IFCHR,
        Mode::S_IRWXU,
        makedev(1, 3),
    )
    .is_ok();
    let cap = upshift::caps::limits::MAX_RESULT_BYTES;
    std::fs::write(data.join("huge"), vec![b'x'; cap + 1]).expect("write");
    std::fs::write(data.join("at-cap"), vec![b'x'; cap]).expect("write");
    // A file that keeps growing while it is read: whatever a stat said, a read is capped.
    let growing = data.join("growing");
    std::fs::write(&growing, vec![b'g'; cap - 4096]).expect("write");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let grower = {
        let (stop, growing) = (stop.clone(), growing.clone());
        std::thread::spawn(move || {
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&growing)
                .expect("open");
            let chunk = vec![b'g'; 1 << 16];
            let mut written = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && written < (256 << 20) {
                if f.write_all(&chunk).is_err() {
                    break;
                }
                written += chunk.len();
            }
        })
    };
    env.write_fleet(&format!(
        r#"
[[instance]]
name = "edge"
adapter = "{adapter}"

[instance.files.data]
path = "{data}"

[instance.service.proc]
kind = "process"
command = "/usr/bin/env APP_VERSION={{version}} sleep 30"
version = "1.0.0"
"#,
        adapter = wasm("edge-files"),
        data = data.display(),
    ));
    let (session, adapter, caps) = prepared(&env, "edge").await;

    const SPECIAL: &str = "only regular files and directories are served";
    let mut cases: Vec<(&str, &str)> = vec![
        ("read:fifo", "it is a FIFO"),
        ("read:socket", "it is a socket"),
        ("read:zero", SPECIAL),
        ("read:to-fifo", SPECIAL),
        ("read:sub", "it is a directory"),
        ("write:wfifo", "it is a FIFO"),
        ("write:socket", "it is a socket"),
        ("write:to-fifo", SPECIAL),
        ("load:fifo", "it is a FIFO"),
        ("load:socket", "it is a socket"),
        ("load:zero", SPECIAL),
        ("list:fifo", "not a directory"),
        ("list:to-sub", "not a directory"),
        ("read:huge", "more than the limit"),
    ];
    if device {
        cases.extend([
            ("read:null", "it is a device"),
            ("load:null", "it is a device"),
        ]);
    }
    let mut failures = Vec::new();
    for (payload, fragment) in &cases {
        let before = audit_records(&env.data()).len();
        let started = Instant::now();
        let said = step(&session, &adapter, &caps, "attack", payload).await;
        let elapsed = started.elapsed();
        let records = audit_records(&env.data());
        if elapsed > Duration::from_secs(3) {
            failures.push(format!("{payload}: took {elapsed:?}: {said:.300}"));
        } else if !said.contains(fragment) {
            failures.push(format!("{payload}: expected `{fragment}` in {said:.300}"));
        } else if !recorded(&records, before, fragment) {
            failures.push(format!("{payload}: not audited with `{fragment}`"));
        } else if fragment != &"more than the limit" && !denied_with(&records, before, fragment) {
            failures.push(format!("{payload}: not a denial"));
        }
        let benign = step(&session, &adapter, &caps, "benign", "").await;
        if benign != "ok: benign" {
            failures.push(format!("after {payload}: {benign}"));
        }
    }
    // What may be read is read; a growing file never comes back larger than the cap.
    assert_eq!(
        step(&session, &adapter, &caps, "attack", "read:ok.txt").await,
        "ok: 5 bytes"
    );
    assert_eq!(
        step(&session, &adapter, &caps, "attack", "read:at-cap").await,
        format!("ok: {cap} bytes")
    );
    for _ in 0..3 {
        let said = step(&session, &adapter, &caps, "attack", "read:growing").await;
        let capped = said.contains("more than the limit")
            || said
                .strip_prefix("ok: ")
                .and_then(|s| s.strip_suffix(" bytes"))
                .and_then(|n| n.parse::<usize>().ok())
                .is_some_and(|n| n <= cap);
        if !capped {
            failures.push(format!("read:growing: {said:.300}"));
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = grower.join();
    assert_eq!(
        step(&session, &adapter, &caps, "attack", "exists:fifo").await,
        "ok: true"
    );
    // A reader stuck on the FIFO (the fault this guards against) is let go, so the test ends.
    let fifo = data.join("fifo");
    std::thread::spawn(move || drop(std::fs::OpenOptions::new().write(true).open(fifo)));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(
        std::fs::metadata(data.join("wfifo"))
            .map(|m| std::os::unix::fs::FileTypeExt::is_fifo(&m.file_type()))
            .unwrap_or(false),
        "the FIFO was not replaced by a write"
    );
}

/// A loopback server that records the request target of every request and answers `200 OK`.
fn recording_server(seen: Arc<Mutex<Vec<String>>>) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 8192];
            let n = stream.read(&mut buf).unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]).into_owned();
            let target = request.split(' ').nth(1).unwrap_or("").to_string();
            if let Ok(mut s) = seen.lock() {
                s.push(target);
            }
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nOK");
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_path_never_leaves_the_base_path() {
    let env = common::Env::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let port = recording_server(seen.clone());
    env.write_fleet(&format!(
        r#"
[[instance]]
name = "edge"
adapter = "{adapter}"

[instance.http.api]
url = "http://127.0.0.1:{port}/api"
"#,
        adapter = wasm("edge-http"),
    ));
    let (session, adapter, caps) = prepared(&env, "edge").await;
    let hostile = [
        "/../api-admin/secret",
        "/%2e%2e/api-admin/secret",
        "/%2E%2e/api-admin/secret",
        "/%2e%2E/api-admin/secret",
        "/.%2e/api-admin/secret",
        "/%2e./api-admin/secret",
        "/%252e%252e/api-admin/secret",
        "/a/..%2f..%2fapi-admin/secret",
        "/a/..%2F..%2Fapi-admin/secret",
        "/a/%2e%2e/%2e%2e/api-admin/secret",
        "/..%5capi-admin/secret",
        "\\..\\api-admin\\secret",
        "/\\..\\api-admin",
        "/./../api-admin/secret",
        "/a/b/../../../api-admin/secret",
        "//api-admin/secret",
        "//127.0.0.1/api-admin",
        "/..;/api-admin/secret",
        "/..;jsessionid=1/api-admin/secret",
        "/%2e%2e;/api-admin/secret",
        "/a%00/../../api-admin",
        "/a\r\nX-Injected: 1/x",
        "/a b/../../api-admin",
        "/a#/../../api-admin",
        "/..",
        "api-admin/secret",
    ];
    let mut failures = Vec::new();
    for path in hostile {
        let before = audit_records(&env.data()).len();
        let said = step(&session, &adapter, &caps, "attack", path).await;
        let records = audit_records(&env.data());
        let fragments = ["leaves the bound URL", "is not a path under the bound URL"];
        if !fragments.iter().any(|f| said.contains(f)) {
            failures.push(format!("{path:?}: {said:.300}"));
        } else if !fragments.iter().any(|f| denied_with(&records, before, f)) {
            failures.push(format!("{path:?}: no denied audit record"));
        }
    }
    for (path, want) in [
        ("/ok", "/api/ok"),
        ("/a/../inside", "/api/inside"),
        ("/v1/items?q=../x", "/api/v1/items?q=../x"),
    ] {
        let said = step(&session, &adapter, &caps, "attack", path).await;
        assert_eq!(said, "ok: 200 OK", "{path}");
        let last = seen.lock().expect("seen").last().cloned();
        assert_eq!(last.as_deref(), Some(want), "{path}");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let seen = seen.lock().expect("seen").clone();
    assert!(
        seen.iter().all(|p| p.starts_with("/api/")),
        "requests outside the base path: {seen:?}"
    );
    assert_eq!(
        seen.len(),
        3,
        "only the three allowed requests were made: {seen:?}"
    );
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            match entry.file_type() {
                Ok(t) if t.is_dir() => dirs.push(path),
                Ok(t) if t.is_file() => out.push(path),
                _ => {}
            }
        }
    }
    out
}

#[test]
fn credentials_in_urls_are_never_shown_or_written() {
    const USER: &str = "upshiftadm";
    const PASSWORD: &str = "s3cretpw";
    let env = common::Env::new();
    let dead = common::free_port();
    let fleet = format!(
        r#"
[[instance]]
name = "leak"
adapter = "{adapter}"

[instance.db.meta]
url = "postgres://{USER}:{PASSWORD}@127.0.0.1:{dead}/metadb"

[instance.http.api]
url = "http://{USER}:{PASSWORD}@127.0.0.1:{dead}/api"
"#,
        adapter = wasm("edge-leak"),
    );
    env.write_fleet(&fleet);
    let mut shown = String::new();
    let apply = env.upshift(&["apply", "leak", "--to", "2.0.0", "--yes"]);
    assert!(!apply.status.success(), "the step fails: {}", text(&apply));
    assert!(
        text(&apply).contains(&format!(
            "cannot connect to HTTP server at 127.0.0.1:{dead} (http://***@127.0.0.1"
        )),
        "the failure is shown, naming the server and without credentials: {}",
        text(&apply)
    );
    shown.push_str(&text(&apply));
    for args in [
        &["apply", "leak", "--to", "2.0.0", "--yes", "--json"][..],
        &["plan", "leak", "--to", "2.0.0"],
        &["plan", "leak", "--to", "2.0.0", "--json"],
        &["history"],
        &["history", "--json"],
        &["audit", "verify"],
    ] {
        shown.push_str(&text(&env.upshift(args)));
    }
    // A fleet file the host refuses because of the URL: the message does not repeat it.
    env.write_fleet(&fleet.replace("http://", "ftp://"));
    let refused = env.upshift(&["plan", "leak", "--to", "2.0.0"]);
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    shown.push_str(&text(&refused));

    for secret in [PASSWORD, USER] {
        assert!(!shown.contains(secret), "`{secret}` shown:\n{shown}");
        for file in files_under(&env.data()) {
            let bytes = std::fs::read(&file).unwrap_or_default();
            let found = bytes.windows(secret.len()).any(|w| w == secret.as_bytes());
            assert!(!found, "`{secret}` written to {}", file.display());
        }
    }
    let records = audit_records(&env.data());
    assert!(
        records.iter().any(|r| r
            .event
            .error
            .as_deref()
            .unwrap_or("")
            .contains("http://***@127.0.0.1")),
        "the failed call is audited, URL redacted"
    );
}
