//! Multi-node tests: real nodes on 127.0.0.1, ephemeral ports, temp dirs.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use chaincore::consensus::params::Network;
use chaincore::testkit::{busy_chain, key};
use chaincore::wire::frame::encode_frame;
use chaincore::wire::message::{Message, Version};

use crate::common::{block_file, log_field, stored_tip, NodeProcess};

const LONG: Duration = Duration::from_secs(180);

fn regtest_address(seed: u8) -> String {
    key(seed).address(Network::Regtest).to_string()
}

#[test]
fn block_mined_at_a_reaches_c_through_b() {
    let dir = tempfile::tempdir().unwrap();
    let (a_dir, b_dir, c_dir) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("c"),
    );
    let address = regtest_address(1);
    // A mines a block every 700 ms, so most arrive after the line is up and
    // are relayed live; C only ever connects to B.
    let (mut a, a_addr) = NodeProcess::start_p2p(
        &a_dir,
        &[
            "--connect-only",
            "--mine-to",
            &address,
            "--mine-blocks",
            "4",
            "--mine-interval-ms",
            "700",
        ],
    );
    let a_peer = a_addr.to_string();
    let (mut b, b_addr) = NodeProcess::start_p2p(&b_dir, &["--connect-only", "--peer", &a_peer]);
    let b_peer = b_addr.to_string();
    let (mut c, _) = NodeProcess::start_p2p(&c_dir, &["--connect-only", "--peer", &b_peer]);
    let at_a = a.wait_for_height(4, LONG);
    let at_c = c.wait_for_height(4, LONG);
    assert_eq!(at_a, at_c);
    assert_eq!(b.wait_for_height(4, LONG), at_a);
    let c_log = c.stop();
    b.stop();
    a.stop();
    let c_peers: Vec<_> = c_log
        .iter()
        .filter(|l| l.contains("peer connected"))
        .collect();
    assert!(!c_peers.is_empty());
    assert!(
        c_peers
            .iter()
            .all(|l| log_field(l, "addr") == Some(b_peer.as_str())),
        "C talked to someone other than B: {c_peers:?}"
    );
    assert_eq!(stored_tip(&a_dir), stored_tip(&c_dir));
}

#[test]
fn late_joiner_syncs_2000_blocks_from_two_peers() {
    let chain = busy_chain(2_030, 4);
    let dir = tempfile::tempdir().unwrap();
    let file = block_file(dir.path(), "chain.dat", &chain.blocks[1..]);
    let tip_height = chain.height();
    let import = ["--connect-only", "--import", file.to_str().unwrap()];
    let (mut a, a_addr) = NodeProcess::start_p2p(&dir.path().join("a"), &import);
    let (mut b, b_addr) = NodeProcess::start_p2p(&dir.path().join("b"), &import);
    a.wait_for("import done", LONG);
    b.wait_for("import done", LONG);
    let (a_peer, b_peer) = (a_addr.to_string(), b_addr.to_string());
    let c_dir = dir.path().join("c");
    let mut c = NodeProcess::start(
        &c_dir,
        &["--connect-only", "--peer", &a_peer, "--peer", &b_peer],
    );
    let hash = c.wait_for_height(tip_height, LONG);
    assert_eq!(hash, chain.tip().hash().to_string());
    let c_log = c.stop();
    a.stop();
    b.stop();
    // Blocks came from both peers.
    let senders: std::collections::HashSet<&str> = c_log
        .iter()
        .filter(|l| l.contains("block received"))
        .filter_map(|l| log_field(l, "peer"))
        .collect();
    assert_eq!(senders.len(), 2, "blocks came from {senders:?}");
    let tip = stored_tip(&c_dir);
    assert_eq!(tip, stored_tip(&dir.path().join("a")));
    assert_eq!(tip.digest, stored_tip(&dir.path().join("b")).digest);
}

#[test]
fn network_halves_that_mined_apart_converge_on_the_most_work_branch() {
    let dir = tempfile::tempdir().unwrap();
    let paths: Vec<_> = ["a", "b", "c", "d"]
        .iter()
        .map(|n| dir.path().join(n))
        .collect();
    let (miner_a, miner_c) = (regtest_address(1), regtest_address(2));
    let (mut a, a_addr) = NodeProcess::start_p2p(
        &paths[0],
        &[
            "--connect-only",
            "--mine-to",
            &miner_a,
            "--mine-blocks",
            "5",
            "--mine-interval-ms",
            "50",
        ],
    );
    let (mut c, c_addr) = NodeProcess::start_p2p(
        &paths[2],
        &[
            "--connect-only",
            "--mine-to",
            &miner_c,
            "--mine-blocks",
            "8",
            "--mine-interval-ms",
            "50",
        ],
    );
    let (a_peer, c_peer) = (a_addr.to_string(), c_addr.to_string());
    let (mut b, _) = NodeProcess::start_p2p(&paths[1], &["--connect-only", "--peer", &a_peer]);
    let (mut d, _) = NodeProcess::start_p2p(&paths[3], &["--connect-only", "--peer", &c_peer]);
    let branch_a = a.wait_for_height(5, LONG);
    assert_eq!(b.wait_for_height(5, LONG), branch_a);
    let branch_c = c.wait_for_height(8, LONG);
    assert_eq!(d.wait_for_height(8, LONG), branch_c);
    assert_ne!(branch_a, branch_c);

    // Join the halves: B now also connects to C.
    b.stop();
    let mut b = NodeProcess::start(
        &paths[1],
        &["--connect-only", "--peer", &a_peer, "--peer", &c_peer],
    );
    assert_eq!(b.wait_for_height(8, LONG), branch_c);
    assert_eq!(a.wait_for_height(8, LONG), branch_c);
    let a_log = a.stop();
    assert!(
        a_log.iter().any(|l| l.contains("block disconnected")),
        "A reorganised"
    );
    for node in [b, c, d] {
        node.stop();
    }
    let tips: Vec<_> = paths.iter().map(|p| stored_tip(p)).collect();
    for tip in &tips[1..] {
        assert_eq!(tip, &tips[0]);
    }
    assert_eq!(tips[0].height, 8);
}

/// Sends `bytes` on a fresh connection and reports whether the node closed it.
fn closed_after(addr: std::net::SocketAddr, bytes: &[u8]) -> bool {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.write_all(bytes).unwrap();
    crate::common::closed_within(&mut stream, Duration::from_secs(5))
}

#[test]
fn garbage_from_a_raw_client_is_cut_off_while_a_good_peer_keeps_syncing() {
    let chain = busy_chain(2_000, 2);
    let dir = tempfile::tempdir().unwrap();
    let file = block_file(dir.path(), "chain.dat", &chain.blocks[1..]);
    let (mut a, a_addr) = NodeProcess::start_p2p(
        &dir.path().join("a"),
        &["--connect-only", "--import", file.to_str().unwrap()],
    );
    a.wait_for("import done", LONG);
    let a_peer = a_addr.to_string();
    let (mut b, _) = NodeProcess::start_p2p(
        &dir.path().join("b"),
        &["--connect-only", "--peer", &a_peer],
    );
    b.wait_for("peer connected", LONG);

    let magic = Network::Regtest.params().magic;
    let garbage: Vec<u8> = (0..200u32).map(|i| (i * 37 % 251) as u8).collect();
    assert!(closed_after(a_addr, &garbage), "garbage");
    assert!(
        closed_after(
            a_addr,
            &encode_frame(Network::Main.params().magic, "verack", &[])
        ),
        "wrong magic"
    );
    let mut oversize = encode_frame(magic, "version", &[]);
    oversize[16..20].copy_from_slice(&(64u32 << 20).to_le_bytes());
    assert!(closed_after(a_addr, &oversize), "oversize length");
    let mut bad_sum = encode_frame(magic, "ping", &1u64.to_le_bytes());
    bad_sum[20] ^= 0x55;
    assert!(closed_after(a_addr, &bad_sum), "bad checksum");

    // An unknown command is only ignored: the same connection then completes
    // a handshake.
    let mut stream = TcpStream::connect(a_addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
        .write_all(&encode_frame(magic, "futurecmd", b"hello"))
        .unwrap();
    let version = Message::Version(Version {
        protocol_version: 1,
        services: 0,
        timestamp: 0,
        start_height: 0,
        nonce: 99,
        listen_port: 0,
        user_agent: "/raw-test/".into(),
    });
    stream
        .write_all(&encode_frame(magic, "version", &version.encode_payload()))
        .unwrap();
    let mut header = [0u8; 24];
    stream
        .read_exact(&mut header)
        .expect("the node answers after an unknown command");
    assert_eq!(&header[4..11], b"version");

    let hash = b.wait_for_height(chain.height(), LONG);
    assert_eq!(hash, chain.tip().hash().to_string());
    let a_log = a.stop();
    b.stop();
    for reason in ["wrong_magic", "oversize", "bad_checksum"] {
        assert!(
            a_log
                .iter()
                .any(|l| l.contains("misbehaved") && l.contains(reason)),
            "{reason} not logged"
        );
    }
}

#[test]
fn node_restarted_mid_sync_resumes_from_its_address_book() {
    let chain = busy_chain(2_000, 2);
    let dir = tempfile::tempdir().unwrap();
    let file = block_file(dir.path(), "chain.dat", &chain.blocks[1..]);
    let (mut a, a_addr) = NodeProcess::start_p2p(
        &dir.path().join("a"),
        &["--connect-only", "--import", file.to_str().unwrap()],
    );
    a.wait_for("import done", LONG);
    let c_dir = dir.path().join("c");
    let (mut c, _) = NodeProcess::start_p2p(&c_dir, &["--peer", &a_addr.to_string()]);
    c.wait_for_height(300, LONG);
    c.kill();
    assert!(
        stored_tip(&c_dir).height < chain.height(),
        "killed before the end of sync"
    );
    // No --peer this time: the address book must lead it back to A.
    let (mut c, _) = NodeProcess::start_p2p(&c_dir, &[]);
    let hash = c.wait_for_height(chain.height(), LONG);
    assert_eq!(hash, chain.tip().hash().to_string());
    c.stop();
    a.stop();
}
