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

/// The heights from `first` to `last` at which any of `watched` has
/// history (a transaction paying or spending from it), from the address
/// index: only those blocks are read whole. One seek per address and
/// height found.
pub fn touched_heights(
    view: &ChainView,
    watched: &BTreeSet<PubKeyHash>,
    first: u32,
    last: u32,
) -> Result<BTreeSet<u32>, ChainError> {
    let mut heights = BTreeSet::new();
    for owner in watched {
        heights.extend(view.store().address_heights(owner, first, last)?);
    }
    Ok(heights)
}

/// Reads the active block at `height` of `view`: its index entry alone
/// when `watched` is empty, its body and undo data (what its inputs spent)
/// otherwise. A caller passes the watched addresses only for blocks that
/// touch one (`touched_heights`): a subscriber of quiet addresses, or of
/// none, costs an index read per block, not a block decode.
pub fn read_step(
    view: &ChainView,
    height: u32,
    watched: &BTreeSet<PubKeyHash>,
) -> Result<BlockStep, ChainError> {
    let missing = |what: &str| ChainError::Inconsistent(format!("{what} at height {height}"));
    let hash = view
        .hash_at(height)?
        .ok_or_else(|| missing("no active block"))?;
    if watched.is_empty() {
        let entry = view
            .index_entry(&hash)?
            .ok_or_else(|| missing("no index entry"))?;
        return Ok(BlockStep {
            height,
            hash,
            prev_hash: entry.header.prev_hash,
            time: entry.header.time,
            tx_count: entry.tx_count as usize,
            changes: BTreeMap::new(),
        });
    }
    let block = view
        .store()
        .block(&hash)?
        .ok_or_else(|| missing("no block body"))?;
    let mut changes: BTreeMap<PubKeyHash, AddressChange> = BTreeMap::new();
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
    Ok(BlockStep {
        height,
        hash,
        prev_hash: block.header.prev_hash,
        time: block.header.time,
        tx_count: block.transactions.len(),
        changes,
    })
}
