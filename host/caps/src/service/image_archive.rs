//! What an image tar (`docker save`, or an OCI image layout) would name, read before anything
//! is loaded: the tags in `manifest.json` (Docker), the `org.opencontainers.image.ref.name` and
//! `io.containerd.image.name` annotations in `index.json` (OCI) and the legacy `repositories`
//! file, each with the image ids it may carry. The tar is streamed with the `tar` crate; only
//! those small files are read, each up to [`MAX_INDEX_BYTES`].

use std::collections::BTreeMap;
use std::io::Read;

use serde::Deserialize;

/// The largest `manifest.json` / `index.json` / `repositories` read (a real one is a few KB).
pub const MAX_INDEX_BYTES: u64 = 1024 * 1024;

/// Why a tar cannot be loaded; the text says whose fault it is and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ArchiveError(String);

fn refuse(text: impl Into<String>) -> ArchiveError {
    ArchiveError(text.into())
}

/// A reference the tar names, normalised as the engine stores it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct NamedRef {
    /// As written in the tar.
    pub written: String,
    /// `domain/path` (`docker.io/library/x` for `x`).
    pub repository: String,
    /// `domain/path:tag` (`:latest` when none is written), what the engine would (re)point.
    pub tagged: String,
}

/// One name the tar would give, however often and however it is written there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarName {
    /// The name, normalised (as first written).
    pub named: NamedRef,
    /// The image ids (`sha256:…`) the tar gives it.
    pub ids: Vec<String>,
}

/// What the tar would load.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ArchiveNames {
    /// Each name, by its normalised `repository:tag`.
    pub names: BTreeMap<String, TarName>,
}

/// `reference` normalised as Docker does (`x:1` → `docker.io/library/x:1`); an invalid one
/// (uppercase in the repository, empty parts, odd characters) is refused.
pub fn normalize(reference: &str) -> Result<NamedRef, ArchiveError> {
    let invalid = |why: &str| {
        refuse(format!(
            "`{}` is not a valid image reference ({why})",
            reference.escape_debug()
        ))
    };
    let name_and_tag = reference.split('@').next().unwrap_or(reference);
    if name_and_tag.is_empty() {
        return Err(invalid("empty"));
    }
    let (name, tag) = match name_and_tag.rfind(':') {
        Some(i) if !name_and_tag[i..].contains('/') => {
            (&name_and_tag[..i], Some(&name_and_tag[i + 1..]))
        }
        _ => (name_and_tag, None),
    };
    let (domain, path) = match name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (first.to_string(), rest.to_string())
        }
        _ => ("docker.io".to_string(), name.to_string()),
    };
    let domain = if domain == "index.docker.io" {
        "docker.io".to_string()
    } else {
        domain
    };
    let path = if domain == "docker.io" && !path.contains('/') {
        format!("library/{path}")
    } else {
        path
    };
    let path_ok = !path.is_empty()
        && path.split('/').all(|part| {
            !part.is_empty()
                && part.chars().all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')
                })
        });
    if !path_ok {
        return Err(invalid(
            "a repository is lowercase letters, digits, `.`, `_`, `-` and `/`",
        ));
    }
    let (host, port) = domain.split_once(':').unwrap_or((&domain, "0"));
    let domain_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'))
        && !port.is_empty()
        && port.chars().all(|c| c.is_ascii_digit());
    if !domain_ok {
        return Err(invalid("bad registry host"));
    }
    let tag = tag.unwrap_or("latest");
    let tag_ok = !tag.is_empty()
        && tag.len() <= 128
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !tag_ok {
        return Err(invalid("a tag is letters, digits, `.`, `_` and `-`"));
    }
    let repository = format!("{domain}/{path}");
    Ok(NamedRef {
        written: reference.to_string(),
        tagged: format!("{repository}:{tag}"),
        repository,
    })
}

#[derive(Deserialize)]
struct ManifestEntry {
    #[serde(rename = "Config", default)]
    config: Option<String>,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct OciIndex {
    #[serde(default)]
    manifests: Vec<OciDescriptor>,
}

#[derive(Deserialize)]
struct OciDescriptor {
    #[serde(default)]
    digest: Option<String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// The image id a manifest.json `Config` path gives: `blobs/sha256/<hex>` or `<hex>.json`.
fn config_id(config: &str) -> Option<String> {
    let file = config.rsplit('/').next()?;
    let hex = file.strip_suffix(".json").unwrap_or(file);
    (hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()))
        .then(|| format!("sha256:{}", hex.to_ascii_lowercase()))
}

impl ArchiveNames {
    fn add(&mut self, reference: &str, id: Option<String>) -> Result<(), ArchiveError> {
        let named = normalize(reference)?;
        let ids = &mut self
            .names
            .entry(named.tagged.clone())
            .or_insert(TarName {
                named,
                ids: Vec::new(),
            })
            .ids;
        if let Some(id) = id
            && !ids.contains(&id)
        {
            ids.push(id);
        }
        Ok(())
    }

    fn manifest(&mut self, bytes: &[u8]) -> Result<(), ArchiveError> {
        let entries: Vec<ManifestEntry> = serde_json::from_slice(bytes).map_err(|e| {
            refuse(format!(
                "its manifest.json is not a Docker image manifest: {e}"
            ))
        })?;
        for entry in entries {
            let id = entry.config.as_deref().and_then(config_id);
            for tag in entry.repo_tags.unwrap_or_default() {
                self.add(&tag, id.clone())?;
            }
        }
        Ok(())
    }

    fn index(&mut self, bytes: &[u8]) -> Result<(), ArchiveError> {
        let index: OciIndex = serde_json::from_slice(bytes)
            .map_err(|e| refuse(format!("its index.json is not an OCI image index: {e}")))?;
        for m in index.manifests {
            let full = m.annotations.get("io.containerd.image.name");
            let ref_name = m.annotations.get("org.opencontainers.image.ref.name");
            if let Some(full) = full {
                self.add(full, m.digest.clone())?;
            }
            // Beside a full name, `ref.name` is just its tag; alone, it is taken as a name
            // (an engine may tag the image with it).
            if let Some(r) = ref_name
                && (full.is_none() || r.contains('/') || r.contains(':'))
            {
                self.add(r, m.digest.clone())?;
            }
        }
        Ok(())
    }

    fn repositories(&mut self, bytes: &[u8]) -> Result<(), ArchiveError> {
        let repos: BTreeMap<String, BTreeMap<String, String>> = serde_json::from_slice(bytes)
            .map_err(|e| refuse(format!("its `repositories` file is not valid: {e}")))?;
        for (repo, tags) in repos {
            for (tag, id) in tags {
                let id = (id.len() == 64).then(|| format!("sha256:{id}"));
                self.add(&format!("{repo}:{tag}"), id)?;
            }
        }
        Ok(())
    }
}

/// Read the names an image tar would load, streaming it (`reader` is left wherever the read
/// stopped; rewind it before loading). A tar that is not an image archive, an index file over
/// [`MAX_INDEX_BYTES`], one written twice or not as a plain file, and a tar naming no image at
/// all are refused.
pub fn read_names(reader: impl Read) -> Result<ArchiveNames, ArchiveError> {
    let mut archive = tar::Archive::new(reader);
    let mut names = ArchiveNames::default();
    let mut seen: Vec<&'static str> = Vec::new();
    let entries = archive
        .entries()
        .map_err(|e| refuse(format!("it is not a tar archive: {e}")))?;
    for entry in entries {
        let mut entry =
            entry.map_err(|e| refuse(format!("it is not a readable tar archive: {e}")))?;
        let path = entry
            .path()
            .map_err(|e| refuse(format!("it holds an unreadable entry name: {e}")))?
            .to_string_lossy()
            .into_owned();
        let path = path.trim_start_matches("./");
        let which = match path {
            "manifest.json" => "manifest.json",
            "index.json" => "index.json",
            "repositories" => "repositories",
            _ => continue,
        };
        if seen.contains(&which) {
            return Err(refuse(format!(
                "it holds {which} twice (which one the engine reads is not certain)"
            )));
        }
        seen.push(which);
        if !entry.header().entry_type().is_file() {
            return Err(refuse(format!("its {which} is not a plain file")));
        }
        let size = entry.header().size().unwrap_or(u64::MAX);
        if size > MAX_INDEX_BYTES {
            return Err(refuse(format!(
                "its {which} is {size} bytes, over the limit of {MAX_INDEX_BYTES}"
            )));
        }
        let mut bytes = Vec::new();
        (&mut entry)
            .take(MAX_INDEX_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| refuse(format!("cannot read its {which}: {e}")))?;
        match which {
            "manifest.json" => names.manifest(&bytes)?,
            "index.json" => names.index(&bytes)?,
            _ => names.repositories(&bytes)?,
        }
    }
    if !seen.contains(&"manifest.json") && !seen.contains(&"index.json") {
        return Err(refuse(
            "it is not an image archive (no manifest.json or index.json); make it with `docker save`",
        ));
    }
    if names.names.is_empty() {
        return Err(refuse(
            "it names no image (no tag in manifest.json or index.json), so what it loads could not be checked; save it by name (`docker save repo:tag`)",
        ));
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder
                .append_data(&mut header, name, *data)
                .expect("append");
        }
        builder.into_inner().expect("tar")
    }

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn references_normalise_as_the_engine_stores_them() {
        let n = normalize("other:1").expect("valid");
        assert_eq!(n.repository, "docker.io/library/other");
        assert_eq!(n.tagged, "docker.io/library/other:1");
        assert_eq!(
            normalize("docker.io/library/other:1")
                .expect("valid")
                .tagged,
            n.tagged
        );
        assert_eq!(
            normalize("index.docker.io/library/other:1")
                .expect("valid")
                .tagged,
            n.tagged
        );
        assert_eq!(
            normalize("upshift-test/kwdb").expect("valid").tagged,
            "docker.io/upshift-test/kwdb:latest"
        );
        assert_eq!(
            normalize("localhost:5000/a/b:2@sha256:abc")
                .expect("valid")
                .tagged,
            "localhost:5000/a/b:2"
        );
        for bad in [
            "Other:1",
            "UPSHIFT/kwdb:1",
            "a//b:1",
            "a:b:c/d",
            "",
            "x:1 2",
            "x:",
        ] {
            assert!(normalize(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_come_from_the_manifest_the_index_and_repositories() {
        let manifest =
            format!(r#"[{{"Config":"blobs/sha256/{ID}","RepoTags":["a/b:1","c:2"],"Layers":[]}}]"#);
        let index = r#"{"schemaVersion":2,"manifests":[{"digest":"sha256:ff","annotations":{"io.containerd.image.name":"docker.io/a/b:1","org.opencontainers.image.ref.name":"1"}},{"annotations":{"org.opencontainers.image.ref.name":"other:9"}}]}"#;
        let tar = tar_of(&[
            ("./manifest.json", manifest.as_bytes()),
            ("index.json", index.as_bytes()),
        ]);
        let names = read_names(&tar[..]).expect("read");
        let tagged: Vec<(&str, &Vec<String>)> = names
            .names
            .iter()
            .map(|(tagged, n)| (tagged.as_str(), &n.ids))
            .collect();
        assert_eq!(
            tagged,
            [
                (
                    "docker.io/a/b:1",
                    &vec![format!("sha256:{ID}"), "sha256:ff".to_string()]
                ),
                ("docker.io/library/c:2", &vec![format!("sha256:{ID}")]),
                ("docker.io/library/other:9", &vec![]),
            ]
        );
    }

    #[test]
    fn tars_that_cannot_be_checked_are_refused() {
        let untagged = format!(r#"[{{"Config":"{ID}.json","RepoTags":null,"Layers":[]}}]"#);
        let big = vec![b' '; (MAX_INDEX_BYTES + 1) as usize];
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("not a tar", b"hello".repeat(200), "not"),
            (
                "no manifest",
                tar_of(&[("x", b"1")]),
                "not an image archive",
            ),
            (
                "untagged",
                tar_of(&[("manifest.json", untagged.as_bytes())]),
                "names no image",
            ),
            (
                "manifest twice",
                tar_of(&[("manifest.json", b"[]"), ("./manifest.json", b"[]")]),
                "twice",
            ),
            (
                "huge manifest",
                tar_of(&[("manifest.json", &big)]),
                "over the limit",
            ),
            (
                "uppercase",
                tar_of(&[("manifest.json", br#"[{"RepoTags":["Other:1"]}]"#)]),
                "not a valid image reference",
            ),
        ];
        for (what, tar, expected) in cases {
            let err = read_names(&tar[..]).expect_err(what).to_string();
            assert!(err.contains(expected), "{what}: {err}");
        }
    }
}
