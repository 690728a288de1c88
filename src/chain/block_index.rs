//! The in-memory block index: every known header with its chain work and
//! status, plus what makes walking it cheap at any chain length.
//!
//! Each entry keeps a *skip pointer* to an ancestor at a height chosen as
//! Bitcoin Core's `pskip` does, so finding the ancestor of any block at any
//! height takes O(log n) steps instead of one step per block, and two
//! branches' last common ancestor is found just as fast. Every step is
//! counted, so tests and benchmarks can show that scheduling work does not
//! grow with the chain.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::consensus::hash::BlockHash;
use crate::store::schema::{status, BlockIndexEntry};

/// One indexed block.
#[derive(Debug, Clone, Copy)]
pub struct Node {
    entry: BlockIndexEntry,
    /// An ancestor at `skip_height(entry.height)` (genesis points at itself).
    skip: BlockHash,
    /// The block and every ancestor have their data stored and none is
    /// invalid: the block could be connected (Bitcoin Core's
    /// `HaveNumChainTxs`). Kept in memory only; recomputed at start.
    linked: bool,
    /// Order in which the block's data arrived (0 for blocks loaded at start),
    /// so that among branches of equal work the first seen wins.
    sequence: u64,
}

/// Clears the lowest set bit.
fn invert_lowest_one(n: u32) -> u32 {
    n & n.wrapping_sub(1)
}

/// The height a block's skip pointer aims at. Any height below works; this
/// choice (Bitcoin Core's `GetSkipHeight`) makes every ancestor search
/// O(log n) while keeping the pointers spread out.
pub fn skip_height(height: u32) -> u32 {
    if height < 2 {
        return 0;
    }
    if height & 1 == 1 {
        invert_lowest_one(invert_lowest_one(height - 1)) + 1
    } else {
        invert_lowest_one(height)
    }
}

#[derive(Debug, Default)]
pub struct BlockIndex {
    nodes: HashMap<BlockHash, Node>,
    children: HashMap<BlockHash, Vec<BlockHash>>,
    next_sequence: u64,
    /// Index entries visited by ancestor searches since start.
    steps: AtomicU64,
    /// Blocks whose node was added or changed since `take_changed` (a hash
    /// may appear more than once): what a copy needs to catch up.
    changed: Vec<BlockHash>,
}

impl BlockIndex {
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn get(&self, hash: &BlockHash) -> Option<&BlockIndexEntry> {
        self.nodes.get(hash).map(|n| &n.entry)
    }

    pub fn contains(&self, hash: &BlockHash) -> bool {
        self.nodes.contains_key(hash)
    }

    /// Changes an entry's status or body fields. The header and height of an
    /// indexed block never change, so its position in the tree stays put.
    pub fn update(&mut self, hash: &BlockHash, f: impl FnOnce(&mut BlockIndexEntry)) {
        if let Some(node) = self.nodes.get_mut(hash) {
            self.changed.push(*hash);
            let (header, height) = (node.entry.header, node.entry.height);
            f(&mut node.entry);
            debug_assert!(node.entry.header == header && node.entry.height == height);
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&BlockHash, &BlockIndexEntry)> {
        self.nodes.iter().map(|(h, n)| (h, &n.entry))
    }

    pub fn children(&self, hash: &BlockHash) -> &[BlockHash] {
        self.children.get(hash).map_or(&[], Vec::as_slice)
    }

    /// Adds a block whose parent is indexed (or genesis). Returns false if it
    /// was already there, in which case nothing changes.
    pub fn insert(&mut self, hash: BlockHash, entry: BlockIndexEntry) -> bool {
        if self.nodes.contains_key(&hash) {
            return false;
        }
        let skip = if entry.height == 0 {
            hash
        } else {
            self.ancestor(&entry.header.prev_hash, skip_height(entry.height))
                .expect("the parent of an indexed block is indexed")
        };
        if entry.height > 0 {
            self.children
                .entry(entry.header.prev_hash)
                .or_default()
                .push(hash);
        }
        self.nodes.insert(
            hash,
            Node {
                entry,
                skip,
                linked: false,
                sequence: 0,
            },
        );
        self.changed.push(hash);
        true
    }

    /// The blocks added or changed since the last call.
    pub fn take_changed(&mut self) -> Vec<BlockHash> {
        std::mem::take(&mut self.changed)
    }

    /// A block's node, to copy into another index (`put_node`).
    pub fn node(&self, hash: &BlockHash) -> Option<Node> {
        self.nodes.get(hash).copied()
    }

    /// Sets a node copied from another index, whose parent this one holds
    /// or gets in the same catch-up. Children lists are not kept: a copy
    /// answers ancestor and status questions, the writer alone walks down.
    pub fn put_node(&mut self, hash: BlockHash, node: Node) {
        self.nodes.insert(hash, node);
    }

    /// The ancestor of `hash` at `height` (`hash` itself at its own height),
    /// in O(log n) steps; `None` if `hash` is unknown or lower than `height`.
    pub fn ancestor(&self, hash: &BlockHash, height: u32) -> Option<BlockHash> {
        let mut cursor = *hash;
        let mut node = self.nodes.get(&cursor)?;
        if height > node.entry.height {
            return None;
        }
        let mut steps = 1u64;
        while node.entry.height > height {
            let here = node.entry.height;
            let skip_to = skip_height(here);
            let skip_prev = skip_height(here - 1);
            // Take the skip pointer unless it overshoots, or unless the
            // parent's pointer lands closer to the target for less.
            let take_skip = node.skip != cursor
                && (skip_to == height
                    || (skip_to > height
                        && !(skip_prev < skip_to.saturating_sub(2) && skip_prev >= height)));
            cursor = if take_skip {
                node.skip
            } else {
                node.entry.header.prev_hash
            };
            node = self.nodes.get(&cursor)?;
            steps += 1;
        }
        self.steps.fetch_add(steps, Ordering::Relaxed);
        Some(cursor)
    }

    /// The last block two indexed blocks have in common.
    pub fn last_common_ancestor(&self, a: &BlockHash, b: &BlockHash) -> Option<BlockHash> {
        let (ha, hb) = (self.get(a)?.height, self.get(b)?.height);
        let mut a = self.ancestor(a, ha.min(hb))?;
        let mut b = self.ancestor(b, ha.min(hb))?;
        if a == b {
            return Some(a);
        }
        // Binary search on the height at which the two branches agree.
        let (mut low, mut high) = (0u32, ha.min(hb));
        while low + 1 < high {
            let mid = low + (high - low) / 2;
            let (x, y) = (self.ancestor(&a, mid)?, self.ancestor(&b, mid)?);
            if x == y {
                low = mid;
            } else {
                high = mid;
                a = x;
                b = y;
            }
        }
        self.ancestor(&a, low)
    }

    /// Whether the block could be connected: its data and all its
    /// ancestors' are stored and none is invalid.
    pub fn is_linked(&self, hash: &BlockHash) -> bool {
        self.nodes.get(hash).is_some_and(|n| n.linked)
    }

    /// Marks a block as linked (see `is_linked`).
    pub fn set_linked(&mut self, hash: &BlockHash, linked: bool) {
        if let Some(node) = self.nodes.get_mut(hash) {
            if node.linked != linked {
                node.linked = linked;
                self.changed.push(*hash);
            }
        }
    }

    /// Records that a block's data arrived now, for first-seen ordering.
    pub fn mark_received(&mut self, hash: &BlockHash) {
        self.next_sequence += 1;
        let sequence = self.next_sequence;
        if let Some(node) = self.nodes.get_mut(hash) {
            node.sequence = sequence;
        }
    }

    /// When the block's data arrived, relative to others (0: before start).
    pub fn sequence(&self, hash: &BlockHash) -> u64 {
        self.nodes.get(hash).map_or(0, |n| n.sequence)
    }

    /// Index entries visited by ancestor searches so far (a cost measure).
    pub fn steps(&self) -> u64 {
        self.steps.load(Ordering::Relaxed)
    }

    /// Counts `n` entries visited by a walk outside `ancestor`.
    pub fn record_steps(&self, n: u64) {
        self.steps.fetch_add(n, Ordering::Relaxed);
    }

    /// Whether a block may be connected if its parent is: stored and valid.
    pub fn may_link(entry: &BlockIndexEntry) -> bool {
        entry.has(status::HAVE_DATA) && !entry.is_failed()
    }
}

impl std::ops::Index<&BlockHash> for BlockIndex {
    type Output = BlockIndexEntry;

    fn index(&self, hash: &BlockHash) -> &BlockIndexEntry {
        &self.nodes[hash].entry
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::block::BlockHeader;
    use primitive_types::U256;

    fn hash_of(branch: u8, height: u32) -> BlockHash {
        let mut bytes = [0u8; 32];
        bytes[0] = branch;
        bytes[1..5].copy_from_slice(&height.to_le_bytes());
        crate::consensus::hash::Hash256(bytes)
    }

    fn entry(prev: BlockHash, height: u32) -> BlockIndexEntry {
        BlockIndexEntry {
            header: BlockHeader {
                version: 1,
                prev_hash: prev,
                merkle_root: Default::default(),
                time: height,
                bits: 0x207f_ffff,
                nonce: 0,
            },
            height,
            chain_work: U256::from(height + 1),
            status: status::HEADER_VALID,
            tx_count: 0,
            size: 0,
        }
    }

    /// A chain of `len` blocks from genesis, and a branch of `branch_len`
    /// blocks forking off it at `fork`.
    fn tree(len: u32, fork: u32, branch_len: u32) -> BlockIndex {
        let mut index = BlockIndex::default();
        index.insert(hash_of(0, 0), entry(BlockHash::ZERO, 0));
        for h in 1..len {
            index.insert(hash_of(0, h), entry(hash_of(0, h - 1), h));
        }
        let mut prev = hash_of(0, fork);
        for h in fork + 1..fork + 1 + branch_len {
            index.insert(hash_of(1, h), entry(prev, h));
            prev = hash_of(1, h);
        }
        index
    }

    #[test]
    fn skip_heights_are_lower_and_spread() {
        for h in 1..10_000u32 {
            assert!(skip_height(h) < h, "height {h}");
        }
        assert_eq!(skip_height(0), 0);
        assert_eq!(skip_height(1), 0);
        assert_eq!(skip_height(16), 0);
        assert_eq!(skip_height(24), 16);
    }

    #[test]
    fn ancestor_finds_every_height() {
        let index = tree(3_000, 1_500, 700);
        let tip = hash_of(0, 2_999);
        for h in (0..3_000).step_by(7) {
            assert_eq!(index.ancestor(&tip, h), Some(hash_of(0, h)));
        }
        let branch_tip = hash_of(1, 2_200);
        for h in 0..=2_200 {
            let expected = if h <= 1_500 {
                hash_of(0, h)
            } else {
                hash_of(1, h)
            };
            assert_eq!(index.ancestor(&branch_tip, h), Some(expected), "{h}");
        }
        assert_eq!(index.ancestor(&branch_tip, 2_201), None);
    }

    #[test]
    fn ancestor_steps_grow_logarithmically() {
        let index = tree(100_001, 50_000, 10);
        let tip = hash_of(0, 100_000);
        let mut worst = 0;
        for target in (0..100_000).step_by(997) {
            let before = index.steps();
            index.ancestor(&tip, target).unwrap();
            worst = worst.max(index.steps() - before);
        }
        // A walk would take up to 100 000 steps; skip pointers take a few
        // times log2(100 000) = 17.
        assert!(worst <= 120, "worst ancestor search took {worst} steps");
    }

    #[test]
    fn last_common_ancestor_of_branches() {
        let index = tree(2_000, 1_234, 300);
        assert_eq!(
            index.last_common_ancestor(&hash_of(0, 1_999), &hash_of(1, 1_500)),
            Some(hash_of(0, 1_234))
        );
        assert_eq!(
            index.last_common_ancestor(&hash_of(1, 1_300), &hash_of(0, 1_000)),
            Some(hash_of(0, 1_000))
        );
        assert_eq!(
            index.last_common_ancestor(&hash_of(0, 1_999), &hash_of(0, 1_999)),
            Some(hash_of(0, 1_999))
        );
    }
}
