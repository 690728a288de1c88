//! ChainCore's integration tests: one binary (each test binary links RocksDB
//! again), one module per area.

mod api;
mod cli;
mod clients;
mod common;
mod crash;
mod dissector;
mod esplora;
mod events;
mod explorer;
mod hostile;
mod mempool;
mod mirror;
mod p2p;
mod pg_server;
mod schema;
mod spec;
mod vectors;
mod webdriver;
