//! Run the Bytebase simulator by hand: `PG_URL=… bytebase-sim --version 3.10.0 --port 8080`.

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let outcome = upshift_sim::bytebase::Options::from_args_and_env(&args).and_then(|opts| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)?
            .block_on(upshift_sim::bytebase::run(opts))
    });
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("FATAL {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}
