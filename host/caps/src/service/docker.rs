//! The `docker` service backend, through the Docker Engine API (bollard).
//!
//! Switching versions **recreates the container with the new image and everything else kept**:
//! the new container is created beside the old one, the old one is renamed and kept (stopped)
//! until the run is verified, and switching back renames it into place again, exactly as it was.
//! Settings the old *image* supplied (its default env, cmd, entrypoint, working dir, labels,
//! healthcheck…) are not copied as if they were the operator's, so the new image's defaults take
//! effect; everything the operator set — and the whole host config (mounts, ports, ulimits, ipc,
//! privileges, capabilities, network, restart policy, log config) — is carried over unchanged.

use std::collections::HashMap;
use std::time::Duration;

use bollard::Docker;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, EndpointSettings, HealthStatusEnum, ImageConfig,
    NetworkingConfig,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    RenameContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use futures_util::StreamExt;
use tokio::sync::OnceCell;

use super::image_archive::TarName;
use super::{KeptContainer, Switched};
use crate::CapError;
use upshift_model::binding::{DockerSpec, image_repository as repository};

/// Labels Upshift sets (and owns) start with this; they are never carried to a new container.
pub const LABEL_PREFIX: &str = "io.upshift.";
/// On a container Upshift created by switching: the id of the container it kept in its place.
pub const LABEL_REPLACES: &str = "io.upshift.replaces";
/// On a container Upshift created by switching: the run that created it.
pub const LABEL_RUN: &str = "io.upshift.run";

/// The first 12 characters of a container id, for messages.
fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// `name (id …, image …)`, or that there is none, for messages.
fn describe(c: Option<&ContainerInspectResponse>) -> String {
    match c {
        None => "nothing".into(),
        Some(c) => format!(
            "`{}` (id {}, image {})",
            c.name.as_deref().unwrap_or("").trim_start_matches('/'),
            short(c.id.as_deref().unwrap_or("")),
            DockerBackend::image_of(c)
        ),
    }
}

/// A container service.
pub struct DockerBackend {
    spec: DockerSpec,
    client: OnceCell<Docker>,
}

fn failed(context: &str, e: impl std::fmt::Display) -> CapError {
    CapError::Failed(format!("{context}: {e}"))
}

fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// Whether a version can be put into an image tag.
fn valid_tag(version: &str) -> bool {
    !version.is_empty()
        && version.len() <= 128
        && version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

/// Keep the items of `container` that the image did not supply.
fn user_part(container: Option<Vec<String>>, image: Option<&Vec<String>>) -> Option<Vec<String>> {
    let image = image.cloned().unwrap_or_default();
    container.map(|items| items.into_iter().filter(|i| !image.contains(i)).collect())
}

/// `Some(value)` when it differs from the image's default, so the new image's default applies
/// otherwise.
fn unless_default<T: PartialEq>(container: Option<T>, image: Option<T>) -> Option<T> {
    match (container, image) {
        (Some(c), Some(i)) if c == i => None,
        (c, _) => c,
    }
}

/// The create body for `image` that keeps everything the operator set on `old`.
pub fn recreate_body(
    old: &ContainerInspectResponse,
    old_image: &ImageConfig,
    image: &str,
) -> ContainerCreateBody {
    let config = old.config.clone().unwrap_or_default();
    let short_id: String = old
        .id
        .clone()
        .unwrap_or_default()
        .chars()
        .take(12)
        .collect();
    let labels = config.labels.map(|labels| {
        let defaults = old_image.labels.clone().unwrap_or_default();
        labels
            .into_iter()
            .filter(|(k, v)| defaults.get(k) != Some(v) && !k.starts_with(LABEL_PREFIX))
            .collect::<HashMap<_, _>>()
    });
    let host_config = old.host_config.clone();
    let network_mode = host_config
        .as_ref()
        .and_then(|h| h.network_mode.clone())
        .unwrap_or_default();
    let networking_config = if matches!(network_mode.as_str(), "host" | "none")
        || network_mode.starts_with("container:")
    {
        None
    } else {
        old.network_settings
            .as_ref()
            .and_then(|n| n.networks.clone())
            .map(|networks| NetworkingConfig {
                endpoints_config: Some(
                    networks
                        .into_iter()
                        .map(|(name, e)| {
                            let aliases = e.aliases.map(|a| {
                                a.into_iter().filter(|x| *x != short_id).collect::<Vec<_>>()
                            });
                            (
                                name,
                                EndpointSettings {
                                    aliases,
                                    links: e.links,
                                    ipam_config: e.ipam_config,
                                    driver_opts: e.driver_opts,
                                    ..Default::default()
                                },
                            )
                        })
                        .collect(),
                ),
            })
    };
    ContainerCreateBody {
        image: Some(image.to_string()),
        hostname: config.hostname.filter(|h| *h != short_id),
        domainname: config.domainname,
        user: unless_default(config.user, old_image.user.clone()),
        attach_stdin: config.attach_stdin,
        attach_stdout: config.attach_stdout,
        attach_stderr: config.attach_stderr,
        exposed_ports: user_part(config.exposed_ports, old_image.exposed_ports.as_ref()),
        tty: config.tty,
        open_stdin: config.open_stdin,
        stdin_once: config.stdin_once,
        env: user_part(config.env, old_image.env.as_ref()),
        cmd: unless_default(config.cmd, old_image.cmd.clone()),
        healthcheck: unless_default(config.healthcheck, old_image.healthcheck.clone()),
        volumes: user_part(config.volumes, old_image.volumes.as_ref()),
        working_dir: unless_default(config.working_dir, old_image.working_dir.clone()),
        entrypoint: unless_default(config.entrypoint, old_image.entrypoint.clone()),
        labels,
        stop_signal: unless_default(config.stop_signal, old_image.stop_signal.clone()),
        stop_timeout: config.stop_timeout,
        host_config,
        networking_config,
        ..Default::default()
    }
}

impl DockerBackend {
    /// A backend for the container named in `spec` (connects on first use).
    pub fn new(spec: DockerSpec) -> DockerBackend {
        DockerBackend {
            spec,
            client: OnceCell::new(),
        }
    }

    async fn docker(&self) -> Result<&Docker, CapError> {
        self.client
            .get_or_try_init(|| async {
                let docker = Docker::connect_with_local_defaults()
                    .map_err(|e| failed("cannot reach the Docker engine (is it running, and may this user use /var/run/docker.sock?)", e))?;
                docker
                    .negotiate_version()
                    .await
                    .map_err(|e| failed("cannot reach the Docker engine (is it running, and may this user use /var/run/docker.sock?)", e))
            })
            .await
    }

    fn kept_name(&self) -> String {
        format!("{}-upshift-previous", self.spec.container)
    }

    fn next_name(&self) -> String {
        format!("{}-upshift-next", self.spec.container)
    }

    async fn inspect_named(
        &self,
        name: &str,
    ) -> Result<Option<ContainerInspectResponse>, CapError> {
        match self.docker().await?.inspect_container(name, None).await {
            Ok(c) => Ok(Some(c)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(failed(&format!("cannot inspect container `{name}`"), e)),
        }
    }

    /// The container with exactly this full id (an engine also resolves names and id
    /// prefixes; those do not count).
    async fn inspect_id(&self, id: &str) -> Result<Option<ContainerInspectResponse>, CapError> {
        Ok(self
            .inspect_named(id)
            .await?
            .filter(|c| c.id.as_deref() == Some(id)))
    }

    async fn container(&self) -> Result<ContainerInspectResponse, CapError> {
        self.inspect_named(&self.spec.container).await?.ok_or_else(|| {
            CapError::Failed(format!(
                "no container named `{}` on this Docker engine; check [instance.service] container = …",
                self.spec.container
            ))
        })
    }

    /// The image the container was created from, as written (`repo:tag`).
    fn image_of(c: &ContainerInspectResponse) -> String {
        c.config
            .as_ref()
            .and_then(|cfg| cfg.image.clone())
            .unwrap_or_default()
    }

    /// The version part of an image reference made from the template.
    pub fn version_of(&self, image: &str) -> String {
        let (prefix, suffix) = self
            .spec
            .image
            .split_once("{version}")
            .unwrap_or((&self.spec.image, ""));
        image
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix(suffix))
            .unwrap_or(image)
            .to_string()
    }

    /// The image reference for `version`, refused unless its repository is granted.
    pub fn image_for(&self, version: &str) -> Result<String, CapError> {
        super::checked_version(version)?;
        if !valid_tag(version) {
            return Err(CapError::Denied(format!(
                "`{version}` cannot be an image tag (letters, digits, `.`, `-`, `_`)"
            )));
        }
        let image = self.spec.image.replace("{version}", version);
        let repo = repository(&image);
        if !self.spec.images.iter().any(|allowed| allowed == repo) {
            return Err(CapError::Denied(format!(
                "image repository `{repo}` is not granted for this service (granted: {})",
                self.spec.images.join(", ")
            )));
        }
        Ok(image)
    }

    /// Running?, version, and the image id (digest).
    pub async fn inspect(&self) -> Result<(bool, String, String), CapError> {
        let c = self.container().await?;
        let running = c.state.as_ref().and_then(|s| s.running).unwrap_or(false);
        let image = Self::image_of(&c);
        let detail = format!(
            "container {} image {} ({})",
            self.spec.container,
            image,
            c.image.clone().unwrap_or_default()
        );
        Ok((running, self.version_of(&image), detail))
    }

    /// Stop the container.
    pub async fn stop(&self) -> Result<String, CapError> {
        let c = self.container().await?;
        let state = c.state.unwrap_or_default();
        if !state.running.unwrap_or(false) && !state.restarting.unwrap_or(false) {
            return Ok("not running".into());
        }
        let timeout = i32::try_from(self.spec.stop_timeout_secs).unwrap_or(30);
        self.docker()
            .await?
            .stop_container(
                &self.spec.container,
                Some(StopContainerOptionsBuilder::default().t(timeout).build()),
            )
            .await
            .map_err(|e| failed(&format!("cannot stop `{}`", self.spec.container), e))?;
        Ok(format!("stopped container {}", self.spec.container))
    }

    async fn logs_tail(&self, name: &str) -> String {
        let Ok(docker) = self.docker().await else {
            return String::new();
        };
        let options = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .tail("20")
            .build();
        let mut out = String::new();
        let mut stream = docker.logs(name, Some(options));
        while let Some(Ok(chunk)) = stream.next().await {
            out.push_str(&chunk.to_string());
            if out.len() > 8192 {
                break;
            }
        }
        out.trim_end().to_string()
    }

    /// Start the container; fail with its last output if it exits at once.
    pub async fn start(&self) -> Result<String, CapError> {
        let docker = self.docker().await?;
        let restarts_before = self.container().await?.restart_count.unwrap_or(0);
        docker
            .start_container(&self.spec.container, None)
            .await
            .map_err(|e| failed(&format!("cannot start `{}`", self.spec.container), e))?;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let c = self.container().await?;
        let state = c.state.clone().unwrap_or_default();
        // With a restart policy a crashing container comes back at once: a restart counts as
        // failing to start.
        let restarted =
            c.restart_count.unwrap_or(0) > restarts_before || state.restarting.unwrap_or(false);
        if !state.running.unwrap_or(false) || restarted {
            if restarted {
                let _ = self.stop().await;
            }
            return Err(CapError::Failed(format!(
                "container `{}` ({}) exited at once (exit code {}); last output:\n{}",
                self.spec.container,
                Self::image_of(&c),
                state.exit_code.unwrap_or(-1),
                self.logs_tail(&self.spec.container).await
            )));
        }
        Ok(format!(
            "started container {} ({})",
            self.spec.container,
            Self::image_of(&c)
        ))
    }

    /// Check that `kept`, as the run journaled it, is still exactly what Upshift left: the
    /// container with that id exists under the kept name and runs the journaled image. Anything
    /// else is refused, naming what was found instead.
    async fn verify_kept(&self, kept: &KeptContainer) -> Result<(), CapError> {
        let kept_name = self.kept_name();
        let refuse = |what: String| {
            CapError::Failed(format!(
                "switching `{}` back refused: {what}. Nothing was changed; Upshift uses only the container it kept (id {}) and never one found by name or image. Fix: inspect the containers shown (`docker inspect`), put the kept one back by hand if it still exists, or restore from the run's backup",
                self.spec.container,
                short(&kept.id)
            ))
        };
        let by_name = self.inspect_named(&kept_name).await?;
        let Some(found) = self.inspect_id(&kept.id).await? else {
            return Err(refuse(format!(
                "the container Upshift kept (id {}) is gone; under `{kept_name}` there is {}",
                short(&kept.id),
                describe(by_name.as_ref())
            )));
        };
        let name = found.name.as_deref().unwrap_or("").trim_start_matches('/');
        if name != kept_name {
            return Err(refuse(format!(
                "the container Upshift kept (id {}) is now {}, not `{kept_name}`; under `{kept_name}` there is {}",
                short(&kept.id),
                describe(Some(&found)),
                describe(by_name.as_ref())
            )));
        }
        if Self::image_of(&found) != kept.image {
            return Err(refuse(format!(
                "the container Upshift kept (id {}) runs {}, not {} as journaled",
                short(&kept.id),
                Self::image_of(&found),
                kept.image
            )));
        }
        Ok(())
    }

    /// Check that the bound container is the one Upshift created in `kept`'s place (by id, and
    /// carrying the label naming the kept id): a container someone else put under the bound
    /// name is reported, and no switch starts from it.
    fn verify_bound(
        &self,
        kept: &KeptContainer,
        current: &ContainerInspectResponse,
    ) -> Result<(), CapError> {
        let current_id = current.id.as_deref().unwrap_or("");
        let label = current
            .config
            .as_ref()
            .and_then(|c| c.labels.as_ref())
            .and_then(|l| l.get(LABEL_REPLACES));
        if current_id != kept.replaced_by || label != Some(&kept.id) {
            return Err(CapError::Failed(format!(
                "switching `{}` refused: it is now {}, not the container Upshift created in place of the kept one (id {}, labelled {LABEL_REPLACES}={}). Nothing was changed. Fix: inspect the containers shown (`docker inspect`) and find out who replaced it; restore from the run's backup if needed",
                self.spec.container,
                describe(Some(current)),
                short(&kept.replaced_by),
                short(&kept.id)
            )));
        }
        Ok(())
    }

    /// Switch to `version` (the container must be stopped). Back to the version of `kept` (the
    /// container the run journaled as kept) puts that very container back, after checking it is
    /// still exactly what Upshift left; otherwise the container is recreated beside with the
    /// new image and the old one kept (returned, for the run to journal). A container under the
    /// kept name that the run did not journal is reported and neither used nor removed.
    pub async fn switch_version(
        &self,
        version: &str,
        kept: Option<&KeptContainer>,
        run: Option<&str>,
    ) -> Result<Switched, CapError> {
        let image = self.image_for(version)?;
        let docker = self.docker().await?;
        let current = self.container().await?;
        if current
            .state
            .as_ref()
            .and_then(|s| s.running)
            .unwrap_or(false)
        {
            return Err(CapError::Failed(format!(
                "container `{}` is running; stop it before switching versions",
                self.spec.container
            )));
        }
        if let Some(kept) = kept {
            self.verify_bound(kept, &current)?;
        }
        let current_image = Self::image_of(&current);
        if current_image == image {
            return Ok(Switched::said(format!("already at {image}")));
        }
        let current_id = current.id.clone().unwrap_or_default();
        let rename = |from: String, to: String| async move {
            docker
                .rename_container(
                    &from,
                    RenameContainerOptionsBuilder::default().name(&to).build(),
                )
                .await
                .map_err(|e| failed(&format!("cannot rename `{from}` to `{to}`"), e))
        };
        let remove = |name: String| async move {
            docker
                .remove_container(
                    &name,
                    Some(RemoveContainerOptionsBuilder::default().force(true).build()),
                )
                .await
                .map_err(|e| failed(&format!("cannot remove `{name}`"), e))
        };
        // Switching back: the journaled kept container, and only that one.
        if let Some(kept) = kept
            && kept.image == image
        {
            self.verify_kept(kept).await?;
            remove(current_id.clone()).await?;
            rename(kept.id.clone(), self.spec.container.clone()).await?;
            return Ok(Switched {
                summary: format!(
                    "put back the kept container (id {}, {image})",
                    short(&kept.id)
                ),
                kept: None,
                released: Some(kept.id.clone()),
            });
        }
        // Recreating: the kept name must be free, or hold the container this run kept.
        let occupant = self.inspect_named(&self.kept_name()).await?;
        let replaces_kept = match &occupant {
            None => None,
            Some(o) if kept.is_some_and(|k| Some(k.id.as_str()) == o.id.as_deref()) => o.id.clone(),
            Some(o) => {
                return Err(CapError::Failed(format!(
                    "switching `{}` to {image} refused: `{}` is taken by {}, which {}. Upshift neither uses nor removes a container it did not journal. Fix: inspect it (`docker inspect {}`), then remove or rename it and retry",
                    self.spec.container,
                    self.kept_name(),
                    describe(Some(o)),
                    match kept {
                        Some(k) =>
                            format!("is not the container this run kept (id {})", short(&k.id)),
                        None => "this run did not keep".into(),
                    },
                    short(o.id.as_deref().unwrap_or(""))
                )));
            }
        };
        let old_image = docker
            .inspect_image(current.image.as_deref().unwrap_or(&current_image))
            .await
            .map_err(|e| {
                failed(
                    &format!("cannot inspect the current image {current_image}"),
                    e,
                )
            })?
            .config
            .unwrap_or_default();
        if let Err(e) = docker.inspect_image(&image).await {
            return Err(if is_not_found(&e) {
                CapError::Failed(format!(
                    "image {image} is not on this Docker engine; load it first (`docker load < image.tar`)"
                ))
            } else {
                failed(&format!("cannot inspect image {image}"), e)
            });
        }
        let mut body = recreate_body(&current, &old_image, &image);
        let labels = body.labels.get_or_insert_with(HashMap::new);
        labels.insert(LABEL_REPLACES.to_string(), current_id.clone());
        if let Some(run) = run {
            labels.insert(LABEL_RUN.to_string(), run.to_string());
        }
        if self.inspect_named(&self.next_name()).await?.is_some() {
            remove(self.next_name()).await?;
        }
        let created = docker
            .create_container(
                Some(
                    CreateContainerOptionsBuilder::default()
                        .name(&self.next_name())
                        .build(),
                ),
                body,
            )
            .await
            .map_err(|e| failed(&format!("cannot create the new container for {image}"), e))?;
        if let Some(id) = &replaces_kept {
            remove(id.clone()).await?;
        }
        rename(current_id.clone(), self.kept_name()).await?;
        if let Err(e) = rename(created.id.clone(), self.spec.container.clone()).await {
            let _ = rename(current_id.clone(), self.spec.container.clone()).await;
            return Err(e);
        }
        Ok(Switched {
            summary: format!(
                "recreated `{}` with {image}; the previous container ({current_image}, id {}) is kept as `{}`",
                self.spec.container,
                short(&current_id),
                self.kept_name()
            ),
            kept: Some(KeptContainer {
                id: current_id,
                replaced_by: created.id,
                image: current_image,
            }),
            released: replaces_kept,
        })
    }

    /// Healthy = running and, by priority: the container's healthcheck says healthy, or the
    /// health URL answers 2xx, or (neither set) running.
    pub async fn healthy(&self) -> Result<bool, CapError> {
        let c = self.container().await?;
        let state = c.state.unwrap_or_default();
        if !state.running.unwrap_or(false) {
            return Ok(false);
        }
        if let Some(status) = state.health.and_then(|h| h.status)
            && !matches!(status, HealthStatusEnum::NONE | HealthStatusEnum::EMPTY)
        {
            return Ok(status == HealthStatusEnum::HEALTHY);
        }
        let Some(url) = &self.spec.health_url else {
            return Ok(true);
        };
        super::health_url_answers(url).await
    }

    /// The health check with what it saw: `(healthy, detail)`.
    pub async fn health_check(&self) -> Result<(bool, String), CapError> {
        let c = self.container().await?;
        let state = c.state.unwrap_or_default();
        let name = &self.spec.container;
        if !state.running.unwrap_or(false) {
            return Ok((false, format!("container `{name}` is not running")));
        }
        if let Some(status) = state.health.and_then(|h| h.status)
            && !matches!(status, HealthStatusEnum::NONE | HealthStatusEnum::EMPTY)
        {
            return Ok((
                status == HealthStatusEnum::HEALTHY,
                format!("container `{name}`'s healthcheck says {status}"),
            ));
        }
        match &self.spec.health_url {
            None => Ok((
                true,
                format!("container `{name}` runs (no health check set)"),
            )),
            Some(url) => super::health_url_status(url).await,
        }
    }

    /// The container's processes as this machine sees them (none when it is not running).
    pub async fn processes(&self) -> Result<std::collections::BTreeSet<u32>, CapError> {
        let Some(c) = self.inspect_named(&self.spec.container).await? else {
            return Ok(Default::default());
        };
        let pid = c
            .state
            .filter(|s| s.running == Some(true))
            .and_then(|s| s.pid)
            .and_then(|p| u32::try_from(p).ok())
            .filter(|p| *p > 0);
        Ok(pid.map(super::local::family).unwrap_or_default())
    }

    /// A container is known by its bound name: adopting one checks that it runs under that
    /// name and records nothing else (a pid is not how containers are stopped).
    pub async fn adopt(&self, pid: Option<u32>) -> Result<String, CapError> {
        if pid.is_some() {
            return Err(CapError::Invalid(
                "a container service is adopted by its name, not a pid; drop --pid".into(),
            ));
        }
        let c = self.container().await?;
        let running = c.state.as_ref().and_then(|s| s.running).unwrap_or(false);
        let id = c.id.clone().unwrap_or_default();
        let short = id.get(..12).unwrap_or(&id);
        if !running {
            return Err(CapError::Failed(format!(
                "container `{}` ({short}) is not running; start it with `upshift start`",
                self.spec.container
            )));
        }
        Ok(format!(
            "container `{}` ({short}, image {}) runs under the bound name: Upshift stops and starts it by that name",
            self.spec.container,
            Self::image_of(&c)
        ))
    }

    /// Whether the container has restarted since it was created (a crash loop under a restart
    /// policy).
    pub async fn restarted_since_create(&self) -> Result<bool, CapError> {
        let c = self.container().await?;
        Ok(c.restart_count.unwrap_or(0) > 0 || c.state.and_then(|s| s.restarting).unwrap_or(false))
    }

    /// Whether the image for `version` is on the engine.
    pub async fn image_present(&self, version: &str) -> Result<bool, CapError> {
        let image = self.image_for(version)?;
        match self.docker().await?.inspect_image(&image).await {
            Ok(_) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(failed(&format!("cannot inspect image {image}"), e)),
        }
    }

    /// Whether `repository` (normalised) is one of the granted repositories.
    fn granted_repository(&self, repository: &str) -> bool {
        self.spec.images.iter().any(|allowed| {
            super::image_archive::normalize(allowed).is_ok_and(|a| a.repository == repository)
        })
    }

    /// `docker load` a tar file (opened by the caller through the files capability), streamed.
    ///
    /// Before anything is loaded the tar's own index (`manifest.json`, `index.json`,
    /// `repositories`) is read: the load is denied, with nothing loaded, when the tar is not an
    /// image archive, names no image, names one outside the granted repositories, or names a
    /// tag that exists on the engine for another image (loading would move it).
    pub async fn load_image(&self, file: std::fs::File) -> Result<Vec<String>, CapError> {
        use std::io::{Seek, SeekFrom};
        let docker = self.docker().await?;
        let (file, names) = tokio::task::spawn_blocking(move || {
            let mut file = file;
            let names = super::image_archive::read_names(std::io::BufReader::new(&mut file));
            let rewound = file.seek(SeekFrom::Start(0));
            (file, names, rewound)
        })
        .await
        .map_err(|e| failed("reading the image tar stopped", e))
        .and_then(|(file, names, rewound)| {
            rewound.map_err(|e| failed("cannot rewind the image tar", e))?;
            Ok((file, names))
        })?;
        let names = names.map_err(|e| CapError::Denied(format!("the tar is not loaded: {e}")))?;
        let ungranted: Vec<&str> = names
            .names
            .values()
            .filter(|n| !self.granted_repository(&n.named.repository))
            .map(|n| n.named.written.as_str())
            .collect();
        if !ungranted.is_empty() {
            return Err(CapError::Denied(format!(
                "the tar names images outside the granted repositories ({}); nothing was loaded (granted: {})",
                ungranted.join(", "),
                self.spec.images.join(", ")
            )));
        }
        for TarName { named: name, ids } in names.names.values() {
            match docker.inspect_image(&name.tagged).await {
                Ok(existing) => {
                    let existing = existing.id.unwrap_or_default();
                    if !ids.contains(&existing) {
                        return Err(CapError::Denied(format!(
                            "the tar names `{}`, which already exists on this engine as image {existing}; loading would move that tag to another image, so nothing was loaded (remove or retag the existing image first if that is intended)",
                            name.written
                        )));
                    }
                }
                Err(e) if is_not_found(&e) => {}
                Err(e) => {
                    return Err(failed(&format!("cannot inspect image {}", name.tagged), e));
                }
            }
        }
        let stream = tokio_util::io::ReaderStream::new(tokio::fs::File::from_std(file));
        let mut progress = docker.import_image_stream(
            bollard::query_parameters::ImportImageOptionsBuilder::default()
                .quiet(true)
                .build(),
            stream,
            None,
        );
        let mut loaded = Vec::new();
        while let Some(item) = progress.next().await {
            let info = item.map_err(|e| failed("docker load failed", e))?;
            if let Some(err) = info.error_detail.and_then(|d| d.message) {
                return Err(CapError::Failed(format!("docker load failed: {err}")));
            }
            if let Some(line) = info.stream {
                for l in line.lines() {
                    if let Some(image) = l.trim().strip_prefix("Loaded image: ") {
                        loaded.push(image.to_string());
                    }
                }
            }
        }
        // The engine loaded what the tar said (the file may have changed since it was read):
        // anything else is reported, and left for the operator to look at, never removed by
        // name (that could remove an image someone else relies on).
        let unexpected: Vec<&String> = loaded
            .iter()
            .filter(|l| {
                super::image_archive::normalize(l)
                    .map_or(true, |n| !names.names.contains_key(&n.tagged))
            })
            .collect();
        if !unexpected.is_empty() {
            return Err(CapError::Denied(format!(
                "docker loaded images the tar's index did not name ({}); the file changed while it was loaded? They were left in place for the operator to inspect",
                unexpected
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        if loaded.is_empty() {
            return Err(CapError::Failed("docker load reported no image".into()));
        }
        Ok(loaded)
    }

    /// After a verified run: remove the container the run journaled as kept, by id, if it is
    /// still under the kept name. Nothing journaled, nothing removed (never by name).
    pub async fn finalize(&self, kept: Option<&KeptContainer>) -> Result<String, CapError> {
        let Some(kept) = kept else {
            return Ok(String::new());
        };
        let Some(found) = self.inspect_id(&kept.id).await? else {
            return Ok(format!(
                "the kept container (id {}) is already gone",
                short(&kept.id)
            ));
        };
        let name = found.name.as_deref().unwrap_or("").trim_start_matches('/');
        if name != self.kept_name() {
            return Err(CapError::Failed(format!(
                "the kept container (id {}) is now {}, not `{}`; it was left alone. Fix: remove it by hand once you know who renamed it",
                short(&kept.id),
                describe(Some(&found)),
                self.kept_name()
            )));
        }
        self.docker()
            .await?
            .remove_container(
                &kept.id,
                Some(RemoveContainerOptionsBuilder::default().force(true).build()),
            )
            .await
            .map_err(|e| failed(&format!("cannot remove `{}`", self.kept_name()), e))?;
        Ok(format!(
            "removed the kept container `{}` (id {})",
            self.kept_name(),
            short(&kept.id)
        ))
    }

    /// The last lines of the container's output.
    pub async fn output_tail(&self) -> String {
        self.logs_tail(&self.spec.container).await
    }

    /// Wait until healthy, failing early with its output if it stops.
    pub async fn wait_healthy(&self, timeout: Duration) -> Result<String, CapError> {
        super::wait_until_healthy(self, timeout, Duration::from_millis(200)).await
    }
}

impl super::Health for DockerBackend {
    fn label(&self) -> String {
        format!("container `{}`", self.spec.container)
    }

    async fn healthy(&self) -> Result<bool, CapError> {
        DockerBackend::healthy(self).await
    }

    async fn running(&self) -> Result<bool, CapError> {
        Ok(self.inspect().await?.0)
    }

    async fn output_tail(&self) -> String {
        DockerBackend::output_tail(self).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repositories_and_tags() {
        assert_eq!(repository("kwdb/kwdb:3.0.0"), "kwdb/kwdb");
        assert_eq!(
            repository("registry:5000/kwdb/kwdb:3.0.0"),
            "registry:5000/kwdb/kwdb"
        );
        assert_eq!(repository("kwdb/kwdb"), "kwdb/kwdb");
        assert_eq!(repository("kwdb/kwdb:3@sha256:abc"), "kwdb/kwdb");
        assert!(valid_tag("3.0.0-beta_1"));
        assert!(!valid_tag("3.0/../x") && !valid_tag("") && !valid_tag("a:b"));
        let b = DockerBackend::new(DockerSpec {
            container: "kwdb".into(),
            image: "kwdb/kwdb:{version}".into(),
            images: vec!["kwdb/kwdb".into()],
            health_url: None,
            stop_timeout_secs: 10,
        });
        assert_eq!(b.image_for("3.0.0"), Ok("kwdb/kwdb:3.0.0".into()));
        assert_eq!(b.version_of("kwdb/kwdb:2.2.0"), "2.2.0");
        assert!(matches!(b.image_for("x@y"), Err(CapError::Denied(_))));
    }

    #[test]
    fn image_defaults_are_not_carried_over() {
        let old_image = ImageConfig {
            env: Some(vec!["PATH=/bin".into(), "SVC_VERSION=1.0.0".into()]),
            cmd: Some(vec!["serve".into()]),
            working_dir: Some("/".into()),
            ..Default::default()
        };
        let old = ContainerInspectResponse {
            id: Some("0123456789abcdef".into()),
            config: Some(bollard::models::ContainerConfig {
                hostname: Some("0123456789ab".into()),
                env: Some(vec![
                    "PATH=/bin".into(),
                    "SVC_VERSION=1.0.0".into(),
                    "OPERATOR=set".into(),
                ]),
                cmd: Some(vec!["serve".into()]),
                working_dir: Some("/kaiwudb/bin".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let body = recreate_body(&old, &old_image, "svc:2.0.0");
        assert_eq!(body.image.as_deref(), Some("svc:2.0.0"));
        assert_eq!(body.env, Some(vec!["OPERATOR=set".to_string()]));
        assert_eq!(body.cmd, None, "the new image's default command applies");
        assert_eq!(
            body.working_dir.as_deref(),
            Some("/kaiwudb/bin"),
            "set by the operator"
        );
        assert_eq!(body.hostname, None, "the generated hostname is not pinned");
    }
}
