//! Hostile test adapters built one component per cargo feature (see tests/adapters/hostile),
//! for tests that run them through the real `upshift` binary.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// One build at a time in this process: every feature is built into the same target directory.
static BUILDING: Mutex<()> = Mutex::new(());

/// The component of hostile case `feature`, built (once per test process) into
/// `target/hostile-cli/components/<feature>.wasm`; an error says why it could not be built.
pub fn component(feature: &str) -> Result<PathBuf, String> {
    let _one = BUILDING.lock().unwrap_or_else(|p| p.into_inner());
    // host/cli → the repository root.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .unwrap_or(Path::new("../.."))
        .to_path_buf();
    // Apart from tests/hostile.rs's target directory: both may build at the same time.
    let target = root.join("target").join("hostile-cli");
    let out = target.join("components");
    let wasm = out.join(format!("{feature}.wasm"));
    std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| env!("CARGO").to_string());
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(&root)
        .args(["build", "--quiet", "--locked", "--target", "wasm32-wasip2"])
        .args(["--profile", "hostile", "--target-dir"])
        .arg(&target)
        .args([
            "-p",
            "upshift-test-adapter-hostile",
            "--no-default-features",
        ])
        .args(["--features", feature]);
    // The outer build's settings are for the host, not for wasm guests.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_LLVM_COV",
        "LLVM_PROFILE_FILE",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!(
            "building hostile case `{feature}` failed ({status})"
        ));
    }
    let built = target.join("wasm32-wasip2/hostile/upshift_test_adapter_hostile.wasm");
    std::fs::copy(&built, &wasm).map_err(|e| format!("{}: {e}", built.display()))?;
    Ok(wasm)
}
