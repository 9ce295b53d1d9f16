//! Docker test infrastructure: local `FROM scratch` images of a static test service (no registry
//! is reachable), containers on host networking and loopback only, and cleanup on drop.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The test image repository.
pub const REPO: &str = "upshift-test/kwdb";

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Whether the Docker engine answers; under `CI=true` its absence fails the test.
pub fn available() -> bool {
    let ok = Command::new("docker")
        .arg("info")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        let message = "Docker is needed for this test and is missing: `docker info` failed (install Docker Engine and start dockerd)";
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{message}");
        }
        eprintln!("SKIPPED: {message}");
    }
    ok
}

fn build_service() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("images");
    let out = run(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(&root)
            .args([
                "build",
                "--quiet",
                "--release",
                "--locked",
                "--target",
                "x86_64-unknown-linux-musl",
                "-p",
                "upshift-test-svc",
                "--target-dir",
            ])
            .arg(&target),
    );
    assert!(
        out.status.success(),
        "building the static test service failed (is `rustup target add x86_64-unknown-linux-musl` done?):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    target.join("x86_64-unknown-linux-musl/release/kwbase")
}

/// Build (once per test process) `upshift-test/kwdb:2.2.0`, `:3.0.0` and the broken `:9.9.9`.
pub fn images() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let binary = build_service();
        for (version, broken) in [("2.2.0", false), ("3.0.0", false), ("9.9.9", true)] {
            let dir = tempfile::tempdir().expect("tempdir");
            std::fs::copy(&binary, dir.path().join("kwbase")).expect("copy");
            let fail = if broken { "ENV SVC_FAIL=1\n" } else { "" };
            std::fs::write(
                dir.path().join("Dockerfile"),
                format!(
                    "FROM scratch\nCOPY kwbase /kaiwudb/bin/kwbase\nENV SVC_VERSION={version}\n{fail}\
                     LABEL org.opencontainers.image.version={version}\n\
                     HEALTHCHECK --interval=1s --timeout=2s --retries=3 CMD [\"/kaiwudb/bin/kwbase\", \"check\"]\n\
                     CMD [\"/kaiwudb/bin/kwbase\", \"start-single-node\"]\n"
                ),
            )
            .expect("dockerfile");
            let out = run(Command::new("docker").args(["build", "-q", "-t", &format!("{REPO}:{version}")]).arg(dir.path()));
            assert!(out.status.success(), "docker build: {}", String::from_utf8_lossy(&out.stderr));
        }
    });
}

/// `docker inspect NAME` as JSON.
pub fn inspect(name: &str) -> serde_json::Value {
    let out = run(Command::new("docker").args(["inspect", name]));
    assert!(
        out.status.success(),
        "docker inspect {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("inspect json");
    v[0].clone()
}

/// Whether a container of that name exists.
pub fn exists(name: &str) -> bool {
    run(Command::new("docker").args(["inspect", name]))
        .status
        .success()
}

/// Removes containers (force) when dropped.
pub struct Containers(pub Vec<String>);

impl Drop for Containers {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = Command::new("docker").args(["rm", "-f", name]).output();
        }
    }
}

/// Start a container the way kwdb-upgrade.md's `docker run` does (host networking, loopback
/// ports; `--privileged` and `memlock=-1` are refused by this sandbox's engine and left out).
pub fn run_kwdb_like(name: &str, port: u16, store: &std::path::Path, version: &str) {
    let out = run(Command::new("docker")
        .args(["run", "-d", "--name", name])
        .args([
            "--ulimit",
            "memlock=65536:65536",
            "--ulimit",
            "nofile=1024:4096",
        ])
        .arg("-v")
        .arg(format!(
            "{}:/kaiwudb/deploy/kwdb-container",
            store.display()
        ))
        .args([
            "--ipc",
            "shareable",
            "-w",
            "/kaiwudb/bin",
            "--network",
            "host",
        ])
        .args([
            "-e",
            &format!("SVC_PORT={port}"),
            "-e",
            "KW_OPERATOR=set-by-operator",
        ])
        .args([
            "--label",
            "team=data",
            "--restart",
            "unless-stopped",
            "--log-opt",
            "max-size=10m",
        ])
        .args([
            "--cap-add",
            "SYS_NICE",
            "--stop-timeout",
            "5",
            "--shm-size",
            "64m",
        ])
        .arg(format!("{REPO}:{version}"))
        .args([
            "./kwbase",
            "start-single-node",
            "--insecure",
            "--listen-addr=127.0.0.1:26257",
        ])
        .arg(format!("--http-addr=127.0.0.1:{port}"))
        .arg("--store=/kaiwudb/deploy/kwdb-container"));
    assert!(
        out.status.success(),
        "docker run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Build (once per test process) FROM-scratch images of the KWDB simulator, laid out like
/// `kwdb/kwdb` (`/kaiwudb/bin/kwbase`): `upshift-sim/kwdb:<version>` for each of `versions`.
/// The simulator is test infrastructure, built statically for musl since no image can be pulled.
pub fn kwdb_images(versions: &[&str]) {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let binary = BUILT.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("images");
        let out = run(Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(&root)
            .args(["build", "--quiet", "--release", "--locked", "--target", "x86_64-unknown-linux-musl", "-p", "upshift-sim", "--bin", "kwdb-sim", "--target-dir"])
            .arg(&target));
        assert!(
            out.status.success(),
            "building the static KWDB simulator failed (is `rustup target add x86_64-unknown-linux-musl` done?):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        target.join("x86_64-unknown-linux-musl/release/kwdb-sim")
    });
    for version in versions {
        let tag = format!("{KWDB_SIM_REPO}:{version}");
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::copy(binary, dir.path().join("kwbase")).expect("copy");
        std::fs::write(
            dir.path().join("Dockerfile"),
            format!(
                "FROM scratch\nCOPY kwbase /kaiwudb/bin/kwbase\nENV KWDB_SIM_VERSION={version}\nWORKDIR /kaiwudb/bin\n\
                 LABEL org.opencontainers.image.version={version}\n"
            ),
        )
        .expect("dockerfile");
        let out = run(Command::new("docker")
            .args(["build", "-q", "-t", &tag])
            .arg(dir.path()));
        assert!(
            out.status.success(),
            "docker build {tag}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The KWDB simulator's image repository.
pub const KWDB_SIM_REPO: &str = "upshift-sim/kwdb";
