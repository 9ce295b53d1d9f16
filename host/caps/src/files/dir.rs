//! The files capability's backend: a directory opened once with cap-std, so paths given by the
//! adapter cannot escape it by `..`, absolute paths or symlinks.

use std::io::Write;
use std::path::{Path, PathBuf};

use cap_std::ambient_authority;
use cap_std::fs::Dir;

use crate::CapError;
use crate::limits::MAX_RESULT_BYTES;

/// An entry of a listed directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// File name.
    pub name: String,
    /// Whether it is a directory.
    pub is_dir: bool,
    /// Size in bytes.
    pub size: u64,
}

/// One bound directory.
#[derive(Debug, Clone)]
pub struct FilesBackend {
    root: PathBuf,
}

fn io(context: &str, path: &str, e: std::io::Error) -> CapError {
    if e.kind() == std::io::ErrorKind::PermissionDenied
        || e.to_string().contains("outside")
        || e.raw_os_error() == Some(nix::libc::EXDEV)
    {
        return CapError::Denied(format!(
            "{context} `{path}`: the path leaves the bound directory"
        ));
    }
    CapError::Failed(format!("{context} `{path}`: {e}"))
}

fn relative(path: &str) -> Result<&Path, CapError> {
    if path.is_empty() {
        return Ok(Path::new("."));
    }
    if Path::new(path).is_absolute() {
        return Err(CapError::Denied(format!(
            "`{path}` is absolute; paths are relative to the bound directory"
        )));
    }
    Ok(Path::new(path))
}

impl FilesBackend {
    /// A backend for `root` (opened on each call, so a directory created later is seen).
    pub fn new(root: &Path) -> FilesBackend {
        FilesBackend {
            root: root.to_path_buf(),
        }
    }

    /// The bound directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn dir(&self) -> Result<Dir, CapError> {
        Dir::open_ambient_dir(&self.root, ambient_authority()).map_err(|e| {
            CapError::Failed(format!(
                "cannot open bound directory {}: {e}",
                self.root.display()
            ))
        })
    }

    /// Read a whole file.
    pub fn read(&self, path: &str) -> Result<(Vec<u8>, u64), CapError> {
        let dir = self.dir()?;
        let rel = relative(path)?;
        let meta = dir.metadata(rel).map_err(|e| io("cannot read", path, e))?;
        if meta.len() > MAX_RESULT_BYTES as u64 {
            return Err(CapError::Invalid(format!(
                "`{path}` is {} bytes, more than the limit of {MAX_RESULT_BYTES}",
                meta.len()
            )));
        }
        let bytes = dir.read(rel).map_err(|e| io("cannot read", path, e))?;
        let n = bytes.len() as u64;
        Ok((bytes, n))
    }

    /// Write a whole file atomically (write beside, then rename).
    pub fn write(&self, path: &str, contents: &[u8]) -> Result<((), u64), CapError> {
        let dir = self.dir()?;
        let rel = relative(path)?;
        let name = rel
            .file_name()
            .ok_or_else(|| CapError::Invalid(format!("`{path}` names no file")))?;
        let tmp = rel.with_file_name(format!(".{}.upshift-tmp", name.to_string_lossy()));
        let mut file = dir.create(&tmp).map_err(|e| io("cannot write", path, e))?;
        file.write_all(contents)
            .map_err(|e| io("cannot write", path, e))?;
        file.sync_all().map_err(|e| io("cannot write", path, e))?;
        dir.rename(&tmp, &dir, rel)
            .map_err(|e| io("cannot write", path, e))?;
        Ok(((), contents.len() as u64))
    }

    /// List a directory.
    pub fn list(&self, path: &str) -> Result<(Vec<Entry>, u64), CapError> {
        let dir = self.dir()?;
        let rel = relative(path)?;
        let sub = if rel == Path::new(".") {
            dir
        } else {
            dir.open_dir(rel).map_err(|e| io("cannot list", path, e))?
        };
        let mut out = Vec::new();
        for entry in sub.entries().map_err(|e| io("cannot list", path, e))? {
            let entry = entry.map_err(|e| io("cannot list", path, e))?;
            let meta = entry.metadata().map_err(|e| io("cannot list", path, e))?;
            out.push(Entry {
                name: entry.file_name().to_string_lossy().into_owned(),
                is_dir: meta.is_dir(),
                size: meta.len(),
            });
            if out.len() > 100_000 {
                return Err(CapError::Invalid(format!(
                    "`{path}` has more than 100000 entries"
                )));
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        let bytes = out.iter().map(|e| e.name.len() as u64 + 9).sum();
        Ok((out, bytes))
    }

    /// Open a file for reading (inside the bound directory), for streaming it elsewhere.
    pub fn open(&self, path: &str) -> Result<(std::fs::File, u64), CapError> {
        let dir = self.dir()?;
        let rel = relative(path)?;
        let file = dir
            .open(rel)
            .map_err(|e| io("cannot open", path, e))?
            .into_std();
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok((file, size))
    }

    /// Whether a path exists (inside the bound directory).
    pub fn exists(&self, path: &str) -> Result<(bool, u64), CapError> {
        let dir = self.dir()?;
        let rel = relative(path)?;
        match dir.symlink_metadata(rel) {
            Ok(_) => Ok((true, 1)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((false, 1)),
            Err(e) => Err(io("cannot check", path, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_are_denied() {
        let outer = tempfile::tempdir().expect("tempdir");
        let root = outer.path().join("root");
        std::fs::create_dir(&root).expect("mkdir");
        std::fs::write(outer.path().join("secret"), b"s").expect("write");
        std::os::unix::fs::symlink(outer.path().join("secret"), root.join("link"))
            .expect("symlink");
        let files = FilesBackend::new(&root);
        files.write("ok.txt", b"hello").expect("write inside");
        assert_eq!(files.read("ok.txt").expect("read").0, b"hello");
        for bad in ["../secret", "/etc/passwd", "link"] {
            let err = files.read(bad).expect_err(bad);
            assert!(matches!(err, CapError::Denied(_)), "{bad}: {err:?}");
        }
        assert!(files.write("../escape", b"x").is_err());
        assert!(!outer.path().join("escape").exists());
        let names: Vec<_> = files
            .list("")
            .expect("list")
            .0
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, vec!["link", "ok.txt"]);
    }
}
