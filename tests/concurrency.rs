//! A fleet rollout runs its instances at once: blocking work (file copies, checksums, the state
//! store) must not hold the async executor, or `--parallel N` quietly becomes one at a time.
//!
//! Eight instances of the test adapter's cheap upgrade, each snapshotting a 50 MB data directory,
//! through the real binary. The work itself is timed, not the journal: each snapshot's copies
//! are written over a span of time (their files' modification times), and copies done one
//! instance after another give spans that never overlap. The rollout's wall time is also
//! compared with the sum of those spans.

mod common;

use std::path::Path;
use std::time::Instant;

use common::{Env, json, stderr};

const INSTANCES: usize = 8;
const FILES_PER_INSTANCE: usize = 5;
const FILE_BYTES: usize = 10 * 1024 * 1024;

/// Fill `dir` with incompressible bytes (different per instance and file).
fn fill(dir: &Path, seed: u64) {
    std::fs::create_dir_all(dir).expect("data dir");
    for f in 0..FILES_PER_INSTANCE {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (f as u64 + 1);
        let mut bytes = Vec::with_capacity(FILE_BYTES);
        while bytes.len() < FILE_BYTES {
            // xorshift64: cheap, and no two files share content.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            bytes.extend_from_slice(&state.to_le_bytes());
        }
        std::fs::write(dir.join(format!("part-{f}.bin")), &bytes).expect("write data");
    }
}

fn fleet_file(adapter: &str, root: &Path) -> String {
    let mut text = String::new();
    for i in 0..INSTANCES {
        let inst = root.join(format!("app-{i}"));
        fill(&inst.join("data"), i as u64 + 1);
        text.push_str(&format!(
            "[[instance]]\nname = \"app-{i}\"\nadapter = {adapter:?}\n\n\
             [instance.files.data]\npath = {data:?}\n\n\
             [instance.service.app]\nkind = \"process\"\n\
             command = \"/usr/bin/env APP_VERSION={{version}} /bin/sleep infinity\"\n\
             version = \"1.0.0-cheap\"\nworkdir = {inst:?}\nstop_timeout_secs = 10\n\n",
            data = inst.join("data").display().to_string(),
            inst = inst.display().to_string(),
        ));
    }
    text
}

/// When the copying of a snapshot began and ended, in microseconds since the epoch: the
/// earliest and latest modification time of the files it wrote.
fn written_span(location: &Path) -> (i64, i64) {
    let mut times = Vec::new();
    let mut dirs = vec![location.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let entry = entry.expect("directory entry");
            let meta = entry.metadata().expect("metadata");
            if meta.is_dir() {
                dirs.push(entry.path());
            } else if meta.len() >= FILE_BYTES as u64 {
                let modified = meta.modified().expect("modification time");
                let micros = modified
                    .duration_since(std::time::UNIX_EPOCH)
                    .expect("after the epoch")
                    .as_micros();
                times.push(i64::try_from(micros).expect("fits"));
            }
        }
    }
    assert_eq!(
        times.len(),
        FILES_PER_INSTANCE,
        "snapshot at {} holds {} data files",
        location.display(),
        times.len()
    );
    let first = times.iter().min().copied().unwrap_or_default();
    let last = times.iter().max().copied().unwrap_or_default();
    (first, last)
}

/// The most intervals open at one moment.
fn most_at_once(intervals: &[(i64, i64)]) -> usize {
    let mut edges: Vec<(i64, i32)> = intervals
        .iter()
        .flat_map(|(start, end)| [(*start, 1), (*end, -1)])
        .collect();
    // At equal times, close before opening: touching intervals do not overlap.
    edges.sort();
    let (mut open, mut most) = (0i32, 0i32);
    for (_, delta) in edges {
        open += delta;
        most = most.max(open);
    }
    most as usize
}

#[test]
fn most_at_once_counts_overlap_not_touching() {
    assert_eq!(most_at_once(&[(0, 10), (10, 20), (20, 30)]), 1);
    assert_eq!(most_at_once(&[(0, 10), (5, 20), (6, 7)]), 3);
    assert_eq!(most_at_once(&[]), 0);
}

#[test]
fn a_rollout_of_eight_snapshotting_instances_runs_them_at_once() {
    let env = Env::new();
    let root = env.data().with_file_name("instances");
    let adapter = format!("{}/test-misbehaving.wasm", upshift::adapters::BUILT_DIR);
    env.write_fleet(&fleet_file(&adapter, &root));

    // Bring every service up at the old version (this also takes a first snapshot each).
    let first = env.upshift(&[
        "apply",
        "--all",
        "--to",
        "1.0.0-cheap",
        "--parallel",
        "8",
        "--yes",
        "--json",
    ]);
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));

    let started = Instant::now();
    let out = env.upshift(&[
        "apply",
        "--all",
        "--to",
        "2.0.0-cheap",
        "--parallel",
        "8",
        "--yes",
        "--json",
    ]);
    let wall_us = started.elapsed().as_micros() as i64;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report = json(&out);
    let instances = report["instances"].as_array().expect("instances");
    assert_eq!(instances.len(), INSTANCES, "{report}");

    // Each run's snapshot, and when its copies were written.
    let mut snapshots = Vec::new();
    for line in instances {
        assert_eq!(line["status"], "upgraded", "{line}");
        let snapshot = line["run"]["backups"]
            .as_array()
            .and_then(|b| b.iter().find(|b| b["method"] == "snapshot"))
            .unwrap_or_else(|| panic!("no snapshot in {line}"));
        let location = snapshot["location"].as_str().expect("location");
        snapshots.push(written_span(Path::new(location)));
    }

    let serial_sum: i64 = snapshots.iter().map(|(s, e)| e - s).sum();
    let at_once = most_at_once(&snapshots);
    eprintln!(
        "snapshot copy spans (µs) {snapshots:?}: at most {at_once} at once; their sum \
         {serial_sum} µs, the rollout's wall time {wall_us} µs"
    );
    // With `--parallel 8`, the copies overlap rather than queue behind one another.
    assert!(
        at_once >= INSTANCES / 2,
        "only {at_once} of {INSTANCES} snapshots were copied at once: {snapshots:?}"
    );
    // And the whole rollout (snapshots plus every other step) takes less than its copies alone
    // would take one after another.
    assert!(
        wall_us < serial_sum,
        "the rollout took {wall_us} µs; its copies alone add up to {serial_sum} µs"
    );
}
