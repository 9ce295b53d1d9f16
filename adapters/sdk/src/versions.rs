//! Version parsing shared by adapters: products write versions in many shapes.

use semver::Version;

/// Parse a product version leniently: a leading `v`/`V` is dropped and missing minor or patch
/// parts are taken as zero (`v3.2` → `3.2.0`). Returns `None` for anything else.
pub fn parse(text: &str) -> Option<Version> {
    let trimmed = text.trim();
    let bare = trimmed
        .strip_prefix('v')
        .or_else(|| trimmed.strip_prefix('V'))
        .unwrap_or(trimmed);
    if let Ok(v) = Version::parse(bare) {
        return Some(v);
    }
    let mut parts = bare.splitn(3, '.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next().map_or(Some(0), |p| p.parse().ok())?;
    let patch = parts.next().map_or(Some(0), |p| p.parse().ok())?;
    Some(Version::new(major, minor, patch))
}

/// A release as a catalog compares it, normalised once: [`parse`]d (a leading `v`/`V` dropped,
/// missing parts zero) and build metadata (`+abc`) dropped. `None` when the text is not a version.
pub fn release(text: &str) -> Option<Version> {
    let mut parsed = parse(text)?;
    parsed.build = semver::BuildMetadata::EMPTY;
    Some(parsed)
}

/// The releases of `known` nearest `target`: the newest one below it and the oldest one above it.
pub fn nearest(
    known: impl IntoIterator<Item = Version>,
    target: &Version,
) -> (Option<Version>, Option<Version>) {
    let (mut below, mut above): (Option<Version>, Option<Version>) = (None, None);
    for v in known {
        if v < *target && below.as_ref().is_none_or(|b| v > *b) {
            below = Some(v);
        } else if v > *target && above.as_ref().is_none_or(|a| v < *a) {
            above = Some(v);
        }
    }
    (below, above)
}

/// How a refusal or a note names [`nearest`]'s answer, each version written after `prefix`
/// (`v` for products whose tags carry it): "the nearest known releases are 1.9.4 and 1.9.6".
pub fn describe_nearest(nearest: (Option<Version>, Option<Version>), prefix: &str) -> String {
    match nearest {
        (Some(b), Some(a)) => format!("the nearest known releases are {prefix}{b} and {prefix}{a}"),
        (Some(b), None) => format!("the newest known release is {prefix}{b}"),
        (None, Some(a)) => format!("the oldest known release is {prefix}{a}"),
        (None, None) => "the catalog is empty".into(),
    }
}

/// True when `v` lies in the inclusive range `[low, high]`.
pub fn within(v: &Version, low: &Version, high: &Version) -> bool {
    v >= low && v <= high
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_normalise_and_the_nearest_known_are_found_on_both_sides() {
        let v = |s: &str| Version::parse(s).expect("version");
        assert_eq!(release("v1.0.1+build.7"), Some(v("1.0.1")));
        let known = || ["1.0.0", "1.2.0", "1.1.0"].map(v);
        assert_eq!(
            nearest(known(), &v("1.1.5")),
            (Some(v("1.1.0")), Some(v("1.2.0")))
        );
        assert_eq!(
            nearest(known(), &v("1.1.0")),
            (Some(v("1.0.0")), Some(v("1.2.0")))
        );
        assert_eq!(nearest(known(), &v("9.0.0")), (Some(v("1.2.0")), None));
        assert_eq!(
            describe_nearest(nearest(known(), &v("0.1.0")), "v"),
            "the oldest known release is v1.0.0"
        );
    }

    #[test]
    fn parses_product_shapes() {
        assert_eq!(parse("3.14.2"), Some(Version::new(3, 14, 2)));
        assert_eq!(parse("v1.0.3"), Some(Version::new(1, 0, 3)));
        assert_eq!(parse("V3.2"), Some(Version::new(3, 2, 0)));
        assert_eq!(parse("3"), Some(Version::new(3, 0, 0)));
        assert_eq!(parse("three"), None);
        assert_eq!(parse("3.x"), None);
    }
}
