//! The attacks, one `impl Case` per cargo feature. Building with two features (or none) fails to
//! compile, so every component is exactly one case.

#![allow(unused_imports)]

use upshift_adapter_sdk::{
    AdapterError, AdapterInfo, CapError, Check, Detection, Plan, Refusal, RestoreRequest, Step, db,
    error, files, http, log, progress, refuse, service, steps,
};

use crate::{Case, Hostile, manifest};

/// A plan of `steps` from `current` to `target`.
#[allow(dead_code)]
fn plan_of(current: Detection, target: String, steps: Vec<Step>) -> Plan {
    Plan {
        from_version: current.version,
        to_version: target,
        steps,
        notes: vec![],
    }
}

/// A harmless custom step.
#[allow(dead_code)]
fn noop(id: &str) -> Step {
    steps::custom(id, "noop", "", false, "a step")
}

#[cfg(feature = "benign")]
impl Case for Hostile {}

#[cfg(feature = "spin-loop")]
impl Case for Hostile {
    fn plan(_: Detection, _: String) -> Result<Plan, Refusal> {
        let mut n: u64 = 0;
        loop {
            n = std::hint::black_box(n.wrapping_add(1));
        }
    }
}

#[cfg(feature = "memory-bomb")]
impl Case for Hostile {
    fn plan(_: Detection, _: String) -> Result<Plan, Refusal> {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            hoard.push(vec![1u8; 1 << 20]);
            std::hint::black_box(&hoard);
        }
    }
}

#[cfg(feature = "deep-recursion")]
#[allow(unconditional_recursion)]
fn recurse(depth: u64) -> u64 {
    std::hint::black_box(recurse(depth + 1)) + 1
}

#[cfg(feature = "deep-recursion")]
impl Case for Hostile {
    fn plan(_: Detection, _: String) -> Result<Plan, Refusal> {
        Err(refuse("never", recurse(0).to_string(), &[], ""))
    }
}

#[cfg(feature = "panic-describe")]
impl Case for Hostile {
    fn describe() -> AdapterInfo {
        panic!("describe panicked on purpose")
    }
}

#[cfg(feature = "trap-every-export")]
impl Case for Hostile {
    fn detect() -> Result<Detection, AdapterError> {
        panic!("detect panicked on purpose")
    }
    fn plan(_: Detection, _: String) -> Result<Plan, Refusal> {
        panic!("plan panicked on purpose")
    }
    fn attack(_: &str) -> Result<String, CapError> {
        panic!("run-step panicked on purpose")
    }
    fn verify(_: String) -> Result<Vec<Check>, AdapterError> {
        panic!("verify panicked on purpose")
    }
    fn plan_restore(_: RestoreRequest) -> Result<Plan, Refusal> {
        // A trap that is not a panic: an out-of-bounds access the compiler cannot see through.
        let v: Vec<u8> = Vec::new();
        let i = std::hint::black_box(usize::MAX / 2);
        let p = v.as_ptr().wrapping_add(i);
        // SAFETY: deliberately invalid, to trap in the sandbox.
        Err(refuse(
            "never",
            unsafe { p.read_volatile() }.to_string(),
            &[],
            "",
        ))
    }
}

#[cfg(feature = "lying-describe")]
impl Case for Hostile {
    fn describe() -> AdapterInfo {
        let mut info = manifest();
        if let Some(meta) = info.bindings.iter_mut().find(|b| b.name == "meta") {
            meta.access.push(upshift_adapter_sdk::Access::Ddl);
        }
        info
    }
}

#[cfg(feature = "plan-uses-caps")]
impl Case for Hostile {
    fn plan(_: Detection, _: String) -> Result<Plan, Refusal> {
        let got = files::read("data", "secret.txt");
        Err(refuse(
            "caps-in-plan",
            match got {
                Ok(bytes) => format!("read {} bytes", bytes.len()),
                Err(e) => upshift_adapter_sdk::describe_cap_error(&e),
            },
            &[],
            "",
        ))
    }
}

#[cfg(feature = "plan-100k-steps")]
impl Case for Hostile {
    fn plan(current: Detection, target: String) -> Result<Plan, Refusal> {
        let steps = (0..100_000).map(|i| noop(&format!("s{i}"))).collect();
        Ok(plan_of(current, target, steps))
    }
}

#[cfg(feature = "plan-cycle")]
impl Case for Hostile {
    fn plan(current: Detection, target: String) -> Result<Plan, Refusal> {
        Ok(plan_of(
            current,
            target,
            vec![noop("a"), noop("b"), noop("a")],
        ))
    }
}

#[cfg(feature = "plan-bad-step-id")]
impl Case for Hostile {
    fn plan(current: Detection, target: String) -> Result<Plan, Refusal> {
        Ok(plan_of(current, target, vec![noop("../../etc/passwd")]))
    }
}

#[cfg(feature = "plan-huge-text")]
impl Case for Hostile {
    fn plan(current: Detection, target: String) -> Result<Plan, Refusal> {
        let step = steps::custom("big", "noop", "", false, "x".repeat(1 << 20));
        Ok(plan_of(current, target, vec![step]))
    }
}

#[cfg(feature = "plan-ungranted-backup")]
impl Case for Hostile {
    fn plan(current: Detection, target: String) -> Result<Plan, Refusal> {
        let step = steps::db_backup(
            "grab",
            "meta",
            upshift_adapter_sdk::BackupMethod::Dump,
            "dump the database it may only read",
        );
        Ok(plan_of(current, target, vec![step]))
    }
}

#[cfg(feature = "plan-wrong-kind")]
impl Case for Hostile {
    fn plan(current: Detection, target: String) -> Result<Plan, Refusal> {
        let step = steps::service_stop("stop-db", "meta", "stop a database as if a service");
        Ok(plan_of(current, target, vec![step]))
    }
}

#[cfg(feature = "plan-switch-uninspected")]
impl Case for Hostile {
    fn plan(current: Detection, target: String) -> Result<Plan, Refusal> {
        let step = steps::service_switch(
            "switch",
            "app",
            "6.6.6",
            "switch a service it may only inspect",
        );
        Ok(plan_of(current, target, vec![step]))
    }
}

#[cfg(feature = "huge-summary")]
impl Case for Hostile {
    fn attack(_: &str) -> Result<String, CapError> {
        Ok("y".repeat(20 << 20))
    }
}

#[cfg(feature = "huge-refusal")]
impl Case for Hostile {
    fn plan(_: Detection, _: String) -> Result<Plan, Refusal> {
        Err(refuse("huge", "z".repeat(20 << 20), &[], ""))
    }
}

#[cfg(feature = "log-flood")]
impl Case for Hostile {
    fn attack(_: &str) -> Result<String, CapError> {
        let line = "l".repeat(64 << 10);
        for _ in 0..20_000 {
            log::write(log::Level::Error, &line);
        }
        Ok("flooded the log".into())
    }
}

#[cfg(feature = "progress-flood")]
impl Case for Hostile {
    fn attack(_: &str) -> Result<String, CapError> {
        let message = "p".repeat(64 << 10);
        for i in 0..20_000 {
            progress::report(i, 20_000, &message);
        }
        Ok("flooded the progress bar".into())
    }
}

/// A million host calls in one step. `apply --to 2.0.0-<kind>` plans the step `flood` with
/// `<kind>` as its payload: `calls` (the default) checks that a file exists, allowed and
/// audited each time; `logs` writes a log line, reports progress and checks that a file exists,
/// in turn; `big` reads a 64 KiB absolute path, denied each time with the path in the denial's
/// reason and detail, so each would make a big audit record.
#[cfg(feature = "call-flood")]
impl Case for Hostile {
    fn plan(current: Detection, target: String) -> Result<Plan, Refusal> {
        let kind = target
            .split_once('-')
            .map_or("", |(_, kind)| kind)
            .to_string();
        let flood = steps::custom("flood", "attack", &kind, false, "a million host calls");
        Ok(plan_of(current, target, vec![flood]))
    }

    fn attack(kind: &str) -> Result<String, CapError> {
        const CALLS: u32 = 1_000_000;
        let mut denied = 0u32;
        match kind {
            "logs" => {
                for i in 0..CALLS {
                    match i % 3 {
                        0 => log::write(log::Level::Info, "tick"),
                        1 => progress::report(u64::from(i), u64::from(CALLS), "tick"),
                        _ => denied += u32::from(files::exists("data", "x").is_err()),
                    }
                }
            }
            "big" => {
                let path = format!("/{}", "a".repeat(64 << 10));
                for _ in 0..CALLS {
                    denied += u32::from(files::read("data", &path).is_err());
                }
            }
            _ => {
                for _ in 0..CALLS {
                    denied += u32::from(files::exists("data", "x").is_err());
                }
            }
        }
        Ok(format!("made {CALLS} host calls ({denied} refused)"))
    }
}

#[cfg(feature = "resource-hog")]
#[link(wasm_import_module = "wasi:cli/stderr@0.2.6")]
unsafe extern "C" {
    /// Each call hands the guest a new `output-stream` resource.
    #[link_name = "get-stderr"]
    fn get_stderr() -> i32;
}

#[cfg(feature = "resource-hog")]
impl Case for Hostile {
    fn attack(_: &str) -> Result<String, CapError> {
        let mut last = 0;
        for _ in 0..1_000_000 {
            // SAFETY: a WASI import with no arguments; the handle is deliberately never dropped.
            last = unsafe { get_stderr() };
        }
        Ok(format!("holding {last} handles"))
    }
}

#[cfg(feature = "path-dotdot")]
impl Case for Hostile {
    fn attack(_: &str) -> Result<String, CapError> {
        files::read("data", "sub/../../secret.txt").map(|b| String::from_utf8_lossy(&b).into())
    }
}

#[cfg(feature = "path-absolute")]
impl Case for Hostile {
    fn attack(payload: &str) -> Result<String, CapError> {
        files::read("data", payload).map(|b| String::from_utf8_lossy(&b).into())
    }
}

#[cfg(feature = "symlink-read")]
impl Case for Hostile {
    fn attack(_: &str) -> Result<String, CapError> {
        files::read("data", "link/secret.txt").map(|b| String::from_utf8_lossy(&b).into())
    }
}

#[cfg(feature = "symlink-write")]
impl Case for Hostile {
    fn attack(_: &str) -> Result<String, CapError> {
        files::write("data", "link/planted.txt", b"planted").map(|()| "planted".into())
    }
}

#[cfg(feature = "ungranted-binding")]
impl Case for Hostile {
    fn attack(_: &str) -> Result<String, CapError> {
        db::query("admin", "SELECT 1", &[]).map(|r| format!("{} rows", r.rows.len()))
    }
}

#[cfg(feature = "unbound-binding")]
impl Case for Hostile {
    fn attack(_: &str) -> Result<String, CapError> {
        db::query("spare", "SELECT 1", &[]).map(|r| format!("{} rows", r.rows.len()))
    }
}

/// Run `sql` on `meta` with `execute`.
#[allow(dead_code)]
fn execute(sql: &str) -> Result<String, CapError> {
    db::execute("meta", sql, &[]).map(|n| format!("{n} rows affected"))
}

/// Run `sql` on `meta` with `query`.
#[allow(dead_code)]
fn query(sql: &str) -> Result<String, CapError> {
    db::query("meta", sql, &[]).map(|r| format!("{:?}", r.rows))
}

#[cfg(feature = "ddl-on-read")]
impl Case for Hostile {
    fn attack(_: &str) -> Result<String, CapError> {
        execute("DROP TABLE victims")
    }
}

#[cfg(feature = "write-in-cte")]
impl Case for Hostile {
    fn attack(_: &str) -> Result<String, CapError> {
        query("WITH gone AS (DELETE FROM victims RETURNING id) SELECT count(*) FROM gone")
    }
}

#[cfg(feature = "dblink")]
impl Case for Hostile {
    fn attack(_: &str) -> Result<String, CapError> {
        query(
            "SELECT * FROM dblink('dbname=postgres', 'SELECT rolname FROM pg_authid') AS t(r text)",
        )
    }
}

#[cfg(feature = "connect-trick")]
impl Case for Hostile {
    fn attack(_: &str) -> Result<String, CapError> {
        execute("\\connect postgres")
    }
}

#[cfg(feature = "set-role")]
impl Case for Hostile {
    fn attack(_: &str) -> Result<String, CapError> {
        execute("SET ROLE postgres")
    }
}

#[cfg(feature = "create-database")]
impl Case for Hostile {
    fn attack(_: &str) -> Result<String, CapError> {
        execute("CREATE DATABASE stolen")
    }
}

#[cfg(feature = "set-config")]
impl Case for Hostile {
    fn attack(_: &str) -> Result<String, CapError> {
        query("SELECT set_config('default_transaction_read_only', 'off', false)")
    }
}

#[cfg(feature = "nextval-read-only")]
impl Case for Hostile {
    fn attack(_: &str) -> Result<String, CapError> {
        query("SELECT nextval('victims_id_seq')")
    }
}

/// GET `path` on `api`; the status and body as text.
#[allow(dead_code)]
fn get(path: &str) -> Result<http::Response, CapError> {
    http::request("api", "GET", path, &[])
}

#[cfg(feature = "http-other-host")]
impl Case for Hostile {
    fn attack(payload: &str) -> Result<String, CapError> {
        get(&format!("//127.0.0.1:{payload}/steal")).map(|r| r.status.to_string())
    }
}

#[cfg(feature = "http-absolute-url")]
impl Case for Hostile {
    fn attack(payload: &str) -> Result<String, CapError> {
        get(&format!("http://127.0.0.1:{payload}/steal")).map(|r| r.status.to_string())
    }
}

#[cfg(feature = "http-redirect")]
impl Case for Hostile {
    fn attack(_: &str) -> Result<String, CapError> {
        // The host does not follow the redirect; the adapter tries to, by hand.
        let first = get("/redirect")?;
        let location = String::from_utf8_lossy(&first.body).into_owned();
        get(&location).map(|r| r.status.to_string())
    }
}

#[cfg(feature = "http-write-on-read")]
impl Case for Hostile {
    fn attack(_: &str) -> Result<String, CapError> {
        http::request("api", "DELETE", "/everything", &[]).map(|r| r.status.to_string())
    }
}

/// `db-probe`: runs whatever database call its payload names, so one component drives a table
/// of variations. Payload: a first line `<query|execute|transaction> <binding>`, then the SQL;
/// a transaction's statements are separated by lines holding only `--next--` when there is
/// one, otherwise one statement per line. The answer is the rows (query), the count (execute)
/// or the counts (transaction).
#[cfg(feature = "db-probe")]
impl Case for Hostile {
    fn attack(payload: &str) -> Result<String, CapError> {
        let (head, sql) = payload.split_once('\n').unwrap_or((payload, ""));
        let mut words = head.split_whitespace();
        let (op, binding) = (words.next().unwrap_or(""), words.next().unwrap_or("meta"));
        match op {
            "query" => db::query(binding, sql, &[]).map(|r| {
                let rows: Vec<Vec<String>> = r
                    .rows
                    .iter()
                    .map(|row| {
                        row.iter()
                            .map(|v| {
                                upshift_adapter_sdk::value_text(v).unwrap_or_else(|| "NULL".into())
                            })
                            .collect()
                    })
                    .collect();
                format!("{rows:?}")
            }),
            "execute" => db::execute(binding, sql, &[]).map(|n| format!("{n} rows affected")),
            "transaction" => {
                let separated = sql.lines().any(|l| l.trim() == "--next--");
                let parts: Vec<&str> = if separated {
                    sql.split("\n--next--\n").collect()
                } else {
                    sql.lines().filter(|l| !l.trim().is_empty()).collect()
                };
                let statements: Vec<db::Statement> = parts
                    .into_iter()
                    .map(|s| db::Statement {
                        sql: s.to_string(),
                        params: vec![],
                    })
                    .collect();
                db::transaction(binding, &statements).map(|n| format!("{n:?} rows affected"))
            }
            other => Ok(format!("unknown probe `{other}`")),
        }
    }
}

// ---- H4 (issue 14): what the operator reads, and what the host writes down. ----

/// Text that rewrites the operator's terminal: a window title (OSC), an erased line with a
/// forged success mark, a C1 CSI and a right-to-left override.
#[allow(dead_code)]
const FORGED: &str = "note \u{1b}]0;pwned\u{7} \u{1b}[2K\r✔ all checks passed \u{9b}31m \u{202e}desrever\u{202c} end";

/// Every adapter text field carries [`FORGED`]: detection facts, step titles, notes, the
/// refusal (target `9.9.9`), log lines, progress, step summaries, a step error (target
/// `3.0.0`: a second step fails) and verification checks.
#[cfg(feature = "terminal-escapes")]
impl Case for Hostile {
    fn detect() -> Result<Detection, AdapterError> {
        Ok(Detection {
            version: "1.0.0".into(),
            facts: vec![upshift_adapter_sdk::Fact {
                key: "edition".into(),
                value: FORGED.into(),
            }],
        })
    }

    fn plan(current: Detection, target: String) -> Result<Plan, Refusal> {
        if target == "9.9.9" {
            return Err(refuse(
                "forged",
                FORGED,
                &["2.0.0".to_string(), FORGED.to_string()],
                FORGED,
            ));
        }
        let mut steps = vec![steps::custom("attack", "attack", "", false, FORGED)];
        if target == "3.0.0" {
            steps.push(steps::custom("fail", "attack", "fail", false, FORGED));
        }
        let mut plan = plan_of(current, target, steps);
        plan.notes = vec![FORGED.into()];
        Ok(plan)
    }

    fn attack(payload: &str) -> Result<String, CapError> {
        log::write(log::Level::Warn, FORGED);
        log::write(
            log::Level::Info,
            &format!("{FORGED}\n✔ a second, forged line"),
        );
        progress::report(1, 2, FORGED);
        if payload == "fail" {
            return Err(CapError::Failed(format!("{FORGED}\n{FORGED}")));
        }
        Ok(format!("{FORGED}\n{FORGED}"))
    }

    fn verify(_expected: String) -> Result<Vec<Check>, AdapterError> {
        Ok(vec![Check {
            name: FORGED.into(),
            passed: true,
            detail: FORGED.into(),
        }])
    }
}

/// Reads the files the payload names (default `.env` and `app.toml`) from `data`, and tells
/// everyone what it read: log lines, progress, its step summary, and (target `3.0.0`) the
/// error of a second step that fails.
#[cfg(feature = "dotenv-secrets")]
impl Case for Hostile {
    fn plan(current: Detection, target: String) -> Result<Plan, Refusal> {
        let mut steps = vec![steps::custom(
            "leak",
            "attack",
            "",
            false,
            "read the config",
        )];
        if target == "3.0.0" {
            steps.push(steps::custom(
                "fail",
                "attack",
                "fail",
                false,
                "fail with it",
            ));
        }
        Ok(plan_of(current, target, steps))
    }

    fn attack(payload: &str) -> Result<String, CapError> {
        let mut text = String::new();
        for name in [".env", "app.toml"] {
            let bytes = files::read("data", name)?;
            text.push_str(&String::from_utf8_lossy(&bytes));
        }
        for line in text.lines() {
            log::write(log::Level::Info, line);
            progress::report(1, 2, line);
        }
        if payload == "fail" {
            return Err(CapError::Failed(format!("failing with: {text}")));
        }
        Ok(format!("read: {text}"))
    }

    fn verify(_expected: String) -> Result<Vec<Check>, AdapterError> {
        let env = files::read("data", ".env")
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        Ok(vec![Check {
            name: "config".into(),
            passed: true,
            detail: env,
        }])
    }
}

// H3 (tests/hostile_edges.rs): payload-driven probes, one component each.

/// The text a target `M.0.0-h<hex>` carries, and `M` (the role it plays in the plan): a hostile
/// version travels through the operator's `--to` as a valid semver pre-release.
#[cfg(feature = "edge-versions")]
fn carried(target: &str) -> (u64, String) {
    let (head, hex) = target.split_once("-h").unwrap_or((target, ""));
    let role = head
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    let bytes: Vec<u8> = (0..hex.len() / 2)
        .filter_map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
        .collect();
    (role, String::from_utf8_lossy(&bytes).into_owned())
}

/// Plans carry the version it is handed: role 2 switches service `proc` to it (stop, switch,
/// start), 3 makes it the plan's `to-version`, 4 its `from-version`. `attack(v)` asks
/// `image-present(proc, v)`.
#[cfg(feature = "edge-versions")]
impl Case for Hostile {
    fn plan(current: Detection, target: String) -> Result<Plan, Refusal> {
        let (role, version) = carried(&target);
        Ok(match role {
            3 => plan_of(current, version, vec![]),
            4 => plan_of(
                Detection {
                    version,
                    facts: vec![],
                },
                target,
                vec![],
            ),
            _ => plan_of(
                current,
                target,
                vec![
                    steps::service_stop("stop", "proc", "stop the service"),
                    steps::service_switch(
                        "switch",
                        "proc",
                        &version,
                        "switch to the carried version",
                    ),
                    steps::service_start("start", "proc", "start the carried version"),
                ],
            ),
        })
    }

    fn attack(payload: &str) -> Result<String, CapError> {
        service::image_present("proc", payload).map(|p| p.to_string())
    }
}

/// `attack("OP:PATH")` runs one file operation on `data`: `read`, `write`, `list`, `exists`,
/// or `load` (a `load-image` of PATH onto `proc`).
#[cfg(feature = "edge-files")]
impl Case for Hostile {
    fn attack(payload: &str) -> Result<String, CapError> {
        let (op, path) = payload.split_once(':').unwrap_or((payload, ""));
        match op {
            "read" => files::read("data", path).map(|b| format!("{} bytes", b.len())),
            "write" => files::write("data", path, b"planted").map(|()| "written".into()),
            "list" => files::list_dir("data", path).map(|e| format!("{} entries", e.len())),
            "exists" => files::exists("data", path).map(|e| e.to_string()),
            "load" => service::load_image("proc", "data", path).map(|i| i.join(",")),
            other => Ok(format!("no operation {other}")),
        }
    }
}

/// `attack(path)` GETs `path` on `api`.
#[cfg(feature = "edge-http")]
impl Case for Hostile {
    fn attack(payload: &str) -> Result<String, CapError> {
        get(payload).map(|r| format!("{} {}", r.status, String::from_utf8_lossy(&r.body)))
    }
}

/// A plan whose one step calls `meta` and `api` (both bound to dead addresses with credentials
/// in their URLs), logs what the host answered, and fails with it.
#[cfg(feature = "edge-leak")]
impl Case for Hostile {
    fn plan(current: Detection, target: String) -> Result<Plan, Refusal> {
        Ok(plan_of(
            current,
            target,
            vec![steps::custom(
                "leak",
                "attack",
                "",
                false,
                "call the dead bindings",
            )],
        ))
    }

    fn attack(_: &str) -> Result<String, CapError> {
        if let Err(e) = db::query("meta", "SELECT 1", &[]) {
            log::write(
                log::Level::Error,
                &format!("db said: {}", upshift_adapter_sdk::describe_cap_error(&e)),
            );
        }
        get("/status").map(|r| r.status.to_string())
    }
}
