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
//! A row created since the last flush that the store does not hold (a new
//! UTXO, a block's history, tx index, undo and height rows) is *fresh*:
//! deleting it (the UTXO spent a few blocks later, the block disconnected)
//! drops it from the cache instead of leaving a deletion to write, as the
//! FRESH flag of Bitcoin Core's coins cache.
//!
//! The cache knows its size in bytes (keys, values, an estimate of the
//! memory each entry costs beside them, and the copy a flush makes in its
//! write batch), which the chain bounds.
//!
//! During a catch-up the chain writes the cache in the background: it
//! freezes the rows into a layer of their own (`freeze`), which a writer
//! thread puts in one batch while new blocks go to an empty cache in front
//! of it. Reads look in the front, then in the frozen layer, then in the
//! store; a row the frozen layer holds is not fresh for the front (its
//! deletion must be written). Once the frozen layer is on disk the chain
//! lets it go (`drop_behind`); if its write failed, it stays, and the next
//! flush writes both layers in one batch, the older first.

use crate::collections::{FastHashMap, FastHashSet};
use std::borrow::Cow;
use std::sync::Arc;

use super::db::{Store, StoreError};
use super::schema::*;
use crate::consensus::address::PubKeyHash;
use crate::consensus::hash::{BlockHash, Txid};
use crate::consensus::transaction::OutPoint;
use crate::consensus::validation::Utxo;
use crate::encoding::DecodeError;

/// The column families the cache holds: everything connecting a block
/// changes except the block index (see `StateCache::mark_index_changed`).
pub const STATE_CFS: [&str; 9] = [
    CF_UTXO,
    CF_ADDRESS_UTXO,
    CF_ADDRESS_HISTORY,
    CF_ADDRESS_STATS,
    CF_TX_INDEX,
    CF_SPENT_BY,
    CF_SCRIPT_HASH,
    CF_UNDO,
    CF_ACTIVE_CHAIN,
];

/// Memory an entry costs in the cache beyond its key and value bytes, for
/// the byte count that `--dbcache-mb` bounds. A hash table slot holds a
/// boxed key and a `Row` (40 bytes) plus a control byte, and the table is
/// between 7/16 and 7/8 full (it doubles when full): up to 94 bytes per
/// entry. The key and the value are two heap allocations, each with an
/// 8-byte header rounded up to 16 bytes: about 16 more each. Measured with
/// `cargo bench --profile dev --bench chain` (the "cache accounting"
/// line): the resident memory the cache adds stays below the count.
pub const ENTRY_OVERHEAD_BYTES: usize = 120;

/// Bytes a row costs in a RocksDB write batch beside its key and value:
/// a type tag, the column family id and two length varints.
pub const BATCH_RECORD_BYTES: usize = 8;

/// Memory a row costs while a flush sorts its column family's rows: a
/// reference to its key and to its row.
const SORT_BYTES: usize = 24;

/// Memory a changed block index entry costs in the cache: its hash in a
/// hash set (32 bytes and a control byte, up to twice over).
const INDEX_ENTRY_BYTES: usize = 72;

/// Its row in the flush's batch: hash, encoded entry (126 bytes), record.
const INDEX_BATCH_BYTES: usize = 32 + 126 + BATCH_RECORD_BYTES;

/// Typed writes of chain state, into a RocksDB batch (`StoreBatch`) or into
/// the cache (`StateCache`): the same rows either way.
pub trait StateWrites {
    fn put(&mut self, cf: &'static str, key: &[u8], value: &[u8]);
    fn delete(&mut self, cf: &'static str, key: &[u8]);

    /// Writes a row that the state these writes apply to (the chain at its
    /// tip) does not hold: a cache may then drop the row again if it is
    /// deleted before a flush. The typed writes below that create rows use
    /// it; it is true of each of them under the chain's rules: a block's
    /// height, undo, history and tx index rows exist only while it is
    /// connected, and a created UTXO's txid is unique on a chain (every
    /// coinbase carries its height, every other transaction spends an
    /// output, which only one transaction of a chain can).
    fn put_new(&mut self, cf: &'static str, key: &[u8], value: &[u8]) {
        self.put(cf, key, value);
    }

    fn put_active(&mut self, height: u32, hash: &BlockHash) {
        self.put_new(CF_ACTIVE_CHAIN, &height_key(height), &hash.0);
    }

    fn delete_active(&mut self, height: u32) {
        self.delete(CF_ACTIVE_CHAIN, &height_key(height));
    }

    fn put_undo(&mut self, hash: &BlockHash, spent: &[(OutPoint, Utxo)]) {
        self.put_new(CF_UNDO, &hash.0, &encode_undo(spent));
    }

    fn delete_undo(&mut self, hash: &BlockHash) {
        self.delete(CF_UNDO, &hash.0);
    }

    /// Adds a UTXO and its address row.
    fn put_utxo(&mut self, outpoint: &OutPoint, utxo: &Utxo) {
        self.put_new(CF_UTXO, &outpoint_key(outpoint), &encode_utxo(utxo));
        self.put_new(
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
        self.put_new(
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
        self.put_new(CF_TX_INDEX, &txid.0, &location.encode());
    }

    fn delete_tx_location(&mut self, txid: &Txid) {
        self.delete(CF_TX_INDEX, &txid.0);
    }

    /// Records who spent an output (a row that exists while the spending
    /// block is connected).
    fn put_spender(&mut self, outpoint: &OutPoint, spender: &Spender) {
        self.put_new(CF_SPENT_BY, &outpoint_key(outpoint), &spender.encode());
    }

    fn delete_spender(&mut self, outpoint: &OutPoint) {
        self.delete(CF_SPENT_BY, &outpoint_key(outpoint));
    }

    /// Maps an owner's script hash to it: written when its stats become
    /// non-empty (its first output), deleted when they become empty again.
    fn put_script_hash(&mut self, owner: &PubKeyHash) {
        self.put_new(
            CF_SCRIPT_HASH,
            &script_hash(owner),
            &encode_owner_value(owner),
        );
    }

    fn delete_script_hash(&mut self, owner: &PubKeyHash) {
        self.delete(CF_SCRIPT_HASH, &script_hash(owner));
    }
}

/// A changed row.
struct Row {
    /// The new value, or `None` if deleted.
    value: Option<Box<[u8]>>,
    /// The store does not hold the row: deleting it drops it from the cache.
    fresh: bool,
}

/// One column family's changed rows (seeded foldhash: see `collections`;
/// SipHash was the chain task's largest cost in a catch-up here).
type Family = FastHashMap<Box<[u8]>, Row>;

/// Rows written since the last flush, newest value per key.
#[derive(Default)]
pub struct StateCache {
    /// One map per entry of `STATE_CFS`.
    families: [Family; STATE_CFS.len()],
    /// Block index entries changed by connecting blocks; the chain writes
    /// their current value at the flush (the in-memory index is newer than
    /// any value the cache could hold, and other writers of the index write
    /// directly).
    index_changed: FastHashSet<BlockHash>,
    /// Keys and values of the rows held.
    data_bytes: usize,
    rows: usize,
    /// The rows frozen for a background flush, until they are on disk:
    /// read after this cache's own, before the store's.
    behind: Option<Arc<StateCache>>,
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
        let family = family_of(cf);
        self.families[family]
            .get(key)
            .or_else(|| self.behind.as_ref()?.families[family].get(key))
            .map(|row| row.value.as_deref())
    }

    /// Memory the cache takes at its peak, during a flush, by its estimate:
    /// its rows (keys, values and `ENTRY_OVERHEAD_BYTES` each), their copy
    /// in the flush's write batch (`batch_bytes`) and the list that sorts
    /// them; the frozen layer's too.
    pub fn bytes(&self) -> usize {
        self.own_bytes() + self.behind.as_ref().map_or(0, |b| b.own_bytes())
    }

    /// As `bytes`, without the frozen layer: what the next freeze takes.
    pub fn own_bytes(&self) -> usize {
        self.data_bytes
            + self.rows * (ENTRY_OVERHEAD_BYTES + SORT_BYTES)
            + self.index_changed.len() * INDEX_ENTRY_BYTES
            + self.own_batch_bytes()
    }

    /// Size of the write batch that a flush of the cache (both layers)
    /// makes (for its capacity: a batch grown by doubling would take up to
    /// twice that).
    pub fn batch_bytes(&self) -> usize {
        self.own_batch_bytes() + self.behind.as_ref().map_or(0, |b| b.own_batch_bytes())
    }

    fn own_batch_bytes(&self) -> usize {
        self.data_bytes
            + self.rows * BATCH_RECORD_BYTES
            + self.index_changed.len() * INDEX_BATCH_BYTES
    }

    /// Rows held (puts and deletions), in both layers.
    pub fn len(&self) -> usize {
        self.rows + self.behind.as_ref().map_or(0, |b| b.rows)
    }

    /// Nothing to write: no rows and no index entries in either layer.
    pub fn is_empty(&self) -> bool {
        self.rows == 0 && self.index_changed.is_empty() && self.behind.is_none()
    }

    /// Moves every row into a frozen layer, returned for a background
    /// flush to write, and keeps reading through it until `drop_behind`.
    /// Panics if a frozen layer is already behind (one at a time).
    pub fn freeze(&mut self) -> Arc<StateCache> {
        assert!(self.behind.is_none(), "one frozen layer at a time");
        let frozen = Arc::new(std::mem::take(self));
        self.behind = Some(frozen.clone());
        frozen
    }

    /// Whether a frozen layer is behind this cache (being written, or
    /// left by a failed background write).
    pub fn has_behind(&self) -> bool {
        self.behind.is_some()
    }

    /// Forgets the frozen layer, once it is on disk; returns it, to be
    /// freed where it suits the caller.
    pub fn drop_behind(&mut self) -> Option<Arc<StateCache>> {
        self.behind.take()
    }

    /// Notes that the block index entry of `hash` changed with the state
    /// (a connected block became valid), to be written at the flush.
    pub fn mark_index_changed(&mut self, hash: BlockHash) {
        self.index_changed.insert(hash);
    }

    /// Block index entries to write with the next flush (both layers'; an
    /// entry may come twice).
    pub fn index_changed(&self) -> impl Iterator<Item = &BlockHash> {
        self.behind
            .iter()
            .flat_map(|b| b.index_changed.iter())
            .chain(self.index_changed.iter())
    }

    /// Adds every row to `batch`, in key order per column family (RocksDB
    /// inserts sorted keys into its memtable faster): the frozen layer's
    /// first, so this cache's newer values come later in the batch and win.
    /// The cache keeps them until `clear`, so a failed write loses nothing.
    pub fn write_to(&self, batch: &mut impl StateWrites) {
        if let Some(behind) = &self.behind {
            behind.write_to(batch);
        }
        for (cf, family) in STATE_CFS.iter().zip(&self.families) {
            let mut rows: Vec<(&[u8], &Row)> =
                family.iter().map(|(k, row)| (&k[..], row)).collect();
            rows.sort_unstable_by_key(|(key, _)| *key);
            for (key, row) in rows {
                match &row.value {
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

    /// Writes a row; `fresh` says the store does not hold it (meaningful
    /// only for a row the cache does not have yet: a row keeps what it was).
    fn set(&mut self, cf: &str, key: &[u8], value: Option<&[u8]>, fresh: bool) {
        self.set_row(
            family_of(cf),
            Cow::Borrowed(key),
            value.map(Box::from),
            fresh,
        );
    }

    /// Takes a block's rows, encoded ahead (`BlockRows`), in the order they
    /// were written: the same as writing each here, without encoding or
    /// allocating on the caller's thread. Column families are independent
    /// maps, so a block's worth of rows goes in one family per rayon task
    /// (the pool is idle then: the block's signatures are checked).
    pub fn take_rows(&mut self, rows: BlockRows) {
        use rayon::prelude::*;
        let behind = self.behind.as_deref();
        let deltas: Vec<RowDelta> = if rows.len() >= PARALLEL_ROWS {
            self.families
                .par_iter_mut()
                .zip(rows.0.into_par_iter())
                .enumerate()
                .map(|(i, (family, rows))| {
                    insert_rows(family, behind.map(|b| &b.families[i]), rows)
                })
                .collect()
        } else {
            self.families
                .iter_mut()
                .zip(rows.0)
                .enumerate()
                .map(|(i, (family, rows))| {
                    insert_rows(family, behind.map(|b| &b.families[i]), rows)
                })
                .collect()
        };
        for delta in deltas {
            self.apply(delta);
        }
    }

    fn apply(&mut self, delta: RowDelta) {
        self.data_bytes = self
            .data_bytes
            .checked_add_signed(delta.bytes)
            .expect("the cache's byte count stays whole");
        self.rows = self
            .rows
            .checked_add_signed(delta.rows)
            .expect("the cache's row count stays whole");
    }

    /// Writes one row (see `set_row_in`).
    fn set_row(
        &mut self,
        family: usize,
        key: Cow<'_, [u8]>,
        value: Option<Box<[u8]>>,
        fresh: bool,
    ) {
        let behind = self.behind.as_deref().map(|b| &b.families[family]);
        let delta = set_row_in(&mut self.families[family], behind, key, value, fresh);
        self.apply(delta);
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

    /// As `address_stats` for many owners: the cache's first, the rest in
    /// one multi-get.
    pub fn addresses_stats(
        &self,
        store: &Store,
        owners: &[PubKeyHash],
    ) -> Result<Vec<AddressStats>, StoreError> {
        let mut found = Vec::with_capacity(owners.len());
        let mut missing = Vec::new();
        for (i, owner) in owners.iter().enumerate() {
            match self.get(CF_ADDRESS_STATS, &owner.0) {
                Some(value) => found.push(
                    value
                        .map(|v| AddressStats::decode(v).map_err(corrupt("address stats")))
                        .transpose()?
                        .unwrap_or_default(),
                ),
                None => {
                    found.push(AddressStats::default());
                    missing.push((i, *owner));
                }
            }
        }
        if !missing.is_empty() {
            let keys: Vec<PubKeyHash> = missing.iter().map(|(_, o)| *o).collect();
            for ((i, _), stats) in missing.iter().zip(store.addresses_stats(&keys)?) {
                found[*i] = stats;
            }
        }
        Ok(found)
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

/// Rows at least this many in one block go into the cache one column family
/// per rayon task.
const PARALLEL_ROWS: usize = 256;

/// What writing rows changed in a family: key and value bytes, rows.
#[derive(Default)]
struct RowDelta {
    bytes: isize,
    rows: isize,
}

/// Writes `rows` into `family`, in order.
fn insert_rows(family: &mut Family, behind: Option<&Family>, rows: Vec<OwnedRow>) -> RowDelta {
    let mut total = RowDelta::default();
    for row in rows {
        let delta = set_row_in(
            family,
            behind,
            Cow::Owned(row.key.into_vec()),
            row.value,
            row.fresh,
        );
        total.bytes += delta.bytes;
        total.rows += delta.rows;
    }
    total
}

/// Writes one row into `family`. The key is copied only if the row is new
/// (a borrowed key); an owned one moves in (`into_boxed_slice` of an
/// exact-size vector does not reallocate).
fn set_row_in(
    family: &mut Family,
    behind: Option<&Family>,
    key: Cow<'_, [u8]>,
    value: Option<Box<[u8]>>,
    fresh: bool,
) -> RowDelta {
    let new_len = value.as_ref().map_or(0, |v| v.len()) as isize;
    match family.get_mut(&*key) {
        Some(row) if row.fresh && value.is_none() => {
            // Created and deleted between two flushes: the store never saw
            // it and needs no deletion.
            let old_len = row.value.as_ref().map_or(0, |v| v.len()) as isize;
            family.remove(&*key);
            RowDelta {
                bytes: -(key.len() as isize + old_len),
                rows: -1,
            }
        }
        Some(row) => {
            let old_len = row.value.as_ref().map_or(0, |v| v.len()) as isize;
            row.value = value;
            RowDelta {
                bytes: new_len - old_len,
                rows: 0,
            }
        }
        None => {
            let key_len = key.len() as isize;
            // A value the frozen layer writes is in the store by the time
            // this row is: its deletion must be written too.
            let fresh = fresh
                && value.is_some()
                && behind.is_none_or(|b| b.get(&*key).is_none_or(|r| r.value.is_none()));
            family.insert(key.into_owned().into_boxed_slice(), Row { value, fresh });
            RowDelta {
                bytes: key_len + new_len,
                rows: 1,
            }
        }
    }
}

/// A block's rows for the cache, encoded into their own allocations where
/// the block is prepared (on rayon's pool, beside its signature checks),
/// so the chain's thread only inserts them (`StateCache::take_rows`). Kept
/// per column family, each in write order.
#[derive(Default)]
pub struct BlockRows([Vec<OwnedRow>; STATE_CFS.len()]);

struct OwnedRow {
    key: Box<[u8]>,
    value: Option<Box<[u8]>>,
    fresh: bool,
}

impl BlockRows {
    fn push(&mut self, cf: &str, key: &[u8], value: Option<&[u8]>, fresh: bool) {
        self.0[family_of(cf)].push(OwnedRow {
            key: Box::from(key),
            value: value.map(Box::from),
            fresh,
        });
    }

    fn len(&self) -> usize {
        self.0.iter().map(Vec::len).sum()
    }
}

impl StateWrites for BlockRows {
    fn put(&mut self, cf: &'static str, key: &[u8], value: &[u8]) {
        self.push(cf, key, Some(value), false);
    }

    fn put_new(&mut self, cf: &'static str, key: &[u8], value: &[u8]) {
        self.push(cf, key, Some(value), true);
    }

    fn delete(&mut self, cf: &'static str, key: &[u8]) {
        self.push(cf, key, None, false);
    }
}

impl StateWrites for StateCache {
    fn put(&mut self, cf: &'static str, key: &[u8], value: &[u8]) {
        self.set(cf, key, Some(value), false);
    }

    fn put_new(&mut self, cf: &'static str, key: &[u8], value: &[u8]) {
        self.set(cf, key, Some(value), true);
    }

    fn delete(&mut self, cf: &'static str, key: &[u8]) {
        self.set(cf, key, None, false);
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

    fn row_bytes(key: usize, value: usize) -> usize {
        2 * (key + value) + ENTRY_OVERHEAD_BYTES + SORT_BYTES + BATCH_RECORD_BYTES
    }

    /// Rows encoded ahead and taken in one go leave the cache as writing
    /// each directly does: fresh rows deleted again vanish, deletions of
    /// stored rows stay, newest value wins.
    #[test]
    fn block_rows_taken_equal_rows_written() {
        // A few rows (taken one family after another) and many (one family
        // per rayon task).
        for extra in [0, PARALLEL_ROWS] {
            block_rows_taken_equal_rows_written_with(extra);
        }
    }

    fn block_rows_taken_equal_rows_written_with(extra: usize) {
        let writes = |w: &mut dyn StateWrites| {
            for n in 0..extra {
                // Created, some spent again, in several families.
                let o = OutPoint::new(Hash256([4; 32]), n as u32);
                w.put_utxo(&o, &utxo(n as u64 + 1));
                if n % 3 == 0 {
                    w.delete_utxo(&o, &utxo(n as u64 + 1));
                }
            }
            let a = OutPoint::new(Hash256([1; 32]), 0);
            let b = OutPoint::new(Hash256([2; 32]), 1);
            let stored = OutPoint::new(Hash256([3; 32]), 2);
            w.put_utxo(&a, &utxo(5));
            w.put_utxo(&b, &utxo(6));
            w.delete_utxo(&a, &utxo(5));
            w.delete_utxo(&stored, &utxo(7));
            let owner = PubKeyHash([9; 20]);
            let mut stats = AddressStats {
                funded_txo_count: 1,
                funded_txo_sum: 5,
                ..AddressStats::default()
            };
            w.put_address_stats(&owner, &stats);
            stats.funded_txo_sum = 11;
            w.put_address_stats(&owner, &stats);
        };
        let mut direct = StateCache::default();
        writes(&mut direct);
        let mut rows = BlockRows::default();
        writes(&mut rows);
        let mut taken = StateCache::default();
        taken.take_rows(rows);
        assert_eq!((taken.len(), taken.bytes()), (direct.len(), direct.bytes()));
        for (family, rows) in direct.families.iter().enumerate() {
            assert_eq!(
                rows.len(),
                taken.families[family].len(),
                "{}",
                STATE_CFS[family]
            );
            for (key, row) in rows {
                let other = &taken.families[family][key];
                assert_eq!((&row.value, row.fresh), (&other.value, other.fresh));
            }
        }
        if extra == 0 {
            assert_eq!(
                direct.len(),
                5,
                "b's two rows, a deletion of each of stored's, stats"
            );
        } else {
            assert!(rows_len_of(&direct) > PARALLEL_ROWS);
        }
    }

    fn rows_len_of(cache: &StateCache) -> usize {
        cache.families.iter().map(|f| f.len()).sum()
    }

    #[test]
    fn newest_value_wins_and_bytes_follow_it() {
        let mut cache = StateCache::default();
        assert!(cache.is_empty());
        let owner = PubKeyHash([9; 20]);
        let stats = AddressStats {
            funded_txo_count: 1,
            funded_txo_sum: 5,
            ..AddressStats::default()
        };
        cache.put_address_stats(&owner, &stats);
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.bytes(), row_bytes(20, 57));
        assert_eq!(
            cache.get(CF_ADDRESS_STATS, &owner.0),
            Some(Some(&stats.encode()[..]))
        );
        // Stats of nothing: a deletion the store must see.
        cache.put_address_stats(&owner, &AddressStats::default());
        assert_eq!(cache.get(CF_ADDRESS_STATS, &owner.0), Some(None));
        assert_eq!(cache.bytes(), row_bytes(20, 0));
        cache.put_address_stats(&owner, &stats);
        assert_eq!(cache.bytes(), row_bytes(20, 57));
        cache.mark_index_changed(Hash256([2; 32]));
        cache.mark_index_changed(Hash256([2; 32]));
        assert_eq!(
            cache.bytes(),
            row_bytes(20, 57) + INDEX_ENTRY_BYTES + INDEX_BATCH_BYTES
        );
        cache.clear();
        assert!(cache.is_empty());
        assert_eq!(cache.bytes(), 0);
    }

    #[test]
    fn a_row_created_and_deleted_between_flushes_leaves_nothing_to_write() {
        let mut cache = StateCache::default();
        let outpoint = OutPoint::new(Hash256([1; 32]), 0);
        let key = outpoint_key(&outpoint);
        // Created, then spent: gone, the store never held it.
        cache.put_utxo(&outpoint, &utxo(5));
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.bytes(), row_bytes(36, 34) + row_bytes(56, 13));
        cache.delete_utxo(&outpoint, &utxo(5));
        assert!(cache.is_empty());
        assert_eq!(cache.bytes(), 0);
        assert_eq!(cache.get(CF_UTXO, &key), None);
        // Spent where the cache does not know it (the store holds it): a
        // deletion to write, and a UTXO put back over it (a disconnect)
        // overwrites the store's row, so it is not fresh.
        cache.delete_utxo(&outpoint, &utxo(5));
        assert_eq!(cache.get(CF_UTXO, &key), Some(None));
        cache.put_utxo(&outpoint, &utxo(5));
        cache.delete_utxo(&outpoint, &utxo(5));
        assert_eq!(cache.get(CF_UTXO, &key), Some(None));
        assert_eq!(cache.len(), 2);
        let mut deletions = Vec::new();
        cache.write_to(&mut Record(&mut deletions));
        assert_eq!(
            deletions,
            vec![
                (CF_UTXO, key.to_vec(), false),
                (
                    CF_ADDRESS_UTXO,
                    address_utxo_key(&PubKeyHash([9; 20]), &outpoint).to_vec(),
                    false
                ),
            ]
        );
    }

    /// Records what a flush would write: family, key, put (or deletion).
    struct Record<'a>(&'a mut Vec<(&'static str, Vec<u8>, bool)>);
    impl StateWrites for Record<'_> {
        fn put(&mut self, cf: &'static str, key: &[u8], _: &[u8]) {
            self.0.push((cf, key.to_vec(), true));
        }
        fn delete(&mut self, cf: &'static str, key: &[u8]) {
            self.0.push((cf, key.to_vec(), false));
        }
    }

    #[test]
    fn a_frozen_layer_is_read_behind_the_cache_and_written_before_it() {
        let mut cache = StateCache::default();
        let (a, b, c) = (
            OutPoint::new(Hash256([1; 32]), 0),
            OutPoint::new(Hash256([2; 32]), 0),
            OutPoint::new(Hash256([3; 32]), 0),
        );
        let gone = OutPoint::new(Hash256([4; 32]), 0);
        cache.put_utxo(&a, &utxo(5));
        cache.put_utxo(&b, &utxo(6));
        cache.delete_utxo(&gone, &utxo(7));
        let (rows, bytes, batch) = (cache.len(), cache.bytes(), cache.batch_bytes());
        let frozen = cache.freeze();
        assert!(cache.has_behind() && !cache.is_empty());
        assert_eq!(frozen.len(), rows);
        // The layer behind still counts, and is still read.
        assert_eq!(
            (cache.len(), cache.bytes(), cache.batch_bytes()),
            (rows, bytes, batch)
        );
        assert_eq!(cache.own_bytes(), 0);
        let store = tempfile::tempdir().unwrap();
        let store = Store::open(
            store.path(),
            crate::consensus::params::Network::Regtest,
            &crate::store::StoreOptions::default(),
        )
        .unwrap();
        assert_eq!(cache.utxo(&store, &a).unwrap(), Some(utxo(5)));
        assert_eq!(cache.utxo(&store, &gone).unwrap(), None);
        // Spent in front: the frozen layer writes the UTXO, so its deletion
        // must be written after it, not dropped as fresh.
        cache.delete_utxo(&a, &utxo(5));
        assert_eq!(cache.utxo(&store, &a).unwrap(), None);
        // Put again as new over the frozen layer's row, then deleted: the
        // deletion stays too.
        cache.put_utxo(&b, &utxo(8));
        cache.delete_utxo(&b, &utxo(8));
        assert_eq!(cache.get(CF_UTXO, &outpoint_key(&b)), Some(None));
        // Created and spent in front alone: nothing to write.
        cache.put_utxo(&c, &utxo(9));
        cache.delete_utxo(&c, &utxo(9));
        assert_eq!(cache.get(CF_UTXO, &outpoint_key(&c)), None);

        let mut written = Vec::new();
        cache.write_to(&mut Record(&mut written));
        let utxo_rows: Vec<_> = written
            .iter()
            .filter(|(cf, _, _)| *cf == CF_UTXO)
            .map(|(_, key, put)| (key.clone(), *put))
            .collect();
        let key = |o: &OutPoint| outpoint_key(o).to_vec();
        assert_eq!(
            utxo_rows,
            vec![
                (key(&a), true),
                (key(&b), true),
                (key(&gone), false),
                (key(&a), false),
                (key(&b), false),
            ],
            "the frozen layer first, in key order, then the front"
        );

        // Once the frozen layer is on disk the cache lets it go; reads go
        // to the store.
        let behind = cache.drop_behind().expect("a frozen layer");
        assert!(Arc::ptr_eq(&behind, &frozen));
        assert!(!cache.has_behind());
        assert_eq!(cache.get(CF_UTXO, &outpoint_key(&gone)), None);
        assert_eq!(
            cache.len(),
            4,
            "a's and b's deletions, with their address rows"
        );
    }

    #[test]
    #[should_panic(expected = "one frozen layer at a time")]
    fn one_frozen_layer_at_a_time() {
        let mut cache = StateCache::default();
        cache.put_utxo(&OutPoint::new(Hash256([1; 32]), 0), &utxo(5));
        let _frozen = cache.freeze();
        cache.freeze();
    }

    #[test]
    #[should_panic(expected = "not chain state")]
    fn only_state_families_are_cached() {
        StateCache::default().put(CF_BLOCK_INDEX, b"k", b"v");
    }
}
