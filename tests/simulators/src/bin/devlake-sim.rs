//! Run the DevLake simulator by hand: `DB_URL=mysql://… (or postgres://…) ENCRYPTION_SECRET=… devlake-sim --version v1.0.1`.

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let outcome = upshift_sim::devlake::Config::from_args_and_env(&args).and_then(|config| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)?
            .block_on(upshift_sim::devlake::run(config))
    });
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("FATAL {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}
