//! Directory snapshots through cap-std: the bound directory is read only through a capability
//! handle, so nothing outside it is ever read — symlinks are recorded as links (never followed),
//! and a symlinked directory is not descended into. Modes, modification times and symlinks are
//! preserved; every file's sha256 goes into a manifest; copy-on-write clones are used where the
//! file system supports them. A restore checks every checksum first, builds the tree beside the
//! directory and swaps it in by rename, keeping the replaced tree.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use cap_fs_ext::DirExt;
use cap_std::ambient_authority;
use cap_std::fs::{Dir, PermissionsExt};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::CapError;

/// Name of the manifest inside a snapshot.
pub const MANIFEST: &str = "snapshot.json";

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum EntryKind {
    /// A directory.
    Dir,
    /// A regular file.
    File {
        /// Size.
        size: u64,
        /// sha256 of the contents.
        sha256: String,
    },
    /// A symbolic link (never followed).
    Symlink {
        /// Where it points, as written.
        target: String,
    },
}

/// One entry of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Path relative to the snapshot root.
    pub path: String,
    /// What it is.
    #[serde(flatten)]
    pub kind: EntryKind,
    /// Permission bits.
    pub mode: u32,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i128,
    /// Owner (uid, gid), put back on restore where the host may (as root, like `cp -rp`): a
    /// PostgreSQL data directory must stay its server user's. Absent in older manifests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<(u32, u32)>,
}

/// A snapshot's manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotManifest {
    /// The directory it was taken from.
    pub source: String,
    /// Entries, parents before children.
    pub entries: Vec<Entry>,
    /// Files copied by copy-on-write clone.
    pub cloned_files: u64,
}

fn io(context: &str, e: std::io::Error) -> CapError {
    CapError::Failed(format!("{context}: {e}"))
}

fn nanos(t: std::time::SystemTime) -> i128 {
    match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    }
}

fn system_time(ns: i128) -> std::time::SystemTime {
    let d = std::time::Duration::from_nanos(ns.unsigned_abs().min(u64::MAX as u128) as u64);
    if ns >= 0 {
        std::time::UNIX_EPOCH + d
    } else {
        std::time::UNIX_EPOCH - d
    }
}

/// Bytes per chunk handed from the copying thread to the hashing thread.
const CHUNK: u64 = 1 << 20;
/// Chunks queued for hashing at most (so at most 16 MiB of file data is in flight).
const CHUNKS_IN_FLIGHT: usize = 16;

/// sha256 of each file, computed on a thread of its own while the caller goes on copying, so
/// hashing and writing overlap. Files are hashed in the order they are sent.
struct BackgroundHasher {
    chunks: std::sync::mpsc::SyncSender<Option<Vec<u8>>>,
    worker: std::thread::JoinHandle<Vec<String>>,
}

impl BackgroundHasher {
    fn start() -> std::io::Result<BackgroundHasher> {
        let (chunks, inbox) = std::sync::mpsc::sync_channel::<Option<Vec<u8>>>(CHUNKS_IN_FLIGHT);
        let worker = std::thread::Builder::new()
            .name("upshift-snapshot-hash".into())
            .spawn(move || {
                let mut digests = Vec::new();
                let mut hasher = Sha256::new();
                for chunk in inbox {
                    match chunk {
                        Some(bytes) => hasher.update(&bytes),
                        None => digests.push(hex::encode(hasher.finalize_reset())),
                    }
                }
                digests
            })?;
        Ok(BackgroundHasher { chunks, worker })
    }

    fn send(&self, chunk: Option<Vec<u8>>) -> std::io::Result<()> {
        self.chunks
            .send(chunk)
            .map_err(|_| std::io::Error::other("the hashing thread stopped"))
    }

    /// Every file's sha256, in the order the files were sent.
    fn finish(self) -> Result<Vec<String>, CapError> {
        drop(self.chunks);
        self.worker
            .join()
            .map_err(|_| CapError::Failed("the snapshot's hashing thread panicked".into()))
    }
}

/// Copy `from` into `to`, handing its bytes to `hasher`; a copy-on-write clone when the file
/// system can. The copy's writeback is started at once (`sync_file_range`), so the disk works
/// while the next file is copied; [`snapshot`] waits for all of it with one `syncfs` before
/// publishing. Returns the size and whether the file was cloned.
fn copy_hashing(
    from: std::fs::File,
    to: &Path,
    hasher: &BackgroundHasher,
) -> std::io::Result<(u64, bool)> {
    let (mut out, cloned) = create_clone(&from, to)?;
    let mut size = 0u64;
    let mut from = from;
    loop {
        let mut chunk = Vec::new();
        let n = (&mut from).take(CHUNK).read_to_end(&mut chunk)?;
        if n == 0 {
            break;
        }
        if !cloned {
            out.write_all(&chunk)?;
        }
        size += n as u64;
        hasher.send(Some(chunk))?;
    }
    hasher.send(None)?;
    if !cloned {
        start_writeback(&out);
    }
    Ok((size, cloned))
}

/// Create `to` as a copy-on-write clone of `from` where the file system can; returns the new
/// file and whether it was cloned (if not, it is empty and the caller writes it).
fn create_clone(from: &std::fs::File, to: &Path) -> std::io::Result<(std::fs::File, bool)> {
    let out = crate::private::create(to)?;
    // SAFETY: FICLONE takes two open file descriptors and touches nothing else.
    let cloned =
        unsafe { nix::libc::ioctl(out.as_raw_fd(), nix::libc::FICLONE, from.as_raw_fd()) } == 0;
    Ok((out, cloned))
}

/// Start writing `file`'s dirty pages to disk without waiting for them.
fn start_writeback(file: &std::fs::File) {
    // SAFETY: sync_file_range takes an open descriptor and a byte range (0, 0 = all).
    unsafe { nix::libc::sync_file_range(file.as_raw_fd(), 0, 0, nix::libc::SYNC_FILE_RANGE_WRITE) };
}

/// Copy `from` into `to` (a clone where the file system can), starting its writeback.
fn copy_file(mut from: std::fs::File, to: &Path) -> std::io::Result<()> {
    let (mut out, cloned) = create_clone(&from, to)?;
    if !cloned {
        std::io::copy(&mut from, &mut out)?;
        start_writeback(&out);
    }
    Ok(())
}

/// Flush the file system holding `dir` (every file and directory written under it).
fn sync_tree(dir: &Path) -> Result<(), CapError> {
    let handle =
        std::fs::File::open(dir).map_err(|e| io(&format!("cannot open {}", dir.display()), e))?;
    nix::unistd::syncfs(&handle)
        .map_err(|e| io(&format!("cannot flush {} to disk", dir.display()), e.into()))
}

/// fsync directory `dir`, so a rename inside it is on disk.
fn sync_dir(dir: &Path) -> Result<(), CapError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io(&format!("cannot flush {} to disk", dir.display()), e))
}

fn walk(
    dir: &Dir,
    rel: &Path,
    dest: &Path,
    out: &mut SnapshotManifest,
    hasher: &BackgroundHasher,
) -> Result<(), CapError> {
    let mut names: Vec<_> = dir
        .entries()
        .map_err(|e| io(&format!("cannot list {}", rel.display()), e))?
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    names.sort();
    for name in names {
        let path = rel.join(&name);
        let shown = path.to_string_lossy().into_owned();
        if name.to_str().is_none() {
            return Err(CapError::Failed(format!(
                "cannot snapshot `{shown}`: its name is not UTF-8, so the manifest cannot record it; rename it"
            )));
        }
        let meta = dir
            .symlink_metadata(&name)
            .map_err(|e| io(&format!("cannot stat {shown}"), e))?;
        let mode = meta.permissions().mode() & 0o7777;
        let mtime_ns = meta.modified().map(|t| nanos(t.into_std())).unwrap_or(0);
        let owner = {
            use cap_std::fs::MetadataExt as _;
            Some((meta.uid(), meta.gid()))
        };
        if meta.file_type().is_symlink() {
            let target = dir
                .read_link_contents(&name)
                .map_err(|e| io(&format!("cannot read link {shown}"), e))?;
            out.entries.push(Entry {
                path: shown,
                kind: EntryKind::Symlink {
                    target: target.to_string_lossy().into_owned(),
                },
                mode,
                mtime_ns,
                owner,
            });
        } else if meta.is_dir() {
            crate::private::create_dir_all(&dest.join(&path))
                .map_err(|e| io(&format!("cannot create {shown}"), e))?;
            out.entries.push(Entry {
                path: shown,
                kind: EntryKind::Dir,
                mode,
                mtime_ns,
                owner,
            });
            let sub = dir
                .open_dir_nofollow(&name)
                .map_err(|e| io(&format!("cannot open {}", rel.join(&name).display()), e))?;
            walk(&sub, &path, dest, out, hasher)?;
        } else if meta.is_file() {
            let mut options = crate::files::dir::no_follow_no_block();
            options.read(true);
            let file = dir
                .open_with(&name, &options)
                .map_err(|e| io(&format!("cannot open {shown}"), e))?
                .into_std();
            // Swapped for a FIFO, socket or device since it was looked at: not data either.
            if !file.metadata().is_ok_and(|m| m.is_file()) {
                continue;
            }
            let (size, cloned) = copy_hashing(file, &dest.join(&path), hasher)
                .map_err(|e| io(&format!("cannot copy {shown}"), e))?;
            out.cloned_files += u64::from(cloned);
            out.entries.push(Entry {
                path: shown,
                // Filled in from the hashing thread once every file is copied.
                kind: EntryKind::File {
                    size,
                    sha256: String::new(),
                },
                mode,
                mtime_ns,
                owner,
            });
        }
        // Sockets, FIFOs and devices are not data: they are left out, never opened (opening a
        // FIFO would block the snapshot; reading a device would copy it as if a file).
    }
    Ok(())
}

/// Snapshot `root` into `dest/files`, writing `dest/snapshot.json`; returns the manifest and its
/// sha256.
pub fn snapshot(root: &Path, dest: &Path) -> Result<(SnapshotManifest, String), CapError> {
    let dir = Dir::open_ambient_dir(root, ambient_authority()).map_err(|e| {
        io(
            &format!("cannot open bound directory {}", root.display()),
            e,
        )
    })?;
    let partial = dest.with_extension("partial");
    let _ = std::fs::remove_dir_all(&partial);
    // Whatever fails (a full disk, an unreadable file), nothing half-made is left behind.
    let made = snapshot_into(&dir, root, dest, &partial);
    if made.is_err() {
        let _ = std::fs::remove_dir_all(&partial);
    }
    made
}

/// [`snapshot`]'s work: build the snapshot in `partial`, then rename it to `dest`.
fn snapshot_into(
    dir: &Dir,
    root: &Path,
    dest: &Path,
    partial: &Path,
) -> Result<(SnapshotManifest, String), CapError> {
    let files = partial.join("files");
    crate::private::create_dir_all(&files)
        .map_err(|e| io(&format!("cannot create {}", files.display()), e))?;
    let mut manifest = SnapshotManifest {
        source: root.display().to_string(),
        entries: Vec::new(),
        cloned_files: 0,
    };
    let hasher = BackgroundHasher::start().map_err(|e| io("cannot start hashing", e))?;
    let walked = walk(dir, Path::new(""), &files, &mut manifest, &hasher);
    let digests = hasher.finish()?;
    walked?;
    let mut digests = digests.into_iter();
    for entry in &mut manifest.entries {
        if let EntryKind::File { sha256, .. } = &mut entry.kind {
            *sha256 = digests.next().ok_or_else(|| {
                CapError::Failed(format!("no checksum was computed for {}", entry.path))
            })?;
        }
    }
    // Every copied file and directory reaches the disk (one file-system sync rather than an
    // fsync per file), then the manifest, and only then does the snapshot get its name.
    sync_tree(partial)?;
    let text = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| CapError::Failed(format!("cannot encode the manifest: {e}")))?;
    let mut manifest_file = crate::private::create(&partial.join(MANIFEST))
        .map_err(|e| io("cannot write the manifest", e))?;
    manifest_file
        .write_all(&text)
        .and_then(|()| manifest_file.sync_all())
        .map_err(|e| io("cannot write the manifest", e))?;
    std::fs::rename(partial, dest).map_err(|e| io("cannot finish the snapshot", e))?;
    if let Some(parent) = dest.parent() {
        sync_dir(parent)?;
    }
    Ok((manifest, hex::encode(Sha256::digest(&text))))
}

/// A snapshot entry's path as a relative path of plain names (`conf/app.yml`): no `..`, `.`,
/// empty or absolute parts and no NUL, so joined to any directory it stays inside it.
pub fn entry_path(path: &str) -> Result<&Path, CapError> {
    let plain = !path.is_empty()
        && path
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != ".." && !part.contains('\0'));
    if plain {
        Ok(Path::new(path))
    } else {
        Err(CapError::Failed(format!(
            "the snapshot entry `{}` is not a plain relative path; the snapshot is damaged and will not be restored",
            path.escape_debug()
        )))
    }
}

/// Check a manifest's entries before a restore writes any of them: each is a plain relative
/// path ([`entry_path`]), listed once, under directories listed before it, so no entry can be
/// written through a symlink or outside the tree being built.
pub fn check_entries(entries: &[Entry]) -> Result<(), CapError> {
    let mut dirs: std::collections::HashSet<&str> = std::collections::HashSet::new();
    let mut seen: std::collections::HashSet<&str> = std::collections::HashSet::new();
    for e in entries {
        entry_path(&e.path)?;
        if let Some((parent, _)) = e.path.rsplit_once('/')
            && !dirs.contains(parent)
        {
            return Err(CapError::Failed(format!(
                "the snapshot entry `{}` is not under a directory listed before it; the snapshot is damaged and will not be restored",
                e.path.escape_debug()
            )));
        }
        if !seen.insert(e.path.as_str()) {
            return Err(CapError::Failed(format!(
                "the snapshot lists `{}` twice; the snapshot is damaged and will not be restored",
                e.path.escape_debug()
            )));
        }
        if e.kind == EntryKind::Dir {
            dirs.insert(e.path.as_str());
        }
    }
    Ok(())
}

/// Read a snapshot's manifest, checking it against the recorded sha256.
pub fn read_manifest(dest: &Path, recorded_sha256: &str) -> Result<SnapshotManifest, CapError> {
    let bytes = std::fs::read(dest.join(MANIFEST))
        .map_err(|e| io(&format!("cannot read {}", dest.display()), e))?;
    if hex::encode(Sha256::digest(&bytes)) != recorded_sha256 {
        return Err(CapError::Failed(format!(
            "the snapshot manifest in {} does not match its recorded sha256",
            dest.display()
        )));
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| CapError::Failed(format!("the snapshot manifest does not parse: {e}")))
}

fn file_sha(path: &Path) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    std::io::copy(&mut std::fs::File::open(path)?, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

/// Restore snapshot `dest` over `root`: check every file, build the tree beside `root`, then
/// swap it in by rename. The replaced tree is kept as `<root>.upshift-replaced-<tag>`.
pub fn restore(
    dest: &Path,
    recorded_sha256: &str,
    root: &Path,
    tag: &str,
) -> Result<PathBuf, CapError> {
    let manifest = read_manifest(dest, recorded_sha256)?;
    check_entries(&manifest.entries)?;
    let files = dest.join("files");
    for e in &manifest.entries {
        if let EntryKind::File { sha256, .. } = &e.kind {
            let found = file_sha(&files.join(&e.path))
                .map_err(|err| io(&format!("cannot read {}", e.path), err))?;
            if &found != sha256 {
                return Err(CapError::Failed(format!(
                    "snapshot file {} does not match its sha256; the snapshot is damaged and will not be restored",
                    e.path
                )));
            }
        }
    }
    let name = root
        .file_name()
        .ok_or_else(|| CapError::Failed(format!("{} has no name", root.display())))?
        .to_string_lossy()
        .into_owned();
    let parent = root.parent().unwrap_or(Path::new("/"));
    let staging = restore_staging(root, tag)?;
    let kept = parent.join(format!("{name}.upshift-replaced-{tag}"));
    let _ = std::fs::remove_dir_all(&staging);
    // Whatever fails before the swap, the half-built tree is removed.
    let built = build_tree(&manifest, &files, &staging);
    if built.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    built?;
    if root.exists() {
        std::fs::rename(root, &kept)
            .map_err(|e| io(&format!("cannot move {} aside", root.display()), e))?;
    }
    if let Err(e) = std::fs::rename(&staging, root) {
        let _ = std::fs::rename(&kept, root);
        let _ = std::fs::remove_dir_all(&staging);
        return Err(io(
            &format!("cannot move the restored tree into {}", root.display()),
            e,
        ));
    }
    sync_dir(parent)?;
    Ok(kept)
}

/// Where [`restore`] builds the tree for `root` before swapping it in (tag `tag`).
pub fn restore_staging(root: &Path, tag: &str) -> Result<PathBuf, CapError> {
    let name = root
        .file_name()
        .ok_or_else(|| CapError::Failed(format!("{} has no name", root.display())))?
        .to_string_lossy()
        .into_owned();
    let parent = root.parent().unwrap_or(Path::new("/"));
    Ok(parent.join(format!("{name}.upshift-restoring-{tag}")))
}

/// Give `path` the entry's recorded owner when it differs. Only root may give a file away: for
/// anyone else the copy stays theirs (`cp -rp` does the same), so a refusal is not an error.
fn restore_owner(path: &Path, e: &Entry) -> Result<(), CapError> {
    use std::os::unix::fs::MetadataExt;
    let Some((uid, gid)) = e.owner else {
        return Ok(());
    };
    let now = std::fs::symlink_metadata(path)
        .map_err(|err| io(&format!("cannot stat {}", e.path), err))?;
    if (now.uid(), now.gid()) == (uid, gid) {
        return Ok(());
    }
    match std::os::unix::fs::lchown(path, Some(uid), Some(gid)) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::PermissionDenied => Ok(()),
        Err(err) => Err(io(&format!("cannot give {} its owner back", e.path), err)),
    }
}

/// Build the tree of `manifest` from `files` in `staging`, modes and times included, on disk.
fn build_tree(manifest: &SnapshotManifest, files: &Path, staging: &Path) -> Result<(), CapError> {
    std::fs::create_dir_all(staging)
        .map_err(|e| io(&format!("cannot create {}", staging.display()), e))?;
    for e in &manifest.entries {
        let to = staging.join(&e.path);
        match &e.kind {
            EntryKind::Dir => std::fs::create_dir_all(&to)
                .map_err(|err| io(&format!("cannot create {}", e.path), err))?,
            EntryKind::File { .. } => {
                let from = std::fs::File::open(files.join(&e.path))
                    .map_err(|err| io(&format!("cannot read {}", e.path), err))?;
                copy_file(from, &to)
                    .map_err(|err| io(&format!("cannot restore {}", e.path), err))?;
            }
            EntryKind::Symlink { target } => std::os::unix::fs::symlink(target, &to)
                .map_err(|err| io(&format!("cannot link {}", e.path), err))?,
        }
    }
    // Owners, then modes and times, deepest first, so writing children does not disturb
    // directories (and a chown cannot clear a set-id bit set after it).
    for e in manifest.entries.iter().rev() {
        let to = staging.join(&e.path);
        restore_owner(&to, e)?;
        if matches!(e.kind, EntryKind::Symlink { .. }) {
            continue;
        }
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(e.mode))
            .map_err(|err| io(&format!("cannot set the mode of {}", e.path), err))?;
        let file =
            std::fs::File::open(&to).map_err(|err| io(&format!("cannot open {}", e.path), err))?;
        file.set_modified(system_time(e.mtime_ns))
            .map_err(|err| io(&format!("cannot set the time of {}", e.path), err))?;
    }
    // The restored tree is on disk before it replaces anything.
    sync_tree(staging)
}

/// [`snapshot`] on a blocking thread, off the async executor.
pub async fn snapshot_blocking(
    root: &Path,
    dest: &Path,
) -> Result<(SnapshotManifest, String), CapError> {
    let (root, dest) = (root.to_path_buf(), dest.to_path_buf());
    crate::blocking(move || snapshot(&root, &dest)).await
}

/// [`restore`] on a blocking thread, off the async executor.
pub async fn restore_blocking(
    dest: &Path,
    recorded_sha256: &str,
    root: &Path,
    tag: &str,
) -> Result<PathBuf, CapError> {
    let (dest, sha, root, tag) = (
        dest.to_path_buf(),
        recorded_sha256.to_string(),
        root.to_path_buf(),
        tag.to_string(),
    );
    crate::blocking(move || restore(&dest, &sha, &root, &tag)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn snapshot_and_restore_preserve_everything_and_never_leave_the_directory() {
        let outer = tempfile::tempdir().expect("tempdir");
        let root = outer.path().join("data");
        std::fs::create_dir_all(root.join("conf/sub")).expect("mkdir");
        std::fs::write(root.join(".env"), b"ENCRYPTION_SECRET=s3cret\n").expect("write");
        std::fs::write(root.join("conf/sub/app.yml"), b"a: 1\n").expect("write");
        std::fs::set_permissions(root.join(".env"), std::fs::Permissions::from_mode(0o600))
            .expect("chmod");
        std::fs::write(outer.path().join("secret"), b"outside").expect("write");
        std::fs::create_dir(outer.path().join("elsewhere")).expect("mkdir");
        std::fs::write(outer.path().join("elsewhere/big"), b"not ours").expect("write");
        symlink("../secret", root.join("up")).expect("symlink");
        symlink("/etc/passwd", root.join("abs")).expect("symlink");
        symlink(outer.path().join("elsewhere"), root.join("linked-dir")).expect("symlink");
        let old = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_600_000_000);
        std::fs::File::open(root.join("conf/sub/app.yml"))
            .and_then(|f| f.set_modified(old))
            .expect("mtime");

        let dest = outer.path().join("snap");
        let (manifest, sha) = snapshot(&root, &dest).expect("snapshot");
        let paths: Vec<&str> = manifest.entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                ".env",
                "abs",
                "conf",
                "conf/sub",
                "conf/sub/app.yml",
                "linked-dir",
                "up"
            ]
        );
        assert!(
            matches!(&manifest.entries[1].kind, EntryKind::Symlink { target } if target == "/etc/passwd")
        );
        assert!(
            !dest.join("files/linked-dir/big").exists(),
            "a symlinked directory is not followed"
        );
        assert!(
            !dest.join("files/up").exists(),
            "links are recorded, not copied through"
        );

        std::fs::write(root.join(".env"), b"ENCRYPTION_SECRET=changed\n").expect("damage");
        std::fs::remove_file(root.join("conf/sub/app.yml")).expect("damage");
        let kept = restore(&dest, &sha, &root, "t1").expect("restore");
        assert_eq!(
            std::fs::read(root.join(".env")).expect("read"),
            b"ENCRYPTION_SECRET=s3cret\n"
        );
        assert_eq!(
            std::fs::metadata(root.join(".env"))
                .expect("meta")
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::metadata(root.join("conf/sub/app.yml"))
                .expect("meta")
                .modified()
                .expect("mtime"),
            old
        );
        assert_eq!(
            std::fs::read_link(root.join("up")).expect("link"),
            Path::new("../secret")
        );
        assert_eq!(
            std::fs::read(kept.join(".env")).expect("kept"),
            b"ENCRYPTION_SECRET=changed\n"
        );

        std::fs::write(dest.join("files/.env"), b"tampered").expect("tamper");
        let err = restore(&dest, &sha, &root, "t2").expect_err("damaged snapshot");
        assert!(err.to_string().contains(".env does not match"), "{err}");
    }

    /// A PostgreSQL data directory belongs to its server's user: a restore by root (what an
    /// operator's `cp -rp` keeps) gives every entry its owner back; for anyone else it stays theirs.
    #[test]
    fn restore_gives_entries_their_owners_back() {
        use std::os::unix::fs::MetadataExt;
        let outer = tempfile::tempdir().expect("tempdir");
        let root = outer.path().join("data");
        std::fs::create_dir_all(root.join("pgdata")).expect("mkdir");
        std::fs::write(root.join("pgdata/PG_VERSION"), b"15\n").expect("write");
        // Someone else's, when we may give it away (as root); ours otherwise.
        let other = (65534, 65534);
        let given = ["pgdata", "pgdata/PG_VERSION"]
            .iter()
            .all(|p| std::os::unix::fs::lchown(root.join(p), Some(other.0), Some(other.1)).is_ok());
        let dest = outer.path().join("snap");
        let (manifest, sha) = snapshot(&root, &dest).expect("snapshot");
        let recorded = manifest
            .entries
            .iter()
            .find(|e| e.path == "pgdata/PG_VERSION")
            .and_then(|e| e.owner);
        let owner_of = |p: &str| {
            let m = std::fs::symlink_metadata(root.join(p)).expect("meta");
            (m.uid(), m.gid())
        };
        assert_eq!(recorded, Some(owner_of("pgdata/PG_VERSION")));
        restore(&dest, &sha, &root, "t1").expect("restore");
        if given {
            assert_eq!(owner_of("pgdata"), other);
            assert_eq!(owner_of("pgdata/PG_VERSION"), other);
        }
    }

    /// Found while writing the fuzz target `snapshot_path`: a restore joined manifest paths to
    /// the staging directory as they were, so `../x`, `/x` or an entry under a symlink entry
    /// would be written outside the tree.
    #[test]
    fn restore_refuses_entries_that_leave_the_tree() {
        let outer = tempfile::tempdir().expect("tempdir");
        let root = outer.path().join("data");
        std::fs::create_dir_all(&root).expect("mkdir");
        let dir = |path: &str| Entry {
            path: path.into(),
            kind: EntryKind::Dir,
            mode: 0o755,
            mtime_ns: 0,
            owner: None,
        };
        let link = Entry {
            path: "link".into(),
            kind: EntryKind::Symlink {
                target: outer.path().display().to_string(),
            },
            mode: 0o777,
            mtime_ns: 0,
            owner: None,
        };
        let escape = outer.path().join("escape").display().to_string();
        let cases = [
            (vec![dir("../escape")], "not a plain relative path"),
            (vec![dir(&escape)], "not a plain relative path"),
            (vec![dir("a/./b")], "not a plain relative path"),
            (vec![link, dir("link/escape")], "not under a directory"),
            (vec![dir("a/b")], "not under a directory"),
            (vec![dir("a"), dir("a")], "twice"),
        ];
        for (i, (entries, expected)) in cases.into_iter().enumerate() {
            let dest = outer.path().join(format!("snap-{i}"));
            std::fs::create_dir_all(dest.join("files")).expect("mkdir");
            let manifest = SnapshotManifest {
                source: root.display().to_string(),
                entries,
                cloned_files: 0,
            };
            let text = serde_json::to_vec(&manifest).expect("json");
            std::fs::write(dest.join(MANIFEST), &text).expect("write");
            let sha = hex::encode(Sha256::digest(&text));
            let err = restore(&dest, &sha, &root, &format!("t{i}")).expect_err(expected);
            assert!(err.to_string().contains(expected), "case {i}: {err}");
            assert!(
                !outer.path().join("escape").exists(),
                "case {i} wrote outside"
            );
        }
        assert!(check_entries(&[dir("a"), dir("a/b")]).is_ok());
    }

    /// Found with the same review: a name that is not UTF-8 was recorded lossily, so the
    /// snapshot could never be restored; it is refused when it is taken instead.
    #[test]
    fn names_that_are_not_utf8_are_refused_at_snapshot_time() {
        use std::os::unix::ffi::OsStrExt as _;
        let outer = tempfile::tempdir().expect("tempdir");
        let root = outer.path().join("data");
        std::fs::create_dir_all(&root).expect("mkdir");
        std::fs::write(root.join(std::ffi::OsStr::from_bytes(b"bad\xff")), b"x").expect("write");
        let err = snapshot(&root, &outer.path().join("snap")).expect_err("not UTF-8");
        assert!(err.to_string().contains("not UTF-8"), "{err}");
        // The failed snapshot leaves nothing behind: neither the snapshot nor its `.partial`.
        assert!(!outer.path().join("snap").exists());
        assert!(!outer.path().join("snap.partial").exists());
    }

    /// A FIFO, a socket or a device in a snapshotted directory is left out, never opened: the
    /// snapshot neither hangs on the FIFO nor copies the device as if a file.
    #[test]
    fn fifos_sockets_and_devices_are_left_out_promptly() {
        use nix::sys::stat::{Mode, SFlag, makedev, mknod};
        let outer = tempfile::tempdir().expect("tempdir");
        let root = outer.path().join("data");
        std::fs::create_dir_all(&root).expect("mkdir");
        std::fs::write(root.join("kept"), b"data").expect("write");
        nix::unistd::mkfifo(&root.join("fifo"), Mode::S_IRWXU).expect("mkfifo");
        let _socket = std::os::unix::net::UnixListener::bind(root.join("socket")).expect("bind");
        // A character device (/dev/zero's numbers) needs CAP_MKNOD; without it, the FIFO and
        // the socket are still checked.
        let device = mknod(
            &root.join("zero"),
            SFlag::S_IFCHR,
            Mode::S_IRWXU,
            makedev(1, 5),
        )
        .is_ok();
        let started = std::time::Instant::now();
        let (manifest, _) = snapshot(&root, &outer.path().join("snap")).expect("snapshot");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        let paths: Vec<&str> = manifest.entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["kept"], "device made: {device}");
        for left_out in ["fifo", "socket", "zero"] {
            assert!(!outer.path().join("snap/files").join(left_out).exists());
        }
    }
}
