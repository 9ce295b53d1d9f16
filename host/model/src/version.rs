//! The product version grammar: every version that reaches a service backend (a switch, an image
//! tag, a command line, a Compose file) or a plan is checked here first.
//!
//! A product version is a semantic version (`1.2.3`, `1.2.3-rc.1`, `1.2.3+build.5`), optionally
//! with the one leading `v` some products put on their tags (`v1.2.3`). Nothing else: so a
//! version can never carry `/`, `..`, whitespace, shell syntax or control characters into a path,
//! a command or an image reference.

/// The longest version accepted (an image tag is at most 128 characters).
pub const MAX_VERSION_LEN: usize = 128;

/// Why a text is not a product version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{shown}` is not a product version ({why}); a version is semver such as `1.2.3`, `1.2.3-rc.1` or `v1.2.3`"
)]
pub struct VersionError {
    /// The offending text, with control characters escaped and cut to 80 characters.
    pub shown: String,
    /// What is wrong with it.
    pub why: String,
}

/// Check `version` against the product version grammar; returns the semver it denotes.
pub fn check(version: &str) -> Result<semver::Version, VersionError> {
    let refuse = |why: String| VersionError {
        shown: version.escape_debug().take(80).collect(),
        why,
    };
    if version.len() > MAX_VERSION_LEN {
        return Err(refuse(format!(
            "{} bytes, more than {MAX_VERSION_LEN}",
            version.len()
        )));
    }
    let bare = version.strip_prefix('v').unwrap_or(version);
    semver::Version::parse(bare).map_err(|e| refuse(e.to_string()))
}

/// Whether `version` is a product version.
pub fn is_valid(version: &str) -> bool {
    check(version).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn semver_with_an_optional_v_only() {
        for good in [
            "1.2.3",
            "v1.2.3",
            "1.2.3-rc.1",
            "0.0.0",
            "3.11.1+build.7",
            "2.0.0-cheap",
        ] {
            assert!(is_valid(good), "{good}");
        }
        for bad in [
            "",
            "30",
            "v",
            "vv1.2.3",
            "V1.2.3",
            " 1.2.3",
            "1.2.3\n",
            "1.2.3 ; touch x",
            "$(touch x)",
            "`id`",
            "1.0.0/../..",
            "../../../../bin/sh -c \"touch x\" x",
            "..",
            "1.2.3-..",
            "1.2.3-a/b",
            "1.2.3\0",
            "1.2.3\u{1b}[2J",
            "01.2.3",
            "1.2",
        ] {
            let err = check(bad).expect_err(bad);
            assert!(!err.to_string().contains('\n'), "{err}");
        }
        assert!(!is_valid(&format!("1.2.3-{}", "a".repeat(130))));
    }
}
