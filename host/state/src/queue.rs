//! The work queue agents claim instance runs from. A small trait, so another engine than
//! PostgreSQL (`FOR UPDATE SKIP LOCKED` in [`crate::postgres`]) could serve it.

use crate::StateFuture;

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

/// Where agents find work. Boxed futures, so it can be handed out as `&dyn WorkQueue`.
pub trait WorkQueue: Send + Sync {
    /// Queue `items` (an instance already queued and not done keeps its place); returns how many
    /// were queued.
    fn enqueue<'a>(&'a self, items: &'a [QueueItem]) -> StateFuture<'a, usize>;
    /// Claim the next item: pending, or claimed by an agent whose lease expired.
    fn claim<'a>(&'a self, agent: &'a str) -> StateFuture<'a, Option<Claim>>;
    /// Mark an item done with its outcome.
    fn finish<'a>(&'a self, instance: &'a str, outcome: &'a str) -> StateFuture<'a, ()>;
    /// Items not done yet (pending or claimed).
    fn remaining(&self) -> StateFuture<'_, usize>;
}
