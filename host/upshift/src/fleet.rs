//! The fleet file (`upshift.toml`): instances, the adapter each runs, and the real resources its
//! logical bindings name. Unknown keys and unbound names are errors that name the line and the fix.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::grants::{Access, BindingKind, BoundName};
use upshift_caps::StepBudget;
pub use upshift_model::binding::{
    ComposeSpec, DbBinding, DockerSpec, FilesBinding, HttpBinding, ProcessSpec, ServiceBackend,
    ServiceBinding, valid_binding_name,
};

/// A parsed, validated fleet file.
#[derive(Debug, Clone)]
pub struct Fleet {
    /// Where it was read from.
    pub path: PathBuf,
    /// The `[trust]` policy for adapter files, if any.
    pub trust: Option<crate::signing::TrustPolicy>,
    /// The `[budget]` of every export call, unless an instance sets its own.
    pub budget: StepBudget,
    /// `upshift.lock` beside the fleet file, if there is one (read by [`Fleet::load`]).
    pub lock: Option<std::sync::Arc<crate::lockfile::LockFile>>,
    /// Instances in file order.
    pub instances: Vec<Instance>,
}

/// One product instance.
#[derive(Debug, Clone)]
pub struct Instance {
    /// Unique name.
    pub name: String,
    /// The adapter it runs.
    pub adapter: AdapterRef,
    /// Free-form labels for selection.
    pub labels: BTreeMap<String, String>,
    /// The version this instance should be upgraded to by `apply --all`.
    pub target: Option<String>,
    /// The fleet's `[trust]` policy: an adapter file runs only when it is met.
    pub trust: Option<crate::signing::TrustPolicy>,
    /// The fleet's lock file: when present, only the approved adapter bytes run.
    pub lock: Option<std::sync::Arc<crate::lockfile::LockFile>>,
    /// What each export call of its adapter may make the host do: `[instance.budget]`, else
    /// the fleet's `[budget]`, else the defaults.
    pub budget: StepBudget,
    /// How many backups `upshift gc` keeps: `[instance.retention]`, else the fleet's
    /// `[retention]`, else every backup.
    pub retention: Retention,
    /// Database bindings by name.
    pub db: BTreeMap<String, DbBinding>,
    /// Directory bindings by name.
    pub files: BTreeMap<String, FilesBinding>,
    /// Service bindings by name.
    pub service: BTreeMap<String, ServiceBinding>,
    /// HTTP bindings by name.
    pub http: BTreeMap<String, HttpBinding>,
}

/// Which backups `upshift gc` keeps (`[retention]`, `[instance.retention]`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// Keep the newest `keep` valid backups of each binding of the instance; `None` (the
    /// default): keep every backup.
    pub keep: Option<u32>,
}

/// Which adapter an instance uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdapterRef {
    /// A first-party adapter bundled in the binary, by product name.
    Bundled(String),
    /// A component file.
    File(PathBuf),
}

impl Instance {
    /// The version this instance goes to: the operator's `to` (`--to`), else its `target`;
    /// without either, the error says so and how to give one.
    pub fn target_or(&self, to: Option<&str>) -> Result<String, String> {
        to.map(str::to_string)
            .or_else(|| self.target.clone())
            .ok_or_else(|| {
                format!(
                    "instance `{}` has no `target` in the fleet file; set one or pass --to VERSION",
                    self.name
                )
            })
    }

    /// The bound names and their narrowing, for [`crate::grants::GrantSet::resolve`].
    pub fn bound_names(&self) -> Vec<BoundName> {
        let mut out = Vec::new();
        for (n, b) in &self.db {
            out.push(bound(n, BindingKind::Db, &b.access));
        }
        for (n, b) in &self.files {
            out.push(bound(n, BindingKind::Files, &b.access));
        }
        for (n, b) in &self.service {
            out.push(bound(n, BindingKind::Service, &b.access));
        }
        for (n, b) in &self.http {
            out.push(bound(n, BindingKind::Http, &b.access));
        }
        out
    }

    /// The product name, when bundled; the file stem otherwise.
    pub fn adapter_label(&self) -> String {
        match &self.adapter {
            AdapterRef::Bundled(p) => p.clone(),
            AdapterRef::File(p) => p.display().to_string(),
        }
    }
}

fn bound(name: &str, kind: BindingKind, access: &Option<Vec<Access>>) -> BoundName {
    BoundName {
        name: name.to_string(),
        kind,
        access: access.clone(),
    }
}

/// A fleet file that cannot be used, with where and how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The file could not be read.
    #[error(
        "cannot read fleet file {path}: {source}\nfix: create it (see docs/fleet-file.md), or name the fleet file you meant"
    )]
    Read {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// TOML syntax or an unknown/mistyped key.
    #[error(
        "fleet file {path}: {message}\nfix: correct the key or value shown above; docs/fleet-file.md lists every key"
    )]
    Syntax {
        /// The path.
        path: PathBuf,
        /// toml's message, with line and column.
        message: String,
    },
    /// A value that parses but is wrong.
    #[error("fleet file {path}, line {line}: {message}\nfix: {fix}")]
    Invalid {
        /// The path.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
        /// What to do.
        fix: String,
    },
    /// The lock file beside it cannot be used.
    #[error(transparent)]
    Lock(#[from] crate::lockfile::LockError),
    /// No instance of that name.
    #[error(
        "no instance named `{name}` in {path} (instances: {known})\nfix: use one of the names listed, or add an [[instance]] with name = \"{name}\""
    )]
    UnknownInstance {
        /// The path.
        path: PathBuf,
        /// Requested name.
        name: String,
        /// Known names.
        known: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFleet {
    #[serde(default)]
    instance: Vec<RawInstance>,
    trust: Option<Spanned<RawTrust>>,
    budget: Option<Spanned<RawBudget>>,
    retention: Option<Spanned<RawRetention>>,
}

/// `[retention]` or `[instance.retention]`: how many backups `upshift gc` keeps.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    keep: Spanned<i64>,
}

/// `[budget]` or `[instance.budget]`: limits per export call (a step, `detect`, `verify`…).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBudget {
    host_calls_per_step: Option<Spanned<i64>>,
    audit_bytes_per_step: Option<Spanned<i64>>,
}

/// The least `audit_bytes_per_step`: room for a few records of the largest size.
const MIN_AUDIT_BYTES: i64 = 64 << 10;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrust {
    keys: BTreeMap<String, String>,
    require: Option<toml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInstance {
    name: Spanned<String>,
    product: Option<Spanned<String>>,
    adapter: Option<Spanned<String>>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    target: Option<Spanned<String>>,
    budget: Option<Spanned<RawBudget>>,
    retention: Option<Spanned<RawRetention>>,
    #[serde(default)]
    db: BTreeMap<String, Spanned<RawDb>>,
    #[serde(default)]
    files: BTreeMap<String, Spanned<RawFiles>>,
    #[serde(default)]
    service: BTreeMap<String, Spanned<RawService>>,
    #[serde(default)]
    http: BTreeMap<String, Spanned<RawHttp>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDb {
    url: Option<String>,
    url_env: Option<String>,
    access: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    privileged: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFiles {
    path: String,
    access: Option<Spanned<Vec<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    kind: Spanned<String>,
    command: Option<String>,
    version: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    workdir: Option<String>,
    health_url: Option<String>,
    stop_timeout_secs: Option<u64>,
    container: Option<String>,
    image: Option<String>,
    images: Option<Vec<String>>,
    file: Option<String>,
    service: Option<String>,
    oneshot: Option<bool>,
    run_timeout_secs: Option<u64>,
    wait_healthy_secs: Option<u64>,
    access: Option<Spanned<Vec<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    url: String,
    access: Option<Spanned<Vec<String>>>,
}

/// Where fleet text came from: for line numbers in messages and for relative paths.
struct Ctx<'a> {
    path: &'a Path,
    text: &'a str,
    /// The fleet file's directory: relative paths in it are relative to this.
    base: &'a Path,
}

impl Ctx<'_> {
    fn line(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .bytes()
            .filter(|b| *b == b'\n')
            .count()
            + 1
    }

    fn invalid(&self, offset: usize, message: String, fix: impl Into<String>) -> FleetError {
        FleetError::Invalid {
            path: self.path.to_path_buf(),
            line: self.line(offset),
            message,
            fix: fix.into(),
        }
    }

    fn access(
        &self,
        raw: &Option<Spanned<Vec<String>>>,
        kind: BindingKind,
        binding: &str,
    ) -> Result<Option<Vec<Access>>, FleetError> {
        let Some(list) = raw else { return Ok(None) };
        let mut out = Vec::new();
        for text in list.get_ref() {
            let valid = kind.valid_access();
            match Access::parse(text) {
                Some(a) if valid.contains(&a) => out.push(a),
                _ => {
                    let names = valid
                        .iter()
                        .map(|a| a.name())
                        .collect::<Vec<_>>()
                        .join(", ");
                    return Err(self.invalid(
                        list.span().start,
                        format!(
                            "binding `{binding}`: `{text}` is not an access for {kind} bindings"
                        ),
                        format!("use some of: {names}"),
                    ));
                }
            }
        }
        Ok(Some(out))
    }
}

/// The section parsers: each turns one raw table into its checked form, or says what to fix.
impl Ctx<'_> {
    /// A path as written in the fleet file: an absolute one as is, a relative one against the
    /// fleet file's absolute directory.
    fn resolve(&self, path: impl Into<PathBuf>) -> PathBuf {
        let path = path.into();
        if path.is_absolute() {
            path
        } else {
            self.base.join(path)
        }
    }

    /// `[trust]`: the keys adapter files must be signed with, and how many.
    fn trust(&self, raw: Spanned<RawTrust>) -> Result<crate::signing::TrustPolicy, FleetError> {
        use crate::signing::{Require, TrustPolicy};
        let at = raw.span().start;
        let raw = raw.into_inner();
        if raw.keys.is_empty() {
            return Err(self.invalid(
                at,
                "[trust] lists no keys".into(),
                "add `keys = { vendor = \"<hex public key>\" }` (from `upshift adapter keygen`)",
            ));
        }
        for (name, key) in &raw.keys {
            if let Err(e) = crate::signing::public_key(key) {
                return Err(self.invalid(
                    at,
                    format!("[trust] key `{name}`: {e}"),
                    "use the hex public key `upshift adapter keygen` wrote (the .pub file)",
                ));
            }
        }
        let require = match &raw.require {
            None => Require::AtLeast(1),
            Some(toml::Value::String(s)) if s == "all" => Require::All,
            Some(toml::Value::String(s)) if s == "any" => Require::AtLeast(1),
            Some(toml::Value::Integer(n)) if *n >= 1 && (*n as usize) <= raw.keys.len() => {
                Require::AtLeast(*n as usize)
            }
            Some(other) => {
                return Err(self.invalid(
                    at,
                    format!("[trust] require = {other} is not usable"),
                    format!(
                        "use \"any\", \"all\" or a number from 1 to {}",
                        raw.keys.len()
                    ),
                ));
            }
        };
        Ok(TrustPolicy {
            keys: raw.keys,
            require,
        })
    }

    /// `[budget]` (`table` names it in messages) over `base`: each key it sets replaces
    /// base's.
    fn budget(
        &self,
        raw: Option<Spanned<RawBudget>>,
        table: &str,
        base: StepBudget,
    ) -> Result<StepBudget, FleetError> {
        let Some(raw) = raw else { return Ok(base) };
        let raw = raw.into_inner();
        let limit = |value: Option<Spanned<i64>>, key: &str, least: i64, default: u64| {
            let Some(value) = value else { return Ok(None) };
            let n = *value.get_ref();
            if n < least {
                return Err(self.invalid(
                    value.span().start,
                    format!("{table} {key} = {n} is below the least usable value, {least}"),
                    format!(
                        "leave it out for the default ({default}), or set a number of at least {least}"
                    ),
                ));
            }
            Ok(Some(n as u64))
        };
        Ok(StepBudget {
            host_calls: limit(
                raw.host_calls_per_step,
                "host_calls_per_step",
                1,
                StepBudget::DEFAULT_HOST_CALLS,
            )?
            .unwrap_or(base.host_calls),
            audit_bytes: limit(
                raw.audit_bytes_per_step,
                "audit_bytes_per_step",
                MIN_AUDIT_BYTES,
                StepBudget::DEFAULT_AUDIT_BYTES,
            )?
            .unwrap_or(base.audit_bytes),
        })
    }

    /// `[retention]` (`table`) or `[instance.retention]`, over `base`.
    fn retention(
        &self,
        raw: Option<Spanned<RawRetention>>,
        table: &str,
        base: Retention,
    ) -> Result<Retention, FleetError> {
        let Some(raw) = raw else { return Ok(base) };
        let keep = raw.into_inner().keep;
        let n = *keep.get_ref();
        match u32::try_from(n) {
            Ok(n) if n >= 1 => Ok(Retention { keep: Some(n) }),
            _ => Err(self.invalid(
                keep.span().start,
                format!("{table} keep = {n} would keep no backup to restore"),
                "set keep to 1 or more (the newest backups kept per binding), or leave [retention] out to keep every backup",
            )),
        }
    }

    /// One `[[instance]]`, given the instances before it (names are unique).
    fn instance(
        &self,
        raw: RawInstance,
        trust: &Option<crate::signing::TrustPolicy>,
        (budget, retention): (StepBudget, Retention),
        earlier: &[Instance],
    ) -> Result<Instance, FleetError> {
        let name_at = raw.name.span().start;
        let name = raw.name.into_inner();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            return Err(self.invalid(
                name_at,
                format!("instance name `{name}` is not usable"),
                "use letters, digits, `-`, `_` or `.`",
            ));
        }
        if earlier.iter().any(|i| i.name == name) {
            return Err(self.invalid(
                name_at,
                format!("instance name `{name}` is used twice"),
                "give every [[instance]] a unique name",
            ));
        }
        let adapter = match (raw.product, raw.adapter) {
            (Some(p), None) => AdapterRef::Bundled(p.into_inner()),
            (None, Some(a)) => AdapterRef::File(self.resolve(a.into_inner())),
            (Some(p), Some(_)) => {
                return Err(self.invalid(
                    p.span().start,
                    format!("instance `{name}` sets both `product` and `adapter`"),
                    "keep `product` for a bundled adapter or `adapter` for a component file, not both",
                ));
            }
            (None, None) => {
                return Err(self.invalid(
                    name_at,
                    format!("instance `{name}` names no adapter"),
                    "add `product = \"bytebase\"` (bundled) or `adapter = \"path/to/adapter.wasm\"`",
                ));
            }
        };
        let budget = self.budget(raw.budget, "[instance.budget]", budget)?;
        let retention = self.retention(raw.retention, "[instance.retention]", retention)?;
        Ok(Instance {
            name,
            adapter,
            labels: raw.labels,
            target: raw.target.map(Spanned::into_inner),
            trust: trust.clone(),
            lock: None,
            budget,
            retention,
            db: self.bindings(raw.db, "db", Ctx::db)?,
            files: self.bindings(raw.files, "files", Ctx::files)?,
            service: self.bindings(raw.service, "service", Ctx::service)?,
            http: self.bindings(raw.http, "http", Ctx::http)?,
        })
    }

    /// One kind of binding tables (`[instance.<kind>.<name>]`): names checked, each parsed by
    /// `parse(self, name, at, raw)`.
    fn bindings<Raw, Binding>(
        &self,
        raw: BTreeMap<String, Spanned<Raw>>,
        kind: &str,
        parse: impl Fn(&Self, &str, usize, Raw) -> Result<Binding, FleetError>,
    ) -> Result<BTreeMap<String, Binding>, FleetError> {
        let mut out = BTreeMap::new();
        for (name, table) in raw {
            let at = table.span().start;
            if !valid_binding_name(&name) {
                return Err(self.invalid(
                    at,
                    format!("binding name `{name}` in [instance.{kind}.{name}] is not valid"),
                    "binding names are lowercase letters, digits and `-`, starting with a letter",
                ));
            }
            let binding = parse(self, &name, at, table.into_inner())?;
            out.insert(name, binding);
        }
        Ok(out)
    }

    /// `[instance.db.<name>]`: a database URL (given, or read from an environment variable).
    fn db(&self, name: &str, at: usize, raw: RawDb) -> Result<DbBinding, FleetError> {
        let url = match (raw.url, raw.url_env) {
            (Some(u), None) => u,
            (None, Some(var)) => std::env::var(&var).map_err(|_| {
                self.invalid(
                    at,
                    format!("db binding `{name}` reads its URL from ${var}, which is not set"),
                    format!("export {var}=postgres://… before running upshift"),
                )
            })?,
            _ => {
                return Err(self.invalid(
                    at,
                    format!("db binding `{name}` needs exactly one of `url` or `url_env`"),
                    "set `url = \"postgres://…\"` or `url_env = \"VAR\"`",
                ));
            }
        };
        if !["postgres://", "postgresql://", "mysql://", "kwdb://"]
            .iter()
            .any(|scheme| url.starts_with(scheme))
        {
            return Err(self.invalid(
                at,
                format!("db binding `{name}`: only postgres://, mysql:// and kwdb:// URLs are supported"),
                "use a postgres://, mysql:// or kwdb:// (KWDB) URL of the form scheme://user@host:port/database",
            ));
        }
        let access = self.access(&raw.access, BindingKind::Db, name)?;
        Ok(DbBinding {
            url,
            access,
            privileged: raw.privileged,
        })
    }

    /// `[instance.files.<name>]`: a directory.
    fn files(&self, name: &str, _at: usize, raw: RawFiles) -> Result<FilesBinding, FleetError> {
        Ok(FilesBinding {
            access: self.access(&raw.access, BindingKind::Files, name)?,
            path: self.resolve(raw.path),
        })
    }

    /// `[instance.service.<name>]`: a process, a container or a Compose service.
    fn service(
        &self,
        name: &str,
        at: usize,
        raw: RawService,
    ) -> Result<ServiceBinding, FleetError> {
        let access = self.access(&raw.access, BindingKind::Service, name)?;
        if raw.kind.get_ref() != "process"
            && (raw.oneshot.is_some() || raw.run_timeout_secs.is_some())
        {
            return Err(self.invalid(
                at,
                format!("service `{name}`: `oneshot` and `run_timeout_secs` apply to process services only"),
                "run the job as `kind = \"process\"` (e.g. `docker run --rm …` as its command), or remove the keys",
            ));
        }
        let stop_timeout_secs = raw.stop_timeout_secs.unwrap_or(30);
        let wait_healthy_secs = raw.wait_healthy_secs;
        if let Some(secs) = wait_healthy_secs
            && !(1..=upshift_model::binding::MAX_WAIT_HEALTHY_SECS).contains(&secs)
        {
            return Err(self.invalid(
                at,
                format!("service `{name}`: wait_healthy_secs = {secs} is out of range"),
                "give a number of seconds from 1 to 86400, or remove the key for the adapter's own timeouts",
            ));
        }
        let backend = match raw.kind.get_ref().as_str() {
            "process" => {
                let (Some(command), Some(version)) = (raw.command, raw.version) else {
                    return Err(self.invalid(
                        at,
                        format!("process service `{name}` needs `command` and `version`"),
                        "set `command = \"/opt/product/{version}/bin --flags\"` and `version = \"<deployed version>\"`",
                    ));
                };
                if !command.contains("{version}") {
                    return Err(self.invalid(
                        at,
                        format!("process service `{name}`: command has no `{{version}}` placeholder, so switching versions could not change what runs"),
                        "put {version} where the version appears in the binary path or arguments",
                    ));
                }
                if let Err(e) = upshift_model::version::check(&version) {
                    return Err(self.invalid(
                        at,
                        format!("process service `{name}`: {e}"),
                        "set `version` to the deployed product version, e.g. `version = \"3.10.0\"`",
                    ));
                }
                ServiceBackend::Process(ProcessSpec {
                    command,
                    version,
                    env: raw.env,
                    workdir: raw.workdir.map(|w| self.resolve(w)),
                    health_url: raw.health_url,
                    stop_timeout_secs,
                    oneshot: raw.oneshot.unwrap_or(false),
                    run_timeout_secs: raw.run_timeout_secs.unwrap_or(1800),
                })
            }
            "docker" => {
                let (Some(container), Some(image)) = (raw.container, raw.image) else {
                    return Err(self.invalid(
                        at,
                        format!("docker service `{name}` needs `container` and `image`"),
                        "set `container = \"<name>\"` and `image = \"repo/name:{version}\"`",
                    ));
                };
                let images = self.image_repositories(
                    at,
                    &format!("docker service `{name}`"),
                    &image,
                    raw.images,
                    "kwdb/kwdb",
                )?;
                ServiceBackend::Docker(DockerSpec {
                    container,
                    images,
                    image,
                    health_url: raw.health_url,
                    stop_timeout_secs,
                })
            }
            "compose" => {
                let (Some(file), Some(service), Some(image)) = (raw.file, raw.service, raw.image)
                else {
                    return Err(self.invalid(
                        at,
                        format!("compose service `{name}` needs `file`, `service` and `image`"),
                        "set `file = \"docker-compose.yml\"`, `service = \"<name>\"` and `image = \"repo/name:{version}\"`",
                    ));
                };
                let images = self.image_repositories(
                    at,
                    &format!("compose service `{name}`"),
                    &image,
                    raw.images,
                    "apache/devlake",
                )?;
                ServiceBackend::Compose(ComposeSpec {
                    file: self.resolve(file),
                    service,
                    images,
                    image,
                    health_url: raw.health_url,
                    stop_timeout_secs,
                })
            }
            other => {
                return Err(self.invalid(
                    raw.kind.span().start,
                    format!("service `{name}`: unknown kind `{other}`"),
                    "use kind = \"process\", \"docker\" or \"compose\"",
                ));
            }
        };
        Ok(ServiceBinding {
            backend,
            access,
            wait_healthy_secs,
        })
    }

    /// An image template must place `{version}`; the repositories a service may be switched to
    /// default to the template's own.
    fn image_repositories(
        &self,
        at: usize,
        what: &str,
        template: &str,
        listed: Option<Vec<String>>,
        example: &str,
    ) -> Result<Vec<String>, FleetError> {
        if !template.contains("{version}") {
            return Err(self.invalid(
                at,
                format!("{what}: image has no `{{version}}` placeholder"),
                format!("write the image as a template, e.g. image = \"{example}:{{version}}\""),
            ));
        }
        Ok(listed.unwrap_or_else(|| {
            vec![
                upshift_model::binding::image_repository(&template.replace("{version}", "v"))
                    .to_string(),
            ]
        }))
    }

    /// `[instance.http.<name>]`: an http(s) base URL.
    fn http(&self, name: &str, at: usize, raw: RawHttp) -> Result<HttpBinding, FleetError> {
        let url = raw.url.trim_end_matches('/');
        let host = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"));
        if host.is_none_or(str::is_empty) {
            return Err(self.invalid(
                at,
                format!(
                    "http binding `{name}`: `{}` is not an http(s) URL with a host",
                    upshift_model::redact::url_for_display(&raw.url)
                ),
                "use a base URL such as http://127.0.0.1:8080",
            ));
        }
        Ok(HttpBinding {
            url: url.to_string(),
            access: self.access(&raw.access, BindingKind::Http, name)?,
        })
    }
}

impl Fleet {
    /// Read and validate a fleet file.
    pub fn load(path: &Path) -> Result<Fleet, FleetError> {
        let text = std::fs::read_to_string(path).map_err(|source| FleetError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut fleet = Fleet::parse(path, &text)?;
        if let Some(lock) = crate::lockfile::LockFile::beside(path)? {
            fleet.set_lock(lock);
        }
        Ok(fleet)
    }

    /// Pin the fleet's adapters to `lock`.
    pub fn set_lock(&mut self, lock: crate::lockfile::LockFile) {
        let lock = std::sync::Arc::new(lock);
        for instance in &mut self.instances {
            instance.lock = Some(lock.clone());
        }
        self.lock = Some(lock);
    }

    /// Parse and validate fleet text; `path` is used for messages and relative paths.
    pub fn parse(path: &Path, text: &str) -> Result<Fleet, FleetError> {
        let raw: RawFleet = toml::from_str(text).map_err(|e| FleetError::Syntax {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        // Relative paths in the file are relative to the file's directory, made absolute now:
        // a relative `--fleet fleet.toml` has the empty path as its parent, which no tool can
        // be started in.
        let absolute = std::path::absolute(path).map_err(|source| FleetError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let ctx = Ctx {
            path,
            text,
            base: absolute.parent().unwrap_or(Path::new("/")),
        };
        let trust = raw.trust.map(|t| ctx.trust(t)).transpose()?;
        let budget = ctx.budget(raw.budget, "[budget]", StepBudget::default())?;
        let retention = ctx.retention(raw.retention, "[retention]", Retention::default())?;
        let mut instances: Vec<Instance> = Vec::new();
        for raw_instance in raw.instance {
            let instance = ctx.instance(raw_instance, &trust, (budget, retention), &instances)?;
            instances.push(instance);
        }
        Ok(Fleet {
            path: path.to_path_buf(),
            trust,
            budget,
            lock: None,
            instances,
        })
    }

    /// The instance of that name.
    pub fn instance(&self, name: &str) -> Result<&Instance, FleetError> {
        self.instances
            .iter()
            .find(|i| i.name == name)
            .ok_or_else(|| FleetError::UnknownInstance {
                path: self.path.clone(),
                name: name.to_string(),
                known: self
                    .instances
                    .iter()
                    .map(|i| i.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[[instance]]
name = "bb"
product = "bytebase"

[instance.db.meta]
url = "postgres://u@127.0.0.1:5432/metadb"
access = ["read", "backup"]

[instance.service.app]
kind = "process"
command = "/opt/bb/{version}/bytebase --port 8080"
version = "3.10.0"

[instance.http.api]
url = "http://127.0.0.1:8080/"
"#;

    #[test]
    fn relative_paths_resolve_against_the_fleet_files_absolute_directory() {
        let text = "[[instance]]\nname = \"x\"\nadapter = \"adapters/x.wasm\"\n\
            [instance.files.data]\npath = \"data\"\n\
            [instance.service.app]\nkind = \"process\"\ncommand = \"/opt/{version}/x\"\nversion = \"1.0.0\"\nworkdir = \"work\"\n\
            [instance.service.web]\nkind = \"compose\"\nfile = \"compose/dc.yml\"\nservice = \"s\"\nimage = \"r/x:{version}\"\n";
        let cwd = std::env::current_dir().expect("cwd");
        for (fleet, dir) in [
            ("fleet.toml", cwd.clone()),
            ("site/fleet.toml", cwd.join("site")),
            ("/srv/site/fleet.toml", PathBuf::from("/srv/site")),
        ] {
            let f = Fleet::parse(Path::new(fleet), text).expect("parses");
            let i = f.instance("x").expect("instance");
            assert_eq!(i.adapter, AdapterRef::File(dir.join("adapters/x.wasm")));
            assert_eq!(i.files["data"].path, dir.join("data"));
            match (&i.service["app"].backend, &i.service["web"].backend) {
                (ServiceBackend::Process(p), ServiceBackend::Compose(c)) => {
                    assert_eq!(p.workdir, Some(dir.join("work")), "{fleet}");
                    assert_eq!(c.file, dir.join("compose/dc.yml"), "{fleet}");
                    assert!(c.file.is_absolute());
                }
                other => panic!("{other:?}"),
            }
        }
    }

    /// Every fleet-file example in docs/fleet-file.md parses.
    #[test]
    fn the_documented_examples_parse() {
        let doc = include_str!("../../../docs/fleet-file.md");
        let mut examples = 0;
        for block in doc.split("```toml\n").skip(1) {
            // A URL read from the environment stands in as if the variable were set.
            let text = block.split("```").next().unwrap_or_default().replace(
                "url_env = \"BYTEBASE_PROD_PG_URL\"",
                "url = \"postgres://bytebase@127.0.0.1:5432/metadb\"",
            );
            let text = text.as_str();
            Fleet::parse(Path::new("/etc/upshift/upshift.toml"), text).unwrap_or_else(|e| {
                panic!("docs/fleet-file.md example does not parse: {e}\n{text}")
            });
            examples += 1;
        }
        assert!(examples > 0, "docs/fleet-file.md has examples");
    }

    #[test]
    fn parses_a_good_file() {
        let f = Fleet::parse(Path::new("/etc/upshift.toml"), GOOD).expect("parses");
        let i = f.instance("bb").expect("instance");
        assert_eq!(i.adapter, AdapterRef::Bundled("bytebase".into()));
        assert_eq!(
            i.db["meta"].access,
            Some(vec![Access::Read, Access::Backup])
        );
        assert_eq!(i.http["api"].url, "http://127.0.0.1:8080");
        assert!(f.instance("nope").is_err());
    }

    #[test]
    fn unknown_key_names_line() {
        let text = GOOD.replace(
            "version = \"3.10.0\"",
            "version = \"3.10.0\"\nflavour = \"x\"",
        );
        let err = Fleet::parse(Path::new("f.toml"), &text).expect_err("unknown key");
        let msg = err.to_string();
        assert!(msg.contains("flavour"), "{msg}");
        assert!(msg.contains("line 14"), "{msg}");
        assert!(msg.contains("fix:"), "{msg}");
    }

    #[test]
    fn semantic_errors_name_line_and_fix() {
        let text = GOOD.replace(
            "access = [\"read\", \"backup\"]",
            "access = [\"read\", \"fly\"]",
        );
        let msg = Fleet::parse(Path::new("f.toml"), &text)
            .expect_err("bad access")
            .to_string();
        assert!(
            msg.contains("line 8") && msg.contains("`fly`") && msg.contains("use some of"),
            "{msg}"
        );

        let text = GOOD.replace("{version}/", "3.10.0/");
        let msg = Fleet::parse(Path::new("f.toml"), &text)
            .expect_err("no placeholder")
            .to_string();
        assert!(
            msg.contains("{version}") && msg.contains("line 10"),
            "{msg}"
        );

        let text = format!("{GOOD}\n[[instance]]\nname = \"bb\"\nproduct = \"bytebase\"\n");
        let msg = Fleet::parse(Path::new("f.toml"), &text)
            .expect_err("dup")
            .to_string();
        assert!(
            msg.contains("used twice") && msg.contains("line 19"),
            "{msg}"
        );

        let text = GOOD.replace(
            "url = \"postgres://u@127.0.0.1:5432/metadb\"",
            "url_env = \"UPSHIFT_TEST_SURELY_UNSET\"",
        );
        let msg = Fleet::parse(Path::new("f.toml"), &text)
            .expect_err("unset env")
            .to_string();
        assert!(msg.contains("UPSHIFT_TEST_SURELY_UNSET"), "{msg}");
    }

    #[test]
    fn budgets_default_come_from_budget_and_are_narrowed_per_instance() {
        let f = Fleet::parse(Path::new("f.toml"), GOOD).expect("parses");
        assert_eq!(f.instance("bb").expect("bb").budget, StepBudget::default());

        let text = format!(
            "[budget]\nhost_calls_per_step = 50000\naudit_bytes_per_step = 1048576\n{GOOD}\n[[instance]]\nname = \"own\"\nproduct = \"kwdb\"\n\n[instance.budget]\nhost_calls_per_step = 200\n"
        );
        let f = Fleet::parse(Path::new("f.toml"), &text).expect("parses");
        assert_eq!(
            f.instance("bb").expect("bb").budget,
            StepBudget {
                host_calls: 50_000,
                audit_bytes: 1 << 20
            }
        );
        assert_eq!(
            f.instance("own").expect("own").budget,
            StepBudget {
                host_calls: 200,
                audit_bytes: 1 << 20
            },
            "a key the instance leaves out comes from [budget]"
        );
    }

    #[test]
    fn retention_defaults_to_every_backup_and_is_set_per_fleet_or_instance() {
        let f = Fleet::parse(Path::new("f.toml"), GOOD).expect("parses");
        assert_eq!(f.instance("bb").expect("bb").retention.keep, None);
        let text = format!(
            "[retention]\nkeep = 5\n{GOOD}\n[[instance]]\nname = \"own\"\nproduct = \"kwdb\"\n\n[instance.retention]\nkeep = 2\n"
        );
        let f = Fleet::parse(Path::new("f.toml"), &text).expect("parses");
        assert_eq!(f.instance("bb").expect("bb").retention.keep, Some(5));
        assert_eq!(f.instance("own").expect("own").retention.keep, Some(2));
        for bad in ["keep = 0", "keep = -3"] {
            let text = format!("[retention]\n{bad}\n{GOOD}");
            let err = Fleet::parse(Path::new("f.toml"), &text)
                .expect_err(bad)
                .to_string();
            assert!(
                err.contains("line 2")
                    && err.contains("would keep no backup")
                    && err.contains("fix: set keep to 1"),
                "{bad}: {err}"
            );
        }
        let err = Fleet::parse(
            Path::new("f.toml"),
            &format!("[retention]\nkeep_days = 3\n{GOOD}"),
        )
        .expect_err("unknown key")
        .to_string();
        assert!(err.contains("keep_days"), "{err}");
    }

    #[test]
    fn unusable_budgets_name_the_key_line_and_fix() {
        for (table, value, line) in [
            ("host_calls_per_step", "0", 2),
            ("host_calls_per_step", "-5", 2),
            ("audit_bytes_per_step", "100", 2),
        ] {
            let text = format!("[budget]\n{table} = {value}\n{GOOD}");
            let msg = Fleet::parse(Path::new("f.toml"), &text)
                .expect_err(table)
                .to_string();
            assert!(
                msg.contains(table)
                    && msg.contains(&format!("line {line}"))
                    && msg.contains("fix:"),
                "{msg}"
            );
        }
        let text = format!("{GOOD}\n[instance.budget]\nhost_calls = 5\n");
        let msg = Fleet::parse(Path::new("f.toml"), &text)
            .expect_err("unknown key")
            .to_string();
        assert!(msg.contains("host_calls") && msg.contains("fix:"), "{msg}");
        let text = format!("{GOOD}\n[instance.budget]\nhost_calls_per_step = \"many\"\n");
        assert!(Fleet::parse(Path::new("f.toml"), &text).is_err());
    }

    /// Every TOML example in docs/fleet-file.md that sets a budget parses to what it says.
    #[test]
    fn the_documented_budget_examples_parse() {
        let doc = include_str!("../../../docs/fleet-file.md");
        let blocks: Vec<&str> = doc
            .split("```toml\n")
            .skip(1)
            .filter_map(|b| b.split("```").next())
            .filter(|b| b.contains("budget]"))
            .collect();
        assert!(!blocks.is_empty(), "docs/fleet-file.md shows a [budget]");
        for block in blocks {
            let f = Fleet::parse(Path::new("/etc/upshift/upshift.toml"), block)
                .unwrap_or_else(|e| panic!("{e}\n{block}"));
            assert_ne!(
                f.budget,
                StepBudget::default(),
                "the example changes something: {block}"
            );
        }
    }

    /// Found by the fuzz target `fleet_file`: `url = "http://"` was accepted and trimmed to
    /// `http:`, a base URL without a host.
    #[test]
    fn http_url_needs_a_host() {
        for url in ["http://", "https:///", "http:"] {
            let text = GOOD.replace("http://127.0.0.1:8080/", url);
            let msg = Fleet::parse(Path::new("f.toml"), &text)
                .expect_err(url)
                .to_string();
            assert!(
                msg.contains("with a host") && msg.contains("line 15"),
                "{msg}"
            );
        }
    }
}
