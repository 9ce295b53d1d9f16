//! The DevLake releases this adapter knows, as data: each release and the newest framework
//! migration script it ships, which is what `_devlake_migration_history` records last for
//! rows with `comment = 'Framework'` once that release has migrated (product-facts §4.4).
//!
//! Read from apache/incubator-devlake at each release tag: the largest `Version()` among the
//! framework scripts, `backend/core/models/migrationscripts/*.go` (`models/migrationscripts/`
//! before v0.16.0), registered with the comment "Framework" (`backend/server/services/init.go`
//! `migrator.Register(migrationscripts.All(), "Framework")@v1.0.3`). Three framework scripts
//! carry versions that are not their dates, and are left out of both sides of every comparison
//! ([`MISNUMBERED`]).

use semver::Version;
use upshift_adapter_sdk::versions;

/// Framework script versions that are not their dates: `20222123191424`
/// (`20221109_rename_project_metrics.go`, month 21, every release since v0.15.0), and v1.0.0's
/// `20250531000041` and `20250607000041` (`20240531_add_pr_assignees_and_reviewers.go`,
/// `20240607_modify_pr_assignees_and_reviewers_id.go`), which v1.0.1 renumbers to
/// `20240531000041`/`20240607000041` and whose history rows it deletes.
pub const MISNUMBERED: &[u64] = &[20222123191424, 20250531000041, 20250607000041];

/// Release tag → newest framework script version (leaving out [`MISNUMBERED`]), oldest first.
pub const RELEASES: &[((u64, u64, u64), u64)] = &[
    ((0, 10, 0), 20220406212344),
    ((0, 10, 1), 20220406212344),
    ((0, 11, 0), 20220614091600),
    ((0, 12, 0), 20220727165805),
    ((0, 12, 1), 20220801162735),
    ((0, 13, 0), 20220818232735),
    ((0, 14, 0), 20220929145125),
    ((0, 14, 1), 20220929145125),
    ((0, 14, 2), 20220929145125),
    ((0, 14, 3), 20220929145125),
    ((0, 14, 4), 20220929145125),
    ((0, 14, 5), 20220929145125),
    ((0, 14, 6), 20220929145125),
    ((0, 14, 7), 20220929145125),
    ((0, 14, 8), 20220929145125),
    ((0, 15, 0), 20221230162121),
    ((0, 16, 0), 20230301000082),
    ((0, 17, 0), 20230426150702),
    ((0, 18, 0), 20230517162121),
    ((0, 19, 0), 20230822145125),
    ((0, 20, 0), 20240117142100),
    ((0, 21, 0), 20240308142101),
    ((1, 0, 0), 20240523194205),
    ((1, 0, 1), 20240813160242),
    ((1, 0, 2), 20250527000000),
    ((1, 0, 3), 20260317000000),
];

fn version(&(major, minor, patch): &(u64, u64, u64)) -> Version {
    Version::new(major, minor, patch)
}

/// A DevLake tag, normalised once: a leading `v`, a `@<sha>` suffix and build metadata
/// dropped. `None` when the text is not a version.
pub fn release(text: &str) -> Option<Version> {
    versions::release(text.split('@').next().unwrap_or(text))
}

/// The newest framework script `release` ships, when the catalog knows the release (a
/// pre-release such as `v1.0.3-beta10` is not known).
pub fn newest_script(release: &Version) -> Option<u64> {
    if !release.pre.is_empty() {
        return None;
    }
    let bare = Version::new(release.major, release.minor, release.patch);
    RELEASES
        .iter()
        .find(|(r, _)| version(r) == bare)
        .map(|&(_, script)| script)
}

/// Whether the catalog knows `release`.
pub fn knows(release: &Version) -> bool {
    newest_script(release).is_some()
}

/// The oldest known release whose newest framework script is `script` or later: the oldest
/// release that can have written it.
pub fn first_release_with(script: u64) -> Option<Version> {
    RELEASES
        .iter()
        .find(|&&(_, s)| s >= script)
        .map(|(r, _)| version(r))
}

/// "the nearest known releases are v1.0.1 and v1.0.2" for a refusal or a note.
pub fn describe_nearest(release: &Version) -> String {
    let known = RELEASES.iter().map(|(r, _)| version(r));
    versions::describe_nearest(versions::nearest(known, release), "v")
}

/// The catalog's range, oldest and newest.
pub fn range() -> (Version, Version) {
    let first = RELEASES
        .first()
        .map_or(Version::new(0, 0, 0), |(r, _)| version(r));
    let last = RELEASES
        .last()
        .map_or(Version::new(0, 0, 0), |(r, _)| version(r));
    (first, last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).expect("version")
    }

    #[test]
    fn ordered_and_normalised() {
        for pair in RELEASES.windows(2) {
            assert!(version(&pair[0].0) < version(&pair[1].0), "{pair:?}");
        }
        assert_eq!(release("v1.0.1@abc123"), Some(v("1.0.1")));
        assert_eq!(release("1.0.1+x"), Some(v("1.0.1")));
        assert_eq!(newest_script(&v("1.0.1")), Some(20240813160242));
        assert_eq!(newest_script(&v("1.0.3-beta10")), None);
        assert_eq!(first_release_with(20240813160242), Some(v("1.0.1")));
        assert_eq!(first_release_with(20240523194205), Some(v("1.0.0")));
        assert_eq!(first_release_with(20990101000000), None);
        assert!(describe_nearest(&v("1.0.9")).contains("v1.0.3"));
    }

    #[test]
    fn the_manifest_shows_the_catalogs_first_and_last_release() {
        let (first, last) = range();
        let shown = format!("catalog = \">={first}, <={last}\"");
        assert!(
            crate::__UPSHIFT_MANIFEST_TOML.contains(&shown),
            "the manifest's `catalog` must read {shown}"
        );
    }
}
