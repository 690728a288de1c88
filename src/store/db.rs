//! The RocksDB-backed store (feature `node`).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DBCompressionType,
    IteratorMode, Options, ReadOptions, SliceTransform, WriteBatch, WriteOptions, DB,
};

use super::cache::StateWrites;
use super::digest::UtxoDigest;
use super::schema::*;
use crate::consensus::address::PubKeyHash;
use crate::consensus::amount::Amount;
use crate::consensus::block::{decode_block_transactions, Block, BlockHeader};
use crate::consensus::hash::{BlockHash, Hash256, Txid};
use crate::consensus::params::Network;
use crate::consensus::transaction::{OutPoint, Transaction, TxOut};
use crate::consensus::validation::{Utxo, UtxoView, UtxoViewError};
use crate::encoding::{Decode, DecodeError, Encode};

/// Block cache shared by all column families. Point lookups of UTXOs and
/// address stats dominate; 256 MiB holds the hot part of a large UTXO set.
pub const DEFAULT_BLOCK_CACHE_BYTES: usize = 256 << 20;
/// Bloom filter density for point-lookup families: 10 bits per key gives
/// about 1% false positives, so a missing UTXO rarely costs a disk read.
const BLOOM_BITS_PER_KEY: f64 = 10.0;
/// Address families are scanned by owner: the 20-byte owner hash is the
/// prefix, with prefix bloom filters so a scan of an unknown address is free.
const ADDRESS_PREFIX_LEN: usize = 20;
/// Memtable size of the busiest families (UTXOs, address rows): large enough
/// that a catch-up of many blocks writes few small level-0 files.
const BUSY_WRITE_BUFFER_BYTES: usize = 64 << 20;
/// Share of a memtable's size given to a bloom filter of its whole keys,
/// for the address stats: a block's outputs mostly pay addresses the
/// store has never seen, and each such read walked the skip list of
/// every memtable (a catch-up keeps up to 64 MiB of them) to find nothing.
const MEMTABLE_BLOOM_RATIO: f64 = 0.02;

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("RocksDB: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("corrupt {what} in the store: {error}")]
    Corrupt {
        what: &'static str,
        error: DecodeError,
    },
    #[error("data dir holds network {found}, not {expected}")]
    WrongNetwork { expected: Network, found: String },
    #[error("no column family named {0:?}")]
    UnknownColumnFamily(String),
    #[error("no ChainCore data dir at {0}")]
    Missing(String),
    #[error("data dir {dir} is in use by another process ({rocks}): stop that node, or pass another --data-dir")]
    InUse { dir: String, rocks: String },
    #[error("data dir has store format {found}, this build reads format {expected}")]
    WrongFormat { expected: u32, found: u32 },
    /// A write failed on purpose (tests only).
    #[cfg(test)]
    #[error("injected write failure")]
    Injected,
}

impl From<StoreError> for UtxoViewError {
    fn from(e: StoreError) -> Self {
        UtxoViewError(e.to_string())
    }
}

fn corrupt(what: &'static str) -> impl FnOnce(DecodeError) -> StoreError {
    move |error| StoreError::Corrupt { what, error }
}

/// One transaction of a stored block, as `Store::block_transaction` reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredTransaction {
    pub header: BlockHeader,
    pub tx: Transaction,
    /// The outputs its inputs spent, in input order (none for a coinbase).
    pub spent: Vec<TxOut>,
}

/// A raw key and value.
pub type RawEntry = (Vec<u8>, Vec<u8>);

/// Tuning knobs, with defaults chosen for this workload.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub block_cache_bytes: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            block_cache_bytes: DEFAULT_BLOCK_CACHE_BYTES,
        }
    }
}

/// A handle to the store; cheap to clone, safe to share between threads.
///
/// A handle made by [`Store::snapshot`] reads one frozen state of the
/// database (a RocksDB snapshot): every read through it sees exactly the
/// batches written before it was taken, so an answer built from several
/// reads is never torn by a block connecting in between. Such a handle is
/// for reading only; `write` refuses it.
#[derive(Clone)]
pub struct Store {
    db: Arc<DB>,
    snapshot: Option<Arc<OwnedSnapshot>>,
    /// Writes through any handle of this database, counted twice each:
    /// odd while one is under way, even between two (`write_generation`).
    /// Held by `writing` for the whole of each write, so two writes never
    /// overlap and the count means what it says.
    writes: Arc<AtomicU64>,
    writing: Arc<std::sync::Mutex<()>>,
    /// Tests: writes made from a thread of this name fail, this many times.
    #[cfg(test)]
    fail_writes: Arc<std::sync::Mutex<Option<(String, u32)>>>,
    /// Tests: writes made from a thread of this name first sleep this long.
    #[cfg(test)]
    slow_writes: Arc<std::sync::Mutex<Option<(String, std::time::Duration)>>>,
}

/// A RocksDB snapshot that owns a handle to its database.
struct OwnedSnapshot {
    // Declared before `_db`, so it is released before the handle drops.
    snapshot: rocksdb::SnapshotWithThreadMode<'static, DB>,
    _db: Arc<DB>,
}

impl OwnedSnapshot {
    fn new(db: &Arc<DB>) -> OwnedSnapshot {
        let snapshot = db.snapshot();
        // SAFETY: the snapshot borrows the `DB` behind the `Arc`, whose heap
        // address never moves; the clone of that `Arc` stored beside it keeps
        // the `DB` alive, and field order drops the snapshot first. So the
        // borrow outlives every use, although its type cannot say so.
        let snapshot = unsafe {
            std::mem::transmute::<
                rocksdb::SnapshotWithThreadMode<'_, DB>,
                rocksdb::SnapshotWithThreadMode<'static, DB>,
            >(snapshot)
        };
        OwnedSnapshot {
            snapshot,
            _db: db.clone(),
        }
    }
}

fn cf_options(name: &str, cache: &Cache) -> Options {
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    table.set_cache_index_and_filter_blocks(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    let mut opts = Options::default();
    opts.set_compression_type(DBCompressionType::Lz4);
    opts.set_level_compaction_dynamic_level_bytes(true);
    match name {
        CF_ADDRESS_UTXO | CF_ADDRESS_HISTORY => {
            table.set_bloom_filter(BLOOM_BITS_PER_KEY, false);
            table.set_whole_key_filtering(false);
            opts.set_prefix_extractor(SliceTransform::create_fixed_prefix(ADDRESS_PREFIX_LEN));
            opts.set_memtable_prefix_bloom_ratio(0.1);
            opts.set_write_buffer_size(BUSY_WRITE_BUFFER_BYTES);
        }
        CF_UTXO | CF_ADDRESS_STATS | CF_TX_INDEX | CF_SPENT_BY | CF_SCRIPT_HASH
        | CF_BLOCK_INDEX => {
            table.set_bloom_filter(BLOOM_BITS_PER_KEY, false);
            if name == CF_UTXO {
                opts.set_write_buffer_size(BUSY_WRITE_BUFFER_BYTES);
            }
            if name == CF_ADDRESS_STATS {
                opts.set_memtable_prefix_bloom_ratio(MEMTABLE_BLOOM_RATIO);
                opts.set_memtable_whole_key_filtering(true);
            }
        }
        _ => {}
    }
    opts.set_block_based_table_factory(&table);
    opts
}

/// Rows per write batch of a format upgrade (bounds its memory: a few MB).
const UPGRADE_BATCH_ROWS: usize = 50_000;

impl Store {
    /// Opens (creating if needed) the store at `path` for `network`. A store
    /// created for another network or in another format is refused.
    pub fn open(
        path: &Path,
        network: Network,
        options: &StoreOptions,
    ) -> Result<Store, StoreError> {
        let store = Store::open_db(path, options, true)?;
        store.check_identity(network)?;
        Ok(store)
    }

    /// Opens an existing store, whatever its network, and says which it is.
    pub fn open_existing(
        path: &Path,
        options: &StoreOptions,
    ) -> Result<(Store, Network), StoreError> {
        if !path.join("CURRENT").exists() {
            return Err(StoreError::Missing(path.display().to_string()));
        }
        let store = Store::open_db(path, options, false)?;
        let network = store.recorded_network(path)?;
        store.check_identity(network)?;
        Ok((store, network))
    }

    /// The network a store records (`path` names it in the error).
    fn recorded_network(&self, path: &Path) -> Result<Network, StoreError> {
        let meta = self.cf(CF_META);
        let name = self.db.get_cf(meta, meta::NETWORK)?.unwrap_or_default();
        String::from_utf8_lossy(&name)
            .parse()
            .map_err(|_| StoreError::Missing(format!("{} (no network recorded)", path.display())))
    }

    /// The format a store records (0: none).
    fn recorded_format(&self) -> Result<u32, StoreError> {
        Ok(self
            .db
            .get_cf(self.cf(CF_META), meta::FORMAT_VERSION)?
            .and_then(|v| v.try_into().ok().map(u32::from_be_bytes))
            .unwrap_or(0))
    }

    /// Opens an existing store for reading only, whatever its network, and
    /// says which it is: for the offline checks (`chaincore check`,
    /// `mirror verify`), which must change nothing (no format upgrade, no
    /// column family created) and can run beside a node using the data dir
    /// (they read it as it was when opened). A store of another format is
    /// refused: the node upgrades it when it starts.
    pub fn open_read_only(
        path: &Path,
        options: &StoreOptions,
    ) -> Result<(Store, Network), StoreError> {
        if !path.join("CURRENT").exists() {
            return Err(StoreError::Missing(path.display().to_string()));
        }
        let cache = Cache::new_lru_cache(options.block_cache_bytes);
        let descriptors = ALL_CFS
            .iter()
            .map(|name| ColumnFamilyDescriptor::new(*name, cf_options(name, &cache)));
        let db = DB::open_cf_descriptors_read_only(&Options::default(), path, descriptors, false)?;
        let store = Store::from_db(db);
        let network = store.recorded_network(path)?;
        let found = store.recorded_format()?;
        if found != FORMAT_VERSION {
            return Err(StoreError::WrongFormat {
                expected: FORMAT_VERSION,
                found,
            });
        }
        Ok((store, network))
    }

    fn from_db(db: DB) -> Store {
        Store {
            db: Arc::new(db),
            snapshot: None,
            writes: Arc::new(AtomicU64::new(0)),
            writing: Arc::new(std::sync::Mutex::new(())),
            #[cfg(test)]
            fail_writes: Default::default(),
            #[cfg(test)]
            slow_writes: Default::default(),
        }
    }

    fn open_db(path: &Path, options: &StoreOptions, create: bool) -> Result<Store, StoreError> {
        let cache = Cache::new_lru_cache(options.block_cache_bytes);
        let mut db_opts = Options::default();
        db_opts.create_if_missing(create);
        db_opts.create_missing_column_families(true);
        db_opts.increase_parallelism(
            std::thread::available_parallelism().map_or(2, |n| n.get() as i32),
        );
        db_opts.set_max_background_jobs(4);
        db_opts.set_bytes_per_sync(1 << 20);
        db_opts.set_keep_log_file_num(5);
        let descriptors = ALL_CFS
            .iter()
            .map(|name| ColumnFamilyDescriptor::new(*name, cf_options(name, &cache)));
        let db = DB::open_cf_descriptors(&db_opts, path, descriptors).map_err(|e| {
            // RocksDB's own words: "IO error: While lock file: DIR/LOCK:
            // Resource temporarily unavailable" (another process), "IO
            // error: lock hold by current process, ...: DIR/LOCK: No locks
            // available" (this one). A lock file it may not open (another
            // user's directory, a read-only disk) is another error.
            let text = e.as_ref();
            if e.kind() == rocksdb::ErrorKind::IOError
                && (text.contains("Resource temporarily unavailable")
                    || text.contains("lock hold by current process"))
            {
                StoreError::InUse {
                    dir: path.display().to_string(),
                    rocks: text.to_string(),
                }
            } else {
                StoreError::Rocks(e)
            }
        })?;
        Ok(Store::from_db(db))
    }

    fn check_identity(&self, network: Network) -> Result<(), StoreError> {
        let meta = self.cf(CF_META);
        match self.db.get_cf(meta, meta::NETWORK)? {
            None => {
                let mut batch = WriteBatch::default();
                batch.put_cf(meta, meta::NETWORK, network.name());
                batch.put_cf(meta, meta::FORMAT_VERSION, FORMAT_VERSION.to_be_bytes());
                let mut opts = WriteOptions::default();
                opts.set_sync(true);
                self.counted(|db| db.write_opt(batch, &opts))?;
            }
            Some(found) if found != network.name().as_bytes() => {
                return Err(StoreError::WrongNetwork {
                    expected: network,
                    found: String::from_utf8_lossy(&found).into_owned(),
                });
            }
            Some(_) => {
                let mut found = self.recorded_format()?;
                if found == 1 {
                    self.upgrade_indexes()?;
                    found = 2;
                }
                if found == 2 {
                    self.upgrade_digest()?;
                } else if found != FORMAT_VERSION {
                    return Err(StoreError::WrongFormat {
                        expected: FORMAT_VERSION,
                        found,
                    });
                }
            }
        }
        Ok(())
    }

    /// Upgrades a format-1 store: builds the `spent_by` rows of the active
    /// chain from its blocks and the `script_hash` rows from the address
    /// stats, then records format 2. The rows are plain puts of what the
    /// chain holds, so an upgrade cut short runs again from the start at
    /// the next open; the format is written last.
    fn upgrade_indexes(&self) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        let tip = self.format2_tip()?.map_or(0, |t| t.height);
        tracing::info!(
            height = tip,
            "upgrading the store to format 2: indexing who spent each output"
        );
        let mut batch = self.batch();
        let mut rows = 0usize;
        for height in 1..=tip {
            let hash = self.hash_at_height(height)?.ok_or(StoreError::Corrupt {
                what: "active chain",
                error: DecodeError::Invalid {
                    what: "active chain",
                    reason: "no block at a height below the tip",
                },
            })?;
            let block = self.block(&hash)?.ok_or(StoreError::Corrupt {
                what: "active block",
                error: DecodeError::Invalid {
                    what: "active block",
                    reason: "no stored data",
                },
            })?;
            for tx in block.transactions.iter().skip(1) {
                let txid = tx.txid();
                for (vin, input) in tx.inputs.iter().enumerate() {
                    batch.put_spender(
                        &input.prevout(),
                        &Spender {
                            txid,
                            vin: vin as u32,
                        },
                    );
                    rows += 1;
                }
            }
            if rows >= UPGRADE_BATCH_ROWS {
                self.write(std::mem::replace(&mut batch, self.batch()), false)?;
                rows = 0;
            }
        }
        // The address stats are read through a snapshot while their script
        // hash rows are written, a batch at a time.
        let mut owners = 0usize;
        let stats = self.snapshot();
        let mut failed = None;
        stats.for_each_address_stats(|owner, _| {
            if failed.is_some() {
                return;
            }
            batch.put_script_hash(&owner);
            owners += 1;
            if owners.is_multiple_of(UPGRADE_BATCH_ROWS) {
                if let Err(e) = self.write(std::mem::replace(&mut batch, self.batch()), false) {
                    failed = Some(e);
                }
            }
        })?;
        if let Some(e) = failed {
            return Err(e);
        }
        batch.put(CF_META, meta::FORMAT_VERSION, &2u32.to_be_bytes());
        self.write(batch, true)?;
        tracing::info!(
            secs = started.elapsed().as_secs_f64(),
            addresses = owners,
            "store upgraded to format 2"
        );
        Ok(())
    }

    /// The tip record of a format-1 or format-2 store.
    fn format2_tip(&self) -> Result<Option<ChainTipRecord>, StoreError> {
        self.get(CF_META, meta::TIP)?
            .map(|v| ChainTipRecord::decode_format2(&v).map_err(corrupt("tip record")))
            .transpose()
    }

    /// Upgrades a format-2 store: computes the lattice digest of the UTXO
    /// set (a pass over it, read through a snapshot), then writes the tip
    /// record with its fingerprint, the digest's state and format 3 in one
    /// batch, so a crash leaves either format whole.
    fn upgrade_digest(&self) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        let mut batch = self.batch();
        let mut utxos = 0u64;
        if let Some(mut tip) = self.format2_tip()? {
            tracing::info!(
                height = tip.height,
                utxos = tip.utxo_count,
                "upgrading the store to format {FORMAT_VERSION}: the UTXO-set digest becomes a lattice hash"
            );
            let snapshot = self.snapshot();
            let mut digest = UtxoDigest::default();
            snapshot.for_each_utxo(|outpoint, utxo| {
                digest.insert(&outpoint, &utxo);
                utxos += 1;
            })?;
            if utxos != tip.utxo_count {
                return Err(StoreError::Corrupt {
                    what: "UTXO set",
                    error: DecodeError::Invalid {
                        what: "UTXO set",
                        reason: "the tip record counts another number of UTXOs",
                    },
                });
            }
            tip.digest = digest.fingerprint();
            batch.put_tip(&tip, &digest);
        }
        batch.put(CF_META, meta::FORMAT_VERSION, &FORMAT_VERSION.to_be_bytes());
        self.write(batch, true)?;
        tracing::info!(
            secs = started.elapsed().as_secs_f64(),
            utxos,
            "store upgraded to format {FORMAT_VERSION}"
        );
        Ok(())
    }

    fn cf(&self, name: &str) -> &ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("every column family is created at open")
    }

    /// A read-only handle on the state as of now (see [`Store`]). Cheap:
    /// RocksDB pins a sequence number, nothing is copied.
    pub fn snapshot(&self) -> Store {
        Store {
            db: self.db.clone(),
            writes: self.writes.clone(),
            writing: self.writing.clone(),
            #[cfg(test)]
            fail_writes: self.fail_writes.clone(),
            #[cfg(test)]
            slow_writes: self.slow_writes.clone(),
            snapshot: Some(Arc::new(OwnedSnapshot::new(&self.db))),
        }
    }

    /// Read options that see this handle's snapshot, if it has one.
    fn read_options(&self) -> ReadOptions {
        let mut opts = ReadOptions::default();
        if let Some(s) = &self.snapshot {
            opts.set_snapshot(&s.snapshot);
        }
        opts
    }

    fn get(&self, cf: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get_cf_opt(self.cf(cf), key, &self.read_options())?)
    }

    fn iterator(
        &self,
        cf: &str,
        opts: ReadOptions,
        mode: IteratorMode,
    ) -> rocksdb::DBIteratorWithThreadMode<'_, DB> {
        self.db.iterator_cf_opt(self.cf(cf), opts, mode)
    }

    /// The raw stored value of a key (for the cache in front of the store).
    pub(super) fn get_raw(&self, cf: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.get(cf, key)
    }

    /// Applies a batch atomically. `sync` waits for the write-ahead log to
    /// reach the disk (durability across power loss, not only process kill).
    pub fn write(&self, batch: StoreBatch, sync: bool) -> Result<(), StoreError> {
        assert!(
            self.snapshot.is_none(),
            "a snapshot handle is read-only: write through the chain's own store"
        );
        #[cfg(test)]
        self.injected_fault()?;
        let mut opts = WriteOptions::default();
        opts.set_sync(sync);
        self.counted(|db| db.write_opt(batch.batch, &opts))
    }

    /// Tests: writes `value` under `key` in column family `cf` as it is,
    /// as a corrupt disk or a stray program would.
    #[cfg(test)]
    pub fn put_raw(&self, cf: &str, key: &[u8], value: &[u8]) {
        self.db.put_cf(self.cf(cf), key, value).unwrap();
    }

    /// Tests: makes the next `times` writes from threads named `thread`
    /// fail (with nothing written).
    #[cfg(test)]
    pub fn fail_writes_from(&self, thread: &str, times: u32) {
        *self.fail_writes.lock().unwrap() = Some((thread.to_string(), times));
    }

    /// Tests: how many of the failures `fail_writes_from` asked for are
    /// left.
    #[cfg(test)]
    pub fn failures_left(&self) -> u32 {
        self.fail_writes.lock().unwrap().as_ref().map_or(0, |f| f.1)
    }

    /// Tests: makes every write from threads named `thread` sleep for
    /// `delay` first (a slow disk, as that thread sees it).
    #[cfg(test)]
    pub fn slow_writes_from(&self, thread: &str, delay: std::time::Duration) {
        *self.slow_writes.lock().unwrap() = Some((thread.to_string(), delay));
    }

    #[cfg(test)]
    fn injected_fault(&self) -> Result<(), StoreError> {
        let slow = self.slow_writes.lock().unwrap().clone();
        if let Some((thread, delay)) = slow {
            if std::thread::current().name() == Some(thread.as_str()) {
                std::thread::sleep(delay);
            }
        }
        let mut fail = self.fail_writes.lock().unwrap();
        match fail.as_mut() {
            Some((thread, times))
                if *times > 0 && std::thread::current().name() == Some(thread.as_str()) =>
            {
                *times -= 1;
                Err(StoreError::Injected)
            }
            _ => Ok(()),
        }
    }

    /// Runs one write, alone, with the write counter odd while it runs
    /// (even again however it ends, a panic included).
    fn counted(
        &self,
        write: impl FnOnce(&DB) -> Result<(), rocksdb::Error>,
    ) -> Result<(), StoreError> {
        struct Odd<'a>(&'a AtomicU64);
        impl Drop for Odd<'_> {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let _alone = self
            .writing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.writes.fetch_add(1, Ordering::SeqCst);
        let _odd = Odd(&self.writes);
        Ok(write(&self.db)?)
    }

    /// The write counter: even when no write is under way. A snapshot taken
    /// after reading an even value holds every write that value counts, so
    /// readers may share it until the value changes (`ChainReader::view`).
    pub fn write_generation(&self) -> u64 {
        self.writes.load(Ordering::SeqCst)
    }

    /// A new, empty batch over this store's column families.
    pub fn batch(&self) -> StoreBatch<'_> {
        StoreBatch {
            store: self,
            batch: WriteBatch::default(),
        }
    }

    /// A new batch with room for `bytes`, allocated at once (a large batch
    /// grown by doubling would take up to twice its size).
    pub fn batch_with_capacity(&self, bytes: usize) -> StoreBatch<'_> {
        StoreBatch {
            store: self,
            batch: WriteBatch::with_capacity_bytes(bytes),
        }
    }

    pub fn tip(&self) -> Result<Option<ChainTipRecord>, StoreError> {
        self.get(CF_META, meta::TIP)?
            .map(|v| ChainTipRecord::decode(&v).map_err(corrupt("tip record")))
            .transpose()
    }

    /// The UTXO-set digest's state at the tip record's tip.
    pub fn utxo_digest_state(&self) -> Result<Option<UtxoDigest>, StoreError> {
        self.get(CF_META, meta::UTXO_DIGEST)?
            .map(|v| decode_digest_state(&v).map_err(corrupt("UTXO digest state")))
            .transpose()
    }

    pub fn block_index_entry(
        &self,
        hash: &BlockHash,
    ) -> Result<Option<BlockIndexEntry>, StoreError> {
        self.get(CF_BLOCK_INDEX, &hash.0)?
            .map(|v| BlockIndexEntry::decode(&v).map_err(corrupt("block index entry")))
            .transpose()
    }

    /// Every block index entry, for loading the index into memory at start.
    pub fn all_block_index(&self) -> Result<Vec<(BlockHash, BlockIndexEntry)>, StoreError> {
        let mut out = Vec::new();
        for item in self.iterator(CF_BLOCK_INDEX, self.read_options(), IteratorMode::Start) {
            let (key, value) = item?;
            let hash = Hash256::from_bytes(&key).map_err(corrupt("block index key"))?;
            let entry = BlockIndexEntry::decode(&value).map_err(corrupt("block index entry"))?;
            out.push((hash, entry));
        }
        Ok(out)
    }

    pub fn hash_at_height(&self, height: u32) -> Result<Option<BlockHash>, StoreError> {
        self.get(CF_ACTIVE_CHAIN, &height_key(height))?
            .map(|v| Hash256::from_bytes(&v).map_err(corrupt("active chain entry")))
            .transpose()
    }

    /// A stored block, checked to be the one asked for: a body read back
    /// under another block's hash is the store's corruption, reported as
    /// such (judged as a block, it would be marked invalid for good).
    pub fn block(&self, hash: &BlockHash) -> Result<Option<Block>, StoreError> {
        let Some(bytes) = self.get(CF_BLOCK_DATA, &hash.0)? else {
            return Ok(None);
        };
        let block = Block::from_bytes(&bytes).map_err(corrupt("block"))?;
        if block.hash() != *hash {
            return Err(StoreError::Corrupt {
                what: "block",
                error: DecodeError::Invalid {
                    what: "block",
                    reason: "its header does not hash to the key it is stored under",
                },
            });
        }
        Ok(Some(block))
    }

    /// The raw stored bytes of a block (its consensus encoding).
    pub fn block_bytes(&self, hash: &BlockHash) -> Result<Option<Vec<u8>>, StoreError> {
        self.get(CF_BLOCK_DATA, &hash.0)
    }

    /// The transaction at `position` of a stored block, with the block's
    /// header and the outputs its inputs spent (`block_transactions` for
    /// one position).
    pub fn block_transaction(
        &self,
        hash: &BlockHash,
        position: usize,
    ) -> Result<Option<StoredTransaction>, StoreError> {
        Ok(self
            .block_transactions(hash, &[position])?
            .and_then(|mut found| found.pop()))
    }

    /// The transactions at `positions` (ascending, each once) of a stored
    /// block, with its header and the outputs their inputs spent, read in
    /// one walk of the block without decoding its other transactions or
    /// undo rows: a history page of 25 rows costs one walk per block it
    /// touches, not 25 MB of decoded blocks. `None` when the block is not
    /// stored or is shorter. A connected block's undo data must hold the
    /// rows (a coinbase needs none).
    pub fn block_transactions(
        &self,
        hash: &BlockHash,
        positions: &[usize],
    ) -> Result<Option<Vec<StoredTransaction>>, StoreError> {
        let opts = self.read_options();
        let Some(block) = self
            .db
            .get_pinned_cf_opt(self.cf(CF_BLOCK_DATA), hash.0, &opts)?
        else {
            return Ok(None);
        };
        let Some(found) = decode_block_transactions(&block, positions).map_err(corrupt("block"))?
        else {
            return Ok(None);
        };
        drop(block);
        let undo = if found.iter().all(|f| f.tx.is_coinbase()) {
            None
        } else {
            Some(
                self.db
                    .get_pinned_cf_opt(self.cf(CF_UNDO), hash.0, &opts)?
                    .ok_or(StoreError::Corrupt {
                        what: "undo data",
                        error: DecodeError::Invalid {
                            what: "undo data",
                            reason: "missing for a block whose transaction spends",
                        },
                    })?,
            )
        };
        found
            .into_iter()
            .map(|found| {
                let spent = match &undo {
                    Some(undo) if !found.tx.is_coinbase() => {
                        decode_undo_range(undo, found.spent_before, found.tx.inputs.len())
                            .map_err(corrupt("undo data"))?
                            .into_iter()
                            .map(|(_, utxo)| utxo.output)
                            .collect()
                    }
                    _ => Vec::new(),
                };
                Ok(StoredTransaction {
                    header: found.header,
                    tx: found.tx,
                    spent,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()
            .map(Some)
    }

    pub fn undo(&self, hash: &BlockHash) -> Result<Option<Vec<(OutPoint, Utxo)>>, StoreError> {
        self.get(CF_UNDO, &hash.0)?
            .map(|v| decode_undo(&v).map_err(corrupt("undo data")))
            .transpose()
    }

    pub fn utxo(&self, outpoint: &OutPoint) -> Result<Option<Utxo>, StoreError> {
        self.get(CF_UTXO, &outpoint_key(outpoint))?
            .map(|v| decode_utxo(&v).map_err(corrupt("utxo")))
            .transpose()
    }

    /// Looks up many UTXOs in one RocksDB call.
    pub fn utxos(&self, outpoints: &[OutPoint]) -> Result<Vec<Option<Utxo>>, StoreError> {
        let cf = self.cf(CF_UTXO);
        let keys: Vec<[u8; 36]> = outpoints.iter().map(outpoint_key).collect();
        self.db
            .multi_get_cf_opt(keys.iter().map(|k| (cf, k)), &self.read_options())
            .into_iter()
            .map(|r| {
                r.map_err(StoreError::from)?
                    .map(|v| decode_utxo(&v).map_err(corrupt("utxo")))
                    .transpose()
            })
            .collect()
    }

    pub fn address_stats(&self, owner: &PubKeyHash) -> Result<AddressStats, StoreError> {
        Ok(self
            .get(CF_ADDRESS_STATS, &owner.0)?
            .map(|v| AddressStats::decode(&v).map_err(corrupt("address stats")))
            .transpose()?
            .unwrap_or_default())
    }

    /// The stats of many addresses in one RocksDB call (a block touches
    /// hundreds), in the order asked.
    pub fn addresses_stats(&self, owners: &[PubKeyHash]) -> Result<Vec<AddressStats>, StoreError> {
        let cf = self.cf(CF_ADDRESS_STATS);
        self.db
            .multi_get_cf_opt(owners.iter().map(|o| (cf, o.0)), &self.read_options())
            .into_iter()
            .map(|r| {
                Ok(r.map_err(StoreError::from)?
                    .map(|v| AddressStats::decode(&v).map_err(corrupt("address stats")))
                    .transpose()?
                    .unwrap_or_default())
            })
            .collect()
    }

    fn owner_range(&self, owner: &PubKeyHash, after: Option<Vec<u8>>) -> ReadOptions {
        let mut opts = self.read_options();
        let mut upper = owner.0.to_vec();
        // The owner prefix plus one, as an exclusive bound (all 0xff wraps).
        let bound = upper.iter().rposition(|b| *b != 0xff).map(|i| {
            upper[i] += 1;
            upper.truncate(i + 1);
            upper
        });
        opts.set_iterate_lower_bound(after.unwrap_or_else(|| owner.0.to_vec()));
        if let Some(bound) = bound {
            opts.set_iterate_upper_bound(bound);
        }
        opts
    }

    /// UTXOs of `owner` in outpoint order, starting after `after`, at most
    /// `limit`: (outpoint, amount, height).
    pub fn address_utxos(
        &self,
        owner: &PubKeyHash,
        after: Option<&OutPoint>,
        limit: usize,
    ) -> Result<Vec<(OutPoint, Amount, u32)>, StoreError> {
        let start = after.map(|o| {
            let mut key = address_utxo_key(owner, o).to_vec();
            key.push(0); // strictly after
            key
        });
        let opts = self.owner_range(owner, start);
        let mut out = Vec::new();
        for item in self
            .iterator(CF_ADDRESS_UTXO, opts, IteratorMode::Start)
            .take(limit)
        {
            let (key, value) = item?;
            let (_, outpoint) =
                parse_address_utxo_key(&key).map_err(corrupt("address utxo key"))?;
            let (amount, height) = decode_address_utxo(&value).map_err(corrupt("address utxo"))?;
            out.push((outpoint, amount, height));
        }
        Ok(out)
    }

    /// Confirmed history of `owner`, newest first, strictly before the
    /// (height, position) cursor if given, at most `limit`.
    pub fn address_history(
        &self,
        owner: &PubKeyHash,
        before: Option<(u32, u32)>,
        limit: usize,
    ) -> Result<Vec<(u32, u32, Txid)>, StoreError> {
        let mut opts = self.read_options();
        opts.set_iterate_lower_bound(owner.0.to_vec());
        let upper = match before {
            Some((height, position)) => address_history_key(owner, height, position).to_vec(),
            None => {
                let mut k = owner.0.to_vec();
                k.extend_from_slice(&[0xff; 9]);
                k
            }
        };
        opts.set_iterate_upper_bound(upper);
        let mut out = Vec::new();
        for item in self
            .iterator(CF_ADDRESS_HISTORY, opts, IteratorMode::End)
            .take(limit)
        {
            let (key, value) = item?;
            let (_, height, position) =
                parse_address_history_key(&key).map_err(corrupt("address history key"))?;
            let txid = decode_txid_value(&value).map_err(corrupt("address history row"))?;
            out.push((height, position, txid));
        }
        Ok(out)
    }

    /// The heights from `first` to `last` at which `owner` has confirmed
    /// history, lowest first. One seek per height found, however many
    /// rows the owner has at each (a block can pay one address thousands
    /// of times).
    pub fn address_heights(
        &self,
        owner: &PubKeyHash,
        first: u32,
        last: u32,
    ) -> Result<Vec<u32>, StoreError> {
        let mut opts = self.read_options();
        opts.set_iterate_lower_bound(address_history_key(owner, first, 0).to_vec());
        // Just past every key at `last`.
        let mut upper = address_history_key(owner, last, u32::MAX).to_vec();
        upper.push(0);
        opts.set_iterate_upper_bound(upper);
        let mut iter = self
            .db
            .raw_iterator_cf_opt(self.cf(CF_ADDRESS_HISTORY), opts);
        iter.seek(address_history_key(owner, first, 0));
        let mut heights = Vec::new();
        while let Some(key) = iter.key() {
            let (_, height, _) =
                parse_address_history_key(key).map_err(corrupt("address history key"))?;
            heights.push(height);
            match height.checked_add(1) {
                Some(next) if next <= last => iter.seek(address_history_key(owner, next, 0)),
                _ => break,
            }
        }
        iter.status()?;
        Ok(heights)
    }

    pub fn tx_location(&self, txid: &Txid) -> Result<Option<TxLocation>, StoreError> {
        self.get(CF_TX_INDEX, &txid.0)?
            .map(|v| TxLocation::decode(&v).map_err(corrupt("tx location")))
            .transpose()
    }

    /// Who spent an output of the active chain, if a block of it did.
    pub fn spender(&self, outpoint: &OutPoint) -> Result<Option<Spender>, StoreError> {
        self.get(CF_SPENT_BY, &outpoint_key(outpoint))?
            .map(|v| Spender::decode(&v).map_err(corrupt("spender")))
            .transpose()
    }

    /// Looks up the spenders of many outputs in one RocksDB call.
    pub fn spenders(&self, outpoints: &[OutPoint]) -> Result<Vec<Option<Spender>>, StoreError> {
        let cf = self.cf(CF_SPENT_BY);
        let keys: Vec<[u8; 36]> = outpoints.iter().map(outpoint_key).collect();
        self.db
            .multi_get_cf_opt(keys.iter().map(|k| (cf, k)), &self.read_options())
            .into_iter()
            .map(|r| {
                r?.map(|v| Spender::decode(&v).map_err(corrupt("spender")))
                    .transpose()
            })
            .collect()
    }

    /// The owner whose script form hashes to `hash` (esplora's
    /// `scripthash`), if it has address stats.
    pub fn owner_of_script_hash(&self, hash: &[u8; 32]) -> Result<Option<PubKeyHash>, StoreError> {
        self.get(CF_SCRIPT_HASH, hash)?
            .map(|v| decode_owner_value(&v).map_err(corrupt("script hash owner")))
            .transpose()
    }

    /// Calls `f` for every spent-by row: (spent output, spender).
    pub fn for_each_spender(&self, mut f: impl FnMut(OutPoint, Spender)) -> Result<(), StoreError> {
        for item in self.iterator(CF_SPENT_BY, self.read_options(), IteratorMode::Start) {
            let (key, value) = item?;
            f(
                outpoint_from_key(&key).map_err(corrupt("spent-by key"))?,
                Spender::decode(&value).map_err(corrupt("spender"))?,
            );
        }
        Ok(())
    }

    /// Calls `f` for every script hash row: (hash, owner).
    pub fn for_each_script_hash(
        &self,
        mut f: impl FnMut(Vec<u8>, PubKeyHash),
    ) -> Result<(), StoreError> {
        for item in self.iterator(CF_SCRIPT_HASH, self.read_options(), IteratorMode::Start) {
            let (key, value) = item?;
            f(
                key.to_vec(),
                decode_owner_value(&value).map_err(corrupt("script hash owner"))?,
            );
        }
        Ok(())
    }

    /// Calls `f` for every UTXO in outpoint order.
    pub fn for_each_utxo(&self, mut f: impl FnMut(OutPoint, Utxo)) -> Result<(), StoreError> {
        for item in self.iterator(CF_UTXO, self.read_options(), IteratorMode::Start) {
            let (key, value) = item?;
            f(
                outpoint_from_key(&key).map_err(corrupt("utxo key"))?,
                decode_utxo(&value).map_err(corrupt("utxo"))?,
            );
        }
        Ok(())
    }

    /// Calls `f` for every address with stats.
    pub fn for_each_address_stats(
        &self,
        mut f: impl FnMut(PubKeyHash, AddressStats),
    ) -> Result<(), StoreError> {
        for item in self.iterator(CF_ADDRESS_STATS, self.read_options(), IteratorMode::Start) {
            let (key, value) = item?;
            let owner: [u8; 20] = key.as_ref().try_into().map_err(|_| StoreError::Corrupt {
                what: "address stats key",
                error: DecodeError::Invalid {
                    what: "address stats key",
                    reason: "not 20 bytes",
                },
            })?;
            f(
                PubKeyHash(owner),
                AddressStats::decode(&value).map_err(corrupt("address stats"))?,
            );
        }
        Ok(())
    }

    /// Calls `f` for every address UTXO row: (owner, outpoint, amount, height).
    pub fn for_each_address_utxo(
        &self,
        mut f: impl FnMut(PubKeyHash, OutPoint, Amount, u32),
    ) -> Result<(), StoreError> {
        for item in self.iterator(CF_ADDRESS_UTXO, self.read_options(), IteratorMode::Start) {
            let (key, value) = item?;
            let (owner, outpoint) =
                parse_address_utxo_key(&key).map_err(corrupt("address utxo key"))?;
            let (amount, height) = decode_address_utxo(&value).map_err(corrupt("address utxo"))?;
            f(owner, outpoint, amount, height);
        }
        Ok(())
    }
}

impl Store {
    /// Writes every memtable to disk, so the next open replays no log.
    pub fn flush(&self) -> Result<(), StoreError> {
        for name in ALL_CFS {
            self.db.flush_cf(self.cf(name))?;
        }
        Ok(())
    }

    /// Every key and value of one column family, in key order: for tests and
    /// tools that compare two stores byte for byte.
    pub fn dump_cf(&self, name: &str) -> Result<Vec<RawEntry>, StoreError> {
        let cf = self
            .db
            .cf_handle(name)
            .ok_or(StoreError::UnknownColumnFamily(name.to_string()))?;
        self.db
            .iterator_cf_opt(cf, self.read_options(), IteratorMode::Start)
            .map(|item| {
                let (k, v) = item?;
                Ok((k.to_vec(), v.to_vec()))
            })
            .collect()
    }

    /// Deletes one raw key, bypassing every invariant: only for tests that
    /// plant damage for `check` to find.
    #[doc(hidden)]
    pub fn damage_for_test(&self, cf: &str, key: &[u8]) -> Result<(), StoreError> {
        let cf = self.cf(cf);
        self.counted(|db| db.delete_cf(cf, key))
    }
}

impl UtxoView for Store {
    fn utxo(&self, outpoint: &OutPoint) -> Result<Option<Utxo>, UtxoViewError> {
        Ok(Store::utxo(self, outpoint)?)
    }
}

/// Typed writes collected into one atomic RocksDB batch.
pub struct StoreBatch<'a> {
    store: &'a Store,
    batch: WriteBatch,
}

impl StateWrites for StoreBatch<'_> {
    fn put(&mut self, cf: &'static str, key: &[u8], value: &[u8]) {
        self.batch.put_cf(self.store.cf(cf), key, value);
    }

    fn delete(&mut self, cf: &'static str, key: &[u8]) {
        self.batch.delete_cf(self.store.cf(cf), key);
    }
}

impl StoreBatch<'_> {
    /// Bytes of the batch as RocksDB encodes it.
    pub fn size_in_bytes(&self) -> usize {
        self.batch.size_in_bytes()
    }

    pub fn put_block_index(&mut self, hash: &BlockHash, entry: &BlockIndexEntry) {
        self.put(CF_BLOCK_INDEX, &hash.0, &entry.encode());
    }

    pub fn put_block(&mut self, hash: &BlockHash, block: &Block) {
        self.put(CF_BLOCK_DATA, &hash.0, &block.to_bytes());
    }

    /// The tip record and the digest's state, which always go together.
    pub fn put_tip(&mut self, tip: &ChainTipRecord, digest: &UtxoDigest) {
        debug_assert_eq!(tip.digest, digest.fingerprint());
        self.put(CF_META, meta::TIP, &tip.encode());
        self.put(CF_META, meta::UTXO_DIGEST, &encode_digest_state(digest));
    }
}
