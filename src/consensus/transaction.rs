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
    read_array, read_count, read_seq, read_u32, read_u64, seq_len, skip, write_seq, Decode,
    DecodeError, Encode,
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

    /// The digest every input's sighash commits to, computed once per
    /// transaction: version, every input's outpoint, every output, the lock
    /// time and then the output each input spends (`spent[i]` is the output
    /// input `i` spends; amount and owner, 28 bytes each, in input order).
    /// Signatures and public keys are excluded, so signing one input does not
    /// change the others' sighash. Committing to every spent output (as BIP
    /// 341's `sha_amounts`) means a signer told a wrong amount for any input
    /// produces signatures that are invalid, so it cannot be misled about the
    /// fee across several signing sessions.
    pub fn sighash_commitment(&self, spent: &[TxOut]) -> Hash256 {
        let mut data = Vec::with_capacity(
            4 + 9
                + self.inputs.len() * 36
                + 9
                + self.outputs.len() * OUTPUT_LEN
                + 4
                + spent.len() * OUTPUT_LEN,
        );
        data.put_u32_le(self.version);
        crate::encoding::write_compact_size(&mut data, self.inputs.len() as u64);
        for input in &self.inputs {
            input.prevout().encode_to(&mut data);
        }
        write_seq(&mut data, &self.outputs);
        data.put_u32_le(self.lock_time);
        for output in spent {
            output.encode_to(&mut data);
        }
        sha256d(&data)
    }

    /// Signs every input: input `i` with `keys[i]`, which must own `spent[i]`,
    /// the output it spends, filling in its public key and signature. The
    /// commitment is computed once, so signing is linear in the size of the
    /// transaction. Panics if the three lengths differ or an input is a
    /// coinbase input.
    pub fn sign_inputs(&mut self, spent: &[TxOut], keys: &[&PrivateKey]) {
        assert_eq!(self.inputs.len(), spent.len(), "one spent output per input");
        assert_eq!(self.inputs.len(), keys.len(), "one key per input");
        let commitment = self.sighash_commitment(spent);
        for (index, (input, key)) in self.inputs.iter_mut().zip(keys).enumerate() {
            let digest = sighash(&commitment, index as u32);
            match input {
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
}

/// Domain tag that keeps signature hashes apart from every other sha256d use
/// (v1 committed only to the spent output of the signing input).
const SIGHASH_TAG: &[u8] = b"ChainCore/sighash/v2";

/// The message input `input_index` signs: the transaction commitment (which
/// covers every spent output, see `Transaction::sighash_commitment`) and the
/// input index. Changing any output, outpoint, spent amount or owner, or the
/// lock time after signing invalidates every signature.
pub fn sighash(commitment: &Hash256, input_index: u32) -> Hash256 {
    let mut hasher = Sha256::new();
    hasher.update(SIGHASH_TAG);
    hasher.update(commitment.0);
    hasher.update(input_index.to_le_bytes());
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

/// What passing over one encoded transaction tells of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SkippedTx {
    pub inputs: usize,
    pub is_coinbase: bool,
}

/// Passes over one encoded transaction without building it: reads its
/// counts and each input's outpoint (a null one marks the shorter coinbase
/// input), and moves past everything else. Accepts exactly the encodings
/// `Transaction::decode_from` accepts, with the same limits, so a reader
/// can go straight to the `n`th transaction of a block.
pub fn skip_transaction(buf: &mut &[u8]) -> Result<SkippedTx, DecodeError> {
    const WHAT: &str = "transaction";
    skip(buf, 4, "transaction version")?;
    let inputs = read_count(buf, TxIn::NAME, MAX_TX_INPUTS, COINBASE_INPUT_LEN)?;
    let mut coinbase_inputs = 0;
    for _ in 0..inputs {
        if OutPoint::decode_from(buf)?.is_null() {
            coinbase_inputs += 1;
            skip(buf, COINBASE_INPUT_LEN - 36, WHAT)?;
        } else {
            skip(buf, super::limits::SPEND_INPUT_LEN - 36, WHAT)?;
        }
    }
    let outputs = read_count(buf, TxOut::NAME, MAX_TX_OUTPUTS, OUTPUT_LEN)?;
    skip(buf, outputs * OUTPUT_LEN, TxOut::NAME)?;
    skip(buf, 4, "lock time")?;
    Ok(SkippedTx {
        inputs,
        is_coinbase: inputs == 1 && coinbase_inputs == 1,
    })
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

    fn coins_to(coins: u64, owner: u8) -> TxOut {
        TxOut {
            amount: Amount::from_coins(coins),
            owner: PubKeyHash([owner; 20]),
        }
    }

    /// Three inputs spending 5, 6 and 7 CC, paying 4 CC.
    fn three_input_tx() -> (Transaction, Vec<TxOut>) {
        let tx = Transaction {
            version: 1,
            inputs: (0..3)
                .map(|vout| spend(OutPoint::new(Hash256([3u8; 32]), vout)))
                .collect(),
            outputs: vec![coins_to(4, 2)],
            lock_time: 0,
        };
        let spent = vec![coins_to(5, 1), coins_to(6, 1), coins_to(7, 8)];
        (tx, spent)
    }

    #[test]
    fn sighash_commits_to_outputs_outpoints_and_spent_output() {
        let (tx, spent) = three_input_tx();
        let base = sighash(&tx.sighash_commitment(&spent), 0);

        let mut repointed = tx.clone();
        repointed.outputs[0].owner = PubKeyHash([9u8; 20]);
        assert_ne!(sighash(&repointed.sighash_commitment(&spent), 0), base);

        let mut other_outpoint = tx.clone();
        other_outpoint.inputs[0] = spend(OutPoint::new(Hash256([3u8; 32]), 9));
        assert_ne!(sighash(&other_outpoint.sighash_commitment(&spent), 0), base);

        let mut later = tx.clone();
        later.lock_time = 1;
        assert_ne!(sighash(&later.sighash_commitment(&spent), 0), base);

        assert_ne!(sighash(&tx.sighash_commitment(&spent), 1), base);

        // Public keys and signatures are not committed to.
        let mut signed = tx.clone();
        signed.inputs[0] = TxIn::Spend {
            prevout: OutPoint::new(Hash256([3u8; 32]), 0),
            pubkey: [3u8; 33],
            signature: [5u8; 64],
        };
        assert_eq!(sighash(&signed.sighash_commitment(&spent), 0), base);
    }

    #[test]
    fn every_spent_amount_and_owner_is_in_every_inputs_sighash() {
        let (tx, spent) = three_input_tx();
        for signer in 0..3u32 {
            let base = sighash(&tx.sighash_commitment(&spent), signer);
            for other in 0..spent.len() {
                let mut cheaper = spent.clone();
                cheaper[other].amount = Amount::from_units(spent[other].amount.units() - 1);
                assert_ne!(
                    sighash(&tx.sighash_commitment(&cheaper), signer),
                    base,
                    "input {signer}'s sighash ignores the amount spent by input {other}"
                );
                let mut elsewhere = spent.clone();
                elsewhere[other].owner = PubKeyHash([0xee; 20]);
                assert_ne!(
                    sighash(&tx.sighash_commitment(&elsewhere), signer),
                    base,
                    "input {signer}'s sighash ignores the owner of input {other}'s output"
                );
            }
        }
        // Swapping two spent outputs is a different claim too.
        let mut swapped = spent.clone();
        swapped.swap(0, 1);
        assert_ne!(
            sighash(&tx.sighash_commitment(&swapped), 0),
            sighash(&tx.sighash_commitment(&spent), 0)
        );
    }

    /// An offline signer holding the key of input 0 signs in one session and
    /// a second device signs input 1 in another; whoever prepares the
    /// sessions claims input 1 spends less than it does, so the signer sees a
    /// small fee. The signature made under the lie is useless for the real
    /// transaction.
    #[test]
    fn signing_sessions_told_different_amounts_disagree() {
        let key = crate::testkit::key(1);
        let (tx, mut truth) = three_input_tx();
        for output in &mut truth {
            output.owner = key.pubkey_hash();
        }
        let mut lie = truth.clone();
        lie[1].amount = Amount::from_coins(1);

        let honest = sighash(&tx.sighash_commitment(&truth), 0);
        let misled = sighash(&tx.sighash_commitment(&lie), 0);
        assert_ne!(honest, misled);

        let mut signed_under_lie = tx.clone();
        signed_under_lie.sign_inputs(&lie, &[&key, &key, &key]);
        let TxIn::Spend {
            pubkey, signature, ..
        } = &signed_under_lie.inputs[0]
        else {
            unreachable!("input 0 is a spend");
        };
        assert!(crate::consensus::keys::verify_signature(pubkey, signature, &misled.0).is_ok());
        assert!(crate::consensus::keys::verify_signature(pubkey, signature, &honest.0).is_err());
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
        fn skipping_a_transaction_accepts_and_consumes_what_decoding_does(
            tx in arb_transaction(),
            noise in proptest::collection::vec(any::<u8>(), 0..300),
            cut in any::<prop::sample::Index>(),
        ) {
            let bytes = tx.to_bytes();
            let mut cursor = &bytes[..];
            let skipped = skip_transaction(&mut cursor).unwrap();
            prop_assert!(cursor.is_empty());
            prop_assert_eq!(skipped, SkippedTx {
                inputs: tx.inputs.len(),
                is_coinbase: tx.is_coinbase(),
            });
            // Cut short, or arbitrary bytes: both fail or both consume the same.
            for input in [&bytes[..cut.index(bytes.len())], &noise[..]] {
                let (mut decoding, mut skipping) = (input, input);
                let decoded = Transaction::decode_from(&mut decoding);
                let skipped = skip_transaction(&mut skipping);
                prop_assert_eq!(decoded.is_ok(), skipped.is_ok());
                if decoded.is_ok() {
                    prop_assert_eq!(decoding.len(), skipping.len());
                }
            }
        }
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
