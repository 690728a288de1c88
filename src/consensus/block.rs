//! Block headers and blocks.
//!
//! Header layout (80 bytes): `version u32 | prev_hash [32] | merkle_root [32]
//! | time u32 | bits u32 | nonce u32`. Block: header, compact-size transaction
//! count, transactions.

use bytes::BufMut;

use super::hash::{sha256d, BlockHash, Hash256, Txid};
use super::limits::{MAX_BLOCK_TXS, MIN_TX_LEN};
use super::merkle::merkle_root;
use super::transaction::{skip_transaction, Transaction};
use crate::encoding::{
    read_count, read_seq, read_u32, seq_len, write_seq, Decode, DecodeError, Encode,
};

/// Encoded size of a block header.
pub const HEADER_LEN: usize = 80;

/// The block format version this software creates.
pub const BLOCK_VERSION: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BlockHeader {
    pub version: u32,
    pub prev_hash: BlockHash,
    pub merkle_root: Hash256,
    pub time: u32,
    pub bits: u32,
    pub nonce: u32,
}

impl BlockHeader {
    /// Double SHA-256 of the 80-byte header.
    pub fn hash(&self) -> BlockHash {
        sha256d(&self.to_array())
    }

    pub fn to_array(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        self.encode_to(&mut &mut out[..]);
        out
    }
}

impl Encode for BlockHeader {
    fn encode_to<B: BufMut>(&self, buf: &mut B) {
        buf.put_u32_le(self.version);
        self.prev_hash.encode_to(buf);
        self.merkle_root.encode_to(buf);
        buf.put_u32_le(self.time);
        buf.put_u32_le(self.bits);
        buf.put_u32_le(self.nonce);
    }

    fn encoded_len(&self) -> usize {
        HEADER_LEN
    }
}

impl Decode for BlockHeader {
    const NAME: &'static str = "block header";

    fn decode_from(buf: &mut &[u8]) -> Result<Self, DecodeError> {
        Ok(BlockHeader {
            version: read_u32(buf, "header version")?,
            prev_hash: Hash256::decode_from(buf)?,
            merkle_root: Hash256::decode_from(buf)?,
            time: read_u32(buf, "header time")?,
            bits: read_u32(buf, "header bits")?,
            nonce: read_u32(buf, "header nonce")?,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    pub header: BlockHeader,
    pub transactions: Vec<Transaction>,
}

impl Block {
    pub fn hash(&self) -> BlockHash {
        self.header.hash()
    }

    pub fn txids(&self) -> Vec<Txid> {
        self.transactions.iter().map(Transaction::txid).collect()
    }

    /// The merkle root of the block's transactions and whether the tree is
    /// mutated (see `merkle`).
    pub fn compute_merkle_root(&self) -> (Hash256, bool) {
        merkle_root(&self.txids())
    }
}

impl Encode for Block {
    fn encode_to<B: BufMut>(&self, buf: &mut B) {
        self.header.encode_to(buf);
        write_seq(buf, &self.transactions);
    }

    fn encoded_len(&self) -> usize {
        HEADER_LEN + seq_len(&self.transactions)
    }
}

impl Decode for Block {
    const NAME: &'static str = "block";

    fn decode_from(buf: &mut &[u8]) -> Result<Self, DecodeError> {
        Ok(Block {
            header: BlockHeader::decode_from(buf)?,
            transactions: read_seq(buf, MAX_BLOCK_TXS, MIN_TX_LEN)?,
        })
    }
}

/// One transaction of an encoded block, decoded without the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockTransaction {
    pub header: BlockHeader,
    pub tx: Transaction,
    /// Inputs of the non-coinbase transactions before it: where its rows
    /// start in the block's undo data (which lists the outputs every
    /// input but the coinbase's spent, in block order).
    pub spent_before: usize,
}

/// The header and the transaction at `position` of an encoded block
/// (`None` past its last): `decode_block_transactions` for one position.
pub fn decode_block_transaction(
    bytes: &[u8],
    position: usize,
) -> Result<Option<BlockTransaction>, DecodeError> {
    Ok(decode_block_transactions(bytes, &[position])?.and_then(|mut found| found.pop()))
}

/// The transactions at `positions` (ascending, each once) of an encoded
/// block, each with the header, in one walk (`None` if one is past its
/// last). The transactions between them are passed over
/// (`skip_transaction` reads only their counts and outpoints), those after
/// the last are not read: a reader after a few transactions pays for one
/// walk, not for decoding up to `MAX_BLOCK_SIZE` bytes of transactions.
pub fn decode_block_transactions(
    bytes: &[u8],
    positions: &[usize],
) -> Result<Option<Vec<BlockTransaction>>, DecodeError> {
    debug_assert!(positions.windows(2).all(|w| w[0] < w[1]), "ascending");
    let mut cursor = bytes;
    let header = BlockHeader::decode_from(&mut cursor)?;
    let count = read_count(&mut cursor, Transaction::NAME, MAX_BLOCK_TXS, MIN_TX_LEN)?;
    if positions.last().is_some_and(|last| *last >= count) {
        return Ok(None);
    }
    let mut found = Vec::with_capacity(positions.len());
    let (mut at, mut spent_before) = (0usize, 0usize);
    for &position in positions {
        while at < position {
            let skipped = skip_transaction(&mut cursor)?;
            if !skipped.is_coinbase {
                spent_before += skipped.inputs;
            }
            at += 1;
        }
        let tx = Transaction::decode_from(&mut cursor)?;
        at += 1;
        let spends = if tx.is_coinbase() { 0 } else { tx.inputs.len() };
        found.push(BlockTransaction {
            header,
            tx,
            spent_before,
        });
        spent_before += spends;
    }
    Ok(Some(found))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::consensus::transaction::tests::arb_transaction;
    use proptest::prelude::*;

    pub fn arb_header() -> impl Strategy<Value = BlockHeader> {
        (
            any::<u32>(),
            any::<[u8; 32]>(),
            any::<[u8; 32]>(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
        )
            .prop_map(|(version, prev, root, time, bits, nonce)| BlockHeader {
                version,
                prev_hash: Hash256(prev),
                merkle_root: Hash256(root),
                time,
                bits,
                nonce,
            })
    }

    proptest! {
        #[test]
        fn header_round_trips_in_80_bytes(header in arb_header()) {
            let bytes = header.to_bytes();
            prop_assert_eq!(bytes.len(), HEADER_LEN);
            prop_assert_eq!(&bytes[..], &header.to_array()[..]);
            prop_assert_eq!(BlockHeader::from_bytes(&bytes).unwrap(), header);
            for cut in [0, 1, 40, 79] {
                prop_assert!(BlockHeader::from_bytes(&bytes[..cut]).is_err());
            }
        }

        #[test]
        fn block_round_trips(header in arb_header(), txs in proptest::collection::vec(arb_transaction(), 0..4)) {
            let block = Block { header, transactions: txs };
            let bytes = block.to_bytes();
            prop_assert_eq!(bytes.len(), block.encoded_len());
            prop_assert_eq!(Block::from_bytes(&bytes).unwrap(), block);
        }

        #[test]
        fn one_transaction_of_a_block_decodes_as_the_whole_block_has_it(
            header in arb_header(),
            txs in proptest::collection::vec(arb_transaction(), 0..6),
        ) {
            let block = Block { header, transactions: txs };
            let bytes = block.to_bytes();
            let mut spent_before = 0;
            for (position, tx) in block.transactions.iter().enumerate() {
                let found = decode_block_transaction(&bytes, position).unwrap();
                prop_assert_eq!(found, Some(BlockTransaction {
                    header,
                    tx: tx.clone(),
                    spent_before,
                }));
                if !tx.is_coinbase() {
                    spent_before += tx.inputs.len();
                }
            }
            prop_assert_eq!(decode_block_transaction(&bytes, block.transactions.len()).unwrap(), None);
            // Every other position in one walk: the same as one at a time.
            let some: Vec<usize> = (0..block.transactions.len()).step_by(2).collect();
            let together = decode_block_transactions(&bytes, &some).unwrap().unwrap();
            let alone: Vec<BlockTransaction> = some
                .iter()
                .map(|p| decode_block_transaction(&bytes, *p).unwrap().unwrap())
                .collect();
            prop_assert_eq!(together, alone);
            // A block cut short fails where the whole decode would.
            if let Some(last) = block.transactions.len().checked_sub(1) {
                prop_assert!(decode_block_transaction(&bytes[..bytes.len() - 1], last).is_err());
            }
        }

        #[test]
        fn arbitrary_bytes_decode_canonically_or_fail(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            if let Ok(block) = Block::from_bytes(&bytes) {
                prop_assert_eq!(block.to_bytes(), bytes);
            }
        }
    }
}
