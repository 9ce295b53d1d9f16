//! The host side of the WIT imports, one file per WIT interface. Each function is the same
//! shape: through the tap (see [`super::tap`]), find the caps, call the capability's guarded
//! method (grant check → audit → backend, in `upshift_caps`), convert the answer.

mod db;
mod files;
mod http;
mod log;
mod service;

use std::sync::Arc;

use super::HostState;
use super::bindings::CapError as WitCapError;
use super::bindings::upshift::adapter::types;
use super::tap::{ImportCall, Tap, Taped, encode};
use upshift_caps::{CapError, InstanceCaps, Operation};

/// What an import returns: a trap (the host failed), or the capability's answer.
type CapResult<T> = wasmtime::Result<Result<T, WitCapError>>;

impl HostState {
    /// A call's arguments for the tap, built only when the tap is on.
    fn tap_args(&self, args: impl FnOnce() -> serde_json::Value) -> Option<serde_json::Value> {
        self.tap.active().then(args)
    }

    /// Make one import call. Replaying, the tape answers it and nothing else is reached.
    /// Otherwise `f` runs with the instance's caps (grant check → audit → backend; without caps,
    /// during `describe` and offline planning, every call is denied), and a recording tap keeps
    /// the call and the answer the guest gets.
    async fn taped<T: Taped>(
        &mut self,
        interface: &str,
        operation: Operation,
        binding: &str,
        args: Option<serde_json::Value>,
        f: impl AsyncFnOnce(Arc<InstanceCaps>) -> Result<T, CapError>,
    ) -> CapResult<T> {
        self.charge_call()?;
        if let Tap::Replay(cursor) = &mut self.tap {
            return cursor.answer(interface, operation.name(), args.unwrap_or_default());
        }
        let answer = match self.caps.clone() {
            Some(caps) => f(caps).await.map_err(WitCapError::from),
            None => {
                let reason =
                    "no capabilities are available during `describe`, `plan` and `plan-restore`";
                if let Some(witness) = &self.witness {
                    let _ = witness.deny(binding, interface, operation, reason);
                }
                Err(WitCapError::Denied(reason.into()))
            }
        };
        if let (Tap::Record(calls), Some(args)) = (&mut self.tap, args) {
            calls.push(ImportCall {
                interface: interface.into(),
                function: operation.name().into(),
                args,
                result: encode(&answer),
            });
        }
        Ok(answer)
    }
}

impl HostState {
    /// Count one host call against the export call's budget: over it, the call is refused and
    /// the export stopped (a trap, audited once as the adapter's fault).
    fn charge_call(&self) -> wasmtime::Result<()> {
        self.spend.charge_call().map_err(wasmtime::Error::new)
    }
}

impl types::Host for HostState {}
