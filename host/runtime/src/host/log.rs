//! `upshift:adapter/log` and `progress`: what the adapter tells the operator, within a budget per call.

use super::HostState;
use crate::bindings::upshift::adapter::{log, progress};
use upshift_caps::limits::{MAX_LOG_LINE, MAX_LOG_PER_CALL};
use upshift_caps::{Event, InstanceCaps, Operation};

fn cut(text: &str) -> String {
    if text.len() <= MAX_LOG_LINE {
        return text.to_string();
    }
    let mut end = MAX_LOG_LINE;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes cut)", &text[..end], text.len() - end)
}

impl HostState {
    /// Spend one unit of the per-call log budget; the first message over it audits the flood.
    fn spend_log_budget(&mut self, caps: &InstanceCaps, what: Operation) -> bool {
        if self.log_budget > 0 {
            self.log_budget -= 1;
            return true;
        }
        if !self.flood_reported {
            self.flood_reported = true;
            let reason = format!(
                "more than {MAX_LOG_PER_CALL} log/progress messages in one call; the rest are dropped"
            );
            let _ = caps.deny_flood(what, reason);
        }
        false
    }
}

impl log::Host for HostState {
    async fn write(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        let Some(caps) = self.caps.clone() else {
            return Ok(());
        };
        if !self.spend_log_budget(&caps, Operation::LogWrite) {
            return Ok(());
        }
        // Only a delivered message is a host call of the export's budget; one dropped over
        // the per-call cap costs nothing more.
        self.charge_call()?;
        let level = match level {
            log::Level::Debug => "debug",
            log::Level::Info => "info",
            log::Level::Warn => "warn",
            log::Level::Error => "error",
        };
        caps.events.emit(Event::Log {
            instance: caps.caller().instance.clone(),
            level: level.into(),
            message: cut(&message),
        });
        Ok(())
    }
}

impl progress::Host for HostState {
    async fn report(&mut self, done: u64, total: u64, message: String) -> wasmtime::Result<()> {
        let Some(caps) = self.caps.clone() else {
            return Ok(());
        };
        if !self.spend_log_budget(&caps, Operation::ProgressReport) {
            return Ok(());
        }
        self.charge_call()?;
        caps.events.emit(Event::Progress {
            instance: caps.caller().instance.clone(),
            done,
            total,
            message: cut(&message),
        });
        Ok(())
    }
}
