//! Generated data: a fast deterministic byte stream (data that neither compresses nor
//! deduplicates, so no file system can cheat), and a tree of files.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

/// xorshift64*: fast, deterministic, good enough to defeat compression.
pub struct Noise(u64);

impl Noise {
    /// A stream from `seed` (any value; 0 is replaced).
    pub fn new(seed: u64) -> Noise {
        Noise(seed.max(1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Fill `buf`.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Write `files` files totalling about `total` bytes under `root`, 100 to a directory, sizes
/// spread uniformly between half and one and a half times the mean. Returns the bytes written.
pub fn file_tree(root: &Path, files: usize, total: u64) -> Result<u64> {
    let mean = total / files.max(1) as u64;
    let mut noise = Noise::new(7);
    let mut buf = vec![0u8; (mean * 2) as usize + 8];
    let mut written = 0u64;
    for i in 0..files {
        let dir = root.join(format!("d{:03}", i / 100));
        if i % 100 == 0 {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let size = (mean / 2 + noise.next_u64() % mean.max(1)) as usize;
        noise.fill(&mut buf[..size]);
        let path = dir.join(format!("f{i:05}.bin"));
        let mut f = std::fs::File::create(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        f.write_all(&buf[..size])?;
        written += size as u64;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_is_deterministic_and_varied() {
        let (mut a, mut b) = (Noise::new(1), Noise::new(1));
        let mut x = [0u8; 13];
        let mut y = [0u8; 13];
        a.fill(&mut x);
        b.fill(&mut y);
        assert_eq!(x, y);
        assert_ne!(a.next_u64(), a.next_u64());
    }

    #[test]
    fn tree_has_the_files_asked_for() {
        let dir = std::env::temp_dir().join(format!("upshift-bench-tree-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let bytes = file_tree(&dir, 150, 150 * 1000).expect("tree");
        let count: usize = std::fs::read_dir(&dir)
            .expect("read")
            .map(|d| {
                std::fs::read_dir(d.expect("entry").path())
                    .expect("sub")
                    .count()
            })
            .sum();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(count, 150);
        assert!(bytes > 100 * 1000 && bytes < 200 * 1000, "{bytes}");
    }
}
