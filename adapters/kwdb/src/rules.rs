//! KWDB's upgrade paths and refusals as tables (product-facts §2.3, §2.4 and "What an adapter
//! must encode → KWDB"): the refusals, read by the SDK for offline and live plans alike, and the
//! in-place column of §2.3's path table, which decides how an allowed upgrade runs.

use semver::Version;
use upshift_adapter_sdk::rules::{Jump, Rule};

use crate::Kwdb;
use crate::catalog;

/// How an allowed upgrade runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Offline, in place: stop, copy the data directory, new image, start.
    InPlace,
    /// Never in place: a new instance of the target, then EXPORT from the old and IMPORT.
    ExportImport,
}

impl Method {
    /// How `from → to` runs once the rules allow it.
    pub fn of(from: &Version, to: &Version) -> Method {
        if in_place(from, to) {
            Method::InPlace
        } else {
            Method::ExportImport
        }
    }
}

fn v(major: u64, minor: u64, patch: u64) -> Version {
    Version::new(major, minor, patch)
}

/// May `from` be upgraded to `to` in place? The release catalog's paths ([`catalog::in_place`]).
pub fn in_place(from: &Version, to: &Version) -> bool {
    catalog::in_place(from, to)
}

/// Whether `meta.sql` must lose its `PARTITION INTERVAL` clauses before import (3.1.0+
/// deprecated the syntax; an export from 2.x carries it, §2.2).
pub fn strips_partition_interval(target: &Version) -> bool {
    *target >= v(3, 1, 0)
}

upshift_adapter_sdk::facts! {
    /// Facts from the live instance; `None` when unknown (offline plans).
    pub struct Facts {
        /// `ranges.unavailable` summed over stores.
        pub unavailable_ranges: Option<u64> = "unavailable-ranges",
        /// `ranges.underreplicated` summed over stores.
        pub underreplicated_ranges: Option<u64> = "underreplicated-ranges",
        /// Jobs (`SHOW JOBS`) still running.
        pub running_jobs: Option<u64> = "running-jobs",
        /// Whether a new instance is bound as `next` / `next-sql`.
        pub next_bound: Option<bool> = "next-bound",
        /// User databases already in the `next` instance.
        pub next_user_databases: Option<u64> = "next-user-databases",
        /// The release `SELECT version()` reports on `sql`.
        pub sql_version: Option<Version> = "sql-version",
        /// The release the `app` service declares (the fleet file's `version`, or the image
        /// tag's).
        pub declared_version: Option<Version> = "deployed-version",
        /// The operator passed `--allow-unknown` (`operator.allow-unknown-release`).
        pub allow_unknown: Option<bool> = "operator.allow-unknown-release",
    }
}

/// A count fact that is known and not zero.
fn some(count: Option<u64>) -> bool {
    count.is_some_and(|n| n > 0)
}

/// The declared and the SQL-reported release, when both are known and disagree.
pub fn contradiction(facts: &Facts) -> Option<(&Version, &Version)> {
    match (&facts.declared_version, &facts.sql_version) {
        (Some(declared), Some(sql)) if declared != sql => Some((declared, sql)),
        _ => None,
    }
}

/// Whether the target is outside the release catalog and the operator did not allow that.
fn unknown_target(j: &Jump<Kwdb>) -> bool {
    catalog::find(j.to).is_none() && j.facts.allow_unknown != Some(true)
}

/// The note a plan to a release the catalog does not know carries.
pub fn unknown_note(to: &Version) -> String {
    format!(
        "{to} is not in this adapter's release catalog ({}): it cannot know {to}'s upgrade paths or notes; planned because of --allow-unknown, by the same-minor default (in place only from another {}.{}.x)",
        catalog::range(),
        to.major,
        to.minor
    )
}

/// What KWDB refuses, in order: the first rule that applies refuses the upgrade. The last two
/// apply only to upgrades that are never in place.
pub const REFUSALS: &[Rule<Kwdb>] = &[
    Rule {
        id: "declared-contradicts-sql",
        when: |j| contradiction(j.facts).is_some(),
        reason: |j| match contradiction(j.facts) {
            Some((declared, sql)) => format!(
                "the fleet file's service `app` declares KWDB {declared} (its `version`, or its image tag), but SELECT version() on `sql` reports {sql}; Upshift will not guess which is true"
            ),
            None => String::new(),
        },
        advice: |j| {
            let sql = j
                .facts
                .sql_version
                .as_ref()
                .map_or_else(|| "the reported release".to_string(), ToString::to_string);
            format!(
                "if the instance really runs {sql}, correct service `app`'s `version` (or image) in the fleet file; if `sql` points at another instance, correct its URL; if this data directory was restored from another release, restore the backup that matches the declared one. Then plan again"
            )
        },
        via: None,
    },
    Rule::ALREADY_AT_TARGET,
    Rule {
        id: "downgrade",
        when: |j| j.to < j.from,
        reason: |Jump { from, to, .. }| {
            format!(
                "UPGRADE ERROR:The requested upgrade version is older than the current installed version.(current:{from} new_version:{to}); after an upgrade KWDB cannot simply be downgraded (§2.3, §2.4)"
            )
        },
        advice: |_| {
            "to go back: reinstall the old version and restore the pre-upgrade data-directory copy or re-import the pre-upgrade export".into()
        },
        via: None,
    },
    Rule {
        id: "release-to-prerelease",
        when: |j| j.from.pre.is_empty() && !j.to.pre.is_empty(),
        reason: |Jump { from, to, .. }| {
            format!(
                "UPGRADE ERROR:Official version can not upgrade to alpha/beta ({from} → {to}, §2.4)"
            )
        },
        advice: |_| "choose an official release".into(),
        via: None,
    },
    Rule::UNKNOWN_MAJOR,
    Rule {
        id: "unknown-release",
        when: unknown_target,
        reason: |j| {
            let near: Vec<String> = catalog::nearest(j.to)
                .iter()
                .map(ToString::to_string)
                .collect();
            format!(
                "KWDB {} is not a release this adapter knows ({}); the nearest known: {}",
                j.to,
                catalog::range(),
                near.join(", ")
            )
        },
        advice: |_| {
            "choose a known release, or pass --allow-unknown to plan it anyway (the adapter cannot know its upgrade paths)".into()
        },
        via: None,
    },
    Rule {
        id: "unavailable-ranges",
        when: |j| some(j.facts.unavailable_ranges),
        reason: |j| {
            format!(
                "{} range(s) are unavailable (kwdb_internal.kv_store_status)",
                j.facts.unavailable_ranges.unwrap_or(0)
            )
        },
        advice: |_| {
            "bring every node back and wait until no range is unavailable, then plan again".into()
        },
        via: None,
    },
    Rule {
        id: "underreplicated-ranges",
        when: |j| some(j.facts.underreplicated_ranges),
        reason: |j| {
            format!(
                "{} range(s) are under-replicated (kwdb_internal.kv_store_status)",
                j.facts.underreplicated_ranges.unwrap_or(0)
            )
        },
        advice: |_| "wait until replication catches up, then plan again".into(),
        via: None,
    },
    Rule {
        id: "jobs-running",
        when: |j| some(j.facts.running_jobs),
        reason: |j| {
            format!(
                "{} job(s) are running (SHOW JOBS): schema changes or imports must finish first",
                j.facts.running_jobs.unwrap_or(0)
            )
        },
        advice: |_| "wait for them (or cancel them), then plan again".into(),
        via: None,
    },
    Rule {
        id: "needs-new-instance",
        when: |j| !in_place(j.from, j.to) && j.facts.next_bound == Some(false),
        reason: |Jump { from, to, .. }| {
            format!(
                "{from} → {to} is never done in place ({}); it needs a new {to} instance to import into (§2.2, §2.3)",
                if from.major < to.major {
                    "the storage format changed in 3.0"
                } else {
                    "the release notes list export/import for this path"
                }
            )
        },
        advice: |_| {
            "deploy an empty instance for the target (its own store, sharing the extern directory), bind it as `next` (service) and `next-sql` (db), then plan again".into()
        },
        via: None,
    },
    Rule {
        id: "next-not-empty",
        when: |j| !in_place(j.from, j.to) && some(j.facts.next_user_databases),
        reason: |j| {
            format!(
                "the `next` instance already holds {} user database(s); importing could mix data",
                j.facts.next_user_databases.unwrap_or(0)
            )
        },
        advice: |_| "bind an empty instance as `next`".into(),
        via: None,
    },
];

/// `meta.sql` without `PARTITION INTERVAL <n>` clauses (the rest of each line kept).
pub fn strip_partition_interval(meta: &str) -> (String, usize) {
    let mut removed = 0;
    let lines: Vec<String> = meta
        .lines()
        .map(|line| {
            let upper = line.to_ascii_uppercase();
            let Some(at) = upper.find("PARTITION INTERVAL") else {
                return line.to_string();
            };
            removed += 1;
            let after = &line[at + "PARTITION INTERVAL".len()..];
            let trimmed = after.trim_start();
            let value_len = trimmed
                .find(|c: char| c.is_whitespace() || c == ';' || c == ',' || c == ')')
                .unwrap_or(trimmed.len());
            let rest = &trimmed[value_len..];
            format!("{}{}", line[..at].trim_end(), rest)
        })
        .collect();
    let mut out = lines.join("\n");
    if meta.ends_with('\n') {
        out.push('\n');
    }
    (out, removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Version {
        Version::parse(s).expect("version")
    }

    fn method(from: &str, to: &str, f: &Facts) -> Result<Method, &'static str> {
        let (from, to) = (p(from), p(to));
        Jump::<Kwdb>::new(&from, &to, f)
            .check()
            .map_err(|r| r.rule)?;
        Ok(Method::of(&from, &to))
    }

    #[test]
    fn the_path_table() {
        let f = Facts::default();
        assert_eq!(method("2.0.4", "2.1.0", &f), Ok(Method::InPlace));
        assert_eq!(method("2.1.0", "2.2.0", &f), Ok(Method::InPlace));
        assert_eq!(method("2.2.0", "2.2.2", &f), Ok(Method::InPlace));
        assert_eq!(method("2.1.0", "2.2.2", &f), Ok(Method::ExportImport));
        assert_eq!(method("2.0.4", "2.2.0", &f), Ok(Method::ExportImport));
        assert_eq!(method("2.2.2", "3.0.0", &f), Ok(Method::ExportImport));
        assert_eq!(method("3.0.0", "3.1.0", &f), Ok(Method::InPlace));
        assert_eq!(method("3.0.0", "3.2.1", &f), Ok(Method::InPlace));
        assert_eq!(method("3.1.0", "3.2.1", &f), Ok(Method::InPlace));
        assert_eq!(method("2.2.2", "3.2.1", &f), Ok(Method::ExportImport));
    }

    #[test]
    fn refusals() {
        let f = Facts::default();
        assert_eq!(method("3.1.0", "3.0.0", &f), Err("downgrade"));
        assert_eq!(method("3.1.0", "3.1.0", &f), Err("already-at-target"));
        assert_eq!(
            method("3.1.0", "3.2.1-beta1", &f),
            Err("release-to-prerelease")
        );
        assert_eq!(method("3.2.1", "4.0.0", &f), Err("unknown-major"));
        let unhealthy = Facts {
            unavailable_ranges: Some(2),
            ..Facts::default()
        };
        assert_eq!(
            method("3.0.0", "3.1.0", &unhealthy),
            Err("unavailable-ranges")
        );
        let under = Facts {
            underreplicated_ranges: Some(1),
            ..Facts::default()
        };
        assert_eq!(
            method("3.0.0", "3.1.0", &under),
            Err("underreplicated-ranges")
        );
        let busy = Facts {
            running_jobs: Some(1),
            ..Facts::default()
        };
        assert_eq!(method("3.0.0", "3.1.0", &busy), Err("jobs-running"));
        let no_next = Facts {
            next_bound: Some(false),
            ..Facts::default()
        };
        assert_eq!(
            method("2.2.2", "3.1.0", &no_next),
            Err("needs-new-instance")
        );
        // In place needs no new instance.
        assert_eq!(method("3.0.0", "3.1.0", &no_next), Ok(Method::InPlace));
        let full = Facts {
            next_bound: Some(true),
            next_user_databases: Some(1),
            ..Facts::default()
        };
        assert_eq!(method("2.2.2", "3.1.0", &full), Err("next-not-empty"));
    }

    #[test]
    fn a_declared_release_the_sql_port_contradicts_is_refused() {
        let f = Facts {
            declared_version: Some(p("3.0.0")),
            sql_version: Some(p("3.1.0")),
            ..Facts::default()
        };
        let (from, to) = (p("3.1.0"), p("3.2.1"));
        let r = Jump::<Kwdb>::new(&from, &to, &f)
            .check()
            .expect_err("contradiction");
        assert_eq!(r.rule, "declared-contradicts-sql");
        assert!(
            r.reason.contains("declares KWDB 3.0.0") && r.reason.contains("reports 3.1.0"),
            "{}",
            r.reason
        );
        assert!(r.advice.contains("fleet file"), "{}", r.advice);
        let agree = Facts {
            declared_version: Some(p("3.1.0")),
            ..f.clone()
        };
        assert_eq!(method("3.1.0", "3.2.1", &agree), Ok(Method::InPlace));
    }

    #[test]
    fn a_target_outside_the_catalog_needs_allow_unknown() {
        let f = Facts::default();
        let (from, to) = (p("3.2.1"), p("3.99.0"));
        let r = Jump::<Kwdb>::new(&from, &to, &f)
            .check()
            .expect_err("unknown");
        assert_eq!(r.rule, "unknown-release");
        assert!(r.reason.contains("nearest known: 3.2.1"), "{}", r.reason);
        assert_eq!(method("3.0.0", "3.0.1", &f), Err("unknown-release"));
        let allowed = Facts {
            allow_unknown: Some(true),
            ..Facts::default()
        };
        assert_eq!(method("3.0.0", "3.0.1", &allowed), Ok(Method::InPlace));
        assert_eq!(
            method("3.2.1", "3.99.0", &allowed),
            Ok(Method::ExportImport)
        );
    }

    #[test]
    fn partition_interval_is_stripped() {
        let meta = "CREATE TS DATABASE sensors PARTITION INTERVAL 10d;\nCREATE TABLE sensors.public.readings (ts TIMESTAMPTZ NOT NULL, v FLOAT8);\n";
        let (out, n) = strip_partition_interval(meta);
        assert_eq!(n, 1);
        assert_eq!(
            out,
            "CREATE TS DATABASE sensors;\nCREATE TABLE sensors.public.readings (ts TIMESTAMPTZ NOT NULL, v FLOAT8);\n"
        );
        assert!(strips_partition_interval(&p("3.1.0")));
        assert!(!strips_partition_interval(&p("3.0.0")));
        let (same, none) = strip_partition_interval("CREATE DATABASE shop;");
        assert_eq!((same.as_str(), none), ("CREATE DATABASE shop;", 0));
    }
}
