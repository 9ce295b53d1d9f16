//! The OpenMetadata releases this adapter knows, as data, and what their databases record.
//!
//! OpenMetadata names each native migration after the release that ships it
//! (`bootstrap/sql/migrations/native/<x.y.z>/{mysql,postgres}/…`, with the Java step
//! `org.openmetadata.service.migration.{mysql,postgres}.v<xyz>.Migration`), and `migrate` records
//! that version in `SERVER_CHANGE_LOG` (product-facts §3.2, `MigrationWorkflow.java@8a89220398`).
//! So a database whose change log reaches `x.y.z` was migrated by release `x.y.z` or a newer one,
//! never by an older one.
//!
//! The releases below are the versions that have a native migration upstream, read from the
//! open-metadata/OpenMetadata tree (the `native/` directories listed at commits such as
//! `4a4ca905`, `dd67fb59`, `4d497f44`, and the Java steps under
//! `openmetadata-service/src/main/java/org/openmetadata/service/migration/postgres/` up to
//! `v210@7de3e377`). Releases that ship no migration of their own (and 2.2.0, still in
//! development there) are not listed: the adapter cannot tell them from releases that do not
//! exist, so planning to one needs `--allow-unknown`.

use semver::Version;
use upshift_adapter_sdk::versions;

/// Versions with a native migration upstream, oldest first: each is a release, and the newest
/// migration version that release records.
pub const RELEASES: &[(u64, u64, u64)] = &[
    (1, 1, 0),
    (1, 1, 1),
    (1, 1, 2),
    (1, 1, 3),
    (1, 1, 5),
    (1, 2, 0),
    (1, 3, 0),
    (1, 3, 1),
    (1, 3, 2),
    (1, 3, 3),
    (1, 4, 0),
    (1, 4, 1),
    (1, 5, 0),
    (1, 5, 3),
    (1, 5, 4),
    (1, 5, 5),
    (1, 5, 7),
    (1, 5, 9),
    (1, 6, 0),
    (1, 7, 0),
    (1, 7, 1),
    (1, 7, 2),
    (1, 8, 0),
    (1, 8, 4),
    (1, 8, 5),
    (1, 9, 0),
    (1, 9, 2),
    (1, 9, 3),
    (1, 9, 4),
    (1, 9, 5),
    (1, 9, 6),
    (1, 9, 8),
    (1, 9, 9),
    (1, 9, 10),
    (1, 9, 11),
    (1, 9, 12),
    (1, 10, 0),
    (1, 10, 1),
    (1, 10, 2),
    (1, 10, 3),
    (1, 10, 4),
    (1, 10, 5),
    (1, 10, 6),
    (1, 10, 7),
    (1, 10, 8),
    (1, 10, 9),
    (1, 11, 0),
    (1, 11, 1),
    (1, 11, 2),
    (1, 11, 3),
    (1, 11, 4),
    (1, 11, 5),
    (1, 11, 6),
    (1, 11, 7),
    (1, 11, 8),
    (1, 11, 9),
    (1, 11, 11),
    (1, 11, 12),
    (1, 11, 13),
    (1, 12, 0),
    (1, 12, 1),
    (1, 12, 2),
    (1, 12, 3),
    (1, 12, 4),
    (1, 12, 5),
    (1, 12, 6),
    (1, 12, 7),
    (1, 12, 8),
    (1, 12, 9),
    (1, 12, 10),
    (1, 12, 11),
    (1, 12, 12),
    (1, 12, 13),
    (1, 13, 0),
    (1, 13, 1),
    (1, 13, 2),
    (1, 13, 3),
    (1, 13, 4),
    (1, 13, 5),
    (1, 13, 6),
    (2, 0, 0),
    (2, 0, 1),
    (2, 0, 2),
    (2, 0, 3),
    (2, 0, 4),
    (2, 0, 5),
    (2, 1, 0),
];

fn version(&(major, minor, patch): &(u64, u64, u64)) -> Version {
    Version::new(major, minor, patch)
}

/// A release, normalised once: a leading `v` dropped, missing parts zero, build metadata
/// dropped. `None` when the text is not a version.
pub fn release(text: &str) -> Option<Version> {
    versions::release(text)
}

/// Whether the catalog knows `release` (build metadata ignored).
pub fn knows(release: &Version) -> bool {
    let bare = Version::new(release.major, release.minor, release.patch);
    release.pre.is_empty() && RELEASES.iter().any(|r| version(r) == bare)
}

/// The nearest known releases below and above `release`.
pub fn nearest(release: &Version) -> (Option<Version>, Option<Version>) {
    versions::nearest(RELEASES.iter().map(version), release)
}

/// The catalog's range, oldest and newest.
pub fn range() -> (Version, Version) {
    let first = RELEASES.first().map_or(Version::new(0, 0, 0), version);
    let last = RELEASES.last().map_or(Version::new(0, 0, 0), version);
    (first, last)
}

/// "nearest known releases: 1.9.4 and 1.9.5" for a refusal or a note.
pub fn describe_nearest(release: &Version) -> String {
    versions::describe_nearest(nearest(release), "")
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
            assert!(version(&pair[0]) < version(&pair[1]), "{pair:?}");
        }
        assert_eq!(release("v1.9.4"), Some(v("1.9.4")));
        assert_eq!(release("1.9.4+build.7"), Some(v("1.9.4")));
        assert!(knows(&v("1.9.4")));
        assert!(knows(&v("2.0.3")));
        assert!(!knows(&v("1.9.7")));
        assert!(!knows(&v("2.0.3-rc1")));
        assert_eq!(nearest(&v("1.9.7")), (Some(v("1.9.6")), Some(v("1.9.8"))));
        assert_eq!(nearest(&v("2.9.0")), (Some(v("2.1.0")), None));
        assert_eq!(range(), (v("1.1.0"), v("2.1.0")));
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
