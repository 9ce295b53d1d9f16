//! Terminal output: progress bars for steps, plans and reports as text, or JSON.
//!
//! Every text an adapter, a product or a fleet file supplied goes through [`v`] (one line) or
//! [`lines`] (a block) before it is styled and shown, so its control characters are shown as
//! `\x1b`, `\r`, `\u{202e}`… and never reach the terminal as commands. JSON output is left
//! exact.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use console::{Term, style};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use upshift::caps::{Event, EventSink};
use upshift::ops::apply::{Outcome, PlanOutcome, PlanReport, RunReport};
use upshift::ops::plan::describe_action;

pub use upshift::model::text::{visible as v, visible_lines as lines};

/// Live output for a command.
pub struct Ui {
    multi: MultiProgress,
    bars: Mutex<HashMap<(String, String), ProgressBar>>,
    /// A rollout's fleet-wide bar, above the instances' bars.
    fleet: Mutex<Option<ProgressBar>>,
    fancy: bool,
}

impl Ui {
    /// An event sink drawing bars on a terminal, plain lines otherwise, or (with `json`) JSON
    /// lines on stderr, leaving stdout to the one JSON report.
    pub fn sink(json: bool) -> (Option<Arc<Ui>>, EventSink) {
        if json {
            return (
                None,
                EventSink::new(|e| {
                    if let Ok(line) = serde_json::to_string(&e) {
                        eprintln!("{line}");
                    }
                }),
            );
        }
        let fancy = Term::stderr().is_term();
        let ui = Arc::new(Ui {
            multi: MultiProgress::with_draw_target(if fancy {
                ProgressDrawTarget::stderr()
            } else {
                ProgressDrawTarget::hidden()
            }),
            bars: Mutex::new(HashMap::new()),
            fleet: Mutex::new(None),
            fancy,
        });
        let inner = ui.clone();
        (Some(ui), EventSink::new(move |e| inner.on(e)))
    }

    /// A line above the bars (or on stderr). A terminal that went away is drawn on no more;
    /// the run goes on.
    fn line(&self, text: String) {
        if !self.fancy {
            eprintln!("{text}");
        } else if !crate::output::STDERR.is_broken() && self.multi.println(text).is_err() {
            crate::output::STDERR.mark_broken();
            self.multi.set_draw_target(ProgressDrawTarget::hidden());
        }
    }

    fn on(&self, event: Event) {
        match event {
            Event::Log {
                instance,
                level,
                message,
            } => {
                let tag = match level.as_str() {
                    "error" => style(format!("{:<10}", "error")).red().to_string(),
                    "warn" => style("warn").yellow().to_string(),
                    other => style(other).dim().to_string(),
                };
                self.line(format!(
                    "  {} {tag} {}",
                    style(format!("[{}]", v(&instance))).dim(),
                    v(&message)
                ));
            }
            Event::Progress {
                instance,
                done,
                total,
                message,
            } => {
                if let Ok(bars) = self.bars.lock()
                    && let Some(bar) = bars.values().find(|b| b.prefix().contains(&instance))
                {
                    bar.set_message(format!("{} ({done}/{total})", v(&message)));
                }
            }
            Event::Fleet {
                done,
                total,
                failures,
                message,
            } => {
                let Ok(mut slot) = self.fleet.lock() else {
                    return;
                };
                let bar = slot.get_or_insert_with(|| {
                    let bar = self.multi.insert(0, ProgressBar::new(total as u64));
                    if let Ok(s) = ProgressStyle::with_template(
                        "{prefix:.bold} [{bar:24.green}] {pos}/{len} {msg}",
                    ) {
                        bar.set_style(s.progress_chars("=> "));
                    }
                    bar.set_prefix("fleet");
                    bar
                });
                bar.set_position(done as u64);
                let message = v(&message);
                bar.set_message(format!("{failures} failure(s) · {message}"));
                if !self.fancy && done > 0 {
                    eprintln!("  fleet {done}/{total}: {message} ({failures} failure(s))");
                }
            }
            Event::StepStarted {
                instance,
                phase,
                index,
                count,
                title,
                ..
            } => {
                let Ok(mut bars) = self.bars.lock() else {
                    return;
                };
                let bar = bars
                    .entry((instance.clone(), phase.clone()))
                    .or_insert_with(|| {
                        let bar = self.multi.add(ProgressBar::new(count as u64));
                        let template = if phase == "rollback" {
                            "{prefix:.yellow.bold} [{bar:24.yellow}] {pos}/{len} {msg}"
                        } else {
                            "{prefix:.cyan.bold} [{bar:24.cyan}] {pos}/{len} {msg}"
                        };
                        if let Ok(s) = ProgressStyle::with_template(template) {
                            bar.set_style(s.progress_chars("=> "));
                        }
                        bar.set_prefix(format!("{} {}", v(&instance), v(&phase)));
                        bar
                    });
                bar.set_position(index.saturating_sub(1) as u64);
                bar.set_message(v(&title).into_owned());
            }
            Event::StepFinished {
                instance,
                phase,
                step,
                ok,
                message,
                duration_ms,
            } => {
                let mark = if ok {
                    style("✔").green()
                } else {
                    style("✘").red()
                };
                let first = v(message.lines().next().unwrap_or(""));
                self.line(format!(
                    "  {mark} {} {:<18} {first} {}",
                    style(format!(
                        "[{}{}]",
                        v(&instance),
                        if phase == "rollback" { " rollback" } else { "" }
                    ))
                    .dim(),
                    v(&step),
                    style(format!("({:.1} s)", duration_ms as f64 / 1000.0)).dim()
                ));
                for extra in message.lines().skip(1).take(20) {
                    self.line(format!("      {}", style(v(extra)).dim()));
                }
                if let Ok(bars) = self.bars.lock()
                    && let Some(bar) = bars.get(&(instance, phase))
                {
                    bar.inc(1);
                    if bar.position() >= bar.length().unwrap_or(0) {
                        bar.finish_and_clear();
                    }
                }
            }
        }
    }

    /// Remove any bars left (after a failure).
    pub fn clear(&self) {
        if let Ok(mut bars) = self.bars.lock() {
            for (_, bar) in bars.drain() {
                bar.finish_and_clear();
            }
        }
        if let Ok(mut fleet) = self.fleet.lock()
            && let Some(bar) = fleet.take()
        {
            bar.finish_and_clear();
        }
    }
}

/// A plan (or refusal) as text.
pub fn plan_text(report: &PlanReport) -> String {
    let mut out = String::new();
    let who = if report.instance.is_empty() {
        format!("{} (offline)", v(&report.product))
    } else {
        format!("{} ({})", v(&report.instance), v(&report.product))
    };
    let from = v(&report.detection.version);
    out.push_str(&format!(
        "{} {who}: adapter sha256 {}\n",
        style("Plan").bold(),
        v(report
            .adapter_digest
            .get(..12)
            .unwrap_or(&report.adapter_digest))
    ));
    for p in &report.privileged {
        out.push_str(&format!("  {} {p}\n", style("privileged:").yellow()));
    }
    for c in &report.preflight {
        out.push_str(&format!(
            "  {} preflight {} `{}`: {}\n",
            if c.passed {
                style("✔").green()
            } else {
                style("✘").red()
            },
            v(&c.check),
            v(&c.subject),
            v(&c.detail)
        ));
    }
    match &report.outcome {
        PlanOutcome::Refused(r) => {
            out.push_str(&format!(
                "{} {from} → refused by rule `{}`\n  {}\n",
                style("✘").red(),
                v(&r.rule),
                v(&r.reason)
            ));
            if !r.path.is_empty() {
                out.push_str(&format!("  path: {from} → {}\n", v(&r.path.join(" → "))));
            }
            if !r.advice.is_empty() {
                out.push_str(&format!("  what to do: {}\n", v(&r.advice)));
            }
        }
        PlanOutcome::Plan(p) => {
            out.push_str(&format!(
                "  {} → {}\n",
                v(&p.from_version),
                v(&p.to_version)
            ));
            if !report.detection.facts.is_empty() {
                let facts: Vec<String> = report
                    .detection
                    .facts
                    .iter()
                    .map(|f| format!("{}={}", v(&f.key), v(&f.value)))
                    .collect();
                out.push_str(&format!("  detected: {}\n", style(facts.join(", ")).dim()));
            }
            for (i, s) in p.steps.iter().enumerate() {
                out.push_str(&format!(
                    "  {:>2}. {:<16} {}  {}\n",
                    i + 1,
                    v(&s.id),
                    v(&s.title),
                    style(format!("[{}]", v(&describe_action(&s.action)))).dim()
                ));
            }
            for n in &p.notes {
                out.push_str(&format!("  note: {}\n", v(n)));
            }
            if !report.rollback.is_empty() {
                out.push_str("  if it fails, Upshift rolls back by itself:\n");
                for a in &report.rollback {
                    out.push_str(&format!("      - {}\n", v(&a.describe())));
                }
            }
        }
    }
    out
}

/// A run report as text.
/// The backup a restore run restored: a restore's report carries it, and it was taken by
/// another run (an upgrade's report carries only the backups it took itself).
fn restored_backup(report: &RunReport) -> Option<&str> {
    report
        .backups
        .iter()
        .find(|b| b.run_id.as_deref() != Some(report.run_id.as_str()))
        .map(|b| b.id.as_str())
}

pub fn run_text(report: &RunReport) -> String {
    let mut out = String::new();
    let (instance, from, to) = (
        v(&report.instance),
        v(&report.from_version),
        v(&report.to_version),
    );
    let headline = match report.outcome {
        Outcome::Succeeded => style(format!("✔ {instance} is now at {to}")).green().bold(),
        Outcome::Refused => style(format!("✘ {instance}: refused, nothing changed"))
            .yellow()
            .bold(),
        Outcome::RolledBack => match restored_backup(report) {
            Some(id) => style(format!(
                "↺ {instance}: restore of backup {} failed before it replaced any data and was rolled back: {from} runs as before",
                v(id)
            )),
            None => style(format!(
                "↺ {instance}: upgrade to {to} failed and was rolled back to {from}"
            )),
        }
        .yellow()
        .bold(),
        Outcome::NeedsOperator => style(format!(
            "✘ {instance}: failed and NOT rolled back — operator needed"
        ))
        .red()
        .bold(),
        Outcome::NothingChanged => style(format!(
            "✘ {instance}: upgrade to {to} failed before changing anything — nothing was changed, still at {from}"
        ))
        .red()
        .bold(),
        Outcome::AlreadyThere => style(format!(
            "= {instance} already runs {from}: nothing to do (no run recorded)"
        ))
        .green()
        .bold(),
    };
    out.push_str(&format!("{headline}\n"));
    // What resume found (the operator help repeats it when resume stopped before acting).
    if report.operator_help.is_none() {
        for f in &report.found {
            out.push_str(&format!("  found: {}\n", v(f)));
        }
    }
    if let Some(r) = &report.refusal {
        out.push_str(&format!("  rule `{}`: {}\n", v(&r.rule), v(&r.reason)));
        if !r.path.is_empty() {
            out.push_str(&format!("  path: {from} → {}\n", v(&r.path.join(" → "))));
        }
        if !r.advice.is_empty() {
            out.push_str(&format!("  what to do: {}\n", v(&r.advice)));
        }
    }
    if let Some(f) = &report.failure {
        let mut failure = f.lines().filter(|l| !l.trim().is_empty());
        out.push_str(&format!("  why: {}\n", v(failure.next().unwrap_or(""))));
        if let Some(last) = failure.next_back() {
            out.push_str(&format!("       {}\n", v(last.trim())));
        }
    }
    for c in &report.checks {
        out.push_str(&format!(
            "  {} check {}: {}\n",
            if c.passed {
                style("✔").green()
            } else {
                style("✘").red()
            },
            v(&c.name),
            v(&c.detail)
        ));
    }
    for b in &report.backups {
        out.push_str(&format!(
            "  backup {} of `{}` at {} ({}: {})\n",
            v(&b.id),
            v(&b.binding),
            v(&b.product_version),
            v(&b.method),
            v(&b.location)
        ));
    }
    if let Some(cmd) = &report.rollback_command {
        out.push_str(&format!("  to return to {from} later: {}\n", v(cmd)));
    }
    for d in &report.denials {
        out.push_str(&format!(
            "  denied: {} {} on `{}`: {}\n",
            v(&d.event.capability),
            v(&d.event.operation),
            v(&d.event.binding),
            v(d.event.reason.as_deref().unwrap_or_default())
        ));
    }
    if let Some(help) = &report.operator_help {
        out.push_str(&lines(help));
    }
    if !report.run_id.is_empty() {
        let run = v(&report.run_id);
        out.push_str(&format!("  run {run} (upshift history --run {run})\n"));
    }
    out
}

/// A fleet-wide plan's summary: one line per instance (from → to, the path or the refusing
/// rule, the steps).
pub fn fleet_plan_table(lines: &[upshift::ops::rollout::PlannedInstance]) -> String {
    use upshift::ops::rollout::PlanResult;
    let mut out = format!(
        "{}\n  {:<20} {:<14} {:<24} {:<10} {:>5}  detail\n",
        style("Fleet plan").bold(),
        "instance",
        "product",
        "from → to",
        "result",
        "steps"
    );
    for line in lines {
        let (result, detail) = match line.result {
            PlanResult::Plan => (style(format!("{:<10}", "plan")).green(), String::new()),
            PlanResult::AlreadyThere => (
                style(format!("{:<10}", "already")).green(),
                "nothing to do".into(),
            ),
            PlanResult::Refused => (
                style(format!("{:<10}", "refused")).yellow(),
                format!(
                    "rule `{}`{}",
                    v(line.rule.as_deref().unwrap_or_default()),
                    if line.path.is_empty() {
                        String::new()
                    } else {
                        format!("; path {}", v(&line.path.join(" → ")))
                    }
                ),
            ),
            PlanResult::Error => (
                style(format!("{:<10}", "error")).red(),
                v(line.error.as_deref().unwrap_or_default()).into_owned(),
            ),
        };
        let from = if line.from.is_empty() {
            "?"
        } else {
            &line.from
        };
        let to = if line.to.is_empty() { "?" } else { &line.to };
        out.push_str(&format!(
            "  {:<20} {:<14} {:<24} {result} {:>5}  {detail}\n",
            v(&line.instance),
            v(&line.product),
            format!("{} → {}", v(from), v(to)),
            line.steps
        ));
    }
    out
}

/// What a rollout will do, before it starts.
pub fn rollout_plan_text(
    instances: &[&upshift::fleet::Instance],
    options: &upshift::ops::rollout::Options,
) -> String {
    let sizes = upshift::ops::rollout::wave_sizes(&options.waves, instances.len());
    let mut out = format!(
        "{} {} instance(s) in {} wave(s) {:?}, up to {} at a time; halt at failure {}\n",
        style("Rollout").bold(),
        instances.len(),
        sizes.len(),
        sizes,
        options.parallel.max(1),
        options.max_failures.max(1)
    );
    let mut at = 0;
    for (w, size) in sizes.iter().enumerate() {
        for instance in &instances[at..at + size] {
            let target = instance
                .target_or(options.to.as_deref())
                .unwrap_or_else(|_| "(no target)".into());
            out.push_str(&format!(
                "  wave {}  {:<20} {:<13} → {}\n",
                w + 1,
                v(&instance.name),
                v(&instance.adapter_label()),
                v(&target)
            ));
        }
        at += size;
    }
    out
}

/// A rollout's outcome as text.
pub fn rollout_text(
    report: &upshift::ops::rollout::RolloutReport,
    markdown: &std::path::Path,
    json: &std::path::Path,
) -> String {
    use upshift::ops::rollout::Status;
    let mut out = String::new();
    for i in &report.instances {
        let mark = match i.status {
            Status::Upgraded => style("✔ upgraded     ").green(),
            Status::AlreadyThere => style("= already there").green(),
            Status::Refused => style("✘ refused      ").yellow(),
            Status::RolledBack => style("↺ rolled back  ").yellow(),
            Status::NeedsOperator => style("✘ NEEDS OPERATOR").red(),
            Status::Error => style("✘ not run      ").red(),
            Status::NotStarted => style("· not started  ").dim(),
        };
        out.push_str(&format!(
            "  {mark} {:<20} → {}{}\n",
            v(&i.instance),
            v(&i.target),
            i.message
                .as_deref()
                .map(|m| format!("  ({})", v(m.lines().next().unwrap_or_default())))
                .unwrap_or_default()
        ));
    }
    if let Some(h) = &report.halted {
        out.push_str(&format!(
            "{}\n",
            style(format!("halted: {}", v(h))).yellow().bold()
        ));
    }
    out.push_str(&format!(
        "  report: {} (JSON: {})\n",
        v(&markdown.display().to_string()),
        v(&json.display().to_string())
    ));
    out
}
