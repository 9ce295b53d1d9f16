//! `upshift audit show`: the audit log, filtered.

use upshift::ops::audit_log::{self, AuditQuery, DecisionName};

use super::Ctx;
use crate::cli::AuditShowArgs;
use crate::ui::v;
use crate::{Exit, out, print_json, usage};

/// `upshift audit show [INSTANCE] [--denied] [--since T] [--json]`.
pub async fn show(ctx: &Ctx, args: AuditShowArgs) -> Result<u8, Exit> {
    let since = args
        .since
        .as_deref()
        .map(|t| audit_log::parse_since(t, chrono::Utc::now()))
        .transpose()
        .map_err(usage)?;
    if let Some(name) = &args.instance
        && let Ok(fleet) = ctx.load_fleet()
        && fleet.instance(name).is_err()
        && !fleet.instances.is_empty()
    {
        return Err(usage(format!(
            "no instance `{name}` in the fleet file {}; `upshift status` lists them",
            ctx.fleet.display()
        )));
    }
    let session = ctx
        .open_session(upshift::caps::EventSink::discard())
        .await?;
    let query = AuditQuery {
        instance: args.instance.clone(),
        denied_only: args.denied,
        since,
        limit: args.limit,
    };
    let entries = audit_log::show(&session, &query).await?;
    if args.json {
        print_json(&entries)?;
        return Ok(0);
    }
    if entries.is_empty() {
        out("no audit records match\n");
        return Ok(0);
    }
    for e in &entries {
        let decision = match e.decision {
            DecisionName::Allowed => "allowed",
            DecisionName::Denied => "DENIED",
            DecisionName::Unbound => "unbound",
        };
        let mut line = format!(
            "{} #{} {} {} {}.{}{} {}",
            v(&e.time),
            e.seq,
            v(&e.instance),
            e.run_id.as_deref().map_or("-".into(), v),
            v(&e.capability),
            v(&e.operation),
            if e.binding.is_empty() {
                String::new()
            } else {
                format!(" `{}`", v(&e.binding))
            },
            decision
        );
        if let Some(who) = &e.who {
            line.push_str(&format!(" by {}", v(who)));
        } else {
            line.push_str(&format!(
                " by adapter {}",
                v(e.adapter_digest.get(..12).unwrap_or(&e.adapter_digest))
            ));
        }
        for (label, value) in [
            ("reason", &e.reason),
            ("error", &e.error),
            ("detail", &e.detail),
        ] {
            if let Some(value) = value {
                line.push_str(&format!(" {label}: {}", v(value)));
            }
        }
        out(&format!("{line}\n"));
    }
    Ok(0)
}
