//! 32-byte hashes (txids, block hashes, merkle nodes) and the hash functions
//! consensus uses.
//!
//! Byte order: a `Hash256` holds the raw digest bytes exactly as SHA-256
//! produced them, and that is what is encoded on the wire and on disk. When a
//! hash is read as a 256-bit number (proof of work), the bytes are
//! little-endian. Hex display shows that number big-endian, i.e. the raw bytes
//! reversed, as Bitcoin does, so block hashes display with leading zeros.

use std::fmt;
use std::str::FromStr;

use bytes::BufMut;
use ripemd::Ripemd160;
use sha2::{Digest, Sha256};

use crate::encoding::{read_array, Decode, DecodeError, Encode};

/// A 32-byte hash in raw digest byte order.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Hash256(pub [u8; 32]);

/// Transaction id: double SHA-256 of the transaction's canonical encoding.
pub type Txid = Hash256;
/// Block hash: double SHA-256 of the 80-byte header.
pub type BlockHash = Hash256;

impl Hash256 {
    pub const ZERO: Hash256 = Hash256([0u8; 32]);

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn is_zero(&self) -> bool {
        self.0 == [0u8; 32]
    }

    /// Hex in display order (reversed bytes).
    pub fn to_hex(&self) -> String {
        let mut reversed = self.0;
        reversed.reverse();
        hex::encode(reversed)
    }
}

/// SHA-256 applied twice.
pub fn sha256d(data: &[u8]) -> Hash256 {
    let first = Sha256::digest(data);
    Hash256(Sha256::digest(first).into())
}

/// RIPEMD-160 of SHA-256: the owner hash of a public key.
pub fn hash160(data: &[u8]) -> [u8; 20] {
    Ripemd160::digest(Sha256::digest(data)).into()
}

impl fmt::Display for Hash256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Hash256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash256({})", self.to_hex())
    }
}

/// A hash string that is not 64 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid hash {input:?}: expected 64 hex digits")]
pub struct ParseHashError {
    pub input: String,
}

impl FromStr for Hash256 {
    type Err = ParseHashError;

    /// Parses display-order hex (the reverse of the raw bytes).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(s, &mut bytes).map_err(|_| ParseHashError {
            input: s.chars().take(80).collect(),
        })?;
        bytes.reverse();
        Ok(Hash256(bytes))
    }
}

impl Encode for Hash256 {
    fn encode_to<B: BufMut>(&self, buf: &mut B) {
        buf.put_slice(&self.0);
    }

    fn encoded_len(&self) -> usize {
        32
    }
}

impl Decode for Hash256 {
    const NAME: &'static str = "hash";

    fn decode_from(buf: &mut &[u8]) -> Result<Self, DecodeError> {
        Ok(Hash256(read_array(buf, Self::NAME)?))
    }
}

impl serde::Serialize for Hash256 {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> serde::Deserialize<'de> for Hash256 {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256d_of_empty_input() {
        // Well-known: SHA256(SHA256("")) = 5df6e0e2...
        let raw = sha256d(b"");
        assert_eq!(
            hex::encode(raw.0),
            "5df6e0e2761359d30a8275058e299fcc0381534545f55cf43e41983f5d4c9456"
        );
    }

    #[test]
    fn hash160_of_known_pubkey() {
        // Public key of private key 1 (compressed), a standard Bitcoin vector.
        let pubkey =
            hex::decode("0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798")
                .unwrap();
        assert_eq!(
            hex::encode(hash160(&pubkey)),
            "751e76e8199196d454941c45d1b3a323f1433bd6"
        );
    }

    #[test]
    fn display_is_reversed_and_parses_back() {
        let mut raw = [0u8; 32];
        raw[0] = 0xab;
        raw[31] = 0x01;
        let hash = Hash256(raw);
        let text = hash.to_string();
        assert!(text.starts_with("01"));
        assert!(text.ends_with("ab"));
        assert_eq!(text.parse::<Hash256>().unwrap(), hash);
        assert!("zz".parse::<Hash256>().is_err());
    }
}
