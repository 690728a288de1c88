//! Transactions, their canonical encoding, txid and signature hash.
//!
//! Layout: `version u32 | n_in | inputs | n_out | outputs | lock_time u32`,
//! counts as compact sizes. An input starts with its outpoint; the null
//! outpoint (zero txid, vout 0xffffffff) marks the coinbase input, followed by
//! `height u32 | extra_nonce u64`; any other outpoint is followed by the
//! 33-byte compressed public key and the 64-byte signature.

use bytes::BufMut;
use sha2::{Digest, Sha256};

use super::address::PubKeyHash;
use super::amount::Amount;
use super::hash::{sha256d, Hash256, Txid};
use super::keys::{PrivateKey, PUBKEY_LEN, SIGNATURE_LEN};
use super::limits::{COINBASE_INPUT_LEN, MAX_TX_INPUTS, MAX_TX_OUTPUTS, OUTPUT_LEN};
use crate::encoding::{
    read_array, read_seq, read_u32, read_u64, seq_len, write_seq, Decode, DecodeError, Encode,
};

/// A reference to one output of an earlier transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OutPoint {
    pub txid: Txid,
    pub vout: u32,
}

impl OutPoint {
    /// The outpoint a coinbase input carries.
    pub const NULL: OutPoint = OutPoint {
        txid: Hash256::ZERO,
        vout: u32::MAX,
    };

    pub fn new(txid: Txid, vout: u32) -> OutPoint {
        OutPoint { txid, vout }
    }

    pub fn is_null(&self) -> bool {
        *self == OutPoint::NULL
    }
}

impl std::fmt::Display for OutPoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.txid, self.vout)
    }
}

impl Encode for OutPoint {
    fn encode_to<B: BufMut>(&self, buf: &mut B) {
        self.txid.encode_to(buf);
        buf.put_u32_le(self.vout);
    }

    fn encoded_len(&self) -> usize {
        36
    }
}

impl Decode for OutPoint {
    const NAME: &'static str = "outpoint";

    fn decode_from(buf: &mut &[u8]) -> Result<Self, DecodeError> {
        Ok(OutPoint {
            txid: Hash256::decode_from(buf)?,
            vout: read_u32(buf, Self::NAME)?,
        })
    }
}

/// A transaction input.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TxIn {
    /// The single input of a coinbase transaction. The height makes every
    /// coinbase (and so every txid) unique; the extra nonce widens the miner's
    /// search space beyond the header nonce.
    Coinbase { height: u32, extra_nonce: u64 },
    /// Spends `prevout`, proving ownership with `pubkey` (whose HASH160 must
    /// be the output's owner) and a signature over the sighash.
    Spend {
        prevout: OutPoint,
        pubkey: [u8; PUBKEY_LEN],
        signature: [u8; SIGNATURE_LEN],
    },
}

impl TxIn {
    /// The outpoint this input refers to (null for the coinbase).
    pub fn prevout(&self) -> OutPoint {
        match self {
            TxIn::Coinbase { .. } => OutPoint::NULL,
            TxIn::Spend { prevout, .. } => *prevout,
        }
    }
}

impl Encode for TxIn {
    fn encode_to<B: BufMut>(&self, buf: &mut B) {
        match self {
            TxIn::Coinbase {
                height,
                extra_nonce,
            } => {
                OutPoint::NULL.encode_to(buf);
                buf.put_u32_le(*height);
                buf.put_u64_le(*extra_nonce);
            }
            TxIn::Spend {
                prevout,
                pubkey,
                signature,
            } => {
                prevout.encode_to(buf);
                buf.put_slice(pubkey);
                buf.put_slice(signature);
            }
        }
    }

    fn encoded_len(&self) -> usize {
        match self {
            TxIn::Coinbase { .. } => COINBASE_INPUT_LEN,
            TxIn::Spend { .. } => super::limits::SPEND_INPUT_LEN,
        }
    }
}

impl Decode for TxIn {
    const NAME: &'static str = "input";

    fn decode_from(buf: &mut &[u8]) -> Result<Self, DecodeError> {
        let prevout = OutPoint::decode_from(buf)?;
        if prevout.is_null() {
            Ok(TxIn::Coinbase {
                height: read_u32(buf, "coinbase height")?,
                extra_nonce: read_u64(buf, "coinbase extra nonce")?,
            })
        } else {
            Ok(TxIn::Spend {
                prevout,
                pubkey: read_array(buf, "public key")?,
                signature: read_array(buf, "signature")?,
            })
        }
    }
}

/// A transaction output: an amount paid to the owner of a public key hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TxOut {
    pub amount: Amount,
    pub owner: PubKeyHash,
}

impl Encode for TxOut {
    fn encode_to<B: BufMut>(&self, buf: &mut B) {
        buf.put_u64_le(self.amount.units());
        self.owner.encode_to(buf);
    }

    fn encoded_len(&self) -> usize {
        OUTPUT_LEN
    }
}

impl Decode for TxOut {
    const NAME: &'static str = "output";

    fn decode_from(buf: &mut &[u8]) -> Result<Self, DecodeError> {
        Ok(TxOut {
            amount: Amount::from_units(read_u64(buf, "output amount")?),
            owner: PubKeyHash::decode_from(buf)?,
        })
    }
}

/// A transaction.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Transaction {
    pub version: u32,
    pub inputs: Vec<TxIn>,
    pub outputs: Vec<TxOut>,
    pub lock_time: u32,
}

/// The transaction format version this software creates.
pub const TX_VERSION: u32 = 1;

impl Transaction {
    /// A coinbase paying `outputs` at `height`.
    pub fn coinbase(height: u32, extra_nonce: u64, outputs: Vec<TxOut>) -> Transaction {
        Transaction {
            version: TX_VERSION,
            inputs: vec![TxIn::Coinbase {
                height,
                extra_nonce,
            }],
            outputs,
            lock_time: 0,
        }
    }

    /// Double SHA-256 of the canonical encoding.
    pub fn txid(&self) -> Txid {
        sha256d(&self.to_bytes())
    }

    /// Whether this is a coinbase: exactly one input, and it is a coinbase input.
    pub fn is_coinbase(&self) -> bool {
        matches!(self.inputs.as_slice(), [TxIn::Coinbase { .. }])
    }

    /// The height a coinbase commits to.
    pub fn coinbase_height(&self) -> Option<u32> {
        match self.inputs.as_slice() {
            [TxIn::Coinbase { height, .. }] => Some(*height),
            _ => None,
        }
    }

    /// Sum of output amounts, `None` if it leaves the money range.
    pub fn total_output(&self) -> Option<Amount> {
        Amount::checked_sum(self.outputs.iter().map(|o| o.amount))
    }

    /// The digest every input's sighash commits to: version, every input's
    /// outpoint, every output and the lock time (signatures and public keys
    /// excluded, so signing one input does not change the others' sighash).
    pub fn sighash_commitment(&self) -> Hash256 {
        let mut data = Vec::with_capacity(
            4 + 9 + self.inputs.len() * 36 + 9 + self.outputs.len() * OUTPUT_LEN + 4,
        );
        data.put_u32_le(self.version);
        crate::encoding::write_compact_size(&mut data, self.inputs.len() as u64);
        for input in &self.inputs {
            input.prevout().encode_to(&mut data);
        }
        write_seq(&mut data, &self.outputs);
        data.put_u32_le(self.lock_time);
        sha256d(&data)
    }

    /// Signs input `index` with `key`, which must own `spent`, filling in its
    /// public key and signature. Panics if `index` is not a spend input.
    pub fn sign_input(&mut self, index: usize, spent: &TxOut, key: &PrivateKey) {
        let digest = sighash(&self.sighash_commitment(), index as u32, spent);
        match &mut self.inputs[index] {
            TxIn::Spend {
                pubkey, signature, ..
            } => {
                *pubkey = key.public_key();
                *signature = key.sign_digest(&digest.0);
            }
            TxIn::Coinbase { .. } => panic!("input {index} is a coinbase input"),
        }
    }
}

/// Domain tag that keeps signature hashes apart from every other sha256d use.
const SIGHASH_TAG: &[u8] = b"ChainCore/sighash/v1";

/// The message input `input_index` signs: the transaction commitment, the input
/// index, and the amount and owner of the output being spent. Re-pointing any
/// output, outpoint, amount or the lock time after signing invalidates it.
pub fn sighash(commitment: &Hash256, input_index: u32, spent: &TxOut) -> Hash256 {
    let mut hasher = Sha256::new();
    hasher.update(SIGHASH_TAG);
    hasher.update(commitment.0);
    hasher.update(input_index.to_le_bytes());
    hasher.update(spent.amount.units().to_le_bytes());
    hasher.update(spent.owner.0);
    Hash256(Sha256::digest(hasher.finalize()).into())
}

impl Encode for Transaction {
    fn encode_to<B: BufMut>(&self, buf: &mut B) {
        buf.put_u32_le(self.version);
        write_seq(buf, &self.inputs);
        write_seq(buf, &self.outputs);
        buf.put_u32_le(self.lock_time);
    }

    fn encoded_len(&self) -> usize {
        4 + seq_len(&self.inputs) + seq_len(&self.outputs) + 4
    }
}

impl Decode for Transaction {
    const NAME: &'static str = "transaction";

    fn decode_from(buf: &mut &[u8]) -> Result<Self, DecodeError> {
        Ok(Transaction {
            version: read_u32(buf, "transaction version")?,
            inputs: read_seq(buf, MAX_TX_INPUTS, COINBASE_INPUT_LEN)?,
            outputs: read_seq(buf, MAX_TX_OUTPUTS, OUTPUT_LEN)?,
            lock_time: read_u32(buf, "lock time")?,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub fn arb_outpoint() -> impl Strategy<Value = OutPoint> {
        (any::<[u8; 32]>(), any::<u32>()).prop_map(|(t, v)| OutPoint::new(Hash256(t), v))
    }

    pub fn arb_txin() -> impl Strategy<Value = TxIn> {
        prop_oneof![
            (any::<u32>(), any::<u64>()).prop_map(|(height, extra_nonce)| TxIn::Coinbase {
                height,
                extra_nonce
            }),
            (
                arb_outpoint().prop_filter("not null", |o| !o.is_null()),
                any::<[u8; 33]>(),
                proptest::collection::vec(any::<u8>(), 64)
            )
                .prop_map(|(prevout, pubkey, sig)| TxIn::Spend {
                    prevout,
                    pubkey,
                    signature: sig.try_into().unwrap()
                }),
        ]
    }

    pub fn arb_transaction() -> impl Strategy<Value = Transaction> {
        (
            any::<u32>(),
            proptest::collection::vec(arb_txin(), 0..5),
            proptest::collection::vec(
                (any::<u64>(), any::<[u8; 20]>()).prop_map(|(a, o)| TxOut {
                    amount: Amount::from_units(a),
                    owner: PubKeyHash(o),
                }),
                0..5,
            ),
            any::<u32>(),
        )
            .prop_map(|(version, inputs, outputs, lock_time)| Transaction {
                version,
                inputs,
                outputs,
                lock_time,
            })
    }

    fn spend(prevout: OutPoint) -> TxIn {
        TxIn::Spend {
            prevout,
            pubkey: [2u8; 33],
            signature: [0u8; 64],
        }
    }

    #[test]
    fn sighash_commits_to_outputs_outpoints_and_spent_output() {
        let owner = PubKeyHash([1u8; 20]);
        let spent = TxOut {
            amount: Amount::from_coins(5),
            owner,
        };
        let tx = Transaction {
            version: 1,
            inputs: vec![spend(OutPoint::new(Hash256([3u8; 32]), 0))],
            outputs: vec![TxOut {
                amount: Amount::from_coins(4),
                owner: PubKeyHash([2u8; 20]),
            }],
            lock_time: 0,
        };
        let base = sighash(&tx.sighash_commitment(), 0, &spent);

        let mut repointed = tx.clone();
        repointed.outputs[0].owner = PubKeyHash([9u8; 20]);
        assert_ne!(sighash(&repointed.sighash_commitment(), 0, &spent), base);

        let mut other_outpoint = tx.clone();
        other_outpoint.inputs[0] = spend(OutPoint::new(Hash256([3u8; 32]), 1));
        assert_ne!(
            sighash(&other_outpoint.sighash_commitment(), 0, &spent),
            base
        );

        let cheaper = TxOut {
            amount: Amount::from_coins(4),
            owner,
        };
        assert_ne!(sighash(&tx.sighash_commitment(), 0, &cheaper), base);
        assert_ne!(sighash(&tx.sighash_commitment(), 1, &spent), base);

        // Public keys and signatures are not committed to.
        let mut signed = tx.clone();
        signed.inputs[0] = TxIn::Spend {
            prevout: OutPoint::new(Hash256([3u8; 32]), 0),
            pubkey: [3u8; 33],
            signature: [5u8; 64],
        };
        assert_eq!(sighash(&signed.sighash_commitment(), 0, &spent), base);
    }

    #[test]
    fn truncated_transaction_is_rejected_at_every_length() {
        let tx = Transaction {
            version: 1,
            inputs: vec![spend(OutPoint::new(Hash256([3u8; 32]), 7))],
            outputs: vec![TxOut {
                amount: Amount::from_coins(1),
                owner: PubKeyHash([4u8; 20]),
            }],
            lock_time: 9,
        };
        let bytes = tx.to_bytes();
        assert_eq!(bytes.len(), tx.encoded_len());
        for cut in 0..bytes.len() {
            assert!(
                Transaction::from_bytes(&bytes[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        let mut extended = bytes.clone();
        extended.push(0);
        assert!(matches!(
            Transaction::from_bytes(&extended),
            Err(DecodeError::TrailingBytes { .. })
        ));
        assert_eq!(Transaction::from_bytes(&bytes).unwrap(), tx);
    }

    proptest! {
        #[test]
        fn transaction_round_trips(tx in arb_transaction()) {
            let bytes = tx.to_bytes();
            prop_assert_eq!(bytes.len(), tx.encoded_len());
            prop_assert_eq!(Transaction::from_bytes(&bytes).unwrap(), tx);
        }

        #[test]
        fn arbitrary_bytes_decode_canonically_or_fail(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            if let Ok(tx) = Transaction::from_bytes(&bytes) {
                prop_assert_eq!(tx.to_bytes(), bytes);
            }
        }

        #[test]
        fn mutated_valid_encoding_never_panics(tx in arb_transaction(), pos in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let mut bytes = tx.to_bytes();
            let i = pos.index(bytes.len());
            bytes[i] = byte;
            if let Ok(decoded) = Transaction::from_bytes(&bytes) {
                prop_assert_eq!(decoded.to_bytes(), bytes);
            }
        }
    }
}
