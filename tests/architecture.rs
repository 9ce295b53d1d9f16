//! The host's crates depend on each other one way only, and the simulators stay test
//! infrastructure. Read from `cargo metadata`, so a new `[dependencies]` line that breaks the
//! shape fails here with the edge named (see docs/architecture.md).

use std::collections::{BTreeMap, BTreeSet};

/// Each host crate and the workspace crates it may depend on (normal and build dependencies).
const ALLOWED: &[(&str, &[&str])] = &[
    ("upshift-model", &[]),
    ("upshift-caps", &["upshift-model"]),
    ("upshift-state", &["upshift-model"]),
    ("upshift-runtime", &["upshift-model", "upshift-caps"]),
    (
        "upshift",
        &[
            "upshift-model",
            "upshift-caps",
            "upshift-state",
            "upshift-runtime",
        ],
    ),
    ("upshift-cli", &["upshift", "upshift-sim"]),
];

/// The simulators' crate: a dependency only of tests, benchmarks and the CLI's `demo` feature.
const SIMULATORS: &str = "upshift-sim";

/// `cargo metadata` (workspace members only), run in `dir`.
fn metadata(dir: &std::path::Path) -> serde_json::Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(dir)
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("metadata JSON")
}

/// A workspace package's name, features and dependencies as `cargo metadata` lists them.
struct Package {
    features: BTreeMap<String, Vec<String>>,
    /// (name, kind: "normal" | "build" | "dev", optional)
    dependencies: Vec<(String, String, bool)>,
}

fn workspace() -> BTreeMap<String, Package> {
    let meta = metadata(std::path::Path::new(env!("CARGO_MANIFEST_DIR")));
    let mut packages = BTreeMap::new();
    for p in meta["packages"].as_array().expect("packages") {
        let name = p["name"].as_str().expect("name").to_string();
        let features = serde_json::from_value(p["features"].clone()).expect("features");
        let dependencies = p["dependencies"]
            .as_array()
            .expect("dependencies")
            .iter()
            .map(|d| {
                (
                    d["rename"]
                        .as_str()
                        .or(d["name"].as_str())
                        .expect("dependency name")
                        .to_string(),
                    d["kind"].as_str().unwrap_or("normal").to_string(),
                    d["optional"].as_bool().unwrap_or(false),
                )
            })
            .collect();
        packages.insert(
            name,
            Package {
                features,
                dependencies,
            },
        );
    }
    packages
}

#[test]
fn host_crates_depend_one_way() {
    let packages = workspace();
    let ours: BTreeSet<&String> = packages.keys().collect();
    let mut wrong = Vec::new();
    for (krate, allowed) in ALLOWED {
        let package = packages
            .get(*krate)
            .unwrap_or_else(|| panic!("the workspace has no crate `{krate}`"));
        for (dep, kind, _) in &package.dependencies {
            if kind != "dev" && ours.contains(dep) && !allowed.contains(&dep.as_str()) {
                wrong.push(format!("{krate} → {dep} ({kind})"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "dependencies against the direction model ← caps ← runtime ← upshift ← cli (state beside \
         caps): {wrong:?}"
    );
}

#[test]
fn simulators_are_linked_only_by_tests_benchmarks_and_the_demo() {
    let packages = workspace();
    for (name, package) in &packages {
        for (dep, kind, optional) in &package.dependencies {
            if dep != SIMULATORS || kind == "dev" || name == "upshift-bench" {
                continue;
            }
            assert_eq!(
                name, "upshift-cli",
                "`{name}` depends on the simulators ({kind}); only tests, benchmarks and the \
                 CLI's demo may"
            );
            assert!(
                optional,
                "upshift-cli must depend on the simulators only through its `demo` feature"
            );
            let demo = package
                .features
                .get("demo")
                .expect("upshift-cli has a `demo` feature");
            assert!(
                demo.iter().any(|f| f == &format!("dep:{SIMULATORS}")),
                "the `demo` feature must be what links the simulators: {demo:?}"
            );
        }
    }
}

#[test]
fn one_postgresql_client_in_the_workspace() {
    // tokio-postgres only: the synchronous `postgres` crate runs a runtime of its own per client.
    let packages = workspace();
    let users: Vec<&String> = packages
        .iter()
        .filter(|(_, p)| p.dependencies.iter().any(|(d, _, _)| d == "postgres"))
        .map(|(name, _)| name)
        .collect();
    assert!(
        users.is_empty(),
        "these crates link the synchronous `postgres` client beside tokio-postgres: {users:?}"
    );
}

#[test]
fn cargo_run_at_the_root_finds_the_one_binary() {
    // The README's first command is `cargo run -- demo`: cargo runs the one binary of the
    // workspace's default members, and refuses when there are several. Asked from the
    // repository root, as the README's reader runs it: inside a member's folder cargo takes
    // that member as the default instead.
    let meta = metadata(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."));
    let defaults: Vec<&str> = meta["workspace_default_members"]
        .as_array()
        .expect("workspace_default_members")
        .iter()
        .filter_map(serde_json::Value::as_str)
        .collect();
    let mut binaries = Vec::new();
    for package in meta["packages"].as_array().expect("packages") {
        if !defaults.contains(&package["id"].as_str().unwrap_or_default()) {
            continue;
        }
        for target in package["targets"].as_array().expect("targets") {
            if target["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "bin"))
            {
                binaries.push(target["name"].as_str().unwrap_or_default().to_string());
            }
        }
    }
    assert_eq!(
        binaries,
        ["upshift"],
        "`cargo run` at the root must find exactly the `upshift` binary among the default members"
    );
}
