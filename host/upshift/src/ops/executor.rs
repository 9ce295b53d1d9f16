//! Runs plan steps: built-in actions through the same grant check and audit as adapter calls,
//! custom steps through the adapter's `run-step`, each journaled before and after it runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use std::path::Path;

use crate::caps::backup::manifest::Manifest;
use crate::caps::db::{BackupSource, DbBackend};
use crate::caps::http::Expect;
use crate::caps::limits::MAX_TEXT;
use crate::caps::service::KeptContainer;
use crate::caps::{CapError, Event, InstanceCaps};
use crate::lease::{Held, Lease};
use crate::runtime::LoadedAdapter;
use crate::runtime::bindings::{Action, BackupMethod, HttpCheckAction, RestoreTarget};
use crate::state::{
    BackupRecord, KeptRecord, PendingArtifact, RunRecord, StateError, StateStore, StepStatus,
};

use super::Session;
use super::plan::RollbackAction;

/// What a run needs to carry out steps.
pub struct RunContext<'a> {
    /// The session.
    pub session: &'a Session,
    /// The adapter.
    pub adapter: &'a LoadedAdapter,
    /// The instance's capabilities.
    pub caps: Arc<InstanceCaps>,
    /// The run being journaled.
    pub run_id: String,
    /// Product version the instance's data is at when a backup is taken.
    pub data_version: String,
    /// The backup a `db-restore` step restores.
    pub restore_source: Option<BackupRecord>,
    /// The instance's lease: confirmed before every step and every capability call, and the
    /// fence of every journal write.
    pub lease: &'a Held,
    /// Set once a restore step began replacing live data (the swap by rename started, or
    /// finished); a restore that fails while it is unset changed no data and can be undone by
    /// starting the services again.
    pub swap_began: AtomicBool,
}

impl<'a> RunContext<'a> {
    /// Journal `run` as started and give the context its steps run in, under `lease`.
    pub async fn begin(
        session: &'a Session,
        adapter: &'a LoadedAdapter,
        caps: &Arc<InstanceCaps>,
        lease: &'a Held,
        run: &RunRecord,
        restore_source: Option<BackupRecord>,
    ) -> Result<RunContext<'a>, super::OpError> {
        session
            .state
            .insert_run(lease.lease(), &session.masked_run(run))
            .await
            .map_err(|e| super::journal_error(lease, e))?;
        Ok(RunContext::attach(
            session,
            adapter,
            caps,
            lease,
            run,
            restore_source,
        ))
    }

    /// The context of a run already journaled (one being resumed): its capability calls are
    /// audited under the run, and a backup records the version the run started from (or, for
    /// a restore, the backup's).
    pub fn attach(
        session: &'a Session,
        adapter: &'a LoadedAdapter,
        caps: &Arc<InstanceCaps>,
        lease: &'a Held,
        run: &RunRecord,
        restore_source: Option<BackupRecord>,
    ) -> RunContext<'a> {
        caps.set_run(Some(run.id.clone()));
        caps.set_tenure(Some(lease.tenure().clone()));
        RunContext {
            session,
            adapter,
            caps: caps.clone(),
            run_id: run.id.clone(),
            data_version: restore_source
                .as_ref()
                .map_or_else(|| run.from_version.clone(), |b| b.product_version.clone()),
            restore_source,
            lease,
            swap_began: AtomicBool::new(false),
        }
    }
}

/// The result of one finished step.
#[derive(Debug, Clone)]
pub struct StepResult {
    /// Summary for the report.
    pub summary: String,
    /// The backup a `db-backup` step took.
    pub backup: Option<BackupRecord>,
}

/// The audit detail of a plan step the host carries out.
const HOST_ACTION: &str = "host action";
/// The audit detail of a rollback step.
const HOST_ROLLBACK: &str = "host rollback";

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// A database name for a backup clone: `<db>_<backup id>`, within PostgreSQL's 63 bytes.
pub fn clone_name(database: &str, backup_id: &str) -> String {
    let suffix = format!("_{}", backup_id.replace('-', "_"));
    let keep = 63usize.saturating_sub(suffix.len());
    let mut base: String = database.chars().take(keep).collect();
    while base.len() > keep {
        base.pop();
    }
    format!("{base}{suffix}")
}

impl RunContext<'_> {
    fn state(&self) -> &dyn StateStore {
        self.session.state.as_ref()
    }

    /// The lease every journal write of this run is fenced by.
    fn fence(&self) -> &Lease {
        self.lease.lease()
    }

    /// A journal write's outcome; one refused by its fence marks the lease lost, so the run
    /// stops (no further step, no rollback).
    fn journaled<T>(&self, r: Result<T, StateError>) -> Result<T, StateError> {
        if let Err(StateError::Fenced { holder, .. }) = &r {
            self.lease.fenced_out(holder.as_deref());
        }
        r
    }

    /// Close step `seq` of `phase`, left `started` by a host that stopped during it, with what
    /// was found: the journal never keeps a step `started` that nobody runs.
    pub async fn close_step(
        &self,
        phase: &str,
        seq: u32,
        status: StepStatus,
        output: Option<&str>,
        error: Option<&str>,
    ) -> Result<(), super::OpError> {
        self.journal_end(phase, seq, status, output, error)
            .await
            .map_err(|e| super::journal_error(self.lease, e))
    }

    /// Journal how step `seq` of `phase` ended, its texts masked, under the run's fence.
    async fn journal_end(
        &self,
        phase: &str,
        seq: u32,
        status: StepStatus,
        output: Option<&str>,
        error: Option<&str>,
    ) -> Result<(), StateError> {
        let (output, error) = (
            output.map(|o| self.session.mask(o)),
            error.map(|e| self.session.mask(e)),
        );
        self.journaled(
            self.state()
                .step_finished(
                    self.fence(),
                    &self.run_id,
                    seq,
                    phase,
                    status,
                    output.as_deref(),
                    error.as_deref(),
                )
                .await,
        )
    }

    /// Whether the lease is lost: the run must stop where it is.
    pub fn lease_lost(&self) -> bool {
        self.lease.is_lost()
    }

    /// Record a `what` (backup, snapshot) just taken in the backup catalog; the artifact is
    /// then no longer pending. If it cannot be catalogued it is removed (nothing could restore
    /// it), or left recorded for `upshift gc`.
    async fn catalogue(
        &self,
        db: Option<&DbBackend>,
        record: BackupRecord,
        what: &str,
    ) -> Result<BackupRecord, CapError> {
        if let Err(e) = self.journaled(self.state().insert_backup(self.fence(), &record).await) {
            if self.lease_lost() {
                // Not ours to touch any more: the pending record leads `upshift gc` to it.
                return Err(CapError::Failed(format!(
                    "the {what} was taken but could not be catalogued ({e}); it is left for `upshift gc` to remove"
                )));
            }
            let removed = match db {
                Some(db) if record.method == "clone" => {
                    let dropped = db.drop_database(&record.location).await;
                    let dir = self.session.backups_dir().join(&record.id);
                    dropped.is_ok() && remove_dir_and_partial(&dir).await.is_ok()
                }
                _ => remove_dir_and_partial(Path::new(&record.location))
                    .await
                    .is_ok(),
            };
            if removed {
                self.unpend(&record.id).await;
            }
            return Err(CapError::Failed(format!(
                "the {what} was taken but could not be catalogued ({e}); {}",
                if removed {
                    "it was removed"
                } else {
                    "it is left for `upshift gc` to remove"
                }
            )));
        }
        self.unpend(&record.id).await;
        Ok(record)
    }

    /// Record, before it is made, an artifact (`kind`, at `location`) of `binding` that a
    /// killed host would leave behind, so `upshift gc` can find it. Nothing is made when this
    /// cannot be recorded.
    async fn pend(
        &self,
        id: &str,
        kind: &str,
        binding: &str,
        location: &str,
    ) -> Result<(), CapError> {
        let artifact = PendingArtifact {
            id: id.to_string(),
            kind: kind.to_string(),
            location: location.to_string(),
            instance: self.caps.caller().instance.clone(),
            binding: binding.to_string(),
            run_id: Some(self.run_id.clone()),
            recorded_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        };
        self.journaled(self.state().record_pending(self.fence(), &artifact).await)
            .map_err(|e| {
                CapError::Failed(format!(
                    "cannot record the {kind} `{location}` before making it ({e}); nothing was made"
                ))
            })
    }

    /// The pending artifact `id` was catalogued or removed. Best effort: a record left behind
    /// is cleared by `upshift gc`, which finds the artifact catalogued or gone.
    async fn unpend(&self, id: &str) {
        let _ = self.state().forget_pending(id).await;
    }

    /// The container this run journaled as kept for `binding`, not yet put back or removed.
    async fn kept_for(&self, binding: &str) -> Result<Option<KeptContainer>, CapError> {
        let kept = self.state().kept(&self.run_id).await.map_err(|e| {
            CapError::Failed(format!(
                "cannot read which container run {} kept: {e}",
                self.run_id
            ))
        })?;
        Ok(kept
            .into_iter()
            .rfind(|k| k.binding == binding && k.released_at.is_none())
            .map(|k| KeptContainer {
                id: k.container_id,
                replaced_by: k.replaced_by,
                image: k.image,
            }))
    }

    /// Switch `binding` to `version` with the container this run journaled as kept (switching
    /// back uses that one only), and journal what the switch kept or released.
    async fn switch(&self, binding: &str, version: &str, via: &str) -> Result<String, CapError> {
        let kept = self.kept_for(binding).await?;
        let switched = self
            .caps
            .service()
            .switch_version(binding, version, via, kept.as_ref(), Some(&self.run_id))
            .await?;
        if let Some(id) = &switched.released {
            self.journaled(
                self.state()
                    .release_kept(self.fence(), &self.run_id, id)
                    .await,
            )
            .map_err(|e| {
                CapError::Failed(format!(
                    "{}; but journaling that the kept container {id} is no longer kept failed: {e}",
                    switched.summary
                ))
            })?;
        }
        if let Some(k) = &switched.kept {
            let record = KeptRecord {
                run_id: self.run_id.clone(),
                instance: self.caps.caller().instance.clone(),
                binding: binding.to_string(),
                container_id: k.id.clone(),
                replaced_by: k.replaced_by.clone(),
                image: k.image.clone(),
                kept_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                released_at: None,
            };
            self.journaled(self.state().record_kept(self.fence(), &record).await).map_err(|e| {
                CapError::Failed(format!(
                    "{}; but the kept container's id {} could not be journaled ({e}), so switching back will refuse: put it back by hand if needed",
                    switched.summary, k.id
                ))
            })?;
        }
        Ok(switched.summary)
    }

    /// After a verified run: drop what `binding` kept for rolling back — for a container, only
    /// the one this run journaled, by id.
    pub async fn finalize(&self, binding: &str) -> Result<String, CapError> {
        let kept = self.kept_for(binding).await?;
        let done = self.caps.service().finalize(binding, kept.as_ref()).await?;
        if let Some(k) = &kept
            && !done.is_empty()
        {
            self.journaled(
                self.state()
                    .release_kept(self.fence(), &self.run_id, &k.id)
                    .await,
            )
            .map_err(|e| CapError::Failed(format!("{done}; but journaling it failed: {e}")))?;
        }
        Ok(done)
    }

    /// Run one step with journaling and events. `Err` carries the error text.
    #[allow(clippy::too_many_arguments)]
    pub async fn step(
        &self,
        phase: &str,
        seq: u32,
        index: usize,
        count: usize,
        id: &str,
        title: &str,
        work: impl AsyncFnOnce() -> Result<StepResult, String>,
    ) -> Result<StepResult, String> {
        let instance = self.caps.caller().instance.clone();
        self.lease.check().await.map_err(|e| e.to_string())?;
        self.journaled(
            self.state()
                .step_started(
                    self.fence(),
                    &self.run_id,
                    seq,
                    id,
                    &self.session.mask(title),
                    phase,
                )
                .await,
        )
        .map_err(|e| format!("cannot journal step `{id}`: {e}"))?;
        self.session
            .crash_if_at(phase, seq, super::session::StepMoment::Started);
        self.caps.events.emit(Event::StepStarted {
            instance: instance.clone(),
            phase: phase.into(),
            index,
            count,
            step: id.into(),
            title: title.into(),
        });
        let started = Instant::now();
        let outcome = work().await;
        let (status, output, error) = match &outcome {
            Ok(r) => (StepStatus::Succeeded, Some(r.summary.as_str()), None),
            Err(e) => (StepStatus::Failed, None, Some(e.as_str())),
        };
        let journaled = self
            .journal_end(phase, seq, status, output, error)
            .await
            .map_err(|e| format!("cannot journal the end of step `{id}`: {e}"));
        self.caps.events.emit(Event::StepFinished {
            instance,
            phase: phase.into(),
            step: id.into(),
            ok: outcome.is_ok(),
            message: match &outcome {
                Ok(r) => r.summary.clone(),
                Err(e) => e.clone(),
            },
            duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        });
        journaled?;
        self.session
            .crash_if_at(phase, seq, super::session::StepMoment::Finished);
        outcome
    }

    /// Carry out one plan action.
    pub async fn perform(&self, action: &Action) -> Result<StepResult, String> {
        match action {
            Action::Custom(c) => {
                let out = self
                    .session
                    .runtime
                    .run_step(self.adapter, self.caps.clone(), &c.name, &c.payload)
                    .await
                    .map_err(|f| f.to_string())?;
                let text = match &out {
                    Ok(o) => &o.summary,
                    Err(e) => &e.message,
                };
                if text.len() > MAX_TEXT {
                    let fault = crate::runtime::AdapterFault {
                        adapter: self.adapter.label.clone(),
                        short: self.adapter.short_digest().to_string(),
                        export: "run-step".into(),
                        reason: format!(
                            "step `{}` answered with {} bytes of text, over the limit of {MAX_TEXT}",
                            c.name,
                            text.len()
                        ),
                    };
                    let fault = self
                        .session
                        .runtime
                        .audited(self.adapter, Some(&self.caps), fault);
                    return Err(fault.to_string());
                }
                match out {
                    Ok(o) => Ok(StepResult {
                        summary: o.summary,
                        backup: None,
                    }),
                    Err(e) => Err(format!("adapter step `{}` failed: {}", c.name, e.message)),
                }
            }
            other => self
                .builtin(other, HOST_ACTION)
                .await
                .map_err(|e| e.to_string()),
        }
    }

    /// A built-in action, through the guarded method of its capability.
    async fn builtin(&self, action: &Action, via: &str) -> Result<StepResult, CapError> {
        let done = |summary: String| {
            Ok(StepResult {
                summary,
                backup: None,
            })
        };
        let services = self.caps.service();
        match action {
            Action::ServiceStop(b) => done(services.stop(b, via).await?),
            Action::ServiceStart(b) => done(services.start(b, via).await?),
            Action::ServiceSwitch(a) => done(self.switch(&a.binding, &a.version, via).await?),
            Action::WaitHealthy(a) => {
                let timeout = Duration::from_millis(a.timeout_ms.into());
                done(services.wait_healthy(&a.binding, timeout, via).await?)
            }
            Action::HttpCheck(a) => done(self.http_check(a, via).await?),
            Action::DbBackup(a) => {
                let record = self.backup(&a.binding, a.method, via).await?;
                Ok(StepResult {
                    summary: format!("backup {} ({})", record.id, record.location),
                    backup: Some(record),
                })
            }
            Action::DbRestore(a) => {
                let source = self.restore_source.as_ref().ok_or_else(|| {
                    CapError::Failed("no backup was chosen for this restore".into())
                });
                let summary = self
                    .restore(&a.binding, source, &a.target, &a.namespace_columns, via)
                    .await?;
                done(summary)
            }
            Action::FilesSnapshot(b) => {
                let record = self.snapshot(b, via).await?;
                Ok(StepResult {
                    summary: format!(
                        "snapshot {} ({})",
                        record.id,
                        record.note.clone().unwrap_or_default()
                    ),
                    backup: Some(record),
                })
            }
            Action::FilesRestore(b) => {
                let source = self.restore_source.as_ref().ok_or_else(|| {
                    CapError::Failed("no snapshot was chosen for this restore".into())
                });
                done(self.restore_files(b, source, via).await?)
            }
            Action::Custom(_) => Err(CapError::Failed(
                "custom steps are run by the adapter".into(),
            )),
        }
    }

    async fn http_check(&self, a: &HttpCheckAction, via: &str) -> Result<String, CapError> {
        let expect = Expect {
            path: &a.path,
            status: a.expect_status,
            body_contains: a.expect_body_contains.as_deref(),
            timeout: Duration::from_millis(a.timeout_ms.into()),
        };
        self.caps.http().check(&a.binding, via, &expect).await
    }

    /// Take a backup of a db binding and record it in the catalog (a host action).
    async fn backup(
        &self,
        binding: &str,
        method: BackupMethod,
        via: &str,
    ) -> Result<BackupRecord, CapError> {
        self.caps
            .db()
            .backup(binding, via, async |db| {
                self.backup_with(db, binding, method).await
            })
            .await
    }

    async fn backup_with(
        &self,
        db: &DbBackend,
        binding: &str,
        method: BackupMethod,
    ) -> Result<BackupRecord, CapError> {
        let id = crate::state::new_backup_id();
        let dir = absolute(&self.session.backups_dir().join(&id));
        let (method_name, location, size, sha) = match method {
            BackupMethod::Snapshot => {
                return Err(CapError::Invalid(
                    "a database is backed up by `clone` or `dump`; `snapshot` is for directories (files-snapshot)".into(),
                ));
            }
            BackupMethod::Clone => {
                let name = clone_name(db.database(), &id);
                self.pend(&id, "clone", binding, &name).await?;
                let made = self.clone_backup(db, &name, &dir).await;
                let (size, sha) = match made {
                    Ok(made) => made,
                    Err(e) => {
                        // The name is this backup's own: whatever exists under it is ours.
                        let dropped = db.drop_database(&name).await;
                        let removed = remove_dir_and_partial(&dir).await;
                        if dropped.is_ok() && removed.is_ok() {
                            self.unpend(&id).await;
                        }
                        return Err(e);
                    }
                };
                ("clone", name, Some(size), Some(sha))
            }
            BackupMethod::Dump => {
                self.pend(&id, "dump", binding, &dir.display().to_string())
                    .await?;
                let (manifest, sha) = match db.dump_to(&dir, &self.data_version).await {
                    Ok(made) => made,
                    Err(e) => {
                        if remove_dir_and_partial(&dir).await.is_ok() {
                            self.unpend(&id).await;
                        }
                        return Err(e);
                    }
                };
                (
                    "dump",
                    dir.display().to_string(),
                    Some(manifest.size()),
                    Some(sha),
                )
            }
        };
        let record = BackupRecord {
            id,
            instance: self.caps.caller().instance.clone(),
            binding: binding.to_string(),
            run_id: Some(self.run_id.clone()),
            method: method_name.into(),
            location,
            source_database: db.database().to_string(),
            product_version: self.data_version.clone(),
            created_at: now(),
            size_bytes: size,
            sha256: sha,
            valid: true,
            note: None,
        };
        self.catalogue(Some(db), record, "backup").await
    }

    /// Clone the bound database into `name` and write its manifest (its fingerprint) into
    /// `dir`; returns the clone's size and the manifest's sha256.
    async fn clone_backup(
        &self,
        db: &DbBackend,
        name: &str,
        dir: &Path,
    ) -> Result<(u64, String), CapError> {
        let size = db.clone_to(name).await?;
        // The clone's own fingerprint is its manifest: `backup verify` compares with it.
        let manifest = Manifest {
            format: "pg-clone".into(),
            database: db.database().to_string(),
            product_version: self.data_version.clone(),
            server_version: db.server_version().await?,
            tool_version: None,
            jobs: 1,
            created_at: now(),
            files: Vec::new(),
            tables: db.fingerprint_database(name).await?,
        };
        let sha = manifest.write(dir)?;
        Ok((size, sha))
    }

    async fn restore(
        &self,
        binding: &str,
        backup: Result<&BackupRecord, CapError>,
        target: &RestoreTarget,
        namespace: &[crate::runtime::bindings::NamespaceColumn],
        via: &str,
    ) -> Result<String, CapError> {
        let backup = backup.and_then(|b| self.located(b));
        self.caps
            .db()
            .restore(binding, via, async |db| {
                self.restore_with(db, binding, &backup?, target, namespace)
                    .await
            })
            .await
    }

    /// `backup` with its files' location made absolute (an old catalog's relative one is read
    /// under this data directory, see [`super::backups::backup_path`]); a clone's location is a
    /// database name and stays as it is.
    fn located(&self, backup: &BackupRecord) -> Result<BackupRecord, CapError> {
        let mut backup = backup.clone();
        if backup.method != "clone" {
            let path = super::backups::backup_path(self.session, &backup)
                .map_err(|e| CapError::Failed(e.to_string()))?;
            backup.location = path.display().to_string();
        }
        Ok(backup)
    }

    /// Restore `backup` with the bound database's backend. The database it creates (the
    /// staging copy, or the new database) is recorded before it is made and removed if the
    /// restore fails before it is in place; `swap_began` is set once the live database may have
    /// been renamed.
    async fn restore_with(
        &self,
        db: &DbBackend,
        binding: &str,
        backup: &BackupRecord,
        target: &RestoreTarget,
        namespace: &[crate::runtime::bindings::NamespaceColumn],
    ) -> Result<String, CapError> {
        if !backup.valid {
            return Err(CapError::Failed(format!(
                "backup {} is marked invalid",
                backup.id
            )));
        }
        let source = match backup.method.as_str() {
            "clone" => BackupSource::Clone(backup.location.clone()),
            "dump" => BackupSource::Dump {
                dir: backup.location.clone().into(),
                manifest_sha256: backup.sha256.clone().unwrap_or_default(),
            },
            other => {
                return Err(CapError::Failed(format!(
                    "backup method `{other}` cannot be restored"
                )));
            }
        };
        let tag = crate::state::new_backup_id().replace("bk-", "");
        let pending = format!("rt-{tag}");
        match target {
            RestoreTarget::SameDatabase => {
                let staging = clone_name(db.database(), &format!("restoring_{tag}"));
                let keep = clone_name(db.database(), &format!("pre_restore_{tag}"));
                self.pend(&pending, "restore-target", binding, &staging)
                    .await?;
                if let Err(e) = db.materialize(&staging, &source).await {
                    if db.drop_database(&staging).await.is_ok() {
                        self.unpend(&pending).await;
                    }
                    return Err(e);
                }
                self.swap_began.store(true, Ordering::SeqCst);
                if let Err(e) = db.swap_in(&staging, &keep).await {
                    // The swap undoes itself where it can: with the bound database still in
                    // place and nothing kept, no data changed, and the copy is dropped.
                    let untouched = matches!(db.database_exists(db.database()).await, Ok(true))
                        && matches!(db.database_exists(&keep).await, Ok(false));
                    if !untouched {
                        return Err(e);
                    }
                    self.swap_began.store(false, Ordering::SeqCst);
                    return Err(match db.drop_database(&staging).await {
                        Ok(()) => {
                            self.unpend(&pending).await;
                            CapError::Failed(format!(
                                "{e}; the live database was left as it was and the restored copy `{staging}` was dropped"
                            ))
                        }
                        Err(d) => CapError::Failed(format!(
                            "{e}; the live database was left as it was, but the restored copy `{staging}` could not be dropped ({d}): `upshift gc` removes it"
                        )),
                    });
                }
                // Swapped in: the staging name is gone.
                self.unpend(&pending).await;
                Ok(format!(
                    "restored {} into `{}`; the replaced database is kept as `{keep}`",
                    backup.id,
                    db.database()
                ))
            }
            RestoreTarget::NewDatabase(name) => {
                if !crate::caps::db::plain_ident(name) {
                    return Err(CapError::Invalid(format!(
                        "`{name}` is not a plain database name (lowercase letters, digits, `_`)"
                    )));
                }
                // A database that is already there is not this restore's to remove.
                if db.database_exists(name).await? {
                    return Err(CapError::Failed(format!(
                        "database `{name}` already exists; choose another name or drop it first"
                    )));
                }
                self.pend(&pending, "restore-target", binding, name).await?;
                let made = async {
                    db.materialize(name, &source).await?;
                    let mut rewritten = 0;
                    for col in namespace {
                        rewritten += db.rewrite_namespace(name, &col.table, &col.column).await?;
                    }
                    Ok::<_, CapError>(rewritten)
                }
                .await;
                // The new database is this restore's own: a half-made one goes.
                let cleared = match &made {
                    Ok(_) => true,
                    Err(_) => db.drop_database(name).await.is_ok(),
                };
                if cleared {
                    self.unpend(&pending).await;
                }
                Ok(format!(
                    "restored {} into new database `{name}` ({} namespace row(s) rewritten from `{}`)",
                    backup.id,
                    made?,
                    db.database()
                ))
            }
        }
    }

    /// Snapshot a files binding into the data directory and record it in the catalog.
    async fn snapshot(&self, binding: &str, via: &str) -> Result<BackupRecord, CapError> {
        self.caps
            .files()
            .snapshot(binding, via, async |root| {
                self.snapshot_of(binding, root).await
            })
            .await
    }

    async fn snapshot_of(&self, binding: &str, root: &Path) -> Result<BackupRecord, CapError> {
        let id = crate::state::new_backup_id();
        let dest = absolute(&self.session.backups_dir().join(&id));
        self.pend(&id, "snapshot", binding, &dest.display().to_string())
            .await?;
        let (manifest, sha) =
            match crate::caps::backup::snapshot::snapshot_blocking(root, &dest).await {
                Ok(made) => made,
                Err(e) => {
                    if remove_dir_and_partial(&dest).await.is_ok() {
                        self.unpend(&id).await;
                    }
                    return Err(e);
                }
            };
        let size: u64 = manifest
            .entries
            .iter()
            .map(|e| match e.kind {
                crate::caps::backup::snapshot::EntryKind::File { size, .. } => size,
                _ => 0,
            })
            .sum();
        let record = BackupRecord {
            id,
            instance: self.caps.caller().instance.clone(),
            binding: binding.to_string(),
            run_id: Some(self.run_id.clone()),
            method: "snapshot".into(),
            location: dest.display().to_string(),
            source_database: root.display().to_string(),
            product_version: self.data_version.clone(),
            created_at: now(),
            size_bytes: Some(size),
            sha256: Some(sha),
            valid: true,
            note: Some(format!(
                "{} entries, {} file(s) cloned copy-on-write",
                manifest.entries.len(),
                manifest.cloned_files
            )),
        };
        self.catalogue(None, record, "snapshot").await
    }

    /// Restore the snapshot `backup` over its files binding (built beside, swapped in by
    /// rename).
    async fn restore_files(
        &self,
        binding: &str,
        backup: Result<&BackupRecord, CapError>,
        via: &str,
    ) -> Result<String, CapError> {
        self.caps
            .files()
            .restore(binding, via, async |root| {
                let source = self.located(backup?)?;
                if source.method != "snapshot" || source.binding != binding {
                    return Err(CapError::Invalid(format!(
                        "backup {} is a {} of `{}`, not a snapshot of `{binding}`",
                        source.id, source.method, source.binding
                    )));
                }
                let tag = crate::state::new_backup_id().replace("bk-", "");
                let staging = crate::caps::backup::snapshot::restore_staging(root, &tag)?;
                let pending = format!("rt-{tag}");
                self.pend(
                    &pending,
                    "restore-dir",
                    binding,
                    &staging.display().to_string(),
                )
                .await?;
                let restored = restore_files_into(root, &source, &tag, &self.swap_began).await;
                // Swapped in or removed on failure by the restore itself: nothing is left.
                if tokio::fs::symlink_metadata(&staging).await.is_err() {
                    self.unpend(&pending).await;
                }
                restored
            })
            .await
    }

    /// Carry out one rollback action; `backups` are the run's backups by the step that took them.
    pub async fn perform_rollback(
        &self,
        action: &RollbackAction,
        backups: &[(String, BackupRecord)],
    ) -> Result<StepResult, String> {
        let services = self.caps.service();
        let via = HOST_ROLLBACK;
        let summary = match action {
            RollbackAction::RestoreFiles {
                binding, from_step, ..
            } => {
                self.restore_files(binding, taken_in(backups, from_step), via)
                    .await
            }
            RollbackAction::Stop { binding } => services.stop(binding, via).await,
            RollbackAction::Start { binding } => services.start(binding, via).await,
            RollbackAction::Switch { binding, version } => self.switch(binding, version, via).await,
            RollbackAction::WaitHealthy { binding } => {
                services
                    .wait_healthy(
                        binding,
                        services
                            .wait_limit(binding)
                            .unwrap_or(super::DEFAULT_WAIT_HEALTHY),
                        via,
                    )
                    .await
            }
            RollbackAction::Restore {
                binding, from_step, ..
            } => {
                let backup = taken_in(backups, from_step);
                self.restore(binding, backup, &RestoreTarget::SameDatabase, &[], via)
                    .await
            }
        };
        summary
            .map(|summary| StepResult {
                summary,
                backup: None,
            })
            .map_err(|e| e.to_string())
    }
}

/// Restore the snapshot `backup` over the directory `root`: built beside, swapped in by rename.
/// `swap_began` is set unless it failed with `root` untouched (nothing moved aside).
async fn restore_files_into(
    root: &Path,
    backup: &BackupRecord,
    tag: &str,
    swap_began: &AtomicBool,
) -> Result<String, CapError> {
    let restored = crate::caps::backup::snapshot::restore_blocking(
        Path::new(&backup.location),
        backup.sha256.as_deref().unwrap_or_default(),
        root,
        tag,
    )
    .await;
    let moved_aside = root.file_name().is_some_and(|name| {
        let mut aside = name.to_os_string();
        aside.push(format!(".upshift-replaced-{tag}"));
        root.with_file_name(aside).exists()
    });
    if restored.is_ok() || moved_aside || !root.exists() {
        swap_began.store(true, Ordering::SeqCst);
    }
    let kept = restored?;
    Ok(format!(
        "restored {} into {}; the replaced tree is kept at {}",
        backup.id,
        root.display(),
        kept.display()
    ))
}

/// `path` made absolute against the working directory (as it is if that cannot be read), so a
/// catalogued location means the same from anywhere.
fn absolute(path: &Path) -> std::path::PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Remove directory `dir` and its unfinished form `<dir>.partial`; fine if neither exists.
pub(crate) async fn remove_dir_and_partial(dir: &Path) -> std::io::Result<()> {
    for path in [dir.to_path_buf(), dir.with_extension("partial")] {
        match tokio::fs::remove_dir_all(&path).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// The backup or snapshot a run's step took.
fn taken_in<'a>(
    backups: &'a [(String, BackupRecord)],
    step: &str,
) -> Result<&'a BackupRecord, CapError> {
    backups
        .iter()
        .find(|(s, _)| s == step)
        .map(|(_, b)| b)
        .ok_or_else(|| CapError::Failed(format!("no backup was taken in step `{step}`")))
}

#[cfg(test)]
mod tests {
    use super::clone_name;

    #[test]
    fn clone_names_fit_postgres() {
        assert_eq!(clone_name("metadb", "bk-0a1b"), "metadb_bk_0a1b");
        let long = "x".repeat(80);
        assert_eq!(clone_name(&long, "bk-0123456789ab").len(), 63);
    }
}
