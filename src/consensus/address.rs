//! Pay-to-public-key-hash addresses: Base58Check(version byte || HASH160(pubkey)).

use std::fmt;

use bytes::BufMut;

use super::hash::hash160;
use super::params::Network;
use crate::encoding::{read_array, Decode, DecodeError, Encode};

/// HASH160 of a compressed public key: the owner of an output.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct PubKeyHash(pub [u8; 20]);

impl PubKeyHash {
    pub fn of_pubkey(compressed_pubkey: &[u8; 33]) -> PubKeyHash {
        PubKeyHash(hash160(compressed_pubkey))
    }
}

impl fmt::Debug for PubKeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PubKeyHash({})", hex::encode(self.0))
    }
}

impl Encode for PubKeyHash {
    fn encode_to<B: BufMut>(&self, buf: &mut B) {
        buf.put_slice(&self.0);
    }

    fn encoded_len(&self) -> usize {
        20
    }
}

impl Decode for PubKeyHash {
    const NAME: &'static str = "pubkey hash";

    fn decode_from(buf: &mut &[u8]) -> Result<Self, DecodeError> {
        Ok(PubKeyHash(read_array(buf, Self::NAME)?))
    }
}

/// An owner hash together with the network whose version byte it carries.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Address {
    pub network: Network,
    pub hash: PubKeyHash,
}

/// The longest Base58Check spelling of a 21-byte payload and its 4-byte
/// checksum: 25 bytes need at most 35 Base58 digits (25 x 8 / log2 58 =
/// 34.1, rounded up), and leading zero bytes take one '1' each, never more.
pub const MAX_ADDRESS_CHARS: usize = 35;

/// Why an address string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("address {input:?} is not valid Base58")]
    NotBase58 { input: String },
    #[error("address {input:?} has a bad checksum")]
    BadChecksum { input: String },
    #[error("address {input:?} has {len} payload bytes, expected 21")]
    BadLength { input: String, len: usize },
    #[error("address {input:?}... is {len} bytes long, at most {MAX_ADDRESS_CHARS}")]
    TooLong { input: String, len: usize },
    #[error("address {input:?} has unknown version byte {version:#04x}")]
    UnknownVersion { input: String, version: u8 },
    #[error("address {input:?} belongs to network {found}, not {expected}")]
    WrongNetwork {
        input: String,
        expected: Network,
        found: Network,
    },
}

impl Address {
    pub fn new(network: Network, hash: PubKeyHash) -> Address {
        Address { network, hash }
    }

    /// Parses an address of any known network.
    pub fn parse_any(s: &str) -> Result<Address, AddressError> {
        let input = || s.chars().take(100).collect::<String>();
        // Base58 decoding costs the square of the length: 65 000 characters
        // (a URL hyper accepts) took 2.1 s of a REST worker here. Nothing
        // longer than an address's longest spelling is decoded.
        if s.len() > MAX_ADDRESS_CHARS {
            return Err(AddressError::TooLong {
                input: s.chars().take(40).collect(),
                len: s.len(),
            });
        }
        let payload = bs58::decode(s)
            .with_check(None)
            .into_vec()
            .map_err(|e| match e {
                bs58::decode::Error::InvalidChecksum { .. } => {
                    AddressError::BadChecksum { input: input() }
                }
                _ => AddressError::NotBase58 { input: input() },
            })?;
        if payload.len() != 21 {
            return Err(AddressError::BadLength {
                input: input(),
                len: payload.len(),
            });
        }
        let network = Network::ALL
            .into_iter()
            .find(|n| n.params().address_version == payload[0])
            .ok_or(AddressError::UnknownVersion {
                input: input(),
                version: payload[0],
            })?;
        let mut hash = [0u8; 20];
        hash.copy_from_slice(&payload[1..]);
        Ok(Address {
            network,
            hash: PubKeyHash(hash),
        })
    }

    /// Parses an address that must belong to `network`.
    pub fn parse(s: &str, network: Network) -> Result<Address, AddressError> {
        let address = Address::parse_any(s)?;
        if address.network != network {
            return Err(AddressError::WrongNetwork {
                input: s.chars().take(100).collect(),
                expected: network,
                found: address.network,
            });
        }
        Ok(address)
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut payload = [0u8; 21];
        payload[0] = self.network.params().address_version;
        payload[1..].copy_from_slice(&self.hash.0);
        f.write_str(&bs58::encode(payload).with_check().into_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn main_addresses_match_bitcoin_p2pkh() {
        // HASH160 of the compressed pubkey of private key 1; Bitcoin's address
        // for it is 1BgGZ9tcN4rm9KBzDn7KprQz87SZ26SAMH, and main shares 0x00.
        let mut hash = [0u8; 20];
        hex::decode_to_slice("751e76e8199196d454941c45d1b3a323f1433bd6", &mut hash).unwrap();
        let address = Address::new(Network::Main, PubKeyHash(hash));
        assert_eq!(address.to_string(), "1BgGZ9tcN4rm9KBzDn7KprQz87SZ26SAMH");
        assert_eq!(
            Address::parse("1BgGZ9tcN4rm9KBzDn7KprQz87SZ26SAMH", Network::Main).unwrap(),
            address
        );
    }

    #[test]
    fn every_network_round_trips_and_rejects_the_others() {
        let hash = PubKeyHash([7u8; 20]);
        for network in Network::ALL {
            let text = Address::new(network, hash).to_string();
            assert_eq!(Address::parse(&text, network).unwrap().hash, hash);
            for other in Network::ALL.into_iter().filter(|o| *o != network) {
                assert!(matches!(
                    Address::parse(&text, other),
                    Err(AddressError::WrongNetwork { .. })
                ));
            }
        }
    }

    #[test]
    fn corrupted_addresses_are_rejected() {
        let text = Address::new(Network::Main, PubKeyHash([9u8; 20])).to_string();
        let mut chars: Vec<char> = text.chars().collect();
        let last = chars.len() - 1;
        chars[last] = if chars[last] == 'a' { 'b' } else { 'a' };
        let corrupted: String = chars.into_iter().collect();
        assert!(matches!(
            Address::parse_any(&corrupted),
            Err(AddressError::BadChecksum { .. })
        ));
        assert!(matches!(
            Address::parse_any("0OIl"),
            Err(AddressError::NotBase58 { .. })
        ));
        let short = bs58::encode([0u8; 10]).with_check().into_string();
        assert!(matches!(
            Address::parse_any(&short),
            Err(AddressError::BadLength { .. })
        ));
    }

    /// REST echoes the address it was asked about instead of encoding it
    /// again: that holds only if every string that parses is the one its
    /// payload encodes to. A number has one spelling in base 58 but for
    /// leading zero digits ('1'), which Base58Check reads as leading zero
    /// bytes: a '1' more or fewer is another payload, refused. Leading zero
    /// bytes (main's version byte, hashes that start with zeros) are where
    /// that could go wrong.
    #[test]
    fn a_parsed_address_is_spelled_as_it_encodes() {
        for network in Network::ALL {
            for zeros in 0..=20 {
                let mut hash = [0xA5u8; 20];
                hash[..zeros].fill(0);
                let text = Address::new(network, PubKeyHash(hash)).to_string();
                let parsed = Address::parse(&text, network).unwrap();
                assert_eq!(parsed.to_string(), text);
                // One '1' more or fewer is another payload, never the same.
                let longer = format!("1{text}");
                assert!(Address::parse_any(&longer).is_err(), "{longer}");
                if let Some(shorter) = text.strip_prefix('1') {
                    assert!(Address::parse_any(shorter).is_err(), "{shorter}");
                }
            }
        }
    }

    /// The longest address there is fits the bound, and a longer string is
    /// refused before its Base58 is decoded (quadratic in the length).
    #[test]
    fn addresses_longer_than_any_spelling_are_refused_before_decoding() {
        let longest = Network::ALL
            .into_iter()
            .map(|n| Address::new(n, PubKeyHash([0xFF; 20])).to_string().len())
            .max()
            .unwrap();
        assert!(longest <= MAX_ADDRESS_CHARS, "{longest}");
        let all_zero = Address::new(Network::Main, PubKeyHash([0; 20])).to_string();
        assert!(all_zero.len() <= MAX_ADDRESS_CHARS, "{all_zero}");
        let huge = "z".repeat(65_000);
        assert!(matches!(
            Address::parse_any(&huge),
            Err(AddressError::TooLong { len: 65_000, .. })
        ));
        let one_over = "2".repeat(MAX_ADDRESS_CHARS + 1);
        assert!(matches!(
            Address::parse_any(&one_over),
            Err(AddressError::TooLong { .. })
        ));
    }
}
