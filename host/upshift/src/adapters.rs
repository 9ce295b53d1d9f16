//! First-party adapters bundled into the binary (built by `build.rs`), and loading adapters
//! from component files.

use std::path::Path;

/// A bundled adapter: product name and component bytes.
pub struct Bundled {
    /// Product name used in fleet files (`product = "…"`).
    pub product: &'static str,
    /// The component.
    pub wasm: &'static [u8],
}

/// The adapters shipped inside this binary.
pub const BUNDLED: &[Bundled] = &[
    Bundled {
        product: "bytebase",
        wasm: include_bytes!(concat!(env!("UPSHIFT_ADAPTER_DIR"), "/bytebase.wasm")),
    },
    Bundled {
        product: "kwdb",
        wasm: include_bytes!(concat!(env!("UPSHIFT_ADAPTER_DIR"), "/kwdb.wasm")),
    },
    Bundled {
        product: "openmetadata",
        wasm: include_bytes!(concat!(env!("UPSHIFT_ADAPTER_DIR"), "/openmetadata.wasm")),
    },
    Bundled {
        product: "devlake",
        wasm: include_bytes!(concat!(env!("UPSHIFT_ADAPTER_DIR"), "/devlake.wasm")),
    },
];

/// The bundled adapter for `product`.
pub fn bundled(product: &str) -> Option<&'static Bundled> {
    BUNDLED.iter().find(|b| b.product == product)
}

/// Names of the bundled products, for messages.
pub fn bundled_names() -> String {
    BUNDLED
        .iter()
        .map(|b| b.product)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Directory holding the components built by `build.rs` (bundled and test adapters).
pub const BUILT_DIR: &str = env!("UPSHIFT_ADAPTER_DIR");

/// Read a component file, with an operator-readable error.
pub fn read_file(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read adapter {}: {e}", path.display()))
}

/// The bytes of the adapter a fleet instance names, with a label for messages.
pub fn resolve(adapter: &crate::fleet::AdapterRef) -> Result<(String, Vec<u8>), String> {
    match adapter {
        crate::fleet::AdapterRef::Bundled(product) => bundled(product)
            .map(|b| (product.clone(), b.wasm.to_vec()))
            .ok_or_else(|| {
                format!(
                    "no bundled adapter for product `{product}` (bundled: {}); use `adapter = \"path.wasm\"` for others",
                    bundled_names()
                )
            }),
        crate::fleet::AdapterRef::File(path) => Ok((
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| path.display().to_string()),
            read_file(path)?,
        )),
    }
}
