//! Checks after an upgrade (product-facts "What an adapter must encode → Apache DevLake →
//! Verification").

use upshift_adapter_sdk::live::{self, check, endpoint_ok};
use upshift_adapter_sdk::rules::numeric;
use upshift_adapter_sdk::{AdapterError, Check};

use crate::catalog;
use crate::detect::{Api, api, connections, framework_script, starts};

/// Every check for `expected` (a tag); failing checks are returned, not errors.
pub fn verify(expected: &str) -> Result<Vec<Check>, AdapterError> {
    let mut out = vec![endpoint_ok("ping", "api", "/ping")];
    let gated = crate::detect::gate();
    out.push(check(
        "not-gated",
        gated.is_none(),
        match &gated {
            Some(body) => format!(
                "the API still answers 428: {}",
                body.chars().take(200).collect::<String>()
            ),
            None => "the API answers without the 428 gate".into(),
        },
    ));
    let served = api();
    out.push(check(
        "api-version",
        matches!(&served, Api::Serving(v) if numeric(v) == numeric(expected)),
        format!("/version: {served:?}"),
    ));
    let newest = starts()?.into_iter().next();
    out.push(check(
        "locking-history",
        newest
            .as_ref()
            .is_some_and(|s| s.succeeded && numeric(&s.version) == numeric(expected)),
        match &newest {
            Some(s) => format!("newest start: {} (succeeded: {})", s.version, s.succeeded),
            None => "no _devlake_locking_history rows".into(),
        },
    ));
    // The framework scripts reached exactly the target's newest (catalog); for a release the
    // catalog does not know, at least the newest known release before it ships.
    let recorded = framework_script()?;
    let target = catalog::release(expected);
    let (passed, wanted) = match target.as_ref().and_then(catalog::newest_script) {
        Some(newest) => (recorded == Some(newest), format!("{newest}")),
        None => {
            let floor = target.as_ref().and_then(|t| {
                catalog::RELEASES
                    .iter()
                    .filter(|((a, b, c), _)| semver::Version::new(*a, *b, *c) < *t)
                    .map(|&(_, s)| s)
                    .next_back()
            });
            (
                recorded.is_some() && recorded >= floor,
                floor.map_or("any".into(), |f| format!("≥ {f} (not in the catalog)")),
            )
        }
    };
    out.push(check(
        "framework-scripts",
        passed,
        format!(
            "_devlake_migration_history's newest framework script is {}, expected {wanted}",
            recorded.map_or("none".into(), |r| r.to_string())
        ),
    ));
    // The stored tokens must still decrypt through DevLake itself (§4.3).
    for (id, _) in connections()? {
        let path = format!("/plugins/github/connections/{id}");
        out.push(match live::get("api", &path) {
            Ok(a) => check(
                &format!("connection-{id}-decrypts"),
                a.status == 200,
                format!(
                    "{path} answered {}{}",
                    a.status,
                    if a.status == 200 {
                        String::new()
                    } else {
                        format!(": {}", a.body.chars().take(200).collect::<String>())
                    }
                ),
            ),
            Err(e) => check(&format!("connection-{id}-decrypts"), false, e.message),
        });
    }
    Ok(out)
}
