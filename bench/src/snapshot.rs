//! Snapshot of a directory of many files with checksums, against `cp -a`.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::Config;
use crate::report::{Metric, Target, Unit};
use crate::stats::Samples;

/// Run `cmd`; its trimmed stdout, or an error with its stderr.
pub fn run_ok(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn sh(cmd: &mut Command) -> Result<()> {
    run_ok(cmd).map(drop)
}

/// Flush dirty pages so one run's writeback does not land in the next one's time.
pub fn sync() -> Result<()> {
    sh(&mut Command::new("sync"))
}

fn time(f: impl FnOnce() -> Result<()>) -> Result<f64> {
    let t = Instant::now();
    f()?;
    Ok(t.elapsed().as_secs_f64())
}

/// The figure.
pub async fn run(cfg: &Config) -> Result<Vec<Metric>> {
    let (files, total) = if cfg.quick {
        (1_000, 100u64 << 20)
    } else {
        (10_000, 1u64 << 30)
    };
    let root = cfg.data.join("snapshot");
    let _ = std::fs::remove_dir_all(&root);
    let src = root.join("src");
    let bytes = crate::data::file_tree(&src, files, total)?;
    sync()?;
    let mut m = Metric::new(
        &format!(
            "snapshot of a {} directory of {files} files with checksums",
            crate::report::fmt(Unit::Bytes, bytes as f64)
        ),
        "`upshift::caps::backup::snapshot::snapshot`: walk through cap-std, copy each file (a \
         copy-on-write clone where the file system can) while hashing it with sha256 and \
         start its writeback, one `syncfs` for all of them, write and sync the manifest, \
         rename into place",
        Unit::Seconds,
        Target::RatioAtMost(1.0),
    );
    let mut cp = Samples::new();
    let mut cp_sync = Samples::new();
    let (ours_dst, cp_dst) = (root.join("ours"), root.join("cp"));
    for run in 0..cfg.runs {
        let ours = || -> Result<()> {
            upshift::caps::backup::snapshot::snapshot(&src, &ours_dst)?;
            Ok(())
        };
        let copy = || sh(Command::new("cp").arg("-a").arg(&src).arg(&cp_dst));
        let copy_sync = || {
            sh(Command::new("cp").arg("-a").arg(&src).arg(&cp_dst))?;
            sync()
        };
        // Alternate the order so neither side always runs on the cooler cache.
        if run % 2 == 0 {
            m.ours.push(time(ours)?);
            clean(&ours_dst)?;
            cp.push(time(copy)?);
            clean(&cp_dst)?;
        } else {
            cp.push(time(copy)?);
            clean(&cp_dst)?;
            m.ours.push(time(ours)?);
            clean(&ours_dst)?;
        }
        cp_sync.push(time(copy_sync)?);
        clean(&cp_dst)?;
    }
    m.notes.push(format!(
        "{files} files in 100 directories, sizes uniform between ½ and 1½ × the mean, \
         incompressible bytes; the source is in the page cache (it was just written and \
         synced), so both sides read from memory and write to the same disk; after every \
         copy the destination is deleted and `sync` runs (untimed)"
    ));
    m.notes.push(format!(
        "`cp -a` returns before its data reaches the disk; `cp -a` followed by `sync` (what a \
         snapshot that survives a crash has to pay) took {} / {} / {} (min / median / max), \
         ratio {:.2}×",
        crate::report::fmt(Unit::Seconds, cp_sync.min()),
        crate::report::fmt(Unit::Seconds, cp_sync.median()),
        crate::report::fmt(Unit::Seconds, cp_sync.max()),
        m.ours.median() / cp_sync.median()
    ));
    m.comparison = Some(("`cp -a` (no checksums, no fsync)".into(), cp));
    let _ = std::fs::remove_dir_all(&root);
    Ok(vec![m])
}

fn clean(dir: &Path) -> Result<()> {
    std::fs::remove_dir_all(dir).with_context(|| format!("cannot remove {}", dir.display()))?;
    sync()
}
