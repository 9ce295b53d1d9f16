//! A test-only service for container images (test infrastructure). Run as
//! `kwbase start-single-node … --http-addr=HOST:PORT` (or with `SVC_PORT`), it answers
//! `GET /healthz` with `OK` and `GET /version` with `$SVC_VERSION`; `kwbase check` is its
//! healthcheck. With `SVC_FAIL` set it exits at once, like an image that cannot start.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::ExitCode;

fn port(args: &[String]) -> Option<u16> {
    if let Ok(p) = std::env::var("SVC_PORT") {
        return p.parse().ok();
    }
    args.iter()
        .find_map(|a| a.strip_prefix("--http-addr="))
        .and_then(|addr| addr.rsplit(':').next())
        .and_then(|p| p.parse().ok())
}

fn check(port: u16) -> ExitCode {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return ExitCode::FAILURE;
    };
    let _ = s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n");
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    if answer.starts_with("HTTP/1.1 200") {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let version = std::env::var("SVC_VERSION").unwrap_or_else(|_| "unknown".into());
    let Some(port) = port(&args) else {
        eprintln!("kwbase (test service): no port; pass --http-addr=HOST:PORT or set SVC_PORT");
        return ExitCode::from(2);
    };
    if args.first().map(String::as_str) == Some("check") {
        return check(port);
    }
    if std::env::var("SVC_FAIL").is_ok() {
        eprintln!("kwbase {version}: cannot start (SVC_FAIL is set)");
        return ExitCode::from(1);
    }
    let listener = match TcpListener::bind(("127.0.0.1", port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("kwbase {version}: cannot listen on 127.0.0.1:{port}: {e}");
            return ExitCode::from(1);
        }
    };
    println!("kwbase {version} serving on 127.0.0.1:{port}");
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let mut buf = [0u8; 2048];
        let n = stream.read(&mut buf).unwrap_or(0);
        let request = String::from_utf8_lossy(&buf[..n]);
        let body = if request.starts_with("GET /version") {
            version.clone()
        } else {
            "OK".to_string()
        };
        let _ = write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }
    ExitCode::SUCCESS
}
