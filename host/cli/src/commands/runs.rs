//! Upgrades: plan, apply (one instance or a rollout), resume, and the agents' queue.

use std::io::IsTerminal;

use upshift::ops::apply::{self, PlanOutcome};
use upshift::ops::{OpError, Session};

use super::Ctx;
use crate::cli::{AbandonArgs, AgentArgs, ApplyArgs, EnqueueArgs, PlanArgs, ResumeArgs};
use crate::{Exit, confirm, err_out, exit, out, print_json, record, ui, usage};

/// `upshift plan`: detect and plan, or plan offline; touches nothing. Several instances,
/// `--all` or `--select`: every instance's plan or refusal and a summary table.
pub async fn plan(ctx: &Ctx, args: PlanArgs) -> Result<u8, Exit> {
    if args.all || !args.select.is_empty() || args.instances.len() > 1 {
        return fleet_plan(ctx, &args).await;
    }
    let (ui, sink) = ui::Ui::sink(true);
    drop(ui);
    let mut session = ctx.open_session(sink).await?;
    let instance = args.instances.first().cloned().unwrap_or_default();
    let _tape = record::start(&mut session, &args.tape, &instance)?;
    let offline = match (&args.product, &args.adapter) {
        (Some(product), _) => Some(upshift::fleet::AdapterRef::Bundled(product.clone())),
        (None, Some(file)) => Some(upshift::fleet::AdapterRef::File(file.clone())),
        (None, None) => None,
    };
    let options = apply::PlanOptions {
        allow_unknown: args.allow_unknown,
        wait_healthy_secs: args.timeout,
    };
    let report = match (args.instances.first(), &offline, &args.from) {
        (None, Some(adapter), Some(from)) => {
            let Some(to) = &args.to else {
                return Err(usage("an offline plan needs --to VERSION"));
            };
            apply::offline_plan_with(&session, adapter, from, to, &options).await?
        }
        (Some(name), None, None) => {
            let fleet = ctx.load_fleet()?;
            let instance = fleet.instance(name)?;
            let to = instance.target_or(args.to.as_deref()).map_err(usage)?;
            apply::plan_instance_with(&session, instance, &to, &options).await?
        }
        _ => {
            return Err(usage(
                "give an INSTANCE (or several, --all, --select F), or --product P (or --adapter FILE) --from V --to V for an offline plan",
            ));
        }
    };
    if args.json {
        print_json(&report)?;
    } else {
        out(&ui::plan_text(&report));
    }
    Ok(match report.outcome {
        PlanOutcome::Plan(_) => 0,
        // Already there: nothing to do, which is not a refusal.
        PlanOutcome::Refused(r) if r.rule == apply::ALREADY_AT_TARGET => 0,
        PlanOutcome::Refused(_) => 3,
    })
}

/// How many instances a fleet-wide plan detects at a time.
const PLAN_CONCURRENCY: usize = 8;

/// `upshift plan --all|NAMES|--select F`: every instance's plan or refusal, then a summary
/// table. Exit 0 when every instance has a plan or is already there, 3 when any is refused,
/// 1 when any could not be planned.
async fn fleet_plan(ctx: &Ctx, args: &PlanArgs) -> Result<u8, Exit> {
    use upshift::ops::rollout::{self, PlanResult};
    if args.tape.record.is_some() {
        return Err(usage("--record records one instance's plan; name one"));
    }
    let fleet = ctx.load_fleet()?;
    let selection = rollout::Selection {
        all: args.all,
        names: args.instances.clone(),
        filters: args.select.clone(),
    };
    let instances = rollout::select(&fleet, &selection)?;
    let session = ctx
        .open_session(upshift::caps::EventSink::discard())
        .await?;
    let options = apply::PlanOptions {
        allow_unknown: args.allow_unknown,
        wait_healthy_secs: args.timeout,
    };
    let lines = rollout::plan_all(
        &session,
        &instances,
        args.to.as_deref(),
        &options,
        PLAN_CONCURRENCY,
    )
    .await;
    let mut counts = std::collections::BTreeMap::new();
    for line in &lines {
        *counts.entry(line.result).or_insert(0usize) += 1;
    }
    if args.json {
        print_json(&serde_json::json!({ "instances": lines, "counts": counts }))?;
    } else {
        for line in &lines {
            match &line.report {
                Some(report) => out(&ui::plan_text(report)),
                None => out(&format!(
                    "{} {}: {}\n",
                    ui::v(&line.instance),
                    ui::v(&line.product),
                    ui::v(line.error.as_deref().unwrap_or_default())
                )),
            }
        }
        out(&ui::fleet_plan_table(&lines));
    }
    Ok(if counts.contains_key(&PlanResult::Error) {
        1
    } else if counts.contains_key(&PlanResult::Refused) {
        3
    } else {
        0
    })
}

/// `upshift apply`: one instance, or a rollout over several.
pub async fn apply(ctx: &Ctx, args: ApplyArgs) -> Result<u8, Exit> {
    let fleet = ctx.load_fleet()?;
    if !args.yes && !std::io::stdin().is_terminal() {
        return Err(usage(
            "no terminal to confirm on; pass --yes to run without a prompt",
        ));
    }
    let (ui, sink) = ui::Ui::sink(args.json);
    let mut session = ctx.open_session(sink).await?;
    let json = args.json;
    let yes = args.yes;
    if args.all || !args.select.is_empty() || args.instances.len() != 1 {
        if args.tape.record.is_some() {
            return Err(usage("--record records one instance's run; name one"));
        }
        return rollout(&session, &fleet, &args, ui.as_deref()).await;
    }
    let instance = fleet.instance(&args.instances[0])?;
    let to = instance.target_or(args.to.as_deref()).map_err(usage)?;
    let _tape = record::start(&mut session, &args.tape, &instance.name)?;
    let options = apply::PlanOptions {
        allow_unknown: args.allow_unknown,
        wait_healthy_secs: args.timeout,
    };
    let report = apply::apply_with(&session, instance, &to, &options, |plan| {
        if !json {
            err_out(&ui::plan_text(plan));
        }
        confirm(yes, "Proceed with this plan?").unwrap_or(false)
    })
    .await;
    finish_run(&session, ui.as_deref(), report, json)
}

/// `apply` over several instances: waves, parallelism, a failure budget and a report.
pub async fn rollout(
    session: &Session,
    fleet: &upshift::fleet::Fleet,
    args: &ApplyArgs,
    ui: Option<&ui::Ui>,
) -> Result<u8, Exit> {
    use upshift::ops::{report, rollout};
    let selection = rollout::Selection {
        all: args.all,
        names: args.instances.clone(),
        filters: args.select.clone(),
    };
    let instances = rollout::select(fleet, &selection)?;
    let waves = match &args.waves {
        Some(text) => rollout::parse_waves(text).map_err(usage)?,
        None => Vec::new(),
    };
    let options = rollout::Options {
        to: args.to.clone(),
        parallel: args.parallel,
        waves,
        max_failures: args.max_failures,
        allow_unknown: args.allow_unknown,
        wait_healthy_secs: args.timeout,
    };
    if !args.json {
        // What each instance would do, as `plan --all` shows it, before the question.
        let plan_options = apply::PlanOptions {
            allow_unknown: args.allow_unknown,
            wait_healthy_secs: args.timeout,
        };
        let lines = rollout::plan_all(
            session,
            &instances,
            args.to.as_deref(),
            &plan_options,
            PLAN_CONCURRENCY,
        )
        .await;
        err_out(&ui::fleet_plan_table(&lines));
        err_out(&ui::rollout_plan_text(&instances, &options));
    }
    if !confirm(args.yes, "Start this rollout?")? {
        return Err(usage("not confirmed; nothing was changed"));
    }
    let outcome = rollout::rollout(session, &instances, &options).await;
    if let Some(ui) = ui {
        ui.clear();
    }
    let outcome = outcome?;
    let (md, json_path) = report::write(session, &outcome).await?;
    if args.json {
        print_json(&outcome)?;
    } else {
        // The result on stdout, as a single apply's; progress and the prompt were on stderr.
        out(&ui::rollout_text(&outcome, &md, &json_path));
    }
    Ok(exit::rollout(&outcome))
}

/// `upshift enqueue`: queue upgrades for agents.
pub async fn enqueue(ctx: &Ctx, args: EnqueueArgs) -> Result<u8, Exit> {
    let fleet = ctx.load_fleet()?;
    let session = ctx
        .open_session(upshift::caps::EventSink::discard())
        .await?;
    let selection = upshift::ops::rollout::Selection {
        all: args.all,
        names: args.instances.clone(),
        filters: args.select.clone(),
    };
    let mut items = Vec::new();
    for instance in upshift::ops::rollout::select(&fleet, &selection)? {
        let target = instance.target_or(args.to.as_deref()).map_err(usage)?;
        items.push(upshift::queue::QueueItem {
            instance: instance.name.clone(),
            target,
            allow_unknown: args.allow_unknown,
        });
    }
    let n = upshift::ops::agent::enqueue(&session, &items).await?;
    println!("queued {n} of {} instance(s)", items.len());
    Ok(0)
}

/// `upshift agent`: claim queued upgrades and carry them out.
pub async fn agent(ctx: &Ctx, args: AgentArgs) -> Result<u8, Exit> {
    let fleet = ctx.load_fleet()?;
    let (ui, sink) = ui::Ui::sink(args.json);
    let session = ctx.open_session(sink).await?;
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| upshift::lease::holder_name("agent"));
    // SIGINT/SIGTERM let the item in hand finish (or roll back); the agent then claims no more.
    session.stop().begin_changes()?;
    let done = upshift::ops::agent::run(&session, &fleet, &name, args.until_empty).await;
    if let Some(ui) = ui.as_deref() {
        ui.clear();
    }
    let done = done?;
    if args.json {
        print_json(&done)?;
    } else {
        for h in &done {
            out(&format!(
                "  {:<20} {}{}\n",
                ui::v(&h.instance),
                ui::v(&h.outcome),
                if h.resumed {
                    " (resumed an interrupted run)"
                } else {
                    ""
                }
            ));
        }
    }
    // An item whose lease another agent took over is that agent's to finish; this one says so
    // with exit 6 (it touched nothing after it lost the lease).
    Ok(if done.iter().any(|h| h.lost) {
        crate::exit::BUSY
    } else {
        0
    })
}

/// `upshift resume`: continue a run after the host died.
pub async fn resume(ctx: &Ctx, args: ResumeArgs) -> Result<u8, Exit> {
    let fleet = ctx.load_fleet()?;
    let (ui, sink) = ui::Ui::sink(args.json);
    let session = ctx.open_session(sink).await?;
    // Resuming may change the instance from its first step: SIGINT/SIGTERM wait for a boundary.
    session.stop().begin_changes()?;
    let report =
        upshift::ops::resume::resume(&session, &fleet, &args.run, args.step_done.as_deref()).await;
    finish_run(&session, ui.as_deref(), report, args.json)
}

/// `upshift abandon`: end an unfinished run the operator put right by hand.
pub async fn abandon(ctx: &Ctx, args: AbandonArgs) -> Result<u8, Exit> {
    let session = ctx
        .open_session(upshift::caps::EventSink::discard())
        .await?;
    let done = upshift::ops::abandon::abandon(&session, &args.run, &args.why).await?;
    if args.json {
        print_json(&done)?;
    } else {
        out(&format!(
            "run {} ({} of `{}`, was {}) is abandoned: {}\nrecorded in its journal and as audit record {}; nothing on the instance was touched\n",
            ui::v(&done.run_id),
            ui::v(&done.kind),
            ui::v(&done.instance),
            done.was,
            ui::v(&done.why),
            done.audit_seq
        ));
    }
    Ok(0)
}

/// Clear the bars, keep the run's report in the reports directory, print it (text or JSON)
/// and map its outcome to the exit code.
pub fn finish_run(
    session: &Session,
    ui: Option<&ui::Ui>,
    report: Result<apply::RunReport, OpError>,
    json: bool,
) -> Result<u8, Exit> {
    if let Some(ui) = ui {
        ui.clear();
    }
    let report = report?;
    if !report.run_id.is_empty()
        && let Err(e) = upshift::ops::report::write_run(session, &report)
    {
        eprintln!("warn: the run's report was not kept: {e}");
    }
    if json {
        print_json(&report)?;
    } else {
        out(&ui::run_text(&report));
    }
    Ok(exit::outcome(report.outcome))
}
