//! DevLake's upgrade rules as a table (product-facts §4 and "What an adapter must encode →
//! Apache DevLake"), read by the SDK for offline and live plans alike and unit-tested natively.

use semver::Version;
use upshift_adapter_sdk::rules::{Jump, Rule, restore_instead};

use crate::{DevLake, catalog};

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
        /// The newest framework script `_devlake_migration_history` records (comment
        /// `Framework`, the misnumbered versions left out, see [`catalog::MISNUMBERED`]).
        pub framework_script: Option<u64> = "framework-script",
        /// Where the running release was read: the API, or the service's declared version.
        pub version_source: Option<String> = "version-source",
        /// The operator passed `--allow-unknown`: plan a target the catalog does not know.
        pub allow_unknown: Option<bool> = "operator.allow-unknown-release",
    }
}

/// Why the release the instance claims cannot have migrated its database, or `None` when they
/// agree as far as the catalog tells: the database records a framework script newer than the
/// newest one the release ships, so a newer DevLake migrated it. A database behind the release
/// is not a contradiction: its scripts are pending, behind the 428 gate the plan passes.
pub fn contradiction(j: &Jump<DevLake>) -> Option<String> {
    let recorded = j.facts.framework_script?;
    let ships = catalog::newest_script(j.from)?;
    (recorded > ships).then(|| {
        let writer = catalog::first_release_with(recorded).map_or_else(
            || "a release newer than this adapter's catalog".to_string(),
            |r| format!("v{r} or newer"),
        );
        format!(
            "{} says release v{}, but _devlake_migration_history records framework script {recorded}, newer than the {ships} that v{} ships (§4.4 catalog): only {writer} writes it; v{} would start on a newer database, and DevLake scripts have no Down",
            j.facts
                .version_source
                .as_deref()
                .unwrap_or("the detected version"),
            j.from,
            j.from,
            j.from
        )
    })
}

/// Whether the target reads `ENCRYPTION_SECRET` (and no longer `ENCODE_KEY`).
fn reads_encryption_secret(jump: &Jump<DevLake>) -> bool {
    *jump.to >= SECRET_RENAME
}

/// What DevLake refuses, in order: the first rule that applies refuses the upgrade.
pub const REFUSALS: &[Rule<DevLake>] = &[
    Rule {
        id: "release-contradicts-database",
        when: |j| contradiction(j).is_some(),
        reason: |j| contradiction(j).unwrap_or_default(),
        advice: |j| {
            format!(
                "find out which DevLake last migrated this database: if it was newer than v{}, correct the service's `version` in the fleet file (or start the right image); if the database is not the one v{} used, restore the backup that matches it. Then plan again",
                j.from, j.from
            )
        },
        via: None,
    },
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
        id: "unknown-release",
        when: |j| !catalog::knows(j.to) && j.facts.allow_unknown != Some(true),
        reason: |j| {
            let (first, last) = catalog::range();
            format!(
                "v{} is not a release this adapter's catalog knows (DevLake v{first} – v{last}); {}. The adapter cannot know its migration scripts or secret rules",
                j.to,
                catalog::describe_nearest(j.to)
            )
        },
        advice: |_| {
            "plan a known release, or pass `--allow-unknown` to plan this one anyway (the plan then notes that the adapter cannot know its rules)".into()
        },
        via: None,
    },
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
            framework_script: None,
            version_source: Some("DevLake's /version".into()),
            allow_unknown: None,
        }
    }

    #[test]
    fn the_declared_release_must_not_be_older_than_the_database() {
        // v1.0.1's newest framework script behind a DevLake that says v1.0.0.
        let newer = Facts {
            framework_script: Some(20240813160242),
            ..good()
        };
        let (from, to) = (v("1.0.0"), v("1.0.1"));
        let r = Jump::<DevLake>::new(&from, &to, &newer)
            .check()
            .expect_err("contradiction");
        assert_eq!(r.rule, "release-contradicts-database");
        assert!(
            r.reason.contains("/version says release v1.0.0"),
            "{}",
            r.reason
        );
        assert!(r.reason.contains("only v1.0.1 or newer"), "{}", r.reason);
        // Behind (pending behind the gate) or agreeing: allowed.
        let behind = Facts {
            framework_script: Some(20240308142101),
            ..good()
        };
        assert_eq!(rule("1.0.0", "1.0.1", &behind), Ok(()));
        let agreeing = Facts {
            framework_script: Some(20240523194205),
            ..good()
        };
        assert_eq!(rule("1.0.0", "1.0.1", &agreeing), Ok(()));
    }

    #[test]
    fn an_unknown_target_needs_the_operator() {
        assert_eq!(rule("1.0.0", "1.0.9", &good()), Err("unknown-release"));
        assert_eq!(
            rule("1.0.0", "1.0.3-beta10", &good()),
            Err("unknown-release")
        );
        let allowed = Facts {
            allow_unknown: Some(true),
            ..good()
        };
        assert_eq!(rule("1.0.0", "1.0.9", &allowed), Ok(()));
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
