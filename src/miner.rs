//! The multi-core miner: nonce search over a header with a SHA-256
//! midstate, spread over a rayon pool in disjoint ranges, and the loop that
//! keeps it fed with fresh work. Where the work comes from (the node's own
//! chain, or a node's REST API) is a [`WorkSource`]; the search itself is
//! pure and deterministic for a given header and range.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use primitive_types::U256;
use rayon::prelude::*;
// sha2 0.10's block function takes generic-array 0.14 blocks, which that
// crate now marks deprecated in favour of 1.x; sha2 0.10 cannot take 1.x.
#[allow(deprecated)]
use sha2::digest::generic_array::GenericArray;

use crate::consensus::block::{Block, BlockHeader, HEADER_LEN};
use crate::consensus::hash::Hash256;
use crate::consensus::pow::{meets_target, target_from_compact};

/// Nonces one thread tries between checks of the stop flag.
pub const NONCES_PER_CHUNK: u32 = 1 << 14;
/// Nonces one thread tries per round; between rounds the work source is
/// asked whether the work went stale (about 0.2 s at 5 MH/s).
pub const NONCES_PER_THREAD_ROUND: u64 = 1 << 20;
/// The size of the nonce space of one header.
pub const NONCE_SPACE: u64 = 1 << 32;

/// SHA-256's initial state.
const SHA256_IV: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];

/// A header hashed up to its fixed first 64 bytes: each nonce then costs two
/// SHA-256 block compressions instead of three.
#[derive(Clone)]
pub struct HeaderMidstate {
    /// State after the first 64 bytes (version, previous hash, 28 bytes of
    /// the merkle root).
    state: [u32; 8],
    /// Second block of the first hash: header bytes 64..80 then padding for
    /// an 80-byte message. The nonce sits at bytes 12..16.
    tail: [u8; 64],
}

#[allow(deprecated)] // GenericArray: see the import.
impl HeaderMidstate {
    pub fn new(header: &[u8; HEADER_LEN]) -> Self {
        let mut state = SHA256_IV;
        sha2::compress256(&mut state, &[GenericArray::clone_from_slice(&header[..64])]);
        let mut tail = [0u8; 64];
        tail[..16].copy_from_slice(&header[64..]);
        tail[16] = 0x80;
        tail[56..].copy_from_slice(&((HEADER_LEN as u64) * 8).to_be_bytes());
        HeaderMidstate { state, tail }
    }

    /// sha256d of the header with `nonce` in place of its own.
    pub fn hash(&self, nonce: u32) -> Hash256 {
        let mut tail = self.tail;
        tail[12..16].copy_from_slice(&nonce.to_le_bytes());
        let mut first = self.state;
        sha2::compress256(&mut first, &[GenericArray::clone_from_slice(&tail)]);
        let mut block = [0u8; 64];
        for (chunk, word) in block.chunks_exact_mut(4).zip(first) {
            chunk.copy_from_slice(&word.to_be_bytes());
        }
        block[32] = 0x80;
        block[56..].copy_from_slice(&256u64.to_be_bytes());
        let mut second = SHA256_IV;
        sha2::compress256(&mut second, &[GenericArray::clone_from_slice(&block)]);
        let mut out = [0u8; 32];
        for (chunk, word) in out.chunks_exact_mut(4).zip(second) {
            chunk.copy_from_slice(&word.to_be_bytes());
        }
        Hash256(out)
    }
}

/// Tries `nonces` on `midstate`; returns the first nonce that meets `target`.
/// Asks `stop` every [`NONCES_PER_CHUNK`] nonces and adds the number of
/// hashes done to `hashes`.
pub fn scan(
    midstate: &HeaderMidstate,
    target: &U256,
    nonces: Range<u64>,
    stop: &dyn Fn() -> bool,
    hashes: &AtomicU64,
) -> Option<u32> {
    // The hash read as a little-endian number: its top 32 bits are the last
    // four bytes. Most hashes are rejected on them alone.
    let target_top = (*target >> 224).low_u32();
    let mut start = nonces.start;
    while start < nonces.end {
        if stop() {
            return None;
        }
        let end = (start + u64::from(NONCES_PER_CHUNK)).min(nonces.end);
        for nonce in start..end {
            let nonce = nonce as u32;
            let hash = midstate.hash(nonce);
            let top = u32::from_le_bytes(hash.0[28..].try_into().expect("4 bytes"));
            if top <= target_top && meets_target(&hash, target) {
                hashes.fetch_add(nonce as u64 - start + 1, Ordering::Relaxed);
                return Some(nonce);
            }
        }
        hashes.fetch_add(end - start, Ordering::Relaxed);
        start = end;
    }
    None
}

/// A pool of mining threads.
pub struct Miner {
    pool: rayon::ThreadPool,
    threads: usize,
    /// Hashes computed since the miner was made.
    hashes: AtomicU64,
    /// Nonces [`mine`] tries per header before rolling the extra nonce:
    /// all of them, except in tests.
    nonce_space: u64,
}

impl Miner {
    pub fn new(threads: usize) -> anyhow::Result<Miner> {
        let threads = threads.max(1);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("miner-{i}"))
            .start_handler(|_| crate::priority::lower_current_thread())
            .build()?;
        Ok(Miner {
            pool,
            threads,
            hashes: AtomicU64::new(0),
            nonce_space: NONCE_SPACE,
        })
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Hashes computed so far, over all threads.
    pub fn hashes(&self) -> u64 {
        self.hashes.load(Ordering::Relaxed)
    }

    /// Searches `nonces` of `header` for one meeting `target`, each thread
    /// over its own contiguous part of the range. Returns as soon as one
    /// thread finds a nonce, or when `stop` is set.
    pub fn search(
        &self,
        header: &BlockHeader,
        target: &U256,
        nonces: Range<u64>,
        stop: &AtomicBool,
    ) -> Option<u32> {
        let midstate = HeaderMidstate::new(&header.to_array());
        let nonces = nonces.start..nonces.end.min(NONCE_SPACE);
        let len = nonces.end.saturating_sub(nonces.start);
        let share = len.div_ceil(self.threads as u64).max(1);
        let found = AtomicBool::new(false);
        let should_stop = || stop.load(Ordering::Relaxed) || found.load(Ordering::Relaxed);
        self.pool.install(|| {
            (0..self.threads as u64).into_par_iter().find_map_any(|i| {
                let start = nonces.start + i * share;
                let end = (start + share).min(nonces.end);
                if start >= end {
                    return None;
                }
                let nonce = scan(&midstate, target, start..end, &should_stop, &self.hashes);
                if nonce.is_some() {
                    found.store(true, Ordering::Relaxed);
                }
                nonce
            })
        })
    }
}

/// Whether the work a miner holds is still worth finishing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    Fresh,
    /// The tip moved: a solution would be an orphan.
    TipChanged,
    /// The mempool changed long enough ago that a new template pays more.
    MempoolChanged,
}

/// Where the miner gets work and sends solutions.
pub trait WorkSource {
    /// A new block to solve, on the current tip, with a fresh extra nonce.
    fn template(&mut self) -> anyhow::Result<Block>;
    /// Whether `work` (handed out at `since`) should be dropped for a new
    /// template.
    fn freshness(&mut self, work: &Block, since: Instant) -> anyhow::Result<Freshness>;
    /// Hands over a solved block; returns whether the node accepted it.
    fn submit(&mut self, block: Block) -> anyhow::Result<bool>;
}

/// What a run of [`mine`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MiningReport {
    pub blocks_found: u64,
    pub blocks_accepted: u64,
    pub stale_templates: u64,
    pub extra_nonce_rolls: u64,
}

/// Mines on `source` until `stop` is set or `blocks` blocks were accepted.
/// Calls `progress` about every `report_every` with the hash rate since the
/// last call.
pub fn mine(
    miner: &Miner,
    source: &mut dyn WorkSource,
    blocks: Option<u64>,
    stop: &AtomicBool,
    report_every: Duration,
    progress: &mut dyn FnMut(f64, &MiningReport),
) -> anyhow::Result<MiningReport> {
    let round = NONCES_PER_THREAD_ROUND * miner.threads() as u64;
    let mut report = MiningReport::default();
    let mut last_report = (Instant::now(), miner.hashes());
    'work: while !stop.load(Ordering::Relaxed) && blocks.is_none_or(|b| report.blocks_accepted < b)
    {
        let mut block = source.template()?;
        let since = Instant::now();
        let target = target_from_compact(block.header.bits)?;
        let mut next = 0u64;
        loop {
            let end = (next + round).min(miner.nonce_space);
            let found = miner.search(&block.header, &target, next..end, stop);
            let elapsed = last_report.0.elapsed();
            if elapsed >= report_every {
                let hashes = miner.hashes();
                let rate = (hashes - last_report.1) as f64 / elapsed.as_secs_f64();
                progress(rate, &report);
                last_report = (Instant::now(), hashes);
            }
            if let Some(nonce) = found {
                block.header.nonce = nonce;
                report.blocks_found += 1;
                if source.submit(block)? {
                    report.blocks_accepted += 1;
                }
                continue 'work;
            }
            if stop.load(Ordering::Relaxed) {
                break 'work;
            }
            next = end;
            if next == miner.nonce_space {
                crate::mining::roll_extra_nonce(&mut block);
                report.extra_nonce_rolls += 1;
                next = 0;
            }
            if source.freshness(&block, since)? != Freshness::Fresh {
                report.stale_templates += 1;
                continue 'work;
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::hash::sha256d;
    use crate::consensus::merkle::merkle_root;
    use crate::consensus::params::Network;
    use crate::consensus::transaction::TxIn;
    use crate::testkit::TestChain;

    #[test]
    fn midstate_hash_equals_sha256d_of_the_header() {
        let mut header = Network::Regtest.params().genesis_block().header;
        for nonce in [0u32, 1, 0x8000_0000, u32::MAX, 123_456_789] {
            header.nonce = nonce;
            header.time = header.time.wrapping_add(nonce);
            let midstate = HeaderMidstate::new(&header.to_array());
            assert_eq!(midstate.hash(nonce), sha256d(&header.to_array()));
            assert_eq!(midstate.hash(nonce), header.hash());
        }
    }

    #[test]
    fn parallel_search_finds_the_lowest_meeting_nonce_of_one_thread() {
        // Search a block whose target passes about 1 in 4096 hashes: with one
        // thread the first success is the smallest meeting nonce, and every
        // thread count finds a nonce that meets the target within the range.
        let chain = TestChain::new(Network::Regtest);
        let mut block = chain.build_block(crate::testkit::payee(1), vec![]);
        block.header.bits = 0x1f0f_ffff;
        let target = target_from_compact(block.header.bits).unwrap();
        let stop = AtomicBool::new(false);
        let midstate = HeaderMidstate::new(&block.header.to_array());
        let expected = (0..u32::MAX)
            .find(|n| meets_target(&midstate.hash(*n), &target))
            .unwrap();
        let one = Miner::new(1).unwrap();
        assert_eq!(
            one.search(&block.header, &target, 0..NONCE_SPACE, &stop),
            Some(expected)
        );
        assert_eq!(one.hashes(), u64::from(expected) + 1);
        let four = Miner::new(4).unwrap();
        let nonce = four
            .search(&block.header, &target, 0..1 << 20, &stop)
            .unwrap();
        block.header.nonce = nonce;
        assert!(meets_target(&block.header.hash(), &target));
        // A range that holds no solution gives none, and counts every hash.
        let none = Miner::new(2).unwrap();
        assert_eq!(
            none.search(&block.header, &target, 0..u64::from(expected), &stop),
            None
        );
        assert_eq!(none.hashes(), u64::from(expected));
    }

    /// A work source over a test chain: counts what the loop asks for, and
    /// declares the work stale on the calls listed in `stale_on`.
    struct Scripted {
        chain: TestChain,
        bits: u32,
        templates: u32,
        freshness_calls: u32,
        stale_on: Vec<u32>,
        submitted: Vec<Block>,
    }

    impl WorkSource for Scripted {
        fn template(&mut self) -> anyhow::Result<Block> {
            self.templates += 1;
            let mut block = self.chain.build_block(crate::testkit::payee(9), vec![]);
            // A fresh extra nonce per template, as real sources hand out.
            if let [TxIn::Coinbase { extra_nonce, .. }] =
                block.transactions[0].inputs.as_mut_slice()
            {
                *extra_nonce = u64::from(self.templates) << 32;
            }
            block.header.merkle_root = merkle_root(&block.txids()).0;
            block.header.bits = self.bits;
            Ok(block)
        }

        fn freshness(&mut self, _: &Block, _: Instant) -> anyhow::Result<Freshness> {
            self.freshness_calls += 1;
            Ok(if self.stale_on.contains(&self.freshness_calls) {
                Freshness::TipChanged
            } else {
                Freshness::Fresh
            })
        }

        fn submit(&mut self, block: Block) -> anyhow::Result<bool> {
            self.submitted.push(block);
            Ok(true)
        }
    }

    #[test]
    fn the_loop_rolls_the_extra_nonce_and_drops_stale_work() {
        // A target met by about 1 hash in 65 536, searched 1 024 nonces at
        // a time per header: the loop must roll the extra nonce many times
        // before a block is found, and every block it submits meets the
        // target with a coinbase that commits to its merkle root.
        let mut source = Scripted {
            chain: TestChain::new(Network::Regtest),
            bits: 0x1f00_ffff,
            templates: 0,
            freshness_calls: 0,
            stale_on: vec![3],
            submitted: Vec::new(),
        };
        let mut miner = Miner::new(2).unwrap();
        miner.nonce_space = 1 << 10;
        let stop = AtomicBool::new(false);
        let report = mine(
            &miner,
            &mut source,
            Some(2),
            &stop,
            Duration::from_secs(3600),
            &mut |_, _| {},
        )
        .unwrap();
        assert_eq!(report.blocks_accepted, 2);
        assert_eq!(source.submitted.len(), 2);
        assert_eq!(report.stale_templates, 1);
        // One template per block plus the one dropped as stale.
        assert_eq!(source.templates, 3);
        assert!(report.extra_nonce_rolls > 0, "{report:?}");
        let target = target_from_compact(0x1f00_ffff).unwrap();
        for block in &source.submitted {
            assert!(meets_target(&block.header.hash(), &target));
            assert!(u64::from(block.header.nonce) < miner.nonce_space);
            assert_eq!(block.header.merkle_root, merkle_root(&block.txids()).0);
        }
        // Different extra nonces: different coinbases.
        assert_ne!(
            source.submitted[0].transactions[0].txid(),
            source.submitted[1].transactions[0].txid()
        );
    }

    #[test]
    fn a_set_stop_flag_ends_the_search() {
        let header = Network::Main.params().genesis_block().header;
        let impossible = U256::zero();
        let stop = AtomicBool::new(true);
        let miner = Miner::new(2).unwrap();
        assert_eq!(
            miner.search(&header, &impossible, 0..NONCE_SPACE, &stop),
            None
        );
        assert_eq!(miner.hashes(), 0);
    }
}
