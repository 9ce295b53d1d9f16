//! Physical limits on the same machine: raw write bandwidth to the data directory's disk and
//! single-core sha256 throughput (the same `sha2` crate the host hashes with).

use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use crate::Config;
use crate::report::{Metric, Target, Unit};

/// Both limits.
pub fn run(cfg: &Config) -> Result<Vec<Metric>> {
    Ok(vec![write_bandwidth(cfg)?, sha256(cfg)?])
}

fn write_bandwidth(cfg: &Config) -> Result<Metric> {
    let mib: u64 = if cfg.quick { 256 } else { 1024 };
    let file = cfg.data.join("dd.bin");
    let mut m = Metric::new(
        "raw sequential write bandwidth (dd, fdatasync)",
        "",
        Unit::BytesPerSecond,
        Target::None,
    );
    for _ in 0..cfg.runs.min(3) {
        let t = Instant::now();
        let out = Command::new("dd")
            .arg("if=/dev/zero")
            .arg(format!("of={}", file.display()))
            .args(["bs=1M", &format!("count={mib}"), "conv=fdatasync"])
            .output()
            .context("cannot run dd")?;
        let secs = t.elapsed().as_secs_f64();
        if !out.status.success() {
            bail!("dd failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        m.ours.push((mib << 20) as f64 / secs);
        let _ = std::fs::remove_file(&file);
    }
    m.notes.push(format!(
        "`dd if=/dev/zero bs=1M count={mib} conv=fdatasync` into the data directory, timed \
         including the final flush"
    ));
    Ok(m)
}

fn sha256(cfg: &Config) -> Result<Metric> {
    let mut buf = vec![0u8; 256 << 20];
    crate::data::Noise::new(3).fill(&mut buf);
    let mut m = Metric::new(
        "sha256, one core (sha2 crate, in memory)",
        "",
        Unit::BytesPerSecond,
        Target::None,
    );
    for _ in 0..cfg.runs.min(3) {
        let t = Instant::now();
        let digest = Sha256::digest(&buf);
        std::hint::black_box(digest);
        m.ours.push(buf.len() as f64 / t.elapsed().as_secs_f64());
    }
    m.notes.push(
        "256 MiB hashed in one call on one thread; this bounds any single-threaded checksum".into(),
    );
    Ok(m)
}
