//! Rollout reports in Markdown and JSON, written to `<data>/reports/<id>.{md,json}`: per
//! instance from → to, every step with its duration and result (from the journal), backups
//! taken, what was rolled back and why, the restore command for successful upgrades, and the
//! audit records of denials.

use std::fmt::Write as _;
use std::path::PathBuf;

use super::rollout::{RolloutReport, Status};
use super::{OpError, Session};

fn status_text(status: Status) -> &'static str {
    match status {
        Status::Upgraded => "upgraded",
        Status::AlreadyThere => "already at target",
        Status::Refused => "refused",
        Status::RolledBack => "failed, rolled back",
        Status::NeedsOperator => "FAILED, NOT rolled back: operator needed",
        Status::Error => "could not run",
        Status::NotStarted => "not started",
    }
}

/// Escape a table cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// The report as Markdown; step durations come from the session's journal.
pub async fn markdown(session: &Session, report: &RolloutReport) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Upshift rollout {}\n", report.id);
    let _ = writeln!(
        md,
        "{} → {} · waves {:?} · up to {} at a time · failure budget {}\n",
        report.started_at, report.finished_at, report.waves, report.parallel, report.max_failures
    );
    if let Some(h) = &report.halted {
        let _ = writeln!(md, "**Halted:** {h}\n");
    }
    let _ = writeln!(md, "| instance | product | wave | from → to | result |");
    let _ = writeln!(md, "|---|---|---|---|---|");
    for i in &report.instances {
        let from = i.run.as_ref().map_or("?", |r| r.from_version.as_str());
        let _ = writeln!(
            md,
            "| {} | {} | {} | {from} → {} | {} |",
            i.instance,
            i.product,
            i.wave,
            i.target,
            status_text(i.status)
        );
    }
    for i in &report.instances {
        let _ = writeln!(md, "\n## {} ({})\n", i.instance, i.product);
        let _ = writeln!(md, "Result: **{}**", status_text(i.status));
        if let Some(m) = &i.message {
            let _ = writeln!(md, "\n{}", cell(m));
        }
        let Some(run) = &i.run else { continue };
        let _ = writeln!(
            md,
            "\n{} → {}, run `{}`\n",
            run.from_version, run.to_version, run.run_id
        );
        let steps = session.state.steps(&run.run_id).await.unwrap_or_default();
        if !steps.is_empty() {
            let _ = writeln!(md, "| phase | step | result | duration | detail |");
            let _ = writeln!(md, "|---|---|---|---|---|");
            for s in &steps {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} |",
                    s.phase,
                    s.step_id,
                    s.status,
                    s.duration_ms
                        .map_or("—".to_string(), |d| format!("{:.1} s", d as f64 / 1000.0)),
                    cell(
                        s.error
                            .as_deref()
                            .or(s.output.as_deref())
                            .unwrap_or_default()
                    )
                );
            }
        }
        for b in &run.backups {
            let _ = writeln!(
                md,
                "\nBackup `{}` of `{}` at {} ({}): {}",
                b.id, b.binding, b.product_version, b.method, b.location
            );
        }
        if let Some(f) = &run.failure {
            let _ = writeln!(md, "\nWhy it was rolled back: {}", cell(f));
        }
        if let Some(c) = &run.rollback_command {
            let _ = writeln!(md, "\nTo return to {} later: `{c}`", run.from_version);
        }
        if let Some(help) = &run.operator_help {
            let _ = writeln!(md, "\nFor the operator:\n\n```\n{help}\n```");
        }
        if !run.denials.is_empty() {
            let _ = writeln!(md, "\nDenied capability calls:\n");
            for d in &run.denials {
                let _ = writeln!(
                    md,
                    "- #{} {} `{}` {}.{}: {}",
                    d.seq,
                    d.time,
                    d.event.binding,
                    d.event.capability,
                    d.event.operation,
                    d.event.reason.as_deref().unwrap_or("denied")
                );
            }
        }
    }
    md
}

/// Write the report as `<data>/reports/<id>.md` and `.json` (0600, secrets masked; the
/// Markdown, read with `cat`, with adapter text's control characters made visible); returns
/// both paths.
pub async fn write(
    session: &Session,
    report: &RolloutReport,
) -> Result<(PathBuf, PathBuf), OpError> {
    use crate::caps::private;
    let dir = session.data.join("reports");
    private::create_dir_all(&dir)
        .map_err(|e| OpError::Host(format!("cannot create {}: {e}", dir.display())))?;
    let md = dir.join(format!("{}.md", report.id));
    let json = dir.join(format!("{}.json", report.id));
    let text = markdown(session, report).await;
    let text = crate::model::text::visible_lines(&text);
    private::write(&md, session.mask(&text).as_bytes())
        .map_err(|e| OpError::Host(format!("cannot write {}: {e}", md.display())))?;
    let text = session
        .secrets
        .masked_json(report)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .map_err(|e| OpError::Host(format!("cannot encode the report: {e}")))?;
    private::write(&json, text)
        .map_err(|e| OpError::Host(format!("cannot write {}: {e}", json.display())))?;
    Ok((md, json))
}

/// Write one run's report (`apply`, `restore`, `resume`) as `<data>/reports/<run id>.json`
/// (0600, secrets masked), so it is there whatever happened to the terminal that ran it.
pub fn write_run(session: &Session, report: &super::apply::RunReport) -> Result<PathBuf, OpError> {
    use crate::caps::private;
    let dir = session.data.join("reports");
    private::create_dir_all(&dir)
        .map_err(|e| OpError::Host(format!("cannot create {}: {e}", dir.display())))?;
    let json = dir.join(format!("{}.json", report.run_id));
    let text = session
        .secrets
        .masked_json(report)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .map_err(|e| OpError::Host(format!("cannot encode the report: {e}")))?;
    private::write(&json, text)
        .map_err(|e| OpError::Host(format!("cannot write {}: {e}", json.display())))?;
    Ok(json)
}
