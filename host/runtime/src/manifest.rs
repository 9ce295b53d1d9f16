//! The adapter manifest: what an adapter is and what it asks for, embedded in the component as
//! the custom section `upshift-manifest` (TOML), so it can be read and audited without running
//! anything. At load the host checks that `describe` returns the same thing: a lying `describe`
//! is rejected.

use semver::{Version, VersionReq};
use serde::{Deserialize, Serialize};
use wasmparser::{Parser, Payload};

use super::bindings::AdapterInfo;
use upshift_model::binding::valid_binding_name;
use upshift_model::grants::BindingRequest;

/// Name of the custom section holding the manifest.
pub const SECTION: &str = "upshift-manifest";

/// The `upshift:adapter` version this host's WIT is (it serves [`super::world::SUPPORTED_API`]).
pub const HOST_API: &str = "0.1.0";

/// An adapter's declared identity and needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Product name.
    pub product: String,
    /// The adapter's own version.
    pub adapter_version: String,
    /// Product versions it handles (semver requirement).
    pub supported_versions: String,
    /// `upshift:adapter` version it targets.
    pub host_api: String,
    /// The releases its catalog knows, as a semver requirement (e.g. `>=3.3.1, <=3.21.1`):
    /// targets outside it are refused unless the operator passes `--allow-unknown`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catalog: Option<String>,
    /// Bindings it needs.
    #[serde(default)]
    pub bindings: Vec<BindingRequest>,
}

fn find_section(wasm: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut found = None;
    for payload in Parser::new(0).parse_all(wasm) {
        let payload = payload.map_err(|e| format!("it does not parse as WebAssembly: {e}"))?;
        if let Payload::CustomSection(reader) = payload
            && reader.name() == SECTION
        {
            if found.is_some() {
                return Err(format!("it has more than one `{SECTION}` section"));
            }
            found = Some(reader.data().to_vec());
        }
    }
    Ok(found)
}

impl Manifest {
    /// Read and validate the manifest embedded in a component.
    pub fn from_component(wasm: &[u8]) -> Result<Manifest, String> {
        if !wasmparser::Parser::is_component(wasm) {
            return Err("it is a core module, not a component; build it with `cargo build --target wasm32-wasip2`".into());
        }
        let bytes = find_section(wasm)?.ok_or_else(|| {
            format!("it has no `{SECTION}` section; declare the adapter with upshift_adapter_sdk::manifest!")
        })?;
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| format!("its `{SECTION}` section is not UTF-8"))?;
        let manifest: Manifest = toml::from_str(text)
            .map_err(|e| format!("its `{SECTION}` section does not parse: {e}"))?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// Check the manifest's own consistency.
    pub fn validate(&self) -> Result<(), String> {
        let ok_name = !self.product.is_empty()
            && self.product.len() <= 64
            && self
                .product
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !ok_name {
            return Err(format!(
                "product name `{}` must be lowercase letters, digits and `-`",
                self.product
            ));
        }
        Version::parse(&self.adapter_version).map_err(|e| {
            format!(
                "adapter_version `{}` is not semver: {e}",
                self.adapter_version
            )
        })?;
        if let Some(catalog) = &self.catalog {
            VersionReq::parse(catalog)
                .map_err(|e| format!("catalog `{catalog}` is not a semver requirement: {e}"))?;
        }
        VersionReq::parse(&self.supported_versions).map_err(|e| {
            format!(
                "supported_versions `{}` is not a semver requirement: {e}",
                self.supported_versions
            )
        })?;
        // Whether this host serves it is decided at load ([`super::world::World::check_api`]),
        // so `inspect` can still show an adapter built for another host.
        Version::parse(&self.host_api)
            .map_err(|e| format!("host_api `{}` is not semver: {e}", self.host_api))?;
        if self.bindings.len() > 32 {
            return Err(format!(
                "it declares {} bindings; at most 32 are allowed",
                self.bindings.len()
            ));
        }
        for (i, b) in self.bindings.iter().enumerate() {
            if !valid_binding_name(&b.name) {
                return Err(format!(
                    "binding name `{}` is not lowercase letters, digits and `-`",
                    b.name
                ));
            }
            if self.bindings[..i].iter().any(|o| o.name == b.name) {
                return Err(format!("binding `{}` is declared twice", b.name));
            }
            if b.access.is_empty() {
                return Err(format!("binding `{}` requests no access", b.name));
            }
            for a in &b.access {
                if !b.kind.valid_access().contains(a) {
                    return Err(format!(
                        "binding `{}` requests `{a}`, which {} bindings do not have",
                        b.name, b.kind
                    ));
                }
            }
            if b.purpose.len() > 300 {
                return Err(format!(
                    "binding `{}` has a purpose longer than 300 characters",
                    b.name
                ));
            }
        }
        Ok(())
    }

    /// Whether `describe` returned exactly what the manifest says.
    pub fn check_matches(&self, described: &AdapterInfo) -> Result<(), String> {
        let mut theirs: Vec<BindingRequest> = described
            .bindings
            .iter()
            .map(BindingRequest::from)
            .collect();
        let mut ours = self.bindings.clone();
        theirs.sort_by(|a, b| a.name.cmp(&b.name));
        ours.sort_by(|a, b| a.name.cmp(&b.name));
        let same = described.product == self.product
            && described.adapter_version == self.adapter_version
            && described.supported_versions == self.supported_versions
            && described.host_api == self.host_api
            && theirs == ours;
        if same {
            Ok(())
        } else {
            Err(format!(
                "`describe` does not match the embedded manifest (manifest: product {} {} bindings [{}]; describe: product {} {} bindings [{}]); the adapter is lying about what it needs and will not run",
                self.product,
                self.adapter_version,
                summary(&ours),
                described.product,
                described.adapter_version,
                summary(&theirs)
            ))
        }
    }
}

fn summary(bindings: &[BindingRequest]) -> String {
    bindings
        .iter()
        .map(|b| {
            let access: Vec<&str> = b.access.iter().map(|a| a.name()).collect();
            format!("{}:{}({})", b.name, b.kind, access.join("+"))
        })
        .collect::<Vec<_>>()
        .join(", ")
}
