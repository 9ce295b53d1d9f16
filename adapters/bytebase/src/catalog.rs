//! The Bytebase releases this adapter knows, as data: each release and the newest metadata
//! schema version it ships.
//!
//! Bytebase's schema version is a migration *file* number, `<major>.<minor>.<NNNN>` from
//! `backend/migrator/migration/<major>.<minor>/<NNNN>##<name>.sql`, unrelated to the release's
//! patch number (release 3.11.1 records schema 3.11.17). Source: product-facts.md §1.5, read on
//! the upstream tags `3.3.1` … `3.21.1` of bytebase/bytebase with
//! `git ls-tree <tag> backend/migrator/migration/` (the newest file of each tag).

use semver::Version;
use upshift_adapter_sdk::versions;

/// One known release and the newest schema file version it ships.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Known {
    /// The release, `(major, minor, patch)`.
    pub release: (u64, u64, u64),
    /// The newest schema file version in its tree, `(major, minor, file number)`.
    pub schema: (u64, u64, u64),
}

const fn known(release: (u64, u64, u64), schema: (u64, u64, u64)) -> Known {
    Known { release, schema }
}

/// Release → newest schema file version, oldest first (product-facts §1.5).
pub const RELEASES: &[Known] = &[
    known((3, 3, 1), (3, 3, 8)),
    known((3, 4, 1), (3, 4, 18)),
    known((3, 5, 0), (3, 5, 15)),
    known((3, 5, 1), (3, 5, 16)),
    known((3, 5, 2), (3, 5, 17)),
    known((3, 6, 0), (3, 6, 4)),
    known((3, 6, 1), (3, 6, 4)),
    known((3, 6, 2), (3, 6, 5)),
    known((3, 7, 0), (3, 7, 21)),
    known((3, 7, 1), (3, 7, 26)),
    known((3, 8, 0), (3, 8, 2)),
    known((3, 8, 1), (3, 8, 4)),
    known((3, 9, 0), (3, 9, 6)),
    known((3, 9, 1), (3, 9, 10)),
    known((3, 9, 2), (3, 9, 10)),
    known((3, 10, 0), (3, 10, 2)),
    known((3, 10, 1), (3, 10, 6)),
    known((3, 11, 0), (3, 11, 11)),
    known((3, 11, 1), (3, 11, 17)),
    known((3, 12, 0), (3, 12, 4)),
    known((3, 12, 1), (3, 12, 5)),
    known((3, 12, 2), (3, 12, 5)),
    known((3, 13, 0), (3, 13, 31)),
    known((3, 13, 1), (3, 13, 31)),
    known((3, 14, 0), (3, 14, 32)),
    known((3, 14, 1), (3, 14, 33)),
    known((3, 15, 0), (3, 15, 10)),
    known((3, 15, 1), (3, 15, 10)),
    known((3, 16, 0), (3, 16, 3)),
    known((3, 16, 1), (3, 16, 4)),
    known((3, 17, 0), (3, 17, 15)),
    known((3, 17, 1), (3, 17, 16)),
    known((3, 18, 0), (3, 18, 0)),
    known((3, 18, 1), (3, 18, 2)),
    known((3, 19, 0), (3, 19, 1)),
    known((3, 19, 1), (3, 19, 1)),
    known((3, 20, 0), (3, 20, 3)),
    known((3, 20, 1), (3, 20, 4)),
    known((3, 21, 0), (3, 21, 4)),
    known((3, 21, 1), (3, 21, 5)),
];

/// The catalog's range as a semver requirement, as the manifest shows it (`upshift adapter
/// inspect`); a unit test keeps it equal to the first and last rows of [`RELEASES`].
pub const RANGE: &str = ">=3.3.1, <=3.21.1";

/// Whether `target` is a release the catalog should know but does not: at or after its oldest
/// release and not one of its rows (3.99.0, or 3.10.7 between rows). Older targets (the 1.x/2.x
/// stepping stones) are judged by the rules alone.
pub fn unknown_target(target: &Version) -> bool {
    let oldest = RELEASES.first().map(Known::release);
    oldest.is_some_and(|oldest| *target >= oldest) && schema_of(target).is_none()
}

/// The known releases nearest `target`: the newest before it and the oldest after it.
pub fn nearest(target: &Version) -> Vec<Version> {
    let (before, after) = versions::nearest(RELEASES.iter().map(Known::release), target);
    before.into_iter().chain(after).collect()
}

fn version((major, minor, patch): (u64, u64, u64)) -> Version {
    Version::new(major, minor, patch)
}

impl Known {
    /// The release as a version.
    pub fn release(&self) -> Version {
        version(self.release)
    }

    /// The schema file version as a version.
    pub fn schema(&self) -> Version {
        version(self.schema)
    }
}

/// A Bytebase release, normalised once: a leading `v` dropped, missing parts zero, build
/// metadata (`+abc`) dropped. `None` when the text is not a version.
pub fn release(text: &str) -> Option<Version> {
    versions::release(text)
}

/// The newest schema file version `release` ships, when the catalog knows the release.
pub fn schema_of(release: &Version) -> Option<Version> {
    RELEASES
        .iter()
        .find(|k| k.release() == *release)
        .map(Known::schema)
}

/// The newest known release older than `release`, with its schema version.
pub fn newest_before(release: &Version) -> Option<Known> {
    RELEASES
        .iter()
        .rev()
        .find(|k| k.release() < *release)
        .copied()
}

/// The release the data of a metadata schema at `schema` belongs to, as a release: the oldest
/// known release of its `<major>.<minor>` line that ships `schema` or a later file (a partly
/// migrated schema belongs to the release that was migrating it); past the line's newest known
/// file, one patch after the line's newest known release; a line the catalog does not know,
/// `<major>.<minor>.0`. Never the schema version itself: that is a file number (§1.5).
pub fn release_for_schema(schema: &Version) -> Version {
    let line: Vec<&Known> = RELEASES
        .iter()
        .filter(|k| minor_line(&k.schema()) == minor_line(schema))
        .collect();
    if let Some(k) = line.iter().find(|k| k.schema() >= *schema) {
        return k.release();
    }
    match line.last() {
        Some(newest) => {
            let mut after = newest.release();
            after.patch += 1;
            after
        }
        None => Version::new(schema.major, schema.minor, 0),
    }
}

/// `<major>.<minor>` of a version, for comparing a schema with a release.
pub fn minor_line(v: &Version) -> (u64, u64) {
    (v.major, v.minor)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ver(s: &str) -> Version {
        Version::parse(s).expect("version")
    }

    #[test]
    fn the_table_is_ordered_and_each_schema_stays_in_its_release_line() {
        for pair in RELEASES.windows(2) {
            assert!(pair[0].release() < pair[1].release(), "{pair:?}");
            assert!(pair[0].schema() <= pair[1].schema(), "{pair:?}");
        }
        for k in RELEASES {
            assert_eq!(minor_line(&k.release()), minor_line(&k.schema()), "{k:?}");
        }
    }

    #[test]
    fn schema_versions_are_file_numbers_not_patches() {
        assert_eq!(schema_of(&ver("3.11.1")), Some(ver("3.11.17")));
        assert_eq!(schema_of(&ver("3.14.0")), Some(ver("3.14.32")));
        assert_eq!(schema_of(&ver("3.10.0")), Some(ver("3.10.2")));
        assert_eq!(schema_of(&ver("3.99.0")), None);
        for (schema, release) in [
            ("3.10.2", "3.10.0"),
            ("3.10.4", "3.10.1"),
            ("3.11.17", "3.11.1"),
            ("3.11.5", "3.11.0"),
            ("3.13.31", "3.13.0"),
            ("3.21.9", "3.21.2"),
            ("3.22.3", "3.22.0"),
            ("2.10.4", "2.10.0"),
        ] {
            assert_eq!(release_for_schema(&ver(schema)), ver(release), "{schema}");
        }
        assert_eq!(
            newest_before(&ver("3.22.0")).map(|k| k.schema()),
            Some(ver("3.21.5"))
        );
    }

    #[test]
    fn the_range_is_the_tables_first_and_last_release() {
        let (first, last) = (
            RELEASES[0].release(),
            RELEASES[RELEASES.len() - 1].release(),
        );
        assert_eq!(RANGE, format!(">={first}, <={last}"));
        assert!(unknown_target(&ver("3.99.0")));
        assert!(unknown_target(&ver("3.10.7")));
        assert!(!unknown_target(&ver("3.11.1")));
        assert!(
            !unknown_target(&ver("2.1.0")),
            "older stones: the rules judge them"
        );
        assert_eq!(nearest(&ver("3.99.0")), [ver("3.21.1")]);
        assert_eq!(nearest(&ver("3.10.7")), [ver("3.10.1"), ver("3.11.0")]);
    }

    #[test]
    fn releases_are_normalised_once() {
        assert_eq!(release("v3.13.0"), Some(ver("3.13.0")));
        assert_eq!(release("3.13.0+abc123"), Some(ver("3.13.0")));
        assert_eq!(release(" V3.13 "), Some(ver("3.13.0")));
        assert_eq!(release("latest"), None);
    }

    #[test]
    fn the_manifest_shows_the_catalogs_first_and_last_release() {
        let (first, last) = (
            RELEASES[0].release(),
            RELEASES[RELEASES.len() - 1].release(),
        );
        let shown = format!("catalog = \">={first}, <={last}\"");
        assert!(
            crate::__UPSHIFT_MANIFEST_TOML.contains(&shown),
            "the manifest's `catalog` must read {shown}"
        );
    }
}
