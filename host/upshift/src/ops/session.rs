//! A session: the data directory, the sandbox runtime, the audit log and the state store, and
//! how an instance's adapter and capabilities are put together.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::adapters;
use crate::audit::AuditLog;
use crate::caps::db::{DbBackend, RolePolicy};
use crate::caps::files::FilesBackend;
use crate::caps::http::HttpBackend;
use crate::caps::service::ServiceBackend;
use crate::caps::{Caller, EventSink, InstanceCaps};
use crate::fleet::{AdapterRef, Instance};
use crate::grants::{Access, GrantSet};
use crate::lease::{Held, holder_name};
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
    /// Where progress goes.
    pub events: EventSink,
    /// Where process services' state lives.
    pub services: PathBuf,
    /// How long a lease lasts without a heartbeat.
    lease_ttl: Duration,
    /// A test hook: where this process kills itself, as a machine dying there would.
    crash_point: Option<CrashPoint>,
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
    crash_point: Option<CrashPoint>,
}

impl SessionBuilder {
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

    /// Test hook for crash tests: kill this process (SIGKILL, no cleanup) right after the
    /// journal records `point`. Only builds with the `test-hooks` feature honour it
    /// ([`super::TEST_HOOKS`]); elsewhere it is ignored.
    pub fn crash_point(mut self, point: CrashPoint) -> Self {
        if super::TEST_HOOKS {
            self.crash_point = Some(point);
        }
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
                crate::state::open_postgres(url, self.lease_ttl).await
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

    fn create_data_dir(&self) -> Result<(), OpError> {
        std::fs::create_dir_all(&self.data).map_err(|source| OpError::DataDirectory {
            path: self.data.clone(),
            source,
        })
    }

    /// Open (creating) the data directory and everything in it.
    pub async fn open(self) -> Result<Session, OpError> {
        self.create_data_dir()?;
        let audit = AuditLog::open(&self.data.join("audit.jsonl"))
            .map_err(|e| OpError::Host(e.to_string()))?;
        let state = self.state_store().await?;
        let cache = self.cache.unwrap_or_else(|| self.data.join("cache"));
        let mut runtime = Runtime::new(Some(&cache)).map_err(|e| OpError::Host(e.to_string()))?;
        let audit = Arc::new(audit);
        runtime.set_audit(audit.clone());
        Ok(Session {
            services: self.services.unwrap_or_else(|| self.data.join("services")),
            data: self.data,
            runtime,
            audit,
            state,
            events: self.events,
            lease_ttl: self.lease_ttl,
            crash_point: self.crash_point,
        })
    }
}

impl Session {
    /// How to open a session over the data directory `data`.
    pub fn builder(data: impl Into<PathBuf>) -> SessionBuilder {
        SessionBuilder {
            data: data.into(),
            events: EventSink::discard(),
            state_url: None,
            services: None,
            cache: None,
            lease_ttl: crate::lease::DEFAULT_TTL,
            crash_point: None,
        }
    }

    /// Open (creating) the data directory and everything in it, with the defaults.
    pub async fn open(data: &Path, events: EventSink) -> Result<Session, OpError> {
        Session::builder(data).events(events).open().await
    }

    /// Die here if this is the crash point (see [`SessionBuilder::crash_point`]).
    pub(crate) fn crash_if_at(&self, phase: &str, seq: u32, moment: StepMoment) {
        if self
            .crash_point
            .as_ref()
            .is_some_and(|p| p.phase == phase && p.seq == seq && p.moment == moment)
        {
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        }
    }

    /// Take the lease of `instance` for this process (`label` says what for), with its
    /// heartbeat; refused with the holder's name while someone else holds it.
    pub async fn hold_lease(&self, instance: &str, label: &str) -> Result<Held, OpError> {
        let store: Arc<dyn crate::lease::LeaseStore> = self.state.clone();
        Ok(Held::acquire(store, instance, &holder_name(label), self.lease_ttl).await?)
    }

    /// Where backups are written.
    pub fn backups_dir(&self) -> PathBuf {
        self.data.join("backups")
    }

    /// Load the adapter an instance names. Before anything is compiled: under a `[trust]`
    /// policy an adapter file must be signed as it requires, and under a lock file the
    /// adapter's bytes must be the approved ones (bundled adapters included, since a new
    /// Upshift binary brings new ones).
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
            }
        }
        self.runtime
            .load(&label, &wasm)
            .await
            .map_err(OpError::from)
    }

    /// Join the adapter's requests with the instance's bindings and build the backends.
    pub fn caps_for(
        &self,
        instance: &Instance,
        adapter: &LoadedAdapter,
    ) -> Result<Arc<InstanceCaps>, OpError> {
        let grants = GrantSet::resolve(
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
        let mut caps = InstanceCaps::new(
            Caller {
                adapter_digest: adapter.digest.clone(),
                instance: instance.name.clone(),
            },
            grants,
            self.audit.clone(),
            self.events.clone(),
        );
        for (name, b) in &instance.db {
            // The host creates databases for a binding it may back up or restore (clones,
            // restores beside), so CREATEDB alone is expected there.
            let creates_databases = caps.grants().grants().get(name).is_some_and(|g| {
                g.access
                    .iter()
                    .any(|a| matches!(a, Access::Backup | Access::Restore))
            });
            let policy = RolePolicy {
                binding: name.clone(),
                privileged: b.privileged,
                creates_databases,
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
