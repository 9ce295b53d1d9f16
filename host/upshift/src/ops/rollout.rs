//! Fleet rollouts: upgrade many instances of mixed products — selected by name, product or
//! label — in waves (`1,10%,rest`), up to N at a time, halting when the failure budget is spent.
//! Instances already done stay done; once the budget is spent nothing new starts, and those that
//! never started are reported as such.
//!
//! The wave and budget arithmetic are pure functions, tested directly.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures_util::StreamExt;
use serde::Serialize;

use crate::caps::Event;
use crate::fleet::{Fleet, Instance};

use super::apply::{self, Outcome, RunReport};
use super::{OpError, Session};

/// One entry of `--waves`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wave {
    /// This many instances.
    Count(usize),
    /// This percentage of the selected instances (rounded up, at least one).
    Percent(u32),
    /// Everything left.
    Rest,
}

/// Parse `--waves`, e.g. `1,10%,rest`.
pub fn parse_waves(text: &str) -> Result<Vec<Wave>, String> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim) {
        let wave = if part.eq_ignore_ascii_case("rest") {
            Wave::Rest
        } else if let Some(p) = part.strip_suffix('%') {
            match p.parse::<u32>() {
                Ok(n) if (1..=100).contains(&n) => Wave::Percent(n),
                _ => return Err(format!("wave `{part}`: a percentage is 1% to 100%")),
            }
        } else {
            match part.parse::<usize>() {
                Ok(n) if n > 0 => Wave::Count(n),
                _ => {
                    return Err(format!(
                        "wave `{part}` is not a count, a percentage or `rest` (e.g. `1,10%,rest`)"
                    ));
                }
            }
        };
        if out.last() == Some(&Wave::Rest) {
            return Err("`rest` must be the last wave".into());
        }
        out.push(wave);
    }
    Ok(out)
}

/// How many instances each wave takes out of `total`. Waves never overlap; what the listed
/// waves leave over goes into a last wave (as if `rest` were listed); empty waves are dropped.
pub fn wave_sizes(waves: &[Wave], total: usize) -> Vec<usize> {
    let mut left = total;
    let mut out = Vec::new();
    for wave in waves {
        let want = match *wave {
            Wave::Count(n) => n,
            Wave::Percent(p) => (total * p as usize).div_ceil(100).max(1),
            Wave::Rest => left,
        };
        let take = want.min(left);
        if take > 0 {
            out.push(take);
        }
        left -= take;
    }
    if left > 0 {
        out.push(left);
    }
    out
}

/// Whether a budget of `max_failures` is spent after `failures` failures: the rollout halts at
/// the `max_failures`-th failure (so `--max-failures 1` halts at the first).
pub fn budget_spent(failures: usize, max_failures: usize) -> bool {
    failures >= max_failures.max(1)
}

/// Which instances a rollout takes.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Every instance.
    pub all: bool,
    /// By name.
    pub names: Vec<String>,
    /// `product=P`, `label:key=value`, `name=N` filters (all must match).
    pub filters: Vec<String>,
}

/// The instances of `fleet` the selection names, in file order.
pub fn select<'f>(fleet: &'f Fleet, selection: &Selection) -> Result<Vec<&'f Instance>, OpError> {
    for name in &selection.names {
        fleet
            .instance(name)
            .map_err(|e| OpError::Usage(e.to_string()))?;
    }
    let mut out = Vec::new();
    for instance in &fleet.instances {
        let named = selection.names.contains(&instance.name);
        if !(selection.all
            || named
            || (!selection.filters.is_empty() && selection.names.is_empty()))
        {
            continue;
        }
        let mut keep = true;
        for filter in &selection.filters {
            keep &= matches(instance, filter)?;
        }
        if keep {
            out.push(instance);
        }
    }
    if fleet.instances.is_empty() {
        return Err(OpError::Usage(format!(
            "the fleet file {} names no instance\nfix: add an [[instance]] table for each product you run (docs/fleet-file.md shows one per product)",
            fleet.path.display()
        )));
    }
    if out.is_empty() {
        return Err(OpError::Usage(
            "the selection matches no instance: select instances by name, by product (`product=P`) or by label (`label:KEY=VALUE`), or all of them".into(),
        ));
    }
    Ok(out)
}

fn matches(instance: &Instance, filter: &str) -> Result<bool, OpError> {
    let bad = || {
        OpError::Usage(format!(
            "--select `{filter}` is not `product=P`, `name=N` or `label:KEY=VALUE`"
        ))
    };
    let (key, value) = filter.split_once('=').ok_or_else(bad)?;
    Ok(match key {
        "product" => instance.adapter_label() == value,
        "name" => instance.name == value,
        _ => {
            let label = key.strip_prefix("label:").ok_or_else(bad)?;
            instance.labels.get(label).is_some_and(|v| v == value)
        }
    })
}

/// How one instance's plan came out in a fleet-wide plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PlanResult {
    /// A plan: these steps would run.
    Plan,
    /// Already at the target: nothing to do.
    AlreadyThere,
    /// The product's rules (or preflight) refuse it.
    Refused,
    /// No plan could be made (unreachable, no target, the adapter failed).
    Error,
}

/// One instance's line of a fleet-wide plan: the summary, and the full plan report.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedInstance {
    /// Instance.
    pub instance: String,
    /// Product (adapter).
    pub product: String,
    /// Detected version (empty when detection failed).
    pub from: String,
    /// Target (empty when the instance has none and no --to was given).
    pub to: String,
    /// How it came out.
    pub result: PlanResult,
    /// The refusing rule, when refused.
    pub rule: Option<String>,
    /// The versions the refusal says to go through, in order.
    pub path: Vec<String>,
    /// Forward steps the plan would run.
    pub steps: usize,
    /// Why no plan was made, when `result` is `error`.
    pub error: Option<String>,
    /// The full plan report, when there is one.
    pub report: Option<apply::PlanReport>,
}

/// Plan every instance of `instances` (each to `to`, else its own `target`), up to
/// `concurrency` at a time; touches nothing. An instance that cannot be planned is a line with
/// `result: error`, never the end of the others.
pub async fn plan_all(
    session: &Session,
    instances: &[&Instance],
    to: Option<&str>,
    options: &apply::PlanOptions,
    concurrency: usize,
) -> Vec<PlannedInstance> {
    futures_util::stream::iter(instances.iter())
        .map(|instance| async move {
            let target = instance.target_or(to);
            let mut line = PlannedInstance {
                instance: instance.name.clone(),
                product: instance.adapter_label(),
                from: String::new(),
                to: target.clone().unwrap_or_default(),
                result: PlanResult::Error,
                rule: None,
                path: Vec::new(),
                steps: 0,
                error: None,
                report: None,
            };
            let target = match target {
                Ok(target) => target,
                Err(why) => {
                    line.error = Some(why);
                    return line;
                }
            };
            match apply::plan_instance_with(session, instance, &target, options).await {
                Ok(report) => {
                    line.from = report.detection.version.clone();
                    match &report.outcome {
                        apply::PlanOutcome::Plan(p) => {
                            line.result = PlanResult::Plan;
                            line.steps = p.steps.len();
                        }
                        apply::PlanOutcome::Refused(r) => {
                            line.result = if r.rule == apply::ALREADY_AT_TARGET {
                                PlanResult::AlreadyThere
                            } else {
                                PlanResult::Refused
                            };
                            line.rule = Some(r.rule.clone());
                            line.path = r.path.clone();
                        }
                    }
                    line.report = Some(report);
                }
                Err(e) => line.error = Some(e.to_string()),
            }
            line
        })
        .buffered(concurrency.max(1))
        .collect()
        .await
}

/// How one instance of a rollout ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Upgraded and verified.
    Upgraded,
    /// Already at the target: nothing to do.
    AlreadyThere,
    /// The product's rules refused it; nothing changed.
    Refused,
    /// Failed and rolled back.
    RolledBack,
    /// Failed and not rolled back: an operator is needed.
    NeedsOperator,
    /// Could not be run (bad input, another holder, a host error).
    Error,
    /// Not started: the failure budget was spent first.
    NotStarted,
}

impl Status {
    /// The stable kebab-case name, as in reports and JSON (`already-there`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Upgraded => "upgraded",
            Status::AlreadyThere => "already-there",
            Status::Refused => "refused",
            Status::RolledBack => "rolled-back",
            Status::NeedsOperator => "needs-operator",
            Status::Error => "error",
            Status::NotStarted => "not-started",
        }
    }

    /// Whether it counts against the failure budget.
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            Status::Refused | Status::RolledBack | Status::NeedsOperator | Status::Error
        )
    }
}

/// One instance's line in a rollout report.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceResult {
    /// Instance.
    pub instance: String,
    /// Product (adapter).
    pub product: String,
    /// The wave it belonged to (1-based).
    pub wave: usize,
    /// Target version.
    pub target: String,
    /// How it ended.
    pub status: Status,
    /// Why, when it did not upgrade.
    pub message: Option<String>,
    /// The run's report, when it ran.
    pub run: Option<RunReport>,
}

/// What `upshift apply --all` reports.
#[derive(Debug, Clone, Serialize)]
pub struct RolloutReport {
    /// Rollout id (also the report files' name).
    pub id: String,
    /// Started and finished (RFC 3339).
    pub started_at: String,
    /// Finished.
    pub finished_at: String,
    /// Wave sizes, in order.
    pub waves: Vec<usize>,
    /// At most this many at a time.
    pub parallel: usize,
    /// The failure budget.
    pub max_failures: usize,
    /// Why the rollout halted early, if it did.
    pub halted: Option<String>,
    /// Counts by status.
    pub counts: BTreeMap<String, usize>,
    /// Every selected instance, in fleet order.
    pub instances: Vec<InstanceResult>,
}

/// How a rollout runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Target for every instance (else each instance's `target`).
    pub to: Option<String>,
    /// At most this many at a time.
    pub parallel: usize,
    /// Waves.
    pub waves: Vec<Wave>,
    /// Failure budget.
    pub max_failures: usize,
    /// `--allow-unknown`: adapters may plan target releases their catalogs do not know.
    pub allow_unknown: bool,
    /// `--timeout SECS`: every wait-healthy step waits up to this long.
    pub wait_healthy_secs: Option<u64>,
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn result_of(instance: &Instance, wave: usize, target: &str) -> InstanceResult {
    InstanceResult {
        instance: instance.name.clone(),
        product: instance.adapter_label(),
        wave,
        target: target.to_string(),
        status: Status::NotStarted,
        message: Some("not started: the failure budget was spent".into()),
        run: None,
    }
}

async fn upgrade_one(
    session: &Session,
    instance: &Instance,
    mut line: InstanceResult,
    options: &apply::PlanOptions,
) -> InstanceResult {
    match apply::apply_with(session, instance, &line.target.clone(), options, |_| true).await {
        Ok(report) => {
            line.status = match report.outcome {
                Outcome::Succeeded => Status::Upgraded,
                Outcome::AlreadyThere => Status::AlreadyThere,
                Outcome::Refused => Status::Refused,
                Outcome::RolledBack => Status::RolledBack,
                Outcome::NeedsOperator => Status::NeedsOperator,
                // Failed before changing anything: not rolled back, and no operator needed.
                Outcome::NothingChanged => Status::Error,
            };
            line.message = match (&report.refusal, &report.failure) {
                _ if report.outcome == Outcome::AlreadyThere => Some(format!(
                    "already runs {}: nothing to do",
                    report.from_version
                )),
                (Some(r), _) => Some(format!("refused by rule `{}`: {}", r.rule, r.reason)),
                (None, Some(f)) => Some(f.clone()),
                (None, None) => None,
            };
            line.run = Some(report);
        }
        Err(e) => {
            line.status = Status::Error;
            line.message = Some(e.to_string());
        }
    }
    line
}

/// Upgrade `instances` wave by wave. Each instance's target is `options.to`, else its own
/// `target` from the fleet file.
pub async fn rollout(
    session: &Session,
    instances: &[&Instance],
    options: &Options,
) -> Result<RolloutReport, OpError> {
    let mut targets = Vec::new();
    for instance in instances {
        let target = options
            .to
            .clone()
            .or_else(|| instance.target.clone())
            .ok_or_else(|| {
                OpError::Usage(format!(
                    "instance `{}` has no `target` in the fleet file; set one or pass --to VERSION",
                    instance.name
                ))
            })?;
        targets.push(target);
    }
    let started_at = now();
    let sizes = wave_sizes(&options.waves, instances.len());
    let failures = AtomicUsize::new(0);
    let finished = AtomicUsize::new(0);
    session.events.emit(Event::Fleet {
        done: 0,
        total: instances.len(),
        failures: 0,
        message: format!("{} wave(s) {sizes:?}", sizes.len()),
    });
    let mut results: Vec<InstanceResult> = Vec::new();
    let mut halted = None;
    let mut offset = 0;
    for (w, size) in sizes.iter().enumerate() {
        let wave: Vec<InstanceResult> = futures_util::stream::iter(offset..offset + size)
            .map(|i| {
                let line = result_of(instances[i], w + 1, &targets[i]);
                let (failures, finished) = (&failures, &finished);
                async move {
                    // Nothing new starts once the budget is spent.
                    if budget_spent(failures.load(Ordering::SeqCst), options.max_failures) {
                        return line;
                    }
                    let plan_options = apply::PlanOptions {
                        allow_unknown: options.allow_unknown,
                        wait_healthy_secs: options.wait_healthy_secs,
                    };
                    let line = upgrade_one(session, instances[i], line, &plan_options).await;
                    if line.status.is_failure() {
                        failures.fetch_add(1, Ordering::SeqCst);
                    }
                    session.events.emit(Event::Fleet {
                        done: finished.fetch_add(1, Ordering::SeqCst) + 1,
                        total: instances.len(),
                        failures: failures.load(Ordering::SeqCst),
                        message: format!("{} {}", line.instance, line.status.as_str()),
                    });
                    line
                }
            })
            .buffered(options.parallel.max(1))
            .collect()
            .await;
        results.extend(wave);
        offset += size;
        let failed = failures.load(Ordering::SeqCst);
        if budget_spent(failed, options.max_failures) && offset < instances.len() {
            halted = Some(format!(
                "halted after wave {}: {failed} failure(s) spent the budget of {}",
                w + 1,
                options.max_failures
            ));
            for i in offset..instances.len() {
                let wave_of = sizes
                    .iter()
                    .scan(0, |acc, s| {
                        *acc += s;
                        Some(*acc)
                    })
                    .position(|end| i < end)
                    .map_or(sizes.len(), |p| p + 1);
                results.push(result_of(instances[i], wave_of, &targets[i]));
            }
            break;
        }
    }
    if halted.is_none() && budget_spent(failures.load(Ordering::SeqCst), options.max_failures) {
        let skipped = results
            .iter()
            .filter(|r| r.status == Status::NotStarted)
            .count();
        if skipped > 0 {
            halted = Some(format!(
                "the failure budget of {} was spent; {skipped} instance(s) did not start",
                options.max_failures
            ));
        }
    }
    let mut counts = BTreeMap::new();
    for r in &results {
        *counts.entry(r.status.as_str().to_string()).or_insert(0) += 1;
    }
    Ok(RolloutReport {
        id: crate::state::new_run_id(),
        started_at,
        finished_at: now(),
        waves: sizes,
        parallel: options.parallel.max(1),
        max_failures: options.max_failures,
        halted,
        counts,
        instances: results,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waves_parse_and_split_the_fleet() {
        let w = parse_waves("1,10%,rest").expect("parses");
        assert_eq!(w, vec![Wave::Count(1), Wave::Percent(10), Wave::Rest]);
        assert_eq!(wave_sizes(&w, 30), vec![1, 3, 26]);
        assert_eq!(wave_sizes(&w, 1), vec![1]);
        assert_eq!(wave_sizes(&w, 2), vec![1, 1]);
        assert_eq!(wave_sizes(&w, 200), vec![1, 20, 179]);
        // Without `rest`, what is left over runs last.
        assert_eq!(
            wave_sizes(&[Wave::Count(2), Wave::Count(3)], 10),
            vec![2, 3, 5]
        );
        assert_eq!(wave_sizes(&[Wave::Count(5)], 3), vec![3]);
        assert_eq!(wave_sizes(&[Wave::Percent(50)], 3), vec![2, 1]);
        assert_eq!(wave_sizes(&[], 4), vec![4]);
        for sizes in [wave_sizes(&w, 7), wave_sizes(&w, 31)] {
            assert!(sizes.iter().all(|s| *s > 0));
        }
        assert_eq!(wave_sizes(&w, 31).iter().sum::<usize>(), 31);
        assert!(parse_waves("0").is_err());
        assert!(parse_waves("150%").is_err());
        assert!(parse_waves("rest,1").is_err());
        assert!(parse_waves("a few").is_err());
    }

    #[test]
    fn status_names_are_the_serialized_names() {
        for status in [
            Status::Upgraded,
            Status::AlreadyThere,
            Status::Refused,
            Status::RolledBack,
            Status::NeedsOperator,
            Status::Error,
            Status::NotStarted,
        ] {
            assert_eq!(
                serde_json::to_value(status).ok(),
                Some(serde_json::Value::from(status.as_str()))
            );
        }
    }

    #[test]
    fn the_budget_is_spent_at_the_kth_failure() {
        assert!(!budget_spent(0, 1));
        assert!(budget_spent(1, 1));
        assert!(!budget_spent(2, 3));
        assert!(budget_spent(3, 3));
        assert!(budget_spent(4, 3));
        // A budget of 0 behaves as 1: the first failure halts.
        assert!(budget_spent(1, 0));
        assert!(!budget_spent(0, 0));
    }
}
