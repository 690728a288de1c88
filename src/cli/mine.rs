//! `chaincore mine`: the multi-core miner fed by a node's REST API
//! (`/mining/template`, `/mining/submit`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use serde::Deserialize;

use crate::client::NodeClient;
use crate::consensus::block::Block;
use crate::encoding::{Decode, Encode};
use crate::miner::{Freshness, Miner, WorkSource};
use crate::node::producer::TEMPLATE_REFRESH;

/// How long to wait before asking an unreachable node again.
const RETRY_DELAY: Duration = Duration::from_secs(2);

#[derive(Debug, Args)]
pub struct MineArgs {
    /// The node's REST URL.
    #[arg(long, env = "CHAINCORE_NODE")]
    node: String,
    /// Address the block rewards pay.
    #[arg(long)]
    address: String,
    /// Mining threads (default: every core).
    #[arg(long)]
    threads: Option<usize>,
    /// Stop after this many accepted blocks (default: mine until Ctrl-C).
    #[arg(long)]
    blocks: Option<u64>,
    /// Seconds between hash rate reports on stderr.
    #[arg(long, default_value_t = 5)]
    report_secs: u64,
}

#[derive(Debug, Deserialize)]
struct Template {
    block_hex: String,
}

#[derive(Debug, Deserialize, PartialEq, Eq, Clone, Copy)]
struct PoolSummary {
    count: u64,
    bytes: u64,
}

#[derive(Debug, Deserialize)]
struct Submitted {
    result: String,
}

/// Work from a node's REST API.
struct RestWork {
    client: NodeClient,
    runtime: tokio::runtime::Runtime,
    address: String,
    /// The mempool when the current template was made.
    pool: Option<PoolSummary>,
}

impl WorkSource for RestWork {
    fn template(&mut self) -> Result<Block> {
        let (template, pool) = self.runtime.block_on(async {
            let template: Template = self
                .client
                .get(&format!("/mining/template?address={}", self.address))
                .await?;
            let pool: PoolSummary = self.client.get("/mempool").await?;
            Ok::<_, anyhow::Error>((template, pool))
        })?;
        self.pool = Some(pool);
        let bytes = hex::decode(&template.block_hex).context("template block_hex is not hex")?;
        Block::from_bytes(&bytes).context("the template does not decode as a block")
    }

    fn freshness(&mut self, work: &Block, since: Instant) -> Result<Freshness> {
        let tip: String = self
            .runtime
            .block_on(self.client.get_text("/blocks/tip/hash"))?;
        if tip.trim() != work.header.prev_hash.to_string() {
            return Ok(Freshness::TipChanged);
        }
        if since.elapsed() >= TEMPLATE_REFRESH {
            let pool: PoolSummary = self.runtime.block_on(self.client.get("/mempool"))?;
            if Some(pool) != self.pool {
                return Ok(Freshness::MempoolChanged);
            }
        }
        Ok(Freshness::Fresh)
    }

    fn submit(&mut self, block: Block) -> Result<bool> {
        let hash = block.hash();
        let answer = self.runtime.block_on(
            self.client
                .post::<Submitted>("/mining/submit", hex::encode(block.to_bytes())),
        );
        match answer {
            Ok(s) if s.result == "accepted" => {
                eprintln!("block {hash} accepted");
                Ok(true)
            }
            Ok(s) => {
                eprintln!("block {hash}: {}", s.result);
                Ok(false)
            }
            Err(e) => {
                eprintln!("block {hash} refused: {e}");
                Ok(false)
            }
        }
    }
}

pub fn run(args: MineArgs) -> Result<()> {
    let client = NodeClient::new(&args.node)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        runtime.spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            stop.store(true, Ordering::Relaxed);
        });
    }
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let miner = Miner::new(threads)?;
    let mut source = RestWork {
        client,
        runtime,
        address: args.address.clone(),
        pool: None,
    };
    eprintln!(
        "mining to {} on {} with {threads} threads",
        args.address, args.node
    );
    let mut accepted = 0u64;
    while !stop.load(Ordering::Relaxed) && args.blocks.is_none_or(|b| accepted < b) {
        let result = crate::miner::mine(
            &miner,
            &mut source,
            args.blocks.map(|b| b - accepted),
            &stop,
            Duration::from_secs(args.report_secs.max(1)),
            &mut |rate, report| {
                eprintln!(
                    "{:.2} MH/s on {threads} threads ({:.2} per thread), {} blocks accepted",
                    rate / 1e6,
                    rate / 1e6 / threads as f64,
                    accepted + report.blocks_accepted
                );
            },
        );
        match result {
            Ok(report) => accepted += report.blocks_accepted,
            Err(e) => {
                let refused = e
                    .downcast_ref::<crate::client::ClientError>()
                    .is_some_and(|c| c.code().is_some());
                if refused {
                    // The node understood and said no (a bad address, say):
                    // asking again will not help.
                    return Err(e);
                }
                eprintln!("{e:#}; retrying in {RETRY_DELAY:?}");
                std::thread::sleep(RETRY_DELAY);
            }
        }
    }
    eprintln!("mined {accepted} blocks ({} hashes)", miner.hashes());
    Ok(())
}
