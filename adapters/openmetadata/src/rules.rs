//! OpenMetadata's upgrade rules as a table (product-facts §3 and "What an adapter must encode →
//! OpenMetadata"), read by the SDK for offline and live plans alike and unit-tested natively.

use semver::Version;
use upshift_adapter_sdk::rules::{Jump, Rule, restore_instead};

use crate::{OpenMetadata, catalog};

/// The first release of the newest-code migration runner, which refuses databases that are not
/// on 2.0 yet (`MINIMUM_SUPPORTED_MIGRATION_VERSION = "2.0.0"`, §3.2).
pub const BASELINE_RUNNER: Version = Version::new(2, 1, 0);

/// The latest 2.0.x release this adapter knows: the required stop for 1.x databases (§3.2:
/// "upgrade through the latest 2.0.x first").
pub const LATEST_2_0: Version = Version::new(2, 0, 3);

/// The release that imported the Flyway history into `SERVER_CHANGE_LOG`; running
/// `migrate --force` after crossing it loses roles, policies and bots (PR #24985).
pub const FLYWAY_IMPORT: Version = Version::new(1, 11, 0);

upshift_adapter_sdk::facts! {
    /// Facts read from the live database; `None` when unknown (offline plans).
    pub struct Facts {
        /// max(`SERVER_CHANGE_LOG.version`), numerically.
        pub db_version: Option<Version> = "db-version",
        /// Whether the Flyway table `DATABASE_CHANGE_LOG` still exists.
        pub legacy_flyway: Option<bool> = "legacy-flyway",
        /// `SERVER_CHANGE_LOG` rows whose `status` is `STARTED` or `FAILED`.
        pub unfinished_migrations: Option<u64> = "unfinished-migrations",
        /// Entity tables present but no migration history at all (the runner's `ABORT`).
        pub entities_without_history: Option<bool> = "entities-without-history",
        /// Where the running release was read: the API, or the service's declared version.
        pub version_source: Option<String> = "version-source",
        /// The operator passed `--allow-unknown`: plan a target the catalog does not know.
        pub allow_unknown: Option<bool> = "operator.allow-unknown-release",
    }
}

/// Why the release the instance claims cannot have migrated its database, or `None` when they
/// agree as far as the facts tell: `SERVER_CHANGE_LOG` reaching a migration newer than the
/// release means a newer release migrated it (§3.2: migrations are named after the release
/// that ships them). A database behind the release is not a contradiction: it is a migration
/// still to run, which the plan runs.
pub fn contradiction(j: &Jump<OpenMetadata>) -> Option<String> {
    let db = j.facts.db_version.as_ref()?;
    (db > j.from).then(|| {
        format!(
            "{} says release {}, but the database's SERVER_CHANGE_LOG records migration {db}, which only OpenMetadata {db} or newer writes (native migrations are named after the release that ships them, §3.2); planning from {} would run its migrate and server on a newer database",
            j.facts
                .version_source
                .as_deref()
                .unwrap_or("the detected version"),
            j.from,
            j.from
        )
    })
}

/// The version the database's migrations reached: the detected one, or else the running
/// version's.
fn database_version<'a>(jump: &Jump<'a, OpenMetadata>) -> &'a Version {
    jump.facts.db_version.as_ref().unwrap_or(jump.from)
}

/// What OpenMetadata refuses, in order: the first rule that applies refuses the upgrade.
pub const REFUSALS: &[Rule<OpenMetadata>] = &[
    Rule {
        id: "release-contradicts-database",
        when: |j| contradiction(j).is_some(),
        reason: |j| contradiction(j).unwrap_or_default(),
        advice: |j| {
            format!(
                "find out which release last migrated this database: if it was {} or newer, correct the service's `version` in the fleet file (or start the right image); if the database is not the one {} used, restore the backup that matches {}. Then plan again",
                j.facts
                    .db_version
                    .as_ref()
                    .map_or("a newer one".to_string(), ToString::to_string),
                j.from,
                j.from
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
                "{to} is older than the running {from}; OpenMetadata migrations are one-way and a backup only restores into a database of its own version (§3.4)"
            )
        },
        advice: |j| restore_instead(j.to),
        via: None,
    },
    Rule::UNKNOWN_MAJOR,
    Rule {
        id: "unknown-release",
        when: |j| !catalog::knows(j.to) && j.facts.allow_unknown != Some(true),
        reason: |j| {
            let (first, last) = catalog::range();
            format!(
                "{} is not a release this adapter's catalog knows (OpenMetadata {first} – {last}, the releases with their own native migration); {}. The adapter cannot know its migrations or gates",
                j.to,
                catalog::describe_nearest(j.to)
            )
        },
        advice: |_| {
            "plan a known release, or pass `--allow-unknown` to plan this one anyway (the plan then notes that the adapter cannot know its rules)".into()
        },
        via: None,
    },
    Rule {
        id: "abort-state",
        when: |j| j.facts.entities_without_history == Some(true),
        reason: |_| {
            "the database has entity tables but no SERVER_CHANGE_LOG history; the migration runner stops with ABORT (§3.2)".into()
        },
        advice: |_| {
            "restore a backup into a clean database, or drop-create it; do not migrate over it"
                .into()
        },
        via: None,
    },
    Rule {
        id: "unfinished-migrations",
        when: |j| j.facts.unfinished_migrations.is_some_and(|n| n > 0),
        reason: |j| {
            format!(
                "{} SERVER_CHANGE_LOG row(s) are STARTED or FAILED: an earlier migration did not finish",
                j.facts.unfinished_migrations.unwrap_or(0)
            )
        },
        advice: |_| {
            "run `./bootstrap/openmetadata-ops.sh repair`, check the database, then plan again"
                .into()
        },
        via: None,
    },
    Rule {
        id: "via-latest-2.0",
        when: |j| {
            *j.to >= BASELINE_RUNNER
                && (*database_version(j) < Version::new(2, 0, 0)
                    || j.facts.legacy_flyway == Some(true))
        },
        reason: |j| {
            format!(
                "{} runs the 2.x baseline migrator, which refuses a database {} (\"upgrade through the latest 2.0.x first\"); `--force` cannot bypass it (§3.2)",
                j.to,
                if j.facts.legacy_flyway == Some(true) {
                    "that still has the Flyway table DATABASE_CHANGE_LOG".to_string()
                } else {
                    format!("whose migrations stop at {}", database_version(j))
                }
            )
        },
        advice: |j| format!("upgrade to {LATEST_2_0} first, then to {}", j.to),
        via: Some(|j| vec![LATEST_2_0, j.to.clone()]),
    },
];

#[cfg(test)]
mod tests {
    use super::*;
    use upshift_adapter_sdk::rules::Refused;

    fn v(s: &str) -> Version {
        Version::parse(s).expect("version")
    }

    fn check(from: &Version, to: &Version, facts: &Facts) -> Result<(), Refused> {
        Jump::<OpenMetadata>::new(from, to, facts).check()
    }

    fn rule(from: &str, to: &str, facts: &Facts) -> Result<(), &'static str> {
        check(&v(from), &v(to), facts).map_err(|r| r.rule)
    }

    #[test]
    fn ordinary_upgrades_pass() {
        let f = Facts::default();
        assert_eq!(rule("1.9.0", "1.12.1", &f), Ok(()));
        assert_eq!(rule("1.12.1", "2.0.3", &f), Ok(()));
        assert_eq!(rule("2.0.3", "2.1.0", &f), Ok(()));
    }

    #[test]
    fn refusals() {
        let f = Facts::default();
        assert_eq!(rule("1.9.0", "1.9.0", &f), Err("already-at-target"));
        assert_eq!(rule("1.12.1", "1.9.0", &f), Err("downgrade"));
        assert_eq!(rule("2.1.0", "3.0.0", &f), Err("unknown-major"));
        assert_eq!(rule("1.12.1", "2.1.0", &f), Err("via-latest-2.0"));
        let r = check(&v("1.12.1"), &v("2.1.0"), &f).expect_err("gate");
        assert_eq!(r.path, vec![v("2.0.3"), v("2.1.0")]);
        let legacy = Facts {
            db_version: Some(v("2.0.0")),
            legacy_flyway: Some(true),
            ..Facts::default()
        };
        assert_eq!(rule("2.0.0", "2.1.0", &legacy), Err("via-latest-2.0"));
        let failed = Facts {
            unfinished_migrations: Some(1),
            ..Facts::default()
        };
        assert_eq!(
            rule("1.9.0", "1.12.1", &failed),
            Err("unfinished-migrations")
        );
        let abort = Facts {
            entities_without_history: Some(true),
            ..Facts::default()
        };
        assert_eq!(rule("1.9.0", "1.12.1", &abort), Err("abort-state"));
    }

    #[test]
    fn the_declared_release_must_not_be_older_than_the_database() {
        // The case: SERVER_CHANGE_LOG at 1.9.4, declared 1.9.0, planned to 1.9.2.
        let f = Facts {
            db_version: Some(v("1.9.4")),
            version_source: Some("the fleet file".into()),
            ..Facts::default()
        };
        let r = check(&v("1.9.0"), &v("1.9.2"), &f).expect_err("contradiction");
        assert_eq!(r.rule, "release-contradicts-database");
        assert!(
            r.reason.contains("the fleet file says release 1.9.0"),
            "{}",
            r.reason
        );
        assert!(r.reason.contains("1.9.4"), "{}", r.reason);
        assert!(r.advice.contains("fleet file") && r.advice.contains("restore"));
        // Agreeing, or behind (a migration still to run): no contradiction.
        let same = Facts {
            db_version: Some(v("1.9.0")),
            ..Facts::default()
        };
        assert_eq!(rule("1.9.0", "1.12.1", &same), Ok(()));
        let behind = Facts {
            db_version: Some(v("1.3.0")),
            ..Facts::default()
        };
        assert_eq!(rule("1.3.4", "1.9.0", &behind), Ok(()));
    }

    #[test]
    fn an_unknown_target_needs_the_operator() {
        let f = Facts::default();
        let r = check(&v("1.9.0"), &v("1.9.7"), &f).expect_err("unknown");
        assert_eq!(r.rule, "unknown-release");
        assert!(r.reason.contains("1.9.6 and 1.9.8"), "{}", r.reason);
        let allowed = Facts {
            allow_unknown: Some(true),
            ..Facts::default()
        };
        assert_eq!(rule("1.9.0", "1.9.7", &allowed), Ok(()));
    }

    #[test]
    fn the_database_version_decides_the_gate() {
        // The server says 2.0.3 but the database never migrated past 1.12.1.
        let f = Facts {
            db_version: Some(v("1.12.1")),
            legacy_flyway: Some(false),
            ..Facts::default()
        };
        assert_eq!(rule("2.0.3", "2.1.0", &f), Err("via-latest-2.0"));
    }
}
