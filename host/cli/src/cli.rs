//! Command-line definitions (clap). The names here are a contract: keep them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// A count of 1 or more (`--parallel 0` would run nothing and wait forever).
fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("`{text}` is not a count of 1 or more")),
    }
}

/// `--timeout SECS`: 1 to 86400 seconds.
fn timeout_secs(text: &str) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(n) if (1..=upshift::model::binding::MAX_WAIT_HEALTHY_SECS).contains(&n) => Ok(n),
        _ => Err(format!(
            "`{text}` is not a number of seconds from 1 to 86400"
        )),
    }
}

/// Upshift: upgrade, back up and roll back product instances through sandboxed adapters.
#[derive(Debug, Parser)]
#[command(name = "upshift", version, about, max_term_width = 100)]
pub struct Cli {
    /// Fleet file.
    #[arg(
        long,
        global = true,
        env = "UPSHIFT_FLEET",
        default_value = "upshift.toml"
    )]
    pub fleet: PathBuf,
    /// Data directory (state, backups, audit log, cache); a relative path is resolved once
    /// against the working directory. Default: ~/.local/share/upshift.
    #[arg(long, global = true, env = "UPSHIFT_DATA")]
    pub data: Option<PathBuf>,
    /// Keep runs, steps, the backup catalog, leases and the work queue in PostgreSQL
    /// (`postgres://…`), shared by agents on several machines, instead of `<data>/state.db`.
    #[arg(long, global = true, env = "UPSHIFT_STATE", value_name = "URL")]
    pub state: Option<String>,
    /// Where process services' state lives (default `<data>/services`); share it between
    /// agents on one machine.
    #[arg(long, global = true, env = "UPSHIFT_SERVICES", value_name = "DIR")]
    pub services: Option<PathBuf>,
    /// How long an instance's lease lasts without a heartbeat, in seconds (default 30); agents
    /// sharing a state must agree on it.
    #[arg(long, global = true, env = "UPSHIFT_LEASE_SECS", value_name = "SECS")]
    pub lease_secs: Option<f64>,
    /// Size at which the audit log's active file is closed as a numbered segment
    /// (`audit-000001.jsonl`, …) and a new one begins (default 64 MiB).
    #[arg(
        long,
        global = true,
        env = "UPSHIFT_AUDIT_SEGMENT_BYTES",
        value_name = "BYTES"
    )]
    pub audit_segment_bytes: Option<u64>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Work with adapter components.
    #[command(subcommand)]
    Adapter(AdapterCommand),
    /// The fleet at a glance: per instance its version, health, where it may go, last run,
    /// newest backup, unfinished runs and leases (reads only; takes no lease, records no run).
    Status(StatusArgs),
    /// Show what an upgrade would do (touches nothing).
    Plan(PlanArgs),
    /// Upgrade an instance, rolling back automatically on failure.
    Apply(ApplyArgs),
    /// Continue an upgrade after the host died in the middle of it.
    Resume(ResumeArgs),
    /// End an unfinished run you have put right by hand, touching nothing (recorded in its
    /// journal and the audit log).
    Abandon(AbandonArgs),
    /// Queue instance upgrades for agents (needs --state postgres://…).
    Enqueue(EnqueueArgs),
    /// Claim queued upgrades and carry them out (needs --state postgres://…).
    Agent(AgentArgs),
    /// Back up an instance's databases now.
    Backup(BackupArgs),
    /// List backups.
    Backups(ListArgs),
    /// Restore a backup.
    Restore(RestoreArgs),
    /// Show past runs and their steps.
    History(HistoryArgs),
    /// Record a service that already runs (started by hand) so Upshift can stop and start it:
    /// a process's pid, or a container under its bound name.
    Adopt(AdoptArgs),
    /// Start an instance's services (or one) and wait until healthy; audited, under the
    /// instance's lease.
    Start(ServiceArgs),
    /// Stop an instance's services (or one); audited, under the instance's lease.
    Stop(ServiceArgs),
    /// Find and remove what faults left half-done (orphaned clones, restore targets, partial
    /// backups) and backups past the fleet's [retention].
    Gc(GcArgs),
    /// The audit log: `verify` its hash chain, `show` who did what to which instance.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Show the fleet's adapters against upshift.lock; `--approve` pins them (digest and
    /// capabilities) so only the approved bytes run.
    Lock {
        /// Record the adapters as they are now.
        #[arg(long)]
        approve: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run a self-contained demo: a mixed fleet of simulated products on a throwaway PostgreSQL.
    Demo(DemoArgs),
    /// Run a product simulator (test infrastructure; used by the demo and the tests).
    #[command(hide = true)]
    Simulate {
        /// Product to simulate.
        product: String,
        /// Simulator arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// `upshift adapter …`
#[derive(Debug, Subcommand)]
pub enum AdapterCommand {
    /// Show an adapter's world, bindings, host API, digest and signatures without running it.
    Inspect {
        /// Component file, or the name of a bundled adapter.
        file: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show how NEW's capabilities differ from OLD's (exit 1 when NEW asks for more).
    Diff {
        /// The adapter approved now: a component file or a bundled adapter's name.
        old: String,
        /// The update.
        new: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Scaffold a new adapter crate for a product: it builds into a component and passes its
    /// own tests (the guest SDK and WIT are vendored into it).
    New {
        /// The product's name: lowercase letters, digits and `-`.
        name: String,
        /// Where to create the crate (default: ./NAME); must not exist or be empty.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Make an Ed25519 key pair: PREFIX.key (secret, keep it safe) and PREFIX.pub.
    Keygen {
        /// Path prefix for the two files.
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign an adapter file: the signature over its sha256 goes into FILE.sig.json.
    Sign {
        /// Component file.
        file: PathBuf,
        /// The secret key file (from `upshift adapter keygen`).
        #[arg(long)]
        key: PathBuf,
        /// Who signs, shown to whoever verifies.
        #[arg(long, default_value = "unnamed")]
        signer: String,
    },
    /// Check an adapter file's signatures: against the fleet file's [trust] policy, or the
    /// given public keys (any one suffices).
    Verify {
        /// Component file.
        file: PathBuf,
        /// A trusted public key file (repeat); without it the fleet file's [trust] applies.
        #[arg(long = "key")]
        keys: Vec<PathBuf>,
    },
    /// Replay a tape recorded with `plan|apply --record` against an adapter, offline: exit 0
    /// when every export behaves as recorded, 1 when anything differs, 2 for a bad tape.
    Test {
        /// Component file, or the name of a bundled adapter.
        adapter: String,
        /// The tape to replay.
        #[arg(long, value_name = "FILE")]
        replay: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `--record FILE`: keep every adapter call of the run, and what the host answered, on a tape.
#[derive(Debug, Args)]
pub struct RecordArgs {
    /// Write a tape of every adapter call and its answer to FILE (see docs/record-replay.md);
    /// written whatever the outcome. It holds what the adapter read: review it before sharing.
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
    /// Replace the --record file if it exists (otherwise an existing file is refused).
    #[arg(long, requires = "record")]
    pub record_overwrite: bool,
}

/// `upshift audit …`
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Report the first edited, removed or reordered record, and records missing or replaced
    /// at the end (against the head anchored in the state store).
    Verify {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// After reporting, anchor the log's head as it is now (its own chain must be intact):
        /// accept a log whose tail was lost, once a copy is kept, so the host appends to it
        /// again.
        #[arg(long)]
        reanchor: bool,
    },
    /// Show audit records: who did what to which instance, with what decision, when.
    Show(AuditShowArgs),
}

/// `upshift audit show`
#[derive(Debug, Args)]
pub struct AuditShowArgs {
    /// Only this instance's records.
    pub instance: Option<String>,
    /// Only denied calls.
    #[arg(long)]
    pub denied: bool,
    /// Only records since this time: RFC 3339 (`2026-01-02T03:04:05Z`) or an age (`30m`,
    /// `1h`, `2d`, `1w`).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// At most this many records, the newest (0: all).
    #[arg(long, default_value_t = 200)]
    pub limit: usize,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `upshift status`
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Instances from the fleet file (default: every instance).
    #[arg(conflicts_with = "all")]
    pub instances: Vec<String>,
    /// Every instance of the fleet file (the default).
    #[arg(long)]
    pub all: bool,
    /// The instances matching `product=P`, `name=N` or `label:KEY=VALUE` (repeat to narrow).
    #[arg(long = "select", value_name = "FILTER")]
    pub select: Vec<String>,
    /// How long one instance may take, in seconds, before it is shown as timed out.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    pub timeout: f64,
    /// How many instances are inspected at once.
    #[arg(long, default_value_t = 32)]
    pub parallel: usize,
    /// Also show each instance's facts, health details and the rules' reasons.
    #[arg(long, short)]
    pub verbose: bool,
    /// Print JSON (with --watch: one JSON document per line, per refresh).
    #[arg(long)]
    pub json: bool,
    /// Refresh every SECS seconds (default 2) until Ctrl-C, which ends it with exit 0.
    #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "2")]
    pub watch: Option<f64>,
}

/// `upshift plan`
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Instances from the fleet file (one: its plan; several, --all or --select: every
    /// instance's plan or refusal and a summary table). Omit for an offline plan with
    /// --product/--from.
    pub instances: Vec<String>,
    /// Plan every instance of the fleet file (not with names or --select).
    #[arg(long, conflicts_with_all = ["instances", "select"])]
    pub all: bool,
    /// Plan the instances matching `product=P`, `name=N` or `label:KEY=VALUE` (repeat to
    /// narrow further).
    #[arg(long = "select", value_name = "FILTER")]
    pub select: Vec<String>,
    /// Target version (default: each instance's `target` in the fleet file; required offline).
    #[arg(long)]
    pub to: Option<String>,
    /// Offline: the bundled adapter's product.
    #[arg(long, requires = "from", conflicts_with_all = ["instances", "adapter", "all", "select"])]
    pub product: Option<String>,
    /// Offline: an adapter component file (a vendor's build) instead of a bundled one.
    #[arg(long, requires = "from", conflicts_with_all = ["instances", "all", "select"])]
    pub adapter: Option<PathBuf>,
    /// Offline: the version to plan from.
    #[arg(long)]
    pub from: Option<String>,
    /// Plan a target release the adapter's catalog does not know (the plan notes that the
    /// adapter cannot know that release's rules).
    #[arg(long)]
    pub allow_unknown: bool,
    /// Every wait-healthy step waits up to SECS (over the fleet file's `wait_healthy_secs`
    /// and the adapter's timeout; 1 to 86400); shown in the plan.
    #[arg(long, value_name = "SECS", value_parser = timeout_secs)]
    pub timeout: Option<u64>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// A tape of the run.
    #[command(flatten)]
    pub tape: RecordArgs,
}

/// `upshift apply`
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// Instances from the fleet file (one: an interactive upgrade; several: a rollout).
    pub instances: Vec<String>,
    /// Target version (default: each instance's `target` in the fleet file).
    #[arg(long)]
    pub to: Option<String>,
    /// Roll out to every instance of the fleet file (not with names or --select).
    #[arg(long, conflicts_with_all = ["instances", "select"])]
    pub all: bool,
    /// Roll out to the instances matching `product=P`, `name=N` or `label:KEY=VALUE` (repeat to
    /// narrow further).
    #[arg(long = "select", value_name = "FILTER")]
    pub select: Vec<String>,
    /// At most this many instances at a time (rollouts; 1 or more).
    #[arg(long, default_value_t = 1, value_parser = at_least_one)]
    pub parallel: usize,
    /// Waves, e.g. `1,10%,rest`: each wave starts when the previous one is done (rollouts).
    #[arg(long)]
    pub waves: Option<String>,
    /// Halt the rollout at the K-th failure: what is done stays done, nothing new starts.
    #[arg(long, value_name = "K", default_value_t = 1, value_parser = at_least_one)]
    pub max_failures: usize,
    /// Upgrade to a target release the adapter's catalog does not know (the plan notes that
    /// the adapter cannot know that release's rules).
    #[arg(long)]
    pub allow_unknown: bool,
    /// Every wait-healthy step of the plan waits up to SECS (over the fleet file's
    /// `wait_healthy_secs` and the adapter's timeout; 1 to 86400); shown in the plan. A
    /// rollback's wait uses `wait_healthy_secs` (default 180 s).
    #[arg(long, value_name = "SECS", value_parser = timeout_secs)]
    pub timeout: Option<u64>,
    /// Do not ask for confirmation.
    #[arg(long)]
    pub yes: bool,
    /// Stream JSON events and print a JSON report.
    #[arg(long)]
    pub json: bool,
    /// A tape of the run (one instance only).
    #[command(flatten)]
    pub tape: RecordArgs,
}

/// `upshift enqueue`
#[derive(Debug, Args)]
pub struct EnqueueArgs {
    /// Instances from the fleet file.
    pub instances: Vec<String>,
    /// Every instance (not with names or --select).
    #[arg(long, conflicts_with_all = ["instances", "select"])]
    pub all: bool,
    /// `product=P`, `name=N` or `label:KEY=VALUE` (repeat to narrow).
    #[arg(long = "select", value_name = "FILTER")]
    pub select: Vec<String>,
    /// Target version (default: each instance's `target`).
    #[arg(long)]
    pub to: Option<String>,
    /// Let the agents plan a target release the adapter's catalog does not know (the plan notes
    /// that the adapter cannot know its rules).
    #[arg(long)]
    pub allow_unknown: bool,
}

/// `upshift agent`
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// This agent's name in the queue (default: host and pid).
    #[arg(long)]
    pub name: Option<String>,
    /// Stop when the queue is empty (including items other agents are working on).
    #[arg(long)]
    pub until_empty: bool,
    /// Print what this agent did as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `upshift resume`
#[derive(Debug, Args)]
pub struct ResumeArgs {
    /// The interrupted run (`upshift history` lists runs; interrupted ones are `running`).
    pub run: String,
    /// You established that this step (whose outcome was unknown) did complete: count it as
    /// done and go on.
    #[arg(long, value_name = "STEP")]
    pub step_done: Option<String>,
    /// Stream JSON events and print a JSON report.
    #[arg(long)]
    pub json: bool,
}

/// `upshift abandon`
#[derive(Debug, Args)]
pub struct AbandonArgs {
    /// The unfinished run (`upshift history` lists runs).
    pub run: String,
    /// What you did by hand to the instance, and why the run is ended (required).
    #[arg(long, required = true)]
    pub why: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Backup method.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Method {
    /// `pg_dump` archive in the data directory, checksummed.
    Dump,
    /// Server-side `CREATE DATABASE … TEMPLATE` (the service must be stopped).
    Clone,
}

/// `upshift backup`
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct BackupArgs {
    /// Check an existing backup instead of taking one.
    #[command(subcommand)]
    pub action: Option<BackupCommand>,
    /// Instance from the fleet file.
    #[arg(required = true)]
    pub instance: Option<String>,
    /// How to take it.
    #[arg(long, value_enum, default_value = "dump")]
    pub method: Method,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `upshift backup …` subcommands.
#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Check a backup's manifest, files and contents; with --restore-test, restore it into a
    /// scratch database and compare every table's row count and checksum.
    Verify {
        /// Backup id (see `upshift backups`).
        id: String,
        /// Also restore it into a scratch database and compare table by table.
        #[arg(long)]
        restore_test: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `upshift backups`
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only this instance.
    pub instance: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `upshift gc`
#[derive(Debug, Args)]
pub struct GcArgs {
    /// List what would be removed, and remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `upshift restore`
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Instance from the fleet file.
    pub instance: String,
    /// Backup id (see `upshift backups`).
    pub backup_id: String,
    /// Restore into a new database of this name instead of the bound one.
    #[arg(long)]
    pub into: Option<String>,
    /// Do not ask for confirmation.
    #[arg(long)]
    pub yes: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `upshift start` / `upshift stop`
#[derive(Debug, Args)]
pub struct ServiceArgs {
    /// Instance from the fleet file.
    pub instance: String,
    /// One service binding (default: every service that is not a one-shot job).
    pub binding: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `upshift adopt`
#[derive(Debug, Args)]
pub struct AdoptArgs {
    /// The instance and, optionally, the binding.
    #[command(flatten)]
    pub service: ServiceArgs,
    /// The process to adopt (process bindings; default: the one process found by its command
    /// line or its listener on the health URL's port).
    #[arg(long)]
    pub pid: Option<u32>,
}

/// `upshift history`
#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// Only this instance.
    pub instance: Option<String>,
    /// Show one run's steps.
    #[arg(long)]
    pub run: Option<String>,
    /// How many runs (1 or more).
    #[arg(long, default_value_t = 20, value_parser = at_least_one)]
    pub limit: usize,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `upshift demo`
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Print JSON events instead of progress bars.
    #[arg(long)]
    pub json: bool,
}
