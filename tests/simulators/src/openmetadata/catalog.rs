//! Simulated OpenMetadata releases, their Flyway scripts and native migrations
//! (product-facts §3.2).
//!
//! A release carries every native migration from its oldest up to its newest; the newest may be
//! lower than the release (1.3.4 carries 1.3.0, 1.10.2 carries 1.10.0, 1.12.1 carries 1.12.0).
//! Statements are written with unquoted identifiers: MySQL keeps their case, PostgreSQL folds
//! them to lower case (`SERVER_CHANGE_LOG` is `server_change_log` there). Flyway's own table is
//! the exception: Flyway quotes it, so on PostgreSQL it is `"DATABASE_CHANGE_LOG"`.

use std::cmp::Ordering;
use std::fmt;

use super::store::Engine;

/// A version compared numerically on `major.minor.patch`; the patch may carry a suffix
/// (`2.0.0-baseline`, `1.1.0-extension`) which does not take part in the comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ver {
    /// major, minor, patch.
    pub parts: [u64; 3],
    /// What followed the patch, e.g. `-baseline`.
    pub suffix: String,
    text: String,
}

impl Ver {
    /// Parse `x.y.z[-suffix]`; `None` for anything else (Flyway's `000`, `001`, …).
    pub fn parse(s: &str) -> Option<Ver> {
        let s = s.trim();
        let (numbers, suffix) = match s.find('-') {
            Some(i) => (&s[..i], &s[i..]),
            None => (s, ""),
        };
        let mut parts = [0u64; 3];
        let mut it = numbers.split('.');
        for p in &mut parts {
            *p = it.next()?.parse().ok()?;
        }
        if it.next().is_some() {
            return None;
        }
        Some(Ver {
            parts,
            suffix: suffix.to_string(),
            text: s.to_string(),
        })
    }

    /// Compare numerically, ignoring the suffix.
    pub fn cmp_num(&self, other: &Ver) -> Ordering {
        self.parts.cmp(&other.parts)
    }

    /// `major.minor.patch` is at least `other`'s.
    pub fn at_least(&self, other: &str) -> bool {
        Ver::parse(other).is_some_and(|o| self.cmp_num(&o) != Ordering::Less)
    }
}

impl fmt::Display for Ver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// One statement, spelled per engine.
#[derive(Debug, Clone, Copy)]
pub struct Sql {
    /// MySQL / MariaDB.
    pub my: &'static str,
    /// PostgreSQL.
    pub pg: &'static str,
}

impl Sql {
    /// The statement for `engine`.
    pub fn text(&self, engine: Engine) -> &'static str {
        match engine {
            Engine::MySql => self.my,
            Engine::Postgres => self.pg,
        }
    }
}

/// The same text on both engines.
const fn both(s: &'static str) -> Sql {
    Sql { my: s, pg: s }
}

/// A Flyway script of the 1.x era (`bootstrap/sql/migrations/flyway/<driver>/v0NN__*.sql`).
#[derive(Debug)]
pub struct FlywayScript {
    /// Flyway version, e.g. `001`.
    pub version: &'static str,
    /// Description, e.g. `create entity tables`.
    pub description: &'static str,
    /// The statements.
    pub sql: &'static [Sql],
}

impl FlywayScript {
    /// `v001__create_entity_tables.sql`.
    pub fn script(&self) -> String {
        format!(
            "v{}__{}.sql",
            self.version,
            self.description.replace(' ', "_")
        )
    }
}

/// `SERVER_CHANGE_LOG` and `SERVER_MIGRATION_SQL_LOGS` as Flyway script v000 creates them
/// (the columns every era has; `migrationType` and `status` are added on top).
pub const TRACKING: &[Sql] = &[
    Sql {
        my: "CREATE TABLE IF NOT EXISTS SERVER_CHANGE_LOG (installed_rank BIGINT UNSIGNED NOT NULL AUTO_INCREMENT UNIQUE, version VARCHAR(256) NOT NULL PRIMARY KEY, migrationFileName VARCHAR(256) NOT NULL, checksum VARCHAR(256) NOT NULL, installed_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP, metrics JSON NULL)",
        pg: "CREATE TABLE IF NOT EXISTS SERVER_CHANGE_LOG (installed_rank SERIAL, version VARCHAR(256) NOT NULL PRIMARY KEY, migrationFileName VARCHAR(256) NOT NULL, checksum VARCHAR(256) NOT NULL, installed_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP, metrics JSONB NULL)",
    },
    both(
        "CREATE TABLE IF NOT EXISTS SERVER_MIGRATION_SQL_LOGS (version VARCHAR(256) NOT NULL, sqlStatement VARCHAR(10000) NOT NULL, checksum VARCHAR(256) NOT NULL PRIMARY KEY, executedAt TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP)",
    ),
];

/// `migrationType`, added to `SERVER_CHANGE_LOG` from 1.11 on.
pub const ADD_MIGRATION_TYPE: Sql = both(
    "ALTER TABLE SERVER_CHANGE_LOG ADD COLUMN migrationType VARCHAR(20) NOT NULL DEFAULT 'NATIVE'",
);
/// `status`, added to `SERVER_CHANGE_LOG` in 2.x.
pub const ADD_STATUS: Sql = both(
    "ALTER TABLE SERVER_CHANGE_LOG ADD COLUMN status VARCHAR(20) NOT NULL DEFAULT 'COMPLETED'",
);

/// Flyway's history table (Flyway's schema-history columns).
pub const DATABASE_CHANGE_LOG: Sql = Sql {
    my: "CREATE TABLE IF NOT EXISTS DATABASE_CHANGE_LOG (installed_rank INT NOT NULL PRIMARY KEY, version VARCHAR(50) NULL, description VARCHAR(200) NOT NULL, type VARCHAR(20) NOT NULL, script VARCHAR(1000) NOT NULL, checksum INT NULL, installed_by VARCHAR(100) NOT NULL, installed_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP, execution_time INT NOT NULL, success BOOLEAN NOT NULL)",
    pg: "CREATE TABLE IF NOT EXISTS \"DATABASE_CHANGE_LOG\" (installed_rank INT NOT NULL PRIMARY KEY, version VARCHAR(50) NULL, description VARCHAR(200) NOT NULL, type VARCHAR(20) NOT NULL, script VARCHAR(1000) NOT NULL, checksum INT NULL, installed_by VARCHAR(100) NOT NULL, installed_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP, execution_time INT NOT NULL, success BOOLEAN NOT NULL)",
};

/// The entity tables OpenMetadata stores its metadata in (a subset, with JSON documents).
pub const ENTITY_TABLES: &[&str] = &[
    "table_entity",
    "user_entity",
    "team_entity",
    "role_entity",
    "policy_entity",
    "bot_entity",
];

macro_rules! entity {
    ($t:literal) => {
        Sql {
            my: concat!(
                "CREATE TABLE ",
                $t,
                " (id VARCHAR(36) NOT NULL PRIMARY KEY, name VARCHAR(256) NOT NULL, json JSON NOT NULL, updatedAt BIGINT NOT NULL, deleted BOOLEAN NOT NULL DEFAULT FALSE)"
            ),
            pg: concat!(
                "CREATE TABLE ",
                $t,
                " (id VARCHAR(36) NOT NULL PRIMARY KEY, name VARCHAR(256) NOT NULL, json JSONB NOT NULL, updatedAt BIGINT NOT NULL, deleted BOOLEAN NOT NULL DEFAULT FALSE)"
            ),
        }
    };
}

/// The Flyway scripts every Flyway-era release carries.
pub const FLYWAY: &[FlywayScript] = &[
    FlywayScript {
        version: "000",
        description: "create server change log",
        sql: TRACKING,
    },
    FlywayScript {
        version: "001",
        description: "create entity tables",
        sql: &[
            entity!("table_entity"),
            entity!("user_entity"),
            entity!("team_entity"),
            entity!("role_entity"),
            entity!("policy_entity"),
            entity!("bot_entity"),
            Sql {
                my: "CREATE TABLE entity_relationship (fromId VARCHAR(36) NOT NULL, toId VARCHAR(36) NOT NULL, fromEntity VARCHAR(256) NOT NULL, toEntity VARCHAR(256) NOT NULL, relation SMALLINT NOT NULL, json JSON NULL, deleted BOOLEAN NOT NULL DEFAULT FALSE, PRIMARY KEY (fromId, toId, relation))",
                pg: "CREATE TABLE entity_relationship (fromId VARCHAR(36) NOT NULL, toId VARCHAR(36) NOT NULL, fromEntity VARCHAR(256) NOT NULL, toEntity VARCHAR(256) NOT NULL, relation SMALLINT NOT NULL, json JSONB NULL, deleted BOOLEAN NOT NULL DEFAULT FALSE, PRIMARY KEY (fromId, toId, relation))",
            },
        ],
    },
    // Harmless on the empty tables of an install; re-run by `migrate --force` after the Flyway
    // history was imported (≥ 1.11) it wipes roles, policies and bot relationships — the
    // data-loss of PR #24985, which added `recover`.
    FlywayScript {
        version: "002",
        description: "reset default seed data",
        sql: &[
            both(
                "DELETE FROM entity_relationship WHERE fromEntity IN ('bot', 'role') OR toEntity IN ('bot', 'role', 'policy')",
            ),
            both("DELETE FROM bot_entity"),
            both("DELETE FROM policy_entity"),
            both("DELETE FROM role_entity"),
        ],
    },
];

/// A native migration (`bootstrap/sql/migrations/native/<version>/{mysql,postgres}/` plus its
/// Java `Migration` class): SchemaChanges, DataMigration, PostDDLScripts.
#[derive(Debug)]
pub struct Native {
    /// e.g. `1.9.0`.
    pub version: &'static str,
    /// `schemaChanges.sql`.
    pub schema: &'static [Sql],
    /// The Java data migration (run as SQL here).
    pub data: &'static [Sql],
    /// `postDataMigrationSQLScript.sql`.
    pub post: &'static [Sql],
}

impl Native {
    /// Its parsed version.
    pub fn ver(&self) -> Ver {
        Ver::parse(self.version).unwrap_or_else(|| unreachable!("catalog versions parse"))
    }

    /// `bootstrap/sql/migrations/native/<version>`.
    pub fn file_name(&self) -> String {
        format!("bootstrap/sql/migrations/native/{}", self.version)
    }
}

/// Every simulated native migration, in order.
pub const NATIVE: &[Native] = &[
    Native {
        version: "1.1.0",
        schema: &[both(
            "ALTER TABLE table_entity ADD COLUMN fqnHash VARCHAR(256) NULL",
        )],
        data: &[both(
            "UPDATE table_entity SET fqnHash = MD5(name) WHERE fqnHash IS NULL",
        )],
        post: &[],
    },
    Native {
        version: "1.2.0",
        schema: &[both(
            "ALTER TABLE user_entity ADD COLUMN email VARCHAR(256) NULL",
        )],
        data: &[both(
            "UPDATE user_entity SET email = CONCAT(name, '@open-metadata.org') WHERE email IS NULL",
        )],
        post: &[both(
            "CREATE INDEX user_entity_email_index ON user_entity (email)",
        )],
    },
    Native {
        version: "1.3.0",
        schema: &[both(
            "ALTER TABLE team_entity ADD COLUMN teamType VARCHAR(64) NULL",
        )],
        data: &[both(
            "UPDATE team_entity SET teamType = 'Group' WHERE teamType IS NULL",
        )],
        post: &[],
    },
    Native {
        version: "1.5.0",
        schema: &[Sql {
            my: "CREATE TABLE IF NOT EXISTS doc_store (id VARCHAR(36) NOT NULL PRIMARY KEY, name VARCHAR(256) NOT NULL, json JSON NOT NULL)",
            pg: "CREATE TABLE IF NOT EXISTS doc_store (id VARCHAR(36) NOT NULL PRIMARY KEY, name VARCHAR(256) NOT NULL, json JSONB NOT NULL)",
        }],
        data: &[],
        post: &[],
    },
    Native {
        version: "1.9.0",
        schema: &[both(
            "ALTER TABLE role_entity ADD COLUMN provider VARCHAR(32) NULL",
        )],
        data: &[both(
            "UPDATE role_entity SET provider = 'system' WHERE provider IS NULL",
        )],
        post: &[],
    },
    Native {
        version: "1.10.0",
        schema: &[both(
            "ALTER TABLE bot_entity ADD COLUMN provider VARCHAR(32) NULL",
        )],
        data: &[both(
            "UPDATE bot_entity SET provider = 'system' WHERE provider IS NULL",
        )],
        post: &[both(
            "CREATE INDEX bot_entity_name_index ON bot_entity (name)",
        )],
    },
    Native {
        version: "1.11.0",
        schema: &[Sql {
            my: "CREATE TABLE IF NOT EXISTS entity_extension (id VARCHAR(36) NOT NULL, extension VARCHAR(256) NOT NULL, jsonSchema VARCHAR(256) NOT NULL, json JSON NOT NULL, PRIMARY KEY (id, extension))",
            pg: "CREATE TABLE IF NOT EXISTS entity_extension (id VARCHAR(36) NOT NULL, extension VARCHAR(256) NOT NULL, jsonSchema VARCHAR(256) NOT NULL, json JSONB NOT NULL, PRIMARY KEY (id, extension))",
        }],
        data: &[Sql {
            my: "UPDATE table_entity SET json = JSON_SET(json, '$.version', 0.2)",
            pg: "UPDATE table_entity SET json = jsonb_set(json, '{version}', '0.2')",
        }],
        post: &[],
    },
    Native {
        version: "1.12.0",
        schema: &[both(
            "ALTER TABLE policy_entity ADD COLUMN provider VARCHAR(32) NULL",
        )],
        data: &[both(
            "UPDATE policy_entity SET provider = 'system' WHERE provider IS NULL",
        )],
        post: &[],
    },
    Native {
        version: "2.0.0",
        schema: &[both(
            "ALTER TABLE table_entity ADD COLUMN entityStatus VARCHAR(32) NULL",
        )],
        data: &[both(
            "UPDATE table_entity SET entityStatus = 'Approved' WHERE entityStatus IS NULL",
        )],
        post: &[both(
            "CREATE INDEX table_entity_status_index ON table_entity (entityStatus)",
        )],
    },
    Native {
        version: "2.0.3",
        schema: &[both(
            "ALTER TABLE user_entity ADD COLUMN isBot BOOLEAN NOT NULL DEFAULT FALSE",
        )],
        data: &[both(
            "UPDATE user_entity SET isBot = TRUE WHERE name LIKE '%-bot'",
        )],
        post: &[],
    },
    Native {
        version: "2.1.0",
        schema: &[both(
            "ALTER TABLE team_entity ADD COLUMN parentId VARCHAR(36) NULL",
        )],
        data: &[Sql {
            my: "UPDATE team_entity SET json = JSON_SET(json, '$.teamVersion', 2)",
            pg: "UPDATE team_entity SET json = jsonb_set(json, '{teamVersion}', '2')",
        }],
        post: &[],
    },
];

/// How a release tracks its migrations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Era {
    /// ≤ 1.10.x: Flyway (`DATABASE_CHANGE_LOG`) plus native (`SERVER_CHANGE_LOG` without
    /// `migrationType`/`status`).
    Flyway,
    /// 1.11 – 1.13: native only; Flyway history imported as `migrationType='FLYWAY'` rows and
    /// `DATABASE_CHANGE_LOG` dropped.
    Native,
    /// 2.0.x: baseline for empty databases, `status` column, still accepts 1.x databases.
    V2,
    /// ≥ 2.1: the newest-code gate (a database must already be on 2.0.0 or later).
    V2Gated,
}

/// A simulated release.
#[derive(Debug, Clone, Copy)]
pub struct Release {
    /// e.g. `1.9.0`.
    pub version: &'static str,
    /// Its tracking era.
    pub era: Era,
    /// Oldest native migration it carries.
    pub oldest_native: &'static str,
    /// Newest native migration it carries.
    pub newest_native: &'static str,
}

/// The baseline's version row in 2.x.
pub const BASELINE_VERSION: &str = "2.0.0-baseline";
/// `MINIMUM_SUPPORTED_MIGRATION_VERSION` of the newest code.
pub const MINIMUM_SUPPORTED_MIGRATION_VERSION: &str = "2.0.0";

/// The simulated releases.
pub const RELEASES: &[Release] = &[
    Release {
        version: "1.3.4",
        era: Era::Flyway,
        oldest_native: "1.1.0",
        newest_native: "1.3.0",
    },
    Release {
        version: "1.9.0",
        era: Era::Flyway,
        oldest_native: "1.1.0",
        newest_native: "1.9.0",
    },
    Release {
        version: "1.10.2",
        era: Era::Flyway,
        oldest_native: "1.1.0",
        newest_native: "1.10.0",
    },
    Release {
        version: "1.11.0",
        era: Era::Native,
        oldest_native: "1.1.0",
        newest_native: "1.11.0",
    },
    Release {
        version: "1.12.1",
        era: Era::Native,
        oldest_native: "1.1.0",
        newest_native: "1.12.0",
    },
    Release {
        version: "2.0.0",
        era: Era::V2,
        oldest_native: "1.1.0",
        newest_native: "2.0.0",
    },
    Release {
        version: "2.0.3",
        era: Era::V2,
        oldest_native: "1.1.0",
        newest_native: "2.0.3",
    },
    Release {
        version: "2.1.0",
        era: Era::V2Gated,
        oldest_native: "2.0.0",
        newest_native: "2.1.0",
    },
];

/// The release with that version.
pub fn find(version: &str) -> Option<Release> {
    let wanted = version.trim().trim_start_matches('v');
    RELEASES.iter().copied().find(|r| r.version == wanted)
}

impl Release {
    /// Its parsed version.
    pub fn ver(&self) -> Ver {
        Ver::parse(self.version).unwrap_or_else(|| unreachable!("catalog versions parse"))
    }

    /// The native migrations it carries, in order.
    pub fn natives(&self) -> impl Iterator<Item = &'static Native> + '_ {
        let (lo, hi) = (
            Ver::parse(self.oldest_native),
            Ver::parse(self.newest_native),
        );
        NATIVE.iter().filter(move |n| {
            let v = n.ver();
            lo.as_ref()
                .is_some_and(|lo| v.cmp_num(lo) != Ordering::Less)
                && hi
                    .as_ref()
                    .is_some_and(|hi| v.cmp_num(hi) != Ordering::Greater)
        })
    }

    /// Its newest native migration version.
    pub fn newest(&self) -> Ver {
        Ver::parse(self.newest_native).unwrap_or_else(|| unreachable!("catalog versions parse"))
    }

    /// `SERVER_CHANGE_LOG` has `migrationType` (≥ 1.11).
    pub fn has_migration_type(&self) -> bool {
        self.era != Era::Flyway
    }

    /// `SERVER_CHANGE_LOG` has `status` (2.x).
    pub fn has_status(&self) -> bool {
        matches!(self.era, Era::V2 | Era::V2Gated)
    }

    /// The 40-hex revision `/api/v1/version` reports.
    pub fn revision(&self) -> String {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(format!("openmetadata-{}", self.version).as_bytes());
        digest.iter().take(20).map(|b| format!("{b:02x}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_numerically_and_ignore_suffixes() {
        let a = Ver::parse("1.10.0").expect("parse");
        let b = Ver::parse("1.9.0").expect("parse");
        assert_eq!(a.cmp_num(&b), Ordering::Greater);
        let base = Ver::parse(BASELINE_VERSION).expect("parse");
        assert_eq!(
            base.cmp_num(&Ver::parse("2.0.0").expect("parse")),
            Ordering::Equal
        );
        assert!(Ver::parse("001").is_none());
        assert!(Ver::parse("1.2").is_none());
    }

    #[test]
    fn releases_carry_natives_up_to_their_newest() {
        let r = find("1.3.4").expect("release");
        let v: Vec<_> = r.natives().map(|n| n.version).collect();
        assert_eq!(v, ["1.1.0", "1.2.0", "1.3.0"]);
        let r = find("2.1.0").expect("release");
        let v: Vec<_> = r.natives().map(|n| n.version).collect();
        assert_eq!(v, ["2.0.0", "2.0.3", "2.1.0"]);
        for r in RELEASES {
            assert_eq!(r.revision().len(), 40);
            assert!(r.ver().cmp_num(&r.newest()) != Ordering::Less);
        }
    }
}
