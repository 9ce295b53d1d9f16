//! Upshift's vocabulary, with no I/O: what an adapter may ask for and what the operator grants
//! ([`grants`]), what bindings point at ([`binding`]), how capability sets compare
//! ([`capdiff`]), and content digests ([`digest`]). Every other host crate depends on this one.

pub mod binding;
pub mod capdiff;
pub mod digest;
pub mod grants;

pub use digest::digest;
