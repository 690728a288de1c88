//! Chain state in RocksDB. `schema` documents the layout; this module opens
//! the database, checks that it belongs to the expected network and format,
//! and offers typed reads and a typed write batch. Only the chain writes;
//! `cache` holds its writes in memory between flushes.

pub mod digest;
pub mod schema;

#[cfg(feature = "node")]
pub mod cache;
#[cfg(feature = "node")]
mod db;
#[cfg(feature = "node")]
pub use cache::{BlockRows, StateCache, StateWrites};
#[cfg(feature = "node")]
pub use db::*;
