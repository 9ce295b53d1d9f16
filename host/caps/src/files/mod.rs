//! The files capability: [`Files`] owns the bound directories and reaches them only through the
//! guard. The directory backend (cap-std) is in [`dir`].

pub mod dir;

use std::path::Path;
use std::sync::Arc;

use crate::CapError;
use crate::guard::{Bound, Guard};
use crate::operation::Operation;
use upshift_model::grants::{Access, BindingKind};

pub use dir::{Entry, FilesBackend};

/// The files capability: the bound directories, reached only through the guard.
pub struct Files {
    bound: Bound<FilesBackend>,
}

impl Files {
    pub(crate) fn new(guard: Arc<Guard>) -> Files {
        Files {
            bound: Bound::new(guard, BindingKind::Files),
        }
    }

    pub(crate) fn bind(&mut self, name: &str, backend: FilesBackend) {
        self.bound.bind(name, backend);
    }

    /// A call on a bound directory; its file-system work runs on a blocking thread.
    async fn guarded<T>(
        &self,
        binding: &str,
        access: Access,
        operation: Operation,
        path: &str,
        f: impl FnOnce(FilesBackend) -> Result<(T, u64), CapError> + Send + 'static,
    ) -> Result<T, CapError>
    where
        T: Send + 'static,
    {
        let detail = Some(path.to_string());
        self.bound
            .call(binding, &[access], operation, detail, async |b| {
                let backend = b.clone();
                crate::blocking(move || f(backend)).await
            })
            .await
    }

    /// `files.read`.
    /// Values the file assigns in dotenv syntax under secret names are registered as secrets
    /// as it is read, so everything written after is masked (`crate::secrets`).
    pub async fn read(&self, binding: &str, path: &str) -> Result<Vec<u8>, CapError> {
        let owned = path.to_string();
        let bytes = self
            .guarded(binding, Access::Read, Operation::Read, path, move |b| {
                b.read(&owned)
            })
            .await?;
        self.bound.secrets().add_dotenv(&bytes);
        Ok(bytes)
    }

    /// `files.write`.
    pub async fn write(
        &self,
        binding: &str,
        path: &str,
        contents: Vec<u8>,
    ) -> Result<(), CapError> {
        let owned = path.to_string();
        self.guarded(binding, Access::Write, Operation::Write, path, move |b| {
            b.write(&owned, &contents)
        })
        .await
    }

    /// `files.list-dir`.
    pub async fn list_dir(&self, binding: &str, path: &str) -> Result<Vec<Entry>, CapError> {
        let owned = path.to_string();
        self.guarded(binding, Access::Read, Operation::ListDir, path, move |b| {
            b.list(&owned)
        })
        .await
    }

    /// `files.exists`.
    pub async fn exists(&self, binding: &str, path: &str) -> Result<bool, CapError> {
        let owned = path.to_string();
        self.guarded(binding, Access::Read, Operation::Exists, path, move |b| {
            b.exists(&owned)
        })
        .await
    }

    /// The file `service.load-image` streams (needs `read` on this binding).
    pub(crate) async fn open_for_load_image(
        &self,
        binding: &str,
        path: &str,
    ) -> Result<std::fs::File, CapError> {
        let owned = path.to_string();
        self.guarded(
            binding,
            Access::Read,
            Operation::LoadImage,
            path,
            move |b| b.open(&owned),
        )
        .await
    }

    /// Host: snapshot the bound directory with `f`, given its path (needs `snapshot`).
    pub async fn snapshot<T>(
        &self,
        binding: &str,
        detail: &str,
        f: impl AsyncFnOnce(&Path) -> Result<T, CapError>,
    ) -> Result<T, CapError> {
        self.on_root(binding, Operation::Snapshot, detail, f).await
    }

    /// Host: restore over the bound directory with `f`, given its path (needs `restore`).
    pub async fn restore<T>(
        &self,
        binding: &str,
        detail: &str,
        f: impl AsyncFnOnce(&Path) -> Result<T, CapError>,
    ) -> Result<T, CapError> {
        self.on_root(binding, Operation::Restore, detail, f).await
    }

    /// Host preflight: the bytes of the bound directory's files, what a snapshot copies (needs
    /// `snapshot`; audited as `preflight`). Symbolic links are not followed.
    pub async fn size(&self, binding: &str, detail: &str) -> Result<u64, CapError> {
        self.bound
            .call(
                binding,
                &[Access::Snapshot],
                Operation::Preflight,
                Some(detail.to_string()),
                async |b| {
                    let root = b.root().to_path_buf();
                    let bytes = crate::blocking(move || {
                        tree_size(&root).map_err(|e| {
                            CapError::Failed(format!("cannot size {}: {e}", root.display()))
                        })
                    })
                    .await?;
                    Ok((bytes, 8))
                },
            )
            .await
    }

    /// A host operation on the bound directory's path.
    async fn on_root<T>(
        &self,
        binding: &str,
        operation: Operation,
        detail: &str,
        f: impl AsyncFnOnce(&Path) -> Result<T, CapError>,
    ) -> Result<T, CapError> {
        self.bound
            .host(binding, operation, detail, async |b| f(b.root()).await)
            .await
    }
}

/// The bytes of the regular files under `path` (symbolic links not followed).
fn tree_size(path: &Path) -> std::io::Result<u64> {
    let meta = std::fs::symlink_metadata(path)?;
    if !meta.is_dir() {
        return Ok(if meta.is_file() { meta.len() } else { 0 });
    }
    let mut total = 0;
    for entry in std::fs::read_dir(path)? {
        total += tree_size(&entry?.path())?;
    }
    Ok(total)
}

/// The bytes free to this user on the file system holding `path` (or the nearest existing
/// directory above it).
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let existing = path
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or_else(|| Path::new("/"));
    let stat = nix::sys::statvfs::statvfs(existing).map_err(std::io::Error::from)?;
    Ok(stat.blocks_available().saturating_mul(stat.fragment_size()))
}
