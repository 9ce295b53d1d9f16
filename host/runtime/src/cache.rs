//! Precompiled-artifact cache: compiled components keyed by the adapter's sha256 and the engine's
//! compatibility hash, trusted only when a ledger outside the cache directory vouches for them.
//!
//! Deserializing a precompiled artifact is `unsafe` in wasmtime: the bytes are trusted to be
//! wasmtime's own output, and anything else runs as native code. The cache directory cannot vouch
//! for itself (whoever can write an artifact there can write its checksum beside it), so the
//! sha256 of every artifact this host wrote is recorded in an [`ArtifactLedger`] — the state
//! store in a session — keyed by the adapter's digest and the engine's compatibility hash. An
//! artifact whose bytes do not hash to the recorded digest, or that nothing recorded, is never
//! deserialized: the component is compiled again from the adapter (whose digest the host checked
//! against its signatures and lock file) and the new artifact's digest recorded.

use std::collections::HashMap;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// A ledger operation under way; the error says what went wrong, for the operator.
pub type LedgerFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, String>> + Send + 'a>>;

/// Where the digests of trusted artifacts are recorded, somewhere the cache directory cannot
/// write (a session uses its state store).
pub trait ArtifactLedger: Send + Sync {
    /// The sha256 recorded for the artifact of adapter `adapter` (its digest) compiled by an
    /// engine whose compatibility key is `engine`.
    fn recorded<'a>(
        &'a self,
        adapter: &'a str,
        engine: &'a str,
    ) -> LedgerFuture<'a, Option<String>>;
    /// Record `artifact` (a sha256) as the trusted artifact of `adapter` under `engine`.
    fn record<'a>(
        &'a self,
        adapter: &'a str,
        engine: &'a str,
        artifact: &'a str,
    ) -> LedgerFuture<'a, ()>;
}

/// A ledger in this process's memory: only artifacts this process wrote are trusted. The
/// default of a [`crate::Runtime`] without a state store.
#[derive(Debug, Default)]
pub struct MemoryLedger {
    entries: Mutex<HashMap<(String, String), String>>,
}

impl ArtifactLedger for MemoryLedger {
    fn recorded<'a>(
        &'a self,
        adapter: &'a str,
        engine: &'a str,
    ) -> LedgerFuture<'a, Option<String>> {
        let found = self
            .entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(adapter.to_string(), engine.to_string()))
            .cloned();
        Box::pin(async move { Ok(found) })
    }

    fn record<'a>(
        &'a self,
        adapter: &'a str,
        engine: &'a str,
        artifact: &'a str,
    ) -> LedgerFuture<'a, ()> {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                (adapter.to_string(), engine.to_string()),
                artifact.to_string(),
            );
        Box::pin(async { Ok(()) })
    }
}

/// Where compiled components are kept.
#[derive(Clone)]
pub struct ArtifactCache {
    dir: PathBuf,
    engine_key: String,
    ledger: Arc<dyn ArtifactLedger>,
}

impl std::fmt::Debug for ArtifactCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArtifactCache")
            .field("dir", &self.dir)
            .field("engine_key", &self.engine_key)
            .finish_non_exhaustive()
    }
}

/// How a component was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Loaded from a cache entry whose digest the ledger recorded.
    Hit,
    /// Compiled (no entry, or an entry the ledger does not vouch for) and stored.
    Compiled,
}

/// A component from the cache, and what the operator should know about the cache entry.
pub struct Cached {
    /// The component.
    pub component: Component,
    /// Whether it came from the cache.
    pub outcome: CacheOutcome,
    /// Why an existing entry was not used (it was replaced by a fresh compilation), or why the
    /// new one could not be recorded.
    pub note: Option<String>,
}

/// Feeds what `Hash` writes into sha256, so the engine key is the same in every build of this
/// host (unlike `DefaultHasher`'s output, which Rust does not promise to keep).
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn finish(&self) -> u64 {
        let digest = self.0.clone().finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        u64::from_be_bytes(first)
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

/// The key of `engine`'s compatibility: artifacts compiled under another key are never loaded.
pub fn engine_key(engine: &Engine) -> String {
    let mut h = Sha256Hasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut h);
    hex::encode(&h.0.finalize()[..8])
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn short(digest: &str) -> &str {
    digest.get(..12).unwrap_or(digest)
}

impl ArtifactCache {
    /// A cache in `dir` for artifacts of `engine`, trusting what `ledger` recorded.
    pub fn new(dir: &Path, engine: &Engine, ledger: Arc<dyn ArtifactLedger>) -> ArtifactCache {
        ArtifactCache {
            dir: dir.to_path_buf(),
            engine_key: engine_key(engine),
            ledger,
        }
    }

    /// Trust what `ledger` recorded from now on.
    pub fn set_ledger(&mut self, ledger: Arc<dyn ArtifactLedger>) {
        self.ledger = ledger;
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The artifact file of the adapter whose digest is `digest`.
    pub fn artifact_path(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{digest}-{}.cwasm", self.engine_key))
    }

    /// The component for `wasm` (whose sha256 is `digest`): from the cache if its entry hashes to
    /// the digest the ledger recorded, else compiled, stored and recorded. A cache that cannot be
    /// written is not an error.
    pub async fn load(
        &self,
        engine: &Engine,
        digest: &str,
        wasm: &[u8],
    ) -> wasmtime::Result<Cached> {
        let artifact = self.artifact_path(digest);
        let shown = artifact.display().to_string();
        let recorded = self.ledger.recorded(digest, &self.engine_key).await;
        let bytes = read_if_present(&artifact).await;
        let mut note = match (recorded, bytes) {
            (Ok(Some(expected)), Some(bytes)) => {
                let actual = sha256(&bytes);
                if actual == expected {
                    // SAFETY: the ledger, which the cache directory cannot write, recorded this
                    // sha256 for the output of `Component::serialize` of this adapter by an engine
                    // with this compatibility key (part of the file name); the bytes hash to it,
                    // so they are wasmtime's own unmodified output.
                    match unsafe { Component::deserialize(engine, &bytes) } {
                        Ok(component) => {
                            return Ok(Cached {
                                component,
                                outcome: CacheOutcome::Hit,
                                note: None,
                            });
                        }
                        Err(e) => Some(format!(
                            "the compiled-adapter cache entry {shown} could not be loaded ({e}); recompiled it from the adapter"
                        )),
                    }
                } else {
                    Some(format!(
                        "the compiled-adapter cache entry {shown} is not the one this host recorded (sha256 {} found, {} recorded): it was replaced or damaged, so it was not loaded; recompiled it from the adapter",
                        short(&actual),
                        short(&expected)
                    ))
                }
            }
            (Ok(None), Some(_)) => Some(format!(
                "the compiled-adapter cache entry {shown} was not recorded by this host's state (another data directory or someone else wrote it), so it was not loaded; recompiled it from the adapter"
            )),
            (Ok(_), None) => None,
            (Err(e), _) => Some(format!(
                "cannot tell which compiled artifact of this adapter is trusted ({e}); compiled it from the adapter"
            )),
        };
        let component = {
            let (engine, wasm) = (engine.clone(), wasm.to_vec());
            tokio::task::spawn_blocking(move || Component::new(&engine, &wasm))
                .await
                .map_err(|e| wasmtime::Error::msg(format!("the compiler thread failed: {e}")))??
        };
        if let Ok(bytes) = component.serialize() {
            let artifact_sha = sha256(&bytes);
            let stored = store(self.dir.clone(), artifact, bytes).await;
            if stored.is_ok()
                && let Err(e) = self
                    .ledger
                    .record(digest, &self.engine_key, &artifact_sha)
                    .await
            {
                note.get_or_insert_with(|| {
                    format!("the compiled artifact could not be recorded as trusted ({e}); it will be compiled again next time")
                });
            }
        }
        Ok(Cached {
            component,
            outcome: CacheOutcome::Compiled,
            note,
        })
    }
}

/// The file's bytes, or `None` when it cannot be read (absent, or not a regular file).
async fn read_if_present(path: &Path) -> Option<Vec<u8>> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let meta = std::fs::symlink_metadata(&path).ok()?;
        if !meta.is_file() {
            return None;
        }
        std::fs::read(&path).ok()
    })
    .await
    .ok()
    .flatten()
}

/// Write `bytes` to `artifact` atomically: a file of this process beside it, renamed over it.
async fn store(dir: PathBuf, artifact: PathBuf, bytes: Vec<u8>) -> std::io::Result<()> {
    tokio::task::spawn_blocking(move || {
        // Readable by the owner only, like everything in the data directory.
        upshift_caps::private::create_dir_all(&dir)?;
        let tmp = artifact.with_extension(format!(
            "cwasm.{}.{:x}.tmp",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        upshift_caps::private::write(&tmp, &bytes)?;
        std::fs::rename(&tmp, &artifact).inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
    })
    .await
    .map_err(std::io::Error::other)?
}
