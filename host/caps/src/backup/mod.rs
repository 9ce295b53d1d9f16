//! Backups, whatever the engine: the manifest that says what a database backup holds and how to
//! check it ([`manifest`]), and checksummed directory snapshots ([`snapshot`]).

pub mod manifest;
pub mod snapshot;
