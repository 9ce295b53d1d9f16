//! Fuzz target `adapter_manifest`: see `fuzz/checks.rs` and docs/fuzzing.md for what it checks.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::adapter_manifest(data));
