//! What the operator binds an adapter's logical names to: databases, directories, services and
//! HTTP endpoints, as read from the fleet file. Plain data; the fleet file parser builds it and the
//! capabilities consume it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::grants::Access;

/// A database binding.
#[derive(Debug, Clone)]
pub struct DbBinding {
    /// Connection URL (resolved from `url_env` when given that way). Never shown to adapters.
    pub url: String,
    /// Operator narrowing of the adapter's requested access.
    pub access: Option<Vec<Access>>,
    /// The operator accepts that the URL's role is privileged (a superuser, `CREATEROLE`,
    /// `CREATEDB` beyond backups, or a member of `pg_read_server_files`,
    /// `pg_write_server_files`, `pg_execute_server_program`, `pg_signal_backend`); without it
    /// such a binding is refused before any SQL runs.
    pub privileged: bool,
}

/// A directory binding.
#[derive(Debug, Clone)]
pub struct FilesBinding {
    /// The directory.
    pub path: PathBuf,
    /// Operator narrowing.
    pub access: Option<Vec<Access>>,
}

/// A service binding.
#[derive(Debug, Clone)]
pub struct ServiceBinding {
    /// The backend and its settings.
    pub backend: ServiceBackend,
    /// Operator narrowing.
    pub access: Option<Vec<Access>>,
    /// The operator's limit for waiting until healthy (`wait_healthy_secs`): replaces the
    /// adapter's wait-healthy timeouts in plans, the rollback's and `upshift start`'s default.
    pub wait_healthy_secs: Option<u64>,
}

/// The longest `wait_healthy_secs` (and `--timeout`) accepted: one day.
pub const MAX_WAIT_HEALTHY_SECS: u64 = 86_400;

/// How a service is run.
#[derive(Debug, Clone)]
pub enum ServiceBackend {
    /// A local binary started from a command template.
    Process(ProcessSpec),
    /// A container on the local Docker engine.
    Docker(DockerSpec),
    /// A service of a Compose file.
    Compose(ComposeSpec),
}

/// A Compose service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComposeSpec {
    /// The Compose file.
    pub file: PathBuf,
    /// The service in it.
    pub service: String,
    /// Image template; `{version}` is replaced by the product version.
    pub image: String,
    /// Image repositories the service may be switched to (default: the template's).
    pub images: Vec<String>,
    /// Health check URL, used when the container has no healthcheck of its own.
    pub health_url: Option<String>,
    /// Seconds to wait after the stop signal.
    pub stop_timeout_secs: u64,
}

/// A container service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerSpec {
    /// The container's name.
    pub container: String,
    /// Image template; `{version}` is replaced by the product version (`kwdb/kwdb:{version}`).
    pub image: String,
    /// Image repositories the service may be switched to (default: the template's).
    pub images: Vec<String>,
    /// Health check URL, used when the container has no healthcheck of its own.
    pub health_url: Option<String>,
    /// Seconds Docker waits after the stop signal before killing.
    pub stop_timeout_secs: u64,
}

/// A local process service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessSpec {
    /// Command template; `{version}` is replaced by the product version. Split shell-style.
    pub command: String,
    /// The version deployed before Upshift first touched it.
    pub version: String,
    /// Environment for the process.
    pub env: BTreeMap<String, String>,
    /// Working directory.
    pub workdir: Option<PathBuf>,
    /// Health check URL (HTTP 2xx = healthy); without it, "running" counts as healthy.
    pub health_url: Option<String>,
    /// Seconds to wait after SIGTERM before SIGKILL.
    pub stop_timeout_secs: u64,
    /// A job rather than a server: `start` runs it to completion and succeeds only when it
    /// exits 0 (OpenMetadata's `openmetadata-ops.sh migrate`, Compose's `execute-migrate-all`).
    pub oneshot: bool,
    /// For a one-shot job: seconds it may run before it is killed and counted as failed.
    pub run_timeout_secs: u64,
}

/// An HTTP binding.
#[derive(Debug, Clone)]
pub struct HttpBinding {
    /// Base URL; adapters send paths only.
    pub url: String,
    /// Operator narrowing.
    pub access: Option<Vec<Access>>,
}

/// Binding names: lowercase letters, digits and `-`, starting with a letter.
pub fn valid_binding_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z'))
        && name.len() <= 64
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// The repository part of an image reference: `kwdb/kwdb:3.0.0` → `kwdb/kwdb` (a registry port
/// such as `localhost:5000/x` is kept; a `@sha256:…` digest is dropped).
pub fn image_repository(image: &str) -> &str {
    let without_digest = image.split('@').next().unwrap_or(image);
    match without_digest.rfind(':') {
        Some(i) if !without_digest[i..].contains('/') => &without_digest[..i],
        _ => without_digest,
    }
}
