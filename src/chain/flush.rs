//! When the chain's write-back cache (`store::cache`) goes to disk.
//!
//! Connecting or disconnecting a block puts its rows in the cache. A flush
//! writes the whole cache, the block index entries of the blocks it
//! connected and the tip record as one atomic RocksDB batch, so the tip on
//! disk always matches the state on disk. A crash loses at most the blocks
//! connected since the last flush, and nothing of theirs: their data and
//! index entries were written before they connected, so the next start
//! connects them again (`Chain::open`).
//!
//! - At the tip (the best header at most `CATCH_UP_DISTANCE` blocks above
//!   the tip), every block is flushed as it connects or disconnects, before
//!   its event goes out, and every call that changes the state returns with
//!   the cache empty: the store, and whatever reads it (REST, the mirror),
//!   is never behind the chain, as before the cache.
//! - A reorganisation is written block by block, as before the cache, from
//!   its first disconnect (which flushes whatever catch-up had cached) to
//!   its last connect: every block it reports connected is on disk. Deep
//!   reorganisations are rare, and the kill tests hold the node to that.
//! - In catch-up, blocks accumulate until the cache holds an eighth of its
//!   byte limit (`--dbcache-mb`, `BACKGROUND_FLUSH_DIVISOR`) or is
//!   `CACHE_MAX_AGE` old. The chain then freezes them (`StateCache::freeze`)
//!   and a writer thread puts them in one batch, with the index entries
//!   and tip record as of the freeze, while the chain connects the next
//!   blocks into an empty cache in front (reading through both). One such
//!   write runs at a time, and every other flush waits for it first, so
//!   batches land in order; a cache over its limit waits for it too. The
//!   write uses the core that the chain's serial work leaves idle, and the
//!   flush at the end of a catch-up finds little left (what came in front
//!   since the last freeze).
//!   If the write fails, its layer stays behind the cache and the next
//!   flush writes both in one batch. Meanwhile readers of the store see
//!   the state at the last flush that landed, whole and consistent; the
//!   chain itself (validation, the mempool, block templates) reads through
//!   the cache.
//! - A clean shutdown writes what is left (`Chain::flush`, and `Drop`).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::pending::PendingFile;
use super::{Chain, ChainError, ChainTip};
use crate::consensus::block::Block;
use crate::consensus::hash::BlockHash;
use crate::store::schema::{status, BlockIndexEntry};
use crate::store::{StateCache, StoreBatch, StoreError};

/// Default byte limit of the cache: Bitcoin Core's `-dbcache` default
/// (450 MiB). Catch-up writes in background batches of about an eighth of
/// it (`BACKGROUND_FLUSH_DIVISOR`).
pub const DEFAULT_CACHE_BYTES: usize = 450 << 20;

/// The chain is catching up (and keeps blocks in the cache between flushes)
/// while its best header is more than this many blocks above its tip.
/// Closer than that, it is at the tip and writes every block as it
/// connects: a few blocks' distance is the normal state of a node that has
/// just learned headers (a block arrives after its header, a short reorg
/// arrives as headers first), not a catch-up worth batching.
pub const CATCH_UP_DISTANCE: u32 = 6;

/// A tip at least this old (seconds behind the clock) may be catching up; a
/// younger one is at the tip whatever the headers say. An hour is 360
/// blocks at the target spacing: a node that was off for longer catches up
/// in batches, one that saw a block recently writes each one.
pub const CATCH_UP_TIP_AGE: u32 = 3_600;

/// Even in catch-up, the cache is written at least this often (checked as
/// blocks connect, and by the node's upkeep): a crash costs at most this
/// long of connecting again, and readers of the store trail the chain by
/// at most this long. Bitcoin Core writes hourly; our catch-ups are short
/// and a wallet polling a syncing node should see it move.
pub const CACHE_MAX_AGE: Duration = Duration::from_secs(300);

/// In catch-up the cache is written in the background once it holds this
/// fraction of its limit: small enough that a write overlaps the blocks
/// after it and that little is left when the catch-up ends, large enough
/// that most outputs created and spent within a few blocks never reach
/// the disk.
pub const BACKGROUND_FLUSH_DIVISOR: usize = 8;

/// A flushed cache at least this large is freed on rayon's pool, not on the
/// chain's thread (a cache of one block at the tip is freed at once).
const FREE_ELSEWHERE_BYTES: usize = 4 << 20;

/// Batch bytes of the rows every flush writes beside the cache's: the tip
/// record and the UTXO digest's 2 KiB state, with RocksDB's framing.
const TIP_ROWS_BYTES: usize = 256 + crate::store::digest::STATE_LEN;

/// The flush policy's own state.
#[derive(Debug)]
pub(super) struct Flushing {
    /// Byte limit of the cache.
    pub limit: usize,
    /// Blocks connected or disconnected since the last flush.
    pub blocks: u32,
    /// A reorganisation is under way: every block is written.
    pub reorganising: bool,
    pub flushes: u64,
    /// The tip the store holds (its tip record), once the chain is open.
    pub flushed_tip: Option<ChainTip>,
    pub last_flush: Instant,
    /// The write of a frozen layer under way, if any.
    pub background: Option<Background>,
    /// Blocks stored while a background write was under way: their bodies
    /// and index entries wait here, not behind the writer's batch, and are
    /// written once it has landed (or with the next flush's batch). The
    /// chain reads their bodies from here meanwhile, and `pending` holds
    /// them on disk until the store does.
    pub deferred: Vec<DeferredBlock>,
    /// Encoded size of the deferred blocks, at most an eighth of the limit.
    pub deferred_bytes: usize,
    /// The deferred bodies, appended to a file of their own before their
    /// blocks connect (`pending`).
    pub pending: PendingFile,
}

/// A received block whose body and index entry are not written yet.
#[derive(Debug)]
pub(super) struct DeferredBlock {
    pub hash: BlockHash,
    pub block: Arc<Block>,
}

/// A frozen layer being written by its own thread.
#[derive(Debug)]
pub(super) struct Background {
    /// Returns how long the write took.
    thread: std::thread::JoinHandle<Result<Duration, StoreError>>,
    /// The tip the frozen layer ends at: the store's once written.
    tip: ChainTip,
    /// Blocks the layer holds.
    blocks: u32,
    rows: usize,
    bytes: usize,
}

impl Flushing {
    pub fn new(limit: usize, data_dir: &Path) -> Flushing {
        Flushing {
            limit,
            blocks: 0,
            reorganising: false,
            flushes: 0,
            flushed_tip: None,
            last_flush: Instant::now(),
            background: None,
            deferred: Vec::new(),
            deferred_bytes: 0,
            pending: PendingFile::new(data_dir),
        }
    }
}

/// What the cache holds and has done, for logs, tests, benchmarks and
/// `/status`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct CacheUsage {
    /// Memory held, by the cache's estimate.
    pub bytes: usize,
    /// The byte limit (`--dbcache-mb`).
    pub limit: usize,
    /// Rows held (puts and deletions).
    pub rows: usize,
    /// Blocks connected or disconnected since the last flush.
    pub blocks: u32,
    /// Flushes since the chain was opened.
    pub flushes: u64,
    /// Height of the tip on disk.
    pub flushed_height: u32,
}

impl Chain {
    /// Whether the chain is catching up: its best header is more than
    /// `CATCH_UP_DISTANCE` blocks above its tip, and its tip is older than
    /// `CATCH_UP_TIP_AGE` (Bitcoin Core's initial-block-download test). The
    /// age matters: headers alone are cheap to make look ahead (bodies that
    /// never come, or come invalid, do not undo them), and without it a
    /// peer could keep a node at the tip writing nothing to disk, its REST
    /// answers `CACHE_MAX_AGE` old.
    pub fn catching_up(&self) -> bool {
        let tip_time = self
            .tree
            .index
            .get(&self.tip.hash)
            .map_or(0, |e| e.header.time);
        self.clock.now().saturating_sub(tip_time) > CATCH_UP_TIP_AGE
            && self
                .tree
                .index
                .get(&self.tree.best_header)
                .is_some_and(|e| e.height > self.tip.height.saturating_add(CATCH_UP_DISTANCE))
    }

    /// Called after a block's rows went into the cache and the tip moved,
    /// before its event goes out: flushes at the tip, in a reorganisation
    /// and without a cache; in catch-up, starts a background write when
    /// the cache holds an eighth of its limit or is old, and waits for the
    /// one under way when over the limit.
    pub(super) fn block_cached(&mut self) -> Result<(), ChainError> {
        self.flushing.blocks += 1;
        self.finish_background(false);
        if self.flushing.reorganising || !self.catching_up() || self.flushing.limit == 0 {
            return self.flush();
        }
        let over = self.cache.bytes() > self.flushing.limit;
        if over {
            self.finish_background(true);
        }
        if self.flushing.background.is_none()
            && (over
                || self.cache.own_bytes() >= self.flushing.limit / BACKGROUND_FLUSH_DIVISOR
                || self.flushing.last_flush.elapsed() >= CACHE_MAX_AGE)
        {
            if self.cache.has_behind() || !self.flushing.deferred.is_empty() {
                // A failed background write left its layer, or a failed
                // write its deferred blocks: all now, in one batch (a
                // block's state must not reach the disk before its body).
                return self.flush();
            }
            self.start_background_flush();
        }
        Ok(())
    }

    /// Freezes the cache and writes it on a thread of its own, with the
    /// block index entries it changed and the tip record as they are now.
    fn start_background_flush(&mut self) {
        debug_assert!(
            self.flushing.background.is_none()
                && !self.cache.has_behind()
                && self.flushing.deferred.is_empty()
        );
        if self.cache.is_empty() {
            return;
        }
        let entries: Vec<_> = self
            .cache
            .index_changed()
            .map(|hash| (*hash, self.tree.index[hash]))
            .collect();
        let (rows, bytes) = (self.cache.len(), self.cache.bytes());
        let frozen = self.cache.freeze();
        let store = self.store.clone();
        let (tip, digest, sync) = (self.tip, self.digest.clone(), self.sync_writes);
        let spawned = std::thread::Builder::new()
            .name("chain-flush".into())
            .spawn(move || {
                // Bulk work: a REST request or a ping goes first.
                crate::priority::lower_current_thread();
                let started = Instant::now();
                let mut batch = store.batch_with_capacity(frozen.batch_bytes() + TIP_ROWS_BYTES);
                for (hash, entry) in &entries {
                    batch.put_block_index(hash, entry);
                }
                frozen.write_to(&mut batch);
                batch.put_tip(&tip, &digest);
                store.write(batch, sync)?;
                Ok(started.elapsed())
            });
        match spawned {
            Ok(thread) => {
                self.flushing.background = Some(Background {
                    thread,
                    tip: self.tip(),
                    blocks: self.flushing.blocks,
                    rows,
                    bytes,
                });
                self.flushing.last_flush = Instant::now();
            }
            // The layer stays behind the cache: the next flush writes it.
            Err(error) => tracing::warn!(%error, "could not start a background flush"),
        }
    }

    /// Stores a received block's body and index entry: at once, or, while
    /// a background write holds the store, after it (the chain thread does
    /// not wait behind the writer's batch). Either way they reach the store
    /// no later than any state that includes the block: every flush writes
    /// deferred blocks first or in its own batch. A deferred body is on
    /// disk before its block connects all the same, in the pending file,
    /// which the next start reads back (`Chain::recover_pending`). Only a block
    /// whose header is already indexed (on disk) waits, so no entry written
    /// meanwhile (a child's header) can reach the disk before its parent's;
    /// and the blocks waiting take at most an eighth of the cache's limit.
    pub(super) fn store_block(
        &mut self,
        hash: BlockHash,
        block: &Arc<Block>,
        entry: BlockIndexEntry,
        header_stored: bool,
    ) -> Result<(), ChainError> {
        let size = entry.size as usize;
        if self.flushing.background.is_some()
            && header_stored
            && self.flushing.deferred_bytes + size <= self.flushing.limit / BACKGROUND_FLUSH_DIVISOR
            && self.flushing.pending.usable()
        {
            if let Err(error) = self.flushing.pending.append(block, self.sync_writes) {
                tracing::warn!(%error, "could not append to the pending-blocks file; the block is written to the store");
                return self.write_block(hash, block, entry);
            }
            self.flushing.deferred.push(DeferredBlock {
                hash,
                block: block.clone(),
            });
            self.flushing.deferred_bytes += size;
            self.stages.deferred_blocks += 1;
            return Ok(());
        }
        self.write_block(hash, block, entry)
    }

    fn write_block(
        &self,
        hash: BlockHash,
        block: &Block,
        entry: BlockIndexEntry,
    ) -> Result<(), ChainError> {
        let mut batch = self.store.batch();
        batch.put_block(&hash, block);
        batch.put_block_index(&hash, &entry);
        self.store.write(batch, self.sync_writes)?;
        Ok(())
    }

    /// A stored block's body: a deferred one's, or the store's.
    pub(super) fn stored_block(&self, hash: &BlockHash) -> Result<Option<Arc<Block>>, ChainError> {
        if let Some(deferred) = self
            .flushing
            .deferred
            .iter()
            .rev()
            .find(|d| d.hash == *hash)
        {
            return Ok(Some(deferred.block.clone()));
        }
        Ok(self.store.block(hash)?.map(Arc::new))
    }

    /// Writes the deferred blocks in one batch, each with its index entry
    /// as the chain holds it but for the VALID flag: a block connected
    /// since is valid on disk only with the state that connects it (the
    /// next flush writes that entry). On failure they stay, and the next
    /// flush writes them in its own batch.
    pub(super) fn write_deferred(&mut self) -> Result<(), ChainError> {
        if self.flushing.deferred.is_empty() {
            if !self.flushing.pending.usable() {
                // Emptying it failed before: again (deferral waits on it).
                self.deferred_written();
            }
            return Ok(());
        }
        let mut batch = self.store.batch();
        self.put_deferred(&mut batch, false);
        self.store.write(batch, self.sync_writes)?;
        self.deferred_written();
        Ok(())
    }

    /// The deferred blocks are in the store: they and their file go.
    fn deferred_written(&mut self) {
        self.flushing.deferred.clear();
        self.flushing.deferred_bytes = 0;
        if let Err(error) = self.flushing.pending.clear() {
            // Harmless but for its size: the next start skips bodies the
            // store holds. No more appends until it is emptied.
            tracing::warn!(%error, "could not empty the pending-blocks file");
        }
    }

    /// Adds the deferred blocks' bodies and index entries to `batch`, the
    /// entries as the chain holds them, VALID only `with_valid` (when the
    /// batch holds the state that connects them).
    fn put_deferred(&self, batch: &mut StoreBatch<'_>, with_valid: bool) {
        for d in &self.flushing.deferred {
            let mut entry = self.tree.index[&d.hash];
            if !with_valid {
                entry.status &= !status::VALID;
            }
            batch.put_block(&d.hash, &d.block);
            batch.put_block_index(&d.hash, &entry);
        }
    }

    /// Takes the outcome of the background write, if one is under way and
    /// has ended (or, with `wait`, once it ends). Written: the store holds
    /// its tip and the frozen layer goes. Failed: the error is logged and
    /// the layer stays behind the cache; the next flush writes it (and
    /// says if that fails too), so whoever needs a flush still gets one.
    pub(super) fn finish_background(&mut self, wait: bool) {
        match &self.flushing.background {
            Some(background) if wait || background.thread.is_finished() => {}
            _ => return,
        }
        let background = self.flushing.background.take().expect("checked above");
        let started = Instant::now();
        let outcome = background.thread.join();
        self.stages.writes += started.elapsed();
        if let Err(error) = self.write_deferred() {
            tracing::warn!(%error, "writing deferred blocks failed; the next flush writes them");
        }
        let took = match outcome {
            Ok(Ok(took)) => took,
            Ok(Err(error)) => {
                tracing::warn!(%error, height = background.tip.height, "background flush failed; the next flush writes its blocks");
                return;
            }
            Err(_) => {
                tracing::warn!(
                    height = background.tip.height,
                    "background flush thread panicked; the next flush writes its blocks"
                );
                return;
            }
        };
        self.stages.background_writes += took;
        if let Some(frozen) = self.cache.drop_behind() {
            free_elsewhere(frozen);
        }
        self.flushing.blocks -= background.blocks;
        self.flushing.flushes += 1;
        self.flushing.flushed_tip = Some(background.tip);
        tracing::info!(
            blocks = background.blocks,
            rows = background.rows,
            cache_bytes = background.bytes,
            height = background.tip.height,
            ms = took.as_millis() as u64,
            "chain state cache flushed in the background"
        );
    }

    /// Called at the end of every call that may have changed the state: at
    /// the tip, nothing stays in the cache.
    pub(super) fn settle(&mut self) -> Result<(), ChainError> {
        self.flushing.reorganising = false;
        if !self.catching_up() {
            self.flush()?;
        }
        Ok(())
    }

    /// Flushes if the cache holds blocks and is `CACHE_MAX_AGE` old (for a
    /// catch-up whose blocks stopped coming). Says whether it flushed.
    pub fn flush_if_old(&mut self) -> Result<bool, ChainError> {
        let landed = self
            .flushing
            .background
            .as_ref()
            .is_some_and(|b| b.thread.is_finished());
        self.finish_background(false);
        if self.cache.is_empty() || self.flushing.last_flush.elapsed() < CACHE_MAX_AGE {
            if landed {
                self.publish();
            }
            return Ok(landed);
        }
        self.flush()?;
        // No block step follows to publish it: readers learn of the flush
        // (`ChainView::trails_cached_blocks`, `/metrics`) now.
        self.publish();
        Ok(true)
    }

    /// Writes the cache, the block index entries of the blocks it connected
    /// and the tip record in one atomic batch (synced as `sync_writes`
    /// says), after the background write under way, if any. On failure the
    /// cache keeps everything, and a later flush writes it.
    pub fn flush(&mut self) -> Result<(), ChainError> {
        // A failed one leaves its layer behind the cache: written below.
        self.finish_background(true);
        if self.cache.is_empty() {
            return self.write_deferred();
        }
        let started = Instant::now();
        // Room for the tip record and the digest's state too.
        let mut batch = self
            .store
            .batch_with_capacity(self.cache.batch_bytes() + TIP_ROWS_BYTES);
        // Deferred blocks (normally none: written when the background
        // write landed), with their entries as the chain holds them: this
        // batch holds the state those entries describe.
        self.put_deferred(&mut batch, true);
        for hash in self.cache.index_changed() {
            batch.put_block_index(hash, &self.tree.index[hash]);
        }
        self.cache.write_to(&mut batch);
        batch.put_tip(&self.tip, &self.digest);
        let (bytes, rows, batch_bytes) =
            (self.cache.bytes(), self.cache.len(), batch.size_in_bytes());
        debug_assert!(batch_bytes <= self.cache.batch_bytes() + TIP_ROWS_BYTES);
        self.store.write(batch, self.sync_writes)?;
        self.stages.writes += started.elapsed();
        // Freeing a catch-up's cache (millions of rows, each its own
        // allocation) took a fifth of its final flush: a large one is freed
        // on rayon's pool while the chain goes on.
        free_elsewhere(Arc::new(std::mem::take(&mut self.cache)));
        if !self.flushing.deferred.is_empty() {
            self.deferred_written();
        }
        let blocks = std::mem::take(&mut self.flushing.blocks);
        self.flushing.flushes += 1;
        self.flushing.flushed_tip = Some(self.tip());
        self.flushing.last_flush = Instant::now();
        let ms = started.elapsed().as_millis() as u64;
        if blocks > 1 {
            tracing::info!(
                blocks,
                rows,
                cache_bytes = bytes,
                batch_bytes,
                height = self.tip.height,
                ms,
                "chain state cache flushed"
            );
        } else {
            tracing::debug!(
                blocks,
                rows,
                height = self.tip.height,
                ms,
                "chain state flushed"
            );
        }
        Ok(())
    }

    pub fn cache_usage(&self) -> CacheUsage {
        CacheUsage {
            bytes: self.cache.bytes(),
            limit: self.flushing.limit,
            rows: self.cache.len(),
            blocks: self.flushing.blocks,
            flushes: self.flushing.flushes,
            flushed_height: self.flushed_tip().height,
        }
    }

    /// The tip the store holds: the state that readers of the store (and
    /// of its snapshots) see. The chain's own tip at the tip; during
    /// catch-up, the tip of the last flush.
    pub fn flushed_tip(&self) -> ChainTip {
        self.flushing.flushed_tip.unwrap_or_else(|| self.tip())
    }

    /// Drops the chain as a crash would: whatever the cache holds is lost
    /// (the store keeps the last flush), and so are deferred blocks but
    /// for the pending file. A background write under way ends first (a
    /// real crash may or may not let it land). Returns the tip on disk.
    /// Only for tests.
    #[doc(hidden)]
    pub fn crash_for_test(mut self) -> ChainTip {
        self.flushing.deferred.clear();
        self.flushing.deferred_bytes = 0;
        self.finish_background(true);
        self.cache.clear();
        self.flushed_tip()
    }
}

/// Frees a written cache: a large one (millions of rows, each its own
/// allocation; it took a fifth of a catch-up's final flush) on rayon's
/// pool while the chain goes on, a small one at once.
fn free_elsewhere(cache: Arc<StateCache>) {
    if cache.batch_bytes() >= FREE_ELSEWHERE_BYTES {
        rayon::spawn(move || drop(cache));
    }
}
