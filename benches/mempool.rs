//! Mempool figures: acceptance throughput (full validation, signatures
//! included), what answering a peer's `mempool` and an address's pool
//! reads cost, the cost of checking a full block template before handing it
//! out, and transaction propagation to every mempool of a 10-node network
//! of real nodes on 127.0.0.1.
//!
//! Run: `cargo bench --profile dev --bench mempool` (`-- quick` for small
//! sizes, `-- template` for the template figures alone, `-- memory` for the
//! pool's memory count beside the heap it holds, with every entry paying
//! key(2) and with every entry paying an address of its own).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chaincore::consensus::amount::Amount;
use chaincore::consensus::transaction::{OutPoint, Transaction, TxOut};
use chaincore::encoding::Encode;
use chaincore::mempool::{Mempool, DEFAULT_MAX_MEMPOOL_BYTES};
use chaincore::testkit::process::{http, log_field, log_time, Node};
use chaincore::testkit::{fan_out_chain, key, signed_spend, TestChain};
use rayon::prelude::*;

const BINARY: &str = env!("CARGO_BIN_EXE_chaincore");

/// The system allocator, counting the bytes allocated and not yet freed:
/// what the pool holds is what dropping it frees.
struct Counting;

static ALLOCATED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

// SAFETY: every call goes to the system allocator unchanged; only a counter
// is kept beside it.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        let p = unsafe { std::alloc::System.alloc(layout) };
        if !p.is_null() {
            ALLOCATED.fetch_add(layout.size(), std::sync::atomic::Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: std::alloc::Layout) {
        unsafe { std::alloc::System.dealloc(p, layout) };
        ALLOCATED.fetch_sub(layout.size(), std::sync::atomic::Ordering::Relaxed);
    }

    unsafe fn realloc(&self, p: *mut u8, layout: std::alloc::Layout, new: usize) -> *mut u8 {
        let q = unsafe { std::alloc::System.realloc(p, layout, new) };
        if !q.is_null() {
            ALLOCATED.fetch_add(new, std::sync::atomic::Ordering::Relaxed);
            ALLOCATED.fetch_sub(layout.size(), std::sync::atomic::Ordering::Relaxed);
        }
        q
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;
const LONG: Duration = Duration::from_secs(300);

/// One signed 1-in-1-out spend of each fanned-out coin of key(1), to key(2)
/// or, `fresh`, each to an address of its own.
fn spends(chain: &TestChain, count: usize, fresh: bool) -> Vec<Transaction> {
    let coins: Vec<(OutPoint, TxOut)> = chain
        .utxos
        .iter()
        .filter(|(_, u)| {
            !u.is_coinbase
                && u.output.owner == key(1).pubkey_hash()
                && u.output.amount.units() == 1_000
        })
        .map(|(o, u)| (*o, u.output))
        .take(count)
        .collect();
    coins
        .par_iter()
        .enumerate()
        .map(|(i, (outpoint, output))| {
            signed_spend(
                &[(*outpoint, *output, &key(1))],
                vec![TxOut {
                    amount: Amount::from_units(700),
                    owner: if fresh {
                        chaincore::testkit::payee(i as u64)
                    } else {
                        key(2).pubkey_hash()
                    },
                }],
            )
        })
        .collect()
}

/// A chain of `count` coins of key(1) in a temp dir, and a spend of each
/// (`spends`).
fn chain_and_spends(
    count: usize,
    fresh: bool,
) -> (tempfile::TempDir, chaincore::chain::Chain, Vec<Transaction>) {
    let test = fan_out_chain(count, |_| key(1).pubkey_hash());
    let txs = spends(&test, count, fresh);
    let dir = tempfile::tempdir().unwrap();
    let mut chain = chaincore::testkit::regtest_chain(dir.path());
    for block in &test.blocks[1..] {
        chain.process_block(Arc::new(block.clone()), None).unwrap();
    }
    (dir, chain, txs)
}

fn bench_acceptance(count: usize) {
    let (_dir, chain, txs) = chain_and_spends(count, false);
    let mut pool = Mempool::new(&chain, DEFAULT_MAX_MEMPOOL_BYTES);
    let start = Instant::now();
    for tx in txs {
        pool.accept(&chain, tx).expect("valid transaction");
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "mempool acceptance (1 thread, signatures checked): {:>8.0} tx/s ({} tx in {:.2} s, pool {} bytes)",
        pool.len() as f64 / secs,
        pool.len(),
        secs,
        pool.bytes()
    );
    bench_pool_reads(&pool);
    // What the pool's memory limit counts, beside the heap it holds.
    let (estimate, encoded) = (pool.usage(), pool.bytes());
    let held = ALLOCATED.load(std::sync::atomic::Ordering::Relaxed);
    drop(pool);
    let freed = held.saturating_sub(ALLOCATED.load(std::sync::atomic::Ordering::Relaxed));
    println!(
        "{}; encoded {:.1} MB, held/encoded {:.1}x",
        memory_line(
            &format!("{count} 1-in-1-out entries"),
            count,
            estimate,
            freed
        ),
        encoded as f64 / 1e6,
        freed as f64 / encoded as f64,
    );
}

/// What reads of a pool cost under its lock, each beside the way before
/// measured in the same run: the answer to a peer's `mempool` (the best-
/// paying `MAX_MEMPOOL_ANSWER` txids from the fee-rate index, against
/// sorting every txid) and the pending totals and newest page of one
/// address that every pool transaction pays (kept as entries come and go,
/// and read from the owner's ordered index, against walking and sorting
/// all of them).
fn bench_pool_reads(pool: &Mempool) {
    use chaincore::p2p::protocol::MAX_MEMPOOL_ANSWER;
    let busy = key(2).pubkey_hash();
    let rounds = 20;
    let answer = millis_per_call(rounds, || {
        std::hint::black_box(pool.best_txids(MAX_MEMPOOL_ANSWER));
    });
    let sorted = millis_per_call(rounds, || {
        std::hint::black_box(pool.txids());
    });
    println!(
        "mempool answer ({} entries): best {MAX_MEMPOOL_ANSWER} from the fee-rate index {answer:.3} ms, \
         every txid sorted (before) {sorted:.3} ms ({:.1}x)",
        pool.len(),
        sorted / answer
    );
    // `GET /mempool/txids` holds the pool's lock for its copy of the
    // txids; it used to hold it while it sorted them and wrote the JSON.
    let copy = millis_per_call(rounds, || {
        std::hint::black_box(pool.entries().map(|e| e.txid).collect::<Vec<_>>());
    });
    let whole = millis_per_call(rounds, || {
        std::hint::black_box(serde_json::to_vec(&pool.txids()).unwrap());
    });
    println!(
        "GET /mempool/txids ({} entries) under the pool's lock: the copy {copy:.3} ms, \
         sorted and written as JSON (before) {whole:.3} ms ({:.1}x)",
        pool.len(),
        whole / copy
    );
    let kept = millis_per_call(rounds, || {
        std::hint::black_box(pool.address_stats(&busy));
        let page: Vec<_> = pool.address_entries(&busy, None).rev().take(50).collect();
        std::hint::black_box(page);
    });
    let walked = millis_per_call(rounds, || {
        let mut funded = 0u128;
        let mut all: Vec<_> = pool.address_entries(&busy, None).collect();
        for entry in &all {
            for output in entry.tx.outputs.iter().filter(|o| o.owner == busy) {
                funded += u128::from(output.amount.units());
            }
        }
        all.sort_by_key(|e| std::cmp::Reverse((e.time, e.txid)));
        all.truncate(50);
        std::hint::black_box((funded, all));
    });
    println!(
        "an address paid by all {} pool entries: totals and newest 50 kept {kept:.4} ms, \
         walked and sorted (before) {walked:.3} ms ({:.0}x)",
        pool.address_entry_count(&busy),
        walked / kept
    );
}

/// Milliseconds per call of `f`, over `rounds` calls.
fn millis_per_call(rounds: u32, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    for _ in 0..rounds {
        f();
    }
    start.elapsed().as_secs_f64() * 1000.0 / f64::from(rounds)
}

/// A pool of `count` one-input spends (about a full block), then per
/// template: selecting and assembling it alone (the reference), the
/// node's guarded `node_template` (selection, assembly and
/// `check_template`), and a contextual check of the same block with
/// signatures verified (what the guard skips).
fn bench_template(count: usize) {
    use chaincore::consensus::validation::{check_block_contextual, SignatureChecks};
    use chaincore::mining::{assemble_block, BlockTemplateHeader};
    use chaincore::node::producer::node_template;
    let test = fan_out_chain(count, |_| key(1).pubkey_hash());
    let txs = spends(&test, count, false);
    let dir = tempfile::tempdir().unwrap();
    let mut chain = chaincore::testkit::regtest_chain(dir.path());
    for block in &test.blocks[1..] {
        chain.process_block(Arc::new(block.clone()), None).unwrap();
    }
    let mut pool = Mempool::new(&chain, DEFAULT_MAX_MEMPOOL_BYTES);
    let start = Instant::now();
    for tx in txs {
        pool.accept(&chain, tx).expect("valid transaction");
    }
    let accepting = start.elapsed().as_secs_f64() * 1000.0;
    let start = Instant::now();
    assert_eq!(pool.revalidate(&chain), 0);
    let rebuilding = start.elapsed().as_secs_f64() * 1000.0;
    println!(
        "pool of {} tx: accepting it {:.1} ms (reference), rebuilding it at the tip as after a reorganisation {:.1} ms ({:.2}x)",
        pool.len(),
        accepting,
        rebuilding,
        rebuilding / accepting
    );
    let payout = key(9).pubkey_hash();
    let rounds = 5;
    let unguarded = millis_per_call(rounds, || {
        let tip = chain.tip();
        let ctx = chain.context_after(&tip.hash).unwrap();
        let (txs, fees) = pool.select_for_block(&chain, Mempool::block_space());
        let header = BlockTemplateHeader {
            prev_hash: tip.hash,
            height: ctx.height,
            time: ctx.median_time_past + 1,
            bits: ctx.expected_bits,
        };
        assemble_block(chain.params(), header, payout, 0, fees, txs);
    });
    let mut template = None;
    let guarded = millis_per_call(rounds, || {
        template = Some(node_template(&chain, &mut pool, payout, 0).expect("a valid template"));
    });
    let template = template.unwrap();
    let with_signatures = millis_per_call(rounds, || {
        check_block_contextual(
            &template.block,
            &template.ctx,
            chain.params(),
            chain.store(),
            SignatureChecks::On,
        )
        .expect("a valid template");
    });
    println!(
        "block template of {} tx ({} bytes): select+assemble {:.1} ms (reference), \
         guarded node_template {:.1} ms ({:.2}x), a contextual check with signatures {:.1} ms ({:.2}x)",
        template.block.transactions.len() - 1,
        template.block.encoded_len(),
        unguarded,
        guarded,
        guarded / unguarded,
        with_signatures,
        with_signatures / unguarded,
    );
}

fn seconds_of_day(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs_f64() % 86_400.0
}

fn bench_propagation(nodes: usize, txs_to_send: usize) {
    let test = fan_out_chain(txs_to_send, |_| key(1).pubkey_hash());
    let txs = spends(&test, txs_to_send, false);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("chain.dat");
    chaincore::chain::block_file::write_blocks(
        std::fs::File::create(&file).unwrap(),
        &test.blocks[1..],
    )
    .unwrap();
    let binary = Path::new(BINARY);
    let mut running: Vec<Node> = Vec::new();
    let mut p2p: Vec<SocketAddr> = Vec::new();
    for i in 0..nodes {
        let mut args = vec!["--connect-only".to_string()];
        if i == 0 {
            args.extend(["--import".to_string(), file.to_str().unwrap().to_string()]);
        }
        for back in [1usize, 3] {
            if i >= back {
                args.extend(["--peer".to_string(), p2p[i - back].to_string()]);
            }
        }
        if i == nodes - 1 {
            args.extend(["--peer".to_string(), p2p[0].to_string()]);
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let (node, addr) = Node::start_p2p(binary, &dir.path().join(format!("n{i}")), &refs);
        running.push(node);
        p2p.push(addr);
    }
    for node in &mut running {
        node.wait_for_height(test.height(), LONG);
    }
    let origin = running[0].api_addr();
    let mut sent_at: HashMap<String, f64> = HashMap::new();
    for tx in &txs {
        // Measured from the moment the submission starts.
        let t0 = seconds_of_day(SystemTime::now());
        let (status, body) = http(origin, "POST", "/tx", &hex::encode(tx.to_bytes()));
        assert_eq!(status, 200, "{body}");
        sent_at.insert(tx.txid().to_string(), t0);
        std::thread::sleep(Duration::from_millis(20));
    }
    let deadline = Instant::now() + LONG;
    for node in &running[1..] {
        let api = {
            let mut n = node.log.clone();
            n.retain(|l| l.contains("api listening"));
            n.first()
                .and_then(|l| log_field(l, "addr"))
                .and_then(|a| a.parse::<SocketAddr>().ok())
        };
        if let Some(api) = api {
            loop {
                let (_, body) = http(api, "GET", "/mempool", "");
                if body.contains(&format!("\"count\":{}", txs.len())) || Instant::now() > deadline {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    let mut delays = Vec::new();
    for node in running.into_iter().skip(1) {
        for line in node.stop() {
            if line.contains("transaction accepted") {
                if let (Some(txid), Some(t)) = (log_field(&line, "txid"), log_time(&line)) {
                    if let Some(t0) = sent_at.get(txid) {
                        delays.push((t - t0) * 1000.0);
                    }
                }
            }
        }
    }
    delays.sort_by(f64::total_cmp);
    let pct = |p: f64| delays[((p / 100.0) * (delays.len() - 1) as f64).round() as usize];
    println!(
        "transaction propagation to {} other nodes ({} tx, {} arrivals of {}): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        nodes - 1,
        txs.len(),
        delays.len(),
        txs.len() * (nodes - 1),
        pct(50.0),
        pct(99.0),
        delays.last().copied().unwrap_or(0.0)
    );
}

/// The pool's memory count against the heap it holds when every entry
/// pays an address of its own (an owner slot each, beside its keys).
fn bench_fresh_owner_memory(count: usize) {
    let (_dir, chain, txs) = chain_and_spends(count, true);
    let mut pool = Mempool::new(&chain, DEFAULT_MAX_MEMPOOL_BYTES);
    for tx in txs {
        pool.accept(&chain, tx).expect("valid transaction");
    }
    let estimate = pool.usage();
    // What dropping the pool gives back: its heap, the transactions'
    // included.
    let before = ALLOCATED.load(std::sync::atomic::Ordering::Relaxed);
    drop(pool);
    let held = before.saturating_sub(ALLOCATED.load(std::sync::atomic::Ordering::Relaxed));
    println!(
        "{}",
        memory_line(
            &format!("{count} 1-in-1-out entries each paying a fresh address"),
            count,
            estimate,
            held
        )
    );
}

/// What the pool counted for `count` entries beside the heap it held.
fn memory_line(what: &str, count: usize, counted: usize, held: usize) -> String {
    format!(
        "mempool memory, {what}: counted {:.1} MB ({:.0} B each), heap held {:.1} MB ({:.0} B each, allocations' own bytes), counted/held {:.2}",
        counted as f64 / 1e6,
        counted as f64 / count as f64,
        held as f64 / 1e6,
        held as f64 / count as f64,
        counted as f64 / held as f64,
    )
}

fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    if std::env::args().any(|a| a == "memory") {
        // The memory count beside the heap alone.
        bench_acceptance(20_000);
        bench_fresh_owner_memory(20_000);
        return;
    }
    if std::env::args().any(|a| a == "template") {
        bench_template(if quick { 1_000 } else { 5_000 });
    } else if quick {
        bench_acceptance(2_000);
        bench_fresh_owner_memory(2_000);
        bench_template(1_000);
        bench_propagation(10, 20);
    } else {
        bench_acceptance(20_000);
        bench_fresh_owner_memory(20_000);
        bench_template(5_000);
        bench_propagation(10, 200);
    }
}
