//! Where adapter log lines, progress and step events go (the terminal UI, JSON output, tests).

use std::sync::Arc;

use serde::Serialize;

/// Something an operator may want to see as it happens.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// A log line from an adapter or the host.
    Log {
        /// Instance name.
        instance: String,
        /// `debug` | `info` | `warn` | `error`.
        level: String,
        /// The line.
        message: String,
    },
    /// Progress within the current step.
    Progress {
        /// Instance name.
        instance: String,
        /// Units done.
        done: u64,
        /// Units in all.
        total: u64,
        /// What is going on.
        message: String,
    },
    /// A plan step started.
    StepStarted {
        /// Instance name.
        instance: String,
        /// `forward` or `rollback`.
        phase: String,
        /// 1-based position.
        index: usize,
        /// Number of steps in this phase.
        count: usize,
        /// Step id.
        step: String,
        /// Step title.
        title: String,
    },
    /// A plan step ended.
    StepFinished {
        /// Instance name.
        instance: String,
        /// `forward` or `rollback`.
        phase: String,
        /// Step id.
        step: String,
        /// Whether it succeeded.
        ok: bool,
        /// Summary or error.
        message: String,
        /// Duration.
        duration_ms: u64,
    },
    /// A fleet rollout's progress: an instance finished (or the rollout started, `done` 0).
    Fleet {
        /// Instances finished.
        done: usize,
        /// Instances selected.
        total: usize,
        /// Failures so far.
        failures: usize,
        /// The instance that just finished, and how.
        message: String,
    },
}

impl Event {
    /// The event with the secrets in its text masked.
    pub fn masked(mut self, secrets: &crate::Secrets) -> Event {
        let texts: Vec<&mut String> = match &mut self {
            Event::Log { message, .. }
            | Event::Progress { message, .. }
            | Event::Fleet { message, .. } => vec![message],
            Event::StepStarted { title, .. } => vec![title],
            Event::StepFinished { message, .. } => vec![message],
        };
        for text in texts {
            secrets.mask_string(text);
        }
        self
    }
}

/// A shared sink for [`Event`]s.
#[derive(Clone)]
pub struct EventSink(Arc<dyn Fn(Event) + Send + Sync>);

impl EventSink {
    /// A sink calling `f` for each event.
    pub fn new(f: impl Fn(Event) + Send + Sync + 'static) -> EventSink {
        EventSink(Arc::new(f))
    }

    /// A sink that drops everything.
    pub fn discard() -> EventSink {
        EventSink::new(|_| {})
    }

    /// Deliver one event.
    pub fn emit(&self, event: Event) {
        (self.0)(event)
    }

    /// This sink with every event's text masked by `secrets` first.
    pub fn masked(self, secrets: crate::Secrets) -> EventSink {
        EventSink::new(move |event| self.emit(event.masked(&secrets)))
    }
}

impl std::fmt::Debug for EventSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventSink")
    }
}
