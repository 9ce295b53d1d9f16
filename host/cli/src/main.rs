//! The `upshift` command. Errors become exit codes here: 0 done, 1 error, 2 bad usage or input,
//! 3 refused by the product's rules, 4 failed and rolled back, 5 failed and not rolled back.

mod adapter_cmd;
mod cli;
#[cfg(feature = "demo")]
mod demo;
mod exit;
mod record;
mod scaffold;
mod ui;

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use cli::{AdapterCommand, AuditCommand, BackupArgs, BackupCommand, Cli, Command, Method};
use upshift::fleet::Fleet;
use upshift::ops::apply::{self, PlanOutcome};
use upshift::ops::{OpError, Session, SessionBuilder};
use upshift::runtime::bindings::BackupMethod;

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
    if upshift::ops::TEST_HOOKS
        && let Ok(point) = std::env::var("UPSHIFT_CRASH_AT")
    {
        builder = builder.crash_point(point.parse().map_err(usage)?);
    }
    Ok(builder)
}

/// Open the session a command works in, with its progress going to `events`.
async fn open_session(
    builder: &SessionBuilder,
    events: upshift::caps::EventSink,
) -> Result<Session, Exit> {
    Ok(builder.clone().events(events).open().await?)
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

/// Write a secret key readable by its owner only.
fn write_secret(path: &Path, secret: &str) -> Result<(), Exit> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {} (it must not exist yet)", path.display()))?;
    f.write_all(format!("{secret}\n").as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn print_json(value: &impl serde::Serialize) -> Result<(), Exit> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
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
            eprintln!("error: {:#}", exit.error);
            if let Some(hint) = hint(&exit.error) {
                eprintln!("hint: {hint}");
            }
            ExitCode::from(exit.code)
        }
    }
}

/// `apply` over several instances: waves, parallelism, a failure budget and a report.
async fn rollout(
    session: &Session,
    fleet: &upshift::fleet::Fleet,
    args: &cli::ApplyArgs,
    ui: Option<&ui::Ui>,
) -> Result<u8, Exit> {
    use upshift::ops::{report, rollout};
    let selection = rollout::Selection {
        all: args.all,
        names: args.instances.clone(),
        filters: args.select.clone(),
    };
    let instances = rollout::select(fleet, &selection)?;
    let waves = match &args.waves {
        Some(text) => rollout::parse_waves(text).map_err(usage)?,
        None => Vec::new(),
    };
    let options = rollout::Options {
        to: args.to.clone(),
        parallel: args.parallel,
        waves,
        max_failures: args.max_failures,
    };
    if !args.json {
        eprint!("{}", ui::rollout_plan_text(&instances, &options));
    }
    if !confirm(args.yes, "Start this rollout?")? {
        return Err(usage("not confirmed; nothing was changed"));
    }
    let outcome = rollout::rollout(session, &instances, &options).await;
    if let Some(ui) = ui {
        ui.clear();
    }
    let outcome = outcome?;
    let (md, json_path) = report::write(session, &outcome).await?;
    if args.json {
        print_json(&outcome)?;
    } else {
        eprint!("{}", ui::rollout_text(&outcome, &md, &json_path));
    }
    Ok(exit::rollout(&outcome))
}

async fn run(cli: Cli) -> Result<u8, Exit> {
    let data = cli.data.clone().unwrap_or_else(default_data_dir);
    let builder = session_builder(&cli, &data)?;
    let load_fleet = || Fleet::load(&cli.fleet);
    match cli.command {
        Command::Simulate { .. } => Ok(0),
        #[cfg(feature = "demo")]
        Command::Demo(args) => demo::run(&data, args.json).await,
        #[cfg(not(feature = "demo"))]
        Command::Demo(_) => Err(usage(NO_DEMO)),
        Command::Adapter(AdapterCommand::Inspect { file, json }) => {
            adapter_cmd::inspect(&file, &cli.fleet, json)
        }
        Command::Adapter(AdapterCommand::Diff { old, new, json }) => {
            adapter_cmd::diff(&old, &new, json)
        }
        Command::Lock { approve, json } => adapter_cmd::lock(&cli.fleet, approve, json),
        Command::Adapter(AdapterCommand::New { name, dir }) => adapter_cmd::new(&name, dir),
        Command::Adapter(AdapterCommand::Test {
            adapter,
            replay,
            json,
        }) => record::test(&adapter, &replay, json).await,
        Command::Adapter(AdapterCommand::Keygen { out }) => {
            let (secret, public) = upshift::signing::keygen()?;
            let key = out.with_extension("key");
            let pubf = out.with_extension("pub");
            write_secret(&key, &secret)?;
            std::fs::write(&pubf, format!("{public}\n"))
                .with_context(|| format!("cannot write {}", pubf.display()))?;
            println!(
                "secret key: {} (keep it private)\npublic key: {} {public}",
                key.display(),
                pubf.display()
            );
            Ok(0)
        }
        Command::Adapter(AdapterCommand::Sign { file, key, signer }) => {
            let wasm = upshift::adapters::read_file(&file).map_err(usage)?;
            let secret = std::fs::read_to_string(&key)
                .with_context(|| format!("cannot read the secret key {}", key.display()))?;
            let signed = upshift::signing::sign(&file, &wasm, &secret, &signer)?;
            println!(
                "signed {} (sha256 {}) as {signer}; {} signature(s) in {}",
                file.display(),
                signed.digest,
                signed.signatures.len(),
                upshift::signing::signature_path(&file).display()
            );
            Ok(0)
        }
        Command::Adapter(AdapterCommand::Verify { file, keys }) => {
            let wasm = upshift::adapters::read_file(&file).map_err(usage)?;
            let policy = if keys.is_empty() {
                load_fleet()?.trust.ok_or_else(|| {
                    usage("no [trust] policy in the fleet file and no --key given: nothing to verify against")
                })?
            } else {
                let mut named = std::collections::BTreeMap::new();
                for k in &keys {
                    let text = std::fs::read_to_string(k)
                        .with_context(|| format!("cannot read the public key {}", k.display()))?;
                    named.insert(k.display().to_string(), text.trim().to_string());
                }
                upshift::signing::TrustPolicy {
                    keys: named,
                    require: upshift::signing::Require::AtLeast(1),
                }
            };
            match upshift::signing::verify(&file, &wasm, &policy) {
                Ok(signers) => {
                    println!(
                        "trusted: {} signed by {}",
                        file.display(),
                        signers.join(", ")
                    );
                    Ok(0)
                }
                Err(e) => Err(Exit {
                    code: 1,
                    error: anyhow::anyhow!("not trusted: {e}"),
                }),
            }
        }
        Command::Audit(AuditCommand::Verify { json }) => {
            let path = data.join("audit.jsonl");
            if !path.exists() {
                return Err(usage(format!(
                    "no audit log at {}; pass --data DIR",
                    path.display()
                )));
            }
            let report = upshift::audit::verify(&path)?;
            if json {
                print_json(&serde_json::json!({
                    "records": report.records,
                    "ok": report.first_problem.is_none(),
                    "problem": report.first_problem.as_ref().map(|p| serde_json::json!({
                        "line": p.line, "seq": p.seq, "kind": format!("{:?}", p.kind).to_lowercase(), "message": p.message,
                    })),
                }))?;
            }
            match report.first_problem {
                None => {
                    if !json {
                        println!(
                            "audit log {}: {} records, chain intact",
                            path.display(),
                            report.records
                        );
                    }
                    Ok(0)
                }
                Some(p) => {
                    if !json {
                        println!("audit log {}: TAMPERED — {}", path.display(), p.message);
                    }
                    Ok(1)
                }
            }
        }
        Command::Plan(args) => {
            let (ui, sink) = ui::Ui::sink(true);
            drop(ui);
            let mut session = open_session(&builder, sink).await?;
            let instance = args.instance.clone().unwrap_or_default();
            let _tape = record::start(&mut session, &args.tape, &instance)?;
            let offline = match (&args.product, &args.adapter) {
                (Some(product), _) => Some(upshift::fleet::AdapterRef::Bundled(product.clone())),
                (None, Some(file)) => Some(upshift::fleet::AdapterRef::File(file.clone())),
                (None, None) => None,
            };
            let report = match (&args.instance, &offline, &args.from) {
                (None, Some(adapter), Some(from)) => {
                    apply::offline_plan(&session, adapter, from, &args.to).await?
                }
                (Some(name), None, None) => {
                    let fleet = load_fleet()?;
                    apply::plan_instance(&session, fleet.instance(name)?, &args.to).await?
                }
                _ => {
                    return Err(usage(
                        "give an INSTANCE, or --product P (or --adapter FILE) --from V for an offline plan",
                    ));
                }
            };
            if args.json {
                print_json(&report)?;
            } else {
                print!("{}", ui::plan_text(&report));
            }
            Ok(match report.outcome {
                PlanOutcome::Plan(_) => 0,
                PlanOutcome::Refused(_) => 3,
            })
        }
        Command::Apply(args) => {
            let fleet = load_fleet()?;
            if !args.yes && !std::io::stdin().is_terminal() {
                return Err(usage(
                    "no terminal to confirm on; pass --yes to run without a prompt",
                ));
            }
            let (ui, sink) = ui::Ui::sink(args.json);
            let mut session = open_session(&builder, sink).await?;
            let json = args.json;
            let yes = args.yes;
            if args.all || !args.select.is_empty() || args.instances.len() != 1 {
                if args.tape.record.is_some() {
                    return Err(usage("--record records one instance's run; name one"));
                }
                return rollout(&session, &fleet, &args, ui.as_deref()).await;
            }
            let instance = fleet.instance(&args.instances[0])?;
            let Some(to) = args.to.clone().or_else(|| instance.target.clone()) else {
                return Err(usage(format!(
                    "instance `{}` has no `target` in the fleet file; pass --to VERSION",
                    instance.name
                )));
            };
            let _tape = record::start(&mut session, &args.tape, &instance.name)?;
            let report = apply::apply(&session, instance, &to, |plan| {
                if !json {
                    eprint!("{}", ui::plan_text(plan));
                }
                confirm(yes, "Proceed with this plan?").unwrap_or(false)
            })
            .await;
            finish_run(ui.as_deref(), report, json)
        }
        Command::Enqueue(args) => {
            let fleet = load_fleet()?;
            let session = open_session(&builder, upshift::caps::EventSink::discard()).await?;
            let selection = upshift::ops::rollout::Selection {
                all: args.all,
                names: args.instances.clone(),
                filters: args.select.clone(),
            };
            let mut items = Vec::new();
            for instance in upshift::ops::rollout::select(&fleet, &selection)? {
                let Some(target) = args.to.clone().or_else(|| instance.target.clone()) else {
                    return Err(usage(format!(
                        "instance `{}` has no `target` in the fleet file; pass --to VERSION",
                        instance.name
                    )));
                };
                items.push(upshift::queue::QueueItem {
                    instance: instance.name.clone(),
                    target,
                });
            }
            let n = upshift::ops::agent::enqueue(&session, &items).await?;
            println!("queued {n} of {} instance(s)", items.len());
            Ok(0)
        }
        Command::Agent(args) => {
            let fleet = load_fleet()?;
            let (ui, sink) = ui::Ui::sink(args.json);
            let session = open_session(&builder, sink).await?;
            let name = args
                .name
                .clone()
                .unwrap_or_else(|| upshift::lease::holder_name("agent"));
            let done = upshift::ops::agent::run(&session, &fleet, &name, args.until_empty).await;
            if let Some(ui) = ui.as_deref() {
                ui.clear();
            }
            let done = done?;
            if args.json {
                print_json(&done)?;
            } else {
                for h in &done {
                    eprintln!(
                        "  {:<20} {}{}",
                        h.instance,
                        h.outcome,
                        if h.resumed {
                            " (resumed an interrupted run)"
                        } else {
                            ""
                        }
                    );
                }
            }
            Ok(0)
        }
        Command::Resume(args) => {
            let fleet = load_fleet()?;
            let (ui, sink) = ui::Ui::sink(args.json);
            let session = open_session(&builder, sink).await?;
            let report = upshift::ops::resume::resume(
                &session,
                &fleet,
                &args.run,
                args.step_done.as_deref(),
            )
            .await;
            finish_run(ui.as_deref(), report, args.json)
        }
        Command::Backup(BackupArgs {
            action:
                Some(BackupCommand::Verify {
                    id,
                    restore_test,
                    json,
                }),
            ..
        }) => {
            let session = open_session(&builder, upshift::caps::EventSink::discard()).await?;
            let fleet = if cli.fleet.exists() {
                Some(load_fleet()?)
            } else {
                None
            };
            let outcome =
                upshift::ops::backups::verify(&session, fleet.as_ref(), &id, restore_test).await?;
            if json {
                print_json(&outcome)?;
            } else {
                println!(
                    "backup {} of `{}` ({} {})",
                    outcome.backup.id,
                    outcome.backup.instance,
                    outcome.backup.method,
                    outcome.backup.location
                );
                for c in &outcome.checks {
                    println!(
                        "  {} {}: {}",
                        if c.passed { "✔" } else { "✘" },
                        c.name,
                        c.detail
                    );
                }
                println!(
                    "{}",
                    if outcome.ok {
                        "backup is good"
                    } else {
                        "backup is NOT good: marked invalid, it will not be restored"
                    }
                );
            }
            Ok(if outcome.ok { 0 } else { 1 })
        }
        Command::Backup(args) => {
            let fleet = load_fleet()?;
            let Some(instance_name) = args.instance.clone() else {
                return Err(usage("give an INSTANCE to back up, or `backup verify ID`"));
            };
            let (_ui, sink) = ui::Ui::sink(args.json);
            let session = open_session(&builder, sink).await?;
            let method = match args.method {
                Method::Dump => BackupMethod::Dump,
                Method::Clone => BackupMethod::Clone,
            };
            let backups = apply::backup(&session, fleet.instance(&instance_name)?, method).await?;
            if args.json {
                print_json(&backups)?;
            } else {
                for b in &backups {
                    println!(
                        "backup {} of `{}` at {} ({} {}, {} bytes{})",
                        b.id,
                        b.binding,
                        b.product_version,
                        b.method,
                        b.location,
                        b.size_bytes.unwrap_or(0),
                        b.sha256
                            .as_ref()
                            .map(|s| format!(", sha256 {}", &s[..12.min(s.len())]))
                            .unwrap_or_default()
                    );
                }
            }
            Ok(0)
        }
        Command::Backups(args) => {
            let state = builder.open_state().await?;
            let backups = state.backups(args.instance.as_deref()).await?;
            if args.json {
                print_json(&backups)?;
            } else if backups.is_empty() {
                println!("no backups");
            } else {
                println!(
                    "{:<16} {:<14} {:<8} {:<10} {:<6} {:<22} location",
                    "id", "instance", "binding", "version", "method", "taken"
                );
                for b in &backups {
                    println!(
                        "{:<16} {:<14} {:<8} {:<10} {:<6} {:<22} {}",
                        b.id,
                        b.instance,
                        b.binding,
                        b.product_version,
                        b.method,
                        b.created_at,
                        b.location
                    );
                }
            }
            Ok(0)
        }
        Command::Restore(args) => {
            let fleet = load_fleet()?;
            let instance = fleet.instance(&args.instance)?;
            if !args.yes && !std::io::stdin().is_terminal() {
                return Err(usage(
                    "no terminal to confirm on; pass --yes to run without a prompt",
                ));
            }
            let (ui, sink) = ui::Ui::sink(args.json);
            let session = open_session(&builder, sink).await?;
            let (json, yes) = (args.json, args.yes);
            let report = apply::restore(
                &session,
                instance,
                &args.backup_id,
                args.into.as_deref(),
                |plan| {
                    if !json {
                        eprintln!("Restore plan for {}:", instance.name);
                        for (i, s) in plan.steps.iter().enumerate() {
                            eprintln!("  {:>2}. {:<16} {}", i + 1, s.id, s.title);
                        }
                        for n in &plan.notes {
                            eprintln!("  note: {n}");
                        }
                    }
                    confirm(yes, "Proceed with this restore?").unwrap_or(false)
                },
            )
            .await;
            finish_run(ui.as_deref(), report, json)
        }
        Command::History(args) => {
            let state = builder.open_state().await?;
            if let Some(run_id) = &args.run {
                let run = state
                    .run(run_id)
                    .await?
                    .ok_or_else(|| usage(format!("no run `{run_id}`")))?;
                let steps = state.steps(run_id).await?;
                if args.json {
                    print_json(&serde_json::json!({ "run": run, "steps": steps }))?;
                } else {
                    println!(
                        "run {} {} {} {} → {}: {}{}",
                        run.id,
                        run.kind,
                        run.instance,
                        run.from_version,
                        run.to_version,
                        run.status,
                        run.message
                            .as_ref()
                            .map(|m| format!(" ({m})"))
                            .unwrap_or_default()
                    );
                    for s in &steps {
                        println!(
                            "  {:<8} {:<24} {:<10} {:>7} ms  {}",
                            s.phase,
                            s.step_id,
                            s.status.to_string(),
                            s.duration_ms.unwrap_or(0),
                            s.error
                                .clone()
                                .or(s.output.clone())
                                .unwrap_or_default()
                                .lines()
                                .next()
                                .unwrap_or("")
                        );
                    }
                }
                return Ok(0);
            }
            let runs = state.runs(args.instance.as_deref(), args.limit).await?;
            if args.json {
                print_json(&runs)?;
            } else if runs.is_empty() {
                println!("no runs");
            } else {
                for r in &runs {
                    println!(
                        "{}  {:<20} {:<8} {:<14} {:>8} → {:<8} {}",
                        r.started_at,
                        r.id,
                        r.kind,
                        r.instance,
                        r.from_version,
                        r.to_version,
                        r.status
                    );
                }
            }
            Ok(0)
        }
    }
}

/// Clear the bars, print a run report (text or JSON) and map its outcome to the exit code.
fn finish_run(
    ui: Option<&ui::Ui>,
    report: Result<apply::RunReport, OpError>,
    json: bool,
) -> Result<u8, Exit> {
    if let Some(ui) = ui {
        ui.clear();
    }
    let report = report?;
    if json {
        print_json(&report)?;
    } else {
        print!("{}", ui::run_text(&report));
    }
    Ok(exit::outcome(report.outcome))
}
