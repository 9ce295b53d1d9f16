//! Upshift: runs per-product upgrade adapters (WebAssembly components) and lends them sandboxed,
//! granted and audited capabilities to plan, back up, upgrade, verify and roll back.
//!
//! This crate is the library an embedder uses: the fleet file, adapter trust and approvals, and
//! the operations (plan, apply, resume, rollout, backup, restore, history). The layers below it
//! are re-exported under their own names: [`model`] (vocabulary, no I/O), [`caps`] (the guarded
//! capabilities), [`state`] (runs, backups, leases, queue) and [`runtime`] (the sandbox).

pub mod adapters;
pub mod fleet;
pub mod integrity;
pub mod lockfile;
pub mod ops;
pub mod signing;
pub mod tape;

pub use upshift_caps as caps;
pub use upshift_caps::audit;
pub use upshift_model as model;
pub use upshift_model::{capdiff, grants};
pub use upshift_runtime as runtime;
pub use upshift_state as state;
pub use upshift_state::{lease, queue};
