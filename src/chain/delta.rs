//! What connecting a block changes, computed once from the block and the
//! outputs it spends (its undo data). Connecting applies the delta;
//! disconnecting reverts exactly the same delta, so the two cannot drift.

use crate::collections::{FastHashMap, FastHashSet};
use crate::consensus::address::PubKeyHash;
use crate::consensus::block::Block;
use crate::consensus::hash::Txid;
use crate::consensus::transaction::OutPoint;
use crate::consensus::validation::Utxo;
use crate::store::schema::{AddressStats, Spender};

/// Per-address change made by one block.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatsDelta {
    pub funded_txo_count: u64,
    /// u128, as `AddressStats`: recycled coins can pay one address more than
    /// 2^64 units within a block.
    pub funded_txo_sum: u128,
    pub spent_txo_count: u64,
    pub spent_txo_sum: u128,
    pub tx_count: u64,
}

/// The stored stats would leave their valid range: the store is corrupt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("address stats out of range for {owner:?}")]
pub struct StatsOutOfRange {
    pub owner: PubKeyHash,
}

impl StatsDelta {
    pub fn apply(
        &self,
        stats: &mut AddressStats,
        owner: PubKeyHash,
    ) -> Result<(), StatsOutOfRange> {
        let err = StatsOutOfRange { owner };
        stats.funded_txo_count = stats
            .funded_txo_count
            .checked_add(self.funded_txo_count)
            .ok_or(err)?;
        stats.funded_txo_sum = stats
            .funded_txo_sum
            .checked_add(self.funded_txo_sum)
            .ok_or(err)?;
        stats.spent_txo_count = stats
            .spent_txo_count
            .checked_add(self.spent_txo_count)
            .ok_or(err)?;
        stats.spent_txo_sum = stats
            .spent_txo_sum
            .checked_add(self.spent_txo_sum)
            .ok_or(err)?;
        stats.tx_count = stats.tx_count.checked_add(self.tx_count).ok_or(err)?;
        Ok(())
    }

    pub fn revert(
        &self,
        stats: &mut AddressStats,
        owner: PubKeyHash,
    ) -> Result<(), StatsOutOfRange> {
        let err = StatsOutOfRange { owner };
        stats.funded_txo_count = stats
            .funded_txo_count
            .checked_sub(self.funded_txo_count)
            .ok_or(err)?;
        stats.funded_txo_sum = stats
            .funded_txo_sum
            .checked_sub(self.funded_txo_sum)
            .ok_or(err)?;
        stats.spent_txo_count = stats
            .spent_txo_count
            .checked_sub(self.spent_txo_count)
            .ok_or(err)?;
        stats.spent_txo_sum = stats
            .spent_txo_sum
            .checked_sub(self.spent_txo_sum)
            .ok_or(err)?;
        stats.tx_count = stats.tx_count.checked_sub(self.tx_count).ok_or(err)?;
        if stats.spent_txo_sum > stats.funded_txo_sum
            || stats.spent_txo_count > stats.funded_txo_count
        {
            return Err(err);
        }
        Ok(())
    }
}

/// One address history row: the address took part in the transaction at
/// `position` of the block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryRow {
    pub owner: PubKeyHash,
    pub position: u32,
    pub txid: Txid,
}

/// Everything a block changes in the UTXO set and the address index.
#[derive(Clone, Debug, Default)]
pub struct BlockDelta {
    /// Outputs the block creates and does not itself spend.
    pub created: Vec<(OutPoint, Utxo)>,
    /// Outputs of earlier blocks that the block spends.
    pub spent: Vec<(OutPoint, Utxo)>,
    pub stats: FastHashMap<PubKeyHash, StatsDelta>,
    pub history: Vec<HistoryRow>,
    pub txids: Vec<Txid>,
    /// Every input of the block and the output it spends (including
    /// outputs of the block itself): the spent-by index rows.
    pub spenders: Vec<(OutPoint, Spender)>,
}

impl BlockDelta {
    /// Computes the delta of `block` at `height`, given its txids (in block
    /// order: validation computed them already, and hashing every
    /// transaction again cost the catch-up a few percent of its CPU) and
    /// the outputs it spends in block order (from validation when
    /// connecting, from undo data when disconnecting).
    pub fn compute(
        block: &Block,
        txids: Vec<Txid>,
        height: u32,
        spent_in_order: &[(OutPoint, Utxo)],
    ) -> BlockDelta {
        assert_eq!(
            txids.len(),
            block.transactions.len(),
            "one txid per transaction"
        );
        let own_txids: FastHashSet<Txid> = txids.iter().copied().collect();
        let mut delta = BlockDelta::default();
        let mut spent_iter = spent_in_order.iter();
        let mut spent_here = FastHashSet::default();
        for (position, tx) in block.transactions.iter().enumerate() {
            let mut touched: Vec<PubKeyHash> = Vec::new();
            if position > 0 {
                for vin in 0..tx.inputs.len() {
                    let (outpoint, utxo) = *spent_iter
                        .next()
                        .expect("undo data holds one entry per spending input");
                    delta.spenders.push((
                        outpoint,
                        Spender {
                            txid: txids[position],
                            vin: vin as u32,
                        },
                    ));
                    let s = delta.stats.entry(utxo.output.owner).or_default();
                    s.spent_txo_count += 1;
                    s.spent_txo_sum += u128::from(utxo.output.amount.units());
                    touched.push(utxo.output.owner);
                    if own_txids.contains(&outpoint.txid) {
                        spent_here.insert(outpoint);
                    } else {
                        delta.spent.push((outpoint, utxo));
                    }
                }
            }
            for (vout, output) in tx.outputs.iter().enumerate() {
                let s = delta.stats.entry(output.owner).or_default();
                s.funded_txo_count += 1;
                s.funded_txo_sum += u128::from(output.amount.units());
                touched.push(output.owner);
                delta.created.push((
                    OutPoint::new(txids[position], vout as u32),
                    Utxo {
                        output: *output,
                        height,
                        is_coinbase: position == 0,
                    },
                ));
            }
            touched.sort_unstable();
            touched.dedup();
            for owner in touched {
                delta.stats.entry(owner).or_default().tx_count += 1;
                delta.history.push(HistoryRow {
                    owner,
                    position: position as u32,
                    txid: txids[position],
                });
            }
        }
        delta.created.retain(|(o, _)| !spent_here.contains(o));
        delta.txids = txids;
        delta
    }

    /// Moves the UTXO-set digest across this block: forward when
    /// connecting (add what it creates, remove what it spends), backward
    /// when disconnecting.
    pub fn update_digest(&self, digest: &mut crate::store::digest::UtxoDigest, connect: bool) {
        let created: Vec<_> = self.created.iter().map(|(o, u)| (o, u)).collect();
        let spent: Vec<_> = self.spent.iter().map(|(o, u)| (o, u)).collect();
        if connect {
            digest.apply(created, spent);
        } else {
            digest.apply(spent, created);
        }
    }

    /// Checks undo data read back from the store against the block it
    /// undoes before anything is built from it: one row per input of the
    /// block's non-coinbase transactions, in order, each for the outpoint
    /// that input spends, amounts within `MAX_MONEY` in all. A corrupt or
    /// truncated value is an error here, not a panic or wrong UTXOs later.
    pub fn check_undo(block: &Block, undo: &[(OutPoint, Utxo)]) -> Result<(), String> {
        let spends = block
            .transactions
            .iter()
            .skip(1)
            .flat_map(|tx| tx.inputs.iter());
        let inputs = spends.clone().count();
        if undo.len() != inputs {
            return Err(format!("{} rows for {inputs} spending inputs", undo.len()));
        }
        let mut total = 0u64;
        for (i, (input, (outpoint, utxo))) in spends.zip(undo).enumerate() {
            if input.prevout() != *outpoint {
                return Err(format!(
                    "row {i} is for {outpoint:?}, not the outpoint its input spends"
                ));
            }
            total = total
                .checked_add(utxo.output.amount.units())
                .filter(|t| *t <= crate::consensus::amount::MAX_MONEY)
                .ok_or_else(|| format!("row {i}: the amounts pass the money supply"))?;
        }
        Ok(())
    }

    pub fn created_sum(&self) -> u64 {
        self.created
            .iter()
            .map(|(_, u)| u.output.amount.units())
            .sum()
    }

    pub fn spent_sum(&self) -> u64 {
        self.spent
            .iter()
            .map(|(_, u)| u.output.amount.units())
            .sum()
    }
}
