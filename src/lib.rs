//! ChainCore: a proof-of-work, UTXO-model blockchain node.
//!
//! Layers, bottom up: `encoding` (explicit canonical bytes), `consensus`
//! (pure types and rules), `wire` (frames and messages), `store` (RocksDB),
//! `chain` (the only writer of state), `mempool`, `p2p`, `api`, `node`.
//! Everything that needs RocksDB is behind the default `node` feature, so
//! the fuzz targets build the pure layers alone.

#[cfg(feature = "node")]
pub mod api;
#[cfg(feature = "node")]
pub mod chain;
#[cfg(feature = "node")]
pub mod cli;
#[cfg(feature = "node")]
pub mod client;
pub mod collections;
pub mod consensus;
pub mod encoding;
#[cfg(feature = "node")]
pub mod events;
#[cfg(feature = "node")]
pub mod files;
pub mod fuzzing;
#[cfg(feature = "node")]
pub mod mempool;
pub mod miner;
pub mod mining;
#[cfg(feature = "node")]
pub mod mirror;
#[cfg(feature = "node")]
pub mod node;
#[cfg(feature = "node")]
pub mod p2p;
pub mod priority;
pub mod store;
pub mod testkit;
#[cfg(feature = "node")]
pub mod wallet;
pub mod wire;
