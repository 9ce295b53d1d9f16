//! The files capability's backend: a directory opened with cap-std, so paths given by the
//! adapter cannot escape it by `..`, absolute paths or symlinks — the OS refuses them (cap-std
//! resolves every path beneath the directory handle, `openat2(RESOLVE_BENEATH)` on Linux).
//!
//! Only regular files and directories are served. A file is opened without following a final
//! symlink and without blocking (`O_NOFOLLOW | O_NONBLOCK`), and the *opened handle* is checked to
//! be a regular file, so a FIFO, socket or device — or a file swapped for one after it was looked
//! at — is refused instead of blocking the host. A read takes at most the limit + 1 bytes from
//! that handle, so a file that grows after any size check is still capped.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use cap_fs_ext::{DirExt, FollowSymlinks, OpenOptionsFollowExt};
use cap_std::ambient_authority;
use cap_std::fs::{Dir, File, FileType, OpenOptions, OpenOptionsExt};

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
    // O_NOFOLLOW on a symlink.
    if e.raw_os_error() == Some(nix::libc::ELOOP) {
        return CapError::Denied(format!(
            "{context} `{path}`: it is a symbolic link; only regular files and directories are served"
        ));
    }
    // Opening a socket.
    if e.raw_os_error() == Some(nix::libc::ENXIO) {
        return not_regular(context, path, "a socket or device");
    }
    CapError::Failed(format!("{context} `{path}`: {e}"))
}

fn not_regular(context: &str, path: &str, what: &str) -> CapError {
    CapError::Denied(format!(
        "{context} `{path}`: it is {what}; only regular files and directories are served"
    ))
}

/// What a file type is, in a refusal.
fn kind(t: FileType) -> &'static str {
    use cap_std::fs::FileTypeExt;
    if t.is_dir() {
        "a directory"
    } else if t.is_symlink() {
        "a symbolic link"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_block_device() || t.is_char_device() {
        "a device"
    } else if t.is_file() {
        "a regular file"
    } else {
        "not a regular file"
    }
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

/// Options that never follow a final symlink and never block on opening (a FIFO, a device).
pub(crate) fn no_follow_no_block() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.follow(FollowSymlinks::No);
    options.custom_flags(nix::libc::O_NONBLOCK);
    options
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

    /// Open a regular file for reading: refused before opening if it is anything else, opened
    /// without following a final symlink and without blocking, and its handle checked again.
    fn open_regular(&self, context: &str, path: &str) -> Result<File, CapError> {
        let dir = self.dir()?;
        let rel = relative(path)?;
        let seen = dir
            .symlink_metadata(rel)
            .map_err(|e| io(context, path, e))?;
        if !seen.is_file() {
            return Err(not_regular(context, path, kind(seen.file_type())));
        }
        let mut options = no_follow_no_block();
        options.read(true);
        let file = dir
            .open_with(rel, &options)
            .map_err(|e| io(context, path, e))?;
        let opened = file.metadata().map_err(|e| io(context, path, e))?;
        if !opened.is_file() {
            return Err(not_regular(context, path, kind(opened.file_type())));
        }
        Ok(file)
    }

    /// Read a whole file: at most the limit, taken from the opened handle (the limit + 1 bytes
    /// are read to tell a file at the limit from a longer one).
    pub fn read(&self, path: &str) -> Result<(Vec<u8>, u64), CapError> {
        let file = self.open_regular("cannot read", path)?;
        let mut bytes = Vec::new();
        file.take(MAX_RESULT_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| io("cannot read", path, e))?;
        if bytes.len() > MAX_RESULT_BYTES {
            return Err(CapError::Invalid(format!(
                "`{path}` is more than the limit of {MAX_RESULT_BYTES} bytes"
            )));
        }
        let n = bytes.len() as u64;
        Ok((bytes, n))
    }

    /// Write a whole file atomically (written beside as a new file, then renamed over it). Only
    /// a regular file, or nothing, may be replaced.
    pub fn write(&self, path: &str, contents: &[u8]) -> Result<((), u64), CapError> {
        let dir = self.dir()?;
        let rel = relative(path)?;
        let name = rel
            .file_name()
            .ok_or_else(|| CapError::Invalid(format!("`{path}` names no file")))?;
        match dir.symlink_metadata(rel) {
            Ok(m) if !m.is_file() => {
                return Err(not_regular("cannot write", path, kind(m.file_type())));
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("cannot write", path, e)),
        }
        let tmp = rel.with_file_name(format!(".{}.upshift-tmp", name.to_string_lossy()));
        // A leftover (or planted) temporary file is removed, never opened.
        match dir.remove_file_or_symlink(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("cannot write", path, e)),
        }
        let mut options = no_follow_no_block();
        options.write(true).create_new(true);
        let mut file = dir
            .open_with(&tmp, &options)
            .map_err(|e| io("cannot write", path, e))?;
        file.write_all(contents)
            .map_err(|e| io("cannot write", path, e))?;
        file.sync_all().map_err(|e| io("cannot write", path, e))?;
        dir.rename(&tmp, &dir, rel)
            .map_err(|e| io("cannot write", path, e))?;
        Ok(((), contents.len() as u64))
    }

    /// List a directory (a symlink to one is refused). Entries are looked at, never opened.
    pub fn list(&self, path: &str) -> Result<(Vec<Entry>, u64), CapError> {
        let dir = self.dir()?;
        let rel = relative(path)?;
        let sub = if rel == Path::new(".") {
            dir
        } else {
            let seen = dir
                .symlink_metadata(rel)
                .map_err(|e| io("cannot list", path, e))?;
            if !seen.is_dir() {
                return Err(CapError::Denied(format!(
                    "cannot list `{path}`: it is {}, not a directory",
                    kind(seen.file_type())
                )));
            }
            dir.open_dir_nofollow(rel)
                .map_err(|e| io("cannot list", path, e))?
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

    /// Open a regular file for reading (inside the bound directory), for streaming it elsewhere.
    pub fn open(&self, path: &str) -> Result<(std::fs::File, u64), CapError> {
        let file = self.open_regular("cannot open", path)?.into_std();
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok((file, size))
    }

    /// Whether a path exists (inside the bound directory); nothing is opened.
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

    /// Anything but a regular file is refused at once, by every operation that opens files.
    #[test]
    fn only_regular_files_are_opened() {
        use std::os::unix::net::UnixListener;
        let outer = tempfile::tempdir().expect("tempdir");
        let root = outer.path().join("root");
        std::fs::create_dir(&root).expect("mkdir");
        nix::unistd::mkfifo(&root.join("fifo"), nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        let _socket = UnixListener::bind(root.join("socket")).expect("socket");
        std::os::unix::fs::symlink("/dev/zero", root.join("zero")).expect("symlink");
        std::os::unix::fs::symlink("fifo", root.join("to-fifo")).expect("symlink");
        std::fs::create_dir(root.join("dir")).expect("mkdir");
        let files = FilesBackend::new(&root);
        let started = std::time::Instant::now();
        for bad in ["fifo", "socket", "zero", "to-fifo", "dir"] {
            let err = files.read(bad).expect_err(bad);
            assert!(matches!(err, CapError::Denied(_)), "{bad}: {err:?}");
            let err = files.open(bad).expect_err(bad);
            assert!(matches!(err, CapError::Denied(_)), "{bad}: {err:?}");
            let err = files.write(bad, b"x").expect_err(bad);
            assert!(matches!(err, CapError::Denied(_)), "{bad}: {err:?}");
        }
        // A planted FIFO where the temporary file goes is removed, not opened.
        nix::unistd::mkfifo(&root.join(".ok.upshift-tmp"), nix::sys::stat::Mode::S_IRWXU)
            .expect("mkfifo");
        files.write("ok", b"fine").expect("write");
        assert_eq!(files.read("ok").expect("read").0, b"fine");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        assert!(files.list("dir").is_ok());
        std::os::unix::fs::symlink("dir", root.join("to-dir")).expect("symlink");
        assert!(matches!(files.list("to-dir"), Err(CapError::Denied(_))));
    }

    /// A read never returns more than the limit, whatever the size said before.
    #[test]
    fn reads_are_capped_at_the_limit() {
        let outer = tempfile::tempdir().expect("tempdir");
        let files = FilesBackend::new(outer.path());
        let at = vec![7u8; MAX_RESULT_BYTES];
        std::fs::write(outer.path().join("at"), &at).expect("write");
        assert_eq!(
            files.read("at").expect("at the limit").1,
            MAX_RESULT_BYTES as u64
        );
        let over = std::fs::OpenOptions::new()
            .append(true)
            .open(outer.path().join("at"))
            .and_then(|mut f| f.write_all(b"+"));
        over.expect("grow");
        assert!(matches!(files.read("at"), Err(CapError::Invalid(_))));
    }
}
