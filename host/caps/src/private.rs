//! Files and directories only their owner can read: everything the host writes in its data
//! directory (state, audit log, tapes, backups and their manifests, reports, the compiled
//! adapter cache, process services' state and logs) is created 0600 (directories 0700)
//! whatever the process umask, and what external tools wrote there (`pg_dump`,
//! `mariadb-dump`) is tightened to the same when they finish.

use std::fs::{DirBuilder, File, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of every file the host writes.
pub const FILE_MODE: u32 = 0o600;
/// Mode of every directory the host creates.
pub const DIR_MODE: u32 = 0o700;

/// Create `dir` and its missing parents, each 0700.
pub fn create_dir_all(dir: &Path) -> std::io::Result<()> {
    DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)
}

/// Open `path` for writing, created 0600 or truncated (an existing file is made 0600).
pub fn create(path: &Path) -> std::io::Result<File> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(path)?;
    own(&file)?;
    Ok(file)
}

/// Open `path` for appending, created 0600 (an existing file is made 0600).
pub fn append(path: &Path) -> std::io::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(FILE_MODE)
        .open(path)?;
    own(&file)?;
    Ok(file)
}

/// Open `path` for reading and appending, created 0600 (an existing file is made 0600).
pub fn append_read(path: &Path) -> std::io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .create(true)
        .append(true)
        .mode(FILE_MODE)
        .open(path)?;
    own(&file)?;
    Ok(file)
}

/// Write `bytes` to `path`, created 0600.
pub fn write(path: &Path, bytes: impl AsRef<[u8]>) -> std::io::Result<()> {
    create(path)?.write_all(bytes.as_ref())
}

/// Make an open file 0600 if it is not.
fn own(file: &File) -> std::io::Result<()> {
    if file.metadata()?.permissions().mode() & 0o7777 != FILE_MODE {
        file.set_permissions(Permissions::from_mode(FILE_MODE))?;
    }
    Ok(())
}

/// Make everything under `path` (itself included) 0700 for directories and 0600 for files,
/// following no symbolic link: for what an external tool wrote under the process umask.
pub fn tighten(path: &Path) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    if meta.is_dir() {
        std::fs::set_permissions(path, Permissions::from_mode(DIR_MODE))?;
        for entry in std::fs::read_dir(path)? {
            tighten(&entry?.path())?;
        }
    } else if meta.is_file() && meta.permissions().mode() & 0o7777 != FILE_MODE {
        std::fs::set_permissions(path, Permissions::from_mode(FILE_MODE))?;
    }
    Ok(())
}

/// Create the directory `dir` 0700, or make an existing one 0700: returns its old mode when it
/// was open to others (the caller says so), `None` when it was private already.
pub fn private_dir(dir: &Path) -> std::io::Result<Option<u32>> {
    create_dir_all(dir)?;
    let mode = std::fs::metadata(dir)?.permissions().mode() & 0o7777;
    if mode & 0o077 == 0 {
        return Ok(None);
    }
    std::fs::set_permissions(dir, Permissions::from_mode(DIR_MODE))?;
    Ok(Some(mode))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_are_private_whatever_was_there() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("a/b");
        create_dir_all(&root).expect("mkdir");
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o7777;
        assert_eq!(mode(&root), 0o700);
        let f = root.join("f");
        std::fs::write(&f, "x").expect("write");
        std::fs::set_permissions(&f, Permissions::from_mode(0o644)).expect("chmod");
        write(&f, "y").expect("write");
        assert_eq!(mode(&f), 0o600);
        let open = dir.path().join("open");
        std::fs::create_dir(&open).expect("mkdir");
        std::fs::set_permissions(&open, Permissions::from_mode(0o755)).expect("chmod");
        std::fs::write(open.join("g"), "z").expect("write");
        assert_eq!(private_dir(&open).expect("private"), Some(0o755));
        assert_eq!(private_dir(&open).expect("private"), None);
        tighten(&open).expect("tighten");
        assert_eq!(mode(&open.join("g")), 0o600);
    }
}
