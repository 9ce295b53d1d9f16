//! The `manifest!` macro: an adapter declares who it is and what it needs once; the macro
//! produces both `manifest()` (what `describe` returns) and the `upshift-manifest` custom
//! section that the host and auditors read without running the adapter.

/// The `upshift:adapter` version this SDK targets, as a literal (for `concat!`).
#[doc(hidden)]
#[macro_export]
macro_rules! __host_api_literal {
    () => {
        "0.1.0"
    };
}

/// Copy a string into a fixed-size byte array at compile time (for the custom section).
#[doc(hidden)]
pub const fn manifest_bytes<const N: usize>(text: &str) -> [u8; N] {
    let bytes = text.as_bytes();
    let mut out = [0u8; N];
    let mut i = 0;
    while i < N {
        out[i] = bytes[i];
        i += 1;
    }
    out
}

#[doc(hidden)]
#[macro_export]
macro_rules! __manifest_kind {
    (db) => {
        $crate::BindingKind::Db
    };
    (files) => {
        $crate::BindingKind::Files
    };
    (service) => {
        $crate::BindingKind::Service
    };
    (http) => {
        $crate::BindingKind::Http
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __manifest_access {
    (read) => {
        $crate::Access::Read
    };
    (write) => {
        $crate::Access::Write
    };
    (ddl) => {
        $crate::Access::Ddl
    };
    (backup) => {
        $crate::Access::Backup
    };
    (restore) => {
        $crate::Access::Restore
    };
    (snapshot) => {
        $crate::Access::Snapshot
    };
    (inspect) => {
        $crate::Access::Inspect
    };
    (control) => {
        $crate::Access::Control
    };
    (switch_version) => {
        $crate::Access::SwitchVersion
    };
}

/// Declare the adapter's manifest. Produces `fn manifest() -> AdapterInfo` for `describe` and
/// embeds the same facts in the component for `upshift adapter inspect`.
///
/// ```text
/// upshift_adapter_sdk::manifest! {
///     product: "bytebase",
///     adapter_version: "0.1.0",
///     supported_versions: ">=0.1.0, <4.0.0",
///     catalog: ">=3.3.1, <=3.21.1", // optional: the releases its catalog knows
///     bindings: [
///         { name: "meta", kind: db, access: [read, backup, restore], purpose: "metadata database", optional: false },
///     ],
/// }
/// ```
#[macro_export]
macro_rules! manifest {
    (
        product: $product:literal,
        adapter_version: $av:literal,
        supported_versions: $sv:literal,
        $( catalog: $cat:literal, )?
        bindings: [ $( {
            name: $bname:literal,
            kind: $kind:ident,
            access: [ $( $acc:ident ),* $(,)? ],
            purpose: $purpose:literal,
            optional: $opt:literal $(,)?
        } ),* $(,)? ] $(,)?
    ) => {
        const __UPSHIFT_MANIFEST_TOML: &str = concat!(
            "product = ", stringify!($product), "\n",
            "adapter_version = ", stringify!($av), "\n",
            "supported_versions = ", stringify!($sv), "\n",
            $( "catalog = ", stringify!($cat), "\n", )?
            "host_api = \"", $crate::__host_api_literal!(), "\"\n",
            $(
                "\n[[bindings]]\nname = ", stringify!($bname),
                "\nkind = \"", stringify!($kind), "\"",
                "\naccess = [", $( "\"", stringify!($acc), "\", ", )* "]",
                "\npurpose = ", stringify!($purpose),
                "\noptional = ", stringify!($opt), "\n",
            )*
        );

        #[cfg(target_arch = "wasm32")]
        #[unsafe(link_section = "upshift-manifest")]
        #[used]
        static __UPSHIFT_MANIFEST: [u8; __UPSHIFT_MANIFEST_TOML.len()] =
            $crate::manifest::manifest_bytes(__UPSHIFT_MANIFEST_TOML);

        /// The adapter's manifest, as `describe` returns it.
        pub fn manifest() -> $crate::AdapterInfo {
            $crate::AdapterInfo {
                product: $product.to_string(),
                adapter_version: $av.to_string(),
                supported_versions: $sv.to_string(),
                host_api: $crate::HOST_API.to_string(),
                bindings: vec![ $(
                    $crate::BindingRequest {
                        name: $bname.to_string(),
                        kind: $crate::__manifest_kind!($kind),
                        access: vec![ $( $crate::__manifest_access!($acc) ),* ],
                        purpose: $purpose.to_string(),
                        optional: $opt,
                    }
                ),* ],
            }
        }
    };
}
