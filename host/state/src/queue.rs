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
    /// The operator passed `--allow-unknown` when queueing it: the adapter may plan a target
    /// release its catalog does not know.
    pub allow_unknown: bool,
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
    /// The agent that claimed it.
    pub agent: String,
    /// The fencing number of this claim: the row's claim count after it. A later claim of the
    /// item (by another agent, after this one's lease ran out) has a higher one.
    pub claim: i64,
}

/// Where agents find work. Boxed futures, so it can be handed out as `&dyn WorkQueue`.
pub trait WorkQueue: Send + Sync {
    /// Queue `items` (an instance already queued and not done keeps its place); returns how many
    /// were queued.
    fn enqueue<'a>(&'a self, items: &'a [QueueItem]) -> StateFuture<'a, usize>;
    /// Claim the next item: pending, or claimed by an agent whose lease expired.
    fn claim<'a>(&'a self, agent: &'a str) -> StateFuture<'a, Option<Claim>>;
    /// Mark the claimed item done with its outcome, if `claim` is still the item's current
    /// claim; `false` (and nothing written) when another agent claimed it again meanwhile.
    fn finish<'a>(&'a self, claim: &'a Claim, outcome: &'a str) -> StateFuture<'a, bool>;
    /// Items not done yet (pending or claimed).
    fn remaining(&self) -> StateFuture<'_, usize>;
}
