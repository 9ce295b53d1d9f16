//! Run the OpenMetadata simulator by hand:
//! `DB_SCHEME=postgresql DB_HOST=127.0.0.1 DB_PORT=5432 DB_USER=… FERNET_KEY=… openmetadata-sim --version 1.9.0 migrate`.

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    upshift_sim::openmetadata::main_with_args(&args)
}
