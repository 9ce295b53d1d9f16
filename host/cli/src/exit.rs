//! Exit codes: the CLI's reading of the library's outcomes. 0 done · 1 error (also: a run that
//! failed before changing anything) · 2 bad usage or input · 3 refused by the product's rules or
//! by preflight · 4 failed and rolled back · 5 failed and not rolled back (an operator is
//! needed) · 6 another run holds the instance's lease, this run (or an agent's item) lost its
//! lease to another holder, or the instance has an unfinished run.

use upshift::ops::apply::Outcome;
use upshift::ops::rollout::{RolloutReport, Status};
use upshift::tape::replay::ReplayReport;

/// The instance's lease is someone else's: held by another run, or lost to another holder.
pub const BUSY: u8 = 6;

/// One run's outcome.
pub fn outcome(outcome: Outcome) -> u8 {
    match outcome {
        Outcome::Succeeded | Outcome::AlreadyThere => 0,
        Outcome::Refused => 3,
        Outcome::RolledBack => 4,
        Outcome::NeedsOperator => 5,
        Outcome::NothingChanged => 1,
    }
}

/// A rollout: 0 when every instance is upgraded or already there, 5 if any needs an operator,
/// 4 otherwise.
pub fn rollout(report: &RolloutReport) -> u8 {
    let statuses = || report.instances.iter().map(|i| i.status);
    if statuses().any(|s| s == Status::NeedsOperator) {
        5
    } else if statuses().all(|s| matches!(s, Status::Upgraded | Status::AlreadyThere)) {
        0
    } else {
        4
    }
}

/// A replay: 0 when the adapter answered identically, 1 when anything differs.
pub fn replay(report: &ReplayReport) -> u8 {
    if report.identical { 0 } else { 1 }
}
