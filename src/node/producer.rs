//! The node's own block producer (`--mine-to`, `--mine-threads`): the
//! multi-core miner fed from the node's chain and mempool, handing each
//! solved block to the chain like any other block.
//!
//! Every template, the producer's and the REST API's, is built by
//! `node_template`, which validates it against the tip's UTXO set before
//! handing it out (`check_template`, Bitcoin Core's `TestBlockValidity`):
//! a template that fails is logged, the mempool is repaired, and the
//! template is built again, so an invalid one is never mined.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::chain::{unix_now, BlockOutcome, ChainHandle};
use crate::consensus::address::PubKeyHash;
use crate::consensus::amount::Amount;
use crate::consensus::block::Block;
use crate::consensus::hash::BlockHash;
use crate::consensus::pow::block_subsidy;
use crate::consensus::transaction::Transaction;
use crate::consensus::validation::{
    check_block_body, check_block_contextual, BlockContext, BlockError, BlockSpends,
    SignatureChecks,
};
use crate::mempool::{Mempool, TipState};
use crate::miner::{Freshness, Miner, WorkSource};
use crate::mining::{assemble_block, BlockTemplateHeader};

/// A template whose mempool has changed is replaced after this long: long
/// enough not to rebuild on every relayed transaction, short enough that
/// blocks carry recent fees (Bitcoin Core's miners use tens of seconds).
pub const TEMPLATE_REFRESH: Duration = Duration::from_secs(5);
/// How often the producer logs its hash rate.
pub const HASHRATE_REPORT_INTERVAL: Duration = Duration::from_secs(10);

/// How many times `node_template` drops the transaction a failed template
/// names (after first revalidating the whole pool) before it falls back to
/// a template without pool transactions: each try costs a template's
/// validation, and more than one bad entry after a revalidation means a bug
/// that must not stall mining.
pub const MAX_TEMPLATE_REPAIRS: usize = 8;

/// Why a template cannot be handed out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("template builds on {prev_hash}, not on the tip {tip}")]
    NotOnTip {
        prev_hash: BlockHash,
        tip: BlockHash,
    },
    #[error("template pays subsidy plus {fees} units of fees, beyond the money range")]
    FeesOutOfRange { fees: u64 },
    #[error("invalid template: {0}")]
    Invalid(BlockError),
    #[error("reading the chain: {0}")]
    Chain(String),
}

impl From<crate::chain::ChainError> for TemplateError {
    fn from(e: crate::chain::ChainError) -> Self {
        TemplateError::Chain(e.to_string())
    }
}

/// Validates an unsolved block against the chain's tip and its UTXO set,
/// everything but the proof of work (Bitcoin Core's `TestBlockValidity`):
/// structure, header context, coinbase, and every input. Signatures are not
/// verified: every pool transaction's were at acceptance, and they depend
/// only on the transaction and the outputs it spends, which its outpoints
/// fix; what can go stale with the chain (inputs, order, maturity, lock
/// times, fees) is all checked.
pub fn check_template(chain: &dyn TipState, block: &Block) -> Result<BlockSpends, TemplateError> {
    let tip = chain.tip_hash();
    if block.header.prev_hash != tip {
        return Err(TemplateError::NotOnTip {
            prev_hash: block.header.prev_hash,
            tip,
        });
    }
    check_block_body(block).map_err(TemplateError::Invalid)?;
    let ctx = chain.tip_context()?;
    check_block_contextual(
        block,
        &ctx,
        chain.params(),
        chain.utxo_view(),
        SignatureChecks::Off,
    )
    .map_err(TemplateError::Invalid)
}

/// Builds a template on the chain's tip with the mempool's best
/// transactions (the pool caught up with the chain), paying `payout`, with
/// a fresh extra nonce, and checks it with `check_template`. A template that
/// fails is logged at warn and repaired: the pool is revalidated against
/// the tip, then (should that not suffice) the transaction the failure
/// names leaves with its descendants, up to `MAX_TEMPLATE_REPAIRS` times,
/// then the template carries no pool transactions. An error only if even
/// that fails, which no mempool state can cause.
pub fn node_template(
    chain: &dyn TipState,
    pool: &mut Mempool,
    payout: PubKeyHash,
    extra_nonce: u64,
) -> Result<NodeTemplate, TemplateError> {
    let mut revalidated = false;
    let mut repairs = 0;
    loop {
        let (txs, fees) = if repairs < MAX_TEMPLATE_REPAIRS {
            pool.select_for_block(chain, Mempool::block_space())
        } else {
            (Vec::new(), Amount::ZERO)
        };
        let from_pool = !txs.is_empty();
        let built = build_template(chain, payout, extra_nonce, fees, txs);
        let error = match built.and_then(|t| check_template(chain, &t.block).map(|_| t)) {
            Ok(template) => return Ok(template),
            Err(error) if !from_pool => return Err(error),
            Err(error) => error,
        };
        tracing::warn!(%error, "block template failed validation: repairing the mempool");
        if !revalidated {
            revalidated = true;
            let dropped = pool.revalidate(chain);
            tracing::warn!(dropped, "mempool revalidated against the tip");
            continue;
        }
        match error {
            TemplateError::Invalid(BlockError::InvalidTransaction { index, txid, .. })
                if index > 0 && pool.contains(&txid) =>
            {
                let removed =
                    pool.remove_with_descendants(&txid, crate::mempool::RemovalReason::Invalid);
                tracing::warn!(%txid, removed, "dropped a mempool transaction that made the template invalid");
                repairs += 1;
            }
            _ => repairs = MAX_TEMPLATE_REPAIRS,
        }
    }
}

/// The unchecked template on the tip with `txs` and their `fees`.
pub fn build_template(
    chain: &dyn TipState,
    payout: PubKeyHash,
    extra_nonce: u64,
    fees: Amount,
    txs: Vec<Transaction>,
) -> Result<NodeTemplate, TemplateError> {
    let ctx = chain.tip_context()?;
    if block_subsidy(chain.params(), ctx.height)
        .checked_add(fees)
        .is_none()
    {
        return Err(TemplateError::FeesOutOfRange { fees: fees.units() });
    }
    let header = BlockTemplateHeader {
        prev_hash: chain.tip_hash(),
        height: ctx.height,
        time: unix_now().max(ctx.median_time_past + 1),
        bits: ctx.expected_bits,
    };
    let block = assemble_block(chain.params(), header, payout, extra_nonce, fees, txs);
    Ok(NodeTemplate { block, fees, ctx })
}

/// A block to solve, what it collects in fees, and the context it was
/// built in (height, time bounds).
pub struct NodeTemplate {
    pub block: Block,
    pub fees: Amount,
    pub ctx: BlockContext,
}

/// Work from the node's own chain and mempool: templates are built and
/// blocks submitted on the chain task, whose tip they extend.
struct NodeWork<'a> {
    chain: &'a ChainHandle,
    mempool: &'a Arc<Mutex<Mempool>>,
    payout: PubKeyHash,
    interval: Duration,
    extra_nonce: u64,
    /// The mempool's change counter when the template was built.
    pool_changes: u64,
}

impl WorkSource for NodeWork<'_> {
    fn template(&mut self) -> anyhow::Result<Block> {
        self.extra_nonce = self.extra_nonce.wrapping_add(1);
        let (mempool, payout, extra_nonce) = (self.mempool.clone(), self.payout, self.extra_nonce);
        let (block, changes) = self.chain.call(move |chain| {
            let mut pool = mempool.lock().expect("mempool lock");
            pool.catch_up_step(chain);
            let template = node_template(chain, &mut pool, payout, extra_nonce)?;
            Ok::<_, anyhow::Error>((template.block, pool.changes()))
        })??;
        self.pool_changes = changes;
        Ok(block)
    }

    fn freshness(&mut self, work: &Block, since: Instant) -> anyhow::Result<Freshness> {
        if self.chain.reader().published().tip.0 != work.header.prev_hash {
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
        let outcome = self.chain.process_block(Arc::new(block))?;
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
    chain: &ChainHandle,
    mempool: &Arc<Mutex<Mempool>>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::Chain;
    use crate::consensus::hash::{sha256d, Txid};
    use crate::consensus::params::Network;
    use crate::consensus::transaction::{OutPoint, TxOut};
    use crate::consensus::validation::{check_block, SignatureChecks};
    use crate::mempool::DEFAULT_MAX_MEMPOOL_BYTES;
    use crate::mining::solve_block;
    use crate::testkit::{key, regtest_chain, signed_spend, TestChain};

    /// A chain of 14 blocks to key(1), whose first five coinbases are
    /// spendable at the next height.
    fn funded() -> (tempfile::TempDir, Chain, TestChain) {
        let dir = tempfile::tempdir().unwrap();
        let mut chain = regtest_chain(dir.path());
        let mut test = TestChain::new(Network::Regtest);
        for _ in 0..14 {
            let block = test.mine_empty(key(1).pubkey_hash()).clone();
            chain.process_block(Arc::new(block), None).unwrap();
        }
        (dir, chain, test)
    }

    /// Spends `coin` (key(1)'s) to key(2), leaving `fee`.
    fn spend(coin: (OutPoint, TxOut), fee: u64) -> Transaction {
        signed_spend(
            &[(coin.0, coin.1, &key(1))],
            vec![TxOut {
                amount: Amount::from_units(coin.1.amount.units() - fee),
                owner: key(2).pubkey_hash(),
            }],
        )
    }

    /// The template passes the chain's full validation, signatures and
    /// proof of work included, once solved, and connects.
    fn assert_mines(chain: &mut Chain, template: &NodeTemplate) {
        let mut block = template.block.clone();
        solve_block(&mut block);
        check_block(&block, chain.params()).unwrap();
        check_block_contextual(
            &block,
            &template.ctx,
            chain.params(),
            chain.store(),
            SignatureChecks::On,
        )
        .unwrap();
        let outcome = chain.process_block(Arc::new(block), None).unwrap();
        assert!(
            matches!(outcome, BlockOutcome::Accepted { .. }),
            "{outcome:?}"
        );
    }

    #[test]
    fn a_corrupted_pool_never_yields_an_invalid_template() {
        let (_dir, mut chain, test) = funded();
        let coins: Vec<(OutPoint, TxOut)> = test
            .spendable(key(1).pubkey_hash())
            .into_iter()
            .map(|(o, u)| (o, u.output))
            .collect();
        let mut pool = Mempool::new(&chain, DEFAULT_MAX_MEMPOOL_BYTES);
        let good = spend(coins[0], 10_000);
        let parent = spend(coins[1], 1_000);
        pool.accept(&chain, good.clone()).unwrap();
        pool.accept(&chain, parent.clone()).unwrap();
        // Entries the pool's own rules would never hold: a spend of an
        // output that does not exist, and a child of `parent` paying a high
        // fee but not linked to it, so it is chosen before its parent.
        let missing = (
            OutPoint::new(sha256d(b"nowhere"), 0),
            TxOut {
                amount: Amount::from_units(5_000_000),
                owner: key(1).pubkey_hash(),
            },
        );
        let bogus = pool.insert_unchecked(spend(missing, 1_000_000), Amount::from_units(1_000_000));
        let child = signed_spend(
            &[(OutPoint::new(parent.txid(), 0), parent.outputs[0], &key(2))],
            vec![TxOut {
                amount: Amount::from_units(parent.outputs[0].amount.units() - 500_000),
                owner: key(3).pubkey_hash(),
            }],
        );
        pool.insert_unchecked(child.clone(), Amount::from_units(500_000));
        let (txs, fees) = pool.select_for_block(&chain, Mempool::block_space());
        let unguarded = build_template(&chain, key(9).pubkey_hash(), 0, fees, txs).unwrap();
        assert!(
            check_template(&chain, &unguarded.block).is_err(),
            "the corrupted pool yields an invalid block"
        );

        let template = node_template(&chain, &mut pool, key(9).pubkey_hash(), 0).unwrap();
        let carried = template.block.txids()[1..].to_vec();
        assert!(!carried.contains(&bogus) && !pool.contains(&bogus));
        let at = |txid: Txid| carried.iter().position(|t| *t == txid).unwrap();
        assert!(at(parent.txid()) < at(child.txid()));
        assert!(carried.contains(&good.txid()));
        assert_eq!(template.fees.units(), 10_000 + 1_000 + 500_000);
        assert_mines(&mut chain, &template);
    }

    #[test]
    fn a_template_of_a_pool_behind_a_wrong_fee_is_rebuilt() {
        let (_dir, mut chain, test) = funded();
        let (outpoint, utxo) = test.spendable(key(1).pubkey_hash())[0];
        let mut pool = Mempool::new(&chain, DEFAULT_MAX_MEMPOOL_BYTES);
        // An entry claiming more fee than it pays would let the coinbase
        // claim too much.
        let tx = spend((outpoint, utxo.output), 10_000);
        pool.insert_unchecked(tx.clone(), Amount::from_units(5_000_000));
        let template = node_template(&chain, &mut pool, key(9).pubkey_hash(), 0).unwrap();
        assert_eq!(template.fees.units(), 10_000);
        assert_eq!(template.block.txids()[1..], [tx.txid()]);
        assert_mines(&mut chain, &template);
    }
}
