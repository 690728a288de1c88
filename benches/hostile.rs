//! A node under the worst floods of the issue "Peer-to-peer under hostile
//! peers", beside an idle baseline measured in the same run: the node's
//! peak resident memory (`VmHWM`) and an observer's `ping` round trips
//! (p50, p99, max) over the same window, for
//! - idle: only the observer;
//! - getdata amplification: a peer that stopped reading asks 1 000 times
//!   for a ~1 MB block in one 36 KB `getdata`;
//! - addr flood: 300 `addr` of 1 000 new addresses each;
//! - both floods at once.
//!
//! Every scenario runs on a fresh node that imported the same chain (its
//! tip is the ~1 MB block), on 127.0.0.1; each role connects from its own
//! loopback address.
//!
//! Run: `cargo bench --profile dev --bench hostile`.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use chaincore::consensus::hash::Hash256;
use chaincore::consensus::params::Network;
use chaincore::testkit::big_block_chain;
use chaincore::testkit::peer::{addr_flood_message, Hello, HostilePeer, PingStats, Pinger};
use chaincore::testkit::process::Node;
use chaincore::wire::message::{InvItem, InvKind, Message};

const BINARY: &str = env!("CARGO_BIN_EXE_chaincore");
const NET: Network = Network::Regtest;
const LONG: Duration = Duration::from_secs(300);
const ANSWER_WAIT: Duration = Duration::from_secs(10);
/// How long each scenario is watched from the start of its flood: longer
/// than today's node takes to read the addr flood (about 12 s).
const WINDOW: Duration = Duration::from_secs(20);
/// The observer's pace and its patience for one ping.
const PING_EVERY: Duration = Duration::from_millis(50);
const PING_TIMEOUT: Duration = Duration::from_secs(30);
/// Copies of the big block in the amplifying `getdata` (the figure).
const AMPLIFICATION_ITEMS: usize = 1_000;
/// `addr` messages in the flood (the figure).
const ADDR_FLOOD_MESSAGES: usize = 300;

const OBSERVER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const AMPLIFIER: Ipv4Addr = Ipv4Addr::new(127, 20, 0, 1);
const FLOODER: Ipv4Addr = Ipv4Addr::new(127, 21, 0, 1);

#[derive(Clone, Copy)]
enum Scenario {
    Idle,
    Getdata,
    Addr,
    Both,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Idle => "idle (observer only)",
            Scenario::Getdata => "getdata x1000 of a 1 MB block",
            Scenario::Addr => "addr flood 300 x 1000",
            Scenario::Both => "both floods at once",
        }
    }
}

struct Figures {
    rss_before: u64,
    peak: u64,
    pings: PingStats,
}

fn handshaked(source: Ipv4Addr, node: SocketAddr) -> HostilePeer {
    let mut peer = HostilePeer::connect_from(source, node, NET)
        .unwrap_or_else(|e| panic!("connecting from {source}: {e}"));
    peer.handshake(&Hello::default(), ANSWER_WAIT)
        .unwrap_or_else(|e| panic!("handshake from {source}: {e}"));
    peer
}

fn run(scenario: Scenario, file: &Path, dir: &Path, big: Hash256, height: u32) -> Figures {
    let (mut node, addr) = Node::start_p2p(
        Path::new(BINARY),
        dir,
        &[
            "--connect-only",
            "--no-sync-writes",
            "--import",
            file.to_str().unwrap(),
        ],
    );
    node.wait_for("import done", LONG);
    node.wait_for_height(height, LONG);
    let observer = handshaked(OBSERVER, addr);
    let mut amplifier = matches!(scenario, Scenario::Getdata | Scenario::Both).then(|| {
        let mut peer = handshaked(AMPLIFIER, addr);
        peer.stop_reading();
        peer
    });
    let flooder =
        matches!(scenario, Scenario::Addr | Scenario::Both).then(|| handshaked(FLOODER, addr));
    let rss_before = node.memory().rss;
    node.reset_peak_memory();
    let pinger = Pinger::start(observer, PING_EVERY, PING_TIMEOUT);
    if let Some(peer) = amplifier.as_mut() {
        peer.send(&Message::GetData(vec![
            InvItem {
                kind: InvKind::Block,
                hash: big,
            };
            AMPLIFICATION_ITEMS
        ]))
        .expect("send the amplifying getdata");
    }
    // The flood is sent from its own thread: a node that stops reading
    // the flooder must not stop the measurement.
    let flood = flooder.map(|mut peer| {
        std::thread::spawn(move || {
            for m in 0..ADDR_FLOOD_MESSAGES {
                if peer.send(&addr_flood_message(m)).is_err() {
                    return;
                }
            }
            // Held open until the window ends.
            let _ = peer.ping(WINDOW);
        })
    });
    std::thread::sleep(WINDOW);
    let pings = pinger.stop();
    let peak = node.memory().peak;
    node.kill();
    if let Some(thread) = flood {
        thread.join().expect("flood thread");
    }
    Figures {
        rss_before,
        peak,
        pings,
    }
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let chain = big_block_chain();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("chain.dat");
    chaincore::chain::block_file::write_blocks(
        std::fs::File::create(&file).unwrap(),
        &chain.blocks[1..],
    )
    .unwrap();
    let big = chain.tip().hash();
    println!(
        "node under hostile peers; each scenario on a fresh node, watched {WINDOW:?}, observer pings every {PING_EVERY:?}"
    );
    println!(
        "{:<32} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7}",
        "scenario",
        "RSS MB",
        "peak MB",
        "peak/idle",
        "p50 ms",
        "p99 ms",
        "p99/idle",
        "max ms",
        "no pong"
    );
    let mut idle: Option<Figures> = None;
    for (i, scenario) in [
        Scenario::Idle,
        Scenario::Getdata,
        Scenario::Addr,
        Scenario::Both,
    ]
    .into_iter()
    .enumerate()
    {
        let figures = run(
            scenario,
            &file,
            &dir.path().join(format!("node{i}")),
            big,
            chain.height(),
        );
        let base = idle.as_ref().unwrap_or(&figures);
        println!(
            "{:<32} {:>8.0} {:>8.0} {:>9.2} {:>9.2} {:>9.2} {:>9.1} {:>9.2} {:>7}",
            scenario.name(),
            mb(figures.rss_before),
            mb(figures.peak),
            figures.peak as f64 / base.peak as f64,
            ms(figures.pings.percentile(50.0)),
            ms(figures.pings.percentile(99.0)),
            figures.pings.percentile(99.0).as_secs_f64()
                / base.pings.percentile(99.0).as_secs_f64(),
            ms(figures.pings.max()),
            figures.pings.unanswered,
        );
        if idle.is_none() {
            idle = Some(figures);
        }
    }
    if let Some(idle) = idle {
        println!(
            "idle baseline: peak {:.0} MB, ping p99 {:.2} ms; the issue's goal under every flood: RSS growth < 200 MB, ping < 1 s",
            mb(idle.peak),
            ms(idle.pings.percentile(99.0))
        );
    }
}
