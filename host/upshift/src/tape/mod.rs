//! Tapes: what an adapter was asked and told during a run, for replaying it offline.
//!
//! `upshift plan|apply --record FILE` sets a [`Recorder`] on the runtime; every export call
//! (arguments, each import call with the host's answer, the result) is kept, and the tape is
//! written when the command ends, whatever the outcome. `upshift adapter test ADAPTER --replay
//! FILE` re-runs the exports against the tape with no backends ([`replay`]). The format is in
//! `docs/record-replay.md`.

pub mod diff;
pub mod replay;

use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use upshift_runtime::LoadedAdapter;
use upshift_runtime::exports::ExportObserver;
pub use upshift_runtime::exports::ExportRecord;

/// The format this host writes and reads.
pub const FORMAT: &str = "upshift-tape/1";

/// Why a tape cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum TapeError {
    /// The file could not be read or written.
    #[error("{path}: {reason}")]
    Io {
        /// The tape file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The tape file is there already and overwriting it was not asked for.
    #[error("{path} exists already; remove it or choose another file")]
    Exists {
        /// The tape file.
        path: String,
    },
    /// The file is not a tape this host understands.
    #[error("{path} is not a usable tape: {reason}")]
    Format {
        /// The tape file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// The adapter a tape was recorded with.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TapeAdapter {
    /// Product.
    pub product: String,
    /// The adapter's own version.
    pub adapter_version: String,
    /// sha256 of the component.
    pub sha256: String,
}

/// A recorded run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tape {
    /// Always [`FORMAT`].
    pub format: String,
    /// The adapter it was recorded with.
    pub adapter: TapeAdapter,
    /// The fleet instance.
    pub instance: String,
    /// The command that recorded it, e.g. `plan bb --to 3.11.1`.
    #[serde(default)]
    pub command: String,
    /// When (RFC 3339).
    #[serde(default)]
    pub recorded_at: String,
    /// The host version that recorded it.
    #[serde(default)]
    pub host_version: String,
    /// Every export call, in order.
    pub exports: Vec<ExportRecord>,
}

impl Tape {
    /// Read and check a tape file.
    pub fn read(path: &Path) -> Result<Tape, TapeError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| TapeError::Io {
            path: shown.clone(),
            reason: format!("cannot read it: {e}"),
        })?;
        Tape::parse(&text).map_err(|reason| TapeError::Format {
            path: shown,
            reason,
        })
    }

    /// Parse a tape's text.
    pub fn parse(text: &str) -> Result<Tape, String> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| format!("it is not JSON ({e})"))?;
        match value.get("format").and_then(Value::as_str) {
            Some(FORMAT) => {}
            Some(other) => {
                return Err(format!(
                    "its format is `{other}`; this host reads `{FORMAT}`"
                ));
            }
            None => return Err(format!("it has no \"format\": \"{FORMAT}\" field")),
        }
        serde_json::from_value(value).map_err(|e| format!("it does not follow `{FORMAT}`: {e}"))
    }

    /// Write the tape to a new file (never over an existing one unless `overwrite`), readable
    /// by its owner only: it holds whatever the adapter read.
    pub fn write(&self, path: &Path, overwrite: bool) -> Result<(), TapeError> {
        use std::os::unix::fs::OpenOptionsExt;
        let io = |e: std::io::Error| TapeError::Io {
            path: path.display().to_string(),
            reason: format!("cannot write the tape: {e}"),
        };
        let text = serde_json::to_string_pretty(self).map_err(|e| TapeError::Io {
            path: path.display().to_string(),
            reason: format!("cannot encode the tape: {e}"),
        })?;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).mode(0o600);
        if overwrite {
            options.create(true).truncate(true);
        } else {
            options.create_new(true);
        }
        let mut file = options.open(path).map_err(io)?;
        file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .map_err(io)?;
        file.write_all(text.as_bytes()).map_err(io)?;
        file.write_all(b"\n").map_err(io)?;
        file.sync_all().map_err(io)
    }
}

/// Check before a run that a tape can be written to `path` (it must not exist yet unless
/// `overwrite`), so a run is not done for nothing.
pub fn check_target(path: &Path, overwrite: bool) -> Result<(), TapeError> {
    if path.exists() && !overwrite {
        return Err(TapeError::Exists {
            path: path.display().to_string(),
        });
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(TapeError::Io {
            path: path.display().to_string(),
            reason: format!("its directory {} does not exist", dir.display()),
        });
    }
    Ok(())
}

/// Collects export calls during a run: the runtime's [`ExportObserver`] behind `--record`.
pub struct Recorder {
    instance: String,
    command: String,
    recorded_at: String,
    inner: Mutex<(Option<TapeAdapter>, Vec<ExportRecord>)>,
    secrets: upshift_caps::Secrets,
}

impl Recorder {
    /// A recorder for a run on `instance` started by `command`.
    pub fn new(instance: &str, command: &str) -> Recorder {
        Recorder {
            instance: instance.to_string(),
            command: command.to_string(),
            recorded_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            inner: Mutex::new((None, Vec::new())),
            secrets: upshift_caps::Secrets::new(),
        }
    }

    /// Mask the tape with `secrets` (the session's): what the adapter read under a secret name,
    /// and the fleet's passwords, are written as `********`.
    pub fn masking(mut self, secrets: upshift_caps::Secrets) -> Recorder {
        self.secrets = secrets;
        self
    }

    /// One export record with the secrets masked (dropped if it cannot be re-read).
    fn masked(&self, record: ExportRecord) -> Option<ExportRecord> {
        if self.secrets.is_empty() {
            return Some(record);
        }
        let value = self.secrets.masked_json(&record).ok()?;
        serde_json::from_value(value).ok()
    }

    /// The tape so far.
    pub fn tape(&self) -> Tape {
        let (adapter, exports) = match self.inner.lock() {
            Ok(inner) => (
                inner.0.clone().unwrap_or_default(),
                inner
                    .1
                    .iter()
                    .filter_map(|r| self.masked(r.clone()))
                    .collect(),
            ),
            Err(_) => (TapeAdapter::default(), Vec::new()),
        };
        Tape {
            format: FORMAT.into(),
            adapter,
            instance: self.instance.clone(),
            command: self.command.clone(),
            recorded_at: self.recorded_at.clone(),
            host_version: env!("CARGO_PKG_VERSION").into(),
            exports,
        }
    }
}

impl ExportObserver for Recorder {
    fn export_finished(&self, adapter: &LoadedAdapter, record: ExportRecord) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.0.get_or_insert_with(|| TapeAdapter {
                product: adapter.manifest.product.clone(),
                adapter_version: adapter.manifest.adapter_version.clone(),
                sha256: adapter.digest.clone(),
            });
            inner.1.push(record);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use upshift_runtime::exports::ExportCall;

    #[test]
    fn a_tape_round_trips_and_bad_ones_say_why() {
        let text = r#"{"format":"upshift-tape/1","adapter":{"product":"p","adapter_version":"1.0.0","sha256":"ab"},
            "instance":"i","exports":[
              {"export":"detect","calls":[{"interface":"db","function":"table-exists","args":{"binding":"meta","table":"t"},"result":{"ok":true}}],"result":{"Ok":{"version":"1.0.0","facts":[]}}},
              {"export":"verify","args":{"expected":"2.0.0"},"calls":[],"fault":"it trapped"}]}"#;
        let tape = Tape::parse(text).expect("a tape");
        assert_eq!(tape.exports.len(), 2);
        assert!(matches!(tape.exports[0].call, ExportCall::Detect));
        assert_eq!(tape.exports[0].calls[0].function, "table-exists");
        assert!(
            matches!(&tape.exports[1].call, ExportCall::Verify { expected } if expected == "2.0.0")
        );
        let again = Tape::parse(&serde_json::to_string(&tape).expect("encode")).expect("again");
        assert_eq!(again.exports[1].fault.as_deref(), Some("it trapped"));

        assert!(Tape::parse("{").unwrap_err().contains("not JSON"));
        assert!(
            Tape::parse(r#"{"format":"upshift-tape/9"}"#)
                .unwrap_err()
                .contains("upshift-tape/9")
        );
        assert!(
            Tape::parse(r#"{"exports":[]}"#)
                .unwrap_err()
                .contains("no \"format\"")
        );
        let unknown = text.replace("\"verify\"", "\"frobnicate\"");
        assert!(
            Tape::parse(&unknown)
                .unwrap_err()
                .contains("does not follow")
        );
    }

    #[test]
    fn an_existing_file_is_not_overwritten_unless_asked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.json");
        assert!(check_target(&path, false).is_ok());
        std::fs::write(&path, "x").expect("write");
        assert!(check_target(&path, false).is_err());
        assert!(check_target(&path, true).is_ok());
        assert!(check_target(&dir.path().join("no/such/t.json"), false).is_err());
        let tape = Recorder::new("i", "plan i").tape();
        assert!(tape.write(&path, false).is_err());
        tape.write(&path, true).expect("overwrite");
        assert_eq!(Tape::read(&path).expect("read").instance, "i");
    }
}
