//! `upshift backup verify`: prove a backup is intact and, with a trial restore, that it restores
//! to exactly the data it was taken from.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use crate::caps::InstanceCaps;
use crate::caps::backup::manifest::{BackupCheckError, Manifest, compare_tables, verify_files};
use crate::caps::db::BackupSource;
use crate::fleet::Fleet;
use crate::state::BackupRecord;

use super::{OpError, Session};

/// One check of a backup.
#[derive(Debug, Clone, Serialize)]
pub struct BackupCheck {
    /// What was checked.
    pub name: String,
    /// Whether it held.
    pub passed: bool,
    /// For operators.
    pub detail: String,
}

/// The outcome of `backup verify`.
#[derive(Debug, Clone, Serialize)]
pub struct BackupVerification {
    /// The backup, as catalogued (after the verification).
    pub backup: BackupRecord,
    /// The checks, in order.
    pub checks: Vec<BackupCheck>,
    /// Whether every check passed.
    pub ok: bool,
}

fn check(name: &str, passed: bool, detail: impl Into<String>) -> BackupCheck {
    BackupCheck {
        name: name.into(),
        passed,
        detail: detail.into(),
    }
}

/// The caps of the backup's instance: its database is reached through the guard.
async fn caps_for(
    session: &Session,
    fleet: Option<&Fleet>,
    backup: &BackupRecord,
) -> Result<Arc<InstanceCaps>, OpError> {
    let fleet = fleet.ok_or_else(|| {
        OpError::Usage("this check needs the database server: pass the fleet file (--fleet) that binds the backup's instance".into())
    })?;
    let instance = fleet
        .instance(&backup.instance)
        .map_err(|e| OpError::Usage(e.to_string()))?;
    if !instance.db.contains_key(&backup.binding) {
        return Err(OpError::Usage(format!(
            "instance `{}` no longer binds db `{}` in the fleet file",
            backup.instance, backup.binding
        )));
    }
    let (_, caps) = super::apply::prepare(session, instance).await?;
    Ok(caps)
}

/// Where a dump's or snapshot's files are. Locations are catalogued as absolute paths; a
/// catalog written before that may hold a relative one — the data directory as it was given,
/// joined with `backups/<id>` — which is read as this data directory's own `backups/<id>`. Any
/// other relative location cannot be placed and is refused with what to do.
pub fn backup_path(session: &Session, backup: &BackupRecord) -> Result<PathBuf, OpError> {
    let recorded = Path::new(&backup.location);
    if recorded.is_absolute() {
        return Ok(recorded.to_path_buf());
    }
    let mut tail = recorded.components().rev();
    let made_in_data_dir = tail
        .next()
        .is_some_and(|c| c.as_os_str() == backup.id.as_str())
        && tail.next().is_some_and(|c| c.as_os_str() == "backups");
    let own = session.backups_dir().join(&backup.id);
    let own = std::path::absolute(&own).unwrap_or(own);
    if made_in_data_dir {
        return Ok(own);
    }
    Err(OpError::Host(format!(
        "backup `{}` is catalogued at the relative location `{}`, which names no place under the data directory; move its files to {} and run the command again",
        backup.id,
        backup.location,
        own.display()
    )))
}

/// Verify backup `id`: its manifest, its files (dumps), its contents (clones), and with
/// `restore_test` a restore into a scratch database compared table by table. A backup whose
/// bytes were read and differ from what was recorded is marked invalid, so it is never
/// restored; a later verification that passes marks it valid again. A path that cannot be
/// read (missing, unmounted, unreadable) is an error naming it: the catalog is left as it was.
pub async fn verify(
    session: &Session,
    fleet: Option<&Fleet>,
    id: &str,
    restore_test: bool,
) -> Result<BackupVerification, OpError> {
    let backup = session
        .state
        .backup(id)
        .await
        .map_err(|e| OpError::Host(e.to_string()))?
        .ok_or_else(|| OpError::Usage(format!("no backup `{id}`; `upshift backups` lists them")))?;
    let unreadable = |e: BackupCheckError| {
        OpError::Host(format!(
            "backup `{id}` could not be checked: {e}; nothing was marked (bring the path back or make it readable, then verify again)"
        ))
    };
    let dir = session.backups_dir().join(&backup.id);
    let mut checks = Vec::new();
    let manifest = match Manifest::read(&dir, backup.sha256.as_deref().unwrap_or_default()) {
        Ok(m) => {
            checks.push(check(
                "manifest",
                true,
                format!(
                    "{} tables, taken at {} from `{}`",
                    m.tables.len(),
                    m.product_version,
                    m.database
                ),
            ));
            Some(m)
        }
        Err(e @ BackupCheckError::Unreadable { .. }) => return Err(unreadable(e)),
        Err(e @ BackupCheckError::Damaged(_)) => {
            checks.push(check("manifest", false, e.to_string()));
            None
        }
    };
    if let Some(manifest) = &manifest {
        if backup.method == "dump" {
            let location = backup_path(session, &backup)?;
            let checked = manifest.clone();
            let files = tokio::task::spawn_blocking(move || verify_files(&location, &checked))
                .await
                .map_err(|e| OpError::Host(format!("checking the backup's files failed: {e}")))?;
            checks.push(match files {
                Ok(()) => check(
                    "files",
                    true,
                    format!(
                        "{} files, {} bytes, every sha256 matches",
                        manifest.files.len(),
                        manifest.size()
                    ),
                ),
                Err(e @ BackupCheckError::Unreadable { .. }) => return Err(unreadable(e)),
                Err(e @ BackupCheckError::Damaged(_)) => check("files", false, e.to_string()),
            });
        }
        let intact = checks.iter().all(|c| c.passed);
        if backup.method == "clone" {
            let caps = caps_for(session, fleet, &backup).await?;
            let found = caps
                .db()
                .backup(&backup.binding, "host backup verify", async |db| {
                    db.fingerprint_like(&backup.location, &manifest.tables)
                        .await
                })
                .await
                .map_err(|e| {
                    OpError::Host(format!(
                        "backup `{id}` could not be checked: clone database `{}`: {e}; nothing was marked",
                        backup.location
                    ))
                })?;
            let diffs = compare_tables(&manifest.tables, &found);
            checks.push(check(
                "contents",
                diffs.is_empty(),
                if diffs.is_empty() {
                    "every table matches".to_string()
                } else {
                    diffs.join("; ")
                },
            ));
        }
        if restore_test && intact {
            checks.push(trial_restore(session, fleet, &backup, manifest).await?);
        }
    }
    let ok = checks.iter().all(|c| c.passed);
    let marked = if ok {
        // Damage recorded by an earlier verification is gone (the bytes were put back).
        if backup.valid {
            Ok(())
        } else {
            session.state.mark_valid(&backup.id).await
        }
    } else {
        let why = checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| format!("{}: {}", c.name, c.detail))
            .collect::<Vec<_>>()
            .join("; ");
        session
            .state
            .mark_invalid(
                &backup.id,
                &session.mask(&format!("verification failed: {why}")),
            )
            .await
    };
    marked.map_err(|e| OpError::Host(e.to_string()))?;
    let backup = session
        .state
        .backup(id)
        .await
        .map_err(|e| OpError::Host(e.to_string()))?
        .unwrap_or(backup);
    Ok(BackupVerification { backup, checks, ok })
}

async fn trial_restore(
    session: &Session,
    fleet: Option<&Fleet>,
    backup: &BackupRecord,
    manifest: &Manifest,
) -> Result<BackupCheck, OpError> {
    let caps = caps_for(session, fleet, backup).await?;
    let scratch = format!("upshift_verify_{}", backup.id.replace('-', "_"));
    let source = match backup.method.as_str() {
        "dump" => BackupSource::Dump {
            dir: backup_path(session, backup)?,
            manifest_sha256: backup.sha256.clone().unwrap_or_default(),
        },
        _ => BackupSource::Clone(backup.location.clone()),
    };
    let (restored, dropped) = caps
        .db()
        .restore(&backup.binding, "host restore test", async |db| {
            db.drop_database(&scratch).await?;
            let restored = match db.materialize(&scratch, &source).await {
                Ok(()) => db.fingerprint_like(&scratch, &manifest.tables).await,
                Err(e) => Err(e),
            };
            Ok((restored, db.drop_database(&scratch).await))
        })
        .await
        .map_err(|e| OpError::Host(e.to_string()))?;
    // A trial restore that could not run (the server's disk, a missing tool) proves nothing
    // about the backup: an error, and the catalog is left alone.
    let found = restored.map_err(|e| {
        OpError::Host(format!(
            "backup `{}` could not be restore-tested: the trial restore failed: {e}; nothing was marked",
            backup.id
        ))
    })?;
    let diffs = compare_tables(&manifest.tables, &found);
    let rows: i64 = found.values().map(|t| t.rows).sum();
    let mut detail = if diffs.is_empty() {
        format!(
            "restored into `{scratch}`: {} tables, {rows} rows, every table matches",
            found.len()
        )
    } else {
        diffs.join("; ")
    };
    if let Err(e) = dropped {
        detail.push_str(&format!(" (the scratch database was not dropped: {e})"));
    }
    Ok(check("restore-test", diffs.is_empty(), detail))
}
