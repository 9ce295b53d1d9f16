//! `upshift.lock`, beside the fleet file: the adapters the operator approved, each pinned by
//! its sha256 with the capabilities it was approved with. When the file exists, an adapter runs
//! only if its bytes are the approved ones; an updated adapter is refused (with what it now asks
//! for beyond the approval) until `upshift lock --approve` records the new set.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::capdiff::{self, CapabilitySet, Change};
use crate::fleet::AdapterRef;
use crate::grants::BoundName;
use crate::runtime::Manifest;

/// The lock file's name; it lives in the fleet file's directory.
pub const FILE_NAME: &str = "upshift.lock";

/// The format written by this host.
const FORMAT: u32 = 1;

const HEADER: &str = "# upshift.lock: the adapters this fleet approved, pinned by sha256 with the capabilities\n# each was approved with. Written by `upshift lock --approve`; review changes to it like code.\n\n";

/// The approved adapters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockFile {
    /// Format version (1).
    pub version: u32,
    /// One entry per adapter source.
    #[serde(default, rename = "adapter")]
    pub adapters: Vec<LockedAdapter>,
    /// Where the file is (not stored in it).
    #[serde(skip)]
    pub path: PathBuf,
}

/// One approved adapter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedAdapter {
    /// `bundled:<product>`, or the component's path relative to the fleet file.
    pub source: String,
    /// Product the adapter is for.
    pub product: String,
    /// The adapter's own version when approved.
    pub adapter_version: String,
    /// The approved component's sha256.
    pub sha256: String,
    /// The `upshift:adapter` version it targets.
    pub host_api: String,
    /// The approved capabilities, by binding name.
    #[serde(default)]
    pub bindings: CapabilitySet,
}

impl LockedAdapter {
    /// The entry that approves exactly this component.
    pub fn approving(source: String, digest: &str, manifest: &Manifest) -> LockedAdapter {
        LockedAdapter {
            source,
            product: manifest.product.clone(),
            adapter_version: manifest.adapter_version.clone(),
            sha256: digest.to_string(),
            host_api: manifest.host_api.clone(),
            bindings: capdiff::capabilities(&manifest.bindings),
        }
    }
}

/// Why the lock file refuses an adapter, or cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LockError {
    /// Unreadable or malformed.
    #[error("lock file {path}: {message}\nfix: {fix}")]
    Invalid {
        /// The lock file.
        path: PathBuf,
        /// What is wrong.
        message: String,
        /// What to do.
        fix: String,
    },
    /// No entry for this adapter.
    #[error(
        "adapter {adapter} ({product}) is not approved in {}\nfix: review it with `upshift adapter inspect`, then run `upshift lock --approve`",
        .lock.display()
    )]
    NotApproved {
        /// The adapter's source key.
        adapter: String,
        /// Its product.
        product: String,
        /// The lock file.
        lock: PathBuf,
    },
    /// The approval is wider than it can be: the entry approves more than the adapter asks for
    /// (approvals only ever record the request, so the file was edited), or the fleet file
    /// grants a binding access the entry does not approve.
    #[error("lock file {}, entry `{adapter}`: {problem}\nfix: {fix}", .lock.display())]
    Wider {
        /// The adapter's source key.
        adapter: String,
        /// What is wider than approved.
        problem: String,
        /// What to do.
        fix: String,
        /// The lock file.
        lock: PathBuf,
    },
    /// The adapter's bytes are not the approved ones.
    #[error("{}", changed_message(.adapter, .approved, .actual, .changes, .lock))]
    Changed {
        /// The adapter's source key.
        adapter: String,
        /// The approved sha256.
        approved: String,
        /// The sha256 now.
        actual: String,
        /// How its capabilities differ from the approved ones.
        changes: Vec<Change>,
        /// The lock file.
        lock: PathBuf,
    },
}

impl LockError {
    /// Whether the refused adapter asks for more than was approved (or the lock file or fleet
    /// file grants more than the approval).
    pub fn widens(&self) -> bool {
        matches!(self, LockError::Changed { changes, .. } if changes.iter().any(Change::widens))
            || matches!(self, LockError::Wider { .. })
    }
}

fn short(digest: &str) -> &str {
    digest.get(..12).unwrap_or(digest)
}

fn changed_message(
    source: &str,
    approved: &str,
    actual: &str,
    changes: &[Change],
    lock: &Path,
) -> String {
    let head = format!(
        "adapter {source} changed since it was approved in {} (sha256 {} approved, {} now)",
        lock.display(),
        short(approved),
        short(actual)
    );
    let body = if changes.iter().any(Change::widens) {
        let lines: Vec<String> = changes.iter().map(|c| format!("  {c}")).collect();
        format!(
            " and asks for more than was approved:\n{}",
            lines.join("\n")
        )
    } else if changes.is_empty() {
        "; it asks for the same capabilities".to_string()
    } else {
        let lines: Vec<String> = changes.iter().map(|c| format!("  {c}")).collect();
        format!("; it asks for less:\n{}", lines.join("\n"))
    };
    format!(
        "{head}{body}\nfix: review the change with `upshift adapter diff`, then approve it with `upshift lock --approve`"
    )
}

/// The key an adapter has in the lock file.
pub fn source_key(adapter: &AdapterRef, fleet_dir: &Path) -> String {
    match adapter {
        AdapterRef::Bundled(product) => format!("bundled:{product}"),
        AdapterRef::File(path) => path
            .strip_prefix(fleet_dir)
            .unwrap_or(path)
            .display()
            .to_string(),
    }
}

impl LockFile {
    /// An empty lock file at `path`.
    pub fn new(path: &Path) -> LockFile {
        LockFile {
            version: FORMAT,
            adapters: Vec::new(),
            path: path.to_path_buf(),
        }
    }

    /// The lock file beside `fleet_file`, if there is one.
    pub fn beside(fleet_file: &Path) -> Result<Option<LockFile>, LockError> {
        let path = fleet_file
            .parent()
            .unwrap_or(Path::new("."))
            .join(FILE_NAME);
        LockFile::load(&path)
    }

    /// Read and check a lock file; `None` when it does not exist.
    pub fn load(path: &Path) -> Result<Option<LockFile>, LockError> {
        let invalid = |message: String, fix: &str| LockError::Invalid {
            path: path.to_path_buf(),
            message,
            fix: fix.to_string(),
        };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(invalid(
                    format!("cannot read it: {e}"),
                    "check its permissions",
                ));
            }
        };
        let mut lock: LockFile = toml::from_str(&text).map_err(|e| {
            invalid(
                e.to_string().trim_end().to_string(),
                "restore it from version control, or delete it and run `upshift lock --approve` to approve the adapters anew",
            )
        })?;
        if lock.version != FORMAT {
            return Err(invalid(
                format!("format version {} is not {FORMAT}", lock.version),
                "use the Upshift release that wrote it, or re-approve with `upshift lock --approve`",
            ));
        }
        for (i, a) in lock.adapters.iter().enumerate() {
            if lock.adapters[..i].iter().any(|o| o.source == a.source) {
                return Err(invalid(
                    format!("adapter {} is listed twice", a.source),
                    "keep one entry per adapter",
                ));
            }
        }
        lock.path = path.to_path_buf();
        Ok(Some(lock))
    }

    fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    /// The entry for an adapter.
    pub fn entry(&self, adapter: &AdapterRef) -> Option<&LockedAdapter> {
        let key = source_key(adapter, self.dir());
        self.adapters.iter().find(|a| a.source == key)
    }

    /// Allow the adapter only if its bytes are the approved ones.
    pub fn admit(
        &self,
        adapter: &AdapterRef,
        digest: &str,
        manifest: &Manifest,
    ) -> Result<(), LockError> {
        let source = source_key(adapter, self.dir());
        let Some(entry) = self.adapters.iter().find(|a| a.source == source) else {
            return Err(LockError::NotApproved {
                adapter: source,
                product: manifest.product.clone(),
                lock: self.path.clone(),
            });
        };
        if entry.sha256 == digest {
            return Ok(());
        }
        Err(LockError::Changed {
            adapter: source,
            approved: entry.sha256.clone(),
            actual: digest.to_string(),
            changes: capdiff::diff(&entry.bindings, &capdiff::capabilities(&manifest.bindings)),
            lock: self.path.clone(),
        })
    }

    /// The capabilities approved for `adapter` (whose bytes [`LockFile::admit`] accepted): the
    /// ceiling of its grants, so an entry narrowed by hand narrows what the adapter may do.
    /// Refused when the entry approves more than `manifest` asks for, or when the fleet file's
    /// `access` of a binding in `bound` lists access the entry does not approve.
    pub fn ceiling(
        &self,
        adapter: &AdapterRef,
        manifest: &Manifest,
        instance: &str,
        bound: &[BoundName],
    ) -> Result<&CapabilitySet, LockError> {
        let source = source_key(adapter, self.dir());
        let Some(entry) = self.adapters.iter().find(|a| a.source == source) else {
            return Err(LockError::NotApproved {
                adapter: source,
                product: manifest.product.clone(),
                lock: self.path.clone(),
            });
        };
        let wider = |problem: String, fix: String| LockError::Wider {
            adapter: source.clone(),
            problem,
            fix,
            lock: self.path.clone(),
        };
        let requested = capdiff::capabilities(&manifest.bindings);
        let beyond: Vec<String> = capdiff::diff(&requested, &entry.bindings)
            .iter()
            .filter(|c| c.widens())
            .map(|c| format!("  {c}"))
            .collect();
        if !beyond.is_empty() {
            return Err(wider(
                format!(
                    "it approves more than the adapter asks for (an approval records only what the adapter asks for, so the file was edited):\n{}",
                    beyond.join("\n")
                ),
                "review the adapter with `upshift adapter inspect`, then run `upshift lock --approve` to record what it asks for (or restore the lock file from version control)".into(),
            ));
        }
        for b in bound {
            let Some(listed) = &b.access else { continue };
            let approved = entry
                .bindings
                .get(&b.name)
                .filter(|c| c.kind == b.kind)
                .map(|c| c.access.clone())
                .unwrap_or_default();
            if let Some(extra) = listed.iter().find(|a| !approved.contains(a)) {
                let approved = if approved.is_empty() {
                    "nothing".to_string()
                } else {
                    approved
                        .iter()
                        .map(|a| a.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                return Err(wider(
                    format!(
                        "instance `{instance}` grants access `{extra}` on [instance.{kind}.{name}] in the fleet file, which the lock file does not approve (it approves: {approved})",
                        kind = b.kind,
                        name = b.name
                    ),
                    format!(
                        "remove `{extra}` from `access` in [instance.{kind}.{name}] of the fleet file, or approve it: add it to the entry's access (or delete the entry and run `upshift lock --approve`, which records what the adapter asks for)",
                        kind = b.kind,
                        name = b.name
                    ),
                ));
            }
        }
        Ok(&entry.bindings)
    }

    /// Approve `entry`, replacing any earlier approval of the same source.
    pub fn approve(&mut self, entry: LockedAdapter) {
        match self.adapters.iter_mut().find(|a| a.source == entry.source) {
            Some(slot) => *slot = entry,
            None => self.adapters.push(entry),
        }
        self.adapters.sort_by(|a, b| a.source.cmp(&b.source));
    }

    /// Write the file atomically (a temporary file renamed over it).
    pub fn save(&self) -> Result<(), LockError> {
        let fail = |message: String| LockError::Invalid {
            path: self.path.clone(),
            message,
            fix: "check that the fleet file's directory is writable".into(),
        };
        let body = toml::to_string(self).map_err(|e| fail(format!("cannot encode it: {e}")))?;
        let tmp = self.path.with_extension("lock.tmp");
        std::fs::write(&tmp, format!("{HEADER}{body}"))
            .map_err(|e| fail(format!("cannot write {}: {e}", tmp.display())))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| fail(format!("cannot replace it: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grants::{Access, BindingKind, BindingRequest};

    fn manifest(access: &[Access]) -> Manifest {
        Manifest {
            product: "demo".into(),
            adapter_version: "1.0.0".into(),
            supported_versions: ">=1.0.0".into(),
            catalog: None,
            host_api: "0.1.0".into(),
            bindings: vec![BindingRequest {
                name: "meta".into(),
                kind: BindingKind::Db,
                access: access.to_vec(),
                purpose: "metadata".into(),
                optional: false,
            }],
        }
    }

    #[test]
    fn pins_digests_and_names_what_an_update_asks_for() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let adapter = AdapterRef::File(dir.path().join("adapters/demo.wasm"));
        let mut lock = LockFile::new(&path);
        lock.approve(LockedAdapter::approving(
            source_key(&adapter, dir.path()),
            "aaaa",
            &manifest(&[Access::Read]),
        ));
        lock.save().unwrap();
        let lock = LockFile::load(&path).unwrap().unwrap();
        assert_eq!(lock.adapters[0].source, "adapters/demo.wasm");
        assert!(
            std::fs::read_to_string(&path)
                .unwrap()
                .starts_with("# upshift.lock")
        );

        assert!(
            lock.admit(&adapter, "aaaa", &manifest(&[Access::Read]))
                .is_ok()
        );
        let same = lock
            .admit(&adapter, "bbbb", &manifest(&[Access::Read]))
            .unwrap_err();
        assert!(!same.widens());
        assert!(same.to_string().contains("same capabilities"), "{same}");
        let wider = lock
            .admit(&adapter, "cccc", &manifest(&[Access::Read, Access::Ddl]))
            .unwrap_err();
        assert!(wider.widens());
        assert!(
            wider.to_string().contains("+ meta (db): adds ddl"),
            "{wider}"
        );
        let other = AdapterRef::Bundled("bytebase".into());
        let err = lock.admit(&other, "aaaa", &manifest(&[])).unwrap_err();
        assert!(err.to_string().contains("bundled:bytebase"), "{err}");
    }

    #[test]
    fn damaged_lock_files_are_refused_with_a_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        assert!(LockFile::load(&path).unwrap().is_none());
        std::fs::write(&path, "version = 1\n[[adapter]]\nsource = 1\n").unwrap();
        let err = LockFile::load(&path).unwrap_err().to_string();
        assert!(err.contains("fix:"), "{err}");
        std::fs::write(&path, "version = 7\n").unwrap();
        let err = LockFile::load(&path).unwrap_err().to_string();
        assert!(err.contains("format version 7"), "{err}");
    }
}
