//! Upshift: runs per-product upgrade adapters (WebAssembly components) and lends them sandboxed,
//! granted and audited capabilities to plan, back up, upgrade, verify and roll back.

pub mod adapters;
pub mod audit;
pub mod capdiff;
pub mod caps;
pub mod fleet;
pub mod grants;
pub mod lease;
pub mod lockfile;
pub mod ops;
pub mod queue;
pub mod runtime;
pub mod scaffold;
pub mod signing;
pub mod state;
pub mod state_pg;
pub mod tape;
