//! Bytebase's upgrade rules as tables: what it refuses, and the versions an upgrade must stop
//! at, with why. Read by the SDK for offline plans (no facts) and live ones alike, and unit-tested
//! natively. Sources: product-facts.md §1.

use semver::Version;
use upshift_adapter_sdk::FactValue;
use upshift_adapter_sdk::rules::{Jump, Rule, Stone, restore_instead};

use crate::Bytebase;
use crate::catalog::{self, minor_line};
use crate::detect::ReleaseSource;

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
}

impl FactValue for SchemaFormat {
    fn from_fact(text: &str) -> Option<SchemaFormat> {
        match text {
            "legacy-1x" => Some(SchemaFormat::Legacy1x),
            "padded" => Some(SchemaFormat::Padded),
            "semver" => Some(SchemaFormat::Semver),
            _ => None,
        }
    }
}

upshift_adapter_sdk::facts! {
    /// Facts from the live instance; `None` when unknown (offline plans).
    pub struct Facts {
        /// How versions are recorded.
        pub schema_format: Option<SchemaFormat> = "schema-format",
        /// Rows of `instance_change_history` with `database_id IS NOT NULL`.
        pub database_id_rows: Option<u64> = "database-id-rows",
        /// Versions recorded more than once.
        pub duplicate_versions: Option<u64> = "duplicate-versions",
        /// `pgdata/PG_VERSION` of an embedded metadata store.
        pub embedded_pg: Option<u32> = "embedded-pg-version",
        /// Where the metadata lives: external PostgreSQL or the embedded one under `--data`.
        pub store_mode: Option<StoreMode> = "store-mode",
        /// Whether the service runs (the embedded store runs only with it).
        pub service_running: Option<bool> = "service-running",
        /// The metadata schema version (a file number, not a release, §1.5).
        pub schema_version: Option<Version> = "schema-version",
        /// Where the release (the jump's `from`) came from.
        pub release_source: Option<ReleaseSource> = "release-source",
        /// The running binary's `/v1/actuator/info` version.
        pub api_version: Option<Version> = "api-version",
        /// The service's version: the fleet file's `version` (or the one Upshift last
        /// switched it to; a container's image tag).
        pub service_version: Option<Version> = "service-version",
        /// The operator passed `--allow-unknown` (a fact the host adds, not detected).
        pub allow_unknown: Option<bool> = "operator.allow-unknown-release",
    }
}

/// The stop every 1.x / 2.0.x database must make: 2.1.0 still copies 1.x history (§1.4).
pub const STOP_2_1_0: Version = Version::new(2, 1, 0);
/// The stop that clears per-database change history before the 3.4.1 backfill (§1.4).
pub const STOP_3_3_1: Version = Version::new(3, 3, 1);
/// A release in 3.4.1–3.13.x, which still runs the legacy backfill removed in 3.14.0 (§1.4).
pub const STOP_3_13_0: Version = Version::new(3, 13, 0);
/// The first release with the legacy backfill and plain semver history (§1.4).
const BACKFILL: Version = Version::new(3, 4, 1);
/// The release that removed the legacy backfill (§1.4).
const BACKFILL_REMOVED: Version = Version::new(3, 14, 0);
/// The first release that dumps and reloads an embedded PostgreSQL 14 into 16 at start.
const PG14_RELOAD: Version = Version::new(2, 10, 0);
/// The release that removed that reload.
const PG14_RELOAD_REMOVED: Version = Version::new(3, 5, 0);

/// Where Bytebase keeps its metadata (product-facts §1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreMode {
    /// An external PostgreSQL (`PG_URL`).
    External,
    /// The embedded PostgreSQL under `<data>/pgdata`, running only while Bytebase runs.
    Embedded,
}

impl StoreMode {
    /// The fact value.
    pub fn name(self) -> &'static str {
        match self {
            StoreMode::External => "external",
            StoreMode::Embedded => "embedded",
        }
    }
}

impl upshift_adapter_sdk::FactValue for StoreMode {
    fn from_fact(text: &str) -> Option<StoreMode> {
        match text {
            "external" => Some(StoreMode::External),
            "embedded" => Some(StoreMode::Embedded),
            _ => None,
        }
    }
}

/// What Bytebase refuses, in order: the first rule that applies refuses the upgrade.
pub const REFUSALS: &[Rule<Bytebase>] = &[
    Rule {
        id: "embedded-store-down",
        when: |j| {
            j.facts.store_mode == Some(StoreMode::Embedded)
                && j.facts.service_running == Some(false)
                && j.facts.schema_version.is_none()
        },
        reason: |_| {
            "the metadata is in Bytebase's embedded PostgreSQL, which runs only while Bytebase runs: Bytebase is stopped, so the schema rules cannot be checked".into()
        },
        advice: |_| "start Bytebase (`upshift start INSTANCE app`), then plan again".into(),
        via: None,
    },
    Rule {
        id: "api-contradicts-declared",
        when: |j| declared_contradiction(j).is_some(),
        reason: |j| declared_contradiction(j).unwrap_or_default(),
        advice: |j| {
            let api = j
                .facts
                .api_version
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default();
            format!(
                "if {api} is the release that should run, set the service's `version` in the fleet file to {api}; if it is not, stop the process and start the declared release (`upshift stop`, `upshift start`), then plan again"
            )
        },
        via: None,
    },
    Rule {
        id: "release-contradicts-schema",
        when: |j| contradiction(j).is_some(),
        reason: |j| contradiction(j).unwrap_or_default(),
        advice: |j| {
            format!(
                "find out which release last ran on this metadata: if it was not {}, correct the service's `version` in the fleet file (or start the right binary); if the metadata is not the one {} wrote, restore the backup that matches it. Then plan again",
                j.from, j.from
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
                "{to} is older than the running {from}; Bytebase does not refuse an old binary on a newer schema, it starts silently on it (§1.5)"
            )
        },
        advice: |j| restore_instead(j.to),
        via: None,
    },
    Rule {
        id: "zero-x-with-data",
        when: |j| j.from.major == 0,
        reason: |Jump { from, .. }| {
            format!(
                "{from} is a 0.x alpha: its SQLite metadata was changed in place without migrations and 1.0 has no converter (§1.1, §1.2)"
            )
        },
        advice: |_| {
            "install 1.x or later fresh and re-create the settings; there is no upgrade path for 0.x data".into()
        },
        via: None,
    },
    Rule::UNKNOWN_MAJOR,
    Rule {
        id: "unknown-release",
        when: |j| catalog::unknown_target(j.to) && j.facts.allow_unknown != Some(true),
        reason: |j| {
            let near: Vec<String> = catalog::nearest(j.to)
                .iter()
                .map(ToString::to_string)
                .collect();
            format!(
                "{} is not a release this adapter's catalog knows ({}); the nearest known: {}. Its schema files, stepping stones and refusals are unknown",
                j.to,
                catalog::RANGE,
                near.join(", ")
            )
        },
        advice: |j| {
            format!(
                "upgrade to a release the catalog knows, or, if {} is a real release newer than this adapter, pass --allow-unknown (the plan then notes that its rules are unknown) or update the adapter",
                j.to
            )
        },
        via: None,
    },
    Rule {
        id: "duplicate-versions",
        when: |j| {
            j.facts.duplicate_versions.unwrap_or(0) > 0 && *j.from < BACKFILL && *j.to >= BACKFILL
        },
        reason: |j| {
            format!(
                "instance_change_history holds {} duplicated version(s); the 3.4.1+ backfill creates a unique index on version and fails with SQLSTATE 23505 (#16723)",
                j.facts.duplicate_versions.unwrap_or(0)
            )
        },
        advice: |_| {
            "after a backup, delete the duplicated rows (keep one per version), then plan again"
                .into()
        },
        via: None,
    },
    Rule {
        id: "via-3.3.1",
        when: |j| {
            j.facts.database_id_rows.unwrap_or(0) > 0
                && *j.from >= STOP_3_3_1
                && *j.from < BACKFILL
                && *j.to >= BACKFILL
                && *j.to < BACKFILL_REMOVED
        },
        reason: |j| {
            format!(
                "{} instance_change_history row(s) still have database_id set at {}; 3.4.1–3.13.x refuse with \"Must upgrade to Bytebase 3.3.1 first\"",
                j.facts.database_id_rows.unwrap_or(0),
                j.from
            )
        },
        advice: |_| {
            "after a backup, find out why 3.3.1 left these rows (they belong to managed databases) and remove them, then plan again".into()
        },
        via: None,
    },
    Rule {
        id: "embedded-pg14",
        when: |j| {
            j.facts.embedded_pg == Some(14)
                && *j.to >= PG14_RELOAD_REMOVED
                && *j.from >= PG14_RELOAD
                && *j.from >= STOP_3_3_1
        },
        reason: |Jump { from, .. }| {
            format!(
                "the embedded metadata store is still PostgreSQL 14 at {from}; 3.5.0 and later cannot convert it"
            )
        },
        advice: |Jump { from, .. }| {
            format!(
                "restart {from} once (2.10.0–3.4.x dump and reload PostgreSQL 14 into 16 at start), then plan again"
            )
        },
        via: None,
    },
];

/// The versions an upgrade must stop at, and why. Of two stones at one version the first is
/// named.
pub const STONES: &[Stone<Bytebase>] = &[
    Stone {
        at: STOP_2_1_0,
        id: "via-2.1.0",
        when: |j| *j.from < STOP_2_1_0 && j.passes(&STOP_2_1_0),
        why: |Jump { from, .. }| {
            format!(
                "{from} keeps its history in 1.x migration_history; only 2.0.0–2.2.x copy it into instance_change_history, so go through 2.1.0 first"
            )
        },
    },
    Stone {
        at: STOP_3_3_1,
        id: "via-3.3.1",
        when: |j| j.passes(&STOP_3_3_1),
        why: |j| {
            match j.facts.database_id_rows.unwrap_or(0) {
            0 => "releases after 3.3.1 expect the history layout 3.3.1 leaves (\"Must upgrade to Bytebase 3.3.1 first\")".into(),
            rows => format!(
                "{rows} instance_change_history row(s) have database_id set; 3.4.1–3.13.x refuse with \"Must upgrade to Bytebase 3.3.1 first\""
            ),
        }
        },
    },
    Stone {
        at: STOP_3_3_1,
        id: "embedded-pg14",
        when: |j| {
            j.facts.embedded_pg == Some(14)
                && *j.to >= PG14_RELOAD_REMOVED
                && (j.passes(&STOP_3_3_1) || *j.from < PG14_RELOAD)
        },
        why: |_| {
            "the embedded metadata store is PostgreSQL 14; only 2.10.0–3.4.x dump and reload it into 16, and 3.5.0 removed that".into()
        },
    },
    Stone {
        at: STOP_3_13_0,
        id: "via-3.4.1-3.13",
        when: |j| {
            let old_format =
                *j.from < BACKFILL || j.facts.schema_format == Some(SchemaFormat::Padded);
            *j.to >= BACKFILL_REMOVED && old_format && j.passes(&STOP_3_13_0)
        },
        why: |_| {
            "the history still has padded versions; only 3.4.1–3.13.x rewrite them (3.14.0 fails with invalid version \"0003…\")".into()
        },
    },
];

/// Why the release the instance claims (API or fleet file) cannot have written its metadata
/// schema, or `None` when they agree as far as the catalog tells: the schema's `<major>.<minor>`
/// is not newer than the release's, and the schema is not older than the newest file the release
/// (or, unknown to the catalog, the newest known release before it) ships.
pub fn contradiction(j: &Jump<Bytebase>) -> Option<String> {
    let schema = j.facts.schema_version.as_ref()?;
    let source = match j.facts.release_source? {
        ReleaseSource::Schema => return None,
        other => other,
    };
    let said = format!(
        "{} says release {}, but the metadata database (instance_change_history) records schema {schema}",
        source.describe(),
        j.from
    );
    if minor_line(schema) > minor_line(j.from) {
        return Some(format!(
            "{said}, written by a {}.{} release or newer; starting {} on it would run an older binary on a newer schema, which Bytebase never refuses (§1.5)",
            schema.major, schema.minor, j.from
        ));
    }
    let (floor, whose) = match catalog::schema_of(j.from) {
        Some(floor) => (floor, j.from.clone()),
        None => {
            let before = catalog::newest_before(j.from)?;
            (before.schema(), before.release())
        }
    };
    (*schema < floor).then(|| {
        format!(
            "{said}, older than the {floor} that release {whose} ships (§1.5 catalog); {} has never run on this metadata",
            j.from
        )
    })
}

/// Why the running binary's release (`/v1/actuator/info`) and the service's declared `version`
/// cannot both be right, or `None` when they agree or one is unknown (service stopped, a tag
/// such as `latest`). Both are normalised releases (a leading `v` or build metadata is no
/// disagreement).
pub fn declared_contradiction(j: &Jump<Bytebase>) -> Option<String> {
    let (api, declared) = (
        j.facts.api_version.as_ref()?,
        j.facts.service_version.as_ref()?,
    );
    let normal = |v: &Version| catalog::release(&v.to_string());
    (normal(api)? != normal(declared)?).then(|| {
        format!(
            "the running binary (/v1/actuator/info) reports release {api}, but the service's `version` (the fleet file's, or the one Upshift last switched it to) is {declared}; Upshift cannot tell which release runs on this metadata"
        )
    })
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
        return Some((Version::new(a, b, c), SchemaFormat::Padded));
    }
    Version::parse(trimmed)
        .ok()
        .map(|ver| (ver, SchemaFormat::Semver))
}

#[cfg(test)]
mod tests {
    use super::*;
    use upshift_adapter_sdk::rules::Refused;

    fn check(from: &Version, to: &Version, facts: &Facts) -> Result<(), Refused> {
        Jump::<Bytebase>::new(from, to, facts).check()
    }

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
    fn a_release_that_contradicts_the_schema_is_refused_naming_both() {
        let live = |schema: &str, source| Facts {
            schema_version: Some(ver(schema)),
            release_source: Some(source),
            allow_unknown: Some(true),
            ..Facts::default()
        };
        let r = check(
            &ver("3.10.0"),
            &ver("3.11.0"),
            &live("3.12.4", ReleaseSource::Declared),
        )
        .expect_err("newer schema");
        assert_eq!(r.rule, "release-contradicts-schema");
        assert!(
            r.reason.contains("fleet file")
                && r.reason.contains("3.10.0")
                && r.reason.contains("3.12.4"),
            "{}",
            r.reason
        );
        let r = check(
            &ver("3.10.0"),
            &ver("3.11.1"),
            &live("2.16.3", ReleaseSource::Api),
        )
        .expect_err("older schema");
        assert_eq!(r.rule, "release-contradicts-schema");
        assert!(r.reason.contains("3.10.2"), "{}", r.reason);
        // Agreeing facts, a release the catalog does not know, and a release read off the
        // schema itself are not contradictions.
        for (from, schema, source) in [
            ("3.11.1", "3.11.17", ReleaseSource::Api),
            ("3.14.2", "3.14.33", ReleaseSource::Declared),
            ("3.22.0", "3.21.5", ReleaseSource::Declared),
            ("3.11.0", "3.11.5", ReleaseSource::Schema),
        ] {
            assert_eq!(
                check(&ver(from), &ver("3.30.0"), &live(schema, source)),
                Ok(()),
                "{from} with schema {schema}"
            );
        }
    }

    #[test]
    fn a_release_outside_the_catalog_is_refused_unless_the_operator_allows_it() {
        let r = check(&ver("3.21.1"), &ver("3.99.0"), &Facts::default()).expect_err("unknown");
        assert_eq!(r.rule, "unknown-release");
        assert!(r.reason.contains("3.21.1"), "{}", r.reason);
        assert!(r.advice.contains("--allow-unknown"), "{}", r.advice);
        let allowed = Facts {
            allow_unknown: Some(true),
            ..Facts::default()
        };
        assert_eq!(check(&ver("3.21.1"), &ver("3.99.0"), &allowed), Ok(()));
        let plan = crate::steps::upgrade(&ver("3.21.1"), &ver("3.99.0"));
        assert!(
            plan.notes.iter().any(|n| n.contains("--allow-unknown")),
            "{:?}",
            plan.notes
        );
        let plan = crate::steps::upgrade(&ver("3.10.0"), &ver("3.11.1"));
        assert!(!plan.notes.iter().any(|n| n.contains("--allow-unknown")));
    }

    #[test]
    fn the_api_and_the_declared_version_must_agree() {
        let facts = |api: &str, declared: &str| Facts {
            api_version: Some(ver(api)),
            service_version: Some(ver(declared)),
            ..Facts::default()
        };
        let r = check(&ver("3.11.1"), &ver("3.12.0"), &facts("3.11.1", "3.10.0"))
            .expect_err("disagree");
        assert_eq!(r.rule, "api-contradicts-declared");
        assert!(
            r.reason.contains("/v1/actuator/info")
                && r.reason.contains("3.11.1")
                && r.reason.contains("3.10.0"),
            "{}",
            r.reason
        );
        assert!(r.advice.contains("fleet file"), "{}", r.advice);
        assert_eq!(
            check(&ver("3.11.1"), &ver("3.12.0"), &facts("3.11.1", "3.11.1")),
            Ok(())
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
