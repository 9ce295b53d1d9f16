//! What a component imports and exports, read from its bytes without compiling or running
//! anything, and the `upshift:adapter` interface version it was built against.
//!
//! The version comes from the component's own import names (`upshift:adapter/db@0.1.0`), so it
//! cannot be misstated: the manifest's `host_api` must agree with it.

use semver::{Version, VersionReq};
use serde::Serialize;
use wasmparser::{ComponentExternalKind, ComponentTypeRef, Parser, Payload};

/// The WIT package adapters are written against.
pub const PACKAGE: &str = "upshift:adapter";

/// The `upshift:adapter` versions this host serves. Under semver a 0.x minor is a breaking
/// change (as in Cargo and wasmtime's linker), so 0.1.x adapters of any patch run here; from 1.0
/// on, adapters built against any older minor of the same major keep working.
pub const SUPPORTED_API: &str = ">=0.1.0, <0.2.0";

/// A component's top-level imports and exports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct World {
    /// Imported interfaces and functions, e.g. `upshift:adapter/db@0.1.0`, `wasi:io/streams@0.2.6`.
    pub imports: Vec<String>,
    /// Exported functions and interfaces, e.g. `plan`.
    pub exports: Vec<String>,
}

impl World {
    /// Read the top-level imports and exports of a component.
    pub fn read(wasm: &[u8]) -> Result<World, String> {
        if !Parser::is_component(wasm) {
            return Err("it is a core module, not a component; build it with `cargo build --target wasm32-wasip2`".into());
        }
        let mut world = World {
            imports: Vec::new(),
            exports: Vec::new(),
        };
        // `parse_all` walks nested modules and components inline; only depth 1 is the
        // component's own interface.
        let mut depth = 0usize;
        for payload in Parser::new(0).parse_all(wasm) {
            match payload.map_err(|e| format!("it does not parse as WebAssembly: {e}"))? {
                Payload::Version { .. } => depth += 1,
                Payload::End(_) => depth = depth.saturating_sub(1),
                Payload::ComponentImportSection(reader) if depth == 1 => {
                    for import in reader {
                        let import =
                            import.map_err(|e| format!("its import section is damaged: {e}"))?;
                        // Types (`use types.{plan}` in the world) are not capabilities.
                        if !matches!(import.ty, ComponentTypeRef::Type(_)) {
                            world.imports.push(import.name.name.to_string());
                        }
                    }
                }
                Payload::ComponentExportSection(reader) if depth == 1 => {
                    for export in reader {
                        let export =
                            export.map_err(|e| format!("its export section is damaged: {e}"))?;
                        if export.kind != ComponentExternalKind::Type {
                            world.exports.push(export.name.name.to_string());
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(world)
    }

    /// The `upshift:adapter` version the component imports, if it imports any of it. Every
    /// such import must name the same version.
    pub fn api_version(&self) -> Result<Option<Version>, String> {
        let mut found: Option<Version> = None;
        let prefix = format!("{PACKAGE}/");
        for name in self.imports.iter().filter(|n| n.starts_with(&prefix)) {
            let Some((_, version)) = name.rsplit_once('@') else {
                return Err(format!(
                    "it imports `{name}` without a version; build it against the versioned WIT package {PACKAGE}"
                ));
            };
            let version = Version::parse(version)
                .map_err(|e| format!("it imports `{name}`, whose version is not semver: {e}"))?;
            match &found {
                Some(v) if *v != version => {
                    return Err(format!(
                        "it imports {PACKAGE} at two versions ({v} and {version}); build it against one"
                    ));
                }
                _ => found = Some(version),
            }
        }
        Ok(found)
    }

    /// Check that this host serves the component's interface version and that the manifest's
    /// `host_api` states it truthfully. Runs before anything is compiled.
    pub fn check_api(&self, manifest_host_api: &str) -> Result<(), String> {
        check_host_api(manifest_host_api)?;
        if let Some(built) = self.api_version()? {
            check_host_api(&built.to_string())?;
            let claimed = Version::parse(manifest_host_api).map_err(|e| e.to_string())?;
            if claimed != built {
                return Err(format!(
                    "its manifest says host_api {claimed}, but the component imports {PACKAGE} {built}; the manifest must state the version it was built against"
                ));
            }
        }
        Ok(())
    }
}

/// Accept an `upshift:adapter` version when this host serves it (see [`SUPPORTED_API`]).
pub fn check_host_api(text: &str) -> Result<(), String> {
    let theirs =
        Version::parse(text).map_err(|e| format!("host_api `{text}` is not semver: {e}"))?;
    let supported = VersionReq::parse(SUPPORTED_API).map_err(|e| e.to_string())?;
    if supported.matches(&theirs) {
        Ok(())
    } else {
        Err(format!(
            "it targets {PACKAGE} {theirs}, but this host supports {PACKAGE} {SUPPORTED_API}; rebuild the adapter with an upshift-adapter-sdk in that range, or use an Upshift release that supports {theirs}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn world(imports: &[&str]) -> World {
        World {
            imports: imports.iter().map(|s| s.to_string()).collect(),
            exports: vec!["plan".into()],
        }
    }

    #[test]
    fn supported_range() {
        assert!(check_host_api("0.1.0").is_ok());
        assert!(check_host_api("0.1.7").is_ok());
        let err = check_host_api("0.2.0").unwrap_err();
        assert!(err.contains(">=0.1.0, <0.2.0"), "{err}");
        assert!(check_host_api("0.0.9").is_err());
        assert!(check_host_api("1.0.0").is_err());
        assert!(check_host_api("soon").is_err());
    }

    #[test]
    fn the_version_comes_from_the_imports() {
        let w = world(&[
            "wasi:io/streams@0.2.6",
            "upshift:adapter/types@0.1.0",
            "upshift:adapter/db@0.1.0",
        ]);
        assert_eq!(w.api_version().unwrap(), Some(Version::new(0, 1, 0)));
        assert!(w.check_api("0.1.0").is_ok());
        let lie = w.check_api("0.1.3").unwrap_err();
        assert!(lie.contains("imports upshift:adapter 0.1.0"), "{lie}");

        let mixed = world(&["upshift:adapter/db@0.1.0", "upshift:adapter/files@0.1.1"]);
        assert!(mixed.api_version().unwrap_err().contains("two versions"));
        let unversioned = world(&["upshift:adapter/db"]);
        assert!(unversioned.api_version().is_err());
        let newer = world(&["upshift:adapter/db@0.2.0"]);
        assert!(newer.check_api("0.2.0").unwrap_err().contains("supports"));
        assert_eq!(
            world(&["wasi:cli/stderr@0.2.6"]).api_version().unwrap(),
            None
        );
    }
}
