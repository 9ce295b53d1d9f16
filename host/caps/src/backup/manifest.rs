//! Verifiable database backups (PostgreSQL and MySQL alike): a manifest that says what was backed up, from which version,
//! with which tools, every file's size and sha256, and every table's row count and checksum —
//! taken from the same snapshot as the dump, so a trial restore can be compared table by table.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::CapError;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Name of the manifest file in a backup's directory.
pub const MANIFEST: &str = "manifest.json";

/// Row count and content checksum of one table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableFingerprint {
    /// Rows.
    pub rows: i64,
    /// A content checksum that does not depend on row order; its prefix names the method
    /// (`db::pg::RowChecksum::of`). PostgreSQL: `hashsum:N` (`RowChecksum::HashSum`), or
    /// `md5sum:HI:LO` for a table PostgreSQL cannot hash (`RowChecksum::Md5Sum`); backups taken
    /// before both have a plain md5 (`RowChecksum::SortedMd5`). MySQL: `crc32sum:N`.
    pub checksum: String,
}

/// One file of a dump.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path relative to the dump directory.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// sha256.
    pub sha256: String,
}

/// What a backup holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// `pg-directory` (a `pg_dump -Fd` directory) or `pg-clone` (a template clone).
    pub format: String,
    /// The database it was taken from.
    pub database: String,
    /// Product version the data was at.
    pub product_version: String,
    /// `SELECT version()` of the server.
    pub server_version: String,
    /// `pg_dump --version`, for dumps.
    pub tool_version: Option<String>,
    /// Parallel jobs used.
    pub jobs: u32,
    /// RFC 3339.
    pub created_at: String,
    /// The dump's files (empty for clones).
    pub files: Vec<FileEntry>,
    /// Every table, `schema.table`.
    pub tables: BTreeMap<String, TableFingerprint>,
}

impl Manifest {
    /// Total size of the dump's files.
    pub fn size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// Write it to `dir/manifest.json`; returns its sha256.
    pub fn write(&self, dir: &Path) -> Result<String, CapError> {
        let text = serde_json::to_vec_pretty(self)
            .map_err(|e| CapError::Failed(format!("cannot encode the manifest: {e}")))?;
        crate::private::create_dir_all(dir)
            .map_err(|e| CapError::Failed(format!("cannot create {}: {e}", dir.display())))?;
        crate::private::write(&dir.join(MANIFEST), &text).map_err(|e| {
            CapError::Failed(format!(
                "cannot write the manifest in {}: {e}",
                dir.display()
            ))
        })?;
        Ok(hex::encode(Sha256::digest(&text)))
    }

    /// Read `dir/manifest.json`, checking it against the sha256 recorded in the catalog.
    pub fn read(dir: &Path, recorded_sha256: &str) -> Result<Manifest, BackupCheckError> {
        let path = dir.join(MANIFEST);
        let bytes = std::fs::read(&path).map_err(|source| BackupCheckError::Unreadable {
            path: path.clone(),
            source,
        })?;
        let sha = hex::encode(Sha256::digest(&bytes));
        if sha != recorded_sha256 {
            return Err(BackupCheckError::Damaged(format!(
                "{} does not match the sha256 recorded when the backup was taken",
                path.display()
            )));
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            BackupCheckError::Damaged(format!("{} does not parse: {e}", path.display()))
        })
    }
}

/// Why a backup's files could not be confirmed: either they were read and differ from what was
/// recorded (the backup is damaged), or a path could not be read at all (a missing or unmounted
/// directory, a permission or I/O error), which says nothing about the backup itself.
#[derive(Debug, thiserror::Error)]
pub enum BackupCheckError {
    /// The bytes were read and do not match the catalog or the manifest.
    #[error("{0}")]
    Damaged(String),
    /// A path could not be read; the backup may well be intact where it really is.
    #[error("cannot read {}: {source}", path.display())]
    Unreadable {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Every file under `dir` (except the manifest) with its size and sha256, sorted by path.
pub fn hash_files(dir: &Path) -> Result<Vec<FileEntry>, CapError> {
    hash_tree(dir).map_err(|e| CapError::Failed(format!("cannot hash {e}")))
}

/// [`hash_files`], naming the path that could not be read.
fn hash_tree(dir: &Path) -> Result<Vec<FileEntry>, BackupCheckError> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<FileEntry>) -> Result<(), BackupCheckError> {
        let unreadable = |path: &Path| {
            let path = path.to_path_buf();
            move |source| BackupCheckError::Unreadable { path, source }
        };
        for entry in std::fs::read_dir(dir).map_err(unreadable(dir))? {
            let entry = entry.map_err(unreadable(dir))?;
            let path = entry.path();
            if entry.file_type().map_err(unreadable(&path))?.is_dir() {
                walk(root, &path, out)?;
                continue;
            }
            let rel = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .to_string_lossy()
                .into_owned();
            if rel == MANIFEST {
                continue;
            }
            let mut hasher = Sha256::new();
            let mut file = std::fs::File::open(&path).map_err(unreadable(&path))?;
            let size = std::io::copy(&mut file, &mut hasher).map_err(unreadable(&path))?;
            out.push(FileEntry {
                path: rel,
                size,
                sha256: hex::encode(hasher.finalize()),
            });
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out)?;
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// Compare the files under `dir` with the manifest: the first missing, changed or extra file.
/// A file the manifest lists that is not there is unreadable, not damaged: the directory may be
/// a wrong or half-mounted path, so only bytes that were read and differ condemn a backup.
pub fn verify_files(dir: &Path, manifest: &Manifest) -> Result<(), BackupCheckError> {
    let found = hash_tree(dir)?;
    for want in &manifest.files {
        match found.iter().find(|f| f.path == want.path) {
            None => {
                return Err(BackupCheckError::Unreadable {
                    path: dir.join(&want.path),
                    source: std::io::Error::from(std::io::ErrorKind::NotFound),
                });
            }
            Some(f) if f.size != want.size || f.sha256 != want.sha256 => {
                return Err(BackupCheckError::Damaged(format!(
                    "{} has changed since the backup was taken (sha256 {} ≠ recorded {})",
                    want.path,
                    f.sha256.get(..12).unwrap_or(&f.sha256),
                    want.sha256.get(..12).unwrap_or(&want.sha256)
                )));
            }
            Some(_) => {}
        }
    }
    if let Some(extra) = found
        .iter()
        .find(|f| !manifest.files.iter().any(|w| w.path == f.path))
    {
        return Err(BackupCheckError::Damaged(format!(
            "{} is not part of the backup",
            extra.path
        )));
    }
    Ok(())
}

/// Compare restored tables with the manifest: one line per difference.
pub fn compare_tables(
    expected: &BTreeMap<String, TableFingerprint>,
    found: &BTreeMap<String, TableFingerprint>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (name, want) in expected {
        match found.get(name) {
            None => out.push(format!("table {name} is missing")),
            Some(got) if got.rows != want.rows => out.push(format!(
                "table {name} has {} rows, expected {}",
                got.rows, want.rows
            )),
            Some(got) if got.checksum != want.checksum => {
                out.push(format!("table {name} has different contents"))
            }
            Some(_) => {}
        }
    }
    for name in found.keys().filter(|n| !expected.contains_key(*n)) {
        out.push(format!("table {name} was not in the backup"));
    }
    out
}

/// What a dump recorded before it was sealed.
pub struct DumpFacts {
    /// `pg-directory` or `mysql-dump-gz`.
    pub format: &'static str,
    /// The database dumped.
    pub database: String,
    /// Product version the data was at.
    pub product_version: String,
    /// The server's version.
    pub server_version: String,
    /// The dump tool, for `--version`.
    pub tool: PathBuf,
    /// Parallel jobs used.
    pub jobs: u32,
    /// Every table's fingerprint.
    pub tables: BTreeMap<String, TableFingerprint>,
}

/// Seal a finished dump in `partial`: hash its files, write the manifest, and only then give
/// the directory its final name `dir`. Returns the manifest and its sha256.
pub async fn seal(
    partial: &Path,
    dir: &Path,
    facts: DumpFacts,
) -> Result<(Manifest, String), CapError> {
    let tool_version = tokio::process::Command::new(&facts.tool)
        .arg("--version")
        .output()
        .await
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let hashed = partial.to_path_buf();
    let files = tokio::task::spawn_blocking(move || hash_files(&hashed))
        .await
        .map_err(|e| CapError::Failed(format!("hashing the dump failed: {e}")))??;
    let manifest = Manifest {
        format: facts.format.into(),
        database: facts.database,
        product_version: facts.product_version,
        server_version: facts.server_version,
        tool_version,
        jobs: facts.jobs,
        created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        files,
        tables: facts.tables,
    };
    let sha = manifest.write(partial)?;
    // The dump tool wrote under the process umask: owner only, like the rest of the data
    // directory.
    let tightened = partial.to_path_buf();
    tokio::task::spawn_blocking(move || crate::private::tighten(&tightened))
        .await
        .map_err(|e| CapError::Failed(format!("protecting the dump failed: {e}")))?
        .map_err(|e| CapError::Failed(format!("cannot make the dump private: {e}")))?;
    tokio::fs::rename(partial, dir)
        .await
        .map_err(|e| CapError::Failed(format!("cannot finish the dump directory: {e}")))?;
    Ok((manifest, sha))
}

/// Where a backup's files live.
pub fn backup_dir(backups: &Path, id: &str) -> PathBuf {
    backups.join(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_verification_names_the_damage() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("toc.dat"), b"table of contents").expect("write");
        std::fs::write(dir.path().join("3001.dat.gz"), b"rows").expect("write");
        let manifest = Manifest {
            format: "pg-directory".into(),
            database: "meta".into(),
            product_version: "3.10.0".into(),
            server_version: "PostgreSQL 15".into(),
            tool_version: None,
            jobs: 2,
            created_at: "now".into(),
            files: hash_files(dir.path()).expect("hash"),
            tables: BTreeMap::new(),
        };
        let sha = manifest.write(dir.path()).expect("write");
        assert_eq!(Manifest::read(dir.path(), &sha).expect("read"), manifest);
        assert!(verify_files(dir.path(), &manifest).is_ok());
        std::fs::write(dir.path().join("3001.dat.gz"), b"rowz").expect("corrupt");
        match verify_files(dir.path(), &manifest) {
            Err(BackupCheckError::Damaged(why)) => assert!(why.contains("3001.dat.gz has changed")),
            other => panic!("a changed file is damage: {other:?}"),
        }
        std::fs::remove_file(dir.path().join("3001.dat.gz")).expect("remove");
        match verify_files(dir.path(), &manifest) {
            Err(BackupCheckError::Unreadable { path, .. }) => {
                assert!(path.ends_with("3001.dat.gz"), "{}", path.display())
            }
            other => panic!("a missing file is unreadable, not damage: {other:?}"),
        }
        std::fs::write(dir.path().join("3001.dat.gz"), b"rows").expect("repair");
        std::fs::write(dir.path().join("extra"), b"x").expect("extra");
        assert!(matches!(
            verify_files(dir.path(), &manifest),
            Err(BackupCheckError::Damaged(_))
        ));
        std::fs::remove_file(dir.path().join("extra")).expect("remove");
        assert!(matches!(
            Manifest::read(&dir.path().join("gone"), &sha),
            Err(BackupCheckError::Unreadable { .. })
        ));
        assert!(Manifest::read(dir.path(), "0".repeat(64).as_str()).is_err());
    }
}
