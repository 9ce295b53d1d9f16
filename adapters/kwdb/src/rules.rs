//! KWDB's upgrade paths and refusals as a table (product-facts §2.3, §2.4 and "What an adapter
//! must encode → KWDB"). Pure functions over versions and facts: unit-tested natively, and the
//! same for offline and live plans.

use semver::Version;
use upshift_adapter_sdk::rules::{Refused, known_major, not_already_there};

/// The newest major this adapter knows.
pub const KNOWN_MAJOR: u64 = 3;

/// How an allowed upgrade runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Offline, in place: stop, copy the data directory, new image, start.
    InPlace,
    /// Never in place: a new instance of the target, then EXPORT from the old and IMPORT.
    ExportImport,
}

fn v(major: u64, minor: u64, patch: u64) -> Version {
    Version::new(major, minor, patch)
}

/// The in-place column of §2.3's table: may `from` be upgraded to `to` in place?
pub fn in_place(from: &Version, to: &Version) -> bool {
    if from.major != to.major {
        return false;
    }
    let from_core = v(from.major, from.minor, from.patch);
    match (to.major, to.minor, to.patch) {
        // 2.1.0: only from 2.0.4 (standalone, offline).
        (2, 1, 0) => from_core == v(2, 0, 4),
        // 2.2.0: from 2.1.0.
        (2, 2, 0) => from_core == v(2, 1, 0),
        // 2.2.1 / 2.2.2: from 2.2.x; 2.0.x and 2.1.0 need export/import.
        (2, 2, _) => from.minor == 2,
        // 3.0.0: nothing upgrades to it in place.
        (3, 0, 0) => false,
        // 3.1.0: from 3.0.0.
        (3, 1, 0) => from_core == v(3, 0, 0),
        // 3.2.x: from 3.0.0, 3.1.0 and 3.2.0.
        (3, 2, _) => [v(3, 0, 0), v(3, 1, 0), v(3, 2, 0)].contains(&from_core),
        // Other patch releases of the same minor.
        _ => from.minor == to.minor,
    }
}

/// Whether `meta.sql` must lose its `PARTITION INTERVAL` clauses before import (3.1.0+
/// deprecated the syntax; an export from 2.x carries it, §2.2).
pub fn strips_partition_interval(target: &Version) -> bool {
    *target >= v(3, 1, 0)
}

/// Facts from the live instance; `None` when unknown (offline plans).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// `ranges.unavailable` summed over stores.
    pub unavailable_ranges: Option<u64>,
    /// `ranges.underreplicated` summed over stores.
    pub underreplicated_ranges: Option<u64>,
    /// Jobs (`SHOW JOBS`) still running.
    pub running_jobs: Option<u64>,
    /// Whether a new instance is bound as `next` / `next-sql`.
    pub next_bound: Option<bool>,
    /// User databases already in the `next` instance.
    pub next_user_databases: Option<u64>,
}

/// Decide whether and how `current → target` may run.
pub fn check(current: &Version, target: &Version, facts: &Facts) -> Result<Method, Refused> {
    not_already_there(current, target)?;
    if target < current {
        return Err(Refused::new(
            "downgrade",
            format!(
                "UPGRADE ERROR:The requested upgrade version is older than the current installed version.(current:{current} new_version:{target}); after an upgrade KWDB cannot simply be downgraded (§2.3, §2.4)"
            ),
            "to go back: reinstall the old version and restore the pre-upgrade data-directory copy or re-import the pre-upgrade export",
        ));
    }
    if current.pre.is_empty() && !target.pre.is_empty() {
        return Err(Refused::new(
            "release-to-prerelease",
            format!(
                "UPGRADE ERROR:Official version can not upgrade to alpha/beta ({current} → {target}, §2.4)"
            ),
            "choose an official release",
        ));
    }
    known_major("KWDB", target, KNOWN_MAJOR)?;
    if let Some(n) = facts.unavailable_ranges.filter(|n| *n > 0) {
        return Err(Refused::new(
            "unavailable-ranges",
            format!("{n} range(s) are unavailable (kwdb_internal.kv_store_status)"),
            "bring every node back and wait until no range is unavailable, then plan again",
        ));
    }
    if let Some(n) = facts.underreplicated_ranges.filter(|n| *n > 0) {
        return Err(Refused::new(
            "underreplicated-ranges",
            format!("{n} range(s) are under-replicated (kwdb_internal.kv_store_status)"),
            "wait until replication catches up, then plan again",
        ));
    }
    if let Some(n) = facts.running_jobs.filter(|n| *n > 0) {
        return Err(Refused::new(
            "jobs-running",
            format!(
                "{n} job(s) are running (SHOW JOBS): schema changes or imports must finish first"
            ),
            "wait for them (or cancel them), then plan again",
        ));
    }
    if in_place(current, target) {
        return Ok(Method::InPlace);
    }
    if facts.next_bound == Some(false) {
        return Err(Refused::new(
            "needs-new-instance",
            format!(
                "{current} → {target} is never done in place ({}); it needs a new {target} instance to import into (§2.2, §2.3)",
                if current.major < target.major {
                    "the storage format changed in 3.0"
                } else {
                    "the release notes list export/import for this path"
                }
            ),
            "deploy an empty instance for the target (its own store, sharing the extern directory), bind it as `next` (service) and `next-sql` (db), then plan again",
        ));
    }
    if let Some(n) = facts.next_user_databases.filter(|n| *n > 0) {
        return Err(Refused::new(
            "next-not-empty",
            format!(
                "the `next` instance already holds {n} user database(s); importing could mix data"
            ),
            "bind an empty instance as `next`",
        ));
    }
    Ok(Method::ExportImport)
}

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
        check(&p(from), &p(to), f).map_err(|r| r.rule)
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
