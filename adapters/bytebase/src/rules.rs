//! Bytebase's upgrade rules as a table: which jumps are allowed, which stops are required, and
//! why. Pure functions over versions and detected facts, so they are unit-tested natively and
//! serve offline plans (no facts) and live ones alike. Sources: product-facts.md §1.

use semver::Version;
pub use upshift_adapter_sdk::rules::Refused;
use upshift_adapter_sdk::rules::{known_major, not_already_there};

/// How the metadata database records its schema version (product-facts §1.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaFormat {
    /// 1.x: `migration_history` rows with a `namespace` column.
    Legacy1x,
    /// 2.0–3.4: `instance_change_history` with padded versions (`0003.0003.0001-…`).
    Padded,
    /// ≥ 3.4.1: `instance_change_history(id, version)` with plain semver.
    Semver,
}

impl SchemaFormat {
    /// The fact value.
    pub fn name(self) -> &'static str {
        match self {
            SchemaFormat::Legacy1x => "legacy-1x",
            SchemaFormat::Padded => "padded",
            SchemaFormat::Semver => "semver",
        }
    }

    /// Parse a fact value.
    pub fn parse(text: &str) -> Option<SchemaFormat> {
        match text {
            "legacy-1x" => Some(SchemaFormat::Legacy1x),
            "padded" => Some(SchemaFormat::Padded),
            "semver" => Some(SchemaFormat::Semver),
            _ => None,
        }
    }
}

/// Facts from the live instance; `None` when unknown (offline plans).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// How versions are recorded.
    pub schema_format: Option<SchemaFormat>,
    /// Rows of `instance_change_history` with `database_id IS NOT NULL`.
    pub database_id_rows: Option<u64>,
    /// Versions recorded more than once.
    pub duplicate_versions: Option<u64>,
    /// `pgdata/PG_VERSION` of an embedded metadata store.
    pub embedded_pg: Option<u32>,
}

fn v(major: u64, minor: u64, patch: u64) -> Version {
    Version::new(major, minor, patch)
}

/// The stop every 1.x / 2.0.x database must make: 2.1.0 still copies 1.x history (§1.4).
pub fn stop_2_1_0() -> Version {
    v(2, 1, 0)
}
/// The stop that clears per-database change history before the 3.4.1 backfill (§1.4).
pub fn stop_3_3_1() -> Version {
    v(3, 3, 1)
}
/// A release in 3.4.1–3.13.x, which still runs the legacy backfill removed in 3.14.0 (§1.4).
pub fn stop_3_13_0() -> Version {
    v(3, 13, 0)
}

/// One required stop: the version and the rule that requires it.
struct Stop {
    at: Version,
    rule: &'static str,
    why: String,
}

/// The newest major this adapter knows.
pub const KNOWN_MAJOR: u64 = 3;

/// Decide whether `current → target` may run as one step.
pub fn check(current: &Version, target: &Version, facts: &Facts) -> Result<(), Refused> {
    let refuse = |rule, reason: String, path: Vec<Version>, advice: String| Refused {
        rule,
        reason,
        path,
        advice,
    };
    not_already_there(current, target)?;
    if target < current {
        return Err(refuse(
            "downgrade",
            format!(
                "{target} is older than the running {current}; Bytebase does not refuse an old binary on a newer schema, it starts silently on it (§1.5)"
            ),
            vec![],
            format!(
                "to go back, restore a backup taken at {target} (`upshift backups`, then `upshift restore`)"
            ),
        ));
    }
    if current.major == 0 {
        return Err(refuse(
            "zero-x-with-data",
            format!(
                "{current} is a 0.x alpha: its SQLite metadata was changed in place without migrations and 1.0 has no converter (§1.1, §1.2)"
            ),
            vec![],
            "install 1.x or later fresh and re-create the settings; there is no upgrade path for 0.x data".into(),
        ));
    }
    known_major("Bytebase", target, KNOWN_MAJOR)?;
    if facts.duplicate_versions.unwrap_or(0) > 0 && *current < v(3, 4, 1) && *target >= v(3, 4, 1) {
        return Err(refuse(
            "duplicate-versions",
            format!(
                "instance_change_history holds {} duplicated version(s); the 3.4.1+ backfill creates a unique index on version and fails with SQLSTATE 23505 (#16723)",
                facts.duplicate_versions.unwrap_or(0)
            ),
            vec![],
            "after a backup, delete the duplicated rows (keep one per version), then plan again"
                .into(),
        ));
    }
    let rows = facts.database_id_rows.unwrap_or(0);
    if rows > 0
        && *current >= stop_3_3_1()
        && *current < v(3, 4, 1)
        && *target >= v(3, 4, 1)
        && *target < v(3, 14, 0)
    {
        return Err(refuse(
            "via-3.3.1",
            format!(
                "{rows} instance_change_history row(s) still have database_id set at {current}; 3.4.1–3.13.x refuse with \"Must upgrade to Bytebase 3.3.1 first\""
            ),
            vec![],
            "after a backup, find out why 3.3.1 left these rows (they belong to managed databases) and remove them, then plan again".into(),
        ));
    }
    if facts.embedded_pg == Some(14)
        && *target >= v(3, 5, 0)
        && *current >= v(2, 10, 0)
        && *current >= stop_3_3_1()
    {
        return Err(refuse(
            "embedded-pg14",
            format!(
                "the embedded metadata store is still PostgreSQL 14 at {current}; 3.5.0 and later cannot convert it"
            ),
            vec![],
            format!(
                "restart {current} once (2.10.0–3.4.x dump and reload PostgreSQL 14 into 16 at start), then plan again"
            ),
        ));
    }
    let stops = required_stops(current, target, facts);
    if let Some(first) = stops.first() {
        let mut path: Vec<Version> = stops.iter().map(|s| s.at.clone()).collect();
        path.push(target.clone());
        let reasons: Vec<String> = stops.iter().map(|s| s.why.clone()).collect();
        return Err(refuse(
            first.rule,
            reasons.join("; "),
            path,
            format!(
                "upgrade one stop at a time: `upshift apply <instance> --to {}`, then plan again",
                first.at
            ),
        ));
    }
    Ok(())
}

fn required_stops(current: &Version, target: &Version, facts: &Facts) -> Vec<Stop> {
    let mut stops: Vec<Stop> = Vec::new();
    let between = |stop: &Version| current < stop && stop < target;
    if *current < stop_2_1_0() && between(&stop_2_1_0()) {
        stops.push(Stop {
            at: stop_2_1_0(),
            rule: "via-2.1.0",
            why: format!(
                "{current} keeps its history in 1.x migration_history; only 2.0.0–2.2.x copy it into instance_change_history, so go through 2.1.0 first"
            ),
        });
    }
    if between(&stop_3_3_1()) {
        let rows = facts.database_id_rows.unwrap_or(0);
        stops.push(Stop {
            at: stop_3_3_1(),
            rule: "via-3.3.1",
            why: if rows > 0 {
                format!(
                    "{rows} instance_change_history row(s) have database_id set; 3.4.1–3.13.x refuse with \"Must upgrade to Bytebase 3.3.1 first\""
                )
            } else {
                "releases after 3.3.1 expect the history layout 3.3.1 leaves (\"Must upgrade to Bytebase 3.3.1 first\")".into()
            },
        });
    }
    if facts.embedded_pg == Some(14)
        && *target >= v(3, 5, 0)
        && !stops.iter().any(|s| s.at == stop_3_3_1())
        && (between(&stop_3_3_1()) || *current < v(2, 10, 0))
    {
        stops.push(Stop {
            at: stop_3_3_1(),
            rule: "embedded-pg14",
            why: "the embedded metadata store is PostgreSQL 14; only 2.10.0–3.4.x dump and reload it into 16, and 3.5.0 removed that".into(),
        });
    }
    let old_format = *current < v(3, 4, 1) || facts.schema_format == Some(SchemaFormat::Padded);
    if *target >= v(3, 14, 0) && old_format && between(&stop_3_13_0()) {
        stops.push(Stop {
            at: stop_3_13_0(),
            rule: "via-3.4.1-3.13",
            why: "the history still has padded versions; only 3.4.1–3.13.x rewrite them (3.14.0 fails with invalid version \"0003…\")".into(),
        });
    }
    stops.sort_by(|a, b| a.at.cmp(&b.at));
    stops.dedup_by(|a, b| a.at == b.at);
    stops
}

/// Parse a padded history version (`0003.0003.0001-20240101000000`) or a plain one.
pub fn parse_history_version(text: &str) -> Option<(Version, SchemaFormat)> {
    let trimmed = text.trim();
    if let Some((numbers, _suffix)) = trimmed.split_once('-')
        && numbers.len() == 14
        && numbers
            .split('.')
            .all(|p| p.len() == 4 && p.chars().all(|c| c.is_ascii_digit()))
    {
        let mut parts = numbers.split('.').map(|p| p.parse::<u64>().ok());
        let (Some(Some(a)), Some(Some(b)), Some(Some(c))) =
            (parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        return Some((v(a, b, c), SchemaFormat::Padded));
    }
    Version::parse(trimmed)
        .ok()
        .map(|ver| (ver, SchemaFormat::Semver))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ver(s: &str) -> Version {
        Version::parse(s).expect("version")
    }

    fn path(r: &Refused) -> Vec<String> {
        r.path.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn allowed_jumps() {
        for (from, to) in [
            ("3.10.0", "3.11.1"),
            ("2.0.0", "2.1.0"),
            ("3.3.1", "3.10.0"),
            ("3.13.0", "3.20.0"),
            ("1.5.0", "2.1.0"),
        ] {
            assert_eq!(
                check(&ver(from), &ver(to), &Facts::default()),
                Ok(()),
                "{from} → {to}"
            );
        }
    }

    #[test]
    fn the_path_planner_names_every_stop() {
        let r = check(&ver("1.5.0"), &ver("3.20.0"), &Facts::default()).expect_err("stops");
        assert_eq!(
            (r.rule, path(&r)),
            (
                "via-2.1.0",
                vec![
                    "2.1.0".into(),
                    "3.3.1".into(),
                    "3.13.0".into(),
                    "3.20.0".into()
                ]
            )
        );
        let r = check(&ver("2.0.0"), &ver("3.5.0"), &Facts::default()).expect_err("stops");
        assert_eq!(path(&r), ["2.1.0", "3.3.1", "3.5.0"]);
        let r = check(&ver("3.3.1"), &ver("3.14.0"), &Facts::default()).expect_err("stops");
        assert_eq!(
            (r.rule, path(&r)),
            ("via-3.4.1-3.13", vec!["3.13.0".into(), "3.14.0".into()])
        );
        let r = check(
            &ver("2.10.0"),
            &ver("3.10.0"),
            &Facts {
                database_id_rows: Some(3),
                ..Facts::default()
            },
        )
        .expect_err("stops");
        assert_eq!(
            (r.rule, path(&r)),
            ("via-3.3.1", vec!["3.3.1".into(), "3.10.0".into()])
        );
        assert!(
            r.reason.contains("3 instance_change_history row(s)"),
            "{}",
            r.reason
        );
    }

    #[test]
    fn facts_add_refusals() {
        let padded = Facts {
            schema_format: Some(SchemaFormat::Padded),
            ..Facts::default()
        };
        let r = check(&ver("3.5.0"), &ver("3.14.0"), &padded).expect_err("padded history");
        assert_eq!(
            (r.rule, path(&r)),
            ("via-3.4.1-3.13", vec!["3.13.0".into(), "3.14.0".into()])
        );
        assert_eq!(
            check(&ver("3.5.0"), &ver("3.14.0"), &Facts::default()),
            Ok(())
        );

        let pg14 = Facts {
            embedded_pg: Some(14),
            ..Facts::default()
        };
        let r = check(&ver("2.5.0"), &ver("3.5.0"), &pg14).expect_err("pg14");
        assert!(path(&r).contains(&"3.3.1".to_string()));
        let r = check(&ver("1.5.0"), &ver("1.9.0"), &pg14);
        assert_eq!(r, Ok(()));

        let dups = Facts {
            duplicate_versions: Some(2),
            ..Facts::default()
        };
        assert_eq!(
            check(&ver("3.3.1"), &ver("3.7.1"), &dups)
                .expect_err("dups")
                .rule,
            "duplicate-versions"
        );
    }

    #[test]
    fn refusals_without_a_path() {
        assert_eq!(
            check(&ver("3.11.1"), &ver("3.10.0"), &Facts::default())
                .expect_err("down")
                .rule,
            "downgrade"
        );
        assert_eq!(
            check(&ver("3.10.0"), &ver("3.10.0"), &Facts::default())
                .expect_err("same")
                .rule,
            "already-at-target"
        );
        assert_eq!(
            check(&ver("0.9.0"), &ver("1.0.0"), &Facts::default())
                .expect_err("0.x")
                .rule,
            "zero-x-with-data"
        );
        assert_eq!(
            check(&ver("3.10.0"), &ver("4.0.0"), &Facts::default())
                .expect_err("4.x")
                .rule,
            "unknown-major"
        );
    }

    #[test]
    fn history_versions_in_both_formats() {
        assert_eq!(
            parse_history_version("0003.0003.0001-20240101000000"),
            Some((ver("3.3.1"), SchemaFormat::Padded))
        );
        assert_eq!(
            parse_history_version("0001.0002.0003-20220408000000"),
            Some((ver("1.2.3"), SchemaFormat::Padded))
        );
        assert_eq!(
            parse_history_version("3.14.2"),
            Some((ver("3.14.2"), SchemaFormat::Semver))
        );
        assert_eq!(parse_history_version("10001"), None);
        assert_eq!(parse_history_version("0003.x.0001-2024"), None);
    }
}
