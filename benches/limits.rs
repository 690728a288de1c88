//! The node's physical limits on this machine: signature verifications per
//! second per core, sha256d header hashes per second per core, and full block
//! validation throughput with one core and with all of them.
//!
//! Run: `cargo bench --profile dev --bench limits` (see README: the dev profile
//! is our optimized profile).

use std::time::{Duration, Instant};

use chaincore::consensus::amount::Amount;
use chaincore::consensus::block::Block;
use chaincore::consensus::keys::verify_signature;
use chaincore::consensus::params::Network;
use chaincore::consensus::transaction::{OutPoint, TxOut};
use chaincore::consensus::validation::{check_block, check_block_contextual, SignatureChecks};
use chaincore::mining::grind_nonce;
use chaincore::testkit::{key, signed_spend, TestChain};
use primitive_types::U256;

/// Transactions in the validation benchmark block (each one input, one output).
const BLOCK_TXS: usize = 2_000;

fn rate(count: u64, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64()
}

fn bench_signatures() {
    let signer = key(7);
    let pubkey = signer.public_key();
    let digests: Vec<[u8; 32]> = (0..2_000u32)
        .map(|i| chaincore::consensus::hash::sha256d(&i.to_le_bytes()).0)
        .collect();
    let signatures: Vec<[u8; 64]> = digests.iter().map(|d| signer.sign_digest(d)).collect();
    let start = Instant::now();
    let mut verified = 0u64;
    while start.elapsed() < Duration::from_secs(2) {
        for (digest, signature) in digests.iter().zip(&signatures) {
            verify_signature(&pubkey, signature, digest).expect("valid signature");
            verified += 1;
        }
    }
    println!(
        "signature verification (1 core): {:>12.0} verifies/s",
        rate(verified, start.elapsed())
    );
}

fn bench_header_hashing() {
    let chain = TestChain::new(Network::Main);
    let mut header = chain.tip().header;
    let impossible = U256::zero();
    let per_round = 1u32 << 20;
    let start = Instant::now();
    let mut hashed = 0u64;
    let mut round = 0u32;
    while start.elapsed() < Duration::from_secs(2) {
        assert!(!grind_nonce(
            &mut header,
            &impossible,
            round.wrapping_mul(per_round),
            per_round
        ));
        hashed += u64::from(per_round);
        round += 1;
    }
    println!(
        "sha256d header hashing (1 core): {:>12.0} hashes/s",
        rate(hashed, start.elapsed())
    );
}

fn bench_utxo_digest() {
    use chaincore::consensus::address::PubKeyHash;
    use chaincore::consensus::validation::Utxo;
    use chaincore::store::digest::UtxoDigest;
    let items: Vec<(OutPoint, Utxo)> = (0..2_000u32)
        .map(|i| {
            (
                OutPoint::new(chaincore::consensus::hash::sha256d(&i.to_le_bytes()), i),
                Utxo {
                    output: TxOut {
                        amount: Amount::from_units(u64::from(i)),
                        owner: PubKeyHash([7; 20]),
                    },
                    height: i,
                    is_coinbase: false,
                },
            )
        })
        .collect();
    let mut digest = UtxoDigest::default();
    let start = Instant::now();
    let mut updates = 0u64;
    while start.elapsed() < Duration::from_secs(2) {
        for (outpoint, utxo) in &items {
            digest.insert(outpoint, utxo);
            updates += 1;
        }
    }
    println!(
        "UTXO digest updates (1 core):    {:>12.0} updates/s",
        rate(updates, start.elapsed())
    );
}

/// A chain and a block on its tip with `BLOCK_TXS` signed one-in-one-out
/// spends, all valid.
fn block_with_spends() -> (TestChain, Block) {
    let owner = key(1);
    let mut chain = TestChain::new(Network::Regtest);
    for _ in 0..11 {
        chain.mine_empty(owner.pubkey_hash());
    }
    let (outpoint, utxo) = chain.spendable(owner.pubkey_hash())[0];
    let piece = utxo.output.amount.units() / BLOCK_TXS as u64;
    let split = signed_spend(
        &[(outpoint, utxo.output, &owner)],
        vec![
            TxOut {
                amount: Amount::from_units(piece),
                owner: owner.pubkey_hash()
            };
            BLOCK_TXS
        ],
    );
    let split_txid = split.txid();
    let block = chain.build_block(owner.pubkey_hash(), vec![split]);
    chain.apply(block);
    let spends = (0..BLOCK_TXS as u32)
        .map(|vout| {
            let spent = TxOut {
                amount: Amount::from_units(piece),
                owner: owner.pubkey_hash(),
            };
            signed_spend(
                &[(OutPoint::new(split_txid, vout), spent, &owner)],
                vec![TxOut {
                    amount: Amount::from_units(piece - 1_000),
                    owner: key(2).pubkey_hash(),
                }],
            )
        })
        .collect();
    let block = chain.build_block(owner.pubkey_hash(), spends);
    (chain, block)
}

fn bench_block_validation() {
    let (chain, block) = block_with_spends();
    let ctx = chain.next_context();
    let validate = || {
        check_block(&block, chain.params).expect("valid block");
        check_block_contextual(
            &block,
            &ctx,
            chain.params,
            &chain.utxos,
            SignatureChecks::On,
        )
        .expect("valid block");
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    for threads in [1, cores] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("thread pool");
        pool.install(validate); // warm up
        let start = Instant::now();
        let mut rounds = 0u64;
        while start.elapsed() < Duration::from_secs(3) {
            pool.install(validate);
            rounds += 1;
        }
        let elapsed = start.elapsed();
        println!(
            "block validation ({threads} core{}): {:>12.0} tx/s ({} tx per block, {:.1} ms per block)",
            if threads == 1 { "" } else { "s" },
            rate(rounds * BLOCK_TXS as u64, elapsed),
            BLOCK_TXS,
            elapsed.as_secs_f64() * 1000.0 / rounds as f64
        );
    }
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    bench_signatures();
    bench_header_hashing();
    bench_utxo_digest();
    bench_block_validation();
}
