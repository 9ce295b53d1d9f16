//! The `process` service backend: a local binary started from a command template with
//! `{version}`, detached into its own process group, stopped by pid (SIGTERM, then SIGKILL).
//!
//! Its state (version, pid and the pid's start time, so a reused pid is never mistaken for the
//! service) lives in `<data>/services/<instance>/<binding>.json`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::CapError;
use upshift_model::binding::ProcessSpec;

/// What is recorded about a process service between runs.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProcessState {
    /// The version it runs (or will run when started).
    pub version: String,
    /// The pid, while started by Upshift.
    pub pid: Option<u32>,
    /// The pid's start time (clock ticks since boot, from /proc).
    pub start_ticks: Option<u64>,
    /// For a one-shot job: the exit code of its last run (`None`: never ran, or killed).
    #[serde(default)]
    pub last_exit: Option<i32>,
    /// The pid was adopted (`upshift adopt`): started by hand, recorded so Upshift can stop it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub adopted: bool,
}

/// A process service.
pub struct ProcessBackend {
    spec: ProcessSpec,
    state_file: PathBuf,
    log_file: PathBuf,
    child: Mutex<Option<tokio::process::Child>>,
    /// Length of the output file when the process was last started.
    started_at_offset: AtomicU64,
}

fn failed(context: &str, e: impl std::fmt::Display) -> CapError {
    CapError::Failed(format!("{context}: {e}"))
}

/// The start time of `pid` in clock ticks, and whether it is alive (not a zombie).
fn proc_stat(pid: u32) -> Option<(u64, bool)> {
    super::local::stat(pid).map(|s| (s.start_ticks, s.alive))
}

/// Signal the service: its process group when it leads one (started by Upshift), or only the
/// process (adopted: started by hand inside someone else's group).
fn signal_service(pid: u32, signal: Signal) {
    let target = Pid::from_raw(pid as i32);
    if super::local::stat(pid).is_some_and(|s| s.group == pid) {
        let _ = killpg(target, signal);
    } else {
        let _ = nix::sys::signal::kill(target, signal);
    }
}

impl ProcessBackend {
    /// A backend for `spec`, keeping its state under `state_dir`.
    pub fn new(spec: ProcessSpec, state_dir: &Path, binding: &str) -> ProcessBackend {
        ProcessBackend {
            spec,
            state_file: state_dir.join(format!("{binding}.json")),
            log_file: state_dir.join(format!("{binding}.log")),
            child: Mutex::new(None),
            started_at_offset: AtomicU64::new(0),
        }
    }

    /// Whether this is a one-shot job.
    pub fn is_job(&self) -> bool {
        self.spec.oneshot
    }

    /// The file the process's output goes to.
    pub fn log_file(&self) -> &Path {
        &self.log_file
    }

    /// The recorded state (the fleet file's version when nothing is recorded yet).
    pub fn state(&self) -> Result<ProcessState, CapError> {
        match std::fs::read_to_string(&self.state_file) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| {
                failed(
                    &format!(
                        "service state {} is damaged (fix or delete it)",
                        self.state_file.display()
                    ),
                    e,
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ProcessState {
                version: self.spec.version.clone(),
                ..ProcessState::default()
            }),
            Err(e) => Err(failed(
                &format!("cannot read {}", self.state_file.display()),
                e,
            )),
        }
    }

    fn save(&self, state: &ProcessState) -> Result<(), CapError> {
        if let Some(dir) = self.state_file.parent() {
            crate::private::create_dir_all(dir)
                .map_err(|e| failed(&format!("cannot create {}", dir.display()), e))?;
        }
        let tmp = self.state_file.with_extension("json.tmp");
        let text =
            serde_json::to_string_pretty(state).map_err(|e| failed("cannot encode state", e))?;
        crate::private::write(&tmp, text)
            .map_err(|e| failed(&format!("cannot write {}", tmp.display()), e))?;
        std::fs::rename(&tmp, &self.state_file)
            .map_err(|e| failed(&format!("cannot write {}", self.state_file.display()), e))
    }

    /// The pid if the recorded process is alive (same pid *and* start time).
    pub async fn running_pid(&self) -> Result<Option<u32>, CapError> {
        if let Some(child) = self.child.lock().await.as_mut() {
            let _ = child.try_wait();
        }
        let state = self.state()?;
        Ok(match (state.pid, state.start_ticks) {
            (Some(pid), Some(ticks)) => match proc_stat(pid) {
                Some((start, true)) if start == ticks => Some(pid),
                _ => None,
            },
            _ => None,
        })
    }

    /// The last lines the process wrote since it was last started, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let bytes = std::fs::read(&self.log_file).unwrap_or_default();
        let from = usize::try_from(self.started_at_offset.load(Ordering::Relaxed))
            .unwrap_or(0)
            .min(bytes.len());
        let text = String::from_utf8_lossy(&bytes[from..]);
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The command line for `version`: the operator's template is split shell-style first, then
    /// `{version}` is replaced inside each word, and only by a checked product version, so a
    /// version can never add words, change the program or leave a path.
    pub fn command_for(&self, version: &str) -> Result<Vec<String>, CapError> {
        super::checked_version(version)?;
        let template = &self.spec.command;
        let words = shell_words::split(template).map_err(|e| {
            CapError::Invalid(format!("service command `{template}` does not split: {e}"))
        })?;
        if words.is_empty() {
            return Err(CapError::Invalid("service command is empty".into()));
        }
        Ok(words
            .into_iter()
            .map(|w| w.replace("{version}", version))
            .collect())
    }

    /// Start the recorded version (nothing to do if it already runs). Fails if the process
    /// exits within the first moments, with the tail of its output.
    pub async fn start(&self) -> Result<String, CapError> {
        if let Some(pid) = self.running_pid().await? {
            return Ok(format!("already running (pid {pid})"));
        }
        let mut state = self.state()?;
        let words = self.command_for(&state.version)?;
        let mut cmd = self.command(&words)?;
        if self.spec.oneshot {
            return self.run_to_completion(cmd, &words, state).await;
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| failed(&format!("cannot start `{}`", words[0]), e))?;
        let pid = child
            .id()
            .ok_or_else(|| CapError::Failed("the process exited before its pid was read".into()))?;
        let start_ticks = proc_stat(pid).map(|(t, _)| t);
        state.pid = Some(pid);
        state.start_ticks = start_ticks;
        state.adopted = false;
        self.save(&state)?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        if let Ok(Some(status)) = child.try_wait() {
            state.pid = None;
            state.start_ticks = None;
            self.save(&state)?;
            return Err(CapError::Failed(format!(
                "`{}` exited at once ({status}); last output:\n{}",
                words.join(" "),
                self.log_tail(15)
            )));
        }
        *self.child.lock().await = Some(child);
        Ok(format!("started {} (pid {pid})", state.version))
    }

    /// A one-shot job: run it, wait for it (killing it after `run_timeout_secs`), and succeed
    /// only on exit 0. The exit code is recorded, so `healthy` means "the last run succeeded".
    async fn run_to_completion(
        &self,
        mut cmd: tokio::process::Command,
        words: &[String],
        mut state: ProcessState,
    ) -> Result<String, CapError> {
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .map_err(|e| failed(&format!("cannot start `{}`", words[0]), e))?;
        state.pid = child.id();
        state.start_ticks = state.pid.and_then(proc_stat).map(|(t, _)| t);
        state.last_exit = None;
        self.save(&state)?;
        let limit = Duration::from_secs(self.spec.run_timeout_secs);
        let waited = tokio::time::timeout(limit, child.wait()).await;
        state.pid = None;
        state.start_ticks = None;
        let outcome = match waited {
            Ok(Ok(status)) => {
                state.last_exit = status.code();
                if status.success() {
                    Ok(format!(
                        "ran {} to completion in {:.1} s",
                        state.version,
                        started.elapsed().as_secs_f64()
                    ))
                } else {
                    Err(CapError::Failed(format!(
                        "`{}` failed ({status}); last output:\n{}",
                        words.join(" "),
                        self.log_tail(15)
                    )))
                }
            }
            Ok(Err(e)) => Err(failed("cannot wait for the job", e)),
            Err(_) => {
                if let Some(pid) = child.id() {
                    let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
                }
                let _ = child.wait().await;
                Err(CapError::Failed(format!(
                    "`{}` did not finish within {} s and was killed; last output:\n{}",
                    words.join(" "),
                    self.spec.run_timeout_secs,
                    self.log_tail(15)
                )))
            }
        };
        self.save(&state)?;
        outcome
    }

    /// The command for `words`, with the spec's environment, working directory and output file.
    fn command(&self, words: &[String]) -> Result<tokio::process::Command, CapError> {
        if let Some(dir) = self.log_file.parent() {
            crate::private::create_dir_all(dir)
                .map_err(|e| failed(&format!("cannot create {}", dir.display()), e))?;
        }
        let log = crate::private::append(&self.log_file)
            .map_err(|e| failed(&format!("cannot open {}", self.log_file.display()), e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| failed("cannot duplicate the log file", e))?;
        let offset = log.metadata().map(|m| m.len()).unwrap_or(0);
        self.started_at_offset.store(offset, Ordering::Relaxed);
        let mut cmd = tokio::process::Command::new(&words[0]);
        cmd.args(&words[1..])
            .env_clear()
            .env(
                "PATH",
                std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into()),
            )
            .envs(&self.spec.env)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0)
            .kill_on_drop(false);
        if let Some(dir) = &self.spec.workdir {
            cmd.current_dir(dir);
        }
        Ok(cmd)
    }

    /// Stop the process: SIGTERM to its process group, SIGKILL after the stop timeout.
    pub async fn stop(&self) -> Result<String, CapError> {
        let Some(pid) = self.running_pid().await? else {
            let mut state = self.state()?;
            state.pid = None;
            state.start_ticks = None;
            self.save(&state)?;
            return Ok("not running".into());
        };
        signal_service(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(self.spec.stop_timeout_secs);
        let mut killed = false;
        while self.running_pid().await?.is_some() {
            if Instant::now() > deadline && !killed {
                signal_service(pid, Signal::SIGKILL);
                killed = true;
            }
            if Instant::now() > deadline + Duration::from_secs(10) {
                return Err(CapError::Failed(format!(
                    "process {pid} did not exit after SIGKILL"
                )));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        if let Some(mut child) = self.child.lock().await.take() {
            let _ = child.try_wait();
        }
        let mut state = self.state()?;
        state.pid = None;
        state.start_ticks = None;
        state.adopted = false;
        self.save(&state)?;
        Ok(if killed {
            format!("killed pid {pid} after {} s", self.spec.stop_timeout_secs)
        } else {
            format!("stopped pid {pid}")
        })
    }

    /// Record a new version; the process must be stopped.
    pub async fn switch_version(&self, version: &str) -> Result<String, CapError> {
        if let Some(pid) = self.running_pid().await? {
            return Err(CapError::Failed(format!(
                "the service is running (pid {pid}); stop it before switching versions"
            )));
        }
        self.command_for(version)?;
        let mut state = self.state()?;
        let previous = std::mem::replace(&mut state.version, version.to_string());
        // A job's last result belongs to the version that ran it.
        state.last_exit = None;
        self.save(&state)?;
        Ok(format!("{previous} → {version}"))
    }

    /// Healthy = running and, when a health URL is set, answering it with 2xx. For a one-shot
    /// job: its last run exited 0.
    pub async fn healthy(&self) -> Result<bool, CapError> {
        if self.spec.oneshot {
            return Ok(self.state()?.last_exit == Some(0));
        }
        if self.running_pid().await?.is_none() {
            return Ok(false);
        }
        let Some(url) = &self.spec.health_url else {
            return Ok(true);
        };
        super::health_url_answers(url).await
    }
}

impl ProcessBackend {
    /// The health check with what it saw: `(healthy, detail)`, the detail naming the health
    /// URL and its answer (e.g. `GET http://…/healthz answered 404 Not Found`).
    pub async fn health_check(&self) -> Result<(bool, String), CapError> {
        if self.spec.oneshot {
            let last = self.state()?.last_exit;
            return Ok((
                last == Some(0),
                match last {
                    Some(code) => format!("its last run exited {code}"),
                    None => "it has not run to completion".into(),
                },
            ));
        }
        let Some(pid) = self.running_pid().await? else {
            return Ok((false, "not running".into()));
        };
        match &self.spec.health_url {
            None => Ok((true, format!("pid {pid} runs (no health URL set)"))),
            Some(url) => super::health_url_status(url).await,
        }
    }

    /// Processes that look like this service but were not started (or adopted) by Upshift:
    /// the exact command line of the recorded version, or the listener on the health URL's
    /// loopback port.
    pub async fn strays(&self) -> Result<Vec<u32>, CapError> {
        if self.spec.oneshot {
            return Ok(Vec::new());
        }
        let known = self.running_pid().await?;
        let state = self.state()?;
        let mut found = super::local::with_cmdline(&self.command_for(&state.version)?);
        if let Some(port) = self.spec.health_url.as_deref().and_then(loopback_port) {
            found.extend(super::local::listening_on(port));
        }
        let ours = known.map(super::local::family).unwrap_or_default();
        found.retain(|p| !ours.contains(p) && *p != std::process::id());
        // A listener's parent that is itself a candidate names the same service once.
        let mut roots: Vec<u32> = found
            .iter()
            .copied()
            .filter(|p| super::local::stat(*p).is_none_or(|s| !found.contains(&s.parent)))
            .collect();
        roots.sort_unstable();
        roots.dedup();
        Ok(roots)
    }

    /// Record a running process started by hand as this service, so Upshift can stop and start
    /// it: the one process found by [`ProcessBackend::strays`], or `pid` when given, which must
    /// be one of them (a mistyped pid would otherwise be stopped by the next run).
    pub async fn adopt(&self, pid: Option<u32>) -> Result<String, CapError> {
        if let Some(known) = self.running_pid().await? {
            return match pid {
                Some(p) if p != known => Err(CapError::Failed(format!(
                    "Upshift already runs this service as pid {known}; stop it first (`upshift stop`) to adopt pid {p}"
                ))),
                _ => Ok(format!("already known as pid {known}; nothing to adopt")),
            };
        }
        let candidates = self.strays().await?;
        let listed = candidates
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let pid = match pid {
            Some(p) if candidates.contains(&p) => p,
            Some(p) => {
                let command = super::local::cmdline(p)
                    .map(|c| format!(" (`{}`)", c.join(" ")))
                    .unwrap_or_default();
                let seen = if candidates.is_empty() {
                    "no process does".to_string()
                } else {
                    format!("these do: {listed}")
                };
                return Err(CapError::Invalid(format!(
                    "pid {p}{command} neither runs this service's command line nor listens on its health URL's port ({seen}); Upshift would stop it as this service, so it refuses to adopt it: check the pid"
                )));
            }
            None => match candidates.as_slice() {
                [one] => *one,
                [] => {
                    return Err(CapError::Failed(
                        "no running process of this service was found (neither its command line nor a listener on its health URL's port); start it with `upshift start`, or pass --pid".into(),
                    ));
                }
                _ => {
                    return Err(CapError::Failed(format!(
                        "several processes look like this service ({listed}); pass --pid to choose one"
                    )));
                }
            },
        };
        let stat = super::local::stat(pid)
            .filter(|s| s.alive)
            .ok_or_else(|| CapError::Failed(format!("no live process {pid} on this machine")))?;
        let mut state = self.state()?;
        state.pid = Some(pid);
        state.start_ticks = Some(stat.start_ticks);
        state.adopted = true;
        self.save(&state)?;
        let command = super::local::cmdline(pid).unwrap_or_default().join(" ");
        Ok(format!(
            "adopted pid {pid} (`{command}`) as version {}",
            state.version
        ))
    }

    /// The processes stopping the service ends (none when it is not running).
    pub async fn processes(&self) -> Result<std::collections::BTreeSet<u32>, CapError> {
        Ok(self
            .running_pid()
            .await?
            .map(super::local::family)
            .unwrap_or_default())
    }
}

/// The port of an `http://127.0.0.1:PORT/…` or `http://localhost:PORT/…` URL.
fn loopback_port(url: &str) -> Option<u16> {
    let url = reqwest::Url::parse(url).ok()?;
    let local = match url.host()? {
        url::Host::Domain(d) => d == "localhost",
        url::Host::Ipv4(ip) => ip.is_loopback(),
        url::Host::Ipv6(ip) => ip.is_loopback(),
    };
    if local {
        url.port_or_known_default()
    } else {
        None
    }
}

impl super::Health for ProcessBackend {
    fn label(&self) -> String {
        "the service".into()
    }

    async fn healthy(&self) -> Result<bool, CapError> {
        ProcessBackend::healthy(self).await
    }

    async fn running(&self) -> Result<bool, CapError> {
        Ok(self.running_pid().await?.is_some())
    }

    async fn output_tail(&self) -> String {
        self.log_tail(20)
    }
}
