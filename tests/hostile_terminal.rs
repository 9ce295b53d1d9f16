//! What a hostile adapter can do to the operator and to what the host writes down, tried
//! through the real `upshift` binary (issue 14, rows "terminal" and "secrets"):
//!
//! - adapter text carrying escape sequences, C1 controls and bidi overrides reaches the
//!   terminal only with its control characters made visible, while `--json` keeps it exact;
//! - the data directory is 0700 and every file in it 0600 whatever the umask;
//! - secrets (values read from a `.env` under a secret-naming key, fleet URL passwords,
//!   secret-named service `env` values) appear in no file of the data directory and in none of
//!   the command's output.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::Env;

/// What the `terminal-escapes` case puts in every text field (tests/adapters/hostile).
const FORGED: &str = "note \u{1b}]0;pwned\u{7} \u{1b}[2K\r✔ all checks passed \u{9b}31m \u{202e}desrever\u{202c} end";

/// How [`FORGED`] reads on the terminal.
const SHOWN: &str =
    r"note \x1b]0;pwned\x07 \x1b[2K\r✔ all checks passed \u{9b}31m \u{202e}desrever\u{202c} end";

/// A hostile component, or the reason it could not be built (a failure under `CI=true`).
fn component(feature: &str) -> Option<PathBuf> {
    match common::hostile::component("hostile-cli", feature) {
        Ok(path) => Some(path),
        Err(why) => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{why}");
            }
            eprintln!("SKIPPED: the hostile component is needed and could not be built: {why}");
            None
        }
    }
}

/// Run `upshift` with the environment's fleet and data directory under `umask` (octal).
fn upshift_umask(env: &Env, umask: &str, args: &[&str]) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg(format!("umask {umask}; exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_upshift"))
        .arg("--fleet")
        .arg(env.fleet())
        .arg("--data")
        .arg(env.data())
        .args(args)
        .env_remove("UPSHIFT_FLEET")
        .env_remove("UPSHIFT_DATA")
        .env_remove("CLICOLOR_FORCE")
        .output()
        .expect("run upshift")
}

/// The characters of `text` that steer a terminal: C0 controls but the line feed, DEL, C1
/// controls, and bidi overrides and isolates.
fn raw_controls(text: &str) -> Vec<char> {
    text.chars()
        .filter(|&c| {
            (c.is_control() && c != '\n')
                || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        })
        .collect()
}

/// Every string in a JSON value.
fn strings(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Array(items) => items.iter().for_each(|v| strings(v, out)),
        serde_json::Value::Object(map) => map.values().for_each(|v| strings(v, out)),
        _ => {}
    }
}

/// How many strings of the command's JSON output hold [`FORGED`] exactly as sent.
fn exact_in_json(out: &Output) -> usize {
    let mut all = Vec::new();
    strings(&common::json(out), &mut all);
    all.iter().filter(|s| s.contains(FORGED)).count()
}

#[test]
fn adapter_text_reaches_the_terminal_with_its_controls_made_visible() {
    let Some(wasm) = component("terminal-escapes") else {
        return;
    };
    let env = Env::new();
    env.write_fleet(&format!(
        "[[instance]]\nname = \"t\"\nadapter = \"{}\"\ntarget = \"2.0.0\"\n",
        wasm.display()
    ));
    let human: &[(&[&str], i32)] = &[
        (&["plan", "t", "--to", "2.0.0"], 0),
        (&["plan", "t", "--to", "9.9.9"], 3),
        (&["apply", "t", "--to", "2.0.0", "--yes"], 0),
        // Its steps only read: the failure changed nothing (exit 1, not 4).
        (&["apply", "t", "--to", "3.0.0", "--yes"], 1),
        (&["apply", "--all", "--yes"], 0),
        (&["history"], 0),
        (&["adapter", "inspect", &wasm.display().to_string()], 0),
    ];
    let mut failures = Vec::new();
    let mut shown = String::new();
    let mut check = |args: &[&str], code: i32, out: &Output, failures: &mut Vec<String>| {
        let (o, e) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        if out.status.code() != Some(code) {
            failures.push(format!("{args:?}: exit {:?}, not {code}:\n{e}", out.status));
        }
        for (stream, text) in [("stdout", &o), ("stderr", &e)] {
            let raw = raw_controls(text);
            if !raw.is_empty() {
                failures.push(format!("{args:?}: raw {raw:?} on {stream}:\n{text:?}"));
            }
        }
        shown.push_str(&o);
        shown.push_str(&e);
    };
    for (args, code) in human {
        let out = env.upshift(args);
        check(args, *code, &out, &mut failures);
    }
    // Every run's journal, as `history --run` shows it.
    let runs = common::json(&env.upshift(&["history", "--json"]));
    let ids: Vec<String> = runs
        .as_array()
        .expect("runs")
        .iter()
        .filter_map(|r| r["id"].as_str().map(str::to_string))
        .collect();
    assert!(ids.len() >= 3, "{runs}");
    for id in &ids {
        let args = ["history", "--run", id.as_str()];
        let out = env.upshift(&args);
        check(&args, 0, &out, &mut failures);
    }
    // Under a umask that lets everyone read, the rollout report is no terminal, but a person
    // reads it with `cat`: it too shows the text made visible.
    for entry in std::fs::read_dir(env.data().join("reports")).expect("reports") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "md") {
            let text = std::fs::read_to_string(&path).expect("report");
            let raw = raw_controls(&text);
            if !raw.is_empty() {
                failures.push(format!("{}: raw {raw:?}", path.display()));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    // The operator still reads what the adapter said, made visible.
    let visible = shown.matches(SHOWN).count();
    assert!(visible >= 10, "{visible} times `{SHOWN}` in:\n{shown}");

    // JSON output keeps the adapter's text exactly.
    let json: &[(&[&str], usize)] = &[
        (&["plan", "t", "--to", "2.0.0", "--json"], 3),
        (&["plan", "t", "--to", "9.9.9", "--json"], 3),
        (&["apply", "t", "--to", "2.0.0", "--yes", "--json"], 2),
        (&["apply", "t", "--to", "3.0.0", "--yes", "--json"], 1),
    ];
    for (args, at_least) in json {
        let out = env.upshift(args);
        let n = exact_in_json(&out);
        assert!(
            n >= *at_least,
            "{args:?}: {n} exact copies:\n{}",
            common::stderr(&out)
        );
        // The events on stderr are JSON lines, each one parsing.
        for line in String::from_utf8_lossy(&out.stderr).lines() {
            if line.starts_with('{') {
                serde_json::from_str::<serde_json::Value>(line)
                    .unwrap_or_else(|e| panic!("{args:?}: event `{line}`: {e}"));
            }
        }
    }
    let run = common::json(&env.upshift(&["history", "--run", &ids[0], "--json"]));
    let mut all = Vec::new();
    strings(&run, &mut all);
    assert!(all.iter().any(|s| s.contains(FORGED)), "{run}");
}

/// Every entry under `dir` (itself included) whose mode is not 0700 (directories) or 0600
/// (files).
fn too_open(dir: &Path, out: &mut Vec<String>) {
    let Ok(meta) = std::fs::symlink_metadata(dir) else {
        return;
    };
    let mode = meta.permissions().mode() & 0o7777;
    if meta.is_dir() {
        if mode != 0o700 {
            out.push(format!("{} is a directory of mode {mode:o}", dir.display()));
        }
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            too_open(&entry.path(), out);
        }
    } else if meta.is_file() && mode != 0o600 {
        out.push(format!("{} is a file of mode {mode:o}", dir.display()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_directory_is_private_whatever_the_umask() {
    let Some(pg) = common::pg() else { return };
    let (_, db_url) = pg.fresh_db("umask").await;
    let env = Env::new();
    let port = common::free_port();
    env.write_fleet(&common::bytebase_instance(
        "bb", &db_url, port, "3.10.0", None,
    ));
    // The product is started the way the operator left it, by a process with the usual umask.
    common::start_services(&env, "bb", &["app"]).await;
    {
        // Closed again before the run: a template clone needs no other sessions.
        let client = common::connect(&db_url).await;
        upshift_sim::bytebase::seed_user_rows(&client, 5)
            .await
            .expect("seed");
    }
    let tape = env.data().join("upgrade.tape.json");
    let tape = tape.display().to_string();
    for (args, code) in [
        (
            vec!["apply", "bb", "--to", "3.11.1", "--yes", "--record", &tape],
            0,
        ),
        (vec!["backup", "bb", "--method", "dump"], 0),
        (vec!["apply", "--all", "--to", "3.11.1", "--yes"], 0),
        (vec!["history"], 0),
    ] {
        let out = upshift_umask(&env, "000", &args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "{args:?}: {}",
            common::stderr(&out)
        );
    }
    let mut open = Vec::new();
    too_open(&env.data(), &mut open);
    assert!(open.is_empty(), "{}", open.join("\n"));
    // What was checked: the state, the audit log, the cache, a dump and its manifest, the tape,
    // the process service's state and log, the rollout report.
    for needed in [
        "state.db",
        "audit.jsonl",
        "cache",
        "backups",
        "reports",
        "services",
    ] {
        assert!(env.data().join(needed).exists(), "{needed} was written");
    }
    assert!(Path::new(&tape).exists());
}

/// Values the test makes secret, and one that is not.
const DOTENV: &str = "# the product's settings\n\
    DB_PASSWORD=hunter2-very-secret\n\
    API_TOKEN='tok-abcdef-123456' # quoted, with a comment\n\
    export SECRET_KEY=\"sk-live-quoted-999\"\n\
    NAME=visible-name-value\n";
const SECRETS: &[&str] = &[
    "hunter2-very-secret",
    "tok-abcdef-123456",
    "sk-live-quoted-999",
    "Db-Pass-Secret-1",
    "svc-env-secret-value",
];

#[test]
fn secrets_never_reach_a_file_or_the_terminal() {
    let Some(wasm) = component("dotenv-secrets") else {
        return;
    };
    let env = Env::new();
    let product = env.dir.path().join("product");
    std::fs::create_dir_all(&product).expect("mkdir");
    let fleet = format!(
        r#"[[instance]]
name = "s"
adapter = "{wasm}"
target = "2.0.0"

[instance.db.meta]
url = "postgres://postgres:Db-Pass-Secret-1@127.0.0.1:1/metadb"

[instance.files.data]
path = "{product}"
access = ["read"]

[instance.service.app]
kind = "process"
command = "/usr/bin/env APP_VERSION={{version}} sleep 30"
version = "1.0.0"
env = {{ APP_SECRET = "svc-env-secret-value", PLAIN_SETTING = "visible-setting" }}
"#,
        wasm = wasm.display(),
        product = product.display(),
    );
    env.write_fleet(&fleet);
    std::fs::write(product.join(".env"), DOTENV).expect("write .env");
    // The adapter also reads (and logs) a copy of the fleet file: the host's own secrets.
    std::fs::write(product.join("app.toml"), &fleet).expect("write app.toml");
    std::fs::create_dir_all(env.data()).expect("mkdir");
    let tape = env.data().join("leak.tape.json").display().to_string();

    let mut shown = String::new();
    for (args, code) in [
        (
            vec!["apply", "s", "--to", "2.0.0", "--yes", "--record", &tape],
            0,
        ),
        // Read-only steps: the failure changed nothing (exit 1, not 4).
        (vec!["apply", "s", "--to", "3.0.0", "--yes"], 1),
        (vec!["apply", "s", "--to", "3.0.0", "--yes", "--json"], 1),
        (vec!["apply", "--all", "--yes"], 0),
        (vec!["apply", "--all", "--yes", "--json"], 0),
        (vec!["history"], 0),
        (vec!["history", "--json"], 0),
    ] {
        let out = env.upshift(&args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "{args:?}: {}",
            common::stderr(&out)
        );
        shown.push_str(&String::from_utf8_lossy(&out.stdout));
        shown.push_str(&String::from_utf8_lossy(&out.stderr));
    }
    let runs = common::json(&env.upshift(&["history", "--json"]));
    for run in runs.as_array().expect("runs") {
        let id = run["id"].as_str().expect("id");
        for json in [false, true] {
            let mut args = vec!["history", "--run", id];
            if json {
                args.push("--json");
            }
            let out = env.upshift(&args);
            shown.push_str(&String::from_utf8_lossy(&out.stdout));
        }
    }
    let mut leaks = Vec::new();
    for secret in SECRETS {
        if shown.contains(secret) {
            leaks.push(format!("`{secret}` was shown to the operator"));
        }
    }
    let mut files = Vec::new();
    walk_files(&env.data(), &mut files);
    assert!(files.len() > 3, "{files:?}");
    for file in &files {
        let bytes = std::fs::read(file).expect("read");
        for secret in SECRETS {
            if bytes.windows(secret.len()).any(|w| w == secret.as_bytes()) {
                leaks.push(format!("`{secret}` is in {}", file.display()));
            }
        }
    }
    assert!(leaks.is_empty(), "{}\n\nshown:\n{shown}", leaks.join("\n"));
    // What is not secret still reads as it was.
    assert!(shown.contains("visible-name-value"), "{shown}");
    assert!(shown.contains("visible-setting"), "{shown}");
    assert!(shown.contains("********"), "{shown}");
    assert!(Path::new(&tape).exists(), "the tape was written");
}

/// Every regular file under `dir`.
fn walk_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => walk_files(&path, out),
            Ok(t) if t.is_file() => out.push(path),
            _ => {}
        }
    }
}
