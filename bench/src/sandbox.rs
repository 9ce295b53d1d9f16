//! The sandbox micro-benchmarks: warm instantiate, cold start from the precompiled cache against
//! compiling, and one guest → host capability call.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use upshift::caps::StepBudget;
use upshift::runtime::bindings::Detection;
use upshift::runtime::{CacheOutcome, LoadedAdapter, Runtime};

use crate::Config;
use crate::report::{Metric, Target, Unit};

/// A component built by host/upshift/build.rs (bundled or test adapter).
pub fn built(name: &str) -> Result<Vec<u8>> {
    let path = format!("{}/{name}.wasm", upshift::adapters::BUILT_DIR);
    std::fs::read(&path).with_context(|| format!("cannot read {path}"))
}

fn detection() -> Detection {
    Detection {
        version: "1.0.0".into(),
        facts: vec![],
    }
}

/// Instantiate with no export call: a fresh store (empty WASI context, limits, epoch deadline)
/// and instance, dropped at once. This is what every export call pays before the guest runs.
async fn instantiate(runtime: &Runtime, adapter: &LoadedAdapter) -> Result<()> {
    runtime
        .call(
            adapter,
            None,
            "instantiate",
            Duration::from_secs(5),
            async |_, _| Ok(()),
        )
        .await
        .map_err(anyhow::Error::from)
}

/// All three figures.
pub async fn run(cfg: &Config) -> Result<Vec<Metric>> {
    Ok(vec![
        warm_instantiate(cfg).await?,
        cold_start(cfg).await?,
        round_trip(cfg).await?,
    ])
}

async fn warm_instantiate(cfg: &Config) -> Result<Metric> {
    let runtime = Runtime::new(None)?;
    let wasm = upshift::adapters::bundled("bytebase")
        .context("no bundled bytebase adapter")?
        .wasm;
    let adapter = runtime.load("bytebase", wasm).await?;
    let per_run = if cfg.quick { 2_000 } else { 20_000 };
    for _ in 0..500 {
        instantiate(&runtime, &adapter).await?;
    }
    let mut m = Metric::new(
        "warm adapter instantiate (pooling + InstancePre)",
        "`Runtime::call` with an empty body on the bundled Bytebase adapter: a new store \
         (empty WASI context, limits, epoch deadline) and instance from its `InstancePre` out \
         of the pooling allocator, then dropped",
        Unit::Seconds,
        Target::AtMost(20e-6),
    );
    for _ in 0..cfg.runs {
        let t = Instant::now();
        for _ in 0..per_run {
            instantiate(&runtime, &adapter).await?;
        }
        m.ours.push(t.elapsed().as_secs_f64() / per_run as f64);
    }
    m.notes.push(format!(
        "each sample is the mean of {per_run} back-to-back instantiations on one thread, after \
         500 to warm up; the component is {} KiB",
        wasm.len() / 1024
    ));
    Ok(m)
}

async fn cold_start(cfg: &Config) -> Result<Metric> {
    let wasm = upshift::adapters::bundled("bytebase")
        .context("no bundled bytebase adapter")?
        .wasm;
    let cache_dir = cfg.data.join("artifact-cache");
    let _ = std::fs::remove_dir_all(&cache_dir);
    let cached = Runtime::new(Some(&cache_dir))?;
    let first = cached.load("bytebase", wasm).await?;
    if first.cache != CacheOutcome::Compiled {
        bail!("the fresh cache already had the adapter");
    }
    let compiling = Runtime::new(None)?;
    let mut m = Metric::new(
        "cold start from the precompiled cache",
        "`Runtime::load` of the bundled Bytebase adapter with a cache hit: sha256 of the \
         bytes, manifest and interface check, read and integrity-check the `.cwasm`, \
         deserialize, link (`InstancePre`) and the `describe` check",
        Unit::Seconds,
        Target::AtMost(5e-3),
    );
    let mut compile = crate::stats::Samples::new();
    let cached_runs = cfg.runs.max(10);
    for _ in 0..cached_runs {
        let t = Instant::now();
        let a = cached.load("bytebase", wasm).await?;
        m.ours.push(t.elapsed().as_secs_f64());
        if a.cache != CacheOutcome::Hit {
            bail!("expected a cache hit");
        }
    }
    for _ in 0..cfg.runs {
        let t = Instant::now();
        compiling.load("bytebase", wasm).await?;
        compile.push(t.elapsed().as_secs_f64());
    }
    m.comparison = Some((
        "`Runtime::load` without a cache (Cranelift compiles the component, parallel compilation on)"
            .into(),
        compile,
    ));
    m.notes.push(format!(
        "{cached_runs} cache-hit loads, {} compiling loads, in one process with one engine; the \
         `.cwasm` is in the page cache after the first read (a truly cold disk read adds its \
         size over the disk's read bandwidth). The target is absolute (≤ 5 ms); the ratio shows \
         what the cache saves",
        cfg.runs
    ));
    let _ = std::fs::remove_dir_all(&cache_dir);
    Ok(m)
}

async fn plan_calls(runtime: &Runtime, adapter: &LoadedAdapter, n: u64) -> Result<f64> {
    let t = Instant::now();
    let plan = runtime
        .plan(adapter, &detection(), &format!("calls:{n}"))
        .await?
        .map_err(|r| anyhow::anyhow!("refused: {}", r.reason))?;
    let elapsed = t.elapsed().as_secs_f64();
    let expected = format!("{n} of {n} calls denied");
    if plan.notes.first().map(String::as_str) != Some(expected.as_str()) {
        bail!("the adapter said {:?}, expected {expected:?}", plan.notes);
    }
    Ok(elapsed)
}

async fn round_trip(cfg: &Config) -> Result<Metric> {
    let mut runtime = Runtime::new(None)?;
    // A million calls in one `plan`, on purpose: far over the default budget of an export call.
    runtime.set_budget(StepBudget::UNLIMITED);
    let adapter = runtime
        .load("test-misbehaving", &built("test-misbehaving")?)
        .await?;
    let n: u64 = if cfg.quick { 100_000 } else { 1_000_000 };
    plan_calls(&runtime, &adapter, n / 10).await?;
    let mut m = Metric::new(
        "guest → host capability call, round trip",
        "`files::exists` from the test adapter's `plan` (target `calls:N`): guest bindings \
         lower the arguments, the host import runs (tap check, no capabilities lent → denial) \
         and the result is lifted back into the guest",
        Unit::Seconds,
        Target::AtMost(1e-6),
    );
    for _ in 0..cfg.runs {
        let empty = plan_calls(&runtime, &adapter, 0).await?;
        let full = plan_calls(&runtime, &adapter, n).await?;
        m.ours.push((full - empty) / n as f64);
    }
    m.notes.push(format!(
        "each sample is (time of `plan` making {n} calls − time of `plan` making none) / {n}; \
         no audit log is set, so the denial writes nothing (a call with capabilities adds the \
         grant check, the audit record and the backend's own work); each call is counted \
         against the export's budget (an atomic add and a load, included here)"
    ));
    Ok(m)
}
