//! The Wireshark dissector (`protocol-spec/chaincore.lua`) read by tshark:
//! real traffic between two nodes captured on loopback, and a synthetic
//! capture that exercises TCP reassembly.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chaincore::consensus::amount::Amount;
use chaincore::consensus::hash::Hash256;
use chaincore::consensus::limits::{MAX_BLOCK_TXS, MAX_TX_INPUTS, MAX_TX_OUTPUTS};
use chaincore::consensus::params::Network;
use chaincore::consensus::transaction::TxOut;
use chaincore::encoding::{write_compact_size, Encode};
use chaincore::testkit::process::http;
use chaincore::testkit::{key, signed_spend};
use chaincore::wire::constants::{
    MAX_ADDR_ENTRIES, MAX_BLOCK_PAYLOAD, MAX_HANDSHAKE_PAYLOAD, MAX_HEADERS, MAX_HEADERS_PAYLOAD,
    MAX_INV_ENTRIES, MAX_LOCATOR_HASHES, MAX_PAYLOAD, MAX_TX_PAYLOAD, MAX_USER_AGENT_LEN,
    PROTOCOL_VERSION,
};
use chaincore::wire::frame::{encode_frame, encode_header};
use chaincore::wire::message::{InvItem, InvKind, Message, Version};

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
    dissect_with(pcap, decode_as, &[], fields)
}

/// [`dissect`] with more tshark arguments (`-2`, `-Y filter`).
fn dissect_with(
    pcap: &Path,
    decode_as: Option<u16>,
    extra: &[&str],
    fields: &[&str],
) -> Vec<Vec<String>> {
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
    args.extend(extra.iter().map(|a| (*a).to_string()));
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
    // Two nodes' traffic breaks no rule: in particular the `headers` of 14
    // headers (over 1 KiB) comes after the handshake of its direction.
    let flagged: Vec<_> = experts_by_frame(&pcap, Some(a_p2p.port()), &[])
        .into_iter()
        .filter(|(_, names)| !names.is_empty())
        .collect();
    assert!(flagged.is_empty(), "valid traffic flagged: {flagged:?}");
}

/// A pcap of raw IPv4 packets (LINKTYPE_RAW) carrying TCP connections on
/// loopback.
struct Pcap {
    bytes: Vec<u8>,
    /// Packets written so far: the last one's frame number.
    frames: u32,
}

/// Largest TCP payload put in one synthetic packet (the IPv4 total length
/// and the pcap's snap length are 16-bit).
const SEGMENT: usize = 60_000;

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const PSH_ACK: u8 = 0x18;

/// One TCP connection of a synthetic capture: its ports and the next
/// sequence number of each side.
struct Tcp {
    client: u16,
    server: u16,
    client_seq: u32,
    server_seq: u32,
}

/// Which side of a [`Tcp`] connection sends.
#[derive(Clone, Copy)]
enum Side {
    Client,
    Server,
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
        Pcap { bytes, frames: 0 }
    }

    /// Writes one packet and returns its frame number.
    fn packet(
        &mut self,
        src_port: u16,
        dst_port: u16,
        seq: u32,
        ack: u32,
        flags: u8,
        payload: &[u8],
    ) -> u32 {
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
        let total = u16::try_from(20 + tcp.len()).expect("packet fits IPv4");
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
        self.frames += 1;
        self.bytes.extend_from_slice(&self.frames.to_le_bytes()); // seconds
        self.bytes.extend_from_slice(&0u32.to_le_bytes());
        self.bytes
            .extend_from_slice(&(ip.len() as u32).to_le_bytes());
        self.bytes
            .extend_from_slice(&(ip.len() as u32).to_le_bytes());
        self.bytes.extend_from_slice(&ip);
        self.frames
    }

    /// Opens a connection from `client` to `server` (SYN, SYN/ACK, ACK).
    fn connect(&mut self, client: u16, server: u16) -> Tcp {
        let (client_seq, server_seq) = (1_000u32, 5_000u32);
        self.packet(client, server, client_seq, 0, SYN, &[]);
        self.packet(server, client, server_seq, client_seq + 1, SYN | ACK, &[]);
        self.packet(client, server, client_seq + 1, server_seq + 1, ACK, &[]);
        Tcp {
            client,
            server,
            client_seq: client_seq + 1,
            server_seq: server_seq + 1,
        }
    }

    /// Sends `bytes` from `side` in segments of at most [`SEGMENT`] bytes and
    /// returns the frame number of the last one (where the dissector shows
    /// a frame it reassembled).
    fn send(&mut self, tcp: &mut Tcp, side: Side, bytes: &[u8]) -> u32 {
        let mut last = 0;
        for part in bytes.chunks(SEGMENT) {
            last = match side {
                Side::Client => {
                    let n = self.packet(
                        tcp.client,
                        tcp.server,
                        tcp.client_seq,
                        tcp.server_seq,
                        PSH_ACK,
                        part,
                    );
                    tcp.client_seq += part.len() as u32;
                    n
                }
                Side::Server => {
                    let n = self.packet(
                        tcp.server,
                        tcp.client,
                        tcp.server_seq,
                        tcp.client_seq,
                        PSH_ACK,
                        part,
                    );
                    tcp.server_seq += part.len() as u32;
                    n
                }
            };
        }
        last
    }

    fn write(&self, path: &Path) {
        std::fs::write(path, &self.bytes).unwrap();
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
    let mut pcap = Pcap::new();
    let mut tcp = pcap.connect(40_000, Network::Regtest.params().default_p2p_port);
    for part in [&ping[..10], &ping[10..20], &ping[20..]] {
        pcap.send(&mut tcp, Side::Client, part);
    }
    pcap.send(&mut tcp, Side::Client, &packed);
    pcap.send(&mut tcp, Side::Client, &bad);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("synthetic.pcap");
    pcap.write(&path);

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

/// Every expert field of the dissector that marks a violation or a note.
const EXPERTS: [&str; 12] = [
    "chaincore.expert.wrong_magic",
    "chaincore.expert.bad_command",
    "chaincore.expert.oversize",
    "chaincore.expert.handshake_payload_too_large",
    "chaincore.expert.message_before_handshake",
    "chaincore.expert.duplicate_version",
    "chaincore.expert.unexpected_verack",
    "chaincore.expert.bad_checksum",
    "chaincore.expert.count_over_limit",
    "chaincore.expert.noncanonical_compact_size",
    "chaincore.expert.malformed",
    "chaincore.expert.unknown_command",
];

/// For each packet of `pcap` (by frame number), the names of [`EXPERTS`] it
/// carries.
fn experts_by_frame(
    pcap: &Path,
    decode_as: Option<u16>,
    extra: &[&str],
) -> BTreeMap<u32, Vec<&'static str>> {
    let mut fields = vec!["frame.number"];
    fields.extend(EXPERTS);
    dissect_with(pcap, decode_as, extra, &fields)
        .into_iter()
        .map(|row| {
            let frame = row[0].parse().expect("a frame number");
            let names = EXPERTS
                .iter()
                .zip(&row[1..])
                .filter(|(_, cell)| !cell.is_empty())
                .map(|(name, _)| *name)
                .collect();
            (frame, names)
        })
        .collect()
}

/// A payload of `count` (compact size) followed by `count` items of
/// `item_len` bytes of `fill`.
fn counted(count: u64, item_len: usize, fill: u8) -> Vec<u8> {
    let mut out = Vec::new();
    write_compact_size(&mut out, count);
    out.resize(out.len() + count as usize * item_len, fill);
    out
}

fn version_payload(user_agent: &str) -> Vec<u8> {
    Message::Version(Version {
        protocol_version: PROTOCOL_VERSION,
        services: 1,
        timestamp: 1_700_000_000,
        start_height: 0,
        nonce: 42,
        listen_port: 0,
        user_agent: user_agent.to_string(),
    })
    .encode_payload()
}

#[test]
fn synthetic_capture_flags_what_the_node_refuses() {
    require_tshark();
    let magic = Network::Regtest.params().magic;
    let port = Network::Regtest.params().default_p2p_port;
    let frame = |command: &str, payload: &[u8]| encode_frame(magic, command, payload);
    let mut pcap = Pcap::new();

    // A 2 KiB version: over MAX_HANDSHAKE_PAYLOAD (its user agent is also
    // over MAX_USER_AGENT_LEN).
    let mut hostile = pcap.connect(40_001, port);
    let big_version = version_payload(&"x".repeat(2000));
    assert!(big_version.len() > MAX_HANDSHAKE_PAYLOAD && big_version.len() < 2048);
    let f_big_version = pcap.send(&mut hostile, Side::Client, &frame("version", &big_version));

    // A connection whose client completes the handshake; the server sends
    // its version but no verack.
    let mut tcp = pcap.connect(40_002, port);
    let headers_15 = counted(15, 80, 0x11);
    let addr_40 = counted(40, 30, 0);
    assert!(headers_15.len() > MAX_HANDSHAKE_PAYLOAD && addr_40.len() > MAX_HANDSHAKE_PAYLOAD);
    // Its user agent has 2-, 3- and 4-byte UTF-8 characters.
    let f_version = pcap.send(
        &mut tcp,
        Side::Client,
        &frame("version", &version_payload("/chaincore:tëst€𝄞/")),
    );
    let f_server_version = pcap.send(
        &mut tcp,
        Side::Server,
        &frame("version", &version_payload("/chaincore:test/")),
    );
    let f_early_headers = pcap.send(&mut tcp, Side::Client, &frame("headers", &headers_15));
    let f_verack = pcap.send(&mut tcp, Side::Client, &frame("verack", &[]));
    let f_server_addr = pcap.send(&mut tcp, Side::Server, &frame("addr", &addr_40));
    let f_headers = pcap.send(&mut tcp, Side::Client, &frame("headers", &headers_15));
    let mut inv = Vec::new();
    write_compact_size(&mut inv, 3);
    for kind in [InvKind::Tx, InvKind::Block, InvKind::Other(7)] {
        InvItem {
            kind,
            hash: Hash256([0x22; 32]),
        }
        .encode_to(&mut inv);
    }
    let f_inv = pcap.send(&mut tcp, Side::Client, &frame("inv", &inv));
    let f_big_inv = pcap.send(
        &mut tcp,
        Side::Client,
        &frame("inv", &counted(MAX_INV_ENTRIES as u64 + 1, 36, 1)),
    );
    let f_big_headers = pcap.send(
        &mut tcp,
        Side::Client,
        &frame("headers", &{
            // A count over the limit in a payload within the command's own:
            // the node refuses the count before it looks for the items; the
            // dissector also finds the last header missing.
            let mut headers = counted(MAX_HEADERS as u64 + 1, 80, 0x33);
            headers.truncate(MAX_HEADERS_PAYLOAD);
            headers
        }),
    );
    let f_big_addr = pcap.send(
        &mut tcp,
        Side::Client,
        &frame("addr", &counted(MAX_ADDR_ENTRIES as u64 + 1, 30, 0)),
    );
    let mut getheaders = counted(MAX_LOCATOR_HASHES as u64 + 1, 32, 0x44);
    getheaders.extend_from_slice(&[0; 32]);
    let f_big_locator = pcap.send(&mut tcp, Side::Client, &frame("getheaders", &getheaders));
    // A transaction and a block whose counts alone are over the limit (the
    // node refuses the count before it looks for the items).
    let mut tx = 1u32.to_le_bytes().to_vec();
    write_compact_size(&mut tx, 0);
    write_compact_size(&mut tx, MAX_TX_OUTPUTS as u64 + 1);
    let f_big_tx = pcap.send(&mut tcp, Side::Client, &frame("tx", &tx));
    let mut block = vec![0u8; 80];
    write_compact_size(&mut block, MAX_BLOCK_TXS as u64 + 1);
    let f_big_block = pcap.send(&mut tcp, Side::Client, &frame("block", &block));
    // One inventory item counted with fd 01 00: 1 fits the 1-byte form.
    let mut long_count = vec![0xfd, 0x01, 0x00];
    long_count.extend_from_slice(&inv[1..37]);
    let f_long_count = pcap.send(&mut tcp, Side::Client, &frame("inv", &long_count));
    let f_test_magic = pcap.send(
        &mut tcp,
        Side::Client,
        &encode_frame(Network::Test.params().magic, "ping", &1u64.to_le_bytes()),
    );
    let mut bad_padding = frame("ping", &2u64.to_le_bytes());
    bad_padding[4 + 5] = b'x';
    let f_bad_padding = pcap.send(&mut tcp, Side::Client, &bad_padding);
    let f_unknown = pcap.send(&mut tcp, Side::Client, &frame("sendcmpct", &[0; 9]));
    let f_ping = pcap.send(&mut tcp, Side::Client, &frame("ping", &3u64.to_le_bytes()));
    let f_second_version = pcap.send(
        &mut tcp,
        Side::Client,
        &frame("version", &version_payload("/chaincore:test/")),
    );
    let f_second_verack = pcap.send(&mut tcp, Side::Client, &frame("verack", &[]));
    // A client that sends verack before the server's version, then a ping.
    let mut eager = pcap.connect(40_004, port);
    let f_eager_verack = pcap.send(&mut eager, Side::Client, &frame("verack", &[]));
    let f_eager_ping = pcap.send(
        &mut eager,
        Side::Client,
        &frame("ping", &4u64.to_le_bytes()),
    );
    // A user agent of two bytes, 0xc0 0xaf: an overlong '/', not UTF-8.
    let mut not_utf8 = version_payload("ab");
    not_utf8[35..37].copy_from_slice(&[0xc0, 0xaf]);
    let f_not_utf8 = pcap.send(&mut eager, Side::Client, &frame("version", &not_utf8));
    // A connection that opened before the capture began: its handshake is
    // not in the capture, so its large frames are not taken as before it.
    let mut joined = Tcp {
        client: 40_003,
        server: port,
        client_seq: 77_000,
        server_seq: 88_000,
    };
    let f_joined_headers = pcap.send(&mut joined, Side::Client, &frame("headers", &headers_15));
    // A header announcing MAX_PAYLOAD + 1 bytes, and the first few of them.
    let mut oversize = encode_header(magic, "block", &[]).to_vec();
    oversize[16..20].copy_from_slice(&(MAX_PAYLOAD as u32 + 1).to_le_bytes());
    oversize.extend_from_slice(&[0; 100]);
    let f_oversize = pcap.send(&mut tcp, Side::Client, &oversize);
    // On a connection of its own (the node closes one at an oversize
    // header): a block header announcing one byte over a block's limit.
    let mut block_stream = Tcp {
        client: 40_004,
        server: port,
        client_seq: 99_000,
        server_seq: 111_000,
    };
    let mut big_block = encode_header(magic, "block", &[]).to_vec();
    big_block[16..20].copy_from_slice(&(MAX_BLOCK_PAYLOAD as u32 + 1).to_le_bytes());
    big_block.extend_from_slice(&[0; 100]);
    let f_block_oversize = pcap.send(&mut block_stream, Side::Client, &big_block);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("violations.pcap");
    pcap.write(&path);

    let expected: [(&str, Vec<u32>); 12] = [
        ("chaincore.expert.wrong_magic", vec![f_test_magic]),
        ("chaincore.expert.bad_command", vec![f_bad_padding]),
        (
            "chaincore.expert.oversize",
            vec![f_oversize, f_block_oversize],
        ),
        (
            "chaincore.expert.handshake_payload_too_large",
            vec![f_big_version, f_early_headers, f_server_addr],
        ),
        (
            "chaincore.expert.message_before_handshake",
            vec![f_early_headers, f_server_addr, f_eager_ping],
        ),
        ("chaincore.expert.duplicate_version", vec![f_second_version]),
        (
            "chaincore.expert.unexpected_verack",
            vec![f_second_verack, f_eager_verack],
        ),
        ("chaincore.expert.bad_checksum", vec![]),
        (
            "chaincore.expert.count_over_limit",
            vec![
                f_big_version,
                f_big_inv,
                f_big_headers,
                f_big_addr,
                f_big_locator,
                f_big_tx,
                f_big_block,
            ],
        ),
        (
            "chaincore.expert.noncanonical_compact_size",
            vec![f_long_count],
        ),
        (
            "chaincore.expert.malformed",
            vec![f_big_headers, f_big_tx, f_big_block, f_not_utf8],
        ),
        ("chaincore.expert.unknown_command", vec![f_unknown]),
    ];
    assert_eq!(expected.each_ref().map(|(name, _)| *name), EXPERTS);
    let single = experts_by_frame(&path, None, &[]);
    for (name, frames) in &expected {
        let flagged: Vec<u32> = single
            .iter()
            .filter(|(_, names)| names.contains(name))
            .map(|(frame, _)| *frame)
            .collect();
        assert_eq!(&flagged, frames, "frames flagged {name}");
    }
    for valid in [
        f_version,
        f_server_version,
        f_verack,
        f_headers,
        f_inv,
        f_ping,
        f_joined_headers,
    ] {
        assert_eq!(single[&valid], Vec::<&str>::new(), "frame {valid} is valid");
    }
    // Dissecting every packet a second time (as the GUI does, in any
    // order) flags the same frames: the handshake state is kept per frame.
    // (Without a filter, tshark -2 skips dissection in its first pass.)
    assert_eq!(
        experts_by_frame(&path, None, &["-2", "-Y", "frame"]),
        single,
        "tshark -2"
    );
    // The names are display filters.
    let filter = EXPERTS.join(" || ");
    let shown: Vec<u32> = dissect_with(&path, None, &["-Y", &filter], &["frame.number"])
        .iter()
        .map(|row| row[0].parse().expect("a frame number"))
        .collect();
    let with_flags: Vec<u32> = single
        .iter()
        .filter(|(_, names)| !names.is_empty())
        .map(|(frame, _)| *frame)
        .collect();
    assert_eq!(shown, with_flags, "-Y {filter}");

    let rows = dissect(
        &path,
        None,
        &["frame.number", "_ws.expert.message", "chaincore.inv.type"],
    );
    let messages = |n: u32| {
        rows.iter()
            .find(|r| r[0] == n.to_string())
            .map(|r| r[1].clone())
            .unwrap_or_default()
    };
    for (frame, text) in [
        (
            f_big_version,
            "Payload length 2037 exceeds MAX_HANDSHAKE_PAYLOAD (1024)",
        ),
        (
            f_big_version,
            "User agent length 2000 exceeds MAX_USER_AGENT_LEN (256)",
        ),
        (
            f_early_headers,
            "Payload length 1201 exceeds MAX_HANDSHAKE_PAYLOAD (1024)",
        ),
        (
            f_server_addr,
            "Payload length 1201 exceeds MAX_HANDSHAKE_PAYLOAD (1024)",
        ),
        (
            f_big_inv,
            "Inventory count 50001 exceeds MAX_INV_ENTRIES (50000)",
        ),
        (
            f_big_headers,
            "Header count 2001 exceeds MAX_HEADERS (2000)",
        ),
        (
            f_big_addr,
            "Address count 1001 exceeds MAX_ADDR_ENTRIES (1000)",
        ),
        (
            f_big_locator,
            "Locator count 102 exceeds MAX_LOCATOR_HASHES (101)",
        ),
        (
            f_big_tx,
            "Output count 35712 exceeds MAX_TX_OUTPUTS (35711)",
        ),
        (
            f_big_block,
            "Transaction count 100001 exceeds MAX_BLOCK_TXS (100000)",
        ),
        (
            f_long_count,
            "Non-canonical compact size: 1 encoded in 3 bytes",
        ),
        (f_eager_ping, "ping before the sender's version and verack"),
        (f_not_utf8, "User agent is not UTF-8"),
        (
            f_oversize,
            "Payload length 4194305 exceeds MAX_PAYLOAD (4194304)",
        ),
        (
            f_block_oversize,
            "Payload length 1000001 exceeds the block limit (1000000)",
        ),
    ] {
        assert!(
            messages(frame).contains(text),
            "frame {frame}: {text:?} not in {:?}",
            messages(frame)
        );
    }
    let inv_row = rows.iter().find(|r| r[0] == f_inv.to_string()).unwrap();
    assert_eq!(
        inv_row[2], "1,2,7",
        "an unknown inventory type is shown, not refused"
    );
}

/// The limits the dissector checks are the node's, by name and value.
#[test]
fn dissector_limits_are_the_nodes() {
    let lua = std::fs::read_to_string(dissector()).unwrap();
    let value = |name: &str| -> usize {
        let prefix = format!("local {name} = ");
        let line = lua
            .lines()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("{name} is not defined in the dissector"));
        line[prefix.len()..].trim().parse().expect("a number")
    };
    for (name, node) in [
        ("MAX_HANDSHAKE_PAYLOAD", MAX_HANDSHAKE_PAYLOAD),
        ("MAX_PAYLOAD", MAX_PAYLOAD),
        ("MAX_ADDR_ENTRIES", MAX_ADDR_ENTRIES),
        ("MAX_INV_ENTRIES", MAX_INV_ENTRIES),
        ("MAX_LOCATOR_HASHES", MAX_LOCATOR_HASHES),
        ("MAX_HEADERS", MAX_HEADERS),
        ("MAX_USER_AGENT_LEN", MAX_USER_AGENT_LEN),
        ("MAX_BLOCK_TXS", MAX_BLOCK_TXS),
        ("MAX_TX_INPUTS", MAX_TX_INPUTS),
        ("MAX_TX_OUTPUTS", MAX_TX_OUTPUTS),
        ("MAX_BLOCK_PAYLOAD", MAX_BLOCK_PAYLOAD),
        ("MAX_TX_PAYLOAD", MAX_TX_PAYLOAD),
        ("MAX_HEADERS_PAYLOAD", MAX_HEADERS_PAYLOAD),
    ] {
        assert_eq!(value(name), node, "{name}");
    }
}
