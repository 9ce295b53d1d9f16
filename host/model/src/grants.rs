//! Two-sided grants: the adapter declares bindings and the access each needs; the fleet file binds
//! each name to a real resource and may narrow the access. A call passes only when the binding is
//! declared, bound, and the access is both requested and granted.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// What a binding may be used for (mirrors the WIT `access` enum).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    /// Read data (SELECT, file reads, GET).
    Read,
    /// Change data (INSERT/UPDATE/DELETE, file writes, POST/PUT/DELETE).
    Write,
    /// Change a database schema (CREATE/ALTER/DROP).
    Ddl,
    /// Take a backup of a database.
    Backup,
    /// Restore a database or directory from a backup.
    Restore,
    /// Snapshot a directory.
    Snapshot,
    /// Look at a service's state and health.
    Inspect,
    /// Stop and start a service.
    Control,
    /// Switch a service to another product version.
    #[serde(alias = "switch_version")]
    SwitchVersion,
}

impl Access {
    /// Every access, in declaration order.
    pub const ALL: [Access; 9] = [
        Access::Read,
        Access::Write,
        Access::Ddl,
        Access::Backup,
        Access::Restore,
        Access::Snapshot,
        Access::Inspect,
        Access::Control,
        Access::SwitchVersion,
    ];

    /// The name used in WIT, the fleet file and the audit log.
    pub fn name(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
            Access::Ddl => "ddl",
            Access::Backup => "backup",
            Access::Restore => "restore",
            Access::Snapshot => "snapshot",
            Access::Inspect => "inspect",
            Access::Control => "control",
            Access::SwitchVersion => "switch-version",
        }
    }

    /// Parse a name as written in a fleet file or manifest (`switch_version` is accepted too).
    pub fn parse(text: &str) -> Option<Access> {
        let wanted = text.trim().replace('_', "-");
        Access::ALL.into_iter().find(|a| a.name() == wanted)
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The kind of resource a binding names (mirrors the WIT `binding-kind` enum).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BindingKind {
    /// A database.
    Db,
    /// A directory.
    Files,
    /// A service (process or container).
    Service,
    /// An HTTP base URL.
    Http,
}

impl BindingKind {
    /// The name used in WIT, the fleet file (`[instance.db.NAME]`) and the audit log.
    pub fn name(self) -> &'static str {
        match self {
            BindingKind::Db => "db",
            BindingKind::Files => "files",
            BindingKind::Service => "service",
            BindingKind::Http => "http",
        }
    }

    /// The accesses that make sense for this kind.
    pub fn valid_access(self) -> &'static [Access] {
        match self {
            BindingKind::Db => &[
                Access::Read,
                Access::Write,
                Access::Ddl,
                Access::Backup,
                Access::Restore,
            ],
            BindingKind::Files => &[
                Access::Read,
                Access::Write,
                Access::Snapshot,
                Access::Restore,
            ],
            BindingKind::Service => &[Access::Inspect, Access::Control, Access::SwitchVersion],
            BindingKind::Http => &[Access::Read, Access::Write],
        }
    }
}

impl fmt::Display for BindingKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A binding as the adapter requests it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindingRequest {
    /// Logical name, e.g. `meta`.
    pub name: String,
    /// What it names.
    pub kind: BindingKind,
    /// What the adapter asks to do with it.
    pub access: Vec<Access>,
    /// Why, for operators and auditors.
    pub purpose: String,
    /// Whether it may be left unbound.
    pub optional: bool,
}

/// The effective grant of one binding for one instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Grant {
    /// The binding's kind.
    pub kind: BindingKind,
    /// Requested by the adapter and allowed by the operator.
    pub access: Vec<Access>,
}

/// Why a call is not allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    /// The adapter never declared this binding.
    #[error("binding `{0}` is not declared by the adapter")]
    Undeclared(String),
    /// Declared as another kind.
    #[error("binding `{name}` is a {actual} binding, not {wanted}")]
    WrongKind {
        /// Binding name.
        name: String,
        /// Its declared kind.
        actual: BindingKind,
        /// The kind the call needs.
        wanted: BindingKind,
    },
    /// Declared but optional and not bound in the fleet file.
    #[error("binding `{0}` is not bound for this instance")]
    Unbound(String),
    /// Bound, but this access is not granted.
    #[error("binding `{name}` is not granted `{access}` (granted: {granted})")]
    NotGranted {
        /// Binding name.
        name: String,
        /// The access the call needs.
        access: Access,
        /// What is granted, comma-separated.
        granted: String,
    },
    /// Requested and bound, but the lock file's approval does not reach it (see
    /// [`GrantSet::limit_to`]).
    #[error(
        "binding `{name}` is not granted `{access}` (the lock file {lock} approves {})",
        approves(.approved)
    )]
    NotApproved {
        /// Binding name.
        name: String,
        /// The access the call needs.
        access: Access,
        /// What the lock file approves on the binding, comma-separated (`nothing`).
        approved: String,
        /// The lock file.
        lock: String,
    },
}

fn approves(approved: &str) -> String {
    if approved == "nothing" {
        "nothing on it".to_string()
    } else {
        format!("only {approved}")
    }
}

/// The lock file's approval of one binding, where it narrowed the grant.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ceiling {
    /// What it approves.
    approved: Vec<Access>,
    /// The requested and bound access it took away.
    cut: Vec<Access>,
    /// The lock file.
    lock: String,
}

/// The grants of one adapter on one instance.
#[derive(Debug, Clone, Default)]
pub struct GrantSet {
    declared: BTreeMap<String, BindingKind>,
    grants: BTreeMap<String, Grant>,
    ceilings: BTreeMap<String, Ceiling>,
}

/// A problem joining an adapter's requests with a fleet instance's bindings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    /// A required binding is not bound.
    #[error(
        "instance `{instance}`: the adapter needs {kind} binding `{name}` ({purpose}) but the fleet file does not bind it; add [instance.{kind}.{name}]"
    )]
    MissingBinding {
        /// Instance name.
        instance: String,
        /// Binding name.
        name: String,
        /// Its kind.
        kind: BindingKind,
        /// The adapter's stated purpose.
        purpose: String,
    },
    /// The fleet binds a name the adapter does not declare.
    #[error(
        "instance `{instance}`: [instance.{kind}.{name}] is bound but the adapter declares no such binding (it declares: {declared}); remove it or fix the name"
    )]
    UnknownBinding {
        /// Instance name.
        instance: String,
        /// Binding name.
        name: String,
        /// Kind used in the fleet file.
        kind: BindingKind,
        /// The adapter's binding names.
        declared: String,
    },
    /// The fleet binds the name as another kind.
    #[error(
        "instance `{instance}`: binding `{name}` is bound as {bound} but the adapter declares it as {declared}; move it to [instance.{declared}.{name}]"
    )]
    KindMismatch {
        /// Instance name.
        instance: String,
        /// Binding name.
        name: String,
        /// Kind in the fleet file.
        bound: BindingKind,
        /// Kind the adapter declares.
        declared: BindingKind,
    },
    /// The fleet's `access` list widens beyond the request, or names an access invalid for the kind.
    #[error(
        "instance `{instance}`: binding `{name}` lists access `{access}`, which the adapter does not request (it requests: {requested}); access may only narrow the request"
    )]
    Widened {
        /// Instance name.
        instance: String,
        /// Binding name.
        name: String,
        /// The offending access.
        access: Access,
        /// What the adapter requests.
        requested: String,
    },
}

/// A fleet-side binding, as far as grants are concerned.
#[derive(Debug, Clone)]
pub struct BoundName {
    /// Binding name.
    pub name: String,
    /// Kind in the fleet file.
    pub kind: BindingKind,
    /// The operator's narrowing, if any.
    pub access: Option<Vec<Access>>,
}

fn join(access: &[Access]) -> String {
    if access.is_empty() {
        return "nothing".to_string();
    }
    access
        .iter()
        .map(|a| a.name())
        .collect::<Vec<_>>()
        .join(", ")
}

impl GrantSet {
    /// Join the adapter's requests with the instance's bindings. Every problem is reported.
    pub fn resolve(
        instance: &str,
        requests: &[BindingRequest],
        bound: &[BoundName],
    ) -> Result<GrantSet, Vec<GrantError>> {
        let mut errors = Vec::new();
        let mut set = GrantSet::default();
        let declared_names = requests
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        for b in bound {
            match requests.iter().find(|r| r.name == b.name) {
                None => errors.push(GrantError::UnknownBinding {
                    instance: instance.to_string(),
                    name: b.name.clone(),
                    kind: b.kind,
                    declared: declared_names.clone(),
                }),
                Some(r) if r.kind != b.kind => errors.push(GrantError::KindMismatch {
                    instance: instance.to_string(),
                    name: b.name.clone(),
                    bound: b.kind,
                    declared: r.kind,
                }),
                Some(_) => {}
            }
        }
        for r in requests {
            set.declared.insert(r.name.clone(), r.kind);
            let Some(b) = bound.iter().find(|b| b.name == r.name && b.kind == r.kind) else {
                if !r.optional && !bound.iter().any(|b| b.name == r.name) {
                    errors.push(GrantError::MissingBinding {
                        instance: instance.to_string(),
                        name: r.name.clone(),
                        kind: r.kind,
                        purpose: r.purpose.clone(),
                    });
                }
                continue;
            };
            let access = match &b.access {
                None => r.access.clone(),
                Some(narrowed) => {
                    for a in narrowed {
                        if !r.access.contains(a) {
                            errors.push(GrantError::Widened {
                                instance: instance.to_string(),
                                name: r.name.clone(),
                                access: *a,
                                requested: join(&r.access),
                            });
                        }
                    }
                    r.access
                        .iter()
                        .copied()
                        .filter(|a| narrowed.contains(a))
                        .collect()
                }
            };
            set.grants.insert(
                r.name.clone(),
                Grant {
                    kind: r.kind,
                    access,
                },
            );
        }
        if errors.is_empty() {
            Ok(set)
        } else {
            Err(errors)
        }
    }

    /// Allow or deny `access` on binding `name` of `kind`.
    pub fn check(&self, name: &str, kind: BindingKind, access: Access) -> Result<(), Denial> {
        let Some(declared) = self.declared.get(name) else {
            return Err(Denial::Undeclared(name.to_string()));
        };
        if *declared != kind {
            return Err(Denial::WrongKind {
                name: name.to_string(),
                actual: *declared,
                wanted: kind,
            });
        }
        let Some(grant) = self.grants.get(name) else {
            return Err(Denial::Unbound(name.to_string()));
        };
        if grant.access.contains(&access) {
            Ok(())
        } else if let Some(c) = self.ceilings.get(name)
            && c.cut.contains(&access)
        {
            Err(Denial::NotApproved {
                name: name.to_string(),
                access,
                approved: join(&c.approved),
                lock: c.lock.clone(),
            })
        } else {
            Err(Denial::NotGranted {
                name: name.to_string(),
                access,
                granted: join(&grant.access),
            })
        }
    }

    /// Narrow every grant to what `approved` (the lock file's approval of this adapter) allows:
    /// a binding it does not list keeps nothing. `lock` names the file in denials. The caller
    /// has refused approvals wider than the request ([`crate::capdiff`]); here only narrowing
    /// has an effect.
    pub fn limit_to(&mut self, approved: &crate::capdiff::CapabilitySet, lock: &str) {
        for (name, grant) in &mut self.grants {
            let allowed: Vec<Access> = approved
                .get(name)
                .filter(|c| c.kind == grant.kind)
                .map(|c| c.access.iter().copied().collect())
                .unwrap_or_default();
            let cut: Vec<Access> = grant
                .access
                .iter()
                .copied()
                .filter(|a| !allowed.contains(a))
                .collect();
            if cut.is_empty() {
                continue;
            }
            grant.access.retain(|a| allowed.contains(a));
            self.ceilings.insert(
                name.clone(),
                Ceiling {
                    approved: allowed,
                    cut,
                    lock: lock.to_string(),
                },
            );
        }
    }

    /// Whether binding `name` is bound (for optional bindings).
    pub fn is_bound(&self, name: &str) -> bool {
        self.grants.contains_key(name)
    }

    /// The effective grants, by binding name.
    pub fn grants(&self) -> &BTreeMap<String, Grant> {
        &self.grants
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(name: &str, kind: BindingKind, access: &[Access], optional: bool) -> BindingRequest {
        BindingRequest {
            name: name.into(),
            kind,
            access: access.to_vec(),
            purpose: "test".into(),
            optional,
        }
    }

    fn bound(name: &str, kind: BindingKind, access: Option<&[Access]>) -> BoundName {
        BoundName {
            name: name.into(),
            kind,
            access: access.map(<[Access]>::to_vec),
        }
    }

    #[test]
    fn narrowing_removes_access_and_checks_deny() {
        let requests = [req(
            "meta",
            BindingKind::Db,
            &[Access::Read, Access::Backup],
            false,
        )];
        let set = GrantSet::resolve(
            "i1",
            &requests,
            &[bound("meta", BindingKind::Db, Some(&[Access::Read]))],
        )
        .expect("resolves");
        assert!(set.check("meta", BindingKind::Db, Access::Read).is_ok());
        assert_eq!(
            set.check("meta", BindingKind::Db, Access::Backup),
            Err(Denial::NotGranted {
                name: "meta".into(),
                access: Access::Backup,
                granted: "read".into()
            })
        );
        assert_eq!(
            set.check("other", BindingKind::Db, Access::Read),
            Err(Denial::Undeclared("other".into()))
        );
        assert!(matches!(
            set.check("meta", BindingKind::Http, Access::Read),
            Err(Denial::WrongKind { .. })
        ));
    }

    #[test]
    fn missing_unknown_widened_and_optional() {
        let requests = [
            req("meta", BindingKind::Db, &[Access::Read], false),
            req("data", BindingKind::Files, &[Access::Read], true),
        ];
        let errs = GrantSet::resolve("i1", &requests, &[bound("extra", BindingKind::Http, None)])
            .expect_err("must fail");
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(
            errs.iter()
                .any(|e| matches!(e, GrantError::MissingBinding { name, .. } if name == "meta"))
        );
        assert!(
            errs.iter()
                .any(|e| matches!(e, GrantError::UnknownBinding { name, .. } if name == "extra"))
        );

        let errs = GrantSet::resolve(
            "i1",
            &requests,
            &[bound(
                "meta",
                BindingKind::Db,
                Some(&[Access::Read, Access::Ddl]),
            )],
        )
        .expect_err("widening refused");
        assert!(matches!(
            &errs[0],
            GrantError::Widened {
                access: Access::Ddl,
                ..
            }
        ));

        let set = GrantSet::resolve("i1", &requests, &[bound("meta", BindingKind::Db, None)])
            .expect("optional may be unbound");
        assert_eq!(
            set.check("data", BindingKind::Files, Access::Read),
            Err(Denial::Unbound("data".into()))
        );
    }

    #[test]
    fn the_lock_files_approval_narrows_and_names_itself_in_denials() {
        use crate::capdiff::{Capability, CapabilitySet};
        let requests = [
            req(
                "data",
                BindingKind::Files,
                &[Access::Read, Access::Write],
                false,
            ),
            req("meta", BindingKind::Db, &[Access::Read], false),
        ];
        let mut set = GrantSet::resolve(
            "i1",
            &requests,
            &[
                bound("data", BindingKind::Files, None),
                bound("meta", BindingKind::Db, None),
            ],
        )
        .expect("resolves");
        let approved: CapabilitySet = [(
            "data".to_string(),
            Capability {
                kind: BindingKind::Files,
                access: [Access::Read].into_iter().collect(),
            },
        )]
        .into_iter()
        .collect();
        set.limit_to(&approved, "/f/upshift.lock");
        assert!(set.check("data", BindingKind::Files, Access::Read).is_ok());
        let denied = set
            .check("data", BindingKind::Files, Access::Write)
            .expect_err("narrowed");
        assert_eq!(
            denied.to_string(),
            "binding `data` is not granted `write` (the lock file /f/upshift.lock approves only read)"
        );
        let denied = set
            .check("meta", BindingKind::Db, Access::Read)
            .expect_err("not approved at all");
        assert!(
            denied.to_string().contains("approves nothing on it"),
            "{denied}"
        );
        assert!(matches!(
            set.check("meta", BindingKind::Db, Access::Ddl),
            Err(Denial::NotGranted { .. })
        ));
    }
}
