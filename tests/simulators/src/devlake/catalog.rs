//! Simulated DevLake releases and their migration scripts (product-facts §4.4): scripts are
//! named `<YYYYMMDDhhmmss>_<name>`, recorded in `_devlake_migration_history` as
//! `(script_version, script_name)`, and a release carries every script up to its newest.

/// One migration script.
#[derive(Debug, Clone, Copy)]
pub struct Script {
    /// Its timestamp version.
    pub version: u64,
    /// Its name.
    pub name: &'static str,
    /// What it does.
    pub sql: &'static str,
}

/// Every simulated script, in order.
pub const SCRIPTS: &[Script] = &[
    Script {
        version: 20220406000001,
        name: "init_schemas",
        sql: "CREATE TABLE repos (id VARCHAR(255) PRIMARY KEY, name VARCHAR(255), url TEXT)",
    },
    Script {
        version: 20220601000005,
        name: "add_pull_requests",
        sql: "CREATE TABLE pull_requests (id VARCHAR(255) PRIMARY KEY, base_repo_id VARCHAR(255), title TEXT, status VARCHAR(100))",
    },
    Script {
        version: 20230322000010,
        name: "add_connection_proxy",
        sql: "ALTER TABLE _tool_github_connections ADD COLUMN proxy VARCHAR(255) NULL",
    },
    Script {
        version: 20231012000001,
        name: "add_repo_language",
        sql: "ALTER TABLE repos ADD COLUMN language VARCHAR(100) NULL",
    },
    Script {
        version: 20240607000041,
        name: "modify_pr_assignees_and_reviewers_id",
        sql: "ALTER TABLE pull_requests ADD COLUMN assignee_id VARCHAR(255) NULL",
    },
    Script {
        version: 20241010000001,
        name: "add_pr_merged_date",
        sql: "ALTER TABLE pull_requests ADD COLUMN merged_date DATETIME NULL",
    },
];

/// A simulated release: its tag and the newest script it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Release {
    /// Tag, e.g. `v1.0.1`.
    pub tag: &'static str,
    /// Newest script version carried.
    pub newest_script: u64,
    /// Whether it reads `ENCRYPTION_SECRET` (≥ v0.18) rather than `ENCODE_KEY`.
    pub encryption_secret: bool,
}

/// The simulated releases.
pub const RELEASES: &[Release] = &[
    Release {
        tag: "v0.17.0",
        newest_script: 20230322000010,
        encryption_secret: false,
    },
    Release {
        tag: "v0.18.0",
        newest_script: 20231012000001,
        encryption_secret: true,
    },
    Release {
        tag: "v1.0.0",
        newest_script: 20240607000041,
        encryption_secret: true,
    },
    Release {
        tag: "v1.0.1",
        newest_script: 20241010000001,
        encryption_secret: true,
    },
];

/// The release with that tag (a leading `v` is optional).
pub fn find(tag: &str) -> Option<Release> {
    let wanted = if tag.starts_with('v') {
        tag.to_string()
    } else {
        format!("v{tag}")
    };
    RELEASES.iter().copied().find(|r| r.tag == wanted)
}

impl Release {
    /// The scripts it carries, in order.
    pub fn scripts(&self) -> impl Iterator<Item = &'static Script> + '_ {
        SCRIPTS
            .iter()
            .filter(move |s| s.version <= self.newest_script)
    }
}
