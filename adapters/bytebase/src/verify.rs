//! Checks after an upgrade (product-facts "What an adapter must encode → Bytebase →
//! Verification").

use upshift_adapter_sdk::live::check;
use upshift_adapter_sdk::{AdapterError, Check, describe_cap_error, http, versions};

use crate::detect::{actuator, actuator_replicas, actuator_version, schema};
use crate::rules::SchemaFormat;

/// All checks for `expected`; failing checks are returned, not errors.
pub fn verify(expected: &str) -> Result<Vec<Check>, AdapterError> {
    let mut out = Vec::new();
    let expected_version = versions::parse(expected);
    let health = http::request("api", "GET", "/healthz", &[]);
    out.push(match health {
        Ok(r) => check(
            "healthz",
            r.status == 200,
            format!("/healthz answered {}", r.status),
        ),
        Err(e) => check(
            "healthz",
            false,
            format!("/healthz: {}", describe_cap_error(&e)),
        ),
    });
    let actuator = actuator();
    let api = actuator.as_ref().and_then(actuator_version);
    out.push(check(
        "api-version",
        api.as_deref() == Some(expected),
        format!("the API reports {}", api.as_deref().unwrap_or("nothing")),
    ));
    let schema = schema()?;
    let (passed, detail) = match (&schema.version, &expected_version) {
        (Some(v), Some(e)) => {
            let format_ok =
                *e < semver::Version::new(3, 4, 1) || schema.format == Some(SchemaFormat::Semver);
            (
                v <= e && format_ok,
                format!(
                    "metadata schema at {v} ({}), expected ≤ {e}{}",
                    schema.format.map(|f| f.name()).unwrap_or("unknown format"),
                    if format_ok { "" } else { " in plain semver" }
                ),
            )
        }
        _ => (
            false,
            format!("no readable schema version (raw: {:?})", schema.raw),
        ),
    };
    out.push(check("schema-version", passed, detail));
    if let Some(n) = actuator.as_ref().and_then(actuator_replicas) {
        out.push(check(
            "replica-count",
            n == 1,
            format!("replicaCount = {n}"),
        ));
    }
    Ok(out)
}
