//! ChainCore: a proof-of-work, UTXO-model blockchain node.
//!
//! Layers, bottom up: `encoding` (explicit canonical bytes), `consensus`
//! (pure types and rules). See `DESIGN.md` in the shared folder for the map.

pub mod api;
pub mod chain;
pub mod cli;
pub mod consensus;
pub mod encoding;
pub mod mempool;
pub mod mining;
pub mod node;
pub mod p2p;
pub mod store;
pub mod testkit;
pub mod wire;
