//! `--record FILE` on `plan` and `apply`, and `upshift adapter test ADAPTER --replay FILE`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use upshift::ops::{OpError, Session};
use upshift::runtime::Runtime;
use upshift::tape::{Recorder, Tape};

use crate::cli::RecordArgs;
use crate::{Exit, print_json, usage};

/// A recording in progress: the tape is written when this is dropped, so whatever the run's
/// outcome — done, refused, rolled back or failed with an error — it is on disk.
pub struct Recording {
    recorder: Arc<Recorder>,
    path: PathBuf,
    overwrite: bool,
}

/// Check the tape file can be written and set a recorder on the session's runtime (nothing
/// without `--record`).
pub fn start(
    session: &mut Session,
    args: &RecordArgs,
    instance: &str,
) -> Result<Option<Recording>, Exit> {
    let Some(path) = &args.record else {
        return Ok(None);
    };
    upshift::tape::check_target(path, args.record_overwrite).map_err(|e| match e {
        upshift::tape::TapeError::Exists { .. } => {
            usage(format!("{e}, or pass --record-overwrite"))
        }
        _ => usage(e.to_string()),
    })?;
    let command: Vec<String> = std::env::args().skip(1).collect();
    let recorder =
        Arc::new(Recorder::new(instance, &command.join(" ")).masking(session.secrets.clone()));
    session.runtime.set_observer(Some(recorder.clone()));
    Ok(Some(Recording {
        recorder,
        path: path.clone(),
        overwrite: args.record_overwrite,
    }))
}

impl Drop for Recording {
    /// Write the tape. One that cannot be written is reported but does not change the run's
    /// exit code: the run happened.
    fn drop(&mut self) {
        let tape = self.recorder.tape();
        match tape.write(&self.path, self.overwrite) {
            Ok(()) => eprintln!(
                "tape: {} export call(s) and {} capability call(s) recorded to {} (it holds what the adapter read: review it before sharing)",
                tape.exports.len(),
                tape.exports.iter().map(|e| e.calls.len()).sum::<usize>(),
                self.path.display()
            ),
            Err(e) => eprintln!("error: the tape was not written: {e}"),
        }
    }
}

/// The component bytes of a file, or of a bundled adapter by name.
fn component(adapter: &str) -> Result<(String, Vec<u8>), Exit> {
    let path = Path::new(adapter);
    if path.exists() {
        let wasm = upshift::adapters::read_file(path).map_err(usage)?;
        let label = path
            .file_name()
            .map_or(adapter.to_string(), |n| n.to_string_lossy().into_owned());
        return Ok((label, wasm));
    }
    upshift::adapters::bundled(adapter)
        .map(|b| (b.product.to_string(), b.wasm.to_vec()))
        .ok_or_else(|| {
            usage(format!(
                "`{adapter}` is neither a file nor a bundled adapter ({})",
                upshift::adapters::bundled_names()
            ))
        })
}

/// `upshift adapter test ADAPTER --replay FILE`: 0 identical, 1 different, 2 bad input.
pub async fn test(adapter: &str, tape: &Path, json: bool) -> Result<u8, Exit> {
    let tape = Tape::read(tape).map_err(|e| usage(e.to_string()))?;
    let (label, wasm) = component(adapter)?;
    let runtime = Runtime::new(None).map_err(OpError::from)?;
    let loaded = runtime.load(&label, &wasm).await.map_err(OpError::from)?;
    let report = upshift::tape::replay::replay(&runtime, &loaded, &tape).await;
    if json {
        print_json(&report)?;
    } else {
        crate::out(&crate::ui::lines(&report.to_string()));
    }
    Ok(crate::exit::replay(&report))
}
