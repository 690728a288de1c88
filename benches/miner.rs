//! Miner hash rate on 1 and 2 threads beside the single-core sha256d limit
//! of a plain header hash (the foundation's `limits` bench measures the
//! same loop).
//!
//! `cargo bench --profile dev --bench miner [-- quick]`

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use chaincore::consensus::hash::sha256d;
use chaincore::consensus::params::Network;
use chaincore::miner::{HeaderMidstate, Miner, NONCE_SPACE};
use primitive_types::U256;

fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    let per_thread: u64 = if quick { 4_000_000 } else { 40_000_000 };
    let header = Network::Main.params().genesis_block().header;

    // The limit: sha256d of the whole 80-byte header, one core.
    let mut bytes = header.to_array();
    let start = Instant::now();
    let mut best = [0xffu8; 32];
    for nonce in 0..per_thread as u32 {
        bytes[76..].copy_from_slice(&nonce.to_le_bytes());
        let hash = sha256d(&bytes);
        if hash.0 < best {
            best = hash.0;
        }
    }
    let limit = per_thread as f64 / start.elapsed().as_secs_f64();
    println!(
        "sha256d of the full header, 1 core: {:.2} MH/s",
        limit / 1e6
    );

    // The midstate alone, one core.
    let midstate = HeaderMidstate::new(&header.to_array());
    let start = Instant::now();
    for nonce in 0..per_thread as u32 {
        let hash = midstate.hash(nonce);
        if hash.0 < best {
            best = hash.0;
        }
    }
    let mid = per_thread as f64 / start.elapsed().as_secs_f64();
    println!(
        "midstate hash, 1 core: {:.2} MH/s ({:.2}x the full hash)",
        mid / 1e6,
        mid / limit
    );
    std::hint::black_box(best);

    // The miner: an impossible target, so every thread scans its whole share.
    let never = U256::zero();
    let stop = AtomicBool::new(false);
    for threads in [1usize, 2] {
        let miner = Miner::new(threads).unwrap();
        let range = 0..(per_thread * threads as u64).min(NONCE_SPACE);
        let start = Instant::now();
        assert_eq!(miner.search(&header, &never, range, &stop), None);
        let rate = miner.hashes() as f64 / start.elapsed().as_secs_f64();
        println!(
            "miner, {threads} thread{}: {:.2} MH/s, {:.2} MH/s per thread ({:.0}% of the 1-core sha256d limit per thread)",
            if threads == 1 { "" } else { "s" },
            rate / 1e6,
            rate / 1e6 / threads as f64,
            100.0 * rate / threads as f64 / limit
        );
    }
}
