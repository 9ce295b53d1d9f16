//! A session: the data directory, the sandbox runtime, the audit log and the state store, and
//! how an instance's adapter and capabilities are put together.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::adapters;
use crate::audit::AuditLog;
use crate::caps::db::{DbBackend, RolePolicy};
use crate::caps::files::FilesBackend;
use crate::caps::http::HttpBackend;
use crate::caps::service::ServiceBackend;
use crate::caps::{Caller, Event, EventSink, InstanceCaps, Secrets};
use crate::fleet::{AdapterRef, Instance};
use crate::grants::{Access, GrantSet};
use crate::integrity::{StateAnchor, StateLedger, audit_log_key};
use crate::lease::{Held, LeaseError, LeaseStore, holder_is_dead_here, holder_name};
use crate::runtime::{LoadedAdapter, Manifest, Runtime};
use crate::state::StateStore;

use super::OpError;

/// Everything an operation needs.
pub struct Session {
    /// The data directory.
    pub data: PathBuf,
    /// The sandbox.
    pub runtime: Runtime,
    /// The audit log.
    pub audit: Arc<AuditLog>,
    /// Runs, steps, backups and leases.
    pub state: Arc<dyn StateStore>,
    /// Where progress goes (masked with [`Session::secrets`]).
    pub events: EventSink,
    /// The secrets masked in everything the session writes: the audit log, events, the
    /// journal, tapes and reports (`upshift_caps::secrets`).
    pub secrets: Secrets,
    /// Where process services' state lives.
    pub services: PathBuf,
    /// How long a lease lasts without a heartbeat.
    lease_ttl: Duration,
    /// A test hook: where this process kills itself, as a machine dying there would.
    crash_point: Option<CrashPoint>,
    /// A test hook: where this process stops itself (SIGSTOP), as a paused VM or a long GC
    /// pause would, until someone sends it SIGCONT.
    pause_point: Option<CrashPoint>,
    /// Whether runs are asked to stop at their next step boundary (SIGINT, SIGTERM).
    stop: StopFlag,
    /// Keeps the audit log's head in the state store; flushed when the session ends.
    anchor: Option<Arc<StateAnchor>>,
    /// The audit log's name in the state store (its anchor and index).
    audit_key: String,
    /// The agent this session works as, named in its leases (and so in each step's holder).
    agent: std::sync::OnceLock<String>,
}

/// How long a session's end waits for the audit log's head to reach the state store.
const ANCHOR_FLUSH: Duration = Duration::from_secs(10);

impl Drop for Session {
    fn drop(&mut self) {
        let Some(anchor) = &self.anchor else { return };
        let flush = || anchor.flush(ANCHOR_FLUSH);
        // On a multi-threaded runtime the worker hands its other tasks on while it waits (the
        // store's connection may be one of them).
        let flushed = match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(flush)
            }
            _ => flush(),
        };
        if !flushed {
            self.events.emit(crate::caps::Event::Log {
                instance: "upshift".into(),
                level: "warn".into(),
                message: format!(
                    "the audit log's head was not anchored in the state store within {} s; `upshift audit verify` cannot vouch for its last records",
                    ANCHOR_FLUSH.as_secs()
                ),
            });
        }
    }
}

/// How to open a [`Session`]: the data directory, and where the state, the process services'
/// state and the compiled-adapter cache live when not in their default places.
///
/// ```no_run
/// # async fn demo() -> Result<(), upshift::ops::OpError> {
/// use upshift::ops::Session;
/// let session = Session::builder("/var/lib/upshift")
///     .state_url(Some("postgres://upshift@db/upshift".into()))
///     .lease_ttl(std::time::Duration::from_secs(60))
///     .open()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SessionBuilder {
    data: PathBuf,
    events: EventSink,
    state_url: Option<String>,
    services: Option<PathBuf>,
    cache: Option<PathBuf>,
    lease_ttl: Duration,
    state_wait: Duration,
    crash_point: Option<CrashPoint>,
    pause_point: Option<CrashPoint>,
    secrets: Secrets,
    audit_segment_bytes: u64,
    stop: StopFlag,
}

impl SessionBuilder {
    /// Close the audit log's active segment at this size and begin a new one (default
    /// [`DEFAULT_SEGMENT_BYTES`](crate::audit::DEFAULT_SEGMENT_BYTES), 64 MiB).
    pub fn audit_segment_bytes(mut self, bytes: u64) -> Self {
        self.audit_segment_bytes = bytes.max(1);
        self
    }

    /// The registry of secrets to mask with (default: a new one); a caller that prints what
    /// the session returns masks it with the same registry.
    pub fn secrets(mut self, secrets: Secrets) -> Self {
        self.secrets = secrets;
        self
    }

    /// Where progress and log lines go (default: nowhere).
    pub fn events(mut self, events: EventSink) -> Self {
        self.events = events;
        self
    }

    /// `postgres://…`: runs, steps, the backup catalog, leases and the work queue in PostgreSQL,
    /// shared by agents on several machines; `None`: `<data>/state.db`.
    pub fn state_url(mut self, url: Option<String>) -> Self {
        self.state_url = url;
        self
    }

    /// Where process services' state lives (default `<data>/services`); agents on one machine
    /// share it.
    pub fn services_dir(mut self, dir: Option<PathBuf>) -> Self {
        self.services = dir;
        self
    }

    /// Where compiled adapters are cached (default `<data>/cache`).
    pub fn cache_dir(mut self, dir: Option<PathBuf>) -> Self {
        self.cache = dir;
        self
    }

    /// How long an instance's lease lasts without a heartbeat (default
    /// [`DEFAULT_TTL`](crate::lease::DEFAULT_TTL)); agents sharing a state must agree on it.
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }

    /// How long a statement waits for a lost PostgreSQL state database (reconnecting with
    /// backoff) before it fails (default
    /// [`DEFAULT_STATE_WAIT`](crate::state::postgres::DEFAULT_STATE_WAIT), 300 s).
    pub fn state_wait(mut self, wait: Duration) -> Self {
        self.state_wait = wait;
        self
    }

    /// Test hook for crash tests: kill this process (SIGKILL, no cleanup) right after the
    /// journal records `point`. Only builds with the `test-hooks` feature honour it
    /// ([`super::TEST_HOOKS`]); elsewhere it is ignored.
    pub fn crash_point(mut self, point: CrashPoint) -> Self {
        if super::TEST_HOOKS {
            self.crash_point = Some(point);
        }
        self
    }

    /// Test hook for pause tests: stop this process (SIGSTOP: it freezes, its lease heartbeat
    /// too, until a SIGCONT) right after the journal records `point`. Only builds with the
    /// `test-hooks` feature honour it ([`super::TEST_HOOKS`]); elsewhere it is ignored.
    pub fn pause_point(mut self, point: CrashPoint) -> Self {
        if super::TEST_HOOKS {
            self.pause_point = Some(point);
        }
        self
    }

    /// The flag that asks this session's runs to stop at their next step boundary and roll
    /// back (default: a flag nobody else holds). The CLI sets it on SIGINT and SIGTERM.
    pub fn stop_flag(mut self, stop: StopFlag) -> Self {
        self.stop = stop;
        self
    }

    /// Only the state store (for reading the history and the backup catalog).
    pub async fn open_state(&self) -> Result<Arc<dyn StateStore>, OpError> {
        if self.state_url.is_none() {
            self.create_data_dir()?;
        }
        self.state_store().await
    }

    /// The state store, once the data directory is there.
    async fn state_store(&self) -> Result<Arc<dyn StateStore>, OpError> {
        match &self.state_url {
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                crate::state::open_postgres(url, self.lease_ttl, self.state_wait).await
            }
            Some(other) => {
                return Err(OpError::Usage(format!(
                    "state `{other}` is not a postgres:// URL (leave it out for the SQLite state in the data directory)"
                )));
            }
            None => crate::state::open(&self.data.join("state.db")).await,
        }
        .map_err(|e| OpError::Host(e.to_string()))
    }

    /// Create the data directory 0700, or make an existing one 0700 (saying so: it held the
    /// state, audit log and backups open to other users).
    fn create_data_dir(&self) -> Result<(), OpError> {
        let was = crate::caps::private::private_dir(&self.data).map_err(|source| {
            OpError::DataDirectory {
                path: self.data.clone(),
                source,
            }
        })?;
        if let Some(mode) = was {
            self.events.emit(Event::Log {
                instance: String::new(),
                level: "warn".into(),
                message: format!(
                    "data directory {} was open to other users (mode {mode:o}); it is now 0700",
                    self.data.display()
                ),
            });
        }
        Ok(())
    }

    /// Open (creating) the data directory and everything in it. The audit log is opened only
    /// if it reaches the head the state store anchored for it (a log whose anchored records
    /// were removed or rewritten stops the session), and its head is anchored after every
    /// append from then on.
    /// Cached compiled adapters are trusted only if the state store recorded their digests.
    pub async fn open(self) -> Result<Session, OpError> {
        self.create_data_dir()?;
        if let Some(url) = &self.state_url {
            self.secrets.add_url(url);
        }
        let state = self.state_store().await?;
        let audit_path = self.data.join("audit.jsonl");
        let key = audit_log_key(&audit_path);
        let anchored = state
            .audit_anchor(&key)
            .await
            .map_err(|e| OpError::Host(e.to_string()))?
            .map(|a| crate::audit::ChainHead {
                records: a.records,
                hash: a.head,
            });
        let audit = Arc::new(
            AuditLog::open_anchored(&audit_path, anchored.as_ref())
                .map_err(|e| OpError::Host(e.to_string()))?
                .with_secrets(self.secrets.clone())
                .with_segment_bytes(self.audit_segment_bytes),
        );
        // Before this session's writer starts: records the index lacks are read from the log.
        if let Err(e) = crate::integrity::catch_up_index(&state, &key, &audit).await {
            self.events.emit(Event::Log {
                instance: "upshift".into(),
                level: "warn".into(),
                message: format!(
                    "the audit index could not be brought up to the log ({e}); a run's records are found by reading the whole log"
                ),
            });
        }
        let anchor = StateAnchor::start(state.clone(), key.clone(), self.events.clone())
            .map_err(|e| OpError::Host(format!("cannot start the audit anchor: {e}")))?;
        audit.set_anchor(anchor.clone());
        let cache = self.cache.unwrap_or_else(|| self.data.join("cache"));
        let mut runtime = Runtime::new(Some(&cache)).map_err(|e| OpError::Host(e.to_string()))?;
        runtime.set_artifact_ledger(Arc::new(StateLedger(state.clone())));
        runtime.set_audit(audit.clone());
        Ok(Session {
            services: self.services.unwrap_or_else(|| self.data.join("services")),
            data: self.data,
            runtime,
            audit,
            state,
            events: self.events.masked(self.secrets.clone()),
            secrets: self.secrets,
            lease_ttl: self.lease_ttl,
            crash_point: self.crash_point,
            pause_point: self.pause_point,
            stop: self.stop,
            anchor: Some(anchor),
            audit_key: key,
            agent: std::sync::OnceLock::new(),
        })
    }
}

impl Session {
    /// Work as agent `name` from now on: the leases this session takes (and so the journal's
    /// step holders) name it. Set once; later calls are ignored.
    pub fn act_as_agent(&self, name: &str) {
        let _ = self.agent.set(name.to_string());
    }

    /// Who holds a lease this session takes for `label`.
    fn holder(&self, label: &str) -> String {
        match self.agent.get() {
            Some(agent) => holder_name(&format!("agent {agent}: {label}")),
            None => holder_name(label),
        }
    }

    /// How to open a session over the data directory `data`.
    pub fn builder(data: impl Into<PathBuf>) -> SessionBuilder {
        SessionBuilder {
            data: data.into(),
            events: EventSink::discard(),
            state_url: None,
            services: None,
            cache: None,
            lease_ttl: crate::lease::DEFAULT_TTL,
            state_wait: crate::state::postgres::DEFAULT_STATE_WAIT,
            crash_point: None,
            pause_point: None,
            secrets: Secrets::new(),
            audit_segment_bytes: crate::audit::DEFAULT_SEGMENT_BYTES,
            stop: StopFlag::default(),
        }
    }

    /// The flag that asks this session's runs to stop at their next step boundary.
    pub fn stop(&self) -> &StopFlag {
        &self.stop
    }

    /// The audit records of run `run_id` (only its denials when `denied_only`), read by offset
    /// through the index in the state store; see [`crate::integrity::records_for_run`].
    pub async fn audit_records(
        &self,
        run_id: &str,
        denied_only: bool,
    ) -> Result<Vec<crate::audit::AuditRecord>, OpError> {
        crate::integrity::records_for_run(
            &self.state,
            &self.audit_key,
            &self.audit,
            run_id,
            denied_only,
        )
        .await
        .map_err(|e| OpError::Host(format!("audit log {}: {e}", self.audit.path().display())))
    }

    /// Open (creating) the data directory and everything in it, with the defaults.
    pub async fn open(data: &Path, events: EventSink) -> Result<Session, OpError> {
        Session::builder(data).events(events).open().await
    }

    /// Die here if this is the crash point (see [`SessionBuilder::crash_point`]); stop here
    /// (until SIGCONT) if it is the pause point ([`SessionBuilder::pause_point`]).
    pub(crate) fn crash_if_at(&self, phase: &str, seq: u32, moment: StepMoment) {
        let here = |p: &CrashPoint| p.phase == phase && p.seq == seq && p.moment == moment;
        if self.crash_point.as_ref().is_some_and(here) {
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        }
        if self.pause_point.as_ref().is_some_and(here) {
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGSTOP);
        }
    }

    /// Take the lease of `instance` for this process (`label` says what for), with its
    /// heartbeat, to start a new run: refused with the holder's name while someone else holds
    /// it, and with [`LeaseError::Unfinished`] (exit 6, naming the run, its last journaled
    /// step and the commands that finish it) while the instance has an unfinished run
    /// ([`crate::state::StateStore::unfinished_runs`]).
    pub async fn hold_lease(&self, instance: &str, label: &str) -> Result<Held, OpError> {
        self.hold_lease_to_start(instance, label, None).await
    }

    /// [`Session::hold_lease`], except that the run `exempt`, if it stopped for an operator
    /// (status `failed`), does not stand in the way: a restore of a backup that run took is
    /// the recovery its operator help names.
    pub async fn hold_lease_to_start(
        &self,
        instance: &str,
        label: &str,
        exempt: Option<&str>,
    ) -> Result<Held, OpError> {
        let store: Arc<dyn LeaseStore> = self.state.clone();
        let holder = self.holder(label);
        let held = match Held::acquire(store.clone(), instance, &holder, self.lease_ttl).await {
            Ok(held) => held,
            Err(LeaseError::Held {
                holder: dead,
                token,
                ..
            }) if holder_is_dead_here(&dead) => {
                // A holder that died after journaling its run left that run unfinished: only
                // its resume (or abandon) takes the lease over. One that died before (while
                // loading or planning) left nothing to finish.
                self.refuse_unfinished(instance, exempt, Some(&dead))
                    .await?;
                Held::take_over(store, instance, token, &holder, self.lease_ttl).await?
            }
            Err(e) => return Err(e.into()),
        };
        // Under the lease nobody else starts a run here: an unfinished one is there or not.
        if let Err(e) = self.refuse_unfinished(instance, exempt, None).await {
            let _ = held.release().await;
            return Err(e);
        }
        Ok(held)
    }

    /// Take the lease of `instance` to go on with (or end) one of its runs: a holder known to
    /// be dead here is taken over at once (it can only have been running that run, the
    /// instance's one unfinished run); a live holder's lease is refused.
    pub async fn hold_lease_for_run(&self, instance: &str, label: &str) -> Result<Held, OpError> {
        let store: Arc<dyn LeaseStore> = self.state.clone();
        let holder = self.holder(label);
        match Held::acquire(store.clone(), instance, &holder, self.lease_ttl).await {
            Ok(held) => Ok(held),
            Err(LeaseError::Held {
                holder: dead,
                token,
                ..
            }) if holder_is_dead_here(&dead) => {
                Ok(Held::take_over(store, instance, token, &holder, self.lease_ttl).await?)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Refuse to start a run on `instance` while it has an unfinished run (other than a
    /// stopped `exempt` one); `dead` names its holder if it is known to have died.
    async fn refuse_unfinished(
        &self,
        instance: &str,
        exempt: Option<&str>,
        dead: Option<&str>,
    ) -> Result<(), OpError> {
        let host = |e: crate::state::StateError| OpError::Host(e.to_string());
        let unfinished = self.state.unfinished_runs(instance).await.map_err(host)?;
        let blocking = unfinished.into_iter().find(|r| {
            !(Some(r.id.as_str()) == exempt && r.status == crate::state::RunStatus::Failed)
        });
        match blocking {
            None => Ok(()),
            Some(run) => Err(OpError::Busy(self.unfinished(&run, dead).await?)),
        }
    }

    /// Why nothing new starts while `run` is unfinished: the run, its last journaled step and
    /// the exact commands that finish it. `dead` names its holder if it is known to have died.
    pub async fn unfinished(
        &self,
        run: &crate::state::RunRecord,
        dead: Option<&str>,
    ) -> Result<LeaseError, OpError> {
        use crate::state::{RunStatus, StepStatus};
        let host = |e: crate::state::StateError| OpError::Host(e.to_string());
        let steps = self.state.steps(&run.id).await.map_err(host)?;
        let later = self.state.runs_after(run).await.map_err(host)?;
        let last_step = steps
            .iter()
            .filter(|s| s.phase != "operator")
            .max_by(|a, b| a.started_at.cmp(&b.started_at))
            .map_or_else(
                || "none (it stopped before its first step)".to_string(),
                |s| {
                    format!(
                        "{} step {} `{}` ({}), {} at {}{}",
                        s.phase,
                        s.seq + 1,
                        s.step_id,
                        s.title,
                        if s.status == StepStatus::Started {
                            "started"
                        } else {
                            s.status.as_str()
                        },
                        s.started_at,
                        match &s.finished_at {
                            Some(at) => format!(", finished at {at}"),
                            None => ", never finished".to_string(),
                        }
                    )
                },
            );
        let state = match (run.status, dead) {
            (RunStatus::Running, Some(holder)) => {
                format!("status running; its process ({holder}) is gone")
            }
            (RunStatus::Running, None) => {
                "status running, and no process holds the instance's lease: its host stopped without ending it".to_string()
            }
            (status, _) => format!("status {status}: it stopped for an operator"),
        };
        let abandon = format!("`upshift abandon {} --why \"what you did\"`", run.id);
        let next = if let Some(l) = later.first() {
            format!(
                "It cannot be resumed: the later run {} ({}) superseded it. Once the instance is right, mark it ended with {abandon}.",
                l.id, l.kind
            )
        } else if run.status == RunStatus::Running {
            format!(
                "Finish it with `upshift resume {}` (it checks the instance and goes forward or rolls back), or, if you have put the instance right by hand, mark it ended with {abandon}.",
                run.id
            )
        } else {
            let unknown = steps
                .iter()
                .find(|s| s.phase == "forward" && s.status == StepStatus::Started)
                .map_or("STEP", |s| s.step_id.as_str());
            let backup = self
                .state
                .backups(Some(&run.instance))
                .await
                .map_err(host)?
                .into_iter()
                .find(|b| b.run_id.as_deref() == Some(run.id.as_str()));
            format!(
                "Its step `{unknown}` had an unknown outcome: once you have established that it completed, run `upshift resume {} --step-done {unknown}`; {}or, if you have put the instance right by hand, mark it ended with {abandon}.",
                run.id,
                backup.map_or_else(String::new, |b| format!(
                    "to put the data and version back, run `upshift restore {} {}`; ",
                    run.instance, b.id
                ))
            )
        };
        Ok(LeaseError::Unfinished(Box::new(
            crate::lease::UnfinishedRun {
                instance: run.instance.clone(),
                run: run.id.clone(),
                kind: run.kind.clone(),
                started_at: run.started_at.clone(),
                state,
                last_step: self.mask(&last_step).into_owned(),
                next,
            },
        )))
    }

    /// `text` with the session's secrets masked: what the journal and reports store.
    pub fn mask<'t>(&self, text: &'t str) -> std::borrow::Cow<'t, str> {
        self.secrets.mask(text)
    }

    /// A run record as the journal stores it: its plan and message masked.
    pub fn masked_run(&self, run: &crate::state::RunRecord) -> crate::state::RunRecord {
        let mut run = run.clone();
        if let Ok(mut plan) = serde_json::from_str::<serde_json::Value>(&run.plan_json) {
            self.secrets.mask_json(&mut plan);
            run.plan_json = plan.to_string();
        } else {
            self.secrets.mask_string(&mut run.plan_json);
        }
        self.secrets.mask_option(&mut run.message);
        run
    }

    /// Where backups are written.
    pub fn backups_dir(&self) -> PathBuf {
        self.data.join("backups")
    }

    /// Load the adapter an instance names. Before anything is compiled: under a `[trust]`
    /// policy an adapter file must be signed as it requires, and under a lock file the
    /// adapter's bytes must be the approved ones (bundled adapters included, since a new
    /// Upshift binary brings new ones) and the approval no wider than what the adapter asks
    /// for and the fleet file grants no more than it (see [`crate::lockfile::LockFile::ceiling`]).
    /// A cache entry that was not trusted (and so compiled again) is reported as a warning.
    pub async fn load_adapter(&self, instance: &Instance) -> Result<LoadedAdapter, OpError> {
        let adapter = &instance.adapter;
        let (label, wasm) = adapters::resolve(adapter).map_err(OpError::Usage)?;
        if let (AdapterRef::File(path), Some(policy)) = (adapter, &instance.trust) {
            crate::signing::verify(path, &wasm, policy)
                .map_err(|e| OpError::Usage(format!("not trusted: {e}")))?;
        }
        if let Some(lock) = &instance.lock {
            // A component without a readable manifest is refused by `load` below.
            if let Ok(manifest) = Manifest::from_component(&wasm) {
                lock.admit(adapter, &crate::runtime::digest(&wasm), &manifest)
                    .map_err(|e| OpError::Usage(format!("not approved: {e}")))?;
                lock.ceiling(adapter, &manifest, &instance.name, &instance.bound_names())
                    .map_err(|e| OpError::Usage(format!("not approved: {e}")))?;
            }
        }
        self.load_component(&instance.name, &label, &wasm).await
    }

    /// Register what the instance's bindings hold that is secret: URL passwords of its
    /// databases, HTTP bases and health URLs, and its services' secret-named `env` values.
    pub fn register_secrets(&self, instance: &Instance) {
        let s = &self.secrets;
        instance.db.values().for_each(|b| s.add_url(&b.url));
        instance.http.values().for_each(|b| s.add_url(&b.url));
        for b in instance.service.values() {
            use crate::fleet::ServiceBackend as Spec;
            let health = match &b.backend {
                Spec::Process(p) => {
                    p.env.iter().for_each(|(k, v)| s.add_env(k, v));
                    &p.health_url
                }
                Spec::Docker(d) => &d.health_url,
                Spec::Compose(c) => &c.health_url,
            };
            if let Some(url) = health {
                s.add_url(url);
            }
        }
    }

    /// Compile (or load from the cache) and link a component whose trust was already checked,
    /// reporting to `events` (as `instance`) why a cache entry was not trusted.
    pub async fn load_component(
        &self,
        instance: &str,
        label: &str,
        wasm: &[u8],
    ) -> Result<LoadedAdapter, OpError> {
        let loaded = self.runtime.load_shared(label, wasm).await?;
        if let Some(note) = &loaded.cache_note {
            self.events.emit(crate::caps::Event::Log {
                instance: instance.to_string(),
                level: "warn".into(),
                message: note.clone(),
            });
        }
        Ok(loaded)
    }

    /// Join the adapter's requests with the instance's bindings and build the backends. Under
    /// a lock file the grants are narrowed to what it approves for these bytes (nothing, if it
    /// approves none).
    pub fn caps_for(
        &self,
        instance: &Instance,
        adapter: &LoadedAdapter,
    ) -> Result<Arc<InstanceCaps>, OpError> {
        self.register_secrets(instance);
        let mut grants = GrantSet::resolve(
            &instance.name,
            &adapter.manifest.bindings,
            &instance.bound_names(),
        )
        .map_err(|errors| {
            OpError::Usage(
                errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\n"),
            )
        })?;
        if let Some(lock) = &instance.lock {
            let approved = lock
                .entry(&instance.adapter)
                .filter(|e| e.sha256 == adapter.digest)
                .map(|e| e.bindings.clone())
                .unwrap_or_default();
            grants.limit_to(&approved, &lock.path.display().to_string());
        }
        let mut caps = InstanceCaps::new(
            Caller {
                adapter_digest: adapter.digest.clone(),
                instance: instance.name.clone(),
            },
            grants,
            self.audit.clone(),
            self.events.clone(),
        );
        caps.set_budget(instance.budget);
        for (name, b) in &instance.db {
            // The host creates databases for a binding it may back up or restore (clones,
            // restores beside), so CREATEDB alone is expected there.
            let access: Vec<Access> = caps
                .grants()
                .grants()
                .get(name)
                .map(|g| g.access.clone())
                .unwrap_or_default();
            let creates_databases = access
                .iter()
                .any(|a| matches!(a, Access::Backup | Access::Restore));
            let policy = RolePolicy {
                binding: name.clone(),
                privileged: b.privileged,
                creates_databases,
                access,
            };
            let backend = DbBackend::bound(&b.url, Some(policy)).map_err(|e| {
                OpError::Usage(format!("instance `{}` db `{name}`: {e}", instance.name))
            })?;
            caps.bind_db(name, backend);
        }
        for (name, b) in &instance.files {
            caps.bind_files(name, FilesBackend::new(&b.path));
        }
        let service_dir = self.services.join(&instance.name);
        for (name, b) in &instance.service {
            caps.bind_service(name, ServiceBackend::new(b, &service_dir, name));
            if let Some(secs) = b.wait_healthy_secs {
                caps.set_wait_healthy_limit(name, std::time::Duration::from_secs(secs));
            }
        }
        for (name, b) in &instance.http {
            let backend = HttpBackend::new(&b.url).map_err(|e| {
                OpError::Usage(format!("instance `{}` http `{name}`: {e}", instance.name))
            })?;
            caps.bind_http(name, backend);
        }
        Ok(Arc::new(caps))
    }
}

/// A request that runs stop at their next step boundary and roll back, never mid-step (the CLI
/// sets it on SIGINT and SIGTERM). Clones share one flag. Runs pass [`StopFlag::begin_changes`]
/// before they change anything, so whoever requests a stop learns whether anything may have
/// been changed yet.
#[derive(Clone, Debug, Default)]
pub struct StopFlag(Arc<Mutex<StopState>>);

#[derive(Debug, Default)]
struct StopState {
    /// Who asked, e.g. `SIGTERM`.
    why: Option<String>,
    /// A run of this process has begun changing an instance.
    changing: bool,
}

/// What a stop request found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReply {
    /// No run had begun changing anything, and none will now: the caller may simply end.
    NothingChanged,
    /// A run is changing an instance: it stops at its next step boundary and rolls back (a
    /// rollback under way runs to its end).
    AtNextBoundary,
    /// A stop had already been asked for; this one changes nothing.
    AlreadyStopping,
}

impl StopFlag {
    fn state(&self) -> std::sync::MutexGuard<'_, StopState> {
        // The state is two plain fields: a panic elsewhere cannot leave it inconsistent.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Ask runs to stop, saying who asks (`SIGTERM`).
    pub fn request(&self, why: &str) -> StopReply {
        let mut state = self.state();
        if state.why.is_some() {
            return StopReply::AlreadyStopping;
        }
        state.why = Some(why.to_string());
        if state.changing {
            StopReply::AtNextBoundary
        } else {
            StopReply::NothingChanged
        }
    }

    /// Who asked runs to stop, if anyone has.
    pub fn requested(&self) -> Option<String> {
        self.state().why.clone()
    }

    /// Called before a run changes anything: refused (naming who asked) once a stop was asked
    /// for; from then on a stop request waits for a step boundary.
    pub fn begin_changes(&self) -> Result<(), OpError> {
        let mut state = self.state();
        if let Some(why) = &state.why {
            return Err(OpError::Host(format!(
                "stopped by {why} before anything was changed; nothing was changed"
            )));
        }
        state.changing = true;
        Ok(())
    }

    /// Why a run stops before `next` ("step `backup`"), if a stop was asked for.
    pub fn at_boundary(&self, next: &str) -> Option<String> {
        self.requested()
            .map(|why| format!("stopped by {why} at step boundary (before {next})"))
    }
}

/// When, around a step, a crash point fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepMoment {
    /// Right after the journal records that the step started.
    Started,
    /// Right after the journal records how the step ended.
    Finished,
}

/// A point in a run where a crash test kills the host: `<phase>:<seq>:<started|finished>`,
/// e.g. `forward:5:started`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrashPoint {
    /// `forward` or `rollback`.
    pub phase: String,
    /// The step's position in its phase.
    pub seq: u32,
    /// Before or after the step's work.
    pub moment: StepMoment,
}

impl std::str::FromStr for CrashPoint {
    type Err = String;

    fn from_str(text: &str) -> Result<CrashPoint, String> {
        let bad = || format!("crash point `{text}` is not `<phase>:<seq>:<started|finished>`");
        let mut parts = text.split(':');
        let (Some(phase), Some(seq), Some(moment), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let moment = match moment {
            "started" => StepMoment::Started,
            "finished" => StepMoment::Finished,
            _ => return Err(bad()),
        };
        Ok(CrashPoint {
            phase: phase.to_string(),
            seq: seq.parse().map_err(|_| bad())?,
            moment,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{StopFlag, StopReply};

    #[test]
    fn a_stop_before_any_change_closes_the_gate_to_changes() {
        let stop = StopFlag::default();
        assert_eq!(stop.request("SIGINT"), StopReply::NothingChanged);
        let refused = stop
            .begin_changes()
            .expect_err("no run may begin after a stop");
        assert!(
            refused
                .to_string()
                .contains("stopped by SIGINT before anything was changed"),
            "{refused}"
        );
        assert_eq!(stop.request("SIGTERM"), StopReply::AlreadyStopping);
        assert_eq!(stop.requested().as_deref(), Some("SIGINT"));
    }

    #[test]
    fn a_stop_during_a_run_waits_for_the_step_boundary() {
        let stop = StopFlag::default();
        let shared = stop.clone();
        assert_eq!(stop.at_boundary("step `stop`"), None);
        stop.begin_changes().expect("no stop asked for yet");
        assert_eq!(shared.request("SIGTERM"), StopReply::AtNextBoundary);
        assert_eq!(
            stop.at_boundary("step `backup`").as_deref(),
            Some("stopped by SIGTERM at step boundary (before step `backup`)")
        );
        assert_eq!(shared.request("SIGINT"), StopReply::AlreadyStopping);
    }
}
