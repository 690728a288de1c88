//! Offline verification of a data dir (`chaincore check`): replays the active
//! chain from the stored blocks, rebuilding the UTXO set, the address index
//! and the digest in memory, and compares them with what is stored.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use crate::consensus::address::PubKeyHash;
use crate::consensus::amount::Amount;
use crate::consensus::hash::BlockHash;
use crate::consensus::params::Network;
use crate::consensus::transaction::OutPoint;
use crate::consensus::validation::Utxo;
use crate::encoding::Decode;
use crate::store::digest::UtxoDigest;
use crate::store::schema::{script_hash, AddressStats, BlockIndexEntry, Spender, TxLocation};
use crate::store::{Store, StoreError, StoreOptions};

use super::delta::BlockDelta;
use super::ChainError;

/// Most differences listed one by one; the rest are only counted.
const MAX_LISTED_DIFFERENCES: usize = 25;

/// What `check` found.
#[derive(Debug, Default, serde::Serialize)]
pub struct CheckReport {
    pub height: u32,
    pub tip: String,
    pub utxo_count: u64,
    pub utxo_total: u64,
    pub addresses: usize,
    pub utxo_digest: String,
    /// Differences between the stored and the recomputed state.
    pub differences: Vec<String>,
    pub difference_count: usize,
}

impl CheckReport {
    fn differ(&mut self, message: String) {
        self.difference_count += 1;
        if self.differences.len() < MAX_LISTED_DIFFERENCES {
            self.differences.push(message);
        }
    }

    pub fn is_consistent(&self) -> bool {
        self.difference_count == 0
    }
}

/// Recomputes the state of the data dir at `path` and compares.
pub fn check_data_dir(path: &Path, network: Network) -> Result<CheckReport, ChainError> {
    let store = Store::open(path, network, &StoreOptions::default())?;
    check_store(&store)
}

pub fn check_store(store: &Store) -> Result<CheckReport, ChainError> {
    let tip = store
        .tip()?
        .ok_or_else(|| ChainError::Inconsistent("the store has no tip".into()))?;
    let mut report = CheckReport {
        height: tip.height,
        tip: tip.hash.to_string(),
        ..CheckReport::default()
    };
    let mut utxos: HashMap<OutPoint, Utxo> = HashMap::new();
    let mut stats: HashMap<PubKeyHash, AddressStats> = HashMap::new();
    let mut previous = None;
    let mut spender_rows = 0usize;
    for height in 0..=tip.height {
        let hash = store.hash_at_height(height)?.ok_or_else(|| {
            ChainError::Inconsistent(format!("no active block at height {height}"))
        })?;
        // Decoded here rather than by `Store::block`, which refuses a body
        // under another hash: that is a difference to report.
        let bytes = store
            .block_bytes(&hash)?
            .ok_or_else(|| ChainError::Inconsistent(format!("block {hash} has no data")))?;
        let block = crate::consensus::block::Block::from_bytes(&bytes).map_err(|error| {
            StoreError::Corrupt {
                what: "block",
                error,
            }
        })?;
        if block.hash() != hash {
            report.differ(format!(
                "height {height}: stored block hashes to {}, not {hash}",
                block.hash()
            ));
        }
        if let Some(prev) = previous {
            if block.header.prev_hash != prev {
                report.differ(format!(
                    "height {height}: block does not link to its predecessor"
                ));
            }
        }
        previous = Some(hash);
        let mut spent = Vec::new();
        let mut created_here: HashMap<OutPoint, Utxo> = HashMap::new();
        for (position, tx) in block.transactions.iter().enumerate() {
            let txid = tx.txid();
            if position > 0 {
                for (vin, input) in tx.inputs.iter().enumerate() {
                    let outpoint = input.prevout();
                    spender_rows += 1;
                    let expected = Spender {
                        txid,
                        vin: vin as u32,
                    };
                    match store.spender(&outpoint)? {
                        Some(found) if found == expected => {}
                        other => report.differ(format!(
                            "spent-by row of {outpoint}: stored {other:?}, replay {expected:?}"
                        )),
                    }
                    match created_here
                        .remove(&outpoint)
                        .or_else(|| utxos.remove(&outpoint))
                    {
                        Some(utxo) => spent.push((outpoint, utxo)),
                        None => {
                            return Err(ChainError::Inconsistent(format!(
                                "height {height}: input {outpoint} spends nothing in the replay"
                            )))
                        }
                    }
                }
            }
            for (vout, output) in tx.outputs.iter().enumerate() {
                created_here.insert(
                    OutPoint::new(txid, vout as u32),
                    Utxo {
                        output: *output,
                        height,
                        is_coinbase: position == 0,
                    },
                );
            }
            match store.tx_location(&txid)? {
                Some(loc)
                    if loc
                        == (TxLocation {
                            block: hash,
                            height,
                            position: position as u32,
                        }) => {}
                other => report.differ(format!("tx index of {txid}: stored {other:?}")),
            }
        }
        utxos.extend(created_here);
        match store.undo(&hash)? {
            Some(undo) if undo == spent => {}
            _ => report.differ(format!(
                "height {height}: undo data differs from the replay"
            )),
        }
        let delta = BlockDelta::compute(&block, block.txids(), height, &spent);
        for (owner, change) in &delta.stats {
            change
                .apply(stats.entry(*owner).or_default(), *owner)
                .map_err(|e| ChainError::Inconsistent(e.to_string()))?;
        }
    }
    if store.hash_at_height(tip.height + 1)?.is_some() {
        report.differ(format!(
            "active chain has an entry above the tip height {}",
            tip.height
        ));
    }

    // The UTXO set.
    let mut stored_count = 0u64;
    store.for_each_utxo(|outpoint, utxo| {
        stored_count += 1;
        match utxos.get(&outpoint) {
            Some(expected) if *expected == utxo => {}
            Some(expected) => report.differ(format!(
                "utxo {outpoint}: stored {utxo:?}, replay {expected:?}"
            )),
            None => report.differ(format!(
                "utxo {outpoint}: stored but spent or unknown in the replay"
            )),
        }
    })?;
    if stored_count != utxos.len() as u64 {
        report.differ(format!(
            "{} UTXOs stored, {} in the replay",
            stored_count,
            utxos.len()
        ));
    }
    let total = Amount::checked_sum(utxos.values().map(|u| u.output.amount))
        .map_or(u64::MAX, Amount::units);
    if tip.utxo_count != utxos.len() as u64 || tip.utxo_total != total {
        report.differ(format!(
            "tip record says {} UTXOs of {} units, replay has {} of {}",
            tip.utxo_count,
            tip.utxo_total,
            utxos.len(),
            total
        ));
    }
    let mut digest = UtxoDigest::default();
    digest.apply(utxos.iter().collect::<Vec<_>>(), Vec::new());
    if digest.fingerprint() != tip.digest {
        report.differ(
            "the tip record's UTXO digest differs from the digest of the replayed set".into(),
        );
    }
    match store.utxo_digest_state()? {
        Some(stored) if stored == digest => {}
        Some(_) => report.differ("stored UTXO digest state differs from the replayed set's".into()),
        None => report.differ("the store has no UTXO digest state".into()),
    }

    // The address index.
    let mut stored_stats: BTreeMap<PubKeyHash, AddressStats> = BTreeMap::new();
    store.for_each_address_stats(|owner, s| {
        stored_stats.insert(owner, s);
    })?;
    stats.retain(|_, s| !s.is_empty());
    for (owner, expected) in &stats {
        match stored_stats.get(owner) {
            Some(s) if s == expected => {}
            other => report.differ(format!(
                "address stats of {owner:?}: stored {other:?}, replay {expected:?}"
            )),
        }
    }
    for owner in stored_stats.keys().filter(|o| !stats.contains_key(o)) {
        report.differ(format!(
            "address stats of {owner:?} stored but not in the replay"
        ));
    }
    let mut stored_spenders = 0usize;
    store.for_each_spender(|_, _| stored_spenders += 1)?;
    if stored_spenders != spender_rows {
        report.differ(format!(
            "{stored_spenders} spent-by rows, {spender_rows} inputs in the replay"
        ));
    }
    let mut script_hashes = 0usize;
    store.for_each_script_hash(|hash, owner| {
        script_hashes += 1;
        if hash != script_hash(&owner) || !stats.contains_key(&owner) {
            report.differ(format!(
                "script hash row {} of {owner:?} does not match the replay",
                hex::encode(&hash)
            ));
        }
    })?;
    if script_hashes != stats.len() {
        report.differ(format!(
            "{script_hashes} script hash rows, {} addresses in the replay",
            stats.len()
        ));
    }
    let mut address_rows = 0usize;
    store.for_each_address_utxo(|owner, outpoint, amount, height| {
        address_rows += 1;
        match utxos.get(&outpoint) {
            Some(u)
                if u.output.owner == owner && u.output.amount == amount && u.height == height => {}
            _ => report.differ(format!(
                "address utxo row {outpoint} of {owner:?} does not match the replay"
            )),
        }
    })?;
    if address_rows != utxos.len() {
        report.differ(format!(
            "{address_rows} address UTXO rows, {} UTXOs in the replay",
            utxos.len()
        ));
    }

    // The block index, as the node checks it at start (`Chain::load`):
    // each entry against its key and its parent, and the tip record's
    // block at its height.
    let genesis = store
        .hash_at_height(0)?
        .ok_or_else(|| ChainError::Inconsistent("no active block at height 0".into()))?;
    let mut entries = store.all_block_index()?;
    entries.sort_by_key(|(_, e)| e.height);
    let mut index: HashMap<BlockHash, BlockIndexEntry> = HashMap::with_capacity(entries.len());
    for (hash, entry) in entries {
        let parent = index.get(&entry.header.prev_hash);
        if let Err(what) = super::index_entry_fits(&hash, &entry, parent, &genesis) {
            report.differ(format!("block index entry {hash}: {what}"));
        }
        index.insert(hash, entry);
    }
    if index.get(&tip.hash).map(|e| e.height) != Some(tip.height) {
        report.differ(format!(
            "the tip record's block {} is not indexed at its height {}",
            tip.hash, tip.height
        ));
    }

    report.utxo_count = utxos.len() as u64;
    report.utxo_total = total;
    report.addresses = stats.len();
    report.utxo_digest = digest.fingerprint().to_string();
    Ok(report)
}
