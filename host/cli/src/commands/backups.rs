//! Backups: take, verify, list and restore.

use std::io::IsTerminal;

use upshift::ops::apply;
use upshift::runtime::bindings::BackupMethod;

use super::Ctx;
use super::runs::finish_run;
use crate::cli::{BackupArgs, ListArgs, Method, RestoreArgs};
use crate::ui::v;
use crate::{Exit, confirm, err_out, out, print_json, ui, usage};

/// `upshift backup INSTANCE`: back up its databases now.
pub async fn backup(ctx: &Ctx, args: BackupArgs) -> Result<u8, Exit> {
    let fleet = ctx.load_fleet()?;
    let Some(instance_name) = args.instance.clone() else {
        return Err(usage("give an INSTANCE to back up, or `backup verify ID`"));
    };
    let (_ui, sink) = ui::Ui::sink(args.json);
    let session = ctx.open_session(sink).await?;
    let method = match args.method {
        Method::Dump => BackupMethod::Dump,
        Method::Clone => BackupMethod::Clone,
    };
    let backups = apply::backup(&session, fleet.instance(&instance_name)?, method).await?;
    if args.json {
        print_json(&backups)?;
    } else {
        for b in &backups {
            out(&format!(
                "backup {} of `{}` at {} ({} {}, {} bytes{})\n",
                v(&b.id),
                v(&b.binding),
                v(&b.product_version),
                v(&b.method),
                v(&b.location),
                b.size_bytes.unwrap_or(0),
                b.sha256
                    .as_ref()
                    .map(|s| format!(", sha256 {}", v(s.get(..12).unwrap_or(s))))
                    .unwrap_or_default()
            ));
        }
    }
    Ok(0)
}

/// `upshift backup verify ID`: checksums, and with `--restore-test` a trial restore.
pub async fn backup_verify(
    ctx: &Ctx,
    id: String,
    restore_test: bool,
    json: bool,
) -> Result<u8, Exit> {
    let session = ctx
        .open_session(upshift::caps::EventSink::discard())
        .await?;
    let fleet = if ctx.fleet.exists() {
        Some(ctx.load_fleet()?)
    } else {
        None
    };
    let outcome =
        upshift::ops::backups::verify(&session, fleet.as_ref(), &id, restore_test).await?;
    if json {
        print_json(&outcome)?;
    } else {
        out(&format!(
            "backup {} of `{}` ({} {})\n",
            v(&outcome.backup.id),
            v(&outcome.backup.instance),
            v(&outcome.backup.method),
            v(&outcome.backup.location)
        ));
        for c in &outcome.checks {
            out(&format!(
                "  {} {}: {}\n",
                if c.passed { "✔" } else { "✘" },
                v(&c.name),
                v(&c.detail)
            ));
        }
        println!(
            "{}",
            if outcome.ok {
                "backup is good"
            } else {
                "backup is NOT good: marked invalid, it will not be restored"
            }
        );
    }
    Ok(if outcome.ok { 0 } else { 1 })
}

/// `upshift backups`: the catalog.
pub async fn backups(ctx: &Ctx, args: ListArgs) -> Result<u8, Exit> {
    let state = ctx.builder.open_state().await?;
    let backups = state.backups(args.instance.as_deref()).await?;
    if backups.is_empty()
        && let Some(name) = &args.instance
    {
        // No backups, and perhaps no such instance: a misspelt name is an error, not "none".
        ctx.load_fleet()?.instance(name)?;
    }
    if args.json {
        print_json(&backups)?;
    } else if backups.is_empty() {
        println!("no backups");
    } else {
        println!(
            "{:<16} {:<14} {:<8} {:<10} {:<6} {:<22} location",
            "id", "instance", "binding", "version", "method", "taken"
        );
        for b in &backups {
            out(&format!(
                "{:<16} {:<14} {:<8} {:<10} {:<6} {:<22} {}\n",
                v(&b.id),
                v(&b.instance),
                v(&b.binding),
                v(&b.product_version),
                v(&b.method),
                v(&b.created_at),
                v(&b.location)
            ));
        }
    }
    Ok(0)
}

/// `upshift restore`: a backup back in place, or into a new database.
pub async fn restore(ctx: &Ctx, args: RestoreArgs) -> Result<u8, Exit> {
    let fleet = ctx.load_fleet()?;
    let instance = fleet.instance(&args.instance)?;
    if !args.yes && !std::io::stdin().is_terminal() {
        return Err(usage(
            "no terminal to confirm on; pass --yes to run without a prompt",
        ));
    }
    let (ui, sink) = ui::Ui::sink(args.json);
    let session = ctx.open_session(sink).await?;
    let (json, yes) = (args.json, args.yes);
    let report = apply::restore(
        &session,
        instance,
        &args.backup_id,
        args.into.as_deref(),
        |plan| {
            if !json {
                err_out(&format!("Restore plan for {}:\n", v(&instance.name)));
                for (i, s) in plan.steps.iter().enumerate() {
                    err_out(&format!(
                        "  {:>2}. {:<16} {}\n",
                        i + 1,
                        v(&s.id),
                        v(&s.title)
                    ));
                }
                for n in &plan.notes {
                    err_out(&format!("  note: {}\n", v(n)));
                }
            }
            confirm(yes, "Proceed with this restore?").unwrap_or(false)
        },
    )
    .await;
    finish_run(&session, ui.as_deref(), report, json)
}
