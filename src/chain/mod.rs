//! The chain: validation plus chain selection, and the only writer of state.
//!
//! Work comes before cost: a block is stored only if its chain could become
//! the best one (a block nobody asked for must extend a chain with at least
//! the tip's work), and rules that depend on the local clock (a time too far
//! ahead) refuse a block for now without marking it invalid. Whenever a
//! branch has more cumulative work than the active chain,
//! the chain disconnects back to the fork point and connects the new branch.
//! Each block's rows go into a write-back cache that reaches RocksDB in one
//! atomic batch with the tip record: per block at the tip, many blocks at a
//! time during catch-up (see `flush`), so a crash at any instant leaves the
//! store at a block boundary. A block that fails validation while being
//! connected is marked invalid (with its descendants) and the chain returns
//! to the best valid branch. Blocks with an unknown parent wait in the
//! orphan pool.
//!
//! In a node the chain lives on its own thread (`task::ChainTask`), moved
//! there at start: nothing else can reach its state. Readers read what it
//! publishes after each change (`view`: store snapshots and the published
//! tip; `headers`: a copy of the block index and active chain); writers
//! hand it blocks or closures through a `ChainHandle`.

pub mod block_file;
pub mod block_index;
pub mod check;
pub mod delta;
pub mod flush;
pub mod headers;
pub mod orphans;
pub mod pending;
pub mod task;
pub mod view;

use std::cmp::Reverse;
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use primitive_types::U256;
use tokio::sync::broadcast;

use crate::collections::FastHashMap;
use crate::consensus::address::PubKeyHash;
use crate::consensus::block::Block;
use crate::consensus::hash::{BlockHash, Txid};
use crate::consensus::keys::{verify_signature, SignatureVerifier};
use crate::consensus::limits::MEDIAN_TIME_SPAN;
use crate::consensus::params::{ChainParams, Network};
use crate::consensus::pow::{median_time_past, next_work_required, work_from_compact};
use crate::consensus::transaction::OutPoint;
use crate::consensus::validation::{
    check_block, check_block_spends, check_header_contextual, check_header_hashed,
    verify_block_signatures, BlockContext, BlockError, SignatureChecks, Utxo, UtxoView,
    UtxoViewError,
};
use crate::encoding::Encode;
use crate::store::digest::UtxoDigest;
use crate::store::schema::{status, AddressStats, BlockIndexEntry, ChainTipRecord, TxLocation};
use crate::store::{BlockRows, StateCache, StateWrites, Store, StoreError, StoreOptions};
use block_index::BlockIndex;
use delta::{BlockDelta, StatsOutOfRange};
use flush::Flushing;
pub use headers::{DownloadPlan, HeaderTree, HeaderView};
use orphans::{OrphanPool, Source};
pub use task::{BlockJob, ChainHandle, ChainStopped, ChainTask};
pub use view::{ChainReader, ChainView, Published};

/// Capacity of the event channel. A subscriber that falls further behind
/// gets `Lagged` and must resynchronise from the store.
pub const EVENT_CHANNEL_CAPACITY: usize = 4096;

/// Something the chain did, for the mempool, relay, mirror and API.
#[derive(Debug, Clone)]
pub enum ChainEvent {
    BlockConnected {
        block: Arc<Block>,
        hash: BlockHash,
        height: u32,
    },
    BlockDisconnected {
        block: Arc<Block>,
        hash: BlockHash,
        height: u32,
    },
}

/// A failure of the node, not of a block.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("store is inconsistent: {0}")]
    Inconsistent(String),
    /// The file of bodies waiting for the store could not be read or
    /// removed (`pending`).
    #[error("pending-blocks.dat: {0}")]
    Pending(std::io::Error),
    /// The chain task has stopped (the node is shutting down).
    #[error("the chain task has stopped")]
    Stopped,
}

impl From<task::ChainStopped> for ChainError {
    fn from(_: task::ChainStopped) -> Self {
        ChainError::Stopped
    }
}

impl From<StatsOutOfRange> for ChainError {
    fn from(e: StatsOutOfRange) -> Self {
        ChainError::Inconsistent(e.to_string())
    }
}

/// What became of a block handed to `process_block`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockOutcome {
    /// Stored (and connected, if its branch has the most work).
    Accepted { hash: BlockHash, height: u32 },
    /// Already stored.
    Duplicate,
    /// Parent unknown: held in the orphan pool.
    Orphan,
    /// Broke a rule.
    Invalid(BlockError),
    /// Descends from a block that broke a rule.
    InvalidAncestor,
    /// Refused for now by a rule that depends on the local clock (its time
    /// is too far ahead). Nothing is stored or marked: the same block is
    /// accepted once the clock has caught up, and its sender did no wrong.
    Deferred(BlockError),
    /// Not requested and on a chain with less work than the tip (or below the
    /// minimum chain work, or too far ahead): dropped without being stored,
    /// since storing it would cost disk for no proof of work that matters.
    NotStored,
}

/// What one `Chain::activate_step` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActivationStep {
    /// The tip is on the most-work valid branch: nothing to do.
    Done,
    Connected(BlockHash),
    Disconnected(BlockHash),
    /// The block broke a rule while connecting; it and its descendants are
    /// marked invalid.
    Failed(BlockHash, BlockError),
}

/// Why headers were refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderRejection {
    Invalid(BlockError),
    InvalidAncestor,
}

impl HeaderRejection {
    /// The misbehaviour its sender is counted for.
    pub fn reason(&self) -> &'static str {
        match self {
            HeaderRejection::Invalid(_) => "invalid_header",
            HeaderRejection::InvalidAncestor => "header_on_invalid_chain",
        }
    }
}

/// What became of a batch of headers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeadersOutcome {
    /// Headers newly indexed.
    pub new: usize,
    /// The last header of the batch that is now indexed (new or known).
    pub last: Option<BlockHash>,
    /// The first header's parent is unknown.
    pub unconnected: bool,
    pub invalid: Option<HeaderRejection>,
    /// A header was too far ahead of the local clock: the batch stopped
    /// there, nothing was marked invalid, and it may be sent again later.
    pub deferred: bool,
}

/// An indexed block that a header chain builds on, with what validating its
/// children needs: its bits and work, and the times of it and its
/// ancestors (oldest first, ending with its own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderAnchor {
    pub hash: BlockHash,
    pub height: u32,
    pub bits: u32,
    pub chain_work: U256,
    pub times: Vec<u32>,
}

/// The active tip and the UTXO-set summary at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ChainTip {
    pub hash: BlockHash,
    pub height: u32,
    #[serde(serialize_with = "serialize_u256_hex")]
    pub chain_work: U256,
    pub time: u32,
    pub utxo_count: u64,
    pub utxo_total: u64,
    /// Fingerprint of the UTXO-set digest (see `store::digest`).
    pub utxo_digest: crate::consensus::hash::Hash256,
}

fn serialize_u256_hex<S: serde::Serializer>(v: &U256, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{v:064x}"))
}

pub fn unix_now() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs().min(u64::from(u32::MAX)) as u32)
}

/// The node's idea of the current time, for the one rule that depends on it
/// (how far ahead of now a block's time may be). Tests set it by hand.
#[derive(Debug, Clone, Default)]
pub enum Clock {
    #[default]
    System,
    Manual(Arc<AtomicU32>),
}

impl Clock {
    /// A clock that reads `now` until moved with `set`.
    pub fn manual(now: u32) -> Clock {
        Clock::Manual(Arc::new(AtomicU32::new(now)))
    }

    pub fn now(&self) -> u32 {
        match self {
            Clock::System => unix_now(),
            Clock::Manual(t) => t.load(Ordering::Relaxed),
        }
    }

    /// Moves a manual clock; a no-op on the system clock.
    pub fn set(&self, now: u32) {
        if let Clock::Manual(t) = self {
            t.store(now, Ordering::Relaxed);
        }
    }
}

/// Headers and blocks on a branch within this many blocks' worth of work
/// (at the tip's difficulty) below the tip still count as "near the tip":
/// they are indexed as competing branches. As Bitcoin Core's anti-DoS
/// threshold, 144 blocks; below that a branch must first show its work in a
/// headers pre-sync (see `p2p::headers_sync`).
pub const NEAR_TIP_MARGIN_BLOCKS: u64 = 144;

/// An unrequested block more than this many blocks above the tip is dropped:
/// it cannot be connected soon, and storing it would let anyone fill the
/// disk ahead of the chain (Bitcoin Core's `MIN_BLOCKS_TO_KEEP`).
pub const MAX_UNREQUESTED_BLOCKS_AHEAD: u32 = 288;

/// How many headers `blocks_to_download` reads per ancestor search while
/// scanning a peer's chain (Bitcoin Core fetches 128 at a time).
const DOWNLOAD_SCAN_STRETCH: u32 = 128;

/// Options of the chain beyond the store's.
#[derive(Debug, Clone)]
pub struct ChainOptions {
    pub store: StoreOptions,
    /// Wait for the write-ahead log on disk after every block (durable across
    /// power loss). Without it a process crash still loses nothing.
    pub sync_writes: bool,
    /// `Off` only in benchmarks that measure everything but signatures; the
    /// node always verifies.
    pub signature_checks: SignatureChecks,
    pub clock: Clock,
    /// Overrides the network's `minimum_chain_work` (as Bitcoin Core's
    /// `-minimumchainwork`).
    pub minimum_chain_work: Option<U256>,
    /// Byte limit of the write-back cache of chain state (`--dbcache-mb`,
    /// as Bitcoin Core's `-dbcache`); 0 writes every block as it connects.
    pub cache_bytes: usize,
}

impl Default for ChainOptions {
    fn default() -> Self {
        ChainOptions {
            store: StoreOptions::default(),
            sync_writes: true,
            signature_checks: SignatureChecks::On,
            clock: Clock::System,
            minimum_chain_work: None,
            cache_bytes: flush::DEFAULT_CACHE_BYTES,
        }
    }
}

/// A branch worth trying: most work first, then the one whose data arrived
/// first (as Bitcoin Core: among equal work, first seen wins), then the
/// lowest hash for blocks that were loaded at start.
type Candidate = (U256, Reverse<u64>, Reverse<BlockHash>);

pub struct Chain {
    params: &'static ChainParams,
    store: Store,
    sync_writes: bool,
    signature_checks: SignatureChecks,
    clock: Clock,
    /// The block index, the active chain (with blocks connected but not
    /// flushed) and the best header: the writer's copy.
    tree: HeaderTree,
    tip: ChainTipRecord,
    digest: UtxoDigest,
    /// Stored blocks, all of whose ancestors are stored and none invalid,
    /// with at least the tip's work: the branches worth trying.
    candidates: BTreeSet<Candidate>,
    orphans: OrphanPool,
    events: broadcast::Sender<ChainEvent>,
    /// Readers' handle: published to after every change.
    reader: ChainReader,
    /// Rows of the blocks connected or disconnected since the last flush
    /// the chain took in: `tip`, `digest` and `active` include them; the
    /// store does not yet, but for a frozen layer whose background write
    /// has landed and is not taken in yet (`flush::finish_background`).
    cache: StateCache,
    flushing: Flushing,
    /// Where connecting blocks has spent its time.
    stages: StageTimes,
}

/// Time the chain spent per stage of taking in blocks, since it opened: what
/// a catch-up is made of (`chain stage times` in the log at shutdown, and
/// `cargo bench --bench p2p`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StageTimes {
    pub blocks_connected: u64,
    /// Context-free checks and storing a block's body (`accept_block`).
    pub accept: Duration,
    /// Reading a block back to connect it.
    pub load: Duration,
    /// Looking up the outputs its inputs spend.
    pub utxo_reads: Duration,
    /// Contextual checks but signatures: spends, maturity, owners, amounts.
    pub validation: Duration,
    /// Signature checks, with the block's rows prepared alongside (the
    /// delta, the address stats it changes, the UTXO-set digest, the rows
    /// encoded): the wall time of both, on rayon's pool.
    pub signatures: Duration,
    /// The prepared rows into the write-back cache (UTXOs, address index,
    /// tx index, undo data, active chain), and a disconnected block's.
    pub indexes: Duration,
    /// Writing to RocksDB (flushes of the cache), and waiting for a
    /// background flush.
    pub writes: Duration,
    /// Busy time of background flushes, on their own thread (alongside
    /// the stages, so not a share of their time).
    pub background_writes: Duration,
    /// Blocks stored while a background flush held the store, written
    /// after it (`flush::Chain::store_block`).
    pub deferred_blocks: u64,
    /// Busy time within `signatures`, per half: the signature checks, and
    /// the rows' preparation, of which the digest (they overlap, so these
    /// are not shares of the wall time).
    pub signatures_busy: Duration,
    pub prepare_busy: Duration,
    pub digest_busy: Duration,
}

impl StageTimes {
    /// Logs the figures, one field per stage in microseconds.
    pub fn log(&self) {
        tracing::info!(
            blocks = self.blocks_connected,
            accept_us = self.accept.as_micros() as u64,
            load_us = self.load.as_micros() as u64,
            utxo_reads_us = self.utxo_reads.as_micros() as u64,
            validation_us = self.validation.as_micros() as u64,
            signatures_us = self.signatures.as_micros() as u64,
            indexes_us = self.indexes.as_micros() as u64,
            writes_us = self.writes.as_micros() as u64,
            signatures_busy_us = self.signatures_busy.as_micros() as u64,
            prepare_busy_us = self.prepare_busy.as_micros() as u64,
            digest_busy_us = self.digest_busy.as_micros() as u64,
            background_writes_us = self.background_writes.as_micros() as u64,
            deferred_blocks = self.deferred_blocks,
            "chain stage times"
        );
    }
}

/// Whether a block index entry read back from the store fits its key
/// (`hash`), its `parent`'s entry (height plus one, chain work plus its
/// own) and, at height 0, the network's `genesis`; what is wrong if not.
pub(crate) fn index_entry_fits(
    hash: &BlockHash,
    entry: &BlockIndexEntry,
    parent: Option<&BlockIndexEntry>,
    genesis: &BlockHash,
) -> Result<(), &'static str> {
    if entry.header.hash() != *hash {
        return Err("its header does not hash to its key");
    }
    let work = work_from_compact(entry.header.bits);
    if entry.height == 0 {
        if hash != genesis || entry.chain_work != work {
            return Err("a block at height 0 that is not this network's genesis");
        }
        return Ok(());
    }
    let Some(parent) = parent else {
        return Err("no indexed parent");
    };
    if parent.height.checked_add(1) != Some(entry.height) {
        return Err("its height is not its parent's plus one");
    }
    if parent.chain_work.checked_add(work) != Some(entry.chain_work) {
        return Err("its chain work is not its parent's plus its own");
    }
    Ok(())
}

/// The UTXO count and total after `delta` is applied to `tip` (`forward`)
/// or undone from it, in checked arithmetic: the tip record is read back
/// from the store, and a corrupt count is an error, not an overflow panic
/// on the chain task at every start.
fn moved_totals(
    tip: &ChainTipRecord,
    delta: &BlockDelta,
    forward: bool,
) -> Result<(u64, u64), ChainError> {
    let (created, spent) = (
        (delta.created.len() as u64, delta.created_sum()),
        (delta.spent.len() as u64, delta.spent_sum()),
    );
    let (add, sub) = if forward {
        (created, spent)
    } else {
        (spent, created)
    };
    let count = tip
        .utxo_count
        .checked_add(add.0)
        .and_then(|c| c.checked_sub(sub.0));
    let total = tip
        .utxo_total
        .checked_add(add.1)
        .and_then(|t| t.checked_sub(sub.1));
    count.zip(total).ok_or_else(|| {
        ChainError::Inconsistent(format!(
            "the tip record's UTXO count {} and total {} cannot move by block {}'s outputs (run `chaincore check`)",
            tip.utxo_count, tip.utxo_total, tip.hash
        ))
    })
}

/// Whether `block`'s header commits to exactly its transactions: the
/// merkle root matches and the tree is not mutated (CVE-2012-2459).
fn commits_to_its_body(block: &Block) -> bool {
    let (root, mutated) = crate::consensus::merkle::merkle_root(&block.txids());
    root == block.header.merkle_root && !mutated
}

impl Chain {
    /// Opens the chain in `data_dir` for `network`, creating it with the
    /// genesis block if new. Starts from what is on disk, replaying nothing;
    /// finishes any reorganisation a crash interrupted.
    pub fn open(
        data_dir: &Path,
        network: Network,
        options: ChainOptions,
    ) -> Result<Chain, ChainError> {
        let params = network.params();
        let store = Store::open(data_dir, network, &options.store)?;
        let (events, _) = broadcast::channel(EVENT_CHANNEL_CAPACITY);
        let mut chain = Chain {
            params,
            store: store.clone(),
            sync_writes: options.sync_writes,
            signature_checks: options.signature_checks,
            clock: options.clock.clone(),
            tree: HeaderTree::new(
                options
                    .minimum_chain_work
                    .unwrap_or(params.minimum_chain_work),
            ),
            tip: ChainTipRecord {
                hash: BlockHash::ZERO,
                height: 0,
                utxo_count: 0,
                utxo_total: 0,
                digest: crate::consensus::hash::Hash256::default(),
            },
            digest: UtxoDigest::default(),
            candidates: BTreeSet::new(),
            orphans: OrphanPool::default(),
            events,
            reader: ChainReader::new(
                store.clone(),
                params,
                options.clock.clone(),
                Published {
                    tip: (BlockHash::ZERO, 0),
                    tip_header: params.genesis_block().header,
                    best_header: (BlockHash::ZERO, 0),
                    orphans: Vec::new(),
                    index_len: 0,
                    cache: flush::CacheUsage::default(),
                    settled: true,
                    catching_up: false,
                },
            ),
            cache: StateCache::default(),
            flushing: Flushing::new(options.cache_bytes, data_dir),
            stages: StageTimes::default(),
        };
        match chain.store.tip()? {
            None => chain.init_genesis()?,
            Some(tip) => chain.load(tip)?,
        }
        chain.flushing.flushed_tip = Some(chain.tip());
        chain.recover_pending(data_dir)?;
        // Blocks stored above the tip on disk (connected after the last
        // flush before a crash, or never connected) connect here.
        let failures = chain.activate_best_chain()?;
        for (hash, error) in failures {
            tracing::warn!(%hash, %error, "stored block found invalid at start");
        }
        chain.settle()?;
        chain.publish();
        Ok(chain)
    }

    /// Bodies a kill kept from the store (received while a background
    /// flush ran, `pending`): accepted again as received blocks, so they
    /// are checked against their headers and stored with their index
    /// entries before the chain connects what is stored above its tip.
    fn recover_pending(&mut self, data_dir: &Path) -> Result<(), ChainError> {
        let recovered = pending::drain(data_dir, |block| {
            let outcome = self.accept_block(Arc::new(block), None, true)?;
            Ok(matches!(outcome, BlockOutcome::Accepted { .. }))
        })?;
        if recovered != pending::Recovered::default() {
            tracing::info!(
                stored = recovered.stored,
                skipped = recovered.skipped,
                torn = recovered.torn.as_deref().unwrap_or("no"),
                "blocks read back from the pending-blocks file"
            );
        }
        Ok(())
    }

    fn init_genesis(&mut self) -> Result<(), ChainError> {
        let genesis = self.params.genesis_block();
        let hash = genesis.hash();
        let entry = BlockIndexEntry {
            header: genesis.header,
            height: 0,
            chain_work: work_from_compact(genesis.header.bits),
            status: status::HEADER_VALID | status::HAVE_DATA | status::VALID,
            tx_count: genesis.transactions.len() as u32,
            size: genesis.encoded_len() as u32,
        };
        let delta = BlockDelta::compute(&genesis, genesis.txids(), 0, &[]);
        let mut digest = UtxoDigest::default();
        delta.update_digest(&mut digest, true);
        let tip = ChainTipRecord {
            hash,
            height: 0,
            utxo_count: delta.created.len() as u64,
            utxo_total: delta.created_sum(),
            digest: digest.fingerprint(),
        };
        let stats = self.delta_stats(&delta, true)?;
        let mut batch = self.store.batch();
        batch.put_block(&hash, &genesis);
        batch.put_block_index(&hash, &entry);
        write_delta(&mut batch, &delta, &stats, hash, 0, true);
        batch.put_undo(&hash, &[]);
        batch.put_active(0, &hash);
        batch.put_tip(&tip, &digest);
        self.store.write(batch, true)?;
        self.add_to_index(hash, entry);
        self.tree.index.set_linked(&hash, true);
        self.tree.active = vec![hash];
        self.tip = tip;
        self.digest = digest;
        Ok(())
    }

    fn load(&mut self, tip: ChainTipRecord) -> Result<(), ChainError> {
        // Parents before children: each entry's skip pointer needs its
        // ancestors indexed. Each entry is checked against its key and its
        // parent, as Bitcoin Core's LoadBlockIndex recomputes work: a
        // corrupt height or chain work would otherwise panic the index or
        // make a stale branch the best chain for good.
        let mut entries = self.store.all_block_index()?;
        entries.sort_by_key(|(_, e)| e.height);
        let genesis = self.params.genesis_hash();
        for (hash, entry) in entries {
            let parent = self.tree.index.get(&entry.header.prev_hash);
            if let Err(what) = index_entry_fits(&hash, &entry, parent, &genesis) {
                return Err(ChainError::Inconsistent(format!(
                    "indexed block {hash}: {what} (run `chaincore check`)"
                )));
            }
            self.add_to_index(hash, entry);
        }
        self.digest = self
            .store
            .utxo_digest_state()?
            .ok_or_else(|| ChainError::Inconsistent("the store has no UTXO digest".into()))?;
        if self.digest.fingerprint() != tip.digest {
            return Err(ChainError::Inconsistent(
                "the stored UTXO digest is not the one the tip record names".into(),
            ));
        }
        // Rebuild the active chain by walking back from the tip in memory
        // (the tip record's height, checked against the index first, sizes
        // it).
        if self.tree.index.get(&tip.hash).map(|e| e.height) != Some(tip.height) {
            return Err(ChainError::Inconsistent(format!(
                "the tip record's block {} is not indexed at its height {}",
                tip.hash, tip.height
            )));
        }
        let mut active = Vec::with_capacity(tip.height as usize + 1);
        let mut cursor = tip.hash;
        loop {
            let entry = self.tree.index.get(&cursor).ok_or_else(|| {
                ChainError::Inconsistent(format!("active block {cursor} missing from the index"))
            })?;
            active.push(cursor);
            if entry.height == 0 {
                break;
            }
            cursor = entry.header.prev_hash;
        }
        active.reverse();
        if active.len() != tip.height as usize + 1 || active[0] != self.params.genesis_hash() {
            return Err(ChainError::Inconsistent(
                "active chain does not reach genesis".into(),
            ));
        }
        self.tree.active = active;
        self.tip = tip;
        self.rebuild_candidates();
        Ok(())
    }

    /// Recomputes which blocks are linked (stored, valid, with every
    /// ancestor stored and valid) and makes those with more work than the
    /// tip candidates.
    fn rebuild_candidates(&mut self) {
        let mut by_height: Vec<(BlockHash, BlockIndexEntry)> =
            self.tree.index.iter().map(|(h, e)| (*h, *e)).collect();
        by_height.sort_by_key(|(_, e)| e.height);
        let tip_work = self.tip_entry().chain_work;
        for (hash, entry) in by_height {
            let linked = self.tree.is_active(&hash)
                || (BlockIndex::may_link(&entry)
                    && entry.height > 0
                    && self.tree.index.is_linked(&entry.header.prev_hash));
            self.tree.index.set_linked(&hash, linked);
            if linked && entry.chain_work > tip_work {
                self.candidates.insert(self.candidate(&hash));
            }
        }
    }

    fn candidate(&self, hash: &BlockHash) -> Candidate {
        (
            self.tree.index[hash].chain_work,
            Reverse(self.tree.index.sequence(hash)),
            Reverse(*hash),
        )
    }

    pub fn params(&self) -> &'static ChainParams {
        self.params
    }

    /// A read handle on the store, for components that only read. It holds
    /// the state at the last flush: the chain's own at the tip, behind it
    /// by the cached blocks during catch-up (whole and consistent either
    /// way: see `flush`). What must match the chain's tip exactly reads
    /// through the chain: `utxo`, `tx_location`, its `UtxoView`.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// A UTXO of the set at the tip (the cache's, then the store's).
    pub fn utxo(&self, outpoint: &OutPoint) -> Result<Option<Utxo>, StoreError> {
        self.cache.utxo(&self.store, outpoint)
    }

    /// Where a transaction of the active chain is (the cache's, then the
    /// store's).
    pub fn tx_location(&self, txid: &Txid) -> Result<Option<TxLocation>, StoreError> {
        self.cache.tx_location(&self.store, txid)
    }

    /// Whether no stored branch with more work than the tip waits to be
    /// connected: false in the middle of a reorganisation or a catch-up run
    /// by `activate_step`.
    pub fn settled(&self) -> bool {
        let tip_work = self.tip_entry().chain_work;
        self.candidates
            .iter()
            .next_back()
            .is_none_or(|(work, _, _)| *work <= tip_work)
    }

    /// Time spent per stage of taking in blocks since the chain opened.
    pub fn stage_times(&self) -> StageTimes {
        self.stages
    }

    pub fn subscribe(&self) -> broadcast::Receiver<ChainEvent> {
        self.events.subscribe()
    }

    /// The handle readers take views from (see `view`).
    pub fn reader(&self) -> ChainReader {
        self.reader.clone()
    }

    /// Publishes what readers cannot find in the store. Called at the end
    /// of every public method that changes the chain.
    fn publish(&mut self) {
        self.reader.headers().catch_up_with(&mut self.tree);
        self.reader.publish(Published {
            tip: (self.tip.hash, self.tip.height),
            tip_header: self.tip_entry().header,
            best_header: self.best_header(),
            orphans: self.orphans.hashes(),
            index_len: self.tree.index.len(),
            cache: self.cache_usage(),
            settled: self.settled(),
            catching_up: self.catching_up(),
        });
    }

    fn tip_entry(&self) -> &BlockIndexEntry {
        &self.tree.index[&self.tip.hash]
    }

    pub fn tip(&self) -> ChainTip {
        let entry = self.tip_entry();
        ChainTip {
            hash: self.tip.hash,
            height: self.tip.height,
            chain_work: entry.chain_work,
            time: entry.header.time,
            utxo_count: self.tip.utxo_count,
            utxo_total: self.tip.utxo_total,
            utxo_digest: self.tip.digest,
        }
    }

    pub fn height(&self) -> u32 {
        self.tip.height
    }

    pub fn hash_at(&self, height: u32) -> Option<BlockHash> {
        self.tree.hash_at(height)
    }

    pub fn index_entry(&self, hash: &BlockHash) -> Option<&BlockIndexEntry> {
        self.tree.index.get(hash)
    }

    /// Number of indexed headers.
    pub fn index_len(&self) -> usize {
        self.tree.index.len()
    }

    /// The writer's block index and active chain (readers have
    /// `ChainReader::headers`).
    pub fn tree(&self) -> &HeaderTree {
        &self.tree
    }

    /// The clock the chain judges block times by.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    pub fn orphan_count(&self) -> usize {
        self.orphans.len()
    }

    pub fn orphan_hashes(&self) -> Vec<BlockHash> {
        self.orphans.hashes()
    }

    /// The context a child of `parent` is validated in.
    pub fn context_after(&self, parent: &BlockHash) -> Option<BlockContext> {
        let parent_entry = self.tree.index.get(parent)?;
        let height = parent_entry.height + 1;
        let mut times = Vec::with_capacity(MEDIAN_TIME_SPAN);
        let mut cursor = Some(*parent);
        while let Some(hash) = cursor {
            if times.len() == MEDIAN_TIME_SPAN {
                break;
            }
            let entry = &self.tree.index[&hash];
            times.push(entry.header.time);
            cursor = (entry.height > 0).then_some(entry.header.prev_hash);
        }
        let expected_bits =
            next_work_required(self.params, height, parent_entry.header.bits, |h| {
                self.tree
                    .ancestor(parent, h)
                    .map_or(0, |a| self.tree.index[&a].header.time)
            });
        Some(BlockContext {
            height,
            expected_bits,
            median_time_past: median_time_past(&times),
            now: self.clock.now(),
        })
    }

    /// Validates and stores a block the node asked for or produced itself
    /// (mined, submitted, imported), switching to its branch if it has the
    /// most work, then connects any orphans it was waiting for.
    pub fn process_block(
        &mut self,
        block: Arc<Block>,
        source: Source,
    ) -> Result<BlockOutcome, ChainError> {
        self.process_new_block(block, source, true)
    }

    /// As `process_block`; `requested` says whether the node asked for this
    /// block. An unrequested block is stored only if it extends a chain with
    /// at least the tip's work and the minimum chain work, and is not too far
    /// ahead of the tip (Bitcoin Core's rule in `AcceptBlock`): anything
    /// else is dropped before it costs disk.
    pub fn process_new_block(
        &mut self,
        block: Arc<Block>,
        source: Source,
        requested: bool,
    ) -> Result<BlockOutcome, ChainError> {
        let outcome = self.accept_new_block(block, source, requested)?;
        let mut failures = Vec::new();
        loop {
            match self.activate_step()? {
                ActivationStep::Done => break,
                ActivationStep::Failed(hash, error) => failures.push((hash, error)),
                ActivationStep::Connected(_) | ActivationStep::Disconnected(_) => {}
            }
        }
        // The `Done` step published the settled state.
        Ok(self.final_outcome(outcome, &failures))
    }

    /// The first half of `process_new_block`, for a caller that connects
    /// blocks one `activate_step` at a time (the chain task, which lets
    /// readers and the network in between): validates and stores the block
    /// and any orphans waiting for it, connects nothing. `Accepted` here
    /// means stored; `final_outcome` gives the final outcome once activation ran.
    pub fn accept_new_block(
        &mut self,
        block: Arc<Block>,
        source: Source,
        requested: bool,
    ) -> Result<BlockOutcome, ChainError> {
        let outcome = self.accept_block(block, source, requested)?;
        if let BlockOutcome::Accepted { hash, .. } = outcome {
            let mut queue = vec![hash];
            while let Some(parent) = queue.pop() {
                for (child, child_source) in self.orphans.take_children(&parent) {
                    // Only blocks the node asked for or produced are
                    // pooled (see `accept_block`).
                    if let BlockOutcome::Accepted { hash, .. } =
                        self.accept_block(child, child_source, true)?
                    {
                        queue.push(hash);
                    }
                }
            }
        }
        self.settle()?;
        self.publish();
        Ok(outcome)
    }

    /// The final outcome of a block `accept_new_block` stored, once
    /// activation has run: invalid if it failed to connect (`failures`),
    /// an invalid ancestor if one of its ancestors did.
    pub fn final_outcome(
        &self,
        outcome: BlockOutcome,
        failures: &[(BlockHash, BlockError)],
    ) -> BlockOutcome {
        let BlockOutcome::Accepted { hash, .. } = outcome else {
            return outcome;
        };
        if let Some((_, error)) = failures.iter().find(|(h, _)| *h == hash) {
            return BlockOutcome::Invalid(error.clone());
        }
        if self
            .tree
            .index
            .get(&hash)
            .is_some_and(BlockIndexEntry::is_failed)
        {
            return BlockOutcome::InvalidAncestor;
        }
        outcome
    }

    /// One step toward the most-work valid branch: disconnects the tip if it
    /// is not on that branch, or connects the branch's next block. The
    /// caller repeats until `Done`, and may let others at the chain between
    /// steps (each step leaves the store at a block boundary).
    pub fn activate_step(&mut self) -> Result<ActivationStep, ChainError> {
        let tip_work = self.tip_entry().chain_work;
        self.candidates.retain(|(work, _, _)| *work > tip_work);
        let Some(&(_, _, Reverse(best))) = self.candidates.iter().next_back() else {
            // Done: a reorganisation is over, and at the tip nothing stays
            // in the cache.
            self.settle()?;
            self.publish();
            return Ok(ActivationStep::Done);
        };
        let step = if self.tree.is_ancestor(&self.tip.hash, &best) {
            let next = self
                .tree
                .ancestor(&best, self.tip.height + 1)
                .expect("a descendant of the tip has an ancestor one above it");
            match self.connect_tip(next)? {
                Ok(()) => ActivationStep::Connected(next),
                Err(error) => {
                    tracing::warn!(hash = %next, %error, "block failed validation while connecting");
                    self.mark_failed(next)?;
                    ActivationStep::Failed(next, error)
                }
            }
        } else {
            // A reorganisation: written block by block until it is over
            // (see `flush`).
            self.flushing.reorganising = true;
            let hash = self.disconnect_tip()?;
            self.candidates.insert(self.candidate(&hash));
            ActivationStep::Disconnected(hash)
        };
        self.publish();
        Ok(step)
    }

    fn accept_block(
        &mut self,
        block: Arc<Block>,
        source: Source,
        requested: bool,
    ) -> Result<BlockOutcome, ChainError> {
        let started = Instant::now();
        let outcome = self.accept_block_untimed(block, source, requested);
        self.stages.accept += started.elapsed();
        outcome
    }

    fn accept_block_untimed(
        &mut self,
        block: Arc<Block>,
        source: Source,
        requested: bool,
    ) -> Result<BlockOutcome, ChainError> {
        let hash = block.hash();
        if let Some(entry) = self.tree.index.get(&hash) {
            if entry.is_failed() {
                return Ok(BlockOutcome::InvalidAncestor);
            }
            if entry.has(status::HAVE_DATA) {
                return Ok(BlockOutcome::Duplicate);
            }
        }
        if self.orphans.contains(&hash) {
            return Ok(BlockOutcome::Orphan);
        }
        // Before the body is checked: a stranger's block that would not be
        // kept costs no merkle tree (and may be resent at will). Only blocks
        // the node asked for or produced wait for their parent; a
        // stranger's block that connects to nothing is not kept (the peer
        // is asked for headers instead).
        if !requested {
            // Its own proof of work first (one hash): a block without it is
            // invalid whatever its chain, and its sender is blamed.
            if let Err(error) = check_header_hashed(&block.header, &hash, self.params) {
                return Ok(BlockOutcome::Invalid(error));
            }
            match self.tree.unrequested_block_wanted(&block.header) {
                Some(true) => {}
                Some(false) => {
                    tracing::debug!(%hash, "unrequested block on a low-work chain: dropped");
                    return Ok(BlockOutcome::NotStored);
                }
                None => return Ok(BlockOutcome::Orphan),
            }
        }
        // Its header against its parent's context before its body (Bitcoin
        // Core checks the body first, in ProcessNewBlock, and caches the
        // result): a block with the wrong difficulty (the lowest one mined
        // in a second, and resent at will, from a peer or `POST
        // /mining/submit`) costs one header check, not a merkle tree and
        // every transaction's checks on the chain task. A block too far in
        // the future is deferred before its body is looked at, whatever
        // its body. A block whose parent failed, or that breaks a
        // contextual rule, is refused without being indexed (as its header
        // would be): either costs its sender only the lowest difficulty's
        // work, and an entry would stay in the index for good.
        let parent = self.tree.index.get(&block.header.prev_hash).copied();
        if let Some(parent) = &parent {
            if parent.is_failed() {
                return Ok(BlockOutcome::InvalidAncestor);
            }
            let ctx = self
                .context_after(&block.header.prev_hash)
                .expect("parent is in the index");
            match check_header_contextual(&block.header, &ctx, self.params) {
                Ok(()) => {}
                // The clock may be behind, or the block a little early:
                // nothing is cached, so the same block is accepted once it
                // is in time.
                Err(error @ BlockError::TimeTooNew { .. }) => {
                    return Ok(BlockOutcome::Deferred(error));
                }
                Err(error) => return Ok(BlockOutcome::Invalid(error)),
            }
        }
        if let Err(error) = check_block(&block, self.params) {
            // A body error marks the header invalid only when the header
            // commits to this very body (its merkle root matches, the tree
            // unmutated), so that no body can be valid for it; and only
            // when it is indexed, its work real (it passed the header
            // rules): it is then neither asked for again nor kept as the
            // best header, as in Bitcoin Core. Any other failure may be a
            // different body than the honest one for the same header.
            if self.tree.index.contains(&hash) && commits_to_its_body(&block) {
                tracing::info!(%hash, %error, "a block's header commits to an invalid body: marked failed");
                self.mark_failed(hash)?;
                self.publish();
            }
            return Ok(BlockOutcome::Invalid(error));
        }
        let Some(parent) = parent else {
            // Asked for (unrequested ones left above): it waits for its
            // parent, whose context it is checked against when it comes.
            self.orphans.insert(block, source, Instant::now());
            return Ok(BlockOutcome::Orphan);
        };
        let height = parent.height + 1;
        let mut entry = BlockIndexEntry {
            header: block.header,
            height,
            chain_work: parent.chain_work + work_from_compact(block.header.bits),
            status: status::HEADER_VALID,
            tx_count: block.transactions.len() as u32,
            size: block.encoded_len() as u32,
        };
        entry.status |= status::HAVE_DATA;
        // Indexed here means its header is on disk (headers-first).
        let header_stored = self.tree.index.contains(&hash);
        self.store_block(hash, &block, entry, header_stored)?;
        if self.tree.index.contains(&hash) {
            self.tree.index.update(&hash, |e| *e = entry);
        } else {
            self.add_to_index(hash, entry);
        }
        self.tree.index.mark_received(&hash);
        self.link_descendants(hash);
        Ok(BlockOutcome::Accepted { hash, height })
    }

    /// Marks a block (and its descendants) invalid by the operator's decision,
    /// as Bitcoin Core's `invalidateblock`: if it is on the active chain, the
    /// chain disconnects down to its parent and moves to the best other
    /// valid branch.
    pub fn invalidate_block(&mut self, hash: &BlockHash) -> Result<(), ChainError> {
        let Some(entry) = self.tree.index.get(hash).copied() else {
            return Err(ChainError::Inconsistent(format!("unknown block {hash}")));
        };
        if entry.height == 0 {
            return Err(ChainError::Inconsistent(
                "genesis cannot be invalidated".into(),
            ));
        }
        if self.tree.is_active(hash) {
            self.flushing.reorganising = true;
            while self.tip.height >= entry.height {
                let h = self.disconnect_tip()?;
                self.candidates.insert(self.candidate(&h));
            }
        }
        self.mark_failed(*hash)?;
        // Blocks below the new tip on other branches may now be the best.
        self.candidates.clear();
        self.rebuild_candidates();
        self.activate_best_chain()?;
        self.settle()?;
        self.publish();
        Ok(())
    }

    fn add_to_index(&mut self, hash: BlockHash, entry: BlockIndexEntry) {
        self.tree.index.insert(hash, entry);
        let best = self
            .tree
            .index
            .get(&self.tree.best_header)
            .map(|e| e.chain_work);
        if !entry.is_failed() && best.is_none_or(|w| entry.chain_work > w) {
            self.tree.best_header = hash;
        }
    }

    /// Recomputes the best header after blocks were marked invalid.
    fn recompute_best_header(&mut self) {
        self.tree.best_header = self
            .tree
            .index
            .iter()
            .filter(|(_, e)| !e.is_failed())
            .max_by_key(|(h, e)| {
                (
                    e.chain_work,
                    e.has(status::HAVE_DATA),
                    Reverse(self.tree.index.sequence(h)),
                    Reverse(**h),
                )
            })
            .map(|(h, _)| *h)
            .expect("genesis is never invalid");
    }

    /// The most-work valid header known, and its height.
    pub fn best_header(&self) -> (BlockHash, u32) {
        self.tree.best_header()
    }

    /// Validates and indexes headers (headers-first sync). Each header must
    /// extend a known one. Stops at the first invalid or unconnected header.
    pub fn process_headers(
        &mut self,
        headers: &[crate::consensus::block::BlockHeader],
    ) -> Result<HeadersOutcome, ChainError> {
        let mut outcome = HeadersOutcome::default();
        let store = self.store.clone();
        let mut batch = store.batch();
        // Whether the batch changes the index: one that adds nothing (all
        // known, unconnected, or refused before any entry) writes nothing
        // and publishes nothing.
        let mut changed = false;
        for header in headers {
            let hash = header.hash();
            if let Some(entry) = self.tree.index.get(&hash) {
                if entry.is_failed() {
                    outcome.invalid = Some(HeaderRejection::InvalidAncestor);
                    break;
                }
                outcome.last = Some(hash);
                continue;
            }
            if let Err(error) = crate::consensus::validation::check_header(header, self.params) {
                outcome.invalid = Some(HeaderRejection::Invalid(error));
                break;
            }
            let Some(parent) = self.tree.index.get(&header.prev_hash).copied() else {
                outcome.unconnected = true;
                break;
            };
            if parent.is_failed() {
                outcome.invalid = Some(HeaderRejection::InvalidAncestor);
                break;
            }
            let ctx = self
                .context_after(&header.prev_hash)
                .expect("parent is indexed");
            let entry = BlockIndexEntry {
                header: *header,
                height: parent.height + 1,
                chain_work: parent.chain_work + work_from_compact(header.bits),
                status: status::HEADER_VALID,
                tx_count: 0,
                size: 0,
            };
            if let Err(error) = check_header_contextual(header, &ctx, self.params) {
                if matches!(error, BlockError::TimeTooNew { .. }) {
                    // Clock-dependent: not cached, the header may come again.
                    outcome.deferred = true;
                    break;
                }
                // Not indexed, as Bitcoin Core's AcceptBlockHeader: a
                // header that meets its own bits at the lowest difficulty
                // (about 2^20 hashes) and breaks a contextual rule would
                // otherwise take index memory and disk for good.
                outcome.invalid = Some(HeaderRejection::Invalid(error));
                break;
            }
            batch.put_block_index(&hash, &entry);
            self.add_to_index(hash, entry);
            changed = true;
            outcome.new += 1;
            outcome.last = Some(hash);
        }
        if changed {
            store.write(batch, self.sync_writes)?;
            self.publish();
        }
        Ok(outcome)
    }

    /// Marks `hash` and its stored descendants linked if its parent is, and
    /// makes those with more work than the tip candidates.
    fn link_descendants(&mut self, hash: BlockHash) {
        let entry = self.tree.index[&hash];
        if entry.height == 0 || !self.tree.index.is_linked(&entry.header.prev_hash) {
            return;
        }
        let tip_work = self.tip_entry().chain_work;
        let mut queue = vec![hash];
        while let Some(h) = queue.pop() {
            let entry = self.tree.index[&h];
            if !BlockIndex::may_link(&entry) {
                continue;
            }
            self.tree.index.set_linked(&h, true);
            if entry.chain_work > tip_work && !self.tree.is_active(&h) {
                self.candidates.insert(self.candidate(&h));
            }
            queue.extend_from_slice(self.tree.index.children(&h));
        }
    }

    /// Marks `hash` invalid and every descendant as having an invalid parent.
    fn mark_failed(&mut self, hash: BlockHash) -> Result<(), ChainError> {
        // A background write may hold an older copy of an entry marked
        // here: it must land first, not over this one (a failed one's
        // layer is written with the current entries); so must deferred
        // blocks' bodies, before any entry of theirs says FAILED.
        self.finish_background(true);
        self.write_deferred()?;
        let mut batch = self.store.batch();
        let mut queue = vec![(hash, status::FAILED)];
        while let Some((h, flag)) = queue.pop() {
            if !self.tree.index.contains(&h) {
                continue;
            }
            self.candidates.remove(&self.candidate(&h));
            self.tree.index.update(&h, |e| e.status |= flag);
            self.tree.index.set_linked(&h, false);
            batch.put_block_index(&h, &self.tree.index[&h]);
            queue.extend(
                self.tree
                    .index
                    .children(&h)
                    .iter()
                    .map(|c| (*c, status::FAILED_PARENT)),
            );
        }
        self.store.write(batch, self.sync_writes)?;
        self.recompute_best_header();
        Ok(())
    }

    /// Switches to the most-work valid branch among the candidates, one block
    /// at a time. Returns the blocks found invalid on the way.
    fn activate_best_chain(&mut self) -> Result<Vec<(BlockHash, BlockError)>, ChainError> {
        let mut failures = Vec::new();
        loop {
            match self.activate_step()? {
                ActivationStep::Done => return Ok(failures),
                ActivationStep::Failed(hash, error) => failures.push((hash, error)),
                ActivationStep::Connected(_) | ActivationStep::Disconnected(_) => {}
            }
        }
    }

    /// The stats of every address a block touches once it is connected
    /// (or disconnected), read through the cache: computed before anything
    /// is written, so a failure leaves no half-written block behind.
    fn delta_stats(
        &self,
        delta: &BlockDelta,
        connect: bool,
    ) -> Result<Vec<(PubKeyHash, AddressStats)>, ChainError> {
        let owners: Vec<PubKeyHash> = delta.stats.keys().copied().collect();
        let read = self.cache.addresses_stats(&self.store, &owners)?;
        let mut out = Vec::with_capacity(delta.stats.len());
        for ((owner, change), current) in delta.stats.iter().zip(read) {
            let mut stats = current;
            if connect {
                change.apply(&mut stats, *owner)?;
            } else {
                change.revert(&mut stats, *owner)?;
            }
            out.push((*owner, stats));
        }
        Ok(out)
    }

    /// Fully validates the stored block `hash` (a child of the tip) against
    /// the UTXO set and connects it in one batch. The outer error is the
    /// node's; the inner one is the block's.
    fn connect_tip(&mut self, hash: BlockHash) -> Result<Result<(), BlockError>, ChainError> {
        let mut clock = Instant::now();
        let mut lap = |stage: &mut Duration| {
            let now = Instant::now();
            *stage += now - clock;
            clock = now;
        };
        let block = self
            .stored_block(&hash)?
            .ok_or_else(|| ChainError::Inconsistent(format!("block {hash} has no data")))?;
        let entry = self.tree.index[&hash];
        if entry.header.prev_hash != self.tip.hash {
            return Err(ChainError::Inconsistent(format!(
                "block {hash} does not extend the tip"
            )));
        }
        // The block's time was judged against the clock when it was
        // accepted, where a time too new defers a block and never fails
        // it; connecting judges it by the chain alone, so a clock stepped
        // back since (NTP, a resumed machine) cannot mark it failed.
        let ctx = BlockContext {
            now: u32::MAX,
            ..self
                .context_after(&self.tip.hash)
                .expect("the tip is in the index")
        };
        lap(&mut self.stages.load);
        let view = self.prefetch_inputs(&block)?;
        lap(&mut self.stages.utxo_reads);
        let checked = match check_block_spends(&block, &ctx, self.params, &view) {
            Ok(checked) => checked,
            Err(BlockError::UtxoView(e)) => return Err(ChainError::Inconsistent(e.to_string())),
            Err(error) => return Ok(Err(error)),
        };
        lap(&mut self.stages.validation);
        let height = entry.height;
        // The signatures are checked while the block's rows are prepared:
        // the delta, the address stats it changes (read through the cache),
        // the digest and the encoded rows, all pure until inserted below.
        // Both halves run on rayon's pool, so the index work fills the core
        // that the signature checks would leave idle between blocks.
        let verify = match self.signature_checks {
            SignatureChecks::On => Some(verify_signature as SignatureVerifier),
            SignatureChecks::Off => None,
        };
        let (verified, prepared) = rayon::join(
            || {
                let started = Instant::now();
                let verdict =
                    verify.map_or(Ok(()), |v| verify_block_signatures(&block, &checked, v));
                (verdict, started.elapsed())
            },
            || {
                let started = Instant::now();
                let delta = BlockDelta::compute(
                    &block,
                    checked.txids().to_vec(),
                    height,
                    &checked.spends.spent,
                );
                let (stats, (digest, digest_time)) = rayon::join(
                    || self.delta_stats(&delta, true),
                    || {
                        let started = Instant::now();
                        let mut digest = self.digest.clone();
                        delta.update_digest(&mut digest, true);
                        (digest, started.elapsed())
                    },
                );
                // The rows, encoded here; the chain's thread only inserts
                // them once the signatures are known good.
                let rows = stats.map(|stats| {
                    let mut rows = BlockRows::default();
                    write_delta(&mut rows, &delta, &stats, hash, height, true);
                    rows.put_undo(&hash, &checked.spends.spent);
                    rows.put_active(height, &hash);
                    rows
                });
                (delta, rows, digest, digest_time, started.elapsed())
            },
        );
        lap(&mut self.stages.signatures);
        let (verdict, signatures_busy) = verified;
        let (delta, rows, digest, digest_busy, prepare_busy) = prepared;
        self.stages.signatures_busy += signatures_busy;
        self.stages.prepare_busy += prepare_busy;
        self.stages.digest_busy += digest_busy;
        if let Err(error) = verdict {
            return Ok(Err(error));
        }
        let rows = rows?;
        let (utxo_count, utxo_total) = moved_totals(&self.tip, &delta, true)?;
        let tip = ChainTipRecord {
            hash,
            height,
            utxo_count,
            utxo_total,
            digest: digest.fingerprint(),
        };
        let mut connected = entry;
        connected.status |= status::VALID;
        self.cache.take_rows(rows);
        self.cache.mark_index_changed(hash);
        self.tree.index.update(&hash, |e| *e = connected);
        self.tree.active.push(hash);
        self.tip = tip;
        self.digest = digest;
        lap(&mut self.stages.indexes);
        self.stages.blocks_connected += 1;
        tracing::debug!(%hash, height, txs = block.transactions.len(), "connected block");
        // The block is connected whether or not the flush works (the cache
        // keeps it for the next one): its event goes out either way.
        let flushed = self.block_cached();
        let _ = self.events.send(ChainEvent::BlockConnected {
            block,
            hash,
            height,
        });
        flushed?;
        Ok(Ok(()))
    }

    /// The UTXOs a block's inputs refer to: from the cache, the rest read
    /// in one multi-get.
    fn prefetch_inputs(&self, block: &Block) -> Result<FastHashMap<OutPoint, Utxo>, ChainError> {
        let outpoints: Vec<_> = block
            .transactions
            .iter()
            .skip(1)
            .flat_map(|tx| tx.inputs.iter().map(|i| i.prevout()))
            .collect();
        let found = self.cache.utxos(&self.store, &outpoints)?;
        Ok(outpoints
            .into_iter()
            .zip(found)
            .filter_map(|(o, u)| u.map(|u| (o, u)))
            .collect())
    }

    /// Disconnects the tip, restoring what it spent from its undo data (its
    /// rows go to the cache, as a connected block's). Returns its hash.
    fn disconnect_tip(&mut self) -> Result<BlockHash, ChainError> {
        let hash = self.tip.hash;
        let entry = self.tree.index[&hash];
        if entry.height == 0 {
            return Err(ChainError::Inconsistent("cannot disconnect genesis".into()));
        }
        let block = self
            .stored_block(&hash)?
            .ok_or_else(|| ChainError::Inconsistent(format!("tip {hash} has no data")))?;
        let undo = self
            .cache
            .undo(&self.store, &hash)?
            .ok_or_else(|| ChainError::Inconsistent(format!("tip {hash} has no undo data")))?;
        BlockDelta::check_undo(&block, &undo).map_err(|e| {
            ChainError::Inconsistent(format!(
                "the undo data of {hash} does not fit its block: {e}"
            ))
        })?;
        let height = entry.height;
        let delta = BlockDelta::compute(&block, block.txids(), height, &undo);
        let stats = self.delta_stats(&delta, false)?;
        let mut digest = self.digest.clone();
        delta.update_digest(&mut digest, false);
        let parent = entry.header.prev_hash;
        let (utxo_count, utxo_total) = moved_totals(&self.tip, &delta, false)?;
        let tip = ChainTipRecord {
            hash: parent,
            height: height - 1,
            utxo_count,
            utxo_total,
            digest: digest.fingerprint(),
        };
        write_delta(&mut self.cache, &delta, &stats, hash, height, false);
        self.cache.delete_undo(&hash);
        self.cache.delete_active(height);
        self.tree.active.pop();
        self.tip = tip;
        self.digest = digest;
        tracing::info!(%hash, height, "disconnected block");
        let flushed = self.block_cached();
        let _ = self.events.send(ChainEvent::BlockDisconnected {
            block,
            hash,
            height,
        });
        flushed?;
        Ok(hash)
    }
}

/// Writes a block's rows (`stats` from `Chain::delta_stats`) into a cache
/// or a batch: what it creates and its history and tx index rows when
/// connecting, the reverse when disconnecting.
fn write_delta(
    writes: &mut impl StateWrites,
    delta: &BlockDelta,
    stats: &[(PubKeyHash, AddressStats)],
    hash: BlockHash,
    height: u32,
    connect: bool,
) {
    if connect {
        for (outpoint, utxo) in &delta.spent {
            writes.delete_utxo(outpoint, utxo);
        }
        for (outpoint, utxo) in &delta.created {
            writes.put_utxo(outpoint, utxo);
        }
        for row in &delta.history {
            writes.put_history(&row.owner, height, row.position, &row.txid);
        }
        for (outpoint, spender) in &delta.spenders {
            writes.put_spender(outpoint, spender);
        }
        for (position, txid) in delta.txids.iter().enumerate() {
            writes.put_tx_location(
                txid,
                &TxLocation {
                    block: hash,
                    height,
                    position: position as u32,
                },
            );
        }
    } else {
        for (outpoint, utxo) in &delta.created {
            writes.delete_utxo(outpoint, utxo);
        }
        for (outpoint, utxo) in &delta.spent {
            writes.put_utxo(outpoint, utxo);
        }
        for row in &delta.history {
            writes.delete_history(&row.owner, height, row.position);
        }
        for txid in &delta.txids {
            writes.delete_tx_location(txid);
        }
        for (outpoint, _) in &delta.spenders {
            writes.delete_spender(outpoint);
        }
    }
    for (owner, stats) in stats {
        writes.put_address_stats(owner, stats);
        // The script hash row lives while the owner has stats: created with
        // its first output, deleted when a disconnect takes that away.
        if connect {
            let first = delta.stats.get(owner).is_some_and(|d| {
                d.funded_txo_count == stats.funded_txo_count && d.funded_txo_count > 0
            });
            if first {
                writes.put_script_hash(owner);
            }
        } else if stats.is_empty() {
            writes.delete_script_hash(owner);
        }
    }
}

/// The UTXO set at the tip, as validation of a block on the tip (a
/// template, a transaction) must see it.
impl UtxoView for Chain {
    fn utxo(&self, outpoint: &OutPoint) -> Result<Option<Utxo>, UtxoViewError> {
        Ok(Chain::utxo(self, outpoint)?)
    }
}

impl Drop for Chain {
    /// A clean shutdown writes the cache, then flushes the memtables so the
    /// next start replays no write-ahead log (a crash replays it, losing
    /// nothing that was flushed).
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            tracing::warn!(error = %e, "writing the chain state cache at shutdown failed");
        }
        if let Err(e) = self.store.flush() {
            tracing::warn!(error = %e, "flushing the store at shutdown failed");
        }
    }
}

#[cfg(test)]
mod tests;
