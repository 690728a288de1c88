//! The node's own block producer (`--mine-to`, `--mine-threads`): the
//! multi-core miner fed from the node's chain and mempool, handing each
//! solved block to the chain like any other block.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::chain::{unix_now, BlockOutcome, Chain};
use crate::consensus::address::PubKeyHash;
use crate::consensus::amount::Amount;
use crate::consensus::block::Block;
use crate::consensus::validation::BlockContext;
use crate::mempool::Mempool;
use crate::miner::{Freshness, Miner, WorkSource};
use crate::mining::{assemble_block, BlockTemplateHeader};

/// A template whose mempool has changed is replaced after this long: long
/// enough not to rebuild on every relayed transaction, short enough that
/// blocks carry recent fees (Bitcoin Core's miners use tens of seconds).
pub const TEMPLATE_REFRESH: Duration = Duration::from_secs(5);
/// How often the producer logs its hash rate.
pub const HASHRATE_REPORT_INTERVAL: Duration = Duration::from_secs(10);

/// Builds a template on the chain's tip with the mempool's best
/// transactions (the pool caught up with the chain), paying `payout`, with
/// a fresh extra nonce.
pub fn node_template(
    chain: &Chain,
    pool: &mut Mempool,
    payout: PubKeyHash,
    extra_nonce: u64,
) -> NodeTemplate {
    let tip = chain.tip();
    let ctx = chain.context_after(&tip.hash).expect("the tip is indexed");
    let (txs, fees) = pool.select_for_block(chain, Mempool::block_space());
    let header = BlockTemplateHeader {
        prev_hash: tip.hash,
        height: ctx.height,
        time: unix_now().max(ctx.median_time_past + 1),
        bits: ctx.expected_bits,
    };
    let block = assemble_block(chain.params(), header, payout, extra_nonce, fees, txs);
    NodeTemplate { block, fees, ctx }
}

/// A block to solve, what it collects in fees, and the context it was
/// built in (height, time bounds).
pub struct NodeTemplate {
    pub block: Block,
    pub fees: Amount,
    pub ctx: BlockContext,
}

/// Work from the node's own chain and mempool.
struct NodeWork<'a> {
    chain: &'a Mutex<Chain>,
    mempool: &'a Mutex<Mempool>,
    payout: PubKeyHash,
    interval: Duration,
    extra_nonce: u64,
    /// The mempool's change counter when the template was built.
    pool_changes: u64,
}

impl WorkSource for NodeWork<'_> {
    fn template(&mut self) -> anyhow::Result<Block> {
        let chain = self.chain.lock().expect("chain lock");
        let mut pool = self.mempool.lock().expect("mempool lock");
        pool.catch_up(&chain);
        self.extra_nonce = self.extra_nonce.wrapping_add(1);
        let block = node_template(&chain, &mut pool, self.payout, self.extra_nonce).block;
        self.pool_changes = pool.changes();
        Ok(block)
    }

    fn freshness(&mut self, work: &Block, since: Instant) -> anyhow::Result<Freshness> {
        if self.chain.lock().expect("chain lock").tip().hash != work.header.prev_hash {
            return Ok(Freshness::TipChanged);
        }
        if since.elapsed() >= TEMPLATE_REFRESH
            && self.mempool.lock().expect("mempool lock").changes() != self.pool_changes
        {
            return Ok(Freshness::MempoolChanged);
        }
        Ok(Freshness::Fresh)
    }

    fn submit(&mut self, block: Block) -> anyhow::Result<bool> {
        let outcome = self
            .chain
            .lock()
            .expect("chain lock")
            .process_block(Arc::new(block), None)?;
        let accepted = matches!(outcome, BlockOutcome::Accepted { .. });
        if !accepted {
            tracing::warn!(?outcome, "own block was not accepted");
        }
        if !self.interval.is_zero() {
            std::thread::sleep(self.interval);
        }
        Ok(accepted)
    }
}

/// Mines `count` blocks (forever if `None`) to `payout` on `threads`
/// threads, pausing `interval` after each block, until `stop` is set.
/// Publishes the hash rate (hashes per second) in `hashrate`. Returns the
/// number of blocks mined.
#[allow(clippy::too_many_arguments)]
pub fn produce_blocks(
    chain: &Mutex<Chain>,
    mempool: &Mutex<Mempool>,
    payout: PubKeyHash,
    count: Option<u64>,
    interval: Duration,
    threads: usize,
    hashrate: &AtomicU64,
    stop: &AtomicBool,
) -> anyhow::Result<u64> {
    let miner = Miner::new(threads)?;
    let mut work = NodeWork {
        chain,
        mempool,
        payout,
        interval,
        extra_nonce: rand::random(),
        pool_changes: 0,
    };
    let report = crate::miner::mine(
        &miner,
        &mut work,
        count,
        stop,
        HASHRATE_REPORT_INTERVAL,
        &mut |rate, report| {
            hashrate.store(rate as u64, Ordering::Relaxed);
            tracing::info!(
                hashes_per_sec = rate as u64,
                threads = miner.threads(),
                blocks = report.blocks_accepted,
                "mining"
            );
        },
    )?;
    tracing::info!(
        found = report.blocks_found,
        accepted = report.blocks_accepted,
        stale = report.stale_templates,
        rolls = report.extra_nonce_rolls,
        "block producer stopped"
    );
    Ok(report.blocks_accepted)
}
