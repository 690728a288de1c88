//! Network figures with real nodes on 127.0.0.1: sync throughput between two
//! nodes for a chain of 2 000 blocks x 100 transactions, and block
//! propagation time to every node of a 10-node network.
//!
//! Run: `cargo bench --profile dev --bench p2p` (`-- quick` for small sizes).

use std::path::Path;
use std::time::{Duration, Instant};

use chaincore::consensus::params::Network;
use chaincore::encoding::Encode;
use chaincore::testkit::process::{log_field, log_time, Node};
use chaincore::testkit::{busy_chain, key};

const BINARY: &str = env!("CARGO_BIN_EXE_chaincore");
const LONG: Duration = Duration::from_secs(900);

fn bench_sync(blocks: usize, txs: usize) {
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
    let start = Instant::now();
    let mut b = Node::start(
        binary,
        &dir.path().join("b"),
        &[
            "--connect-only",
            "--no-sync-writes",
            "--peer",
            &a_addr.to_string(),
        ],
    );
    b.wait_for_height(chain.height(), LONG);
    let secs = start.elapsed().as_secs_f64();
    b.stop();
    a.stop();
    println!(
        "sync {} blocks ({} tx, {:.1} MB) over loopback: {:.1} s, {:.0} blocks/s, {:.0} tx/s, {:.2} MB/s",
        chain.height(),
        tx_count,
        bytes as f64 / 1e6,
        secs,
        f64::from(chain.height()) / secs,
        tx_count as f64 / secs,
        bytes as f64 / 1e6 / secs
    );
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

fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    if quick {
        bench_sync(200, 100);
        bench_propagation(10, 5);
    } else {
        bench_sync(2_000, 100);
        bench_propagation(10, 30);
    }
}
