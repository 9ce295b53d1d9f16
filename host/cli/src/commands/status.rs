//! `upshift status`: the fleet at a glance (reads only).

use std::time::Duration;

use upshift::ops::rollout::{self, Selection};
use upshift::ops::status::{self, HealthState, InstanceStatus, PlanSummary, Reach, StatusOptions};

use super::Ctx;
use crate::cli::StatusArgs;
use crate::ui;

/// Adapter or product text made visible (see `ui::v`), owned.
fn v(text: &str) -> String {
    ui::v(text).into_owned()
}
use crate::{Exit, out, print_json, secrets, stop_flag, usage};

/// `upshift status`: one table (or one JSON array); with `--watch`, again every SECS seconds
/// until SIGINT or SIGTERM (exit 0).
pub async fn status(ctx: &Ctx, args: StatusArgs) -> Result<u8, Exit> {
    let seconds = |flag: &str, secs: f64| {
        Duration::try_from_secs_f64(secs)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| usage(format!("{flag} {secs}: give a number of seconds above 0")))
    };
    let timeout = seconds("--timeout", args.timeout)?;
    let every = args.watch.map(|s| seconds("--watch", s)).transpose()?;
    if args.parallel == 0 {
        return Err(usage("--parallel 0: give at least 1"));
    }
    let fleet = ctx.load_fleet()?;
    let selection = Selection {
        all: args.all || (args.instances.is_empty() && args.select.is_empty()),
        names: args.instances.clone(),
        filters: args.select.clone(),
    };
    let instances = rollout::select(&fleet, &selection)?;
    let session = ctx
        .open_session(upshift::caps::EventSink::discard())
        .await?;
    let options = StatusOptions {
        timeout,
        parallel: args.parallel,
    };
    let Some(every) = every else {
        let statuses = status::status(&session, &instances, options).await?;
        if args.json {
            print_json(&statuses)?;
        } else {
            out(&table(&statuses, args.verbose));
        }
        return Ok(0);
    };
    crate::WATCHING.store(true, std::sync::atomic::Ordering::SeqCst);
    loop {
        let statuses = status::status(&session, &instances, options).await?;
        if args.json {
            let value = secrets().masked_json(&statuses)?;
            out(&format!("{}\n", serde_json::to_string(&value)?));
        } else {
            out(&format!(
                "Every {} s: upshift status ({} instances), {} — Ctrl-C to stop\n{}\n",
                every.as_secs_f64(),
                statuses.len(),
                chrono_now(),
                table(&statuses, args.verbose)
            ));
        }
        let deadline = tokio::time::Instant::now() + every;
        while tokio::time::Instant::now() < deadline {
            if stop_flag().requested().is_some() {
                return Ok(0);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn chrono_now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// An age, short: `45s`, `12m`, `3h`, `2d`.
fn ago(secs: i64) -> String {
    let secs = secs.max(0);
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86_400 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

fn age_of(rfc3339: &str) -> Option<i64> {
    let t = chrono::DateTime::parse_from_rfc3339(rfc3339).ok()?;
    Some((chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_seconds())
}

fn health(s: &InstanceStatus) -> String {
    match s.reach {
        Reach::Unreachable => return "unreachable".into(),
        Reach::TimedOut => return "timed-out".into(),
        Reach::Error if s.version.is_none() => return "error".into(),
        _ => {}
    }
    let worst = [
        HealthState::Unhealthy,
        HealthState::Stopped,
        HealthState::Unknown,
        HealthState::Healthy,
    ]
    .into_iter()
    .find(|state| s.health.iter().any(|h| h.state == *state));
    match worst {
        Some(HealthState::Healthy) => "healthy",
        Some(HealthState::Unhealthy) => "unhealthy",
        Some(HealthState::Stopped) => "stopped",
        Some(HealthState::Unknown) => "unknown",
        None => "-",
    }
    .into()
}

fn plan(s: &InstanceStatus) -> String {
    match &s.plan {
        None => "-".into(),
        Some(PlanSummary::UpToDate) => "up-to-date".into(),
        Some(PlanSummary::Plan { path, steps }) => {
            format!("{} ({steps} steps)", v(&path.join("→")))
        }
        Some(PlanSummary::Refused { rule, path, .. }) if path.is_empty() => {
            format!("refused: {}", v(rule))
        }
        Some(PlanSummary::Refused { rule, path, .. }) => {
            format!("refused: {} (via {})", v(rule), v(&path.join("→")))
        }
    }
}

/// The attention column: what needs an operator.
fn notes(s: &InstanceStatus) -> String {
    let mut notes = Vec::new();
    if s.contradiction.is_some() {
        notes.push("CONTRADICTION (see -v)".to_string());
    }
    for run in &s.unfinished_runs {
        notes.push(format!(
            "unfinished run {} (resume or abandon it)",
            v(&run.id)
        ));
    }
    if let Some(lease) = &s.lease {
        notes.push(format!(
            "lease held by {} ({}s left)",
            v(&lease.holder),
            lease.expires_in_secs
        ));
    }
    if let Some(problem) = &s.problem {
        notes.push(v(problem.lines().next().unwrap_or_default()));
    }
    notes.join("; ")
}

/// The table `status` prints: one line per instance, and with `verbose` the details below.
fn table(statuses: &[InstanceStatus], verbose: bool) -> String {
    let header = [
        "NAME", "PRODUCT", "VERSION", "HEALTH", "TARGET", "PLAN", "LAST RUN", "BACKUP", "NOTES",
    ];
    let rows: Vec<[String; 9]> = statuses
        .iter()
        .map(|s| {
            [
                v(&s.instance),
                v(&s.product),
                s.version.as_deref().map_or("-".into(), |x| {
                    format!(
                        "{}{}",
                        v(x),
                        if s.contradiction.is_some() { "!" } else { "" }
                    )
                }),
                health(s),
                s.target.as_ref().map_or("-".into(), |t| v(&t.version)),
                plan(s),
                s.last_run.as_ref().map_or("-".into(), |r| {
                    format!(
                        "{} {}",
                        r.outcome,
                        age_of(&r.started_at).map_or(String::new(), |a| format!("{} ago", ago(a)))
                    )
                }),
                s.newest_backup
                    .as_ref()
                    .map_or("none".into(), |b| b.age_secs.map_or("?".into(), ago)),
                notes(s),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(cell);
                let pad = widths[i] + 2 - cell.chars().count();
                text.push_str(&" ".repeat(pad));
            }
        }
        format!("{}\n", text.trim_end())
    };
    let mut text = line(&header.map(String::from));
    for (row, s) in rows.iter().zip(statuses) {
        text.push_str(&line(row));
        if verbose {
            text.push_str(&details(s));
        }
    }
    text
}

fn details(s: &InstanceStatus) -> String {
    let mut text = String::new();
    if let Some(d) = &s.adapter_digest {
        text.push_str(&format!("    adapter  sha256:{}\n", v(d)));
    }
    for f in &s.facts {
        text.push_str(&format!("    fact     {} = {}\n", v(&f.key), v(&f.value)));
    }
    for h in &s.health {
        text.push_str(&format!(
            "    service  {}: {} ({})\n",
            v(&h.binding),
            match h.state {
                HealthState::Healthy => "healthy",
                HealthState::Unhealthy => "unhealthy",
                HealthState::Stopped => "stopped",
                HealthState::Unknown => "unknown",
            },
            v(&h.detail)
        ));
    }
    if let Some(t) = &s.target {
        text.push_str(&format!(
            "    target   {} (from the {})\n",
            v(&t.version),
            match t.source {
                status::TargetSource::Fleet => "fleet file's `target`",
                status::TargetSource::Catalog => "adapter's catalog: its newest release",
            }
        ));
    }
    if let Some(PlanSummary::Refused { reason, advice, .. }) = &s.plan {
        text.push_str(&format!(
            "    refused  {}\n    advice   {}\n",
            v(reason),
            v(advice)
        ));
    }
    if let Some(c) = &s.contradiction {
        text.push_str(&format!("    CONTRADICTION {}\n", v(c)));
    }
    if let Some(b) = &s.newest_backup {
        text.push_str(&format!(
            "    backup   {} {} of `{}` at {} ({})\n",
            v(&b.id),
            v(&b.method),
            v(&b.binding),
            v(&b.product_version),
            v(&b.created_at)
        ));
    }
    if let Some(p) = &s.problem {
        text.push_str(&format!("    problem  {}\n", v(p)));
    }
    text.push_str(&format!("    took     {} ms\n", s.took_ms));
    text
}
