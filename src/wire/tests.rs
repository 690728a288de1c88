//! Codec and message tests.

use std::net::SocketAddr;

use bytes::BytesMut;
use proptest::prelude::*;
use tokio_util::codec::{Decoder, Encoder};

use super::constants::*;
use super::frame::*;
use super::message::*;
use crate::consensus::hash::{sha256d, Hash256};
use crate::consensus::params::Network;

const MAGIC: [u8; 4] = [0xc4, 0xc0, 0xde, 0x7e];

pub(crate) fn sample_messages() -> Vec<Message> {
    let genesis = Network::Regtest.params().genesis_block();
    vec![
        Message::Version(Version {
            protocol_version: PROTOCOL_VERSION,
            services: SERVICE_NETWORK,
            timestamp: 1_767_225_600,
            start_height: 42,
            nonce: 0x0123_4567_89ab_cdef,
            listen_port: 27333,
            user_agent: "/chaincore:0.1.0/".into(),
        }),
        Message::Verack,
        Message::Ping(7),
        Message::Pong(7),
        Message::GetAddr,
        Message::Addr(vec![
            AddrEntry {
                time: 5,
                services: 1,
                addr: "127.0.0.1:27333".parse().unwrap(),
            },
            AddrEntry {
                time: 6,
                services: 1,
                addr: "[::1]:8".parse().unwrap(),
            },
        ]),
        Message::Inv(vec![InvItem {
            kind: InvKind::Block,
            hash: genesis.hash(),
        }]),
        Message::GetData(vec![InvItem {
            kind: InvKind::Tx,
            hash: sha256d(b"tx"),
        }]),
        Message::NotFound(vec![]),
        Message::GetHeaders(GetHeaders {
            locator: vec![genesis.hash(), sha256d(b"x")],
            stop: Hash256::ZERO,
        }),
        Message::Headers(vec![genesis.header, genesis.header]),
        Message::Block(Box::new(genesis.clone())),
        Message::Tx(Box::new(genesis.transactions[0].clone())),
        Message::Mempool,
        Message::SendHeaders,
    ]
}

fn stream_of(messages: &[Message]) -> Vec<u8> {
    messages
        .iter()
        .flat_map(|m| encode_frame(MAGIC, m.command(), &m.encode_payload()))
        .collect()
}

fn decode_all(codec: &mut FrameCodec, buf: &mut BytesMut) -> Result<Vec<RawFrame>, FrameError> {
    let mut frames = Vec::new();
    while let Some(frame) = codec.decode(buf)? {
        frames.push(frame);
    }
    Ok(frames)
}

#[test]
fn every_message_round_trips_through_frames() {
    let messages = sample_messages();
    let mut codec = FrameCodec::new(MAGIC);
    codec.set_max_payload(MAX_PAYLOAD);
    let mut buf = BytesMut::from(&stream_of(&messages)[..]);
    let frames = decode_all(&mut codec, &mut buf).unwrap();
    assert!(buf.is_empty());
    let decoded: Vec<Message> = frames
        .iter()
        .map(|f| Message::decode(&f.command, &f.payload).unwrap())
        .collect();
    assert_eq!(decoded, messages);
}

#[test]
fn frames_split_at_every_byte_boundary_decode_identically() {
    let messages = sample_messages();
    let stream = stream_of(&messages);
    let expected = {
        let mut codec = FrameCodec::new(MAGIC);
        codec.set_max_payload(MAX_PAYLOAD);
        decode_all(&mut codec, &mut BytesMut::from(&stream[..])).unwrap()
    };
    for cut in 0..=stream.len() {
        let mut codec = FrameCodec::new(MAGIC);
        codec.set_max_payload(MAX_PAYLOAD);
        let mut buf = BytesMut::from(&stream[..cut]);
        let mut frames = decode_all(&mut codec, &mut buf).unwrap();
        buf.extend_from_slice(&stream[cut..]);
        frames.extend(decode_all(&mut codec, &mut buf).unwrap());
        assert_eq!(frames, expected, "split at {cut}");
    }
    // And one byte at a time.
    let mut codec = FrameCodec::new(MAGIC);
    codec.set_max_payload(MAX_PAYLOAD);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for byte in &stream {
        buf.extend_from_slice(&[*byte]);
        frames.extend(decode_all(&mut codec, &mut buf).unwrap());
    }
    assert_eq!(frames, expected);
}

#[test]
fn a_frame_header_alone_reserves_little_of_what_it_announces() {
    let mut codec = FrameCodec::new(MAGIC);
    codec.set_max_payload(MAX_PAYLOAD);
    let payload = vec![7u8; 900_000];
    let frame = encode_frame(MAGIC, "block", &payload);
    let mut buf = BytesMut::from(&frame[..FRAME_HEADER_LEN]);
    assert!(codec.decode(&mut buf).unwrap().is_none());
    assert!(
        buf.capacity() <= FRAME_HEADER_LEN + PAYLOAD_RESERVE_UPFRONT,
        "{} bytes set aside for a header alone",
        buf.capacity()
    );
    // The payload, as it arrives, still makes the whole frame.
    for chunk in frame[FRAME_HEADER_LEN..].chunks(100_000) {
        assert!(codec.decode(&mut buf).unwrap().is_none());
        buf.extend_from_slice(chunk);
    }
    let decoded = codec.decode(&mut buf).unwrap().expect("a whole frame");
    assert_eq!(decoded.payload.len(), payload.len());
}

#[test]
fn wrong_magic_is_rejected() {
    let mut buf = BytesMut::from(&encode_frame(Network::Main.params().magic, "verack", &[])[..]);
    assert!(matches!(
        FrameCodec::new(MAGIC).decode(&mut buf),
        Err(FrameError::WrongMagic(_))
    ));
}

#[test]
fn oversize_length_is_rejected_from_the_header_alone() {
    // Only the header is sent: the limit is checked before any payload.
    let mut header = encode_header(MAGIC, "block", &[]).to_vec();
    header[16..20].copy_from_slice(&((MAX_HANDSHAKE_PAYLOAD + 1) as u32).to_le_bytes());
    let mut codec = FrameCodec::new(MAGIC);
    assert!(matches!(
        codec.decode(&mut BytesMut::from(&header[..])),
        Err(FrameError::Oversize { len, limit }) if len == MAX_HANDSHAKE_PAYLOAD + 1 && limit == MAX_HANDSHAKE_PAYLOAD
    ));
    // After the handshake the protocol maximum applies.
    let mut codec = FrameCodec::new(MAGIC);
    codec.set_max_payload(MAX_PAYLOAD);
    assert!(codec
        .decode(&mut BytesMut::from(&header[..]))
        .unwrap()
        .is_none());
    header[16..20].copy_from_slice(&((MAX_PAYLOAD + 1) as u32).to_le_bytes());
    let mut codec = FrameCodec::new(MAGIC);
    codec.set_max_payload(MAX_PAYLOAD);
    assert!(matches!(
        codec.decode(&mut BytesMut::from(&header[..])),
        Err(FrameError::Oversize { .. })
    ));
}

#[test]
fn block_tx_and_headers_frames_are_held_to_their_own_limits_from_the_header() {
    let header_of = |command: &str, len: usize| {
        let mut header = encode_header(MAGIC, command, &[]).to_vec();
        header[16..20].copy_from_slice(&(len as u32).to_le_bytes());
        header
    };
    for (command, limit) in [
        ("block", MAX_BLOCK_PAYLOAD),
        ("tx", MAX_TX_PAYLOAD),
        ("headers", MAX_HEADERS_PAYLOAD),
        ("inv", MAX_PAYLOAD),
    ] {
        assert_eq!(max_payload_of(command), limit);
        let mut codec = FrameCodec::new(MAGIC);
        codec.set_max_payload(MAX_PAYLOAD);
        // At the limit: the header is taken, the payload awaited.
        assert!(codec
            .decode(&mut BytesMut::from(&header_of(command, limit)[..]))
            .unwrap()
            .is_none());
        let mut codec = FrameCodec::new(MAGIC);
        codec.set_max_payload(MAX_PAYLOAD);
        let refused = codec.decode(&mut BytesMut::from(&header_of(command, limit + 1)[..]));
        assert!(
            matches!(refused, Err(FrameError::Oversize { len, limit: l }) if len == limit + 1 && l == limit),
            "{command}"
        );
    }
    // The spec's figure for what a block or transaction is counted at.
    assert_eq!(DECODED_TX_BYTES_PER_PAYLOAD_BYTE, 8);
    // A maximum-size `headers` message fits its limit exactly.
    let headers = Message::Headers(vec![
        Network::Regtest.params().genesis_block().header;
        MAX_HEADERS
    ]);
    assert_eq!(headers.encode_payload().len(), MAX_HEADERS_PAYLOAD);
}

#[test]
fn bad_checksum_is_rejected() {
    let mut frame = encode_frame(MAGIC, "ping", &7u64.to_le_bytes());
    frame[20] ^= 0xff;
    assert!(matches!(
        FrameCodec::new(MAGIC).decode(&mut BytesMut::from(&frame[..])),
        Err(FrameError::BadChecksum { .. })
    ));
}

#[test]
fn malformed_command_fields_are_rejected() {
    for field in [
        *b"\0\0\0\0\0\0\0\0\0\0\0\0",
        *b"ping\0x\0\0\0\0\0\0",
        *b"pi ng\0\0\0\0\0\0\0",
        *b"ping\x01\0\0\0\0\0\0\0",
    ] {
        let mut frame = encode_frame(MAGIC, "ping", &7u64.to_le_bytes());
        frame[4..16].copy_from_slice(&field);
        assert!(
            matches!(
                FrameCodec::new(MAGIC).decode(&mut BytesMut::from(&frame[..])),
                Err(FrameError::BadCommand(_))
            ),
            "{field:?}"
        );
    }
}

#[test]
fn unknown_commands_frame_fine_and_fail_only_as_messages() {
    let frame = encode_frame(MAGIC, "futurecmd", b"abc");
    let mut codec = FrameCodec::new(MAGIC);
    let raw = codec
        .decode(&mut BytesMut::from(&frame[..]))
        .unwrap()
        .unwrap();
    assert_eq!(raw.command, "futurecmd");
    assert!(matches!(
        Message::decode(&raw.command, &raw.payload),
        Err(MessageError::UnknownCommand(_))
    ));
}

#[test]
fn unknown_inventory_kinds_decode_and_round_trip() {
    let mut inv = vec![1u8];
    inv.extend_from_slice(&9u32.to_le_bytes());
    inv.extend_from_slice(&[7u8; 32]);
    let message = Message::decode("inv", &inv).unwrap();
    assert_eq!(
        message,
        Message::Inv(vec![InvItem {
            kind: InvKind::Other(9),
            hash: Hash256([7; 32]),
        }])
    );
    assert_eq!(message.encode_payload(), inv);
}

#[test]
fn malformed_payloads_are_rejected() {
    // Trailing bytes after an empty payload, truncated ping, oversized
    // counts, invalid UTF-8 user agent.
    assert!(Message::decode("verack", &[0]).is_err());
    assert!(Message::decode("ping", &[1, 2, 3]).is_err());
    let mut headers = Vec::new();
    crate::encoding::write_compact_size(&mut headers, (MAX_HEADERS + 1) as u64);
    assert!(matches!(
        Message::decode("headers", &headers),
        Err(MessageError::Malformed { .. })
    ));
    let mut version = Message::Version(Version {
        protocol_version: 1,
        services: 0,
        timestamp: 0,
        start_height: 0,
        nonce: 0,
        listen_port: 0,
        user_agent: "ok".into(),
    })
    .encode_payload();
    let last = version.len() - 1;
    version[last] = 0xff;
    assert!(Message::decode("version", &version).is_err());
}

#[test]
fn encoder_writes_what_the_decoder_reads() {
    let mut codec = FrameCodec::new(MAGIC);
    let mut buf = BytesMut::new();
    codec
        .encode(
            RawFrame {
                command: "ping".into(),
                payload: bytes::Bytes::from_static(&[1, 0, 0, 0, 0, 0, 0, 0]),
            },
            &mut buf,
        )
        .unwrap();
    let frame = codec.decode(&mut buf).unwrap().unwrap();
    assert_eq!(
        Message::decode(&frame.command, &frame.payload).unwrap(),
        Message::Ping(1)
    );
}

proptest! {
    #[test]
    fn arbitrary_streams_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let mut codec = FrameCodec::new(MAGIC);
        codec.set_max_payload(MAX_PAYLOAD);
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(frame)) = codec.decode(&mut buf) {
            let _ = Message::decode(&frame.command, &frame.payload);
        }
    }

    #[test]
    fn payloads_that_decode_reencode_identically(
        index in 0usize..KNOWN_COMMANDS.len(),
        payload in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let command = KNOWN_COMMANDS[index];
        if let Ok(message) = Message::decode(command, &payload) {
            prop_assert_eq!(message.encode_payload(), payload);
        }
    }

    #[test]
    fn addr_entries_round_trip(time in any::<u32>(), services in any::<u64>(), ip in any::<[u8; 16]>(), port in any::<u16>()) {
        let v6 = std::net::Ipv6Addr::from(ip);
        let addr = SocketAddr::new(v6.to_ipv4_mapped().map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4), port);
        let message = Message::Addr(vec![AddrEntry { time, services, addr }]);
        let payload = message.encode_payload();
        prop_assert_eq!(Message::decode("addr", &payload).unwrap(), message);
    }
}
