//! Typed messages and their payload encodings. Each payload uses the
//! consensus encoding rules (little-endian integers, compact-size counts,
//! counts checked before allocating) and must be consumed exactly.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use bytes::BufMut;

use super::constants::{
    MAX_ADDR_ENTRIES, MAX_HEADERS, MAX_INV_ENTRIES, MAX_LOCATOR_HASHES, MAX_USER_AGENT_LEN,
};
use crate::consensus::block::{Block, BlockHeader, HEADER_LEN};
use crate::consensus::hash::Hash256;
use crate::consensus::transaction::Transaction;
use crate::encoding::{
    read_array, read_count, read_seq, read_u16, read_u32, read_u64, read_var_bytes, seq_len,
    write_seq, write_var_bytes, Decode, DecodeError, Encode,
};

/// `version`: who we are, first thing on every connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub protocol_version: u32,
    pub services: u64,
    /// Sender's clock, Unix seconds.
    pub timestamp: u64,
    /// Height of the sender's active chain.
    pub start_height: u32,
    /// Random per connection: a node that receives its own nonce has
    /// connected to itself.
    pub nonce: u64,
    /// Port the sender accepts connections on (0: none).
    pub listen_port: u16,
    pub user_agent: String,
}

/// What an inventory item refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InvKind {
    Tx,
    Block,
    /// A type this version does not know (a later version's): decoded and
    /// re-encoded as is, and ignored by the node.
    Other(u32),
}

impl InvKind {
    fn code(self) -> u32 {
        match self {
            InvKind::Tx => 1,
            InvKind::Block => 2,
            InvKind::Other(code) => code,
        }
    }
}

/// An inventory entry: `kind u32 | hash [32]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct InvItem {
    pub kind: InvKind,
    pub hash: Hash256,
}

/// Encoded size of an inventory entry.
pub const INV_ITEM_LEN: usize = 36;

impl Encode for InvItem {
    fn encode_to<B: BufMut>(&self, buf: &mut B) {
        buf.put_u32_le(self.kind.code());
        self.hash.encode_to(buf);
    }

    fn encoded_len(&self) -> usize {
        INV_ITEM_LEN
    }
}

impl Decode for InvItem {
    const NAME: &'static str = "inventory item";

    fn decode_from(buf: &mut &[u8]) -> Result<Self, DecodeError> {
        let kind = match read_u32(buf, Self::NAME)? {
            1 => InvKind::Tx,
            2 => InvKind::Block,
            code => InvKind::Other(code),
        };
        Ok(InvItem {
            kind,
            hash: Hash256::decode_from(buf)?,
        })
    }
}

/// An `addr` entry: `time u32 | services u64 | ip [16] | port u16 LE`.
/// IPv4 addresses are IPv4-mapped IPv6 addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AddrEntry {
    /// When the address was last seen working, Unix seconds.
    pub time: u32,
    pub services: u64,
    pub addr: SocketAddr,
}

/// Encoded size of an `addr` entry.
pub const ADDR_ENTRY_LEN: usize = 4 + 8 + 16 + 2;

impl Encode for AddrEntry {
    fn encode_to<B: BufMut>(&self, buf: &mut B) {
        buf.put_u32_le(self.time);
        buf.put_u64_le(self.services);
        let ip = match self.addr.ip() {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        };
        buf.put_slice(&ip.octets());
        buf.put_u16_le(self.addr.port());
    }

    fn encoded_len(&self) -> usize {
        ADDR_ENTRY_LEN
    }
}

impl Decode for AddrEntry {
    const NAME: &'static str = "addr entry";

    fn decode_from(buf: &mut &[u8]) -> Result<Self, DecodeError> {
        let time = read_u32(buf, Self::NAME)?;
        let services = read_u64(buf, Self::NAME)?;
        let v6 = Ipv6Addr::from(read_array::<16>(buf, Self::NAME)?);
        let port = read_u16(buf, Self::NAME)?;
        // Keep the IPv4-mapped form canonical: it decodes to IPv4 and
        // encodes back to the same mapped bytes.
        let ip = v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4);
        Ok(AddrEntry {
            time,
            services,
            addr: SocketAddr::new(ip, port),
        })
    }
}

/// `getheaders`: block locator (newest first) and the hash to stop at (zero:
/// as many as allowed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetHeaders {
    pub locator: Vec<Hash256>,
    pub stop: Hash256,
}

/// Every message of the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Version(Version),
    Verack,
    Ping(u64),
    Pong(u64),
    GetAddr,
    Addr(Vec<AddrEntry>),
    Inv(Vec<InvItem>),
    GetData(Vec<InvItem>),
    NotFound(Vec<InvItem>),
    GetHeaders(GetHeaders),
    Headers(Vec<BlockHeader>),
    Block(Box<Block>),
    Tx(Box<Transaction>),
    Mempool,
    SendHeaders,
}

/// A payload that does not decode as its command says.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error("unknown command {0:?}")]
    UnknownCommand(String),
    #[error("malformed {command} payload: {error}")]
    Malformed {
        command: &'static str,
        error: DecodeError,
    },
}

impl Message {
    /// The command name on the wire.
    pub fn command(&self) -> &'static str {
        match self {
            Message::Version(_) => "version",
            Message::Verack => "verack",
            Message::Ping(_) => "ping",
            Message::Pong(_) => "pong",
            Message::GetAddr => "getaddr",
            Message::Addr(_) => "addr",
            Message::Inv(_) => "inv",
            Message::GetData(_) => "getdata",
            Message::NotFound(_) => "notfound",
            Message::GetHeaders(_) => "getheaders",
            Message::Headers(_) => "headers",
            Message::Block(_) => "block",
            Message::Tx(_) => "tx",
            Message::Mempool => "mempool",
            Message::SendHeaders => "sendheaders",
        }
    }

    /// The payload bytes.
    pub fn encode_payload(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Message::Version(v) => {
                out.put_u32_le(v.protocol_version);
                out.put_u64_le(v.services);
                out.put_u64_le(v.timestamp);
                out.put_u32_le(v.start_height);
                out.put_u64_le(v.nonce);
                out.put_u16_le(v.listen_port);
                write_var_bytes(&mut out, v.user_agent.as_bytes());
            }
            Message::Verack | Message::GetAddr | Message::Mempool | Message::SendHeaders => {}
            Message::Ping(nonce) | Message::Pong(nonce) => out.put_u64_le(*nonce),
            Message::Addr(entries) => write_seq(&mut out, entries),
            Message::Inv(items) | Message::GetData(items) | Message::NotFound(items) => {
                write_seq(&mut out, items)
            }
            Message::GetHeaders(g) => {
                write_seq(&mut out, &g.locator);
                g.stop.encode_to(&mut out);
            }
            Message::Headers(headers) => {
                out.reserve(seq_len(headers));
                write_seq(&mut out, headers);
            }
            Message::Block(block) => block.encode_to(&mut out),
            Message::Tx(tx) => tx.encode_to(&mut out),
        }
        out
    }

    /// Decodes the payload of `command`.
    pub fn decode(command: &str, payload: &[u8]) -> Result<Message, MessageError> {
        let known = KNOWN_COMMANDS
            .iter()
            .find(|c| **c == command)
            .ok_or_else(|| MessageError::UnknownCommand(command.to_string()))?;
        decode_known(known, payload).map_err(|error| MessageError::Malformed {
            command: known,
            error,
        })
    }
}

/// The commands this software understands.
pub const KNOWN_COMMANDS: [&str; 15] = [
    "version",
    "verack",
    "ping",
    "pong",
    "getaddr",
    "addr",
    "inv",
    "getdata",
    "notfound",
    "getheaders",
    "headers",
    "block",
    "tx",
    "mempool",
    "sendheaders",
];

fn decode_known(command: &'static str, payload: &[u8]) -> Result<Message, DecodeError> {
    let mut buf = payload;
    let message = match command {
        "version" => {
            let protocol_version = read_u32(&mut buf, command)?;
            let services = read_u64(&mut buf, command)?;
            let timestamp = read_u64(&mut buf, command)?;
            let start_height = read_u32(&mut buf, command)?;
            let nonce = read_u64(&mut buf, command)?;
            let listen_port = read_u16(&mut buf, command)?;
            let agent = read_var_bytes(&mut buf, "user agent", MAX_USER_AGENT_LEN)?;
            let user_agent = String::from_utf8(agent).map_err(|_| DecodeError::Invalid {
                what: "user agent",
                reason: "not UTF-8",
            })?;
            Message::Version(Version {
                protocol_version,
                services,
                timestamp,
                start_height,
                nonce,
                listen_port,
                user_agent,
            })
        }
        "verack" => Message::Verack,
        "getaddr" => Message::GetAddr,
        "mempool" => Message::Mempool,
        "sendheaders" => Message::SendHeaders,
        "ping" => Message::Ping(read_u64(&mut buf, command)?),
        "pong" => Message::Pong(read_u64(&mut buf, command)?),
        "addr" => Message::Addr(read_seq(&mut buf, MAX_ADDR_ENTRIES, ADDR_ENTRY_LEN)?),
        "inv" => Message::Inv(read_seq(&mut buf, MAX_INV_ENTRIES, INV_ITEM_LEN)?),
        "getdata" => Message::GetData(read_seq(&mut buf, MAX_INV_ENTRIES, INV_ITEM_LEN)?),
        "notfound" => Message::NotFound(read_seq(&mut buf, MAX_INV_ENTRIES, INV_ITEM_LEN)?),
        "getheaders" => {
            let count = read_count(&mut buf, "block locator", MAX_LOCATOR_HASHES, 32)?;
            let mut locator = Vec::with_capacity(count);
            for _ in 0..count {
                locator.push(Hash256::decode_from(&mut buf)?);
            }
            Message::GetHeaders(GetHeaders {
                locator,
                stop: Hash256::decode_from(&mut buf)?,
            })
        }
        "headers" => Message::Headers(read_seq(&mut buf, MAX_HEADERS, HEADER_LEN)?),
        "block" => Message::Block(Box::new(Block::decode_from(&mut buf)?)),
        "tx" => Message::Tx(Box::new(Transaction::decode_from(&mut buf)?)),
        _ => unreachable!("only known commands reach here"),
    };
    if !buf.is_empty() {
        return Err(DecodeError::TrailingBytes {
            what: command,
            trailing: buf.len(),
        });
    }
    Ok(message)
}
