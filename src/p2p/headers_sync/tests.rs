//! The pre-sync state machine, fed regtest header chains directly.

use super::*;
use crate::consensus::params::Network;
use crate::testkit::header_chain;

/// Work of one regtest header (its target meets half of all hashes).
fn header_work() -> U256 {
    work_from_compact(Network::Regtest.params().pow_limit_bits)
}

fn genesis_anchor() -> HeaderAnchor {
    let params = Network::Regtest.params();
    let genesis = params.genesis_block();
    HeaderAnchor {
        hash: genesis.hash(),
        height: 0,
        bits: genesis.header.bits,
        chain_work: header_work(),
        times: vec![genesis.header.time],
    }
}

/// A sync that needs the work of `headers` headers past genesis.
fn sync_needing(headers: u64) -> HeadersSync {
    let anchor = genesis_anchor();
    let threshold = anchor.chain_work + header_work() * U256::from(headers);
    HeadersSync::new(Network::Regtest.params(), &anchor, threshold, now())
}

fn now() -> u32 {
    crate::chain::unix_now()
}

fn chain_of(count: usize, branch: u8) -> Vec<BlockHeader> {
    let genesis = Network::Regtest.params().genesis_block();
    header_chain(genesis.hash(), genesis.header.time, count, 10, branch)
}

#[test]
fn a_chain_that_ends_below_the_threshold_is_abandoned() {
    let headers = chain_of(4_500, 1);
    let mut sync = sync_needing(10_000);
    for batch in headers[..4_000].chunks(MAX_HEADERS) {
        let step = sync.on_headers(batch, now());
        let last = batch.last().unwrap().hash();
        assert_eq!(step, SyncStep::Request(vec![last]));
    }
    assert_eq!(
        sync.on_headers(&headers[4_000..], now()),
        SyncStep::Abandoned("chain ended below the work threshold")
    );
}

#[test]
fn memory_stays_bounded_over_a_long_low_work_chain() {
    let headers = chain_of(100_000, 2);
    let mut sync = sync_needing(1_000_000);
    let start = sync.memory_bytes();
    let mut peak = start;
    for batch in headers.chunks(MAX_HEADERS) {
        assert!(matches!(
            sync.on_headers(batch, now()),
            SyncStep::Request(_)
        ));
        peak = peak.max(sync.memory_bytes());
    }
    // 100 000 headers cost one bit per COMMITMENT_PERIOD: 167 bits.
    assert!(
        peak <= start + 64,
        "memory grew from {start} to {peak} bytes over 100 000 headers"
    );
    assert!(peak < 2_048, "{peak} bytes");
}

#[test]
fn enough_work_is_redownloaded_checked_and_committed_in_order() {
    let headers = chain_of(18_000, 3);
    let mut sync = sync_needing(17_500);
    let anchor = genesis_anchor().hash;
    let batches: Vec<&[BlockHeader]> = headers.chunks(MAX_HEADERS).collect();
    for (i, batch) in batches.iter().enumerate() {
        let step = sync.on_headers(batch, now());
        if i + 1 < batches.len() {
            assert_eq!(step, SyncStep::Request(vec![batch.last().unwrap().hash()]));
        } else {
            assert_eq!(
                step,
                SyncStep::Request(vec![anchor]),
                "work reached: redownload"
            );
        }
    }
    assert!(sync.is_redownloading());
    let mut committed = Vec::new();
    for (i, batch) in batches.iter().enumerate() {
        match sync.on_headers(batch, now()) {
            SyncStep::Commit { headers, next } => {
                committed.extend(headers);
                if i + 1 < batches.len() {
                    let last = batch.last().unwrap().hash();
                    assert_eq!(next, Some(vec![last]));
                    // Nothing is released before enough later commitments
                    // were checked.
                    assert!(
                        committed.len()
                            <= ((i + 1) * MAX_HEADERS).saturating_sub(REDOWNLOAD_BUFFER_HEADERS),
                        "released {} of {}",
                        committed.len(),
                        (i + 1) * MAX_HEADERS
                    );
                } else {
                    assert_eq!(next, None);
                }
            }
            other => panic!("batch {i}: {other:?}"),
        }
    }
    assert_eq!(committed, headers);
}

#[test]
fn a_different_chain_on_redownload_is_abandoned() {
    let honest = chain_of(14_000, 4);
    let other = chain_of(14_000, 5);
    let mut sync = sync_needing(13_000);
    for batch in honest.chunks(MAX_HEADERS) {
        sync.on_headers(batch, now());
    }
    assert!(sync.is_redownloading());
    let mut outcome = None;
    for batch in other.chunks(MAX_HEADERS) {
        match sync.on_headers(batch, now()) {
            SyncStep::Commit { headers, .. } => assert!(headers.is_empty()),
            step => {
                outcome = Some(step);
                break;
            }
        }
    }
    // 21 commitment bits lie before the threshold: a swapped chain matches
    // them all with probability 2^-21.
    assert_eq!(
        outcome,
        Some(SyncStep::Abandoned("redownloaded chain differs"))
    );
}

#[test]
fn broken_headers_are_invalid_and_gaps_abandon() {
    let headers = chain_of(MAX_HEADERS, 6);
    let mut bad = headers.clone();
    bad[10].bits = 0x1d00_ffff; // not what the (fixed) regtest difficulty asks
    assert_eq!(
        sync_needing(10_000).on_headers(&bad, now()),
        SyncStep::Invalid("invalid_header")
    );
    assert_eq!(
        sync_needing(10_000).on_headers(&headers[1..], now()),
        SyncStep::Abandoned("non-continuous headers")
    );
}

#[test]
fn a_header_ahead_of_the_clock_abandons_without_blame() {
    let headers = chain_of(MAX_HEADERS, 7);
    let params = Network::Regtest.params();
    // A clock that stands just after the 100th header's time, with the
    // future allowance: the header far beyond it is too new, not invalid.
    let clock = headers[100].time - params.max_future_block_time_secs;
    let anchor = genesis_anchor();
    let mut sync = HeadersSync::new(params, &anchor, U256::MAX, clock);
    assert_eq!(
        sync.on_headers(&headers, clock),
        SyncStep::Abandoned("header time too new")
    );
}
