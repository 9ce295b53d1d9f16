//! The simulated Bytebase releases and their metadata migrations.
//!
//! Migration files are named as in Bytebase's tree, `<major>.<minor>/<NNNN>##<name>.sql`, and
//! their version is `<major>.<minor>.<NNNN>` (product-facts §1.5): a file number, not a release.
//! Each simulated release ships the files up to the newest one the real release ships
//! ([`UPSTREAM`]); a release the upstream table does not cover ships an invented count of files
//! numbered the same way ([`INVENTED`]). A file this simulator gives no SQL of its own does
//! nothing but record its version, as a real file would.

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
    /// The newest migration file version it ships.
    pub schema: Version,
}

/// One metadata migration file.
#[derive(Debug, Clone)]
pub struct Migration {
    /// `<major>.<minor>.<NNNN>`.
    pub version: Version,
    /// The name part of the file.
    pub name: String,
    /// Its SQL.
    pub sql: &'static str,
}

impl Migration {
    /// `<major>.<minor>.<NNNN>` from the file name.
    pub fn version(&self) -> Version {
        self.version.clone()
    }

    /// The name part of the file.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The file name in Bytebase's layout.
    pub fn file(&self) -> String {
        format!(
            "{}.{}/{:04}##{}",
            self.version.major, self.version.minor, self.version.patch, self.name
        )
    }
}

/// A migration file with SQL of its own: its name in the tree and the SQL.
#[derive(Debug, Clone, Copy)]
pub struct SqlFile {
    /// `<major>.<minor>/<NNNN>##<name>.sql`.
    pub file: &'static str,
    /// Its SQL.
    pub sql: &'static str,
}

impl SqlFile {
    fn version(&self) -> Option<Version> {
        let (dir, rest) = self.file.split_once('/')?;
        let (major, minor) = dir.split_once('.')?;
        let number = rest.split("##").next()?;
        Some(Version::new(
            major.parse().ok()?,
            minor.parse().ok()?,
            number.parse().ok()?,
        ))
    }

    fn name(&self) -> &'static str {
        self.file.split("##").nth(1).unwrap_or(self.file)
    }
}

/// Release → the newest migration file version its tag ships, read on the upstream tags of
/// bytebase/bytebase with `git ls-tree <tag> backend/migrator/migration/` (product-facts §1.5).
pub const UPSTREAM: &[(&str, &str)] = &[
    ("3.3.1", "3.3.8"),
    ("3.4.1", "3.4.18"),
    ("3.5.0", "3.5.15"),
    ("3.5.1", "3.5.16"),
    ("3.5.2", "3.5.17"),
    ("3.6.0", "3.6.4"),
    ("3.6.1", "3.6.4"),
    ("3.6.2", "3.6.5"),
    ("3.7.0", "3.7.21"),
    ("3.7.1", "3.7.26"),
    ("3.8.0", "3.8.2"),
    ("3.8.1", "3.8.4"),
    ("3.9.0", "3.9.6"),
    ("3.9.1", "3.9.10"),
    ("3.9.2", "3.9.10"),
    ("3.10.0", "3.10.2"),
    ("3.10.1", "3.10.6"),
    ("3.11.0", "3.11.11"),
    ("3.11.1", "3.11.17"),
    ("3.12.0", "3.12.4"),
    ("3.12.1", "3.12.5"),
    ("3.12.2", "3.12.5"),
    ("3.13.0", "3.13.31"),
    ("3.13.1", "3.13.31"),
    ("3.14.0", "3.14.32"),
    ("3.14.1", "3.14.33"),
    ("3.15.0", "3.15.10"),
    ("3.15.1", "3.15.10"),
    ("3.16.0", "3.16.3"),
    ("3.16.1", "3.16.4"),
    ("3.17.0", "3.17.15"),
    ("3.17.1", "3.17.16"),
    ("3.18.0", "3.18.0"),
    ("3.18.1", "3.18.2"),
    ("3.19.0", "3.19.1"),
    ("3.19.1", "3.19.1"),
    ("3.20.0", "3.20.3"),
    ("3.20.1", "3.20.4"),
    ("3.21.0", "3.21.4"),
    ("3.21.1", "3.21.5"),
];

/// Simulated releases outside [`UPSTREAM`], with invented file counts numbered the upstream way
/// (`<major>.<minor>.<file number>`); 3.14.2 is a PATCH release that adds no file, so it records
/// what 3.14.1 records.
pub const INVENTED: &[(&str, &str)] = &[
    ("1.2.0", "1.2.2"),
    ("2.0.0", "2.0.3"),
    ("2.1.0", "2.1.1"),
    ("2.10.0", "2.10.4"),
    ("3.4.0", "3.4.5"),
    ("3.14.2", "3.14.33"),
];

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

/// The migration files with SQL of their own, in version order.
pub const SQL_FILES: &[SqlFile] = &[
    SqlFile {
        file: "1.2/0000##project_workflow_type.sql",
        sql: "ALTER TABLE project ADD COLUMN workflow_type TEXT NOT NULL DEFAULT 'UI'",
    },
    SqlFile {
        file: "2.1/0000##environment_order.sql",
        sql: "ALTER TABLE environment ADD COLUMN \"order\" INTEGER NOT NULL DEFAULT 0",
    },
    SqlFile {
        file: "2.10/0000##policy_inherit.sql",
        sql: "ALTER TABLE policy ADD COLUMN inherit_from_parent BOOLEAN NOT NULL DEFAULT TRUE",
    },
    SqlFile {
        file: "3.3/0001##issue_type.sql",
        sql: "ALTER TABLE issue ADD COLUMN type TEXT NOT NULL DEFAULT 'DATABASE_CHANGE'",
    },
    SqlFile {
        file: "3.5/0000##instance_activation.sql",
        sql: "ALTER TABLE instance ADD COLUMN activation BOOLEAN NOT NULL DEFAULT FALSE",
    },
    SqlFile {
        file: "3.10/0000##db_schema_index.sql",
        sql: "CREATE INDEX idx_db_instance_name ON db (instance, name)",
    },
    SqlFile {
        file: "3.11/0001##migrate_task_type.sql",
        sql: "ALTER TABLE issue ADD COLUMN task_type TEXT NOT NULL DEFAULT 'DATABASE_SCHEMA_UPDATE'",
    },
    SqlFile {
        file: "3.13/0000##setting_workspace_profile.sql",
        sql: "INSERT INTO setting (name, value) VALUES ('bb.workspace.profile', '{}') ON CONFLICT (name) DO NOTHING",
    },
    SqlFile {
        file: "3.14/0000##project_labels.sql",
        sql: "ALTER TABLE project ADD COLUMN labels TEXT NOT NULL DEFAULT '{}'",
    },
    SqlFile {
        file: "3.14/0001##principal_profile.sql",
        sql: "ALTER TABLE principal ADD COLUMN profile TEXT NOT NULL DEFAULT '{}'",
    },
];

fn version(text: &str) -> Version {
    Version::parse(text).unwrap_or_else(|_| Version::new(0, 0, 0))
}

/// The era a release records versions in (product-facts §1.4).
fn era_of(v: &Version) -> Era {
    if v.major < 2 {
        Era::V1
    } else if *v < Version::new(3, 4, 1) {
        Era::V2
    } else {
        Era::V3
    }
}

/// The simulated releases, oldest first.
pub fn releases() -> Vec<Release> {
    let mut all: Vec<Release> = UPSTREAM
        .iter()
        .chain(INVENTED)
        .map(|(release, schema)| {
            let release = version(release);
            Release {
                era: era_of(&release),
                version: release,
                schema: version(schema),
            }
        })
        .collect();
    all.sort_by(|a, b| a.version.cmp(&b.version));
    all
}

/// The release of that version, if simulated.
pub fn find(version: &str) -> Option<Release> {
    let wanted = Version::parse(version.trim_start_matches('v')).ok()?;
    releases().into_iter().find(|r| r.version == wanted)
}

/// Every migration file of every simulated release, in version order: each `<major>.<minor>`
/// folder holds files `0000` up to the newest any release ships from it.
pub fn all_migrations() -> Vec<Migration> {
    let mut newest: std::collections::BTreeMap<(u64, u64), u64> = Default::default();
    for r in releases() {
        let n = newest.entry((r.schema.major, r.schema.minor)).or_default();
        *n = (*n).max(r.schema.patch);
    }
    newest
        .into_iter()
        .flat_map(|((major, minor), last)| {
            (0..=last).map(move |number| Version::new(major, minor, number))
        })
        .map(
            |v| match SQL_FILES.iter().find(|f| f.version().as_ref() == Some(&v)) {
                Some(f) => Migration {
                    version: v,
                    name: f.name().to_string(),
                    sql: f.sql,
                },
                None => Migration {
                    name: "unsimulated.sql".to_string(),
                    version: v,
                    sql: "SELECT 1",
                },
            },
        )
        .collect()
}

impl Release {
    /// The migrations this release carries, in order: every file up to its newest.
    pub fn migrations(&self) -> Vec<Migration> {
        all_migrations()
            .into_iter()
            .filter(|m| m.version <= self.schema)
            .collect()
    }

    /// The newest migration version it carries (what a fresh install records).
    pub fn schema_version(&self) -> Version {
        self.schema.clone()
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
        let m = all_migrations()
            .into_iter()
            .find(|m| m.name() == "migrate_task_type.sql")
            .expect("3.11");
        assert_eq!(m.version(), Version::new(3, 11, 1));
        assert_eq!(m.file(), "3.11/0001##migrate_task_type.sql");
        for (release, schema) in [
            ("3.11.1", Version::new(3, 11, 17)),
            ("3.14.0", Version::new(3, 14, 32)),
            ("3.10.0", Version::new(3, 10, 2)),
            ("3.14.2", Version::new(3, 14, 33)),
            ("1.2.0", Version::new(1, 2, 2)),
        ] {
            let r = find(release).expect("release");
            assert_eq!(r.schema_version(), schema, "{release}");
            assert_eq!(r.migrations().last().map(Migration::version), Some(schema));
        }
        assert!(SQL_FILES.iter().all(|f| f.version().is_some()));
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
