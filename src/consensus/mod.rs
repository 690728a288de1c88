//! Consensus: the types, encodings and rules every node must agree on.
//!
//! Everything here is pure and deterministic: no I/O, no tokio, no RocksDB.
//! The fuzzers and property tests exercise it directly.

pub mod address;
pub mod amount;
pub mod block;
pub mod hash;
pub mod keys;
pub mod limits;
pub mod merkle;
pub mod params;
pub mod pow;
pub mod transaction;
pub mod validation;
