//! Host overhead per instance in a fleet apply: `upshift apply --all --parallel 32` of 200
//! cheap upgrades against a plain shell script doing the same steps with `xargs -P 32`.
//!
//! Each instance is a process service (`env APP_VERSION=V sleep infinity`, started detached in
//! its own process group) with a small data directory. The cheap upgrade is the test adapter's
//! plan for a target `V-cheap`: snapshot the data directory with checksums, stop the service,
//! switch it to `V`, start it, wait until it is healthy (running), verify it runs `V`. The
//! script does the same with `cp -a`, `sha256sum`, `sync`, `kill`, `setsid` and the same 300 ms
//! "did it exit at once" wait the process backend has.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::Config;
use crate::report::{Metric, Target, Unit};
use crate::snapshot::run_ok;
use crate::stats::Samples;

/// Instances in the fleet and how many run at once (the issue's numbers).
const INSTANCES: usize = 200;
const PARALLEL: usize = 32;
/// Files in each instance's data directory, and their size.
const DATA_FILES: usize = 8;
const DATA_FILE_BYTES: usize = 4096;

/// The script's per-instance upgrade: the same steps as the adapter's plan.
const SCRIPT: &str = r#"#!/bin/bash
# upgrade.sh DIR VERSION: the steps of the cheap upgrade, done by hand.
set -euo pipefail
dir=$1 version=$2
# snapshot the data directory with checksums, durably, then publish it by rename
snap="$dir/snapshots/$(date +%s%N)"
mkdir -p "$dir/snapshots"
cp -a "$dir/data" "$snap.partial"
(cd "$snap.partial" && find . -type f -print0 | sort -z | xargs -0 sha256sum > "$snap.sha256")
sync "$snap.partial"/* "$snap.sha256"
mv "$snap.partial" "$snap"
# stop: SIGTERM to the process group, wait until it is gone (a zombie counts as gone)
pid=$(cat "$dir/pid")
alive() { [ -r "/proc/$1/stat" ] && ! grep -q '^[0-9]* ([^)]*) Z' "/proc/$1/stat"; }
kill -TERM -- "-$pid" 2>/dev/null || true
while alive "$pid"; do sleep 0.025; done
# switch
echo "$version" > "$dir/version.new" && mv "$dir/version.new" "$dir/version"
# start, detached in its own process group; fail if it exits at once
cd "$dir"
setsid env APP_VERSION="$version" sleep infinity >>"$dir/app.log" 2>&1 </dev/null &
echo $! > "$dir/pid"
sleep 0.3
alive "$(cat "$dir/pid")"
# wait healthy (running) and verify it runs the target
alive "$(cat "$dir/pid")"
[ "$(cat "$dir/version")" = "$version" ]
"#;

/// The figure.
pub async fn run(cfg: &Config) -> Result<Vec<Metric>> {
    let root = cfg.data.join("fleet");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root)?;
    let upshift = upshift_binary()?;
    let adapter = root.join("test-misbehaving.wasm");
    std::fs::write(&adapter, crate::sandbox::built("test-misbehaving")?)?;
    let script = root.join("upgrade.sh");
    std::fs::write(&script, SCRIPT)?;
    let mut m = Metric::new(
        &format!(
            "host overhead per instance in a fleet apply ({INSTANCES} cheap upgrades, \
             {PARALLEL} in parallel)"
        ),
        &format!(
            "(wall time of `upshift apply --all --to 2.0.0-cheap --parallel {PARALLEL} --yes` − \
             wall time of the script) / {INSTANCES}"
        ),
        Unit::Seconds,
        Target::AtMost(5e-3),
    );
    let mut ours = Samples::new();
    let mut theirs = Samples::new();
    for run in 0..cfg.runs {
        let dir = root.join(format!("run-{run}"));
        let (u, s) = if run % 2 == 0 {
            let u = time_upshift(&upshift, &adapter, &dir.join("upshift"))?;
            let s = time_script(&script, &dir.join("script"))?;
            (u, s)
        } else {
            let s = time_script(&script, &dir.join("script"))?;
            let u = time_upshift(&upshift, &adapter, &dir.join("upshift"))?;
            (u, s)
        };
        eprintln!("fleet run {run}: upshift {u:.2} s, script {s:.2} s");
        ours.push(u);
        theirs.push(s);
        m.ours.push((u - s) / INSTANCES as f64);
        let _ = std::fs::remove_dir_all(&dir);
    }
    m.notes.push(format!(
        "{INSTANCES} instances, each a process service (`env APP_VERSION={{version}} sleep \
         infinity`) and a data directory of {DATA_FILES} files of {} KiB; the cheap upgrade is \
         the test adapter's plan for target `2.0.0-cheap`: snapshot the data directory \
         (sha256, synced to disk, manifest), stop the service, switch it, start it (the process backend \
         waits 300 ms to see that it did not exit at once), wait healthy, verify",
        DATA_FILE_BYTES / 1024
    ));
    m.notes.push(
        "the script (`bench/src/fleet.rs`, `SCRIPT`) does the same steps per instance with \
         `cp -a`, `sha256sum`, `sync`, `kill`, `setsid` and the same 300 ms wait, run by \
         `xargs -P 32`; before each timed run both sides bring all instances up at \
         `1.0.0-cheap` (untimed; for upshift an `apply --to 1.0.0-cheap`, which also fills \
         the compiled-adapter cache)"
            .into(),
    );
    m.notes.push(format!(
        "what upshift adds per instance over the script: the lease, the run and every step \
         journaled in SQLite (WAL) before and after, the hash-chained audit record of every \
         capability call, a fresh sandboxed instance for `detect`, `plan` and `verify`, the \
         snapshot's catalog entry, the rollout report; wall times: upshift {}, script {} \
         (min / median / max)",
        crate::report::triple(Unit::Seconds, &ours),
        crate::report::triple(Unit::Seconds, &theirs),
    ));
    // Neither side can beat the waits the steps themselves have: with PARALLEL slots, every
    // instance holding one for at least the 300 ms start check.
    let floor = INSTANCES.div_ceil(PARALLEL) as f64 * 0.3;
    m.notes.push(format!(
        "the floor both sides share: {INSTANCES} instances through {PARALLEL} slots, each held \
         at least 300 ms by the start check, is {} of wall time; above that floor upshift \
         spent {} per instance and the script {} (medians; this is the work each does, \
         spread over 2 cores)",
        crate::report::fmt(Unit::Seconds, floor),
        crate::report::fmt(Unit::Seconds, (ours.median() - floor) / INSTANCES as f64),
        crate::report::fmt(Unit::Seconds, (theirs.median() - floor) / INSTANCES as f64),
    ));
    let _ = std::fs::remove_dir_all(&root);
    Ok(vec![m])
}

/// The `upshift` binary beside this one, built first (untimed) with the same cargo.
pub(crate) fn upshift_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the benchmark's own binary")?;
    let dir = exe
        .parent()
        .context("the benchmark's binary has no directory")?;
    let profile = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("release")
        .to_string();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build.current_dir(crate::workspace_root()).args([
        "build",
        "--locked",
        "-p",
        "upshift-cli",
        "--bin",
        "upshift",
    ]);
    if profile == "release" {
        build.arg("--release");
    }
    run_ok(&mut build).context("cannot build the upshift binary for the fleet benchmark")?;
    let bin = dir.join("upshift");
    if !bin.exists() {
        bail!("{} was not built", bin.display());
    }
    Ok(bin)
}

/// Make `count` instance directories under `dir`, each with its data files.
pub(crate) fn instances(dir: &Path, count: usize) -> Result<Vec<PathBuf>> {
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let inst = dir.join(format!("{i:03}"));
        let data = inst.join("data");
        std::fs::create_dir_all(&data)?;
        for f in 0..DATA_FILES {
            let bytes: Vec<u8> = (0..DATA_FILE_BYTES)
                .map(|b| (b * 31 + f * 7 + i) as u8)
                .collect();
            std::fs::write(data.join(format!("file-{f}.dat")), bytes)?;
        }
        out.push(inst);
    }
    Ok(out)
}

/// The fleet file of `instances`: each a process service `app` at `1.0.0-cheap` and its data.
pub(crate) fn fleet_file(adapter: &Path, instances: &[PathBuf]) -> String {
    let mut text = String::new();
    for (i, inst) in instances.iter().enumerate() {
        text.push_str(&format!(
            "[[instance]]\nname = \"app-{i:03}\"\nadapter = {adapter:?}\n\n\
             [instance.files.data]\npath = {data:?}\n\n\
             [instance.service.app]\nkind = \"process\"\n\
             command = \"/usr/bin/env APP_VERSION={{version}} /bin/sleep infinity\"\n\
             version = \"1.0.0-cheap\"\nworkdir = {inst:?}\nstop_timeout_secs = 10\n\n",
            adapter = adapter.display().to_string(),
            data = inst.join("data").display().to_string(),
            inst = inst.display().to_string(),
        ));
    }
    text
}

fn time_upshift(upshift: &Path, adapter: &Path, dir: &Path) -> Result<f64> {
    let list = instances(&dir.join("instances"), INSTANCES)?;
    let fleet = dir.join("upshift.toml");
    std::fs::write(&fleet, fleet_file(adapter, &list))?;
    let apply = |to: &str| -> Result<f64> {
        let mut cmd = Command::new(upshift);
        cmd.arg("--fleet")
            .arg(&fleet)
            .arg("--data")
            .arg(dir.join("data"))
            .args(["apply", "--all", "--to", to, "--yes"])
            .arg("--parallel")
            .arg(PARALLEL.to_string())
            .arg("--max-failures")
            .arg(INSTANCES.to_string());
        timed(cmd, &format!("upshift apply --to {to}"))
    };
    let result = (|| {
        apply("1.0.0-cheap")?;
        settle();
        let t = apply("2.0.0-cheap")?;
        check_running(&list, "2.0.0-cheap")?;
        Ok(t)
    })();
    kill_under(dir);
    result
}

fn time_script(script: &Path, dir: &Path) -> Result<f64> {
    let list = instances(&dir.join("instances"), INSTANCES)?;
    // Bring every instance up at the old version (untimed).
    for inst in &list {
        std::fs::write(inst.join("version"), "1.0.0-cheap\n")?;
        let child = Command::new("setsid")
            .args(["env", "APP_VERSION=1.0.0-cheap", "sleep", "infinity"])
            .current_dir(inst)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("cannot start setsid")?;
        std::fs::write(inst.join("pid"), child.id().to_string())?;
    }
    settle();
    let result = (|| {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(format!(
            "ls -d {}/* | xargs -P {PARALLEL} -I{{}} bash {} {{}} 2.0.0-cheap",
            dir.join("instances").display(),
            script.display()
        ));
        let elapsed = timed(cmd, "the script")?;
        check_running(&list, "2.0.0-cheap")?;
        Ok(elapsed)
    })();
    kill_under(dir);
    result
}

/// Run `cmd` to completion; its wall time, or an error with its output when it fails.
pub(crate) fn timed(mut cmd: Command, what: &str) -> Result<f64> {
    let t = Instant::now();
    let out = cmd.output().with_context(|| format!("cannot run {what}"))?;
    let elapsed = t.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(elapsed)
}

fn settle() {
    std::thread::sleep(Duration::from_millis(500));
}

/// Every instance has exactly one process running `version` (its environment says so).
pub(crate) fn check_running(list: &[PathBuf], version: &str) -> Result<()> {
    let procs = processes_under(
        list.first()
            .and_then(|p| p.parent())
            .unwrap_or(Path::new("/")),
    );
    for inst in list {
        let running: Vec<&(u32, PathBuf, String)> =
            procs.iter().filter(|(_, cwd, _)| cwd == inst).collect();
        if running.len() != 1 || running[0].2 != version {
            bail!(
                "{} should run one process at {version}, runs {:?}",
                inst.display(),
                running.iter().map(|p| (p.0, &p.2)).collect::<Vec<_>>()
            );
        }
    }
    Ok(())
}

/// Processes whose working directory is under `dir`: (pid, cwd, APP_VERSION).
fn processes_under(dir: &Path) -> Vec<(u32, PathBuf, String)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cwd) = std::fs::read_link(e.path().join("cwd")) else {
            continue;
        };
        if !cwd.starts_with(dir) {
            continue;
        }
        let version = std::fs::read(e.path().join("environ"))
            .ok()
            .and_then(|env| {
                env.split(|b| *b == 0)
                    .find_map(|kv| kv.strip_prefix(b"APP_VERSION=").map(<[u8]>::to_vec))
            })
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .unwrap_or_default();
        out.push((pid, cwd, version));
    }
    out
}

/// Kill every process left running under `dir` (untimed clean-up).
pub(crate) fn kill_under(dir: &Path) {
    for (pid, _, _) in processes_under(dir) {
        let _ = Command::new("kill")
            .arg("-KILL")
            .arg(pid.to_string())
            .status();
    }
}
