//! How sure a lease holder is that its lease is still its own, as every part of the host that
//! acts on an instance sees it: the lease's heartbeat updates it, the capability guard reads it
//! before every call, and a run stops when it is lost.
//!
//! The holder's clock is its own monotonic one: a renewal sent at instant `t` makes the lease
//! certain until `t + ttl` (the store counts its expiry from when it received the renewal, which
//! is later), so no clock of another machine is trusted. Below a safety margin the lease is
//! *unconfirmed*: no new action starts until a renewal confirms it or the lease is found lost.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The holder's view of one lease.
#[derive(Debug)]
pub struct Tenure {
    instance: String,
    token: i64,
    ttl: Duration,
    margin: Duration,
    certain_until: Mutex<Instant>,
    lost: AtomicBool,
    why_lost: Mutex<Option<String>>,
}

/// Why an action may not start under a lease now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Lapse {
    /// The lease moved to another holder, expired or could not be confirmed in time: nothing
    /// more may be done under it.
    #[error(
        "the lease on instance `{instance}` (token {token}) is lost{why}; nothing more is done under it"
    )]
    Lost {
        /// Instance.
        instance: String,
        /// The lost token.
        token: i64,
        /// Why (` to <holder>`, ` (…)`), or empty.
        why: String,
    },
    /// Less than the safety margin is left and no renewal has confirmed the lease since.
    #[error(
        "the lease on instance `{instance}` (token {token}) has not been confirmed for {overdue_ms} ms past its safety margin; waiting for its heartbeat"
    )]
    Unconfirmed {
        /// Instance.
        instance: String,
        /// Its token.
        token: i64,
        /// How long past the margin it is.
        overdue_ms: u64,
    },
}

impl Tenure {
    /// A lease of `instance` under `token`, granted by a request sent at `sent`, lasting `ttl`
    /// unless renewed; actions need more than `margin` of it left.
    pub fn new(
        instance: &str,
        token: i64,
        ttl: Duration,
        margin: Duration,
        sent: Instant,
    ) -> Tenure {
        Tenure {
            instance: instance.to_string(),
            token,
            ttl,
            margin,
            certain_until: Mutex::new(sent + ttl),
            lost: AtomicBool::new(false),
            why_lost: Mutex::new(None),
        }
    }

    /// The instance.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The fencing token.
    pub fn token(&self) -> i64 {
        self.token
    }

    /// How long the lease lasts without renewal.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A renewal sent at `sent` succeeded.
    pub fn renewed(&self, sent: Instant) {
        if let Ok(mut until) = self.certain_until.lock() {
            *until = (*until).max(sent + self.ttl);
        }
    }

    /// The lease is lost (`why` is appended to messages: ` to <holder>`, ` (…)`). Final.
    pub fn mark_lost(&self, why: &str) {
        if let Ok(mut slot) = self.why_lost.lock()
            && slot.is_none()
        {
            *slot = Some(why.to_string());
        }
        self.lost.store(true, Ordering::SeqCst);
    }

    /// Whether the lease is lost.
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// How long the lease is certain to remain ours (zero once past).
    pub fn remaining(&self) -> Duration {
        self.certain_until
            .lock()
            .map(|until| until.saturating_duration_since(Instant::now()))
            .unwrap_or_default()
    }

    /// How long past its certain end the lease is unconfirmed (zero while it is certain).
    pub fn overdue(&self) -> Duration {
        self.certain_until
            .lock()
            .map(|until| Instant::now().saturating_duration_since(*until))
            .unwrap_or_default()
    }

    /// The error that says the lease is lost.
    pub fn lost(&self) -> Lapse {
        Lapse::Lost {
            instance: self.instance.clone(),
            token: self.token,
            why: self
                .why_lost
                .lock()
                .ok()
                .and_then(|w| w.clone())
                .unwrap_or_default(),
        }
    }

    /// Whether an action may start now: the lease is not lost and more than the margin is left.
    pub fn usable(&self) -> Result<(), Lapse> {
        if self.is_lost() {
            return Err(self.lost());
        }
        let left = self.remaining();
        if left > self.margin {
            return Ok(());
        }
        Err(Lapse::Unconfirmed {
            instance: self.instance.clone(),
            token: self.token,
            overdue_ms: u64::try_from((self.margin - left).as_millis()).unwrap_or(u64::MAX),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_lease_is_usable_until_its_margin_and_a_renewal_restores_it() {
        let ttl = Duration::from_secs(30);
        let long_ago = Instant::now() - Duration::from_secs(25);
        let t = Tenure::new("i", 3, ttl, Duration::from_secs(10), long_ago);
        assert!(matches!(
            t.usable(),
            Err(Lapse::Unconfirmed { token: 3, .. })
        ));
        t.renewed(Instant::now());
        assert_eq!(t.usable(), Ok(()));
        // An older renewal's answer arriving late never shortens what a newer one confirmed.
        t.renewed(long_ago);
        assert_eq!(t.usable(), Ok(()));
    }

    #[test]
    fn a_lost_lease_stays_lost_with_its_first_reason() {
        let t = Tenure::new(
            "i",
            3,
            Duration::from_secs(30),
            Duration::from_secs(5),
            Instant::now(),
        );
        t.mark_lost(" to upshift on b");
        t.mark_lost(" (expired)");
        t.renewed(Instant::now());
        let e = t.usable().expect_err("lost");
        assert!(e.to_string().contains("to upshift on b"), "{e}");
    }
}
