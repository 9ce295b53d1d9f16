//! `upshift adapter inspect|diff` and `upshift lock`: what an adapter is and may do, read from
//! its bytes without running it, and the fleet's approvals of it.

use std::path::{Path, PathBuf};

use anyhow::Context;
use upshift::capdiff::{self, Change};
use upshift::fleet::Fleet;
use upshift::lockfile::{LockFile, LockedAdapter, source_key};
use upshift::runtime::Manifest;
use upshift::runtime::world::{self, World};

use crate::{Exit, print_json, usage};

/// One line on stdout: what it quotes from a component, its manifest, a signature file or the
/// fleet file has its control characters made visible (`ui::v`), and secrets are masked.
macro_rules! say {
    ($($arg:tt)*) => {
        crate::out(&format!("{}\n", crate::ui::v(&format!($($arg)*))))
    };
}

/// An adapter named on the command line, read and described without compiling it.
struct Described {
    label: String,
    path: Option<std::path::PathBuf>,
    wasm: Vec<u8>,
    digest: String,
    manifest: Manifest,
    world: World,
}

/// A component file, or the name of a bundled adapter.
fn describe(arg: &str) -> Result<Described, Exit> {
    let (label, path, wasm) = if Path::new(arg).exists() {
        (
            arg.to_string(),
            Some(Path::new(arg).to_path_buf()),
            std::fs::read(arg).with_context(|| format!("cannot read {arg}"))?,
        )
    } else if let Some(b) = upshift::adapters::bundled(arg) {
        (format!("bundled:{arg}"), None, b.wasm.to_vec())
    } else {
        return Err(usage(format!(
            "`{arg}` is neither a file nor a bundled adapter ({})",
            upshift::adapters::bundled_names()
        )));
    };
    let manifest = Manifest::from_component(&wasm)
        .map_err(|reason| usage(format!("{label} is not a usable adapter: {reason}")))?;
    let world = World::read(&wasm)
        .map_err(|reason| usage(format!("{label} is not a usable adapter: {reason}")))?;
    Ok(Described {
        digest: upshift::runtime::digest(&wasm),
        label,
        path,
        wasm,
        manifest,
        world,
    })
}

/// The fleet file, when there is one to consult (inspect works without it).
fn optional_fleet(fleet: &Path) -> Option<Fleet> {
    fleet.exists().then(|| Fleet::load(fleet).ok()).flatten()
}

/// `upshift adapter inspect FILE|NAME`.
pub fn inspect(arg: &str, fleet: &Path, json: bool) -> Result<u8, Exit> {
    let d = describe(arg)?;
    let api = d.world.api_version().ok().flatten();
    let api_check = d.world.check_api(&d.manifest.host_api);
    let signatures = match &d.path {
        Some(p) => upshift::signing::signatures_of(p, &d.wasm)?,
        None => Vec::new(),
    };
    let fleet = optional_fleet(fleet);
    let trusted_as = |key: &str| -> Option<String> {
        let policy = fleet.as_ref()?.trust.as_ref()?;
        policy
            .keys
            .iter()
            .find(|(_, k)| k.trim().eq_ignore_ascii_case(key))
            .map(|(name, _)| name.clone())
    };
    // Database bindings of this adapter's instances that accept a privileged role.
    let privileged: Vec<String> = fleet
        .as_ref()
        .map(|f| {
            f.instances
                .iter()
                .filter(|i| match &i.adapter {
                    upshift::fleet::AdapterRef::File(p) => d.path.as_deref().is_some_and(|dp| {
                        std::fs::canonicalize(dp).ok() == std::fs::canonicalize(p).ok()
                    }),
                    upshift::fleet::AdapterRef::Bundled(name) => {
                        d.path.is_none() && d.label == format!("bundled:{name}")
                    }
                })
                .flat_map(|i| {
                    i.db.iter().filter(|(_, b)| b.privileged).map(|(name, _)| {
                        format!(
                            "instance `{}`: binding `{name}` may connect as a privileged role (privileged = true)",
                            i.name
                        )
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    if json {
        let sigs: Vec<serde_json::Value> = signatures
            .iter()
            .map(|s| {
                serde_json::json!({
                    "signer": s.signer, "key": s.key, "valid": s.valid,
                    "trusted_as": trusted_as(&s.key),
                })
            })
            .collect();
        print_json(&serde_json::json!({
            "file": d.label,
            "sha256": d.digest,
            "size_bytes": d.wasm.len(),
            "manifest": d.manifest,
            "world": d.world,
            "host_api": {
                "built_against": api.as_ref().map(ToString::to_string),
                "supported": world::SUPPORTED_API,
                "compatible": api_check.is_ok(),
            },
            "signatures": sigs,
            "privileged": privileged,
        }))?;
        return Ok(0);
    }
    say!("adapter      {}", d.label);
    say!("sha256       {}", d.digest);
    say!("size         {} bytes", d.wasm.len());
    say!(
        "product      {} (adapter {})",
        d.manifest.product,
        d.manifest.adapter_version
    );
    say!("versions     {}", d.manifest.supported_versions);
    if let Some(catalog) = &d.manifest.catalog {
        say!(
            "catalog      {catalog} (releases it knows; others are refused unless --allow-unknown)"
        );
    }
    say!(
        "host API     {} ({}; this host supports {})",
        d.manifest.host_api,
        match &api_check {
            Ok(()) => "compatible".to_string(),
            Err(e) => format!("NOT compatible: {e}"),
        },
        world::SUPPORTED_API
    );
    say!("world");
    let (wasi, own): (Vec<&String>, Vec<&String>) =
        d.world.imports.iter().partition(|i| i.starts_with("wasi:"));
    for import in own {
        say!("  import   {import}");
    }
    if !wasi.is_empty() {
        let names: Vec<&str> = wasi.iter().map(|i| i.trim_start_matches("wasi:")).collect();
        say!(
            "  import   wasi: {} (WASI plumbing only: the sandbox gives it no files, environment variables or network)",
            names.join(", ")
        );
    }
    for export in &d.world.exports {
        say!("  export   {export}");
    }
    say!("bindings");
    for b in &d.manifest.bindings {
        let access: Vec<&str> = b.access.iter().map(|a| a.name()).collect();
        say!(
            "  {:<8} {:<8} {:<32} {}{}",
            b.name,
            b.kind.name(),
            access.join(", "),
            b.purpose,
            if b.optional { " (optional)" } else { "" }
        );
    }
    for p in &privileged {
        println!("privileged   {p}");
    }
    match (&d.path, signatures.is_empty()) {
        (None, _) => say!("signatures   none needed (bundled in this upshift binary)"),
        (Some(p), true) => say!(
            "signatures   none ({} not found)",
            upshift::signing::signature_path(p).display()
        ),
        (Some(_), false) => {
            say!("signatures");
            for s in &signatures {
                say!(
                    "  {:<16} key {}…  {}{}",
                    s.signer,
                    s.key.get(..16).unwrap_or(&s.key),
                    if s.valid {
                        "valid"
                    } else {
                        "INVALID for these bytes"
                    },
                    trusted_as(&s.key)
                        .map(|n| format!(", trusted as `{n}`"))
                        .unwrap_or_default()
                );
            }
        }
    }
    Ok(0)
}

/// `upshift adapter diff OLD NEW`: exit 1 when NEW asks for more than OLD.
pub fn diff(old: &str, new: &str, json: bool) -> Result<u8, Exit> {
    let (old, new) = (describe(old)?, describe(new)?);
    let changes = capdiff::diff(
        &capdiff::capabilities(&old.manifest.bindings),
        &capdiff::capabilities(&new.manifest.bindings),
    );
    let widens = changes.iter().any(Change::widens);
    let added_imports: Vec<&String> = new
        .world
        .imports
        .iter()
        .filter(|i| !old.world.imports.contains(i))
        .collect();
    let removed_imports: Vec<&String> = old
        .world
        .imports
        .iter()
        .filter(|i| !new.world.imports.contains(i))
        .collect();
    let code = u8::from(widens);
    if json {
        print_json(&serde_json::json!({
            "old": {"file": old.label, "sha256": old.digest, "manifest": old.manifest},
            "new": {"file": new.label, "sha256": new.digest, "manifest": new.manifest},
            "capabilities": changes,
            "imports": {"added": added_imports, "removed": removed_imports},
            "widens": widens,
        }))?;
        return Ok(code);
    }
    for (tag, d) in [("old", &old), ("new", &new)] {
        say!(
            "{tag}  {}  {} {}  sha256 {}",
            d.label,
            d.manifest.product,
            d.manifest.adapter_version,
            d.digest
        );
    }
    if old.digest == new.digest {
        say!("identical components");
        return Ok(0);
    }
    let (om, nm) = (&old.manifest, &new.manifest);
    for (what, a, b) in [
        ("product", &om.product, &nm.product),
        (
            "product versions",
            &om.supported_versions,
            &nm.supported_versions,
        ),
        ("host API", &om.host_api, &nm.host_api),
    ] {
        if a != b {
            say!("{what}: {a} → {b}");
        }
    }
    if changes.is_empty() {
        say!("capabilities: unchanged");
    } else {
        say!("capabilities:");
        for c in &changes {
            say!("  {c}");
        }
    }
    for i in &added_imports {
        say!("import added:   {i}");
    }
    for i in &removed_imports {
        say!("import removed: {i}");
    }
    if widens {
        say!(
            "verdict: NEW asks for more than OLD; a fleet whose upshift.lock approved OLD refuses NEW until `upshift lock --approve`"
        );
    } else {
        say!("verdict: NEW asks for nothing OLD did not");
    }
    Ok(code)
}

/// One adapter of the fleet as `upshift lock` sees it.
struct Pending {
    entry: LockedAdapter,
    status: String,
    settled: bool,
}

/// `upshift lock [--approve]`: show (and with `--approve`, record) the fleet's adapters.
pub fn lock(fleet_path: &Path, approve: bool, json: bool) -> Result<u8, Exit> {
    let fleet = Fleet::load(fleet_path)?;
    let dir = fleet_path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let lock_path = dir.join(upshift::lockfile::FILE_NAME);
    let existing = fleet.lock.as_deref();
    let mut pending: Vec<Pending> = Vec::new();
    for instance in &fleet.instances {
        let source = source_key(&instance.adapter, &dir);
        if pending.iter().any(|p| p.entry.source == source) {
            continue;
        }
        let (label, wasm) = upshift::adapters::resolve(&instance.adapter).map_err(usage)?;
        if let (upshift::fleet::AdapterRef::File(path), Some(policy)) =
            (&instance.adapter, &instance.trust)
        {
            upshift::signing::verify(path, &wasm, policy).map_err(|e| {
                usage(format!(
                    "not trusted, so not approved: {e}\nfix: have it signed as the [trust] policy requires"
                ))
            })?;
        }
        let manifest = Manifest::from_component(&wasm)
            .map_err(|reason| usage(format!("{label} is not a usable adapter: {reason}")))?;
        let mut entry =
            LockedAdapter::approving(source, &upshift::runtime::digest(&wasm), &manifest);
        let (status, settled) = match existing.and_then(|l| l.entry(&instance.adapter)) {
            None => ("new: not approved yet".to_string(), false),
            Some(old) if old.sha256 == entry.sha256 => {
                // The same bytes: an approval narrowed by hand is kept (it is the ceiling of
                // the grant); one wider than the request is replaced by the request.
                let edits = capdiff::diff(&entry.bindings, &old.bindings);
                let shown = edits
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ");
                if edits.is_empty() {
                    ("approved".to_string(), true)
                } else if edits.iter().any(capdiff::Change::widens) {
                    (
                        format!(
                            "approved, but the lock file approves more than it asks for ({shown}): refused until approved again"
                        ),
                        false,
                    )
                } else {
                    entry.bindings = old.bindings.clone();
                    (
                        format!("approved, narrowed in the lock file: {shown}"),
                        true,
                    )
                }
            }
            Some(old) => {
                let changes = capdiff::diff(&old.bindings, &entry.bindings);
                let summary = if changes.is_empty() {
                    "same capabilities".to_string()
                } else {
                    changes
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; ")
                };
                (format!("changed since approval: {summary}"), false)
            }
        };
        pending.push(Pending {
            entry,
            status,
            settled,
        });
    }
    let unused: Vec<&LockedAdapter> = existing
        .map(|l| {
            l.adapters
                .iter()
                .filter(|a| !pending.iter().any(|p| p.entry.source == a.source))
                .collect()
        })
        .unwrap_or_default();
    let settled = pending.iter().all(|p| p.settled) && unused.is_empty() && existing.is_some();
    if approve {
        let mut lock = LockFile::new(&lock_path);
        for p in &pending {
            lock.approve(p.entry.clone());
        }
        lock.save()?;
    }
    if json {
        print_json(&serde_json::json!({
            "lock_file": lock_path,
            "approved_now": approve,
            "adapters": pending.iter().map(|p| serde_json::json!({
                "source": p.entry.source, "product": p.entry.product,
                "sha256": p.entry.sha256, "status": p.status,
            })).collect::<Vec<_>>(),
            "unused": unused.iter().map(|a| &a.source).collect::<Vec<_>>(),
        }))?;
    } else {
        for p in &pending {
            say!(
                "{:<40} {:<14} {}",
                p.entry.source,
                p.entry.product,
                p.status
            );
        }
        for a in &unused {
            say!(
                "{:<40} {:<14} no longer used by the fleet",
                a.source,
                a.product
            );
        }
        if approve {
            say!(
                "approved {} adapter(s) in {}",
                pending.len(),
                lock_path.display()
            );
        } else if !settled {
            say!(
                "{} needs approval: review the changes above, then run `upshift lock --approve`",
                lock_path.display()
            );
        }
    }
    Ok(if approve || settled { 0 } else { 1 })
}

/// `upshift adapter new NAME [--dir DIR]`.
pub fn new(name: &str, dir: Option<std::path::PathBuf>) -> Result<u8, Exit> {
    let dir = dir.unwrap_or_else(|| std::path::PathBuf::from(name));
    let made = crate::scaffold::write(&dir, name).map_err(|e| usage(e.to_string()))?;
    let shown = made.dir.display();
    say!(
        "created {shown}: adapter crate `{}` for product `{name}` ({} files)",
        made.package,
        made.files.len()
    );
    say!("next:");
    say!("  cd {shown}");
    say!("  cargo test                                    # its rule and plan tests");
    say!("  cargo build --release --target wasm32-wasip2  # the component");
    say!(
        "  upshift adapter inspect target/wasm32-wasip2/release/{}",
        made.component
    );
    say!(
        "  upshift plan --adapter target/wasm32-wasip2/release/{} --from 1.0.0 --to 2.0.0",
        made.component
    );
    say!("docs/writing-adapters.md walks through the rest.");
    Ok(0)
}

/// `upshift adapter keygen`: an Ed25519 key pair.
pub fn keygen(out: PathBuf) -> Result<u8, Exit> {
    let (secret, public) = upshift::signing::keygen()?;
    let key = out.with_extension("key");
    let pubf = out.with_extension("pub");
    write_secret(&key, &secret)?;
    std::fs::write(&pubf, format!("{public}\n"))
        .with_context(|| format!("cannot write {}", pubf.display()))?;
    say!(
        "secret key: {} (keep it private)\npublic key: {} {public}",
        key.display(),
        pubf.display()
    );
    Ok(0)
}

/// `upshift adapter sign`: sign an adapter file.
pub fn sign(file: PathBuf, key: PathBuf, signer: String) -> Result<u8, Exit> {
    let wasm = upshift::adapters::read_file(&file).map_err(usage)?;
    let secret = std::fs::read_to_string(&key)
        .with_context(|| format!("cannot read the secret key {}", key.display()))?;
    let signed = upshift::signing::sign(&file, &wasm, &secret, &signer)?;
    say!(
        "signed {} (sha256 {}) as {signer}; {} signature(s) in {}",
        file.display(),
        signed.digest,
        signed.signatures.len(),
        upshift::signing::signature_path(&file).display()
    );
    Ok(0)
}

/// `upshift adapter verify`: check an adapter file's signatures.
pub fn verify(ctx: &crate::commands::Ctx, file: PathBuf, keys: Vec<PathBuf>) -> Result<u8, Exit> {
    let wasm = upshift::adapters::read_file(&file).map_err(usage)?;
    let policy = if keys.is_empty() {
        ctx.load_fleet()?.trust.ok_or_else(|| {
            usage(
                "no [trust] policy in the fleet file and no --key given: nothing to verify against",
            )
        })?
    } else {
        let mut named = std::collections::BTreeMap::new();
        for k in &keys {
            let text = std::fs::read_to_string(k)
                .with_context(|| format!("cannot read the public key {}", k.display()))?;
            named.insert(k.display().to_string(), text.trim().to_string());
        }
        upshift::signing::TrustPolicy {
            keys: named,
            require: upshift::signing::Require::AtLeast(1),
        }
    };
    match upshift::signing::verify(&file, &wasm, &policy) {
        Ok(signers) => {
            say!(
                "trusted: {} signed by {}",
                file.display(),
                signers.join(", ")
            );
            Ok(0)
        }
        Err(e) => Err(Exit {
            code: 1,
            error: anyhow::anyhow!("not trusted: {e}"),
        }),
    }
}

/// Write a secret key readable by its owner only.
fn write_secret(path: &Path, secret: &str) -> Result<(), Exit> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {} (it must not exist yet)", path.display()))?;
    f.write_all(format!("{secret}\n").as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
