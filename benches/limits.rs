//! The node's physical limits on this machine: signature verifications per
//! second on one core and on two, with libsecp256k1 (what consensus uses)
//! beside the k256 reference in the same run; sha256d header hashes per
//! second per core; UTXO-digest updates per core (the store's lattice hash
//! beside the curve multiset hash that store format 2 kept); and full block
//! validation throughput with one core and with all of them, for both
//! signature libraries.
//!
//! Run: `cargo bench --profile dev --bench limits` (see README: the dev profile
//! is our optimized profile).

use std::time::{Duration, Instant};

use chaincore::consensus::amount::Amount;
use chaincore::consensus::block::Block;
use chaincore::consensus::keys::{verify_signature, verify_signature_k256, SignatureVerifier};
use chaincore::consensus::params::Network;
use chaincore::consensus::transaction::{OutPoint, TxOut};
use chaincore::consensus::validation::{check_block, check_block_contextual_verifying_with};
use chaincore::mining::grind_nonce;
use chaincore::testkit::{key, signed_spend, TestChain};
use primitive_types::U256;
use rayon::prelude::*;

/// Transactions in the validation benchmark block (each one input, one output).
const BLOCK_TXS: usize = 2_000;

/// The two signature libraries, consensus's first.
const VERIFIERS: [(&str, SignatureVerifier); 2] = [
    ("libsecp256k1", verify_signature),
    ("k256", verify_signature_k256),
];

/// How long each library is measured per round; rounds alternate between the
/// libraries so that a change in the machine's load hits both alike.
const ROUND: Duration = Duration::from_millis(1_500);
const ROUNDS: u32 = 2;

fn rate(count: u64, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64()
}

fn thread_pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool")
}

fn cores_label(threads: usize) -> String {
    format!("{threads} core{}", if threads == 1 { "" } else { "s" })
}

/// Runs `work` (which handles `per_call` items) for `ROUNDS` rounds of
/// `ROUND` per entry, alternating entries, and returns items/s per entry.
fn alternating_rates<T>(entries: &[T], per_call: u64, work: impl Fn(&T)) -> Vec<f64> {
    let mut done = vec![0u64; entries.len()];
    let mut spent = vec![Duration::ZERO; entries.len()];
    for _ in 0..ROUNDS {
        for (i, entry) in entries.iter().enumerate() {
            work(entry); // warm up
            let start = Instant::now();
            while start.elapsed() < ROUND {
                work(entry);
                done[i] += per_call;
            }
            spent[i] += start.elapsed();
        }
    }
    done.iter().zip(&spent).map(|(&n, &t)| rate(n, t)).collect()
}

fn bench_signatures() {
    let signer = key(7);
    let pubkey = signer.public_key();
    let signed: Vec<([u8; 32], [u8; 64])> = (0..2_000u32)
        .map(|i| {
            let digest = chaincore::consensus::hash::sha256d(&i.to_le_bytes()).0;
            (digest, signer.sign_digest(&digest))
        })
        .collect();
    for threads in [1, 2] {
        let pool = thread_pool(threads);
        let rates = alternating_rates(&VERIFIERS, signed.len() as u64, |(_, verify)| {
            pool.install(|| {
                signed.par_iter().for_each(|(digest, signature)| {
                    verify(&pubkey, signature, digest).expect("valid signature");
                })
            })
        });
        for ((name, _), rate) in VERIFIERS.iter().zip(&rates) {
            println!(
                "signature verification, {name:<12} ({}): {rate:>10.0} verifies/s",
                cores_label(threads)
            );
        }
        println!(
            "  libsecp256k1 / k256 on {}: {:.2}x",
            cores_label(threads),
            rates[0] / rates[1]
        );
    }
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

/// The UTXO digest that store format 2 kept, as the reference: a curve
/// multiset hash (ECMH), each element mapped to secp256k1 by
/// try-and-increment (the point decompressed by libsecp256k1's `PublicKey`
/// parsing, about two square roots per element), the sum by
/// `combine_keys`.
fn utxo_digest_ecmh(elements: &[[u8; 69]]) -> [u8; 33] {
    use sha2::{Digest, Sha256};
    const TAG: &[u8] = b"ChainCore/utxo-ecmh/v1";
    let points: Vec<secp256k1::PublicKey> = elements
        .iter()
        .map(|element| {
            for counter in 0u32.. {
                let x = Sha256::new()
                    .chain_update(TAG)
                    .chain_update(element)
                    .chain_update(counter.to_le_bytes())
                    .finalize();
                let parity = Sha256::new().chain_update(TAG).chain_update(x).finalize()[31] & 1;
                let mut compressed = [0x02 | parity; 33];
                compressed[1..].copy_from_slice(&x);
                if let Ok(point) = secp256k1::PublicKey::from_byte_array_compressed(compressed) {
                    return point;
                }
            }
            unreachable!("a point is found long before the counter wraps")
        })
        .collect();
    let refs: Vec<&secp256k1::PublicKey> = points.iter().collect();
    secp256k1::PublicKey::combine_keys(&refs)
        .expect("random points do not sum to infinity")
        .serialize()
}

fn bench_utxo_digest() {
    use chaincore::consensus::address::PubKeyHash;
    use chaincore::consensus::validation::Utxo;
    use chaincore::store::digest::{utxo_element, UtxoDigest};
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
    let elements: Vec<[u8; 69]> = items.iter().map(|(o, u)| utxo_element(o, u)).collect();
    let pool = thread_pool(1);
    let store_block = || {
        let mut digest = UtxoDigest::default();
        pool.install(|| {
            digest.apply(
                items.iter().map(|(o, u)| (o, u)).collect::<Vec<_>>(),
                Vec::new(),
            )
        });
        digest
    };
    let mut one_at_a_time = UtxoDigest::default();
    for (outpoint, utxo) in &items {
        one_at_a_time.insert(outpoint, utxo);
    }
    assert_eq!(
        store_block(),
        one_at_a_time,
        "a block's sum is the sum of its elements"
    );

    let start = Instant::now();
    let mut updates = 0u64;
    while start.elapsed() < Duration::from_secs(2) {
        for (outpoint, utxo) in &items {
            one_at_a_time.insert(outpoint, utxo);
            updates += 1;
        }
    }
    println!(
        "UTXO digest updates, lattice hash one at a time (1 core): {:>10.0} updates/s",
        rate(updates, start.elapsed())
    );

    let digests = ["lattice (LtHash16, format 3)", "curve (ECMH, format 2)"];
    let rates = alternating_rates(&digests, items.len() as u64, |digest| {
        if digest.starts_with("lattice") {
            store_block();
        } else {
            utxo_digest_ecmh(&elements);
        }
    });
    for (digest, rate) in digests.iter().zip(&rates) {
        println!(
            "UTXO digest updates, {digest:<28} per block (1 core): {rate:>10.0} updates/s ({} per block)",
            items.len()
        );
    }
    println!("  lattice / curve digest: {:.2}x", rates[0] / rates[1]);
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
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    for threads in [1, cores] {
        let pool = thread_pool(threads);
        let rates = alternating_rates(&VERIFIERS, BLOCK_TXS as u64, |(_, verify)| {
            pool.install(|| {
                check_block(&block, chain.params).expect("valid block");
                check_block_contextual_verifying_with(
                    &block,
                    &ctx,
                    chain.params,
                    &chain.utxos,
                    *verify,
                )
                .expect("valid block");
            })
        });
        for ((name, _), rate) in VERIFIERS.iter().zip(&rates) {
            println!(
                "block validation, {name:<12} ({}): {rate:>10.0} tx/s ({BLOCK_TXS} tx per block, {:.1} ms per block)",
                cores_label(threads),
                BLOCK_TXS as f64 * 1000.0 / rate
            );
        }
        println!(
            "  libsecp256k1 / k256 on {}: {:.2}x",
            cores_label(threads),
            rates[0] / rates[1]
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
