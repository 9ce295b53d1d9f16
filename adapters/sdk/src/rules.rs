//! A product's rules as tables: a refusal table ([`Rule`]) read in order, and stepping stones
//! ([`Stone`]), versions some upgrades must stop at. Each row says when it applies and, in the
//! product's terms, why and what to do; [`Jump::check`] reads the tables for one upgrade. Also
//! here: the refusal itself, and the version pair parsed or refused.

use semver::Version;

use crate::{Product, Refusal, RestoreRequest, refuse, versions};

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

/// An upgrade under judgement: from which version, to which, and what detection found.
pub struct Jump<'a, P: Product> {
    /// The running version.
    pub from: &'a Version,
    /// The target.
    pub to: &'a Version,
    /// The live instance's facts (all `None` offline).
    pub facts: &'a P::Facts,
}

impl<'a, P: Product> Jump<'a, P> {
    /// The upgrade `from → to` with these facts.
    pub fn new(from: &'a Version, to: &'a Version, facts: &'a P::Facts) -> Self {
        Jump { from, to, facts }
    }

    /// Whether the upgrade passes over `version` (strictly between its ends).
    pub fn passes(&self, version: &Version) -> bool {
        self.from < version && version < self.to
    }

    /// Judge the upgrade: the first rule of [`Product::REFUSALS`] that applies refuses it;
    /// otherwise the [`Product::STONES`] it must stop at refuse it with the path through them.
    pub fn check(&self) -> Result<(), Refused> {
        if let Some(rule) = P::REFUSALS.iter().find(|rule| (rule.when)(self)) {
            return Err(rule.refusal(self));
        }
        self.through_stones()
    }

    fn through_stones(&self) -> Result<(), Refused> {
        let mut stops: Vec<&Stone<P>> = P::STONES.iter().filter(|s| (s.when)(self)).collect();
        // Stable: of the stones at one version, the first in the table is kept.
        stops.sort_by(|a, b| a.at.cmp(&b.at));
        stops.dedup_by(|later, kept| later.at == kept.at);
        let Some(first) = stops.first() else {
            return Ok(());
        };
        let reasons: Vec<String> = stops.iter().map(|s| (s.why)(self)).collect();
        let path = stops.iter().map(|s| s.at.clone()).chain([self.to.clone()]);
        Err(Refused {
            rule: first.id,
            reason: reasons.join("; "),
            path: path.collect(),
            advice: format!(
                "upgrade one stop at a time: `upshift apply <instance> --to {}`, then plan again",
                first.at
            ),
        })
    }
}

/// Whether a rule applies to an upgrade.
pub type When<P> = fn(&Jump<P>) -> bool;
/// A piece of text a rule writes about an upgrade (a reason, advice).
pub type Text<P> = fn(&Jump<P>) -> String;
/// The versions a rule sends an upgrade through, ending with the target.
pub type Via<P> = fn(&Jump<P>) -> Vec<Version>;

/// One row of a refusal table: when `when` holds, the upgrade is refused.
pub struct Rule<P: Product> {
    /// The rule's id in plans, reports and tests (`downgrade`, `via-2.1.0`).
    pub id: &'static str,
    /// Whether the rule refuses this upgrade.
    pub when: When<P>,
    /// Why, in the product's terms.
    pub reason: Text<P>,
    /// What the operator should do.
    pub advice: Text<P>,
    /// The versions to go through instead, ending with the target; `None` when there is no
    /// way through.
    pub via: Option<Via<P>>,
}

impl<P: Product> Rule<P> {
    /// `already-at-target`: the instance already runs the target.
    pub const ALREADY_AT_TARGET: Rule<P> = Rule {
        id: "already-at-target",
        when: |jump| jump.from == jump.to,
        reason: |jump| format!("the instance already runs {}", jump.from),
        advice: |_| "nothing to do".into(),
        via: None,
    };

    /// `unknown-major`: the target's major is newer than [`Product::NEWEST_MAJOR`].
    pub const UNKNOWN_MAJOR: Rule<P> = Rule {
        id: "unknown-major",
        when: |jump| jump.to.major > P::NEWEST_MAJOR,
        reason: |jump| {
            format!(
                "this adapter knows {} up to {}.x; {} may need steps it does not encode",
                P::NAME,
                P::NEWEST_MAJOR,
                jump.to
            )
        },
        advice: |_| "use an adapter release that supports the new major".into(),
        via: None,
    };

    fn refusal(&self, jump: &Jump<P>) -> Refused {
        Refused {
            rule: self.id,
            reason: (self.reason)(jump),
            path: self.via.map(|via| via(jump)).unwrap_or_default(),
            advice: (self.advice)(jump),
        }
    }
}

/// A stepping stone: a version the upgrade must stop at when `when` holds. The upgrade is
/// refused with the path through every stone that applies, the first one's id, and all their
/// reasons.
pub struct Stone<P: Product> {
    /// The version to stop at.
    pub at: Version,
    /// The rule's id when this is the first stop.
    pub id: &'static str,
    /// Whether the upgrade must stop here.
    pub when: When<P>,
    /// Why, in the product's terms.
    pub why: Text<P>,
}

/// The advice for a downgrade the product cannot make: restore a backup taken at the target.
pub fn restore_instead(target: &Version) -> String {
    format!(
        "to go back, restore a backup taken at {target} (`upshift backups`, then `upshift restore`)"
    )
}

/// The backup's version, parsed, or the refusal that it is not one of the product's versions.
pub fn backup_version<P: Product>(request: &RestoreRequest) -> Result<Version, Refusal> {
    let text = &request.backup.product_version;
    versions::parse(text)
        .ok_or_else(|| unparseable(P::NAME, "the backup's version", text, P::EXAMPLE))
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
    fn pairs_parse_or_name_the_version_that_does_not() {
        let (a, b) = parse_pair("KWDB", "2.2.0", "V3.0.0", "3.0.0").expect("parses");
        assert_eq!((a.major, b.major), (2, 3));
        let r = parse_pair("KWDB", "two", "3.0.0", "3.0.0").expect_err("refused");
        assert_eq!(r.rule, "unparseable-version");
        assert!(r.reason.contains("current version"));
    }

    crate::facts! {
        /// A toy product's facts.
        struct ToyFacts {
            /// Whether it is busy.
            busy: Option<bool> = "busy",
            /// Its schema version.
            schema: Option<Version> = "schema",
        }
    }

    struct Toy;

    const STOP: Version = Version::new(1, 5, 0);

    impl Product for Toy {
        const NAME: &'static str = "Toy";
        const EXAMPLE: &'static str = "1.2.0";
        const NEWEST_MAJOR: u64 = 2;
        const REFUSALS: &'static [Rule<Self>] = &[
            Rule::ALREADY_AT_TARGET,
            Rule {
                id: "busy",
                when: |jump| jump.facts.busy == Some(true),
                reason: |jump| format!("busy at {}", jump.from),
                advice: |_| "wait".into(),
                via: Some(|jump| vec![STOP, jump.to.clone()]),
            },
            Rule::UNKNOWN_MAJOR,
        ];
        const STONES: &'static [Stone<Self>] = &[
            Stone {
                at: STOP,
                id: "via-1.5",
                when: |jump| jump.passes(&STOP),
                why: |_| "1.5 converts".into(),
            },
            Stone {
                at: STOP,
                id: "also-1.5",
                when: |jump| jump.passes(&STOP),
                why: |_| "never shown".into(),
            },
            Stone {
                at: Version::new(1, 2, 0),
                id: "via-1.2",
                when: |jump| jump.passes(&Version::new(1, 2, 0)),
                why: |jump| format!("{} needs 1.2", jump.from),
            },
        ];
        const OFFLINE_NOTE: Option<&'static str> = Some("offline");
        type Facts = ToyFacts;

        fn detect() -> Result<crate::Detection, crate::AdapterError> {
            Err(crate::error("no instance"))
        }

        fn upgrade(from: &Version, to: &Version) -> crate::Plan {
            crate::steps::plan(&from.to_string(), &to.to_string(), vec![], vec![])
        }

        fn verify(_: &str) -> Result<Vec<crate::Check>, crate::AdapterError> {
            Ok(vec![])
        }

        fn restore(request: &RestoreRequest) -> Result<crate::Plan, Refusal> {
            let version = backup_version::<Self>(request)?.to_string();
            Ok(crate::steps::plan(
                &request.current(),
                &version,
                vec![],
                vec![],
            ))
        }
    }

    fn judge(from: &str, to: &str, facts: &ToyFacts) -> Result<(), Refused> {
        let (from, to) = (
            Version::parse(from).expect("v"),
            Version::parse(to).expect("v"),
        );
        Jump::<Toy>::new(&from, &to, facts).check()
    }

    #[test]
    fn the_first_rule_that_applies_refuses() {
        let idle = ToyFacts::default();
        let r = judge("1.0.0", "1.0.0", &idle).expect_err("same");
        assert_eq!(
            (r.rule, r.reason.as_str()),
            ("already-at-target", "the instance already runs 1.0.0")
        );
        let busy = ToyFacts {
            busy: Some(true),
            ..ToyFacts::default()
        };
        let r = judge("1.0.0", "3.0.0", &busy).expect_err("busy first");
        assert_eq!(
            (r.rule, r.path.len(), r.advice.as_str()),
            ("busy", 2, "wait")
        );
        let r = judge("1.6.0", "3.0.0", &idle).expect_err("too new");
        assert_eq!(r.rule, "unknown-major");
        assert_eq!(
            r.reason,
            "this adapter knows Toy up to 2.x; 3.0.0 may need steps it does not encode"
        );
        assert_eq!(judge("1.5.0", "2.0.0", &idle), Ok(()));
    }

    #[test]
    fn stones_are_visited_in_order_once_each() {
        let r = judge("1.0.0", "2.0.0", &ToyFacts::default()).expect_err("stops");
        assert_eq!(r.rule, "via-1.2");
        assert_eq!(r.reason, "1.0.0 needs 1.2; 1.5 converts");
        let path: Vec<String> = r.path.iter().map(ToString::to_string).collect();
        assert_eq!(path, ["1.2.0", "1.5.0", "2.0.0"]);
        assert_eq!(
            r.advice,
            "upgrade one stop at a time: `upshift apply <instance> --to 1.2.0`, then plan again"
        );
    }

    #[test]
    fn facts_are_read_back_typed() {
        let detection = crate::Detection {
            version: "1.0.0".into(),
            facts: vec![
                crate::fact("busy", "true"),
                crate::fact("schema", "v1.1@x"),
                crate::fact("other", "1"),
            ],
        };
        let facts = <ToyFacts as crate::FromFacts>::from_facts(&detection);
        assert_eq!(
            facts,
            ToyFacts {
                busy: Some(true),
                schema: Some(Version::new(1, 1, 0))
            }
        );
        assert_eq!(detection.read::<u64>("other"), Some(1));
        assert_eq!(detection.read::<bool>("other"), None);
        assert_eq!(detection.fact("missing"), None);
    }

    #[test]
    fn plans_note_when_made_offline() {
        let offline = crate::Detection {
            version: "1.5.0".into(),
            facts: vec![],
        };
        let plan = crate::exports::plan::<Toy>(&offline, "2.0.0").expect("plan");
        assert_eq!(plan.notes, ["offline"]);
        // The operator's facts are not the instance's: still offline.
        let operator = crate::Detection {
            facts: vec![crate::fact("operator.allow-unknown-release", "true")],
            ..offline.clone()
        };
        let plan = crate::exports::plan::<Toy>(&operator, "2.0.0").expect("plan");
        assert_eq!(plan.notes, ["offline"]);
        let live = crate::Detection {
            facts: vec![crate::fact("busy", "false")],
            ..offline
        };
        let plan = crate::exports::plan::<Toy>(&live, "2.0.0").expect("plan");
        assert!(plan.notes.is_empty());
        let refused = crate::exports::plan::<Toy>(&live, "two").expect_err("unparseable");
        assert_eq!(refused.rule, "unparseable-version");
    }

    #[test]
    fn a_backup_of_no_version_is_refused() {
        let request = |version: &str| RestoreRequest {
            backup: crate::BackupInfo {
                id: "b1".into(),
                binding: "meta".into(),
                product_version: version.into(),
                method: crate::BackupMethod::Dump,
            },
            current_version: None,
            into: None,
        };
        let plan = Toy::restore(&request("v1.2")).expect("restores");
        assert_eq!(
            (plan.from_version.as_str(), plan.to_version.as_str()),
            ("unknown", "1.2.0")
        );
        let refused = Toy::restore(&request("soon")).expect_err("refused");
        assert_eq!(
            refused.reason,
            "the backup's version `soon` is not a Toy version"
        );
    }
}
