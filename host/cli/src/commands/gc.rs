//! `upshift gc`: orphaned artifacts and backups past retention.

use upshift::ops::gc::{GcAction, GcItem};

use super::Ctx;
use crate::cli::GcArgs;
use crate::ui::v;
use crate::{Exit, out, print_json};

/// `upshift gc [--dry-run]`: exit 0, or 1 if a removal failed.
pub async fn gc(ctx: &Ctx, args: GcArgs) -> Result<u8, Exit> {
    let session = ctx
        .open_session(upshift::caps::EventSink::discard())
        .await?;
    // Without a fleet file only the data directory is handled (databases need their server).
    let fleet = if ctx.fleet.exists() {
        Some(ctx.load_fleet()?)
    } else {
        None
    };
    let report = upshift::ops::gc::gc(&session, fleet.as_ref(), args.dry_run).await?;
    if args.json {
        print_json(&report)?;
    } else {
        if report.items.is_empty() {
            out(
                "nothing to remove: no orphaned clone, restore target or partial backup, and no backup past retention\n",
            );
        }
        for item in &report.items {
            out(&line(item));
        }
        let removed = report
            .items
            .iter()
            .filter(|i| matches!(i.action, GcAction::Removed | GcAction::WouldRemove))
            .count();
        out(&if report.dry_run {
            format!(
                "dry run: {removed} would be removed ({}); nothing was removed\n",
                bytes(report.freed_bytes)
            )
        } else {
            format!(
                "{removed} removed ({} freed){}\n",
                bytes(report.freed_bytes),
                if report.failed > 0 {
                    format!("; {} could not be removed (see above)", report.failed)
                } else {
                    String::new()
                }
            )
        });
    }
    Ok(if report.failed > 0 { 1 } else { 0 })
}

/// One thing found: what was done, what it is, where, its size, and why.
fn line(item: &GcItem) -> String {
    let action = match item.action {
        GcAction::Removed => "removed",
        GcAction::WouldRemove => "would remove",
        GcAction::Kept => "kept",
        GcAction::AlreadyGone => "already gone",
        GcAction::Failed => "FAILED",
    };
    let owner = match (&item.instance, &item.binding) {
        (Some(i), Some(b)) => format!(" of {}/{}", v(i), v(b)),
        (Some(i), None) => format!(" of {}", v(i)),
        _ => String::new(),
    };
    let size = item
        .size_bytes
        .map(|n| format!(", {}", bytes(n)))
        .unwrap_or_default();
    let detail = item
        .detail
        .as_ref()
        .map(|d| format!("\n    {}", v(d)))
        .unwrap_or_default();
    format!(
        "{action}: {} `{}`{owner}{size}: {}{detail}\n",
        v(&item.kind),
        v(&item.location),
        v(&item.why)
    )
}

/// Bytes for people: `512 B`, `8.1 MiB`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {} ({n} bytes)", UNITS[unit])
}
