//! The KWDB releases this adapter knows, as data: each release and the releases it upgrades
//! from in place (offline for standalone nodes). Everything else to a known release goes by
//! EXPORT / IMPORT into a new instance.
//!
//! Sources (docs/products/kwdb.md "Facts and sources"): the release tags of KWDB/KWDB
//! (`V2.0.4` … `V3.2.1`) and the "Upgrade Notes" of each release's notes in KWDB/docs
//! (`en/release-notes/<release>.md@master`, 3.2.0's at branch `3.2.1`). A KWDB instance records
//! no schema version of its own: `SELECT version()` reports the release of the running binary
//! (`build.Info.Short()`, `kwbase/pkg/build/info.go@V3.2.1`), so the release *is* what the
//! database says.

use semver::Version;
use upshift_adapter_sdk::versions;

/// A release as `(major, minor, patch)`.
pub type Triple = (u64, u64, u64);

/// One known release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Known {
    /// The release.
    pub release: Triple,
    /// The releases its notes list as upgrading to it in place (offline, or online for
    /// multi-replica 2.2.x); every other older release needs export/import.
    pub in_place_from: &'static [Triple],
}

const fn known(release: Triple, in_place_from: &'static [Triple]) -> Known {
    Known {
        release,
        in_place_from,
    }
}

/// The known releases, oldest first. Not here: `V2.0.3.2` (a four-part tag, not a version this
/// adapter can compare) and `V3.0.1` (a code tag with no release notes, so no documented
/// upgrade path; `--allow-unknown` plans it by the same-minor default).
pub const RELEASES: &[Known] = &[
    // 2.0.4 notes: 2.0 standalone offline; the only older 2.0 tag is V2.0.3.2.
    known((2, 0, 4), &[]),
    // 2.1.0 notes: 2.0.4 standalone offline; 2.0.3.2/2.0.4 clusters export/import.
    known((2, 1, 0), &[(2, 0, 4)]),
    // 2.2.0 notes: from 2.1.0 (online multi-replica, offline otherwise); 2.0.x export/import.
    known((2, 2, 0), &[(2, 1, 0)]),
    // 2.2.1 notes: from 2.2.0; 2.0.x and 2.1.0 export/import.
    known((2, 2, 1), &[(2, 2, 0)]),
    // 2.2.2 notes: from 2.2.x; 2.0.x and 2.1.0 export/import.
    known((2, 2, 2), &[(2, 2, 0), (2, 2, 1)]),
    // 3.0.0 notes: from 2.x by export/import only.
    known((3, 0, 0), &[]),
    // 3.1.0 notes: offline from 3.0.0; 2.x export/import.
    known((3, 1, 0), &[(3, 0, 0)]),
    // 3.2.0 notes: offline from 3.0.0 and 3.1.0; 2.x export/import.
    known((3, 2, 0), &[(3, 0, 0), (3, 1, 0)]),
    // 3.2.1 notes: offline from 3.0.0, 3.1.0 and 3.2.0; 2.x export/import.
    known((3, 2, 1), &[(3, 0, 0), (3, 1, 0), (3, 2, 0)]),
];

fn version((major, minor, patch): Triple) -> Version {
    Version::new(major, minor, patch)
}

impl Known {
    /// The release as a version.
    pub fn release(&self) -> Version {
        version(self.release)
    }
}

/// A KWDB release, normalised once: a leading `V`/`v` dropped, missing parts zero, build
/// metadata dropped. `None` when the text is not a version.
pub fn release(text: &str) -> Option<Version> {
    versions::release(text)
}

/// The catalog's entry for `release` (a pre-release is not the release).
pub fn find(release: &Version) -> Option<&'static Known> {
    if !release.pre.is_empty() {
        return None;
    }
    RELEASES
        .iter()
        .find(|k| k.release == (release.major, release.minor, release.patch))
}

/// The known releases nearest `release`: the newest older one and the oldest newer one.
pub fn nearest(release: &Version) -> Vec<Version> {
    let (older, newer) = versions::nearest(RELEASES.iter().map(Known::release), release);
    older.into_iter().chain(newer).collect()
}

/// The catalog's range, `oldest–newest`.
pub fn range() -> String {
    match (RELEASES.first(), RELEASES.last()) {
        (Some(a), Some(b)) => format!("{}–{}", a.release(), b.release()),
        _ => "none".into(),
    }
}

/// May `from` be upgraded to `to` in place? For a known target, when its notes list `from`;
/// for a target the catalog does not know (planned with `--allow-unknown`), only another patch
/// of the same `<major>.<minor>`.
pub fn in_place(from: &Version, to: &Version) -> bool {
    if from.major != to.major {
        return false;
    }
    let from_core = (from.major, from.minor, from.patch);
    match find(to) {
        Some(k) => k.in_place_from.contains(&from_core),
        None => from.minor == to.minor,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ver(s: &str) -> Version {
        Version::parse(s).expect("version")
    }

    #[test]
    fn the_table_is_ordered_and_paths_go_up_within_a_major() {
        for pair in RELEASES.windows(2) {
            assert!(pair[0].release() < pair[1].release(), "{pair:?}");
        }
        for k in RELEASES {
            for from in k.in_place_from {
                assert!(version(*from) < k.release(), "{k:?}");
                assert_eq!(from.0, k.release.0, "{k:?}: in place never crosses a major");
                assert!(find(&version(*from)).is_some(), "{k:?}: {from:?} is known");
            }
        }
    }

    #[test]
    fn unknown_releases_name_their_neighbours() {
        assert!(find(&ver("3.2.1")).is_some());
        assert!(find(&ver("3.0.1")).is_none());
        assert!(find(&ver("3.2.1-beta1")).is_none());
        assert_eq!(nearest(&ver("3.99.0")), [ver("3.2.1")]);
        assert_eq!(nearest(&ver("3.0.1")), [ver("3.0.0"), ver("3.1.0")]);
        assert_eq!(nearest(&ver("1.0.0")), [ver("2.0.4")]);
        assert_eq!(range(), "2.0.4–3.2.1");
    }

    #[test]
    fn releases_are_normalised_once() {
        assert_eq!(release("V3.2.1"), Some(ver("3.2.1")));
        assert_eq!(release("v3.1"), Some(ver("3.1.0")));
        assert_eq!(release("3.1.0+build7"), Some(ver("3.1.0")));
        assert_eq!(release("latest"), None);
    }

    #[test]
    fn unknown_targets_stay_in_place_only_within_a_minor() {
        assert!(in_place(&ver("3.0.0"), &ver("3.0.1")));
        assert!(!in_place(&ver("3.2.1"), &ver("3.3.0")));
        assert!(!in_place(&ver("3.0.1"), &ver("3.1.0")));
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
