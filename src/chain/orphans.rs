//! Blocks whose parent is not known yet. Bounded in count, bytes and per-peer
//! share, with expiry, so a peer cannot fill our memory with unconnectable
//! blocks; connected in order once the parent arrives.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::consensus::block::Block;
use crate::consensus::hash::BlockHash;
use crate::encoding::Encode;

/// Who sent a block: a peer id, or `None` for local sources (import, miner).
pub type Source = Option<u64>;

/// Most orphans held at once: enough for a burst of out-of-order blocks from
/// parallel download, far below what would matter in memory.
pub const MAX_ORPHAN_BLOCKS: usize = 750;
/// Most bytes of orphans held at once (750 average blocks fit easily; 64
/// full-size ones do too).
pub const MAX_ORPHAN_BYTES: usize = 64 << 20;
/// Most orphans one peer may have in the pool, so one peer cannot evict
/// everybody else's.
pub const MAX_ORPHANS_PER_PEER: usize = 200;
/// An orphan whose parent has not arrived by then is dropped.
pub const ORPHAN_EXPIRY: Duration = Duration::from_secs(20 * 60);

struct Orphan {
    block: Arc<Block>,
    source: Source,
    received: Instant,
    size: usize,
}

#[derive(Default)]
pub struct OrphanPool {
    orphans: HashMap<BlockHash, Orphan>,
    by_parent: HashMap<BlockHash, Vec<BlockHash>>,
    bytes: usize,
}

impl OrphanPool {
    pub fn len(&self) -> usize {
        self.orphans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.orphans.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn contains(&self, hash: &BlockHash) -> bool {
        self.orphans.contains_key(hash)
    }

    /// Hashes of the orphans held, for the API.
    pub fn hashes(&self) -> Vec<BlockHash> {
        self.orphans.keys().copied().collect()
    }

    /// Adds an orphan, evicting expired ones and then the oldest (of the same
    /// peer first, if it is over its share) to stay within the limits.
    pub fn insert(&mut self, block: Arc<Block>, source: Source, now: Instant) {
        let hash = block.hash();
        if self.orphans.contains_key(&hash) {
            return;
        }
        self.expire(now);
        let size = block.encoded_len();
        if let Some(peer) = source {
            while self
                .orphans
                .values()
                .filter(|o| o.source == Some(peer))
                .count()
                >= MAX_ORPHANS_PER_PEER
            {
                let oldest = self.oldest(|o| o.source == Some(peer));
                self.remove(&oldest.expect("the peer has orphans"));
            }
        }
        while !self.orphans.is_empty()
            && (self.orphans.len() >= MAX_ORPHAN_BLOCKS || self.bytes + size > MAX_ORPHAN_BYTES)
        {
            let oldest = self.oldest(|_| true).expect("pool is not empty");
            self.remove(&oldest);
        }
        self.by_parent
            .entry(block.header.prev_hash)
            .or_default()
            .push(hash);
        self.bytes += size;
        self.orphans.insert(
            hash,
            Orphan {
                block,
                source,
                received: now,
                size,
            },
        );
    }

    fn oldest(&self, filter: impl Fn(&Orphan) -> bool) -> Option<BlockHash> {
        self.orphans
            .iter()
            .filter(|(_, o)| filter(o))
            .min_by_key(|(_, o)| o.received)
            .map(|(h, _)| *h)
    }

    fn remove(&mut self, hash: &BlockHash) -> Option<Orphan> {
        let orphan = self.orphans.remove(hash)?;
        self.bytes -= orphan.size;
        let parent = orphan.block.header.prev_hash;
        if let Some(siblings) = self.by_parent.get_mut(&parent) {
            siblings.retain(|h| h != hash);
            if siblings.is_empty() {
                self.by_parent.remove(&parent);
            }
        }
        Some(orphan)
    }

    /// Drops orphans older than `ORPHAN_EXPIRY`.
    pub fn expire(&mut self, now: Instant) {
        let expired: Vec<BlockHash> = self
            .orphans
            .iter()
            .filter(|(_, o)| now.duration_since(o.received) > ORPHAN_EXPIRY)
            .map(|(h, _)| *h)
            .collect();
        for hash in expired {
            self.remove(&hash);
        }
    }

    /// Removes and returns the orphans whose parent is `parent`, with their
    /// sources, oldest first.
    pub fn take_children(&mut self, parent: &BlockHash) -> Vec<(Arc<Block>, Source)> {
        let hashes = self.by_parent.get(parent).cloned().unwrap_or_default();
        let mut children: Vec<Orphan> = hashes.iter().filter_map(|h| self.remove(h)).collect();
        children.sort_by_key(|o| o.received);
        children.into_iter().map(|o| (o.block, o.source)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::params::Network;
    use crate::testkit::{key, TestChain};

    fn blocks(n: usize) -> Vec<Arc<Block>> {
        let mut chain = TestChain::new(Network::Regtest);
        (0..n)
            .map(|_| Arc::new(chain.mine_empty(key(1).pubkey_hash()).clone()))
            .collect()
    }

    #[test]
    fn children_come_back_by_parent() {
        let chain = blocks(3);
        let mut pool = OrphanPool::default();
        let now = Instant::now();
        pool.insert(chain[2].clone(), Some(1), now);
        pool.insert(chain[1].clone(), Some(1), now);
        assert_eq!(pool.len(), 2);
        let children = pool.take_children(&chain[0].hash());
        assert_eq!(children.len(), 1);
        assert_eq!(children[0].0.hash(), chain[1].hash());
        assert_eq!(
            pool.take_children(&chain[1].hash())[0].0.hash(),
            chain[2].hash()
        );
        assert!(pool.is_empty());
        assert_eq!(pool.bytes(), 0);
    }

    #[test]
    fn per_peer_share_and_expiry_are_enforced() {
        let chain = blocks(MAX_ORPHANS_PER_PEER + 5);
        let mut pool = OrphanPool::default();
        let start = Instant::now();
        for (i, block) in chain.iter().enumerate() {
            pool.insert(
                block.clone(),
                Some(7),
                start + Duration::from_millis(i as u64),
            );
        }
        assert_eq!(pool.len(), MAX_ORPHANS_PER_PEER);
        // The oldest were evicted.
        assert!(!pool.contains(&chain[0].hash()));
        assert!(pool.contains(&chain[chain.len() - 1].hash()));
        // Another peer still gets in.
        pool.insert(chain[0].clone(), Some(8), start);
        assert!(pool.contains(&chain[0].hash()));
        pool.expire(start + ORPHAN_EXPIRY + Duration::from_secs(1));
        assert!(pool.is_empty());
    }
}
