//! The block index and the active chain, as one value: the writer's own
//! copy inside `Chain`, and the copy readers share (`HeaderView`), which
//! the writer brings up to date each time it publishes.
//!
//! What peers ask about headers (a locator, the headers after one, whether
//! one block descends from another, which blocks to download from whom)
//! is answered from the readers' copy, so the protocol thread never waits
//! for the chain task to finish a block. The readers' copy is a second
//! index in memory, without the children lists and first-seen order only
//! the writer needs; bringing it up to date costs the entries changed
//! since the last publish (a few per block) and the active chain's change.

use std::sync::{Arc, RwLock, RwLockReadGuard};

use primitive_types::U256;

use super::block_index::BlockIndex;
use super::{
    HeaderAnchor, DOWNLOAD_SCAN_STRETCH, MAX_UNREQUESTED_BLOCKS_AHEAD, NEAR_TIP_MARGIN_BLOCKS,
};
use crate::consensus::block::BlockHeader;
use crate::consensus::hash::BlockHash;
use crate::consensus::pow::work_from_compact;
use crate::store::schema::{status, BlockIndexEntry};

/// Every known header with its status, the active chain, and the best
/// header.
#[derive(Debug, Default)]
pub struct HeaderTree {
    pub(super) index: BlockIndex,
    /// Active chain: `active[h]` is the hash at height h.
    pub(super) active: Vec<BlockHash>,
    /// The most-work valid header known (with or without its block).
    pub(super) best_header: BlockHash,
    /// The least total work a chain must have before the node downloads
    /// blocks for it (Bitcoin Core's `nMinimumChainWork`).
    pub(super) minimum_chain_work: U256,
}

impl HeaderTree {
    pub(super) fn new(minimum_chain_work: U256) -> HeaderTree {
        HeaderTree {
            minimum_chain_work,
            ..HeaderTree::default()
        }
    }

    pub fn index_entry(&self, hash: &BlockHash) -> Option<&BlockIndexEntry> {
        self.index.get(hash)
    }

    pub fn index_len(&self) -> usize {
        self.index.len()
    }

    /// Index entries visited by ancestor searches so far (a cost measure).
    pub fn index_steps(&self) -> u64 {
        self.index.steps()
    }

    pub fn tip_height(&self) -> u32 {
        self.active.len().saturating_sub(1) as u32
    }

    pub fn tip_entry(&self) -> &BlockIndexEntry {
        &self.index[self.active.last().expect("the active chain holds genesis")]
    }

    pub fn hash_at(&self, height: u32) -> Option<BlockHash> {
        self.active.get(height as usize).copied()
    }

    /// The most-work valid header known, and its height.
    pub fn best_header(&self) -> (BlockHash, u32) {
        (self.best_header, self.index[&self.best_header].height)
    }

    /// Whether the block's data is stored.
    pub fn has_block(&self, hash: &BlockHash) -> bool {
        self.index
            .get(hash)
            .is_some_and(|e| e.has(status::HAVE_DATA))
    }

    /// Whether a block nobody asked for, with this header, may be stored:
    /// its chain has at least the tip's work and the minimum chain work,
    /// and it is not too far ahead of the tip to be connected soon (Bitcoin
    /// Core's `AcceptBlock`). Judged from the header alone, before the body
    /// is checked; `None` when its parent is unknown.
    pub fn unrequested_block_wanted(&self, header: &BlockHeader) -> Option<bool> {
        let parent = self.index.get(&header.prev_hash)?;
        let tip = self.tip_entry();
        let work = parent
            .chain_work
            .saturating_add(work_from_compact(header.bits));
        Some(
            work >= tip.chain_work
                && work >= self.minimum_chain_work
                && parent.height < tip.height.saturating_add(MAX_UNREQUESTED_BLOCKS_AHEAD),
        )
    }

    /// `hash` as the start of a header chain, with the times of up to
    /// `history` blocks ending at it.
    pub fn header_anchor(&self, hash: &BlockHash, history: usize) -> Option<HeaderAnchor> {
        let entry = self.index.get(hash)?;
        let mut times = Vec::with_capacity(history);
        let mut cursor = *hash;
        while times.len() < history {
            let e = &self.index[&cursor];
            times.push(e.header.time);
            if e.height == 0 {
                break;
            }
            cursor = e.header.prev_hash;
        }
        times.reverse();
        Some(HeaderAnchor {
            hash: *hash,
            height: entry.height,
            bits: entry.header.bits,
            chain_work: entry.chain_work,
            times,
        })
    }

    /// The work a chain of headers must show before its headers are indexed:
    /// at least the minimum chain work, and no less than the tip's work minus
    /// `NEAR_TIP_MARGIN_BLOCKS` blocks at the tip's difficulty, so competing
    /// branches near the tip are tracked but a long low-work chain costs no
    /// memory or disk (Bitcoin Core's `GetAntiDoSWorkThreshold`).
    pub fn headers_work_threshold(&self) -> U256 {
        let tip = self.tip_entry();
        let margin =
            work_from_compact(tip.header.bits).saturating_mul(U256::from(NEAR_TIP_MARGIN_BLOCKS));
        tip.chain_work
            .saturating_sub(margin)
            .max(self.minimum_chain_work)
    }

    /// A block locator for the best header chain starting at the best
    /// header's parent, so that a peer at the same tip still answers with one
    /// header and so tells us what it has (as Bitcoin Core does): the last ten
    /// hashes, then exponentially sparser ones, ending with genesis.
    pub fn locator(&self) -> Vec<BlockHash> {
        let (best, best_height) = self.best_header();
        let height = best_height.saturating_sub(1);
        let mut locator = Vec::new();
        let mut step = 1u32;
        let mut h = height;
        loop {
            locator.push(
                self.ancestor(&best, h)
                    .expect("ancestors of an indexed block exist"),
            );
            if h == 0 || locator.len() >= crate::wire::constants::MAX_LOCATOR_HASHES - 1 {
                break;
            }
            if locator.len() >= 10 {
                step = step.saturating_mul(2);
            }
            h = h.saturating_sub(step);
        }
        if *locator.last().expect("not empty") != self.active[0] {
            locator.push(self.active[0]);
        }
        locator
    }

    /// Headers of the active chain after the first locator hash that is on
    /// it (genesis if none), up to and including `stop`, at most `max`.
    pub fn headers_after(
        &self,
        locator: &[BlockHash],
        stop: &BlockHash,
        max: usize,
    ) -> Vec<crate::consensus::block::BlockHeader> {
        let start = locator
            .iter()
            .find_map(|h| self.is_active(h).then(|| self.index[h].height))
            .unwrap_or(0);
        let mut headers = Vec::new();
        for height in start + 1..=self.tip_height() {
            let hash = self.active[height as usize];
            headers.push(self.index[&hash].header);
            if headers.len() >= max || hash == *stop {
                break;
            }
        }
        headers
    }

    /// Whether `ancestor` is `descendant` or one of its ancestors.
    pub fn is_ancestor(&self, ancestor: &BlockHash, descendant: &BlockHash) -> bool {
        match (self.index.get(ancestor), self.index.get(descendant)) {
            (Some(a), Some(d)) if a.height <= d.height => {
                self.ancestor(descendant, a.height) == Some(*ancestor)
            }
            _ => false,
        }
    }

    /// Blocks to ask of a peer whose best known block is `peer_best`: those
    /// of its chain that we lack, lowest first, at most `window` heights
    /// above the last block we have in common with it, at most `max`,
    /// leaving out those `skip` says (already asked of someone).
    ///
    /// When nothing can be asked only because of the window (the peer's
    /// chain has a block we lack just past it), the plan names the lowest
    /// block skipped below it: the one the window waits for (Bitcoin
    /// Core's `nodeStaller`), whose holder the caller may judge.
    ///
    /// `last_common` is the peer's last common block, kept by the caller
    /// between calls (Bitcoin Core's `pindexLastCommonBlock`): the search
    /// starts there, so its cost depends on the window, never on how far
    /// the headers run ahead of the blocks or how long the chain is.
    pub fn blocks_to_download(
        &self,
        peer_best: &BlockHash,
        last_common: &mut Option<BlockHash>,
        window: u32,
        max: usize,
        skip: &dyn Fn(&BlockHash) -> bool,
    ) -> DownloadPlan {
        let mut plan = DownloadPlan::default();
        let Some(best) = self.index.get(peer_best) else {
            return plan;
        };
        let tip_work = self.tip_entry().chain_work;
        if max == 0
            || best.is_failed()
            || best.chain_work <= tip_work
            || best.chain_work < self.minimum_chain_work
        {
            return plan;
        }
        let start = last_common
            .filter(|h| self.index.contains(h))
            .unwrap_or_else(|| self.active[best.height.min(self.tip_height()) as usize]);
        let Some(common) = self.index.last_common_ancestor(&start, peer_best) else {
            return plan;
        };
        *last_common = Some(common);
        let common_height = self.index[&common].height;
        let window_end = common_height.saturating_add(window);
        // One past the window, to tell whether the window is all that
        // holds the download back.
        let max_height = window_end.saturating_add(1).min(best.height);
        let mut walked = common_height;
        let mut batch = Vec::new();
        let mut first_skipped = None;
        let wanted = &mut plan.blocks;
        while walked < max_height && wanted.len() < max {
            // Fetch the next stretch of the peer's chain: one O(log n)
            // ancestor search, then parent links within the stretch.
            let stretch = (max_height - walked).min(DOWNLOAD_SCAN_STRETCH);
            let top = self
                .index
                .ancestor(peer_best, walked + stretch)
                .expect("below the peer's best block");
            batch.clear();
            self.index.record_steps(u64::from(stretch));
            let mut cursor = top;
            for _ in 0..stretch {
                batch.push(cursor);
                cursor = self.index[&cursor].header.prev_hash;
            }
            walked += stretch;
            for hash in batch.iter().rev() {
                let entry = &self.index[hash];
                if entry.is_failed() {
                    return plan;
                }
                if entry.has(status::HAVE_DATA) || self.is_active(hash) {
                    if self.index.is_linked(hash) {
                        *last_common = Some(*hash);
                    }
                    continue;
                }
                if skip(hash) {
                    first_skipped.get_or_insert(*hash);
                    continue;
                }
                if entry.height > window_end {
                    if wanted.is_empty() {
                        plan.waiting_for = first_skipped;
                    }
                    return plan;
                }
                wanted.push((*hash, entry.height));
                if wanted.len() == max {
                    return plan;
                }
            }
        }
        plan
    }

    /// The ancestor of `hash` at `height` (which must not exceed its
    /// height): a lookup on the active chain, O(log n) elsewhere.
    pub fn ancestor(&self, hash: &BlockHash, height: u32) -> Option<BlockHash> {
        let entry = self.index.get(hash)?;
        if entry.height < height {
            return None;
        }
        if self.hash_at(entry.height) == Some(*hash) {
            return self.hash_at(height);
        }
        self.index.ancestor(hash, height)
    }

    pub fn is_active(&self, hash: &BlockHash) -> bool {
        self.index
            .get(hash)
            .is_some_and(|e| self.hash_at(e.height) == Some(*hash))
    }

    /// Brings this copy up to `writer`'s: the entries changed since the
    /// last call, then the active chain from where the two part.
    pub(super) fn catch_up_with(&mut self, writer: &mut HeaderTree) {
        for hash in writer.index.take_changed() {
            if let Some(node) = writer.index.node(&hash) {
                self.index.put_node(hash, node);
            }
        }
        let mut common = self.active.len().min(writer.active.len());
        while common > 0 && self.active[common - 1] != writer.active[common - 1] {
            common -= 1;
        }
        self.active.truncate(common);
        self.active.extend_from_slice(&writer.active[common..]);
        self.best_header = writer.best_header;
        self.minimum_chain_work = writer.minimum_chain_work;
    }
}

/// What `HeaderTree::blocks_to_download` found to ask of a peer.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DownloadPlan {
    /// Blocks to ask for, lowest first, with their heights.
    pub blocks: Vec<(BlockHash, u32)>,
    /// Set when nothing could be asked only because the download window
    /// is full: the lowest block in it that someone else was asked for
    /// (or that waits in our queue), which holds the window back.
    pub waiting_for: Option<BlockHash>,
}

/// The readers' copy of the header tree, shared by pointer. A reader holds
/// the lock for one answer (microseconds to a few milliseconds for a
/// download plan); the writer holds it to apply a publish's changes.
#[derive(Clone, Default)]
pub struct HeaderView(Arc<RwLock<HeaderTree>>);

impl HeaderView {
    /// The tree as of the writer's last publish, for one answer: drop the
    /// guard before waiting on anything else.
    pub fn read(&self) -> RwLockReadGuard<'_, HeaderTree> {
        self.0.read().expect("header view lock")
    }

    pub(super) fn catch_up_with(&self, writer: &mut HeaderTree) {
        self.0
            .write()
            .expect("header view lock")
            .catch_up_with(writer);
    }
}
