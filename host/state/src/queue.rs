//! The work queue agents claim instance runs from. A small trait, so another engine than
//! PostgreSQL (`FOR UPDATE SKIP LOCKED` in [`crate::postgres`]) could serve it.

use crate::StateError;

/// One instance to upgrade.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueItem {
    /// Instance name in the fleet file.
    pub instance: String,
    /// Target version.
    pub target: String,
}

/// An item an agent claimed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The work.
    pub item: QueueItem,
    /// It had been claimed by an agent that died (its lease is gone): its run may need resuming.
    pub reclaimed: bool,
    /// When it was enqueued (RFC 3339): runs started since belong to it.
    pub enqueued_at: String,
}

/// Where agents find work.
pub trait WorkQueue: Send + Sync {
    /// Queue `items` (an instance already queued and not done keeps its place); returns how many
    /// were queued.
    fn enqueue(&self, items: &[QueueItem]) -> Result<usize, StateError>;
    /// Claim the next item: pending, or claimed by an agent whose lease expired.
    fn claim(&self, agent: &str) -> Result<Option<Claim>, StateError>;
    /// Mark an item done with its outcome.
    fn finish(&self, instance: &str, outcome: &str) -> Result<(), StateError>;
    /// Items not done yet (pending or claimed).
    fn remaining(&self) -> Result<usize, StateError>;
}
