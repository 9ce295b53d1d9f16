//! The sandbox holds against a misbehaving adapter (a real component built from
//! tests/adapters/misbehaving): every failure is a clear error blamed on the adapter, and the
//! host keeps serving the next call.

use std::time::Duration;

use upshift::ops::plan;
use upshift::runtime::bindings::{Detection, Plan, Refusal};
use upshift::runtime::{AdapterFault, CacheOutcome, Deadlines, LoadedAdapter, Runtime};

fn wasm(name: &str) -> Vec<u8> {
    let path = format!("{}/{name}.wasm", upshift::adapters::BUILT_DIR);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

async fn runtime_and_adapter() -> (Runtime, LoadedAdapter) {
    let mut runtime = Runtime::new(None).expect("runtime");
    runtime.set_deadlines(Deadlines {
        pure: Duration::from_millis(500),
        live: Duration::from_secs(5),
    });
    let adapter = runtime
        .load("misbehaving", &wasm("test-misbehaving"))
        .await
        .expect("load");
    (runtime, adapter)
}

async fn plan_for(
    runtime: &Runtime,
    adapter: &LoadedAdapter,
    target: &str,
) -> Result<Result<Plan, Refusal>, AdapterFault> {
    let detection = Detection {
        version: "1.0.0".into(),
        facts: vec![],
    };
    let target = target.to_string();
    runtime
        .call(
            adapter,
            None,
            "plan",
            runtime.deadlines().pure,
            async |a, s| a.call_plan(s, &detection, &target).await,
        )
        .await
}

async fn still_serves(runtime: &Runtime, adapter: &LoadedAdapter) {
    let ok = plan_for(runtime, adapter, "2.0.0")
        .await
        .expect("the host serves the next call")
        .expect("a plan");
    assert_eq!(ok.to_version, "2.0.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_infinite_loop_is_stopped_at_its_deadline() {
    let (runtime, adapter) = runtime_and_adapter().await;
    let fault = plan_for(&runtime, &adapter, "loop")
        .await
        .expect_err("must be stopped");
    assert_eq!(fault.export, "plan");
    assert!(fault.reason.contains("deadline"), "{fault}");
    assert!(
        fault.to_string().contains("adapter misbehaving"),
        "blamed on the adapter: {fault}"
    );
    still_serves(&runtime, &adapter).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_bomb_hits_the_limit() {
    let (runtime, adapter) = runtime_and_adapter().await;
    let fault = plan_for(&runtime, &adapter, "bomb")
        .await
        .expect_err("must be stopped");
    assert!(fault.reason.contains("memory limit of 64 MiB"), "{fault}");
    still_serves(&runtime, &adapter).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runaway_recursion_overflows_cleanly() {
    let (runtime, adapter) = runtime_and_adapter().await;
    let fault = plan_for(&runtime, &adapter, "recurse")
        .await
        .expect_err("must be stopped");
    assert!(fault.reason.contains("stack"), "{fault}");
    still_serves(&runtime, &adapter).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_is_reported_with_its_message() {
    let (runtime, adapter) = runtime_and_adapter().await;
    let fault = plan_for(&runtime, &adapter, "panic")
        .await
        .expect_err("must trap");
    assert!(fault.reason.contains("panicked"), "{fault}");
    assert!(fault.reason.contains("on purpose"), "{fault}");
    still_serves(&runtime, &adapter).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_plan_is_rejected_before_anything_runs() {
    let (mut runtime, adapter) = runtime_and_adapter().await;
    // Building and lifting 100,000 steps is real work: give it the production deadline, so a
    // loaded machine cannot turn the limit check into a timeout.
    runtime.set_deadlines(Deadlines::default());
    let huge = plan_for(&runtime, &adapter, "huge")
        .await
        .expect("returns")
        .expect("a plan");
    assert_eq!(huge.steps.len(), 100_000);
    let err = plan::validate(&huge).expect_err("over the step limit");
    assert!(err.contains("100000 steps"), "{err}");
    still_serves(&runtime, &adapter).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_precompiled_cache_is_used_and_integrity_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bytes = wasm("test-misbehaving");
    let runtime = Runtime::new(Some(dir.path())).expect("runtime");
    let first = runtime.load("misbehaving", &bytes).await.expect("load");
    assert_eq!(first.cache, CacheOutcome::Compiled);
    let second = runtime.load("misbehaving", &bytes).await.expect("load");
    assert_eq!(second.cache, CacheOutcome::Hit);
    let artifact = std::fs::read_dir(dir.path())
        .expect("cache dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .expect("an artifact");
    let mut damaged = std::fs::read(&artifact).expect("read");
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0xff;
    std::fs::write(&artifact, damaged).expect("write");
    let third = runtime
        .load("misbehaving", &bytes)
        .await
        .expect("recompiles");
    assert_eq!(
        third.cache,
        CacheOutcome::Compiled,
        "a damaged artifact is never deserialized"
    );
    still_serves(&runtime, &third).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_shared_loads_the_same_bytes_once_per_runtime() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bytes = wasm("test-misbehaving");
    let runtime = Runtime::new(Some(dir.path())).expect("runtime");
    let first = runtime.load_shared("first", &bytes).await.expect("load");
    assert_eq!(first.cache, CacheOutcome::Compiled);
    // The cache directory is gone: the second load of the same bytes does not read it.
    std::fs::remove_dir_all(dir.path()).expect("remove the cache");
    let second = runtime.load_shared("second", &bytes).await.expect("load");
    assert_eq!(second.cache, CacheOutcome::Hit);
    assert_eq!(second.label, "second", "each caller's own label");
    assert_eq!(second.digest, first.digest);
    still_serves(&runtime, &second).await;
    // Other bytes are loaded on their own (and the plain `load` still reads the cache).
    let other = wasm("bytebase");
    let loaded = runtime.load_shared("other", &other).await.expect("load");
    assert_ne!(loaded.digest, first.digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_core_module_or_garbage_is_not_an_adapter() {
    let runtime = Runtime::new(None).expect("runtime");
    let err = runtime
        .load("garbage", b"\0asm\x01\0\0\0")
        .await
        .err()
        .expect("rejected");
    assert!(err.to_string().contains("core module"), "{err}");
    let err = runtime
        .load("garbage", b"not wasm at all")
        .await
        .err()
        .expect("rejected");
    assert!(err.to_string().contains("garbage"), "{err}");
}
