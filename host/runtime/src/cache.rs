//! Precompiled-artifact cache: compiled components keyed by the adapter's sha256 and the engine's
//! compatibility hash, integrity-checked before they are deserialized.
//!
//! Deserializing a precompiled artifact is `unsafe` in wasmtime (the bytes are trusted to be
//! wasmtime's own output), so every artifact is stored with the sha256 of its bytes and is
//! recompiled if the file does not match.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Where compiled components are kept.
#[derive(Debug, Clone)]
pub struct ArtifactCache {
    dir: PathBuf,
    engine_key: String,
}

/// How a component was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Loaded from a verified cache entry.
    Hit,
    /// Compiled (no entry, or the entry failed its integrity check) and stored.
    Compiled,
}

impl ArtifactCache {
    /// A cache in `dir` for artifacts of `engine`.
    pub fn new(dir: &Path, engine: &Engine) -> ArtifactCache {
        let mut h = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        ArtifactCache {
            dir: dir.to_path_buf(),
            engine_key: format!("{:016x}", h.finish()),
        }
    }

    fn paths(&self, digest: &str) -> (PathBuf, PathBuf) {
        let stem = format!("{digest}-{}", self.engine_key);
        (
            self.dir.join(format!("{stem}.cwasm")),
            self.dir.join(format!("{stem}.sha256")),
        )
    }

    /// The component for `wasm` (whose sha256 is `digest`): from the cache if a verified entry
    /// exists, else compiled and stored. A cache that cannot be written is not an error.
    pub fn load(
        &self,
        engine: &Engine,
        digest: &str,
        wasm: &[u8],
    ) -> wasmtime::Result<(Component, CacheOutcome)> {
        let (artifact, checksum) = self.paths(digest);
        if let (Ok(bytes), Ok(expected)) =
            (std::fs::read(&artifact), std::fs::read_to_string(&checksum))
            && hex::encode(Sha256::digest(&bytes)) == expected.trim()
        {
            // SAFETY: the bytes were produced by `Component::serialize` of an engine with the same
            // compatibility hash (it is part of the file name) and their sha256 matches the one
            // recorded when they were written, so they are wasmtime's own unmodified output.
            if let Ok(component) = unsafe { Component::deserialize(engine, &bytes) } {
                return Ok((component, CacheOutcome::Hit));
            }
        }
        let component = Component::new(engine, wasm)?;
        if let Ok(bytes) = component.serialize() {
            let _ = self.store(&artifact, &checksum, &bytes);
        }
        Ok((component, CacheOutcome::Compiled))
    }

    fn store(&self, artifact: &Path, checksum: &Path, bytes: &[u8]) -> std::io::Result<()> {
        // Readable by the owner only, like everything in the data directory.
        upshift_caps::private::create_dir_all(&self.dir)?;
        let tmp = artifact.with_extension("cwasm.tmp");
        upshift_caps::private::write(&tmp, bytes)?;
        std::fs::rename(&tmp, artifact)?;
        upshift_caps::private::write(checksum, hex::encode(Sha256::digest(bytes)))
    }
}
