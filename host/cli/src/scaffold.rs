//! `upshift adapter new NAME`: a new adapter crate that builds into a component and passes its
//! own tests, with the guest SDK and the `upshift:adapter` WIT vendored so it builds anywhere
//! cargo can reach crates.io.

use std::path::{Path, PathBuf};

/// One file of the scaffold: where it goes and its text (placeholders not yet filled).
struct Template {
    path: &'static str,
    text: &'static str,
}

const TEMPLATES: &[Template] = &[
    Template {
        path: "Cargo.toml",
        text: include_str!("../templates/adapter/Cargo.toml.tmpl"),
    },
    Template {
        path: ".gitignore",
        text: include_str!("../templates/adapter/gitignore.tmpl"),
    },
    Template {
        path: "README.md",
        text: include_str!("../templates/adapter/README.md.tmpl"),
    },
    Template {
        path: "src/lib.rs",
        text: include_str!("../templates/adapter/src/lib.rs.tmpl"),
    },
    Template {
        path: "src/rules.rs",
        text: include_str!("../templates/adapter/src/rules.rs.tmpl"),
    },
    Template {
        path: "src/steps.rs",
        text: include_str!("../templates/adapter/src/steps.rs.tmpl"),
    },
    // The guest SDK and the WIT, laid out as in the Upshift repository so the SDK's path to
    // the WIT holds.
    Template {
        path: "upshift-sdk/adapters/sdk/Cargo.toml",
        text: include_str!("../templates/adapter/sdk-Cargo.toml.tmpl"),
    },
    Template {
        path: "upshift-sdk/adapters/sdk/src/lib.rs",
        text: include_str!("../../../adapters/sdk/src/lib.rs"),
    },
    Template {
        path: "upshift-sdk/adapters/sdk/src/live.rs",
        text: include_str!("../../../adapters/sdk/src/live.rs"),
    },
    Template {
        path: "upshift-sdk/adapters/sdk/src/manifest.rs",
        text: include_str!("../../../adapters/sdk/src/manifest.rs"),
    },
    Template {
        path: "upshift-sdk/adapters/sdk/src/rules.rs",
        text: include_str!("../../../adapters/sdk/src/rules.rs"),
    },
    Template {
        path: "upshift-sdk/adapters/sdk/src/steps.rs",
        text: include_str!("../../../adapters/sdk/src/steps.rs"),
    },
    Template {
        path: "upshift-sdk/adapters/sdk/src/versions.rs",
        text: include_str!("../../../adapters/sdk/src/versions.rs"),
    },
    Template {
        path: "upshift-sdk/wit/adapter.wit",
        text: include_str!("../../../wit/adapter.wit"),
    },
];

/// Why a scaffold was not written.
#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    /// The product name cannot be used.
    #[error(
        "`{0}` is not a usable product name: use lowercase letters, digits and `-`, starting with a letter (e.g. `acme-db`)"
    )]
    Name(String),
    /// The directory is in the way.
    #[error(
        "{0} already exists and is not empty; choose another --dir, or remove it first (nothing was written)"
    )]
    Exists(PathBuf),
    /// Writing failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// What was written.
#[derive(Debug, Clone)]
pub struct Scaffold {
    /// The crate's directory.
    pub dir: PathBuf,
    /// The crate's package name (`<product>-adapter`).
    pub package: String,
    /// The component's file name once built (`<product>_adapter.wasm`).
    pub component: String,
    /// Files written, relative to `dir`.
    pub files: Vec<&'static str>,
}

fn usable(name: &str) -> bool {
    name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// Write a new adapter crate for `product` into `dir` (which must not exist, or be empty).
pub fn write(dir: &Path, product: &str) -> Result<Scaffold, ScaffoldError> {
    if !usable(product) {
        return Err(ScaffoldError::Name(product.to_string()));
    }
    let occupied = std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some());
    if occupied || dir.is_file() {
        return Err(ScaffoldError::Exists(dir.to_path_buf()));
    }
    let package = format!("{product}-adapter");
    let lib = package.replace('-', "_");
    for t in TEMPLATES {
        let path = dir.join(t.path);
        let text = t
            .text
            .replace("{{product}}", product)
            .replace("{{crate}}", &package)
            .replace("{{lib}}", &lib);
        let written = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&path, text));
        written.map_err(|source| ScaffoldError::Write { path, source })?;
    }
    Ok(Scaffold {
        dir: dir.to_path_buf(),
        component: format!("{lib}.wasm"),
        package,
        files: TEMPLATES.iter().map(|t| t.path).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_directories_are_checked_before_writing() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["Acme", "9lives", "a_b", "acme-", "", "../x"] {
            assert!(matches!(
                write(&dir.path().join("x"), bad),
                Err(ScaffoldError::Name(_))
            ));
        }
        std::fs::write(dir.path().join("keep.txt"), "mine").unwrap();
        assert!(matches!(
            write(dir.path(), "acme"),
            Err(ScaffoldError::Exists(_))
        ));
        assert_eq!(
            std::fs::read_to_string(dir.path().join("keep.txt")).unwrap(),
            "mine"
        );
        let made = write(&dir.path().join("acme"), "acme-db").unwrap();
        assert_eq!(made.package, "acme-db-adapter");
        assert_eq!(made.component, "acme_db_adapter.wasm");
        let lib = std::fs::read_to_string(dir.path().join("acme/src/lib.rs")).unwrap();
        assert!(lib.contains("product: \"acme-db\""));
        assert!(!lib.contains("{{"));
    }
}
