//! The `upshift` command. Errors become exit codes here: 0 done, 1 error (or a run that failed
//! having changed nothing), 2 bad usage or input, 3 refused by the product's rules, 4 failed and
//! rolled back, 5 failed and not rolled back.

mod adapter_cmd;
mod cli;
mod commands;
#[cfg(feature = "demo")]
mod demo;
mod exit;
mod record;
mod scaffold;
mod ui;

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::OnceLock;

use clap::Parser;

use cli::{AdapterCommand, AuditCommand, BackupArgs, BackupCommand, Cli, Command};
use commands::Ctx;
use upshift::caps::Secrets;
use upshift::ops::{OpError, Session, SessionBuilder};

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
            Some(OpError::Busy(_)) => 6,
            _ if error.downcast_ref::<upshift::fleet::FleetError>().is_some() => 2,
            _ => 1,
        };
        Exit { code, error }
    }
}

/// How every command opens its session: the global options. In a build with test hooks (the
/// integration tests' build), `UPSHIFT_CRASH_AT=<phase>:<seq>:<started|finished>` makes the host
/// kill itself at that point of a run, as a machine dying there would; normal builds never read
/// it.
fn session_builder(cli: &Cli, data: &Path) -> Result<SessionBuilder, Exit> {
    let mut builder = Session::builder(data)
        .secrets(secrets().clone())
        .state_url(cli.state.clone())
        .services_dir(cli.services.clone());
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
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

/// The secrets of this process's session: everything the command prints is masked with them
/// (the session masks what it writes with the same registry).
fn secrets() -> &'static Secrets {
    static SECRETS: OnceLock<Secrets> = OnceLock::new();
    SECRETS.get_or_init(Secrets::new)
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
    print!("{}", secrets().mask(text));
}

/// [`out`] on stderr.
fn err_out(text: &str) {
    eprint!("{}", secrets().mask(text));
}

/// Die quietly on a closed pipe (`upshift … | head`), as command-line tools do, instead of
/// panicking in `println!`.
fn default_sigpipe() {
    use nix::sys::signal::{SigHandler, Signal, signal};
    // SAFETY: restoring the default disposition installs no handler code; it runs before any
    // other thread exists.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
}

fn main() -> ExitCode {
    default_sigpipe();
    let cli = Cli::parse();
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
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(exit) => {
            // An error may quote an adapter or a product: made visible, secrets masked. Only
            // the host's own usage and fleet-file errors (exit 2) keep their lines
            // (`…\nfix: …`); any other error is one line, so quoted text cannot start a
            // forged line.
            let text = format!("{:#}", exit.error);
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

async fn run(cli: Cli) -> Result<u8, Exit> {
    let data = cli.data.clone().unwrap_or_else(default_data_dir);
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
        Command::Plan(args) => commands::runs::plan(&ctx, args).await,
        Command::Apply(args) => commands::runs::apply(&ctx, args).await,
        Command::Enqueue(args) => commands::runs::enqueue(&ctx, args).await,
        Command::Agent(args) => commands::runs::agent(&ctx, args).await,
        Command::Resume(args) => commands::runs::resume(&ctx, args).await,
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
    }
}
