//! Explicit, canonical binary encoding shared by consensus and the wire.
//!
//! Integers are little-endian; variable-length sequences carry a Bitcoin-style
//! compact-size prefix that must use the shortest form. Decoders read from a
//! `&[u8]` cursor, check every count against both a named limit and the bytes
//! actually present *before* allocating, and never panic on any input.
//! For every byte string `b` that decodes, `encode(decode(b)) == b`.

use bytes::{Buf, BufMut};
use thiserror::Error;

/// Why a byte string did not decode.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("unexpected end of input reading {what}: {needed} bytes needed, {available} left")]
    UnexpectedEnd {
        what: &'static str,
        needed: usize,
        available: usize,
    },
    #[error("non-canonical compact size: {value} encoded in {len} bytes")]
    NonCanonicalCompactSize { value: u64, len: usize },
    #[error("{what}: count {count} exceeds the limit of {limit}")]
    TooMany {
        what: &'static str,
        count: u64,
        limit: u64,
    },
    #[error("{trailing} trailing bytes after {what}")]
    TrailingBytes { what: &'static str, trailing: usize },
    #[error("invalid {what}: {reason}")]
    Invalid {
        what: &'static str,
        reason: &'static str,
    },
}

/// A type with one canonical byte encoding.
pub trait Encode {
    /// Appends the encoding of `self` to `buf`.
    fn encode_to<B: BufMut>(&self, buf: &mut B);

    /// The exact number of bytes `encode_to` writes.
    fn encoded_len(&self) -> usize;

    /// The encoding as a fresh vector.
    fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode_to(&mut out);
        out
    }
}

/// A type that can be read back from its canonical encoding.
pub trait Decode: Sized {
    /// A short name used in error messages.
    const NAME: &'static str;

    /// Reads one value from the front of `buf`, advancing it.
    fn decode_from(buf: &mut &[u8]) -> Result<Self, DecodeError>;

    /// Decodes a value that must span all of `bytes`.
    fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut cursor = bytes;
        let value = Self::decode_from(&mut cursor)?;
        if !cursor.is_empty() {
            return Err(DecodeError::TrailingBytes {
                what: Self::NAME,
                trailing: cursor.len(),
            });
        }
        Ok(value)
    }
}

fn need(buf: &[u8], n: usize, what: &'static str) -> Result<(), DecodeError> {
    if buf.len() < n {
        return Err(DecodeError::UnexpectedEnd {
            what,
            needed: n,
            available: buf.len(),
        });
    }
    Ok(())
}

pub fn read_u8(buf: &mut &[u8], what: &'static str) -> Result<u8, DecodeError> {
    need(buf, 1, what)?;
    Ok(buf.get_u8())
}

pub fn read_u16(buf: &mut &[u8], what: &'static str) -> Result<u16, DecodeError> {
    need(buf, 2, what)?;
    Ok(buf.get_u16_le())
}

pub fn read_u32(buf: &mut &[u8], what: &'static str) -> Result<u32, DecodeError> {
    need(buf, 4, what)?;
    Ok(buf.get_u32_le())
}

pub fn read_u64(buf: &mut &[u8], what: &'static str) -> Result<u64, DecodeError> {
    need(buf, 8, what)?;
    Ok(buf.get_u64_le())
}

pub fn read_array<const N: usize>(
    buf: &mut &[u8],
    what: &'static str,
) -> Result<[u8; N], DecodeError> {
    need(buf, N, what)?;
    let mut out = [0u8; N];
    buf.copy_to_slice(&mut out);
    Ok(out)
}

/// Moves past `n` bytes without reading them.
pub fn skip(buf: &mut &[u8], n: usize, what: &'static str) -> Result<(), DecodeError> {
    need(buf, n, what)?;
    *buf = &buf[n..];
    Ok(())
}

/// Number of bytes the compact-size encoding of `n` takes.
pub fn compact_size_len(n: u64) -> usize {
    match n {
        0..=0xfc => 1,
        0xfd..=0xffff => 3,
        0x1_0000..=0xffff_ffff => 5,
        _ => 9,
    }
}

pub fn write_compact_size<B: BufMut>(buf: &mut B, n: u64) {
    match n {
        0..=0xfc => buf.put_u8(n as u8),
        0xfd..=0xffff => {
            buf.put_u8(0xfd);
            buf.put_u16_le(n as u16);
        }
        0x1_0000..=0xffff_ffff => {
            buf.put_u8(0xfe);
            buf.put_u32_le(n as u32);
        }
        _ => {
            buf.put_u8(0xff);
            buf.put_u64_le(n);
        }
    }
}

/// Reads a compact size, rejecting any encoding that is not the shortest.
pub fn read_compact_size(buf: &mut &[u8], what: &'static str) -> Result<u64, DecodeError> {
    let tag = read_u8(buf, what)?;
    let (value, len) = match tag {
        0..=0xfc => return Ok(u64::from(tag)),
        0xfd => (u64::from(read_u16(buf, what)?), 3),
        0xfe => (u64::from(read_u32(buf, what)?), 5),
        0xff => (read_u64(buf, what)?, 9),
    };
    if compact_size_len(value) != len {
        return Err(DecodeError::NonCanonicalCompactSize { value, len });
    }
    Ok(value)
}

/// Reads the element count of a sequence and checks it against `limit` and
/// against the bytes left (each element takes at least `min_item_len`), so a
/// forged count can never make us reserve memory the input cannot fill.
pub fn read_count(
    buf: &mut &[u8],
    what: &'static str,
    limit: usize,
    min_item_len: usize,
) -> Result<usize, DecodeError> {
    let count = read_compact_size(buf, what)?;
    if count > limit as u64 {
        return Err(DecodeError::TooMany {
            what,
            count,
            limit: limit as u64,
        });
    }
    let count = count as usize;
    let min_bytes = count.saturating_mul(min_item_len.max(1));
    if min_item_len > 0 && min_bytes > buf.len() {
        return Err(DecodeError::UnexpectedEnd {
            what,
            needed: min_bytes,
            available: buf.len(),
        });
    }
    Ok(count)
}

/// Reads a compact-size-prefixed byte string of at most `limit` bytes.
pub fn read_var_bytes(
    buf: &mut &[u8],
    what: &'static str,
    limit: usize,
) -> Result<Vec<u8>, DecodeError> {
    let len = read_count(buf, what, limit, 1)?;
    let out = buf[..len].to_vec();
    buf.advance(len);
    Ok(out)
}

pub fn write_var_bytes<B: BufMut>(buf: &mut B, bytes: &[u8]) {
    write_compact_size(buf, bytes.len() as u64);
    buf.put_slice(bytes);
}

/// Encodes a compact-size-prefixed sequence.
pub fn write_seq<B: BufMut, T: Encode>(buf: &mut B, items: &[T]) {
    write_compact_size(buf, items.len() as u64);
    for item in items {
        item.encode_to(buf);
    }
}

pub fn seq_len<T: Encode>(items: &[T]) -> usize {
    compact_size_len(items.len() as u64) + items.iter().map(Encode::encoded_len).sum::<usize>()
}

/// Decodes a compact-size-prefixed sequence of at most `limit` elements, each
/// at least `min_item_len` bytes long.
pub fn read_seq<T: Decode>(
    buf: &mut &[u8],
    limit: usize,
    min_item_len: usize,
) -> Result<Vec<T>, DecodeError> {
    let count = read_count(buf, T::NAME, limit, min_item_len)?;
    let mut items = Vec::with_capacity(count);
    for _ in 0..count {
        items.push(T::decode_from(buf)?);
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn compact_size_boundaries() {
        for (n, len) in [
            (0u64, 1),
            (0xfc, 1),
            (0xfd, 3),
            (0xffff, 3),
            (0x1_0000, 5),
            (0xffff_ffff, 5),
            (0x1_0000_0000, 9),
            (u64::MAX, 9),
        ] {
            let mut out = Vec::new();
            write_compact_size(&mut out, n);
            assert_eq!(out.len(), len, "length for {n}");
            assert_eq!(compact_size_len(n), len);
            let mut cursor = out.as_slice();
            assert_eq!(read_compact_size(&mut cursor, "n").unwrap(), n);
            assert!(cursor.is_empty());
        }
    }

    #[test]
    fn non_minimal_compact_size_is_rejected() {
        for bytes in [
            &[0xfd, 0x10, 0x00][..],
            &[0xfe, 0xff, 0xff, 0x00, 0x00][..],
            &[0xff, 1, 0, 0, 0, 0, 0, 0, 0][..],
        ] {
            let mut cursor = bytes;
            assert!(matches!(
                read_compact_size(&mut cursor, "n"),
                Err(DecodeError::NonCanonicalCompactSize { .. })
            ));
        }
    }

    #[test]
    fn count_larger_than_input_is_rejected_before_allocation() {
        let mut bytes = Vec::new();
        write_compact_size(&mut bytes, 1_000_000);
        let mut cursor = bytes.as_slice();
        let err = read_count(&mut cursor, "items", usize::MAX, 36).unwrap_err();
        assert!(matches!(err, DecodeError::UnexpectedEnd { .. }), "{err}");
    }

    #[test]
    fn count_over_limit_is_rejected() {
        let mut bytes = Vec::new();
        write_compact_size(&mut bytes, 11);
        bytes.extend_from_slice(&[0u8; 11]);
        let mut cursor = bytes.as_slice();
        assert_eq!(
            read_count(&mut cursor, "items", 10, 1),
            Err(DecodeError::TooMany {
                what: "items",
                count: 11,
                limit: 10
            })
        );
    }

    proptest! {
        #[test]
        fn compact_size_round_trips(n in any::<u64>()) {
            let mut out = Vec::new();
            write_compact_size(&mut out, n);
            let mut cursor = out.as_slice();
            prop_assert_eq!(read_compact_size(&mut cursor, "n").unwrap(), n);
        }

        #[test]
        fn compact_size_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..12)) {
            let mut cursor = bytes.as_slice();
            if let Ok(n) = read_compact_size(&mut cursor, "n") {
                let consumed = bytes.len() - cursor.len();
                let mut out = Vec::new();
                write_compact_size(&mut out, n);
                prop_assert_eq!(&out[..], &bytes[..consumed]);
            }
        }
    }
}
