//! Passing DevLake's migration gate (product-facts §4.4): while scripts are pending on a
//! non-empty history every API call answers 428 until `GET /proceed-db-migration`; the call
//! runs the scripts, and a failure (e.g. `Error 1060: Duplicate column name`) leaves earlier
//! scripts applied, so the host restores the backup.

use std::time::{Duration, Instant};

use upshift_adapter_sdk::{AdapterError, StepOutput, error, info, live};

use crate::detect::GATED_PROBE;

const STARTUP: Duration = Duration::from_secs(120);

fn wait(what: &str, started: Instant) -> Result<(), AdapterError> {
    if started.elapsed() > STARTUP {
        return Err(error(format!(
            "DevLake {what} within {} s",
            STARTUP.as_secs()
        )));
    }
    std::thread::sleep(Duration::from_millis(200));
    Ok(())
}

/// Wait for the API, confirm the migration if it asks, and wait until it serves.
pub fn pass() -> Result<StepOutput, AdapterError> {
    let started = Instant::now();
    let mut confirmed = false;
    loop {
        match live::get("api", GATED_PROBE) {
            Ok(a) if a.status == 428 && !confirmed && !a.body.contains("in progress") => {
                info(
                    "DevLake asks to confirm its migration (HTTP 428); calling /proceed-db-migration",
                );
                let r = live::get("api", "/proceed-db-migration")?;
                if r.status != 200 {
                    return Err(error(format!(
                        "/proceed-db-migration answered {}: {}",
                        r.status,
                        r.body.chars().take(400).collect::<String>()
                    )));
                }
                confirmed = true;
            }
            // Still migrating, or not up yet.
            Ok(a) if a.status == 428 || a.status >= 500 => {
                wait("did not finish migrating", started)?
            }
            Ok(_) => {
                return Ok(StepOutput {
                    summary: if confirmed {
                        "migration confirmed through /proceed-db-migration; the API serves".into()
                    } else {
                        "no migration to confirm; the API serves".into()
                    },
                });
            }
            Err(_) => wait("did not answer", started)?,
        }
    }
}
