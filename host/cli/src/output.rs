//! Standard output and standard error as a run can outlive them: `upshift apply … | head -3`,
//! a terminal closed mid-run. A stream is written until its first error (a closed pipe, a
//! terminal gone) and then left alone, so no print can stop a run half-way; the run's report
//! stays in `upshift history` and the reports directory.
//!
//! The macros below take the place of the standard library's `println!`, `print!`,
//! `eprintln!` and `eprint!` in every module of this crate (`main.rs` declares this module
//! first), so that no print path, present or future, can panic on a closed stream.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

/// One of the process's two output streams.
pub struct Stream {
    broken: AtomicBool,
    stdout: bool,
}

/// Standard output: reports and JSON.
pub static STDOUT: Stream = Stream {
    broken: AtomicBool::new(false),
    stdout: true,
};

/// Standard error: progress, plans, errors.
pub static STDERR: Stream = Stream {
    broken: AtomicBool::new(false),
    stdout: false,
};

impl Stream {
    /// Write `text` and flush it, unless an earlier write failed. The first failure of
    /// standard output is said on standard error (if that still works).
    pub fn write(&self, text: &str) {
        if self.is_broken() {
            return;
        }
        let written = if self.stdout {
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes()).and_then(|()| out.flush())
        } else {
            let mut err = std::io::stderr().lock();
            err.write_all(text.as_bytes()).and_then(|()| err.flush())
        };
        if let Err(e) = written
            && !self.broken.swap(true, Ordering::SeqCst)
            && self.stdout
        {
            STDERR.write(&format!(
                "upshift: standard output is closed ({e}); nothing more is written to it, the command goes on (`upshift history` shows a run's report)\n"
            ));
        }
    }

    /// Whether a write failed: nothing more goes to this stream.
    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::SeqCst)
    }

    /// Stop writing to this stream (a writer of its own, such as the progress bars, failed).
    pub fn mark_broken(&self) {
        self.broken.store(true, Ordering::SeqCst);
    }
}

/// `println!` that never panics: see the module documentation.
macro_rules! println {
    () => {
        $crate::output::STDOUT.write("\n")
    };
    ($($arg:tt)*) => {
        $crate::output::STDOUT.write(&format!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` that never panics.
#[allow(unused_macros)]
macro_rules! print {
    ($($arg:tt)*) => {
        $crate::output::STDOUT.write(&format!($($arg)*))
    };
}

/// `eprintln!` that never panics.
macro_rules! eprintln {
    () => {
        $crate::output::STDERR.write("\n")
    };
    ($($arg:tt)*) => {
        $crate::output::STDERR.write(&format!("{}\n", format_args!($($arg)*)))
    };
}

/// `eprint!` that never panics.
macro_rules! eprint {
    ($($arg:tt)*) => {
        $crate::output::STDERR.write(&format!($($arg)*))
    };
}
