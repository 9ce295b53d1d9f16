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

/// True when `v` lies in the inclusive range `[low, high]`.
pub fn within(v: &Version, low: &Version, high: &Version) -> bool {
    v >= low && v <= high
}

#[cfg(test)]
mod tests {
    use super::*;

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
