//! Network figures with real nodes on 127.0.0.1: sync throughput between two
//! nodes for a chain of 2 000 blocks x 100 transactions and of 100 blocks x
//! 2 000 (the syncing node with its write-back cache off and on, and the
//! chain's time per stage), and block
//! propagation time to every node of a 10-node network. Also, in process,
//! the protocol's CPU per synced block with 2 000 and with 100 000 headers
//! ahead of the blocks: scheduling must not grow with the distance.
//!
//! Sync figures come with the two-core signature limit of libsecp256k1 and
//! k256 measured in the same run, the sync rate as a share of it, and the
//! REST latency a wallet sees from the syncing node beside the same node
//! idle.
//!
//! Run: `cargo bench --profile dev --bench p2p` (`-- quick` for small sizes,
//! `-- sync` for the sync figures alone, `-- sync-small` or `-- sync-big`
//! for one of its two chains, `-- sync-cost` for the in-process
//! scheduling figure alone).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chaincore::consensus::address::Address;
use chaincore::consensus::params::Network;
use chaincore::encoding::Encode;
use chaincore::testkit::process::{http, log_field, log_time, Node};
use chaincore::testkit::{busy_chain, key};

const BINARY: &str = env!("CARGO_BIN_EXE_chaincore");
const LONG: Duration = Duration::from_secs(900);

/// Request latencies of a poller that GETs `/address/{a}` and `/status`
/// every `POLL_EVERY` until stopped, in milliseconds, sorted.
struct Poller {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<[Vec<f64>; 2]>,
}

const POLL_EVERY: Duration = Duration::from_millis(20);

impl Poller {
    fn start(api: std::net::SocketAddr, address: String) -> Poller {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut latencies = [Vec::new(), Vec::new()];
            while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
                for (i, path) in [format!("/address/{address}"), "/status".to_string()]
                    .iter()
                    .enumerate()
                {
                    let start = Instant::now();
                    let (status, body) = http(api, "GET", path, "");
                    assert_eq!(status, 200, "GET {path}: {body}");
                    latencies[i].push(start.elapsed().as_secs_f64() * 1e3);
                }
                std::thread::sleep(POLL_EVERY);
            }
            for l in &mut latencies {
                l.sort_by(f64::total_cmp);
            }
            latencies
        });
        Poller { stop, thread }
    }

    fn stop(self) -> [Vec<f64>; 2] {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().expect("poller")
    }
}

fn latency_line(label: &str, sorted: &[f64]) -> String {
    format!(
        "{label}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms over {} requests",
        percentile(sorted, 50.0),
        percentile(sorted, 99.0),
        sorted.last().copied().unwrap_or(0.0),
        sorted.len()
    )
}

/// Sync throughput, and a wallet's view of the syncing node: `GET
/// /address` and `GET /status` every 20 ms during the sync, beside the
/// same node idle afterwards for as long.
fn bench_sync(blocks: usize, txs: usize) -> f64 {
    let chain = busy_chain(blocks, txs);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("chain.dat");
    chaincore::chain::block_file::write_blocks(
        std::fs::File::create(&file).unwrap(),
        &chain.blocks[1..],
    )
    .unwrap();
    let bytes: usize = chain.blocks[1..].iter().map(Encode::encoded_len).sum();
    let tx_count: usize = chain.blocks[1..].iter().map(|b| b.transactions.len()).sum();
    let binary = Path::new(BINARY);
    let (mut a, a_addr) = Node::start_p2p(
        binary,
        &dir.path().join("a"),
        &[
            "--connect-only",
            "--no-sync-writes",
            "--import",
            file.to_str().unwrap(),
        ],
    );
    a.wait_for("import done", LONG);
    // The syncing node without its write-back cache (every block written as
    // it connects), then with the default one, from the same source; WAL
    // sync off, as every figure of this benchmark since the first. A wallet
    // polls the node with the cache.
    let a_peer = a_addr.to_string();
    let wallet = Address::new(Network::Regtest, key(1).pubkey_hash()).to_string();
    let mut rates = Vec::new();
    for dbcache_mb in ["0", "450"] {
        let b_dir = dir.path().join(format!("b-{dbcache_mb}"));
        let a_cpu_before = a.cpu();
        let start = Instant::now();
        let mut b = Node::start(
            binary,
            &b_dir,
            &[
                "--connect-only",
                "--no-sync-writes",
                "--peer",
                &a_peer,
                "--dbcache-mb",
                dbcache_mb,
            ],
        );
        let polled = (dbcache_mb != "0").then(|| Poller::start(b.api_addr(), wallet.clone()));
        b.wait_for_height(chain.height(), LONG);
        let secs = start.elapsed().as_secs_f64();
        // CPU time is steadier than wall time on a shared machine: what the
        // sync cost each node, whatever else ran beside it.
        let b_cpu = b.cpu().as_secs_f64();
        let a_cpu = a.cpu().saturating_sub(a_cpu_before).as_secs_f64();
        let during = polled.map(Poller::stop);
        let idle = during.as_ref().map(|_| {
            let idle = Poller::start(b.api_addr(), wallet.clone());
            std::thread::sleep(Duration::from_secs_f64(secs.min(30.0)));
            idle.stop()
        });
        let log = b.stop();
        println!(
            "sync {} blocks ({} tx, {:.1} MB) over loopback, dbcache {:>3} MiB: {:.1} s, {:.0} blocks/s, {:.0} tx/s, {:.2} MB/s",
            chain.height(),
            tx_count,
            bytes as f64 / 1e6,
            dbcache_mb,
            secs,
            f64::from(chain.height()) / secs,
            tx_count as f64 / secs,
            bytes as f64 / 1e6 / secs
        );
        println!(
            "  CPU: syncing node {:.1} s ({:.1} µs per tx), serving node {:.1} s ({:.1} µs per tx), {:.0}% of two cores",
            b_cpu,
            b_cpu * 1e6 / tx_count as f64,
            a_cpu,
            a_cpu * 1e6 / tx_count as f64,
            (a_cpu + b_cpu) * 100.0 / (2.0 * secs)
        );
        if let Some(line) = log.iter().find(|l| l.contains("chain stage times")) {
            println!("  {}", stage_shares(line));
        }
        if let (Some(during), Some(idle)) = (during, idle) {
            for (i, route) in ["GET /address", "GET /status"].iter().enumerate() {
                println!(
                    "  {}",
                    latency_line(&format!("{route} every 20 ms during sync"), &during[i])
                );
                println!(
                    "  {}",
                    latency_line(&format!("{route} on the same node idle"), &idle[i])
                );
            }
        }
        rates.push(tx_count as f64 / secs);
        std::fs::remove_dir_all(&b_dir).ok();
    }
    a.stop();
    println!(
        "  sync with the cache / without: {:.2}x",
        rates[1] / rates[0]
    );
    rates[1]
}

/// The chain's time per stage (its `chain stage times` log line, in
/// microseconds) as shares of the whole; then, within the signatures
/// stage, the busy time of each of its overlapping halves (the signature
/// checks; the rows' preparation, of which the UTXO-set digest) and of the
/// background flushes on their own thread, as shares of the same whole.
fn stage_shares(line: &str) -> String {
    const STAGES: [&str; 7] = [
        "accept_us",
        "load_us",
        "utxo_reads_us",
        "validation_us",
        "signatures_us",
        "indexes_us",
        "writes_us",
    ];
    const ALONGSIDE: [&str; 4] = [
        "signatures_busy_us",
        "prepare_busy_us",
        "digest_busy_us",
        "background_writes_us",
    ];
    let field = |name: &str| -> f64 {
        log_field(line, name)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let total: f64 = STAGES.iter().map(|s| field(s)).sum::<f64>().max(1.0);
    let shares = |names: &[&str]| -> String {
        names
            .iter()
            .map(|name| {
                format!(
                    "{} {:.0}%",
                    name.trim_end_matches("_us").replace('_', " "),
                    100.0 * field(name) / total
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "chain task time {:.1} s: {}\n  alongside, busy: {}",
        total / 1e6,
        shares(&STAGES),
        shares(&ALONGSIDE)
    )
}

/// Signature verifications per second on two cores, with each library.
fn signature_limits() -> Vec<(&'static str, f64)> {
    use chaincore::consensus::keys::{verify_signature, verify_signature_k256, SignatureVerifier};
    use rayon::prelude::*;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let signer = key(3);
    let signed: Vec<_> = (0..4_000u32)
        .map(|i| {
            let digest = chaincore::consensus::hash::sha256d(&i.to_le_bytes()).0;
            (digest, signer.sign_digest(&digest))
        })
        .collect();
    let pubkey = signer.public_key();
    let libraries: [(&str, SignatureVerifier); 2] = [
        ("libsecp256k1", verify_signature),
        ("k256", verify_signature_k256),
    ];
    libraries
        .iter()
        .map(|(name, verify)| {
            let start = Instant::now();
            let mut count = 0u64;
            while start.elapsed() < Duration::from_secs(2) {
                pool.install(|| {
                    signed.par_iter().for_each(|(digest, signature)| {
                        verify(&pubkey, signature, digest).expect("valid");
                    })
                });
                count += signed.len() as u64;
            }
            (*name, count as f64 / start.elapsed().as_secs_f64())
        })
        .collect()
}

fn connected_at(log: &[String]) -> std::collections::HashMap<String, f64> {
    log.iter()
        .filter(|l| l.contains("block connected"))
        .filter_map(|l| Some((log_field(l, "hash")?.to_string(), log_time(l)?)))
        .collect()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank]
}

fn bench_propagation(nodes: usize, blocks: u32) {
    let dir = tempfile::tempdir().unwrap();
    let binary = Path::new(BINARY);
    let miner_address = key(1).address(Network::Regtest).to_string();
    // A ring with one chord per node (i -> i+1 and i -> i+3): not fully
    // meshed, so most blocks cross two or three hops.
    let mut running = Vec::new();
    let mut addrs: Vec<std::net::SocketAddr> = Vec::new();
    for i in 0..nodes {
        let mut args = vec!["--connect-only".to_string()];
        for back in [1usize, 3] {
            if i >= back {
                args.push("--peer".into());
                args.push(addrs[i - back].to_string());
            }
        }
        if i == nodes - 1 {
            args.push("--peer".into());
            args.push(addrs[0].to_string());
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let (node, addr) = Node::start_p2p(binary, &dir.path().join(format!("n{i}")), &refs);
        running.push(node);
        addrs.push(addr);
    }
    std::thread::sleep(Duration::from_secs(2));
    // The miner joins last, connected to node 0 only.
    let (mut miner, _) = Node::start_p2p(
        binary,
        &dir.path().join("miner"),
        &[
            "--connect-only",
            "--peer",
            &addrs[nodes / 2].to_string(),
            "--mine-to",
            &miner_address,
            "--mine-blocks",
            &blocks.to_string(),
            "--mine-interval-ms",
            "400",
        ],
    );
    miner.wait_for_height(blocks, LONG);
    for node in &mut running {
        node.wait_for_height(blocks, LONG);
    }
    let miner_log = miner.stop();
    // Blocks mined before the miner's first connection wait for it, which
    // is not propagation: count only blocks mined once it had a peer.
    let connected_since = miner_log
        .iter()
        .find(|l| l.contains("peer connected"))
        .and_then(|l| log_time(l))
        .expect("the miner connected");
    let mut mined = connected_at(&miner_log);
    let before = mined.len();
    mined.retain(|_, t| *t > connected_since);
    let skipped = before - mined.len();
    let mut delays = Vec::new();
    for node in running {
        let seen = connected_at(&node.stop());
        for (hash, t0) in &mined {
            if let Some(t) = seen.get(hash) {
                delays.push((t - t0) * 1000.0);
            }
        }
    }
    delays.sort_by(f64::total_cmp);
    println!(
        "block propagation to {} nodes ({} blocks, {} arrivals; {} mined before the miner connected not counted): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        nodes,
        mined.len(),
        delays.len(),
        skipped,
        percentile(&delays, 50.0),
        percentile(&delays, 99.0),
        delays.last().copied().unwrap_or(0.0)
    );
}

/// Syncs `measured` empty blocks through the protocol state machine from a
/// fake peer that announced `ahead` headers, and returns the CPU time per
/// connected block (the protocol's work: scheduling, requests, connecting)
/// and the block index steps per block.
fn sync_cost_per_block(
    chain: &chaincore::testkit::TestChain,
    ahead: usize,
    measured: usize,
) -> (f64, f64) {
    use chaincore::p2p::addrbook::AddrBook;
    use chaincore::p2p::protocol::{Action, Protocol};
    use chaincore::wire::constants::{MAX_HEADERS, PROTOCOL_VERSION, SERVICE_NETWORK};
    use chaincore::wire::message::{Message, Version};

    let dir = tempfile::tempdir().unwrap();
    let node = chaincore::testkit::regtest_chain(dir.path());
    let mempool = chaincore::mempool::Mempool::new(&node, 1 << 20);
    let mut node = node;
    let reader = node.reader();
    // Ancestor searches of the writer (connecting) and of the protocol
    // (scheduling, on the readers' copy of the header tree).
    let steps = |node: &chaincore::chain::Chain| {
        node.tree().index_steps() + reader.headers().read().index_steps()
    };
    let now = Instant::now();
    let mut protocol = Protocol::new(
        node.reader(),
        Arc::new(Mutex::new(mempool)),
        Network::Regtest,
        0,
        AddrBook::new(Network::Regtest),
        Vec::new(),
        false,
        now,
    );
    let peer = 1;
    protocol.on_connected(peer, "127.0.0.1:40000".parse().unwrap(), None, now);
    let version = Message::Version(Version {
        protocol_version: PROTOCOL_VERSION,
        services: SERVICE_NETWORK,
        timestamp: 0,
        start_height: ahead as u32,
        nonce: 7,
        listen_port: 0,
        user_agent: "/bench/".into(),
    });
    protocol.on_message(peer, version, now);
    protocol.on_message(peer, Message::Verack, now);
    let by_hash: std::collections::HashMap<_, _> = chain.blocks[1..=ahead]
        .iter()
        .map(|b| (b.hash(), b))
        .collect();
    let headers: Vec<_> = chain.blocks[1..=ahead].iter().map(|b| b.header).collect();
    let mut pending = Vec::new();
    for batch in headers.chunks(MAX_HEADERS) {
        let actions = protocol.on_message(peer, Message::Headers(batch.to_vec()), now);
        pending.extend(protocol.process_inline(&mut node, actions, now));
    }
    let start_steps = steps(&node);
    let start = Instant::now();
    let mut connected = 0;
    while connected < measured {
        let requested: Vec<_> = pending
            .drain(..)
            .filter_map(|a| match a {
                Action::Send(_, Message::GetData(items)) => Some(items),
                _ => None,
            })
            .flatten()
            .collect();
        assert!(
            !requested.is_empty(),
            "the protocol stopped asking for blocks"
        );
        for item in requested {
            let block = by_hash[&item.hash];
            let actions =
                protocol.on_message(peer, Message::Block(Box::new((*block).clone())), now);
            pending.extend(protocol.process_inline(&mut node, actions, now));
            connected += 1;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let steps = steps(&node) - start_steps;
    assert!(node.height() as usize >= measured);
    (
        elapsed * 1e6 / connected as f64,
        steps as f64 / connected as f64,
    )
}

fn bench_sync_cost(far: usize, measured: usize) {
    let start = Instant::now();
    let mut chain = chaincore::testkit::TestChain::new(Network::Regtest);
    for _ in 0..far {
        chain.mine_empty(key(1).pubkey_hash());
    }
    println!(
        "generated {far} empty blocks in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    let (near_us, near_steps) = sync_cost_per_block(&chain, 2_000, measured);
    let (far_us, far_steps) = sync_cost_per_block(&chain, far, measured);
    println!(
        "sync CPU per block, 2 000 headers ahead: {near_us:>7.1} us ({near_steps:.0} index steps)"
    );
    println!(
        "sync CPU per block, {far} headers ahead: {far_us:>7.1} us ({far_steps:.0} index steps)"
    );
    println!("ratio far/near: {:.2} (goal below 1.5)", far_us / near_us);
}

fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    if std::env::args().any(|a| a == "sync-cost") {
        // Only the in-process scheduling figure.
        bench_sync_cost(if quick { 20_000 } else { 100_000 }, 1_500);
        return;
    }
    let limits = signature_limits();
    for (name, rate) in &limits {
        println!("signature limit, {name:<12} (2 cores): {rate:>8.0} verifies/s");
    }
    let limit = limits[0].1;
    // This machine's speed moves between minutes (a shared VM): the limit
    // is measured again right after each sync, and the share given against
    // both measurements.
    let report = |label: &str, tx_per_s: f64| {
        let after = signature_limits()[0].1;
        println!(
            "{label}: {tx_per_s:.0} tx/s = {:.0}% of the libsecp256k1 two-core limit measured first ({limit:.0}), {:.0}% of the one measured right after it ({after:.0})",
            100.0 * tx_per_s / limit,
            100.0 * tx_per_s / after,
        )
    };
    if quick {
        bench_sync_cost(20_000, 1_000);
        report("sync 200 x 100", bench_sync(200, 100));
        report("sync 20 x 2000", bench_sync(20, 2_000));
        bench_propagation(10, 5);
    } else if std::env::args().any(|a| a == "sync-big") {
        report("sync 100 x 2000", bench_sync(100, 2_000));
    } else if std::env::args().any(|a| a == "sync-small") {
        report("sync 2000 x 100", bench_sync(2_000, 100));
    } else if std::env::args().any(|a| a == "sync") {
        report("sync 2000 x 100", bench_sync(2_000, 100));
        report("sync 100 x 2000", bench_sync(100, 2_000));
    } else {
        bench_sync_cost(100_000, 1_500);
        report("sync 2000 x 100", bench_sync(2_000, 100));
        report("sync 100 x 2000", bench_sync(100, 2_000));
        bench_propagation(10, 30);
    }
}
