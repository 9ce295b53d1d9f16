//! `upshift status` of 1,000 live instances within 10 s (issue 17): each instance a process
//! service of the test adapter, started by Upshift (untimed), with `target = "2.0.0-cheap"`, so
//! status detects it, inspects and health-checks its service and plans to the target.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::Config;
use crate::fleet::{fleet_file, instances, kill_under, timed, upshift_binary};
use crate::report::{Metric, Target, Unit};

/// Instances in the fleet (the number).
const INSTANCES: usize = 1000;
/// How many instances start at once while the fleet is brought up (untimed).
const START_PARALLEL: usize = 32;

/// The figure.
pub async fn run(cfg: &Config) -> Result<Vec<Metric>> {
    let root = cfg.data.join("status");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root)?;
    let result = measure(cfg, &root);
    kill_under(&root);
    let _ = std::fs::remove_dir_all(&root);
    result
}

fn measure(cfg: &Config, root: &Path) -> Result<Vec<Metric>> {
    let upshift = upshift_binary()?;
    let adapter = root.join("test-misbehaving.wasm");
    std::fs::write(&adapter, crate::sandbox::built("test-misbehaving")?)?;
    let list = instances(&root.join("instances"), INSTANCES)?;
    let fleet = root.join("upshift.toml");
    let text = fleet_file(&adapter, &list).replace(
        "[instance.files.data]",
        "target = \"2.0.0-cheap\"\n\n[instance.files.data]",
    );
    std::fs::write(&fleet, text)?;
    let data = root.join("data");
    let upshift_cmd = |args: &[&str]| {
        let mut cmd = Command::new(&upshift);
        cmd.arg("--fleet")
            .arg(&fleet)
            .arg("--data")
            .arg(&data)
            .args(args)
            .env_remove("UPSHIFT_FLEET")
            .env_remove("UPSHIFT_DATA");
        cmd
    };
    // Bring every instance up at 1.0.0-cheap (untimed): Upshift starts each service.
    let parallel = START_PARALLEL.to_string();
    let max_failures = INSTANCES.to_string();
    // An instance whose start check failed under the load of starting them all is rolled back
    // (exit 4): status shows it as it is, and the run counts what it saw.
    let _ = timed(
        upshift_cmd(&[
            "apply",
            "--all",
            "--to",
            "1.0.0-cheap",
            "--yes",
            "--parallel",
            &parallel,
            "--max-failures",
            &max_failures,
        ]),
        "upshift apply --to 1.0.0-cheap (bringing the fleet up)",
    );
    let mut m = Metric::new(
        &format!("`upshift status` of {INSTANCES} live instances"),
        "wall time of `upshift status --all --json` (default --parallel 32, --timeout 10)",
        Unit::Seconds,
        Target::AtMost(10.0),
    );
    let mut slowest = 0u64;
    let mut seen_healthy = 0;
    for run in 0..cfg.runs {
        let t = std::time::Instant::now();
        let out = upshift_cmd(&["status", "--all", "--json"])
            .output()
            .context("cannot run upshift status")?;
        let elapsed = t.elapsed().as_secs_f64();
        if !out.status.success() {
            bail!(
                "upshift status failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let statuses: Vec<serde_json::Value> =
            serde_json::from_slice(&out.stdout).context("status --json is not a JSON array")?;
        let healthy = statuses
            .iter()
            .filter(|s| {
                s["reach"] == "reachable"
                    && s["health"][0]["state"] == "healthy"
                    && s["plan"]["outcome"] == "plan"
            })
            .count();
        if statuses.len() != INSTANCES {
            bail!(
                "status saw {} instances; expected {INSTANCES}",
                statuses.len()
            );
        }
        seen_healthy = healthy;
        slowest = slowest.max(
            statuses
                .iter()
                .filter_map(|s| s["took_ms"].as_u64())
                .max()
                .unwrap_or(0),
        );
        eprintln!("status run {run}: {elapsed:.2} s");
        m.ours.push(elapsed);
    }
    m.notes.push(format!(
        "{INSTANCES} instances of the test adapter, each a process service (`env \
         APP_VERSION={{version}} sleep infinity`) started by Upshift and a data directory, \
         `target = \"2.0.0-cheap\"`; per instance status reads the state store (last run, \
         unfinished runs, newest backup, lease), detects the version in a fresh sandboxed \
         instance, inspects and health-checks the service through the guard (audited), and \
         plans to the target in another fresh instance (a 5-step plan)"
    ));
    m.notes.push(format!(
        "every run checked: {INSTANCES} entries; in the last, {seen_healthy} reachable, \
         healthy and planned (the rest stopped: their start failed while the fleet was brought \
         up); the slowest single instance took {slowest} ms; no comparison: no other tool \
         answers these questions for this fleet"
    ));
    Ok(vec![m])
}
