//! Operations on instances: plan, apply (with automatic rollback), backup, restore, gc, and
//! the offline planner. The CLI is a thin layer over these.

pub mod abandon;
pub mod agent;
pub mod apply;
pub mod audit_log;
pub mod backups;
pub mod executor;
pub mod gc;
pub mod plan;
pub mod preflight;
pub mod report;
pub mod resume;
pub mod rollout;
pub mod session;
pub mod status;

pub use session::{CrashPoint, Session, SessionBuilder, StopFlag, StopReply};

/// Whether this build honours test hooks such as [`SessionBuilder::crash_point`] (the `test-hooks`
/// feature, which the CLI's tests turn on; never in a normal build).
pub const TEST_HOOKS: bool = cfg!(feature = "test-hooks");

use crate::runtime::{AdapterFault, RuntimeError};

/// How long the host waits for a service to become healthy when neither the fleet file
/// (`wait_healthy_secs`) nor the run (`--timeout`) says: a rollback's restart, `upshift start`.
pub const DEFAULT_WAIT_HEALTHY: std::time::Duration = std::time::Duration::from_secs(180);

/// Why an operation could not be carried out (outcomes such as a refusal or a rollback are
/// reports, not errors).
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// Bad usage or bad input (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The adapter misbehaved (exit 1; blamed on the adapter).
    #[error(transparent)]
    Adapter(#[from] AdapterFault),
    /// The host or a resource failed (exit 1).
    #[error("{0}")]
    Host(String),
    /// The data directory cannot be created (the operator chose a place the host cannot write).
    #[error("cannot create data directory {}: {source}", path.display())]
    DataDirectory {
        /// The directory.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Another run holds the instance's lease (exit 6).
    #[error(transparent)]
    Busy(#[from] crate::lease::LeaseError),
}

/// A state write made under `held` failed: one refused by its fence marks the lease lost and is
/// reported as the lost lease (exit 6); any other is the host's failure.
pub(crate) fn journal_error(held: &crate::lease::Held, e: crate::state::StateError) -> OpError {
    match e {
        crate::state::StateError::Fenced { holder, .. } => {
            held.fenced_out(holder.as_deref());
            OpError::Busy(held.lost_error())
        }
        other => OpError::Host(other.to_string()),
    }
}

impl From<RuntimeError> for OpError {
    fn from(e: RuntimeError) -> OpError {
        match e {
            RuntimeError::Fault(f) => OpError::Adapter(f),
            RuntimeError::Component { .. } => OpError::Usage(e.to_string()),
            RuntimeError::Engine(m) => OpError::Host(m),
        }
    }
}
