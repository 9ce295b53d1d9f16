//! What happened: the runs' journal and the audit log.

use super::Ctx;
use crate::cli::HistoryArgs;
use crate::ui::v;
use crate::{Exit, out, print_json, usage};

/// `upshift history`: runs, or one run's journaled steps.
pub async fn history(ctx: &Ctx, args: HistoryArgs) -> Result<u8, Exit> {
    let state = ctx.builder.open_state().await?;
    if let Some(run_id) = &args.run {
        let run = state
            .run(run_id)
            .await?
            .ok_or_else(|| usage(format!(
                "no run `{run_id}`\nfix: `upshift history` lists the runs (`--run` takes one of their ids)"
            )))?;
        let steps = state.steps(run_id).await?;
        if args.json {
            print_json(&serde_json::json!({ "run": run_json(&run)?, "steps": steps }))?;
        } else {
            out(&format!(
                "run {} {} {} {} → {}: {}{}\n",
                v(&run.id),
                v(&run.kind),
                v(&run.instance),
                v(&run.from_version),
                v(&run.to_version),
                run.status,
                run.message
                    .as_ref()
                    .map(|m| format!(" ({})", v(m)))
                    .unwrap_or_default()
            ));
            for s in &steps {
                // Which host (agent, process) journaled the step: several may share a run
                // when one took another's over.
                let by = s
                    .holder
                    .as_deref()
                    .map(|h| format!("  [{}]", v(h.strip_prefix("upshift on ").unwrap_or(h))))
                    .unwrap_or_default();
                out(&format!(
                    "  {:<8} {:<24} {:<10} {:>7} ms  {}{by}\n",
                    v(&s.phase),
                    v(&s.step_id),
                    s.status.to_string(),
                    s.duration_ms.unwrap_or(0),
                    v(s.error
                        .as_deref()
                        .or(s.output.as_deref())
                        .unwrap_or_default()
                        .lines()
                        .next()
                        .unwrap_or(""))
                ));
            }
        }
        return Ok(0);
    }
    let runs = state.runs(args.instance.as_deref(), args.limit).await?;
    if runs.is_empty()
        && let Some(name) = &args.instance
    {
        // No runs, and perhaps no such instance: a misspelt name is an error, not "no runs".
        ctx.load_fleet()?.instance(name)?;
    }
    if args.json {
        let runs = runs.iter().map(run_json).collect::<Result<Vec<_>, _>>()?;
        print_json(&runs)?;
    } else if runs.is_empty() {
        println!("no runs");
    } else {
        for r in &runs {
            out(&format!(
                "{}  {:<20} {:<8} {:<14} {:>8} → {:<8} {}\n",
                v(&r.started_at),
                v(&r.id),
                v(&r.kind),
                v(&r.instance),
                v(&r.from_version),
                v(&r.to_version),
                r.status
            ));
        }
    }
    Ok(0)
}

/// A run as JSON: its plan nested as JSON under `plan` (the journal keeps it as text in
/// `plan_json`), its actions spelled as `upshift plan --json` spells them, `null` when the run
/// had none (a refusal).
fn run_json(run: &upshift::state::RunRecord) -> Result<serde_json::Value, Exit> {
    let mut value = serde_json::to_value(run)?;
    if let Some(object) = value.as_object_mut() {
        let mut plan = object
            .remove("plan_json")
            .and_then(|text| text.as_str().map(str::to_string))
            .map(|text| serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
            .unwrap_or(serde_json::Value::Null);
        if let Some(steps_of) = plan.get_mut("plan") {
            upshift::ops::plan::kebab_actions(steps_of);
        }
        object.insert("plan".into(), plan);
    }
    Ok(value)
}

/// `upshift audit verify`: check the hash-chained audit log (every segment, in order, line by
/// line), and its end against the head anchored in the state store; with `reanchor`, anchor
/// the head as it is now.
pub async fn audit_verify(ctx: &Ctx, json: bool, reanchor: bool) -> Result<u8, Exit> {
    let path = ctx.data.join("audit.jsonl");
    let state = ctx.builder.open_state().await?;
    let key = upshift::integrity::audit_log_key(&path);
    let anchor = state
        .audit_anchor(&key)
        .await?
        .map(|a| upshift::audit::ChainHead {
            records: a.records,
            hash: a.head,
        });
    if !path.exists() && anchor.is_none() {
        return Err(usage(format!(
            "no audit log at {}; pass --data DIR",
            path.display()
        )));
    }
    let report = upshift::audit::verify_anchored(&path, anchor.as_ref())?;
    let anchored = anchor.as_ref().map(|a| a.records);
    if json {
        print_json(&serde_json::json!({
            "records": report.records,
            "anchored": anchored,
            "ok": report.first_problem.is_none(),
            "problem": report.first_problem.as_ref().map(|p| serde_json::json!({
                "file": p.file, "line": p.line, "seq": p.seq, "kind": format!("{:?}", p.kind).to_lowercase(), "message": p.message,
            })),
        }))?;
    }
    let code = match &report.first_problem {
        None => {
            if !json {
                let anchor_note = match anchored {
                    Some(n) => format!("; head anchored in the state store at {n} records"),
                    None => "; not anchored in the state store yet".to_string(),
                };
                println!(
                    "audit log {}: {} records, chain intact{anchor_note}",
                    path.display(),
                    report.records,
                );
            }
            0
        }
        Some(p) => {
            if !json {
                println!("audit log {}: TAMPERED — {}", path.display(), v(&p.message));
            }
            1
        }
    };
    if reanchor {
        // The file's own chain must hold; its head is what it ends with now.
        let head = upshift::audit::AuditLog::open(&path)?.head();
        let own = upshift::audit::verify(&path)?;
        if let Some(p) = own.first_problem {
            return Err(usage(format!(
                "not re-anchored: the log's own chain is broken ({}); keep a copy and move it aside to start a new log",
                p.message
            )));
        }
        state.anchor_audit(&key, head.records, &head.hash).await?;
        // The index named records of the log as it was; the next session rebuilds it.
        state.clear_audit_index(&key).await?;
        if !json {
            println!(
                "re-anchored the audit log at {} records; the host appends to it again",
                head.records
            );
        }
    }
    Ok(code)
}
