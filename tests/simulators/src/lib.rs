//! Product simulators and throwaway PostgreSQL clusters for Upshift's tests and demo.
//!
//! **This is test infrastructure, not the products.** Each simulator behaves as its product does
//! *at upgrade time* — the same tables, columns, version rows, endpoints, refusals and startup
//! migrations, per `shared/product-facts.md` — so adapters can be tested end to end on a machine
//! where the real products cannot be installed. See README.md beside this file.

pub mod bytebase;
pub mod devlake;
pub mod fleet;
pub mod kwdb;
pub mod mariadb;
pub mod openmetadata;
pub mod pg;
pub mod ports;
