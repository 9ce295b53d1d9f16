//! Checks after an upgrade (product-facts "What an adapter must encode → KWDB →
//! Verification"): the version, health, and the row counts of the export.

use upshift_adapter_sdk::live::check;
use upshift_adapter_sdk::{AdapterError, Check, service};

use crate::detect::{NEXT_SQL, SQL, range_health, sql_version};
use crate::{catalog, export};

/// Every check for `expected`; failing checks are returned, not errors. After an
/// export/import upgrade the new instance (`next`) is the one checked.
pub fn verify(expected: &str) -> Result<Vec<Check>, AdapterError> {
    let binding = match service::inspect("next") {
        Ok(s) if s.running => NEXT_SQL,
        _ => SQL,
    };
    let mut out = Vec::new();
    let version = sql_version(binding);
    out.push(check(
        "version",
        match (&version, catalog::release(expected)) {
            (Ok(v), Some(want)) => catalog::release(v) == Some(want),
            _ => false,
        },
        match &version {
            Ok(v) => format!("SELECT version() on `{binding}` reports {v}"),
            Err(e) => e.message.clone(),
        },
    ));
    out.push(match range_health(binding) {
        Ok((0, 0)) => check("ranges", true, "no unavailable or under-replicated ranges"),
        Ok((u, r)) => check(
            "ranges",
            false,
            format!("{u} unavailable, {r} under-replicated"),
        ),
        Err(e) => check("ranges", false, e.message),
    });
    out.push(match export::compare(binding) {
        Ok(o) => check("row-counts", true, o.summary),
        Err(e) => check("row-counts", false, e.message),
    });
    Ok(out)
}
