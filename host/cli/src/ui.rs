//! Terminal output: progress bars for steps, plans and reports as text, or JSON.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use console::{Term, style};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use upshift::caps::{Event, EventSink};
use upshift::ops::apply::{Outcome, PlanOutcome, PlanReport, RunReport};
use upshift::ops::plan::describe_action;

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

    fn line(&self, text: String) {
        if self.fancy {
            let _ = self.multi.println(text);
        } else {
            eprintln!("{text}");
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
                    "error" => style("error").red().to_string(),
                    "warn" => style("warn").yellow().to_string(),
                    other => style(other).dim().to_string(),
                };
                self.line(format!(
                    "  {} {tag} {message}",
                    style(format!("[{instance}]")).dim()
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
                    bar.set_message(format!("{message} ({done}/{total})"));
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
                        bar.set_prefix(format!("{instance} {phase}"));
                        bar
                    });
                bar.set_position(index.saturating_sub(1) as u64);
                bar.set_message(title);
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
                let first = message.lines().next().unwrap_or("").to_string();
                self.line(format!(
                    "  {mark} {} {step:<18} {first} {}",
                    style(format!(
                        "[{instance}{}]",
                        if phase == "rollback" { " rollback" } else { "" }
                    ))
                    .dim(),
                    style(format!("({:.1} s)", duration_ms as f64 / 1000.0)).dim()
                ));
                for extra in message.lines().skip(1).take(20) {
                    self.line(format!("      {}", style(extra).dim()));
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
        format!("{} (offline)", report.product)
    } else {
        format!("{} ({})", report.instance, report.product)
    };
    out.push_str(&format!(
        "{} {who}: adapter sha256 {}\n",
        style("Plan").bold(),
        &report.adapter_digest[..12.min(report.adapter_digest.len())]
    ));
    for p in &report.privileged {
        out.push_str(&format!("  {} {p}\n", style("privileged:").yellow()));
    }
    match &report.outcome {
        PlanOutcome::Refused(r) => {
            out.push_str(&format!(
                "{} {} → refused by rule `{}`\n  {}\n",
                style("✘").red(),
                report.detection.version,
                r.rule,
                r.reason
            ));
            if !r.path.is_empty() {
                out.push_str(&format!(
                    "  path: {} → {}\n",
                    report.detection.version,
                    r.path.join(" → ")
                ));
            }
            if !r.advice.is_empty() {
                out.push_str(&format!("  what to do: {}\n", r.advice));
            }
        }
        PlanOutcome::Plan(p) => {
            out.push_str(&format!("  {} → {}\n", p.from_version, p.to_version));
            if !report.detection.facts.is_empty() {
                let facts: Vec<String> = report
                    .detection
                    .facts
                    .iter()
                    .map(|f| format!("{}={}", f.key, f.value))
                    .collect();
                out.push_str(&format!("  detected: {}\n", style(facts.join(", ")).dim()));
            }
            for (i, s) in p.steps.iter().enumerate() {
                out.push_str(&format!(
                    "  {:>2}. {:<16} {}  {}\n",
                    i + 1,
                    s.id,
                    s.title,
                    style(format!("[{}]", describe_action(&s.action))).dim()
                ));
            }
            for n in &p.notes {
                out.push_str(&format!("  note: {n}\n"));
            }
            if !report.rollback.is_empty() {
                out.push_str("  if it fails, Upshift rolls back by itself:\n");
                for a in &report.rollback {
                    out.push_str(&format!("      - {}\n", a.describe()));
                }
            }
        }
    }
    out
}

/// A run report as text.
pub fn run_text(report: &RunReport) -> String {
    let mut out = String::new();
    let headline = match report.outcome {
        Outcome::Succeeded => style(format!(
            "✔ {} is now at {}",
            report.instance, report.to_version
        ))
        .green()
        .bold(),
        Outcome::Refused => style(format!("✘ {}: refused, nothing changed", report.instance))
            .yellow()
            .bold(),
        Outcome::RolledBack => style(format!(
            "↺ {}: upgrade to {} failed and was rolled back to {}",
            report.instance, report.to_version, report.from_version
        ))
        .yellow()
        .bold(),
        Outcome::NeedsOperator => style(format!(
            "✘ {}: failed and NOT rolled back — operator needed",
            report.instance
        ))
        .red()
        .bold(),
    };
    out.push_str(&format!("{headline}\n"));
    if let Some(r) = &report.refusal {
        out.push_str(&format!("  rule `{}`: {}\n", r.rule, r.reason));
        if !r.path.is_empty() {
            out.push_str(&format!(
                "  path: {} → {}\n",
                report.from_version,
                r.path.join(" → ")
            ));
        }
        if !r.advice.is_empty() {
            out.push_str(&format!("  what to do: {}\n", r.advice));
        }
    }
    if let Some(f) = &report.failure {
        let mut lines = f.lines().filter(|l| !l.trim().is_empty());
        out.push_str(&format!("  why: {}\n", lines.next().unwrap_or("")));
        if let Some(last) = lines.next_back() {
            out.push_str(&format!("       {}\n", last.trim()));
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
            c.name,
            c.detail
        ));
    }
    for b in &report.backups {
        out.push_str(&format!(
            "  backup {} of `{}` at {} ({}: {})\n",
            b.id, b.binding, b.product_version, b.method, b.location
        ));
    }
    if let Some(cmd) = &report.rollback_command {
        out.push_str(&format!(
            "  to return to {} later: {cmd}\n",
            report.from_version
        ));
    }
    for d in &report.denials {
        out.push_str(&format!(
            "  denied: {} {} on `{}`: {}\n",
            d.event.capability,
            d.event.operation,
            d.event.binding,
            d.event.reason.clone().unwrap_or_default()
        ));
    }
    if let Some(help) = &report.operator_help {
        out.push_str(help);
    }
    if !report.run_id.is_empty() {
        out.push_str(&format!(
            "  run {} (upshift history --run {})\n",
            report.run_id, report.run_id
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
            let target = options
                .to
                .clone()
                .or_else(|| instance.target.clone())
                .unwrap_or_else(|| "(no target)".into());
            out.push_str(&format!(
                "  wave {}  {:<20} {:<13} → {target}\n",
                w + 1,
                instance.name,
                instance.adapter_label()
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
            i.instance,
            i.target,
            i.message
                .as_deref()
                .map(|m| format!("  ({})", m.lines().next().unwrap_or_default()))
                .unwrap_or_default()
        ));
    }
    if let Some(h) = &report.halted {
        out.push_str(&format!(
            "{}\n",
            style(format!("halted: {h}")).yellow().bold()
        ));
    }
    out.push_str(&format!(
        "  report: {} (JSON: {})\n",
        markdown.display(),
        json.display()
    ));
    out
}
