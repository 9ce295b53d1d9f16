//! The `upshift` command as operators use it: exit codes, messages that name the problem and
//! the fix, `adapter inspect`, and `audit verify` catching tampering.

mod common;

use upshift::caps::EventSink;
use upshift::fleet::Fleet;
use upshift::ops::Session;
use upshift::ops::apply;

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const GOOD: &str = r#"[[instance]]
name = "bb"
product = "bytebase"

[instance.db.meta]
url = "postgres://postgres@127.0.0.1:1/metadb"

[instance.service.app]
kind = "process"
command = "/opt/bytebase/{version}/bytebase --port 8080"
version = "3.10.0"

[instance.http.api]
url = "http://127.0.0.1:1"
"#;

#[test]
fn bad_fleet_files_are_refused_with_line_and_fix() {
    let env = common::Env::new();
    let cases: &[(&str, String, &[&str])] = &[
        (
            "unknown key",
            GOOD.replace(
                "version = \"3.10.0\"",
                "version = \"3.10.0\"\nrestart = true",
            ),
            &["line 12", "unknown field `restart`", "fix:"],
        ),
        (
            "unbound required binding",
            GOOD.replace("[instance.http.api]\nurl = \"http://127.0.0.1:1\"\n", ""),
            &["needs http binding `api`", "add [instance.http.api]"],
        ),
        (
            "binding the adapter does not declare",
            format!("{GOOD}\n[instance.http.admin]\nurl = \"http://127.0.0.1:2\"\n"),
            &[
                "[instance.http.admin] is bound but the adapter declares no such binding",
                "it declares: meta, app, api, data",
            ],
        ),
        (
            "widened access",
            GOOD.replace("metadb\"", "metadb\"\naccess = [\"read\", \"ddl\"]"),
            &[
                "lists access `ddl`, which the adapter does not request",
                "access may only narrow",
            ],
        ),
        (
            "no adapter",
            GOOD.replace("product = \"bytebase\"\n", ""),
            &[
                "line 2",
                "names no adapter",
                "fix: add `product = \"bytebase\"`",
            ],
        ),
        (
            "not toml",
            "[[instance]\nname = 1".to_string(),
            &["TOML parse error at line 1"],
        ),
    ];
    for (what, text, needles) in cases {
        env.write_fleet(text);
        let out = env.upshift(&["plan", "bb", "--to", "3.11.1"]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{what}: {err}");
        for needle in *needles {
            assert!(err.contains(needle), "{what}: `{needle}` not in:\n{err}");
        }
    }
    // A missing fleet file: the library says what is wrong, the CLI how to point at another.
    let out = common::Env::new().upshift(&["plan", "bb", "--to", "3.11.1"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("cannot read fleet file"), "{err}");
    assert!(
        err.contains("hint: pass --fleet FILE or set UPSHIFT_FLEET"),
        "{err}"
    );
    // A data directory that cannot be made: exit 2, and the flag that moves it.
    let env = common::Env::new();
    env.write_fleet(&common::bytebase_instance(
        "bb",
        "postgres://u@127.0.0.1:1/db",
        1,
        "3.10.0",
        None,
    ));
    let blocker = env.data().with_file_name("not-a-directory");
    std::fs::write(&blocker, "a file where the data directory should go").expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_upshift"))
        .arg("--fleet")
        .arg(env.fleet())
        .arg("--data")
        .arg(blocker.join("data"))
        .args(["history"])
        .output()
        .expect("run upshift");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("cannot create data directory"), "{err}");
    assert!(
        err.contains("hint: pass --data DIR or set UPSHIFT_DATA"),
        "{err}"
    );
    // A lease period that is no period.
    let out = env.upshift(&["--lease-secs", "0", "history"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--lease-secs 0"), "{}", stderr(&out));
}

#[test]
fn adapter_inspect_reads_the_manifest_without_running_it() {
    let env = common::Env::new();
    let path = format!("{}/test-misbehaving.wasm", upshift::adapters::BUILT_DIR);
    let out = env.upshift(&["adapter", "inspect", &path, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(v["manifest"]["product"], "misbehaving");
    assert_eq!(v["manifest"]["host_api"], "0.1.0");
    let bindings: Vec<String> = v["manifest"]["bindings"]
        .as_array()
        .expect("bindings")
        .iter()
        .map(|b| {
            format!(
                "{}:{}:{}",
                b["name"].as_str().unwrap_or(""),
                b["kind"].as_str().unwrap_or(""),
                b["access"]
            )
        })
        .collect();
    assert_eq!(
        bindings,
        vec![
            "meta:db:[\"read\",\"write\"]",
            "data:files:[\"read\",\"snapshot\",\"restore\"]",
            "app:service:[\"inspect\",\"control\",\"switch-version\"]",
            "api:http:[\"read\"]"
        ]
    );
    let exports: Vec<&str> = v["world"]["exports"]
        .as_array()
        .expect("exports")
        .iter()
        .filter_map(|e| e.as_str())
        .collect();
    for e in [
        "describe",
        "detect",
        "plan",
        "run-step",
        "verify",
        "plan-restore",
    ] {
        assert!(exports.contains(&e), "{e} in {exports:?}");
    }
    let sha = v["sha256"].as_str().expect("sha");
    assert_eq!(
        sha,
        upshift::runtime::digest(&std::fs::read(&path).expect("read"))
    );

    let text = env.upshift(&["adapter", "inspect", "bytebase"]);
    assert_eq!(text.status.code(), Some(0), "{}", stderr(&text));
    assert!(
        stdout(&text).contains("product      bytebase"),
        "{}",
        stdout(&text)
    );

    let junk = env.dir.path().join("junk.wasm");
    std::fs::write(&junk, b"\0asm\x01\0\0\0").expect("write");
    let out = env.upshift(&["adapter", "inspect", &junk.display().to_string()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("core module, not a component"),
        "{}",
        stderr(&out)
    );
}

/// Make a few audited calls through the library so the data dir has an audit log.
async fn audited_calls(env: &common::Env) {
    let adapter = format!("{}/test-misbehaving.wasm", upshift::adapters::BUILT_DIR);
    let files = env.dir.path().join("files");
    std::fs::create_dir_all(&files).expect("mkdir");
    env.write_fleet(&format!(
        "[[instance]]\nname = \"t\"\nadapter = \"{adapter}\"\n[instance.files.data]\npath = \"{}\"\n",
        files.display()
    ));
    let fleet = Fleet::load(&env.fleet()).expect("fleet");
    let session = Session::open(&env.data(), EventSink::discard())
        .await
        .expect("session");
    let (adapter, caps) = apply::prepare(&session, fleet.instance("t").expect("t"))
        .await
        .expect("prepare");
    for step in [
        "files-read",
        "files-write",
        "files-escape",
        "undeclared",
        "files-read",
    ] {
        let step = step.to_string();
        session
            .runtime
            .call(
                &adapter,
                Some(caps.clone()),
                "run-step",
                session.runtime.deadlines().live,
                async |a, s| a.call_run_step(s, &step, "").await,
            )
            .await
            .expect("no trap")
            .expect("answers");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_reports_the_first_tampered_record() {
    let env = common::Env::new();
    audited_calls(&env).await;
    let ok = env.upshift(&["audit", "verify"]);
    assert_eq!(ok.status.code(), Some(0), "{}", stderr(&ok));
    assert!(
        stdout(&ok).contains("5 records, chain intact"),
        "{}",
        stdout(&ok)
    );

    let log = env.data().join("audit.jsonl");
    let original = std::fs::read_to_string(&log).expect("read");
    let lines: Vec<&str> = original.lines().collect();

    // Edit a field of the third record: a denial made to look allowed.
    let edited = lines[2].replacen("\"denied\"", "\"allowed\"", 1);
    assert_ne!(edited, lines[2], "the third record is a denial");
    let mut tampered = lines.clone();
    tampered[2] = &edited;
    std::fs::write(&log, tampered.join("\n") + "\n").expect("write");
    let out = env.upshift(&["audit", "verify", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(v["problem"]["line"], 3);
    assert_eq!(v["problem"]["kind"], "edited");

    // Remove the second record.
    let mut removed = lines.clone();
    removed.remove(1);
    std::fs::write(&log, removed.join("\n") + "\n").expect("write");
    let out = env.upshift(&["audit", "verify", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(v["problem"]["kind"], "removed", "{v}");
    assert_eq!(v["problem"]["line"], 2, "{v}");

    // Swap two records.
    let mut swapped = lines.clone();
    swapped.swap(3, 4);
    std::fs::write(&log, swapped.join("\n") + "\n").expect("write");
    let out = env.upshift(&["audit", "verify", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(v["problem"]["kind"], "reordered", "{v}");
    assert_eq!(v["problem"]["line"], 4, "{v}");
}

#[test]
fn the_demo_upgrades_a_mixed_fleet_rolls_one_back_and_leaves_nothing_running() {
    if let Err(e) = upshift_sim::pg::find_bindir() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("the demo needs PostgreSQL: {e}");
        }
        eprintln!("SKIPPED: {e}");
        return;
    }
    let env = common::Env::new();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_upshift"))
        .arg("demo")
        .env("UPSHIFT_DATA", env.data())
        .output()
        .expect("run the demo");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("bb-alpha is now at 3.11.1"), "{err}");
    assert!(
        err.contains("bb-beta: upgrade to 3.11.1 failed and was rolled back to 3.10.0"),
        "{err}"
    );
    assert!(err.contains("rollback-restore-meta"), "{err}");
    // Bytebase's default deployment: its embedded PostgreSQL, backed up as a snapshot.
    assert!(err.contains("bb-embedded is now at 3.11.1"), "{err}");
    assert!(err.contains("snapshot-data"), "{err}");
    // The rest of the mixed fleet: every product upgraded, each by its own rules.
    for done in [
        "om is now at 1.12.1",
        "lake is now at v1.0.1",
        "kw is now at 3.1.0",
    ] {
        assert!(err.contains(done), "{done}: {err}");
    }
    assert!(
        err.contains("/proceed-db-migration"),
        "DevLake's gate: {err}"
    );

    // Nothing it started is left: no postgres on its cluster, no simulator on its ports.
    let root = env.data().join("demo");
    let fleet = std::fs::read_to_string(root.join("upshift.toml")).expect("demo fleet");
    for port in fleet
        .lines()
        .filter_map(|l| l.strip_prefix("url = \"http://127.0.0.1:"))
        .filter_map(|rest| rest.trim_end_matches('"').parse::<u16>().ok())
    {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "port {port} still answers"
        );
    }
    let marker = root.display().to_string();
    for entry in std::fs::read_dir("/proc")
        .expect("proc")
        .filter_map(Result::ok)
    {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            assert!(!cmdline.contains(&marker), "left running: {cmdline}");
            assert!(
                !cmdline.contains("bb-embedded/pgdata"),
                "the embedded store left running: {cmdline}"
            );
        }
    }
    let audit = std::process::Command::new(env!("CARGO_BIN_EXE_upshift"))
        .arg("--data")
        .arg(root.join("data"))
        .args(["audit", "verify"])
        .output()
        .expect("audit verify");
    assert_eq!(audit.status.code(), Some(0), "{}", stderr(&audit));
    assert!(
        stdout(&audit).contains("chain intact"),
        "{}",
        stdout(&audit)
    );
}

/// Run cargo on a scaffolded crate, with a target directory kept under the workspace's so
/// reruns are incremental.
fn cargo_in(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/scaffold");
    std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(dir)
        .args(args)
        .arg("--offline")
        .env("CARGO_TARGET_DIR", target)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .output()
        .expect("run cargo")
}

#[test]
fn adapter_new_scaffolds_a_crate_that_builds_and_passes_its_own_tests() {
    let env = common::Env::new();
    let dir = env.dir.path().join("acme");
    let out = env.upshift(&[
        "adapter",
        "new",
        "acme",
        "--dir",
        &dir.display().to_string(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("acme_adapter.wasm"),
        "{}",
        stdout(&out)
    );
    // A second time into the same place writes nothing.
    let again = env.upshift(&[
        "adapter",
        "new",
        "acme",
        "--dir",
        &dir.display().to_string(),
    ]);
    assert_eq!(again.status.code(), Some(2));
    assert!(
        stderr(&again).contains("already exists"),
        "{}",
        stderr(&again)
    );

    let tests = cargo_in(&dir, &["test"]);
    assert!(
        tests.status.success(),
        "{}{}",
        stdout(&tests),
        stderr(&tests)
    );
    assert!(
        stdout(&tests).contains("test result: ok. 4 passed"),
        "{}",
        stdout(&tests)
    );
    let build = cargo_in(&dir, &["build", "--release", "--target", "wasm32-wasip2"]);
    assert!(build.status.success(), "{}", stderr(&build));

    let wasm = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/scaffold/wasm32-wasip2/release/acme_adapter.wasm")
        .display()
        .to_string();
    let inspect = common::json(&env.upshift(&["adapter", "inspect", &wasm, "--json"]));
    assert_eq!(inspect["manifest"]["product"], "acme");
    assert_eq!(inspect["host_api"]["compatible"], true);
    let plan = env.upshift(&[
        "plan",
        "--adapter",
        &wasm,
        "--from",
        "1.2.0",
        "--to",
        "2.0.0",
        "--json",
    ]);
    assert_eq!(plan.status.code(), Some(0), "{}", stderr(&plan));
    let report = common::json(&plan);
    let ids: Vec<&str> = report["outcome"]["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .filter_map(|s| s["id"].as_str())
        .collect();
    assert_eq!(
        ids,
        ["backup-meta", "stop", "switch", "start", "wait", "health"]
    );
    let refused = env.upshift(&[
        "plan",
        "--adapter",
        &wasm,
        "--from",
        "1.2.0",
        "--to",
        "3.0.0",
    ]);
    assert_eq!(refused.status.code(), Some(3), "{}", stderr(&refused));
    assert!(
        stdout(&refused).contains("one-major-at-a-time"),
        "{}",
        stdout(&refused)
    );
}

/// Every path in a fleet file is resolved against the fleet file's absolute directory when it
/// is loaded: `--fleet fleet.toml` from its own directory, or `--fleet site/fleet.toml` from
/// above it, finds the adapter, the files binding and the Compose file, and docker-compose runs
/// in the Compose file's directory (a relative `--fleet` once gave it an empty one).
#[test]
fn a_relative_fleet_path_resolves_every_path_against_the_fleet_files_directory() {
    if !common::docker::available() {
        return;
    }
    let root = tempfile::tempdir().expect("tempdir");
    let site = root.path().join("site");
    for dir in ["data", "adapters", "compose"] {
        std::fs::create_dir_all(site.join(dir)).expect("mkdir");
    }
    std::fs::copy(
        format!("{}/test-misbehaving.wasm", upshift::adapters::BUILT_DIR),
        site.join("adapters/misbehaving.wasm"),
    )
    .expect("copy adapter");
    std::fs::write(
        site.join("compose/docker-compose.yml"),
        format!(
            "services:\n  kwdb:\n    image: {}:2.2.0\n    network_mode: host\n",
            common::docker::REPO
        ),
    )
    .expect("compose file");
    std::fs::write(
        site.join("fleet.toml"),
        format!(
            "[[instance]]\nname = \"kw\"\nadapter = \"adapters/misbehaving.wasm\"\n\n\
             [instance.files.data]\npath = \"data\"\n\n\
             [instance.service.app]\nkind = \"compose\"\nfile = \"compose/docker-compose.yml\"\n\
             service = \"kwdb\"\nimage = \"{}:{{version}}\"\n",
            common::docker::REPO
        ),
    )
    .expect("fleet");
    let data = root.path().join("state");
    let compose = site.join("compose/docker-compose.yml");
    for (cwd, fleet) in [
        (site.clone(), "fleet.toml"),
        (root.path().to_path_buf(), "site/fleet.toml"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_upshift"))
            .current_dir(&cwd)
            .arg("--fleet")
            .arg(fleet)
            .arg("--data")
            .arg(&data)
            .args(["plan", "kw", "--to", "3.0.0-cheap", "--json"])
            .env_remove("UPSHIFT_FLEET")
            .env_remove("UPSHIFT_DATA")
            .output()
            .expect("run upshift");
        assert_eq!(
            out.status.code(),
            Some(0),
            "--fleet {fleet} from {}: {}",
            cwd.display(),
            stderr(&out)
        );
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        let app = &report["prior"]["services"]["app"];
        assert_eq!(app["version"], "2.2.0", "{report}");
        assert!(
            app["detail"]
                .as_str()
                .is_some_and(|d| d.contains(&compose.display().to_string())),
            "the Compose file by its absolute path: {report}"
        );
    }
}

/// A new operator's first commands: no fleet file, then an empty one. Each says what is wrong
/// and what to do, once, exits 2, and under `--json` is one error document.
#[test]
fn a_missing_or_empty_fleet_file_says_what_to_do() {
    let env = common::Env::new();
    let out = env.upshift(&["status"]);
    let said = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(
        said.contains("cannot read fleet file") && said.contains("fix: create it"),
        "{said}"
    );
    assert_eq!(
        said.matches("No such file or directory").count(),
        1,
        "the cause is said once: {said}"
    );
    assert!(said.contains("--fleet FILE"), "{said}");

    env.write_fleet("# nothing yet\n");
    for args in [
        vec!["status"],
        vec!["plan", "--all"],
        vec!["apply", "--all", "--to", "1.0.0", "--yes"],
    ] {
        let out = env.upshift(&args);
        let said = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {said}");
        assert!(
            said.contains("names no instance") && said.contains("[[instance]]"),
            "{args:?}: {said}"
        );
    }
    let out = env.upshift(&["status", "--json"]);
    assert_eq!(out.status.code(), Some(2));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert!(
        doc["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("names no instance")),
        "{doc}"
    );
    assert!(
        doc["error"]["fix"]
            .as_str()
            .is_some_and(|f| f.contains("docs/fleet-file.md")),
        "{doc}"
    );
}
