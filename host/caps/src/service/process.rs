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
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let state = fields.first()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((start, *state != "Z" && *state != "X"))
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
        let group = Pid::from_raw(pid as i32);
        let _ = killpg(group, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(self.spec.stop_timeout_secs);
        let mut killed = false;
        while self.running_pid().await?.is_some() {
            if Instant::now() > deadline && !killed {
                let _ = killpg(group, Signal::SIGKILL);
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
