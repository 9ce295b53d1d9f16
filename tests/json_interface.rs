//! The machine interface (docs/json.md), through the `upshift` binary.
mod common;
