//! Builds the first-party adapters (and the test adapters) for `wasm32-wasip2` with a nested
//! cargo in its own target directory, so a plain `cargo build` / `cargo test` from a clean
//! checkout produces the components the binary bundles.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Adapter crates to build: (package, output name).
const ADAPTERS: &[(&str, &str)] = &[
    ("upshift-adapter-bytebase", "bytebase"),
    ("upshift-adapter-kwdb", "kwdb"),
    ("upshift-adapter-openmetadata", "openmetadata"),
    ("upshift-adapter-devlake", "devlake"),
    ("upshift-test-adapter-misbehaving", "test-misbehaving"),
];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default());
    // host/upshift → the repository root.
    let root = manifest_dir
        .ancestors()
        .nth(2)
        .unwrap_or(Path::new("../.."))
        .to_path_buf();
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap_or_default());
    for watched in ["wit", "adapters", "tests/adapters/misbehaving"] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    println!("cargo:rerun-if-env-changed=UPSHIFT_ADAPTER_TARGET_DIR");

    let target_dir = std::env::var("UPSHIFT_ADAPTER_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target").join("adapters"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .arg("build")
        .arg("--quiet")
        .arg("--locked")
        .arg("--target")
        .arg("wasm32-wasip2")
        .arg("--profile")
        .arg("adapter")
        .arg("--target-dir")
        .arg(&target_dir);
    for (package, _) in ADAPTERS {
        cmd.arg("-p").arg(package);
    }
    // The outer build's settings are for the host, not for wasm guests.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_MAKEFLAGS",
        "MAKEFLAGS",
        "MFLAGS",
        "CARGO_LLVM_COV",
        "LLVM_PROFILE_FILE",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo to build the adapters: {e}"));
    if !status.success() {
        panic!(
            "building the adapters for wasm32-wasip2 failed ({status}).\n\
             If the target is missing, run: rustup target add wasm32-wasip2"
        );
    }
    for (package, name) in ADAPTERS {
        let file = package.replace('-', "_");
        let built = target_dir
            .join("wasm32-wasip2")
            .join("adapter")
            .join(format!("{file}.wasm"));
        let dest = out_dir.join(format!("{name}.wasm"));
        std::fs::copy(&built, &dest).unwrap_or_else(|e| {
            panic!("cannot copy {} to {}: {e}", built.display(), dest.display())
        });
    }
    println!("cargo:rustc-env=UPSHIFT_ADAPTER_DIR={}", out_dir.display());
}
