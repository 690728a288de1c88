//! The `chaincore` command line: one binary for the node and its clients.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::consensus::address::Address;
use crate::consensus::params::Network;

mod devnet;
mod info;
mod mine;
mod monitor;
mod wallet;

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
        /// The network: main, test or regtest.
        #[arg(long, default_value = "main", value_parser = parse_network)]
        network: Network,
    },
    /// Print a network's genesis block (hash, header fields, raw hex) as JSON.
    Genesis {
        /// The network: main, test or regtest.
        #[arg(long, default_value = "main", value_parser = parse_network)]
        network: Network,
    },
    /// Run a node.
    Node(NodeArgs),
    /// Verify a data dir offline: recompute the UTXO set, address balances
    /// and digest from the stored blocks and compare them with the stored
    /// state. Exits non-zero if anything differs. Reads the store
    /// read-only, so it may run beside the node (it checks the state as it
    /// was when opened).
    Check {
        /// The node's data dir (e.g. ~/.chaincore/main).
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// The PostgreSQL mirror.
    #[command(subcommand)]
    Mirror(MirrorCommand),
    /// A one-key wallet over any node's REST API.
    Wallet(wallet::WalletArgs),
    /// Mine on every core with work from a node's REST API.
    Mine(mine::MineArgs),
    /// Start N regtest nodes on 127.0.0.1 that peer with one another.
    Devnet(devnet::DevnetArgs),
    /// A live view of several nodes.
    Monitor(monitor::MonitorArgs),
}

#[derive(Debug, Subcommand)]
pub enum MirrorCommand {
    /// Compare every address balance and the UTXO set in PostgreSQL with the
    /// node's store at the mirrored height; non-zero exit on any
    /// difference. Reads the store read-only, so it may run beside the
    /// node.
    Verify {
        /// The node's data dir (e.g. ~/.chaincore/main).
        #[arg(long)]
        data_dir: PathBuf,
        /// The mirror's database (e.g. postgres://user@127.0.0.1/chaincore).
        #[arg(long, env = "CHAINCORE_POSTGRES_URL", hide_env_values = true)]
        postgres_url: String,
    },
}

#[derive(Debug, Args)]
pub struct NodeArgs {
    /// The network: main, test or regtest.
    #[arg(long, default_value = "main", value_parser = parse_network)]
    pub network: Network,
    /// Where the chain state lives (default: ~/.chaincore/NETWORK).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Mine blocks inside the node, paying this address.
    #[arg(long)]
    pub mine_to: Option<String>,
    /// Stop mining after this many blocks (default: keep mining).
    #[arg(long, requires = "mine_to")]
    pub mine_blocks: Option<u64>,
    /// Pause between mined blocks, in milliseconds.
    #[arg(long, default_value_t = 0, requires = "mine_to")]
    pub mine_interval_ms: u64,
    /// Threads of the node's miner.
    #[arg(long, default_value_t = 1, requires = "mine_to")]
    pub mine_threads: usize,
    /// Feed the blocks of a block file (u32 LE length + block, repeated)
    /// to the chain at start.
    #[arg(long)]
    pub import: Option<PathBuf>,
    /// Port of the peer-to-peer listener (default: the network's port; 0
    /// picks a free one, logged at start).
    #[arg(long)]
    pub p2p_port: Option<u16>,
    /// Address of the peer-to-peer listener.
    #[arg(long, default_value = "0.0.0.0")]
    pub p2p_bind: std::net::IpAddr,
    /// A peer to connect to and keep connected to (repeatable).
    #[arg(long = "peer", value_name = "HOST:PORT")]
    pub peers: Vec<String>,
    /// Connect only to the `--peer` addresses, never to addresses learned
    /// from other peers (as Bitcoin Core's -connect).
    #[arg(long)]
    pub connect_only: bool,
    /// Port of the REST API (default: the network's; 0 picks a free one,
    /// logged at start).
    #[arg(long)]
    pub api_port: Option<u16>,
    /// Address of the REST API. Loopback unless you mean to expose it.
    #[arg(long, default_value = "127.0.0.1")]
    pub api_bind: std::net::IpAddr,
    /// Most connections the REST API serves at once; newcomers wait for
    /// one to end. A client other than loopback (an IPv4 address, an IPv6
    /// /64) holds at most 32 of them.
    #[arg(long, default_value_t = crate::api::listener::DEFAULT_MAX_API_CONNECTIONS as u32, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub api_max_connections: u32,
    /// Seconds a REST connection may pass between requests without a byte
    /// either way before it is closed (an idle keep-alive connection); a
    /// request under way is bounded by --api-request-timeout-secs.
    #[arg(long, default_value_t = crate::api::listener::DEFAULT_API_IDLE_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub api_idle_timeout_secs: u64,
    /// Seconds a REST request may take from its first byte to its answer's
    /// first byte (as Bitcoin Core's -rpcservertimeout): a client sending
    /// its request a byte at a time holds its connection this long at most.
    #[arg(long, default_value_t = crate::api::listener::API_REQUEST_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..=3_600))]
    pub api_request_timeout_secs: u64,
    /// Mirror blocks, transactions and balances into this PostgreSQL
    /// database (e.g. postgres://user@127.0.0.1/chaincore).
    #[arg(long, env = "CHAINCORE_POSTGRES_URL", hide_env_values = true)]
    pub postgres_url: Option<String>,
    /// Token that allows the admin endpoints (POST/DELETE /peers) from other
    /// hosts than loopback, as `Authorization: Bearer TOKEN`.
    #[arg(long, env = "CHAINCORE_API_ADMIN_TOKEN", hide_env_values = true)]
    pub api_admin_token: Option<String>,
    /// Let web pages of this origin (scheme://host[:port]) read the REST
    /// API from a browser (CORS); repeatable or comma-separated; '*' allows
    /// every origin and must be given alone. Without it the node sends no
    /// CORS headers and browsers refuse cross-origin reads. The admin
    /// endpoints keep their own rule either way.
    #[arg(long = "api-cors", value_name = "ORIGIN")]
    pub api_cors: Vec<String>,
    /// Memory limit of the mempool, in MiB (the heap its entries
    /// and indexes take, as Bitcoin Core's `-maxmempool`).
    #[arg(long, default_value_t = crate::mempool::DEFAULT_MAX_MEMPOOL_BYTES >> 20)]
    pub mempool_max_mb: usize,
    /// Do not wait for the disk after each write of chain state (each
    /// block at the tip, each cache flush in catch-up); a power loss may
    /// lose the last blocks, a process crash loses nothing.
    #[arg(long)]
    pub no_sync_writes: bool,
    /// Byte limit, in MiB, of the in-memory write-back cache of chain state
    /// (as Bitcoin Core's `-dbcache`): during catch-up, blocks' changes
    /// collect there and are written in one batch when it is full; at the
    /// tip every block is written as it connects. 0 writes every block.
    #[arg(long, default_value_t = crate::chain::flush::DEFAULT_CACHE_BYTES >> 20)]
    pub dbcache_mb: usize,
    /// The least total work (hex, as in `/status`'s chain work) a chain must
    /// show before the node indexes its headers or downloads its blocks;
    /// overrides the network's built-in value.
    #[arg(long, value_parser = parse_chain_work)]
    pub minimum_chain_work: Option<primitive_types::U256>,
}

/// Parses a chain work given in hex (with or without `0x`), at most 256 bits.
fn parse_chain_work(text: &str) -> Result<primitive_types::U256, String> {
    let digits = text.strip_prefix("0x").unwrap_or(text);
    if digits.is_empty() || digits.len() > 64 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "{text:?} is not a chain work: expected 1 to 64 hex digits"
        ));
    }
    primitive_types::U256::from_str_radix(digits, 16).map_err(|e| e.to_string())
}

/// Checks a PostgreSQL URL's form at start, so a typo stops the node
/// with a clear message rather than leaving the mirror retrying a
/// connection that can never succeed (a server that is down is retried).
/// Not a clap value parser: clap's message would echo the URL, password
/// and all, to the terminal and whatever logs it.
fn check_postgres_url(text: &str) -> Result<()> {
    text.parse::<tokio_postgres::Config>()
        .map(drop)
        .map_err(|e| {
            anyhow::anyhow!("--postgres-url is not a PostgreSQL URL or key=value string: {e}")
        })
}

/// Resolves `HOST:PORT` peer arguments (names resolve once, at start).
fn resolve_peers(peers: &[String]) -> Result<Vec<std::net::SocketAddr>> {
    use std::net::ToSocketAddrs;
    peers
        .iter()
        .map(|p| {
            p.to_socket_addrs()
                .with_context(|| format!("peer {p:?} is not HOST:PORT"))?
                .next()
                .with_context(|| format!("peer {p:?} resolves to no address"))
        })
        .collect()
}

fn default_data_dir(network: Network) -> Result<PathBuf> {
    let home = std::env::var_os("HOME").context("HOME is not set: pass --data-dir")?;
    Ok(PathBuf::from(home).join(".chaincore").join(network.name()))
}

fn init_logging() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("CHAINCORE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

pub fn parse_network(s: &str) -> Result<Network, String> {
    s.parse()
        .map_err(|e: crate::consensus::params::UnknownNetwork| e.to_string())
}

/// An error as one line for the terminal: each context, then its causes,
/// joined by ": ", leaving out a cause the line already says after a ": "
/// (many errors write their source into their own message, as
/// `RocksDB: {0}` or `wallet file {path}: {source}`, and anyhow's `{:#}`
/// would say it twice). A cause's words elsewhere in the line (in a path,
/// say) do not count.
pub fn error_report(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if text.is_empty() || line == text || line.contains(&format!(": {text}")) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Params { network } => info::print_params(network),
        Command::Wallet(args) => wallet::run(args),
        Command::Mine(args) => mine::run(args),
        Command::Devnet(args) => devnet::run(args),
        Command::Monitor(args) => monitor::run(args),
        Command::Genesis { network } => info::print_genesis(network),
        Command::Node(args) => {
            init_logging();
            // The import runs beside the node once it is up: a path that
            // cannot be read stops the node now, not in a log line later.
            if let Some(path) = &args.import {
                std::fs::File::open(path)
                    .with_context(|| format!("--import {}", path.display()))?;
            }
            if let Some(url) = &args.postgres_url {
                check_postgres_url(url)?;
            }
            let mine_to = args
                .mine_to
                .as_deref()
                .map(|a| Address::parse(a, args.network).map(|a| a.hash))
                .transpose()?;
            let config = crate::node::NodeConfig {
                network: args.network,
                data_dir: match args.data_dir {
                    Some(dir) => dir,
                    None => default_data_dir(args.network)?,
                },
                mine_to,
                mine_blocks: args.mine_blocks,
                mine_interval: Duration::from_millis(args.mine_interval_ms),
                mine_threads: args.mine_threads,
                import: args.import,
                sync_writes: !args.no_sync_writes,
                cache_bytes: args.dbcache_mb.saturating_mul(1 << 20),
                minimum_chain_work: args.minimum_chain_work,
                mempool_max_bytes: args.mempool_max_mb.saturating_mul(1 << 20),
                postgres_url: args.postgres_url,
                api_admin_token: args.api_admin_token,
                api_cors: crate::api::cors::CorsOrigins::parse(&args.api_cors)
                    .map_err(anyhow::Error::msg)?,
                api_limits: crate::api::listener::ConnectionLimits {
                    max_connections: args.api_max_connections as usize,
                    idle_timeout: Duration::from_secs(args.api_idle_timeout_secs),
                    request_timeout: Duration::from_secs(args.api_request_timeout_secs),
                },
                api_bind: std::net::SocketAddr::new(
                    args.api_bind,
                    args.api_port
                        .unwrap_or(args.network.params().default_api_port),
                ),
                p2p_bind: std::net::SocketAddr::new(
                    args.p2p_bind,
                    args.p2p_port
                        .unwrap_or(args.network.params().default_p2p_port),
                ),
                peers: resolve_peers(&args.peers)?,
                connect_only: args.connect_only,
            };
            tokio::runtime::Runtime::new()?.block_on(crate::node::run(config))
        }
        Command::Mirror(MirrorCommand::Verify {
            data_dir,
            postgres_url,
        }) => {
            check_postgres_url(&postgres_url)?;
            let (store, network) =
                crate::store::Store::open_read_only(&data_dir, &Default::default())?;
            let report = tokio::runtime::Runtime::new()?.block_on(async {
                let client = crate::mirror::connect_read_only(&postgres_url, network).await?;
                crate::mirror::verify::verify(&client, &store, network).await
            })?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            if !report.is_consistent() {
                anyhow::bail!(
                    "{} differences between PostgreSQL and the node",
                    report.difference_count
                );
            }
            Ok(())
        }
        Command::Check { data_dir } => {
            let (store, network) =
                crate::store::Store::open_read_only(&data_dir, &Default::default())?;
            let report = crate::chain::check::check_store(&store)?;
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({
                    "network": network,
                    "report": report,
                }))?
            );
            if !report.is_consistent() {
                anyhow::bail!(
                    "{} differences between the stored and the recomputed state",
                    report.difference_count
                );
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("wallet file w.json: {source}")]
    struct Echoing {
        source: std::io::Error,
    }

    #[test]
    fn an_error_report_says_each_cause_once() {
        // A cause the error already writes into its own message.
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file");
        let error = anyhow::Error::new(Echoing { source: io }).context("loading the wallet");
        assert_eq!(
            error_report(&error),
            "loading the wallet: wallet file w.json: No such file"
        );
        // Causes that do not repeat are all kept, outermost first.
        let plain = anyhow::anyhow!("connection refused")
            .context("PostgreSQL")
            .context("starting the mirror");
        assert_eq!(
            error_report(&plain),
            "starting the mirror: PostgreSQL: connection refused"
        );
        // A short cause whose words appear earlier in the line, but not as
        // a cause, is still said.
        let short = anyhow::anyhow!("timed out").context("reading /srv/timed out/blocks.dat");
        assert_eq!(
            error_report(&short),
            "reading /srv/timed out/blocks.dat: timed out"
        );
    }
}
