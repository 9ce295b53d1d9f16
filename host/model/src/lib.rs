//! Upshift's vocabulary, with no I/O: what an adapter may ask for and what the operator grants
//! ([`grants`]), what bindings point at ([`binding`]), how capability sets compare
//! ([`capdiff`]), content digests ([`digest`]), the product version grammar ([`version`]),
//! how a URL is shown ([`redact`]) and adapter text made safe for a terminal ([`text`]). Every
//! other host crate depends on this one.

pub mod binding;
pub mod capdiff;
pub mod digest;
pub mod grants;
pub mod redact;
pub mod tenure;
pub mod text;
pub mod version;

pub use digest::digest;
