//! Chain-state figures: connect throughput (signatures on and off), the
//! same as a catch-up (headers first) with the write-back cache off and on,
//! what the cache's byte count says against the memory it takes, balance
//! lookups from the address index, reading one transaction of a full
//! block, reorganisation time, and restart time with a long chain on disk.
//!
//! Run: `cargo bench --profile dev --bench chain` (add `-- quick` for smaller
//! sizes while developing, `-- cache` for the cache's figures alone,
//! `-- reads` for the transaction reads alone).

use std::sync::Arc;
use std::time::{Duration, Instant};

use chaincore::chain::{Chain, ChainOptions};
use chaincore::consensus::amount::Amount;
use chaincore::consensus::block::Block;
use chaincore::consensus::hash::BlockHash;
use chaincore::consensus::params::Network;
use chaincore::consensus::transaction::{OutPoint, Transaction, TxOut};
use chaincore::consensus::validation::SignatureChecks;
use chaincore::encoding::Encode;
use chaincore::mining::{assemble_block, solve_block, BlockTemplateHeader};
use chaincore::testkit::{busy_chain, fan_out_chain, key, payee, signed_spend, TestChain};
use rayon::prelude::*;

/// Transactions of the blocks read by `bench_transaction_reads`: one
/// input and two outputs each (199 bytes), so about 1 MB blocks.
const TRANSACTION_READ_BLOCK_TXS: usize = 4_800;

struct Sizes {
    connect_blocks: usize,
    txs_per_block: usize,
    lookup_utxos: usize,
    lookup_addresses: usize,
    restart_blocks: usize,
    accounting_rows: usize,
}

fn open(dir: &tempfile::TempDir, signature_checks: SignatureChecks) -> Chain {
    open_with(
        dir,
        ChainOptions {
            // Catch-up mode: the WAL is written but not synced per block.
            sync_writes: false,
            signature_checks,
            ..ChainOptions::default()
        },
    )
}

fn open_with(dir: &tempfile::TempDir, options: ChainOptions) -> Chain {
    Chain::open(dir.path(), Network::Regtest, options).expect("open chain")
}

fn feed(chain: &mut Chain, blocks: &[Block]) {
    for block in blocks {
        chain
            .process_block(Arc::new(block.clone()), None)
            .expect("process block");
    }
}

fn bench_connect(sizes: &Sizes) {
    let start = Instant::now();
    let test = busy_chain(sizes.connect_blocks, sizes.txs_per_block);
    println!(
        "generated {} blocks x {} tx in {:.1} s",
        sizes.connect_blocks,
        sizes.txs_per_block,
        start.elapsed().as_secs_f64()
    );
    let busy = &test.blocks[test.blocks.len() - sizes.connect_blocks..];
    let setup = &test.blocks[1..test.blocks.len() - sizes.connect_blocks];
    let tx_count: usize = busy.iter().map(|b| b.transactions.len()).sum();
    for checks in [SignatureChecks::On, SignatureChecks::Off] {
        let dir = tempfile::tempdir().unwrap();
        let mut chain = open(&dir, checks);
        feed(&mut chain, setup);
        let start = Instant::now();
        feed(&mut chain, busy);
        let elapsed = start.elapsed().as_secs_f64();
        assert_eq!(chain.tip().hash, test.tip().hash());
        println!(
            "connect, signatures {:<3}: {:>8.1} blocks/s {:>9.0} tx/s ({} blocks, {} tx, {:.1} s)",
            if checks == SignatureChecks::On {
                "on"
            } else {
                "off"
            },
            busy.len() as f64 / elapsed,
            tx_count as f64 / elapsed,
            busy.len(),
            tx_count,
            elapsed
        );
    }
}

/// Connects the busy blocks as a catch-up does (every header first, so the
/// chain knows it is behind) with the cache off (0: every block written as
/// it connects, as before the cache) and on (the default 450 MiB), with
/// signatures on and off, and WAL sync off (as `--no-sync-writes`) and on
/// (the node's default).
fn bench_catch_up_cache(sizes: &Sizes) {
    let test = busy_chain(sizes.connect_blocks, sizes.txs_per_block);
    let busy = &test.blocks[test.blocks.len() - sizes.connect_blocks..];
    let setup = &test.blocks[1..test.blocks.len() - sizes.connect_blocks];
    let tx_count: usize = busy.iter().map(|b| b.transactions.len()).sum();
    let headers: Vec<_> = test.blocks[1..].iter().map(|b| b.header).collect();
    for (checks, sync_writes) in [
        (SignatureChecks::On, false),
        (SignatureChecks::Off, false),
        (SignatureChecks::Off, true),
    ] {
        let mut rates = Vec::new();
        for cache_bytes in [0, chaincore::chain::flush::DEFAULT_CACHE_BYTES] {
            let dir = tempfile::tempdir().unwrap();
            let mut chain = open_with(
                &dir,
                ChainOptions {
                    sync_writes,
                    signature_checks: checks,
                    cache_bytes,
                    ..ChainOptions::default()
                },
            );
            for batch in headers.chunks(2_000) {
                chain.process_headers(batch).expect("headers");
            }
            feed(&mut chain, setup);
            let flushes = chain.cache_usage().flushes;
            let (mut peak_bytes, mut slowest) = (0, Duration::ZERO);
            let start = Instant::now();
            for block in busy {
                let started = Instant::now();
                chain
                    .process_block(Arc::new(block.clone()), None)
                    .expect("process block");
                slowest = slowest.max(started.elapsed());
                peak_bytes = peak_bytes.max(chain.cache_usage().bytes);
            }
            let elapsed = start.elapsed().as_secs_f64();
            assert_eq!(chain.tip().hash, test.tip().hash());
            let rate = tx_count as f64 / elapsed;
            println!(
                "catch-up, signatures {:<3}, WAL sync {:<3}, dbcache {:>3} MiB: {:>8.1} blocks/s {:>9.0} tx/s ({} flushes, cache peak {:.1} MiB, slowest block {:.0} ms)",
                if checks == SignatureChecks::On { "on" } else { "off" },
                if sync_writes { "on" } else { "off" },
                cache_bytes >> 20,
                busy.len() as f64 / elapsed,
                rate,
                chain.cache_usage().flushes - flushes,
                peak_bytes as f64 / (1 << 20) as f64,
                slowest.as_secs_f64() * 1000.0
            );
            rates.push(rate);
        }
        println!("  cache on / off: {:.2}x", rates[1] / rates[0]);
    }
}

/// Fills a cache with UTXO rows (each with its address row, as a block
/// writes them), then builds the write batch a flush makes of them, and
/// compares the cache's byte count with the resident memory the process
/// gained: the count that `--dbcache-mb` bounds (cache and batch, the peak
/// of a flush) must not understate what they take.
fn bench_cache_accounting(rows: usize) {
    use chaincore::store::{StateCache, StateWrites, Store, StoreOptions};
    use chaincore::testkit::process::process_memory;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Network::Regtest, &StoreOptions::default()).unwrap();
    let rss = || process_memory(std::process::id()).expect("own memory").rss as f64;
    let mib = |bytes: f64| bytes / f64::from(1 << 20);
    let before = rss();
    let mut cache = StateCache::default();
    for i in 0..rows as u64 / 2 {
        let mut txid = [0u8; 32];
        txid[..8].copy_from_slice(&i.to_le_bytes());
        txid[8..16].copy_from_slice(&i.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes());
        let outpoint = OutPoint::new(chaincore::consensus::hash::Hash256(txid), 1);
        let utxo = chaincore::consensus::validation::Utxo {
            output: TxOut {
                amount: Amount::from_units(i),
                owner: payee(i),
            },
            height: 7,
            is_coinbase: false,
        };
        cache.put_utxo(&outpoint, &utxo);
    }
    let filled = rss();
    let mut batch = store.batch_with_capacity(cache.batch_bytes());
    cache.write_to(&mut batch);
    let with_batch = rss();
    println!(
        "cache accounting: {} rows counted as {:.1} MiB ({:.0} bytes per row); resident memory grew {:.1} MiB with the cache, {:.1} MiB with the cache and a flush's batch ({:.0} bytes per row)",
        cache.len(),
        mib(cache.bytes() as f64),
        cache.bytes() as f64 / cache.len() as f64,
        mib(filled - before),
        mib(with_batch - before),
        (with_batch - before) / cache.len() as f64
    );
    println!(
        "  the batch: {:.1} MiB counted, {:.1} MiB encoded",
        mib(cache.batch_bytes() as f64),
        mib(batch.size_in_bytes() as f64)
    );
    drop(batch);
    drop(cache);
}

fn bench_balance_lookups(sizes: &Sizes) {
    let test = fan_out_chain(sizes.lookup_utxos, |i| {
        payee((i % sizes.lookup_addresses) as u64)
    });
    let dir = tempfile::tempdir().unwrap();
    let mut chain = open(&dir, SignatureChecks::On);
    let start = Instant::now();
    feed(&mut chain, &test.blocks[1..]);
    println!(
        "address index: {} UTXOs over {} addresses connected in {:.1} s",
        chain.tip().utxo_count,
        sizes.lookup_addresses,
        start.elapsed().as_secs_f64()
    );
    let store = chain.store().clone();
    let lookups_per_thread = 200_000u64;
    for threads in [1usize, 2] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let start = Instant::now();
        let total: u64 = pool.install(|| {
            (0..threads as u64)
                .into_par_iter()
                .map(|t| {
                    let mut sum = 0u64;
                    for i in 0..lookups_per_thread {
                        let n = (i * 7_919 + t * 13) % sizes.lookup_addresses as u64;
                        sum += store.address_stats(&payee(n)).unwrap().balance();
                    }
                    sum
                })
                .sum()
        });
        let elapsed = start.elapsed().as_secs_f64();
        assert!(total > 0);
        println!(
            "balance lookups ({threads} thread{}): {:>10.0} lookups/s",
            if threads == 1 { "" } else { "s" },
            (lookups_per_thread * threads as u64) as f64 / elapsed
        );
    }
}

/// Reads the transaction at a position of a stored block, with the
/// outputs it spent.
type TransactionRead<'a> = dyn Fn(&BlockHash, usize) -> (Transaction, Vec<TxOut>) + 'a;

/// Reading one confirmed transaction with the outputs it spent (what
/// `GET /tx/{txid}` and each row of an address's history need), from
/// blocks of `txs_per_block` transactions: walking the stored block to it
/// (`Store::block_transaction`) beside decoding the whole block and its
/// undo data, the way before, in the same run on the same store.
fn bench_transaction_reads(blocks: usize, txs_per_block: usize) {
    let test = busy_chain(blocks, txs_per_block);
    let dir = tempfile::tempdir().unwrap();
    let mut chain = open(&dir, SignatureChecks::Off);
    feed(&mut chain, &test.blocks[1..]);
    let store = chain.store().clone();
    let tip = chain.height();
    let busy: Vec<_> = (tip + 1 - blocks as u32..=tip)
        .map(|h| store.hash_at_height(h).unwrap().unwrap())
        .collect();
    let size = test.blocks.last().unwrap().encoded_len();
    // Positions spread over each block, the last one included.
    let positions: Vec<usize> = (1..=8).map(|k| k * txs_per_block / 8).collect();
    let whole = |hash: &BlockHash, position: usize| {
        let block = store.block(hash).unwrap().unwrap();
        let undo = store.undo(hash).unwrap().unwrap();
        let before: usize = block.transactions[1..position]
            .iter()
            .map(|t| t.inputs.len())
            .sum();
        let tx = block.transactions[position].clone();
        let spent: Vec<TxOut> = undo[before..before + tx.inputs.len()]
            .iter()
            .map(|(_, u)| u.output)
            .collect();
        (tx, spent)
    };
    let walked = |hash: &BlockHash, position: usize| {
        let found = store.block_transaction(hash, position).unwrap().unwrap();
        (found.tx, found.spent)
    };
    for hash in &busy {
        for &p in &positions {
            assert_eq!(walked(hash, p), whole(hash, p), "both read the same");
        }
    }
    let time = |read: &TransactionRead| {
        let start = Instant::now();
        let mut reads = 0u32;
        for _ in 0..3 {
            for hash in &busy {
                for &p in &positions {
                    std::hint::black_box(read(hash, p));
                    reads += 1;
                }
            }
        }
        start.elapsed() / reads
    };
    let (old, new) = (time(&whole), time(&walked));
    println!(
        "one transaction of a {txs_per_block}-tx block ({} KB): walked to {:.1} µs, \
         whole block and undo decoded {:.1} µs ({:.1}x); a history page of 25 rows \
         in 25 blocks: {:.1} ms against {:.1} ms",
        size / 1000,
        new.as_secs_f64() * 1e6,
        old.as_secs_f64() * 1e6,
        old.as_secs_f64() / new.as_secs_f64(),
        new.as_secs_f64() * 25e3,
        old.as_secs_f64() * 25e3,
    );
}

fn bench_reorg(txs_per_block: usize) {
    for depth in [10usize, 100] {
        // Two branches from the same busy prefix: a of `depth` blocks, then b
        // of `depth + 1`, all blocks carrying transactions.
        let base = busy_chain(5, txs_per_block);
        let a = extend(&base, depth, 1);
        let b = extend(&base, depth + 1, 2);
        let dir = tempfile::tempdir().unwrap();
        let mut chain = open(&dir, SignatureChecks::On);
        feed(&mut chain, &base.blocks[1..]);
        feed(&mut chain, &a);
        feed(&mut chain, &b[..depth]);
        let start = Instant::now();
        feed(&mut chain, &b[depth..]);
        let elapsed = start.elapsed();
        assert_eq!(chain.tip().hash, b[depth].hash());
        println!(
            "reorg depth {depth:>3}: {:>8.1} ms (disconnect {depth}, connect {}, {} tx per block)",
            elapsed.as_secs_f64() * 1000.0,
            depth + 1,
            txs_per_block + 1
        );
    }
}

/// `n` blocks on `base`, each moving every lane's coins once more; `salt`
/// makes the branches differ.
fn extend(base: &TestChain, n: usize, salt: u64) -> Vec<Block> {
    let owner = key(1);
    let mut chain = base.clone();
    let mut blocks = Vec::new();
    for round in 0..n {
        let lanes: Vec<(OutPoint, TxOut)> = chain
            .tip()
            .transactions
            .iter()
            .skip(1)
            .map(|tx| (OutPoint::new(tx.txid(), 1), tx.outputs[1]))
            .collect();
        let txs: Vec<Transaction> = lanes
            .par_iter()
            .enumerate()
            .map(|(i, (outpoint, spent))| {
                signed_spend(
                    &[(*outpoint, *spent, &owner)],
                    vec![
                        TxOut {
                            amount: Amount::from_units(500),
                            owner: payee(salt << 40 | (round as u64) << 20 | i as u64),
                        },
                        TxOut {
                            amount: Amount::from_units(spent.amount.units() - 600),
                            owner: owner.pubkey_hash(),
                        },
                    ],
                )
            })
            .collect();
        let block = chain.build_block(owner.pubkey_hash(), txs);
        chain.apply(block.clone());
        blocks.push(block);
    }
    blocks
}

fn bench_restart(sizes: &Sizes) {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut chain = open(&dir, SignatureChecks::On);
        let start = Instant::now();
        let params = chain.params();
        for _ in 0..sizes.restart_blocks {
            let tip = chain.tip();
            let ctx = chain.context_after(&tip.hash).unwrap();
            let mut block = assemble_block(
                params,
                BlockTemplateHeader {
                    prev_hash: tip.hash,
                    height: ctx.height,
                    time: ctx.median_time_past + 1,
                    bits: ctx.expected_bits,
                },
                key(1).pubkey_hash(),
                0,
                Amount::ZERO,
                Vec::new(),
            );
            solve_block(&mut block);
            chain.process_block(Arc::new(block), None).unwrap();
        }
        println!(
            "restart: wrote {} blocks in {:.1} s",
            sizes.restart_blocks,
            start.elapsed().as_secs_f64()
        );
    }
    for attempt in 1..=3 {
        let start = Instant::now();
        let chain = open(&dir, SignatureChecks::On);
        let tip = chain.tip();
        let elapsed = start.elapsed();
        assert_eq!(tip.height as usize, sizes.restart_blocks);
        println!(
            "restart {attempt}: tip at height {} served {:.0} ms after open began",
            tip.height,
            elapsed.as_secs_f64() * 1000.0
        );
        drop(chain);
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    let sizes = if quick {
        Sizes {
            connect_blocks: 100,
            txs_per_block: 100,
            lookup_utxos: 100_000,
            lookup_addresses: 10_000,
            restart_blocks: 5_000,
            accounting_rows: 1_000_000,
        }
    } else {
        Sizes {
            connect_blocks: 2_000,
            txs_per_block: 100,
            lookup_utxos: 1_000_000,
            lookup_addresses: 100_000,
            restart_blocks: 100_000,
            accounting_rows: 2_000_000,
        }
    };
    let read_blocks = if quick { 4 } else { 25 };
    if std::env::args().any(|a| a == "reads") {
        bench_transaction_reads(read_blocks, TRANSACTION_READ_BLOCK_TXS);
        return;
    }
    // First, while the heap is fresh: memory freed by the other figures
    // would be reused and hide what the cache takes.
    bench_cache_accounting(sizes.accounting_rows);
    if std::env::args().any(|a| a == "cache") {
        // The cache's figures alone.
        bench_catch_up_cache(&sizes);
        return;
    }
    bench_connect(&sizes);
    bench_catch_up_cache(&sizes);
    bench_reorg(sizes.txs_per_block);
    bench_balance_lookups(&sizes);
    bench_transaction_reads(read_blocks, TRANSACTION_READ_BLOCK_TXS);
    bench_restart(&sizes);
}
