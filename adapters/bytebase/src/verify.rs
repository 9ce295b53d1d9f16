//! Checks after an upgrade (product-facts "What an adapter must encode → Bytebase →
//! Verification").

use upshift_adapter_sdk::live::check;
use upshift_adapter_sdk::{AdapterError, Check, describe_cap_error, http};

use semver::Version;

use crate::catalog::{self, minor_line};
use crate::detect::{actuator, actuator_replicas, actuator_version, schema};
use crate::rules::SchemaFormat;

/// All checks for `expected`; failing checks are returned, not errors.
pub fn verify(expected: &str) -> Result<Vec<Check>, AdapterError> {
    let mut out = Vec::new();
    let expected_version = catalog::release(expected);
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
    let api_release = api.as_deref().and_then(catalog::release);
    out.push(check(
        "api-version",
        api_release.is_some() && api_release == expected_version,
        format!(
            "the API reports {}, expected {}",
            api.as_deref().unwrap_or("nothing"),
            expected_version.as_ref().map_or_else(
                || format!("`{expected}` (not a version)"),
                ToString::to_string
            )
        ),
    ));
    let schema = schema()?;
    let (passed, detail) = match (&schema.version, &expected_version) {
        (Some(v), Some(e)) => {
            let format_ok =
                *e < semver::Version::new(3, 4, 1) || schema.format == Some(SchemaFormat::Semver);
            let (reached, wanted) = schema_reached(v, e);
            (
                reached && format_ok,
                format!(
                    "metadata schema at {v} ({}), expected {wanted}{}",
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

/// Whether the schema `schema` is what release `target` leaves, and what was expected, in
/// words. A schema version is a file number (§1.5), never compared with a release as a whole
/// version: a release the catalog knows must reach its newest file (a file cherry-picked into
/// the same `<major>.<minor>` later may go past it); for one it does not know, the schema's
/// `<major>.<minor>` is at most the target's and the schema is not older than what the newest
/// known release before the target ships (every release carries its predecessors' files).
pub fn schema_reached(schema: &Version, target: &Version) -> (bool, String) {
    let within_line = minor_line(schema) <= minor_line(target);
    match catalog::schema_of(target) {
        Some(newest) => (
            within_line && *schema >= newest,
            format!(
                "{newest} (the newest schema file release {target} ships) or a later {}.{} file",
                target.major, target.minor
            ),
        ),
        None => {
            let floor = catalog::newest_before(target);
            let above_floor = floor.is_none_or(|k| *schema >= k.schema());
            (
                within_line && above_floor,
                match floor {
                    Some(k) => format!(
                        "a {}.{} file or older, not older than {} (what {} ships); {target} is not in the adapter's catalog",
                        target.major,
                        target.minor,
                        k.schema(),
                        k.release()
                    ),
                    None => format!(
                        "a {}.{} file or older; {target} is not in the adapter's catalog",
                        target.major, target.minor
                    ),
                },
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ver(s: &str) -> Version {
        Version::parse(s).expect("version")
    }

    #[test]
    fn the_schema_reaches_the_targets_newest_file_not_its_patch() {
        for (schema, target, ok) in [
            ("3.11.17", "3.11.1", true),
            ("3.14.32", "3.14.0", true),
            ("3.10.2", "3.10.0", true),
            ("3.11.11", "3.11.1", false),
            ("3.11.1", "3.11.1", false),
            ("3.12.0", "3.11.1", false),
            ("3.21.5", "3.22.0", true),
            ("3.22.3", "3.22.0", true),
            ("3.20.4", "3.22.0", false),
            ("3.23.0", "3.22.0", false),
            ("2.10.0", "2.10.0", true),
        ] {
            assert_eq!(
                schema_reached(&ver(schema), &ver(target)).0,
                ok,
                "schema {schema} after {target}"
            );
        }
    }
}
