//! Host-side bindings generated from `wit/adapter.wit`.
//!
//! Every import is async (capabilities do I/O) and trappable (a host failure that is not the
//! adapter's business ends the call). Generated types derive serde so plans can be printed,
//! journaled and read back.

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "upshift:adapter/adapter",
    imports: { default: async | trappable },
    exports: { default: async },
    additional_derives: [serde::Serialize, serde::Deserialize],
});

pub use self::upshift::adapter::types::{
    Access as WitAccess, Action, BackupInfo, BackupMethod, BindingKind as WitBindingKind,
    BindingRequest as WitBindingRequest, CapError, CustomAction, DbBackupAction, DbRestoreAction,
    Fact, HttpCheckAction, NamespaceColumn, RestoreTarget, Step, SwitchAction, Value, WaitAction,
};

use upshift_model::grants::{Access, BindingKind, BindingRequest};

impl From<WitAccess> for Access {
    fn from(a: WitAccess) -> Access {
        match a {
            WitAccess::Read => Access::Read,
            WitAccess::Write => Access::Write,
            WitAccess::Ddl => Access::Ddl,
            WitAccess::Backup => Access::Backup,
            WitAccess::Restore => Access::Restore,
            WitAccess::Snapshot => Access::Snapshot,
            WitAccess::Inspect => Access::Inspect,
            WitAccess::Control => Access::Control,
            WitAccess::SwitchVersion => Access::SwitchVersion,
        }
    }
}

impl From<WitBindingKind> for BindingKind {
    fn from(k: WitBindingKind) -> BindingKind {
        match k {
            WitBindingKind::Db => BindingKind::Db,
            WitBindingKind::Files => BindingKind::Files,
            WitBindingKind::Service => BindingKind::Service,
            WitBindingKind::Http => BindingKind::Http,
        }
    }
}

impl From<&WitBindingRequest> for BindingRequest {
    fn from(r: &WitBindingRequest) -> BindingRequest {
        BindingRequest {
            name: r.name.clone(),
            kind: r.kind.into(),
            access: r.access.iter().map(|a| Access::from(*a)).collect(),
            purpose: r.purpose.clone(),
            optional: r.optional,
        }
    }
}

impl From<crate::CapError> for CapError {
    fn from(e: crate::CapError) -> CapError {
        match e {
            crate::CapError::Denied(m) => CapError::Denied(m),
            crate::CapError::UnknownBinding(m) => CapError::UnknownBinding(m),
            crate::CapError::Invalid(m) => CapError::Invalid(m),
            crate::CapError::Failed(m) => CapError::Failed(m),
        }
    }
}
