//! The node's own block producer (`--mine-to`): builds a block on the tip,
//! searches nonces on one thread, and hands the solved block to the chain
//! like any other block, with the mempool's best transactions. The
//! multi-core miner comes with the mining API.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::chain::{unix_now, BlockOutcome, Chain};
use crate::consensus::address::PubKeyHash;
use crate::consensus::pow::target_from_compact;
use crate::mempool::Mempool;
use crate::mining::{assemble_block, grind_nonce, BlockTemplateHeader};

/// Nonces tried between checks for a new tip or a stop request.
const NONCES_PER_ROUND: u32 = 1 << 18;

/// Mines `count` blocks (forever if `None`) to `payout`, pausing `interval`
/// between blocks, until `stop` is set. Returns the number of blocks mined.
pub fn produce_blocks(
    chain: &Mutex<Chain>,
    mempool: &Mutex<Mempool>,
    payout: PubKeyHash,
    count: Option<u64>,
    interval: Duration,
    stop: &AtomicBool,
) -> anyhow::Result<u64> {
    let mut mined = 0u64;
    let mut extra_nonce = rand::random::<u64>();
    while count.is_none_or(|c| mined < c) && !stop.load(Ordering::Relaxed) {
        let (params, template, txs, fees) = {
            let chain = chain.lock().expect("chain lock");
            let tip = chain.tip();
            let ctx = chain.context_after(&tip.hash).expect("tip is indexed");
            let (txs, fees) = mempool
                .lock()
                .expect("mempool lock")
                .select_for_block(&chain, Mempool::block_space());
            (
                chain.params(),
                BlockTemplateHeader {
                    prev_hash: tip.hash,
                    height: ctx.height,
                    time: unix_now().max(ctx.median_time_past + 1),
                    bits: ctx.expected_bits,
                },
                txs,
                fees,
            )
        };
        extra_nonce = extra_nonce.wrapping_add(1);
        let mut block = assemble_block(params, template, payout, extra_nonce, fees, txs);
        let target = target_from_compact(template.bits)?;
        let mut start = 0u32;
        let solved = loop {
            if grind_nonce(&mut block.header, &target, start, NONCES_PER_ROUND) {
                break true;
            }
            start = match start.checked_add(NONCES_PER_ROUND) {
                Some(next) => next,
                None => break false, // nonce space exhausted: new extra nonce
            };
            let stale = chain.lock().expect("chain lock").tip().hash != template.prev_hash;
            if stale || stop.load(Ordering::Relaxed) {
                break false;
            }
        };
        if !solved {
            continue;
        }
        let outcome = chain
            .lock()
            .expect("chain lock")
            .process_block(Arc::new(block), None)?;
        match outcome {
            BlockOutcome::Accepted { .. } => mined += 1,
            other => tracing::warn!(?other, "own block was not accepted"),
        }
        if !interval.is_zero() {
            std::thread::sleep(interval);
        }
    }
    Ok(mined)
}
