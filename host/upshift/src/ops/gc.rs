//! `upshift gc`: find and remove what faults left half-done — clone databases and restore
//! targets a killed host never finished, unfinished (`.partial`) or uncatalogued backup
//! directories — and backups past the fleet's `[retention]`.
//!
//! Every artifact a run makes is recorded in the state store before it is made and forgotten
//! once it is catalogued or removed ([`crate::state::PendingArtifact`]); what is still recorded
//! after its run ended is an orphan. Nothing of a run that has not ended is touched, and
//! without `[retention]` no catalogued backup is. Databases are reached through the instance's
//! guarded db capability (audited with the detail [`GC`]), under the instance's lease.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use crate::caps::db::DbBackend;
use crate::caps::{CapError, InstanceCaps};
use crate::fleet::Fleet;
use crate::lease::Held;
use crate::state::{BackupRecord, PendingArtifact, RunStatus};

use super::executor::remove_dir_and_partial;
use super::{OpError, Session};

/// The audit detail of gc's capability calls.
pub const GC: &str = "gc";

/// What gc did (or, in a dry run, would do) with one thing it found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum GcAction {
    /// Removed.
    Removed,
    /// A dry run: it would be removed.
    WouldRemove,
    /// Left alone (the reason is in `detail`).
    Kept,
    /// It was already gone; only its record was cleared.
    AlreadyGone,
    /// Removing it failed (the error is in `detail`); it is still recorded for the next gc.
    Failed,
}

/// One thing gc found.
#[derive(Debug, Clone, Serialize)]
pub struct GcItem {
    /// What it is: `clone`, `restore-target` (databases), `dump`, `snapshot`, `restore-dir`,
    /// `partial` (directories), or `backup` (a catalogued backup past retention).
    pub kind: String,
    /// Its instance, when known.
    pub instance: Option<String>,
    /// Its binding, when known.
    pub binding: Option<String>,
    /// The database name or the path.
    pub location: String,
    /// Its size, when it could be measured.
    pub size_bytes: Option<u64>,
    /// Why it is an orphan (or past retention).
    pub why: String,
    /// What was done.
    pub action: GcAction,
    /// Why it was kept, or the error that stopped its removal.
    pub detail: Option<String>,
}

/// What `upshift gc` reports.
#[derive(Debug, Clone, Serialize)]
pub struct GcReport {
    /// Whether nothing was removed (`--dry-run`).
    pub dry_run: bool,
    /// Everything found, in the order it was handled.
    pub items: Vec<GcItem>,
    /// Bytes removed (or, in a dry run, that would be).
    pub freed_bytes: u64,
    /// Removals that failed.
    pub failed: usize,
}

/// Find and (unless `dry_run`) remove orphaned artifacts and backups past retention. `fleet`
/// gives the instances' database bindings and `[retention]`; without it only directories in
/// the data directory are handled (a database orphan is reported as failed: its server is
/// unknown).
pub async fn gc(
    session: &Session,
    fleet: Option<&Fleet>,
    dry_run: bool,
) -> Result<GcReport, OpError> {
    let host = |e: crate::state::StateError| OpError::Host(e.to_string());
    // In this order: an artifact is recorded before it is made and catalogued before its
    // record is forgotten, so whatever the listing finds is in the records or the catalog
    // read after it.
    let listed = list_backups_dir(&session.backups_dir()).await?;
    let pending = session.state.pending(None).await.map_err(host)?;
    let catalog = session.state.backups(None).await.map_err(host)?;
    let mut gc = Gc {
        session,
        fleet,
        dry_run,
        items: Vec::new(),
        caps: HashMap::new(),
        leases: HashMap::new(),
        runs: HashMap::new(),
    };
    let catalogued: HashSet<&str> = catalog.iter().map(|b| b.id.as_str()).collect();
    for artifact in &pending {
        gc.pending(artifact, &catalogued).await?;
    }
    let recorded: HashSet<&str> = pending.iter().map(|p| p.id.as_str()).collect();
    for name in listed {
        gc.listed(&name, &recorded, &catalogued).await;
    }
    if let Some(fleet) = fleet {
        for instance in &fleet.instances {
            if let Some(keep) = instance.retention.keep {
                gc.retention(&instance.name, keep, &catalog).await?;
            }
        }
    }
    let freed_bytes = gc
        .items
        .iter()
        .filter(|i| matches!(i.action, GcAction::Removed | GcAction::WouldRemove))
        .filter_map(|i| i.size_bytes)
        .sum();
    let failed = gc
        .items
        .iter()
        .filter(|i| i.action == GcAction::Failed)
        .count();
    Ok(GcReport {
        dry_run,
        items: gc.items,
        freed_bytes,
        failed,
    })
}

/// The working state of one gc.
struct Gc<'a> {
    session: &'a Session,
    fleet: Option<&'a Fleet>,
    dry_run: bool,
    items: Vec<GcItem>,
    /// Each instance's capabilities, or why they cannot be had.
    caps: HashMap<String, Result<Arc<InstanceCaps>, String>>,
    /// Each instance's lease while gc removes its things, or who holds it.
    leases: HashMap<String, Result<Held, String>>,
    /// Runs looked up: their status (`None`: not in the journal).
    runs: HashMap<String, Option<RunStatus>>,
}

/// What removing one thing came to.
enum Removal {
    Removed,
    Gone,
    Failed(String),
}

impl Gc<'_> {
    fn push(&mut self, item: GcItem) {
        self.items.push(item);
    }

    async fn run_status(&mut self, run_id: &str) -> Result<Option<RunStatus>, OpError> {
        if let Some(status) = self.runs.get(run_id) {
            return Ok(*status);
        }
        let status = self
            .session
            .state
            .run(run_id)
            .await
            .map_err(|e| OpError::Host(e.to_string()))?
            .map(|r| r.status);
        self.runs.insert(run_id.to_string(), status);
        Ok(status)
    }

    /// The instance's capabilities (its adapter loaded), once.
    async fn caps(&mut self, instance: &str) -> Result<Arc<InstanceCaps>, String> {
        if let Some(caps) = self.caps.get(instance) {
            return caps.clone();
        }
        let caps = match self.fleet.map(|f| f.instance(instance)) {
            None => Err(format!(
                "its database is reached through instance `{instance}` of the fleet file; pass --fleet"
            )),
            Some(Err(e)) => Err(format!(
                "{e}; its database cannot be reached without the instance"
            )),
            Some(Ok(i)) => super::apply::prepare(self.session, i)
                .await
                .map(|(_, caps)| caps)
                .map_err(|e| format!("cannot reach instance `{instance}`: {e}")),
        };
        self.caps.insert(instance.to_string(), caps.clone());
        caps
    }

    /// Hold the instance's lease while its things are removed; `Err` names the holder.
    async fn lease(&mut self, instance: &str) -> Result<(), String> {
        if !self.leases.contains_key(instance) {
            let held = self
                .session
                .hold_lease(instance, GC)
                .await
                .map_err(|e| e.to_string());
            self.leases.insert(instance.to_string(), held);
        }
        match self.leases.get(instance) {
            Some(Ok(_)) => Ok(()),
            Some(Err(e)) => Err(e.clone()),
            None => Err("no lease".into()),
        }
    }

    /// A database of `instance`'s `binding`, through the guarded db capability: a clone needs
    /// `backup`, a restore target `restore`.
    async fn on_db<T>(
        &mut self,
        instance: &str,
        binding: &str,
        kind: &str,
        f: impl AsyncFnOnce(&DbBackend) -> Result<T, CapError>,
    ) -> Result<T, String> {
        let caps = self.caps(instance).await?;
        let db = caps.db();
        let done = if kind == "clone" {
            db.backup(binding, GC, f).await
        } else {
            db.restore(binding, GC, f).await
        };
        done.map_err(|e| e.to_string())
    }

    /// One recorded artifact.
    async fn pending(
        &mut self,
        p: &PendingArtifact,
        catalogued: &HashSet<&str>,
    ) -> Result<(), OpError> {
        let mut item = GcItem {
            kind: p.kind.clone(),
            instance: Some(p.instance.clone()),
            binding: Some(p.binding.clone()),
            location: p.location.clone(),
            size_bytes: None,
            why: String::new(),
            action: GcAction::Kept,
            detail: None,
        };
        let made = match p.kind.as_str() {
            "clone" => "a clone backup",
            "dump" => "a dump backup",
            "snapshot" => "a snapshot",
            "restore-target" => "the database a restore was building",
            "restore-dir" => "the directory a restore was building",
            other => {
                item.why = format!("recorded as `{other}`, which this upshift does not know");
                item.detail = Some("left alone; it was recorded by another upshift".into());
                self.push(item);
                return Ok(());
            }
        };
        if let Some(run) = &p.run_id {
            match self.run_status(run).await? {
                Some(RunStatus::Running) => {
                    item.why = format!("{made} of run {run}, which has not ended");
                    item.detail = Some(format!(
                        "kept: run {run} may still need it; finish it (`upshift resume {run}`) and run gc again"
                    ));
                    self.push(item);
                    return Ok(());
                }
                status => {
                    item.why = format!(
                        "{made} that run {run} left unfinished (the run ended {})",
                        status.map_or("and is no longer in the journal".to_string(), |s| s
                            .as_str()
                            .replace('_', " "))
                    );
                }
            }
        } else {
            item.why = format!("{made} whose removal by gc did not finish");
        }
        // Catalogued after all (its record could not be cleared then): nothing to remove.
        let backup_kind = matches!(p.kind.as_str(), "clone" | "dump" | "snapshot");
        if backup_kind && p.run_id.is_some() && catalogued.contains(p.id.as_str()) {
            if !self.dry_run {
                let _ = self.session.state.forget_pending(&p.id).await;
            }
            return Ok(());
        }
        let removal = match p.kind.as_str() {
            "clone" | "restore-target" => self.remove_database(&mut item, p).await,
            _ => {
                let mut dirs = vec![PathBuf::from(&p.location)];
                if p.kind != "restore-dir" {
                    dirs.push(Path::new(&p.location).with_extension("partial"));
                }
                if backup_kind {
                    dirs.push(self.session.backups_dir().join(&p.id));
                }
                self.remove_dirs(&mut item, Some(&p.instance), &dirs).await
            }
        };
        self.settle(item, removal, Some(&p.id)).await;
        Ok(())
    }

    /// Record the outcome of a removal; a record whose artifact is gone is forgotten.
    async fn settle(&mut self, mut item: GcItem, removal: Option<Removal>, record: Option<&str>) {
        match removal {
            None => item.action = GcAction::WouldRemove,
            Some(Removal::Removed) => item.action = GcAction::Removed,
            Some(Removal::Gone) => {
                item.action = GcAction::AlreadyGone;
                item.size_bytes = None;
            }
            Some(Removal::Failed(e)) => {
                item.action = GcAction::Failed;
                item.detail = Some(e);
            }
        }
        if let (Some(id), GcAction::Removed | GcAction::AlreadyGone) = (record, item.action)
            && let Err(e) = self.session.state.forget_pending(id).await
        {
            item.detail = Some(format!(
                "removed, but its record could not be cleared ({e}); the next gc clears it"
            ));
        }
        self.push(item);
    }

    /// Size and (unless a dry run) drop a recorded database. `None`: a dry run.
    async fn remove_database(&mut self, item: &mut GcItem, p: &PendingArtifact) -> Option<Removal> {
        let name = p.location.clone();
        let size = self
            .on_db(&p.instance, &p.binding, &p.kind, async |db| {
                db.database_size(&name).await
            })
            .await;
        match size {
            Err(e) => return Some(Removal::Failed(e)),
            Ok(None) => return Some(Removal::Gone),
            Ok(Some(size)) => item.size_bytes = Some(size),
        }
        if self.dry_run {
            return None;
        }
        if let Err(holder) = self.lease(&p.instance).await {
            return Some(Removal::Failed(format!("not removed now: {holder}")));
        }
        let dropped = self
            .on_db(&p.instance, &p.binding, &p.kind, async |db| {
                db.drop_database(&name).await
            })
            .await;
        let manifest = self.session.backups_dir().join(&p.id);
        Some(match dropped {
            Err(e) => Removal::Failed(e),
            Ok(()) => match remove_dir_and_partial(&manifest).await {
                Ok(()) => Removal::Removed,
                Err(e) => Removal::Failed(format!(
                    "dropped, but its manifest {} could not be removed: {e}",
                    manifest.display()
                )),
            },
        })
    }

    /// Size and (unless a dry run) remove directories. `None`: a dry run.
    async fn remove_dirs(
        &mut self,
        item: &mut GcItem,
        instance: Option<&str>,
        dirs: &[PathBuf],
    ) -> Option<Removal> {
        let mut size = 0;
        let mut found = false;
        for dir in dirs {
            if let Some(n) = tree_size(dir).await {
                size += n;
                found = true;
            }
        }
        if !found {
            return Some(Removal::Gone);
        }
        item.size_bytes = Some(size);
        if self.dry_run {
            return None;
        }
        if let Some(instance) = instance
            && let Err(holder) = self.lease(instance).await
        {
            return Some(Removal::Failed(format!("not removed now: {holder}")));
        }
        for dir in dirs {
            match tokio::fs::remove_dir_all(dir).await {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Some(Removal::Failed(format!(
                        "cannot remove {}: {e}",
                        dir.display()
                    )));
                }
                _ => {}
            }
        }
        Some(Removal::Removed)
    }

    /// One entry of the backups directory that no record covers.
    async fn listed(&mut self, name: &str, recorded: &HashSet<&str>, catalogued: &HashSet<&str>) {
        let (id, partial) = match name.strip_suffix(".partial") {
            Some(id) => (id, true),
            None => (name, false),
        };
        if recorded.contains(id) || (!partial && catalogued.contains(id)) {
            return;
        }
        let why = if partial {
            "an unfinished backup (`.partial`) that no run is making".to_string()
        } else {
            format!("backup directory `{id}` is not in the backup catalog")
        };
        let path = self.session.backups_dir().join(name);
        let mut item = GcItem {
            kind: "partial".into(),
            instance: None,
            binding: None,
            location: path.display().to_string(),
            size_bytes: None,
            why,
            action: GcAction::Kept,
            detail: None,
        };
        let removal = self.remove_dirs(&mut item, None, &[path]).await;
        self.settle(item, removal, None).await;
    }

    /// The backups of `instance` past `keep` (per binding, newest valid ones kept).
    async fn retention(
        &mut self,
        instance: &str,
        keep: u32,
        catalog: &[BackupRecord],
    ) -> Result<(), OpError> {
        let mut by_binding: BTreeMap<&str, Vec<&BackupRecord>> = BTreeMap::new();
        for b in catalog.iter().filter(|b| b.instance == instance && b.valid) {
            by_binding.entry(b.binding.as_str()).or_default().push(b);
        }
        for (binding, mut backups) in by_binding {
            // Newest first (the catalog's order; made explicit).
            backups.sort_by(|a, b| (&b.created_at, &b.id).cmp(&(&a.created_at, &a.id)));
            let kept: Vec<&str> = backups
                .iter()
                .take(keep as usize)
                .map(|b| b.id.as_str())
                .collect();
            for b in backups.iter().skip(keep as usize) {
                let mut item = GcItem {
                    kind: "backup".into(),
                    instance: Some(instance.to_string()),
                    binding: Some(binding.to_string()),
                    location: format!("{} ({} {})", b.id, b.method, b.location),
                    size_bytes: b.size_bytes,
                    why: format!(
                        "past retention (keep = {keep}): newer valid backups of `{binding}` are {}",
                        kept.join(", ")
                    ),
                    action: GcAction::Kept,
                    detail: None,
                };
                if let Some(run) = &b.run_id
                    && self.run_status(run).await? == Some(RunStatus::Running)
                {
                    item.detail = Some(format!("kept: run {run}, which took it, has not ended"));
                    self.push(item);
                    continue;
                }
                let removal = if self.dry_run {
                    None
                } else {
                    Some(self.remove_backup(b).await)
                };
                self.settle(item, removal, None).await;
            }
        }
        Ok(())
    }

    /// Remove a catalogued backup: recorded as pending first, so a removal cut short is
    /// finished by the next gc; then out of the catalog, then its files or database.
    async fn remove_backup(&mut self, b: &BackupRecord) -> Removal {
        if let Err(holder) = self.lease(&b.instance).await {
            return Removal::Failed(format!("not removed now: {holder}"));
        }
        let record = PendingArtifact {
            id: b.id.clone(),
            kind: b.method.clone(),
            location: b.location.clone(),
            instance: b.instance.clone(),
            binding: b.binding.clone(),
            run_id: None,
            recorded_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        };
        let Some(Ok(held)) = self.leases.get(&b.instance) else {
            return Removal::Failed(format!("the lease of `{}` is not held", b.instance));
        };
        if let Err(e) = self
            .session
            .state
            .record_pending(held.lease(), &record)
            .await
        {
            return Removal::Failed(format!("cannot record the removal first: {e}"));
        }
        if let Err(e) = self.session.state.delete_backup(&b.id).await {
            let _ = self.session.state.forget_pending(&b.id).await;
            return Removal::Failed(format!("cannot take it out of the catalog: {e}"));
        }
        let manifest = self.session.backups_dir().join(&b.id);
        let removed = if b.method == "clone" {
            let name = b.location.clone();
            match self
                .on_db(&b.instance, &b.binding, "clone", async |db| {
                    db.drop_database(&name).await
                })
                .await
            {
                Ok(()) => remove_dir_and_partial(&manifest)
                    .await
                    .map_err(|e| format!("cannot remove {}: {e}", manifest.display())),
                Err(e) => Err(e),
            }
        } else {
            let mut result = Ok(());
            for dir in [PathBuf::from(&b.location), manifest] {
                if let Err(e) = remove_dir_and_partial(&dir).await {
                    result = Err(format!("cannot remove {}: {e}", dir.display()));
                }
            }
            result
        };
        match removed {
            Ok(()) => {
                let _ = self.session.state.forget_pending(&b.id).await;
                Removal::Removed
            }
            Err(e) => Removal::Failed(format!(
                "{e}; it is out of the catalog and recorded, so the next gc removes it"
            )),
        }
    }
}

/// Before run `run_id` is resumed: remove what its killed host left half-made (recorded as
/// pending by that run and never catalogued), so it takes no space and no name the resumed run
/// needs. Databases are dropped through `caps`' guarded db capability with the audit detail
/// `via`. Returns one line per artifact, saying what was done; what cannot be removed stays
/// recorded for `upshift gc`.
pub async fn clear_run(
    session: &Session,
    caps: &InstanceCaps,
    run_id: &str,
    via: &str,
) -> Vec<String> {
    let Ok(pending) = session.state.pending(Some(&caps.caller().instance)).await else {
        return Vec::new();
    };
    let mut done = Vec::new();
    for p in pending
        .iter()
        .filter(|p| p.run_id.as_deref() == Some(run_id))
    {
        if matches!(p.kind.as_str(), "clone" | "dump" | "snapshot")
            && session.state.backup(&p.id).await.ok().flatten().is_some()
        {
            let _ = session.state.forget_pending(&p.id).await;
            continue;
        }
        let name = p.location.clone();
        let removed = match p.kind.as_str() {
            "clone" => caps
                .db()
                .backup(&p.binding, via, async |db| db.drop_database(&name).await)
                .await
                .map_err(|e| e.to_string()),
            "restore-target" => caps
                .db()
                .restore(&p.binding, via, async |db| db.drop_database(&name).await)
                .await
                .map_err(|e| e.to_string()),
            "dump" | "snapshot" | "restore-dir" => remove_dir_and_partial(Path::new(&p.location))
                .await
                .map_err(|e| e.to_string()),
            _ => continue,
        };
        let removed = match (removed, p.kind.as_str()) {
            (Ok(()), "clone" | "dump" | "snapshot") => {
                remove_dir_and_partial(&session.backups_dir().join(&p.id))
                    .await
                    .map_err(|e| e.to_string())
            }
            (other, _) => other,
        };
        match removed {
            Ok(()) => {
                let _ = session.state.forget_pending(&p.id).await;
                done.push(format!(
                    "removed the unfinished {} `{}` the interrupted run left",
                    p.kind, p.location
                ));
            }
            Err(e) => done.push(format!(
                "the unfinished {} `{}` could not be removed ({e}); `upshift gc` removes it once the run has ended",
                p.kind, p.location
            )),
        }
    }
    done
}

/// Names in the backups directory that look like Upshift's own (`bk-<12 hex>`, perhaps with
/// `.partial`); anything else there is not gc's to judge.
async fn list_backups_dir(dir: &Path) -> Result<Vec<String>, OpError> {
    let mut entries = match tokio::fs::read_dir(dir).await {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(OpError::Host(format!(
                "cannot list the backups directory {}: {e}",
                dir.display()
            )));
        }
    };
    let mut names = Vec::new();
    while let Some(entry) = entries
        .next_entry()
        .await
        .map_err(|e| OpError::Host(format!("cannot list {}: {e}", dir.display())))?
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        let id = name.strip_suffix(".partial").unwrap_or(&name);
        let ours = id
            .strip_prefix("bk-")
            .is_some_and(|hex| hex.len() == 12 && hex.bytes().all(|c| c.is_ascii_hexdigit()));
        if ours {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// The bytes of the files under `path` (links not followed); `None` when it does not exist.
async fn tree_size(path: &Path) -> Option<u64> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        fn walk(path: &Path) -> u64 {
            let Ok(meta) = std::fs::symlink_metadata(path) else {
                return 0;
            };
            if !meta.is_dir() {
                return meta.len();
            }
            std::fs::read_dir(path)
                .map(|entries| {
                    entries
                        .filter_map(Result::ok)
                        .map(|e| walk(&e.path()))
                        .sum()
                })
                .unwrap_or(0)
        }
        std::fs::symlink_metadata(&path).ok().map(|_| walk(&path))
    })
    .await
    .ok()
    .flatten()
}

#[cfg(test)]
mod tests {
    use super::list_backups_dir;

    #[tokio::test]
    async fn only_upshifts_own_backup_names_are_listed() {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in [
            "bk-0123456789ab",
            "bk-0123456789ac.partial",
            "bk-short",
            "notes",
            "bk-0123456789ab.bak",
        ] {
            std::fs::create_dir(dir.path().join(name)).expect("mkdir");
        }
        assert_eq!(
            list_backups_dir(dir.path()).await.expect("list"),
            ["bk-0123456789ab", "bk-0123456789ac.partial"]
        );
        assert!(
            list_backups_dir(&dir.path().join("missing"))
                .await
                .expect("none")
                .is_empty()
        );
    }
}
