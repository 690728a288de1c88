//! One block of the active chain as the event stream tells it: its header
//! fields and what it did to each watched address, read from a view.

use std::collections::{BTreeMap, BTreeSet};

use crate::chain::{ChainError, ChainView};
use crate::consensus::address::PubKeyHash;
use crate::consensus::hash::{BlockHash, Txid};

use super::MAX_TXIDS_PER_EVENT;

/// What one block did to one watched address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressChange {
    /// Received minus spent, in base units.
    pub net: i64,
    /// Transactions of the block that pay or spend from the address.
    pub tx_count: usize,
    /// The first `MAX_TXIDS_PER_EVENT` of them, in block order.
    pub txids: Vec<Txid>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockStep {
    pub height: u32,
    pub hash: BlockHash,
    pub prev_hash: BlockHash,
    pub time: u32,
    pub tx_count: usize,
    /// Watched addresses the block touches, in address order.
    pub changes: BTreeMap<PubKeyHash, AddressChange>,
}

/// Reads the active block at `height` of `view` (its body, and its undo
/// data when addresses are watched: what its inputs spent).
pub fn read_step(
    view: &ChainView,
    height: u32,
    watched: &BTreeSet<PubKeyHash>,
) -> Result<BlockStep, ChainError> {
    let missing = |what: &str| ChainError::Inconsistent(format!("{what} at height {height}"));
    let hash = view
        .hash_at(height)?
        .ok_or_else(|| missing("no active block"))?;
    let block = view
        .store()
        .block(&hash)?
        .ok_or_else(|| missing("no block body"))?;
    let mut changes: BTreeMap<PubKeyHash, AddressChange> = BTreeMap::new();
    if !watched.is_empty() {
        let undo = if block.transactions.len() > 1 {
            view.store()
                .undo(&hash)?
                .ok_or_else(|| missing("no undo data"))?
        } else {
            Vec::new()
        };
        // Undo rows are the outputs the block spent, by outpoint.
        let spent: std::collections::HashMap<_, _> =
            undo.iter().map(|(o, utxo)| (*o, utxo.output)).collect();
        for (index, tx) in block.transactions.iter().enumerate() {
            let mut touched: BTreeMap<PubKeyHash, i128> = BTreeMap::new();
            if index > 0 {
                for input in &tx.inputs {
                    let out = *spent
                        .get(&input.prevout())
                        .ok_or_else(|| missing("an input missing from the undo data"))?;
                    if watched.contains(&out.owner) {
                        *touched.entry(out.owner).or_default() -= out.amount.units() as i128;
                    }
                }
            }
            for out in &tx.outputs {
                if watched.contains(&out.owner) {
                    *touched.entry(out.owner).or_default() += out.amount.units() as i128;
                }
            }
            if touched.is_empty() {
                continue;
            }
            let txid = tx.txid();
            for (owner, net) in touched {
                let change = changes.entry(owner).or_default();
                // A block moves at most the money supply per address.
                change.net =
                    (change.net as i128 + net).clamp(i64::MIN as i128, i64::MAX as i128) as i64;
                change.tx_count += 1;
                if change.txids.len() < MAX_TXIDS_PER_EVENT {
                    change.txids.push(txid);
                }
            }
        }
    }
    Ok(BlockStep {
        height,
        hash,
        prev_hash: block.header.prev_hash,
        time: block.header.time,
        tx_count: block.transactions.len(),
        changes,
    })
}
