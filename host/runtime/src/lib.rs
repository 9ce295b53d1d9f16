//! The sandbox: wasmtime's component model with a pooling allocator, one `InstancePre` per
//! adapter, an epoch deadline on every call, a memory limit per instance, and WASI linked with
//! an empty context (no preopens, env, args or sockets; guest stderr goes to the run log).
//!
//! Every export call gets a fresh instance: instantiation costs microseconds, a trapped
//! instance can never be entered again, and no state leaks between calls.

pub use upshift_caps::bindings;
pub mod cache;
pub mod exports;
mod host;
pub mod manifest;
pub mod tap;
pub mod world;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreLimits,
    StoreLimitsBuilder,
};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use bindings::{Adapter, AdapterPre};
pub use cache::{ArtifactCache, ArtifactLedger, CacheOutcome, MemoryLedger};
pub use manifest::Manifest;
use upshift_caps::InstanceCaps;
use upshift_caps::audit::AuditLog;
use upshift_caps::limits::MEMORY_BYTES;
use upshift_caps::{OverBudget, Spend, StepBudget, Witness};

/// One epoch tick.
pub const TICK: Duration = Duration::from_millis(10);

/// How long each export may run (wall time, checked while guest code runs).
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// `describe`, `plan`, `plan-restore`: pure functions.
    pub pure: Duration,
    /// `detect`, `verify`, `run-step`: may wait on capabilities.
    pub live: Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        Deadlines {
            pure: Duration::from_secs(5),
            live: Duration::from_secs(300),
        }
    }
}

/// The adapter did something the sandbox stopped, or broke the contract. Always the adapter's
/// fault, never the host's.
#[derive(Debug, Clone, thiserror::Error)]
#[error("adapter {adapter} (sha256 {short}) failed in `{export}`: {reason}")]
pub struct AdapterFault {
    /// Product or file name.
    pub adapter: String,
    /// Short digest.
    pub short: String,
    /// The export that was called.
    pub export: String,
    /// What happened.
    pub reason: String,
}

/// The host could not set up the sandbox.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The engine could not be configured.
    #[error("cannot configure the WebAssembly engine: {0}")]
    Engine(String),
    /// The file is not a usable component.
    #[error("adapter {adapter} is not a usable component: {reason}")]
    Component {
        /// Adapter label.
        adapter: String,
        /// Why.
        reason: String,
    },
    /// The adapter misbehaved while being loaded.
    #[error(transparent)]
    Fault(#[from] AdapterFault),
}

/// Store data of one adapter instance.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
    caps: Option<Arc<InstanceCaps>>,
    witness: Option<Witness>,
    log_budget: u32,
    flood_reported: bool,
    /// This export call's host calls and audit bytes, against its budget.
    spend: Arc<Spend>,
    tap: tap::Tap,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// The engine, linker and epoch ticker; one per process.
pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    cache: Option<ArtifactCache>,
    deadlines: Deadlines,
    stop_ticker: Arc<AtomicBool>,
    observer: Option<Arc<dyn exports::ExportObserver>>,
    audit: Option<Arc<AuditLog>>,
    budget: StepBudget,
    /// Adapters [`Runtime::load_shared`] loaded, by digest.
    loaded: std::sync::Mutex<std::collections::HashMap<String, LoadedAdapter>>,
}

/// How many adapters [`Runtime::load_shared`] keeps (a process loads a handful).
const LOADED_KEPT: usize = 64;

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

/// A compiled, linked adapter ready to instantiate.
#[derive(Clone)]
pub struct LoadedAdapter {
    /// Label for messages (product or file name).
    pub label: String,
    /// sha256 of the component bytes.
    pub digest: String,
    /// The manifest embedded in the component (checked against `describe`).
    pub manifest: Manifest,
    /// Whether the compiled code came from the cache.
    pub cache: CacheOutcome,
    /// Why a cache entry was not trusted (it was compiled again), for the operator.
    pub cache_note: Option<String>,
    pre: AdapterPre<HostState>,
}

impl LoadedAdapter {
    /// The first 12 hex digits of the digest.
    pub fn short_digest(&self) -> &str {
        &self.digest[..12.min(self.digest.len())]
    }
}

pub use upshift_model::digest;

impl Runtime {
    /// A runtime whose compiled components are cached in `cache_dir` (none: always compile).
    /// Until [`Runtime::set_artifact_ledger`] names another, only artifacts this process wrote
    /// are loaded from it.
    pub fn new(cache_dir: Option<&std::path::Path>) -> Result<Runtime, RuntimeError> {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(256)
            .total_core_instances(2048)
            .total_memories(512)
            .total_tables(512)
            .total_stacks(256)
            .max_memories_per_component(8)
            .max_tables_per_component(16)
            .max_core_instances_per_component(32)
            .max_memory_size(MEMORY_BYTES);
        if PoolingAllocationConfig::is_pagemap_scan_available() {
            // Reset a slot for reuse by zeroing only the pages the last instance touched
            // (found with the PAGEMAP_SCAN ioctl, Linux 6.7+) instead of returning the slot to
            // the kernel and faulting it back in: a warm instantiation measured 14 µs → 9 µs
            // (docs/BENCHMARKS.md). Without the ioctl, keeping memory resident would mean a
            // memset of all of it, which is slower than `madvise`, so the default stays.
            pool.linear_memory_keep_resident(1 << 20)
                .table_keep_resident(64 << 10)
                .pagemap_scan(wasmtime::Enabled::Yes);
        }
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .max_wasm_stack(1 << 20)
            .async_stack_size(2 << 20)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        Adapter::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |s| s)
            .map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        let stop_ticker = Arc::new(AtomicBool::new(false));
        let weak = engine.weak();
        let stop = stop_ticker.clone();
        std::thread::Builder::new()
            .name("upshift-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })
            .map_err(|e| RuntimeError::Engine(format!("cannot start the epoch ticker: {e}")))?;
        Ok(Runtime {
            cache: cache_dir
                .map(|d| ArtifactCache::new(d, &engine, Arc::new(MemoryLedger::default()))),
            engine,
            linker,
            deadlines: Deadlines::default(),
            stop_ticker,
            observer: None,
            audit: None,
            budget: StepBudget::default(),
            loaded: Default::default(),
        })
    }

    /// Trust cached artifacts whose digests `ledger` recorded (a session's state store), and
    /// record there the digest of every artifact compiled from now on.
    pub fn set_artifact_ledger(&mut self, ledger: Arc<dyn ArtifactLedger>) {
        if let Some(cache) = &mut self.cache {
            cache.set_ledger(ledger);
        }
    }

    /// The compiled-component cache, if there is one.
    pub fn artifact_cache(&self) -> Option<&ArtifactCache> {
        self.cache.as_ref()
    }

    /// Replace the per-call deadlines.
    pub fn set_deadlines(&mut self, deadlines: Deadlines) {
        self.deadlines = deadlines;
    }

    /// The budget of export calls made without capabilities (`describe`, `plan`,
    /// `plan-restore`, replays); with capabilities, each call has the caps' own
    /// ([`InstanceCaps::budget`]).
    pub fn set_budget(&mut self, budget: StepBudget) {
        self.budget = budget;
    }

    /// Audit adapter faults, and capability calls made where none are lent, in `audit`.
    pub fn set_audit(&mut self, audit: Arc<AuditLog>) {
        self.audit = Some(audit);
    }

    /// Audit a fault of `adapter` (a trap, a deadline, a broken contract) as a denied record of
    /// the `sandbox` capability, and hand it back. With `caps` it is tagged with the instance
    /// and run; without, with the adapter's label.
    pub fn audited(
        &self,
        adapter: &LoadedAdapter,
        caps: Option<&InstanceCaps>,
        fault: AdapterFault,
    ) -> AdapterFault {
        match (caps, &self.audit) {
            (Some(caps), _) => {
                let _ = caps.record_fault(&fault.export, &fault.reason);
            }
            (None, Some(audit)) => {
                let caller = upshift_caps::Caller {
                    adapter_digest: adapter.digest.clone(),
                    instance: adapter.label.clone(),
                };
                let _ = Witness::new(audit.clone(), caller).fault(&fault.export, &fault.reason);
            }
            (None, None) => {}
        }
        fault
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Compile (or load from cache) and link an adapter, read its embedded manifest, and check
    /// that `describe` tells the same story.
    pub async fn load(&self, label: &str, wasm: &[u8]) -> Result<LoadedAdapter, RuntimeError> {
        let digest = digest(wasm);
        let manifest = Manifest::from_component(wasm)
            .and_then(|m| {
                world::World::read(wasm)?.check_api(&m.host_api)?;
                Ok(m)
            })
            .map_err(|reason| RuntimeError::Component {
                adapter: label.to_string(),
                reason,
            })?;
        let component_err = |e: wasmtime::Error| RuntimeError::Component {
            adapter: label.to_string(),
            reason: format!("{e:#}"),
        };
        let (component, outcome, cache_note) = match &self.cache {
            Some(cache) => {
                let cached = cache
                    .load(&self.engine, &digest, wasm)
                    .await
                    .map_err(component_err)?;
                (cached.component, cached.outcome, cached.note)
            }
            None => {
                // Compiling takes seconds of CPU: off the async threads, as the cache does.
                let engine = self.engine.clone();
                let bytes = wasm.to_vec();
                let component =
                    tokio::task::spawn_blocking(move || Component::new(&engine, &bytes))
                        .await
                        .map_err(|e| RuntimeError::Component {
                            adapter: label.to_string(),
                            reason: format!("compiling stopped: {e}"),
                        })?
                        .map_err(component_err)?;
                (component, CacheOutcome::Compiled, None)
            }
        };
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| RuntimeError::Component {
                adapter: label.to_string(),
                reason: format!("it imports something the host does not provide: {e:#}"),
            })?;
        let pre = AdapterPre::new(pre).map_err(component_err)?;
        let loaded = LoadedAdapter {
            label: label.to_string(),
            digest,
            manifest,
            cache: outcome,
            cache_note,
            pre,
        };
        let described = self.describe(&loaded).await?;
        loaded
            .manifest
            .check_matches(&described)
            .map_err(|reason| {
                self.audited(
                    &loaded,
                    None,
                    AdapterFault {
                        adapter: loaded.label.clone(),
                        short: loaded.short_digest().to_string(),
                        export: "describe".into(),
                        reason,
                    },
                )
            })?;
        Ok(loaded)
    }

    /// [`Runtime::load`], once per process for the same bytes: a later call with bytes of the
    /// same sha256 gets the adapter loaded (and checked) the first time, under its own label,
    /// without reading the cache, its ledger or calling `describe` again. A session loads an
    /// instance's adapter for every plan and run, so an agent carrying out many instances
    /// loads each adapter once. The caller's checks of the bytes (signatures, lock file) are
    /// its own and still run every time; only what follows from the bytes alone is shared.
    pub async fn load_shared(
        &self,
        label: &str,
        wasm: &[u8],
    ) -> Result<LoadedAdapter, RuntimeError> {
        let digest = digest(wasm);
        let kept = self
            .loaded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&digest)
            .cloned();
        if let Some(mut adapter) = kept {
            adapter.label = label.to_string();
            adapter.cache = CacheOutcome::Hit;
            adapter.cache_note = None;
            return Ok(adapter);
        }
        let adapter = self.load(label, wasm).await?;
        let mut kept = self
            .loaded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if kept.len() >= LOADED_KEPT {
            kept.clear();
        }
        kept.insert(adapter.digest.clone(), adapter.clone());
        Ok(adapter)
    }

    /// Compile an adapter without running it (for `adapter inspect`): its export names.
    pub fn exports(&self, wasm: &[u8]) -> Result<Vec<String>, String> {
        let component = Component::new(&self.engine, wasm).map_err(|e| format!("{e:#}"))?;
        let ty = component.component_type();
        Ok(ty
            .exports(&self.engine)
            .map(|(name, _)| name.to_string())
            .collect())
    }

    /// Show every later export call (its arguments, imports and result) to `observer`.
    pub fn set_observer(&mut self, observer: Option<Arc<dyn exports::ExportObserver>>) {
        self.observer = observer;
    }

    fn store(
        &self,
        adapter: &LoadedAdapter,
        caps: Option<Arc<InstanceCaps>>,
        tap: tap::Tap,
        spend: Arc<Spend>,
    ) -> (Store<HostState>, MemoryOutputPipe) {
        let witness = match (&caps, &self.audit) {
            (None, Some(audit)) => Some(Witness::new(
                audit.clone(),
                upshift_caps::Caller {
                    adapter_digest: adapter.digest.clone(),
                    instance: adapter.label.clone(),
                },
            )),
            _ => None,
        };
        let stderr = MemoryOutputPipe::new(64 << 10);
        let wasi = WasiCtxBuilder::new()
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let limits = StoreLimitsBuilder::new()
            .memory_size(MEMORY_BYTES)
            .instances(64)
            .tables(64)
            .memories(8)
            .trap_on_grow_failure(true)
            .build();
        let mut store = Store::new(
            &self.engine,
            HostState {
                wasi,
                table: ResourceTable::new(),
                limits,
                caps,
                witness,
                log_budget: upshift_caps::limits::MAX_LOG_PER_CALL,
                flood_reported: false,
                spend,
                tap,
            },
        );
        store.limiter(|s| &mut s.limits);
        (store, stderr)
    }

    /// Instantiate `adapter` with `caps` and run `call` on it within `deadline`.
    pub async fn call<R>(
        &self,
        adapter: &LoadedAdapter,
        caps: Option<Arc<InstanceCaps>>,
        export: &str,
        deadline: Duration,
        call: impl AsyncFnOnce(&Adapter, &mut Store<HostState>) -> wasmtime::Result<R>,
    ) -> Result<R, AdapterFault> {
        self.call_tapped(adapter, caps, tap::Tap::Off, export, deadline, call)
            .await
            .0
    }

    /// [`Runtime::call`] with `tap` on the store's imports; the tap is handed back with what
    /// it recorded or answered.
    pub async fn call_tapped<R>(
        &self,
        adapter: &LoadedAdapter,
        caps: Option<Arc<InstanceCaps>>,
        tap: tap::Tap,
        export: &str,
        deadline: Duration,
        call: impl AsyncFnOnce(&Adapter, &mut Store<HostState>) -> wasmtime::Result<R>,
    ) -> (Result<R, AdapterFault>, tap::Tap) {
        let subject = format!("`{export}`");
        self.call_as(adapter, caps, tap, export, &subject, deadline, call)
            .await
    }

    /// [`Runtime::call_tapped`], naming the export call `subject` (e.g. "step `migrate`") when
    /// it goes over its budget.
    #[allow(clippy::too_many_arguments)]
    async fn call_as<R>(
        &self,
        adapter: &LoadedAdapter,
        caps: Option<Arc<InstanceCaps>>,
        tap: tap::Tap,
        export: &str,
        subject: &str,
        deadline: Duration,
        call: impl AsyncFnOnce(&Adapter, &mut Store<HostState>) -> wasmtime::Result<R>,
    ) -> (Result<R, AdapterFault>, tap::Tap) {
        let fault = |reason: String| AdapterFault {
            adapter: adapter.label.clone(),
            short: adapter.short_digest().to_string(),
            export: export.to_string(),
            reason,
        };
        let budget = caps.as_ref().map_or(self.budget, |c| c.budget());
        let spend = Arc::new(Spend::new(budget, subject));
        let (mut store, stderr) = self.store(adapter, caps.clone(), tap, spend.clone());
        let ticks = (deadline.as_millis() / TICK.as_millis()).max(1) as u64;
        store.set_epoch_deadline(ticks);
        store.epoch_deadline_trap();
        // Capability calls made during the export end with it (see `upshift_caps::with_deadline`),
        // and the audit records they write are charged to its budget.
        let ends = std::time::Instant::now() + deadline;
        let bounded = upshift_caps::within_export(ends, Some(spend), async {
            match adapter.pre.instantiate_async(&mut store).await {
                Ok(instance) => call(&instance, &mut store).await,
                Err(e) => Err(e),
            }
        });
        // The epoch deadline interrupts guest code only; a guest parked in any host import
        // (a capability, a WASI clock or stream) is stopped here, shortly after the deadline.
        let outcome = match tokio::time::timeout(deadline + HOST_GRACE, bounded).await {
            Ok(outcome) => outcome,
            Err(_) => Err(wasmtime::Error::msg(format!(
                "it ran longer than its deadline of {:.1} s (waiting in a host call) and was stopped",
                deadline.as_secs_f64()
            ))),
        };
        let guest_stderr = String::from_utf8_lossy(&stderr.contents()).into_owned();
        if let Some(caps) = &caps {
            for line in guest_stderr
                .lines()
                .filter(|l| !l.trim().is_empty())
                .take(50)
            {
                caps.events.emit(upshift_caps::Event::Log {
                    instance: caps.caller().instance.clone(),
                    level: "warn".into(),
                    message: format!("[adapter stderr] {line}"),
                });
            }
        }
        let tap = std::mem::take(&mut store.data_mut().tap);
        (
            outcome.map_err(|e| {
                self.audited(
                    adapter,
                    caps.as_deref(),
                    fault(describe_trap(&e, deadline, &guest_stderr)),
                )
            }),
            tap,
        )
    }

    /// Call `describe`.
    pub async fn describe(
        &self,
        adapter: &LoadedAdapter,
    ) -> Result<bindings::AdapterInfo, AdapterFault> {
        self.call(
            adapter,
            None,
            "describe",
            self.deadlines.pure,
            async |a, s| a.call_describe(s).await,
        )
        .await
    }

    /// The deadlines in force.
    pub fn deadlines(&self) -> Deadlines {
        self.deadlines
    }
}

/// How long past its deadline an export parked in a host call is given before it is dropped
/// (capability calls end at the deadline themselves).
const HOST_GRACE: Duration = Duration::from_secs(2);

fn describe_trap(e: &wasmtime::Error, deadline: Duration, stderr: &str) -> String {
    if let Some(over) = e.downcast_ref::<OverBudget>() {
        return over.to_string();
    }
    if let Some(trap) = e.downcast_ref::<wasmtime::Trap>() {
        return match trap {
            wasmtime::Trap::Interrupt => format!(
                "it ran longer than its deadline of {:.1} s and was stopped",
                deadline.as_secs_f64()
            ),
            wasmtime::Trap::StackOverflow => {
                "it overflowed its stack (runaway recursion) and was stopped".into()
            }
            wasmtime::Trap::UnreachableCodeReached if stderr.contains("panicked") => {
                format!("it panicked: {}", first_panic_line(stderr))
            }
            other => format!("it trapped: {other}"),
        };
    }
    let text = format!("{e:#}");
    if text.contains("memory") && (text.contains("limit") || text.contains("grow")) {
        return format!(
            "it tried to use more than its memory limit of {} MiB and was stopped",
            MEMORY_BYTES >> 20
        );
    }
    if stderr.contains("panicked") {
        return format!("it panicked: {}", first_panic_line(stderr));
    }
    if text.contains("cannot allocate another handle") {
        return "it held more resource handles than an instance may and was stopped".into();
    }
    text
}

fn first_panic_line(stderr: &str) -> String {
    stderr
        .lines()
        .skip_while(|l| !l.contains("panicked"))
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}
