//! Run the KWDB simulator by hand, as `kwbase` would be run:
//! `KWDB_SIM_VERSION=3.1.0 KWDB_SIM_BACKING_URL=postgres://… kwdb-sim start-single-node --insecure
//! --listen-addr=127.0.0.1:26257 --http-addr=127.0.0.1:8080 --store=/tmp/kw`.

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    upshift_sim::kwdb::main_with_args(&args)
}
