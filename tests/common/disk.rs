//! Real full disks: a small tmpfs mounted on a directory for a test's life.

use std::path::{Path, PathBuf};

/// A tmpfs mounted on a directory, unmounted (lazily, so a busy mount never fails) on drop.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mount a tmpfs of `size` (as `mount -o size=…`, e.g. `24m`) on `dir` (created), mode 0700,
    /// owned by `owner` (uid, gid) when given. `None`, with exactly what is missing printed,
    /// where mounting is not permitted; under `CI=true` that is a failure.
    pub fn mount(dir: &Path, size: &str, owner: Option<(u32, u32)>) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).expect("mount point");
        let mut options = format!("size={size},mode=0700");
        if let Some((uid, gid)) = owner {
            options.push_str(&format!(",uid={uid},gid={gid}"));
        }
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &options, "tmpfs"])
            .arg(dir)
            .output();
        match out {
            Ok(out) if out.status.success() => Some(Tmpfs(dir.to_path_buf())),
            other => {
                let why = match other {
                    Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_string(),
                    Err(e) => e.to_string(),
                };
                super::missing(&format!(
                    "a small tmpfs for a real full disk: `mount -t tmpfs` (root or CAP_SYS_ADMIN) was refused: {why}"
                ));
                None
            }
        }
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}
