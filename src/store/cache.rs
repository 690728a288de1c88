//! The write-back cache of chain state, in front of RocksDB (Bitcoin Core's
//! `-dbcache`).
//!
//! The chain writes the rows of every block it connects or disconnects (the
//! state column families: UTXOs, address rows, tx index, undo data, active
//! chain) here instead of into a RocksDB batch of their own. Entries are
//! raw keys and values per column family, `None` meaning "deleted", so a
//! flush is one plain `WriteBatch` that the chain completes with the block
//! index entries it changed and the tip record: the tip on disk always
//! matches the state on disk, whatever the number of blocks between two
//! flushes. Reads of the chain look here first, then in the store.
//!
//! The cache knows its size in bytes (keys, values and an estimate of the
//! memory each entry costs beside them), which the chain bounds.

use std::collections::{HashMap, HashSet};

use super::db::{Store, StoreError};
use super::schema::*;
use crate::consensus::address::PubKeyHash;
use crate::consensus::hash::{BlockHash, Txid};
use crate::consensus::transaction::OutPoint;
use crate::consensus::validation::Utxo;
use crate::encoding::DecodeError;

/// The column families the cache holds: everything connecting a block
/// changes except the block index (see `StateCache::mark_index_changed`).
pub const STATE_CFS: [&str; 7] = [
    CF_UTXO,
    CF_ADDRESS_UTXO,
    CF_ADDRESS_HISTORY,
    CF_ADDRESS_STATS,
    CF_TX_INDEX,
    CF_UNDO,
    CF_ACTIVE_CHAIN,
];

/// Memory an entry costs beyond its key and value bytes, for the byte
/// count that `--dbcache-mb` bounds. A hash table slot holds two boxed
/// slices (32 bytes) plus a control byte, and the table is between 7/16 and
/// 7/8 full (it doubles when full): up to 75 bytes per entry. The key and
/// the value are two heap allocations, each with an 8-byte header rounded
/// up to 16 bytes: about 16 more each. Measured with `cargo bench --bench
/// chain` (the "cache accounting" line): the resident memory the cache
/// adds stays below the count.
pub const ENTRY_OVERHEAD_BYTES: usize = 112;

/// Memory a changed block index entry costs in the cache: its hash in a
/// hash set (32 bytes, a control byte, up to twice over).
const INDEX_ENTRY_BYTES: usize = 72;

/// Typed writes of chain state, into a RocksDB batch (`StoreBatch`) or into
/// the cache (`StateCache`): the same rows either way.
pub trait StateWrites {
    fn put(&mut self, cf: &'static str, key: &[u8], value: &[u8]);
    fn delete(&mut self, cf: &'static str, key: &[u8]);

    fn put_active(&mut self, height: u32, hash: &BlockHash) {
        self.put(CF_ACTIVE_CHAIN, &height_key(height), &hash.0);
    }

    fn delete_active(&mut self, height: u32) {
        self.delete(CF_ACTIVE_CHAIN, &height_key(height));
    }

    fn put_undo(&mut self, hash: &BlockHash, spent: &[(OutPoint, Utxo)]) {
        self.put(CF_UNDO, &hash.0, &encode_undo(spent));
    }

    fn delete_undo(&mut self, hash: &BlockHash) {
        self.delete(CF_UNDO, &hash.0);
    }

    /// Adds a UTXO and its address row.
    fn put_utxo(&mut self, outpoint: &OutPoint, utxo: &Utxo) {
        self.put(CF_UTXO, &outpoint_key(outpoint), &encode_utxo(utxo));
        self.put(
            CF_ADDRESS_UTXO,
            &address_utxo_key(&utxo.output.owner, outpoint),
            &encode_address_utxo(utxo.output.amount, utxo.height),
        );
    }

    /// Removes a UTXO and its address row.
    fn delete_utxo(&mut self, outpoint: &OutPoint, utxo: &Utxo) {
        self.delete(CF_UTXO, &outpoint_key(outpoint));
        self.delete(
            CF_ADDRESS_UTXO,
            &address_utxo_key(&utxo.output.owner, outpoint),
        );
    }

    /// Stores an address's stats; stats of nothing are no row at all.
    fn put_address_stats(&mut self, owner: &PubKeyHash, stats: &AddressStats) {
        if stats.is_empty() {
            self.delete(CF_ADDRESS_STATS, &owner.0);
        } else {
            self.put(CF_ADDRESS_STATS, &owner.0, &stats.encode());
        }
    }

    fn put_history(&mut self, owner: &PubKeyHash, height: u32, position: u32, txid: &Txid) {
        self.put(
            CF_ADDRESS_HISTORY,
            &address_history_key(owner, height, position),
            &encode_txid_value(txid),
        );
    }

    fn delete_history(&mut self, owner: &PubKeyHash, height: u32, position: u32) {
        self.delete(
            CF_ADDRESS_HISTORY,
            &address_history_key(owner, height, position),
        );
    }

    fn put_tx_location(&mut self, txid: &Txid, location: &TxLocation) {
        self.put(CF_TX_INDEX, &txid.0, &location.encode());
    }

    fn delete_tx_location(&mut self, txid: &Txid) {
        self.delete(CF_TX_INDEX, &txid.0);
    }
}

/// One column family's changed rows: the new value, or `None` if deleted.
type Family = HashMap<Box<[u8]>, Option<Box<[u8]>>>;

/// Rows written since the last flush, newest value per key.
#[derive(Default)]
pub struct StateCache {
    /// One map per entry of `STATE_CFS`.
    families: [Family; STATE_CFS.len()],
    /// Block index entries changed by connecting blocks; the chain writes
    /// their current value at the flush (the in-memory index is newer than
    /// any value the cache could hold, and other writers of the index write
    /// directly).
    index_changed: HashSet<BlockHash>,
    bytes: usize,
}

fn family_of(cf: &str) -> usize {
    STATE_CFS
        .iter()
        .position(|name| *name == cf)
        .unwrap_or_else(|| panic!("column family {cf} is not chain state"))
}

fn corrupt(what: &'static str) -> impl FnOnce(DecodeError) -> StoreError {
    move |error| StoreError::Corrupt { what, error }
}

impl StateCache {
    /// The cached value of a row: `Some(None)` if the cache holds its
    /// deletion, `None` if the cache does not know the row.
    pub fn get(&self, cf: &str, key: &[u8]) -> Option<Option<&[u8]>> {
        self.families[family_of(cf)]
            .get(key)
            .map(|value| value.as_deref())
    }

    /// Memory the cache holds, by its estimate (see `ENTRY_OVERHEAD_BYTES`).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Rows held (puts and deletions).
    pub fn len(&self) -> usize {
        self.families.iter().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0 && self.index_changed.is_empty()
    }

    /// Notes that the block index entry of `hash` changed with the state
    /// (a connected block became valid), to be written at the flush.
    pub fn mark_index_changed(&mut self, hash: BlockHash) {
        if self.index_changed.insert(hash) {
            self.bytes += INDEX_ENTRY_BYTES;
        }
    }

    /// Block index entries to write with the next flush.
    pub fn index_changed(&self) -> impl Iterator<Item = &BlockHash> {
        self.index_changed.iter()
    }

    /// Adds every row to `batch` (the cache keeps them until `clear`, so a
    /// failed write loses nothing).
    pub fn write_to(&self, batch: &mut impl StateWrites) {
        for (cf, family) in STATE_CFS.iter().zip(&self.families) {
            for (key, value) in family {
                match value {
                    Some(value) => batch.put(cf, key, value),
                    None => batch.delete(cf, key),
                }
            }
        }
    }

    /// Forgets everything: after a flush, or to simulate a crash in tests.
    pub fn clear(&mut self) {
        // New maps rather than `clear`: a cache of hundreds of MiB gives
        // its memory back.
        *self = StateCache::default();
    }

    fn set(&mut self, cf: &str, key: &[u8], value: Option<&[u8]>) {
        let family = &mut self.families[family_of(cf)];
        let new_len = value.map_or(0, <[u8]>::len);
        match family.get_mut(key) {
            Some(slot) => {
                let old_len = slot.as_ref().map_or(0, |v| v.len());
                *slot = value.map(Box::from);
                self.bytes = self.bytes - old_len + new_len;
            }
            None => {
                family.insert(Box::from(key), value.map(Box::from));
                self.bytes += key.len() + new_len + ENTRY_OVERHEAD_BYTES;
            }
        }
    }

    /// A stored value as the chain sees it: the cache's if it has the row,
    /// the store's otherwise.
    fn read(
        &self,
        store: &Store,
        cf: &'static str,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, StoreError> {
        match self.get(cf, key) {
            Some(value) => Ok(value.map(<[u8]>::to_vec)),
            None => store.get_raw(cf, key),
        }
    }

    /// Many UTXOs: those the cache knows from it, the rest in one multi-get.
    pub fn utxos(
        &self,
        store: &Store,
        outpoints: &[OutPoint],
    ) -> Result<Vec<Option<Utxo>>, StoreError> {
        let mut found = Vec::with_capacity(outpoints.len());
        let mut missing = Vec::new();
        for (i, outpoint) in outpoints.iter().enumerate() {
            match self.get(CF_UTXO, &outpoint_key(outpoint)) {
                Some(value) => found.push(
                    value
                        .map(|v| decode_utxo(v).map_err(corrupt("utxo")))
                        .transpose()?,
                ),
                None => {
                    found.push(None);
                    missing.push((i, *outpoint));
                }
            }
        }
        if !missing.is_empty() {
            let keys: Vec<OutPoint> = missing.iter().map(|(_, o)| *o).collect();
            for ((i, _), utxo) in missing.iter().zip(store.utxos(&keys)?) {
                found[*i] = utxo;
            }
        }
        Ok(found)
    }

    pub fn utxo(&self, store: &Store, outpoint: &OutPoint) -> Result<Option<Utxo>, StoreError> {
        self.read(store, CF_UTXO, &outpoint_key(outpoint))?
            .map(|v| decode_utxo(&v).map_err(corrupt("utxo")))
            .transpose()
    }

    pub fn address_stats(
        &self,
        store: &Store,
        owner: &PubKeyHash,
    ) -> Result<AddressStats, StoreError> {
        Ok(self
            .read(store, CF_ADDRESS_STATS, &owner.0)?
            .map(|v| AddressStats::decode(&v).map_err(corrupt("address stats")))
            .transpose()?
            .unwrap_or_default())
    }

    pub fn undo(
        &self,
        store: &Store,
        hash: &BlockHash,
    ) -> Result<Option<Vec<(OutPoint, Utxo)>>, StoreError> {
        self.read(store, CF_UNDO, &hash.0)?
            .map(|v| decode_undo(&v).map_err(corrupt("undo data")))
            .transpose()
    }

    pub fn tx_location(
        &self,
        store: &Store,
        txid: &Txid,
    ) -> Result<Option<TxLocation>, StoreError> {
        self.read(store, CF_TX_INDEX, &txid.0)?
            .map(|v| TxLocation::decode(&v).map_err(corrupt("tx location")))
            .transpose()
    }
}

impl StateWrites for StateCache {
    fn put(&mut self, cf: &'static str, key: &[u8], value: &[u8]) {
        self.set(cf, key, Some(value));
    }

    fn delete(&mut self, cf: &'static str, key: &[u8]) {
        self.set(cf, key, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::amount::Amount;
    use crate::consensus::hash::Hash256;
    use crate::consensus::transaction::TxOut;

    fn utxo(amount: u64) -> Utxo {
        Utxo {
            output: TxOut {
                amount: Amount::from_units(amount),
                owner: PubKeyHash([9; 20]),
            },
            height: 3,
            is_coinbase: false,
        }
    }

    #[test]
    fn newest_value_wins_and_bytes_follow_it() {
        let mut cache = StateCache::default();
        assert!(cache.is_empty());
        let outpoint = OutPoint::new(Hash256([1; 32]), 0);
        cache.put_utxo(&outpoint, &utxo(5));
        // Two rows: the UTXO and its address row.
        assert_eq!(cache.len(), 2);
        let two_rows = 36 + 34 + 56 + 13 + 2 * ENTRY_OVERHEAD_BYTES;
        assert_eq!(cache.bytes(), two_rows);
        let key = outpoint_key(&outpoint);
        assert_eq!(
            cache.get(CF_UTXO, &key),
            Some(Some(&encode_utxo(&utxo(5))[..]))
        );
        cache.delete_utxo(&outpoint, &utxo(5));
        assert_eq!(cache.get(CF_UTXO, &key), Some(None));
        assert_eq!(cache.bytes(), two_rows - 34 - 13);
        cache.put_utxo(&outpoint, &utxo(6));
        assert_eq!(cache.bytes(), two_rows);
        cache.mark_index_changed(Hash256([2; 32]));
        cache.mark_index_changed(Hash256([2; 32]));
        assert_eq!(cache.bytes(), two_rows + INDEX_ENTRY_BYTES);
        cache.clear();
        assert!(cache.is_empty());
        assert_eq!(cache.bytes(), 0);
    }

    #[test]
    #[should_panic(expected = "not chain state")]
    fn only_state_families_are_cached() {
        StateCache::default().put(CF_BLOCK_INDEX, b"k", b"v");
    }
}
