//! Hostile test components (tests/adapters/hostile), built one per cargo feature into a target
//! directory of the test's own, so suites building different features do not race.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// One build at a time in this process: features share their suite's target directory.
static BUILDING: Mutex<()> = Mutex::new(());

/// Build the hostile adapter with `feature` into `target/<dir>` (under the repository root);
/// the component's path.
pub fn component(dir: &str, feature: &str) -> Result<PathBuf, String> {
    let _one = BUILDING.lock().unwrap_or_else(|p| p.into_inner());
    // host/cli → the repository root.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .unwrap_or(Path::new("../.."))
        .to_path_buf();
    let target = root.join("target").join(dir);
    let out = target.join("components");
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
    let copy = out.join(format!("{feature}.wasm"));
    std::fs::copy(&built, &copy).map_err(|e| format!("{}: {e}", built.display()))?;
    Ok(copy)
}

/// Run the custom step `name` with `payload` as a run performs it (through `RunContext`, so
/// the guard, the audit and the run's deadline apply): `ok: <summary>`, or the error the run saw.
pub async fn custom_step(
    session: &upshift::ops::Session,
    adapter: &upshift::runtime::LoadedAdapter,
    caps: &std::sync::Arc<upshift::caps::InstanceCaps>,
    run_id: &str,
    name: &str,
    payload: &str,
) -> String {
    use upshift::runtime::bindings::{Action, CustomAction};
    let held = match session
        .hold_lease(&caps.caller().instance, "hostile custom step")
        .await
    {
        Ok(held) => held,
        Err(e) => return format!("cannot hold the instance's lease: {e}"),
    };
    let ctx = upshift::ops::executor::RunContext {
        session,
        adapter,
        caps: caps.clone(),
        run_id: run_id.into(),
        data_version: "1.0.0".into(),
        restore_source: None,
        lease: &held,
        swap_began: Default::default(),
    };
    let action = Action::Custom(CustomAction {
        name: name.into(),
        payload: payload.into(),
        mutates: false,
    });
    match ctx.perform(&action).await {
        Ok(r) => format!("ok: {}", r.summary),
        Err(e) => e,
    }
}

/// Whether a record of `session`'s audit log after the first `from` refuses (a denial) or
/// fails with `fragment` in its reason or error.
pub fn audited(session: &upshift::ops::Session, from: usize, fragment: &str) -> bool {
    let records = super::audit_records(session.audit.path());
    records[from.min(records.len())..].iter().any(|r| {
        let has = |t: &Option<String>| t.as_deref().unwrap_or("").contains(fragment);
        (r.event.decision == upshift::audit::Decision::Denied && has(&r.event.reason))
            || has(&r.event.error)
    })
}
