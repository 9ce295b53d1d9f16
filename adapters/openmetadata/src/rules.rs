//! OpenMetadata's upgrade rules as a table (product-facts §3 and "What an adapter must encode →
//! OpenMetadata"). Pure functions over versions and detected facts: unit-tested natively, and
//! the same for offline and live plans.

use semver::Version;
use upshift_adapter_sdk::rules::{Refused, known_major, not_already_there};

/// The newest major this adapter knows.
pub const KNOWN_MAJOR: u64 = 2;

/// The first release of the newest-code migration runner, which refuses databases that are not
/// on 2.0 yet (`MINIMUM_SUPPORTED_MIGRATION_VERSION = "2.0.0"`, §3.2).
pub fn baseline_runner() -> Version {
    Version::new(2, 1, 0)
}

/// The latest 2.0.x release this adapter knows: the required stop for 1.x databases (§3.2:
/// "upgrade through the latest 2.0.x first").
pub fn latest_2_0() -> Version {
    Version::new(2, 0, 3)
}

/// The release that imported the Flyway history into `SERVER_CHANGE_LOG`; running
/// `migrate --force` after crossing it loses roles, policies and bots (PR #24985).
pub fn flyway_import() -> Version {
    Version::new(1, 11, 0)
}

/// Facts read from the live database; `None` when unknown (offline plans).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// max(`SERVER_CHANGE_LOG.version`), numerically.
    pub db_version: Option<Version>,
    /// Whether the Flyway table `DATABASE_CHANGE_LOG` still exists.
    pub legacy_flyway: Option<bool>,
    /// `SERVER_CHANGE_LOG` rows whose `status` is `STARTED` or `FAILED`.
    pub unfinished_migrations: Option<u64>,
    /// Entity tables present but no migration history at all (the runner's `ABORT`).
    pub entities_without_history: Option<bool>,
}

/// Decide whether `current → target` may run as one upgrade.
pub fn check(current: &Version, target: &Version, facts: &Facts) -> Result<(), Refused> {
    not_already_there(current, target)?;
    if target < current {
        return Err(Refused::new(
            "downgrade",
            format!(
                "{target} is older than the running {current}; OpenMetadata migrations are one-way and a backup only restores into a database of its own version (§3.4)"
            ),
            format!(
                "to go back, restore a backup taken at {target} (`upshift backups`, then `upshift restore`)"
            ),
        ));
    }
    known_major("OpenMetadata", target, KNOWN_MAJOR)?;
    if facts.entities_without_history == Some(true) {
        return Err(Refused::new(
            "abort-state",
            "the database has entity tables but no SERVER_CHANGE_LOG history; the migration runner stops with ABORT (§3.2)",
            "restore a backup into a clean database, or drop-create it; do not migrate over it",
        ));
    }
    if let Some(n) = facts.unfinished_migrations.filter(|n| *n > 0) {
        return Err(Refused::new(
            "unfinished-migrations",
            format!(
                "{n} SERVER_CHANGE_LOG row(s) are STARTED or FAILED: an earlier migration did not finish"
            ),
            "run `./bootstrap/openmetadata-ops.sh repair`, check the database, then plan again",
        ));
    }
    let db_version = facts.db_version.as_ref().unwrap_or(current);
    let legacy = facts.legacy_flyway == Some(true);
    if *target >= baseline_runner() && (*db_version < Version::new(2, 0, 0) || legacy) {
        let stop = latest_2_0();
        return Err(Refused::new(
            "via-latest-2.0",
            format!(
                "{target} runs the 2.x baseline migrator, which refuses a database {} (\"upgrade through the latest 2.0.x first\"); `--force` cannot bypass it (§3.2)",
                if legacy {
                    "that still has the Flyway table DATABASE_CHANGE_LOG".to_string()
                } else {
                    format!("whose migrations stop at {db_version}")
                }
            ),
            format!("upgrade to {stop} first, then to {target}"),
        )
        .via(vec![stop, target.clone()]));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).expect("version")
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
