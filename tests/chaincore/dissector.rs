//! The Wireshark dissector (`protocol-spec/chaincore.lua`) read by tshark:
//! real traffic between two nodes captured on loopback, and a synthetic
//! capture that exercises TCP reassembly.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chaincore::consensus::amount::Amount;
use chaincore::consensus::params::Network;
use chaincore::consensus::transaction::TxOut;
use chaincore::encoding::Encode;
use chaincore::testkit::process::http;
use chaincore::testkit::{key, signed_spend};
use chaincore::wire::frame::encode_frame;

use crate::common::{block_file, prefix, NodeProcess};

const LONG: Duration = Duration::from_secs(120);

fn dissector() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("protocol-spec/chaincore.lua")
}

fn require_tshark() {
    let found = Command::new("tshark")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "tshark is not installed: scripts/test.sh installs it (apt package tshark)"
    );
}

/// Dissects `pcap` and returns one row per packet: the values of `fields`
/// (several occurrences joined by ',').
fn dissect(pcap: &Path, decode_as: Option<u16>, fields: &[&str]) -> Vec<Vec<String>> {
    let mut args: Vec<String> = vec![
        "-r".into(),
        pcap.display().to_string(),
        "-X".into(),
        format!("lua_script:{}", dissector().display()),
        "-T".into(),
        "fields".into(),
        "-E".into(),
        "occurrence=a".into(),
        "-E".into(),
        "aggregator=,".into(),
    ];
    if let Some(port) = decode_as {
        args.extend(["-d".into(), format!("tcp.port=={port},chaincore")]);
    }
    for field in fields {
        args.extend(["-e".into(), (*field).into()]);
    }
    let out = Command::new("tshark")
        .args(&args)
        .output()
        .expect("run tshark");
    assert!(
        out.status.success(),
        "tshark failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("Lua: Error"), "dissector error: {stderr}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| line.split('\t').map(str::to_string).collect())
        .collect()
}

fn column(rows: &[Vec<String>], index: usize) -> Vec<String> {
    rows.iter()
        .filter_map(|r| r.get(index))
        .flat_map(|cell| cell.split(','))
        .filter(|v| !v.is_empty())
        .map(str::to_string)
        .collect()
}

#[test]
fn live_traffic_between_two_nodes_dissects() {
    require_tshark();
    let chain = prefix(14);
    let dir = tempfile::tempdir().unwrap();
    let file = block_file(dir.path(), "chain.dat", &chain.blocks[1..]);
    let (mut a, a_p2p) = NodeProcess::start_p2p(
        &dir.path().join("a"),
        &["--connect-only", "--import", file.to_str().unwrap()],
    );
    a.wait_for("import done", LONG);
    let a_api = a.api_addr();

    let pcap = dir.path().join("live.pcap");
    let mut capture = Command::new("tshark")
        .args([
            "-i",
            "lo",
            "-f",
            &format!("tcp port {}", a_p2p.port()),
            "-w",
        ])
        .arg(&pcap)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tshark");
    let stderr = capture.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let deadline = Instant::now() + LONG;
    while Instant::now() < deadline {
        match lines.next() {
            Some(Ok(line)) if line.contains("Capturing on") => break,
            Some(Ok(_)) => continue,
            _ => panic!("tshark did not start capturing"),
        }
    }

    let (mut b, _) = NodeProcess::start_p2p(
        &dir.path().join("b"),
        &["--connect-only", "--peer", &a_p2p.to_string()],
    );
    b.wait_for_height(chain.height(), LONG);
    let b_api = b.api_addr();
    let (outpoint, utxo) = chain.spendable(key(1).pubkey_hash())[0];
    let tx = signed_spend(
        &[(outpoint, utxo.output, &key(1))],
        vec![TxOut {
            amount: Amount::from_units(utxo.output.amount.units() - 10_000),
            owner: key(2).pubkey_hash(),
        }],
    );
    let (status, _) = http(a_api, "POST", "/tx", &hex::encode(tx.to_bytes()));
    assert_eq!(status, 200);
    let txid = tx.txid().to_string();
    let deadline = Instant::now() + LONG;
    while !http(b_api, "GET", "/mempool/txids", "").1.contains(&txid) {
        assert!(Instant::now() < deadline, "the transaction did not reach B");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let _ = Command::new("kill")
        .args(["-INT", &capture.id().to_string()])
        .status();
    capture.wait().unwrap();
    b.stop();
    a.stop();

    let rows = dissect(
        &pcap,
        Some(a_p2p.port()),
        &[
            "chaincore.command",
            "chaincore.version.user_agent",
            "chaincore.inv.type",
            "chaincore.tx.txid",
            "chaincore.header.hash",
            "chaincore.checksum.status",
            "chaincore.network",
        ],
    );
    let commands = column(&rows, 0);
    for expected in [
        "version",
        "verack",
        "sendheaders",
        "getheaders",
        "headers",
        "getdata",
        "block",
        "inv",
        "tx",
        "mempool",
    ] {
        assert!(
            commands.iter().any(|c| c == expected),
            "{expected} not dissected; saw {commands:?}"
        );
    }
    assert!(column(&rows, 1)
        .iter()
        .all(|a| a.starts_with("/chaincore:")));
    assert_eq!(column(&rows, 1).len(), 2, "one version each way");
    assert!(column(&rows, 2).iter().any(|t| t == "1"), "a tx inv");
    assert!(column(&rows, 2).iter().any(|t| t == "2"), "a block getdata");
    assert!(column(&rows, 3).contains(&txid), "the relayed tx's txid");
    assert!(
        column(&rows, 4).contains(&chain.tip().hash().to_string()),
        "the tip's header"
    );
    let statuses = column(&rows, 5);
    assert!(
        !statuses.is_empty() && statuses.iter().all(|s| s == "good"),
        "{statuses:?}"
    );
    assert!(column(&rows, 6).iter().all(|n| n == "regtest"));
}

/// A pcap of raw IPv4 packets (LINKTYPE_RAW) carrying one TCP connection.
struct Pcap {
    bytes: Vec<u8>,
}

impl Pcap {
    fn new() -> Pcap {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
        bytes.extend_from_slice(&2u16.to_le_bytes());
        bytes.extend_from_slice(&4u16.to_le_bytes());
        bytes.extend_from_slice(&0i32.to_le_bytes());
        bytes.extend_from_slice(&0u32.to_le_bytes());
        bytes.extend_from_slice(&65_535u32.to_le_bytes());
        bytes.extend_from_slice(&101u32.to_le_bytes()); // LINKTYPE_RAW
        Pcap { bytes }
    }

    #[allow(clippy::too_many_arguments)]
    fn packet(
        &mut self,
        n: u32,
        src_port: u16,
        dst_port: u16,
        seq: u32,
        ack: u32,
        flags: u8,
        payload: &[u8],
    ) {
        let mut tcp = Vec::new();
        tcp.extend_from_slice(&src_port.to_be_bytes());
        tcp.extend_from_slice(&dst_port.to_be_bytes());
        tcp.extend_from_slice(&seq.to_be_bytes());
        tcp.extend_from_slice(&ack.to_be_bytes());
        tcp.push(5 << 4);
        tcp.push(flags);
        tcp.extend_from_slice(&65_535u16.to_be_bytes());
        tcp.extend_from_slice(&[0, 0, 0, 0]); // checksum (not validated), urgent
        tcp.extend_from_slice(payload);
        let total = (20 + tcp.len()) as u16;
        let mut ip = vec![0x45, 0];
        ip.extend_from_slice(&total.to_be_bytes());
        ip.extend_from_slice(&[0, 0, 0x40, 0, 64, 6, 0, 0, 127, 0, 0, 1, 127, 0, 0, 1]);
        let sum: u32 = ip
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
            .sum();
        let folded = !(((sum & 0xffff) + (sum >> 16)) as u16);
        ip[10..12].copy_from_slice(&folded.to_be_bytes());
        ip.extend_from_slice(&tcp);
        self.bytes.extend_from_slice(&n.to_le_bytes()); // seconds
        self.bytes.extend_from_slice(&0u32.to_le_bytes());
        self.bytes
            .extend_from_slice(&(ip.len() as u32).to_le_bytes());
        self.bytes
            .extend_from_slice(&(ip.len() as u32).to_le_bytes());
        self.bytes.extend_from_slice(&ip);
    }
}

#[test]
fn synthetic_capture_reassembles_split_and_packed_frames() {
    require_tshark();
    let magic = Network::Regtest.params().magic;
    let ping = encode_frame(magic, "ping", &7u64.to_le_bytes());
    let mut packed = encode_frame(magic, "verack", &[]);
    packed.extend(encode_frame(magic, "ping", &8u64.to_le_bytes()));
    packed.extend(encode_frame(magic, "pong", &8u64.to_le_bytes()));
    let mut bad = encode_frame(magic, "ping", &9u64.to_le_bytes());
    bad[20] ^= 0xff;
    // Client 40000 -> the regtest P2P port, registered by the dissector.
    let (client, server) = (40_000u16, Network::Regtest.params().default_p2p_port);
    let (syn, ack, psh) = (0x02u8, 0x10u8, 0x18u8);
    let mut pcap = Pcap::new();
    let mut seq = 1_000u32;
    pcap.packet(1, client, server, seq, 0, syn, &[]);
    pcap.packet(2, server, client, 5_000, seq + 1, syn | ack, &[]);
    seq += 1;
    pcap.packet(3, client, server, seq, 5_001, ack, &[]);
    for (i, part) in [&ping[..10], &ping[10..20], &ping[20..]]
        .into_iter()
        .enumerate()
    {
        pcap.packet(4 + i as u32, client, server, seq, 5_001, psh, part);
        seq += part.len() as u32;
    }
    pcap.packet(7, client, server, seq, 5_001, psh, &packed);
    seq += packed.len() as u32;
    pcap.packet(8, client, server, seq, 5_001, psh, &bad);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("synthetic.pcap");
    std::fs::write(&path, &pcap.bytes).unwrap();

    let rows = dissect(
        &path,
        None,
        &[
            "frame.number",
            "chaincore.command",
            "chaincore.ping.nonce",
            "chaincore.checksum.status",
        ],
    );
    let by_frame = |n: &str| rows.iter().find(|r| r[0] == n).cloned().unwrap_or_default();
    for split in ["4", "5"] {
        assert_eq!(
            by_frame(split)[1],
            "",
            "frame {split} holds only part of a PDU"
        );
    }
    assert_eq!(
        by_frame("6")[1],
        "ping",
        "the split frame is reassembled at its last segment"
    );
    assert_eq!(by_frame("6")[2], "0x0000000000000007");
    assert_eq!(
        by_frame("7")[1],
        "verack,ping,pong",
        "three frames in one segment"
    );
    assert_eq!(by_frame("7")[3], "good,good,good");
    assert_eq!(by_frame("8")[1], "ping");
    assert_eq!(by_frame("8")[3], "bad", "a corrupted checksum is flagged");
}
