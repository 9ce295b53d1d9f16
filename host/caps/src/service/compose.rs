//! The `compose` service backend: a service of a Compose file. Switching versions edits only
//! that service's `image` (comments and layout kept, see [`super::compose_file`]), keeping the
//! previous file beside it until the run is verified; starting brings just that service up.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::compose_file::{find_image, set_image};
use super::docker::DockerBackend;
use crate::CapError;
use upshift_model::binding::{ComposeSpec, DockerSpec};

/// A Compose service.
pub struct ComposeBackend {
    spec: ComposeSpec,
    images: DockerBackend,
}

fn failed(context: &str, e: impl std::fmt::Display) -> CapError {
    CapError::Failed(format!("{context}: {e}"))
}

impl ComposeBackend {
    /// A backend for `spec`.
    pub fn new(spec: ComposeSpec) -> ComposeBackend {
        let images = DockerBackend::new(DockerSpec {
            container: String::new(),
            image: spec.image.clone(),
            images: spec.images.clone(),
            health_url: spec.health_url.clone(),
            stop_timeout_secs: spec.stop_timeout_secs,
        });
        ComposeBackend { spec, images }
    }

    /// A problem with the Compose file, naming it.
    fn file_error(&self, problem: String) -> CapError {
        CapError::Failed(format!(
            "Compose file {}: {problem}",
            self.spec.file.display()
        ))
    }

    fn previous_file(&self) -> PathBuf {
        let mut name = self.spec.file.as_os_str().to_owned();
        name.push(".upshift-previous");
        PathBuf::from(name)
    }

    async fn compose(&self, args: &[&str]) -> Result<String, CapError> {
        // The fleet file resolves `file` to an absolute path; a bare name still runs in `.`.
        let dir = self
            .spec
            .file
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let out = tokio::process::Command::new("docker-compose")
            .current_dir(dir)
            .arg("-f")
            .arg(&self.spec.file)
            .args(args)
            // Not cut by a Ctrl-C at the terminal: the host stops at a step boundary.
            .process_group(0)
            .output()
            .await
            .map_err(|e| {
                failed(
                    "cannot run docker-compose (is the Compose tool installed?)",
                    e,
                )
            })?;
        if !out.status.success() {
            return Err(CapError::Failed(format!(
                "docker-compose {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// The container running the service now, if any.
    pub(crate) async fn container(&self) -> Result<Option<DockerBackend>, CapError> {
        let id = self.compose(&["ps", "-q", &self.spec.service]).await?;
        let id = id.lines().next().unwrap_or("").trim().to_string();
        if id.is_empty() {
            return Ok(None);
        }
        Ok(Some(DockerBackend::new(DockerSpec {
            container: id,
            image: self.spec.image.clone(),
            images: self.spec.images.clone(),
            health_url: self.spec.health_url.clone(),
            stop_timeout_secs: self.spec.stop_timeout_secs,
        })))
    }

    fn read(&self) -> Result<String, CapError> {
        std::fs::read_to_string(&self.spec.file)
            .map_err(|e| failed(&format!("cannot read {}", self.spec.file.display()), e))
    }

    /// Running?, version (from the file), detail.
    pub async fn inspect(&self) -> Result<(bool, String, String), CapError> {
        let text = self.read()?;
        let image = find_image(&text, &self.spec.service)
            .map_err(|e| self.file_error(e))?
            .value;
        let running = match self.container().await? {
            Some(c) => c.inspect().await?.0,
            None => false,
        };
        Ok((
            running,
            self.images.version_of(&image),
            format!(
                "compose service {} in {} ({image})",
                self.spec.service,
                self.spec.file.display()
            ),
        ))
    }

    /// Stop the service.
    pub async fn stop(&self) -> Result<String, CapError> {
        let timeout = self.spec.stop_timeout_secs.to_string();
        self.compose(&["stop", "-t", &timeout, &self.spec.service])
            .await?;
        Ok(format!("stopped compose service {}", self.spec.service))
    }

    /// Bring the service up (recreating its container if the file changed); fail with its output
    /// if it exits or restarts at once.
    pub async fn start(&self) -> Result<String, CapError> {
        self.compose(&["up", "-d", "--no-deps", "--no-build", &self.spec.service])
            .await?;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let Some(container) = self.container().await? else {
            return Err(CapError::Failed(format!(
                "compose service {} has no container after `up`",
                self.spec.service
            )));
        };
        let (running, _, detail) = container.inspect().await?;
        let healthy_start = running && !container.restarted_since_create().await?;
        if !healthy_start {
            let logs = self
                .compose(&["logs", "--no-color", "--tail", "20", &self.spec.service])
                .await
                .unwrap_or_default();
            let _ = self.stop().await;
            return Err(CapError::Failed(format!(
                "compose service {} did not stay up ({detail}); last output:\n{logs}",
                self.spec.service
            )));
        }
        Ok(format!(
            "started compose service {} ({detail})",
            self.spec.service
        ))
    }

    /// Point the service at `version`'s image. Switching back to the version of the kept file
    /// puts that file back byte for byte.
    pub async fn switch_version(&self, version: &str) -> Result<String, CapError> {
        let image = self.images.image_for(version)?;
        let text = self.read()?;
        let current = find_image(&text, &self.spec.service)
            .map_err(|e| self.file_error(e))?
            .value;
        if current == image {
            return Ok(format!("already at {image}"));
        }
        let previous = self.previous_file();
        if let Ok(kept) = std::fs::read_to_string(&previous)
            && find_image(&kept, &self.spec.service).is_ok_and(|s| s.value == image)
        {
            std::fs::rename(&previous, &self.spec.file)
                .map_err(|e| failed("cannot put the previous file back", e))?;
            return Ok(format!(
                "put back the previous {} ({image})",
                self.spec.file.display()
            ));
        }
        let edited =
            set_image(&text, &self.spec.service, &image).map_err(|e| self.file_error(e))?;
        std::fs::write(&previous, &text)
            .map_err(|e| failed(&format!("cannot keep {}", previous.display()), e))?;
        let staging = previous.with_extension("upshift-next");
        std::fs::write(&staging, edited)
            .map_err(|e| failed(&format!("cannot write {}", staging.display()), e))?;
        std::fs::rename(&staging, &self.spec.file)
            .map_err(|e| failed(&format!("cannot replace {}", self.spec.file.display()), e))?;
        Ok(format!(
            "set services.{}.image to {image}; the previous file is kept as {}",
            self.spec.service,
            previous.display()
        ))
    }

    /// Healthy, as the Docker backend judges the service's container.
    pub async fn healthy(&self) -> Result<bool, CapError> {
        match self.container().await? {
            Some(c) => c.healthy().await,
            None => Ok(false),
        }
    }

    /// Wait until healthy.
    pub async fn wait_healthy(&self, timeout: Duration) -> Result<String, CapError> {
        match self.container().await? {
            Some(c) => c.wait_healthy(timeout).await,
            None => Err(CapError::Failed(format!(
                "compose service {} has no container",
                self.spec.service
            ))),
        }
    }

    /// Whether the image for `version` is on the engine.
    pub async fn image_present(&self, version: &str) -> Result<bool, CapError> {
        self.images.image_present(version).await
    }

    /// `docker load` a tar file.
    pub async fn load_image(&self, file: std::fs::File) -> Result<Vec<String>, CapError> {
        self.images.load_image(file).await
    }

    /// After a verified run: drop the kept previous file.
    pub async fn finalize(&self) -> Result<String, CapError> {
        let previous = self.previous_file();
        if !previous.exists() {
            return Ok(String::new());
        }
        std::fs::remove_file(&previous)
            .map_err(|e| failed(&format!("cannot remove {}", previous.display()), e))?;
        Ok(format!("removed {}", previous.display()))
    }

    /// The service's last output.
    pub async fn output_tail(&self) -> String {
        self.compose(&["logs", "--no-color", "--tail", "20", &self.spec.service])
            .await
            .unwrap_or_default()
    }
}
