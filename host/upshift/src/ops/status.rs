//! `upshift status`: the fleet at a glance, read only. Per instance: its product and adapter,
//! the detected version and the facts behind it (a contradiction the adapter's rules found is
//! flagged), the health of its services, the release it may go to and what the adapter's rules
//! say about it, its last run, newest valid backup, unfinished runs and a held lease.
//!
//! Nothing is changed: no lease is taken, no run recorded. Detection and the health checks go
//! through the guarded capabilities like every other call (audited, the host's own calls with
//! detail [`STATUS`]). Instances are inspected concurrently (at most
//! [`StatusOptions::parallel`] at a time), each under [`StatusOptions::timeout`]: an instance
//! that does not answer is shown as such and does not hold up the rest.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::Serialize;

use crate::caps::CapError;
use crate::fleet::{AdapterRef, Instance};
use crate::runtime::bindings::Fact;
use crate::state::{BackupRecord, RunRecord};

use super::{OpError, Session};

/// How the host's own calls made for `status` are labelled in the audit log.
pub const STATUS: &str = "host status";

/// How `status` inspects the fleet.
#[derive(Debug, Clone, Copy)]
pub struct StatusOptions {
    /// How long one instance may take (loading its adapter, detection, health, planning).
    pub timeout: Duration,
    /// How many instances are inspected at once.
    pub parallel: usize,
}

impl Default for StatusOptions {
    fn default() -> Self {
        StatusOptions {
            timeout: Duration::from_secs(10),
            parallel: 32,
        }
    }
}

/// Whether the instance could be inspected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reach {
    /// Detected.
    Reachable,
    /// Detection could not reach the product (a database or service that does not answer).
    Unreachable,
    /// It did not answer within the timeout.
    TimedOut,
    /// Its adapter could not be loaded or misbehaved, or the fleet file's bindings are wrong.
    Error,
}

/// One service binding's health.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceHealth {
    /// The binding.
    pub binding: String,
    /// `healthy`, `unhealthy`, `stopped` or `unknown` (not inspectable).
    pub state: HealthState,
    /// What was seen.
    pub detail: String,
}

/// A service's health as `status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HealthState {
    /// Runs and its health check passes.
    Healthy,
    /// Runs but its health check fails.
    Unhealthy,
    /// Not running.
    Stopped,
    /// Could not be inspected (unbound, not granted, or the backend failed).
    Unknown,
}

/// Where the release `status` plans to comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetSource {
    /// The instance's `target` in the fleet file.
    Fleet,
    /// The newest release of the adapter's catalog.
    Catalog,
}

/// The release the instance may go to.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    /// The version.
    pub version: String,
    /// Where it came from.
    pub source: TargetSource,
}

/// What the adapter's rules say about going to the target.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum PlanSummary {
    /// Already there: nothing to do.
    UpToDate,
    /// A plan: from, to and how many steps.
    Plan {
        /// Versions passed through, first to last.
        path: Vec<String>,
        /// Steps in the plan.
        steps: usize,
    },
    /// The rules refuse it.
    Refused {
        /// The rule.
        rule: String,
        /// Why.
        reason: String,
        /// Versions to go through instead (empty: no path).
        path: Vec<String>,
        /// What to do.
        advice: String,
    },
}

/// An instance's last run.
#[derive(Debug, Clone, Serialize)]
pub struct RunBrief {
    /// Run id.
    pub id: String,
    /// `upgrade`, `restore` or `backup`.
    pub kind: String,
    /// Version before.
    pub from_version: String,
    /// Version asked for.
    pub to_version: String,
    /// How it ended (kebab-case), or `running`.
    pub outcome: String,
    /// RFC 3339.
    pub started_at: String,
    /// RFC 3339.
    pub finished_at: Option<String>,
}

impl RunBrief {
    fn of(run: &RunRecord) -> RunBrief {
        RunBrief {
            id: run.id.clone(),
            kind: run.kind.clone(),
            from_version: run.from_version.clone(),
            to_version: run.to_version.clone(),
            outcome: run.status.as_str().replace('_', "-"),
            started_at: run.started_at.clone(),
            finished_at: run.finished_at.clone(),
        }
    }
}

/// The newest valid backup.
#[derive(Debug, Clone, Serialize)]
pub struct BackupBrief {
    /// Backup id.
    pub id: String,
    /// Binding.
    pub binding: String,
    /// `dump`, `clone` or `snapshot`.
    pub method: String,
    /// Product version of the data.
    pub product_version: String,
    /// RFC 3339.
    pub created_at: String,
    /// Seconds since it was taken (when its time could be read).
    pub age_secs: Option<i64>,
}

impl BackupBrief {
    fn of(backup: &BackupRecord, now: chrono::DateTime<chrono::Utc>) -> BackupBrief {
        BackupBrief {
            id: backup.id.clone(),
            binding: backup.binding.clone(),
            method: backup.method.clone(),
            product_version: backup.product_version.clone(),
            created_at: backup.created_at.clone(),
            age_secs: chrono::DateTime::parse_from_rfc3339(&backup.created_at)
                .ok()
                .map(|t| (now - t.with_timezone(&chrono::Utc)).num_seconds()),
        }
    }
}

/// A lease someone holds on the instance.
#[derive(Debug, Clone, Serialize)]
pub struct LeaseBrief {
    /// Who holds it (host, process, what for).
    pub holder: String,
    /// Seconds until it expires without a heartbeat.
    pub expires_in_secs: i64,
}

/// One instance as `upshift status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceStatus {
    /// Instance name.
    pub instance: String,
    /// Product (the adapter's, or the fleet file's adapter reference until it is loaded).
    pub product: String,
    /// Adapter sha256 (when it loaded).
    pub adapter_digest: Option<String>,
    /// Whether it could be inspected.
    pub reach: Reach,
    /// Why not, when it could not.
    pub problem: Option<String>,
    /// The detected version.
    pub version: Option<String>,
    /// The facts detection found.
    pub facts: Vec<Fact>,
    /// A contradiction between version sources the adapter's rules found (rule `…-contradicts-…`).
    pub contradiction: Option<String>,
    /// Each service binding's health (one-shot jobs left out).
    pub health: Vec<ServiceHealth>,
    /// The release it may go to.
    pub target: Option<Target>,
    /// What the adapter's rules say about the target.
    pub plan: Option<PlanSummary>,
    /// Its last run.
    pub last_run: Option<RunBrief>,
    /// Its newest valid backup.
    pub newest_backup: Option<BackupBrief>,
    /// Runs not finished (`upshift resume` or `abandon` them).
    pub unfinished_runs: Vec<RunBrief>,
    /// A lease someone holds on it now.
    pub lease: Option<LeaseBrief>,
    /// How long inspecting it took, in milliseconds.
    pub took_ms: u64,
}

impl InstanceStatus {
    fn new(instance: &Instance) -> InstanceStatus {
        InstanceStatus {
            instance: instance.name.clone(),
            product: match &instance.adapter {
                AdapterRef::Bundled(name) => name.clone(),
                AdapterRef::File(path) => path.display().to_string(),
            },
            adapter_digest: None,
            reach: Reach::Error,
            problem: None,
            version: None,
            facts: Vec::new(),
            contradiction: None,
            health: Vec::new(),
            target: None,
            plan: None,
            last_run: None,
            newest_backup: None,
            unfinished_runs: Vec::new(),
            lease: None,
            took_ms: 0,
        }
    }
}

/// The status of each of `instances`, in their order. Errors only when the state store cannot
/// be read; an instance that cannot be inspected is reported in its entry.
pub async fn status(
    session: &Session,
    instances: &[&Instance],
    options: StatusOptions,
) -> Result<Vec<InstanceStatus>, OpError> {
    let parallel = options.parallel.max(1);
    let results: Vec<Result<InstanceStatus, OpError>> =
        futures_util::stream::iter(instances.iter().map(|i| one(session, i, options)))
            .buffered(parallel)
            .collect()
            .await;
    results.into_iter().collect()
}

/// One instance: the records first (never slowed by the instance), then the live part under
/// the timeout.
async fn one(
    session: &Session,
    instance: &Instance,
    options: StatusOptions,
) -> Result<InstanceStatus, OpError> {
    let started = Instant::now();
    let mut status = InstanceStatus::new(instance);
    records(session, &instance.name, &mut status).await?;
    // Loading (and, the first time, compiling) the adapter is the host's own work, not the
    // instance's answer: it is not timed against the instance.
    let loaded = match super::apply::prepare(session, instance).await {
        Ok(loaded) => loaded,
        Err(e) => {
            status.problem = Some(e.to_string());
            status.took_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            return Ok(status);
        }
    };
    if tokio::time::timeout(
        options.timeout,
        live(session, instance, loaded, &mut status),
    )
    .await
    .is_err()
    {
        status.reach = Reach::TimedOut;
        status.problem = Some(format!(
            "no answer within {:.1} s (set with --timeout)",
            options.timeout.as_secs_f64()
        ));
    }
    status.took_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    Ok(status)
}

/// What the state store knows: last run, unfinished runs, newest valid backup, lease.
async fn records(
    session: &Session,
    name: &str,
    status: &mut InstanceStatus,
) -> Result<(), OpError> {
    let host = |e: crate::state::StateError| OpError::Host(e.to_string());
    let state = &session.state;
    status.last_run = state
        .runs(Some(name), 1)
        .await
        .map_err(host)?
        .first()
        .map(RunBrief::of);
    status.unfinished_runs = state
        .unfinished_runs(name)
        .await
        .map_err(host)?
        .iter()
        .map(RunBrief::of)
        .collect();
    let now = chrono::Utc::now();
    status.newest_backup = state
        .backups(Some(name))
        .await
        .map_err(host)?
        .iter()
        .filter(|b| b.valid)
        .max_by(|a, b| a.created_at.cmp(&b.created_at))
        .map(|b| BackupBrief::of(b, now));
    status.lease = state
        .holder(name)
        .await
        .map_err(|e| OpError::Host(e.to_string()))?
        .map(|row| LeaseBrief {
            holder: session.mask(&row.holder).into_owned(),
            expires_in_secs: ((row.expires_ms - row.now_ms) / 1000).max(0),
        });
    Ok(())
}

/// Detect, check health and plan: what is filled in before a timeout stays.
async fn live(
    session: &Session,
    instance: &Instance,
    (adapter, caps): (
        crate::runtime::LoadedAdapter,
        std::sync::Arc<crate::caps::InstanceCaps>,
    ),
    status: &mut InstanceStatus,
) {
    status.product = adapter.manifest.product.clone();
    status.adapter_digest = Some(adapter.digest.clone());
    status.target = match &instance.target {
        Some(v) => Some(Target {
            version: v.clone(),
            source: TargetSource::Fleet,
        }),
        None => newest_in_catalog(adapter.manifest.catalog.as_deref()).map(|v| Target {
            version: v,
            source: TargetSource::Catalog,
        }),
    };
    status.health = health(instance, &caps).await;
    let detection = match super::apply::detect(session, &adapter, &caps).await {
        Ok(d) => d,
        Err(e) => {
            status.reach = match e {
                OpError::Host(_) => Reach::Unreachable,
                _ => Reach::Error,
            };
            status.problem = Some(e.to_string());
            return;
        }
    };
    status.reach = Reach::Reachable;
    status.version = Some(detection.version.clone());
    status.facts = detection.facts.clone();
    let Some(target) = status.target.clone() else {
        return;
    };
    let same = match (
        upshift_model::version::check(&detection.version),
        upshift_model::version::check(&target.version),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if same {
        status.plan = Some(PlanSummary::UpToDate);
        return;
    }
    status.plan =
        match super::apply::call_plan(session, &adapter, &detection, &target.version).await {
            Ok(Ok(plan)) => Some(PlanSummary::Plan {
                path: vec![plan.from_version.clone(), plan.to_version.clone()],
                steps: plan.steps.len(),
            }),
            Ok(Err(refusal)) => {
                if refusal.rule.contains("-contradicts-") {
                    status.contradiction = Some(format!("{}: {}", refusal.rule, refusal.reason));
                }
                Some(PlanSummary::Refused {
                    rule: refusal.rule,
                    reason: refusal.reason,
                    path: refusal.path,
                    advice: refusal.advice,
                })
            }
            Err(e) => {
                status.problem = Some(e.to_string());
                None
            }
        };
}

/// Each service binding's health, through the guarded service capability.
async fn health(instance: &Instance, caps: &crate::caps::InstanceCaps) -> Vec<ServiceHealth> {
    let mut out = Vec::new();
    for binding in instance.service.keys() {
        let service = caps.service();
        if service.is_job(binding) {
            continue;
        }
        let unknown = |e: CapError| ServiceHealth {
            binding: binding.clone(),
            state: HealthState::Unknown,
            detail: e.to_string(),
        };
        let seen = match service.inspect(binding, Some(STATUS)).await {
            Err(e) => unknown(e),
            Ok(s) if !s.running => ServiceHealth {
                binding: binding.clone(),
                state: HealthState::Stopped,
                detail: s.detail,
            },
            Ok(_) => match service.check_health(binding, STATUS).await {
                Ok((healthy, detail)) => ServiceHealth {
                    binding: binding.clone(),
                    state: if healthy {
                        HealthState::Healthy
                    } else {
                        HealthState::Unhealthy
                    },
                    detail,
                },
                Err(e) => unknown(e),
            },
        };
        out.push(seen);
    }
    out
}

/// The newest release a catalog requirement (`>=3.3.1, <=3.21.1`) names: its `<=` or `=` bound
/// with every part given.
pub fn newest_in_catalog(catalog: Option<&str>) -> Option<String> {
    let req = semver::VersionReq::parse(catalog?).ok()?;
    req.comparators
        .iter()
        .filter(|c| matches!(c.op, semver::Op::LessEq | semver::Op::Exact))
        .filter_map(|c| {
            Some(semver::Version {
                major: c.major,
                minor: c.minor?,
                patch: c.patch?,
                pre: c.pre.clone(),
                build: semver::BuildMetadata::EMPTY,
            })
        })
        .max()
        .map(|v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::newest_in_catalog;

    #[test]
    fn the_catalogs_newest_release_is_its_upper_bound() {
        assert_eq!(
            newest_in_catalog(Some(">=3.3.1, <=3.21.1")).as_deref(),
            Some("3.21.1")
        );
        assert_eq!(newest_in_catalog(Some("=1.2.3")).as_deref(), Some("1.2.3"));
        assert_eq!(newest_in_catalog(Some(">=1.0.0, <2")), None);
        assert_eq!(newest_in_catalog(None), None);
    }
}
