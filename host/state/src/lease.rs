//! One lease per instance: only its holder may act on the instance. A lease has an expiry (a
//! holder that dies loses it after its time-to-live), a heartbeat that extends it while the
//! holder works, and a fencing token that grows with every acquisition, so a holder whose lease
//! moved to someone else is refused before it touches anything again.
//!
//! The rules are written here once; the store behind them is a small trait ([`LeaseRows`]) that
//! [`crate::store::Store`] implements once for SQLite and PostgreSQL alike.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use upshift_model::tenure::Tenure;

/// How long a lease lasts without a heartbeat unless the host is told otherwise.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30);

/// A held lease: also the fence every state write made under it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The instance it covers.
    pub instance: String,
    /// Who holds it (`upshift on HOST pid N (label)`).
    pub holder: String,
    /// The fencing token: larger than every earlier holder's.
    pub token: i64,
    /// When it runs out unless renewed, by the store's clock (milliseconds since the epoch).
    pub expires_ms: i64,
}

/// Why a lease could not be had or kept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    /// Someone else holds it and it has not expired.
    #[error(
        "instance `{instance}` is being worked on by {holder} (lease token {token}, expires in {seconds} s); wait for it to finish, or for the lease to expire if that holder died"
    )]
    Held {
        /// Instance.
        instance: String,
        /// The current holder.
        holder: String,
        /// Its token.
        token: i64,
        /// Seconds until it expires.
        seconds: i64,
    },
    /// Our lease expired or was taken over: we must not act any more.
    #[error(
        "the lease on instance `{instance}` (token {token}) was lost{by}; this run stopped before touching anything else"
    )]
    Lost {
        /// Instance.
        instance: String,
        /// Our token.
        token: i64,
        /// Who holds it now, if anyone (` to <holder>`).
        by: String,
    },
    /// The instance has an unfinished run: nothing new starts on it until that run is resumed
    /// or abandoned.
    #[error("{0}")]
    Unfinished(Box<UnfinishedRun>),
    /// The store failed.
    #[error("lease store: {0}")]
    Store(String),
}

/// An unfinished run that stops new runs on its instance, as the refusal names it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "instance `{instance}` has an unfinished run {run} ({kind}, started {started_at}, {state}); its last journaled step: {last_step}. Nothing was changed. {next}"
)]
pub struct UnfinishedRun {
    /// Instance.
    pub instance: String,
    /// The unfinished run's id.
    pub run: String,
    /// Its kind (`upgrade`, `restore`, `backup`).
    pub kind: String,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// Its status and, if known, that its process is gone.
    pub state: String,
    /// Its last journaled step: phase, id, status, when it started and finished.
    pub last_step: String,
    /// The exact commands that finish it.
    pub next: String,
}

/// A lease operation under way (boxed, so [`LeaseStore`] can be used as `Arc<dyn LeaseStore>`).
pub type LeaseFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, LeaseError>> + Send + 'a>>;

/// The rows behind leases: the few atomic statements a store must provide (written once, for
/// every engine, in [`crate::store`]). Every [`LeaseStore`] decision (what taking, renewing and
/// checking mean, the errors) is made once, on top of these. Expiry times are the store's own
/// clock (the database server's), so hosts on several machines never compare their clocks.
pub trait LeaseRows: Send + Sync {
    /// Take the lease of `instance` if it is free, expired or already `holder`'s, incrementing
    /// its token, in one atomic statement; the new token and expiry, or `None`.
    fn try_take(
        &self,
        instance: &str,
        holder: &str,
        ttl_ms: i64,
    ) -> impl Future<Output = Result<Option<(i64, i64)>, LeaseError>> + Send;
    /// Extend the lease held under `token` by `ttl_ms` from now, if the token is still the
    /// instance's (an expired lease nobody took is still ours: nobody else acted); the new
    /// expiry, or `None`.
    fn try_extend(
        &self,
        instance: &str,
        token: i64,
        ttl_ms: i64,
    ) -> impl Future<Output = Result<Option<i64>, LeaseError>> + Send;
    /// Move the lease held under `token` to `holder`, incrementing the token; the new token and
    /// expiry.
    fn try_move(
        &self,
        instance: &str,
        token: i64,
        holder: &str,
        ttl_ms: i64,
    ) -> impl Future<Output = Result<Option<(i64, i64)>, LeaseError>> + Send;
    /// The lease row: holder, token, expiry, and the store's clock now (all ms).
    fn row(
        &self,
        instance: &str,
    ) -> impl Future<Output = Result<Option<LeaseRow>, LeaseError>> + Send;
    /// Delete the lease held under `token`.
    fn delete(
        &self,
        instance: &str,
        token: i64,
    ) -> impl Future<Output = Result<(), LeaseError>> + Send;
}

/// A lease row as the store has it, with the store's clock at the moment it was read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseRow {
    /// The holder.
    pub holder: String,
    /// Its token.
    pub token: i64,
    /// Its expiry (ms, the store's clock).
    pub expires_ms: i64,
    /// The store's clock when read (ms).
    pub now_ms: i64,
}

fn granted(instance: &str, holder: &str, token: i64, expires_ms: i64) -> Lease {
    Lease {
        instance: instance.to_string(),
        holder: holder.to_string(),
        token,
        expires_ms,
    }
}

/// Why `lease` is no longer ours, saying who has it now if anyone.
async fn lost(rows: &impl LeaseRows, lease: &Lease) -> LeaseError {
    let by = match rows.row(&lease.instance).await {
        Ok(Some(row)) if row.token != lease.token => format!(" to {}", row.holder),
        Ok(_) => " (it was released)".to_string(),
        Err(e) => format!(" (the store failed: {e})"),
    };
    LeaseError::Lost {
        instance: lease.instance.clone(),
        token: lease.token,
        by,
    }
}

/// `ttl` in milliseconds.
pub(crate) fn ttl_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)
}

impl<T: LeaseRows> LeaseStore for T {
    fn acquire<'a>(
        &'a self,
        instance: &'a str,
        holder: &'a str,
        ttl: Duration,
    ) -> LeaseFuture<'a, Lease> {
        Box::pin(async move {
            if let Some((token, expires)) = self.try_take(instance, holder, ttl_ms(ttl)).await? {
                return Ok(granted(instance, holder, token, expires));
            }
            let row = self.row(instance).await?.unwrap_or_default();
            Err(LeaseError::Held {
                instance: instance.to_string(),
                holder: row.holder,
                token: row.token,
                seconds: ((row.expires_ms - row.now_ms) / 1000).max(0),
            })
        })
    }

    fn renew<'a>(&'a self, lease: &'a Lease, ttl: Duration) -> LeaseFuture<'a, Lease> {
        Box::pin(async move {
            match self
                .try_extend(&lease.instance, lease.token, ttl_ms(ttl))
                .await?
            {
                Some(expires_ms) => Ok(Lease {
                    expires_ms,
                    ..lease.clone()
                }),
                None => Err(lost(self, lease).await),
            }
        })
    }

    fn check<'a>(&'a self, lease: &'a Lease) -> LeaseFuture<'a, ()> {
        Box::pin(async move {
            match self.row(&lease.instance).await? {
                Some(row) if row.token == lease.token => Ok(()),
                _ => Err(lost(self, lease).await),
            }
        })
    }

    fn release<'a>(&'a self, lease: &'a Lease) -> LeaseFuture<'a, ()> {
        Box::pin(self.delete(&lease.instance, lease.token))
    }

    fn take_over<'a>(
        &'a self,
        instance: &'a str,
        token: i64,
        holder: &'a str,
        ttl: Duration,
    ) -> LeaseFuture<'a, Lease> {
        Box::pin(async move {
            match self.try_move(instance, token, holder, ttl_ms(ttl)).await? {
                Some((token, expires)) => Ok(granted(instance, holder, token, expires)),
                // Someone else was quicker: acquire says who.
                None => self.acquire(instance, holder, ttl).await,
            }
        })
    }

    fn holder<'a>(&'a self, instance: &'a str) -> LeaseFuture<'a, Option<LeaseRow>> {
        Box::pin(async move {
            Ok(self
                .row(instance)
                .await?
                .filter(|row| row.expires_ms > row.now_ms))
        })
    }
}

/// Where leases live.
pub trait LeaseStore: Send + Sync {
    /// Take the lease of `instance` for `holder` unless someone else holds an unexpired one.
    fn acquire<'a>(
        &'a self,
        instance: &'a str,
        holder: &'a str,
        ttl: Duration,
    ) -> LeaseFuture<'a, Lease>;
    /// Extend our lease; fails with `Lost` if it moved to another holder or was released.
    fn renew<'a>(&'a self, lease: &'a Lease, ttl: Duration) -> LeaseFuture<'a, Lease>;
    /// Whether we still hold it (the token is still the instance's).
    fn check<'a>(&'a self, lease: &'a Lease) -> LeaseFuture<'a, ()>;
    /// Give it up (only if still ours).
    fn release<'a>(&'a self, lease: &'a Lease) -> LeaseFuture<'a, ()>;
    /// Take over the lease held under `token` by a holder known to be dead.
    fn take_over<'a>(
        &'a self,
        instance: &'a str,
        token: i64,
        holder: &'a str,
        ttl: Duration,
    ) -> LeaseFuture<'a, Lease>;
    /// The unexpired lease of `instance`, if anyone holds one: read only, nothing taken.
    fn holder<'a>(&'a self, instance: &'a str) -> LeaseFuture<'a, Option<LeaseRow>>;
}

/// Whether `holder` names a process on this machine that no longer exists: its lease need not
/// be waited out.
pub fn holder_is_dead_here(holder: &str) -> bool {
    let here = holder_name("");
    let host_of = |h: &str| h.split(" pid ").next().map(str::to_string);
    let Some(pid) = holder
        .split(" pid ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|p| p.parse::<u32>().ok())
    else {
        return false;
    };
    host_of(holder) == host_of(&here)
        && pid != std::process::id()
        && !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Who this process is, for lease holders: host name, pid and a label.
pub fn holder_name(label: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    format!("upshift on {host} pid {} ({label})", std::process::id())
}

/// A lease held for the length of an operation, renewed by a heartbeat task until released.
///
/// What the holder knows of it is its [`Tenure`]: certain for a TTL from each renewal it sent,
/// by its own monotonic clock. The heartbeat renews it every third of the TTL; while the store
/// cannot be reached it keeps trying, and once the lease has been unconfirmed for longer than
/// [`Held::patience`] (or a renewal finds another token) the lease is lost for good. Every
/// action checks the tenure first: [`Held::check`] before each step, the capability guard
/// before each call.
///
/// Give it up with [`Held::release`]. Dropping it releases it too, as a fallback for early
/// returns: on the multi-threaded runtime under `block_in_place` (the worker hands its other
/// tasks on while the short statement runs), elsewhere by a spawned task.
pub struct Held {
    store: Arc<dyn LeaseStore>,
    lease: Lease,
    tenure: Arc<Tenure>,
    heartbeat: tokio::task::JoinHandle<()>,
    released: bool,
}

/// The part of the TTL an action needs left to start: a quarter.
fn margin_of(ttl: Duration) -> Duration {
    ttl / 4
}

/// How long a lease may stay unconfirmed (the store unreachable) before its holder gives it up:
/// two TTLs, at least ten seconds. By then another holder may have taken it over.
fn patience_of(ttl: Duration) -> Duration {
    (ttl * 2).max(Duration::from_secs(10))
}

impl Held {
    /// Acquire the lease of `instance` and start its heartbeat (every third of the TTL).
    /// A lease held by anyone else, even a holder known to be dead, is refused ([`LeaseError::Held`]):
    /// whether a dead holder's lease may be taken over depends on the run it left, which the
    /// caller decides ([`Held::take_over`]).
    pub async fn acquire(
        store: Arc<dyn LeaseStore>,
        instance: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Held, LeaseError> {
        let sent = Instant::now();
        let lease = store.acquire(instance, holder, ttl).await?;
        Ok(Held::beat(store, lease, ttl, sent))
    }

    /// Take over the lease held under `token` by a holder known to be dead, and start its
    /// heartbeat.
    pub async fn take_over(
        store: Arc<dyn LeaseStore>,
        instance: &str,
        token: i64,
        holder: &str,
        ttl: Duration,
    ) -> Result<Held, LeaseError> {
        let sent = Instant::now();
        let lease = store.take_over(instance, token, holder, ttl).await?;
        Ok(Held::beat(store, lease, ttl, sent))
    }

    /// Hold `lease` (granted by a request sent at `sent`), renewing it every third of the TTL.
    fn beat(store: Arc<dyn LeaseStore>, lease: Lease, ttl: Duration, sent: Instant) -> Held {
        let tenure = Arc::new(Tenure::new(
            &lease.instance,
            lease.token,
            ttl,
            margin_of(ttl),
            sent,
        ));
        let heartbeat = {
            let (store, tenure, lease) = (store.clone(), tenure.clone(), lease.clone());
            tokio::spawn(async move {
                let mut pause = ttl / 3;
                loop {
                    tokio::time::sleep(pause).await;
                    match confirm_once(store.as_ref(), &lease, &tenure).await {
                        Ok(()) => pause = ttl / 3,
                        Err(Confirm::Lost) => return,
                        // Unreachable: try again soon, so the lease is confirmed as soon as the
                        // store is back.
                        Err(Confirm::Unreachable) => pause = (ttl / 10).max(RETRY),
                    }
                }
            })
        };
        Held {
            store,
            lease,
            tenure,
            heartbeat,
            released: false,
        }
    }

    /// The lease: also the fence of every state write made under it.
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// What this holder knows of the lease, shared with the capability guard.
    pub fn tenure(&self) -> &Arc<Tenure> {
        &self.tenure
    }

    /// How long the lease may stay unconfirmed before this holder gives it up.
    pub fn patience(&self) -> Duration {
        patience_of(self.tenure.ttl())
    }

    /// Record that the lease is lost: a fenced write matched nothing. Nothing more is done
    /// under it.
    pub fn mark_lost(&self, why: &str) {
        self.tenure.mark_lost(why);
    }

    /// A write fenced by this lease matched nothing: record the lease lost, naming who holds
    /// it now (`holder`) if the store said.
    pub fn fenced_out(&self, holder: Option<&str>) {
        self.tenure.mark_lost(&match holder {
            Some(h) => format!(" to {h}"),
            None => " (it was released)".to_string(),
        });
    }

    /// Whether the lease is known to be lost.
    pub fn is_lost(&self) -> bool {
        self.tenure.is_lost()
    }

    /// The error that says this lease is lost.
    pub fn lost_error(&self) -> LeaseError {
        LeaseError::Lost {
            instance: self.lease.instance.clone(),
            token: self.lease.token,
            by: match self.tenure.lost() {
                upshift_model::tenure::Lapse::Lost { why, .. } => why,
                other => format!(" ({other})"),
            },
        }
    }

    /// The check made before every step: the lease is confirmed by a renewal now (so the step
    /// starts with a whole TTL ahead of it). While the store cannot be reached it waits, retrying,
    /// up to [`Held::patience`] past the lease's certain end; then, or when the token moved, the
    /// lease is lost.
    pub async fn check(&self) -> Result<(), LeaseError> {
        loop {
            match confirm_once(self.store.as_ref(), &self.lease, &self.tenure).await {
                Ok(()) => return Ok(()),
                Err(Confirm::Lost) => return Err(self.lost_error()),
                Err(Confirm::Unreachable) => tokio::time::sleep(RETRY).await,
            }
        }
    }

    /// Stop the heartbeat and give the lease up (a no-op if it is no longer ours).
    pub async fn release(mut self) -> Result<(), LeaseError> {
        self.heartbeat.abort();
        self.released = true;
        self.store.release(&self.lease).await
    }
}

/// How soon a renewal is tried again after the store could not be reached.
const RETRY: Duration = Duration::from_millis(250);

/// Why a renewal did not confirm a lease.
enum Confirm {
    /// The lease is lost (now marked so).
    Lost,
    /// The store could not be reached; the lease is not lost yet.
    Unreachable,
}

/// Renew `lease` once and record the outcome in `tenure`: confirmed, lost (the token moved, or
/// the lease stayed unconfirmed past the holder's patience), or not known yet.
async fn confirm_once(
    store: &dyn LeaseStore,
    lease: &Lease,
    tenure: &Tenure,
) -> Result<(), Confirm> {
    if tenure.is_lost() {
        return Err(Confirm::Lost);
    }
    let sent = Instant::now();
    match store.renew(lease, tenure.ttl()).await {
        Ok(_) if !tenure.is_lost() => {
            tenure.renewed(sent);
            Ok(())
        }
        Ok(_) => Err(Confirm::Lost),
        Err(LeaseError::Lost { by, .. }) => {
            tenure.mark_lost(&by);
            Err(Confirm::Lost)
        }
        Err(e) => {
            // Unconfirmed past the lease's certain end and the holder's patience: another
            // holder may have it by now.
            let overdue = tenure.overdue();
            if overdue > patience_of(tenure.ttl()) {
                tenure.mark_lost(&format!(
                    " (it could not be confirmed for {} s past its end: {e})",
                    overdue.as_secs()
                ));
                return Err(Confirm::Lost);
            }
            Err(Confirm::Unreachable)
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.heartbeat.abort();
        if self.released {
            return;
        }
        let (store, lease) = (self.store.clone(), self.lease.clone());
        let release = async move {
            // Not ours any more, or the store failed: it expires by itself.
            let _ = store.release(&lease).await;
        };
        use tokio::runtime::{Handle, RuntimeFlavor};
        match Handle::try_current() {
            Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(|| handle.block_on(release));
            }
            Ok(handle) => drop(handle.spawn(release)),
            // No runtime left to run it on: the lease expires by itself.
            Err(_) => {}
        }
    }
}
