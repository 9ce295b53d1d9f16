//! Preflight: before a plan stops anything, the world must be as the plan assumes. Each service
//! the plan touches is healthy, or deliberately stopped (and no copy of it runs unknown to
//! Upshift); each database it backs up has no sessions but Upshift's own and those of the
//! services the plan stops; and there is room for the backups. A failed check refuses the plan
//! with the check's rule (`preflight-health`, `preflight-unadopted`, `preflight-sessions`,
//! `preflight-disk`), what was seen and what to do.
//!
//! Also here: the operator's `upshift adopt`, `start` and `stop`, through the same guarded
//! service capability and under the instance's lease.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::caps::db::DbSession;
use crate::caps::{CapError, InstanceCaps, service};
use crate::fleet::Instance;
use crate::runtime::bindings::{Action, BackupMethod, Plan, Refusal};

use super::plan::Prior;
use super::{OpError, Session};

/// How the host's own preflight calls are labelled in the audit log.
pub const PREFLIGHT: &str = "host preflight";

/// Extra room asked for beyond a backup's estimate: a tenth, plus this.
const DISK_MARGIN_BYTES: u64 = 8 << 20;

/// How long sessions that are closing (a client that just let go) are given to go away before
/// they count.
const SESSION_GRACE: Duration = Duration::from_secs(3);

/// One preflight check as `plan` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PreflightCheck {
    /// `health`, `sessions` or `disk`.
    pub check: String,
    /// The binding (or directory) checked.
    pub subject: String,
    /// Whether it passed (a check that could not be made passes, saying why).
    pub passed: bool,
    /// What was seen.
    pub detail: String,
}

/// What the preflight found: every check, and the refusal when one failed.
#[derive(Debug, Clone, Default)]
pub struct Preflight {
    /// Every check made, in order.
    pub checks: Vec<PreflightCheck>,
    /// The refusal when any check failed: the first failure's rule, every failure's reason.
    pub refusal: Option<Refusal>,
}

/// A failed check: its rule, what was seen, what to do.
struct Failure {
    rule: &'static str,
    reason: String,
    advice: String,
}

#[derive(Default)]
struct Findings {
    checks: Vec<PreflightCheck>,
    failures: Vec<Failure>,
}

impl Findings {
    fn pass(&mut self, check: &str, subject: &str, detail: String) {
        self.checks.push(PreflightCheck {
            check: check.into(),
            subject: subject.into(),
            passed: true,
            detail,
        });
    }

    fn fail(&mut self, check: &str, subject: &str, failure: Failure) {
        self.checks.push(PreflightCheck {
            check: check.into(),
            subject: subject.into(),
            passed: false,
            detail: failure.reason.clone(),
        });
        self.failures.push(failure);
    }
}

/// Bindings of `kind` in the order the plan first names them.
fn services_of(plan: &Plan) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for step in &plan.steps {
        let b = match &step.action {
            Action::ServiceStop(b) | Action::ServiceStart(b) => b,
            Action::ServiceSwitch(a) => &a.binding,
            Action::WaitHealthy(a) => &a.binding,
            _ => continue,
        };
        if !out.contains(b) {
            out.push(b.clone());
        }
    }
    out
}

fn stopped_by(plan: &Plan) -> BTreeSet<String> {
    plan.steps
        .iter()
        .filter_map(|s| match &s.action {
            Action::ServiceStop(b) => Some(b.clone()),
            _ => None,
        })
        .collect()
}

/// Run the preflight of `plan` on a live instance whose services were found as `prior`. Reads
/// only, through the guarded capabilities (audited with detail [`PREFLIGHT`]).
pub async fn run(
    session: &Session,
    instance: &Instance,
    caps: &InstanceCaps,
    plan: &Plan,
    prior: &Prior,
) -> Result<Preflight, OpError> {
    let mut found = Findings::default();
    let strays = services(instance, caps, plan, prior, &mut found).await;
    sessions(instance, caps, plan, prior, &strays, &mut found).await;
    disk(session, caps, plan, &mut found).await?;
    let refusal = (!found.failures.is_empty()).then(|| {
        let mut advice: Vec<&str> = Vec::new();
        for f in &found.failures {
            if !advice.contains(&f.advice.as_str()) {
                advice.push(&f.advice);
            }
        }
        Refusal {
            rule: found.failures[0].rule.to_string(),
            reason: found
                .failures
                .iter()
                .map(|f| f.reason.as_str())
                .collect::<Vec<_>>()
                .join("; "),
            path: Vec::new(),
            advice: advice.join(" "),
        }
    });
    Ok(Preflight {
        checks: found.checks,
        refusal,
    })
}

/// Health of each service the plan touches; returns, by binding, the processes that look like
/// the service but that Upshift neither started nor adopted.
async fn services(
    instance: &Instance,
    caps: &InstanceCaps,
    plan: &Plan,
    prior: &Prior,
    found: &mut Findings,
) -> BTreeMap<String, Vec<u32>> {
    let name = &instance.name;
    let mut strays = BTreeMap::new();
    for b in services_of(plan) {
        if caps.service().is_job(&b) {
            continue;
        }
        let Some(was) = prior.services.get(&b) else {
            found.pass(
                "health",
                &b,
                "not checked: the service cannot be inspected (unbound, or `inspect` not granted)"
                    .into(),
            );
            continue;
        };
        if was.running {
            match caps.service().check_health(&b, PREFLIGHT).await {
                Ok((true, seen)) => found.pass("health", &b, format!("healthy: {seen}")),
                Ok((false, seen)) => found.fail(
                    "health",
                    &b,
                    Failure {
                        rule: "preflight-health",
                        reason: format!(
                            "service `{b}` runs ({}) but is not healthy: {seen}",
                            was.detail
                        ),
                        advice: format!(
                            "Fix the service until its health check passes, or stop it on purpose (`upshift stop {name} {b}`) to upgrade it stopped; then run the plan again."
                        ),
                    },
                ),
                Err(e @ (CapError::Denied(_) | CapError::UnknownBinding(_))) => {
                    found.pass("health", &b, format!("not checked: {e}"));
                }
                Err(e) => found.fail(
                    "health",
                    &b,
                    Failure {
                        rule: "preflight-health",
                        reason: format!("the health of service `{b}` cannot be checked: {e}"),
                        advice: format!(
                            "Make the service's health check answer (`upshift start {name} {b}`), then run the plan again."
                        ),
                    },
                ),
            }
            continue;
        }
        match caps.service().strays(&b, PREFLIGHT).await {
            Ok(pids) if !pids.is_empty() => {
                let who: Vec<String> = pids.iter().map(|p| service::describe_process(*p)).collect();
                found.fail(
                    "health",
                    &b,
                    Failure {
                        rule: "preflight-unadopted",
                        reason: format!(
                            "service `{b}` is running but not started by Upshift: {}",
                            who.join(", ")
                        ),
                        advice: adopt_advice(name, &b),
                    },
                );
                strays.insert(b.clone(), pids);
            }
            Ok(_) => found.pass(
                "health",
                &b,
                "stopped: not running at all; the upgrade goes on with it stopped".into(),
            ),
            Err(e @ (CapError::Denied(_) | CapError::UnknownBinding(_))) => {
                found.pass("health", &b, format!("not checked: {e}"));
            }
            Err(e) => found.fail(
                "health",
                &b,
                Failure {
                    rule: "preflight-health",
                    reason: format!("cannot tell whether service `{b}` runs: {e}"),
                    advice: "Fix what the message names, then run the plan again.".into(),
                },
            ),
        }
    }
    strays
}

fn adopt_advice(instance: &str, binding: &str) -> String {
    format!(
        "Adopt it with `upshift adopt {instance} {binding}` so Upshift can stop it and start it again (or stop it yourself); then run the plan again."
    )
}

/// Sessions on each database the plan backs up: only Upshift's own and those of services the
/// plan stops may be there.
async fn sessions(
    instance: &Instance,
    caps: &InstanceCaps,
    plan: &Plan,
    prior: &Prior,
    strays: &BTreeMap<String, Vec<u32>>,
    found: &mut Findings,
) {
    let mut databases: Vec<String> = Vec::new();
    for step in &plan.steps {
        if let Action::DbBackup(a) = &step.action
            && !databases.contains(&a.binding)
        {
            databases.push(a.binding.clone());
        }
    }
    if databases.is_empty() {
        return;
    }
    // The processes the stop steps end: their sessions are expected.
    let mut ended: BTreeSet<u32> = BTreeSet::new();
    let mut ended_by: Vec<String> = Vec::new();
    for b in stopped_by(plan) {
        if !prior.services.get(&b).is_some_and(|p| p.running) {
            continue;
        }
        if let Ok(pids) = caps.service().processes(&b, PREFLIGHT).await {
            ended.extend(pids);
            ended_by.push(format!("`{b}`"));
        }
    }
    let stray_families: Vec<(String, u32, BTreeSet<u32>)> = strays
        .iter()
        .flat_map(|(b, pids)| {
            pids.iter()
                .map(|p| (b.clone(), *p, service::process_family(*p)))
        })
        .collect();
    for db in databases {
        let unexpected = match unexpected_sessions(caps, &db, &ended).await {
            Ok(Some(list)) => list,
            Ok(None) => {
                found.pass(
                    "sessions",
                    &db,
                    "not checked: this engine's sessions cannot be listed".into(),
                );
                continue;
            }
            Err(e @ (CapError::Denied(_) | CapError::UnknownBinding(_))) => {
                found.pass("sessions", &db, format!("not checked: {e}"));
                continue;
            }
            Err(e) => {
                found.fail(
                    "sessions",
                    &db,
                    Failure {
                        rule: "preflight-sessions",
                        reason: format!("cannot list the sessions on database `{db}`: {e}"),
                        advice: "Fix what the message names, then run the plan again.".into(),
                    },
                );
                continue;
            }
        };
        // A session over a local socket (or whose client this role may not see) cannot be
        // traced to a process: while the plan stops a running service, it may be that
        // service's, and is said to be assumed so; otherwise it is unexpected.
        let (unexpected, untraced): (Vec<DbSession>, Vec<DbSession>) = unexpected
            .into_iter()
            .partition(|s| s.client.is_some() || ended.is_empty());
        if unexpected.is_empty() {
            let mut detail = if ended_by.is_empty() {
                "no other sessions".to_string()
            } else {
                format!(
                    "only sessions of {} (ended by the stop step) and Upshift's own",
                    ended_by.join(", ")
                )
            };
            if !untraced.is_empty() {
                detail.push_str(&format!(
                    "; {} session(s) over a local socket could not be traced to a process and are assumed to be those services' ({})",
                    untraced.len(),
                    untraced
                        .iter()
                        .map(DbSession::describe)
                        .collect::<Vec<_>>()
                        .join("; ")
                ));
            }
            found.pass("sessions", &db, detail);
            continue;
        }
        let mut adopt: Option<String> = None;
        let named: Vec<String> = unexpected
            .iter()
            .map(|s| {
                let holders = s.client.map(service::holders_of).unwrap_or_default();
                let stray = holders.iter().find_map(|h| {
                    stray_families
                        .iter()
                        .find(|(_, _, family)| family.contains(h))
                        .map(|(b, root, _)| (b, *root))
                });
                match (stray, holders.first()) {
                    (Some((b, root)), _) => {
                        adopt.get_or_insert_with(|| b.clone());
                        format!(
                            "{} (held by pid {root}, service `{b}` not started by Upshift)",
                            s.describe()
                        )
                    }
                    (None, Some(h)) => {
                        format!(
                            "{} (held by {})",
                            s.describe(),
                            service::describe_process(*h)
                        )
                    }
                    (None, None) => s.describe(),
                }
            })
            .collect();
        let advice = match &adopt {
            Some(b) => adopt_advice(&instance.name, b),
            None => "End these sessions (stop the clients that hold them, or terminate them on the server) before upgrading; then run the plan again.".into(),
        };
        found.fail(
            "sessions",
            &db,
            Failure {
                rule: "preflight-sessions",
                reason: format!(
                    "database `{db}` has {} unexpected session(s), which the plan's stop steps do not end: {}",
                    unexpected.len(),
                    named.join("; ")
                ),
                advice,
            },
        );
    }
}

/// The sessions on `db` that are neither Upshift's nor held by `ended`; sessions still there
/// after [`SESSION_GRACE`] (a client that just let go is given that long).
async fn unexpected_sessions(
    caps: &InstanceCaps,
    db: &str,
    ended: &BTreeSet<u32>,
) -> Result<Option<Vec<DbSession>>, CapError> {
    let unexpected = |all: Vec<DbSession>| -> Vec<DbSession> {
        all.into_iter()
            .filter(|s| !s.is_upshift())
            .filter(|s| {
                !s.client.is_some_and(|c| {
                    service::held_by_this_process(c) || service::holds_client(ended, c)
                })
            })
            .collect()
    };
    let Some(first) = caps.db().sessions(db, PREFLIGHT).await? else {
        return Ok(None);
    };
    let mut left = unexpected(first);
    let deadline = tokio::time::Instant::now() + SESSION_GRACE;
    while !left.is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let Some(now) = caps.db().sessions(db, PREFLIGHT).await? else {
            return Ok(None);
        };
        let still: BTreeSet<i64> = unexpected(now).iter().map(|s| s.pid).collect();
        left.retain(|s| still.contains(&s.pid));
    }
    Ok(Some(left))
}

/// `12.3 MiB`.
fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Room for the backups: the estimate of each backup, by the directory it is written to.
async fn disk(
    session: &Session,
    caps: &InstanceCaps,
    plan: &Plan,
    found: &mut Findings,
) -> Result<(), OpError> {
    let backups_dir = session.backups_dir();
    // Directory -> (bytes needed, what needs them).
    let mut needs: BTreeMap<PathBuf, (u64, Vec<String>)> = BTreeMap::new();
    let mut add = |dir: PathBuf, bytes: u64, what: String| {
        let entry = needs.entry(dir).or_default();
        entry.0 += bytes;
        entry.1.push(what);
    };
    for step in &plan.steps {
        match &step.action {
            Action::DbBackup(a) => {
                let estimate = match caps.db().size_estimate(&a.binding, PREFLIGHT).await {
                    Ok(Some(e)) => e,
                    Ok(None) => {
                        found.pass(
                            "disk",
                            &a.binding,
                            "not checked: this engine's database size cannot be read".into(),
                        );
                        continue;
                    }
                    Err(e) => {
                        found.pass("disk", &a.binding, format!("not checked: {e}"));
                        continue;
                    }
                };
                match a.method {
                    BackupMethod::Clone => match estimate.server_dir {
                        Some(dir) => add(
                            dir,
                            estimate.database_bytes,
                            format!(
                                "a clone of `{}` ({} database)",
                                a.binding,
                                size(estimate.database_bytes)
                            ),
                        ),
                        None => found.pass(
                            "disk",
                            &a.binding,
                            format!(
                                "not checked: a clone of `{}` ({}) is written by the database server, whose data directory this role cannot see",
                                a.binding,
                                size(estimate.database_bytes)
                            ),
                        ),
                    },
                    _ => add(
                        backups_dir.clone(),
                        estimate.data_bytes,
                        format!(
                            "a dump of `{}` ({} of table data)",
                            a.binding,
                            size(estimate.data_bytes)
                        ),
                    ),
                }
            }
            Action::FilesSnapshot(b) => match caps.files().size(b, PREFLIGHT).await {
                Ok(bytes) => add(
                    backups_dir.clone(),
                    bytes,
                    format!("a snapshot of `{b}` ({} of files)", size(bytes)),
                ),
                Err(e) => found.pass("disk", b, format!("not checked: {e}")),
            },
            _ => {}
        }
    }
    for (dir, (bytes, what)) in needs {
        let need = bytes + bytes / 10 + DISK_MARGIN_BYTES;
        let probe = dir.clone();
        let free = tokio::task::spawn_blocking(move || crate::caps::files::free_bytes(&probe))
            .await
            .map_err(|e| OpError::Host(format!("the free-space check failed: {e}")))?;
        let subject = dir.display().to_string();
        let free = match free {
            Ok(free) => free,
            Err(e) => {
                found.pass(
                    "disk",
                    &subject,
                    format!("not checked: cannot read the free space of {subject}: {e}"),
                );
                continue;
            }
        };
        let needed = format!(
            "{} ({}, plus a tenth and {} of margin)",
            size(need),
            what.join(", "),
            size(DISK_MARGIN_BYTES)
        );
        if free >= need {
            found.pass(
                "disk",
                &subject,
                format!("{} free; the backups need about {needed}", size(free)),
            );
        } else {
            found.fail(
                "disk",
                &subject,
                Failure {
                    rule: "preflight-disk",
                    reason: format!(
                        "not enough room for the backups in {subject}: {} free, about {needed} needed",
                        size(free)
                    ),
                    advice: format!(
                        "Free at least {} in {subject} (or use a data directory on a larger disk with --data); then run the plan again.",
                        size(need - free)
                    ),
                },
            );
        }
    }
    Ok(())
}

/// What an operator asks of an instance's services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceCommand {
    /// Start (and wait until healthy).
    Start,
    /// Stop.
    Stop,
    /// Record a service started by hand (a process's pid when given).
    Adopt(Option<u32>),
}

impl ServiceCommand {
    fn name(self) -> &'static str {
        match self {
            ServiceCommand::Start => "start",
            ServiceCommand::Stop => "stop",
            ServiceCommand::Adopt(_) => "adopt",
        }
    }
}

/// What `upshift start|stop|adopt` did to one service.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceDone {
    /// The binding.
    pub binding: String,
    /// What happened.
    pub summary: String,
}

/// `upshift start|stop|adopt INSTANCE [BINDING]`: under the instance's lease, through the
/// guarded service capability (audited with detail `operator start|stop|adopt`). Without a
/// binding: every service that is not a one-shot job (stopped in reverse order).
pub async fn control(
    session: &Session,
    instance: &Instance,
    binding: Option<&str>,
    command: ServiceCommand,
) -> Result<Vec<ServiceDone>, OpError> {
    let label = match binding {
        Some(b) => format!("{} {b}", command.name()),
        None => command.name().to_string(),
    };
    let _held = session.hold_lease(&instance.name, &label).await?;
    let (_, caps) = super::apply::prepare(session, instance).await?;
    let services = caps.service();
    let mut bindings: Vec<String> = match binding {
        Some(b) => {
            if !services.bindings().any(|n| n == b) {
                return Err(OpError::Usage(format!(
                    "instance `{}` has no service binding `{b}` (it has: {})",
                    instance.name,
                    services.bindings().collect::<Vec<_>>().join(", ")
                )));
            }
            vec![b.to_string()]
        }
        None => services
            .bindings()
            .filter(|b| !services.is_job(b))
            .map(str::to_string)
            .collect(),
    };
    if bindings.is_empty() {
        return Err(OpError::Usage(format!(
            "instance `{}` has no long-running service binding; name one",
            instance.name
        )));
    }
    if let ServiceCommand::Adopt(Some(pid)) = command
        && bindings.len() != 1
    {
        return Err(OpError::Usage(format!(
            "--pid {pid} names one process: name the binding it is (one of {})",
            bindings.join(", ")
        )));
    }
    if command == ServiceCommand::Stop {
        bindings.reverse();
    }
    let detail = format!("operator {}", command.name());
    let mut done = Vec::new();
    for b in bindings {
        let summary = match command {
            ServiceCommand::Stop => services.stop(&b, &detail).await,
            ServiceCommand::Adopt(pid) => services.adopt(&b, pid, &detail).await,
            ServiceCommand::Start => match services.start(&b, &detail).await {
                Ok(started) if services.is_job(&b) => Ok(started),
                Ok(started) => services
                    .wait_healthy(
                        &b,
                        caps.service()
                            .wait_limit(&b)
                            .unwrap_or(super::DEFAULT_WAIT_HEALTHY),
                        &detail,
                    )
                    .await
                    .map(|healthy| format!("{started}; {healthy}")),
                Err(e) => Err(e),
            },
        }
        .map_err(|e| {
            OpError::Host(format!(
                "instance `{}`: {} service `{b}` failed: {e}",
                instance.name,
                command.name()
            ))
        })?;
        done.push(ServiceDone {
            binding: b,
            summary,
        });
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::size;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(size(512), "512 B");
        assert_eq!(size(3 << 20), "3.0 MiB");
        assert_eq!(size(1536), "1.5 KiB");
    }
}
