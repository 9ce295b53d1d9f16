//! `cargo run --release -p upshift-bench`: runs Upshift's benchmarks against their alternatives
//! in the same run, generating its data first (untimed), and writes `docs/BENCHMARKS.md`.
//!
//! Flags: `--quick` (smaller data, fewer iterations), `--only NAME[,NAME]` (groups: `sandbox`,
//! `plan`, `snapshot`, `pg`, `fleet`, `agents`, `status`, `audit`, `limits`), `--runs N`, `--data DIR` (where data is
//! generated; default `target/bench-data`), `--out FILE` (default `docs/BENCHMARKS.md`, or
//! `target/BENCHMARKS-only.md` with `--only`, so a partial run never replaces the full report).

mod agents;
mod audit;
mod data;
mod fleet;
mod limits;
mod machine;
mod pg;
mod plan;
mod report;
mod sandbox;
mod snapshot;
mod stats;
mod status;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use report::{Metric, Report};

/// The groups, in the order.
const GROUPS: &[&str] = &[
    "sandbox", "plan", "snapshot", "pg", "fleet", "agents", "status", "audit", "limits",
];

/// What the run was asked to do.
#[derive(Debug, Clone)]
pub struct Config {
    /// Smaller data and fewer iterations.
    pub quick: bool,
    /// Runs per figure.
    pub runs: usize,
    /// Where data is generated (deleted after each benchmark).
    pub data: PathBuf,
    /// Where the report goes.
    pub out: PathBuf,
    /// Groups to run.
    pub only: Vec<String>,
}

fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

fn parse(args: &[String]) -> Result<Config> {
    let root = workspace_root();
    let mut cfg = Config {
        quick: false,
        runs: 0,
        data: root.join("target").join("bench-data"),
        out: root.join("docs").join("BENCHMARKS.md"),
        only: Vec::new(),
    };
    let mut out_given = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--quick" => cfg.quick = true,
            "--runs" => cfg.runs = value()?.parse().context("--runs needs a number")?,
            "--data" => cfg.data = PathBuf::from(value()?),
            "--out" => {
                cfg.out = PathBuf::from(value()?);
                out_given = true;
            }
            "--only" => cfg
                .only
                .extend(value()?.split(',').map(|s| s.trim().to_string())),
            "-h" | "--help" => {
                println!(
                    "usage: upshift-bench [--quick] [--only {}] [--runs N] [--data DIR] [--out FILE]",
                    GROUPS.join(",")
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other} (try --help)"),
        }
    }
    if let Some(bad) = cfg.only.iter().find(|g| !GROUPS.contains(&g.as_str())) {
        bail!("unknown group {bad}; the groups are {}", GROUPS.join(", "));
    }
    if !cfg.only.is_empty() && !out_given {
        cfg.out = root.join("target").join("BENCHMARKS-only.md");
    }
    if cfg.runs == 0 {
        cfg.runs = if cfg.quick { 3 } else { 5 };
    }
    Ok(cfg)
}

impl Config {
    fn wants(&self, group: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|g| g == group)
    }
}

/// Everything after this line of BENCHMARKS.md is written by hand (the analysis of what
/// limits each missed target) and kept when the figures are regenerated.
const KEPT: &str = "<!-- Below this line: written by hand, kept by upshift-bench across runs. -->";

const METHOD: &str = "\
- One process runs everything: `cargo run --release -p upshift-bench`. Data is generated \
  before each benchmark and is not timed; it is deleted afterwards.
- Ours and the comparison run in the same process, one after the other, on the same data, \
  several times each; every figure is min / median / max over those runs, and the ratio is \
  median over median.
- Times are wall-clock (`std::time::Instant`). Micro-benchmarks time a batch of back-to-back \
  operations and divide by its size.
- The load average at the start and with each figure is recorded: a figure taken while \
  something else ran is pessimistic. Ratios taken in the same run are the figure of merit.";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cfg = parse(&args)?;
    std::fs::create_dir_all(&cfg.data)
        .with_context(|| format!("cannot create {}", cfg.data.display()))?;
    let machine = machine::Machine::read(&cfg.data);
    let load_at_start = machine::load_average();
    let started = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start tokio")?;
    let mut metrics: Vec<Metric> = Vec::new();
    let mut limits: Vec<Metric> = Vec::new();
    let mut skipped: Vec<(String, String)> = Vec::new();
    if cfg.wants("sandbox") {
        eprintln!("== sandbox");
        metrics.extend(rt.block_on(sandbox::run(&cfg))?);
    }
    if cfg.wants("plan") {
        eprintln!("== plan");
        metrics.extend(rt.block_on(plan::run(&cfg))?);
    }
    if cfg.wants("snapshot") {
        eprintln!("== snapshot");
        metrics.extend(rt.block_on(snapshot::run(&cfg))?);
    }
    if cfg.wants("pg") {
        eprintln!("== pg");
        match rt.block_on(pg::run(&cfg)) {
            Ok(m) => metrics.extend(m),
            Err(e) => skipped.push((
                "PostgreSQL backup and restore".into(),
                format!("the benchmark failed: {e:#}"),
            )),
        }
    }
    if cfg.wants("fleet") {
        eprintln!("== fleet");
        metrics.extend(rt.block_on(fleet::run(&cfg))?);
    }
    if cfg.wants("agents") {
        eprintln!("== agents");
        match rt.block_on(agents::run(&cfg)) {
            Ok(m) => metrics.extend(m),
            Err(e) => skipped.push((
                "agents: queue throughput and per-instance overhead".into(),
                format!("the benchmark failed: {e:#}"),
            )),
        }
    }
    if cfg.wants("status") {
        eprintln!("== status");
        match rt.block_on(status::run(&cfg)) {
            Ok(m) => metrics.extend(m),
            Err(e) => skipped.push((
                "`upshift status` of 1000 live instances".into(),
                format!("the benchmark failed: {e:#}"),
            )),
        }
    }
    if cfg.wants("audit") {
        eprintln!("== audit");
        metrics.extend(rt.block_on(audit::run(&cfg))?);
    }
    if cfg.wants("limits") {
        eprintln!("== limits");
        limits.extend(limits::run(&cfg)?);
    }
    for m in &metrics {
        eprintln!(
            "{}: {} (median) {}",
            m.title,
            report::fmt(m.unit, m.ours.median()),
            m.verdict()
        );
    }
    let report = Report {
        machine,
        load_at_start,
        command: format!(
            "cargo run --release -p upshift-bench{}{}",
            if args.is_empty() { "" } else { " -- " },
            args.join(" ")
        ),
        quick: cfg.quick,
        runs: cfg.runs,
        total_seconds: started.elapsed().as_secs_f64(),
        metrics,
        limits,
        skipped,
    };
    if let Some(parent) = cfg.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let kept = std::fs::read_to_string(&cfg.out)
        .ok()
        .and_then(|old| old.find(KEPT).map(|i| old[i..].to_string()))
        .unwrap_or_else(|| format!("{KEPT}\n"));
    std::fs::write(&cfg.out, format!("{}\n{kept}", report.markdown(METHOD)))
        .with_context(|| format!("cannot write {}", cfg.out.display()))?;
    eprintln!("wrote {}", cfg.out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse;

    fn args(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn a_partial_run_never_writes_the_full_report() {
        let full = parse(&args(&[])).expect("parse");
        assert!(full.out.ends_with("docs/BENCHMARKS.md"));
        let only = parse(&args(&["--only", "status"])).expect("parse");
        assert!(
            only.out.ends_with("target/BENCHMARKS-only.md"),
            "{:?}",
            only.out
        );
        let chosen = parse(&args(&["--only", "status", "--out", "/tmp/x.md"])).expect("parse");
        assert_eq!(chosen.out, std::path::PathBuf::from("/tmp/x.md"));
    }
}
