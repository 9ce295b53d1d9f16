//! The commands, by area; `main` parses the arguments and dispatches here.

pub mod audit;
pub mod backups;
pub mod gc;
pub mod history;
pub mod runs;
pub mod services;
pub mod status;

use std::path::PathBuf;

use upshift::fleet::{Fleet, FleetError};
use upshift::ops::{Session, SessionBuilder};

use crate::Exit;

/// What every command may need from the global options.
pub struct Ctx {
    /// The fleet file.
    pub fleet: PathBuf,
    /// The data directory.
    pub data: PathBuf,
    /// How to open a session.
    pub builder: SessionBuilder,
}

impl Ctx {
    /// Read and check the fleet file.
    pub fn load_fleet(&self) -> Result<Fleet, FleetError> {
        Fleet::load(&self.fleet)
    }

    /// Open the session a command works in, with its progress going to `events`.
    pub async fn open_session(&self, events: upshift::caps::EventSink) -> Result<Session, Exit> {
        Ok(self.builder.clone().events(events).open().await?)
    }
}
