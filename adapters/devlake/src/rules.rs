//! DevLake's upgrade rules as a table (product-facts §4 and "What an adapter must encode →
//! Apache DevLake"), read by the SDK for offline and live plans alike and unit-tested natively.

use semver::Version;
use upshift_adapter_sdk::rules::{Jump, Rule, restore_instead};

use crate::DevLake;

/// v0.18.0 renamed `ENCODE_KEY` to `ENCRYPTION_SECRET` and stopped generating one (§4.3).
pub const SECRET_RENAME: Version = Version::new(0, 18, 0);

upshift_adapter_sdk::facts! {
    /// Facts from the live instance; `None` when unknown (offline plans).
    pub struct Facts {
        /// The `.env` (or environment) has `ENCRYPTION_SECRET`.
        pub has_encryption_secret: Option<bool> = "has-encryption-secret",
        /// The `.env` has the pre-0.18 `ENCODE_KEY`.
        pub has_encode_key: Option<bool> = "has-encode-key",
        /// A stored connection token decrypts with the secret the new version will read
        /// (`None` when there is no stored token to test with).
        pub secret_decrypts: Option<bool> = "secret-decrypts",
        /// A stored connection token is not in the format DevLake writes (which one, and why):
        /// no secret can open it.
        pub token_undecodable: Option<String> = "token-undecodable",
        /// The running version's migrations were confirmed (its `_devlake_locking_history` row
        /// has `succeeded = 1`); `false` while the 428 gate is still waiting.
        pub migration_confirmed: Option<bool> = "migration-confirmed",
        /// The last version whose migrations completed, from `_devlake_locking_history`.
        pub last_migrated: Option<Version> = "last-migrated",
    }
}

/// Whether the target reads `ENCRYPTION_SECRET` (and no longer `ENCODE_KEY`).
fn reads_encryption_secret(jump: &Jump<DevLake>) -> bool {
    *jump.to >= SECRET_RENAME
}

/// What DevLake refuses, in order: the first rule that applies refuses the upgrade.
pub const REFUSALS: &[Rule<DevLake>] = &[
    Rule::ALREADY_AT_TARGET,
    Rule {
        id: "downgrade-after-migration",
        // Going back is fine while the gate still waits, to a version the database has reached.
        when: |j| {
            let back_before_confirming = j.facts.migration_confirmed == Some(false)
                && j.facts.last_migrated.as_ref().is_some_and(|v| j.to >= v);
            j.to < j.from && !back_before_confirming
        },
        reason: |Jump { from, to, .. }| {
            format!(
                "{to} is older than {from}, whose migrations already ran; DevLake's scripts have no `Down`, so an older version cannot run on this database (§4.4, §4.5)"
            )
        },
        advice: |j| restore_instead(j.to),
        via: None,
    },
    Rule::UNKNOWN_MAJOR,
    Rule {
        id: "encode-key-not-carried-over",
        when: |j| {
            reads_encryption_secret(j)
                && j.facts.has_encryption_secret == Some(false)
                && j.facts.has_encode_key == Some(true)
        },
        reason: |Jump { to, .. }| {
            format!(
                "{to} reads ENCRYPTION_SECRET (≥ v0.18) and the .env only has the old ENCODE_KEY; without it DevLake panics at start, and a new secret would make every stored token undecryptable (§4.3)"
            )
        },
        advice: |_| {
            "add ENCRYPTION_SECRET=<the ENCODE_KEY value> to the .env (keep ENCODE_KEY), then plan again".into()
        },
        via: None,
    },
    Rule {
        id: "secret-missing",
        when: |j| reads_encryption_secret(j) && j.facts.has_encryption_secret == Some(false),
        reason: |_| {
            "no ENCRYPTION_SECRET (or ENCODE_KEY) in the .env: DevLake would refuse to start, and a generated secret cannot decrypt the stored tokens (§4.3)".into()
        },
        advice: |_| {
            "find the secret the database was encrypted with (the old .env, or the Helm secret) and put it in the .env as ENCRYPTION_SECRET".into()
        },
        via: None,
    },
    Rule {
        id: "secret-missing",
        when: |j| {
            !reads_encryption_secret(j)
                && j.facts.has_encode_key == Some(false)
                && j.facts.has_encryption_secret != Some(true)
        },
        reason: |_| {
            "no ENCODE_KEY in the .env: DevLake ≤ v0.17 would generate a new one and lose the stored tokens (#5235)".into()
        },
        advice: |_| "put the ENCODE_KEY the database was encrypted with into the .env".into(),
        via: None,
    },
    Rule {
        id: "token-undecodable",
        when: |j| j.facts.token_undecodable.is_some(),
        reason: |j| {
            format!(
                "cannot decode a stored connection token ({}): it is not in the format DevLake writes (Base64 of AES-256-CBC blocks, §4.3), so no secret opens it; this is not a wrong secret, and DevLake would fail on it with a Base64 or block-size error",
                j.facts.token_undecodable.as_deref().unwrap_or("unknown")
            )
        },
        advice: |_| {
            "find what wrote that value (a manual edit, another tool, a partial restore): restore the backup that holds the token DevLake wrote, or re-enter the connection's token through DevLake, then plan again".into()
        },
        via: None,
    },
    Rule {
        id: "secret-changed",
        when: |j| j.facts.secret_decrypts == Some(false),
        reason: |_| {
            "a stored connection token does not decrypt with the secret in the .env (\"invalid encKey\"): the secret was changed or lost, and DevLake would fail on every encrypted field (#5051, #2647)".into()
        },
        advice: |_| {
            "put back the secret the database was encrypted with; never upgrade with a new one"
                .into()
        },
        via: None,
    },
];

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
            token_undecodable: None,
        }
    }

    fn rule(from: &str, to: &str, f: &Facts) -> Result<(), &'static str> {
        let (from, to) = (v(from), v(to));
        Jump::<DevLake>::new(&from, &to, f)
            .check()
            .map_err(|r| r.rule)
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
        let undecodable = Facts {
            secret_decrypts: Some(false),
            token_undecodable: Some("id 1: it is not standard Base64".into()),
            ..good()
        };
        assert_eq!(
            rule("1.0.0", "1.0.1", &undecodable),
            Err("token-undecodable")
        );
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
