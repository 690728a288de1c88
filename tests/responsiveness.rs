//! Responsiveness under load, in a test binary of its own: cargo runs test
//! binaries one after another, so nothing else of the suite shares the
//! machine's cores while these bounds are measured (in the main binary,
//! with a dozen node processes of other tests beside it, a ping once
//! waited 91 ms with a median of 11 ms, the machine's load, not the node's).

#[path = "chaincore/common.rs"]
#[allow(dead_code, unused_imports)]
mod common;

use std::time::Duration;

use chaincore::consensus::params::Network;
use chaincore::testkit::{busy_chain, key};
use chaincore::wire::message::Message;

use common::{block_file, NodeProcess};

const LONG: Duration = Duration::from_secs(180);

/// The issue "Readers never wait for the writer": while a node
/// reorganises 100 blocks of transactions (the chain task disconnecting and
/// connecting one block per lock), it keeps answering a peer's `ping` and
/// REST reads within `RESPONSIVE_LIMIT`.
#[test]
fn a_node_keeps_answering_pings_and_rest_while_a_100_block_reorg_runs() {
    use chaincore::testkit::peer::{Hello, HostilePeer, Pinger};
    use chaincore::testkit::process::http;
    use chaincore::testkit::TestChain;
    use chaincore::wire::constants::SERVICE_NETWORK;
    use chaincore::wire::message::InvKind;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Instant;

    const RESPONSIVE_LIMIT: Duration = Duration::from_millis(50);
    const POLL_EVERY: Duration = Duration::from_millis(10);
    let net = Network::Regtest;
    let dir = tempfile::tempdir().unwrap();
    // The node's chain: 100 blocks, 88 of them with 50 payments each.
    let ours = busy_chain(88, 50);
    assert_eq!(ours.height(), 100);
    // The peer's branch from genesis: one block longer, so more work.
    let mut theirs = TestChain::new(net);
    for _ in 0..=ours.height() {
        theirs.mine_empty(key(9).pubkey_hash());
    }
    let file = block_file(dir.path(), "ours.dat", &ours.blocks[1..]);
    let (mut node, addr) = NodeProcess::start_p2p(
        &dir.path().join("node"),
        &["--connect-only", "--import", file.to_str().unwrap()],
    );
    node.wait_for("import done", LONG);
    node.wait_for_height(100, LONG);
    let api = node.api_addr();

    let hello = Hello {
        start_height: theirs.height(),
        services: SERVICE_NETWORK,
        ..Hello::default()
    };
    let mut observer = HostilePeer::connect(addr, net).unwrap();
    observer.handshake(&Hello::default(), LONG).unwrap();
    let pinger = Pinger::start(observer, POLL_EVERY, Duration::from_secs(5));
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let stop = stop.clone();
        let address = key(1).address(net).to_string();
        std::thread::spawn(move || {
            let mut worst = Duration::ZERO;
            let mut count = 0;
            while !stop.load(Ordering::Relaxed) {
                for path in ["/status".to_string(), format!("/address/{address}")] {
                    let start = Instant::now();
                    let (status, _) = http(api, "GET", &path, "");
                    assert_eq!(status, 200, "GET {path}");
                    worst = worst.max(start.elapsed());
                    count += 1;
                }
                std::thread::sleep(POLL_EVERY);
            }
            (worst, count)
        })
    };

    // Serve the branch: headers, then every block asked for.
    let mut server = HostilePeer::connect(addr, net).unwrap();
    server.handshake(&hello, LONG).unwrap();
    let headers: Vec<_> = theirs.blocks[1..].iter().map(|b| b.header).collect();
    server.send(&Message::Headers(headers.clone())).unwrap();
    let by_hash: std::collections::HashMap<_, _> =
        theirs.blocks.iter().map(|b| (b.hash(), b)).collect();
    let target = theirs.tip().hash().to_string();
    let deadline = Instant::now() + LONG;
    let mut reorg_done = None;
    let mut sent_last = None;
    while Instant::now() < deadline {
        match server.receive(Duration::from_millis(20)) {
            Ok(Some(Message::GetHeaders(_))) => {
                server.send(&Message::Headers(headers.clone())).unwrap()
            }
            Ok(Some(Message::GetData(items))) => {
                for item in items.iter().filter(|i| i.kind == InvKind::Block) {
                    let block = by_hash[&item.hash];
                    server
                        .send(&Message::Block(Box::new((*block).clone())))
                        .unwrap();
                    if item.hash == theirs.tip().hash() {
                        sent_last = Some(Instant::now());
                    }
                }
            }
            Ok(_) => {}
            Err(e) => panic!("serving the branch: {e}"),
        }
        if sent_last.is_some() && http(api, "GET", "/blocks/tip/hash", "").1 == target {
            reorg_done = Some(Instant::now());
            break;
        }
    }
    let reorg_done = reorg_done.expect("the node switched to the longer branch");
    stop.store(true, Ordering::Relaxed);
    let (rest_worst, rest_count) = poller.join().unwrap();
    let pings = pinger.stop();
    let log = node.stop();
    assert!(
        log.iter()
            .filter(|l| l.contains("block disconnected"))
            .count()
            >= 100,
        "the node disconnected its 100 blocks"
    );
    eprintln!(
        "100-block reorg: done {:?} after the last block was sent; ping max {:?} p50 {:?} over {} pings; REST max {rest_worst:?} over {rest_count} requests",
        reorg_done - sent_last.unwrap(),
        pings.max(),
        pings.percentile(50.0),
        pings.rtts.len()
    );
    assert_eq!(pings.unanswered, 0);
    assert!(
        pings.max() < RESPONSIVE_LIMIT,
        "a ping waited {:?} during the reorg",
        pings.max()
    );
    assert!(
        rest_worst < RESPONSIVE_LIMIT,
        "a REST read waited {rest_worst:?} during the reorg"
    );
}
