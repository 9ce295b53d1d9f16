//! `upshift backup verify`: prove a backup is intact and, with a trial restore, that it restores
//! to exactly the data it was taken from.

use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use crate::caps::InstanceCaps;
use crate::caps::backup::manifest::{Manifest, compare_tables, verify_files};
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

/// Verify backup `id`: its manifest, its files (dumps), its contents (clones), and with
/// `restore_test` a restore into a scratch database compared table by table. A backup that
/// fails is marked invalid, so it is never restored.
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
        Err(e) => {
            checks.push(check("manifest", false, e));
            None
        }
    };
    if let Some(manifest) = &manifest {
        if backup.method == "dump" {
            let files = verify_files(Path::new(&backup.location), manifest);
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
                Err(e) => check("files", false, e),
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
                .await;
            checks.push(match found {
                Ok(found) => {
                    let diffs = compare_tables(&manifest.tables, &found);
                    check(
                        "contents",
                        diffs.is_empty(),
                        if diffs.is_empty() {
                            "every table matches".to_string()
                        } else {
                            diffs.join("; ")
                        },
                    )
                }
                Err(e) => check("contents", false, e.to_string()),
            });
        }
        if restore_test && intact {
            checks.push(trial_restore(session, fleet, &backup, manifest).await?);
        }
    }
    let ok = checks.iter().all(|c| c.passed);
    if !ok {
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
            .map_err(|e| OpError::Host(e.to_string()))?;
    }
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
            dir: backup.location.clone().into(),
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
    Ok(match restored {
        Ok(found) => {
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
            check("restore-test", diffs.is_empty(), detail)
        }
        Err(e) => check(
            "restore-test",
            false,
            format!("the trial restore failed: {e}"),
        ),
    })
}
