//! The service capability: [`Services`] owns the bound services and reaches them only through
//! the guard. [`ServiceBackend`] dispatches to one engine per file: a local process
//! ([`process`]), a Docker container ([`docker`]) or a Compose service ([`compose`], whose file
//! edits are in [`compose_file`]).

pub mod compose;
pub mod compose_file;
pub mod docker;
pub mod image_archive;
pub(crate) mod local;
pub mod process;

use std::path::Path;
use std::time::{Duration, Instant};

use std::sync::Arc;

use crate::CapError;
use crate::files::Files;
use crate::guard::{Bound, Guard};
use crate::operation::Operation;
use compose::ComposeBackend;
use docker::DockerBackend;
use process::ProcessBackend;
use upshift_model::binding::{ServiceBackend as ServiceSpec, ServiceBinding};
use upshift_model::grants::{Access, BindingKind};

/// What the host knows of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// Whether it runs.
    pub running: bool,
    /// The version it runs or will run.
    pub version: String,
    /// Backend detail.
    pub detail: String,
}

/// A container a switch kept for switching back, as the run journaled it: switching back and
/// finalizing use exactly this, never a container found by name or image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptContainer {
    /// The kept container's full id.
    pub id: String,
    /// The id of the container created in its place (under the bound name).
    pub replaced_by: String,
    /// The image the kept container was created from (`repo:tag`).
    pub image: String,
}

/// What a switch did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Switched {
    /// Summary for the report.
    pub summary: String,
    /// The container it kept for switching back: the run journals it.
    pub kept: Option<KeptContainer>,
    /// The id of the journaled kept container it put back or removed (no longer kept).
    pub released: Option<String>,
}

impl Switched {
    fn said(summary: String) -> Switched {
        Switched {
            summary,
            ..Switched::default()
        }
    }
}

/// The service capability: the bound services, reached only through the guard.
pub struct Services {
    bound: Bound<ServiceBackend>,
    /// The operator's wait-healthy limits, by binding (`wait_healthy_secs`).
    wait_limits: std::collections::BTreeMap<String, Duration>,
}

impl Services {
    pub(crate) fn new(guard: Arc<Guard>) -> Services {
        Services {
            bound: Bound::new(guard, BindingKind::Service),
            wait_limits: std::collections::BTreeMap::new(),
        }
    }

    pub(crate) fn bind(&mut self, name: &str, backend: ServiceBackend) {
        self.bound.bind(name, backend);
    }

    pub(crate) fn set_wait_limit(&mut self, name: &str, limit: Duration) {
        self.wait_limits.insert(name.to_string(), limit);
    }

    /// The operator's limit for waiting until `binding` is healthy, when the fleet file sets
    /// one (`wait_healthy_secs`).
    pub fn wait_limit(&self, binding: &str) -> Option<Duration> {
        self.wait_limits.get(binding).copied()
    }

    /// The bound services' names.
    pub fn bindings(&self) -> impl Iterator<Item = &str> {
        self.bound.names()
    }

    /// Whether `binding` is a one-shot job (from the fleet file; nothing is reached).
    pub fn is_job(&self, binding: &str) -> bool {
        self.bound
            .config(binding)
            .is_some_and(ServiceBackend::is_job)
    }

    async fn guarded<T>(
        &self,
        binding: &str,
        access: Access,
        operation: Operation,
        detail: Option<String>,
        f: impl AsyncFnOnce(&ServiceBackend) -> Result<(T, u64), CapError>,
    ) -> Result<T, CapError> {
        self.bound
            .call(binding, &[access], operation, detail, f)
            .await
    }

    /// `service.inspect`; the host's own inspections say why in `detail`.
    pub async fn inspect(&self, binding: &str, detail: Option<&str>) -> Result<Status, CapError> {
        self.guarded(
            binding,
            Access::Inspect,
            Operation::Inspect,
            detail.map(String::from),
            async |b| Ok((b.inspect().await?, 64)),
        )
        .await
    }

    /// `service.healthy`.
    pub async fn healthy(&self, binding: &str, detail: Option<&str>) -> Result<bool, CapError> {
        self.guarded(
            binding,
            Access::Inspect,
            Operation::Healthy,
            detail.map(String::from),
            async |b| Ok((b.healthy().await?, 1)),
        )
        .await
    }

    /// `service.healthy` with what the check saw (the host's preflight): `(healthy, detail)`,
    /// the detail naming the health URL and its answer, e.g. a 404.
    pub async fn check_health(
        &self,
        binding: &str,
        detail: &str,
    ) -> Result<(bool, String), CapError> {
        self.guarded(
            binding,
            Access::Inspect,
            Operation::Healthy,
            Some(detail.to_string()),
            async |b| Ok((b.health_check().await?, 1)),
        )
        .await
    }

    /// `service.inspect` for the host's preflight: processes that look like this service but
    /// that Upshift neither started nor adopted (process services only).
    pub async fn strays(&self, binding: &str, detail: &str) -> Result<Vec<u32>, CapError> {
        self.guarded(
            binding,
            Access::Inspect,
            Operation::Inspect,
            Some(detail.to_string()),
            async |b| Ok((b.strays().await?, 8)),
        )
        .await
    }

    /// `service.inspect` for the host's preflight: the processes on this machine that stopping
    /// the service ends (its process group and descendants; a container's processes).
    pub async fn processes(
        &self,
        binding: &str,
        detail: &str,
    ) -> Result<std::collections::BTreeSet<u32>, CapError> {
        self.guarded(
            binding,
            Access::Inspect,
            Operation::Inspect,
            Some(detail.to_string()),
            async |b| Ok((b.processes().await?, 8)),
        )
        .await
    }

    /// Host: record a service that runs already (started by hand) so that Upshift can stop
    /// and start it (needs `control`): a process by `pid`, or the one found; a container is
    /// known by its bound name.
    pub async fn adopt(
        &self,
        binding: &str,
        pid: Option<u32>,
        detail: &str,
    ) -> Result<String, CapError> {
        self.host(binding, Operation::Adopt, detail, async |b| {
            b.adopt(pid).await
        })
        .await
    }

    /// `service.image-present`: a version that is not a product version is denied before any
    /// backend sees it.
    pub async fn image_present(&self, binding: &str, version: &str) -> Result<bool, CapError> {
        self.guarded(
            binding,
            Access::Inspect,
            Operation::ImagePresent,
            Some(version.escape_debug().take(200).collect()),
            async |b| {
                checked_version(version)?;
                Ok((b.image_present(version).await?, 1))
            },
        )
        .await
    }

    /// `service.load-image`: needs `read` on the files binding and `control` on the service.
    pub async fn load_image(
        &self,
        binding: &str,
        files: &Files,
        files_binding: &str,
        path: &str,
    ) -> Result<Vec<String>, CapError> {
        let file = files.open_for_load_image(files_binding, path).await?;
        self.guarded(
            binding,
            Access::Control,
            Operation::LoadImage,
            Some(path.to_string()),
            async |b| {
                let images = b.load_image(file).await?;
                let bytes = images.iter().map(|i| i.len() as u64).sum();
                Ok((images, bytes))
            },
        )
        .await
    }

    async fn host(
        &self,
        binding: &str,
        operation: Operation,
        detail: &str,
        f: impl AsyncFnOnce(&ServiceBackend) -> Result<String, CapError>,
    ) -> Result<String, CapError> {
        self.bound.host(binding, operation, detail, f).await
    }

    /// Host: stop the service (needs `control`).
    pub async fn stop(&self, binding: &str, detail: &str) -> Result<String, CapError> {
        self.host(binding, Operation::Stop, detail, async |b| b.stop().await)
            .await
    }

    /// Host: start the service (needs `control`).
    pub async fn start(&self, binding: &str, detail: &str) -> Result<String, CapError> {
        self.host(binding, Operation::Start, detail, async |b| b.start().await)
            .await
    }

    /// Host: switch the (stopped) service to `version` (needs `switch-version`). A version that
    /// is not a product version is denied (and audited) before any backend sees it. `kept` is
    /// the container the run journaled as kept for this binding (switching back uses it and
    /// nothing else); `run` labels a container the switch creates.
    pub async fn switch_version(
        &self,
        binding: &str,
        version: &str,
        detail: &str,
        kept: Option<&KeptContainer>,
        run: Option<&str>,
    ) -> Result<Switched, CapError> {
        self.bound
            .host(binding, Operation::SwitchVersion, detail, async |b| {
                checked_version(version)?;
                b.switch_version(version, kept, run).await
            })
            .await
    }

    /// Host: wait until healthy (needs `inspect`).
    pub async fn wait_healthy(
        &self,
        binding: &str,
        timeout: Duration,
        detail: &str,
    ) -> Result<String, CapError> {
        self.host(binding, Operation::WaitHealthy, detail, async |b| {
            b.wait_healthy(timeout).await
        })
        .await
    }

    /// Host, after a verified run: remove what a switch kept for rolling back (needs
    /// `switch-version`). A binding that keeps nothing (a process), or that may not switch
    /// versions (so the host never switched it), is left alone and not recorded.
    /// A container is removed only when the run journaled it as `kept`.
    pub async fn finalize(
        &self,
        binding: &str,
        kept: Option<&KeptContainer>,
    ) -> Result<String, CapError> {
        let keeps = self
            .bound
            .config(binding)
            .is_some_and(ServiceBackend::keeps_previous);
        let may_switch = self
            .bound
            .grants()
            .check(binding, BindingKind::Service, Access::SwitchVersion)
            .is_ok();
        if !keeps || !may_switch {
            return Ok(String::new());
        }
        self.host(binding, Operation::Finalize, "host finalize", async |b| {
            b.finalize(kept).await
        })
        .await
    }
}

/// `version` if it is a product version (semver, optionally with a leading `v`); otherwise the
/// call is denied: it never reaches a command line, an image tag or a Compose file.
pub(crate) fn checked_version(version: &str) -> Result<(), CapError> {
    upshift_model::version::check(version)
        .map(|_| ())
        .map_err(|e| CapError::Denied(e.to_string()))
}

/// A bound service.
pub enum ServiceBackend {
    /// A local process.
    Process(ProcessBackend),
    /// A Docker container.
    Docker(DockerBackend),
    /// A service of a Compose file.
    Compose(ComposeBackend),
}

impl ServiceBackend {
    /// The backend for a fleet binding; state lives under `state_dir`.
    pub fn new(binding: &ServiceBinding, state_dir: &Path, name: &str) -> ServiceBackend {
        match &binding.backend {
            ServiceSpec::Process(spec) => {
                ServiceBackend::Process(ProcessBackend::new(spec.clone(), state_dir, name))
            }
            ServiceSpec::Docker(spec) => ServiceBackend::Docker(DockerBackend::new(spec.clone())),
            ServiceSpec::Compose(spec) => {
                ServiceBackend::Compose(ComposeBackend::new(spec.clone()))
            }
        }
    }

    /// Whether it is a one-shot job (its start runs it to completion).
    pub fn is_job(&self) -> bool {
        matches!(self, ServiceBackend::Process(p) if p.is_job())
    }

    /// Current status.
    pub async fn inspect(&self) -> Result<Status, CapError> {
        match self {
            ServiceBackend::Process(p) => {
                let state = p.state()?;
                let pid = p.running_pid().await?;
                Ok(Status {
                    running: pid.is_some(),
                    version: state.version,
                    detail: match pid {
                        Some(pid) => format!("process pid {pid}"),
                        None => "process not running".into(),
                    },
                })
            }
            ServiceBackend::Compose(c) => {
                let (running, version, detail) = c.inspect().await?;
                Ok(Status {
                    running,
                    version,
                    detail,
                })
            }
            ServiceBackend::Docker(d) => {
                let (running, version, detail) = d.inspect().await?;
                Ok(Status {
                    running,
                    version,
                    detail,
                })
            }
        }
    }

    /// Stop it.
    pub async fn stop(&self) -> Result<String, CapError> {
        match self {
            ServiceBackend::Process(p) => p.stop().await,
            ServiceBackend::Docker(d) => d.stop().await,
            ServiceBackend::Compose(c) => c.stop().await,
        }
    }

    /// Start it.
    pub async fn start(&self) -> Result<String, CapError> {
        match self {
            ServiceBackend::Process(p) => p.start().await,
            ServiceBackend::Docker(d) => d.start().await,
            ServiceBackend::Compose(c) => c.start().await,
        }
    }

    /// Switch it (stopped) to another version; `kept` is the container the run journaled as
    /// kept (containers only), `run` labels a container the switch creates.
    pub async fn switch_version(
        &self,
        version: &str,
        kept: Option<&KeptContainer>,
        run: Option<&str>,
    ) -> Result<Switched, CapError> {
        match self {
            ServiceBackend::Process(p) => p.switch_version(version).await.map(Switched::said),
            ServiceBackend::Docker(d) => d.switch_version(version, kept, run).await,
            ServiceBackend::Compose(c) => c.switch_version(version).await.map(Switched::said),
        }
    }

    /// The health check with what it saw: `(healthy, detail)`.
    pub async fn health_check(&self) -> Result<(bool, String), CapError> {
        match self {
            ServiceBackend::Process(p) => p.health_check().await,
            ServiceBackend::Docker(d) => d.health_check().await,
            ServiceBackend::Compose(c) => match c.container().await? {
                Some(d) => d.health_check().await,
                None => Ok((false, "the compose service has no container".into())),
            },
        }
    }

    /// Processes that look like the service but that Upshift neither started nor adopted.
    pub async fn strays(&self) -> Result<Vec<u32>, CapError> {
        match self {
            ServiceBackend::Process(p) => p.strays().await,
            // A container is known by its name: there is no other to find.
            ServiceBackend::Docker(_) | ServiceBackend::Compose(_) => Ok(Vec::new()),
        }
    }

    /// The processes on this machine that stopping the service ends.
    pub async fn processes(&self) -> Result<std::collections::BTreeSet<u32>, CapError> {
        match self {
            ServiceBackend::Process(p) => p.processes().await,
            ServiceBackend::Docker(d) => d.processes().await,
            ServiceBackend::Compose(c) => match c.container().await? {
                Some(d) => d.processes().await,
                None => Ok(Default::default()),
            },
        }
    }

    /// Record a service started by hand so Upshift can stop and start it.
    pub async fn adopt(&self, pid: Option<u32>) -> Result<String, CapError> {
        match self {
            ServiceBackend::Process(p) => p.adopt(pid).await,
            ServiceBackend::Docker(d) => d.adopt(pid).await,
            ServiceBackend::Compose(c) => match c.container().await? {
                Some(d) => d.adopt(pid).await,
                None => Err(CapError::Failed(
                    "the compose service has no container to adopt; start it with `upshift start`"
                        .into(),
                )),
            },
        }
    }

    /// Whether it answers its health check now.
    pub async fn healthy(&self) -> Result<bool, CapError> {
        match self {
            ServiceBackend::Process(p) => p.healthy().await,
            ServiceBackend::Docker(d) => d.healthy().await,
            ServiceBackend::Compose(c) => c.healthy().await,
        }
    }

    /// Wait until healthy; fail early, with its last output, if it stops running.
    pub async fn wait_healthy(&self, timeout: Duration) -> Result<String, CapError> {
        match self {
            ServiceBackend::Process(p) => {
                wait_until_healthy(p, timeout, Duration::from_millis(100)).await
            }
            ServiceBackend::Docker(d) => d.wait_healthy(timeout).await,
            ServiceBackend::Compose(c) => c.wait_healthy(timeout).await,
        }
    }

    /// Whether the image for `version` is on the engine (container services only).
    pub async fn image_present(&self, version: &str) -> Result<bool, CapError> {
        match self {
            ServiceBackend::Docker(d) => d.image_present(version).await,
            ServiceBackend::Compose(c) => c.image_present(version).await,
            ServiceBackend::Process(_) => {
                Err(CapError::Invalid("a process service has no images".into()))
            }
        }
    }

    /// Load images from a tar file (container services only).
    pub async fn load_image(&self, file: std::fs::File) -> Result<Vec<String>, CapError> {
        match self {
            ServiceBackend::Docker(d) => d.load_image(file).await,
            ServiceBackend::Compose(c) => c.load_image(file).await,
            ServiceBackend::Process(_) => {
                Err(CapError::Invalid("a process service has no images".into()))
            }
        }
    }

    /// Whether a switch keeps something for rolling back (a container, a Compose file).
    pub fn keeps_previous(&self) -> bool {
        !matches!(self, ServiceBackend::Process(_))
    }

    /// After a verified run: drop what was kept for rolling back (the previous container).
    pub async fn finalize(&self, kept: Option<&KeptContainer>) -> Result<String, CapError> {
        match self {
            ServiceBackend::Process(_) => Ok(String::new()),
            ServiceBackend::Docker(d) => d.finalize(kept).await,
            ServiceBackend::Compose(c) => c.finalize().await,
        }
    }

    /// The last lines of the service's output.
    pub async fn output_tail(&self) -> String {
        match self {
            ServiceBackend::Process(p) => p.log_tail(20),
            ServiceBackend::Docker(d) => d.output_tail().await,
            ServiceBackend::Compose(c) => c.output_tail().await,
        }
    }
}

/// What an engine answers while the host waits for it to become healthy.
pub(crate) trait Health {
    /// Who, in messages: `the service`, ``container `x` ``.
    fn label(&self) -> String;
    /// Whether it answers its health check now.
    async fn healthy(&self) -> Result<bool, CapError>;
    /// Whether it runs.
    async fn running(&self) -> Result<bool, CapError>;
    /// Its last output.
    async fn output_tail(&self) -> String;
}

/// The one health wait: poll every `poll` until healthy; fail early, with the last output, if it
/// stops running, and at `timeout`.
pub(crate) async fn wait_until_healthy(
    engine: &impl Health,
    timeout: Duration,
    poll: Duration,
) -> Result<String, CapError> {
    let started = Instant::now();
    loop {
        if engine.healthy().await? {
            return Ok(format!(
                "healthy after {:.1} s",
                started.elapsed().as_secs_f64()
            ));
        }
        let running = engine.running().await?;
        if !running || started.elapsed() > timeout {
            return Err(CapError::Failed(format!(
                "{} {}; last output:\n{}",
                engine.label(),
                if running {
                    format!("not healthy after {} s", timeout.as_secs())
                } else {
                    "stopped running while starting".into()
                },
                engine.output_tail().await
            )));
        }
        tokio::time::sleep(poll).await;
    }
}

/// Whether one of `processes` (from [`Services::processes`]) holds the client end of a
/// database session whose client address and port are `client`.
pub fn holds_client(
    processes: &std::collections::BTreeSet<u32>,
    client: (std::net::IpAddr, u16),
) -> bool {
    local::holds_client(processes, client)
}

/// `pid`, the rest of its process group when it leads one, and its descendants.
pub fn process_family(pid: u32) -> std::collections::BTreeSet<u32> {
    local::family(pid)
}

/// `pid 4242 (`/usr/bin/bytebase --port 8080`)`, for messages.
pub fn describe_process(pid: u32) -> String {
    match local::cmdline(pid) {
        Some(words) => {
            let line: String = words.join(" ").chars().take(200).collect();
            format!("pid {pid} (`{line}`)")
        }
        None => format!("pid {pid}"),
    }
}

/// The processes of this machine whose TCP socket is the client end `client` of a database
/// session (none when the client is elsewhere or in another network namespace).
pub fn holders_of(client: (std::net::IpAddr, u16)) -> Vec<u32> {
    local::holders_of(client)
}

/// Whether this very process holds the client end `client` of a database session: one of
/// Upshift's own connections (MySQL sessions carry no application name to tell them by).
pub fn held_by_this_process(client: (std::net::IpAddr, u16)) -> bool {
    local::holds_client(
        &std::collections::BTreeSet::from([std::process::id()]),
        client,
    )
}

/// An operator-given health URL's answer now: `(2xx, what it saw)`, e.g.
/// `GET http://127.0.0.1:8080/healthz answered 404 Not Found` (no redirects followed, 5 s at
/// most).
pub(crate) async fn health_url_status(url: &str) -> Result<(bool, String), CapError> {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| CapError::Failed(format!("cannot build an HTTP client: {e}")))?;
    let shown = upshift_model::redact::url_for_display(url);
    Ok(match client.get(url).send().await {
        Ok(r) => (
            r.status().is_success(),
            format!("GET {shown} answered {}", r.status()),
        ),
        Err(e) if e.is_timeout() => (false, format!("GET {shown} did not answer within 5 s")),
        Err(e) if e.is_connect() => (false, format!("GET {shown}: nothing accepts connections")),
        Err(e) => (false, format!("GET {shown} failed: {e}")),
    })
}

/// An operator-given health URL answers 2xx now (no redirects followed, 5 s at most).
pub(crate) async fn health_url_answers(url: &str) -> Result<bool, CapError> {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| CapError::Failed(format!("cannot build an HTTP client: {e}")))?;
    Ok(matches!(client.get(url).send().await, Ok(r) if r.status().is_success()))
}
