//! The event stream (`GET /events`) against real node processes: blocks,
//! reorganisations and watched addresses in order, resuming without a gap
//! or a duplicate, and a subscriber that never reads cut off while the
//! node and the others go on; and `wallet watch` printing a payment.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use chaincore::consensus::params::Network;
use chaincore::events::MAX_BLOCKS_PER_PASS;
use chaincore::testkit::peer::{Hello, HostilePeer};
use chaincore::testkit::process::http;
use chaincore::testkit::{key, TestChain};
use chaincore::wire::message::Message;
use serde_json::Value;

use crate::common::{block_file, chain_with_spends, chaincore, prefix, NodeProcess};

const LONG: Duration = Duration::from_secs(120);
const EVENT_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
struct Ev {
    name: String,
    id: Option<String>,
    data: Value,
}

/// Reads an HTTP/1.1 chunked body and hands out its SSE events.
fn read_events(stream: TcpStream, events: mpsc::Sender<Ev>) {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    // Status line and headers.
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        if line == "\r\n" {
            break;
        }
    }
    let mut text = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let Ok(size) = usize::from_str_radix(line.trim(), 16) else {
            return;
        };
        if size == 0 {
            return;
        }
        let mut chunk = vec![0; size + 2];
        if reader.read_exact(&mut chunk).is_err() {
            return;
        }
        text.push_str(&String::from_utf8_lossy(&chunk[..size]));
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            if let Some(e) = chaincore::client::parse_event(block.trim_end()) {
                let ev = Ev {
                    name: e.name,
                    id: e.id,
                    data: serde_json::from_str(&e.data).unwrap(),
                };
                if events.send(ev).is_err() {
                    return;
                }
            }
        }
    }
}

/// Sends `GET path` with optional extra headers; returns the socket.
fn open(api: SocketAddr, path: &str, last_id: Option<&str>) -> TcpStream {
    let mut stream = TcpStream::connect(api).unwrap();
    let extra = last_id.map_or(String::new(), |id| format!("Last-Event-ID: {id}\r\n"));
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {api}\r\nAccept: text/event-stream\r\n{extra}\r\n"
    )
    .unwrap();
    stream
}

struct Subscriber {
    events: mpsc::Receiver<Ev>,
    socket: TcpStream,
}

impl Subscriber {
    fn start(api: SocketAddr, path: &str, last_id: Option<&str>) -> Subscriber {
        let socket = open(api, path, last_id);
        let (send, events) = mpsc::channel();
        let reading = socket.try_clone().unwrap();
        std::thread::spawn(move || read_events(reading, send));
        let sub = Subscriber { events, socket };
        let ready = sub.next();
        assert_eq!(ready.name, "ready", "{ready:?}");
        sub
    }

    fn next(&self) -> Ev {
        self.events
            .recv_timeout(EVENT_WAIT)
            .expect("an event within the wait")
    }

    /// The next event that is not a mempool event.
    fn next_chain(&self) -> Ev {
        loop {
            let e = self.next();
            if !e.name.starts_with("mempool") && e.data["status"] != "pending" {
                return e;
            }
        }
    }

    fn nothing_more_for(&self, wait: Duration) {
        if let Ok(e) = self.events.recv_timeout(wait) {
            panic!("unexpected event {e:?}");
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
    }
}

fn tip_height(api: SocketAddr) -> u32 {
    http(api, "GET", "/blocks/tip/height", "")
        .1
        .trim()
        .parse()
        .unwrap()
}

/// A node that imported `prefix(12)`: the process, its P2P and API
/// addresses, and the chain it holds.
fn node_at_height_12(
    dir: &std::path::Path,
) -> (
    chaincore::testkit::process::Node,
    SocketAddr,
    SocketAddr,
    TestChain,
) {
    let base = prefix(12);
    let file = block_file(dir, "base.dat", &base.blocks[1..]);
    let (mut node, p2p) = NodeProcess::start_p2p(
        &dir.join("node"),
        &["--connect-only", "--import", file.to_str().unwrap()],
    );
    node.wait_for("import done", LONG);
    let api = node.api_addr();
    wait_tip(api, 12);
    (node, p2p, api, base)
}

fn wait_tip(api: SocketAddr, height: u32) {
    let deadline = Instant::now() + LONG;
    while tip_height(api) < height {
        assert!(Instant::now() < deadline, "node did not reach {height}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn send_blocks(peer: &mut HostilePeer, blocks: &[chaincore::consensus::block::Block]) {
    for b in blocks {
        peer.send(&Message::Block(Box::new(b.clone()))).unwrap();
    }
}

fn assert_block(e: &Ev, height: u32, hash: &str) {
    assert_eq!(e.name, "block", "{e:?}");
    assert_eq!(e.data["height"], height, "{e:?}");
    assert_eq!(e.data["hash"], hash, "{e:?}");
}

#[test]
fn a_subscriber_sees_a_block_a_reorg_and_a_payment_in_order_and_resumes_without_a_gap() {
    let net = Network::Regtest;
    let dir = tempfile::tempdir().unwrap();
    let (mut node, p2p, api, base) = node_at_height_12(dir.path());
    let watched = key(2).address(net).to_string();
    let path = format!("/events?addresses={watched}");
    let sub = Subscriber::start(api, &path, None);
    let mut peer = HostilePeer::connect(p2p, net).unwrap();
    peer.handshake(&Hello::default(), LONG).unwrap();

    // A block.
    let mut ours = base.clone();
    let b13 = ours.mine_empty(key(1).pubkey_hash()).clone();
    send_blocks(&mut peer, std::slice::from_ref(&b13));
    assert_block(&sub.next_chain(), 13, &b13.hash().to_string());

    // A reorg: two blocks from height 12, the second paying the watched
    // address.
    let mut theirs = base.clone();
    let alt13 = theirs.mine_empty(key(9).pubkey_hash()).clone();
    let (theirs, paying) = chain_with_spends(&theirs, 1, 1, &key(2), &key(9));
    let alt14 = paying[0].clone();
    send_blocks(&mut peer, &[alt13.clone(), alt14.clone()]);
    let reorg = sub.next_chain();
    assert_eq!(reorg.name, "reorg", "{reorg:?}");
    assert_eq!(reorg.data["fork_height"], 12);
    assert_eq!(reorg.data["fork_hash"], base.tip().hash().to_string());
    assert_eq!(reorg.data["old_tip_height"], 13);
    assert_eq!(reorg.data["old_tip_hash"], b13.hash().to_string());
    assert_block(&sub.next_chain(), 13, &alt13.hash().to_string());
    assert_block(&sub.next_chain(), 14, &alt14.hash().to_string());
    let payment = sub.next_chain();
    assert_eq!(payment.name, "address", "{payment:?}");
    assert_eq!(payment.data["address"], watched);
    assert_eq!(payment.data["status"], "confirmed");
    assert_eq!(payment.data["height"], 14);
    assert_eq!(payment.data["change"], 1_000_000);
    assert_eq!(payment.data["balance"], 1_000_000);
    assert_eq!(
        payment.data["txids"][0],
        alt14.transactions[1].txid().to_string()
    );
    let last_id = payment.id.clone().expect("chain events have ids");
    assert_eq!(last_id, format!("14:{}:1", alt14.hash()));
    drop(sub);

    // Disconnected: three more blocks, the middle one paying again.
    let mut theirs = theirs;
    let b15 = theirs.mine_empty(key(9).pubkey_hash()).clone();
    let (mut theirs, paying) = chain_with_spends(&theirs, 1, 1, &key(2), &key(9));
    let b16 = paying[0].clone();
    let b17 = theirs.mine_empty(key(9).pubkey_hash()).clone();
    send_blocks(&mut peer, &[b15.clone(), b16.clone(), b17.clone()]);
    wait_tip(api, 17);

    // Resumed with Last-Event-ID: exactly what was missed, then live.
    let sub = Subscriber::start(api, &path, Some(&last_id));
    assert_block(&sub.next_chain(), 15, &b15.hash().to_string());
    assert_block(&sub.next_chain(), 16, &b16.hash().to_string());
    let again = sub.next_chain();
    assert_eq!(again.name, "address");
    assert_eq!(again.data["height"], 16);
    assert_eq!(again.data["balance"], 2_000_000);
    assert_eq!(again.data["confirmations"], 2);
    assert_block(&sub.next_chain(), 17, &b17.hash().to_string());
    sub.nothing_more_for(Duration::from_secs(1));
    let b18 = theirs.mine_empty(key(9).pubkey_hash()).clone();
    send_blocks(&mut peer, std::slice::from_ref(&b18));
    assert_block(&sub.next_chain(), 18, &b18.hash().to_string());
    sub.nothing_more_for(Duration::from_millis(500));

    // The same from a height: ?from_height=16 replays 16.. .
    let from = Subscriber::start(api, &format!("{path}&from_height=16"), None);
    assert_block(&from.next_chain(), 16, &b16.hash().to_string());
    assert_eq!(from.next_chain().name, "address");
    assert_block(&from.next_chain(), 17, &b17.hash().to_string());
    assert_block(&from.next_chain(), 18, &b18.hash().to_string());
    from.nothing_more_for(Duration::from_millis(500));

    // A replay longer than one pass (`MAX_BLOCKS_PER_PASS`): every block
    // once, in order, and each address event's balance the sum of the
    // changes up to it (the balances carried from one pass to the next).
    let whole = Subscriber::start(api, &format!("{path}&from_height=1"), None);
    let mut height = 0;
    let mut balance = 0i64;
    let mut payments = Vec::new();
    while height < 18 {
        let e = whole.next_chain();
        match e.name.as_str() {
            "block" => {
                height += 1;
                assert_eq!(e.data["height"], height, "{e:?}");
            }
            "address" => {
                assert_eq!(e.data["height"], height, "{e:?}");
                balance += e.data["change"].as_i64().unwrap();
                assert_eq!(e.data["balance"], balance, "{e:?}");
                payments.push(height);
            }
            _ => panic!("{e:?}"),
        }
    }
    const { assert!(MAX_BLOCKS_PER_PASS < 14) };
    assert!(payments.ends_with(&[14, 16]), "{payments:?}");
    assert_eq!(balance, 2_000_000);
    whole.nothing_more_for(Duration::from_millis(500));

    // A resume from the stale block 13 is told about the reorg.
    let stale = Subscriber::start(api, &path, Some(&format!("13:{}:end", b13.hash())));
    let reorg = stale.next_chain();
    assert_eq!(reorg.name, "reorg");
    assert_eq!(reorg.data["fork_height"], 12);
    assert_eq!(reorg.data["new_tip_height"], 18);
    assert_eq!(reorg.data["balances"][0]["balance"], 2_000_000);
    assert_block(&stale.next_chain(), 13, &alt13.hash().to_string());

    // Bad requests are 400s with a code.
    for (path, id, code) in [
        ("/events?addresses=nope", None::<String>, "invalid-address"),
        ("/events", Some("garbage".to_string()), "invalid-event-id"),
        (
            "/events",
            Some(format!("5:{}:end", b13.hash())),
            "unknown-event-id",
        ),
        ("/events?from_height=0", None, "invalid-query"),
        ("/events?from_height=99", None, "invalid-query"),
    ] {
        let mut s = open(api, path, id.as_deref());
        let mut answer = String::new();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 400"), "{path}: {answer}");
        assert!(answer.contains(code), "{path}: {answer}");
    }
    let many: Vec<String> = (1..=101u8)
        .map(|i| key(i).address(net).to_string())
        .collect();
    let (status, body) = http(
        api,
        "GET",
        &format!("/events?addresses={}", many.join(",")),
        "",
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("too-many-addresses"), "{body}");
    node.fail_if_exited();
}

/// Sets the socket's receive buffer (before the node fills it).
fn shrink_receive_buffer(socket: &TcpStream, bytes: libc::c_int) {
    use std::os::fd::AsRawFd;
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            &bytes as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
}

fn metric(api: SocketAddr, name: &str) -> f64 {
    let (_, text) = http(api, "GET", "/metrics", "");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in metrics"))
        .parse()
        .unwrap()
}

#[test]
fn a_subscriber_that_never_reads_is_cut_off_while_the_node_and_another_go_on() {
    let _alone = crate::common::load_sensitive();
    /// Blocks sent: two events each (about 750 bytes), 7.5 MB in all, more
    /// than what buffers them before the node's queue for the sleeper
    /// fills: the server's socket send buffer (autotuned up to
    /// `net.ipv4.tcp_wmem`'s 4 MiB; loopback's 64 KiB segments grow it
    /// fast), hyper's write buffer (400 KiB) and the sleeper's receive
    /// buffer (shrunk to 4 KiB).
    const BLOCKS: usize = 10_000;
    let net = Network::Regtest;
    let dir = tempfile::tempdir().unwrap();
    let (mut node, p2p) = NodeProcess::start_p2p(&dir.path().join("node"), &["--connect-only"]);
    let api = node.api_addr();
    let payee = key(1).address(net).to_string();
    let path = format!("/events?addresses={payee}");
    let sleeper = open(api, &path, None);
    shrink_receive_buffer(&sleeper, 4096);
    let reader = Subscriber::start(api, &path, None);

    let mut chain = TestChain::new(net);
    for _ in 0..BLOCKS {
        chain.mine_empty(key(1).pubkey_hash());
    }
    let mut peer = HostilePeer::connect(p2p, net).unwrap();
    peer.handshake(&Hello::default(), LONG).unwrap();
    let sending = std::thread::spawn({
        let blocks = chain.blocks[1..].to_vec();
        move || {
            send_blocks(&mut peer, &blocks);
            peer
        }
    });
    // The reader gets every block and the payee's every reward, in order.
    for height in 1..=BLOCKS as u32 {
        let block = reader.next_chain();
        assert_block(
            &block,
            height,
            &chain.blocks[height as usize].hash().to_string(),
        );
        let reward = reader.next_chain();
        assert_eq!(reward.name, "address");
        assert_eq!(reward.data["height"], height);
    }
    let _peer = sending.join().unwrap();
    // The sleeper is cut off; the node answers, and counts it.
    let deadline = Instant::now() + LONG;
    while metric(api, "chaincore_event_subscribers_cut_off_total") < 1.0 {
        assert!(Instant::now() < deadline, "the sleeper was not cut off");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(http(api, "GET", "/status", "").0, 200);
    // What it finally reads ends with a close event saying why.
    let (send, events) = mpsc::channel();
    let reading = sleeper.try_clone().unwrap();
    let drain = std::thread::spawn(move || read_events(reading, send));
    let received: Vec<Ev> = events.iter().collect();
    drain.join().unwrap();
    let last = received.last().expect("the sleeper got events");
    assert_eq!(last.name, "close", "{last:?}");
    assert!(
        last.data["reason"]
            .as_str()
            .unwrap()
            .starts_with("slow subscriber"),
        "{last:?}"
    );
    assert!(
        received.len() < 2 * BLOCKS,
        "the sleeper got {} events",
        received.len()
    );
    // The reader goes on.
    let next = chain.mine_empty(key(1).pubkey_hash()).clone();
    let mut peer = HostilePeer::connect(p2p, net).unwrap();
    peer.handshake(&Hello::default(), LONG).unwrap();
    send_blocks(&mut peer, std::slice::from_ref(&next));
    assert_block(
        &reader.next_chain(),
        BLOCKS as u32 + 1,
        &next.hash().to_string(),
    );
    node.fail_if_exited();
}

#[test]
fn wallet_watch_prints_a_payment() {
    let net = Network::Regtest;
    let dir = tempfile::tempdir().unwrap();
    let (mut node, p2p, api, base) = node_at_height_12(dir.path());
    let wallet = dir.path().join("w.json");
    let made = chaincore()
        .args(["wallet", "new", "--network", "regtest", "--wallet"])
        .arg(&wallet)
        .output()
        .unwrap();
    assert!(made.status.success());
    let address = String::from_utf8(made.stdout).unwrap().trim().to_string();
    let owner = chaincore::consensus::address::Address::parse(&address, net)
        .unwrap()
        .hash;
    let mut watch = chaincore()
        .args([
            "wallet",
            "watch",
            "--node",
            &format!("http://{api}"),
            "--wallet",
        ])
        .arg(&wallet)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.starts_with("following from 12:"), "{first}");
    // A block paying the wallet.
    let mut chain = base.clone();
    let paying = chain.mine_empty(owner).clone();
    let mut peer = HostilePeer::connect(p2p, net).unwrap();
    peer.handshake(&Hello::default(), LONG).unwrap();
    send_blocks(&mut peer, std::slice::from_ref(&paying));
    let line = lines.next().unwrap().unwrap();
    let _ = watch.kill();
    let _ = watch.wait();
    let txid = paying.transactions[0].txid().to_string();
    assert!(line.starts_with("confirmed +50"), "{line}");
    assert!(line.contains("at height 13 (1 confirmation)"), "{line}");
    assert!(line.contains(&txid), "{line}");
    node.fail_if_exited();
}
