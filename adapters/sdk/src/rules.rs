//! The shape every product's rule table shares: a refusal with the versions to pass through,
//! the version pair parsed or refused, and the generic rules (already there, downgrade).

use semver::Version;

use crate::{Refusal, refuse, versions};

/// A rule that says no (converted to the contract's [`Refusal`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// Rule id, e.g. `downgrade`.
    pub rule: &'static str,
    /// Why, in the product's terms.
    pub reason: String,
    /// Versions to go through, ending with the target (empty: no path).
    pub path: Vec<Version>,
    /// What to do.
    pub advice: String,
}

impl Refused {
    /// A refusal with no way through.
    pub fn new(rule: &'static str, reason: impl Into<String>, advice: impl Into<String>) -> Self {
        Refused {
            rule,
            reason: reason.into(),
            path: Vec::new(),
            advice: advice.into(),
        }
    }

    /// The same refusal with versions to upgrade through.
    pub fn via(mut self, path: Vec<Version>) -> Self {
        self.path = path;
        self
    }
}

impl From<Refused> for Refusal {
    fn from(r: Refused) -> Refusal {
        let path: Vec<String> = r.path.iter().map(ToString::to_string).collect();
        refuse(r.rule, r.reason, &path, r.advice)
    }
}

/// A version that does not parse, as a refusal.
pub fn unparseable(product: &str, what: &str, text: &str, example: &str) -> Refusal {
    refuse(
        "unparseable-version",
        format!("{what} `{text}` is not a {product} version"),
        &[],
        format!("use a version such as {example}"),
    )
}

/// Parse the current and target versions, or refuse naming the one that does not parse.
pub fn parse_pair(
    product: &str,
    current: &str,
    target: &str,
    example: &str,
) -> Result<(Version, Version), Refusal> {
    let from = versions::parse(current)
        .ok_or_else(|| unparseable(product, "the current version", current, example))?;
    let to = versions::parse(target)
        .ok_or_else(|| unparseable(product, "the target", target, example))?;
    Ok((from, to))
}

/// `already-at-target` when the versions are equal.
pub fn not_already_there(current: &Version, target: &Version) -> Result<(), Refused> {
    if current == target {
        return Err(Refused::new(
            "already-at-target",
            format!("the instance already runs {current}"),
            "nothing to do",
        ));
    }
    Ok(())
}

/// `unknown-major` when the target's major is newer than the adapter knows.
pub fn known_major(product: &str, target: &Version, newest: u64) -> Result<(), Refused> {
    if target.major > newest {
        return Err(Refused::new(
            "unknown-major",
            format!(
                "this adapter knows {product} up to {newest}.x; {target} may need steps it does not encode"
            ),
            "use an adapter release that supports the new major",
        ));
    }
    Ok(())
}

/// The numeric `major.minor[.patch]` of a version with a suffix (`2.0.0-baseline`,
/// `1.1.0-extension`, `v1.0.1@abc`); `None` when there is none. A bare number (OpenMetadata's
/// Flyway rows `000`, `001`) is not a product version.
pub fn numeric(text: &str) -> Option<Version> {
    let core: String = text
        .trim()
        .trim_start_matches(['v', 'V'])
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let core = core.trim_end_matches('.');
    if !core.contains('.') {
        return None;
    }
    versions::parse(core)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_parts_of_suffixed_versions() {
        assert_eq!(numeric("2.0.0-baseline"), Some(Version::new(2, 0, 0)));
        assert_eq!(numeric("v1.0.1@sim"), Some(Version::new(1, 0, 1)));
        assert_eq!(numeric("1.1.0-extension"), Some(Version::new(1, 1, 0)));
        assert_eq!(numeric("V3.2"), Some(Version::new(3, 2, 0)));
        assert_eq!(numeric("abc"), None);
        assert_eq!(numeric("002"), None);
    }

    #[test]
    fn pair_and_generic_rules() {
        let (a, b) = parse_pair("KWDB", "2.2.0", "V3.0.0", "3.0.0").expect("parses");
        assert_eq!((a.major, b.major), (2, 3));
        let r = parse_pair("KWDB", "two", "3.0.0", "3.0.0").expect_err("refused");
        assert_eq!(r.rule, "unparseable-version");
        assert!(r.reason.contains("current version"));
        assert_eq!(
            not_already_there(&a, &a).map_err(|r| r.rule),
            Err("already-at-target")
        );
        assert_eq!(
            known_major("KWDB", &b, 2).map_err(|r| r.rule),
            Err("unknown-major")
        );
        assert!(known_major("KWDB", &b, 3).is_ok());
    }
}
