//! The `chaincore` command line: one binary for the node and its clients.

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::consensus::params::Network;

mod info;

/// ChainCore: a proof-of-work UTXO blockchain node and its tools.
#[derive(Debug, Parser)]
#[command(name = "chaincore", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print a network's consensus and networking parameters as JSON.
    Params {
        #[arg(long, default_value = "main", value_parser = parse_network)]
        network: Network,
    },
    /// Print a network's genesis block (hash, header fields, raw hex) as JSON.
    Genesis {
        #[arg(long, default_value = "main", value_parser = parse_network)]
        network: Network,
    },
}

pub fn parse_network(s: &str) -> Result<Network, String> {
    s.parse()
        .map_err(|e: crate::consensus::params::UnknownNetwork| e.to_string())
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Params { network } => info::print_params(network),
        Command::Genesis { network } => info::print_genesis(network),
    }
}
