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
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
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

/// The simulators, built once per test process statically for musl (no image can be pulled,
/// so test images are FROM scratch plus these binaries): the directory holding them.
fn sim_binaries() -> &'static PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
        let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("images");
        let out = run(Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(&root)
            .args(["build", "--quiet", "--release", "--locked", "--target", "x86_64-unknown-linux-musl", "-p", "upshift-sim"])
            .args(["--bin", "kwdb-sim", "--bin", "devlake-sim", "--bin", "bytebase-sim", "--target-dir"])
            .arg(&target));
        assert!(
            out.status.success(),
            "building the static simulators failed (is `rustup target add x86_64-unknown-linux-musl` done?):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        target.join("x86_64-unknown-linux-musl/release")
    })
}

/// `docker build` a FROM-scratch image `tag` holding `binary` at `path`, with `extra` lines.
fn scratch_image(tag: &str, binary: &std::path::Path, path: &str, extra: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(binary, dir.path().join("bin")).expect("copy");
    std::fs::write(
        dir.path().join("Dockerfile"),
        format!("FROM scratch\nCOPY bin {path}\n{extra}"),
    )
    .expect("dockerfile");
    let out = run(Command::new("docker")
        .args(["build", "-q", "-t", tag])
        .arg(dir.path()));
    assert!(
        out.status.success(),
        "docker build {tag}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Images of the KWDB simulator laid out like `kwdb/kwdb` (`/kaiwudb/bin/kwbase`, so the docs'
/// `docker run … ./kwbase start-single-node …` works): `upshift-sim/kwdb:<version>`.
pub fn kwdb_images(versions: &[&str]) {
    let binary = sim_binaries().join("kwdb-sim");
    for version in versions {
        scratch_image(
            &format!("{KWDB_SIM_REPO}:{version}"),
            &binary,
            "/kaiwudb/bin/kwbase",
            &format!(
                "ENV KWDB_SIM_VERSION={version}\nWORKDIR /kaiwudb/bin\nLABEL org.opencontainers.image.version={version}\n"
            ),
        );
    }
}

/// Images of the DevLake simulator, one per release like `apache/devlake:<tag>`:
/// `upshift-sim/devlake:<tag>`, each starting its own release.
pub fn devlake_images(tags: &[&str]) {
    let binary = sim_binaries().join("devlake-sim");
    for tag in tags {
        scratch_image(
            &format!("{DEVLAKE_SIM_REPO}:{tag}"),
            &binary,
            "/app/lake",
            &format!(
                "WORKDIR /app\nLABEL org.opencontainers.image.version={tag}\nCMD [\"/app/lake\", \"--version\", \"{tag}\"]\n"
            ),
        );
    }
}

/// Images of the Bytebase simulator, one per release like `bytebase/bytebase:<version>`:
/// `upshift-sim/bytebase:<version>`. The entry point is the (simulated) server, so the seed's
/// `docker run … bytebase/bytebase:<v> --data /var/opt/bytebase --port 5678` works unchanged;
/// the path inside the image is this project's choice, not upstream's.
pub fn bytebase_images(versions: &[&str]) {
    let binary = sim_binaries().join("bytebase-sim");
    for version in versions {
        scratch_image(
            &format!("{BYTEBASE_SIM_REPO}:{version}"),
            &binary,
            "/usr/local/bin/bytebase",
            &format!(
                "LABEL org.opencontainers.image.version={version}\nENTRYPOINT [\"/usr/local/bin/bytebase\", \"--version\", \"{version}\"]\n"
            ),
        );
    }
}

/// The Bytebase simulator's image repository.
pub const BYTEBASE_SIM_REPO: &str = "upshift-sim/bytebase";
/// The KWDB simulator's image repository.
pub const KWDB_SIM_REPO: &str = "upshift-sim/kwdb";
/// The DevLake simulator's image repository.
pub const DEVLAKE_SIM_REPO: &str = "upshift-sim/devlake";

/// Runs `docker-compose down` for a file when dropped.
pub struct ComposeDown(pub PathBuf);

impl Drop for ComposeDown {
    fn drop(&mut self) {
        let _ = Command::new("docker-compose")
            .arg("-f")
            .arg(&self.0)
            .args(["down", "-t", "1"])
            .output();
    }
}

/// A root file system holding this machine's PostgreSQL server (the newest major under
/// `/usr/lib/postgresql`, its `share` files and every library its programs load, found with
/// `ldd`), `/bin/sh` (initdb runs `postgres -V` through `popen`) and a `postgres` user: what an
/// image needs to run PostgreSQL the way Bytebase's bundled one runs (issue 19). Made once per
/// test process; the path of the directory.
fn pg_runtime_root() -> &'static PathBuf {
    static MADE: OnceLock<PathBuf> = OnceLock::new();
    MADE.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("images/pg-root");
        let _ = std::fs::remove_dir_all(&root);
        let bindir = upshift_sim::pg::find_bindir().unwrap_or_else(|e| panic!("{e}"));
        let pg_home = bindir.parent().expect("…/postgresql/<major>").to_path_buf();
        let major = pg_home
            .file_name()
            .expect("major")
            .to_string_lossy()
            .to_string();
        let share = PathBuf::from("/usr/share/postgresql").join(&major);
        let copy_tree = |from: &std::path::Path| {
            let to = root.join(from.strip_prefix("/").expect("absolute"));
            std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
            let out = run(Command::new("cp").arg("-a").arg(from).arg(&to));
            assert!(
                out.status.success(),
                "cp {}: {}",
                from.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        copy_tree(&pg_home);
        copy_tree(&share);
        // The JIT (LLVM, ~100 MB) is optional at run time and left out.
        for jit in ["lib/llvmjit.so", "lib/llvmjit_types.bc", "lib/bitcode"] {
            let p = root
                .join(pg_home.strip_prefix("/").expect("absolute"))
                .join(jit);
            let _ = std::fs::remove_dir_all(&p);
            let _ = std::fs::remove_file(&p);
        }
        let _ =
            std::fs::remove_dir_all(root.join(share.strip_prefix("/").expect("abs")).join("man"));
        let mut programs: Vec<PathBuf> = ["initdb", "postgres", "pg_ctl"]
            .iter()
            .map(|p| bindir.join(p))
            .collect();
        programs.push(PathBuf::from("/bin/sh"));
        if let Ok(libs) = std::fs::read_dir(pg_home.join("lib")) {
            programs.extend(libs.filter_map(Result::ok).map(|e| e.path()).filter(|p| {
                p.extension().is_some_and(|x| x == "so") && !p.to_string_lossy().contains("llvmjit")
            }));
        }
        let out = run(Command::new("ldd").args(&programs));
        let mut libs: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            // Each program's header (`/bin/sh:`) is not indented; its libraries are.
            .filter(|l| l.starts_with(char::is_whitespace))
            .filter_map(|l| {
                l.split_whitespace()
                    .find(|w| w.starts_with('/'))
                    .map(str::to_string)
            })
            .collect();
        libs.sort();
        libs.dedup();
        for lib in libs.iter().chain(std::iter::once(&"/bin/sh".to_string())) {
            let to = root.join(lib.trim_start_matches('/'));
            std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
            // Dereferenced: the image has no symlink targets of its own.
            std::fs::copy(lib, &to).unwrap_or_else(|e| panic!("copy {lib}: {e}"));
        }
        std::fs::create_dir_all(root.join("etc")).expect("etc");
        std::fs::write(
            root.join("etc/passwd"),
            "root:x:0:0:root:/:/sbin/nologin\npostgres:x:999:999:postgres:/:/sbin/nologin\n",
        )
        .expect("passwd");
        std::fs::write(root.join("etc/group"), "root:x:0:\npostgres:x:999:\n").expect("group");
        let tmp = root.join("tmp");
        std::fs::create_dir_all(&tmp).expect("tmp");
        let out = run(Command::new("chmod").arg("1777").arg(&tmp));
        assert!(out.status.success(), "chmod 1777 {}", tmp.display());
        root
    })
}

/// Images of the Bytebase simulator that also carry PostgreSQL's server, for the embedded mode
/// (`--data DIR` without `PG_URL`): `upshift-sim/bytebase-embedded:<version>`.
pub fn bytebase_embedded_images(versions: &[&str]) {
    let binary = sim_binaries().join("bytebase-sim");
    let root = pg_runtime_root();
    for version in versions {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = run(Command::new("cp")
            .arg("-a")
            .arg(root)
            .arg(dir.path().join("root")));
        assert!(
            out.status.success(),
            "cp root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::create_dir_all(dir.path().join("root/usr/local/bin")).expect("bin dir");
        std::fs::copy(&binary, dir.path().join("root/usr/local/bin/bytebase")).expect("copy sim");
        std::fs::write(
            dir.path().join("Dockerfile"),
            format!(
                "FROM scratch\nCOPY root/ /\nLABEL org.opencontainers.image.version={version}\nENTRYPOINT [\"/usr/local/bin/bytebase\", \"--version\", \"{version}\"]\n"
            ),
        )
        .expect("dockerfile");
        let tag = format!("{BYTEBASE_EMBEDDED_REPO}:{version}");
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

/// The repository of the Bytebase simulator images that carry PostgreSQL (embedded mode).
pub const BYTEBASE_EMBEDDED_REPO: &str = "upshift-sim/bytebase-embedded";
