//! Headers pre-sync: a peer's header chain must show enough work before any
//! of it is indexed (in the spirit of Bitcoin Core's `HeadersSyncState`).
//!
//! When a peer offers a full batch of headers whose chain does not reach the
//! work threshold (`HeaderTree::headers_work_threshold`), the node does not index
//! them. It downloads the peer's chain once, validating every header
//! (continuity, proof of work, difficulty, timestamps) and adding up its
//! work, while keeping only a constant-size cursor and one salted bit per
//! `COMMITMENT_PERIOD` headers. Once the chain shows enough work it
//! downloads the same chain again from the start, checks each header against
//! those bits, and hands headers to the index only once enough later bits
//! have matched (`REDOWNLOAD_BUFFER_HEADERS` behind the newest), or all of
//! them once the redownloaded chain itself has the work. A chain that never
//! reaches the threshold costs bounded memory per peer and leaves nothing
//! behind.
//!
//! Pure: no I/O, no locks; the protocol feeds it batches and acts on the
//! returned step.

use std::collections::hash_map::RandomState;
use std::collections::VecDeque;
use std::hash::BuildHasher;

use primitive_types::U256;

use crate::chain::HeaderAnchor;
use crate::consensus::block::BlockHeader;
use crate::consensus::hash::BlockHash;
use crate::consensus::limits::MEDIAN_TIME_SPAN;
use crate::consensus::params::ChainParams;
use crate::consensus::pow::{median_time_past, next_work_required, work_from_compact};
use crate::consensus::validation::{
    check_header, check_header_contextual, BlockContext, BlockError,
};
use crate::wire::constants::MAX_HEADERS;

/// One commitment bit is kept per this many headers of the pre-synced
/// chain. With `REDOWNLOAD_BUFFER_HEADERS`, a header is indexed only after
/// 25 later bits matched: a peer that swaps in another chain during the
/// redownload gets past that with probability 2^-25.
pub const COMMITMENT_PERIOD: u32 = 600;

/// Redownloaded headers held back until this many newer ones have been
/// checked against the commitments (about 1.2 MB of headers per peer).
pub const REDOWNLOAD_BUFFER_HEADERS: usize = 15_000;

/// Block times kept to validate the next header: the median-time-past span
/// and the difficulty window both fit, with room for either to grow.
pub const TIME_HISTORY: usize = 64;

/// The consensus rule that a block's time exceeds the median of the last
/// `MEDIAN_TIME_SPAN` blocks lets a chain hold at most this many blocks per
/// second of timestamp progress; with the future allowance it bounds how
/// long a valid chain can be, and so how many commitments a peer may cost.
const MAX_BLOCKS_PER_SECOND: u64 = (MEDIAN_TIME_SPAN as u64).div_ceil(2);

/// What the protocol should do next with the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncStep {
    /// Ask the peer for headers after this locator.
    Request(Vec<BlockHash>),
    /// These headers are proven to be on a chain with enough work: index
    /// them. Then ask for more after `next`, or, if `None`, the sync is over
    /// and normal header sync takes over.
    Commit {
        headers: Vec<BlockHeader>,
        next: Option<Vec<BlockHash>>,
    },
    /// The peer's chain ended below the threshold, changed between the two
    /// downloads, or has a header too far ahead of our clock: drop the sync
    /// without blaming the peer.
    Abandoned(&'static str),
    /// The peer sent headers that break a consensus rule.
    Invalid(&'static str),
}

/// The tip of a header chain being validated without an index.
#[derive(Debug, Clone)]
struct Cursor {
    hash: BlockHash,
    height: u32,
    bits: u32,
    work: U256,
    /// Times of the newest blocks, oldest first, ending with `hash`'s.
    times: VecDeque<u32>,
}

impl Cursor {
    fn at(anchor: &HeaderAnchor) -> Cursor {
        let skip = anchor.times.len().saturating_sub(TIME_HISTORY);
        Cursor {
            hash: anchor.hash,
            height: anchor.height,
            bits: anchor.bits,
            work: anchor.chain_work,
            times: anchor.times[skip..].iter().copied().collect(),
        }
    }

    /// The time of the block at `height`, if it is in the history.
    fn time_at(&self, height: u32) -> Option<u32> {
        let back = self.height.checked_sub(height)? as usize;
        let len = self.times.len();
        (back < len).then(|| self.times[len - 1 - back])
    }

    /// Validates `header` as the next one and moves onto it.
    fn advance(
        &mut self,
        header: &BlockHeader,
        params: &ChainParams,
        now: u32,
    ) -> Result<(), SyncStep> {
        if header.prev_hash != self.hash {
            return Err(SyncStep::Abandoned("non-continuous headers"));
        }
        check_header(header, params).map_err(|_| SyncStep::Invalid("invalid_header"))?;
        let height = self.height + 1;
        let missing_time = std::cell::Cell::new(false);
        let expected_bits = next_work_required(params, height, self.bits, |h| {
            self.time_at(h).unwrap_or_else(|| {
                missing_time.set(true);
                0
            })
        });
        if missing_time.get() {
            return Err(SyncStep::Abandoned("difficulty window beyond the history"));
        }
        let recent: Vec<u32> = self
            .times
            .iter()
            .rev()
            .take(MEDIAN_TIME_SPAN)
            .copied()
            .collect();
        let ctx = BlockContext {
            height,
            expected_bits,
            median_time_past: median_time_past(&recent),
            now,
        };
        match check_header_contextual(header, &ctx, params) {
            Ok(()) => {}
            Err(BlockError::TimeTooNew { .. }) => {
                return Err(SyncStep::Abandoned("header time too new"))
            }
            Err(_) => return Err(SyncStep::Invalid("invalid_header")),
        }
        self.hash = header.hash();
        self.height = height;
        self.bits = header.bits;
        self.work += work_from_compact(header.bits);
        self.times.push_back(header.time);
        if self.times.len() > TIME_HISTORY {
            self.times.pop_front();
        }
        Ok(())
    }
}

/// A queue of bits, eight to a byte.
#[derive(Debug, Default)]
struct BitQueue {
    words: VecDeque<u64>,
    /// Bits used in the last word, and bits consumed from the first.
    back_len: u32,
    front_pos: u32,
}

impl BitQueue {
    fn push(&mut self, bit: bool) {
        if self.words.is_empty() || self.back_len == 64 {
            self.words.push_back(0);
            self.back_len = 0;
        }
        if bit {
            *self.words.back_mut().expect("just ensured") |= 1 << self.back_len;
        }
        self.back_len += 1;
    }

    fn pop(&mut self) -> Option<bool> {
        let word = *self.words.front()?;
        if self.words.len() == 1 && self.front_pos == self.back_len {
            return None;
        }
        let bit = word >> self.front_pos & 1 == 1;
        self.front_pos += 1;
        if self.front_pos == 64 {
            self.words.pop_front();
            self.front_pos = 0;
            if self.words.is_empty() {
                self.back_len = 0;
            }
        }
        Some(bit)
    }

    fn bytes(&self) -> usize {
        self.words.len() * 8
    }
}

#[derive(Debug)]
enum Phase {
    Presync,
    Redownload {
        cursor: Cursor,
        buffer: VecDeque<BlockHeader>,
    },
}

/// One peer's headers pre-sync.
#[derive(Debug)]
pub struct HeadersSync {
    params: &'static ChainParams,
    /// Where the peer's chain forks off the index, as a cursor.
    anchor: Cursor,
    threshold: U256,
    /// Keys the commitment bits, so a peer cannot predict them.
    salt: RandomState,
    /// Commitments are taken at heights `offset mod COMMITMENT_PERIOD`.
    offset: u32,
    commitments: BitQueue,
    commitments_taken: u64,
    max_commitments: u64,
    presync: Cursor,
    phase: Phase,
}

impl HeadersSync {
    /// Starts a pre-sync of a chain that forks off the indexed `anchor` and
    /// must reach `threshold` total work; `now` is the local clock.
    pub fn new(
        params: &'static ChainParams,
        anchor: &HeaderAnchor,
        threshold: U256,
        now: u32,
    ) -> HeadersSync {
        let salt = RandomState::new();
        let offset = (salt.hash_one(anchor.hash) % u64::from(COMMITMENT_PERIOD)) as u32;
        let cursor = Cursor::at(anchor);
        let recent: Vec<u32> = cursor
            .times
            .iter()
            .rev()
            .take(MEDIAN_TIME_SPAN)
            .copied()
            .collect();
        // No valid chain from the anchor can have more headers than its
        // timestamps allow: at most MAX_BLOCKS_PER_SECOND per second from the
        // anchor's median time past to the furthest time allowed now.
        let span = u64::from(now.saturating_add(params.max_future_block_time_secs))
            .saturating_sub(u64::from(median_time_past(&recent)));
        let max_commitments =
            span.saturating_mul(MAX_BLOCKS_PER_SECOND) / u64::from(COMMITMENT_PERIOD) + 1;
        HeadersSync {
            params,
            anchor: cursor.clone(),
            threshold,
            salt,
            offset,
            commitments: BitQueue::default(),
            commitments_taken: 0,
            max_commitments,
            presync: cursor,
            phase: Phase::Presync,
        }
    }

    fn commitment(salt: &RandomState, hash: &BlockHash) -> bool {
        salt.hash_one(hash) & 1 == 1
    }

    /// The hash the next batch must build on.
    pub fn expected_parent(&self) -> BlockHash {
        match &self.phase {
            Phase::Presync => self.presync.hash,
            Phase::Redownload { cursor, .. } => cursor.hash,
        }
    }

    /// Memory held for this peer, in bytes.
    pub fn memory_bytes(&self) -> usize {
        let buffered = match &self.phase {
            Phase::Presync => 0,
            Phase::Redownload { buffer, .. } => {
                buffer.capacity() * std::mem::size_of::<BlockHeader>()
            }
        };
        std::mem::size_of::<Self>()
            + 3 * TIME_HISTORY * std::mem::size_of::<u32>()
            + self.commitments.bytes()
            + buffered
    }

    /// Takes the next batch of headers from the peer.
    pub fn on_headers(&mut self, headers: &[BlockHeader], now: u32) -> SyncStep {
        let full = headers.len() == MAX_HEADERS;
        match self.phase {
            Phase::Presync => self.presync_batch(headers, full, now),
            Phase::Redownload { .. } => self.redownload_batch(headers, full, now),
        }
    }

    fn presync_batch(&mut self, headers: &[BlockHeader], full: bool, now: u32) -> SyncStep {
        for header in headers {
            if let Err(step) = self.presync.advance(header, self.params, now) {
                return step;
            }
            if self.presync.height % COMMITMENT_PERIOD == self.offset {
                if self.commitments_taken >= self.max_commitments {
                    // Longer than any chain the timestamps allow.
                    return SyncStep::Invalid("headers_chain_too_long");
                }
                let bit = Self::commitment(&self.salt, &self.presync.hash);
                self.commitments.push(bit);
                self.commitments_taken += 1;
            }
        }
        if self.presync.work >= self.threshold {
            // Enough work shown: download the same chain again from the
            // anchor, this time to index it.
            self.phase = Phase::Redownload {
                cursor: self.anchor.clone(),
                buffer: VecDeque::new(),
            };
            return SyncStep::Request(vec![self.anchor.hash]);
        }
        if full {
            SyncStep::Request(vec![self.presync.hash])
        } else {
            SyncStep::Abandoned("chain ended below the work threshold")
        }
    }

    fn redownload_batch(&mut self, headers: &[BlockHeader], full: bool, now: u32) -> SyncStep {
        let Phase::Redownload { cursor, buffer } = &mut self.phase else {
            unreachable!("called in the redownload phase");
        };
        for header in headers {
            if let Err(step) = cursor.advance(header, self.params, now) {
                return step;
            }
            if cursor.height % COMMITMENT_PERIOD == self.offset {
                let expected = self.commitments.pop();
                let actual = Self::commitment(&self.salt, &cursor.hash);
                if expected != Some(actual) && cursor.work < self.threshold {
                    return SyncStep::Abandoned("redownloaded chain differs");
                }
            }
            buffer.push_back(*header);
        }
        if cursor.work >= self.threshold {
            // The redownloaded chain has the work itself: everything goes.
            return SyncStep::Commit {
                headers: buffer.drain(..).collect(),
                next: None,
            };
        }
        if !full {
            return SyncStep::Abandoned("redownloaded chain ended below the work threshold");
        }
        let release = buffer.len().saturating_sub(REDOWNLOAD_BUFFER_HEADERS);
        SyncStep::Commit {
            headers: buffer.drain(..release).collect(),
            next: Some(vec![cursor.hash]),
        }
    }

    /// Whether the pre-sync has shown enough work and the chain is being
    /// downloaded again.
    pub fn is_redownloading(&self) -> bool {
        matches!(self.phase, Phase::Redownload { .. })
    }
}

#[cfg(test)]
mod tests;
