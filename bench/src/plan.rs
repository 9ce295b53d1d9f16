//! The offline plan for 1,000 instances: time, and memory per concurrent adapter instance.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::sync::Barrier;
use upshift::ops::plan::validate;
use upshift::runtime::bindings::Detection;
use upshift::runtime::{LoadedAdapter, Runtime};

use crate::Config;
use crate::machine::rss_bytes;
use crate::report::{Metric, Target, Unit};

const FROM: &str = "3.10.0";
const TO: &str = "3.11.1";
/// Plans in flight at once (the fleet's `--parallel`).
const CONCURRENT: usize = 32;

fn detection() -> Detection {
    Detection {
        version: FROM.into(),
        facts: vec![],
    }
}

async fn one_plan(runtime: &Runtime, adapter: &LoadedAdapter) -> Result<usize> {
    let plan = runtime
        .plan(adapter, &detection(), TO)
        .await?
        .map_err(|r| anyhow::anyhow!("the adapter refused {FROM} → {TO}: {}", r.reason))?;
    validate(&plan).map_err(anyhow::Error::msg)?;
    Ok(plan.steps.len())
}

/// Plan `instances` instances of one product with `CONCURRENT` tasks: one cached load, then a
/// fresh instance and a validated plan per instance.
async fn plan_fleet(runtime: &Arc<Runtime>, wasm: &'static [u8], instances: usize) -> Result<()> {
    let adapter = runtime.load("bytebase", wasm).await?;
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CONCURRENT {
        let (runtime, adapter, next) = (runtime.clone(), adapter.clone(), next.clone());
        tasks.spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < instances {
                one_plan(&runtime, &adapter).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

/// Hold `CONCURRENT` instances alive right after their `plan` returned, and read this
/// process's RSS while they all are.
async fn rss_with_all_alive(runtime: &Arc<Runtime>, adapter: &LoadedAdapter) -> Result<u64> {
    let arrived = Arc::new(Barrier::new(CONCURRENT + 1));
    let release = Arc::new(Barrier::new(CONCURRENT + 1));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CONCURRENT {
        let (runtime, adapter) = (runtime.clone(), adapter.clone());
        let (arrived, release) = (arrived.clone(), release.clone());
        tasks.spawn(async move {
            let det = detection();
            runtime
                .call(
                    &adapter,
                    None,
                    "plan",
                    Duration::from_secs(60),
                    async |a, s| {
                        let plan = a.call_plan(&mut *s, &det, TO).await;
                        arrived.wait().await;
                        release.wait().await;
                        plan
                    },
                )
                .await
                .map_err(anyhow::Error::from)?
                .map_err(|r| anyhow::anyhow!("refused: {}", r.reason))
                .map(|_| ())
        });
    }
    arrived.wait().await;
    let rss = rss_bytes();
    release.wait().await;
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(rss)
}

/// Both figures.
pub async fn run(cfg: &Config) -> Result<Vec<Metric>> {
    let wasm = upshift::adapters::bundled("bytebase")
        .context("no bundled bytebase adapter")?
        .wasm;
    let cache_dir = cfg.data.join("plan-cache");
    let _ = std::fs::remove_dir_all(&cache_dir);
    let runtime = Arc::new(Runtime::new(Some(&cache_dir))?);
    let adapter = runtime.load("bytebase", wasm).await?;
    let steps = one_plan(&runtime, &adapter).await?;
    if steps == 0 {
        bail!("the offline plan {FROM} → {TO} has no steps");
    }
    let instances = 1_000;
    plan_fleet(&runtime, wasm, 100).await?;

    let mut time = Metric::new(
        "offline plan for 1,000 instances",
        &format!(
            "1,000 Bytebase instances {FROM} → {TO} offline: one `Runtime::load` (cache hit), \
             then per instance a fresh instance, `plan` and `ops::plan::validate`, \
             {CONCURRENT} tasks on tokio's multi-thread runtime"
        ),
        Unit::Seconds,
        Target::AtMost(2.0),
    );
    for _ in 0..cfg.runs {
        let t = Instant::now();
        plan_fleet(&runtime, wasm, instances).await?;
        time.ours.push(t.elapsed().as_secs_f64());
    }
    time.notes.push(format!(
        "each plan has {steps} steps; planning is pure CPU, so the {} worker threads bound it, \
         not the {CONCURRENT} tasks",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    ));

    let mut memory = Metric::new(
        "offline plan: memory per concurrent adapter",
        &format!(
            "process RSS with {CONCURRENT} Bytebase instances alive at once (each held right \
             after its `plan` returned), minus the RSS before, divided by {CONCURRENT}"
        ),
        Unit::Bytes,
        Target::AtMost(4.0 * 1024.0 * 1024.0),
    );
    let cold_before = rss_bytes();
    let cold = rss_with_all_alive(&runtime, &adapter).await?;
    let cold_per = cold.saturating_sub(cold_before) as f64 / CONCURRENT as f64;
    for _ in 0..cfg.runs {
        let before = rss_bytes();
        let during = rss_with_all_alive(&runtime, &adapter).await?;
        memory
            .ours
            .push(during.saturating_sub(before) as f64 / CONCURRENT as f64);
    }
    memory.notes.push(
        "RSS, not wasm linear memory alone: it counts every page the instances touched — linear \
         memory, the pooled stacks and tables, the store and its WASI context. wasmtime does not \
         expose a store's linear-memory size to the host; the pooling allocator returns an \
         instance's pages to the kernel when it is dropped, so the RSS before is a fair baseline"
            .into(),
    );
    memory.notes.push(format!(
        "the first such round (untimed warm-up, which also touches the pool's slots for the \
         first time) grew RSS by {} per instance",
        crate::report::fmt(Unit::Bytes, cold_per)
    ));
    memory.notes.push(format!(
        "RSS when the last sample was taken: {} MiB",
        rss_bytes() >> 20
    ));
    let _ = std::fs::remove_dir_all(&cache_dir);
    Ok(vec![time, memory])
}
