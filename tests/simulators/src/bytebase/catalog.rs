//! The simulated Bytebase releases and their metadata migrations.
//!
//! Migration files are named as in Bytebase's tree, `<major>.<minor>/<NNNN>##<name>.sql`, and
//! their version is `<major>.<minor>.<NNNN>` (product-facts §1.5). A release carries every
//! migration whose version is not above its own, so a PATCH release without migrations records
//! a schema version lower than the app version (3.14.2 records 3.14.1).

use semver::Version;

/// Where a release records the metadata schema version (product-facts §1.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Era {
    /// 1.x: `migration_history` with `namespace`, padded versions.
    V1,
    /// 2.0–3.4.0: `instance_change_history` with the 2.x columns, padded versions.
    V2,
    /// ≥ 3.4.1: `instance_change_history(id, version)`, plain semver.
    V3,
}

/// A simulated release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    /// Its version.
    pub version: Version,
    /// Where it records versions.
    pub era: Era,
}

/// One metadata migration file.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// File name in Bytebase's layout.
    pub file: &'static str,
    /// Its SQL.
    pub sql: &'static str,
}

impl Migration {
    /// `<major>.<minor>.<NNNN>` from the file name.
    pub fn version(&self) -> Version {
        let (dir, rest) = self.file.split_once('/').unwrap_or(("0.0", self.file));
        let (major, minor) = dir.split_once('.').unwrap_or(("0", "0"));
        let number = rest.split("##").next().unwrap_or("0");
        Version::new(
            major.parse().unwrap_or(0),
            minor.parse().unwrap_or(0),
            number.parse().unwrap_or(0),
        )
    }

    /// The name part of the file.
    pub fn name(&self) -> &'static str {
        self.file.split("##").nth(1).unwrap_or(self.file)
    }
}

/// The schema every release starts from (its LATEST.sql begins with this).
pub const BASE_SCHEMA: &str = "
CREATE TABLE principal (id SERIAL PRIMARY KEY, type TEXT NOT NULL, name TEXT NOT NULL, email TEXT NOT NULL UNIQUE, created_ts BIGINT NOT NULL DEFAULT 0);
CREATE TABLE environment (id SERIAL PRIMARY KEY, resource_id TEXT NOT NULL UNIQUE, name TEXT NOT NULL);
CREATE TABLE project (id SERIAL PRIMARY KEY, resource_id TEXT NOT NULL UNIQUE, name TEXT NOT NULL, key TEXT NOT NULL);
CREATE TABLE instance (id SERIAL PRIMARY KEY, resource_id TEXT NOT NULL UNIQUE, environment TEXT, name TEXT NOT NULL, engine TEXT NOT NULL);
CREATE TABLE db (id SERIAL PRIMARY KEY, instance TEXT NOT NULL, name TEXT NOT NULL);
CREATE TABLE setting (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE policy (id SERIAL PRIMARY KEY, resource_type TEXT NOT NULL, resource TEXT NOT NULL, type TEXT NOT NULL, payload TEXT NOT NULL DEFAULT '{}');
CREATE TABLE issue (id SERIAL PRIMARY KEY, project_id INTEGER NOT NULL, title TEXT NOT NULL, status TEXT NOT NULL, created_ts BIGINT NOT NULL DEFAULT 0);
";

/// Every simulated migration, in version order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        file: "1.2/0000##project_workflow_type.sql",
        sql: "ALTER TABLE project ADD COLUMN workflow_type TEXT NOT NULL DEFAULT 'UI'",
    },
    Migration {
        file: "2.1/0000##environment_order.sql",
        sql: "ALTER TABLE environment ADD COLUMN \"order\" INTEGER NOT NULL DEFAULT 0",
    },
    Migration {
        file: "2.10/0000##policy_inherit.sql",
        sql: "ALTER TABLE policy ADD COLUMN inherit_from_parent BOOLEAN NOT NULL DEFAULT TRUE",
    },
    Migration {
        file: "3.3/0001##issue_type.sql",
        sql: "ALTER TABLE issue ADD COLUMN type TEXT NOT NULL DEFAULT 'DATABASE_CHANGE'",
    },
    Migration {
        file: "3.5/0000##instance_activation.sql",
        sql: "ALTER TABLE instance ADD COLUMN activation BOOLEAN NOT NULL DEFAULT FALSE",
    },
    Migration {
        file: "3.10/0000##db_schema_index.sql",
        sql: "CREATE INDEX idx_db_instance_name ON db (instance, name)",
    },
    Migration {
        file: "3.11/0001##migrate_task_type.sql",
        sql: "ALTER TABLE issue ADD COLUMN task_type TEXT NOT NULL DEFAULT 'DATABASE_SCHEMA_UPDATE'",
    },
    Migration {
        file: "3.13/0000##setting_workspace_profile.sql",
        sql: "INSERT INTO setting (name, value) VALUES ('bb.workspace.profile', '{}') ON CONFLICT (name) DO NOTHING",
    },
    Migration {
        file: "3.14/0000##project_labels.sql",
        sql: "ALTER TABLE project ADD COLUMN labels TEXT NOT NULL DEFAULT '{}'",
    },
    Migration {
        file: "3.14/0001##principal_profile.sql",
        sql: "ALTER TABLE principal ADD COLUMN profile TEXT NOT NULL DEFAULT '{}'",
    },
];

fn release(v: &str, era: Era) -> Release {
    Release {
        version: Version::parse(v).unwrap_or_else(|_| Version::new(0, 0, 0)),
        era,
    }
}

/// The simulated releases.
pub fn releases() -> Vec<Release> {
    vec![
        release("1.2.0", Era::V1),
        release("2.0.0", Era::V2),
        release("2.1.0", Era::V2),
        release("2.10.0", Era::V2),
        release("3.3.1", Era::V2),
        release("3.4.0", Era::V2),
        release("3.5.0", Era::V3),
        release("3.10.0", Era::V3),
        release("3.11.1", Era::V3),
        release("3.13.0", Era::V3),
        release("3.14.0", Era::V3),
        release("3.14.2", Era::V3),
    ]
}

/// The release of that version, if simulated.
pub fn find(version: &str) -> Option<Release> {
    let wanted = Version::parse(version.trim_start_matches('v')).ok()?;
    releases().into_iter().find(|r| r.version == wanted)
}

impl Release {
    /// The migrations this release carries, in order.
    pub fn migrations(&self) -> Vec<Migration> {
        MIGRATIONS
            .iter()
            .copied()
            .filter(|m| m.version() <= self.version)
            .collect()
    }

    /// The newest migration version it carries (what a fresh install records).
    pub fn schema_version(&self) -> Version {
        self.migrations()
            .last()
            .map(Migration::version)
            .unwrap_or_else(|| Version::new(self.version.major, 0, 0))
    }

    /// Whether it still copies 1.x `migration_history` (2.0.0–2.2.x: migrateOld/backfillHistory).
    pub fn copies_1x_history(&self) -> bool {
        self.version >= Version::new(2, 0, 0) && self.version < Version::new(2, 3, 0)
    }

    /// Whether it runs the legacy backfill to plain versions (3.4.1–3.13.x).
    pub fn runs_legacy_backfill(&self) -> bool {
        self.version >= Version::new(3, 4, 1) && self.version < Version::new(3, 14, 0)
    }
}

/// A version in the padded form `%04d.%04d.%04d-<YYYYMMDDhhmmss>`.
pub fn padded(v: &Version) -> String {
    format!(
        "{:04}.{:04}.{:04}-{}",
        v.major,
        v.minor,
        v.patch,
        chrono::Utc::now().format("%Y%m%d%H%M%S")
    )
}

/// Parse a padded or plain version; `None` for anything else.
pub fn parse_recorded(text: &str) -> Option<(Version, bool)> {
    if let Some((numbers, _)) = text.split_once('-')
        && numbers.len() == 14
    {
        let parts: Vec<u64> = numbers.split('.').filter_map(|p| p.parse().ok()).collect();
        if let [a, b, c] = parts[..] {
            return Some((Version::new(a, b, c), true));
        }
    }
    Version::parse(text).ok().map(|v| (v, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_come_from_file_names() {
        let m = MIGRATIONS
            .iter()
            .find(|m| m.name() == "migrate_task_type.sql")
            .expect("3.11");
        assert_eq!(m.version(), Version::new(3, 11, 1));
        assert_eq!(
            find("3.14.2").expect("release").schema_version(),
            Version::new(3, 14, 1)
        );
        assert_eq!(
            find("3.10.0").expect("release").schema_version(),
            Version::new(3, 10, 0)
        );
        assert_eq!(
            find("1.2.0").expect("release").schema_version(),
            Version::new(1, 2, 0)
        );
        assert!(find("9.9.9").is_none());
        assert_eq!(
            parse_recorded("0003.0003.0001-20240101000000"),
            Some((Version::new(3, 3, 1), true))
        );
        assert_eq!(
            parse_recorded("3.14.1"),
            Some((Version::new(3, 14, 1), false))
        );
    }
}
