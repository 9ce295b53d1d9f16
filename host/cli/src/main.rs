//! The `upshift` command. Errors become exit codes here: 0 done, 1 error (or a run that failed
//! having changed nothing), 2 bad usage or input, 3 refused by the product's rules, 4 failed and
//! rolled back, 5 failed and not rolled back, 6 another run holds the instance or has not
//! finished.
//!
//! Signals: SIGHUP is ignored (a closed terminal does not stop a run); SIGINT and SIGTERM stop
//! a run at its next step boundary and roll it back, or end a command that has changed nothing
//! at once (exit 1, saying so). A closed stdout or stderr is written no more (see [`output`]).

// First: its print macros replace the standard ones in every module below.
#[macro_use]
mod output;

mod adapter_cmd;
mod cli;
mod commands;
#[cfg(feature = "demo")]
mod demo;
#[cfg(test)]
mod doc_examples;
mod errors;
mod exit;
mod record;
mod scaffold;
mod ui;

use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::Parser;

use cli::{AdapterCommand, AuditCommand, BackupArgs, BackupCommand, Cli, Command};
use commands::Ctx;
use upshift::caps::Secrets;
use upshift::ops::{OpError, Session, SessionBuilder, StopFlag, StopReply};

/// What `demo` and `simulate` say in a build without the simulators.
#[cfg(not(feature = "demo"))]
const NO_DEMO: &str = "this build of upshift has no demo or simulators (built without the `demo` feature); \
     rebuild with `cargo build -p upshift-cli --features demo`";

/// An error with the exit code it maps to.
struct Exit {
    code: u8,
    error: anyhow::Error,
}

impl<E: Into<anyhow::Error>> From<E> for Exit {
    fn from(e: E) -> Exit {
        let error = e.into();
        let code = match error.downcast_ref::<OpError>() {
            Some(OpError::Usage(_)) => 2,
            Some(OpError::DataDirectory { .. }) => 2,
            Some(OpError::Busy(_)) => exit::BUSY,
            _ if error.downcast_ref::<upshift::fleet::FleetError>().is_some() => 2,
            _ => 1,
        };
        Exit { code, error }
    }
}

/// How every command opens its session: the global options. In a build with test hooks (the
/// integration tests' build), `UPSHIFT_CRASH_AT=<phase>:<seq>:<started|finished>` makes the host
/// kill itself at that point of a run, as a machine dying there would, and `UPSHIFT_PAUSE_AT`
/// (same form) makes it stop itself there (SIGSTOP) until it is sent SIGCONT, as a paused
/// machine would; normal builds never read them.
fn session_builder(cli: &Cli, data: &Path) -> Result<SessionBuilder, Exit> {
    let mut builder = Session::builder(data)
        .secrets(secrets().clone())
        .state_url(cli.state.clone())
        .services_dir(cli.services.clone())
        .stop_flag(stop_flag().clone());
    if let Some(secs) = cli.lease_secs {
        let ttl = std::time::Duration::try_from_secs_f64(secs)
            .ok()
            .filter(|ttl| !ttl.is_zero())
            .ok_or_else(|| {
                usage(format!(
                    "--lease-secs {secs}: give a number of seconds above 0"
                ))
            })?;
        builder = builder.lease_ttl(ttl);
    }
    // How long statements wait for a lost PostgreSQL state database (default 300 s).
    if let Ok(text) = std::env::var("UPSHIFT_STATE_WAIT_SECS") {
        let wait = text
            .trim()
            .parse::<f64>()
            .ok()
            .and_then(|secs| std::time::Duration::try_from_secs_f64(secs).ok())
            .ok_or_else(|| {
                usage(format!(
                    "UPSHIFT_STATE_WAIT_SECS={text}: give a number of seconds (0 or more)"
                ))
            })?;
        builder = builder.state_wait(wait);
    }
    if let Some(bytes) = cli.audit_segment_bytes {
        if bytes < 4096 {
            return Err(usage(format!(
                "--audit-segment-bytes {bytes}: give at least 4096 bytes"
            )));
        }
        builder = builder.audit_segment_bytes(bytes);
    }
    if upshift::ops::TEST_HOOKS
        && let Ok(point) = std::env::var("UPSHIFT_CRASH_AT")
    {
        builder = builder.crash_point(point.parse().map_err(usage)?);
    }
    if upshift::ops::TEST_HOOKS
        && let Ok(point) = std::env::var("UPSHIFT_PAUSE_AT")
    {
        builder = builder.pause_point(point.parse().map_err(usage)?);
    }
    Ok(builder)
}

/// The command-line way out of an error the library reports in its own terms.
fn hint(error: &anyhow::Error) -> Option<&'static str> {
    match (
        error.downcast_ref::<OpError>(),
        error.downcast_ref::<upshift::fleet::FleetError>(),
    ) {
        (Some(OpError::DataDirectory { .. }), _) => Some("pass --data DIR or set UPSHIFT_DATA"),
        (_, Some(upshift::fleet::FleetError::Read { .. })) => {
            Some("pass --fleet FILE or set UPSHIFT_FLEET")
        }
        _ => None,
    }
}

fn usage(message: impl Into<String>) -> Exit {
    Exit {
        code: 2,
        error: anyhow::anyhow!(message.into()),
    }
}

fn default_data_dir() -> PathBuf {
    match std::env::var_os("HOME") {
        Some(home) => Path::new(&home).join(".local/share/upshift"),
        None => PathBuf::from(".upshift"),
    }
}

fn confirm(yes: bool, question: &str) -> Result<bool, Exit> {
    if yes {
        return Ok(true);
    }
    if !std::io::stdin().is_terminal() {
        return Err(usage(
            "no terminal to confirm on; pass --yes to run without a prompt",
        ));
    }
    eprint!("{question} [y/N] ");
    // Read on a thread of its own so that SIGINT or SIGTERM at the prompt is answered at once
    // (as "not confirmed": nothing was changed) rather than after the next key.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut answer = String::new();
        let read = std::io::stdin().lock().read_line(&mut answer);
        let _ = tx.send(read.map(|_| answer));
    });
    loop {
        if stop_flag().requested().is_some() {
            return Ok(false);
        }
        match rx.recv_timeout(std::time::Duration::from_millis(50)) {
            Ok(answer) => return Ok(matches!(answer?.trim(), "y" | "Y" | "yes")),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return Ok(false),
        }
    }
}

/// The secrets of this process's session: everything the command prints is masked with them
/// (the session masks what it writes with the same registry).
fn secrets() -> &'static Secrets {
    static SECRETS: OnceLock<Secrets> = OnceLock::new();
    SECRETS.get_or_init(Secrets::new)
}

/// The flag SIGINT and SIGTERM set: every session of this process stops its runs at their
/// next step boundary.
fn stop_flag() -> &'static StopFlag {
    static STOP: OnceLock<StopFlag> = OnceLock::new();
    STOP.get_or_init(StopFlag::default)
}

/// Print JSON on stdout, secrets masked (the text otherwise exact).
fn print_json(value: &impl serde::Serialize) -> Result<(), Exit> {
    println!(
        "{}",
        serde_json::to_string_pretty(&secrets().masked_json(value)?)?
    );
    Ok(())
}

/// Print rendered text on stdout, secrets masked. Adapter text in it has been made visible
/// by the renderer (`ui::v`).
fn out(text: &str) {
    output::STDOUT.write(&secrets().mask(text));
}

/// [`out`] on stderr.
fn err_out(text: &str) {
    output::STDERR.write(&secrets().mask(text));
}

/// How long a command that changed nothing gets to end by itself after SIGINT or SIGTERM
/// (releasing its lease) before the process ends anyway.
const IDLE_STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// Set when SIGINT or SIGTERM came before anything was changed: whatever error the command
/// then ends with (a prompt not confirmed, say), the stop is what it reports.
static STOPPED_IDLE: AtomicBool = AtomicBool::new(false);

/// Set while `status --watch` refreshes: SIGINT or SIGTERM ends the watch, which is its normal
/// end (exit 0).
static WATCHING: AtomicBool = AtomicBool::new(false);

/// Take over SIGHUP, SIGINT and SIGTERM for the life of the process (children start with the
/// default dispositions again). SIGHUP is ignored. The first SIGINT or SIGTERM sets
/// [`stop_flag`]: a run under way stops at its next step boundary and rolls back; if nothing
/// has been changed, the returned receiver gets the signal's name and the command ends there.
/// Later ones are noted and change nothing: a rollback is never interrupted.
fn watch_signals() -> tokio::sync::oneshot::Receiver<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let (idle_tx, idle_rx) = tokio::sync::oneshot::channel();
    let streams = (|| {
        Ok::<_, std::io::Error>((
            signal(SignalKind::hangup())?,
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
        ))
    })();
    let (mut hup, mut int, mut term) = match streams {
        Ok(streams) => streams,
        Err(e) => {
            eprintln!(
                "warn: cannot take over SIGHUP, SIGINT and SIGTERM ({e}): they end this process at once, mid-step"
            );
            return idle_rx;
        }
    };
    let mut idle_tx = Some(idle_tx);
    tokio::spawn(async move {
        loop {
            let name = tokio::select! {
                Some(()) = hup.recv() => {
                    eprintln!("upshift: SIGHUP ignored (the terminal closed?); the command goes on, `upshift history` shows how a run ended");
                    continue;
                }
                Some(()) = int.recv() => "SIGINT",
                Some(()) = term.recv() => "SIGTERM",
                else => return,
            };
            match stop_flag().request(name) {
                StopReply::NothingChanged => {
                    STOPPED_IDLE.store(true, Ordering::SeqCst);
                    if let Some(tx) = idle_tx.take() {
                        let _ = tx.send(name);
                    }
                    tokio::spawn(async move {
                        tokio::time::sleep(IDLE_STOP_GRACE).await;
                        err_out(&format!("error: {}\n", nothing_changed(name)));
                        std::process::exit(1);
                    });
                }
                StopReply::AtNextBoundary => eprintln!(
                    "upshift: {name}: the run stops after the step in progress and rolls back (a rollback under way runs to its end); nothing is cut mid-step"
                ),
                StopReply::AlreadyStopping => eprintln!(
                    "upshift: {name} again: already stopping at the next step boundary; a rollback is not interrupted"
                ),
            }
        }
    });
    idle_rx
}

/// What a command stopped before it changed anything says.
fn nothing_changed(signal: &str) -> String {
    format!("stopped by {signal} before anything was changed; nothing was changed")
}

/// Whether the command line asks for JSON (`--json` before any `--`): then every outcome,
/// errors included, is one JSON document on stdout.
fn json_requested() -> bool {
    std::env::args_os()
        .skip(1)
        .take_while(|a| a != "--")
        .any(|a| a == "--json")
}

fn main() -> ExitCode {
    let json = json_requested();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // `--help`, `--version` and a usage error without --json: as clap prints them.
        Err(e) if !json || !e.use_stderr() => e.exit(),
        Err(e) => {
            let message = e.render().to_string();
            errors::print_json_error(&errors::JsonError::usage(&message));
            return ExitCode::from(2);
        }
    };
    if let Command::Simulate { product, args } = &cli.command {
        #[cfg(feature = "demo")]
        return demo::simulate(product, args);
        #[cfg(not(feature = "demo"))]
        {
            let _ = (product, args);
            eprintln!("error: {NO_DEMO}");
            return ExitCode::from(2);
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        let idle_stop = watch_signals();
        tokio::select! {
            result = run(cli) => result,
            Ok(signal) = idle_stop => Err(Exit {
                code: 1,
                error: anyhow::anyhow!(nothing_changed(signal)),
            }),
        }
    });
    if WATCHING.load(Ordering::SeqCst) && STOPPED_IDLE.load(Ordering::SeqCst) {
        return ExitCode::SUCCESS;
    }
    let result = match (result, stop_flag().requested()) {
        (Err(_), Some(signal)) if STOPPED_IDLE.load(Ordering::SeqCst) => Err(Exit {
            code: 1,
            error: anyhow::anyhow!(nothing_changed(&signal)),
        }),
        (result, _) => result,
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(exit) if json => {
            errors::print_json_error(&errors::JsonError::of(&exit));
            // Human text on stderr only for a person at a terminal.
            if std::io::stderr().is_terminal() {
                err_out(&format!(
                    "error: {}\n",
                    ui::v(&errors::error_text(&exit.error))
                ));
            }
            ExitCode::from(exit.code)
        }
        Err(exit) => {
            // An error may quote an adapter or a product: made visible, secrets masked. Only
            // the host's own usage and fleet-file errors (exit 2) keep their lines
            // (`…\nfix: …`); any other error is one line, so quoted text cannot start a
            // forged line.
            let text = errors::error_text(&exit.error);
            let shown = if exit.code == 2 {
                ui::lines(&text)
            } else {
                ui::v(&text)
            };
            err_out(&format!("error: {shown}\n"));
            if let Some(hint) = hint(&exit.error) {
                eprintln!("hint: {hint}");
            }
            ExitCode::from(exit.code)
        }
    }
}

/// The data directory as an absolute path, resolved once against the working directory, so
/// every location recorded under it (backups, snapshots) is absolute and means the same from
/// any directory a later command runs in. Its deepest existing ancestor is canonicalized, so
/// `../` and symbolic links are resolved as the operating system resolves them.
fn absolute_data_dir(data: &Path) -> Result<PathBuf, Exit> {
    let absolute = std::path::absolute(data).map_err(|e| Exit {
        code: 2,
        error: anyhow::anyhow!(
            "--data {}: cannot make it an absolute path ({e}); give an absolute path",
            data.display()
        ),
    })?;
    let mut rest = Vec::new();
    let mut existing = absolute.as_path();
    loop {
        if let Ok(real) = std::fs::canonicalize(existing) {
            return Ok(rest.iter().rev().fold(real, |path, part| path.join(part)));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => return Ok(absolute),
        }
    }
}

async fn run(cli: Cli) -> Result<u8, Exit> {
    let data = absolute_data_dir(&cli.data.clone().unwrap_or_else(default_data_dir))?;
    let ctx = Ctx {
        builder: session_builder(&cli, &data)?,
        fleet: cli.fleet.clone(),
        data,
    };
    match cli.command {
        Command::Simulate { .. } => Ok(0),
        #[cfg(feature = "demo")]
        Command::Demo(args) => demo::run(&ctx.data, args.json).await,
        #[cfg(not(feature = "demo"))]
        Command::Demo(_) => Err(usage(NO_DEMO)),
        Command::Adapter(AdapterCommand::Inspect { file, json }) => {
            adapter_cmd::inspect(&file, &ctx.fleet, json)
        }
        Command::Adapter(AdapterCommand::Diff { old, new, json }) => {
            adapter_cmd::diff(&old, &new, json)
        }
        Command::Lock { approve, json } => adapter_cmd::lock(&ctx.fleet, approve, json),
        Command::Adapter(AdapterCommand::New { name, dir }) => adapter_cmd::new(&name, dir),
        Command::Adapter(AdapterCommand::Test {
            adapter,
            replay,
            json,
        }) => record::test(&adapter, &replay, json).await,
        Command::Adapter(AdapterCommand::Keygen { out }) => adapter_cmd::keygen(out),
        Command::Adapter(AdapterCommand::Sign { file, key, signer }) => {
            adapter_cmd::sign(file, key, signer)
        }
        Command::Adapter(AdapterCommand::Verify { file, keys }) => {
            adapter_cmd::verify(&ctx, file, keys)
        }
        Command::Audit(AuditCommand::Verify { json, reanchor }) => {
            commands::history::audit_verify(&ctx, json, reanchor).await
        }
        Command::Audit(AuditCommand::Show(args)) => commands::audit::show(&ctx, args).await,
        Command::Status(args) => commands::status::status(&ctx, args).await,
        Command::Plan(args) => commands::runs::plan(&ctx, args).await,
        Command::Apply(args) => commands::runs::apply(&ctx, args).await,
        Command::Enqueue(args) => commands::runs::enqueue(&ctx, args).await,
        Command::Agent(args) => commands::runs::agent(&ctx, args).await,
        Command::Resume(args) => commands::runs::resume(&ctx, args).await,
        Command::Abandon(args) => commands::runs::abandon(&ctx, args).await,
        Command::Backup(BackupArgs {
            action:
                Some(BackupCommand::Verify {
                    id,
                    restore_test,
                    json,
                }),
            ..
        }) => commands::backups::backup_verify(&ctx, id, restore_test, json).await,
        Command::Backup(args) => commands::backups::backup(&ctx, args).await,
        Command::Backups(args) => commands::backups::backups(&ctx, args).await,
        Command::Restore(args) => commands::backups::restore(&ctx, args).await,
        Command::History(args) => commands::history::history(&ctx, args).await,
        Command::Adopt(args) => {
            let command = upshift::ops::preflight::ServiceCommand::Adopt(args.pid);
            commands::services::control(&ctx, args.service, command).await
        }
        Command::Start(args) => {
            let command = upshift::ops::preflight::ServiceCommand::Start;
            commands::services::control(&ctx, args, command).await
        }
        Command::Stop(args) => {
            let command = upshift::ops::preflight::ServiceCommand::Stop;
            commands::services::control(&ctx, args, command).await
        }
        Command::Gc(args) => commands::gc::gc(&ctx, args).await,
    }
}
