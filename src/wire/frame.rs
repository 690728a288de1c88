//! Frames: `magic [4] | command [12, ASCII, NUL-padded] | length u32 LE |
//! checksum [4] | payload`. The checksum is the first four bytes of the
//! payload's double SHA-256.
//!
//! The decoder works in two steps, like a mini-redis frame: it first checks a
//! whole header is buffered and valid (magic, command, length under the
//! current limit and the command's own, `max_payload_of`) before it
//! reserves memory for the payload, then waits for the payload and checks
//! its checksum.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::constants::{
    max_payload_of, COMMAND_LEN, FRAME_HEADER_LEN, MAX_HANDSHAKE_PAYLOAD, PAYLOAD_RESERVE_UPFRONT,
};
use crate::consensus::hash::sha256d;

/// A frame whose payload is not decoded yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    pub command: String,
    pub payload: Bytes,
}

/// Why a byte stream is not a valid frame sequence. Every variant is a
/// protocol violation: the connection is closed.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("wrong network magic {0:02x?}")]
    WrongMagic([u8; 4]),
    #[error("command field is not NUL-padded printable ASCII: {0:02x?}")]
    BadCommand([u8; COMMAND_LEN]),
    #[error("payload length {len} exceeds the limit of {limit}")]
    Oversize { len: usize, limit: usize },
    #[error("checksum mismatch for {command}: header {header:02x?}, payload {actual:02x?}")]
    BadChecksum {
        command: String,
        header: [u8; 4],
        actual: [u8; 4],
    },
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
}

impl FrameError {
    /// A short, stable name for counters and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            FrameError::WrongMagic(_) => "wrong_magic",
            FrameError::BadCommand(_) => "bad_command",
            FrameError::Oversize { .. } => "oversize",
            FrameError::BadChecksum { .. } => "bad_checksum",
            FrameError::Io(_) => "io",
        }
    }
}

/// First four bytes of sha256d(payload).
pub fn checksum(payload: &[u8]) -> [u8; 4] {
    let hash = sha256d(payload);
    [hash.0[0], hash.0[1], hash.0[2], hash.0[3]]
}

/// Parses the command field: ASCII letters and digits, then only NULs.
fn parse_command(field: [u8; COMMAND_LEN]) -> Result<String, FrameError> {
    let len = field.iter().position(|b| *b == 0).unwrap_or(COMMAND_LEN);
    let (name, padding) = field.split_at(len);
    if name.is_empty()
        || !name.iter().all(|b| b.is_ascii_graphic())
        || padding.iter().any(|b| *b != 0)
    {
        return Err(FrameError::BadCommand(field));
    }
    Ok(String::from_utf8(name.to_vec()).expect("checked ASCII"))
}

/// The tokio-util codec for frames of one network.
#[derive(Debug)]
pub struct FrameCodec {
    magic: [u8; 4],
    max_payload: usize,
    /// Header of the frame whose payload we are waiting for.
    pending: Option<(String, usize, [u8; 4])>,
}

impl FrameCodec {
    /// A codec that starts with the small pre-handshake payload limit.
    pub fn new(magic: [u8; 4]) -> FrameCodec {
        FrameCodec {
            magic,
            max_payload: MAX_HANDSHAKE_PAYLOAD,
            pending: None,
        }
    }

    /// Changes the payload limit (raised once the handshake is done).
    pub fn set_max_payload(&mut self, limit: usize) {
        self.max_payload = limit;
    }

    pub fn max_payload(&self) -> usize {
        self.max_payload
    }
}

impl Decoder for FrameCodec {
    type Item = RawFrame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<RawFrame>, FrameError> {
        if self.pending.is_none() {
            if src.len() < FRAME_HEADER_LEN {
                return Ok(None);
            }
            let magic: [u8; 4] = src[..4].try_into().expect("4 bytes");
            if magic != self.magic {
                return Err(FrameError::WrongMagic(magic));
            }
            let command = parse_command(src[4..16].try_into().expect("12 bytes"))?;
            let len = u32::from_le_bytes(src[16..20].try_into().expect("4 bytes")) as usize;
            // The connection's limit (1 KiB before the handshake), and the
            // command's own below it.
            let limit = self.max_payload.min(max_payload_of(&command));
            if len > limit {
                return Err(FrameError::Oversize { len, limit });
            }
            let sum: [u8; 4] = src[20..24].try_into().expect("4 bytes");
            src.advance(FRAME_HEADER_LEN);
            src.reserve(len.min(PAYLOAD_RESERVE_UPFRONT));
            self.pending = Some((command, len, sum));
        }
        let (_, len, _) = self.pending.as_ref().expect("set above");
        if src.len() < *len {
            return Ok(None);
        }
        let (command, len, header) = self.pending.take().expect("set above");
        let payload = src.split_to(len).freeze();
        let actual = checksum(&payload);
        if actual != header {
            return Err(FrameError::BadChecksum {
                command,
                header,
                actual,
            });
        }
        Ok(Some(RawFrame { command, payload }))
    }
}

impl Encoder<RawFrame> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, frame: RawFrame, dst: &mut BytesMut) -> Result<(), FrameError> {
        dst.reserve(FRAME_HEADER_LEN + frame.payload.len());
        dst.put_slice(&encode_header(self.magic, &frame.command, &frame.payload));
        dst.put_slice(&frame.payload);
        Ok(())
    }
}

/// The 24-byte header of a frame carrying `payload`.
pub fn encode_header(magic: [u8; 4], command: &str, payload: &[u8]) -> [u8; FRAME_HEADER_LEN] {
    assert!(
        !command.is_empty() && command.len() <= COMMAND_LEN && command.is_ascii(),
        "invalid command {command:?}"
    );
    let mut out = [0u8; FRAME_HEADER_LEN];
    out[..4].copy_from_slice(&magic);
    out[4..4 + command.len()].copy_from_slice(command.as_bytes());
    out[16..20].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    out[20..24].copy_from_slice(&checksum(payload));
    out
}

/// A whole frame as bytes (header and payload).
pub fn encode_frame(magic: [u8; 4], command: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = encode_header(magic, command, payload).to_vec();
    out.extend_from_slice(payload);
    out
}
