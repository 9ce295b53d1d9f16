//! A session: the data directory, the sandbox runtime, the audit log and the state store, and
//! how an instance's adapter and capabilities are put together.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::adapters;
use crate::audit::AuditLog;
use crate::caps::db::DbBackend;
use crate::caps::files::FilesBackend;
use crate::caps::http::HttpBackend;
use crate::caps::service::ServiceBackend;
use crate::caps::{Caller, EventSink, InstanceCaps};
use crate::fleet::{AdapterRef, Instance};
use crate::grants::GrantSet;
use crate::lease::{Held, default_ttl, holder_name};
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
    pub state: Arc<StateStore>,
    /// Where progress goes.
    pub events: EventSink,
    /// Where process services' state lives.
    pub services: PathBuf,
}

/// Where a session keeps what is not in the data directory's defaults.
#[derive(Debug, Clone, Default)]
pub struct Stores {
    /// `postgres://…`: runs, steps, backup catalog, leases and the work queue in PostgreSQL
    /// (shared by agents on several machines) instead of `<data>/state.db`.
    pub state_url: Option<String>,
    /// Where process services' state lives (default `<data>/services`); agents on one machine
    /// share it.
    pub services: Option<PathBuf>,
}

impl Session {
    /// Open (creating) the data directory and everything in it.
    pub fn open(data: &Path, events: EventSink) -> Result<Session, OpError> {
        Session::open_with(data, events, &Stores::default())
    }

    /// Open with the state and service state where `stores` says.
    pub fn open_with(data: &Path, events: EventSink, stores: &Stores) -> Result<Session, OpError> {
        std::fs::create_dir_all(data).map_err(|e| {
            OpError::Usage(format!(
                "cannot create data directory {}: {e}; pass --data DIR or set UPSHIFT_DATA",
                data.display()
            ))
        })?;
        let audit =
            AuditLog::open(&data.join("audit.jsonl")).map_err(|e| OpError::Host(e.to_string()))?;
        let state = match &stores.state_url {
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                StateStore::open_postgres(url)
            }
            Some(other) => {
                return Err(OpError::Usage(format!(
                    "--state `{other}` is not a postgres:// URL (leave it out for the SQLite state in the data directory)"
                )));
            }
            None => StateStore::open(&data.join("state.db")),
        }
        .map_err(|e| OpError::Host(e.to_string()))?;
        let mut runtime =
            Runtime::new(Some(&data.join("cache"))).map_err(|e| OpError::Host(e.to_string()))?;
        let audit = Arc::new(audit);
        runtime.set_audit(audit.clone());
        Ok(Session {
            data: data.to_path_buf(),
            runtime,
            audit,
            state: Arc::new(state),
            events,
            services: stores
                .services
                .clone()
                .unwrap_or_else(|| data.join("services")),
        })
    }

    /// Take the lease of `instance` for this process (`label` says what for), with its
    /// heartbeat; refused with the holder's name while someone else holds it.
    pub fn hold_lease(&self, instance: &str, label: &str) -> Result<Held, OpError> {
        let store: Arc<dyn crate::lease::LeaseStore> = self.state.clone();
        Ok(Held::acquire(
            store,
            instance,
            &holder_name(label),
            default_ttl(),
        )?)
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
            let backend = DbBackend::new(&b.url).map_err(|e| {
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
