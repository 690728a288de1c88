//! Readers' side of the chain: consistent views that never wait for the
//! writer.
//!
//! The chain is the only writer. Everything else (REST, the mirror, the
//! mempool's checks of a submitted transaction) reads a [`ChainView`]: a
//! RocksDB snapshot of the store plus the tip record read from that same
//! snapshot, so every answer built from one view describes one block
//! boundary even while the writer connects the next block. What is not in
//! the store (the best header known, the orphan pool) the writer publishes
//! after each change as an immutable [`Published`] value that readers clone
//! by pointer.

use std::sync::{Arc, RwLock};

use super::{ChainError, ChainTip, Clock};
use crate::consensus::hash::BlockHash;
use crate::consensus::limits::MEDIAN_TIME_SPAN;
use crate::consensus::params::ChainParams;
use crate::consensus::pow::median_time_past;
use crate::consensus::pow::next_work_required;
use crate::consensus::validation::BlockContext;
use crate::store::schema::BlockIndexEntry;
use crate::store::Store;

/// What the writer knows beyond the store, as of its last change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The writer's active tip: its hash, height and header. With blocks
    /// connected but not yet flushed it is ahead of what views read.
    pub tip: (BlockHash, u32),
    pub tip_header: crate::consensus::block::BlockHeader,
    /// The most-work valid header known, and its height.
    pub best_header: (BlockHash, u32),
    /// Hashes of the blocks waiting for their parent (bounded by the orphan
    /// pool's own limit).
    pub orphans: Vec<BlockHash>,
    /// Headers in the block index.
    pub index_len: usize,
    /// The write-back cache: what it holds, and the height the store (and
    /// every view) is at.
    pub cache: super::flush::CacheUsage,
    /// No branch with more work waits to be connected (`Chain::settled`).
    pub settled: bool,
    /// The chain is catching up (`Chain::catching_up`: an old tip and the
    /// best header far above it).
    pub catching_up: bool,
}

/// The handle readers keep: the store, the parameters, and the writer's
/// latest [`Published`] value. Cheap to clone.
#[derive(Clone)]
pub struct ChainReader {
    store: Store,
    params: &'static ChainParams,
    clock: Clock,
    published: Arc<RwLock<Arc<Published>>>,
    /// The block index and active chain as of the last publish.
    headers: super::HeaderView,
    /// The last view taken, shared by readers until the store is written
    /// (see `view`); dropped when the writer publishes.
    latest: Arc<RwLock<Option<SharedView>>>,
}

/// A view with what it was taken at.
struct SharedView {
    generation: u64,
    published: Arc<Published>,
    view: ChainView,
}

impl ChainReader {
    pub(super) fn new(
        store: Store,
        params: &'static ChainParams,
        clock: Clock,
        first: Published,
    ) -> Self {
        ChainReader {
            store,
            params,
            clock,
            published: Arc::new(RwLock::new(Arc::new(first))),
            headers: super::HeaderView::default(),
            latest: Arc::new(RwLock::new(None)),
        }
    }

    /// Replaces the published value (the writer only). Readers holding the
    /// old one keep it; the lock is held for a pointer swap.
    pub(super) fn publish(&self, value: Published) {
        let value = Arc::new(value);
        *self.published.write().expect("published lock") = value;
        // The shared view no longer matches: let go of its snapshot now,
        // not at the next reader's request (an idle node catching up for
        // hours would keep RocksDB from compacting away what it pins).
        let stale = self.latest.write().expect("latest view lock").take();
        drop(stale);
    }

    pub fn params(&self) -> &'static ChainParams {
        self.params
    }

    /// The clock the chain judges block times by.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The live store, for what never changes once written (a block's body
    /// by its hash); anything that moves with the tip comes from a `view`.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The block index and the active chain (with the writer's unflushed
    /// blocks) as of the writer's last publish: for header questions, not
    /// for state (which views answer).
    pub fn headers(&self) -> &super::HeaderView {
        &self.headers
    }

    /// The writer's latest published value.
    pub fn published(&self) -> Arc<Published> {
        self.published.read().expect("published lock").clone()
    }

    /// A consistent view of the chain as of now. Readers share one view
    /// between two writes of the store: a view taken when the store's write
    /// counter was even holds every write it counts, so while the counter
    /// and the published value stay the same, the last view answers as a
    /// fresh one would (a RocksDB snapshot and two reads saved per request).
    /// While a write is under way (the counter odd) every reader takes its
    /// own, as before.
    pub fn view(&self) -> Result<ChainView, ChainError> {
        let generation = self.store.write_generation();
        let published = self.published();
        let shareable = generation.is_multiple_of(2);
        if shareable {
            let latest = self.latest.read().expect("latest view lock");
            if let Some(shared) = latest.as_ref() {
                if shared.generation == generation && Arc::ptr_eq(&shared.published, &published) {
                    return Ok(shared.view.clone());
                }
            }
        }
        let view = ChainView::at(
            self.store.snapshot(),
            self.params,
            self.clock.clone(),
            published.clone(),
        )?;
        if shareable {
            let fresh = Some(SharedView {
                generation,
                published,
                view: view.clone(),
            });
            // A reader that read the generation before a write must not put
            // its view over a newer one. The view replaced is dropped after
            // the lock (releasing a snapshot takes RocksDB's mutex).
            let mut latest = self.latest.write().expect("latest view lock");
            let replaced = if latest.as_ref().is_none_or(|l| l.generation <= generation) {
                std::mem::replace(&mut *latest, fresh)
            } else {
                None
            };
            drop(latest);
            drop(replaced);
        }
        Ok(view)
    }
}

/// One block boundary of the chain, frozen: the tip, the active chain, the
/// block index entries and every indexed row as they were when the view was
/// taken. Reads cost RocksDB lookups (mostly block-cache hits), never the
/// writer's lock.
#[derive(Clone)]
pub struct ChainView {
    store: Store,
    params: &'static ChainParams,
    clock: Clock,
    tip: ChainTip,
    tip_entry: BlockIndexEntry,
    published: Arc<Published>,
}

impl ChainView {
    fn at(
        store: Store,
        params: &'static ChainParams,
        clock: Clock,
        published: Arc<Published>,
    ) -> Result<ChainView, ChainError> {
        let record = store
            .tip()?
            .ok_or_else(|| ChainError::Inconsistent("the store has no tip".into()))?;
        let tip_entry = store.block_index_entry(&record.hash)?.ok_or_else(|| {
            ChainError::Inconsistent(format!("tip {} is not in the block index", record.hash))
        })?;
        let tip = ChainTip {
            hash: record.hash,
            height: record.height,
            chain_work: tip_entry.chain_work,
            time: tip_entry.header.time,
            utxo_count: record.utxo_count,
            utxo_total: record.utxo_total,
            utxo_digest: record.digest,
        };
        Ok(ChainView {
            store,
            params,
            clock,
            tip,
            tip_entry,
            published,
        })
    }

    pub fn params(&self) -> &'static ChainParams {
        self.params
    }

    /// The store as of this view (a snapshot: read-only).
    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn tip(&self) -> ChainTip {
        self.tip
    }

    pub fn tip_entry(&self) -> &BlockIndexEntry {
        &self.tip_entry
    }

    /// Whether the writer holds connected blocks that the store (and so
    /// this view) lacks, to be written together at a later flush of its
    /// write-back cache: during a catch-up. At the tip every block is
    /// written as it connects, and this is false. The writer publishes a
    /// little after it writes, so a view of a flush just written may come
    /// with the value from before it: only a value whose flushed height is
    /// this view's own says so (a stale one says no, and the reader waits
    /// as it would at the tip).
    pub fn trails_cached_blocks(&self) -> bool {
        self.published.cache.blocks > 0 && self.published.cache.flushed_height == self.tip.height
    }

    pub fn height(&self) -> u32 {
        self.tip.height
    }

    /// The hash at `height` of the active chain, if it reaches that high.
    pub fn hash_at(&self, height: u32) -> Result<Option<BlockHash>, ChainError> {
        if height > self.tip.height {
            return Ok(None);
        }
        Ok(self.store.hash_at_height(height)?)
    }

    pub fn index_entry(&self, hash: &BlockHash) -> Result<Option<BlockIndexEntry>, ChainError> {
        Ok(self.store.block_index_entry(hash)?)
    }

    /// Confirmations of an active block at `height` (1 at the tip).
    pub fn confirmations(&self, height: u32) -> u32 {
        self.tip.height.saturating_sub(height) + 1
    }

    /// Median of the last `MEDIAN_TIME_SPAN` block times up to the tip: the
    /// time a transaction's lock time is judged against in the next block.
    pub fn median_time_past(&self) -> Result<u32, ChainError> {
        let mut times = Vec::with_capacity(MEDIAN_TIME_SPAN);
        let mut entry = self.tip_entry;
        loop {
            times.push(entry.header.time);
            if entry.height == 0 || times.len() == MEDIAN_TIME_SPAN {
                break;
            }
            let parent = entry.header.prev_hash;
            entry = self.index_entry(&parent)?.ok_or_else(|| {
                ChainError::Inconsistent(format!("block {parent} is not in the block index"))
            })?;
        }
        Ok(median_time_past(&times))
    }

    /// The context a child of the tip is validated in (as
    /// `Chain::context_after` at the tip).
    pub fn context_after_tip(&self) -> Result<BlockContext, ChainError> {
        let height = self.tip.height + 1;
        let failure = std::cell::Cell::new(None);
        let expected_bits =
            next_work_required(self.params, height, self.tip_entry.header.bits, |h| {
                let time = self
                    .hash_at(h)
                    .and_then(|hash| match hash {
                        Some(hash) => self.index_entry(&hash),
                        None => Ok(None),
                    })
                    .map(|e| e.map_or(0, |e| e.header.time));
                time.unwrap_or_else(|e| {
                    failure.set(Some(e));
                    0
                })
            });
        if let Some(e) = failure.into_inner() {
            return Err(e);
        }
        Ok(BlockContext {
            height,
            expected_bits,
            median_time_past: self.median_time_past()?,
            now: self.clock.now(),
        })
    }

    /// The writer's published value read just before the store's snapshot:
    /// it may be a block older or newer than the snapshot (it describes
    /// headers and orphans, never the state answers are built from).
    pub fn published(&self) -> &Published {
        &self.published
    }

    pub fn best_header(&self) -> (BlockHash, u32) {
        self.published.best_header
    }

    pub fn orphan_count(&self) -> usize {
        self.published.orphans.len()
    }

    pub fn orphan_hashes(&self) -> Vec<BlockHash> {
        self.published.orphans.clone()
    }
}
