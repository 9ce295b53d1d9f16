//! DevLake's upgrade rules as a table (product-facts §4 and "What an adapter must encode →
//! Apache DevLake"). Pure functions over versions and detected facts.

use semver::Version;
use upshift_adapter_sdk::rules::{Refused, known_major, not_already_there};

/// The newest major this adapter knows.
pub const KNOWN_MAJOR: u64 = 1;

/// v0.18.0 renamed `ENCODE_KEY` to `ENCRYPTION_SECRET` and stopped generating one (§4.3).
pub fn secret_rename() -> Version {
    Version::new(0, 18, 0)
}

/// Facts from the live instance; `None` when unknown (offline plans).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// The `.env` (or environment) has `ENCRYPTION_SECRET`.
    pub has_encryption_secret: Option<bool>,
    /// The `.env` has the pre-0.18 `ENCODE_KEY`.
    pub has_encode_key: Option<bool>,
    /// A stored connection token decrypts with the secret the new version will read
    /// (`None` when there is no stored token to test with).
    pub secret_decrypts: Option<bool>,
    /// The running version's migrations were confirmed (its `_devlake_locking_history` row
    /// has `succeeded = 1`); `false` while the 428 gate is still waiting.
    pub migration_confirmed: Option<bool>,
    /// The last version whose migrations completed, from `_devlake_locking_history`.
    pub last_migrated: Option<Version>,
}

/// Decide whether `current → target` may run.
pub fn check(current: &Version, target: &Version, facts: &Facts) -> Result<(), Refused> {
    not_already_there(current, target)?;
    if target < current {
        let back_before_confirming = facts.migration_confirmed == Some(false)
            && facts.last_migrated.as_ref().is_some_and(|v| target >= v);
        if !back_before_confirming {
            return Err(Refused::new(
                "downgrade-after-migration",
                format!(
                    "{target} is older than {current}, whose migrations already ran; DevLake's scripts have no `Down`, so an older version cannot run on this database (§4.4, §4.5)"
                ),
                format!(
                    "to go back, restore a backup taken at {target} (`upshift backups`, then `upshift restore`)"
                ),
            ));
        }
    }
    known_major("DevLake", target, KNOWN_MAJOR)?;
    let needs_secret = *target >= secret_rename();
    if needs_secret && facts.has_encryption_secret == Some(false) {
        if facts.has_encode_key == Some(true) {
            return Err(Refused::new(
                "encode-key-not-carried-over",
                format!(
                    "{target} reads ENCRYPTION_SECRET (≥ v0.18) and the .env only has the old ENCODE_KEY; without it DevLake panics at start, and a new secret would make every stored token undecryptable (§4.3)"
                ),
                "add ENCRYPTION_SECRET=<the ENCODE_KEY value> to the .env (keep ENCODE_KEY), then plan again",
            ));
        }
        return Err(Refused::new(
            "secret-missing",
            "no ENCRYPTION_SECRET (or ENCODE_KEY) in the .env: DevLake would refuse to start, and a generated secret cannot decrypt the stored tokens (§4.3)",
            "find the secret the database was encrypted with (the old .env, or the Helm secret) and put it in the .env as ENCRYPTION_SECRET",
        ));
    }
    if !needs_secret
        && facts.has_encode_key == Some(false)
        && facts.has_encryption_secret != Some(true)
    {
        return Err(Refused::new(
            "secret-missing",
            "no ENCODE_KEY in the .env: DevLake ≤ v0.17 would generate a new one and lose the stored tokens (#5235)",
            "put the ENCODE_KEY the database was encrypted with into the .env",
        ));
    }
    if facts.secret_decrypts == Some(false) {
        return Err(Refused::new(
            "secret-changed",
            "a stored connection token does not decrypt with the secret in the .env (\"invalid encKey\"): the secret was changed or lost, and DevLake would fail on every encrypted field (#5051, #2647)",
            "put back the secret the database was encrypted with; never upgrade with a new one",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).expect("version")
    }

    fn good() -> Facts {
        Facts {
            has_encryption_secret: Some(true),
            has_encode_key: Some(false),
            secret_decrypts: Some(true),
            migration_confirmed: Some(true),
            last_migrated: Some(v("1.0.0")),
        }
    }

    fn rule(from: &str, to: &str, f: &Facts) -> Result<(), &'static str> {
        check(&v(from), &v(to), f).map_err(|r| r.rule)
    }

    #[test]
    fn allowed_upgrades() {
        assert_eq!(rule("1.0.0", "1.0.1", &good()), Ok(()));
        assert_eq!(rule("1.0.0", "1.0.1", &Facts::default()), Ok(()));
    }

    #[test]
    fn secret_rules() {
        let encode_only = Facts {
            has_encryption_secret: Some(false),
            has_encode_key: Some(true),
            ..good()
        };
        assert_eq!(
            rule("0.17.0", "0.18.0", &encode_only),
            Err("encode-key-not-carried-over")
        );
        // Before the rename ENCODE_KEY is exactly what is needed.
        assert_eq!(rule("0.16.0", "0.17.0", &encode_only), Ok(()));
        let none = Facts {
            has_encryption_secret: Some(false),
            has_encode_key: Some(false),
            ..good()
        };
        assert_eq!(rule("1.0.0", "1.0.1", &none), Err("secret-missing"));
        assert_eq!(rule("0.16.0", "0.17.0", &none), Err("secret-missing"));
        let changed = Facts {
            secret_decrypts: Some(false),
            ..good()
        };
        assert_eq!(rule("1.0.0", "1.0.1", &changed), Err("secret-changed"));
    }

    #[test]
    fn downgrade_only_before_confirming() {
        assert_eq!(
            rule("1.0.1", "1.0.0", &good()),
            Err("downgrade-after-migration")
        );
        let waiting = Facts {
            migration_confirmed: Some(false),
            last_migrated: Some(v("1.0.0")),
            ..good()
        };
        assert_eq!(rule("1.0.1", "1.0.0", &waiting), Ok(()));
        // Waiting, but the older target is older than what the database reached.
        let older = Facts {
            last_migrated: Some(v("0.21.0")),
            ..waiting.clone()
        };
        assert_eq!(
            rule("1.0.1", "0.18.0", &older),
            Err("downgrade-after-migration")
        );
        assert_eq!(rule("1.0.1", "2.0.0", &good()), Err("unknown-major"));
    }
}
