//! What an adapter may do, as a comparable set, and how two such sets differ: the basis of
//! `upshift adapter diff` and of the lock file's refusal of adapters that ask for more.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::grants::{Access, BindingKind, BindingRequest};

/// One binding's capability: what it names and the access asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capability {
    /// What the binding names.
    pub kind: BindingKind,
    /// The access asked for, sorted.
    pub access: BTreeSet<Access>,
}

/// Every binding an adapter asks for, by name.
pub type CapabilitySet = BTreeMap<String, Capability>;

/// The capability set of an adapter's binding requests.
pub fn capabilities(bindings: &[BindingRequest]) -> CapabilitySet {
    bindings
        .iter()
        .map(|b| {
            (
                b.name.clone(),
                Capability {
                    kind: b.kind,
                    access: b.access.iter().copied().collect(),
                },
            )
        })
        .collect()
}

/// One difference between two capability sets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "change", rename_all = "kebab-case")]
pub enum Change {
    /// A binding the old adapter did not ask for.
    Added {
        /// Binding name.
        binding: String,
        /// Its capability.
        capability: Capability,
    },
    /// A binding the new adapter no longer asks for.
    Removed {
        /// Binding name.
        binding: String,
        /// The capability it had.
        capability: Capability,
    },
    /// The same binding name now names another kind of resource.
    KindChanged {
        /// Binding name.
        binding: String,
        /// Old kind.
        from: BindingKind,
        /// New kind.
        to: BindingKind,
        /// The new access.
        access: BTreeSet<Access>,
    },
    /// The binding asks for access it did not have, and may drop some.
    Widened {
        /// Binding name.
        binding: String,
        /// What it names.
        kind: BindingKind,
        /// Access now asked for that was not.
        added: BTreeSet<Access>,
        /// Access no longer asked for.
        removed: BTreeSet<Access>,
    },
    /// The binding asks for less.
    Narrowed {
        /// Binding name.
        binding: String,
        /// What it names.
        kind: BindingKind,
        /// Access no longer asked for.
        removed: BTreeSet<Access>,
    },
}

impl Change {
    /// Whether the change lets the adapter do something it could not before.
    pub fn widens(&self) -> bool {
        matches!(
            self,
            Change::Added { .. } | Change::KindChanged { .. } | Change::Widened { .. }
        )
    }
}

fn list(access: &BTreeSet<Access>) -> String {
    access
        .iter()
        .map(|a| a.name())
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Added {
                binding,
                capability,
            } => write!(
                f,
                "+ {binding}: new {} binding ({})",
                capability.kind,
                list(&capability.access)
            ),
            Change::Removed {
                binding,
                capability,
            } => write!(
                f,
                "- {binding}: {} binding removed (had {})",
                capability.kind,
                list(&capability.access)
            ),
            Change::KindChanged {
                binding,
                from,
                to,
                access,
            } => write!(
                f,
                "! {binding}: was a {from} binding, now a {to} binding ({})",
                list(access)
            ),
            Change::Widened {
                binding,
                kind,
                added,
                removed,
            } => {
                write!(f, "+ {binding} ({kind}): adds {}", list(added))?;
                if !removed.is_empty() {
                    write!(f, "; drops {}", list(removed))?;
                }
                Ok(())
            }
            Change::Narrowed {
                binding,
                kind,
                removed,
            } => write!(f, "- {binding} ({kind}): drops {}", list(removed)),
        }
    }
}

/// How `new` differs from `old`, binding by binding in name order.
pub fn diff(old: &CapabilitySet, new: &CapabilitySet) -> Vec<Change> {
    let names: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    let mut changes = Vec::new();
    for name in names {
        let binding = name.clone();
        match (old.get(name), new.get(name)) {
            (None, Some(n)) => changes.push(Change::Added {
                binding,
                capability: n.clone(),
            }),
            (Some(o), None) => changes.push(Change::Removed {
                binding,
                capability: o.clone(),
            }),
            (Some(o), Some(n)) if o.kind != n.kind => changes.push(Change::KindChanged {
                binding,
                from: o.kind,
                to: n.kind,
                access: n.access.clone(),
            }),
            (Some(o), Some(n)) => {
                let added: BTreeSet<Access> = n.access.difference(&o.access).copied().collect();
                let removed: BTreeSet<Access> = o.access.difference(&n.access).copied().collect();
                if !added.is_empty() {
                    changes.push(Change::Widened {
                        binding,
                        kind: n.kind,
                        added,
                        removed,
                    });
                } else if !removed.is_empty() {
                    changes.push(Change::Narrowed {
                        binding,
                        kind: n.kind,
                        removed,
                    });
                }
            }
            (None, None) => {}
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(entries: &[(&str, BindingKind, &[Access])]) -> CapabilitySet {
        entries
            .iter()
            .map(|(n, k, a)| {
                (
                    n.to_string(),
                    Capability {
                        kind: *k,
                        access: a.iter().copied().collect(),
                    },
                )
            })
            .collect()
    }

    #[test]
    fn every_kind_of_change_is_found_and_classified() {
        use Access::*;
        use BindingKind::*;
        let old = set(&[
            ("meta", Db, &[Read, Write]),
            ("data", Files, &[Read, Snapshot]),
            ("app", Service, &[Inspect]),
            ("api", Http, &[Read]),
            ("same", Db, &[Read]),
        ]);
        let new = set(&[
            ("meta", Db, &[Read, Ddl]),
            ("data", Files, &[Read]),
            ("app", Http, &[Read]),
            ("extra", Db, &[Backup]),
            ("same", Db, &[Read]),
        ]);
        let changes = diff(&old, &new);
        let shown: Vec<String> = changes.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "- api: http binding removed (had read)",
                "! app: was a service binding, now a http binding (read)",
                "- data (files): drops snapshot",
                "+ extra: new db binding (backup)",
                "+ meta (db): adds ddl; drops write",
            ]
        );
        let widening: Vec<bool> = changes.iter().map(Change::widens).collect();
        assert_eq!(widening, [false, true, false, true, true]);
        assert!(diff(&new, &new).is_empty());
    }
}
