//! The KWDB (KaiwuDB) upgrade adapter: a standalone KWDB in a container (or as a binary), its
//! data directory and its extern directory. The rules are the table in [`rules`]; [`detect`]
//! reads the instance, [`steps`] holds the plans and [`export`] the export/import steps.

pub mod catalog;
pub mod detect;
pub mod export;
pub mod rules;
pub mod steps;
pub mod verify;

use semver::Version;
use upshift_adapter_sdk::FromFacts;
use upshift_adapter_sdk::rules::{Jump, Rule, backup_version};
use upshift_adapter_sdk::steps::CustomStep;
use upshift_adapter_sdk::{
    AdapterError, BackupMethod, Check, Detection, Plan, Product, Refusal, RestoreRequest, refuse,
};

use rules::Method;

upshift_adapter_sdk::manifest! {
    product: "kwdb",
    adapter_version: "0.1.0",
    supported_versions: ">=2.0.0, <4.0.0",
    catalog: ">=2.0.4, <=3.2.1",
    bindings: [
        { name: "sql", kind: db, access: [read, backup], purpose: "the running KWDB's SQL port (kwdb:// URL): version(), health, row counts, EXPORT", optional: false },
        { name: "app", kind: service, access: [inspect, control, switch_version], purpose: "the KWDB container or binary: stop, recreate with the new image, start", optional: false },
        { name: "store", kind: files, access: [read, snapshot, restore], purpose: "the data directory (--store), copied before an in-place upgrade", optional: false },
        { name: "extern", kind: files, access: [read, write, snapshot, restore], purpose: "the extern directory behind nodelocal://1 (shared with `next`): the exports, their counts, meta.sql edits", optional: false },
        { name: "next", kind: service, access: [inspect, control, switch_version], purpose: "a new, empty instance for upgrades that are never in place (2.x → 3.x)", optional: true },
        { name: "next-sql", kind: db, access: [read, restore], purpose: "the new instance's SQL port: IMPORT and row counts", optional: true },
    ],
}

/// KWDB, as the SDK's [`Product`].
pub struct Kwdb;

impl Product for Kwdb {
    const NAME: &'static str = "KWDB";
    const EXAMPLE: &'static str = "3.1.0";
    const NEWEST_MAJOR: u64 = 3;
    const REFUSALS: &'static [Rule<Self>] = rules::REFUSALS;
    const OFFLINE_NOTE: Option<&'static str> = Some(
        "Offline plan: range health, running jobs and (for export/import) the `next` instance are checked again in `preflight` and may still refuse.",
    );
    const CUSTOM_STEPS: &'static [CustomStep] = &[
        CustomStep {
            name: "export",
            run: |_| export::export(),
        },
        CustomStep {
            name: "prepare-meta",
            run: |_| export::prepare_meta(),
        },
        CustomStep {
            name: "import",
            run: |_| export::import(),
        },
        CustomStep {
            name: "compare-counts",
            run: export::compare,
        },
    ];
    type Facts = rules::Facts;

    fn detect() -> Result<Detection, AdapterError> {
        detect::detect()
    }

    fn upgrade(from: &Version, to: &Version) -> Plan {
        steps::upgrade(from, to)
    }

    fn verify(expected: &str) -> Result<Vec<Check>, AdapterError> {
        verify::verify(expected)
    }

    fn restore(request: &RestoreRequest) -> Result<Plan, Refusal> {
        let backup = &request.backup;
        if backup.binding != "store" || backup.method != BackupMethod::Snapshot {
            return Err(refuse(
                "restore-by-import",
                format!(
                    "backup {} is not a copy of the data directory; KWDB returns to an export by importing it into an empty instance of {} (§2.7)",
                    backup.id, backup.product_version
                ),
                &[],
                "deploy an empty instance of that version and IMPORT the export under the extern directory's upshift/",
            ));
        }
        let version = backup_version::<Self>(request)?.to_string();
        if request.into.is_some() {
            return Err(refuse(
                "restore-into-unsupported",
                "a data-directory copy is restored over the bound data directory only",
                &[],
                "drop --into",
            ));
        }
        Ok(steps::restore_store(&request.current(), &version))
    }

    fn notes(jump: &Jump<Self>) -> Vec<String> {
        if catalog::find(jump.to).is_some() {
            return Vec::new();
        }
        vec![rules::unknown_note(jump.to)]
    }

    /// The target was judged against the catalog when the plan was made (with the operator's
    /// `--allow-unknown`, which `preflight` does not see); everything else is read again.
    fn recheck(live: &Detection, _target: &Version) -> Result<rules::Facts, AdapterError> {
        Ok(rules::Facts {
            allow_unknown: Some(true),
            ..rules::Facts::from_facts(live)
        })
    }

    fn allowed(jump: &Jump<Self>, live: &Detection) -> String {
        format!(
            "{} → {} allowed ({}); databases: {}",
            jump.from,
            jump.to,
            match Method::of(jump.from, jump.to) {
                Method::InPlace => "in place",
                Method::ExportImport => "export/import into `next`",
            },
            live.fact("user-databases")
                .filter(|d| !d.is_empty())
                .unwrap_or("none")
        )
    }
}

upshift_adapter_sdk::export_product!(Kwdb);

#[cfg(test)]
mod tests {
    use super::*;
    use upshift_adapter_sdk::{exports, fact};

    #[test]
    fn allow_unknown_plans_an_unknown_release_with_a_note() {
        let offline = |facts| Detection {
            version: "3.2.1".into(),
            facts,
        };
        let refused = exports::plan::<Kwdb>(&offline(vec![]), "3.99.0").expect_err("unknown");
        assert_eq!(refused.rule, "unknown-release");
        let plan = exports::plan::<Kwdb>(
            &offline(vec![fact("operator.allow-unknown-release", "true")]),
            "3.99.0",
        )
        .expect("allowed");
        assert!(
            plan.notes
                .iter()
                .any(|n| n.contains("not in this adapter's release catalog")),
            "{:?}",
            plan.notes
        );
        // The operator's fact is not the instance's: the plan is still an offline one.
        assert!(plan.notes.iter().any(|n| n.starts_with("Offline plan")));
        let known = exports::plan::<Kwdb>(&offline(vec![]), "3.2.1");
        assert!(known.is_err(), "already at target");
        let known = exports::plan::<Kwdb>(
            &Detection {
                version: "3.1.0".into(),
                facts: vec![],
            },
            "3.2.1",
        )
        .expect("known");
        assert!(!known.notes.iter().any(|n| n.contains("release catalog")));
    }
}
