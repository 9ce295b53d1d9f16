//! Simulated DevLake releases and their migration scripts (product-facts §4.4): scripts are
//! named `<YYYYMMDDhhmmss>_<name>`, recorded in `_devlake_migration_history` as
//! `(script_version, script_name)`, and a release carries every script up to its newest.
//!
//! Each release also carries the start-up and HTTP details that differ between releases in
//! DevLake's source (`backend/server/services/{locking,init}.go`, `backend/server/api/api.go`).

use std::time::Duration;

use super::store::Engine;

/// A statement, written once or per engine where MySQL and PostgreSQL differ.
#[derive(Debug, Clone, Copy)]
pub enum Sql {
    /// The same text on both engines.
    Same(&'static str),
    /// MySQL text, PostgreSQL text.
    Per(&'static str, &'static str),
}

impl Sql {
    /// The text for `engine`.
    pub fn on(&self, engine: Engine) -> &'static str {
        match (self, engine) {
            (Sql::Same(s), _) => s,
            (Sql::Per(m, _), Engine::MySql) => m,
            (Sql::Per(_, p), Engine::Postgres) => p,
        }
    }
}

/// One migration script.
#[derive(Debug, Clone, Copy)]
pub struct Script {
    /// Its timestamp version.
    pub version: u64,
    /// Its name.
    pub name: &'static str,
    /// What it does.
    pub sql: Sql,
    /// The only releases that carry it, when its version is not its date (v1.0.0's two
    /// misnumbered scripts); empty: every release whose newest script is this one or later.
    pub only_in: &'static [&'static str],
}

/// The base tables every DevLake database has (GORM `AutoMigrate` of the framework models),
/// created before the scripts run.
pub const BASE: &[Sql] = &[
    Sql::Per(
        "CREATE TABLE IF NOT EXISTS _devlake_migration_history (script_version BIGINT UNSIGNED NOT NULL, script_name VARCHAR(255) NOT NULL, comment TEXT NULL, created_at DATETIME(3) NULL, PRIMARY KEY (script_version, script_name))",
        "CREATE TABLE IF NOT EXISTS _devlake_migration_history (script_version BIGINT NOT NULL, script_name VARCHAR(255) NOT NULL, comment TEXT NULL, created_at TIMESTAMP(3) NULL, PRIMARY KEY (script_version, script_name))",
    ),
    Sql::Per(
        "CREATE TABLE IF NOT EXISTS _devlake_locking_history (id BIGINT UNSIGNED AUTO_INCREMENT PRIMARY KEY, host_name LONGTEXT, version LONGTEXT, succeeded TINYINT(1), created_at DATETIME(3), updated_at DATETIME(3))",
        "CREATE TABLE IF NOT EXISTS _devlake_locking_history (id BIGSERIAL PRIMARY KEY, host_name TEXT, version TEXT, succeeded BOOLEAN, created_at TIMESTAMP(3), updated_at TIMESTAMP(3))",
    ),
    Sql::Per(
        "CREATE TABLE IF NOT EXISTS _tool_github_connections (id BIGINT UNSIGNED AUTO_INCREMENT PRIMARY KEY, name VARCHAR(100), endpoint VARCHAR(255), token TEXT, created_at DATETIME(3))",
        "CREATE TABLE IF NOT EXISTS _tool_github_connections (id BIGSERIAL PRIMARY KEY, name VARCHAR(100), endpoint VARCHAR(255), token TEXT, created_at TIMESTAMP(3))",
    ),
];

/// Every simulated script, in order. The newest script of each simulated release carries the
/// version upstream's newest framework script of that release has (apache/incubator-devlake
/// `backend/core/models/migrationscripts/*.go` `Version()` at the tag: v0.17.0 20230426150702,
/// v0.18.0 20230517162121, v0.21.0 20240308142101, v1.0.0 20240523194205 — leaving out its two
/// misnumbered 2025… scripts that v1.0.1 renumbers —, v1.0.1 20240813160242); the names and the
/// SQL are invented, and so are the two oldest versions.
pub const SCRIPTS: &[Script] = &[
    Script {
        version: 20220406000001,
        name: "init_schemas",
        sql: Sql::Same(
            "CREATE TABLE repos (id VARCHAR(255) PRIMARY KEY, name VARCHAR(255), url TEXT)",
        ),
        only_in: &[],
    },
    Script {
        version: 20220601000005,
        name: "add_pull_requests",
        sql: Sql::Same(
            "CREATE TABLE pull_requests (id VARCHAR(255) PRIMARY KEY, base_repo_id VARCHAR(255), title TEXT, status VARCHAR(100))",
        ),
        only_in: &[],
    },
    Script {
        version: 20230426150702,
        name: "add_connection_proxy",
        sql: Sql::Same("ALTER TABLE _tool_github_connections ADD COLUMN proxy VARCHAR(255) NULL"),
        only_in: &[],
    },
    Script {
        version: 20230517162121,
        name: "add_repo_language",
        sql: Sql::Same("ALTER TABLE repos ADD COLUMN language VARCHAR(100) NULL"),
        only_in: &[],
    },
    Script {
        version: 20240308142101,
        name: "add_pr_created_date",
        sql: Sql::Per(
            "ALTER TABLE pull_requests ADD COLUMN created_date DATETIME(3) NULL",
            "ALTER TABLE pull_requests ADD COLUMN created_date TIMESTAMP(3) NULL",
        ),
        only_in: &[],
    },
    Script {
        version: 20240523194205,
        name: "add_pr_assignee_id",
        sql: Sql::Same("ALTER TABLE pull_requests ADD COLUMN assignee_id VARCHAR(255) NULL"),
        only_in: &[],
    },
    // v1.0.1 renumbers v1.0.0's two misnumbered scripts to their dates and deletes the
    // misnumbered history rows (`20240531_add_pr_assignees_and_reviewers.go`,
    // `20240607_modify_pr_assignees_and_reviewers_id.go` @v1.0.0 vs @v1.0.1): a database that
    // v1.0.0 migrated runs them again, so they must not fail on what the 2025… ones made.
    Script {
        version: 20240531000041,
        name: "add_pr_assignees_and_reviewers",
        sql: Sql::Same(
            "CREATE TABLE IF NOT EXISTS pull_request_assignees (pull_request_id VARCHAR(255) NOT NULL, assignee_id VARCHAR(255) NOT NULL, PRIMARY KEY (pull_request_id, assignee_id))",
        ),
        only_in: &[],
    },
    Script {
        version: 20240607000041,
        name: "modify_pr_assignees_and_reviewers_id",
        sql: Sql::Same(
            "DELETE FROM _devlake_migration_history WHERE script_version IN (20250531000041, 20250607000041)",
        ),
        only_in: &[],
    },
    Script {
        version: 20240813160242,
        name: "add_pr_merged_date",
        sql: Sql::Per(
            "ALTER TABLE pull_requests ADD COLUMN merged_date DATETIME(3) NULL",
            "ALTER TABLE pull_requests ADD COLUMN merged_date TIMESTAMP(3) NULL",
        ),
        only_in: &[],
    },
    // v1.0.0 numbered these two `2025…` for `2024…` (month and day right, year wrong): they
    // sort after every later release's scripts and v1.0.1 replaces them (above).
    Script {
        version: 20250531000041,
        name: "add_pr_assignees_and_reviewers",
        sql: Sql::Same(
            "CREATE TABLE IF NOT EXISTS pull_request_assignees (pull_request_id VARCHAR(255) NOT NULL, assignee_id VARCHAR(255) NOT NULL, PRIMARY KEY (pull_request_id, assignee_id))",
        ),
        only_in: &["v1.0.0"],
    },
    Script {
        version: 20250607000041,
        name: "modify_pr_assignees_and_reviewers_id",
        sql: Sql::Same("SELECT 1"),
        only_in: &["v1.0.0"],
    },
];

/// How a release answers HTTP while migration scripts are pending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateModel {
    /// ≤ v0.21: the gate is "scripts are pending"; a failed `/proceed-db-migration` leaves the
    /// confirmation gate up and can be retried.
    Pending,
    /// v1.0.0: a service status; a failed migration crashes the process (`defer
    /// statusLock.Unlock()` after an explicit unlock: "fatal error: sync: unlock of unlocked
    /// mutex").
    StatusCrashOnFailure,
    /// ≥ v1.0.1: a service status; a failed migration leaves the status `migrating` (428
    /// "Database migration is in progress…", a retry answers "There is a migration in
    /// progress.") until the process is restarted.
    Status,
}

/// A simulated release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Release {
    /// Tag, e.g. `v1.0.1`.
    pub tag: &'static str,
    /// Newest script version carried.
    pub newest_script: u64,
    /// Whether it reads `ENCRYPTION_SECRET` (≥ v0.18) rather than `ENCODE_KEY`.
    pub encryption_secret: bool,
    /// How long it waits for `_devlake_locking_stub` before giving up (2 s in v0.16–v0.17, 3 s
    /// in v0.18–v0.19, 10 s from v0.20 on).
    pub lock_timeout: Duration,
    /// Whether it drops and re-creates `_devlake_locking_stub` inside the locking transaction
    /// (≥ v0.20) rather than creating it if missing beforehand.
    pub lock_drops_stub: bool,
    /// Whether `/health` exists (≥ v0.20; an alias of `/ping` before v1.0.0).
    pub health: bool,
    /// Whether `/ready` exists and `/health` reports the status (≥ v1.0.0).
    pub probes: bool,
    /// The HTTP gate model.
    pub gate: GateModel,
}

/// The simulated releases.
pub const RELEASES: &[Release] = &[
    Release {
        tag: "v0.17.0",
        newest_script: 20230426150702,
        encryption_secret: false,
        lock_timeout: Duration::from_secs(2),
        lock_drops_stub: false,
        health: false,
        probes: false,
        gate: GateModel::Pending,
    },
    Release {
        tag: "v0.18.0",
        newest_script: 20230517162121,
        encryption_secret: true,
        lock_timeout: Duration::from_secs(3),
        lock_drops_stub: false,
        health: false,
        probes: false,
        gate: GateModel::Pending,
    },
    Release {
        tag: "v0.21.0",
        newest_script: 20240308142101,
        encryption_secret: true,
        lock_timeout: Duration::from_secs(10),
        lock_drops_stub: true,
        health: true,
        probes: false,
        gate: GateModel::Pending,
    },
    Release {
        tag: "v1.0.0",
        newest_script: 20240523194205,
        encryption_secret: true,
        lock_timeout: Duration::from_secs(10),
        lock_drops_stub: true,
        health: true,
        probes: true,
        gate: GateModel::StatusCrashOnFailure,
    },
    Release {
        tag: "v1.0.1",
        newest_script: 20240813160242,
        encryption_secret: true,
        lock_timeout: Duration::from_secs(10),
        lock_drops_stub: true,
        health: true,
        probes: true,
        gate: GateModel::Status,
    },
];

/// The release with that tag (a leading `v` is optional: `v1.0.1` and `1.0.1` both work).
pub fn find(tag: &str) -> Option<Release> {
    let bare = tag.trim().trim_start_matches('v');
    RELEASES
        .iter()
        .copied()
        .find(|r| r.tag.trim_start_matches('v') == bare)
}

impl Release {
    /// The scripts it carries, in order.
    pub fn scripts(&self) -> impl Iterator<Item = &'static Script> + '_ {
        SCRIPTS.iter().filter(move |s| {
            if s.only_in.is_empty() {
                s.version <= self.newest_script
            } else {
                s.only_in.contains(&self.tag)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_with_or_without_v() {
        assert_eq!(find("v1.0.1").map(|r| r.tag), Some("v1.0.1"));
        assert_eq!(find("1.0.1").map(|r| r.tag), Some("v1.0.1"));
        assert_eq!(
            find("0.21.0").map(|r| r.newest_script),
            Some(20240308142101)
        );
        assert_eq!(find("v1.0.2"), None);
        assert_eq!(find(""), None);
    }

    #[test]
    fn releases_carry_growing_script_sets() {
        let counts: Vec<usize> = RELEASES.iter().map(|r| r.scripts().count()).collect();
        assert_eq!(counts, vec![3, 4, 5, 8, 9]);
        let v100: Vec<u64> = find("v1.0.0")
            .map(|r| r.scripts().map(|s| s.version).collect())
            .unwrap_or_default();
        assert_eq!(
            v100[v100.len() - 2..],
            [20250531000041, 20250607000041],
            "v1.0.0 runs its misnumbered scripts last"
        );
        assert!(SCRIPTS.windows(2).all(|w| w[0].version < w[1].version));
    }
}
