//! The operator's hands on an instance's services: `adopt`, `start` and `stop`.

use upshift::ops::preflight::{self, ServiceCommand};

use super::Ctx;
use crate::cli::ServiceArgs;
use crate::{Exit, out, print_json, ui};

/// `upshift adopt|start|stop INSTANCE [BINDING]`: what was done to each service.
pub async fn control(ctx: &Ctx, args: ServiceArgs, command: ServiceCommand) -> Result<u8, Exit> {
    let fleet = ctx.load_fleet()?;
    let session = ctx
        .open_session(upshift::caps::EventSink::discard())
        .await?;
    let instance = fleet.instance(&args.instance)?;
    let done = preflight::control(&session, instance, args.binding.as_deref(), command).await?;
    if args.json {
        print_json(&done)?;
    } else {
        for d in &done {
            out(&format!(
                "{} `{}`: {}\n",
                ui::v(&instance.name),
                ui::v(&d.binding),
                ui::v(&d.summary)
            ));
        }
    }
    Ok(0)
}
