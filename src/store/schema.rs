//! The on-disk layout: column families, keys and values.
//!
//! Keys put integers big-endian so that RocksDB's byte order is numeric
//! order. Every value starts with a format version byte (`VALUE_VERSION`).
//! One-to-many maps (address -> UTXOs, address -> history) are key-only rows
//! whose value carries just enough to answer without a second lookup.
//!
//! | column family   | key                                     | value |
//! |-----------------|-----------------------------------------|-------|
//! | `block_index`   | block hash (32)                         | `BlockIndexEntry` |
//! | `active_chain`  | height (u32 BE)                         | block hash (32) |
//! | `block_data`    | block hash (32)                         | block (consensus encoding) |
//! | `undo`          | block hash (32)                         | spent outputs of the block |
//! | `utxo`          | txid (32) + vout (u32 BE)               | `Utxo` |
//! | `address_utxo`  | owner (20) + txid (32) + vout (u32 BE)  | amount u64, height u32 |
//! | `address_history` | owner (20) + height (u32 BE) + position (u32 BE) | txid (32) |
//! | `address_stats` | owner (20)                              | `AddressStats` |
//! | `tx_index`      | txid (32)                               | block hash, height, position |
//! | `spent_by`      | txid (32) + vout (u32 BE)               | spending txid (32), input index |
//! | `script_hash`   | SHA-256 of the owner's script (32)      | owner (20) |
//! | `meta`          | ASCII name                              | see `meta` keys |

use bytes::BufMut;
use primitive_types::U256;

use crate::consensus::address::PubKeyHash;
use crate::consensus::amount::Amount;
use crate::consensus::block::BlockHeader;
use crate::consensus::hash::{BlockHash, Hash256, Txid};
use crate::consensus::transaction::{OutPoint, TxOut};
use crate::consensus::validation::Utxo;
use crate::encoding::{read_array, read_u32, read_u64, read_u8, Decode, DecodeError, Encode};
use crate::store::digest::{UtxoDigest, STATE_LEN};

/// Version byte at the front of every stored value.
pub const VALUE_VERSION: u8 = 1;
/// Version of the whole layout, kept in `meta`. Older versions are
/// upgraded at open: version 1 had no `spent_by` or `script_hash` rows
/// (`Store::upgrade_indexes`), version 2 kept a curve multiset hash of the
/// UTXO set in the tip record where 3 keeps the lattice hash's state in
/// its own row (`Store::upgrade_digest`). Any other mismatch refuses to
/// open.
pub const FORMAT_VERSION: u32 = 3;

pub const CF_BLOCK_INDEX: &str = "block_index";
pub const CF_ACTIVE_CHAIN: &str = "active_chain";
pub const CF_BLOCK_DATA: &str = "block_data";
pub const CF_UNDO: &str = "undo";
pub const CF_UTXO: &str = "utxo";
pub const CF_ADDRESS_UTXO: &str = "address_utxo";
pub const CF_ADDRESS_HISTORY: &str = "address_history";
pub const CF_ADDRESS_STATS: &str = "address_stats";
pub const CF_TX_INDEX: &str = "tx_index";
/// Which input of which transaction spent an output of the active chain
/// (esplora's outspends).
pub const CF_SPENT_BY: &str = "spent_by";
/// From the SHA-256 of an owner's script form (esplora's `scripthash`) to
/// the owner, for every owner with address stats.
pub const CF_SCRIPT_HASH: &str = "script_hash";
pub const CF_META: &str = "meta";

pub const ALL_CFS: [&str; 12] = [
    CF_BLOCK_INDEX,
    CF_ACTIVE_CHAIN,
    CF_BLOCK_DATA,
    CF_UNDO,
    CF_UTXO,
    CF_ADDRESS_UTXO,
    CF_ADDRESS_HISTORY,
    CF_ADDRESS_STATS,
    CF_TX_INDEX,
    CF_SPENT_BY,
    CF_SCRIPT_HASH,
    CF_META,
];

/// Keys of the `meta` column family.
pub mod meta {
    pub const FORMAT_VERSION: &[u8] = b"format_version";
    pub const NETWORK: &[u8] = b"network";
    /// `ChainTipRecord`: the tip and the UTXO-set summary at it.
    pub const TIP: &[u8] = b"tip";
    /// The UTXO-set digest's state (`digest::UtxoDigest`, 2 048 bytes)
    /// at the tip record's tip, written in the same batch as the record.
    pub const UTXO_DIGEST: &[u8] = b"utxo_digest";
}

/// Checks and strips the version byte of a stored value.
fn versioned<'a>(bytes: &'a [u8], what: &'static str) -> Result<&'a [u8], DecodeError> {
    let mut cursor = bytes;
    let version = read_u8(&mut cursor, what)?;
    if version != VALUE_VERSION {
        return Err(DecodeError::Invalid {
            what,
            reason: "unknown value version",
        });
    }
    Ok(cursor)
}

fn finish<T>(value: T, rest: &[u8], what: &'static str) -> Result<T, DecodeError> {
    if rest.is_empty() {
        Ok(value)
    } else {
        Err(DecodeError::TrailingBytes {
            what,
            trailing: rest.len(),
        })
    }
}

pub fn height_key(height: u32) -> [u8; 4] {
    height.to_be_bytes()
}

pub fn outpoint_key(outpoint: &OutPoint) -> [u8; 36] {
    let mut key = [0u8; 36];
    key[..32].copy_from_slice(&outpoint.txid.0);
    key[32..].copy_from_slice(&outpoint.vout.to_be_bytes());
    key
}

pub fn outpoint_from_key(key: &[u8]) -> Result<OutPoint, DecodeError> {
    if key.len() != 36 {
        return Err(DecodeError::Invalid {
            what: "utxo key",
            reason: "not 36 bytes",
        });
    }
    let mut txid = [0u8; 32];
    txid.copy_from_slice(&key[..32]);
    Ok(OutPoint::new(
        Hash256(txid),
        u32::from_be_bytes(key[32..].try_into().expect("4 bytes")),
    ))
}

pub fn address_utxo_key(owner: &PubKeyHash, outpoint: &OutPoint) -> [u8; 56] {
    let mut key = [0u8; 56];
    key[..20].copy_from_slice(&owner.0);
    key[20..].copy_from_slice(&outpoint_key(outpoint));
    key
}

/// Splits an `address_utxo` key into owner and outpoint.
pub fn parse_address_utxo_key(key: &[u8]) -> Result<(PubKeyHash, OutPoint), DecodeError> {
    if key.len() != 56 {
        return Err(DecodeError::Invalid {
            what: "address utxo key",
            reason: "not 56 bytes",
        });
    }
    let owner = PubKeyHash(key[..20].try_into().expect("20 bytes"));
    Ok((owner, outpoint_from_key(&key[20..])?))
}

pub fn address_history_key(owner: &PubKeyHash, height: u32, position: u32) -> [u8; 28] {
    let mut key = [0u8; 28];
    key[..20].copy_from_slice(&owner.0);
    key[20..24].copy_from_slice(&height.to_be_bytes());
    key[24..].copy_from_slice(&position.to_be_bytes());
    key
}

/// Splits an `address_history` key into owner, height and position.
pub fn parse_address_history_key(key: &[u8]) -> Result<(PubKeyHash, u32, u32), DecodeError> {
    if key.len() != 28 {
        return Err(DecodeError::Invalid {
            what: "address history key",
            reason: "not 28 bytes",
        });
    }
    Ok((
        PubKeyHash(key[..20].try_into().expect("20 bytes")),
        u32::from_be_bytes(key[20..24].try_into().expect("4 bytes")),
        u32::from_be_bytes(key[24..].try_into().expect("4 bytes")),
    ))
}

/// Validation state of a block, as bit flags.
pub mod status {
    /// The header passed context-free and contextual header checks.
    pub const HEADER_VALID: u8 = 1;
    /// The block body is stored in `block_data`.
    pub const HAVE_DATA: u8 = 2;
    /// The block passed full validation (it was connected at least once).
    pub const VALID: u8 = 4;
    /// The block broke a rule.
    pub const FAILED: u8 = 8;
    /// An ancestor broke a rule.
    pub const FAILED_PARENT: u8 = 16;
}

/// What the block index knows about a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockIndexEntry {
    pub header: BlockHeader,
    pub height: u32,
    /// Total work of the chain ending at this block.
    pub chain_work: U256,
    /// `status` flags.
    pub status: u8,
    pub tx_count: u32,
    /// Encoded size of the block in bytes (0 until the body is known).
    pub size: u32,
}

impl BlockIndexEntry {
    pub fn has(&self, flag: u8) -> bool {
        self.status & flag != 0
    }

    pub fn is_failed(&self) -> bool {
        self.has(status::FAILED | status::FAILED_PARENT)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + 80 + 4 + 32 + 1 + 8);
        out.put_u8(VALUE_VERSION);
        self.header.encode_to(&mut out);
        out.put_u32_le(self.height);
        out.put_slice(&self.chain_work.to_big_endian());
        out.put_u8(self.status);
        out.put_u32_le(self.tx_count);
        out.put_u32_le(self.size);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        const WHAT: &str = "block index entry";
        let mut cursor = versioned(bytes, WHAT)?;
        let entry = BlockIndexEntry {
            header: BlockHeader::decode_from(&mut cursor)?,
            height: read_u32(&mut cursor, WHAT)?,
            chain_work: U256::from_big_endian(&read_array::<32>(&mut cursor, WHAT)?),
            status: read_u8(&mut cursor, WHAT)?,
            tx_count: read_u32(&mut cursor, WHAT)?,
            size: read_u32(&mut cursor, WHAT)?,
        };
        finish(entry, cursor, WHAT)
    }
}

pub fn encode_utxo(utxo: &Utxo) -> [u8; 34] {
    let mut out = [0u8; 34];
    let mut buf = &mut out[..];
    buf.put_u8(VALUE_VERSION);
    utxo.output.encode_to(&mut buf);
    buf.put_u32_le(utxo.height);
    buf.put_u8(u8::from(utxo.is_coinbase));
    out
}

pub fn decode_utxo(bytes: &[u8]) -> Result<Utxo, DecodeError> {
    const WHAT: &str = "utxo";
    let mut cursor = versioned(bytes, WHAT)?;
    let output = TxOut::decode_from(&mut cursor)?;
    let height = read_u32(&mut cursor, WHAT)?;
    let is_coinbase = match read_u8(&mut cursor, WHAT)? {
        0 => false,
        1 => true,
        _ => {
            return Err(DecodeError::Invalid {
                what: WHAT,
                reason: "coinbase flag is not 0 or 1",
            })
        }
    };
    finish(
        Utxo {
            output,
            height,
            is_coinbase,
        },
        cursor,
        WHAT,
    )
}

/// Value of an `address_utxo` row: what a wallet needs to list its coins.
pub fn encode_address_utxo(amount: Amount, height: u32) -> [u8; 13] {
    let mut out = [0u8; 13];
    let mut buf = &mut out[..];
    buf.put_u8(VALUE_VERSION);
    buf.put_u64_le(amount.units());
    buf.put_u32_le(height);
    out
}

pub fn decode_address_utxo(bytes: &[u8]) -> Result<(Amount, u32), DecodeError> {
    const WHAT: &str = "address utxo";
    let mut cursor = versioned(bytes, WHAT)?;
    let amount = Amount::from_units(read_u64(&mut cursor, WHAT)?);
    let height = read_u32(&mut cursor, WHAT)?;
    finish((amount, height), cursor, WHAT)
}

pub fn encode_txid_value(txid: &Txid) -> [u8; 33] {
    let mut out = [0u8; 33];
    out[0] = VALUE_VERSION;
    out[1..].copy_from_slice(&txid.0);
    out
}

pub fn decode_txid_value(bytes: &[u8]) -> Result<Txid, DecodeError> {
    const WHAT: &str = "txid value";
    let mut cursor = versioned(bytes, WHAT)?;
    let txid = Hash256::decode_from(&mut cursor)?;
    finish(txid, cursor, WHAT)
}

/// Per-address totals over the confirmed chain, in esplora's terms.
///
/// The sums are u128: coins can be paid to one address again and again (even
/// within one block), so what an address ever received is not bounded by
/// the money supply, and an index must never stop a valid block from
/// connecting. 2^128 units cannot be reached: a block moves at most
/// `MAX_MONEY` per transaction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct AddressStats {
    pub funded_txo_count: u64,
    pub funded_txo_sum: u128,
    pub spent_txo_count: u64,
    pub spent_txo_sum: u128,
    /// Transactions that pay to or spend from the address.
    pub tx_count: u64,
}

/// Stored size of `AddressStats`: version, three u64 counts, two u128 sums.
const ADDRESS_STATS_LEN: usize = 1 + 3 * 8 + 2 * 16;

/// Value version of `AddressStats` with u128 sums (version 1 had u64 sums
/// and is still read).
const ADDRESS_STATS_VERSION: u8 = 2;

impl AddressStats {
    /// Confirmed balance: everything received minus everything spent. A
    /// balance is what the address holds now, so it never exceeds the
    /// money supply.
    pub fn balance(&self) -> u64 {
        u64::try_from(self.funded_txo_sum - self.spent_txo_sum)
            .expect("a balance is part of the UTXO set, below MAX_MONEY")
    }

    pub fn utxo_count(&self) -> u64 {
        self.funded_txo_count - self.spent_txo_count
    }

    pub fn is_empty(&self) -> bool {
        *self == AddressStats::default()
    }

    pub fn encode(&self) -> [u8; ADDRESS_STATS_LEN] {
        let mut out = [0u8; ADDRESS_STATS_LEN];
        let mut buf = &mut out[..];
        buf.put_u8(ADDRESS_STATS_VERSION);
        buf.put_u64_le(self.funded_txo_count);
        buf.put_u128_le(self.funded_txo_sum);
        buf.put_u64_le(self.spent_txo_count);
        buf.put_u128_le(self.spent_txo_sum);
        buf.put_u64_le(self.tx_count);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        const WHAT: &str = "address stats";
        let mut cursor = bytes;
        let stats = match read_u8(&mut cursor, WHAT)? {
            VALUE_VERSION => AddressStats {
                funded_txo_count: read_u64(&mut cursor, WHAT)?,
                funded_txo_sum: u128::from(read_u64(&mut cursor, WHAT)?),
                spent_txo_count: read_u64(&mut cursor, WHAT)?,
                spent_txo_sum: u128::from(read_u64(&mut cursor, WHAT)?),
                tx_count: read_u64(&mut cursor, WHAT)?,
            },
            ADDRESS_STATS_VERSION => AddressStats {
                funded_txo_count: read_u64(&mut cursor, WHAT)?,
                funded_txo_sum: read_u128(&mut cursor, WHAT)?,
                spent_txo_count: read_u64(&mut cursor, WHAT)?,
                spent_txo_sum: read_u128(&mut cursor, WHAT)?,
                tx_count: read_u64(&mut cursor, WHAT)?,
            },
            _ => {
                return Err(DecodeError::Invalid {
                    what: WHAT,
                    reason: "unknown value version",
                })
            }
        };
        if stats.spent_txo_sum > stats.funded_txo_sum
            || stats.spent_txo_count > stats.funded_txo_count
            || stats.funded_txo_sum - stats.spent_txo_sum > u128::from(u64::MAX)
        {
            return Err(DecodeError::Invalid {
                what: WHAT,
                reason: "more spent than funded, or a balance beyond u64",
            });
        }
        finish(stats, cursor, WHAT)
    }
}

fn read_u128(cursor: &mut &[u8], what: &'static str) -> Result<u128, DecodeError> {
    let bytes: [u8; 16] = read_array(cursor, what)?;
    Ok(u128::from_le_bytes(bytes))
}

/// Where a confirmed transaction is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxLocation {
    pub block: BlockHash,
    pub height: u32,
    pub position: u32,
}

impl TxLocation {
    pub fn encode(&self) -> [u8; 41] {
        let mut out = [0u8; 41];
        let mut buf = &mut out[..];
        buf.put_u8(VALUE_VERSION);
        buf.put_slice(&self.block.0);
        buf.put_u32_le(self.height);
        buf.put_u32_le(self.position);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        const WHAT: &str = "tx location";
        let mut cursor = versioned(bytes, WHAT)?;
        let location = TxLocation {
            block: Hash256::decode_from(&mut cursor)?,
            height: read_u32(&mut cursor, WHAT)?,
            position: read_u32(&mut cursor, WHAT)?,
        };
        finish(location, cursor, WHAT)
    }
}

/// Who spent an output: the input `vin` of transaction `txid`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spender {
    pub txid: Txid,
    pub vin: u32,
}

impl Spender {
    pub fn encode(&self) -> [u8; 37] {
        let mut out = [0u8; 37];
        let mut buf = &mut out[..];
        buf.put_u8(VALUE_VERSION);
        buf.put_slice(&self.txid.0);
        buf.put_u32_le(self.vin);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        const WHAT: &str = "spender";
        let mut cursor = versioned(bytes, WHAT)?;
        let spender = Spender {
            txid: Hash256::decode_from(&mut cursor)?,
            vin: read_u32(&mut cursor, WHAT)?,
        };
        finish(spender, cursor, WHAT)
    }
}

/// An owner's script in Bitcoin's pay-to-public-key-hash form,
/// `OP_DUP OP_HASH160 <20 bytes> OP_EQUALVERIFY OP_CHECKSIG`: what esplora
/// calls an output's `scriptpubkey`. ChainCore's outputs name their owner's
/// hash and nothing else, so this form is exact.
pub fn p2pkh_script(owner: &PubKeyHash) -> [u8; 25] {
    let mut script = [0u8; 25];
    script[..3].copy_from_slice(&[0x76, 0xa9, 0x14]);
    script[3..23].copy_from_slice(&owner.0);
    script[23..].copy_from_slice(&[0x88, 0xac]);
    script
}

/// esplora's `scripthash` of an owner: the SHA-256 of its script form.
pub fn script_hash(owner: &PubKeyHash) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(p2pkh_script(owner)).into()
}

pub fn encode_owner_value(owner: &PubKeyHash) -> [u8; 21] {
    let mut out = [0u8; 21];
    out[0] = VALUE_VERSION;
    out[1..].copy_from_slice(&owner.0);
    out
}

pub fn decode_owner_value(bytes: &[u8]) -> Result<PubKeyHash, DecodeError> {
    const WHAT: &str = "script hash owner";
    let mut cursor = versioned(bytes, WHAT)?;
    let owner = PubKeyHash::decode_from(&mut cursor)?;
    finish(owner, cursor, WHAT)
}

/// The `meta` tip record: the active tip and the UTXO-set summary at it,
/// written in the same batch as the block that made it the tip.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainTipRecord {
    pub hash: BlockHash,
    pub height: u32,
    pub utxo_count: u64,
    /// Sum of all UTXO amounts, in base units.
    pub utxo_total: u64,
    /// The UTXO-set digest's fingerprint (`UtxoDigest::fingerprint`); its
    /// state is the `meta::UTXO_DIGEST` row.
    pub digest: Hash256,
}

impl ChainTipRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + 32 + 4 + 8 + 8 + 32);
        out.put_u8(VALUE_VERSION);
        out.put_slice(&self.hash.0);
        out.put_u32_le(self.height);
        out.put_u64_le(self.utxo_count);
        out.put_u64_le(self.utxo_total);
        out.put_slice(&self.digest.0);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        Self::decode_with(bytes, "chain tip record", |cursor| {
            Hash256::decode_from(cursor)
        })
    }

    /// Reads a format-2 tip record (its last 33 bytes were a curve point),
    /// keeping everything but the old digest, which the upgrade recomputes.
    pub fn decode_format2(bytes: &[u8]) -> Result<Self, DecodeError> {
        const WHAT: &str = "format-2 chain tip record";
        Self::decode_with(bytes, WHAT, |cursor| {
            let _old_digest: [u8; 33] = read_array(cursor, WHAT)?;
            Ok(Hash256::default())
        })
    }

    /// The fields every layout shares, then the digest as `read_digest`
    /// reads it.
    fn decode_with(
        bytes: &[u8],
        what: &'static str,
        read_digest: impl FnOnce(&mut &[u8]) -> Result<Hash256, DecodeError>,
    ) -> Result<Self, DecodeError> {
        let mut cursor = versioned(bytes, what)?;
        let record = ChainTipRecord {
            hash: Hash256::decode_from(&mut cursor)?,
            height: read_u32(&mut cursor, what)?,
            utxo_count: read_u64(&mut cursor, what)?,
            utxo_total: read_u64(&mut cursor, what)?,
            digest: read_digest(&mut cursor)?,
        };
        finish(record, cursor, what)
    }
}

/// The `meta::UTXO_DIGEST` row: the digest's state.
pub fn encode_digest_state(digest: &UtxoDigest) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + STATE_LEN);
    out.put_u8(VALUE_VERSION);
    out.put_slice(&digest.to_bytes());
    out
}

pub fn decode_digest_state(bytes: &[u8]) -> Result<UtxoDigest, DecodeError> {
    const WHAT: &str = "UTXO digest state";
    let mut cursor = versioned(bytes, WHAT)?;
    let state: [u8; STATE_LEN] = read_array(&mut cursor, WHAT)?;
    finish(UtxoDigest::from_bytes(&state), cursor, WHAT)
}

/// Encoded size of one undo entry: outpoint (36), output (28), height (4),
/// coinbase flag (1).
const UNDO_ENTRY_LEN: usize = 36 + 28 + 4 + 1;

/// Undo data of a block: every output it spent, in block order.
pub fn encode_undo(spent: &[(OutPoint, Utxo)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + 9 + spent.len() * UNDO_ENTRY_LEN);
    out.put_u8(VALUE_VERSION);
    crate::encoding::write_compact_size(&mut out, spent.len() as u64);
    for (outpoint, utxo) in spent {
        outpoint.encode_to(&mut out);
        utxo.output.encode_to(&mut out);
        out.put_u32_le(utxo.height);
        out.put_u8(u8::from(utxo.is_coinbase));
    }
    out
}

pub fn decode_undo(bytes: &[u8]) -> Result<Vec<(OutPoint, Utxo)>, DecodeError> {
    let (count, mut cursor) = undo_rows(bytes)?;
    let mut spent = Vec::with_capacity(count);
    for _ in 0..count {
        spent.push(decode_undo_row(&mut cursor)?);
    }
    finish(spent, cursor, UNDO_WHAT)
}

/// Rows `start..start + len` of encoded undo data, decoded alone: rows
/// have one length, so the others are neither read nor built. Fails if
/// the data does not hold that many rows, or its length does not match
/// its count.
pub fn decode_undo_range(
    bytes: &[u8],
    start: usize,
    len: usize,
) -> Result<Vec<(OutPoint, Utxo)>, DecodeError> {
    let (count, rows) = undo_rows(bytes)?;
    if rows.len() != count * UNDO_ENTRY_LEN {
        return Err(DecodeError::Invalid {
            what: UNDO_WHAT,
            reason: "length does not match the row count",
        });
    }
    if start.checked_add(len).is_none_or(|end| end > count) {
        return Err(DecodeError::Invalid {
            what: UNDO_WHAT,
            reason: "fewer rows than the block's inputs",
        });
    }
    let mut cursor = &rows[start * UNDO_ENTRY_LEN..(start + len) * UNDO_ENTRY_LEN];
    (0..len).map(|_| decode_undo_row(&mut cursor)).collect()
}

const UNDO_WHAT: &str = "undo data";

/// The row count of encoded undo data and the bytes of its rows.
fn undo_rows(bytes: &[u8]) -> Result<(usize, &[u8]), DecodeError> {
    let mut cursor = versioned(bytes, UNDO_WHAT)?;
    let count = crate::encoding::read_count(&mut cursor, UNDO_WHAT, usize::MAX, UNDO_ENTRY_LEN)?;
    Ok((count, cursor))
}

fn decode_undo_row(cursor: &mut &[u8]) -> Result<(OutPoint, Utxo), DecodeError> {
    let outpoint = OutPoint::decode_from(cursor)?;
    let output = TxOut::decode_from(cursor)?;
    let height = read_u32(cursor, UNDO_WHAT)?;
    let is_coinbase = match read_u8(cursor, UNDO_WHAT)? {
        0 => false,
        1 => true,
        _ => {
            return Err(DecodeError::Invalid {
                what: UNDO_WHAT,
                reason: "coinbase flag is not 0 or 1",
            })
        }
    };
    Ok((
        outpoint,
        Utxo {
            output,
            height,
            is_coinbase,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::block::tests::arb_header;
    use proptest::prelude::*;

    fn arb_utxo() -> impl Strategy<Value = Utxo> {
        (any::<u64>(), any::<[u8; 20]>(), any::<u32>(), any::<bool>()).prop_map(
            |(amount, owner, height, is_coinbase)| Utxo {
                output: TxOut {
                    amount: Amount::from_units(amount),
                    owner: PubKeyHash(owner),
                },
                height,
                is_coinbase,
            },
        )
    }

    fn arb_outpoint() -> impl Strategy<Value = OutPoint> {
        (any::<[u8; 32]>(), any::<u32>()).prop_map(|(t, v)| OutPoint::new(Hash256(t), v))
    }

    #[test]
    fn integer_keys_sort_numerically() {
        assert!(height_key(255) < height_key(256));
        let owner = PubKeyHash([1; 20]);
        assert!(address_history_key(&owner, 9, 300) < address_history_key(&owner, 10, 0));
        let a = OutPoint::new(Hash256([1; 32]), 255);
        let b = OutPoint::new(Hash256([1; 32]), 256);
        assert!(outpoint_key(&a) < outpoint_key(&b));
    }

    #[test]
    fn unknown_value_version_is_refused() {
        let mut bytes = AddressStats::default().encode();
        bytes[0] = 3;
        assert!(AddressStats::decode(&bytes).is_err());
        assert!(AddressStats::decode(&[]).is_err());
    }

    #[test]
    fn address_stats_hold_sums_past_u64_and_read_version_1() {
        let big = AddressStats {
            funded_txo_count: 3,
            funded_txo_sum: u128::from(u64::MAX) * 5,
            spent_txo_count: 2,
            spent_txo_sum: u128::from(u64::MAX) * 5 - 77,
            tx_count: 4,
        };
        assert_eq!(AddressStats::decode(&big.encode()).unwrap(), big);
        assert_eq!(big.balance(), 77);
        // Version 1 (u64 sums), as written before the widening.
        let mut v1 = vec![VALUE_VERSION];
        for n in [3u64, 100, 2, 60, 4] {
            v1.extend_from_slice(&n.to_le_bytes());
        }
        let old = AddressStats::decode(&v1).unwrap();
        assert_eq!(
            (old.funded_txo_sum, old.spent_txo_sum, old.balance()),
            (100, 60, 40)
        );
    }

    /// The script form and its hash of a known owner, as Bitcoin tools
    /// compute them (HASH160 of the secp256k1 generator's compressed key).
    #[test]
    fn script_form_and_hash_match_bitcoins() {
        let owner = PubKeyHash(
            hex::decode("751e76e8199196d454941c45d1b3a323f1433bd6")
                .unwrap()
                .try_into()
                .unwrap(),
        );
        assert_eq!(
            hex::encode(p2pkh_script(&owner)),
            "76a914751e76e8199196d454941c45d1b3a323f1433bd688ac"
        );
        use sha2::Digest;
        let expected: [u8; 32] = sha2::Sha256::digest(
            hex::decode("76a914751e76e8199196d454941c45d1b3a323f1433bd688ac").unwrap(),
        )
        .into();
        assert_eq!(script_hash(&owner), expected);
    }

    proptest! {
        #[test]
        fn values_round_trip(
            header in arb_header(),
            height in any::<u32>(),
            work in any::<[u64; 4]>(),
            status in any::<u8>(),
            utxo in arb_utxo(),
            outpoint in arb_outpoint(),
            owner in any::<[u8; 20]>(),
        ) {
            let entry = BlockIndexEntry {
                header, height, chain_work: U256(work), status, tx_count: 3, size: 999,
            };
            prop_assert_eq!(BlockIndexEntry::decode(&entry.encode()).unwrap(), entry);
            prop_assert_eq!(decode_utxo(&encode_utxo(&utxo)).unwrap(), utxo);
            prop_assert_eq!(outpoint_from_key(&outpoint_key(&outpoint)).unwrap(), outpoint);
            let owner = PubKeyHash(owner);
            prop_assert_eq!(
                parse_address_utxo_key(&address_utxo_key(&owner, &outpoint)).unwrap(),
                (owner, outpoint)
            );
            prop_assert_eq!(
                parse_address_history_key(&address_history_key(&owner, height, 7)).unwrap(),
                (owner, height, 7)
            );
            let other = (OutPoint::new(outpoint.txid, outpoint.vout ^ 1), Utxo { height: height ^ 1, ..utxo });
            let undo = vec![(outpoint, utxo), other, (outpoint, utxo)];
            let encoded = encode_undo(&undo);
            prop_assert_eq!(decode_undo(&encoded).unwrap(), undo.clone());
            for start in 0..=3 {
                for len in 0..=3 - start {
                    prop_assert_eq!(
                        decode_undo_range(&encoded, start, len).unwrap(),
                        undo[start..start + len].to_vec()
                    );
                }
                prop_assert!(decode_undo_range(&encoded, start, 4 - start).is_err());
            }
            prop_assert!(decode_undo_range(&encoded[..encoded.len() - 1], 0, 1).is_err());
            let record = ChainTipRecord {
                hash: header.hash(), height, utxo_count: 5, utxo_total: 6, digest: Hash256([7; 32]),
            };
            prop_assert_eq!(ChainTipRecord::decode(&record.encode()).unwrap(), record);
            let spender = Spender { txid: outpoint.txid, vin: height };
            prop_assert_eq!(Spender::decode(&spender.encode()).unwrap(), spender);
            prop_assert_eq!(decode_owner_value(&encode_owner_value(&owner)).unwrap(), owner);
        }

        #[test]
        fn garbage_values_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
            let _ = BlockIndexEntry::decode(&bytes);
            let _ = decode_utxo(&bytes);
            let _ = decode_undo(&bytes);
            let _ = decode_undo_range(&bytes, 1, 2);
            let _ = AddressStats::decode(&bytes);
            let _ = TxLocation::decode(&bytes);
            let _ = ChainTipRecord::decode(&bytes);
            let _ = decode_address_utxo(&bytes);
            let _ = decode_txid_value(&bytes);
            let _ = Spender::decode(&bytes);
            let _ = decode_owner_value(&bytes);
        }
    }
}
