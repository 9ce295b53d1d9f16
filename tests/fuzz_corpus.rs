//! The fuzz corpus as a regression suite: every file under `fuzz/corpus/<target>/` goes through
//! the same checks the fuzz target runs (`fuzz/checks.rs`), under plain `cargo test` on stable.
//! See docs/fuzzing.md.

#[path = "../fuzz/checks.rs"]
mod checks;

use std::path::Path;

fn run_corpus(target: &str) {
    let (_, check) = checks::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .unwrap_or_else(|| panic!("no check for target {target}"));
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.expect("corpus entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} holds no corpus", dir.display());
    for file in &files {
        let data = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(
            outcome.is_ok(),
            "corpus entry {} fails the {target} checks",
            file.display()
        );
    }
}

#[test]
fn every_target_has_a_check_and_a_corpus() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    for (name, _) in checks::TARGETS {
        assert!(corpus.join(name).is_dir(), "fuzz/corpus/{name} is missing");
    }
}

#[test]
fn fleet_file_corpus() {
    run_corpus("fleet_file");
}

#[test]
fn adapter_manifest_corpus() {
    run_corpus("adapter_manifest");
}

#[test]
fn plan_corpus() {
    run_corpus("plan");
}

#[test]
fn snapshot_path_corpus() {
    run_corpus("snapshot_path");
}
