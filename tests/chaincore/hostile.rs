//! Real nodes under hostile peers (issue "Peer-to-peer under hostile
//! peers"): a raw client (`testkit::peer`) amplifies `getdata`, stops
//! reading, floods `addr`, squats inbound slots and answers `notfound`
//! forever, while the tests watch the node's resident memory
//! (`/proc/<pid>/status`) and an observer's `ping`.
//!
//! Every peer connects to 127.0.0.1, each role from its own loopback /16
//! (127.a.0.1) so that rules keyed by address group see distinct sources.
//! The addr-flood assertions assume that on regtest the address book keeps
//! loopback addresses and groups them, and the peers that sent them, by
//! their /16 (127.a.b.c is in group 127.a).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use chaincore::consensus::hash::Hash256;
use chaincore::consensus::params::Network;
use chaincore::p2p::protocol::MAX_INBOUND;
use chaincore::testkit::peer::{
    addr_flood_message, is_flood_address, unix_now, Hello, HostilePeer, PeerError, Pinger,
};
use chaincore::testkit::process::Node;
use chaincore::testkit::{big_block_chain, busy_chain, header_chain};
use chaincore::wire::constants::{MAX_ADDR_ENTRIES, PING_INTERVAL};
use chaincore::wire::message::{InvItem, InvKind, Message};

use crate::common::{block_file, log_field, NodeProcess};

const NET: Network = Network::Regtest;
const LONG: Duration = Duration::from_secs(180);
/// How long a handshake, or one answer the node owes, may take.
const ANSWER_WAIT: Duration = Duration::from_secs(10);

/// The issue: "node RSS grows < 200 MB" under getdata amplification (one
/// 36 KB `getdata` for a 980 KB block 1 000 times took it from 38 MB to
/// 1.1 GB).
const RSS_GROWTH_LIMIT: u64 = 200_000_000;
/// The issue: "an observer's ping stays < 1 s" under every flood.
const OBSERVER_PING_LIMIT: Duration = Duration::from_secs(1);
/// The issue: "the non-reading peer is gone within the timeout". Its
/// writes stall and are dropped after `PEER_WRITE_STALL_TIMEOUT` (30 s,
/// measured alone), and at the latest its unanswered ping drops it after
/// `PING_INTERVAL + PING_TIMEOUT` (90 s); a little slack for a loaded CI
/// machine (the old code kept such a peer for good).
const NON_READER_DROP_DEADLINE: Duration = Duration::from_secs(
    PING_INTERVAL.as_secs() + chaincore::wire::constants::PING_TIMEOUT.as_secs() + 10,
);
/// Addresses claiming to be seen more than this ahead of our clock count
/// as future timestamps (Bitcoin Core's `addrman` uses 10 minutes).
const FUTURE_TOLERANCE_SECS: u64 = 10 * 60;
/// The issue: "the node stops asking" a peer that answers `notfound`: in
/// `NOTFOUND_WINDOW`, no block is asked of it more often than this (today:
/// 14 000 `getdata` in 10 s).
const MAX_ASKS_PER_BLOCK: usize = 3;
const NOTFOUND_WINDOW: Duration = Duration::from_secs(10);
/// The issue: "a peer that answered 5 000 `notfound`s is still asked for a
/// new transaction" (5 000 is today's per-peer announcement cap).
const NOTFOUND_TX_ANSWERS: usize = 5_000;

/// Copies of the big block asked for in one `getdata` (the figure).
const AMPLIFICATION_ITEMS: usize = 1_000;
/// Copies of the big block asked for by the peer that stops reading: more
/// bytes than the socket buffers of both ends hold on loopback (Linux lets a
/// receive buffer grow to `tcp_rmem`'s maximum, 32 MiB on this machine, plus
/// the sender's 4 MiB).
const NON_READER_ITEMS: usize = 64;
/// How long the observer watches the node after the amplifying `getdata`.
const AMPLIFICATION_WINDOW: Duration = Duration::from_secs(10);
/// `addr` messages of a flood (the figure), each of
/// `MAX_ADDR_ENTRIES` distinct addresses.
const ADDR_FLOOD_MESSAGES: usize = 300;
/// Honest peers, one per /16 (127.201.0.7, 127.202.0.7, ...), that tell the
/// node the port they listen on, and that port.
const HONEST_PEERS: usize = 20;
const HONEST_LISTEN_PORT: u16 = 18444;
/// The observer's pace and its patience for one ping.
const PING_EVERY: Duration = Duration::from_millis(50);
const PING_TIMEOUT: Duration = Duration::from_secs(30);

/// Each role's source address: one loopback /16 per role.
const OBSERVER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const HONEST: Ipv4Addr = Ipv4Addr::new(127, 10, 0, 1);
const ATTACKER: Ipv4Addr = Ipv4Addr::new(127, 20, 0, 1);
const FRESH: Ipv4Addr = Ipv4Addr::new(127, 30, 0, 1);
const SQUATTER: Ipv4Addr = Ipv4Addr::new(127, 40, 0, 1);
const NEWCOMER: Ipv4Addr = Ipv4Addr::new(127, 50, 0, 1);

/// A peer from `source` that has completed its handshake with `node`.
fn handshaked(source: Ipv4Addr, node: SocketAddr, hello: &Hello) -> HostilePeer {
    let mut peer = HostilePeer::connect_from(source, node, NET)
        .unwrap_or_else(|e| panic!("connecting from {source}: {e}"));
    peer.handshake(hello, ANSWER_WAIT)
        .unwrap_or_else(|e| panic!("handshake from {source}: {e}"));
    peer
}

/// A node that imported `big_block_chain` (its tip is a ~1 MB block), with
/// its P2P address and the big block's hash.
fn node_with_a_big_block(dir: &std::path::Path) -> (Node, SocketAddr, Hash256) {
    let chain = big_block_chain();
    let file = block_file(dir, "chain.dat", &chain.blocks[1..]);
    let (mut node, addr) = NodeProcess::start_p2p(
        &dir.join("node"),
        &["--connect-only", "--import", file.to_str().unwrap()],
    );
    node.wait_for("import done", LONG);
    node.wait_for_height(chain.height(), LONG);
    (node, addr, chain.tip().hash())
}

fn getdata_for(block: Hash256, copies: usize) -> Message {
    Message::GetData(vec![
        InvItem {
            kind: InvKind::Block,
            hash: block,
        };
        copies
    ])
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

#[test]
fn getdata_amplification_keeps_node_memory_bounded_and_an_observer_answered() {
    let dir = tempfile::tempdir().unwrap();
    let (node, addr, big) = node_with_a_big_block(dir.path());
    let observer = handshaked(OBSERVER, addr, &Hello::default());
    let mut attacker = handshaked(ATTACKER, addr, &Hello::default());
    attacker.stop_reading();
    let before = node.memory();
    node.reset_peak_memory();
    let pinger = Pinger::start(observer, PING_EVERY, PING_TIMEOUT);
    attacker
        .send(&getdata_for(big, AMPLIFICATION_ITEMS))
        .unwrap();
    std::thread::sleep(AMPLIFICATION_WINDOW);
    let pings = pinger.stop();
    let after = node.memory();
    let growth = after.peak.saturating_sub(before.rss);
    eprintln!(
        "getdata x{AMPLIFICATION_ITEMS} of a 1 MB block: RSS {:.0} MB before, peak {:.0} MB (+{:.0} MB); observer ping p50 {:?}, max {:?}, {} unanswered of {}",
        mb(before.rss),
        mb(after.peak),
        mb(growth),
        pings.percentile(50.0),
        pings.max(),
        pings.unanswered,
        pings.rtts.len()
    );
    assert!(
        growth < RSS_GROWTH_LIMIT,
        "node RSS grew by {:.0} MB (limit {:.0} MB)",
        mb(growth),
        mb(RSS_GROWTH_LIMIT)
    );
    assert!(
        pings.max() < OBSERVER_PING_LIMIT && pings.unanswered == 0,
        "observer ping max {:?} ({} unanswered), limit {OBSERVER_PING_LIMIT:?}",
        pings.max(),
        pings.unanswered
    );
}

/// A node with a big block, and a peer that stopped reading and asked for
/// that block `NON_READER_ITEMS` times (64 MB, more than the socket buffers
/// of both ends hold): one copy per message, each sent once the one before
/// was served (a copy still queued would absorb a repeat).
fn a_peer_that_stopped_reading(dir: &std::path::Path) -> (Node, SocketAddr, HostilePeer) {
    let (node, addr, big) = node_with_a_big_block(dir);
    let mut attacker = handshaked(ATTACKER, addr, &Hello::default());
    attacker.stop_reading();
    for _ in 0..NON_READER_ITEMS {
        attacker.send(&getdata_for(big, 1)).unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    (node, addr, attacker)
}

#[test]
fn a_peer_that_stops_reading_is_dropped_within_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (mut node, addr, mut attacker) = a_peer_that_stopped_reading(dir.path());
    let dropped = attacker.wait_closed(NON_READER_DROP_DEADLINE);
    eprintln!("a peer that stopped reading with {NON_READER_ITEMS} MB asked for: closed after {dropped:?}");
    assert!(
        dropped.is_some(),
        "a peer that stopped reading was still connected after {NON_READER_DROP_DEADLINE:?}"
    );
    // Everything it held is let go: the node serves a new peer at once.
    let mut observer = handshaked(OBSERVER, addr, &Hello::default());
    let rtt = observer.ping(ANSWER_WAIT).expect("the node answers a ping");
    assert!(
        rtt < OBSERVER_PING_LIMIT,
        "ping after the drop took {rtt:?}"
    );
    node.fail_if_exited();
}

/// A peer that stops reading and keeps asking (`ping` after `ping`) has its
/// requests held back once its answers fill its send buffer, and is dropped
/// once it has more than `PEER_PAUSED_REQUESTS` waiting: long before the
/// write-stall timeout that dropped it before (it used to get every `pong`
/// queued behind the blocks it did not read).
#[test]
fn a_peer_that_asks_without_reading_is_dropped_before_its_writes_stall() {
    use chaincore::wire::constants::{PEER_PAUSED_REQUESTS, PEER_WRITE_STALL_TIMEOUT};
    let dir = tempfile::tempdir().unwrap();
    let (mut node, addr, mut attacker) = a_peer_that_stopped_reading(dir.path());
    let asked = Instant::now();
    // Sent slowly enough for the rate limit, past the bound.
    for nonce in 0..(2 * PEER_PAUSED_REQUESTS as u64) {
        if attacker.send(&Message::Ping(nonce)).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let deadline = PEER_WRITE_STALL_TIMEOUT / 2;
    let dropped = attacker.wait_closed(deadline.saturating_sub(asked.elapsed()));
    eprintln!(
        "a peer asking without reading: closed {:?} after its requests began",
        dropped.map(|_| asked.elapsed())
    );
    node.wait_for("peer keeps asking without reading the answers", ANSWER_WAIT);
    assert!(
        dropped.is_some(),
        "a peer asking without reading was still connected {deadline:?} after it began"
    );
    let mut observer = handshaked(OBSERVER, addr, &Hello::default());
    observer.ping(ANSWER_WAIT).expect("the node answers a ping");
    node.fail_if_exited();
}

fn is_honest_address(addr: &SocketAddr) -> bool {
    matches!(addr.ip(), IpAddr::V4(ip) if (201..=250).contains(&ip.octets()[1]))
}

/// Sends the whole flood, then waits (bounded) until the node has read it:
/// its `pong` to the flooder comes after every `addr`, or it dropped the
/// flooder.
fn flood_addr(flooder: &mut HostilePeer) {
    for m in 0..ADDR_FLOOD_MESSAGES {
        if let Err(e) = flooder.send(&addr_flood_message(m)) {
            assert!(matches!(e, PeerError::Closed), "flooding: {e}");
            return;
        }
    }
    match flooder.ping(LONG) {
        Ok(_) | Err(PeerError::Closed) => {}
        Err(e) => panic!("waiting for the node to read the flood: {e}"),
    }
}

#[test]
fn addr_flood_neither_stalls_the_node_nor_takes_over_its_address_book() {
    let dir = tempfile::tempdir().unwrap();
    let (_node, addr) = NodeProcess::start_p2p(&dir.path().join("node"), &["--connect-only"]);
    // Honest addresses reach the book the way a listener learns them: peers
    // in many groups connect and say which port they listen on. (Unsolicited
    // `addr` from an inbound peer is rate-limited to almost nothing, as in
    // Bitcoin Core, so it could not teach the node 500 honest addresses.)
    for i in 0..HONEST_PEERS {
        let source = Ipv4Addr::new(127, 201 + i as u8, 0, 7);
        let hello = Hello {
            listen_port: HONEST_LISTEN_PORT,
            ..Hello::default()
        };
        let mut honest = handshaked(source, addr, &hello);
        honest.ping(ANSWER_WAIT).expect("the honest peer was heard");
    }

    let pinger = Pinger::start(
        handshaked(OBSERVER, addr, &Hello::default()),
        PING_EVERY,
        PING_TIMEOUT,
    );
    let mut flooder = handshaked(ATTACKER, addr, &Hello::default());
    let start = Instant::now();
    flood_addr(&mut flooder);
    let digest = start.elapsed();
    let pings = pinger.stop();

    let mut fresh = handshaked(FRESH, addr, &Hello::default());
    fresh.send(&Message::GetAddr).unwrap();
    let Message::Addr(answer) = fresh
        .receive_until("addr answer to getaddr", ANSWER_WAIT, |m| {
            matches!(m, Message::Addr(_))
        })
        .unwrap()
    else {
        unreachable!()
    };
    let now = unix_now();
    let future = answer
        .iter()
        .filter(|e| u64::from(e.time) > now + FUTURE_TOLERANCE_SECS)
        .count();
    let flood = answer.iter().filter(|e| is_flood_address(&e.addr)).count();
    let honest_kept = answer.iter().filter(|e| is_honest_address(&e.addr)).count();
    eprintln!(
        "addr flood of {ADDR_FLOOD_MESSAGES} x {MAX_ADDR_ENTRIES}: read in {digest:?}; observer ping p50 {:?}, max {:?}, {} unanswered of {}; fresh getaddr: {} entries, {flood} from the flood, {honest_kept} honest, {future} in the future",
        pings.percentile(50.0),
        pings.max(),
        pings.unanswered,
        pings.rtts.len(),
        answer.len()
    );
    assert!(
        pings.max() < OBSERVER_PING_LIMIT && pings.unanswered == 0,
        "observer ping max {:?} ({} unanswered) during the flood, limit {OBSERVER_PING_LIMIT:?}",
        pings.max(),
        pings.unanswered
    );
    assert_eq!(
        future,
        0,
        "{future} of {} addresses in a fresh getaddr answer are timestamped in the future",
        answer.len()
    );
    assert!(
        honest_kept > 0 && flood < answer.len(),
        "one source filled the answer: {flood} of {} from the flood, {honest_kept} honest",
        answer.len()
    );
}

#[test]
fn an_honest_peer_whose_blocks_wait_behind_an_addr_flood_is_not_dropped() {
    let chain = busy_chain(2_000, 2);
    let dir = tempfile::tempdir().unwrap();
    let file = block_file(dir.path(), "chain.dat", &chain.blocks[1..]);
    let (mut honest, honest_addr) = NodeProcess::start_p2p(
        &dir.path().join("honest"),
        &["--connect-only", "--import", file.to_str().unwrap()],
    );
    honest.wait_for("import done", LONG);
    let honest_peer = honest_addr.to_string();
    let (mut node, addr) = NodeProcess::start_p2p(
        &dir.path().join("node"),
        &["--connect-only", "--peer", &honest_peer],
    );
    // Mid-sync: blocks are in flight from the honest peer.
    node.wait_for("block connected", LONG);
    let mut flooder = handshaked(ATTACKER, addr, &Hello::default());
    flood_addr(&mut flooder);
    let hash = node.wait_for_height(chain.height(), LONG);
    assert_eq!(hash, chain.tip().hash().to_string());
    let log = node.stop();
    honest.stop();
    let drops: Vec<&String> = log
        .iter()
        .filter(|l| {
            l.contains("peer disconnected") && log_field(l, "addr") == Some(honest_peer.as_str())
        })
        .collect();
    let stalls = log
        .iter()
        .filter(|l| l.contains("block download stalled"))
        .count();
    eprintln!(
        "honest peer behind an addr flood: dropped {} times, {stalls} stalled-download reports",
        drops.len()
    );
    assert!(
        drops.is_empty(),
        "the honest peer was dropped while its blocks waited behind the flood: {drops:?}"
    );
}

#[test]
fn inbound_slots_held_by_one_address_do_not_keep_a_new_peer_out() {
    let dir = tempfile::tempdir().unwrap();
    let (_node, addr) = NodeProcess::start_p2p(&dir.path().join("node"), &["--connect-only"]);
    let mut squatters = Vec::new();
    let mut refused = 0;
    for _ in 0..MAX_INBOUND {
        let mut peer = HostilePeer::connect_from(SQUATTER, addr, NET).unwrap();
        match peer.handshake(&Hello::default(), ANSWER_WAIT) {
            Ok(_) => squatters.push(peer),
            Err(PeerError::Closed) => refused += 1,
            Err(e) => panic!("squatter handshake: {e}"),
        }
    }
    let mut newcomer = HostilePeer::connect_from(NEWCOMER, addr, NET).unwrap();
    let handshake = newcomer.handshake(&Hello::default(), ANSWER_WAIT);
    let ping = handshake.as_ref().ok().map(|_| newcomer.ping(ANSWER_WAIT));
    eprintln!(
        "{} squatters from {SQUATTER} got in, {refused} refused; newcomer from {NEWCOMER}: handshake {:?}, ping {:?}",
        squatters.len(),
        handshake.as_ref().map(|_| ()),
        ping
    );
    assert!(
        handshake.is_ok(),
        "peer {} was kept out by {} squatters from one address: {:?}",
        MAX_INBOUND + 1,
        squatters.len(),
        handshake.err()
    );
    assert!(
        matches!(ping, Some(Ok(_))),
        "the newcomer was dropped after its handshake: {ping:?}"
    );
}

#[test]
fn a_block_answered_with_notfound_is_not_asked_for_again_and_again() {
    let dir = tempfile::tempdir().unwrap();
    let (_node, addr) = NodeProcess::start_p2p(&dir.path().join("node"), &["--connect-only"]);
    let genesis = NET.params().genesis_block();
    let headers = header_chain(genesis.hash(), genesis.header.time, 16, 10, 0x4e);
    let hello = Hello {
        start_height: headers.len() as u32,
        ..Hello::default()
    };
    let mut liar = handshaked(ATTACKER, addr, &hello);
    liar.send(&Message::Headers(headers.clone())).unwrap();
    let mut asks: HashMap<Hash256, usize> = HashMap::new();
    let mut getdatas = 0usize;
    let start = Instant::now();
    let mut dropped = false;
    while start.elapsed() < NOTFOUND_WINDOW {
        let left = NOTFOUND_WINDOW.saturating_sub(start.elapsed());
        match liar.receive(left) {
            Ok(Some(Message::GetData(items))) => {
                getdatas += 1;
                for item in items.iter().filter(|i| i.kind == InvKind::Block) {
                    *asks.entry(item.hash).or_default() += 1;
                }
                if liar.send(&Message::NotFound(items)).is_err() {
                    dropped = true;
                    break;
                }
            }
            Ok(Some(Message::GetHeaders(_))) => {
                if liar.send(&Message::Headers(headers.clone())).is_err() {
                    dropped = true;
                    break;
                }
            }
            Ok(_) => {}
            Err(PeerError::Closed) => {
                dropped = true;
                break;
            }
            Err(e) => panic!("reading the node: {e}"),
        }
    }
    let most = asks.values().copied().max().unwrap_or(0);
    eprintln!(
        "peer answering notfound for {NOTFOUND_WINDOW:?}: {getdatas} getdata, {} blocks asked, one block asked {most} times, dropped: {dropped}",
        asks.len()
    );
    assert!(!asks.is_empty(), "the node never asked for the blocks");
    assert!(
        most <= MAX_ASKS_PER_BLOCK,
        "a block answered with notfound was asked of the same peer {most} times in {NOTFOUND_WINDOW:?} ({getdatas} getdata)"
    );
}

fn random_txid() -> Hash256 {
    Hash256(rand::random())
}

#[test]
fn a_peer_that_answered_5000_notfounds_is_still_asked_for_a_new_transaction() {
    /// Announcements per `inv`.
    const BATCH: usize = 500;
    let dir = tempfile::tempdir().unwrap();
    let (_node, addr) = NodeProcess::start_p2p(&dir.path().join("node"), &["--connect-only"]);
    let mut peer = handshaked(HONEST, addr, &Hello::default());
    let (mut announced, mut answered) = (0usize, 0usize);
    let deadline = Instant::now() + LONG;
    while answered < NOTFOUND_TX_ANSWERS && Instant::now() < deadline {
        if announced < NOTFOUND_TX_ANSWERS {
            let items = (0..BATCH)
                .map(|_| InvItem {
                    kind: InvKind::Tx,
                    hash: random_txid(),
                })
                .collect();
            peer.send(&Message::Inv(items)).unwrap();
            announced += BATCH;
        }
        match peer.receive(ANSWER_WAIT).unwrap() {
            Some(Message::GetData(items)) => {
                answered += items.iter().filter(|i| i.kind == InvKind::Tx).count();
                peer.send(&Message::NotFound(items)).unwrap();
            }
            Some(_) => {}
            None if announced >= NOTFOUND_TX_ANSWERS => break,
            None => {}
        }
    }
    assert!(
        answered >= NOTFOUND_TX_ANSWERS,
        "the node asked for only {answered} of {announced} announced transactions"
    );
    let new = random_txid();
    peer.send(&Message::Inv(vec![InvItem {
        kind: InvKind::Tx,
        hash: new,
    }]))
    .unwrap();
    let asked = peer.receive_until(
        "getdata for the new transaction",
        ANSWER_WAIT,
        |m| matches!(m, Message::GetData(items) if items.iter().any(|i| i.hash == new)),
    );
    eprintln!(
        "after {answered} notfound answers, a new transaction announced: asked {}",
        asked.is_ok()
    );
    assert!(
        asked.is_ok(),
        "a peer that answered {answered} notfounds was never asked for a new transaction: {:?}",
        asked.err()
    );
}
